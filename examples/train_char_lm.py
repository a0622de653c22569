"""Train a small pre-norm character-level Transformer language model (Flax NNX) on text that ships with Python.

The model is a Flax NNX module; the only thing ``--norm`` changes is the module its norm classes come from,
``flax.nnx`` or the drop-ins of ``jaxnorm.nnx`` (same arguments, same variables, same initial values)::

    norm_cls = {"flax": flax.nnx, "jaxnorm": jaxnorm.nnx}[norm].LayerNorm   # .RMSNorm, .DyT, .Derf with --kind

Data: the docstrings of the Python standard library's top-level public modules (``*.py`` directly under
``sysconfig.get_paths()["stdlib"]``, not starting with ``_``), in sorted file order, each module's docstrings
in ``ast.walk`` order (module, classes, functions; cleaned with ``inspect.cleandoc``), joined by blank lines:
real English prose (with some code examples), no download, 0.79 MB for Python 3.11, built in about 2 s. The
corpus is deterministic for a given Python version, but it depends on that version (the standard library's
docstrings change between releases, and a distribution may patch a few modules): the figures in
examples/README.md were measured with CPython 3.11.7. Characters: ``'\\n'`` and printable ASCII (32-126),
everything else is one unknown symbol (97 ids in all). The last 10% of the text is the validation split.

Model (defaults)::

    token embedding(97, 128) + learned positions(64, 128)
    2 x pre-norm block:  x + MultiHeadAttention(norm(x), causal mask, 4 heads)
                         x + Linear(512 -> 128)(gelu(Linear(128 -> 512)(norm(x))))
    final norm, Linear(128 -> 97)

No dropout (the model's whole state is its ``nnx.Param`` s), AdamW (weight decay 0.1 on the kernels and
embeddings only) with a linear warmup over the first 10% of the steps and a cosine decay to lr/10, gradients
clipped to global norm 1.

Run (from the repository root)::

    python examples/train_char_lm.py                                        # jaxnorm LayerNorm, the defaults
    python examples/train_char_lm.py --norm flax jaxnorm --kind layer rms   # compare four variants, one plot
    python examples/train_char_lm.py --checkpoint-dir /tmp/lm               # checkpoint; rerun to resume

Flags:
  --norm {flax,jaxnorm} [...]  where the norm classes come from: ``flax.nnx`` or ``jaxnorm.nnx`` (default:
                     jaxnorm). Several values (and several --kind) train one model per combination, in turn,
                     from the same seed (same initial weights, same batches), and draw them all in one plot.
  --kind {layer,rms,dyt,derf,add_layer,add_rms} [...]  LayerNorm, RMSNorm, the normalization-free DyT or Derf
                     in their place, or the residual add & norm (AddLayerNorm, AddRMSNorm: the same network
                     as layer/rms, each residual add fused into the norm after it; jaxnorm only)
                     (default: layer); DyT and Derf are jaxnorm's only: ``--norm flax`` skips them, saying so.
  --steps N          training steps per model (default 800).
  --batch-size N     sequences per step (default 64).
  --seq-len N        characters per sequence, the attention context (default 64).
  --d-model N, --layers N, --heads N   model size (defaults 128, 2, 4); the MLP is 4 x d-model wide.
  --lr LR            peak AdamW learning rate (default 3e-3).
  --seed S           seed of the initialization and of the batches (default 0).
  --eval-every N     evaluate (and checkpoint) every N steps: one "epoch" (default 100).
  --eval-batches N   validation batches of --batch-size windows of --seq-len per evaluation; 0: the whole
                     validation split (default 0).
  --out DIR          output directory (default examples/out, next to this script).
  --max-seconds T    optional: stop each model's training after the step during which T seconds ran out
                     (then evaluate, and checkpoint if asked).
  --checkpoint-dir DIR  optional: save an Orbax checkpoint every --eval-every steps and at the end (params,
                     AdamW state, step, history) under DIR/<norm>-<kind>; on start, resume from the latest
                     checkpoint there. The data order is a pure function of (seed, step), so a resumed run
                     continues bit for bit as the uninterrupted run would have. Resuming needs the same flags
                     (except --out, --max-seconds and --stop-after; a checkpoint of other flags raises ValueError).
  --stop-after N     optional: stop each model after N steps in all (checkpointing there), as if interrupted;
                     rerun with the same flags to resume and finish.

Batches: step ``s`` trains on ``--batch-size`` windows of ``--seq-len + 1`` characters of the training split at
offsets drawn with ``jax.random.fold_in(jax.random.key(seed + 1), s)``, inside the jitted step: nothing but the
step number is needed to know where the data is. Validation: the validation split cut into consecutive
windows (each character predicted once; the same ones at every evaluation), in batches of --batch-size, the
tail short of a whole batch left out.

Prints a tqdm progress bar per model (on stderr), then on stdout the unigram baseline ``unigram_bpc=...`` (the
cross-entropy, in bits per character, of the validation split under the training split's character frequencies,
add-one smoothed), one line per model ``val_bpc[<norm>-<kind>]=... steps_per_s=... seconds=...`` (training
steps per second after the first step, which compiles, evaluations left out; seconds of the whole training,
compilation and evaluations included, summed over resumed runs), and last exactly one line
``val_bpc=<value>`` (4 decimals): the final validation bits per character of the first variant.

Writes ``<out>/train_char_lm.png`` (training and validation bits per character vs step, one curve per variant,
the unigram baseline dotted) and ``<out>/char_lm_metrics.json`` (the configuration, the corpus, the baseline
and per variant the history of the evaluations).

``main(argv)`` returns the dict written to the json plus two entries that are not written: ``params`` and
``opt_state``, the trained ``nnx.State`` of the params and the AdamW state of each variant, keyed by
``<norm>-<kind>``.
"""

