"""Class 4 of issue 12: hyperparameters that break later.

NumPy/JAX scalars given as hyperparameters become Python numbers at construction (so the spec hashes, works as
a static jit argument and has a JSON config); ``epsilon=inf``/NaN and the BatchNorm settings whose moving
statistics would be NaN after one clean step raise at construction, naming the field and the reason.
Value rows check against NumPy float64 (tests/reference.py) or the spec built from plain Python numbers.
"""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np

import jaxnorm
from tests import reference
from tests.adversarial import Case

SPECS = {
    "BatchNorm": jaxnorm.BatchNorm,
    "LayerNorm": jaxnorm.LayerNorm,
    "RMSNorm": jaxnorm.RMSNorm,
    "GroupNorm": lambda **kw: jaxnorm.GroupNorm(num_groups=2, **kw),
    "InstanceNorm": jaxnorm.InstanceNorm,
    "UnitNormalization": jaxnorm.UnitNormalization,
    "Normalization": jaxnorm.Normalization,
    "SpectralNorm": jaxnorm.SpectralNorm,
    "WeightNorm": jaxnorm.WeightNorm,
}
CLASSES = {
    "BatchNorm": jaxnorm.BatchNorm, "LayerNorm": jaxnorm.LayerNorm, "RMSNorm": jaxnorm.RMSNorm,
    "GroupNorm": jaxnorm.GroupNorm, "InstanceNorm": jaxnorm.InstanceNorm,
    "UnitNormalization": jaxnorm.UnitNormalization, "Normalization": jaxnorm.Normalization,
    "SpectralNorm": jaxnorm.SpectralNorm, "WeightNorm": jaxnorm.WeightNorm,
}


def _fields(name):
    return {f.name for f in dataclasses.fields(CLASSES[name])}


def _round_trips(expected_fields):
    """A check: the spec hashes, equals the spec of plain Python numbers, is a static jit argument, and its
    config goes through JSON and back to an equal spec."""

    def check(pair):
        spec, plain = pair
        for f, want in expected_fields.items():
            got = getattr(spec, f)
            assert type(got) is type(want) and got == want, (f, got, type(got), want)
        assert spec == plain and hash(spec) == hash(plain)
        back = type(spec).from_config(json.loads(json.dumps(spec.get_config())))
        assert back == spec
        f = jax.jit(lambda s, v: v * 2.0, static_argnums=0)
        np.testing.assert_array_equal(f(spec, jnp.ones(2)), 2.0)

    return check


CASES: list[Case] = []

# Every spec with an epsilon: NumPy and JAX scalars become floats; inf and NaN raise naming `epsilon`.
for _name, _make in SPECS.items():
    if "epsilon" not in _fields(_name):
        continue
    for _kind, _value in (("np_float32", np.float32(1e-3)), ("jnp_float32", jnp.float32(1e-3)),
                          ("np_float64", np.float64(1e-3)), ("zero_d_array", np.array(1e-3))):
        CASES.append(Case(
            f"config_epsilon_{_kind}_{_name}",
            lambda make=_make, v=_value: (make(epsilon=v), make(epsilon=1e-3)),
            check=_round_trips({"epsilon": 1e-3}),
        ))
    for _bad in (math.inf, -math.inf, np.float32("inf"), math.nan):
        CASES.append(Case(
            f"config_epsilon_{_bad!r}_{type(_bad).__name__}_{_name}",
            lambda make=_make, v=_bad: make(epsilon=v),
            raises=ValueError, match=r"`epsilon` must be >= 0",
        ))
    CASES.append(Case(
        f"config_epsilon_complex_{_name}",
        lambda make=_make: make(epsilon=np.complex64(1e-3)),
        raises=TypeError, match=r"`epsilon` must be a non-negative float",
    ))

# param_dtype: names the field for an unknown name, None, or a non-float dtype.
for _name, _make in SPECS.items():
    if "param_dtype" not in _fields(_name):
        continue
    CASES.append(Case(
        f"config_param_dtype_junk_{_name}", lambda make=_make: make(param_dtype="junk"),
        raises=TypeError, match=r"`param_dtype` must be a floating-point dtype.*'junk'",
    ))
    CASES.append(Case(
        f"config_param_dtype_None_{_name}", lambda make=_make: make(param_dtype=None),
        raises=TypeError, match=r"`param_dtype` must be a floating-point dtype.*got None",
    ))
    CASES.append(Case(
        f"config_param_dtype_np_type_{_name}", lambda make=_make: (make(param_dtype=np.float32), make()),
        check=_round_trips({"param_dtype": "float32"}),
    ))
