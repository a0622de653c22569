"""Initializers given as Keras names, Keras config dicts, or JAX initializer callables.

A layer spec stores the initializer as the user gave it (so ``get_config`` can write it back) and resolves it
to a JAX callable ``init(key, shape, dtype) -> array`` when ``init`` runs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxnorm._src.frozen import freeze, thaw

Initializer = Callable[[jax.Array, tuple[int, ...], Any], jax.Array]


def _constant(value: float = 0.0) -> Initializer:
    return jax.nn.initializers.constant(value)


def _random_normal(mean: float = 0.0, stddev: float = 0.05, seed: Any = None) -> Initializer:
    del seed  # the layer's init key replaces Keras's seed
    normal = jax.nn.initializers.normal(stddev)

    def init(key: Any, shape: Any, dtype: Any = jnp.float32) -> jax.Array:
        return normal(key, shape, dtype) + jnp.asarray(mean, dtype)

    return init


def _random_uniform(minval: float = -0.05, maxval: float = 0.05, seed: Any = None) -> Initializer:
    del seed

    def init(key: Any, shape: Any, dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, minval, maxval)

    return init


def _truncated_normal(mean: float = 0.0, stddev: float = 0.05, seed: Any = None) -> Initializer:
    del seed
    # Keras truncates at two standard deviations and keeps ``stddev`` as the pre-truncation scale.
    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        return jnp.asarray(mean, dtype) + stddev * jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype)

    return init


# Keras class name -> factory taking the Keras config's keyword arguments.
_FACTORIES: dict[str, Callable[..., Initializer]] = {
    "Zeros": lambda: jax.nn.initializers.zeros,
    "Ones": lambda: jax.nn.initializers.ones,
    "Constant": _constant,
    "RandomNormal": _random_normal,
    "RandomUniform": _random_uniform,
    "TruncatedNormal": _truncated_normal,
}


def _class_name(name: str) -> str:
    """'random_normal', 'RandomNormal' and 'randomnormal' all map to 'RandomNormal'."""
    key = re.sub(r"[_\s]", "", name).lower()
    for cls in _FACTORIES:
        if cls.lower() == key:
            return cls
    raise ValueError(
        f"unknown initializer {name!r}. Supported Keras names: {sorted(_FACTORIES)} (or their snake_case "
        "forms such as 'zeros', 'random_normal'); or pass a JAX initializer callable `(key, shape, dtype)`."
    )


def check(spec: Any, name: str) -> Any:
    """Validates an initializer as given by the user and returns it in a hashable form (dicts frozen)."""
    resolve(spec, name)
    return freeze(spec)


def resolve(spec: Any, name: str) -> Initializer:
    """Returns the JAX initializer callable for a Keras name, a Keras config dict, or a callable."""
    spec = thaw(spec)
    try:
        if isinstance(spec, str):
            return _FACTORIES[_class_name(spec)]()
        if isinstance(spec, Mapping):
            if "class_name" not in spec:
                raise ValueError(f"a Keras initializer config needs a 'class_name' key, got keys {sorted(spec)}")
            kwargs = dict(spec.get("config") or {})
            factory = _FACTORIES[_class_name(spec["class_name"])]
            try:
                return factory(**kwargs)
            except TypeError as err:
                raise ValueError(f"bad arguments {kwargs} for {spec['class_name']}: {err}") from None
        if callable(spec):
            return spec
    except ValueError as err:
        raise ValueError(f"`{name}`: {err}") from None
    raise TypeError(
        f"`{name}` must be a Keras initializer name (e.g. 'zeros', 'ones'), a Keras initializer config dict, "
        f"or a JAX initializer callable `(key, shape, dtype) -> array`; got {spec!r} ({type(spec).__name__})."
    )


def serialize(spec: Any, name: str) -> Any:
    """The JSON form of an initializer: its name or config dict. Known JAX callables map to their names."""
    spec = thaw(spec)
    if isinstance(spec, str | dict):
        return spec
    if spec is jax.nn.initializers.zeros:
        return "zeros"
    if spec is jax.nn.initializers.ones:
        return "ones"
    raise TypeError(
        f"`{name}`={spec!r} is a callable, which has no JSON form, so get_config cannot write it. Give the "
        f"layer a Keras initializer name or config instead, e.g. {name}={{'class_name': 'Constant', "
        "'config': {'value': 0.5}}."
    )
