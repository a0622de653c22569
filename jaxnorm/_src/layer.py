"""What every layer spec shares: immutability, hashing, config round-trips and Keras config translation.

A spec is a frozen dataclass of hyperparameters (Python values only, no arrays). Its ``init`` and ``apply`` are
pure: ``init(key, x) -> (params, state)`` and ``apply(params, state, x, *, training, mask) -> (y, new_state)``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Self

import jax
import jax.numpy as jnp

from jaxnorm._src import constraints, frozen, initializers, keras_config, regularizers, validation


#: A layer's params or state tree: names to arrays (``init`` returns both; ``apply`` takes and returns them).
Tree = dict[str, jax.Array]


class StateEntry(NamedTuple):
    """One entry of a spec's state tree (:meth:`Layer.state_schema`): its shape, its dtype and what it holds."""

    shape: tuple[int, ...]
    dtype: Any
    meaning: str


class ParamEntry(NamedTuple):
    """One entry of a spec's params tree (:meth:`Layer.param_schema`): its shape, its dtype, the initializer
    ``init`` draws it with (a Keras name or config, or a JAX initializer) and what it holds."""

    shape: tuple[int, ...]
    dtype: Any
    init: Any
    meaning: str


@dataclasses.dataclass(frozen=True)
class Layer:
    """Base class of jaxnorm layer specs (hyperparameters only; see subclasses).

    A spec's fields are its own, then (keyword-only) the parameter fields of :class:`Scaled` or :class:`Affine`
    where it learns a ``scale`` (and ``bias``). What ``init`` creates is :meth:`param_schema` and
    :meth:`state_schema`; a new layer supplies ``_param_shape`` (and ``_param_entries`` for params other than
    ``scale``/``bias``), ``init``/``apply`` coming from its base (:class:`PerExample` for per-example layers).
    """

    # Fields holding initializers (stored frozen, resolved at init).
    _INITIALIZER_FIELDS: ClassVar[tuple[str, ...]] = ()
    # Regularizer / constraint fields -> the parameter they act on.
    _REGULARIZER_FIELDS: ClassVar[dict[str, str]] = {}
    _CONSTRAINT_FIELDS: ClassVar[dict[str, str]] = {}
    if TYPE_CHECKING:  # fields the subclasses declare (not fields of this base: they would come first)

        @property
        def trainable(self) -> bool: ...
        @property
        def param_dtype(self) -> Any: ...

    # The layer's Keras counterpart: config keys, weight names (keras_config.py); None: jaxnorm configs only.
    KERAS: ClassVar[keras_config.KerasRecord | None] = None
    # Earlier names of fields -> their names now: ``from_config`` reads configs written with either.
    _RENAMED_FIELDS: ClassVar[dict[str, str]] = {}

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        # The fields after a spec's leading ones are keyword-only (jaxnorm 0.2); name them in the error rather
        # than Python's "takes from 1 to 3 positional arguments".
        positional = [f.name for f in dataclasses.fields(cls) if f.init and not f.kw_only]
        if len(args) > len(positional):
            raise TypeError(
                f"jaxnorm.{cls.__name__} takes {len(positional)} positional argument(s) "
                f"({', '.join(positional) or 'none'}); got {len(args)}. Pass the others by keyword, e.g. "
                f"jaxnorm.{cls.__name__}({', '.join(f'{n}=...' for n in positional[:2])}, use_scale=False)."
            )
        return super().__new__(cls)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Every spec's __post_init__ first turns NumPy/JAX scalars into Python numbers (momentum=np.float32(0.9),
        # epsilon=jnp.float32(1e-3), use_scale=np.True_), so that the field checks see Python numbers and the
        # spec stays hashable (a static jit argument) with a JSON-serializable config.
        super().__init_subclass__(**kwargs)
        post = cls.__dict__.get("__post_init__")
        if post is not None and not getattr(post, "_python_scalars_first", False):

            @functools.wraps(post)
            def __post_init__(self: Any) -> None:
                self._python_scalars()
                post(self)

            __post_init__._python_scalars_first = True  # type: ignore[attr-defined]
            cls.__post_init__ = __post_init__  # type: ignore[attr-defined]
        # init and apply check what a user's first calls get wrong (an int for the key, `training` given
        # positionally) before anything else reads them.
        for name in ("init", "apply"):
            method = cls.__dict__.get(name)
            if method is not None and not getattr(method, "_checked_call", False):
                setattr(cls, name, _checked_call(method))
        # A spec is hashable configuration: as a pytree with no leaves, it may be an argument of a jitted
        # function (static, as a closed-over spec), instead of JAX's "not a valid JAX type".
        jax.tree_util.register_pytree_node(cls, lambda spec: ((), spec), lambda spec, _: spec)

    def state_schema(self, x: Any) -> dict[str, StateEntry]:
        """The state tree ``init(key, x)`` creates and ``apply`` takes and returns, for inputs like ``x`` (an array
        or a ``jax.ShapeDtypeStruct``): each key's shape, dtype and meaning, for this spec's options. The one
        place a layer's state is described (tests/test_registry.py checks it against ``init`` and ``apply``).

        Returns:
          ``{key: StateEntry(shape, dtype, meaning)}``; ``{}`` for a layer without state (this base class).
        """
        del x
        return {}

    def __repr__(self) -> str:
        fields = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in self._fields_in_order() if f.repr)
        return f"{type(self).__name__}({fields})"

    def _fields_in_order(self) -> list[dataclasses.Field]:
        """The fields, the spec's own first, then those of the mixins (:class:`Statistics`, :class:`Affine`)."""
        shared = {f.name for f in (*dataclasses.fields(Statistics), *dataclasses.fields(Affine))}
        return sorted(dataclasses.fields(self), key=lambda f: f.name in shared)

    def _python_scalars(self) -> None:
        """Replaces concrete NumPy/JAX scalars in the fields by Python numbers (``validation.python_scalars``)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            converted = validation.python_scalars(value)
            if converted is not value:
                object.__setattr__(self, f.name, converted)

    def _post_init_common(self) -> None:
        for f in self._INITIALIZER_FIELDS:
            object.__setattr__(self, f, initializers.check(getattr(self, f), f))
        # Regularizers and constraints given by name or config are stored in Keras's canonical config form, so
        # that 'l2' and {'class_name': 'L2', 'config': {'l2': 0.01}} make equal (and equally hashed) specs.
        for module, fields in ((regularizers, self._REGULARIZER_FIELDS), (constraints, self._CONSTRAINT_FIELDS)):
            for f in fields:
                value = module.check(getattr(self, f), f)
                if isinstance(value, str | frozen.FrozenDict):
                    value = frozen.freeze(module.serialize(frozen.thaw(value), f))
                object.__setattr__(self, f, value)
        validation.check_bool(self.trainable, "trainable")
        for name in ("use_scale", "use_bias"):
            if hasattr(self, name):
                validation.check_bool(getattr(self, name), name)
        if hasattr(self, "dtype_policy"):
            object.__setattr__(self, "dtype_policy", keras_config.check_dtype_policy(self.dtype_policy))
        if hasattr(self, "param_dtype"):
            object.__setattr__(self, "param_dtype", validation.check_dtype_name(self.param_dtype, "param_dtype"))
        if hasattr(self, "epsilon"):
            validation.check_epsilon(self.epsilon)
        if hasattr(self, "extreme_range"):
            object.__setattr__(self, "extreme_range", validation.check_bool(self.extreme_range, "extreme_range"))

    def param_schema(self, x: Any) -> dict[str, ParamEntry]:
        """The params tree ``init(key, x)`` creates and ``apply`` takes, for inputs like ``x`` (an array or a
        ``jax.ShapeDtypeStruct``): each key's shape, dtype, initializer and meaning, for this spec's options. The
        one place a layer's params are described: ``init`` draws them from it and ``apply`` checks them against
        it (tests/test_registry.py checks it against both).

        Returns:
          ``{key: ParamEntry(shape, dtype, init, meaning)}``, in the order ``init`` draws their keys; ``{}`` for
          a layer without params.

        Raises:
          TypeError: ``x`` is not floating.
          ValueError: the layer's axes do not fit ``x`` (as ``init``).
        """
        shape, _ = init_input(x)
        return self._param_entries(self._param_shape(shape))

    def _param_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of the per-feature params for inputs of ``shape`` (checked; the layer's own errors)."""
        del shape
        return ()

    def _param_entries(self, pshape: tuple[int, ...]) -> dict[str, ParamEntry]:
        """:meth:`param_schema` for per-feature params of shape ``pshape``: none in this base class; ``scale``
        from :class:`Scaled`, ``bias`` from :class:`Affine`, a layer's own params from its override."""
        del pshape
        return {}

    def _has_param(self, name: str) -> bool:
        return name in self._param_entries(())

    def _init_params(self, key: Any, pshape: tuple[int, ...]) -> dict[str, jax.Array]:
        """``init``'s params: each entry of :meth:`_param_entries` drawn with its own subkey of ``key``."""
        return init_arrays(key, {k: (e.init, e.shape, e.dtype) for k, e in self._param_entries(pshape).items()})

    def _check_params(self, params: Any, pshape: tuple[int, ...], fix: str) -> dict[str, jax.Array]:
        """Checks ``params`` holds exactly :meth:`_param_entries`, each of its shape (any float dtype)."""
        expected = {k: (e.shape, None) for k, e in self._param_entries(pshape).items()}
        return validation.check_tree(params, expected, "params", fix)

    def _params_in_use(self, params: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """A frozen layer's (``trainable=False``) parameters get no gradient, as Keras's non-trainable weights."""
        return params if self.trainable else jax.tree.map(jax.lax.stop_gradient, params)

    def regularization_loss(self, params: Mapping[str, jax.Array]) -> jax.Array:
        r"""The weight penalty of this layer's regularizers, to add to the loss.

        .. math::
            \text{loss} = R_\text{scale}(\text{scale}) + R_\text{bias}(\text{bias})

        with each :math:`R` the layer's ``scale_regularizer``/``bias_regularizer`` (Keras's L1: ``l1 * sum|w|``,
        L2: ``l2 * sum(w^2)``, L1L2: both). A frozen layer (``trainable=False``) contributes 0, as in Keras,
        whose ``layer.losses`` only regularize trainable weights; so does a regularizer of a parameter the layer
        does not create (e.g. ``bias_regularizer`` with ``use_bias=False``).

        Args:
          params: the layer's ``{'scale', 'bias'}`` (those enabled), any float dtype.

        Returns:
          A float32 scalar (float64 for float64 params); 0 when the layer has no regularizer.

        Raises:
          ValueError: ``params`` misses a regularized parameter.

        Source: ``keras.regularizers``, ``keras.layers.Layer.losses``.
        """
        total = jnp.zeros((), jnp.float32)
        if not self.trainable:
            return total
        for f, pname in self._REGULARIZER_FIELDS.items():
            penalty = regularizers.resolve(getattr(self, f), f)
            if penalty is None or not self._has_param(pname):  # Keras: no weight, nothing to regularize
                continue
            value = _param(params, pname, f)
            total = total + penalty(value)
        return total

    def apply_constraints(self, params: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """Projects ``params`` onto the layer's constraints; run it after each optimizer step, as Keras does.

        ``scale`` goes through ``scale_constraint`` and ``bias`` through ``bias_constraint`` (Keras's
        ``non_neg``: ``w * (w >= 0)``; ``max_norm``, ``min_max_norm``, ``unit_norm``: rescale to the norm bound
        along their ``axis``). Parameters without a constraint, and every parameter of a frozen layer, are
        returned as they are. Pure: returns a new dict.

        Args:
          params: the layer's ``{'scale', 'bias'}`` (those enabled).

        Returns:
          The projected params, same tree, shapes and dtypes.

        Raises:
          ValueError: ``params`` misses a constrained parameter, or a constraint's ``axis`` does not fit it.

        Source: ``keras.constraints``; Keras applies them after the optimizer's update
        (``variable.assign(variable.constraint(variable))``).
        """
        out = dict(params)
        if not self.trainable:
            return out
        for f, pname in self._CONSTRAINT_FIELDS.items():
            project = constraints.resolve(getattr(self, f), f)
            if project is not None and self._has_param(pname):
                out[pname] = project(_param(params, pname, f))
        return out

    def to_keras_config(self) -> dict[str, Any]:
        """The config of the equivalent Keras layer: ``keras.layers.<Class>.from_config(spec.to_keras_config())``.

        Returns:
          A dict with Keras's keys (``center``, ``gamma_initializer``, ...); initializers, regularizers and
          constraints in the forms Keras deserializes; ``dtype`` is the spec's ``dtype_policy`` (the Keras
          policy it was converted from, e.g. 'mixed_float16'), 'float32' by default. BatchNorm's
          ``safe_update``, ``allow_single_value`` and ``count_steps`` have no Keras key and are left out: Keras
          updates its moving statistics even from a non-finite or all-masked batch, trains on a single value per
          feature (a spec read from a Keras config gets ``allow_single_value=True``), and keeps no step counter.

        Raises:
          ValueError: a setting Keras cannot express (e.g. several feature axes for BatchNorm,
            ``momentum_convention='torch'``, a ``param_dtype`` other than float32), the message naming it; or a
            spec with no Keras layer (``KERAS`` None).
          TypeError: an initializer, regularizer or constraint is a callable with no Keras form.

        Source: the spec's Keras record (``KERAS``, ``jaxnorm._src.keras_config``).
        """
        return keras_config.to_keras_config(self, self.get_config())

    def get_config(self) -> dict[str, Any]:
        """The spec's hyperparameters as a JSON-serializable dict; ``type(self).from_config`` inverts it.

        Raises:
          TypeError: an initializer is a callable other than ``jax.nn.initializers.zeros``/``ones``, which has
            no JSON form (give a Keras name or config instead).
        """
        config = {}
        for f in self._fields_in_order():
            value = getattr(self, f.name)
            if f.name in self._INITIALIZER_FIELDS:
                value = initializers.serialize(value, f.name)
            elif f.name in self._REGULARIZER_FIELDS:
                value = regularizers.serialize(value, f.name)
            elif f.name in self._CONSTRAINT_FIELDS:
                value = constraints.serialize(value, f.name)
            elif isinstance(value, frozen.FrozenDict):
                value = frozen.thaw(value)
            elif isinstance(value, tuple):
                value = list(value)
            config[f.name] = value
        return config

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        """Builds a spec from ``get_config()``'s dict, or from a Keras layer's ``get_config()`` dict.

        A Keras config (recognised by its Keras-only keys such as ``center``, ``gamma_initializer``) has its
        keys translated (``center`` -> ``use_bias``, ``gamma_initializer`` -> ``scale_init``,
        ``gamma_regularizer`` -> ``scale_regularizer``, ...). ``name`` is dropped; ``dtype`` must be a policy
        with float32 variables ('float32', 'mixed_float16', 'mixed_bfloat16'), kept in ``dtype_policy`` by the
        specs that have it (so that ``to_keras_config`` writes it back); BatchNormalization's ``synchronized``
        True becomes ``axis_name`` (:attr:`BatchNorm.KERAS_SYNCHRONIZED_AXIS_NAME`) and it gets
        ``allow_single_value=True`` (Keras trains on a batch of one value per feature: the output is beta).
        The translation is the spec's Keras record (``KERAS``, ``jaxnorm._src.keras_config``). A jaxnorm config
        may use a field's earlier name (BatchNorm's ``moving_var``, now ``moving_var_estimator``).

        Raises:
          TypeError: ``config`` is not a mapping.
          ValueError: a key is unknown, a field is given under both its earlier and its current name, or a Keras
            key holds a value jaxnorm cannot reproduce; the message names the keys.
        """
        if not isinstance(config, Mapping):
            raise TypeError(f"`config` must be a dict, got {type(config).__name__}.")
        if keras_config.is_keras_config(cls, config):
            return cls(**keras_config.from_keras_config(cls, config))
        config = dict(config)
        for old, new in cls._RENAMED_FIELDS.items():
            if old in config:
                if new in config:
                    raise ValueError(
                        f"config has both {old!r} and {new!r} (its new name) for jaxnorm.{cls.__name__}. Keep "
                        f"only {new!r}."
                    )
                config[new] = config.pop(old)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - fields)
        if unknown:
            keras = f", or a Keras {cls.KERAS.class_name} config" if cls.KERAS is not None else ""
            raise ValueError(
                f"unknown config key(s) {unknown} for jaxnorm.{cls.__name__}. Accepted keys: {sorted(fields)} "
                f"(jaxnorm){keras}."
            )
        return cls(**config)


@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)
class Statistics(Layer):
    """The options of every layer that takes statistics (BatchNorm and the per-example layers), keyword-only after
    the layer's own fields: the one place they are declared.

    Attributes:
      extreme_range: False (default): the statistics are exact while deviations from the mean stay below
        ``2**50`` and the variance above about ``2**-100`` (or hidden by ``epsilon``); True: exact at any finite
        float32 magnitude, for one more pass over ``x`` (:func:`jaxnorm.moments`; not written to Keras configs,
        whose layers compute the default).
      dtype_policy: the Keras dtype policy of the layer this spec was converted from: None ('float32', the
        default), 'mixed_float16' or 'mixed_bfloat16'; written back as Keras's ``dtype``. It changes no number:
        the output has the input's dtype and the statistics are float32, what the policy computes on half input.
    """

    extreme_range: bool = False
    dtype_policy: Any = None


