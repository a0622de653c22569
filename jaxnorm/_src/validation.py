"""Argument checks shared by every op and layer.

The checks that several ops and layers share live here; a check that belongs to one layer stays with it, in the
same form. Every user error is raised at trace time as a ``TypeError`` or ``ValueError`` whose message names the
argument, says what was received and how to fix it. Nothing in this module touches array values, only shapes
and dtypes, so every check is free under ``jax.jit``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Axes = int | Sequence[int]


def stats_dtype(dtype: Any) -> jnp.dtype:
    """The dtype statistics are computed in: at least float32, float64 kept (the input dtype promoted). Read
    without JAX's promotion rules, so that it holds under ``jax.numpy_dtype_promotion("strict")`` too."""
    return jnp.dtype(jnp.float64) if jnp.dtype(dtype).itemsize > 4 else jnp.dtype(jnp.float32)


def result_dtype(*args: Any) -> jnp.dtype:
    """``jnp.result_type(*args)`` by JAX's standard promotion rules, whatever ``jax.numpy_dtype_promotion`` the
    caller runs under: the dtype a layer computes or returns in is its own rule (Flax's, equinox's), not a
    promotion of the user's arrays (equinox's layers do the same)."""
    with jax.numpy_dtype_promotion("standard"):
        return jnp.dtype(jnp.result_type(*args))


def axis_name_of(axis_name: Any) -> Any:
    """An ``axis_name`` as JAX's collectives take it, hashable: a list of names becomes a tuple."""
    return tuple(axis_name) if isinstance(axis_name, list) else axis_name


def check_key(key: Any, name: str = "key", fix: str = "spec.init(jax.random.key(0), x) (or None for the "
              "initializers' fixed default key)") -> None:
    """Raises ``TypeError`` unless ``key`` is None or a JAX PRNG key: a typed key (``jax.random.key(seed)``) or
    a raw ``uint32`` key array (``jax.random.PRNGKey(seed)``), or a batch of them."""
    if key is None:
        return
    dtype = getattr(key, "dtype", None)
    if dtype is not None and hasattr(key, "shape"):
        if jnp.issubdtype(dtype, jax.dtypes.prng_key):
            return
        if jnp.dtype(dtype) == jnp.uint32 and tuple(key.shape[-1:]) in ((2,), (4,)):
            return
    shown = f"{type(key).__name__} {key!r}" if isinstance(key, int | float) else (
        f"{type(key).__name__} of dtype {dtype} and shape {getattr(key, 'shape', None)}" if dtype is not None
        else type(key).__name__)
    raise TypeError(
        f"`{name}` must be a JAX PRNG key or None, got {shown}. Make one from a seed: {fix}."
    )


def as_array(value: Any, name: str, expected: str, to: Any = None, error: type[Exception] = TypeError) -> Any:
    """``to(value)`` (default ``jnp.asarray``), or ``error`` naming the argument ``name``, what it must be
    (``expected``, e.g. "an array") and the type received: how jaxnorm turns a user's argument into an array."""
    try:
        return (jnp.asarray if to is None else to)(value)
    except (TypeError, ValueError) as err:
        raise error(f"`{name}` must be {expected}, got {type(value).__name__}: {err}") from None


def check_float_array(x: Any, name: str = "x") -> jax.Array:
    """Returns ``x`` as a JAX array, raising ``TypeError`` unless it is a real floating-point array."""
    if isinstance(x, jax.ShapeDtypeStruct):
        raise TypeError(
            f"`{name}` must be an array, got a jax.ShapeDtypeStruct {x}. Pass real data here; "
            "ShapeDtypeStruct is accepted only by `init`."
        )
    if x is None:
        raise TypeError(f"`{name}` must be an array, got None. Pass the input array (e.g. a jax.Array of floats).")
    arr = as_array(x, name, "an array")
    check_float_dtype(arr.dtype, name)
    return arr


def check_float_dtype(dtype: Any, name: str = "x") -> None:
    """Raises ``TypeError`` unless ``dtype`` is a real floating-point dtype."""
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"`{name}` must have a floating-point dtype, got {np.dtype(dtype).name}. "
            f"Cast it first, e.g. `{name}.astype(jnp.float32)`."
        )


