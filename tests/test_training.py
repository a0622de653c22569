"""Keras semantics beyond plain batch norm: renorm, frozen layers, regularizers, constraints, train-step helpers.

References are NumPy float64 formulas (tests/reference.py) and identities; the same features are compared with
real Keras in tests/test_keras_conformance.py.
"""

import dataclasses
import json
import operator

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxnorm
from tests import reference as ref
from tests.tolerances import assert_close

L2 = {"class_name": "L2", "config": {"l2": 0.5}}


def _batches(k=4, shape=(8, 3), seed=0, offset=3.0):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(offset + 2 * rng.standard_normal(shape) * (1 + 0.3 * i), jnp.float32) for i in range(k)]


@pytest.mark.parametrize("clipping", [None, {"rmax": 1.2, "rmin": 0.9, "dmax": 0.1}, {"rmax": 3.0}])
def test_renorm_matches_reference_over_steps(clipping):
    xs = _batches()
    scale, bias = np.array([1.5, 0.5, -1.0]), np.array([0.1, 0.0, 2.0])
    spec = jaxnorm.BatchNorm(momentum=0.9, renorm=True, renorm_momentum=0.7, renorm_clipping=clipping)
    params, state = spec.init(None, xs[0])
    params = {"scale": jnp.asarray(scale, jnp.float32), "bias": jnp.asarray(bias, jnp.float32)}
    step = jax.jit(lambda p, s, x: spec.apply(p, s, x, training=True))
    ref_ys, ref_state = ref.batch_renorm_steps(xs, 0.9, 0.7, spec.epsilon, scale, bias, clipping)
    for x, want in zip(xs, ref_ys, strict=True):
        y, state = step(params, state, x)
        assert_close(y, want, scale=4)
    for k, v in ref_state.items():
        assert_close(state[k], v, scale=4)
    # Inference ignores renorm: the moving statistics only.
    y, same = spec.apply(params, state, xs[0], training=False)
    assert same is state
    assert_close(y, ref.normalize(xs[0], state["mean"], state["var"], bias, scale, spec.epsilon))


def test_renorm_clipping_changes_output_and_first_step_is_batch_norm():
    xs = _batches()
    plain = jaxnorm.BatchNorm(momentum=0.9)
    renorm = jaxnorm.BatchNorm(momentum=0.9, renorm=True)
    p, s_plain = plain.init(None, xs[0])
    _, s_renorm = renorm.init(None, xs[0])
    # Far from the initial renorm statistics (0, 1): r and d are large, so the outputs differ...
    y_plain, _ = plain.apply(p, s_plain, xs[0], training=True)
    y_renorm, _ = renorm.apply(p, s_renorm, xs[0], training=True)
    assert float(jnp.max(jnp.abs(y_plain - y_renorm))) > 1.0
    # ...but with r clipped to 1 and d to 0, batch renorm is batch norm.
    clipped = jaxnorm.BatchNorm(momentum=0.9, renorm=True, renorm_clipping={"rmax": 1.0, "rmin": 1.0, "dmax": 0.0})
    y_clipped, _ = clipped.apply(p, s_renorm, xs[0], training=True)
    assert_close(y_clipped, y_plain)


def test_renorm_corrections_are_constants_of_the_gradient():
    x = _batches(1)[0]
    spec = jaxnorm.BatchNorm(renorm=True, renorm_clipping={"rmax": 10.0, "dmax": 10.0})
    params, state = spec.init(None, x)
    state = {**state, "renorm_mean": jnp.full(3, 2.0), "renorm_stddev": jnp.full(3, 1.5)}
    w = jnp.asarray(np.random.default_rng(1).standard_normal(x.shape), jnp.float32)

    def loss(x, params):
        return jnp.sum(w * spec.apply(params, state, x, training=True)[0])

    gx, gp = jax.grad(loss, argnums=(0, 1))(x, params)
    # With r, d constant, y = x_hat * (r * scale) + (d * scale + bias): the batch-norm gradient scaled by r.
    xs64 = np.asarray(x, np.float64)
    m, v = xs64.mean(0), xs64.var(0)
    sd = np.sqrt(v + spec.epsilon)
    r, d = sd / 1.5, (m - 2.0) / 1.5
    xhat = (xs64 - m) / sd
    g = np.asarray(w, np.float64) * r  # dL/dx_hat
    want_gx = (g - g.mean(0) - xhat * (g * xhat).mean(0)) / sd
    assert_close(gx, want_gx, scale=20)
    assert_close(gp["scale"], (np.asarray(w, np.float64) * (xhat * r + d)).sum(0), scale=20)
    assert_close(gp["bias"], np.asarray(w, np.float64).sum(0), scale=20)


