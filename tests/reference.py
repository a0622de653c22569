"""Independent references for the tests, written from the papers' formulas, not from jaxnorm: NumPy in float64,
and (``textbook_normalize``, ``row_norm_grads``) the textbook formula in plain ``jnp`` for JAX's autodiff to
differentiate, in float64 under ``jax.enable_x64``. Every test module takes its references from here."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np


def _f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


def moments(x, axes, mask=None):
    """Mean and population variance over ``axes`` (tuple), keepdims, of the positions where mask is True."""
    x = _f64(x)
    if mask is None:
        mask = np.ones(x.shape, bool)
    mask = np.broadcast_to(np.asarray(mask, bool), x.shape)
    xz = np.where(mask, x, 0.0)
    n = mask.sum(axis=axes, keepdims=True)
    mean = xz.sum(axis=axes, keepdims=True) / np.maximum(n, 1)
    var = np.where(mask, (xz - mean) ** 2, 0.0).sum(axis=axes, keepdims=True) / np.maximum(n, 1)
    return mean, var


def normalize(x, mean, var, offset=None, scale=None, epsilon=1e-3):
    y = (_f64(x) - _f64(mean)) / np.sqrt(_f64(var) + epsilon)
    if scale is not None:
        y = y * _f64(scale)
    if offset is not None:
        y = y + _f64(offset)
    return y


def feature_shape(ndim, feature_axes, shape):
    return [shape[a] if a in feature_axes else 1 for a in range(ndim)]


def batch_norm_steps(xs, feature_axes, momentum, epsilon, scale, bias, mean0, var0, masks=None):
    """Runs training steps on each batch in ``xs``; returns the outputs and the final moving statistics.

    Keras/Flax convention: moving = momentum * moving + (1 - momentum) * batch, biased batch variance.
    ``scale``, ``bias``, ``mean0``, ``var0`` have the features' shape.
    """
    ndim = xs[0].ndim
    red = tuple(a for a in range(ndim) if a not in feature_axes)
    fs = feature_shape(ndim, feature_axes, xs[0].shape)
    mean, var = _f64(mean0), _f64(var0)
    ys = []
    for i, x in enumerate(xs):
        m, v = moments(x, red, None if masks is None else masks[i])
        ys.append(normalize(x, m, v, np.reshape(bias, fs), np.reshape(scale, fs), epsilon))
        mean = momentum * mean + (1 - momentum) * m.reshape(mean.shape)
        var = momentum * var + (1 - momentum) * v.reshape(var.shape)
    return ys, mean, var


def layer_norm(x, axes, scale=None, bias=None, epsilon=1e-3, mask=None):
    x = _f64(x)
    m, v = moments(x, axes, mask)
    fs = feature_shape(x.ndim, axes, x.shape)
    return normalize(
        x, m, v, None if bias is None else np.reshape(bias, fs), None if scale is None else np.reshape(scale, fs),
        epsilon,
    )


def batch_renorm_steps(xs, momentum, renorm_momentum, epsilon, scale, bias, clipping=None):
    """Batch renormalization (Ioffe 2017) as Keras 3 computes it, channels-last, from initial mean 0, var 1.

    r = sqrt(var_B + eps) / max(s, sqrt(eps)), d = (mean_B - mu) / max(s, sqrt(eps)) with (mu, s) the renorm
    moving mean and stddev before the step; y = (x_hat * r + d) * scale + bias. The moving stddev is averaged
    with ``momentum`` and the moving variance is max(stddev^2 - eps, 0).
    """
    clipping = clipping or {}
    c = xs[0].shape[-1]
    mean, stddev = np.zeros(c), np.ones(c)
    mu, s = np.zeros(c), np.ones(c)
    ys = []
    for x in xs:
        x = _f64(x).reshape(-1, c)
        bm, bv = x.mean(0), x.var(0)
        bs = np.sqrt(bv + epsilon)
        denom = np.maximum(s, np.sqrt(epsilon))
        r, d = bs / denom, (bm - mu) / denom
        r = np.clip(r, clipping.get("rmin", -np.inf), clipping.get("rmax", np.inf))
        dmax = clipping.get("dmax", np.inf)
        d = np.clip(d, -dmax, dmax)
        ys.append(((x - bm) / bs * r + d) * _f64(scale) + _f64(bias))
        mu, s = renorm_momentum * mu + (1 - renorm_momentum) * bm, renorm_momentum * s + (1 - renorm_momentum) * bs
        mean, stddev = momentum * mean + (1 - momentum) * bm, momentum * stddev + (1 - momentum) * bs
    return ys, {"mean": mean, "stddev": stddev, "var": np.maximum(stddev**2 - epsilon, 0), "renorm_mean": mu,
                "renorm_stddev": s}


def _group_stats(x, mask, red):
    """(count, mean, biased var) per feature over ``red`` (features keep their positions, size-1 elsewhere)."""
    x = _f64(x)
    mask = np.ones(x.shape, bool) if mask is None else np.broadcast_to(np.asarray(mask, bool), x.shape)
    count = mask.sum(axis=red, keepdims=True).astype(np.float64)
    mean, var = moments(x, red, mask)
    return count, mean, var


def batch_norm_safe_stream(xs, masks, feature_axes, state0, *, momentum, epsilon=1e-3, averaging="exponential",
                           moving_var_estimator="biased", convention="keras", renorm=False, renorm_momentum=0.99,
                           virtual_batch_size=None, safe=True):
    """The moving statistics after each training step, by the per-feature safe-update rule (issue 12, class 5).

    Per feature: the batch's (count, mean, biased var) over every axis but ``feature_axes`` (with ghost batches:
    the mean over the ghost batches that hold data of their means and variances, and the total count); the
    feature updates when count > 0 and mean and var are finite (always, with ``safe=False``), otherwise it keeps
    every moving statistic. Exponential: ``k * old + (1 - k) * batch`` with ``k`` the old value's weight
    (``momentum``, or ``1 - momentum`` for ``convention='torch'``); cumulative: ``old + (batch - old) / t``;
    debiased: ``hidden = k * old * (1 - k^(t-1)) + (1 - k) * batch``, ``hidden / (1 - k^t)``, with ``t`` the
    counter + 1 (per feature where the counter is per feature); a feature-shaped counter advances where its
    feature updated, a scalar one when any feature updated (always, with ``safe=False``). Renorm (Keras):
    ``stddev = sqrt(var + eps)`` averaged like the mean, ``renorm_mean``/``renorm_stddev`` with
    ``renorm_momentum``, ``var = max(stddev^2 - eps, 0)``. Unbiased: ``var * n / (n - 1)`` for n > 1.

    Returns a list of ``(state, ok)`` per step: the state dict (float64, feature-shaped) and the boolean mask of
    the features that updated.
    """
    keep = momentum if convention == "keras" else 1 - momentum
    rkeep = renorm_momentum if convention == "keras" else 1 - renorm_momentum
    state = {k: _f64(v).copy() for k, v in state0.items()}
    if "steps" in state:  # a scalar (exponential's count_steps) or per feature (the counted averages)
        state["steps"] = np.asarray(state0["steps"]).astype(np.int64)
    out = []
    with np.errstate(all="ignore"):  # NaN/inf batches are the point
        for i, x in enumerate(xs):
            out.append(_safe_step(state, x, None if masks is None else masks[i], feature_axes, keep, rkeep,
                                  epsilon, averaging, moving_var_estimator, renorm, virtual_batch_size, safe))
            state = out[-1][0]
    return [({k: np.copy(v) for k, v in st.items()}, ok) for st, ok in out]


def _safe_step(state, x, mask, feature_axes, keep, rkeep, epsilon, averaging, moving_var_estimator, renorm,
               virtual_batch_size, safe):
    x = _f64(x)
    red = tuple(a for a in range(x.ndim) if a not in feature_axes)
    fshape = tuple(x.shape[a] for a in feature_axes)
    if virtual_batch_size is None:
        count, mean, var = (a.reshape(fshape) for a in _group_stats(x, mask, red))
    else:
        v = virtual_batch_size
        m = None if mask is None else np.broadcast_to(np.asarray(mask, bool), x.shape)
        groups = [_group_stats(x[g:g + v], None if m is None else m[g:g + v], red)
                  for g in range(0, len(x), v)]
        counts, means, vars_ = (np.stack([gr[j].reshape(fshape) for gr in groups]) for j in range(3))
        has = (counts > 0).astype(np.float64)
        n = np.maximum(has.sum(0), 1)
        count, mean, var = counts.sum(0), (has * means).sum(0) / n, (has * vars_).sum(0) / n
    ok = (count > 0) & np.isfinite(mean) & np.isfinite(var)
    if not safe:
        ok = np.ones(fshape, bool)
    if moving_var_estimator == "unbiased":
        var = var * np.where(count > 1, count / np.maximum(count - 1, 1), 1)
    t = state.get("steps", 0) + 1
    batches = {"mean": mean, "var": var}
    new = {}
    if renorm:
        stddev = np.sqrt(var + epsilon)
        batches = {"mean": mean, "stddev": stddev}
        new["renorm_mean"] = rkeep * state["renorm_mean"] + (1 - rkeep) * mean
        new["renorm_stddev"] = rkeep * state["renorm_stddev"] + (1 - rkeep) * stddev
    for k, b in batches.items():
        old = state[k]
        if averaging == "exponential":
            new[k] = keep * old + (1 - keep) * b
        elif averaging == "cumulative":
            new[k] = old + (b - old) / t
        else:
            new[k] = (keep * old * (1 - keep ** (t - 1)) + (1 - keep) * b) / (1 - keep**t)
    if renorm:
        new["var"] = np.maximum(new["stddev"] ** 2 - epsilon, 0)
    state = {k: (np.where(ok, new[k], state[k]) if k in new else state[k]) for k in state}
    if "steps" in state:  # per feature: the steps each feature accepted; a scalar: steps where any did
        state["steps"] = state["steps"] + (ok if np.ndim(state["steps"]) else int(ok.any()))
    return state, ok



def group_norm(x, groups, axis=-1, scale=None, bias=None, epsilon=1e-3, mask=None):
    """GroupNorm written out per example and group with explicit loops over the groups (NumPy float64).

    The channels (``axis``) are split into ``groups`` groups of consecutive channels; each example's group is
    normalized by the mean and biased variance of its positions where ``mask`` is True (all without a mask);
    ``scale`` and ``bias`` have the channels' shape.
    """
    x = np.moveaxis(np.asarray(x, np.float64), axis, -1)  # channels last
    m = None if mask is None else np.moveaxis(np.broadcast_to(mask, np.shape(x) if axis == -1 else mask.shape),
                                              axis, -1)
    n, c = x.shape[0], x.shape[-1]
    size = c // groups
    y = np.empty_like(x)
    for i in range(n):
        for g in range(groups):
            block = x[i, ..., g * size:(g + 1) * size]
            sel = block if m is None else block[m[i, ..., g * size:(g + 1) * size]]
            mean, var = sel.mean(), sel.var()
            y[i, ..., g * size:(g + 1) * size] = (block - mean) / np.sqrt(var + epsilon)
    if scale is not None:
        y = y * np.asarray(scale, np.float64)
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    return np.moveaxis(y, -1, axis)


def rms_norm(x, axes, scale=None, epsilon=1e-6, mask=None):
    """RMSNorm in NumPy float64: x / sqrt(mean of x^2 over ``axes`` (masked-in positions only) + eps) * scale.

    ``axes`` is a tuple of non-negative axes; ``scale`` has the shape of those axes.
    """
    x = np.asarray(x, np.float64)
    sq = np.where(mask, x * x, 0.0) if mask is not None else x * x
    n = np.sum(mask, axes, keepdims=True) if mask is not None else np.prod([x.shape[a] for a in axes])
    y = x / np.sqrt(np.sum(sq, axes, keepdims=True) / n + epsilon)
    if scale is not None:
        shape = [x.shape[a] if a in axes else 1 for a in range(x.ndim)]
        y = y * np.reshape(np.asarray(scale, np.float64), shape)
    return y


def standardize(x, axes, center, epsilon):
    """``(x - mean) / sqrt(var + epsilon)`` over ``axes`` (keepdims), in ``x``'s own precision (pass float64).

    ``center=False`` takes the mean as 0: the RMSNorm form, ``x / sqrt(mean(x^2) + epsilon)``.
    """
    mean = x.mean(axes, keepdims=True) if center else 0.0
    var = ((x - mean) ** 2).mean(axes, keepdims=True)
    return (x - mean) / np.sqrt(var + epsilon)


def adapt_statistics(x, axis):
    """NumPy float64 mean and population variance per kept index, and the count of values reduced per index.

    ``axis`` is Keras's ``Normalization`` axis: the axes kept (None: none kept, one statistic over everything).
    """
    x = np.asarray(x, np.float64)
    kept = () if axis is None else tuple(sorted(a % x.ndim for a in np.atleast_1d(axis)))
    reduce = tuple(a for a in range(x.ndim) if a not in kept)
    return x.mean(reduce), x.var(reduce), np.prod([x.shape[a] for a in reduce])


def ghost_batch_norm(x, params, state, v, momentum, epsilon):
    """Ghost batch normalization, channels last, in NumPy float64: each contiguous ghost batch of ``v`` examples
    normalized alone by its own mean and biased variance; the moving statistics move toward the mean of the
    ghosts' statistics (``momentum * old + (1 - momentum) * batch``).

    Returns ``(y, new_mean, new_var)``; ``params`` holds ``scale``/``bias``, ``state`` ``mean``/``var``.
    """
    x64 = np.asarray(x, np.float64)
    ghosts = x64.reshape((-1, v) + x64.shape[1:])
    axes = tuple(range(1, ghosts.ndim - 1))
    mean = ghosts.mean(axes, keepdims=True)
    var = ghosts.var(axes, keepdims=True)
    y = (ghosts - mean) / np.sqrt(var + epsilon) * np.asarray(params["scale"]) + np.asarray(params["bias"])
    new_mean = momentum * np.asarray(state["mean"]) + (1 - momentum) * mean.reshape(-1, x.shape[-1]).mean(0)
    new_var = momentum * np.asarray(state["var"]) + (1 - momentum) * var.reshape(-1, x.shape[-1]).mean(0)
    return y.reshape(x.shape), new_mean, new_var


def textbook_normalize(x, scale, bias, axes, epsilon):
    """The textbook forward in plain ``jnp`` (no custom derivative), for JAX's autodiff: the independent reference
    of the hand-written backward. Returns ``(y, mean, var)`` with the statistics over ``axes`` kept as size 1;
    ``scale``/``bias`` (or None) broadcast against ``x``. Run it in float64 (``jax.enable_x64``) for a reference.
    """
    mean = jnp.mean(x, axes, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axes, keepdims=True)
    y = (x - mean) / jnp.sqrt(var + epsilon)
    if scale is not None:
        y = y * scale
    if bias is not None:
        y = y + bias
    return y, mean, var


def row_norm(x, scale, bias, epsilon, subtract_mean):
    """NumPy float64 textbook LayerNorm (``subtract_mean``) / RMSNorm over the last axis of a matrix."""
    x = np.asarray(x, np.float64)
    if subtract_mean:
        xc = x - x.mean(axis=-1, keepdims=True)
        var = np.mean(xc**2, axis=-1, keepdims=True)
    else:
        xc, var = x, np.mean(x**2, axis=-1, keepdims=True)
    y = xc / np.sqrt(var + epsilon)
    if scale is not None:
        y = y * np.asarray(scale, np.float64)
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    return y


def row_norm_grads(x, scale, bias, dy, epsilon, subtract_mean):
    """``(dx, dscale, dbias)`` of :func:`row_norm` for the cotangent ``dy``, by JAX autodiff of the textbook
    forward in float64 (NumPy arrays; None for an absent ``scale``/``bias``)."""
    f64 = lambda a: None if a is None else np.asarray(a, np.float64)  # noqa: E731
    with jax.enable_x64(True):
        grads = _row_norm_vjp(f64(x), f64(scale), f64(bias), f64(dy), epsilon, subtract_mean)
        return tuple(None if g is None else np.asarray(g) for g in grads)


@functools.partial(jax.jit, static_argnums=(4, 5))
def _row_norm_vjp(x, scale, bias, dy, epsilon, subtract_mean):
    def f(x, scale, bias):
        if subtract_mean:
            xc = x - jnp.mean(x, axis=-1, keepdims=True)
            var = jnp.mean(jnp.square(xc), axis=-1, keepdims=True)
        else:
            xc, var = x, jnp.mean(jnp.square(x), axis=-1, keepdims=True)
        y = xc / jnp.sqrt(var + epsilon)
        if scale is not None:
            y = y * scale[None, :]
        if bias is not None:
            y = y + bias[None, :]
        return y

    return jax.vjp(f, x, scale, bias)[1](dy)


_ERF = np.vectorize(math.erf, otypes=[np.float64])


def pointwise(x, alpha, shift=0.0, scale=None, bias=None, erf=False):
    """DyT (``erf=False``) or Derf in float64: ``scale * f(alpha * x + shift) + bias`` and its derivatives.

    Returns ``(y, f(z), f'(z))`` with ``z = alpha * x + shift``; ``scale``/``bias`` broadcast to ``x``."""
    x = _f64(x)
    z = float(alpha) * x + float(shift)
    t, dt = (_ERF(z), 2 / math.sqrt(math.pi) * np.exp(-z * z)) if erf else (np.tanh(z), 1 - np.tanh(z) ** 2)
    y = t * (1.0 if scale is None else _f64(scale)) + (0.0 if bias is None else _f64(bias))
    return y, t, dt
