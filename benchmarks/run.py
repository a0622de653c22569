"""Speed and memory of jaxnorm's LayerNorm, RMSNorm, BatchNorm and GroupNorm against its peers, in one process.

Run from the repository root (CPU or GPU, unchanged; the JAX device is ``jax.devices()[0]``)::

    python benchmarks/run.py --quick      # scaled-down shapes, a few minutes at most on a 2-core CPU
    python benchmarks/run.py              # full mode (--full): the issue's shapes, 20 timed runs
    python benchmarks/run.py --smoke      # tiny shapes, 3 runs: checks that everything runs (the test)

Cases (``op x mode x shape x dtype``):

- ``layer_norm``: LayerNorm over the last axis of ``(M, N)``; full: M=4096, N in {512, 1024, 4096, 16384};
  quick: M=1024, N in {512, 1024, 4096, 16384}.
- ``batch_norm``: BatchNorm in training (batch statistics, NHWC, ``axis=-1``, moving statistics updated and
  returned) at ResNet-50 shapes: full: batch 32, ``(56,56,256) (28,28,512) (14,14,1024) (7,7,2048)``;
  quick: the same at batch 8.
- ``group_norm``: GroupNorm with 32 groups (NHWC, ``axis=-1``) at the BatchNorm shapes but 7x7x2048: full
  batch 32, quick batch 8.
- mode ``fwd``: the forward pass (``y``; BatchNorm also the new moving mean and variance). Mode ``fwd+bwd``:
  the gradient of ``sum(y * dy)`` with respect to ``x``, ``scale`` and ``bias`` (``dy`` a fixed random array
  of ``x``'s shape and dtype); BatchNorm also returns the new moving statistics.
- dtypes float32 and bfloat16 (parameters and statistics float32; output in the input's dtype everywhere).

Implementations, each jit-compiled (``jax.jit(f).lower(*args).compile()``) and fed the same arrays:
``jaxnorm`` (public API only: ``jaxnorm.layer_norm``, ``jaxnorm.BatchNorm(...).apply``), ``flax_linen``,
``flax_nnx`` (split/merge into a pure function), ``naive_jnp`` (a textbook jnp version), ``keras``
(Keras 3 layers on the JAX backend through ``stateless_call``), ``equinox`` and ``haiku`` (LayerNorm only, when
installed), ``torch_cpu`` (``torch.nn.functional.layer_norm`` / ``rms_norm`` / ``batch_norm`` /
``group_norm``, eager, on the CPU, with ``torch.set_num_threads`` = the CPUs this process may use;
BatchNorm and GroupNorm in ``channels_last``, the NHWC layout), ``torch_cuda`` (the same on the GPU, when JAX
and torch both run on a CUDA GPU),
and ``copy``: the same bytes moved by one trivial XLA kernel (``x + 0``, read ``x`` and write ``y``, for
``fwd``; ``x + dy``, read ``x`` and ``dy`` and write one array, for ``fwd+bwd``). Epsilon is 1e-5 and momentum
0.9 (weight of the old value) for all. Each peer's outputs are checked once per case against jaxnorm's (relative
max error, loose tolerance); a peer that does not match is reported and not timed.

Timing: compile, one checked run, then per implementation 2 warm-up runs and ``--repeats`` timed runs (one
implementation after the other: interleaving would hand the cores back and forth between XLA's and PyTorch's
thread pools), each timed with ``time.perf_counter`` around the call and ``jax.block_until_ready``. On a GPU a
timed run is as many back-to-back calls as make about 2 ms (at most 100), waited for once, divided by their
number, so that small kernels are not timed as their dispatch. Reported: median ms; ``x_jaxnorm`` = time /
jaxnorm's time (> 1: jaxnorm is faster); ``GB/s`` = the bytes the op must move at least / time (``fwd``:
read x + write y; ``fwd+bwd``: read x + read dy + write dx); ``%copy`` = that bandwidth as a percentage of the
copy kernel's; ``temp MiB`` = ``compiled.memory_analysis().temp_size_in_bytes`` (XLA's scratch memory) and its
ratio to flax.linen's.

Writes ``<out>/results_<mode>.json`` (device, versions, date, settings, every figure, a summary against the
issue's targets) and ``<out>/ratios_<mode>.png`` (speed-up over flax.linen per case); ``--out`` defaults to
``benchmarks/out``. ``main(argv)`` returns the dict written to the JSON file.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import hashlib
import importlib.util
import json
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

EPSILON = 1e-5
MOMENTUM = 0.9  # weight of the old moving value (Keras/Flax convention); PyTorch's momentum is 1 - this
WARMUP = 2
SAMPLE_S, MAX_CALLS = 2e-3, 100  # accelerators only: back-to-back calls per timed sample (see run_case)
DEFAULT_OUT = Path(__file__).resolve().parent / "out"

SHAPES = {
    "full": {
        "layer_norm": [(4096, n) for n in (512, 1024, 4096, 16384)],
        "rms_norm": [(4096, n) for n in (512, 1024, 4096, 16384)],
        "batch_norm": [(32, 56, 56, 256), (32, 28, 28, 512), (32, 14, 14, 1024), (32, 7, 7, 2048)],
        "group_norm": [(32, 56, 56, 256), (32, 28, 28, 512), (32, 14, 14, 1024)],
    },
    "quick": {
        "layer_norm": [(1024, n) for n in (512, 1024, 4096, 16384)],
        "rms_norm": [(1024, n) for n in (512, 1024, 4096, 16384)],
        "batch_norm": [(8, 56, 56, 256), (8, 28, 28, 512), (8, 14, 14, 1024), (8, 7, 7, 2048)],
        "group_norm": [(8, 56, 56, 256), (8, 28, 28, 512), (8, 14, 14, 1024)],
    },
    "smoke": {
        "layer_norm": [(16, 128)],
        "rms_norm": [(16, 128)],
        "batch_norm": [(2, 4, 4, 32)],
        "group_norm": [(2, 4, 4, 64)],
    },
}
REPEATS = {"full": 20, "quick": 10, "smoke": 3}
# Quick mode stays under 4 minutes on a 2-core CPU (issue 13): it leaves out the peers whose math another one
# already covers (flax.nnx runs flax.linen's; the textbook jnp version), which full mode times.
FULL_ONLY = ("flax_nnx", "naive_jnp")
OPS = ("layer_norm", "rms_norm", "batch_norm", "group_norm")
ROWS = ("layer_norm", "rms_norm")  # ops over the last axis with (x, scale, bias) -> y; RMSNorm ignores bias
STATELESS = (*ROWS, "group_norm")  # (x, scale, bias) -> y, no moving statistics
GROUPS = 32  # GroupNorm's groups (Wu & He's, Keras's and Flax's default), NHWC input
MODES = ("fwd", "fwd+bwd")
DTYPES = ("float32", "bfloat16")
# Relative max error (max |peer - jaxnorm| / max |jaxnorm|, per output) above which a peer is not timed.
TOLERANCE = {"float32": 2e-3, "bfloat16": 5e-2}
# Issue 13's targets (speed-ups are peer time / jaxnorm time, geometric means over a group's shapes; temp is
# jaxnorm / flax.linen; the beyond-cache ratios are per case).
TARGETS = {
    "fwd_vs_flax_linen": 1.0,
    "fwd+bwd_vs_flax_linen": 1.5,
    "layer_norm_fwd+bwd_vs_torch_cpu": 1.0,
    "layer_norm_fwd+bwd_vs_torch_cuda": 1.0,
    "rows_fwd_time_over_copy_beyond_cache": 1.3,
    "channels_fwd_time_over_copy_beyond_cache": 2.0,
    "fwd+bwd_temp_vs_flax_linen": 0.6,
}
IMPLS = (
    "jaxnorm",
    "jaxnorm_pallas",
    "flax_linen",
    "flax_nnx",
    "naive_jnp",
    "keras",
    "equinox",
    "haiku",
    "torch_cpu",
    "torch_cuda",
    "copy",
)
BASELINE = "flax_linen"


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _pallas_on_gpu() -> bool:
    from jaxnorm._src import pallas_norm

    return pallas_norm.pallas_available()


def _torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


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


# ---------------------------------------------------------------------------------------------------------
# The pure forward functions of every JAX implementation.
#   layer_norm: forward(x, scale, bias) -> y
#   batch_norm: forward(x, scale, bias, mean, var) -> (y, new_mean, new_var)
# ---------------------------------------------------------------------------------------------------------


def _full_rank(v, ndim):
    return v.reshape((1,) * (ndim - 1) + v.shape)


def _jaxnorm_forward(op, x):
    if op == "group_norm":
        return lambda x, s, b: jaxnorm.group_norm(x, s, b, num_groups=GROUPS, epsilon=EPSILON)
    if op == "rms_norm":
        return lambda x, s, b: jaxnorm.rms_norm(x, s, axis=-1, epsilon=EPSILON)
    if op == "layer_norm":
        return lambda x, s, b: jaxnorm.layer_norm(x, s, b, axis=-1, epsilon=EPSILON)
    spec = jaxnorm.BatchNorm(axis=-1, momentum=MOMENTUM, epsilon=EPSILON)

    def forward(x, s, b, m, v):
        y, state = spec.apply({"scale": s, "bias": b}, {"mean": m, "var": v}, x, training=True)
        return y, state["mean"], state["var"]

    return forward


def _jaxnorm_pallas_forward(op, x):  # GPU only (interpret mode on CPU is a test aid, not timed)
    if op == "rms_norm":
        return lambda x, s, b: jaxnorm.rms_norm(x, s, axis=-1, epsilon=EPSILON, implementation="pallas")
    if op != "layer_norm":
        raise NotImplementedError("the Pallas kernels cover LayerNorm/RMSNorm rows, not BatchNorm")
    return lambda x, s, b: jaxnorm.layer_norm(x, s, b, axis=-1, epsilon=EPSILON, implementation="pallas")


def _naive_forward(op, x):
    def normalize(x, s, b, axes):
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=axes, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=axes, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + EPSILON) * _full_rank(s, x.ndim) + _full_rank(b, x.ndim)
        return y.astype(x.dtype), mean, var

    if op == "rms_norm":

        def rms(x, s, b):
            x32 = x.astype(jnp.float32)
            ms = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
            return (x32 * jax.lax.rsqrt(ms + EPSILON) * _full_rank(s, x.ndim)).astype(x.dtype)

        return rms
    if op == "layer_norm":
        return lambda x, s, b: normalize(x, s, b, (x.ndim - 1,))[0]
    if op == "group_norm":

        def group(x, s, b):
            g = x.reshape(x.shape[:-1] + (GROUPS, x.shape[-1] // GROUPS)).astype(jnp.float32)
            axes = tuple(range(1, x.ndim - 1)) + (x.ndim,)
            mean = jnp.mean(g, axis=axes, keepdims=True)
            var = jnp.mean(jnp.square(g - mean), axis=axes, keepdims=True)
            y = ((g - mean) * jax.lax.rsqrt(var + EPSILON)).reshape(x.shape)
            return (y * _full_rank(s, x.ndim) + _full_rank(b, x.ndim)).astype(x.dtype)

        return group

    def forward(x, s, b, m, v):
        y, mean, var = normalize(x, s, b, tuple(range(x.ndim - 1)))
        return (
            y,
            MOMENTUM * m + (1 - MOMENTUM) * mean.reshape(m.shape),
            MOMENTUM * v + (1 - MOMENTUM) * var.reshape(v.shape),
        )

    return forward


def _flax_linen_forward(op, x):
    from flax import linen as nn

    if op == "group_norm":
        gn = nn.GroupNorm(num_groups=GROUPS, epsilon=EPSILON, dtype=x.dtype)
        return lambda x, s, b: gn.apply({"params": {"scale": s, "bias": b}}, x)
    if op == "rms_norm":
        rms = nn.RMSNorm(epsilon=EPSILON, dtype=x.dtype)
        return lambda x, s, b: rms.apply({"params": {"scale": s}}, x)
    if op == "layer_norm":
        ln = nn.LayerNorm(epsilon=EPSILON, dtype=x.dtype)  # dtype: bf16 in, bf16 out, like the others
        return lambda x, s, b: ln.apply({"params": {"scale": s, "bias": b}}, x)
    bn = nn.BatchNorm(use_running_average=False, axis=-1, momentum=MOMENTUM, epsilon=EPSILON, dtype=x.dtype)

    def forward(x, s, b, m, v):
        variables = {"params": {"scale": s, "bias": b}, "batch_stats": {"mean": m, "var": v}}
        y, updates = bn.apply(variables, x, mutable=["batch_stats"])
        return y, updates["batch_stats"]["mean"], updates["batch_stats"]["var"]

    return forward


def _with_leaves(tree, by_name):
    """``tree`` (an nnx.State) with each leaf replaced by ``by_name[<last key of its path>]``."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(tree)
    names = []
    for path, _ in paths:
        keys = [getattr(k, "key", getattr(k, "name", None)) for k in path]
        names.append(next(k for k in reversed(keys) if k in by_name))
    return jax.tree_util.tree_unflatten(treedef, [by_name[n] for n in names])


