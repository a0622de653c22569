r"""Normalization by its own statistics, with a memory-light hand-written backward: one path for every layer
that normalizes without a mask or ``axis_name`` (LayerNorm and RMSNorm over trailing axes, BatchNorm over leading
ones, GroupNorm's grouped view, InstanceNorm, channels-first BatchNorm).

Forward: the statistics of :func:`stats.normalizer` (``q`` a power of two per reduction with
``extreme_range``, else 1), then ``y = (x q - mean q) * rstd_q * scale + bias``, ``scale`` and ``bias`` of x's
rank (broadcast in the output loop).

Backward: the transpose of a ``jax.custom_jvp``'s tangent map (:func:`linear.linear`); it saves only ``x`` (the
caller holds it anyway), ``scale`` and the flat float32 ``q``, ``mean q`` and ``rstd_q``, and computes, with
:math:`c = x - \mu`, :math:`\hat x = c\,r`, :math:`g = dy \cdot \text{scale}`, :math:`A = \sum g` and
:math:`B = \sum g \hat x` over the ``n`` reduced positions (all in float32):

.. math::
    dx = r\,(g - A/n - \hat x\,B/n) + \frac{\bar\mu}{n} + \frac{2\bar v\,c}{n},
    \quad d\text{scale} = \textstyle\sum dy\,\hat x, \quad d\text{bias} = \sum dy, \quad
    d\epsilon = -\tfrac12 \sum r^2 B

(``dscale``/``dbias`` summed over the axes along which they are broadcast; :math:`\bar\mu, \bar v` the
cotangents reaching the returned mean and variance; RMS has no :math:`A` and :math:`\mu = 0`). Where ``scale``
and ``bias`` are constant along some reduced axes (BatchNorm, GroupNorm's spatial axes), ``dy`` and
``dy * xhat`` are first summed over those axes in two passes, and ``A``, ``B``, ``dscale`` and ``dbias`` come from
those partial sums; otherwise (LayerNorm, RMSNorm) ``A``, ``B``, ``dscale`` and ``dbias`` are four passes of
their own. ``dx`` is one elementwise pass. Each pass takes its own ``x`` and ``dy``
(:func:`passes.fresh`), so XLA materializes no full-size intermediate (``xhat``, ``dy * scale``, a float32 copy
of 16-bit input), where autodiff of the same forward keeps 2-4 of them.

Both modes: ``jax.jvp``/``jacfwd`` run the closed-form tangent (:func:`_tangent`); ``grad``/``vjp`` run the
backward above; ``jax.hessian`` (forward over reverse) and reverse over reverse differentiate the backward.

Source: the backward is the standard normalization gradient (Ba, Kiros & Hinton 2016; Ioffe & Szegedy 2015).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxnorm._src import collectives, linear, passes, stats, validation


def normalize(
    x: jax.Array, scale: jax.Array | None, bias: jax.Array | None, axes: tuple[int, ...], epsilon: Any,
    *, center: bool = True, extreme_range: bool = False, split: tuple[int, int] | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(y, mean, var)``: ``x`` normalized over the sorted ``axes`` by its own statistics, with the custom
    backward. ``scale``/``bias``: None or of x's rank, broadcastable to it. ``mean``/``var`` are flat (the kept
    axes' shape), biased, in ``stats_dtype(x.dtype)``; ``center=False`` is RMSNorm (``mean`` 0, ``var`` the
    mean of squares). ``epsilon`` may be traced (it gets a cotangent). ``split=(axis, groups)``: GroupNorm's
    channels read in groups (``axes`` count in that shape; :class:`passes.View`)."""
    eps = jnp.asarray(epsilon, validation.stats_dtype(x.dtype))
    scale, bias, eps = (collectives.vary_like(a, x) for a in (scale, bias, eps))
    return _normalize(x, scale, bias, eps, (tuple(axes), split), bool(center), bool(extreme_range))


def _view(x, scale, bias_shape, problem):
    """The problem's view (:func:`passes.view_of`): rank 2 or 3 where the layer allows."""
    axes, split = problem
    return passes.view_of(x.shape, axes, None if scale is None else scale.shape, bias_shape,
                          merge=jnp.dtype(x.dtype).itemsize >= 4, split=split)


def _kept(x, problem):
    axes, split = problem
    return tuple(d for i, d in enumerate(passes.split_shape(x.shape, split)) if i not in axes)


@functools.partial(jax.custom_jvp, nondiff_argnums=(4, 5, 6))
def _normalize(x, scale, bias, epsilon, axes, center, extreme):
    y, mean, var, _ = _forward(x, scale, bias, epsilon, axes, center, extreme)
    return y, mean, var


