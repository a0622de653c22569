"""Data-parallel training of the digits CNN with synchronized BatchNorm (``jaxnorm.BatchNorm(axis_name=...)``).

What it shows: the model of ``train_digits.py`` (imported from it, unchanged) trained with ``jax.shard_map``
over a 1-D mesh ``Mesh(jax.devices(), ("data",))``. Each device gets ``global_batch / num_devices`` examples;
the only change to the model is that its BatchNorm spec is ``dataclasses.replace(BATCH_NORM,
axis_name="data")``, so every BatchNorm normalizes with the statistics of the *whole global batch* (one
``all_gather`` of each device's ``(count, mean, M2)``, merged exactly) and updates its moving statistics with
them, identically on every device. The train step computes each device's loss and gradients, averages the
gradients (shard_map's autodiff sums them over the devices; the step divides by the device count) and applies
the same Optax update everywhere, so params and optimizer state stay replicated (``out_specs=P()``). The step
keeps one copy of the moving statistics per device (a leading device axis, ``P("data")``), and the script
asserts at the end that all the devices' copies of the statistics and of the params are bit-identical.

``--single-device-reference`` runs the same number of steps of ``train_digits.make_steps``'s own train step on
ONE device with the whole global batch and no ``axis_name``: the ground truth. The data-parallel run matches it
to float32 rounding: per-step losses, first-step gradient norm, params and moving variances, and the moving means
once the average of the conv bias before each BatchNorm is taken out (``bias_ema`` below: that bias has no true
gradient, and Adam turns its rounding noise into steps of ~0.1 lr that differ with the summation order). The
test ``tests/test_data_parallel.py`` checks all of it after 12 steps, on one host and with two processes.
Over a long run float32 rounding differences grow (after the default 66 steps the variances agree to ~1e-4).

Run (from the repository root)::

    # 8 CPU devices on this machine (--devices creates them: jax_num_cpu_devices):
    python examples/train_data_parallel.py --devices 8 --batch-size 64
    python examples/train_data_parallel.py --single-device-reference --batch-size 64   # the ground truth

    # 2 processes on localhost, 2 CPU devices each: one mesh of 4 devices, each process feeds its half of every
    # global batch (jax.make_array_from_process_local_data); CPU collectives across processes use gloo.
    DP="python examples/train_data_parallel.py --devices 2 --num-processes 2 --coordinator localhost:12345"
    $DP --process-id 0 & $DP --process-id 1; wait

On a GPU or TPU pod the same code runs unchanged: the mesh is every device of every process (``jax.devices()``),
one process per host. Start each host's process with ``--auto-distributed``, which calls
``jax.distributed.initialize()`` with no arguments (Cloud TPU, SLURM, Open MPI and Kubernetes JobSet fill in
the coordinator, process count and id), or give ``--coordinator/--num-processes/--process-id`` explicitly
(``--devices N`` then also passes ``local_device_ids=range(N)``, the accelerators this process uses). The global
batch must be a multiple of the total device count.

Cross-device BatchNorm in the peers:

=================  ==========================================================================================
library            batch statistics across devices
=================  ==========================================================================================
Flax (linen/nnx)   ``axis_name``: ``pmean`` of each device's mean and mean of squares (``E[x^2] - E[x]^2``);
                   each device weighs the same, so with a ``mask`` and unequal valid counts per device the
                   statistics are wrong (not count-weighted).
Keras 3            ``BatchNormalization(synchronized=True)``: only on the TensorFlow backend
                   (``tf.distribute``); on JAX and PyTorch the flag does nothing.
PyTorch            ``nn.SyncBatchNorm``: ``all_gather`` of per-device (mean, invstd, count), count-weighted
                   merge; CUDA process groups (DDP) only.
jaxnorm            ``BatchNorm(axis_name=...)``: one ``all_gather`` of per-device (count, mean, M2), exact
                   count-weighted Chan merge (two-pass, no cancellation); any JAX backend (CPU, GPU, TPU),
                   under ``shard_map``, ``pmap`` or ``vmap``.
=================  ==========================================================================================

Flags:
  --devices N          devices per process: on CPU the number of CPU devices created (``jax_num_cpu_devices``,
                       before any backend use; default 8). On GPU/TPU every device is used; with
                       ``--coordinator`` it is also ``local_device_ids=range(N)`` (set it to the GPUs per host).
  --epochs N           epochs (default 3); the learning-rate schedule spans them as in train_digits.py.
  --batch-size N       GLOBAL mini-batch size, a multiple of the total device count (default 64).
  --lr LR, --seed S    as in train_digits.py (defaults 3e-3, 0).
  --max-steps N        optional: stop after N train steps (the schedule still spans --epochs).
  --max-seconds T      optional: stop after the epoch during which T seconds ran out (decided by process 0 and
                       broadcast, so that all processes take the same number of steps).
  --single-device-reference   the ground truth described above (one device, no axis_name).
  --num-processes P, --process-id I, --coordinator HOST:PORT   multi-process run (``jax.distributed``).
  --auto-distributed   ``jax.distributed.initialize()`` with no arguments (cluster auto-detection).
  --out DIR            output directory (default examples/out).

Prints the loss per epoch, then last exactly one line ``test_accuracy=<value>`` (inference mode, 4 decimals).
Writes ``<out>/<name>.json`` and ``<out>/<name>.params.npz``, where ``<name>`` is ``train_data_parallel``,
``train_data_parallel.p<I>`` (process I of a multi-process run) or ``train_data_parallel_reference``. The JSON
holds the configuration, ``steps``, the per-step ``losses``, ``first_grad_norm``, the final moving statistics
``moving_stats`` (``{layer: {"mean": [...], "var": [...]}}``) and their SHA-256 ``moving_stats_digest``,
``params_digest`` (SHA-256 of the params, in sorted-key order), ``replica_max_abs_diff`` (largest difference
between the devices' copies of the moving statistics and of the params; 0 means bit-identical), ``bias_ema``
(per BatchNorm ``norm<i>``, the exponential average with its momentum of the bias of ``conv<i>`` before it,
over the steps taken) and ``test_accuracy``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
AXIS = "data"


def load_train_digits():
    """Imports train_digits.py (examples/ is not a package) as a private module instance.

    A fresh instance, so that setting its ``BATCH_NORM`` (which ``model`` reads on every call) to a synchronized
    spec affects this script only.
    """
    spec = importlib.util.spec_from_file_location("_train_digits_for_data_parallel", HERE / "train_digits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=8, help="CPU devices per process (default: 8)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs (default: 3)")
    parser.add_argument("--batch-size", type=int, default=64, help="global mini-batch size (default: 64)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate (default: 3e-3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of split, init and shuffling (default: 0)")
    parser.add_argument("--max-steps", type=int, default=None, help="optional: stop after this many steps")
    parser.add_argument("--max-seconds", type=float, default=None, help="optional time budget, checked per epoch")
    parser.add_argument(
        "--single-device-reference",
        action="store_true",
        help="ground truth: one device, the whole global batch, no axis_name",
    )
    parser.add_argument("--num-processes", type=int, default=None, help="multi-process: number of processes")
    parser.add_argument("--process-id", type=int, default=None, help="multi-process: this process's id")
    parser.add_argument("--coordinator", default=None, help="multi-process: coordinator HOST:PORT")
    parser.add_argument(
        "--auto-distributed", action="store_true", help="jax.distributed.initialize() with no arguments"
    )
    parser.add_argument("--out", type=Path, default=HERE / "out", help="output directory (default: examples/out)")
    args = parser.parse_args(argv)
    explicit = (args.num_processes, args.process_id, args.coordinator)
    if any(v is not None for v in explicit) and None in explicit:
        parser.error("--num-processes, --process-id and --coordinator go together")
    if args.single_device_reference and (args.coordinator is not None or args.auto_distributed):
        parser.error("--single-device-reference runs in one process")
    return args


def setup_jax(args):
    """Configures and (for a multi-process run) initializes JAX. Must run before any JAX backend is used."""
    import jax

    jax.config.update("jax_num_cpu_devices", args.devices)  # CPU only; GPUs/TPUs are what the host has
    if args.coordinator is not None or args.auto_distributed:
        # jax 0.10.2 creates the CPU client's cross-process collectives from this flag once jax.distributed is
        # initialized ('gloo' over TCP is its default; 'mpi' needs an MPI launcher). Without them a CPU
        # computation spanning processes cannot run.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        if args.auto_distributed:
            jax.distributed.initialize()
        else:
            jax.distributed.initialize(
                coordinator_address=args.coordinator,
                num_processes=args.num_processes,
                process_id=args.process_id,
                local_device_ids=list(range(args.devices)),
            )
    return jax


def digest(tree) -> str:
    """SHA-256 of a dict pytree of arrays: keys in sorted order, float32 bytes."""
    h = hashlib.sha256()

    def walk(node, prefix):
        for key in sorted(node):
            value = node[key]
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}/")
            else:
                h.update(f"{prefix}{key}".encode())
                h.update(np.ascontiguousarray(np.asarray(value, dtype=np.float32)).tobytes())

    walk(tree, "")
    return h.hexdigest()


def flatten(tree, prefix=""):
    """{"a/b": array} from a nested dict (for np.savez)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = np.asarray(value)
    return out


