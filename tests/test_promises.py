"""Every path keeps the README's numerical promises: a registry over every layer of every family (the public ops,
the specs, the linen, nnx and equinox drop-ins: tests/test_export.py's cases) and every implementation (XLA,
Pallas, Keras's ``rms_scaling`` form), each checked against the promises it makes:

- **magnitude**: inside the default range (deviations below ``2**50``), a normalization gives the same output at
  ``x * 2**26`` and ``x * 2**46`` as at ``x * 2**6`` (powers of two: the scaled inputs are exact, so only the
  statistics' rounding may differ; ``epsilon`` is negligible at all three); with ``extreme_range=True`` also at
  ``x * 2**100`` and ``x * 2**-100`` with ``epsilon=0``.
- **offset**: a centring normalization gives the same output on ``x + 1e4`` as on ``x`` (to float32's rounding
  of ``x + 1e4`` itself), not Flax's ``E[x^2] - E[x]^2`` cancellation.
- **bf16**: bf16 input gives finite output within bf16 rounding of the float32 computation on the same values,
  in the input's dtype (ops and specs; the Flax and equinox drop-ins follow their peers' dtype rules).
- **empty batch**: an input with no example gives an empty output of its shape and leaves the state bit for
  bit.
- **masks with NaN**: covered for every layer that takes a mask by tests/test_registry.py and the hostile table;
  here, the paths that take none (Pallas) refuse a mask with an error that names the fix.

Which layer makes which promise is declared in ``SCALE_FREE`` and ``OFFSET_FREE`` below (with the reason where
a layer does not); a completeness test fails for a case in neither.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnorm
from tests import test_export as ex

pytestmark = pytest.mark.own_tiers  # the default tier: the cases of _DEFAULT_TIER; the rest are `full`

# --------------------------------------------------------------------------------------------- the cases


def _impl_case(make, shape=(4, 3, 64)) -> ex.Case:
    """A LayerNorm/RMSNorm path given as ``make(x) -> y`` over float32 parameters."""
    return ex.Case(lambda p, s, x: (make(x, p), s), {"scale": 1.0 + 0.3 * ex._normal(shape[-1:], 3),
                                                     "bias": 0.2 * ex._normal(shape[-1:], 4)}, {},
                   ex._normal(shape, 0, loc=1.0, scale=2.0))


# The implementations beside the default XLA path of the ops and specs (which the families below cover).
IMPLEMENTATIONS = {
    "layer_norm-pallas": lambda: _impl_case(
        lambda x, p: jaxnorm.layer_norm(x, p["scale"], p["bias"], implementation="pallas")),
    "rms_norm-pallas": lambda: _impl_case(lambda x, p: jaxnorm.rms_norm(x, p["scale"], implementation="pallas")),
    "LayerNorm-pallas": lambda: _impl_case(
        lambda x, p: jaxnorm.LayerNorm(implementation="pallas").apply(p, {}, x)[0]),
    "RMSNorm-pallas": lambda: _impl_case(
        lambda x, p: jaxnorm.RMSNorm(implementation="pallas").apply({"scale": p["scale"]}, {}, x)[0]),
    "LayerNorm-rms_scaling": lambda: _impl_case(
        lambda x, p: jaxnorm.LayerNorm(rms_scaling=True).apply({"scale": p["scale"]}, {}, x)[0]),
}


def _cases() -> dict[str, ex.Case | None]:
    """Every case by ``family:name`` (built lazily: a function per case)."""
    out = {f"ops:{n}": (lambda n=n: ex._op_case(n)) for n in ex.OPS}
    out |= {f"specs:{n}": (lambda e=e: ex._spec_case(e)) for n, e in ex._SPECS.items()}
    out |= {f"linen:{n}": (lambda p=p: ex._linen_case(p)) for n, p in ex._LINEN.items()}
    out |= {f"nnx:{n}": (lambda p=p: ex._nnx_case(p)) for n, p in ex._NNX.items()}
    out |= {f"equinox:{n}": (lambda c=c: ex._eqx_case(c)) for n, c in ex._EQX.items()}
    out |= {f"impl:{n}": make for n, make in IMPLEMENTATIONS.items()}
    return out


CASES = _cases()

_CENTRED = ["ops:layer_norm", "ops:group_norm", "ops:instance_norm", "ops:normalize_batch_in_training",
            "specs:BatchNorm", "specs:LayerNorm", "specs:LayerNorm_axes", "specs:LayerNorm_zero_centred", "specs:GroupNorm",
            "specs:GroupNorm_channels_first", "specs:InstanceNorm",
            "linen:BatchNorm", "linen:LayerNorm", "linen:GroupNorm", "linen:InstanceNorm",
            "nnx:BatchNorm", "nnx:LayerNorm", "nnx:GroupNorm", "nnx:InstanceNorm",
            "equinox:BatchNorm-ema", "equinox:BatchNorm-batch", "equinox:BatchNorm-ema-no-affine",
            "equinox:LayerNorm", "equinox:GroupNorm", "impl:layer_norm-pallas", "impl:LayerNorm-pallas"]
#: y(a x) == y(x) for a > 0 (up to epsilon): the normalizations.
# The fp8 outputs are scale-free (a power-of-two scaling of x changes no bit of y), but not offset-free: 1e4 + x
# rounds x itself at float32's 2**-10, which moves a few fp8 roundings by one unit (tests/test_quantized.py).
_FP8 = [f"{family}:{name}" for family in ("specs", "linen", "nnx", "equinox") for name in ("LayerNormFP8",
                                                                                         "RMSNormFP8")]
SCALE_FREE = {*_CENTRED, *_FP8, "ops:layer_norm_fp8", "ops:rms_norm", "ops:rms_norm_fp8", "ops:unit_norm", "specs:RMSNorm", "specs:RMSNorm_zero_centred",
              "specs:UnitNormalization",
              "linen:RMSNorm", "nnx:RMSNorm", "equinox:RMSNorm", "impl:rms_norm-pallas", "impl:RMSNorm-pallas",
              "impl:LayerNorm-rms_scaling", "ops:weight_normalize", "specs:WeightNorm", "specs:SpectralNorm",
              "specs:SpectralNorm_eval"}
#: y(x + b) == y(x): the normalizations that subtract a mean.
OFFSET_FREE = set(_CENTRED)
#: The other cases, and why they promise neither.
NEITHER = {
    "ops:moments": "returns the statistics themselves (checked against NumPy by the hostile table)",
    "ops:batch_normalization": "normalizes by given statistics",
    "ops:spectral_normalize": "returns sigma, which scales with the weight",
    "ops:regularization_loss": "a penalty, no normalization",
    "ops:apply_constraints": "a projection, no normalization",
    **{name: "point-wise (DyT/Derf): tanh/erf of alpha * x, bounded, no statistics to be invariant with"
       for name in ("ops:dyt", "ops:derf", "specs:DyT", "specs:Derf", "linen:DyT", "linen:Derf", "nnx:DyT",
                    "nnx:Derf", "equinox:DyT", "equinox:Derf")},
    **{name: "add & norm: returns the stream h = x + residual too, which carries x's scale and offset (y = norm(h)"
             " exactly: tests/test_residual.py)"
       for name in ("ops:add_layer_norm", "ops:add_rms_norm", "specs:AddLayerNorm", "specs:AddRMSNorm",
                    "linen:AddLayerNorm", "linen:AddRMSNorm", "nnx:AddLayerNorm", "nnx:AddRMSNorm",
                    "equinox:AddLayerNorm", "equinox:AddRMSNorm")},
    **{name: "gated: y(a x) = y(x) only before the gate (silu(z) does not scale); offsets move both orders"
       for name in ("ops:gated_rms_norm", "specs:GatedRMSNorm", "specs:GatedRMSNorm_groups", "linen:GatedRMSNorm",
                    "nnx:GatedRMSNorm", "equinox:GatedRMSNorm")},
    **{name: "AdaLN: the shift and scale come from the conditioning (here from x itself), not from x's scale"
       for name in ("ops:adaptive_norm", "specs:AdaptiveNorm", "specs:AdaptiveNorm_rms", "linen:AdaptiveNorm",
                    "nnx:AdaptiveNorm", "equinox:AdaptiveNorm")},
    "specs:BatchNorm_eval": "normalizes by its moving statistics",
    "specs:Normalization": "normalizes by its adapted statistics",
    "specs:Normalization_given": "normalizes by given statistics",
    "linen:SpectralNorm": "x is the input of the wrapped Dense layer, whose weight is normalized",
    "nnx:SpectralNorm": "x is the input of the wrapped Linear layer",
    "linen:WeightNorm": "x is the input of the wrapped Dense layer",
    "nnx:WeightNorm": "x is the input of the wrapped Linear layer",
    "equinox:SpectralNorm-Linear": "x is the input of the wrapped layer",
    "equinox:SpectralNorm-Conv1d": "x is the input of the wrapped layer",
    "equinox:WeightNorm-Linear": "x is the input of the wrapped layer",
    "equinox:WeightNorm-Conv1d-all": "x is the input of the wrapped layer",
}
#: Cases whose empty input is no batch: they raise or normalize a weight, checked elsewhere.
NO_EMPTY_BATCH = {
    "ops:spectral_normalize": "a weight matrix, never empty", "ops:weight_normalize": "a weight",
    "ops:regularization_loss": "x stands for a scale vector", "ops:apply_constraints": "x stands for a scale",
    "ops:moments": "reduces over the batch: (0, 0) by the hostile table's empty_* rows",
    "specs:SpectralNorm": "a weight", "specs:SpectralNorm_eval": "a weight", "specs:WeightNorm": "a weight",
    "equinox:RMSNorm": "equinox's layers take one example (no batch axis)",
    "equinox:LayerNorm": "one example", "equinox:GroupNorm": "one example",
    "equinox:DyT": "one example", "equinox:Derf": "one example",
    "equinox:AddLayerNorm": "one example", "equinox:AddRMSNorm": "one example", "equinox:GatedRMSNorm": "one example",
    **{name: "the registry's gate is a fixed (4, 3, 6) array; the op and spec cases (a gate made from x) take the "
             "empty batch" for name in ("linen:GatedRMSNorm", "nnx:GatedRMSNorm", "linen:AdaptiveNorm",
                                        "nnx:AdaptiveNorm")},
    "equinox:AdaptiveNorm": "one example", "equinox:LayerNormFP8": "one example", "equinox:RMSNormFP8": "one example",
    "equinox:SpectralNorm-Linear": "one example", "equinox:SpectralNorm-Conv1d": "one example",
    "equinox:WeightNorm-Linear": "one example", "equinox:WeightNorm-Conv1d-all": "one example",
    "linen:SpectralNorm": "a Dense layer's input", "nnx:SpectralNorm": "a Linear layer's input",
    "linen:WeightNorm": "a Dense layer's input", "nnx:WeightNorm": "a Linear layer's input",
}
#: Cases whose bf16 input the wrapped peer layer itself refuses, or whose output is not in the input's dtype.
NO_BF16 = {
    "ops:layer_norm_fp8": "the output is fp8 whatever the input (tests/test_quantized.py: bf16 input rounded once)",
    "ops:rms_norm_fp8": "the output is fp8 whatever the input (tests/test_quantized.py)",
    **{f"{family}:{name}": "the output is fp8 whatever the input (tests/test_quantized.py)"
       for family in ("specs", "linen", "nnx", "equinox") for name in ("LayerNormFP8", "RMSNormFP8")},
    "equinox:SpectralNorm-Conv1d": "equinox's Conv1d refuses a bf16 input with float32 weights (lax.conv)",
    "equinox:WeightNorm-Conv1d-all": "equinox's Conv1d refuses a bf16 input with float32 weights (lax.conv)",
}
_DEFAULT_TIER = {"specs:LayerNorm", "specs:BatchNorm", "impl:layer_norm-pallas", "impl:LayerNorm-rms_scaling"}


def _params(names):
    """The cases of ``names`` that this installation has (the equinox ones need equinox)."""
    return [pytest.param(n, id=n, marks=[] if n in _DEFAULT_TIER else [pytest.mark.full])
            for n in names if n in CASES]


def _y(case: ex.Case, x, params=None):
    y, _ = jax.jit(case.apply)(case.params if params is None else params, case.state, x)
    return y


def _normalized(case: ex.Case, x):
    """The normalized output alone (ops that also return statistics, e.g. ``normalize_batch_in_training``,
    return it first)."""
    return [v for v in jax.tree.leaves(_y(case, x)) if ex._inexact(v)][0]


def _leaves(y):
    return [np.asarray(v, np.float64) for v in jax.tree.leaves(y) if ex._inexact(v)]


def _assert_same(got, want, atol, rtol=0.0, what=""):
    g, w = _leaves(got), _leaves(want)
    assert len(g) == len(w)
    for a, b in zip(g, w, strict=True):
        assert np.all(np.isfinite(a)), f"{what}: non-finite output"
        np.testing.assert_allclose(a, b, atol=atol, rtol=rtol, err_msg=what)


# --------------------------------------------------------------------------------------------- the promises


def test_every_case_declares_its_promises():
    def here(names):  # the declared names this installation has cases for (the equinox ones need equinox)
        return {n for n in names if ex.eqx is not None or not n.startswith("equinox:")}

    declared = here(SCALE_FREE | set(NEITHER))
    assert set(CASES) == declared, sorted(set(CASES) ^ declared)
    assert not SCALE_FREE & set(NEITHER) and OFFSET_FREE <= SCALE_FREE
    assert here(NO_EMPTY_BATCH) <= set(CASES) and here(NO_BF16) <= set(CASES)
    if ex.eqx is not None:
        assert {n for n in CASES if n.startswith("equinox:")}, "equinox cases missing"


@pytest.mark.parametrize("name", _params(sorted(SCALE_FREE)))
def test_magnitude_inside_the_default_range(name):
    """x * 2**6, 2**26 and 2**46 (deviations up to ~2**49): the same output, to float32 rounding."""
    case = CASES[name]()
    base = _normalized(case, case.x * 2.0**6)
    for k in (26, 46):
        _assert_same(_normalized(case, case.x * 2.0**k), base, atol=2e-5, rtol=2e-5, what=f"{name} at x * 2**{k}")


@pytest.mark.parametrize("name", _params(sorted(OFFSET_FREE)))
def test_offset_data(name):
    """x + 1e4 normalizes as x (float32 rounds x + 1e4 to 2**-10, a few 1e-4 of x's std 2)."""
    case = CASES[name]()
    _assert_same(_normalized(case, case.x + 1e4), _normalized(case, case.x), atol=2e-3, what=f"{name} on x + 1e4")


@pytest.mark.parametrize("name", _params(sorted(set(CASES) - set(NO_BF16))))
def test_bf16_input(name):
    """bf16 input: finite output, within bf16's rounding of the float32 computation on the same values; ops and
    specs return bf16 (the drop-ins follow Flax's and equinox's dtype rules, checked by their own tests)."""
    case = CASES[name]()
    x16 = case.x.astype(jnp.bfloat16)
    got = _y(case, x16)
    want = _y(case, x16.astype(jnp.float32))
    scale = max(1.0, max(float(np.max(np.abs(w))) for w in _leaves(want)))
    _assert_same(got, want, atol=3e-2 * scale, rtol=2e-2, what=f"{name} in bf16")
    if name.split(":")[0] in ("ops", "specs", "impl") and name not in NEITHER:
        assert jax.tree.leaves(got)[0].dtype == jnp.bfloat16, name


@pytest.mark.parametrize("name", _params(sorted(set(CASES) - set(NO_EMPTY_BATCH))))
def test_empty_batch(name):
    """No example: an empty output of the input's shape, the state returned bit for bit."""
    case = CASES[name]()
    empty = case.x[:0]
    y, state = jax.jit(case.apply)(case.params, case.state, empty)
    outputs = [v for v in jax.tree.leaves(y) if ex._inexact(v)]
    assert outputs and all(v.shape[0] == 0 for v in outputs[:1]), [v.shape for v in outputs]
    assert outputs[0].shape == empty.shape
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(case.state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# The extreme range: every op and spec that takes extreme_range, and the rms_scaling form.
EXTREME = {
    "layer_norm": lambda x: jaxnorm.layer_norm(x, epsilon=0.0, extreme_range=True),
    "rms_norm": lambda x: jaxnorm.rms_norm(x, epsilon=0.0, extreme_range=True),
    "group_norm": lambda x: jaxnorm.group_norm(x, num_groups=2, epsilon=0.0, extreme_range=True),
    "instance_norm": lambda x: jaxnorm.instance_norm(x, epsilon=0.0, extreme_range=True),
    "unit_norm": lambda x: jaxnorm.unit_norm(x, epsilon=0.0, extreme_range=True),
    "normalize_batch_in_training": lambda x: jaxnorm.normalize_batch_in_training(
        x, None, None, (0, 1), epsilon=0.0, extreme_range=True)[0],
    "BatchNorm": lambda x: jaxnorm.BatchNorm(epsilon=0.0, extreme_range=True).apply(
        *jaxnorm.BatchNorm().init(None, x), x, training=True)[0],
    "LayerNorm-rms_scaling": lambda x: jaxnorm.LayerNorm(rms_scaling=True, epsilon=0.0, extreme_range=True).apply(
        jaxnorm.LayerNorm(rms_scaling=True).init(None, x)[0], {}, x)[0],
    "GroupNorm": lambda x: jaxnorm.GroupNorm(num_groups=2, epsilon=0.0, extreme_range=True).apply(
        *jaxnorm.GroupNorm(num_groups=2).init(None, x), x)[0],
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=[] if n == "LayerNorm-rms_scaling" else [pytest.mark.full])
                                  for n in EXTREME])
