"""The formulation search of issue 13, item 1: candidate ways to write the same normalization, timed in one
interleaved run against jaxnorm's kept form and a plain copy of the same bytes.

Run from the repository root (a few minutes on a 2-core CPU)::

    python benchmarks/formulations.py                 # every study
    python benchmarks/formulations.py --only columns  # one study: columns, convert, blocks

Studies:

- ``columns``: BatchNorm's forward over the leading axes of NHWC input viewed as ``(M, C)``: Flax's one-pass
  ``E[x^2] - E[x]^2``; two-pass statistics reduced to ``(C,)`` with the output as ``(x - mean) * r + b`` or as
  ``x * r + (b - mean * r)``, with and without an ``optimization_barrier`` on the small statistics; keepdims
  ``(1, C)`` statistics; and ``jaxnorm`` itself (shifted two-pass, the overflow guard, every pass taking its own
  ``x`` from :func:`jaxnorm._src.stats.fresh`).
- ``convert``: the same two-pass forward on 16-bit input with one shared ``x.astype(float32)`` for all passes
  (XLA materializes it: a full-size float32 temporary) against a conversion inside each pass (``stats.fresh``).
- ``blocks``: LayerNorm fwd+bwd with the backward over cache-sized blocks of rows (a ``fori_loop``) against one
  block, at several shapes (the rule in ``fused.BLOCK_MIN_ROW``).

Every candidate is checked against a float64 NumPy reference before timing, the columns study also on offset
data (mean 1e4, std 1), where a formulation that cancels (``E[x^2] - E[x]^2``, ``x * r - mean * r``) loses
digits that jaxnorm's tests require. Timing: compile (run.py's ``JaxRunner``), 2 warm-up runs,
then ``--repeats`` rounds in which every candidate runs once (interleaved); medians in ms; ``temp`` is XLA's
``temp_size_in_bytes``. Figures of a run are recorded in benchmarks/RESULTS.md (issue 13).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jaxnorm
from jaxnorm._src import fused, stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (benchmarks/run.py: its compiled-function runner)

EPSILON = 1e-5
F32 = jnp.float32


def _time(fns, args, repeats):
    """Interleaved medians (ms) and XLA temporary memory (KiB), compiled by run.py's runner."""
    runners = {k: run.JaxRunner(f, args) for k, f in fns.items()}
    for r in runners.values():
        for _ in range(run.WARMUP):
            r()
    samples = {k: [] for k in fns}
    calls = dict.fromkeys(fns, 1)
    if jax.default_backend() != "cpu":  # as run.py: back-to-back calls per sample where one call is < dispatch
        for k, r in runners.items():
            start = time.perf_counter()
            r()
            calls[k] = max(1, min(run.MAX_CALLS, round(run.SAMPLE_S / max(time.perf_counter() - start, 1e-6))))
    for _ in range(repeats):  # interleaved: drift of the machine hits every candidate alike
        for k, r in runners.items():
            start = time.perf_counter()
            r(calls[k])
            samples[k].append((time.perf_counter() - start) / calls[k])
    return {k: (1e3 * float(np.median(samples[k])), (runners[k].temp_bytes or 0) / 1024) for k in fns}


def _report(title, results, checked):
    copy_ms = results["copy"][0]
    print(f"\n{title}")
    print(f"  {'candidate':<28} {'median ms':>10} {'/ copy':>7} {'temp KiB':>10}  check")
    for k, (ms, temp) in results.items():
        print(f"  {k:<28} {ms:10.3f} {ms / copy_ms:7.2f} {temp:10.1f}  {checked.get(k, '')}")


def _check(fns, args, reference, tol):
    """Each candidate's output against the float64 reference (relative max error)."""
    out = {}
    for k, f in fns.items():
        if k == "copy":
            continue
        y = np.asarray(jax.jit(f)(*args)[0], np.float64)
        err = np.max(np.abs(y - reference)) / max(np.max(np.abs(reference)), 1e-30)
        out[k] = f"ok ({err:.1e})" if err <= tol else f"MISMATCH ({err:.1e})"
    return out