def canonicalize_axes(axes: Any, ndim: int, name: str = "axis") -> tuple[int, ...]:
    """Turns an int or a sequence of ints into a sorted tuple of non-negative axes of an ``ndim``-array.

    Raises:
      TypeError: an axis is not an int.
      ValueError: an axis is out of range, an axis is repeated, or no axis is given.
    """
    if isinstance(axes, numbers.Integral) and not isinstance(axes, bool):
        seq = (int(axes),)
    elif isinstance(axes, Sequence) and not isinstance(axes, str):
        seq = tuple(axes)
        if not seq:
            raise ValueError(f"`{name}` must name at least one axis, got an empty sequence {axes!r}.")
    else:
        raise TypeError(f"`{name}` must be an int or a sequence of ints, got {axes!r} ({type(axes).__name__}).")
    out: list[int] = []
    for a in seq:
        if not isinstance(a, numbers.Integral) or isinstance(a, bool):
            raise TypeError(f"`{name}` must contain only ints, got {a!r} ({type(a).__name__}) in {axes!r}.")
        a = int(a)
        if not -ndim <= a < ndim:
            raise ValueError(
                f"`{name}`={axes!r} is out of range for an input of rank {ndim}: each axis must be in "
                f"[{-ndim}, {ndim - 1}]. Pass axes that exist in the input, or check the input's shape."
            )
        out.append(a % ndim)
    if len(set(out)) != len(out):
        raise ValueError(
            f"`{name}`={axes!r} names the same axis more than once (as non-negative axes: {out}). "
            "List each axis once."
        )
    return tuple(sorted(out))


def canonicalize_axes_or_empty(axes: Any, ndim: int, name: str) -> tuple[int, ...]:
    """As :func:`canonicalize_axes`, also accepting an empty sequence (no axis)."""
    if isinstance(axes, Sequence) and not isinstance(axes, str) and len(axes) == 0:
        return ()
    return canonicalize_axes(axes, ndim, name)


def complement_axes(axes: tuple[int, ...], ndim: int) -> tuple[int, ...]:
    """The axes of an ``ndim``-array that are not in ``axes``."""
    return tuple(i for i in range(ndim) if i not in axes)


def check_axes_static(axes: Any, name: str = "axis") -> Any:
    """Validates an axis hyperparameter before any input is seen (types only); returns it hashable."""
    if isinstance(axes, numbers.Integral) and not isinstance(axes, bool):
        return int(axes)
    if isinstance(axes, Sequence) and not isinstance(axes, str):
        if not axes:
            raise ValueError(f"`{name}` must name at least one axis, got an empty sequence {axes!r}.")
        for a in axes:
            if not isinstance(a, numbers.Integral) or isinstance(a, bool):
                raise TypeError(f"`{name}` must contain only ints, got {a!r} in {axes!r}.")
        if len(set(axes)) != len(axes):
            raise ValueError(f"`{name}`={axes!r} names the same axis more than once. List each axis once.")
        return tuple(int(a) for a in axes)
    raise TypeError(f"`{name}` must be an int or a sequence of ints, got {axes!r} ({type(axes).__name__}).")


