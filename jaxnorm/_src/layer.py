"""What every layer spec shares: immutability, hashing, config round-trips and Keras config translation.

A spec is a frozen dataclass of hyperparameters (Python values only, no arrays). Its ``init`` and ``apply`` are
pure: ``init(key, x) -> (params, state)`` and ``apply(params, state, x, *, training, mask) -> (y, new_state)``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jaxnorm._src import constraints, initializers, regularizers, validation


def _is_float32_dtype(value: Any) -> bool:
    """Keras's ``dtype`` config entry with float32 variables: None, 'float32', a mixed policy ('mixed_float16',
    'mixed_bfloat16': float32 variables, half-precision input and output, which jaxnorm's dtype rule (output dtype
    = input dtype, statistics in float32) reproduces), or a DTypePolicy config with one of those names."""
    if value is None:
        return True
    if isinstance(value, Mapping):
        value = (value.get("config") or {}).get("name")
    return value in ("float32", "mixed_float16", "mixed_bfloat16")


# The Keras dtype policies a spec can carry in ``dtype_policy`` (float32 variables; jaxnorm's own dtype rule
# computes what they compute on input of their compute dtype). 'float32' is stored as None, the default.
KERAS_DTYPE_POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")


def keras_policy_name(value: Any) -> Any:
    """The policy name of Keras's ``dtype`` config entry (a name, or a ``DTypePolicy`` config dict)."""
    if isinstance(value, Mapping):
        value = (value.get("config") or {}).get("name")
    return value


def check_dtype_policy(value: Any) -> str | None:
    """Validates a spec's ``dtype_policy`` and returns it canonical: None for float32, else the policy name."""
    name = keras_policy_name(value)
    if name is None or name == "float32":
        return None
    if not isinstance(name, str):
        raise TypeError(
            f"`dtype_policy` must be None or a Keras dtype policy name among {list(KERAS_DTYPE_POLICIES)}, got "
            f"{value!r} ({type(value).__name__})."
        )
    if name not in KERAS_DTYPE_POLICIES:
        raise ValueError(
            f"`dtype_policy` must be None or one of {list(KERAS_DTYPE_POLICIES)} (Keras policies with float32 "
            f"variables, as jaxnorm's converters keep them); got {value!r}."
        )
    return name


