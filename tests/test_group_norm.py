"""GroupNorm and InstanceNorm (ops, specs) against NumPy float64, Keras and PyTorch, and the identities that tie
them to LayerNorm. (Their Flax drop-ins, jaxnorm.linen and jaxnorm.nnx: tests/test_flax_dropin.py.)"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxnorm
from jaxnorm._src import normalize
from tests import reference as ref
from tests.tolerances import assert_close

has_keras = pytest.mark.peers("keras")
has_torch = pytest.mark.peers("torch")


def _data(shape, seed=0, offset=0.5, dtype=np.float32):
    return (np.random.default_rng(seed).standard_normal(shape) * 2 + offset).astype(dtype)


@pytest.mark.parametrize("shape, axis, groups", [
    ((3, 5, 6, 8), -1, 4), ((3, 8, 5, 6), 1, 2), ((2, 7, 6), -1, 6), ((2, 6), -1, 3), ((2, 12, 3), 1, 12),
])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_group_norm_matches_float64_reference(shape, axis, groups, dtype):
    x = jnp.asarray(_data(shape, offset=3.0), dtype)
    c = shape[axis]
    scale, bias = _data((c,), seed=1), _data((c,), seed=2)
    y = jaxnorm.group_norm(x, scale, bias, num_groups=groups, axis=axis)
    assert y.dtype == dtype
    assert_close(y, ref.group_norm(np.asarray(x, np.float64), groups, axis, scale, bias), dtype, scale=4)
    assert_close(jaxnorm.group_norm(x, scale, bias, group_size=c // groups, axis=axis), y, dtype)


def test_statistics_are_stable_on_offset_data():
    x = 1e4 + _data((2, 4, 4, 8), seed=3)
    y = jaxnorm.group_norm(jnp.asarray(x), num_groups=2)
    assert_close(y, ref.group_norm(x, 2), scale=20)  # one-pass E[x^2] - E[x]^2 loses every digit here


def test_mask_ignores_nan_and_equals_the_filtered_statistics():
    x = _data((2, 5, 6), seed=4)
    mask = np.random.default_rng(5).random(x.shape) < 0.6
    mask[:, 0] = True
    x[~mask] = np.nan
    y = np.asarray(jaxnorm.group_norm(jnp.asarray(x), num_groups=3, where=jnp.asarray(mask)))
    assert_close(y[mask], ref.group_norm(x, 3, mask=mask)[mask], scale=4)
    g = jax.grad(lambda x: jnp.sum(jnp.where(mask, jaxnorm.group_norm(x, num_groups=3, where=mask), 0) ** 2))(
        jnp.where(mask, x, 0.0))
    assert np.isfinite(np.asarray(g)).all()


@pytest.mark.parametrize("shape, axes", [((3, 4, 2, 5), (1, 3)), ((4, 3, 5), (0, 2)), ((2, 3, 4), (1,)),
                                         ((2, 4, 3, 3, 2), (1, 2, 4)),
                                         ((2, 3, 4, 5), (2, 3))])
def test_custom_backward_equals_autodiff_of_the_textbook_formula(shape, axes):
    """normalize_by_moments over axes that are neither trailing nor leading (GroupNorm's grouped view,
    channels-first BatchNorm) takes fused.normalize; its gradients, including those reaching the returned
    mean and variance and epsilon, equal autodiff of the textbook formula in float64."""
    with jax.enable_x64(True):
        x = jnp.asarray(_data(shape, seed=6, dtype=np.float64))
        pshape = tuple(1 if a in axes else d for a, d in enumerate(shape))
        scale = jnp.asarray(_data(pshape, seed=7, dtype=np.float64))
        bias = jnp.asarray(_data(pshape, seed=8, dtype=np.float64))
        w = jnp.asarray(_data(shape, seed=9, dtype=np.float64))
        wm = jnp.asarray(_data(pshape, seed=10, dtype=np.float64))

        def ours(x, s, b, eps):
            y, _, mean, var = normalize.normalize_by_moments(x, s, b, axes, eps)
            return jnp.sum(y * w) + jnp.sum(mean * wm) + jnp.sum(var * wm**2)

        def textbook(x, s, b, eps):
            mean = jnp.mean(x, axes, keepdims=True)
            var = jnp.mean((x - mean) ** 2, axes, keepdims=True)
            y = (x - mean) / jnp.sqrt(var + eps) * s + b
            return jnp.sum(y * w) + jnp.sum(mean * wm) + jnp.sum(var * wm**2)

        args = (x, scale, bias, jnp.asarray(1e-3))
        for g, r in zip(jax.jit(jax.grad(ours, (0, 1, 2, 3)))(*args), jax.grad(textbook, (0, 1, 2, 3))(*args),
                        strict=True):
            assert_close(g, r, jnp.float64, scale=100)
        check_grads(jax.jit(lambda x, s: normalize.normalize_by_moments(x, s, None, axes, 1e-3)[0]), (x, scale), order=2,
                    modes=["rev"])


@pytest.mark.full  # compile-heavy; the default tier covers this path elsewhere
def test_identities_with_layer_norm_and_instance_norm():
    x = jnp.asarray(_data((3, 4, 5, 6), seed=11))
    ln = jaxnorm.layer_norm(x, axis=(1, 2, 3))
    assert_close(jaxnorm.group_norm(x, num_groups=1), ln, scale=4)
    s, b = jnp.asarray(_data((6,), seed=12)), jnp.asarray(_data((6,), seed=13))
    inorm = jaxnorm.instance_norm(x, s, b)
    assert_close(jaxnorm.group_norm(x, s, b, group_size=1), inorm, scale=4)
    assert_close(jaxnorm.group_norm(x, s, b, num_groups=-1), inorm, scale=4)
    assert_close(inorm, ref.group_norm(x, 6, -1, s, b), scale=4)
    xt = jnp.moveaxis(x, -1, 1)  # channels-first agrees with channels-last
    assert_close(jnp.moveaxis(jaxnorm.instance_norm(xt, s, b, axis=1), 1, -1), inorm, scale=4)
    assert_close(jnp.moveaxis(jaxnorm.group_norm(xt, s, b, num_groups=2, axis=1), 1, -1),
                 jaxnorm.group_norm(x, s, b, num_groups=2), scale=4)


def test_axis_name_merges_statistics_split_across_a_vmapped_axis():
    x = _data((2, 4, 3, 8), seed=14)
    mask = np.random.default_rng(15).random(x.shape) < 0.7
    got = jax.vmap(lambda xb, mb: jaxnorm.group_norm(xb, num_groups=2, reduction_axes=(1,), where=mb,
                                                     axis_name="h"),
                   in_axes=1, out_axes=1, axis_name="h")(jnp.asarray(x), jnp.asarray(mask))
    assert_close(np.asarray(got)[mask], ref.group_norm(x, 2, mask=mask)[mask], scale=4)


def test_specs_init_apply_config_and_jit():
    x = jnp.asarray(_data((2, 3, 3, 8), seed=16))
    gn = jaxnorm.GroupNorm(num_groups=4, axis=-1, epsilon=1e-5, scale_regularizer="l2")
    params, state = gn.init(jax.random.key(0), jax.ShapeDtypeStruct(x.shape, x.dtype))
    assert jax.tree.map(jnp.shape, params) == {"scale": (8,), "bias": (8,)} and state == {}
    params = {"scale": jnp.asarray(_data((8,), seed=17)), "bias": jnp.asarray(_data((8,), seed=18))}
    y, _ = jax.jit(lambda p, x: gn.apply(p, {}, x))(params, x)
    assert_close(y, ref.group_norm(x, 4, -1, params["scale"], params["bias"], 1e-5), scale=4)
    assert jaxnorm.GroupNorm.from_config(json.loads(json.dumps(gn.get_config()))) == gn
    inorm = jaxnorm.InstanceNorm(axis=1)
    p, _ = inorm.init(None, x)
    assert jax.tree.map(jnp.shape, p) == {"scale": (3,), "bias": (3,)}
    assert_close(inorm.apply(p, {}, x)[0], jaxnorm.group_norm(x, group_size=1, axis=1), scale=4)
    assert jaxnorm.InstanceNorm.from_config(json.loads(json.dumps(inorm.get_config()))) == inorm
    assert jaxnorm.GroupNorm().to_keras_config()["groups"] == 32
    assert jaxnorm.GroupNorm(group_size=1).to_keras_config()["groups"] == -1
    assert jaxnorm.InstanceNorm().to_keras_config()["groups"] == -1


@pytest.mark.parametrize("bad, error, match", [
    (lambda: jaxnorm.group_norm(jnp.ones((2, 6)), num_groups=4), ValueError, r"num_groups=4 does not divide"),
    (lambda: jaxnorm.group_norm(jnp.ones((2, 6)), group_size=4), ValueError, r"not a multiple of group_size=4"),
    (lambda: jaxnorm.group_norm(jnp.ones((2, 6)), num_groups=2, group_size=3), ValueError,
     r"either `num_groups` or `group_size`, not both"),
    (lambda: jaxnorm.group_norm(jnp.ones((2, 6)), num_groups=0), ValueError, r"`num_groups` must be a positive"),
    (lambda: jaxnorm.group_norm(jnp.ones((2, 6)), num_groups=2.0), ValueError,
     r"`num_groups` must be a positive int"),
    (lambda: jaxnorm.group_norm(jnp.ones((6,)), num_groups=2), ValueError, r"rank >= 2"),
    (lambda: jaxnorm.group_norm(jnp.ones((2, 6)), jnp.ones(5), num_groups=2), ValueError, r"`scale`"),
    (lambda: jaxnorm.group_norm(jnp.ones((2, 6)), num_groups=2, axis=2), ValueError, r"`axis`=2 is out of range"),
    (lambda: jaxnorm.GroupNorm(axis=(1, 2)), TypeError, r"`axis` must be one int"),
    (lambda: jaxnorm.GroupNorm(num_groups=3).init(None, jnp.ones((2, 8))), ValueError, r"num_groups=3"),
    (lambda: jaxnorm.instance_norm(jnp.ones((2, 6)), axis=0), ValueError, r"`axis`=0 includes axis 0"),
    (lambda: jaxnorm.InstanceNorm(axis=(0, 1)).init(None, jnp.ones((2, 6))), ValueError, r"batch axis"),
    (lambda: jaxnorm.InstanceNorm.from_config({"groups": 4}), ValueError, r"groups=4"),
])
def test_bad_input_names_the_argument(bad, error, match):
    with pytest.raises(error, match=match):
        bad()


# --------------------------------------------------------------------------------------------------- Keras


@has_keras
@pytest.mark.parametrize("groups, axis", [(4, -1), (2, 1), (-1, -1)])
def test_matches_keras_groupnormalization_and_its_configs(groups, axis):
    import keras

    x = _data((2, 8, 5, 8), seed=24, offset=2.0)
    layer = keras.layers.GroupNormalization(groups=groups, axis=axis, epsilon=1e-4)
    config = layer.get_config()  # before build: Keras's build rewrites groups=-1 as the channel count
    layer.build(x.shape)
    gamma, beta = _data((8,), seed=25), _data((8,), seed=26)
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    spec_cls = jaxnorm.InstanceNorm if groups == -1 else jaxnorm.GroupNorm
    spec = spec_cls.from_config(config)
    assert jaxnorm.GroupNorm.from_config(layer.get_config()).num_groups == (8 if groups == -1 else groups)
    with jax.numpy_rank_promotion("allow"):  # Keras's own code relies on rank promotion
        want = np.asarray(layer(x))
    params = {"scale": jnp.asarray(gamma), "bias": jnp.asarray(beta)}
    assert_close(spec.apply(params, {}, jnp.asarray(x))[0], want, scale=4)
    back = keras.layers.GroupNormalization.from_config(spec.to_keras_config())
    back.build(x.shape)
    back.set_weights([gamma, beta])
    with jax.numpy_rank_promotion("allow"):
        assert_close(np.asarray(back(x)), want)


# --------------------------------------------------------------------------------------------------- PyTorch


@has_torch
@pytest.mark.parametrize("instance", [False, True])
def test_matches_torch_groupnorm_and_instancenorm_values_and_gradients(instance):
    import torch

    x = _data((3, 6, 5, 4), seed=27)
    scale, bias = _data((6,), seed=28), _data((6,), seed=29)
    w = _data(x.shape, seed=30)
    layer = torch.nn.InstanceNorm2d(6, affine=True) if instance else torch.nn.GroupNorm(3, 6)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(scale))
        layer.bias.copy_(torch.from_numpy(bias))
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = layer(xt)
    (yt * torch.from_numpy(w)).sum().backward()

    def ours(x, s, b):
        if instance:
            return jaxnorm.instance_norm(x, s, b, axis=1, epsilon=1e-5)
        return jaxnorm.group_norm(x, s, b, num_groups=3, axis=1, epsilon=1e-5)

    args = (jnp.asarray(x), jnp.asarray(scale), jnp.asarray(bias))
    assert_close(ours(*args), yt.detach().numpy(), scale=4)
    grads = jax.grad(lambda *a: jnp.vdot(ours(*a), jnp.asarray(w)), (0, 1, 2))(*args)
    for g, t in zip(grads, (xt.grad, layer.weight.grad, layer.bias.grad), strict=True):
        assert_close(g, t.numpy(), scale=20)
