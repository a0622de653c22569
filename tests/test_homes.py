"""One home per concept (shared/DESIGN.md): a registry of the concepts every family shares, each with its one
home and the places that must use it, checked on the source (AST), so a copy that grows back fails here.

- the moving-statistics step is ``moving.update``: the spec, the Flax drop-ins' core and equinox call it, and no
  other module weighs a momentum;
- the parameter and statistics fields are declared by ``layer.Scaled``/``Affine``/``Statistics`` alone;
- the Flax drop-ins hold no math: their modules import none of the kernel modules, and each normalization's call
  is one call of ``flax_compat``;
- the dtype of the statistics is ``validation.stats_dtype``, defined once;
- the groups rule is ``validation.resolve_groups`` (Flax's argument rule ``flax_compat.flax_groups`` reads it);
- the defaults of jaxnorm's moving-statistics options are ``moving.DROP_IN_OPTIONS``, which the drop-ins read;
- no module over 700 lines and no function over 80 (issue 24's reading limits).
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "jaxnorm"
SOURCES = {p.relative_to(ROOT).as_posix(): ast.parse(p.read_text()) for p in sorted(ROOT.rglob("*.py"))}

HOMES = {
    "moving step": ("_src/moving.py", "update", ["_src/batch_norm.py", "_src/flax_compat.py",
                                                 "equinox/normalization.py"]),
    "statistics dtype": ("_src/validation.py", "stats_dtype", ["_src/stats.py", "_src/normalize.py",
                                                              "_src/flax_compat.py", "equinox/normalization.py"]),
    "groups rule": ("_src/validation.py", "resolve_groups", ["_src/group_norm.py", "_src/ops.py",
                                                            "_src/flax_compat.py"]),
}
MIXINS = {"Scaled", "Affine", "Statistics"}
CORES = {"layer_norm", "rms_norm", "group_norm", "instance_norm", "batch_norm", "dynamic", "add_norm",
         "gated_rms_norm", "adaptive_norm", "quantized_norm"}  # flax_compat's calls
# Fields a spec declares itself, and why: WeightNorm's scale is the paper's g, not an affine parameter (no
# regularizer or constraint fields); the layers without params keep Keras's `trainable` flag alone.
OWN_FIELDS = {"WeightNorm": {"use_scale", "scale_init", "param_dtype", "trainable"},
              "SpectralNorm": {"param_dtype", "trainable"}, "Normalization": {"trainable"},
              "AdaptiveNorm": {"trainable"},
              "UnitNormalization": {"trainable"}}


def _calls(tree, name):
    """Calls of ``<anything>.name(...)`` or ``name(...)`` in ``tree``."""
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and (
        (isinstance(n.func, ast.Attribute) and n.func.attr == name) or (isinstance(n.func, ast.Name)
                                                                          and n.func.id == name))]


def _defines(tree, name):
    return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name]


@pytest.mark.parametrize("concept", sorted(HOMES))
def test_each_concept_is_defined_once_and_used_by_every_family(concept):
    home, name, users = HOMES[concept]
    assert [p for p, t in SOURCES.items() if _defines(t, name)] == [home]
    for user in users:
        assert _calls(SOURCES[user], name), f"{user} does not use {home}'s {name} ({concept})"


def test_no_module_but_moving_weighs_a_momentum():
    for path, tree in SOURCES.items():
        if path == "_src/moving.py":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
                names = {n.attr if isinstance(n, ast.Attribute) else getattr(n, "id", None)
                         for n in (node.left, node.right)}
                assert not names & {"momentum", "renorm_momentum"}, f"{path}:{node.lineno} weighs a momentum"


def test_parameter_and_statistics_fields_are_declared_by_the_mixins_alone():
    import dataclasses

    from jaxnorm._src import layer

    shared = {f.name for cls in (layer.Affine, layer.Statistics) for f in dataclasses.fields(cls)}
    for path, tree in SOURCES.items():
        if not path.startswith("_src/"):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef) or node.name in MIXINS:
                continue
            own = {s.target.id for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}
            repeated = own & shared - OWN_FIELDS.get(node.name, set())
            assert not repeated, f"{path}: {node.name} declares {sorted(repeated)} again (use layer.Scaled/Affine)"


@pytest.mark.parametrize("family", ["linen", "nnx"])
def test_flax_dropins_hold_no_math_and_call_the_core_once(family):
    kernels = {"ops", "normalize", "stats", "fused", "passes", "collectives", "pointwise"}
    for module in ("normalization.py", "pointwise.py", "residual.py", "gated.py", "adaptive.py", "quantized.py"):
        tree = SOURCES[f"{family}/{module}"]
        for node in ast.walk(tree):  # `_NORM` names a core of flax_compat, wrapped as a staticmethod
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_NORM" for t in node.targets):
                value = node.value
                assert isinstance(value, ast.Call) and getattr(value.func, "id", None) == "staticmethod", \
                    f"{family}/{module}:{node.lineno}"
                core = value.args[0]
                assert isinstance(core, ast.Attribute) and getattr(core.value, "id", None) == "flax_compat" \
                    and core.attr in CORES, f"{family}/{module}:{node.lineno} _NORM is not a flax_compat core"
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "jaxnorm._src"
                    for a in n.names}
        assert not imported & kernels, f"{family}/{module} imports {sorted(imported & kernels)}"
        for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
            call = next((f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == "__call__"), None)
            if call is None:
                continue
            # a core called by name, or through the class's `_NORM = staticmethod(flax_compat.<core>)`
            cores = [c for c in ast.walk(call) if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute)
                     and isinstance(c.func.value, ast.Name)
                     and (c.func.value.id == "flax_compat" and c.func.attr in CORES
                          or c.func.value.id == "self" and c.func.attr == "_NORM")]
            assert len(cores) == 1, f"{family}.{cls.name}.__call__ calls flax_compat {len(cores)} times"


def test_no_module_over_700_lines_and_no_function_over_80():
    for path, tree in SOURCES.items():
        lines = (ROOT / path).read_text().count("\n")
        assert lines <= 700, f"{path} has {lines} lines (split it by concept)"
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                assert length <= 80, f"{path}:{node.lineno} {node.name} runs {length} lines"


@pytest.mark.parametrize("family", ["linen", "nnx"])
def test_the_drop_ins_take_the_moving_option_defaults_from_their_one_home(family):
    import inspect

    from jaxnorm import linen, nnx
    from jaxnorm._src import moving

    layer = {"linen": linen, "nnx": nnx}[family].BatchNorm
    parameters = inspect.signature(layer.__init__).parameters
    assert {k: parameters[k].default for k in moving.DROP_IN_OPTIONS} == moving.DROP_IN_OPTIONS
    text = (ROOT / family / "normalization.py").read_text()
    for option in moving.DROP_IN_OPTIONS:  # read from the home, not written again
        assert f'{option}: ' in text and f'_MOVING["{option}"]' in text, option
