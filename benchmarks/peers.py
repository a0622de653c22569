"""Who implements what: for each op that benchmarks/run.py times, the implementations of it and how each is built.

``TABLE[op][impl]`` is a builder, ``build(op, mode, inputs) -> runner``: ``inputs`` the case's arrays
(``make_inputs``), ``mode`` one of ``MODES``; ``runner()`` does one full run (blocking; ``runner(calls)`` that
many back to back, waited for once), ``runner.outputs()`` returns its outputs as float32 NumPy arrays (the
correctness check), ``runner.compile_s`` and ``runner.temp_bytes`` (XLA's scratch memory, None for PyTorch).
An implementation absent from an op's mapping does not implement that op and is not run for it. ``PEERS`` says
what each implementation needs (a module, a GPU) and orders them; jaxnorm comes first: the others are checked
against its outputs.

Adding a peer is one ``PEERS`` line and one entry in the mapping of each op it implements; adding an op is one
``TABLE`` entry (and its shapes in run.py's ``SHAPES``, which a test checks; its name in ``STATEFUL`` if it keeps
moving statistics, in ``ROWS`` or ``CHANNELS`` for the targets and PyTorch's layout). The adapters keep entries
short:

- ``jax_fn(forward)``: a pure JAX forward with the op's signature (below), jitted as is for ``fwd`` and through
  ``with_backward`` for ``fwd+bwd``; ``jax_peer(make)`` the same where ``make(x)`` builds the forward for inputs
  like ``x`` (a module built for its features or dtype). ``_linen``, ``_nnx``, ``_keras``: a Flax Linen / NNX
  module or a Keras 3 layer, built with the settings every peer shares (epsilon, output dtype), its parameters
  set to the case's.
- ``torch_peers(call)``: ``call(F, x, scale, bias[, mean, var])``, the op through ``torch.nn.functional``, eager,
  as ``torch_cpu`` (always on the CPU) and ``torch_cuda`` (on a CUDA GPU).

Op signatures (the JAX forwards):

- stateless ops (layer_norm and rms_norm over the last axis, ``ROWS``; group_norm with ``GROUPS`` groups, NHWC):
  ``forward(x, scale, bias) -> y`` (RMSNorm ignores ``bias``);
- stateful ops (``STATEFUL``: batch_norm in training, NHWC, ``axis=-1``):
  ``forward(x, scale, bias, mean, var) -> (y, new_mean, new_var)``.

Everywhere epsilon is ``EPSILON``, momentum ``MOMENTUM`` (the old value's weight), the output in ``x``'s dtype,
parameters and statistics float32. run.py sets ``KERAS_BACKEND=jax`` and ``OMP_WAIT_POLICY=PASSIVE`` before
anything imports Keras or PyTorch; this module imports each peer only inside its builder.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

import jaxnorm

EPSILON = 1e-5
MOMENTUM = 0.9  # weight of the old moving value (Keras/Flax convention); PyTorch's momentum is 1 - this
GROUPS = 32  # GroupNorm's groups (Wu & He's, Keras's and Flax's default), NHWC input
MODES = ("fwd", "fwd+bwd")
ROWS = ("layer_norm", "rms_norm")  # ops over the last axis
CHANNELS = ("batch_norm", "group_norm")  # NHWC ops with per-channel parameters (PyTorch: channels_last)
STATEFUL = ("batch_norm",)  # forward(x, scale, bias, mean, var) -> (y, new_mean, new_var); others (x, s, b) -> y
# Residual add & norm over the last axis: forward(x, residual, scale, bias) -> (y, h), h = x + residual the new
# stream and y = norm(h); the peers' form is the unfused one a Flax user writes (x + residual, then the norm).
RESIDUAL = ("add_layer_norm", "add_rms_norm")
# Adaptive LayerNorm (DiT's AdaLN) on (N, tokens, C): forward(x, scale, shift) -> norm(x) * (1 + scale) + shift,
# its scale and shift one row per example, (N, C), in the slots of the others' scale and bias; the peers' form is
# Flax's LayerNorm without params, then the modulation.
ADAPTIVE = ("adaptive_norm",)
# Gated RMSNorm over the last axis (Mamba-2's ``RMSNormGated(norm_before_gate=False)``): forward(x, gate, scale,
# bias) -> rms_norm(x * silu(gate)) * scale, the gate of x's shape; the peers' form is ``nn.RMSNorm`` of the product.
GATED = ("gated_rms_norm",)
# RMSNorm written as fp8 (TransformerEngine's rmsnorm_fwd_fp8): forward(x, scale, bias) -> (q, amax), q float8_e4m3fn
# of rms_norm(x) * OUT_SCALE; forward only (its gradient is RMSNorm's, straight through the rounding). The peers'
# form is Flax's RMSNorm, then the saturating cast and the amax.
QUANTIZED = ("rms_norm_fp8",)
OUT_SCALE = 16.0  # a delayed-scaling factor that puts RMS-normalized values well inside e4m3's range (448)
COPY = "copy"  # not a peer: run.py's copy kernel, the memory-bandwidth limit every case is measured against


# ---------------------------------------------------------------------------------------------------------
# The arrays of a case, and the runners that builders return.
# ---------------------------------------------------------------------------------------------------------


def make_inputs(op, shape, dtype, seed=0):
    """The case's arrays (x, dy, scale, bias; a stateful op's mean and var), generated on the JAX device. The
    last ones are kept: run.py's next case (the other mode) reuses them (JAX arrays are immutable), which saves
    seconds per large case on a CPU."""
    kind = next((group[0] for group in (STATEFUL, RESIDUAL, ADAPTIVE, GATED) if op in group), "stateless")
    return dict(_last_inputs(kind, tuple(shape), jnp.dtype(dtype).name, seed))


@functools.lru_cache(maxsize=1)
def _last_inputs(kind, shape, dtype, seed):  # the arrays depend on the op only through its state or residual
    return jax.block_until_ready(_make_inputs(kind, shape, jnp.dtype(dtype), seed))


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _make_inputs(op, shape, dtype, seed):  # one compiled program per case
    keys = jax.random.split(jax.random.key(seed), 7)
    c = shape[-1]
    x = (jax.random.normal(keys[0], shape, jnp.float32) + 0.5).astype(dtype)
    dy = jax.random.normal(keys[1], shape, jnp.float32).astype(dtype)
    inputs = {
        "x": x,
        "dy": dy,
        "scale": 1.0 + 0.1 * jax.random.normal(keys[2], (c,), jnp.float32),
        "bias": 0.1 * jax.random.normal(keys[3], (c,), jnp.float32),
    }
    if op in STATEFUL:
        inputs["mean"] = 0.1 * jax.random.normal(keys[4], (c,), jnp.float32)
        inputs["var"] = 1.0 + 0.1 * jnp.abs(jax.random.normal(keys[5], (c,), jnp.float32))
    if op in RESIDUAL:
        inputs["residual"] = (2.0 * jax.random.normal(keys[6], shape, jnp.float32)).astype(dtype)
    if op in GATED:
        inputs["gate"] = jax.random.normal(keys[6], shape, jnp.float32).astype(dtype)
    if op in ADAPTIVE:  # per example: (N, C)
        inputs["scale"] = 0.1 * jax.random.normal(keys[2], (shape[0], c), jnp.float32)
        inputs["bias"] = 0.1 * jax.random.normal(keys[3], (shape[0], c), jnp.float32)
    return inputs


class JaxRunner:
    """``fn`` compiled for ``args`` (``jax.jit(fn).lower(*args).compile()``); a call runs it on them."""

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


def with_backward(forward, op):
    """(x, dy, scale, bias[, mean, var]) -> (dx, dscale, dbias[, new_mean, new_var]): grad of sum(y * dy).
    A residual op: (x, residual, dy, scale, bias) -> (dx, dresidual, dscale, dbias), the grad of
    sum(y * dy) + sum(h * dy) (``dy`` the cotangent of both outputs, the stream's included); a gated op:
    (x, gate, dy, scale, bias) -> (dx, dgate, dscale, dbias)."""

    def loss(x, s, b, dy, *state):
        out = forward(x, s, b, *state)
        y, aux = (out[0], tuple(out[1:])) if op in STATEFUL else (out, ())
        return jnp.sum(y.astype(jnp.float32) * dy.astype(jnp.float32)), aux

    def fwd_bwd(x, dy, s, b, *state):
        grads, aux = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(x, s, b, dy, *state)
        return (*grads, *aux)

    def residual_loss(x, r, s, b, dy):
        y, h = forward(x, r, s, b)
        return jnp.sum((y.astype(jnp.float32) + h.astype(jnp.float32)) * dy.astype(jnp.float32))

    def residual_fwd_bwd(x, r, dy, s, b):
        return jax.grad(residual_loss, argnums=(0, 1, 2, 3))(x, r, s, b, dy)

    def gated_loss(x, z, s, b, dy):
        return jnp.sum(forward(x, z, s, b).astype(jnp.float32) * dy.astype(jnp.float32))

    def gated_fwd_bwd(x, z, dy, s, b):  # (dx, dgate, dscale, dbias)
        return jax.grad(gated_loss, argnums=(0, 1, 2, 3))(x, z, s, b, dy)

    return residual_fwd_bwd if op in RESIDUAL else gated_fwd_bwd if op in GATED else fwd_bwd


def modes_of(op):
    """The modes an op is timed in: both, or ``fwd`` alone for the fp8 outputs."""
    return ("fwd",) if op in QUANTIZED else MODES


def second_inputs(op):
    """The op's full-size inputs, in its forward's order: ``x``, then the residual stream or the gate."""
    return ("x", "residual") if op in RESIDUAL else ("x", "gate") if op in GATED else ("x",)


def jax_args(op, mode, inputs):
    """The arguments of ``forward`` (fwd) or ``with_backward(forward)`` (fwd+bwd)."""
    lead = [inputs[k] for k in second_inputs(op)]
    args = lead + ([inputs["dy"]] if mode == "fwd+bwd" else []) + [inputs["scale"], inputs["bias"]]
    if op in STATEFUL:
        args += [inputs["mean"], inputs["var"]]
    return tuple(args)


def jax_peer(make):
    """A JAX implementation whose forward ``make(x)`` builds for inputs like ``x``."""

    def build(op, mode, inputs):
        forward = make(inputs["x"])
        return JaxRunner(forward if mode == "fwd" else with_backward(forward, op), jax_args(op, mode, inputs))

    return build


def jax_fn(forward):
    """A JAX implementation: ``forward`` itself."""
    return jax_peer(lambda x: forward)


def _to_torch(torch, a, device="cpu"):
    """A jax array as a torch tensor of the same dtype (bfloat16 exactly, through its bits) on ``device``."""
    host = np.array(a)  # a writable host copy
    if host.dtype == jnp.bfloat16:
        return torch.from_numpy(host.view(np.uint16)).view(torch.bfloat16).to(device)
    return torch.from_numpy(host).to(device)


class TorchRunner:
    """Eager PyTorch on the CPU or a CUDA GPU: ``call(F, x, scale, bias[, mean, var])``, ``torch.nn.functional``
    as ``F``; channel ops in channels_last (NHWC memory, NCHW sizes: no copy); a stateful op updates ``mean`` and
    ``var`` in place, the variance unbiased (PyTorch's), converted in ``outputs`` to the biased one the others
    keep."""

    compile_s = 0.0
    temp_bytes = None

    def __init__(self, call, op, mode, inputs, device="cpu"):
        import torch
        import torch.nn.functional as F

        self.torch, self.device = torch, device
        x, s, b = (_to_torch(torch, inputs[k], device) for k in ("x", "scale", "bias"))
        dy = _to_torch(torch, inputs["dy"], device)
        self.stateful, self.channels = op in STATEFUL, op in CHANNELS
        if device != "cpu" and not self.stateful:  # torch's CUDA layer/group/rms norm take the input's dtype
            s, b = s.to(x.dtype), b.to(x.dtype)
        if self.channels:
            x, dy = x.permute(0, 3, 1, 2), dy.permute(0, 3, 1, 2)
        state = ()
        if self.stateful:
            self.m0, self.v0 = (_to_torch(torch, inputs[k], device) for k in ("mean", "var"))
            self.mean, self.var = self.m0.clone(), self.v0.clone()
            self.n = math.prod(inputs["x"].shape[:-1])  # values per channel
            state = (self.mean, self.var)
        backward = mode == "fwd+bwd"
        if backward:
            x, s, b = (t.requires_grad_(True) for t in (x, s, b))

        def run():
            if not backward:
                with torch.no_grad():
                    return (call(F, x, s, b, *state),)
            y = call(F, x, s, b, *state)
            return torch.autograd.grad(y, (x, s, b), dy, allow_unused=True, materialize_grads=True)

        self.run = run

    def __call__(self, calls=1):
        for _ in range(calls):
            out = self.run()
        if self.device != "cpu":
            self.torch.cuda.synchronize()
        return out

    def outputs(self):
        if self.stateful:  # start from the same moving statistics as the others
            self.mean.copy_(self.m0)
            self.var.copy_(self.v0)
        out = [o.detach().float() for o in self.run()]
        if self.channels:
            out[0] = out[0].permute(0, 2, 3, 1)  # y or dx back to NHWC
        if self.stateful:
            # torch tracks the unbiased variance: convert its update to the biased one the others track.
            new_var_unbiased = (self.var - MOMENTUM * self.v0) / (1 - MOMENTUM)
            biased = MOMENTUM * self.v0 + (1 - MOMENTUM) * new_var_unbiased * (self.n - 1) / self.n
            out += [self.mean.clone(), biased]
        return [o.contiguous().cpu().numpy() for o in out]


def torch_peers(call):
    """``torch_cpu`` and ``torch_cuda``: the same functional call on either device."""
    return {f"torch_{device}": functools.partial(TorchRunner, call, device=device) for device in ("cpu", "cuda")}


# ---------------------------------------------------------------------------------------------------------
# The peers' forwards, by framework.
# ---------------------------------------------------------------------------------------------------------


def _full_rank(v, ndim):
    return v.reshape((1,) * (ndim - 1) + v.shape)


def _jaxnorm_batch_norm(x):
    spec = jaxnorm.BatchNorm(axis=-1, momentum=MOMENTUM, epsilon=EPSILON)

    def forward(x, s, b, m, v):
        y, state = spec.apply({"scale": s, "bias": b}, {"mean": m, "var": v}, x, training=True)
        return y, state["mean"], state["var"]

    return forward


# A textbook jnp version: float32 statistics, two-pass variance.


def _naive_normalize(x, s, b, axes):
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=axes, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + EPSILON) * _full_rank(s, x.ndim) + _full_rank(b, x.ndim)
    return y.astype(x.dtype), mean, var


def _naive_rms_norm(x, s, b):
    x32 = x.astype(jnp.float32)
    ms = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    return (x32 * jax.lax.rsqrt(ms + EPSILON) * _full_rank(s, x.ndim)).astype(x.dtype)


def _naive_group_norm(x, s, b):
    g = x.reshape(x.shape[:-1] + (GROUPS, x.shape[-1] // GROUPS)).astype(jnp.float32)
    axes = tuple(range(1, x.ndim - 1)) + (x.ndim,)
    mean = jnp.mean(g, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(g - mean), axis=axes, keepdims=True)
    y = ((g - mean) * jax.lax.rsqrt(var + EPSILON)).reshape(x.shape)
    return (y * _full_rank(s, x.ndim) + _full_rank(b, x.ndim)).astype(x.dtype)


def _naive_batch_norm(x, s, b, m, v):
    y, mean, var = _naive_normalize(x, s, b, tuple(range(x.ndim - 1)))
    return (
        y,
        MOMENTUM * m + (1 - MOMENTUM) * mean.reshape(m.shape),
        MOMENTUM * v + (1 - MOMENTUM) * var.reshape(v.shape),
    )


# Flax: dtype=x.dtype everywhere (bf16 in, bf16 out, like the others).


def _linen(module, params=("scale", "bias")):
    """flax.linen: ``module(nn, settings)`` (epsilon, dtype) applied with its ``params`` set to (scale, bias)."""

    def make(x):
        from flax import linen as nn

        layer = module(nn, {"epsilon": EPSILON, "dtype": x.dtype})
        return lambda x, s, b: layer.apply({"params": dict(zip(params, (s, b), strict=False))}, x)

    return make


def _modulated(y, s, b):
    """DiT's ``modulate``: ``y * (1 + scale) + shift`` with one (scale, shift) row per example, in y's dtype."""
    return y * (1 + s[:, None].astype(y.dtype)) + b[:, None].astype(y.dtype)


def _linen_adaptive(x):
    """AdaLN as a Flax user writes it: ``nn.LayerNorm(use_scale=False, use_bias=False)``, then ``modulate``."""
    from flax import linen as nn

    layer = nn.LayerNorm(epsilon=EPSILON, use_scale=False, use_bias=False, dtype=x.dtype)
    return lambda x, s, b: _modulated(layer.apply({}, x), s, b)


def _nnx_adaptive(x):
    """AdaLN as an NNX user writes it: ``nnx.LayerNorm(use_scale=False, use_bias=False)``, then ``modulate``."""
    from flax import nnx

    layer = nnx.LayerNorm(x.shape[-1], epsilon=EPSILON, use_scale=False, use_bias=False, dtype=x.dtype,
                          rngs=nnx.Rngs(0))
    return lambda x, s, b: _modulated(layer(x), s, b)


def _unfused(make):
    """A residual op as a user of ``make``'s norm writes it: ``(norm(x + residual), x + residual)``."""

    def residual_make(x):
        norm = make(x)
        return lambda x, r, s, b: (norm(x + r, s, b), x + r)

    return jax_peer(residual_make)


def _quantized(make):
    """An fp8 output as a Flax user writes it: ``make``'s norm, then ``clip(y * s, -448, 448)`` cast to e4m3, and
    ``max |y|``."""

    def quantized_make(x):
        norm = make(x)

        def forward(x, s, b):
            y = norm(x, s, b).astype(jnp.float32)
            q = jnp.clip(y * OUT_SCALE, -448.0, 448.0).astype(jnp.float8_e4m3fn)
            return q, jnp.max(jnp.abs(y))

        return forward

    return quantized_make


def _gated(make):
    """Mamba-2's gated RMSNorm as a Flax user writes it: ``make``'s RMSNorm of ``x * silu(gate)``."""

    def gated_make(x):
        norm = make(x)
        return lambda x, z, s, b: norm(x * jax.nn.silu(z), s, b)

    return gated_make


def _linen_batch_norm(x):
    from flax import linen as nn

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


def _nnx(module, params=("scale", "bias")):
    """flax.nnx: ``module(nnx, features, settings)`` (epsilon, dtype, rngs) split once, merged inside the pure
    forward with its ``params`` set to (scale, bias)."""

    def make(x):
        from flax import nnx

        graphdef, state = nnx.split(
            module(nnx, x.shape[-1], {"epsilon": EPSILON, "dtype": x.dtype, "rngs": nnx.Rngs(0)})
        )
        return lambda x, s, b: nnx.merge(graphdef, _with_leaves(state, dict(zip(params, (s, b), strict=False))))(x)

    return make


def _nnx_batch_norm(x):
    from flax import nnx

    model = nnx.BatchNorm(
        x.shape[-1], use_running_average=False, momentum=MOMENTUM, epsilon=EPSILON, dtype=x.dtype, rngs=nnx.Rngs(0)
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


# Keras 3 on the JAX backend, through stateless_call: float32 variables, compute in x's dtype.


def _keras_layer(layer, x):
    """``layer(keras.layers, settings)`` (epsilon, dtype policy) built for ``x``."""
    import keras

    if keras.backend.backend() != "jax":
        raise RuntimeError(f"KERAS_BACKEND is {keras.backend.backend()!r}, not 'jax'")
    policy = "mixed_bfloat16" if x.dtype == jnp.bfloat16 else "float32"
    built = layer(keras.layers, {"epsilon": EPSILON, "dtype": policy})
    built.build(x.shape)
    return built


def _keras(layer, n_params=2):
    """Keras: ``layer(keras.layers, settings)`` called with the first ``n_params`` of (scale, bias)."""

    def make(x):
        built = _keras_layer(layer, x)
        return lambda x, s, b: built.stateless_call([s, b][:n_params], [], x)[0]

    return jax_peer(make)


def _keras_batch_norm(x):
    layer = _keras_layer(lambda layers, kw: layers.BatchNormalization(axis=-1, momentum=MOMENTUM, **kw), x)

    def forward(x, s, b, m, v):
        y, (mean, var) = layer.stateless_call([s, b], [m, v], x, training=True)
        return y, mean, var

    return forward


def _equinox_layer_norm(x):  # only when equinox is installed
    import equinox as eqx

    ln = eqx.nn.LayerNorm(x.shape[-1], eps=EPSILON)

    def forward(x, s, b):
        module = eqx.tree_at(lambda m: (m.weight, m.bias), ln, (s, b))
        return jax.vmap(module)(x).astype(x.dtype)

    return forward


def _haiku_layer_norm(x):  # only when haiku is installed
    import haiku as hk

    ln = hk.without_apply_rng(
        hk.transform(lambda x: hk.LayerNorm(axis=-1, create_scale=True, create_offset=True, eps=EPSILON)(x))
    )
    return lambda x, s, b: ln.apply({"layer_norm": {"scale": s, "offset": b}}, x).astype(x.dtype)


# ---------------------------------------------------------------------------------------------------------
# Who implements what.
# ---------------------------------------------------------------------------------------------------------


def _no_pallas(platform):
    from jaxnorm._src import pallas_norm

    return None if pallas_norm.pallas_available() else "no GPU: the Pallas kernels would run in interpret mode"


def _no_torch_cuda(platform):
    if platform == "gpu":
        import torch

        if torch.cuda.is_available():
            return None
    return "JAX or torch not on a CUDA GPU"


@dataclasses.dataclass(frozen=True)
class Peer:
    """What an implementation needs: ``requires`` the module that must be installed; ``unavailable(platform)``
    (JAX's device platform) why it cannot run here, or None."""

    requires: str | None = None
    unavailable: Callable[[str], str | None] = lambda platform: None


PEERS = {
    "jaxnorm": Peer(),  # the public API only: a faster implementation behind it shows up unchanged
    "jaxnorm_pallas": Peer(unavailable=_no_pallas),  # GPU only (interpret mode on CPU is a test aid, not timed)
    "flax_linen": Peer("flax"),
    "flax_nnx": Peer("flax"),
    "naive_jnp": Peer(),
    "keras": Peer("keras"),
    "equinox": Peer("equinox"),
    "haiku": Peer("haiku"),
    "torch_cpu": Peer("torch"),
    "torch_cuda": Peer("torch", unavailable=_no_torch_cuda),
}

TABLE = {
    "layer_norm": {
        "jaxnorm": jax_fn(lambda x, s, b: jaxnorm.layer_norm(x, s, b, axis=-1, epsilon=EPSILON)),
        "jaxnorm_pallas": jax_fn(
            lambda x, s, b: jaxnorm.layer_norm(x, s, b, axis=-1, epsilon=EPSILON, implementation="pallas")
        ),
        "flax_linen": jax_peer(_linen(lambda nn, kw: nn.LayerNorm(**kw))),
        "flax_nnx": jax_peer(_nnx(lambda nnx, c, kw: nnx.LayerNorm(c, **kw))),
        "naive_jnp": jax_fn(lambda x, s, b: _naive_normalize(x, s, b, (x.ndim - 1,))[0]),
        "keras": _keras(lambda layers, kw: layers.LayerNormalization(axis=-1, **kw)),
        "equinox": jax_peer(_equinox_layer_norm),  # vmapped over rows
        "haiku": jax_peer(_haiku_layer_norm),
        **torch_peers(lambda F, x, s, b: F.layer_norm(x, (x.shape[-1],), s, b, EPSILON)),
    },
    "rms_norm": {
        "jaxnorm": jax_fn(lambda x, s, b: jaxnorm.rms_norm(x, s, axis=-1, epsilon=EPSILON)),
        "jaxnorm_pallas": jax_fn(
            lambda x, s, b: jaxnorm.rms_norm(x, s, axis=-1, epsilon=EPSILON, implementation="pallas")
        ),
        "flax_linen": jax_peer(_linen(lambda nn, kw: nn.RMSNorm(**kw), params=("scale",))),
        "flax_nnx": jax_peer(_nnx(lambda nnx, c, kw: nnx.RMSNorm(c, **kw), params=("scale",))),
        "naive_jnp": jax_fn(_naive_rms_norm),
        "keras": _keras(lambda layers, kw: layers.RMSNormalization(axis=-1, **kw), n_params=1),
        **torch_peers(lambda F, x, s, b: F.rms_norm(x, (x.shape[-1],), s, EPSILON)),
    },
    "batch_norm": {
        "jaxnorm": jax_peer(_jaxnorm_batch_norm),
        "flax_linen": jax_peer(_linen_batch_norm),
        "flax_nnx": jax_peer(_nnx_batch_norm),
        "naive_jnp": jax_fn(_naive_batch_norm),
        "keras": jax_peer(_keras_batch_norm),
        **torch_peers(
            lambda F, x, s, b, m, v: F.batch_norm(x, m, v, s, b, training=True, momentum=1 - MOMENTUM, eps=EPSILON)
        ),
    },
    "group_norm": {
        "jaxnorm": jax_fn(lambda x, s, b: jaxnorm.group_norm(x, s, b, num_groups=GROUPS, epsilon=EPSILON)),
        "flax_linen": jax_peer(_linen(lambda nn, kw: nn.GroupNorm(num_groups=GROUPS, **kw))),
        "flax_nnx": jax_peer(_nnx(lambda nnx, c, kw: nnx.GroupNorm(c, num_groups=GROUPS, **kw))),
        "naive_jnp": jax_fn(_naive_group_norm),
        "keras": _keras(lambda layers, kw: layers.GroupNormalization(groups=GROUPS, axis=-1, **kw)),
        **torch_peers(lambda F, x, s, b: F.group_norm(x, GROUPS, s, b, EPSILON)),
    },
    "add_layer_norm": {
        "jaxnorm": jax_fn(lambda x, r, s, b: jaxnorm.add_layer_norm(x, r, s, b, epsilon=EPSILON)),
        "jaxnorm_pallas": jax_fn(
            lambda x, r, s, b: jaxnorm.add_layer_norm(x, r, s, b, epsilon=EPSILON, implementation="pallas")
        ),
        "flax_linen": _unfused(_linen(lambda nn, kw: nn.LayerNorm(**kw))),
        "flax_nnx": _unfused(_nnx(lambda nnx, c, kw: nnx.LayerNorm(c, **kw))),
        "naive_jnp": jax_fn(lambda x, r, s, b: (_naive_normalize(x + r, s, b, (x.ndim - 1,))[0], x + r)),
    },
    "adaptive_norm": {
        "jaxnorm": jax_fn(lambda x, s, b: jaxnorm.adaptive_norm(x, b, s, epsilon=EPSILON)),
        "flax_linen": jax_peer(_linen_adaptive),
        "flax_nnx": jax_peer(_nnx_adaptive),
        "naive_jnp": jax_fn(lambda x, s, b: _modulated(_naive_normalize(x, jnp.ones(x.shape[-1]),
                                                                        jnp.zeros(x.shape[-1]), (x.ndim - 1,))[0],
                                                       s, b)),
    },
    "add_rms_norm": {
        "jaxnorm": jax_fn(lambda x, r, s, b: jaxnorm.add_rms_norm(x, r, s, epsilon=EPSILON)),
        "jaxnorm_pallas": jax_fn(
            lambda x, r, s, b: jaxnorm.add_rms_norm(x, r, s, epsilon=EPSILON, implementation="pallas")
        ),
        "flax_linen": _unfused(_linen(lambda nn, kw: nn.RMSNorm(**kw), params=("scale",))),
        "flax_nnx": _unfused(_nnx(lambda nnx, c, kw: nnx.RMSNorm(c, **kw), params=("scale",))),
        "naive_jnp": jax_fn(lambda x, r, s, b: (_naive_rms_norm(x + r, s, b), x + r)),
    },
}
TABLE["gated_rms_norm"] = {
    "jaxnorm": jax_fn(lambda x, z, s, b: jaxnorm.gated_rms_norm(x, z, s, norm_before_gate=False, epsilon=EPSILON)),
    "flax_linen": jax_peer(_gated(_linen(lambda nn, kw: nn.RMSNorm(**kw), params=("scale",)))),
    "flax_nnx": jax_peer(_gated(_nnx(lambda nnx, c, kw: nnx.RMSNorm(c, **kw), params=("scale",)))),
    "naive_jnp": jax_fn(lambda x, z, s, b: _naive_rms_norm(x * jax.nn.silu(z), s, b)),
}
TABLE["rms_norm_fp8"] = {
    "jaxnorm": jax_fn(lambda x, s, b: jaxnorm.rms_norm_fp8(x, s, out_scale=OUT_SCALE, epsilon=EPSILON)),
    "flax_linen": jax_peer(_quantized(_linen(lambda nn, kw: nn.RMSNorm(**kw), params=("scale",)))),
    "flax_nnx": jax_peer(_quantized(_nnx(lambda nnx, c, kw: nnx.RMSNorm(c, **kw), params=("scale",)))),
    "naive_jnp": jax_peer(_quantized(lambda x: _naive_rms_norm)),
}
OPS = tuple(TABLE)
IMPLS = (*PEERS, COPY)  # every implementation, in the order they run and are reported
