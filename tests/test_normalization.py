"""Normalization (Keras's preprocessing layer): adapt against NumPy float64, apply against Keras, configs."""

import json
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnorm
from tests import reference as ref
from tests.tolerances import assert_close

needs_keras = pytest.mark.peers("keras")


def _data(shape, seed=0, offset=0.0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    # A different scale and shift per last-axis index, so per-feature statistics are really per feature.
    scale = 1.0 + np.arange(shape[-1]) if shape else 1.0
    return (offset + rng.standard_normal(shape) * scale + 0.5 * np.arange(shape[-1] if shape else 1)).astype(dtype)


def _assert_stats(state, x, axis, offset=0.0):
    mean, var, count = ref.adapt_statistics(x, axis)
    assert {k: (v.shape, v.dtype) for k, v in state.items()} == {
        k: (mean.shape, jnp.float32) for k in ("mean", "variance", "count")}
    np.testing.assert_array_equal(state["count"], count)
    # the float32 mean of offset data is as good as its representation (half an ulp of the offset)
    np.testing.assert_allclose(state["mean"], mean, rtol=2e-6, atol=2e-6 + offset * 2**-24)
    np.testing.assert_allclose(state["variance"], var, rtol=1e-5)


def _unequal_batches(x, sizes):
    assert sum(sizes) == len(x)
    starts = np.cumsum([0, *sizes])
    return (x[a:b] for a, b in zip(starts[:-1], starts[1:], strict=True))


# ---------------------------------------------------------------- adapt against NumPy float64


@pytest.mark.parametrize("axis, shape", [(-1, (40, 5)), ((1, 2), (9, 3, 4, 2)), (None, (30, 3, 2)), (0, (6, 11))])
@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_adapt_array_and_unequal_batches_match_float64(axis, shape, offset):
    x = _data(shape, seed=len(shape), offset=offset)
    norm = jaxnorm.Normalization(axis=axis)
    _assert_stats(norm.adapt(x), x, axis, offset)
    if axis == 0:
        return  # the only reduced axis is not the batch axis: batches along axis 0 would change the kept sizes
    sizes = [1, shape[0] // 2, 2, shape[0] - shape[0] // 2 - 3]
    _assert_stats(norm.adapt(_unequal_batches(x, sizes)), x, axis, offset)  # a generator, incl. a batch of 1
    _assert_stats(norm.adapt(x, batch_size=4), x, axis, offset)  # an array in slices (4, ..., remainder)


def test_offset_data_of_a_million_values_keeps_its_variance():
    # 1e4 + N(0, 1) in float32: E[x^2] - E[x]^2 cancels to garbage here (and so does a float32 np.var over
    # axis 0); the shifted two-pass batches merged in float64 keep the variance to ~1e-6.
    x = (1e4 + np.random.default_rng(0).standard_normal((250_000, 4))).astype(np.float32)
    norm = jaxnorm.Normalization()
    for state in (norm.adapt(x), norm.adapt(x, batch_size=30_000), norm.adapt(iter(np.array_split(x, 7)))):
        _assert_stats(state, x, -1, offset=1e4)
    assert_close(jaxnorm.Normalization(axis=None).adapt(x)["variance"], np.var(x.astype(np.float64)))


def test_adapt_streams_and_never_holds_the_data():
    rng = np.random.default_rng(0)
    n_batches, made, alive = 300, [], []

    def batches():
        for i in range(n_batches):
            # Only the last batch (in adapt) and the one before (maybe still on the device) may be alive.
            assert not any(r() is not None for r in alive[: max(i - 2, 0)]), f"batch {i}: old batches still alive"
            b = rng.standard_normal((8, 3)).astype(np.float32) * 3 + 1
            made.append(b.astype(np.float64))  # the test's copy, for the reference
            alive.append(weakref.ref(b))
            yield b
            del b

    state = jaxnorm.Normalization().adapt(batches())
    assert len(made) == n_batches  # read once, to the end
    _assert_stats(state, np.concatenate(made), -1)


def test_adapt_continues_from_a_state():
    a, b = _data((37, 2, 3), seed=1, offset=100.0), _data((5, 2, 3), seed=2, offset=90.0)
    norm = jaxnorm.Normalization(axis=(1, 2))
    both = np.concatenate([a, b])
    continued = norm.adapt(b, state=norm.adapt(a))
    _assert_stats(continued, both, (1, 2), offset=100.0)
    for k in ("mean", "variance", "count"):
        assert_close(continued[k], norm.adapt(both)[k], scale=3)
    # from init's state (count 0) it is a fresh adapt; adapt is pure: the given state is not changed
    params, state = norm.init(None, a)
    assert_close(norm.adapt(a, state)["variance"], norm.adapt(a)["variance"])
    np.testing.assert_array_equal(state["variance"], 1.0)
    np.testing.assert_array_equal(state["count"], 0.0)


def test_adapt_accepts_lists_tuples_jax_arrays_and_integers():
    x = _data((12, 3), seed=4)
    norm = jaxnorm.Normalization()
    want = norm.adapt(x)
    for data in ([x[:5], x[5:]], (x[:5], x[5:]), x.tolist(), jnp.asarray(x), [(x[:4], None), (x[4:], None)]):
        got = norm.adapt(data)
        assert_close(got["mean"], want["mean"])
        assert_close(got["variance"], want["variance"])
    ints = np.arange(12).reshape(4, 3)
    _assert_stats(norm.adapt(ints), ints, -1)


# ---------------------------------------------------------------- apply


def _keras_layer(**kwargs):
    keras = pytest.importorskip("keras")
    return keras.layers.Normalization(**kwargs)


def _keras_call(layer, x):
    with jax.numpy_rank_promotion("allow"):  # Keras's own code relies on rank promotion
        return np.asarray(layer(x))


@needs_keras
@pytest.mark.parametrize("axis, shape", [(-1, (20, 4)), ((1, 2), (6, 3, 4, 2)), (None, (10, 3))])
def test_apply_matches_keras_after_keras_adapt(axis, shape):
    data, x = _data(shape, seed=1, offset=3.0), _data(shape, seed=2, offset=3.0)
    keras_layer = _keras_layer(axis=axis)
    keras_layer.adapt(data)
    norm = jaxnorm.Normalization(axis=axis)
    params, _ = norm.init(None, x)
    state = norm.adapt(data)
    assert_close(state["mean"], np.asarray(keras_layer.adapt_mean))
    assert_close(state["variance"], np.asarray(keras_layer.adapt_variance), scale=3)
    y, same = norm.apply(params, state, x)
    assert same is state
    assert_close(y, _keras_call(keras_layer, x), scale=3)
    # ours over a generator of batches gives the same (Keras's own needs TensorFlow for anything but an array)
    assert_close(norm.apply(params, norm.adapt(iter([data[:3], data[3:]])), x)[0], y, scale=3)


@needs_keras
@pytest.mark.parametrize("invert", [False, True])
@pytest.mark.parametrize("axis, mean, variance, shape", [
    ((1, 2), [1.0, -2.0], [4.0, 0.25], (3, 5, 2)),  # rank 1 stats broadcast from the right over kept (5, 2)
    ((1, 2), [[1.0], [2.0], [3.0]], [[1.0], [9.0], [0.5]], (2, 3, 4)),
    (None, 3.0, 2.0, (4, 2)),
    (-1, 0.5, 4.0, (4, 3)),
])
def test_given_statistics_match_keras_and_invert_is_the_inverse(axis, mean, variance, shape, invert):
    x = _data(shape, seed=3)
    norm = jaxnorm.Normalization(axis=axis, mean=mean, variance=variance, invert=invert)
    params, state = norm.init(None, x)
    np.testing.assert_array_equal(state["count"], 0.0)
    y, _ = norm.apply(params, state, x)
    assert_close(y, _keras_call(_keras_layer(axis=axis, mean=mean, variance=variance, invert=invert), x))
    other = jaxnorm.Normalization(axis=axis, mean=mean, variance=variance, invert=not invert)
    assert_close(other.apply(params, state, y)[0], x, scale=2)


@needs_keras
def test_zero_variance_uses_the_epsilon_floor_like_keras():
    data = _data((10, 3), seed=5)
    data[:, 1] = 7.0  # a constant feature
    x = _data((4, 3), seed=6)
    norm = jaxnorm.Normalization()
    state = norm.adapt(data)
    assert float(state["variance"][1]) == 0.0
    y, _ = norm.apply({}, state, x)
    assert bool(jnp.all(jnp.isfinite(y)))
    np.testing.assert_allclose(y[:, 1], (x[:, 1] - 7.0) / 1e-7, rtol=1e-6)  # max(sqrt(0), 1e-7) = 1e-7
    keras_layer = _keras_layer()
    keras_layer.adapt(data)
    np.testing.assert_allclose(y, _keras_call(keras_layer, x), rtol=1e-5, atol=1e-4)
    inv = jaxnorm.Normalization(invert=True).apply({}, state, x)[0]
    np.testing.assert_allclose(inv[:, 1], 7.0 + x[:, 1] * 1e-7, rtol=1e-6)


@needs_keras
def test_before_adapt_is_the_identity_as_in_keras():
    x = _data((3, 4), seed=7)
    norm = jaxnorm.Normalization()
    params, state = norm.init(None, x)
    y, _ = norm.apply(params, state, x)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(_keras_call(_keras_layer(), x), x)


def test_jit_vmap_grad_and_half_precision():
    data = _data((50, 3), seed=8, offset=2.0)
    norm = jaxnorm.Normalization()
    state = norm.adapt(data)
    x = jnp.asarray(_data((6, 3), seed=9))
    want = (np.asarray(x, np.float64) - np.asarray(state["mean"], np.float64)) / np.sqrt(
        np.asarray(state["variance"], np.float64))
    y, _ = jax.jit(norm.apply)({}, state, x)
    assert_close(y, want)
    yv = jax.vmap(lambda row: norm.apply({}, state, row)[0])(x)  # one example (3,): axis -1 still fits
    assert_close(yv, want)
    g = jax.grad(lambda x: jnp.sum(norm.apply({}, state, x)[0]))(x)
    assert_close(g, np.broadcast_to(1 / np.sqrt(np.asarray(state["variance"], np.float64)), x.shape))
    for dtype in (jnp.bfloat16, jnp.float16):
        yh, _ = norm.apply({}, state, x.astype(dtype))
        assert yh.dtype == dtype
        assert_close(yh, want, dtype, scale=2)
    # masks are checked and have no effect (the map is elementwise, as Keras's, which passes the mask through)
    ym, _ = norm.apply({}, state, x, mask=jnp.array([True, False, True, True, False, True]))
    np.testing.assert_array_equal(ym, y)


# ---------------------------------------------------------------- configs


def test_config_round_trip_is_json_and_the_spec_is_hashable():
    for norm in (jaxnorm.Normalization(), jaxnorm.Normalization(axis=[1, 2], mean=[[1, 2]], variance=[[3, 4]]),
                 jaxnorm.Normalization(axis=(), mean=np.float32(2.0), variance=1, invert=True)):
        config = json.loads(json.dumps(norm.get_config()))
        assert jaxnorm.Normalization.from_config(config) == norm
        assert hash(jaxnorm.Normalization.from_config(config)) == hash(norm)
    spec = jaxnorm.Normalization(axis=[1, 2], mean=[[1, 2]], variance=[[3, 4]])
    assert spec.get_config()["mean"] == [[1.0, 2.0]] and spec.axis == (1, 2)
    assert jaxnorm.Normalization(axis=()).axis is None


@needs_keras
def test_keras_configs_both_ways():
    keras = pytest.importorskip("keras")
    x = _data((5, 3, 2), seed=10)
    spec = jaxnorm.Normalization(axis=(1, 2), mean=[0.5, -1.0], variance=[2.0, 0.5], invert=True)
    want = spec.apply(*spec.init(None, x), x)[0]
    keras_layer = keras.layers.Normalization.from_config(spec.to_keras_config())
    assert_close(_keras_call(keras_layer, x), want)
    # and back from the Keras layer's config (through JSON: Keras's axis tuple arrives as a list)
    back = jaxnorm.Normalization.from_config(json.loads(json.dumps(keras_layer.get_config())))
    assert back == spec
    for axis, ours in ((None, None), (-1, (-1,)), ((0, 2), (0, 2))):
        assert jaxnorm.Normalization.from_config(keras.layers.Normalization(axis=axis).get_config()).axis == ours
    with pytest.raises(ValueError, match=r"epsilon=0.001 \(Keras computes epsilon=1e-7"):
        jaxnorm.Normalization(epsilon=1e-3).to_keras_config()
    with pytest.raises(ValueError, match=r"dtype="):
        jaxnorm.Normalization.from_config({**keras_layer.get_config(), "dtype": "float16"})


# ---------------------------------------------------------------- errors


def test_errors_name_the_argument():
    norm = jaxnorm.Normalization()
    state = norm.adapt(_data((8, 3)))
    with pytest.raises(ValueError, match=r"`x` has shape \(2, 4\).*\(4,\).*state's statistics have shape \(3,\)"):
        norm.apply({}, state, jnp.ones((2, 4)))
    with pytest.raises(TypeError, match=r"`x` must have a floating-point dtype, got int32"):
        norm.apply({}, state, jnp.ones((2, 3), jnp.int32))
    with pytest.raises(TypeError, match=r"`mask` must be a boolean \(or 0/1 integer or float\) array"):
        norm.apply({}, state, jnp.ones((2, 3)), mask=jnp.ones((2, 3), jnp.complex64))
    with pytest.raises(ValueError, match=r"`params`"):
        norm.apply({"scale": jnp.ones(3)}, state, jnp.ones((2, 3)))
    with pytest.raises(ValueError, match=r"`state`.*missing \['count'\]"):
        norm.apply({}, {"mean": state["mean"], "variance": state["variance"]}, jnp.ones((2, 3)))
    with pytest.raises(ValueError, match=r"`mean` and `variance` must be given together.*variance=None"):
        jaxnorm.Normalization(mean=1.0)
    with pytest.raises(ValueError, match=r"same shape; got mean of shape \(2,\) and variance of shape \(\)"):
        jaxnorm.Normalization(mean=[1.0, 2.0], variance=1.0)
    with pytest.raises(ValueError, match=r"`mean` and `variance` have rank 2.*axis=-1 keeps 1 axes"):
        jaxnorm.Normalization(mean=[[1.0]], variance=[[1.0]])
    with pytest.raises(ValueError, match=r"`variance` must be >= 0"):
        jaxnorm.Normalization(mean=1.0, variance=-1.0)
    with pytest.raises(TypeError, match=r"`mean` must hold real numbers"):
        jaxnorm.Normalization(mean="a", variance=1.0)
    with pytest.raises(ValueError, match=r"do not broadcast to the kept axes' shape \(3,\)"):
        jaxnorm.Normalization(mean=[1.0, 2.0], variance=[1.0, 2.0]).init(None, jnp.ones((2, 3)))
    with pytest.raises(TypeError, match=r"`axis` must contain only ints"):
        jaxnorm.Normalization(axis=(1.5,))
    with pytest.raises(ValueError, match=r"`axis`=3 is out of range for an input of rank 2"):
        jaxnorm.Normalization(axis=3).adapt(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"`axis`=3 is out of range"):
        jaxnorm.Normalization(axis=3).apply({}, state, jnp.ones((2, 3)))
    with pytest.raises(TypeError, match=r"`invert` must be a Python bool"):
        jaxnorm.Normalization(invert=1)


def test_adapt_errors_name_the_argument():
    norm = jaxnorm.Normalization()
    for empty in ([], iter([]), np.zeros((0, 3)), [np.zeros((0, 3)), np.zeros((0, 3))]):
        with pytest.raises(ValueError, match=r"`data` is empty"):
            norm.adapt(empty)
    with pytest.raises(ValueError, match=r"`data` batch 2 has shape \(4, 5\).*\(5,\).*batch 0 has shape \(2, 3\)"):
        norm.adapt([np.ones((2, 3)), np.ones((1, 3)), np.ones((4, 5))])
    with pytest.raises(ValueError, match=r"`data` batch 0 has shape \(2, 4\).*`state` holds statistics of shape"):
        norm.adapt(np.ones((2, 4)), state=norm.adapt(np.ones((2, 3))))
    with pytest.raises(TypeError, match=r"`data` batch 1 has dtype complex64"):
        norm.adapt([np.ones((2, 3)), np.ones((2, 3), np.complex64)])
    with pytest.raises(ValueError, match=r"`batch_size` must be a positive int"):
        norm.adapt(np.ones((2, 3)), batch_size=0)
    with pytest.raises(ValueError, match=r"fixed statistics.*without `mean`/`variance`"):
        jaxnorm.Normalization(mean=0.0, variance=1.0).adapt(np.ones((2, 3)))
    with pytest.raises(TypeError, match=r"`state` must be a dict"):
        norm.adapt(np.ones((2, 3)), state=[1.0])
