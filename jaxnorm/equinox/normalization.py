"""The activation normalizations of :mod:`jaxnorm.equinox` (``BatchNorm``, ``GroupNorm``, ``LayerNorm``,
``RMSNorm``)."""

from __future__ import annotations

import dataclasses
import os
import sys
import warnings
from collections.abc import Hashable, Sequence
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from equinox import field
from equinox.nn import State, StatefulLayer, StateIndex

from jaxnorm._src import moving, normalize, stats, validation


class _Sentinel:
    """The default of ``state`` in the stateless layers' ``__call__`` (equinox's own sentinel is private)."""

    def __repr__(self) -> str:
        return "sentinel"


_sentinel: Any = _Sentinel()


# ---------------------------------------------------------------------------------------------- checks


def _default_float() -> Any:
    """equinox's default floating dtype: float32, or float64 when JAX runs in 64-bit mode."""
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def _input(x: Any) -> jax.Array:
    """``x`` as a real array (integer input read as equinox's default float, as its ``jnp.mean`` does)."""
    arr = x if isinstance(x, jax.Array) else jnp.asarray(x)
    if jnp.issubdtype(arr.dtype, jnp.integer) or arr.dtype == jnp.bool_:
        arr = arr.astype(_default_float())
    return validation.check_float_array(arr, "x")


def _inference(value: Any, default: bool) -> bool:
    """The call's ``inference`` (the layer's when None), a concrete Python bool."""
    return validation.check_bool(default if value is None else value, "inference")


def _fit(value: Any, shape: tuple[int, ...], name: str, fix: str) -> jax.Array:
    return validation.fit_variable(value, shape, name, fix, exact=True)


def _channels_first(value: jax.Array, x: jax.Array) -> jax.Array:
    """A per-channel ``(C,)`` array as ``(C, 1, ..., 1)``, of x's rank (the channels are x's first axis)."""
    return validation.expand_to_rank(value, x.ndim, (0,))


def _affine(weight: Any, bias: Any, x: jax.Array, owner: str, fix: str) -> tuple[Any, Any]:
    """``weight`` and ``bias`` (each None or ``(C,)``) checked against x's channels, as ``(C, 1, ..., 1)``."""
    def one(p: Any, name: str) -> Any:
        return None if p is None else _channels_first(_fit(p, x.shape[:1], f"{owner}.{name}", fix), x)

    return one(weight, "weight"), one(bias, "bias")


# ---------------------------------------------------------------------------------------------- BatchNorm

def _callers_level() -> int:
    """The ``stacklevel`` of a warning raised in a drop-in's ``__init__`` that points at the user's line: the
    first frame outside jaxnorm and equinox (whose module metaclass calls ``__init__`` through several frames)."""
    skip = (os.path.dirname(eqx.__file__) + os.sep, os.path.dirname(os.path.dirname(__file__)) + os.sep)  # jaxnorm/
    frame: Any = sys._getframe(1)  # the caller of this function: the warning's own frame, level 1
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(skip):
        frame, level = frame.f_back, level + 1
    return level


_LEGACY_MODE = (
    "When `BatchNorm(..., mode=...)` is unspecified it defaults to 'ema', as `eqx.nn.BatchNorm` does (with the "
    "same warning). Pass mode='ema' or mode='batch' explicitly (see the class docstring for both)."
)


