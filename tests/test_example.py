"""Smoke test of examples/train_digits.py: a short run in-process (the full run is documented in its README)."""

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
    result = example.main(["--epochs", "2", "--norm", "batch", "none", "--seed", "0", "--out", str(tmp_path)])
    lines = capsys.readouterr().out.strip().splitlines()

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
