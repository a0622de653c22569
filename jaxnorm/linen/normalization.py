"""The activation normalizations of :mod:`jaxnorm.linen` (``BatchNorm``, ``GroupNorm``, ``InstanceNorm``,
``LayerNorm``, ``RMSNorm``)."""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax.linen import dtypes, module
from flax.typing import Axes, Dtype, Initializer
from jax.nn import initializers
from jax.typing import ArrayLike

from jaxnorm._src import flax_compat, moving, validation

_MOVING = moving.DROP_IN_OPTIONS  # the defaults of jaxnorm's moving-statistics options: one home


def _check_fields(mdl: module.Module) -> None:
    """The construction checks of every normalization: the named axis with its device groups, ``extreme_range``."""
    flax_compat.sync_axis(mdl.axis_name, mdl.axis_index_groups, f"jaxnorm.linen.{type(mdl).__name__}")
    validation.check_bool(mdl.extreme_range, "extreme_range")
    if hasattr(mdl, "scale_offset"):  # LayerNorm's and RMSNorm's
        validation.check_scale_offset(mdl.scale_offset, mdl.use_scale)


def _promote(mdl: module.Module, names: tuple[str, ...], scalars: tuple[str, ...] = ()) -> flax_compat.Promote:
    """Linen's variables and dtype rule: the learnable ``scalars`` (shape ``()``, ``<name>_init_value``) then the
    params ``names`` created as Flax creates them (same order and keys, shape ``[x.shape[a] for a in
    feature_axes]``; None when disabled), and ``canonicalize_dtype`` of them and ``x``."""

    def promote(x: jax.Array, feature_axes: tuple[int, ...]) -> tuple[jax.Array, list[Any], Any]:
        shape = [x.shape[a] for a in feature_axes]
        values: list[Any] = [
            mdl.param(name, initializers.constant(getattr(mdl, f"{name}_init_value")), (), mdl.param_dtype)
            for name in scalars
        ]
        for name in names:
            p = None
            if getattr(mdl, f"use_{name}"):
                p = mdl.param(name, getattr(mdl, f"{name}_init"), shape, mdl.param_dtype)
                if not getattr(mdl, "force_float32_reductions", True):
                    p = jnp.asarray(p, mdl.param_dtype)
            values.append(p)
        return x, values, dtypes.canonicalize_dtype(x, *values, dtype=mdl.dtype)

    return promote


