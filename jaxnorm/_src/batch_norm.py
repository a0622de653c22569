"""BatchNorm as a pure init/apply spec with Keras semantics."""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from jax import lax

from jaxnorm._src import collectives, frozen, keras_config, layer, moving, normalize, stats, validation
from jaxnorm._src.layer import Affine, Statistics, Tree

_RENORM_CLIPPING_KEYS = ("rmax", "rmin", "dmax")


def _check_renorm_clipping(clipping: Any) -> Any:
    """Validates Keras's ``renorm_clipping`` dict; returns it hashable (or None)."""
    clipping = frozen.thaw(clipping)
    if clipping is None:
        return None
    if not isinstance(clipping, Mapping):
        raise TypeError(
            f"`renorm_clipping` must be None or a dict with keys among {list(_RENORM_CLIPPING_KEYS)}, got "
            f"{clipping!r} ({type(clipping).__name__})."
        )
    unknown = sorted(set(clipping) - set(_RENORM_CLIPPING_KEYS))
    if unknown:
        raise ValueError(
            f"`renorm_clipping` has unknown key(s) {unknown}; the keys are 'rmax', 'rmin' (bounds of r) and "
            f"'dmax' (bound of |d|). Got {dict(clipping)!r}."
        )
    for k, v in clipping.items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Real) or math.isnan(v)):
            raise TypeError(f"`renorm_clipping[{k!r}]` must be a float or None, got {v!r}.")
    rmin, rmax, dmax = (clipping.get(k) for k in ("rmin", "rmax", "dmax"))
    if rmin is not None and rmax is not None and rmax < rmin:
        raise ValueError(f"`renorm_clipping` needs rmax >= rmin, got rmax={rmax}, rmin={rmin}.")
    if dmax is not None and dmax < 0:
        raise ValueError(f"`renorm_clipping` needs dmax >= 0, got dmax={dmax}.")
    return frozen.freeze(dict(clipping))


