"""The gated RMSNorm of :mod:`jaxnorm.nnx` (``GatedRMSNorm``): no Flax peer; an :class:`RMSNorm` (Flax's arguments
and ``nnx.Param`` ``scale``) gated by ``silu(gate)`` in the order the caller names, as
:func:`jaxnorm.gated_rms_norm`."""

from __future__ import annotations

import typing as tp

import jax
from flax.nnx import rnglib

from jaxnorm._src import flax_compat, gated
from jaxnorm.nnx.normalization import RMSNorm, _promote


class GatedRMSNorm(RMSNorm):
    r"""Gated RMS normalization over the last axis: ``RMSNorm(x) * silu(z)`` (``norm_before_gate=True``,
    Qwen3-Next) or ``RMSNorm(x * silu(z))`` (False, Mamba-2).

    Args:
      num_features, rngs, and the other keyword arguments: those of :class:`jaxnorm.nnx.RMSNorm` (the same
        ``nnx.Param`` ``scale``; ``reduction_axes`` and ``feature_axes`` -1).
      norm_before_gate: keyword-only bool, required: the order.
      group_size: None (one group) or a positive int dividing ``num_features`` (Mamba-2's ``ngroups``).

    Call ``__call__(x, gate, *, mask=None)``: ``gate`` of ``x``'s shape.

    Returns:
      ``y`` of ``x``'s shape, in the dtype ``promote_dtype`` gives.

    Raises:
      TypeError, ValueError: as :class:`jaxnorm.linen.GatedRMSNorm`'s.

    Source: Mamba-2's ``RMSNormGated``, Qwen3-Next's ``Qwen3NextRMSNormGated``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from jaxnorm import nnx as jnnx
      >>> norm = jnnx.GatedRMSNorm(2, norm_before_gate=False, epsilon=0.0, rngs=nnx.Rngs(0))
      >>> print(norm(jnp.array([[3.0, 4.0]]), jnp.array([[10.0, 0.0]])).round(3))
      [[1.414 0.   ]]
    """

    norm_before_gate: bool
    group_size: int | None

    def __init__(
        self, num_features: int, *, norm_before_gate: bool, group_size: int | None = None, rngs: rnglib.Rngs,
        **kwargs: tp.Any,
    ):
        self.norm_before_gate, self.group_size = gated.check_options(norm_before_gate, group_size)
        super().__init__(num_features, rngs=rngs, **kwargs)

    def __call__(  # type: ignore[override]
        self, x: jax.Array, gate: jax.Array, *, mask: jax.Array | None = None
    ) -> jax.Array:
        """Normalizes and gates ``x``; see the class docstring."""
        return flax_compat.gated_rms_norm(self, x, gate, mask, _promote(self, ("scale",)))