class BatchNorm(StatefulLayer):
    r"""Batch normalization, a drop-in for ``equinox.nn.BatchNorm`` with jaxnorm's statistics.

    .. math::
        y = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} \cdot \text{weight} + \text{bias}

    per channel (``x``'s first axis), with :math:`\mu, \sigma^2` over the channel's spatial positions and, as in
    equinox, over the examples of the ``jax.vmap`` (or ``pmap``/``shard_map``) named ``axis_name``: each call
    sees one example, and the batch statistics are collective over the named axis (jaxnorm's exact
    count-weighted merge of each example's count, mean and M2, in at least float32).

    ``mode='ema'`` (equinox's default) keeps running averages ``(mean, var)`` and a first-time flag. In training
    the running averages are updated first, ``running = momentum * running + (1 - momentum) * batch`` (on the
    first training call: ``running = batch``), and ``x`` is normalized with the *updated* running averages
    (equinox's rule; gradients flow through the batch share). In inference the stored averages are used. As in
    equinox, the averages start as zeros, so inference before any training call divides by ``sqrt(eps)``
    (equinox issue #955): run a training call first.

    ``mode='batch'``: training normalizes with the batch statistics and updates hidden averages
    ``hidden = momentum * hidden + (1 - momentum) * batch`` from ``(0, 1)`` and a step counter ``t``;
    inference normalizes with ``hidden / (1 - momentum**t)`` (``hidden`` itself while ``t == 0``). This is
    equinox's rule, reproduced so that states and outputs stay interchangeable, including its defect:
    ``hidden_var`` starts at 1, not 0, so the read-out variance is the zero-debiased average of the batch
    variances plus ``momentum**t / (1 - momentum**t)`` (0.58 after 100 steps at momentum 0.99, 4e-5 after 1000).
    For a debiased average without that offset use ``mode='ema'`` or :class:`jaxnorm.BatchNorm` with
    ``averaging='debiased'``.

    In both modes a channel whose batch statistics are not finite, or that has no valid (masked-in) value in
    the whole batch, keeps its running statistics bit for bit (equinox would write NaN there), and the
    first-time flag (``ema``) or the counter (``batch``) advances only with a batch that updated some
    channel: an empty or all-NaN batch leaves the state exactly as it was.

    Args:
      input_size: int, the number of channels (``x.shape[0]``).
      axis_name: the name (or a tuple of names) of the ``jax.vmap``/``pmap``/``shard_map`` axis the batch is
        spread over, e.g. ``'batch'``; required (None raises: each call sees one example).
      eps: float >= 0 added to the variance (1e-5).
      channelwise_affine: learn ``weight`` (ones) and ``bias`` (zeros) of shape ``(input_size,)`` (True).
      momentum: float in [0, 1], the old value's weight in the averages (0.99; Keras/Flax's convention, the
        opposite of PyTorch's).
      inference: the default of ``__call__``'s ``inference`` (False); ``eqx.nn.inference_mode`` sets it.
      dtype: dtype of ``weight``, ``bias`` and the state's averages (None: float32, float64 in 64-bit mode).
      mode: ``'ema'``, ``'batch'``, or ``'legacy'`` (default: ``'ema'`` with equinox's ``UserWarning``).
      extreme_range: jaxnorm's option (not equinox's), keyword-only after equinox's arguments: False (default)
        keeps the statistics exact while deviations from the mean stay below ``2**50`` and the variance above
        about ``2**-100``; True makes them exact at any finite float32 magnitude, for one more pass over ``x``.
        A static field (no leaf: checkpoints and states are unchanged).

    State (``eqx.nn.make_with_state``): ``mode='ema'``: ``ema_first_time_index`` bool scalar (True) and
    ``ema_state_index`` ``(mean, var)`` of shape ``(input_size,)`` and ``dtype`` (zeros); ``mode='batch'``:
    ``batch_counter`` int scalar (0) and ``batch_state_index`` ``(hidden_mean, hidden_var)`` (zeros, ones).
    The unused indices are None, exactly equinox's fields.

    Call ``__call__(x, state, *, key=None, inference=None, mask=None)``:
      x: one example, shape ``(input_size, *spatial)``; floating (integer read as float); the batch is the
        named axis.
      state: ``eqx.nn.State`` holding this layer's state.
      key: ignored (equinox's API).
      inference: None (the layer's ``inference``) or a Python bool; True uses the stored statistics.
      mask: optional, broadcastable to ``x`` (a scalar per example, or per position); only True positions
        enter the batch statistics (values elsewhere, even NaN, do not touch them). Every position is
        normalized.

    Returns:
      ``(y, state)``: ``y`` of ``x``'s shape, in equinox's result dtype (``result_type`` of ``x``, the
      statistics it normalizes with and ``weight``/``bias``: float32 for bfloat16 input with float32
      parameters), and the updated state (the given one in inference).

    Raises:
      ValueError: ``mode`` not 'ema'/'batch'/'legacy'; ``axis_name`` None or not bound at the call (equinox:
        ``NameError``); ``input_size`` < 1; ``momentum`` outside [0, 1]; ``eps`` < 0; ``x`` whose first axis
        is not ``input_size``; a state or parameter of the wrong shape; ``mask`` not broadcastable to ``x``.
      TypeError: complex ``x``; ``inference`` not a concrete bool; a non-numeric ``momentum``/``eps``.

    Source: ``equinox.nn.BatchNorm`` (equinox 0.13): arguments, defaults, fields, state and both modes'
    rules; Ioffe & Szegedy 2015, "Batch Normalization".

    Example:
      >>> import equinox as eqx, jax, jax.numpy as jnp
      >>> from jaxnorm import equinox as jeqx
      >>> bn, state = eqx.nn.make_with_state(jeqx.BatchNorm)(2, "batch", momentum=0.5, mode="ema")
      >>> batched = eqx.filter_jit(jax.vmap(bn, axis_name="batch", in_axes=(0, None), out_axes=(0, None)))
      >>> x = jnp.array([[1.0, 10.0], [3.0, 30.0]])  # two examples of two channels
      >>> y, state = batched(x, state)
      >>> print(y.round(3))
      [[-1. -1.]
       [ 1.  1.]]
      >>> print(state.get(bn.ema_state_index))  # the first batch's statistics
      (Array([ 2., 20.], dtype=float32), Array([  1., 100.], dtype=float32))
      >>> inference = eqx.filter_jit(jax.vmap(eqx.nn.inference_mode(bn), axis_name="batch", in_axes=(0, None),
      ...                                     out_axes=(0, None)))
      >>> print(inference(jnp.array([[2.0, 30.0]]), state)[0].round(3))  # the running statistics
      [[0. 1.]]
    """

    weight: jax.Array | None
    bias: jax.Array | None
    ema_first_time_index: StateIndex | None
    ema_state_index: StateIndex | None
    batch_counter: StateIndex | None
    batch_state_index: StateIndex | None
    axis_name: Hashable | Sequence[Hashable]
    inference: bool
    input_size: int = field(static=True)
    eps: float = field(static=True)
    channelwise_affine: bool = field(static=True)
    momentum: float = field(static=True)
    mode: Literal["ema", "batch"] = field(static=True)
    extreme_range: bool = field(static=True)  # jaxnorm's option, after equinox's fields

    def __init__(
        self,
        input_size: int,
        axis_name: Hashable | Sequence[Hashable],
        eps: float = 1e-5,
        channelwise_affine: bool = True,
        momentum: float = 0.99,
        inference: bool = False,
        dtype: Any = None,
        mode: Literal["ema", "batch", "legacy"] = "legacy",
        *,
        extreme_range: bool = False,
    ):
        if mode == "legacy":
            mode = "ema"
            warnings.warn(_LEGACY_MODE, stacklevel=_callers_level())
        if mode not in ("ema", "batch"):
            raise ValueError(
                f"`mode` must be 'ema' or 'batch' (or 'legacy', which means 'ema'), got {mode!r}. See the "
                "BatchNorm docstring for what each keeps."
            )
        validation.check_int(input_size, "input_size", 1)
        if axis_name is None:
            raise ValueError(
                "`axis_name` is None, but equinox's BatchNorm sees one example per call and takes the batch "
                "statistics over a named axis: pass e.g. axis_name='batch' and call the layer inside "
                "jax.vmap(model, axis_name='batch', in_axes=(0, None), out_axes=(0, None))."
            )
        validation.check_epsilon(eps, "eps")
        moving.Rule(momentum)  # checks momentum: a float in [0, 1]
        self.extreme_range = validation.check_bool(extreme_range, "extreme_range")
        dtype = _default_float() if dtype is None else dtype
        self.mode = mode
        if channelwise_affine:
            self.weight = jnp.ones((input_size,), dtype=dtype)
            self.bias = jnp.zeros((input_size,), dtype=dtype)
        else:
            self.weight = None
            self.bias = None
        if mode == "ema":
            self.ema_first_time_index = StateIndex(jnp.array(True))
            # jnp.empty is zeros in JAX: equinox's initial values, bit for bit.
            self.ema_state_index = StateIndex(
                (jnp.empty((input_size,), dtype=dtype), jnp.empty((input_size,), dtype=dtype))
            )
            self.batch_counter = None
            self.batch_state_index = None
        else:
            self.batch_counter = StateIndex(jnp.array(0))
            self.batch_state_index = StateIndex(
                (jnp.zeros((input_size,), dtype=dtype), jnp.ones((input_size,), dtype=dtype))
            )
            self.ema_first_time_index = None
            self.ema_state_index = None
        self.inference = inference
        self.axis_name = axis_name
        self.input_size = input_size
        self.eps = eps
        self.channelwise_affine = channelwise_affine
        self.momentum = momentum

    def __call__(
        self,
        x: jax.Array,
        state: State,
        *,
        key: Any = None,
        inference: bool | None = None,
        mask: jax.Array | None = None,
    ) -> tuple[jax.Array, State]:
        """Normalizes one example ``x`` with the batch's or the stored statistics; see the class docstring."""
        del key
        inference = _inference(inference, self.inference)
        x = _input(x)
        c = self.input_size
        if x.ndim < 1 or x.shape[0] != c:
            raise ValueError(
                f"BatchNorm(input_size={c}) normalizes one example of shape ({c}, *spatial), channels first, "
                f"per call; got x of shape {x.shape}. Call it on each example inside jax.vmap(model, "
                f"axis_name={self.axis_name!r}, in_axes=(0, None), out_axes=(0, None)), with the channels on "
                "each example's first axis."
            )
        fix = "Build the layer with input_size for this input, or pass the state made with it."
        scale, bias = _affine(self.weight, self.bias, x, "BatchNorm", fix)
        m = validation.numpy_mask(mask, x)
        call = self._ema if self.mode == "ema" else self._batch
        return call(x, state, inference, scale, bias, m, fix)

    def _ema(
        self, x: jax.Array, state: State, inference: bool, scale: Any, bias: Any, m: Any, fix: str
    ) -> tuple[jax.Array, State]:
        """``mode='ema'``: equinox's exponential averages, its first call replacing the running statistics."""
        c, axes, rule, sync, params = self._call_constants(x, scale, bias)
        assert self.ema_first_time_index is not None and self.ema_state_index is not None
        index = self.ema_state_index
        running = [_fit(v, (c,), f"BatchNorm state[ema_state_index][{i}]", fix)
                   for i, v in enumerate(state.get(index))]
        out_dtype = validation.result_dtype(x, *running, *params)
        xc = x.astype(validation.result_dtype(x.dtype, out_dtype))
        if inference:
            mean, var = running
        else:
            first_time = state.get(self.ema_first_time_index)
            count, batch_mean, batch_var = (
                jnp.squeeze(s, axes)
                for s in stats.count_mean_var(xc, axes, m, sync, extreme_range=self.extreme_range)
            )
            new = moving.update(
                {"mean": running[0], "var": running[1]}, count, batch_mean, batch_var, rule
            )
            ok = moving.update_ok(count, batch_mean, batch_var)
            # equinox's first training call: the batch statistics replace the (empty) running ones.
            mean = moving.safe_update(new["mean"], batch_mean, first_time & ok)
            var = moving.safe_update(new["var"], batch_var, first_time & ok)
            state = state.set(self.ema_first_time_index, first_time & ~jnp.any(ok))
            state = state.set(index, (mean, var))
        y = normalize.normalize_by_stats(
            xc, _channels_first(mean, x), _channels_first(var, x), scale, bias, self.eps, m
        )
        return y.astype(out_dtype), state

    def _batch(
        self, x: jax.Array, state: State, inference: bool, scale: Any, bias: Any, m: Any, fix: str
    ) -> tuple[jax.Array, State]:
        """``mode='batch'``: equinox's debiased averages, read out at inference (``moving.batch_mode_readout``)."""
        c, axes, rule, sync, params = self._call_constants(x, scale, bias)
        assert self.batch_counter is not None and self.batch_state_index is not None
        counter = state.get(self.batch_counter)
        hidden = [_fit(v, (c,), f"BatchNorm state[batch_state_index][{i}]", fix)
                  for i, v in enumerate(state.get(self.batch_state_index))]
        if inference:
            mean, var = moving.batch_mode_readout(hidden[0], hidden[1], counter, self.momentum)
            out_dtype = validation.result_dtype(x, mean, var, *params)
            xc = x.astype(validation.result_dtype(x.dtype, out_dtype))
            y = normalize.normalize_by_stats(
                xc, _channels_first(mean, x), _channels_first(var, x), scale, bias, self.eps, m
            )
            return y.astype(out_dtype), state
        out_dtype = validation.result_dtype(x, *params)
        xc = x.astype(validation.result_dtype(x.dtype, out_dtype))
        y, *moments = normalize.normalize_by_moments(
            xc, scale, bias, axes, self.eps, m, sync, extreme_range=self.extreme_range
        )
        count, batch_mean, batch_var = (jnp.squeeze(s, axes) for s in moments)
        old = {"mean": hidden[0], "var": hidden[1], "steps": counter}  # the counter: equinox's batch_counter
        new = moving.update(old, count, batch_mean, batch_var, dataclasses.replace(rule, count_steps=True))
        state = state.set(self.batch_counter, new["steps"])
        state = state.set(self.batch_state_index, (new["mean"], new["var"]))
        return y.astype(out_dtype), state

    def _call_constants(self, x: jax.Array, scale: Any, bias: Any) -> tuple[int, tuple[int, ...], Any, Any, list]:
        """What both modes read: channels, reduced axes, the moving rule, the named axis, the params in use."""
        params = [p for p in (scale, bias) if p is not None]
        return self.input_size, tuple(range(1, x.ndim)), moving.Rule(self.momentum), \
            validation.axis_name_of(self.axis_name), params


