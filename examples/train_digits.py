"""Train a small CNN with jaxnorm's BatchNorm and LayerNorm on scikit-learn's handwritten digits.

The model is written in the pure style: ``params`` and ``state`` are plain dicts of arrays, convolutions are
``jax.lax.conv_general_dilated`` (NHWC), dense layers are matmuls, and every norm layer is a jaxnorm spec
applied as ``spec.apply(params[name], state[name], h, training=...)``. The jit-compiled train step takes the
BatchNorm moving statistics (``state``) as an input and returns the updated ones::

    params, state, opt_state, metrics = train_step(params, state, opt_state, x, y)

Evaluation runs in inference mode (``training=False``: BatchNorm uses the moving statistics).

Data: ``sklearn.datasets.load_digits()`` (1,797 real 8x8 grey images bundled with scikit-learn, no download),
pixels scaled to [0, 1], a stratified 80/20 train/test split.

Model (``--norm batch``)::

    conv3x3(32)-BN-relu, conv3x3(64)-BN-relu, 2x2 avg pool, conv3x3(64)-BN-relu, flatten,
    dense(128)-LayerNorm-relu, dense(10)

Run (from the repository root)::

    python examples/train_digits.py                          # BatchNorm, the defaults
    python examples/train_digits.py --norm batch layer none  # compare, one plot

Flags:
  --norm {batch,layer,group,none} [...]  'batch': BatchNorm in the conv blocks and LayerNorm in the head;
                     'layer': LayerNorm everywhere (over the channel axis); 'group': GroupNorm (8 groups) in
                     the conv blocks and LayerNorm in the head; 'none': no normalization. Several values
                     train one model each, in turn, from the same seed, and draw them all in one plot
                     (default: batch).
  --epochs N         epochs per model (default 12).
  --batch-size N     mini-batch size; the last partial batch of each epoch is dropped so that the jitted step
                     always sees the same shape (default 64).
  --lr LR            peak learning rate of AdamW (linear warmup for one epoch, then cosine decay to 0;
                     default 3e-3).
  --seed S           seed of the split, the initialization and the shuffling (default 0).
  --out DIR          output directory (default examples/out, next to this script).
  --max-seconds T    optional: stop each model's training after the epoch during which T seconds ran out (in
                     this invocation).
  --checkpoint-dir DIR
                     optional: save an Orbax checkpoint of each model after every epoch in ``DIR/<norm>`` (the
                     two latest kept), and, if that directory holds one, resume from the latest: params, moving
                     statistics, optimizer state, epoch and history are restored, and the run continues bit for
                     bit as if never stopped. A checkpoint of other settings (norm, epochs, batch size, lr,
                     seed) or of another model is refused with a ValueError naming the directory.
  --stop-after-epochs K
                     optional: stop after epoch K of the ``--epochs`` N (the learning-rate schedule still spans
                     N epochs): a deterministic interruption; run again without it to resume from
                     ``--checkpoint-dir``.

Checkpointing is three calls of Orbax (``import orbax.checkpoint as ocp``), with ``tree`` the dict of
``params``, ``state`` and ``opt_state``, and ``abstract`` the same tree of ``jax.ShapeDtypeStruct``::

    mngr = ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(max_to_keep=2))  # absolute path
    mngr.save(epoch, args=ocp.args.StandardSave(tree))  # asynchronous: mngr.wait_until_finished() before exit
    tree = mngr.restore(mngr.latest_step(), args=ocp.args.StandardRestore(abstract))

(the script saves the history and the settings next to the arrays with ``ocp.args.Composite`` and
``ocp.args.JsonSave``). Each epoch's batch order is a pure function of ``(seed, epoch)``, so it is not saved.

Prints a tqdm progress bar per model (on stderr), then on stdout one ``test_accuracy[<norm>]=...`` line per
model when several are compared, and last exactly one line ``test_accuracy=<value>`` (4 decimals): the final
test accuracy, in inference mode, of the first ``--norm`` given.

Writes ``<out>/train_digits.png`` (training loss and test accuracy per epoch, one curve per norm) and
``<out>/metrics.json`` (the configuration and the per-epoch history of every model).

A resumed model prints ``resumed from <DIR>/<norm> after epoch K of N`` on stdout before its progress bar.

``main(argv)`` returns the dict written to metrics.json plus three entries that are not written: ``params``,
``state`` and ``opt_state``, the trained pytrees of each model keyed by norm.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import jaxnorm

CONV_CHANNELS = (32, 64, 64)
HIDDEN = 128
NUM_CLASSES = 10
WEIGHT_DECAY = 1e-4

# BatchNorm momentum: with ~22 steps per epoch the model takes only a few hundred steps in all. The default
# momentum 0.99 averages the batch statistics over the last ~100 steps and starts from mean=0, var=1, so the
# moving statistics lag behind the weights: with 0.99, inference-mode test accuracy (seed 0) is 0.63 after
# one epoch and 0.94 after three. Momentum 0.9 averages over ~10 steps: 0.95 after one epoch and 0.98 after
# three, and as the cosine schedule brings the learning rate to 0 the moving statistics settle on the final
# weights.
#
# scale_constraint='non_neg' (Keras's NonNeg) keeps each channel's scale >= 0, so the sign of a feature belongs
# to the conv kernel alone; jaxnorm.constraints_transform applies it after every optimizer step, as Keras does.
BATCH_NORM = jaxnorm.BatchNorm(momentum=0.9, scale_constraint="non_neg")
LAYER_NORM = jaxnorm.LayerNorm()  # axis=-1: over the channels (NHWC) or the features (dense)
GROUP_NORM = jaxnorm.GroupNorm(num_groups=8)  # 8 groups of 4 or 8 channels, statistics per example


def norm_specs(norm: str):
    """(spec of the conv blocks, spec of the dense head) for a --norm choice; None means no normalization."""
    return {
        "batch": (BATCH_NORM, LAYER_NORM),
        "layer": (LAYER_NORM, LAYER_NORM),
        "group": (GROUP_NORM, LAYER_NORM),
        "none": (None, None),
    }[norm]


def norm_layers(norm: str):
    """The model's norm layers by their key in ``params``: what jaxnorm's train-step helpers need."""
    conv_spec, head_spec = norm_specs(norm)
    if conv_spec is None:
        return {}
    return {**{f"norm{i}": conv_spec for i in range(len(CONV_CHANNELS))}, "norm_head": head_spec}


def init_model(key, norm: str):
    """Returns ``(params, state)``: dicts keyed by layer name. ``state`` holds the norm layers' state only."""
    conv_spec, head_spec = norm_specs(norm)
    he = jax.nn.initializers.he_normal()
    # Separate keys for the conv/dense weights and the norm layers: every --norm starts from the same weights.
    key_weights, key_norms = jax.random.split(key)
    keys, norm_keys = iter(jax.random.split(key_weights, 5)), iter(jax.random.split(key_norms, 4))
    params, state = {}, {}

    def add_norm(name, spec, shape):  # the shapes of params and state depend on the last (feature) axis only
        if spec is not None:
            params[name], state[name] = spec.init(next(norm_keys), jax.ShapeDtypeStruct(shape, jnp.float32))

    c_in = 1
    for i, c_out in enumerate(CONV_CHANNELS):
        params[f"conv{i}"] = {"w": he(next(keys), (3, 3, c_in, c_out)), "b": jnp.zeros(c_out)}  # HWIO kernel
        add_norm(f"norm{i}", conv_spec, (1, 1, 1, c_out))
        c_in = c_out
    flat = 4 * 4 * CONV_CHANNELS[-1]  # 8x8 -> 4x4 after the pool
    params["dense0"] = {"w": he(next(keys), (flat, HIDDEN)), "b": jnp.zeros(HIDDEN)}
    add_norm("norm_head", head_spec, (1, HIDDEN))
    params["dense1"] = {"w": he(next(keys), (HIDDEN, NUM_CLASSES)), "b": jnp.zeros(NUM_CLASSES)}
    return params, state


