r"""Adaptive normalization (AdaLN; DiT): a LayerNorm or RMSNorm without params of its own, modulated per example by
a conditioning ``shift`` and ``scale``: op and spec.

.. math::
    y = \text{norm}(x) \cdot (1 + \text{scale}) + \text{shift}

``shift`` and ``scale`` (computed from the conditioning by the caller's own layer, e.g. DiT's
``adaLN_modulation`` MLP) broadcast to ``x``; an ``(N, C)`` pair with an ``x`` of rank 3 or more is one row per
example, broadcast over the tokens (DiT's ``unsqueeze(1)``). The modulation runs in the normalization's output
pass, in at least float32 (one rounding, to ``x``'s dtype), and its backward in the normalization's hand-written
one. AdaLN-Zero's gate on the residual branch is :func:`jaxnorm.add_layer_norm`'s ``gate``.

Source: Peebles & Xie 2023, "Scalable Diffusion Models with Transformers" (DiT: ``modulate(norm(x), shift,
scale)``, ``LayerNorm(elementwise_affine=False, eps=1e-6)``); Perez et al. 2018 (FiLM). Keras and Flax have no
such layer: the spec writes jaxnorm configs only.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jaxnorm._src import layer, normalize, validation
from jaxnorm._src.layer import Statistics, Tree
from jaxnorm._src.per_example import PerExample


def modulation(value: Any, x: jax.Array, name: str) -> jax.Array:
    """``shift`` or ``scale`` as an array of x's rank that broadcasts to it: an ``(N, C)`` array for an ``x`` of
    rank >= 3 is expanded over the tokens (``(N, 1, ..., 1, C)``); otherwise it must broadcast as it is."""
    v = validation.check_float_array(value, name)
    if v.ndim == 2 and x.ndim >= 3 and v.shape == (x.shape[0], x.shape[-1]):
        v = v.reshape((x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],))
    try:
        ok = v.ndim <= x.ndim and jnp.broadcast_shapes(v.shape, x.shape) == x.shape
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"`{name}` of shape {v.shape} does not broadcast to x's shape {x.shape}. Give one row per example, "
            f"(N, C) = ({x.shape[0]}, {x.shape[-1]}), or a shape that broadcasts to x's."
        )
    return v.reshape((1,) * (x.ndim - v.ndim) + v.shape)


def modulate(
    x: jax.Array, shift: jax.Array, scale: jax.Array, axes: tuple[int, ...], epsilon: float, mask: Any,
    axis_name: Any, *, rms: bool, extreme_range: bool,
) -> jax.Array:
    """``norm(x) * (1 + scale) + shift`` for checked inputs (``shift``/``scale`` of x's rank): the normalization's
    own scale and bias are ``1 + scale`` and ``shift``, so the modulation is its output pass, in float32."""
    dtype = validation.stats_dtype(x.dtype)
    gain = scale.astype(dtype) + 1.0
    return normalize.normalize_layer(
        x, gain, shift.astype(dtype), axes, epsilon, mask, axis_name, center=not rms, extreme_range=extreme_range,
    )


def adaptive_norm(
    x: jax.Array,
    shift: jax.Array,
    scale: jax.Array,
    *,
    rms: bool = False,
    axis: validation.Axes = -1,
    epsilon: float = 1e-6,
    where: Any = None,
    axis_name: Any = None,
    extreme_range: bool = False,
) -> jax.Array:
    r"""Adaptive LayerNorm (or RMSNorm) modulation: ``norm(x) * (1 + scale) + shift``, DiT's ``modulate``.

    .. math::
        y = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} (1 + \text{scale}) + \text{shift} \qquad
        (\text{rms=True: } y = \tfrac{x}{\sqrt{\langle x^2\rangle + \epsilon}} (1 + \text{scale}) + \text{shift})

    Args:
      x: floating array, e.g. ``(N, tokens, C)``.
      shift, scale: floating arrays, one row per example ``(N, C)`` (broadcast over the tokens), or any shape that
        broadcasts to ``x``; produced by the caller's conditioning layer.
      rms: False (default): LayerNorm statistics (mean and variance); True: RMSNorm's (mean of squares).
      axis: int or sequence of ints, the normalized axes (-1).
      epsilon: non-negative float (1e-6, DiT's).
      where: optional mask of the statistics, Keras's rules as :func:`jaxnorm.layer_norm`.
      axis_name, extreme_range: as :func:`jaxnorm.layer_norm`'s.

    Returns:
      ``y`` of ``x``'s shape and dtype (statistics and modulation in at least float32).

    Raises:
      TypeError: ``x``, ``shift`` or ``scale`` not floating; ``rms`` not a bool.
      ValueError: ``shift``/``scale`` not broadcasting to ``x``; an axis out of range; ``epsilon`` < 0.

    Source: Peebles & Xie 2023 (DiT), ``modulate(x, shift, scale) = x * (1 + scale.unsqueeze(1)) +
    shift.unsqueeze(1)`` after ``LayerNorm(elementwise_affine=False)``.

    Example:
      >>> import jax.numpy as jnp, jaxnorm
      >>> x = jnp.array([[[1.0, 3.0], [10.0, 30.0]]])  # one example, two tokens
      >>> shift, scale = jnp.array([[0.5, 0.5]]), jnp.array([[1.0, 0.0]])  # per example
      >>> print(jaxnorm.adaptive_norm(x, shift, scale, epsilon=0.0))
      [[[-1.5  1.5]
        [-1.5  1.5]]]
    """
    x = validation.check_float_array(x, "x")
    validation.check_epsilon(epsilon)
    axes = validation.canonicalize_axes(axis, x.ndim, "axis")
    shift, scale = modulation(shift, x, "shift"), modulation(scale, x, "scale")
    mask = None if where is None else validation.broadcast_mask(where, x.shape, "where")
    return modulate(x, shift, scale, axes, epsilon, mask, axis_name, rms=validation.check_bool(rms, "rms"),
                    extreme_range=validation.check_bool(extreme_range, "extreme_range"))


@dataclasses.dataclass(frozen=True, eq=True, repr=False)
class AdaptiveNorm(Statistics, PerExample):
    r"""Adaptive normalization (AdaLN, DiT) as a pure spec: no params, ``apply(params, state, x, *, shift, scale)``.

    .. math::
        y = \text{norm}(x) \cdot (1 + \text{scale}) + \text{shift}

    Attributes:
      axis: int or sequence of ints, the normalized axes (-1).
      epsilon: float >= 0 (1e-6, DiT's).
      rms: keyword-only; False: LayerNorm statistics (DiT), True: RMSNorm's.
      extreme_range: as :class:`LayerNorm`'s.
      trainable: Keras's flag, kept for generic code (there are no params to freeze).
      dtype_policy: kept for symmetry with the other specs (Keras has no such layer).

    ``init(key, x) -> ({}, {})``: the modulation comes from the caller's conditioning layer, so the norm has no
    params (DiT's ``elementwise_affine=False``). ``apply(params, state, x, *, shift, scale, training=None,
    mask=None) -> (y, {})``, ``shift``/``scale`` keyword-only and required (:func:`jaxnorm.adaptive_norm`).

    Keras has no such layer: :meth:`to_keras_config` raises; ``get_config``/``from_config`` round-trip.

    Source: Peebles & Xie 2023, "Scalable Diffusion Models with Transformers".

    Example:
      >>> import jax, jax.numpy as jnp, jaxnorm
      >>> ada = jaxnorm.AdaptiveNorm(epsilon=0.0)
      >>> x = jnp.array([[[1.0, 3.0]]])
      >>> params, state = ada.init(jax.random.key(0), x)
      >>> print(params, ada.apply(params, state, x, shift=jnp.zeros((1, 2)), scale=jnp.ones((1, 2)))[0])
      {} [[[-2.  2.]]]
    """

    axis: int | tuple[int, ...] = -1
    epsilon: float = 1e-6
    _: dataclasses.KW_ONLY
    rms: bool = False
    trainable: bool = True  # Keras's flag, kept for the generic code that reads it (no params to freeze)

    KERAS: ClassVar[Any] = None  # Keras has no adaptive normalization

    def __post_init__(self) -> None:
        object.__setattr__(self, "axis", validation.check_axes_static(self.axis, "axis"))
        validation.check_bool(self.rms, "rms")
        self._post_init_common()

    def _param_entries(self, pshape: tuple[int, ...]) -> dict[str, layer.ParamEntry]:
        return {}

    def apply(
        self, params: Tree, state: Tree, x: jax.Array, *, shift: jax.Array | None = None,
        scale: jax.Array | None = None, training: bool | None = None, mask: jax.Array | None = None,
    ) -> tuple[jax.Array, Tree]:
        """Normalizes ``x`` and modulates it by ``shift`` and ``scale``.

        Args:
          params: ``{}`` from :meth:`init`.
          state: ``{}``.
          x: floating array.
          shift, scale: keyword-only, required: per-example ``(N, C)`` or broadcastable to ``x``.
          training: optional bool, ignored.
          mask: optional mask of the statistics, Keras's rules.

        Returns:
          ``(y, {})``, ``y`` of ``x``'s shape and dtype.

        Raises:
          TypeError: ``x``, ``shift`` or ``scale`` not floating or missing; ``training`` not a bool.
          ValueError: ``shift``/``scale`` not broadcasting to ``x``; non-empty ``params`` or ``state``.
        """
        x, axes, _ = self._per_example_inputs(params, state, x, training)
        for name, value in (("shift", shift), ("scale", scale)):
            if value is None:
                raise TypeError(f"`{name}` must be given: AdaptiveNorm.apply(params, state, x, shift=..., scale=...), "
                                "one row per example from the conditioning.")
        mask = self._checked_mask(mask, x)
        y = modulate(x, modulation(shift, x, "shift"), modulation(scale, x, "scale"), axes, self.epsilon, mask, None,
                     rms=self.rms, extreme_range=self.extreme_range)
        return y, {}