# ---------------------------------------------------------------------------------------------- per example


def _check_shape(x: jax.Array, shape: tuple[int, ...], owner: str, call: str) -> None:
    if x.shape != shape:
        raise ValueError(
            f"`{owner}(shape)(x)` must satisfy the invariant `shape == x.shape`. Received `shape={shape}` and "
            f"`x.shape={x.shape}`. You might need to replace `{call}(x)` with `jax.vmap({call})(x)`."
        )


def _with_state(out: jax.Array, state: Any) -> Any:
    return out if state is _sentinel else (out, state)


class _Normalization(eqx.Module):
    """The fields, constructor and call of :class:`LayerNorm` and :class:`RMSNorm` (equinox's, in equinox's
    order: the leaves ``weight`` then ``bias``, so serialised trees are unchanged)."""

    shape: tuple[int, ...] = field(static=True)
    eps: float = field(static=True)
    use_weight: bool = field(static=True)
    use_bias: bool = field(static=True)
    weight: jax.Array | None
    bias: jax.Array | None
    extreme_range: bool = field(static=True)  # jaxnorm's option, after equinox's fields
    scale_offset: float = field(static=True)  # jaxnorm's zero-centred weight

    def __init__(
        self, shape: int | Sequence[int], eps: float = 1e-5, use_weight: bool = True, use_bias: bool = True,
        dtype: Any = None, *, extreme_range: bool = False, scale_offset: float = 0.0,
    ):
        dtype = _default_float() if dtype is None else dtype
        self.shape = (shape,) if isinstance(shape, int) else tuple(shape)
        validation.check_epsilon(eps, "eps")
        self.eps = eps
        self.use_weight = use_weight
        self.use_bias = use_bias
        self.weight = jnp.ones(self.shape, dtype=dtype) if use_weight else None
        self.bias = jnp.zeros(self.shape, dtype=dtype) if use_bias else None
        self.extreme_range = validation.check_bool(extreme_range, "extreme_range")
        self.scale_offset = validation.check_scale_offset(scale_offset, use_weight)

    def _normalize(self, x: jax.Array, mask: jax.Array | None, owner: str, call: str, *, center: bool) -> jax.Array:
        """``y`` for ``x`` of ``shape``: the statistics over every axis (with ``center``, LayerNorm's; without,
        RMSNorm's, whose equinox ``bias`` is then added in the compute dtype), in ``x``'s dtype."""
        x = _input(x)
        _check_shape(x, self.shape, owner, call)
        fix = "Build the layer with this shape."
        weight = None if self.weight is None else _fit(self.weight, x.shape, f"{owner}.weight", fix)
        bias = None if self.bias is None else _fit(self.bias, x.shape, f"{owner}.bias", fix)
        xc = x.astype(validation.stats_dtype(x.dtype))  # equinox: result_type(x, float32)
        y = normalize.normalize_layer(
            xc, weight, bias if center else None, tuple(range(x.ndim)), self.eps, validation.numpy_mask(mask, x),
            center=center, extreme_range=self.extreme_range, scale_offset=self.scale_offset,
        )
        if bias is not None and not center:  # ops take no RMSNorm bias
            y = y + bias.astype(y.dtype)
        return y.astype(x.dtype)


