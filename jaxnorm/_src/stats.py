"""The statistics kernel: every layer's mean and variance come from :func:`moments` and its helper.

Statistics are two-pass (mean, then the mean of squared deviations about it) on data shifted by one of its
own samples, computed in at least float32 whatever the input dtype. Unlike ``E[x^2] - E[x]^2`` (Flax's default,
``use_fast_variance=True``; Haiku's opt-in), this has no catastrophic cancellation: on float32
``1e4 + N(0, 1)`` it returns variance 1, where the fast formula returns 0.

Masked-out values are replaced by zero *before* any arithmetic, so NaN or inf there touches neither the
statistics nor their gradients.

Any finite float32 magnitude is exact: where squares overflow (``|x - mean|`` beyond ``2**64``) or underflow (a
variance below ``2**-101`` with an ``epsilon`` too small to hide it), :func:`normalizer` detects it from the small
statistics (no extra pass over ``x`` on ordinary data) and only then, in a ``lax.cond`` branch, takes the
statistics again of ``x`` rescaled by a power of two per reduction (on the host in float64, where no square of a
float32 overflows or underflows; across devices in the graph), for the reductions that need it only. Subnormal
float32 inputs are read as zero: XLA's CPU arithmetic flushes them in every op (``jnp.float32(1e-40) * 2**100``
is 0 there), so a row of them normalizes as a row of zeros.

An empty reduction (a zero-size batch) has count 0, mean 0 and variance 0.

Across devices (``axis_name``) the per-device ``(count, mean, M2)`` triples are merged exactly with two all-reduces
(``psum``; an all_gather per name with device groups) (Chan, Golub & LeVeque 1979), so devices holding different
numbers of valid elements are weighted by their counts.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
from typing import Any, NamedTuple

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np
from jax import custom_batching, lax
from jax.interpreters import ad, batching, mlir

from jaxnorm._src import validation


def split_axes(ndim: int, axes: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(outer, inner)``: the reduced axes before and after the last kept axis, when a kept axis lies between
    reduced ones (GroupNorm's ``(N, H, W, G, C/G)`` over ``(1, 2, 4)``: ``((1, 2), (4,))``); else ``(axes, ())``.
    """
    kept = [i for i in range(ndim) if i not in axes]
    if kept and axes and min(axes) < max(kept) < max(axes):
        return tuple(i for i in axes if i < max(kept)), tuple(i for i in axes if i > max(kept))
    return tuple(axes), ()


def _split_pays(shape: tuple[int, ...], axes: tuple[int, ...]) -> bool:
    """Two stages pay when the inner reduced axes are the short ones (GroupNorm's channels per group), not
    when they are the long ones (channels-first BatchNorm's H, W after the batch)."""
    if accelerator():  # an XLA CPU workaround (sum_keepdims); on a GPU its barriers only cost
        return False
    outer, inner = split_axes(len(shape), axes)
    return bool(inner) and math.prod(shape[i] for i in inner) < math.prod(shape[i] for i in outer)


def sum_keepdims(a: jax.Array, axes: tuple[int, ...], dtype: Any = None) -> jax.Array:
    """``jnp.sum(a, axes, keepdims=True)``, in two stages when a kept axis lies between reduced ones.

    XLA CPU reduces a block whose reduced axes surround a kept one (GroupNorm's ``(N, H, W, G, C/G)`` over
    ``(1, 2, 4)``) about 10x slower than the outer axes alone: measured at ``(8, 56, 56, 256)`` float32 with 32
    groups, 6.0 ms against 0.54 ms for ``(1, 2)``. So the outer axes are summed first and the inner ones of the
    small partial sums after, with an optimization barrier between the two (XLA's simplifier merges them back
    into the slow single reduction otherwise).
    """
    if not _split_pays(a.shape, axes):
        return jnp.sum(a, axes, keepdims=True, dtype=dtype)
    outer, inner = split_axes(a.ndim, axes)
    partial = lax.optimization_barrier(jnp.sum(a, outer, keepdims=True, dtype=dtype))
    return jnp.sum(partial, inner, keepdims=True, dtype=dtype)


def along_inner(stat: jax.Array, shape: tuple[int, ...], axes: tuple[int, ...]) -> jax.Array:
    """A keepdims statistic broadcast along the inner reduced axes of :func:`split_axes` (small: the outer axes
    stay 1) and materialized, so that the full-size expressions using it broadcast only along the outer axes.
    XLA CPU is several times slower when a reduction's operand is broadcast along its minor-most axis."""
    if not _split_pays(shape, axes):
        return stat
    outer, _ = split_axes(len(shape), axes)
    target = tuple(1 if i in outer else d for i, d in enumerate(shape))
    return lax.optimization_barrier(jnp.broadcast_to(stat, target))


# Formulation switches, read at trace time; benchmarks/formulations.py turns them off to time what they cost
# (not API: the defaults are the library's behaviour).
_GUARD = True  # False: no overflow/underflow check and no lax.cond (the ordinary statistics only)
_FRESH = True  # False: fresh() is the identity (passes may share a conversion of x)
_ACCELERATOR = None  # None: from jax.default_backend(); True/False forces a formulation (tests)


def accelerator() -> bool:
    """Whether to trace the accelerator (GPU/TPU) formulation: branch-free exact statistics
    (:func:`_branch_free_stats`), no per-pass optimization barriers, no blocked row loop. The CPU formulation's
    ``lax.cond`` guard reads its predicate on the host, which stalls a GPU's stream once per layer: measured on
    an H200, 3-4x the time of the same statistics without it (benchmarks/RESULTS.md, "GPU")."""
    return jax.default_backend() != "cpu" if _ACCELERATOR is None else bool(_ACCELERATOR)


