"""The Flax drop-in registry: every (drop-in, flavour) pair once, for tests/test_flax_dropin.py to drive through
the same checks (variable trees, init values, values, gradients, dtype policy, masks, state updates, errors),
as tests/registry.py does for the specs.

A pair is one of jaxnorm.linen's or jaxnorm.nnx's classes and the Flax class it replaces. ``build`` makes either
class from the same arguments, so ours and Flax's are built, initialized and called identically; the flags say
which checks apply. Adding a drop-in to every check is one ``Pair`` here.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
from flax import linen as nn
from flax import nnx
from flax.errors import ScopeParamShapeError

import jaxnorm.linen as jln
import jaxnorm.nnx as jnnx
from jaxnorm._src import moving

BF16 = jnp.bfloat16

#: ``ErrorCase.theirs`` where Flax runs the case without an error (a documented deviation: ours raises).
ACCEPTS = "accepts"


def _short(value) -> str:
    """A dtype by its name, a function by its own name (``normal`` for ``initializers.normal()``), else repr."""
    if isinstance(value, type):
        return jnp.dtype(value).name
    if callable(value):
        return getattr(value, "__qualname__", "fn").split(".")[0]
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(value))


@dataclasses.dataclass(frozen=True)
class Config:
    """A complete set of constructor arguments and the shape of the input they are for."""

    shape: tuple[int, ...]
    kwargs: dict[str, Any]

    @property
    def id(self) -> str:
        """A short, stable test id (no memory addresses: every pytest-xdist worker collects the same tests)."""
        args = ",".join(f"{k}={_short(v)}" for k, v in self.kwargs.items())
        return f"{self.shape}-{args}" if args else str(self.shape)

    @property
    def half(self) -> bool:
        """Whether the config computes or stores in bfloat16 (values then agree to bfloat16 rounding only)."""
        return any(v is BF16 for v in self.kwargs.values())


@dataclasses.dataclass(frozen=True)
class ErrorCase:
    """A bad argument or input, run through ours and Flax's the same way (build, init, call).

    ``kwargs``: constructor arguments on top of the pair's ``kwargs``; ``shape``: the input at init/construction
    (None: the pair's); ``call_shape``: the input at the call (None: ``shape``), e.g. another feature count than
    the variables were made for; ``dtype``: the inputs' dtype; ``call``: the call's keyword arguments (None: the
    pair's training call). ``ours``: ``(exception type, regex)``; ``theirs``: the same for Flax (a warning type
    where Flax only warns: this suite turns warnings into errors), or ``ACCEPTS`` where Flax runs without an
    error (our deviation, documented in jaxnorm.linen / jaxnorm.nnx).
    """

    id: str
    ours: tuple[type, str]
    theirs: tuple[type, str] | str
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    shape: tuple[int, ...] | None = None
    call_shape: tuple[int, ...] | None = None
    dtype: Any = jnp.float32
    call: dict[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class Pair:
    """One drop-in and the Flax class it replaces, in one flavour ('linen' or 'nnx').

    ``build(cls, shape, kwargs, rngs)``: the module for an input of ``shape`` (``rngs`` is None for linen; nnx
    classes get ``num_features`` from the shape and ``rngs``). ``shape``/``kwargs``: the example input and the
    arguments the checks start from; ``configs``: argument sets for the tree, init, value, gradient and
    state-update checks (the first is ``(shape, kwargs)``). ``call(train)``: the call's keyword arguments in
    training (True) or inference (False); ``modes``: the values of ``train`` the layer distinguishes;
    ``init_call``: linen ``init``'s keyword arguments. Flags: ``state`` (batch_stats / nnx.BatchStat that a
    training call updates), ``mask`` (``__call__`` takes ``mask``), ``axis_name`` (statistics merge over a named
    axis), ``centered`` (subtracts a mean: Flax's default one-pass variance cancels on offset data, ours does
    not).
    ``step_kwargs``: arguments for the checks over several training steps (a momentum that moves the state
    visibly); ``exact_kwargs``: Flax's arguments for its most exact arithmetic (the gradient check, which
    compares to float32 rounding); ``extras``: jaxnorm's options beyond Flax's arguments and their defaults;
    ``attrs``: nnx attributes that must agree with Flax's (a Param compares by presence); ``init_state``: values
    every initial state variable of that name holds; ``dtype_cases``: pair-specific ``(id, x dtype, kwargs)`` for
    the dtype-policy check, after the common ones; ``errors``: the error cases.
    """

    layer: str
    flavour: str
    ours: type
    theirs: type | None  # None: a drop-in Flax has no class for (UNPEERED)
    build: Callable[..., Any]
    shape: tuple[int, ...]
    kwargs: dict[str, Any]
    configs: tuple[Config, ...]
    call: Callable[[bool], dict[str, Any]] = lambda train: {}
    modes: tuple[bool, ...] = (True,)
    init_call: dict[str, Any] = dataclasses.field(default_factory=dict)
    state: bool = False
    mask: bool = True
    axis_name: bool = True
    centered: bool = True
    step_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    exact_kwargs: dict[str, Any] = dataclasses.field(default_factory=lambda: {"use_fast_variance": False})
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)
    attrs: tuple[str, ...] = ()
    init_state: dict[str, float] = dataclasses.field(default_factory=dict)
    dtype_cases: tuple[tuple[str, Any, dict[str, Any]], ...] = ()
    errors: tuple[ErrorCase, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.flavour}.{self.layer}"


# ------------------------------------------------------------------------------------------------- builders


def _axes(axes, ndim):
    return tuple(a % ndim for a in (axes if isinstance(axes, tuple | list) else (axes,)))


def _linen(cls, shape, kwargs, rngs=None):
    return cls(**kwargs)


def _nnx(num_features: Callable[[tuple[int, ...], dict], int]):
    """An nnx builder: ``cls(num_features(shape, kwargs), **kwargs, rngs=rngs)``."""

    def build(cls, shape, kwargs, rngs):
        return cls(num_features(shape, kwargs), **kwargs, rngs=rngs)

    return build


def _features(key: str, default):
    """num_features: the product of the input's sizes along ``kwargs[key]`` (``default`` when not given)."""
    return lambda shape, kw: math.prod(shape[a] for a in _axes(kw.get(key, default), len(shape)))