class BatchNorm(module.Module):
    r"""Batch normalization, a drop-in for ``flax.linen.BatchNorm`` with stable statistics.

    Each feature (along ``axis``) is normalized by statistics over every other axis:

    .. math::
        y = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} \cdot \text{scale} + \text{bias}

    In training (``use_running_average=False``) :math:`\mu, \sigma^2` are the batch mean and (biased, two-pass)
    variance, and the running statistics in ``batch_stats`` are updated as
    ``mean = momentum * mean + (1 - momentum) * batch_mean`` (same for ``var``), except while
    ``self.is_initializing()``, exactly as in Flax, per feature: a feature with no valid element in the batch
    (all masked, or an empty batch) or with non-finite batch statistics keeps its running ``mean`` and ``var``
    bit for bit (Flax would write NaN there, or drift an all-masked feature toward 0). In evaluation
    (``use_running_average=True``) the stored ``batch_stats['mean']`` and ``['var']`` are used and nothing is
    updated.

    Attributes:
      use_running_average: bool or None; the default for ``__call__``'s argument (merged with
        ``flax.linen.module.merge_param``: exactly one of the two must be given).
      axis: int or tuple of ints, the feature axes (-1: channels-last, 1: channels-first NCHW).
      momentum: float, decay of the running averages (0.99).
      epsilon: float added to the variance (1e-5).
      dtype: output dtype; None infers it Flax's way, ``result_type(x, scale, bias)`` (float32 for a bf16
        input with float32 params).
      param_dtype: dtype of ``scale`` and ``bias`` (float32).
      use_bias: learn ``params['bias']`` (beta).
      use_scale: learn ``params['scale']`` (gamma).
      bias_init: initializer ``(key, shape, dtype) -> array`` of the bias (zeros).
      scale_init: initializer of the scale (ones).
      axis_name: None, or the named axis (or tuple of names) of an enclosing ``pmap``/``shard_map``/``vmap``
        over which the batch statistics are merged (exactly, count-weighted). Not used during ``init``.
      axis_index_groups: None, or lists of device indices along ``axis_name``: statistics merged
        within each group (Flax's argument; exact, count-weighted).
      use_fast_variance: accepted for compatibility and ignored: the variance is always two-pass.
      force_float32_reductions: accepted; statistics are always computed in at least float32. As in Flax,
        False stores ``batch_stats`` in ``param_dtype`` (the checkpoint layout is unchanged).
      momentum_convention, moving_var_estimator, averaging, safe_update, count_steps: jaxnorm's moving-statistics
        options,
        after Flax's arguments, as in :class:`jaxnorm.BatchNorm` (the same rule, ``jaxnorm._src.moving``):
        'keras'/'torch' (which weight ``momentum`` is), 'biased'/'unbiased' running variance,
        'exponential'/'cumulative'/'debiased' averaging, per-feature safe updates (False: update regardless, as
        Flax), and a step counter. The defaults are Flax's behaviour (with safe updates); 'cumulative',
        'debiased' add ``batch_stats['steps']`` (int32, per feature), ``count_steps=True`` an int32 scalar one.
      extreme_range: jaxnorm's option (not Flax's), after Flax's arguments: False (default) keeps the statistics
        exact while deviations from the mean stay below ``2**50`` and the variance above about ``2**-100``;
        True makes them exact at any finite float32 magnitude, for one more pass over ``x``. A static option,
        not a variable.

    Call ``__call__(x, use_running_average=None, *, mask=None)``:
      x: array of any rank with the feature sizes used at ``init``; real floating (or integer, as in Flax).
      use_running_average: bool or None, see above.
      mask: optional array broadcastable to ``x`` (NumPy rules; cast to bool); only True positions enter
        the batch statistics, and values elsewhere (even NaN) do not touch them. Every position is
        normalized (a NaN input stays NaN in ``y``). Ignored with running averages.

    Returns:
      ``y`` of ``x``'s shape and dtype ``canonicalize_dtype(x, scale, bias, dtype=self.dtype)``.

    Variables:
      ``params``: ``scale`` and ``bias`` (when enabled) of shape ``[x.shape[a] for a in axis]`` and
      ``param_dtype``; ``batch_stats``: ``mean`` (zeros) and ``var`` (ones) of the same shape, float32
      (``param_dtype`` if ``force_float32_reductions=False``).

    Raises:
      ValueError: ``axis_index_groups`` without a single ``axis_name``;
        both or neither ``use_running_average`` given; an axis
        out of range or repeated; ``mask`` not broadcastable to ``x``; ``axis_name`` not bound; stored
        ``batch_stats['mean']``/``['var']`` not of the features' shape (the message names the variable; a
        wrong-shaped ``params`` entry raises Flax's own ``ScopeParamShapeError``).

    Source: mirrors ``flax.linen.BatchNorm`` (Flax 0.12); Ioffe & Szegedy 2015, "Batch Normalization".
    Differences from Flax: the variance is two-pass (Flax's default ``E[x^2] - E[x]^2`` returns 0 or 8 for
    float32 ``1e4 + N(0, 1)``; this returns 1), and ``axis_name`` statistics are exactly count-weighted;
    see the module docstring.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxnorm import linen as jnn
      >>> bn = jnn.BatchNorm(momentum=0.0)
      >>> x = 1e4 + jnp.array([[-1.0, 0.0], [1.0, 2.0]])
      >>> variables = bn.init(jax.random.key(0), x, use_running_average=False)
      >>> jax.tree.map(jnp.shape, variables)
      {'batch_stats': {'mean': (2,), 'var': (2,)}, 'params': {'bias': (2,), 'scale': (2,)}}
      >>> y, updates = bn.apply(variables, x, use_running_average=False, mutable=['batch_stats'])
      >>> print(y.round(3))  # flax.linen.BatchNorm gives +-316.2 here
      [[-1. -1.]
       [ 1.  1.]]
      >>> print(updates['batch_stats']['var'])  # flax.linen.BatchNorm gives [0. 0.]
      [1. 1.]
      >>> y = bn.apply({**variables, **updates}, x, use_running_average=True)
    """

    use_running_average: bool | None = None
    axis: int = -1
    momentum: float = 0.99
    epsilon: float = 1e-5
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Initializer = initializers.zeros
    scale_init: Initializer = initializers.ones
    axis_name: str | None = None
    axis_index_groups: Any = None
    use_fast_variance: bool = True
    force_float32_reductions: bool = True
    # jaxnorm's moving-statistics options (moving.DROP_IN_OPTIONS), after Flax's own arguments.
    momentum_convention: str = _MOVING["momentum_convention"]
    moving_var_estimator: str = _MOVING["moving_var_estimator"]
    averaging: str = _MOVING["averaging"]
    safe_update: bool = _MOVING["safe_update"]
    count_steps: bool = _MOVING["count_steps"]
    extreme_range: bool = False  # jaxnorm's static statistics option, after Flax's own arguments

    def __post_init__(self) -> None:
        _check_fields(self)
        _moving_rule(self)  # checks the moving-statistics options at construction
        super().__post_init__()

    @module.compact
    def __call__(
        self, x: ArrayLike, use_running_average: bool | None = None, *, mask: jax.Array | None = None
    ) -> jax.Array:
        """Normalizes ``x`` (batch statistics, or running averages); see the class docstring."""
        use_running_average = module.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        x = jnp.asarray(x)
        shape = tuple(x.shape[a] for a in validation.canonicalize_axes(self.axis, x.ndim, "axis"))
        rule = _moving_rule(self)
        # Variables exactly as Flax creates them (same order, so random initializers draw the same keys).
        dtype = jnp.float32 if self.force_float32_reductions else self.param_dtype
        stats = {
            "mean": self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, dtype), shape),
            "var": self.variable("batch_stats", "var", lambda s: jnp.ones(s, dtype), shape),
        }
        if rule.keeps_counter:
            stats["steps"] = self.variable("batch_stats", "steps", jnp.zeros, rule.steps_shape(shape), jnp.int32)
        for name in ("mean", "var"):  # a checkpoint for another feature count
            validation.fit_variable(
                stats[name].value, shape, f"batch_stats['{name}']", exact=True,
                fix=f"It must hold one value per feature of x along axis={self.axis!r} (x has shape {x.shape}). "
                "Load batch_stats saved for this layer with inputs of these features, or re-create them with "
                "`init`.",
            )

        def promote(x: jax.Array, feature_axes: tuple[int, ...]) -> tuple[jax.Array, list[Any], Any]:
            _, values, out_dtype = _promote(self, ("scale", "bias"))(x, feature_axes)
            return x, [stats["mean"].value, stats["var"].value, *values], out_dtype

        y, new = flax_compat.batch_norm(
            self, x, use_running_average, mask, promote, {k: v.value for k, v in stats.items()}, rule,
            update=not self.is_initializing(),
        )
        for k, v in (new or {}).items():
            stats[k].value = v
        return y


