"""Smoke test of benchmarks/run.py: the --smoke mode (tiny shapes, 3 runs) in-process, and the JSON it writes.

The figures themselves are not checked (tiny shapes time dispatch, not the kernels); the full and quick runs are
documented in benchmarks/README.md.
"""

import importlib.util
import json
import math
from pathlib import Path

import jax
import pytest

pytestmark = pytest.mark.slow  # a whole benchmark run: the heavy tier (`pytest -m slow`), run by .ci/run

RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"


def load_run():
    # benchmarks/ is not a package: import the script from its path.
    spec = importlib.util.spec_from_file_location("benchmarks_run", RUN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _positive_finite(value):
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_benchmarks_smoke(tmp_path, capsys):
    run = load_run()
    # bfloat16 only, to keep the smoke run short (about 35 s on 2 cores): it is the dtype with the most
    # conversions (torch bits, Keras's mixed policy); float32 goes through the same code.
    result = run.main(["--smoke", "--dtypes", "bfloat16", "--out", str(tmp_path)])
    out = capsys.readouterr().out

    data = json.loads((tmp_path / "results_smoke.json").read_text())
    assert (tmp_path / "ratios_smoke.png").stat().st_size > 0
    assert data["cases"] == json.loads(json.dumps(result["cases"]))
    assert {"mode", "date", "device", "versions", "settings", "shapes", "dtypes", "cases", "summary"} <= set(data)
    assert data["mode"] == "smoke"
    assert data["device"]["platform"] == jax.devices()[0].platform
    assert data["device"]["torch_device"] == "cpu"
    for name in ("jax", "jaxlib", "flax", "torch", "keras"):
        assert name in data["versions"]
    assert data["versions"]["jax"] == jax.__version__

    # Every op x mode, one tiny shape each.
    assert data["dtypes"] == ["bfloat16"]
    seen = {(c["op"], c["mode"], c["dtype"]) for c in data["cases"]}
    assert seen == {(op, mode, "bfloat16") for op in run.OPS for mode in run.peers.modes_of(op)}
    assert len(data["cases"]) == len(seen)

    for case in data["cases"]:
        results = case["results"]
        arrays = (2 if case["mode"] == "fwd" else 3) + (2 if case["op"] in run.peers.RESIDUAL else 0)  # + residual, h
        arrays += (1 if case["mode"] == "fwd" else 2) if case["op"] in run.peers.GATED else 0  # + gate (dgate)
        if case["op"] in run.peers.QUANTIZED:  # read x, write one byte a value
            arrays = 1 + 1 / jax.numpy.dtype(case["dtype"]).itemsize
        assert case["bytes_moved"] == arrays * case["x_bytes"] > 0
        # jaxnorm and the copy kernel always run; flax and the naive reference are always installed here.
        for impl in ("jaxnorm", "copy", "flax_linen", "flax_nnx", "naive_jnp"):
            assert results[impl]["status"] == "ok", (case["op"], case["mode"], impl, results[impl])
        assert results["jaxnorm"]["ratio_to_jaxnorm"] == 1.0
        assert results["jaxnorm"]["max_rel_err"] == 0.0
        for impl, r in results.items():
            if r["status"] != "ok":
                # Only an optional peer may fail, and it says why.
                assert impl in ("keras", "equinox", "haiku", "torch_cpu") and r["status"], (impl, r)
                continue
            for key in ("median_ms", "min_ms", "gbps", "ratio_to_jaxnorm", "pct_copy", "speedup_vs_flax_linen"):
                assert _positive_finite(r[key]), (case["op"], case["mode"], impl, key, r[key])
            assert r["repeats"] == run.REPEATS["smoke"]
            assert math.isclose(r["ratio_to_jaxnorm"], r["median_ms"] / results["jaxnorm"]["median_ms"])
            if impl not in ("copy", "torch_cpu"):
                # Every checked peer agrees with jaxnorm within the dtype's tolerance.
                tolerance = run.TOLERANCE["float8_e4m3fn" if case["op"] in run.peers.QUANTIZED else case["dtype"]]
                assert 0.0 <= r["max_rel_err"] <= tolerance, (impl, r["max_rel_err"])
            if impl != "torch_cpu":
                temp = r["temp_bytes"]
                assert temp is None or (isinstance(temp, int) and temp >= 0)
        assert math.isclose(results["copy"]["pct_copy"], 100.0)

    # The summary covers each target, and the printed table has one row per case x implementation.
    assert [t["key"] for t in data["summary"]["targets"]] == list(run.TARGETS)
    # The per-cell count against the fastest JAX peer: every case has one (flax always runs here), printed after
    # the summary with its worst cell; the PyTorch count is informational.
    cells = data["summary"]["cells_vs_fastest_jax_peer"]
    assert cells["cells"] == len(data["cases"]) and 0 <= cells["below"] <= cells["cells"]
    assert cells["threshold"] == run.TARGETS["every_cell_vs_fastest_jax_peer"]
    assert "torch_cpu" not in cells["peers"] and "copy" not in cells["peers"]
    assert cells["worst"]["ratio"] == min(v["value"] for v in data["summary"]["targets"][0]["cases"])
    assert f"with jaxnorm below {cells['threshold']:g}x the fastest JAX peer" in out and "  worst: " in out
    rows = [line for line in out.splitlines() if line.startswith(tuple(f"{op} " for op in run.OPS))]
    assert len(rows) == sum(len(c["results"]) for c in data["cases"])
    assert "wrote " in out
    assert "smoke mode: tiny shapes" in out  # and says that its figures and targets mean nothing


def test_a_table_entry_is_all_a_peer_takes(monkeypatch):
    """benchmarks/peers.py's table is the one place that says who implements what: run.py's names come from it,
    and a new entry is built, checked against jaxnorm and timed (or caught as a mismatch) with nothing else."""
    run = load_run()
    peers = run.peers
    assert run.OPS == tuple(peers.TABLE) and run.IMPLS == (*peers.PEERS, "copy")
    for mode, shapes in run.SHAPES.items():
        assert set(shapes) == set(run.OPS), mode  # every op has shapes in every mode
    for op, builders in peers.TABLE.items():
        assert next(iter(builders)) == "jaxnorm", op  # the reference, built and checked first
        assert set(builders) <= set(peers.PEERS), op
    assert all(any(impl in b for b in peers.TABLE.values()) for impl in peers.PEERS)  # each implements an op

    import jaxnorm

    rms = lambda x, s, b: jaxnorm.rms_norm(x, s, axis=-1, epsilon=run.EPSILON)
    monkeypatch.setitem(peers.TABLE["rms_norm"], "again", peers.jax_fn(rms))
    monkeypatch.setitem(peers.TABLE["rms_norm"], "doubled", peers.jax_fn(lambda x, s, b: 2 * rms(x, s, b)))
    impls = ["jaxnorm", "again", "doubled", "haiku", "copy"]  # haiku: no rms_norm entry, so not run
    case = run.run_case("rms_norm", "fwd+bwd", (8, 128), "float32", impls, 2, cache_bytes=1 << 30)
    results = case["results"]
    assert list(results) == ["jaxnorm", "again", "doubled", "copy"]
    assert results["again"]["status"] == "ok" and results["again"]["max_rel_err"] < 1e-6
    assert _positive_finite(results["again"]["ratio_to_jaxnorm"]) and results["again"]["repeats"] == 2
    assert results["doubled"]["status"].startswith("mismatch") and "median_ms" not in results["doubled"]
    assert len(run.format_rows(case)) == 4


def _cells_case(op, shape, **ms):
    """A timed case as run.py records it, reduced to what the per-cell count reads (None: the peer failed)."""
    results = {k: ({"median_ms": v} if v is not None else {"status": "error"}) for k, v in ms.items()}
    return {"op": op, "mode": "fwd", "shape": list(shape), "dtype": "float32", "results": results}


def test_cells_below_judges_each_cell_by_its_fastest_jax_peer():
    """report.cells_below: per cell, the fastest JAX peer that ran (never PyTorch, never copy) against jaxnorm."""
    run = load_run()
    report = run.report
    cases = [
        _cells_case("layer_norm", (4, 8), jaxnorm=1.0, flax_linen=1.2, keras=0.9, torch_cpu=0.1, copy=0.2),
        _cells_case("layer_norm", (8, 8), jaxnorm=1.0, flax_linen=0.5, keras=None, copy=0.2),  # keras failed
        _cells_case("rms_norm", (4, 8), jaxnorm=1.0, flax_linen=0.96, torch_cpu=2.0),
        _cells_case("rms_norm", (8, 8), jaxnorm=1.0, torch_cpu=2.0, copy=0.5),  # no JAX peer: not a cell
    ]
    cells = report.cells_below(cases, report.JAX_PEERS, 0.95)
    assert (cells["cells"], cells["below"]) == (3, 2)
    assert cells["peers"] == ["flax_linen", "keras"]
    worst = cells["worst"]
    assert (worst["op"], worst["shape"], worst["peer"]) == ("layer_norm", [8, 8], "flax_linen")
    assert worst["ratio"] == 0.5
    assert [c["peer"] for c in cells["below_cells"]] == ["flax_linen", "keras"]  # worst first; 0.96 is not below
    torch = report.cells_below(cases, ("torch_cpu",), 0.95)
    assert (torch["cells"], torch["below"], torch["worst"]["ratio"]) == (3, 1, 0.1)
    # The target in the summary: met only when every cell is; printed with its count and worst cell.
    for c in cases:
        c.update(beyond_cache=False)
        for r in c["results"].values():
            r.setdefault("ratio_to_jaxnorm", r.get("median_ms"))
    summary = report.summarize(cases, run.TARGETS)
    (cell_target,) = [t for t in summary["targets"] if t["key"] == "every_cell_vs_fastest_jax_peer"]
    assert cell_target["met_in"] == "1/3" and cell_target["met"] is False
    beyond = [t for t in summary["targets"] if "beyond_cache" in t["key"]]
    assert all(t["met"] is None and not t["cases"] for t in beyond)  # no case to judge: neither met nor not
    lines = "\n".join(report.format_summary(summary) + report.format_cells(summary))
    assert "NOT MET every cell" in lines and "met in 1/3 cells" in lines and ": no case" in lines
    assert "below 0.95x the fastest JAX peer that ran (flax_linen, keras; medians): 2 of 3" in lines
    assert "against PyTorch (torch_cpu): jaxnorm below 0.95x torch_cpu in 1 of 3 cells" in lines


def _load_formulations():
    spec = importlib.util.spec_from_file_location("benchmarks_formulations", RUN.parent / "formulations.py")
    formulations = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(formulations)
    return formulations


def test_formulations_smoke_checks_every_candidate(capsys):
    formulations = _load_formulations()
    results = formulations.main(["--smoke"])
    out = capsys.readouterr().out
    names = list(formulations.CANDIDATES)
    assert {d for _, d in results} == {"float32", "bfloat16"}
    for (shape, dtype), (ms, errors) in results.items():
        assert list(ms) == names and all(math.isfinite(t) and t > 0 for t in ms.values())
        assert set(errors) == set(names) - {"copy"}
        assert f"LayerNorm fwd {shape} {dtype}" in out
        if dtype == "float32":
            # Offset data, 1e4 + N(0, 1): jaxnorm (either kernel) and the two-pass form keep float32's precision
            # (x itself is held to 1e4 * 2**-24); the one-pass E[x^2] - E[x]^2 cancels every digit.
            assert max(errors["jaxnorm"], errors["jaxnorm_extreme"], errors["two_pass_jnp"]) < 5e-3, errors
            assert errors["one_pass_jnp"] > 1.0, errors
        else:
            assert max(errors.values()) < 5e-2, errors  # bfloat16 output rounding
    assert "extreme_range=True: time / the default's" in out
    # --only: the candidates asked for, and always the copy kernel.
    results = formulations.main(["--smoke", "--only", "jaxnorm", "--dtypes", "float32"])
    assert [list(ms) for ms, _ in results.values()] == [["jaxnorm", "copy"]]


def test_models_smoke_checks_the_swap_changes_no_number(tmp_path, capsys, monkeypatch):
    run = load_run()
    run.main(["--smoke", "--models", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "figures below time dispatch" in out  # smoke mode says its figures mean nothing
    data = json.loads((tmp_path / "models_smoke.json").read_text())
    assert set(data["models"]) == {"cnn", "transformer-layer", "transformer-rms", "transformer-add_rms"}
    for model in data["models"].values():
        assert set(model["variants"]) == {"flax", "jaxnorm", "identity"}
        for variant in model["variants"].values():
            assert all(_positive_finite(variant[f"{step}_ms"]) for step in ("train", "infer"))
            assert all(variant[f"{step}_temp_MiB"] >= 0 for step in ("train", "infer"))
        for step in ("train", "infer"):
            assert _positive_finite(model["summary"][step]["flax/jaxnorm"])
    # A "drop-in" that changes the numbers (another epsilon) is caught before any timing.
    import flax.linen as nn
    import models  # benchmarks/ is on sys.path after run.main(--models)

    wrong = type(models.NORMS["jaxnorm"])(**vars(models.NORMS["jaxnorm"]))
    wrong.LayerNorm = lambda: nn.LayerNorm(epsilon=0.5)
    monkeypatch.setitem(models.NORMS, "jaxnorm", wrong)
    with pytest.raises(AssertionError, match="transformer-layer"):
        models.main(["--smoke", "--only", "transformer-layer", "--out", str(tmp_path)])


def test_gpu_check_smoke_passes_on_cpu(capsys):
    spec = importlib.util.spec_from_file_location("benchmarks_gpu_check", RUN.parent / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    assert gpu_check.main(["--smoke"]) == 0
    out = capsys.readouterr().out
    assert "in interpret mode" in out and "18/18 checks passed" in out
    # The check can fail: a reference off by 1e-3 of the output is caught.
    right = gpu_check._ref_channels
    gpu_check._ref_channels = lambda *a: (lambda r: (r[0] + 1e-3, *r[1:]))(right(*a))
    results = []
    gpu_check.check_channels(results, [(2, 3, 3, 64)], ["float32"])
    assert results == [False, False]