# Biases are broadcast explicitly (the tests run with jax_numpy_rank_promotion='raise').
def conv3x3(p, h):
    h = jax.lax.conv_general_dilated(h, p["w"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return h + p["b"].reshape(1, 1, 1, -1)


def dense(p, h):
    return h @ p["w"] + p["b"].reshape(1, -1)


def avg_pool2x2(h):
    n, height, width, c = h.shape
    return h.reshape(n, height // 2, 2, width // 2, 2, c).mean(axis=(2, 4))


def model(params, state, x, *, norm: str, training: bool):
    """Returns ``(logits, new_state)``; ``training`` picks batch (True) or moving (False) statistics."""
    conv_spec, head_spec = norm_specs(norm)
    new_state = {}

    def normalize(name, spec, h):
        if spec is None:
            return h
        h, new_state[name] = spec.apply(params[name], state[name], h, training=training)
        return h

    h = x
    for i in range(len(CONV_CHANNELS)):
        h = jax.nn.relu(normalize(f"norm{i}", conv_spec, conv3x3(params[f"conv{i}"], h)))
        if i == 1:
            h = avg_pool2x2(h)
    h = h.reshape(h.shape[0], -1)
    h = jax.nn.relu(normalize("norm_head", head_spec, dense(params["dense0"], h)))
    return dense(params["dense1"], h), new_state


def make_optimizer(params, norm: str, lr: float, total_steps: int, warmup_steps: int):
    # At most half the run warms up, so that a one-epoch run still decays (optax needs decay steps > 0).
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, min(warmup_steps, total_steps // 2), total_steps)
    layers = norm_layers(norm)
    # Decay the conv/dense kernels only: not their biases, nor any norm layer's scale and bias (adamw applies the
    # mask with optax.masked). Then project the norm params onto their constraints, as Keras does after a step.
    decay_mask = jaxnorm.decay_mask(layers, params, others=lambda path, leaf: path[-1] == "w")
    return optax.chain(
        optax.adamw(schedule, weight_decay=WEIGHT_DECAY, mask=decay_mask),
        jaxnorm.constraints_transform(layers),
    )


def make_steps(norm: str, optimizer):
    """The jitted train step and evaluation for one --norm choice."""

    def loss_fn(params, state, x, y, training):
        logits, new_state = model(params, state, x, norm=norm, training=training)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        accuracy = (logits.argmax(axis=-1) == y).mean()
        return loss, (new_state, accuracy)

    # `state` (the moving statistics) goes in and the updated state comes out: it is an auxiliary output of the
    # loss, not differentiated. `training` is a Python bool fixed at trace time, not a jit argument.
    @jax.jit
    def train_step(params, state, opt_state, x, y):
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (new_state, accuracy)), grads = grad_fn(params, state, x, y, True)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, new_state, opt_state, {"loss": loss, "accuracy": accuracy}

    @jax.jit
    def evaluate(params, state, x, y):
        loss, (_, accuracy) = loss_fn(params, state, x, y, False)  # inference: the moving statistics
        return {"loss": loss, "accuracy": accuracy}

    return train_step, evaluate


def load_data(seed: int):
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]  # (1797, 8, 8, 1), values 0..16 -> [0, 1]
    y = digits.target.astype(np.int32)
    return train_test_split(x, y, test_size=0.2, stratify=y, random_state=seed)


def epoch_order(seed: int, epoch: int, num_train: int):
    """The batch order of epoch ``epoch`` (0-based): a pure function of (seed, epoch), so a resumed run needs no
    saved generator state. It is the (epoch + 1)-th permutation drawn from ``default_rng(seed)``, the order an
    uninterrupted run draws (train_data_parallel.py draws the same)."""
    rng = np.random.default_rng(seed)
    for _ in range(epoch):  # a few microseconds each
        rng.permutation(num_train)
    return rng.permutation(num_train)


# Checkpoints (--checkpoint-dir): Orbax, imported only when asked for. Step k of the CheckpointManager is the state
# after k epochs. Item "state" holds the arrays (params, moving statistics, optimizer state); item "meta" (JSON)
# the settings the run was started with, so a mismatch is refused, and the history, so metrics.json and the plot
# of a resumed run are those of an uninterrupted one.
def checkpoint_manager(directory: Path):
    import orbax.checkpoint as ocp

    # Orbax wants an absolute path. Step k goes to directory/k, written under a temporary name and renamed when
    # complete, so a run killed mid-save leaves no half checkpoint for latest_step() to find.
    # The item handlers let restore_checkpoint read what a checkpoint holds (item_metadata) before restoring it.
    options = ocp.CheckpointManagerOptions(max_to_keep=2)
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(directory.resolve(), options=options, item_handlers=handlers)


def save_checkpoint(manager, epochs_done: int, tree, meta):
    import orbax.checkpoint as ocp

    # Asynchronous: written in the background while training goes on (jax arrays are immutable, and the caller
    # passes a copy of the history it keeps appending to); closing the manager waits for it.
    items = ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta))
    manager.save(epochs_done, args=items)


