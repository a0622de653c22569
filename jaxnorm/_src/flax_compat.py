"""What the Flax drop-ins (:mod:`jaxnorm.linen`, :mod:`jaxnorm.nnx`) share: each normalization's call, the dtype
and argument policy. No math: the calls hand checked inputs to the ops and the moving-statistics rule.

A Linen and an NNX class differ only in how they hold their variables (created in a ``compact`` call, or held as
``nnx.Param``/``nnx.BatchStat``) and how they promote dtypes (``canonicalize_dtype``, or the module's
``promote_dtype``). Each family hands a call below its :data:`Promote` step and keeps Flax's attribute names
(``epsilon``, ``reduction_axes``, ``feature_axes``, ``axis_name``, ``axis_index_groups``, ``extreme_range``),
which the calls read from the module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxnorm._src import collectives, moving, normalize, pointwise, validation
from jaxnorm._src import adaptive as adaptive_lib
from jaxnorm._src import gated as gated_lib
from jaxnorm._src import quantized as quantized_lib
from jaxnorm._src import residual as residual_lib

#: A family's variables and dtype rule: ``promote(x, feature_axes) -> (x, variables, out_dtype)`` with the
#: variables (``scale``, ``bias``; BatchNorm's ``mean``, ``var`` first) created or read and checked for ``x``,
#: None where disabled, and ``x`` as the family promotes it.
Promote = Callable[[jax.Array, tuple[int, ...]], tuple[jax.Array, list[Any], Any]]


def _normalized(
    mdl: Any, x: jax.Array, feature_axes: tuple[int, ...], mask: Any, promote: Promote,
    op: Callable[..., jax.Array], statistics: bool = True,
) -> jax.Array:
    """The steps every Flax normalization takes: promote, cast ``x`` to the computation's dtype, shape the
    per-feature params onto ``feature_axes`` (scalars stay scalars), then ``op(xc, *params, mask, axis_name=...,
    extreme_range=...)`` (without those two for a layer without ``statistics``) and cast."""
    x, values, out_dtype = promote(x, feature_axes)
    xc = compute_input(x, out_dtype)
    shape = [d if i in feature_axes else 1 for i, d in enumerate(x.shape)]
    values = [v if v is None or jnp.ndim(v) == 0 else v.reshape(shape) for v in values]
    y = op(xc, *values, validation.numpy_mask(mask, xc), **(core_options(mdl) if statistics else {}))
    return y.astype(out_dtype)


def core_options(mdl: Any) -> dict[str, Any]:
    """The keyword arguments every normalization passes to the ops: the named axis with its device groups, and
    ``extreme_range`` (checked again at the call: NNX attributes are mutable)."""
    return {
        "axis_name": sync_axis(mdl.axis_name, mdl.axis_index_groups, _owner(mdl)),
        "extreme_range": validation.check_bool(mdl.extreme_range, "extreme_range"),
    }


def _owner(mdl: Any) -> str:
    return f"{type(mdl).__module__}.{type(mdl).__name__}"


def layer_norm(mdl: Any, x: Any, mask: Any, promote: Promote, center: bool = True) -> jax.Array:
    """Flax's ``LayerNorm`` call (``center=False``: ``RMSNorm``'s, the mean of squares and no ``bias``):
    statistics over ``reduction_axes``, ``scale``/``bias`` over ``feature_axes``; jaxnorm's ``scale_offset``
    added to ``scale``."""
    x = jnp.asarray(x)
    reduce = validation.canonicalize_axes(mdl.reduction_axes, x.ndim, "reduction_axes")
    feature = validation.canonicalize_axes(mdl.feature_axes, x.ndim, "feature_axes")
    offset = validation.check_scale_offset(mdl.scale_offset, mdl.use_scale)

    def op(xc: jax.Array, *values: Any, **options: Any) -> jax.Array:
        scale, *bias, m = values  # RMSNorm's promote gives no bias
        return normalize.normalize_layer(xc, scale, bias[0] if bias else None, reduce, mdl.epsilon, m,
                                         center=center, scale_offset=offset, **options)

    return _normalized(mdl, x, feature, mask, promote, op)


def rms_norm(mdl: Any, x: Any, mask: Any, promote: Promote) -> jax.Array:
    """Flax's ``RMSNorm`` call: :func:`layer_norm`'s with ``center=False``."""
    return layer_norm(mdl, x, mask, promote, center=False)


def gated_rms_norm(mdl: Any, x: Any, gate: Any, mask: Any, promote: Promote) -> jax.Array:
    """The gated RMSNorm drop-ins' call: Flax's ``RMSNorm`` over the last axis (``reduction_axes`` and
    ``feature_axes`` must be it), gated by ``silu(gate)`` in ``mdl.norm_before_gate``'s order
    (:func:`gated.gated_normalize`, over ``mdl.group_size`` groups)."""
    x = jnp.asarray(x)
    last = (x.ndim - 1,)
    for name in ("reduction_axes", "feature_axes"):
        if validation.canonicalize_axes(getattr(mdl, name), x.ndim, name) != last:
            raise ValueError(
                f"{_owner(mdl)} normalizes the last axis (the features, with the gate's groups), got {name}="
                f"{getattr(mdl, name)!r}. Move the features last and keep {name}=-1."
            )
    norm_before_gate, group_size = gated_lib.check_options(mdl.norm_before_gate, mdl.group_size)
    gate = gated_lib.check_gate(gate, validation.check_float_array(x, "x"))
    offset = validation.check_scale_offset(mdl.scale_offset, mdl.use_scale)
    return _normalized(mdl, x, last, mask, promote, lambda xc, scale, m, axis_name, extreme_range: (
        gated_lib.gated_normalize(xc, gate, scale, norm_before_gate, group_size, mdl.epsilon, m, axis_name,
                                  extreme_range=extreme_range, scale_offset=offset)))


def adaptive_norm(mdl: Any, x: Any, shift: Any, scale: Any, mask: Any) -> jax.Array:
    """The AdaLN drop-ins' call: statistics over ``reduction_axes`` (LayerNorm's, or RMSNorm's with ``mdl.rms``),
    modulated by ``shift``/``scale`` (:func:`adaptive.adaptive_norm`); no params, output in ``x``'s dtype."""
    x = validation.check_float_array(jnp.asarray(x), "x")
    reduce = validation.canonicalize_axes(mdl.reduction_axes, x.ndim, "reduction_axes")
    options = core_options(mdl)
    return adaptive_lib.modulate(
        x, adaptive_lib.modulation(shift, x, "shift"), adaptive_lib.modulation(scale, x, "scale"), reduce,
        mdl.epsilon, validation.numpy_mask(mask, x), options["axis_name"],
        rms=validation.check_bool(mdl.rms, "rms"), extreme_range=options["extreme_range"],
    )