def fresh(x: jax.Array, *deps: Any) -> tuple[Any, ...]:
    """``(x, *deps)`` behind an optimization barrier: a use of ``x`` that XLA cannot merge with its other uses
    and that starts only once ``deps`` (small statistics) are computed.

    Each pass over ``x`` (the statistics' passes, the output) takes its own ``x`` from here, so that a 16-bit
    ``x`` is converted to float32 inside each pass's fused loop. Otherwise XLA shares one conversion among the
    passes and materializes it: a full-size float32 copy of ``x`` (measured on CPU, BatchNorm forward at
    ``(8, 56, 56, 256)`` bfloat16: 25 MiB of temporaries and 1.8x the time; see benchmarks/RESULTS.md, issue 13).
    """
    if not _FRESH or accelerator():  # XLA GPU fuses the passes itself; a barrier there costs a copy
        return (x, *deps)
    leaves, tree = jax.tree_util.tree_flatten((x, *deps))  # (deps may hold None, like optimization_barrier's)
    return jax.tree_util.tree_unflatten(tree, _fresh_p.bind(*leaves)) if leaves else (x, *deps)


# fresh() is its own primitive, lowered to an optimization barrier, because JAX's own barrier cannot be
# transposed with residual (non-linear) operands beside linear ones (jax 0.11-0.12: "DynamicJaxprTracer has no
# attribute accum"), which reverse-over-reverse AD of the custom backward does. Here a transpose passes each
# linear operand's cotangent through a barrier and leaves the residuals alone.
_fresh_p = jex.Primitive("jaxnorm_fresh")
_fresh_p.multiple_results = True
_fresh_p.def_impl(lambda *args: list(lax.optimization_barrier(args)))
_fresh_p.def_abstract_eval(lambda *avals: list(avals))
mlir.register_lowering(
    _fresh_p, mlir.lower_fun(lambda *args: list(lax.optimization_barrier(args)), multiple_results=True)
)


def _fresh_jvp(primals, tangents):
    nonzero = [type(t) is not ad.Zero for t in tangents]
    live = [t for t, nz in zip(tangents, nonzero, strict=True) if nz]
    moved = iter(_fresh_p.bind(*live) if live else ())
    return _fresh_p.bind(*primals), [next(moved) if nz else t for t, nz in zip(tangents, nonzero, strict=True)]


def _fresh_transpose(cts, *args):
    linear = [ad.is_undefined_primal(a) and type(c) is not ad.Zero for a, c in zip(args, cts, strict=True)]
    moved = iter(_fresh_p.bind(*(c for c, lin in zip(cts, linear, strict=True) if lin)) if any(linear) else ())
    return [
        (next(moved) if lin else ad.Zero(a.aval)) if ad.is_undefined_primal(a) else None
        for a, lin in zip(args, linear, strict=True)
    ]


ad.primitive_jvps[_fresh_p] = _fresh_jvp
ad.primitive_transposes[_fresh_p] = _fresh_transpose
batching.primitive_batchers[_fresh_p] = lambda args, dims: (_fresh_p.bind(*args), dims)