def restore_checkpoint(manager, template, run_config):
    """``(tree, meta)`` of the latest checkpoint in ``manager``'s directory, or None when it holds none.

    ``template`` is the freshly initialized tree: the structure, shapes and dtypes to restore into. A checkpoint of
    another configuration or model raises a ValueError naming the directory."""
    import orbax.checkpoint as ocp

    step = manager.latest_step()
    if step is None:
        return None
    where = f"{manager.directory}/{step}"
    hint = "pass another --checkpoint-dir to start afresh"
    try:
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        array_metadata = manager.item_metadata(step).state.tree
    except Exception as e:
        raise ValueError(f"cannot read the checkpoint in {where} (not one this script wrote?): {e}") from e
    config = meta.get("config") if isinstance(meta, dict) else None
    if config != run_config:
        diff = isinstance(config, dict) and ", ".join(
            f"{k}={config.get(k)!r} (now {v!r})" for k, v in run_config.items() if config.get(k) != v
        )
        diff = diff or f"its settings are {config!r:.200}"
        raise ValueError(
            f"the checkpoint in {where} was written by another run: {diff}; resume with its settings, or {hint}"
        )

    # The arrays' names, shapes and dtypes, from the checkpoint's metadata, compared before Orbax reads any array
    # (Orbax would refuse a mismatch too, but a shape found wrong while reading fails noisily, once per array).
    def arrays(tree):
        flat = ocp.tree.to_flat_dict(tree)
        return {
            ".".join(k): f"{getattr(v, 'dtype', type(v).__name__)}{list(getattr(v, 'shape', ()))}"
            for k, v in flat.items()
        }

    saved, wanted = arrays(array_metadata), arrays(template)
    if saved != wanted:
        diff = [
            f"{k}: {saved.get(k, 'absent')} in the checkpoint, {wanted.get(k, 'absent')} in the model"
            for k in sorted({*saved, *wanted}, key=lambda k: (k.startswith("opt_state"), k))  # params first
            if saved.get(k) != wanted.get(k)
        ]
        more = "; ..." if len(diff) > 3 else ""
        raise ValueError(
            f"the checkpoint in {where} does not fit the {run_config['norm']!r} model, {len(diff)} arrays differ "
            f"({'; '.join(diff[:3])}{more}); was it written by another version of the model? {hint}"
        )

    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    try:
        tree = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))).state
    except Exception as e:  # anything else Orbax finds (it names the mismatching leaves but not the directory)
        raise ValueError(f"the checkpoint in {where} does not fit the {run_config['norm']!r} model: {e}") from e
    return tree, meta


