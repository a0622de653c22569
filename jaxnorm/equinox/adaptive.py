"""The adaptive normalization of :mod:`jaxnorm.equinox` (``AdaptiveNorm``, AdaLN): no equinox peer; a LayerNorm (or
RMSNorm) without weights over one token, modulated by its example's ``shift``/``scale``, as
:func:`jaxnorm.adaptive_norm`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
from equinox import field

from jaxnorm._src import adaptive, validation
from jaxnorm.equinox.normalization import _check_shape, _input


class AdaptiveNorm(eqx.Module):
    r"""Adaptive LayerNorm (DiT's AdaLN) over one token: ``norm(x) * (1 + scale) + shift``, no weights.

    Args:
      shape: int or sequence of ints, the shape of ``x`` (one token's features; ``jax.vmap`` over tokens with
        ``in_axes=(0, None, None)``, as the example's ``shift``/``scale`` are shared by its tokens).
      eps: float >= 0 (1e-6, DiT's).
      rms: keyword-only; False: LayerNorm statistics, True: RMSNorm's.
      extreme_range: keyword-only, jaxnorm's statistics option.

    Call ``__call__(x, shift, scale, *, key=None, mask=None)``: ``shift``/``scale`` of ``x``'s shape (or
    broadcastable to it).

    Returns:
      ``y`` of ``x``'s shape and dtype.

    Raises:
      ValueError: ``x.shape != shape``; ``shift``/``scale`` not broadcasting. TypeError: not floating.

    Source: Peebles & Xie 2023 (DiT).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxnorm import equinox as jeqx
      >>> ada = jeqx.AdaptiveNorm(2, eps=0.0)
      >>> tokens = jnp.array([[1.0, 3.0], [10.0, 30.0]])
      >>> print(jax.vmap(ada, in_axes=(0, None, None))(tokens, jnp.zeros(2), jnp.ones(2)))
      [[-2.  2.]
       [-2.  2.]]
    """

    shape: tuple[int, ...] = field(static=True)
    eps: float = field(static=True)
    rms: bool = field(static=True)
    extreme_range: bool = field(static=True)

    def __init__(self, shape: int | Sequence[int], eps: float = 1e-6, *, rms: bool = False,
                 extreme_range: bool = False):
        validation.check_epsilon(eps, "eps")
        self.shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.eps = eps
        self.rms = validation.check_bool(rms, "rms")
        self.extreme_range = validation.check_bool(extreme_range, "extreme_range")

    def __call__(
        self, x: jax.Array, shift: jax.Array, scale: jax.Array, *, key: Any = None, mask: jax.Array | None = None
    ) -> jax.Array:
        """Normalizes ``x`` over all of its axes and modulates it; see the class docstring."""
        del key
        x = _input(x)
        _check_shape(x, self.shape, "AdaptiveNorm", "adaptive_norm")
        return adaptive.modulate(
            x, adaptive.modulation(shift, x, "shift"), adaptive.modulation(scale, x, "scale"), tuple(range(x.ndim)),
            self.eps, validation.numpy_mask(mask, x), None, rms=self.rms, extreme_range=self.extreme_range,
        )
