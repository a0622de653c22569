"""Model-level benchmark: what a user sees after swapping ``flax.linen``'s norm layers for ``jaxnorm.linen``'s.

Two Flax models, each built three times from one definition that takes its norm layers from a namespace:
``flax`` (``flax.linen.BatchNorm``/``LayerNorm``/``RMSNorm``), ``jaxnorm`` (the drop-ins ``jaxnorm.linen.*``,
the same import swapped) and ``identity`` (every norm layer replaced by the identity: the bound that an
infinitely fast normalization would reach).

- ``cnn``: a ResNet-style CNN, NHWC, BatchNorm after each of 9 3x3 convolutions and 2 1x1 projections,
  batch 32 at 32x32x3, 10 classes.
- ``transformer-layer`` / ``transformer-rms``: a pre-norm Transformer encoder, 4 blocks, sequence 256, width 256,
  4 heads, MLP 1024, batch 8, LayerNorm (or RMSNorm) before attention, before the MLP and at the end.
- ``transformer-add_rms``: the same network with each residual add fused into the RMSNorm after it
  (``y, stream = AddRMSNorm()(sublayer(y), stream)``): Flax's variant is the unfused ``x + residual`` then
  ``nn.RMSNorm`` (same params), the identity variant the add alone.

For each: the jit-compiled train step (forward, backward, Optax Adam update, moving statistics threaded through)
and inference step (running averages) are timed in one interleaved run (medians after warm-up), with XLA's
compiled temporary memory. Before timing, the ``jaxnorm`` variant's loss and output must equal the ``flax``
variant's from the same variables (the drop-ins share Flax's variable trees). Reported:

- ``flax/jaxnorm``: Flax's step time over jaxnorm's (> 1: the swap made the step faster);
- ``norm share``: ``(t_flax - t_identity) / t_flax``, what Flax's norm layers cost of the step;
- ``share removed``: ``(t_flax - t_jaxnorm) / (t_flax - t_identity)``, how much of that the swap removed.

Usage::

    python benchmarks/models.py            # the shapes above
    python benchmarks/models.py --smoke    # tiny shapes (a test of the script; its figures mean nothing)
    python benchmarks/run.py --models      # the same, from the op-level benchmark's entry point
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxnorm.linen

DEFAULT_OUT = Path(__file__).resolve().parent / "out"


class _Identity(nn.Module):
    """A norm layer that returns its input: Flax's norm arguments accepted and ignored."""

    use_running_average: bool | None = None
    momentum: float = 0.99
    epsilon: float = 1e-6

    @nn.compact
    def __call__(self, x, use_running_average: bool | None = None):
        del use_running_average
        return x


class AddRMSNorm(nn.RMSNorm):  # named as the drop-in: Flax names submodules by class
    """Residual add & RMSNorm as a Flax user writes it today: ``h = x + residual``, then ``nn.RMSNorm`` (the same
    ``scale`` param as ``jaxnorm.linen.AddRMSNorm``)."""

    @nn.compact
    def __call__(self, x, residual=None):
        h = x if residual is None else x + residual
        return super().__call__(h), h


class _IdentityAdd(_Identity):
    """The bound of an add & norm: the add alone, ``(h, h)``."""

    @nn.compact
    def __call__(self, x, residual=None):
        h = x if residual is None else x + residual
        return h, h


NORMS = {
    "flax": types.SimpleNamespace(
        BatchNorm=nn.BatchNorm, LayerNorm=nn.LayerNorm, RMSNorm=nn.RMSNorm, AddRMSNorm=AddRMSNorm
    ),
    "jaxnorm": types.SimpleNamespace(
        BatchNorm=jaxnorm.linen.BatchNorm, LayerNorm=jaxnorm.linen.LayerNorm, RMSNorm=jaxnorm.linen.RMSNorm,
        AddRMSNorm=jaxnorm.linen.AddRMSNorm,
    ),
    "identity": types.SimpleNamespace(
        BatchNorm=_Identity, LayerNorm=_Identity, RMSNorm=_Identity, AddRMSNorm=_IdentityAdd
    ),
}
VARIANTS = tuple(NORMS)


class ResNet(nn.Module):
    """Stem conv, then residual blocks of two 3x3 convs (BatchNorm after each; a 1x1 projection with BatchNorm
    where the width or stride changes), global average pooling and a dense classifier."""

    norms: Any
    widths: tuple[int, ...] = (32, 32, 64, 128)
    strides: tuple[int, ...] = (1, 1, 2, 2)
    classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool):
        norm = lambda: self.norms.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)  # noqa: E731
        x = nn.relu(norm()(nn.Conv(self.widths[0], (3, 3), use_bias=False)(x)))
        for width, stride in zip(self.widths, self.strides, strict=True):
            h = nn.Conv(width, (3, 3), (stride, stride), use_bias=False)(x)
            h = nn.relu(norm()(h))
            h = norm()(nn.Conv(width, (3, 3), use_bias=False)(h))
            if x.shape[-1] != width or stride != 1:
                x = norm()(nn.Conv(width, (1, 1), (stride, stride), use_bias=False)(x))
            x = nn.relu(x + h)
        return nn.Dense(self.classes)(jnp.mean(x, (1, 2)))


