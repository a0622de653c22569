"""The activation normalizations of :mod:`jaxnorm.nnx` (``BatchNorm``, ``GroupNorm``, ``InstanceNorm``,
``LayerNorm``, ``RMSNorm``)."""

from __future__ import annotations

import math
import typing as tp
from types import MappingProxyType

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx import rnglib
from flax.nnx.module import first_from
from flax.nnx.nn import dtypes, initializers
from flax.typing import Axes, Dtype, Initializer, PromoteDtypeFn
from jax import lax

from jaxnorm._src import flax_compat, moving, validation
from jaxnorm._src.flax_compat import flax_groups, sync_axis

_MOVING = moving.DROP_IN_OPTIONS  # the defaults of jaxnorm's moving-statistics options: one home


_ZEROS_INIT = initializers.zeros_init()  # Flax's default objects, so signatures compare equal
_ONES_INIT = initializers.ones_init()

_NO_USE_RUNNING_AVERAGE = (
    "No `use_running_average` argument was provided to BatchNorm."
    " Consider one of the following options:\n\n"
    "1. Pass `use_running_average` to the BatchNorm constructor:\n\n"
    "  self.bn = nnx.BatchNorm(..., use_running_average=True/False)\n\n"
    "2. Pass `use_running_average` to the BatchNorm __call__:\n\n"
    "  self.bn(x, use_running_average=True/False)\n\n"
    "3. Use `nnx.view` to create a view of the model with a"
    " specific `use_running_average` value:\n\n"
    "  model_view = nnx.view(model, use_running_average=True/False)\n"
)


def _check_variables(
    module: nnx.Module, x_shape: tuple[int, ...], feature_axes: tuple[int, ...], names: tp.Iterable[str]
) -> None:
    """Raises ``ValueError`` naming ``<Class>.<name>`` when a stored variable (after ``nnx.merge``/``nnx.update``
    of a state for another feature count, or a layer built with another ``num_features``) does not hold one
    value per feature of ``x``, instead of a reshape error deep inside."""
    need = tuple(x_shape[a] for a in feature_axes)
    owner = type(module).__name__
    for name in names:
        var = getattr(module, name, None)
        if var is not None:
            validation.fit_variable(
                var[...], need, f"{owner}.{name}",
                f"It must hold one value per feature of x (shape {tuple(x_shape)}, features {need}). Build the "
                f"layer with num_features={math.prod(need)} for this input, or merge a state saved for a layer of "
                "this input's feature count.",
            )


class _Normalization(nnx.Module):
    """What the activation-normalization drop-ins share: Flax's plain attributes (kept by
    :func:`_keep_arguments`) and jaxnorm's ``extreme_range``."""

    num_features: int
    epsilon: float
    dtype: Dtype | None
    param_dtype: Dtype
    use_bias: bool
    use_scale: bool
    reduction_axes: tp.Any
    feature_axes: tp.Any
    axis_name: tp.Any
    axis_index_groups: tp.Any
    use_fast_variance: bool
    promote_dtype: PromoteDtypeFn
    extreme_range: bool
    scale_offset: float  # LayerNorm's and RMSNorm's only


def _keep_arguments(module: _Normalization, arguments: tp.Mapping[str, tp.Any]) -> None:
    """Stores the constructor's arguments as Flax's class does (the attributes of ``_FLAX_ATTRIBUTES`` it
    takes, in that order), then jaxnorm's ``extreme_range``, checked."""
    for name in _FLAX_ATTRIBUTES:
        if name in arguments:
            setattr(module, name, arguments[name])
    module.extreme_range = validation.check_bool(arguments["extreme_range"], "extreme_range")
    if "scale_offset" in arguments:  # LayerNorm's and RMSNorm's
        module.scale_offset = validation.check_scale_offset(arguments["scale_offset"], arguments["use_scale"])


#: The plain attributes Flax's normalization classes keep, in Flax's order.
_FLAX_ATTRIBUTES = (
    "num_features", "epsilon", "dtype", "param_dtype", "use_bias", "use_scale", "reduction_axes", "feature_axes",
    "axis_name", "axis_index_groups", "use_fast_variance", "promote_dtype",
)