class LayerNorm(_Normalization):
    r"""Layer normalization over the whole input, a drop-in for ``equinox.nn.LayerNorm``.

    .. math::
        y = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} \cdot \text{weight} + \text{bias}, \qquad
        \mu, \sigma^2 = \text{mean and (biased) variance of all of } x

    computed by jaxnorm's kernel (two-pass, in ``result_type(x, float32)``, as equinox; exact at any finite
    magnitude with ``extreme_range=True``). Normalize over fewer axes with ``jax.vmap``, as in equinox.

    Args:
      shape: int or sequence of ints, the shape of ``x`` (and of ``weight``/``bias``).
      eps: float >= 0 added to the variance (1e-5).
      use_weight: learn ``weight`` (ones of ``shape``) (True).
      use_bias: learn ``bias`` (zeros of ``shape``) (True).
      dtype: dtype of ``weight``/``bias`` (None: float32, float64 in 64-bit mode).
      elementwise_affine: keyword-only, deprecated (equinox's): sets both ``use_weight`` and ``use_bias``,
        with equinox's warning.
      extreme_range: jaxnorm's option (not equinox's), keyword-only after equinox's arguments: False (default)
        keeps the statistics exact while deviations from the mean stay below ``2**50`` and the variance above
        about ``2**-100``; True makes them exact at any finite float32 magnitude, for one more pass over ``x``.
        A static field (no leaf: checkpoints and states are unchanged).
      scale_offset: jaxnorm's option, keyword-only: a float added to ``weight`` before it multiplies (0.0);
        1.0 reads a zero-centred weight stored as ``gamma - 1`` (Gemma's checkpoints), as in
        :func:`jaxnorm.layer_norm`. A static field.

    Call ``__call__(x, state=sentinel, *, key=None, mask=None)``:
      x: array of shape ``shape``. state: optional, passed through (equinox's API). key: ignored.
      mask: optional, broadcastable to ``x``: only True positions enter the statistics (values elsewhere, even
        NaN, do not touch them); every position is normalized.

    Returns:
      ``y`` of ``x``'s shape and dtype, or ``(y, state)`` when ``state`` is given.

    Raises:
      ValueError: ``x.shape != shape`` (equinox's message); ``eps`` < 0; ``mask`` not broadcastable.
      TypeError: complex ``x``.

    Source: ``equinox.nn.LayerNorm`` (equinox 0.13); Ba, Kiros & Hinton 2016, "Layer Normalization".

    Example:
      >>> import equinox as eqx, jax.numpy as jnp
      >>> from jaxnorm import equinox as jeqx
      >>> ln = eqx.filter_jit(jeqx.LayerNorm(3, eps=0.0))  # compiled, as equinox code runs it
      >>> print(ln(1e4 + jnp.array([-1.0, 0.0, 1.0])) * jnp.sqrt(2 / 3))
      [-1.  0.  1.]
      >>> print(ln(jnp.array([1.0, 3.0, jnp.nan]), mask=jnp.array([True, True, False])))
      [-1.  1. nan]
    """

    def __init__(
        self,
        shape: int | Sequence[int],
        eps: float = 1e-5,
        use_weight: bool = True,
        use_bias: bool = True,
        dtype: Any = None,
        *,
        elementwise_affine: bool | None = None,
        extreme_range: bool = False,
        scale_offset: float = 0.0,
    ):
        if elementwise_affine is not None:
            use_weight = elementwise_affine
            use_bias = elementwise_affine
            warnings.warn(
                "LayerNorm(elementwise_affine=...) is deprecated in favour of LayerNorm(use_weight=...) and "
                "LayerNorm(use_bias=...)",
                stacklevel=_callers_level(),
            )
        super().__init__(shape, eps, use_weight, use_bias, dtype, extreme_range=extreme_range,
                         scale_offset=scale_offset)

    def __call__(
        self, x: jax.Array, state: Any = _sentinel, *, key: Any = None, mask: jax.Array | None = None
    ) -> Any:
        """Normalizes ``x`` over all of its axes; see the class docstring."""
        del key  # equinox's API
        return _with_state(self._normalize(x, mask, "LayerNorm", "layer_norm", center=True), state)