def _flax_nnx_forward(op, x):
    from flax import nnx

    features = x.shape[-1]
    if op == "group_norm":
        gn = nnx.GroupNorm(features, num_groups=GROUPS, epsilon=EPSILON, dtype=x.dtype, rngs=nnx.Rngs(0))
        graphdef, params = nnx.split(gn)
        return lambda x, s, b: nnx.merge(graphdef, _with_leaves(params, {"scale": s, "bias": b}))(x)
    if op == "rms_norm":
        graphdef, params = nnx.split(nnx.RMSNorm(features, epsilon=EPSILON, dtype=x.dtype, rngs=nnx.Rngs(0)))
        return lambda x, s, b: nnx.merge(graphdef, _with_leaves(params, {"scale": s}))(x)
    if op == "layer_norm":
        model = nnx.LayerNorm(features, epsilon=EPSILON, dtype=x.dtype, rngs=nnx.Rngs(0))
        graphdef, params = nnx.split(model)

        def forward(x, s, b):
            return nnx.merge(graphdef, _with_leaves(params, {"scale": s, "bias": b}))(x)

        return forward
    model = nnx.BatchNorm(
        features, use_running_average=False, momentum=MOMENTUM, epsilon=EPSILON, dtype=x.dtype, rngs=nnx.Rngs(0)
    )
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)

    def forward(x, s, b, m, v):
        module = nnx.merge(
            graphdef, _with_leaves(params, {"scale": s, "bias": b}), _with_leaves(stats, {"mean": m, "var": v})
        )
        y = module(x)
        _, _, new_stats = nnx.split(module, nnx.Param, nnx.BatchStat)
        return y, jax.tree.leaves(new_stats["mean"])[0], jax.tree.leaves(new_stats["var"])[0]

    return forward


