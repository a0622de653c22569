"""Statistics across devices: the exact merge of per-device ``(count, mean, M2)`` triples over named axes,
device groups (Flax's ``axis_index_groups``), and the typing of replicated operands under ``shard_map``.

Across devices (``axis_name``) the per-device triples are merged exactly with two all-reduces (``psum``; an
all_gather per name with device groups) (Chan, Golub & LeVeque 1979), so devices holding different numbers of
valid elements are weighted by their counts. Nothing else crosses devices: a normalization adds no collective
beyond its own statistics merge (and, with ``extreme_range=True``, one ``pmax`` of the magnitudes).
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


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


def merge_across(
    count: jax.Array, mean: jax.Array, m2: jax.Array | None, axis_name: Any
) -> tuple[Any, Any, Any]:
    """Exact merge of per-device (count, mean, M2) triples over named axes (Chan et al.'s many-way form).

    Without groups: two all-reduces (``psum``), ``(n, n * mean)`` and then ``M2 + n * (mean - mean_all)^2``, whose
    results are replicated by construction (``jax.shard_map`` types them as invariant, so replicated moving
    statistics may leave with ``out_specs=P()``). With groups (:class:`Grouped`): one all_gather per name and a
    per-group sum. ``m2=None``: the count-weighted mean only, reduced apart from the counts so that it may be a
    tangent."""
    if not isinstance(axis_name, Grouped):
        try:
            total, weighted = lax.psum((count, count * mean), axis_name)
            mean_all = weighted / jnp.maximum(total, 1)
            if m2 is None:
                return total, mean_all, None
            return total, mean_all, lax.psum(m2 + count * jnp.square(mean - mean_all), axis_name)
        except NameError as err:
            raise _unbound(axis_name, err) from None

    if m2 is None:  # separate gathers: a tangent mean must not share an array with the (primal) counts
        counts, means = _gather(count, axis_name), _gather(mean, axis_name)
        m2s = jnp.zeros_like(counts)
    else:
        stacked = _gather(jnp.stack([count, mean, m2]), axis_name)  # (devices, 3, ...)
        counts, means, m2s = stacked[:, 0], stacked[:, 1], stacked[:, 2]
    weight = _members(axis_name, counts.shape[0], count.ndim)  # only the devices of this device's group
    counts, m2s = jnp.where(weight, counts, 0), jnp.where(weight, m2s, 0)
    total = jnp.sum(counts, 0, keepdims=True)
    mean_all = jnp.sum(counts * means, 0, keepdims=True) / jnp.maximum(total, 1)
    if m2 is None:  # the count-weighted mean only (linear in the means: a tangent may pass through)
        return total[0], mean_all[0], None
    m2_all = jnp.sum(m2s + counts * jnp.square(means - mean_all), 0, keepdims=True)
    return total[0], mean_all[0], m2_all[0]


def sum_across(a: jax.Array, axis_name: Any) -> jax.Array:
    """The sum of ``a`` over the devices of ``axis_name`` (within this device's group for a :class:`Grouped`
    one: an all_gather and a masked sum, as :func:`merge_across`)."""
    return _reduce_across(a, axis_name, lax.psum, jnp.sum, 0)


def max_across(a: jax.Array, axis_name: Any) -> jax.Array:
    """The maximum of ``a`` over the devices of ``axis_name`` (within this device's group for a
    :class:`Grouped` one)."""
    return _reduce_across(a, axis_name, lax.pmax, jnp.max, -jnp.inf)


def _reduce_across(a: jax.Array, axis_name: Any, collective: Any, reduce: Any, identity: float) -> jax.Array:
    """``collective`` over a plain named axis; over a :class:`Grouped` one, every device's ``a`` gathered and
    ``reduce``d over this device's group (the others replaced by ``identity``)."""
    if not isinstance(axis_name, Grouped):
        try:
            return collective(a, axis_name)
        except NameError as err:
            raise _unbound(axis_name, err) from None
    stacked = _gather(a, axis_name)
    return reduce(jnp.where(_members(axis_name, stacked.shape[0], a.ndim), stacked, identity), 0)


class UnboundAxisError(ValueError, NameError):
    """An ``axis_name`` used outside the transform that binds it: a ``ValueError`` that names the fix, and a
    ``NameError`` as JAX's own (and so equinox's and Flax's layers') unbound-axis error is, so that code catching
    that one catches this too."""


def _unbound(axis_name: Any, err: Exception) -> ValueError:
    return UnboundAxisError(
        f"`axis_name`={axis_name!r} is not bound here ({err}). Call the layer inside "
        f"`jax.shard_map`, `jax.pmap` or `jax.vmap` with axis_name={axis_name!r}, or pass axis_name=None "
        "(under jax.jit with a sharded input the statistics are already global)."
    )


def _gather(a: jax.Array, grouped: Grouped) -> jax.Array:
    """``(devices, *a.shape)``: every device's ``a`` along the grouped axis (one all_gather)."""
    try:
        return lax.all_gather(a, grouped.axis_name)
    except NameError as err:
        raise _unbound(grouped.axis_name, err) from None


def _members(grouped: Grouped, n: int, ndim: int) -> jax.Array:
    """A ``(n, 1, ...)`` boolean of rank ``ndim + 1``: which of the ``n`` devices are in this device's group."""
    flat = sorted(i for g in grouped.groups for i in g)
    if flat != list(range(n)):
        raise ValueError(
            f"`axis_index_groups`={[list(g) for g in grouped.groups]} must cover each of the {n} devices of "
            f"{grouped.axis_name!r} exactly once (indices 0..{n - 1})."
        )
    member = np.zeros((n, n), bool)
    for g in grouped.groups:
        member[np.ix_(g, g)] = True
    return jnp.asarray(member)[lax.axis_index(grouped.axis_name)].reshape((n,) + (1,) * ndim)


def merge_count_mean_m2(a: tuple[Any, Any, Any], b: tuple[Any, Any, Any]) -> tuple[Any, Any, Any]:
    r"""Exact merge of two ``(count, mean, M2)`` triples of disjoint data into the triple of their union.

    .. math::
        n = n_a + n_b,\quad \delta = \mu_b - \mu_a,\quad \mu = \mu_a + \delta\,\frac{n_b}{n},\quad
        M_2 = M_{2,a} + M_{2,b} + \delta^2\,\frac{n_a n_b}{n}

    (Chan, Golub & LeVeque 1979, the pairwise update; :func:`merge_across` is its many-way form). Both triples
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
