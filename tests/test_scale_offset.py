"""Zero-centred scale (``scale_offset``) on LayerNorm and RMSNorm, in every family (op, spec, linen, nnx, equinox):
NumPy float64 references for values and closed-form gradients, a Gemma-style checkpoint loaded into each family,
the peers at the shifted scale, half-precision scales, the Pallas path, and errors. (The specs' jit/vmap/export/
promise checks run through tests/registry.py's ``*_zero_centred`` entries.)"""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

import jaxnorm
from jaxnorm import linen as jnn
from jaxnorm import nnx as jnnx
from tests import reference
from tests.tolerances import assert_close

HAS_EQUINOX = importlib.util.find_spec("equinox") is not None
KINDS = ("layer_norm", "rms_norm")


def _data(shape, seed=0, loc=0.5, scale=2.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale + loc).astype(np.float32)


def _ref(kind, x, gamma, bias, offset, epsilon):
    scale = np.asarray(gamma, np.float64) + offset
    if kind == "rms_norm":
        return reference.rms_norm(x, (x.ndim - 1,), scale, epsilon)
    return reference.layer_norm(x, (x.ndim - 1,), scale, bias, epsilon)


def _op(kind, x, gamma, bias, **kw):
    if kind == "rms_norm":
        return jaxnorm.rms_norm(x, gamma, **kw)
    return jaxnorm.layer_norm(x, gamma, bias, **kw)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("offset", [1.0, -0.5])
def test_ops_match_float64_reference(kind, offset):
    x, gamma, bias = _data((4, 3, 6)), _data((6,), 1, loc=0.0, scale=0.1), _data((6,), 2)
    y = _op(kind, jnp.asarray(x), gamma, bias, epsilon=1e-5, scale_offset=offset)
    assert y.dtype == jnp.float32 and y.shape == x.shape
    assert_close(y, _ref(kind, x, gamma, bias, offset, 1e-5))


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_match_the_closed_form_in_float64(kind):
    """With s = gamma + offset, xhat the normalized x and r its 1/std (1/rms): d/dgamma = sum g xhat,
    d/dbias = sum g, d/dx = r (g s - mean(g s) - xhat mean(g s xhat)) (RMS: without the middle term)."""
    x, g = _data((5, 2, 8)), _data((5, 2, 8), 3, loc=0.0, scale=1.0)
    gamma, bias, eps = _data((8,), 1, loc=0.0, scale=0.1), _data((8,), 2), 1e-5

    def loss(x, gamma, bias):
        return jnp.vdot(_op(kind, x, gamma, bias, epsilon=eps, scale_offset=1.0), g)

    dx, dgamma, dbias = jax.grad(loss, (0, 1, 2))(jnp.asarray(x), jnp.asarray(gamma), jnp.asarray(bias))
    x64, g64, s64 = x.astype(np.float64), g.astype(np.float64), gamma.astype(np.float64) + 1.0
    centred = x64 - x64.mean(-1, keepdims=True) if kind == "layer_norm" else x64
    r = 1 / np.sqrt((centred**2).mean(-1, keepdims=True) + eps)
    xhat, gs = centred * r, g64 * s64
    want_dx = r * (gs - (gs.mean(-1, keepdims=True) if kind == "layer_norm" else 0)
                   - xhat * (gs * xhat).mean(-1, keepdims=True))
    assert_close(dx, want_dx, scale=4)
    assert_close(dgamma, (g64 * xhat).sum((0, 1)), scale=16)
    if kind == "layer_norm":
        assert_close(dbias, g64.sum((0, 1)), scale=16)


@pytest.mark.parametrize("kind", KINDS)
def test_a_half_precision_scale_keeps_its_bits(kind):
    """1 + gamma is taken in float32: a bfloat16 gamma of 1e-3 multiplies by 1.001, where bfloat16's own sum (the
    form a user writes by hand) rounds it to 1.0."""
    x = _data((3, 16))
    gamma = jnp.full((16,), 1e-3, jnp.bfloat16)
    y = _op(kind, jnp.asarray(x), gamma, None, epsilon=0.0, scale_offset=1.0)
    want = _ref(kind, x, np.asarray(gamma, np.float64), None, 1.0, 0.0)
    assert_close(y, want)
    by_hand = _op(kind, jnp.asarray(x), gamma + jnp.bfloat16(1), None, epsilon=0.0)
    assert np.max(np.abs(np.asarray(by_hand, np.float64) - want)) > 1e-4  # the test can tell the two apart