def check_int(value: Any, name: str, minimum: int) -> int:
    """``value`` as a Python int: ``TypeError`` unless an integer, ``ValueError`` below ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an int >= {minimum}, got {value!r} ({type(value).__name__}).")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value!r}.")
    return int(value)


def check_epsilon(epsilon: Any, name: str = "epsilon") -> None:
    """Raises unless ``epsilon`` is a real number >= 0 (a traced scalar is accepted unchecked)."""
    if isinstance(epsilon, jax.core.Tracer):
        return
    if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real | np.ndarray | jax.Array):
        raise TypeError(f"`{name}` must be a non-negative float, got {epsilon!r} ({type(epsilon).__name__}).")
    value: Any = epsilon  # a number or an array: NumPy's stubs take neither union member for both
    if np.ndim(value) != 0:
        raise ValueError(f"`{name}` must be a scalar, got an array of shape {np.shape(value)}.")
    if np.iscomplexobj(value):
        raise TypeError(f"`{name}` must be a non-negative float, got {epsilon!r} (complex).")
    if not 0 <= float(epsilon) < math.inf:
        raise ValueError(
            f"`{name}` must be >= 0 and finite, got {epsilon!r}. Use a small positive value such as 1e-3."
        )


def check_scale_offset(value: Any, has_scale: bool, name: str = "scale_offset") -> float:
    """``value`` as a Python float: a static finite real (``scale_offset``, added to ``scale`` before it
    multiplies: 1.0 for Gemma-style zero-centred checkpoints), a Python, NumPy or concrete JAX scalar.
    ``TypeError`` for anything else, a traced value included; ``ValueError`` for a non-finite one, or a nonzero
    one where there is no ``scale`` to offset."""
    real = isinstance(value, numbers.Real | np.ndarray | np.generic | jax.Array) and not isinstance(value, bool)
    if not real or isinstance(value, jax.core.Tracer) or np.ndim(value) or np.iscomplexobj(value):
        raise TypeError(
            f"`{name}` must be a static float (0.0, or 1.0 for a zero-centred scale), got {value!r} "
            f"({type(value).__name__}). Pass a Python number; it is part of the program, not an input."
        )
    if not math.isfinite(float(value)):
        raise ValueError(f"`{name}` must be a finite real number, got {value!r}.")
    if float(value) != 0 and not has_scale:
        raise ValueError(
            f"`{name}`={value!r} offsets a scale, but there is none (no `scale` given, or use_scale=False). "
            "Pass a scale, or leave scale_offset at 0."
        )
    return float(value)


def check_unit_interval(value: Any, name: str) -> None:
    """Raises unless ``value`` is a real number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a float in [0, 1], got {value!r} ({type(value).__name__}).")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(
            f"`{name}` must be in [0, 1], got {value!r}. jaxnorm uses the Keras/Flax convention "
            f"moving = {name} * moving + (1 - {name}) * batch; a PyTorch momentum m corresponds to 1 - m."
        )


def check_choice(value: Any, name: str, choices: dict[str, str]) -> None:
    """Raises ``ValueError`` unless ``value`` is one of ``choices`` (a mapping of choice -> what it means)."""
    if value not in choices:
        listed = "; ".join(f"{k!r}: {v}" for k, v in choices.items())
        raise ValueError(f"`{name}`={value!r} is not one of the supported choices: {listed}.")


def check_groups_static(num_groups: Any, group_size: Any) -> None:
    """Checks GroupNorm's ``num_groups``/``group_size`` before any input is seen: at most one of them is given,
    ``num_groups`` a positive int or -1 (one group per channel, Keras), ``group_size`` a positive int.

    Raises ``ValueError`` for any bad value, a float, string or bool included, as Keras's
    ``GroupNormalization`` does for ``groups``."""
    for name, value, low in (("num_groups", num_groups, -1), ("group_size", group_size, 1)):
        if value is None:
            continue
        what = "a positive int or -1 (one group per channel)" if name == "num_groups" else "a positive int"
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low or value == 0:
            # ValueError for a wrong type too, as keras.layers.GroupNormalization raises for groups=1.5 or '32'.
            raise ValueError(f"`{name}` must be {what} or None, got {value!r} ({type(value).__name__}).")
    if num_groups is not None and group_size is not None:
        raise ValueError(
            f"give either `num_groups` or `group_size`, not both (got num_groups={num_groups!r}, "
            f"group_size={group_size!r}). Pass num_groups=None to set the group size."
        )


def resolve_groups(num_groups: Any, group_size: Any, channels: int, axis: int) -> int:
    """The number of groups for ``channels`` channels: ``num_groups`` (-1: ``channels``), ``channels //
    group_size``, or 32 when neither is given (the default of Wu & He, Keras and Flax). Raises ``ValueError``
    naming both numbers when the groups do not divide the channels."""
    check_groups_static(num_groups, group_size)
    if group_size is not None:
        if channels % group_size:
            raise ValueError(
                f"the {channels} channels of x (axis {axis}) are not a multiple of group_size={group_size}. "
                "Pick a group size that divides the channel count."
            )
        return channels // group_size
    groups = 32 if num_groups is None else num_groups
    groups = channels if groups == -1 else groups
    if channels % groups:
        raise ValueError(
            f"num_groups={groups} does not divide the {channels} channels of x (axis {axis}). Pick a number of "
            f"groups that divides {channels} (e.g. "
            f"{max(d for d in range(1, min(groups, channels) + 1) if channels % d == 0)}), or give group_size."
        )
    return groups