class Transformer(nn.Module):
    """Pre-norm Transformer encoder over token ids: ``x + attn(norm(x))``, ``x + mlp(norm(x))``, final norm."""

    norms: Any
    kind: str = "layer"  # 'layer', 'rms', or 'add_rms' (the residual adds fused with the RMSNorms)
    vocab: int = 256
    width: int = 256
    heads: int = 4
    blocks: int = 4

    @nn.compact
    def __call__(self, tokens, train: bool):
        del train
        norm = (lambda: self.norms.LayerNorm()) if self.kind == "layer" else (lambda: self.norms.RMSNorm())
        x = nn.Embed(self.vocab, self.width)(tokens)
        x = x + self.param("pos", nn.initializers.normal(0.02), (1, tokens.shape[1], self.width))
        if self.kind == "add_rms":  # the same network, each norm fused with the residual add before it
            y, stream = self.norms.AddRMSNorm()(x)
            for _ in range(self.blocks):
                y, stream = self.norms.AddRMSNorm()(nn.MultiHeadDotProductAttention(self.heads)(y), stream)
                y, stream = self.norms.AddRMSNorm()(nn.Dense(self.width)(nn.gelu(nn.Dense(4 * self.width)(y))), stream)
            return nn.Dense(self.vocab)(y)
        for _ in range(self.blocks):
            x = x + nn.MultiHeadDotProductAttention(self.heads)(norm()(x))
            h = nn.Dense(self.width)(nn.gelu(nn.Dense(4 * self.width)(norm()(x))))
            x = x + h
        return nn.Dense(self.vocab)(norm()(x))


def _cases(mode: str) -> dict[str, dict[str, Any]]:
    smoke = mode == "smoke"
    return {
        "cnn": dict(
            # smoke: one plain and one projecting block (the two kinds; the test's compile time halves)
            make=lambda norms: (
                ResNet(norms, widths=(4, 8), strides=(1, 2)) if smoke else ResNet(norms, widths=(32, 32, 64, 128))
            ),
            x_shape=(4, 8, 8, 3) if smoke else (32, 32, 32, 3),
            labels=10,
        ),
        **{
            f"transformer-{kind}": dict(
                make=lambda norms, kind=kind: Transformer(
                    norms, kind, width=16 if smoke else 256, blocks=1 if smoke else 4
                ),
                x_shape=(2, 16) if smoke else (8, 256),
                labels=256,
                tokens=True,
            )
            for kind in ("layer", "rms", "add_rms")
        },
    }