class _GemmaRMSNorm(nn.Module):
    """RMSNorm as Gemma's Flax code writes it: a zero-initialised ``scale``, ``x * rsqrt(mean(x^2) + 1e-6) *
    (1 + scale)``; the checkpoint layout jaxnorm's ``scale_offset=1.0`` reads."""

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.zeros_init(), (x.shape[-1],))
        var = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
        return x * jax.lax.rsqrt(var + 1e-6) * (1 + scale).reshape((1,) * (x.ndim - 1) + (-1,))


def test_a_gemma_checkpoint_loads_in_every_family():
    x = _data((2, 5, 8))
    gemma = _GemmaRMSNorm()
    variables = {"params": {"scale": jnp.asarray(_data((8,), 4, loc=0.0, scale=0.3))}}
    theirs = gemma.apply(variables, x)
    gamma = np.asarray(variables["params"]["scale"])
    want = _ref("rms_norm", x, gamma, None, 1.0, 1e-6)
    assert_close(theirs, want)  # the stand-in is Gemma's formula
    outs = {
        "spec": jaxnorm.RMSNorm(scale_offset=1.0).apply(dict(variables["params"]), {}, x)[0],
        "linen": jnn.RMSNorm(scale_offset=1.0).apply(variables, x),
    }
    mod = jnnx.RMSNorm(8, scale_offset=1.0, scale_init=nnx.initializers.zeros, rngs=nnx.Rngs(0))
    nnx.update(mod, nnx.State({"scale": nnx.Param(variables["params"]["scale"])}))
    outs["nnx"] = mod(x)
    if HAS_EQUINOX:
        import equinox as eqx

        import jaxnorm.equinox as jeqx

        eq = jeqx.RMSNorm(8, eps=1e-6, use_bias=False, scale_offset=1.0)
        eq = eqx.tree_at(lambda m: m.weight, eq, variables["params"]["scale"])
        outs["equinox"] = jax.vmap(jax.vmap(eq))(x)
    for family, y in outs.items():
        assert y.shape == x.shape, family
        assert_close(y, want)


def test_linen_drop_ins_equal_flax_at_the_shifted_scale():
    x = _data((4, 6))
    gamma, bias = jnp.asarray(_data((6,), 1, loc=0.0, scale=0.2)), jnp.asarray(_data((6,), 2))
    for ours, theirs in ((jnn.LayerNorm(scale_offset=1.0), nn.LayerNorm()),
                         (jnn.RMSNorm(scale_offset=1.0), nn.RMSNorm())):
        params = {"scale": gamma, "bias": bias} if isinstance(theirs, nn.LayerNorm) else {"scale": gamma}
        shifted = dict(params, scale=gamma + 1.0)
        assert_close(ours.apply({"params": params}, x), theirs.apply({"params": shifted}, x))
        init = jnn.LayerNorm(scale_offset=1.0, scale_init=nn.initializers.zeros).init(jax.random.key(0), x)
        assert_close(jnn.LayerNorm(scale_offset=1.0).apply(init, x), nn.LayerNorm().apply(
            nn.LayerNorm().init(jax.random.key(0), x), x))  # zeros + 1 starts at Flax's identity


def test_nnx_drop_ins_equal_flax_at_the_shifted_scale():
    x = _data((4, 6))
    for ours_cls, theirs_cls in ((jnnx.LayerNorm, nnx.LayerNorm), (jnnx.RMSNorm, nnx.RMSNorm)):
        ours = ours_cls(6, scale_offset=1.0, scale_init=nnx.initializers.zeros, rngs=nnx.Rngs(0))
        theirs = theirs_cls(6, rngs=nnx.Rngs(0))
        gamma = jnp.asarray(_data((6,), 1, loc=0.0, scale=0.2))
        ours.scale.value = gamma
        theirs.scale.value = gamma + 1.0
        assert_close(ours(x), theirs(x))
        assert ours.scale_offset == 1.0 and "scale_offset" not in nnx.state(ours)  # a plain attribute