def _keras_forward(op, x):
    import keras

    if keras.backend.backend() != "jax":
        raise RuntimeError(f"KERAS_BACKEND is {keras.backend.backend()!r}, not 'jax'")
    policy = "mixed_bfloat16" if x.dtype == jnp.bfloat16 else "float32"  # float32 variables, compute in x's dtype
    if op == "group_norm":
        layer = keras.layers.GroupNormalization(groups=GROUPS, axis=-1, epsilon=EPSILON, dtype=policy)
        layer.build(x.shape)
        return lambda x, s, b: layer.stateless_call([s, b], [], x)[0]
    if op == "rms_norm":
        rms = keras.layers.RMSNormalization(axis=-1, epsilon=EPSILON, dtype=policy)
        rms.build(x.shape)
        return lambda x, s, b: rms.stateless_call([s], [], x)[0]
    if op == "layer_norm":
        layer = keras.layers.LayerNormalization(axis=-1, epsilon=EPSILON, dtype=policy)
        layer.build(x.shape)
        return lambda x, s, b: layer.stateless_call([s, b], [], x)[0]
    layer = keras.layers.BatchNormalization(axis=-1, momentum=MOMENTUM, epsilon=EPSILON, dtype=policy)
    layer.build(x.shape)

    def forward(x, s, b, m, v):
        y, (mean, var) = layer.stateless_call([s, b], [m, v], x, training=True)
        return y, mean, var

    return forward


