"""The safe moving-statistics update rule, in one place: ``BatchNorm`` and the Flax drop-ins' BatchNorm call it.

The rule is per feature. A feature whose batch statistics may enter its moving averages is one with at least one
valid element (``count > 0``) and a finite batch mean and variance (:func:`update_ok`). Such a feature updates as
Keras, Flax and PyTorch would; any other feature keeps every one of its moving statistics bit for bit
(:func:`safe_update`), so one all-masked, empty or NaN feature no longer freezes, nor poisons, the others. A step
counter advances when any feature updated (:func:`advance_counter`); an empty batch (count 0 everywhere) leaves
the whole state, counter included, exactly as it was.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def update_ok(count: jax.Array, mean: jax.Array, var: jax.Array) -> jax.Array:
    """Per feature: True where this batch's statistics may update the moving ones.

    Args:
      count: the number of valid elements per feature (any numeric dtype; feature-shaped, or broadcastable).
      mean, var: the batch mean and variance per feature (in the dtype they would be written in, so that a value
        that overflows there counts as non-finite).

    Returns:
      A boolean array of the broadcast shape of the three: ``count > 0`` and ``mean``, ``var`` finite.
    """
    return (jnp.asarray(count) > 0) & jnp.isfinite(mean) & jnp.isfinite(var)


def safe_update(old: jax.Array, new: jax.Array, ok: jax.Array) -> jax.Array:
    """``new`` where ``ok``, else ``old`` bit for bit; in ``old``'s dtype and shape.

    ``ok`` (from :func:`update_ok`) must broadcast to ``old``; ``new`` may be any value where ``ok`` is False
    (NaN included: it is selected away, never blended).
    """
    old = jnp.asarray(old)
    return jnp.where(ok, jnp.asarray(new).astype(old.dtype), old)


def advance_counter(count: jax.Array, ok: jax.Array) -> jax.Array:
    """The step counter after a step: ``count + 1`` when any feature updated (``any(ok)``), else ``count``."""
    count = jnp.asarray(count)
    return count + jnp.any(ok).astype(count.dtype)


def moving_average(old: jax.Array, batch: jax.Array, keep: float, ok: jax.Array | None = None) -> jax.Array:
    """The Keras/Flax update ``keep * old + (1 - keep) * batch`` in ``old``'s dtype, kept at ``old`` where
    ``ok`` is False (no check when ``ok`` is None)."""
    old = jnp.asarray(old)
    new = (keep * old + (1 - keep) * batch).astype(old.dtype)
    return new if ok is None else safe_update(old, new, ok)
