"""Residual add & norm (ops ``add_layer_norm``/``add_rms_norm``, specs ``AddLayerNorm``/``AddRMSNorm``, the linen, nnx
and equinox drop-ins): NumPy float64 references for ``(y, h)`` and closed-form gradients through both inputs and
both outputs, the stream's dtype, dropout, jvp, vmap, export, the drop-ins against the unfused Flax and equinox
forms (their own Dropout included), checkpoints shared with LayerNorm/RMSNorm, and errors. (Every layer's generic
checks run through the registries' ``Add*`` entries.)"""

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
KINDS = ("layer", "rms")


def _data(shape, seed=0, loc=0.5, scale=2.0, dtype=np.float32):
    return (np.random.default_rng(seed).standard_normal(shape) * scale + loc).astype(dtype)


def _op(kind, x, residual, scale=None, bias=None, **kw):
    if kind == "rms":
        return jaxnorm.add_rms_norm(x, residual, scale, **kw)
    return jaxnorm.add_layer_norm(x, residual, scale, bias, **kw)


def _ref(kind, h, scale, bias, epsilon):
    if kind == "rms":
        return reference.rms_norm(h, (h.ndim - 1,), scale, epsilon)
    return reference.layer_norm(h, (h.ndim - 1,), scale, bias, epsilon)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("with_residual", [True, False])
def test_ops_match_float64_reference(kind, with_residual):
    x, r = _data((4, 3, 6)), _data((4, 3, 6), 1, loc=-3.0)
    scale, bias = _data((6,), 2), _data((6,), 3)
    y, h = _op(kind, jnp.asarray(x), jnp.asarray(r) if with_residual else None, scale, bias, epsilon=1e-5)
    want_h = x.astype(np.float64) + (r if with_residual else 0)
    assert y.dtype == h.dtype == jnp.float32 and y.shape == h.shape == x.shape
    assert_close(h, want_h)
    assert_close(y, _ref(kind, want_h, scale, bias if kind == "layer" else None, 1e-5))


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_through_both_outputs_match_the_closed_form_in_float64(kind):
    """Loss <y, gy> + <h, gh>: dx = dresidual = dh = r (g s - mean(g s) - xhat mean(g s xhat)) + gh (RMS without
    the middle term), with g = gy, s = scale, xhat and r the normalized h and its 1/std; dscale = sum gy xhat."""
    x, res = _data((5, 2, 8)), _data((5, 2, 8), 1)
    gy, gh = _data((5, 2, 8), 3, loc=0.0, scale=1.0), _data((5, 2, 8), 4, loc=0.0, scale=1.0)
    scale, bias, eps = _data((8,), 2), _data((8,), 5), 1e-5

    def loss(x, res, scale, bias):
        y, h = _op(kind, x, res, scale, bias, epsilon=eps)
        return jnp.vdot(y, gy) + jnp.vdot(h, gh)

    dx, dres, dscale, dbias = jax.grad(loss, (0, 1, 2, 3))(*map(jnp.asarray, (x, res, scale, bias)))
    h = x.astype(np.float64) + res
    c = h - h.mean(-1, keepdims=True) if kind == "layer" else h
    rstd = 1 / np.sqrt((c**2).mean(-1, keepdims=True) + eps)
    xhat, gs = c * rstd, gy * scale.astype(np.float64)
    dh = rstd * (gs - (gs.mean(-1, keepdims=True) if kind == "layer" else 0) - xhat * (gs * xhat).mean(-1, keepdims=True))
    assert_close(dx, dh + gh, scale=4)
    assert_close(dres, dh + gh, scale=4)
    assert_close(dscale, (gy * xhat).sum((0, 1)), scale=16)
    if kind == "layer":
        assert_close(dbias, gy.sum((0, 1)), scale=16)


@pytest.mark.parametrize("kind", KINDS)
def test_jvp_equals_the_unfused_composition(kind):
    x, res, dx, dres = (jnp.asarray(_data((3, 16), s)) for s in range(4))
    scale = jnp.asarray(_data((16,), 5))

    def fused(x, res):
        return _op(kind, x, res, scale)

    def unfused(x, res):
        norm = jaxnorm.rms_norm(x + res, scale) if kind == "rms" else jaxnorm.layer_norm(x + res, scale)
        return norm, x + res

    got, got_t = jax.jvp(fused, (x, res), (dx, dres))
    want, want_t = jax.jvp(unfused, (x, res), (dx, dres))
    jax.tree.map(lambda a, b: assert_close(a, b, scale=4), (got, got_t), (want, want_t))