def check_bool(value: Any, name: str) -> bool:
    """Returns ``value`` as a Python bool, raising ``TypeError`` for anything that is not a concrete bool."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, jax.core.Tracer):
        raise TypeError(
            f"`{name}` must be a Python bool, got a traced value {value}. It selects the computation, so it "
            f"must be known at trace time: mark it static, e.g. `jax.jit(f, static_argnames='{name}')`, "
            f"or write two functions."
        )
    raise TypeError(f"`{name}` must be a Python bool (True or False), got {value!r} ({type(value).__name__}).")


def broadcast_operand(value: Any, x_shape: tuple[int, ...], name: str, hint: str = "") -> jax.Array:
    """Returns ``value`` as an array checked to be floating and broadcastable to ``x_shape``.

    Broadcasting must not enlarge ``x``: the operand's rank is at most x's and each dimension is 1 or x's.
    """
    arr = jnp.asarray(value)
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        raise TypeError(
            f"`{name}` must have a floating-point dtype, got {arr.dtype.name}. Cast it, e.g. "
            f"`{name}.astype(jnp.float32)`."
        )
    if not _broadcasts_to(arr.shape, x_shape):
        raise ValueError(
            f"`{name}` has shape {arr.shape}, which does not broadcast to x's shape {x_shape}. "
            + (hint or f"Give `{name}` a shape that broadcasts to {x_shape}, e.g. with size-1 reduced axes.")
        )
    return arr.reshape((1,) * (len(x_shape) - arr.ndim) + arr.shape)  # explicit rank: no rank promotion


def mask_array(mask: Any, name: str = "mask") -> jax.Array:
    """``mask`` as a boolean array, Keras's way: a boolean array as it is; an integer or floating one as
    ``mask != 0`` (nonzero keeps a position, so NaN keeps it too, as Keras's cast to bool does).

    Raises ``TypeError`` naming ``name`` for anything else (complex, strings, None inside, objects).
    """
    if isinstance(mask, jax.ShapeDtypeStruct):
        raise TypeError(f"`{name}` must be an array, got a jax.ShapeDtypeStruct {mask}. Pass the mask's values.")
    m = as_array(mask, name, "an array of booleans or of 0/1 numbers")
    if m.dtype == jnp.bool_:
        return m
    if jnp.issubdtype(m.dtype, jnp.integer) or jnp.issubdtype(m.dtype, jnp.floating):
        return m != 0
    raise TypeError(
        f"`{name}` must be a boolean (or 0/1 integer or float) array, got dtype {m.dtype.name}. Pass e.g. "
        f"`{name}.astype(bool)` (True, or any nonzero number, marks the positions that count)."
    )


def broadcast_mask(mask: Any, x_shape: tuple[int, ...], name: str = "mask") -> jax.Array:
    """Returns a boolean mask broadcast to ``x_shape``, by Keras's rules.

    Values: booleans, or integers/floats read as ``mask != 0`` (nonzero, NaN included, keeps a position; see
    :func:`mask_array`). Shape: a mask of rank ``len(x_shape) - 1`` is first expanded on the last axis (Keras:
    one flag per position, shared by the channels) when the expanded shape broadcasts to ``x_shape`` (e.g.
    ``(1, 2, 1)`` for x ``(1, 2, 3, 4)``); otherwise, and for any other rank, it must broadcast to ``x_shape``
    under NumPy rules. So for an ``(N, C)`` input with ``N == C`` a 1-D mask is per example (Keras); give a
    per-feature mask as shape ``(1, C)``.

    Raises:
      TypeError: the mask is complex, a string, or not an array (the message names ``name``).
      ValueError: it broadcasts to ``x_shape`` under neither rule.
    """
    m = mask_array(mask, name)
    if len(x_shape) >= 1 and m.ndim == len(x_shape) - 1 and _broadcasts_to(m.shape + (1,), x_shape):
        m = m[..., None]
    if not _broadcasts_to(m.shape, x_shape):
        raise ValueError(
            f"`{name}` has shape {m.shape}, which does not broadcast to x's shape {x_shape}. Give it x's "
            f"shape, a shape that broadcasts to it, or (Keras) a shape of rank {len(x_shape) - 1} that broadcasts "
            f"to x.shape[:-1] = {tuple(x_shape[:-1])}."
        )
    return jnp.broadcast_to(m, x_shape)


def python_scalars(value: Any) -> Any:
    """A hyperparameter with its concrete NumPy/JAX scalars (``np.float32(0.9)``, ``jnp.float32(1e-3)``, 0-d
    arrays, ``np.True_``) turned into Python ``float``/``int``/``bool``, inside lists, tuples and dicts too, so
    that a spec stays hashable and its config JSON-serializable. Anything else (arrays of rank > 0, tracers,
    complex scalars, callables, strings) is returned as it is, for the field's own check to judge."""
    if type(value) in (list, tuple):
        return type(value)(python_scalars(v) for v in value)
    if type(value) is dict:
        return {k: python_scalars(v) for k, v in value.items()}
    if isinstance(value, jax.core.Tracer):
        return value
    if isinstance(value, np.generic | np.ndarray | jax.Array) and np.ndim(value) == 0:
        dtype = value.dtype
        if dtype == np.bool_:
            return bool(value)
        if jnp.issubdtype(dtype, jnp.integer):
            return int(value)
        if jnp.issubdtype(dtype, jnp.floating):
            if np.dtype(dtype).itemsize >= 8:
                return float(value)
            # The shortest decimal that is the same number in its own precision (np.float32(0.9) -> 0.9, not
            # 0.8999999761581421); bfloat16 via float32, which holds it exactly.
            f = np.asarray(value)
            f = f if f.dtype in (np.float16, np.float32) else f.astype(np.float32)
            scalar: Any = f[()]
            return float(np.format_float_scientific(scalar, unique=True))
    return value


def check_dtype_name(dtype: Any, name: str) -> str:
    """The name of a real floating dtype given as a name, a NumPy/JAX dtype or a type; ``TypeError`` naming
    ``name`` otherwise (None included: give the dtype explicitly)."""
    try:
        dt = None if dtype is None else jnp.dtype(dtype)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"`{name}` must be a floating-point dtype (e.g. 'float32', 'bfloat16'), got {dtype!r}: {err}."
        ) from None
    if dt is None:
        raise TypeError(f"`{name}` must be a floating-point dtype (e.g. 'float32', 'bfloat16'), got None.")
    check_float_dtype(dt, name)
    return dt.name