from __future__ import annotations

import argparse
import ast
import functools
import itertools
import json
import math
import platform
import sysconfig
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tqdm import tqdm

from jaxnorm import nnx as jnnx

# The vocabulary: id 0 is the unknown symbol, then '\n' and the printable ASCII characters 32..126.
ALPHABET = "\n" + "".join(chr(c) for c in range(32, 127))
UNKNOWN = 0
VOCAB_SIZE = len(ALPHABET) + 1  # 97 characters + the unknown symbol
VAL_FRACTION = 0.1
WEIGHT_DECAY = 0.1
NORM_MODULES = {"flax": nnx, "jaxnorm": jnnx}
NORM_CLASSES = {"layer": "LayerNorm", "rms": "RMSNorm", "dyt": "DyT", "derf": "Derf", "add_layer": "AddLayerNorm",
                "add_rms": "AddRMSNorm"}
# flax.nnx has no class for these: the normalization-free layers, and the residual add & norm (whose unfused
# form, x + residual then the norm, is --kind layer / rms: the same network and parameters)
JAXNORM_ONLY = ("dyt", "derf", "add_layer", "add_rms")
FUSED = ("add_layer", "add_rms")
# Flags that may differ between a run and the run that resumes it.
NOT_RESUME_FLAGS = ("out", "max_seconds", "stop_after", "checkpoint_dir", "norm", "kind")


def corpus_files(stdlib: str | Path | None = None) -> list[Path]:
    """The standard library's top-level public modules, sorted by name."""
    root = Path(stdlib if stdlib is not None else sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.glob("*.py") if not p.name.startswith("_"))


@functools.cache  # built once per process (1-2 s)
def build_corpus(stdlib: str | Path | None = None) -> str:
    """The docstrings of :func:`corpus_files`, in file order and ``ast.walk`` order, joined by blank lines."""
    docs = []
    for path in corpus_files(stdlib):
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError):  # a module this Python cannot parse (none in CPython's own)
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node, clean=True)
                if doc:
                    docs.append(doc)
    return "\n\n".join(docs)


def encode(text: str) -> np.ndarray:
    """Character ids (int32): ``ALPHABET[i]`` is ``i + 1``, anything else is ``UNKNOWN`` (0)."""
    lut = np.full(128, UNKNOWN, np.int32)
    lut[[ord(c) for c in ALPHABET]] = np.arange(1, VOCAB_SIZE, dtype=np.int32)
    codes = np.frombuffer(text.encode("utf-32-le"), np.uint32)
    return np.where(codes < 128, lut[np.minimum(codes, 127)], UNKNOWN).astype(np.int32)


def decode(ids) -> str:
    return "".join(ALPHABET[i - 1] if i != UNKNOWN else "\N{REPLACEMENT CHARACTER}" for i in np.asarray(ids))


