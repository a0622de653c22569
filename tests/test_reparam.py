"""SpectralNorm and WeightNorm (ops, specs) against NumPy float64, Flax, PyTorch and Keras.

References: the SVD (largest singular value) and the closed-form gradient of w / sigma for spectral
normalization; column norms and autodiff-free float64 formulas for weight normalization; flax.linen
SpectralNorm and WeightNorm for the specs' state and arithmetic; torch.nn.utils.parametrizations.weight_norm /
spectral_norm; keras.layers.SpectralNormalization. (The Flax drop-ins, jaxnorm.linen and jaxnorm.nnx
SpectralNorm and WeightNorm: tests/test_flax_dropin.py.)
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax.test_util import check_grads

import jaxnorm
from tests.tolerances import assert_close, grad_tol

# The specs follow Flax's arithmetic: on CPU they agree bit for bit; allow float32 reassociation elsewhere.
FLAX_TOL = dict(rtol=1e-6, atol=1e-6)


def _normal(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _with_singular_values(rows, cols, values, seed=0):
    """A float64 (rows, cols) matrix with the given singular values (random orthonormal factors)."""
    rng = np.random.default_rng(seed)
    left, _ = np.linalg.qr(rng.standard_normal((rows, len(values))))
    right, _ = np.linalg.qr(rng.standard_normal((cols, len(values))))
    return (left * np.asarray(values, np.float64)) @ right.T


def _sigma_max(w):
    mat = np.asarray(w, np.float64).reshape(-1, np.shape(w)[-1])
    return np.linalg.svd(mat, compute_uv=False)[0]


def _close_trees(actual, expected, **tol):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        assert jnp.shape(a) == jnp.shape(e) and jnp.asarray(a).dtype == jnp.asarray(e).dtype
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(e, np.float64), **(tol or FLAX_TOL))


# ------------------------------------------------------------------------------------------- functional ops


@pytest.mark.parametrize("shape", [(7, 4), (3, 3, 2, 4)], ids=["dense", "conv"])
def test_spectral_normalize_converges_to_the_largest_singular_value(shape):
    rows = int(np.prod(shape[:-1]))
    w = _with_singular_values(rows, shape[-1], [3.0, 1.5, 1.0, 0.25]).reshape(shape)
    u = _normal((1, shape[-1]), seed=1)
    w_bar, new_u, sigma = jaxnorm.spectral_normalize(jnp.asarray(w, jnp.float32), jnp.asarray(u), n_steps=30)
    assert w_bar.shape == shape and w_bar.dtype == jnp.float32 and new_u.shape == (1, shape[-1])
    assert float(sigma) == pytest.approx(_sigma_max(w), rel=1e-5)
    assert _sigma_max(w_bar) == pytest.approx(1.0, rel=1e-5)
    assert_close(w_bar, w / _sigma_max(w))
    # u converged to the top right singular vector of the matrix view (all axes but the last flattened)
    top = np.linalg.svd(w.reshape(rows, shape[-1]))[2][0]
    assert abs(float(np.dot(np.asarray(new_u[0], np.float64), top))) == pytest.approx(1.0, abs=1e-5)


def test_spectral_normalize_one_step_and_gradient_match_float64_formulas():
    with jax.enable_x64(True):
        w = _normal((5, 3), seed=2, dtype=np.float64)
        u = _normal((1, 3), seed=3, dtype=np.float64)
        g = _normal((5, 3), seed=4, dtype=np.float64)
        # one power-iteration step in NumPy float64 (epsilon negligible)
        v = u @ w.T
        v = v / np.linalg.norm(v)
        u1 = v @ w
        u1 = u1 / np.linalg.norm(u1)
        sigma = float((v @ w @ u1.T)[0, 0])
        w_bar, new_u, s = jaxnorm.spectral_normalize(jnp.asarray(w), jnp.asarray(u))
        assert_close(new_u, u1, jnp.float64)
        assert float(s) == pytest.approx(sigma, rel=1e-12)
        assert_close(w_bar, w / sigma, jnp.float64)
        # u and v are constants of the gradient, sigma = v W u^T is not (Miyato et al. 2018, eq. 12):
        # d<G, W / sigma>/dW = G / sigma - <G, W> / sigma^2 * v^T u
        want = g / sigma - np.sum(g * w) / sigma**2 * (v.T @ u1)
        got = jax.grad(lambda w: jnp.sum(jaxnorm.spectral_normalize(w, jnp.asarray(u))[0] * g))(jnp.asarray(w))
        assert_close(got, want, jnp.float64, scale=10)


def test_spectral_normalize_zero_weight_stays_finite():
    w_bar, u, sigma = jaxnorm.spectral_normalize(jnp.zeros((3, 2)), jnp.ones((1, 2)))
    assert float(sigma) == 0.0 and not np.any(np.asarray(w_bar)) and np.all(np.isfinite(np.asarray(u)))


@pytest.mark.parametrize(
    ("shape", "feature_axes"),
    [((5, 3), -1), ((3, 3, 2, 4), -1), ((3, 3, 2, 4), (0, 3)), ((4, 3), None), ((4,), -1)],
    ids=["dense", "conv", "conv-two-axes", "whole-tensor", "vector"],
)
def test_weight_normalize_matches_float64_norms(shape, feature_axes):
    w = _normal(shape, seed=5) + 0.5
    feature = () if feature_axes is None else tuple(sorted(a % len(shape) for a in np.atleast_1d(feature_axes)))
    reduction = tuple(a for a in range(len(shape)) if a not in feature)
    scale = _normal([shape[a] for a in feature], seed=6)
    y = jaxnorm.weight_normalize(jnp.asarray(w), jnp.asarray(scale), feature_axes=feature_axes)
    bshape = [shape[a] if a in feature else 1 for a in range(len(shape))]
    w64 = w.astype(np.float64)
    want = w64 / np.sqrt(np.sum(w64**2, axis=reduction, keepdims=True)) * scale.reshape(bshape)
    assert y.shape == shape and y.dtype == jnp.float32
    assert_close(y, want)
    # each feature slice has norm |scale|
    norms = np.sqrt(np.sum(np.asarray(y, np.float64) ** 2, axis=reduction))
    assert_close(norms, np.abs(scale).reshape(norms.shape))
    assert_close(jaxnorm.weight_normalize(jnp.asarray(w), feature_axes=feature_axes), want / scale.reshape(bshape))


def test_weight_normalize_gradients_are_numerically_right():
    with jax.enable_x64(True):
        w = jnp.asarray(_normal((3, 2, 4), seed=7, dtype=np.float64))
        scale = jnp.asarray(_normal((4,), seed=8, dtype=np.float64))
        check_grads(jax.jit(jaxnorm.weight_normalize), (w, scale), order=1, modes=["rev"])


# ------------------------------------------------------------------------------------------- PyTorch, Keras


@pytest.mark.peers("torch")
@pytest.mark.parametrize(("kind", "dim"), [("linear", 0), ("conv", 0), ("linear", None)])
def test_weight_norm_matches_torch_values_and_gradients(kind, dim):
    import torch

    module = torch.nn.Linear(5, 3) if kind == "linear" else torch.nn.Conv2d(2, 4, 3)
    module = module.double()
    torch.nn.utils.parametrizations.weight_norm(module, dim=dim)
    orig = module.parametrizations.weight
    g_shape, v_shape = tuple(orig.original0.shape), tuple(orig.original1.shape)
    g = np.asarray(np.abs(_normal(g_shape, seed=13, dtype=np.float64)) + 0.5).reshape(g_shape)
    v = _normal(v_shape, seed=14, dtype=np.float64)
    with torch.no_grad():
        orig.original0.copy_(torch.from_numpy(g))
        orig.original1.copy_(torch.from_numpy(v))
    cot = _normal(v_shape, seed=15, dtype=np.float64)
    (module.weight * torch.from_numpy(cot)).sum().backward()

    # Flax layout: Dense (in, out) = torch.T; Conv (kh, kw, in, out) = torch (out, in, kh, kw) transposed.
    perm = (1, 0) if kind == "linear" else (2, 3, 1, 0)
    with jax.enable_x64(True):
        w = jnp.asarray(v.transpose(perm))
        scale = jnp.asarray(g.reshape(-1) if dim == 0 else g.reshape(()))
        feature_axes = -1 if dim == 0 else None

        def f(w, s):
            return jnp.sum(jaxnorm.weight_normalize(w, s, feature_axes=feature_axes) * cot.transpose(perm))

        y = jaxnorm.weight_normalize(w, scale, feature_axes=feature_axes)
        gw, gs = jax.grad(f, (0, 1))(w, scale)
    np.testing.assert_allclose(np.asarray(y), module.weight.detach().numpy().transpose(perm), rtol=1e-10)
    np.testing.assert_allclose(np.asarray(gw), orig.original1.grad.numpy().transpose(perm), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.asarray(gs).reshape(g_shape), orig.original0.grad.numpy(), rtol=1e-9)


@pytest.mark.peers("torch")
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_spectral_norm_converges_to_torch(kind):
    """torch draws u differently (and iterates over the transposed matrix): compare converged weights."""
    import torch

    module = (torch.nn.Linear(6, 4) if kind == "linear" else torch.nn.Conv2d(2, 3, 2)).double()
    torch.nn.utils.parametrizations.spectral_norm(module, n_power_iterations=5)
    module.train()
    for _ in range(20):
        module.weight  # noqa: B018 (each access in training mode runs the power iteration)
    w_torch_orig = module.parametrizations.weight.original.detach().numpy()
    perm = (1, 0) if kind == "linear" else (2, 3, 1, 0)
    w = w_torch_orig.transpose(perm)
    sn = jaxnorm.SpectralNorm(n_steps=5)
    _, state = sn.init(jax.random.key(3), w)
    for _ in range(20):
        w_bar, state = sn.apply({}, state, jnp.asarray(w, jnp.float32), training=True)
    assert float(state["sigma"]) == pytest.approx(_sigma_max(w), rel=1e-5)
    assert_close(w_bar, module.weight.detach().numpy().transpose(perm))


@pytest.mark.peers("keras")
@pytest.mark.parametrize("power_iterations", [1, 3])
def test_spectral_norm_matches_keras_spectral_normalization(power_iterations):
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    if keras.backend.backend() != "jax":
        pytest.skip("keras was imported with another backend")
    w, u, x = _normal((6, 4), seed=16), _normal((1, 4), seed=17), _normal((2, 6), seed=18)
    layer = keras.layers.SpectralNormalization(keras.layers.Dense(4), power_iterations=power_iterations)
    layer.build((2, 6))
    layer.layer.kernel.assign(w)
    layer.vector_u.assign(u)
    with jax.numpy_rank_promotion("allow"):  # Keras's Dense adds its bias with rank promotion
        layer(x, training=True)  # Keras writes w / sigma into the kernel and the new u into vector_u
    w_bar, new_u, _ = jaxnorm.spectral_normalize(jnp.asarray(w), jnp.asarray(u), n_steps=power_iterations)
    assert_close(w_bar, np.asarray(layer.layer.kernel.value))
    assert_close(new_u, np.asarray(layer.vector_u.value))


# ------------------------------------------------------------------------------------------- specs


def test_spectral_norm_spec_follows_flax_linen_state_given_its_u():
    x = jnp.asarray(_normal((3, 5), seed=19))
    flax_sn = nn.SpectralNorm(nn.Dense(4), n_steps=2)
    variables = flax_sn.init(jax.random.key(4), x, update_stats=False)
    kernel = variables["params"]["layer_instance"]["kernel"]
    spec = jaxnorm.SpectralNorm(n_steps=2)
    state = {"u": variables["batch_stats"]["layer_instance/kernel/u"], "sigma": jnp.ones(())}
    for _ in range(3):
        _, updates = flax_sn.apply(variables, x, update_stats=True, mutable=["batch_stats"])
        variables = {**variables, **updates}
        w_bar, state = spec.apply({}, state, kernel, training=True)
        _close_trees(state, {"sigma": updates["batch_stats"]["layer_instance/kernel/sigma"],
                             "u": updates["batch_stats"]["layer_instance/kernel/u"]})
    # update_stats=False: one more iteration from the stored u, not stored (so not w_bar of the last step)
    w_eval, same = spec.apply({}, state, kernel, training=False)
    assert not np.allclose(w_eval, w_bar, rtol=1e-6, atol=0)
    _close_trees(same, state, rtol=0, atol=0)
    bias = variables["params"]["layer_instance"]["bias"]
    _close_trees(x @ w_eval + bias[None], flax_sn.apply(variables, x, update_stats=False))


def test_spectral_norm_spec_init_apply_jit_grad_and_modes():
    spec = jaxnorm.SpectralNorm()
    w = jnp.asarray(_normal((3, 3, 2, 4), seed=20))
    params, state = spec.init(jax.random.key(0), w)
    assert params == {} and jax.tree.map(lambda a: (a.shape, a.dtype), state) == {
        "u": ((1, 4), jnp.float32), "sigma": ((), jnp.float32)}
    assert_close(state["u"], jax.random.normal(jax.random.key(0), (1, 4)))  # Flax's init: normal, from the key
    assert float(state["sigma"]) == 1.0
    apply = jax.jit(spec.apply, static_argnames="training")
    y_train, new_state = apply(params, state, w, training=True)
    y_eval, same_state = apply(params, state, w, training=False)
    assert_close(y_eval, y_train)  # both iterate from the stored u ...
    _close_trees(same_state, state, rtol=0, atol=0)  # ... but only training stores the result
    assert float(new_state["sigma"]) != 1.0
    want = jax.grad(lambda w: jnp.sum(jaxnorm.spectral_normalize(w, state["u"])[0] ** 3))(w)
    got = jax.grad(lambda w: jnp.sum(spec.apply(params, state, w, training=True)[0] ** 3))(w)
    assert_close(got, want)
    # vectors and n_steps=0 are left unchanged with empty state, as Flax's wrapper does
    b = jnp.arange(3.0)
    assert spec.init(None, b) == ({}, {}) and np.array_equal(spec.apply({}, {}, b, training=True)[0], b)
    off = jaxnorm.SpectralNorm(n_steps=0)
    assert off.init(None, w) == ({}, {}) and np.array_equal(off.apply({}, {}, w, training=True)[0], w)


def test_weight_norm_spec_init_apply_jit_grad_and_frozen():
    spec = jaxnorm.WeightNorm(feature_axes=(0, 3))
    w = jnp.asarray(_normal((3, 3, 2, 4), seed=21))
    params, state = spec.init(jax.random.key(0), w)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), params) == {"scale": ((3, 4), jnp.float32)} and state == {}
    params = {"scale": jnp.asarray(_normal((3, 4), seed=22))}
    y, st = jax.jit(lambda p, w: spec.apply(p, {}, w))(params, w)
    assert st == {}
    assert_close(y, jaxnorm.weight_normalize(w, params["scale"], feature_axes=(0, 3)))
    g = jax.grad(lambda p: jnp.sum(spec.apply(p, {}, w)[0] ** 3))(params)
    assert float(jnp.abs(g["scale"]).max()) > 0
    frozen = jaxnorm.WeightNorm(trainable=False)
    p, _ = frozen.init(None, w)
    g = jax.grad(lambda p: jnp.sum(frozen.apply(p, {}, w)[0] ** 3))(p)
    assert float(jnp.abs(g["scale"]).max()) == 0.0
    assert jaxnorm.trainable_mask({"wn": frozen, "sn": jaxnorm.SpectralNorm()}, {"wn": p, "sn": {}}) == {
        "wn": {"scale": False}, "sn": {}}
    assert jaxnorm.WeightNorm(use_scale=False).init(None, w) == ({}, {})
    assert jaxnorm.WeightNorm(feature_axes=None).init(None, w)[0]["scale"].shape == ()


def test_weight_norm_spec_matches_flax_linen_given_its_params():
    x = jnp.asarray(_normal((2, 5, 5, 3), seed=23))
    flax_wn = nn.WeightNorm(nn.Conv(4, (3, 3), use_bias=False), scale_init=nn.initializers.normal(1.0))
    variables = flax_wn.init(jax.random.key(5), x)
    spec = jaxnorm.WeightNorm()
    kernel = variables["params"]["layer_instance"]["kernel"]
    w_bar, _ = spec.apply({"scale": variables["params"]["layer_instance/kernel/scale"]}, {}, kernel)
    _close_trees(nn.Conv(4, (3, 3), use_bias=False).apply({"params": {"kernel": w_bar}}, x),
                 flax_wn.apply(variables, x))


@pytest.mark.parametrize("spec_cls", [jaxnorm.SpectralNorm, jaxnorm.WeightNorm])
def test_half_precision_weight_keeps_its_dtype(spec_cls):
    spec = spec_cls()
    w32 = jnp.asarray(_normal((6, 4), seed=24))
    w16 = w32.astype(jnp.bfloat16)
    params, state = spec.init(jax.random.key(0), w16)
    call = {"training": True}
    y16, new_state = spec.apply(params, state, w16, **call)
    y32, _ = spec.apply(params, state, w16.astype(jnp.float32), **call)
    assert y16.dtype == jnp.bfloat16
    assert jax.tree.map(lambda a: a.dtype, new_state) == jax.tree.map(lambda a: a.dtype, state)  # float32
    assert_close(y16, y32, jnp.bfloat16)
    assert spec_cls(dtype="float32").apply(params, state, w16, **call)[0].dtype == jnp.float32
    # the gradient reaching a bf16 weight agrees with the float32 computation to bf16 rounding
    cot = jnp.asarray(_normal((6, 4), seed=25))

    def loss(w):
        return jnp.sum(spec.apply(params, state, w, **call)[0].astype(jnp.float32) * cot)

    g16, g32 = jax.grad(loss)(w16), jax.grad(loss)(w16.astype(jnp.float32))
    assert g16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(g16, np.float64), np.asarray(g32, np.float64),
                               atol=grad_tol(jnp.bfloat16), rtol=grad_tol(jnp.bfloat16))


@pytest.mark.parametrize(
    "spec",
    [
        jaxnorm.SpectralNorm(),
        jaxnorm.SpectralNorm(n_steps=3, epsilon=1e-6, error_on_non_matrix=True, dtype=jnp.bfloat16,
                             param_dtype="float64"),
        jaxnorm.WeightNorm(),
        jaxnorm.WeightNorm(feature_axes=[0, 3], use_scale=False, scale_init="zeros", dtype="float16"),
        jaxnorm.WeightNorm(feature_axes=None, scale_init={"class_name": "Constant", "config": {"value": 2.0}}),
    ],
)
def test_config_json_round_trip_and_hashable(spec):
    config = json.loads(json.dumps(spec.get_config()))
    again = type(spec).from_config(config)
    assert again == spec and hash(again) == hash(spec)
    assert again.get_config() == spec.get_config()
    with pytest.raises(ValueError, match="Keras"):
        spec.to_keras_config()


# ------------------------------------------------------------------------------------------- errors


def test_errors_name_the_argument_and_the_fix():
    w = jnp.ones((3, 4))
    with pytest.raises(ValueError, match=r"`w` must be a matrix.*got shape \(4,\).*do not normalize them"):
        jaxnorm.spectral_normalize(jnp.ones(4), jnp.ones((1, 4)))
    with pytest.raises(ValueError, match=r"`w` must be a matrix.*rank 1"):
        jaxnorm.SpectralNorm(error_on_non_matrix=True).init(None, jnp.ones(4))
    with pytest.raises(ValueError, match=r"`w` has shape \(2, 3, 4\).*error_on_non_matrix=False.*\(6, 4\)"):
        jaxnorm.spectral_normalize(jnp.ones((2, 3, 4)), jnp.ones((1, 4)), error_on_non_matrix=True)
    with pytest.raises(TypeError, match=r"`w` must have a floating-point dtype, got int32.*astype"):
        jaxnorm.spectral_normalize(jnp.ones((3, 4), jnp.int32), jnp.ones((1, 4)))
    with pytest.raises(TypeError, match=r"`w` must have a floating-point dtype"):
        jaxnorm.WeightNorm().init(None, jnp.ones((3, 4), jnp.int32))
    with pytest.raises(ValueError, match=r"`u` has shape \(1, 3\) but a weight of shape \(3, 4\) needs \(1, 4\)"):
        jaxnorm.spectral_normalize(w, jnp.ones((1, 3)))
    with pytest.raises(ValueError, match=r"`state\['u'\]` has shape \(1, 3\) but the input needs \(1, 4\).*init"):
        jaxnorm.SpectralNorm().apply({}, {"u": jnp.ones((1, 3)), "sigma": jnp.ones(())}, w, training=True)
    with pytest.raises(ValueError, match=r"`state` has keys \['u'\].*missing \['sigma'\]"):
        jaxnorm.SpectralNorm().apply({}, {"u": jnp.ones((1, 4))}, w, training=True)
    with pytest.raises(TypeError, match=r"needs `training`"):
        jaxnorm.SpectralNorm().apply({}, {"u": jnp.ones((1, 4)), "sigma": jnp.ones(())}, w)
    with pytest.raises(ValueError, match=r"`n_steps` must be >= 1, got 0"):
        jaxnorm.spectral_normalize(w, jnp.ones((1, 4)), n_steps=0)
    with pytest.raises(TypeError, match=r"`n_steps` must be an int"):
        jaxnorm.SpectralNorm(n_steps=1.5)
    with pytest.raises(ValueError, match=r"`scale` has shape \(3,\) but .*needs \(4,\)"):
        jaxnorm.weight_normalize(w, jnp.ones(3))
    with pytest.raises(ValueError, match=r"`params\['scale'\]` has shape \(3,\).*feature_axes=-1"):
        jaxnorm.WeightNorm().apply({"scale": jnp.ones(3)}, {}, w)
    with pytest.raises(ValueError, match=r"`feature_axes`=2 is out of range for an input of rank 2"):
        jaxnorm.weight_normalize(w, feature_axes=2)
    with pytest.raises(TypeError, match=r"`dtype` must be None or a floating-point dtype .*got 'int32'"):
        jaxnorm.WeightNorm(dtype="int32")
    with pytest.raises(ValueError, match=r"`epsilon` must be >= 0"):
        jaxnorm.SpectralNorm(epsilon=-1.0)