def count_mean_m2(
    x: jax.Array,
    axes: tuple[int, ...],
    mask: jax.Array | None,
    axis_name: Any = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Count, mean and sum of squared deviations (M2) of ``x`` over ``axes``, reduced with keepdims.

    Args:
      x: floating array. Statistics are computed in ``stats_dtype(x.dtype)``.
      axes: sorted non-negative axes to reduce.
      mask: None, or a boolean array of x's shape (True counts).
      axis_name: None, or a named axis (or tuple of names) over which to merge the statistics exactly.

    Returns:
      ``(count, mean, m2)``, each of x's rank with size-1 reduced axes, in the statistics dtype. ``mean`` is 0
      where ``count`` is 0.
    """
    dtype = validation.stats_dtype(x.dtype)
    kept_shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
    if any(x.shape[a] == 0 for a in axes):  # an empty reduction: count 0, mean 0, M2 0 (no sample to shift by)
        zeros = jnp.zeros(kept_shape, dtype)
        if axis_name is not None:
            return _merge_across(zeros, zeros, zeros, axis_name)
        return zeros, zeros, zeros
    # Shift by one sample per reduction (a constant for the gradient): sums of x - shift are O(std * n),
    # not O(offset * n), so the mean keeps its float32 precision on offset data.
    first = tuple(slice(0, 1) if i in axes else slice(None) for i in range(x.ndim))
    if mask is None:
        # Each pass is one fused reduction over x (no shifted full-size copy is materialized): measured on CPU,
        # a materialized temporary costs its page faults on every call. With inner reduced axes (split_axes),
        # the shift is one sample per outer reduction (it varies along the inner axes; every inner position
        # has the same count, so the mean of the shifts corrects the sum) and the mean is broadcast along the
        # inner axes before the second pass: both passes then broadcast only along the outer axes.
        # Each pass takes its own x (:func:`fresh`): 16-bit input is converted inside each pass.
        n = math.prod(x.shape[a] for a in axes)
        outer, inner = split_axes(x.ndim, axes) if _split_pays(x.shape, axes) else (axes, ())
        if inner:
            first = tuple(slice(0, 1) if i in outer else slice(None) for i in range(x.ndim))
        x1, shift = fresh(x, lax.stop_gradient(x[first]).astype(dtype))
        base = jnp.mean(shift, inner, keepdims=True) if inner else shift
        mean = base + sum_keepdims(x1.astype(dtype) - shift, axes) / max(n, 1)
        x2, mean = fresh(x, mean)
        m2 = sum_keepdims(jnp.square(x2.astype(dtype) - along_inner(mean, x.shape, axes)), axes)
        count = jnp.full(mean.shape, n, dtype)
    else:
        xs = jnp.where(mask, x.astype(dtype), 0)  # before any arithmetic: NaN/inf outside the mask never propagate
        shift = lax.stop_gradient(xs[first])
        d = jnp.where(mask, xs - shift, 0)
        count = sum_keepdims(mask, axes, dtype)
        mean_d = sum_keepdims(d, axes) / jnp.maximum(count, 1)
        m2 = sum_keepdims(jnp.where(mask, jnp.square(d - mean_d), 0), axes)
        mean = jnp.where(count > 0, shift + mean_d, 0)
    if axis_name is not None:
        count, mean, m2 = _merge_across(count, mean, m2, axis_name)
    return count, mean, m2


@dataclasses.dataclass(frozen=True)
class Grouped:
    """A named axis whose devices are split into groups (Flax's ``axis_index_groups``): statistics are merged
    within each group only. Passed wherever an ``axis_name`` is accepted internally."""

    axis_name: Any
    groups: tuple[tuple[int, ...], ...]

    def __repr__(self) -> str:
        return f"{self.axis_name!r} (axis_index_groups={[list(g) for g in self.groups]})"


def with_groups(axis_name: Any, axis_index_groups: Any, owner: str = "") -> Any:
    """``axis_name`` itself, or a :class:`Grouped` of it after checking ``axis_index_groups``'s form."""
    if axis_index_groups is None:
        return axis_name
    if axis_name is None or isinstance(axis_name, tuple | list):
        raise ValueError(
            f"{owner}`axis_index_groups` needs a single `axis_name` to group over; got axis_name={axis_name!r}. "
            "Pass one name, "
            "e.g. axis_name='batch', axis_index_groups=[[0, 1], [2, 3]]."
        )
    try:
        groups = tuple(tuple(int(operator.index(i)) for i in g) for g in axis_index_groups)
    except TypeError:
        raise ValueError(
            f"{owner}`axis_index_groups` must be a list of lists of device indices, e.g. [[0, 1], [2, 3]]; got "
            f"{axis_index_groups!r}."
        ) from None
    flat = [i for g in groups for i in g]
    if not groups or any(not g for g in groups) or len(set(flat)) != len(flat) or min(flat) < 0:
        raise ValueError(
            f"{owner}`axis_index_groups` must split the devices of {axis_name!r} into non-empty groups of "
            "distinct indices "
            f">= 0; got {axis_index_groups!r}."
        )
    return Grouped(axis_name, groups)


def _merge_across(count, mean, m2, axis_name):
    """Exact merge of per-device (count, mean, M2) triples over named axes (Chan et al.'s many-way form).

    Without groups: two all-reduces (``psum``), ``(n, n * mean)`` and then ``M2 + n * (mean - mean_all)^2``, whose
    results are replicated by construction (``jax.shard_map`` types them as invariant, so replicated moving
    statistics may leave with ``out_specs=P()``). With groups (:class:`Grouped`): one all_gather per name and a
    per-group sum. ``m2=None``: the count-weighted mean only, reduced apart from the counts so that it may be a
    tangent."""
    grouped = axis_name if isinstance(axis_name, Grouped) else None
    if grouped is not None:
        axis_name = grouped.axis_name

    def unbound(err):
        return ValueError(
            f"`axis_name`={axis_name!r} is not bound here ({err}). Call the layer inside "
            f"`jax.shard_map`, `jax.pmap` or `jax.vmap` with axis_name={axis_name!r}, or pass axis_name=None "
            "(under jax.jit with a sharded input the statistics are already global)."
        )

    if grouped is None:
        try:
            total, weighted = lax.psum((count, count * mean), axis_name)
            mean_all = weighted / jnp.maximum(total, 1)
            if m2 is None:
                return total, mean_all, None
            return total, mean_all, lax.psum(m2 + count * jnp.square(mean - mean_all), axis_name)
        except NameError as err:
            raise unbound(err) from None

    def gather(a):  # (devices, *a.shape[1:]) from each device's a
        try:
            # One all_gather per name (JAX's vmap cannot gather over several names at once).
            for name in reversed(axis_name if isinstance(axis_name, tuple) else (axis_name,)):
                a = lax.all_gather(a, name)
        except NameError as err:
            raise unbound(err) from None
        return a.reshape((-1,) + a.shape[-(count.ndim + 1):])  # (devices, k, ...)

    if m2 is None:  # separate gathers: a tangent mean must not share an array with the (primal) counts
        counts, means = gather(count[None])[:, 0], gather(mean[None])[:, 0]
        m2s = jnp.zeros_like(counts)
    else:
        stacked = gather(jnp.stack([count, mean, m2]))  # (devices, 3, ...)
        counts, means, m2s = stacked[:, 0], stacked[:, 1], stacked[:, 2]
    if grouped is not None:  # keep only the devices of this device's group
        n = counts.shape[0]
        flat = sorted(i for g in grouped.groups for i in g)
        if flat != list(range(n)):
            raise ValueError(
                f"`axis_index_groups`={[list(g) for g in grouped.groups]} must cover each of the {n} devices of "
                f"{axis_name!r} exactly once (indices 0..{n - 1})."
            )
        member = np.zeros((n, n), bool)
        for g in grouped.groups:
            member[np.ix_(g, g)] = True
        weight = jnp.asarray(member)[lax.axis_index(axis_name)].reshape((n,) + (1,) * count.ndim)
        counts, m2s = jnp.where(weight, counts, 0), jnp.where(weight, m2s, 0)
    total = jnp.sum(counts, 0, keepdims=True)
    mean_all = jnp.sum(counts * means, 0, keepdims=True) / jnp.maximum(total, 1)
    if m2 is None:  # the count-weighted mean only (linear in the means: a tangent may pass through)
        return total[0], mean_all[0], None
    m2_all = jnp.sum(m2s + counts * jnp.square(means - mean_all), 0, keepdims=True)
    return total[0], mean_all[0], m2_all[0]


def merge_count_mean_m2(a: tuple[Any, Any, Any], b: tuple[Any, Any, Any]) -> tuple[Any, Any, Any]:
    r"""Exact merge of two ``(count, mean, M2)`` triples of disjoint data into the triple of their union.

    .. math::
        n = n_a + n_b,\quad \delta = \mu_b - \mu_a,\quad \mu = \mu_a + \delta\,\frac{n_b}{n},\quad
        M_2 = M_{2,a} + M_{2,b} + \delta^2\,\frac{n_a n_b}{n}

    (Chan, Golub & LeVeque 1979, the pairwise update; :func:`_merge_across` is its many-way form). Both triples
    empty (``n = 0``) give ``(0, mean_a, m2_a + m2_b)``. Python arithmetic only, so it runs on NumPy arrays
    (float64 on the host, as ``Normalization.adapt`` does), JAX arrays or Python floats alike; the operands
    should share one shape.
    """
    count_a, mean_a, m2_a = a
    count_b, mean_b, m2_b = b
    count = count_a + count_b
    frac_b = count_b / (count + (count == 0))  # n_b / n, and 0 where both are empty
    delta = mean_b - mean_a
    return count, mean_a + delta * frac_b, m2_a + m2_b + delta * delta * count_a * frac_b


def count_mean_square(
    x: jax.Array, axes: tuple[int, ...], mask: jax.Array | None = None, axis_name: Any = None
) -> tuple[jax.Array, jax.Array]:
    """Count and mean of squares over ``axes`` with keepdims (RMSNorm's statistic), in at least float32;
    masked-out values never enter; across ``axis_name`` the per-device means are merged count-weighted."""
    dtype = validation.stats_dtype(x.dtype)
    xs = x.astype(dtype)
    if mask is None:
        n = math.prod(x.shape[a] for a in axes)
        count = jnp.full(tuple(1 if i in axes else d for i, d in enumerate(x.shape)), n, dtype)
        square = sum_keepdims(jnp.square(xs), axes) / max(n, 1)
    else:
        count = sum_keepdims(mask, axes, dtype)
        square = sum_keepdims(jnp.square(jnp.where(mask, xs, 0)), axes)
        square = square / jnp.maximum(count, 1)
    if axis_name is not None:  # the count-weighted mean of the devices' means is the global mean of squares
        count, square, _ = _merge_across(count, square, jnp.zeros_like(square), axis_name)
    return count, square


@custom_batching.custom_vmap
def _any_anywhere(flags: jax.Array) -> jax.Array:
    """``jnp.any(flags)``, also over every ``vmap``-ped axis: under ``vmap`` the result stays one unbatched bool,
    so that a ``lax.cond`` on it stays a branch (a batched predicate would turn it into a select that runs both
    branches)."""
    return jnp.any(flags)


@_any_anywhere.def_vmap
def _any_anywhere_vmap(axis_size, in_batched, flags):
    del axis_size, in_batched
    return jnp.any(flags), False


def _thresholds(dtype: Any) -> tuple[float, float]:
    """``(tiny, eps_floor)`` of a statistics dtype: a variance (or mean square) below ``tiny`` may have lost
    digits to squares that underflowed; it matters only when the ``epsilon`` added to it is below
    ``eps_floor`` (above, such a variance is below the rounding of ``var + epsilon``)."""
    info = jnp.finfo(dtype)
    tiny = float(info.tiny) / float(info.eps) * 4  # float32: 2**-101
    return tiny, tiny / float(info.eps)  # float32: 2**-78


def _scale_exponent(amax_e: jax.Array, epsilon: jax.Array) -> jax.Array:
    """The exponent ``e`` of the scale ``2**-e`` that brings a maximum magnitude of exponent ``amax_e`` to
    [0.5, 1), raised where needed so that ``epsilon * 2**(-2e)`` stays finite (at most 2**100), and kept in
    [-125, 126] so that ``q = 2**-e`` and ``1 / q`` are normal numbers."""
    tiny = jnp.finfo(epsilon.dtype).tiny
    floor = jnp.where(epsilon > 0, jnp.ceil((jnp.log2(jnp.maximum(epsilon, tiny)) - 100) / 2), -(2**20))
    return lax.stop_gradient(jnp.clip(jnp.maximum(amax_e, floor.astype(jnp.int32)), -125, 126))


def _max_exponent(x: jax.Array, axes: tuple[int, ...], mask: jax.Array | None, axis_name: Any) -> jax.Array:
    """``e`` (int32, keepdims) with ``max |x| * 2**-e`` in [0.5, 1), the maximum over ``axes`` of the selected
    values and over ``axis_name``'s devices (0 where nothing is selected or the maximum is 0, inf or NaN)."""
    a = jnp.abs(x) if mask is None else jnp.where(mask, jnp.abs(x), 0)
    amax = jnp.max(a, axes, keepdims=True, initial=0)
    if axis_name is not None:
        amax = lax.pmax(amax, axis_name.axis_name if isinstance(axis_name, Grouped) else axis_name)
    _, e = jnp.frexp(jnp.where(jnp.isfinite(amax), amax, 0))
    return e.astype(jnp.int32)


class Normalizer(NamedTuple):
    """The statistics of a normalization, exact at any float32 magnitude.

    ``y = (x * q - mean_q) * rstd_q`` is ``(x - mean) / sqrt(var + epsilon)`` without overflow or underflow:
    ``q`` is a power of two per reduction (1 on ordinary data), ``mean_q = mean * q`` and
    ``rstd_q = 1 / sqrt((var + epsilon) q^2)``. ``count``, ``mean``, ``var`` are in the data's units (``var``
    rounds to inf or 0 where it is beyond the dtype's range; ``mean`` never is). All keep the reduced axes with
    size 1, in the statistics dtype.
    """

    count: jax.Array  # type: ignore[assignment]  # a field named like tuple.count, as the statistics' count
    mean: jax.Array
    var: jax.Array
    q: jax.Array
    mean_q: jax.Array
    var_q: jax.Array
    rstd_q: jax.Array

    @property
    def rstd(self) -> jax.Array:
        """``1 / sqrt(var + epsilon)`` in the data's units (inf where it is beyond the dtype's range)."""
        return self.rstd_q * self.q


def normalizer(
    x: jax.Array,
    axes: tuple[int, ...],
    mask: jax.Array | None = None,
    axis_name: Any = None,
    epsilon: Any = 0.0,
    *,
    center: bool = True,
    floor: bool = False,
) -> Normalizer:
    """The statistics that normalize ``x`` over ``axes``, exact for any finite input (a :class:`Normalizer`).

    The ordinary path is the shifted two-pass kernel (:func:`count_mean_m2`; :func:`count_mean_square` with
    ``center=False``, RMSNorm's mean of squares in ``var`` and ``mean`` 0). A cheap check on the small
    statistics (not on ``x``) catches the inputs whose squares overflow or underflow in the statistics dtype
    (a non-finite statistic, or a variance below :func:`_thresholds`' ``tiny`` with an ``epsilon`` too small to
    hide it); only then, in a ``lax.cond`` branch, ``x`` is rescaled per reduction by a power of two from its
    maximum magnitude (exact) and the statistics are taken again. Across ``axis_name`` every device takes the
    same branch, and under ``vmap`` the branch stays a branch (one flag for the whole batch). The derivatives
    are the closed form (a ``custom_jvp``, so the untaken branch costs nothing in reverse mode), zero at
    masked-out positions whatever they hold.

    ``floor=True``: ``epsilon`` is a floor of the variance, ``rstd = 1 / sqrt(max(var, epsilon))`` (unit
    normalization's ``max(||x||^2, eps^2)`` with ``epsilon = eps^2 / n``), instead of added to it.
    """
    dtype = validation.stats_dtype(x.dtype)
    eps = jnp.asarray(epsilon, dtype)
    if isinstance(axis_name, list):
        axis_name = tuple(axis_name)  # hashable: the kernel is compiled once per static configuration
    # (The cache does not know the switches: with one set, trace the kernel afresh.)
    kernel = _compiled_stats if _GUARD and _FRESH and _ACCELERATOR is None else _scaled_stats
    count, q, mean_q, var_q = kernel(x, tuple(axes), axis_name, bool(center), bool(floor), mask, eps)
    eps_q = (eps * q) * q
    rstd_q = lax.rsqrt(jnp.maximum(var_q, eps_q) if floor else var_q + eps_q)
    return Normalizer(count, mean_q / q, var_q / q / q, q, mean_q, var_q, rstd_q)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3, 4))
