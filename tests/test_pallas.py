"""The fused Pallas LayerNorm/RMSNorm kernels (jaxnorm/_src/pallas_norm.py), run in Pallas interpret mode on CPU.

References are independent of the kernels: the forward is NumPy in float64, gradients are JAX autodiff of the
textbook formula in float64 (``jax.enable_x64``). Shapes are small (interpret mode compiles each configuration).
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxnorm._src import pallas_norm
from jaxnorm._src.pallas_norm import normalize_rows, pallas_available
from tests import reference as ref

EPS = 1e-5


def _run(x, scale=None, bias=None, *, subtract_mean, epsilon=EPS, **kw):
    return normalize_rows(x, scale, bias, epsilon, subtract_mean=subtract_mean, interpret=True, **kw)


def _data(m, n, *, seed=0, affine=(True, True), dtype=jnp.float32, param_dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((m, n)) * 2 + 0.5, dtype)
    scale = jnp.asarray(rng.standard_normal(n) + 1, param_dtype) if affine[0] else None
    bias = jnp.asarray(rng.standard_normal(n), param_dtype) if affine[1] else None
    return x, scale, bias


def _assert_close(actual, desired, atol, rtol=None):
    np.testing.assert_allclose(
        np.asarray(actual, np.float64),
        np.asarray(desired, np.float64),
        atol=atol,
        rtol=atol if rtol is None else rtol,
    )


# ----------------------------------------------------------------------------------------------------------------
# Forward.
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("subtract_mean", [True, False], ids=["layernorm", "rmsnorm"])
@pytest.mark.parametrize("n", [1, 7, 128, 200, 384])
@pytest.mark.parametrize("m", [1, 5, 33])
def test_forward_matches_float64_reference(m, n, subtract_mean):
    x, scale, bias = _data(m, n, seed=m * 1000 + n)
    y = _run(x, scale, bias, subtract_mean=subtract_mean)
    assert y.shape == x.shape and y.dtype == x.dtype
    _assert_close(y, ref.row_norm(x, scale, bias, EPS, subtract_mean), atol=1e-5)


@pytest.mark.parametrize("subtract_mean", [True, False], ids=["layernorm", "rmsnorm"])
@pytest.mark.parametrize("affine", [(True, False), (False, True), (False, False)], ids=["scale", "bias", "none"])
@pytest.mark.parametrize("m, n", [(5, 7), (33, 200)])
def test_forward_without_scale_or_bias(m, n, affine, subtract_mean):
    x, scale, bias = _data(m, n, affine=affine, seed=n)
    y = _run(x, scale, bias, subtract_mean=subtract_mean)
    _assert_close(y, ref.row_norm(x, scale, bias, EPS, subtract_mean), atol=1e-5)


@pytest.mark.parametrize("subtract_mean", [True, False], ids=["layernorm", "rmsnorm"])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("m, n", [(5, 7), (33, 384)])
def test_forward_half_precision_to_output_dtype_tolerance(m, n, dtype, subtract_mean):
    # Half-precision x and mixed-dtype parameters; arithmetic is float32, so the only error is the output rounding.
    x, scale, bias = _data(m, n, dtype=dtype, param_dtype=jnp.float32, seed=n + 1)
    bias = bias.astype(jnp.bfloat16)
    y = _run(x, scale, bias, subtract_mean=subtract_mean)
    assert y.dtype == dtype
    tol = float(jnp.finfo(dtype).eps)  # one ulp at |y| ~ 1 (half an ulp of rounding, relative)
    _assert_close(y, ref.row_norm(x, scale, bias, EPS, subtract_mean), atol=tol)


@pytest.mark.parametrize("block_rows", [1, 2, 64])
def test_forward_explicit_block_rows_including_more_than_m(block_rows):
    x, scale, bias = _data(5, 200, seed=3)
    y = _run(x, scale, bias, subtract_mean=True, block_rows=block_rows)
    _assert_close(y, ref.row_norm(x, scale, bias, EPS, True), atol=1e-5)


def test_layernorm_variance_is_two_pass_for_offset_data():
    # x = 1e3 + N(0, 1) in float32: a one-pass E[x^2] - E[x]^2 loses the variance (~1) to cancellation in
    # values ~1e6 (errors of several percent in y); the two-pass kernel keeps y to float32 rounding of the mean.
    rng = np.random.default_rng(7)
    x = jnp.asarray(1e3 + rng.standard_normal((33, 384)), jnp.float32)
    y = _run(x, subtract_mean=True)
    _assert_close(y, ref.row_norm(x, None, None, EPS, True), atol=5e-4, rtol=0)
    assert np.allclose(np.var(np.asarray(y, np.float64), axis=-1), 1.0, atol=1e-3)


def test_constant_rows_and_zero_epsilon():
    # LayerNorm of a constant row is 0 (then bias); padded lanes must not enter mean or variance.
    x = jnp.full((3, 7), 2.5, jnp.float32)
    bias = jnp.arange(7, dtype=jnp.float32)
    y = _run(x, None, bias, subtract_mean=True, epsilon=1e-3)
    _assert_close(y, np.broadcast_to(np.arange(7), (3, 7)), atol=1e-6)
    x, scale, _ = _data(4, 7, seed=11)
    y = _run(x, scale, None, subtract_mean=False, epsilon=0.0)
    _assert_close(y, ref.row_norm(x, scale, None, 0.0, False), atol=1e-5)


def test_empty_batch():
    x = jnp.zeros((0, 7), jnp.float32)
    assert _run(x, jnp.ones(7), None, subtract_mean=True).shape == (0, 7)
    dscale = jax.grad(lambda s: _run(x, s, None, subtract_mean=True).sum())(jnp.ones(7))
    np.testing.assert_array_equal(dscale, np.zeros(7))


# ----------------------------------------------------------------------------------------------------------------
# Gradients.
# ----------------------------------------------------------------------------------------------------------------


def _check_gradients(m, n, subtract_mean, *, affine=(True, True), seed=0, **kw):
    x, scale, bias = _data(m, n, affine=affine, seed=seed)
    dy = jnp.asarray(np.random.default_rng(seed + 1).standard_normal((m, n)), jnp.float32)
    _, vjp = jax.vjp(lambda x, s, b: _run(x, s, b, subtract_mean=subtract_mean, **kw), x, scale, bias)
    got = vjp(dy)
    want = ref.row_norm_grads(x, scale, bias, dy, EPS, subtract_mean)
    for name, g, w, p in zip(("dx", "dscale", "dbias"), got, want, (x, scale, bias), strict=True):
        if p is None:
            assert g is None, name
            continue
        assert g.shape == p.shape and g.dtype == p.dtype, name
        # dscale/dbias sum m rows of O(1) terms: scale the tolerance with sqrt(m).
        atol = 1e-4 * (1 if name == "dx" else np.sqrt(m))
        _assert_close(g, w, atol=atol, rtol=1e-4)


@pytest.mark.parametrize("subtract_mean", [True, False], ids=["layernorm", "rmsnorm"])
@pytest.mark.parametrize(
    "m, n, num_programs, block_rows",
    [
        (5, 7, 3, 1),  # persistent loop: 5 rows over 3 programs, one empty last iteration
        (33, 200, 3, 2),  # 17 row blocks of 2 (last one half full) over 3 programs
        (33, 384, None, None),  # defaults
        (1, 128, None, None),  # M < default num_programs
        (2, 384, 5, 1),  # M < num_programs requested
        (33, 1, 3, 4),  # N = 1
    ],
)
def test_gradients_match_float64_autodiff(m, n, num_programs, block_rows, subtract_mean):
    _check_gradients(m, n, subtract_mean, num_programs=num_programs, block_rows=block_rows, seed=m + n)


@pytest.mark.parametrize("subtract_mean", [True, False], ids=["layernorm", "rmsnorm"])
@pytest.mark.parametrize("affine", [(True, False), (False, True), (False, False)], ids=["scale", "bias", "none"])
def test_gradients_without_scale_or_bias(affine, subtract_mean):
    _check_gradients(5, 7, subtract_mean, affine=affine, num_programs=3, block_rows=1)


def test_gradients_half_precision_and_parameter_dtypes():
    # bf16 x, float32 scale, float16 bias: each cotangent comes back in its primal's dtype.
    x, scale, bias = _data(33, 128, dtype=jnp.bfloat16, seed=5)
    bias = bias.astype(jnp.float16)
    dy = jnp.asarray(np.random.default_rng(6).standard_normal((33, 128)), jnp.bfloat16)
    _, vjp = jax.vjp(lambda x, s, b: _run(x, s, b, subtract_mean=True, num_programs=3), x, scale, bias)
    dx, dscale, dbias = vjp(dy)
    assert (dx.dtype, dscale.dtype, dbias.dtype) == (jnp.bfloat16, jnp.float32, jnp.float16)
    want = ref.row_norm_grads(x, scale, bias, dy, EPS, True)
    _assert_close(dx, want[0], atol=5e-2, rtol=2e-2)  # dx is rounded to bf16
    _assert_close(dscale, want[1], atol=1e-3)  # float32 accumulation of exact bf16 inputs
    _assert_close(dbias, want[2], atol=2e-2, rtol=2e-3)  # rounded to float16


@pytest.mark.parametrize("subtract_mean", [True, False], ids=["layernorm", "rmsnorm"])
def test_check_grads_numerically(subtract_mean):
    x, scale, bias = _data(3, 7, seed=9)
    f = lambda x, s, b: _run(x, s, b, subtract_mean=subtract_mean, num_programs=2, block_rows=1)
    check_grads(jax.jit(f), (x, scale, bias), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)


# ----------------------------------------------------------------------------------------------------------------
# Transformations and residuals.
# ----------------------------------------------------------------------------------------------------------------


def test_jit_matches_eager_and_reference():
    x, scale, bias = _data(5, 200, seed=4)
    f = jax.jit(lambda x, s, b: _run(x, s, b, subtract_mean=False))
    y = f(x, scale, bias)
    np.testing.assert_array_equal(y, _run(x, scale, bias, subtract_mean=False))
    _assert_close(y, ref.row_norm(x, scale, bias, EPS, False), atol=1e-5)
    g = jax.jit(jax.grad(lambda x, s, b: jnp.sum(_run(x, s, b, subtract_mean=True) ** 2), (0, 1, 2)))
    want = ref.row_norm_grads(x, scale, bias, 2 * ref.row_norm(x, scale, bias, EPS, True), EPS, True)
    for got, w in zip(g(x, scale, bias), want, strict=True):
        _assert_close(got, w, atol=1e-3, rtol=1e-4)


def test_vmap_over_leading_axis_forward_and_gradients():
    rng = np.random.default_rng(12)
    xs = jnp.asarray(rng.standard_normal((3, 5, 7)), jnp.float32)
    _, scale, bias = _data(5, 7, seed=13)
    dys = jnp.asarray(rng.standard_normal((3, 5, 7)), jnp.float32)
    f = lambda x, s, b: _run(x, s, b, subtract_mean=True, num_programs=2, block_rows=1)
    ys = jax.jit(jax.vmap(f, in_axes=(0, None, None)))(xs, scale, bias)
    _assert_close(ys, ref.row_norm(xs, scale, bias, EPS, True), atol=1e-5)
    # Gradients of the batched call: dx per example, dscale/dbias summed over the batch.
    _, vjp = jax.vjp(jax.vmap(f, in_axes=(0, None, None)), xs, scale, bias)
    dx, dscale, dbias = vjp(dys)
    want = [ref.row_norm_grads(xs[i], scale, bias, dys[i], EPS, True) for i in range(3)]
    _assert_close(dx, np.stack([w[0] for w in want]), atol=1e-4)
    _assert_close(dscale, sum(w[1] for w in want), atol=1e-4)
    _assert_close(dbias, sum(w[2] for w in want), atol=1e-4)


def test_residuals_are_x_scale_and_per_row_statistics_only():
    m, n = 5, 7
    x, scale, bias = _data(m, n, dtype=jnp.bfloat16, seed=14)
    for subtract_mean in (True, False):
        _, vjp = jax.vjp(lambda x, s, b, sm=subtract_mean: _run(x, s, b, subtract_mean=sm), x, scale, bias)
        leaves = jax.tree_util.tree_leaves(vjp)
        full = [a for a in leaves if np.size(a) >= m * n]
        # The only full-size residual is x itself (bf16): no float32 copy, no xhat, no y.
        assert len(full) == 1 and full[0] is x, [(a.shape, a.dtype) for a in full]
        stats = sorted((tuple(a.shape), str(a.dtype)) for a in leaves if a is not x and a is not scale)
        assert stats == [((m,), "float32")] * (2 if subtract_mean else 1)
        # The fwd rule's residual tuple, directly: (x, scale, mean or None, rstd).
        _, res = pallas_norm._normalize_fwd(
            x, scale, bias, EPS, subtract_mean, True, None, None, np.dtype("float32")
        )
        assert res[0] is x and res[1] is scale
        assert (res[2] is None) != subtract_mean
        assert all(r.shape == (m,) and r.dtype == jnp.float32 for r in res[2:] if r is not None)


# ----------------------------------------------------------------------------------------------------------------
# The Triton lowering (no GPU needed: lower for CUDA without compiling) and the availability helper.
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, dtype, warps",
    [(7, jnp.float32, 4), (4096, jnp.float32, 8), (16384, jnp.float32, 16), (32768, jnp.bfloat16, 16)],
)
def test_kernels_lower_to_triton_for_cuda(n, dtype, warps):
    x = jax.ShapeDtypeStruct((3, n), dtype)
    p = jax.ShapeDtypeStruct((n,), jnp.float32)

    def fwd_and_bwd(x, s, b):
        y, vjp = jax.vjp(lambda x, s, b: normalize_rows(x, s, b, EPS, subtract_mean=True), x, s, b)
        return y, vjp(y)

    text = jax.jit(fwd_and_bwd).trace(x, p, p).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("xla.gpu.triton") == 2  # one forward kernel, one backward kernel
    assert set(re.findall(r"num_warps = (\d+)", text)) == {str(warps)}


def test_pallas_available_is_false_on_cpu():
    assert jax.default_backend() == "cpu"
    assert pallas_available() is False


# ----------------------------------------------------------------------------------------------------------------
# Input validation.
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(x=jnp.ones(7)), ValueError, r"x must be a 2-D .*got shape \(7,\)"),
        (dict(x=jnp.ones((2, 3, 7))), ValueError, r"x must be a 2-D .*rank 3"),
        (dict(x=jnp.ones((2, 7), jnp.int32)), TypeError, r"x must have dtype float32, bfloat16 or float16.*int32"),
        (dict(x=jnp.ones((2, 0))), ValueError, r"x must have at least one column"),
        (dict(x=jnp.ones((1, 16385))), ValueError, r"N=16385.*N <= 16384.*implementation='xla'"),
        (dict(scale=jnp.ones(8)), ValueError, r"scale must have shape \(N,\) = \(7,\).*got shape \(8,\)"),
        (dict(scale=jnp.ones((1, 7))), ValueError, r"scale must have shape .*got shape \(1, 7\)"),
        (dict(bias=jnp.ones(6)), ValueError, r"bias must have shape .*got shape \(6,\)"),
        (dict(scale=jnp.ones(7, jnp.int32)), TypeError, r"scale must have a floating dtype; got int32"),
        (dict(epsilon=-1.0), ValueError, r"epsilon must be finite and >= 0; got -1.0"),
        (dict(epsilon=jnp.float32(1e-5)), TypeError, r"epsilon must be a Python float"),
        (dict(block_rows=3), ValueError, r"block_rows must be a positive power of 2 .*got 3"),
        (dict(num_programs=0), ValueError, r"num_programs must be a positive int; got 0"),
        (dict(num_programs=2.0), TypeError, r"num_programs must be a Python int"),
    ],
)
def test_bad_inputs_name_the_argument(kwargs, error, match):
    args = dict(x=jnp.ones((2, 7)), scale=None, bias=None, epsilon=EPS)
    args.update({k: kwargs.pop(k) for k in list(kwargs) if k in args})
    with pytest.raises(error, match=match):
        normalize_rows(
            args["x"], args["scale"], args["bias"], args["epsilon"], subtract_mean=True, interpret=True, **kwargs
        )


def test_float64_is_rejected_with_the_fix():
    with jax.enable_x64(True):
        x = jnp.ones((2, 7), jnp.float64)
        with pytest.raises(TypeError, match=r"x must have dtype .*got float64.*implementation='xla'"):
            normalize_rows(x, None, None, EPS, subtract_mean=False, interpret=True)


def test_traced_epsilon_is_rejected():
    x = jnp.ones((2, 7))
    with pytest.raises(TypeError, match="epsilon must be a Python float"):
        jax.jit(lambda x, e: normalize_rows(x, None, None, e, subtract_mean=True, interpret=True))(x, 1e-5)


# --- The public switch: jaxnorm.layer_norm / jaxnorm.LayerNorm(implementation=...) -----------------------------


@pytest.mark.parametrize("shape, axis", [((5, 24), -1), ((2, 3, 4, 6), (-2, -1))])
def test_layer_norm_pallas_equals_xla_values_and_gradients(shape, axis):
    import jaxnorm

    rng = np.random.default_rng(11)
    x = jnp.asarray(rng.standard_normal(shape) * 2 + 3, jnp.float32)
    pshape = x.shape[-1:] if axis == -1 else x.shape[-2:]
    scale = jnp.asarray(rng.standard_normal(pshape), jnp.float32)
    bias = jnp.asarray(rng.standard_normal(pshape), jnp.float32)
    w = jnp.asarray(rng.standard_normal(shape), jnp.float32)

    def loss(impl):
        return lambda x, s, b: jnp.sum(jaxnorm.layer_norm(x, s, b, axis=axis, implementation=impl) * w)

    got = jax.jit(jax.value_and_grad(loss("pallas"), (0, 1, 2)))(x, scale, bias)
    want = jax.value_and_grad(loss("xla"), (0, 1, 2))(x, scale, bias)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-4)
    for g, r in zip(got[1], want[1], strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)
    want = ref.row_norm(x.reshape(-1, int(np.prod(pshape))), scale.reshape(-1), bias.reshape(-1), 1e-3, True)
    np.testing.assert_allclose(jaxnorm.layer_norm(x, scale, bias, axis=axis, implementation="pallas"),
                               want.reshape(shape), rtol=1e-5, atol=1e-5)


def test_layer_norm_spec_implementation_field():
    import jaxnorm

    x = jax.random.normal(jax.random.key(0), (4, 8), jnp.bfloat16)
    ln = jaxnorm.LayerNorm(implementation="pallas")
    params, state = ln.init(jax.random.key(1), x)
    y, _ = ln.apply(params, state, x)
    y_xla, _ = jaxnorm.LayerNorm().apply(params, state, x)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(y_xla, np.float32), atol=2e-2)
    assert jaxnorm.LayerNorm.from_config(ln.get_config()) == ln
    assert "implementation" not in ln.to_keras_config()  # a performance choice, not Keras semantics


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"implementation": "triton"}, r"`implementation` must be one of .*; got 'triton'"),
        ({"implementation": "pallas", "axis": 0}, r"not the trailing axes.*implementation='xla'"),
        ({"implementation": "pallas", "where": jnp.ones((3, 4), bool)}, r"mask .*implementation='xla'"),
    ],
)
def test_layer_norm_implementation_errors_name_the_fix(kwargs, match):
    import jaxnorm

    with pytest.raises(ValueError, match=match):
        jaxnorm.layer_norm(jnp.ones((3, 4)), **kwargs)
    if set(kwargs) == {"implementation"}:
        with pytest.raises(ValueError, match=match):
            jaxnorm.LayerNorm(**kwargs)


def test_layer_norm_pallas_refuses_float64_and_long_rows_with_the_fix():
    import jaxnorm

    with jax.enable_x64(True), pytest.raises(ValueError, match=r"dtype float64.*implementation='xla'"):
        jaxnorm.layer_norm(jnp.ones((2, 4), jnp.float64), implementation="pallas")
    with pytest.raises(ValueError, match=r"rows of 20000 elements exceed.*implementation='xla'"):
        jax.eval_shape(lambda x: jaxnorm.layer_norm(x, implementation="pallas"),
                       jax.ShapeDtypeStruct((2, 20000), jnp.float32))
