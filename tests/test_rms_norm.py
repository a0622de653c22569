"""RMSNorm (op and spec) against NumPy float64, Flax, Keras and PyTorch, and its identity with LayerNorm. (Its Flax
drop-ins, jaxnorm.linen and jaxnorm.nnx RMSNorm: tests/test_flax_dropin.py.)"""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxnorm
from tests import reference as ref
from tests.tolerances import assert_close


def _data(shape, seed=0, offset=0.5, dtype=np.float32):
    return (np.random.default_rng(seed).standard_normal(shape) * 2 + offset).astype(dtype)


@pytest.mark.parametrize("axis", [-1, (1, 2), 1, (0, 2)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_rms_norm_matches_float64_reference(axis, dtype):
    x = jnp.asarray(_data((3, 4, 5)), dtype)
    axes = tuple(sorted(a % 3 for a in np.atleast_1d(axis)))
    scale = jnp.asarray(_data([x.shape[a] for a in axes], seed=1))
    y = jaxnorm.rms_norm(x, scale, axis=axis, epsilon=1e-5)
    assert y.dtype == dtype
    assert_close(y, ref.rms_norm(np.asarray(x, np.float64), axes, scale, 1e-5), dtype, scale=2)


def test_rms_norm_mask_ignores_nan_and_equals_the_filtered_example():
    x = _data((2, 6))
    mask = np.ones(x.shape, bool)
    mask[:, 4:] = False
    x[~mask] = np.nan
    y = jaxnorm.rms_norm(jnp.asarray(x), where=jnp.asarray(mask))
    for i in range(2):
        kept = x[i, :4]
        assert_close(y[i, :4], kept / np.sqrt(np.mean(kept.astype(np.float64) ** 2) + 1e-6))


@pytest.mark.full  # a float64 gradient check (compile-heavy): the `full` tier
@pytest.mark.parametrize("extreme", [False, True])
def test_gradients_equal_autodiff_of_the_reference(extreme):
    with jax.enable_x64(True):
        x = jnp.asarray(_data((7, 3, 4), seed=2, dtype=np.float64))
        scale = jnp.asarray(_data((4,), seed=3, dtype=np.float64))
        w = jnp.asarray(_data(x.shape, seed=4, dtype=np.float64))

        def textbook(x, s):
            return x / jnp.sqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-3) * s[None, None]

        ours = jax.grad(lambda x, s: jnp.sum(jaxnorm.rms_norm(x, s, epsilon=1e-3, extreme_range=extreme) * w),
                        (0, 1))(x, scale)
        want = jax.grad(lambda x, s: jnp.sum(textbook(x, s) * w), (0, 1))(x, scale)
        for g, r in zip(ours, want, strict=True):
            assert_close(g, r, jnp.float64)
        check_grads(jax.jit(lambda x: jaxnorm.rms_norm(x, scale, epsilon=1e-3)), (x,), order=2, modes=["rev"])


def test_rms_norm_equals_layer_norm_on_zero_mean_input():
    x = _data((5, 8), seed=5)
    x = x - x.mean(-1, keepdims=True)
    scale = jnp.asarray(_data((8,), seed=6))
    assert_close(jaxnorm.rms_norm(jnp.asarray(x), scale, epsilon=1e-3),
                 jaxnorm.layer_norm(jnp.asarray(x), scale, None, epsilon=1e-3), scale=5)


def test_spec_init_apply_config_and_frozen():
    rms = jaxnorm.RMSNorm(axis=(1, 2), epsilon=1e-5, scale_regularizer="l2")
    x = jnp.asarray(_data((2, 3, 4)))
    params, state = rms.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, params) == {"scale": (3, 4)} and state == {}
    y, new_state = jax.jit(lambda p, x: rms.apply(p, {}, x))(params, x)
    assert new_state == {}
    assert_close(y, ref.rms_norm(x, (1, 2), params["scale"], 1e-5))
    assert jaxnorm.RMSNorm.from_config(rms.get_config()) == rms
    assert float(rms.regularization_loss(params)) == pytest.approx(0.01 * 12)
    frozen = jaxnorm.RMSNorm(trainable=False)
    p, _ = frozen.init(None, x)
    g = jax.grad(lambda p: jnp.sum(frozen.apply(p, {}, x)[0]))(p)
    assert float(jnp.abs(g["scale"]).max()) == 0.0
    with pytest.raises(ValueError, match=r"`params` .*scale"):
        rms.apply({}, {}, x)


