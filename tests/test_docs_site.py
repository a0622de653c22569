"""The documentation site (docs/, built by ``sphinx-build -W --keep-going -b html docs docs/_build/html``).

Default tier, a text scan without Sphinx: every name of each public module's ``__all__`` has an entry on that
module's API page (an ``auto*`` directive naming it, or ``automodule`` with ``:members:``, which follows
``__all__``), and no page documents a name that is not public. A new public name without a docs entry fails here.
Slow tier: the Python blocks of the guides (docs/*.md) run, in order, one namespace per guide, as a reader would
run them; a block whose first line is ``# needs: keras, torch`` runs when those are installed.
"""

import ast
import importlib
import importlib.util
import re
import textwrap
from pathlib import Path

import pytest

from tests import test_docs

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# module -> its API page.
API_PAGES = {
    "jaxnorm": "api/jaxnorm.rst",
    "jaxnorm.linen": "api/linen.rst",
    "jaxnorm.nnx": "api/nnx.rst",
    "jaxnorm.interop": "api/interop.rst",
    "jaxnorm.equinox": "api/equinox.rst",
}

_DIRECTIVE = re.compile(r"^\s*\.\. (auto\w+|currentmodule|module|py:currentmodule)::\s*(\S+)\s*$")
_OPTION = re.compile(r"^\s+:([\w-]+):")


def module_source(module: str) -> Path | None:
    path = ROOT / Path(*module.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def public_names(module: str) -> list[str]:
    """The module's ``__all__``, read from its source when it is a literal (no import: no flax or torch needed),
    else from the imported module."""
    tree = ast.parse(module_source(module).read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            try:
                return list(ast.literal_eval(node.value))
            except ValueError:
                break
    return list(importlib.import_module(module).__all__)


def documented_names(page_text: str, module: str) -> tuple[set[str], bool]:
    """The names of ``module`` that a page's autodoc directives document, and whether an ``automodule`` of it has
    ``:members:`` (then every name of ``__all__`` is documented)."""
    names, all_members, current = set(), False, None
    lines = page_text.splitlines()
    for i, line in enumerate(lines):
        m = _DIRECTIVE.match(line)
        if not m:
            continue
        kind, target = m.groups()
        if kind in ("currentmodule", "module", "py:currentmodule"):
            current = target
            continue
        options = set()
        for follow in lines[i + 1 :]:
            opt = _OPTION.match(follow)
            if not opt:
                break
            options.add(opt.group(1))
        if kind == "automodule":
            current = target
            if target == module and "members" in options and "exclude-members" not in options:
                all_members = True
            continue
        full = target if "." in target else f"{current}.{target}"
        owner, _, name = full.rpartition(".")
        if owner == module:
            names.add(name)
    return names, all_members


def test_every_public_name_has_an_api_entry():
    problems = []
    for module, page in API_PAGES.items():
        page_path = DOCS / page
        if not page_path.is_file():
            problems.append(f"{module}: no API page {page}")
            continue
        assert module_source(module) is not None, f"{module} has no source file"
        names, all_members = documented_names(page_path.read_text(), module)
        public = public_names(module)
        missing = [] if all_members else sorted(set(public) - names)
        extra = sorted(names - set(public))
        if missing:
            problems.append(f"{page} has no entry for {module}.{{{', '.join(missing)}}}")
        if extra:
            problems.append(f"{page} documents {module}.{{{', '.join(extra)}}}, not in its __all__")
    assert not problems, "\n".join(problems)


def test_every_api_page_is_in_the_api_index():
    index = (DOCS / "api" / "index.md").read_text()
    toctree = re.search(r"```\{toctree\}\n(.*?)```", index, re.S).group(1)
    entries = {line.strip() for line in toctree.splitlines() if line.strip() and not line.startswith(":")}
    assert {Path(page).stem for page in API_PAGES.values()} <= entries


def test_the_directive_scan_can_fail():
    """The scan sees explicit entries (under ``currentmodule``) and ``automodule :members:``, and nothing else."""
    page = ".. automodule:: m\n\n.. currentmodule:: m\n\n.. autoclass:: A\n   :members:\n\n.. autofunction:: m.f\n"
    assert documented_names(page, "m") == ({"A", "f"}, False)
    assert documented_names(".. automodule:: m\n   :members:\n", "m") == (set(), True)
    assert documented_names(".. automodule:: m\n   :members:\n   :exclude-members: A\n", "m") == (set(), False)
    assert documented_names(".. autoclass:: other.A\n", "m") == (set(), False)


# -- the guides' code (slow tier) --------------------------------------------------------------------------------

BLOCK = re.compile(r"^( *)```python\n(.*?)^\1```", re.S | re.M)
GUIDES = sorted(p.name for p in DOCS.glob("*.md") if BLOCK.search(p.read_text()))


def python_blocks(text: str) -> list[str]:
    """The ```` ```python ```` blocks of a Markdown page, also those indented in a list item, dedented."""
    return [textwrap.dedent(block) for _, block in BLOCK.findall(text)]


def test_the_block_extractor_finds_indented_blocks():
    text = "a\n```python\nx = 1\n```\n- item\n\n  ```python\n  y = 2\n  ```\n```bash\nls\n```\n"
    assert python_blocks(text) == ["x = 1\n", "y = 2\n"]
    assert {"index.md", "pure_api.md", "flax.md", "distributed.md"} <= set(GUIDES)


@pytest.mark.own_tiers
@pytest.mark.slow
@pytest.mark.parametrize("guide", GUIDES)
def test_guide_code_runs(guide, monkeypatch):
    """Every block of the guide, in order (those marked ``# needs:`` where the peers are installed)."""
    test_docs._run(f"docs/{guide}", monkeypatch, peers=True, blocks=python_blocks)
