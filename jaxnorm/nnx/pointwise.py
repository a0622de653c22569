"""The normalization-free point-wise layers of :mod:`jaxnorm.nnx` (``DyT``, ``Derf``): no Flax peer; their state
follows Flax NNX's conventions (``nnx.Param`` ``alpha``, ``scale``, ``bias``), with the arguments of the DyT Flax
was offered (google/flax#5459)."""

from __future__ import annotations

import typing as tp
from types import MappingProxyType

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx import rnglib
from flax.nnx.nn import dtypes
from flax.typing import Axes, Dtype, Initializer, PromoteDtypeFn

from jaxnorm._src import flax_compat
from jaxnorm.nnx.normalization import _ONES_INIT, _ZEROS_INIT, _affine_param, _promote


class _Dynamic(nnx.Module):
    """DyT's and Derf's arguments, state and call (the formula is the spec's, :mod:`jaxnorm._src.pointwise`)."""

    _SCALARS: tp.ClassVar[tuple[str, ...]] = ("alpha",)

    def __init__(
        self,
        num_features: int,
        *,
        alpha_init_value: float = 0.5,
        shift_init_value: float | None = None,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Initializer = _ZEROS_INIT,
        scale_init: Initializer = _ONES_INIT,
        feature_axes: Axes = -1,
        promote_dtype: PromoteDtypeFn = dtypes.promote_dtype,
        rngs: rnglib.Rngs,
        bias_metadata: tp.Mapping[str, tp.Any] = MappingProxyType({}),
        scale_metadata: tp.Mapping[str, tp.Any] = MappingProxyType({}),
    ):
        if "shift" not in self._SCALARS and shift_init_value is not None:
            raise TypeError(f"{type(self).__name__} has no shift (shift_init_value={shift_init_value!r}); use Derf.")
        initial = {"alpha": alpha_init_value, "shift": 0.0 if shift_init_value is None else shift_init_value}
        for name in self._SCALARS:
            setattr(self, f"{name}_init_value", initial[name])
            setattr(self, name, nnx.Param(jnp.full((), initial[name], param_dtype)))
        self.scale = _affine_param(use_scale, scale_init, rngs, (num_features,), param_dtype, scale_metadata)
        self.bias = _affine_param(use_bias, bias_init, rngs, (num_features,), param_dtype, bias_metadata)
        self.num_features, self.dtype, self.param_dtype = num_features, dtype, param_dtype
        self.use_bias, self.use_scale, self.feature_axes = use_bias, use_scale, feature_axes
        self.promote_dtype = promote_dtype

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        """Maps each value of ``x``; see the class docstring."""
        return flax_compat.dynamic(self, x, mask, _promote(self, ("scale", "bias"), self._SCALARS))


class DyT(_Dynamic):
    r"""Dynamic Tanh (Zhu et al. 2025), a Flax NNX layer in LayerNorm's place:
    :math:`y = \text{scale} \cdot \tanh(\alpha x) + \text{bias}`, as :class:`jaxnorm.DyT`.

    Args:
      num_features: int, the number of entries of ``scale`` and ``bias`` (the product of the sizes of
        ``feature_axes``, reshaped onto them as Flax's LayerNorm does).
      alpha_init_value: float, the learnable scalar :math:`\alpha` at initialization (0.5).
      shift_init_value: :class:`Derf`'s (None here; giving it raises ``TypeError``).
      dtype: output and compute dtype handed to ``promote_dtype`` (None: inferred).
      param_dtype: dtype of ``alpha``, ``scale`` and ``bias`` (float32).
      use_bias, use_scale: create ``bias``/``scale`` (``nnx.Param``; otherwise None).
      bias_init, scale_init: their initializers (zeros, ones); ``rngs.params()`` is drawn for ``scale`` then
        ``bias``.
      feature_axes: int or tuple of ints, the axes ``scale`` and ``bias`` span (-1).
      promote_dtype: Flax's dtype-promotion function, called on ``(x, alpha, scale, bias)``.
      rngs: ``nnx.Rngs``.
      bias_metadata, scale_metadata: metadata mappings given to the ``nnx.Param``.

    Call ``__call__(x, *, mask=None)``: ``mask`` (broadcastable to ``x``) changes no value, but no gradient flows
    through its masked-out positions (NaN there touches no gradient). Returns ``y`` of ``x``'s shape in the dtype
    ``promote_dtype`` gives.

    Raises:
      ValueError: an axis out of range; a stored variable of the wrong shape (naming it).

    Source: Zhu, Chen, He, LeCun & Liu 2025, "Transformers without Normalization".

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from jaxnorm import nnx as jnnx
      >>> dyt = jnnx.DyT(3, rngs=nnx.Rngs(0))
      >>> print(dyt(jnp.array([[0.0, 2.0, -200.0]])).round(4))
      [[ 0.      0.7616 -1.    ]]
      >>> sorted(nnx.to_pure_dict(nnx.state(dyt)))
      ['alpha', 'bias', 'scale']
    """


class Derf(_Dynamic):
    r"""Dynamic erf (Chen et al. 2025), a Flax NNX layer in LayerNorm's place:
    :math:`y = \text{scale} \cdot \operatorname{erf}(\alpha x + s) + \text{bias}`, as :class:`jaxnorm.Derf`.

    Args: :class:`DyT`'s, with ``shift_init_value`` (float or None: :math:`s` at initialization, None meaning 0),
    kept as the ``nnx.Param`` ``shift``. Call, returns and raises as :class:`DyT`.

    Source: Chen, Lu, Zhu, Sun & Liu 2025, "Stronger Normalization-Free Transformers", arXiv 2512.10938.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from jaxnorm import nnx as jnnx
      >>> derf = jnnx.Derf(3, alpha_init_value=1.0, shift_init_value=0.0, rngs=nnx.Rngs(0))
      >>> print(derf(jnp.array([0.0, 1.0, 100.0])).round(4))
      [0.     0.8427 1.    ]
    """

    _SCALARS: tp.ClassVar[tuple[str, ...]] = ("alpha", "shift")