def _per_example(x, scale, bias, problem):
    """Whether to map the forward over the examples: ``scale`` or ``bias`` per example (AdaLN's ``(N, 1, C)`` for
    an ``(N, T, C)`` ``x``: full along the kept leading axis and 1 along another kept axis, so that the view cannot
    merge the rows), for 32-bit input, whose views merge (16-bit input keeps its own axes either way, and mapping
    it measured the same: bfloat16 (8, 1000, 1152) 4.1 ms mapped against 4.4, (4, 4096, 768) 6.9 against 6.8)."""
    axes, split = problem
    kept = passes.kept_axes(x.ndim, axes)
    return split is None and 0 in kept and x.shape[0] > 1 and jnp.dtype(x.dtype).itemsize >= 4 and any(
        p is not None and p.shape[0] == x.shape[0] and any(p.shape[i] == 1 != x.shape[i] for i in kept[1:])
        for p in (scale, bias)
    )


def _forward(x, scale, bias, epsilon, axes, center, extreme):
    """``(y, mean, var, (q, mean_q, rstd_q))``, the statistics flat in the view's kept shape.

    Per-example operands (:func:`_per_example`) are mapped over the examples (``jax.vmap``), each example's
    problem a plain one with shared operands: XLA CPU compiles one fused loop over the merged rows then (measured
    at DiT's ``(8, 1024, 1152)`` float32: 19.8 ms, against 39.9 ms for the rank-3 view with the operands
    broadcast over the tokens; 28.8 -> 15.0 ms at (8, 1000, 1152)); the statistics come out in the rank-3 view's
    kept shape, as the backward reads them."""
    if _per_example(x, scale, bias, axes):
        inner = (tuple(a - 1 for a in axes[0]), None)
        # each operand mapped along the examples, or (size 1 there) shared by them
        operands = [(None, None) if p is None else (p, 0) if p.shape[0] != 1 else (p[0], None)
                    for p in (scale, bias)]
        one = lambda xe, se, be: _forward(xe, se, be, epsilon, inner, center, extreme)  # noqa: E731
        y, mean, var, stat = jax.vmap(one, in_axes=(0, *(a for _, a in operands)))(x, *(p for p, _ in operands))
        kept = _view(x, scale, None if bias is None else bias.shape, axes).kept
        stat = tuple(None if a is None else a.reshape(kept) for a in stat)
        return y, mean.reshape(_kept(x, axes)), var.reshape(_kept(x, axes)), stat
    view = _view(x, scale, None if bias is None else bias.shape, axes)
    st = stats.normalizer(x, axes[0], epsilon=epsilon, center=center, extreme_range=extreme, split=axes[1])
    stat = tuple(None if a is None else a.reshape(view.kept) for a in (st.q, st.mean_q, st.rstd_q))
    dtype = st.rstd_q.dtype
    xo, q, mean_q, rstd_q = view.fresh(x, *stat)  # the output pass converts x itself
    y = _centered(view, xo, q, mean_q, center) * view.spread(rstd_q)
    if scale is not None:
        y = y * view.expand(scale.astype(dtype))
    if bias is not None:
        y = y + view.expand(bias.astype(dtype))
    return y.astype(x.dtype).reshape(x.shape), st.mean, st.var, stat


def _centered(view, x, q, mean_q, center):
    """``x q - mean q`` (``x q`` for RMS) of a view-shaped ``x`` in the statistics dtype."""
    xq = x.astype(mean_q.dtype)
    if q is not None:
        xq = xq * view.spread(q)
    return xq - view.spread(mean_q) if center else xq


def _residuals(x, scale, bias, epsilon, axes, center, extreme):
    y, mean, var, stat = _forward(x, scale, bias, epsilon, axes, center, extreme)
    bias_like = None if bias is None else jnp.zeros((0, *bias.shape), bias.dtype)  # its dtype and shape only
    return (y, mean, var), (x, scale, bias_like, epsilon, *stat)