def test_renorm_state_tree_and_errors():
    spec = jaxnorm.BatchNorm(renorm=True, var_init={"class_name": "Constant", "config": {"value": 4.0}})
    _, state = spec.init(None, jnp.zeros((2, 3)))
    assert sorted(state) == ["mean", "renorm_mean", "renorm_stddev", "stddev", "var"]
    assert_close(state["stddev"], np.full(3, 2.0))
    assert_close(state["renorm_stddev"], np.full(3, 2.0))
    with pytest.raises(ValueError, match=r"`state` .*renorm_mean"):
        spec.apply({"scale": jnp.ones(3), "bias": jnp.zeros(3)}, {"mean": jnp.zeros(3), "var": jnp.ones(3)},
                   jnp.zeros((2, 3)), training=True)


def test_renorm_safe_update_keeps_every_statistic():
    spec = jaxnorm.BatchNorm(renorm=True)
    x = _batches(1)[0]
    params, state = spec.init(None, x)
    bad = x.at[0, 1].set(jnp.nan)
    _, new = spec.apply(params, state, bad, training=True)
    _, clean = spec.apply(params, state, x, training=True)
    for k in state:  # per feature: the NaN feature keeps every statistic, the others update as without it
        np.testing.assert_array_equal(new[k][1], state[k][1])
        np.testing.assert_array_equal(np.asarray(new[k])[[0, 2]], np.asarray(clean[k])[[0, 2]])
        assert not np.array_equal(np.asarray(new[k])[[0, 2]], np.asarray(state[k])[[0, 2]])


def test_frozen_batch_norm_runs_in_inference_and_gets_no_gradient():
    xs = _batches()
    spec = jaxnorm.BatchNorm(trainable=False)
    params, state = spec.init(None, xs[0])
    state = {"mean": jnp.array([1.0, 2.0, 3.0]), "var": jnp.array([4.0, 1.0, 0.5])}
    y, new_state = spec.apply(params, state, xs[0], training=True)
    assert new_state is state
    assert_close(y, ref.normalize(xs[0], state["mean"], state["var"], np.zeros(3), np.ones(3), spec.epsilon))
    grads = jax.grad(lambda p: jnp.sum(spec.apply(p, state, xs[0], training=True)[0] ** 2))(params)
    for g in jax.tree.leaves(grads):
        np.testing.assert_array_equal(g, 0.0)
    # The same layer unfrozen does get gradients (the check above can fail).
    live = jaxnorm.BatchNorm()
    grads = jax.grad(lambda p: jnp.sum(live.apply(p, state, xs[0], training=False)[0] ** 2))(params)
    assert float(jnp.abs(grads["scale"]).sum()) > 0


def test_frozen_layer_norm_gets_no_gradient_and_same_output():
    x = _batches(1)[0]
    frozen, live = jaxnorm.LayerNorm(trainable=False), jaxnorm.LayerNorm()
    params, state = live.init(None, x)
    params = {"scale": jnp.array([1.0, 2.0, 3.0]), "bias": jnp.array([0.5, 0.0, -0.5])}
    assert_close(frozen.apply(params, state, x)[0], live.apply(params, state, x)[0])
    grads = jax.grad(lambda p: jnp.sum(frozen.apply(p, state, x)[0] ** 2))(params)
    assert all(float(jnp.abs(g).sum()) == 0 for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("axis", [-1, (1, 2)])
def test_layer_norm_rms_scaling_is_keras_formula(axis):
    x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 3, 4)) + 1.0, jnp.float32)
    spec = jaxnorm.LayerNorm(axis=axis, rms_scaling=True, use_bias=True, use_scale=False)
    params, _ = spec.init(None, x)
    assert sorted(params) == ["scale"]  # Keras: gamma always, beta never
    params = {"scale": params["scale"] * 2.0}
    axes = (2,) if axis == -1 else axis
    x64 = np.asarray(x, np.float64)
    want = x64 / np.sqrt(x64.var(axis=axes, keepdims=True) + spec.epsilon) * 2.0
    assert_close(spec.apply(params, {}, x)[0], want)


