r"""Normalization by its own statistics, with a memory-light hand-written backward: over trailing axes (rows:
LayerNorm, RMSNorm), leading axes (columns: channels-last BatchNorm) or any other axes (GroupNorm, InstanceNorm,
channels-first BatchNorm).

Forward: ``mean, var`` per row (the shifted two-pass kernel of :mod:`stats`), then
``y = (x - mean) * rstd * scale + bias`` with ``rstd = rsqrt(var + eps)``. The rows are the trailing ``axes``
flattened: ``x`` is viewed as ``(M, N)``.

Backward: the transpose of a ``jax.custom_jvp``'s tangent map (:func:`linear.linear`, below); it saves only ``x``
(the caller holds it anyway), ``scale`` and the float32
``mean`` and ``rstd`` of each row, and computes, with :math:`c = x - \mu`, :math:`\hat x = c\,r`,
:math:`g = dy \cdot \text{scale}` and :math:`\langle\cdot\rangle` the mean over the row (all in float32):

.. math::
    dx = r\,(g - \langle g\rangle - \hat x\,\langle g\hat x\rangle) + \frac{\bar\mu}{N} + \frac{2\bar v\,c}{N},
    \quad d\text{scale} = \textstyle\sum_{rows} dy\,\hat x, \quad d\text{bias} = \sum_{rows} dy, \quad
    d\epsilon = -\tfrac12 \sum_{rows} r^2 N \langle g\hat x\rangle

where :math:`\bar\mu, \bar v` are the cotangents reaching the returned mean and variance. Every reduction is
its own fused pass over ``x`` and ``dy``, each taking them from its own :func:`stats.fresh` (an optimization
barrier), and so is ``dx``: XLA then materializes no full-size intermediate (``xhat``, ``dy * scale``, a float32
copy of 16-bit input), where autodiff of the same forward (and Flax's LayerNorm) keeps 2-4 of them. Measured on
a 2-vCPU CPU (benchmarks/RESULTS.md), each fresh full-size temporary costs its page faults on every call. Long
float32 rows (:data:`BLOCK_MIN_ROW`) in large arrays are processed in blocks of about 64K elements in a loop
that writes ``dx`` in place and accumulates ``dscale``/``dbias`` in float32.

Columns (BatchNorm over the leading axes of channels-last input, ``x`` viewed as ``(M, C)``) use the same
forward and a two-pass backward: the per-channel sums of ``dy`` and ``dy * xhat`` (which are also ``dbias`` and
``dscale``) in one fused reduction, then ``dx`` elementwise; there is nothing per row to block. Any other
axes (GroupNorm's grouped view, InstanceNorm, channels-first BatchNorm, scale/bias varying along kept axes) take
the same formula with the means over those axes and scale/bias of x's rank (:func:`normalize_axes`).

The statistics are :func:`stats.normalizer`'s: ``y = (x q - mean q) rstd_q`` with ``q`` a power of two per row
that is 1 on ordinary data and rescales only the inputs whose squares would overflow or underflow; the backward
saves ``q`` beside the mean and rstd and uses the same form, so both directions are exact at any magnitude.

Both modes: each path is a ``jax.custom_jvp`` whose tangent (:func:`_tangent`, the closed form) is a
:func:`linear.linear` map with the hand-written backward as its transpose. ``jax.jvp``/``jacfwd`` run the
tangent; ``grad``/``vjp`` run the backward above with the same residuals a ``custom_vjp`` would save;
``jax.hessian`` (forward over reverse) and reverse over reverse differentiate the backward itself.

Source: the backward is the standard LayerNorm gradient (Ba, Kiros & Hinton 2016); the blocked, in-place
structure follows the fused kernels of Apex/Triton's layer-norm tutorial, expressed in XLA loops.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxnorm._src import linear, stats, validation

# Elements per backward block: 256 KiB of float32, so a block's temporaries stay in L2. Measured (1024x4096,
# 4096x1024 float32): 32K-128K elements per block are within noise of each other; 8K is slower (loop overhead).
BLOCK_ELEMENTS = 1 << 16
# Arrays up to this many elements (4 MiB of float32, cache-sized) take one block: the loop would only add its
# overhead (measured at 1024x512: 1.0 ms blocked vs 0.5 ms in one block; Flax 0.48 ms).
ONE_BLOCK_ELEMENTS = 1 << 20
# Larger arrays take the blocked loop only when their rows are at least this long. Since every backward pass
# takes its own x and dy (stats.fresh) one block keeps no full-size temporary either, and it is faster unless the
# rows are long (measured fwd+bwd float32, CPU, ms, blocked / one block: 1024x4096 25 / 16, 4096x4096 118 / 92,
# 8192x768 37 / 24, 1024x16384 112 / 126, 512x32768 306 / 328; benchmarks/RESULTS.md, issue 13).
BLOCK_MIN_ROW = 1 << 14


def _tangent(axes, center, res, lin):
    """The forward-mode derivative of ``(y, mean, var)``: linear in ``lin = (dx, dscale, dbias, depsilon)``, in
    the rescaled form of the forward (``q`` a power of two per reduction, see :class:`stats.Normalizer`):
    with ``c = x q - mean q``, ``xhat = c rstd_q`` and ``<.>`` the mean over ``axes``,
    ``d mean q = <q dx>``, ``d var q^2 = 2 <c q dx> + q^2 d eps`` and
    ``d xhat = rstd_q (q dx - <q dx>) - xhat rstd_q^2 (d var q^2) / 2``;
    ``dy = d xhat scale + xhat dscale + dbias``.
    The backward (its transpose) is the hand-written one of each path."""
    x, scale, bias_like, _, q, mean_q, rstd_q = res
    dx, dscale, dbias, deps = lin
    dtype = mean_q.dtype
    flat = lambda p: p.astype(dtype)[None] if p.ndim < x.ndim else p.astype(dtype)  # noqa: E731
    c = x.astype(dtype) * q - mean_q if center else x.astype(dtype) * q
    xhat = c * rstd_q
    dxq = dx.astype(dtype) * q
    mean_over = lambda a: jnp.mean(a, axes, keepdims=True)  # noqa: E731
    dmean_q = mean_over(dxq) if center else jnp.zeros_like(mean_q)
    dvar_q = 2 * mean_over(c * dxq)
    dxhat = rstd_q * (dxq - dmean_q) - 0.5 * xhat * (rstd_q * rstd_q) * (dvar_q + deps.astype(dtype) * q * q)
    dy = dxhat if scale is None else dxhat * flat(scale)
    if dscale is not None:
        dy = dy + xhat * flat(dscale)
    if dbias is not None:
        dy = dy + flat(dbias)
    return dy.astype(x.dtype), dmean_q / q, dvar_q / q / q


@functools.partial(jax.custom_jvp, nondiff_argnums=(4, 5))
def _rows(x, scale, bias, epsilon, block_rows, center):
    y, mean, var, _ = _forward(x, scale, bias, epsilon, 1, center)
    return y, mean, var


def _forward(x, scale, bias, epsilon, axis, center=True):
    """(M, N) ``x`` normalized over ``axis`` (1: rows, LayerNorm; 0: columns, BatchNorm); ``(N,)`` params.
    ``center=False`` (rows only, RMSNorm): ``mean`` is 0 and ``var`` the mean of squares."""
    st = stats.normalizer(x, (axis,), epsilon=epsilon, center=center)
    dtype = st.mean.dtype
    inv = st.rstd_q if scale is None else st.rstd_q * scale.astype(dtype)[None]
    xo, q, mean_q, inv = stats.fresh(x, st.q, st.mean_q, inv)  # the output pass converts x itself
    y = (xo.astype(dtype) * q - mean_q) * inv
    if bias is not None:
        y = y + bias.astype(dtype)[None]
    return y.astype(x.dtype), st.mean, st.var, st


def _rows_fwd(x, scale, bias, epsilon, block_rows, center):
    y, mean, var, st = _forward(x, scale, bias, epsilon, 1, center)
    bias_dtype = None if bias is None else jnp.zeros((0,), bias.dtype)  # only its dtype is needed
    return (y, mean, var), (x, scale, bias_dtype, epsilon, st.q, st.mean_q, st.rstd_q)


def _block_grads(x, dy, dmean, dvar, q, mean_q, rstd_q, scale, center=True):
    """dx, and the per-block sums of dy * xhat, dy and the epsilon cotangent, for one block of rows.
    ``center=False`` (RMSNorm): no mean is subtracted, so neither its term nor its cotangent enters.
    ``q, mean_q, rstd_q``: the rows' :class:`stats.Normalizer` (``q`` 1 unless the magnitudes demand it)."""
    dtype = mean_q.dtype
    n = x.shape[1]
    rstd = rstd_q * q
    sc = None if scale is None else scale.astype(dtype)[None]

    def grads(x, dy, q, mean_q, rstd_q, sc, *_):
        c_q = x.astype(dtype) * q - mean_q  # (x - mean) q
        dyf = dy.astype(dtype)
        return c_q, c_q * rstd_q, dyf, dyf if sc is None else dyf * sc

    # Every reduction is its own pass over x and dy, each taking them (and the broadcast operands) from its own
    # distinct stats.fresh: no shared full-size intermediate (xhat, dy * scale, a float32 copy of 16-bit input,
    # scale broadcast to x's shape) is materialized.
    res = (q, mean_q, rstd_q, sc)
    _, xhat, _, g = grads(*stats.fresh(x, dy, *res))
    gx_mean = jnp.mean(g * xhat, 1, keepdims=True)
    g_mean = jnp.mean(grads(*stats.fresh(x, dy, *res, gx_mean))[3], 1, keepdims=True) if center else 0.0
    _, xhat, dyf, _ = grads(*stats.fresh(x, dy, *res, gx_mean, g_mean))
    dscale = jnp.sum(dyf * xhat, 0)
    dbias = jnp.sum(stats.fresh(dy, gx_mean, g_mean)[0].astype(dtype), 0)
    c_q, xhat, dyf, g = grads(*stats.fresh(x, dy, *res, gx_mean, g_mean, dscale))
    dx = rstd * (g - xhat * gx_mean) + ((2 / n) * dvar / q) * c_q
    if center:
        dx = dx - rstd * g_mean + dmean / n
    deps = -0.5 * n * jnp.sum(rstd * rstd * gx_mean)
    return dx.astype(x.dtype), dscale, dbias, deps


