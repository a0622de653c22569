"""Weight reparametrizations: spectral normalization and weight normalization, as pure ops and specs.

Unlike the other layers, these normalize a *weight* (a Dense or Conv kernel), not an activation. The functional
ops :func:`spectral_normalize` and :func:`weight_normalize` hold the math, written as Flax's
``flax.linen.SpectralNorm`` / ``WeightNorm`` compute it (same reshapes, same ``_l2_normalize``, same
``stop_gradient``), so that the Flax drop-ins in :mod:`jaxnorm.linen` and :mod:`jaxnorm.nnx` give Flax's values.
The specs :class:`SpectralNorm` and :class:`WeightNorm` wrap them as ``init``/``apply`` over explicit state:
``init(key, w) -> (params, state)``, ``apply(params, state, w, *, training) -> (w_normalized, new_state)``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxnorm._src import initializers, layer, validation
from jaxnorm._src.layer import Layer, Tree

# ------------------------------------------------------------------------------------------------ checks


def _l2_normalize(x: jax.Array, axis: Any = None, eps: float = 1e-12) -> jax.Array:
    """Flax's helper: ``x / sqrt(sum(x**2 over axis) + eps)`` (``axis=None``: the whole array)."""
    return x * lax.rsqrt((x * x).sum(axis=axis, keepdims=True) + eps)



def _check_out_dtype(dtype: Any, name: str = "dtype") -> Any:
    """None, or a real floating dtype (returned as a ``numpy.dtype``)."""
    if dtype is None:
        return None
    try:
        dt = jnp.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or not jnp.issubdtype(dt, jnp.floating):
        raise TypeError(
            f"`{name}` must be None or a floating-point dtype (e.g. 'float32', 'bfloat16'), got {dtype!r}."
        )
    return dt


def _weight_input(w: Any, name: str = "w") -> tuple[tuple[int, ...], Any]:
    """Shape and dtype of a weight given as an array or a ``jax.ShapeDtypeStruct`` (for ``init``)."""
    if isinstance(w, jax.ShapeDtypeStruct):
        validation.check_float_dtype(w.dtype, name)
        return tuple(w.shape), w.dtype
    arr = validation.check_float_array(w, name)
    return arr.shape, arr.dtype


@functools.partial(jax.jit, static_argnums=(3, 4))  # one dispatch (the constructor's 15 steps run outside any jit)
def power_iteration_uv(
    mat: jax.Array, u: jax.Array, v: jax.Array, n_steps: int, eps: float
) -> tuple[jax.Array, jax.Array]:
    """equinox's power iteration (``u <- W v / |W v|``, then ``v <- W^T u / |W^T u|``, ``n_steps`` times, for
    ``W = mat`` of shape ``(len(u), len(v))``) in jaxnorm's arithmetic: :func:`jaxnorm.spectral_normalize`'s
    normalization step (``eps`` added to the squared norm) in at least float32, returned in u's and v's dtypes.
    (spectral_normalize itself keeps only one of the two vectors; equinox's state keeps both: the equinox
    drop-in calls this.)"""
    dtype = validation.stats_dtype(validation.result_dtype(mat, u, v))
    w, uf, vf = mat.astype(dtype), u.astype(dtype), v.astype(dtype)
    for _ in range(n_steps):
        uf = _l2_normalize(w @ vf, eps=eps)
        vf = _l2_normalize(w.T @ uf, eps=eps)
    return uf.astype(u.dtype), vf.astype(v.dtype)


def divide_by_sigma(mat: jax.Array, u: jax.Array, v: jax.Array) -> jax.Array:
    """``mat / sigma`` with ``sigma = u^T mat v`` (u, v held constant, as :func:`jaxnorm.spectral_normalize`;
    ``mat`` unchanged where sigma is 0), computed in at least float32, returned in ``mat``'s dtype."""
    dtype = validation.stats_dtype(validation.result_dtype(mat, u, v))
    w = mat.astype(dtype)
    sigma = lax.stop_gradient(u).astype(dtype) @ w @ lax.stop_gradient(v).astype(dtype)
    return (w / jnp.where(sigma != 0, sigma, 1)).astype(mat.dtype)


