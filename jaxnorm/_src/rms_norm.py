"""RMSNorm as a pure init/apply spec with Keras ``RMSNormalization`` semantics and Flax ``RMSNorm``'s tree."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from jaxnorm._src import initializers, keras_config, normalize, validation
from jaxnorm._src.layer import Scaled, Statistics
from jaxnorm._src.per_example import PerExample


def _is_ones(init: Any) -> bool:
    try:
        value = initializers.serialize(init, "scale_init")
    except TypeError:
        return False
    return value == "ones" or (isinstance(value, dict) and value.get("class_name") == "Ones")


@dataclasses.dataclass(frozen=True, eq=True, repr=False)
class RMSNorm(Scaled, Statistics, PerExample):
    r"""Root-mean-square normalization (Zhang & Sennrich 2019) as a pure spec: ``init`` and ``apply``.

    Each example is divided by its root mean square over ``axis`` (no centering, no bias) and scaled:

    .. math::
        y = \frac{x}{\sqrt{\langle x^2\rangle + \epsilon}}\,(\text{scale} + \text{scale\_offset})

    RMSNorm has no moving statistics: its state is ``{}`` and training and inference compute the same thing.

    The fields after ``epsilon`` are keyword-only.

    Attributes:
      axis: int or sequence of ints, the normalized axes (default -1; Keras's ``axis``, Flax's
        ``reduction_axes``).
      epsilon: float >= 0 added to the mean of squares (1e-6, Keras's and Flax's default; PyTorch's
        ``eps=None`` means ``finfo(dtype).eps``: give that value explicitly).
      use_scale: learn a multiplier ``scale`` (Flax ``use_scale``; Keras always has one).
      scale_init: initializer of ``scale`` (default 'ones'): a Keras name or config dict, or a JAX initializer.
      param_dtype: dtype of ``scale`` (default float32).
      scale_regularizer, scale_constraint: as :class:`LayerNorm`'s.
      trainable: False freezes ``scale`` (no gradient, regularization or constraint), as Keras does.
      extreme_range: False (default): the statistics are exact while deviations from the mean stay below
        ``2**50`` and the variance above about ``2**-100`` (or hidden by ``epsilon``); True: exact at any finite
        float32 magnitude, for one more pass over ``x`` (:func:`jaxnorm.moments`; not written to Keras configs,
        whose layers compute the default).
      implementation: ``'auto'`` (default), ``'xla'`` or ``'pallas'``, as in :func:`jaxnorm.rms_norm`.
      scale_offset: float added to ``scale`` before it multiplies (default 0.0): 1.0 for Gemma's
        zero-centred ``x / rms * (1 + scale)``, as in :func:`jaxnorm.rms_norm`; pair it with
        ``scale_init='zeros'`` to start at the identity. Keras has no such key: only 0.0 writes a Keras config.
      dtype_policy: the Keras dtype policy of the layer this spec was converted from: None ('float32', the
        default), 'mixed_float16' or 'mixed_bfloat16'; written back as Keras's ``dtype`` by
        :meth:`to_keras_config` and :func:`jaxnorm.interop.to_keras`. It changes no number here: the output has
        the input's dtype and the statistics are float32, which is what the policy computes on half input.

    ``init(key, x) -> (params, {})`` with ``params = {'scale'}`` of shape ``[x.shape[a] for a in sorted(axis)]``,
    the tree of ``flax.linen.RMSNorm``'s ``variables['params']`` and Keras's ``scale`` weight.
    ``apply(params, state, x, *, training=None, mask=None) -> (y, state)``.

    Source: Zhang & Sennrich 2019, "Root Mean Square Layer Normalization"; semantics and defaults of
    ``keras.layers.RMSNormalization``, tree of ``flax.linen.RMSNorm``, formula of ``torch.nn.RMSNorm``.

    Example:
      >>> import jax, jax.numpy as jnp, jaxnorm
      >>> rms = jaxnorm.RMSNorm(epsilon=0.0)
      >>> x = jnp.array([[1.0, 7.0], [-2.0, 2.0]])
      >>> params, state = rms.init(jax.random.key(0), x)
      >>> print(rms.apply(params, state, x)[0])
      [[ 0.2  1.4]
       [-1.   1. ]]
    """

    axis: int | tuple[int, ...] = -1
    epsilon: float = 1e-6
    _: dataclasses.KW_ONLY
    implementation: str = "auto"
    scale_offset: float = 0.0

    KERAS = keras_config.KerasRecord(
        "RMSNormalization",
        renamed={"axis": "axis", "epsilon": "epsilon", "trainable": "trainable"},
        equivalent={
            "use_scale": (lambda v: v is True, "a scale, use_scale=True"),
            "scale_init": (_is_ones, "a scale initialized to ones, scale_init='ones'"),
            "scale_regularizer": (lambda v: v is None, "no regularizer"),
            "scale_constraint": (lambda v: v is None, "no constraint"),
            "scale_offset": keras_config.NO_SCALE_OFFSET,
        },
        params={"scale": "scale"},
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "axis", validation.check_axes_static(self.axis, "axis"))
        normalize.check_implementation(self.implementation)
        object.__setattr__(self, "scale_offset", validation.check_scale_offset(self.scale_offset, self.use_scale))
        self._post_init_common()

    def _normalize(
        self, params: dict[str, jax.Array], x: jax.Array, axes: tuple[int, ...], mask: jax.Array | None
    ) -> jax.Array:
        scale, _ = self._expanded(params, x.ndim, axes)
        return normalize.normalize_layer(x, scale, None, axes, self.epsilon, mask, None, self.implementation,
                                         center=False, extreme_range=self.extreme_range,
                                         scale_offset=self.scale_offset)
