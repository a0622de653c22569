"""Correctness of jaxnorm on the machine it runs on, before timing it: every op against NumPy float64.

Checks, on JAX's default device (a GPU when there is one):

- ``layer_norm`` and ``rms_norm`` with ``implementation="pallas"`` (the fused Triton kernels, compiled on a GPU;
  Pallas interpret mode elsewhere) and ``"xla"``: outputs and the gradients of ``sum(y * w)`` in ``x``,
  ``scale`` and ``bias``, float32, bfloat16 and float16, odd and power-of-two row lengths up to the kernels'
  64 KiB limit, inputs with an offset (``x = 1000 + N(0, 1)`` in float32);
- ``BatchNorm`` (training: output and the new moving statistics) and ``group_norm`` on NHWC input, with their
  gradients.

Each figure is ``max |got - ref| / max |ref|`` against the same formula evaluated by NumPy in float64 (gradients
through the closed-form backward of the textbook formula), with a tolerance per dtype. Prints one line per
check and exits 1 when any check fails. ``--smoke`` runs two small shapes (used by the tests on CPU).

Usage: ``python benchmarks/gpu_check.py [--smoke]``
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jaxnorm
from jaxnorm._src import pallas_norm

EPSILON = 1e-5
TOL = {"float32": 2e-5, "bfloat16": 2e-2, "float16": 4e-3}  # of the output's largest magnitude
GRAD_TOL = {"float32": 1e-4, "bfloat16": 5e-2, "float16": 1e-2}


def _ref_rows(x, w, scale, bias, center):
    """float64 forward and the closed-form gradients of sum(y * w) of LayerNorm/RMSNorm over the last axis."""
    mean = x.mean(-1, keepdims=True) if center else 0.0
    d = x - mean
    r = 1.0 / np.sqrt((d * d).mean(-1, keepdims=True) + EPSILON)
    xhat = d * r
    y = xhat * scale + (bias if center else 0.0)
    g = w * scale
    gx = g - (g.mean(-1, keepdims=True) if center else 0.0) - xhat * (g * xhat).mean(-1, keepdims=True)
    return y, r * gx, (w * xhat).sum(0), w.sum(0)


def _ref_channels(x, w, scale, bias, groups):
    """float64 BatchNorm (groups=None, statistics over N, H, W) or GroupNorm of NHWC x, and gradients."""
    n, h, wd, c = x.shape
    if groups is None:
        xs, axes = x, (0, 1, 2)
        ws = w
    else:
        xs, axes = x.reshape(n, h, wd, groups, c // groups), (1, 2, 4)
        ws = w.reshape(xs.shape)
    mean = xs.mean(axes, keepdims=True)
    d = xs - mean
    var = (d * d).mean(axes, keepdims=True)
    r = 1.0 / np.sqrt(var + EPSILON)
    xhat = d * r
    sc = scale if groups is None else scale.reshape(groups, c // groups)
    g = ws * sc
    gx = r * (g - g.mean(axes, keepdims=True) - xhat * (g * xhat).mean(axes, keepdims=True))
    y = xhat * sc + (bias if groups is None else bias.reshape(groups, c // groups))
    dscale = (ws * xhat).sum((0, 1, 2)).reshape(c)
    return y.reshape(x.shape), gx.reshape(x.shape), dscale, w.sum((0, 1, 2)), mean, var


def _err(got, ref):
    got = np.asarray(jnp.asarray(got, jnp.float32), np.float64)
    ref = np.asarray(ref, np.float64)
    if got.shape != ref.shape or not np.all(np.isfinite(got)):
        return np.inf
    return float(np.max(np.abs(got - ref)) / max(np.max(np.abs(ref)), 1e-30))


def _inputs(rng, shape, dtype, offset):
    x = (rng.standard_normal(shape) + offset).astype(np.float32)
    x = np.asarray(jnp.asarray(x, dtype).astype(jnp.float32), np.float64)  # the values the kernel sees
    w = rng.standard_normal(shape).astype(np.float32)
    w = np.asarray(jnp.asarray(w, dtype).astype(jnp.float32), np.float64)
    c = shape[-1]
    scale = 1.0 + 0.1 * rng.standard_normal(c).astype(np.float32)
    bias = 0.1 * rng.standard_normal(c).astype(np.float32)
    return x, w, scale.astype(np.float64), bias.astype(np.float64)


def _report(results, name, fwd_err, grad_errs, dtype, offset=0.0):
    # float32 holds x = offset + N(0, 1) to offset * 2**-24: its mean, and so x - mean, carry that rounding.
    slack = 2e-7 * offset if dtype == "float32" else 0.0
    ok = fwd_err <= TOL[dtype] + slack and all(e <= GRAD_TOL[dtype] + slack for e in grad_errs)
    results.append(ok)
    grads = " ".join(f"{e:.1e}" for e in grad_errs)
    print(f"{'ok  ' if ok else 'FAIL'} {name:<58} y {fwd_err:.1e}  grads {grads}", flush=True)


def check_rows(results, shapes, dtypes, implementations):
    rng = np.random.default_rng(0)
    for impl in implementations:
        for center, op in ((True, jaxnorm.layer_norm), (False, jaxnorm.rms_norm)):
            for dtype in dtypes:
                for shape in shapes:
                    if impl == "pallas" and shape[-1] > pallas_norm.max_row_length(jnp.dtype(dtype)):
                        continue
                    offset = 1000.0 if (dtype == "float32" and center) else 0.5
                    x, w, scale, bias = _inputs(rng, shape, dtype, offset)

                    def loss(x, s, b, w, op=op, center=center, impl=impl):
                        kw = dict(axis=-1, epsilon=EPSILON, implementation=impl)
                        y = op(x, s, b, **kw) if center else op(x, s, **kw)
                        return jnp.sum(y.astype(jnp.float32) * w), y

                    args = (jnp.asarray(x, dtype), jnp.asarray(scale, jnp.float32), jnp.asarray(bias, jnp.float32))
                    (_, y), grads = jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))(
                        *args, jnp.asarray(w, jnp.float32)
                    )
                    ry, rdx, rds, rdb = _ref_rows(x, w, scale, bias, center)
                    errs = [_err(grads[0], rdx), _err(grads[1], rds)] + ([_err(grads[2], rdb)] if center else [])
                    name = f"{op.__name__}[{impl}] {dtype} {shape} offset {offset:g}"
                    _report(results, name, _err(y, ry), errs, dtype, offset)


def check_channels(results, shapes, dtypes):
    rng = np.random.default_rng(1)
    groups = 32
    spec = jaxnorm.BatchNorm(axis=-1, momentum=0.9, epsilon=EPSILON)
    for dtype in dtypes:
        for shape in shapes:
            x, w, scale, bias = _inputs(rng, shape, dtype, 0.5)
            args = (jnp.asarray(x, dtype), jnp.asarray(scale, jnp.float32), jnp.asarray(bias, jnp.float32))
            args += (jnp.asarray(w, jnp.float32),)
            c = shape[-1]

            def bn_loss(x, s, b, w):
                state = {"mean": jnp.zeros(s.shape), "var": jnp.ones(s.shape)}
                y, new = spec.apply({"scale": s, "bias": b}, state, x, training=True)
                return jnp.sum(y.astype(jnp.float32) * w), (y, new)

            (_, (y, new)), grads = jax.jit(jax.value_and_grad(bn_loss, (0, 1, 2), has_aux=True))(*args)
            ry, rdx, rds, rdb, mean, var = _ref_channels(x, w, scale, bias, None)
            errs = [_err(grads[0], rdx), _err(grads[1], rds), _err(grads[2], rdb)]
            errs += [_err(new["mean"], 0.1 * mean.reshape(c)), _err(new["var"], 0.9 + 0.1 * var.reshape(c))]
            _report(results, f"BatchNorm(training) {dtype} {shape}", _err(y, ry), errs, dtype)

            def gn_loss(x, s, b, w):
                y = jaxnorm.group_norm(x, s, b, num_groups=groups, epsilon=EPSILON)
                return jnp.sum(y.astype(jnp.float32) * w), y

            (_, y), grads = jax.jit(jax.value_and_grad(gn_loss, (0, 1, 2), has_aux=True))(*args)
            ry, rdx, rds, rdb, _, _ = _ref_channels(x, w, scale, bias, groups)
            errs = [_err(grads[0], rdx), _err(grads[1], rds), _err(grads[2], rdb)]
            _report(results, f"group_norm {dtype} {shape}", _err(y, ry), errs, dtype)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="two small shapes (tests)")
    args = parser.parse_args(argv)
    device = jax.devices()[0]
    compiled = pallas_norm.pallas_available()
    print(
        f"jaxnorm check on {device.platform} ({device.device_kind}), jax {jax.__version__}; Pallas kernels "
        + ("compiled (Triton)" if compiled else "in interpret mode")
    )
    results = []
    if args.smoke:
        check_rows(results, [(5, 7), (8, 128)], ["float32", "bfloat16"], ["pallas", "xla"])
        check_channels(results, [(2, 3, 3, 64)], ["float32"])
    else:
        rows = [(4096, 7), (4096, 1000), (4096, 4096), (1024, 16384), (64, 32768)]
        check_rows(results, rows, ["float32", "bfloat16"], ["pallas", "xla"])
        check_rows(results, [(37, 5120)], ["float16"], ["pallas", "xla"])
        check_channels(results, [(32, 28, 28, 256), (8, 7, 7, 2048)], ["float32", "bfloat16"])
    failed = results.count(False)
    print(f"{len(results) - failed}/{len(results)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
