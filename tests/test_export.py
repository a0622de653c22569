"""Every layer's programs export: ``jax.export`` of the forward, the gradient of a loss (a training step, with the
updated moving statistics for BatchNorm-like layers), ``jax.jvp``, ``jax.vmap`` and, for layers that take an
``axis_name``, the forward under ``jax.vmap(..., axis_name='batch')``; serialized, deserialized and called, each
gives what calling the function directly gives (jitted: the same program, so the same values).

The layers come from the existing registries: the specs of tests/registry.py, the linen and nnx drop-ins of
tests/flax_pairs.py, the equinox drop-ins of tests/test_equinox_dropin.py (when equinox is installed). The
public ops have no registry: ``OPS`` below, and ``NOT_APPLICABLE`` for the names of ``jaxnorm.__all__`` that are
no array program; a completeness test fails for a public op or class that is in neither (and for a class of
``jaxnorm.linen``/``nnx``/``equinox`` that no registry entry exercises).

Tiers: each family's first layer (every transform of it) runs in the default tier, the other layers in ``full``.
The exported signature is the flat list of array leaves (``nnx.State`` and equinox modules are pytree nodes
that ``jax.export`` serializes only once registered with ``register_pytree_node_serialization``); the function
inside rebuilds the trees, as a user's exported train step over ``jax.tree.leaves`` would.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxnorm
import jaxnorm.linen as jln
import jaxnorm.nnx as jnnx
from tests.flax_pairs import PAIRS, UNPEERED
from tests.registry import REGISTRY

try:  # equinox is a conformance dependency (pyproject's `conformance` extra): its cases skip without it
    import equinox as eqx
except ImportError:  # pragma: no cover - depends on the installation
    eqx = None
if eqx is not None:
    import jaxnorm.equinox as jeqx
    from tests.test_equinox_dropin import BATCHED
    from tests.test_equinox_dropin import CASES, UNPEERED as EQX_UNPEERED
    EQX_CASES = CASES + EQX_UNPEERED
else:  # pragma: no cover
    jeqx, BATCHED, EQX_CASES = None, None, []

NAMED = "batch"
TRANSFORMS = ("forward", "grad", "jvp", "vmap", "axis_name")
RTOL = 1e-6


def _normal(shape, seed=0, loc=0.0, scale=1.0, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(seed).normal(loc, scale, size=shape), dtype)


def _inexact(a) -> bool:
    return jnp.issubdtype(jnp.result_type(a), jnp.inexact)


def _like(tree, seed):
    """Random values in the shape and dtype of every floating leaf of ``tree`` (tangents, perturbations)."""
    leaves, treedef = jax.tree.flatten(tree)
    return jax.tree.unflatten(treedef, [_normal(jnp.shape(v), seed + i, dtype=jnp.result_type(v)) if _inexact(v)
                                        else v for i, v in enumerate(leaves)])


# ------------------------------------------------------------------------------------------------- cases


@dataclasses.dataclass(frozen=True)
class Case:
    """One layer as a training step would call it: ``apply(params, state, x) -> (y, new_state)``.

    ``params``: what the gradient is taken of (with ``x``); ``state``: the rest of the variables (moving
    statistics, power-iteration vectors), updated by the call; ``named``: ``apply`` of the layer built or called
    with ``axis_name='batch'`` (None where the layer takes no axis name); ``moves_state``: the call updates the
    state (the exported forward must then return other values than it was given)."""

    apply: Callable[..., Any]
    params: Any
    state: Any
    x: jax.Array
    named: Callable[..., Any] | None = None
    moves_state: bool = False  # a training call updates ``state`` (moving statistics, power iteration)


# The public ops (no registry exists for them): name -> (call(params, state, x, **axis_name), params, state, x).
# ``call`` takes ``axis_name`` exactly when the op does (checked against the signatures below).
_X = _normal((4, 8), 0, loc=1.0, scale=2.0)
_IMG = _normal((2, 4, 4, 8), 1, loc=1.0, scale=2.0)
_C = {name: 1.0 + 0.3 * _normal((8,), seed) for seed, name in enumerate(("scale", "bias", "offset"), 10)}
_REG = {"norm": jaxnorm.BatchNorm(scale_regularizer="l2",
                                  bias_regularizer={"class_name": "L1", "config": {"l1": 0.1}})}
_CON = {"norm": jaxnorm.BatchNorm(scale_constraint="non_neg", bias_constraint="unit_norm")}

OPS: dict[str, tuple[Callable[..., Any], dict, dict, jax.Array]] = {
    "layer_norm": (lambda p, s, x, **kw: (jaxnorm.layer_norm(x, p["scale"], p["bias"], **kw), s),
                   {"scale": _C["scale"], "bias": _C["bias"]}, {}, _X),
    "rms_norm": (lambda p, s, x, **kw: (jaxnorm.rms_norm(x, p["scale"], **kw), s), {"scale": _C["scale"]}, {}, _X),
    "layer_norm_fp8": (lambda p, s, x, **kw: (jaxnorm.layer_norm_fp8(x, p["scale"], p["bias"], out_scale=32.0, **kw), s),
                       {"scale": _C["scale"], "bias": _C["bias"]}, {}, _X),
    "rms_norm_fp8": (lambda p, s, x, **kw: (jaxnorm.rms_norm_fp8(x, p["scale"], out_scale=32.0, **kw), s),
                     {"scale": _C["scale"]}, {}, _X),
    "adaptive_norm": (lambda p, s, x, **kw: (jaxnorm.adaptive_norm(x, p["shift"], p["scale"], **kw), s),
                      {"shift": _C["bias"][None], "scale": _C["offset"][None]}, {}, _X),
    "gated_rms_norm": (lambda p, s, x, **kw: (jaxnorm.gated_rms_norm(x, 1.0 - x, p["scale"], norm_before_gate=False,
                                                                     group_size=4, **kw), s),
                       {"scale": _C["scale"]}, {}, _X),
    # add & norm: a residual stream from x itself (cos x), so that the gradient reaches x through both inputs
    "add_layer_norm": (lambda p, s, x, **kw: (jaxnorm.add_layer_norm(x, jnp.cos(x), p["scale"], p["bias"], **kw), s),
                       {"scale": _C["scale"], "bias": _C["bias"]}, {}, _X),
    "add_rms_norm": (lambda p, s, x, **kw: (jaxnorm.add_rms_norm(x, jnp.cos(x), p["scale"], residual_in_float32=True,
                                                                 **kw), s), {"scale": _C["scale"]}, {}, _X),
    "group_norm": (lambda p, s, x, **kw: (jaxnorm.group_norm(x, p["scale"], p["bias"], num_groups=2, **kw), s),
                   {"scale": _C["scale"], "bias": _C["bias"]}, {}, _IMG),
    "instance_norm": (lambda p, s, x, **kw: (jaxnorm.instance_norm(x, p["scale"], p["bias"], **kw), s),
                      {"scale": _C["scale"], "bias": _C["bias"]}, {}, _IMG),
    "moments": (lambda p, s, x, **kw: (jaxnorm.moments(x, (0,), **kw), s), {}, {}, _X),
    "normalize_batch_in_training": (
        lambda p, s, x, **kw: (jaxnorm.normalize_batch_in_training(x, p["scale"], p["offset"], (0,), **kw), s),
        {"scale": _C["scale"], "offset": _C["offset"]}, {}, _X),
    "batch_normalization": (
        lambda p, s, x: (jaxnorm.batch_normalization(x, p["mean"], p["variance"], p["offset"], p["scale"]), s),
        {"mean": _normal((8,), 20), "variance": 1.0 + _normal((8,), 21) ** 2, "offset": _C["offset"],
         "scale": _C["scale"]}, {}, _X),
    "unit_norm": (lambda p, s, x: (jaxnorm.unit_norm(x), s), {}, {}, _X),
    "dyt": (lambda p, s, x: (jaxnorm.dyt(x, p["alpha"], p["scale"], p["bias"]), s),
            {"alpha": jnp.float32(0.7), "scale": _C["scale"], "bias": _C["bias"]}, {}, _X),
    "derf": (lambda p, s, x: (jaxnorm.derf(x, p["alpha"], p["shift"], p["scale"], p["bias"]), s),
             {"alpha": jnp.float32(0.7), "shift": jnp.float32(0.2), "scale": _C["scale"], "bias": _C["bias"]}, {},
             _X),
    "spectral_normalize": (  # the power-iteration vector u is the state a training step carries
        lambda p, s, x: (lambda w, u, sigma: ((w, sigma), {"u": u}))(
            *jaxnorm.spectral_normalize(x, s["u"], n_steps=2)),
        {}, {"u": _normal((1, 8), 30)}, _X),
    "weight_normalize": (lambda p, s, x: (jaxnorm.weight_normalize(x, p["scale"]), s), {"scale": _C["scale"]},
                         {}, _X),
    "regularization_loss": (  # over a model's params: x stands for one layer's scale
        lambda p, s, x: (jaxnorm.regularization_loss(_REG, {"norm": {"scale": x, "bias": p["bias"]}}), s),
        {"bias": _C["bias"]}, {}, _C["scale"] - 1.0),
    "apply_constraints": (
        lambda p, s, x: (jaxnorm.apply_constraints(_CON, {"norm": {"scale": x, "bias": p["bias"]}}), s),
        {"bias": _C["bias"]}, {}, _C["scale"] - 1.0),
}

# Names of jaxnorm.__all__ that are no array program to export, and why.
NOT_APPLICABLE = {
    "trainable_mask": "builds an Optax mask of Python bools from the layer specs (no array computation)",
    "decay_mask": "builds an Optax mask of Python bools from the layer specs (no array computation)",
    "constraints_transform": "returns an optax.GradientTransformation (a pair of Python functions); its update "
                             "is optax.apply_updates then jaxnorm.apply_constraints, exported in OPS",
}


def _named_op(name: str) -> bool:
    return "axis_name" in inspect.signature(getattr(jaxnorm, name)).parameters


def _op_case(name: str) -> Case:
    call, params, state, x = OPS[name]
    named = (lambda p, s, x: call(p, s, x, axis_name=NAMED)) if _named_op(name) else None
    return Case(call, params, state, x, named, moves_state=bool(state))


def _spec_named(spec) -> bool:
    """Whether the spec takes ``axis_name`` (a field: BatchNorm)."""
    return "axis_name" in {f.name for f in dataclasses.fields(spec)}


def _spec_case(entry) -> Case:
    spec = entry.make()
    x = _normal(entry.shape, 0, loc=1.0, scale=2.0)
    params, state = spec.init(jax.random.key(0), x)
    params = jax.tree.map(lambda p, d: p + 0.1 * d.astype(p.dtype), params, _like(params, 1))
    if entry.prepare is not None:
        state = entry.prepare(spec, x, params, state)

    def apply(spec):  # add & norm and the gated norm take a residual or a gate made from x (entry.inputs)
        return lambda p, s, x: spec.apply(p, s, x, training=entry.training,
                                          **({} if entry.inputs is None else entry.inputs(x)))

    named = apply(dataclasses.replace(spec, axis_name=NAMED)) if _spec_named(spec) else None
    # (Normalization's adapted state is constant; BatchNorm and SpectralNorm in training move theirs.)
    return Case(apply(spec), params, state, x, named, moves_state=bool(entry.training and state))


def _takes_axis_name(cls) -> bool:
    return "axis_name" in inspect.signature(cls.__init__).parameters


def _linen_case(pair) -> Case:
    module = pair.build(pair.ours, pair.shape, pair.kwargs)
    x = _normal(pair.shape, 0, loc=1.0, scale=2.0)
    variables = module.init(jax.random.key(0), x, **pair.init_call)
    params = variables.get("params", {})
    params = jax.tree.map(lambda p, d: p + 0.1 * d.astype(p.dtype), params, _like(params, 1))
    state = {k: v for k, v in variables.items() if k != "params"}
    call = pair.call(True)

    def apply(module):
        def f(p, s, x):
            variables = {"params": p, **s} if p else dict(s)
            if not s:
                return module.apply(variables, x, **call), {}
            return module.apply(variables, x, mutable=list(s), **call)

        return f

    named = None
    if _takes_axis_name(pair.ours):
        named = apply(pair.build(pair.ours, pair.shape, {**pair.kwargs, "axis_name": NAMED}))
    return Case(apply(module), params, state, x, named, moves_state=pair.state)


def _nnx_case(pair) -> Case:
    """The module split into its moving state (nnx.BatchStat) and the rest (the parameters, and WeightNorm's
    plain-array scales), merged inside a pure function: the nnx train step under ``jax.jit``."""
    module = pair.build(pair.ours, pair.shape, pair.kwargs, nnx.Rngs(0))
    graphdef, state, params = nnx.split(module, nnx.BatchStat, ...)
    params = jax.tree.map(lambda p, d: p + 0.1 * d.astype(p.dtype), params, _like(params, 1))
    x = _normal(pair.shape, 0, loc=1.0, scale=2.0)
    call = pair.call(True)

    def apply(graphdef):
        def f(p, s, x):
            model = nnx.merge(graphdef, s, p, copy=True)  # fresh Variables at this trace's level
            y = model(x, **call)
            return y, nnx.state(model, nnx.BatchStat)

        return f

    named = None
    if _takes_axis_name(pair.ours):
        named_graphdef = nnx.split(
            pair.build(pair.ours, pair.shape, {**pair.kwargs, "axis_name": NAMED}, nnx.Rngs(0)), nnx.BatchStat, ...
        )[0]
        named = apply(named_graphdef)
    return Case(apply(graphdef), params, state, x, named, moves_state=pair.state)


def _eqx_case(case) -> Case:
    """equinox's train step: the model partitioned into its floating arrays and the rest, BatchNorm vmapped
    over the batch with ``axis_name='batch'`` as equinox's docs call it (``BATCHED``), the State threaded."""
    model, state = case.make(jeqx)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    params = jax.tree.map(lambda p, d: p + 0.1 * d.astype(p.dtype), params, _like(params, 1))
    x = _normal(case.x_shape, 0, loc=1.0, scale=2.0)

    def apply(p, s, x):
        m = eqx.combine(p, static)
        f = jax.vmap(m, **BATCHED) if case.batched else m
        return f(x, s, **case.call) if case.stateful else (f(x, **case.call), s)

    return Case(apply, params, state, x, moves_state=case.stateful)