@dataclasses.dataclass(frozen=True)
class Layer:
    """Base class of jaxnorm layer specs (hyperparameters only; see subclasses)."""

    # Fields holding initializers (stored frozen, resolved at init).
    _INITIALIZER_FIELDS: ClassVar[tuple[str, ...]] = ()
    # Regularizer / constraint fields -> the parameter they act on.
    _REGULARIZER_FIELDS: ClassVar[dict[str, str]] = {"scale_regularizer": "scale", "bias_regularizer": "bias"}
    _CONSTRAINT_FIELDS: ClassVar[dict[str, str]] = {"scale_constraint": "scale", "bias_constraint": "bias"}
    # Fields with no Keras key and the value that computes what Keras computes: field -> (accepts, description).
    _KERAS_EQUIVALENT: ClassVar[dict[str, tuple[Callable[[Any], bool], str]]] = {
        "param_dtype": (lambda v: v == "float32", "'float32'"),
    }
    # Keras config key -> jaxnorm field.
    _KERAS_RENAMES: ClassVar[dict[str, str]] = {}
    # The keys every Keras normalization layer with gamma/beta has.
    _KERAS_AFFINE_RENAMES: ClassVar[dict[str, str]] = {
        "axis": "axis",
        "epsilon": "epsilon",
        "center": "use_bias",
        "scale": "use_scale",
        "beta_initializer": "bias_init",
        "gamma_initializer": "scale_init",
        "beta_regularizer": "bias_regularizer",
        "gamma_regularizer": "scale_regularizer",
        "beta_constraint": "bias_constraint",
        "gamma_constraint": "scale_constraint",
        "trainable": "trainable",
    }
    # Keras config keys jaxnorm accepts only at the given values: key -> (accepts(value), what is accepted).
    _KERAS_RESTRICTED: ClassVar[dict[str, tuple[Callable[[Any], bool], str]]] = {
        "name": (lambda v: True, "any"),
        "dtype": (_is_float32_dtype, "'float32', 'mixed_float16' or 'mixed_bfloat16' (float32 variables)"),
    }
    _KERAS_CLASS: ClassVar[str] = ""
    # Keras config entries jaxnorm always writes in to_keras_config.
    _KERAS_FIXED: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs):
        # Every spec's __post_init__ first turns NumPy/JAX scalars into Python numbers (momentum=np.float32(0.9),
        # epsilon=jnp.float32(1e-3), use_scale=np.True_), so that the field checks see Python numbers and the
        # spec stays hashable (a static jit argument) with a JSON-serializable config.
        super().__init_subclass__(**kwargs)
        post = cls.__dict__.get("__post_init__")
        if post is not None and not getattr(post, "_python_scalars_first", False):

            @functools.wraps(post)
            def __post_init__(self):
                self._python_scalars()
                post(self)

            __post_init__._python_scalars_first = True
            cls.__post_init__ = __post_init__

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
                if isinstance(value, str | initializers.FrozenDict):
                    value = initializers.freeze(module.serialize(initializers.thaw(value), f))
                object.__setattr__(self, f, value)
        validation.check_bool(self.trainable, "trainable")
        if hasattr(self, "dtype_policy"):
            object.__setattr__(self, "dtype_policy", check_dtype_policy(self.dtype_policy))
        if hasattr(self, "param_dtype"):
            object.__setattr__(self, "param_dtype", validation.check_dtype_name(self.param_dtype, "param_dtype"))
        if hasattr(self, "epsilon"):
            validation.check_epsilon(self.epsilon)

    @property
    def _has_scale(self) -> bool:
        return self.use_scale

    @property
    def _has_bias(self) -> bool:
        return self.use_bias

    def _has_param(self, name: str) -> bool:
        return self._has_scale if name == "scale" else self._has_bias

    def _affine_init_specs(self, shape: tuple[int, ...]) -> dict[str, tuple[Any, tuple[int, ...], Any]]:
        """``{'scale', 'bias'}`` (those enabled) -> (initializer, shape, param_dtype), for ``init_arrays``."""
        specs = {}
        if self._has_scale:
            specs["scale"] = (self.scale_init, shape, self.param_dtype)
        if self._has_bias:
            specs["bias"] = (self.bias_init, shape, self.param_dtype)
        return specs

    def _check_params(self, params: Any, shape: tuple[int, ...], fix: str) -> dict[str, jax.Array]:
        """Checks ``params`` holds exactly the enabled ``scale``/``bias``, each of ``shape``."""
        expected = {k: (shape, None) for k in self._affine_init_specs(shape)}
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
            ``momentum_convention='torch'``, a ``param_dtype`` other than float32); the message names it.
          TypeError: an initializer, regularizer or constraint is a callable with no Keras form.
        """
        config = self.get_config()
        bad = [
            f"{f}={config[f]!r} (Keras computes {what})"
            for f, (accepts, what) in self._KERAS_EQUIVALENT.items()
            if not accepts(getattr(self, f))
        ]
        if bad:
            raise ValueError(
                f"jaxnorm.{type(self).__name__} settings with no Keras {self._KERAS_CLASS} equivalent: "
                f"{'; '.join(bad)}. Use the value Keras computes to convert this layer."
            )
        out = {keras_key: config[field] for keras_key, field in self._KERAS_RENAMES.items()}
        out.update(self._KERAS_FIXED)
        if hasattr(self, "dtype_policy"):  # the source layer's policy (from_keras), float32 by default
            out["dtype"] = self.dtype_policy or "float32"
        return out

    def get_config(self) -> dict[str, Any]:
        """The spec's hyperparameters as a JSON-serializable dict; ``type(self).from_config`` inverts it.

        Raises:
          TypeError: an initializer is a callable other than ``jax.nn.initializers.zeros``/``ones``, which has
            no JSON form (give a Keras name or config instead).
        """
        config = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in self._INITIALIZER_FIELDS:
                value = initializers.serialize(value, f.name)
            elif f.name in self._REGULARIZER_FIELDS:
                value = regularizers.serialize(value, f.name)
            elif f.name in self._CONSTRAINT_FIELDS:
                value = constraints.serialize(value, f.name)
            elif isinstance(value, initializers.FrozenDict):
                value = initializers.thaw(value)
            elif isinstance(value, tuple):
                value = list(value)
            config[f.name] = value
        return config

    @classmethod
    def from_config(cls, config: Mapping[str, Any]):
        """Builds a spec from ``get_config()``'s dict, or from a Keras layer's ``get_config()`` dict.

        A Keras config (recognised by its Keras-only keys such as ``center``, ``gamma_initializer``) has its
        keys translated (``center`` -> ``use_bias``, ``gamma_initializer`` -> ``scale_init``,
        ``gamma_regularizer`` -> ``scale_regularizer``, ...). ``name`` is dropped; ``dtype`` must be a policy
        with float32 variables ('float32', 'mixed_float16', 'mixed_bfloat16'), kept in ``dtype_policy`` by the
        specs that have it (so that ``to_keras_config`` writes it back); BatchNormalization's ``synchronized``
        True becomes ``axis_name`` (:attr:`BatchNorm.KERAS_SYNCHRONIZED_AXIS_NAME`) and it gets
        ``allow_single_value=True`` (Keras trains on a batch of one value per feature: the output is beta).

        Raises:
          TypeError: ``config`` is not a mapping.
          ValueError: a key is unknown, or a Keras key holds a value jaxnorm cannot reproduce; the message names
            the keys.
        """
        if not isinstance(config, Mapping):
            raise TypeError(f"`config` must be a dict, got {type(config).__name__}.")
        fields = {f.name for f in dataclasses.fields(cls)}
        keras_only = (set(cls._KERAS_RENAMES) | set(cls._KERAS_RESTRICTED)) - fields
        if keras_only & set(config):
            return cls(**cls._translate_keras(config))
        unknown = sorted(set(config) - fields)
        if unknown:
            raise ValueError(
                f"unknown config key(s) {unknown} for jaxnorm.{cls.__name__}. Accepted keys: {sorted(fields)} "
                f"(jaxnorm), or a Keras {cls._KERAS_CLASS} config."
            )
        return cls(**dict(config))

    @classmethod
    def _translate_keras(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        kwargs, unsupported, unknown = {}, [], []
        for key, value in config.items():
            if key in cls._KERAS_RENAMES:
                kwargs[cls._KERAS_RENAMES[key]] = value
            elif key in cls._KERAS_RESTRICTED:
                accepts, what = cls._KERAS_RESTRICTED[key]
                if not accepts(value):
                    unsupported.append(f"{key}={value!r} (supported: {what})")
                elif key == "dtype" and any(f.name == "dtype_policy" for f in dataclasses.fields(cls)):
                    kwargs["dtype_policy"] = keras_policy_name(value)  # kept for to_keras
            else:
                unknown.append(key)
        if unknown:
            raise ValueError(
                f"unknown Keras config key(s) {sorted(unknown)} for {cls._KERAS_CLASS}. Known keys: "
                f"{sorted(set(cls._KERAS_RENAMES) | set(cls._KERAS_RESTRICTED))}."
            )
        if unsupported:
            raise ValueError(
                f"Keras config key(s) not supported yet by jaxnorm.{cls.__name__}: "
                f"{'; '.join(sorted(unsupported))}. "
                "Remove them or set them to the supported value to build the layer."
            )
        return kwargs


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