def quantized_norm(
    mdl: Any, x: Any, out_scale: Any, mask: Any, promote: Promote, norm: Callable[..., jax.Array]
) -> tuple[jax.Array, jax.Array]:
    """The fp8-output drop-ins' call: ``norm`` (the family's :func:`layer_norm` or :func:`rms_norm` call, Flax's
    dtype rule) quantized to ``mdl.out_dtype`` with ``out_scale``: ``(q, amax)`` (:func:`quantized.quantize`)."""
    s, dtype = quantized_lib.check_quantization(out_scale, mdl.out_dtype)
    return quantized_lib.quantize(norm(mdl, x, mask, promote), s, dtype)


def add_norm(
    mdl: Any, x: Any, residual: Any, mask: Any, promote: Promote, norm: Callable[..., jax.Array], gate: Any = None
) -> tuple[jax.Array, jax.Array]:
    """The add & norm drop-ins' call, after the family's own ``Dropout`` on ``x``: ``(norm(h), h)`` with the new
    residual stream ``h = gate * x + residual`` of :func:`residual.residual_sum` (``mdl.residual_in_float32``;
    ``gate`` None or AdaLN-Zero's, per example or broadcasting) and
    ``norm`` the family's :func:`layer_norm` or :func:`rms_norm` call on ``h``: the unfused Flax form
    ``h = x + residual; y = LayerNorm()(h)``, its dtype rule included."""
    x = validation.check_float_array(x, "x")
    stream = validation.check_bool(mdl.residual_in_float32, "residual_in_float32")
    h = residual_lib.residual_sum(x, residual, stream, 0.0, None, gate)
    return norm(mdl, h, mask, promote), h