def _moving_rule(bn: BatchNorm) -> moving.Rule:
    """The drop-in's moving-statistics rule (a plain function: Flax wraps a module's methods, and a wrapped
    method called from ``__post_init__`` fails under ``nn.tabulate``'s interceptors)."""
    return moving.Rule(bn.momentum, **{k: getattr(bn, k) for k in moving.DROP_IN_OPTIONS})


class LayerNorm(module.Module):
    r"""Layer normalization, a drop-in for ``flax.linen.LayerNorm`` with stable statistics.

    Each example is normalized by its own statistics over ``reduction_axes``; ``scale`` and ``bias`` span
    ``feature_axes``:

    .. math::
        y = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} \cdot \text{scale} + \text{bias}, \qquad
        \mu, \sigma^2 = \text{mean and (biased, two-pass) variance of } x \text{ over reduction\_axes}

    ``reduction_axes=(1, 2, 3)`` on NHWC is GroupNorm with one group; ``reduction_axes=(1, 2),
    feature_axes=-1`` is InstanceNorm, exactly as in Flax.

    Attributes:
      epsilon: float added to the variance (1e-6).
      dtype: output dtype; None infers ``result_type(x, scale, bias)`` as Flax does.
      param_dtype: dtype of ``scale`` and ``bias`` (float32).
      use_bias: learn ``params['bias']``.
      use_scale: learn ``params['scale']``.
      bias_init: initializer ``(key, shape, dtype) -> array`` of the bias (zeros).
      scale_init: initializer of the scale (ones).
      reduction_axes: int or tuple of ints, the axes the statistics are taken over (-1).
      feature_axes: int or tuple of ints, the axes ``scale`` and ``bias`` span (-1).
      axis_name: None, or the named axis (or tuple of names) of an enclosing ``pmap``/``shard_map``/``vmap``
        across which the reduced axes are split; the statistics are then merged exactly (count-weighted).
      axis_index_groups: None, or lists of device indices along ``axis_name``: statistics merged
        within each group (Flax's argument; exact, count-weighted).
      use_fast_variance: accepted for compatibility and ignored: the variance is always two-pass.
      force_float32_reductions: accepted; statistics are always computed in at least float32.
      extreme_range: jaxnorm's option (not Flax's), after Flax's arguments: False (default) keeps the statistics
        exact while deviations from the mean stay below ``2**50`` and the variance above about ``2**-100``;
        True makes them exact at any finite float32 magnitude, for one more pass over ``x``. A static option,
        not a variable.
      scale_offset: jaxnorm's option (not Flax's), after ``extreme_range``: a float added to ``scale`` before
        it multiplies (0.0); 1.0 reads a zero-centred scale stored as ``gamma - 1`` (Gemma's checkpoints),
        as in :func:`jaxnorm.layer_norm`. Pair it with ``scale_init=nn.initializers.zeros``.

    Call ``__call__(x, *, mask=None)``:
      x: array of any rank; real floating (or integer, as in Flax).
      mask: optional array broadcastable to ``x`` (cast to bool); only True positions enter each example's
        statistics (values elsewhere, even NaN, do not touch them). Every position is normalized (a
        NaN input stays NaN in ``y``).

    Returns:
      ``y`` of ``x``'s shape and dtype ``canonicalize_dtype(x, scale, bias, dtype=self.dtype)``.

    Variables:
      ``params``: ``scale`` and ``bias`` (when enabled) of shape ``[x.shape[a] for a in feature_axes]`` and
      ``param_dtype``. No other collection.

    Raises:
      ValueError: ``axis_index_groups`` without a single ``axis_name``;
        an axis out of range or repeated; ``mask`` not
        broadcastable to ``x``; ``axis_name`` not bound.

    Source: mirrors ``flax.linen.LayerNorm`` (Flax 0.12); Ba, Kiros & Hinton 2016, "Layer Normalization".
    Differences from Flax: two-pass variance (Flax's default cancels on inputs with a large offset: float32
    ``1e4 + N(0, 1)`` rows come out scaled by ~1000 instead of unit variance) and exact count-weighted
    ``axis_name`` statistics; see the module docstring.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxnorm import linen as jnn
      >>> ln = jnn.LayerNorm()
      >>> x = 1e4 + jnp.array([[-1.0, 1.0], [0.0, 2.0]])
      >>> variables = ln.init(jax.random.key(0), x)
      >>> jax.tree.map(jnp.shape, variables)
      {'params': {'bias': (2,), 'scale': (2,)}}
      >>> print(ln.apply(variables, x).round(3))  # flax.linen.LayerNorm gives +-1000 here
      [[-1.  1.]
       [-1.  1.]]
    """

    epsilon: float = 1e-6
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Initializer = initializers.zeros
    scale_init: Initializer = initializers.ones
    reduction_axes: Axes = -1
    feature_axes: Axes = -1
    axis_name: str | None = None
    axis_index_groups: Any = None
    use_fast_variance: bool = True
    force_float32_reductions: bool = True
    extreme_range: bool = False  # jaxnorm's static statistics option, after Flax's own arguments
    scale_offset: float = 0.0  # jaxnorm's zero-centred scale: y = norm(x) * (scale + scale_offset)

    def __post_init__(self) -> None:
        _check_fields(self)
        super().__post_init__()

    # the core this layer calls and its params, which AddLayerNorm, LayerNormFP8 and the like inherit
    _NORM = staticmethod(flax_compat.layer_norm)
    _PARAMS: ClassVar[tuple[str, ...]] = ("scale", "bias")

    @module.compact
    def __call__(self, x: ArrayLike, *, mask: jax.Array | None = None) -> jax.Array:
        """Normalizes each example of ``x`` over ``reduction_axes``; see the class docstring."""
        return self._NORM(self, x, mask, _promote(self, self._PARAMS))