# ------------------------------------------------------------------------------------------------- transforms


def _loss(y) -> jax.Array:
    """``sum(sin(y) * w)`` over every floating output, ``w`` fixed and different per element."""
    total = jnp.zeros((), jnp.float32)
    for leaf in jax.tree.leaves(y):
        if _inexact(leaf):
            w = jnp.asarray(np.cos(np.arange(leaf.size) + 0.5).reshape(leaf.shape), jnp.float32)
            total = total + jnp.sum(jnp.sin(leaf.astype(jnp.float32)) * w)
    return total


def _train_step(apply):
    """The gradient a training step takes (of params and x), with the loss and the updated state."""

    def step(params, state, x):
        def loss(p, x):
            y, new_state = apply(p, state, x)
            return _loss(y), new_state

        (value, new_state), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x)
        return value, new_state, grads

    return step


def _stack(x):
    return jnp.stack([x, _normal(x.shape, 7, loc=-0.5, scale=1.5, dtype=x.dtype)])


def _program(case: Case, transform: str) -> tuple[Callable[..., Any], tuple]:
    """``(fn, args)``: the function to export for ``transform`` of the layer, and its arguments."""
    p, s, x = case.params, case.state, case.x
    if transform == "forward":
        return case.apply, (p, s, x)
    if transform == "grad":
        return _train_step(case.apply), (p, s, x)
    if transform == "jvp":
        def jvp(p, s, x, tp, tx):
            # Of every floating output (y and the updated moving statistics; integer counters have no tangent).
            f = lambda p, x: [v for v in jax.tree.leaves(case.apply(p, s, x)) if _inexact(v)]  # noqa: E731
            return jax.jvp(f, (p, x), (tp, tx))

        return jvp, (p, s, x, _like(p, 40), _like(x, 50))
    if transform == "vmap":
        return jax.vmap(case.apply, in_axes=(None, None, 0)), (p, s, _stack(x))
    if transform == "axis_name":
        return jax.vmap(case.named, in_axes=(None, None, 0), axis_name=NAMED), (p, s, _stack(x))
    raise ValueError(transform)


