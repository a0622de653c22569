"""The adaptive normalization of :mod:`jaxnorm.linen` (``AdaptiveNorm``, AdaLN): no Flax peer; a LayerNorm (or RMSNorm)
without params, modulated per example, as :func:`jaxnorm.adaptive_norm`."""

from __future__ import annotations

from typing import Any

import jax
from flax.linen import module
from flax.typing import Axes
from jax.typing import ArrayLike

from jaxnorm._src import flax_compat
from jaxnorm.linen.normalization import _check_fields


class AdaptiveNorm(module.Module):
    r"""Adaptive LayerNorm (DiT's AdaLN): ``norm(x) * (1 + scale) + shift``, ``shift``/``scale`` from the caller's
    conditioning layer, one row per example.

    Attributes:
      epsilon: float >= 0 (1e-6, DiT's).
      rms: False: LayerNorm statistics (DiT); True: RMSNorm's.
      reduction_axes: the normalized axes (-1), as ``flax.linen.LayerNorm``'s.
      axis_name, axis_index_groups: as ``flax.linen.LayerNorm``'s (statistics merged exactly across devices).
      extreme_range: jaxnorm's statistics option, as :class:`jaxnorm.linen.LayerNorm`'s.

    Call ``__call__(x, shift, scale, *, mask=None)``: ``shift`` and ``scale`` of shape ``(N, C)`` (broadcast over
    the tokens) or broadcastable to ``x``.

    Returns:
      ``y`` of ``x``'s shape and dtype; no variables.

    Raises:
      TypeError: ``x``, ``shift`` or ``scale`` not floating. ValueError: ``shift``/``scale`` not broadcasting.

    Source: Peebles & Xie 2023 (DiT), ``modulate(norm(x), shift, scale)``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxnorm import linen as jnn
      >>> ada = jnn.AdaptiveNorm(epsilon=0.0)
      >>> x, shift, scale = jnp.array([[[1.0, 3.0]]]), jnp.zeros((1, 2)), jnp.ones((1, 2))
      >>> print(ada.apply({}, x, shift, scale))
      [[[-2.  2.]]]
    """

    epsilon: float = 1e-6
    rms: bool = False
    reduction_axes: Axes = -1
    axis_name: str | None = None
    axis_index_groups: Any = None
    extreme_range: bool = False

    def __post_init__(self) -> None:
        _check_fields(self)
        super().__post_init__()

    @module.compact
    def __call__(
        self, x: ArrayLike, shift: ArrayLike, scale: ArrayLike, *, mask: jax.Array | None = None
    ) -> jax.Array:
        """Normalizes and modulates ``x``; see the class docstring."""
        return flax_compat.adaptive_norm(self, x, shift, scale, mask)
