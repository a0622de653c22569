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

from typing import Any

import jax
import jax.numpy as jnp

from jaxnorm._src import normalize, stats, validation


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
    return normalize.normalize_by_stats(x, mean, variance, scale, offset, epsilon)


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
    y, _, mean, var = normalize.normalize_by_moments(
        x, scale, offset, axes, epsilon, None, axis_name,
        extreme_range=validation.check_bool(extreme_range, "extreme_range"),
    )
    return y, jnp.squeeze(mean, axes), jnp.squeeze(var, axes)


def layer_norm(
    x: jax.Array,
    scale: jax.Array | None = None,
    bias: jax.Array | None = None,
    *,
    axis: validation.Axes = -1,
    epsilon: float = 1e-3,
    where: Any = None,
    axis_name: Any = None, implementation: str = "auto", extreme_range: bool = False, scale_offset: float = 0.0,
) -> jax.Array:
    r"""Layer normalization: each example normalized over ``axis`` by its own statistics.

    .. math::
        y = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} \cdot (\text{scale} + \text{scale\_offset})
        + \text{bias}, \qquad \mu, \sigma^2 = \text{moments}(x, \text{axis})

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
      scale_offset: static float added to ``scale`` before it multiplies (default 0.0). 1.0 reads a
        zero-centred scale, stored as ``gamma - 1`` (Gemma's checkpoints; MaxText's and tokamax's
        ``scale_offset``, TransformerEngine's ``zero_centered_gamma``); the sum is taken in
        ``promote_types(scale.dtype, float32)``, so a bfloat16 gamma near 0 keeps its bits.

    Returns:
      An array of ``x``'s shape and dtype; statistics computed in ``promote_types(x.dtype, float32)``.
      See the module docstring for the range, masks and empty inputs.

    Raises:
      TypeError: ``x``, ``scale`` or ``bias`` not floating; ``where`` complex, a string or not an array;
        ``scale_offset`` not a static real number.
      ValueError: an axis out of range or repeated; ``scale``/``bias`` of the wrong shape; ``epsilon`` < 0;
        ``implementation`` unknown, or ``"pallas"`` for a case the kernels do not cover (the message says which);
        a nonzero ``scale_offset`` without a ``scale``.

    Source: Ba, Kiros & Hinton 2016, "Layer Normalization"; semantics of ``keras.layers.LayerNormalization``;
    ``scale_offset`` as in MaxText's normalizations.

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
    return normalize.normalize_layer(
        x, scale, bias, axes, epsilon, mask, axis_name, normalize.check_implementation(implementation),
        extreme_range=validation.check_bool(extreme_range, "extreme_range"),
        scale_offset=validation.check_scale_offset(scale_offset, scale is not None),
    )


def rms_norm(
    x: jax.Array,
    scale: jax.Array | None = None,
    *,
    axis: validation.Axes = -1,
    epsilon: float = 1e-6,
    where: Any = None,
    axis_name: Any = None, implementation: str = "auto", extreme_range: bool = False, scale_offset: float = 0.0,
) -> jax.Array:
    r"""Root-mean-square normalization: each example divided by its RMS over ``axis`` (no centering).

    .. math::
        y = \frac{x}{\sqrt{\langle x^2\rangle + \epsilon}} \cdot (\text{scale} + \text{scale\_offset}), \qquad
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
      scale_offset: static float added to ``scale`` (default 0.0; 1.0 for Gemma's zero-centred
        ``y = x / rms * (1 + scale)``), as in :func:`layer_norm`.

    Returns:
      An array of ``x``'s shape and dtype; the statistic computed in ``promote_types(x.dtype, float32)``.
      See the module docstring for the range, masks and empty inputs.

    Raises:
      TypeError: ``x`` or ``scale`` not floating; ``where`` complex, a string or not an array;
        ``scale_offset`` not a static real number.
      ValueError: an axis out of range or repeated; ``scale`` of the wrong shape; ``epsilon`` < 0;
        ``implementation`` unknown or ``"pallas"`` for a case the kernels do not cover; a nonzero
        ``scale_offset`` without a ``scale``.

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
    return normalize.normalize_layer(
        x, scale, None, axes, epsilon, mask, axis_name, normalize.check_implementation(implementation),
        center=False, extreme_range=validation.check_bool(extreme_range, "extreme_range"),
        scale_offset=validation.check_scale_offset(scale_offset, scale is not None),
    )


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
    return normalize.normalize_unit(x, axes, epsilon, mask, extreme_range=extreme_range)


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
    c, reduce = _group_axes(x.shape, axis, reduction_axes)
    groups = validation.resolve_groups(num_groups, group_size, x.shape[c], c)
    scale = None if scale is None else validation.axes_operand(scale, x.shape, (c,), "scale", "channel axis")
    bias = None if bias is None else validation.axes_operand(bias, x.shape, (c,), "bias", "channel axis")
    mask = None if where is None else validation.broadcast_mask(where, x.shape, "where")
    return normalize.normalize_groups(x, scale, bias, c, groups, reduce, epsilon, mask, axis_name,
                                      extreme_range=validation.check_bool(extreme_range, "extreme_range"))


def _group_axes(shape: tuple[int, ...], axis: Any, reduction_axes: Any) -> tuple[int, tuple[int, ...]]:
    """:func:`group_norm`'s channel axis and reduced axes (besides the within-group channels), checked."""
    if reduction_axes is None:
        normalize.check_batched(shape, "group_norm", " or give `reduction_axes` (e.g. () for one example)")
    (c,) = validation.canonicalize_axes(axis, len(shape), "axis")
    if reduction_axes is None:
        return c, normalize.group_reduce_axes(c, len(shape))
    axes = validation.canonicalize_axes_or_empty(reduction_axes, len(shape), "reduction_axes")
    return c, tuple(a for a in axes if a != c)


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
    (``normalize.affine=True``, no running statistics; channels-first, ``axis=1``).

    Example:
      >>> import jax.numpy as jnp, jaxnorm
      >>> x = jnp.array([[[1.0, 10.0], [3.0, 30.0]]])  # (batch 1, length 2, channels 2)
      >>> print(jaxnorm.instance_norm(x, epsilon=0.0))
      [[[-1. -1.]
        [ 1.  1.]]]
    """
    x = validation.check_float_array(x, "x")
    validation.check_epsilon(epsilon)
    features = normalize.instance_feature_axes(axis, x.ndim)
    reduce = normalize.instance_reduce_axes(features, x.ndim)
    scale = None if scale is None else validation.axes_operand(scale, x.shape, features, "scale", "channel axes")
    bias = None if bias is None else validation.axes_operand(bias, x.shape, features, "bias", "channel axes")
    mask = None if where is None else validation.broadcast_mask(where, x.shape, "where")
    return normalize.normalize_by_moments(x, scale, bias, reduce, epsilon, mask, axis_name,
                                          extreme_range=validation.check_bool(extreme_range, "extreme_range"))[0]


