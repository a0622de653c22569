"""Dtype and argument policy shared by the Flax wrappers (:mod:`jaxnorm.linen`, :mod:`jaxnorm.nnx`): no math."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxnorm._src import collectives, validation


def sync_axis(axis_name: Any, axis_index_groups: Any, owner: str) -> Any:
    """The ``axis_name`` to hand the core: ``axis_name`` itself, or with Flax's ``axis_index_groups`` attached
    (statistics merged within each group of devices). Raises ``ValueError`` for groups without one name."""
    return collectives.with_groups(axis_name, axis_index_groups, f"{owner}: ")


def compute_input(x: Any, out_dtype: Any) -> jax.Array:
    """``x`` cast to the dtype the normalization runs in, so that the core returns Flax's output precision.

    Flax normalizes in ``promote(x.dtype, float32)`` and casts to the output dtype; the core normalizes in
    ``promote(x.dtype, float32)`` and returns ``x.dtype``. Widening ``x`` to ``promote(x.dtype, out_dtype)`` first
    (exact) makes the two agree: bf16 in with float32 params gives float32 out. This is dtype policy only.
    """
    x = jnp.asarray(x)
    x = x.astype(validation.result_dtype(x.dtype, out_dtype))
    if jnp.iscomplexobj(x):  # Flax's layers normalize complex input (statistics: E[x], E|x - E[x]|^2)
        return x
    return validation.check_float_array(x, "x")


def flax_stats_dtype(x: jax.Array, dtype: Any, force_float32_reductions: bool = True) -> Any:
    """The dtype Flax's ``_compute_stats`` returns, so that updated ``batch_stats`` keep Flax's dtype."""
    base = jnp.result_type(x) if dtype is None else dtype
    if jnp.issubdtype(base, jnp.complexfloating):  # the mean's dtype; the variance is real (real_dtype)
        return validation.result_dtype(base, jnp.float32) if force_float32_reductions else jnp.dtype(base)
    return validation.stats_dtype(base) if force_float32_reductions else base


def real_dtype(dtype: Any) -> Any:
    """The real dtype of ``dtype`` (``float32`` for ``complex64``): the dtype of a complex input's variance."""
    return jnp.finfo(dtype).dtype


def flax_groups(num_groups: Any, group_size: Any, channels: int) -> int:
    """Flax's GroupNorm rule: exactly one of ``num_groups`` (positive) and ``group_size``, dividing the channels.
    Raises Flax's ``ValueError`` messages, with the fix."""
    if (num_groups is None) == (group_size is None):
        raise ValueError(
            "Either `num_groups` or `group_size` should be specified. If `group_size` is to be specified, pass "
            f"`num_groups=None` as argument to override the default `num_groups` value of 32 (got "
            f"num_groups={num_groups!r}, group_size={group_size!r})."
        )
    if num_groups is not None and (not isinstance(num_groups, int) or num_groups <= 0):
        raise ValueError(
            f"Number of groups ({num_groups!r}) does not divide the number of channels ({channels}): `num_groups` "
            "must be a positive int."
        )
    return validation.resolve_groups(num_groups, group_size, channels, -1)


def instance_reduction_axes(feature_axes: tuple[int, ...], ndim: int) -> list[int]:
    """Flax InstanceNorm's reduced axes: all but the batch (0) and ``feature_axes``, which must not hold 0."""
    if 0 in feature_axes:
        raise ValueError(
            "The channel axes cannot include the leading dimension as this is assumed to be the batch axis "
            f"(got feature_axes resolving to {feature_axes}). Give the channel axes only, e.g. -1."
        )
    return [a for a in range(1, ndim) if a not in feature_axes]
