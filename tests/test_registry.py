"""Every layer of tests/registry.py through the same checks (after haiku's integration tests).

Each check compares the layer with itself under a transformation (jit, vmap, a dtype, a mask, a config round
trip), so it holds for any correct layer and fails for one that breaks the transformation; the values
themselves are checked against NumPy and the peers in each layer's own test file.
"""

import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from tests.registry import REGISTRY
from tests.tolerances import assert_close

GOLDEN = pathlib.Path(__file__).with_name("golden_trees.json")
# The default tier runs every check on a batch layer and a per-example one; the other entries are `full`.
DEFAULT_TIER = ("BatchNorm", "LayerNorm")
pytestmark = pytest.mark.own_tiers
entries = pytest.mark.parametrize("entry", [
    pytest.param(e, id=e.name, marks=[] if e.name in DEFAULT_TIER else [pytest.mark.full]) for e in REGISTRY])


def _x(entry, seed=0, dtype=np.float32, shape=None):
    return jnp.asarray((np.random.default_rng(seed).standard_normal(entry.shape if shape is None else shape) * 2 + 1).astype(dtype))


def _setup(entry, x=None):
    spec = entry.make()
    x = _x(entry) if x is None else x
    params, state = spec.init(jax.random.key(0), x)
    # Parameters away from their initial values, so that a dropped scale or bias shows.
    params = jax.tree.map(lambda p: p + 0.1 * _x(entry, seed=p.size, shape=p.shape).astype(p.dtype), params)
    if entry.prepare is not None:
        state = entry.prepare(spec, x, params, state)
    return spec, params, state, x


def _apply(entry, spec, params, state, x, **kwargs):
    return entry.apply(spec, params, state, x, **kwargs)


def _tree_spec(tree):
    return {k: [list(v.shape), jnp.dtype(v.dtype).name] for k, v in sorted(tree.items())}


@entries
def test_golden_parameter_and_state_trees(entry):
    spec, params, state, x = _setup(entry)
    got = {"params": _tree_spec(spec.init(jax.random.key(0), x)[0]), "state": _tree_spec(state)}
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    if os.environ.get("JAXNORM_UPDATE_GOLDEN"):
        golden[entry.name] = got
        lines = [f"  {json.dumps(k)}: {json.dumps(v, sort_keys=True)}" for k, v in sorted(golden.items())]
        GOLDEN.write_text("{\n" + ",\n".join(lines) + "\n}\n")
    assert entry.name in golden, f"no golden tree for {entry.name}: run with JAXNORM_UPDATE_GOLDEN=1 once"
    assert got == golden[entry.name]


@entries
def test_jit_equals_eager_and_leaks_no_tracer(entry):
    spec, params, state, x = _setup(entry)
    want = _apply(entry, spec, params, state, x)
    with jax.checking_leaks():
        got = jax.jit(lambda p, s, x: _apply(entry, spec, p, s, x))(params, state, x)
    jax.tree.map(lambda a, b: assert_close(a, b), got, want)
    assert got[0].shape == x.shape and got[0].dtype == x.dtype
    assert jax.tree.structure(got[1]) == jax.tree.structure(state)


@entries
def test_vmap_over_stacked_batches_equals_each_batch(entry):
    spec, params, state, x = _setup(entry)
    x2 = _x(entry, seed=1)
    ys, states = jax.vmap(lambda x: _apply(entry, spec, params, state, x))(jnp.stack([x, x2]))
    for i, xi in enumerate((x, x2)):
        y, s = _apply(entry, spec, params, state, xi)
        assert_close(ys[i], y)
        jax.tree.map(lambda a, b, i=i: assert_close(a[i], b), states, s)


@entries
def test_examples_are_independent_when_the_layer_is_per_example(entry):
    if not entry.per_example:
        pytest.skip("batch statistics couple the examples")
    spec, params, state, x = _setup(entry)
    y = _apply(entry, spec, params, state, x)[0]
    for i in (0, x.shape[0] - 1):
        assert_close(_apply(entry, spec, params, state, x[i : i + 1])[0], y[i : i + 1])


