"""Converters between jaxnorm and Keras 3 / PyTorch normalization layers (need keras or torch installed).

- :func:`from_keras` / :func:`to_keras`: ``keras.layers.BatchNormalization``, ``LayerNormalization``,
  ``GroupNormalization`` (also for :class:`jaxnorm.InstanceNorm`, as ``groups=-1``), ``RMSNormalization`` and
  ``UnitNormalization`` (config keys, nested initializer/regularizer/constraint configs, renorm statistics).
- :func:`from_torch` / :func:`to_torch` / :func:`from_torch_state_dict`: ``torch.nn.BatchNorm1d/2d/3d``,
  ``LayerNorm``, ``GroupNorm``, ``InstanceNorm1d/2d/3d`` and ``RMSNorm`` (momentum convention, unbiased running
  variance, channel axis, ``num_batches_tracked``).

Round trips are exact, and a converted layer computes the peer's outputs and moving statistics.

Example:
  >>> import torch, jax.numpy as jnp, numpy as np
  >>> from jaxnorm import interop
  >>> spec, params, state = interop.from_torch(torch.nn.BatchNorm2d(3))
  >>> spec.momentum, spec.momentum_convention, spec.moving_var_estimator, spec.axis
  (0.1, 'torch', 'unbiased', 1)
  >>> x = np.random.default_rng(0).normal(size=(4, 3, 5, 5)).astype(np.float32)
  >>> y, state = spec.apply(params, state, jnp.asarray(x), training=True)
  >>> module = interop.to_torch(spec, params, state, input_shape=x.shape)
  >>> int(module.num_batches_tracked)
  1
"""

from jaxnorm._src.interop import from_keras, from_torch, from_torch_state_dict, to_keras, to_torch

__all__ = ["from_keras", "from_torch", "from_torch_state_dict", "to_keras", "to_torch"]
