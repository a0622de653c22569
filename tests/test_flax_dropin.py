"""jaxnorm.linen / jaxnorm.nnx against the Flax classes they replace, every pair of tests/flax_pairs.py through the
same checks (after tests/test_registry.py).

The seven drop-ins (BatchNorm, LayerNorm, RMSNorm, GroupNorm, InstanceNorm, SpectralNorm, WeightNorm), linen and
nnx, must accept Flax's arguments (signatures), create Flax's variables (paths, variable types, shapes, dtypes,
init values), load Flax's checkpoints and give Flax's outputs, updated variables and gradients to float32
rounding, follow Flax's dtype policy, masks and named-axis statistics, and fail where Flax fails. The intended
deviations are asserted too: a two-pass variance where Flax's default one-pass variance cancels, masked-out
values that never reach the statistics, exact count-weighted statistics across devices, and clear errors
where Flax accepts complex input or repeated axes or fails obscurely. Checks of one drop-in alone (jaxnorm's
BatchNorm options, models built from several drop-ins, training under jit) follow the registry-driven ones.
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

import jaxnorm
import jaxnorm.linen as jln
import jaxnorm.nnx as jnnx
from tests import reference as ref
from tests.flax_pairs import ACCEPTS, BF16, PAIRS
from tests.tolerances import assert_close

TOL = dict(rtol=1e-5, atol=1e-5)
GRAD_TOL = dict(rtol=1e-4, atol=1e-4)
BF16_TOL = dict(rtol=2e-2, atol=5e-2)
BY_NAME = {p.name: p for p in PAIRS}


def _normal(shape, seed=0, loc=0.0, scale=1.0, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(seed).normal(loc, scale, size=shape), dtype)


def _cotangent(shape):
    """The weights of the scalar loss ``sum(sin(y) * w)`` the gradient checks differentiate."""
    return _normal(shape, seed=22)


def _flat(tree) -> dict:
    """``{path: array}`` of a linen variable dict, an nnx ``State`` (of variables or gradients), or a dict."""
    if isinstance(tree, nnx.State):
        return {"/".join(map(str, path)): (v[...] if isinstance(v, nnx.Variable) else v)
                for path, v in nnx.to_flat_state(tree)}
    return {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _named(key: str, name: str) -> bool:
    """Whether a ``_flat`` path names the variable ``name`` (linen ``['batch_stats']['var']``, nnx ``var``)."""
    return key.rstrip("]'").endswith(name) and not key.rstrip("]'")[: -len(name)][-1:].isalnum()


def _close(actual, expected, **tol):
    """The same paths, shapes and dtypes (dicts of arrays, or arrays), values within ``tol``."""
    if isinstance(expected, dict):
        assert sorted(actual) == sorted(expected)
        for key in expected:
            _close(actual[key], expected[key], **tol)
        return
    assert jnp.shape(actual) == jnp.shape(expected) and jnp.result_type(actual) == jnp.result_type(expected)
    np.testing.assert_allclose(np.asarray(actual).astype(np.float64), np.asarray(expected).astype(np.float64),
                               **tol)


class Side:
    """One class of a pair (ours or Flax's) built for an input of ``shape`` with ``kwargs``, and its variables:
    linen's variable dict (made by ``init`` on ``x``) or the nnx module's own state. A call runs the layer as a
    training step (``train=True``) or inference and keeps the updated variables, as Flax code does."""

    def __init__(self, pair, cls, shape, kwargs, seed=0, x=None):
        self.pair, self.cls, self.shape, self.kwargs = pair, cls, tuple(shape), dict(kwargs)
        self.linen = pair.flavour == "linen"
        if self.linen:
            self.module = pair.build(cls, self.shape, self.kwargs)
            x = _normal(self.shape, loc=3.0) if x is None else x
            self.variables = self.module.init(jax.random.key(seed), x, **pair.init_call)
        else:
            self.module = pair.build(cls, self.shape, self.kwargs, nnx.Rngs(seed))

    def tree(self) -> dict:
        return _flat(self.variables if self.linen else nnx.state(self.module))

    def layout(self) -> dict:
        """Path -> (nnx variable type,) shape, dtype: what a checkpoint must agree on."""
        if self.linen:
            return {k: (jnp.shape(v), jnp.result_type(v)) for k, v in self.tree().items()}
        flat = nnx.to_flat_state(nnx.state(self.module))
        types = {"/".join(map(str, path)): type(v).__name__ for path, v in flat}
        return {k: (types[k], jnp.shape(v), jnp.result_type(v)) for k, v in self.tree().items()}

    def state(self) -> dict:
        """The variables a training call updates (linen ``batch_stats``, nnx ``BatchStat``)."""
        if self.linen:
            return _flat(self.variables.get("batch_stats", {}))
        return _flat(nnx.state(self.module, nnx.BatchStat))

    def load(self, other: Side) -> None:
        """Loads the other side's variables: a Flax checkpoint into ours (or back)."""
        if self.linen:
            self.variables = other.variables
        else:
            nnx.update(self.module, nnx.state(other.module))

    def perturb(self, seed=1) -> None:
        """Moves every parameter (not the state) away from its initial value, so that a dropped one shows."""
        bump = lambda v, i: v + 0.3 * _normal(jnp.shape(v), seed + i).astype(jnp.result_type(v))  # noqa: E731
        if self.linen:
            if "params" in self.variables:  # (none with use_scale=use_bias=False)
                leaves, treedef = jax.tree.flatten(self.variables["params"])
                params = jax.tree.unflatten(treedef, [bump(v, i) for i, v in enumerate(leaves)])
                self.variables = {**self.variables, "params": params}
            return
        flat = []
        for i, (path, v) in enumerate(nnx.to_flat_state(nnx.state(self.module))):
            if isinstance(v, nnx.Variable):
                v = v if isinstance(v, nnx.BatchStat) else v.copy(bump(v[...], i))
            else:  # WeightNorm's scales: plain arrays, as in Flax
                v = bump(v, i)
            flat.append((path, v))
        nnx.update(self.module, nnx.from_flat_state(flat))

    def _call_kwargs(self, train, mask, call):
        kwargs = self.pair.call(train) if call is None else dict(call)
        return kwargs if mask is None else {**kwargs, "mask": mask}

    def __call__(self, x, *, train=True, mask=None, call=None):
        kwargs = self._call_kwargs(train, mask, call)
        if not self.linen:
            return self.module(x, **kwargs)
        if not self.pair.state:
            return self.module.apply(self.variables, x, **kwargs)
        y, updates = self.module.apply(self.variables, x, mutable=["batch_stats"], **kwargs)
        self.variables = {**self.variables, **updates}
        return y

    def grads(self, x, train=True):
        """``(gradients of the parameters, gradient of x)`` of ``sum(sin(y) * w)``."""
        kwargs = self.pair.call(train)
        loss = lambda y: jnp.sum(jnp.sin(y.astype(jnp.float32)) * _cotangent(y.shape))  # noqa: E731
        if not self.linen:
            g, gx = nnx.grad(lambda m, x: loss(m(x, **kwargs)), argnums=(0, 1))(self.module, x)
            return _flat(g), gx
        mutable = ["batch_stats"] if self.pair.state else False

        def f(params, x):
            variables = {**self.variables, "params": params} if params else self.variables
            out = self.module.apply(variables, x, mutable=mutable, **kwargs)
            return loss(out[0] if mutable else out)

        g, gx = jax.grad(f, (0, 1))(self.variables.get("params", {}), x)
        return _flat(g), gx

    def vmapped(self, xs, axis_name="batch"):
        """A training call under ``jax.vmap`` over the leading axis of ``xs``, the layer built with
        ``axis_name``: ``(y, updated state)`` per shard."""
        kwargs = self.pair.call(True)
        with_name = {**self.kwargs, "axis_name": axis_name}
        if self.linen:
            module = self.pair.build(self.cls, self.shape, with_name)

            def f(xb):
                if not self.pair.state:
                    return module.apply(self.variables, xb, **kwargs), {}
                y, updates = module.apply(self.variables, xb, mutable=["batch_stats"], **kwargs)
                return y, _flat(updates["batch_stats"])

            return jax.vmap(f, axis_name=axis_name)(xs)
        module = self.pair.build(self.cls, self.shape, with_name, nnx.Rngs(0))
        nnx.update(module, nnx.state(self.module))
        graphdef, state = nnx.split(module)

        def g(st, xb):
            model = nnx.merge(graphdef, st)
            return model(xb, **kwargs), _flat(nnx.state(model, nnx.BatchStat))

        return jax.vmap(g, in_axes=(None, 0), axis_name=axis_name)(state, xs)


def _checkpointed(pair, shape, kwargs, theirs_kwargs=None, x=None):
    """(ours, theirs): Flax's class initialized and perturbed, and ours (built from another seed) loading it."""
    theirs = Side(pair, pair.theirs, shape, {**kwargs, **(theirs_kwargs or {})}, seed=0, x=x)
    theirs.perturb()
    ours = Side(pair, pair.ours, shape, kwargs, seed=1, x=x)
    ours.load(theirs)
    return ours, theirs


def _ids(pairs):
    return [p.name for p in pairs]


def _config_ids(cases):
    return [f"{p.name}-{c.id}" for p, c in cases]


# Differences from Flax in jaxnorm itself that these checks found, by (test, case id): strict xfails, so that
# the test reports when one changes. (nnx.RMSNorm's positional `mask`, found here too, is fixed.)
GAPS = {
    ("test_outputs_match_flax_from_a_flax_checkpoint",
     "linen.BatchNorm-(4, 3)-param_dtype=bfloat16,force_float32_reductions=False"):
        "deliberate: with force_float32_reductions=False and a float32 input, flax.linen.BatchNorm's first "
        "update turns the bfloat16 batch_stats into float32; jaxnorm.linen.BatchNorm keeps them in param_dtype, "
        "so the state's dtype (a jit or lax.scan train loop's carry) stays fixed.",
}


def _cases(test, cases, ids=None):
    """``cases`` as pytest params with their ids, a case in ``GAPS`` marked as a strict xfail."""
    ids = ids or [c.name for c in cases]
    return [pytest.param(*(c if isinstance(c, tuple) else (c,)), id=i,
                         marks=[pytest.mark.xfail(strict=True, reason=GAPS[test, i])] if (test, i) in GAPS else [])
            for c, i in zip(cases, ids, strict=True)]


every_pair = pytest.mark.parametrize("pair", PAIRS, ids=_ids(PAIRS))
CONFIGS = [(p, c) for p in PAIRS for c in p.configs]
CONFIG_IDS = _config_ids(CONFIGS)
FLOAT32_CONFIGS = [(p, c) for p, c in CONFIGS if not c.half]
# Gradients: each pair's base config and those that change the axes the statistics and parameters span (axes,
# groups, the wrapped layer); the others (which parameters exist, initializers, epsilon, momentum, dtypes) change
# the values the forward checks compare, and each took a compile of both backward passes (80 cases: 92 s of CPU).
_STRUCTURAL = {"axis", "reduction_axes", "feature_axes", "num_groups", "group_size", "layer"}
GRADIENT_CONFIGS = [(p, c) for p, c in FLOAT32_CONFIGS if not c.kwargs or _STRUCTURAL & set(c.kwargs)]
DTYPE_CASES = [
    ("bf16", BF16, {}),
    ("bf16-dtype=bf16", BF16, {"dtype": BF16}),
    ("f32-dtype=bf16", jnp.float32, {"dtype": BF16}),
    ("bf16-param_dtype=bf16", BF16, {"param_dtype": BF16}),
    ("bf16-dtype=f32-params=bf16", BF16, {"dtype": jnp.float32, "param_dtype": BF16}),
]
DTYPES = [(p, *case) for p in PAIRS for case in DTYPE_CASES + list(p.dtype_cases)]
DTYPE_IDS = [f"{p.name}-{case}" for p, case, *_ in DTYPES]
MASKED = [p for p in PAIRS if p.mask]
STATEFUL_CONFIGS = [(p, c) for p, c in FLOAT32_CONFIGS if p.state]
NAMED_AXIS = [p for p in PAIRS if p.axis_name]
CENTERED = [p for p in PAIRS if p.centered]
ERRORS = [(p, e) for p in PAIRS for e in p.errors]
# jaxnorm's static statistics option (jaxnorm._src.stats), on every drop-in that computes statistics: after all of
# Flax's arguments and the pair's own extras, default False.
EXTREME_RANGE_LAYERS = ("BatchNorm", "LayerNorm", "RMSNorm", "GroupNorm", "InstanceNorm")
EXTREME_RANGE = [p for p in PAIRS if p.layer in EXTREME_RANGE_LAYERS]


def _extras(pair) -> dict:
    """jaxnorm's options beyond Flax's arguments, in order, with their defaults (``scale_offset``: the
    zero-centred scale of LayerNorm and RMSNorm, tests/test_scale_offset.py)."""
    extras = {**pair.extras, "extreme_range": False} if pair.layer in EXTREME_RANGE_LAYERS else dict(pair.extras)
    return {**extras, "scale_offset": 0.0} if pair.layer in ("LayerNorm", "RMSNorm") else extras


# ---------------------------------------------------------------------------------------------------------
# (a) signatures and documentation (no compilation: every pair in the default tier)


def _params(sig):
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()]


