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
