r"""How jaxnorm computes a mean and a variance: every layer's statistics come from :func:`normalizer`.

**The default kernel.** Statistics are taken in at least float32 whatever the input dtype, of data shifted by
an estimate of its mean, so that a common offset never cancels:

- without a mask, ``m0`` is the mean of a small sample of each reduction (``SHIFT_SAMPLES`` = 32 values: the
  first ones, innermost axes first; evenly spaced along axis 0 where the reduction runs along it, a batch that
  ``jit`` may shard), then one pass of two sibling sums, ``s1 = sum(x - m0)`` and ``s2 = sum((x - m0)^2)``:
  ``mean = m0 + s1 / n`` and ``var = s2 / n - (s1 / n)^2``. This is Chan, Golub & LeVeque's shifted algorithm;
  its relative error in the variance is at most a few units of ``eps * (1 + (mean - m0)^2 / var)``, and
  ``(mean - m0)^2 <= var * (n - k) / k`` for the mean of ``k`` of the ``n`` values, so at most about ``n / 32``
  float32 ulps in the worst case and a few ulps on any data whose sampled values are typical (float32
  ``1e4 + N(0, 1)``: variance 1.000; Flax's default ``E[x^2] - E[x]^2`` gives 0). GroupNorm's statistics take
  these sums per channel and merge the group's channels exactly (Chan et al.'s many-way merge);
- with a mask, the corrected two-pass algorithm: the mean of the selected values, then the sums of their
  deviations from it and of their squares (exact for any data, whatever the mask selects first);
- RMS statistics (``center=False``): the mean of squares, one sum.

Masked-out values are replaced by zero *before* any arithmetic, so NaN or inf there touches neither the
statistics nor their gradients. An empty reduction has count 0, mean 0 and variance 0. Across devices
(``axis_name``) each device's ``(count, mean, M2)`` is merged exactly (:func:`collectives.merge_across`).

**Range.** The default kernel sums squared deviations in float32: it is exact while that sum, about
``n * var``, stays below float32's maximum (``3.4e38``; beyond, it overflows to inf), which deviations below
``2**50`` (about ``1e15``) guarantee for reductions of up to ``2**28`` values, and while the variance (or mean
square) is above about ``2**-100`` or is hidden by ``epsilon`` (smaller squares lose digits to float32's
underflow).
``extreme_range=True`` lifts both limits for any finite float32 input: one more pass takes each reduction's
largest magnitude (across devices too), and the statistics are those of ``x * q`` with ``q`` the power of two
that brings it to [0.5, 1) (exact), at the cost of that pass. Both forms are branch-free: no ``lax.cond``, no
host callback, so every program exports with ``jax.export`` and runs on any device.

Derivatives are JAX's, of these sums (the shift and ``q`` are constants of the gradient); the layers' own
fused paths (:mod:`fused`) have a hand-written backward over the same statistics.

Source: Chan, Golub & LeVeque 1983, "Algorithms for computing the sample variance: analysis and
recommendations" (the shifted and corrected two-pass algorithms and their error bounds).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxnorm._src import collectives, passes, validation

SHIFT_SAMPLES = 32  # values per reduction whose mean is the shift of the default kernel


class Normalizer(NamedTuple):
    """The statistics of a normalization over ``axes``, each of the kept axes' shape (``x.shape`` without
    ``axes``, no keepdims), in the statistics dtype.

    ``y = (x * q - mean_q) * rstd_q`` is ``(x - mean) / sqrt(var + epsilon)``; ``q`` is None (read: 1)
    unless ``extreme_range`` asked for a power of two per reduction, ``mean_q = mean * q``,
    ``var_q = var * q^2`` and ``rstd_q = 1 / sqrt((var + epsilon) q^2)``. ``var`` rounds to inf or 0 where it
    is beyond the dtype's range; ``mean`` never does.
    """

    count: jax.Array  # type: ignore[assignment]  # a field named like tuple.count, as the statistics' count
    q: jax.Array | None
    mean_q: jax.Array
    var_q: jax.Array
    rstd_q: jax.Array

    @property
    def mean(self) -> jax.Array:
        return unscale(self.mean_q, self.q, 1)

    @property
    def var(self) -> jax.Array:
        return unscale(self.var_q, self.q, 2)

    @property
    def rstd(self) -> jax.Array:
        """``1 / sqrt(var + epsilon)`` in the data's units."""
        return unscale(self.rstd_q, self.q, -1)


