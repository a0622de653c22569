"""Gated RMSNorm (op ``gated_rms_norm``, spec ``GatedRMSNorm``, the linen, nnx and equinox drop-ins): both orders and
groups against NumPy float64 (mamba_ssm's and Qwen3-Next's formulas), float64 finite-difference gradients, the
half-precision rounding order, every family against the op, and errors. (jit, vmap, export and the promises run
through the registries' ``GatedRMSNorm`` entries.)"""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

import jaxnorm
from jaxnorm import linen as jnn
from jaxnorm import nnx as jnnx
from tests.tolerances import assert_close

HAS_EQUINOX = importlib.util.find_spec("equinox") is not None


def _data(shape, seed=0, loc=0.3, scale=1.5):
    return (np.random.default_rng(seed).standard_normal(shape) * scale + loc).astype(np.float32)


def _reference(x, z, weight, norm_before_gate, group_size, eps, bias=None):
    """mamba_ssm's ``rmsnorm_fn`` (and Qwen3-Next's for ``norm_before_gate=True``) in NumPy float64."""
    x, z = np.asarray(x, np.float64), np.asarray(z, np.float64)
    silu = z / (1 + np.exp(-z))
    if not norm_before_gate:
        x = x * silu
    c = x.shape[-1]
    g = c if group_size is None else group_size
    xg = x.reshape(x.shape[:-1] + (c // g, g))
    xhat = (xg / np.sqrt(np.mean(xg * xg, -1, keepdims=True) + eps)).reshape(x.shape)
    out = xhat * (1.0 if weight is None else np.asarray(weight, np.float64))
    if bias is not None:
        out = out + np.asarray(bias, np.float64)
    return out * silu if norm_before_gate else out


@pytest.mark.parametrize("norm_before_gate", [True, False])
@pytest.mark.parametrize("group_size", [None, 4])
def test_op_matches_the_float64_reference(norm_before_gate, group_size):
    x, z, w = _data((3, 5, 8)), _data((3, 5, 8), 1, loc=0.0), _data((8,), 2, loc=1.0, scale=0.2)
    y = jaxnorm.gated_rms_norm(x, z, w, norm_before_gate=norm_before_gate, group_size=group_size, epsilon=1e-5)
    assert y.shape == x.shape and y.dtype == jnp.float32
    assert_close(y, _reference(x, z, w, norm_before_gate, group_size, 1e-5))


def test_the_two_orders_differ_and_groups_matter():
    """The test can tell the orders and the groups apart (each changes the output by more than rounding)."""
    x, z = _data((4, 8)), _data((4, 8), 1, loc=0.0)
    outs = [np.asarray(jaxnorm.gated_rms_norm(x, z, norm_before_gate=b, group_size=g)) for b in (True, False)
            for g in (None, 2)]
    for i in range(len(outs)):
        for j in range(i):
            assert np.max(np.abs(outs[i] - outs[j])) > 1e-2


@pytest.mark.parametrize("norm_before_gate", [True, False])
def test_gradients_match_finite_differences_in_float64(norm_before_gate):
    with jax.enable_x64(True):
        x = jnp.asarray(_data((3, 6)), jnp.float64)
        z = jnp.asarray(_data((3, 6), 1, loc=0.0), jnp.float64)
        w = jnp.asarray(_data((6,), 2, loc=1.0, scale=0.2), jnp.float64)

        def f(x, z, w):
            return jaxnorm.gated_rms_norm(x, z, w, norm_before_gate=norm_before_gate, group_size=3, epsilon=1e-3)

        check_grads(f, (x, z, w), order=1, modes=["rev", "fwd"])


def test_half_precision_rounds_as_the_unfused_forms_do():
    """bfloat16: the norm's output (in x's dtype) before the gate, or the gated input before the norm, each
    rounded once; silu(z) in float32."""
    x = jnp.asarray(_data((4, 16)), jnp.bfloat16)
    z = jnp.asarray(_data((4, 16), 1, loc=0.0), jnp.bfloat16)
    before = jaxnorm.gated_rms_norm(x, z, norm_before_gate=True)
    want = (jaxnorm.rms_norm(x).astype(jnp.float32) * jax.nn.silu(z.astype(jnp.float32))).astype(jnp.bfloat16)
    assert before.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(before, np.float32), np.asarray(want, np.float32))
    after = jaxnorm.gated_rms_norm(x, z, norm_before_gate=False)
    gated = (x.astype(jnp.float32) * jax.nn.silu(z.astype(jnp.float32))).astype(jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(after, np.float32), np.asarray(jaxnorm.rms_norm(gated), np.float32))
    assert jaxnorm.gated_rms_norm(x, z.astype(jnp.float32), norm_before_gate=True).dtype == jnp.float32


def test_every_family_matches_the_op():
    x, z, w = _data((2, 3, 8)), _data((2, 3, 8), 1, loc=0.0), _data((8,), 2, loc=1.0, scale=0.2)
    for before, groups in ((True, None), (False, 4)):
        want = jaxnorm.gated_rms_norm(x, z, w, norm_before_gate=before, group_size=groups, epsilon=1e-5)
        spec = jaxnorm.GatedRMSNorm(norm_before_gate=before, group_size=groups, epsilon=1e-5)
        assert_close(spec.apply({"scale": jnp.asarray(w)}, {}, x, gate=z)[0], want)
        lin = jnn.GatedRMSNorm(norm_before_gate=before, group_size=groups, epsilon=1e-5)
        assert_close(lin.apply({"params": {"scale": jnp.asarray(w)}}, x, z), want)
        mod = jnnx.GatedRMSNorm(8, norm_before_gate=before, group_size=groups, epsilon=1e-5, rngs=nnx.Rngs(0))
        mod.scale.value = jnp.asarray(w)
        assert_close(mod(x, z), want)
        assert jax.tree.structure(nnx.state(mod)) == jax.tree.structure(nnx.state(nnx.RMSNorm(8, rngs=nnx.Rngs(0))))
        if HAS_EQUINOX:
            import equinox as eqx

            import jaxnorm.equinox as jeqx

            eq = jeqx.GatedRMSNorm(8, eps=1e-5, use_bias=False, norm_before_gate=before, group_size=groups)
            eq = eqx.tree_at(lambda m: m.weight, eq, jnp.asarray(w))
            assert_close(jax.vmap(jax.vmap(eq))(x, z), want)


@pytest.mark.peers("equinox")
def test_equinox_bias_comes_before_the_gate_as_mamba_ssm_s():
    import equinox as eqx

    import jaxnorm.equinox as jeqx

    x, z = jnp.asarray(_data((8,))), jnp.asarray(_data((8,), 1, loc=0.0))
    w, b = _data((8,), 2, loc=1.0, scale=0.2), _data((8,), 3, scale=0.5)
    for before in (True, False):
        eq = jeqx.GatedRMSNorm(8, eps=1e-5, norm_before_gate=before)
        eq = eqx.tree_at(lambda m: (m.weight, m.bias), eq, (jnp.asarray(w), jnp.asarray(b)))
        assert_close(eq(x, z), _reference(x, z, w, before, None, 1e-5, bias=b))
        leaves = [a.shape for a in jax.tree.leaves(eq)]
        assert leaves == [a.shape for a in jax.tree.leaves(eqx.nn.RMSNorm(8))]  # equinox's weight and bias


def test_masked_out_nan_stays_out_of_the_statistics():
    x, z = _data((4, 8)), _data((4, 8), 1, loc=0.0)
    mask = np.random.default_rng(2).random(x.shape) < 0.7
    mask[:, 0] = True
    for before in (True, False):
        clean = jaxnorm.gated_rms_norm(x, z, norm_before_gate=before, where=mask)
        dirty = jaxnorm.gated_rms_norm(np.where(mask, x, np.nan), z, norm_before_gate=before, where=mask)
        np.testing.assert_allclose(np.asarray(dirty)[mask], np.asarray(clean)[mask], rtol=1e-6)


def test_bad_arguments_name_the_argument_and_the_fix():
    x = jnp.ones((2, 8))
    with pytest.raises(TypeError, match=r"missing 1 required keyword-only argument: 'norm_before_gate'"):
        jaxnorm.gated_rms_norm(x, x)
    for build in (lambda: jaxnorm.gated_rms_norm(x, x, norm_before_gate=1),
                  lambda: jaxnorm.GatedRMSNorm(norm_before_gate="yes"),
                  lambda: jnn.GatedRMSNorm().init(jax.random.key(0), x, x),
                  lambda: jnnx.GatedRMSNorm(8, norm_before_gate=None, rngs=nnx.Rngs(0))):
        with pytest.raises(TypeError, match=r"`norm_before_gate` must be True .*Qwen3-Next.* or False .*Mamba-2"):
            build()
    with pytest.raises(ValueError, match=r"`gate` must have x's shape \(2, 8\), got \(8,\)"):
        jaxnorm.gated_rms_norm(x, jnp.ones(8), norm_before_gate=True)
    with pytest.raises(TypeError, match=r"`gate` must be an array of x's shape .*got None"):
        jaxnorm.GatedRMSNorm(norm_before_gate=True).apply({"scale": jnp.ones(8)}, {}, x)
    with pytest.raises(ValueError, match=r"`group_size`=3 must divide the last axis of x \(8 features"):
        jaxnorm.gated_rms_norm(x, x, norm_before_gate=True, group_size=3)
    with pytest.raises(ValueError, match=r"`group_size` must be None .* or a positive int, got 0"):
        jaxnorm.GatedRMSNorm(norm_before_gate=True, group_size=0)
    with pytest.raises(ValueError, match=r"GatedRMSNorm normalizes the last axis.*axis=0"):
        jaxnorm.GatedRMSNorm(norm_before_gate=True, axis=0)
    with pytest.raises(ValueError, match=r"normalizes the last axis.*reduction_axes=0"):
        jnn.GatedRMSNorm(norm_before_gate=True, reduction_axes=0).init(jax.random.key(0), x, x)


def test_configs_round_trip_and_the_converters_refuse():
    spec = jaxnorm.GatedRMSNorm(norm_before_gate=False, group_size=4, epsilon=1e-5)
    assert jaxnorm.GatedRMSNorm.from_config(spec.get_config()) == spec
    with pytest.raises(ValueError, match=r"has no Keras layer equivalent"):
        spec.to_keras_config()
    if importlib.util.find_spec("torch") is not None:
        from jaxnorm import interop

        with pytest.raises(TypeError, match=r"PyTorch has no add & norm, gated or fp8-output layer"):
            interop.to_torch(spec, {"scale": jnp.ones(8)}, {})