def _equinox_forward(op, x):  # only when equinox is installed
    import equinox as eqx

    if op != "layer_norm":
        raise NotImplementedError(f"{op} not benchmarked for equinox (LayerNorm only)")
    ln = eqx.nn.LayerNorm(x.shape[-1], eps=EPSILON)

    def forward(x, s, b):
        module = eqx.tree_at(lambda m: (m.weight, m.bias), ln, (s, b))
        return jax.vmap(module)(x).astype(x.dtype)

    return forward


def _haiku_forward(op, x):  # only when haiku is installed; LayerNorm only
    import haiku as hk

    if op != "layer_norm":
        raise NotImplementedError(f"{op} not benchmarked for haiku (LayerNorm only)")
    ln = hk.without_apply_rng(
        hk.transform(lambda x: hk.LayerNorm(axis=-1, create_scale=True, create_offset=True, eps=EPSILON)(x))
    )
    return lambda x, s, b: ln.apply({"layer_norm": {"scale": s, "offset": b}}, x).astype(x.dtype)


JAX_FORWARDS = {
    "jaxnorm": (None, _jaxnorm_forward),
    "jaxnorm_pallas": (None, _jaxnorm_pallas_forward),
    "flax_linen": ("flax", _flax_linen_forward),
    "flax_nnx": ("flax", _flax_nnx_forward),
    "naive_jnp": (None, _naive_forward),
    "keras": ("keras", _keras_forward),
    "equinox": ("equinox", _equinox_forward),
    "haiku": ("haiku", _haiku_forward),
}


def _with_backward(forward, op):
    """(x, dy, scale, bias[, mean, var]) -> (dx, dscale, dbias[, new_mean, new_var]): grad of sum(y * dy)."""

    def loss(x, s, b, dy, *state):
        out = forward(x, s, b, *state)
        y, aux = (out, ()) if op in STATELESS else (out[0], tuple(out[1:]))
        return jnp.sum(y.astype(jnp.float32) * dy.astype(jnp.float32)), aux

    def fwd_bwd(x, dy, s, b, *state):
        grads, aux = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(x, s, b, dy, *state)
        return (*grads, *aux)

    return fwd_bwd


# ---------------------------------------------------------------------------------------------------------
# Runners: a callable that does one full run (blocking) and its outputs as float32 NumPy arrays.
# ---------------------------------------------------------------------------------------------------------


class JaxRunner:
    def __init__(self, fn, args):
        start = time.perf_counter()
        lowered = jax.jit(fn).lower(*args)
        self.compiled = lowered.compile()
        self.compile_s = time.perf_counter() - start
        self.args = args
        self.temp_bytes = None
        try:
            analysis = self.compiled.memory_analysis()
            if analysis is not None and getattr(analysis, "temp_size_in_bytes", None) is not None:
                self.temp_bytes = int(analysis.temp_size_in_bytes)
        except Exception:  # not every backend implements it
            self.temp_bytes = None

    def __call__(self, calls=1):
        for _ in range(calls):  # dispatched back to back; only the last one is waited for
            out = self.compiled(*self.args)
        return jax.block_until_ready(out)

    def outputs(self):
        out = self()
        out = out if isinstance(out, tuple | list) else (out,)
        return [np.asarray(o.astype(jnp.float32)) for o in out]


def _to_torch(torch, a, device="cpu"):
    """A jax array as a torch tensor of the same dtype (bfloat16 exactly, through its bits) on ``device``."""
    host = np.array(a)  # a writable host copy
    if host.dtype == jnp.bfloat16:
        return torch.from_numpy(host.view(np.uint16)).view(torch.bfloat16).to(device)
    return torch.from_numpy(host).to(device)


