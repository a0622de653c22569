"""Dtype and argument policy shared by the Flax wrappers (:mod:`jaxnorm.linen`, :mod:`jaxnorm.nnx`): no math."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxnorm._src import stats, validation


def sync_axis(axis_name: Any, axis_index_groups: Any, owner: str) -> Any:
    """The ``axis_name`` to hand the core: ``axis_name`` itself, or with Flax's ``axis_index_groups`` attached
    (statistics merged within each group of devices). Raises ``ValueError`` for groups without one name."""
    return stats.with_groups(axis_name, axis_index_groups, f"{owner}: ")


def compute_input(x: Any, out_dtype: Any) -> jax.Array:
    """``x`` cast to the dtype the normalization runs in, so that the core returns Flax's output precision.

    Flax normalizes in ``promote(x.dtype, float32)`` and casts to the output dtype; the core normalizes in
    ``promote(x.dtype, float32)`` and returns ``x.dtype``. Widening ``x`` to ``promote(x.dtype, out_dtype)`` first
    (exact) makes the two agree: bf16 in with float32 params gives float32 out. This is dtype policy only.
    """
    x = jnp.asarray(x)
    return validation.check_float_array(x.astype(jnp.promote_types(x.dtype, out_dtype)), "x")


def full_mask(mask: Any, x: jax.Array) -> jax.Array | None:
    """Flax's ``mask`` (anything broadcastable to ``x`` under NumPy rules) as a boolean array of x's shape."""
    if mask is None:
        return None
    m = jnp.asarray(mask, dtype=bool)  # Flax accepts 0/1 masks of any dtype
    if m.ndim < x.ndim:  # NumPy alignment; prevents the core's Keras ``x.shape[:-1]`` reading of the mask
        m = m.reshape((1,) * (x.ndim - m.ndim) + m.shape)
    return validation.broadcast_mask(m, x.shape, "mask")


def stats_dtype(x: jax.Array, dtype: Any, force_float32_reductions: bool = True) -> Any:
    """The dtype Flax's ``_compute_stats`` returns, so that updated ``batch_stats`` keep Flax's dtype."""
    base = jnp.result_type(x) if dtype is None else dtype
    return jnp.promote_types(base, jnp.float32) if force_float32_reductions else base