def test_the_stream_keeps_its_dtype_or_float32():
    x = jnp.asarray(_data((4, 32)), jnp.bfloat16)
    r = jnp.asarray(_data((4, 32), 1, loc=300.0), jnp.bfloat16)
    y, h = jaxnorm.add_rms_norm(x, r)
    assert y.dtype == h.dtype == jnp.bfloat16
    # the sum in float32, rounded once: bfloat16's correctly rounded sum
    np.testing.assert_array_equal(np.asarray(h, np.float32), np.asarray(x + r, np.float32))
    y32, h32 = jaxnorm.add_rms_norm(x, r, residual_in_float32=True)
    assert y32.dtype == jnp.bfloat16 and h32.dtype == jnp.float32
    exact = np.asarray(x, np.float64) + np.asarray(r, np.float64)
    np.testing.assert_array_equal(np.asarray(h32, np.float64), exact)  # a bf16 pair's sum is exact in float32
    assert np.max(np.abs(np.asarray(h, np.float64) - exact)) > 0  # which the bf16 stream rounds
    assert_close(y32, reference.rms_norm(exact, (1,), epsilon=1e-6), jnp.bfloat16)
    _, h_mixed = jaxnorm.add_layer_norm(x, r.astype(jnp.float32))  # result_type(bf16, f32): a float32 stream
    assert h_mixed.dtype == jnp.float32


def test_dropout_drops_x_before_the_add_with_flax_s_draw():
    x, r = jnp.asarray(_data((64, 32))), jnp.asarray(_data((64, 32), 1))
    key = jax.random.key(7)
    _, h = jaxnorm.add_layer_norm(x, r, dropout_rate=0.25, dropout_key=key)
    keep = jax.random.bernoulli(key, 0.75, x.shape)
    assert_close(h, np.where(keep, np.asarray(x, np.float64) / 0.75, 0.0) + np.asarray(r, np.float64))
    assert 0.7 < float(keep.mean()) < 0.8
    _, h_again = jaxnorm.add_layer_norm(x, r, dropout_rate=0.25, dropout_key=key)
    np.testing.assert_array_equal(h, h_again)
    spec = jaxnorm.AddLayerNorm(dropout_rate=0.25)
    params, state = spec.init(None, x)
    (_, h_spec), _ = spec.apply(params, state, x, residual=r, training=True, dropout_key=key)
    np.testing.assert_array_equal(h_spec, h)
    (_, h_eval), _ = spec.apply(params, state, x, residual=r)  # no dropout outside training, no key needed
    assert_close(h_eval, np.asarray(x, np.float64) + np.asarray(r, np.float64))


@pytest.mark.parametrize("kind", KINDS)
def test_vmap_and_export_round_trip_forward_and_backward(kind):
    x, r = jnp.asarray(_data((2, 3, 8))), jnp.asarray(_data((2, 3, 8), 1))
    scale = jnp.asarray(_data((8,), 2))

    def loss(x, r, scale):
        y, h = _op(kind, x, r, scale)
        return jnp.sum(jnp.sin(y)) + jnp.sum(h * h)

    step = jax.jit(jax.value_and_grad(loss, (0, 1, 2)))
    exported = jax.export.export(step)(x, r, scale)
    back = jax.export.deserialize(exported.serialize())
    jax.tree.map(lambda a, b: assert_close(a, b), back.call(x, r, scale), step(x, r, scale))
    batched = jax.vmap(lambda x, r: _op(kind, x, r, scale))(x, r)
    for i in range(2):
        jax.tree.map(lambda a, b, i=i: assert_close(a[i], b), batched, _op(kind, x[i], r[i], scale))


def test_masked_out_nan_stays_out_of_the_statistics():
    x, r = _data((4, 8)), _data((4, 8), 1)
    mask = np.random.default_rng(2).random(x.shape) < 0.7
    mask[:, 0] = True
    clean = jaxnorm.add_layer_norm(jnp.asarray(x), jnp.asarray(r), where=mask)[0]
    dirty = jaxnorm.add_layer_norm(jnp.asarray(np.where(mask, x, np.nan)), jnp.asarray(r), where=mask)[0]
    np.testing.assert_allclose(np.asarray(dirty)[mask], np.asarray(clean)[mask], rtol=1e-6)


