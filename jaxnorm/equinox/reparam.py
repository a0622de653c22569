"""The weight reparametrizations of :mod:`jaxnorm.equinox` (``SpectralNorm``, ``WeightNorm``)."""

from __future__ import annotations

import functools as ft
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from equinox import field
from equinox.nn import State, StatefulLayer, StateIndex
from jax import lax

from jaxnorm._src import reparam, validation
from jaxnorm.equinox.normalization import _fit, _inference


_Layer = TypeVar("_Layer")

# jaxnorm's epsilon (jaxnorm.weight_normalize's default) for WeightNorm, which equinox gives no epsilon:
# sqrt(sum v**2 + 1e-12) is equinox's |v| to float32 rounding for any slice of norm above 1e-3, and 0, not NaN,
# for an all-zero slice.
_WEIGHT_NORM_EPS = 1e-12


# ---------------------------------------------------------------------------------------------- reparametrizations


def _matrix(weight: jax.Array, weight_name: str) -> jax.Array:
    """equinox's matrix view of a weight, ``(shape[0], -1)``; ``ValueError`` for a weight of rank < 2."""
    if weight.ndim < 2:
        raise ValueError(
            f"`weight` must be at least two-dimensional: the layer's {weight_name!r} has shape "
            f"{weight.shape}. Spectral normalization divides a matrix (or a kernel viewed as one) by its "
            "largest singular value; wrap the layer's kernel, not a bias."
        )
    return jnp.reshape(weight, (weight.shape[0], -1))


def _weight_of(layer: Any, weight_name: Any, owner: str) -> jax.Array:
    if not isinstance(weight_name, str):
        raise TypeError(f"`weight_name` must be a str naming an array field of the layer, got {weight_name!r}.")
    weight = getattr(layer, weight_name, None)
    if not isinstance(weight, jax.Array) or not jnp.issubdtype(weight.dtype, jnp.floating):
        raise ValueError(
            f"{owner}: `weight_name`={weight_name!r} must name a floating array field of the wrapped "
            f"{type(layer).__name__}, got {type(weight).__name__}. Pass the weight's field name, e.g. 'weight' "
            "for eqx.nn.Linear or eqx.nn.Conv2d."
        )
    return weight