def _tangent(axes, center, res, lin):
    """The forward-mode derivative of ``(y, mean, var)``, linear in ``lin = (dx, dscale, dbias, depsilon)``:
    with ``c = x q - mean q``, ``xhat = c rstd_q`` and ``<.>`` the mean over ``axes``,
    ``d mean q = <q dx>``, ``d var q^2 = 2 <c q dx> + q^2 d eps`` and
    ``d xhat = rstd_q (q dx - d mean q) - xhat rstd_q^2 (d var q^2) / 2``; ``dy = d xhat scale + xhat dscale
    + dbias``. Its transpose is :func:`_backward`."""
    x, scale, bias_like, _, q, mean_q, rstd_q = res
    dx, dscale, dbias, deps = lin
    view = _view(x, scale, None if bias_like is None else bias_like.shape[1:], axes)
    dtype, sp, vaxes = mean_q.dtype, view.spread, view.axes
    c = _centered(view, view.of(x), q, mean_q, center)
    xhat = c * sp(rstd_q)
    dxq = view.of(dx).astype(dtype) if q is None else view.of(dx).astype(dtype) * sp(q)
    dmean_q = jnp.mean(dxq, vaxes) if center else jnp.zeros_like(mean_q)
    dvar_q = 2 * jnp.mean(c * dxq, vaxes)
    dvar_eps = dvar_q + stats.unscale(deps.astype(dtype), q, -2)  # d var q^2 + q^2 d eps
    dxhat = sp(rstd_q) * (dxq - sp(dmean_q)) - 0.5 * xhat * sp(rstd_q * rstd_q * dvar_eps)
    dy = dxhat if scale is None else dxhat * view.of(scale).astype(dtype)
    if dscale is not None:
        dy = dy + xhat * view.of(dscale).astype(dtype)
    if dbias is not None:
        dy = dy + view.of(dbias).astype(dtype)
    kept = _kept(x, axes)
    dmean, dvar = stats.unscale(dmean_q, q, 1), stats.unscale(dvar_q, q, 2)
    return dy.astype(x.dtype).reshape(x.shape), dmean.reshape(kept), dvar.reshape(kept)


def _backward(axes, center, res, cts):
    """The transpose of :func:`_tangent`: the module docstring's formulas, one fused pass each, in the view."""
    x, scale, bias_like, epsilon, q, mean_q, rstd_q = res
    dy, dmean, dvar = cts
    bias_shape = None if bias_like is None else bias_like.shape[1:]
    view = _view(x, scale, bias_shape, axes)
    dtype, sp, vaxes = mean_q.dtype, view.spread, view.axes
    n = math.prod(view.shape[a] for a in vaxes)
    bias_v = None if bias_shape is None else view.of(jnp.zeros(bias_shape, bool)).shape
    dmean, dvar = dmean.reshape(view.kept), dvar.reshape(view.kept)
    stat = (q, mean_q, rstd_q)

    def own(*deps):  # one pass's own x, dy and scale (passes.fresh; scale spread), in the view, and the deps
        x1, dy1, s1, *rest = passes.fresh(x, dy, scale, *deps)
        return (view.of(x1), view.of(dy1).astype(dtype), None if s1 is None else view.expand(s1.astype(dtype)),
                *rest)

    def xhat_of(x1, q1, mean1, rstd1):
        return _centered(view, x1, q1, mean1, center) * sp(rstd1)

    def dy_only(*deps):  # dy alone (its pass's own), times scale when asked
        dy1, s1, *_ = passes.fresh(dy, scale, *deps)
        dy1 = view.of(dy1).astype(dtype)
        return dy1 if s1 is None else dy1 * view.expand(s1.astype(dtype))

    # The reduced axes along which scale and bias are constant: there, dy and dy * xhat are summed first.
    scale_v = None if scale is None else view.of(scale).shape
    pure = tuple(a for a in vaxes if all(p is None or p[a] == 1 for p in (scale_v, bias_v)))
    if pure and (view.axes == pure or q is not None):
        s1 = jnp.sum(view.of(passes.fresh(dy)[0]).astype(dtype), pure, keepdims=True)
        x1, dy1, _, *st1 = own(*stat)
        s2 = jnp.sum(dy1 * xhat_of(x1, *st1), pure, keepdims=True)
    elif pure:  # GroupNorm: the statistics vary along reduced axes that are not `pure` (the group's channels)
        s1, s2 = _grouped_sums(x, dy, view, pure, mean_q, rstd_q, center)
    if pure:
        small = None if scale is None else view.of(scale).astype(dtype)  # (scale is 1 along `pure`)
        a_sum = jnp.sum(s1 if small is None else small * s1, vaxes).reshape(view.kept)
        b_sum = jnp.sum(s2 if small is None else small * s2, vaxes).reshape(view.kept)
        dscale = None if scale is None else _sum_to(s2, scale_v)
        dbias = None if bias_v is None else _sum_to(s1, bias_v)
    else:  # scale varies along every reduced axis (LayerNorm, RMSNorm): four passes of their own
        x1, dy1, sc1, *st1 = own(*stat)
        g1 = dy1 if sc1 is None else dy1 * sc1
        b_sum = jnp.sum(g1 * xhat_of(x1, *st1), vaxes)
        a_sum = jnp.sum(dy_only(b_sum), vaxes) if center else None
        dscale = dbias = None
        if scale is not None:
            x3, dy3, _, *st3 = own(*stat, b_sum)
            dscale = _sum_to(dy3 * xhat_of(x3, *st3[:3]), scale_v)
        if bias_v is not None:
            dbias = _sum_to(view.of(passes.fresh(dy, b_sum, a_sum)[0]).astype(dtype), bias_v)
    x2, dy2, sc2, q2, mean2, rstd2, a2, b2, dmean2, dvar2 = own(*stat, a_sum, b_sum, dmean, dvar)
    c_q = _centered(view, x2, q2, mean2, center)
    rstd = rstd2 if q2 is None else rstd2 * q2
    g = dy2 if sc2 is None else dy2 * sc2
    inner = g - (c_q * sp(rstd2)) * sp(b2 / n)
    if center:
        inner = inner - sp(a2 / n)
    dvar_q = (2 / n) * dvar2 if q2 is None else (2 / n) * dvar2 / q2
    dx = sp(rstd) * inner + c_q * sp(dvar_q)
    if center:
        dx = dx + sp(dmean2 / n)
    deps = -0.5 * jnp.sum(jnp.square(rstd_q if q is None else rstd_q * q) * b_sum)
    dscale = None if dscale is None else dscale.reshape(scale.shape).astype(scale.dtype)
    dbias = None if dbias is None else dbias.reshape(bias_shape).astype(bias_like.dtype)
    return dx.astype(x.dtype).reshape(x.shape), dscale, dbias, deps.astype(epsilon.dtype)


