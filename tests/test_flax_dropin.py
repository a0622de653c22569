"""jaxnorm.linen / jaxnorm.nnx against the Flax classes they replace (flax.linen / flax.nnx BatchNorm, LayerNorm).

A drop-in must accept Flax's arguments, create Flax's variables, load Flax's checkpoints and produce Flax's
outputs to float32 rounding. The one intended deviation (stable two-pass variance where Flax's default fast
variance cancels) is asserted in ``test_large_offset_*``.
"""

from __future__ import annotations

import dataclasses
import inspect
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx

import jaxnorm
import jaxnorm.linen as jln
import jaxnorm.nnx as jnnx
from jaxnorm._src import moving

TOL = dict(rtol=1e-5, atol=1e-5)
GRAD_TOL = dict(rtol=1e-4, atol=1e-4)
BF16_TOL = dict(rtol=2e-2, atol=5e-2)

LINEN_PAIRS = [(jln.BatchNorm, nn.BatchNorm), (jln.LayerNorm, nn.LayerNorm)]
NNX_PAIRS = [(jnnx.BatchNorm, nnx.BatchNorm), (jnnx.LayerNorm, nnx.LayerNorm)]
ALL_PAIRS = LINEN_PAIRS + NNX_PAIRS
PAIR_IDS = ["linen.BatchNorm", "linen.LayerNorm", "nnx.BatchNorm", "nnx.LayerNorm"]


def _normal(shape, seed=0, loc=0.0, scale=1.0, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(seed).normal(loc, scale, size=shape), dtype)


def _layout(tree):
    """Shape and dtype of every leaf: what a checkpoint must agree on."""
    return jax.tree.map(lambda a: (tuple(jnp.shape(a)), jnp.asarray(a).dtype), tree)


def _assert_trees_close(actual, expected, **tol):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        assert jnp.shape(a) == jnp.shape(e) and jnp.asarray(a).dtype == jnp.asarray(e).dtype
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(e, np.float32), **tol)


def _nnx_layout(module):
    """Path -> (variable type, shape, dtype) of an NNX module's state."""
    return {
        path: (type(var).__name__, tuple(var[...].shape), var[...].dtype)
        for path, var in nnx.to_flat_state(nnx.state(module))
    }


def _perturb_params(params, seed=1):
    """Random, non-trivial scale/bias values (the same for both implementations)."""
    leaves, treedef = jax.tree.flatten(params)
    new = [leaf + 0.3 * _normal(leaf.shape, seed + i, dtype=leaf.dtype) for i, leaf in enumerate(leaves)]
    return jax.tree.unflatten(treedef, new)


# ---------------------------------------------------------------------------------------------------------
# (a) signatures


def _params(sig):
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()]


def _extras(cls) -> dict:
    """jaxnorm's options beyond Flax's arguments: BatchNorm's moving-statistics rule (moving.DROP_IN_OPTIONS)."""
    return dict(moving.DROP_IN_OPTIONS) if cls.__name__ == "BatchNorm" else {}


@pytest.mark.parametrize(("ours", "theirs"), LINEN_PAIRS, ids=PAIR_IDS[:2])
def test_linen_fields_and_call_signature_match_flax(ours, theirs):
    our_fields = {f.name: f for f in dataclasses.fields(ours)}
    their_fields = dataclasses.fields(theirs)
    missing = [f.name for f in their_fields if f.name not in our_fields]
    assert not missing, f"Flax arguments missing from {ours.__qualname__}: {missing}"
    extras = _extras(ours)
    ours_names = [f.name for f in dataclasses.fields(ours)]
    assert [n for n in ours_names if n not in extras] == [f.name for f in their_fields]  # order: positional use
    for f in their_fields:
        assert our_fields[f.name].default == f.default, f.name
    # The generated constructors take the same positional/keyword arguments with the same defaults; jaxnorm's
    # extra options come after all of Flax's own (before linen's parent and name).
    ours_params, their_params = _params(inspect.signature(ours)), _params(inspect.signature(theirs))
    assert [p for p in ours_params if p[0] not in extras] == their_params
    flax_own = [i for i, p in enumerate(ours_params) if p[0] not in (*extras, "parent", "name")]
    assert all(i > max(flax_own) for i, p in enumerate(ours_params) if p[0] in extras)
    assert {p[0]: p[2] for p in ours_params if p[0] in extras} == {k: extras[k] for k in extras}
    assert _params(inspect.signature(ours.__call__)) == _params(inspect.signature(theirs.__call__))


@pytest.mark.parametrize(("ours", "theirs"), NNX_PAIRS, ids=PAIR_IDS[2:])
def test_nnx_signatures_match_flax(ours, theirs):
    our_init, their_init = inspect.signature(ours.__init__), inspect.signature(theirs.__init__)
    missing = sorted(set(their_init.parameters) - set(our_init.parameters))
    assert not missing, f"Flax arguments missing from {ours.__qualname__}: {missing}"
    extras = _extras(ours)
    ours_params = _params(our_init)
    assert [p for p in ours_params if p[0] not in extras] == _params(their_init)
    if extras:  # keyword-only, after Flax's own, with Flax's behaviour as their defaults
        assert [(p[0], p[2]) for p in ours_params[-len(extras):]] == list(extras.items())
        assert {p[1] for p in ours_params[-len(extras):]} == {inspect.Parameter.KEYWORD_ONLY}
    assert _params(inspect.signature(ours.__call__)) == _params(inspect.signature(theirs.__call__))
    if hasattr(theirs, "set_view"):
        assert _params(inspect.signature(ours.set_view)) == _params(inspect.signature(theirs.set_view))


