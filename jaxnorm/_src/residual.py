r"""Residual add & norm, the pre-norm Transformer's step: ops and specs.

.. math::
    h = \text{gate} \cdot \text{dropout}(x) + \text{residual}, \qquad y = \text{norm}(h)

(``gate``: AdaLN-Zero's, optional) returned as ``(y, h)``: ``h`` is the new residual stream, ``y`` its
normalization (LayerNorm or RMSNorm, every option of :func:`jaxnorm.layer_norm` / :func:`jaxnorm.rms_norm`). The sum is taken in at least float32 and rounded
once to the stream's dtype (``result_type(x, residual)``, or float32 with ``residual_in_float32=True``, so a
bfloat16 model keeps a float32 residual stream); ``y`` normalizes ``h`` as stored, so it equals ``norm(h)``
exactly, and has ``x``'s dtype. Dropout, when asked for, scales the kept values of ``x`` by ``1 / (1 - rate)``
before the add, with an explicit PRNG key (as ``flax.linen.Dropout`` draws: ``bernoulli(key, 1 - rate)``).

Backward: the normalization's own (:mod:`fused`, a hand-written backward that saves only ``h`` and float32
statistics); the cotangent of ``h`` (the residual stream's) is added to its ``dh`` in the same elementwise pass,
and ``dx = dh`` (through the dropout mask), ``dresidual = dh``.

Source: the fused residual-add kernels of flash-attn (``layer_norm_fn(x, weight, bias, residual=...,
prenorm=True, residual_in_fp32=...)``), Liger-Kernel (``LigerFusedAddRMSNorm``) and vLLM
(``fused_add_rms_norm``); Keras and Flax have no such layer, so the specs write jaxnorm configs only.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jaxnorm._src import adaptive, layer, ops, validation
from jaxnorm._src.layer import Tree
from jaxnorm._src.layer_norm import LayerNorm
from jaxnorm._src.rms_norm import RMSNorm


def check_options(residual_in_float32: Any, dropout_rate: Any) -> tuple[bool, float]:
    """``(residual_in_float32, dropout_rate)`` checked: a bool, and a static float in [0, 1)."""
    validation.check_bool(residual_in_float32, "residual_in_float32")
    if isinstance(dropout_rate, bool) or not isinstance(dropout_rate, int | float):
        raise TypeError(
            f"`dropout_rate` must be a static float in [0, 1), got {dropout_rate!r} "
            f"({type(dropout_rate).__name__})."
        )
    if not 0.0 <= float(dropout_rate) < 1.0:
        raise ValueError(
            f"`dropout_rate` must be in [0, 1), got {dropout_rate!r}: the probability of dropping each value of x "
            "(0.0, the default, drops nothing)."
        )
    return bool(residual_in_float32), float(dropout_rate)


def residual_sum(
    x: jax.Array, residual: Any, residual_in_float32: bool, dropout_rate: float, dropout_key: Any,
    gate: Any = None,
) -> jax.Array:
    """The new residual stream ``gate * dropout(x) + residual`` (``residual`` None: without it; ``gate`` None: 1),
    summed in at least float32 and rounded once to ``result_type(x, residual)`` (float32 or wider with
    ``residual_in_float32``). ``x`` is a checked floating array; ``dropout_key`` is used (and required) only where
    ``dropout_rate > 0``; ``gate`` (AdaLN-Zero's) is one row per example or broadcasts to ``x``.

    Raises:
      TypeError: ``residual`` or ``gate`` not a floating array; ``dropout_key`` not a PRNG key.
      ValueError: ``residual``'s shape is not ``x``'s, ``gate``'s does not broadcast; ``dropout_rate > 0``
        without a ``dropout_key``.
    """
    if residual is not None:
        residual = validation.check_float_array(residual, "residual")
        if residual.shape != x.shape:
            raise ValueError(
                f"`residual` must have x's shape {x.shape}, got {residual.shape}: it is the residual stream "
                "that x is added to (pass None for the first layer, whose stream starts at x)."
            )
    stream = x.dtype if residual is None else validation.result_dtype(x, residual)
    if residual_in_float32:
        stream = validation.stats_dtype(stream)
    compute = validation.stats_dtype(stream)
    h = x.astype(compute)
    if dropout_rate > 0:
        if dropout_key is None:
            raise ValueError(
                f"dropout_rate={dropout_rate} needs a `dropout_key` (a fresh one each step, e.g. "
                "jax.random.fold_in(key, step)); or set dropout_rate=0.0."
            )
        validation.check_key(dropout_key, "dropout_key", "jax.random.key(0), split or folded in each step")
        keep = jax.random.bernoulli(dropout_key, 1.0 - dropout_rate, x.shape)
        h = jnp.where(keep, h / (1.0 - dropout_rate), 0.0)
    if gate is not None:
        h = h * adaptive.modulation(gate, x, "gate").astype(compute)
    if residual is not None:
        h = h + residual.astype(compute)
    return h.astype(stream)


def add_layer_norm(
    x: jax.Array,
    residual: jax.Array | None,
    scale: jax.Array | None = None,
    bias: jax.Array | None = None,
    *,
    axis: validation.Axes = -1,
    epsilon: float = 1e-3,
    residual_in_float32: bool = False,
    dropout_rate: float = 0.0,
    dropout_key: Any = None,
    gate: Any = None,
    where: Any = None,
    axis_name: Any = None,
    implementation: str = "auto",
    extreme_range: bool = False,
    scale_offset: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
    r"""Residual add and layer normalization in one step: ``(y, h)`` with ``h = dropout(x) + residual`` and
    ``y = layer_norm(h)``.

    .. math::
        h = \text{dropout}(x) + r, \qquad
        y = \frac{h - \mu}{\sqrt{\sigma^2 + \epsilon}} \cdot (\text{scale} + \text{scale\_offset}) + \text{bias}

    Args:
      x: floating array, the sublayer's output (attention or MLP).
      residual: None (the first layer: ``h = dropout(x)``) or a floating array of ``x``'s shape, the residual
        stream.
      scale, bias, axis, epsilon: as :func:`jaxnorm.layer_norm` (over ``h``).
      residual_in_float32: static bool; True keeps the stream ``h`` in float32 (or wider) whatever the dtypes of
        ``x`` and ``residual`` (flash-attn's ``residual_in_fp32``); False (default) returns it in
        ``result_type(x, residual)``. The sum is taken in at least float32 and rounded once either way.
      dropout_rate: static float in [0, 1): each value of ``x`` is dropped with this probability and the kept
        ones scaled by ``1 / (1 - dropout_rate)`` before the add (0.0: no dropout, no key needed).
      dropout_key: a JAX PRNG key, required where ``dropout_rate > 0`` (a fresh one each step).
      gate: None, or AdaLN-Zero's gate of the residual branch, ``h = residual + gate * dropout(x)``: one row per
        example ``(N, C)`` (broadcast over the tokens) or a shape that broadcasts to ``x`` (DiT's ``gate_msa``).
      where, axis_name, implementation, extreme_range, scale_offset: as :func:`jaxnorm.layer_norm`'s, over
        ``h`` (``where`` masks the statistics; ``axis_name`` merges them across the devices that split ``axis``).

    Returns:
      ``(y, h)``: ``y`` of ``x``'s shape and dtype (statistics of ``h`` in at least float32); ``h`` the new
      residual stream, of ``x``'s shape in the stream's dtype.

    Raises:
      TypeError: ``x``, ``residual``, ``scale`` or ``bias`` not floating; ``dropout_key`` not a key; an option
        of the wrong type (as :func:`jaxnorm.layer_norm`).
      ValueError: ``residual`` not of ``x``'s shape; ``dropout_rate`` outside [0, 1) or without a key; the
        errors of :func:`jaxnorm.layer_norm`.

    Source: flash-attn's ``layer_norm_fn(..., residual, prenorm=True, residual_in_fp32)``; Ba, Kiros & Hinton
    2016 for the normalization.

    Example:
      >>> import jax.numpy as jnp, jaxnorm
      >>> y, h = jaxnorm.add_layer_norm(jnp.array([[1.0, 2.0]]), jnp.array([[0.0, 2.0]]), epsilon=0.0)
      >>> print(h, y)
      [[1. 4.]] [[-1.  1.]]
    """
    x = validation.check_float_array(x, "x")
    residual_in_float32, dropout_rate = check_options(residual_in_float32, dropout_rate)
    h = residual_sum(x, residual, residual_in_float32, dropout_rate, dropout_key, gate)
    y = ops.layer_norm(h, scale, bias, axis=axis, epsilon=epsilon, where=where, axis_name=axis_name,
                       implementation=implementation, extreme_range=extreme_range, scale_offset=scale_offset)
    return y.astype(x.dtype), h


def add_rms_norm(
    x: jax.Array,
    residual: jax.Array | None,
    scale: jax.Array | None = None,
    *,
    axis: validation.Axes = -1,
    epsilon: float = 1e-6,
    residual_in_float32: bool = False,
    dropout_rate: float = 0.0,
    dropout_key: Any = None,
    gate: Any = None,
    where: Any = None,
    axis_name: Any = None,
    implementation: str = "auto",
    extreme_range: bool = False,
    scale_offset: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
    r"""Residual add and RMS normalization in one step: ``(y, h)`` with ``h = dropout(x) + residual`` and
    ``y = rms_norm(h)``.

    .. math::
        h = \text{dropout}(x) + r, \qquad
        y = \frac{h}{\sqrt{\langle h^2\rangle + \epsilon}} \cdot (\text{scale} + \text{scale\_offset})

    Args:
      x: floating array, the sublayer's output.
      residual: None or a floating array of ``x``'s shape, the residual stream.
      scale, axis, epsilon: as :func:`jaxnorm.rms_norm` (over ``h``).
      residual_in_float32, dropout_rate, dropout_key, gate: as :func:`add_layer_norm`.
      where, axis_name, implementation, extreme_range, scale_offset: as :func:`jaxnorm.rms_norm`'s, over ``h``.

    Returns:
      ``(y, h)``: ``y`` of ``x``'s shape and dtype; ``h`` the new residual stream, in the stream's dtype.

    Raises:
      TypeError, ValueError: as :func:`add_layer_norm`, with :func:`jaxnorm.rms_norm`'s own.

    Source: Liger-Kernel's ``LigerFusedAddRMSNorm.forward(hidden, residual) -> (normed, residual)``, vLLM's
    ``fused_add_rms_norm``; Zhang & Sennrich 2019 for the normalization.

    Example:
      >>> import jax.numpy as jnp, jaxnorm
      >>> y, h = jaxnorm.add_rms_norm(jnp.array([[1.0, 5.0]]), jnp.array([[0.0, 2.0]]), epsilon=0.0)
      >>> print(h, y)  # RMS of h is 5
      [[1. 7.]] [[0.2 1.4]]
    """
    x = validation.check_float_array(x, "x")
    residual_in_float32, dropout_rate = check_options(residual_in_float32, dropout_rate)
    h = residual_sum(x, residual, residual_in_float32, dropout_rate, dropout_key, gate)
    y = ops.rms_norm(h, scale, axis=axis, epsilon=epsilon, where=where, axis_name=axis_name,
                     implementation=implementation, extreme_range=extreme_range, scale_offset=scale_offset)
    return y.astype(x.dtype), h


@dataclasses.dataclass(frozen=True, eq=True, repr=False, kw_only=True)
class _Residual(layer.Layer):
    """The residual options and ``apply`` of :class:`AddLayerNorm` and :class:`AddRMSNorm`: the sum of
    :func:`residual_sum`, then the normalization's own ``_normalize`` on it."""

    residual_in_float32: bool = False
    dropout_rate: float = 0.0

    KERAS: ClassVar[Any] = None  # Keras has no add & norm layer

    def _check_residual_options(self) -> None:
        residual_in_float32, dropout_rate = check_options(self.residual_in_float32, self.dropout_rate)
        object.__setattr__(self, "residual_in_float32", residual_in_float32)
        object.__setattr__(self, "dropout_rate", dropout_rate)

    def apply(
        self, params: Tree, state: Tree, x: jax.Array, *, residual: jax.Array | None = None,
        training: bool | None = None, mask: jax.Array | None = None, dropout_key: Any = None, gate: Any = None,
    ) -> tuple[tuple[jax.Array, jax.Array], Tree]:
        """Adds ``x`` to the residual stream and normalizes the sum.

        Args:
          params: the params from :meth:`init` (those of the normalization: ``scale`` and ``bias``).
          state: ``{}`` from :meth:`init`.
          x: floating array, the sublayer's output, whose sizes along ``axis`` match ``params``.
          residual: keyword-only; None (the first layer) or the residual stream, of ``x``'s shape.
          training: optional Python bool; True applies dropout (where ``dropout_rate > 0``), as Keras's
            ``Dropout(training=True)``; None or False apply none and need no key.
          mask: optional mask of the statistics, as the normalization's (Keras's rules, over ``h``).
          dropout_key: a PRNG key, required where ``training`` is True and ``dropout_rate > 0``.
          gate: None, or AdaLN-Zero's gate on ``x``, as :func:`add_layer_norm`'s.

        Returns:
          ``((y, h), {})``: ``y`` of ``x``'s shape and dtype, ``h`` the new residual stream (see the module
          docstring for its dtype), and the (empty) state.

        Raises:
          TypeError: ``x`` or ``residual`` not floating; ``training`` not a bool; ``dropout_key`` not a key.
          ValueError: ``residual`` not of ``x``'s shape; dropout without a key; ``params``/``state`` not
            matching ``x``.
        """
        x, axes, params = self._per_example_inputs(params, state, x, training)  # type: ignore[attr-defined]
        rate = self.dropout_rate if training else 0.0
        h = residual_sum(x, residual, self.residual_in_float32, rate, dropout_key, gate)
        mask = self._checked_mask(mask, h)  # type: ignore[attr-defined]
        y = self._normalize(params, h, axes, mask)  # type: ignore[attr-defined]
        return (y.astype(x.dtype), h), {}


@dataclasses.dataclass(frozen=True, eq=True, repr=False)
class AddLayerNorm(_Residual, LayerNorm):  # type: ignore[misc]  # apply returns ((y, h), state)
    r"""Residual add and layer normalization as a pure spec: ``init`` and ``apply``, ``(y, h)`` from
    ``(x, residual)``.

    .. math::
        h = \text{dropout}(x) + \text{residual}, \qquad y = \text{LayerNorm}(h)

    Attributes:
      axis, epsilon, use_scale, use_bias, scale_init, bias_init, param_dtype, the regularizers and
        constraints, trainable, extreme_range, implementation, scale_offset: as :class:`LayerNorm`'s (the
        same params tree: a LayerNorm's checkpoint loads).
      residual_in_float32: keep the residual stream in float32 (or wider), as :func:`add_layer_norm`.
      dropout_rate: float in [0, 1), the dropout on ``x`` before the add in training (0.0).

    ``init(key, x) -> (params, {})`` as :class:`LayerNorm`'s. ``apply(params, state, x, *, residual=None,
    training=None, mask=None, dropout_key=None) -> ((y, h), {})`` (:meth:`_Residual.apply`).

    Keras has no such layer: :meth:`to_keras_config` raises; ``get_config``/``from_config`` round-trip.

    Source: flash-attn's fused residual ``layer_norm_fn``; Ba, Kiros & Hinton 2016.

    Example:
      >>> import jax, jax.numpy as jnp, jaxnorm
      >>> ln = jaxnorm.AddLayerNorm(epsilon=0.0)
      >>> x, residual = jnp.array([[1.0, 2.0]]), jnp.array([[0.0, 2.0]])
      >>> params, state = ln.init(jax.random.key(0), x)
      >>> (y, h), state = ln.apply(params, state, x, residual=residual)
      >>> print(y, h)
      [[-1.  1.]] [[1. 4.]]
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_residual_options()


@dataclasses.dataclass(frozen=True, eq=True, repr=False)
class AddRMSNorm(_Residual, RMSNorm):  # type: ignore[misc]  # apply returns ((y, h), state)
    r"""Residual add and RMS normalization as a pure spec: ``init`` and ``apply``, ``(y, h)`` from
    ``(x, residual)``.

    .. math::
        h = \text{dropout}(x) + \text{residual}, \qquad y = \text{RMSNorm}(h)

    Attributes:
      axis, epsilon, use_scale, scale_init, param_dtype, scale_regularizer, scale_constraint, trainable,
        extreme_range, implementation, scale_offset: as :class:`RMSNorm`'s (the same params tree).
      residual_in_float32, dropout_rate: as :class:`AddLayerNorm`'s.

    ``init(key, x) -> (params, {})`` as :class:`RMSNorm`'s. ``apply(params, state, x, *, residual=None,
    training=None, mask=None, dropout_key=None) -> ((y, h), {})``.

    Keras has no such layer: :meth:`to_keras_config` raises; ``get_config``/``from_config`` round-trip.

    Source: Liger-Kernel's ``LigerFusedAddRMSNorm``, vLLM's ``fused_add_rms_norm``; Zhang & Sennrich 2019.

    Example:
      >>> import jax, jax.numpy as jnp, jaxnorm
      >>> rms = jaxnorm.AddRMSNorm(epsilon=0.0, residual_in_float32=True)
      >>> x = jnp.array([[1.0, 5.0]], jnp.bfloat16)
      >>> params, state = rms.init(jax.random.key(0), x)
      >>> (y, h), _ = rms.apply(params, state, x, residual=jnp.array([[0.0, 2.0]], jnp.bfloat16))
      >>> print(y.dtype, h.dtype, h)
      bfloat16 float32 [[1. 7.]]
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_residual_options()
