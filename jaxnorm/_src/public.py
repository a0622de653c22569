"""Where a public name lives: the module users import it from, not the private one that defines it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def publish(namespace: dict[str, Any], names: Iterable[str]) -> None:
    """Sets ``__module__`` of each class named in ``names`` to the public module whose globals are ``namespace``
    (reprs, pickles and the docs then say ``jaxnorm.linen.LayerNorm``, where users import it from).

    Args:
      namespace: the public module's ``globals()``.
      names: its ``__all__``.

    Raises:
      KeyError: a name of ``names`` that the module does not define.
    """
    for name in names:
        namespace[name].__module__ = namespace["__name__"]
