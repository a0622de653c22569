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