def _promote(module: tp.Any, names: tuple[str, ...], scalars: tuple[str, ...] = ()) -> flax_compat.Promote:
    """NNX's variables and dtype rule: the learnable ``scalars`` (checked of shape ``()``) then the variables
    ``names`` (checked to hold one value per feature of ``x``), read (None where disabled) and promoted with ``x``
    by the module's ``promote_dtype``; the output dtype is ``canonicalize_dtype`` of ``x`` and the params."""

    def promote(x: jax.Array, feature_axes: tuple[int, ...]) -> tuple[jax.Array, list[tp.Any], tp.Any]:
        _check_variables(module, jnp.shape(x), feature_axes, names)
        for name in scalars:
            validation.fit_variable(getattr(module, name)[...], (), f"{type(module).__name__}.{name}",
                                    "It is one learnable scalar; merge a state saved for this layer.", exact=True)
        values = [None if getattr(module, n) is None else getattr(module, n)[...] for n in (*scalars, *names)]
        x, *values = module.promote_dtype((x, *values), dtype=module.dtype)
        params = [v for n, v in zip((*scalars, *names), values, strict=True) if n not in ("mean", "var")]
        return x, values, dtypes.canonicalize_dtype(x, *params, dtype=module.dtype)

    return promote


def _affine_param(
    use: bool, init: Initializer, rngs: rnglib.Rngs, shape: tp.Sequence[int], dtype: Dtype,
    metadata: tp.Mapping[str, tp.Any],
) -> nnx.Param | None:
    """An ``nnx.Param`` created as Flax creates ``scale``/``bias``, or ``nnx.data(None)`` when disabled."""
    return nnx.Param(init(rngs.params(), shape, dtype), **metadata) if use else nnx.data(None)


