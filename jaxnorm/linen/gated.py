"""The gated RMSNorm of :mod:`jaxnorm.linen` (``GatedRMSNorm``): no Flax peer; a :class:`RMSNorm` (Flax's arguments
and ``params['scale']``) gated by ``silu(gate)`` in the order the caller names, as
:func:`jaxnorm.gated_rms_norm`."""

from __future__ import annotations

import jax
from flax.linen import module
from jax.typing import ArrayLike

from jaxnorm._src import flax_compat, gated
from jaxnorm.linen.normalization import RMSNorm, _promote


class GatedRMSNorm(RMSNorm):
    r"""Gated RMS normalization over the last axis: ``RMSNorm(x) * silu(z)`` (``norm_before_gate=True``,
    Qwen3-Next) or ``RMSNorm(x * silu(z))`` (False, Mamba-2).

    Attributes:
      (every attribute of :class:`jaxnorm.linen.RMSNorm`; ``reduction_axes`` and ``feature_axes`` -1, the
      features), then:
      norm_before_gate: bool, required (None raises: the two orders differ; name your checkpoint's).
      group_size: None (one group) or a positive int dividing the features: the statistic per group of that
        many consecutive features (Mamba-2's ``ngroups``).

    Call ``__call__(x, gate, *, mask=None)``: ``gate`` the gate ``z``, of ``x``'s shape.

    Returns:
      ``y`` of ``x``'s shape in the dtype Flax's rule gives (``self.dtype`` if set).

    Raises:
      TypeError: ``norm_before_gate`` not a bool; ``gate`` not floating. ValueError: ``gate`` not of ``x``'s
      shape; ``group_size`` not dividing the features; axes other than the last.

    Source: Mamba-2's ``RMSNormGated``, Qwen3-Next's ``Qwen3NextRMSNormGated``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxnorm import linen as jnn
      >>> norm = jnn.GatedRMSNorm(norm_before_gate=False, epsilon=0.0)
      >>> x, z = jnp.array([[3.0, 4.0]]), jnp.array([[10.0, 0.0]])
      >>> print(norm.apply(norm.init(jax.random.key(0), x, z), x, z).round(3))
      [[1.414 0.   ]]
    """

    norm_before_gate: bool | None = None
    group_size: int | None = None

    def __post_init__(self) -> None:
        gated.check_options(self.norm_before_gate, self.group_size)
        super().__post_init__()

    @module.compact
    def __call__(  # type: ignore[override]
        self, x: ArrayLike, gate: ArrayLike, *, mask: jax.Array | None = None
    ) -> jax.Array:
        """Normalizes and gates ``x``; see the class docstring."""
        return flax_compat.gated_rms_norm(self, x, gate, mask, _promote(self, ("scale",)))