def split(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation): the validation split is the last ``VAL_FRACTION`` of the text."""
    cut = len(ids) - int(len(ids) * VAL_FRACTION)
    return ids[:cut], ids[cut:]


def unigram_bpc(train_ids, val_ids, vocab_size: int = VOCAB_SIZE, smoothing: float = 1.0) -> float:
    """Bits per character of ``val_ids`` under the character frequencies of ``train_ids`` (each count plus
    ``smoothing``, so that a character unseen in training has a finite cost): the baseline a model must beat."""
    counts = np.bincount(np.asarray(train_ids), minlength=vocab_size).astype(np.float64) + smoothing
    return float(-np.log2(counts[np.asarray(val_ids)] / counts.sum()).mean())


class Block(nnx.Module):
    """Pre-norm Transformer block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, d_model: int, heads: int, norm_cls, *, rngs: nnx.Rngs):
        self.attn_norm = norm_cls(d_model, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(heads, d_model, decode=False, rngs=rngs)
        self.mlp_norm = norm_cls(d_model, rngs=rngs)
        self.mlp_in = nnx.Linear(d_model, 4 * d_model, rngs=rngs)
        self.mlp_out = nnx.Linear(4 * d_model, d_model, rngs=rngs)

    def __call__(self, x, mask):
        x = x + self.attn(self.attn_norm(x), mask=mask)
        return x + self.mlp_out(nnx.gelu(self.mlp_in(self.mlp_norm(x))))

    def mlp(self, y):
        return self.mlp_out(nnx.gelu(self.mlp_in(y)))


class CharTransformer(nnx.Module):
    """Character-level pre-norm Transformer: ``(batch, seq) int ids -> (batch, seq, VOCAB_SIZE) logits``."""

    def __init__(
        self, *, norm: str, kind: str, d_model: int, layers: int, heads: int, seq_len: int, rngs: nnx.Rngs
    ):
        norm_cls = getattr(NORM_MODULES[norm], NORM_CLASSES[kind])  # the one difference between --norm values
        self.fused = kind in FUSED
        embed_init = nnx.initializers.normal(0.02)
        self.tokens = nnx.Embed(VOCAB_SIZE, d_model, embedding_init=embed_init, rngs=rngs)
        self.positions = nnx.Embed(seq_len, d_model, embedding_init=embed_init, rngs=rngs)
        self.blocks = nnx.List([Block(d_model, heads, norm_cls, rngs=rngs) for _ in range(layers)])
        self.final_norm = norm_cls(d_model, rngs=rngs)
        self.head = nnx.Linear(d_model, VOCAB_SIZE, rngs=rngs)

    def __call__(self, ids):
        seq = ids.shape[1]
        x = self.tokens(ids) + self.positions(jnp.arange(seq))[None]
        mask = nnx.make_causal_mask(ids)  # (batch, 1, seq, seq): position t sees positions <= t
        if self.fused:  # the same network, each residual add fused into the norm after it: (y, stream) pairs
            norms = [b.attn_norm for b in self.blocks][1:] + [self.final_norm]
            y, stream = self.blocks[0].attn_norm(x)  # the first layer: the stream starts at x
            for block, next_norm in zip(self.blocks, norms, strict=True):
                y, stream = block.mlp_norm(block.attn(y, mask=mask), stream)
                y, stream = next_norm(block.mlp(y), stream)
            return self.head(y)
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.final_norm(x))


def init_model(norm: str, kind: str, args) -> CharTransformer:
    return CharTransformer(
        norm=norm,
        kind=kind,
        d_model=args.d_model,
        layers=args.layers,
        heads=args.heads,
        seq_len=args.seq_len,
        rngs=nnx.Rngs(args.seed),
    )


def make_optimizer(lr: float, total_steps: int):
    warmup = max(1, total_steps // 10)
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total_steps, warmup + 1), lr / 10)
    # Weight decay on the kernels and embeddings (ndim >= 2), not on the biases nor the norms' scale and bias.
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
    return optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(schedule, b2=0.99, weight_decay=WEIGHT_DECAY, mask=decay_mask),
    )