@pytest.mark.own_tiers
@pytest.mark.parametrize("pair", _cases("test_signatures_match_flax", PAIRS))
def test_signatures_match_flax(pair):
    """Flax's arguments, in Flax's order, with Flax's defaults; jaxnorm's extra options (BatchNorm's
    moving-statistics rule, ``extreme_range``) after all of Flax's own, with Flax's behaviour as their defaults."""
    ours, theirs, extras = pair.ours, pair.theirs, _extras(pair)
    if pair.flavour == "linen":
        our_fields = {f.name: f for f in dataclasses.fields(ours)}
        their_fields = dataclasses.fields(theirs)
        missing = [f.name for f in their_fields if f.name not in our_fields]
        assert not missing, f"Flax arguments missing from {ours.__qualname__}: {missing}"
        assert [n for n in our_fields if n not in extras] == [f.name for f in their_fields]  # positional use
        for f in their_fields:
            assert our_fields[f.name].default == f.default, f.name
            if f.default_factory is not dataclasses.MISSING:
                assert our_fields[f.name].default_factory() == f.default_factory(), f.name
        ours_params, their_params = _params(inspect.signature(ours)), _params(inspect.signature(theirs))
        assert [p for p in ours_params if p[0] not in extras] == their_params
        flax_own = [i for i, p in enumerate(ours_params) if p[0] not in (*extras, "parent", "name")]
        assert all(i > max(flax_own) for i, p in enumerate(ours_params) if p[0] in extras)
        assert {p[0]: p[2] for p in ours_params if p[0] in extras} == extras
    else:
        our_init, their_init = inspect.signature(ours.__init__), inspect.signature(theirs.__init__)
        missing = sorted(set(their_init.parameters) - set(our_init.parameters))
        assert not missing, f"Flax arguments missing from {ours.__qualname__}: {missing}"
        ours_params = _params(our_init)
        assert [p for p in ours_params if p[0] not in extras] == _params(their_init)
        if extras:  # keyword-only, after Flax's own
            assert [(p[0], p[2]) for p in ours_params[-len(extras):]] == list(extras.items())
            assert {p[1] for p in ours_params[-len(extras):]} == {inspect.Parameter.KEYWORD_ONLY}
        if hasattr(theirs, "set_view"):
            assert _params(inspect.signature(ours.set_view)) == _params(inspect.signature(theirs.set_view))
    assert _params(inspect.signature(ours.__call__)) == _params(inspect.signature(theirs.__call__))


