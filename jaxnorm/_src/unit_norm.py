"""UnitNormalization as a pure init/apply spec with Keras semantics (no parameters, no state)."""

from __future__ import annotations

import dataclasses

import jax

from jaxnorm._src import keras_config, normalize, validation
from jaxnorm._src.layer import Statistics
from jaxnorm._src.per_example import PerExample


@dataclasses.dataclass(frozen=True, eq=True, repr=False)
class UnitNormalization(Statistics, PerExample):
    r"""Scales each example to unit L2 norm over ``axis``, as ``keras.layers.UnitNormalization``.

    .. math::
        y = \frac{x}{\sqrt{\max(\sum_{\text{axis}} x^2, \epsilon^2)}}

    No parameters and no state: ``init`` returns ``({}, {})``; training and inference compute the same thing.

    Attributes:
      axis: int or sequence of ints, the axes of the norm (default -1; Keras's ``axis``).
      epsilon: norms below it count as ``epsilon`` (1e-12, the value Keras uses), so zero examples stay zero.
      trainable: accepted for Keras configs (there is nothing to train).
      extreme_range: False (default): the statistics are exact while deviations from the mean stay below
        ``2**50`` and the variance above about ``2**-100`` (or hidden by ``epsilon``); True: exact at any finite
        float32 magnitude, for one more pass over ``x`` (:func:`jaxnorm.moments`; not written to Keras configs,
        whose layers compute the default).
      dtype_policy: the Keras dtype policy of the layer this spec was converted from: None ('float32', the
        default), 'mixed_float16' or 'mixed_bfloat16'; written back as Keras's ``dtype`` by
        :meth:`to_keras_config` and :func:`jaxnorm.interop.to_keras`. It changes no number here: the output has
        the input's dtype and the statistics are float32, which is what the policy computes on half input.

    ``init(key, x) -> ({}, {})``; ``apply(params, state, x, *, training=None, mask=None) -> (y, state)``, with
    ``mask`` (broadcastable to ``x``) selecting the positions that enter the norm.

    Source: ``keras.layers.UnitNormalization``.

    Example:
      >>> import jax.numpy as jnp, jaxnorm
      >>> unit = jaxnorm.UnitNormalization()
      >>> params, state = unit.init(None, jnp.ones((1, 2)))
      >>> print(unit.apply(params, state, jnp.array([[3.0, 4.0]]))[0])
      [[0.6 0.8]]
    """

    axis: int | tuple[int, ...] = -1
    epsilon: float = 1e-12
    trainable: bool = True

    KERAS = keras_config.KerasRecord(
        "UnitNormalization",
        renamed={"axis": "axis", "trainable": "trainable"},
        equivalent={"epsilon": (lambda v: v == 1e-12, "epsilon=1e-12")},
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "axis", validation.check_axes_static(self.axis, "axis"))
        self._post_init_common()

    def _normalize(
        self, params: dict[str, jax.Array], x: jax.Array, axes: tuple[int, ...], mask: jax.Array | None
    ) -> jax.Array:
        return normalize.normalize_unit(x, axes, self.epsilon, mask, extreme_range=self.extreme_range)
