"""The normalization-free point-wise layers of :mod:`jaxnorm.linen` (``DyT``, ``Derf``): no Flax peer; their
variables follow Flax's conventions (``params`` ``alpha``, ``scale``, ``bias``)."""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp
from flax.linen import module
from flax.typing import Axes, Dtype, Initializer
from jax.nn import initializers
from jax.typing import ArrayLike

from jaxnorm._src import flax_compat
from jaxnorm.linen.normalization import _promote


class _Dynamic(module.Module):
    """DyT's and Derf's fields and call (the formula is the spec's, :mod:`jaxnorm._src.pointwise`)."""

    alpha_init_value: float = 0.5
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Initializer = initializers.zeros
    scale_init: Initializer = initializers.ones
    feature_axes: Axes = -1

    _SCALARS: ClassVar[tuple[str, ...]] = ("alpha",)

    @module.compact
    def __call__(self, x: ArrayLike, *, mask: jax.Array | None = None) -> jax.Array:
        """Maps each value of ``x``; see the class docstring."""
        return flax_compat.dynamic(self, x, mask, _promote(self, ("scale", "bias"), self._SCALARS))


class DyT(_Dynamic):
    r"""Dynamic Tanh (Zhu et al. 2025), a Flax Linen layer in LayerNorm's place:
    :math:`y = \text{scale} \cdot \tanh(\alpha x) + \text{bias}`, as :class:`jaxnorm.DyT`.

    Attributes:
      alpha_init_value: float, the learnable scalar :math:`\alpha` at initialization (0.5).
      dtype: output dtype; None infers ``result_type(x, alpha, scale, bias)`` as Flax's layers do.
      param_dtype: dtype of ``alpha``, ``scale`` and ``bias`` (float32).
      use_bias, use_scale: learn ``params['bias']`` / ``params['scale']``.
      bias_init, scale_init: their initializers (zeros, ones).
      feature_axes: int or tuple of ints, the axes ``scale`` and ``bias`` span (-1).

    Call ``__call__(x, *, mask=None)``: ``x`` of any rank, floating; ``mask`` (broadcastable to ``x``) changes no
    value, but no gradient flows through its masked-out positions (NaN there touches no gradient).

    Returns:
      ``y`` of ``x``'s shape and dtype ``canonicalize_dtype(x, alpha, scale, bias, dtype=self.dtype)``.

    Variables:
      ``params``: ``alpha`` (shape ``()``), ``scale`` and ``bias`` of shape ``[x.shape[a] for a in
      feature_axes]``, all of ``param_dtype``.

    Raises:
      ValueError: an axis out of range; a stored variable of the wrong shape (Flax's ``ScopeParamShapeError``).

    Source: Zhu, Chen, He, LeCun & Liu 2025, "Transformers without Normalization"; Flax has no DyT
    (google/flax#5456 asked for one).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxnorm import linen as jnn
      >>> dyt = jnn.DyT()
      >>> x = jnp.array([[0.0, 2.0, -200.0]])
      >>> variables = dyt.init(jax.random.key(0), x)
      >>> print(dyt.apply(variables, x).round(4))
      [[ 0.      0.7616 -1.    ]]
    """


class Derf(_Dynamic):
    r"""Dynamic erf (Chen et al. 2025), a Flax Linen layer in LayerNorm's place:
    :math:`y = \text{scale} \cdot \operatorname{erf}(\alpha x + s) + \text{bias}`, as :class:`jaxnorm.Derf`.

    Attributes:
      alpha_init_value, dtype, param_dtype, use_bias, use_scale, bias_init, scale_init, feature_axes: as
        :class:`DyT`'s.
      shift_init_value: float, the learnable scalar :math:`s` at initialization (0).

    Call, returns and raises as :class:`DyT`; ``params`` also holds ``shift`` (shape ``()``).

    Source: Chen, Lu, Zhu, Sun & Liu 2025, "Stronger Normalization-Free Transformers", arXiv 2512.10938.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxnorm import linen as jnn
      >>> derf = jnn.Derf(alpha_init_value=1.0)
      >>> x = jnp.array([[0.0, 1.0, 100.0]])
      >>> print(derf.apply(derf.init(jax.random.key(0), x), x).round(4))
      [[0.     0.8427 1.    ]]
    """

    shift_init_value: float = 0.0

    _SCALARS: ClassVar[tuple[str, ...]] = ("alpha", "shift")