def local_copy(value) -> np.ndarray:
    """A replicated (possibly multi-process) array's value, from this process's first copy of it."""
    shards = getattr(value, "addressable_shards", None)
    return np.asarray(shards[0].data if shards else value)


def make_loss(td):
    """Per-batch loss of train_digits's model (the same loss as train_digits.make_steps)."""
    import optax

    def loss_fn(params, state, x, y):
        logits, new_state = td.model(params, state, x, norm="batch", training=True)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, (new_state, (logits.argmax(axis=-1) == y).mean())

    return loss_fn


def make_data_parallel_step(jax, td, optimizer, mesh):
    """The jitted shard_map train step: per-device loss, gradients averaged over devices, replicated update.

    ``state`` (the moving statistics) carries a leading device axis (one copy per device, ``P("data")``).
    """
    import optax
    from jax.sharding import PartitionSpec as P

    loss_fn = make_loss(td)

    def step(params, state, opt_state, x, y):
        state = jax.tree.map(lambda v: v[0], state)  # this device's copy
        # This device's loss; shard_map's autodiff sums the gradients of the replicated params over the devices
        # (the transpose of their implicit broadcast), so dividing by the device count gives the gradient of the
        # global batch's mean loss.
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (new_state, accuracy)), grads = grad_fn(params, state, x, y)
        grads = jax.tree.map(lambda g: g / jax.lax.axis_size(AXIS), grads)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics = {
            "loss": jax.lax.pmean(loss, AXIS),
            "accuracy": jax.lax.pmean(accuracy, AXIS),
            "grad_norm": optax.global_norm(grads),
        }
        return params, jax.tree.map(lambda v: v[None], new_state), opt_state, metrics

    sharded = jax.shard_map(
        step,
        mesh=mesh,
        in_specs=(P(), P(AXIS), P(), P(AXIS), P(AXIS)),
        out_specs=(P(), P(AXIS), P(), P()),
    )
    return jax.jit(sharded, donate_argnums=(0, 1, 2))


