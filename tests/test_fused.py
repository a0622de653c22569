"""The memory-light custom derivative (jaxnorm/_src/fused.py): same gradients as autodiff, fewer residuals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxnorm
from jaxnorm._src import fused
from tests.tolerances import assert_close


def _autodiff_reference(x, scale, bias, axes, epsilon):
    """The textbook forward in plain jnp, differentiated by JAX: the independent reference."""
    mean = jnp.mean(x, axes, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axes, keepdims=True)
    y = (x - mean) / jnp.sqrt(var + epsilon)
    if scale is not None:
        y = y * scale
    if bias is not None:
        y = y + bias
    return y, mean, var


@pytest.mark.parametrize(
    "axes, pshape", [((1,), (1, 5)), ((0,), (1, 5)), ((0, 2), (1, 3, 1)), ((1, 2), (1, 3, 4))]
)
@pytest.mark.parametrize("affine", [True, False])
def test_gradients_equal_autodiff_including_statistics_cotangents(axes, pshape, affine):
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        shape = (4, 5) if len(pshape) == 2 else (4, 3, 4)
        x = jnp.asarray(rng.standard_normal(shape) * 3 + 2)
        scale = jnp.asarray(rng.standard_normal(pshape)) if affine else None
        bias = jnp.asarray(rng.standard_normal(pshape)) if affine else None
        w = jnp.asarray(rng.standard_normal(shape))
        a, c = (jnp.asarray(rng.standard_normal(np.shape(jnp.mean(x, axes, keepdims=True)))) for _ in range(2))
        eps = jnp.asarray(0.3)

        def loss(f):  # y, mean and var all reach the loss, and epsilon is differentiated too
            def inner(x, scale, bias, eps):
                y, mean, var = f(x, scale, bias, axes, eps)
                return jnp.sum(y * w) + jnp.sum(mean * a) + jnp.sum(var * c)

            return inner

        argnums = (0, 1, 2, 3) if affine else (0, 3)
        want = jax.grad(loss(_autodiff_reference), argnums)(x, scale, bias, eps)
        got = jax.grad(loss(fused.normalize_with_moments), argnums)(x, scale, bias, eps)
        for g, r in zip(got, want, strict=True):
            assert_close(g, r, jnp.float64)
        # Forward mode works too (a custom_jvp, unlike a custom_vjp), and both modes pass numerical checks.
        f = lambda x, eps: fused.normalize_with_moments(x, scale, bias, axes, eps)  # noqa: E731
        check_grads(f, (x, eps), order=2, modes=("fwd", "rev"))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_reverse_mode_saves_only_the_input_and_per_row_statistics(dtype):
    m, n = 64, 256
    x = jax.random.normal(jax.random.key(0), (m, n), dtype)
    scale, bias = jnp.ones(n), jnp.zeros(n)
    _, vjp_fn = jax.vjp(lambda x, s, b: jaxnorm.layer_norm(x, s, b), x, scale, bias)
    saved = sum(leaf.nbytes for leaf in jax.tree.leaves(vjp_fn))
    # x itself (held by the caller anyway) + scale + float32 mean and rstd per row; no full-size float32 copy.
    assert saved <= x.nbytes + scale.nbytes + 2 * m * 4 + 64
    # The plain autodiff of the same forward keeps several full-size float32 arrays.
    _, vjp_ref = jax.vjp(
        lambda x, s, b: _autodiff_reference(x.astype(jnp.float32), s[None], b[None], (1,), 1e-3)[0], x, scale, bias
    )
    assert sum(leaf.nbytes for leaf in jax.tree.leaves(vjp_ref)) >= saved + 2 * m * n * 4


def test_batch_norm_training_gradients_equal_autodiff_of_reference():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((6, 3, 3, 4)) + 5, jnp.float32)
    w = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
    bn = jaxnorm.BatchNorm()
    params, state = bn.init(None, x)
    params = {"scale": jnp.asarray(rng.standard_normal(4), jnp.float32), "bias": jnp.zeros(4)}

    def ours(x, p):
        return jnp.sum(bn.apply(p, state, x, training=True)[0] * w)

    def reference(x, p):
        y = _autodiff_reference(x, p["scale"].reshape(1, 1, 1, 4), p["bias"].reshape(1, 1, 1, 4), (0, 1, 2),
                                bn.epsilon)[0]
        return jnp.sum(y * w)

    got, want = jax.grad(ours, (0, 1))(x, params), jax.grad(reference, (0, 1))(x, params)
    assert_close(got[0], want[0], scale=10)
    for k in ("scale", "bias"):
        assert_close(got[1][k], want[1][k], scale=10)
