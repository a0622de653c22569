"""Gradients of the family against Keras 3 itself (JAX backend): ``jax.grad`` through Keras's
``stateless_call`` and through the jaxnorm spec built from the Keras layer's config, with respect to the input
and the weights."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnorm
from tests.tolerances import assert_close

pytestmark = pytest.mark.peers("keras")


def _data(shape, seed, offset=0.5):
    return (np.random.default_rng(seed).standard_normal(shape) * 2 + offset).astype(np.float32)


def _cases():
    import keras

    return {
        # name: (Keras layer, jaxnorm spec class, jaxnorm param names in Keras's weight order, input shape)
        "RMSNormalization": (lambda: keras.layers.RMSNormalization(epsilon=1e-5), jaxnorm.RMSNorm, ["scale"],
                             (3, 4, 6)),
        "GroupNormalization": (lambda: keras.layers.GroupNormalization(groups=3, epsilon=1e-4), jaxnorm.GroupNorm,
                               ["scale", "bias"], (3, 4, 5, 6)),
        "GroupNormalization_channels_first": (
            lambda: keras.layers.GroupNormalization(groups=2, axis=1, epsilon=1e-4), jaxnorm.GroupNorm,
            ["scale", "bias"], (3, 6, 4, 5)),
        "LayerNormalization": (lambda: keras.layers.LayerNormalization(axis=(1, 2)), jaxnorm.LayerNorm,
                               ["scale", "bias"], (3, 4, 6)),
        "UnitNormalization": (lambda: keras.layers.UnitNormalization(axis=-1), jaxnorm.UnitNormalization, [],
                              (3, 4, 6)),
    }


@pytest.mark.parametrize("name", ["RMSNormalization", "GroupNormalization", "GroupNormalization_channels_first",
                                  "LayerNormalization", "UnitNormalization"])
def test_gradients_match_keras(name):
    make, spec_cls, names, shape = _cases()[name]
    layer = make()
    layer.build(shape)
    weights = [jnp.asarray(_data(w.shape, seed=i + 1)) for i, w in enumerate(layer.trainable_weights)]
    x = jnp.asarray(_data(shape, seed=0))
    w = jnp.asarray(_data(shape, seed=9))
    spec = spec_cls.from_config(layer.get_config())

    def keras_loss(ws, x):
        with jax.numpy_rank_promotion("allow"):  # Keras's own code relies on rank promotion
            y, _ = layer.stateless_call(ws, [], x)
        return jnp.vdot(y, w)

    def our_loss(ws, x):
        y, _ = spec.apply(dict(zip(names, ws, strict=True)), {}, x)
        return jnp.vdot(y, w)

    assert len(weights) == len(names)
    v_keras, g_keras = jax.value_and_grad(keras_loss, (0, 1))(weights, x)
    v_ours, g_ours = jax.value_and_grad(our_loss, (0, 1))(weights, x)
    assert_close(v_ours, v_keras, scale=50)
    for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_keras), strict=True):
        assert_close(a, b, scale=50)