class RMSNorm(module.Module):
    r"""Root-mean-square normalization, a drop-in for ``flax.linen.RMSNorm``.

    .. math::
        y = \frac{x}{\sqrt{\langle x^2\rangle + \epsilon}} \cdot \text{scale}, \qquad
        \langle x^2\rangle = \text{mean of } x^2 \text{ over reduction\_axes}

    Attributes:
      epsilon: float added to the mean of squares (1e-6).
      dtype: output dtype; None infers ``result_type(x, scale)`` as Flax does.
      param_dtype: dtype of ``scale`` (float32).
      use_scale: learn ``params['scale']``.
      scale_init: initializer of the scale (ones).
      reduction_axes: int or tuple of ints, the axes the mean of squares is taken over (-1).
      feature_axes: int or tuple of ints, the axes ``scale`` spans (-1).
      axis_name: None, or the named axis (or tuple of names) of an enclosing ``pmap``/``shard_map``/``vmap``
        across which the reduced axes are split; the statistic is then merged exactly (count-weighted).
      axis_index_groups: None, or lists of device indices along ``axis_name`` (merged within each group).
      use_fast_variance: accepted for compatibility (RMSNorm has no variance to compute two ways).
      force_float32_reductions: accepted; the statistic is always computed in at least float32.
      extreme_range: jaxnorm's option (not Flax's), after Flax's arguments: False (default) keeps the statistic
        exact while the values stay below ``2**50`` and their mean square above about ``2**-100``; True makes
        it exact at any finite float32 magnitude, for one more pass over ``x``. A static option, not a
        variable.
      scale_offset: jaxnorm's option (not Flax's), after ``extreme_range``: a float added to ``scale`` before
        it multiplies (0.0); 1.0 reads a zero-centred scale stored as ``gamma - 1`` (Gemma's checkpoints),
        as in :func:`jaxnorm.layer_norm`. Pair it with ``scale_init=nn.initializers.zeros``.

    Call ``__call__(x, *, mask=None)``:
      x: array of any rank, floating.
      mask: optional array broadcastable to ``x`` (cast to bool); only True positions enter each example's
        mean of squares.

    Returns:
      ``y`` of ``x``'s shape and dtype ``canonicalize_dtype(x, scale, dtype=self.dtype)``.

    Variables:
      ``params``: ``scale`` (when enabled) of shape ``[x.shape[a] for a in feature_axes]`` and
      ``param_dtype``. No other collection.

    Raises:
      ValueError: ``axis_index_groups`` without a single ``axis_name``; an axis out of range or repeated;
        ``mask`` not broadcastable to ``x``; ``axis_name`` not bound.

    Source: mirrors ``flax.linen.RMSNorm`` (Flax 0.12); Zhang & Sennrich 2019, "Root Mean Square Layer
    Normalization". Differences from Flax: exact count-weighted ``axis_name`` statistics and the memory-light
    custom backward (see :func:`jaxnorm.rms_norm`).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxnorm import linen as jnn
      >>> rms = jnn.RMSNorm(epsilon=0.0)
      >>> x = jnp.array([[1.0, 7.0], [-2.0, 2.0]])
      >>> variables = rms.init(jax.random.key(0), x)
      >>> jax.tree.map(jnp.shape, variables)
      {'params': {'scale': (2,)}}
      >>> print(rms.apply(variables, x))
      [[ 0.2  1.4]
       [-1.   1. ]]
    """

    epsilon: float = 1e-6
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    use_scale: bool = True
    scale_init: Initializer = initializers.ones
    reduction_axes: Axes = -1
    feature_axes: Axes = -1
    axis_name: str | None = None
    axis_index_groups: Any = None
    use_fast_variance: bool = True
    force_float32_reductions: bool = True
    extreme_range: bool = False  # jaxnorm's static statistics option, after Flax's own arguments
    scale_offset: float = 0.0  # jaxnorm's zero-centred scale: y = norm(x) * (scale + scale_offset)

    def __post_init__(self) -> None:
        _check_fields(self)
        super().__post_init__()

    _NORM = staticmethod(flax_compat.rms_norm)
    _PARAMS: ClassVar[tuple[str, ...]] = ("scale",)

    @module.compact
    def __call__(self, x: ArrayLike, *, mask: jax.Array | None = None) -> jax.Array:
        """Divides each example of ``x`` by its root mean square over ``reduction_axes``; see the class."""
        return self._NORM(self, x, mask, _promote(self, self._PARAMS))


