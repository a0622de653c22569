"""jaxnorm.equinox against equinox.nn, the classes it replaces (the `peers` tier: equinox is a conformance
dependency).

Every drop-in (BatchNorm in both modes, LayerNorm, RMSNorm, GroupNorm, SpectralNorm, WeightNorm) must take
equinox's arguments, build equinox's pytree (field paths, leaf shapes, dtypes and values, params and
``eqx.nn.State``), load equinox's checkpoints (``eqx.tree_serialise_leaves``) and states, and give equinox's
outputs, gradients (parameters and ``x``) and states over training steps then inference, BatchNorm under
``jax.vmap(..., axis_name="batch", in_axes=(0, None), out_axes=(0, None))`` as equinox's docs use it. Then the
intended differences: float32 statistics for bfloat16 input, the per-channel safe update of the running
statistics, exact masked statistics, no NaN from a zero weight, and errors that name the argument.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.tolerances import assert_close, grad_tol

pytestmark = pytest.mark.peers("equinox")  # the conformance tier (`pytest -m peers`)
eqx = pytest.importorskip("equinox")

import jaxnorm.equinox as jeqx  # noqa: E402  (needs equinox)

BATCHED = dict(axis_name="batch", in_axes=(0, None), out_axes=(0, None))


def _normal(shape, seed=0, loc=0.0, scale=1.0, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(seed).normal(loc, scale, size=shape), dtype)


@dataclasses.dataclass(frozen=True)
class Case:
    """One drop-in configuration: ``build(module)`` makes equinox's or ours from the same arguments (``module``
    is ``eqx.nn`` or ``jaxnorm.equinox``); ``x_shape`` is one call's input (BatchNorm: the whole batch, vmapped
    over axis 0)."""

    name: str
    build: Callable[[Any], Any]
    x_shape: tuple[int, ...]
    stateful: bool = False
    batched: bool = False
    steps: int = 1  # training calls before the inference call
    call: dict = dataclasses.field(default_factory=dict)  # the call's other inputs (the gated norm's gate)

    def make(self, module):
        if self.stateful:
            return eqx.nn.make_with_state(self.build)(module)
        return self.build(module), None


def _linear(key=0, in_features=4, out_features=3):
    return eqx.nn.Linear(in_features, out_features, key=jax.random.key(key))


def _conv(key=0):
    return eqx.nn.Conv1d(2, 3, kernel_size=3, key=jax.random.key(key))


CASES = [
    Case("BatchNorm-ema", lambda m: m.BatchNorm(3, "batch", momentum=0.9, mode="ema"), (6, 3, 4), True, True, 3),
    Case("BatchNorm-batch", lambda m: m.BatchNorm(3, "batch", momentum=0.9, mode="batch"), (6, 3), True, True, 3),
    Case("BatchNorm-ema-no-affine",
         lambda m: m.BatchNorm(3, "batch", channelwise_affine=False, mode="ema"), (5, 3), True, True, 2),
    Case("LayerNorm", lambda m: m.LayerNorm((3, 4)), (3, 4)),
    Case("RMSNorm", lambda m: m.RMSNorm(5, eps=1e-3), (5,)),
    Case("GroupNorm", lambda m: m.GroupNorm(2, 4), (4, 3)),
    Case("SpectralNorm-Linear", lambda m: m.SpectralNorm(_linear(), "weight", key=jax.random.key(1)), (4,), True,
         steps=3),
    Case("SpectralNorm-Conv1d",
         lambda m: m.SpectralNorm(_conv(), "weight", num_power_iterations=2, key=jax.random.key(1)), (2, 7), True,
         steps=2),
    Case("WeightNorm-Linear", lambda m: m.WeightNorm(_linear()), (4,)),
    Case("WeightNorm-Conv1d-all", lambda m: m.WeightNorm(_conv(), axis=None), (2, 7)),
]
#: Our layers that equinox has no class for (test_pointwise.py checks them against the spec; test_export.py
#: and test_promises.py run them with the others).
UNPEERED = [
    Case("DyT", lambda m: m.DyT((3, 4)), (3, 4)),
    Case("Derf", lambda m: m.Derf(5, alpha_init_value=0.8, shift_init_value=0.1), (5,)),
    Case("AddLayerNorm", lambda m: m.AddLayerNorm((3, 4)), (3, 4)),  # x alone: the first layer's form
    Case("AddRMSNorm", lambda m: m.AddRMSNorm(5, eps=1e-3, residual_in_float32=True), (5,)),
    Case("GatedRMSNorm", lambda m: m.GatedRMSNorm(6, norm_before_gate=False, group_size=3), (6,),
         call={"gate": jnp.linspace(-2.0, 3.0, 6)}),
    Case("LayerNormFP8", lambda m: m.LayerNormFP8((3, 4)), (3, 4), call={"out_scale": 16.0}),
    Case("RMSNormFP8", lambda m: m.RMSNormFP8(5, use_bias=False), (5,), call={"out_scale": 16.0}),
    Case("AdaptiveNorm", lambda m: m.AdaptiveNorm(6), (6,),
         call={"shift": jnp.linspace(-1.0, 1.0, 6), "scale": jnp.linspace(-0.5, 0.5, 6)}),
]
BY_NAME = {c.name: c for c in CASES}
NAMES = ["BatchNorm", "LayerNorm", "RMSNorm", "GroupNorm", "SpectralNorm", "WeightNorm"]
# The drop-ins that compute statistics take jaxnorm's `extreme_range` (keyword-only, after equinox's arguments,
# default False), kept in a static field after equinox's fields.
EXTREME_RANGE_NAMES = ["BatchNorm", "LayerNorm", "RMSNorm", "GroupNorm"]


def _leaves(tree) -> list[tuple[str, Any]]:
    return [(jax.tree_util.keystr(p), leaf) for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _same(ours, theirs, grad=False, dtype=jnp.float32):
    """The same paths, shapes and dtypes, values within the tolerance table's (gradients': ``grad_tol``)."""
    a, b = _leaves(ours), _leaves(theirs)
    assert [p for p, _ in a] == [p for p, _ in b]
    for (path, x), (_, y) in zip(a, b, strict=True):
        if not eqx.is_array(y):
            assert x == y or (callable(x) and callable(y)), path
            continue
        assert (jnp.shape(x), jnp.result_type(x)) == (jnp.shape(y), jnp.result_type(y)), path
        if grad:
            np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64),
                                       atol=grad_tol(dtype), rtol=grad_tol(dtype), err_msg=path)
        else:
            assert_close(x, y, dtype)


@eqx.filter_jit
def _call(model, x, state, batched, inference):
    """``(y, new_state, (grad_params, grad_x))`` of one call and of the loss ``sum(sin(y) * w)``."""
    if inference:
        model = eqx.nn.inference_mode(model)
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def loss(params, x):
        m = eqx.combine(params, static)
        f = jax.vmap(m, **BATCHED) if batched else m
        y, new = f(x, state) if state is not None else (f(x), None)
        return jnp.sum(jnp.sin(y) * _normal(y.shape, seed=22)), (y, new)

    (_, (y, new)), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x)
    return y, new, grads


def _run(case, model, state, xs):
    """Every output, state and gradient of ``case.steps`` training calls, then one inference call."""
    out = []
    for i, x in enumerate(xs):
        y, state, grads = _call(model, x, state, case.batched, i == case.steps)
        out.append((y, state, grads))
    return out


# ---------------------------------------------------------------------------------------------------------
# signatures, fields, states, checkpoints


def _signature(fn) -> list[tuple[str, Any, Any]]:
    sig = inspect.signature(fn)
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()]


@pytest.mark.parametrize("name", NAMES)
def test_signatures_match_equinox(name):
    ours, theirs = getattr(jeqx, name), getattr(eqx.nn, name)
    extreme = name in EXTREME_RANGE_NAMES
    extra_args = [("extreme_range", inspect.Parameter.KEYWORD_ONLY, False)] if extreme else []
    if name in ("LayerNorm", "RMSNorm"):  # the zero-centred weight, tests/test_scale_offset.py
        extra_args.append(("scale_offset", inspect.Parameter.KEYWORD_ONLY, 0.0))
    assert _signature(ours.__init__) == _signature(theirs.__init__) + extra_args
    ours_call, theirs_call = _signature(ours.__call__), _signature(theirs.__call__)
    # equinox's call arguments, in order, plus our keyword-only extras (mask); `state`'s default is a private
    # sentinel in each library.
    assert [(n, k) for n, k, _ in ours_call[: len(theirs_call)]] == [(n, k) for n, k, _ in theirs_call]
    for (n, _, ours_default), (_, _, theirs_default) in zip(ours_call, theirs_call, strict=False):
        if n != "state":
            assert ours_default == theirs_default, n
    assert all(k is inspect.Parameter.KEYWORD_ONLY and d is None for _, k, d in ours_call[len(theirs_call):])
    fields = lambda cls: [(f.name, f.metadata.get("static", False)) for f in dataclasses.fields(cls)]  # noqa: E731
    assert fields(ours) == fields(theirs) + [(name, True) for name, *_ in extra_args]  # static fields
    assert issubclass(ours, eqx.nn.StatefulLayer) == issubclass(theirs, eqx.nn.StatefulLayer)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_trees_states_and_checkpoints_match_equinox(case):
    (ours, ours_state), (theirs, theirs_state) = case.make(jeqx), case.make(eqx.nn)
    _same(ours, theirs)
    if case.stateful:
        _same(ours_state, theirs_state)
    # A checkpoint written with equinox's classes loads into ours, and back.
    for src, dst in (((theirs, theirs_state), (ours, ours_state)), ((ours, ours_state), (theirs, theirs_state))):
        perturbed = jax.tree.map(lambda a: a + 0.5 if eqx.is_inexact_array(a) else a, src)
        buffer = io.BytesIO()
        eqx.tree_serialise_leaves(buffer, perturbed)
        buffer.seek(0)
        loaded = eqx.tree_deserialise_leaves(buffer, dst)
        assert type(loaded[0]) is type(dst[0])
        _same(loaded, perturbed)


# ---------------------------------------------------------------------------------------------------------
# values, gradients and states over training steps and inference


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_steps_match_equinox(case):
    xs = [_normal(case.x_shape, seed=i, loc=1.0, scale=2.0) for i in range(case.steps + 1)]
    (ours, ours_state), (theirs, theirs_state) = case.make(jeqx), case.make(eqx.nn)
    for step, (a, b) in enumerate(zip(_run(case, ours, ours_state, xs), _run(case, theirs, theirs_state, xs),
                                      strict=True)):
        _same(a[:2], b[:2])
        _same(a[2], b[2], grad=True)
        assert step <= case.steps
    if case.stateful:  # one library's state runs in the other's model: the state keys are the same
        theirs_state = _run(case, theirs, theirs_state, xs[:1])[-1][1]
        _same(_call(ours, xs[1], theirs_state, case.batched, False)[:2],
              _call(theirs, xs[1], theirs_state, case.batched, False)[:2])
    elif "state" in inspect.signature(type(ours).__call__).parameters:  # passed through, as equinox's do
        marker = eqx.nn.State(ours)
        y, passed = ours(xs[0], marker)
        assert passed is marker and jnp.shape(y) == jnp.shape(xs[0])


def test_batchnorm_in_an_equinox_model():
    """In ``eqx.nn.Sequential`` with a Linear, under ``eqx.nn.inference_mode``: as equinox's BatchNorm."""

    def build(m):
        return eqx.nn.Sequential([_linear(3, 4, 3), m.BatchNorm(3, "batch", mode="ema")])

    xs = [_normal((8, 4), seed=i) for i in range(2)]
    case = Case("Sequential", build, (8, 4), True, True, 1)
    (ours, ours_state), (theirs, theirs_state) = case.make(jeqx), case.make(eqx.nn)
    for a, b in zip(_run(case, ours, ours_state, xs), _run(case, theirs, theirs_state, xs), strict=True):
        _same(a[:2], b[:2])
        _same(a[2], b[2], grad=True)
    assert eqx.nn.inference_mode(ours).layers[1].inference is True