def spectral_u_shape(shape: tuple[int, ...], error_on_non_matrix: bool, lead: str = "") -> tuple[int, int]:
    """The shape ``(1, shape[-1])`` of the power-iteration vector ``u`` of a weight of ``shape``. ``lead``
    starts the rank > 2 error (the Flax drop-ins put Flax's own wording there).

    Raises:
      ValueError: rank < 2 (no matrix), or rank > 2 with ``error_on_non_matrix``.
    """
    shape = tuple(shape)
    if len(shape) < 2:
        raise ValueError(
            f"`w` must be a matrix or a higher-rank kernel (rank >= 2) to be spectrally normalized, got shape "
            f"{shape} (rank {len(shape)}). A vector or scalar (e.g. a bias) has no spectral norm to divide by: "
            "Flax's SpectralNorm leaves such weights unchanged, so do not normalize them."
        )
    if len(shape) > 2 and error_on_non_matrix:
        raise ValueError(
            f"{lead}`w` has shape {shape} (rank {len(shape)}) but error_on_non_matrix=True accepts only matrices. "
            f"Pass error_on_non_matrix=False to flatten it to ({int(np.prod(shape[:-1]))}, {shape[-1]}) "
            "(all axes but the last), as Flax does, or reshape it to a matrix yourself."
        )
    return (1, shape[-1])