class TorchRunner:
    """Eager PyTorch (``torch.nn.functional``) on the CPU or a CUDA GPU, channels_last for BatchNorm."""

    compile_s = 0.0
    temp_bytes = None

    def __init__(self, op, mode, inputs, device="cpu"):
        import torch
        import torch.nn.functional as F

        self.torch, self.device = torch, device
        x, s, b = (_to_torch(torch, inputs[k], device) for k in ("x", "scale", "bias"))
        dy = _to_torch(torch, inputs["dy"], device)
        if device != "cpu" and op != "batch_norm":  # torch's CUDA layer/group/rms norm take the input's dtype
            s, b = s.to(x.dtype), b.to(x.dtype)
        backward = mode == "fwd+bwd"
        if op in ("batch_norm", "group_norm"):  # NHWC memory, NCHW sizes: torch's channels_last layout, no copy
            x, dy = x.permute(0, 3, 1, 2), dy.permute(0, 3, 1, 2)
        if op == "batch_norm":
            self.m0, self.v0 = (_to_torch(torch, inputs[k], device) for k in ("mean", "var"))
            self.mean, self.var = self.m0.clone(), self.v0.clone()
            self.n = math.prod(inputs["x"].shape[:-1])
        if backward:
            x, s, b = (t.requires_grad_(True) for t in (x, s, b))
        self.op, self.backward = op, backward

        def forward():
            if op == "layer_norm":
                return F.layer_norm(x, (x.shape[-1],), s, b, EPSILON)
            if op == "rms_norm":
                return F.rms_norm(x, (x.shape[-1],), s, EPSILON)
            if op == "group_norm":
                return F.group_norm(x, GROUPS, s, b, EPSILON)
            return F.batch_norm(x, self.mean, self.var, s, b, training=True, momentum=1 - MOMENTUM, eps=EPSILON)

        def run():
            if not backward:
                with torch.no_grad():
                    return (forward(),)
            return torch.autograd.grad(forward(), (x, s, b), dy, allow_unused=True, materialize_grads=True)

        self.run = run

    def __call__(self, calls=1):
        for _ in range(calls):
            out = self.run()
        if self.device != "cpu":
            self.torch.cuda.synchronize()
        return out

    def outputs(self):
        if self.op == "batch_norm":  # start from the same moving statistics as the others
            self.mean.copy_(self.m0)
            self.var.copy_(self.v0)
        out = [o.detach().float() for o in self.run()]
        if self.op in ("batch_norm", "group_norm"):
            out[0] = out[0].permute(0, 2, 3, 1)  # y or dx back to NHWC
        if self.op == "batch_norm":
            # torch tracks the unbiased variance: convert its update to the biased one the others track.
            new_var_unbiased = (self.var - MOMENTUM * self.v0) / (1 - MOMENTUM)
            biased = MOMENTUM * self.v0 + (1 - MOMENTUM) * new_var_unbiased * (self.n - 1) / self.n
            out += [self.mean.clone(), biased]
        return [o.contiguous().cpu().numpy() for o in out]


def _copy_fn(mode):
    if mode == "fwd":
        return lambda x: x + 0  # XLA: one copy kernel, read x, write y
    return lambda x, dy: x + dy  # read x and dy, write one array: the bytes of a fused backward


# ---------------------------------------------------------------------------------------------------------
# One case: build, check, time.
# ---------------------------------------------------------------------------------------------------------


def _inputs(op, shape, dtype, seed=0):
    return jax.block_until_ready(_make_inputs(op, tuple(shape), jnp.dtype(dtype), seed))


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _make_inputs(op, shape, dtype, seed):  # one compiled program per case, generated on the device
    keys = jax.random.split(jax.random.key(seed), 6)
    c = shape[-1]
    x = (jax.random.normal(keys[0], shape, jnp.float32) + 0.5).astype(dtype)
    dy = jax.random.normal(keys[1], shape, jnp.float32).astype(dtype)
    inputs = {
        "x": x,
        "dy": dy,
        "scale": 1.0 + 0.1 * jax.random.normal(keys[2], (c,), jnp.float32),
        "bias": 0.1 * jax.random.normal(keys[3], (c,), jnp.float32),
    }
    if op == "batch_norm":
        inputs["mean"] = 0.1 * jax.random.normal(keys[4], (c,), jnp.float32)
        inputs["var"] = 1.0 + 0.1 * jnp.abs(jax.random.normal(keys[5], (c,), jnp.float32))
    return inputs


def _args(op, mode, inputs):
    args = [inputs["x"]] + ([inputs["dy"]] if mode == "fwd+bwd" else []) + [inputs["scale"], inputs["bias"]]
    if op == "batch_norm":
        args += [inputs["mean"], inputs["var"]]
    return tuple(args)


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
        err = float(np.max(np.abs(out.astype(np.float64) - ref.astype(np.float64)))) / denom
        errors.append(err if np.isfinite(err) else math.inf)
    return errors


