"""Class 8 of issue 12: converters must not drop settings.

``from_keras`` -> ``to_keras`` keeps a ``mixed_float16``/``mixed_bfloat16`` dtype policy for all five Keras
classes (the spec carries it in ``dtype_policy``, hashable and JSON round-trippable), and the converted layer and
the spec compute what the source Keras layer computes on half input (Keras itself is the reference). A
BatchNormalization converted by ``from_keras`` follows Keras on a batch of one value per feature (output beta,
moving statistics moved toward that value), while a spec built by hand still raises there.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

import jaxnorm
from jaxnorm import interop
from tests.adversarial import Case
from tests.tolerances import assert_close

os.environ.setdefault("KERAS_BACKEND", "jax")

_POLICIES = {"mixed_float16": jnp.float16, "mixed_bfloat16": jnp.bfloat16}
# Keras class -> (constructor kwargs, jaxnorm spec class).
_CLASSES = {
    "BatchNormalization": ({"momentum": 0.9}, jaxnorm.BatchNorm),
    "LayerNormalization": ({}, jaxnorm.LayerNorm),
    "GroupNormalization": ({"groups": 2}, jaxnorm.GroupNorm),
    "RMSNormalization": ({}, jaxnorm.RMSNorm),
    "UnitNormalization": ({}, jaxnorm.UnitNormalization),
}
_SHAPE = (5, 6)


def _keras():
    import keras

    assert keras.backend.backend() == "jax", "these rows need KERAS_BACKEND=jax before keras is imported"
    return keras


def _call(layer, x, **kw):
    with jax.numpy_rank_promotion("allow"):  # Keras's JAX backend relies on implicit rank promotion
        return np.asarray(layer(x, **kw))


def _randomized(layer, seed):
    rng = np.random.default_rng(seed)
    for w in layer.weights:
        name = w.path.rsplit("/", 1)[-1]
        value = rng.uniform(0.5, 2.0, w.shape) if name in ("gamma", "scale", "moving_variance") else (
            rng.standard_normal(w.shape))
        w.assign(value.astype(w.dtype))
    return layer


def _mixed_round_trip(cls_name, policy):
    def run():
        keras = _keras()
        kwargs, _ = _CLASSES[cls_name]
        source = getattr(keras.layers, cls_name)(dtype=policy, **kwargs)
        source.build((None, _SHAPE[1]))
        _randomized(source, 1)
        spec, params, state = interop.from_keras(source)
        back = interop.to_keras(spec, params, state, (None, _SHAPE[1]))
        x = (np.random.default_rng(2).standard_normal(_SHAPE) * 2 + 1).astype(_POLICIES[policy])
        y_jax = spec.apply(params, state, jnp.asarray(x), training=False)[0]
        return {"spec": spec, "params": params, "source": source, "back": back,
                "y_source": _call(source, x, training=False), "y_back": _call(back, x, training=False),
                "y_jax": y_jax}

    def check(r):
        spec, source, back = r["spec"], r["source"], r["back"]
        assert isinstance(spec, _CLASSES[cls_name][1])
        assert spec.dtype_policy == policy
        assert back.dtype_policy.name == policy == source.dtype_policy.name
        assert back.get_config()["dtype"] == source.get_config()["dtype"]
        again = type(spec).from_config(json.loads(json.dumps(spec.get_config())))
        assert again == spec and hash(again) == hash(spec)
        for w_src, w_back in zip(source.weights, back.weights, strict=True):
            assert w_back.dtype == w_src.dtype == "float32"
            np.testing.assert_array_equal(np.asarray(w_back.value), np.asarray(w_src.value))
        np.testing.assert_array_equal(r["y_back"], r["y_source"])  # the same layer again
        dtype = _POLICIES[policy]
        assert r["y_source"].dtype == r["y_jax"].dtype == dtype
        assert_close(np.asarray(r["y_jax"], np.float32), r["y_source"].astype(np.float32), dtype=dtype, scale=2)

    return Case(f"interop_{cls_name}_{policy}_round_trip", run=run, check=check, needs=("keras",))


CASES: list[Case] = [_mixed_round_trip(c, p) for c in _CLASSES for p in _POLICIES]


def _hand_built_is_float32():
    def run():
        spec = jaxnorm.LayerNorm()
        params, state = spec.init(None, jnp.zeros(_SHAPE))
        return spec, interop.to_keras(spec, params, state, (None, _SHAPE[1]))

    def check(r):
        spec, layer = r
        assert spec.dtype_policy is None and spec.to_keras_config()["dtype"] == "float32"
        assert layer.dtype_policy.name == "float32"

    return Case("interop_hand_built_spec_writes_float32", run=run, check=check, needs=("keras",))


def _instance_norm_keeps_policy():
    def run():
        spec = jaxnorm.InstanceNorm(dtype_policy="mixed_bfloat16")
        params, state = spec.init(None, jnp.zeros((2, 4, 3)))
        return interop.to_keras(spec, params, state, (None, 4, 3))

    def check(layer):
        config = layer.get_config()
        # Keras rewrites groups=-1 to the channel count when it builds the layer
        assert config["groups"] == 3 and layer.dtype_policy.name == "mixed_bfloat16"

    return Case("interop_instance_norm_to_keras_keeps_policy", run=run, check=check, needs=("keras",))


def _canonical_policy():
    def run():
        keras_dict = {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "mixed_float16"},
                      "registered_name": None}
        return (jaxnorm.BatchNorm(dtype_policy="float32"), jaxnorm.RMSNorm(dtype_policy=keras_dict))

    def check(r):
        plain, rms = r
        assert plain == jaxnorm.BatchNorm() and hash(plain) == hash(jaxnorm.BatchNorm())
        assert rms.dtype_policy == "mixed_float16" and rms.get_config()["dtype_policy"] == "mixed_float16"

    return Case("interop_dtype_policy_canonical_forms", run=run, check=check)


CASES += [
    _hand_built_is_float32(),
    _instance_norm_keeps_policy(),
    _canonical_policy(),
    Case("interop_dtype_policy_half_variables_rejected",
         run=lambda: jaxnorm.LayerNorm(dtype_policy="float16"),
         raises=ValueError, match=r"`dtype_policy`.*mixed_float16.*got 'float16'"),
    Case("interop_dtype_policy_not_a_name",
         run=lambda: jaxnorm.GroupNorm(num_groups=2, dtype_policy=3),
         raises=TypeError, match=r"`dtype_policy`.*got 3 \(int\)"),
    Case("interop_keras_config_with_half_variables_rejected",
         run=lambda: jaxnorm.BatchNorm.from_config(
             {**jaxnorm.BatchNorm().to_keras_config(), "dtype": "float16"}),
         raises=ValueError, match=r"dtype='float16'"),
]


# --- a batch of one value per feature -------------------------------------------------------------------------

def _single_value(name, shape, axis, policy=None):
    def run():
        keras = _keras()
        kwargs = {"axis": axis, "momentum": 0.8} | ({"dtype": policy} if policy else {})
        layer = keras.layers.BatchNormalization(**kwargs)
        layer.build(shape)
        _randomized(layer, 3)
        spec, params, state = interop.from_keras(layer)
        dtype = _POLICIES.get(policy, np.float32)
        x = (np.random.default_rng(4).standard_normal(shape) * 3 + 2).astype(dtype)
        y, new_state = spec.apply(params, state, jnp.asarray(x), training=True)
        y_keras = _call(layer, x, training=True)
        return {"spec": spec, "y": y, "state": new_state, "y_keras": y_keras, "x": x,
                "keras_state": {"mean": np.asarray(layer.moving_mean.value),
                                "var": np.asarray(layer.moving_variance.value)},
                "beta": np.asarray(layer.beta.value)}

    def check(r):
        assert r["spec"].allow_single_value is True
        dtype = _POLICIES.get(policy, np.float32)
        beta = np.broadcast_to(np.reshape(r["beta"], [-1 if a == axis % len(shape) else 1
                                                       for a in range(len(shape))]), shape)
        assert r["y"].dtype == r["y_keras"].dtype == dtype
        assert_close(np.asarray(r["y"], np.float32), r["y_keras"].astype(np.float32), dtype=dtype)
        assert_close(np.asarray(r["y"], np.float32), beta.astype(dtype).astype(np.float32), dtype=dtype)
        for k in ("mean", "var"):
            assert_close(r["state"][k], r["keras_state"][k])

    return Case(f"interop_single_value_{name}", run=run, check=check, needs=("keras",))


def _single_value_round_trip():
    def run():
        keras = _keras()
        layer = keras.layers.BatchNormalization()
        layer.build((None, 3))
        spec, params, state = interop.from_keras(layer)
        back = interop.from_keras(interop.to_keras(spec, params, state, (None, 3)))[0]
        return spec, back, type(spec).from_config(json.loads(json.dumps(spec.get_config())))

    def check(r):
        spec, back, again = r
        assert spec.allow_single_value and back == spec and again == spec

    return Case("interop_single_value_setting_survives_round_trips", run=run, check=check, needs=("keras",))


def _hand_built_single_value():
    spec = jaxnorm.BatchNorm()
    x = jnp.ones((1, 3))
    params, state = spec.init(None, x)
    return spec.apply(params, state, x, training=True)


CASES += [
    _single_value("2d", (1, 4), -1),
    _single_value("4d_channels_last", (1, 1, 1, 4), -1),
    _single_value("channels_first", (1, 4, 1), 1),
    _single_value("mixed_bfloat16", (1, 4), -1, "mixed_bfloat16"),
    _single_value_round_trip(),
    Case("interop_hand_built_batch_norm_still_refuses_single_value", run=_hand_built_single_value,
         raises=ValueError, match=r"more than one value per feature.*allow_single_value=True"),
]