def _columns_candidates(c):
    def flax_one_pass(x, s, b):
        xf = x.astype(F32)
        mean = jnp.mean(xf, 0)
        var = jnp.maximum(jnp.mean(xf * xf, 0) - mean * mean, 0)
        return ((xf - mean) * (lax.rsqrt(var + EPSILON) * s) + b).astype(x.dtype), mean, var

    def two_pass(keepdims=False, multiply_add=False, barrier=False):
        def f(x, s, b):
            xf = x.astype(F32)
            mean = jnp.sum(xf, 0, keepdims=keepdims) / x.shape[0]
            var = jnp.sum(jnp.square(xf - mean), 0, keepdims=keepdims) / x.shape[0]
            r = lax.rsqrt(var + EPSILON) * s
            o = b - mean * r if multiply_add else b
            if barrier:
                r, o, mean = lax.optimization_barrier((r, o, mean))
            y = xf * r + o if multiply_add else (xf - mean) * r + o
            return y.astype(x.dtype), mean, var

        return f

    def library(x, s, b):
        y, mean, var = jaxnorm.normalize_batch_in_training(x, s, b, (0,), EPSILON)
        return y, mean, var

    return {
        "jaxnorm": library,
        "flax one-pass": flax_one_pass,
        "two-pass (C,)": two_pass(),
        "two-pass (1, C) keepdims": two_pass(keepdims=True),
        "two-pass + barrier": two_pass(barrier=True),
        "two-pass x*r+o": two_pass(multiply_add=True),
        "two-pass x*r+o + barrier": two_pass(multiply_add=True, barrier=True),
        "copy": lambda x, s, b: (x + 0, None, None),
    }


def _convert_candidates():
    def two_pass(fresh):
        def f(x, s, b):
            take = (lambda *a: lax.optimization_barrier(a)) if fresh else (lambda *a: a)
            (x1,) = take(x)
            mean = jnp.sum(x1.astype(F32), 0) / x.shape[0]
            x2, mean = take(x, mean)
            var = jnp.sum(jnp.square(x2.astype(F32) - mean), 0) / x.shape[0]
            r = lax.rsqrt(var + EPSILON) * s
            x3, mean, r = take(x, mean, r)
            return ((x3.astype(F32) - mean) * r + b).astype(x.dtype), mean, var

        return f

    return {
        "jaxnorm": _columns_candidates(0)["jaxnorm"],
        "shared x.astype(f32)": two_pass(False),
        "converted in each pass": two_pass(True),
        "copy": lambda x, s, b: (x + 0, None, None),
    }


def _reference_columns(x, s, b):
    x64 = np.asarray(x, np.float64)
    mean, var = x64.mean(0), x64.var(0)
    return (x64 - mean) / np.sqrt(var + EPSILON) * np.asarray(s, np.float64) + np.asarray(b, np.float64)


def study_columns(repeats, shapes=((6272, 256), (25088, 256), (392, 2048)), dtypes=("float32", "bfloat16")):
    for shape in shapes:
        for dtype in dtypes:
            key = jax.random.split(jax.random.key(0), 3)
            x = (3 + 2 * jax.random.normal(key[0], shape)).astype(dtype)
            s, b = 1 + 0.1 * jax.random.normal(key[1], shape[1:]), 0.1 * jax.random.normal(key[2], shape[1:])
            fns = _columns_candidates(shape[1])
            tol = 2e-3 if dtype == "float32" else 3e-2
            checked = _check(fns, (x, s, b), _reference_columns(x, s, b), tol)
            # The error on offset data (mean 1e4, std 1), where a cancelling formulation loses digits.
            offset = (1e4 + jax.random.normal(key[0], shape)).astype(dtype)
            on_offset = _check(fns, (offset, s, b), _reference_columns(offset, s, b), np.inf)
            checked = {k: f"{v}; offset data {on_offset[k][4:-1]}" for k, v in checked.items()}
            _report(f"columns (BatchNorm fwd) {shape} {dtype}", _time(fns, (x, s, b), repeats), checked)


def study_convert(repeats, shapes=((6272, 256), (25088, 256)), dtypes=("bfloat16",)):
    for shape in shapes:
        for dtype in dtypes:
            x = (3 + 2 * jax.random.normal(jax.random.key(0), shape)).astype(dtype)
            s, b = jnp.ones(shape[1:]), jnp.zeros(shape[1:])
            fns = _convert_candidates()
            checked = _check(fns, (x, s, b), _reference_columns(x, s, b), 3e-2)
            _report(f"16-bit conversion (BatchNorm fwd) {shape} {dtype}", _time(fns, (x, s, b), repeats), checked)


def _ln_grad(block_min_row):
    def f(x, s, b, dy):
        fused.BLOCK_MIN_ROW = block_min_row  # read at trace time, so each candidate compiles its own
        return jax.vjp(lambda *a: jaxnorm.layer_norm(*a, epsilon=EPSILON), x, s, b)[1](dy)

    return f


