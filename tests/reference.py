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