def _scaled_stats(x, axes, axis_name, center, floor, mask, eps):
    """``(count, q, mean_q, var_q)`` of :func:`normalizer`: the ordinary kernel, or the rescaled one when the
    ordinary statistics show overflow or underflow."""
    dtype = validation.stats_dtype(x.dtype)
    if mask is None and axis_name is None and x.size and _GUARD and accelerator():
        return _branch_free_stats(x, axes, center, floor, eps)
    if center:
        count, mean, m2 = count_mean_m2(x, axes, mask, axis_name)
        var = m2 / jnp.maximum(count, 1)
    else:
        count, var = count_mean_square(x, axes, mask, axis_name)
        mean = jnp.zeros_like(var)
    one = jnp.ones_like(var)
    if x.size == 0 or not _GUARD:
        return count, one, mean, var
    tiny, eps_floor = _thresholds(dtype)
    if floor:  # below a floor of at least 2 tiny, a variance that lost digits still rounds to the floor
        eps_floor = 2 * tiny
    bad = ~jnp.isfinite(mean) | ~jnp.isfinite(var) | ((var < tiny) & (eps < eps_floor))  # per reduction
    flag = bad
    if axis_name is not None:  # every device must take the same branch (the rescaled one gathers too)
        names = axis_name.axis_name if isinstance(axis_name, Grouped) else axis_name
        flag = lax.pmax(flag.astype(jnp.int32), names) > 0

    # Both branches stay small (XLA compiles each kernel of a branch separately): the ordinary one passes its
    # operands through, the rescaled one is a single host callback that also keeps the unflagged reductions'
    # ordinary statistics bit for bit.
    def ordinary(x, bad, mean, var, one):
        return one, mean, var

    def rescaled(x, bad, mean, var, one):  # only the flagged reductions are rescaled
        if axis_name is None:  # on the host, in float64
            return _host_stats(x, mask, eps, bad, mean, var, axes, center)
        xs = x.astype(dtype)
        e = _scale_exponent(_max_exponent(xs, axes, mask, axis_name), eps)
        q = jnp.ldexp(jnp.ones_like(var), -e)
        xq = xs * q
        if center:
            _, mean_q, m2_q = count_mean_m2(xq, axes, mask, axis_name)
            var_q = m2_q / jnp.maximum(count, 1)
        else:
            _, var_q = count_mean_square(xq, axes, mask, axis_name)
            mean_q = jnp.zeros_like(var_q)
        return jnp.where(bad, q, one), jnp.where(bad, mean_q, mean), jnp.where(bad, var_q, var)

    q, mean_q, var_q = lax.cond(_any_anywhere(flag), rescaled, ordinary, x, bad, mean, var, one)
    return count, q, mean_q, var_q