def study_blocks(repeats, shapes=((1024, 4096), (8192, 768), (4096, 4096), (1024, 16384))):
    for shape in shapes:
        key = jax.random.split(jax.random.key(0), 2)
        x, dy = 3 + jax.random.normal(key[0], shape), jax.random.normal(key[1], shape)
        s, b = jnp.ones(shape[-1]), jnp.zeros(shape[-1])

        saved = fused.BLOCK_MIN_ROW
        try:
            fns = {
                "blocked loop": _ln_grad(0),
                "one block": _ln_grad(1 << 62),
                "copy": lambda x, s, b, dy: (x + dy,),
            }
            results = _time(fns, (x, s, b, dy), repeats)
        finally:
            fused.BLOCK_MIN_ROW = saved
        _report(f"rows (LayerNorm fwd+bwd) {shape} float32", results, {})


def _switches(fn, guard=True, fresh=True, blocks=True):
    """``fn`` traced with jaxnorm's formulation switches set (read at trace time; restored after)."""

    def f(*args):
        saved = stats._GUARD, stats._FRESH, fused.BLOCK_MIN_ROW
        stats._GUARD, stats._FRESH = guard, fresh
        fused.BLOCK_MIN_ROW = fused.BLOCK_MIN_ROW if blocks else 1 << 62
        try:
            return fn(*args)
        finally:
            stats._GUARD, stats._FRESH, fused.BLOCK_MIN_ROW = saved

    return f


def _plain(axes, kind):
    """Textbook forms in jnp, differentiated by JAX: ``flax`` (one-pass E[x^2] - E[x]^2, flax.linen's default),
    ``two-pass`` (mean, then mean of squared deviations), ``scaled`` (branch-free and exact at any magnitude:
    one fused pass for the shifted sum and max |x - shift|, then a pass over (x - mean1) * q with q = 2**-e
    from that maximum, summing it and its square), ``rms``/``rms-scaled`` (mean of squares, plain or scaled)."""

    def stats_of(xf):
        n = math.prod(xf.shape[a] for a in axes)
        if kind == "flax":
            mean = jnp.mean(xf, axes, keepdims=True)
            var = jnp.maximum(jnp.mean(xf * xf, axes, keepdims=True) - mean * mean, 0)
            return xf - mean, var, 1.0
        if kind == "two-pass":
            mean = jnp.mean(xf, axes, keepdims=True)
            return xf - mean, jnp.mean(jnp.square(xf - mean), axes, keepdims=True), 1.0
        if kind == "rms":
            return xf, jnp.mean(xf * xf, axes, keepdims=True), 1.0
        # Halves (exact) keep x - shift and x - mean finite at any float32 magnitude; q includes the half.
        first = tuple(slice(0, 1) if i in axes else slice(None) for i in range(xf.ndim))
        half = lax.stop_gradient(xf[first]) * 0.5 if kind == "scaled" else 0.0
        d1 = lax.stop_gradient(xf * 0.5 - half)
        amax = jnp.max(jnp.abs(d1), axes, keepdims=True)
        _, e = jnp.frexp(jnp.where(jnp.isfinite(amax), amax, 0))
        e = jnp.minimum(stats._scale_exponent(e.astype(jnp.int32), jnp.asarray(EPSILON, F32)), 125)
        q = jnp.ldexp(jnp.ones_like(amax), -e - 1)  # a normal number, with EPSILON * q**2 finite
        if kind == "rms-scaled":
            d = xf * q
            return d, jnp.mean(d * d, axes, keepdims=True), q
        s1 = jnp.sum(d1, axes, keepdims=True)
        mean1_half = half + jnp.where(jnp.isfinite(s1), s1 / n, 0)
        d2 = (xf * 0.5 - mean1_half) * (2 * q)
        m = jnp.mean(d2, axes, keepdims=True)
        var_q = jnp.maximum(jnp.mean(d2 * d2, axes, keepdims=True) - m * m, 0)
        return d2 - m, var_q, q

    def f(x, s, b):
        c, var, q = stats_of(x.astype(F32))
        y = c * lax.rsqrt(var + EPSILON * q * q) * s
        return ((y if kind.startswith("rms") else y + b).astype(x.dtype),)

    return f


