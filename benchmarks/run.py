"""Speed and memory of jaxnorm's LayerNorm, RMSNorm, BatchNorm and GroupNorm against its peers, in one process.

Run from the repository root (CPU or GPU, unchanged; the JAX device is ``jax.devices()[0]``)::

    python benchmarks/run.py --quick      # scaled-down + Transformer shapes, about 4.5 minutes on 2 idle cores
    python benchmarks/run.py              # full mode (--full): the full shape set, 20 timed runs
    python benchmarks/run.py --smoke      # tiny shapes, 3 runs: checks that everything runs (the test)

This file is the command line: the cases (``SHAPES``, ``DTYPES``), which implementations can run here, the
correctness check, the timing loop, the copy kernel (the memory limit) and the speed ``TARGETS``. Who implements
what, and how each implementation is built, is the table in benchmarks/peers.py (``OPS``, ``IMPLS`` and
``MODES`` come from there); the ratios, table, summary, per-cell counts, plot and JSON file are
benchmarks/report.py's.

Cases (``op x mode x shape x dtype``):

- ``layer_norm`` and ``rms_norm``: over the last axis of ``(M, N)``; full: M=4096, N in {512, 1024, 4096,
  16384}; quick: M=1024, the same N, and the shapes a Transformer layer normalizes (tokens x width):
  ``(4096, 768) (4096, 1024) (2048, 4096) (8192, 5120)``.
- ``batch_norm``: BatchNorm in training (batch statistics, NHWC, ``axis=-1``, moving statistics updated and
  returned) at ResNet-50 shapes: full: batch 32, ``(56,56,256) (28,28,512) (14,14,1024) (7,7,2048)``;
  quick: the same at batch 8.
- ``group_norm``: GroupNorm with 32 groups (NHWC, ``axis=-1``) at the BatchNorm shapes but 7x7x2048: full
  batch 32, quick batch 8.
- ``add_layer_norm`` and ``add_rms_norm``: residual add & norm over the last axis of ``(M, N)``, ``(y, h)`` with
  ``h = x + residual``; the peers run the unfused form a Flax user writes (``x + residual``, then the norm);
  full: ``(4096, 1024) (8192, 4096)``; quick: ``(4096, 1024) (2048, 4096)``. Their fwd+bwd is the gradient of
  ``sum((y + h) * dy)`` with respect to ``x``, ``residual``, ``scale`` and ``bias``; their minimum bytes count
  the residual and ``h`` too (fwd: read x and residual, write y and h), as their copy kernel moves.
- ``adaptive_norm``: DiT's AdaLN, ``LayerNorm(x) * (1 + scale) + shift`` over the last axis of ``(N, tokens, C)``
  with one ``(scale, shift)`` row per example (``(N, C)``); the peers run Flax's LayerNorm without params, then
  the modulation; full: ``(8, 1024, 1152) (32, 256, 1152)`` (DiT-XL's width); quick: ``(8, 1024, 1152)
  (8, 256, 1152)``. Its fwd+bwd differentiates ``x``, ``scale`` and ``shift``.
- ``gated_rms_norm``: Mamba-2's gated RMSNorm, ``rms_norm(x * silu(gate)) * scale`` over the last axis of ``(M, N)``
  (``norm_before_gate=False``); the peers run Flax's RMSNorm of the product; full: ``(4096, 1024) (8192, 4096)``;
  quick: ``(4096, 1024) (2048, 4096)``. Its fwd+bwd differentiates ``x``, the gate and ``scale``; its minimum
  bytes count the gate (fwd: read x and the gate, write y; fwd+bwd: read x, the gate and dy, write dx and dgate).
- ``rms_norm_fp8``: RMSNorm written as ``float8_e4m3fn`` with a scale of 16 and the amax (TransformerEngine's
  ``rmsnorm_fwd_fp8``), fwd only; the peers run Flax's RMSNorm, then the saturating cast and ``max |y|``; shapes as
  ``gated_rms_norm``'s; its minimum bytes: read x, write one byte a value (its copy kernel: ``x`` cast to fp8);
  outputs checked within one e4m3 step.
- mode ``fwd``: the forward pass (``y``; BatchNorm also the new moving mean and variance). Mode ``fwd+bwd``:
  the gradient of ``sum(y * dy)`` with respect to ``x``, ``scale`` and ``bias`` (``dy`` a fixed random array
  of ``x``'s shape and dtype); BatchNorm also returns the new moving statistics.
- dtypes float32 and bfloat16 (parameters and statistics float32; output in the input's dtype everywhere).

Implementations (peers.py), each fed the same arrays: ``jaxnorm`` (the public API only), ``jaxnorm_pallas``
(GPU only), ``flax_linen``, ``flax_nnx``, ``naive_jnp``, ``keras``, ``equinox`` and ``haiku`` (LayerNorm only,
when installed), jit-compiled (``jax.jit(f).lower(*args).compile()``); ``torch_cpu`` (eager, on the CPU, with
``torch.set_num_threads`` = the CPUs this process may use) and ``torch_cuda`` (the same on the GPU, when JAX and
torch both run on a CUDA GPU); and ``copy``: the same bytes moved by one trivial XLA kernel (``x + 0``, read
``x`` and write ``y``, for ``fwd``; ``x + dy``, read ``x`` and ``dy`` and write one array, for ``fwd+bwd``). An
implementation runs only the ops it has an entry for. Epsilon is 1e-5 and momentum 0.9 (weight of the old value)
for all. Each peer's outputs are checked once per case against jaxnorm's (relative max error, loose tolerance);
a peer that does not match is reported and not timed.

Timing: compile, one checked run, then per implementation 2 warm-up runs and ``--repeats`` timed runs: the JAX
implementations in interleaved rounds (every one once per round, in an order rotated each round, so that the
machine's drift hits them alike), PyTorch in its own block after them (interleaving it would hand the cores back
and forth between XLA's and PyTorch's thread pools), each timed with ``time.perf_counter`` around the call and
``jax.block_until_ready``. On a GPU a timed run is as many back-to-back calls as make about 2 ms (at most 100),
waited for once, divided by their number, so that small kernels are not timed as their dispatch. Reported: median
ms; ``x_jaxnorm`` = time / jaxnorm's time (> 1: jaxnorm is faster); ``GB/s`` = the bytes the op must move at least
/ time (``fwd``: read x + write y; ``fwd+bwd``: read x + read dy + write dx); ``%copy`` = that bandwidth as a
percentage of the copy kernel's; ``temp MiB`` = ``compiled.memory_analysis().temp_size_in_bytes`` (XLA's scratch
memory) and its ratio to flax.linen's.

After the summary it prints (and the JSON's ``summary`` records) the number of cells (op, mode, shape, dtype) in
which jaxnorm runs below 0.95x the fastest JAX peer that ran there (``report.JAX_PEERS``: not PyTorch, not
``copy``) with the worst such cell, and the same count against ``torch_cpu`` (informational). Cells are judged
by medians, as in the table.

Writes ``<out>/results_<mode>.json`` (device, versions, date, settings, every figure, a summary against the
targets) and ``<out>/ratios_<mode>.png`` (speed-up over flax.linen per case); ``--out`` defaults to
``benchmarks/out``. ``main(argv)`` returns the dict written to the JSON file.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.util
import math
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")  # before keras is imported (by us or anyone)
# PyTorch's OpenMP threads spin while idle by default; on a small VM (2 vCPUs here) a 2-thread call then stalls
# for a scheduler tick (~8 ms a call). Passive waiting is what a user of a shared machine gets; set it before
# torch loads its OpenMP runtime (an explicit OMP_WAIT_POLICY in the environment wins).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jaxnorm  # noqa: E402

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # benchmarks/ is not a package: its modules import each other by name
    sys.path.insert(0, str(HERE))

import peers  # noqa: E402
import report  # noqa: E402
from peers import COPY, EPSILON, IMPLS, MODES, MOMENTUM, OPS, JaxRunner  # noqa: E402
from report import HEADER, format_rows, summarize  # noqa: E402

WARMUP = 2
SAMPLE_S, MAX_CALLS = 2e-3, 100  # accelerators only: back-to-back calls per timed sample (see run_case)
DEFAULT_OUT = HERE / "out"

# (tokens, width) of the norms in Transformer layers: BERT-base/GPT-2 (768), BERT-large (1024), widths 4096 and
# 5120 (LLaMA-7B/13B-like) at a few thousand tokens; quick mode runs them besides its scaled-down grid.
TRANSFORMER_ROWS = [(4096, 768), (4096, 1024), (2048, 4096), (8192, 5120)]
SHAPES = {
    "full": {
        "layer_norm": [(4096, n) for n in (512, 1024, 4096, 16384)],
        "rms_norm": [(4096, n) for n in (512, 1024, 4096, 16384)],
        "batch_norm": [(32, 56, 56, 256), (32, 28, 28, 512), (32, 14, 14, 1024), (32, 7, 7, 2048)],
        "group_norm": [(32, 56, 56, 256), (32, 28, 28, 512), (32, 14, 14, 1024)],
        "add_layer_norm": [(4096, 1024), (8192, 4096)],
        "add_rms_norm": [(4096, 1024), (8192, 4096)],
        "adaptive_norm": [(8, 1024, 1152), (32, 256, 1152)],
        "gated_rms_norm": [(4096, 1024), (8192, 4096)],
        "rms_norm_fp8": [(4096, 1024), (8192, 4096)],
    },
    "quick": {
        "layer_norm": [*((1024, n) for n in (512, 1024, 4096, 16384)), *TRANSFORMER_ROWS],
        "rms_norm": [*((1024, n) for n in (512, 1024, 4096, 16384)), *TRANSFORMER_ROWS],
        "batch_norm": [(8, 56, 56, 256), (8, 28, 28, 512), (8, 14, 14, 1024), (8, 7, 7, 2048)],
        "group_norm": [(8, 56, 56, 256), (8, 28, 28, 512), (8, 14, 14, 1024)],
        "add_layer_norm": [(4096, 1024), (2048, 4096)],
        "add_rms_norm": [(4096, 1024), (2048, 4096)],
        "adaptive_norm": [(8, 1024, 1152), (8, 256, 1152)],
        "gated_rms_norm": [(4096, 1024), (2048, 4096)],
        "rms_norm_fp8": [(4096, 1024), (2048, 4096)],
    },
    "smoke": {
        "layer_norm": [(16, 128)],
        "rms_norm": [(16, 128)],
        "batch_norm": [(2, 4, 4, 32)],
        "group_norm": [(2, 4, 4, 64)],
        "add_layer_norm": [(16, 128)],
        "add_rms_norm": [(16, 128)],
        "adaptive_norm": [(2, 8, 128)],
        "gated_rms_norm": [(16, 128)],
        "rms_norm_fp8": [(16, 128)],
    },
}
REPEATS = {"full": 20, "quick": 10, "smoke": 3}
# Quick mode stays under 6 minutes on an idle 2-core CPU (4.3 measured): it leaves out the peers whose math
# another one already covers (flax.nnx runs flax.linen's; the textbook jnp version), which full mode times.
FULL_ONLY = ("flax_nnx", "naive_jnp")
DTYPES = ("float32", "bfloat16")
# Relative max error (max |peer - jaxnorm| / max |jaxnorm|, per output) above which a peer is not timed.
# fp8 outputs: one e4m3 step (2**-3 of a value) where a peer rounds y to 16 bits before the cast.
TOLERANCE = {"float32": 2e-3, "bfloat16": 5e-2, "float8_e4m3fn": 0.13}
# The speed targets, which report.summarize evaluates: per cell (op, mode, shape, dtype), the fastest JAX peer's
# median time / jaxnorm's (report.JAX_PEERS: not PyTorch, not copy); per op and dtype, flax.linen time / jaxnorm
# time as a geometric mean over the shapes; per forward case beyond the last-level cache, jaxnorm time / copy
# time. (PyTorch and temporary memory are reported, not targets.)
TARGETS = {
    "every_cell_vs_fastest_jax_peer": 0.95,
    "fwd_vs_flax_linen": 1.2,
    "fwd+bwd_vs_flax_linen": 1.5,
    "rows_fwd_time_over_copy_beyond_cache": 1.3,
    "channels_fwd_time_over_copy_beyond_cache": 2.0,
}


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _num_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _last_level_cache_bytes() -> int | None:
    """Size of the largest CPU cache from sysfs (Linux), else None."""
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        sizes.append(int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text))
    return max(sizes) if sizes else None


def _cache_bytes(platform_name: str) -> int:
    """The cache an array must outgrow to be 'larger than caches': CPU last level, or 64 MiB (GPU L2 and up)."""
    if platform_name == "cpu":
        return _last_level_cache_bytes() or 32 << 20
    return 64 << 20


def why_skipped(impl, size, platform_name, skip=()):
    """Why ``impl`` does not run in this session (``size``: full, quick or smoke), or None: it runs."""
    if impl in skip:
        return "--skip"
    if impl == COPY:
        return None
    peer = peers.PEERS[impl]
    if peer.requires is not None and not _installed(peer.requires):
        return f"{peer.requires} not installed"
    if size == "quick" and impl in FULL_ONLY:
        return "full mode only (keeps quick mode short)"
    return peer.unavailable(platform_name)


# ---------------------------------------------------------------------------------------------------------
# One case: build (peers.py), check against jaxnorm, time against the copy kernel.
# ---------------------------------------------------------------------------------------------------------


def _copy_fn(op, mode):
    if op in peers.QUANTIZED:  # read x, write one byte a value
        return lambda x: x.astype(jnp.float8_e4m3fn)
    if op in peers.GATED:  # read x and the gate (and dy), write y (dx and dgate)
        return (lambda x, z: x + z) if mode == "fwd" else (lambda x, z, dy: (x + z + dy, x - z + dy))
    if op in peers.RESIDUAL:  # read x and residual (and dy), write two arrays: y and h (dx and dresidual)
        if mode == "fwd":
            return lambda x, r: (x + r, x - r)
        return lambda x, r, dy: (x + r + dy, x - r + dy)
    if mode == "fwd":
        return lambda x: x + 0  # XLA: one copy kernel, read x, write y
    return lambda x, dy: x + dy  # read x and dy, write one array: the bytes of a fused backward


def _build(impl, op, mode, inputs):
    if impl == COPY:
        lead = tuple(inputs[k] for k in peers.second_inputs(op))
        return JaxRunner(_copy_fn(op, mode), lead + (() if mode == "fwd" else (inputs["dy"],)))
    return peers.TABLE[op][impl](op, mode, inputs)


def _rel_errors(outputs, reference):
    """Per output: max |out - ref| / max |ref| (inf when the shapes or the number of outputs differ)."""
    if len(outputs) != len(reference):
        return [math.inf]
    errors = []
    for out, ref in zip(outputs, reference, strict=True):
        if out.shape != ref.shape:
            errors.append(math.inf)
            continue
        denom = max(float(np.max(np.abs(ref))), 1e-6)
        # In float32 when both are (what runners return): a float64 copy of a 160 MiB output costs seconds.
        common = np.result_type(out.dtype, ref.dtype, np.float32)
        err = float(np.max(np.abs(out.astype(common, copy=False) - ref.astype(common, copy=False)))) / denom
        errors.append(err if np.isfinite(err) else math.inf)
    return errors


def _time(runner, repeats, on_cpu):
    """Per-call seconds of ``repeats`` timed samples after the warm-up, and the calls per sample."""
    for _ in range(WARMUP):
        runner()
    calls = 1
    if not on_cpu:
        start = time.perf_counter()
        runner()
        calls = max(1, min(MAX_CALLS, round(SAMPLE_S / max(time.perf_counter() - start, 1e-6))))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        runner(calls)
        samples.append((time.perf_counter() - start) / calls)
    return samples, calls


def _time_interleaved(runners, repeats, on_cpu):
    """As :func:`_time` for several runners at once: warm-ups, then ``repeats`` rounds in each of which every
    runner takes one sample, in an order rotated by one each round. Returns (samples, calls) per runner."""
    calls = {}
    for impl, runner in runners.items():
        for _ in range(WARMUP):
            runner()
        calls[impl] = 1
        if not on_cpu:
            start = time.perf_counter()
            runner()
            calls[impl] = max(1, min(MAX_CALLS, round(SAMPLE_S / max(time.perf_counter() - start, 1e-6))))
    order = list(runners)
    samples = {impl: [] for impl in order}
    for r in range(repeats):
        for impl in order[r % len(order):] + order[: r % len(order)]:
            start = time.perf_counter()
            runners[impl](calls[impl])
            samples[impl].append((time.perf_counter() - start) / calls[impl])
    return samples, calls


def run_case(op, mode, shape, dtype, impls, repeats, cache_bytes, on_cpu=True):
    """One case: every implementation in ``impls`` that implements ``op`` (peers.TABLE; ``copy`` always),
    checked against jaxnorm's outputs, then timed; the case's dict with each one's figures."""
    inputs = peers.make_inputs(op, shape, dtype)
    x_bytes = inputs["x"].nbytes
    n_arrays = 2 if mode == "fwd" else 3  # fwd: read x, write y; fwd+bwd: read x, dy, write dx
    if op in peers.RESIDUAL:
        n_arrays += 2  # read the residual too, write h too (fwd+bwd: read the residual, write dresidual)
    if op in peers.GATED:
        n_arrays += 1 if mode == "fwd" else 2  # read the gate too (fwd+bwd: and write dgate)
    bytes_moved = n_arrays * x_bytes
    if op in peers.QUANTIZED:  # read x, write q (one byte a value)
        bytes_moved = x_bytes + inputs["x"].size
    case = {
        "op": op,
        "mode": mode,
        "shape": list(shape),
        "dtype": dtype,
        "x_bytes": int(x_bytes),
        "bytes_moved": int(bytes_moved),
        "beyond_cache": bool(2 * x_bytes > cache_bytes),  # x and y together outgrow the last-level cache
        "results": {},
    }
    runners, reference = {}, None
    for impl in (i for i in impls if i == COPY or i in peers.TABLE[op]):
        entry = case["results"].setdefault(impl, {})
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # peers' deprecation chatter is not ours to fix
                runner = _build(impl, op, mode, inputs)
                outputs = None if impl == COPY else runner.outputs()
        except Exception as exc:  # a peer that cannot run this case is reported, not fatal
            if impl == "jaxnorm":
                raise
            entry["status"] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            continue
        if impl == "jaxnorm":
            reference, err = outputs, 0.0
        elif impl == COPY:
            err = None
        else:
            errors = _rel_errors(outputs, reference)
            err = max(errors)
            entry["rel_err_per_output"] = [e if math.isfinite(e) else None for e in errors]
        entry["max_rel_err"] = err if err is None or math.isfinite(err) else None  # None: shapes differ or inf
        tolerance = TOLERANCE["float8_e4m3fn"] if op in peers.QUANTIZED else TOLERANCE[dtype]
        if err is not None and not err <= tolerance:
            entry["status"] = f"mismatch: relative error {err:.3g} > {tolerance:g}; not timed"
            continue
        entry["status"] = "ok"
        entry["compile_s"] = runner.compile_s
        entry["temp_bytes"] = runner.temp_bytes
        runners[impl] = runner

    # The JAX implementations (jaxnorm, its peers, copy) run in interleaved rounds, each round in a rotated
    # order, so that a drift of the machine (another process, the host of a VM) hits them alike; the medians
    # compare like with like. PyTorch runs in its own block after them: interleaving it would hand the cores
    # back and forth between XLA's and PyTorch's thread pools, which then wait on each other.
    # On an accelerator one call can take less than its dispatch: a sample there is `calls` back-to-back calls
    # (about SAMPLE_S of work, waited for once at the end), divided by `calls`.
    jax_runners = {k: r for k, r in runners.items() if not k.startswith("torch")}
    times, calls = _time_interleaved(jax_runners, repeats, on_cpu)
    for impl, runner in runners.items():
        if impl not in jax_runners:
            times[impl], calls[impl] = _time(runner, repeats, on_cpu)
    for impl, n in calls.items():
        case["results"][impl]["calls_per_sample"] = n
    for impl, samples in times.items():
        case["results"][impl].update(
            median_ms=statistics.median(samples) * 1e3, min_ms=min(samples) * 1e3, repeats=len(samples)
        )
    return report.add_ratios(case)


