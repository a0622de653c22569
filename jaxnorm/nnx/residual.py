"""The residual add & norm layers of :mod:`jaxnorm.nnx` (``AddLayerNorm``, ``AddRMSNorm``): no Flax peer; they
are :class:`LayerNorm` and :class:`RMSNorm` (Flax's arguments and ``nnx.Param``\\ s) that take the residual
stream too, and return ``(y, new_residual)`` as the unfused ``nnx.Dropout``, add and ``nnx.LayerNorm`` would."""

from __future__ import annotations

import typing as tp

import jax
from flax import nnx
from flax.nnx import rnglib

from jaxnorm._src import flax_compat
from jaxnorm._src import residual as residual_lib
from jaxnorm.nnx.normalization import LayerNorm, RMSNorm, _promote


class _Residual:
    """The residual options and call of both (a mixin before the normalization class)."""

    residual_in_float32: bool
    dropout: nnx.Dropout | None
    _NORM: tp.ClassVar[tp.Any]
    _PARAMS: tp.ClassVar[tuple[str, ...]]

    def __init__(
        self, num_features: int, *, residual_in_float32: bool = False, dropout_rate: float = 0.0,
        deterministic: bool = False, rngs: rnglib.Rngs, **kwargs: tp.Any,
    ):
        super().__init__(num_features, rngs=rngs, **kwargs)  # type: ignore[call-arg]  # the normalization's
        stream, rate = residual_lib.check_options(residual_in_float32, dropout_rate)
        self.residual_in_float32 = stream
        # Flax's own Dropout (its `dropout` rng stream and deterministic flag, `model.eval()`), only where asked
        # for: without dropout the state is a LayerNorm's/RMSNorm's.
        self.dropout = nnx.Dropout(rate, deterministic=deterministic, rngs=rngs) if rate else None

    def __call__(
        self, x: jax.Array, residual: jax.Array | None = None, *, mask: jax.Array | None = None,
        deterministic: bool | None = None, rngs: rnglib.Rngs | None = None, gate: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """Adds ``x`` (times ``gate``) to the residual stream and normalizes the sum; see the class docstring."""
        if self.dropout is not None:
            x = self.dropout(x, deterministic=deterministic, rngs=rngs)
        return flax_compat.add_norm(self, x, residual, mask, _promote(self, self._PARAMS), self._NORM, gate)


class AddLayerNorm(_Residual, LayerNorm):  # type: ignore[misc]  # __call__ returns (y, h)
    r"""Residual add and layer normalization: ``(y, h)`` with ``h = dropout(x) + residual`` and
    ``y = LayerNorm(h)``, as :func:`jaxnorm.add_layer_norm`.

    Args:
      num_features, rngs, and the other keyword arguments: those of :class:`jaxnorm.nnx.LayerNorm` (Flax's, and
        jaxnorm's ``extreme_range`` and ``scale_offset``), the same ``nnx.Param`` ``scale``/``bias``.
      residual_in_float32: keep ``h`` in float32 (or wider) whatever the input dtypes (False).
      dropout_rate: float in [0, 1): an ``nnx.Dropout`` on ``x`` before the add (0.0: none, and none in the
        state), drawing from ``rngs``'s ``dropout`` stream.
      deterministic: the Dropout's flag (False; ``model.eval()`` sets it).

    Call ``__call__(x, residual=None, *, mask=None, deterministic=None, rngs=None, gate=None)``: ``residual``
    None (the first layer) or the stream, of ``x``'s shape; ``deterministic``/``rngs`` override the Dropout's;
    ``gate`` AdaLN-Zero's gate, ``h = residual + gate * dropout(x)``, as :func:`jaxnorm.add_layer_norm`'s.

    Returns:
      ``(y, h)``: ``y`` in the dtype ``promote_dtype`` gives for ``h`` and the params, and the new residual
      stream ``h`` (``result_type(x, residual)``, float32 with ``residual_in_float32``).

    Raises:
      TypeError: ``x`` or ``residual`` not floating. ValueError: ``residual`` not of ``x``'s shape;
      ``dropout_rate`` outside [0, 1); Flax's Dropout errors.

    Source: flash-attn's ``layer_norm_fn(..., residual, prenorm=True, residual_in_fp32)``; Ba, Kiros & Hinton 2016.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from jaxnorm import nnx as jnnx
      >>> ln = jnnx.AddLayerNorm(2, epsilon=0.0, rngs=nnx.Rngs(0))
      >>> y, h = ln(jnp.array([[1.0, 2.0]]), jnp.array([[0.0, 2.0]]))
      >>> print(y, h)
      [[-1.  1.]] [[1. 4.]]
    """



class AddRMSNorm(_Residual, RMSNorm):  # type: ignore[misc]  # __call__ returns (y, h)
    r"""Residual add and RMS normalization, :func:`jaxnorm.add_rms_norm` as an ``nnx.Module``: an
    :class:`AddLayerNorm` whose statistics, arguments and ``nnx.Param`` ``scale`` are :class:`jaxnorm.nnx.RMSNorm`'s
    (its checkpoint loads). The residual arguments, the call ``(x, residual=None, *, mask=None, deterministic=None,
    rngs=None, gate=None) -> (y, h)`` and the errors are :class:`AddLayerNorm`'s.

    Source: Liger-Kernel's ``LigerFusedAddRMSNorm``, vLLM's ``fused_add_rms_norm``; Zhang & Sennrich 2019.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from jaxnorm import nnx as jnnx
      >>> rms = jnnx.AddRMSNorm(2, epsilon=0.0, rngs=nnx.Rngs(0))
      >>> _, stream = rms(jnp.array([[0.0, 2.0]]))  # residual=None: the first layer starts the stream
      >>> y, stream = rms(jnp.array([[1.0, 5.0]]), stream)  # RMS of the stream [1, 7] is 5
      >>> print(stream, y)
      [[1. 7.]] [[0.2 1.4]]
    """