def make_steps(graphdef, optimizer, train_ids, seed: int, batch_size: int, seq_len: int):
    """The jitted train step ``(params, opt_state, step) -> (params, opt_state, loss)`` and evaluation
    ``(params, windows) -> summed loss``; losses in nats per character."""
    data_key = jax.random.key(seed + 1)  # not the init's seed: batches and weights drawn independently
    train_ids = jnp.asarray(train_ids)
    offsets = jnp.arange(seq_len + 1)

    def batch(step):
        # The data order is a pure function of (seed, step): resuming at step s needs nothing else.
        starts = jax.random.randint(
            jax.random.fold_in(data_key, step), (batch_size, 1), 0, train_ids.shape[0] - seq_len
        )
        windows = train_ids[starts + offsets[None]]
        return windows[:, :-1], windows[:, 1:]

    def loss_fn(params, x, y):
        logits = nnx.merge(graphdef, params)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y)

    @jax.jit
    def train_step(params, opt_state, step):
        x, y = batch(step)
        loss, grads = jax.value_and_grad(lambda p: loss_fn(p, x, y).mean())(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def eval_sum(params, windows):
        return loss_fn(params, windows[:, :-1], windows[:, 1:]).sum()

    return train_step, eval_sum


def val_windows(val_ids: np.ndarray, batch_size: int, seq_len: int, max_batches: int) -> np.ndarray:
    """Consecutive windows of ``seq_len + 1`` ids (overlapping by one: each character is predicted once),
    ``(batches, batch_size, seq_len + 1)``; the tail that does not fill a whole batch is left out."""
    n = (len(val_ids) - 1) // seq_len
    n_batches = n // batch_size if max_batches <= 0 else min(max_batches, n // batch_size)
    if n_batches == 0:
        raise ValueError(
            f"the validation split ({len(val_ids)} characters) holds no batch of {batch_size} windows of {seq_len}"
        )
    starts = np.arange(n_batches * batch_size) * seq_len
    windows = val_ids[starts[:, None] + np.arange(seq_len + 1)[None]]
    return windows.reshape(n_batches, batch_size, seq_len + 1)


def evaluate(eval_sum, params, windows) -> float:
    """Validation bits per character."""
    total = sum(float(eval_sum(params, w)) for w in windows)
    return total / (windows.shape[0] * windows.shape[1] * (windows.shape[2] - 1)) / math.log(2)


def resume_config(args) -> dict:
    return {k: v for k, v in vars(args).items() if k not in NOT_RESUME_FLAGS}


def open_checkpoints(directory: Path):
    import orbax.checkpoint as ocp  # only with --checkpoint-dir

    options = ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
    return ocp.CheckpointManager(directory.resolve(), options=options)


def save_checkpoint(mngr, step: int, params, opt_state, meta: dict):
    import orbax.checkpoint as ocp

    tree = {"params": params, "opt_state": opt_state, "step": np.asarray(step, np.int64)}
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)))


def restore_checkpoint(mngr, params, opt_state, config: dict | None = None):
    """``(step, params, opt_state, meta)`` of the latest checkpoint; the fresh ``params``/``opt_state`` give the
    tree structure, shapes and dtypes to restore into. With ``config``, the checkpoint's JSON part is read first
    and a checkpoint of other flags raises ``ValueError`` before any array is read."""
    import orbax.checkpoint as ocp

    step = mngr.latest_step()
    meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    if config is not None and meta["config"] != config:
        differ = sorted(k for k in config.keys() | meta["config"].keys() if config.get(k) != meta["config"].get(k))
        saved, now = ({k: c.get(k) for k in differ} for c in (meta["config"], config))
        raise ValueError(
            f"{mngr.directory} holds a checkpoint of other flags ({saved}, now {now}): give another "
            "--checkpoint-dir, or the same flags to resume it"
        )
    abstract = jax.tree.map(
        ocp.utils.to_shape_dtype_struct,
        {"params": params, "opt_state": opt_state, "step": np.asarray(0, np.int64)},
    )
    state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))).state
    assert int(state["step"]) == step == meta["step"], (int(state["step"]), step, meta["step"])
    return step, state["params"], state["opt_state"], meta


