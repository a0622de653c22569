r"""DyT and Derf, the normalization-free point-wise layers of Transformers without statistics: op and spec each.

.. math::
    \text{DyT}(x) = \text{scale} \cdot \tanh(\alpha x) + \text{bias}, \qquad
    \text{Derf}(x) = \text{scale} \cdot \operatorname{erf}(\alpha x + s) + \text{bias}

with learnable scalars :math:`\alpha` (and :math:`s`) and ``scale``/``bias`` per feature. Each value maps on its
own: no statistics, no reduction, so nothing to merge across devices, nothing a mask could exclude, and the same
computation in training and inference. Computed in ``promote_types(x.dtype, float32)``, returned in ``x.dtype``.

Source: Zhu, Chen, He, LeCun & Liu 2025, "Transformers without Normalization" (DyT, :math:`\alpha` initialized
to 0.5); Chen, Lu, Zhu, Sun & Liu 2025, "Stronger Normalization-Free Transformers", arXiv 2512.10938 (Derf).
Keras has no such layer: the specs write jaxnorm configs only.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from jax import lax

from jaxnorm._src import frozen, layer, validation
from jaxnorm._src.layer import Affine
from jaxnorm._src.per_example import PerExample


def pointwise(
    x: jax.Array, alpha: Any, shift: Any, scale: jax.Array | None, bias: jax.Array | None, *, erf: bool,
    mask: jax.Array | None = None,
) -> jax.Array:
    """``scale * f(alpha * x + shift) + bias`` (``f``: tanh, or erf), in ``promote_types(x.dtype, float32)``, cast
    to ``x.dtype``; for checked inputs (``scale``/``bias``/``mask`` None or of x's rank, ``alpha``/``shift``
    scalars). With a ``mask``, a masked-out position still gets its own output, but no gradient flows through it
    (so NaN or inf there touches no gradient)."""
    dtype = validation.stats_dtype(x.dtype)
    xf = x.astype(dtype)
    params = tuple(None if p is None else jnp.asarray(p).astype(dtype) for p in (alpha, shift, scale, bias))

    def form(v: jax.Array, alpha: Any, shift: Any, scale: Any, bias: Any) -> jax.Array:
        z = v * alpha if shift is None else v * alpha + shift
        y = lax.erf(z) if erf else jnp.tanh(z)
        y = y if scale is None else y * scale
        return y if bias is None else y + bias

    if mask is None:
        return form(xf, *params).astype(x.dtype)
    # A masked-out position's output is computed as it is, but sends no gradient (to x or the parameters): a
    # loss of the kept outputs does not read it, so its exact gradient is 0, also where it holds NaN or inf.
    kept = form(jnp.where(mask, xf, 0), *params)
    return jnp.where(mask, kept, lax.stop_gradient(form(xf, *params))).astype(x.dtype)


def _operands(
    x: Any, scalars: dict[str, Any], scale: Any, bias: Any, axis: Any, where: Any
) -> tuple[jax.Array, list[jax.Array], Any, Any, Any]:
    """The public ops' checks: ``x`` floating, each scalar of shape ``()``, ``scale``/``bias`` over ``axis``,
    ``where`` broadcast to ``x``."""
    x = validation.check_float_array(x, "x")
    axes = validation.canonicalize_axes(axis, x.ndim, "axis")
    values = []
    for name, value in scalars.items():
        arr = validation.check_float_array(value, name) if not isinstance(value, numbers.Real) else jnp.asarray(
            value, validation.stats_dtype(x.dtype))
        if arr.shape != ():
            raise ValueError(
                f"`{name}` must be a scalar (one learnable value for the whole layer), got shape {arr.shape}. "
                "Pass a float or a 0-d array."
            )
        values.append(arr)
    scale = None if scale is None else validation.axes_operand(scale, x.shape, axes, "scale", "axis")
    bias = None if bias is None else validation.axes_operand(bias, x.shape, axes, "bias", "axis")
    mask = None if where is None else validation.broadcast_mask(where, x.shape, "where")
    return x, values, scale, bias, mask


def dyt(
    x: jax.Array, alpha: Any, scale: jax.Array | None = None, bias: jax.Array | None = None, *,
    axis: validation.Axes = -1, where: Any = None,
) -> jax.Array:
    r"""Dynamic Tanh: :math:`y = \text{scale} \cdot \tanh(\alpha x) + \text{bias}`, value by value.

    Args:
      x: floating array of any shape.
      alpha: a float or a floating 0-d array (learnable in a layer; 0.5 at initialization in the paper).
      scale, bias: None, or floating arrays with the sizes of ``x`` along ``axis`` (or broadcastable to ``x``).
      axis: int or sequence of ints, the feature axes ``scale`` and ``bias`` span (-1).
      where: optional mask (Keras's rules, as :func:`jaxnorm.moments`): the output is computed everywhere, as
        without it (each value maps on its own), but no gradient flows through a masked-out position, so NaN or
        inf there touches no gradient.

    Returns:
      ``y`` of ``x``'s shape and dtype, computed in ``promote_types(x.dtype, float32)``.

    Raises:
      TypeError: ``x``, ``alpha``, ``scale`` or ``bias`` not floating.
      ValueError: ``alpha`` not a scalar; ``axis`` out of range; ``scale``/``bias`` of the wrong shape.

    Source: Zhu et al. 2025, "Transformers without Normalization".

    Example:
      >>> import jax.numpy as jnp, jaxnorm
      >>> print(jaxnorm.dyt(jnp.array([[0.0, 2.0, -200.0]]), 0.5, bias=jnp.array([0.0, 0.0, 1.0])).round(4))
      [[0.     0.7616 0.    ]]
    """
    x, (alpha,), scale, bias, mask = _operands(x, {"alpha": alpha}, scale, bias, axis, where)
    return pointwise(x, alpha, None, scale, bias, erf=False, mask=mask)


def derf(
    x: jax.Array, alpha: Any, shift: Any = 0.0, scale: jax.Array | None = None, bias: jax.Array | None = None, *,
    axis: validation.Axes = -1, where: Any = None,
) -> jax.Array:
    r"""Dynamic erf: :math:`y = \text{scale} \cdot \operatorname{erf}(\alpha x + s) + \text{bias}`, value by value.

    Args:
      x, alpha, scale, bias, axis, where: as :func:`dyt`'s (``alpha`` scales ``x`` inside the erf).
      shift: :math:`s`, a float or a floating 0-d array (learnable in a layer; 0).

    Returns:
      ``y`` of ``x``'s shape and dtype, computed in ``promote_types(x.dtype, float32)``.

    Raises:
      TypeError: ``x``, ``alpha``, ``shift``, ``scale`` or ``bias`` not floating.
      ValueError: ``alpha`` or ``shift`` not a scalar; ``axis`` out of range; ``scale``/``bias`` of the wrong
        shape.

    Source: Chen et al. 2025, "Stronger Normalization-Free Transformers" (arXiv 2512.10938).

    Example:
      >>> import jax.numpy as jnp, jaxnorm
      >>> print(jaxnorm.derf(jnp.array([0.0, 1.0, 100.0]), 1.0).round(4))
      [0.     0.8427 1.    ]
    """
    x, (alpha, shift), scale, bias, mask = _operands(x, {"alpha": alpha, "shift": shift}, scale, bias, axis, where)
    return pointwise(x, alpha, shift, scale, bias, erf=True, mask=mask)


def _check_real(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise TypeError(f"`{name}` must be a finite float, got {value!r} ({type(value).__name__}).")
    return float(value)


@dataclasses.dataclass(frozen=True, eq=True, repr=False)
class _PointWise(Affine, PerExample):
    """What DyT and Derf share: ``axis``, ``alpha_init_value``, the scalar params before ``scale``/``bias``."""

    axis: int | tuple[int, ...] = -1
    alpha_init_value: float = 0.5

    # The scalars of the formula (param name -> the field of its initial value), before scale and bias.
    _SCALARS: ClassVar[dict[str, str]] = {"alpha": "alpha_init_value"}
    _ERF: ClassVar[bool] = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "axis", validation.check_axes_static(self.axis, "axis"))
        for field in self._SCALARS.values():
            object.__setattr__(self, field, _check_real(getattr(self, field), field))
        self._post_init_common()

    def _param_entries(self, pshape: tuple[int, ...]) -> dict[str, layer.ParamEntry]:
        scalars = {
            name: layer.ParamEntry((), self.param_dtype, frozen.freeze(
                {"class_name": "Constant", "config": {"value": getattr(self, field)}}
            ), f"learnable scalar {name} of the formula")
            for name, field in self._SCALARS.items()
        }
        return {**scalars, **super()._param_entries(pshape)}

    def _normalize(
        self, params: dict[str, jax.Array], x: jax.Array, axes: tuple[int, ...], mask: jax.Array | None
    ) -> jax.Array:
        scale, bias = self._expanded(params, x.ndim, axes)
        return pointwise(x, params["alpha"], params.get("shift"), scale, bias, erf=self._ERF, mask=mask)


@dataclasses.dataclass(frozen=True, eq=True, repr=False)
class DyT(_PointWise):
    r"""Dynamic Tanh (Zhu et al. 2025) as a pure spec: ``init`` and ``apply``; a drop-in for LayerNorm.

    .. math::
        y = \text{scale} \cdot \tanh(\alpha x) + \text{bias}

    with a learnable scalar :math:`\alpha` and ``scale``/``bias`` over ``axis``. Point-wise: no statistics, the
    state is ``{}``, and training and inference compute the same thing. The fields after ``alpha_init_value``
    are keyword-only.

    Attributes:
      axis: int or sequence of ints, the feature axes ``scale`` and ``bias`` span (-1).
      alpha_init_value: float, :math:`\alpha` at initialization (0.5, the paper's default; it suggests larger
        values for attention blocks of large language models).
      use_scale, use_bias, scale_init, bias_init, param_dtype, scale_regularizer, bias_regularizer,
        scale_constraint, bias_constraint, trainable: as :class:`LayerNorm`'s (``alpha`` is regularized and
        constrained by none of them; ``trainable=False`` freezes it too).

    ``init(key, x) -> (params, {})`` with ``params = {'alpha': (), 'scale', 'bias'}`` (``scale``/``bias`` of
    shape ``[x.shape[a] for a in axis]``), all of ``param_dtype``. ``apply(params, state, x, *, training=None,
    mask=None) -> (y, {})``: ``mask`` changes no value (each maps on its own), but no gradient flows through a
    masked-out position, so NaN or inf there touches no gradient, as in every masked jaxnorm layer.

    Keras has no DyT layer: :meth:`to_keras_config` raises; ``get_config``/``from_config`` round-trip.

    Source: Zhu, Chen, He, LeCun & Liu 2025, "Transformers without Normalization" (CVPR); param names as
    ``flax.nnx``'s proposed ``DyT`` (google/flax#5456).

    Example:
      >>> import jax, jax.numpy as jnp, jaxnorm
      >>> dyt = jaxnorm.DyT()
      >>> x = jnp.array([[0.0, 2.0, -200.0]])
      >>> params, state = dyt.init(jax.random.key(0), x)
      >>> jax.tree.map(jnp.shape, params)
      {'alpha': (), 'bias': (3,), 'scale': (3,)}
      >>> print(dyt.apply(params, state, x)[0].round(4))
      [[ 0.      0.7616 -1.    ]]
    """


@dataclasses.dataclass(frozen=True, eq=True, repr=False)
class Derf(_PointWise):
    r"""Dynamic erf (Chen et al. 2025) as a pure spec: ``init`` and ``apply``; a drop-in for LayerNorm.

    .. math::
        y = \text{scale} \cdot \operatorname{erf}(\alpha x + s) + \text{bias}

    with learnable scalars :math:`\alpha` and :math:`s` and ``scale``/``bias`` over ``axis``; otherwise as
    :class:`DyT` (point-wise, state ``{}``, no Keras layer).

    Attributes:
      axis, alpha_init_value, use_scale, use_bias, scale_init, bias_init, param_dtype, scale_regularizer,
        bias_regularizer, scale_constraint, bias_constraint, trainable: as :class:`DyT`'s.
      shift_init_value: float, :math:`s` at initialization (0: the function starts zero-centred, which the paper
        finds necessary).

    ``init(key, x) -> (params, {})`` with ``params = {'alpha': (), 'shift': (), 'scale', 'bias'}``.

    Source: Chen, Lu, Zhu, Sun & Liu 2025, "Stronger Normalization-Free Transformers", arXiv 2512.10938.

    Example:
      >>> import jax, jax.numpy as jnp, jaxnorm
      >>> derf = jaxnorm.Derf(alpha_init_value=1.0)
      >>> x = jnp.array([[0.0, 1.0, 100.0]])
      >>> params, state = derf.init(jax.random.key(0), x)
      >>> print(derf.apply(params, state, x)[0].round(4))
      [[0.     0.8427 1.    ]]
    """

    shift_init_value: float = 0.0

    _SCALARS: ClassVar[dict[str, str]] = {"alpha": "alpha_init_value", "shift": "shift_init_value"}
    _ERF: ClassVar[bool] = True
