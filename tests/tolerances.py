"""One tolerance table for the whole suite (after jax's test utilities): values and gradients per dtype."""

import jax.numpy as jnp
import numpy as np

VALUE_ATOL = {jnp.bfloat16: 2e-2, jnp.float16: 2e-3, jnp.float32: 1e-5, jnp.float64: 1e-12}
GRAD_ATOL = {jnp.bfloat16: 1e-1, jnp.float16: 1e-2, jnp.float32: 2e-3, jnp.float64: 1e-5}
# Values of normalized outputs are O(1); half-precision outputs carry their own rounding of |y| ~ 3.
VALUE_RTOL = {jnp.bfloat16: 2e-2, jnp.float16: 2e-3, jnp.float32: 1e-5, jnp.float64: 1e-12}


def _key(dtype):
    return {np.dtype(k): k for k in VALUE_ATOL}[np.dtype(dtype)]


def assert_close(actual, desired, dtype=jnp.float32, scale=1.0):
    """Asserts values agree to the tolerance of ``dtype`` (``scale`` widens it for long reductions)."""
    k = _key(dtype)
    np.testing.assert_allclose(
        np.asarray(actual, np.float64), np.asarray(desired, np.float64),
        atol=VALUE_ATOL[k] * scale, rtol=VALUE_RTOL[k] * scale,
    )


def grad_tol(dtype):
    return GRAD_ATOL[_key(dtype)]
