"""The peers' own tests, run against jaxnorm's drop-ins: every test of Flax's or equinox's test suite that uses a
normalization class (its source names one) runs with the peer's normalization classes replaced by jaxnorm's
(tests/peer_suite_plugin.py), and must pass wherever it passes with the peer's own classes.

Flax's tests ship in its source distribution: ``.ci/run`` downloads the sdist of the installed Flax version and
sets ``JAXNORM_FLAX_TESTS`` to its ``tests`` directory. equinox's ship in neither its sdist nor its wheel: set
``JAXNORM_EQUINOX_TESTS`` to the ``tests`` directory of a checkout of the installed version's tag (for equinox
0.13.8, test_nn, test_stateful and test_serialisation: 76 passed with jaxnorm's classes, under equinox's own
strict dtype promotion). Without the variable a suite skips. Flax's run takes about a minute on 2 cores (peers
tier).

``DIFFERENCES`` lists the tests that pass with the peer's classes and fail with jaxnorm's, each with why; a test
listed there that passes, or one that fails and is not listed, fails here.
"""

from __future__ import annotations

import ast
import os
import pathlib
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from tests.peer_suite_plugin import EQX_SWAPPED, SWAPPED

ROOT = pathlib.Path(__file__).resolve().parents[1]
# peer -> (the variable naming its tests directory, the files whose tests may use a normalization class, names)
SUITES = {
    "flax": ("JAXNORM_FLAX_TESTS", [
        "linen/linen_test.py", "linen/summary_test.py", "linen/linen_transforms_test.py",
        "nnx/nn/normalization_test.py", "nnx/summary_test.py", "nnx/transforms_test.py", "nnx/module_test.py",
        "nnx/graph_utils_test.py", "nnx/integration_test.py"], SWAPPED),
    "equinox": ("JAXNORM_EQUINOX_TESTS", ["test_nn.py", "test_stateful.py", "test_serialisation.py"], EQX_SWAPPED),
}

_NAN_MASK = ("Flax's outputs are NaN here on both sides (an instance with every feature masked: 0/0 statistics), "
             "which assert_array_equal counts equal; jaxnorm's are finite on purpose (an all-masked reduction has "
             "statistics (0, 0): README), and its linen and nnx InstanceNorm round them differently in float16 "
             "because Flax's nnx casts x to `dtype` before the statistics and linen does not (each drop-in "
             "follows its Flax class)")
DIFFERENCES = {
    "tests.nnx.nn.normalization_test.TestLinenConsistency.test_nnx_linen_instancenorm_equivalence9": _NAN_MASK,
    "tests.nnx.nn.normalization_test.TestLinenConsistency.test_nnx_linen_instancenorm_equivalence11": _NAN_MASK,
    "tests.nnx.nn.normalization_test.TestLinenConsistency.test_nnx_linen_instancenorm_equivalence13": _NAN_MASK,
    "tests.nnx.nn.normalization_test.TestLinenConsistency.test_nnx_linen_instancenorm_equivalence15": _NAN_MASK,
    "tests.linen.linen_test.NormalizationTest.test_instance_norm3": (
        "x + 1e4, float32: the test compares with a float32 one-liner (atol 1e-6), which Flax's two-pass "
        "variance reproduces rounding for rounding; jaxnorm's shifted statistics differ from it by 1.2e-3 and are "
        "2.2x closer to the float64 result (max error 4.7e-4, float32's rounding of the mean itself, against "
        "1.05e-3 for Flax's)"),
}


def _selected(tests_dir: pathlib.Path, files: list[str], names: tuple[str, ...]) -> dict[str, list[str]]:
    """Per file, the test functions whose source names a normalization class."""
    pattern = re.compile(r"\b(" + "|".join(names) + r")\b")
    out = {}
    for name in files:
        path = tests_dir / name
        tree = ast.parse(path.read_text())
        source = path.read_text()
        tests = sorted({node.name for node in ast.walk(tree)
                        if isinstance(node, ast.FunctionDef) and node.name.startswith("test")
                        and pattern.search(ast.get_source_segment(source, node) or "")})
        if tests:
            out[name] = tests
    return out


def _file_of(tests_dir: pathlib.Path, test_id: str) -> pathlib.Path:
    """The test file of a JUnit id ``tests.dir.module[.Class].test_name``."""
    parts = re.sub(r"\[.*", "", test_id).split(".")
    for k in range(len(parts) - 1, 1, -1):
        path = tests_dir.parent.joinpath(*parts[:k]).with_suffix(".py")
        if path.exists():
            return path
    raise AssertionError(f"no file for {test_id}")


def _run(tests_dir: pathlib.Path, selected: dict[str, list[str]], swap: bool, tmp: pathlib.Path,
         only: list[str] | None = None, peer: str = "flax") -> dict[str, bool]:
    """Runs the selected tests (``only``: these test ids) in a subprocess; returns ``{id: passed}``."""
    report = tmp / f"report_{int(swap)}.xml"
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "peer_suite_plugin",
            f"--rootdir={tests_dir.parent}", "-o", "addopts=", f"--junitxml={report}", "-n", "2"]
    if only is not None:
        args += ["-k", " or ".join(sorted({re.sub(r"\[.*", "", i.rsplit(".", 1)[-1]) for i in only}))]
        args += sorted({str(_file_of(tests_dir, i)) for i in only})
    else:
        names = sorted({t for tests in selected.values() for t in tests})
        args += ["-k", " or ".join(names)] + [str(tests_dir / f) for f in selected]
    env = {**os.environ, "JAXNORM_SWAP": "1" if swap else "0", "JAXNORM_SWAP_EQUINOX": str(int(peer == "equinox")),
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    subprocess.run(args, cwd=tests_dir.parent, env=env, capture_output=True, text=True, timeout=900)
    results = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        test_id = f"{case.get('classname')}.{case.get('name')}"
        bad = any(child.tag in ("failure", "error") for child in case)
        skipped = any(child.tag == "skipped" for child in case)
        if not skipped:
            results[test_id] = not bad
    return results


def _top(files: list[str]) -> set[str]:
    return {f.split("/")[0].removesuffix(".py") for f in files}


@pytest.mark.parametrize("peer", [pytest.param("flax", marks=pytest.mark.peers("flax")),
                                  pytest.param("equinox", marks=pytest.mark.peers("equinox"))])
def test_peer_tests_pass_on_the_drop_ins(peer, tmp_path):
    variable, files, names = SUITES[peer]
    tests_dir = os.environ.get(variable)
    if not tests_dir:
        pytest.skip(f"{variable} is not set (the {peer} tests directory; see this module's docstring)")
    tests_dir = pathlib.Path(tests_dir)
    selected = _selected(tests_dir, files, names)
    assert sum(map(len, selected.values())) >= 10, selected  # the selection found the normalization tests
    ours = _run(tests_dir, selected, True, tmp_path, peer=peer)
    assert len(ours) >= 15, len(ours)
    failing = sorted(i for i, ok in ours.items() if not ok)
    theirs = _run(tests_dir, selected, False, tmp_path, only=failing, peer=peer) if failing else {}
    regressions = sorted(i for i in failing if theirs.get(i, False) and i not in DIFFERENCES)
    assert not regressions, f"{peer}'s tests that pass with its classes and fail with jaxnorm's: {regressions}"
    stale = sorted(i for i in DIFFERENCES if i.split(".")[1] in _top(files) and ours.get(i, True))
    assert not stale, f"DIFFERENCES entries that pass (or did not run) now: {stale}"
