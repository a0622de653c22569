"""Drop-in replacements for equinox's normalization layers (``equinox.nn.BatchNorm``, ``LayerNorm``, ``RMSNorm``,
``GroupNorm``) with jaxnorm's statistics, and of its weight reparametrizations (``SpectralNorm``, ``WeightNorm``).

Usage: swap ``eqx.nn.BatchNorm(...)`` for ``jaxnorm.equinox.BatchNorm(...)`` (``from jaxnorm import equinox as
jeqx``), and likewise for the others. The constructors and ``__call__`` take equinox's arguments with equinox's
defaults (the four normalizations also a keyword-only ``extreme_range``, default False, kept in a static field
after equinox's: no leaf); the modules have equinox's fields (names, order, static or not) and
``eqx.nn.StateIndex`` layout, so ``eqx.nn.make_with_state``, ``eqx.nn.inference_mode``, ``eqx.nn.Sequential``,
``eqx.tree_serialise_leaves`` checkpoints and ``eqx.nn.State`` objects move freely between a model built with
equinox's classes and one built with these (a ``State`` made for one is read by the other: the state keys are the
same key paths).

The modules hold the parameters and state and follow equinox's rules (its momentum convention, its ``mode='ema'``
first-batch initialization, its ``mode='batch'`` read-out, its dtype results); the statistics, the normalization
and the moving-average update come from jaxnorm's core. The intended differences from equinox:

- ``BatchNorm`` statistics are computed in at least float32 by jaxnorm's kernel, also for bfloat16/float16 input
  (equinox reduces in the input dtype, and its ``mode='ema'`` raises ``TypeError`` for bfloat16 input with
  float32 state); across ``axis_name`` the per-example ``(count, mean, M2)`` are merged exactly,
  count-weighted (equinox averages per-example means, which is the same without masks);
- a keyword-only ``mask`` on the four normalizations' ``__call__`` (per example under ``jax.vmap``): only True
  positions enter the statistics, so padded examples (an all-False mask) drop out of ``BatchNorm``'s batch
  statistics exactly;
- ``BatchNorm``'s running statistics are updated per feature where the batch's statistics are finite and
  counted (:mod:`jaxnorm._src.moving`): one NaN channel keeps its running mean and variance, and never poisons
  the others; ``mode='ema'``'s first-time flag and ``mode='batch'``'s counter advance only with a batch that
  updates some feature;
- ``SpectralNorm``/``WeightNorm`` iterate and normalize in at least float32 with jaxnorm's arithmetic
  (:func:`jaxnorm.spectral_normalize`, :func:`jaxnorm.weight_normalize`): ``eps`` is added to squared norms,
  a zero weight stays zero where equinox gives NaN;
- bad input raises ``ValueError``/``TypeError`` naming the argument (an unbound ``axis_name`` is a
  ``ValueError``; equinox raises ``NameError``).

``DyT`` and ``Derf`` (normalization-free point-wise layers that equinox does not have) take the place of
``LayerNorm`` with its conventions: :class:`jaxnorm.DyT` and :class:`jaxnorm.Derf` on one example.

Importing :mod:`jaxnorm` does not import equinox; this module needs it (``pip install equinox``).
"""

from jaxnorm._src import public
from jaxnorm.equinox.normalization import BatchNorm, GroupNorm, LayerNorm, RMSNorm
from jaxnorm.equinox.adaptive import AdaptiveNorm
from jaxnorm.equinox.gated import GatedRMSNorm
from jaxnorm.equinox.pointwise import Derf, DyT
from jaxnorm.equinox.quantized import LayerNormFP8, RMSNormFP8
from jaxnorm.equinox.reparam import SpectralNorm, WeightNorm
from jaxnorm.equinox.residual import AddLayerNorm, AddRMSNorm

__all__ = [
    "AdaptiveNorm", "AddLayerNorm", "AddRMSNorm", "BatchNorm", "Derf", "DyT", "GatedRMSNorm", "GroupNorm",
    "LayerNorm", "LayerNormFP8", "RMSNorm", "RMSNormFP8", "SpectralNorm", "WeightNorm",
]

public.publish(globals(), __all__)