def _build(impl, op, mode, inputs):
    if impl in ("torch_cpu", "torch_cuda"):
        return TorchRunner(op, mode, inputs, device=impl.removeprefix("torch_"))
    if impl == "copy":
        args = (inputs["x"],) if mode == "fwd" else (inputs["x"], inputs["dy"])
        return JaxRunner(_copy_fn(mode), args)
    forward = JAX_FORWARDS[impl][1](op, inputs["x"])
    fn = forward if mode == "fwd" else _with_backward(forward, op)
    return JaxRunner(fn, _args(op, mode, inputs))


def run_case(op, mode, shape, dtype, impls, repeats, cache_bytes, on_cpu=True):
    inputs = _inputs(op, shape, jnp.dtype(dtype))
    x_bytes = inputs["x"].nbytes
    n_arrays = 2 if mode == "fwd" else 3  # fwd: read x, write y; fwd+bwd: read x, dy, write dx
    case = {
        "op": op,
        "mode": mode,
        "shape": list(shape),
        "dtype": dtype,
        "x_bytes": int(x_bytes),
        "bytes_moved": int(n_arrays * x_bytes),
        "beyond_cache": bool(2 * x_bytes > cache_bytes),  # x and y together outgrow the last-level cache
        "results": {},
    }
    runners, reference = {}, None
    for impl in impls:
        entry = case["results"].setdefault(impl, {})
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # peers' deprecation chatter is not ours to fix
                runner = _build(impl, op, mode, inputs)
                outputs = None if impl == "copy" else runner.outputs()
        except Exception as exc:  # a peer that cannot run this case is reported, not fatal
            if impl == "jaxnorm":
                raise
            entry["status"] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            continue
        if impl == "jaxnorm":
            reference, err = outputs, 0.0
        elif impl == "copy":
            err = None
        else:
            errors = _rel_errors(outputs, reference)
            err = max(errors)
            entry["rel_err_per_output"] = [e if math.isfinite(e) else None for e in errors]
        entry["max_rel_err"] = err if err is None or math.isfinite(err) else None  # None: shapes differ or inf
        if err is not None and not err <= TOLERANCE[dtype]:
            entry["status"] = f"mismatch: relative error {err:.3g} > {TOLERANCE[dtype]:g}; not timed"
            continue
        entry["status"] = "ok"
        entry["compile_s"] = runner.compile_s
        entry["temp_bytes"] = runner.temp_bytes
        runners[impl] = runner

    # Each implementation in its own block: warm-up runs, then the timed ones. (Interleaving the runs would hand
    # the cores back and forth between XLA's and PyTorch's thread pools, which then wait on each other.)
    # On an accelerator one call can take less than its dispatch: a sample there is `calls` back-to-back calls
    # (about SAMPLE_S of work, waited for once at the end), divided by `calls`.
    times = {}
    for impl, runner in runners.items():
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
        times[impl] = samples
        case["results"][impl]["calls_per_sample"] = calls

    ref_ms = statistics.median(times["jaxnorm"]) * 1e3
    copy_gbps = None
    if "copy" in times:
        copy_gbps = case["bytes_moved"] / statistics.median(times["copy"]) / 1e9
    base = case["results"].get(BASELINE, {})
    for impl, samples in times.items():
        entry = case["results"][impl]
        ms = statistics.median(samples) * 1e3
        gbps = case["bytes_moved"] / (ms * 1e-3) / 1e9
        entry.update(
            median_ms=ms,
            min_ms=min(samples) * 1e3,
            repeats=len(samples),
            ratio_to_jaxnorm=ms / ref_ms,
            gbps=gbps,
            pct_copy=None if copy_gbps is None else 100.0 * gbps / copy_gbps,
        )
    for impl in times:
        entry = case["results"][impl]
        base_ms, base_temp = base.get("median_ms"), base.get("temp_bytes")
        entry["speedup_vs_flax_linen"] = None if base_ms is None else base_ms / entry["median_ms"]
        temp = entry.get("temp_bytes")
        entry["temp_ratio_to_flax_linen"] = (
            temp / base_temp if temp is not None and base_temp else (0.0 if temp == 0 and base_temp == 0 else None)
        )
    return case


# ---------------------------------------------------------------------------------------------------------
# Reporting: table, summary against the targets, plot.
# ---------------------------------------------------------------------------------------------------------


def _fmt(value, spec, missing="-"):
    return missing if value is None else format(value, spec)


HEADER = (
    f"{'op':<10} {'mode':<7} {'shape':<18} {'dtype':<8} {'impl':<10} {'median ms':>10} {'x_jaxnorm':>9} "
    f"{'GB/s':>7} {'%copy':>6} {'temp MiB':>9} {'temp/flax':>9}  status"
)