def train(norm: str, kind: str, data, args):
    """Trains one model; returns ``(params, opt_state, history)``."""
    name = f"{norm}-{kind}"
    train_ids, windows = data
    model = init_model(norm, kind, args)
    graphdef, params = nnx.split(model, nnx.Param)  # the model holds nothing but params (no dropout rng)
    optimizer = make_optimizer(args.lr, args.steps)
    opt_state = optimizer.init(params)
    train_step, eval_sum = make_steps(graphdef, optimizer, train_ids, args.seed, args.batch_size, args.seq_len)
    history = {"step": [], "train_bpc": [], "val_bpc": [], "seconds": []}
    step, elapsed = 0, 0.0

    mngr = None
    if args.checkpoint_dir is not None:
        mngr = open_checkpoints(args.checkpoint_dir / name)
        if mngr.latest_step() is not None:
            try:
                step, params, opt_state, meta = restore_checkpoint(mngr, params, opt_state, resume_config(args))
            except ValueError:
                mngr.close()
                raise
            history, elapsed = meta["history"], meta["train_seconds"]
            tqdm.write(f"{name}: resumed from step {step} of {args.checkpoint_dir / name}")

    def checkpoint():
        if mngr is not None and (mngr.latest_step() or 0) < step:
            meta = {"config": resume_config(args), "history": history, "train_seconds": elapsed, "step": step}
            save_checkpoint(mngr, step, params, opt_state, json.loads(json.dumps(meta)))  # a copy: saved async

    stop = args.steps if args.stop_after is None else min(args.steps, args.stop_after)
    start = time.perf_counter() - elapsed
    first_step, first_time, eval_seconds = step, None, 0.0
    losses = []
    bar = tqdm(total=args.steps, initial=step, desc=f"{name:>13}", unit="step")
    while step < stop:
        params, opt_state, loss = train_step(params, opt_state, jnp.int32(step))
        # Wait for the step (it depends on the previous one anyway): the bar, --max-seconds and the steps per
        # second then count computed steps, not steps queued by JAX's asynchronous dispatch.
        losses.append(loss.block_until_ready())
        step += 1
        bar.update()
        if first_time is None:  # after the first step (its compile): the clock of steps per second
            first_time = time.perf_counter()
        out_of_time = args.max_seconds is not None and time.perf_counter() - start > args.max_seconds
        if step % args.eval_every == 0 or step == stop or out_of_time:
            eval_start = time.perf_counter()
            elapsed = eval_start - start
            history["step"].append(step)
            history["train_bpc"].append(float(np.mean(jax.device_get(losses))) / math.log(2))
            history["val_bpc"].append(evaluate(eval_sum, params, windows))
            history["seconds"].append(elapsed)
            losses = []
            bar.set_postfix(train_bpc=f"{history['train_bpc'][-1]:.3f}", val_bpc=f"{history['val_bpc'][-1]:.3f}")
            checkpoint()
            eval_seconds += time.perf_counter() - eval_start
            if out_of_time:
                break
    bar.close()
    if not history["step"]:  # --steps 0 or --stop-after 0: evaluate the initial model
        history["step"].append(step)
        history["train_bpc"].append(float("nan"))
        history["val_bpc"].append(evaluate(eval_sum, params, windows))
        history["seconds"].append(elapsed)
    if mngr is not None:
        mngr.wait_until_finished()
        mngr.close()
    # Training throughput: the steps after this process's first (which compiles), evaluations left out.
    timed = step - first_step - 1
    if timed > 0:
        history["steps_per_s"] = timed / (time.perf_counter() - first_time - eval_seconds)
    else:
        history["steps_per_s"] = None
    history["final_val_bpc"] = history["val_bpc"][-1]
    history["start_step"] = first_step  # > 0: resumed from a checkpoint of that step
    history["final_step"] = step
    history["train_seconds"] = time.perf_counter() - start
    return params, opt_state, history


