"""jaxnorm against real Keras 3 (JAX backend): BatchNormalization and LayerNormalization.

Every test builds the Keras layer, builds the jaxnorm spec from the Keras layer's ``get_config()`` and copies
Keras's weights into ``params``/``state`` (:func:`keras_to_jaxnorm`), then compares outputs, moving statistics,
regularization losses, constraints and configs with what Keras itself computes.

Tolerances: float32 outputs and statistics use ``tolerances.assert_close`` (1e-5 absolute and relative). Both
libraries compute the same formulas in float32 and differ only in reduction order (jaxnorm's shifted two-pass vs
Keras's ``jnp.mean``/``jnp.var``) and in how the affine map is arranged (Keras: ``x * inv + (beta - mean * inv)``);
on data ``3 + 2 N(0, 1)`` with at most a few hundred elements per statistic that is a few float32 ulps of O(1-10)
values, ~1e-6 (the largest difference in this file uses 0.12 of the tolerance), while a wrong momentum, epsilon,
axis, clipping or mask shows up at 1e-2 or more. Keras's masked statistics divide by ``count + 1e-7``: in float32
that is exactly ``count`` for count >= 2 (1e-7 is below half an ulp of 2) and a relative 1.2e-7 for count == 1,
both far inside the tolerance.
"""

import json
import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")
pytestmark = pytest.mark.peers("keras")  # the conformance tier (`pytest -m peers`)
keras = pytest.importorskip("keras")

if keras.backend.backend() != "jax":  # keras was imported earlier (e.g. by another test) with another backend
    pytest.skip(
        f"Keras runs with the {keras.backend.backend()!r} backend; these tests need KERAS_BACKEND=jax set before "
        "keras is first imported.",
        allow_module_level=True,
    )

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import jaxnorm  # noqa: E402
from tests.tolerances import assert_close  # noqa: E402

# jaxnorm name -> Keras weight name.
PARAM_NAMES = {"scale": "gamma", "bias": "beta"}
STATE_NAMES = {
    "mean": "moving_mean",
    "var": "moving_variance",
    "stddev": "moving_stddev",
    "renorm_mean": "renorm_mean",
    "renorm_stddev": "renorm_stddev",
}
N_STEPS = 4
# One input shape per rank, every axis a different size (so that a wrong axis cannot go unnoticed); shared by the
# random cases so that the eager Keras and jaxnorm ops compile once per shape rather than once per case.
SHAPES = {2: (7, 5), 3: (6, 4, 5), 4: (5, 3, 4, 2)}


# ---------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------


def _keras_call(layer, x, **kwargs):
    """Calls a Keras layer eagerly. Keras's JAX backend relies on implicit rank promotion (e.g. ``(N, C) * (C,)``),
    which the suite's conftest turns into an error for jaxnorm's sake; allow it inside Keras only. A
    LayerNormalization with the deprecated ``rms_scaling`` warns at every call: expect that warning."""
    with jax.numpy_rank_promotion("allow"):
        if getattr(layer, "rms_scaling", False):
            with pytest.warns(UserWarning, match="rms_scaling"):
                return np.asarray(layer(x, **kwargs))
        return np.asarray(layer(x, **kwargs))


def _keras_weights(layer):
    """Keras weights by their short name ('gamma', 'moving_mean', ...), as NumPy arrays."""
    return {w.path.rsplit("/", 1)[-1]: np.asarray(w.value) for w in layer.weights}


def _spec_class(layer):
    if isinstance(layer, keras.layers.BatchNormalization):
        return jaxnorm.BatchNorm
    if isinstance(layer, keras.layers.LayerNormalization):
        return jaxnorm.LayerNorm
    raise TypeError(f"no jaxnorm counterpart for {type(layer).__name__}")


def keras_to_jaxnorm(layer, input_shape, config=None):
    """A built Keras layer as ``(spec, params, state)``.

    The spec comes from ``layer.get_config()`` (or ``config``), the arrays from the layer's weights by path name.
    Each array is reshaped to the shape ``spec.init`` gives for ``input_shape``: the two agree except for a
    LayerNormalization over axes of mixed sign, whose weights Keras creates in the order of its sorted raw axes
    (``[-1, 1]`` -> ``(C, H)``) and then *reshapes* (not transposes) onto the input, so a reshape is what keeps
    Keras's numbers.
    """
    spec = _spec_class(layer).from_config(layer.get_config() if config is None else config)
    want_params, want_state = spec.init(None, jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32))
    weights = _keras_weights(layer)

    def take(names, want):
        missing = sorted(names[k] for k in want if names[k] not in weights)
        assert not missing, f"Keras layer has no weight(s) {missing}; it has {sorted(weights)}"
        return {k: jnp.asarray(np.reshape(weights[names[k]], want[k].shape), want[k].dtype) for k in want}

    return spec, take(PARAM_NAMES, want_params), take(STATE_NAMES, want_state)


def keras_state(layer):
    """The Keras layer's non-trainable weights under jaxnorm's state names."""
    inverse = {v: k for k, v in STATE_NAMES.items()}
    return {inverse[k]: v for k, v in _keras_weights(layer).items() if k in inverse}


def _set_weight(layer, name, value):
    var = {w.path.rsplit("/", 1)[-1]: w for w in layer.weights}[name]
    var.assign(np.asarray(value, np.float32).reshape(var.shape))


