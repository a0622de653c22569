"""The statistics kernel's formulations (jaxnorm/_src/stats.py, passes.py): one branch-free program per platform,
chosen by JAX's lowering (no module state), exact against NumPy float64 in the default range and, with
``extreme_range=True``, at every float32 magnitude, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnorm
from tests import reference as ref

EPS = 1e-5
# (name, x in float64 before the float32 cast, inside the default range?)
DATA = {
    "offset 1e4": (lambda r, s: 1e4 + r.standard_normal(s), True),
    "offset 1e5, std 1e-1": (lambda r, s: 1e5 + 1e-1 * r.standard_normal(s), True),
    "1e18": (lambda r, s: 1e18 * r.standard_normal(s), True),
    "1e-12": (lambda r, s: 1e-12 * r.standard_normal(s), True),
    "1e30": (lambda r, s: 1e30 * r.standard_normal(s), False),
    "1e-30": (lambda r, s: 1e-30 * r.standard_normal(s), False),
    "3e38 both signs": (lambda r, s: 3e38 * r.uniform(-1, 1, s), False),
    "constant": (lambda r, s: np.full(s, 7.0), True),
}
EPS_OF = {"1e-12": 0.0, "1e-30": 0.0}  # tiny data: epsilon 0, so that the variance itself decides


def _ops(eps, extreme):
    """(jaxnorm call, float64 reference) on (8, 6, 32) data."""
    kw = dict(epsilon=eps, extreme_range=extreme)
    return {
        "layer_norm": (lambda x: jaxnorm.layer_norm(x, **kw), lambda x: ref.standardize(x, (2,), True, eps)),
        "rms_norm": (lambda x: jaxnorm.rms_norm(x, **kw), lambda x: ref.standardize(x, (2,), False, eps)),
        "batch_norm": (
            lambda x: jaxnorm.normalize_batch_in_training(x, None, None, (0, 1), **kw)[0],
            lambda x: ref.standardize(x, (0, 1), True, eps),
        ),
        "group_norm": (
            lambda x: jaxnorm.group_norm(x, num_groups=4, **kw),
            lambda x: ref.standardize(x.reshape(8, 6, 4, 8), (1, 3), True, eps).reshape(x.shape),
        ),
        "masked_layer_norm": (
            lambda x: jaxnorm.layer_norm(x, where=jnp.arange(32) < 24, **kw)[..., :24],
            lambda x: ref.standardize(x[..., :24], (2,), True, eps),
        ),
    }


OPS = sorted(_ops(EPS, False))


def _error(op, data, extreme):
    make, _ = DATA[data]
    x32 = np.asarray(make(np.random.default_rng(0), (8, 6, 32)), np.float32)
    eps = EPS_OF.get(data, EPS)
    fn, reference = _ops(eps, extreme)[op]
    want = reference(x32.astype(np.float64))
    y = np.asarray(jax.jit(fn)(jnp.asarray(x32)), np.float64)
    return y, want


def _assert_exact(y, want, data):
    """Within float32 rounding of float64 (2e-6 of the output), plus, on offset data, float32's rounding of the
    mean itself: ``ulp(mean) / std`` (a float32 mean near 1e5 moves in steps of 0.0078)."""
    tol = 2e-6 * max(1.0, np.max(np.abs(want)))
    if data.startswith("offset"):
        x = DATA[data][0](np.random.default_rng(0), (8, 6, 32)).astype(np.float32).astype(np.float64)
        tol += float(np.spacing(np.float32(np.max(np.abs(x))))) / np.std(x)
    np.testing.assert_allclose(y, want, atol=tol, rtol=0)


@pytest.mark.parametrize("data", sorted(DATA))
@pytest.mark.parametrize("op", OPS)
def test_extreme_range_is_exact_at_every_magnitude(op, data):
    """Values within float32 rounding of the float64 result (:func:`_assert_exact`)."""
    y, want = _error(op, data, extreme=True)
    assert np.all(np.isfinite(y)), data
    _assert_exact(y, want, data)


@pytest.mark.parametrize("data", sorted(d for d, (_, inside) in DATA.items() if inside))
@pytest.mark.parametrize("op", OPS)
def test_default_range_is_exact(op, data):
    """The default kernel gives the float64 result inside its documented range (offset data included)."""
    y, want = _error(op, data, extreme=False)
    _assert_exact(y, want, data)


@pytest.mark.parametrize("data", ["1e30", "1e-30"])
def test_outside_the_default_range_the_result_is_not_silently_plausible(data):
    """Beyond the default range the default kernel is documented to fail (squares overflow to inf, or underflow
    to a zero variance): the output is then non-finite or zero, never a plausible wrong number. This pins the
    README's statement of the range; extreme_range=True is the fix (test above)."""
    y, want = _error("layer_norm", data, extreme=False)
    assert not np.allclose(y, want, atol=1e-3)
    assert np.all(~np.isfinite(y) | (y == 0)), y


def test_shift_sample_bounds_the_error_when_the_first_value_is_an_outlier():
    """The default kernel shifts by the mean of each reduction's first 32 values: a massive first value (an
    outlier 1e4 sigma out, as Transformers' massive activations) costs at most a few float32 ulps."""
    r = np.random.default_rng(5)
    x = 3.0 + r.standard_normal((4, 4096))
    x[:, 0] = 1e4
    x32 = x.astype(np.float32)
    _, var = jaxnorm.moments(jnp.asarray(x32), 1)
    want = x32.astype(np.float64).var(1)
    np.testing.assert_allclose(np.asarray(var, np.float64), want, rtol=2e-6)


