"""The adaptive normalization of :mod:`jaxnorm.nnx` (``AdaptiveNorm``, AdaLN): no Flax peer; a LayerNorm (or RMSNorm)
without params, modulated per example, as :func:`jaxnorm.adaptive_norm`."""

from __future__ import annotations

import typing as tp

import jax
from flax import nnx
from flax.typing import Axes

from jaxnorm._src import flax_compat, validation


class AdaptiveNorm(nnx.Module):
    r"""Adaptive LayerNorm (DiT's AdaLN): ``norm(x) * (1 + scale) + shift``, ``shift``/``scale`` from the caller's
    conditioning layer, one row per example; no ``nnx.Param``.

    Args:
      num_features: the size of the last axis (DiT's ``hidden_size``), checked at the call.
      epsilon: float >= 0 (1e-6, DiT's).
      rms: False: LayerNorm statistics (DiT); True: RMSNorm's.
      reduction_axes: the normalized axes (-1).
      axis_name, axis_index_groups: as ``flax.nnx.LayerNorm``'s.
      extreme_range: jaxnorm's statistics option, a plain attribute.
      rngs: accepted and unused (no params), so that it builds as the other layers do.

    Raises at the call ``ValueError`` when ``x``'s last axis is not ``num_features``.

    Call ``__call__(x, shift, scale, *, mask=None)`` as :class:`jaxnorm.linen.AdaptiveNorm`'s.

    Returns:
      ``y`` of ``x``'s shape and dtype.

    Raises:
      TypeError, ValueError: as :class:`jaxnorm.linen.AdaptiveNorm`'s.

    Source: Peebles & Xie 2023 (DiT).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxnorm import nnx as jnnx
      >>> ada = jnnx.AdaptiveNorm(2, epsilon=0.0)
      >>> print(ada(jnp.array([[[1.0, 3.0]]]), jnp.zeros((1, 2)), jnp.ones((1, 2))))
      [[[-2.  2.]]]
    """

    def __init__(
        self, num_features: int, *, epsilon: float = 1e-6, rms: bool = False, reduction_axes: Axes = -1, axis_name: str | None = None,
        axis_index_groups: tp.Any = None, extreme_range: bool = False, rngs: nnx.Rngs | None = None,
    ):
        del rngs
        self.num_features = num_features
        validation.check_epsilon(epsilon)
        flax_compat.sync_axis(axis_name, axis_index_groups, "jaxnorm.nnx.AdaptiveNorm")
        self.epsilon, self.reduction_axes = epsilon, reduction_axes
        self.rms = validation.check_bool(rms, "rms")
        self.axis_name, self.axis_index_groups = axis_name, axis_index_groups
        self.extreme_range = validation.check_bool(extreme_range, "extreme_range")

    def __call__(
        self, x: jax.Array, shift: jax.Array, scale: jax.Array, *, mask: jax.Array | None = None
    ) -> jax.Array:
        """Normalizes and modulates ``x``; see the class docstring."""
        if jax.numpy.shape(x)[-1:] != (self.num_features,):
            raise ValueError(f"AdaptiveNorm({self.num_features}) got x of shape {jax.numpy.shape(x)}: its last axis "
                             f"must have num_features={self.num_features} entries.")
        return flax_compat.adaptive_norm(self, x, shift, scale, mask)
