"""Test configuration: four CPU devices, explicit-rank broadcasting, warnings as errors (see pyproject).

Most of the suite's time is XLA compiling many small programs, so the tests compile with LLVM's optimizations
off (``--xla_backend_optimization_level=0``): the same XLA graphs and numerics contract, about 20% less time
(measured on tests/test_registry.py, 83 s -> 66 s on a 2-core CPU). benchmarks/run.py never sets it (the
benchmark smoke test checks no figures).
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

# jaxnorm never relies on implicit rank promotion; make any accidental use an error in the tests.
jax.config.update("jax_numpy_rank_promotion", "raise")


# JAXNORM_TEST_FORMULATION=accelerator runs the suite with the GPU/TPU formulation of the statistics (branch-free
# exact statistics, no per-pass barriers, no blocked row loop) on the CPU: its numerics are then checked by every
# test, without a GPU. `.ci/run` runs the numerics tests this way too.
if os.environ.get("JAXNORM_TEST_FORMULATION") == "accelerator":
    from jaxnorm._src import stats  # noqa: E402

    stats._ACCELERATOR = True


def pytest_collection_modifyitems(config, items):
    import pytest

    if os.environ.get("JAXNORM_TEST_FORMULATION") == "accelerator":
        skip = pytest.mark.skip(reason="checks the CPU formulation's compiled structure")
        for item in items:
            if "cpu_formulation" in item.keywords:
                item.add_marker(skip)
