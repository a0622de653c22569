"""Class 7 of issue 12: errors that name the wrong thing or the wrong type.

Every row asserts the exact error type (Keras's where Keras has one, Flax's where a Flax drop-in mirrors a
Flax error) and a message naming the argument or variable path as the user wrote it (``mask``, not the
``where`` of the op a spec calls; ``batch_stats['mean']``; ``BatchNorm.mean``), what was received and the fix.
"""

from __future__ import annotations

import math

import flax.errors
import jax
import jax.numpy as jnp
import numpy as np

import jaxnorm
from tests.adversarial import Case
from tests.registry import REGISTRY


def _x(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


def _apply_with(entry, **overrides):
    """Runs ``entry``'s spec with apply's arguments overridden (``x``, ``mask``, ``training``)."""

    def run():
        spec = entry.make()
        x = _x(entry.shape)
        params, state = spec.init(jax.random.key(0), x)
        if entry.prepare is not None:
            state = entry.prepare(spec, x, params, state)
        kwargs = {"training": entry.training, **({} if entry.inputs is None else entry.inputs(x))}
        kwargs.update(overrides)
        x_in = kwargs.pop("x", x)
        return spec.apply(params, state, x_in, **kwargs)

    return run


CASES: list[Case] = []

# ---- a spec's mask is called `mask` (not the `where` of the op it calls), for every layer that takes one ----
for _e in REGISTRY:
    if _e.mask:
        CASES += [
            Case(f"errors_mask_bad_shape_{_e.name}", _apply_with(_e, mask=jnp.ones((7,), bool)),
                 raises=ValueError, match=r"^`mask` has shape \(7,\), which does not broadcast to x's shape"),
            Case(f"errors_mask_complex_{_e.name}", _apply_with(_e, mask=jnp.ones(_e.shape, jnp.complex64)),
                 raises=TypeError, match=r"^`mask` must be a boolean \(or 0/1 integer or float\) array"),
            Case(f"errors_mask_string_{_e.name}", _apply_with(_e, mask="all"),
                 raises=TypeError, match=r"^`mask` must be an array of booleans or of 0/1 numbers, got str"),
        ]
    CASES += [
        Case(f"errors_x_None_{_e.name}", _apply_with(_e, x=None),
             raises=TypeError, match=rf"^`{_e.input_name}` must be an array, got None"),
        Case(f"errors_x_string_{_e.name}", _apply_with(_e, x="abc"),
             raises=TypeError, match=rf"^`{_e.input_name}` must be an array, got str"),
        Case(f"errors_x_ragged_list_{_e.name}", _apply_with(_e, x=[[1.0, 2.0], [3.0]]),
             raises=TypeError, match=rf"^`{_e.input_name}` must be an array, got list"),
    ]

# ---- the ops: x=None names `x` (not JAX's "None is not a valid value for jnp.array") ----
_OPS = {
    "layer_norm": lambda x: jaxnorm.layer_norm(x),
    "rms_norm": lambda x: jaxnorm.rms_norm(x),
    "unit_norm": lambda x: jaxnorm.unit_norm(x),
    "group_norm": lambda x: jaxnorm.group_norm(x, num_groups=1),
    "instance_norm": lambda x: jaxnorm.instance_norm(x),
    "moments": lambda x: jaxnorm.moments(x, 0),
    "batch_normalization": lambda x: jaxnorm.batch_normalization(x, 0.0, 1.0),
    "normalize_batch_in_training": lambda x: jaxnorm.normalize_batch_in_training(x, None, None, 0),
    "weight_normalize": lambda x: jaxnorm.weight_normalize(x),
}
for _name, _op in _OPS.items():
    _arg = "w" if _name == "weight_normalize" else "x"
    CASES.append(Case(f"errors_op_None_{_name}", lambda op=_op: op(None),
                      raises=TypeError, match=rf"^`{_arg}` must be an array, got None"))
    CASES.append(Case(f"errors_op_ints_{_name}", lambda op=_op: op(jnp.ones((2, 3, 4), jnp.int32)),
                      raises=TypeError, match=rf"^`{_arg}` must have a floating-point dtype, got int32"))
for _name, _call in (
    ("layer_norm", lambda e: jaxnorm.layer_norm(_x((2, 3)), epsilon=e)),
    ("rms_norm", lambda e: jaxnorm.rms_norm(_x((2, 3)), epsilon=e)),
    ("batch_normalization", lambda e: jaxnorm.batch_normalization(_x((2, 3)), 0.0, 1.0, epsilon=e)),
):
    CASES.append(Case(f"errors_op_epsilon_inf_{_name}", lambda c=_call: c(math.inf),
                      raises=ValueError, match=r"^`epsilon` must be >= 0 and finite, got inf"))
    CASES.append(Case(f"errors_op_epsilon_None_{_name}", lambda c=_call: c(None),
                      raises=TypeError, match=r"^`epsilon` must be a non-negative float, got None"))
    CASES.append(Case(f"errors_op_epsilon_bool_{_name}", lambda c=_call: c(True),
                      raises=TypeError, match=r"^`epsilon` must be a non-negative float, got True"))

# ---- GroupNorm's groups: ValueError for a bad type too, as keras.layers.GroupNormalization raises ----
for _label, _kw in (("num_groups_1.5", {"num_groups": 1.5}), ("num_groups_str", {"num_groups": "32"}),
                    ("num_groups_bool", {"num_groups": True}), ("num_groups_0", {"num_groups": 0}),
                    ("num_groups_-2", {"num_groups": -2}), ("num_groups_2.0", {"num_groups": 2.0}),
                    ("group_size_2.5", {"num_groups": None, "group_size": 2.5})):
    _field = "group_size" if "group_size" in _kw else "num_groups"
    CASES.append(Case(f"errors_GroupNorm_{_label}", lambda kw=_kw: jaxnorm.GroupNorm(**kw),
                      raises=ValueError, match=rf"^`{_field}` must be a positive int"))
CASES.append(Case("errors_group_norm_op_num_groups_str", lambda: jaxnorm.group_norm(_x((2, 4)), num_groups="2"),
                  raises=ValueError, match=r"^`num_groups` must be a positive int"))


def _keras_groups_error():
    import keras

    layer = keras.layers.GroupNormalization(groups=1.5)
    layer.build((2, 4))


CASES.append(Case("errors_keras_GroupNormalization_groups_float_is_ValueError_too", _keras_groups_error,
                  raises=ValueError, match=r"`groups`", needs=("keras",)))

# ---- from_config / constructor: the field is named ----
for _cls in (jaxnorm.BatchNorm, jaxnorm.RMSNorm, jaxnorm.GroupNorm, jaxnorm.InstanceNorm, jaxnorm.WeightNorm,
             jaxnorm.SpectralNorm):
    CASES.append(Case(f"errors_from_config_param_dtype_junk_{_cls.__name__}",
                      lambda c=_cls: c.from_config({"param_dtype": "junk"}),
                      raises=TypeError, match=r"^`param_dtype` must be a floating-point dtype.*'junk'"))
CASES += [
    Case("errors_LayerNorm_axis_str", lambda: jaxnorm.LayerNorm(axis="1"),
         raises=TypeError, match=r"^`axis` must be an int or a sequence of ints, got '1'"),
    Case("errors_LayerNorm_axis_float", lambda: jaxnorm.LayerNorm(axis=1.0),
         raises=TypeError, match=r"^`axis` must be an int or a sequence of ints, got 1.0"),
    Case("errors_LayerNorm_axis_None", lambda: jaxnorm.LayerNorm(axis=None),
         raises=TypeError, match=r"^`axis` must be an int or a sequence of ints, got None"),
    Case("errors_BatchNorm_axis_bool_in_tuple", lambda: jaxnorm.BatchNorm(axis=(1, True)),
         raises=TypeError, match=r"^`axis` must contain only ints, got True"),
    Case("errors_BatchNorm_axis_empty", lambda: jaxnorm.BatchNorm(axis=[]),
         raises=ValueError, match=r"^`axis` must name at least one axis"),
    Case("errors_LayerNorm_negative_axis_out_of_range",
         lambda: jaxnorm.LayerNorm(axis=-4).init(None, _x((2, 3, 4))),
         raises=ValueError, match=r"^`axis`=-4 is out of range for an input of rank 3"),
    Case("errors_BatchNorm_momentum_tuple", lambda: jaxnorm.BatchNorm(momentum=(0.9,)),
         raises=TypeError, match=r"^`momentum` must be a float in \[0, 1\], got \(0.9,\)"),
    Case("errors_LayerNorm_epsilon_list", lambda: jaxnorm.LayerNorm(epsilon=[1e-3]),
         raises=TypeError, match=r"^`epsilon` must be a non-negative float, got \[0.001\]"),
    Case("errors_LayerNorm_use_bias_int", lambda: jaxnorm.LayerNorm(use_bias=1),
         raises=TypeError, match=r"^`use_bias` must be a Python bool"),
    Case("errors_BatchNorm_training_str", _apply_with(REGISTRY[0], training="yes"),
         raises=TypeError, match=r"^`training` must be a Python bool \(True or False\), got 'yes'"),
]

# ---- the Flax drop-ins: wrong-shaped variables name their path; Flax's own errors keep Flax's wording ----


def _linen_bn_wrong_stats(train, which="mean"):
    def run():
        from jaxnorm import linen as jnn

        x = _x((4, 3))
        bn = jnn.BatchNorm(use_running_average=not train)
        variables = bn.init(jax.random.key(0), x)
        stats = dict(variables["batch_stats"])
        stats[which] = jnp.zeros((5,))
        out = bn.apply({"params": variables["params"], "batch_stats": stats}, x, mutable=["batch_stats"])
        return out

    return run


CASES += [
    Case("errors_linen_BatchNorm_batch_stats_mean_wrong_shape_eval", _linen_bn_wrong_stats(False),
         raises=ValueError, match=r"^`batch_stats\['mean'\]` has shape \(5,\) but this call needs \(3,\)"),
    Case("errors_linen_BatchNorm_batch_stats_var_wrong_shape_train", _linen_bn_wrong_stats(True, "var"),
         raises=ValueError, match=r"^`batch_stats\['var'\]` has shape \(5,\) but this call needs \(3,\).*init"),
]


def _linen_param_wrong(cls_name, **kw):
    def run():
        from jaxnorm import linen as jnn

        x = _x((4, 2, 6))
        mdl = getattr(jnn, cls_name)(**kw)
        variables = mdl.init(jax.random.key(0), x)
        params = dict(variables["params"])
        params["scale"] = jnp.ones((5,))
        return mdl.apply({**variables, "params": params}, x)

    return run


for _cls, _kw in (("BatchNorm", {"use_running_average": True}), ("LayerNorm", {}), ("RMSNorm", {}),
                  ("GroupNorm", {"num_groups": 2}), ("InstanceNorm", {})):
    # Flax raises its own ScopeParamShapeError (naming the parameter) before jaxnorm sees the value: kept, so
    # that code catching Flax's error keeps working.
    CASES.append(Case(f"errors_linen_{_cls}_params_scale_wrong_shape_is_flax_error",
                      _linen_param_wrong(_cls, **_kw),
                      raises=flax.errors.ScopeParamShapeError, match=r'parameter "scale".*\(6,\).*\(5,\)'))


def _nnx_merge_wrong(cls_name, **kw):
    def run():
        from flax import nnx

        from jaxnorm import nnx as jnnx

        cls = getattr(jnnx, cls_name)
        graphdef, _ = nnx.split(cls(3, rngs=nnx.Rngs(0), **kw))
        _, wrong = nnx.split(cls(5, rngs=nnx.Rngs(0), **kw))
        return nnx.merge(graphdef, wrong)(_x((4, 2, 3)))

    return run


for _cls, _kw, _var in (("BatchNorm", {"use_running_average": True}, "mean"),
                        ("BatchNorm", {"use_running_average": False}, "mean"), ("LayerNorm", {}, "scale"),
                        ("RMSNorm", {}, "scale"), ("GroupNorm", {"num_groups": 1}, "scale"),
                        ("InstanceNorm", {}, "scale")):
    _label = f"{_cls}_{'eval' if _kw.get('use_running_average') else 'call'}"
    CASES.append(Case(f"errors_nnx_merge_wrong_state_{_label}", _nnx_merge_wrong(_cls, **_kw),
                      raises=ValueError,
                      match=rf"^`{_cls}.{_var}` has shape \(5,\) but this call needs \(3,\).*num_features=3"))


def _nnx_bn_wrong_features():
    from flax import nnx

    from jaxnorm import nnx as jnnx

    return jnnx.BatchNorm(5, rngs=nnx.Rngs(0))(_x((4, 3)))


CASES.append(Case("errors_nnx_BatchNorm_num_features_vs_x", _nnx_bn_wrong_features,
                  raises=ValueError, match=r"^`BatchNorm.mean` has shape \(5,\) but this call needs \(3,\)"))


def _linen_sn_non_matrix():
    from flax import linen as nn

    from jaxnorm import linen as jnn

    sn = jnn.SpectralNorm(nn.Conv(3, (2, 2)), error_on_non_matrix=True)
    return sn.init(jax.random.key(0), jnp.ones((1, 4, 4, 2)), update_stats=True)


def _nnx_sn_non_matrix():
    from flax import nnx

    from jaxnorm import nnx as jnnx

    return jnnx.SpectralNorm(nnx.Conv(2, 3, (2, 2), rngs=nnx.Rngs(0)), error_on_non_matrix=True, rngs=nnx.Rngs(0))


def _flax_sn_non_matrix():
    from flax import linen as nn

    sn = nn.SpectralNorm(nn.Conv(3, (2, 2)), error_on_non_matrix=True)
    return sn.init(jax.random.key(0), jnp.ones((1, 4, 4, 2)), update_stats=True)


def _linen_sn_wrong_u():
    from flax import linen as nn

    from jaxnorm import linen as jnn

    sn = jnn.SpectralNorm(nn.Dense(3))
    variables = sn.init(jax.random.key(0), jnp.ones((2, 4)), update_stats=False)
    stats = {k: (jnp.ones((1, 5)) if k.endswith("/u") else v) for k, v in variables["batch_stats"].items()}
    return sn.apply({**variables, "batch_stats": stats}, jnp.ones((2, 4)), update_stats=False)


def _nnx_sn_wrong_u():
    from flax import nnx

    from jaxnorm import nnx as jnnx

    sn = jnnx.SpectralNorm(nnx.Linear(4, 3, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(sn)
    flat = dict(nnx.to_flat_state(state))
    flat[("batch_stats", ("kernel", "u"))].set_value(jnp.ones((1, 5)))  # a state saved for another layer
    return nnx.merge(graphdef, nnx.from_flat_state(flat))(jnp.ones((2, 4)))


def _nnx_wn_wrong_scale():
    from flax import nnx

    from jaxnorm import nnx as jnnx

    wn = jnnx.WeightNorm(nnx.Linear(4, 3, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(0))
    wn.scales[("kernel",)] = jnp.ones((5,))
    return wn(jnp.ones((2, 4)))


CASES += [
    Case("errors_flax_linen_SpectralNorm_wording_reference", _flax_sn_non_matrix,
         raises=ValueError, match=r"^Input is 4D but error_on_non_matrix is True"),
    Case("errors_linen_SpectralNorm_non_matrix_keeps_flax_wording", _linen_sn_non_matrix,
         raises=ValueError, match=r"^Input is 4D but error_on_non_matrix is True.*error_on_non_matrix=False"),
    Case("errors_nnx_SpectralNorm_non_matrix_keeps_flax_wording", _nnx_sn_non_matrix,
         raises=ValueError,
         match=r"^Layer instance parameter is 4D but error_on_non_matrix is True.*error_on_non_matrix=False"),
    Case("errors_linen_SpectralNorm_u_wrong_shape", _linen_sn_wrong_u,
         raises=ValueError, match=r"^`batch_stats\['layer_instance/kernel/u'\]` has shape \(1, 5\).*\(1, 3\)"),
    Case("errors_nnx_SpectralNorm_u_wrong_shape", _nnx_sn_wrong_u,
         raises=ValueError, match=r"^`SpectralNorm.batch_stats\[\('kernel', 'u'\)\]` has shape \(1, 5\)"),
    Case("errors_nnx_WeightNorm_scale_wrong_shape", _nnx_wn_wrong_scale,
         raises=ValueError, match=r"^`WeightNorm.scales\[\('kernel',\)\]` has shape \(5,\) but this call needs"),
]