def test_batchnorm_legacy_mode_warns_and_is_ema():
    with pytest.warns(UserWarning, match="mode"):
        bn = jeqx.BatchNorm(3, "batch")
    assert bn.mode == "ema" and bn.ema_state_index is not None and bn.batch_counter is None


def test_construction_warnings_point_at_the_users_line():
    """The mode and elementwise_affine warnings name the line that built the layer (directly, or through
    ``eqx.nn.make_with_state``), not equinox's module machinery or jaxnorm's."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        jeqx.BatchNorm(3, "batch")
        eqx.nn.make_with_state(jeqx.BatchNorm)(3, "batch")
        jeqx.LayerNorm(3, elementwise_affine=False)
    assert len(caught) == 3
    assert all(w.filename == __file__ for w in caught), [(w.filename, w.lineno) for w in caught]


# ---------------------------------------------------------------------------------------------------------
# the intended differences


def _batched_call(bn, x, state, **kwargs):
    return jax.vmap(lambda x, s: bn(x, s, **kwargs), **BATCHED)(x, state)


def test_batchnorm_offset_data_statistics():
    """float32 ``1e4 + N(0, 1)``: the running statistics are the data's, to float32 rounding."""
    x = _normal((64, 3, 4), seed=3, loc=1e4)
    bn, state = eqx.nn.make_with_state(jeqx.BatchNorm)(3, "batch", mode="ema")
    y, state = jax.jit(lambda x, s: _batched_call(bn, x, s))(x, state)
    mean, var = state.get(bn.ema_state_index)
    data = np.asarray(x, np.float64)
    np.testing.assert_allclose(mean, data.mean(axis=(0, 2)), rtol=1e-7)
    np.testing.assert_allclose(var, data.var(axis=(0, 2)), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(y, np.float64).std(axis=(0, 2)), 1.0, rtol=1e-4)