def plot(runs, baseline: float, path: Path):
    # A bare Figure on the Agg canvas: no pyplot, no global backend state, no GUI.
    fig = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax_train, ax_val = fig.subplots(1, 2, sharey=True)
    for name, h in runs.items():
        ax_train.plot(h["step"], h["train_bpc"], marker=".", label=name)
        ax_val.plot(h["step"], h["val_bpc"], marker=".", label=f"{name} ({h['final_val_bpc']:.3f})")
    for ax, title in ((ax_train, "training (mean since the last evaluation)"), (ax_val, "validation")):
        ax.axhline(baseline, color="grey", linestyle=":", label=f"unigram ({baseline:.3f})")
        ax.set(title=title, xlabel="step", ylabel="bits per character")
        ax.grid(alpha=0.3)
        ax.legend(title="--norm-kind variant")
    fig.suptitle("character-level Transformer on the standard library's docstrings")
    fig.savefig(path, dpi=120)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--norm",
        nargs="+",
        choices=list(NORM_MODULES),
        default=["jaxnorm"],
        help="where the norm classes come from: flax.nnx or jaxnorm.nnx (default: jaxnorm)",
    )
    parser.add_argument(
        "--kind",
        nargs="+",
        choices=list(NORM_CLASSES),
        default=["layer"],
        help="LayerNorm, RMSNorm, or the normalization-free DyT/Derf in their place (jaxnorm only) (default: layer)",
    )
    parser.add_argument("--steps", type=int, default=800, help="training steps per model (default: 800)")
    parser.add_argument("--batch-size", type=int, default=64, help="sequences per step (default: 64)")
    parser.add_argument("--seq-len", type=int, default=64, help="characters per sequence (default: 64)")
    parser.add_argument("--d-model", type=int, default=128, help="model width (default: 128)")
    parser.add_argument("--layers", type=int, default=2, help="Transformer blocks (default: 2)")
    parser.add_argument("--heads", type=int, default=4, help="attention heads (default: 4)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate (default: 3e-3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of init and batches (default: 0)")
    parser.add_argument("--eval-every", type=int, default=100, help="steps between evaluations (default: 100)")
    parser.add_argument(
        "--eval-batches", type=int, default=0, help="validation batches per evaluation, 0: all (default: 0)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "out",
        help="output directory (default: examples/out)",
    )
    parser.add_argument(
        "--max-seconds", type=float, default=None, help="optional time budget per model, checked per step"
    )
    parser.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="optional: checkpoint there every --eval-every steps, and resume from it",
    )
    parser.add_argument(
        "--stop-after",
        type=int,
        default=None,
        help="optional: stop after this many steps in all (to resume later)",
    )
    args = parser.parse_args(argv)
    if args.d_model % args.heads:
        parser.error("--d-model must be a multiple of --heads")
    return args


def main(argv=None):
    args = parse_args(argv)
    t0 = time.perf_counter()
    text = build_corpus()
    train_ids, val_ids = split(encode(text))
    corpus_seconds = time.perf_counter() - t0
    baseline = unigram_bpc(train_ids, val_ids)
    windows = val_windows(val_ids, args.batch_size, args.seq_len, args.eval_batches)

    runs, trained = {}, {}
    for norm, kind in dict.fromkeys(itertools.product(args.norm, args.kind)):  # each once, in the given order
        if norm != "jaxnorm" and kind in JAXNORM_ONLY:
            print(f"skipping {norm}-{kind}: flax.nnx has no {NORM_CLASSES[kind]} (use --norm jaxnorm)")
            continue
        params, opt_state, runs[f"{norm}-{kind}"] = train(norm, kind, (train_ids, windows), args)
        trained[f"{norm}-{kind}"] = (params, opt_state)

    args.out.mkdir(parents=True, exist_ok=True)
    plot(runs, baseline, args.out / "train_char_lm.png")
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    corpus = {
        "python": platform.python_version(),
        "files": len(corpus_files()),
        "characters": len(text),
        "unknown_fraction": float(np.mean(np.concatenate([train_ids, val_ids]) == UNKNOWN)),
        "train_characters": len(train_ids),
        "val_characters": len(val_ids),
        "val_characters_evaluated": int(windows.shape[0] * windows.shape[1] * (windows.shape[2] - 1)),
        "seconds": corpus_seconds,
    }
    metrics = {
        "config": config,
        "device": str(jax.devices()[0]),
        "corpus": corpus,
        "unigram_bpc": baseline,
        "runs": runs,
    }
    metrics["val_bpc"] = next(iter(runs.values()))["final_val_bpc"]
    (args.out / "char_lm_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"wrote {args.out / 'train_char_lm.png'} and {args.out / 'char_lm_metrics.json'}")

    print(f"unigram_bpc={baseline:.4f}")
    for name, h in runs.items():
        rate = "n/a" if h["steps_per_s"] is None else f"{h['steps_per_s']:.2f}"
        print(f"val_bpc[{name}]={h['final_val_bpc']:.4f} steps_per_s={rate} seconds={h['train_seconds']:.1f}")
    print(f"val_bpc={metrics['val_bpc']:.4f}")
    return {
        **metrics,
        "params": {name: p for name, (p, _) in trained.items()},
        "opt_state": {name: o for name, (_, o) in trained.items()},
    }


if __name__ == "__main__":
    main()