def test_regularization_loss_is_keras_penalty_and_zero_when_frozen():
    params = {"scale": jnp.array([1.0, -2.0]), "bias": jnp.array([3.0, -4.0])}
    spec = jaxnorm.BatchNorm(scale_regularizer=L2, bias_regularizer="l1")
    want = 0.5 * (1 + 4) + 0.01 * (3 + 4)  # L2: l2 * sum(w^2); 'l1' is L1(l1=0.01)
    assert_close(spec.regularization_loss(params), want)
    assert float(jaxnorm.BatchNorm().regularization_loss(params)) == 0.0
    frozen = jaxnorm.BatchNorm(scale_regularizer=L2, trainable=False)
    assert float(frozen.regularization_loss(params)) == 0.0
    # Differentiable: d/dscale of 0.5 * sum(scale^2) is scale.
    assert_close(jax.grad(spec.regularization_loss)(params)["scale"], np.array([1.0, -2.0]))


def test_apply_constraints_projects_and_leaves_others():
    params = {"scale": jnp.array([3.0, -4.0]), "bias": jnp.array([-1.0, 2.0])}
    spec = jaxnorm.LayerNorm(scale_constraint={"class_name": "MaxNorm", "config": {"max_value": 1.0}},
                             bias_constraint="non_neg")
    out = spec.apply_constraints(params)
    assert_close(out["scale"], np.array([3.0, -4.0]) / (5.0 + 1e-7))  # norm 5 -> 1 (Keras's epsilon 1e-7)
    np.testing.assert_array_equal(out["bias"], np.array([0.0, 2.0]))
    np.testing.assert_array_equal(params["scale"], np.array([3.0, -4.0]))  # pure: input untouched
    frozen = jaxnorm.LayerNorm(bias_constraint="non_neg", trainable=False)
    np.testing.assert_array_equal(frozen.apply_constraints(params)["bias"], params["bias"])


def _model():
    layers = {"bn": jaxnorm.BatchNorm(scale_constraint="non_neg", scale_regularizer=L2),
              "block": {"ln": jaxnorm.LayerNorm(trainable=False, bias_regularizer=L2)}}
    params = {"bn": {"scale": jnp.array([1.0, -1.0]), "bias": jnp.zeros(2)},
              "block": {"ln": {"scale": jnp.ones(2), "bias": jnp.array([2.0, 2.0])}, "w": jnp.ones((2, 2))},
              "dense": {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}}
    return layers, params


def test_model_level_loss_constraints_and_masks():
    layers, params = _model()
    assert_close(jaxnorm.regularization_loss(layers, params), 0.5 * 2)  # the frozen ln contributes nothing
    projected = jaxnorm.apply_constraints(layers, params)
    np.testing.assert_array_equal(projected["bn"]["scale"], [1.0, 0.0])
    assert projected["dense"] is params["dense"]
    assert jaxnorm.trainable_mask(layers, params) == {
        "bn": {"scale": True, "bias": True},
        "block": {"ln": {"scale": False, "bias": False}, "w": True},
        "dense": {"w": True, "b": True},
    }
    assert jaxnorm.decay_mask(layers, params, others=lambda path, leaf: leaf.ndim > 1) == {
        "bn": {"scale": False, "bias": False},
        "block": {"ln": {"scale": False, "bias": False}, "w": True},
        "dense": {"w": True, "b": False},
    }