class SpectralNorm(StatefulLayer, Generic[_Layer]):
    r"""Spectral normalization of a wrapped layer's weight, a drop-in for ``equinox.nn.SpectralNorm``.

    On each call ``layer``'s ``weight_name`` array :math:`W` (viewed as ``(shape[0], -1)``) is replaced by
    :math:`W / \sigma`, :math:`\sigma = u^\top W v \approx \sigma_{\max}(W)`, and ``layer(x)`` is returned. In
    training ``num_power_iterations`` steps ``u <- W v / |W v|``, ``v <- W^T u / |W^T u|`` (on a
    stop-gradient ``W``) update the stored ``(u, v)`` first; in inference the stored pair is used as it is.
    Gradients flow through :math:`W` in :math:`\sigma` (not through ``u``, ``v``), as in equinox.

    Args:
      layer: the layer to wrap (e.g. ``eqx.nn.Linear``, ``eqx.nn.Conv2d``).
      weight_name: the name of its floating array field of rank >= 2 to normalize.
      num_power_iterations: int >= 0, power-iteration steps per training call (1).
      eps: float >= 0 added to the squared norms in the power iteration (1e-12).
      inference: the default of ``__call__``'s ``inference`` (False).
      key: keyword-only ``jax.random`` key: ``u``, ``v`` drawn ``N(0, 1)`` (equinox's split and draws), then
        15 power-iteration steps, as equinox.

    State: ``uv_index``: ``(u, v)`` of shapes ``(W.shape[0],)``, ``(prod(W.shape[1:]),)`` in ``W``'s dtype.

    Call ``__call__(x, state, *, key=None, inference=None)``: ``x`` for ``layer``; ``inference`` None (the
    layer's) or a Python bool.

    Returns:
      ``(layer(x) with the normalized weight, state)``.

    Raises:
      ValueError: ``weight_name`` not naming a floating array of the layer, or one of rank < 2;
        ``num_power_iterations`` < 0; ``eps`` < 0; a stored ``u``/``v`` not matching the weight.
      TypeError: ``inference`` not a concrete bool; non-int ``num_power_iterations``.

    Source: ``equinox.nn.SpectralNorm`` (equinox 0.13): arguments, fields, state and order of the iteration;
    the arithmetic of :func:`jaxnorm.spectral_normalize` (at least float32; ``sigma = 0`` leaves ``W`` as it is,
    where equinox divides by 0); Miyato et al. 2018, "Spectral Normalization for Generative Adversarial
    Networks".

    Example:
      >>> import equinox as eqx, jax, jax.numpy as jnp
      >>> from jaxnorm import equinox as jeqx
      >>> linear = eqx.nn.Linear(2, 3, key=jax.random.key(0))
      >>> linear = eqx.tree_at(lambda m: m.weight, linear, jnp.array([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
      >>> sn, state = eqx.nn.make_with_state(jeqx.SpectralNorm)(linear, "weight", key=jax.random.key(1))
      >>> [a.shape for a in state.get(sn.uv_index)]
      [(3,), (2,)]
      >>> y, state = eqx.filter_jit(sn)(jnp.array([1.0, 1.0]), state)
      >>> print((y - linear.bias).round(4))  # W / 3 applied to [1, 1]
      [1.     0.3333 0.    ]
    """

    layer: _Layer
    weight_name: str = field(static=True)
    uv_index: StateIndex
    num_power_iterations: int = field(static=True)
    eps: float = field(static=True)
    inference: bool

    def __init__(
        self,
        layer: _Layer,
        weight_name: str,
        num_power_iterations: int = 1,
        eps: float = 1e-12,
        inference: bool = False,
        *,
        key: Any,
    ):
        validation.check_int(num_power_iterations, "num_power_iterations", 0)
        validation.check_epsilon(eps, "eps")
        mat = _matrix(_weight_of(layer, weight_name, "SpectralNorm"), weight_name)
        self.layer = layer
        self.weight_name = weight_name
        self.num_power_iterations = num_power_iterations
        self.eps = eps
        self.inference = inference
        u_len, v_len = mat.shape
        ukey, vkey = jr.split(key)
        u0 = jr.normal(ukey, (u_len,), dtype=mat.dtype)
        v0 = jr.normal(vkey, (v_len,), dtype=mat.dtype)
        self.uv_index = StateIndex(reparam.power_iteration_uv(mat, u0, v0, 15, eps))

    def __call__(
        self, x: jax.Array, state: State, *, key: Any = None, inference: bool | None = None
    ) -> tuple[jax.Array, State]:
        """Calls ``layer`` on ``x`` with its weight spectrally normalized; see the class docstring."""
        del key
        inference = _inference(inference, self.inference)
        weight = _weight_of(self.layer, self.weight_name, "SpectralNorm")
        mat = _matrix(weight, self.weight_name)
        fix = "Pass the state made for this layer (eqx.nn.make_with_state), or re-create the SpectralNorm."
        u, v = state.get(self.uv_index)
        u = _fit(u, mat.shape[:1], "SpectralNorm state[uv_index][0] (u)", fix)
        v = _fit(v, mat.shape[1:], "SpectralNorm state[uv_index][1] (v)", fix)
        if not inference:
            u, v = reparam.power_iteration_uv(lax.stop_gradient(mat), u, v, self.num_power_iterations, self.eps)
            state = state.set(self.uv_index, (u, v))
        w_bar = jnp.reshape(reparam.divide_by_sigma(mat, u, v), weight.shape)
        layer = eqx.tree_at(lambda lyr: getattr(lyr, self.weight_name), self.layer, w_bar)
        return layer(x), state


def _norm_except_axis(v: jax.Array, norm: Callable[[jax.Array], jax.Array], axis: int | None) -> jax.Array:
    """equinox's helper: ``norm`` of ``v`` over every axis but ``axis`` (all axes when None), keepdims."""
    if axis is None:
        return norm(v)
    return jax.vmap(norm, in_axes=axis, out_axes=axis)(v)


