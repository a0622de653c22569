"""Class 5 of issue 12: per-feature safe updates of the moving statistics, as streams of training steps.

Each row runs several training steps of ``jaxnorm.BatchNorm`` (every averaging, moving_var_estimator and momentum
convention, renorm, ghost batches) or of a Flax drop-in's BatchNorm on a stream holding NaN/inf values, features
with no valid element and empty batches, and checks every step against the NumPy float64 rule of
:func:`tests.reference.batch_norm_safe_stream`: a feature that updated matches the reference (float32 tolerance),
a feature that did not keeps every moving statistic bit for bit, and the counter counts the steps in which any
feature updated. Each stream also asserts which features the rule kept, so that a row cannot pass by not being
hostile.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jaxnorm
from jaxnorm import linen as jnn
from jaxnorm import nnx as jnnx
from tests import reference
from tests.adversarial import Case
from tests.tolerances import assert_close

C = 3
T, F = True, False


def _data(shape, seed, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * 1.5 + 2.0 + seed).astype(dtype)


def _hostile(shape=(8, C), axis=-1, seed=0):
    """Five steps: clean; NaN in feature 1; feature 2 all masked (and NaN under the mask in feature 0); clean;
    +inf in feature 0. Returns (xs, masks, kept) with ``kept[i]`` the features step i must keep."""
    ax = axis % len(shape)
    xs = [_data(shape, seed + i) for i in range(5)]

    def at_feature(x, c, value, first_only=True):
        idx = [slice(None)] * x.ndim
        idx[ax] = c
        if first_only:
            idx = [0 if (d != ax) else c for d in range(x.ndim)]
        x[tuple(idx)] = value
        return x

    at_feature(xs[1], 1, np.nan)
    mask = np.ones(shape, bool)
    idx = [slice(None)] * len(shape)
    idx[ax] = 2
    mask[tuple(idx)] = False
    idx0 = [(-1 if d != ax else 0) for d in range(len(shape))]
    mask[tuple(idx0)] = False
    xs[2][tuple(idx0)] = np.nan  # masked out: must not block feature 0
    at_feature(xs[4], 0, np.inf)
    masks = [None, None, mask, None, None]
    n = shape[ax]
    kept = [np.zeros(n, bool) for _ in xs]
    kept[1][1] = kept[2][2] = kept[4][0] = True
    return xs, masks, kept


def _as_np(state):
    return {k: np.asarray(v) for k, v in state.items()}


def _spec_states(kw, xs, masks, jit=True, template=None):
    spec = jaxnorm.BatchNorm(**kw)
    params, state = spec.init(None, jnp.asarray(xs[0] if template is None else template))
    step = jax.jit(spec.apply, static_argnames="training") if jit else spec.apply
    states = [_as_np(state)]
    for x, m in zip(xs, masks or [None] * len(xs), strict=True):
        _, state = step(params, state, jnp.asarray(x), training=True, mask=None if m is None else jnp.asarray(m))
        states.append(_as_np(state))
    return states


def _linen_states(momentum, xs, masks, template=None):
    bn = jnn.BatchNorm(momentum=momentum, use_running_average=False)
    variables = bn.init(jax.random.key(0), jnp.asarray(xs[0] if template is None else template))
    apply = jax.jit(lambda v, x, m: bn.apply(v, x, mask=m, mutable=["batch_stats"]))
    states = [_as_np(variables["batch_stats"])]
    for x, m in zip(xs, masks or [None] * len(xs), strict=True):
        _, updates = apply(variables, jnp.asarray(x), None if m is None else jnp.asarray(m))
        variables = {**variables, **updates}
        states.append(_as_np(variables["batch_stats"]))
    return states


def _nnx_states(momentum, xs, masks):
    bn = jnnx.BatchNorm(xs[0].shape[-1], momentum=momentum, rngs=nnx.Rngs(0))
    states = [{"mean": np.asarray(bn.mean[...]), "var": np.asarray(bn.var[...])}]
    for x, m in zip(xs, masks or [None] * len(xs), strict=True):
        bn(jnp.asarray(x), mask=None if m is None else jnp.asarray(m))
        states.append({"mean": np.asarray(bn.mean[...]), "var": np.asarray(bn.var[...])})
    return states


def _check(xs, masks, feature_axes, kept, **ref_kw):
    """Checks a list of states (initial first) against the float64 rule, step by step."""

    def check(states):
        ref = reference.batch_norm_safe_stream(xs, masks, feature_axes, states[0], **ref_kw)
        assert len(states) == len(ref) + 1
        for i, (want, ok) in enumerate(ref):
            if kept is not None:  # the stream is as hostile as it says
                np.testing.assert_array_equal(~ok, np.reshape(kept[i], ok.shape), err_msg=f"step {i}")
            got, before = states[i + 1], states[i]
            assert sorted(got) == sorted(want), (sorted(got), sorted(want))
            for k in want:
                if k == "steps":  # a scalar, or per feature (the counted averages)
                    np.testing.assert_array_equal(got[k], want[k], err_msg=f"step {i}: count")
                    continue
                assert got[k].dtype == before[k].dtype
                # kept: bit for bit the previous value
                np.testing.assert_array_equal(got[k][~ok], before[k][~ok], err_msg=f"step {i} {k} kept")
                assert_close(got[k][ok], want[k][ok], scale=10)
    return check


def _stream_case(name, kw, shape=(8, C), axis=-1, jit=True, dtype=np.float32, seed=0):
    xs, masks, kept = _hostile(shape, axis, seed)
    xs = [x.astype(dtype) for x in xs]
    ref_kw = {
        "momentum": kw.get("momentum", 0.99),
        "epsilon": kw.get("epsilon", 1e-3),
        "averaging": kw.get("averaging", "exponential"),
        "moving_var_estimator": kw.get("moving_var_estimator", "biased"),
        "convention": kw.get("momentum_convention", "keras"),
        "renorm": kw.get("renorm", False),
        "renorm_momentum": kw.get("renorm_momentum", 0.99),
        "safe": kw.get("safe_update", True),
    }
    if not ref_kw["safe"]:  # every feature updates (NaN poisons its feature); no inf step, whose NaN/inf is moot
        xs, masks, kept = xs[:4], masks[:4], [np.zeros_like(k) for k in kept[:4]]
    fa = (axis % len(shape),)
    return Case(
        f"state_{name}",
        run=lambda: _spec_states({**kw, "axis": axis}, xs, masks, jit=jit),
        check=_check(xs, masks, fa, kept, **ref_kw),
    )


CASES: list[Case] = [
    _stream_case("exponential_keras_biased", {"momentum": 0.9}),
    _stream_case("exponential_torch_unbiased", {"momentum": 0.1, "momentum_convention": "torch",
                                                "moving_var_estimator": "unbiased"}),
    _stream_case("exponential_count_steps", {"momentum": 0.8, "count_steps": True}),
    _stream_case("cumulative_keras_biased", {"averaging": "cumulative"}),
    _stream_case("cumulative_torch_unbiased", {"averaging": "cumulative", "momentum_convention": "torch",
                                               "moving_var_estimator": "unbiased"}),
    _stream_case("debiased_keras_biased", {"momentum": 0.8, "averaging": "debiased"}),
    _stream_case("debiased_torch_unbiased", {"momentum": 0.3, "averaging": "debiased",
                                             "momentum_convention": "torch", "moving_var_estimator": "unbiased"}),
    _stream_case("renorm", {"momentum": 0.8, "renorm": True, "renorm_momentum": 0.7}),
    _stream_case("renorm_clipped_torch", {"momentum": 0.2, "renorm": True, "renorm_momentum": 0.4,
                                          "momentum_convention": "torch",
                                          "renorm_clipping": {"rmax": 1.2, "rmin": 0.9, "dmax": 0.3}}),
    _stream_case("unsafe_updates_every_feature", {"momentum": 0.9, "safe_update": False, "count_steps": True}),
    _stream_case("channels_first", {"momentum": 0.7}, shape=(5, C, 4), axis=1),
    _stream_case("spatial_channels_last", {"momentum": 0.6, "count_steps": True}, shape=(3, 2, 4, C)),
    _stream_case("eager_not_jitted", {"momentum": 0.5, "averaging": "debiased"}, jit=False),
    _stream_case("bfloat16_input", {"momentum": 0.9}, dtype=jnp.bfloat16),
]


# --- whole-batch streams: every feature kept, counter included ---------------------------------------------------

def _whole_batch_case(name, kw, bad, shape=(6, C), mask=None):
    """clean, ``bad`` (every feature without an update), clean: the middle step keeps the whole state."""
    xs = [_data(shape, 10), bad, _data(shape, 12)]
    masks = None if mask is None else [None, mask, None]
    ref_kw = {"momentum": kw.get("momentum", 0.99), "averaging": kw.get("averaging", "exponential"),
              "convention": kw.get("momentum_convention", "keras"),
              "moving_var_estimator": kw.get("moving_var_estimator", "biased"),
              "renorm": kw.get("renorm", False), "renorm_momentum": kw.get("renorm_momentum", 0.99)}
    kept = [np.zeros(C, bool), np.ones(C, bool), np.zeros(C, bool)]

    def run():
        states = _spec_states(kw, xs, masks, template=xs[0])
        for k in states[1]:  # bit for bit, counter included
            np.testing.assert_array_equal(states[2][k], states[1][k], err_msg=k)
        return states

    return Case(f"state_{name}", run=run, check=_check(xs, masks, (len(shape) - 1,), kept, **ref_kw))


_NAN_EVERYWHERE = np.full((6, C), np.nan, np.float32)
_ONE_NAN_PER_FEATURE = _data((6, C), 11)
_ONE_NAN_PER_FEATURE[np.arange(C), np.arange(C)] = np.nan
_INF_MINUS_INF = _data((6, C), 11)
_INF_MINUS_INF[0], _INF_MINUS_INF[1] = np.inf, -np.inf
_EMPTY = np.zeros((0, C), np.float32)

CASES += [
    _whole_batch_case("all_nan_cumulative", {"averaging": "cumulative"}, _NAN_EVERYWHERE),
    _whole_batch_case("one_nan_per_feature_debiased", {"averaging": "debiased", "momentum": 0.6},
                      _ONE_NAN_PER_FEATURE),
    _whole_batch_case("inf_minus_inf_renorm", {"renorm": True, "momentum": 0.5}, _INF_MINUS_INF),
    _whole_batch_case("all_masked_count_steps", {"count_steps": True, "momentum": 0.5}, _data((6, C), 11),
                      mask=np.zeros((6, C), bool)),
    _whole_batch_case("all_masked_nan_under_mask_torch",
                      {"averaging": "cumulative", "moving_var_estimator": "unbiased",
                       "momentum_convention": "torch"},
                      _NAN_EVERYWHERE, mask=np.zeros((6, 1), bool)),
    # Empty batches: count 0 for every feature (the statistics kernel returns count 0, mean 0, var 0).
    _whole_batch_case("empty_batch_exponential", {"momentum": 0.5, "count_steps": True}, _EMPTY),
    _whole_batch_case("empty_batch_cumulative", {"averaging": "cumulative"}, _EMPTY),
    _whole_batch_case("empty_batch_renorm", {"renorm": True, "momentum": 0.5}, _EMPTY),
]


# --- single valid element, ghost batches -------------------------------------------------------------------------

def _single_valid_case():
    xs = [_data((5, C), 20), _data((5, C), 21)]
    m = np.zeros((5, C), bool)
    m[2] = True  # one valid element per feature: it updates, with variance 0 (unbiased: also 0)
    masks = [None, m]
    kw = {"momentum": 0.1, "momentum_convention": "torch", "moving_var_estimator": "unbiased", "count_steps": True}
    return Case("state_single_valid_element_updates", run=lambda: _spec_states(kw, xs, masks),
                check=_check(xs, masks, (1,), [np.zeros(C, bool)] * 2, momentum=0.1, convention="torch",
                             moving_var_estimator="unbiased"))


def _ghost_case(name, kw):
    v, n = 2, 6
    xs = [_data((n, C), 30 + i) for i in range(4)]
    xs[1][3, 1] = np.nan  # one ghost batch (rows 2-3) poisons feature 1: kept
    m2 = np.ones((n, C), bool)
    m2[0:2, 0] = False  # feature 0 has no data in ghost batch 0: averaged over ghost batches 1 and 2
    m2[:, 2] = False  # feature 2 has no data anywhere: kept
    m2[4, 2] = False
    xs[2][0, 0] = np.nan  # under the mask
    masks = [None, None, m2, None]
    kept = [np.zeros(C, bool) for _ in xs]
    kept[1][1] = kept[2][2] = True
    ref_kw = {"momentum": kw.get("momentum", 0.99), "convention": kw.get("momentum_convention", "keras"),
              "virtual_batch_size": v}
    return Case(f"state_{name}", run=lambda: _spec_states({**kw, "virtual_batch_size": v}, xs, masks),
                check=_check(xs, masks, (1,), kept, **ref_kw))


CASES += [
    _single_valid_case(),
    _ghost_case("ghost_batches_keras", {"momentum": 0.7}),
    _ghost_case("ghost_batches_torch_convention", {"momentum": 0.4, "momentum_convention": "torch",
                                                   "count_steps": True}),
]


# --- Flax drop-ins ----------------------------------------------------------------------------------------------

def _dropin_case(name, states_fn, momentum, shape=(8, C)):
    xs, masks, kept = _hostile(shape)
    return Case(f"state_{name}", run=lambda: states_fn(momentum, xs, masks),
                check=_check(xs, masks, (len(shape) - 1,), kept, momentum=momentum))


def _dropin_empty_case(name, states_fn):
    xs = [_data((4, C), 40), np.zeros((0, C), np.float32), _data((4, C), 41)]
    kept = [np.zeros(C, bool), np.ones(C, bool), np.zeros(C, bool)]

    def run():
        states = states_fn(0.5, xs, None) if states_fn is _nnx_states else states_fn(0.5, xs, None, xs[0])
        for k in states[1]:
            np.testing.assert_array_equal(states[2][k], states[1][k], err_msg=k)
        return states

    return Case(f"state_{name}", run=run, check=_check(xs, None, (1,), kept, momentum=0.5))


def _dropin_all_masked_case(name, states_fn):
    xs = [_data((4, C), 50), np.full((4, C), np.nan, np.float32), _data((4, C), 51)]
    masks = [None, np.zeros((4, C), bool), np.ones((4, 1), bool)]
    kept = [np.zeros(C, bool), np.ones(C, bool), np.zeros(C, bool)]
    return Case(f"state_{name}", run=lambda: states_fn(0.9, xs, masks),
                check=_check(xs, masks, (1,), kept, momentum=0.9))


CASES += [
    _dropin_case("linen_batch_norm_stream", _linen_states, 0.9),
    _dropin_case("linen_batch_norm_spatial_stream", _linen_states, 0.6, shape=(2, 4, C)),
    _dropin_case("nnx_batch_norm_stream", _nnx_states, 0.9),
    _dropin_case("nnx_batch_norm_spatial_stream", _nnx_states, 0.6, shape=(2, 4, C)),
    _dropin_all_masked_case("linen_batch_norm_all_masked", _linen_states),
    _dropin_all_masked_case("nnx_batch_norm_all_masked", _nnx_states),
    _dropin_empty_case("linen_batch_norm_empty_batch", _linen_states),
    _dropin_empty_case("nnx_batch_norm_empty_batch", _nnx_states),
]
