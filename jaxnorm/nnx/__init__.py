"""Drop-in replacements for Flax's normalization layers (``flax.nnx.BatchNorm``, ``LayerNorm``, ``RMSNorm``,
``GroupNorm``, ``InstanceNorm``) with stable statistics, and of its weight reparametrizations (``SpectralNorm``,
``WeightNorm``).

Usage: swap ``from flax import nnx`` ... ``nnx.BatchNorm(...)`` for ``from jaxnorm import nnx as jnnx`` ...
``jnnx.BatchNorm(...)`` (and likewise ``LayerNorm``), as you would swap ``from flax import linen as nn`` for
:mod:`jaxnorm.linen`. The constructor, ``__call__`` and ``set_view`` have Flax's arguments and defaults, the
variables are Flax's (``nnx.Param`` ``scale``/``bias``, ``nnx.BatchStat`` ``mean``/``var``, same shapes, dtypes
and rng draws), so ``nnx.state``/``nnx.split``/``nnx.merge``/``nnx.update`` states move freely between a model
built with Flax's classes and one built with these, and ``model.train()``, ``model.eval()`` and ``nnx.view``
behave the same.

The modules only hold the variables and apply Flax's dtype policy (``promote_dtype``); the statistics and
the normalization come from jaxnorm's functional core. The intended differences from Flax are those of
:mod:`jaxnorm.linen`: the variance is always two-pass in at least float32 (``use_fast_variance`` is accepted
and ignored; Flax's default ``E[x^2] - E[x]^2`` cancels on data with a large offset), ``axis_name``
statistics are merged exactly with per-device counts, masked-out values never reach the statistics (nor their
gradients), an empty selection gives mean and variance 0 (Flax: NaN), complex input is normalized as in Flax
(a complex BatchNorm keeps a complex running mean, where Flax's nnx class drops its imaginary part), and
``axis_index_groups`` groups the devices of ``axis_name``, statistics merged exactly within each group.
The normalizations take one more keyword after Flax's, ``extreme_range`` (default False; True: statistics exact at
any finite float32 magnitude, for one more pass), a plain attribute: the state is unchanged.

``DyT`` and ``Derf`` (normalization-free point-wise layers that Flax does not have) put :class:`jaxnorm.DyT` and
:class:`jaxnorm.Derf` in an NNX model, with NNX's conventions (``nnx.Param`` ``alpha``, ``scale``, ``bias``).

``SpectralNorm`` and ``WeightNorm`` wrap a layer and normalize its weights; they keep Flax's arguments and
state (``batch_stats`` ``{(path, 'u'), (path, 'sigma')}``; ``scales`` ``{path: array}``) and Flax's behaviour of
writing the normalized weight back into the wrapped layer (google/flax#5576); the math is
:func:`jaxnorm.spectral_normalize` and :func:`jaxnorm.weight_normalize`.
"""

from jaxnorm._src import public
from jaxnorm.nnx.normalization import BatchNorm, GroupNorm, InstanceNorm, LayerNorm, RMSNorm
from jaxnorm.nnx.adaptive import AdaptiveNorm
from jaxnorm.nnx.gated import GatedRMSNorm
from jaxnorm.nnx.pointwise import Derf, DyT
from jaxnorm.nnx.quantized import LayerNormFP8, RMSNormFP8
from jaxnorm.nnx.reparam import SpectralNorm, WeightNorm
from jaxnorm.nnx.residual import AddLayerNorm, AddRMSNorm

__all__ = [
    "AdaptiveNorm", "AddLayerNorm", "AddRMSNorm", "BatchNorm", "Derf", "DyT", "GatedRMSNorm", "GroupNorm",
    "InstanceNorm", "LayerNorm", "LayerNormFP8", "RMSNorm", "RMSNormFP8", "SpectralNorm", "WeightNorm",
]

public.publish(globals(), __all__)
