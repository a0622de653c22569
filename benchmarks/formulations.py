"""Formulation study: what LayerNorm's forward costs written several ways, and what each way gets right.

LayerNorm over the rows of ``(M, N)`` (the last axis; epsilon 1e-5; ``scale`` and ``bias`` float32, the output
in ``x``'s dtype), at ``(1024, 512) (4096, 1024) (2048, 2048) (1024, 4096)``, float32 and bfloat16. Candidates:

- ``flax_linen``: ``flax.linen.LayerNorm(epsilon=1e-5, dtype=x.dtype)`` (its default ``use_fast_variance``:
  one pass, ``E[x^2] - E[x]^2``);
- ``jaxnorm``: ``jaxnorm.layer_norm(x, scale, bias, epsilon=1e-5)``, the default kernel;
- ``jaxnorm_extreme``: the same with ``extreme_range=True`` (exact at any finite float32 magnitude, at the cost
  of one more pass over ``x``: the figure this study exists for);
- ``one_pass_jnp``: plain ``jnp``, float32 statistics ``E[x^2] - E[x]^2`` (clamped at 0), one pass;
- ``two_pass_jnp``: plain ``jnp``, the mean, then the mean of squared deviations from it;
- ``copy``: ``x + 0``, one XLA kernel that reads ``x`` and writes ``y``: the memory-bandwidth floor.

Only jaxnorm's public API is used. Each candidate is compiled once (``jax.jit(f).lower(*args).compile()``),
run twice to warm up, then timed in ``--repeats`` rounds (default 21), every candidate once per round, the
order rotated from round to round (interleaved: the machine's drift hits every candidate alike); medians in
ms. ``/flax`` and ``/copy``: median time / flax.linen's / the copy kernel's (< 1: faster). On an accelerator a
timed sample is as many back-to-back calls as make about 2 ms (at most 100), divided by their number.

Accuracy: each candidate's output against LayerNorm evaluated by NumPy in float64 on the same values, ``max |y
- y64|`` (y is of order 1). float32 blocks time and check offset data, ``x = 1e4 + N(0, 1)``, where a
formulation that cancels (``E[x^2] - E[x]^2`` in float32: ``x^2`` near 1e8 keeps about 8 units of absolute
precision, the variance is 1) loses every digit. bfloat16 cannot hold that data (its spacing at 1e4 is 64:
every row would be constant), so bfloat16 blocks use ``x = 0.5 + N(0, 1)``, a check that each candidate
computes LayerNorm (the output's rounding to bfloat16, about 1e-2, dominates). Timing does not depend on the
values: every candidate is branch-free.

Run from the repository root (about 15 seconds on a 2-core CPU)::

    python benchmarks/formulations.py                                 # every shape, float32 and bfloat16
    python benchmarks/formulations.py --only jaxnorm jaxnorm_extreme  # some candidates (copy always runs)
    python benchmarks/formulations.py --dtypes float32 --repeats 41
    python benchmarks/formulations.py --smoke                         # tiny shapes, 3 rounds (the test)

The last lines give the cost of ``extreme_range=True``: the geometric mean over the shapes of its time /
the default's, per dtype. benchmarks/RESULTS.md cites this study's figures.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

import jaxnorm  # noqa: E402

EPSILON = 1e-5
F32 = jnp.float32
SHAPES = ((1024, 512), (4096, 1024), (2048, 2048), (1024, 4096))
SMOKE_SHAPES = ((16, 128),)
DTYPES = ("float32", "bfloat16")
WARMUP = 2
SAMPLE_S, MAX_CALLS = 2e-3, 100  # accelerators only: back-to-back calls per timed sample
OFFSET = {"float32": 1e4, "bfloat16": 0.5}  # x = OFFSET + N(0, 1); see the docstring


def _flax_linen(x):
    from flax import linen as nn

    layer = nn.LayerNorm(epsilon=EPSILON, dtype=x.dtype)
    return lambda x, s, b: layer.apply({"params": {"scale": s, "bias": b}}, x)


def _one_pass(x, s, b):
    xf = x.astype(F32)
    mean = jnp.mean(xf, -1, keepdims=True)
    var = jnp.maximum(jnp.mean(xf * xf, -1, keepdims=True) - mean * mean, 0.0)
    return ((xf - mean) * lax.rsqrt(var + EPSILON) * s[None] + b[None]).astype(x.dtype)


def _two_pass(x, s, b):
    xf = x.astype(F32)
    mean = jnp.mean(xf, -1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), -1, keepdims=True)
    return ((xf - mean) * lax.rsqrt(var + EPSILON) * s[None] + b[None]).astype(x.dtype)


# name -> make(x) -> forward(x, scale, bias); in the order they are reported.
CANDIDATES = {
    "flax_linen": _flax_linen,
    "jaxnorm": lambda x: lambda x, s, b: jaxnorm.layer_norm(x, s, b, epsilon=EPSILON),
    "jaxnorm_extreme": lambda x: lambda x, s, b: jaxnorm.layer_norm(x, s, b, epsilon=EPSILON, extreme_range=True),
    "one_pass_jnp": lambda x: _one_pass,
    "two_pass_jnp": lambda x: _two_pass,
    "copy": lambda x: lambda x, s, b: x + 0,
}


def inputs(shape, dtype, seed=0):
    """``x = OFFSET[dtype] + N(0, 1)`` in ``dtype``, ``scale`` near 1 and ``bias`` near 0 (float32)."""
    kx, ks, kb = jax.random.split(jax.random.key(seed), 3)
    x = (OFFSET[dtype] + jax.random.normal(kx, shape, F32)).astype(dtype)
    n = shape[-1]
    return x, 1 + 0.1 * jax.random.normal(ks, (n,), F32), 0.1 * jax.random.normal(kb, (n,), F32)


def reference(x, s, b):
    """LayerNorm in float64 NumPy, on the values the candidates see."""
    x64 = np.asarray(x.astype(F32), np.float64)
    mean = x64.mean(-1, keepdims=True)
    var = ((x64 - mean) ** 2).mean(-1, keepdims=True)
    return (x64 - mean) / np.sqrt(var + EPSILON) * np.asarray(s, np.float64) + np.asarray(b, np.float64)


def _calls_per_sample(compiled, args):
    if jax.default_backend() == "cpu":
        return 1
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    return max(1, min(MAX_CALLS, round(SAMPLE_S / max(time.perf_counter() - start, 1e-6))))


def study(shape, dtype, names, repeats):
    """One block: each candidate's median ms (interleaved rounds) and max |y - y64|."""
    args = inputs(shape, dtype)
    ref = reference(*args)
    compiled, errors = {}, {}
    for name in names:
        fn = CANDIDATES[name](args[0])
        compiled[name] = jax.jit(fn).lower(*args).compile()
        y = jax.block_until_ready(compiled[name](*args))  # the checked run
        if name != "copy":
            y64 = np.asarray(y.astype(F32), np.float64)
            errors[name] = float(np.max(np.abs(y64 - ref))) if np.all(np.isfinite(y64)) else math.inf
        for _ in range(WARMUP):
            jax.block_until_ready(compiled[name](*args))
    calls = {name: _calls_per_sample(c, args) for name, c in compiled.items()}
    samples = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotated: no candidate always first
            start = time.perf_counter()
            for _ in range(calls[name]):
                out = compiled[name](*args)
            jax.block_until_ready(out)
            samples[name].append((time.perf_counter() - start) / calls[name])
    return {name: 1e3 * float(np.median(samples[name])) for name in names}, errors