def train(norm: str, data, args):
    """Trains one model; returns ``(params, state, opt_state, history)``."""
    x_train, x_test, y_train, y_test = data
    steps_per_epoch = len(x_train) // args.batch_size  # drop the last partial batch: one shape, one compile
    params, state = init_model(jax.random.key(args.seed), norm)
    optimizer = make_optimizer(params, norm, args.lr, args.epochs * steps_per_epoch, steps_per_epoch)
    opt_state = optimizer.init(params)
    train_step, evaluate = make_steps(norm, optimizer)
    history = {"train_loss": [], "train_accuracy": [], "test_loss": [], "test_accuracy": []}
    first_epoch, seconds_before = 0, 0.0
    run_config = {"norm": norm, **{k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "seed")}}
    last_epoch = args.epochs if args.stop_after_epochs is None else min(args.epochs, args.stop_after_epochs)

    # Leaving the `with` waits for the last asynchronous save and closes the manager (also on an exception).
    ckpt_dir = None if args.checkpoint_dir is None else args.checkpoint_dir / norm  # one directory per norm
    with contextlib.nullcontext() if ckpt_dir is None else checkpoint_manager(ckpt_dir) as manager:
        restored = None
        if manager is not None:
            template = {"params": params, "state": state, "opt_state": opt_state}  # structure, shapes, dtypes
            restored = restore_checkpoint(manager, template, run_config)
        if restored is not None:
            tree, meta = restored
            params, state, opt_state = tree["params"], tree["state"], tree["opt_state"]
            first_epoch, seconds_before = meta["epochs_done"], meta["seconds"]
            history = {k: list(meta["history"][k]) for k in history}
            print(f"resumed from {manager.directory} after epoch {first_epoch} of {args.epochs}", flush=True)

        start = time.perf_counter()
        epochs = range(first_epoch, last_epoch)
        bar = tqdm(epochs, desc=f"{norm:>5}", unit="epoch", initial=first_epoch, total=args.epochs)
        for epoch in bar:
            order = epoch_order(args.seed, epoch, len(x_train))
            step_metrics = []
            for b in range(steps_per_epoch):
                idx = order[b * args.batch_size : (b + 1) * args.batch_size]
                params, state, opt_state, m = train_step(params, state, opt_state, x_train[idx], y_train[idx])
                step_metrics.append(m)
            step_metrics = jax.device_get(step_metrics)
            history["train_loss"].append(float(np.mean([m["loss"] for m in step_metrics])))
            history["train_accuracy"].append(float(np.mean([m["accuracy"] for m in step_metrics])))
            test = jax.device_get(evaluate(params, state, x_test, y_test))
            history["test_loss"].append(float(test["loss"]))
            history["test_accuracy"].append(float(test["accuracy"]))
            bar.set_postfix(loss=f"{history['train_loss'][-1]:.4f}", test_acc=f"{test['accuracy']:.4f}")
            elapsed = time.perf_counter() - start
            if manager is not None:
                # Python floats round-trip through JSON exactly: a resumed history is bit for bit this one.
                meta = {"config": run_config, "epochs_done": epoch + 1, "seconds": seconds_before + elapsed}
                tree = {"params": params, "state": state, "opt_state": opt_state}
                history_copy = {k: list(v) for k, v in history.items()}  # saved in the background as this grows
                save_checkpoint(manager, epoch + 1, tree, {**meta, "history": history_copy})
            if args.max_seconds is not None and elapsed > args.max_seconds:
                break
        bar.close()
    history["seconds"] = seconds_before + time.perf_counter() - start
    history["final_test_accuracy"] = history["test_accuracy"][-1]
    return params, state, opt_state, history


