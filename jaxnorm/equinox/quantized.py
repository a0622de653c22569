"""The fp8-output layers of :mod:`jaxnorm.equinox` (``LayerNormFP8``, ``RMSNormFP8``): no equinox peer; a
:class:`LayerNorm`/:class:`RMSNorm` (equinox's arguments and fields) whose call takes the output's scale and
returns ``(q, amax)``, as :func:`jaxnorm.layer_norm_fp8`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
from equinox import field

from jaxnorm._src import quantized, validation
from jaxnorm.equinox.normalization import LayerNorm, RMSNorm, _input


class _Quantized(eqx.Module):
    """The fp8 field, construction and call of both (a mixin before the normalization class)."""

    out_dtype: str = field(static=True)

    def __init__(
        self, shape: int | Sequence[int], eps: float = 1e-5, use_weight: bool = True, use_bias: bool = True,
        dtype: Any = None, *, out_dtype: str = "float8_e4m3fn", **kwargs: Any,
    ):
        super().__init__(shape, eps, use_weight, use_bias, dtype, **kwargs)  # type: ignore[call-arg]
        self.out_dtype = quantized.check_out_dtype(out_dtype).name

    def __call__(
        self, x: jax.Array, out_scale: Any, *, key: Any = None, mask: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """Normalizes ``x`` and writes it as fp8; see the class docstring."""
        s, dtype = quantized.check_quantization(out_scale, self.out_dtype)
        x = _input(x)
        y = super().__call__(x.astype(validation.stats_dtype(x.dtype)), key=key, mask=mask)  # type: ignore[misc]
        return quantized.quantize(y, s, dtype)


class LayerNormFP8(_Quantized, LayerNorm):  # type: ignore[misc]  # __call__ returns (q, amax)
    r"""Layer normalization of one example with an fp8 output: ``(q, amax)``, as :func:`jaxnorm.layer_norm_fp8`.

    Args:
      shape, eps, use_weight, use_bias, dtype, and the other keyword arguments: those of
        :class:`jaxnorm.equinox.LayerNorm` (the same ``weight``/``bias`` leaves).
      out_dtype: keyword-only, ``'float8_e4m3fn'`` (default) or ``'float8_e5m2'``.

    Call ``__call__(x, out_scale, *, key=None, mask=None)``: ``out_scale`` a float or float32 scalar. Returns
    ``(q, amax)``, ``y`` computed in float32 and rounded once. Raises as :func:`jaxnorm.layer_norm_fp8`.

    Source: TransformerEngine's ``layernorm_fwd_fp8``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxnorm import equinox as jeqx
      >>> q, amax = jeqx.LayerNormFP8(2, eps=0.0)(jnp.array([1.0, 3.0]), 4.0)
      >>> print(q, amax)
      [-4 4] 1.0
    """


class RMSNormFP8(_Quantized, RMSNorm):  # type: ignore[misc]  # __call__ returns (q, amax)
    r"""RMS normalization of one example with an fp8 output: ``(q, amax)``, as :func:`jaxnorm.rms_norm_fp8`.

    Args:
      shape, eps, use_weight, use_bias, dtype, and the other keyword arguments: those of
        :class:`jaxnorm.equinox.RMSNorm`; ``out_dtype`` as :class:`LayerNormFP8`'s.

    Call, returns and raises: as :class:`LayerNormFP8`'s.

    Source: TransformerEngine's ``rmsnorm_fwd_fp8``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxnorm import equinox as jeqx
      >>> print(jeqx.RMSNormFP8(2, eps=0.0, use_bias=False)(jnp.array([3.0, 4.0]), 2.0)[0])
      [1.75 2.25]
    """
