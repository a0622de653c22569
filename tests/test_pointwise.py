"""DyT and Derf (op, spec, linen, nnx, equinox) against NumPy float64: outputs, closed-form gradients, the drop-ins
against the spec, variable trees, half precision, masks and errors."""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxnorm
from jaxnorm import linen as jnn
from jaxnorm import nnx as jnnx
from tests import reference
from tests.tolerances import assert_close

KINDS = {"dyt": (jaxnorm.DyT, False), "derf": (jaxnorm.Derf, True)}
HAS_EQUINOX = importlib.util.find_spec("equinox") is not None


def _data(shape, seed=0, loc=0.5, scale=2.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale + loc).astype(np.float32)


def _op(kind, x, alpha, shift, scale, bias, **kw):
    if kind == "dyt":
        return jaxnorm.dyt(x, alpha, scale, bias, **kw)
    return jaxnorm.derf(x, alpha, shift, scale, bias, **kw)


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("affine", [True, False])
def test_ops_match_float64_reference(kind, affine):
    x = _data((4, 3, 6))
    scale, bias = (_data((6,), 1), _data((6,), 2)) if affine else (None, None)
    alpha, shift = 0.7, 0.3
    want, _, _ = reference.pointwise(x, alpha, shift if kind == "derf" else 0.0, scale, bias, erf=KINDS[kind][1])
    y = _op(kind, jnp.asarray(x), alpha, shift, scale, bias)
    assert y.dtype == jnp.float32 and y.shape == x.shape
    assert_close(y, want)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_gradients_match_the_closed_form_in_float64(kind):
    """d/dx = scale f'(z) alpha; d/dalpha = sum g scale f'(z) x; d/dshift = sum g scale f'(z); d/dscale = sum g f(z);
    d/dbias = sum g, with z = alpha x + shift (sums over the non-feature axes for scale and bias)."""
    erf = KINDS[kind][1]
    x, g = _data((5, 2, 4)), _data((5, 2, 4), 3, loc=0.0, scale=1.0)
    p = {"alpha": np.float32(0.8), "shift": np.float32(-0.2), "scale": _data((4,), 1), "bias": _data((4,), 2)}

    def loss(p, x):
        return jnp.vdot(_op(kind, x, p["alpha"], p["shift"], p["scale"], p["bias"]), g)

    grads, dx = jax.grad(loss, (0, 1))({k: jnp.asarray(v) for k, v in p.items()}, jnp.asarray(x))
    _, t, dt = reference.pointwise(x, p["alpha"], p["shift"] if erf else 0.0, p["scale"], p["bias"], erf=erf)
    g64, s64 = g.astype(np.float64), p["scale"].astype(np.float64)
    assert_close(dx, g64 * s64 * dt * float(p["alpha"]), scale=4)
    assert_close(grads["alpha"], np.sum(g64 * s64 * dt * x), scale=16)
    assert_close(grads["shift"], np.sum(g64 * s64 * dt) if erf else 0.0, scale=16)
    assert_close(grads["scale"], np.sum(g64 * t, (0, 1)), scale=8)
    assert_close(grads["bias"], np.sum(g64, (0, 1)), scale=8)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_spec_init_and_apply_follow_the_formula(kind):
    cls, erf = KINDS[kind]
    kw = {"shift_init_value": 0.25} if erf else {}
    spec = cls(axis=(1, 2), alpha_init_value=1.5, **kw)
    x = jnp.asarray(_data((3, 2, 5)))
    params, state = spec.init(jax.random.key(0), x)
    assert state == {}
    assert {k: v.shape for k, v in params.items()} == {
        "alpha": (), **({"shift": ()} if erf else {}), "scale": (2, 5), "bias": (2, 5)}
    assert float(params["alpha"]) == 1.5 and (not erf or float(params["shift"]) == 0.25)
    params = {**params, "scale": jnp.asarray(_data((2, 5), 1)), "bias": jnp.asarray(_data((2, 5), 2))}
    want, _, _ = reference.pointwise(x, 1.5, 0.25 if erf else 0.0, params["scale"], params["bias"], erf=erf)
    y, new_state = spec.apply(params, state, x, training=True)
    assert new_state == {}
    assert_close(y, want)
    assert type(spec).from_config(spec.get_config()) == spec
    with pytest.raises(ValueError, match="no Keras layer"):
        spec.to_keras_config()