# ---------------------------------------------------------------------------------------------------------


def _jaxnorm_source_digest():
    """sha256 over jaxnorm's *.py files (path and bytes): which implementation the figures are of."""
    root = Path(jaxnorm.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _load_average():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _versions():
    versions = {"python": platform.python_version(), "jaxnorm": jaxnorm.__version__, "jax": jax.__version__}
    try:
        import jaxlib

        versions["jaxlib"] = jaxlib.__version__
    except ImportError:
        versions["jaxlib"] = None
    modules = dict.fromkeys(p.requires for p in peers.PEERS.values() if p.requires)  # the peers', in order
    for name in (*modules, "numpy"):
        if not _installed(name):
            versions[name] = None
            continue
        module = __import__(name)
        versions[name] = getattr(module, "__version__", None)
    return versions


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--full", dest="mode", action="store_const", const="full", help="the full shape set (default)")
    size.add_argument("--quick", dest="mode", action="store_const", const="quick", help="scaled-down shapes")
    size.add_argument("--smoke", dest="mode", action="store_const", const="smoke", help="tiny shapes, for tests")
    parser.set_defaults(mode="full")
    parser.add_argument("--only", choices=OPS, nargs="+", default=list(OPS), help="ops to run (default: all)")
    parser.add_argument("--dtypes", choices=DTYPES, nargs="+", default=list(DTYPES), help="(default: both)")
    parser.add_argument("--modes", choices=MODES, nargs="+", default=list(MODES), help="(default: both)")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed runs per implementation (full 20, quick 10, smoke 3)"
    )
    parser.add_argument(
        "--skip", choices=[i for i in IMPLS if i != "jaxnorm"], nargs="+", default=[], help="peers not to run"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    parser.add_argument(
        "--models", action="store_true", help="run the model-level benchmark (benchmarks/models.py) instead"
    )
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.models:  # the whole-model step with Flax's norm layers, jaxnorm's drop-ins and none
        import models

        return models.main([*(["--smoke"] if args.mode == "smoke" else []), "--out", str(args.out)])
    start = time.perf_counter()
    repeats = args.repeats or REPEATS[args.mode]
    device = jax.devices()[0]
    threads = _num_threads()
    cache = _cache_bytes(device.platform)

    impls, skipped = [], {}
    for impl in IMPLS:
        why = why_skipped(impl, args.mode, device.platform, args.skip)
        if why is None:
            impls.append(impl)
        else:
            skipped[impl] = why
    if "torch_cpu" in impls:
        import torch

        torch.set_num_threads(threads)

    info = {
        "mode": args.mode,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
        "device": {
            "platform": device.platform,
            "device_kind": device.device_kind,
            "jax_device_count": jax.device_count(),
            "cpu_threads": threads,
            "machine": platform.machine(),
            "processor": platform.processor() or None,
            "cache_bytes_for_beyond_cache": cache,
            "torch_device": "cpu" + (" and cuda" if "torch_cuda" in impls else ""),
        },
        "versions": _versions(),
        "jaxnorm_source_sha256": _jaxnorm_source_digest(),
        "load_average_start": _load_average(),
        "settings": {
            "epsilon": EPSILON,
            "momentum": MOMENTUM,
            "warmup_runs": WARMUP,
            "repeats": repeats,
            "tolerance": TOLERANCE,
            "torch_num_threads": threads if "torch_cpu" in impls else None,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "bytes_model": {"fwd": "read x + write y (2 arrays)", "fwd+bwd": "read x + read dy + write dx (3)"},
            "copy_kernel": {"fwd": "x + 0 (one XLA copy)", "fwd+bwd": "x + dy"},
        },
        "ops": args.only,
        "modes": args.modes,
        "dtypes": args.dtypes,
        "shapes": {op: [list(s) for s in SHAPES[args.mode][op]] for op in args.only},
        "implementations": impls,
        "skipped": skipped,
        "targets": TARGETS,
        "cases": [],
    }
    print(
        f"jaxnorm benchmarks ({args.mode}): JAX on {device.platform} ({device.device_kind}), "
        f"jax {info['versions']['jax']}, {repeats} timed runs, median; torch eager on the CPU, "
        f"{threads} threads"
        + ("" if device.platform == "cpu" else " (not comparable with the JAX device)")
        + ("; torch_cuda: eager on the GPU" if "torch_cuda" in impls else "")
    )
    if skipped:
        print("skipped: " + ", ".join(f"{k} ({v})" for k, v in skipped.items()))
    print(report.LEGEND)
    print(HEADER, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"results_{args.mode}.json"  # rewritten after each case (a cut-off run keeps them)
    png_path = args.out / f"ratios_{args.mode}.png"
    for op in args.only:
        for shape in SHAPES[args.mode][op]:
            for dtype in args.dtypes:
                for mode in (m for m in args.modes if m in peers.modes_of(op)):
                    case = run_case(op, mode, shape, dtype, impls, repeats, cache, device.platform == "cpu")
                    info["cases"].append(case)
                    print("\n".join(format_rows(case)), flush=True)
                    report.write_json(info, json_path)
    info["summary"] = summarize(info["cases"], TARGETS)
    info["wall_s"] = time.perf_counter() - start
    info["load_average_end"] = _load_average()  # 1/5/15-minute load: well above 0 means other work shared the CPU

    print("\n".join(report.format_summary(info["summary"])))
    print("\n".join(report.format_cells(info["summary"])))
    if args.mode == "smoke":
        print("(smoke mode: tiny shapes that check that everything runs; its figures and targets mean nothing)")

    report.write_json(info, json_path)
    report.plot(info["cases"], png_path)
    print(f"wrote {json_path} and {png_path} ({info['wall_s']:.1f} s)")
    return info


if __name__ == "__main__":
    main(sys.argv[1:])