@pytest.mark.parametrize(("ours", "theirs"), ALL_PAIRS, ids=PAIR_IDS)
def test_every_public_class_documents_itself(ours, theirs):
    doc = inspect.getdoc(ours)
    assert doc and theirs.__module__.split(".")[1] in doc and "Example" in doc and "Raises" in doc


def test_linen_batchnorm_use_running_average_merged_like_flax():
    x = _normal((4, 3))
    variables = nn.BatchNorm().init(jax.random.key(0), x, use_running_average=True)
    for cls in (nn.BatchNorm, jln.BatchNorm):
        with pytest.raises(ValueError, match="use_running_average"):
            cls(use_running_average=True).apply(variables, x, use_running_average=False)
        with pytest.raises(ValueError, match="use_running_average"):
            cls().apply(variables, x)


def test_nnx_batchnorm_requires_use_running_average_like_flax():
    x = _normal((4, 3))
    for cls in (nnx.BatchNorm, jnnx.BatchNorm):
        bn = cls(3, use_running_average=None, rngs=nnx.Rngs(0))
        with pytest.raises(ValueError, match="No `use_running_average` argument was provided"):
            bn(x)
        assert bn(x, use_running_average=True).shape == x.shape


@pytest.mark.parametrize(
    "make",
    [
        lambda: jln.BatchNorm(axis_index_groups=[[0, 1], [2, 3]]),
        lambda: jln.LayerNorm(axis_index_groups=[[0, 1], [2, 3]]),
        lambda: jnnx.BatchNorm(3, axis_index_groups=[[0, 1], [2, 3]], rngs=nnx.Rngs(0)),
        lambda: jnnx.LayerNorm(3, axis_index_groups=[[0, 1], [2, 3]], rngs=nnx.Rngs(0)),
    ],
    ids=PAIR_IDS,
)
def test_axis_index_groups_without_an_axis_name_raises(make):
    with pytest.raises(ValueError, match=r"`axis_index_groups` needs a single `axis_name` to group over"):
        make()


# ---------------------------------------------------------------------------------------------------------
# (b) variable trees

LINEN_BN_CONFIGS = [
    ((2, 5, 3), dict(axis=-1)),
    ((2, 3, 4, 4), dict(axis=1)),
    ((2, 3, 5, 2), dict(axis=(1, 2))),
    ((4, 3), dict(use_bias=False)),
    ((4, 3), dict(use_scale=False)),
    ((4, 3), dict(use_bias=False, use_scale=False)),
    ((4, 3), dict(param_dtype=jnp.bfloat16)),
    ((4, 3), dict(param_dtype=jnp.bfloat16, force_float32_reductions=False)),
    ((4, 3), dict(scale_init=nn.initializers.normal(), bias_init=nn.initializers.uniform())),
]
LINEN_LN_CONFIGS = [
    ((2, 5, 3), dict()),
    ((2, 3, 4, 5), dict(reduction_axes=(1, 2, 3), feature_axes=-1)),
    ((2, 3, 4, 5), dict(reduction_axes=(1, 2), feature_axes=(1, 2))),
    ((2, 3, 4), dict(reduction_axes=-1, feature_axes=1)),
    ((4, 3), dict(use_bias=False)),
    ((4, 3), dict(use_scale=False, use_bias=False)),
    ((4, 3), dict(param_dtype=jnp.bfloat16)),
    ((4, 3), dict(scale_init=nn.initializers.normal(), bias_init=nn.initializers.uniform())),
]