CASES.append(Case(
    "config_from_config_param_dtype_junk_LayerNorm",
    lambda: jaxnorm.LayerNorm.from_config({"param_dtype": "junk"}),
    raises=TypeError, match=r"`param_dtype` must be a floating-point dtype.*'junk'",
))
CASES.append(Case(
    "config_param_dtype_int32_BatchNorm", lambda: jaxnorm.BatchNorm(param_dtype="int32"),
    raises=TypeError, match=r"`param_dtype` must have a floating-point dtype, got int32",
))

# Bools given as NumPy bools (np.True_ is not JSON-serializable): stored as Python bools.
for _name, _field in (("BatchNorm", "use_scale"), ("LayerNorm", "use_bias"), ("RMSNorm", "use_scale"),
                      ("GroupNorm", "use_bias"), ("InstanceNorm", "use_scale"), ("WeightNorm", "use_scale"),
                      ("SpectralNorm", "error_on_non_matrix"), ("Normalization", "invert")):
    _plain = _field != "error_on_non_matrix" and _field != "invert"
    CASES.append(Case(
        f"config_np_bool_{_field}_{_name}",
        lambda make=SPECS[_name], f=_field, v=_plain: (make(**{f: np.bool_(v)}), make(**{f: v})),
        check=_round_trips({_field: _plain}),
    ))

# BatchNorm's other numeric fields.
_BN = jaxnorm.BatchNorm
for _label, _kw, _plain in (
    ("momentum_np_float32", {"momentum": np.float32(0.9)}, {"momentum": 0.9}),
    ("momentum_jnp_float32", {"momentum": jnp.float32(0.9)}, {"momentum": 0.9}),
    ("momentum_jnp_bfloat16", {"momentum": jnp.bfloat16(0.5)}, {"momentum": 0.5}),
    ("renorm_momentum_np_float64", {"renorm": True, "renorm_momentum": np.float64(0.8)},
     {"renorm": True, "renorm_momentum": 0.8}),
    ("renorm_clipping_np_values",
     {"renorm": True, "renorm_clipping": {"rmax": np.float32(3.0), "dmax": jnp.float32(5)}},
     {"renorm": True, "renorm_clipping": {"rmax": 3.0, "dmax": 5.0}}),
    ("virtual_batch_size_np_int64", {"virtual_batch_size": np.int64(2)}, {"virtual_batch_size": 2}),
    ("axis_np_int32", {"axis": np.int32(-1)}, {"axis": -1}),
    ("axis_tuple_of_np_ints", {"axis": (np.int64(1), np.int64(2))}, {"axis": (1, 2)}),
):
    CASES.append(Case(
        f"config_BatchNorm_{_label}", lambda kw=_kw, plain=_plain: (_BN(**kw), _BN(**plain)),
        check=_round_trips({k: v for k, v in _plain.items() if k not in ("renorm", "renorm_clipping")}),
    ))
for _label, _make, _plainmake, _fieldvals in (
    ("GroupNorm_num_groups_np_int32", lambda: jaxnorm.GroupNorm(num_groups=np.int32(2)),
     lambda: jaxnorm.GroupNorm(num_groups=2), {"num_groups": 2}),
    ("GroupNorm_group_size_jnp_int32", lambda: jaxnorm.GroupNorm(num_groups=None, group_size=jnp.int32(4)),
     lambda: jaxnorm.GroupNorm(num_groups=None, group_size=4), {"group_size": 4}),
    ("SpectralNorm_n_steps_np_int64", lambda: jaxnorm.SpectralNorm(n_steps=np.int64(3)),
     lambda: jaxnorm.SpectralNorm(n_steps=3), {"n_steps": 3}),
    ("Normalization_mean_variance_np_scalars",
     lambda: jaxnorm.Normalization(axis=None, mean=np.float32(0.5), variance=jnp.float32(2.0)),
     lambda: jaxnorm.Normalization(axis=None, mean=0.5, variance=2.0), {"mean": 0.5, "variance": 2.0}),
):
    CASES.append(
        Case(f"config_{_label}", lambda a=_make, b=_plainmake: (a(), b()), check=_round_trips(_fieldvals))
    )


