"""Independent NumPy float64 references for the tests. Written from the papers' formulas, not from jaxnorm."""

from __future__ import annotations

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
                           moving_var="biased", convention="keras", renorm=False, renorm_momentum=0.99,
                           virtual_batch_size=None, safe=True):
    """The moving statistics after each training step, by the per-feature safe-update rule (issue 12, class 5).

    Per feature: the batch's (count, mean, biased var) over every axis but ``feature_axes`` (with ghost batches:
    the mean over the ghost batches that hold data of their means and variances, and the total count); the
    feature updates when count > 0 and mean and var are finite (always, with ``safe=False``), otherwise it keeps
    every moving statistic. Exponential: ``k * old + (1 - k) * batch`` with ``k`` the old value's weight
    (``momentum``, or ``1 - momentum`` for ``convention='torch'``); cumulative: ``old + (batch - old) / t``;
    debiased: ``hidden = k * old * (1 - k^(t-1)) + (1 - k) * batch``, ``hidden / (1 - k^t)``, with ``t`` the
    counter + 1; the counter advances when any feature updated (always, with ``safe=False``). Renorm (Keras):
    ``stddev = sqrt(var + eps)`` averaged like the mean, ``renorm_mean``/``renorm_stddev`` with
    ``renorm_momentum``, ``var = max(stddev^2 - eps, 0)``. Unbiased: ``var * n / (n - 1)`` for n > 1.

    Returns a list of ``(state, ok)`` per step: the state dict (float64, feature-shaped) and the boolean mask of
    the features that updated.
    """
    keep = momentum if convention == "keras" else 1 - momentum
    rkeep = renorm_momentum if convention == "keras" else 1 - renorm_momentum
    state = {k: _f64(v).copy() for k, v in state0.items()}
    if "count" in state:
        state["count"] = int(np.asarray(state0["count"]))
    out = []
    with np.errstate(all="ignore"):  # NaN/inf batches are the point
        for i, x in enumerate(xs):
            out.append(_safe_step(state, x, None if masks is None else masks[i], feature_axes, keep, rkeep,
                                  epsilon, averaging, moving_var, renorm, virtual_batch_size, safe))
            state = out[-1][0]
    return [({k: np.copy(v) for k, v in st.items()}, ok) for st, ok in out]


def _safe_step(state, x, mask, feature_axes, keep, rkeep, epsilon, averaging, moving_var, renorm,
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
    if moving_var == "unbiased":
        var = var * np.where(count > 1, count / np.maximum(count - 1, 1), 1)
    t = state.get("count", 0) + 1
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
    if "count" in state:
        state["count"] = state["count"] + int(ok.any())
    return state, ok