@pytest.mark.peers("equinox")
def test_equinox_drop_ins_equal_equinox_at_the_shifted_weight():
    import equinox as eqx

    import jaxnorm.equinox as jeqx

    x = jnp.asarray(_data((6,)))
    gamma = jnp.asarray(_data((6,), 1, loc=0.0, scale=0.2))
    for ours, theirs in ((jeqx.LayerNorm(6, scale_offset=1.0), eqx.nn.LayerNorm(6)),
                         (jeqx.RMSNorm(6, scale_offset=1.0), eqx.nn.RMSNorm(6))):
        ours = eqx.tree_at(lambda m: m.weight, ours, gamma)
        theirs = eqx.tree_at(lambda m: m.weight, theirs, gamma + 1.0)
        assert_close(ours(x), theirs(x))
        # the same array leaves as equinox's: eqx.tree_serialise_leaves checkpoints load either way
        assert [a.shape for a in jax.tree.leaves(ours)] == [a.shape for a in jax.tree.leaves(theirs)]


@pytest.mark.parametrize("kind", KINDS)
def test_the_pallas_kernels_take_the_offset(kind):
    x, gamma, bias = _data((8, 32)), _data((32,), 1, loc=0.0, scale=0.1), _data((32,), 2)
    want = _op(kind, jnp.asarray(x), gamma, bias, scale_offset=1.0, implementation="xla")
    got = _op(kind, jnp.asarray(x), gamma, bias, scale_offset=1.0, implementation="pallas")
    assert_close(got, want)


def _families(offset, use_scale=True):
    """Every way to ask for ``scale_offset=offset``: a function per family that builds (and, where building does
    not check, calls) the layer."""
    x = jnp.ones((2, 4))
    out = {
        "ops": lambda: jaxnorm.layer_norm(x, jnp.ones(4) if use_scale else None, scale_offset=offset),
        "ops_rms": lambda: jaxnorm.rms_norm(x, jnp.ones(4) if use_scale else None, scale_offset=offset),
        "spec": lambda: jaxnorm.LayerNorm(scale_offset=offset, use_scale=use_scale),
        "spec_rms": lambda: jaxnorm.RMSNorm(scale_offset=offset, use_scale=use_scale),
        "linen": lambda: jnn.LayerNorm(scale_offset=offset, use_scale=use_scale).init(jax.random.key(0), x),
        "linen_rms": lambda: jnn.RMSNorm(scale_offset=offset, use_scale=use_scale).init(jax.random.key(0), x),
        "nnx": lambda: jnnx.LayerNorm(4, scale_offset=offset, use_scale=use_scale, rngs=nnx.Rngs(0)),
        "nnx_rms": lambda: jnnx.RMSNorm(4, scale_offset=offset, use_scale=use_scale, rngs=nnx.Rngs(0)),
    }
    if HAS_EQUINOX:
        import jaxnorm.equinox as jeqx

        out["equinox"] = lambda: jeqx.LayerNorm(4, use_weight=use_scale, scale_offset=offset)
        out["equinox_rms"] = lambda: jeqx.RMSNorm(4, use_weight=use_scale, scale_offset=offset)
    return out


def test_bad_offsets_name_the_argument_and_the_fix():
    for family in _families(0.0):
        for bad in ("1", 1 + 0j, True, np.ones(2)):
            with pytest.raises(TypeError, match=r"`scale_offset` must be a static float .*Pass a Python number"):
                _families(bad)[family]()
        with pytest.raises(TypeError, match=r"`scale_offset` must be a static float"):  # traced: not static
            jax.jit(lambda o, family=family: _families(o)[family]() and 0)(1.0)
    for family, build in _families(float("nan")).items():
        with pytest.raises(ValueError, match=r"`scale_offset` must be a finite real number"):
            build()
    for family, build in _families(1.0, use_scale=False).items():
        with pytest.raises(ValueError, match=r"offsets a scale, but there is none.*leave scale_offset at 0"):
            build()
    for offset in (np.float32(1.0), jnp.array(1.0)):  # a NumPy or concrete JAX scalar hyperparameter is a number
        for family, build in _families(offset).items():
            build()
    for family, build in _families(0.0, use_scale=False).items():
        build()


def test_the_offset_round_trips_through_the_jaxnorm_config_and_refuses_keras():
    spec = jaxnorm.RMSNorm(scale_offset=1.0, scale_init="zeros")
    assert spec.get_config()["scale_offset"] == 1.0
    assert jaxnorm.RMSNorm.from_config(spec.get_config()) == spec
    with pytest.raises(ValueError, match=r"scale_offset=1.0 \(Keras computes 0.0"):
        spec.to_keras_config()
    assert "scale_offset" not in jaxnorm.LayerNorm().to_keras_config()