def _grouped_sums(x, dy, view, pure, mean_q, rstd_q, center):
    """``(sum(dy), sum(dy * xhat))`` over the ``pure`` axes (keepdims, in the view), where the statistics also
    vary along reduced axes that are not ``pure`` (GroupNorm's channels in a group). Both sums run over ``x``
    and ``dy`` as they are (``(N, H, W, C)`` over ``(1, 2)``: no grouping reshape, which XLA CPU reads at half
    speed in 16 bits), and ``dy * (x - c)`` is summed with ``c`` a sample of ``x`` per position (its first
    value along ``pure``), broadcast along ``pure`` only, not the group's mean along the channels (XLA CPU
    reduces several times slower where an operand is broadcast along the minor-most axis); ``(c - mean)
    sum(dy)`` is added on the small partial sums, without cancellation, as ``c`` is one of the values."""
    dtype = mean_q.dtype
    ov = stats.outer_view(x, view, pure)
    s1 = jnp.sum(ov.of(passes.fresh(dy)[0]).astype(dtype), ov.axes)
    sample = ov.of(passes.fresh(x, s1)[0])  # its own x: the sample's conversion is not shared
    first = tuple(slice(0, 1) if a in ov.axes else slice(None) for a in range(len(ov.shape)))
    c = lax.stop_gradient(sample[first].astype(dtype)).reshape(ov.kept) if center else jnp.zeros(ov.kept, dtype)
    x1, dy1, c1 = passes.fresh(x, dy, c)
    raw = jnp.sum(ov.of(dy1).astype(dtype) * (ov.of(x1).astype(dtype) - ov.spread(c1)), ov.axes)
    small = tuple(1 if a in pure else d for a, d in enumerate(view.shape))
    stat = lambda v: lax.broadcast_in_dim(v, small, passes.kept_axes(len(small), view.axes))  # noqa: E731
    s1, c, raw = (a.reshape(small) for a in (s1, c, raw))
    return s1, (raw + (c - stat(mean_q)) * s1) * stat(rstd_q) if center else raw * stat(rstd_q)


def _sum_to(a, shape):
    """``a`` summed over the axes where ``shape`` (of a's rank) has size 1, kept as size 1."""
    return jnp.sum(a, tuple(i for i, d in enumerate(shape) if d == 1 and a.shape[i] != 1), keepdims=True)


@_normalize.defjvp
def _normalize_jvp(axes, center, extreme, primals, tangents):
    out, res = _residuals(*primals, axes, center, extreme)
    tangent = functools.partial(_tangent, axes, center)
    return out, linear.linear(tangent, functools.partial(_backward, axes, center), res, tangents)