def test_specs_share_the_normalization_s_params_and_refuse_keras_and_torch():
    x = jnp.asarray(_data((3, 6)))
    for add, plain in ((jaxnorm.AddLayerNorm(epsilon=1e-5), jaxnorm.LayerNorm(epsilon=1e-5)),
                       (jaxnorm.AddRMSNorm(scale_offset=1.0), jaxnorm.RMSNorm(scale_offset=1.0))):
        params, state = plain.init(jax.random.key(0), x)
        jax.tree.map(np.testing.assert_array_equal, add.init(jax.random.key(0), x)[0], params)
        r = jnp.cos(x)
        (y, h), _ = add.apply(params, state, x, residual=r)
        assert_close(y, plain.apply(params, state, x + r)[0])
        assert type(add).from_config(add.get_config()) == add
        with pytest.raises(ValueError, match=r"has no Keras layer equivalent"):
            add.to_keras_config()
    if importlib.util.find_spec("torch") is not None:
        from jaxnorm import interop

        with pytest.raises(TypeError, match=r"PyTorch has no add & norm, gated or fp8-output layer"):
            interop.to_torch(jaxnorm.AddRMSNorm(), {"scale": jnp.ones(6)}, {})
        with pytest.raises(ValueError, match=r"scale_offset: 1.0; PyTorch multiplies by its weight"):
            interop.to_torch(jaxnorm.RMSNorm(scale_offset=1.0), {"scale": jnp.ones(6)}, {})


def test_linen_drop_ins_equal_the_unfused_flax_form_dropout_included():
    x, r = jnp.asarray(_data((4, 6))), jnp.asarray(_data((4, 6), 1))
    for ours, theirs in ((jnn.AddLayerNorm(dropout_rate=0.3), nn.LayerNorm()),
                         (jnn.AddRMSNorm(dropout_rate=0.3, residual_in_float32=True), nn.RMSNorm())):
        class Unfused(nn.Module):
            norm: nn.Module

            @nn.compact
            def __call__(self, x, r, deterministic):
                h = nn.Dropout(0.3, deterministic=deterministic)(x) + r
                return self.norm(h), h

        ref = Unfused(theirs)
        variables = ours.init(jax.random.key(0), x, r, deterministic=True)
        want_vars = ref.init(jax.random.key(0), x, r, True)
        assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, {"params": want_vars["params"]["norm"]})
        rngs = {"dropout": jax.random.key(3)}
        got = ours.apply(variables, x, r, deterministic=False, rngs=rngs)
        want = ref.apply({"params": {"norm": variables["params"]}}, x, r, False, rngs=rngs)
        jax.tree.map(assert_close, got, want)
        assert ours.apply(variables, x, r, deterministic=True)[1].dtype == jnp.float32


def test_nnx_drop_ins_equal_the_unfused_flax_form_dropout_included():
    x, r = jnp.asarray(_data((4, 6))), jnp.asarray(_data((4, 6), 1))
    for ours_cls, theirs_cls in ((jnnx.AddLayerNorm, nnx.LayerNorm), (jnnx.AddRMSNorm, nnx.RMSNorm)):
        ours = ours_cls(6, dropout_rate=0.3, rngs=nnx.Rngs(0))
        rngs = nnx.Rngs(0)
        theirs, dropout = theirs_cls(6, rngs=rngs), nnx.Dropout(0.3, rngs=rngs)  # the same draws, in order
        y, h = ours(x, r)
        want_h = dropout(x) + r
        assert_close(h, want_h)
        assert_close(y, theirs(want_h))
        ours.eval()
        assert_close(ours(x, r)[1], x + r)
        plain = ours_cls(6, rngs=nnx.Rngs(0))  # without dropout, a LayerNorm's/RMSNorm's state
        assert jax.tree.structure(nnx.state(plain)) == jax.tree.structure(nnx.state(theirs_cls(6, rngs=nnx.Rngs(0))))


@pytest.mark.peers("equinox")
def test_equinox_drop_ins_equal_the_unfused_equinox_form():
    import equinox as eqx

    import jaxnorm.equinox as jeqx

    x, r = jnp.asarray(_data((6,))), jnp.asarray(_data((6,), 1))
    key = jax.random.key(4)
    for ours, theirs in ((jeqx.AddLayerNorm(6, dropout_rate=0.3), eqx.nn.LayerNorm(6)),
                         (jeqx.AddRMSNorm(6, dropout_rate=0.3), eqx.nn.RMSNorm(6))):
        y, h = ours(x, r, key=key)
        want_h = eqx.nn.Dropout(0.3)(x, key=key) + r
        assert_close(h, want_h)
        assert_close(y, theirs(want_h))
        assert_close(ours(x, r, inference=True)[1], x + r)
        plain = type(ours)(6)
        assert [a.shape for a in jax.tree.leaves(plain)] == [a.shape for a in jax.tree.leaves(theirs)]