# BatchNorm settings whose moving statistics are NaN after one clean step: rejected with the reason.
for _label, _kw in (
    ("debiased_keras_momentum_1", {"averaging": "debiased", "momentum": 1.0}),
    ("debiased_keras_momentum_np_1", {"averaging": "debiased", "momentum": np.float32(1.0)}),
    ("debiased_keras_momentum_1_minus_1e-9", {"averaging": "debiased", "momentum": 1 - 1e-9}),
    ("debiased_torch_momentum_0", {"averaging": "debiased", "momentum": 0.0, "momentum_convention": "torch"}),
    ("debiased_torch_momentum_0_unbiased",
     {"averaging": "debiased", "momentum": 0, "momentum_convention": "torch", "moving_var_estimator": "unbiased"}),
):
    CASES.append(Case(
        f"config_BatchNorm_rejects_{_label}", lambda kw=_kw: _BN(**kw),
        raises=ValueError, match=r"averaging='debiased' divides by 1 - d\^t.*momentum=.*NaN",
    ))
for _label, _kw in (("momentum_nan", {"momentum": math.nan}), ("momentum_inf", {"momentum": math.inf}),
                    ("renorm_momentum_nan", {"renorm_momentum": math.nan}),
                    ("momentum_np_1.5", {"momentum": np.float32(1.5)})):
    _field = next(iter(_kw))
    CASES.append(Case(
        f"config_BatchNorm_rejects_{_label}", lambda kw=_kw: _BN(**kw),
        raises=ValueError, match=rf"`{_field}` must be in \[0, 1\]",
    ))
CASES.append(Case(
    "config_BatchNorm_rejects_momentum_str", lambda: _BN(momentum="0.9"),
    raises=TypeError, match=r"`momentum` must be a float in \[0, 1\], got '0.9'",
))
CASES.append(Case(
    "config_BatchNorm_rejects_momentum_bool", lambda: _BN(momentum=True),
    raises=TypeError, match=r"`momentum` must be a float in \[0, 1\], got True",
))


def _steps(spec, xs):
    params, state = spec.init(None, xs[0])
    for x in xs:
        _, state = spec.apply(params, state, x, training=True)
    return state


_XS = [jnp.asarray(np.random.default_rng(i).normal(i, 1 + i, size=(8, 3)), jnp.float32) for i in range(3)]


def _batch_stats(x):
    m, v = reference.moments(x, (0,))
    return m[0], v[0]


def _check_state(expected_mean, expected_var):
    def check(state):
        for k in ("mean", "var"):
            assert np.all(np.isfinite(np.asarray(state[k]))), state
        np.testing.assert_allclose(state["mean"], expected_mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(state["var"], expected_var, rtol=1e-5, atol=1e-5)
    return check


# The edge settings that stay well defined: finite and equal to the float64 formula after three steps.
_last = _batch_stats(_XS[-1])
_all = [_batch_stats(x) for x in _XS]
CASES += [
    Case("config_BatchNorm_debiased_keras_momentum_0_is_last_batch",
         lambda: _steps(_BN(averaging="debiased", momentum=0.0), _XS), check=_check_state(*_last)),
    Case("config_BatchNorm_debiased_torch_momentum_1_is_last_batch",
         lambda: _steps(_BN(averaging="debiased", momentum=1.0, momentum_convention="torch"), _XS),
         check=_check_state(*_last)),
    Case("config_BatchNorm_exponential_torch_momentum_0_is_frozen",
         lambda: _steps(_BN(momentum=0.0, momentum_convention="torch"), _XS),
         check=_check_state(np.zeros(3), np.ones(3))),
    Case("config_BatchNorm_exponential_keras_momentum_1_is_frozen",
         lambda: _steps(_BN(momentum=1.0), _XS), check=_check_state(np.zeros(3), np.ones(3))),
    Case("config_BatchNorm_cumulative_momentum_1_is_mean_of_batches",
         lambda: _steps(_BN(averaging="cumulative", momentum=1.0), _XS),
         check=_check_state(np.mean([m for m, _ in _all], 0), np.mean([v for _, v in _all], 0))),
    Case("config_BatchNorm_debiased_np_momentum_matches_formula",
         lambda: _steps(_BN(averaging="debiased", momentum=np.float32(0.5)), _XS),
         check=_check_state(
             *(sum(0.5 ** (2 - i) * 0.5 * s[j] for i, s in enumerate(_all)) / (1 - 0.5**3) for j in (0, 1))
         )),
    Case("config_BatchNorm_renorm_momentum_0_finite",
         lambda: _steps(_BN(renorm=True, renorm_momentum=0.0, momentum=0.0), _XS),
         check=_check_state(*_last)),
]
