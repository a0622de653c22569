"""Smoke test of examples/train_digits.py: short runs in-process (the full run is documented in its README), and
its Orbax checkpoints (--checkpoint-dir): a stopped and resumed run equals an uninterrupted one bit for bit, and a
checkpoint of another run is refused."""

import importlib.util
import json
import re
from pathlib import Path

import jax
import numpy as np
import pytest

pytestmark = pytest.mark.slow  # training runs of the example: the heavy tier (`pytest -m slow`), run by .ci/run

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_digits.py"


def load_example():
    # examples/ is not a package: import the script from its path.
    spec = importlib.util.spec_from_file_location("train_digits", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_digits_smoke(tmp_path, capsys):
    example = load_example()
    ckpt = tmp_path / "ckpt"
    argv = ["--epochs", "2", "--norm", "batch", "none", "--seed", "0", "--out", str(tmp_path)]
    result = example.main([*argv, "--checkpoint-dir", str(ckpt)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert not any(line.startswith("resumed") for line in lines), lines
    # An Orbax checkpoint per epoch, in one directory per norm (test_train_digits_resumes_bit_identically resumes).
    for norm in ("batch", "none"):
        assert sorted(p.name for p in (ckpt / norm).iterdir()) == ["1", "2"], norm

    # The last printed line is the first --norm's accuracy; one line per norm before it.
    assert re.fullmatch(r"test_accuracy=\d\.\d{4}", lines[-1]), lines
    assert re.fullmatch(r"test_accuracy\[none\]=\d\.\d{4}", lines[-2]), lines
    assert float(lines[-1].split("=")[1]) == round(result["test_accuracy"], 4)
    assert f"wrote {tmp_path / 'train_digits.png'} and {tmp_path / 'metrics.json'}" in lines, lines

    # Files written, and metrics.json holds what main returned (minus the pytrees).
    assert (tmp_path / "train_digits.png").stat().st_size > 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["test_accuracy"] == result["test_accuracy"]
    assert set(metrics["runs"]) == {"batch", "none"}
    for history in metrics["runs"].values():
        assert len(history["test_accuracy"]) == len(history["train_loss"]) == 2

    # A real number well above chance (0.1) after two epochs, in inference mode.
    accuracy = result["test_accuracy"]
    assert np.isfinite(accuracy) and 0.5 < accuracy <= 1.0

    # The moving statistics were threaded through the jitted train step and updated.
    _, init_state = example.init_model(jax.random.key(0), "batch")
    state = result["state"]["batch"]
    assert set(state) == set(init_state) == {"norm0", "norm1", "norm2", "norm_head"}
    assert state["norm_head"] == {}  # LayerNorm has no state
    for name in ("norm0", "norm1", "norm2"):
        assert np.all(np.isfinite(state[name]["mean"])) and np.all(np.isfinite(state[name]["var"]))
        assert not np.allclose(state[name]["mean"], init_state[name]["mean"]), name
        assert not np.allclose(state[name]["var"], init_state[name]["var"]), name
    assert result["state"]["none"] == {}

    # The non_neg constraint on the BatchNorm scales held through training (that the projection actually acts is
    # shown with a forced step in test_example_optimizer_projects_and_masks_decay).
    params = result["params"]["batch"]
    for name in ("norm0", "norm1", "norm2"):
        assert float(np.min(params[name]["scale"])) >= 0.0, name


def test_example_optimizer_projects_and_masks_decay():
    example = load_example()
    params, _ = example.init_model(jax.random.key(0), "batch")
    optimizer = example.make_optimizer(params, "batch", lr=1.0, total_steps=10, warmup_steps=1)
    opt_state = optimizer.init(params)
    grads = jax.tree.map(np.ones_like, params)  # drives every param down
    for _ in range(3):
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
    assert float(np.min(params["norm0"]["scale"])) == 0.0  # projected onto >= 0, as Keras's NonNeg
    assert float(np.min(params["conv0"]["w"])) < 0.0  # the unconstrained weights moved below 0


def test_group_norm_model_trains_and_is_per_example(tmp_path):
    example = load_example()
    result = example.main(["--epochs", "2", "--norm", "group", "--seed", "0", "--out", str(tmp_path)])
    assert result["test_accuracy"] > 0.9  # two epochs; 12 give 0.99
    params, state = result["params"]["group"], result["state"]["group"]
    assert state["norm0"] == {} and params["norm0"]["scale"].shape == (32,)
    # GroupNorm uses no batch statistics: training and inference agree, and each example is on its own.
    x = jax.random.uniform(jax.random.key(1), (5, 8, 8, 1))
    train, _ = example.model(params, state, x, norm="group", training=True)
    infer, _ = example.model(params, state, x, norm="group", training=False)
    np.testing.assert_allclose(train, infer, rtol=1e-6)
    one, _ = example.model(params, state, x[:1], norm="group", training=False)
    np.testing.assert_allclose(one, infer[:1], rtol=1e-5, atol=1e-5)


def run_example(example, tmp_path, name, *flags):
    """main() of a 3-epoch BatchNorm run writing into tmp_path/name."""
    return example.main(["--epochs", "3", "--norm", "batch", "--seed", "0", "--out", str(tmp_path / name), *flags])


def test_train_digits_resumes_bit_identically(tmp_path, capsys):
    example = load_example()
    ckpt = tmp_path / "ckpt"
    reference = run_example(example, tmp_path, "reference")  # uninterrupted, no checkpoints
    stopped = run_example(example, tmp_path, "stopped", "--checkpoint-dir", str(ckpt), "--stop-after-epochs", "1")

    def steps():  # one Orbax checkpoint per epoch, named by the epochs done
        return sorted(p.name for p in (ckpt / "batch").iterdir())

    assert sorted(p.name for p in ckpt.iterdir()) == ["batch"]  # one directory per norm
    assert steps() == ["1"]
    assert len(stopped["runs"]["batch"]["test_accuracy"]) == 1
    capsys.readouterr()

    resumed = run_example(example, tmp_path, "resumed", "--checkpoint-dir", str(ckpt))
    lines = capsys.readouterr().out.strip().splitlines()
    assert f"resumed from {ckpt.resolve() / 'batch'} after epoch 1 of 3" in lines, lines
    assert steps() == ["2", "3"]  # max_to_keep=2
    for step in steps():
        assert {p.name for p in (ckpt / "batch" / step).iterdir()} >= {"state", "meta"}, step

    # The resumed run continued exactly where the uninterrupted one went: every leaf bit for bit.
    for key in ("params", "state", "opt_state"):
        want, got = reference[key]["batch"], resumed[key]["batch"]
        assert jax.tree.structure(got) == jax.tree.structure(want), key
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape, key
            np.testing.assert_array_equal(a, b, strict=True)
    assert resumed["test_accuracy"] == reference["test_accuracy"]
    runs = ("reference", "resumed")
    # ... and so did the history carried in the checkpoint: metrics.json's runs (but the seconds) and the plot.
    histories = [json.loads((tmp_path / name / "metrics.json").read_text())["runs"]["batch"] for name in runs]
    for history in histories:
        del history["seconds"]
    assert histories[0] == histories[1] and len(histories[0]["train_loss"]) == 3
    plots = [(tmp_path / name / "train_digits.png").read_bytes() for name in runs]
    assert plots[0] == plots[1]

    # Running a finished run again restores it and trains no further.
    again = run_example(example, tmp_path, "again", "--checkpoint-dir", str(ckpt))
    assert f"resumed from {ckpt.resolve() / 'batch'} after epoch 3 of 3" in capsys.readouterr().out
    assert again["runs"]["batch"]["test_accuracy"] == reference["runs"]["batch"]["test_accuracy"]
    assert steps() == ["2", "3"]


def test_checkpoint_of_another_run_is_refused(tmp_path, monkeypatch):
    example = load_example()
    ckpt = tmp_path / "ckpt"
    args = ["--epochs", "2", "--seed", "0", "--out", str(tmp_path / "out"), "--checkpoint-dir", str(ckpt)]

    def write_checkpoint(subdir, model, **config):
        """An epoch-1 checkpoint as the example writes it, of an untrained `model` (no training needed)."""
        params, state = example.init_model(jax.random.key(0), model)
        opt_state = example.make_optimizer(params, model, lr=3e-3, total_steps=44, warmup_steps=22).init(params)
        config = {"norm": model, "epochs": 2, "batch_size": 64, "lr": 3e-3, "seed": 0, **config}
        history = {k: [0.5] for k in ("train_loss", "train_accuracy", "test_loss", "test_accuracy")}
        meta = {"config": config, "epochs_done": 1, "seconds": 1.0, "history": history}
        with example.checkpoint_manager(ckpt / subdir) as manager:
            example.save_checkpoint(manager, 1, {"params": params, "state": state, "opt_state": opt_state}, meta)

    def refused(subdir, message):
        """main() raises a ValueError naming the checkpoint's directory, then `message` (a regex)."""
        where = re.escape(str(ckpt.resolve() / subdir / "1"))
        return pytest.raises(ValueError, match=f"{where}.*{message}")

    # Another --norm's checkpoint (moved into this norm's directory), and one of other settings: the settings
    # saved next to the arrays do not match, and the error says which.
    write_checkpoint("layer", "batch")
    with refused("layer", r"written by another run: norm='batch' \(now 'layer'\)"):
        example.main([*args, "--norm", "layer"])
    write_checkpoint("batch", "batch", epochs=5)
    with refused("batch", r"epochs=5 \(now 2\)"):
        example.main([*args, "--norm", "batch"])

    # The right settings but another model's arrays (other names, or other shapes): refused before Orbax reads
    # an array, never a silent load; the error names the first arrays that differ.
    write_checkpoint("none", "batch", norm="none")  # norm layers with params and moving statistics
    with refused("none", r"does not fit the 'none' model, 30 arrays differ \(params\.norm0\.bias: float32\[32\] "):
        example.main([*args, "--norm", "none"])
    with monkeypatch.context() as patch:
        patch.setattr(example, "HIDDEN", 64)  # a narrower dense head
        write_checkpoint("group", "group")
    with refused("group", r"params\.dense0\.b: float32\[64\] in the checkpoint, float32\[128\] in the model"):
        example.main([*args, "--norm", "group"])
