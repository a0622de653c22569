"""BatchNorm and LayerNorm specs: trees, training and inference against float64 references, transforms, configs."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxnorm
from tests import reference as ref
from tests.tolerances import assert_close, grad_tol


def _data(shape, seed=0, dtype=jnp.float32, offset=0.0):
    return jnp.asarray(offset + np.random.default_rng(seed).standard_normal(shape), dtype)


def _random_params(spec, x, seed=1):
    """init, then perturb params and state so that the test cannot pass with ones/zeros by accident."""
    params, state = spec.init(jax.random.key(0), x)
    rng = np.random.default_rng(seed)
    perturb = lambda t, lo: {k: jnp.asarray(v + lo + rng.random(v.shape), v.dtype) for k, v in t.items()}
    return perturb(params, 0.0), perturb(state, 0.5)


# ---------------------------------------------------------------- trees


@pytest.mark.parametrize(
    "axis, shape, fshape",
    [(-1, (4, 5, 6, 3), (3,)), (1, (4, 3, 5, 6), (3,)), ((1, 3), (2, 3, 4, 5), (3, 5)), ([-1], (8, 2), (2,))],
)
def test_batch_norm_init_tree(axis, shape, fshape):
    params, state = jaxnorm.BatchNorm(axis=axis).init(jax.random.key(0), jax.ShapeDtypeStruct(shape, jnp.float32))
    assert jax.tree.map(lambda a: (a.shape, a.dtype), params) == {
        "scale": (fshape, jnp.float32), "bias": (fshape, jnp.float32)}
    assert jax.tree.map(lambda a: (a.shape, a.dtype), state) == {
        "mean": (fshape, jnp.float32), "var": (fshape, jnp.float32)}
    np.testing.assert_array_equal(params["scale"], 1)
    np.testing.assert_array_equal(state["mean"], 0)
    np.testing.assert_array_equal(state["var"], 1)


def test_init_switches_and_initializers():
    bn = jaxnorm.BatchNorm(use_scale=False, use_bias=True,
                           bias_init={"class_name": "Constant", "config": {"value": 2.5}}, var_init="Ones",
                           mean_init=jax.nn.initializers.constant(-1.0), param_dtype=jnp.bfloat16)
    params, state = bn.init(jax.random.key(0), jnp.ones((2, 3)))
    assert set(params) == {"bias"} and params["bias"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(params["bias"], 2.5)
    np.testing.assert_array_equal(state["mean"], -1.0)
    assert jaxnorm.LayerNorm(use_scale=False, use_bias=False).init(None, jnp.ones((2, 3))) == ({}, {})
    random = jaxnorm.LayerNorm(scale_init={"class_name": "RandomNormal", "config": {"mean": 1.0, "stddev": 0.1}})
    scale = random.init(jax.random.key(3), jnp.ones((2, 4096)))[0]["scale"]
    assert abs(float(scale.mean()) - 1.0) < 0.01 and abs(float(scale.std()) - 0.1) < 0.01


# ---------------------------------------------------------------- BatchNorm semantics


@pytest.mark.parametrize("axis", [-1, 1, (1, 3), -3])
def test_batch_norm_training_steps_match_reference(axis):
    bn = jaxnorm.BatchNorm(axis=axis, momentum=0.8, epsilon=1e-3)
    xs = [_data((4, 3, 2, 5), seed=s, offset=s) for s in range(3)]
    params, state = _random_params(bn, xs[0])
    fa = tuple(sorted(a % 4 for a in np.atleast_1d(axis)))
    want_ys, want_mean, want_var = ref.batch_norm_steps(
        xs, fa, 0.8, 1e-3, params["scale"], params["bias"], state["mean"], state["var"])
    step = jax.jit(bn.apply, static_argnames="training")
    for x, want in zip(xs, want_ys, strict=True):
        y, state = step(params, state, x, training=True)
        assert_close(y, want)
    assert_close(state["mean"], want_mean)
    assert_close(state["var"], want_var)


def test_batch_norm_inference_uses_moving_statistics_and_keeps_state():
    bn = jaxnorm.BatchNorm(axis=1)
    x = _data((4, 3, 5))
    params, state = _random_params(bn, x)
    y, new_state = bn.apply(params, state, x, training=False)
    assert new_state is state
    fs = (1, 3, 1)
    want = ref.normalize(x, np.reshape(state["mean"], fs), np.reshape(state["var"], fs),
                         np.reshape(params["bias"], fs), np.reshape(params["scale"], fs), 1e-3)
    assert_close(y, want)


def test_batch_norm_default_momentum_is_keras():
    bn = jaxnorm.BatchNorm()
    assert (bn.momentum, bn.epsilon, bn.axis) == (0.99, 1e-3, -1)
    x = _data((16, 2), offset=3.0)
    params, state = bn.init(None, x)
    _, state = bn.apply(params, state, x, training=True)
    np.testing.assert_allclose(state["mean"], 0.01 * np.asarray(x).mean(0), rtol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_batch_norm_half_precision_keeps_dtype_and_float32_state(dtype):
    bn = jaxnorm.BatchNorm()
    x = _data((64, 4), dtype=dtype, offset=2.0)
    params, state = bn.init(None, x)
    y, new_state = bn.apply(params, state, x, training=True)
    assert y.dtype == dtype
    assert new_state["mean"].dtype == new_state["var"].dtype == jnp.float32
    rm, rv = ref.moments(np.asarray(x, np.float64), (0,))
    assert_close(y, ref.normalize(np.asarray(x, np.float64), rm, rv, epsilon=1e-3), dtype=dtype, scale=5)


def test_batch_norm_float64():
    with jax.enable_x64(True):
        bn = jaxnorm.BatchNorm(momentum=0.5)
        x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 3)))
        params, state = bn.init(None, x)
        assert state["mean"].dtype == jnp.float64
        y, state = bn.apply(params, state, x, training=True)
        rm, rv = ref.moments(x, (0,))
        assert_close(y, ref.normalize(x, rm, rv, epsilon=1e-3), dtype=jnp.float64)
        assert_close(state["var"], 0.5 + 0.5 * rv.ravel(), dtype=jnp.float64)


def test_batch_norm_large_offset():
    bn = jaxnorm.BatchNorm(momentum=0.0)
    x = _data((4096, 2), offset=1e4)
    params, state = bn.init(None, x)
    y, state = bn.apply(params, state, x, training=True)
    np.testing.assert_allclose(state["var"], 1.0, atol=5e-2)
    np.testing.assert_allclose(np.asarray(y).std(0), 1.0, atol=1e-3)


def test_batch_norm_mask_with_nan_matches_filtered_batch():
    bn = jaxnorm.BatchNorm(momentum=0.5)
    x = np.asarray(_data((6, 5, 3)))
    keep = np.random.default_rng(2).random((6, 5)) > 0.3
    x_nan = np.where(keep[..., None], x, np.nan)
    params, state = _random_params(bn, x)
    y, new_state = bn.apply(params, state, jnp.asarray(x_nan), training=True, mask=jnp.asarray(keep))
    y_ref, new_ref = bn.apply(params, state, jnp.asarray(x[keep]), training=True)  # physically filtered batch
    assert_close(np.asarray(y)[keep], y_ref)
    assert_close(new_state["mean"], new_ref["mean"])
    assert_close(new_state["var"], new_ref["var"])


def test_batch_norm_gradients():
    bn = jaxnorm.BatchNorm(axis=1)
    x = _data((3, 2, 4))
    params, state = _random_params(bn, x)

    def loss(params, x):
        y, _ = bn.apply(params, state, x, training=True)
        return jnp.sum(jnp.sin(y))

    check_grads(jax.jit(loss), (params, x), order=1, modes=["rev"], atol=grad_tol(jnp.float32),
                              rtol=grad_tol(jnp.float32))
    # Analytic property: batch-normalized output is invariant to a per-channel shift of x, so the gradient
    # w.r.t. x sums to zero over the reduced axes.
    gx = jax.grad(loss, argnums=1)(params, x)
    np.testing.assert_allclose(np.asarray(gx).sum((0, 2)), 0.0, atol=1e-5)


def test_batch_norm_vmap_over_models():
    """vmap over a stack of independent batches equals applying to each batch."""
    bn = jaxnorm.BatchNorm(momentum=0.9)
    xs = _data((3, 8, 2))
    params, state = bn.init(None, xs[0])
    ys, states = jax.vmap(lambda x: bn.apply(params, state, x, training=True))(xs)
    for i in range(3):
        y, s = bn.apply(params, state, xs[i], training=True)
        assert_close(ys[i], y)
        assert_close(states["mean"][i], s["mean"])


def test_batch_norm_axis_name_under_vmap_equals_global_batch():
    bn = jaxnorm.BatchNorm(momentum=0.5, axis_name="batch")
    xs = _data((2, 5, 3))
    params, state = bn.init(None, xs[0])
    ys, states = jax.vmap(lambda x: bn.apply(params, state, x, training=True), axis_name="batch")(xs)
    y, s = jaxnorm.BatchNorm(momentum=0.5).apply(params, state, xs.reshape(10, 3), training=True)
    assert_close(ys.reshape(10, 3), y)
    assert_close(states["var"][0], s["var"])
    assert_close(states["var"][1], s["var"])


# ---------------------------------------------------------------- LayerNorm semantics


@pytest.mark.parametrize("axis", [-1, (1, 2), [-2, -1], 1])
def test_layer_norm_spec_matches_reference(axis):
    ln = jaxnorm.LayerNorm(axis=axis)
    x = _data((3, 4, 5))
    params, state = _random_params(ln, x)
    ax = tuple(sorted(a % 3 for a in np.atleast_1d(axis)))
    y, new_state = jax.jit(ln.apply)(params, state, x)
    assert new_state == {}
    assert_close(y, ref.layer_norm(x, ax, params["scale"], params["bias"], 1e-3))
    y_train, _ = ln.apply(params, state, x, training=True)
    assert_close(y, y_train)


def test_layer_norm_mask():
    ln = jaxnorm.LayerNorm()
    x = np.asarray(_data((3, 6)))
    mask = np.arange(6) < np.array([[2], [6], [4]])
    params, state = _random_params(ln, x)
    y, _ = ln.apply(params, state, jnp.asarray(np.where(mask, x, np.inf)), mask=jnp.asarray(mask))
    want = ref.layer_norm(x, (1,), params["scale"], params["bias"], 1e-3, mask=mask)
    assert_close(np.asarray(y)[mask], want[mask])


# ---------------------------------------------------------------- one signature for every layer


@pytest.mark.parametrize("spec", [jaxnorm.BatchNorm(), jaxnorm.LayerNorm()], ids=["BatchNorm", "LayerNorm"])
def test_generic_driver(spec):
    """The same generic train step drives every layer and is jit-compatible with the spec as a static arg."""

    @jax.jit
    def step(params, state, x):
        def loss(params):
            y, new_state = spec.apply(params, state, x, training=True)
            return jnp.mean((y - 1.0) ** 2), new_state

        (value, new_state), grads = jax.value_and_grad(loss, has_aux=True)(params)
        params = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
        return params, new_state, value

    x = _data((8, 4))
    params, state = spec.init(jax.random.key(0), x)
    losses = []
    for _ in range(20):
        params, state, value = step(params, state, x)
        losses.append(float(value))
    assert losses[-1] < 0.5 * losses[0]  # learning the bias toward the target 1.0
    assert jax.tree.structure(state) == jax.tree.structure(spec.init(None, x)[1])


def test_specs_are_hashable_static_arguments():
    f = jax.jit(lambda spec, x: spec.apply(*spec.init(None, x), x, training=True)[0], static_argnums=0)
    x = _data((4, 2))
    a = f(jaxnorm.BatchNorm(bias_init={"class_name": "Constant", "config": {"value": 1.0}}), x)
    np.testing.assert_allclose(np.asarray(a).mean(0), 1.0, atol=1e-5)
    assert hash(jaxnorm.BatchNorm(axis=[1, 2])) == hash(jaxnorm.BatchNorm(axis=(1, 2)))


# ---------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "spec",
    [
        jaxnorm.BatchNorm(),
        jaxnorm.BatchNorm(axis=[1, 3], momentum=0.9, epsilon=1e-5, use_scale=False, axis_name="batch",
                          var_init={"class_name": "Constant", "config": {"value": 2.0}}, param_dtype="bfloat16"),
        jaxnorm.LayerNorm(),
        jaxnorm.LayerNorm(axis=(-2, -1), epsilon=1e-6, use_bias=False, scale_init="random_normal"),
    ],
)
def test_config_json_round_trip(spec):
    config = json.loads(json.dumps(spec.get_config()))
    again = type(spec).from_config(config)
    assert again == spec
    assert again.get_config() == spec.get_config()


def test_keras_batch_normalization_config():
    """The dict keras.layers.BatchNormalization(axis=1, ...).get_config() returns (Keras 3.15)."""
    keras_config = {
        "name": "batch_normalization", "trainable": True,
        "dtype": {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"},
                  "registered_name": None},
        "axis": 1, "momentum": 0.9, "epsilon": 1e-5, "center": False, "scale": True,
        "beta_initializer": {"module": "keras.initializers", "class_name": "Zeros", "config": {},
                             "registered_name": None},
        "gamma_initializer": {"module": "keras.initializers", "class_name": "Constant", "config": {"value": 3.0},
                              "registered_name": None},
        "moving_mean_initializer": {"module": "keras.initializers", "class_name": "Zeros", "config": {},
                                    "registered_name": None},
        "moving_variance_initializer": {"module": "keras.initializers", "class_name": "Ones", "config": {},
                                        "registered_name": None},
        "beta_regularizer": None, "gamma_regularizer": None, "beta_constraint": None, "gamma_constraint": None,
        "synchronized": False, "renorm": False, "renorm_clipping": None, "renorm_momentum": 0.99,
    }
    bn = jaxnorm.BatchNorm.from_config(keras_config)
    assert (bn.axis, bn.momentum, bn.epsilon, bn.use_bias, bn.use_scale) == (1, 0.9, 1e-5, False, True)
    params, _ = bn.init(None, jnp.ones((2, 4, 3)))
    assert set(params) == {"scale"}
    np.testing.assert_array_equal(params["scale"], 3.0)


def test_keras_layer_normalization_config():
    keras_config = {"name": "ln", "trainable": True, "dtype": "float32", "axis": [-2, -1], "epsilon": 1e-3,
                    "center": True, "scale": True, "rms_scaling": False, "beta_initializer": "zeros",
                    "gamma_initializer": "ones", "beta_regularizer": None, "gamma_regularizer": None,
                    "beta_constraint": None, "gamma_constraint": None}
    ln = jaxnorm.LayerNorm.from_config(keras_config)
    assert ln == jaxnorm.LayerNorm(axis=(-2, -1))