_BIG, _SMALL = 2.0**-96, 2.0**96  # RMS accumulators' scales: (x * 2**-96)**2 never overflows, (x * 2**96)**2
# never underflows where the plain mean square does


def _branch_free_stats(x, axes, center, floor, eps):
    """``(count, q, mean_q, var_q)`` exact at any finite float32 magnitude without a branch: the accelerator
    formulation of :func:`_scaled_stats` (no mask, no ``axis_name``), two passes for the mean and variance and
    one for the mean square, each of several reductions of the same operand (XLA GPU fuses them into one kernel).

    Mean and variance: the first pass sums ``x/2 - shift/2`` (halves: exact, and never overflowing) and takes the
    maximum magnitude of the same, which gives ``q = 2**-e``, a power of two per reduction (lowered so that
    ``epsilon q^2`` stays finite). The second sums ``d = (x - mean1) q`` and ``d^2``; ``|d| < 2``, so no square
    overflows or underflows: ``mean_q = mean1 q + <d>`` and ``var_q = <d^2> - <d>^2`` (a small correction when
    ``mean1`` is good; ``mean1`` falls back to the shift where the first sum overflowed).

    Mean square (``center=False``): one pass with three accumulators, ``<x^2>``, ``<(x 2^-96)^2>`` and
    ``<(x 2^96)^2>``; the first is used where it is finite and not below the underflow threshold of
    :func:`_thresholds` (or ``epsilon`` hides it), else the one that holds it, with ``q`` its scale.
    """
    dtype = validation.stats_dtype(x.dtype)
    n = math.prod(x.shape[a] for a in axes)
    xs = x.astype(dtype)
    count = jnp.full(tuple(1 if i in axes else d for i, d in enumerate(x.shape)), n, dtype)
    if not center:
        tiny, eps_floor = _thresholds(dtype)
        if floor:
            eps_floor = 2 * tiny
        mid = jnp.sum(jnp.square(xs), axes, keepdims=True) / n
        big = jnp.sum(jnp.square(xs * _BIG), axes, keepdims=True) / n
        small = jnp.sum(jnp.square(xs * _SMALL), axes, keepdims=True) / n
        use_big = ~jnp.isfinite(mid)
        use_small = ~use_big & (mid < tiny) & (eps < eps_floor)
        one = jnp.ones_like(mid)
        q = jnp.where(use_big, _BIG * one, jnp.where(use_small, _SMALL * one, one))
        return count, q, jnp.zeros_like(mid), jnp.where(use_big, big, jnp.where(use_small, small, mid))
    first = tuple(slice(0, 1) if i in axes else slice(None) for i in range(x.ndim))
    half = lax.stop_gradient(xs[first]) * 0.5
    d1 = xs * 0.5 - half
    s1 = jnp.sum(d1, axes, keepdims=True)
    amax = jnp.max(jnp.abs(d1), axes, keepdims=True)
    mean_half = lax.stop_gradient(half + jnp.where(jnp.isfinite(s1), s1 / n, 0))
    _, e = jnp.frexp(jnp.where(jnp.isfinite(amax), amax, 0))
    e = jnp.minimum(_scale_exponent(e.astype(jnp.int32), eps), 125)
    q = lax.stop_gradient(jnp.ldexp(jnp.ones_like(s1), -e - 1))  # a normal number; |x/2 - mean/2| * 2q < 2
    d2 = (xs * 0.5 - mean_half) * (2 * q)
    m = jnp.sum(d2, axes, keepdims=True) / n
    var_q = jnp.maximum(jnp.sum(jnp.square(d2), axes, keepdims=True) / n - m * m, 0)
    return count, q, mean_half * (2 * q) + m, var_q