class GroupNorm(module.Module):
    r"""Group normalization, a drop-in for ``flax.linen.GroupNorm`` with stable statistics.

    The last axis (channels) is split into ``num_groups`` groups of consecutive channels; each example's group
    is normalized by its statistics over the group's channels and ``reduction_axes``:

    .. math::
        y = \frac{x - \mu_g}{\sqrt{\sigma_g^2 + \epsilon}} \cdot \text{scale}_c + \text{bias}_c

    Attributes:
      num_groups: the number of groups (32); pass None to give ``group_size`` instead (exactly one of them).
      group_size: the number of channels per group (None).
      epsilon: float added to the variance (1e-6).
      dtype: output dtype; None infers ``result_type(x, scale, bias)`` as Flax does.
      param_dtype: dtype of ``scale`` and ``bias`` (float32).
      use_bias, use_scale: learn ``params['bias']`` / ``params['scale']``.
      bias_init, scale_init: initializers (zeros, ones).
      reduction_axes: None (every axis but the first, plus the channels), or the axes of the statistics,
        which must end with the last (channel) axis; give it for inputs without a batch axis.
      axis_name, axis_index_groups: as :class:`LayerNorm`'s (exact, count-weighted merges).
      use_fast_variance: accepted for compatibility and ignored: the variance is always two-pass.
      force_float32_reductions: accepted; statistics are always computed in at least float32.
      extreme_range: jaxnorm's option (not Flax's), after Flax's arguments: False (default) keeps the statistics
        exact while deviations from the mean stay below ``2**50`` and the variance above about ``2**-100``;
        True makes them exact at any finite float32 magnitude, for one more pass over ``x``. A static option,
        not a variable.

    Call ``__call__(x, *, mask=None)``: ``x`` of shape ``(..., C)``; ``mask`` broadcastable to ``x``, True where
    a position enters the statistics.

    Returns:
      ``y`` of ``x``'s shape and dtype ``canonicalize_dtype(x, scale, bias, dtype=self.dtype)``.

    Variables:
      ``params``: ``scale`` and ``bias`` (when enabled) of shape ``(C,)`` and ``param_dtype``.

    Raises:
      ValueError: both or neither of ``num_groups``/``group_size``; groups not dividing ``C``;
        ``reduction_axes`` not ending with the last axis; an axis out of range; a bad ``axis_index_groups``.

    Source: mirrors ``flax.linen.GroupNorm`` (Flax 0.12); Wu & He 2018, "Group Normalization". Differences
    from Flax: two-pass variance (stable on offset data) and exact ``axis_name`` statistics.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxnorm import linen as jnn
      >>> gn = jnn.GroupNorm(num_groups=2, epsilon=0.0)
      >>> x = 1e4 + jnp.array([[1.0, 3.0, 10.0, 30.0]])
      >>> variables = gn.init(jax.random.key(0), x)
      >>> jax.tree.map(jnp.shape, variables)
      {'params': {'bias': (4,), 'scale': (4,)}}
      >>> print(gn.apply(variables, x))
      [[-1.  1. -1.  1.]]
    """

    num_groups: int | None = 32
    group_size: int | None = None
    epsilon: float = 1e-6
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Initializer = initializers.zeros
    scale_init: Initializer = initializers.ones
    reduction_axes: Axes | None = None
    axis_name: str | None = None
    axis_index_groups: Any = None
    use_fast_variance: bool = True
    force_float32_reductions: bool = True
    extreme_range: bool = False  # jaxnorm's static statistics option, after Flax's own arguments

    def __post_init__(self) -> None:
        _check_fields(self)
        super().__post_init__()

    @module.compact
    def __call__(self, x: ArrayLike, *, mask: jax.Array | None = None) -> jax.Array:
        """Normalizes each example's channel groups of ``x``; see the class docstring."""
        groups = flax_compat.flax_groups(self.num_groups, self.group_size, jnp.shape(x)[-1])
        return flax_compat.group_norm(self, x, mask, _promote(self, ("scale", "bias")), groups, channels_last=True)


