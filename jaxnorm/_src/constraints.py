"""Weight constraints given as Keras names, Keras config dicts, or callables ``w -> w'``.

The same projections as Keras 3 (``keras/src/constraints/constraints.py``), as pure JAX functions. With
``n = sqrt(sum(w ** 2, axis, keepdims=True))`` and Keras's ``epsilon = 1e-7``:

- ``NonNeg()``: ``max(w, 0)``
- ``MaxNorm(max_value=2, axis=0)``: ``w * (clip(n, 0, max_value) / (epsilon + n))``
- ``MinMaxNorm(min_value=0.0, max_value=1.0, rate=1.0, axis=0)``:
  ``w * ((rate * clip(n, min_value, max_value) + (1 - rate) * n) / (epsilon + n))``
- ``UnitNorm(axis=0)``: ``w / (epsilon + n)``

``axis`` is an int, a list of ints, or None (all axes), as in Keras. A layer spec stores the constraint as the
user gave it (:func:`check`), writes it back with :func:`serialize` and applies :func:`resolve`'s function to
the weight after each update. Norms are computed in at least float32; the result has the weight's dtype.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxnorm._src import validation
from jaxnorm._src.keras_objects import Family

Constraint = Callable[[jax.Array], jax.Array]

# keras.config.epsilon(), the fuzz factor Keras adds to the norms.
EPSILON = 1e-7

# Keras class name -> its constructor's defaults, in Keras's ``get_config`` key order.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "NonNeg": {},
    "MaxNorm": {"max_value": 2, "axis": 0},
    "MinMaxNorm": {"min_value": 0.0, "max_value": 1.0, "rate": 1.0, "axis": 0},
    "UnitNorm": {"axis": 0},
}


def _py(value: Any) -> Any:
    """NumPy scalars as Python numbers (Keras's serializer does the same)."""
    return value.item() if isinstance(value, np.generic) else value


def _number(value: Any, key: str, cls: str) -> Any:
    """Validates one numeric argument: a finite real number >= 0, kept as given (an int stays an int: the
    Python number, typed Any as NumPy's and Python's numbers share no static type)."""
    value = _py(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{cls} {key!r} must be a number, got {value!r} ({type(value).__name__}).")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{cls} {key!r} must be a finite number >= 0, got {value!r}.")
    return value


def _axis(value: Any, cls: str) -> Any:
    """Validates ``axis``: an int, a list of ints (from any sequence of ints) or None (as given: typed Any)."""
    value = _py(value)
    if value is None or (isinstance(value, numbers.Integral) and not isinstance(value, bool)):
        return value
    if isinstance(value, Sequence) and not isinstance(value, str):
        axes = [_py(a) for a in value]
        if all(isinstance(a, numbers.Integral) and not isinstance(a, bool) for a in axes):
            return axes
    raise TypeError(
        f"{cls} 'axis' must be an int, a list of ints or None (all axes), got {value!r} ({type(value).__name__})."
    )


def _config(cls: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The config as Keras's ``get_config`` returns it: ``cls``'s arguments validated, defaults filled in."""
    config: dict[str, Any] = {}
    for key, default in _DEFAULTS[cls].items():
        value = kwargs.get(key, default)
        config[key] = _axis(value, cls) if key == "axis" else _number(value, key, cls)
    if cls == "MinMaxNorm":
        if config["min_value"] > config["max_value"]:
            raise ValueError(
                f"MinMaxNorm needs min_value <= max_value, got min_value={config['min_value']!r} > "
                f"max_value={config['max_value']!r}."
            )
        if config["rate"] > 1:
            raise ValueError(
                f"MinMaxNorm 'rate' must be in [0, 1] (1 enforces the bounds at each step, smaller values move "
                f"towards them), got {config['rate']!r}."
            )
    return config


def _reduction_axes(axis: int | list[int] | None, shape: tuple[int, ...], cls: str, name: str) -> tuple[int, ...]:
    """``axis`` as distinct non-negative axes of a weight of ``shape`` (all of them for None)."""
    ndim = len(shape)
    if axis is None:
        return tuple(range(ndim))
    axes = [axis] if isinstance(axis, int) else list(axis)
    bad = [a for a in axes if not -ndim <= a < ndim]
    if bad:
        raise ValueError(
            f"`{name}`: {cls} axis={axis!r} is out of range for a weight of shape {shape} (rank {ndim}); axes "
            f"must be in [{-ndim}, {ndim - 1}]. Set the constraint's 'axis' for this weight, e.g. "
            f"{{'class_name': {cls!r}, 'config': {{'axis': {max(ndim - 1, 0)}}}}}, or axis=None for all axes."
        )
    canonical = tuple(a % ndim for a in axes)
    if len(set(canonical)) != len(canonical):
        raise ValueError(
            f"`{name}`: {cls} axis={axis!r} names the same axis more than once for a weight of shape {shape}."
        )
    return canonical


def _projection(cls: str, config: dict[str, Any], name: str) -> Constraint:
    """The projection of Keras's class ``cls`` with ``config``'s arguments, as a JAX function."""

    def project(w: Any) -> jax.Array:
        """``w`` projected, with norms computed in at least float32 and the result in ``w``'s dtype."""
        w = jnp.asarray(w)
        if cls == "NonNeg":
            return jnp.maximum(w, jnp.zeros((), w.dtype))
        if not jnp.issubdtype(w.dtype, jnp.floating):
            raise TypeError(
                f"`{name}`: {cls} needs a floating-point weight, got dtype {np.dtype(w.dtype).name}. "
                "Cast the weight first, e.g. `w.astype(jnp.float32)`."
            )
        axes = _reduction_axes(config["axis"], w.shape, cls, name)
        x = w.astype(validation.stats_dtype(w.dtype))
        norms = jnp.sqrt(jnp.sum(jnp.square(x), axis=axes, keepdims=True))
        if cls == "UnitNorm":
            return (x / (EPSILON + norms)).astype(w.dtype)
        if cls == "MaxNorm":
            desired = jnp.clip(norms, 0, config["max_value"])
        else:  # MinMaxNorm
            rate = config["rate"]
            desired = rate * jnp.clip(norms, config["min_value"], config["max_value"]) + (1 - rate) * norms
        return (x * (desired / (EPSILON + norms))).astype(w.dtype)

    return project


def _checked_callable(fn: Callable[[Any], Any], name: str) -> Constraint:
    """``fn`` as a projection: ValueError when ``fn`` changes the shape, the result cast to the weight's dtype."""

    def project(w: Any) -> jax.Array:
        """``fn(w)``, checked to have ``w``'s shape, in ``w``'s dtype."""
        w = jnp.asarray(w)
        out = jnp.asarray(fn(w))
        if out.shape != w.shape:
            raise ValueError(
                f"`{name}`: the constraint {fn!r} returned an array of shape {out.shape} for a weight of shape "
                f"{w.shape}; a constraint must return an array of the weight's shape."
            )
        return out.astype(w.dtype)

    return project


_FAMILY = Family(
    kind="constraint",
    module="keras.constraints",
    defaults=_DEFAULTS,
    unsupported=("Constraint",),
    supported_text=(
        "Supported Keras constraints: 'NonNeg', 'MaxNorm', 'MinMaxNorm', 'UnitNorm' (also as 'non_neg', "
        "'max_norm', 'min_max_norm', 'unit_norm'), as a name or a config dict such as "
        "{'class_name': 'MaxNorm', 'config': {'max_value': 2, 'axis': 0}}; or pass a callable `w -> w'`, e.g. "
        "`lambda w: jnp.clip(w, -1, 1)`."
    ),
    names="('non_neg', 'max_norm', 'min_max_norm', 'unit_norm')",
    signature="w -> w'",
    arguments="arguments",
    example="{'class_name': 'MaxNorm', 'config': {'max_value': 2, 'axis': 0}}",
    example_name="non_neg",
    config=_config,
    build=_projection,
    wrap=_checked_callable,
)


def check(spec: Any, name: str) -> Any:
    """Validates a constraint as the user gave it and returns it in a hashable form (dicts frozen).

    Args:
      spec: None (no constraint), a Keras name (``'non_neg'``, ``'max_norm'``, ``'MinMaxNorm'``, ...), a Keras
        config dict (``{'class_name': 'MaxNorm', 'config': {'max_value': 2, 'axis': 0}}``, with or without
        Keras's ``'module'`` and ``'registered_name'`` keys), or a callable ``w -> w'`` of the weight's shape.
      name: the argument's name, used in error messages (e.g. ``'scale_constraint'``).

    Returns:
      ``spec`` with dicts turned into :class:`~jaxnorm._src.frozen.FrozenDict` and lists into tuples.

    Raises:
      ValueError: an unknown or unsupported class, unknown config keys, a negative or non-finite value,
        ``min_value > max_value`` or ``rate > 1`` for MinMaxNorm. Whether ``axis`` fits the weight is checked
        when the constraint is applied, when the weight's shape is known.
      TypeError: ``spec`` is none of the forms above, a value is not a number, or ``axis`` is not an int, a
        list of ints or None.
    """
    return _FAMILY.check(spec, name)


def resolve(spec: Any, name: str) -> Constraint | None:
    """Returns the JAX projection ``project(w) -> w'`` for a constraint, or None for None.

    For Keras names and configs, as in Keras 3 (``keras.constraints.NonNeg`` / ``MaxNorm`` / ``MinMaxNorm`` /
    ``UnitNorm``), with ``n = sqrt(sum(w ** 2, axis, keepdims=True))`` and ``epsilon = 1e-7``::

        NonNeg:     max(w, 0)
        MaxNorm:    w * (clip(n, 0, max_value) / (epsilon + n))
        MinMaxNorm: w * ((rate * clip(n, min_value, max_value) + (1 - rate) * n) / (epsilon + n))
        UnitNorm:   w / (epsilon + n)

    The norms and products are computed in ``jnp.promote_types(w.dtype, jnp.float32)``, the result is cast to
    ``w.dtype``. A callable's result must have the weight's shape and is cast to the weight's dtype.

    Args:
      spec: as for :func:`check` (a frozen spec is accepted too).
      name: the argument's name, used in error messages.

    Returns:
      A function of one array returning an array of its shape and dtype, or None when ``spec`` is None.

    Raises:
      ValueError, TypeError: as :func:`check`. The returned function raises, at trace time, ValueError when
        ``axis`` is out of range for the weight (naming the constraint and the weight's shape) or repeats an
        axis, or when a callable returns another shape; TypeError for a norm constraint on a non-float weight.
    """
    return _FAMILY.resolve(spec, name)


def serialize(spec: Any, name: str) -> dict[str, Any] | None:
    """The JSON form of a constraint ``spec`` (as for :func:`check`; ``name`` names it in errors): None, or
    ``keras.constraints.serialize(keras.constraints.get(spec))`` (``axis`` a list where a list or tuple was given),
    every argument filled in and numbers kept as given (``max_value=2`` stays an int), as Keras does. Raises
    ``TypeError`` for a callable (it has no JSON form), otherwise as :func:`check`. See
    :meth:`keras_objects.Family.serialize`."""
    return _FAMILY.serialize(spec, name)