class WeightNorm(eqx.Module, Generic[_Layer]):
    r"""Weight normalization of a wrapped layer's weight, a drop-in for ``equinox.nn.WeightNorm``.

    On each call ``layer``'s ``weight_name`` array ``v`` is replaced by

    .. math::
        w = g \, \frac{v}{\sqrt{\sum v^2 + \epsilon}}

    with the sum over every axis but ``axis`` (all axes when None) and :math:`\epsilon = 10^{-12}`
    (:func:`jaxnorm.weight_normalize`, in at least float32), and ``layer(x)`` is returned. ``g`` is a
    parameter, initialized to the norms of ``v``.

    Args:
      layer: the layer to wrap (e.g. ``eqx.nn.Linear``, ``eqx.nn.Conv2d``).
      weight_name: the name of its floating array field to normalize ('weight').
      axis: int or None, the axis that keeps a norm each (0: each output unit of an ``eqx.nn.Linear`` or
        ``Conv`` weight); None: one norm over the whole array.

    Fields: ``layer``, ``g`` (``v``'s rank, size 1 except along ``axis``, ``v``'s dtype), ``weight_name``,
    ``axis``, ``_norm``, exactly equinox's.

    Call ``__call__(x, *, key=None)``: ``x`` for ``layer``.

    Returns:
      ``layer(x)`` computed with the normalized weight, in ``result_type(v, g)``.

    Raises:
      ValueError: ``weight_name`` not naming a floating array of the layer; ``axis`` out of range for it;
        ``g`` not holding one value per slice.

    Source: ``equinox.nn.WeightNorm`` (equinox 0.13). Differences: the epsilon (equinox divides by ``|v|``;
    the same to float32 rounding for any slice of norm above 1e-3, and an all-zero slice gives 0 instead of
    NaN), and float32 arithmetic for half-precision weights. Salimans & Kingma 2016, "Weight Normalization".

    Example:
      >>> import equinox as eqx, jax, jax.numpy as jnp
      >>> from jaxnorm import equinox as jeqx
      >>> linear = eqx.nn.Linear(2, 2, use_bias=False, key=jax.random.key(0))
      >>> wn = jeqx.WeightNorm(eqx.tree_at(lambda m: m.weight, linear, jnp.array([[3.0, 4.0], [0.0, 2.0]])))
      >>> print(wn.g[:, 0])
      [5. 2.]
      >>> wn = eqx.tree_at(lambda m: m.g, wn, jnp.ones((2, 1)))  # unit-norm rows
      >>> print(eqx.filter_jit(wn)(jnp.array([1.0, 1.0])))
      [1.4 1. ]
    """

    layer: _Layer
    g: jax.Array
    weight_name: str = field(static=True)
    axis: int | None = field(static=True)
    _norm: Callable[[jax.Array], jax.Array]

    def __init__(self, layer: _Layer, weight_name: str = "weight", axis: int | None = 0):
        weight = _weight_of(layer, weight_name, "WeightNorm")
        if axis is not None:
            validation.canonicalize_axes(axis, weight.ndim, "axis")
        self.layer = layer
        self.weight_name = weight_name
        self.axis = axis
        # equinox's field, its value: g's initial norms come from it (the call uses jaxnorm.weight_normalize).
        self._norm = ft.partial(_norm_except_axis, norm=ft.partial(jnp.linalg.norm, keepdims=True), axis=axis)
        self.g = self._norm(weight)

    def __call__(self, x: jax.Array, *, key: Any = None) -> jax.Array:
        """Calls ``layer`` on ``x`` with its weight normalized; see the class docstring."""
        del key
        v = _weight_of(self.layer, self.weight_name, "WeightNorm")
        feature, _ = reparam.weight_norm_axes(v.ndim, None if self.axis is None else (self.axis,))
        fix = "Create the WeightNorm for this layer (g holds one norm per slice along `axis`)."
        g = validation.fit_variable(self.g, tuple(v.shape[a] for a in feature), "WeightNorm.g", fix)
        w = reparam.weight_normalize(
            v, g, feature_axes=feature or None, epsilon=_WEIGHT_NORM_EPS, dtype=validation.result_dtype(v, g)
        )
        layer = eqx.tree_at(lambda lyr: getattr(lyr, self.weight_name), self.layer, w)
        return layer(x)
