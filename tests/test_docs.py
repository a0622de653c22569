"""The documentation runs: every Python block of README.md and examples/README.md (benchmarks/README.md has
none) is executed, in order, one namespace per document (a block may use what an earlier block of the same document
defined, as a reader following the page would). A block whose first line is ``# needs: keras, torch`` runs when
those are installed (they are in CI) and is skipped otherwise. benchmarks/README.md is checked against
``run.py --help``.
"""

import contextlib
import importlib.util
import io
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ["README.md", "examples/README.md"]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(text: str) -> list[str]:
    return BLOCK.findall(text)


def _needs(block: str) -> list[str]:
    first = block.lstrip().splitlines()[0] if block.strip() else ""
    m = re.match(r"#\s*needs:\s*([\w, ]+)", first)
    return [n.strip() for n in m.group(1).split(",")] if m else []


def _run(doc: str, monkeypatch, *, peers: bool, blocks=python_blocks) -> None:
    """Runs the document's Python blocks (``blocks(text)``) in order in one namespace; ``# needs:`` blocks only
    with ``peers`` (then a missing peer is a skip that names it). tests/test_docs_site.py runs the site's guides
    with it."""
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    monkeypatch.chdir(ROOT)  # the documents' commands and paths start at the repository root
    monkeypatch.setattr(sys, "path", list(sys.path))  # a block may extend it
    namespace = {"__name__": f"doc:{doc}"}
    for i, block in enumerate(blocks((ROOT / doc).read_text())):
        needs = _needs(block)
        if needs and not peers:
            continue
        missing = [n for n in needs if importlib.util.find_spec(n) is None]
        if missing:
            pytest.skip(f"{doc}, python block {i + 1} needs {missing} (pip install -e '.[conformance]')")
        code = compile(block, f"{doc}, python block {i + 1}", "exec")
        with contextlib.redirect_stdout(io.StringIO()):
            exec(code, namespace)  # noqa: S102 - the documentation's own code


@pytest.mark.own_tiers
@pytest.mark.parametrize(
    "doc",
    # examples/README.md trains the digits CNN for an epoch: with the example's other training runs (slow tier).
    [pytest.param(d, marks=pytest.mark.slow) if d.startswith("examples/") else d for d in DOCS],
)
def test_every_python_block_runs(doc, monkeypatch):
    """Every block but those that need Keras or PyTorch (the peers tier runs those too)."""
    _run(doc, monkeypatch, peers=False)


@pytest.mark.peers("keras", "torch")
def test_every_python_block_runs_with_the_peers(monkeypatch):
    """The README again, with its converter blocks (``# needs: keras, torch``)."""
    _run("README.md", monkeypatch, peers=True)


def test_the_block_extractor_finds_the_readme_blocks():
    """A test that can fail: the README has its complete example and the tour's blocks, and an invented block is
    found, so that an empty extraction does not pass silently."""
    assert len(python_blocks((ROOT / "README.md").read_text())) >= 10
    assert python_blocks("text\n```python\nx = 1\n```\nmore\n```bash\nls\n```\n") == ["x = 1\n"]
    with pytest.raises(AssertionError):
        exec(compile(python_blocks("```python\nassert 1 == 2\n```\n")[0], "doc", "exec"), {})


def test_benchmarks_readme_covers_run_py_help():
    """Every flag, op and implementation that `benchmarks/run.py --help` and its tables know is documented."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("benchmarks_run_docs", ROOT / "benchmarks" / "run.py")
        run = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(run)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    readme = (ROOT / "benchmarks" / "README.md").read_text()
    flags = set(re.findall(r"(--[a-z][a-z-]*)", _help(run))) - {"--help"}
    assert {"--full", "--quick", "--smoke", "--only", "--skip", "--models"} <= flags
    missing = sorted(f for f in flags if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", readme))
    assert not missing, f"benchmarks/README.md does not document {missing}"
    for name in (*run.OPS, *run.IMPLS, *run.MODES):
        assert f"`{name}`" in readme, f"benchmarks/README.md does not mention `{name}`"
    for key, threshold in run.TARGETS.items():  # the targets table: each key with its threshold
        row = re.search(rf"^\| `{re.escape(key)}` \|(.*)$", readme, re.M)
        assert row and f" {threshold:g}" in row.group(1), f"targets table: {key} {threshold}"


def _help(run) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        run.parse_args(["--help"])
    return out.getvalue()
