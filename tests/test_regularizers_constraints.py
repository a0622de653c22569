"""Keras regularizers and constraints as JAX functions: NumPy float64 formulas and Keras 3 itself as references.

The Keras comparisons skip when Keras is not installed; everything else runs without it.
"""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxnorm._src import constraints, regularizers
from jaxnorm._src.frozen import FrozenDict

from .tolerances import assert_close

SHAPES = [(4,), (3, 5)]
DTYPES = [jnp.float32, jnp.bfloat16]
EPS = 1e-7  # keras.config.epsilon()


def _weight(shape, dtype, seed=0):
    w = np.random.default_rng(seed).normal(0.0, 1.5, shape)
    return jnp.asarray(w, dtype)


# ----------------------------------------------------------------------------------------------------------
# NumPy float64 references, written from Keras's documented formulas.


def ref_penalty(w, l1=0.0, l2=0.0):
    w = np.asarray(w, np.float64)
    return l1 * np.abs(w).sum() + l2 * np.square(w).sum()


def ref_project(cls, w, axis=0, max_value=2.0, min_value=0.0, rate=1.0):
    w = np.asarray(w, np.float64)
    if cls == "NonNeg":
        return np.maximum(w, 0.0)
    axis = tuple(axis) if isinstance(axis, list) else axis
    n = np.sqrt(np.square(w).sum(axis=axis, keepdims=True))
    if cls == "UnitNorm":
        return w / (EPS + n)
    if cls == "MaxNorm":
        desired = np.clip(n, 0.0, max_value)
    else:
        desired = rate * np.clip(n, min_value, max_value) + (1 - rate) * n
    return w * desired / (EPS + n)


# (spec, NumPy factors as Keras uses them). L1's factor is float32-rounded in Keras.
REGULARIZERS = [
    ("l1", {"l1": float(np.float32(0.01))}),
    ("L1", {"l1": float(np.float32(0.01))}),
    ("l2", {"l2": 0.01}),
    ("L2", {"l2": 0.01}),
    ("L1L2", {}),
    ("l1l2", {}),
    ({"class_name": "L1", "config": {"l1": 0.3}}, {"l1": float(np.float32(0.3))}),
    ({"class_name": "L2", "config": {"l2": 2}}, {"l2": 2.0}),
    ({"class_name": "L1L2", "config": {"l1": 0.01, "l2": 0.05}}, {"l1": 0.01, "l2": 0.05}),
    ({"class_name": "L1L2", "config": {"l2": 0.1}}, {"l2": 0.1}),
    ({"class_name": "L1L2", "config": {"l1": None, "l2": None}}, {}),
    ({"class_name": "l2", "config": None}, {"l2": 0.01}),
    (
        {"module": "keras.regularizers", "class_name": "L2", "config": {"l2": 0.125}, "registered_name": None},
        {"l2": 0.125},
    ),
]

# (spec, Keras class, the reference's keyword arguments: every non-default value, axis included).
CONSTRAINTS = [
    ("non_neg", "NonNeg", {}),
    ("NonNeg", "NonNeg", {}),
    ("max_norm", "MaxNorm", {}),
    ("unit_norm", "UnitNorm", {}),
    ("min_max_norm", "MinMaxNorm", {"max_value": 1.0}),
    (
        {"class_name": "MaxNorm", "config": {"max_value": 1.5, "axis": -1}},
        "MaxNorm",
        {"max_value": 1.5, "axis": -1},
    ),
    (
        {"class_name": "MaxNorm", "config": {"max_value": 3, "axis": [0, 1]}},
        "MaxNorm",
        {"max_value": 3, "axis": [0, 1]},
    ),
    ({"class_name": "UnitNorm", "config": {"axis": -1}}, "UnitNorm", {"axis": -1}),
    (
        {"class_name": "MinMaxNorm", "config": {"min_value": 1.0, "max_value": 2.5, "rate": 0.5, "axis": 0}},
        "MinMaxNorm",
        {"min_value": 1.0, "max_value": 2.5, "rate": 0.5},
    ),
    (
        {
            "module": "keras.constraints",
            "class_name": "MinMaxNorm",
            "config": {"min_value": 0.5},
            "registered_name": None,
        },
        "MinMaxNorm",
        {"min_value": 0.5, "max_value": 1.0},
    ),
    ({"class_name": "NonNeg"}, "NonNeg", {}),
]


