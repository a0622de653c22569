"""Sphinx configuration of the jaxnorm documentation site.

Build it (offline; warnings are errors) from the repository root:

    sphinx-build -W --keep-going -b html docs docs/_build/html

Why Sphinx, as flax and optax use: the docstrings are Google style (Args:/Returns:/Raises:/Attributes:/Example:)
with reStructuredText inside (``code``, ``.. math::``, :func:/:class:/:mod: roles) and doctest examples, which
autodoc and napoleon render as they are written. The guides are Markdown (MyST). No extension fetches anything
(no intersphinx), and the site needs no network when read: MathJax ships with it (``sphinx-mathjax-offline``
copies MathJax 3 into ``_static/mathjax``; .ci/run checks that no page loads a script from elsewhere).
"""

import inspect
import os
import re
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)  # the checkout's jaxnorm, also when it is not installed
# autodoc imports every public module: jaxnorm.linen and jaxnorm.nnx need flax, jaxnorm.equinox needs equinox.
os.environ.setdefault("KERAS_BACKEND", "jax")  # before anything imports keras (jaxnorm.interop may)
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # importing the modules needs no accelerator

import jaxnorm  # noqa: E402

project = "jaxnorm"
author = "the jaxnorm authors"
copyright = "the jaxnorm authors"
version = release = jaxnorm.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax 3 in the site itself (_static/mathjax), not from a CDN
    "sphinx.ext.viewcode",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# autodoc: documented members come from each page's explicit directives (tests/test_docs_site.py checks that every
# name of each module's __all__ has one); signatures keep the argument names, types go to the descriptions.
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_preserve_defaults = True

# napoleon: Google style only.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = False  # the Attributes: entries say their types; annotations would add `Type: Any`
# The Flax drop-ins' class docstrings have two sections of their own: "Variables:" (the Flax collections and
# names) and "Call ``__call__(signature)``:" followed by the call's arguments, one ``name: description`` each. The
# first is rendered as a section as it stands; the second is rewritten by _call_sections (below) into the
# signature and a "Call arguments:" section, rendered like "Args:".
napoleon_custom_sections = ["Variables", ("Call arguments", "params_style")]

# MyST: ``$$...$$`` maths in the guides; heading anchors (GitHub's slugs) for the links within the included
# benchmarks/RESULTS.md.
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3

html_theme = "furo"
html_title = f"jaxnorm {release}"
html_static_path = []


def _skip_foreign_members(app, what, name, obj, skip, options):
    """Leaves out class attributes whose value is a function or type from elsewhere (a dataclass field defaulting
    to ``jax.nn.initializers.ones`` or ``jnp.float32``): autodoc would document them with that value's docstring,
    next to the entry the class's ``Attributes:`` section already gives them."""
    if what != "class" or skip:
        return None
    if (inspect.isroutine(obj) or isinstance(obj, type)) and not getattr(obj, "__module__", "").startswith(
        "jaxnorm"
    ):
        return True
    return None


_CALL_HEADER = re.compile(r"^(\s*)Call (``__call__\(.*\)``):\s*$")


def _call_sections(app, what, name, obj, options, lines):
    """Rewrites ``Call ``__call__(sig)``:`` followed by an indented ``name: description`` list (the drop-ins'
    docstrings) into the line ``Call ``__call__(sig)``.`` and a napoleon "Call arguments:" section. Runs before
    napoleon (priority 400 < napoleon's 500)."""
    for i in reversed(range(len(lines) - 1)):
        m = _CALL_HEADER.match(lines[i])
        if m and len(lines[i + 1]) - len(lines[i + 1].lstrip()) > len(m.group(1)) and lines[i + 1].strip():
            lines[i : i + 1] = [f"{m.group(1)}Call {m.group(2)}.", "", f"{m.group(1)}Call arguments:"]


_REPRS = [  # default values as autodoc prints them -> as they are written
    (re.compile(r"<class '([\w.]+)'>"), r"\1"),  # param_dtype=<class 'jax.numpy.float32'>
    (re.compile(r"<function (\w+)(?: at 0x[0-9a-f]+)?>"), r"\1"),  # scale_init=<function ones>
]


def _class_signatures(app, what, name, obj, options, signature, return_annotation):
    """The signature of an ``nnx.Module`` subclass is its ``__init__``'s: autodoc would show its metaclass's
    ``__call__``, ``(*args, **kwargs)``. Default values that are functions or classes are shown by name."""
    if what == "class" and signature == "(*args, **kwargs)" and "__init__" in vars(obj):
        sig = inspect.signature(obj.__init__)
        params = [p.replace(annotation=inspect.Parameter.empty) for p in list(sig.parameters.values())[1:]]
        signature = str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))
    if signature:
        for pattern, repl in _REPRS:
            signature = pattern.sub(repl, signature)
    return signature, return_annotation


def setup(app):
    app.connect("autodoc-process-signature", _class_signatures)
    app.connect("autodoc-skip-member", _skip_foreign_members)
    app.connect("autodoc-process-docstring", _call_sections, priority=400)