def _randomize_weights(layer, rng):
    """Random, feature-dependent weights (so that a wrong axis or a transposition shows), positive where needed."""
    for name, w in _keras_weights(layer).items():
        if name in ("gamma", "moving_variance", "moving_stddev", "renorm_stddev"):
            value = rng.uniform(0.5, 2.0, w.shape)
        else:  # beta, moving_mean, renorm_mean
            value = rng.normal(0.0, 1.5, w.shape)
        _set_weight(layer, name, value)


def _batch(rng, shape, dtype=np.float32):
    """Data with an offset, ``3 + 2 N(0, 1)``, plus an offset per last-axis index so that features differ."""
    return (3.0 + 2.0 * rng.standard_normal(shape) + 0.5 * rng.standard_normal(shape[-1:])).astype(dtype)


def _keras_mask(rng, shape):
    """A Keras mask of shape ``shape[:-1]`` with at least 2 True positions."""
    m = rng.random(shape[:-1]) < 0.7
    flat = m.reshape(-1)
    flat[:2] = True
    return flat.reshape(shape[:-1])


def _normalized(kind, value):
    """A Keras initializer/regularizer/constraint identifier in the canonical serialized form."""
    module = getattr(keras, kind + "s")
    return module.serialize(module.get(value))


def _normalized_config(config):
    out = {k: v for k, v in config.items() if k != "name"}
    for key, value in out.items():
        for kind in ("initializer", "regularizer", "constraint"):
            if key.endswith("_" + kind):
                out[key] = _normalized(kind, value)
    return out


# ---------------------------------------------------------------------------------------------------------------
# 1. BatchNormalization: random configurations, 4 training steps, then inference
# ---------------------------------------------------------------------------------------------------------------

# (rank, axis): last axis (as -1 and as rank-1), channels-first axis 1, middle axes, negative middle axes.
_RANK_AXES = [(2, -1), (2, 1), (3, -1), (3, 1), (3, -2), (4, -1), (4, 1), (4, 2), (4, -3), (4, 3), (3, 2)]
_GAMMA_INITS = ["ones", {"class_name": "Constant", "config": {"value": 1.5}}, "Ones"]
_BETA_INITS = ["zeros", {"class_name": "Constant", "config": {"value": -0.25}}]
_MEAN_INITS = ["zeros", {"module": "keras.initializers", "class_name": "Constant", "config": {"value": 0.5},
                         "registered_name": None}]
_VAR_INITS = ["ones", {"class_name": "Constant", "config": {"value": 2.0}}]
_CLIPPINGS = [None, {}, {"rmax": 1.5}, {"rmin": 0.8, "rmax": 1.2, "dmax": 0.5}, {"dmax": 0.1}, {"rmin": 1.1}]