def unscale(v: jax.Array, q: jax.Array | None, power: int) -> jax.Array:
    """``v / q**power`` for ``q`` a power of two (None: 1), exactly, by the exponent: XLA would rewrite
    ``v / q / q`` as ``v / (q * q)``, whose ``q * q`` underflows for ``q <= 2**-64``."""
    if q is None:
        return v
    _, e = jnp.frexp(q)  # q = 2**(e - 1)
    return jnp.ldexp(v, power * (1 - e))


def normalizer(
    x: jax.Array,
    axes: tuple[int, ...],
    mask: jax.Array | None = None,
    axis_name: Any = None,
    epsilon: Any = 0.0,
    *,
    center: bool = True,
    floor: bool = False,
    extreme_range: bool = False,
    split: tuple[int, int] | None = None,
) -> Normalizer:
    """The statistics that normalize ``x`` over ``axes`` (a :class:`Normalizer`), by the module's kernel.

    Args:
      x: floating array; statistics in ``stats_dtype(x.dtype)``.
      axes: sorted non-negative axes to reduce (static).
      mask: None, or a boolean array of x's shape (True counts).
      axis_name: None, a named axis (or tuple of names), or a :class:`collectives.Grouped`, over whose devices
        the statistics are merged exactly.
      epsilon: added to the variance (``floor=True``: a floor of the variance, unit normalization's
        ``max(||x||^2, eps^2)``), a float or a scalar array (it may be traced and differentiated).
      center: False for RMS statistics (mean 0, ``var`` the mean of squares).
      extreme_range: exact at any finite magnitude (one more pass; see the module docstring).
      split: None, or ``(axis, groups)``: ``x``'s ``axis`` is read as ``(groups, size // groups)`` (GroupNorm),
        and ``axes`` count in that shape. The reshape happens in each pass (:class:`passes.View`).
    """
    dtype = validation.stats_dtype(x.dtype)
    eps = jnp.asarray(epsilon, dtype)
    axis_name = validation.axis_name_of(axis_name)
    view = passes.view_of(x.shape, tuple(axes), None if mask is None else mask.shape,
                          merge=jnp.dtype(x.dtype).itemsize >= 4, split=split)
    mask = view.of(mask)
    kept = tuple(d for i, d in enumerate(passes.split_shape(x.shape, split)) if i not in axes)
    if eps.ndim:  # a per-reduction epsilon (unit normalization's eps^2 / count), of the kept shape
        eps = jnp.broadcast_to(eps, kept).reshape(view.kept)
    q = _magnitude_scale(view.of(x), view.axes, mask, axis_name, eps) if extreme_range else None
    count, mean_q, var_q = _count_mean_var(x, view, mask, axis_name, center, q)
    eps_q = unscale(eps, q, -2)  # eps q^2
    rstd_q = lax.rsqrt(jnp.maximum(var_q, eps_q) if floor else var_q + eps_q)
    return Normalizer(
        count.reshape(kept), None if q is None else q.reshape(kept), mean_q.reshape(kept), var_q.reshape(kept),
        rstd_q.reshape(kept),
    )


def _count_mean_var(x, view, mask, axis_name, center, q):
    """``(count, mean, var)`` of ``x * q`` over the view's reduced axes (flat: its kept shape), merged over
    ``axis_name``; ``q`` is None (1) or a flat array (a constant of the gradient)."""
    dtype = validation.stats_dtype(x.dtype)
    n = math.prod(view.shape[a] for a in view.axes)
    if n == 0:  # an empty reduction: count 0, mean 0, var 0
        zeros = jnp.zeros(view.kept, dtype)
        count, mean, m2 = zeros, zeros, zeros
    else:
        count, mean, m2 = _local(x, view, mask, center, q, dtype, n)
    if axis_name is not None:
        count, mean, m2 = collectives.merge_across(count, mean, m2, axis_name)
    var = m2 / jnp.maximum(count, 1)
    return count, (mean if center else jnp.zeros_like(var)), var


