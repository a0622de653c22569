"""Feature-wise Normalization (Keras's preprocessing layer) as a pure spec: ``init``, ``adapt``, ``apply``.

``adapt`` streams over the data once: each batch's ``(count, mean, M2)`` comes from the statistics kernel
(:func:`jaxnorm._src.stats.normalizer`, jitted, float32 on the device) and is merged into float64 running
totals on the host with the exact pairwise update (:func:`jaxnorm._src.collectives.merge_count_mean_m2`).
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxnorm._src import keras_config, layer, streaming, validation
from jaxnorm._src.layer import Layer, Tree

_STATE_KEYS = ("mean", "variance", "count")


def _freeze_stat(value: Any, name: str) -> float | tuple:
    """A given mean/variance as a hashable float or nested tuple of floats (checked real and finite)."""
    arr = validation.as_array(value, name, "a float or a (nested) list of floats", np.asarray, ValueError)
    if arr.dtype.kind not in "fiu":
        raise TypeError(
            f"`{name}` must hold real numbers, got {value!r} (dtype {arr.dtype}). Pass a float or a list of "
            "floats, e.g. mean=[0.5, 2.0]."
        )
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` must be finite, got {value!r}.")
    return _to_tuple(arr.tolist())


def _to_tuple(value: Any) -> Any:
    return tuple(_to_tuple(v) for v in value) if isinstance(value, list | tuple) else float(value)


def _to_list(value: Any) -> Any:
    return [_to_list(v) for v in value] if isinstance(value, tuple) else value


def _is_array(value: Any) -> bool:
    return isinstance(value, np.ndarray | jax.Array) or (hasattr(value, "__array__") and hasattr(value, "shape"))


def _batches(data: Any) -> Iterator[Any]:
    """The batches of ``adapt``'s ``data``: one array, or the elements of an iterable (read lazily)."""
    if _is_array(data):
        yield data
        return
    if isinstance(data, str | bytes | Mapping):
        raise TypeError(
            f"`data` must be an array or an iterable of batches (arrays), got {type(data).__name__}."
        )
    if isinstance(data, list | tuple) and not any(_is_array(e) or isinstance(e, tuple) for e in data):
        yield data  # nested lists of numbers: one array
        return
    if not isinstance(data, Iterable):
        yield data  # a number or other array-like: checked as one array
        return
    yield from data


def _as_batch(batch: Any, index: int) -> Any:
    """One batch as a NumPy or JAX array of a real dtype (integers and bools cast to float32)."""
    if isinstance(batch, tuple) and batch:  # (x, y) or (x, y, sample_weight), as Keras's adapt
        batch = batch[0]
    if not isinstance(batch, jax.Array):
        batch = validation.as_array(batch, f"data` batch `{index}", "an array", np.asarray)
    dtype = batch.dtype
    if jnp.issubdtype(dtype, jnp.floating):
        return batch
    if jnp.issubdtype(dtype, jnp.integer) or dtype == np.bool_:
        return batch.astype(np.float32)
    raise TypeError(
        f"`data` batch {index} has dtype {np.dtype(dtype).name}; adapt needs real numbers (float, int or bool)."
    )