@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)
class Scaled(Layer):
    """The fields of a layer that learns a multiplier ``scale`` per feature (Keras's ``gamma``), keyword-only
    after the layer's own fields: the one place they are declared (RMSNorm; :class:`Affine` adds ``bias``).

    Attributes:
      use_scale: learn ``scale`` (Keras ``scale``).
      scale_init: its initializer (default 'ones'): a Keras name, a Keras initializer config dict, or a JAX
        initializer ``(key, shape, dtype) -> array``.
      param_dtype: dtype of the params (default float32).
      scale_regularizer: None, a Keras regularizer name ('l1', 'l2', 'l1_l2') or config dict, or a callable
        ``w -> scalar``; summed by :meth:`regularization_loss`.
      scale_constraint: None, a Keras constraint name ('non_neg', 'max_norm', 'min_max_norm', 'unit_norm') or
        config dict, or a callable ``w -> w``; applied by :meth:`apply_constraints` after an optimizer step.
      trainable: False freezes the params as Keras's ``trainable=False`` does: no gradient (``stop_gradient``),
        no regularization loss, no constraint; exclude them from the optimizer with
        :func:`jaxnorm.trainable_mask`.
    """

    use_scale: bool = True
    scale_init: Any = "ones"
    param_dtype: Any = "float32"
    scale_regularizer: Any = None
    scale_constraint: Any = None
    trainable: bool = True

    _INITIALIZER_FIELDS: ClassVar[tuple[str, ...]] = ("scale_init",)
    _REGULARIZER_FIELDS: ClassVar[dict[str, str]] = {"scale_regularizer": "scale"}
    _CONSTRAINT_FIELDS: ClassVar[dict[str, str]] = {"scale_constraint": "scale"}

    @property
    def _has_scale(self) -> bool:
        return self.use_scale

    def _param_entries(self, pshape: tuple[int, ...]) -> dict[str, ParamEntry]:
        if not self._has_scale:
            return {}
        return {"scale": ParamEntry(pshape, self.param_dtype, self.scale_init, "multiplier per feature (gamma)")}