def _read_keras(config: Mapping[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """BatchNormalization's own step in reading a Keras config (see :meth:`BatchNorm.from_config`)."""
    kwargs["allow_single_value"] = True  # Keras trains on one value per feature (its output is beta there)
    if config.get("synchronized") is True:  # Keras's cross-replica statistics: jaxnorm's exact ones, named axis
        kwargs["axis_name"] = BatchNorm.KERAS_SYNCHRONIZED_AXIS_NAME
    return kwargs


@dataclasses.dataclass(frozen=True, eq=True, repr=False)
class BatchNorm(Affine, Statistics):
    r"""Batch normalization (Ioffe & Szegedy 2015) as a pure spec: ``init`` and ``apply``, no hidden state.

    In training, each feature is normalized by the statistics of the batch over every axis but ``axis``:

    .. math::
        \mu_B, \sigma_B^2 = \text{moments}(x, \text{all axes but axis}), \qquad
        y = \frac{x - \mu_B}{\sqrt{\sigma_B^2 + \epsilon}}\,\text{scale} + \text{bias}

    and the moving statistics are updated with the Keras/Flax convention

    .. math::
        \text{mean} \leftarrow m\,\text{mean} + (1 - m)\,\mu_B, \qquad
        \text{var} \leftarrow m\,\text{var} + (1 - m)\,\sigma_B^2

    (:math:`m` = ``momentum``; PyTorch's ``momentum`` is :math:`1 - m`, and PyTorch stores the unbiased
    variance). In inference, ``mean`` and ``var`` replace the batch statistics and the state is returned
    unchanged. Statistics are two-pass in at least float32 (stable on data with a large offset); the output has
    the input's dtype.

    The fields after ``epsilon`` are keyword-only.

    Attributes:
      axis: int or sequence of ints, the feature axes (-1: channels-last; 1: channels-first). Parameters and
        statistics have shape ``[x.shape[a] for a in sorted(axis)]``.
      momentum: float in [0, 1], the moving-average decay (Keras and Flax default 0.99).
      epsilon: float >= 0 added to the variance (Keras default 1e-3; Flax and PyTorch use 1e-5).
      use_scale: learn a multiplier ``scale`` (Keras ``scale``, ``gamma``).
      use_bias: learn an offset ``bias`` (Keras ``center``, ``beta``).
      scale_init, bias_init, mean_init, var_init: initializers of ``scale`` (default 'ones'), ``bias``
        ('zeros'), the moving ``mean`` ('zeros') and moving ``var`` ('ones'): a Keras name, a Keras
        initializer config dict, or a JAX initializer ``(key, shape, dtype) -> array``.
      param_dtype: dtype of ``scale`` and ``bias`` (default float32).
      axis_name: optional named axis (or tuple of names) of an enclosing ``shard_map``/``pmap``/``vmap``:
        the batch statistics are then those of the whole global batch, exactly count-weighted (devices with
        more valid elements weigh more; an entirely masked device weighs nothing). Keras's
        ``synchronized=True`` reads as ``axis_name='batch'`` (:attr:`KERAS_SYNCHRONIZED_AXIS_NAME`).
      axis_index_groups: optional list of lists of device indices along ``axis_name`` (Flax's argument):
        statistics are merged within each group only (e.g. ``[[0, 1], [2, 3]]``: pairs of devices).
      virtual_batch_size: optional ghost-batch size (Keras 2's ``virtual_batch_size``; Hoffer et al. 2017):
        in training, axis 0 is split into contiguous groups of this many examples, each normalized by its own
        statistics (never spanning devices); the moving statistics move toward the mean over the ghost
        batches (and over ``axis_name``'s devices, within this device's group with ``axis_index_groups``) of
        their means and variances, as Keras 2 does. Axis 0
        must be a batch axis whose size (per device) is a multiple of it.
      momentum_convention: which weight ``momentum`` is. 'keras' (default; also Flax and equinox): the
        weight of the old value, ``moving = m * moving + (1 - m) * batch``. 'torch': the weight of the batch,
        ``moving = (1 - m) * moving + m * batch`` (PyTorch's ``momentum=0.1`` is Keras's 0.9).
      moving_var_estimator: the variance the moving average tracks. 'biased' (default; Keras, Flax): the population
        variance ``M2 / n`` the batch is normalized with. 'unbiased' (PyTorch): ``M2 / (n - 1)``; the batch
        itself is still normalized with the biased one.
      averaging: 'exponential' (default; Keras, Flax, PyTorch with a momentum); 'cumulative' (PyTorch's
        ``momentum=None``): the plain mean of all batch statistics so far, ``moving += (batch - moving) / t``,
        ``momentum`` unused and the initial value dropping out; 'debiased' (Haiku): the zero-debiased EMA
        ``hidden_t = d * hidden_{t-1} + (1 - d) * batch``, ``moving = hidden_t / (1 - d^t)`` with
        ``hidden_0 = 0`` and ``d`` the old value's weight (which must be below 1: ``momentum=1`` with 'keras' or
        ``momentum=0`` with 'torch' raises ``ValueError`` at construction, as 1 - d^t would be 0). The last two
        add a per-feature step counter ``state['steps']`` (int32, feature-shaped: the number of batches each
        feature has taken; a checkpoint with the scalar counter of earlier releases loads, broadcast).
      safe_update: if True (default), the moving statistics are updated per feature: a feature whose batch
        statistics are not finite (a NaN/inf value it reads), or that has no valid element in the batch (its
        mask selects nothing, or the batch is empty), keeps every one of its moving statistics bit for bit
        (``mean``, ``var``, and with ``renorm`` ``stddev``, ``renorm_mean``, ``renorm_stddev``; with ghost
        batches, those with no valid element drop out of the average), while every other feature updates as
        Keras, Flax and PyTorch would. With 'cumulative' and 'debiased' averaging each feature counts its own
        steps, so its moving statistics are the average over exactly the batches it took; ``count_steps``'s
        scalar counter advances when any feature updated. An empty or all-NaN batch leaves the whole state,
        counters included, exactly as it was. The rule lives in ``jaxnorm._src.moving`` and the Flax drop-ins'
        BatchNorm follow it too. False: every feature updates from every batch (Keras's behaviour; an all-masked
        feature drifts toward 0, a NaN batch writes NaN). The output is computed from the batch either way
        (finite for an all-masked batch of finite values).
      allow_single_value: if False (default), training on an input with a single value per feature (e.g. a
        batch of one without spatial axes) raises ``ValueError`` at trace time, as PyTorch does: its variance
        is 0 and the output is all ``bias``. Set True to allow it. Not checked with a mask or ``axis_name``
        (the count is not known at trace time).
      renorm: batch renormalization (Ioffe 2017) as Keras 3 does it. In training the batch-normalized
        :math:`\hat x` becomes :math:`(\hat x\,r + d)\,\text{scale} + \text{bias}` with
        :math:`r = \sqrt{\sigma_B^2 + \epsilon} / s`, :math:`d = (\mu_B - \mu_R) / s`,
        :math:`s = \max(\text{renorm\_stddev}, \sqrt\epsilon)`, both clipped by ``renorm_clipping`` and
        held constant in the gradient. The state gains ``renorm_mean`` and ``renorm_stddev`` (averaged with
        ``renorm_momentum``) and ``stddev`` (averaged with ``momentum``; ``var = max(stddev^2 - eps, 0)`` is
        derived from it, as Keras does). Inference is unchanged. Needs the default ``averaging`` and
        ``moving_var_estimator``.
      renorm_clipping: None or a dict with optional keys 'rmax', 'rmin', 'dmax': ``r`` is clipped to
        ``[rmin, rmax]`` and ``d`` to ``[-dmax, dmax]`` (missing keys: no bound).
      renorm_momentum: float in [0, 1], the momentum of ``renorm_mean``/``renorm_stddev`` (default 0.99).
      scale_regularizer, bias_regularizer: None, a Keras regularizer name ('l1', 'l2', 'l1_l2') or config
        dict, or a callable ``w -> scalar``; :meth:`regularization_loss` sums them (Keras's
        ``gamma_regularizer``/``beta_regularizer``).
      scale_constraint, bias_constraint: None, a Keras constraint name ('non_neg', 'max_norm',
        'min_max_norm', 'unit_norm') or config dict, or a callable ``w -> w``; :meth:`apply_constraints`
        projects the params onto them after an optimizer step (Keras's ``gamma_constraint``/``beta_constraint``).
      trainable: False freezes the layer as Keras's ``trainable=False`` does: ``apply`` runs in inference mode
        even with ``training=True`` (moving statistics used and returned unchanged), the params get no gradient
        (``stop_gradient``), no regularization loss and no constraint. Exclude them from the optimizer with
        :func:`jaxnorm.trainable_mask` (so that weight decay does not move them either).
      extreme_range: False (default): the statistics are exact while deviations from the mean stay below
        ``2**50`` and the variance above about ``2**-100`` (or hidden by ``epsilon``); True: exact at any finite
        float32 magnitude, for one more pass over ``x`` (:func:`jaxnorm.moments`; not written to Keras configs,
        whose layers compute the default).
      count_steps: keep a scalar step counter ``state['steps']`` (int32, PyTorch's ``num_batches_tracked``)
        also with exponential averaging; 'cumulative' and 'debiased' keep their per-feature one by themselves.
      dtype_policy: the Keras dtype policy of the layer this spec was converted from: None ('float32', the
        default), 'mixed_float16' or 'mixed_bfloat16'; written back as Keras's ``dtype`` by
        :meth:`to_keras_config` and :func:`jaxnorm.interop.to_keras`. It changes no number here: the output has
        the input's dtype and the statistics are float32, which is what the policy computes on half input.

    ``init(key, x) -> (params, state)``: ``params = {'scale', 'bias'}`` (each present when enabled) and
    ``state = {'mean', 'var'}``, the same trees as Flax's ``variables['params']`` and
    ``variables['batch_stats']`` (plus ``stddev``, ``renorm_mean``, ``renorm_stddev`` with ``renorm`` and
    ``steps`` when counting steps). The state's dtype is ``promote_types(x.dtype, float32)``.

    ``apply(params, state, x, *, training, mask=None) -> (y, new_state)``.

    Raises:
      TypeError / ValueError: at construction for bad hyperparameters and in ``init``/``apply`` for bad input,
        each naming the argument and the fix (see :meth:`apply`).

    Source: Ioffe & Szegedy 2015, "Batch Normalization"; Ioffe 2017, "Batch Renormalization"; semantics and
    defaults of ``keras.layers.BatchNormalization`` (Keras 3), tree layout of ``flax.linen.BatchNorm``.

    Example:
      >>> import jax, jax.numpy as jnp, jaxnorm
      >>> bn = jaxnorm.BatchNorm(momentum=0.9)
      >>> x = jnp.array([[0.0, 10.0], [2.0, 30.0]])
      >>> params, state = bn.init(jax.random.key(0), x)
      >>> jax.tree.map(jnp.shape, (params, state))
      ({'bias': (2,), 'scale': (2,)}, {'mean': (2,), 'var': (2,)})
      >>> y, state = bn.apply(params, state, x, training=True)
      >>> print(state['mean'])
      [0.1 2. ]
      >>> y, _ = bn.apply(params, state, x, training=False)  # moving statistics, state unchanged
    """

    axis: int | tuple[int, ...] = -1
    momentum: float = 0.99
    epsilon: float = 1e-3
    _: dataclasses.KW_ONLY
    mean_init: Any = "zeros"
    var_init: Any = "ones"
    axis_name: Any = None
    momentum_convention: str = "keras"
    moving_var_estimator: str = "biased"
    averaging: str = "exponential"
    safe_update: bool = True
    allow_single_value: bool = False
    renorm: bool = False
    renorm_clipping: Any = None
    renorm_momentum: float = 0.99
    count_steps: bool = False
    axis_index_groups: Any = None
    virtual_batch_size: int | None = None

    #: The ``axis_name`` a Keras config with ``synchronized=True`` gets (rename it with ``dataclasses.replace``).
    KERAS_SYNCHRONIZED_AXIS_NAME: ClassVar[str] = "batch"

    _RENAMED_FIELDS = {"moving_var": "moving_var_estimator"}  # renamed in 0.1.0: it holds the estimator's name

    _INITIALIZER_FIELDS = ("scale_init", "bias_init", "mean_init", "var_init")
    KERAS = keras_config.KerasRecord(
        "BatchNormalization",
        renamed={
            **keras_config.AFFINE_RENAMES,
            "momentum": "momentum",
            "moving_mean_initializer": "mean_init",
            "moving_variance_initializer": "var_init",
            "renorm": "renorm",
            "renorm_clipping": "renorm_clipping",
            "renorm_momentum": "renorm_momentum",
        },
        restricted={"synchronized": (lambda v: isinstance(v, bool), "True or False")},  # True: axis_name
        equivalent={
            "axis": (lambda v: isinstance(v, int), "one feature axis, an int"),
            "axis_index_groups": (lambda v: v is None, "statistics over all devices, axis_index_groups=None"),
            "virtual_batch_size": (lambda v: v is None, "no ghost batches, virtual_batch_size=None"),
            "momentum_convention": (lambda v: v == "keras", "'keras'"),
            "moving_var_estimator": (lambda v: v == "biased", "'biased'"),
            "averaging": (lambda v: v == "exponential", "'exponential'"),
        },
        params=keras_config.AFFINE_WEIGHTS,
        state={
            "moving_mean": "mean",
            "moving_variance": "var",
            "moving_stddev": "stddev",
            "renorm_mean": "renorm_mean",
            "renorm_stddev": "renorm_stddev",
        },
        read=_read_keras,
        write=lambda spec, config: {**config, "synchronized": spec.axis_name is not None},
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "axis", validation.check_axes_static(self.axis, "axis"))
        validation.check_bool(self.allow_single_value, "allow_single_value")
        validation.check_bool(self.renorm, "renorm")
        object.__setattr__(self, "renorm_clipping", _check_renorm_clipping(self.renorm_clipping))
        validation.check_unit_interval(self.renorm_momentum, "renorm_momentum")
        self._rule  # noqa: B018 - builds (and so checks) the moving-statistics rule
        object.__setattr__(self, "axis_name", validation.axis_name_of(self.axis_name))
        if self.axis_index_groups is not None:
            grouped = collectives.with_groups(self.axis_name, self.axis_index_groups)
            object.__setattr__(self, "axis_index_groups", grouped.groups)
        if self.virtual_batch_size is not None:
            v = self.virtual_batch_size
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"`virtual_batch_size` must be None or an int >= 1; got {v!r}.")
            if self.renorm or self.moving_var_estimator != "biased" or self.averaging != "exponential":
                raise ValueError(
                    "virtual_batch_size follows Keras 2's ghost batch normalization (exponential averages of the "
                    f"biased statistics, no renorm); got renorm={self.renorm}, "
                    f"moving_var_estimator={self.moving_var_estimator!r}, averaging={self.averaging!r}. Use the "
                    "defaults with virtual_batch_size."
                )
        self._post_init_common()

    def _axes(self, ndim: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        feature_axes = validation.canonicalize_axes(self.axis, ndim, "axis")
        if len(feature_axes) == ndim:
            raise ValueError(
                f"`axis`={self.axis!r} covers every axis of the rank-{ndim} input, leaving nothing to take batch "
                "statistics over. Pass the feature axis only (e.g. axis=-1), or use LayerNorm."
            )
        return feature_axes, validation.complement_axes(feature_axes, ndim)

    def _param_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        feature_axes, _ = self._axes(len(shape))
        return tuple(shape[a] for a in feature_axes)

    def init(self, key: Any, x: Any) -> tuple[Tree, Tree]:
        """Creates ``(params, state)`` for inputs like ``x`` (an array or a ``jax.ShapeDtypeStruct``).

        Args:
          key: a ``jax.random`` key for random initializers (None uses ``jax.random.key(0)``).
          x: example input, floating, of any rank > len(axis).

        Returns:
          ``params``: ``{'scale', 'bias'}`` of ``param_dtype`` (only those enabled); ``state``: ``{'mean',
          'var'}`` of ``promote_types(x.dtype, float32)``; all of shape ``[x.shape[a] for a in axis]``.

        Raises:
          TypeError: ``x`` is not floating.
          ValueError: ``axis`` is out of range or repeated for ``x``.
        """
        shape, dtype = layer.init_input(x)
        feature_axes, _ = self._axes(len(shape))
        fshape = tuple(shape[a] for a in feature_axes)
        sdtype = validation.stats_dtype(dtype)
        params = self._init_params(key, fshape)
        state_key = None if key is None else jax.random.fold_in(key, 1)
        state = layer.init_arrays(
            state_key, {"mean": (self.mean_init, fshape, sdtype), "var": (self.var_init, fshape, sdtype)}
        )
        if self.renorm:  # Keras: moving_stddev and renorm_stddev start at sqrt(var_init), renorm_mean at mean_init
            state["stddev"] = jnp.sqrt(state["var"])
            state["renorm_mean"] = state["mean"]
            state["renorm_stddev"] = state["stddev"]
        if self._rule.keeps_counter:
            state["steps"] = jnp.zeros(self._rule.steps_shape(fshape), jnp.int32)
        return params, state

    @property
    def _rule(self) -> moving.Rule:
        """This spec's moving-statistics rule (moving.py)."""
        return moving.Rule(
            momentum=self.momentum, momentum_convention=self.momentum_convention,
            moving_var_estimator=self.moving_var_estimator, averaging=self.averaging, safe_update=self.safe_update,
            count_steps=self.count_steps,
            renorm_momentum=self.renorm_momentum if self.renorm else None, epsilon=self.epsilon,
        )

    def state_schema(self, x: Any) -> dict[str, layer.StateEntry]:
        """BatchNorm's state for inputs like ``x``, every option combination: with ``F`` the feature shape
        (``[x.shape[a] for a in axis]``) and ``S = promote_types(x.dtype, float32)``,

        - ``mean`` (F, S): the moving mean of the batch means (Keras ``moving_mean``, Flax
          ``batch_stats['mean']``);
        - ``var`` (F, S): the moving variance: of the biased batch variances, or of the unbiased ones with
          ``moving_var_estimator='unbiased'`` (Keras ``moving_variance``, PyTorch ``running_var``);
        - with ``renorm``: ``stddev`` (F, S), the moving standard deviation that ``var`` follows (Keras
          ``moving_stddev``), and ``renorm_mean``, ``renorm_stddev`` (F, S), the statistics that ``r`` and ``d``
          are taken against, averaged with ``renorm_momentum``;
        - with ``averaging='cumulative'`` or ``'debiased'``: ``steps`` (F, int32), the batches each feature has
          taken (a scalar counter of earlier releases loads, broadcast); with ``count_steps=True`` and exponential
          averages: ``steps`` ((), int32), the steps in which any feature updated (PyTorch's
          ``num_batches_tracked``).

        Ghost batches, masks and ``axis_name`` change no entry.
        """
        shape, dtype = layer.init_input(x)
        fshape = tuple(shape[a] for a in self._axes(len(shape))[0])
        return self._state_entries(fshape, validation.stats_dtype(dtype))

    def _state_entries(self, fshape: tuple[int, ...], dtype: Any) -> dict[str, layer.StateEntry]:
        rule = self._rule
        meanings = {
            "mean": "moving mean of the batch means",
            "var": f"moving {rule.moving_var_estimator} variance",
            "stddev": "moving standard deviation (renorm)",
            "renorm_mean": "mean that renorm's corrections are taken against",
            "renorm_stddev": "standard deviation that renorm's corrections are taken against",
        }
        entries = {k: layer.StateEntry(fshape, jnp.dtype(dtype), meanings[k]) for k in rule.keys}
        if rule.keeps_counter:
            what = "batches each feature took" if rule.steps_per_feature else "steps in which any feature updated"
            entries["steps"] = layer.StateEntry(rule.steps_shape(fshape), jnp.dtype(jnp.int32), what)
        return entries

    def _state_spec(self, fshape: tuple[int, ...]) -> dict[str, tuple[tuple[int, ...], Any]]:
        """The state check's form of :meth:`state_schema` (any float dtype is accepted for the statistics)."""
        return {k: (e.shape, "int" if k == "steps" else None)
                for k, e in self._state_entries(fshape, jnp.float32).items()}

    def apply(
        self, params: Tree, state: Tree, x: jax.Array, *, training: bool | None = None, mask: jax.Array | None = None
    ) -> tuple[jax.Array, Tree]:
        """Normalizes ``x``; in training also returns the updated moving statistics.

        Args:
          params: ``{'scale', 'bias'}`` from :meth:`init` (or updated by an optimizer).
          state: ``{'mean', 'var'}`` from :meth:`init` or a previous ``apply``.
          x: floating array whose sizes along ``axis`` match ``params``/``state`` (any rank, any float dtype;
            bf16 in, bf16 out).
          training: required Python bool. True: normalize with the batch statistics and return updated moving
            statistics. False (or a frozen layer, ``trainable=False``): normalize with the moving statistics;
            the state is returned unchanged.
          mask: optional array, Keras's rules: boolean, or integer/float read as ``mask != 0`` (nonzero, NaN
            included, keeps a position); broadcastable to ``x``, or of rank ``x.ndim - 1`` (Keras's; e.g.
            ``x.shape[:-1]`` or ``(1, H, 1)`` for ``(N, H, W, C)``), which is expanded on the last axis first
            when that broadcasts (so a 1-D mask of an ``(N, C)`` input with ``N == C`` is per example; give a
            per-feature mask as ``(1, C)``). In training only the kept positions enter the batch statistics
            (values elsewhere may be NaN).

        Returns:
          ``(y, new_state)``: ``y`` of ``x``'s shape and dtype; ``new_state`` the same tree as ``state``.

        Raises:
          TypeError: ``training`` missing or not a Python bool; ``x`` not floating; ``mask`` complex, a string or
            not an array.
          ValueError: ``axis`` out of range for ``x``; ``params``/``state`` keys or shapes not matching ``x``;
            ``mask`` not broadcastable to ``x``.
        """
        training = layer.check_training(training, "BatchNorm", required=True)
        x = validation.check_float_array(x, "x")
        feature_axes, reduction_axes = self._axes(x.ndim)
        fshape = tuple(x.shape[a] for a in feature_axes)
        fix = (
            f"They must match the input's features along axis={self.axis!r} (shape {fshape}); re-create "
            "them with `init` for this input and spec."
        )
        params = self._params_in_use(self._check_params(params, fshape, fix))
        given_state = state
        state = self._check_state(state, fshape, fix)
        expand = lambda v: validation.expand_to_rank(v, x.ndim, feature_axes)  # noqa: E731
        scale = expand(params["scale"]) if self.use_scale else None
        bias = expand(params["bias"]) if self.use_bias else None

        m = None if mask is None else validation.broadcast_mask(mask, x.shape, "mask")
        if training and self.trainable:
            y, count, mean, var = self._batch_statistics(x, scale, bias, state, reduction_axes, m)
            # The moving statistics follow moving.py's rule (no gradient flows into them).
            return y, lax.stop_gradient(moving.update(state, count, mean, var, self._rule))
        # Inference (or a frozen layer): the moving statistics, the state returned as given.
        mean, var = expand(state["mean"]), expand(state["var"])
        return normalize.normalize_by_stats(x, mean, var, scale, bias, self.epsilon, m), given_state

    def _check_state(self, state: Any, fshape: tuple[int, ...], fix: str) -> dict[str, jax.Array]:
        """``state`` checked against :meth:`state_schema` (the earlier name ``count`` of ``steps`` named in the
        error; a scalar counter of earlier releases migrated)."""
        if isinstance(state, Mapping) and "count" in state and "steps" not in state:
            raise ValueError(
                "`state` has the step counter under its earlier name 'count'; it is 'steps' now (a step count, "
                "unlike Normalization's value `count`). Rename it: state = {**state, 'steps': state['count']} "
                "without 'count', or re-create the state with `init`."
            )
        migrated = moving.migrate(state, fshape, self._rule)
        return validation.check_tree(migrated, self._state_spec(fshape), "state", fix)

    def _batch_statistics(
        self, x: jax.Array, scale: jax.Array | None, bias: jax.Array | None, state: dict[str, jax.Array],
        reduction_axes: tuple[int, ...], m: jax.Array | None,
    ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """Training: ``(y, count, mean, var)``, ``x`` normalized by its batch statistics (ghost batches, batch
        renormalization or the plain form) and the feature-shaped statistics the moving ones follow."""
        n = math.prod(x.shape[a] for a in reduction_axes)
        if self.virtual_batch_size is not None:  # values per feature in one ghost batch
            n = n // x.shape[0] * min(self.virtual_batch_size, x.shape[0])
        if n == 1 and m is None and self.axis_name is None and not self.allow_single_value:
            raise ValueError(
                f"BatchNorm in training needs more than one value per feature, but x has shape {x.shape} "
                f"with axis={self.axis!r}: one value per feature, so the batch variance is 0 and the output "
                "is all `bias` (PyTorch raises here too). Train on a batch of at least 2, use "
                "training=False, or pass allow_single_value=True."
            )
        sync = collectives.with_groups(self.axis_name, self.axis_index_groups)
        if self.virtual_batch_size is not None:
            if 0 not in reduction_axes or x.shape[0] % self.virtual_batch_size:
                v = self.virtual_batch_size
                raise ValueError(
                    f"virtual_batch_size={v} splits axis 0 into ghost batches, so axis 0 must be a batch "
                    f"axis whose size is a multiple of {v}; got x of shape {x.shape} with "
                    f"axis={self.axis!r}. Use a batch of a multiple of {v} examples (per device), or "
                    "virtual_batch_size=None."
                )
            return ghost_batch_normalize(
                x, scale, bias, reduction_axes, self.epsilon, m, sync, self.virtual_batch_size, self.extreme_range
            )
        if self.renorm:
            clipping = frozen.thaw(self.renorm_clipping) or {}
            return batch_renormalize(
                x, scale, bias, state, reduction_axes, self.epsilon, clipping, m, sync, self.extreme_range
            )
        y, *moments = normalize.normalize_by_moments(
            x, scale, bias, reduction_axes, self.epsilon, m, sync, extreme_range=self.extreme_range
        )
        count, mean, var = (jnp.squeeze(v, reduction_axes) for v in moments)
        return y, count, mean, var

def batch_renormalize(
    x: jax.Array, scale: jax.Array | None, bias: jax.Array | None, state: Mapping[str, jax.Array],
    reduction_axes: tuple[int, ...], epsilon: float, clipping: Mapping[str, Any], mask: jax.Array | None,
    sync: Any, extreme_range: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    r"""Batch renormalization in training (Ioffe 2017, as Keras): :math:`(\hat{x} r + d) \cdot scale + bias`.

    ``r = clip(sigma_B / sigma_renorm, rmin, rmax)`` and ``d = clip((mu_B - mu_renorm) / sigma_renorm, -dmax,
    dmax)`` come from the old ``state['renorm_mean']``/``['renorm_stddev']`` and are constants of the gradient.
    ``scale``/``bias`` (or None) are expanded to ``x``'s rank; ``clipping`` a dict with optional 'rmin', 'rmax',
    'dmax'. Returns ``(y, count, mean, var)`` with the feature-shaped batch statistics.
    """
    count, mean_x, var_x = stats.count_mean_var(x, reduction_axes, mask, sync, extreme_range=extreme_range)
    count, mean, var = (jnp.squeeze(v, reduction_axes) for v in (count, mean_x, var_x))
    eps = jnp.asarray(epsilon, mean.dtype)
    renorm_stddev = jnp.maximum(state["renorm_stddev"].astype(mean.dtype), jnp.sqrt(eps))
    r = jnp.sqrt(var + eps) / renorm_stddev
    d = (mean - state["renorm_mean"].astype(mean.dtype)) / renorm_stddev
    if clipping.get("rmin") is not None:
        r = jnp.maximum(r, clipping["rmin"])
    if clipping.get("rmax") is not None:
        r = jnp.minimum(r, clipping["rmax"])
    if clipping.get("dmax") is not None:
        d = jnp.clip(d, -clipping["dmax"], clipping["dmax"])
    feature_axes = validation.complement_axes(reduction_axes, x.ndim)
    r, d = (validation.expand_to_rank(lax.stop_gradient(v), x.ndim, feature_axes) for v in (r, d))
    shift = d if scale is None else d * scale
    bias = shift if bias is None else shift + bias
    scale = r if scale is None else r * scale
    return normalize.normalize_by_stats(x, mean_x, var_x, scale, bias, epsilon, mask), count, mean, var


def ghost_batch_normalize(
    x: jax.Array, scale: jax.Array | None, bias: jax.Array | None, reduction_axes: tuple[int, ...],
    epsilon: float, mask: jax.Array | None, sync: Any, virtual_batch_size: int, extreme_range: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Ghost batch normalization in training (Keras 2's ``virtual_batch_size``; Hoffer et al. 2017): each
    contiguous group of ``virtual_batch_size`` examples along axis 0 is normalized by its own statistics.

    Axis 0 must be reduced and divisible by ``virtual_batch_size`` (the spec checks). Returns ``(y, count,
    mean, var)``: for the moving statistics, the feature-shaped averages over the ghost batches (and devices,
    with ``sync``) that hold data, and the total count.
    """
    ghosts = (x.shape[0] // virtual_batch_size, virtual_batch_size)

    # x and the mask: (ghosts, v, ...); scale/bias (size 1 on axis 0): a new leading axis
    def split(a: Any) -> Any:  # an array, or None
        return None if a is None else a[None] if a.shape[0] == 1 else a.reshape(ghosts + a.shape[1:])

    axes = tuple(a + 1 for a in reduction_axes)
    y, count, mean, var = normalize.normalize_by_moments(
        split(x), split(scale), split(bias), axes, epsilon, split(mask), None, extreme_range=extreme_range
    )
    count, mean, var = (jnp.squeeze(a, axes) for a in (count, mean, var))  # (ghosts, *features)
    has = (count > 0).astype(mean.dtype)
    sums = [jnp.sum(a, 0) for a in (has, has * mean, has * var, count)]
    if sync is not None:  # ghost batches never span devices; their averages do (within a device group)
        sums = list(collectives.sum_across(jnp.stack(sums), sync))
    n_ghosts, mean_sum, var_sum, total = sums
    return y.reshape(x.shape), total, mean_sum / jnp.maximum(n_ghosts, 1), var_sum / jnp.maximum(n_ghosts, 1)