@pytest.mark.parametrize("data", ["1e30", "1e-30"])  # (at 3e38 the gradients are below float32's normals)
def test_extreme_range_gradients_match_float64(data):
    x32 = np.asarray(DATA[data][0](np.random.default_rng(3), (4, 64)), np.float32)
    w = np.random.default_rng(4).standard_normal((4, 64))

    def loss(x):
        return jnp.sum(jaxnorm.layer_norm(x, epsilon=EPS, extreme_range=True) * jnp.asarray(w, jnp.float32))

    got = np.asarray(jax.jit(jax.grad(loss))(jnp.asarray(x32)), np.float64)
    want = ref.row_norm_grads(x32, None, None, w, EPS, True)[0]
    np.testing.assert_allclose(got, want, atol=1e-5 * np.max(np.abs(want)), rtol=0)


def _lowered(fn, x, platform):
    return jax.jit(fn).trace(x).lower(lowering_platforms=(platform,)).as_text()


@pytest.mark.parametrize("extreme", [False, True])
@pytest.mark.parametrize("op", OPS)
def test_each_platform_gets_one_branch_free_program(op, extreme):
    """Forward and gradient lower without a conditional or a host callback on every platform; the CPU program
    carries the scheduling barriers (passes.fresh), the GPU and TPU programs none. The choice is JAX's lowering
    for the target platform, so one exported program may carry both."""
    fn = _ops(EPS, extreme)[op][0]
    w = jnp.asarray(np.random.default_rng(2).standard_normal((8, 6, 32)), jnp.float32)

    def step(x):
        out = fn(x)
        return jax.value_and_grad(lambda x: jnp.sum(fn(x) * w[..., : out.shape[-1]]))(x)

    x = jnp.asarray(np.random.default_rng(1).standard_normal((8, 6, 32)) * 3 + 2, jnp.float32)
    texts = {p: _lowered(step, x, p) for p in ("cpu", "cuda", "tpu")}
    for platform, text in texts.items():
        for forbidden in ("stablehlo.case", "stablehlo.if", "callback", "stablehlo.custom_call"):
            assert forbidden not in text, (platform, forbidden)
    assert "optimization_barrier" in texts["cpu"]
    assert "optimization_barrier" not in texts["cuda"] and "optimization_barrier" not in texts["tpu"]


def test_a_multi_platform_export_carries_each_platforms_program():
    """``jax.export`` for CPU and CUDA at once: one serialized program that runs here (the CPU branch)."""
    x = jnp.asarray(np.random.default_rng(1).standard_normal((4, 16)) + 5, jnp.float32)
    fn = jax.jit(lambda x: jaxnorm.layer_norm(x, epsilon=EPS))
    exported = jax.export.export(fn, platforms=("cpu", "cuda"))(x)
    back = jax.export.deserialize(exported.serialize())
    np.testing.assert_array_equal(back.call(x), fn(x))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_every_op_and_spec_runs_under_strict_dtype_promotion(dtype):
    """``jax.numpy_dtype_promotion("strict")`` (equinox's own tests run under it): the kernel promotes nothing
    implicitly, for 16-bit input with float32 parameters and statistics too, forward and gradient. (Flax's own
    LayerNorm and BatchNorm raise there on bfloat16 input with float32 parameters; the Flax drop-ins follow
    them.)"""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 4, 16)) + 3, dtype)
    s, b = jnp.ones(16), jnp.zeros(16)
    calls = {
        "layer_norm": lambda x: jaxnorm.layer_norm(x, s, b),
        "layer_norm_masked_extreme": lambda x: jaxnorm.layer_norm(
            x, where=jnp.ones(x.shape, bool), extreme_range=True),
        "rms_norm": lambda x: jaxnorm.rms_norm(x, s),
        "group_norm": lambda x: jaxnorm.group_norm(x, s, b, num_groups=4),
        "instance_norm": lambda x: jaxnorm.instance_norm(x, s, b),
        "batch_norm_op": lambda x: jaxnorm.normalize_batch_in_training(x, s, b, (0, 1))[0],
        "unit_norm": lambda x: jaxnorm.unit_norm(x),
        "moments": lambda x: jaxnorm.moments(x, (0, 1))[1],
    }
    for spec in (jaxnorm.BatchNorm(), jaxnorm.LayerNorm(), jaxnorm.RMSNorm(), jaxnorm.GroupNorm(num_groups=4),
                 jaxnorm.InstanceNorm(), jaxnorm.UnitNormalization()):
        params, state = spec.init(jax.random.key(0), x)
        calls[type(spec).__name__] = (
            lambda x, spec=spec, p=params, st=state: spec.apply(p, st, x, training=True)[0])
    with jax.numpy_dtype_promotion("strict"):
        for name, f in calls.items():
            y = f(x)
            g = jax.grad(lambda x, f=f: jnp.sum(f(x).astype(jnp.float32)))(x)
            assert y.dtype in (dtype, jnp.float32) and g.dtype == dtype, name
            assert np.isfinite(np.asarray(g, np.float32)).all(), name