def test_batchnorm_bf16_input_float32_statistics():
    """bfloat16 input: float32 statistics of its values (equinox's are rounded to bfloat16, and its 'ema' mode
    raises for bfloat16 input with float32 state)."""
    x = _normal((32, 3, 4), seed=4, loc=1.0, scale=3.0, dtype=jnp.bfloat16)
    data = np.asarray(x, np.float64)
    for module in (jeqx, eqx.nn):
        bn, state = eqx.nn.make_with_state(module.BatchNorm)(3, "batch", momentum=0.0, mode="batch")
        y, state = jax.jit(lambda x, s, bn=bn: _batched_call(bn, x, s))(x, state)
        assert y.dtype == jnp.float32  # bfloat16 input, float32 weight: equinox's result dtype
        mean, var = state.get(bn.batch_state_index)
        error = np.abs(np.asarray(var, np.float64) / data.var(axis=(0, 2)) - 1).max()
        assert error < 1e-6 if module is jeqx else error > 1e-4
    bn, state = eqx.nn.make_with_state(jeqx.BatchNorm)(3, "batch", mode="ema")
    y, state = jax.jit(lambda x, s: _batched_call(bn, x, s))(x, state)
    np.testing.assert_allclose(state.get(bn.ema_state_index)[1], data.var(axis=(0, 2)), rtol=1e-6)
    theirs, theirs_state = eqx.nn.make_with_state(eqx.nn.BatchNorm)(3, "batch", mode="ema")
    with pytest.raises(TypeError, match="same dtypes"):
        _batched_call(theirs, x, theirs_state)