class BatchNorm(nnx.Module):
    r"""Batch normalization, a drop-in for ``flax.nnx.BatchNorm`` with stable statistics.

    .. math::
        y = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} \cdot \text{scale} + \text{bias}

    In training (``use_running_average=False``, or after ``model.train()``) :math:`\mu, \sigma^2` are the batch
    mean and (biased, two-pass) variance over every axis but ``axis``, and the ``nnx.BatchStat`` ``mean`` and
    ``var`` are updated in place, ``mean = momentum * mean + (1 - momentum) * batch_mean`` (under
    ``stop_gradient``, as in Flax), per feature: a feature with no valid element in the batch (all masked, or
    an empty batch) or with non-finite batch statistics keeps its ``mean`` and ``var`` bit for bit (Flax would
    write NaN there, or drift an all-masked feature toward 0). In evaluation (``use_running_average=True``,
    ``model.eval()`` or ``nnx.view(model, use_running_average=True)``) the stored ``mean``/``var`` are used.

    Args:
      num_features: int, the size of the feature axis.
      use_running_average: bool or None (False); the default for ``__call__``'s argument, which wins when
        given. None with no call argument raises ``ValueError``.
      axis: int, the feature axis (-1: channels-last; 1: channels-first).
      momentum: float, decay of the running averages (0.99).
      epsilon: float added to the variance (1e-5).
      dtype: output and compute dtype handed to ``promote_dtype`` (None: inferred from ``x`` and the
        variables, float32 for a bf16 input with float32 params).
      param_dtype: dtype of ``scale`` and ``bias`` (float32); ``mean``/``var`` are float32.
      use_bias: create ``bias`` (an ``nnx.Param``; otherwise ``self.bias`` is None).
      use_scale: create ``scale`` (an ``nnx.Param``; otherwise ``self.scale`` is None).
      bias_init: initializer ``(key, shape, dtype) -> array`` of the bias (zeros).
      scale_init: initializer of the scale (ones).
      axis_name: None, or the named axis (or tuple of names) of an enclosing ``pmap``/``shard_map``/``vmap``
        over which the batch statistics are merged (exactly, count-weighted).
      axis_index_groups: None, or lists of device indices along ``axis_name``: statistics merged
        within each group (Flax's argument; exact, count-weighted).
      use_fast_variance: accepted for compatibility and ignored: the variance is always two-pass.
      promote_dtype: Flax's dtype-promotion function, called on ``(x, mean, var, scale, bias)``.
      rngs: ``nnx.Rngs``; ``rngs.params()`` is drawn for ``scale`` then ``bias``, as in Flax.
      bias_metadata, scale_metadata: metadata mappings given to the ``nnx.Param``.
      momentum_convention, moving_var_estimator, averaging, safe_update, count_steps: jaxnorm's moving-statistics
        options,
        after Flax's arguments, as in :class:`jaxnorm.BatchNorm` (the same rule): 'keras'/'torch',
        'biased'/'unbiased', 'exponential'/'cumulative'/'debiased', per-feature safe updates (False: as Flax),
        a step counter. The defaults are Flax's behaviour (with safe updates); 'cumulative', 'debiased' add the
        ``nnx.BatchStat`` ``steps`` (int32, per feature), ``count_steps=True`` an int32 scalar one.
      extreme_range: jaxnorm's option (not Flax's), keyword-only after Flax's arguments: False (default) keeps
        the statistics exact while deviations from the mean stay below ``2**50`` and the variance above about
        ``2**-100``; True makes them exact at any finite float32 magnitude, for one more pass over ``x``. A
        plain attribute, not in ``nnx.state``.

    Call ``__call__(x, use_running_average=None, *, mask=None)``:
      x: array whose ``axis`` has ``num_features`` entries; real floating (or integer, as in Flax).
      use_running_average: bool or None, see above.
      mask: optional array broadcastable to ``x`` (NumPy rules; cast to bool); only True positions enter the
        batch statistics (values elsewhere, even NaN, do not touch them). Every position is normalized (a
        NaN input stays NaN in ``y``).

    Returns:
      ``y`` of ``x``'s shape, in the dtype ``promote_dtype`` gives (``self.dtype`` if set).

    Raises:
      ValueError: ``axis_index_groups`` without a single ``axis_name``;
        no ``use_running_average`` anywhere; ``axis`` out of
        range; ``mask`` not broadcastable to ``x``; ``axis_name`` not bound; ``mean``/``var``/``scale``/``bias``
        not holding one value per feature of ``x`` (e.g. after ``nnx.merge`` of another layer's state; the
        message names ``BatchNorm.<variable>``; LayerNorm, RMSNorm, GroupNorm and InstanceNorm likewise).

    Source: mirrors ``flax.nnx.BatchNorm`` (Flax 0.12); Ioffe & Szegedy 2015, "Batch Normalization".
    Differences from Flax: two-pass variance (Flax's default ``E[x^2] - E[x]^2`` gives 0 or 8 for float32
    ``1e4 + N(0, 1)``; this gives 1) and exact count-weighted ``axis_name`` statistics.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from jaxnorm import nnx as jnnx
      >>> bn = jnnx.BatchNorm(2, momentum=0.0, rngs=nnx.Rngs(0))
      >>> x = 1e4 + jnp.array([[-1.0, 0.0], [1.0, 2.0]])
      >>> print(bn(x).round(3))
      [[-1. -1.]
       [ 1.  1.]]
      >>> print(bn.var[...])  # flax.nnx.BatchNorm gives [0. 0.] here
      [1. 1.]
      >>> bn.eval()  # use the running averages from now on
      >>> bn.use_running_average
      True
    """

    def __init__(
        self,
        num_features: int,
        *,
        use_running_average: bool | None = False,
        axis: int = -1,
        momentum: float = 0.99,
        epsilon: float = 1e-5,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Initializer = _ZEROS_INIT,
        scale_init: Initializer = _ONES_INIT,
        axis_name: str | None = None,
        axis_index_groups: tp.Any = None,
        use_fast_variance: bool = True,
        promote_dtype: PromoteDtypeFn = dtypes.promote_dtype,
        rngs: rnglib.Rngs,
        bias_metadata: tp.Mapping[str, tp.Any] = MappingProxyType({}),
        scale_metadata: tp.Mapping[str, tp.Any] = MappingProxyType({}),
        momentum_convention: str = _MOVING["momentum_convention"],
        moving_var_estimator: str = _MOVING["moving_var_estimator"],
        averaging: str = _MOVING["averaging"],
        safe_update: bool = _MOVING["safe_update"],
        count_steps: bool = _MOVING["count_steps"],
        extreme_range: bool = False,
    ):
        sync_axis(axis_name, axis_index_groups, "jaxnorm.nnx.BatchNorm")
        rule = moving.Rule(
            momentum, momentum_convention=momentum_convention, moving_var_estimator=moving_var_estimator,
            averaging=averaging, safe_update=safe_update, count_steps=count_steps,
        )
        feature_shape = (num_features,)
        self.mean = nnx.BatchStat(jnp.zeros(feature_shape, jnp.float32))
        self.var = nnx.BatchStat(jnp.ones(feature_shape, jnp.float32))
        if rule.keeps_counter:
            self.steps = nnx.BatchStat(jnp.zeros(rule.steps_shape(feature_shape), jnp.int32))
        # scale before bias: the same rngs.params() draws as Flax.
        self.scale = _affine_param(use_scale, scale_init, rngs, feature_shape, param_dtype, scale_metadata)
        self.bias = _affine_param(use_bias, bias_init, rngs, feature_shape, param_dtype, bias_metadata)

        self.num_features = num_features
        self.use_running_average = use_running_average
        self.axis = axis
        self.momentum = momentum
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.use_bias = use_bias
        self.use_scale = use_scale
        self.axis_name = axis_name
        self.axis_index_groups = axis_index_groups
        self.use_fast_variance = use_fast_variance
        self.promote_dtype = promote_dtype
        self.extreme_range = validation.check_bool(extreme_range, "extreme_range")
        self.momentum_convention, self.averaging = momentum_convention, averaging
        self.moving_var_estimator = moving_var_estimator
        self.safe_update, self.count_steps = safe_update, count_steps

    def __call__(
        self, x: jax.Array, use_running_average: bool | None = None, *, mask: jax.Array | None = None
    ) -> jax.Array:
        """Normalizes ``x`` (batch statistics, or running averages); see the class docstring."""
        use_running_average = first_from(
            use_running_average, self.use_running_average, error_msg=_NO_USE_RUNNING_AVERAGE
        )
        # Built from the attributes as they are now: NNX attributes are mutable (`bn.momentum = 0.5` between
        # calls works, as in Flax), so the rule built (and checked) in __init__ may be stale.
        rule = moving.Rule(self.momentum, **{k: getattr(self, k) for k in moving.DROP_IN_OPTIONS})
        keys = ("mean", "var", "steps") if rule.keeps_counter else ("mean", "var")
        y, new = flax_compat.batch_norm(
            self, x, bool(use_running_average), mask, _promote(self, ("mean", "var", "scale", "bias")),
            {k: getattr(self, k)[...] for k in keys}, rule,
        )
        for k, v in (new or {}).items():
            getattr(self, k).set_value(lax.stop_gradient(v))  # set_value: a scalar counter may become per-feature
        return y

    def set_view(self, use_running_average: bool | None = None) -> None:
        """Used by ``nnx.view``: sets ``use_running_average`` when it is not None.

        Args:
          use_running_average: if True, the stored batch statistics will be used instead of computing the
            batch statistics on the input.
        """
        if use_running_average is not None:
            self.use_running_average = use_running_average