def test_optax_step_with_constraints_and_frozen_layer():
    layers, params = _model()
    mask = jaxnorm.trainable_mask(layers, params)
    optimizer = optax.chain(
        optax.multi_transform({True: optax.adamw(0.5, weight_decay=0.1), False: optax.set_to_zero()}, mask),
        jaxnorm.constraints_transform(layers),
    )
    opt_state = optimizer.init(params)
    grads = jax.tree.map(jnp.ones_like, params)  # pushes every param down
    for _ in range(3):
        updates, opt_state = jax.jit(optimizer.update)(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    assert float(jnp.min(params["bn"]["scale"])) >= 0.0  # non_neg held after every step
    assert float(params["bn"]["scale"][1]) == 0.0
    np.testing.assert_array_equal(params["block"]["ln"]["bias"], [2.0, 2.0])  # frozen: not moved at all
    assert float(params["dense"]["w"][0, 0]) < 0.0  # the rest trains


def test_train_step_helper_errors():
    layers, params = _model()
    with pytest.raises(ValueError, match=r"`layers` names params\['nope'\]"):
        jaxnorm.regularization_loss({"nope": jaxnorm.LayerNorm()}, params)
    with pytest.raises(TypeError, match=r"`layers`\['bn'\] must be a jaxnorm layer spec"):
        jaxnorm.apply_constraints({"bn": "batchnorm"}, params)
    with pytest.raises(TypeError, match=r"`others` must be a bool"):
        jaxnorm.decay_mask(layers, params, others="w")
    transform = jaxnorm.constraints_transform(layers)
    with pytest.raises(ValueError, match=r"needs the params"):
        transform.update(params, transform.init(params))
    with pytest.raises(ValueError, match=r"`params` has no 'scale' for `scale_regularizer`"):
        jaxnorm.BatchNorm(scale_regularizer="l2").regularization_loss({"bias": jnp.zeros(2)})


def test_count_steps_counts_with_exponential_averaging():
    xs = _batches(3)
    spec = jaxnorm.BatchNorm(count_steps=True)
    params, state = spec.init(None, xs[0])
    assert state["steps"].dtype == jnp.int32
    plain_params, plain = jaxnorm.BatchNorm().init(None, xs[0])
    for x in xs:
        _, state = spec.apply(params, state, x, training=True)
        _, plain = jaxnorm.BatchNorm().apply(plain_params, plain, x, training=True)
    assert int(state["steps"]) == 3
    assert_close(state["mean"], plain["mean"])  # the counter changes nothing else


@pytest.mark.parametrize(
    "spec",
    [
        jaxnorm.BatchNorm(renorm=True, renorm_clipping={"rmax": 2.0, "dmax": 1.0}, renorm_momentum=0.5,
                          scale_regularizer={"class_name": "L1L2", "config": {"l1": 0.1, "l2": 0.2}},
                          bias_constraint={"class_name": "MinMaxNorm", "config": {"min_value": 0.5}},
                          trainable=False, count_steps=True),
        jaxnorm.LayerNorm(axis=(1, 2), rms_scaling=True, scale_constraint="unit_norm", bias_regularizer="l2"),
    ],
    ids=["batch_norm", "layer_norm"],
)
def test_config_round_trip_of_every_new_key(spec):
    config = json.loads(json.dumps(spec.get_config()))
    again = type(spec).from_config(config)
    assert again == spec and hash(again) == hash(spec)
    # Through Keras's keys: everything but count_steps (a counter Keras does not keep; it changes no number), and
    # a BatchNorm read from a Keras config follows Keras on a single value per feature (allow_single_value).
    keras_equivalent = spec
    if hasattr(spec, "count_steps"):
        keras_equivalent = dataclasses.replace(spec, count_steps=False, allow_single_value=True)
    assert type(spec).from_config(json.loads(json.dumps(spec.to_keras_config()))) == keras_equivalent


def test_to_keras_config_refuses_what_keras_cannot_express():
    with pytest.raises(ValueError, match=r"momentum_convention='torch' \(Keras computes 'keras'\)"):
        jaxnorm.BatchNorm(momentum_convention="torch").to_keras_config()
    with pytest.raises(ValueError, match=r"axis=\[1, 2\] \(Keras computes one feature axis"):
        jaxnorm.BatchNorm(axis=(1, 2)).to_keras_config()
    with pytest.raises(ValueError, match=r"param_dtype='bfloat16'"):
        jaxnorm.LayerNorm(param_dtype="bfloat16").to_keras_config()


def test_operator_module_used():  # keeps `operator` meaningful: masks invert cleanly for optax.masked
    layers, params = _model()
    frozen = jax.tree.map(operator.not_, jaxnorm.trainable_mask(layers, params))
    assert frozen["block"]["ln"] == {"scale": True, "bias": True}
