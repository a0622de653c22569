"""Hashable stand-ins for the dicts and lists a frozen spec stores (initializer, regularizer and constraint
configs, renorm clipping): a spec is a static ``jit`` argument, so every field must hash; ``thaw`` gives the
JSON form back for ``get_config``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class FrozenDict(tuple):
    """A hashable, immutable stand-in for a config dict stored on a frozen spec: sorted (key, value) pairs."""

    def __repr__(self) -> str:
        return repr(thaw(self))


def freeze(value: Any) -> Any:
    """Recursively turns dicts into hashable FrozenDicts and lists into tuples."""
    if isinstance(value, Mapping):
        return FrozenDict(sorted((k, freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """Inverse of :func:`freeze`."""
    if isinstance(value, FrozenDict):
        return {k: thaw(v) for k, v in value}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value
