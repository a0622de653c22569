"""The stateful drop-ins under their framework's transforms: a registry of (transform, layer) scenarios, each run
with the peer's class and with jaxnorm's (the same code, the class swapped).

Where the peer's class works, jaxnorm's must work and give the same outputs and the same updated state (float32
rounding). Where the peer's fails, jaxnorm's must either work or fail with an error of its own kind: the
scenario records which (``PEER_FAILS``), so that a change in either shows. The scenarios are the ones users
report as normalization bugs: google/flax#4760 (``nnx.vmap`` over BatchNorm, a second call), #4734
(``nnx.eval_shape``), #3319 (nested ``nn.vmap``), #2052 (``nn.scan`` carrying ``batch_stats``), #3602
(``batch_stats`` not mutable at inference inside ``nn.scan``), plus ``nn.remat``/``nn.jit``, ``nnx.scan``,
``nnx.remat``, ``nnx.jit``, ``nnx.split``/``merge``, ``nnx.bridge``, and equinox's ``filter_vmap``,
``inference_mode`` and ``tree_at``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxnorm.linen as jln
import jaxnorm.nnx as jnnx

try:
    import equinox as eqx
except ImportError:  # pragma: no cover - equinox is a conformance dependency
    eqx = None

X = jnp.asarray(np.random.default_rng(0).normal(2.0, 1.5, (3, 8, 4)), jnp.float32)  # (models/steps, batch, C)


@dataclasses.dataclass(frozen=True)
class Scenario:
    """``run(ns)`` builds and runs the scenario with the classes of namespace ``ns`` (the peer's module or
    jaxnorm's drop-in module) and returns a pytree of arrays (outputs and updated state)."""

    family: str
    transform: str
    layer: str
    run: Callable[[Any], Any]


SCENARIOS: list[Scenario] = []


def scenario(family: str, transform: str, layer: str):
    def register(run):
        SCENARIOS.append(Scenario(family, transform, layer, run))
        return run

    return register


# --------------------------------------------------------------------------------------------------- linen


def _linen_layer(ns, layer: str, train: bool):
    if layer == "BatchNorm":
        return lambda x: ns.BatchNorm(use_running_average=not train, momentum=0.8)(x)
    return lambda x: ns.SpectralNorm(nn.Dense(4))(x, update_stats=train)


def _linen_block(ns, layer):
    class Block(nn.Module):
        train: bool = True

        @nn.compact
        def __call__(self, x):
            return nn.relu(_linen_layer(ns, layer, self.train)(x))

    return Block


def _linen_step(module, x, **kw):
    variables = module.init(jax.random.key(0), x, **kw)
    y, updates = module.apply(variables, x, mutable=["batch_stats"], **kw)
    y2, updates2 = module.apply({**variables, **updates}, x + 1.0, mutable=["batch_stats"], **kw)
    return y, updates, y2, updates2


for _layer in ("BatchNorm", "SpectralNorm"):
    @scenario("linen", "nn.jit", _layer)
    def _(ns, layer=_layer):
        return _linen_step(nn.jit(_linen_block(ns, layer))(), X[0])

    @scenario("linen", "nn.remat", _layer)
    def _(ns, layer=_layer):
        return _linen_step(nn.remat(_linen_block(ns, layer))(), X[0])

    @scenario("linen", "nn.vmap", _layer)
    def _(ns, layer=_layer):  # a batch of models, each with its own parameters and statistics
        vmapped = nn.vmap(_linen_block(ns, layer), variable_axes={"params": 0, "batch_stats": 0},
                          split_rngs={"params": True}, in_axes=0)
        return _linen_step(vmapped(), X)

    @scenario("linen", "nested nn.vmap", _layer)
    def _(ns, layer=_layer):  # google/flax#3319
        inner = nn.vmap(_linen_block(ns, layer), variable_axes={"params": 0, "batch_stats": 0},
                        split_rngs={"params": True}, in_axes=0)
        outer = nn.vmap(inner, variable_axes={"params": 0, "batch_stats": 0}, split_rngs={"params": True},
                        in_axes=0)
        return _linen_step(outer(), jnp.stack([X, X * 0.5]))

    @scenario("linen", "nn.scan carrying batch_stats", _layer)
    def _(ns, layer=_layer):  # google/flax#2052
        block = _linen_block(ns, layer)

        class Cell(nn.Module):
            @nn.compact
            def __call__(self, carry, x):
                return block()(carry + x), None

        scanned = nn.scan(Cell, variable_axes={"params": 0, "batch_stats": 0}, split_rngs={"params": True},
                          in_axes=0, length=3)

        class Stack(nn.Module):
            @nn.compact
            def __call__(self, xs):
                return scanned()(jnp.zeros_like(xs[0]), xs)[0]

        return _linen_step(Stack(), X)

    @scenario("linen", "nn.scan inference, batch_stats immutable", _layer)
    def _(ns, layer=_layer):  # google/flax#3602
        def make(train):
            block = _linen_block(ns, layer)

            class Cell(nn.Module):
                @nn.compact
                def __call__(self, carry, x):
                    return block(train=train)(carry + x), None

            return nn.scan(Cell, variable_axes={"params": 0, "batch_stats": 0}, split_rngs={"params": True},
                           in_axes=0, length=3)()

        variables = make(True).init(jax.random.key(0), jnp.zeros_like(X[0]), X)
        _, updates = make(True).apply(variables, jnp.zeros_like(X[0]), X, mutable=["batch_stats"])
        return make(False).apply({**variables, **updates}, jnp.zeros_like(X[0]), X)[0]


# --------------------------------------------------------------------------------------------------- nnx


def _nnx_layer(ns, layer: str, rngs):
    if layer == "BatchNorm":
        return ns.BatchNorm(4, momentum=0.8, rngs=rngs)
    return ns.SpectralNorm(nnx.Linear(4, 4, rngs=rngs), rngs=rngs)


def _nnx_call(model, layer: str, x):
    return model(x) if layer == "BatchNorm" else model(x, update_stats=True)


def _nnx_stats(model):
    return nnx.state(model, nnx.BatchStat)


for _layer in ("BatchNorm", "SpectralNorm"):
    @scenario("nnx", "nnx.jit", _layer)
    def _(ns, layer=_layer):
        model = _nnx_layer(ns, layer, nnx.Rngs(0))
        step = nnx.jit(lambda m, x: _nnx_call(m, layer, x))
        return step(model, X[0]), step(model, X[1]), _nnx_stats(model)

    @scenario("nnx", "nnx.vmap, called twice", _layer)
    def _(ns, layer=_layer):  # google/flax#4760
        @nnx.vmap(in_axes=0, out_axes=0)
        def create(key):
            return _nnx_layer(ns, layer, nnx.Rngs(key))

        models = create(jax.random.split(jax.random.key(0), 3))
        call = nnx.vmap(lambda m, x: _nnx_call(m, layer, x), in_axes=(0, 0))
        return call(models, X), call(models, X + 1.0), _nnx_stats(models)

    @scenario("nnx", "nnx.scan over layers", _layer)
    def _(ns, layer=_layer):
        @nnx.vmap(in_axes=0, out_axes=0)
        def create(key):
            return _nnx_layer(ns, layer, nnx.Rngs(key))

        models = create(jax.random.split(jax.random.key(0), 3))

        @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
        def forward(m, x):
            return _nnx_call(m, layer, x)

        return forward(models, X[0]), _nnx_stats(models)

    @scenario("nnx", "nnx.remat", _layer)
    def _(ns, layer=_layer):
        model = _nnx_layer(ns, layer, nnx.Rngs(0))
        call = nnx.remat(lambda m, x: _nnx_call(m, layer, x))
        grads = nnx.grad(lambda m: jnp.sum(call(m, X[0]) ** 2))(model)
        return grads, _nnx_stats(model)

    @scenario("nnx", "nnx.eval_shape", _layer)
    def _(ns, layer=_layer):  # google/flax#4734
        abstract = nnx.eval_shape(lambda: _nnx_layer(ns, layer, nnx.Rngs(0)))
        shapes = jax.tree.map(lambda v: jnp.zeros(v.shape, v.dtype), nnx.state(abstract))
        return shapes

    @scenario("nnx", "nnx.split / merge", _layer)
    def _(ns, layer=_layer):
        model = _nnx_layer(ns, layer, nnx.Rngs(0))
        graphdef, params, stats = nnx.split(model, nnx.Param, ...)
        clone = nnx.merge(graphdef, params, stats)
        y = _nnx_call(clone, layer, X[0])
        return y, _nnx_stats(clone), _nnx_stats(model)

    @scenario("nnx", "nnx.bridge.ToLinen", _layer)
    def _(ns, layer=_layer):
        if layer == "BatchNorm":
            module = nnx.bridge.ToLinen(ns.BatchNorm, args=(4,), kwargs={"momentum": 0.8})
        else:
            module = nnx.bridge.ToLinen(lambda rngs: ns.SpectralNorm(nnx.Linear(4, 4, rngs=rngs), rngs=rngs))
        kw = {} if layer == "BatchNorm" else {"update_stats": True}
        variables = module.init(jax.random.key(0), X[0], **kw)
        y, updates = module.apply(variables, X[0], mutable=True, **kw)
        return y, jax.tree.map(jnp.asarray, dict(updates))

    @scenario("nnx", "nnx.bridge.ToNNX", _layer)
    def _(ns, layer=_layer):
        linen_ns = jln if ns is jnnx else nn
        linen = (linen_ns.BatchNorm(use_running_average=False, momentum=0.8) if layer == "BatchNorm"
                 else linen_ns.SpectralNorm(nn.Dense(4)))
        kw = {} if layer == "BatchNorm" else {"update_stats": True}
        model = nnx.bridge.ToNNX(linen, rngs=nnx.Rngs(0))
        nnx.bridge.lazy_init(model, X[0], **kw)
        return model(X[0], mutable=True, **kw), model(X[1], mutable=True, **kw), nnx.state(model, nnx.BatchStat)


# --------------------------------------------------------------------------------------------------- equinox


def _eqx_layer(ns, layer):
    if layer == "BatchNorm":
        return eqx.nn.make_with_state(ns.BatchNorm)(4, "batch", momentum=0.8, mode="ema")
    linear = eqx.nn.Linear(4, 4, key=jax.random.key(1))
    return eqx.nn.make_with_state(ns.SpectralNorm)(linear, "weight", key=jax.random.key(2))


def _eqx_batched(model, state, x, layer, **kw):
    if layer == "BatchNorm":
        return eqx.filter_vmap(lambda x, s: model(x, s, **kw), in_axes=(0, None), out_axes=(0, None),
                               axis_name="batch")(x, state)
    return eqx.filter_vmap(lambda x, s: model(x, s, **kw), in_axes=(0, None), out_axes=(0, None))(x, state)


if eqx is not None:
    for _layer in ("BatchNorm", "SpectralNorm"):
        @scenario("equinox", "eqx.filter_vmap + filter_jit", _layer)
        def _(ns, layer=_layer):
            model, state = _eqx_layer(ns, layer)
            step = eqx.filter_jit(lambda m, s, x: _eqx_batched(m, s, x, layer))
            y, state = step(model, state, X[0])
            y2, state = step(model, state, X[1])
            return y, y2, [state.get(i) for i in _indices(model)]

        @scenario("equinox", "eqx.nn.inference_mode", _layer)
        def _(ns, layer=_layer):
            model, state = _eqx_layer(ns, layer)
            _, state = _eqx_batched(model, state, X[0], layer)
            inference = eqx.nn.inference_mode(model)
            y, state2 = _eqx_batched(inference, state, X[1], layer)
            return y, [state2.get(i) for i in _indices(model)]

        @scenario("equinox", "eqx.tree_at", _layer)
        def _(ns, layer=_layer):
            model, state = _eqx_layer(ns, layer)
            if layer == "BatchNorm":
                model = eqx.tree_at(lambda m: m.weight, model, jnp.full((4,), 2.0))
            else:
                model = eqx.tree_at(lambda m: m.layer.bias, model, jnp.ones((4,)))
            y, state = _eqx_batched(model, state, X[0], layer)
            return y, [state.get(i) for i in _indices(model)]


def _indices(model):
    return [leaf for leaf in jax.tree.leaves(model, is_leaf=lambda v: isinstance(v, eqx.nn.StateIndex))
            if isinstance(leaf, eqx.nn.StateIndex)]


# --------------------------------------------------------------------------------------------------- the check

PEERS = {"linen": (nn, jln), "nnx": (nnx, jnnx)}
if eqx is not None:
    import jaxnorm.equinox as jeqx

    PEERS["equinox"] = (eqx.nn, jeqx)

#: Scenarios where the peer's class fails (the error), and what jaxnorm's does: "works" or "fails".
PEER_FAILS: dict[tuple[str, str, str], str] = {}


def _outcome(run, ns):
    try:
        return True, run(ns)
    except Exception as err:  # noqa: BLE001 - the outcome is compared, whatever it is
        return False, err


@pytest.mark.own_tiers
@pytest.mark.parametrize("sc", [
    pytest.param(s, id=f"{s.family}-{s.transform}-{s.layer}",
                 marks=[] if s.transform in ("nnx.vmap, called twice", "nn.scan carrying batch_stats") and
                 s.layer == "BatchNorm" else [pytest.mark.full])
    for s in SCENARIOS])
def test_drop_in_under_transform_behaves_as_the_peer(sc):
    theirs_ns, ours_ns = PEERS[sc.family]
    peer_ok, peer = _outcome(sc.run, theirs_ns)
    ours_ok, ours = _outcome(sc.run, ours_ns)
    key = (sc.family, sc.transform, sc.layer)
    if not peer_ok:
        assert key in PEER_FAILS, f"the peer fails here ({type(peer).__name__}: {peer}); record it in PEER_FAILS"
        assert PEER_FAILS[key] == ("works" if ours_ok else "fails"), (ours if not ours_ok else "jaxnorm works")
        return
    assert key not in PEER_FAILS, "the peer works here now: remove the PEER_FAILS entry"
    if not ours_ok:
        raise ours
    leaves_p, leaves_o = jax.tree.leaves(peer), jax.tree.leaves(ours)
    assert jax.tree.structure(jax.tree.map(jnp.shape, peer)) == jax.tree.structure(jax.tree.map(jnp.shape, ours))
    for a, b in zip(leaves_o, leaves_p, strict=True):
        assert jnp.shape(a) == jnp.shape(b)
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=2e-5, atol=2e-5)


def test_every_stateful_drop_in_has_every_transform():
    for family, transforms in (("linen", 6), ("nnx", 8), ("equinox", 3)):
        if family == "equinox" and eqx is None:
            continue
        for layer in ("BatchNorm", "SpectralNorm"):
            assert sum(s.family == family and s.layer == layer for s in SCENARIOS) == transforms, (family, layer)