class InstanceNorm(module.Module):
    r"""Instance normalization, a drop-in for ``flax.linen.InstanceNorm`` with stable statistics.

    Each example's features (``feature_axes``) are normalized separately over every other non-batch axis:

    .. math::
        y_{n,c} = \frac{x_{n,c} - \mu_{n,c}}{\sqrt{\sigma_{n,c}^2 + \epsilon}} \cdot \text{scale}_c
        + \text{bias}_c

    Attributes:
      epsilon: float added to the variance (1e-6).
      dtype, param_dtype, use_bias, use_scale, bias_init, scale_init: as :class:`GroupNorm`'s.
      feature_axes: int or tuple of ints, the axes ``scale`` and ``bias`` span (-1); never 0 (the batch).
      axis_name, axis_index_groups, use_fast_variance, force_float32_reductions: as :class:`LayerNorm`'s.
      extreme_range: jaxnorm's option (not Flax's), after Flax's arguments: False (default) keeps the statistics
        exact while deviations from the mean stay below ``2**50`` and the variance above about ``2**-100``;
        True makes them exact at any finite float32 magnitude, for one more pass over ``x``. A static option,
        not a variable.

    Call ``__call__(x, *, mask=None)`` as :class:`GroupNorm`.

    Returns:
      ``y`` of ``x``'s shape and dtype ``canonicalize_dtype(x, scale, bias, dtype=self.dtype)``.

    Variables:
      ``params``: ``scale`` and ``bias`` (when enabled) of shape ``[x.shape[a] for a in feature_axes]``.

    Raises:
      ValueError: ``feature_axes`` includes 0 or is out of range; a bad ``axis_index_groups``.

    Source: mirrors ``flax.linen.InstanceNorm`` (Flax 0.12); Ulyanov, Vedaldi & Lempitsky 2016.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxnorm import linen as jnn
      >>> x = jnp.array([[[1.0, 10.0], [3.0, 30.0]]])
      >>> inorm = jnn.InstanceNorm(epsilon=0.0)
      >>> print(inorm.apply(inorm.init(jax.random.key(0), x), x)[0])
      [[-1. -1.]
       [ 1.  1.]]
    """

    epsilon: float = 1e-6
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Initializer = initializers.zeros
    scale_init: Initializer = initializers.ones
    feature_axes: Axes = -1
    axis_name: str | None = None
    axis_index_groups: Any = None
    use_fast_variance: bool = True
    force_float32_reductions: bool = True
    extreme_range: bool = False  # jaxnorm's static statistics option, after Flax's own arguments

    def __post_init__(self) -> None:
        _check_fields(self)
        super().__post_init__()

    @module.compact
    def __call__(self, x: ArrayLike, *, mask: jax.Array | None = None) -> jax.Array:
        """Normalizes each example's features of ``x``; see the class docstring."""
        return flax_compat.instance_norm(self, x, mask, _promote(self, ("scale", "bias")))