# Compiled once per shape and static configuration: called eagerly (outside jit), the kernel's lax.cond and
# custom_jvp would otherwise be traced again on every call (about 40 ms against 3 ms measured on CPU); inside a
# jit it is inlined like any other call.
_compiled_stats = jax.jit(_scaled_stats, static_argnums=(1, 2, 3, 4))


def vary_like(p: Any, x: jax.Array) -> Any:
    """``p`` cast to vary over the manual (``shard_map``) axes ``x`` varies over. A replicated scale, bias or
    epsilon then reaches the custom backward typed like its per-device cotangent (which ``jax.custom_vjp``
    requires under ``check_vma``), and JAX's transpose of the cast sums that cotangent over the devices, as
    autodiff of a replicated parameter does."""
    if p is None or p is False:
        return p
    try:
        extra = jax.typeof(x).manual_axis_type.varying - jax.typeof(p).manual_axis_type.varying
    except AttributeError:  # outside shard_map, or a JAX without varying-axis types
        return p
    return lax.pcast(p, tuple(sorted(extra)), to="varying") if extra else p


def _rescaled_on_host(x, mask, eps, bad, mean, var, *, axes, center):
    """``(q, mean q, var q^2)`` of ``x`` over ``axes`` in NumPy float64, whose range holds every float32 square
    (and which reads subnormals exactly), for the reductions flagged ``bad``; the others keep ``(1, mean, var)``:
    the rare branch of :func:`_scaled_stats` without ``axis_name``. ``q = 2**-e`` brings ``max |x|`` to
    [0.5, 1), lowered so that ``eps q^2`` stays below 2**100."""
    dtype = np.asarray(var).dtype  # the statistics dtype (float32, or float64 for float64 input)
    with np.errstate(all="ignore"):  # NaN or inf data (a bad batch) gives NaN statistics, as the graph does
        x = np.asarray(x, np.float64)
        m = np.ones(x.shape, bool) if mask is None else np.broadcast_to(np.asarray(mask, bool), x.shape)
        xz = np.where(m, x, 0.0)
        n = np.maximum(m.sum(axes, keepdims=True), 1)
        mean_r = xz.sum(axes, keepdims=True) / n if center else np.zeros_like(n, np.float64)
        var_r = (np.where(m, xz - mean_r, 0.0) ** 2).sum(axes, keepdims=True) / n
        amax = np.abs(xz).max(axes, keepdims=True, initial=0.0)
        _, e = np.frexp(np.where(np.isfinite(amax), amax, 0.0))
        eps = np.asarray(eps, np.float64)
        floor = np.where(eps > 0, np.ceil((np.log2(np.where(eps > 0, eps, 1.0)) - 100) / 2), -(2**20))
        q = np.ldexp(1.0, -np.clip(np.maximum(e, floor), -125, 126).astype(np.int64))
        bad = np.asarray(bad, bool)
        merged = (np.where(bad, q, 1.0), np.where(bad, mean_r * q, mean), np.where(bad, var_r * q * q, var))
        return tuple(np.asarray(a, dtype) for a in merged)