@pytest.mark.parametrize("mode", ["ema", "batch"])
def test_batchnorm_nan_channel_keeps_its_running_statistics(mode):
    """NaN in one channel of one example: that channel's running statistics stay as they were (equinox's turn
    NaN), the other channels update as equinox's; an all-NaN batch changes nothing, counter and flag
    included."""
    clean, dirty = _normal((6, 3, 2), seed=5), _normal((6, 3, 2), seed=6).at[2, 1, 0].set(jnp.nan)
    index = "ema_state_index" if mode == "ema" else "batch_state_index"
    flag = "ema_first_time_index" if mode == "ema" else "batch_counter"
    states = {}
    for module in (jeqx, eqx.nn):
        bn, state = eqx.nn.make_with_state(module.BatchNorm)(3, "batch", momentum=0.5, mode=mode)
        step = jax.jit(lambda x, s, bn=bn: _batched_call(bn, x, s))
        _, state = step(clean, state)
        before = [np.asarray(a) for a in state.get(getattr(bn, index))]
        _, state = step(dirty, state)
        states[module] = (before, [np.asarray(a) for a in state.get(getattr(bn, index))])
        if module is jeqx:
            flag_value = np.asarray(state.get(getattr(bn, flag)))
            _, state = step(jnp.full_like(clean, jnp.nan), state)
            assert np.asarray(state.get(getattr(bn, flag))) == flag_value
            np.testing.assert_array_equal(state.get(getattr(bn, index))[1], states[module][1][1])
    (before, ours), (_, theirs) = states[jeqx], states[eqx.nn]
    for ours_stat, theirs_stat, old in zip(ours, theirs, before, strict=True):
        np.testing.assert_array_equal(ours_stat[1], old[1])  # the NaN channel: kept bit for bit
        assert np.isnan(theirs_stat[1])
        assert_close(ours_stat[[0, 2]], theirs_stat[[0, 2]])


