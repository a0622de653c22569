"""jaxnorm.interop against the real peers: PyTorch (BatchNorm1d/2d/3d, LayerNorm, GroupNorm, InstanceNorm1d/2d/3d,
RMSNorm) and Keras 3 (BatchNormalization, LayerNormalization, GroupNormalization, RMSNormalization,
UnitNormalization).

A converted layer must compute what the peer computes, training included (outputs, moving statistics, step
counter, gradients), round trips must be exact (bit for bit, dtypes kept), and every setting a peer cannot express
must raise an error that names it. Tests that need a peer skip without it; the rest run anyway.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnorm
from jaxnorm import interop
from tests.tolerances import assert_close

# float32 gradients. The BatchNorm input gradient is (scale / sigma) * (g - mean(g) - x_hat * mean(g * x_hat)) and
# the scale gradient sum(g * x_hat): reductions of up to ~135 products of size ~3, summed in different orders by
# torch and XLA, so each side carries up to ~n * 2**-24 * 3 ~ 2e-5 of rounding in the worst case (observed: 3e-6).
# A wrong formula (biased vs unbiased variance, a missing mean(g * x_hat) term, eps misplaced) errs by >= 1e-3.
GRAD_TOL = dict(rtol=3e-5, atol=3e-5)


def _data(rng, shape):
    """Offset data, 3 + 2 * N(0, 1): a wrong mean or an unstable variance shows."""
    return (3.0 + 2.0 * rng.standard_normal(shape)).astype(np.float32)


def _np(t):
    return t.detach().cpu().numpy()


# ------------------------------------------------------------------------------------------------------------
# PyTorch BatchNorm conformance: 4 training steps through from_torch, then eval.

_KINDS = {  # kind -> (class name, input rank)
    "1d_nc": ("BatchNorm1d", 2),
    "1d_ncl": ("BatchNorm1d", 3),
    "2d": ("BatchNorm2d", 4),
    "3d": ("BatchNorm3d", 5),
}


def _torch_bn_config(i):
    """Seeded random configuration i: every kind x momentum in {0.1, 0.3, None} x affine appears."""
    rng = np.random.default_rng(1000 + i)
    kind = list(_KINDS)[i % 4]
    momentum = (0.1, 0.3, None)[i % 3]
    affine = i % 5 != 2
    eps = float(rng.choice([1e-5, 1e-3, 0.1]))
    rank = _KINDS[kind][1]
    n = int(rng.integers(2, 6))
    c = int(rng.integers(1, 5))
    spatial = tuple(int(s) for s in rng.integers(1, 5, size=rank - 2))
    if rank == 5:
        spatial = tuple(min(s, 3) for s in spatial)
    return dict(kind=kind, momentum=momentum, affine=affine, eps=eps, shape=(n, c, *spatial), seed=i)


TORCH_BN_CONFIGS = [_torch_bn_config(i) for i in range(15)]


def _torch_bn_module(torch, cfg, rng):
    cls = getattr(torch.nn, _KINDS[cfg["kind"]][0])
    c = cfg["shape"][1]
    module = cls(c, eps=cfg["eps"], momentum=cfg["momentum"], affine=cfg["affine"])
    with torch.no_grad():
        if cfg["affine"]:
            module.weight.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, c).astype(np.float32)))
            module.bias.copy_(torch.from_numpy(rng.normal(size=c).astype(np.float32)))
        module.running_mean.copy_(torch.from_numpy(rng.normal(size=c).astype(np.float32)))
        module.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 3.0, c).astype(np.float32)))
        module.num_batches_tracked.fill_(int(rng.integers(0, 8)))
    return module


def _train_step_with_grad(spec):
    """One jitted training step returning the output, new state and grads of sum(y * probe) w.r.t. params, x."""

    def loss(params, x, state, probe):
        y, new_state = spec.apply(params, state, x, training=True)
        return jnp.sum(y * probe), (y, new_state)

    return jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))


def _cfg_id(cfg):
    return f"{cfg['kind']}-m{cfg['momentum']}-a{int(cfg['affine'])}"


@pytest.mark.parametrize("cfg", TORCH_BN_CONFIGS, ids=_cfg_id)
def test_torch_batch_norm_conformance(torch, cfg):
    rng = np.random.default_rng(cfg["seed"])
    module = _torch_bn_module(torch, cfg, rng)
    spec, params, state = interop.from_torch(module)
    assert spec.axis == 1 and spec.epsilon == cfg["eps"] and spec.use_scale == spec.use_bias == cfg["affine"]
    assert spec.averaging == ("cumulative" if cfg["momentum"] is None else "exponential")
    # every feature's counter is PyTorch's one (per feature under cumulative averaging)
    np.testing.assert_array_equal(state["steps"], int(module.num_batches_tracked))

    step = _train_step_with_grad(spec)
    module.train()
    for _ in range(4):
        x = _data(rng, cfg["shape"])
        probe = rng.standard_normal(cfg["shape"]).astype(np.float32)  # a random linear functional of y
        (g_params, g_x), (y, state) = step(params, jnp.asarray(x), state, jnp.asarray(probe))

        module.zero_grad()
        xt = torch.from_numpy(x).requires_grad_(True)
        yt = module(xt)
        (yt * torch.from_numpy(probe)).sum().backward()

        assert_close(y, _np(yt))
        assert_close(state["mean"], _np(module.running_mean))
        assert_close(state["var"], _np(module.running_var))  # torch's unbiased running variance
        assert state["steps"].dtype == jnp.int32
        np.testing.assert_array_equal(state["steps"], int(module.num_batches_tracked))
        np.testing.assert_allclose(g_x, _np(xt.grad), **GRAD_TOL)
        if cfg["affine"]:
            np.testing.assert_allclose(g_params["scale"], _np(module.weight.grad), **GRAD_TOL)
            np.testing.assert_allclose(g_params["bias"], _np(module.bias.grad), **GRAD_TOL)
        else:
            assert g_params == {}

    module.eval()
    x = _data(rng, cfg["shape"])
    y, same = jax.jit(lambda p, s, x: spec.apply(p, s, x, training=False))(params, state, jnp.asarray(x))
    with torch.no_grad():
        assert_close(y, _np(module(torch.from_numpy(x))))
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), same, state))


def test_torch_configs_cover_the_grid():
    """The 15 seeded configurations span every kind, momentum and affine setting (else the test above is weak)."""
    seen = {(c["kind"], c["momentum"]) for c in TORCH_BN_CONFIGS}
    assert len(seen) == 12
    assert {c["affine"] for c in TORCH_BN_CONFIGS} == {True, False}
    assert len({c["eps"] for c in TORCH_BN_CONFIGS}) > 1


# ------------------------------------------------------------------------------------------------------------
# PyTorch LayerNorm conformance.


@pytest.mark.parametrize(
    "normalized_shape, affine, bias",
    [(5, True, True), ((4, 5), True, True), (5, False, True), ((3, 4, 5), False, False), ((4, 5), True, False),
     (5, True, False)],
)
def test_torch_layer_norm_conformance(torch, normalized_shape, affine, bias):
    rng = np.random.default_rng(7)
    shape = (2, 3, 4, 5)
    module = torch.nn.LayerNorm(normalized_shape, eps=1e-4, elementwise_affine=affine, bias=bias)
    with torch.no_grad():
        if module.weight is not None:
            module.weight.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, module.weight.shape).astype(np.float32)))
        if module.bias is not None:
            module.bias.copy_(torch.from_numpy(rng.normal(size=module.bias.shape).astype(np.float32)))
    spec, params, state = interop.from_torch(module)
    k = 1 if isinstance(normalized_shape, int) else len(normalized_shape)
    assert isinstance(spec, jaxnorm.LayerNorm) and spec.epsilon == 1e-4 and state == {}
    assert sorted(params) == [n for n, p in (("bias", affine and bias), ("scale", affine)) if p]
    assert spec.axis == (-1 if k == 1 else tuple(range(-k, 0)))

    x = _data(rng, shape)
    probe = rng.standard_normal(shape).astype(np.float32)

    def loss(params, x):
        y, _ = spec.apply(params, state, x)
        return jnp.sum(y * probe), y

    (g_params, g_x), y = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))(params, jnp.asarray(x))
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = module(xt)
    (yt * torch.from_numpy(probe)).sum().backward()
    assert_close(y, _np(yt))
    np.testing.assert_allclose(g_x, _np(xt.grad), **GRAD_TOL)
    for name, tensor in (("scale", module.weight), ("bias", module.bias)):
        if tensor is not None:
            np.testing.assert_allclose(g_params[name], _np(tensor.grad), **GRAD_TOL)


# ------------------------------------------------------------------------------------------------------------
# Exact round trips with PyTorch.


def _randomize_torch(torch, module, rng):
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if name == "num_batches_tracked":
                t.fill_(int(rng.integers(1, 100)))
            else:
                t.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, t.shape)))
    return module


TORCH_MODULES = {  # id -> (factory(torch), input_shape for to_torch)
    "bn1d": (lambda torch: torch.nn.BatchNorm1d(3, eps=1e-4, momentum=0.3), (None, 3)),
    "bn1d_cumulative_no_affine": (
        lambda torch: torch.nn.BatchNorm1d(3, momentum=None, affine=False), (None, 3, 7)),
    "bn2d_float64": (lambda torch: torch.nn.BatchNorm2d(4, dtype=torch.float64), (None, 4, 2, 2)),
    "bn3d": (lambda torch: torch.nn.BatchNorm3d(2, eps=0.1), (None, 2, 1, 2, 3)),
    "ln": (lambda torch: torch.nn.LayerNorm(5, eps=1e-3), None),
    "ln_tuple_no_bias": (lambda torch: torch.nn.LayerNorm((4, 5), bias=False), None),
    "ln_no_affine": (lambda torch: torch.nn.LayerNorm((4, 5), elementwise_affine=False), (None, 3, 4, 5)),
    "ln_float64": (lambda torch: torch.nn.LayerNorm((2, 3), dtype=torch.float64), None),
}


def _torch_hparams(module):
    names = ("eps", "momentum", "affine", "track_running_stats", "normalized_shape", "elementwise_affine",
             "training")
    return {n: getattr(module, n) for n in names if hasattr(module, n)}


@pytest.mark.parametrize("name", list(TORCH_MODULES))
def test_torch_round_trip_from_torch_to_torch(torch, name):
    factory, input_shape = TORCH_MODULES[name]
    module = _randomize_torch(torch, factory(torch), np.random.default_rng(3))
    with jax.enable_x64(True):
        spec, params, state = interop.from_torch(module)
        for key, tensor in {**params, **state}.items():
            assert tensor.dtype == (jnp.int32 if key == "steps" else _np(module.weight if key in params
                                    else module.running_mean).dtype)
        back = interop.to_torch(spec, params, state, input_shape=input_shape)
    assert type(back) is type(module)
    assert _torch_hparams(back) == _torch_hparams(module)
    want, got = module.state_dict(), back.state_dict()
    assert list(got) == list(want)
    for key in want:
        assert got[key].dtype == want[key].dtype, key
        assert torch.equal(got[key], want[key]), key


def _random_tree(rng, shapes_dtypes):
    return {
        k: jnp.full(s, rng.integers(1, 100), jnp.int32) if dt == "int" else jnp.asarray(rng.uniform(0.5, 2, s), dt)
        for k, (s, dt) in shapes_dtypes.items()
    }


TORCH_SPECS = {  # id -> (spec, input_shape, dtype)
    "bn": (jaxnorm.BatchNorm(axis=1, momentum=0.3, epsilon=1e-4, momentum_convention="torch",
                             moving_var_estimator="unbiased", count_steps=True), (None, 3, 5), "float32"),
    "bn_cumulative_no_affine": (jaxnorm.BatchNorm(axis=1, momentum=0.1, epsilon=1e-5, use_scale=False,
                                                  use_bias=False, momentum_convention="torch",
                                                  moving_var_estimator="unbiased", averaging="cumulative"),
                                (None, 2, 3, 3), "float32"),
    "bn3d_float64": (jaxnorm.BatchNorm(axis=1, momentum=0.25, epsilon=1e-5, momentum_convention="torch",
                                       moving_var_estimator="unbiased", count_steps=True),
                     (2, 3, 1, 1, 2), "float64"),
    "ln": (jaxnorm.LayerNorm(epsilon=1e-5), (None, 6), "float32"),
    "ln_tuple_no_bias": (jaxnorm.LayerNorm(axis=(-2, -1), epsilon=1e-5, use_bias=False), (None, 2, 3), "float32"),
    "ln_no_affine_float64": (jaxnorm.LayerNorm(axis=(-3, -2, -1), epsilon=0.1, use_scale=False, use_bias=False),
                             (None, 2, 3, 4), "float64"),
}


@pytest.mark.parametrize("name", list(TORCH_SPECS))
def test_torch_round_trip_to_torch_from_torch(torch, name):
    spec, input_shape, dtype = TORCH_SPECS[name]
    rng = np.random.default_rng(4)
    with jax.enable_x64(True):
        fshape = (input_shape[1],) if isinstance(spec, jaxnorm.BatchNorm) else input_shape[1:]
        params = _random_tree(rng, {k: (fshape, dtype) for k in ("scale", "bias") if getattr(spec, "use_" + k)})
        state = {}
        if isinstance(spec, jaxnorm.BatchNorm):
            steps = (spec._rule.steps_shape(fshape), "int")  # per feature under cumulative averaging
            state = _random_tree(rng, {"mean": (fshape, dtype), "var": (fshape, dtype), "steps": steps})
        module = interop.to_torch(spec, params, state, input_shape=input_shape)
        for t in module.state_dict().values():
            assert t.dtype in (getattr(torch, dtype), torch.int64)
        spec2, params2, state2 = interop.from_torch(module)
    assert spec2 == spec
    for want, got in ((params, params2), (state, state2)):
        assert sorted(got) == sorted(want)
        for k in want:
            assert got[k].dtype == want[k].dtype, k
            np.testing.assert_array_equal(got[k], want[k])


def test_to_torch_frozen_spec_gives_eval_module_without_grads(torch):
    spec = jaxnorm.BatchNorm(axis=1, momentum_convention="torch", moving_var_estimator="unbiased", trainable=False)
    params, state = spec.init(None, jnp.ones((2, 3)))
    module = interop.to_torch(spec, params, state, input_shape=(None, 3))
    assert not module.training
    assert not any(p.requires_grad for p in module.parameters())
    assert int(module.num_batches_tracked) == 0  # no counter in the spec: 0


def _conv_bn(torch, affine=True):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3, affine=affine))
    return _randomize_torch(torch, model[1], np.random.default_rng(5)) and model


def test_from_torch_state_dict_with_prefix(torch):
    model = _conv_bn(torch)
    spec, params, state = interop.from_torch(model[1])
    params2, state2 = interop.from_torch_state_dict(spec, model.state_dict(), prefix="1.")
    sd = model.state_dict()
    for tree, tree2 in ((params, params2), (state, state2)):
        assert sorted(tree2) == sorted(tree)
        for k in tree:
            assert tree2[k].dtype == tree[k].dtype
            np.testing.assert_array_equal(tree2[k], tree[k])
    np.testing.assert_array_equal(params2["scale"], _np(sd["1.weight"]))
    np.testing.assert_array_equal(state2["var"], _np(sd["1.running_var"]))
    np.testing.assert_array_equal(state2["steps"], int(sd["1.num_batches_tracked"]))


def test_from_torch_state_dict_missing_key_names_it(torch):
    spec, _, _ = interop.from_torch(torch.nn.BatchNorm2d(3))
    model = _conv_bn(torch, affine=False)
    match = (r"`state_dict` has no '1\.weight', which BatchNorm needs for 'scale'\. Keys under prefix '1\.': "
             r"\['1\.num_batches_tracked', '1\.running_mean', '1\.running_var'\]")
    with pytest.raises(ValueError, match=match):
        interop.from_torch_state_dict(spec, model.state_dict(), prefix="1.")
    with pytest.raises(ValueError, match=r"has no 'bn\.weight'.*Keys under prefix 'bn\.': \[\]"):
        interop.from_torch_state_dict(spec, model.state_dict(), prefix="bn.")


# ------------------------------------------------------------------------------------------------------------
# A Keras-convention spec trained in jaxnorm, exported to PyTorch, trained on there.


def test_keras_convention_spec_continues_training_in_torch(torch):
    rng = np.random.default_rng(11)
    spec = jaxnorm.BatchNorm(axis=1, momentum=0.9, moving_var_estimator="unbiased", epsilon=1e-5)
    shape = (4, 3, 5)
    params, state = spec.init(None, jnp.zeros(shape))
    params = {k: jnp.asarray(rng.uniform(0.5, 2.0, 3), jnp.float32) for k in params}
    step = jax.jit(lambda p, s, x: spec.apply(p, s, x, training=True))
    batches = [_data(rng, shape) for _ in range(6)]
    for x in batches[:3]:
        _, state = step(params, state, jnp.asarray(x))

    module = interop.to_torch(spec, params, state, input_shape=(None, 3, 5))
    assert type(module) is torch.nn.BatchNorm1d and module.training
    assert module.momentum == pytest.approx(0.1, abs=1e-15) and module.eps == 1e-5
    assert int(module.num_batches_tracked) == 0
    np.testing.assert_array_equal(_np(module.running_var), state["var"])
    for x in batches[3:]:
        y, state = step(params, state, jnp.asarray(x))
        with torch.no_grad():
            yt = module(torch.from_numpy(x))
        assert_close(y, _np(yt))
        assert_close(state["mean"], _np(module.running_mean))
        assert_close(state["var"], _np(module.running_var))
    module.eval()
    with torch.no_grad():
        y_eval = _np(module(torch.from_numpy(batches[0])))
    assert_close(spec.apply(params, state, jnp.asarray(batches[0]), training=False)[0], y_eval)


def test_to_torch_keras_momentum_is_the_decimal_value(torch):
    spec = jaxnorm.BatchNorm(axis=1, momentum=0.9, moving_var_estimator="unbiased")
    params, state = spec.init(None, jnp.zeros((2, 3)))
    assert interop.to_torch(spec, params, state, input_shape=(None, 3)).momentum == 0.1


def test_torch_round_trip_cumulative_spec_without_count_steps(torch):
    # momentum is unused with cumulative averaging (PyTorch's momentum=None); from_torch writes PyTorch's 0.1.
    spec = jaxnorm.BatchNorm(axis=1, momentum=0.1, momentum_convention="torch", moving_var_estimator="unbiased",
                             epsilon=1e-5, averaging="cumulative")
    params, state = spec.init(None, jnp.zeros((2, 3)))
    assert interop.from_torch(interop.to_torch(spec, params, state, input_shape=(None, 3)))[0] == spec


# ------------------------------------------------------------------------------------------------------------
# Keras 3.


def _keras_layers(keras):
    """id -> (layer factory, input shape); the factories cover every config key the converters translate."""
    L, init, reg, con = keras.layers, keras.initializers, keras.regularizers, keras.constraints
    return {
        "bn_last": (lambda: L.BatchNormalization(), (None, 5, 3)),
        "bn_axis1_renorm": (lambda: L.BatchNormalization(
            axis=1, momentum=0.9, epsilon=1e-4, renorm=True, renorm_momentum=0.8,
            renorm_clipping={"rmax": 1.5, "rmin": 0.7, "dmax": 0.5},
            gamma_regularizer=reg.L2(0.01), beta_regularizer=reg.L1L2(l1=0.1, l2=0.2),
            gamma_constraint=con.MinMaxNorm(0.5, 2.0, rate=0.5, axis=0), beta_constraint=con.NonNeg(),
            gamma_initializer=init.RandomNormal(0.0, 0.5, seed=3), beta_initializer=init.Constant(0.25),
            moving_variance_initializer=init.Constant(2.0),
            moving_mean_initializer=init.RandomUniform(-1.0, 1.0, seed=2)),
            (None, 3, 4)),
        "bn_frozen_no_center": (lambda: L.BatchNormalization(center=False, trainable=False, momentum=0.5),
                                (None, 2, 2, 3)),
        "ln_axis_list": (lambda: L.LayerNormalization(
            axis=[1, 2], epsilon=1e-5, gamma_regularizer=reg.L1(0.3), beta_constraint=con.MaxNorm(2.0, axis=0),
            gamma_initializer=init.TruncatedNormal(seed=1)), (None, 3, 4, 2)),
        "ln_rms_scaling": (lambda: L.LayerNormalization(rms_scaling=True), (None, 4, 6)),
        "ln_no_scale": (lambda: L.LayerNormalization(scale=False, trainable=False), (None, 6)),
    }


def _keras_weights(layer):
    return {w.name: np.asarray(w.value) for w in layer.weights}


@pytest.mark.parametrize(
    "name", ["bn_last", "bn_axis1_renorm", "bn_frozen_no_center", "ln_axis_list", "ln_rms_scaling", "ln_no_scale"]
)
def test_keras_round_trip(keras, name):
    factory, input_shape = _keras_layers(keras)[name]
    # Keras warns that rms_scaling is deprecated on construction and call; the tests run with warnings as errors.
    rms = (lambda: pytest.warns(UserWarning, match="rms_scaling")) if "rms" in name else _nothing
    rng = np.random.default_rng(8)
    with rms():
        layer = factory()
    layer.build(input_shape)
    for w in layer.weights:
        w.assign(rng.uniform(0.5, 2.0, w.shape).astype(np.float32))
    spec, params, state = interop.from_keras(layer)
    for key, value in {**params, **state}.items():  # the arrays, copied bit for bit
        want = _keras_weights(layer)[{"scale": "gamma", "bias": "beta", "mean": "moving_mean",
                                      "var": "moving_variance", "stddev": "moving_stddev"}.get(key, key)]
        assert value.dtype == want.dtype
        np.testing.assert_array_equal(value, want)

    with rms():
        back = interop.to_keras(spec, params, state, input_shape, name=layer.name)
    assert type(back) is type(layer) and back.built and back.trainable == layer.trainable
    assert back.get_config() == layer.get_config()
    want, got = _keras_weights(layer), _keras_weights(back)
    assert list(got) == list(want)
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)

    # The converted spec computes the layer's inference output (and, for LayerNorm, its only output).
    x = _data(rng, (2, *input_shape[1:]))
    y, _ = spec.apply(params, state, jnp.asarray(x), training=False)
    with rms():
        y_keras = layer(x, training=False)
    assert_close(y, np.asarray(y_keras))


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


KERAS_TRAIN = {
    "axis_last": (dict(momentum=0.7), (6, 4, 3)),
    "axis1_renorm_clipped": (dict(axis=1, momentum=0.8, renorm=True, renorm_momentum=0.6,
                                  renorm_clipping={"rmax": 1.2, "rmin": 0.9, "dmax": 0.1}), (6, 3, 4)),
    "no_center_eps": (dict(momentum=0.5, center=False, epsilon=1e-4), (5, 2, 3)),
}


@pytest.mark.parametrize("name", list(KERAS_TRAIN))
def test_keras_training_continues_in_jaxnorm(keras, name):
    kwargs, shape = KERAS_TRAIN[name]
    rng = np.random.default_rng(9)
    layer = keras.layers.BatchNormalization(**kwargs)
    layer.build((None, *shape[1:]))
    for w in layer.weights:
        w.assign(rng.uniform(0.5, 2.0, w.shape).astype(np.float32))
    batches = [_data(rng, shape) for _ in range(6)]
    for x in batches[:3]:
        layer(x, training=True)
    spec, params, state = interop.from_keras(layer)
    names = {"mean": "moving_mean", "var": "moving_variance", "stddev": "moving_stddev"}
    keras_state = sorted(n for n in _keras_weights(layer) if n not in ("gamma", "beta"))
    assert sorted(names.get(k, k) for k in state) == keras_state

    step = jax.jit(lambda p, s, x: spec.apply(p, s, x, training=True))
    for x in batches[3:]:
        y, state = step(params, state, jnp.asarray(x))
        y_keras = np.asarray(layer(x, training=True))
        assert_close(y, y_keras)
        weights = _keras_weights(layer)
        for k, v in state.items():
            assert_close(v, weights[names.get(k, k)])
    x = batches[0]
    y, _ = spec.apply(params, state, jnp.asarray(x), training=False)
    assert_close(y, np.asarray(layer(x, training=False)))


# ------------------------------------------------------------------------------------------------------------
# Errors: every setting a peer cannot express, and bad input, named in the message.

_TORCH_BN = dict(axis=1, epsilon=1e-5, momentum_convention="torch", moving_var_estimator="unbiased")


def _arrays(spec, shape):
    return spec.init(None, jnp.zeros(tuple(2 if d is None else d for d in shape)))


def _to_torch(spec, shape=(None, 3, 4), arrays_shape=None, **kwargs):
    return lambda: interop.to_torch(spec, *_arrays(spec, arrays_shape or shape), input_shape=shape, **kwargs)


TO_TORCH_ERRORS = {
    "biased_var": (_to_torch(jaxnorm.BatchNorm(axis=1)), ValueError,
                   r"BatchNorm settings with no PyTorch equivalent: moving_var_estimator: 'biased'; PyTorch's "
                   r"running_var is unbiased\. Change them"),
    "debiased": (_to_torch(jaxnorm.BatchNorm(**_TORCH_BN, averaging="debiased")), ValueError,
                 r"averaging: 'debiased' \(Haiku\); PyTorch has no zero-debiasing"),
    "renorm": (_to_torch(jaxnorm.BatchNorm(axis=1, renorm=True)), ValueError,
               r"renorm: True; PyTorch has no batch renormalization"),
    "regularizer": (_to_torch(jaxnorm.BatchNorm(**_TORCH_BN, scale_regularizer="l2")), ValueError,
                    r"no PyTorch equivalent: scale_regularizer: PyTorch layers have no regularizers or "
                    r"constraints"),
    "constraint": (_to_torch(jaxnorm.BatchNorm(**_TORCH_BN, bias_constraint="non_neg")), ValueError,
                   r"no PyTorch equivalent: bias_constraint: PyTorch layers have no regularizers"),
    "axis_last_rank4": (_to_torch(jaxnorm.BatchNorm(**{**_TORCH_BN, "axis": -1}), (None, 4, 4, 3)), ValueError,
                        r"axis: -1; PyTorch normalizes axis 1 \(channels-first\)"),
    "rank6": (_to_torch(jaxnorm.BatchNorm(**_TORCH_BN), (2, 3, 1, 1, 1, 1)), ValueError,
              r"input_shape: rank 6; PyTorch's BatchNorm takes rank 2 to 5"),
    "no_input_shape": (lambda: interop.to_torch(jaxnorm.BatchNorm(**_TORCH_BN), *_arrays(
        jaxnorm.BatchNorm(**_TORCH_BN), (2, 3)), input_shape=None), ValueError,
        r"to_torch needs `input_shape` for a BatchNorm.*input_shape=\(None, C, H, W\)"),
    "scale_without_bias": (_to_torch(jaxnorm.BatchNorm(**_TORCH_BN, use_bias=False)), ValueError,
                           r"use_scale/use_bias: PyTorch's `affine` creates both weight and bias or neither"),
    "params_mismatch": (_to_torch(jaxnorm.BatchNorm(**_TORCH_BN), (None, 5, 4), (None, 3, 4)), ValueError,
                        r"`params\['scale'\]` has shape \(3,\).*\(5,\).*inputs of shape \(None, 5, 4\)"),
    "unknown_batch_channels": (_to_torch(jaxnorm.BatchNorm(**_TORCH_BN), (None, None, 4), (2, 3, 4)), ValueError,
                               r"`input_shape`=\(None, None, 4\) leaves a size along axis=1 unknown"),
    "ln_non_trailing": (_to_torch(jaxnorm.LayerNorm(axis=1)), ValueError,
                        r"LayerNorm settings with no PyTorch equivalent: axis: 1; PyTorch's LayerNorm "
                        r"normalizes the trailing axes"),
    "ln_rms_scaling": (_to_torch(jaxnorm.LayerNorm(rms_scaling=True)), ValueError, r"rms_scaling: True"),
    "ln_bias_without_scale": (_to_torch(jaxnorm.LayerNorm(use_scale=False)), ValueError,
                              r"use_scale/use_bias: bias without scale"),
    "ln_no_params_no_shape": (lambda: interop.to_torch(jaxnorm.LayerNorm(use_scale=False, use_bias=False), {}, {}),
                              ValueError, r"needs `input_shape` for a LayerNorm without params"),
    "not_a_spec": (lambda: interop.to_torch(object(), {}, {}, (None, 3)), TypeError,
                   r"`spec` must be a jaxnorm.BatchNorm, LayerNorm, GroupNorm, InstanceNorm or RMSNorm to "
                   r"convert to PyTorch, got object"),
    "gn_group_size": (_to_torch(jaxnorm.GroupNorm(group_size=2, axis=1), (None, 4, 3)), ValueError,
                      r"group_size: PyTorch's GroupNorm takes the number of groups"),
    "gn_channels_last": (_to_torch(jaxnorm.GroupNorm(num_groups=2), (None, 3, 4)), ValueError,
                         r"axis: -1; PyTorch normalizes channels on axis 1"),
    "in_rank2": (_to_torch(jaxnorm.InstanceNorm(axis=1), (None, 4)), ValueError,
                 r"rank 2; PyTorch's InstanceNorm takes 3 to 5"),
    "per_feature_steps_differ": (lambda: interop.to_torch(
        jaxnorm.BatchNorm(**_TORCH_BN, averaging="cumulative"),
        _arrays(jaxnorm.BatchNorm(**_TORCH_BN), (2, 3))[0],
        {"mean": jnp.zeros(3), "var": jnp.ones(3), "steps": jnp.asarray([4, 3, 4], jnp.int32)},
        input_shape=(None, 3)), ValueError,
        r"`state\['steps'\]` counts \[3, 4\] batches for different features.*one `num_batches_tracked`"),
}


@pytest.mark.parametrize("name", list(TO_TORCH_ERRORS))
def test_to_torch_errors(torch, name):
    call, exc, match = TO_TORCH_ERRORS[name]
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda torch: torch.nn.Linear(3, 3), TypeError,
         r"`module` must be a torch.nn.BatchNorm1d/2d/3d, LayerNorm, GroupNorm, InstanceNorm1d/2d/3d or RMSNorm, "
         r"got Linear"),
        (lambda torch: torch.nn.SyncBatchNorm(3), TypeError, r"got SyncBatchNorm"),
        (lambda torch: torch.nn.InstanceNorm2d(3, track_running_stats=True), ValueError,
         r"InstanceNorm2d\(track_running_stats=True\) normalizes with running statistics"),
        (lambda torch: torch.nn.BatchNorm2d(3, track_running_stats=False), ValueError,
         r"BatchNorm2d\(track_running_stats=False\) normalizes with batch statistics in eval mode too"),
    ],
)
def test_from_torch_errors(torch, make, exc, match):
    with pytest.raises(exc, match=match):
        interop.from_torch(make(torch))


def test_keras_errors(keras):
    with pytest.raises(ValueError, match=r"the Keras layer 'unbuilt' is not built.*layer\.build\(input_shape\)"):
        interop.from_keras(keras.layers.BatchNormalization(name="unbuilt"))
    dense = keras.layers.Dense(2)
    dense.build((None, 3))
    with pytest.raises(TypeError, match=r"must be a keras.layers.BatchNormalization, .*, got Dense"):
        interop.from_keras(dense)

    spec = jaxnorm.BatchNorm(axis=(1, 2))
    with pytest.raises(ValueError, match=r"no Keras BatchNormalization equivalent: axis=\[1, 2\] \(Keras "
                                         r"computes one feature axis, an int\)"):
        interop.to_keras(spec, *_arrays(spec, (2, 3, 4)), (None, 3, 4))
    spec = jaxnorm.BatchNorm(momentum=0.1, momentum_convention="torch")
    with pytest.raises(ValueError, match=r"no Keras BatchNormalization equivalent: momentum_convention='torch'"):
        interop.to_keras(spec, *_arrays(spec, (2, 3)), (None, 3))
    spec = jaxnorm.BatchNorm(moving_var_estimator="unbiased")
    with pytest.raises(ValueError, match=r"moving_var_estimator='unbiased' \(Keras computes 'biased'\)"):
        interop.to_keras(spec, *_arrays(spec, (2, 3)), (None, 3))
    spec = jaxnorm.BatchNorm()
    with pytest.raises(ValueError, match=r"`params\['scale'\]` has shape \(3,\).*\(4,\).*shape \(None, 4\)"):
        interop.to_keras(spec, *_arrays(spec, (2, 3)), (None, 4))
    spec = jaxnorm.LayerNorm(axis=(1, 2))
    with pytest.raises(ValueError, match=r"`params\['scale'\]` has shape \(3, 4\).*\(3, 5\)"):
        interop.to_keras(spec, *_arrays(spec, (2, 3, 4)), (None, 3, 5))
    with pytest.raises(TypeError, match=r"`input_shape` must be the layer's input shape as a tuple"):
        interop.to_keras(spec, *_arrays(spec, (2, 3, 4)), 4)
    with pytest.raises(TypeError, match=r"`spec` must be one of jaxnorm.BatchNorm, .* to convert to Keras"):
        interop.to_keras(object(), {}, {}, (None, 3))


# ------------------------------------------------------------------------------------------------------------
# Without the peers: state dicts of NumPy arrays, and the ImportError that says what to install.


def test_from_torch_state_dict_reads_numpy_arrays_without_torch():
    spec = jaxnorm.BatchNorm(**_TORCH_BN, averaging="cumulative")
    rng = np.random.default_rng(12)
    sd = {f"net.bn.{k}": rng.uniform(0.5, 2, 3).astype(np.float32) for k in ("weight", "bias", "running_mean",
                                                                             "running_var")}
    sd["net.bn.num_batches_tracked"] = np.array(7, np.int64)
    sd["net.conv.weight"] = np.zeros((3, 3), np.float32)
    params, state = interop.from_torch_state_dict(spec, sd, prefix="net.bn.")
    assert sorted(params) == ["bias", "scale"] and sorted(state) == ["mean", "steps", "var"]
    np.testing.assert_array_equal(params["scale"], sd["net.bn.weight"])
    np.testing.assert_array_equal(state["var"], sd["net.bn.running_var"])
    assert state["steps"].dtype == jnp.int32
    np.testing.assert_array_equal(state["steps"], [7, 7, 7])  # num_batches_tracked for each feature
    y, new_state = spec.apply(params, state, jnp.ones((2, 3)) + jnp.arange(2.0)[:, None], training=True)
    np.testing.assert_array_equal(new_state["steps"], [8, 8, 8])

    ln_spec = jaxnorm.LayerNorm(use_bias=False)
    ln_params, ln_state = interop.from_torch_state_dict(ln_spec, {"weight": sd["net.bn.bias"]})
    assert list(ln_params) == ["scale"] and ln_state == {}
    with pytest.raises(ValueError, match=r"no 'net\.bn\.weight'.*under prefix 'net\.bn\.': \['net\.bn\.bias'\]"):
        interop.from_torch_state_dict(jaxnorm.LayerNorm(), {"net.bn.bias": sd["net.bn.bias"]}, prefix="net.bn.")
    with pytest.raises(TypeError, match=r"`state_dict` must be a mapping of names to tensors, got list"):
        interop.from_torch_state_dict(spec, [("weight", sd["net.bn.weight"])])


@pytest.mark.parametrize(
    "peer, call, match",
    [
        ("torch", lambda: interop.from_torch(None), r"PyTorch converters need torch: `pip install torch`"),
        ("torch", lambda: interop.to_torch(jaxnorm.LayerNorm(), {}, {}), r"need torch"),
        ("keras", lambda: interop.from_keras(None), r"Keras converters need keras: `pip install keras` and set "
                                                    r"KERAS_BACKEND=jax"),
        ("keras", lambda: interop.to_keras(jaxnorm.LayerNorm(), {}, {}, (None, 3)), r"need keras"),
    ],
)
def test_missing_peer_raises_import_error(monkeypatch, peer, call, match):
    monkeypatch.setitem(sys.modules, peer, None)  # makes `import peer` raise ImportError
    with pytest.raises(ImportError, match=match):
        call()


@pytest.mark.parametrize("kind", ["BatchNorm2d", "LayerNorm"])
def test_from_torch_bfloat16_round_trip(torch, kind):
    module = _randomize_torch(torch, getattr(torch.nn, kind)(3, dtype=torch.float32), np.random.default_rng(13))
    module = module.to(torch.bfloat16)
    spec, params, state = interop.from_torch(module)
    assert params["scale"].dtype == jnp.bfloat16
    back = interop.to_torch(spec, params, state, input_shape=(None, 3, 2, 2) if state else None)
    for key, tensor in module.state_dict().items():
        assert torch.equal(back.state_dict()[key], tensor), key


def test_to_torch_bfloat16_params(torch):
    spec = jaxnorm.LayerNorm(epsilon=1e-5, param_dtype="bfloat16")
    params, state = spec.init(None, jnp.ones((2, 4)))
    module = interop.to_torch(spec, params, state)
    assert module.weight.dtype == torch.bfloat16


def test_keras_layer_norm_mixed_sign_axes_keep_keras_numbers(keras):
    # Keras lays out the weights of axis=[1, -1] as (C, H) and reshapes them onto the input; jaxnorm's are (H, C).
    layer = keras.layers.LayerNormalization(axis=[1, -1])
    layer.build((2, 3, 4))
    rng = np.random.default_rng(7)
    for w in layer.weights:
        w.assign(rng.normal(size=w.shape).astype(np.float32))
    x = rng.normal(size=(2, 3, 4)).astype(np.float32)
    spec, params, state = interop.from_keras(layer)
    assert params["scale"].shape == (3, 4)
    y, _ = spec.apply(params, state, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(y), np.asarray(layer(x)), rtol=1e-5, atol=1e-5)
    back = interop.to_keras(spec, params, state, (2, 3, 4))
    for a, b in zip(layer.weights, back.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a.value), np.asarray(b.value))


# ------------------------------------------------------------------------------------------------------------
# The rest of the family: GroupNorm, InstanceNorm, RMSNorm (PyTorch); GroupNormalization, RMSNormalization,
# UnitNormalization (Keras).


def _torch_family(torch):
    return {
        "GroupNorm": (lambda: torch.nn.GroupNorm(3, 6, eps=1e-4), (2, 6, 4, 5)),
        "GroupNorm_no_affine": (lambda: torch.nn.GroupNorm(2, 6, affine=False), (2, 6, 7)),
        "InstanceNorm1d": (lambda: torch.nn.InstanceNorm1d(6, affine=True), (2, 6, 7)),
        "InstanceNorm2d": (lambda: torch.nn.InstanceNorm2d(6, eps=1e-3), (2, 6, 4, 5)),
        "InstanceNorm3d": (lambda: torch.nn.InstanceNorm3d(6, affine=True), (2, 6, 3, 4, 2)),
        "RMSNorm": (lambda: torch.nn.RMSNorm(5, eps=1e-5), (2, 3, 5)),
        "RMSNorm_eps_none": (lambda: torch.nn.RMSNorm((3, 5)), (2, 3, 5)),
    }


@pytest.mark.parametrize("name", ["GroupNorm", "GroupNorm_no_affine", "InstanceNorm1d", "InstanceNorm2d",
                                  "InstanceNorm3d", "RMSNorm", "RMSNorm_eps_none"])
def test_torch_family_converts_both_ways(torch, name):
    make, shape = _torch_family(torch)[name]
    module = make()
    with torch.no_grad():  # parameters away from their initial values
        for i, p in enumerate(module.parameters()):
            p.copy_(torch.from_numpy(np.random.default_rng(i).standard_normal(p.shape).astype(np.float32)))
    spec, params, state = interop.from_torch(module)
    x = np.random.default_rng(9).standard_normal(shape).astype(np.float32) * 2 + 1
    assert_close(spec.apply(params, state, jnp.asarray(x))[0], module(torch.from_numpy(x)).detach().numpy(),
                 scale=4)
    back = interop.to_torch(spec, params, state, input_shape=(None, *shape[1:]))
    assert type(back) is type(module)
    assert back.state_dict().keys() == module.state_dict().keys()
    for k, v in module.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[k].numpy(), v.numpy())
    assert_close(back(torch.from_numpy(x)).detach().numpy(), module(torch.from_numpy(x)).detach().numpy())


@pytest.mark.parametrize("name", ["GroupNormalization", "GroupNormalization_channels_first", "RMSNormalization",
                                  "UnitNormalization", "InstanceNorm"])
def test_keras_family_converts_both_ways(keras, name):
    shape = (2, 4, 5, 6)
    if name == "InstanceNorm":  # written as GroupNormalization(groups=-1)
        spec = jaxnorm.InstanceNorm(epsilon=1e-4)
        params, state = spec.init(None, jnp.ones(shape))
        params = {k: v + 0.5 for k, v in params.items()}
        layer = interop.to_keras(spec, params, state, (None, *shape[1:]))
    else:
        layer = {
            "GroupNormalization": lambda: keras.layers.GroupNormalization(groups=3, epsilon=1e-4),
            "GroupNormalization_channels_first": lambda: keras.layers.GroupNormalization(groups=2, axis=1),
            "RMSNormalization": lambda: keras.layers.RMSNormalization(axis=(2, 3)),
            "UnitNormalization": lambda: keras.layers.UnitNormalization(axis=(1, -1)),
        }[name]()
        layer.build((None, *shape[1:]))
        for i, w in enumerate(layer.weights):
            w.assign(np.random.default_rng(i).standard_normal(w.shape).astype(np.float32))
    x = np.random.default_rng(9).standard_normal(shape).astype(np.float32) * 2 + 1
    with jax.numpy_rank_promotion("allow"):  # Keras's own code relies on rank promotion
        want = np.asarray(layer(x))
    spec, params, state = interop.from_keras(layer)
    assert_close(spec.apply(params, state, jnp.asarray(x))[0], want, scale=4)
    back = interop.to_keras(spec, params, state, (None, *shape[1:]))
    assert [w.name for w in back.weights] == [w.name for w in layer.weights]
    for a, b in zip(back.weights, layer.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a.value), np.asarray(b.value))
    with jax.numpy_rank_promotion("allow"):
        assert_close(np.asarray(back(x)), want)


# ------------------------------------------------------------------------------------------------------------
# The Keras records (jaxnorm._src.keras_config) against Keras itself: every key and weight a Keras layer has is
# in its spec's record, so from_config / from_keras / to_keras, which read only the record, miss nothing.
_RECORD_CASES = {
    "BatchNorm": (jaxnorm.BatchNorm(renorm=True), (2, 3, 8)),  # renorm: every weight BatchNormalization has
    "LayerNorm": (jaxnorm.LayerNorm(), (2, 3, 8)),
    "GroupNorm": (jaxnorm.GroupNorm(num_groups=2), (2, 3, 8)),
    "InstanceNorm": (jaxnorm.InstanceNorm(), (2, 3, 8)),
    "RMSNorm": (jaxnorm.RMSNorm(), (2, 3, 8)),
    "UnitNormalization": (jaxnorm.UnitNormalization(), (2, 3, 8)),
    "Normalization": (jaxnorm.Normalization(mean=0.5, variance=2.0), (2, 3, 8)),
}


def test_record_cases_cover_every_spec_with_a_keras_layer():
    import dataclasses

    specs = {
        c.__name__ for c in vars(jaxnorm).values()
        if isinstance(c, type) and dataclasses.is_dataclass(c) and getattr(c, "KERAS", None) is not None
    }
    assert specs == set(_RECORD_CASES)


@pytest.mark.parametrize("name", sorted(_RECORD_CASES))
def test_keras_record_holds_every_key_and_weight_keras_has(keras, name):
    spec, shape = _RECORD_CASES[name]
    record = type(spec).KERAS
    layer = getattr(keras.layers, record.class_name).from_config(spec.to_keras_config())
    layer.build(shape)
    assert set(layer.get_config()) <= record.keys, set(layer.get_config()) - record.keys
    if record.converts:  # the weights, and what to_keras writes reads back as the same layer
        assert {w.name for w in layer.weights} <= set(record.weights)
        params, state = spec.init(jax.random.key(0), jnp.zeros(shape))
        back, back_params, back_state = interop.from_keras(interop.to_keras(spec, params, state, shape))
        assert type(back) is (type(spec) if record.reads else jaxnorm.GroupNorm)
        assert sorted(back_params) == sorted(params) and sorted(back_state) == sorted(state)
        jax.tree.map(np.testing.assert_array_equal, (back_params, back_state), (params, state))