@pytest.mark.own_tiers
@every_pair
def test_every_drop_in_documents_itself(pair):
    doc = inspect.getdoc(pair.ours)
    assert doc and f"flax.{pair.flavour}" in doc and "Example" in doc and "Raises" in doc


# ---------------------------------------------------------------------------------------------------------
# (b) variable trees and init values, (c) values from a Flax checkpoint, (d) gradients


@every_pair
def test_tabulate_and_summaries_match_flax(pair):
    """Flax's introspection works on a model holding the drop-in as on one holding Flax's class: ``nn.tabulate``
    and ``Module.tabulate`` (linen, training and inference calls), ``nnx.tabulate`` (nnx); the tables are the
    same text (column widths, shapes, dtypes, parameter counts)."""
    x = _normal(pair.shape, loc=1.0)

    def table(cls):
        if pair.flavour == "nnx":
            return nnx.tabulate(pair.build(cls, pair.shape, pair.kwargs, nnx.Rngs(0)), x, **pair.call(True),
                                console_kwargs={"width": 250, "no_color": True})
        module = pair.build(cls, pair.shape, pair.kwargs)
        kw = {"console_kwargs": {"width": 250, "no_color": True}, "mutable": True}
        text = module.tabulate(jax.random.key(0), x, **pair.init_call, **kw)
        assert text == nn.tabulate(module, jax.random.key(0), **kw)(x, **pair.init_call)
        for train in pair.modes:  # a call as a train or eval step makes it, inside a model's summary
            nn.tabulate(module, jax.random.key(0), **kw)(x, **pair.call(train))
        return text

    try:
        want = table(pair.theirs)
    except KeyError:  # flax.nnx.WeightNorm's plain-array scales break nnx.tabulate (flax 0.12); ours mirror them
        assert pair.name == "nnx.WeightNorm"
        with pytest.raises(KeyError):
            table(pair.ours)
        return
    assert table(pair.ours) == want


@pytest.mark.parametrize(("pair", "config"), _cases("test_init_variables_match_flax", CONFIGS, CONFIG_IDS))
def test_init_variables_match_flax(pair, config):
    """The same paths (nnx: and variable types), shapes, dtypes and values: the same initializer keys, and no
    state update at init (linen's init sees data with a nonzero mean)."""
    x = _normal(config.shape, loc=3.0)
    ours, theirs = (Side(pair, cls, config.shape, config.kwargs, seed=7, x=x) for cls in (pair.ours, pair.theirs))
    assert ours.layout() == theirs.layout()
    _close(ours.tree(), theirs.tree(), rtol=0, atol=0)
    for key, value in ours.tree().items():
        for name, want in pair.init_state.items():
            if _named(key, name):
                assert np.all(np.asarray(value) == want), key
    for name in pair.attrs:  # nnx attributes (a disabled scale/bias is None in both)
        a, b = getattr(ours.module, name), getattr(theirs.module, name)
        if b is None or isinstance(b, nnx.Variable):
            assert (a is None) == (b is None), name
        else:
            assert a == b, name


@pytest.mark.parametrize(("pair", "config"),
                         _cases("test_outputs_match_flax_from_a_flax_checkpoint", CONFIGS, CONFIG_IDS))
def test_outputs_match_flax_from_a_flax_checkpoint(pair, config):
    """Flax's variables (parameters moved off their initial values) load into ours; in every mode (BatchNorm:
    training and running averages; SpectralNorm: update_stats True and False) both give the same outputs, in
    the same dtype, and the same updated variables."""
    ours, theirs = _checkpointed(pair, config.shape, config.kwargs)
    tol = BF16_TOL if config.half else TOL
    x = _normal(config.shape, seed=5, loc=0.5, scale=2.0)
    for train in pair.modes:
        y_o, y_t = ours(x, train=train), theirs(x, train=train)
        _close(y_o, y_t, **tol)
        _close(ours.tree(), theirs.tree(), **tol)


@pytest.mark.parametrize(("pair", "config"), GRADIENT_CONFIGS, ids=_config_ids(GRADIENT_CONFIGS))
def test_gradients_match_flax(pair, config):
    """Gradients of a loss of the training output with respect to every parameter and the input (Flax in its
    exact two-pass mode, ``use_fast_variance=False``, so that the two agree to float32 rounding)."""
    ours, theirs = _checkpointed(pair, config.shape, config.kwargs, pair.exact_kwargs)
    x = _normal(config.shape, seed=21, loc=0.3)
    (g_o, gx_o), (g_t, gx_t) = ours.grads(x), theirs.grads(x)
    _close(g_o, g_t, **GRAD_TOL)
    _close(gx_o, gx_t, **GRAD_TOL)
    assert float(jnp.max(jnp.abs(gx_o))) > 1e-2  # a real, nonzero input gradient


# ---------------------------------------------------------------------------------------------------------
# (e) dtype policy