def instance_norm(mdl: Any, x: Any, mask: Any, promote: Promote) -> jax.Array:
    """Flax's ``InstanceNorm`` call: statistics over every axis but the batch (0) and ``feature_axes``."""
    x = jnp.asarray(x)
    feature = validation.canonicalize_axes(mdl.feature_axes, x.ndim, "feature_axes")
    reduce = tuple(instance_reduction_axes(feature, x.ndim))
    return _normalized(mdl, x, feature, mask, promote, lambda xc, scale, bias, m, **options: (
        normalize.normalize_by_moments(xc, scale, bias, reduce, mdl.epsilon, m, **options)[0]))


def group_norm(
    mdl: Any, x: Any, mask: Any, promote: Promote, num_groups: int, channels_last: bool = False
) -> jax.Array:
    """Flax's ``GroupNorm`` call: ``num_groups`` groups of the last axis, statistics over each group's channels and
    ``reduction_axes`` but its last (the channels; every axis but the first by default). ``channels_last``: raise
    Linen's error when that last axis is not the input's last."""
    x = jnp.asarray(x)
    axes = list(range(1, x.ndim - 1)) + [-1] if mdl.reduction_axes is None else mdl.reduction_axes
    reduce = validation.canonicalize_axes(axes, x.ndim, "reduction_axes")
    if channels_last and reduce[-1] != x.ndim - 1:
        raise ValueError(
            f"The reduction axes must include the final dimension as this is assumed to be the feature axis "
            f"(got reduction_axes={mdl.reduction_axes!r} for an input of rank {x.ndim}). Add -1."
        )
    return _normalized(mdl, x, (x.ndim - 1,), mask, promote, lambda xc, scale, bias, m, **options: (
        normalize.normalize_groups(xc, scale, bias, x.ndim - 1, num_groups, reduce[:-1], mdl.epsilon, m, **options)))


def dynamic(mdl: Any, x: Any, mask: Any, promote: Promote) -> jax.Array:
    """DyT's call, or Derf's: ``promote`` gives ``[alpha, scale, bias]`` (DyT) or ``[alpha, shift, scale, bias]``
    (Derf), ``scale``/``bias`` over ``feature_axes``; a point-wise map (:func:`jaxnorm._src.pointwise.pointwise`),
    no statistics."""
    x = jnp.asarray(x)
    feature = validation.canonicalize_axes(mdl.feature_axes, x.ndim, "feature_axes")

    def op(xc: jax.Array, *values: Any) -> jax.Array:
        *scalars, scale, bias, m = values
        erf = len(scalars) == 2  # Derf's shift
        return pointwise.pointwise(xc, scalars[0], scalars[1] if erf else None, scale, bias, erf=erf,
                                   mask=None if m is None else jnp.broadcast_to(m, xc.shape))

    return _normalized(mdl, x, feature, mask, promote, op, statistics=False)


def batch_norm(
    mdl: Any, x: Any, use_running_average: bool, mask: Any, promote: Promote, moving_stats: Mapping[str, Any],
    rule: moving.Rule, update: bool = True,
) -> tuple[jax.Array, dict[str, jax.Array] | None]:
    """Flax's ``BatchNorm`` call: ``(y, new moving statistics)``, the latter None with running averages or
    ``update=False`` (Linen's ``init``). ``promote`` gives ``[mean, var, scale, bias]``; ``moving_stats`` are the
    stored ``mean``, ``var`` (and the rule's ``steps``), advanced by ``moving.update`` from the batch's."""
    x = jnp.asarray(x)
    feature = validation.canonicalize_axes(mdl.axis, x.ndim, "axis")
    reduce = validation.complement_axes(feature, x.ndim)
    if use_running_average:
        y = _normalized(mdl, x, feature, None, promote, lambda xc, mean, var, scale, bias, m, **options: (
            normalize.normalize_by_stats(xc, mean, var, scale, bias, mdl.epsilon)))
        return y, None
    batch: list[Any] = []

    def op(xc: jax.Array, mean: Any, var: Any, scale: Any, bias: Any, m: Any, **options: Any) -> jax.Array:
        if not update:
            options["axis_name"] = None  # Flax: no cross-device statistics while initializing
        y, *moments = normalize.normalize_by_moments(xc, scale, bias, reduce, mdl.epsilon, m, **options)
        batch.extend(jnp.squeeze(v, reduce) for v in moments)
        return y

    promoted: list[jax.Array] = []

    def keep(x: jax.Array, feature_axes: tuple[int, ...]) -> tuple[jax.Array, list[Any], Any]:
        out = promote(x, feature_axes)
        promoted.append(out[0])  # the statistics' dtype is Flax's for x as promoted
        return out

    y = _normalized(mdl, x, feature, mask, keep, op)
    if not update:
        return y, None
    count, mean, var = batch
    sdt = flax_stats_dtype(promoted[0], mdl.dtype, getattr(mdl, "force_float32_reductions", True))
    old = moving.migrate(dict(moving_stats), mean.shape, rule)
    return y, moving.update(old, count, mean.astype(sdt), var.astype(real_dtype(sdt)), rule)


