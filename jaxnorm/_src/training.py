"""Model-level helpers for a train step: regularization losses, constraints, and Optax masks.

A model's params are a nested dict; ``layers`` names which of its entries belong to which jaxnorm layer: a
(nested) dict with the same keys whose leaves are layer specs, e.g. ``{'norm0': bn, 'block': {'ln': ln}}`` for
``params['norm0']`` and ``params['block']['ln']``. Entries of ``params`` not named in ``layers`` are the rest
of the model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxnorm._src.layer import Layer

Path = tuple[Any, ...]


def _layer_paths(layers: Any, prefix: Path = ()) -> Iterator[tuple[Path, Layer]]:
    if isinstance(layers, Layer):
        yield prefix, layers
    elif isinstance(layers, Mapping):
        for key, value in layers.items():
            yield from _layer_paths(value, (*prefix, key))
    elif layers is not None:
        where = "`layers`" + "".join(f"[{k!r}]" for k in prefix)
        raise TypeError(
            f"{where} must be a jaxnorm layer spec, a dict of them, or None; got {type(layers).__name__}. "
            "Map each layer's key in `params` to its spec, e.g. {'norm0': jaxnorm.BatchNorm()}."
        )


def _get(params: Any, path: Path) -> Any:
    node = params
    for i, key in enumerate(path):
        if not isinstance(node, Mapping) or key not in node:
            where = "".join(f"[{k!r}]" for k in path[: i + 1])
            raise ValueError(
                f"`layers` names params{where}, which `params` does not have. Give `layers` the same keys as "
                "`params` (each layer spec at the key of that layer's params)."
            )
        node = node[key]
    return node


def _replace(params: Any, path: Path, value: Any) -> Any:
    if not path:
        return value
    out = dict(params)
    out[path[0]] = _replace(params[path[0]], path[1:], value)
    return out


def regularization_loss(layers: Any, params: Any) -> jax.Array:
    r"""Sum of the regularization losses of every jaxnorm layer in a model, to add to the training loss.

    .. math::
        \text{loss} = \sum_{\ell \in \text{layers}} \ell\text{.regularization\_loss}(\text{params}[\ell])

    Args:
      layers: a dict (possibly nested) mapping each norm layer's key in ``params`` to its spec.
      params: the model's params, a nested dict.

    Returns:
      A float32 scalar (0 when no layer has a regularizer; frozen layers contribute 0).

    Raises:
      TypeError: ``layers`` holds something other than specs and dicts.
      ValueError: ``layers`` names a key that ``params`` lacks.

    Source: Keras's ``model.losses`` (the regularizers of trainable weights).

    Example:
      >>> import jax, jax.numpy as jnp, jaxnorm
      >>> bn = jaxnorm.BatchNorm(scale_regularizer={'class_name': 'L2', 'config': {'l2': 0.5}})
      >>> params = {'norm': {'scale': jnp.array([1.0, 2.0]), 'bias': jnp.zeros(2)}, 'w': jnp.ones(3)}
      >>> jaxnorm.regularization_loss({'norm': bn}, params)  # 0.5 * (1 + 4)
      Array(2.5, dtype=float32)
    """
    total = jnp.zeros((), jnp.float32)
    for path, spec in _layer_paths(layers):
        total = total + spec.regularization_loss(_get(params, path))
    return total


def apply_constraints(layers: Any, params: Any) -> Any:
    """Projects every jaxnorm layer's params onto its constraints (Keras applies them after each step).

    Args:
      layers: a dict (possibly nested) mapping each norm layer's key in ``params`` to its spec.
      params: the model's params, a nested dict.

    Returns:
      ``params`` with each named layer's entry replaced by ``spec.apply_constraints(entry)``; the rest is
      returned as it is (same tree, shapes and dtypes).

    Raises:
      TypeError / ValueError: as :func:`regularization_loss`.

    Source: ``keras.constraints``; Keras's optimizers apply them after the update.

    Example:
      >>> import jax.numpy as jnp, jaxnorm
      >>> bn = jaxnorm.BatchNorm(scale_constraint='non_neg')
      >>> params = {'norm': {'scale': jnp.array([-1.0, 2.0]), 'bias': jnp.zeros(2)}}
      >>> jaxnorm.apply_constraints({'norm': bn}, params)['norm']['scale']
      Array([-0.,  2.], dtype=float32)
    """
    for path, spec in _layer_paths(layers):
        params = _replace(params, path, spec.apply_constraints(_get(params, path)))
    return params


def constraints_transform(layers: Any) -> Any:
    """An Optax ``GradientTransformation`` that makes the step land on the layers' constraints.

    Chain it last: ``optax.chain(optimizer, jaxnorm.constraints_transform(layers))``. Its ``update`` needs
    ``params`` and returns ``apply_constraints(params + updates) - params``, so that
    ``optax.apply_updates(params, updates)`` gives the projected params (up to one rounding).

    Args:
      layers: a dict (possibly nested) mapping each norm layer's key in ``params`` to its spec.

    Returns:
      ``optax.GradientTransformation`` with an empty state.

    Raises:
      ImportError: optax is not installed (``pip install optax``).
      ValueError: (from ``update``) called without ``params``.

    Source: Keras's post-update constraints, in Optax's form (compare ``optax.projections``).

    Example:
      >>> import jax.numpy as jnp, optax, jaxnorm
      >>> layers = {'norm': jaxnorm.BatchNorm(scale_constraint='non_neg')}
      >>> params = {'norm': {'scale': jnp.array([0.5, 2.0]), 'bias': jnp.zeros(2)}}
      >>> opt = optax.chain(optax.sgd(1.0), jaxnorm.constraints_transform(layers))
      >>> grads = {'norm': {'scale': jnp.array([1.0, 1.0]), 'bias': jnp.zeros(2)}}
      >>> updates, _ = opt.update(grads, opt.init(params), params)
      >>> optax.apply_updates(params, updates)['norm']['scale']
      Array([0., 1.], dtype=float32)
    """
    import optax

    list(_layer_paths(layers))  # validate now, not at the first step

    def init_fn(params: Any) -> Any:
        del params
        return optax.EmptyState()

    def update_fn(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        if params is None:
            raise ValueError(
                "jaxnorm.constraints_transform needs the params: call optimizer.update(grads, opt_state, params)."
            )
        stepped = optax.apply_updates(params, updates)
        projected = apply_constraints(layers, stepped)
        return jax.tree.map(lambda new, old: (new - old).astype(old.dtype), projected, params), state

    return optax.GradientTransformation(init_fn, update_fn)


def _mask(layers: Any, params: Any, inside: Callable[[Layer], bool], others: Any) -> Any:
    if callable(others):
        mask = jax.tree_util.tree_map_with_path(
            lambda path, leaf: bool(others(tuple(_key_name(k) for k in path), leaf)), params
        )
    else:
        if not isinstance(others, bool):
            raise TypeError(f"`others` must be a bool or a function (path, leaf) -> bool, got {others!r}.")
        mask = jax.tree.map(lambda _: others, params)
    for path, spec in _layer_paths(layers):
        value = inside(spec)
        mask = _replace(mask, path, jax.tree.map(lambda _, v=value: v, _get(params, path)))
    return mask


def _key_name(key: Any) -> Any:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return getattr(key, attr)
    return key


def trainable_mask(layers: Any, params: Any) -> Any:
    """Optax mask: True for params the optimizer should move, False for those of frozen layers.

    A frozen layer (``trainable=False``) gets no gradient, but optimizers with weight decay or momentum would
    still move it; route its params to ``optax.set_to_zero()``::

        mask = jaxnorm.trainable_mask(layers, params)
        optimizer = optax.multi_transform({True: optax.adamw(1e-3), False: optax.set_to_zero()}, mask)

    Args:
      layers: a dict (possibly nested) mapping each norm layer's key in ``params`` to its spec.
      params: the model's params, a nested dict.

    Returns:
      A tree of Python bools with ``params``' structure: False under frozen layers, True elsewhere.

    Raises:
      TypeError / ValueError: as :func:`regularization_loss`.

    Source: Keras's ``trainable=False`` (weights excluded from ``trainable_weights``).

    Example:
      >>> import jax.numpy as jnp, jaxnorm
      >>> params = {'norm': {'scale': jnp.ones(2), 'bias': jnp.zeros(2)}, 'w': jnp.ones(3)}
      >>> jaxnorm.trainable_mask({'norm': jaxnorm.BatchNorm(trainable=False)}, params)
      {'norm': {'bias': False, 'scale': False}, 'w': True}
    """
    return _mask(layers, params, lambda spec: spec.trainable, True)


def decay_mask(layers: Any, params: Any, *, others: Any = True) -> Any:
    """Optax weight-decay mask: False for every param of a jaxnorm layer, ``others`` for the rest.

    Normalization scales and biases are usually left out of weight decay (decaying ``scale`` towards 0 fights
    the normalization). Pass the result as ``optax.adamw(..., mask=...)`` or to ``optax.masked``.

    Args:
      layers: a dict (possibly nested) mapping each norm layer's key in ``params`` to its spec.
      params: the model's params, a nested dict.
      others: the mask value for params outside the layers: a bool (default True), or a function
        ``(path, leaf) -> bool`` with ``path`` the tuple of dict keys (e.g. to decay only kernels named 'w').

    Returns:
      A tree of Python bools with ``params``' structure.

    Raises:
      TypeError: ``others`` is neither a bool nor callable; and as :func:`regularization_loss`.

    Source: common practice (e.g. the BERT and ViT recipes; ``optax.adamw``'s ``mask`` argument).

    Example:
      >>> import jax.numpy as jnp, jaxnorm
      >>> params = {'norm': {'scale': jnp.ones(2), 'bias': jnp.zeros(2)}, 'dense': {'w': jnp.ones((3, 2))}}
      >>> params['dense']['b'] = jnp.zeros(2)
      >>> jaxnorm.decay_mask({'norm': jaxnorm.LayerNorm()}, params, others=lambda path, leaf: path[-1] == 'w')
      {'dense': {'b': False, 'w': True}, 'norm': {'bias': False, 'scale': False}}
    """
    return _mask(layers, params, lambda spec: False, others)
