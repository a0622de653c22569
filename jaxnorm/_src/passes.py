"""Scheduling hints for XLA's CPU compiler: identities that keep each pass over ``x`` a fused loop of its own.

XLA CPU (jax >= 0.10) reduces with YNNPACK fusions, which read their operand once and fuse the elementwise work
before the reduction, but not an operand that another fusion also uses: an expression shared by two passes (a
float32 conversion of 16-bit ``x``, ``x - shift`` used by two sums, ``x - mean`` used by the variance and the
output) is written to memory in full and read back, a full-size temporary per call (measured: 1.8x the time of
a BatchNorm forward at ``(8, 56, 56, 256)`` bfloat16, and 25 MiB of temporaries). Each pass therefore takes its
own ``x`` from :func:`fresh`, which XLA cannot merge with the others' (common-subexpression elimination merges
barriers only when their operands are the same, so each pass passes different small ``deps``).

The hints are scheduling only: :func:`fresh` is the identity. It lowers to an optimization barrier on the CPU
and to nothing elsewhere (XLA GPU fuses the passes itself, and a barrier there costs a copy), chosen by JAX's
lowering for the platform the program is compiled for: a program exported with ``jax.export`` for several
platforms carries both. No module state, no ``jax.default_backend()``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.extend.core as jex
import jax.numpy as jnp
from jax import lax
from jax.interpreters import ad, batching, mlir

_fresh_p = jex.Primitive("jaxnorm_fresh")
_fresh_p.multiple_results = True
_fresh_p.def_impl(lambda *args: list(args))
_fresh_p.def_abstract_eval(lambda *avals: list(avals))
mlir.register_lowering(_fresh_p, lambda ctx, *args: list(args))  # GPU, TPU: nothing
mlir.register_lowering(
    _fresh_p,
    mlir.lower_fun(lambda *args: list(lax.optimization_barrier(args)), multiple_results=True),
    platform="cpu",
)


def _fresh_jvp(primals: Any, tangents: Any) -> tuple[Any, list[Any]]:
    nonzero = [type(t) is not ad.Zero for t in tangents]
    live = [t for t, nz in zip(tangents, nonzero, strict=True) if nz]
    moved = iter(_fresh_p.bind(*live) if live else ())
    return _fresh_p.bind(*primals), [next(moved) if nz else t for t, nz in zip(tangents, nonzero, strict=True)]


def _fresh_transpose(cts: Any, *args: Any) -> list[Any]:
    # Each linear operand's cotangent passes through a barrier of its own; the residuals are left alone (JAX's
    # own optimization_barrier cannot be transposed with residual operands beside linear ones).
    linear = [ad.is_undefined_primal(a) and type(c) is not ad.Zero for a, c in zip(args, cts, strict=True)]
    moved = iter(_fresh_p.bind(*(c for c, lin in zip(cts, linear, strict=True) if lin)) if any(linear) else ())
    return [
        (next(moved) if lin else ad.Zero(a.aval)) if ad.is_undefined_primal(a) else None
        for a, lin in zip(args, linear, strict=True)
    ]


ad.primitive_jvps[_fresh_p] = _fresh_jvp
ad.primitive_transposes[_fresh_p] = _fresh_transpose
batching.primitive_batchers[_fresh_p] = lambda args, dims: (_fresh_p.bind(*args), dims)


def fresh(x: Any, *deps: Any) -> tuple[Any, ...]:
    """``(x, *deps)`` unchanged: on the CPU, a use of ``x`` that XLA cannot merge with its other uses and that
    starts once ``deps`` (small statistics) exist. ``deps`` may hold None."""
    leaves, tree = jax.tree_util.tree_flatten((x, *deps))
    return jax.tree_util.tree_unflatten(tree, _fresh_p.bind(*leaves)) if leaves else (x, *deps)


def kept_axes(ndim: int, axes: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(i for i in range(ndim) if i not in axes)


def spread(v: jax.Array, shape: tuple[int, ...], axes: tuple[int, ...]) -> jax.Array:
    """``v``, of the kept axes' shape (``shape`` without ``axes``), broadcast along ``axes`` to ``shape``.

    A statistic reaches a reduction this way, never from a keepdims ``(M, 1)`` array: XLA CPU fuses a plain
    broadcast of a small vector into a YNNPACK reduction, but writes a size-1-axis broadcast out in full."""
    return lax.broadcast_in_dim(v, shape, kept_axes(len(shape), axes))


def merged_view(
    shape: tuple[int, ...], axes: tuple[int, ...], *operands: tuple[int, ...] | None
) -> tuple[tuple[tuple[int, ...], ...], tuple[int, ...]]:
    """``(groups, view_axes)``: the axes of ``shape`` in runs (``groups``), each run of adjacent axes that are
    alike merged into one (all reduced or all kept, and each operand of x's rank either full or 1 along all of
    them), and the reduced axes of that view (:func:`to_view` reshapes an array of x's rank to it). A reshape to it
    is free (row-major), and XLA then sees the rank-2 or rank-3 problem it compiles best: ``(N, H, W, C)`` over
    ``(0, 1, 2)`` is ``(N H W, C)`` over ``(0,)``; GroupNorm's ``(N, H, W, G, C/G)`` over ``(1, 2, 4)`` is ``(N, H
    W, G, C/G)`` over ``(1, 3)``."""

    def signature(i: int) -> tuple[bool, ...]:
        return (i in axes, *(o is not None and o[i] == 1 for o in operands))

    groups: list[list[int]] = []
    view_axes: list[int] = []
    for i in range(len(shape)):
        if i and signature(i) == signature(i - 1):
            groups[-1].append(i)
        else:
            if i in axes:
                view_axes.append(len(groups))
            groups.append([i])
    return tuple(tuple(g) for g in groups), tuple(view_axes)


def to_view(a: Any, groups: tuple[tuple[int, ...], ...]) -> Any:
    """``a`` (None, or an array of x's rank that is full or 1 along each group) reshaped to the merged view."""
    if a is None or len(groups) == a.ndim:
        return a
    return a.reshape(tuple(math.prod(a.shape[i] for i in g) for g in groups))


class View(NamedTuple):
    """A normalization's problem as XLA should see it: ``x`` (of x's rank), its axis ``split[0]`` split into
    ``(split[1], rest)`` if ``split`` (GroupNorm's channels in groups), then alike axes merged
    (:func:`merged_view`): ``shape`` with the reduced ``axes``. ``of`` reshapes an array of x's rank (full or 1
    along each axis) to it, and ``fresh`` takes a pass's own ``x`` (:func:`fresh`) before reshaping it, as
    XLA CPU wants: a barrier on a reshaped 16-bit array makes it write out a converted copy."""

    groups: tuple[tuple[int, ...], ...]
    axes: tuple[int, ...]
    shape: tuple[int, ...]
    split: tuple[int, int] | None = None

    def of(self, a: Any) -> Any:
        if a is not None and self.split is not None:
            a = a.reshape(split_shape(a.shape, self.split))
        return to_view(a, self.groups)

    def fresh(self, x: jax.Array, *deps: Any) -> tuple[Any, ...]:
        x, *rest = fresh(x, *deps)
        return (self.of(x), *rest)

    def spread(self, v: jax.Array) -> jax.Array:
        """A flat statistic (the view's kept shape) broadcast along the view's reduced axes."""
        return spread(v, self.shape, self.axes)

    def expand(self, p: jax.Array) -> jax.Array:
        """A parameter of x's rank (scale, bias) broadcast to the view's shape from its non-unit axes, which is
        how XLA CPU fuses it into a reduction (a broadcast of a size-1 axis is written out in full)."""
        pv = self.of(p)
        dims = tuple(i for i, d in enumerate(pv.shape) if d != 1)
        return lax.broadcast_in_dim(pv.reshape(tuple(pv.shape[i] for i in dims)), self.shape, dims)

    @property
    def kept(self) -> tuple[int, ...]:
        return tuple(d for i, d in enumerate(self.shape) if i not in self.axes)


def view_of(
    shape: tuple[int, ...], axes: tuple[int, ...], *operands: tuple[int, ...] | None, merge: bool = True,
    split: tuple[int, int] | None = None,
) -> View:
    """The problem's :class:`View` of an ``x`` of ``shape``; ``axes`` count in the split shape (``split``:
    axis ``split[0]`` into ``split[1]`` groups). Alike axes are merged (:func:`merged_view`) unless
    ``merge=False``, for 16-bit input, whose reshape XLA CPU's YNNPACK reductions read at half speed (measured
    at ``(8, 56, 56, 256)`` bfloat16: a column reduction 2.4 ms through the ``(25088, 256)`` reshape, 1.2 ms
    over the original axes; float32 input reads either at the same speed)."""
    shape = split_shape(shape, split)
    operands = tuple(None if o is None else split_shape(o, split) for o in operands)
    if not merge:
        return View(tuple((i,) for i in range(len(shape))), tuple(axes), tuple(shape), split)
    groups, view_axes = merged_view(shape, axes, *operands)
    return View(groups, view_axes, tuple(math.prod(shape[i] for i in g) for g in groups), split)


def split_shape(shape: tuple[int, ...], split: tuple[int, int] | None) -> tuple[int, ...]:
    """``shape`` with axis ``split[0]`` read as ``(split[1], size // split[1])`` (``(1, 1)`` where it is 1)."""
    if split is None:
        return tuple(shape)
    c, g = split
    return tuple(shape[:c]) + ((g, shape[c] // g) if shape[c] != 1 else (1, 1)) + tuple(shape[c + 1:])


def split_axes(ndim: int, axes: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(outer, inner)``: the reduced axes before and after the last kept axis, when a kept axis lies between
    reduced ones (GroupNorm's ``(N, H, W, G, C/G)`` over ``(1, 2, 4)``: ``((1, 2), (4,))``); else ``(axes, ())``.
    """
    kept = kept_axes(ndim, axes)
    if kept and axes and min(axes) < max(kept) < max(axes):
        return tuple(i for i in axes if i < max(kept)), tuple(i for i in axes if i > max(kept))
    return tuple(axes), ()


def inner_split(shape: tuple[int, ...], axes: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(outer, inner)`` of :func:`split_axes` where the inner reduced axes are the short ones (the two-stage
    reduction and the inner broadcast pay), else ``(axes, ())``."""
    outer, inner = split_axes(len(shape), axes)
    if not inner or math.prod(shape[i] for i in inner) >= math.prod(shape[i] for i in outer):
        return tuple(axes), ()
    return outer, inner


def reduce_sum(a: jax.Array, axes: tuple[int, ...], dtype: Any = None) -> jax.Array:
    """``jnp.sum(a, axes)`` (no keepdims), in two stages when a kept axis lies between short inner reduced axes
    and longer outer ones (GroupNorm's ``(N, H, W, G, C/G)`` over ``(1, 2, 4)``).

    XLA CPU reduces such a block several times slower than the outer axes alone (measured with the loop
    emitter: ``(8, 56, 56, 256)`` float32 in 32 groups, 6.0 ms against 0.54 ms), so the outer axes are summed
    first and the inner ones of the small partial sums after, with :func:`fresh` between the two (XLA's
    simplifier merges them back otherwise; elsewhere the merged reduction is what is wanted)."""
    outer, inner = inner_split(a.shape, axes)
    if not inner:
        return jnp.sum(a, axes, dtype=dtype)
    partial = fresh(jnp.sum(a, outer, keepdims=True, dtype=dtype))[0]
    return jnp.sum(partial, axes, dtype=dtype)
