"""Class 6 of issue 12: Keras's mask rules, for every layer and op that takes a mask.

Values: a boolean mask, or integers/floats read as ``mask != 0`` (nonzero keeps a position; NaN is nonzero, as
in Keras, which casts the mask to bool). Shapes: a mask of rank ``x.ndim - 1`` is expanded on the last axis
first when that broadcasts (Keras: ``(1, 2, 1)`` for x ``(1, 2, 3, 4)``), otherwise NumPy broadcasting; so a
1-D mask of an ``(N, C)`` input with ``N == C`` is per example, and a per-feature mask is given as ``(1, C)``.
Complex and string masks raise ``TypeError`` naming the argument. BatchNorm rows compare with Keras's own
``BatchNormalization`` on the same mask; the others with NumPy float64 (tests/reference.py) or with the same
call given the equivalent boolean mask of x's shape. The Flax drop-ins keep Flax's NumPy broadcasting.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jaxnorm
from tests import reference
from tests.adversarial import Case
from tests.registry import REGISTRY


def _x(shape, seed=0):
    return jnp.asarray((np.random.default_rng(seed).standard_normal(shape) * 2 + 1).astype(np.float32))


def _close(a, b, tol=1e-5):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=tol, atol=tol)


def _trees_close(tol=1e-5):
    def check(pair):
        got, want = pair
        jax.tree.map(lambda a, b: _close(a, b, tol), got, want)
    return check


# ---- BatchNorm against Keras's BatchNormalization (training step: output and moving statistics) ----

def _keras_bn(x, mask):
    import keras

    layer = keras.layers.BatchNormalization()  # momentum 0.99, epsilon 1e-3: jaxnorm.BatchNorm's defaults
    layer.build(x.shape)
    y = layer(np.asarray(x), training=True, mask=np.asarray(mask))
    return np.asarray(y), {"mean": np.asarray(layer.moving_mean), "var": np.asarray(layer.moving_variance)}


def _jaxnorm_bn(x, mask):
    bn = jaxnorm.BatchNorm()
    params, state = bn.init(None, x)
    return bn.apply(params, state, x, training=True, mask=mask)


def _vs_keras(x, mask):
    return lambda: (_jaxnorm_bn(x, mask), _keras_bn(x, mask))


_X63 = _x((6, 3))
_X243 = _x((2, 4, 3), 1)
_X1234 = _x((1, 2, 3, 4), 2)
_X453 = _x((4, 5, 3), 3)
_X33 = _x((3, 3), 4)
CASES: list[Case] = [
    Case("keras_mask_bn_float01_rank1", _vs_keras(_X63, np.array([1, 1, 1, 1, 0, 0], np.float32)),
         check=_trees_close(), needs=("keras",)),
    Case("keras_mask_bn_int32_rank1", _vs_keras(_X63, np.array([1, 0, 1, 1, 0, 1], np.int32)),
         check=_trees_close(), needs=("keras",)),
    Case("keras_mask_bn_float_rank2_of_3d", _vs_keras(_X243, np.array([[1, 1, 0, 1], [0, 1, 1, 1]], np.float32)),
         check=_trees_close(), needs=("keras",)),
    Case("keras_mask_bn_issue_example_1x2x1_for_1x2x3x4",
         _vs_keras(_X1234, np.array([[[1.0], [0.0]]], np.float32)),
         check=_trees_close(), needs=("keras",)),
    Case("keras_mask_bn_rank_minus_one_broadcast_4x1_for_4x5x3",
         _vs_keras(_X453, np.array([[1], [0], [1], [1]], np.float32)), check=_trees_close(), needs=("keras",)),
    Case("keras_mask_bn_nan_in_float_mask_keeps",
         _vs_keras(_X63, np.array([1, np.nan, 1, 0, 1, 0], np.float32)), check=_trees_close(), needs=("keras",)),
    Case("keras_mask_bn_non_binary_float_is_nonzero",
         _vs_keras(_X63, np.array([0.5, -2.0, 1, 0, 3, 0], np.float32)), check=_trees_close(), needs=("keras",)),
    Case("keras_mask_bn_bool_rank1", _vs_keras(_X63, np.array([True, True, False, True, True, False])),
         check=_trees_close(), needs=("keras",)),
    # N == C: a 1-D mask is per example (Keras's rule), here compared with Keras itself.
    Case("keras_mask_bn_ambiguous_square_1d_is_per_example", _vs_keras(_X33, np.array([1, 1, 0], np.float32)),
         check=_trees_close(), needs=("keras",)),
]


def _moments_pair(x, axes, where, ref_mask):
    def run():
        m, v = jaxnorm.moments(x, axes, where=where, keepdims=True)
        rm, rv = reference.moments(x, axes if isinstance(axes, tuple) else (axes,), ref_mask)
        return (m, v), (rm, rv)
    return run


_PER_EXAMPLE = np.array([True, True, False])
CASES += [
    # The two readings of a 1-D mask on a square input, each against NumPy.
    Case("keras_mask_square_1d_is_per_example_moments",
         _moments_pair(_X33, 0, jnp.array([1.0, 1.0, 0.0]), _PER_EXAMPLE[:, None]), check=_trees_close()),
    Case("keras_mask_square_1x3_is_per_feature_moments",
         _moments_pair(_X33, 1, jnp.array([[1.0, 0.0, 1.0]]), np.array([[True, False, True]])),
         check=_trees_close()),
    Case("keras_mask_square_readings_differ",
         lambda: (jaxnorm.moments(_X33, 1, where=jnp.array([1.0, 0.0, 1.0]))[0],
                  jaxnorm.moments(_X33, 1, where=jnp.array([[1.0, 0.0, 1.0]]))[0]),
         check=lambda p: np.testing.assert_array_less(1e-3, np.max(np.abs(np.asarray(p[0]) - np.asarray(p[1]))))),
    # Rank ndim - 1 that only NumPy broadcasting fits: (5, 3) for x (4, 5, 3) is per (position, channel).
    Case("keras_mask_rank_minus_one_numpy_fallback_moments",
         _moments_pair(_X453, (0, 1), jnp.asarray(np.random.default_rng(5).random((5, 3)) < 0.6),
                       (np.random.default_rng(5).random((5, 3)) < 0.6)[None]),
         check=_trees_close()),
]


# ---- every registry layer that takes a mask: the mask forms Keras accepts give the bool mask's result ----

def _setup(entry):
    spec = entry.make()
    x = _x(entry.shape)
    params, state = spec.init(jax.random.key(0), x)
    if entry.prepare is not None:
        state = entry.prepare(spec, x, params, state)
    return spec, params, state, x


def _apply_pair(entry, make_masks):
    def run():
        spec, params, state, x = _setup(entry)
        given, equivalent = make_masks(x.shape)
        got = entry.apply(spec, params, state, x, mask=given)
        want = entry.apply(spec, params, state, x, mask=jnp.asarray(equivalent))
        return got, want
    return run


def _bool_mask(shape, seed=7):
    m = np.random.default_rng(seed).random(shape) < 0.7
    m[(0,) * len(shape)] = True
    return m


def _float_mask(shape):
    m = _bool_mask(shape)
    return jnp.asarray(m.astype(np.float32)), m


def _int_mask(shape):
    m = _bool_mask(shape)
    return jnp.asarray(m.astype(np.int8)), m


def _odd_float_mask(shape):
    m = _bool_mask(shape)
    f = np.where(m, np.random.default_rng(8).choice([np.nan, 2.5, -1.0, 1.0], shape), 0.0).astype(np.float32)
    return jnp.asarray(f), m


def _keras_rank_mask(shape):
    m = _bool_mask(shape[:-1], seed=9)
    return jnp.asarray(m.astype(np.float32)), np.broadcast_to(m[..., None], shape)


def _keras_broadcast_rank_mask(shape):
    m = _bool_mask((1,) + tuple(shape[1:-1]), seed=10)  # (1, H): one flag per position, shared by the batch
    return jnp.asarray(m), np.broadcast_to(m[..., None], shape)


for _entry in REGISTRY:
    if not _entry.mask:
        continue
    for _label, _masks in (("float01", _float_mask), ("int8", _int_mask), ("nan_and_nonbinary", _odd_float_mask),
                           ("keras_rank_float", _keras_rank_mask),
                           ("keras_rank_broadcast", _keras_broadcast_rank_mask)):
        CASES.append(Case(f"keras_mask_{_label}_{_entry.name}", _apply_pair(_entry, _masks), check=_trees_close()))


# ---- the ops' `where`: same rules, checked against NumPy float64 ----

def _op_vs_reference(op, ref, shape, where_of, ref_mask_of):
    def run():
        x = _x(shape, 11)
        return op(x, where_of(shape)), ref(x, ref_mask_of(shape))
    return run


def _ref_layer_norm(x, m):
    return reference.layer_norm(x, (x.ndim - 1,), epsilon=1e-3, mask=m)


def _ref_rms(x, m):
    x = np.asarray(x, np.float64)
    m = np.broadcast_to(m, x.shape)
    ms = np.where(m, x * x, 0).sum(-1, keepdims=True) / np.maximum(m.sum(-1, keepdims=True), 1)
    return x / np.sqrt(ms + 1e-6)


def _ref_unit(x, m):
    x = np.asarray(x, np.float64)
    m = np.broadcast_to(m, x.shape)
    return x / np.maximum(np.sqrt(np.where(m, x * x, 0).sum(-1, keepdims=True)), 1e-12)


def _ref_instance(x, m):
    mean, var = reference.moments(x, (1,), m)
    return reference.normalize(x, mean, var, epsilon=1e-3)


def _ref_group1(x, m):
    mean, var = reference.moments(x, (1, 2), m)
    return reference.normalize(x, mean, var, epsilon=1e-3)


_OPS = {
    "layer_norm": (lambda x, w: jaxnorm.layer_norm(x, where=w), _ref_layer_norm, (4, 3, 5)),
    "rms_norm": (lambda x, w: jaxnorm.rms_norm(x, where=w), _ref_rms, (4, 3, 5)),
    "unit_norm": (lambda x, w: jaxnorm.unit_norm(x, where=w), _ref_unit, (4, 3, 5)),
    "instance_norm": (lambda x, w: jaxnorm.instance_norm(x, where=w), _ref_instance, (4, 5, 3)),
    "group_norm": (lambda x, w: jaxnorm.group_norm(x, num_groups=1, where=w), _ref_group1, (4, 5, 6)),
    "moments": (lambda x, w: jaxnorm.moments(x, (0, 1), where=w),
                lambda x, m: tuple(a[0, 0] for a in reference.moments(x, (0, 1), m)), (4, 3, 5)),
}
for _op, (_f, _ref, _shape) in _OPS.items():
    CASES.append(Case(
        f"keras_mask_where_float01_{_op}",
        _op_vs_reference(_f, _ref, _shape, lambda s: jnp.asarray(_bool_mask(s).astype(np.float32)), _bool_mask),
        check=_trees_close(),
    ))
    CASES.append(Case(
        f"keras_mask_where_keras_rank_{_op}",
        _op_vs_reference(_f, _ref, _shape, lambda s: jnp.asarray(_bool_mask(s[:-1], 12).astype(np.int32)),
                         lambda s: _bool_mask(s[:-1], 12)[..., None]),
        check=_trees_close(),
    ))
    CASES.append(Case(
        f"keras_mask_where_complex_{_op}",
        lambda f=_f, s=_shape: f(_x(s), jnp.ones(s, jnp.complex64)),
        raises=TypeError,
        match=r"`where` must be a boolean \(or 0/1 integer or float\) array, got dtype complex64",
    ))
    CASES.append(Case(
        f"keras_mask_where_strings_{_op}",
        lambda f=_f, s=_shape: f(_x(s), np.full(s, "yes")),
        raises=TypeError, match=r"`where` must be an array of booleans or of 0/1 numbers",
    ))


# ---- the Flax drop-ins keep Flax's NumPy broadcasting (a 1-D mask is per feature), and accept float masks ----

def _linen_ln(x, mask):
    from jaxnorm import linen as jnn

    ln = jnn.LayerNorm(epsilon=1e-3)
    variables = ln.init(jax.random.key(0), x)
    return ln.apply(variables, x, mask=mask)


def _nnx_ln(x, mask):
    from flax import nnx

    from jaxnorm import nnx as jnnx

    return jnnx.LayerNorm(x.shape[-1], epsilon=1e-3, rngs=nnx.Rngs(0))(x, mask=mask)


for _label, _run in (("linen", _linen_ln), ("nnx", _nnx_ln)):
    CASES.append(Case(
        f"keras_mask_flax_{_label}_square_1d_is_per_feature",
        lambda run=_run: (run(_X33, jnp.array([1.0, 0.0, 1.0])),
                          reference.layer_norm(_X33, (1,), epsilon=1e-3, mask=np.array([[True, False, True]]))),
        check=_trees_close(),
    ))