def _fits(kwargs, shape):
    axis = kwargs.get("axis", 0)
    return all(-len(shape) <= a < len(shape) for a in (axis if isinstance(axis, list) else [axis]))


# Every constraint with every shape its axis fits (out-of-range axes: test_constraint_axis_errors).
CONSTRAINT_CASES = [(*case, shape) for case in CONSTRAINTS for shape in SHAPES if _fits(case[2], shape)]


# ----------------------------------------------------------------------------------------------------------
# Regularizers


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec, factors", REGULARIZERS)
def test_regularizer_matches_numpy(spec, factors, dtype, shape):
    w = _weight(shape, dtype)
    penalty = regularizers.resolve(regularizers.check(spec, "kernel_regularizer"), "kernel_regularizer")
    out = penalty(w)
    assert out.shape == () and out.dtype == jnp.float32  # float32 also for bfloat16 weights
    # bf16 values are exact in float64, so the float32 penalty matches to float32 rounding.
    assert_close(out, ref_penalty(w, **factors), jnp.float32)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec, factors", REGULARIZERS)
def test_regularizer_matches_keras(keras, spec, factors, dtype, shape):
    w = _weight(shape, dtype, seed=1)
    theirs = keras.regularizers.get(spec)
    ours = regularizers.resolve(spec, "r")
    # Keras computes in the weight's dtype; compare at that dtype's tolerance.
    assert_close(ours(w), np.asarray(theirs(w), np.float64), dtype)
    assert regularizers.serialize(spec, "r") == keras.regularizers.serialize(theirs)


def test_jit_and_grad():
    w = _weight((3, 5), jnp.bfloat16)
    penalty = regularizers.resolve({"class_name": "L1L2", "config": {"l1": 0.1, "l2": 0.2}}, "r")
    assert_close(jax.jit(penalty)(w), penalty(w))
    grad = jax.grad(penalty)(w.astype(jnp.float32))
    w64 = np.asarray(w, np.float64)
    assert_close(grad, 0.1 * np.sign(w64) + 0.4 * w64)
    for spec in ("non_neg", "max_norm", "unit_norm", {"class_name": "MinMaxNorm", "config": {"rate": 0.3}}):
        project = constraints.resolve(spec, "c")
        out = jax.jit(project)(w)
        assert out.dtype == jnp.bfloat16
        assert_close(out, project(w), jnp.bfloat16)


def test_regularizer_float64_and_zero_terms():
    with jax.enable_x64(True):
        w = jnp.asarray(np.random.default_rng(2).normal(size=(3, 5)), jnp.float64)
        out = regularizers.resolve({"class_name": "L2", "config": {"l2": 0.3}}, "r")(w)
        assert out.dtype == jnp.float64
        assert_close(out, ref_penalty(w, l2=0.3), jnp.float64)
    # As Keras, L1L2 leaves out a zero factor's term, so an inf weight gives no NaN from 0 * inf.
    w = jnp.asarray([1.0, jnp.inf])
    assert regularizers.resolve({"class_name": "L1L2", "config": {"l1": 0.5}}, "r")(w) == jnp.inf
    assert regularizers.resolve("l1_l2", "r")(w) == 0.0


@settings(max_examples=25, deadline=None)
@given(
    l1=st.floats(0.0, 10.0),
    l2=st.floats(0.0, 10.0),
    values=st.lists(st.floats(-100.0, 100.0, width=32), min_size=1, max_size=12),
)
def test_regularizer_l1l2_property(l1, l2, values):
    w = jnp.asarray(values, jnp.float32)
    out = regularizers.resolve({"class_name": "L1L2", "config": {"l1": l1, "l2": l2}}, "r")(w)
    assert_close(out, ref_penalty(w, l1=l1, l2=l2), jnp.float32, scale=10.0)