def format_rows(case):
    rows = []
    for impl, r in case["results"].items():
        temp = r.get("temp_bytes")
        rows.append(
            f"{case['op']:<10} {case['mode']:<7} {str(tuple(case['shape'])):<18} {case['dtype']:<8} {impl:<10} "
            f"{_fmt(r.get('median_ms'), '10.3f'):>10} {_fmt(r.get('ratio_to_jaxnorm'), '9.2f'):>9} "
            f"{_fmt(r.get('gbps'), '7.1f'):>7} {_fmt(r.get('pct_copy'), '6.0f'):>6} "
            f"{_fmt(None if temp is None else temp / 2**20, '9.2f'):>9} "
            f"{_fmt(r.get('temp_ratio_to_flax_linen'), '9.2f'):>9}  {r.get('status', '')}"
        )
    return rows


def _geomean(values):
    values = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def summarize(cases):
    """Per (op, mode, dtype): geometric means of the headline ratios; and each target over the cases it covers."""
    groups = {}
    for c in cases:
        groups.setdefault((c["op"], c["mode"], c["dtype"]), []).append(c)
    by_group = []
    for (op, mode, dtype), cs in groups.items():
        row = {"op": op, "mode": mode, "dtype": dtype, "cases": len(cs)}
        for impl in IMPLS:
            if impl == "jaxnorm":
                continue
            ratios = [c["results"].get(impl, {}).get("ratio_to_jaxnorm") for c in cs]
            row[f"{impl}_over_jaxnorm_geomean"] = _geomean(ratios)
        row["jaxnorm_pct_copy_geomean"] = _geomean([c["results"]["jaxnorm"].get("pct_copy") for c in cs])
        row["jaxnorm_temp_vs_flax_linen_geomean"] = _geomean(
            [c["results"]["jaxnorm"].get("temp_ratio_to_flax_linen") for c in cs]
        )
        by_group.append(row)

    def target(name, threshold, items, better):
        """``items``: (label, value) pairs, each met when on the right side of ``threshold``."""
        values = [
            {"case": label, "value": v, "met": bool(v >= threshold if better == "higher" else v <= threshold)}
            for label, v in items
            if v is not None
        ]
        return {
            "name": name,
            "threshold": threshold,
            "better": better,
            "cases": values,
            "met_in": f"{sum(v['met'] for v in values)}/{len(values)}",
        }

    def per_group(mode, key, ops=OPS):  # one value per (op, dtype): the geometric mean over the shapes
        return [(f"{g['op']} {g['dtype']}", g.get(key)) for g in by_group if g["mode"] == mode and g["op"] in ops]

    def over_copy(c):
        copy_ms = c["results"].get("copy", {}).get("median_ms")
        ms = c["results"]["jaxnorm"].get("median_ms")
        return None if copy_ms is None or ms is None else ms / copy_ms

    def beyond(ops):
        return [
            (f"{c['op']} {'x'.join(map(str, c['shape']))} {c['dtype']}", over_copy(c))
            for c in cases
            if c["mode"] == "fwd" and c["beyond_cache"] and c["op"] in ops
        ]

    targets = [
        target(
            "fwd: flax.linen time / jaxnorm time (geomean over shapes)",
            TARGETS["fwd_vs_flax_linen"],
            per_group("fwd", "flax_linen_over_jaxnorm_geomean"),
            "higher",
        ),
        target(
            "fwd+bwd: flax.linen time / jaxnorm time (geomean over shapes)",
            TARGETS["fwd+bwd_vs_flax_linen"],
            per_group("fwd+bwd", "flax_linen_over_jaxnorm_geomean"),
            "higher",
        ),
        target(
            "layer_norm fwd+bwd: torch (CPU) time / jaxnorm time (geomean)",
            TARGETS["layer_norm_fwd+bwd_vs_torch_cpu"],
            per_group("fwd+bwd", "torch_cpu_over_jaxnorm_geomean", ("layer_norm",)),
            "higher",
        ),
        target(  # on a GPU: PyTorch on the same GPU
            "layer_norm fwd+bwd: torch (CUDA) time / jaxnorm time (geomean)",
            TARGETS["layer_norm_fwd+bwd_vs_torch_cuda"],
            per_group("fwd+bwd", "torch_cuda_over_jaxnorm_geomean", ("layer_norm",)),
            "higher",
        ),
        target(
            "fwd beyond the last-level cache, layer/rms_norm: jaxnorm time / copy time",
            TARGETS["rows_fwd_time_over_copy_beyond_cache"],
            beyond(ROWS),
            "lower",
        ),
        target(
            "fwd beyond the last-level cache, batch/group_norm: jaxnorm time / copy time",
            TARGETS["channels_fwd_time_over_copy_beyond_cache"],
            beyond(("batch_norm", "group_norm")),
            "lower",
        ),
        target(
            "fwd+bwd: jaxnorm temp bytes / flax.linen temp bytes (geomean)",
            TARGETS["fwd+bwd_temp_vs_flax_linen"],
            per_group("fwd+bwd", "jaxnorm_temp_vs_flax_linen_geomean"),
            "lower",
        ),
    ]
    return {"groups": by_group, "targets": targets}