def fit_variable(value: Any, shape: tuple[int, ...], name: str, fix: str, exact: bool = False) -> jax.Array:
    """A stored variable (a Flax drop-in's ``scale``, ``bias``, ``batch_stats['mean']``, ...) reshaped to
    ``shape``, the shape the input needs; ``ValueError`` naming the variable ``name``, the shape received and
    the one needed, and ``fix``, when its size differs (``exact``: when its shape differs), e.g. a checkpoint or
    ``nnx.merge`` state for another feature count, instead of a broadcasting error deep inside."""
    arr = jnp.asarray(value)
    if (arr.shape != tuple(shape)) if exact else (math.prod(arr.shape) != math.prod(shape)):
        raise ValueError(
            f"`{name}` has shape {arr.shape} but this call needs {tuple(shape)}. {fix}"
        )
    return arr.reshape(shape)


def expand_to_rank(value: jax.Array, ndim: int, axes: tuple[int, ...]) -> jax.Array:
    """Reshapes an array whose dims are the sizes of ``axes`` into a rank-``ndim`` array (1 elsewhere)."""
    shape = [1] * ndim
    for a, d in zip(axes, value.shape, strict=True):
        shape[a] = d
    return value.reshape(shape)


def axes_operand(
    value: Any, x_shape: tuple[int, ...], axes: tuple[int, ...], name: str, what: str
) -> jax.Array:
    """An operand given either with the sizes of ``axes`` (e.g. ``(C,)``) or broadcastable to ``x_shape``.

    Returns it broadcastable to ``x_shape``. ``what`` names the axes in error messages.
    """
    arr = jnp.asarray(value)
    expected = tuple(x_shape[a] for a in axes)
    if arr.shape == expected and arr.ndim != len(x_shape):
        if not jnp.issubdtype(arr.dtype, jnp.floating):
            check_float_dtype(arr.dtype, name)
        return expand_to_rank(arr, len(x_shape), axes)
    return broadcast_operand(
        arr,
        x_shape,
        name,
        hint=f"It must have the sizes of the {what} {axes}, i.e. shape {expected}, or a shape that "
        f"broadcasts to x's shape {x_shape}. Was it created for another input or axis?",
    )