def _warned(side, x, train):
    """``side(x)`` and the set of ``(category, message)`` of the warnings it raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = side(x, train=train)
    return y, {(w.category.__name__, str(w.message)) for w in caught}


@pytest.mark.parametrize(("pair", "case", "x_dtype", "kwargs"), DTYPES, ids=DTYPE_IDS)
def test_dtype_policy_matches_flax(pair, case, x_dtype, kwargs):
    """Half-precision inputs, ``dtype`` and ``param_dtype`` (and a half-precision wrapped layer): the same
    variable dtypes, output dtype and (to bfloat16 rounding) values and updated variables as Flax."""
    x = _normal(pair.shape, seed=2, dtype=x_dtype)
    kw = {**pair.kwargs, **kwargs}
    ours, theirs = (Side(pair, cls, pair.shape, kw, x=x) for cls in (pair.ours, pair.theirs))
    assert ours.layout() == theirs.layout()
    # Flax's linen WeightNorm init stores the normalized kernel, whose norm Flax takes in bf16 and jaxnorm in
    # float32: bf16 tolerance for the init values too.
    _close(ours.tree(), theirs.tree(), **BF16_TOL)
    theirs.perturb()
    ours.load(theirs)
    for train in pair.modes:
        (y_o, w_o), (y_t, w_t) = _warned(ours, x, train), _warned(theirs, x, train)
        assert w_o == w_t  # e.g. JAX's cast warning where flax.nnx writes float32 into a bfloat16 variable
        assert y_o.dtype == y_t.dtype
        _close(y_o, y_t, **BF16_TOL)
        assert ours.layout() == theirs.layout()
        _close(ours.tree(), theirs.tree(), **BF16_TOL)


# ---------------------------------------------------------------------------------------------------------
# (f) masks


@pytest.mark.parametrize("pair", MASKED, ids=_ids(MASKED))
def test_masked_out_nan_matches_flax_on_zeros(pair):
    """NaN at masked-out positions never reaches our statistics: ours on NaN there equals Flax on zeros there,
    at every selected position and in the updated state; and the mask matters."""
    x = _normal(pair.shape, seed=3, loc=0.5)
    mask = np.random.default_rng(4).random(pair.shape) < 0.7
    x_nan, x_zero = jnp.where(mask, x, jnp.nan), jnp.where(mask, x, 0.0)
    ours, theirs = _checkpointed(pair, pair.shape, pair.kwargs)
    y_o, y_t = ours(x_nan, mask=jnp.asarray(mask)), theirs(x_zero, mask=jnp.asarray(mask))
    selected = lambda y: np.where(mask, np.asarray(y, np.float64), 0.0)  # noqa: E731
    assert np.all(np.isfinite(selected(y_t)))  # no statistic without selected entries (Flax: NaN there)
    assert np.all(np.isfinite(selected(y_o)))
    np.testing.assert_allclose(selected(y_o), selected(y_t), **TOL)
    assert all(np.all(np.isfinite(v)) for v in ours.state().values())
    _close(ours.state(), theirs.state(), **TOL)
    # The mask matters: without it the zeros would enter the statistics.
    assert not np.allclose(selected(ours(x_zero)), selected(y_o), **TOL)


@pytest.mark.parametrize("pair", MASKED, ids=_ids(MASKED))
def test_mask_broadcasts_with_numpy_rules_like_flax(pair):
    # x.shape[1:] == x.shape[:-1]: a (4, 4) mask must align with the trailing axes (NumPy), as in Flax.
    shape = (4, 4, 4)
    x = _normal(shape, seed=8)
    mask = jnp.asarray(np.random.default_rng(9).random((4, 4)) < 0.7).at[:, 0].set(True).at[0].set(True)
    ours, theirs = _checkpointed(pair, shape, pair.kwargs)
    _close(ours(x, mask=mask), theirs(x, mask=mask), **TOL)
    _close(ours.state(), theirs.state(), **TOL)


# ---------------------------------------------------------------------------------------------------------
# (g) state updates over training steps


@pytest.mark.parametrize(("pair", "config"), STATEFUL_CONFIGS, ids=_config_ids(STATEFUL_CONFIGS))
def test_state_updates_match_flax_over_steps(pair, config):
    """Three training steps on data whose statistics change: the same outputs and the same variables after
    each (BatchNorm's batch_stats / BatchStat, SpectralNorm's u and sigma, and the kernels flax.nnx writes
    back); then inference gives the same output and leaves the state as it is."""
    ours, theirs = _checkpointed(pair, config.shape, {**config.kwargs, **pair.step_kwargs})
    start = ours.state()
    for step in range(3):
        x = _normal(config.shape, seed=10 + step, loc=0.2 * step, scale=1.0 + step)
        _close(ours(x), theirs(x), **TOL)
        _close(ours.tree(), theirs.tree(), **TOL)
    trained = ours.state()
    assert any(not np.allclose(trained[k], start[k]) for k in start)  # the state really moved
    x = _normal(config.shape, seed=99)
    _close(ours(x, train=False), theirs(x, train=False), **TOL)
    _close(ours.state(), trained, rtol=0, atol=0)
    _close(theirs.state(), trained, **TOL)


# ---------------------------------------------------------------------------------------------------------
# (h) statistics across a named (vmapped) axis


@pytest.mark.parametrize("pair", NAMED_AXIS, ids=_ids(NAMED_AXIS))
def test_axis_name_under_vmap_matches_flax(pair):
    """Four equal shards along a vmapped axis named in ``axis_name``: with equal counts Flax's mean of means is
    exact too, and the outputs and updated state agree."""
    xs = _normal((4, *pair.shape), seed=31, loc=0.5)
    ours, theirs = _checkpointed(pair, pair.shape, pair.kwargs)
    (y_o, s_o), (y_t, s_t) = ours.vmapped(xs), theirs.vmapped(xs)
    _close(y_o, y_t, **TOL)
    _close(s_o, s_t, **TOL)


# ---------------------------------------------------------------------------------------------------------
# (i) the intended deviation: stable variance on data with a large offset


@pytest.mark.parametrize("pair", CENTERED, ids=_ids(CENTERED))
def test_large_offset_is_right_where_flax_cancels(pair):
    """Documented deviation: Flax's default ``E[x^2] - E[x]^2`` loses the variance of float32 ``1e4 + N(0, 1)``
    (0 or 8 instead of ~1); ours is two-pass, so that shifting the data by 1e4 (exactly, in float32) changes
    neither the output nor the updated variance."""
    x = jnp.asarray(1e4 + np.random.default_rng(0).normal(size=pair.shape), jnp.float32)
    x0 = jnp.asarray(np.asarray(x, np.float64) - 1e4, jnp.float32)  # exact: the same data without the offset
    kwargs = {**pair.kwargs, **pair.step_kwargs}

    def run(cls, x):
        side = Side(pair, cls, pair.shape, kwargs)
        return np.asarray(side(x), np.float64), side.state()

    (y_o, s_o), (y_o0, s_o0) = run(pair.ours, x), run(pair.ours, x0)
    (y_t, _), (y_t0, _) = run(pair.theirs, x), run(pair.theirs, x0)
    assert np.all(np.isfinite(y_o))
    np.testing.assert_allclose(y_o, y_o0, atol=1e-2)
    for key in s_o:
        if _named(key, "var"):
            np.testing.assert_allclose(s_o[key], s_o0[key], atol=1e-2)
    assert np.max(np.abs(y_t - y_t0)) > 0.5  # Flax's output moves with the offset


def test_without_offset_flax_fast_and_two_pass_variance_agree_tightly():
    pair, x = BY_NAME["linen.BatchNorm"], _normal((16, 4), seed=12)
    ours, theirs = _checkpointed(pair, (16, 4), {"momentum": 0.5}, {"use_fast_variance": False}, x=x)
    _close(ours(x), theirs(x), rtol=1e-6, atol=1e-6)
    _close(ours.state(), theirs.state(), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# jaxnorm's extreme_range option


def _reference(pair, x, epsilon):
    """The float64 NumPy normalization of a registry pair's default configuration (fresh ``scale`` 1, ``bias``
    0): BatchNorm over the batch axes (training), LayerNorm/RMSNorm over the last axis, GroupNorm over the spatial
    axes and each group's channels, InstanceNorm over the spatial axes."""
    x = np.asarray(x, np.float64)
    if pair.layer == "GroupNorm":
        groups = pair.kwargs["num_groups"]
        xg = x.reshape(*x.shape[:-1], groups, x.shape[-1] // groups)  # (N, H, W, groups, channels per group)
        return _normalized(xg, (1, 2, 4), epsilon).reshape(x.shape)
    axes = {"BatchNorm": (0, 1), "LayerNorm": (-1,), "RMSNorm": (-1,), "InstanceNorm": (1, 2)}[pair.layer]
    return _normalized(x, axes, epsilon, center=pair.layer != "RMSNorm")


def _normalized(x, axes, epsilon, center=True):
    mean = x.mean(axis=axes, keepdims=True) if center else 0.0
    return (x - mean) / np.sqrt(((x - mean) ** 2).mean(axis=axes, keepdims=True) + epsilon)


def test_extreme_range_is_exact_at_1e30_and_changes_no_variable():
    """``extreme_range=True`` on every statistics drop-in (linen and nnx): float32 ``1e30 * N(0, 1)`` (squares
    overflow float32) normalized as the float64 reference, and Flax's variables (a static option, not a
    variable). The default is False, whose outputs the checks above compare with Flax's; a non-bool names it."""
    assert len(EXTREME_RANGE) == 2 * len(EXTREME_RANGE_LAYERS)
    for pair in EXTREME_RANGE:
        x = jnp.asarray(1e30 * np.random.default_rng(3).standard_normal(pair.shape), jnp.float32)
        kwargs = {**pair.kwargs, "epsilon": 1e-3}
        ours = Side(pair, pair.ours, pair.shape, {**kwargs, "extreme_range": True}, x=x)
        assert ours.module.extreme_range is True
        np.testing.assert_allclose(np.asarray(ours(x), np.float64), _reference(pair, x, 1e-3),
                                   rtol=2e-5, atol=2e-6, err_msg=pair.name)
        assert ours.layout() == Side(pair, pair.theirs, pair.shape, kwargs).layout(), pair.name
        assert pair.build(pair.ours, pair.shape, kwargs, nnx.Rngs(0)).extreme_range is False, pair.name
        with pytest.raises(TypeError, match="extreme_range"):
            pair.build(pair.ours, pair.shape, {**kwargs, "extreme_range": "yes"}, nnx.Rngs(0))


# ---------------------------------------------------------------------------------------------------------
# (j) errors


@pytest.mark.parametrize(("pair", "case"), ERRORS, ids=[f"{p.name}-{e.id}" for p, e in ERRORS])
def test_errors_match_flax(pair, case):
    """The same error as Flax where Flax raises a clear one; ours, naming the argument or variable, where Flax
    fails obscurely; and ours where Flax runs on (repeated axes, groups without an axis name)."""
    shape = case.shape or pair.shape
    kwargs = {**pair.kwargs, **case.kwargs}

    def run(cls):
        side = Side(pair, cls, shape, kwargs, x=_normal(shape, seed=1, dtype=case.dtype))
        return side(_normal(case.call_shape or shape, seed=2, dtype=case.dtype), call=case.call)

    with pytest.raises(case.ours[0], match=case.ours[1]):
        run(pair.ours)
    if case.theirs == ACCEPTS:
        run(pair.theirs)
    else:
        with pytest.raises(case.theirs[0], match=case.theirs[1]):
            run(pair.theirs)


# ---------------------------------------------------------------------------------------------------------
# BatchNorm: gradients through the state update, masked gradients, named axes and devices


def test_linen_batchnorm_stats_update_is_differentiable_like_flax():
    # flax.linen does not stop gradients through the running-average update; neither may the drop-in.
    x = _normal((6, 4), seed=23)
    variables = nn.BatchNorm().init(jax.random.key(0), x, use_running_average=False)

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


def test_masked_nan_does_not_reach_gradients_of_the_statistics():
    # Documented improvement over Flax: Flax's gradient of batch_stats is NaN at NaN masked-out positions.
    x = _normal((6, 3), seed=13)
    mask = jnp.ones((6, 3), bool).at[1, 1].set(False).at[4, 2].set(False)
    x_nan = jnp.where(mask, x, jnp.nan)
    variables = nn.BatchNorm().init(jax.random.key(0), x, use_running_average=False)

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


def test_linen_batchnorm_axis_name_under_vmap_equals_the_global_batch():
    x = _normal((4, 6, 3), seed=31, loc=0.5)  # 4 equal shards of 6 examples
    variables = nn.BatchNorm().init(jax.random.key(0), x[0], use_running_average=False)
    module = jln.BatchNorm(use_running_average=False, axis_name="batch", momentum=0.5)
    y, s = jax.vmap(lambda xb: module.apply(variables, xb, mutable=["batch_stats"]), axis_name="batch")(x)
    y_g, s_g = jln.BatchNorm(use_running_average=False, momentum=0.5).apply(
        variables, x.reshape(24, 3), mutable=["batch_stats"]
    )
    np.testing.assert_allclose(y.reshape(24, 3), y_g, **TOL)
    _close(_flat(jax.tree.map(lambda a: a[0], s)), _flat(s_g), **TOL)


def test_linen_layernorm_axis_name_under_vmap_equals_the_unsharded_features():
    x = _normal((2, 5, 4), seed=32, loc=0.5)  # features split in 2 shards of 4
    variables = nn.LayerNorm().init(jax.random.key(0), x[0])
    y = jax.vmap(lambda xb: jln.LayerNorm(axis_name="batch").apply(variables, xb), axis_name="batch")(x)
    unsharded = jln.LayerNorm(use_scale=False, use_bias=False).apply({}, jnp.concatenate(list(x), axis=-1))
    scale, bias = variables["params"]["scale"], variables["params"]["bias"]
    expected = unsharded * jnp.tile(scale, 2)[None] + jnp.tile(bias, 2)[None]
    np.testing.assert_allclose(jnp.concatenate(list(y), -1), expected, **TOL)


def test_linen_rmsnorm_mask_and_axis_name_equal_the_float64_reference():
    x = np.random.default_rng(18).standard_normal((4, 5, 6)).astype(np.float32) * 2 + 0.5
    mask = np.random.default_rng(19).random(x.shape) < 0.7
    module = jln.RMSNorm(reduction_axes=(0, 1), feature_axes=-1, axis_name="rows")
    variables = jln.RMSNorm(reduction_axes=(0, 1)).init(jax.random.key(0), x[:, 0])  # same tree
    got = jax.vmap(lambda xb, mb: module.apply(variables, xb, mask=mb), in_axes=1, out_axes=1,
                   axis_name="rows")(jnp.asarray(x), jnp.asarray(mask))
    # Statistics over each vmapped (4, 6) slice, then merged over the vmapped axis: all of (0, 1, 2).
    assert_close(got, ref.rms_norm(x, (0, 1, 2), None, 1e-6, mask), scale=2)


NDEV = jax.device_count()
MESH = Mesh(np.array(jax.devices()), ("data",))


def _shard_map(f, in_specs, out_specs):
    return jax.jit(jax.shard_map(f, mesh=MESH, in_specs=in_specs, out_specs=out_specs))


def _uneven_mask(ndev, per, features, seed=1):
    """Per-device masks with very different valid counts: one device keeps everything, one keeps nothing."""
    mask = np.random.default_rng(seed).random((ndev, per, features)) < 0.5
    mask[0] = True  # all valid
    mask[-1] = False  # an entirely masked shard
    mask[1, 0] = True  # a shard with at least one valid row per feature
    return mask


def _devices_data(shape, seed):
    return (np.random.default_rng(seed).standard_normal(shape) * 2 + 3.0).astype(np.float32)


def test_linen_batchnorm_under_shard_map_is_exact_where_flax_is_not():
    per, c = 4, 3
    x = _devices_data((NDEV * per, c), seed=11)
    mask = _uneven_mask(NDEV, per, c, seed=12).reshape(NDEV * per, c)
    mask[-per:] = False
    mask[:per] = True

    def run(cls):
        module = cls(use_running_average=False, axis_name="data", momentum=0.5)
        variables = module.init(jax.random.key(0), x[:per])

        def f(x, m):
            y, upd = module.apply(variables, x, mask=m, mutable=["batch_stats"])
            return jax.tree.map(lambda v: v[None], upd["batch_stats"])

        return _shard_map(f, (P("data"), P("data")), P("data"))(x, mask)

    ours, flax_stats = run(jln.BatchNorm), run(nn.BatchNorm)
    want_mean, want_var = ref.moments(x, (0,), mask)
    want = 0.5 * 0.0 + 0.5 * want_mean.squeeze(0)
    assert_close(ours["mean"][0], want)
    assert_close(ours["var"][0], 0.5 * 1.0 + 0.5 * want_var.squeeze(0))
    assert not np.allclose(flax_stats["mean"][0], want, atol=1e-3)  # Flax's mean of per-device means


def test_nnx_batchnorm_under_shard_map_with_unequal_masks_equals_the_global_batch():
    per, c = 4, 3
    x = _devices_data((NDEV * per, c), seed=15)
    mask = _uneven_mask(NDEV, per, c, seed=16).reshape(NDEV * per, c)
    graphdef, state = nnx.split(jnnx.BatchNorm(c, momentum=0.5, axis_name="data", rngs=nnx.Rngs(0)))

    def f(st, xb, mb):
        model = nnx.merge(graphdef, st)
        y = model(xb, mask=mb)
        new = nnx.to_pure_dict(nnx.state(model))
        return y, {k: new[k][None] for k in ("mean", "var")}

    y, stats = _shard_map(f, (P(), P("data"), P("data")), (P("data"), P("data")))(state, x, mask)
    want_mean, want_var = ref.moments(x, (0,), mask)
    for d in range(NDEV):
        assert_close(stats["mean"][d], 0.5 * want_mean.squeeze(0))
        assert_close(stats["var"][d], 0.5 + 0.5 * want_var.squeeze(0))
    assert_close(y, (x - want_mean) / np.sqrt(want_var + 1e-5))


def test_linen_batchnorm_axis_index_groups_merge_within_each_group_exactly():
    per, c = 3, 2
    x = _devices_data((NDEV, per, c), seed=13)
    mask = np.ones(x.shape, bool)
    mask[1, 1:] = False  # device 1 holds one valid row: its group is count-weighted, not a mean of means
    groups = [[0, 1], [2, 3]]
    module = jln.BatchNorm(use_running_average=False, momentum=0.0, axis_name="data", axis_index_groups=groups)
    variables = module.init(jax.random.key(0), x[0])
    new_state = jax.pmap(
        lambda x, m: module.apply(variables, x, mask=m, mutable=["batch_stats"])[1]["batch_stats"],
        axis_name="data")(x, mask)
    for group in groups:
        want_mean, want_var = ref.moments(x[group].reshape(-1, c), (0,), mask[group].reshape(-1, c))
        for d in group:
            assert_close(new_state["mean"][d], want_mean.squeeze(0))
            assert_close(new_state["var"][d], want_var.squeeze(0))


# ---------------------------------------------------------------------------------------------------------
# BatchNorm: jaxnorm's moving-statistics options on the drop-ins, the spec's rule (moving.py)

RULE_OPTIONS = [
    # PyTorch's rule:
    dict(momentum=0.1, momentum_convention="torch", moving_var_estimator="unbiased", count_steps=True),
    dict(momentum=0.9, averaging="cumulative"),
    dict(momentum=0.8, averaging="debiased"),
    dict(momentum=0.7, safe_update=False),
]


@pytest.mark.parametrize("options", RULE_OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_drop_in_batchnorm_options_follow_the_spec_over_steps(options):
    """linen and nnx BatchNorm with the spec's options give the spec's outputs and moving statistics (the step
    counter included) over three steps, one of them with an all-masked feature; their variable trees gain
    ``steps`` only where the rule keeps one."""
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
    counts = spec._rule.keeps_counter
    assert ("steps" in state) == ("steps" in variables["batch_stats"]) == ("steps" in nnx.state(nnx_bn)) == counts
    for x, m in zip(xs, masks, strict=True):
        want, state = spec.apply(params, state, x, training=True, mask=m)
        got, updates = linen_bn.apply(variables, x, use_running_average=False, mask=m, mutable=["batch_stats"])
        variables = {**variables, **updates}
        got_nnx = nnx_bn(x, mask=m)
        for y in (got, got_nnx):
            if m is None:  # with a mask the spec follows Keras's mask rank rules; the drop-ins take NumPy's
                _close(y, want, rtol=1e-5, atol=1e-5)
        for k in ("mean", "var") + (("steps",) if counts else ()):
            np.testing.assert_allclose(variables["batch_stats"][k], state[k], rtol=1e-6, atol=1e-6, err_msg=k)
            np.testing.assert_allclose(getattr(nnx_bn, k)[...], state[k], rtol=1e-6, atol=1e-6, err_msg=k)
    if counts:  # feature 0 skipped step 2: its own counter (counted averages) did not advance, a scalar one did
        per_feature = options.get("averaging", "exponential") != "exponential"
        skipped = per_feature and options.get("safe_update", True)
        np.testing.assert_array_equal(state["steps"], [2, 3, 3] if skipped else 3)


@pytest.mark.parametrize("averaging", ["cumulative", "debiased"])
def test_drop_in_batchnorm_loads_a_scalar_step_counter(averaging):
    """A checkpoint of the counted averages from before per-feature counting (one int32 scalar ``steps``) loads
    into the linen and nnx drop-ins and trains as the spec does from the same state: each feature's counter
    starts at the saved count."""
    c = 3
    spec = jaxnorm.BatchNorm(epsilon=1e-5, momentum=0.8, averaging=averaging)
    x = _normal((8, c), seed=1, loc=2.0, scale=1.5)
    params, state = spec.init(None, x)
    old = {"mean": jnp.asarray([1.0, 2.0, 3.0]), "var": jnp.asarray([2.0, 1.0, 0.5]), "steps": jnp.int32(4)}
    _, want = spec.apply(params, old, x, training=True)
    np.testing.assert_array_equal(want["steps"], [5, 5, 5])
    linen_bn = jln.BatchNorm(momentum=0.8, averaging=averaging)
    variables = linen_bn.init(jax.random.key(0), x, use_running_average=False)
    variables = {**variables, "batch_stats": old}
    _, updates = linen_bn.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
    nnx_bn = jnnx.BatchNorm(c, momentum=0.8, averaging=averaging, rngs=nnx.Rngs(0))
    nnx.update(nnx_bn, nnx.State({k: nnx.BatchStat(v) for k, v in old.items()}))
    nnx_bn(x)
    for k in want:
        np.testing.assert_allclose(updates["batch_stats"][k], want[k], rtol=1e-6, err_msg=k)
        np.testing.assert_allclose(getattr(nnx_bn, k)[...], want[k], rtol=1e-6, err_msg=k)


def test_drop_in_batchnorm_rejects_bad_options_naming_them():
    with pytest.raises(ValueError, match="averaging"):
        jln.BatchNorm(averaging="median")
    with pytest.raises(ValueError, match="momentum_convention"):
        jnnx.BatchNorm(2, momentum_convention="tf", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="debiased"):
        jnnx.BatchNorm(2, momentum=1.0, averaging="debiased", rngs=nnx.Rngs(0))


# ---------------------------------------------------------------------------------------------------------
# Models built from several drop-ins: Flax state interchangeable, train/eval/view, training under jit


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
    _assert_same_state(ours, theirs, rtol=0, atol=0)  # paths, variable types, shapes, dtypes, values

    theirs(x)
    theirs(x + 1.0)  # Flax-trained state
    graphdef_o, _ = nnx.split(ours)
    graphdef_t, state_t = nnx.split(theirs)
    loaded = nnx.merge(graphdef_o, state_t)  # Flax state into our graph
    assert isinstance(loaded.bn, jnnx.BatchNorm)
    back = nnx.merge(graphdef_t, nnx.state(loaded))  # and back into Flax's graph
    assert isinstance(back.bn, nnx.BatchNorm)
    _close(_flat(nnx.state(back)), _flat(state_t), rtol=0, atol=0)

    x2 = _normal((8, 3), seed=42)
    np.testing.assert_allclose(loaded(x2), theirs(x2), **TOL)  # train mode, both update
    _close(_flat(nnx.state(loaded)), _flat(nnx.state(theirs)), **TOL)

    y_train = loaded(x2)
    theirs(x2)
    loaded.eval()
    theirs.eval()
    assert loaded.bn.use_running_average is True
    stats = _flat(nnx.state(loaded, nnx.BatchStat))
    y_eval = loaded(x2)
    np.testing.assert_allclose(y_eval, theirs(x2), **TOL)
    _close(_flat(nnx.state(loaded, nnx.BatchStat)), stats, rtol=0, atol=0)
    assert not np.allclose(y_eval, y_train, atol=1e-3)  # running averages, not batch statistics

    view = nnx.view(loaded, use_running_average=False)
    assert view.bn.use_running_average is False and loaded.bn.use_running_average is True
    np.testing.assert_allclose(view(x2), y_train, **TOL)  # same batch stats again
    loaded.train()
    assert loaded.bn.use_running_average is False


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
    _close(_flat(v_o), _flat(v_t), rtol=0, atol=0)  # same names, shapes, dtypes and values
    trained_t, trained_o = _train_linen(theirs, v_t, xs, ys), _train_linen(ours, v_t, xs, ys)
    _close(_flat(trained_o), _flat(trained_t), **TOL)
    assert not np.allclose(trained_o["params"]["Dense_0"]["kernel"], v_t["params"]["Dense_0"]["kernel"])
    x = _normal((16, 5), seed=70)
    np.testing.assert_allclose(ours.apply(trained_t, x, False), theirs.apply(trained_t, x, False), **TOL)


# ---------------------------------------------------------------------------------------------------------
# SpectralNorm and WeightNorm in models: several wrapped layers, convolutions, SGD steps under jit

REPARAM_TOL = dict(rtol=1e-6, atol=1e-6)  # Flax's arithmetic: bit for bit on CPU, float32 reassociation elsewhere


def _linen_reparam_net(sn_cls, wn_cls):
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train):
            x = sn_cls(nn.Conv(4, (3, 3)), n_steps=2)(x, update_stats=train)
            x = wn_cls(nn.Conv(5, (2, 2)))(x)
            x = nn.Dense(3)(x.reshape(x.shape[0], -1))
            x = sn_cls(nn.Dense(4))(x, update_stats=train)
            return wn_cls(nn.Dense(2), variable_filter=None, feature_axes=None)(x)

    return Net()


@pytest.mark.full  # compile-heavy (three Flax steps); the nnx twin runs in the default tier
def test_linen_reparam_model_variables_outputs_and_gradients_match_flax_over_steps():
    ours = _linen_reparam_net(jln.SpectralNorm, jln.WeightNorm)
    theirs = _linen_reparam_net(nn.SpectralNorm, nn.WeightNorm)
    x = _normal((2, 6, 6, 3), seed=9)
    v_ours, v_theirs = ours.init(jax.random.key(0), x, train=False), theirs.init(jax.random.key(0), x, train=False)
    _close(_flat(v_ours), _flat(v_theirs), **REPARAM_TOL)  # same paths, shapes, dtypes and values
    bs = v_theirs["batch_stats"]
    assert set(bs) == {"SpectralNorm_0", "SpectralNorm_1"}
    assert jax.tree.map(jnp.shape, dict(bs["SpectralNorm_1"])) == {"Dense_1/kernel/u": (1, 4),
                                                                  "Dense_1/kernel/sigma": ()}
    assert set(v_theirs["params"]["WeightNorm_1"]) == {"Dense_2/kernel/scale", "Dense_2/bias/scale"}

    def step(model, variables):
        def loss(params, x):
            y, updates = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
            return jnp.sum(jnp.tanh(y) * jnp.arange(2.0)[None]), (y, updates)

        (value, (y, updates)), grads = jax.value_and_grad(loss, (0, 1), has_aux=True)(variables["params"], x)
        new = {"params": jax.tree.map(lambda p, g: p - 0.05 * g, variables["params"], grads[0]), **updates}
        return y, updates, grads, new

    step_ours, step_theirs = jax.jit(lambda v: step(ours, v)), jax.jit(lambda v: step(theirs, v))
    sigmas = []
    for _ in range(3):  # u and sigma evolve identically
        y_o, up_o, g_o, v_ours = step_ours(v_ours)
        y_t, up_t, g_t, v_theirs = step_theirs(v_theirs)
        _close(y_o, y_t, **REPARAM_TOL)
        _close(_flat(up_o), _flat(up_t), **REPARAM_TOL)
        _close(_flat(g_o), _flat(g_t), rtol=1e-5, atol=1e-6)
        sigmas.append(float(up_t["batch_stats"]["SpectralNorm_0"]["Conv_0/kernel/sigma"]))
    assert len(set(sigmas)) > 1  # the test exercised changing state
    # update_stats=False: same output as Flax, state not touched
    y_o, up_o = ours.apply(v_ours, x, train=False, mutable=["batch_stats"])
    y_t, up_t = theirs.apply(v_theirs, x, train=False, mutable=["batch_stats"])
    _close(y_o, y_t, **REPARAM_TOL)
    _close(_flat(up_o["batch_stats"]), _flat(v_theirs["batch_stats"]), rtol=0, atol=0)


class _NnxReparamNet(nnx.Module):
    def __init__(self, sn_cls, wn_cls, rngs):
        self.sn = sn_cls(nnx.Conv(3, 4, (3, 3), rngs=rngs), n_steps=2, rngs=rngs)
        self.wn = wn_cls(nnx.Conv(4, 5, (2, 2), rngs=rngs), rngs=rngs)
        self.sn2 = sn_cls(nnx.Linear(5, 4, rngs=rngs), rngs=rngs)
        self.wn2 = wn_cls(nnx.Linear(4, 2, rngs=rngs), variable_filter=..., feature_axes=None, rngs=rngs)

    def __call__(self, x, update_stats=None):
        x = self.wn(self.sn(x, update_stats=update_stats)).mean((1, 2))
        return self.wn2(self.sn2(x, update_stats=update_stats))


def _typed(module):
    """Path -> (variable type, value) of an NNX module's state (WeightNorm's scales are plain arrays)."""
    return {"/".join(map(str, path)): (type(v).__name__, v[...] if isinstance(v, nnx.Variable) else v)
            for path, v in nnx.to_flat_state(nnx.state(module))}


def _assert_same_state(ours, theirs, **tol):
    a, b = _typed(ours), _typed(theirs)
    assert {k: v[0] for k, v in a.items()} == {k: v[0] for k, v in b.items()}
    _close({k: v[1] for k, v in a.items()}, {k: v[1] for k, v in b.items()}, **(tol or REPARAM_TOL))


def test_nnx_reparam_model_state_outputs_and_gradients_match_flax_over_steps():
    ours = _NnxReparamNet(jnnx.SpectralNorm, jnnx.WeightNorm, nnx.Rngs(0))
    theirs = _NnxReparamNet(nnx.SpectralNorm, nnx.WeightNorm, nnx.Rngs(0))
    _assert_same_state(ours, theirs)  # same paths, variable types, shapes, dtypes and init values
    assert set(theirs.sn.batch_stats) == {("kernel", "u"), ("kernel", "sigma")}
    x = _normal((2, 6, 6, 3), seed=11)

    def loss(model, x):
        return jnp.sum(jnp.tanh(model(x)) * jnp.arange(2.0)[None])

    grad_step = nnx.jit(nnx.value_and_grad(loss, argnums=(0, 1)))
    sigmas = []
    for _ in range(3):
        l_o, (g_o, gx_o) = grad_step(ours, x)
        l_t, (g_t, gx_t) = grad_step(theirs, x)
        assert float(l_o) == pytest.approx(float(l_t), rel=1e-6)
        _close(_flat(g_o), _flat(g_t), rtol=1e-5, atol=1e-6)
        _close(gx_o, gx_t, rtol=1e-5, atol=1e-6)
        _assert_same_state(ours, theirs)  # u, sigma, and the kernels Flax writes back, evolve identically
        for m, g in ((ours, g_o), (theirs, g_t)):
            nnx.update(m, jax.tree.map(lambda p, d: p - 0.05 * d, nnx.state(m, nnx.Param), g))
        sigmas.append(float(theirs.sn.batch_stats[("kernel", "sigma")][...]))
    assert len(set(sigmas)) > 1
    # eval(): update_stats=False through use_running_average, as Flax
    ours.eval()
    theirs.eval()
    assert ours.sn.use_running_average and theirs.sn.use_running_average
    before = _typed(theirs)["sn/batch_stats/('kernel', 'u')"][1]
    _close(ours(x), theirs(x), **REPARAM_TOL)
    _assert_same_state(ours, theirs)
    _close(_typed(theirs)["sn/batch_stats/('kernel', 'u')"][1], before, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------
# complex input (Flax's layers take it: statistics E[x] and the real E|x - E[x]|^2)


@pytest.mark.parametrize("layer", ["BatchNorm", "LayerNorm", "RMSNorm", "GroupNorm", "InstanceNorm"])
def test_complex_input_matches_flax(layer):
    """complex64 input with ``dtype=complex64``: the same outputs as Flax's linen and nnx classes, and for the
    linen BatchNorm the same moving statistics (a complex mean, a real variance), masked entries holding NaN
    included, and the same inference output from them (tests/linen/linen_test.py's complex BatchNorm test)."""
    key = jax.random.key(0)
    x = jax.random.normal(key, (4, 3, 6), dtype=jnp.complex64)
    kw = {"num_groups": 2} if layer == "GroupNorm" else {}
    linen_kw = {**kw, "use_running_average": False} if layer == "BatchNorm" else kw
    outs = {}
    for side, linen_ns, nnx_ns in (("flax", nn, nnx), ("ours", jln, jnnx)):
        module = getattr(linen_ns, layer)(dtype=jnp.complex64, **linen_kw)
        y, variables = module.init_with_output(key, x)
        with warnings.catch_warnings():  # Flax's nnx BatchNorm writes its complex mean into float32 (a warning)
            if side == "flax":
                warnings.simplefilter("ignore")
            nnx_y = getattr(nnx_ns, layer)(6, dtype=jnp.complex64, rngs=nnx.Rngs(0), **kw)(x)
        outs[side] = [y, nnx_y]
        if layer == "BatchNorm":
            mask = jnp.arange(12).reshape(4, 3, 1) % 3 != 0
            xm = jnp.where(mask, x, jnp.nan)
            y_m, updates = module.apply(variables, xm, mask=mask, mutable=["batch_stats"])
            stats = updates["batch_stats"]
            assert stats["mean"].dtype == jnp.complex64 and stats["var"].dtype == jnp.float32
            y_eval = getattr(linen_ns, layer)(dtype=jnp.complex64, use_running_average=True).apply(
                {**variables, **updates}, x)
            outs[side] += [jnp.where(mask, y_m, 0), stats["mean"], stats["var"], y_eval]
    for got, want in zip(outs["ours"], outs["flax"], strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-6, atol=2e-6)
