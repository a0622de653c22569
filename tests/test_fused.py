"""The memory-light custom derivative (jaxnorm/_src/fused.py): same gradients as autodiff, fewer residuals."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxnorm
from jaxnorm._src import fused, normalize, ops
from tests.reference import textbook_normalize
from tests.tolerances import assert_close


def _ours(x, scale, bias, axes, eps, extreme=False):
    y, _, mean, var = normalize.normalize_by_moments(x, scale, bias, axes, eps, extreme_range=extreme)
    return y, mean, var


_COTANGENT_SHAPES = [
    ((4, 5), (1,), (1, 5)), ((4, 3, 4), (1, 2), (1, 3, 4)), ((4, 3, 4), (2,), (1, 1, 4)),
    ((4, 3, 4), (2,), (1, 3, 4)), ((7, 3), (1,), (1, 3)),
    # columns (BatchNorm): leading axes, params along the kept ones (or varying along a reduced one)
    ((4, 5), (0,), (1, 5)), ((4, 3, 4), (0, 1), (1, 1, 4)), ((4, 3, 4), (0,), (1, 3, 4)),
    ((4, 3, 4), (0,), (1, 1, 4)), ((4, 3, 4), (0, 1), (4, 1, 4)),
    # per-example params (AdaLN's (N, 1, C)), which the forward maps over the examples
    ((4, 3, 4), (2,), (4, 1, 4)), ((3, 2, 2, 4), (3,), (3, 1, 1, 4)), ((4, 3, 4), (2,), (4, 1, 4)),
]
# Each shape runs with and without scale/bias, in turn, and with extreme_range on every third case.
@pytest.mark.parametrize(
    "shape, axes, pshape, affine, extreme",
    [(*case, i % 2 == 0, i % 3 == 1) for i, case in enumerate(_COTANGENT_SHAPES)],
)
def test_gradients_equal_autodiff_including_statistics_cotangents(shape, axes, pshape, affine, extreme):
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
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
        ours = functools.partial(_ours, extreme=extreme)
        # (Everything compiled: eagerly, every primitive of the second-order graphs would compile on its own.)
        want = jax.jit(jax.grad(loss(textbook_normalize), argnums))(x, scale, bias, eps)
        got = jax.jit(jax.grad(loss(ours), argnums))(x, scale, bias, eps)
        for g, r in zip(got, want, strict=True):
            assert g.shape == r.shape and g.dtype == r.dtype
            assert_close(g, r, jnp.float64)
        # Second order differentiates the backward itself: reverse over reverse, forward over reverse (the
        # Hessian), and a Hessian-vector product, each against the same derivative of the reference.
        def second_orders(f):
            g = jax.grad(lambda x, eps: jnp.sum(f(x, scale, bias, axes, eps)[0] * w), (0, 1))
            rev = jax.jacrev(g, (0, 1))(x, eps)
            fwd = jax.jacfwd(g, (0, 1))(x, eps)
            hvp = jax.jvp(lambda x: g(x, eps)[0], (x,), (w,))[1]
            return rev, fwd, hvp

        got, want = jax.jit(second_orders, static_argnums=0)(ours), jax.jit(second_orders, static_argnums=0)(
            textbook_normalize)
        for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            assert_close(g, r, jnp.float64)


def _textbook(x, axes, eps, center=True):
    mean = jnp.mean(x, axes, keepdims=True) if center else 0.0
    return (x - mean) / jnp.sqrt(jnp.mean(jnp.square(x - mean), axes, keepdims=True) + eps)


def _bn_train(x, s, b):
    spec = jaxnorm.BatchNorm(epsilon=0.3)
    params, state = spec.init(jax.random.key(0), x)
    return spec.apply({"scale": s, "bias": b}, state, x, training=True)[0]


def _p(p, ndim, axis=-1):
    """A (C,) parameter of x's rank, along ``axis``."""
    shape = [1] * ndim
    shape[axis] = p.shape[0]
    return p.reshape(shape)


