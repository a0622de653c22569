r"""Normalization with its own statistics and a memory-light derivative.

Forward: ``mean, var`` over ``axes`` (the shifted two-pass kernel of :mod:`stats`), then
``y = (x - mean) * rstd * scale + bias`` with ``rstd = rsqrt(var + eps)``.

Derivative: a ``jax.custom_jvp`` whose tangent map is linear in the tangents and wrapped in
``jax.checkpoint``. In reverse mode (``grad``, ``vjp``) JAX transposes that map, and the checkpoint makes it save
only the map's primal inputs: ``x`` itself (already live: the caller holds it), ``scale``, and the float32
``mean`` and ``rstd`` per reduced row or channel; the centered and normalized input are recomputed in the
backward pass. Plain autodiff of the same forward, and Flax's layers, keep three full-size float32 arrays (six
times the bytes of a bf16 input). Unlike a ``jax.custom_vjp``, forward mode (``jvp``, ``jacfwd``, Hessians)
keeps working.

The tangents, with :math:`c = x - \mu`, :math:`\hat x = c\,r` and :math:`\langle\cdot\rangle` the mean over
``axes`` (all in float32):

.. math::
    \dot\mu = \langle \dot x\rangle, \quad \dot{\sigma^2} = 2\langle c\,\dot x\rangle, \quad
    \dot r = -\tfrac12 r^3 (\dot{\sigma^2} + \dot\epsilon), \quad
    \dot y = ((\dot x - \dot\mu) r + c\,\dot r)\,\text{scale} + \hat x\,\dot{\text{scale}}
      + \dot{\text{bias}}

whose transpose is the familiar :math:`dx = r\,(g - \langle g\rangle - \hat x\langle g\hat x\rangle)` with
:math:`g = dy\cdot\text{scale}` (plus the terms of cotangents reaching the returned ``mean``/``var``). It is
the same function as autodiff of the forward; tests compare both, in both modes.

Used (through ``ops.normalize_by_moments``) when the statistics run over trailing axes (LayerNorm and the Flax
LayerNorm drop-ins) without a mask or ``axis_name``; other cases keep plain autodiff.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxnorm._src import stats, validation


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def normalize_with_moments(
    x: jax.Array, scale: jax.Array | None, bias: jax.Array | None, axes: tuple[int, ...], epsilon: Any
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(y, mean, var)``: ``x`` normalized by its own statistics over ``axes``, and those statistics.

    Args:
      x: floating array.
      scale, bias: None or arrays of x's rank broadcastable to it.
      axes: sorted non-negative axes of the statistics (static).
      epsilon: non-negative scalar array.

    Returns:
      ``y`` of x's dtype; ``mean`` and ``var`` (biased) with keepdims in ``stats_dtype(x.dtype)``.
    """
    y, mean, var, _ = _forward(x, scale, bias, axes, epsilon)
    return y, mean, var


def _forward(x, scale, bias, axes, epsilon):
    _, mean, var = stats.count_mean_var(x, axes)
    dtype = mean.dtype
    rstd = lax.rsqrt(var + epsilon.astype(dtype))
    inv = rstd if scale is None else rstd * scale.astype(dtype)
    y = (x.astype(dtype) - mean) * inv
    if bias is not None:
        y = y + bias.astype(dtype)
    return y.astype(x.dtype), mean, var, rstd


@functools.partial(jax.checkpoint, static_argnums=(0, 1, 2))
def _tangents(axes, has_scale, has_bias, x, scale, mean, rstd, dx, dscale, dbias, deps):
    """The tangents of ``(y, mean, var)``: linear in ``dx, dscale, dbias, deps``.

    Under ``jax.checkpoint``, reverse mode saves only this function's primal inputs (``x``, which the caller
    holds anyway, ``scale`` and the per-row ``mean``/``rstd``) and recomputes ``x - mean`` and the normalized
    input in the backward pass, instead of storing full-size float32 intermediates.
    """
    dtype = mean.dtype
    centered = x.astype(dtype) - mean
    dx = dx.astype(dtype)
    tmean = jnp.mean(dx, axes, keepdims=True)
    tvar = 2 * jnp.mean(centered * dx, axes, keepdims=True)
    trstd = -0.5 * rstd**3 * (tvar + deps.astype(dtype))
    txhat = (dx - tmean) * rstd + centered * trstd
    ty = txhat if not has_scale else txhat * scale.astype(dtype)
    if has_scale:
        ty = ty + centered * rstd * dscale.astype(dtype)
    if has_bias:
        ty = ty + dbias.astype(dtype)
    return ty.astype(x.dtype), tmean, tvar


@normalize_with_moments.defjvp
def _jvp(axes, primals, tangents):
    x, scale, bias, epsilon = primals
    dx, dscale, dbias, deps = tangents
    y, mean, var, rstd = _forward(x, scale, bias, axes, epsilon)
    ty, tmean, tvar = _tangents(
        axes, scale is not None, bias is not None, x, scale, mean, rstd, dx, dscale, dbias, deps
    )
    return (y, mean, var), (ty, tmean, tvar)


def batch_moments_normalize(x, scale, bias, axes, epsilon):
    """:func:`normalize_with_moments` taking a Python-float ``epsilon`` too (turned into an array, since the
    custom backward returns a cotangent for it)."""
    eps = jnp.asarray(epsilon, validation.stats_dtype(x.dtype))
    return normalize_with_moments(x, scale, bias, tuple(axes), eps)
