"""The residual add & norm layers of :mod:`jaxnorm.linen` (``AddLayerNorm``, ``AddRMSNorm``): no Flax peer; they
are :class:`LayerNorm` and :class:`RMSNorm` (Flax's arguments and variables) that take the residual stream too,
and return ``(y, new_residual)`` as the unfused ``nn.Dropout``, add and ``nn.LayerNorm`` would."""

from __future__ import annotations

from typing import Any, ClassVar

import jax
from flax.linen import module, stochastic
from jax.typing import ArrayLike

from jaxnorm._src import flax_compat
from jaxnorm._src import residual as residual_lib
from jaxnorm.linen.normalization import LayerNorm, RMSNorm, _promote


def _dropout(mdl: module.Module, x: ArrayLike, deterministic: bool | None) -> ArrayLike:
    """``flax.linen.Dropout(dropout_rate)`` on ``x`` (its ``dropout`` rng, ``deterministic`` merged as Flax
    merges it), or ``x`` where the rate is 0."""
    if mdl.dropout_rate == 0:
        return x
    return stochastic.Dropout(mdl.dropout_rate, deterministic=mdl.deterministic)(x, deterministic=deterministic)


class _Residual(module.Module):
    """The residual options and call of both (a mixin before the normalization class: its fields come after the
    normalization's, Flax's arguments first)."""

    residual_in_float32: bool = False
    dropout_rate: float = 0.0
    deterministic: bool | None = None

    _NORM: ClassVar[Any]
    _PARAMS: ClassVar[tuple[str, ...]]

    def __post_init__(self) -> None:
        residual_lib.check_options(self.residual_in_float32, self.dropout_rate)
        super().__post_init__()

    @module.compact
    def __call__(
        self, x: ArrayLike, residual: ArrayLike | None = None, *, mask: jax.Array | None = None,
        deterministic: bool | None = None, gate: ArrayLike | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """Adds ``x`` (times ``gate``) to the residual stream and normalizes the sum; see the class docstring."""
        x = _dropout(self, x, deterministic)
        return flax_compat.add_norm(self, x, residual, mask, _promote(self, self._PARAMS), self._NORM, gate)


class AddLayerNorm(_Residual, LayerNorm):  # type: ignore[misc]  # __call__ returns (y, h)
    r"""Residual add and layer normalization: ``(y, h)`` with ``h = dropout(x) + residual`` and
    ``y = LayerNorm(h)``, as :func:`jaxnorm.add_layer_norm`.

    Attributes:
      (every attribute of :class:`jaxnorm.linen.LayerNorm`, the same ``params`` ``scale``/``bias``: a
      ``LayerNorm``'s checkpoint loads), then:
      residual_in_float32: keep ``h`` in float32 (or wider) whatever the input dtypes (False).
      dropout_rate: float in [0, 1), ``flax.linen.Dropout`` on ``x`` before the add (0.0; its rng collection is
        ``'dropout'``).
      deterministic: as ``flax.linen.Dropout``'s (None: given at the call).

    Call ``__call__(x, residual=None, *, mask=None, deterministic=None, gate=None)``: ``x`` the sublayer's output,
    ``residual`` None (the first layer) or the stream, of ``x``'s shape; ``mask`` the statistics' mask; ``gate``
    AdaLN-Zero's gate of the branch, ``h = residual + gate * dropout(x)`` (None; one row per example ``(N, C)``,
    broadcast over the tokens, or a shape that broadcasts to ``x``), as :func:`jaxnorm.add_layer_norm`'s.

    Returns:
      ``(y, h)``: ``y`` in the dtype Flax's rule gives for ``h`` and the params (``self.dtype`` if set), and the
      new residual stream ``h`` (``result_type(x, residual)``, float32 with ``residual_in_float32``).

    Raises:
      TypeError: ``x`` or ``residual`` not floating. ValueError: ``residual`` not of ``x``'s shape;
      ``dropout_rate`` outside [0, 1); Flax's Dropout errors (no ``deterministic``, no ``dropout`` rng).

    Source: flash-attn's ``layer_norm_fn(..., residual, prenorm=True, residual_in_fp32)``; Ba, Kiros & Hinton 2016.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxnorm import linen as jnn
      >>> ln = jnn.AddLayerNorm(epsilon=0.0)
      >>> x, stream = jnp.array([[1.0, 2.0]]), jnp.array([[0.0, 2.0]])
      >>> y, h = ln.apply(ln.init(jax.random.key(0), x, stream), x, stream)
      >>> print(y, h)
      [[-1.  1.]] [[1. 4.]]
    """



class AddRMSNorm(_Residual, RMSNorm):  # type: ignore[misc]  # __call__ returns (y, h)
    r"""Residual add and RMS normalization: ``(y, h)`` with ``h = dropout(x) + residual`` and ``y = RMSNorm(h)``,
    as :func:`jaxnorm.add_rms_norm`.

    Attributes:
      (every attribute of :class:`jaxnorm.linen.RMSNorm`, the same ``params`` ``scale``), then
      ``residual_in_float32``, ``dropout_rate`` and ``deterministic`` as :class:`AddLayerNorm`'s.

    Call ``__call__(x, residual=None, *, mask=None, deterministic=None, gate=None)``,
    returning ``(y, h)``, and its errors: as :class:`AddLayerNorm`'s.

    Source: Liger-Kernel's ``LigerFusedAddRMSNorm.forward(hidden, residual) -> (normed, residual)``; Zhang &
    Sennrich 2019.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxnorm import linen as jnn
      >>> rms = jnn.AddRMSNorm(epsilon=0.0)
      >>> first, second = jnp.array([[0.0, 2.0]]), jnp.array([[1.0, 5.0]])  # two sublayers' outputs
      >>> params = rms.init(jax.random.key(0), first)  # residual=None: the first layer starts the stream
      >>> _, stream = rms.apply(params, first)
      >>> y, stream = rms.apply(params, second, stream)  # RMS of the stream [1, 7] is 5
      >>> print(stream, y)
      [[1. 7.]] [[0.2 1.4]]
    """