# (name, ours(x, s, b), float64 textbook reference(x, s, b), x shape, param shape): every op whose default path
# is a custom derivative (rows: LayerNorm/RMSNorm; columns: BatchNorm NHWC; any axes: GroupNorm, InstanceNorm,
# channels-first BatchNorm).
FORWARD_MODE_OPS = [
    ("layer_norm", lambda x, s, b: jaxnorm.layer_norm(x, s, b, epsilon=0.3),
     lambda x, s, b: _textbook(x, (1,), 0.3) * _p(s, 2) + _p(b, 2), (4, 6), (6,)),
    ("rms_norm", lambda x, s, b: jaxnorm.rms_norm(x, s, epsilon=0.3),
     lambda x, s, b: _textbook(x, (1,), 0.3, center=False) * _p(s, 2), (4, 6), (6,)),
    ("batch_norm_nhwc", _bn_train,
     lambda x, s, b: _textbook(x, (0, 1, 2), 0.3) * _p(s, 4) + _p(b, 4), (3, 2, 2, 4), (4,)),
    ("normalize_batch_in_training_nchw",
     lambda x, s, b: jaxnorm.normalize_batch_in_training(x, _p(s, 4, 1), _p(b, 4, 1), (0, 2, 3), 0.3)[0],
     lambda x, s, b: _textbook(x, (0, 2, 3), 0.3) * _p(s, 4, 1) + _p(b, 4, 1), (3, 4, 2, 2), (4,)),
    ("group_norm", lambda x, s, b: jaxnorm.group_norm(x, s, b, num_groups=2, epsilon=0.3),
     lambda x, s, b: _textbook(x.reshape(2, 3, 2, 2), (1, 3), 0.3).reshape(2, 3, 4) * _p(s, 3) + _p(b, 3),
     (2, 3, 4), (4,)),
    ("instance_norm", lambda x, s, b: jaxnorm.instance_norm(x, s, b, epsilon=0.3),
     lambda x, s, b: _textbook(x, (1,), 0.3) * _p(s, 3) + _p(b, 3), (2, 5, 3), (3,)),
    # per-example (N, C) modulation rows, broadcast over the tokens: the forward maps over the examples
    ("adaptive_norm", lambda x, s, b: jaxnorm.adaptive_norm(x, b, s, epsilon=0.3),
     lambda x, s, b: _textbook(x, (2,), 0.3) * (1 + s[:, None]) + b[:, None], (3, 4, 5), (3, 5)),
    ("adaptive_rms_norm", lambda x, s, b: jaxnorm.adaptive_norm(x, b, s, rms=True, epsilon=0.3),
     lambda x, s, b: _textbook(x, (2,), 0.3, center=False) * (1 + s[:, None]) + b[:, None], (3, 4, 5), (3, 5)),
]