def test_batchnorm_masked_examples_drop_out_exactly():
    """Padded examples (mask False) and masked positions do not count: the statistics are those of the valid
    values (exact, count-weighted across the vmapped examples), and equal the unpadded batch's."""
    x = _normal((7, 3, 4), seed=7, loc=2.0)
    mask = jnp.ones((7, 1, 4), bool).at[5:].set(False).at[1, :, 1:].set(False)  # 2 padded examples, 1 partial
    x = jnp.where(mask, x, jnp.nan)  # masked-out values may hold anything
    bn, state = eqx.nn.make_with_state(jeqx.BatchNorm)(3, "batch", mode="ema")
    run = jax.jit(lambda x, s, m: jax.vmap(lambda x, s, m: bn(x, s, mask=m), in_axes=(0, None, 0),
                                           axis_name="batch", out_axes=(0, None))(x, s, m))
    y, new = run(x, state, mask)
    mean, var = new.get(bn.ema_state_index)
    data, keep = np.asarray(x, np.float64), np.broadcast_to(np.asarray(mask), x.shape)
    valid = [data[:, c][keep[:, c]] for c in range(3)]
    np.testing.assert_allclose(mean, [v.mean() for v in valid], rtol=1e-6)
    np.testing.assert_allclose(var, [v.var() for v in valid], rtol=1e-5)
    assert bool(jnp.all(jnp.isfinite(y[:5][mask[:5].repeat(3, 1)])))


def test_extreme_range_is_exact_at_1e30_and_changes_no_leaf():
    """``extreme_range=True`` on each statistics drop-in: float32 ``1e30 * N(0, 1)`` (squares overflow float32)
    normalized as the float64 reference, with equinox's leaves and state (a static field, no leaf). BatchNorm in
    ``mode='batch'``, whose training output uses the batch statistics (a variance of 1e60 does not fit float32
    running averages: they keep their values). The default is False (whose outputs the checks above compare
    with equinox's); a non-bool raises naming it."""

    def reference(x, axes, center=True, shape=None):
        x64 = np.asarray(x, np.float64).reshape(shape or x.shape)
        mean = x64.mean(axes, keepdims=True) if center else 0.0
        return ((x64 - mean) / np.sqrt(((x64 - mean) ** 2).mean(axes, keepdims=True) + 1e-3)).reshape(x.shape)

    cases = [  # name, build(module, **kwargs), reference (the data: 6 examples of shape (4, 3))
        ("BatchNorm", lambda m, **kw: m.BatchNorm(4, "batch", eps=1e-3, mode="batch", **kw),
         lambda x: reference(x, (0, 2))),
        ("LayerNorm", lambda m, **kw: m.LayerNorm((4, 3), eps=1e-3, **kw), lambda x: reference(x, (1, 2))),
        ("RMSNorm", lambda m, **kw: m.RMSNorm((4, 3), eps=1e-3, **kw), lambda x: reference(x, (1, 2), False)),
        ("GroupNorm", lambda m, **kw: m.GroupNorm(2, 4, eps=1e-3, **kw),
         lambda x: reference(x, (2, 3), shape=(6, 2, 2, 3))),
    ]
    assert [name for name, *_ in cases] == EXTREME_RANGE_NAMES
    x = jnp.asarray(1e30 * np.random.default_rng(3).standard_normal((6, 4, 3)), jnp.float32)
    for name, build, want in cases:
        if name == "BatchNorm":
            ours, state = eqx.nn.make_with_state(build)(jeqx, extreme_range=True)
            theirs, theirs_state = eqx.nn.make_with_state(build)(eqx.nn)
            _same(state, theirs_state)  # the same state (the option is no part of it)
            y, _ = eqx.filter_jit(lambda x, s, bn=ours: _batched_call(bn, x, s))(x, state)
        else:
            ours, theirs = build(jeqx, extreme_range=True), build(eqx.nn)
            y = eqx.filter_jit(jax.vmap(ours))(x)
        assert ours.extreme_range is True
        _same(ours, theirs)
        np.testing.assert_allclose(np.asarray(y, np.float64), want(x), rtol=2e-5, atol=2e-6, err_msg=name)
        assert build(jeqx).extreme_range is False, name
        with pytest.raises(TypeError, match="extreme_range"):
            build(jeqx, extreme_range="yes")


