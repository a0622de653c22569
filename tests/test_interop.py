"""jaxnorm.interop against the real peers: PyTorch (BatchNorm1d/2d/3d, LayerNorm) and Keras 3 (BatchNormalization,
LayerNormalization).

A converted layer must compute what the peer computes, training included (outputs, moving statistics, step
counter, gradients), round trips must be exact (bit for bit, dtypes kept), and every setting a peer cannot express
must raise an error that names it. Tests that need a peer skip without it; the rest run anyway.
"""

from __future__ import annotations

import os
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


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


@pytest.fixture
def keras():
    os.environ.setdefault("KERAS_BACKEND", "jax")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip("the Keras tests need KERAS_BACKEND=jax")
    return keras


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


@pytest.mark.parametrize("cfg", TORCH_BN_CONFIGS, ids=lambda c: f"{c['kind']}-m{c['momentum']}-a{int(c['affine'])}")
def test_torch_batch_norm_conformance(torch, cfg):
    rng = np.random.default_rng(cfg["seed"])
    module = _torch_bn_module(torch, cfg, rng)
    spec, params, state = interop.from_torch(module)
    assert spec.axis == 1 and spec.epsilon == cfg["eps"] and spec.use_scale == spec.use_bias == cfg["affine"]
    assert spec.averaging == ("cumulative" if cfg["momentum"] is None else "exponential")
    assert int(state["count"]) == int(module.num_batches_tracked)

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
        assert state["count"].dtype == jnp.int32
        assert int(state["count"]) == int(module.num_batches_tracked)
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
