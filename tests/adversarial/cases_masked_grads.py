"""Masks whose excluded positions hold NaN or inf (issue 12, class 1): for every layer of the registry that takes
a mask, every masked op and the Flax drop-ins, the output at the kept positions and the gradient of a loss that
reads only the kept positions (with respect to the parameters and to x) equal those of the same call with the
excluded positions zeroed, and are finite."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jaxnorm
from jaxnorm import linen as jnn
from tests.adversarial import Case
from tests.registry import REGISTRY


def _inputs(shape, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
    mask = rng.random(shape) < 0.7
    mask[(0,) * len(shape)] = True
    mask[(slice(None),) + (0,) * (len(shape) - 1)] = True  # every example keeps one position
    w = rng.standard_normal(shape).astype(np.float32)
    return x, mask, w


def _grads(apply, x, mask, w, params):
    def loss(params, x):
        y = apply(params, x)
        return jnp.sum(jnp.where(mask, y, 0) * w), y

    (_, y), g = jax.value_and_grad(loss, (0, 1), has_aux=True)(params, jnp.asarray(x))
    return y, g


def _case(name, apply, params, shape, bad):
    x, mask, w = _inputs(shape)
    dirty = np.where(mask, x, bad).astype(np.float32)
    clean = np.where(mask, x, 0).astype(np.float32)

    def run():
        return _grads(apply, dirty, mask, w, params), _grads(apply, clean, mask, w, params)

    def check(out):
        (y_d, g_d), (y_c, g_c) = out
        np.testing.assert_allclose(np.asarray(y_d)[mask], np.asarray(y_c)[mask], rtol=1e-5, atol=1e-5)
        for a, b in zip(jax.tree.leaves(g_d), jax.tree.leaves(g_c), strict=True):
            a, b = np.asarray(a), np.asarray(b)
            assert np.isfinite(a).all(), a
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)

    return Case(f"masked_{'nan' if np.isnan(bad) else 'inf'}_grad_{name}", run, check=check)


def _registry_apply(entry):
    spec = entry.make()
    x, _, _ = _inputs(entry.shape)
    params, state = spec.init(jax.random.key(0), x)
    if entry.prepare is not None:
        state = entry.prepare(spec, x, params, state)
    mask = _inputs(entry.shape)[1]

    extra = {} if entry.inputs is None else entry.inputs(x)  # a residual or gate from the clean x: constants

    def apply(p, x):
        out = spec.apply(p, state, x, training=entry.training, mask=mask, **extra)[0]
        return out if entry.output is None else entry.output(out)

    return apply, params


def _linen(module, shape, **call):
    x, mask, _ = _inputs(shape)
    variables = module.init(jax.random.key(0), x, mask=mask, **call)
    rest = {k: v for k, v in variables.items() if k != "params"}

    def apply(p, x):
        out = module.apply({"params": p, **rest}, x, mask=mask, mutable=["batch_stats"], **call)
        return out[0]

    return apply, variables["params"]


def _op(fn, shape, **kw):
    mask = _inputs(shape)[1]
    c = shape[-1]
    params = {"scale": jnp.linspace(0.5, 2.0, c), "bias": jnp.linspace(-1.0, 1.0, c)}

    def apply(p, x):
        return fn(x, p, mask, **kw)

    return apply, params


_OPS = [
    ("op_layer_norm", lambda x, p, m: jaxnorm.layer_norm(x, p["scale"], p["bias"], where=m), (5, 6)),
    ("op_rms_norm", lambda x, p, m: jaxnorm.rms_norm(x, p["scale"], where=m), (5, 6)),
    ("op_group_norm", lambda x, p, m: jaxnorm.group_norm(x, p["scale"], p["bias"], num_groups=3, where=m),
     (4, 3, 6)),
    ("op_instance_norm", lambda x, p, m: jaxnorm.instance_norm(x, p["scale"], p["bias"], where=m), (4, 3, 6)),
    # unit_norm has no parameters (a scale applied to its output would multiply the NaN kept positions itself)
    ("op_unit_norm", lambda x, p, m: jaxnorm.unit_norm(x, where=m), (5, 6)),
    ("op_moments", lambda x, p, m: jnp.stack(jaxnorm.moments(x, 0, where=m)) * p["scale"][None], (5, 6)),
]

CASES = []
for _bad in (np.nan, np.inf):
    for _entry in REGISTRY:
        if _entry.mask:
            CASES.append(_case(_entry.name, *_registry_apply(_entry), _entry.shape, _bad))
    for _name, _fn, _shape in _OPS:
        _apply, _params = _op(_fn, _shape)
        if _name == "op_moments":  # its output is (2, C): read it at every position, mask the input only
            _apply_m = _apply

            def _apply(p, x, _f=_apply_m, _shape=_shape):
                out = _f(p, x)
                return jnp.broadcast_to(out.sum(0), _shape)

        CASES.append(_case(_name, _apply, _params, _shape, _bad))
    for _name, _module, _shape, _call in (
        ("linen_BatchNorm", jnn.BatchNorm(use_running_average=False), (6, 3), {}),
        ("linen_LayerNorm", jnn.LayerNorm(), (5, 6), {}),
        ("linen_RMSNorm", jnn.RMSNorm(), (5, 6), {}),
        ("linen_GroupNorm", jnn.GroupNorm(num_groups=2), (4, 3, 6), {}),
    ):
        CASES.append(_case(_name, *_linen(_module, _shape, **_call), _shape, _bad))