class LayerNorm(_Normalization):
    r"""Layer normalization, a drop-in for ``flax.nnx.LayerNorm`` with stable statistics.

    .. math::
        y = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} \cdot \text{scale} + \text{bias}, \qquad
        \mu, \sigma^2 = \text{mean and (biased, two-pass) variance of } x \text{ over reduction\_axes}

    Args:
      num_features: int, the number of entries of ``scale`` and ``bias``: the product of the sizes of
        ``feature_axes`` (as in Flax, ``(num_features,)`` is reshaped onto them).
      epsilon: float added to the variance (1e-6).
      dtype: output and compute dtype handed to ``promote_dtype`` (None: inferred).
      param_dtype: dtype of ``scale`` and ``bias`` (float32).
      use_bias: create ``bias`` (an ``nnx.Param``; otherwise ``self.bias`` is None).
      use_scale: create ``scale`` (an ``nnx.Param``; otherwise ``self.scale`` is None).
      bias_init: initializer ``(key, shape, dtype) -> array`` of the bias (zeros).
      scale_init: initializer of the scale (ones).
      reduction_axes: int or tuple of ints, the axes the statistics are taken over (-1).
      feature_axes: int or tuple of ints, the axes ``scale`` and ``bias`` span (-1).
      axis_name: None, or the named axis (or tuple of names) of an enclosing ``pmap``/``shard_map``/``vmap``
        across which the reduced axes are split; statistics are merged exactly (count-weighted).
      axis_index_groups: None, or lists of device indices along ``axis_name``: statistics merged
        within each group (Flax's argument; exact, count-weighted).
      use_fast_variance: accepted for compatibility and ignored: the variance is always two-pass.
      promote_dtype: Flax's dtype-promotion function, called on ``(x, scale, bias)``.
      rngs: ``nnx.Rngs``; ``rngs.params()`` is drawn for ``scale`` then ``bias``, as in Flax.
      bias_metadata, scale_metadata: metadata mappings given to the ``nnx.Param``.
      extreme_range: jaxnorm's option (not Flax's), keyword-only after Flax's arguments: False (default) keeps
        the statistics exact while deviations from the mean stay below ``2**50`` and the variance above about
        ``2**-100``; True makes them exact at any finite float32 magnitude, for one more pass over ``x``. A
        plain attribute, not in ``nnx.state``.
      scale_offset: jaxnorm's option (not Flax's), keyword-only: a float added to ``scale`` before it
        multiplies (0.0); 1.0 reads a zero-centred scale stored as ``gamma - 1`` (Gemma's checkpoints), as in
        :func:`jaxnorm.layer_norm`. Pair it with ``scale_init=nnx.initializers.zeros``. A plain attribute.

    Call ``__call__(x, *, mask=None)``:
      x: array of any rank; real floating (or integer, as in Flax).
      mask: optional array broadcastable to ``x`` (cast to bool) that marks the positions entering each
        example's statistics; the others, NaN included, leave them untouched. Every position is normalized
        (NaN input stays NaN in ``y``).

    Returns:
      ``y`` of ``x``'s shape, in the dtype ``promote_dtype`` gives (``self.dtype`` if set).

    Raises:
      ValueError: ``axis_index_groups`` without a single ``axis_name``;
        an axis out of range or repeated; ``mask`` not
        broadcastable to ``x``; ``axis_name`` not bound.

    Source: mirrors ``flax.nnx.LayerNorm`` (Flax 0.12); Ba, Kiros & Hinton 2016, "Layer Normalization".
    Differences from Flax: two-pass variance (stable on inputs with a large offset, where Flax's default
    cancels) and exact count-weighted ``axis_name`` statistics.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from jaxnorm import nnx as jnnx
      >>> ln = jnnx.LayerNorm(2, rngs=nnx.Rngs(0))
      >>> x = 1e4 + jnp.array([[-1.0, 1.0], [0.0, 2.0]])
      >>> print(ln(x).round(3))  # flax.nnx.LayerNorm gives +-1000 here
      [[-1.  1.]
       [-1.  1.]]
      >>> sorted(nnx.to_pure_dict(nnx.state(ln)))
      ['bias', 'scale']
    """

    def __init__(
        self,
        num_features: int,
        *,
        epsilon: float = 1e-6,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Initializer = _ZEROS_INIT,
        scale_init: Initializer = _ONES_INIT,
        reduction_axes: Axes = -1,
        feature_axes: Axes = -1,
        axis_name: str | None = None,
        axis_index_groups: tp.Any = None,
        use_fast_variance: bool = True,
        promote_dtype: PromoteDtypeFn = dtypes.promote_dtype,
        rngs: rnglib.Rngs,
        bias_metadata: tp.Mapping[str, tp.Any] = MappingProxyType({}),
        scale_metadata: tp.Mapping[str, tp.Any] = MappingProxyType({}),
        extreme_range: bool = False,
        scale_offset: float = 0.0,
    ):
        sync_axis(axis_name, axis_index_groups, "jaxnorm.nnx.LayerNorm")
        feature_shape = (num_features,)
        # scale before bias: the same rngs.params() draws as Flax.
        self.scale = _affine_param(use_scale, scale_init, rngs, feature_shape, param_dtype, scale_metadata)
        self.bias = _affine_param(use_bias, bias_init, rngs, feature_shape, param_dtype, bias_metadata)

        _keep_arguments(self, locals())

    # the core this layer calls and its params, which AddLayerNorm, LayerNormFP8 and the like inherit
    _NORM = staticmethod(flax_compat.layer_norm)
    _PARAMS: tp.ClassVar[tuple[str, ...]] = ("scale", "bias")

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        """Normalizes each example of ``x`` over ``reduction_axes``; see the class docstring."""
        return self._NORM(self, x, mask, _promote(self, self._PARAMS))


