"""The fp8-output layers of :mod:`jaxnorm.nnx` (``LayerNormFP8``, ``RMSNormFP8``): no Flax peer; a
:class:`LayerNorm`/:class:`RMSNorm` (Flax's arguments and ``nnx.Param``\\ s) whose call takes the output's scale
and returns ``(q, amax)``, as :func:`jaxnorm.layer_norm_fp8`."""

from __future__ import annotations

import typing as tp

import jax
from flax.nnx import rnglib

from jaxnorm._src import flax_compat, quantized
from jaxnorm.nnx.normalization import LayerNorm, RMSNorm, _promote


class _Quantized:
    """The fp8 attribute, construction and call of both (a mixin before the normalization class)."""

    out_dtype: str
    _NORM: tp.ClassVar[tp.Any]
    _PARAMS: tp.ClassVar[tuple[str, ...]]

    def __init__(
        self, num_features: int, *, out_dtype: str = "float8_e4m3fn", rngs: rnglib.Rngs, **kwargs: tp.Any
    ):
        self.out_dtype = quantized.check_out_dtype(out_dtype).name
        super().__init__(num_features, rngs=rngs, **kwargs)  # type: ignore[call-arg]

    def __call__(
        self, x: jax.Array, out_scale: tp.Any, *, mask: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """Normalizes ``x`` and writes it as fp8; see the class docstring."""
        return flax_compat.quantized_norm(self, x, out_scale, mask, _promote(self, self._PARAMS), self._NORM)


class LayerNormFP8(_Quantized, LayerNorm):  # type: ignore[misc]  # __call__ returns (q, amax)
    r"""Layer normalization with an fp8 output: ``(q, amax)``, as :func:`jaxnorm.layer_norm_fp8`.

    Args:
      num_features, rngs, and the other keyword arguments: those of :class:`jaxnorm.nnx.LayerNorm` (the same
        ``nnx.Param`` ``scale``/``bias``).
      out_dtype: keyword-only, ``'float8_e4m3fn'`` (default) or ``'float8_e5m2'``; a plain attribute.

    Call ``__call__(x, out_scale, *, mask=None)``, returning ``(q, amax)``, and its errors: as
    :class:`jaxnorm.linen.LayerNormFP8`'s.

    Source: TransformerEngine's ``layernorm_fwd_fp8``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from jaxnorm import nnx as jnnx
      >>> ln = jnnx.LayerNormFP8(2, epsilon=0.0, rngs=nnx.Rngs(0))
      >>> q, amax = ln(jnp.array([[1.0, 3.0]]), 4.0)
      >>> print(q, amax)
      [[-4 4]] 1.0
    """



class RMSNormFP8(_Quantized, RMSNorm):  # type: ignore[misc]  # __call__ returns (q, amax)
    r"""RMS normalization written as fp8, :func:`jaxnorm.rms_norm_fp8` as an ``nnx.Module``:
    :class:`jaxnorm.nnx.RMSNorm`'s arguments and ``scale``, and :class:`LayerNormFP8`'s ``out_dtype``, call
    ``(x, out_scale, *, mask=None) -> (q, amax)`` and errors.

    Source: TransformerEngine's ``rmsnorm_fwd_fp8``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from jaxnorm import nnx as jnnx
      >>> rms = jnnx.RMSNormFP8(2, epsilon=0.0, out_dtype="float8_e5m2", rngs=nnx.Rngs(0))
      >>> q, amax = rms(jnp.array([[3.0, 4.0]]), 1.0)  # y = (0.8485, 1.1314) rounds to (0.875, 1.25)
      >>> w = jnp.ones((2, 1), jnp.float8_e5m2)  # an fp8 matmul takes q as it is
      >>> print(jnp.dot(q, w, preferred_element_type=jnp.float32))
      [[2.125]]
    """

