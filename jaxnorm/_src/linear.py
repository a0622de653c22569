"""A linear map with a hand-written transpose: forward-mode and reverse-mode AD with one fast backward.

``linear(fun, fun_t, res, lin)`` is ``fun(res, lin)``, linear in ``lin``, whose transpose (reverse mode) is
``fun_t(res, ct)`` instead of JAX's transposition of ``fun``. The normalization kernels use it as the tangent map
of a ``jax.custom_jvp``: ``jax.jvp``/``jacfwd`` run ``fun`` (the closed-form tangent), and ``jax.grad``/``vjp``
run ``fun_t`` (the memory-light backward that a ``jax.custom_vjp`` would have run), so both modes work where a
``custom_vjp`` allows only reverse mode.

This is ``jax.custom_derivatives.linear_call`` with one difference that second-order derivatives need: ``res``
may carry tangents itself (``jax.hessian`` = forward over reverse differentiates the backward in the residuals
``x`` and the statistics). ``linear_call`` rejects those; here their contribution is JAX's ``jvp`` of ``fun``
(or ``fun_t``) in ``res``, a plain differentiable function. The transpose of a ``linear`` is again a ``linear``
(``fun_t`` with ``fun`` as its transpose), so reverse over reverse works too; ``vmap`` maps both functions.

Source: the linear-call primitive of JAX (``jax.custom_derivatives.linear_call``; Radul et al., "You Only
Linearize Once", 2023, for transposition as a separate step).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.extend.core as jex
import jax.numpy as jnp
from jax import tree_util
from jax.interpreters import ad, batching, mlir

linear_p = jex.Primitive("jaxnorm_linear")
linear_p.multiple_results = True


class _Spec:
    """``fun`` and its transpose on flat lists of arrays; hashed by identity (a primitive parameter)."""

    def __init__(self, fun: Callable, fun_t: Callable, out_avals: tuple[Any, ...]):
        self.fun, self.fun_t, self.out_avals = fun, fun_t, out_avals

    def transposed(self, lin_avals: tuple[Any, ...]) -> _Spec:
        return _Spec(self.fun_t, self.fun, lin_avals)


def linear(fun: Callable, fun_t: Callable, res: Any, lin: Any) -> Any:
    """``fun(res, lin)``, with ``fun_t(res, ct)`` as its transpose in ``lin``.

    Args:
      fun: ``(res, lin) -> out``, linear in ``lin`` (pytrees of arrays).
      fun_t: ``(res, ct) -> lin``-shaped cotangents, linear in ``ct`` (of ``out``'s structure), the transpose.
      res, lin: pytrees of arrays.

    Returns:
      ``fun(res, lin)``.
    """
    res_flat, res_tree = tree_util.tree_flatten(res)
    lin_flat, lin_tree = tree_util.tree_flatten(lin)
    traced, out_shape = jax.make_jaxpr(fun, return_shape=True)(res, lin)
    out_tree = tree_util.tree_structure(out_shape)

    def flat_fun(r, v):
        out = fun(tree_util.tree_unflatten(res_tree, r), tree_util.tree_unflatten(lin_tree, v))
        return tree_util.tree_leaves(out)

    def flat_fun_t(r, c):
        out = fun_t(tree_util.tree_unflatten(res_tree, r), tree_util.tree_unflatten(out_tree, c))
        leaves, tree = tree_util.tree_flatten(out)
        if tree != lin_tree:
            raise TypeError(f"the transpose returns structure {tree}, the linear inputs have {lin_tree}")
        return leaves

    spec = _Spec(flat_fun, flat_fun_t, tuple(traced.out_avals))
    outs = linear_p.bind(*res_flat, *lin_flat, spec=spec, num_res=len(res_flat))
    return tree_util.tree_unflatten(out_tree, outs)


def _out_avals(fun, res, lin):
    """The abstract values of ``fun(res, lin)``, typed as JAX would type them (shape, dtype, and the manual axes
    they vary over under ``shard_map``)."""
    return tuple(jax.make_jaxpr(fun)(res, lin).out_avals)


def _aval(a):
    return a.aval if ad.is_undefined_primal(a) else jax.typeof(a)


def _call(args, spec, num_res):
    return spec.fun(list(args[:num_res]), list(args[num_res:]))


def _abstract_eval(*avals, spec, num_res):
    del avals, num_res
    return spec.out_avals


def _jvp(primals, tangents, *, spec, num_res):
    outs = linear_p.bind(*primals, spec=spec, num_res=num_res)
    res, lin = list(primals[:num_res]), list(primals[num_res:])
    dres, dlin = tangents[:num_res], tangents[num_res:]
    t_out = linear_p.bind(*res, *map(ad.instantiate_zeros, dlin), spec=spec, num_res=num_res)
    if any(type(t) is not ad.Zero for t in dres):  # second order: fun differentiated in its residuals
        _, t_res = jax.jvp(lambda *r: spec.fun(list(r), lin), tuple(res), tuple(map(ad.instantiate_zeros, dres)))
        t_out = [a + b for a, b in zip(t_out, t_res, strict=True)]
    return outs, t_out


def _transpose(cts, *args, spec, num_res):
    res, lin = args[:num_res], args[num_res:]
    if any(ad.is_undefined_primal(r) for r in res):
        raise ValueError("jaxnorm linear map: a residual input is itself being transposed")
    lin_avals = tuple(map(_aval, lin))
    cts = [ad.instantiate_zeros(c) for c in cts]
    out = linear_p.bind(*res, *cts, spec=spec.transposed(lin_avals), num_res=num_res)
    return [None] * num_res + [o if ad.is_undefined_primal(a) else None for a, o in zip(lin, out, strict=True)]


def _batch(args, dims, *, spec, num_res):
    size = next(a.shape[d] for a, d in zip(args, dims, strict=True) if d is not None)
    moved = [a if d is None else jnp.moveaxis(a, d, 0) for a, d in zip(args, dims, strict=True)]
    res_axes = [None if d is None else 0 for d in dims[:num_res]]
    res = moved[:num_res]
    # Every linear input batched: the transpose then gives every cotangent batched, as the inputs were.
    lin = [jnp.broadcast_to(a, (size, *a.shape)) if d is None else a
           for a, d in zip(moved[num_res:], dims[num_res:], strict=True)]

    def mapped(f):
        return lambda r, v: jax.vmap(f, in_axes=(res_axes, 0))(r, v)

    fun, fun_t = mapped(spec.fun), mapped(spec.fun_t)
    batched = _Spec(fun, fun_t, _out_avals(fun, res, lin))
    outs = linear_p.bind(*res, *lin, spec=batched, num_res=num_res)
    return outs, [0] * len(outs)


linear_p.def_impl(lambda *args, spec, num_res: _call(args, spec, num_res))
linear_p.def_abstract_eval(_abstract_eval)
mlir.register_lowering(
    linear_p, mlir.lower_fun(lambda *args, spec, num_res: _call(args, spec, num_res), multiple_results=True)
)
ad.primitive_jvps[linear_p] = _jvp
ad.primitive_transposes[linear_p] = _transpose
batching.primitive_batchers[linear_p] = _batch
