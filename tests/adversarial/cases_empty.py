"""Empty inputs (issue 12, class 3): a zero-size batch in training or inference gives an empty output of the
right shape and dtype and returns the state unchanged, bit for bit; ``moments`` of an empty reduction is the
documented (0, 0); a zero-size feature axis gives an empty output."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jaxnorm
from jaxnorm import linen as jnn
from tests.adversarial import Case


def _empty_output(shape, dtype=np.float32):
    def check(y):
        assert y.shape == shape and y.dtype == dtype, (y.shape, y.dtype)

    return check


def _spec_step(spec, shape, training, dtype=jnp.float32, **kw):
    def run():
        params, state = spec.init(jax.random.key(0), jax.ShapeDtypeStruct((2,) + shape[1:], dtype))
        state = jax.tree.map(lambda v: v + 0.25 if jnp.issubdtype(v.dtype, jnp.floating) else v + 3, state)
        x = jnp.zeros(shape, dtype)
        y, new_state = jax.jit(lambda p, s, x: spec.apply(p, s, x, training=training, **kw))(params, state, x)
        return y, state, new_state

    def check(out):
        y, state, new_state = out
        assert y.shape == shape and y.dtype == dtype
        assert jax.tree.structure(state) == jax.tree.structure(new_state)
        for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(new_state), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # bit for bit
            assert a.dtype == b.dtype

    return run, check


def _moments_empty():
    return jaxnorm.moments(jnp.zeros((0, 3)), 0)


def _check_zeros(shape):
    def check(out):
        for a in out:
            assert a.shape == shape, a.shape
            np.testing.assert_array_equal(np.asarray(a), 0.0)

    return check


def _linen_bn_empty():
    bn = jnn.BatchNorm(use_running_average=False)
    variables = bn.init(jax.random.key(0), jnp.ones((2, 3)))
    variables = jax.tree.map(lambda v: v + 0.5, variables)
    y, updates = bn.apply(variables, jnp.zeros((0, 3)), mutable=["batch_stats"])
    return y, variables["batch_stats"], updates["batch_stats"]


def _check_linen(out):
    y, before, after = out
    assert y.shape == (0, 3)
    for k in before:
        np.testing.assert_array_equal(np.asarray(before[k]), np.asarray(after[k]))


def _grad_empty():
    return jax.grad(lambda x: jnp.sum(jaxnorm.layer_norm(x)))(jnp.zeros((0, 4)))


CASES = []
for _name, _spec in (
    ("BatchNorm", jaxnorm.BatchNorm()),
    ("BatchNorm_channels_first", jaxnorm.BatchNorm(axis=1)),
    ("BatchNorm_cumulative", jaxnorm.BatchNorm(averaging="cumulative")),
    ("BatchNorm_debiased_unbiased", jaxnorm.BatchNorm(averaging="debiased", moving_var_estimator="unbiased")),
    ("BatchNorm_renorm", jaxnorm.BatchNorm(renorm=True)),
):
    for _training in (True, False):
        _run, _check = _spec_step(_spec, (0, 3, 4) if "first" in _name else (0, 4), _training)
        CASES.append(Case(f"empty_batch_{_name}_{'train' if _training else 'eval'}", _run, check=_check))
_run, _check = _spec_step(jaxnorm.BatchNorm(), (0, 4), True, jnp.bfloat16)
CASES.append(Case("empty_batch_BatchNorm_bf16", _run, check=_check))
_mask_run, _mask_check = _spec_step(jaxnorm.BatchNorm(), (0, 4), True, mask=jnp.zeros((0, 4), bool))
CASES.append(Case("empty_batch_BatchNorm_masked", _mask_run, check=_mask_check))
for _name, _spec, _shape in (
    ("LayerNorm", jaxnorm.LayerNorm(), (0, 5)),
    ("RMSNorm", jaxnorm.RMSNorm(), (0, 5)),
    ("GroupNorm", jaxnorm.GroupNorm(num_groups=2), (0, 3, 4)),
    ("InstanceNorm", jaxnorm.InstanceNorm(), (0, 3, 4)),
    ("UnitNormalization", jaxnorm.UnitNormalization(), (0, 5)),
):
    _run, _check = _spec_step(_spec, _shape, False)
    CASES.append(Case(f"empty_batch_{_name}", _run, check=_check))

CASES += [
    Case("empty_moments_is_zero_zero", _moments_empty, check=_check_zeros((3,))),
    Case("empty_moments_keepdims", lambda: jaxnorm.moments(jnp.zeros((2, 0, 3)), (0, 1), keepdims=True),
         check=_check_zeros((1, 1, 3))),
    Case("empty_moments_masked", lambda: jaxnorm.moments(jnp.zeros((0, 3)), 0, where=jnp.zeros((0, 3), bool)),
         check=_check_zeros((3,))),
    Case("empty_normalize_batch_in_training", lambda: jaxnorm.normalize_batch_in_training(
        jnp.zeros((0, 3)), jnp.ones(3), jnp.zeros(3), 0),
         check=lambda out: (_empty_output((0, 3))(out[0]), _check_zeros((3,))(out[1:]))),
    Case("empty_features_layer_norm", lambda: jaxnorm.layer_norm(jnp.zeros((3, 0))), check=_empty_output((3, 0))),
    Case("empty_features_rms_norm", lambda: jaxnorm.rms_norm(jnp.zeros((3, 0))), check=_empty_output((3, 0))),
    Case("empty_features_unit_norm", lambda: jaxnorm.unit_norm(jnp.zeros((3, 0))), check=_empty_output((3, 0))),
    Case("empty_batch_layer_norm_op", lambda: jaxnorm.layer_norm(jnp.zeros((0, 4))), check=_empty_output((0, 4))),
    Case("empty_batch_group_norm_op", lambda: jaxnorm.group_norm(jnp.zeros((0, 2, 4)), num_groups=2),
         check=_empty_output((0, 2, 4))),
    Case("empty_spatial_group_norm_op", lambda: jaxnorm.group_norm(jnp.zeros((2, 0, 4)), num_groups=2),
         check=_empty_output((2, 0, 4))),
    Case("empty_batch_instance_norm_op", lambda: jaxnorm.instance_norm(jnp.zeros((0, 2, 4))),
         check=_empty_output((0, 2, 4))),
    Case("empty_batch_normalization_op", lambda: jaxnorm.batch_normalization(
        jnp.zeros((0, 3)), jnp.zeros(3), jnp.ones(3)), check=_empty_output((0, 3))),
    Case("empty_batch_layer_norm_bf16", lambda: jaxnorm.layer_norm(jnp.zeros((0, 4), jnp.bfloat16)),
         check=_empty_output((0, 4), jnp.bfloat16)),
    Case("empty_batch_gradient", _grad_empty, check=_empty_output((0, 4))),
    Case("empty_batch_linen_BatchNorm_state_unchanged", _linen_bn_empty, check=_check_linen),
]
