"""Functional normalization ops: pure functions of arrays, jit-compatible, any rank.

Every op computes in ``promote_types(x.dtype, float32)`` and returns ``x.dtype`` (bf16 in, bf16 out).

What every op that takes its own statistics guarantees (tests/test_adversarial.py holds each to it):

- input whose deviations from the mean stay below ``2**50`` in magnitude and whose variance (or mean square)
  is above about ``2**-100`` or hidden by ``epsilon`` gives the float64 result to float32 rounding, offset data
  included (float32 ``1e4 + N(0, 1)``); with ``extreme_range=True``, any finite input whose normalized result is
  representable does, also where squares overflow or underflow float32 (``1e20``, ``3e38``, ``1e-30`` with
  ``epsilon=0``), for one more pass over ``x`` (:mod:`stats`);
- masked-out positions (``where``) may hold NaN or inf: the kept outputs and every gradient (parameters and
  ``x``) of a loss that reads only the kept outputs are those of the same call with those positions zeroed;
  a masked-out position's own output is still computed from it (NaN stays NaN there);
- an empty input (a zero-size batch or feature axis) gives an empty output of ``x``'s shape and dtype, and
  empty statistics are count 0, mean 0, variance 0.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxnorm._src import collectives, fused, passes, stats, validation


def batch_normalization(
    x: jax.Array,
    mean: jax.Array,
    variance: jax.Array,
    offset: jax.Array | None = None,
    scale: jax.Array | None = None,
    epsilon: float = 1e-3,
) -> jax.Array:
    r"""Normalizes ``x`` with given statistics: the TensorFlow / TF.js ``batch_normalization`` op.

    .. math::
        y = (x - \text{mean}) \cdot \frac{\text{scale}}{\sqrt{\text{variance} + \epsilon}} + \text{offset}

    Args:
      x: floating array of any shape.
      mean: floating array broadcastable to ``x`` (e.g. ``(C,)`` for channels-last, ``(1, C, 1, 1)`` for NCHW).
      variance: floating array broadcastable to ``x``, non-negative.
      offset: optional floating array broadcastable to ``x`` (Keras's beta, Flax's bias); None adds nothing.
      scale: optional floating array broadcastable to ``x`` (Keras's gamma); None multiplies by 1.
      epsilon: non-negative float added to the variance (1e-3, TensorFlow's and Keras's default).

    Returns:
      An array of ``x``'s shape and dtype, computed in ``promote_types(x.dtype, float32)``.

    Raises:
      TypeError: ``x`` or an operand is not floating.
      ValueError: an operand does not broadcast to ``x`` without enlarging it; ``epsilon`` < 0.

    Source: ``tf.nn.batch_normalization`` / ``tf.batchNorm`` (note the argument order: offset before scale).

    Example:
      >>> import jax.numpy as jnp, jaxnorm
      >>> x = jnp.array([[1.0, 2.0], [3.0, 6.0]])
      >>> jaxnorm.batch_normalization(x, mean=jnp.array([2.0, 4.0]), variance=jnp.array([1.0, 4.0]),
      ...                             epsilon=0.0)
      Array([[-1., -1.],
             [ 1.,  1.]], dtype=float32)
    """
    x = validation.check_float_array(x, "x")
    validation.check_epsilon(epsilon)
    mean = validation.broadcast_operand(mean, x.shape, "mean")
    variance = validation.broadcast_operand(variance, x.shape, "variance")
    offset = None if offset is None else validation.broadcast_operand(offset, x.shape, "offset")
    scale = None if scale is None else validation.broadcast_operand(scale, x.shape, "scale")
    return normalize_by_stats(x, mean, variance, scale, offset, epsilon)


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


def moments(
    x: jax.Array,
    axes: validation.Axes,
    *,
    where: jax.Array | None = None,
    keepdims: bool = False,
    axis_name: Any = None,
    extreme_range: bool = False,
) -> tuple[jax.Array, jax.Array]:
    r"""Mean and population variance of ``x`` over ``axes``, numerically stable, in at least float32.

    .. math::
        \mu = \frac{1}{n}\sum_{i \in S} x_i, \qquad
        \sigma^2 = \frac{1}{n}\sum_{i \in S} (x_i - \mu)^2

    where :math:`S` is the set of positions selected by ``where`` along ``axes`` and :math:`n = |S|`.
    The variance is the biased (population, ``/n``) estimator that Keras, Flax and PyTorch normalize with.
    It is computed from data shifted by an estimate of the mean (two passes without a mask: a 32-value sample,
    then the shifted sums; the corrected two-pass algorithm with one), so a large common offset does not cancel
    the variance away (float32 ``1e4 + N(0, 1)`` gives 1.000, where Flax's default ``E[x^2] - E[x]^2`` gives 0).

    Args:
      x: floating array of any shape and rank; bf16, f16, f32 or f64.
      axes: int or sequence of ints, the axes to reduce (negative values count from the end).
      where: optional mask, Keras's rules (boolean, or integer/float read as nonzero = kept, NaN included;
        broadcastable to ``x``, or of rank ``x.ndim - 1``, expanded on the last axis first when that
        broadcasts: a 1-D mask of an ``(N, C)`` input is per example, give a per-feature one as ``(1, C)``);
        only the kept positions count. Values elsewhere, even NaN or inf, touch neither the result nor its
        gradient.
      keepdims: keep the reduced axes with size 1, so the results broadcast against ``x``.
      axis_name: optional named axis (or tuple of names) of an enclosing ``shard_map``/``pmap``/``vmap``;
        the statistics are then those of the global batch, each device weighted by its number of valid
        elements (exact, unlike a mean of per-device means).
      extreme_range: static bool (every op that takes statistics has it, with this meaning). False (default):
        the default range, exact while ``|x - mean|`` stays below ``2**50`` (reductions of up to ``2**28``
        values) and the variance above about ``2**-100`` or hidden by ``epsilon``; True: exact at any finite
        float32 magnitude (``1e30``, ``3e38``, ``1e-30`` with ``epsilon=0``), for one more pass over ``x``.

    Returns:
      ``(mean, variance)``: arrays of ``x``'s shape without ``axes`` (with size-1 axes if ``keepdims``), in
      ``promote_types(x.dtype, float32)``. Where ``where`` selects nothing, or a reduced axis has size 0, both
      are 0. With ``extreme_range=True``, exact at any finite magnitude: the mean of float32 values near
      ``3e38`` is their mean, and a variance beyond float32's range rounds to inf (or to 0 below it), as the
      float64 value would.

    Raises:
      TypeError: ``x`` is not floating, or ``where`` is complex, a string or not an array.
      ValueError: an axis is out of range or repeated; ``where`` does not broadcast to ``x``; ``axis_name``
        is not bound.

    Source: the shifted and corrected two-pass algorithms (Chan, Golub & LeVeque 1983, "Algorithms for
    computing the sample variance"); the signature follows ``tf.nn.moments`` and ``jax.numpy``'s ``where``.

    Example:
      >>> import jax.numpy as jnp, jaxnorm
      >>> x = 1e4 + jnp.array([[-1.0], [1.0]])
      >>> mean, var = jaxnorm.moments(x, axes=0)
      >>> print(mean, var)
      [10000.] [1.]
      >>> mean, var = jaxnorm.moments(jnp.array([1.0, 3.0, jnp.nan]), 0, where=jnp.array([True, True, False]))
      >>> print(mean, var)
      2.0 1.0
    """
    x = validation.check_float_array(x, "x")
    axes_t = validation.canonicalize_axes(axes, x.ndim, "axes")
    mask = None if where is None else validation.broadcast_mask(where, x.shape, "where")
    st = stats.normalizer(x, axes_t, mask, axis_name, extreme_range=extreme_range)
    mean, var = st.mean, st.var
    if keepdims:
        keep = tuple(1 if i in axes_t else d for i, d in enumerate(x.shape))
        mean, var = mean.reshape(keep), var.reshape(keep)
    return mean, var


def normalize_batch_in_training(
    x: jax.Array,
    scale: jax.Array | None,
    offset: jax.Array | None,
    reduction_axes: validation.Axes,
    epsilon: float = 1e-3,
    *,
    axis_name: Any = None,
    extreme_range: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    r"""Computes the batch statistics over ``reduction_axes`` and normalizes ``x`` with them.

    .. math::
        \mu, \sigma^2 = \text{moments}(x, \text{reduction\_axes}), \qquad
        y = (x - \mu) \cdot \frac{\text{scale}}{\sqrt{\sigma^2 + \epsilon}} + \text{offset}

    Args:
      x: floating array of any shape.
      scale: None, or a floating array with the sizes of the kept (non-reduced) axes, e.g. ``(C,)`` for
        both NHWC with ``reduction_axes=(0, 1, 2)`` and NCHW with ``(0, 2, 3)``, or any shape broadcastable
        to ``x``.
      offset: None, or an array shaped like ``scale``.
      reduction_axes: int or sequence of ints, the axes the statistics are taken over.
      epsilon: non-negative float added to the variance.
      axis_name: optional named axis (or tuple of names) of an enclosing ``shard_map``/``pmap``/``vmap`` over
        which the batch is split: the statistics are then the global batch's, exactly count-weighted.

      extreme_range: static bool: False (default), the default range; True, exact at any finite float32
        magnitude for one more pass over ``x`` (:func:`moments` states both).

    Returns:
      ``(y, mean, variance)``: ``y`` of ``x``'s shape and dtype; ``mean`` and ``variance`` of the kept axes'
      sizes (``x.shape`` without ``reduction_axes``) in ``promote_types(x.dtype, float32)``; the variance is
      the biased (population) one.

    Raises:
      TypeError: ``x``, ``scale`` or ``offset`` is not floating.
      ValueError: an axis is out of range or repeated; ``scale`` or ``offset`` has the wrong shape.

    Source: ``keras.backend.normalize_batch_in_training`` (Keras 2 / TF.js ``normalizeBatchInTraining``).

    Example:
      >>> import jax.numpy as jnp, jaxnorm
      >>> x = jnp.array([[0.0, 10.0], [2.0, 30.0]])
      >>> y, mean, var = jaxnorm.normalize_batch_in_training(x, None, None, reduction_axes=0, epsilon=0.0)
      >>> print(y)
      [[-1. -1.]
       [ 1.  1.]]
      >>> print(mean, var)
      [ 1. 20.] [  1. 100.]
    """
    x = validation.check_float_array(x, "x")
    validation.check_epsilon(epsilon)
    axes = validation.canonicalize_axes(reduction_axes, x.ndim, "reduction_axes")
    kept = validation.complement_axes(axes, x.ndim)
    if scale is not None:
        scale = validation.axes_operand(scale, x.shape, kept, "scale", "kept (non-reduced) axes")
    if offset is not None:
        offset = validation.axes_operand(offset, x.shape, kept, "offset", "kept (non-reduced) axes")
    y, _, mean, var = normalize_by_moments(x, scale, offset, axes, epsilon, None, axis_name,
                                           extreme_range=validation.check_bool(extreme_range, "extreme_range"))
    return y, jnp.squeeze(mean, axes), jnp.squeeze(var, axes)


def layer_norm(
    x: jax.Array,
    scale: jax.Array | None = None,
    bias: jax.Array | None = None,
    *,
    axis: validation.Axes = -1,
    epsilon: float = 1e-3,
    where: Any = None,
    axis_name: Any = None, implementation: str = "auto", extreme_range: bool = False,
) -> jax.Array:
    r"""Layer normalization: each example normalized over ``axis`` by its own statistics.

    .. math::
        y = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} \cdot \text{scale} + \text{bias}, \qquad
        \mu, \sigma^2 = \text{moments}(x, \text{axis})

    Args:
      x: floating array of any shape.
      scale: None, or a floating array with the sizes of the normalized axes (``(x.shape[-1],)`` for the
        default axis) or a shape broadcastable to ``x``.
      bias: None, or an array shaped like ``scale``.
      axis: int or sequence of ints, the axes normalized over (-1: the last, Keras's and Flax's default).
      epsilon: non-negative float (1e-3, Keras ``LayerNormalization``'s default; Flax uses 1e-6).
      where: optional mask, Keras's rules as in :func:`moments` (a 1-D mask of an ``(N, C)`` input is per
        example);
        the statistics use only the kept positions (values elsewhere may be NaN). Every position is normalized.
      axis_name: optional named axis (or tuple of names) of an enclosing ``shard_map``/``pmap``/``vmap``
        across which the normalized axes are split (e.g. sequence parallelism); statistics are then exact
        over the whole example.
      implementation: ``"xla"`` (XLA ops with the blocked custom backward of :mod:`fused`), ``"pallas"``
        (the fused Pallas kernels of :mod:`pallas_norm`: compiled through Triton on a GPU, run in Pallas
        interpret mode elsewhere, which is correct but slow and meant for tests), or ``"auto"`` (default:
        ``"xla"`` everywhere until the Pallas kernels are measured faster on a GPU; see
        benchmarks/RESULTS.md). ``"pallas"`` needs trailing ``axis``, no ``where``/``axis_name``, float32/
        bfloat16/float16 input, at most 64 KiB per row, and ``scale``/``bias`` that vary only along ``axis``;
        its statistics hold the default range (and beyond: deviations up to about ``2**63`` at any row length),
        not ``extreme_range=True``, which it refuses.
      extreme_range: static bool: False (default), the default range; True, exact at any finite float32
        magnitude for one more pass over ``x`` (:func:`moments` states both).

    Returns:
      An array of ``x``'s shape and dtype; statistics computed in ``promote_types(x.dtype, float32)``.
      See the module docstring for the range, masks and empty inputs.

    Raises:
      TypeError: ``x``, ``scale`` or ``bias`` not floating; ``where`` complex, a string or not an array.
      ValueError: an axis out of range or repeated; ``scale``/``bias`` of the wrong shape; ``epsilon`` < 0;
        ``implementation`` unknown, or ``"pallas"`` for a case the kernels do not cover (the message says which).

    Source: Ba, Kiros & Hinton 2016, "Layer Normalization"; semantics of ``keras.layers.LayerNormalization``.

    Example:
      >>> import jax.numpy as jnp, jaxnorm
      >>> jaxnorm.layer_norm(jnp.array([[1.0, 3.0], [10.0, 30.0]]), epsilon=0.0)
      Array([[-1.,  1.],
             [-1.,  1.]], dtype=float32)
    """
    x = validation.check_float_array(x, "x")
    validation.check_epsilon(epsilon)
    axes = validation.canonicalize_axes(axis, x.ndim, "axis")
    if scale is not None:
        scale = validation.axes_operand(scale, x.shape, axes, "scale", "normalized axes")
    if bias is not None:
        bias = validation.axes_operand(bias, x.shape, axes, "bias", "normalized axes")
    mask = None if where is None else validation.broadcast_mask(where, x.shape, "where")
    return normalize_layer(x, scale, bias, axes, epsilon, mask, axis_name, check_implementation(implementation),
                           extreme_range=validation.check_bool(extreme_range, "extreme_range"))


def normalize_layer(
    x: jax.Array, scale: jax.Array | None, bias: jax.Array | None, axes: tuple[int, ...], epsilon: float,
    mask: jax.Array | None = None, axis_name: Any = None, implementation: str = "auto", *,
    center: bool = True, extreme_range: bool = False,
) -> jax.Array:
    """LayerNorm's and RMSNorm's (``center=False``) one entry point for checked inputs (``scale``/``bias``/
    ``mask`` None or of x's rank): the Pallas kernels when asked for, else :func:`normalize_by_moments`."""
    if check_implementation(implementation) == "pallas":
        if extreme_range:
            raise ValueError(
                "implementation='pallas' does not cover extreme_range=True (the kernels square float32 "
                "deviations unscaled). Use implementation='xla' with extreme_range=True."
            )
        return pallas_rows(x, scale, bias, axes, epsilon, mask, axis_name, subtract_mean=center)
    return normalize_by_moments(x, scale, bias, axes, epsilon, mask, axis_name, center=center,
                                extreme_range=extreme_range)[0]


def rms_norm(
    x: jax.Array,
    scale: jax.Array | None = None,
    *,
    axis: validation.Axes = -1,
    epsilon: float = 1e-6,
    where: Any = None,
    axis_name: Any = None, implementation: str = "auto", extreme_range: bool = False,
) -> jax.Array:
    r"""Root-mean-square normalization: each example divided by its RMS over ``axis`` (no centering).

    .. math::
        y = \frac{x}{\sqrt{\langle x^2\rangle + \epsilon}} \cdot \text{scale}, \qquad
        \langle x^2\rangle = \text{mean of } x^2 \text{ over axis}

    Args:
      x: floating array of any shape.
      scale: None, or a floating array with the sizes of the normalized axes (``(x.shape[-1],)`` for the
        default axis) or a shape broadcastable to ``x``.
      axis: int or sequence of ints, the axes normalized over (-1: the last).
      epsilon: non-negative float added to the mean of squares (1e-6: Keras ``RMSNormalization`` and Flax
        ``RMSNorm``; PyTorch's ``eps=None`` means ``finfo(x.dtype).eps``: pass that value explicitly).
      where: optional mask, Keras's rules as in :func:`moments` (a 1-D mask of an ``(N, C)`` input is per
        example);
        the statistic uses only the kept positions (values elsewhere may be NaN). Every position is normalized.
      axis_name: optional named axis (or tuple of names) of an enclosing ``shard_map``/``pmap``/``vmap``
        across which the normalized axes are split; the statistic is then exact over the whole example.
      implementation: ``"auto"``, ``"xla"`` or ``"pallas"``, as in :func:`layer_norm`.

      extreme_range: static bool: False (default), the default range; True, exact at any finite float32
        magnitude for one more pass over ``x`` (:func:`moments` states both).

    Returns:
      An array of ``x``'s shape and dtype; the statistic computed in ``promote_types(x.dtype, float32)``.
      See the module docstring for the range, masks and empty inputs.

    Raises:
      TypeError: ``x`` or ``scale`` not floating; ``where`` complex, a string or not an array.
      ValueError: an axis out of range or repeated; ``scale`` of the wrong shape; ``epsilon`` < 0;
        ``implementation`` unknown or ``"pallas"`` for a case the kernels do not cover.

    Source: Zhang & Sennrich 2019, "Root Mean Square Layer Normalization"; semantics of
    ``keras.layers.RMSNormalization``, ``flax.linen.RMSNorm`` and ``torch.nn.RMSNorm``.

    Example:
      >>> import jax.numpy as jnp, jaxnorm
      >>> print(jaxnorm.rms_norm(jnp.array([[1.0, 7.0], [-2.0, 2.0]]), epsilon=0.0))  # RMS 5 and 2
      [[ 0.2  1.4]
       [-1.   1. ]]
    """
    x = validation.check_float_array(x, "x")
    validation.check_epsilon(epsilon)
    axes = validation.canonicalize_axes(axis, x.ndim, "axis")
    if scale is not None:
        scale = validation.axes_operand(scale, x.shape, axes, "scale", "normalized axes")
    mask = None if where is None else validation.broadcast_mask(where, x.shape, "where")
    return normalize_layer(x, scale, None, axes, epsilon, mask, axis_name, check_implementation(implementation),
                           center=False, extreme_range=validation.check_bool(extreme_range, "extreme_range"))


def unit_norm(
    x: jax.Array, *, axis: validation.Axes = -1, epsilon: float = 1e-12, where: Any = None,
    extreme_range: bool = False,
) -> jax.Array:
    r"""Unit (L2) normalization: each example scaled to unit Euclidean norm over ``axis``.

    .. math::
        y = x \cdot \min\left(\frac{1}{\sqrt{\sum x^2}}, \frac{1}{\epsilon}\right)
          = \frac{x}{\sqrt{\max(\sum x^2, \epsilon^2)}}

    Args:
      x: floating array of any shape.
      axis: int or sequence of ints, the axes of the norm (-1: the last).
      epsilon: non-negative float; norms below it are treated as ``epsilon`` (1e-12, Keras's). An all-zero
        example stays zero with a zero gradient (where ``x / epsilon`` would have ``1 / epsilon``).
      where: optional mask, Keras's rules as in :func:`moments` (a 1-D mask of an ``(N, C)`` input is per
        example);
        only kept positions enter the norm (values elsewhere may be NaN; they are scaled too).

      extreme_range: static bool: False (default), the default range; True, exact at any finite float32
        magnitude for one more pass over ``x`` (:func:`moments` states both).

    Returns:
      An array of ``x``'s shape and dtype; the sum of squares computed in ``promote_types(x.dtype, float32)``.
      See the module docstring for the range, masks and empty inputs.

    Raises:
      TypeError: ``x`` not floating; ``where`` complex, a string or not an array.
      ValueError: an axis out of range or repeated; ``epsilon`` < 0.

    Source: ``keras.layers.UnitNormalization`` (``keras.ops.normalize(x, axis, order=2, epsilon=1e-12)``).

    Example:
      >>> import jax.numpy as jnp, jaxnorm
      >>> print(jaxnorm.unit_norm(jnp.array([[3.0, 4.0], [0.0, 0.0]])))
      [[0.6 0.8]
       [0.  0. ]]
    """
    x = validation.check_float_array(x, "x")
    validation.check_epsilon(epsilon)
    axes = validation.canonicalize_axes(axis, x.ndim, "axis")
    mask = None if where is None else validation.broadcast_mask(where, x.shape, "where")
    extreme_range = validation.check_bool(extreme_range, "extreme_range")
    return normalize_unit(x, axes, epsilon, mask, extreme_range=extreme_range)


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


def group_norm(
    x: jax.Array,
    scale: jax.Array | None = None,
    bias: jax.Array | None = None,
    *,
    num_groups: int | None = None,
    group_size: int | None = None,
    axis: int = -1,
    reduction_axes: validation.Axes | None = None,
    epsilon: float = 1e-3,
    where: Any = None,
    axis_name: Any = None,
    extreme_range: bool = False,
) -> jax.Array:
    r"""Group normalization: the channels are split into groups, each normalized by its own statistics.

    With the channel axis split into ``G`` groups of ``C / G`` consecutive channels, each example's group
    :math:`g` is normalized over its channels and the ``reduction_axes`` (by default every axis but the first,
    the batch axis):

    .. math::
        y = \frac{x - \mu_g}{\sqrt{\sigma_g^2 + \epsilon}} \cdot \text{scale}_c + \text{bias}_c

    One group is LayerNorm over all non-batch axes (with per-channel parameters); ``C`` groups
    (``num_groups=-1`` or ``group_size=1``) is InstanceNorm.

    Args:
      x: floating array of rank >= 2, the batch on axis 0 (unless ``reduction_axes`` says otherwise).
      scale: None, or a floating ``(C,)`` array (``C = x.shape[axis]``) or one broadcastable to ``x``.
      bias: None, or an array shaped like ``scale``.
      num_groups: the number of groups, dividing ``C``; -1 means ``C`` (Keras's ``groups=-1``: instance
        normalization). Give it or ``group_size``, not both; neither means 32 (Wu & He's, Keras's and Flax's
        default).
      group_size: the number of channels per group, dividing ``C``.
      axis: int, the channel axis (-1: channels-last NHWC; 1: channels-first NCHW).
      reduction_axes: None (every axis but 0 and ``axis``), or the axes besides the channel axis that the
        statistics are taken over (the channel axis may be listed, as in Flax; it is always reduced within each
        group). Give it when ``x`` has no batch axis, e.g. under ``jax.vmap``.
      epsilon: non-negative float (1e-3, Keras ``GroupNormalization``'s default; Flax uses 1e-6, PyTorch
        1e-5).
      where: optional mask, Keras's rules as in :func:`moments` (a 1-D mask of an ``(N, C)`` input is per
        example);
        the statistics use only the kept positions (values elsewhere may be NaN). Every position is normalized.
      axis_name: optional named axis (or tuple of names) of an enclosing ``shard_map``/``pmap``/``vmap``
        across which the reduced axes are split (e.g. spatial parallelism); statistics are then exact.

      extreme_range: static bool: False (default), the default range; True, exact at any finite float32
        magnitude for one more pass over ``x`` (:func:`moments` states both).

    Returns:
      An array of ``x``'s shape and dtype; statistics computed in ``promote_types(x.dtype, float32)``.
      See the module docstring for the range, masks and empty inputs.

    Raises:
      TypeError: ``x``, ``scale`` or ``bias`` not floating; ``where`` complex, a string or not an array.
      ValueError: both ``num_groups`` and ``group_size`` given, or either not a positive int (Keras raises
        ValueError too); the groups do not divide the channels; ``x`` of rank < 2; an axis out of range or
        repeated; ``scale``/``bias`` of the wrong shape; ``epsilon`` < 0.

    Source: Wu & He 2018, "Group Normalization"; semantics of ``keras.layers.GroupNormalization``
    (``groups``, ``axis``), ``flax.linen.GroupNorm`` (``num_groups``/``group_size``, ``reduction_axes``) and
    ``torch.nn.GroupNorm`` (channels-first, ``axis=1``).

    Example:
      >>> import jax.numpy as jnp, jaxnorm
      >>> x = jnp.array([[1.0, 3.0, 10.0, 30.0]])  # one example, four channels
      >>> print(jaxnorm.group_norm(x, num_groups=2, epsilon=0.0))
      [[-1.  1. -1.  1.]]
    """
    x = validation.check_float_array(x, "x")
    validation.check_epsilon(epsilon)
    if reduction_axes is None:
        check_batched(x.shape, "group_norm", " or give `reduction_axes` (e.g. () for one example)")
    (c,) = validation.canonicalize_axes(axis, x.ndim, "axis")
    if reduction_axes is None:
        reduce = group_reduce_axes(c, x.ndim)
    else:
        reduce = tuple(a for a in validation.canonicalize_axes_or_empty(reduction_axes, x.ndim, "reduction_axes")
                       if a != c)
    groups = validation.resolve_groups(num_groups, group_size, x.shape[c], c)
    scale = None if scale is None else validation.axes_operand(scale, x.shape, (c,), "scale", "channel axis")
    bias = None if bias is None else validation.axes_operand(bias, x.shape, (c,), "bias", "channel axis")
    mask = None if where is None else validation.broadcast_mask(where, x.shape, "where")
    return normalize_groups(x, scale, bias, c, groups, reduce, epsilon, mask, axis_name,
                            extreme_range=validation.check_bool(extreme_range, "extreme_range"))


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


def instance_norm(
    x: jax.Array,
    scale: jax.Array | None = None,
    bias: jax.Array | None = None,
    *,
    axis: validation.Axes = -1,
    epsilon: float = 1e-3,
    where: Any = None,
    axis_name: Any = None,
    extreme_range: bool = False,
) -> jax.Array:
    r"""Instance normalization: each example's channels normalized separately over the remaining axes.

    Every axis but the first (the batch) and the channel ``axis`` is reduced:

    .. math::
        y_{n,c} = \frac{x_{n,c} - \mu_{n,c}}{\sqrt{\sigma_{n,c}^2 + \epsilon}} \cdot \text{scale}_c
        + \text{bias}_c

    It equals :func:`group_norm` with ``group_size=1``, and Flax's ``LayerNorm(reduction_axes=spatial axes,
    feature_axes=-1)``.

    Args:
      x: floating array of rank >= 2, the batch on axis 0.
      scale: None, or a floating array with the sizes of ``axis`` (``(C,)``) or broadcastable to ``x``.
      bias: None, or an array shaped like ``scale``.
      axis: int or sequence of ints, the channel (feature) axes, not 0 (-1: channels-last; 1: NCHW as PyTorch).
      epsilon: non-negative float (1e-3, as Keras-family ``GroupNormalization(groups=-1)``; Flax uses 1e-6,
        PyTorch 1e-5).
      where: optional mask, Keras's rules as in :func:`moments` (a 1-D mask of an ``(N, C)`` input is per
        example);
        the statistics use only the kept positions.
      axis_name: optional named axis (or tuple of names) across which the reduced axes are split.

      extreme_range: static bool: False (default), the default range; True, exact at any finite float32
        magnitude for one more pass over ``x`` (:func:`moments` states both).

    Returns:
      An array of ``x``'s shape and dtype; statistics computed in ``promote_types(x.dtype, float32)``.
      See the module docstring for the range, masks and empty inputs.

    Raises:
      TypeError: ``x``, ``scale`` or ``bias`` not floating; ``where`` complex, a string or not an array.
      ValueError: ``x`` of rank < 2; ``axis`` includes 0 (the batch), is out of range or repeated;
        ``scale``/``bias`` of the wrong shape; ``epsilon`` < 0.

    Source: Ulyanov, Vedaldi & Lempitsky 2016, "Instance Normalization: The Missing Ingredient for Fast
    Stylization"; semantics of ``flax.linen.InstanceNorm`` (``feature_axes``) and ``torch.nn.InstanceNorm2d``
    (``affine=True``, no running statistics; channels-first, ``axis=1``).

    Example:
      >>> import jax.numpy as jnp, jaxnorm
      >>> x = jnp.array([[[1.0, 10.0], [3.0, 30.0]]])  # (batch 1, length 2, channels 2)
      >>> print(jaxnorm.instance_norm(x, epsilon=0.0))
      [[[-1. -1.]
        [ 1.  1.]]]
    """
    x = validation.check_float_array(x, "x")
    validation.check_epsilon(epsilon)
    features = instance_feature_axes(axis, x.ndim)
    reduce = instance_reduce_axes(features, x.ndim)
    scale = None if scale is None else validation.axes_operand(scale, x.shape, features, "scale", "channel axes")
    bias = None if bias is None else validation.axes_operand(bias, x.shape, features, "bias", "channel axes")
    mask = None if where is None else validation.broadcast_mask(where, x.shape, "where")
    return normalize_by_moments(x, scale, bias, reduce, epsilon, mask, axis_name,
                                extreme_range=validation.check_bool(extreme_range, "extreme_range"))[0]


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