def _round_trip(fn, args, platforms=None, **serialize):
    """``jax.export`` of ``jax.jit(fn)`` over the flat array leaves of ``args``, serialized, deserialized and
    called: the same leaves (shapes, dtypes, values to ``RTOL``) as ``fn`` called directly (jitted). Returns
    ``(exported, deserialized, its outputs)``."""
    leaves, treedef = jax.tree.flatten(args)

    def flat(*leaves):
        return jax.tree.leaves(fn(*jax.tree.unflatten(treedef, leaves)))

    exported = jax.export.export(jax.jit(flat), **({} if platforms is None else {"platforms": platforms}))(*leaves)
    blob = exported.serialize(**serialize)
    assert isinstance(blob, bytearray | bytes) and len(blob) > 0
    back = jax.export.deserialize(blob)
    got = back.call(*leaves)
    want = jax.jit(flat)(*leaves)
    out_tree = jax.tree.structure(jax.eval_shape(fn, *args))
    assert len(got) == len(want) == out_tree.num_leaves
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert (g.shape, g.dtype) == (w.shape, w.dtype), i
        if _inexact(w):
            np.testing.assert_allclose(np.asarray(g, np.float64), np.asarray(w, np.float64), rtol=RTOL, atol=0,
                                       err_msg=f"output leaf {i}")
        else:
            np.testing.assert_array_equal(np.asarray(g), np.asarray(w), err_msg=f"output leaf {i}")
    return exported, back, jax.tree.unflatten(out_tree, got)