@dataclasses.dataclass(frozen=True, eq=True, repr=False)
class Normalization(Layer):
    r"""Feature-wise standardization with statistics of a data set, as ``keras.layers.Normalization``.

    .. math::
        y = \frac{x - \text{mean}}{\max(\sqrt{\text{variance}}, \epsilon)}
        \qquad\text{or, with } \texttt{invert=True},\qquad
        y = \text{mean} + x\,\max(\sqrt{\text{variance}}, \epsilon)

    ``mean`` and ``variance`` (population, ``/n``) are kept separately for each index of the kept ``axis`` and
    reduced over every other axis. They come either from the spec (``mean=``/``variance=``, fixed) or from a
    data set via :meth:`adapt`, which returns a new state; ``apply`` only reads the state.

    Attributes:
      axis: the axes that KEEP separate statistics (Keras's meaning, not the reduced axes): an int, a tuple of
        ints, or None (one scalar mean and variance over everything; Keras's ``axis=()`` is read as None).
        Default -1: one statistic per feature of the last axis.
      mean, variance: optional fixed statistics, both or neither: a float or a (nested) list of floats of rank
        at most the number of kept axes, broadcast to the kept axes' shape aligned from the right (Keras's
        rule). Stored as floats / nested tuples, so the spec stays hashable.
      invert: apply the inverse map (de-normalize).
      epsilon: floor of the standard deviation (1e-7, Keras's ``keras.config.epsilon()`` default), so a
        constant feature gives ``x - mean``, not inf or NaN.
      trainable: accepted for Keras configs (nothing is trained).

    State (``init``, ``adapt``): ``{'mean', 'variance', 'count'}``, float32 arrays of the kept axes' shape
    ``[x.shape[a] for a in sorted(axis)]`` (``()`` for ``axis=None``). ``count`` is the number of values
    reduced into each statistic (0 before ``adapt`` and for fixed statistics); float32, not int32, because an
    int32 count silently wraps past 2**31 values while float32 is exact to 2**24 and only rounds (relative
    6e-8, negligible as a merge weight) beyond. Before ``adapt`` the state is mean 0, variance 1, and
    ``apply`` is the identity: Keras 3 does the same (a jitted function cannot raise on values).

    ``init(key, x) -> ({}, state)``; ``adapt(data, state=None, *, batch_size=None) -> state`` (pure, one
    streaming pass); ``apply(params, state, x, *, training=None, mask=None) -> (y, state)``.

    Source: ``keras.layers.Normalization`` (Keras 3); the merge of batches is Chan, Golub & LeVeque 1979,
    "Updating formulae and a pairwise algorithm for computing sample variances".

    Example:
      >>> import numpy as np, jaxnorm
      >>> norm = jaxnorm.Normalization(axis=-1)
      >>> data = np.array([[0.0, 7.0, 4.0], [2.0, 9.0, 6.0], [0.0, 7.0, 4.0], [2.0, 9.0, 6.0]], np.float32)
      >>> params, state = norm.init(None, data)
      >>> state = norm.adapt(iter([data[:1], data[1:]]), state)  # any iterable of batches, or an array
      >>> print(state["mean"], state["variance"], state["count"])
      [1. 8. 5.] [1. 1. 1.] [4. 4. 4.]
      >>> y, state = norm.apply(params, state, np.array([[0.0, 7.0, 4.0]], np.float32))
      >>> print(y)
      [[-1. -1. -1.]]
    """

    axis: int | tuple[int, ...] | None = -1
    mean: Any = None
    variance: Any = None
    invert: bool = False
    epsilon: float = 1e-7
    trainable: bool = True

    KERAS = keras_config.KerasRecord(
        "Normalization",
        renamed={
            "axis": "axis", "mean": "mean", "variance": "variance", "invert": "invert", "trainable": "trainable",
        },
        equivalent={"epsilon": (lambda v: v == 1e-7, "epsilon=1e-7, keras.config.epsilon()'s default")},
        converts=False,  # the statistics are config entries: from_config / to_keras_config
    )

    def __post_init__(self) -> None:
        axis = self.axis
        if isinstance(axis, list | tuple) and not axis:
            axis = None  # Keras stores axis=None as ()
        if axis is not None:
            axis = validation.check_axes_static(axis, "axis")
        object.__setattr__(self, "axis", axis)
        validation.check_bool(self.invert, "invert")
        if (self.mean is None) != (self.variance is None):
            raise ValueError(
                f"`mean` and `variance` must be given together or not at all; got mean={self.mean!r} and "
                f"variance={self.variance!r}. Pass both, or neither and compute them with `adapt`."
            )
        if self.mean is not None:
            mean, variance = _freeze_stat(self.mean, "mean"), _freeze_stat(self.variance, "variance")
            mshape, vshape = np.shape(mean), np.shape(variance)
            if mshape != vshape:
                raise ValueError(
                    f"`mean` and `variance` must have the same shape; got mean of shape {mshape} and variance of "
                    f"shape {vshape}."
                )
            n_axes = 0 if axis is None else len(np.atleast_1d(axis))
            if len(mshape) > n_axes:
                raise ValueError(
                    f"`mean` and `variance` have rank {len(mshape)} (shape {mshape}) but axis={axis!r} keeps "
                    f"{n_axes} axes: their rank must be at most that (they broadcast to the kept axes)."
                )
            if np.any(np.asarray(variance) < 0):
                raise ValueError(f"`variance` must be >= 0, got {self.variance!r}.")
            object.__setattr__(self, "mean", mean)
            object.__setattr__(self, "variance", variance)
        self._post_init_common()

    def _kept_axes(self, ndim: int) -> tuple[int, ...]:
        return () if self.axis is None else validation.canonicalize_axes(self.axis, ndim, "axis")

    def get_config(self) -> dict[str, Any]:
        """The spec's hyperparameters as a JSON-serializable dict (``mean``/``variance`` as nested lists);
        ``Normalization.from_config`` inverts it and also reads a Keras ``Normalization.get_config()``."""
        config = super().get_config()
        config["mean"], config["variance"] = _to_list(self.mean), _to_list(self.variance)
        return config

    def init(self, key: Any, x: Any) -> tuple[Tree, Tree]:
        """Creates ``({}, state)`` for inputs like ``x`` (an array or a ``jax.ShapeDtypeStruct``).

        Args:
          key: unused (no random initialization); None is fine.
          x: example input, floating, of any rank containing ``axis``.

        Returns:
          ``params = {}`` and ``state = {'mean', 'variance', 'count'}``, float32 arrays of the kept axes' shape:
          the spec's fixed ``mean``/``variance`` broadcast to it (Keras's rule), else mean 0 and variance 1;
          ``count`` 0.

        Raises:
          TypeError: ``x`` is not floating.
          ValueError: ``axis`` is out of range or repeated for ``x``; the fixed ``mean``/``variance`` do not
            broadcast to the kept axes' shape.
        """
        del key
        shape, _ = layer.init_input(x)
        kshape = tuple(shape[a] for a in self._kept_axes(len(shape)))
        if self.mean is None:
            mean, variance = np.zeros(kshape, np.float32), np.ones(kshape, np.float32)
        else:
            try:
                mean = np.broadcast_to(np.asarray(self.mean, np.float32), kshape)
                variance = np.broadcast_to(np.asarray(self.variance, np.float32), kshape)
            except ValueError:
                raise ValueError(
                    f"`mean`/`variance` of shape {np.shape(self.mean)} do not broadcast to the kept axes' shape "
                    f"{kshape} (input shape {tuple(shape)}, axis={self.axis!r}). Give one value per kept index, "
                    "or a shape that broadcasts to it from the right (e.g. a scalar)."
                ) from None
        state = {"mean": mean, "variance": variance, "count": np.zeros(kshape, np.float32)}
        return {}, {k: jnp.asarray(v) for k, v in state.items()}

    def state_schema(self, x: Any) -> dict[str, layer.StateEntry]:
        """Normalization's state for inputs like ``x``: with ``K`` the kept axes' shape (``axis``), ``mean`` and
        ``variance`` (K, float32), the statistics it normalizes with (fixed, or from :meth:`adapt`), and
        ``count`` (K, float32), the number of values ``adapt`` has seen per index (Keras's ``count``)."""
        shape, _ = layer.init_input(x)
        kshape = tuple(shape[a] for a in self._kept_axes(len(shape)))
        f32 = jnp.dtype(jnp.float32)
        return {"mean": layer.StateEntry(kshape, f32, "mean it normalizes with"),
                "variance": layer.StateEntry(kshape, f32, "variance it normalizes with"),
                "count": layer.StateEntry(kshape, f32, "values adapt has seen")}

    def adapt(self, data: Any, state: Mapping[str, Any] | None = None, *, batch_size: int | None = None
              ) -> dict[str, jax.Array]:
        r"""Computes the mean and variance of ``data`` per kept index; pure: returns a new state.

        One streaming pass: each batch's ``(count, mean, M2)`` is computed on the device by the statistics
        kernel (shifted two-pass, float32, jitted: one compilation per batch shape), and merged into running
        totals held in float64 on the host with the exact pairwise update (Chan et al. 1979):
        :math:`M_2 = M_{2,a} + M_{2,b} + \delta^2 n_a n_b / n`. Float64 totals cost nothing (they have the
        kept axes' shape) and keep thousands of merges from accumulating float32 rounding; the per-batch
        statistics are shifted by a sample, so float32 loses nothing to a common offset (``1e4 + N(0, 1)``
        gives its variance to ~1e-6). Nothing but the current batch (and the previous one, still in flight)
        is held: the data set is never concatenated. The device runs one batch ahead of the host merge.
        (Keras's own ``adapt`` of a float32 NumPy array reduces with ``np.var`` in float32 and, over axis 0 of
        1e6 x 16 values ``1e4 + N(0, 1)``, returns variances near 17000; this one returns 1 to ~1e-7.)

        Args:
          data: the data set, either one array (NumPy, JAX, or anything ``np.asarray`` accepts, e.g. a nested
            list of numbers), or an iterable of batches read once: a generator, a list/tuple of arrays, a
            ``tf.data.Dataset``. A batch that is a tuple ``(x, y[, sample_weight])`` counts as ``x``, as in
            Keras. Each batch has the first's sizes along the kept axes; the reduced axes may differ
            (unequal batch sizes are fine). Float batches are reduced in float32 (float64 with
            ``jax_enable_x64``); integer and bool batches are cast to float32.
          state: optional state to continue from (``init``'s or a previous ``adapt``'s), so that
            ``adapt(b, adapt(a))`` equals ``adapt(a ++ b)`` to float rounding; None starts from nothing.
          batch_size: optional int > 0: arrays (the data or any batch) larger than it along their first reduced
            axis are processed in slices of that many entries of that axis (bounds device memory; compiles at
            most two shapes per array shape). None (default) slices to about 2**20 values each.

        Returns:
          The new state ``{'mean', 'variance', 'count'}``: float32 arrays of the kept axes' shape; variance is
          the population (``/n``) variance, as Keras's.

        Raises:
          ValueError: the spec has fixed ``mean``/``variance`` (Keras cannot adapt those either); ``data`` is
            empty (no batch, or no values); a batch's sizes along the kept axes differ from the first batch's or
            from ``state``'s (the message names the batch index and both shapes); ``axis`` is out of range for
            the data; ``batch_size`` is not a positive int.
          TypeError: ``data`` or a batch is not numeric; ``state`` is not a dict of float arrays.
        """
        if self.mean is not None:
            raise ValueError(
                f"This Normalization has fixed statistics (mean={_to_list(self.mean)!r}); `adapt` would "
                "discard them. Create the spec without `mean`/`variance` to compute them from data."
            )
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1
        ):
            raise ValueError(f"`batch_size` must be a positive int or None, got {batch_size!r}.")
        totals, expected, where = None, None, ""
        if state is not None:
            totals = self._totals_from_state(state)
            expected, where = totals[1].shape, f"`state` holds statistics of shape {totals[1].shape}"
        stream = streaming.StreamingMoments(totals)
        for index, raw in enumerate(_batches(data)):
            batch = _as_batch(raw, index)
            del raw
            kept = self._kept_axes(batch.ndim)
            kshape = tuple(batch.shape[a] for a in kept)
            if expected is None:
                expected, where = kshape, f"batch 0 has shape {tuple(batch.shape)}"
            if kshape != expected:
                raise ValueError(
                    f"`data` batch {index} has shape {tuple(batch.shape)}, whose sizes along axis={self.axis!r} "
                    f"are {kshape}, but {where} (sizes {expected}). Every batch must have the same sizes along "
                    "the kept axes; only the reduced axes may vary."
                )
            stream.add(batch, validation.complement_axes(kept, batch.ndim), batch_size)
            del batch
        totals = stream.totals()
        if stream.slices == 0:
            raise ValueError(
                "`data` is empty: it holds no values (no batch, or only empty ones). Pass a non-empty array or "
                "an iterable of non-empty batches."
            )
        assert totals is not None  # stream.slices > 0
        count, mean, m2 = totals
        return {k: jnp.asarray(v, jnp.float32) for k, v in
                (("mean", mean), ("variance", m2 / np.maximum(count, 1)), ("count", count))}

    def _totals_from_state(self, state: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        fix = "Pass the state returned by this spec's `init` or `adapt`, or None to start from nothing."
        if not isinstance(state, Mapping):
            raise TypeError(f"`state` must be a dict, got {type(state).__name__}. {fix}")
        given_mean: Any = state.get("mean")  # None when missing: check_tree below names it
        shape = jnp.shape(given_mean)
        checked = validation.check_tree(dict(state), {k: (shape, None) for k in _STATE_KEYS}, "state", fix)
        count = np.asarray(checked["count"], np.float64)
        if np.any(count < 0):
            raise ValueError(f"`state['count']` must be >= 0. {fix}")
        mean = np.asarray(checked["mean"], np.float64)
        return count, mean * (count > 0), np.asarray(checked["variance"], np.float64) * count

    def apply(
        self, params: Tree, state: Tree, x: jax.Array, *, training: bool | None = None, mask: jax.Array | None = None
    ) -> tuple[jax.Array, Tree]:
        r"""Standardizes ``x`` with the state's statistics: ``(x - mean) / max(sqrt(variance), epsilon)``.

        With ``invert=True`` returns ``mean + x * max(sqrt(variance), epsilon)`` instead. Computed in
        ``promote_types(x.dtype, float32)``; the output has ``x``'s dtype. Elementwise, so jit, vmap and grad
        apply directly (``dy/dx = 1 / max(sqrt(variance), epsilon)``).

        Args:
          params: ``{}`` from :meth:`init`.
          state: ``{'mean', 'variance', 'count'}`` from :meth:`init` or :meth:`adapt`, of the kept axes' shape
            (``count`` is not read: before ``adapt`` the statistics are 0 and 1, and ``y = x``, as in Keras 3).
          x: floating array of any rank containing ``axis``, with the kept axes' sizes of the state.
          training: optional Python bool, ignored (adapt is the only thing that changes the state).
          mask: optional mask by Keras's rules (boolean or nonzero = kept; broadcastable to ``x`` or of rank
            ``x.ndim - 1``), checked and
            otherwise without effect: each output depends only on the same position of ``x``, so masked-out
            positions are transformed too, as Keras's Normalization (which passes its mask through) does.

        Returns:
          ``(y, state)``: ``y`` of ``x``'s shape and dtype, and the state unchanged.

        Raises:
          TypeError: ``x`` not floating, ``mask`` complex, a string or not an array, ``training`` not a bool.
          ValueError: ``axis`` out of range for ``x``; ``x``'s sizes along ``axis`` differ from the state's
            shape; ``params`` not ``{}``; ``state`` keys wrong.
        """
        layer.check_training(training, "Normalization", required=False)
        x = validation.check_float_array(x, "x")
        kept = self._kept_axes(x.ndim)
        kshape = tuple(x.shape[a] for a in kept)
        validation.check_tree(params, {}, "params", "Normalization has no parameters: pass {}.")
        complete = isinstance(state, dict) and set(state) == set(_STATE_KEYS)
        shapes = {jnp.shape(state[k]) for k in _STATE_KEYS} if complete else set()
        if len(shapes) == 1 and shapes != {kshape}:  # a consistent state for another input: blame x
            raise ValueError(
                f"`x` has shape {x.shape}, whose sizes along axis={self.axis!r} are {kshape}, but the state's "
                f"statistics have shape {jnp.shape(state['mean'])}. Pass inputs with those feature sizes, or "
                "`init`/`adapt` a state for this input."
            )
        fix = "Pass the state returned by this spec's `init` or `adapt` for this input."
        checked = validation.check_tree(state, {k: (kshape, None) for k in _STATE_KEYS}, "state", fix)
        if mask is not None:
            validation.broadcast_mask(mask, x.shape, "mask")
        dtype = validation.stats_dtype(x.dtype)
        mean = validation.expand_to_rank(checked["mean"].astype(dtype), x.ndim, kept)
        std = jnp.maximum(jnp.sqrt(checked["variance"].astype(dtype)), jnp.asarray(self.epsilon, dtype))
        std = validation.expand_to_rank(std, x.ndim, kept)
        xs = x.astype(dtype)
        y = mean + xs * std if self.invert else (xs - mean) / std
        return y.astype(x.dtype), state