def test_regularizer_none_and_callable():
    assert regularizers.check(None, "r") is None
    assert regularizers.resolve(None, "r") is None
    assert regularizers.serialize(None, "r") is None

    def fn(w):
        return 0.5 * jnp.sum(w**4)

    assert regularizers.check(fn, "r") is fn
    w = _weight((3, 5), jnp.float32)
    assert_close(regularizers.resolve(fn, "r")(w), 0.5 * np.sum(np.asarray(w, np.float64) ** 4))
    with pytest.raises(TypeError, match=r"`kernel_regularizer`=.* is a callable, which has no JSON form.*'l2'"):
        regularizers.serialize(fn, "kernel_regularizer")
    with pytest.raises(ValueError, match=r"`r`: the regularizer .* returned an array of shape \(3, 5\).*scalar"):
        regularizers.resolve(lambda w: w**2, "r")(w)


def test_regularizer_check_is_hashable_and_round_trips():
    spec = {"class_name": "L1L2", "config": {"l1": 0.01, "l2": 0.02}}
    frozen = regularizers.check(spec, "r")
    assert isinstance(frozen, FrozenDict)
    hash(frozen)
    assert regularizers.serialize(frozen, "r") == regularizers.serialize(spec, "r")
    # The serialized form is itself a valid spec and serializes to itself.
    written = regularizers.serialize(frozen, "r")
    assert regularizers.serialize(written, "r") == written
    assert regularizers.check("l2", "r") == "l2"


def test_regularizer_serialize_float32_l1():
    """Keras stores L1's factor as a float32 tensor, so its config holds the float32 value."""
    out = regularizers.serialize("l1", "r")
    assert out == {
        "module": "keras.regularizers",
        "class_name": "L1",
        "config": {"l1": 0.009999999776482582},
        "registered_name": None,
    }
    assert regularizers.serialize("l1l2", "r")["config"] == {"l1": 0.0, "l2": 0.0}
    # keras.regularizers.get rejects 'l1_l2' (its L1L2 docstring says it gives 0.01 each); jaxnorm accepts it as
    # the class L1L2, whose defaults are 0.0: the same as keras.regularizers.l1_l2().
    assert regularizers.serialize("l1_l2", "r") == regularizers.serialize("L1L2", "r")


@pytest.mark.parametrize(
    "spec, exc, match",
    [
        (
            "orthogonal_regularizer",
            ValueError,
            r"`reg`: the Keras regularizer 'orthogonal_regularizer' is not "
            r"supported by jaxnorm\. Supported Keras regularizers: 'L1', 'L2', 'L1L2'.*callable",
        ),
        (
            {"class_name": "OrthogonalRegularizer", "config": {"factor": 0.01}},
            ValueError,
            r"'OrthogonalRegularizer' is not supported",
        ),
        ("l3", ValueError, r"`reg`: unknown regularizer 'l3'\. Supported Keras regularizers"),
        (
            {"class_name": "L2", "config": {"l2": -0.1}},
            ValueError,
            r"`reg`: L2 factor 'l2' must be a finite float >= 0, "
            r"got -0\.1",
        ),
        ({"class_name": "L1", "config": {"l1": float("nan")}}, ValueError, r"L1 factor 'l1' must be a finite"),
        ({"class_name": "L1L2", "config": {"l1": float("inf")}}, ValueError, r"L1L2 factor 'l1' must be a finite"),
        ({"class_name": "L1", "config": {"l1": 1e39}}, ValueError, r"overflows float32"),
        (
            {"class_name": "L2", "config": {"l2": "0.1"}},
            TypeError,
            r"`reg`: L2 factor 'l2' must be a non-negative "
            r"float, got '0\.1' \(str\)",
        ),
        ({"class_name": "L2", "config": {"l2": True}}, TypeError, r"got True \(bool\)"),
        (
            {"class_name": "L2", "config": {"l1": 0.1}},
            ValueError,
            r"`reg`: L2 takes the config keys \['l2'\], got "
            r"unknown keys \['l1'\]",
        ),
        ({"class_name": "L2", "l2": 0.1}, ValueError, r"unknown keys \['l2'\].*go inside 'config'"),
        ({"config": {"l2": 0.1}}, ValueError, r"needs a 'class_name' key, got keys \['config'\]"),
        ({"class_name": 2}, TypeError, r"'class_name' must be a string, got 2"),
        ({"class_name": "L2", "config": [0.1]}, TypeError, r"'config' must be a dict, got \[0\.1\]"),
        (0.01, TypeError, r"`reg` must be None, a Keras regularizer name .* got 0\.01 \(float\)"),
        (jnp.ones(3), TypeError, r"`reg` must be None"),
    ],
)
def test_regularizer_errors(spec, exc, match):
    for fn in (regularizers.check, regularizers.resolve, regularizers.serialize):
        with pytest.raises(exc, match=match):
            fn(spec, "reg")