# ------------------------------------------------------------------------------------------------- parametrization

# (family, layer, transform) -> reason: exports that fail because of jaxnorm, expected to fail until fixed.
KNOWN_FAILURES: dict[tuple[str, str, str], str] = {}


def _params(family: str, layers: list[tuple[str, bool]]) -> list:
    """One case per (layer, transform). The default tier runs every layer's train step (``grad``: the loss, the
    updated state and the gradients, forward and backward in one exported program) and every transform of the
    family's first layer; the other transforms are in ``full`` (this module assigns its tiers: ``own_tiers``)."""
    out = []
    for i, (layer, named) in enumerate(layers):
        for transform in TRANSFORMS:
            if transform == "axis_name" and not named:
                continue
            marks = [pytest.mark.full] if i and transform != "grad" else []
            if (family, layer, transform) in KNOWN_FAILURES:
                marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_FAILURES[family, layer, transform]))
            out.append(pytest.param(layer, transform, marks=marks, id=f"{layer}-{transform}"))
    return out


def _check(case: Case, transform: str) -> None:
    fn, args = _program(case, transform)
    out = _round_trip(fn, args)[2]
    if transform == "forward" and case.moves_state:  # the exported training step returns the updated state
        old, new = jax.tree.leaves(case.state), jax.tree.leaves(out[1])
        assert len(old) == len(new)
        assert any(_inexact(a) and not np.allclose(a, b) for a, b in zip(old, new, strict=True)), "state unchanged"