def _rows_bwd(block_rows, center, res, cts):
    x, scale, bias_dtype, epsilon, q, mean_q, rstd_q = res
    dy, dmean, dvar = cts
    m, n = x.shape
    dtype = mean_q.dtype
    r = max(1, min(block_rows, m))
    full = m // r

    def block(start, rows):
        sl = lambda a: lax.dynamic_slice_in_dim(a, start, rows, 0)  # noqa: E731
        return _block_grads(sl(x), sl(dy), sl(dmean), sl(dvar), sl(q), sl(mean_q), sl(rstd_q), scale, center)

    zeros = jnp.zeros((n,), dtype)
    if m <= r:
        dx, dscale, dbias, deps = block(0, m)
    else:

        def body(i, carry):
            dx, dscale, dbias, deps = carry
            bdx, bscale, bbias, beps = block(i * r, r)
            return lax.dynamic_update_slice_in_dim(dx, bdx, i * r, 0), dscale + bscale, dbias + bbias, deps + beps

        init = (jnp.zeros_like(x), zeros, zeros, jnp.zeros((), dtype))
        dx, dscale, dbias, deps = lax.fori_loop(0, full, body, init)
        if m > full * r:  # the last, shorter block
            bdx, bscale, bbias, beps = block(full * r, m - full * r)
            dx = lax.dynamic_update_slice_in_dim(dx, bdx, full * r, 0)
            dscale, dbias, deps = dscale + bscale, dbias + bbias, deps + beps
    dscale = None if scale is None else dscale.astype(scale.dtype)
    dbias = None if bias_dtype is None else dbias.astype(bias_dtype.dtype)
    return dx, dscale, dbias, deps.astype(epsilon.dtype)