def test_zero_weight_gives_no_nan():
    """A zero weight: SpectralNorm leaves it zero (sigma 0) and WeightNorm gives 0, where equinox gives NaN."""
    linear = eqx.tree_at(lambda m: m.weight, _linear(), jnp.zeros((3, 4)))
    x = jnp.ones(4)
    for module in (jeqx, eqx.nn):
        sn, state = eqx.nn.make_with_state(module.SpectralNorm)(linear, "weight", key=jax.random.key(0))
        y, _ = sn(x, state)
        wn = module.WeightNorm(linear)
        z = wn(x)
        finite = bool(jnp.all(jnp.isfinite(y)) and jnp.all(jnp.isfinite(z)))
        assert finite if module is jeqx else not finite
        if module is jeqx:
            assert_close(y, linear.bias)
            assert_close(z, linear.bias)


# ---------------------------------------------------------------------------------------------------------
# errors


def _bn(**kwargs):
    return jeqx.BatchNorm(**{"input_size": 3, "axis_name": "batch", "mode": "ema", **kwargs})


def _bn_call(x, batched=True, **kwargs):
    bn, state = eqx.nn.make_with_state(_bn)()
    return _batched_call(bn, x, state, **kwargs) if batched else bn(x, state, **kwargs)


ERRORS = [
    ("mode", lambda: _bn(mode="other"), ValueError, "`mode`"),
    ("axis_name", lambda: _bn(axis_name=None), ValueError, "axis_name"),
    ("momentum", lambda: _bn(momentum=1.5), ValueError, "momentum"),
    ("eps", lambda: _bn(eps=-1.0), ValueError, "eps"),
    ("input_size", lambda: _bn(input_size=0), ValueError, "input_size"),
    ("channels", lambda: _bn_call(jnp.ones((2, 4))), ValueError, "input_size=3"),
    ("unbound", lambda: _bn_call(jnp.ones(3), batched=False), ValueError, "not bound"),
    ("inference", lambda: jax.jit(lambda t: _bn_call(jnp.ones((2, 3)), inference=t))(True), TypeError,
     "inference"),
    ("complex", lambda: jeqx.LayerNorm(2)(jnp.ones(2, jnp.complex64)), TypeError, "`x`"),
    ("shape", lambda: jeqx.LayerNorm(3)(jnp.ones((2, 3))), ValueError, "jax.vmap"),
    ("groups", lambda: jeqx.GroupNorm(3, 4), ValueError, "divide"),
    ("group-channels", lambda: jeqx.GroupNorm(2, 4)(jnp.ones((6, 2))), ValueError, "channels"),
    ("group-affine", lambda: jeqx.GroupNorm(2), ValueError, "channels"),
    ("weight_name", lambda: jeqx.SpectralNorm(_linear(), "kernel", key=jax.random.key(0)), ValueError,
     "weight_name"),
    ("vector", lambda: jeqx.SpectralNorm(_linear(), "bias", key=jax.random.key(0)), ValueError, "two-dim"),
    ("iterations", lambda: jeqx.SpectralNorm(_linear(), "weight", -1, key=jax.random.key(0)), ValueError,
     "num_power_iterations"),
    ("axis", lambda: jeqx.WeightNorm(_linear(), axis=2), ValueError, "axis"),
]


@pytest.mark.parametrize(("what", "fn", "error", "match"), ERRORS, ids=[e[0] for e in ERRORS])
def test_errors_name_the_argument(what, fn, error, match):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # equinox's own warnings are not what this checks
        with pytest.raises(error, match=match):
            fn()