def test_extreme_range_at_any_magnitude(name):
    """extreme_range=True with epsilon=0: x * 2**100 (deviations near 1e30) and x * 2**-100 (variance near
    1e-60) normalize as x."""
    f = jax.jit(EXTREME[name])
    x = ex._normal((4, 3, 8), 0, loc=1.0, scale=2.0)
    base = f(x)
    for k in (100, -100):
        _assert_same(f(x * 2.0**k), base, atol=2e-5, rtol=2e-5, what=f"{name} at x * 2**{k}")


@pytest.mark.parametrize("call, match", [
    (lambda x: jaxnorm.layer_norm(x, where=x > 0, implementation="pallas"), r"implementation='pallas' does not "
     r"cover this call: .*where.*Use implementation='xla'"),
    (lambda x: jaxnorm.rms_norm(x, extreme_range=True, implementation="pallas"),
     r"implementation='pallas' does not cover extreme_range=True.*implementation='xla'"),
    (lambda x: jaxnorm.LayerNorm(implementation="pallas").apply(
        jaxnorm.LayerNorm().init(None, x)[0], {}, x, mask=x > 0),
     r"does not cover this call.*implementation='xla'"),
], ids=["mask-op", "extreme_range", "mask-spec"])
def test_pallas_refuses_what_it_does_not_cover(call, match):
    with pytest.raises(ValueError, match=match):
        call(ex._normal((4, 64), 0))


