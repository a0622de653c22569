"""Bad input raises TypeError/ValueError at trace time, naming the argument and the fix."""

import jax
import jax.numpy as jnp
import pytest

import jaxnorm

X = jnp.ones((4, 3))


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: jaxnorm.moments(X, 2), ValueError, r"`axes`=2 is out of range .* rank 2.*\[-2, 1\]"),
        (lambda: jaxnorm.moments(X, (0, -2)), ValueError, r"`axes`=\(0, -2\) names the same axis more than once"),
        (lambda: jaxnorm.moments(X, 0.5), TypeError, r"`axes` must be an int or a sequence of ints"),
        (lambda: jaxnorm.moments(X, ()), ValueError, r"`axes` must name at least one axis"),
        (lambda: jaxnorm.moments(jnp.ones((4, 3), jnp.int32), 0), TypeError,
         r"`x` must have a floating-point dtype, got int32.*astype\(jnp.float32\)"),
        (lambda: jaxnorm.moments(X, 0, where=jnp.ones((4, 3), jnp.complex64)), TypeError,
         r"`where` must be a boolean \(or 0/1 integer or float\) array, got dtype complex64"),
        (lambda: jaxnorm.moments(X, 0, where=jnp.ones((5,), bool)), ValueError,
         r"`where` has shape \(5,\), which does not broadcast to x's shape \(4, 3\)"),
        (lambda: jaxnorm.batch_normalization(X, jnp.zeros(4), jnp.ones(3)), ValueError,
         r"`mean` has shape \(4,\), which does not broadcast to x's shape \(4, 3\)"),
        (lambda: jaxnorm.batch_normalization(X, jnp.zeros(3), jnp.ones(3), epsilon=-1.0), ValueError,
         r"`epsilon` must be >= 0"),
        (lambda: jaxnorm.batch_normalization(X, jnp.zeros(3), jnp.ones(3), scale=jnp.ones((2, 4, 3))),
         ValueError, r"`scale` has shape \(2, 4, 3\)"),
        (lambda: jaxnorm.layer_norm(X, scale=jnp.ones(4)), ValueError,
         r"`scale` has shape \(4,\).*normalized axes \(1,\), i.e. shape \(3,\)"),
        (lambda: jaxnorm.layer_norm(X, axis=[1, 1]), ValueError, r"`axis`=\[1, 1\] names the same axis"),
        (lambda: jaxnorm.normalize_batch_in_training(X, jnp.ones(4), None, 0), ValueError,
         r"`scale` has shape \(4,\).*kept \(non-reduced\) axes \(1,\), i.e. shape \(3,\)"),
    ],
)
def test_functional_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_layer_errors():
    bn = jaxnorm.BatchNorm()
    params, state = bn.init(None, X)
    with pytest.raises(TypeError, match=r"needs `training`: pass training=True in the train step"):
        bn.apply(params, state, X)
    with pytest.raises(TypeError, match=r"`training` must be a Python bool.*static_argnames='training'"):
        jax.jit(lambda t: bn.apply(params, state, X, training=t))(True)
    with pytest.raises(TypeError, match=r"`training` must be a Python bool \(True or False\), got 1"):
        bn.apply(params, state, X, training=1)
    with pytest.raises(ValueError, match=r"`params\['scale'\]` has shape \(3,\) but the input needs \(5,\).*init"):
        bn.apply(params, state, jnp.ones((4, 5)), training=True)
    with pytest.raises(ValueError, match=r"`state` has keys \['mean'\] .* \(missing \['var'\]\)"):
        bn.apply(params, {"mean": state["mean"]}, X, training=True)
    with pytest.raises(ValueError, match=r"`axis`=3 is out of range for an input of rank 2"):
        jaxnorm.BatchNorm(axis=3).init(None, X)
    with pytest.raises(ValueError, match=r"covers every axis .* use LayerNorm"):
        jaxnorm.BatchNorm(axis=(0, 1)).init(None, X)
    with pytest.raises(TypeError, match=r"`x` must have a floating-point dtype, got int32"):
        bn.apply(params, state, jnp.ones((4, 3), jnp.int32), training=False)
    with pytest.raises(TypeError, match=r"`x` must have a floating-point dtype"):
        bn.init(None, jax.ShapeDtypeStruct((2, 3), jnp.int8))
    with pytest.raises(TypeError, match=r"`mask` must be a boolean \(or 0/1 integer or float\) array"):
        bn.apply(params, state, X, training=True, mask=jnp.ones((4, 3), jnp.complex64))
    ln = jaxnorm.LayerNorm(axis=(0, 1))
    lp, ls = ln.init(None, X)
    with pytest.raises(ValueError, match=r"`params\['scale'\]` has shape \(4, 3\) but the input needs \(4, 5\)"):
        ln.apply(lp, ls, jnp.ones((4, 5)))


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda: jaxnorm.BatchNorm(momentum=1.5), ValueError, r"`momentum` must be in \[0, 1\].*PyTorch"),
        (lambda: jaxnorm.BatchNorm(epsilon=-1e-3), ValueError, r"`epsilon` must be >= 0"),
        (lambda: jaxnorm.BatchNorm(axis="channels"), TypeError, r"`axis` must be an int or a sequence of ints"),
        (lambda: jaxnorm.BatchNorm(axis=(1, 1)), ValueError, r"`axis`=\(1, 1\) names the same axis"),
        (lambda: jaxnorm.BatchNorm(use_scale="yes"), TypeError, r"`use_scale` must be a Python bool"),
        (lambda: jaxnorm.BatchNorm(scale_init="glorot_magic"), ValueError,
         r"`scale_init`: unknown initializer 'glorot_magic'. Supported Keras names"),
        (lambda: jaxnorm.LayerNorm(bias_init=3), TypeError, r"`bias_init` must be a Keras initializer name"),
        (lambda: jaxnorm.LayerNorm(param_dtype="int32"), TypeError, r"`param_dtype` must have a floating-point"),
        (lambda: jaxnorm.BatchNorm.from_config({"axis": -1, "centre": True}), ValueError,
         r"unknown config key\(s\) \['centre'\] for jaxnorm.BatchNorm"),
        (lambda: jaxnorm.BatchNorm.from_config({"center": True, "synchronized": "yes", "dtype": "bfloat16"}),
         ValueError, r"not supported yet by jaxnorm.BatchNorm: dtype='bfloat16' \(supported: 'float32', .*\); "
                     r"synchronized='yes' \(supported: True or False\)"),
        (lambda: jaxnorm.BatchNorm(axis_index_groups=[[0, 1]]), ValueError,
         r"`axis_index_groups` needs a single `axis_name`"),
        (lambda: jaxnorm.BatchNorm(axis_name="b", axis_index_groups=[[0, 1], [1, 2]]), ValueError,
         r"non-empty groups of distinct indices"),
        (lambda: jaxnorm.BatchNorm(virtual_batch_size=0), ValueError,
         r"`virtual_batch_size` must be None or an int"),
        (lambda: jaxnorm.BatchNorm(virtual_batch_size=4, renorm=True), ValueError,
         r"virtual_batch_size follows Keras 2's ghost batch normalization"),
        (lambda: jaxnorm.BatchNorm(renorm=True, averaging="cumulative"), ValueError,
         r"renorm=True follows Keras.*averaging='cumulative'"),
        (lambda: jaxnorm.BatchNorm(renorm_clipping={"rmax": 1.0, "rmin": 2.0}), ValueError, r"rmax >= rmin"),
        (lambda: jaxnorm.BatchNorm(renorm_clipping={"dmax": -1.0}), ValueError, r"dmax >= 0"),
        (lambda: jaxnorm.BatchNorm(renorm_clipping={"r_max": 1.0}), ValueError, r"unknown key\(s\) \['r_max'\]"),
        (lambda: jaxnorm.BatchNorm(renorm_clipping=3.0), TypeError, r"`renorm_clipping` must be None or a dict"),
        (lambda: jaxnorm.BatchNorm(renorm_clipping={"rmax": "big"}), TypeError, r"renorm_clipping\['rmax'\]"),
        (lambda: jaxnorm.BatchNorm(renorm_momentum=2.0), ValueError, r"`renorm_momentum` must be in \[0, 1\]"),
        (lambda: jaxnorm.BatchNorm(trainable=0), TypeError, r"`trainable` must be a Python bool"),
        (lambda: jaxnorm.BatchNorm.from_config({"center": True, "fused": True}), ValueError,
         r"unknown Keras config key\(s\) \['fused'\] for BatchNormalization"),
        (lambda: jaxnorm.LayerNorm.from_config({"scale": True, "dtype": "float16"}), ValueError,
         r"dtype='float16' \(supported: 'float32', 'mixed_float16' or 'mixed_bfloat16'"),
        (lambda: jaxnorm.LayerNorm.from_config([("axis", -1)]), TypeError, r"`config` must be a dict"),
    ],
)
def test_spec_errors(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_get_config_of_callable_initializer_explains():
    spec = jaxnorm.LayerNorm(scale_init=jax.nn.initializers.constant(0.5))
    with pytest.raises(TypeError, match=r"`scale_init`=.* is a callable, which has no JSON form.*Constant"):
        spec.get_config()


def test_unbound_axis_name():
    bn = jaxnorm.BatchNorm(axis_name="devices")
    params, state = bn.init(None, X)
    with pytest.raises(ValueError, match=r"`axis_name`='devices' is not bound here.*shard_map"):
        bn.apply(params, state, X, training=True)
    # also a NameError, as JAX's own (which equinox's and Flax's layers raise there; equinox's tests catch it)
    with pytest.raises(NameError, match=r"not bound here"):
        jaxnorm.layer_norm(X, axis_name="devices")