class RMSNorm(_Normalization):
    r"""Root-mean-square normalization, a drop-in for ``flax.nnx.RMSNorm`` (same arguments and state).

    .. math::
        y = \frac{x}{\sqrt{\langle x^2\rangle + \epsilon}} \cdot \text{scale}

    Args:
      num_features: size of the feature axes (``scale`` has shape ``(num_features,)``).
      epsilon: float added to the mean of squares (1e-6).
      dtype: output dtype; None infers it from the input and ``scale`` as Flax does.
      param_dtype: dtype of ``scale`` (float32).
      use_scale: learn ``scale``.
      scale_init: initializer of ``scale`` (ones).
      reduction_axes, feature_axes: as ``flax.nnx.RMSNorm`` (-1 and -1).
      axis_name: None, or the named axis (or tuple of names) of an enclosing ``pmap``/``shard_map``/``vmap``;
        the statistic is then merged exactly (count-weighted).
      axis_index_groups: None, or lists of device indices along ``axis_name`` (merged within each group).
      use_fast_variance: accepted for compatibility.
      promote_dtype: Flax's dtype promotion function.
      rngs: ``nnx.Rngs`` for the initializer.
      scale_metadata: metadata of the ``scale`` ``nnx.Param``.
      extreme_range: jaxnorm's option (not Flax's), keyword-only after Flax's arguments: False (default) keeps
        the statistic exact while the values stay below ``2**50`` and their mean square above about
        ``2**-100``; True makes it exact at any finite float32 magnitude, for one more pass over ``x``. A plain
        attribute, not in ``nnx.state``.
      scale_offset: jaxnorm's option (not Flax's), keyword-only: a float added to ``scale`` before it
        multiplies (0.0); 1.0 reads a zero-centred scale stored as ``gamma - 1`` (Gemma's checkpoints), as in
        :func:`jaxnorm.layer_norm`. Pair it with ``scale_init=nnx.initializers.zeros``. A plain attribute.

    ``__call__(x, *, mask=None)`` returns ``y`` of ``x``'s shape; ``mask`` (broadcastable to ``x``) selects the
    positions that enter each example's mean of squares.

    Raises:
      ValueError: ``axis_index_groups`` without a single ``axis_name``; an axis out of range; ``mask`` not
        broadcastable to ``x``; ``axis_name`` not bound.

    Source: mirrors ``flax.nnx.RMSNorm`` (Flax 0.12); Zhang & Sennrich 2019.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from jaxnorm import nnx as jnnx
      >>> rms = jnnx.RMSNorm(2, epsilon=0.0, rngs=nnx.Rngs(0))
      >>> print(rms(jnp.array([[1.0, 7.0], [-2.0, 2.0]])))
      [[ 0.2  1.4]
       [-1.   1. ]]
    """

    def __init__(
        self,
        num_features: int,
        *,
        epsilon: float = 1e-6,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        use_scale: bool = True,
        scale_init: Initializer = _ONES_INIT,
        reduction_axes: Axes = -1,
        feature_axes: Axes = -1,
        axis_name: str | None = None,
        axis_index_groups: tp.Any = None,
        use_fast_variance: bool = True,
        promote_dtype: PromoteDtypeFn = dtypes.promote_dtype,
        rngs: rnglib.Rngs,
        scale_metadata: tp.Mapping[str, tp.Any] = MappingProxyType({}),
        extreme_range: bool = False,
        scale_offset: float = 0.0,
    ):
        sync_axis(axis_name, axis_index_groups, "jaxnorm.nnx.RMSNorm")
        feature_shape = (num_features,)
        self.scale = _affine_param(use_scale, scale_init, rngs, feature_shape, param_dtype, scale_metadata)
        _keep_arguments(self, locals())

    _NORM = staticmethod(flax_compat.rms_norm)
    _PARAMS: tp.ClassVar[tuple[str, ...]] = ("scale",)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """Divides each example of ``x`` by its root mean square over ``reduction_axes``; see the class."""
        return self._NORM(self, x, mask, _promote(self, self._PARAMS))