@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)
class Affine(Scaled):
    """The fields of a layer that learns ``scale`` and an offset ``bias`` per feature (Keras's ``gamma`` and
    ``beta``), keyword-only after the layer's own fields: :class:`Scaled`'s and

    Attributes:
      use_bias: learn ``bias`` (Keras ``center``).
      bias_init: its initializer (default 'zeros'), as ``scale_init``.
      bias_regularizer, bias_constraint: as ``scale_regularizer`` and ``scale_constraint``.
    """

    use_bias: bool = True
    bias_init: Any = "zeros"
    bias_regularizer: Any = None
    bias_constraint: Any = None

    _INITIALIZER_FIELDS: ClassVar[tuple[str, ...]] = ("scale_init", "bias_init")
    _REGULARIZER_FIELDS: ClassVar[dict[str, str]] = {"scale_regularizer": "scale", "bias_regularizer": "bias"}
    _CONSTRAINT_FIELDS: ClassVar[dict[str, str]] = {"scale_constraint": "scale", "bias_constraint": "bias"}

    @property
    def _has_bias(self) -> bool:
        return self.use_bias

    def _param_entries(self, pshape: tuple[int, ...]) -> dict[str, ParamEntry]:
        entries = super()._param_entries(pshape)
        if self._has_bias:
            entries["bias"] = ParamEntry(pshape, self.param_dtype, self.bias_init, "offset per feature (beta)")
        return entries


