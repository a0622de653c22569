"""Test configuration: four CPU devices, explicit-rank broadcasting, warnings as errors (see pyproject), tiers.

Most of the suite's time is XLA compiling many small programs, so the tests compile with LLVM's optimizations
off (``--xla_backend_optimization_level=0``): the same XLA graphs and numerics contract, about 20% less time
(measured on tests/test_registry.py, 83 s -> 66 s on a 2-core CPU). benchmarks/run.py never sets it (the
benchmark smoke test checks no figures).
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# JAX's persistent compilation cache, shared by the xdist workers and kept between runs (under .pytest_cache, which
# git ignores): a program one worker or run compiled is loaded, not compiled again. Measured on this 2-core CPU,
# tests/test_registry.py: 68 s without it, 59 s with an empty cache, 37 s with a warm one. Its key is the program
# and the compiler (jax/jaxlib version, flags), so a code change is a miss, never a stale hit.
_CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "jax")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# PyTorch (the peers tier) on the 2 xdist workers: one OpenMP thread each, and no spinning OpenMP threads that
# would steal the other worker's core between calls (benchmarks/README.md measured a scheduler tick per call).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax  # noqa: E402
import pytest  # noqa: E402

# jaxnorm never relies on implicit rank promotion; make any accidental use an error in the tests.
jax.config.update("jax_numpy_rank_promotion", "raise")


# The tiers (README, "Tests"). The README's command runs the default tier: every test function with its first
# parametrization, so that every module and every check runs once. The rest is marked and run by .ci/run:
#   full   the other parametrizations, and float64 gradient checks and other compile-heavy single tests;
#   peers  conformance against Keras and PyTorch themselves (skipped, with the reason, when not installed);
#   slow   training runs, the benchmark smoke runs, hypothesis sweeps.
# `python -m pytest -m ""` runs everything.
PEERS = ("keras", "torch")


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


# Modules whose every test is a `peers` test: not even imported (Keras alone takes 5 s) when `-m` leaves peers out.
PEER_MODULES = {"test_keras_conformance.py", "test_keras_gradients.py", "test_continue_training.py"}


def pytest_ignore_collect(collection_path, config):
    if collection_path.name not in PEER_MODULES or not config.option.markexpr:
        return None
    try:
        from _pytest.mark.expression import Expression

        selected = Expression.compile(config.option.markexpr).evaluate(lambda name, **kw: name == "peers")
    except Exception:  # another pytest's private API: collect as usual
        return None
    return True if not selected else None


@pytest.hookimpl(tryfirst=True)  # before pytest's own -m selection reads the markers
def pytest_collection_modifyitems(config, items):
    first = set()
    for item in items:
        # peers: marked `@pytest.mark.peers("keras")`, or asking for the `keras`/`torch` fixture.
        needs = [n for n in PEERS if n in getattr(item, "fixturenames", ())]
        for mark in item.iter_markers("peers"):
            needs += list(mark.args)
        if needs:
            if item.get_closest_marker("peers") is None:
                item.add_marker(pytest.mark.peers(*needs))
            missing = [n for n in needs if not _installed(n)]
            if missing:
                why = f"{', '.join(missing)} not installed (pip install -e '.[conformance]')"
                item.add_marker(pytest.mark.skip(reason=why))
        # full: a parametrized function's cases after its first (unless its parametrization assigns tiers itself).
        spec = getattr(item, "callspec", None)
        if spec is not None and item.get_closest_marker("own_tiers") is None:
            key = (item.nodeid.split("[")[0])
            if key in first:
                item.add_marker(pytest.mark.full)
            first.add(key)


@pytest.fixture(scope="session")
def keras():
    """Keras 3 on the JAX backend (a `peers` test: skipped when Keras is not installed)."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    if keras.backend.backend() != "jax":
        backend = keras.backend.backend()
        pytest.skip(f"the Keras tests need KERAS_BACKEND=jax (Keras was imported with {backend!r})")
    return keras


@pytest.fixture(scope="session")
def torch():
    """PyTorch on the CPU (a `peers` test: skipped when PyTorch is not installed)."""
    import torch

    return torch