@pytest.mark.full  # a float64 gradient check (compile-heavy): the `full` tier
@entries
def test_gradients_match_finite_differences_in_float64(entry):
    if not entry.finite_differences:
        pytest.skip("the gradient stops on purpose (see the entry)")
    with jax.enable_x64(True):
        spec, params, state, x = _setup(entry, _x(entry, dtype=np.float64))
        params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
        w = _x(entry, seed=2, dtype=np.float64)
        loss = lambda p, x: jnp.vdot(_apply(entry, spec, p, state, x)[0], w)  # noqa: E731
        check_grads(jax.jit(loss), (params, x), order=1, modes=["rev"])
        grads = jax.grad(loss, (0, 1))(params, x)
        assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


@entries
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float64])
def test_dtypes_keep_the_input_dtype_and_agree_with_float32(entry, dtype):
    if not entry.half:
        pytest.skip("the output has a dtype of its own (fp8): tests/test_quantized.py checks half inputs")
    with jax.enable_x64(dtype == jnp.float64):
        spec, params, state, x = _setup(entry)
        want = _apply(entry, spec, params, state, x)[0]
        y, new_state = _apply(entry, spec, params, state, x.astype(dtype))
        assert y.dtype == dtype
        assert_close(y, want, dtype if dtype != jnp.float64 else jnp.float32, scale=4)
        # Statistics and state stay at least float32 whatever the input.
        assert all(jnp.dtype(v.dtype).itemsize >= 4 for v in jax.tree.leaves(new_state))


@entries
def test_mask_all_true_is_no_mask_and_masked_out_nan_stays_out(entry):
    if not entry.mask:
        pytest.skip("the layer takes no mask")
    spec, params, state, x = _setup(entry)
    y, s = _apply(entry, spec, params, state, x)
    full = jnp.ones(x.shape, bool)
    jax.tree.map(lambda a, b: assert_close(a, b), _apply(entry, spec, params, state, x, mask=full), (y, s))
    mask = np.random.default_rng(3).random(x.shape) < 0.7
    mask[(0,) * x.ndim] = True
    clean = _apply(entry, spec, params, state, x, mask=jnp.asarray(mask))
    dirty = _apply(entry, spec, params, state, jnp.where(mask, x, jnp.nan), mask=jnp.asarray(mask))
    assert_close(np.asarray(dirty[0])[mask], np.asarray(clean[0])[mask])
    jax.tree.map(lambda a, b: assert_close(a, b), dirty[1], clean[1])


@entries
def test_config_round_trips_through_json_and_keras(entry):
    spec, params, state, x = _setup(entry)
    config = json.loads(json.dumps(spec.get_config()))
    assert type(spec).from_config(config) == spec
    if type(spec).KERAS is not None and not entry.keras:
        with pytest.raises(ValueError, match=r"no Keras .* equivalent"):
            spec.to_keras_config()
    elif type(spec).KERAS is not None:
        keras_config = json.loads(json.dumps(spec.to_keras_config()))
        back = type(spec).from_config(keras_config)
        jax.tree.map(lambda a, b: assert_close(a, b), _apply(entry, back, params, state, x),
                     _apply(entry, spec, params, state, x))


@entries
def test_bad_input_names_the_argument(entry):
    spec, params, state, x = _setup(entry)
    with pytest.raises(TypeError, match=rf"`{entry.input_name}`"):
        _apply(entry, spec, params, state, x.astype(jnp.int32))
    with pytest.raises(TypeError, match=r"`training`"):
        spec.apply(params, state, x, training="yes")
    for tree_name, tree in (("params", params), ("state", state)):
        for key in tree:
            bad = dict(tree, **{key: jnp.ones(tree[key].shape + (2,), tree[key].dtype)})
            args = (bad, state) if tree_name == "params" else (params, bad)
            with pytest.raises(ValueError, match=rf"`{tree_name}\['{key}'\]`"):
                _apply(entry, spec, *args, x)
        if tree:
            with pytest.raises(ValueError, match=rf"`{tree_name}` has keys"):
                _apply(entry, spec, *((({}, state)) if tree_name == "params" else (params, {})), x)


