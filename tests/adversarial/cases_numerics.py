"""Numerical extremes (issue 12, class 2) and the all-zero example of unit_norm (class 9).

With ``extreme_range=True`` every statistic op and spec must give the float64 answer, to float32 rounding, for
finite float32 input whose normalized result is representable: squares that overflow (|x| >= 2**64) or underflow
(|x - mean| <= 2**-63) in float32 are rescaled by a power of two. By default the same holds inside the documented
range (``DEFAULT_RANGE``: deviations below 2**50, variances above about 2**-100). The references are NumPy
float64.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

import jaxnorm
from jaxnorm import linen as jnn
from tests.adversarial import Case

# (name, magnitude, epsilon): data mag * N(0, 1) (+ an offset of 3 mag for the 'offset' rows)
MAGNITUDES = [
    ("1e20", 1e20, 1e-3),
    ("1e30", 1e30, 1e-3),
    ("1e-20_eps0", 1e-20, 0.0),
    ("1e-30_eps0", 1e-30, 0.0),
    ("1e-30_eps", 1e-30, 1e-3),
]


def _data(shape, mag, seed=0, offset=0.0):
    x = (np.random.default_rng(seed).standard_normal(shape) + offset) * mag
    return x.astype(np.float32)


def _huge(shape, seed=0):
    """Values spread over the whole float32 range, signs mixed: differences overflow float32."""
    x = np.random.default_rng(seed).uniform(-1, 1, shape) * 3.0e38
    x.flat[0], x.flat[1] = 3.0e38, -3.0e38
    return x.astype(np.float32)


def _close_to(want, rtol=2e-5, atol=2e-6):
    def check(got):
        got = np.asarray(got, np.float64)
        assert np.isfinite(got).all(), got
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)

    return check


def _ref_norm(x, axes, eps, center=True, scale=None, bias=None):
    x64 = np.asarray(x, np.float64)
    mean = x64.mean(axes, keepdims=True) if center else 0.0
    var = ((x64 - mean) ** 2).mean(axes, keepdims=True)
    y = (x64 - mean) / np.sqrt(var + eps)
    if scale is not None:
        y = y * scale
    if bias is not None:
        y = y + bias
    return y


def _ref_group(x, groups, eps):
    n, c = x.shape[0], x.shape[-1]
    xg = np.asarray(x, np.float64).reshape(n, -1, groups, c // groups)
    return _ref_norm(xg, (1, 3), eps).reshape(x.shape)


def _ref_unit(x, eps=1e-12):
    x64 = np.asarray(x, np.float64)
    return x64 / np.sqrt(np.maximum((x64**2).sum(-1, keepdims=True), eps**2))


def _cases_for(tag, make, eps, atol=2e-6, extreme=True):
    x, x4 = make((8, 6), 0), make((4, 4, 6), 1)
    _close = functools.partial(_close_to, atol=atol)
    scale = np.linspace(0.5, 2, 6).astype(np.float32)
    bias = np.linspace(-1, 1, 6).astype(np.float32)
    kw = dict(epsilon=eps, extreme_range=extreme)
    tag = tag if extreme else f"default_{tag}"
    rows = [
        Case(f"extreme_{tag}_layer_norm", lambda: jaxnorm.layer_norm(x, scale, bias, **kw),
             check=_close(_ref_norm(x, (-1,), eps, scale=scale, bias=bias))),
        Case(f"extreme_{tag}_layer_norm_jit_axes", lambda: jax.jit(
            functools.partial(jaxnorm.layer_norm, axis=(1, 2), **kw))(x4),
             check=_close(_ref_norm(x4, (1, 2), eps))),
        Case(f"extreme_{tag}_rms_norm", lambda: jaxnorm.rms_norm(x, scale, **kw),
             check=_close(_ref_norm(x, (-1,), eps, center=False, scale=scale))),
        Case(f"extreme_{tag}_group_norm", lambda: jaxnorm.group_norm(x4, num_groups=2, **kw),
             check=_close(_ref_group(x4, 2, eps))),
        Case(f"extreme_{tag}_instance_norm_nchw", lambda: jaxnorm.instance_norm(x4, axis=1, **kw),
             check=_close(_ref_norm(x4, (2,), eps))),
        Case(f"extreme_{tag}_batch_norm_training", lambda: _batch_norm(x, eps, extreme),
             check=_close(_ref_norm(x, (0,), eps))),
        Case(f"extreme_{tag}_batch_norm_channels_first", lambda: jaxnorm.normalize_batch_in_training(
            x4, None, None, (0, 2), **kw)[0], check=_close(_ref_norm(x4, (0, 2), eps))),
        Case(f"extreme_{tag}_masked_layer_norm", lambda: jaxnorm.layer_norm(
            x, where=_MASK, **kw)[_MASK_ROWS], check=_close(_masked_ref(x, eps))),
        Case(f"extreme_{tag}_linen_batch_norm", lambda: _linen_batch_norm(x, eps, extreme),
             check=_close(_ref_norm(x, (0,), eps))),
    ]
    return rows


_MASK = np.ones((8, 6), bool)
_MASK[:, 4:] = False
_MASK_ROWS = np.s_[:, :4]


def _masked_ref(x, eps):
    return _ref_norm(x[:, :4], (-1,), eps)


def _batch_norm(x, eps, extreme=True):
    bn = jaxnorm.BatchNorm(epsilon=eps, momentum=0.9, extreme_range=extreme)
    params, state = bn.init(None, x)
    y, _ = bn.apply(params, state, x, training=True)
    return y


def _linen_batch_norm(x, eps, extreme=True):
    bn = jnn.BatchNorm(use_running_average=False, epsilon=eps, extreme_range=extreme)
    variables = bn.init(jax.random.key(0), x)
    y, _ = bn.apply(variables, x, mutable=["batch_stats"])
    return y


def _moments_huge():
    x = _huge((16, 3))
    mean, var = jaxnorm.moments(x, 0, extreme_range=True)
    return mean, var, x


def _check_moments_huge(out):
    mean, var, x = out
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(np.asarray(mean, np.float64), x64.mean(0), rtol=1e-5)
    assert np.all(np.isinf(np.asarray(var)))  # 1e76: beyond float32, rounds to inf (the float32 rounding)


def _unit_norm_zero_grad():
    x = jnp.zeros((2, 5)).at[1].set(jnp.arange(1.0, 6.0))
    w = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5)), jnp.float32)
    return jax.grad(lambda x: jnp.vdot(jaxnorm.unit_norm(x), w))(x), x, w


def _check_unit_norm_zero_grad(out):
    g, x, w = out
    g = np.asarray(g, np.float64)
    np.testing.assert_array_equal(g[0], 0.0)  # the all-zero example: zero gradient, as documented
    v, w1 = np.asarray(x[1], np.float64), np.asarray(w[1], np.float64)
    r = np.linalg.norm(v)
    np.testing.assert_allclose(g[1], w1 / r - v * (v @ w1) / r**3, rtol=1e-5, atol=1e-7)


def _rms_subnormal():
    """Subnormal float32 inputs are read as zero (XLA's CPU arithmetic flushes them in every op): a row of them
    normalizes exactly as a row of zeros, with any epsilon, and never to inf."""
    x = np.array([[1e-40, 3e-40, -2e-40, 5e-41]], np.float32)
    return [(jaxnorm.rms_norm(x, epsilon=e, extreme_range=r), jaxnorm.rms_norm(np.zeros_like(x), epsilon=e))
            for e in (0.0, 1e-6) for r in (False, True)]


def _check_subnormal(out):
    for got, zero_row in out:
        np.testing.assert_array_equal(np.asarray(got), np.asarray(zero_row))
        assert not np.isinf(np.asarray(got)).any()


_close = _close_to
CASES = []
for _tag, _mag, _eps in MAGNITUDES:
    CASES += _cases_for(_tag, functools.partial(lambda shape, seed, mag: _data(shape, mag, seed), mag=_mag), _eps)
# Offset data: the float32 mean itself rounds by ulp(30 std), so y carries ~2e-6 of that rounding.
CASES += _cases_for("offset_1e30", lambda shape, seed: _data(shape, 1e29, seed, offset=30.0), 1e-3, atol=1e-5)
CASES += _cases_for("huge_3e38", lambda shape, seed: _huge(shape, seed), 1e-3)
# The default range (README, "Stable statistics"): deviations up to 2**50, variances down to about 2**-100.
DEFAULT_RANGE = [("1e15", 1e15, 1e-3), ("1e-12_eps0", 1e-12, 0.0), ("1e-14_eps0", 1e-14, 0.0)]
for _tag, _mag, _eps in DEFAULT_RANGE:
    CASES += _cases_for(_tag, functools.partial(lambda shape, seed, mag: _data(shape, mag, seed), mag=_mag), _eps,
                        extreme=False)
CASES += _cases_for("offset_1e4", lambda shape, seed: _data(shape, 1.0, seed, offset=1e4), 1e-3, atol=2e-3,
                    extreme=False)
CASES += [
    Case("extreme_layer_norm_issue_example", lambda: jaxnorm.layer_norm(
        jnp.array([[1e20, 2e20, 3e20, -1e20]], jnp.float32), extreme_range=True),
         check=_close(np.array([[-0.16903085, 0.50709255, 1.18321596, -1.52127766]]))),
    Case("extreme_unit_norm_1e20", lambda: jaxnorm.unit_norm(_data((4, 6), 1e20), extreme_range=True),
         check=_close(_ref_unit(_data((4, 6), 1e20)))),
    Case("extreme_unit_norm_1e-30", lambda: jaxnorm.unit_norm(_data((4, 6), 1e-30), extreme_range=True),
         check=_close(_ref_unit(_data((4, 6), 1e-30)), atol=1e-24)),
    Case("extreme_unit_norm_huge", lambda: jaxnorm.unit_norm(_huge((4, 6)), extreme_range=True),
         check=_close(_ref_unit(_huge((4, 6))))),
    Case("extreme_moments_huge_mean_exact", _moments_huge, check=_check_moments_huge),
    Case("extreme_moments_1e-30_variance", lambda: jaxnorm.moments(_data((64,), 1e-15), 0, extreme_range=True)[1],
         check=_close(np.var(_data((64,), 1e-15).astype(np.float64)), rtol=1e-5, atol=0)),
    Case("extreme_rms_norm_subnormal_row_is_a_zero_row", _rms_subnormal, check=_check_subnormal),
    Case("unit_norm_all_zero_example_has_zero_gradient", _unit_norm_zero_grad, check=_check_unit_norm_zero_grad),
    Case("unit_norm_all_zero_example_is_zero", lambda: jaxnorm.unit_norm(jnp.zeros((2, 3))),
         check=lambda y: np.testing.assert_array_equal(np.asarray(y), 0.0)),
]