def _wrapped(flavour: str):
    """A builder of SpectralNorm/WeightNorm around a Dense/Linear (4 outputs), or ``kwargs['layer']='conv'``
    a 3x3 Conv (4 outputs); ``kwargs['layer_dtype']`` is the wrapped layer's dtype and param_dtype."""

    def build(cls, shape, kwargs, rngs=None):
        kwargs = dict(kwargs)
        conv = kwargs.pop("layer", "dense") == "conv"
        ld = kwargs.pop("layer_dtype", None)
        ld = {} if ld is None else {"dtype": ld, "param_dtype": ld}
        if flavour == "linen":
            inner = nn.Conv(4, (3, 3), **ld) if conv else nn.Dense(4, **ld)
            return cls(inner, **kwargs)
        inner = (nnx.Conv(shape[-1], 4, (3, 3), rngs=rngs, **ld) if conv
                 else nnx.Linear(shape[-1], 4, rngs=rngs, **ld))
        return cls(inner, **kwargs, rngs=rngs)

    return build


def _configs(shape, kwargs, *more):
    return (Config(shape, kwargs),) + tuple(Config(s, k) for s, k in more)


# ------------------------------------------------------------------------------------------------- errors

_INITS = {"scale_init": nn.initializers.normal(), "bias_init": nn.initializers.uniform()}


def _common_errors(owner: str, flavour: str, other_features: tuple[int, ...]) -> tuple[ErrorCase, ...]:
    """The errors every activation normalization shares, with Flax's behaviour in each."""
    if flavour == "linen":  # linen's params are checked by Flax's own ScopeParamShapeError, in both
        stored = dict(ours=(ScopeParamShapeError, r"parameter \"scale\""),
                      theirs=(ScopeParamShapeError, r"parameter \"scale\""))
    else:  # ours names the variable; Flax fails deep inside, in a reshape or a broadcast
        stored = dict(ours=(ValueError, rf"`{owner}\.(mean|scale)` has shape"),
                      theirs=(TypeError, r"incompatible shapes for broadcasting" if owner == "BatchNorm"
                              else r"cannot reshape array"))
    return (
        ErrorCase("axis_index_groups-without-axis_name", kwargs={"axis_index_groups": [[0, 1], [2, 3]]},
                  ours=(ValueError, r"`axis_index_groups` needs a single `axis_name` to group over"),
                  theirs=ACCEPTS),
        ErrorCase("variables-for-other-features", call_shape=other_features, **stored),
    )


# ------------------------------------------------------------------------------------------------- the pairs

_BN_TRAIN = {"use_running_average": False}
_BN_LINEN_DTYPES = (("bf16-params=bf16-stats=bf16", BF16, {"param_dtype": BF16,
                                                             "force_float32_reductions": False}),)