def _local(x, view, mask, center, q, dtype, n):
    """This device's ``(count, mean, M2)`` of ``x * q`` (RMS: ``(count, 0, sum of squares)``), flat. Each pass
    over ``x`` takes its own (:meth:`passes.View.fresh`)."""
    axes, kept = view.axes, view.kept

    def scaled(v, *deps):  # v (a pass's own x, in the view) in the statistics dtype, times q
        v = v.astype(dtype)
        return v if q is None else v * view.spread(deps[0])

    qs = () if q is None else (q,)
    if mask is None:
        count = jnp.full(kept, n, dtype)
        if not center:
            return count, jnp.zeros(kept, dtype), passes.reduce_sum(jnp.square(scaled(*view.fresh(x, *qs))), axes)
        # Where short reduced axes follow the last kept one (GroupNorm's channels in a group), the sums run over
        # the outer axes only, of x as it is (no grouping reshape), with a shift per position, and the
        # positions' moments are merged exactly after: XLA CPU reduces several times slower where a shift is
        # broadcast along the minor-most axis, and reads a reshaped 16-bit array at half speed.
        outer, inner = passes.inner_split(view.shape, axes)
        if not inner:
            mean, m2 = _shifted_sums(x, view, scaled, qs)
        elif q is None:  # the sums' problem: x over the outer axes
            mean, m2 = _shifted_sums(x, outer_view(x, view, outer), None, ())
        else:  # (extreme_range: q per group, read in the view)
            mean, m2 = _shifted_sums(x, view._replace(axes=outer), scaled, qs)
        if inner:  # the positions along the inner axes, each with n_o values: Chan et al.'s many-way merge
            n_o = math.prod(view.shape[a] for a in outer)
            at = passes.kept_axes(len(view.shape), outer)
            mean_i = mean.reshape(tuple(view.shape[a] for a in at))
            m2 = m2.reshape(mean_i.shape)
            ii = tuple(i for i, a in enumerate(at) if a in inner)
            mean = jnp.mean(mean_i, ii)
            dev = mean_i - lax.broadcast_in_dim(mean, mean_i.shape, passes.kept_axes(mean_i.ndim, ii))
            m2 = jnp.sum(m2, ii) + n_o * jnp.sum(jnp.square(dev), ii)
        return count, mean, m2
    count = passes.reduce_sum(mask, axes, dtype)
    total = jnp.maximum(count, 1)
    x1, *q1 = view.fresh(x, *qs)
    xs = jnp.where(mask, scaled(x1, *q1), 0)  # before any arithmetic: NaN/inf outside the mask never propagate
    if not center:
        return count, jnp.zeros(kept, dtype), passes.reduce_sum(jnp.square(xs), axes)
    m0 = lax.stop_gradient(passes.reduce_sum(xs, axes) / total)
    x2, m02, *q2 = view.fresh(x, m0, *qs)
    d = jnp.where(mask, jnp.where(mask, scaled(x2, *q2), 0) - view.spread(m02), 0)
    s1 = passes.reduce_sum(d, axes)
    s2 = passes.reduce_sum(jnp.square(d), axes)
    mean_d = s1 / total
    return count, jnp.where(count > 0, m0 + mean_d, 0), jnp.maximum(s2 - s1 * mean_d, 0)


def _shifted_sums(x, view, scaled, qs):
    """``(mean, M2)`` over the view's reduced axes (flat) in three passes, each with its own ``x`` (a 16-bit
    ``x`` is converted inside each): the mean ``m0`` of a sample (:func:`_sample`), then the sums of ``x - m0``
    and of its square, which do not depend on each other (XLA may run them side by side). ``scaled``: the
    statistics dtype and ``q`` of the caller (None: plain conversion)."""
    dtype = validation.stats_dtype(x.dtype)
    scaled = scaled or (lambda v: v.astype(dtype))
    axes = view.axes
    x0, *q0 = view.fresh(x, *qs)
    sample = scaled(x0, *q0)[_sample(view.shape, axes)]
    m0 = lax.stop_gradient(jnp.sum(sample * (1 / math.prod(sample.shape[a] for a in axes)), axes))
    s1 = passes.reduce_sum(scaled(view.of(x), *qs) - view.spread(m0), axes)
    x2, m02, *q2 = view.fresh(x, m0, *qs)
    s2 = passes.reduce_sum(jnp.square(scaled(x2, *q2) - view.spread(m02)), axes)
    d = s1 / math.prod(view.shape[a] for a in axes)
    return m0 + d, jnp.maximum(s2 - s1 * d, 0)