def test_every_family_takes_adaln_zero_s_gate_as_the_op_does():
    """DiT's ``h = h + gate * attn(y)`` through each drop-in: the same ``(y, h)`` as the op with the layer's
    params, a gate per example broadcast over the tokens (a zero gate keeps the stream)."""
    x, r = jnp.asarray(_data((2, 3, 6))), jnp.asarray(_data((2, 3, 6), 1))
    gate = jnp.asarray(_data((2, 6), 2, scale=0.5))
    for kind, linen_cls, nnx_cls in (("layer", jnn.AddLayerNorm, jnnx.AddLayerNorm),
                                     ("rms", jnn.AddRMSNorm, jnnx.AddRMSNorm)):
        layer = linen_cls()
        variables = layer.init(jax.random.key(0), x, r)
        params = dict(variables["params"])
        want = _op(kind, x, r, params["scale"], params.get("bias"), gate=gate, epsilon=1e-6)
        jax.tree.map(assert_close, layer.apply(variables, x, r, gate=gate), want)
        jax.tree.map(assert_close, nnx_cls(6, rngs=nnx.Rngs(0))(x, r, gate=gate), want)
        assert_close(layer.apply(variables, x, r, gate=jnp.zeros((2, 6)))[1], r)
    if HAS_EQUINOX:
        import jaxnorm.equinox as jeqx

        g = gate[0]
        for kind, cls in (("layer", jeqx.AddLayerNorm), ("rms", jeqx.AddRMSNorm)):
            layer = cls(6, eps=1e-6, **({} if kind == "layer" else {"use_bias": False}))
            want = _op(kind, x[0, 0], r[0, 0], layer.weight, getattr(layer, "bias", None), gate=g, epsilon=1e-6)
            jax.tree.map(assert_close, layer(x[0, 0], r[0, 0], gate=g), want)


def test_bad_arguments_name_the_argument_and_the_fix():
    x = jnp.ones((2, 4))
    with pytest.raises(ValueError, match=r"`residual` must have x's shape \(2, 4\), got \(4,\).*pass None"):
        jaxnorm.add_rms_norm(x, jnp.ones(4))
    with pytest.raises(TypeError, match=r"`residual` must have a floating-point dtype"):
        jaxnorm.add_rms_norm(x, jnp.ones((2, 4), jnp.int32))
    with pytest.raises(ValueError, match=r"dropout_rate=0.1 needs a `dropout_key`.*fold_in"):
        jaxnorm.add_layer_norm(x, x, dropout_rate=0.1)
    with pytest.raises(TypeError, match=r"`dropout_key` must be a JAX PRNG key"):
        jaxnorm.add_layer_norm(x, x, dropout_rate=0.1, dropout_key=0)
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"`dropout_rate` must be in \[0, 1\)"):
            jaxnorm.add_layer_norm(x, x, dropout_rate=bad)
        with pytest.raises(ValueError, match=r"`dropout_rate` must be in \[0, 1\)"):
            jaxnorm.AddRMSNorm(dropout_rate=bad)
        with pytest.raises(ValueError, match=r"`dropout_rate` must be in \[0, 1\)"):
            jnn.AddLayerNorm(dropout_rate=bad).init(jax.random.key(0), x)
        with pytest.raises(ValueError, match=r"`dropout_rate` must be in \[0, 1\)"):
            jnnx.AddRMSNorm(4, dropout_rate=bad, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match=r"`residual_in_float32` must be"):
        jaxnorm.AddLayerNorm(residual_in_float32="yes")
    spec = jaxnorm.AddLayerNorm(dropout_rate=0.5)
    params, state = spec.init(None, x)
    with pytest.raises(ValueError, match=r"needs a `dropout_key`"):
        spec.apply(params, state, x, residual=x, training=True)
    with pytest.raises(TypeError, match=r"AddLayerNorm\.apply takes 3 positional arguments"):
        spec.apply(params, state, x, x)  # the residual is keyword-only
