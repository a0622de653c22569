"""Adaptive normalization (op ``adaptive_norm``, spec ``AdaptiveNorm``, the linen, nnx and equinox drop-ins) and
AdaLN-Zero's gate (``add_layer_norm(..., gate=)``): NumPy float64 references of DiT's ``modulate``, float64 finite
differences, the per-example broadcast, half precision, every family against the op, and errors. (jit, vmap,
export and the promises run through the registries' ``AdaptiveNorm`` entries.)"""

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
from tests import reference
from tests.tolerances import assert_close

HAS_EQUINOX = importlib.util.find_spec("equinox") is not None


def _data(shape, seed=0, loc=0.3, scale=1.5):
    return (np.random.default_rng(seed).standard_normal(shape) * scale + loc).astype(np.float32)


def _dit_modulate(x, shift, scale, rms=False, eps=1e-6):
    """DiT: ``modulate(norm(x), shift, scale) = norm(x) * (1 + scale[:, None]) + shift[:, None]``, float64."""
    norm = reference.rms_norm(x, (x.ndim - 1,), epsilon=eps) if rms else reference.layer_norm(x, (x.ndim - 1,),
                                                                                             epsilon=eps)
    return norm * (1 + np.asarray(scale, np.float64)[:, None]) + np.asarray(shift, np.float64)[:, None]


@pytest.mark.parametrize("rms", [False, True])
def test_op_matches_dit_s_modulate_in_float64(rms):
    x, shift, scale = _data((3, 7, 8)), _data((3, 8), 1, scale=0.5), _data((3, 8), 2, scale=0.5)
    y = jaxnorm.adaptive_norm(x, shift, scale, rms=rms)
    assert y.shape == x.shape and y.dtype == jnp.float32
    assert_close(y, _dit_modulate(x, shift, scale, rms))
    # (N, C) is one row per example: the same as (N, 1, C) given explicitly
    np.testing.assert_array_equal(y, jaxnorm.adaptive_norm(x, shift[:, None], scale[:, None], rms=rms))


def test_gradients_match_finite_differences_in_float64():
    with jax.enable_x64(True):
        x = jnp.asarray(_data((2, 3, 6)), jnp.float64)
        shift, scale = (jnp.asarray(_data((2, 6), s, scale=0.5), jnp.float64) for s in (1, 2))
        for rms in (False, True):
            check_grads(lambda x, a, b, rms=rms: jaxnorm.adaptive_norm(x, a, b, rms=rms, epsilon=1e-3),
                        (x, shift, scale), order=1, modes=["rev", "fwd"])


def test_half_precision_input_keeps_its_dtype_and_float32_arithmetic():
    x = jnp.asarray(_data((2, 4, 16), loc=300.0), jnp.bfloat16)  # offset data: the statistics are float32's
    shift, scale = _data((2, 16), 1, scale=0.5), _data((2, 16), 2, scale=0.5)
    y = jaxnorm.adaptive_norm(x, shift, scale)
    assert y.dtype == jnp.bfloat16
    assert_close(y, _dit_modulate(np.asarray(x, np.float64), shift, scale), jnp.bfloat16, scale=2)


def test_adaln_zero_gates_the_residual_branch():
    """DiT's block ``h = h + gate * attn(y)`` as one add & norm, its next norm modulated: a zero gate leaves the
    stream as it was (the AdaLN-Zero initialization)."""
    x, r = _data((2, 5, 8)), _data((2, 5, 8), 1)
    gate = _data((2, 8), 2, scale=0.5)
    y, h = jaxnorm.add_layer_norm(x, r, gate=gate)
    assert_close(h, r + gate[:, None] * x.astype(np.float64))
    assert_close(y, reference.layer_norm(r + gate[:, None] * x.astype(np.float64), (2,)))
    _, h0 = jaxnorm.add_rms_norm(x, r, gate=np.zeros((2, 8), np.float32))
    np.testing.assert_array_equal(h0, r)
    spec = jaxnorm.AddLayerNorm()
    (y_spec, h_spec), _ = spec.apply(*spec.init(None, x), x, residual=r, gate=gate)
    assert_close(h_spec, h)
    with pytest.raises(ValueError, match=r"`gate` of shape \(3,\) does not broadcast to x's shape"):
        jaxnorm.add_layer_norm(x, r, gate=np.ones(3, np.float32))


