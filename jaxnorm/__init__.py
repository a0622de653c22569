"""jaxnorm: normalization layers for JAX as pure functions over explicit parameter and state pytrees.

Public API:

- functional ops: :func:`moments`, :func:`batch_normalization`, :func:`normalize_batch_in_training`,
  :func:`layer_norm`, :func:`rms_norm`, :func:`group_norm`, :func:`instance_norm`,
  :func:`unit_norm`;
- layer specs with pure ``init``/``apply``: :class:`BatchNorm`, :class:`LayerNorm`, :class:`RMSNorm`,
  :class:`GroupNorm`, :class:`InstanceNorm`, :class:`UnitNormalization`, and the preprocessing layer
  :class:`Normalization` (``adapt`` to a data set);
- residual add & norm, the pre-norm Transformer's step: the ops :func:`add_layer_norm` and :func:`add_rms_norm`
  (``(y, new_residual)``), the specs :class:`AddLayerNorm` and :class:`AddRMSNorm`;
- fp8 output (TransformerEngine's): :func:`layer_norm_fp8` and :func:`rms_norm_fp8` return the quantized output
  and its amax; the specs :class:`LayerNormFP8` and :class:`RMSNormFP8`;
- adaptive normalization (AdaLN, DiT): the op :func:`adaptive_norm` and the spec :class:`AdaptiveNorm`;
- gated RMSNorm (Mamba-2, Qwen3-Next): the op :func:`gated_rms_norm` and the spec :class:`GatedRMSNorm`;
- normalization-free point-wise layers for Transformers: the ops :func:`dyt` and :func:`derf`, the specs
  :class:`DyT` and :class:`Derf`;
- weight reparametrizations (they normalize a kernel, not an activation): the ops :func:`spectral_normalize`
  and :func:`weight_normalize`, and the specs :class:`SpectralNorm` (explicit power-iteration state) and
  :class:`WeightNorm`;
- train-step helpers over a model's params: :func:`regularization_loss`, :func:`apply_constraints`,
  :func:`constraints_transform` (Optax), :func:`trainable_mask`, :func:`decay_mask`;
- converters to and from Keras and PyTorch layers in :mod:`jaxnorm.interop`;
- Flax drop-ins in :mod:`jaxnorm.linen` and :mod:`jaxnorm.nnx` (need ``flax``), equinox drop-ins in
  :mod:`jaxnorm.equinox` (need ``equinox``).
"""

from jaxnorm._src.adaptive import AdaptiveNorm, adaptive_norm
from jaxnorm._src.batch_norm import BatchNorm
from jaxnorm._src.gated import GatedRMSNorm, gated_rms_norm
from jaxnorm._src.group_norm import GroupNorm, InstanceNorm
from jaxnorm._src.layer_norm import LayerNorm
from jaxnorm._src.normalization import Normalization
from jaxnorm._src.ops import (
    batch_normalization,
    group_norm,
    instance_norm,
    layer_norm,
    moments,
    normalize_batch_in_training,
    rms_norm,
    unit_norm,
)
from jaxnorm._src.pointwise import Derf, DyT, derf, dyt
from jaxnorm._src.residual import AddLayerNorm, AddRMSNorm, add_layer_norm, add_rms_norm
from jaxnorm._src.quantized import LayerNormFP8, RMSNormFP8, layer_norm_fp8, rms_norm_fp8
from jaxnorm._src.reparam import SpectralNorm, WeightNorm, spectral_normalize, weight_normalize
from jaxnorm._src.rms_norm import RMSNorm
from jaxnorm._src.training import (
    apply_constraints,
    constraints_transform,
    decay_mask,
    regularization_loss,
    trainable_mask,
)
from jaxnorm._src.unit_norm import UnitNormalization

__version__ = "0.1.0"

__all__ = [
    "AdaptiveNorm",
    "AddLayerNorm",
    "AddRMSNorm",
    "BatchNorm",
    "Derf",
    "DyT",
    "GatedRMSNorm",
    "GroupNorm",
    "InstanceNorm",
    "LayerNorm",
    "LayerNormFP8",
    "Normalization",
    "RMSNorm",
    "RMSNormFP8",
    "SpectralNorm",
    "UnitNormalization",
    "WeightNorm",
    "adaptive_norm",
    "add_layer_norm",
    "add_rms_norm",
    "apply_constraints",
    "batch_normalization",
    "constraints_transform",
    "decay_mask",
    "derf",
    "dyt",
    "gated_rms_norm",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "layer_norm_fp8",
    "moments",
    "normalize_batch_in_training",
    "regularization_loss",
    "rms_norm",
    "rms_norm_fp8",
    "spectral_normalize",
    "trainable_mask",
    "unit_norm",
    "weight_normalize",
]