@entries
def test_first_hour_mistakes_name_the_fix(entry):
    """An int for init's key, ``training`` given positionally, params and state swapped: each gets a message
    with the fix; a spec passed to a jitted function as an ordinary argument works (a pytree without leaves)."""
    spec, params, state, x = _setup(entry)
    with pytest.raises(TypeError, match=r"`key` must be a JAX PRNG key or None, got int 0.*jax\.random\.key\(0\)"):
        spec.init(0, x)
    jax.tree.map(np.testing.assert_array_equal, spec.init(jax.random.PRNGKey(0), x)[0],  # a raw key is a key
                 spec.init(jax.random.PRNGKey(0), x)[0])
    with pytest.raises(TypeError, match=rf"{type(spec).__name__}\.apply takes 3 positional arguments .*`training`"
                                        r".* by keyword only; got 4 positional \(the extra: True\)"):
        spec.apply(params, state, x, True)
    if params and state:
        with pytest.raises(ValueError, match=r"passed in each other's place"):
            spec.apply(state, params, x, training=entry.training)
    step = jax.jit(lambda spec, p, s, x: _apply(entry, spec, p, s, x))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), step(spec, params, state, x),
                 jax.jit(lambda p, s, x: _apply(entry, spec, p, s, x))(params, state, x))
    assert jax.tree.leaves(spec) == [] and jax.tree.structure(spec) == jax.tree.structure(entry.make())


@entries
def test_state_schema_describes_the_state(entry):
    """``state_schema(x)`` is the state tree ``init`` creates and a training ``apply`` returns: the same keys,
    shapes and dtypes, each with its meaning (the one place a layer's state is documented)."""
    spec, params, state, x = _setup(entry)
    schema = spec.state_schema(x)
    assert schema == spec.state_schema(jax.ShapeDtypeStruct(x.shape, x.dtype))
    for tree in (spec.init(jax.random.key(0), x)[1], _apply(entry, spec, params, state, x)[1]):
        assert {k: (tuple(v.shape), jnp.dtype(v.dtype)) for k, v in tree.items()} == {
            k: (e.shape, e.dtype) for k, e in schema.items()}
    assert all(isinstance(e.meaning, str) and e.meaning for e in schema.values())


@entries
def test_param_schema_describes_the_params(entry):
    """``param_schema(x)`` is the params tree ``init`` creates, in its order (the order ``init`` draws the keys),
    and ``apply`` refuses a tree without one of its entries; each entry names its meaning."""
    spec, params, state, x = _setup(entry)
    schema = spec.param_schema(x)
    assert schema == spec.param_schema(jax.ShapeDtypeStruct(x.shape, x.dtype))
    created = spec.init(jax.random.key(0), x)[0]
    assert {k: (tuple(v.shape), jnp.dtype(v.dtype)) for k, v in created.items()} == {
        k: (e.shape, jnp.dtype(e.dtype)) for k, e in schema.items()}
    assert all(isinstance(e.meaning, str) and e.meaning for e in schema.values())
    for name in schema:
        with pytest.raises(ValueError, match=name):
            _apply(entry, spec, {k: v for k, v in params.items() if k != name}, state, x)


@pytest.mark.full
@pytest.mark.parametrize("options", [
    {}, {"renorm": True}, {"averaging": "cumulative"}, {"averaging": "debiased"}, {"count_steps": True},
    {"moving_var_estimator": "unbiased", "momentum_convention": "torch", "momentum": 0.1},
    {"virtual_batch_size": 2}, {"renorm": True, "count_steps": True},
], ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_batch_norm_state_schema_for_every_option(options, dtype):
    import jaxnorm

    spec = jaxnorm.BatchNorm(**options)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 2, 3)), dtype)
    _, state = spec.init(None, x)
    _, new = spec.apply(spec.init(None, x)[0], state, x, training=True)
    schema = spec.state_schema(x)
    for tree in (state, new):
        assert {k: (tuple(v.shape), jnp.dtype(v.dtype)) for k, v in tree.items()} == {
            k: (e.shape, e.dtype) for k, e in schema.items()}