def plot(cases, path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ops = [op for op in OPS if any(c["op"] == op for c in cases)]
    fig = Figure(figsize=(14, 4.2 * len(ops)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(ops), len(MODES), squeeze=False)
    impls = [i for i in IMPLS if i != BASELINE and any(i in c["results"] for c in cases)]
    for row, op in enumerate(ops):
        for col, mode in enumerate(MODES):
            ax = axes[row][col]
            cs = [c for c in cases if c["op"] == op and c["mode"] == mode]
            width = 0.8 / max(len(impls), 1)
            for k, impl in enumerate(impls):
                values = [c["results"].get(impl, {}).get("speedup_vs_flax_linen") or 0.0 for c in cs]
                positions = [i + (k - (len(impls) - 1) / 2) * width for i in range(len(cs))]
                ax.bar(positions, values, width, label=impl)
            ax.axhline(1.0, color="black", lw=0.8)
            ax.set_xticks(range(len(cs)))
            ax.set_xticklabels(["x".join(map(str, c["shape"])) + "\n" + c["dtype"] for c in cs], fontsize=7)
            ax.set_ylabel("flax.linen time / impl time")
            ax.set_title(f"{op} {mode} (higher = faster than flax.linen)")
            ax.set_yscale("log")
    axes[0][-1].legend(fontsize=7, ncols=2)
    fig.savefig(path, dpi=110)


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
    for name in ("flax", "keras", "torch", "equinox", "haiku", "numpy"):
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
    size.add_argument("--full", dest="mode", action="store_const", const="full", help="issue's shapes (default)")
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
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import models

        return models.main([*(["--smoke"] if args.mode == "smoke" else []), "--out", str(args.out)])
    start = time.perf_counter()
    repeats = args.repeats or REPEATS[args.mode]
    device = jax.devices()[0]
    threads = _num_threads()
    cache = _cache_bytes(device.platform)

    impls, skipped = [], {}
    for impl in IMPLS:
        module = "torch" if impl.startswith("torch_") else JAX_FORWARDS.get(impl, (None,))[0]
        if impl in args.skip:
            skipped[impl] = "--skip"
        elif module is not None and not _installed(module):
            skipped[impl] = f"{module} not installed"
        elif impl == "torch_cuda" and (device.platform != "gpu" or not _torch_cuda()):
            skipped[impl] = "JAX or torch not on a CUDA GPU"
        elif args.mode == "quick" and impl in FULL_ONLY:
            skipped[impl] = "full mode only (quick mode stays under 4 minutes)"
        elif impl == "jaxnorm_pallas" and not _pallas_on_gpu():
            skipped[impl] = "no GPU: the Pallas kernels would run in interpret mode"
        else:
            impls.append(impl)
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
    print(
        "x_jaxnorm = time / jaxnorm time (> 1: jaxnorm faster); GB/s = bytes that must move / time; "
        "%copy = GB/s / copy kernel's GB/s; temp = XLA temp bytes"
    )
    print(HEADER, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"results_{args.mode}.json"  # rewritten after each case (a cut-off run keeps them)
    png_path = args.out / f"ratios_{args.mode}.png"
    for op in args.only:
        for shape in SHAPES[args.mode][op]:
            for dtype in args.dtypes:
                for mode in args.modes:
                    case = run_case(op, mode, shape, dtype, impls, repeats, cache, device.platform == "cpu")
                    info["cases"].append(case)
                    print("\n".join(format_rows(case)), flush=True)
                    json_path.write_text(json.dumps(info, indent=1, allow_nan=False, default=float) + "\n")
    info["summary"] = summarize(info["cases"])
    info["wall_s"] = time.perf_counter() - start
    info["load_average_end"] = _load_average()  # 1/5/15-minute load: well above 0 means other work shared the CPU

    print("\nsummary (geometric means over shapes of time / jaxnorm time):")
    for g in info["summary"]["groups"]:
        parts = [
            f"{impl}={_fmt(g.get(f'{impl}_over_jaxnorm_geomean'), '.2f')}"
            for impl in IMPLS
            if impl != "jaxnorm" and g.get(f"{impl}_over_jaxnorm_geomean") is not None
        ]
        print(
            f"  {g['op']:<10} {g['mode']:<7} {g['dtype']:<8} "
            + " ".join(parts)
            + f"  jaxnorm %copy={_fmt(g['jaxnorm_pct_copy_geomean'], '.0f')}"
            + f"  temp/flax={_fmt(g['jaxnorm_temp_vs_flax_linen_geomean'], '.2f')}"
        )
    print("targets:")
    for t in info["summary"]["targets"]:
        sign = ">=" if t["better"] == "higher" else "<="
        values = ", ".join(f"{v['case']} {v['value']:.2f}" for v in t["cases"])
        print(f"  {t['name']} {sign} {t['threshold']}: met in {t['met_in']} [{values}]")
    if args.mode == "smoke":
        print("(smoke mode: tiny shapes that check that everything runs; its figures and targets mean nothing)")

    json_path.write_text(json.dumps(info, indent=1, allow_nan=False, default=float) + "\n")
    plot(info["cases"], png_path)
    print(f"wrote {json_path} and {png_path} ({info['wall_s']:.1f} s)")
    return info


if __name__ == "__main__":
    main(sys.argv[1:])