@_rows.defjvp
def _rows_jvp(block_rows, center, primals, tangents):
    out, res = _rows_fwd(*primals, block_rows, center)
    bwd = functools.partial(_rows_bwd, block_rows, center)
    return out, linear.linear(functools.partial(_tangent, (1,), center), bwd, res, tangents)


@jax.custom_jvp
def _cols(x, scale, bias, epsilon):
    y, mean, var, _ = _forward(x, scale, bias, epsilon, 0)
    return y, mean, var


def _cols_fwd(x, scale, bias, epsilon):
    y, mean, var, st = _forward(x, scale, bias, epsilon, 0)
    bias_dtype = None if bias is None else jnp.zeros((0,), bias.dtype)
    return (y, mean, var), (x, scale, bias_dtype, epsilon, st.q, st.mean_q, st.rstd_q)


def _cols_bwd(res, cts):
    """Columns (BatchNorm): the per-channel sums of dy and dy * xhat are dbias and dscale and also the two
    means the dx formula needs, so the backward is one fused reduction pass and one elementwise pass."""
    x, scale, bias_dtype, epsilon, q, mean_q, rstd_q = res
    dy, dmean, dvar = cts
    m = x.shape[0]
    dtype = mean_q.dtype
    rstd = rstd_q * q
    # Each pass converts its own x and dy (stats.fresh): no full-size float32 copies of 16-bit input.
    sum_dy = jnp.sum(stats.fresh(dy)[0].astype(dtype), 0, keepdims=True)
    x1, dy1 = stats.fresh(x, dy)
    sum_dy_xhat = jnp.sum(dy1.astype(dtype) * ((x1.astype(dtype) * q - mean_q) * rstd_q), 0, keepdims=True)
    k = rstd if scale is None else rstd * scale.astype(dtype)[None]
    sums = (sum_dy, sum_dy_xhat)
    x2, dy2, sum_dy, sum_dy_xhat, q, mean_q, rstd_q, k = stats.fresh(x, dy, *sums, q, mean_q, rstd_q, k)
    c_q = x2.astype(dtype) * q - mean_q  # (x - mean) q
    xhat = c_q * rstd_q
    dx = k * (dy2.astype(dtype) - sum_dy / m - xhat * (sum_dy_xhat / m)) + dmean / m + ((2 / m) * dvar / q) * c_q
    deps = -0.5 * jnp.sum(k * rstd * sum_dy_xhat)
    dscale = None if scale is None else sum_dy_xhat[0].astype(scale.dtype)
    dbias = None if bias_dtype is None else sum_dy[0].astype(bias_dtype.dtype)
    return dx.astype(x.dtype), dscale, dbias, deps.astype(epsilon.dtype)