def _bn_case(i):
    """Configuration ``i``: Keras kwargs, input shape, whether to mask; cycles through every (rank, axis)."""
    rng = np.random.default_rng(1000 + i)
    rank, axis = _RANK_AXES[i % len(_RANK_AXES)]
    shape = SHAPES[rank]
    kwargs = dict(
        axis=axis,
        momentum=float(rng.choice([0.0, 0.5, 0.9, 0.99])),
        epsilon=float(rng.choice([1e-5, 1e-3, 0.1])),
        center=bool(rng.random() < 0.7),
        scale=bool(rng.random() < 0.7),
        gamma_initializer=_GAMMA_INITS[rng.integers(len(_GAMMA_INITS))],
        beta_initializer=_BETA_INITS[rng.integers(len(_BETA_INITS))],
        moving_mean_initializer=_MEAN_INITS[rng.integers(len(_MEAN_INITS))],
        moving_variance_initializer=_VAR_INITS[rng.integers(len(_VAR_INITS))],
    )
    if i % 3 == 0:  # every third case: batch renormalization, with and without clipping
        kwargs.update(
            renorm=True,
            renorm_clipping=_CLIPPINGS[(i // 3) % len(_CLIPPINGS)],
            renorm_momentum=float(rng.choice([0.5, 0.9, 0.99])),
        )
    masked = axis in (-1, rank - 1) and i % 2 == 1  # Keras's masks apply to the last axis only
    return kwargs, shape, masked


_BN_CASES = 24


@pytest.mark.parametrize("case", range(_BN_CASES))
def test_batch_norm_matches_keras_training_and_inference(case):
    kwargs, shape, masked = _bn_case(case)
    rng = np.random.default_rng(case)
    layer = keras.layers.BatchNormalization(**kwargs)
    layer.build(shape)

    # spec.init reproduces Keras's build for these deterministic initializers (all weights, exactly)
    spec = jaxnorm.BatchNorm.from_config(layer.get_config())
    params0, state0 = spec.init(jax.random.key(0), jnp.zeros(shape, jnp.float32))
    _, kparams, kstate = keras_to_jaxnorm(layer, shape)
    assert jax.tree.structure((params0, state0)) == jax.tree.structure((kparams, kstate))
    for got, want in zip(jax.tree.leaves((params0, state0)), jax.tree.leaves((kparams, kstate)), strict=True):
        np.testing.assert_array_equal(got, want)

    # then random, feature-dependent weights, copied over
    _randomize_weights(layer, rng)
    spec, params, state = keras_to_jaxnorm(layer, shape)
    assert set(state) == set(keras_state(layer))
    assert set(params) == {k for k, on in (("scale", kwargs["scale"]), ("bias", kwargs["center"])) if on}

    for step in range(N_STEPS):
        x = _batch(rng, shape)
        mask = None
        if masked:
            mask = _keras_mask(rng, shape)
            x[~mask] = 1e3  # excluded values far off: including any of them would move the statistics a lot
        y_keras = _keras_call(layer, x, training=True, mask=mask)
        y, state = spec.apply(params, state, jnp.asarray(x), training=True, mask=mask)
        assert_close(y, y_keras)
        want = keras_state(layer)
        assert set(state) == set(want)
        for key in want:
            try:
                assert_close(state[key], want[key])
            except AssertionError as e:
                raise AssertionError(f"state[{key!r}] after training step {step}: {e}") from None

    x = _batch(rng, shape)
    mask = _keras_mask(rng, shape) if masked else None
    y_keras = _keras_call(layer, x, training=False, mask=mask)
    y, new_state = spec.apply(params, state, jnp.asarray(x), training=False, mask=mask)
    assert_close(y, y_keras)
    for key in state:
        np.testing.assert_array_equal(new_state[key], state[key])


def test_batch_norm_all_masked_batch_output_like_keras_state_by_safe_update():
    """A mask that selects nothing: Keras's statistics are (0, 0) (sums over ``0 + 1e-7``) and jaxnorm's too, so
    the outputs agree. Keras then moves its moving statistics towards (0, 0); jaxnorm's default
    ``safe_update=True`` keeps the state as it was (a documented difference), and ``safe_update=False`` updates as
    Keras does."""
    shape = (4, 3, 2)
    rng = np.random.default_rng(5)
    layer = keras.layers.BatchNormalization(momentum=0.5)
    layer.build(shape)
    _randomize_weights(layer, rng)
    spec, params, state = keras_to_jaxnorm(layer, shape)
    x, mask = _batch(rng, shape), np.zeros(shape[:-1], bool)
    y_keras = _keras_call(layer, x, training=True, mask=mask)
    y, kept = spec.apply(params, state, jnp.asarray(x), training=True, mask=mask)
    assert_close(y, y_keras)
    for key in state:
        np.testing.assert_array_equal(kept[key], state[key])
    unsafe = jaxnorm.BatchNorm(**{**spec.get_config(), "safe_update": False})
    y, updated = unsafe.apply(params, state, jnp.asarray(x), training=True, mask=mask)
    assert_close(y, y_keras)
    want = keras_state(layer)
    for key in want:
        assert_close(updated[key], want[key])
    assert np.max(np.abs(want["var"] - np.asarray(state["var"]))) > 0.1  # Keras did move


def test_batch_norm_cases_cover_the_requested_space():
    """The generated cases include every axis kind, masks, renorm with and without each clipping bound."""
    cases = [_bn_case(i) for i in range(_BN_CASES)]
    assert {(len(s), kw["axis"]) for kw, s, _ in cases} == set(_RANK_AXES)
    assert sum(m for _, _, m in cases) >= 4
    renorm = [kw for kw, _, _ in cases if kw.get("renorm")]
    assert len(renorm) >= 6
    assert {tuple(sorted(kw["renorm_clipping"] or {})) for kw in renorm} >= {(), ("rmax",), ("dmax",), ("rmin",)}
    assert {kw["center"] for kw, _, _ in cases} == {True, False}
    assert {kw["scale"] for kw, _, _ in cases} == {True, False}
    assert any(isinstance(kw["gamma_initializer"], dict) for kw, _, _ in cases)


# ---------------------------------------------------------------------------------------------------------------
# 2. trainable=False
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("renorm", [False, True])
def test_frozen_batch_norm_runs_inference_in_training_like_keras(renorm):
    rng = np.random.default_rng(7)
    shape = (6, 3, 4)
    layer = keras.layers.BatchNormalization(trainable=False, momentum=0.5, renorm=renorm)
    layer.build(shape)
    _randomize_weights(layer, rng)
    before = keras_state(layer)
    spec, params, state = keras_to_jaxnorm(layer, shape)
    assert spec.trainable is False

    x = _batch(rng, shape)
    y_keras = _keras_call(layer, x, training=True)
    # Keras: inference output, no update
    assert_close(y_keras, _keras_call(layer, x, training=False))
    for key, value in keras_state(layer).items():
        np.testing.assert_array_equal(value, before[key])

    y, new_state = spec.apply(params, state, jnp.asarray(x), training=True)
    assert_close(y, y_keras)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    for key in state:
        np.testing.assert_array_equal(new_state[key], state[key])
    # and it is not what a trainable layer gives (batch statistics of data far from the moving ones)
    y_trainable, _ = jaxnorm.BatchNorm.from_config({**layer.get_config(), "trainable": True}).apply(
        params, state, jnp.asarray(x), training=True
    )
    assert np.max(np.abs(np.asarray(y_trainable) - y_keras)) > 0.1


@pytest.mark.parametrize("cls", ["BatchNormalization", "LayerNormalization"])
def test_frozen_layer_params_get_zero_gradient(cls):
    rng = np.random.default_rng(8)
    shape = (5, 4)
    layer = getattr(keras.layers, cls)(trainable=False)
    layer.build(shape)
    _randomize_weights(layer, rng)
    spec, params, state = keras_to_jaxnorm(layer, shape)
    x = jnp.asarray(_batch(rng, shape))
    weights = jnp.asarray(rng.standard_normal(shape), jnp.float32)  # a loss whose gradient is not 0 by symmetry

    def loss(spec, params):
        y, _ = spec.apply(params, state, x, training=True)
        return jnp.sum(y * weights) + jnp.sum(y)

    grads = jax.grad(lambda p: loss(spec, p))(params)
    assert set(grads) == {"scale", "bias"}
    for g in grads.values():
        np.testing.assert_array_equal(g, np.zeros_like(g))
    unfrozen = type(spec).from_config({**layer.get_config(), "trainable": True})
    live = jax.grad(lambda p: loss(unfrozen, p))(params)
    for g in live.values():
        assert np.all(np.abs(np.asarray(g)) > 1e-3)


def test_frozen_layer_has_no_regularization_loss_and_no_constraint_like_keras():
    shape = (4, 3)
    kwargs = dict(
        gamma_regularizer="l2", beta_regularizer="l1", gamma_constraint="non_neg", beta_constraint="non_neg"
    )
    layer = keras.layers.BatchNormalization(trainable=False, **kwargs)
    layer.build(shape)
    _set_weight(layer, "gamma", [-1.0, 2.0, -3.0])
    _set_weight(layer, "beta", [0.5, -0.5, 1.0])
    _keras_call(layer, _batch(np.random.default_rng(0), shape), training=True)
    assert layer.losses == []  # Keras regularizes trainable weights only
    spec, params, _ = keras_to_jaxnorm(layer, shape)
    assert float(spec.regularization_loss(params)) == 0.0
    projected = spec.apply_constraints(params)
    for k in params:
        np.testing.assert_array_equal(projected[k], params[k])
    # the same spec unfrozen does regularize and project
    live = jaxnorm.BatchNorm.from_config({**layer.get_config(), "trainable": True})
    assert float(live.regularization_loss(params)) > 0
    assert np.min(np.asarray(live.apply_constraints(params)["scale"])) == 0.0


# ---------------------------------------------------------------------------------------------------------------
# 3. Regularizers and constraints
# ---------------------------------------------------------------------------------------------------------------

_REG_CONSTRAINT_CASES = [
    dict(gamma_regularizer="l2", beta_regularizer={"class_name": "L1L2", "config": {"l1": 0.003, "l2": 0.02}},
         gamma_constraint="non_neg",
         beta_constraint={"class_name": "MaxNorm", "config": {"max_value": 1.5, "axis": 0}}),
    dict(gamma_regularizer={"class_name": "L1", "config": {"l1": 0.05}}, beta_regularizer="l1",
         gamma_constraint={"class_name": "MinMaxNorm",
                           "config": {"min_value": 0.5, "max_value": 2.0, "rate": 0.7, "axis": 0}},
         beta_constraint="unit_norm"),
    dict(gamma_regularizer={"module": "keras.regularizers", "class_name": "L1L2", "config": {"l1": 0.0, "l2": 0.3},
                            "registered_name": None},
         gamma_constraint="max_norm", beta_constraint="non_neg"),
]


def _check_regularizers_and_constraints(layer, shape, rng):
    for var in (layer.gamma, layer.beta):  # negative entries and a norm of 8, so that every constraint acts
        if var is not None:
            w = rng.normal(0.0, 1.0, var.shape)
            w.flat[0] = -abs(w.flat[0])
            var.assign((8.0 * w / np.linalg.norm(w)).astype(np.float32))
    _keras_call(layer, _batch(rng, shape), training=True)
    spec, params, _ = keras_to_jaxnorm(layer, shape)

    keras_loss = float(sum(np.asarray(loss) for loss in layer.losses))
    assert keras_loss > 0
    # sums of at most 12 float32 terms on both sides: a few ulps apart
    np.testing.assert_allclose(float(spec.regularization_loss(params)), keras_loss, rtol=1e-6)
    model_loss = jaxnorm.regularization_loss({"norm": spec}, {"norm": params, "other": jnp.ones(3)})
    np.testing.assert_allclose(float(model_loss), keras_loss, rtol=1e-6)

    projected = spec.apply_constraints(params)
    for name, var in (("scale", layer.gamma), ("bias", layer.beta)):
        if var is None:
            continue
        want = np.asarray(var.constraint(var.value)) if var.constraint is not None else np.asarray(var.value)
        assert_close(np.asarray(projected[name]), want.reshape(params[name].shape))
        if var.constraint is not None:  # the projection did something for these weights
            assert np.max(np.abs(want - np.asarray(var.value))) > 0.1


@pytest.mark.parametrize("case", range(len(_REG_CONSTRAINT_CASES)))
def test_batch_norm_regularizers_and_constraints_match_keras(case):
    shape = (6, 5)
    layer = keras.layers.BatchNormalization(**_REG_CONSTRAINT_CASES[case])
    layer.build(shape)
    _check_regularizers_and_constraints(layer, shape, np.random.default_rng(case))


@pytest.mark.parametrize("axis", [-1, [1, 2]])
@pytest.mark.parametrize("case", range(len(_REG_CONSTRAINT_CASES)))
def test_layer_norm_regularizers_and_constraints_match_keras(case, axis):
    """With ``axis=[1, 2]`` the weights are 2-D, so the norm constraints' ``axis`` matters."""
    shape = (2, 4, 3)
    layer = keras.layers.LayerNormalization(axis=axis, **_REG_CONSTRAINT_CASES[case])
    layer.build(shape)
    _check_regularizers_and_constraints(layer, shape, np.random.default_rng(10 + case))


# A regularizer or constraint on a weight the layer does not create: Keras accepts the config (the weight does not
# exist, so there is no loss and nothing to project); jaxnorm builds the spec from it but then raises on the spec's
# own params.
_ABSENT_WEIGHT_CASES = [
    ("BatchNormalization", dict(scale=False, gamma_regularizer="l2", gamma_constraint="non_neg")),
    ("BatchNormalization", dict(center=False, beta_regularizer="l1", beta_constraint="max_norm")),
    ("LayerNormalization", dict(center=False, beta_regularizer="l2", beta_constraint="non_neg")),
    ("LayerNormalization", dict(rms_scaling=True, beta_regularizer="l2", beta_constraint="non_neg")),
]


def _absent_weight_layer(cls_name, kwargs):
    shape = (6, 5)
    layer = _make_keras(getattr(keras.layers, cls_name), kwargs)
    layer.build(shape)
    _randomize_weights(layer, np.random.default_rng(4))
    _keras_call(layer, _batch(np.random.default_rng(5), shape), training=True)
    spec, params, _ = keras_to_jaxnorm(layer, shape)
    return layer, spec, params


@pytest.mark.parametrize("cls_name, kwargs", _ABSENT_WEIGHT_CASES)
def test_regularizer_of_a_disabled_weight_is_zero_like_keras(cls_name, kwargs):
    layer, spec, params = _absent_weight_layer(cls_name, kwargs)
    assert layer.losses == []
    assert float(spec.regularization_loss(params)) == 0.0


@pytest.mark.parametrize("cls_name, kwargs", _ABSENT_WEIGHT_CASES)
def test_constraint_of_a_disabled_weight_projects_nothing_like_keras(cls_name, kwargs):
    _, spec, params = _absent_weight_layer(cls_name, kwargs)
    projected = spec.apply_constraints(params)
    assert set(projected) == set(params)
    for k in params:
        np.testing.assert_array_equal(projected[k], params[k])


# ---------------------------------------------------------------------------------------------------------------
# 4. Config round trips
# ---------------------------------------------------------------------------------------------------------------

_BN_CONFIGS = [
    {},
    dict(axis=1, momentum=0.9, epsilon=1e-5, center=False),
    dict(scale=False, gamma_initializer={"class_name": "Constant", "config": {"value": 2.0}},
         moving_variance_initializer={"class_name": "Constant", "config": {"value": 3.0}}),
    dict(renorm=True),
    dict(renorm=True, renorm_clipping={"rmax": 3.0, "rmin": 0.5, "dmax": 2.0}, renorm_momentum=0.9),
    dict(trainable=False, momentum=0.5),
    *_REG_CONSTRAINT_CASES,
]
_LN_CONFIGS = [
    {},
    dict(axis=1, epsilon=1e-6),
    dict(axis=[1, 2], center=False),
    dict(axis=[-2, -1], scale=False),
    dict(rms_scaling=True),
    dict(trainable=False, gamma_initializer={"class_name": "Constant", "config": {"value": 0.5}}),
    *_REG_CONSTRAINT_CASES,
]


def _make_keras(cls, kwargs):
    """Builds a Keras layer; rms_scaling=True must warn (it is deprecated in Keras)."""
    if kwargs.get("rms_scaling"):
        with pytest.warns(UserWarning, match="rms_scaling"):
            return cls(**kwargs)
    return cls(**kwargs)


def _keras_from_config(cls, config):
    if config.get("rms_scaling"):
        with pytest.warns(UserWarning, match="rms_scaling"):
            return cls.from_config(config)
    return cls.from_config(config)


@pytest.mark.parametrize(
    "cls_name, kwargs",
    [("BatchNormalization", kw) for kw in _BN_CONFIGS] + [("LayerNormalization", kw) for kw in _LN_CONFIGS],
)
def test_config_round_trips_through_keras_and_json(cls_name, kwargs):
    keras_cls = getattr(keras.layers, cls_name)
    spec_cls = jaxnorm.BatchNorm if cls_name == "BatchNormalization" else jaxnorm.LayerNorm
    original = _make_keras(keras_cls, kwargs)
    config = original.get_config()

    spec = spec_cls.from_config(config)
    # Keras config -> JSON -> spec: the same spec
    assert spec_cls.from_config(json.loads(json.dumps(config))) == spec
    # spec -> JSON -> spec
    assert spec_cls.from_config(json.loads(json.dumps(spec.get_config()))) == spec
    # spec -> Keras config -> Keras layer: the original layer's config (all keys but the name)
    keras_config = spec.to_keras_config()
    json.dumps(keras_config)
    rebuilt = _keras_from_config(keras_cls, keras_config)
    assert _normalized_config(rebuilt.get_config()) == _normalized_config(config)
    # and back again
    assert spec_cls.from_config(rebuilt.get_config()) == spec


def test_config_round_trip_detects_a_difference():
    """The normalization used above does not hide real differences."""
    def config(regularizer):
        return keras.layers.BatchNormalization(gamma_regularizer=regularizer).get_config()

    a = config({"class_name": "L2", "config": {"l2": 0.01}})
    b = config({"class_name": "L2", "config": {"l2": 0.02}})
    c = config("l2")
    assert _normalized_config(a) != _normalized_config(b)
    assert _normalized_config(a) == _normalized_config(c)


# ---------------------------------------------------------------------------------------------------------------
# 5. LayerNormalization numerics
# ---------------------------------------------------------------------------------------------------------------

# (rank, axis): int, negative int, lists (sorted, unsorted, negative, mixed sign), the whole example.
_LN_RANK_AXES = [
    (2, -1), (2, 1), (3, -1), (3, 1), (3, [1, 2]), (3, [-2, -1]), (4, [1, 3]), (4, -2), (4, [3, 1, 2]),
    (4, [1, -1]), (3, [2, 1]), (4, [-3, -1]),
]
_LN_CASES = 16


def _ln_case(i):
    rng = np.random.default_rng(2000 + i)
    rank, axis = _LN_RANK_AXES[i % len(_LN_RANK_AXES)]
    shape = SHAPES[rank]
    kwargs = dict(
        axis=axis,
        epsilon=float(rng.choice([1e-6, 1e-3, 0.1])),
        center=bool(rng.random() < 0.7),
        scale=bool(rng.random() < 0.7),
    )
    if i % 4 == 3:
        kwargs["rms_scaling"] = True
    return kwargs, shape


@pytest.mark.parametrize("case", range(_LN_CASES))
def test_layer_norm_matches_keras(case):
    kwargs, shape = _ln_case(case)
    rng = np.random.default_rng(case)
    layer = _make_keras(keras.layers.LayerNormalization, kwargs)
    layer.build(shape)
    _randomize_weights(layer, rng)
    spec, params, state = keras_to_jaxnorm(layer, shape)
    assert set(params) == {k for k, on in (("scale", layer.gamma), ("bias", layer.beta)) if on is not None}
    for training in (True, False):
        x = _batch(rng, shape)
        y, new_state = spec.apply(params, state, jnp.asarray(x), training=training)
        assert new_state == {}
        assert_close(y, _keras_call(layer, x, training=training))


def test_layer_norm_cases_cover_the_requested_space():
    cases = [_ln_case(i) for i in range(_LN_CASES)]
    axes = [kw["axis"] for kw, _ in cases]
    assert any(isinstance(a, int) and a < 0 for a in axes) and any(isinstance(a, int) and a > 0 for a in axes)
    assert any(isinstance(a, list) and min(a) < 0 < max(a) for a in axes)  # mixed sign
    assert {len(s) for _, s in cases} == {2, 3, 4}
    assert any(kw.get("rms_scaling") for kw, _ in cases)
    assert {kw["center"] for kw, _ in cases} == {True, False} and {kw["scale"] for kw, _ in cases} == {True, False}


def test_layer_norm_mixed_sign_axes_keras_weight_layout():
    """Keras creates the weights of ``axis=[1, -1]`` as ``(C, H)`` (sorted raw axes) and reshapes them onto the
    input; jaxnorm's are ``(H, C)`` (sorted canonical axes). Loading with a reshape gives Keras's numbers; a
    transpose would not."""
    shape = (2, 3, 5)
    layer = keras.layers.LayerNormalization(axis=[1, -1])
    layer.build(shape)
    assert tuple(layer.gamma.shape) == (5, 3)
    rng = np.random.default_rng(3)
    _randomize_weights(layer, rng)
    spec, params, state = keras_to_jaxnorm(layer, shape)
    assert params["scale"].shape == (3, 5)
    x = _batch(rng, shape)
    y_keras = _keras_call(layer, x)
    assert_close(spec.apply(params, state, jnp.asarray(x))[0], y_keras)
    weights = _keras_weights(layer)
    transposed = {"scale": jnp.asarray(weights["gamma"].T), "bias": jnp.asarray(weights["beta"].T)}
    assert np.max(np.abs(np.asarray(spec.apply(transposed, state, jnp.asarray(x))[0]) - y_keras)) > 0.1


# Keras's mixed policies: float32 variables, half-precision input and output, statistics in float32.
# (policy, input dtype, mantissa bits it has fewer than float32)
_MIXED = [("mixed_bfloat16", jnp.bfloat16, 16), ("mixed_float16", jnp.float16, 13)]


def _assert_within_one_ulp(actual, desired, lost_bits):
    """Both round the same float32 result to a half-precision dtype: at most one ulp of that dtype apart."""
    a, d = np.asarray(actual, np.float32), np.asarray(desired, np.float32)
    ulp = np.spacing(np.abs(d)) * 2.0**lost_bits
    assert np.all(np.abs(a - d) <= ulp), np.max(np.abs(a - d) / ulp)


@pytest.mark.parametrize("policy, dtype, lost_bits", _MIXED)
@pytest.mark.parametrize("kwargs", [dict(axis=-1), dict(axis=[1, 2], center=False), dict(axis=1, epsilon=1e-5)])
def test_layer_norm_half_precision_input_matches_keras_mixed_policy(kwargs, policy, dtype, lost_bits):
    """Keras under a mixed policy computes in float32 and casts the output to the half dtype; jaxnorm (spec from
    the same config, policy included) gives half out for half in. Both round a float32 result, so they may differ
    by one ulp of the half dtype."""
    shape = (4, 3, 8)
    rng = np.random.default_rng(11)
    layer = keras.layers.LayerNormalization(dtype=policy, **kwargs)
    layer.build(shape)
    _randomize_weights(layer, rng)
    spec, params, state = keras_to_jaxnorm(layer, shape)
    x = jnp.asarray(_batch(rng, shape), dtype)
    with jax.numpy_rank_promotion("allow"):
        y_keras = layer(x)
    assert y_keras.dtype == dtype
    y, _ = spec.apply(params, state, x)
    assert y.dtype == dtype
    assert_close(y, y_keras, dtype=dtype)
    _assert_within_one_ulp(y, y_keras, lost_bits)


@pytest.mark.parametrize("policy, dtype, lost_bits", _MIXED)
@pytest.mark.parametrize("renorm", [False, True])
def test_batch_norm_half_precision_input_matches_keras_mixed_policy(policy, dtype, lost_bits, renorm):
    """BatchNormalization under a mixed policy: half input and output, float32 statistics and moving state."""
    shape = (6, 4, 5)
    rng = np.random.default_rng(12)
    layer = keras.layers.BatchNormalization(dtype=policy, momentum=0.7, renorm=renorm)
    layer.build(shape)
    _randomize_weights(layer, rng)
    spec, params, state = keras_to_jaxnorm(layer, shape)
    for training in (True, True, False):
        x = jnp.asarray(_batch(rng, shape), dtype)
        with jax.numpy_rank_promotion("allow"):
            y_keras = layer(x, training=training)
        y, state = spec.apply(params, state, x, training=training)
        assert y.dtype == y_keras.dtype == dtype
        _assert_within_one_ulp(y, y_keras, lost_bits)
        want = keras_state(layer)
        for key in want:
            assert state[key].dtype == jnp.float32
            assert_close(state[key], want[key])


# ---------------------------------------------------------------------------------------------------------------
# 6. End to end: 3 steps in Keras, 3 more in a jitted jaxnorm step == 6 steps in Keras
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, shape",
    [
        (dict(axis=1, momentum=0.9, epsilon=1e-5), (8, 4, 5, 5)),
        (dict(momentum=0.8, renorm=True, renorm_clipping={"rmax": 1.5, "dmax": 0.5}, renorm_momentum=0.7),
         (16, 6)),
    ],
)
def test_keras_training_continues_in_jitted_jaxnorm(kwargs, shape):
    rng = np.random.default_rng(12)
    xs = [_batch(rng, shape) for _ in range(6)]
    layer = keras.layers.BatchNormalization(**kwargs)
    layer.build(shape)
    _randomize_weights(layer, rng)
    for x in xs[:3]:
        _keras_call(layer, x, training=True)
    spec, params, state = keras_to_jaxnorm(layer, shape)  # a snapshot after 3 Keras steps
    after_3 = state

    @jax.jit
    def train_step(params, state, x):
        return spec.apply(params, state, x, training=True)

    for step, x in enumerate(xs[3:], start=3):
        y, state = train_step(params, state, jnp.asarray(x))
        assert_close(y, _keras_call(layer, x, training=True))
        want = keras_state(layer)  # Keras after step + 1 steps
        assert set(state) == set(want)
        for key in want:
            try:
                assert_close(state[key], want[key])
            except AssertionError as e:
                raise AssertionError(f"state[{key!r}] after {step + 1} steps: {e}") from None
    x = _batch(rng, shape)
    y, _ = spec.apply(params, state, jnp.asarray(x), training=False)
    assert_close(y, _keras_call(layer, x, training=False))
    # the jaxnorm steps did move the statistics (the comparison above is not of unchanged values)
    for key in state:
        assert np.max(np.abs(np.asarray(state[key]) - np.asarray(after_3[key]))) > 1e-3


# ---------------------------------------------------------------------------------------------------------------
# 7. Keras's own masked BatchNormalization cases (keras/src/layers/normalization/batch_normalization_test.py),
#    and masks that leave a feature without data: jaxnorm matches Keras on every feature that had data and keeps
#    its own moving statistics on the others (Keras drifts those toward 0) -- issue 12, class 5.
# ---------------------------------------------------------------------------------------------------------------


def test_keras_case_input_fully_masked():
    """Keras's ``test_input_fully_masked``: zeros (4, 5), a mask selecting nothing -> zeros; jaxnorm keeps its
    state, Keras moves it."""
    layer = keras.layers.BatchNormalization(scale=False, center=False)
    x, mask = np.zeros((4, 5), np.float32), np.zeros((4,), np.float32)  # Keras's float mask; jaxnorm: its bools
    layer.build(x.shape)
    spec, params, state = keras_to_jaxnorm(layer, x.shape)
    y_keras = _keras_call(layer, x, mask=mask, training=True)
    y, after = spec.apply(params, state, jnp.asarray(x), training=True, mask=jnp.asarray(mask != 0))
    assert_close(y_keras, np.zeros_like(x))
    assert_close(y, y_keras)
    for key in state:
        np.testing.assert_array_equal(after[key], state[key])
    assert np.all(keras_state(layer)["var"] < 1)  # Keras moved toward var 0


@pytest.mark.parametrize("mask_value", [0.0, 0.1, 1.0])
def test_keras_case_batch_norm_ignores_masked_values(mask_value):
    """Keras's ``test_bachnorm_ignore_masked_values``: rows [1, 5], [2, 5] and two padding rows, masked the way
    ``keras.layers.Masking(mask_value)`` masks them; momentum 0, five training steps: moving mean [1.5, 5] and
    variance [0.25, 0], in Keras and in jaxnorm (outputs compared at every step)."""
    x = np.array([[[1, 5], [2, 5], [mask_value] * 2, [mask_value] * 2] for _ in range(10)], np.float32)
    mask = np.any(x != mask_value, axis=-1)  # keras.layers.Masking's rule
    layer = keras.layers.BatchNormalization(momentum=0.0)
    layer.build(x.shape)
    spec, params, state = keras_to_jaxnorm(layer, x.shape)
    step = jax.jit(spec.apply, static_argnames="training")
    for _ in range(5):
        y_keras = _keras_call(layer, x, mask=mask, training=True)
        y, state = step(params, state, jnp.asarray(x), training=True, mask=jnp.asarray(mask))
        assert_close(np.asarray(y)[mask], y_keras[mask])
    want = keras_state(layer)
    assert_close(want["mean"], [1.5, 5.0], scale=10)
    assert_close(want["var"], [0.25, 0.0], scale=10)
    for key in want:
        assert_close(state[key], want[key])


@pytest.mark.parametrize("axis, shape", [(-1, (5, 2, 3)), (1, (5, 3, 3, 2))])
def test_keras_case_mask_ignored_in_inference_and_used_in_training(axis, shape):
    """Keras's ``test_correctness`` masked part: at inference a mask changes nothing; in training it does."""
    rng = np.random.default_rng(21)
    x = rng.normal(5.0, 10.0, shape).astype(np.float32)
    x[:, 1, :] = 0.0
    mask = np.any(x != 0.0, axis=-1)  # keras.layers.Masking()
    layer = keras.layers.BatchNormalization(axis=axis, momentum=0.0)
    layer.build(shape)
    _randomize_weights(layer, rng)
    spec, params, state = keras_to_jaxnorm(layer, shape)
    unmasked, _ = spec.apply(params, state, jnp.asarray(x), training=False)
    masked, _ = spec.apply(params, state, jnp.asarray(x), training=False, mask=jnp.asarray(mask))
    np.testing.assert_array_equal(masked, unmasked)
    assert_close(masked, _keras_call(layer, x, mask=mask, training=False))
    trained, _ = spec.apply(params, state, jnp.asarray(x), training=True, mask=jnp.asarray(mask))
    assert_close(trained, _keras_call(layer, x, mask=mask, training=True))
    assert np.max(np.abs(np.asarray(trained) - np.asarray(unmasked))) > 1e-2


def _feature_starving_masks(rng, shape, n_steps):
    """Keras masks (``shape[:-1]``) for channels-first input (axis 1): each step leaves one or two channels
    without any valid element (and the others with at least two)."""
    masks = []
    for i in range(n_steps):
        m = rng.random(shape[:-1]) < 0.8
        m[:2] = True
        m[:, i % shape[1]] = False
        if i % 2:
            m[:, (i + 1) % shape[1]] = False
        masks.append(m)
    return masks


@pytest.mark.parametrize("renorm", [False, True])
def test_batch_norm_features_without_data_keep_their_statistics_keras_elsewhere(renorm):
    """Channels-first (axis=1) input and Keras's mask of rank ndim - 1, shape (N, C, H): a channel can have no
    valid element. At every step: outputs equal Keras's everywhere (both normalize such a channel by (0, 0));
    channels with data get exactly Keras's moving statistics; channels without keep jaxnorm's bit for bit while
    Keras's move toward 0 (then Keras is set back to jaxnorm's value, so the next step compares again)."""
    shape, n_steps = (6, 4, 3, 5), 5
    rng = np.random.default_rng(22)
    layer = keras.layers.BatchNormalization(axis=1, momentum=0.6, renorm=renorm, renorm_momentum=0.5)
    layer.build(shape)
    _randomize_weights(layer, rng)
    spec, params, state = keras_to_jaxnorm(layer, shape)
    step = jax.jit(spec.apply, static_argnames="training")
    for i, mask in enumerate(_feature_starving_masks(rng, shape, n_steps)):
        x = _batch(rng, shape)
        has_data = mask.any(axis=(0, 2))
        assert not has_data.all() and has_data.any()
        y_keras = _keras_call(layer, x, mask=mask, training=True)
        y, new_state = step(params, state, jnp.asarray(x), training=True, mask=jnp.asarray(mask[..., None]))
        assert_close(y, y_keras, scale=10)
        want = keras_state(layer)
        for key in state:
            got, old = np.asarray(new_state[key]), np.asarray(state[key])
            assert_close(got[has_data], want[key][has_data], scale=10)
            np.testing.assert_array_equal(got[~has_data], old[~has_data], err_msg=f"step {i}: {key}")
            assert np.all(np.abs(want[key][~has_data] - old[~has_data]) > 1e-4)  # Keras drifted
            _set_weight(layer, STATE_NAMES[key], got)
        state = new_state