class GroupNorm(_Normalization):
    r"""Group normalization, a drop-in for ``flax.nnx.GroupNorm`` with stable statistics.

    .. math::
        y = \frac{x - \mu_g}{\sqrt{\sigma_g^2 + \epsilon}} \cdot \text{scale}_c + \text{bias}_c

    with the last axis's ``num_features`` channels split into ``num_groups`` groups of consecutive channels,
    statistics per example and group over the group's channels and ``reduction_axes``.

    Args:
      num_features: int, the number of channels (the last axis).
      num_groups: the number of groups (32); pass None to give ``group_size`` instead (exactly one of them).
      group_size: the number of channels per group (None).
      epsilon: float added to the variance (1e-6).
      dtype, param_dtype, use_bias, use_scale, bias_init, scale_init: as :class:`LayerNorm`'s.
      reduction_axes: None (every axis but the first, plus the channels) or the axes of the statistics, the
        last of which stands for the channel axis.
      axis_name, axis_index_groups, use_fast_variance, promote_dtype, rngs, bias_metadata, scale_metadata: as
        :class:`LayerNorm`'s.
      extreme_range: jaxnorm's option (not Flax's), keyword-only after Flax's arguments: False (default) keeps
        the statistics exact while deviations from the mean stay below ``2**50`` and the variance above about
        ``2**-100``; True makes them exact at any finite float32 magnitude, for one more pass over ``x``. A
        plain attribute, not in ``nnx.state``.

    ``__call__(x, *, mask=None)``: ``x`` of shape ``(..., num_features)``; ``mask`` broadcastable to ``x``.
    Returns ``y`` of ``x``'s shape in the dtype ``promote_dtype`` gives.

    Raises:
      ValueError: both or neither of ``num_groups``/``group_size``; groups not dividing ``num_features``;
        an axis out of range; a bad ``axis_index_groups``.

    Source: mirrors ``flax.nnx.GroupNorm`` (Flax 0.12); Wu & He 2018. Differences from Flax: two-pass variance
    and exact ``axis_name`` statistics.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from jaxnorm import nnx as jnnx
      >>> gn = jnnx.GroupNorm(4, num_groups=2, epsilon=0.0, rngs=nnx.Rngs(0))
      >>> print(gn(1e4 + jnp.array([[1.0, 3.0, 10.0, 30.0]])))
      [[-1.  1. -1.  1.]]
    """

    def __init__(
        self,
        num_features: int,
        num_groups: int | None = 32,
        group_size: int | None = None,
        *,
        epsilon: float = 1e-6,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Initializer = _ZEROS_INIT,
        scale_init: Initializer = _ONES_INIT,
        reduction_axes: Axes | None = None,
        axis_name: str | None = None,
        axis_index_groups: tp.Any = None,
        use_fast_variance: bool = True,
        promote_dtype: PromoteDtypeFn = dtypes.promote_dtype,
        rngs: rnglib.Rngs,
        bias_metadata: tp.Mapping[str, tp.Any] = MappingProxyType({}),
        scale_metadata: tp.Mapping[str, tp.Any] = MappingProxyType({}),
        extreme_range: bool = False,
    ):
        sync_axis(axis_name, axis_index_groups, "jaxnorm.nnx.GroupNorm")
        self.feature_axis = -1
        self.num_groups = flax_groups(num_groups, group_size, num_features)
        self.group_size = num_features // self.num_groups
        feature_shape = (num_features,)
        self.scale = _affine_param(use_scale, scale_init, rngs, feature_shape, param_dtype, scale_metadata)
        self.bias = _affine_param(use_bias, bias_init, rngs, feature_shape, param_dtype, bias_metadata)
        _keep_arguments(self, {k: v for k, v in locals().items() if k != "num_features"})

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        """Normalizes each example's channel groups of ``x``; see the class docstring."""
        return flax_compat.group_norm(self, x, mask, _promote(self, ("scale", "bias")), self.num_groups)