def _stable(text):
    """A test id without memory addresses, so that every pytest-xdist worker collects the same tests."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", text)


def _ids(configs):
    return [_stable(f"{shape}-{kw}") for shape, kw in configs]


@pytest.mark.parametrize(("shape", "kwargs"), LINEN_BN_CONFIGS, ids=_ids(LINEN_BN_CONFIGS))
def test_linen_batchnorm_init_variables_match_flax(shape, kwargs):
    x = _normal(shape, loc=3.0)  # init sees data with a nonzero mean: batch_stats must still stay untouched
    key = jax.random.key(7)
    theirs = nn.BatchNorm(**kwargs).init(key, x, use_running_average=False)
    ours = jln.BatchNorm(**kwargs).init(key, x, use_running_average=False)
    assert _layout(ours) == _layout(theirs)
    _assert_trees_close(ours, theirs, rtol=0, atol=0)  # same values: same initializer keys, no update at init
    assert np.all(np.asarray(ours["batch_stats"]["mean"]) == 0)
    assert np.all(np.asarray(ours["batch_stats"]["var"]) == 1)


@pytest.mark.parametrize(("shape", "kwargs"), LINEN_LN_CONFIGS, ids=_ids(LINEN_LN_CONFIGS))
def test_linen_layernorm_init_variables_match_flax(shape, kwargs):
    x = _normal(shape)
    key = jax.random.key(7)
    theirs = nn.LayerNorm(**kwargs).init(key, x)
    ours = jln.LayerNorm(**kwargs).init(key, x)
    assert _layout(ours) == _layout(theirs)
    _assert_trees_close(ours, theirs, rtol=0, atol=0)


NNX_BN_CONFIGS = [
    dict(num_features=3, axis=-1),
    dict(num_features=4, axis=1),
    dict(num_features=3, use_bias=False),
    dict(num_features=3, use_scale=False),
    dict(num_features=3, use_bias=False, use_scale=False),
    dict(num_features=3, param_dtype=jnp.bfloat16),
    dict(num_features=3, scale_init=nnx.initializers.normal(), bias_init=nnx.initializers.uniform()),
]
NNX_LN_CONFIGS = [
    dict(num_features=3),
    dict(num_features=12, reduction_axes=(1, 2), feature_axes=(1, 2)),
    dict(num_features=3, use_bias=False),
    dict(num_features=3, use_scale=False, use_bias=False),
    dict(num_features=3, param_dtype=jnp.bfloat16),
    dict(num_features=3, scale_init=nnx.initializers.normal(), bias_init=nnx.initializers.uniform()),
]


@pytest.mark.parametrize(
    ("ours_cls", "theirs_cls", "kwargs"),
    [(jnnx.BatchNorm, nnx.BatchNorm, kw) for kw in NNX_BN_CONFIGS]
    + [(jnnx.LayerNorm, nnx.LayerNorm, kw) for kw in NNX_LN_CONFIGS],
    ids=[_stable(f"BatchNorm-{kw}") for kw in NNX_BN_CONFIGS]
    + [_stable(f"LayerNorm-{kw}") for kw in NNX_LN_CONFIGS],
)
def test_nnx_state_matches_flax(ours_cls, theirs_cls, kwargs):
    ours = ours_cls(**kwargs, rngs=nnx.Rngs(3))
    theirs = theirs_cls(**kwargs, rngs=nnx.Rngs(3))
    assert _nnx_layout(ours) == _nnx_layout(theirs)
    _assert_trees_close(nnx.to_pure_dict(nnx.state(ours)), nnx.to_pure_dict(nnx.state(theirs)), rtol=0, atol=0)
    for name in ("scale", "bias"):
        assert (getattr(ours, name) is None) == (getattr(theirs, name) is None)


# ---------------------------------------------------------------------------------------------------------
# (c) Flax checkpoints load into ours and give Flax's outputs and batch_stats


def _linen_checkpoint(theirs, x, **init_kwargs):
    variables = theirs.init(jax.random.key(0), x, **init_kwargs)
    return {**variables, "params": _perturb_params(variables["params"])}


@pytest.mark.parametrize(("shape", "axis"), [((6, 5, 3), -1), ((4, 3, 3, 2), 1)])
def test_linen_batchnorm_flax_checkpoint_train_and_eval(shape, axis):
    theirs, ours = nn.BatchNorm(axis=axis, momentum=0.8), jln.BatchNorm(axis=axis, momentum=0.8)
    v_theirs = _linen_checkpoint(theirs, _normal(shape), use_running_average=False)
    v_ours = v_theirs
    for step in range(3):
        x = _normal(shape, seed=10 + step, loc=0.2 * step, scale=1.0 + step)
        y_t, upd_t = theirs.apply(v_theirs, x, use_running_average=False, mutable=["batch_stats"])
        y_o, upd_o = ours.apply(v_ours, x, use_running_average=False, mutable=["batch_stats"])
        np.testing.assert_allclose(y_o, y_t, **TOL)
        _assert_trees_close(upd_o, upd_t, **TOL)
        v_theirs, v_ours = {**v_theirs, **upd_t}, {**v_ours, **upd_o}
    assert not np.allclose(v_ours["batch_stats"]["var"], 1.0)  # the statistics really moved
    x = _normal(shape, seed=99)
    y_t = theirs.apply(v_theirs, x, use_running_average=True)
    y_o = ours.apply(v_theirs, x, use_running_average=True)
    np.testing.assert_allclose(y_o, y_t, **TOL)


@pytest.mark.parametrize(
    ("shape", "kwargs"),
    [
        ((4, 6), dict()),
        ((2, 3, 4, 5), dict(reduction_axes=(1, 2), feature_axes=-1)),
        ((2, 3, 4, 5), dict(reduction_axes=(1, 2, 3), feature_axes=(1, 2))),
    ],
)
def test_linen_layernorm_flax_checkpoint(shape, kwargs):
    theirs, ours = nn.LayerNorm(**kwargs), jln.LayerNorm(**kwargs)
    variables = _linen_checkpoint(theirs, _normal(shape))
    x = _normal(shape, seed=5, loc=0.5, scale=2.0)
    np.testing.assert_allclose(ours.apply(variables, x), theirs.apply(variables, x), **TOL)


@pytest.mark.parametrize(("shape", "axis"), [((6, 5, 3), -1), ((4, 3, 3, 2), 1)])
def test_nnx_batchnorm_flax_state_train_and_eval(shape, axis):
    features = shape[axis]
    theirs = nnx.BatchNorm(features, axis=axis, momentum=0.8, rngs=nnx.Rngs(0))
    nnx.update(theirs, nnx.State({"scale": _normal((features,), 1) + 1, "bias": _normal((features,), 2)}))
    ours = jnnx.BatchNorm(features, axis=axis, momentum=0.8, rngs=nnx.Rngs(5))
    nnx.update(ours, nnx.state(theirs))  # load the Flax checkpoint
    for step in range(3):
        x = _normal(shape, seed=10 + step, loc=0.2 * step, scale=1.0 + step)
        np.testing.assert_allclose(ours(x), theirs(x), **TOL)
        _assert_trees_close(nnx.to_pure_dict(nnx.state(ours)), nnx.to_pure_dict(nnx.state(theirs)), **TOL)
    assert not np.allclose(ours.var[...], 1.0)
    ours.eval()
    theirs.eval()
    x = _normal(shape, seed=99)
    before = nnx.to_pure_dict(nnx.clone(nnx.state(ours)))
    np.testing.assert_allclose(ours(x), theirs(x), **TOL)
    _assert_trees_close(nnx.to_pure_dict(nnx.state(ours)), before, rtol=0, atol=0)  # eval: no update


@pytest.mark.parametrize(
    ("shape", "kwargs"),
    [
        ((4, 6), dict(num_features=6)),
        ((2, 3, 4, 5), dict(num_features=12, reduction_axes=(1, 2, 3), feature_axes=(1, 2))),
    ],
)
def test_nnx_layernorm_flax_state(shape, kwargs):
    theirs = nnx.LayerNorm(**kwargs, rngs=nnx.Rngs(0))
    n = kwargs["num_features"]
    nnx.update(theirs, nnx.State({"scale": _normal((n,), 1) + 1, "bias": _normal((n,), 2)}))
    ours = jnnx.LayerNorm(**kwargs, rngs=nnx.Rngs(0))
    nnx.update(ours, nnx.state(theirs))
    x = _normal(shape, seed=5, loc=0.5, scale=2.0)
    np.testing.assert_allclose(ours(x), theirs(x), **TOL)


# ---------------------------------------------------------------------------------------------------------
# Runners: (ours, flax) callables with a common signature for the four classes, for the remaining checks.


def _linen_bn_runner(cls, x, **kw):
    module = cls(momentum=0.5, **kw)
    variables = _linen_checkpoint(nn.BatchNorm(momentum=0.5, **kw), x, use_running_average=False)

    def run(inp, mask=None):
        y, upd = module.apply(variables, inp, use_running_average=False, mask=mask, mutable=["batch_stats"])
        return y, upd["batch_stats"]

    return run


def _linen_ln_runner(cls, x, **kw):
    module = cls(**kw)
    variables = _linen_checkpoint(nn.LayerNorm(**kw), x)
    return lambda inp, mask=None: (module.apply(variables, inp, mask=mask), {})


def _nnx_runner(cls, flax_cls, x, **kw):
    if flax_cls is nnx.BatchNorm:
        kw = dict(momentum=0.5, **kw)
    template = flax_cls(x.shape[-1], **kw, rngs=nnx.Rngs(0))
    nnx.update(template, nnx.State(_perturb_params(nnx.to_pure_dict(nnx.state(template, nnx.Param)))))
    state = nnx.state(template)

    def run(inp, mask=None):
        module = cls(x.shape[-1], **kw, rngs=nnx.Rngs(1))
        nnx.update(module, state)
        y = module(inp, mask=mask)
        return y, nnx.to_pure_dict(nnx.state(module, nnx.BatchStat))

    return run


def _runners(pair_id, x, **kw):
    """(ours, theirs) for one of PAIR_IDS; both take (x, mask=None) and return (y, updated batch stats)."""
    if pair_id == "linen.BatchNorm":
        return _linen_bn_runner(jln.BatchNorm, x, **kw), _linen_bn_runner(nn.BatchNorm, x, **kw)
    if pair_id == "linen.LayerNorm":
        return _linen_ln_runner(jln.LayerNorm, x, **kw), _linen_ln_runner(nn.LayerNorm, x, **kw)
    ours_cls, flax_cls = dict(zip(PAIR_IDS, ALL_PAIRS, strict=True))[pair_id]
    return _nnx_runner(ours_cls, flax_cls, x, **kw), _nnx_runner(flax_cls, flax_cls, x, **kw)


# ---------------------------------------------------------------------------------------------------------
# (d) masks


@pytest.mark.parametrize("pair_id", PAIR_IDS)
def test_mask_with_nan_outside_matches_flax_on_zeros(pair_id):
    x = _normal((6, 5), seed=3, loc=0.5)
    rng = np.random.default_rng(4)
    mask = rng.random((6, 5)) < 0.6
    mask[:2] = True  # every row and every column has selected entries
    mask[:, :2] = True
    mask = jnp.asarray(mask)
    x_nan, x_zero = jnp.where(mask, x, jnp.nan), jnp.where(mask, x, 0.0)
    ours, theirs = _runners(pair_id, x)
    y_o, stats_o = ours(x_nan, mask)
    y_t, stats_t = theirs(x_zero, mask)
    y_o_sel, y_t_sel = np.where(mask, y_o, 0.0), np.where(mask, y_t, 0.0)
    assert np.all(np.isfinite(y_o_sel))
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(stats_o))
    np.testing.assert_allclose(y_o_sel, y_t_sel, **TOL)
    _assert_trees_close(stats_o, stats_t, **TOL)
    # The mask matters: without it the zeros would enter the statistics.
    assert not np.allclose(np.where(mask, ours(x_zero)[0], 0.0), y_o_sel, **TOL)


@pytest.mark.parametrize("pair_id", PAIR_IDS)
def test_mask_broadcasts_with_numpy_rules_like_flax(pair_id):
    # x.shape[1:] == x.shape[:-1]: a (4, 4) mask must align with the trailing axes (NumPy), as in Flax.
    x = _normal((4, 4, 4), seed=8)
    mask = jnp.asarray(np.random.default_rng(9).random((4, 4)) < 0.7).at[:, 0].set(True).at[0].set(True)
    ours, theirs = _runners(pair_id, x)
    (y_o, s_o), (y_t, s_t) = ours(x, mask), theirs(x, mask)
    np.testing.assert_allclose(y_o, y_t, **TOL)
    _assert_trees_close(s_o, s_t, **TOL)


def test_masked_nan_does_not_reach_gradients_of_the_statistics():
    # Documented improvement over Flax: Flax's gradient of batch_stats is NaN at NaN masked-out positions.
    x = _normal((6, 3), seed=13)
    mask = jnp.ones((6, 3), bool).at[1, 1].set(False).at[4, 2].set(False)
    x_nan = jnp.where(mask, x, jnp.nan)
    variables = _linen_checkpoint(nn.BatchNorm(), x, use_running_average=False)

    def grad_of_stats(cls):
        def f(inp):
            _, upd = cls().apply(variables, inp, use_running_average=False, mask=mask, mutable=["batch_stats"])
            return jnp.sum(upd["batch_stats"]["var"])

        return np.asarray(jax.grad(f)(x_nan))

    g_o, g_t = grad_of_stats(jln.BatchNorm), grad_of_stats(nn.BatchNorm)
    assert np.all(np.isfinite(g_o)) and np.all(g_o[~np.asarray(mask)] == 0)
    np.testing.assert_allclose(g_o[np.asarray(mask)], g_t[np.asarray(mask)], **GRAD_TOL)


def test_fully_masked_example_gives_finite_output():
    # Documented deviation: an empty selection has mean 0 and variance 0 here; Flax divides 0 by 0 (NaN).
    x = _normal((3, 4), seed=14)
    mask = jnp.ones((3, 4), bool).at[2].set(False)
    variables = jln.LayerNorm().init(jax.random.key(0), x)
    y = jln.LayerNorm().apply(variables, x, mask=mask)
    assert np.all(np.isfinite(y))
    assert np.all(np.isnan(nn.LayerNorm().apply(variables, x, mask=mask)[2]))
    np.testing.assert_allclose(y[:2], nn.LayerNorm().apply(variables, x[:2]), **TOL)


# ---------------------------------------------------------------------------------------------------------
# (e) dtypes


@pytest.mark.parametrize("pair_id", PAIR_IDS)
@pytest.mark.parametrize(
    ("x_dtype", "kwargs"),
    [
        (jnp.bfloat16, dict()),
        (jnp.bfloat16, dict(dtype=jnp.bfloat16)),
        (jnp.float32, dict(dtype=jnp.bfloat16)),
        (jnp.bfloat16, dict(param_dtype=jnp.bfloat16)),
        (jnp.bfloat16, dict(dtype=jnp.float32, param_dtype=jnp.bfloat16)),
    ],
    ids=["bf16", "bf16-dtype=bf16", "f32-dtype=bf16", "bf16-param_dtype=bf16", "bf16-dtype=f32-params=bf16"],
)
def test_output_and_state_dtypes_match_flax(pair_id, x_dtype, kwargs):
    x = _normal((8, 4), seed=2, dtype=x_dtype)
    ours, theirs = _runners(pair_id, x, **kwargs)
    (y_o, s_o), (y_t, s_t) = ours(x), theirs(x)
    assert y_o.dtype == y_t.dtype
    np.testing.assert_allclose(np.asarray(y_o, np.float32), np.asarray(y_t, np.float32), **BF16_TOL)
    assert _layout(s_o) == _layout(s_t)
    _assert_trees_close(s_o, s_t, **BF16_TOL)


def test_bf16_input_gives_float32_output_with_float32_params():
    x = _normal((8, 4), dtype=jnp.bfloat16)
    y = jln.LayerNorm().apply(jln.LayerNorm().init(jax.random.key(0), x), x)
    assert y.dtype == jnp.float32  # Flax's rule: result_type(x, scale, bias), not x.dtype


def test_linen_batchnorm_low_precision_batch_stats_keep_flax_dtype():
    kw = dict(param_dtype=jnp.bfloat16, force_float32_reductions=False)
    x = _normal((8, 4), dtype=jnp.bfloat16)
    ours, theirs = _runners("linen.BatchNorm", x, **kw)
    (_, s_o), (_, s_t) = ours(x), theirs(x)
    assert s_o["var"].dtype == s_t["var"].dtype == jnp.bfloat16
    _assert_trees_close(s_o, s_t, **BF16_TOL)


def test_complex_input_is_rejected_clearly():
    x = jnp.ones((4, 3), jnp.complex64)
    with pytest.raises(TypeError, match="floating"):
        jln.LayerNorm().init(jax.random.key(0), x)


# ---------------------------------------------------------------------------------------------------------
# (f) the intended deviation: stable variance on data with a large offset


def _offset_data(shape, axis):
    z = np.random.default_rng(0).normal(size=shape)
    z = (z - z.mean(axis, keepdims=True)) / z.std(axis, keepdims=True)
    return jnp.asarray(1e4 + z, jnp.float32)


@pytest.mark.parametrize("pair_id", ["linen.BatchNorm", "nnx.BatchNorm"])
def test_large_offset_batchnorm_variance_is_right_where_flax_cancels(pair_id):
    """Documented deviation: Flax's default E[x^2] - E[x]^2 loses the variance of 1e4 + N(0, 1) in float32."""
    x = _offset_data((64, 3), axis=0)
    true_var = np.var(np.asarray(x, np.float64), axis=0)
    ours, theirs = _runners(pair_id, x)
    (y_o, s_o), (_, s_t) = ours(x), theirs(x)
    ours_batch_var = (np.asarray(s_o["var"]) - 0.5 * 1.0) / 0.5  # momentum 0.5 from var = 1
    theirs_batch_var = (np.asarray(s_t["var"]) - 0.5 * 1.0) / 0.5
    np.testing.assert_allclose(ours_batch_var, true_var, atol=1e-2)
    assert np.all(np.abs(theirs_batch_var - true_var) > 0.5)  # Flax: 0 or 8, not ~1
    assert np.all(np.isfinite(y_o)) and np.all(np.abs(y_o) < 10)


