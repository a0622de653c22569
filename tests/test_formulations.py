"""The accelerator formulation of the statistics (``stats.accelerator()``: branch-free exact statistics, no
per-pass barriers, no blocked row loop), which GPUs and TPUs trace, checked on the CPU against NumPy float64 at
every float32 magnitude, with gradients, and against the CPU formulation. The whole suite can run with it:
``JAXNORM_TEST_FORMULATION=accelerator python -m pytest``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnorm
from jaxnorm._src import stats
from tests import reference as ref

EPS = 1e-5
# (name, x in float64 before the float32 cast): offsets that cancel, magnitudes whose squares overflow or
# underflow float32, both signs at float32's limit, a constant row.
DATA = {
    "offset 1e4": lambda r, s: 1e4 + r.standard_normal(s),
    "offset 1e6, std 1e-2": lambda r, s: 1e6 + 1e-2 * r.standard_normal(s),
    "1e30": lambda r, s: 1e30 * r.standard_normal(s),
    "1e-30": lambda r, s: 1e-30 * r.standard_normal(s),
    "3e38 both signs": lambda r, s: 3e38 * r.uniform(-1, 1, s),
    "constant": lambda r, s: np.full(s, 7.0),
}


@pytest.fixture
def accelerator(monkeypatch):
    monkeypatch.setattr(stats, "_ACCELERATOR", True)
    # (the compiled kernel's cache does not see the switch: stats.normalizer traces it afresh while it is set)


OPS = {  # (jaxnorm call, float64 reference) on (8, 6, 32) data
    "layer_norm": (lambda x: jaxnorm.layer_norm(x, epsilon=EPS), lambda x: ref.standardize(x, (2,), True, EPS)),
    "rms_norm": (lambda x: jaxnorm.rms_norm(x, epsilon=EPS), lambda x: ref.standardize(x, (2,), False, EPS)),
    "batch_norm": (
        lambda x: jaxnorm.normalize_batch_in_training(x, None, None, (0, 1), EPS)[0],
        lambda x: ref.standardize(x, (0, 1), True, EPS),
    ),
    "group_norm": (
        lambda x: jaxnorm.group_norm(x, num_groups=4, epsilon=EPS),
        lambda x: ref.standardize(x.reshape(8, 6, 4, 8), (1, 3), True, EPS).reshape(x.shape),
    ),
}


def _error(fn, x32, want, formulation, monkeypatch):
    monkeypatch.setattr(stats, "_ACCELERATOR", formulation)
    y = np.asarray(jax.jit(fn)(jnp.asarray(x32)), np.float64)
    assert np.all(np.isfinite(y))
    return np.max(np.abs(y - want))


@pytest.mark.parametrize("data", sorted(DATA))
@pytest.mark.parametrize("op", sorted(OPS))
def test_accelerator_formulation_is_exact_at_every_magnitude(monkeypatch, op, data):
    """Within float32 rounding of float64 (2e-6 of the output), or, on offset data, where the output's error is
    float32's rounding of the mean itself (``ulp(mean) / std``, 5e-4 at offset 1e4), no worse than the CPU
    formulation's."""
    x32 = np.asarray(DATA[data](np.random.default_rng(0), (8, 6, 32)), np.float32)
    fn, reference = OPS[op]
    want = reference(x32.astype(np.float64))
    cpu = _error(fn, x32, want, False, monkeypatch)
    acc = _error(fn, x32, want, True, monkeypatch)
    assert acc <= 1.5 * cpu + 2e-6 * max(1.0, np.max(np.abs(want))), (acc, cpu)
    if not data.startswith("offset"):
        assert acc <= 2e-6 * max(1.0, np.max(np.abs(want))), acc


@pytest.mark.parametrize("op", sorted(OPS))
def test_accelerator_formulation_has_no_branch_and_equals_the_cpu_one(monkeypatch, op):
    x = jnp.asarray(np.random.default_rng(1).standard_normal((8, 6, 32)) * 3 + 2, jnp.float32)
    w = jnp.asarray(np.random.default_rng(2).standard_normal((8, 6, 32)), jnp.float32)
    fn = OPS[op][0]

    def loss(x):
        return jnp.sum(fn(x) * w)

    cpu = jax.jit(jax.value_and_grad(loss))(x)
    monkeypatch.setattr(stats, "_ACCELERATOR", True)
    text = jax.jit(jax.value_and_grad(loss)).lower(x).as_text()
    assert "stablehlo.case" not in text and "stablehlo.if" not in text  # no lax.cond: nothing read on the host
    assert "optimization_barrier" not in text
    acc = jax.jit(jax.value_and_grad(loss))(x)
    np.testing.assert_allclose(acc[0], cpu[0], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(acc[1], cpu[1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("data", ["1e30", "1e-30"])  # (at 3e38 the gradients are below float32's normals)
def test_accelerator_formulation_gradients_match_float64(accelerator, data):
    x32 = np.asarray(DATA[data](np.random.default_rng(3), (4, 64)), np.float32)
    w = np.random.default_rng(4).standard_normal((4, 64))
    grad = jax.jit(jax.grad(lambda x: jnp.sum(jaxnorm.layer_norm(x, epsilon=EPS) * jnp.asarray(w, jnp.float32))))
    got = np.asarray(grad(jnp.asarray(x32)), np.float64)
    x = x32.astype(np.float64)
    d = x - x.mean(1, keepdims=True)
    r = 1 / np.sqrt((d * d).mean(1, keepdims=True) + EPS)
    xhat = d * r
    want = r * (w - w.mean(1, keepdims=True) - xhat * (w * xhat).mean(1, keepdims=True))
    np.testing.assert_allclose(got, want, atol=1e-5 * np.max(np.abs(want)), rtol=0)
