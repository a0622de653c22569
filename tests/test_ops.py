"""The functional ops against NumPy float64 references: values, dtypes, masks, stability, gradients, transforms."""

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

import jaxnorm
from tests import reference as ref
from tests.tolerances import assert_close

DTYPES = [jnp.bfloat16, jnp.float16, jnp.float32]
AXES = [0, -1, (0, 1), [0, 2], (-3, -1), (1,)]


def _data(shape, seed=0, dtype=jnp.float32, offset=0.0, scale=1.0):
    x = offset + scale * np.random.default_rng(seed).standard_normal(shape)
    return jnp.asarray(x, dtype)


# ---------------------------------------------------------------- moments


@pytest.mark.parametrize("axes", AXES)
@pytest.mark.parametrize("keepdims", [False, True])
def test_moments_matches_float64_reference(axes, keepdims):
    x = _data((5, 4, 3))
    mean, var = jaxnorm.moments(x, axes, keepdims=keepdims)
    ax = tuple(sorted(a % 3 for a in np.atleast_1d(axes)))
    rm, rv = ref.moments(x, ax)
    if not keepdims:
        rm, rv = rm.squeeze(ax), rv.squeeze(ax)
    assert mean.shape == rm.shape and var.shape == rv.shape
    assert_close(mean, rm)
    assert_close(var, rv)


@pytest.mark.parametrize("dtype", DTYPES)
def test_moments_are_float32_for_half_inputs(dtype):
    x = _data((64, 8), dtype=dtype)
    mean, var = jaxnorm.moments(x, 0)
    assert mean.dtype == var.dtype == jnp.float32
    rm, rv = ref.moments(np.asarray(x, np.float64), (0,))  # reference on the same (rounded) values
    assert_close(mean, rm.squeeze(0))
    assert_close(var, rv.squeeze(0), scale=10)


def test_moments_float64_stays_float64():
    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(0).standard_normal((7, 5)), jnp.float64)
        mean, var = jaxnorm.moments(x, 0)
        assert mean.dtype == jnp.float64
        rm, rv = ref.moments(x, (0,))
        assert_close(var, rv.squeeze(0), dtype=jnp.float64)


def test_moments_large_offset_is_stable():
    """float32 1e4 + N(0, 1): the variance is 1 (E[x^2] - E[x]^2 in float32 gives 0 here)."""
    x = _data((4096, 4), offset=1e4)
    _, var = jaxnorm.moments(x, 0)
    np.testing.assert_allclose(var, 1.0, atol=5e-2)
    _, rv = ref.moments(x, (0,))
    np.testing.assert_allclose(var, rv.squeeze(0), rtol=1e-3)
    # the naive float32 formula really does fail here: this is what the test protects against
    naive = jnp.mean(x * x, 0) - jnp.mean(x, 0) ** 2
    assert np.all(np.abs(np.asarray(naive) - 1.0) > 0.1)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_moments_mask_excludes_non_finite(bad):
    x = np.asarray(_data((6, 3)))
    mask = np.random.default_rng(1).random((6, 3)) > 0.4
    mask[0] = True  # every column has a valid element
    x_bad = np.where(mask, x, bad)
    mean, var = jaxnorm.moments(jnp.asarray(x_bad), 0, where=jnp.asarray(mask))
    rm, rv = ref.moments(x, (0,), mask)
    assert_close(mean, rm.squeeze(0))
    assert_close(var, rv.squeeze(0))


def test_moments_mask_gradient_ignores_nan():
    x = np.asarray(_data((6, 3)))
    mask = np.ones((6, 3), bool)
    mask[2:4, 1] = False
    x_bad = jnp.asarray(np.where(mask, x, np.nan))

    def f(x):
        m, v = jaxnorm.moments(x, 0, where=mask)
        return jnp.sum(m * jnp.arange(3.0)) + jnp.sum(v)

    g = jax.grad(f)(x_bad)
    assert np.all(np.isfinite(g))
    assert np.all(np.asarray(g)[~mask] == 0)
    np.testing.assert_allclose(g, jax.grad(f)(jnp.asarray(np.where(mask, x, 0.0))), atol=1e-6)


def test_moments_keras_mask_shape():
    """A mask of shape x.shape[:-1] (Keras) masks whole positions, shared by the channels."""
    x = _data((4, 5, 3))
    m2 = np.random.default_rng(2).random((4, 5)) > 0.3
    a = jaxnorm.moments(x, (0, 1), where=jnp.asarray(m2))
    b = jaxnorm.moments(x, (0, 1), where=jnp.asarray(np.broadcast_to(m2[..., None], x.shape)))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_moments_empty_mask_is_finite():
    mean, var = jaxnorm.moments(_data((4, 2)), 0, where=jnp.zeros((4, 2), bool))
    np.testing.assert_array_equal(mean, 0.0)
    np.testing.assert_array_equal(var, 0.0)


