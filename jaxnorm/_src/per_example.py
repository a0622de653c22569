"""The base of the layers that normalize each example by its own statistics (LayerNorm, RMSNorm, GroupNorm,
InstanceNorm, UnitNormalization): ``init`` and ``apply`` written once.

Such a layer has no moving statistics (its state is ``{}``) and computes the same thing in training and in
inference. A subclass supplies two hooks and nothing else of the contract:

- :meth:`PerExample._param_axes`: the axes of ``x`` that ``scale`` and ``bias`` span (checked against ``x``,
  with the layer's own errors, e.g. GroupNorm's groups that do not divide the channels);
- :meth:`PerExample._normalize`: the normalize call, given checked inputs.

Inputs are checked once, here (``x``, ``params``, ``state``, ``mask``; the hyperparameters at construction):
``_normalize`` calls the unchecked entry points of :mod:`jaxnorm._src.normalize` (``normalize_layer``,
``normalize_groups``, ``normalize_by_moments``, ``normalize_unit``), not the public ops that would check again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax

from jaxnorm._src import layer, validation
from jaxnorm._src.layer import Layer, Tree


class PerExample(Layer):
    """A per-example normalization spec: ``init(key, x) -> (params, {})`` and
    ``apply(params, state, x, *, training=None, mask=None) -> (y, {})``. See the subclasses for the formulas."""

    if TYPE_CHECKING:  # a field of every subclass

        @property
        def axis(self) -> Any: ...

    def _checked_mask(self, mask: Any, x: jax.Array) -> jax.Array | None:
        """``apply``'s ``mask`` checked under its own name (Keras's rules, :func:`validation.broadcast_mask`) and
        broadcast to ``x``'s shape, before it reaches an op that would call it ``where``."""
        return None if mask is None else validation.broadcast_mask(mask, x.shape, "mask")

    def _per_example_inputs(self, params: Any, state: Any, x: Any, training: Any) -> tuple[Any, ...]:
        """The checks ``apply`` starts with (params over ``axis``, empty state): ``(x, axes, params in use)``."""
        name = type(self).__name__
        layer.check_training(training, name, required=False)
        x = validation.check_float_array(x, "x")
        axes = self._param_axes(x.shape)
        pshape = tuple(x.shape[a] for a in axes)
        fix = (
            f"They must match the input's sizes along axis={self.axis!r} (shape {pshape}); re-create them "
            "with `init` for this input and spec."
        )
        params = self._params_in_use(self._check_params(params, pshape, fix))
        validation.check_tree(state, {}, "state", f"{name}'s state is always {{}}.")
        return x, axes, params

    @staticmethod
    def _expanded(params: dict[str, jax.Array], ndim: int, axes: tuple[int, ...]) -> tuple[Any, Any]:
        """``(scale, bias)`` from checked ``params``, each None (absent) or reshaped to rank ``ndim``."""
        scale, bias = (
            None if params.get(k) is None else validation.expand_to_rank(params[k], ndim, axes)
            for k in ("scale", "bias")
        )
        return scale, bias

    def _param_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape[a] for a in self._param_axes(shape))

    def _param_axes(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The axes of an input of this ``shape`` that the params span (``axis``, canonicalized and checked)."""
        return validation.canonicalize_axes(self.axis, len(shape), "axis")

    def _normalize(
        self, params: dict[str, jax.Array], x: jax.Array, axes: tuple[int, ...], mask: jax.Array | None
    ) -> jax.Array:
        """``y`` for checked inputs: ``params`` those in use, ``axes`` :meth:`_param_axes` of ``x.shape``, ``mask``
        None or of ``x``'s shape."""
        raise NotImplementedError

    def init(self, key: Any, x: Any) -> tuple[Tree, Tree]:
        """Creates ``(params, {})`` for inputs like ``x`` (an array or a ``jax.ShapeDtypeStruct``).

        Args:
          key: a ``jax.random`` key for random initializers (None uses ``jax.random.key(0)``).
          x: example input, floating, of any rank the layer accepts (GroupNorm and InstanceNorm: >= 2, batch
            first).

        Returns:
          ``params``: ``{'scale', 'bias'}`` (those the layer creates) of ``param_dtype``, each of shape
          ``[x.shape[a] for a in axes]`` over the axes the params span (``axis``; GroupNorm: the channel axis);
          ``state``: ``{}``.

        Raises:
          TypeError: ``x`` is not floating.
          ValueError: ``axis`` is out of range or repeated for ``x`` (InstanceNorm: or includes the batch axis 0);
            GroupNorm's groups do not divide the channels.
        """
        shape, _ = layer.init_input(x)
        return self._init_params(key, self._param_shape(shape)), {}

    def apply(
        self, params: Tree, state: Tree, x: jax.Array, *, training: bool | None = None, mask: jax.Array | None = None
    ) -> tuple[jax.Array, Tree]:
        """Normalizes each example of ``x`` by its own statistics.

        Args:
          params: the params from :meth:`init` (``{}`` for a layer without any).
          state: ``{}`` from :meth:`init`.
          x: floating array whose sizes along the params' axes match ``params``.
          training: optional Python bool, ignored (the layer behaves the same in both modes); accepted so that
            generic code can drive every layer the same way.
          mask: optional mask, Keras's rules (boolean, or integer/float read as nonzero = kept; broadcastable to
            ``x``, or of rank ``x.ndim - 1``, expanded on the last axis first when that broadcasts); only kept
            positions enter each example's statistics (values elsewhere may be NaN).

        Returns:
          ``(y, {})``: ``y`` of ``x``'s shape and dtype, and the (empty) state.

        Raises:
          TypeError: ``x`` not floating, ``mask`` complex, a string or not an array, ``training`` not a bool.
          ValueError: ``axis`` out of range; ``params`` keys or shapes not matching ``x``; non-empty ``state``;
            the layer's own constraints (GroupNorm: groups dividing the channels).
        """
        x, axes, params = self._per_example_inputs(params, state, x, training)
        mask = self._checked_mask(mask, x)
        return self._normalize(params, x, axes, mask), {}