@pytest.mark.skipif(importlib.util.find_spec("flax") is None, reason="flax not installed")
def test_matches_flax_linen_rmsnorm_values_and_gradients():
    import flax.linen as nn

    x = jnp.asarray(_data((4, 6), seed=7))
    flax_rms = nn.RMSNorm()
    variables = flax_rms.init(jax.random.key(0), x)
    scale = jnp.asarray(_data((6,), seed=8))
    variables = {"params": {"scale": scale}}
    ours = jaxnorm.RMSNorm()
    params, _ = ours.init(None, x)
    assert jax.tree.structure(params) == jax.tree.structure(dict(variables["params"]))
    want = flax_rms.apply(variables, x)
    assert_close(ours.apply({"scale": scale}, {}, x)[0], want)
    g_flax = jax.grad(lambda s, x: jnp.sum(flax_rms.apply({"params": {"scale": s}}, x) ** 3), (0, 1))(scale, x)
    g_ours = jax.grad(lambda s, x: jnp.sum(ours.apply({"scale": s}, {}, x)[0] ** 3), (0, 1))(scale, x)
    for a, b in zip(g_ours, g_flax, strict=True):
        assert_close(a, b, scale=10)


@pytest.mark.peers("keras")
def test_matches_keras_rmsnormalization_and_reads_its_config():
    import keras

    layer = keras.layers.RMSNormalization(axis=-1, epsilon=1e-5)
    x = _data((3, 7), seed=9)
    layer.build(x.shape)
    scale = _data((7,), seed=10)
    layer.scale.assign(scale)
    spec = jaxnorm.RMSNorm.from_config(layer.get_config())
    assert spec.epsilon == 1e-5 and spec.axis == (-1,)
    with jax.numpy_rank_promotion("allow"):  # Keras's own code relies on rank promotion
        want = np.asarray(layer(x))
    assert_close(spec.apply({"scale": jnp.asarray(scale)}, {}, jnp.asarray(x))[0], want)
    back = keras.layers.RMSNormalization.from_config(spec.to_keras_config())
    assert back.epsilon == 1e-5
    with pytest.raises(ValueError, match=r"use_scale=False \(Keras computes a scale"):
        jaxnorm.RMSNorm(use_scale=False).to_keras_config()


@pytest.mark.peers("torch")
def test_matches_torch_rmsnorm_values_and_gradients():
    import torch

    x = _data((5, 8), seed=11)
    scale = _data((8,), seed=12)
    eps = float(np.finfo(np.float32).eps)  # torch's eps=None, given explicitly
    layer = torch.nn.RMSNorm(8, eps=None)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(scale))
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = layer(xt)
    (yt**3).sum().backward()
    y, (gx, gs) = jax.value_and_grad(
        lambda x, s: jnp.sum(jaxnorm.rms_norm(x, s, epsilon=eps) ** 3), (0, 1))(jnp.asarray(x), jnp.asarray(scale))
    assert_close(jaxnorm.rms_norm(jnp.asarray(x), jnp.asarray(scale), epsilon=eps), yt.detach().numpy())
    assert_close(gx, xt.grad.numpy(), scale=20)
    assert_close(gs, layer.weight.grad.numpy(), scale=20)


@pytest.mark.parametrize("bad, error, match", [
    (lambda: jaxnorm.rms_norm(jnp.ones((2, 3)), jnp.ones(4)), ValueError, r"`scale`"),
    (lambda: jaxnorm.rms_norm(jnp.ones((2, 3), jnp.int32)), TypeError, r"`x`"),
    (lambda: jaxnorm.rms_norm(jnp.ones((2, 3)), epsilon=-1.0), ValueError, r"`epsilon` must be >= 0"),
    (lambda: jaxnorm.RMSNorm(implementation="cuda"), ValueError, r"`implementation` must be one of"),
])
def test_bad_input_names_the_argument(bad, error, match):
    with pytest.raises(error, match=match):
        bad()


@pytest.mark.full  # Pallas interpret mode is compile-heavy; tests/test_pallas.py runs it by default
def test_pallas_implementation_equals_xla_in_interpret_mode():
    x = jnp.asarray(_data((6, 20), seed=13))
    scale = jnp.asarray(_data((20,), seed=14))
    w = jnp.asarray(_data(x.shape, seed=15))

    def loss(impl):
        return lambda x, s: jnp.sum(jaxnorm.rms_norm(x, s, implementation=impl) * w)

    got = jax.value_and_grad(loss("pallas"), (0, 1))(x, scale)
    want = jax.value_and_grad(loss("xla"), (0, 1))(x, scale)
    assert_close(got[0], want[0], scale=10)
    for a, b in zip(got[1], want[1], strict=True):
        assert_close(a, b, scale=10)