_OP_ORDER = ["layer_norm", *sorted(set(OPS) - {"layer_norm"})]  # layer_norm is the default tier's op
_LINEN = {p.layer: p for p in PAIRS + UNPEERED if p.flavour == "linen"}
_NNX = {p.layer: p for p in PAIRS + UNPEERED if p.flavour == "nnx"}
_SPECS = {e.name: e for e in REGISTRY}
_EQX = {c.name: c for c in EQX_CASES}


own_tiers = pytest.mark.own_tiers


@own_tiers
@pytest.mark.parametrize("layer, transform", _params("ops", [(n, _named_op(n)) for n in _OP_ORDER]))
def test_op_exports_and_round_trips(layer, transform):
    _check(_op_case(layer), transform)


@own_tiers
@pytest.mark.parametrize("layer, transform", _params(
    "specs", [(e.name, _spec_named(e.make())) for e in REGISTRY]))
def test_spec_exports_and_round_trips(layer, transform):
    _check(_spec_case(_SPECS[layer]), transform)


@own_tiers
@pytest.mark.parametrize("layer, transform", _params(
    "linen", [(name, _takes_axis_name(p.ours)) for name, p in _LINEN.items()]))
def test_linen_dropin_exports_and_round_trips(layer, transform):
    _check(_linen_case(_LINEN[layer]), transform)


