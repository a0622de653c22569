"""The normalize step every layer and op ends in, for checked inputs: the unchecked entry points.

The public ops (:mod:`ops`) and the layer specs check their arguments once, at the outermost call, then call one
of these, which trust their inputs (``scale``/``bias``/``mask`` None or of ``x``'s rank, axes canonical):
:func:`normalize_by_moments` (fresh statistics over any axes: the fused custom derivative, or the kernel's
statistics with a mask or ``axis_name``), :func:`normalize_layer` (LayerNorm/RMSNorm, the Pallas rows when asked),
:func:`normalize_groups`, :func:`normalize_unit`, :func:`normalize_by_stats` (given statistics) and
:func:`affine` (the output pass). The guarantees they keep are stated in :mod:`ops`.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxnorm._src import collectives, fused, passes, stats, validation


def normalize_by_stats(
    x: jax.Array, mean: jax.Array, var: jax.Array, scale: jax.Array | None, bias: jax.Array | None,
    epsilon: float, mask: jax.Array | None = None,
) -> jax.Array:
    """``(x - mean) * rsqrt(var + epsilon) * scale + bias`` in the statistics dtype, cast to x's dtype: ``x``
    normalized by given statistics (inference, the TF op), the counterpart of :func:`normalize_by_moments` with
    the pair in the same (Flax) order. Inputs are trusted (checked by the caller). ``mask``: see :func:`affine`."""
    if jnp.iscomplexobj(x) or jnp.iscomplexobj(mean):
        return _complex_affine(x, mean, var, scale, bias, epsilon)
    dtype = validation.stats_dtype(x.dtype)
    inv = lax.rsqrt(var.astype(dtype) + jnp.asarray(epsilon, dtype))
    if scale is not None:
        inv = inv * scale.astype(dtype)
    return affine(x, None, mean.astype(dtype), inv, bias, mask)


def _complex_affine(
    x: jax.Array, mean: jax.Array, var: jax.Array, scale: jax.Array | None, bias: jax.Array | None, epsilon: Any
) -> jax.Array:
    """``(x - mean) * rsqrt(var + epsilon) * scale + bias`` for complex ``x`` or ``mean`` (the Flax drop-ins'
    complex input, as Flax's layers take it): the real variance of ``|x - mean|``, complex arithmetic, in
    ``x``'s (complex) dtype."""
    dtype = validation.result_dtype(x, mean, jnp.complex64)
    real = jnp.finfo(dtype).dtype
    inv = lax.rsqrt(jnp.real(var).astype(real) + jnp.asarray(epsilon, real))
    if scale is not None:
        inv = inv * scale
    y = (x.astype(dtype) - mean.astype(dtype)) * inv.astype(dtype)
    return (y if bias is None else y + bias.astype(dtype)).astype(dtype)


def _complex_moments(
    x: jax.Array, scale: jax.Array | None, bias: jax.Array | None, axes: tuple[int, ...], epsilon: Any,
    mask: jax.Array | None, axis_name: Any, center: bool, extreme_range: bool,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    r""":func:`normalize_by_moments` of complex ``x`` (Flax's layers take complex input): the kernel's statistics
    of the real and imaginary parts, :math:`\mu = \mu_{re} + i\,\mu_{im}` and the real
    :math:`E|x - \mu|^2 = \sigma^2_{re} + \sigma^2_{im}` (RMS: :math:`E|x|^2`), each exact as the kernel is."""
    keep = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
    parts = [stats.normalizer(p, axes, mask, axis_name, center=center, extreme_range=extreme_range)
             for p in (jnp.real(x), jnp.imag(x))]
    count = parts[0].count.reshape(keep)
    var = (parts[0].var + parts[1].var).reshape(keep)
    mean = lax.complex(parts[0].mean, parts[1].mean).reshape(keep)
    if not center:
        mean = jnp.zeros_like(mean)
    return _complex_affine(x, mean, var, scale, bias, epsilon), count, mean, var


def affine(
    x: jax.Array, q: Any, shift: jax.Array | float, inv: jax.Array, offset: jax.Array | None,
    mask: jax.Array | None = None,
) -> jax.Array:
    """``y = (x * q - shift) * inv + offset`` in ``inv``'s dtype, cast to x's dtype: the normalize step (``q``
    None means 1). With a ``mask``, a masked-out position holding NaN or inf still gets its own (non-finite)
    output, but it contributes no gradient to ``shift``, ``inv`` and ``offset`` (their cotangents would be
    0 * inf = NaN): such positions take the same formula with the statistics and parameters held constant, and
    the finite positions the plain one. Without a mask every position is data, so nothing is held."""
    dtype = inv.dtype
    xf = x.astype(dtype)
    offset = None if offset is None else offset.astype(dtype)

    def form(v: jax.Array, shift: jax.Array | float, inv: jax.Array, offset: jax.Array | None) -> jax.Array:
        y = (v if q is None else v * q) - shift
        y = y * inv
        return y if offset is None else y + offset

    if mask is None:
        return form(xf, shift, inv, offset).astype(x.dtype)
    finite = jnp.isfinite(xf)
    held = jax.tree.map(lax.stop_gradient, (shift, inv, offset))
    y = jnp.where(finite, form(jnp.where(finite, xf, 0), shift, inv, offset), form(xf, *held))
    return y.astype(x.dtype)


def normalize_by_moments(
    x: jax.Array, scale: jax.Array | None, bias: jax.Array | None, axes: tuple[int, ...], epsilon: float,
    mask: jax.Array | None = None, axis_name: Any = None, *, center: bool = True, extreme_range: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """``(y, count, mean, var)``: ``x`` normalized by its own statistics over ``axes`` (keepdims statistics).

    The one entry point of every layer that normalizes with fresh statistics. Without a mask or ``axis_name``
    it is :func:`fused.normalize` (a hand-written backward that saves only ``x`` and float32 statistics;
    forward mode works too); with a mask or ``axis_name``, the statistics of :func:`stats.normalizer` and
    autodiff. ``scale``/``bias``: None or of x's rank. ``center=False``: RMS statistics (mean 0, ``var`` the
    mean of squares).
    """
    if jnp.iscomplexobj(x):
        return _complex_moments(x, scale, bias, tuple(axes), epsilon, mask, axis_name, center, extreme_range)
    n = math.prod(x.shape[a] for a in axes)
    keep = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
    if x.size == 0 and axis_name is None:  # an empty batch: an empty output, statistics (0, 0) of count 0
        zeros = jnp.zeros(keep, validation.stats_dtype(x.dtype))
        return x, jnp.full(keep, n, zeros.dtype), zeros, zeros
    if mask is None and axis_name is None:
        y, mean, var = fused.normalize(x, scale, bias, tuple(axes), epsilon, center=center,
                                       extreme_range=extreme_range)
        return y, jnp.full(keep, n, mean.dtype), mean.reshape(keep), var.reshape(keep)
    st = stats.normalizer(x, tuple(axes), mask, axis_name, epsilon, center=center, extreme_range=extreme_range)
    q = None if st.q is None else st.q.reshape(keep)
    inv = st.rstd_q.reshape(keep)
    if scale is not None:
        inv = inv * scale.astype(inv.dtype)
    y = affine(x, q, st.mean_q.reshape(keep) if center else 0, inv, bias, mask)
    return y, st.count.reshape(keep), st.mean.reshape(keep), st.var.reshape(keep)


def offset_scale(scale: jax.Array | None, scale_offset: float) -> jax.Array | None:
    """The multiplier of a zero-centred ``scale``: ``scale + scale_offset`` in the statistics' precision
    (``promote_types(scale.dtype, float32)``: a bfloat16 gamma near 0 plus 1 loses no bit of gamma), or ``scale``
    itself for an offset of 0 (the program is then unchanged). The gradient reaching ``scale`` is unchanged."""
    if scale is None or scale_offset == 0:
        return scale
    return scale.astype(validation.stats_dtype(scale.dtype)) + scale_offset


def normalize_layer(
    x: jax.Array, scale: jax.Array | None, bias: jax.Array | None, axes: tuple[int, ...], epsilon: float,
    mask: jax.Array | None = None, axis_name: Any = None, implementation: str = "auto", *,
    center: bool = True, extreme_range: bool = False, scale_offset: float = 0.0,
) -> jax.Array:
    """LayerNorm's and RMSNorm's (``center=False``) one entry point for checked inputs (``scale``/``bias``/
    ``mask`` None or of x's rank; ``scale_offset`` a checked float, :func:`offset_scale`): the Pallas kernels
    when asked for, else :func:`normalize_by_moments`."""
    scale = offset_scale(scale, scale_offset)
    if check_implementation(implementation) == "pallas":
        if extreme_range:
            raise ValueError(
                "implementation='pallas' does not cover extreme_range=True (the kernels square float32 "
                "deviations unscaled). Use implementation='xla' with extreme_range=True."
            )
        return pallas_rows(x, scale, bias, axes, epsilon, mask, axis_name, subtract_mean=center)
    return normalize_by_moments(x, scale, bias, axes, epsilon, mask, axis_name, center=center,
                                extreme_range=extreme_range)[0]


def normalize_unit(
    x: jax.Array, axes: tuple[int, ...], epsilon: float, mask: jax.Array | None = None, *,
    extreme_range: bool = False,
) -> jax.Array:
    """UnitNormalization's one entry point for checked inputs (``mask`` None or of x's shape)."""
    if x.size == 0:
        return x
    dtype = validation.stats_dtype(x.dtype)
    n = math.prod(x.shape[a] for a in axes)
    count = jnp.full((), n, dtype) if mask is None else passes.reduce_sum(mask, axes, dtype)
    count = jnp.maximum(count, 1)
    # max(sum x^2, eps^2) as the mean of squares floored at eps^2 / n (stats.normalizer)
    st = stats.normalizer(x, axes, mask, None, jnp.asarray(epsilon, dtype) ** 2 / count, center=False, floor=True,
                          extreme_range=extreme_range)
    keep = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
    q = None if st.q is None else st.q.reshape(keep)
    y = affine(x, q, 0, (st.rstd_q * lax.rsqrt(count)).reshape(keep), None, mask)
    # An all-zero example: y = 0 with a zero gradient (the derivative of x / eps would be 1 / eps there).
    return jnp.where(st.var_q.reshape(keep) > 0, y, lax.stop_gradient(y))


def normalize_groups(
    x: jax.Array, scale: jax.Array | None, bias: jax.Array | None, channel_axis: int, num_groups: int,
    reduce_axes: tuple[int, ...],
    epsilon: float, mask: jax.Array | None = None, axis_name: Any = None, *, extreme_range: bool = False,
) -> jax.Array:
    """GroupNorm's one entry point: ``x`` viewed with its channel axis split into ``(num_groups, C //
    num_groups)`` and normalized by :func:`normalize_by_moments` over the within-group axis and
    ``reduce_axes``. ``scale``/``bias``/``mask``: None or of x's rank."""
    c, channels = channel_axis, x.shape[channel_axis]
    split = (num_groups, channels // num_groups)

    def grouped(a: Any) -> Any:  # an array, or None
        if a is None:
            return None
        return a.reshape(a.shape[:c] + (split if a.shape[c] == channels else (1, 1)) + a.shape[c + 1 :])

    axes = tuple(sorted([a + (a > c) for a in reduce_axes if a != c] + [c + 1]))
    if mask is None and axis_name is None and x.size and not jnp.iscomplexobj(x):  # groups x inside each pass
        split = (c, num_groups)
        return fused.normalize(x, scale, bias, axes, epsilon, extreme_range=extreme_range, split=split)[0]
    y, *_ = normalize_by_moments(
        grouped(x), grouped(scale), grouped(bias), axes, epsilon, grouped(mask), axis_name,
        extreme_range=extreme_range,
    )
    return y.reshape(x.shape)


def check_batched(shape: tuple[int, ...], op: str, alternative: str = "") -> None:
    """``ValueError`` unless ``shape`` has a batch axis and a channel axis (GroupNorm's default reduction)."""
    if len(shape) < 2:
        raise ValueError(
            f"{op} needs x with a batch axis and a channel axis (rank >= 2), got shape {tuple(shape)}. Add a "
            f"batch axis (x[None]){alternative}."
        )


def group_reduce_axes(channel_axis: int, ndim: int) -> tuple[int, ...]:
    """The axes GroupNorm reduces by default (besides the within-group channels): all but batch and channel."""
    return tuple(a for a in range(1, ndim) if a != channel_axis)


def instance_reduce_axes(features: tuple[int, ...], ndim: int) -> tuple[int, ...]:
    """The axes InstanceNorm reduces for channel axes ``features``: every one but the batch axis and those."""
    return tuple(a for a in range(1, ndim) if a not in features)


def instance_feature_axes(axis: Any, ndim: int) -> tuple[int, ...]:
    """InstanceNorm's channel axes for a rank-``ndim`` input; ``ValueError`` if they include the batch axis 0
    or leave nothing to reduce."""
    if ndim < 2:
        raise ValueError(
            f"instance normalization needs x with a batch axis and a channel axis (rank >= 2), got rank {ndim}. "
            "Add a batch axis (x[None])."
        )
    features = validation.canonicalize_axes(axis, ndim, "axis")
    if 0 in features:
        raise ValueError(
            f"`axis`={axis!r} includes axis 0, which is the batch axis (each example is normalized on its own). "
            "Give the channel axes only, e.g. axis=-1 (channels-last) or axis=1 (channels-first)."
        )
    return features


IMPLEMENTATIONS = ("auto", "xla", "pallas")


def check_implementation(implementation: Any) -> str:
    """The implementation to run: ``"auto"`` resolves to ``"xla"`` (the Pallas kernels are not yet measured
    faster on any GPU, see benchmarks/RESULTS.md). Raises ``ValueError`` for anything but the three names."""
    if not isinstance(implementation, str) or implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"`implementation` must be one of {IMPLEMENTATIONS}; got {implementation!r}. Use 'auto' (default) "
            "unless you are testing or benchmarking a particular path."
        )
    return "xla" if implementation == "auto" else implementation


def pallas_rows(
    x: jax.Array, scale: jax.Array | None, bias: jax.Array | None, axes: tuple[int, ...], epsilon: float,
    mask: jax.Array | None, axis_name: Any, *, subtract_mean: bool,
) -> jax.Array:
    """``y`` from the Pallas row kernels, after checking that they cover this call (``ValueError`` naming
    what does not fit and the fix, ``implementation='xla'``, otherwise)."""
    from jaxnorm._src import pallas_norm  # imported on first use: it loads jax.experimental.pallas

    lead = x.ndim - len(axes)
    why = None
    if tuple(axes) != tuple(range(lead, x.ndim)):
        why = f"the normalized axes {tuple(axes)} are not the trailing axes of x (rank {x.ndim})"
    elif mask is not None or axis_name is not None:
        why = "a mask (`where`) or `axis_name` is given"
    elif x.dtype not in (jnp.float32, jnp.bfloat16, jnp.float16):
        why = f"x has dtype {x.dtype} (the kernels take float32, bfloat16 and float16)"
    s, b = _rows_operand(scale, x.shape, lead), _rows_operand(bias, x.shape, lead)
    if why is None and (s is False or b is False):
        why = "scale or bias varies along axes that are not normalized"
    n = math.prod(x.shape[a] for a in axes)
    if why is None and n > pallas_norm.max_row_length(x.dtype):
        why = f"rows of {n} elements exceed the kernels' {pallas_norm.max_row_length(x.dtype)} for {x.dtype}"
    if why is None and isinstance(epsilon, jax.core.Tracer):
        why = "epsilon is traced (the kernels take it as a static Python float)"
    if why is not None:
        raise ValueError(f"implementation='pallas' does not cover this call: {why}. Use implementation='xla'.")
    m = math.prod(x.shape[:lead])
    s, b = collectives.vary_like(s, x), collectives.vary_like(b, x)
    y = pallas_norm.normalize_rows(
        x.reshape(m, n), s, b, float(epsilon), subtract_mean=subtract_mean,
        interpret=not pallas_norm.pallas_available(),
    )
    return y.reshape(x.shape)


def _rows_operand(p: jax.Array | None, x_shape: tuple[int, ...], lead: int) -> Any:
    """A scale/bias of x's rank as the flat vector of the trailing axes from ``lead``, or ``False`` if it varies
    along the leading ones."""
    if p is None:
        return None
    if any(d != 1 for d in p.shape[:lead]):
        return False
    return jnp.broadcast_to(p.reshape(p.shape[lead:]), x_shape[lead:]).reshape(-1)