def _param(params: Mapping[str, jax.Array], name: str, field: str) -> jax.Array:
    if not isinstance(params, Mapping) or name not in params:
        keys = sorted(params) if isinstance(params, Mapping) else type(params).__name__
        raise ValueError(
            f"`params` has no {name!r} for `{field}` (got {keys}). Pass the layer's own params from `init`."
        )
    return params[name]


def check_training(training: Any, layer: str, required: bool) -> bool:
    """Validates the ``training`` flag of ``apply``."""
    if training is None:
        if not required:
            return False
        raise TypeError(
            f"{layer}.apply() needs `training`: pass training=True in the train step (batch statistics, "
            "moving statistics updated) or training=False for evaluation (moving statistics)."
        )
    return validation.check_bool(training, "training")


def init_input(x: Any) -> tuple[tuple[int, ...], Any]:
    """Shape and dtype of ``init``'s example input: an array or a ``jax.ShapeDtypeStruct``."""
    if isinstance(x, jax.ShapeDtypeStruct):
        validation.check_float_dtype(x.dtype, "x")
        return tuple(x.shape), x.dtype
    arr = validation.check_float_array(x, "x")
    return arr.shape, arr.dtype


def init_arrays(key: Any, specs: dict[str, tuple[Any, tuple[int, ...], Any]]) -> dict[str, jax.Array]:
    """Runs each ``name: (initializer, shape, dtype)`` with its own subkey of ``key``."""
    if not specs:
        return {}
    if key is None:
        key = jax.random.key(0)
    keys = jax.random.split(key, len(specs))
    out = {}
    for k, (name, (init, shape, dtype)) in zip(keys, specs.items(), strict=False):
        value = initializers.resolve(init, name)(k, shape, dtype)
        out[name] = jnp.asarray(value, dtype)
    return out


def _checked_call(method: Any) -> Any:
    """``method`` (a spec's ``init`` or ``apply``) with two checks first: no more positional arguments than it
    takes (``training`` and ``mask`` are keyword-only) and, for ``init``, a PRNG key (or None) as ``key``."""
    params = list(inspect.signature(method).parameters.values())[1:]  # without self
    positional = [p.name for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    keyword_only = [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
    name = method.__name__

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        if len(args) > len(positional):
            extra = ", ".join(repr(a) if isinstance(a, bool | None | int | float) else type(a).__name__
                              for a in args[len(positional):])
            given = ", ".join(positional + [f"{k}=..." for k in keyword_only[:1]])
            raise TypeError(
                f"{type(self).__name__}.{name} takes {len(positional)} positional arguments "
                f"({', '.join(positional)}) and then "
                f"{', '.join(f'`{k}`' for k in keyword_only)} by keyword only; got {len(args)} positional "
                f"(the extra: {extra}). Call it as {name}({given})."
            )
        if name == "init":
            validation.check_key(args[0] if args else kwargs.get("key"))
        return method(self, *args, **kwargs)

    call._checked_call = True  # type: ignore[attr-defined]
    return call