def _bn(flavour: str) -> Pair:
    linen = flavour == "linen"
    configs = [
        ((2, 3, 4, 4), {"axis": 1}),
        ((4, 3), {"use_bias": False}),
        ((4, 3), {"use_scale": False}),
        ((4, 3), {"use_bias": False, "use_scale": False}),
        ((4, 3), {"param_dtype": BF16}),
        ((4, 3), {"epsilon": 1e-3, "momentum": 0.8}),
        ((4, 3), dict(_INITS)),
    ]
    if linen:  # nnx.BatchNorm takes one int axis and no force_float32_reductions
        configs[1:1] = [((2, 3, 5, 2), {"axis": (1, 2)})]
        configs.append(((4, 3), {"param_dtype": BF16, "force_float32_reductions": False}))
    errors = _common_errors("BatchNorm", flavour, (6, 5, 4))
    if linen:
        errors = errors[:-1] + (  # the stored batch_stats are checked first, naming the variable
            ErrorCase("variables-for-other-features", call_shape=(6, 5, 4),
                      ours=(ValueError, r"`batch_stats\['mean'\]` has shape \(3,\)"),
                      theirs=(TypeError, r"incompatible shapes for broadcasting")),
            ErrorCase("use_running_average-neither", kwargs={"use_running_average": None}, call={},
                      ours=(ValueError, r"use_running_average"), theirs=(ValueError, r"use_running_average")),
            ErrorCase("use_running_average-both", kwargs={"use_running_average": True}, call=_BN_TRAIN,
                      ours=(ValueError, r"use_running_average"), theirs=(ValueError, r"use_running_average")),
            ErrorCase("repeated-axis", kwargs={"axis": (-1, 2)}, ours=(ValueError, r"names the same axis"),
                      theirs=ACCEPTS),
        )
    else:
        errors += (
            ErrorCase("use_running_average-neither", kwargs={"use_running_average": None}, call={},
                      ours=(ValueError, r"No `use_running_average` argument was provided"),
                      theirs=(ValueError, r"No `use_running_average` argument was provided")),
        )
    return Pair(
        "BatchNorm", flavour, jln.BatchNorm if linen else jnnx.BatchNorm, nn.BatchNorm if linen else nnx.BatchNorm,
        _linen if linen else _nnx(_features("axis", -1)), (6, 5, 3), {}, _configs((6, 5, 3), {}, *configs),
        call=lambda train: {"use_running_average": not train}, modes=(True, False),
        init_call=_BN_TRAIN if linen else {}, state=True, step_kwargs={"momentum": 0.5},
        extras=dict(moving.DROP_IN_OPTIONS), attrs=() if linen else ("scale", "bias"),
        init_state={"mean": 0.0, "var": 1.0},
        dtype_cases=_BN_LINEN_DTYPES if linen else (),
        errors=errors,
    )


def _ln(flavour: str) -> Pair:
    linen = flavour == "linen"
    configs = [
        ((2, 3, 4, 5), {"reduction_axes": (1, 2, 3), "feature_axes": -1}),
        ((2, 3, 4, 5), {"reduction_axes": (1, 2), "feature_axes": -1}),
        ((2, 3, 4, 5), {"reduction_axes": (1, 2), "feature_axes": (1, 2)}),
        ((2, 3, 4), {"reduction_axes": -1, "feature_axes": 1}),
        ((4, 3), {"use_bias": False}),
        ((4, 3), {"use_scale": False, "use_bias": False}),
        ((4, 3), {"param_dtype": BF16}),
        ((4, 3), {"epsilon": 1e-3}),
        ((4, 3), dict(_INITS)),
    ]
    errors = _common_errors("LayerNorm", flavour, (4, 3, 7)) + (
        ErrorCase("repeated-axis", kwargs={"reduction_axes": (2, -1)}, ours=(ValueError, r"names the same axis"),
                  theirs=ACCEPTS),
        ErrorCase("axis-out-of-range", kwargs={"reduction_axes": 3},
                  ours=(ValueError, r"`reduction_axes`=3 is out of range for an input of rank 3"),
                  theirs=(IndexError, r"tuple index out of range")),
    )
    return Pair(
        "LayerNorm", flavour, jln.LayerNorm if linen else jnnx.LayerNorm, nn.LayerNorm if linen else nnx.LayerNorm,
        _linen if linen else _nnx(_features("feature_axes", -1)), (4, 3, 6), {}, _configs((4, 3, 6), {}, *configs),
        attrs=() if linen else ("scale", "bias"), errors=errors,
    )