@pytest.mark.parametrize("pair_id", ["linen.LayerNorm", "nnx.LayerNorm"])
def test_large_offset_layernorm_is_right_where_flax_cancels(pair_id):
    x = _offset_data((4, 64), axis=1)
    module_o = jln.LayerNorm() if pair_id.startswith("linen") else jnnx.LayerNorm(64, rngs=nnx.Rngs(0))
    module_t = nn.LayerNorm() if pair_id.startswith("linen") else nnx.LayerNorm(64, rngs=nnx.Rngs(0))
    if pair_id.startswith("linen"):
        variables = nn.LayerNorm().init(jax.random.key(0), x)
        y_o, y_t = module_o.apply(variables, x), module_t.apply(variables, x)
    else:
        y_o, y_t = module_o(x), module_t(x)
    np.testing.assert_allclose(np.var(np.asarray(y_o, np.float64), axis=1), 1.0, atol=1e-2)
    assert np.all(np.abs(np.var(np.asarray(y_t, np.float64), axis=1) - 1.0) > 0.5)


def test_without_offset_flax_fast_and_two_pass_variance_agree_tightly():
    x = _normal((16, 4), seed=12)
    ours, theirs = _runners("linen.BatchNorm", x, use_fast_variance=False)
    (y_o, s_o), (y_t, s_t) = ours(x), theirs(x)
    np.testing.assert_allclose(y_o, y_t, rtol=1e-6, atol=1e-6)
    _assert_trees_close(s_o, s_t, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# (g) gradients


@pytest.mark.parametrize(("ours_cls", "theirs_cls"), LINEN_PAIRS, ids=PAIR_IDS[:2])
def test_linen_gradients_match_flax(ours_cls, theirs_cls):
    x = _normal((6, 4), seed=21, loc=0.3)
    w = _normal((6, 4), seed=22)
    train = dict(use_running_average=False) if theirs_cls is nn.BatchNorm else {}
    theirs, ours = theirs_cls(use_fast_variance=False), ours_cls()
    variables = _linen_checkpoint(theirs, x, **train)
    mutable = ["batch_stats"] if train else False

    def loss(module, params, inp):
        out = module.apply({**variables, "params": params}, inp, mutable=mutable, **train)
        y = out[0] if mutable else out
        return jnp.sum(jnp.sin(y) * w)

    g_t = jax.grad(lambda p, i: loss(theirs, p, i), argnums=(0, 1))(variables["params"], x)
    g_o = jax.grad(lambda p, i: loss(ours, p, i), argnums=(0, 1))(variables["params"], x)
    _assert_trees_close(g_o, g_t, **GRAD_TOL)
    assert float(jnp.max(jnp.abs(g_o[1]))) > 1e-2  # a real, nonzero input gradient


@pytest.mark.parametrize(("ours_cls", "theirs_cls"), NNX_PAIRS, ids=PAIR_IDS[2:])
def test_nnx_gradients_match_flax(ours_cls, theirs_cls):
    x = _normal((6, 4), seed=21, loc=0.3)
    w = _normal((6, 4), seed=22)
    theirs = theirs_cls(4, use_fast_variance=False, rngs=nnx.Rngs(0))
    nnx.update(theirs, nnx.State(_perturb_params(nnx.to_pure_dict(nnx.state(theirs, nnx.Param)))))
    ours = ours_cls(4, rngs=nnx.Rngs(1))
    nnx.update(ours, nnx.state(theirs))

    def grads(model):
        return nnx.grad(lambda m, inp: jnp.sum(jnp.sin(m(inp)) * w), argnums=(0, 1))(model, x)

    g_o, g_t = grads(ours), grads(theirs)
    _assert_trees_close(nnx.to_pure_dict(g_o[0]), nnx.to_pure_dict(g_t[0]), **GRAD_TOL)
    np.testing.assert_allclose(g_o[1], g_t[1], **GRAD_TOL)
    assert float(jnp.max(jnp.abs(g_o[1]))) > 1e-2


def test_linen_batchnorm_stats_update_is_differentiable_like_flax():
    # flax.linen does not stop gradients through the running-average update; neither may the drop-in.
    x = _normal((6, 4), seed=23)
    variables = _linen_checkpoint(nn.BatchNorm(), x, use_running_average=False)

    def grad_of_new_mean(cls):
        def f(inp):
            _, upd = cls().apply(variables, inp, use_running_average=False, mutable=["batch_stats"])
            return jnp.sum(upd["batch_stats"]["mean"] + upd["batch_stats"]["var"])

        return jax.grad(f)(x)

    g_o, g_t = grad_of_new_mean(jln.BatchNorm), grad_of_new_mean(nn.BatchNorm)
    np.testing.assert_allclose(g_o, g_t, **GRAD_TOL)
    assert float(jnp.max(jnp.abs(g_t))) > 1e-4


def test_nnx_batchnorm_stats_update_is_under_stop_gradient_like_flax():
    x = _normal((6, 4), seed=24)

    def grad_of_new_mean(cls):
        def f(model, inp):
            model(inp)
            return jnp.sum(model.mean[...] + model.var[...]) + 0.0 * jnp.sum(inp)

        return nnx.grad(f, argnums=1)(cls(4, rngs=nnx.Rngs(0)), x)

    g_o, g_t = grad_of_new_mean(jnnx.BatchNorm), grad_of_new_mean(nnx.BatchNorm)
    np.testing.assert_allclose(g_o, g_t, rtol=0, atol=0)
    assert np.all(np.asarray(g_o) == 0)


# ---------------------------------------------------------------------------------------------------------
# (h) axis_name across a named (vmapped) axis


def test_linen_batchnorm_axis_name_under_vmap_matches_flax_and_global_batch():
    x = _normal((4, 6, 3), seed=31, loc=0.5)  # 4 equal shards of 6 examples
    variables = _linen_checkpoint(nn.BatchNorm(), x[0], use_running_average=False)

    def sharded(cls):
        module = cls(use_running_average=False, axis_name="batch", momentum=0.5)
        f = lambda xb: module.apply(variables, xb, mutable=["batch_stats"])
        return jax.vmap(f, axis_name="batch")(x)

    (y_o, s_o), (y_t, s_t) = sharded(jln.BatchNorm), sharded(nn.BatchNorm)
    np.testing.assert_allclose(y_o, y_t, **TOL)
    _assert_trees_close(s_o, s_t, **TOL)
    # ... and equal to one BatchNorm over the whole (24, 3) batch.
    y_g, s_g = jln.BatchNorm(use_running_average=False, momentum=0.5).apply(
        variables, x.reshape(24, 3), mutable=["batch_stats"]
    )
    np.testing.assert_allclose(y_o.reshape(24, 3), y_g, **TOL)
    _assert_trees_close(jax.tree.map(lambda a: a[0], s_o), s_g, **TOL)


def test_linen_layernorm_axis_name_under_vmap_matches_flax():
    x = _normal((2, 5, 4), seed=32, loc=0.5)  # features split in 2 shards of 4
    variables = _linen_checkpoint(nn.LayerNorm(), x[0])

    def sharded(cls):
        return jax.vmap(lambda xb: cls(axis_name="batch").apply(variables, xb), axis_name="batch")(x)

    y_o, y_t = sharded(jln.LayerNorm), sharded(nn.LayerNorm)
    np.testing.assert_allclose(y_o, y_t, **TOL)
    unsharded = jln.LayerNorm(use_scale=False, use_bias=False).apply({}, jnp.concatenate(list(x), axis=-1))
    scale = variables["params"]["scale"]
    bias = variables["params"]["bias"]
    expected = unsharded * jnp.tile(scale, 2)[None] + jnp.tile(bias, 2)[None]
    np.testing.assert_allclose(jnp.concatenate(list(y_o), -1), expected, **TOL)


@pytest.mark.parametrize(("ours_cls", "theirs_cls"), NNX_PAIRS, ids=PAIR_IDS[2:])
def test_nnx_axis_name_under_vmap_matches_flax(ours_cls, theirs_cls):
    x = _normal((4, 6, 3), seed=33, loc=0.5)

    def sharded(cls):
        graphdef, state = nnx.split(cls(3, axis_name="batch", rngs=nnx.Rngs(0)))

        def f(st, xb):
            model = nnx.merge(graphdef, st)
            return model(xb), nnx.to_pure_dict(nnx.state(model))

        return jax.vmap(f, in_axes=(None, 0), axis_name="batch")(state, x)

    (y_o, s_o), (y_t, s_t) = sharded(ours_cls), sharded(theirs_cls)
    np.testing.assert_allclose(y_o, y_t, **TOL)
    _assert_trees_close(s_o, s_t, **TOL)


# ---------------------------------------------------------------------------------------------------------
# (i) NNX models: state interchangeable with Flax's, train/eval/view


class _NnxNet(nnx.Module):
    def __init__(self, bn_cls, ln_cls, *, rngs):
        self.linear = nnx.Linear(3, 4, rngs=rngs)
        self.bn = bn_cls(4, momentum=0.5, rngs=rngs)
        self.ln = ln_cls(4, rngs=rngs)

    def __call__(self, x):
        return self.ln(nnx.relu(self.bn(self.linear(x))))


def test_nnx_model_state_interchangeable_and_eval_switches_to_running_averages():
    x = _normal((8, 3), seed=41, loc=0.5)
    ours = _NnxNet(jnnx.BatchNorm, jnnx.LayerNorm, rngs=nnx.Rngs(0))
    theirs = _NnxNet(nnx.BatchNorm, nnx.LayerNorm, rngs=nnx.Rngs(0))
    assert _nnx_layout(ours) == _nnx_layout(theirs)
    _assert_trees_close(nnx.to_pure_dict(nnx.state(ours)), nnx.to_pure_dict(nnx.state(theirs)), rtol=0, atol=0)

    theirs(x)
    theirs(x + 1.0)  # Flax-trained state
    graphdef_o, _ = nnx.split(ours)
    graphdef_t, state_t = nnx.split(theirs)
    loaded = nnx.merge(graphdef_o, state_t)  # Flax state into our graph
    assert isinstance(loaded.bn, jnnx.BatchNorm)
    back = nnx.merge(graphdef_t, nnx.state(loaded))  # and back into Flax's graph
    assert isinstance(back.bn, nnx.BatchNorm)
    _assert_trees_close(nnx.to_pure_dict(nnx.state(back)), nnx.to_pure_dict(state_t), rtol=0, atol=0)

    x2 = _normal((8, 3), seed=42)
    np.testing.assert_allclose(loaded(x2), theirs(x2), **TOL)  # train mode, both update
    _assert_trees_close(nnx.to_pure_dict(nnx.state(loaded)), nnx.to_pure_dict(nnx.state(theirs)), **TOL)

    y_train = loaded(x2)
    theirs(x2)
    loaded.eval()
    theirs.eval()
    assert loaded.bn.use_running_average is True
    stats = nnx.to_pure_dict(nnx.clone(nnx.state(loaded, nnx.BatchStat)))
    y_eval = loaded(x2)
    np.testing.assert_allclose(y_eval, theirs(x2), **TOL)
    _assert_trees_close(nnx.to_pure_dict(nnx.state(loaded, nnx.BatchStat)), stats, rtol=0, atol=0)
    assert not np.allclose(y_eval, y_train, atol=1e-3)  # running averages, not batch statistics

    view = nnx.view(loaded, use_running_average=False)
    assert view.bn.use_running_average is False and loaded.bn.use_running_average is True
    np.testing.assert_allclose(view(x2), y_train, **TOL)  # same batch stats again
    loaded.train()
    assert loaded.bn.use_running_average is False


# ---------------------------------------------------------------------------------------------------------
# (j) a Linen model trained under jit with optax: same params and batch_stats as with Flax's classes


class _LinenNet(nn.Module):
    bn: type = nn.BatchNorm
    ln: type = nn.LayerNorm

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Dense(8)(x)
        x = self.bn(use_running_average=not train, momentum=0.9)(x)
        x = nn.Dense(4)(nn.relu(x))
        return self.ln()(x)


def _train_linen(model, variables, xs, ys):
    tx = optax.sgd(0.1)

    @jax.jit
    def step(params, batch_stats, opt_state, x, y):
        def loss_fn(p):
            out, upd = model.apply({"params": p, "batch_stats": batch_stats}, x, True, mutable=["batch_stats"])
            return jnp.mean((out - y) ** 2), upd["batch_stats"]

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_stats, opt_state, loss

    params, batch_stats = variables["params"], variables["batch_stats"]
    opt_state = tx.init(params)
    for x, y in zip(xs, ys, strict=True):
        params, batch_stats, opt_state, _ = step(params, batch_stats, opt_state, x, y)
    return {"params": params, "batch_stats": batch_stats}


def test_linen_model_trained_under_jit_matches_flax():
    xs = [_normal((16, 5), seed=50 + i, loc=0.5) for i in range(2)]
    ys = [_normal((16, 4), seed=60 + i) for i in range(2)]
    theirs, ours = _LinenNet(), _LinenNet(bn=jln.BatchNorm, ln=jln.LayerNorm)
    v_t = theirs.init(jax.random.key(0), xs[0], False)
    v_o = ours.init(jax.random.key(0), xs[0], False)
    _assert_trees_close(v_o, v_t, rtol=0, atol=0)  # same names, shapes, dtypes and values
    trained_t, trained_o = _train_linen(theirs, v_t, xs, ys), _train_linen(ours, v_t, xs, ys)
    _assert_trees_close(trained_o, trained_t, **TOL)
    assert not np.allclose(trained_o["params"]["Dense_0"]["kernel"], v_t["params"]["Dense_0"]["kernel"])
    x = _normal((16, 5), seed=70)
    np.testing.assert_allclose(ours.apply(trained_t, x, False), theirs.apply(trained_t, x, False), **TOL)


# ---------------------------------------------------------------------------------------------------------
# jaxnorm's moving-statistics options on the drop-ins: the spec's rule (moving.py), checked against the spec

RULE_OPTIONS = [
    dict(momentum=0.1, momentum_convention="torch", moving_var="unbiased", count_steps=True),  # PyTorch's
    dict(momentum=0.9, averaging="cumulative"),
    dict(momentum=0.8, averaging="debiased"),
    dict(momentum=0.7, safe_update=False),
]


@pytest.mark.parametrize("options", RULE_OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_drop_in_batchnorm_options_follow_the_spec_over_steps(options):
    """linen and nnx BatchNorm with the spec's options give the spec's outputs and moving statistics (count
    included) over three steps, one of them with an all-masked feature; their variable trees gain `count`
    only where the rule keeps one."""
    c = 3
    spec = jaxnorm.BatchNorm(epsilon=1e-5, **options)
    extra = {k: v for k, v in options.items() if k != "momentum"}
    linen_bn = jln.BatchNorm(momentum=options["momentum"], **extra)
    nnx_bn = jnnx.BatchNorm(c, momentum=options["momentum"], rngs=nnx.Rngs(0), **extra)
    xs = [_normal((8, c), seed=s, loc=2.0 + s, scale=1.5) for s in range(3)]
    masks = [None, np.ones((8, c), bool), None]
    masks[1][:, 0] = False  # feature 0 has no valid element in step 2

    params, state = spec.init(None, xs[0])
    variables = linen_bn.init(jax.random.key(0), xs[0], use_running_average=False)
    counts = spec._rule.counts_steps
    assert ("count" in state) == ("count" in variables["batch_stats"]) == ("count" in nnx.state(nnx_bn)) == counts
    for x, m in zip(xs, masks, strict=True):
        want, state = spec.apply(params, state, x, training=True, mask=m)
        got, updates = linen_bn.apply(variables, x, use_running_average=False, mask=m, mutable=["batch_stats"])
        variables = {**variables, **updates}
        got_nnx = nnx_bn(x, mask=m)
        for y in (got, got_nnx):
            if m is None:  # with a mask the spec follows Keras's mask rank rules; the drop-ins take NumPy's
                _assert_trees_close(y, want, rtol=1e-5, atol=1e-5)
        for k in ("mean", "var") + (("count",) if counts else ()):
            np.testing.assert_allclose(variables["batch_stats"][k], state[k], rtol=1e-6, atol=1e-6, err_msg=k)
            np.testing.assert_allclose(getattr(nnx_bn, k)[...], state[k], rtol=1e-6, atol=1e-6, err_msg=k)
    if options.get("safe_update", True):  # feature 0 skipped step 2 (and the counter still advanced)
        assert state["count"] == 3 if counts else True


def test_drop_in_batchnorm_rejects_bad_options_naming_them():
    with pytest.raises(ValueError, match="averaging"):
        jln.BatchNorm(averaging="median")
    with pytest.raises(ValueError, match="momentum_convention"):
        jnnx.BatchNorm(2, momentum_convention="tf", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="debiased"):
        jnnx.BatchNorm(2, momentum=1.0, averaging="debiased", rngs=nnx.Rngs(0))
