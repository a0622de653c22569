"""The fp8-output layers of :mod:`jaxnorm.linen` (``LayerNormFP8``, ``RMSNormFP8``): no Flax peer; a
:class:`LayerNorm`/:class:`RMSNorm` (Flax's arguments and ``params``) whose call takes the output's scale and
returns ``(q, amax)``, as :func:`jaxnorm.layer_norm_fp8`."""

from __future__ import annotations

from typing import Any, ClassVar

import jax
from flax.linen import module
from jax.typing import ArrayLike

from jaxnorm._src import flax_compat, quantized
from jaxnorm.linen.normalization import LayerNorm, RMSNorm, _promote


class _Quantized(module.Module):
    """The fp8 field and call of both (a mixin before the normalization class)."""

    out_dtype: str = "float8_e4m3fn"

    _NORM: ClassVar[Any]
    _PARAMS: ClassVar[tuple[str, ...]]

    def __post_init__(self) -> None:
        quantized.check_out_dtype(self.out_dtype)
        super().__post_init__()

    @module.compact
    def __call__(
        self, x: ArrayLike, out_scale: ArrayLike, *, mask: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """Normalizes ``x`` and writes it as fp8; see the class docstring."""
        return flax_compat.quantized_norm(self, x, out_scale, mask, _promote(self, self._PARAMS), self._NORM)


class LayerNormFP8(_Quantized, LayerNorm):  # type: ignore[misc]  # __call__ returns (q, amax)
    r"""Layer normalization with an fp8 output: ``(q, amax)`` with ``q = fp8(clip(LayerNorm(x) * out_scale))`` and
    ``amax = max |LayerNorm(x)|``, as :func:`jaxnorm.layer_norm_fp8`.

    Attributes:
      (every attribute of :class:`jaxnorm.linen.LayerNorm`, the same ``params``), then
      out_dtype: ``'float8_e4m3fn'`` (default) or ``'float8_e5m2'``.

    Call ``__call__(x, out_scale, *, mask=None)``: ``out_scale`` a float or float32 scalar (it may be traced).

    Returns:
      ``(q, amax)``: ``q`` of ``x``'s shape in ``out_dtype``, quantized from the output in the dtype Flax's rule
      gives; ``amax`` float32.

    Raises:
      TypeError: ``out_scale`` not floating. ValueError: ``out_scale`` not a scalar; ``out_dtype`` not fp8.

    Source: TransformerEngine's ``layernorm_fwd_fp8``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxnorm import linen as jnn
      >>> ln = jnn.LayerNormFP8(epsilon=0.0)
      >>> x = jnp.array([[1.0, 3.0]])
      >>> print(ln.apply(ln.init(jax.random.key(0), x, 4.0), x, 4.0))
      (Array([[-4, 4]], dtype=float8_e4m3fn), Array(1., dtype=float32))
    """



class RMSNormFP8(_Quantized, RMSNorm):  # type: ignore[misc]  # __call__ returns (q, amax)
    r"""RMS normalization with an fp8 output: ``(q, amax)``, as :func:`jaxnorm.rms_norm_fp8`.

    Attributes:
      (every attribute of :class:`jaxnorm.linen.RMSNorm`, the same ``params``), then ``out_dtype`` as
      :class:`LayerNormFP8`'s.

    Call ``__call__(x, out_scale, *, mask=None)``, returning ``(q, amax)``, and its errors: as
    :class:`LayerNormFP8`'s.

    Source: TransformerEngine's ``rmsnorm_fwd_fp8``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxnorm import linen as jnn
      >>> rms, x = jnn.RMSNormFP8(epsilon=0.0), jnp.array([[3.0, 4.0]])
      >>> params = rms.init(jax.random.key(0), x, 1.0)
      >>> _, amax = rms.apply(params, x, 1.0)  # delayed scaling: the next step's scale from this amax
      >>> q, _ = jax.jit(rms.apply)(params, x, 448.0 / amax)  # 448 is e4m3's largest value
      >>> print(q)
      [[320 448]]
    """

