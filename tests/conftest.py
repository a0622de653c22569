"""Test configuration: two CPU devices, explicit-rank broadcasting, warnings as errors (see pyproject)."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

# jaxnorm never relies on implicit rank promotion; make any accidental use an error in the tests.
jax.config.update("jax_numpy_rank_promotion", "raise")