def _ratio(a, b):
    return "-" if a is None or b is None else f"{a / b:.2f}"


def format_block(shape, dtype, ms, errors):
    data = f"x = {OFFSET[dtype]:g} + N(0, 1)"
    lines = [
        f"LayerNorm fwd {shape} {dtype} ({data})",
        f"  {'candidate':<16} {'median ms':>10} {'/flax':>6} {'/copy':>6} {'max |y - y64|':>14}",
    ]
    for name, t in ms.items():
        err = "-" if name not in errors else f"{errors[name]:.1e}"
        lines.append(
            f"  {name:<16} {t:10.3f} {_ratio(t, ms.get('flax_linen')):>6} {_ratio(t, ms.get('copy')):>6} {err:>14}"
        )
    return lines


def _source_digest():
    """run.py's digest of jaxnorm's source: which implementation the figures are of."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import run  # benchmarks/run.py (not a package: imported by path, as its modules import each other)

    return run._jaxnorm_source_digest()


def _geomean(values):
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    names = [n for n in CANDIDATES if n != "copy"]
    parser.add_argument("--only", nargs="+", choices=names, default=names, help="candidates (copy always runs)")
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES), help="(default: both)")
    parser.add_argument("--repeats", type=int, default=21, help="timed rounds (default 21)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, 3 rounds: checks that it runs")
    args = parser.parse_args(argv)
    repeats = 3 if args.smoke else args.repeats
    if repeats < 1:
        parser.error("--repeats must be >= 1")
    chosen = [n for n in CANDIDATES if n in args.only or n == "copy"]
    device = jax.devices()[0]
    print(
        f"LayerNorm forward formulations: JAX {jax.__version__} on {device.platform} ({device.device_kind}), "
        f"jaxnorm {jaxnorm.__version__} (source {_source_digest()}); medians of {repeats} interleaved rounds\n"
        "/flax, /copy: time / flax.linen's, / the copy kernel's (< 1: faster); max |y - y64|: vs NumPy float64"
    )
    results = {}
    for shape in SMOKE_SHAPES if args.smoke else SHAPES:
        for dtype in args.dtypes:
            ms, errors = study(shape, dtype, chosen, repeats)
            results[shape, dtype] = ms, errors
            print("\n" + "\n".join(format_block(shape, dtype, ms, errors)), flush=True)
    if "jaxnorm" in chosen and "jaxnorm_extreme" in chosen:
        print("\nextreme_range=True: time / the default's (geometric mean over the shapes)")
        for dtype in args.dtypes:
            per = [ms["jaxnorm_extreme"] / ms["jaxnorm"] for (_, d), (ms, _) in results.items() if d == dtype]
            figures = ", ".join(f"{r:.2f}" for r in per)
            print(f"  {dtype:<8} {_geomean(per):.2f}  [{figures}]")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
