"""Keras's side of each layer: one declarative record per spec, and the translations that read it.

Every spec class carries ``KERAS: ClassVar[KerasRecord | None]``: the Keras layer class it corresponds to, the
config keys it renames, the keys it accepts only at some values, the jaxnorm fields Keras has no key for (with
the value that computes what Keras computes), the entries it always writes, and its weight names. The spec's
``from_config``/``to_keras_config`` (layer.py) and the converters ``interop.from_keras``/``to_keras`` read only
this record; a spec whose record is None (SpectralNorm, WeightNorm: Keras has no such layer, or wraps a layer)
reads and writes jaxnorm configs only.

Source: the ``get_config()`` keys and weight names of Keras 3's ``BatchNormalization``, ``LayerNormalization``,
``GroupNormalization``, ``RMSNormalization``, ``UnitNormalization`` and ``Normalization``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

# (accepts(value), what is accepted, in words): a Keras key accepted only at some values, or a jaxnorm field
# with no Keras key and the value(s) that compute what Keras computes.
Accepts = tuple[Callable[[Any], bool], str]


def _is_float32_dtype(value: Any) -> bool:
    """Keras's ``dtype`` config entry with float32 variables: None, 'float32', a mixed policy ('mixed_float16',
    'mixed_bfloat16': float32 variables, half-precision input and output, which jaxnorm's dtype rule (output dtype
    = input dtype, statistics in float32) reproduces), or a DTypePolicy config with one of those names."""
    return policy_name(value) in (None, *DTYPE_POLICIES)


# The Keras dtype policies a spec can carry in ``dtype_policy`` (float32 variables; jaxnorm's own dtype rule
# computes what they compute on input of their compute dtype). 'float32' is stored as None, the default.
DTYPE_POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")

# The keys every Keras normalization layer with gamma/beta has: Keras key -> jaxnorm field.
AFFINE_RENAMES: Mapping[str, str] = {
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
AFFINE_WEIGHTS: Mapping[str, str] = {"gamma": "scale", "beta": "bias"}

# Keys every Keras layer config has, accepted by every record: ``name`` is dropped, ``dtype`` must be a policy
# with float32 variables (kept in ``dtype_policy`` by the specs that have that field).
_COMMON_RESTRICTED: Mapping[str, Accepts] = {
    "name": (lambda v: True, "any"),
    "dtype": (_is_float32_dtype, "'float32', 'mixed_float16' or 'mixed_bfloat16' (float32 variables)"),
}
# LayerNorm's and RMSNorm's zero-centred scale: Keras multiplies by gamma as stored.
NO_SCALE_OFFSET: Accepts = (lambda v: v == 0, "0.0 (Keras multiplies by gamma as stored)")
# jaxnorm fields of many specs with no Keras key (checked on the specs that have them).
_COMMON_EQUIVALENT: Mapping[str, Accepts] = {"param_dtype": (lambda v: v == "float32", "'float32'")}


@dataclasses.dataclass(frozen=True)
class KerasRecord:
    """How one jaxnorm spec reads and writes the config and weights of one Keras layer class.

    Attributes:
      class_name: the ``keras.layers`` class, e.g. 'BatchNormalization'.
      renamed: Keras config key -> jaxnorm field (``{'center': 'use_bias', ...}``); the keys written by
        ``to_keras_config``.
      restricted: Keras keys with no jaxnorm field, accepted only where ``accepts(value)``; ``name`` and
        ``dtype`` are accepted by every record.
      equivalent: jaxnorm fields with no Keras key -> (accepts(value), the value Keras computes); a spec with
        another value cannot be written as a Keras config. ``param_dtype`` ('float32') is checked on every spec
        that has it.
      fixed: entries ``to_keras_config`` always writes (InstanceNorm's ``groups=-1``).
      params: Keras weight name -> the key in ``params`` (``{'gamma': 'scale', 'beta': 'bias'}``).
      state: Keras weight name -> the key in ``state`` (``{'moving_mean': 'mean', ...}``); state keys not listed
        (BatchNorm's step counter) have no Keras weight.
      converts: ``interop.from_keras``/``to_keras`` convert built layers of this class (Normalization: configs
        only, its statistics are config entries).
      reads: ``interop.from_keras`` reads a ``class_name`` layer as this spec (False where another spec writes
        the same class: InstanceNorm is a ``GroupNormalization(groups=-1)``, read back as a GroupNorm).
      read: ``(config, kwargs) -> kwargs``, the spec's own step after the renames (BatchNorm: ``synchronized``).
      write: ``(spec, config) -> config``, the spec's own step after the renames (GroupNorm: ``groups``).
    """

    class_name: str
    renamed: Mapping[str, str]
    restricted: Mapping[str, Accepts] = dataclasses.field(default_factory=dict)
    equivalent: Mapping[str, Accepts] = dataclasses.field(default_factory=dict)
    fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    params: Mapping[str, str] = dataclasses.field(default_factory=dict)
    state: Mapping[str, str] = dataclasses.field(default_factory=dict)
    converts: bool = True
    reads: bool = True
    read: Callable[[Mapping[str, Any], dict[str, Any]], dict[str, Any]] | None = None
    write: Callable[[Any, dict[str, Any]], dict[str, Any]] | None = None

    @property
    def keys(self) -> frozenset[str]:
        """Every Keras config key this record reads."""
        return frozenset(self.renamed) | frozenset(self.restricted) | frozenset(_COMMON_RESTRICTED)

    @property
    def weights(self) -> dict[str, str]:
        """Keras weight name -> jaxnorm params or state key."""
        return {**self.params, **self.state}


def policy_name(value: Any) -> Any:
    """The policy name of Keras's ``dtype`` config entry (a name, or a ``DTypePolicy`` config dict)."""
    if isinstance(value, Mapping):
        value = (value.get("config") or {}).get("name")
    return value


def check_dtype_policy(value: Any) -> str | None:
    """Validates a spec's ``dtype_policy`` and returns it canonical: None for float32, else the policy name."""
    name = policy_name(value)
    if name is None or name == "float32":
        return None
    if not isinstance(name, str):
        raise TypeError(
            f"`dtype_policy` must be None or a Keras dtype policy name among {list(DTYPE_POLICIES)}, got "
            f"{value!r} ({type(value).__name__})."
        )
    if name not in DTYPE_POLICIES:
        raise ValueError(
            f"`dtype_policy` must be None or one of {list(DTYPE_POLICIES)} (Keras policies with float32 "
            f"variables, as jaxnorm's converters keep them); got {value!r}."
        )
    return name


def _fields(cls: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def is_keras_config(cls: Any, config: Mapping[str, Any]) -> bool:
    """Whether ``config`` is a Keras config for ``cls`` (it has a key Keras has and the spec has not)."""
    record = cls.KERAS
    return record is not None and bool((record.keys - _fields(cls)) & set(config))


def from_keras_config(cls: Any, config: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``cls`` for a Keras layer's ``get_config()`` dict, by ``cls.KERAS``.

    Raises:
      ValueError: a key the record does not know, or a restricted key at a value jaxnorm cannot reproduce.
    """
    record: KerasRecord = cls.KERAS
    restricted = {**_COMMON_RESTRICTED, **record.restricted}
    kwargs: dict[str, Any] = {}
    unsupported: list[str] = []
    unknown: list[str] = []
    for key, value in config.items():
        if key in record.renamed:
            kwargs[record.renamed[key]] = value
        elif key in restricted:
            accepts, what = restricted[key]
            if not accepts(value):
                unsupported.append(f"{key}={value!r} (supported: {what})")
            elif key == "dtype" and "dtype_policy" in _fields(cls):
                kwargs["dtype_policy"] = policy_name(value)  # kept for to_keras
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"unknown Keras config key(s) {sorted(unknown)} for {record.class_name}. Known keys: "
            f"{sorted(record.keys)}."
        )
    if unsupported:
        raise ValueError(
            f"Keras config key(s) not supported yet by jaxnorm.{cls.__name__}: {'; '.join(sorted(unsupported))}. "
            "Remove them or set them to the supported value to build the layer."
        )
    return kwargs if record.read is None else record.read(config, kwargs)


def to_keras_config(spec: Any, config: Mapping[str, Any]) -> dict[str, Any]:
    """The Keras config of ``spec`` (whose jaxnorm config is ``config``), by ``type(spec).KERAS``.

    Raises:
      ValueError: the spec has no Keras record, or a field holds a value Keras cannot express.
    """
    record: KerasRecord | None = type(spec).KERAS
    name = type(spec).__name__
    if record is None:
        raise ValueError(
            f"jaxnorm.{name} has no Keras layer equivalent (Keras has no such layer, or its version wraps a "
            "layer): it has a jaxnorm config (`get_config`) only."
        )
    equivalent = {f: a for f, a in _COMMON_EQUIVALENT.items() if hasattr(spec, f)} | dict(record.equivalent)
    bad = [f"{f}={config[f]!r} (Keras computes {what})" for f, (accepts, what) in equivalent.items()
           if not accepts(getattr(spec, f))]
    if bad:
        raise ValueError(
            f"jaxnorm.{name} settings with no Keras {record.class_name} equivalent: {'; '.join(bad)}. Use the "
            "value Keras computes to convert this layer."
        )
    out = {keras_key: config[field] for keras_key, field in record.renamed.items()}
    out.update(record.fixed)
    if hasattr(spec, "dtype_policy"):  # the source layer's policy (from_keras), float32 by default
        out["dtype"] = spec.dtype_policy or "float32"
    return out if record.write is None else record.write(spec, out)