@own_tiers
@pytest.mark.parametrize("layer, transform", _params(
    "nnx", [(name, _takes_axis_name(p.ours)) for name, p in _NNX.items()]))
def test_nnx_dropin_exports_and_round_trips(layer, transform):
    _check(_nnx_case(_NNX[layer]), transform)


_NO_EQX = pytest.mark.skip(reason="equinox not installed (pip install -e '.[conformance]')")


@own_tiers
@pytest.mark.parametrize("layer, transform", _params("equinox", [(c.name, False) for c in EQX_CASES]) or [
    pytest.param("equinox", "forward", marks=_NO_EQX)])
def test_equinox_dropin_exports_and_round_trips(layer, transform):
    # equinox's BatchNorm always runs under jax.vmap(..., axis_name='batch') (its forward here): no separate case.
    _check(_eqx_case(_EQX[layer]), transform)


# ------------------------------------------------------------------------------------------------- completeness


def test_every_public_op_and_layer_is_exported_or_excused():
    """A public name that is neither exported above nor in ``NOT_APPLICABLE`` (with a reason) fails here, as does
    a stale entry; every class that takes an ``axis_name`` has its named-axis export."""
    public = set(jaxnorm.__all__)
    classes = {n for n in public if inspect.isclass(getattr(jaxnorm, n))}
    specs = {type(e.make()).__name__ for e in REGISTRY}
    assert not (set(OPS) | set(NOT_APPLICABLE)) - public, "stale names in OPS / NOT_APPLICABLE"
    assert not set(OPS) & set(NOT_APPLICABLE)
    assert not classes - specs, f"spec classes missing from tests/registry.py: {sorted(classes - specs)}"
    missing = public - classes - set(OPS) - set(NOT_APPLICABLE)
    assert not missing, f"public ops neither exported in OPS nor listed in NOT_APPLICABLE: {sorted(missing)}"
    assert all(NOT_APPLICABLE.values())
    # axis_name: the ops whose `call` forwards it (**kw) are exactly those that take it, and each such op, spec
    # class and drop-in class has its case under a named vmap (the parametrizations above read the signatures).
    for name in OPS:
        assert _named_op(name) == ("kw" in inspect.signature(OPS[name][0]).parameters), name
    assert {n for n in OPS if _named_op(n)} >= {"layer_norm", "rms_norm", "group_norm", "instance_norm", "moments",
                                                 "normalize_batch_in_training"}
    named_specs = {type(e.make()) for e in REGISTRY if _spec_named(e.make())}
    assert named_specs == {getattr(jaxnorm, n) for n in classes if _spec_named(getattr(jaxnorm, n))}
    assert jaxnorm.BatchNorm in named_specs
    for module, pairs in ((jln, _LINEN), (jnnx, _NNX)):
        public_classes = {getattr(module, n) for n in module.__all__}
        assert {p.ours for p in pairs.values()} == public_classes, module.__name__
        assert _takes_axis_name(module.BatchNorm), module.__name__
    if eqx is not None:
        built = {type(c.make(jeqx)[0]) for c in EQX_CASES}
        assert built == {getattr(jeqx, n) for n in jeqx.__all__}


