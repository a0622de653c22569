"""What every layer spec shares: immutability, hashing, config round-trips and Keras config translation.

A spec is a frozen dataclass of hyperparameters (Python values only, no arrays). Its ``init`` and ``apply`` are
pure: ``init(key, x) -> (params, state)`` and ``apply(params, state, x, *, training, mask) -> (y, new_state)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jaxnorm._src import initializers, validation


def _is_float32_dtype(value: Any) -> bool:
    """Keras's ``dtype`` config entry: None, 'float32', or a DTypePolicy config whose name is 'float32'."""
    if value is None:
        return True
    if isinstance(value, Mapping):
        value = (value.get("config") or {}).get("name")
    return value == "float32"


@dataclasses.dataclass(frozen=True)
class Layer:
    """Base class of jaxnorm layer specs (hyperparameters only; see subclasses)."""

    # Fields holding initializers (stored frozen, resolved at init).
    _INITIALIZER_FIELDS: ClassVar[tuple[str, ...]] = ()
    # Keras config key -> jaxnorm field.
    _KERAS_RENAMES: ClassVar[dict[str, str]] = {}
    # Keras config keys jaxnorm accepts only at the given values: key -> (accepts(value), what is accepted).
    _KERAS_RESTRICTED: ClassVar[dict[str, tuple[Callable[[Any], bool], str]]] = {
        "name": (lambda v: True, "any"),
        "trainable": (lambda v: v is True, "True"),
        "dtype": (_is_float32_dtype, "'float32'"),
    }
    _KERAS_CLASS: ClassVar[str] = ""

    def _post_init_common(self) -> None:
        for f in self._INITIALIZER_FIELDS:
            object.__setattr__(self, f, initializers.check(getattr(self, f), f))
        if hasattr(self, "param_dtype"):
            dt = jnp.dtype(self.param_dtype)
            validation.check_float_dtype(dt, "param_dtype")
            object.__setattr__(self, "param_dtype", dt.name)
        if hasattr(self, "epsilon"):
            validation.check_epsilon(self.epsilon)

    def _affine_init_specs(self, shape: tuple[int, ...]) -> dict[str, tuple[Any, tuple[int, ...], Any]]:
        """``{'scale', 'bias'}`` (those enabled) -> (initializer, shape, param_dtype), for ``init_arrays``."""
        specs = {}
        if self.use_scale:
            specs["scale"] = (self.scale_init, shape, self.param_dtype)
        if self.use_bias:
            specs["bias"] = (self.bias_init, shape, self.param_dtype)
        return specs

    def _check_params(self, params: Any, shape: tuple[int, ...], fix: str) -> dict[str, jax.Array]:
        """Checks ``params`` holds exactly the enabled ``scale``/``bias``, each of ``shape``."""
        expected = {k: (shape, None) for k in self._affine_init_specs(shape)}
        return validation.check_tree(params, expected, "params", fix)

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
            elif isinstance(value, tuple):
                value = list(value)
            config[f.name] = value
        return config

    @classmethod
    def from_config(cls, config: Mapping[str, Any]):
        """Builds a spec from ``get_config()``'s dict, or from a Keras layer's ``get_config()`` dict.

        A Keras config (recognised by its Keras-only keys such as ``center``, ``gamma_initializer``) has its
        keys translated (``center`` -> ``use_bias``, ``gamma_initializer`` -> ``scale_init``, ...); Keras keys
        jaxnorm does not support yet must hold their neutral values (None regularizers and constraints,
        ``synchronized=False``, ...).

        Raises:
          TypeError: ``config`` is not a mapping.
          ValueError: a key is unknown, or a Keras key that is not supported yet holds a non-neutral value; the
            message names the keys.
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