class InstanceNorm(_Normalization):
    r"""Instance normalization, a drop-in for ``flax.nnx.InstanceNorm`` with stable statistics.

    .. math::
        y_{n,c} = \frac{x_{n,c} - \mu_{n,c}}{\sqrt{\sigma_{n,c}^2 + \epsilon}} \cdot \text{scale}_c
        + \text{bias}_c

    with statistics over every axis but the batch (0) and ``feature_axes``.

    Args:
      num_features: int, the number of entries of ``scale``/``bias`` (the product of the ``feature_axes``
        sizes).
      epsilon: float added to the variance (1e-6).
      feature_axes: int or tuple of ints, the axes ``scale`` and ``bias`` span (-1); never 0.
      dtype, param_dtype, use_bias, use_scale, bias_init, scale_init, axis_name, axis_index_groups: as
        :class:`LayerNorm`'s (as in Flax, a disabled ``scale``/``bias`` is stored as a plain None).
      use_fast_variance, promote_dtype, rngs, bias_metadata, scale_metadata: as :class:`LayerNorm`'s.
      extreme_range: jaxnorm's option (not Flax's), keyword-only after Flax's arguments: False (default) keeps
        the statistics exact while deviations from the mean stay below ``2**50`` and the variance above about
        ``2**-100``; True makes them exact at any finite float32 magnitude, for one more pass over ``x``. A
        plain attribute, not in ``nnx.state``.

    ``__call__(x, *, mask=None)`` returns ``y`` of ``x``'s shape in the dtype ``promote_dtype`` gives.

    Raises:
      ValueError: ``feature_axes`` includes 0 or is out of range; a bad ``axis_index_groups``.

    Source: mirrors ``flax.nnx.InstanceNorm`` (Flax 0.12); Ulyanov, Vedaldi & Lempitsky 2016.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from jaxnorm import nnx as jnnx
      >>> inorm = jnnx.InstanceNorm(2, epsilon=0.0, rngs=nnx.Rngs(0))
      >>> print(inorm(jnp.array([[[1.0, 10.0], [3.0, 30.0]]]))[0])
      [[-1. -1.]
       [ 1.  1.]]
    """

    def __init__(
        self,
        num_features: int,
        *,
        epsilon: float = 1e-6,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Initializer = initializers.zeros,
        scale_init: Initializer = initializers.ones,
        feature_axes: Axes = -1,
        axis_name: str | None = None,
        axis_index_groups: tp.Any = None,
        use_fast_variance: bool = True,
        promote_dtype: PromoteDtypeFn = dtypes.promote_dtype,
        rngs: rnglib.Rngs,
        bias_metadata: tp.Mapping[str, tp.Any] = MappingProxyType({}),
        scale_metadata: tp.Mapping[str, tp.Any] = MappingProxyType({}),
        extreme_range: bool = False,
    ):
        sync_axis(axis_name, axis_index_groups, "jaxnorm.nnx.InstanceNorm")
        feature_shape = (num_features,)
        # As flax.nnx.InstanceNorm: scale before bias, and a disabled one is a plain None.
        self.scale = nnx.Param(scale_init(rngs.params(), feature_shape, param_dtype), **scale_metadata) \
            if use_scale else None
        self.bias = nnx.Param(bias_init(rngs.params(), feature_shape, param_dtype), **bias_metadata) \
            if use_bias else None
        _keep_arguments(self, locals())

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        """Normalizes each example's features of ``x``; see the class docstring."""
        return flax_compat.instance_norm(self, x, mask, _promote(self, ("scale", "bias")))