def test_every_family_matches_the_op():
    x, shift, scale = _data((2, 3, 8)), _data((2, 8), 1, scale=0.5), _data((2, 8), 2, scale=0.5)
    for rms in (False, True):
        want = jaxnorm.adaptive_norm(x, shift, scale, rms=rms)
        spec = jaxnorm.AdaptiveNorm(rms=rms)
        params, state = spec.init(jax.random.key(0), x)
        assert params == {} and state == {}
        assert_close(spec.apply(params, state, x, shift=shift, scale=scale)[0], want)
        lin = jnn.AdaptiveNorm(rms=rms)
        assert lin.init(jax.random.key(0), x, shift, scale) == {}
        assert_close(lin.apply({}, x, shift, scale), want)
        mod = jnnx.AdaptiveNorm(8, rms=rms)
        assert_close(mod(x, shift, scale), want)
        assert not jax.tree.leaves(nnx.state(mod))
        if HAS_EQUINOX:
            import jaxnorm.equinox as jeqx

            eq = jeqx.AdaptiveNorm(8, rms=rms)
            got = jax.vmap(lambda xi, a, b: jax.vmap(eq, in_axes=(0, None, None))(xi, a, b))(x, shift, scale)
            assert_close(got, want)


def test_masked_out_nan_stays_out_of_the_statistics():
    x, shift, scale = _data((2, 4, 8)), _data((2, 8), 1), _data((2, 8), 2)
    mask = np.random.default_rng(3).random(x.shape) < 0.7
    mask[..., 0] = True
    clean = jaxnorm.adaptive_norm(x, shift, scale, where=mask)
    dirty = jaxnorm.adaptive_norm(np.where(mask, x, np.nan), shift, scale, where=mask)
    np.testing.assert_allclose(np.asarray(dirty)[mask], np.asarray(clean)[mask], rtol=1e-6)


def test_bad_arguments_name_the_argument_and_the_fix():
    x = jnp.ones((2, 3, 8))
    with pytest.raises(ValueError, match=r"`shift` of shape \(4, 8\) does not broadcast to x's shape \(2, 3, 8\).*"
                                         r"\(N, C\) = \(2, 8\)"):
        jaxnorm.adaptive_norm(x, jnp.ones((4, 8)), jnp.ones((2, 8)))
    with pytest.raises(TypeError, match=r"`scale` must have a floating-point dtype"):
        jaxnorm.adaptive_norm(x, jnp.ones((2, 8)), jnp.ones((2, 8), jnp.int32))
    with pytest.raises(TypeError, match=r"`rms` must be"):
        jaxnorm.AdaptiveNorm(rms="no")
    with pytest.raises(TypeError, match=r"`shift` must be given: AdaptiveNorm.apply\(params, state, x, shift=\.\.\."):
        jaxnorm.AdaptiveNorm().apply({}, {}, x, scale=jnp.ones((2, 8)))
    with pytest.raises(ValueError, match=r"AdaptiveNorm\(4\) got x of shape \(2, 3, 8\)"):
        jnnx.AdaptiveNorm(4)(x, jnp.ones((2, 8)), jnp.ones((2, 8)))


def test_configs_round_trip_and_keras_refuses():
    spec = jaxnorm.AdaptiveNorm(axis=(1, 2), epsilon=1e-5, rms=True)
    assert jaxnorm.AdaptiveNorm.from_config(spec.get_config()) == spec
    with pytest.raises(ValueError, match=r"has no Keras layer equivalent"):
        spec.to_keras_config()
