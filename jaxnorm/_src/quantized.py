r"""Normalization with a quantized output: LayerNorm or RMSNorm written as fp8 with a given scale, and the amax of
the unquantized output from the same pass (TransformerEngine's ``layernorm_fwd_fp8``).

.. math::
    y = \text{norm}(x), \qquad q = \operatorname{fp8}\big(\operatorname{clip}(y \cdot s, -M, M)\big), \qquad
    \text{amax} = \max |y|

with ``s`` the output scale (``out_scale``), ``M`` the largest finite value of the fp8 dtype (448 for
``float8_e4m3fn``, 57344 for ``float8_e5m2``), and ``fp8`` the conversion with round-to-nearest-even. ``y`` is
computed in float32 from ``x`` (one rounding, float32 to fp8: a 16-bit input is not rounded to its own dtype
first). Values beyond ``M / s`` saturate to ``+-M`` (no inf), NaN stays NaN. ``amax`` is the float32 maximum of
``|y|`` over the whole array, NaN if ``y`` holds one: the statistic a delayed-scaling recipe keeps a history of to
choose the next ``s``; across devices take its ``jax.lax.pmax`` (it is this device's). The quantized ``q`` is a
``dot_general`` operand: ``dot(q_x, q_w, preferred_element_type=float32) / (s_x * s_w)``.

Gradients pass through the quantization as its derivative says: 0 where it saturates, ``s`` elsewhere (a
straight-through estimate of the rounding), so a train step over ``q`` trains the normalization's params.

Source: TransformerEngine's ``layernorm_fwd_fp8``/``rmsnorm_fwd_fp8`` and its JAX quantizer (``clip(x * scale,
-max, max).astype(fp8)``, amax of the unscaled value); Micikevicius et al. 2022, "FP8 Formats for Deep Learning".
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jaxnorm._src import layer, ops, validation
from jaxnorm._src.layer import Tree
from jaxnorm._src.layer_norm import LayerNorm
from jaxnorm._src.rms_norm import RMSNorm

#: The fp8 output dtypes and their largest finite values.
FP8_DTYPES = {jnp.dtype(jnp.float8_e4m3fn): 448.0, jnp.dtype(jnp.float8_e5m2): 57344.0}


def check_out_dtype(out_dtype: Any) -> Any:
    """``out_dtype`` as an fp8 NumPy dtype (:data:`FP8_DTYPES`), or ``ValueError`` naming the two."""
    try:
        dtype = jnp.dtype(out_dtype)
    except TypeError:
        dtype = None
    if dtype not in FP8_DTYPES:
        raise ValueError(
            f"`out_dtype` must be an fp8 dtype, jnp.float8_e4m3fn (the default, TransformerEngine's forward format) "
            f"or jnp.float8_e5m2, got {out_dtype!r}. For a 16- or 32-bit output use jaxnorm.layer_norm."
        )
    return dtype


def check_quantization(out_scale: Any, out_dtype: Any) -> tuple[jax.Array, Any]:
    """``(out_scale as a float32 scalar, out_dtype as an fp8 dtype)``, or the error naming which is wrong."""
    dtype = check_out_dtype(out_dtype)
    if out_scale is None:
        raise TypeError("`out_scale` must be given: the fp8 output's scale, a float or a float32 scalar array.")
    s = validation.check_float_array(out_scale, "out_scale")
    if s.ndim != 0:
        raise ValueError(f"`out_scale` must be a scalar (one scale per tensor), got shape {s.shape}.")
    return s.astype(jnp.float32), dtype


def quantize(y: jax.Array, out_scale: jax.Array, out_dtype: Any) -> tuple[jax.Array, jax.Array]:
    """``(clip(y * out_scale, -M, M).astype(out_dtype), max |y|)`` in float32, for a checked scalar ``out_scale``
    and an fp8 ``out_dtype`` (:data:`FP8_DTYPES`)."""
    limit = FP8_DTYPES[jnp.dtype(out_dtype)]
    y = y.astype(jnp.float32)
    q = jnp.clip(y * out_scale, -limit, limit).astype(out_dtype)
    return q, jnp.max(jnp.abs(y)) if y.size else jnp.zeros((), jnp.float32)


def layer_norm_fp8(
    x: jax.Array,
    scale: jax.Array | None = None,
    bias: jax.Array | None = None,
    *,
    out_scale: Any,
    out_dtype: Any = jnp.float8_e4m3fn,
    axis: validation.Axes = -1,
    epsilon: float = 1e-3,
    where: Any = None,
    axis_name: Any = None,
    extreme_range: bool = False,
    scale_offset: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
    r"""Layer normalization written as fp8: ``(q, amax)`` with ``q = fp8(clip(layer_norm(x) * out_scale))`` and
    ``amax = max |layer_norm(x)|`` (module docstring: the rounding and saturation).

    Args:
      x, scale, bias, axis, epsilon, where, axis_name, extreme_range, scale_offset: as
        :func:`jaxnorm.layer_norm`'s.
      out_scale: keyword-only, required: the output's scale, a float or a float32 scalar array (it may be traced:
        a delayed-scaling recipe updates it each step).
      out_dtype: ``jnp.float8_e4m3fn`` (default) or ``jnp.float8_e5m2``.

    Returns:
      ``(q, amax)``: ``q`` of ``x``'s shape in ``out_dtype``; ``amax`` a float32 scalar.

    Raises:
      TypeError: ``x``, ``scale``, ``bias`` or ``out_scale`` not floating.
      ValueError: ``out_dtype`` not an fp8 dtype; ``out_scale`` not a scalar; the errors of
        :func:`jaxnorm.layer_norm`.

    Source: TransformerEngine's ``layernorm_fwd_fp8``.

    Example:
      >>> import jax.numpy as jnp, jaxnorm
      >>> q, amax = jaxnorm.layer_norm_fp8(jnp.array([[1.0, 3.0]]), out_scale=100.0, epsilon=0.0)
      >>> print(q.dtype, q, amax)  # y = -1, 1: 100 lies halfway between e4m3's 96 and 104; ties go to even
      float8_e4m3fn [[-96 96]] 1.0
    """
    s, dtype = check_quantization(out_scale, out_dtype)
    x = validation.check_float_array(x, "x")
    y = ops.layer_norm(x.astype(validation.stats_dtype(x.dtype)), scale, bias, axis=axis, epsilon=epsilon,
                       where=where, axis_name=axis_name, extreme_range=extreme_range, scale_offset=scale_offset)
    return quantize(y, s, dtype)


def rms_norm_fp8(
    x: jax.Array,
    scale: jax.Array | None = None,
    *,
    out_scale: Any,
    out_dtype: Any = jnp.float8_e4m3fn,
    axis: validation.Axes = -1,
    epsilon: float = 1e-6,
    where: Any = None,
    axis_name: Any = None,
    extreme_range: bool = False,
    scale_offset: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
    r"""RMS normalization written as fp8: ``(q, amax)`` with ``q = fp8(clip(rms_norm(x) * out_scale))`` and
    ``amax = max |rms_norm(x)|``.

    Args:
      x, scale, axis, epsilon, where, axis_name, extreme_range, scale_offset: as :func:`jaxnorm.rms_norm`'s.
      out_scale, out_dtype: as :func:`layer_norm_fp8`'s.

    Returns:
      ``(q, amax)`` as :func:`layer_norm_fp8`'s.

    Raises:
      TypeError, ValueError: as :func:`layer_norm_fp8`'s, with :func:`jaxnorm.rms_norm`'s own.

    Source: TransformerEngine's ``rmsnorm_fwd_fp8``.

    Example:
      >>> import jax.numpy as jnp, jaxnorm
      >>> q, amax = jaxnorm.rms_norm_fp8(jnp.array([[3.0, 4.0]]), out_scale=2.0, epsilon=0.0)
      >>> print(q, round(float(amax), 4))  # rms 3.5355: y = (0.8485, 1.1314), times 2
      [[1.75 2.25]] 1.1314
    """
    s, dtype = check_quantization(out_scale, out_dtype)
    x = validation.check_float_array(x, "x")
    y = ops.rms_norm(x.astype(validation.stats_dtype(x.dtype)), scale, axis=axis, epsilon=epsilon, where=where,
                     axis_name=axis_name, extreme_range=extreme_range, scale_offset=scale_offset)
    return quantize(y, s, dtype)


@dataclasses.dataclass(frozen=True, eq=True, repr=False, kw_only=True)
class _Quantized(layer.Layer):
    """The fp8 output of :class:`LayerNormFP8` and :class:`RMSNormFP8`: ``out_dtype`` and an ``apply`` that
    quantizes the normalization's float32 output (a mixin before the normalization class)."""

    out_dtype: str = "float8_e4m3fn"

    KERAS: ClassVar[Any] = None  # Keras has no fp8 output

    def _check_out_dtype(self) -> None:
        object.__setattr__(self, "out_dtype", check_out_dtype(self.out_dtype).name)

    def apply(
        self, params: Tree, state: Tree, x: jax.Array, *, out_scale: Any = None, training: bool | None = None,
        mask: jax.Array | None = None,
    ) -> tuple[tuple[jax.Array, jax.Array], Tree]:
        """Normalizes ``x`` and writes the output as fp8.

        Args:
          params, state, training, mask: as the normalization's (:class:`LayerNorm`, :class:`RMSNorm`).
          x: floating array matching ``params``.
          out_scale: keyword-only, required: the output's scale (a float or float32 scalar; may be traced).

        Returns:
          ``((q, amax), {})``: ``q`` in ``out_dtype``, ``amax = max |norm(x)|`` (float32), as
          :func:`jaxnorm.layer_norm_fp8`.

        Raises:
          TypeError: ``out_scale`` missing or not floating; the normalization's errors.
          ValueError: ``out_scale`` not a scalar; the normalization's errors.
        """
        x, axes, params = self._per_example_inputs(params, state, x, training)  # type: ignore[attr-defined]
        s, dtype = check_quantization(out_scale, self.out_dtype)
        mask = self._checked_mask(mask, x)  # type: ignore[attr-defined]
        y = self._normalize(params, x.astype(validation.stats_dtype(x.dtype)), axes, mask)  # type: ignore[attr-defined]
        return quantize(y, s, dtype), {}


