"""UnitNormalization (op and spec) against NumPy float64 and Keras."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnorm
from tests.tolerances import assert_close


def _data(shape, seed=0):
    return (np.random.default_rng(seed).standard_normal(shape) * 2 + 0.5).astype(np.float32)


@pytest.mark.parametrize("axis", [-1, (1, 2), 0])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_unit_norm_matches_float64_reference(axis, dtype):
    x = jnp.asarray(_data((3, 4, 5)), dtype)
    x64 = np.asarray(x, np.float64)
    axes = tuple(sorted(a % 3 for a in np.atleast_1d(axis)))
    want = x64 / np.sqrt(np.sum(x64**2, axes, keepdims=True))
    y = jaxnorm.unit_norm(x, axis=axis)
    assert y.dtype == dtype
    assert_close(y, want, dtype, scale=2)
    assert_close(np.sqrt(np.sum(np.asarray(y, np.float64) ** 2, axes)), 1.0, dtype, scale=5)


def test_zero_examples_stay_zero_with_finite_gradients_and_mask_ignores_nan():
    x = jnp.array([[0.0, 0.0], [3.0, 4.0]])
    assert_close(jaxnorm.unit_norm(x), np.array([[0.0, 0.0], [0.6, 0.8]]))
    g = jax.grad(lambda x: jnp.sum(jaxnorm.unit_norm(x) * jnp.arange(1.0, 3.0)[None]))(x)
    assert bool(jnp.all(jnp.isfinite(g)))
    xm = jnp.array([[3.0, 4.0, jnp.nan]])
    y = jaxnorm.unit_norm(xm, where=jnp.array([[True, True, False]]))
    assert_close(y[0, :2], np.array([0.6, 0.8]))


def test_spec_has_no_params_and_round_trips_its_config():
    unit = jaxnorm.UnitNormalization(axis=(1, 2))
    x = jnp.asarray(_data((2, 3, 4)))
    params, state = unit.init(None, x)
    assert params == {} and state == {}
    y, new_state = jax.jit(lambda x: unit.apply({}, {}, x))(x)
    assert new_state == {}
    assert_close(y, jaxnorm.unit_norm(x, axis=(1, 2)))
    assert jaxnorm.UnitNormalization.from_config(unit.get_config()) == unit
    with pytest.raises(ValueError, match=r"`params`"):
        unit.apply({"scale": jnp.ones(3)}, {}, x)


@pytest.mark.peers("keras")
def test_matches_keras_unit_normalization_and_its_config():
    import keras

    x = _data((4, 6), seed=1)
    x[0] = 0.0
    layer = keras.layers.UnitNormalization(axis=-1)
    with jax.numpy_rank_promotion("allow"):  # Keras's own code relies on rank promotion
        want = np.asarray(layer(x))
    spec = jaxnorm.UnitNormalization.from_config(layer.get_config())
    assert_close(spec.apply({}, {}, jnp.asarray(x))[0], want)
    back = keras.layers.UnitNormalization.from_config(spec.to_keras_config())
    assert back.axis == layer.axis
    with pytest.raises(ValueError, match=r"epsilon=0.1 \(Keras computes epsilon=1e-12\)"):
        jaxnorm.UnitNormalization(epsilon=0.1).to_keras_config()


@pytest.mark.peers("torch")
def test_matches_torch_normalize_values_and_gradients():
    import torch

    x = np.random.default_rng(3).standard_normal((4, 5, 6)).astype(np.float32)
    x[0, 0] = 0.0  # an all-zero example: both clamp its norm; its gradient differs on purpose (below)
    w = np.random.default_rng(4).standard_normal(x.shape).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = torch.nn.functional.normalize(xt, p=2.0, dim=-1, eps=1e-12)
    (yt * torch.from_numpy(w)).sum().backward()
    y, g = jax.value_and_grad(lambda x: jnp.vdot(jaxnorm.unit_norm(x), jnp.asarray(w)))(jnp.asarray(x))
    assert_close(jaxnorm.unit_norm(jnp.asarray(x)), yt.detach().numpy())
    # PyTorch differentiates x / eps at the all-zero example (1e12 * w); jaxnorm's gradient there is zero, as its
    # docstring promises. Everywhere else the two agree.
    want = xt.grad.numpy().copy()
    np.testing.assert_allclose(want[0, 0], 1e12 * w[0, 0], rtol=1e-5)
    want[0, 0] = 0.0
    assert_close(g, want, scale=20)
