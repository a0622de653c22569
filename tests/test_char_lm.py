"""Smoke tests of examples/train_char_lm.py: tiny in-process runs (the full run is documented in its README).

The corpus builder and the unigram baseline against hand computations; the ``--norm flax``/``jaxnorm`` drop-in
property on the model's variables; an interrupted and resumed run (Orbax checkpoint) bit-identical to an
uninterrupted one.
"""

import importlib.util
import json
import math
import re
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

pytestmark = pytest.mark.slow  # training runs of the example: the heavy tier (`pytest -m slow`), run by .ci/run

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_char_lm.py"
# A tiny model and run: a few seconds of compiling and training per variant.
TINY = [
    "--d-model",
    "32",
    "--layers",
    "1",
    "--heads",
    "2",
    "--batch-size",
    "8",
    "--seq-len",
    "32",
    "--eval-every",
    "3",
    "--eval-batches",
    "2",
    "--seed",
    "0",
]


@pytest.fixture(scope="module")
def example():
    # examples/ is not a package: import the script from its path.
    spec = importlib.util.spec_from_file_location("train_char_lm", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_corpus_is_deterministic_and_english(example):
    text = example.build_corpus()
    example.build_corpus.cache_clear()  # build it again from the files
    assert example.build_corpus() == text
    assert len(text) > 200_000 and len(example.corpus_files()) > 50
    ids = example.encode(text)
    assert ids.dtype == np.int32 and len(ids) == len(text)
    assert np.mean(ids == example.UNKNOWN) < 1e-3  # almost all printable ASCII
    assert text.count(" the ") > 1000  # English prose
    train, val = example.split(ids)
    assert len(val) == int(len(ids) * 0.1) and np.array_equal(np.concatenate([train, val]), ids)


def test_encoding(example):
    assert example.VOCAB_SIZE == 97
    ids = example.encode("Hi!\n\té~")
    assert ids.tolist() == [1 + example.ALPHABET.index(c) if c in example.ALPHABET else 0 for c in "Hi!\n\té~"]
    assert ids[4] == ids[5] == example.UNKNOWN  # tab and non-ASCII: the unknown symbol
    assert example.decode(example.encode("a b\nc")) == "a b\nc"


def test_unigram_baseline_by_hand(example):
    train, val = example.encode("aab"), example.encode("abc")
    # No smoothing on what was seen: p(a) = 2/3, p(b) = 1/3.
    assert example.unigram_bpc(train, val[:2], smoothing=0.0) == pytest.approx(
        (math.log2(3 / 2) + math.log2(3)) / 2, rel=1e-12
    )
    # Add-one smoothing over the 97 symbols: p(a) = 3/100, p(b) = 2/100, p(c) = 1/100 (unseen).
    assert example.unigram_bpc(train, val) == pytest.approx(
        (math.log2(100 / 3) + math.log2(100 / 2) + math.log2(100)) / 3, rel=1e-12
    )


def test_smoke_flax_and_jaxnorm(example, tmp_path, capsys):
    argv = TINY + ["--steps", "6", "--norm", "jaxnorm", "flax", "--kind", "layer", "rms", "--out", str(tmp_path)]
    result = example.main(argv)
    lines = capsys.readouterr().out.strip().splitlines()

    names = ["jaxnorm-layer", "jaxnorm-rms", "flax-layer", "flax-rms"]
    assert re.fullmatch(r"val_bpc=\d+\.\d{4}", lines[-1]), lines
    assert float(lines[-1].split("=")[1]) == round(result["val_bpc"], 4)
    assert [line.split("]")[0] for line in lines[-5:-1]] == [f"val_bpc[{n}" for n in names], lines
    assert re.fullmatch(r"unigram_bpc=\d\.\d{4}", lines[-6]), lines
    assert (tmp_path / "train_char_lm.png").stat().st_size > 0
    metrics = json.loads((tmp_path / "char_lm_metrics.json").read_text())
    assert list(metrics["runs"]) == names
    assert metrics["val_bpc"] == result["runs"]["jaxnorm-layer"]["final_val_bpc"]
    assert 4.0 < metrics["unigram_bpc"] < 5.5
    for h in metrics["runs"].values():
        assert h["step"] == [3, 6] and all(np.isfinite(h["val_bpc"] + h["train_bpc"]))

    args = example.parse_args(argv)
    for kind in ("layer", "rms"):
        # The drop-in property: the same variables (paths, shapes, dtypes) and the same initial values ...
        flax_init = nnx.state(example.init_model("flax", kind, args))
        jaxnorm_init = nnx.state(example.init_model("jaxnorm", kind, args))
        assert jax.tree.structure(flax_init) == jax.tree.structure(jaxnorm_init)
        jax.tree.map(np.testing.assert_array_equal, flax_init, jaxnorm_init)
        # ... and after the same 6 steps, the same trained tree and close losses.
        trained_flax, trained_jaxnorm = result["params"][f"flax-{kind}"], result["params"][f"jaxnorm-{kind}"]
        assert jax.tree.structure(trained_flax) == jax.tree.structure(trained_jaxnorm)
        assert jax.tree.map(np.shape, trained_flax) == jax.tree.map(np.shape, trained_jaxnorm)
        flax_run, jaxnorm_run = result["runs"][f"flax-{kind}"], result["runs"][f"jaxnorm-{kind}"]
        np.testing.assert_allclose(flax_run["val_bpc"], jaxnorm_run["val_bpc"], rtol=1e-3)
        np.testing.assert_allclose(flax_run["train_bpc"], jaxnorm_run["train_bpc"], rtol=1e-3)


def test_resume_is_bit_identical(example, tmp_path):
    argv = TINY + ["--steps", "6", "--out", str(tmp_path / "out")]
    whole = example.main(argv)
    ckpt = ["--checkpoint-dir", str(tmp_path / "ckpt")]
    first = example.main(argv + ckpt + ["--stop-after", "3"])  # "interrupted" after the first epoch
    assert first["runs"]["jaxnorm-layer"]["final_step"] == 3
    # The checkpoint holds the step-3 params and AdamW state exactly.
    args = example.parse_args(argv)
    graphdef, params = nnx.split(example.init_model("jaxnorm", "layer", args), nnx.Param)
    opt_state = example.make_optimizer(args.lr, args.steps).init(params)
    mngr = example.open_checkpoints(tmp_path / "ckpt" / "jaxnorm-layer")
    step, params, opt_state, meta = example.restore_checkpoint(mngr, params, opt_state)
    mngr.close()
    assert step == meta["step"] == 3 and meta["history"]["step"] == [3]
    jax.tree.map(
        np.testing.assert_array_equal,
        (params, opt_state),
        (first["params"]["jaxnorm-layer"], first["opt_state"]["jaxnorm-layer"]),
    )

    resumed = example.main(argv + ckpt)  # a fresh model and optimizer, restored from step 3
    assert resumed["runs"]["jaxnorm-layer"]["start_step"] == 3  # it trained steps 4-6 only
    assert resumed["runs"]["jaxnorm-layer"]["final_step"] == 6
    assert sorted(p.name for p in (tmp_path / "ckpt" / "jaxnorm-layer").iterdir()) == ["3", "6"]

    for key in ("params", "opt_state"):
        a, b = whole[key]["jaxnorm-layer"], resumed[key]["jaxnorm-layer"]
        assert jax.tree.structure(a) == jax.tree.structure(b)
        jax.tree.map(np.testing.assert_array_equal, a, b)
    for key in ("step", "train_bpc", "val_bpc"):
        assert whole["runs"]["jaxnorm-layer"][key] == resumed["runs"]["jaxnorm-layer"][key], key
    assert whole["val_bpc"] == resumed["val_bpc"]

    # A checkpoint of other flags is refused, not silently mixed in.
    for other in (["--lr", "1e-3"], ["--d-model", "16"]):
        with pytest.raises(ValueError, match=r"holds a checkpoint of other flags \(\{'(lr|d_model)'"):
            example.main(argv + ckpt + other)


def test_dyt_and_derf_train_in_the_norms_place(example, tmp_path, capsys):
    """``--kind dyt derf``: jaxnorm's normalization-free layers in every norm's place (alpha a learnable scalar,
    not weight-decayed); ``--norm flax`` has no such class and is skipped with a message, not an error."""
    argv = TINY + ["--steps", "6", "--norm", "flax", "jaxnorm", "--kind", "dyt", "derf", "--out", str(tmp_path)]
    result = example.main(argv)
    out = capsys.readouterr().out
    assert "skipping flax-dyt: flax.nnx has no DyT" in out and "skipping flax-derf" in out
    assert list(result["runs"]) == ["jaxnorm-dyt", "jaxnorm-derf"]
    for name, h in result["runs"].items():
        assert all(np.isfinite(h["val_bpc"])), name
    alphas = [p for path, p in jax.tree_util.tree_leaves_with_path(result["params"]["jaxnorm-derf"])
              if "alpha" in jax.tree_util.keystr(path)]
    assert len(alphas) == 3 and all(np.shape(a) == () for a in alphas)  # the block's two norms and the final one
    assert any(float(a) != 0.5 for a in alphas), "alpha did not train"


def test_add_and_norm_is_the_same_network_as_the_unfused_one(example, tmp_path, capsys):
    """``--kind add_layer add_rms``: each residual add fused into the norm after it. The same modules and
    parameters as ``layer``/``rms`` (equal initial trees), and the same training to float32 rounding."""
    argv = TINY + ["--steps", "6", "--norm", "jaxnorm", "flax", "--kind", "rms", "add_rms", "layer", "add_layer",
                   "--out", str(tmp_path)]
    result = example.main(argv)
    assert "skipping flax-add_rms: flax.nnx has no AddRMSNorm" in capsys.readouterr().out
    args = example.parse_args(argv)
    for plain, fused in (("rms", "add_rms"), ("layer", "add_layer")):
        unfused_init = nnx.state(example.init_model("jaxnorm", plain, args))
        fused_init = nnx.state(example.init_model("jaxnorm", fused, args))
        assert jax.tree.structure(unfused_init) == jax.tree.structure(fused_init)
        jax.tree.map(np.testing.assert_array_equal, unfused_init, fused_init)
        for name in (f"jaxnorm-{plain}", f"flax-{plain}"):
            np.testing.assert_allclose(result["runs"][f"jaxnorm-{fused}"]["val_bpc"], result["runs"][name]["val_bpc"],
                                       rtol=1e-3)