@pytest.mark.parametrize("name, ours, ref, shape, pshape", FORWARD_MODE_OPS, ids=[o[0] for o in FORWARD_MODE_OPS])
def test_forward_and_reverse_modes_equal_autodiff_of_the_float64_reference(name, ours, ref, shape, pshape):
    """jax.jvp and jacfwd of the op itself (the closed-form tangent), grad (the hand-written backward, the
    tangent's transpose), the Hessian (forward over reverse), reverse over reverse, and vmap of jvp: all equal
    the same derivatives of the float64 textbook formula."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        x = jnp.asarray(rng.standard_normal(shape) * 3 + 2)
        s, b = (jnp.asarray(rng.standard_normal(pshape)) for _ in range(2))
        w = jnp.asarray(rng.standard_normal(shape))
        tx, ts, tb = (jnp.asarray(rng.standard_normal(np.shape(a))) for a in (x, s, b))

        def derivatives(f):
            loss = lambda x, s, b: jnp.sum(f(x, s, b) * w)  # noqa: E731
            return dict(
                jvp=jax.jvp(f, (x, s, b), (tx, ts, tb)),
                jacfwd=jax.jacfwd(f, (0, 1, 2))(x, s, b),
                grad=jax.grad(loss, (0, 1, 2))(x, s, b),
                hessian=jax.hessian(lambda x: loss(x, s, b))(x),
                rev_rev=jax.jacrev(jax.grad(loss))(x, s, b),
                vmap_jvp=jax.vmap(lambda t: jax.jvp(lambda x: f(x, s, b), (x,), (t,))[1])(jnp.stack([tx, w])),
            )

        got = jax.jit(derivatives, static_argnums=0)(ours)
        want = jax.jit(derivatives, static_argnums=0)(ref)
        for key in want:
            for g, r in zip(jax.tree.leaves(got[key]), jax.tree.leaves(want[key]), strict=True):
                assert g.shape == r.shape, (key, g.shape, r.shape)
                assert_close(g, r, jnp.float64, scale=10)


def test_reverse_mode_runs_the_hand_written_backward(monkeypatch):
    """grad of the fused path transposes the tangent with the hand-written backward, not JAX's transposition of
    the tangent map (which forward mode runs)."""
    calls = []
    monkeypatch.setattr(fused, "_backward", lambda *a, _f=fused._backward: calls.append("bwd") or _f(*a))
    x = jnp.ones((4, 8))
    jax.grad(lambda x: jnp.sum(jaxnorm.layer_norm(x) ** 2))(x)
    assert calls == ["bwd"]
    jax.jvp(jaxnorm.layer_norm, (x,), (x,))
    assert calls == ["bwd"]


def test_matches_reference_on_offset_data_and_empty_rows():
    x = 1e4 + jax.random.normal(jax.random.key(3), (5, 300))
    y, mean, var = fused.normalize(x, None, None, (1,), 0.0)
    ref = np.asarray(x, np.float64)
    assert_close(var, ref.var(1), jnp.float32, scale=2)
    assert_close(mean, ref.mean(1), jnp.float32)
    y0, _, _ = normalize.normalize_by_moments(jnp.ones((0, 4)), None, None, (1,), 1e-3)[:3]
    assert y0.shape == (0, 4)
    g = jax.grad(lambda x: jnp.sum(jaxnorm.layer_norm(x)))(jnp.ones((0, 4)))
    assert g.shape == (0, 4)


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
        lambda x, s, b: textbook_normalize(x.astype(jnp.float32), s[None], b[None], (1,), 1e-3)[0], x, scale,
        bias,
    )
    # (at least two float32 copies beyond the input itself).
    assert sum(leaf.nbytes for leaf in jax.tree.leaves(vjp_ref)) >= x.nbytes + 2 * m * n * 4


_OPS_FOR_TEMPS = {
    "layer_norm": ((256, 1024), lambda x, s, b: jaxnorm.layer_norm(x, s, b)),
    "rms_norm": ((256, 1024), lambda x, s, b: jaxnorm.rms_norm(x, s)),
    "batch_norm": ((8, 16, 16, 256), lambda x, s, b: ops.normalize_batch_in_training(x, s, b, (0, 1, 2))[0]),
    "group_norm": ((8, 16, 16, 256), lambda x, s, b: jaxnorm.group_norm(x, s, b, num_groups=32)),
    # per-example modulation rows (the forward mapped over the examples)
    "adaptive_norm": ((8, 32, 1024), lambda x, s, b: jaxnorm.adaptive_norm(
        x, jnp.broadcast_to(b, (8, 1024)) * jnp.arange(8.0)[:, None], jnp.broadcast_to(s, (8, 1024)))),
}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("op", sorted(_OPS_FOR_TEMPS))
def test_no_full_size_temporary_in_forward_or_backward(op, dtype):
    """README's promise: the forward and the hand-written backward materialize no full-size intermediate, and no
    float32 copy of 16-bit input (each pass converts x itself, passes.fresh). Checked on XLA's compiled temporary
    memory, against the quarter of one float32 copy of x; the plain autodiff of the same math needs more."""
    shape, f = _OPS_FOR_TEMPS[op]
    x = jax.random.normal(jax.random.key(0), shape, dtype)
    dy = jax.random.normal(jax.random.key(1), shape, dtype)
    s, b = jnp.ones(shape[-1]), jnp.zeros(shape[-1])
    full = x.size * 4  # one float32 copy of x

    def temp(fun, *args):
        return jax.jit(fun).lower(*args).compile().memory_analysis().temp_size_in_bytes

    assert temp(f, x, s, b) < full / 4
    assert temp(lambda x, s, b, dy: jax.vjp(f, x, s, b)[1](dy), x, s, b, dy) < full / 4
    if dtype == jnp.bfloat16:  # the same formula with one shared conversion keeps a float32 copy of x
        mean = lambda x: jnp.mean(x.astype(jnp.float32), -1, keepdims=True)  # noqa: E731
        assert temp(lambda x: (x.astype(jnp.float32) - mean(x)).astype(x.dtype), x) >= full


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
        y = textbook_normalize(x, p["scale"].reshape(1, 1, 1, 4), p["bias"].reshape(1, 1, 1, 4), (0, 1, 2),
                               bn.epsilon)[0]
        return jnp.sum(y * w)

    got, want = jax.grad(ours, (0, 1))(x, params), jax.grad(reference, (0, 1))(x, params)
    assert_close(got[0], want[0], scale=10)
    for k in ("scale", "bias"):
        assert_close(got[1][k], want[1][k], scale=10)


def test_forward_over_reverse_through_scan():
    """Under lax.scan, forward-over-reverse AD differentiates the statistics kernel's own implementation (JAX
    drops a custom_jvp rule when it partially evaluates a scan body): the Hessian-vector product equals the
    unrolled loop's."""
    x = jax.random.normal(jax.random.key(4), (3, 8))
    s = jnp.linspace(0.5, 1.5, 8)

    def step(c):
        return jnp.sin(jaxnorm.layer_norm(c, s))

    def scanned(x):
        return jnp.sum(lax.scan(lambda c, _: (step(c), None), x, None, length=2)[0])

    def unrolled(x):
        return jnp.sum(step(step(x)))

    hvp = lambda f: jax.jit(lambda x, t: jax.jvp(jax.grad(f), (x,), (t,))[1])(x, x)  # noqa: E731
    got, want = hvp(scanned), hvp(unrolled)
    assert np.isfinite(np.asarray(got)).all()
    assert_close(got, want, jnp.float32, scale=10)