@dataclasses.dataclass(frozen=True, eq=True, repr=False)
class LayerNormFP8(_Quantized, LayerNorm):  # type: ignore[misc]  # apply returns ((q, amax), state)
    r"""Layer normalization with an fp8 output, as a pure spec: ``apply(params, state, x, *, out_scale)`` returns
    ``((q, amax), {})`` (:func:`jaxnorm.layer_norm_fp8`).

    Attributes:
      out_dtype: ``'float8_e4m3fn'`` (default) or ``'float8_e5m2'``.
      (every field of :class:`LayerNorm`; the same params: a LayerNorm's checkpoint loads.)

    ``init(key, x)`` as :class:`LayerNorm`'s; ``apply`` as :meth:`_Quantized.apply`. Keras has no such layer:
    :meth:`to_keras_config` raises; ``get_config``/``from_config`` round-trip.

    Source: TransformerEngine's ``LayerNorm`` with an fp8 output (``layernorm_fwd_fp8``).

    Example:
      >>> import jax, jax.numpy as jnp, jaxnorm
      >>> ln = jaxnorm.LayerNormFP8(epsilon=0.0)
      >>> x = jnp.array([[1.0, 3.0]])
      >>> (q, amax), _ = ln.apply(*ln.init(jax.random.key(0), x), x, out_scale=4.0)
      >>> print(q, amax)
      [[-4 4]] 1.0
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_out_dtype()


@dataclasses.dataclass(frozen=True, eq=True, repr=False)
class RMSNormFP8(_Quantized, RMSNorm):  # type: ignore[misc]  # apply returns ((q, amax), state)
    r"""RMS normalization with an fp8 output, as a pure spec: ``apply(params, state, x, *, out_scale)`` returns
    ``((q, amax), {})`` (:func:`jaxnorm.rms_norm_fp8`).

    Attributes:
      out_dtype: ``'float8_e4m3fn'`` (default) or ``'float8_e5m2'``.
      (every field of :class:`RMSNorm`; the same params.)

    ``init`` as :class:`RMSNorm`'s; ``apply``, configs and Keras as :class:`LayerNormFP8`'s.

    Source: TransformerEngine's ``RMSNorm`` with an fp8 output (``rmsnorm_fwd_fp8``).

    Example:
      >>> import jax, jax.numpy as jnp, jaxnorm
      >>> rms = jaxnorm.RMSNormFP8(epsilon=0.0, out_dtype="float8_e5m2")
      >>> x = jnp.array([[3.0, 4.0]])
      >>> (q, amax), _ = rms.apply(*rms.init(jax.random.key(0), x), x, out_scale=1.0)
      >>> print(q.dtype, q)
      float8_e5m2 [[0.875 1.25]]
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_out_dtype()
