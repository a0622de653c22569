"""Weight regularizers given as Keras names, Keras config dicts, or callables ``w -> scalar``.

The same numbers as Keras 3 (``keras/src/regularizers/regularizers.py``), as pure JAX functions:

- ``L1(l1=0.01)``: ``l1 * sum(|w|)``
- ``L2(l2=0.01)``: ``l2 * sum(w ** 2)`` (no factor 1/2, as Keras)
- ``L1L2(l1=0.0, l2=0.0)``: the sum of both; a zero factor's term is left out, as Keras.

A layer spec stores the regularizer as the user gave it (:func:`check`), so ``get_config`` can write it back
(:func:`serialize`), and turns it into a JAX function when it runs (:func:`resolve`). Penalties are computed in
at least float32, also for bfloat16/float16 weights, where Keras computes in the weight's dtype.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxnorm._src import validation
from jaxnorm._src.keras_objects import Family

Regularizer = Callable[[jax.Array], jax.Array]

# Keras class name -> its constructor's defaults, in Keras's ``get_config`` key order.
_DEFAULTS: dict[str, dict[str, float]] = {
    "L1": {"l1": 0.01},
    "L2": {"l2": 0.01},
    "L1L2": {"l1": 0.0, "l2": 0.0},
}


def _factor(value: Any, key: str, cls: str) -> float:
    """Validates one factor as Keras's ``validate_float_arg`` does (None means the default)."""
    if value is None:
        value = _DEFAULTS[cls][key]
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{cls} factor {key!r} must be a non-negative float, got {value!r} ({type(value).__name__})."
        )
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{cls} factor {key!r} must be a finite float >= 0, got {value!r}.")
    if cls == "L1":
        # Keras keeps L1's factor as a float32 tensor: its config and its penalty use the float32 value.
        if value > float(np.finfo(np.float32).max):
            raise ValueError(f"L1 factor 'l1'={value!r} overflows float32, the dtype Keras stores it in.")
        value = float(np.float32(value))
    return value


def _config(cls: str, kwargs: Mapping[str, Any]) -> dict[str, float]:
    """The config as Keras's ``get_config`` returns it: every factor of ``cls``, validated, defaults filled in."""
    return {key: _factor(kwargs.get(key), key, cls) for key in _DEFAULTS[cls]}


def _penalty(cls: str, config: dict[str, float]) -> Regularizer:
    """The penalty of Keras's class ``cls`` with ``config``'s factors, as a JAX function."""
    l1, l2 = config.get("l1", 0.0), config.get("l2", 0.0)

    def penalty(w: Any) -> jax.Array:
        """The penalty of ``w``, computed in at least float32."""
        w = jnp.asarray(w)
        x = w.astype(validation.stats_dtype(w.dtype))
        if cls == "L1":
            return l1 * jnp.sum(jnp.abs(x))
        if cls == "L2":
            return l2 * jnp.sum(jnp.square(x))
        # L1L2: Keras adds only the terms whose factor is nonzero (so 0 * inf never makes a NaN).
        total = jnp.zeros((), x.dtype)
        if l1 != 0.0:
            total = total + l1 * jnp.sum(jnp.abs(x))
        if l2 != 0.0:
            total = total + l2 * jnp.sum(jnp.square(x))
        return total

    return penalty


def _checked_callable(fn: Callable[[Any], Any], name: str) -> Regularizer:
    """``fn`` as a penalty that raises ValueError when ``fn`` returns a non-scalar."""

    def penalty(w: Any) -> jax.Array:
        """``fn(w)``, checked to be a scalar."""
        out = jnp.asarray(fn(w))
        if out.shape != ():
            raise ValueError(
                f"`{name}`: the regularizer {fn!r} returned an array of shape {out.shape} for a weight of shape "
                f"{jnp.shape(w)}; a regularizer must return a scalar penalty, e.g. `0.01 * jnp.sum(w ** 2)`."
            )
        return out

    return penalty


_FAMILY = Family(
    kind="regularizer",
    module="keras.regularizers",
    defaults=_DEFAULTS,
    # Keras regularizers that jaxnorm does not implement (``get`` accepts them).
    unsupported=("OrthogonalRegularizer", "Regularizer"),
    supported_text=(
        "Supported Keras regularizers: 'L1', 'L2', 'L1L2' (also as 'l1', 'l2', 'l1_l2'), as a name or a config "
        "dict such as {'class_name': 'L2', 'config': {'l2': 0.01}}; or pass a callable `w -> scalar`, e.g. "
        "`lambda w: 0.01 * jnp.sum(jnp.abs(w))`."
    ),
    names="('l1', 'l2', 'l1_l2')",
    signature="w -> scalar",
    arguments="factors",
    example="{'class_name': 'L2', 'config': {'l2': 0.01}}",
    example_name="l2",
    config=_config,
    build=lambda cls, config, name: _penalty(cls, config),
    wrap=_checked_callable,
)


def check(spec: Any, name: str) -> Any:
    """Validates a regularizer as the user gave it and returns it in a hashable form (dicts frozen).

    Args:
      spec: None (no regularizer), a Keras name (``'l1'``, ``'l2'``, ``'l1_l2'``, ``'L1L2'``, ...), a Keras
        config dict (``{'class_name': 'L2', 'config': {'l2': 0.01}}``, with or without Keras's ``'module'`` and
        ``'registered_name'`` keys), or a callable ``w -> scalar``.
      name: the argument's name, used in error messages (e.g. ``'scale_regularizer'``).

    Returns:
      ``spec`` with dicts turned into :class:`~jaxnorm._src.frozen.FrozenDict` and lists into tuples.

    Raises:
      ValueError: an unknown or unsupported class (e.g. Keras's ``OrthogonalRegularizer``), unknown config
        keys, or a factor that is negative, NaN or infinite.
      TypeError: ``spec`` is none of the forms above, or a factor is not a number.
    """
    return _FAMILY.check(spec, name)


def resolve(spec: Any, name: str) -> Regularizer | None:
    """Returns the JAX penalty function ``penalty(w) -> scalar`` for a regularizer, or None for None.

    For Keras names and configs the penalty is, as in Keras 3 (``keras.regularizers.L1`` / ``L2`` / ``L1L2``)::

        L1:   l1 * sum(|w|)
        L2:   l2 * sum(w ** 2)
        L1L2: l1 * sum(|w|) + l2 * sum(w ** 2)   (a term whose factor is 0 is left out)

    computed in ``jnp.promote_types(w.dtype, jnp.float32)`` (at least float32; float64 kept) and returned as a
    scalar array of that dtype. L1's factor is the float32 value of ``l1``, as Keras stores it. A callable is
    called as is; its result must be a scalar.

    Args:
      spec: as for :func:`check` (a frozen spec is accepted too).
      name: the argument's name, used in error messages.

    Returns:
      A function of one array returning a scalar array, or None when ``spec`` is None.

    Raises:
      ValueError, TypeError: as :func:`check`. The returned function raises ValueError at trace time when a
        callable returns a non-scalar.
    """
    return _FAMILY.resolve(spec, name)


def serialize(spec: Any, name: str) -> dict[str, Any] | None:
    """The JSON form of a regularizer ``spec`` (as for :func:`check`; ``name`` names it in errors): None, or
    ``keras.regularizers.serialize(keras.regularizers.get(spec))``, every factor filled in as a float (L1's as its
    float32 value, e.g. ``0.009999999776482582``). Raises ``TypeError`` for a callable (it has no JSON form),
    otherwise as :func:`check`. See :meth:`keras_objects.Family.serialize`."""
    return _FAMILY.serialize(spec, name)