def _families(kind, shape, params):
    """The same layer in every family, holding ``params`` (scale/bias over the last axis): ``{family: f(x)}``."""
    cls, erf = KINDS[kind]
    name = cls.__name__
    spec = cls()
    out = {"spec": lambda x: spec.apply(params, {}, x)[0]}
    linen = getattr(jnn, name)()
    out["linen"] = lambda x: linen.apply({"params": params}, x)
    model = getattr(jnnx, name)(shape[-1], rngs=nnx.Rngs(0))
    nnx.update(model, nnx.State(params))
    out["nnx"] = model
    if HAS_EQUINOX:
        import equinox as eqx

        import jaxnorm.equinox as jeqx

        layer = getattr(jeqx, name)(shape[-1])
        layer = eqx.tree_at(lambda m: (m.alpha, m.weight, m.bias), layer,
                            (params["alpha"], params["scale"], params["bias"]))
        if erf:
            layer = eqx.tree_at(lambda m: m.shift, layer, params["shift"])
        out["equinox"] = jax.vmap(jax.vmap(layer))
    return out


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_family_computes_the_spec(kind):
    shape = (2, 3, 4)
    params = {"alpha": jnp.float32(0.9), "scale": jnp.asarray(_data((4,), 1)), "bias": jnp.asarray(_data((4,), 2))}
    if KINDS[kind][1]:
        params["shift"] = jnp.float32(0.1)
    x = jnp.asarray(_data(shape))
    families = _families(kind, shape, params)
    want = families.pop("spec")(x)
    for name, f in families.items():
        np.testing.assert_allclose(np.asarray(f(x)), np.asarray(want), rtol=1e-6, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_dropin_variables_follow_each_familys_conventions(kind):
    cls, erf = KINDS[kind]
    name = cls.__name__
    x = jnp.ones((2, 5))
    scalars = {"alpha": ()} | ({"shift": ()} if erf else {})
    variables = getattr(jnn, name)(use_bias=False).init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, variables) == {"params": scalars | {"scale": (5,)}}
    state = nnx.to_pure_dict(nnx.state(getattr(jnnx, name)(5, alpha_init_value=2.0, rngs=nnx.Rngs(0))))
    assert jax.tree.map(jnp.shape, state) == scalars | {"scale": (5,), "bias": (5,)}
    assert float(state["alpha"]) == 2.0
    if not erf:
        with pytest.raises(TypeError, match="use Derf"):
            jnnx.DyT(5, shift_init_value=0.1, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_input_is_computed_in_float32(kind, dtype):
    x = jnp.asarray(_data((4, 8)), dtype)
    scale, bias = _data((8,), 1), _data((8,), 2)
    want, _, _ = reference.pointwise(np.asarray(x, np.float64), 0.6, 0.2 if KINDS[kind][1] else 0.0, scale, bias,
                                     erf=KINDS[kind][1])
    y = _op(kind, x, 0.6, 0.2, scale, bias)
    assert y.dtype == dtype
    np.testing.assert_array_equal(np.asarray(y), np.asarray(jnp.asarray(want, jnp.float32).astype(dtype)))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_nan_where_masked_touches_no_gradient(kind):
    x = _data((3, 4))
    mask = np.ones((3, 4), bool)
    mask[1, 2] = mask[2, 0] = False
    dirty = np.where(mask, x, np.nan).astype(np.float32)
    p = {"alpha": jnp.float32(0.7), "shift": jnp.float32(0.1), "scale": jnp.asarray(_data((4,), 1)),
         "bias": jnp.asarray(_data((4,), 2))}

    def loss(p, x):
        y = _op(kind, x, p["alpha"], p["shift"], p["scale"], p["bias"], where=mask)
        return jnp.sum(jnp.where(mask, y, 0) ** 2), y

    (_, y), grads = jax.value_and_grad(loss, (0, 1), has_aux=True)(p, jnp.asarray(dirty))
    (_, y0), grads0 = jax.value_and_grad(loss, (0, 1), has_aux=True)(p, jnp.asarray(np.where(mask, x, 0)))
    assert np.isnan(np.asarray(y)[~mask]).all()  # a masked-out value is still mapped
    np.testing.assert_array_equal(np.asarray(y)[mask], np.asarray(y0)[mask])
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), grads, grads0)


def test_bad_arguments_name_the_argument():
    x = jnp.ones((2, 3))
    with pytest.raises(ValueError, match=r"`alpha` must be a scalar .* got shape \(3,\)"):
        jaxnorm.dyt(x, jnp.ones(3))
    with pytest.raises(ValueError, match=r"`shift` must be a scalar"):
        jaxnorm.derf(x, 0.5, jnp.zeros((1,)))
    with pytest.raises(TypeError, match=r"`alpha_init_value` must be a finite float"):
        jaxnorm.DyT(alpha_init_value="0.5")
    with pytest.raises(TypeError, match=r"`shift_init_value` must be a finite float"):
        jaxnorm.Derf(shift_init_value=float("nan"))
    with pytest.raises(TypeError, match=r"jaxnorm.DyT takes 2 positional argument\(s\) \(axis, alpha_init_value\)"):
        jaxnorm.DyT(-1, 0.5, True)
    with pytest.raises(ValueError, match=r"`params\['alpha'\]` has shape \(3,\)"):
        jaxnorm.DyT().apply({"alpha": jnp.ones(3), "scale": jnp.ones(3), "bias": jnp.zeros(3)}, {}, x)


@pytest.mark.peers("equinox")
def test_equinox_dropins_keep_equinox_conventions():
    import equinox as eqx

    import jaxnorm.equinox as jeqx

    layer = jeqx.Derf((2, 3), alpha_init_value=1.0, use_bias=False)
    assert layer.weight.shape == (2, 3) and layer.bias is None and layer.shift.shape == ()
    x = jnp.asarray(_data((2, 3)))
    y, state = layer(x, state="s")
    assert state == "s"
    assert_close(y, reference.pointwise(x, 1.0, 0.0, np.ones((2, 3)), erf=True)[0])
    with pytest.raises(ValueError, match=r"must satisfy the invariant `shape == x.shape`"):
        layer(jnp.ones((3,)))
    with pytest.raises(TypeError, match="use Derf"):
        jeqx.DyT(3, shift_init_value=0.5)
    assert eqx.filter_jit(jeqx.DyT(3))(jnp.zeros(3)).tolist() == [0.0, 0.0, 0.0]