def _tangent_q(x, dx, mask, q, mean_q, axes, axis_name, center):
    """``(d mean_q, d var_q)`` for a tangent ``dx`` of ``x``: ``d mean_q = <q dx>``,
    ``d var_q = 2 <(x q - mean_q) q dx>`` (RMS: ``2 <x q q dx>``), means over the selected positions of every
    device; the masked-out positions enter as zeros, never multiplied."""
    dtype = mean_q.dtype
    xq = x.astype(dtype) * q
    dxq = dx.astype(dtype) * q
    c = xq - mean_q if center else xq
    if mask is not None:
        c, dxq = jnp.where(mask, c, 0), jnp.where(mask, dxq, 0)

    local = jnp.full(mean_q.shape, math.prod(x.shape[i] for i in axes), dtype) if mask is None else (
        sum_keepdims(mask, axes, dtype))

    def mean_over(a):  # the mean over the selected positions of every device (linear in a)
        m = sum_keepdims(a, axes) / jnp.maximum(local, 1)
        return m if axis_name is None else _merge_across(local, m, None, axis_name)[1]

    dmean_q = mean_over(dxq) if center else jnp.zeros_like(mean_q)
    return dmean_q, 2 * mean_over(c * dxq)


@_scaled_stats.defjvp
def _scaled_stats_jvp(axes, axis_name, center, floor, primals, tangents):
    """The closed form of :func:`_tangent_q`; ``count`` and ``q`` (piecewise constant) have zero tangents."""
    x, mask, eps = primals
    count, q, mean_q, var_q = out = _scaled_stats(x, axes, axis_name, center, floor, mask, eps)
    dmean_q, dvar_q = _tangent_q(x, tangents[0], mask, q, mean_q, axes, axis_name, center)
    return out, (jnp.zeros_like(count), jnp.zeros_like(q), dmean_q, dvar_q)


@functools.partial(jax.custom_jvp, nondiff_argnums=(6, 7))
def _host_stats(x, mask, eps, bad, mean, var, axes, center):
    """The host callback of :func:`_scaled_stats`' rescaled branch, with its own closed-form derivative: JAX
    drops the kernel's ``custom_jvp`` rule when it partially evaluates a primal computation (``scan`` under
    forward-over-reverse AD) and then differentiates the branch itself, where a bare callback has none."""
    out = jax.ShapeDtypeStruct(var.shape, var.dtype)
    host = functools.partial(_rescaled_on_host, axes=axes, center=center)
    res = jax.pure_callback(host, (out, out, out), x, mask, eps, bad, mean, var, vmap_method="sequential")
    return tuple(vary_like(a, var) for a in res)  # typed as the other branch's


@_host_stats.defjvp
def _host_stats_jvp(axes, center, primals, tangents):
    x, mask, eps, bad, mean, var = primals
    dx, _, _, _, dmean, dvar = tangents
    q, mean_q, var_q = out = _host_stats(x, mask, eps, bad, mean, var, axes, center)
    dmean_q, dvar_q = _tangent_q(x, dx, mask, q, mean_q, axes, None, center)
    # Unflagged reductions pass the ordinary statistics through (q = 1), with their tangents.
    return out, (jnp.zeros_like(q), jnp.where(bad, dmean_q, dmean), jnp.where(bad, dvar_q, dvar))