def test_regularizer_class_is_rejected(keras):
    with pytest.raises(TypeError, match=r"`reg` must be None.*got <class"):
        regularizers.check(keras.regularizers.L2, "reg")


# ----------------------------------------------------------------------------------------------------------
# Constraints


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec, cls, kwargs, shape", CONSTRAINT_CASES)
def test_constraint_matches_numpy(spec, cls, kwargs, dtype, shape):
    w = _weight(shape, dtype)
    project = constraints.resolve(constraints.check(spec, "kernel_constraint"), "kernel_constraint")
    out = project(w)
    assert out.shape == w.shape and out.dtype == w.dtype
    assert_close(out, ref_project(cls, w, **kwargs), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec, cls, kwargs, shape", CONSTRAINT_CASES)
def test_constraint_matches_keras(keras, spec, cls, kwargs, dtype, shape):
    w = _weight(shape, dtype, seed=3)
    theirs = keras.constraints.get(spec)
    out = constraints.resolve(spec, "c")(w)
    expected = theirs(w)
    assert out.dtype == expected.dtype == w.dtype
    assert_close(out, np.asarray(expected, np.float64), dtype)
    assert constraints.serialize(spec, "c") == keras.constraints.serialize(theirs)


@pytest.mark.parametrize("axis", [None, [], -1, [-2, 1]])
def test_constraint_axis_forms_match_keras(keras, axis):
    w = _weight((3, 5), jnp.float32, seed=4)
    for cls in ("MaxNorm", "UnitNorm", "MinMaxNorm"):
        spec = {"class_name": cls, "config": {"axis": axis}}
        theirs = keras.constraints.get(spec)
        assert_close(constraints.resolve(spec, "c")(w), np.asarray(theirs(w), np.float64))
        assert constraints.serialize(spec, "c") == keras.constraints.serialize(theirs)


def test_constraint_axis_forms_numpy():
    w = _weight((2, 3, 4), jnp.float32, seed=5)
    for axis, ref_axis in [(None, None), ([], ()), ([0, 2], (0, 2)), ((1,), (1,)), (np.int64(-1), -1)]:
        out = constraints.resolve({"class_name": "UnitNorm", "config": {"axis": axis}}, "c")(w)
        assert_close(out, ref_project("UnitNorm", w, axis=ref_axis))
    # A tuple axis is written as a list (JSON has no tuples), a NumPy int as an int.
    config = constraints.serialize({"class_name": "MaxNorm", "config": {"axis": (0, 1)}}, "c")["config"]
    assert config == {"max_value": 2, "axis": [0, 1]}
    config = constraints.serialize({"class_name": "MaxNorm", "config": {"max_value": np.float32(2.5)}}, "c")
    assert config["config"] == {"max_value": 2.5, "axis": 0} and type(config["config"]["max_value"]) is float


def test_constraint_results_satisfy_bounds():
    w = _weight((6, 4), jnp.float32, seed=6) * 3
    norms = lambda v: np.sqrt(np.square(np.asarray(v, np.float64)).sum(axis=0))
    assert np.all(np.asarray(constraints.resolve("non_neg", "c")(w)) >= 0)
    assert np.all(norms(constraints.resolve("max_norm", "c")(w)) <= 2 + 1e-5)
    np.testing.assert_allclose(norms(constraints.resolve("unit_norm", "c")(w)), 1.0, rtol=1e-5)
    spec = {"class_name": "MinMaxNorm", "config": {"min_value": 20.0, "max_value": 30.0}}
    np.testing.assert_allclose(norms(constraints.resolve(spec, "c")(w)), 20.0, rtol=1e-5)
    # A zero column stays zero (epsilon in the denominator, as Keras), no NaN.
    z = constraints.resolve("unit_norm", "c")(jnp.zeros((3, 2)))
    assert np.all(np.asarray(z) == 0)


def test_constraint_none_and_callable():
    assert constraints.check(None, "c") is None
    assert constraints.resolve(None, "c") is None
    assert constraints.serialize(None, "c") is None

    def clip(w):
        return jnp.clip(w, -1.0, 1.0).astype(jnp.float32)

    assert constraints.check(clip, "c") is clip
    w = _weight((3, 5), jnp.bfloat16)
    out = constraints.resolve(clip, "c")(w)
    assert out.dtype == jnp.bfloat16  # cast back to the weight's dtype
    assert_close(out, np.clip(np.asarray(w, np.float64), -1, 1), jnp.bfloat16)
    with pytest.raises(TypeError, match=r"`bias_constraint`=.* is a callable, which has no JSON form.*'non_neg'"):
        constraints.serialize(clip, "bias_constraint")
    with pytest.raises(
        ValueError,
        match=r"`c`: the constraint .* returned an array of shape \(\) for a weight of "
        r"shape \(3, 5\)",
    ):
        constraints.resolve(jnp.sum, "c")(w)


def test_constraint_check_is_hashable():
    spec = {"class_name": "MaxNorm", "config": {"max_value": 3, "axis": [0, 1]}}
    frozen = constraints.check(spec, "c")
    hash(frozen)
    assert constraints.serialize(frozen, "c") == constraints.serialize(spec, "c")
    written = constraints.serialize(frozen, "c")
    assert constraints.serialize(written, "c") == written
    assert constraints.serialize("min_max_norm", "c") == {
        "module": "keras.constraints",
        "class_name": "MinMaxNorm",
        "config": {"min_value": 0.0, "max_value": 1.0, "rate": 1.0, "axis": 0},
        "registered_name": None,
    }


@pytest.mark.parametrize(
    "spec, exc, match",
    [
        (
            "constraint",
            ValueError,
            r"`c`: the Keras constraint 'constraint' is not supported by jaxnorm\. Supported "
            r"Keras constraints: 'NonNeg', 'MaxNorm', 'MinMaxNorm', 'UnitNorm'",
        ),
        ("non_negative", ValueError, r"`c`: unknown constraint 'non_negative'\. Supported Keras constraints"),
        (
            {"class_name": "MaxNorm", "config": {"max_value": -1}},
            ValueError,
            r"`c`: MaxNorm 'max_value' must be a "
            r"finite number >= 0, got -1",
        ),
        ({"class_name": "MaxNorm", "config": {"max_value": float("inf")}}, ValueError, r"must be a finite number"),
        (
            {"class_name": "MaxNorm", "config": {"max_value": None}},
            TypeError,
            r"MaxNorm 'max_value' must be a "
            r"number, got None",
        ),
        (
            {"class_name": "MinMaxNorm", "config": {"min_value": 2.0}},
            ValueError,
            r"MinMaxNorm needs min_value <= "
            r"max_value, got min_value=2\.0 > max_value=1\.0",
        ),
        (
            {"class_name": "MinMaxNorm", "config": {"rate": 1.5}},
            ValueError,
            r"'rate' must be in \[0, 1\].*got 1\.5",
        ),
        (
            {"class_name": "MinMaxNorm", "config": {"rate": -0.5}},
            ValueError,
            r"'rate' must be a finite number >= 0",
        ),
        (
            {"class_name": "UnitNorm", "config": {"axis": 0.5}},
            TypeError,
            r"UnitNorm 'axis' must be an int, a list "
            r"of ints or None.*got 0\.5",
        ),
        ({"class_name": "UnitNorm", "config": {"axis": [0, "1"]}}, TypeError, r"'axis' must be an int"),
        ({"class_name": "UnitNorm", "config": {"axis": True}}, TypeError, r"'axis' must be an int"),
        (
            {"class_name": "NonNeg", "config": {"axis": 0}},
            ValueError,
            r"`c`: NonNeg takes the config keys \[\], "
            r"got unknown keys \['axis'\]",
        ),
        (
            {"class_name": "MaxNorm", "config": {"max": 2}},
            ValueError,
            r"MaxNorm takes the config keys "
            r"\['max_value', 'axis'\], got unknown keys \['max'\]",
        ),
        ({"class_name": "MaxNorm", "axis": 1}, ValueError, r"unknown keys \['axis'\].*go inside 'config'"),
        ({"module": "keras.constraints"}, ValueError, r"needs a 'class_name' key"),
        (["max_norm"], TypeError, r"`c` must be None, a Keras constraint name .* got \['max_norm'\] \(list\)"),
        (2, TypeError, r"`c` must be None"),
    ],
)
def test_constraint_errors(spec, exc, match):
    for fn in (constraints.check, constraints.resolve, constraints.serialize):
        with pytest.raises(exc, match=match):
            fn(spec, "c")


@pytest.mark.parametrize(
    "spec, shape, match",
    [
        (
            "max_norm",
            (),
            r"`kernel_constraint`: MaxNorm axis=0 is out of range for a weight of shape \(\) \(rank 0\)",
        ),
        (
            {"class_name": "UnitNorm", "config": {"axis": 1}},
            (4,),
            r"UnitNorm axis=1 is out of range for a weight "
            r"of shape \(4,\) \(rank 1\); axes must be in \[-1, 0\]",
        ),
        (
            {"class_name": "MaxNorm", "config": {"axis": [0, 2]}},
            (3, 5),
            r"MaxNorm axis=\[0, 2\] is out of range "
            r"for a weight of shape \(3, 5\)",
        ),
        ({"class_name": "MinMaxNorm", "config": {"axis": -3}}, (3, 5), r"MinMaxNorm axis=-3 is out of range"),
        (
            {"class_name": "MaxNorm", "config": {"axis": [1, -1]}},
            (3, 5),
            r"MaxNorm axis=\[1, -1\] names the same "
            r"axis more than once for a weight of shape \(3, 5\)",
        ),
    ],
)
def test_constraint_axis_errors(spec, shape, match):
    project = constraints.resolve(constraints.check(spec, "kernel_constraint"), "kernel_constraint")
    with pytest.raises(ValueError, match=match):
        project(jnp.ones(shape))
    with pytest.raises(ValueError, match=match):
        jax.jit(project)(jnp.ones(shape))  # raised at trace time


def test_constraint_needs_float_weight():
    with pytest.raises(TypeError, match=r"`c`: MaxNorm needs a floating-point weight, got dtype int32"):
        constraints.resolve("max_norm", "c")(jnp.arange(4))
    out = constraints.resolve("non_neg", "c")(jnp.arange(-2, 2))
    assert out.dtype == jnp.int32 and out.tolist() == [0, 0, 0, 1]
