"""Keras objects given as a name, a Keras config dict or a callable: what regularizers and constraints share.

A :class:`Family` holds what differs between ``keras.regularizers`` and ``keras.constraints`` (class defaults,
the JAX function each class becomes, the wording of messages) and reads a spec for :mod:`regularizers` and
:mod:`constraints`: the Keras class name, the config dict and its keys, and the checks of the spec's form.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax

from jaxnorm._src.frozen import freeze, thaw

WeightFn = Callable[[jax.Array], jax.Array]

_CONFIG_KEYS = {"module", "class_name", "config", "registered_name"}


def _key(name: str) -> str:
    """A class name without '_', whitespace and case: 'l1_l2', 'L1L2' and 'l1l2' all give 'l1l2'."""
    return re.sub(r"[_\s]", "", name).lower()


@dataclasses.dataclass(frozen=True)
class Family:
    """One family of Keras objects (regularizers or constraints) as jaxnorm reads it.

    Attributes:
      kind: the singular noun in messages, 'regularizer' or 'constraint'.
      module: the Keras module written by :meth:`serialize`, e.g. 'keras.regularizers'.
      defaults: Keras class name -> its constructor's defaults, in Keras's ``get_config`` key order.
      unsupported: Keras class names that jaxnorm does not implement.
      supported_text: the sentence that ends the messages about unknown or unsupported classes.
      names: the Keras names listed in the message for a spec of the wrong type, e.g. "('l1', 'l2', 'l1_l2')".
      signature: the callable's form in messages, e.g. 'w -> scalar'.
      arguments: what a config holds, in messages: 'factors' or 'arguments'.
      example: a config dict in messages, e.g. "{'class_name': 'L2', 'config': {'l2': 0.01}}".
      example_name: a Keras name in messages, e.g. 'l2'.
      config: ``(class name, the given config) -> config as Keras's get_config returns it``; validates values.
      build: ``(class name, config, argument name) -> the JAX function``.
      wrap: ``(user's callable, argument name) -> the JAX function`` checking the callable's result.
    """

    kind: str
    module: str
    defaults: Mapping[str, Mapping[str, Any]]
    unsupported: tuple[str, ...]
    supported_text: str
    names: str
    signature: str
    arguments: str
    example: str
    example_name: str
    config: Callable[[str, Mapping[str, Any]], dict[str, Any]]
    build: Callable[[str, dict[str, Any], str], WeightFn]
    wrap: Callable[[Callable[[Any], Any], str], WeightFn]

    def _class_name(self, cls: Any) -> str:
        """The Keras class name for any spelling of it ('max_norm', 'maxnorm', 'MaxNorm' give 'MaxNorm')."""
        if not isinstance(cls, str):
            raise TypeError(
                f"the {self.kind}'s 'class_name' must be a string, got {cls!r} ({type(cls).__name__})."
            )
        for known in self.defaults:
            if _key(known) == _key(cls):
                return known
        for known in self.unsupported:
            if _key(known) == _key(cls):
                raise ValueError(
                    f"the Keras {self.kind} {cls!r} is not supported by jaxnorm. {self.supported_text}"
                )
        raise ValueError(f"unknown {self.kind} {cls!r}. {self.supported_text}")

    def _read(self, spec: str | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """(Keras class name, config as Keras's ``get_config`` returns it) for a name or a config dict."""
        if isinstance(spec, str):
            cls = self._class_name(spec)
            return cls, self.config(cls, {})
        extra = sorted(set(spec) - _CONFIG_KEYS, key=str)
        if extra:
            raise ValueError(
                f"a Keras {self.kind} config has the keys {sorted(_CONFIG_KEYS)}, got unknown keys {extra} in "
                f"{spec!r}. The {self.arguments} go inside 'config', e.g. {self.example}."
            )
        if "class_name" not in spec:
            raise ValueError(
                f"a Keras {self.kind} config needs a 'class_name' key, got keys {sorted(spec, key=str)}. "
                f"E.g. {self.example}."
            )
        cls = self._class_name(spec["class_name"])
        kwargs = spec.get("config") or {}
        if not isinstance(kwargs, Mapping):
            raise TypeError(
                f"the {cls} config's 'config' must be a dict, got {kwargs!r} ({type(kwargs).__name__})."
            )
        unknown = sorted(set(kwargs) - set(self.defaults[cls]), key=str)
        if unknown:
            raise ValueError(
                f"{cls} takes the config keys {list(self.defaults[cls])}, got unknown keys {unknown} in "
                f"{dict(kwargs)!r}."
            )
        return cls, self.config(cls, kwargs)

    def _keras_config(self, spec: str | Mapping[str, Any], name: str) -> tuple[str, dict[str, Any]]:
        """As :meth:`_read`, with the argument's name in front of any error message."""
        try:
            return self._read(spec)
        except (ValueError, TypeError) as err:
            raise type(err)(f"`{name}`: {err}") from None

    def _type_error(self, spec: Any, name: str) -> TypeError:
        """The error for a spec that is neither None, a name, a config dict nor a callable."""
        return TypeError(
            f"`{name}` must be None, a Keras {self.kind} name {self.names}, a Keras {self.kind} config dict, "
            f"or a callable `{self.signature}`; got {spec!r} ({type(spec).__name__})."
        )

    def check(self, spec: Any, name: str) -> Any:
        """Validates ``spec`` (see :meth:`resolve`) and returns it with dicts frozen and lists as tuples."""
        self.resolve(spec, name)
        return freeze(spec)

    def resolve(self, spec: Any, name: str) -> WeightFn | None:
        """The JAX function for ``spec`` (``build``'s for a name or config, ``wrap``'s for a callable), or None."""
        spec = thaw(spec)
        if spec is None:
            return None
        if isinstance(spec, str | Mapping):
            return self.build(*self._keras_config(spec, name), name)
        if callable(spec) and not inspect.isclass(spec):
            return self.wrap(spec, name)
        raise self._type_error(spec, name)

    def serialize(self, spec: Any, name: str) -> dict[str, Any] | None:
        """None, or the config dict Keras writes for ``spec``; TypeError for a callable, which has no JSON form."""
        spec = thaw(spec)
        if spec is None:
            return None
        if isinstance(spec, str | Mapping):
            cls, config = self._keras_config(spec, name)
            return {"module": self.module, "class_name": cls, "config": config, "registered_name": None}
        if callable(spec) and not inspect.isclass(spec):
            raise TypeError(
                f"`{name}`={spec!r} is a callable, which has no JSON form, so get_config cannot write it. "
                f"Give the layer a Keras {self.kind} name or config instead, e.g. {name}={self.example_name!r} or "
                f"{name}={self.example}."
            )
        raise self._type_error(spec, name)