class RMSNorm(_Normalization):
    r"""Root-mean-square normalization over the whole input, a drop-in for ``equinox.nn.RMSNorm``.

    .. math::
        y = \frac{x}{\sqrt{\langle x^2\rangle + \epsilon}} \cdot \text{weight} + \text{bias}

    with :math:`\langle x^2\rangle` the mean of squares of all of ``x``, computed by jaxnorm's kernel in
    ``result_type(x, float32)`` (with ``extreme_range=True`` exact also where squares would overflow or
    underflow float32).

    Args:
      shape: int or sequence of ints, the shape of ``x``.
      eps: float >= 0 added to the mean of squares (1e-5).
      use_weight: learn ``weight`` (ones of ``shape``) (True).
      use_bias: learn ``bias`` (zeros of ``shape``) (True, as equinox).
      dtype: dtype of ``weight``/``bias`` (None: float32, float64 in 64-bit mode).
      extreme_range: jaxnorm's option (not equinox's), keyword-only after equinox's arguments: False (default)
        keeps the statistic exact while the values stay below ``2**50`` and their mean square above about
        ``2**-100``; True makes it exact at any finite float32 magnitude, for one more pass over ``x``. A
        static field (no leaf: checkpoints are unchanged).
      scale_offset: jaxnorm's option, keyword-only: a float added to ``weight`` before it multiplies (0.0);
        1.0 reads a zero-centred weight stored as ``gamma - 1`` (Gemma's checkpoints), as in
        :func:`jaxnorm.layer_norm`. A static field.

    Call ``__call__(x, state=sentinel, *, key=None, mask=None)``: as :class:`LayerNorm`'s.

    Returns:
      ``y`` of ``x``'s shape and dtype, or ``(y, state)`` when ``state`` is given.

    Raises:
      ValueError: ``x.shape != shape``; ``eps`` < 0; ``mask`` not broadcastable. TypeError: complex ``x``.

    Source: ``equinox.nn.RMSNorm`` (equinox 0.13); Zhang & Sennrich 2019, "Root Mean Square Layer
    Normalization".

    Example:
      >>> import equinox as eqx, jax.numpy as jnp
      >>> from jaxnorm import equinox as jeqx
      >>> rms = eqx.filter_jit(jeqx.RMSNorm(2, eps=0.0))
      >>> print(rms(jnp.array([1.0, 7.0])))  # RMS 5
      [0.2 1.4]
    """

    __init__ = _Normalization.__init__  # equinox's arguments (spelled out for type checkers)

    def __call__(
        self, x: jax.Array, state: Any = _sentinel, *, key: Any = None, mask: jax.Array | None = None
    ) -> Any:
        """Divides ``x`` by its root mean square, then applies ``weight`` and ``bias``; see the class."""
        del key  # equinox's API
        return _with_state(self._normalize(x, mask, "RMSNorm", "rms_norm", center=False), state)