@pytest.mark.full  # compile-heavy; the default tier covers this path elsewhere
@settings(max_examples=30, deadline=None)
@given(
    hnp.arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 4)),
               elements=st.floats(-1e3, 1e3, width=32)),
    st.data(),
)
def test_moments_mask_equals_filtered_input(x, data):
    """Property: moments with a mask equal moments of the physically selected values."""
    mask = data.draw(hnp.arrays(np.bool_, x.shape))
    col = data.draw(st.integers(0, x.shape[1] - 1))
    mask[:, col] = mask[:, col] | (np.arange(x.shape[0]) == 0)  # column `col` has at least one value
    mean, var = jaxnorm.moments(jnp.asarray(x), 0, where=jnp.asarray(mask))
    sel = x[mask[:, col], col].astype(np.float64)
    np.testing.assert_allclose(mean[col], sel.mean(), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(var[col], sel.var(), rtol=1e-4, atol=1e-2)


def test_moments_under_jit_vmap_and_grad():
    x = _data((3, 8, 4))
    f = lambda x: jaxnorm.moments(x, 0)
    mean_v, var_v = jax.vmap(f)(x)
    mean_j, var_j = jax.jit(f)(x[0])
    rm, rv = ref.moments(x, (1,))
    assert_close(mean_v, rm.squeeze(1))
    assert_close(var_v, rv.squeeze(1))
    assert_close(var_j, rv.squeeze(1)[0])
    squares = jax.jit(lambda x: jnp.sum(jnp.stack(jaxnorm.moments(x, (0, 1))) ** 2))
    check_grads(squares, (x[0].astype(jnp.float32),), order=2, modes=["rev"], atol=2e-2, rtol=2e-2)


def test_moments_axis_name_weights_devices_by_count():
    """Under vmap with an axis name, unequal masks per shard give the global statistics (not a mean of means)."""
    x = np.asarray(_data((2, 6, 3)))
    mask = np.ones((2, 6, 3), bool)
    mask[1, 1:] = False  # second shard holds one valid row, first holds six
    got = jax.vmap(lambda x, m: jaxnorm.moments(x, 0, where=m, axis_name="d"), axis_name="d")(
        jnp.asarray(x), jnp.asarray(mask)
    )
    rm, rv = ref.moments(x.reshape(12, 3), (0,), mask.reshape(12, 3))
    for shard in range(2):
        assert_close(got[0][shard], rm.squeeze(0))
        assert_close(got[1][shard], rv.squeeze(0))


# ---------------------------------------------------------------- batch_normalization


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_normalization_matches_reference_and_keeps_dtype(dtype):
    x = _data((8, 5), dtype=dtype)
    rng = np.random.default_rng(3)
    mean, var = rng.standard_normal(5), rng.random(5) + 0.5
    offset, scale = rng.standard_normal(5), rng.standard_normal(5)
    args = [jnp.asarray(a, jnp.float32) for a in (mean, var, offset, scale)]
    y = jaxnorm.batch_normalization(x, *args, epsilon=1e-3)
    assert y.dtype == dtype and y.shape == x.shape
    assert_close(y, ref.normalize(np.asarray(x, np.float64), mean, var, offset, scale, 1e-3), dtype=dtype)


def test_batch_normalization_channels_first_and_optional_affine():
    x = _data((2, 3, 4, 4))
    mean = jnp.arange(3.0).reshape(1, 3, 1, 1)
    var = jnp.full((1, 3, 1, 1), 2.0)
    y = jaxnorm.batch_normalization(x, mean, var)  # no offset, no scale
    assert_close(y, ref.normalize(x, mean, var, epsilon=1e-3))


def test_batch_normalization_gradients():
    x = _data((4, 3))
    args = (x, jnp.ones(3) * 0.1, jnp.ones(3) * 1.5, jnp.zeros(3) + 0.2, jnp.ones(3) * 0.7)
    check_grads(jax.jit(jaxnorm.batch_normalization), args, order=2, modes=["rev", "fwd"],
                atol=1e-2, rtol=1e-2)


# ---------------------------------------------------------------- normalize_batch_in_training


@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
def test_normalize_batch_in_training(layout):
    x = _data((4, 3, 5, 5) if layout == "nchw" else (4, 5, 5, 3))
    axes = (0, 2, 3) if layout == "nchw" else (0, 1, 2)
    scale, offset = jnp.asarray([0.5, 1.0, 2.0]), jnp.asarray([0.0, -1.0, 1.0])
    y, mean, var = jaxnorm.normalize_batch_in_training(x, scale, offset, axes, epsilon=1e-3)
    rm, rv = ref.moments(x, axes)
    fs = ref.feature_shape(4, [1] if layout == "nchw" else [3], x.shape)
    assert mean.shape == var.shape == (3,)
    assert_close(mean, rm.reshape(3))
    assert_close(var, rv.reshape(3))
    assert_close(y, ref.normalize(x, rm, rv, np.reshape(offset, fs), np.reshape(scale, fs), 1e-3))
    np.testing.assert_allclose(np.asarray(y).mean(axis=axes), np.asarray(offset), atol=1e-5)


# ---------------------------------------------------------------- layer_norm


@pytest.mark.parametrize("axis", [-1, (1, 2), [-2, -1], 1])
def test_layer_norm_matches_reference(axis):
    x = _data((3, 4, 5))
    ax = tuple(sorted(a % 3 for a in np.atleast_1d(axis)))
    pshape = tuple(x.shape[a] for a in ax)
    rng = np.random.default_rng(4)
    scale, bias = rng.standard_normal(pshape), rng.standard_normal(pshape)
    y = jaxnorm.layer_norm(x, jnp.asarray(scale, jnp.float32), jnp.asarray(bias, jnp.float32), axis=axis)
    assert_close(y, ref.layer_norm(x, ax, scale, bias, 1e-3))


@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_dtype_and_large_offset(dtype):
    x = _data((16, 256), dtype=jnp.float32, offset=1e4 if dtype == jnp.float32 else 0.0)
    x = x.astype(dtype)
    y = jaxnorm.layer_norm(x)
    assert y.dtype == dtype
    y64 = np.asarray(y, np.float64)
    np.testing.assert_allclose(y64.std(-1), 1.0, atol=5e-2)
    # At 1e4 a float32 ulp is ~1e-3, so even a perfectly rounded float32 mean is off by up to 5e-4 of a std.
    widen = 100 if dtype == jnp.float32 else 5
    assert_close(y, ref.layer_norm(np.asarray(x, np.float64), (1,), epsilon=1e-3), dtype=dtype, scale=widen)


def test_layer_norm_mask_with_nan():
    x = np.asarray(_data((3, 6)))
    mask = np.ones((3, 6), bool)
    mask[:, 4:] = False
    y = jaxnorm.layer_norm(jnp.asarray(np.where(mask, x, np.nan)), where=jnp.asarray(mask))
    r = ref.layer_norm(x, (1,), epsilon=1e-3, mask=mask)
    assert_close(np.asarray(y)[mask], r[mask])


@pytest.mark.full  # a float64 gradient check (compile-heavy): the `full` tier
def test_layer_norm_gradients_float64():
    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(5).standard_normal((3, 6)))
        scale, bias = jnp.linspace(0.5, 1.5, 6), jnp.linspace(-1, 1, 6)
        # Reverse mode of the hand-written backward here (forward mode and the Hessian: test_fused.py).
        check_grads(jax.jit(lambda x, s, b: jaxnorm.layer_norm(x, s, b)), (x, scale, bias), order=2, modes=["rev"])
        where = jnp.ones(x.shape, bool)  # a mask takes the plain-autodiff path, where forward mode works too
        check_grads(jax.jit(lambda x: jaxnorm.layer_norm(x, where=where)), (x,), order=2, modes=["rev", "fwd"])


def test_ops_jit_equals_eager():
    x = _data((6, 4))
    f = lambda x: (jaxnorm.layer_norm(x, axis=0), jaxnorm.normalize_batch_in_training(x, None, None, 0)[0])
    for a, b in zip(jax.jit(f)(x), f(x), strict=True):
        assert_close(a, b)


def test_moments_shift_by_an_outlier_sample_stays_accurate():
    """The worst case of the one-pass shifted sums: the shift (first sample) is the extreme outlier."""
    x = np.array(_data((4096, 3), offset=1e4))
    x[0] = 1e4 + np.array([50.0, -200.0, 1e3])  # first row far out: (mean - shift)^2 / var ~ n at most
    x = jnp.asarray(x, jnp.float32)
    _, var = jaxnorm.moments(x, 0)
    np.testing.assert_allclose(var, np.asarray(x, np.float64).var(0), rtol=1e-4)
