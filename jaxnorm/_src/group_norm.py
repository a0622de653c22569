"""GroupNorm and InstanceNorm as pure init/apply specs with Keras ``GroupNormalization`` semantics."""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import jax

from jaxnorm._src import keras_config, normalize, validation
from jaxnorm._src.layer import Affine, Statistics
from jaxnorm._src.per_example import PerExample


def _channel_axis(axis: Any) -> int:
    if not isinstance(axis, numbers.Integral) or isinstance(axis, bool):
        raise TypeError(
            f"`axis` must be one int, the channel axis, got {axis!r} ({type(axis).__name__}). GroupNorm groups "
            "the channels of one axis; use -1 for channels-last or 1 for channels-first."
        )
    return int(axis)


def _write_keras_groups(spec: Any, config: dict[str, Any]) -> dict[str, Any]:
    """Keras's ``groups`` for a GroupNorm: -1 for one channel per group, Keras's default 32 for ``num_groups=None``
    with a group size (``group_size`` other than 1 is refused before, by the record's ``equivalent``)."""
    if spec.group_size == 1:
        config["groups"] = -1
    elif spec.num_groups is None:
        config["groups"] = 32
    return config


@dataclasses.dataclass(frozen=True, eq=True, repr=False)
class GroupNorm(Affine, Statistics, PerExample):
    r"""Group normalization (Wu & He 2018) as a pure spec: ``init`` and ``apply``.

    The channels (along ``axis``) are split into groups of consecutive channels; each example's group is
    normalized by its mean and variance over the group's channels and every other non-batch axis, then each
    channel is scaled and shifted:

    .. math::
        y = \frac{x - \mu_g}{\sqrt{\sigma_g^2 + \epsilon}}\,\text{scale}_c + \text{bias}_c

    One group is LayerNorm over all non-batch axes (with per-channel parameters); one channel per group
    (``num_groups=-1`` or ``group_size=1``) is :class:`InstanceNorm`. No moving statistics: the state is ``{}``
    and training and inference compute the same thing.

    The fields after ``epsilon`` are keyword-only.

    Attributes:
      num_groups: the number of groups (Keras's ``groups``, Flax's ``num_groups``); -1 means one group per
        channel (Keras's instance normalization). Give it or ``group_size``, not both; neither means 32, the
        default of Wu & He, Keras and Flax.
      group_size: the number of channels per group (Flax's ``group_size``).
      axis: int, the channel axis (-1: channels-last; 1: channels-first, as PyTorch's ``GroupNorm``).
      epsilon: float >= 0 added to the variance (Keras default 1e-3; Flax uses 1e-6, PyTorch 1e-5).
      use_scale, use_bias: learn ``scale`` (Keras ``scale``/``gamma``) and ``bias`` (``center``/``beta``).
      scale_init, bias_init: initializers ('ones', 'zeros'): Keras names or configs, or JAX initializers.
      param_dtype: dtype of ``scale`` and ``bias`` (float32).
      scale_regularizer, bias_regularizer, scale_constraint, bias_constraint, trainable: as :class:`LayerNorm`'s.
      dtype_policy: the Keras dtype policy of the layer this spec was converted from: None ('float32', the
        default), 'mixed_float16' or 'mixed_bfloat16'; written back as Keras's ``dtype`` by
        :meth:`to_keras_config` and :func:`jaxnorm.interop.to_keras`. It changes no number here: the output has
        the input's dtype and the statistics are float32, which is what the policy computes on half input.

    ``init(key, x) -> (params, {})`` with ``params = {'scale', 'bias'}`` of shape ``(x.shape[axis],)``, the tree
    of ``flax.linen.GroupNorm`` and of Keras's ``gamma``/``beta``.
    ``apply(params, state, x, *, training=None, mask=None) -> (y, {})``; the batch is axis 0 and ``mask``
    (broadcastable to ``x``) selects the positions that enter the statistics.

    Raises (at ``init``/``apply``): ``ValueError`` when the groups do not divide the channels, naming both.

    Source: Wu & He 2018, "Group Normalization"; semantics and defaults of ``keras.layers.GroupNormalization``,
    tree of ``flax.linen.GroupNorm``.

    Example:
      >>> import jax, jax.numpy as jnp, jaxnorm
      >>> gn = jaxnorm.GroupNorm(num_groups=2, epsilon=0.0)
      >>> x = jnp.array([[1.0, 3.0, 10.0, 30.0]])
      >>> params, state = gn.init(jax.random.key(0), x)
      >>> print(gn.apply(params, state, x)[0])
      [[-1.  1. -1.  1.]]
    """

    num_groups: int | None = None
    group_size: int | None = None
    axis: int = -1
    epsilon: float = 1e-3

    KERAS = keras_config.KerasRecord(
        "GroupNormalization",
        renamed={**keras_config.AFFINE_RENAMES, "groups": "num_groups"},
        equivalent={
            "group_size": (lambda v: v in (None, 1), "a number of groups, group_size=None (or 1: groups=-1)"),
        },
        params=keras_config.AFFINE_WEIGHTS,
        write=_write_keras_groups,
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "axis", _channel_axis(self.axis))
        validation.check_groups_static(self.num_groups, self.group_size)
        self._post_init_common()

    def _param_axes(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        normalize.check_batched(shape, "GroupNorm")
        (c,) = validation.canonicalize_axes(self.axis, len(shape), "axis")
        validation.resolve_groups(self.num_groups, self.group_size, shape[c], c)
        return (c,)

    def _normalize(
        self, params: dict[str, jax.Array], x: jax.Array, axes: tuple[int, ...], mask: jax.Array | None
    ) -> jax.Array:
        (c,) = axes
        groups = validation.resolve_groups(self.num_groups, self.group_size, x.shape[c], c)
        scale, bias = self._expanded(params, x.ndim, axes)
        reduce = normalize.group_reduce_axes(c, x.ndim)
        return normalize.normalize_groups(x, scale, bias, c, groups, reduce, self.epsilon, mask,
                                     extreme_range=self.extreme_range)



@dataclasses.dataclass(frozen=True, eq=True, repr=False)
class InstanceNorm(Affine, Statistics, PerExample):
    r"""Instance normalization (Ulyanov et al. 2016) as a pure spec: ``init`` and ``apply``.

    Each example's channels are normalized separately over every axis but the batch (axis 0) and ``axis``:

    .. math::
        y_{n,c} = \frac{x_{n,c} - \mu_{n,c}}{\sqrt{\sigma_{n,c}^2 + \epsilon}}\,\text{scale}_c + \text{bias}_c

    It is :class:`GroupNorm` with ``group_size=1`` (Keras's ``GroupNormalization(groups=-1)``, the form in which
    Keras configs describe it), Flax's ``InstanceNorm``, and PyTorch's ``InstanceNorm{1,2,3}d(affine=True)``
    with ``axis=1``. No moving statistics: the state is ``{}``.

    The fields after ``epsilon`` are keyword-only.

    Attributes:
      axis: int or sequence of ints, the channel (feature) axes, never 0 (default -1; Flax's ``feature_axes``).
      epsilon: float >= 0 added to the variance (1e-3, as Keras's ``GroupNormalization``; Flax uses 1e-6,
        PyTorch 1e-5).
      use_scale, use_bias, scale_init, bias_init, param_dtype, scale_regularizer, bias_regularizer,
      scale_constraint, bias_constraint, trainable, dtype_policy: as :class:`GroupNorm`'s.

    ``init(key, x) -> (params, {})`` with ``params = {'scale', 'bias'}`` of shape ``[x.shape[a] for a in
    axis]``, the tree of ``flax.linen.InstanceNorm``. ``apply(params, state, x, *, training=None, mask=None)
    -> (y, {})``.

    Source: Ulyanov, Vedaldi & Lempitsky 2016, "Instance Normalization: The Missing Ingredient for Fast
    Stylization"; ``flax.linen.InstanceNorm``; ``keras.layers.GroupNormalization(groups=-1)``.

    Example:
      >>> import jax, jax.numpy as jnp, jaxnorm
      >>> inorm = jaxnorm.InstanceNorm(epsilon=0.0)
      >>> x = jnp.array([[[1.0, 10.0], [3.0, 30.0]]])  # (batch, length, channels)
      >>> params, state = inorm.init(jax.random.key(0), x)
      >>> print(inorm.apply(params, state, x)[0][0])
      [[-1. -1.]
       [ 1.  1.]]
    """

    axis: int | tuple[int, ...] = -1
    epsilon: float = 1e-3

    KERAS = keras_config.KerasRecord(
        "GroupNormalization",
        renamed=keras_config.AFFINE_RENAMES,
        restricted={
            "groups": (lambda v: v == -1, "-1 (one group per channel); other values: use jaxnorm.GroupNorm"),
        },
        equivalent={"axis": (lambda v: isinstance(v, int), "one channel axis (an int)")},
        fixed={"groups": -1},
        params=keras_config.AFFINE_WEIGHTS,
        reads=False,  # from_keras reads a GroupNormalization as GroupNorm (groups = the channels when built)
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "axis", validation.check_axes_static(self.axis, "axis"))
        self._post_init_common()

    def _param_axes(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return normalize.instance_feature_axes(self.axis, len(shape))

    def _normalize(
        self, params: dict[str, jax.Array], x: jax.Array, axes: tuple[int, ...], mask: jax.Array | None
    ) -> jax.Array:
        scale, bias = self._expanded(params, x.ndim, axes)
        reduce = normalize.instance_reduce_axes(axes, x.ndim)
        return normalize.normalize_by_moments(x, scale, bias, reduce, self.epsilon, mask,
                                        extreme_range=self.extreme_range)[0]
