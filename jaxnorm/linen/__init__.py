"""Drop-in replacements for Flax's normalization layers (``flax.linen.BatchNorm``, ``LayerNorm``, ``RMSNorm``,
``GroupNorm``, ``InstanceNorm``) with stable statistics, and of its weight reparametrizations (``SpectralNorm``,
``WeightNorm``).

Usage: swap ``from flax import linen as nn`` ... ``nn.BatchNorm(...)`` for
``from jaxnorm import linen as jnn`` ... ``jnn.BatchNorm(...)`` (and likewise ``LayerNorm``). Everything else
stays as it is: the constructor and call arguments and their defaults are Flax's, the variables are created
Flax's way (collections ``params`` / ``batch_stats``, names ``scale``, ``bias``, ``mean``, ``var``, the same
shapes, dtypes and initializer keys), so a checkpoint written with Flax's classes loads into these and back,
and ``mutable=['batch_stats']``, ``use_running_average`` and ``merge_param`` behave the same.

The modules only create variables and apply Flax's dtype policy; the statistics and the normalization come
from jaxnorm's functional core, which differs from Flax on purpose in two places:

- the variance is always two-pass (``mean((x - mean)**2)``) in at least float32. Flax's default
  ``use_fast_variance=True`` computes ``E[x^2] - E[x]^2``, which cancels catastrophically when the data has a
  large offset (float32 ``1e4 + N(0, 1)``: Flax gives a variance of 0 or 8, jaxnorm gives 1). On well-scaled
  data the two agree to float32 rounding. ``use_fast_variance`` is accepted and ignored.
- with ``axis_name``, the per-device ``(count, mean, M2)`` are merged exactly (two ``psum``), so devices
  holding different numbers of valid (masked-in) elements are weighted by their counts. Flax averages the
  per-device means with ``pmean``, which is exact only for equal counts.

Other small differences: masked-out positions never enter the statistics or the statistics' gradients, so
NaN or inf there is harmless to them (Flax's gradient of the statistics is NaN there). Every position is still
normalized, as in Flax, so a NaN input stays NaN in the output at its own position; zero such inputs
(``jnp.where(mask, x, 0)``) before differentiating through the output. A reduction that selects nothing gives
mean 0 and variance 0 (Flax: NaN); repeated axes raise instead of being accepted; complex input is normalized as
in Flax (mean ``E[x]``, the real variance ``E|x - E[x]|^2``, each part's statistics by jaxnorm's kernel);
``axis_index_groups`` groups the devices of ``axis_name``, statistics merged exactly within each group.
The normalizations take one more field after Flax's, ``extreme_range`` (default False; True: statistics exact at
any finite float32 magnitude, for one more pass), a static option: the variables are unchanged.

``DyT`` and ``Derf`` (normalization-free point-wise layers that Flax does not have) put :class:`jaxnorm.DyT` and
:class:`jaxnorm.Derf` in a Linen model, with Flax's conventions (``params`` ``alpha``, ``scale``, ``bias``).

``SpectralNorm`` and ``WeightNorm`` wrap a layer and normalize its weights (not its activations). They keep
Flax's mechanism (``nn.map_variables`` over the wrapped layer's variables) and Flax's variables (``batch_stats``
``'<layer>/kernel/u'`` and ``'<layer>/kernel/sigma'``; ``params`` ``'<layer>/kernel/scale'``); the math is
:func:`jaxnorm.spectral_normalize` and :func:`jaxnorm.weight_normalize`, Flax's arithmetic.
"""

from jaxnorm._src import public
from jaxnorm.linen.normalization import BatchNorm, GroupNorm, InstanceNorm, LayerNorm, RMSNorm
from jaxnorm.linen.adaptive import AdaptiveNorm
from jaxnorm.linen.gated import GatedRMSNorm
from jaxnorm.linen.pointwise import Derf, DyT
from jaxnorm.linen.quantized import LayerNormFP8, RMSNormFP8
from jaxnorm.linen.reparam import SpectralNorm, WeightNorm
from jaxnorm.linen.residual import AddLayerNorm, AddRMSNorm

__all__ = [
    "AdaptiveNorm", "AddLayerNorm", "AddRMSNorm", "BatchNorm", "Derf", "DyT", "GatedRMSNorm", "GroupNorm",
    "InstanceNorm", "LayerNorm", "LayerNormFP8", "RMSNorm", "RMSNormFP8", "SpectralNorm", "WeightNorm",
]

public.publish(globals(), __all__)
