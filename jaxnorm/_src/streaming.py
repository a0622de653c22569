"""Streaming statistics for Keras's ``Normalization.adapt``: exact ``(count, mean, M2)`` of a stream of arrays,
each slice's shifted moments taken on the device and merged on the host in float64."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxnorm._src import collectives, stats, validation

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
    st = stats.normalizer(xs - shift, reduce_axes)
    n = math.prod(x.shape[a] for a in reduce_axes)
    return jnp.squeeze(shift, reduce_axes), st.mean, st.var * n


class StreamingMoments:
    """Exact ``(count, mean, M2)`` of a stream of arrays, on the host in float64 (Keras's ``Normalization.adapt``).

    :meth:`add` slices each array along its first reduced axis (``batch_size`` entries, or about 2**20 values),
    dispatches each slice's shifted moments to the device (:func:`_chunk_moments`, asynchronous) and merges the
    previous slice's into the float64 totals with Chan et al.'s pairwise update
    (:func:`collectives.merge_count_mean_m2`), so the device runs one slice ahead of the host and no more than two
    slices are alive. :meth:`totals` merges the last one and returns the totals (those given, or None, if nothing
    was added; ``slices`` counts them). Every array must have the same sizes along its kept axes (the caller
    checks).
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
        self._totals = chunk if self._totals is None else collectives.merge_count_mean_m2(self._totals, chunk)
        self._pending = None


def _slices(x: Any, reduce_axes: tuple[int, ...], batch_size: int | None) -> Iterator[Any]:
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