def outer_view(x, view, outer):
    """The view of ``x`` (its own shape, no grouping split) reduced over the axes that ``outer`` (axes of
    ``view``) covers: the per-position problem of GroupNorm's statistics (``(N, H, W, C)`` over ``(1, 2)``)."""
    split_axes = [a for g in (view.groups[i] for i in outer) for a in g]  # in the split shape
    c = view.split[0] if view.split is not None else len(x.shape)
    original = tuple(sorted(a if a < c else a - 1 for a in split_axes))
    return passes.view_of(x.shape, original, merge=jnp.dtype(x.dtype).itemsize >= 4)


def _sample(shape: tuple[int, ...], axes: tuple[int, ...]) -> tuple[slice, ...]:
    """The index of ``SHIFT_SAMPLES`` values of each reduction. Where the reduction runs along axis 0 (a batch,
    which ``jit`` may shard across devices), values evenly spaced along it: every device holds its share of
    them, and their mean is one small all-reduce, where the first values would have to be sent from the first
    device. Otherwise the first values: as many as fit from the innermost reduced axis (contiguous in memory),
    then from the next ones out."""
    index = [slice(None)] * len(shape)
    if axes and axes[0] == 0:
        step = max(1, shape[0] // SHIFT_SAMPLES)
        index[0] = slice(0, step * min(shape[0], SHIFT_SAMPLES), step)
        for a in axes[1:]:
            index[a] = slice(0, 1)
        return tuple(index)
    left = SHIFT_SAMPLES
    for a in reversed(axes):
        take = max(1, min(shape[a], left))
        index[a] = slice(0, take)
        left = max(1, left // take)
    return tuple(index)


def _magnitude_scale(x, axes, mask, axis_name, eps):
    """``q = 2**-e`` per reduction (flat), with ``max |x| * q`` in [0.5, 1) over the selected values of every
    device: every square of ``x * q`` is then below 4 (no overflow), and a variance that underflows it would be
    below float32's resolution of ``x`` itself. ``e`` is raised where needed so that ``epsilon * q^2`` stays at
    most ``2**100``, and kept in [-125, 126] so that ``q`` and ``1 / q`` are normal numbers. Non-finite data
    gets ``q = 1`` (its statistics are NaN as without the option)."""
    a = jnp.abs(x.astype(eps.dtype))
    if mask is not None:
        a = jnp.where(mask, a, 0)
    amax = jnp.max(a, axes, initial=0)
    if axis_name is not None:
        amax = collectives.max_across(amax, axis_name)
    _, e = jnp.frexp(jnp.where(jnp.isfinite(amax), amax, 0))
    tiny = jnp.finfo(eps.dtype).tiny
    floor = jnp.where(eps > 0, jnp.ceil((jnp.log2(jnp.maximum(eps, tiny)) - 100) / 2), -(2**20))
    e = jnp.clip(jnp.maximum(e.astype(jnp.int32), floor.astype(jnp.int32)), -125, 126)
    return lax.stop_gradient(jnp.ldexp(jnp.ones(amax.shape, eps.dtype), -e))


def count_mean_var(
    x: jax.Array, axes: tuple[int, ...], mask: jax.Array | None = None, axis_name: Any = None,
    *, extreme_range: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Count, mean and population variance over ``axes`` with keepdims (mean and var 0 where count is 0)."""
    st = normalizer(x, axes, mask, axis_name, extreme_range=extreme_range)
    keep = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
    return tuple(a.reshape(keep) for a in (st.count, st.mean, st.var))  # type: ignore[return-value]


def mean_var(
    x: jax.Array, axes: tuple[int, ...], mask: jax.Array | None = None, axis_name: Any = None,
    *, extreme_range: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """Mean and population variance over ``axes`` with keepdims (0 and 0 where nothing is selected)."""
    return count_mean_var(x, axes, mask, axis_name, extreme_range=extreme_range)[1:]