def sync_axis(axis_name: Any, axis_index_groups: Any, owner: str) -> Any:
    """The ``axis_name`` to hand the core: ``axis_name`` itself, or with Flax's ``axis_index_groups`` attached
    (statistics merged within each group of devices). Raises ``ValueError`` for groups without one name."""
    return collectives.with_groups(axis_name, axis_index_groups, f"{owner}: ")


def compute_input(x: Any, out_dtype: Any) -> jax.Array:
    """``x`` cast to the dtype the normalization runs in, so that the core returns Flax's output precision.

    Flax normalizes in ``promote(x.dtype, float32)`` and casts to the output dtype; the core normalizes in
    ``promote(x.dtype, float32)`` and returns ``x.dtype``. Widening ``x`` to ``promote(x.dtype, out_dtype)`` first
    (exact) makes the two agree: bf16 in with float32 params gives float32 out. This is dtype policy only.
    """
    x = jnp.asarray(x)
    x = x.astype(validation.result_dtype(x.dtype, out_dtype))
    if jnp.iscomplexobj(x):  # Flax's layers normalize complex input (statistics: E[x], E|x - E[x]|^2)
        return x
    return validation.check_float_array(x, "x")


def flax_stats_dtype(x: jax.Array, dtype: Any, force_float32_reductions: bool = True) -> Any:
    """The dtype Flax's ``_compute_stats`` returns, so that updated ``batch_stats`` keep Flax's dtype."""
    base = jnp.result_type(x) if dtype is None else dtype
    if jnp.issubdtype(base, jnp.complexfloating):  # the mean's dtype; the variance is real (real_dtype)
        return validation.result_dtype(base, jnp.float32) if force_float32_reductions else jnp.dtype(base)
    return validation.stats_dtype(base) if force_float32_reductions else base


def real_dtype(dtype: Any) -> Any:
    """The real dtype of ``dtype`` (``float32`` for ``complex64``): the dtype of a complex input's variance."""
    return jnp.finfo(dtype).dtype


def flax_groups(num_groups: Any, group_size: Any, channels: int) -> int:
    """Flax's GroupNorm rule: exactly one of ``num_groups`` (positive) and ``group_size``, dividing the channels.
    Raises Flax's ``ValueError`` messages, with the fix."""
    if (num_groups is None) == (group_size is None):
        raise ValueError(
            "Either `num_groups` or `group_size` should be specified. If `group_size` is to be specified, pass "
            f"`num_groups=None` as argument to override the default `num_groups` value of 32 (got "
            f"num_groups={num_groups!r}, group_size={group_size!r})."
        )
    if num_groups is not None and (not isinstance(num_groups, int) or num_groups <= 0):
        raise ValueError(
            f"Number of groups ({num_groups!r}) does not divide the number of channels ({channels}): `num_groups` "
            "must be a positive int."
        )
    return validation.resolve_groups(num_groups, group_size, channels, -1)


def instance_reduction_axes(feature_axes: tuple[int, ...], ndim: int) -> list[int]:
    """Flax InstanceNorm's reduced axes: all but the batch (0) and ``feature_axes``, which must not hold 0."""
    if 0 in feature_axes:
        raise ValueError(
            "The channel axes cannot include the leading dimension as this is assumed to be the batch axis "
            f"(got feature_axes resolving to {feature_axes}). Give the channel axes only, e.g. -1."
        )
    return [a for a in range(1, ndim) if a not in feature_axes]