def weight_norm_axes(ndim: int, feature_axes: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(feature_axes, reduction_axes)`` of a rank-``ndim`` weight, non-negative and sorted, Flax's rule.

    ``feature_axes=None`` (or ``()``) means no feature axis: one norm over the whole weight.
    """
    if feature_axes is None or (isinstance(feature_axes, tuple | list) and len(feature_axes) == 0):
        return (), tuple(range(ndim))
    axes = validation.canonicalize_axes(feature_axes, ndim, "feature_axes")
    return axes, validation.complement_axes(axes, ndim)


# ------------------------------------------------------------------------------------------------ ops


def _flax_power_iteration(mat: jax.Array, u: jax.Array, n_steps: int, eps: float) -> tuple[jax.Array, jax.Array]:
    """Flax's ``n_steps`` power-iteration steps from ``u`` (``(1, n)``): ``(u, v)``, held constant in the gradient."""
    for _ in range(n_steps):
        v = _l2_normalize(jnp.matmul(u, mat.T), eps=eps)
        u = _l2_normalize(jnp.matmul(v, mat), eps=eps)
    return lax.stop_gradient(u), lax.stop_gradient(v)


def spectral_normalize(
    w: jax.Array,
    u: jax.Array,
    *,
    n_steps: int = 1,
    epsilon: float = 1e-12,
    error_on_non_matrix: bool = False,
    dtype: Any = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    r"""Spectral normalization of a weight: ``w`` divided by its largest singular value, by power iteration.

    ``w`` is viewed as the matrix :math:`W` of shape ``(prod(w.shape[:-1]), w.shape[-1])`` (a Dense kernel
    ``(in, out)`` as it is; a Conv kernel ``(kh, kw, in, out)`` as ``(kh * kw * in, out)``). Starting from
    ``u``, ``n_steps`` power-iteration steps

    .. math::
        v \leftarrow \frac{u W^\top}{\sqrt{\|u W^\top\|^2 + \epsilon}}, \qquad
        u \leftarrow \frac{v W}{\sqrt{\|v W\|^2 + \epsilon}}

    give :math:`\sigma = v W u^\top \approx \sigma_{\max}(W)` and :math:`\bar w = w / \sigma` (``w`` unchanged
    where :math:`\sigma = 0`). ``u`` and ``v`` are under ``lax.stop_gradient``, :math:`\sigma` is not: the
    gradient of :math:`\bar w` includes the :math:`-\bar w\,(v^\top u)/\sigma` term of the paper. Feeding the
    returned ``u`` back in on the next call (as the layers do with their state) lets one step per call track
    :math:`\sigma_{\max}` as ``w`` changes.

    Args:
      w: floating array of rank >= 2, the weight; its last axis is the output axis.
      u: floating array of shape ``(1, w.shape[-1])``, the current estimate of the top right singular vector
        (any scale; Flax initializes it from a normal distribution).
      n_steps: int >= 1, power-iteration steps (1, Flax's default).
      epsilon: float >= 0 added to the squared norms in the normalization of ``u`` and ``v`` (1e-12).
      error_on_non_matrix: bool; True raises for a ``w`` of rank > 2 instead of flattening it (Flax's flag).
      dtype: dtype of ``w_normalized``; None keeps ``w.dtype``.

    Returns:
      ``(w_normalized, new_u, sigma)``: ``w_normalized`` of ``w``'s shape and dtype ``dtype``; ``new_u`` of
      ``u``'s shape and ``sigma`` a scalar, both of dtype ``result_type(w, u)`` (Flax's). The iteration runs in
      ``promote_types(result_type(w, u), float32)``, which is Flax's arithmetic except when ``w`` and ``u`` are
      both half precision (Flax then iterates in half precision).

    Raises:
      TypeError: ``w`` or ``u`` not floating; ``n_steps`` not an int; ``error_on_non_matrix`` not a bool;
        ``dtype`` not a floating dtype.
      ValueError: ``w`` of rank < 2, or of rank > 2 with ``error_on_non_matrix=True``; ``u`` not of shape
        ``(1, w.shape[-1])``; ``n_steps`` < 1; ``epsilon`` < 0.

    Source: Miyato et al. 2018, "Spectral Normalization for Generative Adversarial Networks" (Algorithm 1);
    the arithmetic of ``flax.linen.SpectralNorm._spectral_normalize`` (Flax 0.12), which is also Keras's
    ``SpectralNormalization``.

    Example:
      >>> import jax.numpy as jnp, jaxnorm
      >>> w = jnp.array([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0]])  # singular values 3 and 1
      >>> w_bar, u, sigma = jaxnorm.spectral_normalize(w, jnp.array([[1.0, 1.0]]), n_steps=20)
      >>> print(round(float(sigma), 4))
      3.0
      >>> print(w_bar.round(4))
      [[1.     0.    ]
       [0.     0.3333]
       [0.     0.    ]]
    """
    w = validation.check_float_array(w, "w")
    u = validation.check_float_array(u, "u")
    n_steps = validation.check_int(n_steps, "n_steps", 1)
    validation.check_epsilon(epsilon)
    error_on_non_matrix = validation.check_bool(error_on_non_matrix, "error_on_non_matrix")
    out_dtype = _check_out_dtype(dtype) or w.dtype
    u_shape = spectral_u_shape(w.shape, error_on_non_matrix)
    if u.shape != u_shape:
        raise ValueError(
            f"`u` has shape {u.shape} but a weight of shape {w.shape} needs {u_shape}, (1, w.shape[-1]). "
            "Was it created for another weight? Re-create it (e.g. with the spec's `init`) for this weight."
        )
    state_dtype = validation.result_dtype(w, u)
    mat = w.reshape(-1, w.shape[-1]).astype(validation.stats_dtype(state_dtype))
    u0, v0 = _flax_power_iteration(mat, u.astype(mat.dtype), n_steps, epsilon)
    sigma = jnp.matmul(jnp.matmul(v0, mat), u0.T)[0, 0]
    w_bar = (mat / jnp.where(sigma != 0, sigma, 1)).reshape(w.shape)
    return w_bar.astype(out_dtype), u0.astype(state_dtype), sigma.astype(state_dtype)


def weight_normalize(
    w: jax.Array,
    scale: jax.Array | None = None,
    *,
    feature_axes: Any = -1,
    epsilon: float = 1e-12,
    dtype: Any = None,
) -> jax.Array:
    r"""Weight normalization: each feature's slice of ``w`` scaled to unit L2 norm, then by ``scale``.

    .. math::
        \bar w = \frac{w}{\sqrt{\sum_{\text{reduction axes}} w^2 + \epsilon}} \cdot \text{scale}

    with the sum over every axis of ``w`` except ``feature_axes``: for a Dense kernel ``(in, out)`` and the
    default ``feature_axes=-1``, each output unit's column gets norm ``|scale|``, Salimans & Kingma's
    :math:`w = g\,v/\|v\|` with ``v = w`` and ``g = scale``.

    Args:
      w: floating array, the weight (``v`` in the paper).
      scale: None (no scale, Flax's ``use_scale=False``) or a floating array of shape
        ``tuple(w.shape[a] for a in sorted(feature_axes))`` (``()`` with no feature axes), the paper's ``g``.
      feature_axes: int, sequence of ints, or None / ``()``: the axes that keep a norm each (-1, Flax's
        default). None: a single norm over the whole weight (torch's ``dim=None``).
      epsilon: float >= 0 added to the squared norm (1e-12, Flax's).
      dtype: dtype of the result; None keeps ``w.dtype``.

    Returns:
      ``w_normalized`` of ``w``'s shape and dtype ``dtype``; the norm is computed in
      ``promote_types(w.dtype, float32)`` (Flax computes it in ``w.dtype``: the same for float32 weights).

    Raises:
      TypeError: ``w`` or ``scale`` not floating; ``dtype`` not a floating dtype; a feature axis not an int.
      ValueError: a feature axis out of range or repeated; ``scale`` of the wrong shape; ``epsilon`` < 0.

    Source: Salimans & Kingma 2016, "Weight Normalization: A Simple Reparameterization to Accelerate Training
    of Deep Neural Networks"; the arithmetic of ``flax.linen.WeightNorm._l2_normalize`` (Flax 0.12).
    ``torch.nn.utils.parametrizations.weight_norm(dim=0)`` on a ``(out, in)`` weight is this on ``w.T``.

    Example:
      >>> import jax.numpy as jnp, jaxnorm
      >>> w = jnp.array([[3.0, 0.0], [4.0, 1.0]])  # (in, out): column norms 5 and 1
      >>> print(jaxnorm.weight_normalize(w, jnp.array([2.0, 1.0])))
      [[1.2 0. ]
       [1.6 1. ]]
    """
    w = validation.check_float_array(w, "w")
    validation.check_epsilon(epsilon)
    out_dtype = _check_out_dtype(dtype) or w.dtype
    feature, reduction = weight_norm_axes(w.ndim, feature_axes)
    x = w.astype(validation.stats_dtype(w.dtype))
    y = _l2_normalize(x, axis=reduction, eps=epsilon)
    if scale is not None:
        scale = validation.check_float_array(scale, "scale")
        expected = tuple(w.shape[a] for a in feature)
        if scale.shape != expected:
            raise ValueError(
                f"`scale` has shape {scale.shape} but a weight of shape {w.shape} with feature_axes="
                f"{feature_axes!r} needs {expected}, the sizes of the feature axes {feature}. Create it for "
                "this weight (e.g. with WeightNorm's `init`) or pass the feature_axes it was created with."
            )
        y = y * validation.expand_to_rank(scale, w.ndim, feature).astype(y.dtype)
    return y.astype(out_dtype)


# ------------------------------------------------------------------------------------------------ specs


def _layer_only(cls_name: str) -> ValueError:
    return ValueError(
        f"jaxnorm.{cls_name} has no Keras layer config: Keras's normalizations of weights are wrappers around "
        "a layer (keras.layers.SpectralNormalization(layer, power_iterations)). Build that wrapper in Keras."
    )


def _canonical_dtype_field(spec: Any, name: str) -> None:
    dt = _check_out_dtype(getattr(spec, name), name)
    object.__setattr__(spec, name, None if dt is None else dt.name)


@dataclasses.dataclass(frozen=True, eq=True, repr=False)
class SpectralNorm(Layer):
    r"""Spectral normalization of a weight (Miyato et al. 2018) as a pure spec with explicit power-iteration state.

    Normalizes a weight ``w`` (not an activation) to spectral norm ~1: :math:`\bar w = w / \sigma`, with
    :math:`\sigma \approx \sigma_{\max}(W)` estimated by ``n_steps`` power-iteration steps from the stored
    vector ``u`` (see :func:`spectral_normalize` for the formula and the matrix view of a conv kernel).

    Attributes:
      n_steps: int >= 0, power-iteration steps per ``apply`` (1). As in Flax, 0 turns the normalization off
        (``w`` returned unchanged, empty state).
      epsilon: float >= 0 added to the squared norms of ``u`` and ``v`` (1e-12).
      error_on_non_matrix: False (Flax's default) flattens a kernel of rank > 2 to
        ``(prod(shape[:-1]), shape[-1])`` and returns a vector or scalar unchanged; True raises for any weight
        that is not a matrix.
      dtype: dtype of the normalized weight; None (default) keeps the weight's dtype (Flax's None would give
        ``result_type(w, u)``, float32 for a bfloat16 kernel).
      param_dtype: dtype of the state ``u`` and ``sigma`` ('float32').

    Flax's other arguments have no meaning for a spec that is handed one weight: ``layer_instance`` (the spec
    does not wrap a layer: call ``apply`` on the weight and use the result) and ``collection_name`` (the state
    is returned, to be stored wherever the caller keeps state). It has no parameters: no ``trainable`` field.

    ``init(key, w) -> ({}, {'u': (1, w.shape[-1]), 'sigma': ()})``; ``u`` is drawn ``N(0, 1)`` from ``key`` and
    ``sigma`` is 1, as ``flax.linen.SpectralNorm`` creates ``batch_stats['<path>/u']`` and ``['<path>/sigma']``.
    ``apply(params, state, w, *, training) -> (w_normalized, new_state)``: ``training=True`` (Flax's
    ``update_stats=True``) returns the iterated ``u`` and its ``sigma``; ``training=False`` iterates from the
    stored ``u`` all the same (the result is deterministic given the state) but returns the state unchanged,
    exactly as Flax: the stored ``sigma`` is a record of the last training step, never used to normalize.

    Source: Miyato, Kataoka, Koyama & Yoshida 2018, "Spectral Normalization for Generative Adversarial
    Networks"; ``flax.linen.SpectralNorm`` / ``flax.nnx.SpectralNorm`` (Flax 0.12).

    Example:
      >>> import jax, jax.numpy as jnp, jaxnorm
      >>> sn = jaxnorm.SpectralNorm()
      >>> w = jnp.array([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
      >>> params, state = sn.init(jax.random.key(0), w)
      >>> jax.tree.map(jnp.shape, state)
      {'sigma': (), 'u': (1, 2)}
      >>> for _ in range(20):  # one power-iteration step per training call
      ...     w_bar, state = sn.apply(params, state, w, training=True)
      >>> print(round(float(state['sigma']), 4))
      3.0
    """

    n_steps: int = 1
    epsilon: float = 1e-12
    error_on_non_matrix: bool = False
    dtype: Any = None
    param_dtype: Any = "float32"

    trainable: ClassVar[bool] = True  # no parameters; read by jaxnorm.trainable_mask

    def __post_init__(self) -> None:
        object.__setattr__(self, "n_steps", validation.check_int(self.n_steps, "n_steps", 0))
        validation.check_bool(self.error_on_non_matrix, "error_on_non_matrix")
        _canonical_dtype_field(self, "dtype")
        self._post_init_common()

    def to_keras_config(self) -> dict[str, Any]:
        """Not available: raises ``ValueError`` (Keras's ``SpectralNormalization`` wraps a layer)."""
        raise _layer_only(type(self).__name__)

    def _u_shape(self, shape: tuple[int, ...]) -> tuple[int, int] | None:
        """``u``'s shape for a weight of ``shape``, or None where Flax leaves the weight unchanged."""
        if self.n_steps < 1 or (len(shape) < 2 and not self.error_on_non_matrix):
            return None
        return spectral_u_shape(shape, self.error_on_non_matrix)

    def state_schema(self, x: Any) -> dict[str, layer.StateEntry]:
        """SpectralNorm's state for weights like ``x``: ``u`` ((1, x.shape[-1]), ``param_dtype``), the power
        iteration's vector, and ``sigma`` ((), ``param_dtype``), the last estimate of the largest singular value;
        none for a weight Flax leaves unchanged (a vector or scalar, or ``n_steps=0``)."""
        shape, _ = _weight_input(x)
        u_shape = self._u_shape(shape)
        if u_shape is None:
            return {}
        dtype = jnp.dtype(self.param_dtype)
        return {"u": layer.StateEntry(tuple(u_shape), dtype, "power iteration vector"),
                "sigma": layer.StateEntry((), dtype, "largest singular value, last estimate")}

    def init(self, key: Any, w: Any) -> tuple[Tree, Tree]:
        """Creates ``({}, {'u', 'sigma'})`` for a weight like ``w`` (an array or a ``jax.ShapeDtypeStruct``).

        Args:
          key: a ``jax.random`` key for ``u`` (None uses ``jax.random.key(0)``).
          w: the weight, floating, rank >= 2 (rank 0 or 1 gives empty state unless ``error_on_non_matrix``).

        Returns:
          ``params`` ``{}`` and ``state`` ``{'u': N(0, 1) of shape (1, w.shape[-1]), 'sigma': 1.0}``, both of
          ``param_dtype``; ``({}, {})`` for a weight Flax leaves unchanged (vector, scalar, ``n_steps=0``).

        Raises:
          TypeError: ``w`` not floating.
          ValueError: ``w`` not a matrix with ``error_on_non_matrix=True``.
        """
        shape, _ = _weight_input(w)
        u_shape = self._u_shape(shape)
        if u_shape is None:
            return {}, {}
        key = jax.random.key(0) if key is None else key
        u = jax.random.normal(key, u_shape, self.param_dtype)
        return {}, {"u": u, "sigma": jnp.ones((), self.param_dtype)}

    def apply(
        self, params: Tree, state: Tree, w: jax.Array, *, training: bool | None = None
    ) -> tuple[jax.Array, Tree]:
        """Returns ``(w / sigma, new_state)``; see the class docstring.

        Args:
          params: ``{}`` from :meth:`init`.
          state: ``{'u', 'sigma'}`` from :meth:`init` or a previous training call.
          w: the weight, floating, of the shape the state was created for.
          training: Python bool, required: True updates ``u`` and ``sigma`` (Flax's ``update_stats``).

        Returns:
          ``w_normalized`` of ``w``'s shape and dtype (``dtype`` if set), and the new state: ``u`` and
          ``sigma`` in their stored dtypes (``sigma`` under ``stop_gradient``), the input state when
          ``training=False``.

        Raises:
          TypeError: ``training`` missing or not a bool; ``w`` or the state not floating.
          ValueError: non-empty ``params``; ``state`` keys or ``state['u']``'s shape not matching ``w``;
            ``w`` not a matrix with ``error_on_non_matrix=True``.
        """
        training = layer.check_training(training, "SpectralNorm", required=True)
        w = validation.check_float_array(w, "w")
        validation.check_tree(params, {}, "params", "SpectralNorm has no parameters: pass {} (from `init`).")
        u_shape = self._u_shape(w.shape)
        fix = f"Create it with `init` for this weight (shape {w.shape}) and spec."
        expected = {} if u_shape is None else {"u": (u_shape, None), "sigma": ((), None)}
        state = validation.check_tree(state, expected, "state", fix)
        if u_shape is None:
            return w.astype(self.dtype or w.dtype), {}
        w_bar, u, sigma = spectral_normalize(
            w, state["u"], n_steps=self.n_steps, epsilon=self.epsilon,
            error_on_non_matrix=self.error_on_non_matrix, dtype=self.dtype,
        )
        if not training:
            return w_bar, state
        sigma = lax.stop_gradient(sigma)
        return w_bar, {"u": u.astype(state["u"].dtype), "sigma": sigma.astype(state["sigma"].dtype)}


@dataclasses.dataclass(frozen=True, eq=True, repr=False)
class WeightNorm(Layer):
    r"""Weight normalization (Salimans & Kingma 2016) of a weight as a pure spec: ``init`` and ``apply``.

    Normalizes a weight ``w`` (not an activation): every slice along ``feature_axes`` is divided by its L2 norm
    over the other axes and multiplied by the learned ``scale`` (the paper's ``g``); see
    :func:`weight_normalize`.

    .. math::
        \bar w = \frac{w}{\sqrt{\sum_{\text{non-feature axes}} w^2 + \epsilon}} \cdot \text{scale}

    Attributes:
      epsilon: float >= 0 added to the squared norm (1e-12).
      use_scale: learn ``params['scale']`` (True); False gives unit-norm slices.
      scale_init: initializer of ``scale`` ('ones', Flax's ``ones``): a Keras name or config, or a JAX
        initializer; called ``scale_init(key, shape, param_dtype)``.
      feature_axes: int, sequence of ints (-1), or None for one norm over the whole weight and a scalar scale.
      dtype: dtype of the normalized weight; None (default) keeps the weight's dtype (Flax's None would give
        ``result_type(w, scale)``).
      param_dtype: dtype of ``scale`` ('float32').
      trainable: False freezes ``scale`` (no gradient, and ``jaxnorm.trainable_mask`` marks it False).

    Flax's ``layer_instance`` and ``variable_filter`` choose which of a wrapped layer's variables to normalize;
    a spec is handed the one weight to normalize, so it has neither.

    ``init(key, w) -> ({'scale': feature sizes}, {})``, the shape of Flax's ``params['<path>/scale']``;
    ``apply(params, state, w, *, training=None) -> (w_normalized, {})``.

    Source: Salimans & Kingma 2016, "Weight Normalization: A Simple Reparameterization to Accelerate Training
    of Deep Neural Networks"; ``flax.linen.WeightNorm`` / ``flax.nnx.WeightNorm`` (Flax 0.12);
    ``torch.nn.utils.parametrizations.weight_norm``.

    Example:
      >>> import jax, jax.numpy as jnp, jaxnorm
      >>> wn = jaxnorm.WeightNorm()
      >>> w = jnp.array([[3.0, 0.0], [4.0, 1.0]])
      >>> params, state = wn.init(jax.random.key(0), w)
      >>> params
      {'scale': Array([1., 1.], dtype=float32)}
      >>> print(wn.apply(params, state, w)[0])
      [[0.6 0. ]
       [0.8 1. ]]
    """

    epsilon: float = 1e-12
    use_scale: bool = True
    scale_init: Any = "ones"
    feature_axes: int | tuple[int, ...] | None = -1
    dtype: Any = None
    param_dtype: Any = "float32"
    trainable: bool = True

    _INITIALIZER_FIELDS = ("scale_init",)

    def __post_init__(self) -> None:
        axes = self.feature_axes
        if isinstance(axes, list | tuple):
            axes = tuple(axes) if axes else None
        if axes is not None:
            axes = validation.check_axes_static(axes, "feature_axes")
        object.__setattr__(self, "feature_axes", axes)
        validation.check_bool(self.use_scale, "use_scale")
        _canonical_dtype_field(self, "dtype")
        self._post_init_common()

    def _param_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        feature, _ = weight_norm_axes(len(shape), self.feature_axes)
        return tuple(shape[a] for a in feature)

    def _param_entries(self, pshape: tuple[int, ...]) -> dict[str, layer.ParamEntry]:
        if not self.use_scale:
            return {}
        return {"scale": layer.ParamEntry(pshape, self.param_dtype, self.scale_init, "norm g per feature")}

    def to_keras_config(self) -> dict[str, Any]:
        """Not available: raises ``ValueError`` (Keras has no weight-normalization layer)."""
        raise _layer_only(type(self).__name__)

    def init(self, key: Any, w: Any) -> tuple[Tree, Tree]:
        """Creates ``({'scale'}, {})`` for a weight like ``w`` (an array or a ``jax.ShapeDtypeStruct``).

        Args:
          key: a ``jax.random`` key, handed to ``scale_init`` (None uses ``jax.random.key(0)``).
          w: the weight, floating.

        Returns:
          ``params``: ``{'scale'}`` (if ``use_scale``) of shape ``tuple(w.shape[a] for a in feature_axes)``
          and ``param_dtype``; ``state``: ``{}``.

        Raises:
          TypeError: ``w`` not floating.
          ValueError: a feature axis out of range or repeated for ``w``.
        """
        shape, _ = _weight_input(w)
        feature, _ = weight_norm_axes(len(shape), self.feature_axes)
        if not self.use_scale:
            return {}, {}
        key = jax.random.key(0) if key is None else key
        scale = initializers.resolve(self.scale_init, "scale_init")(
            key, tuple(shape[a] for a in feature), self.param_dtype
        )
        return {"scale": jnp.asarray(scale, self.param_dtype)}, {}

    def apply(
        self, params: Tree, state: Tree, w: jax.Array, *, training: bool | None = None
    ) -> tuple[jax.Array, Tree]:
        """Returns ``(w_normalized, {})``; see the class docstring.

        Args:
          params: ``{'scale'}`` from :meth:`init` (``{}`` with ``use_scale=False``).
          state: ``{}``.
          w: the weight, floating, of the shape ``params`` were created for.
          training: optional Python bool, ignored (the same computation in both modes).

        Returns:
          ``w_normalized`` of ``w``'s shape and dtype (``dtype`` if set), and ``{}``.

        Raises:
          TypeError: ``training`` not a bool; ``w`` or ``scale`` not floating.
          ValueError: ``params`` keys or ``scale``'s shape not matching ``w``; non-empty ``state``; a feature
            axis out of range for ``w``.
        """
        layer.check_training(training, "WeightNorm", required=False)
        w = validation.check_float_array(w, "w")
        feature, _ = weight_norm_axes(w.ndim, self.feature_axes)
        fshape = tuple(w.shape[a] for a in feature)
        fix = (
            f"They must match the weight's sizes along feature_axes={self.feature_axes!r} (shape {fshape}); "
            "re-create them with `init` for this weight and spec."
        )
        params = self._params_in_use(self._check_params(params, fshape, fix))
        validation.check_tree(state, {}, "state", "WeightNorm's state is always {}.")
        y = weight_normalize(
            w, params.get("scale"), feature_axes=self.feature_axes, epsilon=self.epsilon, dtype=self.dtype
        )
        return y, {}
