"""The residual add & norm layers of :mod:`jaxnorm.equinox` (``AddLayerNorm``, ``AddRMSNorm``): no equinox peer;
they are :class:`LayerNorm` and :class:`RMSNorm` (equinox's arguments and fields) that take the residual stream
too, and return ``(y, new_residual)`` as the unfused ``eqx.nn.Dropout``, add and ``eqx.nn.LayerNorm`` would."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
from equinox import field

from jaxnorm._src import residual as residual_lib
from jaxnorm.equinox.normalization import LayerNorm, RMSNorm, _input


class _Residual(eqx.Module):
    """The residual fields, constructor and call of both (a mixin before the normalization class): the
    normalization's own ``__init__`` and ``__call__`` on the sum."""

    residual_in_float32: bool = field(static=True)
    dropout: eqx.nn.Dropout | None

    def __init__(
        self, shape: int | Sequence[int], eps: float = 1e-5, use_weight: bool = True, use_bias: bool = True,
        dtype: Any = None, *, residual_in_float32: bool = False, dropout_rate: float = 0.0, **kwargs: Any,
    ):
        super().__init__(shape, eps, use_weight, use_bias, dtype, **kwargs)  # type: ignore[call-arg]
        stream, rate = residual_lib.check_options(residual_in_float32, dropout_rate)
        self.residual_in_float32, self.dropout = stream, (eqx.nn.Dropout(rate) if rate else None)

    def __call__(
        self, x: jax.Array, residual: jax.Array | None = None, *, key: Any = None, inference: bool | None = None,
        mask: jax.Array | None = None, gate: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """Adds ``x`` (times ``gate``) to the residual stream and normalizes the sum; see the class docstring."""
        if self.dropout is not None:
            x = self.dropout(x, key=key, inference=inference)
        h = residual_lib.residual_sum(_input(x), residual, self.residual_in_float32, 0.0, None, gate)
        return super().__call__(h, mask=mask), h  # type: ignore[misc]


class AddLayerNorm(_Residual, LayerNorm):
    r"""Residual add and layer normalization over one example: ``(y, h)`` with ``h = dropout(x) + residual`` and
    ``y = LayerNorm(h)``, as :func:`jaxnorm.add_layer_norm`.

    Args:
      shape, eps, use_weight, use_bias, dtype, and the other keyword arguments: those of
        :class:`jaxnorm.equinox.LayerNorm` (equinox's, and jaxnorm's ``extreme_range`` and ``scale_offset``), the
        same ``weight``/``bias`` leaves.
      residual_in_float32: keyword-only; keep ``h`` in float32 (or wider) whatever the input dtypes (False).
      dropout_rate: keyword-only float in [0, 1): an ``eqx.nn.Dropout`` on ``x`` before the add (0.0: none).

    Call ``__call__(x, residual=None, *, key=None, inference=None, mask=None, gate=None)``: ``x`` and
    ``residual`` (None: the first layer) of shape ``shape``; ``key`` and ``inference`` go to the Dropout, as
    equinox's; ``gate`` AdaLN-Zero's gate, ``h = residual + gate * dropout(x)``, broadcasting to ``shape``.

    Returns:
      ``(y, h)``: ``y`` in ``h``'s dtype, and the new residual stream ``h`` (``result_type(x, residual)``,
      float32 with ``residual_in_float32``).

    Raises:
      ValueError: ``x.shape != shape``; ``residual`` not of ``x``'s shape; ``dropout_rate`` outside [0, 1);
      equinox's Dropout errors (no ``key`` in training). TypeError: complex ``x``, a non-floating ``residual``.

    Source: flash-attn's ``layer_norm_fn(..., residual, prenorm=True, residual_in_fp32)``; Ba, Kiros & Hinton 2016.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxnorm import equinox as jeqx
      >>> ln = jeqx.AddLayerNorm(2, eps=0.0)
      >>> y, h = ln(jnp.array([1.0, 2.0]), jnp.array([0.0, 2.0]))
      >>> print(y, h)
      [-1.  1.] [1. 4.]
    """


class AddRMSNorm(_Residual, RMSNorm):
    r"""Residual add and RMS normalization of one example, :func:`jaxnorm.add_rms_norm` as an
    ``eqx.Module``: :class:`jaxnorm.equinox.RMSNorm`'s arguments and ``weight`` leaf with :class:`AddLayerNorm`'s
    keyword-only ``residual_in_float32`` and ``dropout_rate``, its call ``(x, residual=None, *, key=None,
    inference=None, mask=None, gate=None) -> (y, h)`` and its errors.

    Source: Liger-Kernel's ``LigerFusedAddRMSNorm.forward(hidden, residual) -> (normed, residual)``; Zhang &
    Sennrich 2019.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxnorm import equinox as jeqx
      >>> rms = jeqx.AddRMSNorm(2, eps=0.0, use_bias=False)
      >>> _, stream = rms(jnp.array([0.0, 2.0]))  # residual=None: the first layer starts the stream
      >>> y, stream = rms(jnp.array([1.0, 5.0]), stream)  # RMS of the stream [1, 7] is 5
      >>> print(stream, y)
      [1. 7.] [0.2 1.4]
    """