@_cols.defjvp
def _cols_jvp(primals, tangents):
    out, res = _cols_fwd(*primals)
    return out, linear.linear(functools.partial(_tangent, (0,), True), _cols_bwd, res, tangents)


vary_like = stats.vary_like


def rows_operand(p: jax.Array | None, x_shape: tuple[int, ...], axes: tuple[int, ...]) -> Any:
    """A scale/bias of x's rank as the flat ``(N,)`` vector of the rows, or ``False`` if it varies elsewhere."""
    return _flat_operand(p, x_shape, len(x_shape) - len(axes), len(x_shape))


def _flat_operand(p, x_shape, start, stop):
    """``p`` (of x's rank) flattened over axes ``start:stop`` if it is constant along all other axes."""
    if p is None:
        return None
    if any(d != 1 for i, d in enumerate(p.shape) if not start <= i < stop):
        return False
    inner = x_shape[start:stop]
    return jnp.broadcast_to(p.reshape(p.shape[start:stop]), inner).reshape(-1)


def normalize_rows(
    x: jax.Array,
    scale: jax.Array | None,
    bias: jax.Array | None,
    axes: tuple[int, ...],
    epsilon: Any,
    center: bool = True,
) -> tuple[jax.Array, jax.Array, jax.Array] | None:
    """``(y, mean, var)`` normalized over the trailing ``axes`` with the blocked backward, or None if the
    scale/bias vary along the kept axes (the caller then uses the generic path). ``center=False`` is RMSNorm:
    ``y = x * rsqrt(mean(x^2) + eps) * scale + bias``, returned ``mean`` 0 and ``var`` the mean of squares.

    Args:
      x: floating array; ``axes``: the sorted trailing axes (static).
      scale, bias: None or arrays of x's rank broadcastable to it.
      epsilon: non-negative Python float or scalar array (it gets a cotangent).

    Returns:
      ``y`` of x's shape and dtype; ``mean`` and ``var`` (biased) with keepdims in ``stats_dtype(x.dtype)``.
    """
    s, b = rows_operand(scale, x.shape, axes), rows_operand(bias, x.shape, axes)
    if s is False or b is False:
        return None
    lead = x.shape[: x.ndim - len(axes)]
    n = math.prod(x.shape[a] for a in axes)
    m = math.prod(lead)
    eps = jnp.asarray(epsilon, validation.stats_dtype(x.dtype))
    s, b, eps = (vary_like(a, x) for a in (s, b, eps))
    # 16-bit input takes one block: XLA CPU converts a bf16/f16 operand of the loop's dynamic slices to float32
    # in full before the loop (measured at 1024x16384 bf16: 128 MiB of temporaries, 2x slower than one block).
    one_block = (m * n <= ONE_BLOCK_ELEMENTS or n < BLOCK_MIN_ROW or jnp.dtype(x.dtype).itemsize < 4
                 or stats.accelerator())  # a loop of small blocks is 10x slower on a GPU (H200, 4096 x 16384)
    block_rows = m if one_block else max(1, BLOCK_ELEMENTS // max(n, 1))
    y, mean, var = _rows(x.reshape(m, n), s, b, eps, block_rows, bool(center))
    kept = lead + (1,) * len(axes)
    return y.reshape(x.shape), mean.reshape(kept), var.reshape(kept)


def normalize_columns(
    x: jax.Array, scale: jax.Array | None, bias: jax.Array | None, axes: tuple[int, ...], epsilon: Any
) -> tuple[jax.Array, jax.Array, jax.Array] | None:
    """As :func:`normalize_rows` over leading ``axes`` (BatchNorm over NHWC's N, H, W): ``x`` is viewed as
    ``(M, C)`` and each column normalized with the one-reduction-pass backward. None if the scale/bias vary
    along the reduced axes."""
    k = len(axes)
    s, b = _flat_operand(scale, x.shape, k, x.ndim), _flat_operand(bias, x.shape, k, x.ndim)
    if s is False or b is False:
        return None
    m = math.prod(x.shape[:k])
    c = math.prod(x.shape[k:])
    eps = jnp.asarray(epsilon, validation.stats_dtype(x.dtype))
    s, b, eps = (vary_like(a, x) for a in (s, b, eps))
    y, mean, var = _cols(x.reshape(m, c), s, b, eps)
    kept = (1,) * k + x.shape[k:]
    return y.reshape(x.shape), mean.reshape(kept), var.reshape(kept)


@functools.partial(jax.custom_jvp, nondiff_argnums=(4,))
def _axes(x, scale, bias, epsilon, axes):
    y, mean, var, _ = _axes_forward(x, scale, bias, epsilon, axes)
    return y, mean, var


def _axes_forward(x, scale, bias, epsilon, axes):
    st = stats.normalizer(x, axes, epsilon=epsilon)
    dtype = st.mean.dtype
    q, mean_q, rstd_q = st.q, st.mean_q, st.rstd_q
    inv = rstd_q if scale is None else rstd_q * scale.astype(dtype)
    xo, q, mean_q, inv = stats.fresh(x, q, mean_q, inv)  # the output pass converts x itself
    y = (xo.astype(dtype) * q - mean_q) * inv
    if bias is not None:
        y = y + bias.astype(dtype)
    return y.astype(x.dtype), st.mean, st.var, st


def _axes_fwd(x, scale, bias, epsilon, axes):
    y, mean, var, st = _axes_forward(x, scale, bias, epsilon, axes)
    bias_like = None if bias is None else jnp.zeros((0, *bias.shape), bias.dtype)  # its dtype and shape
    return (y, mean, var), (x, scale, bias_like, epsilon, st.q, st.mean_q, st.rstd_q)


def _sum_to(a, shape):
    """``a`` summed over the axes where ``shape`` (of a's rank) has size 1, kept as size 1."""
    return jnp.sum(a, tuple(i for i, d in enumerate(shape) if d == 1 and a.shape[i] != 1), keepdims=True)


def _axes_bwd(axes, res, cts):
    """Any axes (GroupNorm, InstanceNorm, channels-first BatchNorm): the formula of the module docstring with
    the means over ``axes`` and scale/bias of x's rank. ``dy`` and ``dy * xhat`` are first summed over the
    reduced axes along which scale and bias are constant (H, W for GroupNorm), in one pass over ``x`` and
    ``dy``; the group means, ``dscale`` and ``dbias`` all come from those partial sums, and ``dx`` is one
    elementwise pass."""
    x, scale, bias_like, epsilon, q, mean_q, rstd_q = res
    dy, dmean, dvar = cts
    dtype = mean_q.dtype
    n = math.prod(x.shape[a] for a in axes)
    bias_shape = None if bias_like is None else bias_like.shape[1:]
    pure = tuple(
        a for a in axes
        if (scale is None or scale.shape[a] == 1) and (bias_shape is None or bias_shape[a] == 1)
    )
    rest = tuple(a for a in axes if a not in pure)
    # Statistics broadcast along the inner reduced axes first (see stats.along_inner): much faster on XLA CPU.
    q_b, mean_b, rstd_b = (stats.along_inner(a, x.shape, axes) for a in (q, mean_q, rstd_q))
    # Each pass takes its own x and dy (stats.fresh): no full-size float32 copy of 16-bit input.
    s1 = stats.sum_keepdims(stats.fresh(dy)[0].astype(dtype), pure)
    x1, dy1, q1, mean1, rstd1 = stats.fresh(x, dy, q_b, mean_b, rstd_b)
    s2 = stats.sum_keepdims(dy1.astype(dtype) * ((x1.astype(dtype) * q1 - mean1) * rstd1), pure)
    sc = None if scale is None else scale.astype(dtype)
    g_mean = jnp.sum(s1 if sc is None else sc * s1, rest, keepdims=True) / n
    gx_mean = jnp.sum(s2 if sc is None else sc * s2, rest, keepdims=True) / n
    x2, dy2, q_b, mean_b, rstd_b, g_mean, gx_mean = stats.fresh(x, dy, q_b, mean_b, rstd_b, g_mean, gx_mean)
    c_q = x2.astype(dtype) * q_b - mean_b  # (x - mean) q
    xhat = c_q * rstd_b
    rstd_b = rstd_b * q_b
    dyf = dy2.astype(dtype)
    g = dyf if sc is None else dyf * sc
    dx = rstd_b * (g - g_mean - xhat * gx_mean) + dmean / n + ((2 / n) * dvar / q_b) * c_q
    rstd = rstd_q * q
    deps = -0.5 * n * jnp.sum(rstd * rstd * gx_mean)
    dscale = None if scale is None else _sum_to(s2, scale.shape).astype(scale.dtype)
    dbias = None if bias_like is None else _sum_to(s1, bias_shape).astype(bias_like.dtype)
    return dx.astype(x.dtype), dscale, dbias, deps.astype(epsilon.dtype)


@_axes.defjvp
def _axes_jvp(axes, primals, tangents):
    out, res = _axes_fwd(*primals, axes)
    bwd = functools.partial(_axes_bwd, axes)
    return out, linear.linear(functools.partial(_tangent, axes, True), bwd, res, tangents)


def normalize_axes(
    x: jax.Array, scale: jax.Array | None, bias: jax.Array | None, axes: tuple[int, ...], epsilon: Any
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """As :func:`normalize_rows` over any sorted ``axes`` (GroupNorm's grouped view, InstanceNorm, BatchNorm on
    channels-first input), with scale/bias of x's rank broadcastable to it: a custom derivative that saves ``x``,
    ``scale`` and the float32 statistics, and whose backward is two fused reductions and one elementwise pass.
    """
    eps = jnp.asarray(epsilon, validation.stats_dtype(x.dtype))
    scale, bias, eps = (vary_like(a, x) for a in (scale, bias, eps))
    return _axes(x, scale, bias, eps, tuple(axes))