class GroupNorm(eqx.Module):
    r"""Group normalization of one example, a drop-in for ``equinox.nn.GroupNorm``.

    .. math::
        y = \frac{x - \mu_g}{\sqrt{\sigma_g^2 + \epsilon}} \cdot \text{weight}_c + \text{bias}_c

    with the channels (``x``'s first axis) split into ``groups`` groups of consecutive channels and
    :math:`\mu_g, \sigma_g^2` over each group's channels and all other axes, by jaxnorm's kernel in
    ``result_type(x, float32)``.

    Args:
      groups: int >= 1, the number of groups; it must divide the channels.
      channels: int or None, the number of channels (needed with ``channelwise_affine``).
      eps: float >= 0 added to the variance (1e-5).
      channelwise_affine: learn ``weight`` (ones) and ``bias`` (zeros) of shape ``(channels,)`` (True).
      dtype: dtype of ``weight``/``bias`` (None: float32, float64 in 64-bit mode).
      extreme_range: jaxnorm's option (not equinox's), keyword-only after equinox's arguments: False (default)
        keeps the statistics exact while deviations from the mean stay below ``2**50`` and the variance above
        about ``2**-100``; True makes them exact at any finite float32 magnitude, for one more pass over ``x``.
        A static field (no leaf: checkpoints and states are unchanged).

    Call ``__call__(x, state=sentinel, *, key=None, mask=None)``: ``x`` of shape ``(channels, ...)``; ``state``,
    ``key`` and ``mask`` as :class:`LayerNorm`'s.

    Returns:
      ``y`` of ``x``'s shape and dtype, or ``(y, state)`` when ``state`` is given.

    Raises:
      ValueError: ``groups`` not dividing ``channels`` (or ``x.shape[0]``); ``channels`` None with
        ``channelwise_affine``; ``x`` of rank 0 or whose first axis is not ``channels``; ``eps`` < 0.
      TypeError: ``groups``/``channels`` not ints; complex ``x``.

    Source: ``equinox.nn.GroupNorm`` (equinox 0.13); Wu & He 2018, "Group Normalization".

    Example:
      >>> import equinox as eqx, jax.numpy as jnp
      >>> from jaxnorm import equinox as jeqx
      >>> gn = eqx.filter_jit(jeqx.GroupNorm(2, 4, eps=0.0))
      >>> print(gn(1e4 + jnp.array([[1.0], [3.0], [10.0], [30.0]]))[:, 0])
      [-1.  1. -1.  1.]
    """

    groups: int = field(static=True)
    channels: int | None = field(static=True)
    eps: float = field(static=True)
    channelwise_affine: bool = field(static=True)
    weight: jax.Array | None
    bias: jax.Array | None
    extreme_range: bool = field(static=True)  # jaxnorm's option, after equinox's fields

    def __init__(
        self,
        groups: int,
        channels: int | None = None,
        eps: float = 1e-5,
        channelwise_affine: bool = True,
        dtype: Any = None,
        *,
        extreme_range: bool = False,
    ):
        validation.check_int(groups, "groups", 1)
        if channels is not None:
            validation.check_int(channels, "channels", 1)
        if (channels is not None) and (channels % groups != 0):
            raise ValueError(
                f"The number of groups must divide the number of channels: groups={groups}, channels={channels}."
            )
        if (channels is None) and channelwise_affine:
            raise ValueError(
                "The number of channels should be specified if `channelwise_affine=True` (it sets the shape of "
                "`weight` and `bias`): pass channels=..., or channelwise_affine=False."
            )
        validation.check_epsilon(eps, "eps")
        self.groups = groups
        self.channels = channels
        self.eps = eps
        self.channelwise_affine = channelwise_affine
        self.weight = jnp.ones(channels, dtype=dtype) if channelwise_affine else None
        self.bias = jnp.zeros(channels, dtype=dtype) if channelwise_affine else None
        self.extreme_range = validation.check_bool(extreme_range, "extreme_range")

    def __call__(
        self, x: jax.Array, state: Any = _sentinel, *, key: Any = None, mask: jax.Array | None = None
    ) -> Any:
        """Normalizes each channel group of ``x``; see the class docstring."""
        del key
        x = _input(x)
        if x.ndim < 1 or (self.channels is not None and x.shape[0] != self.channels):
            raise ValueError(
                f"GroupNorm(groups={self.groups}, channels={self.channels}) takes x of shape (channels, ...), "
                f"channels first, one example; got x of shape {x.shape}. You might need `jax.vmap(group_norm)(x)`."
            )
        if x.shape[0] % self.groups:
            raise ValueError(
                f"GroupNorm(groups={self.groups}): the groups must divide the {x.shape[0]} channels of x (shape "
                f"{x.shape}, channels first). Build the layer with a number of groups that divides them."
            )
        fix = "Build the layer with channels for this input."
        weight, bias = _affine(self.weight, self.bias, x, "GroupNorm", fix)
        xc = x.astype(validation.stats_dtype(x.dtype))  # equinox: result_type(x, float32)
        y = normalize.normalize_groups(
            xc, weight, bias, 0, self.groups, tuple(range(1, x.ndim)), self.eps, validation.numpy_mask(mask, x),
            extreme_range=self.extreme_range,
        )
        return _with_state(y.astype(x.dtype), state)