def count_mean_var(
    x: jax.Array, axes: tuple[int, ...], mask: jax.Array | None = None, axis_name: Any = None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Count, mean and population variance over ``axes`` with keepdims (mean and var 0 where count is 0), exact
    at any magnitude (:func:`normalizer`; the variance rounds to inf or 0 beyond the dtype's range)."""
    stats = normalizer(x, axes, mask, axis_name)
    return stats.count, stats.mean, stats.var


def mean_var(
    x: jax.Array, axes: tuple[int, ...], mask: jax.Array | None = None, axis_name: Any = None
) -> tuple[jax.Array, jax.Array]:
    """Mean and population variance over ``axes`` with keepdims (0 and 0 where nothing is selected)."""
    return count_mean_var(x, axes, mask, axis_name)[1:]


def moments(
    x: jax.Array,
    axes: validation.Axes,
    *,
    where: jax.Array | None = None,
    keepdims: bool = False,
    axis_name: Any = None,
) -> tuple[jax.Array, jax.Array]:
    r"""Mean and population variance of ``x`` over ``axes``, numerically stable, in at least float32.

    .. math::
        \mu = \frac{1}{n}\sum_{i \in S} x_i, \qquad
        \sigma^2 = \frac{1}{n}\sum_{i \in S} (x_i - \mu)^2

    where :math:`S` is the set of positions selected by ``where`` along ``axes`` and :math:`n = |S|`.
    The variance is the biased (population, ``/n``) estimator that Keras, Flax and PyTorch normalize with.
    It is computed in two passes, so a large common offset does not cancel the variance away (float32
    ``1e4 + N(0, 1)`` gives 1.000, where Flax's default ``E[x^2] - E[x]^2`` gives 0).

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

    Returns:
      ``(mean, variance)``: arrays of ``x``'s shape without ``axes`` (with size-1 axes if ``keepdims``), in
      ``promote_types(x.dtype, float32)``. Where ``where`` selects nothing, or a reduced axis has size 0, both
      are 0. Exact at any finite magnitude: the mean of float32 values near ``3e38`` is their mean, and a
      variance beyond float32's range rounds to inf (or to 0 below it), as the float64 value would.

    Raises:
      TypeError: ``x`` is not floating, or ``where`` is complex, a string or not an array.
      ValueError: an axis is out of range or repeated; ``where`` does not broadcast to ``x``; ``axis_name``
        is not bound.

    Source: the two-pass algorithm (Chan, Golub & LeVeque 1983, "Algorithms for computing the sample
    variance"); the signature follows ``tf.nn.moments`` and ``jax.numpy``'s ``where``.

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
    mean, var = mean_var(x, axes_t, mask, axis_name)
    if not keepdims:
        mean, var = jnp.squeeze(mean, axes_t), jnp.squeeze(var, axes_t)
    return mean, var


# StreamingMoments' default slice: 2**20 values (4 MiB of float32) stay in cache between the kernel's two passes;
# on a 2-core CPU, 1e6 x 16 float32 adapts about 3x faster in such slices than whole.
_AUTO_SLICE_VALUES = 2**20


@functools.partial(jax.jit, static_argnums=1)
def _chunk_moments(x: jax.Array, reduce_axes: tuple[int, ...]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One chunk's ``(shift, mean - shift, M2)`` over ``reduce_axes``, of the kept axes' shape (compiled once per
    shape and dtype). ``shift`` is the chunk's first sample: the host adds it back in float64, so the chunk
    mean keeps digits that a float32 ``1e4 + small`` would round away (they matter when many small chunks of
    offset data are merged: each rounded mean would add an error of order ``n_b * delta * ulp`` to M2)."""
    xs = x.astype(validation.stats_dtype(x.dtype))
    shift = xs[tuple(slice(0, 1) if a in reduce_axes else slice(None) for a in range(x.ndim))]
    _, mean_d, m2 = count_mean_m2(xs - shift, reduce_axes, None)
    return jnp.squeeze(shift, reduce_axes), jnp.squeeze(mean_d, reduce_axes), jnp.squeeze(m2, reduce_axes)


class StreamingMoments:
    """Exact ``(count, mean, M2)`` of a stream of arrays, on the host in float64 (Keras's ``Normalization.adapt``).

    :meth:`add` slices each array along its first reduced axis (``batch_size`` entries, or about 2**20 values),
    dispatches each slice's shifted moments to the device (:func:`_chunk_moments`, asynchronous) and merges the
    previous slice's into the float64 totals with Chan et al.'s pairwise update (:func:`merge_count_mean_m2`),
    so the device runs one slice ahead of the host and no more than two slices are alive. :meth:`totals` merges
    the last one and returns the totals (those given, or None, if nothing was added; ``slices`` counts them).
    Every array must have the same sizes along its kept axes (the caller checks).
    """

    def __init__(self, totals: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None):
        self._totals = totals
        self._pending: tuple[Any, ...] | None = None  # the last slice's dispatched (n, shift, mean - shift, M2)
        self.slices = 0  # non-empty slices added so far

    def add(self, x: Any, reduce_axes: tuple[int, ...], batch_size: int | None = None) -> None:
        for chunk in _slices(x, reduce_axes, batch_size):
            if chunk.size == 0:
                continue
            n = math.prod(chunk.shape[a] for a in reduce_axes)
            dispatched = (n, *_chunk_moments(chunk, reduce_axes))  # asynchronous: the device runs ahead
            self._merge_pending()
            self._pending = dispatched
            self.slices += 1

    def totals(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        self._merge_pending()
        return self._totals

    def _merge_pending(self) -> None:
        if self._pending is None:
            return
        n, shift, mean_d, m2 = self._pending
        mean = np.asarray(shift, np.float64) + np.asarray(mean_d, np.float64)
        chunk = (np.full(mean.shape, n, np.float64), mean, np.asarray(m2, np.float64))
        self._totals = chunk if self._totals is None else merge_count_mean_m2(self._totals, chunk)
        self._pending = None


def _slices(x: Any, reduce_axes: tuple[int, ...], batch_size: int | None):
    """``x`` in slices of at most ``batch_size`` (None: about ``_AUTO_SLICE_VALUES`` values) along its first
    reduced axis (views for NumPy input)."""
    if not reduce_axes or x.size == 0:
        yield x
        return
    a = reduce_axes[0]
    rows = batch_size if batch_size is not None else max(1, _AUTO_SLICE_VALUES // (x.size // x.shape[a]))
    if x.shape[a] <= rows:
        yield x
        return
    for start in range(0, x.shape[a], rows):
        yield x[(slice(None),) * a + (slice(start, start + rows),)]