def _rms(flavour: str) -> Pair:
    linen = flavour == "linen"
    configs = [
        ((2, 3, 6), {"reduction_axes": (1, 2), "feature_axes": -1}),
        ((2, 3, 6), {"use_scale": False}),
        ((2, 3, 6), {"dtype": BF16}),
        ((2, 3, 6), {"param_dtype": BF16}),
        ((2, 3, 6), {"epsilon": 1e-3}),
        ((2, 3, 6), {"scale_init": nn.initializers.normal()}),
    ]
    errors = _common_errors("RMSNorm", flavour, (2, 3, 7)) + (
        ErrorCase("repeated-axis", kwargs={"reduction_axes": (2, -1)}, ours=(ValueError, r"names the same axis"),
                  theirs=ACCEPTS),
    )
    return Pair(
        "RMSNorm", flavour, jln.RMSNorm if linen else jnnx.RMSNorm, nn.RMSNorm if linen else nnx.RMSNorm,
        _linen if linen else _nnx(_features("feature_axes", -1)), (2, 3, 6), {}, _configs((2, 3, 6), {}, *configs),
        centered=False, exact_kwargs={}, attrs=() if linen else ("scale",), errors=errors,
    )


def _gn(flavour: str) -> Pair:
    linen = flavour == "linen"
    configs = [
        ((2, 3, 4, 8), {"num_groups": None, "group_size": 2}),
        ((2, 3, 4, 8), {"num_groups": 2, "use_scale": False}),
        ((2, 3, 4, 8), {"num_groups": 4, "dtype": BF16}),
        ((2, 3, 4, 8), {"num_groups": 8, "reduction_axes": (1, 3), "epsilon": 1e-3}),
        ((2, 3, 4, 8), {"num_groups": 4, "use_bias": False, **_INITS}),
    ]
    errors = _common_errors("GroupNorm", flavour, (2, 3, 4, 12)) + (
        ErrorCase("num_groups-and-group_size", kwargs={"group_size": 2},
                  ours=(ValueError, r"Either `num_groups` or `group_size`"),
                  theirs=(ValueError, r"Either `num_groups` or `group_size`")),
        ErrorCase("num_groups-not-dividing", kwargs={"num_groups": 3},
                  ours=(ValueError, r"num_groups=3 does not divide the 8"),
                  theirs=(ValueError, r"Number of groups \(3\) does not divide")),
    )
    if linen:  # flax.nnx.GroupNorm does not check its reduction axes
        errors += (ErrorCase("reduction_axes-without-the-channels", kwargs={"reduction_axes": (1,)},
                             ours=(ValueError, r"must include the final dimension"),
                             theirs=(ValueError, r"must include the final dimension")),)
    return Pair(
        "GroupNorm", flavour, jln.GroupNorm if linen else jnnx.GroupNorm, nn.GroupNorm if linen else nnx.GroupNorm,
        _linen if linen else _nnx(lambda shape, kw: shape[-1]), (2, 3, 4, 8), {"num_groups": 4},
        _configs((2, 3, 4, 8), {"num_groups": 4}, *configs),
        attrs=() if linen else ("scale", "bias", "num_groups", "group_size"), errors=errors,
    )


def _in(flavour: str) -> Pair:
    linen = flavour == "linen"
    configs = [
        ((2, 3, 4, 5), {"feature_axes": (1, -1)}),
        ((2, 3, 4, 5), {"use_bias": False}),
        ((2, 3, 4, 5), {"use_scale": False}),
        ((2, 3, 4, 5), {"epsilon": 1e-3}),
    ]
    errors = _common_errors("InstanceNorm", flavour, (2, 3, 4, 6)) + (
        ErrorCase("feature_axes-with-the-batch", kwargs={"feature_axes": 0},
                  ours=(ValueError, r"cannot include the leading dimension"),
                  theirs=(ValueError, r"cannot include the leading dimension")),
    )
    return Pair(
        "InstanceNorm", flavour, jln.InstanceNorm if linen else jnnx.InstanceNorm,
        nn.InstanceNorm if linen else nnx.InstanceNorm,
        _linen if linen else _nnx(_features("feature_axes", -1)), (2, 3, 4, 5), {},
        _configs((2, 3, 4, 5), {}, *configs), attrs=() if linen else ("scale", "bias"), errors=errors,
    )


_WRAPPER_DTYPES = (("bf16-layer=bf16", BF16, {"layer_dtype": BF16}),)