def test_long_reductions_inside_the_default_range():
    """The default range at a long reduction: rows of 2**20 values at deviations near 2**48 (their sum of squares
    near 2**117, inside float32), LayerNorm by XLA and Pallas, against the same rows at 2**8."""
    x = ex._normal((1, 2**20), 5)
    for impl in ("xla", "pallas"):
        f = jax.jit(lambda v, impl=impl: jaxnorm.layer_norm(v, implementation=impl))
        if impl == "pallas":  # rows longer than the kernels' block: 2**14 values, 64 rows
            x = x.reshape(64, 2**14)
        _assert_same(f(x * 2.0**46), f(x * 2.0**6), atol=2e-5, rtol=2e-5, what=impl)


def test_the_implementations_agree():
    """Pallas and XLA, LayerNorm and RMSNorm: the same output to float32 rounding (offset data included)."""
    x = ex._normal((8, 256), 2, loc=1e3, scale=1.0)
    for op in (jaxnorm.layer_norm, jaxnorm.rms_norm):
        np.testing.assert_allclose(op(x, implementation="pallas"), op(x, implementation="xla"), atol=2e-3)
    assert dataclasses.replace(jaxnorm.LayerNorm(), implementation="pallas").implementation == "pallas"


def _bf16(tree):
    return jax.tree.map(lambda v: v.astype(jnp.bfloat16) if ex._inexact(v) else v, tree)


@pytest.mark.parametrize("name", _params(sorted(CASES)))
def test_strict_dtype_promotion(name):
    """Under ``jax.numpy_dtype_promotion("strict")`` (equinox's own tests run under it): every layer runs where
    every array is bf16 (input, parameters and state), forward and gradient, as equinox's layers do, and gives
    what standard promotion gives."""
    case = CASES[name]()
    params, state, x = _bf16(case.params), _bf16(case.state), case.x.astype(jnp.bfloat16)
    step = jax.jit(ex._train_step(case.apply))
    want = step(params, state, x)
    with jax.numpy_dtype_promotion("strict"):
        got = jax.jit(ex._train_step(case.apply))(params, state, x)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a, np.float64), np.asarray(b, np.float64))