# ------------------------------------------------------------------------------------------------- program text

_CALLBACK = re.compile(r"callback", re.IGNORECASE)


def _custom_call_targets(text: str) -> list[str]:
    return re.findall(r"stablehlo\.custom_call\s*@([\w.$-]+)", text) + re.findall(
        r"call_target_name\s*=\s*\"([^\"]+)\"", text)


def test_exported_programs_carry_no_host_callback_and_no_branch():
    """The StableHLO of a LayerNorm forward and gradient and of a BatchNorm training step (gradient and updated
    moving statistics): no custom_call to a host callback, no ``stablehlo.case``/``stablehlo.if``."""
    # The detector finds a host callback where there is one (jax.export itself refuses to export it).
    cb = lambda x: jax.pure_callback(np.sin, jax.ShapeDtypeStruct(x.shape, x.dtype), x)  # noqa: E731
    assert [t for t in _custom_call_targets(jax.jit(cb).lower(_X).as_text()) if _CALLBACK.search(t)]
    ln = _op_case("layer_norm")
    ln_fn = lambda p, s, x: (ln.apply(p, s, x), _train_step(ln.apply)(p, s, x))  # noqa: E731
    bn_entry = next(e for e in REGISTRY if type(e.make()) is jaxnorm.BatchNorm and e.training)
    bn = _spec_case(bn_entry)
    for name, fn, case in (("LayerNorm forward+grad", ln_fn, ln),
                           ("BatchNorm train step", _train_step(bn.apply), bn)):
        exported = _round_trip(fn, (case.params, case.state, case.x))[0]
        text = exported.mlir_module()
        callbacks = [t for t in _custom_call_targets(text) if _CALLBACK.search(t)]
        assert not callbacks, (name, callbacks)
        for branch in ("stablehlo.case", "stablehlo.if"):
            assert branch not in text, (name, branch)
        assert exported.platforms == ("cpu",)


def test_layer_norm_exports_for_cpu_and_cuda_at_once():
    """One serialized program for both platforms (lowered here, on the CPU, without a GPU); called here, it
    runs the CPU lowering. Serialized with its VJP too, so that the deserialized function is differentiable.
    (Its StableHLO selects the platform's lowering with a ``stablehlo.case`` on the platform index: the CPU
    scheduling hints of jaxnorm/_src/passes.py lower differently per platform.)"""
    ln = _op_case("layer_norm")
    fwd = lambda p, x: ln.apply(p, {}, x)[0]  # noqa: E731
    exported, back, _ = _round_trip(fwd, (ln.params, ln.x), platforms=("cpu", "cuda"), vjp_order=1)
    assert exported.platforms == back.platforms == ("cpu", "cuda")
    leaves = jax.tree.leaves((ln.params, ln.x))
    treedef = jax.tree.structure((ln.params, ln.x))

    def loss(call):
        return lambda *leaves: _loss(call(*leaves))

    got = jax.jit(jax.grad(loss(back.call), argnums=tuple(range(len(leaves)))))(*leaves)
    want = jax.jit(jax.grad(loss(lambda *a: [fwd(*jax.tree.unflatten(treedef, a))]),
                            argnums=tuple(range(len(leaves)))))(*leaves)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-6)