def _steps(model: nn.Module, tx: optax.GradientTransformation):
    def loss_fn(params, state, x, y):
        if state:  # moving statistics, threaded through the step
            out, updates = model.apply({"params": params, **state}, x, train=True, mutable=list(state))
        else:
            out, updates = model.apply({"params": params}, x, train=True), {}
        onehot = jax.nn.one_hot(y, out.shape[-1])
        return optax.softmax_cross_entropy(out, onehot).mean(), (out, updates)

    def train_step(params, state, opt_state, x, y):
        (loss, (out, new_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_state, opt_state, loss, out

    def infer_step(params, state, x):
        return model.apply({"params": params, **state}, x, train=False)

    return train_step, infer_step


def _time(fn, args, repeats: int) -> list[float]:
    ts = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - start)
    return ts


def run_case(name: str, case: dict[str, Any], repeats: int, rounds: int = 3) -> dict[str, Any]:
    key = jax.random.key(0)
    kx, ky, kp = jax.random.split(key, 3)
    if case.get("tokens"):
        x = jax.random.randint(kx, case["x_shape"], 0, case["labels"])
        y = jnp.roll(x, -1, axis=1)
    else:
        x = jax.random.normal(kx, case["x_shape"], jnp.float32)
        y = jax.random.randint(ky, case["x_shape"][:1], 0, case["labels"])
    tx = optax.adam(1e-3)
    variables = case["make"](NORMS["flax"]).init(kp, x, train=False)
    params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
    compiled, results = {}, {}
    for variant in VARIANTS:
        model = case["make"](NORMS[variant])
        v = model.init(kp, x, train=False)
        if variant == "identity":  # no norm variables
            p, s = v["params"], {k: a for k, a in v.items() if k != "params"}
        else:  # the drop-in runs on the very variables Flax's layers were initialized with
            p, s = params, state
        if variant == "jaxnorm":  # a drop-in: the same variable tree as Flax's, loaded unchanged
            assert jax.tree.structure(v) == jax.tree.structure(variables), "drop-in variable trees differ"
        train_step, infer_step = _steps(model, tx)
        opt_state = tx.init(p)
        train = jax.jit(train_step).lower(p, s, opt_state, x, y).compile()
        infer = jax.jit(infer_step).lower(p, s, x).compile()
        compiled[variant] = (train, (p, s, opt_state, x, y), infer, (p, s, x))
        results[variant] = {
            "train_temp_MiB": train.memory_analysis().temp_size_in_bytes / 2**20,
            "infer_temp_MiB": infer.memory_analysis().temp_size_in_bytes / 2**20,
        }
    # Equal before timing: the swap must change no number beyond float32 rounding. On a GPU, XLA's float32
    # convolutions and matmuls default to TF32 (10-bit mantissa) inputs, which turn rounding differences of the
    # norm layers into differences near 1e-3 of the outputs.
    tol = 1 if jax.default_backend() == "cpu" else 10
    out_f = compiled["flax"][0](*compiled["flax"][1])
    out_j = compiled["jaxnorm"][0](*compiled["jaxnorm"][1])
    np.testing.assert_allclose(out_j[3], out_f[3], rtol=1e-4 * tol, err_msg=f"{name}: train loss differs")
    np.testing.assert_allclose(
        out_j[4], out_f[4], rtol=1e-3 * tol, atol=1e-4 * tol, err_msg=f"{name}: train outputs differ"
    )
    np.testing.assert_allclose(
        compiled["jaxnorm"][2](*compiled["jaxnorm"][3]),
        compiled["flax"][2](*compiled["flax"][3]),
        rtol=1e-3 * tol,
        atol=1e-4 * tol,
        err_msg=f"{name}: inference outputs differ",
    )
    times = {v: {"train": [], "infer": []} for v in VARIANTS}
    for variant in VARIANTS:  # warm-up
        train, targs, infer, iargs = compiled[variant]
        _time(train, targs, 2), _time(infer, iargs, 2)
    for _ in range(rounds):  # interleaved: every variant sees the same machine state
        for variant in VARIANTS:
            train, targs, infer, iargs = compiled[variant]
            times[variant]["train"] += _time(train, targs, repeats)
            times[variant]["infer"] += _time(infer, iargs, repeats)
    for variant in VARIANTS:
        for step in ("train", "infer"):
            results[variant][f"{step}_ms"] = statistics.median(times[variant][step]) * 1e3
    summary = {}
    for step in ("train", "infer"):
        tf, tj, ti = (results[v][f"{step}_ms"] for v in VARIANTS)
        summary[step] = {
            "flax/jaxnorm": tf / tj,
            "flax/identity": tf / ti,
            "norm_share": (tf - ti) / tf,
            "share_removed": (tf - tj) / (tf - ti) if tf > ti else float("nan"),
            "temp_jaxnorm/flax": (
                results["jaxnorm"][f"{step}_temp_MiB"] / max(results["flax"][f"{step}_temp_MiB"], 1e-9)
            ),
        }
    return {"variants": results, "summary": summary}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes (tests the script; figures meaningless)")
    parser.add_argument("--only", nargs="+", choices=tuple(_cases("full")), default=None, help="models to run")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per variant per round (default 5)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    return parser.parse_args(argv)


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    mode = "smoke" if args.smoke else "full"
    repeats = args.repeats or (1 if args.smoke else 5)
    cases = _cases(mode)
    report = {
        "mode": mode,
        "device": str(jax.devices()[0].device_kind),
        "date": time.strftime("%Y-%m-%d"),
        "versions": {"jax": jax.__version__, "flax": __import__("flax").__version__},
        "models": {},
    }
    if mode == "smoke":
        print("smoke mode: tiny shapes; the figures below time dispatch, not the models, and mean nothing.")
    for name in args.only or cases:
        r = run_case(name, cases[name], repeats, rounds=1 if args.smoke else 3)
        report["models"][name] = r
        for step in ("train", "infer"):
            s, v = r["summary"][step], r["variants"]
            ms = {k: v[k][f"{step}_ms"] for k in VARIANTS}
            print(
                f"{name:18s} {step:5s} flax {ms['flax']:8.2f} ms  jaxnorm {ms['jaxnorm']:8.2f}"
                f" ms  identity {ms['identity']:8.2f} ms | flax/jaxnorm {s['flax/jaxnorm']:.3f}"
                f"  norm share {s['norm_share']:6.1%}  share removed {s['share_removed']:7.1%}"
                f"  temp jaxnorm/flax {s['temp_jaxnorm/flax']:.2f}"
            )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"models_{mode}.json"
    path.write_text(json.dumps(report, indent=1))
    print(f"wrote {path}")
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