def _gpu_candidates(op):
    if op == "batch_norm":
        axes = (0,)

        def library(x, s, b):
            return (jaxnorm.normalize_batch_in_training(x, s, b, (0,), EPSILON)[0],)
    else:
        axes = (1,)

        def library(x, s, b):
            if op == "rms_norm":
                return (jaxnorm.rms_norm(x, s, epsilon=EPSILON),)
            return (jaxnorm.layer_norm(x, s, b, epsilon=EPSILON),)

    rms = op == "rms_norm"
    fns = {
        "jaxnorm": library,
        "jaxnorm no guard": _switches(library, guard=False),
        "jaxnorm no fresh": _switches(library, fresh=False),
        "jaxnorm no blocks": _switches(library, blocks=False),
        "jaxnorm none of them": _switches(library, guard=False, fresh=False, blocks=False),
    }
    if op != "batch_norm":
        fns["pallas"] = lambda x, s, b: (
            jaxnorm.rms_norm(x, s, epsilon=EPSILON, implementation="pallas")
            if rms
            else jaxnorm.layer_norm(x, s, b, epsilon=EPSILON, implementation="pallas"),
        )
    for kind in ("rms", "rms-scaled") if rms else ("flax", "two-pass", "scaled"):
        fns[kind + " (autodiff)"] = _plain(axes, kind)
    return fns


def _with_grad(fns):
    def grad(f):
        return lambda x, s, b, dy: jax.vjp(f, x, s, b)[1]((dy,))

    out = {k: grad(f) for k, f in fns.items()}
    out["copy"] = lambda x, s, b, dy: (x + dy,)
    return out


def study_gpu(repeats, shapes=None):
    """Where the time goes on an accelerator: jaxnorm with each of its CPU-tuned devices switched off (the
    exactness guard's lax.cond, the per-pass optimization barriers, the blocked row backward), the Pallas kernels,
    and textbook forms that leave fusion to XLA, forward and forward+backward, float32 and bfloat16."""
    cases = shapes or {
        "layer_norm": ((4096, 1024), (4096, 16384)),
        "rms_norm": ((4096, 4096),),
        "batch_norm": ((100352, 256), (6272, 1024)),
    }
    on_gpu = jax.default_backend() == "gpu"
    for op, op_shapes in cases.items():
        for shape in op_shapes:
            for dtype in ("float32", "bfloat16"):
                key = jax.random.split(jax.random.key(0), 2)
                x = (0.5 + jax.random.normal(key[0], shape)).astype(dtype)
                dy = jax.random.normal(key[1], shape).astype(dtype)
                c = shape[-1]
                s, b = 1 + 0.1 * jnp.cos(jnp.arange(c, dtype=F32)), 0.1 * jnp.sin(jnp.arange(c, dtype=F32))
                fwd = _gpu_candidates(op)
                if op == "rms_norm" or not on_gpu:
                    fwd.pop("pallas", None) if not on_gpu else None
                reference = np.asarray(
                    fwd["two-pass (autodiff)" if op != "rms_norm" else "rms (autodiff)"](
                        *(jnp.asarray(a, F32) for a in (x, s, b))
                    )[0],
                    np.float64,
                )
                checked = _check(fwd, (x, s, b), reference, 2e-2 if dtype == "bfloat16" else 1e-4)
                fwd["copy"] = lambda x, s, b: (x + 0,)
                results = _time(fwd, (x, s, b), repeats)
                _report(f"{op} fwd {shape} {dtype}", results, checked)
                results = _time(_with_grad(fwd), (x, s, b, dy), repeats)
                _report(f"{op} fwd+bwd {shape} {dtype}", results, {})


STUDIES = {"columns": study_columns, "convert": study_convert, "blocks": study_blocks, "gpu": study_gpu}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=sorted(STUDIES), default=list(STUDIES))
    parser.add_argument("--repeats", type=int, default=30, help="timed rounds (default 30)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, 2 rounds: checks that it runs")
    args = parser.parse_args(argv)
    print(f"JAX {jax.__version__} on {jax.devices()[0].platform}; medians of {args.repeats} interleaved rounds")
    for name in args.only:
        # The candidates broadcast (C,) statistics against (M, C) as NumPy does, also where the caller (the test
        # suite) makes JAX raise on implicit rank promotion.
        with jax.numpy_rank_promotion("allow"):
            if args.smoke:
                small = {"blocks": ((8, 128),), "gpu": {"layer_norm": ((64, 16),), "batch_norm": ((64, 16),)}}
                STUDIES[name](2, shapes=small.get(name, ((64, 16),)))
            else:
                STUDIES[name](args.repeats)


if __name__ == "__main__":
    main(sys.argv[1:])