def batches(args, num_train):
    """(epoch, step, indices) of every global batch, the same order as train_digits.train."""
    steps_per_epoch = num_train // args.batch_size
    rng = np.random.default_rng(args.seed)
    step = 0
    for epoch in range(args.epochs):
        order = rng.permutation(num_train)
        for b in range(steps_per_epoch):
            if args.max_steps is not None and step >= args.max_steps:
                return
            yield epoch, step, order[b * args.batch_size : (b + 1) * args.batch_size]
            step += 1


def run(args):
    jax = setup_jax(args)
    import optax
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    td = load_train_digits()
    reference = args.single_device_reference
    if not reference:
        # The model is train_digits.model unchanged; its BatchNorm now merges statistics over the "data" axis.
        td.BATCH_NORM = dataclasses.replace(td.BATCH_NORM, axis_name=AXIS)

    x_train, x_test, y_train, y_test = td.load_data(args.seed)
    steps_per_epoch = len(x_train) // args.batch_size
    # One compiled init instead of dozens of eagerly compiled initializer ops (5 s on a 2-core CPU).
    init = jax.jit(td.init_model, static_argnums=1)
    params, state = jax.device_get(init(jax.random.key(args.seed), "batch"))
    optimizer = td.make_optimizer(params, "batch", args.lr, args.epochs * steps_per_epoch, steps_per_epoch)
    opt_state = jax.device_get(optimizer.init(params))
    train_step, evaluate = td.make_steps("batch", optimizer)

    if reference:
        devices = jax.devices()[:1]
        grad_fn = jax.grad(make_loss(td), has_aux=True)
        grad_norm = jax.jit(lambda *a: optax.global_norm(grad_fn(*a)[0]))  # the first step's, for comparison
    else:
        devices = jax.devices()
        if args.batch_size % len(devices):
            raise SystemExit(f"--batch-size {args.batch_size} is not a multiple of the {len(devices)} devices")
        mesh = Mesh(np.array(devices), (AXIS,))
        replicated, per_device = NamedSharding(mesh, P()), NamedSharding(mesh, P(AXIS))
        # Works in a multi-process run too: every process builds the same replicated values from the same seed.
        to_global = lambda tree, sharding: jax.tree.map(  # noqa: E731
            lambda v: jax.make_array_from_callback(np.shape(v), sharding, lambda idx: np.asarray(v)[idx]), tree
        )
        params, opt_state = to_global(params, replicated), to_global(opt_state, replicated)
        state = to_global(jax.tree.map(lambda v: np.stack([v] * len(devices)), state), per_device)
        # The rows of each global batch that this process's devices hold (all of them with one process).
        rows = sorted(
            (idx[0].start or 0, idx[0].stop or args.batch_size)
            for idx in per_device.addressable_devices_indices_map((args.batch_size,)).values()
        )
        lo, hi = rows[0][0], rows[-1][1]
        assert hi - lo == sum(b - a for a, b in rows), f"this process's rows are not contiguous: {rows}"
        dp_step = make_data_parallel_step(jax, td, optimizer, mesh)

    process = jax.process_index()
    print(
        f"{'single-device reference' if reference else 'data parallel'}: {len(devices)} device(s) "
        f"({devices[0].platform}), {jax.process_count()} process(es), global batch {args.batch_size}",
        flush=True,
    )
    # The BatchNorm norm{i} normalizes conv{i}'s output, bias included: its moving mean also averages that bias.
    # The bias has no true gradient (the batch mean removes it), only rounding noise, which Adam scales up to
    # steps of ~0.1 * lr in a direction set by the summation order, so the data-parallel and reference runs
    # drift apart there (by ~1e-3 after 20 steps) and nowhere else. Track the same exponential average of
    # each such bias: moving mean - bias_ema depends on the conv kernels and the data only.
    biased = {name: f"conv{name[len('norm') :]}" for name, s in state.items() if s}
    momentum = td.BATCH_NORM.momentum
    bias_ema = {name: np.zeros(np.shape(params[conv]["b"])) for name, conv in biased.items()}
    losses, first_grad_norm, start, last_epoch = [], None, time.perf_counter(), 0
    for epoch, step, idx in batches(args, len(x_train)):
        if epoch != last_epoch:
            print(f"epoch {last_epoch + 1}: loss {np.mean(losses[-steps_per_epoch:]):.4f}", flush=True)
            out_of_time = args.max_seconds is not None and time.perf_counter() - start > args.max_seconds
            # Process 0 decides for everyone: a process that stopped alone would leave the others waiting.
            if bool(multihost_utils.broadcast_one_to_all(np.array(out_of_time))):
                break
            last_epoch = epoch
        for name, conv in biased.items():  # the bias this step's forward pass adds before norm{i}
            bias = local_copy(params[conv]["b"]).astype(np.float64)
            bias_ema[name] = momentum * bias_ema[name] + (1 - momentum) * bias
        x, y = x_train[idx], y_train[idx]
        if reference:
            if step == 0:
                first_grad_norm = float(grad_norm(params, state, x, y))
            params, state, opt_state, m = train_step(params, state, opt_state, x, y)
        else:
            # Each process hands over only its own slice of the global batch.
            x = jax.make_array_from_process_local_data(per_device, x[lo:hi], x.shape)
            y = jax.make_array_from_process_local_data(per_device, y[lo:hi], y.shape)
            params, state, opt_state, m = dp_step(params, state, opt_state, x, y)
            if step == 0:
                first_grad_norm = float(m["grad_norm"])
        losses.append(float(m["loss"]))
    else:
        print(f"epoch {last_epoch + 1}: loss {np.mean(losses[-steps_per_epoch:]):.4f}", flush=True)
    seconds = time.perf_counter() - start

    if reference:
        params, state = jax.device_get((params, state))
        replica_diff = {"moving_stats": 0.0, "params": 0.0}
    else:
        # Every device's copy of the moving statistics, on every process; they must be bit-identical.
        copies = multihost_utils.process_allgather(state, tiled=True)
        state = jax.tree.map(lambda v: v[0], copies)
        stats_diff = max([float(np.max(np.abs(v - v[:1]))) for v in jax.tree.leaves(copies)], default=0.0)
        # Params are replicated: compare the copies on this process's devices (the test compares processes).
        params_diff = max(
            float(np.max(np.abs(np.asarray(s.data) - np.asarray(leaf.addressable_shards[0].data))))
            for leaf in jax.tree.leaves(params)
            for s in leaf.addressable_shards
        )
        params = jax.tree.map(local_copy, params)
        replica_diff = {"moving_stats": stats_diff, "params": params_diff}
        assert stats_diff == 0.0, f"the devices' moving statistics differ by up to {stats_diff}"
        assert params_diff == 0.0, f"the devices' params differ by up to {params_diff}"

    test = jax.device_get(evaluate(params, state, x_test, y_test))  # inference mode, on this process's device
    moving_stats = {
        name: {"mean": np.asarray(s["mean"]).tolist(), "var": np.asarray(s["var"]).tolist()}
        for name, s in state.items()
        if s
    }
    if reference:
        name = "train_data_parallel_reference"
    elif jax.process_count() > 1:
        name = f"train_data_parallel.p{process}"
    else:
        name = "train_data_parallel"
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    result = {
        "config": config,
        "mode": "single_device_reference" if reference else "data_parallel",
        "num_devices": len(devices),
        "num_processes": jax.process_count(),
        "process_id": process,
        "platform": devices[0].platform,
        "steps": len(losses),
        "seconds": seconds,
        "losses": losses,
        "first_grad_norm": first_grad_norm,
        "moving_stats": moving_stats,
        "bias_ema": {name: v.tolist() for name, v in bias_ema.items()},
        "moving_stats_digest": digest({k: v for k, v in state.items() if v}),
        "params_digest": digest(params),
        "replica_max_abs_diff": replica_diff,
        "test_accuracy": float(test["accuracy"]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez(args.out / f"{name}.params.npz", **flatten(params))
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"test_accuracy={result['test_accuracy']:.4f}", flush=True)
    return result


def main(argv=None):
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