# The keys of the specs' parameter and state trees (for the hint that the two were swapped).
_PARAM_KEYS = frozenset({"scale", "bias", "alpha", "shift"})
_STATE_KEYS = frozenset({"mean", "var", "steps", "stddev", "renorm_mean", "renorm_stddev", "count", "u", "sigma"})


def check_tree(
    tree: Any, expected: dict[str, tuple[tuple[int, ...], Any]], name: str, fix: str
) -> dict[str, jax.Array]:
    """Checks a params or state dict: exactly the expected keys, each of the expected shape.

    ``expected`` maps each key to ``(shape, kind)``; kind ``"int"`` requires an integer array (a step counter),
    anything else a floating one.
    """
    if not isinstance(tree, dict):
        raise TypeError(f"`{name}` must be a dict, got {type(tree).__name__}. {fix}")
    missing = sorted(set(expected) - set(tree))
    extra = sorted(set(tree) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {missing}")
        if extra:
            parts.append(f"unexpected {extra}")
        swapped = ""
        other = {"params": _STATE_KEYS, "state": _PARAM_KEYS}.get(name)
        if tree and other is not None and set(tree) <= other:
            swapped = (
                f" These look like the layer's {'state' if name == 'params' else 'params'}: were params and state "
                "passed in each other's place? `init` returns (params, state) and `apply` takes "
                "(params, state, x)."
            )
        raise ValueError(
            f"`{name}` has keys {sorted(tree)} but this layer expects {sorted(expected)} ({', '.join(parts)})."
            f"{swapped} {fix}"
        )
    out = {}
    for key, (shape, kind) in expected.items():
        arr = jnp.asarray(tree[key])
        if arr.shape != tuple(shape):
            raise ValueError(
                f"`{name}['{key}']` has shape {arr.shape} but the input needs {tuple(shape)}. {fix}"
            )
        if kind == "int":
            if not jnp.issubdtype(arr.dtype, jnp.integer):
                raise TypeError(f"`{name}['{key}']` must be an integer step counter, got {arr.dtype.name}. {fix}")
        else:
            check_float_dtype(arr.dtype, f"{name}['{key}']")
        out[key] = arr
    return out


def _broadcasts_to(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    if len(shape) > len(target):
        return False
    return all(s == 1 or s == t for s, t in zip(reversed(shape), reversed(target), strict=False))


def numpy_mask(mask: Any, x: jax.Array) -> jax.Array | None:
    """The peers' ``mask`` (Flax's, equinox's: anything broadcastable to ``x`` under NumPy rules) as a boolean
    array of x's shape (Keras's rule, :func:`broadcast_mask`, reads a lower-rank mask otherwise)."""
    if mask is None:
        return None
    m = jnp.asarray(mask, dtype=bool)  # Flax accepts 0/1 masks of any dtype
    if m.ndim < x.ndim:  # NumPy alignment; prevents the core's Keras ``x.shape[:-1]`` reading of the mask
        m = m.reshape((1,) * (x.ndim - m.ndim) + m.shape)
    return broadcast_mask(m, x.shape, "mask")
