"""UnitNormalization as a pure init/apply spec with Keras semantics (no parameters, no state)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from jaxnorm._src import layer, ops, validation
from jaxnorm._src.layer import Layer


@dataclasses.dataclass(frozen=True, eq=True)
class UnitNormalization(Layer):
    r"""Scales each example to unit L2 norm over ``axis``, as ``keras.layers.UnitNormalization``.

    .. math::
        y = \frac{x}{\sqrt{\max(\sum_{\text{axis}} x^2, \epsilon^2)}}

    No parameters and no state: ``init`` returns ``({}, {})``; training and inference compute the same thing.

    Attributes:
      axis: int or sequence of ints, the axes of the norm (default -1; Keras's ``axis``).
      epsilon: norms below it count as ``epsilon`` (1e-12, the value Keras uses), so zero examples stay zero.
      trainable: accepted for Keras configs (there is nothing to train).
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
    dtype_policy: Any = None

    _REGULARIZER_FIELDS = {}
    _CONSTRAINT_FIELDS = {}
    _KERAS_CLASS = "UnitNormalization"
    _KERAS_RENAMES = {"axis": "axis", "trainable": "trainable"}
    _KERAS_EQUIVALENT = {"epsilon": (lambda v: v == 1e-12, "epsilon=1e-12")}

    def __post_init__(self):
        if isinstance(self.axis, list):
            object.__setattr__(self, "axis", tuple(self.axis))
        object.__setattr__(self, "axis", validation.check_axes_static(self.axis, "axis"))
        self._post_init_common()

    @property
    def _has_scale(self) -> bool:
        return False

    @property
    def _has_bias(self) -> bool:
        return False

    def init(self, key: Any, x: Any) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
        """Returns ``({}, {})`` after checking ``x`` (an array or ``jax.ShapeDtypeStruct``) against ``axis``.

        Raises:
          TypeError: ``x`` is not floating.
          ValueError: ``axis`` is out of range or repeated for ``x``.
        """
        del key
        shape, _ = layer.init_input(x)
        validation.canonicalize_axes(self.axis, len(shape), "axis")
        return {}, {}

    def apply(
        self,
        params: dict[str, jax.Array],
        state: dict[str, jax.Array],
        x: jax.Array,
        *,
        training: bool | None = None,
        mask: jax.Array | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Scales each example of ``x`` to unit L2 norm over ``axis``.

        Args:
          params, state: ``{}`` and ``{}`` from :meth:`init`.
          x: floating array.
          training: optional Python bool, ignored.
          mask: optional mask, Keras's rules (boolean, or integer/float read as nonzero = kept; broadcastable to
            ``x``, or of rank ``x.ndim - 1``, expanded on the last axis first when that broadcasts); only kept
            positions enter the norm.

        Returns:
          ``(y, {})`` with ``y`` of ``x``'s shape and dtype.

        Raises:
          TypeError: ``x`` not floating, ``mask`` complex, a string or not an array, ``training`` not a bool.
          ValueError: ``axis`` out of range; non-empty ``params`` or ``state``.
        """
        x, axes, _ = self._per_example_inputs(params, state, x, training)
        mask = self._checked_mask(mask, x)
        return ops.unit_norm(x, axis=axes, epsilon=self.epsilon, where=mask), {}