def plot(runs, path: Path):
    # A bare Figure on the Agg canvas: no pyplot, no global backend state, no GUI.
    fig = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(1, 2)
    for norm, h in runs.items():
        epochs = np.arange(1, len(h["train_loss"]) + 1)
        ax_loss.plot(epochs, h["train_loss"], marker=".", label=norm)
        ax_acc.plot(epochs, h["test_accuracy"], marker=".", label=f"{norm} ({h['final_test_accuracy']:.4f})")
    ax_loss.set(title="training loss", xlabel="epoch", yscale="log")
    lowest = min(min(h["test_accuracy"]) for h in runs.values())
    ax_acc.set(title="test accuracy (inference mode)", xlabel="epoch", ylim=(min(0.8, lowest - 0.02), 1.0))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(title="--norm")
    fig.suptitle("CNN on sklearn digits (8x8)")
    fig.savefig(path, dpi=120)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--norm",
        nargs="+",
        choices=["batch", "layer", "group", "none"],
        default=["batch"],
        help="normalization; several train one model each and share the plot (default: batch)",
    )
    parser.add_argument("--epochs", type=int, default=12, help="epochs per model (default: 12)")
    parser.add_argument("--batch-size", type=int, default=64, help="mini-batch size (default: 64)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate (default: 3e-3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of split, init and shuffling (default: 0)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "out",
        help="output directory (default: examples/out)",
    )
    parser.add_argument(
        "--max-seconds", type=float, default=None, help="optional time budget per model, checked per epoch"
    )
    parser.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="optional: an Orbax checkpoint per epoch in DIR/<norm>; resume from the latest one found there",
    )
    parser.add_argument(
        "--stop-after-epochs",
        type=int,
        default=None,
        metavar="K",
        help="optional: stop after epoch K of the --epochs (the schedule still spans them all), to resume later",
    )
    args = parser.parse_args(argv)
    if args.stop_after_epochs is not None and args.stop_after_epochs < 1:
        parser.error("--stop-after-epochs must be at least 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    data = load_data(args.seed)
    runs, trained = {}, {}
    for norm in dict.fromkeys(args.norm):  # each choice once, in the given order
        params, state, opt_state, runs[norm] = train(norm, data, args)
        trained[norm] = (params, state, opt_state)

    args.out.mkdir(parents=True, exist_ok=True)
    plot(runs, args.out / "train_digits.png")
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    metrics = {"config": config, "device": str(jax.devices()[0]), "runs": runs}
    metrics["test_accuracy"] = runs[args.norm[0]]["final_test_accuracy"]
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"wrote {args.out / 'train_digits.png'} and {args.out / 'metrics.json'}")

    if len(runs) > 1:
        for norm, h in runs.items():
            print(f"test_accuracy[{norm}]={h['final_test_accuracy']:.4f}")
    print(f"test_accuracy={metrics['test_accuracy']:.4f}")
    return {
        **metrics,
        "params": {norm: p for norm, (p, _, _) in trained.items()},
        "state": {norm: s for norm, (_, s, _) in trained.items()},
        "opt_state": {norm: o for norm, (_, _, o) in trained.items()},
    }


if __name__ == "__main__":
    main()