def _sn(flavour: str) -> Pair:
    linen = flavour == "linen"
    configs = [
        ((2, 6, 6, 3), {"layer": "conv", "n_steps": 2}),
        ((3, 5), {"n_steps": 3, "epsilon": 1e-6}),
    ]
    ours = (r"`w` has shape \(3, 3, 2, 4\).*error_on_non_matrix=False" if linen
            else r"4D but error_on_non_matrix is True: .*\(18, 4\)")
    conv = ErrorCase("error_on_non_matrix", kwargs={"layer": "conv", "error_on_non_matrix": True},
                     shape=(1, 4, 4, 2), ours=(ValueError, ours), theirs=(ValueError, r"error_on_non_matrix"))
    return Pair(
        "SpectralNorm", flavour, jln.SpectralNorm if linen else jnnx.SpectralNorm,
        nn.SpectralNorm if linen else nnx.SpectralNorm, _wrapped(flavour), (3, 5), {},
        _configs((3, 5), {}, *configs), call=lambda train: {"update_stats": train}, modes=(True, False),
        init_call={"update_stats": False} if linen else {}, state=True, mask=False, axis_name=False,
        centered=False, exact_kwargs={}, dtype_cases=_WRAPPER_DTYPES, errors=(conv,),
    )


def _wn(flavour: str) -> Pair:
    linen = flavour == "linen"
    configs = [
        ((2, 6, 6, 3), {"layer": "conv"}),
        ((3, 5), {"variable_filter": None if linen else ..., "feature_axes": None}),
        ((3, 5), {"use_scale": False}),
        ((3, 5), {"feature_axes": 0}),
    ]
    errors = (ErrorCase("feature_axes-out-of-range", kwargs={"feature_axes": 2},
                        ours=(ValueError, r"`feature_axes`=2 is out of range"),
                        theirs=(IndexError, r"tuple index out of range")),)
    random_scales = {"scale_init": nn.initializers.normal(1.0)}
    if linen:
        configs.append(((3, 5), random_scales))
    else:  # flax.nnx.WeightNorm calls scale_init(rngs['params'], shape): an RngStream, no key (mirrored)
        errors += (ErrorCase("random-scale_init", kwargs=random_scales,
                             ours=(TypeError, r"unexpected PRNG key type"),
                             theirs=(TypeError, r"unexpected PRNG key type")),)
    return Pair(
        "WeightNorm", flavour, jln.WeightNorm if linen else jnnx.WeightNorm,
        nn.WeightNorm if linen else nnx.WeightNorm, _wrapped(flavour), (3, 5), {},
        _configs((3, 5), {}, *configs), mask=False, axis_name=False, centered=False, exact_kwargs={},
        dtype_cases=_WRAPPER_DTYPES, errors=errors,
    )


PAIRS = [make(flavour) for make in (_bn, _ln, _rms, _gn, _in, _sn, _wn) for flavour in ("linen", "nnx")]


def _pointwise(layer: str, kwargs: dict[str, Any], call: dict[str, Any] | None = None) -> Callable[[str], Pair]:
    """A drop-in with no Flax peer (DyT, Derf, AddLayerNorm, AddRMSNorm, GatedRMSNorm, AdaptiveNorm): ``theirs``
    None, no configs (test_pointwise.py, test_residual.py, test_gated.py and test_adaptive.py check them);
    test_export.py and test_promises.py run it as the peers' drop-ins, with the call's other inputs ``call``
    (the gate; the per-example shift and scale)."""

    def make(flavour: str) -> Pair:
        linen = flavour == "linen"
        return Pair(layer, flavour, getattr(jln if linen else jnnx, layer), None,
                    _linen if linen else _nnx(_features("feature_axes", -1)), (4, 3, 6), kwargs, (),
                    call=lambda train: dict(call or {}), init_call=dict(call or {}), axis_name=False, centered=False)

    return make


_GATE = {"gate": jnp.linspace(-2.0, 3.0, 72).reshape(4, 3, 6)}
_MODULATION = {"shift": jnp.linspace(-1.0, 1.0, 24).reshape(4, 6), "scale": jnp.linspace(-0.5, 0.5, 24).reshape(4, 6)}


#: The Flax-family drop-ins that Flax has no class for (the add & norm layers called with x alone, the first
#: layer's form; tests/test_residual.py checks them with a residual against the unfused Flax forms).
UNPEERED = [make(flavour) for make in (_pointwise("DyT", {}), _pointwise("Derf", {"shift_init_value": 0.25}),
                                       _pointwise("AddLayerNorm", {}), _pointwise("AddRMSNorm", {}),
                                       _pointwise("GatedRMSNorm", {"norm_before_gate": True}, _GATE),
                                       _pointwise("AdaptiveNorm", {}, _MODULATION),
                                       _pointwise("LayerNormFP8", {}, {"out_scale": 16.0}),
                                       _pointwise("RMSNormFP8", {"out_dtype": "float8_e5m2"}, {"out_scale": 16.0}))
            for flavour in ("linen", "nnx")]
