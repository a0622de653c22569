"""fp8 output (``layer_norm_fp8``, ``rms_norm_fp8``): the quantized values and the amax against NumPy float64, the
rounding and saturation, both fp8 formats, a ``dot_general`` on fp8 operands, gradients, jit/export, and
errors."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import jaxnorm
from tests import reference
from tests.tolerances import assert_close

KINDS = {"layer": jaxnorm.layer_norm_fp8, "rms": jaxnorm.rms_norm_fp8}


def _data(shape, seed=0, loc=0.3, scale=1.5):
    return (np.random.default_rng(seed).standard_normal(shape) * scale + loc).astype(np.float32)


def _ref(kind, x, scale, eps):
    if kind == "rms":
        return reference.rms_norm(x, (x.ndim - 1,), scale, eps)
    return reference.layer_norm(x, (x.ndim - 1,), scale, None, eps)


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("dtype", [jnp.float8_e4m3fn, jnp.float8_e5m2])
def test_values_are_the_float64_output_rounded_once(kind, dtype):
    x, w = _data((6, 32)), _data((32,), 1, loc=1.0, scale=0.3)
    eps, out_scale = 1e-5, 37.0
    q, amax = KINDS[kind](x, w, out_scale=out_scale, out_dtype=dtype, epsilon=eps)
    assert q.dtype == dtype and q.shape == x.shape and amax.dtype == jnp.float32 and amax.shape == ()
    y64 = _ref(kind, x, w, eps)
    assert_close(amax, np.max(np.abs(y64)))
    limit = float(ml_dtypes.finfo(dtype).max)
    want = np.clip(y64 * out_scale, -limit, limit)
    got = np.asarray(q, np.float64)
    # one rounding to the format: within half a unit in the last place (3 mantissa bits e4m3, 2 for e5m2)
    ulp = 2.0 ** (np.floor(np.log2(np.maximum(np.abs(want), 2.0**-6))) - ml_dtypes.finfo(dtype).nmant)
    assert np.all(np.abs(got - want) <= ulp / 2 + 1e-6 * np.abs(want)), np.max(np.abs(got - want) / ulp)


def test_rounding_is_to_nearest_even_and_overflow_saturates():
    x = jnp.array([[-1.0, 1.0]])  # layer_norm: -1, 1 (epsilon 0)
    q, _ = jaxnorm.layer_norm_fp8(x, out_scale=100.0, epsilon=0.0)  # 100: halfway between 96 and 104
    np.testing.assert_array_equal(np.asarray(q, np.float32), [[-96.0, 96.0]])
    q, amax = jaxnorm.layer_norm_fp8(x, out_scale=1e6, epsilon=0.0)
    np.testing.assert_array_equal(np.asarray(q, np.float32), [[-448.0, 448.0]])  # not inf, not NaN
    assert float(amax) == 1.0
    q, amax = jaxnorm.rms_norm_fp8(jnp.array([[1.0, jnp.nan]]), out_scale=1.0)
    assert np.isnan(float(amax)) and np.isnan(np.asarray(q, np.float32)).all()


def test_bf16_input_is_rounded_once_from_float32():
    x = jnp.asarray(_data((4, 64), loc=300.0), jnp.bfloat16)  # offset data: float32 statistics
    q, amax = jaxnorm.layer_norm_fp8(x, out_scale=64.0)
    y = jaxnorm.layer_norm(x.astype(jnp.float32))
    np.testing.assert_array_equal(np.asarray(q, np.float32),
                                  np.asarray(jnp.clip(y * 64.0, -448, 448).astype(jnp.float8_e4m3fn), np.float32))
    assert_close(amax, jnp.max(jnp.abs(y)))


def test_the_output_feeds_an_fp8_dot_general():
    x, w = _data((16, 64)), _data((64, 8), 1, loc=0.0, scale=0.1)
    sx = 448.0 / 4.0  # |y| of a LayerNorm stays below about 4 here
    qx, amax = jaxnorm.layer_norm_fp8(x, out_scale=sx, epsilon=1e-5)
    sw = 448.0 / float(np.max(np.abs(w)))
    qw = jnp.clip(jnp.asarray(w) * sw, -448, 448).astype(jnp.float8_e4m3fn)
    out = jax.lax.dot_general(qx, qw, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32) / (sx * sw)
    want = reference.layer_norm(x, (1,), epsilon=1e-5) @ w.astype(np.float64)
    assert float(amax) < 4.0
    np.testing.assert_allclose(np.asarray(out), want, atol=0.1 * np.max(np.abs(want)))  # fp8's ~6% per operand


def test_gradients_flow_through_the_quantization_and_it_exports():
    x, w = jnp.asarray(_data((4, 16))), jnp.asarray(_data((16,), 1, loc=1.0, scale=0.3))

    def loss(x, w, s):
        q, amax = jaxnorm.rms_norm_fp8(x, w, out_scale=s)
        return jnp.sum(q.astype(jnp.float32) ** 2) / s**2 + amax

    step = jax.jit(jax.grad(loss, (0, 1)))
    dx, dw = step(x, w, jnp.float32(8.0))  # a traced scale: delayed scaling updates it each step
    assert np.isfinite(np.asarray(dx)).all() and np.isfinite(np.asarray(dw)).all() and float(jnp.abs(dw).sum()) > 0
    back = jax.export.deserialize(jax.export.export(step)(x, w, jnp.float32(8.0)).serialize())
    jax.tree.map(np.testing.assert_array_equal, back.call(x, w, jnp.float32(8.0)), (dx, dw))


def test_bad_arguments_name_the_argument_and_the_fix():
    x = jnp.ones((2, 4))
    with pytest.raises(TypeError, match=r"missing 1 required keyword-only argument: 'out_scale'"):
        jaxnorm.layer_norm_fp8(x)
    with pytest.raises(ValueError, match=r"`out_dtype` must be an fp8 dtype.*For a 16- or 32-bit output"):
        jaxnorm.layer_norm_fp8(x, out_scale=1.0, out_dtype=jnp.bfloat16)
    with pytest.raises(ValueError, match=r"`out_scale` must be a scalar \(one scale per tensor\), got shape \(4,\)"):
        jaxnorm.rms_norm_fp8(x, out_scale=jnp.ones(4))
    with pytest.raises(TypeError, match=r"`out_scale` must be an array"):
        jaxnorm.rms_norm_fp8(x, out_scale="big")


def test_every_family_matches_the_op():
    from flax import nnx

    from jaxnorm import linen as jnn
    from jaxnorm import nnx as jnnx

    x, w, b = _data((2, 3, 8)), _data((8,), 1, loc=1.0, scale=0.3), _data((8,), 2, scale=0.3)
    for name, op, params in (("LayerNormFP8", jaxnorm.layer_norm_fp8, {"scale": w, "bias": b}),
                             ("RMSNormFP8", jaxnorm.rms_norm_fp8, {"scale": w})):
        want = op(x, *params.values(), out_scale=24.0, epsilon=1e-5)
        spec = getattr(jaxnorm, name)(epsilon=1e-5)
        assert spec.init(None, x)[0].keys() == params.keys()  # the normalization's params
        got = {"spec": spec.apply(params, {}, x, out_scale=24.0)[0],
               "linen": getattr(jnn, name)(epsilon=1e-5).apply({"params": params}, x, 24.0)}
        mod = getattr(jnnx, name)(8, epsilon=1e-5, rngs=nnx.Rngs(0))
        nnx.update(mod, nnx.State({k: nnx.Param(jnp.asarray(v)) for k, v in params.items()}))
        got["nnx"] = mod(x, 24.0)
        try:
            import equinox as eqx

            import jaxnorm.equinox as jeqx
        except ImportError:
            pass
        else:
            eq = getattr(jeqx, name)(8, eps=1e-5, use_bias=name == "LayerNormFP8")
            eq = eqx.tree_at(lambda m: m.weight, eq, jnp.asarray(w))
            if name == "LayerNormFP8":
                eq = eqx.tree_at(lambda m: m.bias, eq, jnp.asarray(b))
            q, amax = jax.vmap(jax.vmap(lambda v: eq(v, 24.0)))(x)
            got["equinox"] = (q, jnp.max(amax))  # per token, as equinox's layers see one example
        for family, (q, amax) in got.items():
            assert q.dtype == jnp.float8_e4m3fn, family
            np.testing.assert_array_equal(np.asarray(q, np.float32), np.asarray(want[0], np.float32), family)
            assert_close(amax, want[1])
        assert type(spec).from_config(spec.get_config()) == spec
        with pytest.raises(ValueError, match=r"has no Keras layer equivalent"):
            spec.to_keras_config()
    with pytest.raises(ValueError, match=r"`out_dtype` must be an fp8 dtype"):
        jaxnorm.RMSNormFP8(out_dtype="bfloat16")
    with pytest.raises(TypeError, match=r"`out_scale` must be given"):
        jaxnorm.LayerNormFP8().apply({"scale": jnp.ones(8), "bias": jnp.zeros(8)}, {}, x)
