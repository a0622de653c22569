"""The issue's "done when": a layer trained in Keras or PyTorch, brought over with jaxnorm.interop, keeps training
in a jit-compiled Optax loop with the numbers it would have had at home (params, moving statistics, outputs).

Each test trains the peer for 2 steps, converts, then trains both for 3 more steps on the same batches with the
same optimizer (peer's own vs Optax's), and compares after every step.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxnorm
from jaxnorm import interop

os.environ.setdefault("KERAS_BACKEND", "jax")

LR = 0.1


def _batches(shape, k, seed=0):
    rng = np.random.default_rng(seed)
    return [(3 + 2 * rng.standard_normal(shape)).astype(np.float32) for _ in range(k)], [
        rng.standard_normal(shape).astype(np.float32) for _ in range(k)
    ]


def _close(a, b, atol=2e-5):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=2e-5, atol=atol)


def _jax_train_step(spec, layers, optimizer):
    """A plain jit-compiled train step: MSE of the layer's output against a target, plus regularization."""

    def loss_fn(params, state, x, t):
        y, new_state = spec.apply(params, state, x, training=True)
        loss = jnp.mean((y - t) ** 2) + jaxnorm.regularization_loss(layers, {"norm": params})
        return loss, (y, new_state)

    @jax.jit
    def step(params, state, opt_state, x, t):
        (_, (y, state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state, x, t)
        updates, opt_state = optimizer.update({"norm": grads}, opt_state, {"norm": params})
        params = optax.apply_updates({"norm": params}, updates)["norm"]
        return params, state, opt_state, y

    return step


@pytest.mark.parametrize(
    "momentum, cls, shape", [(0.1, "BatchNorm2d", (8, 3, 4, 4)), (None, "BatchNorm1d", (16, 5))]
)
def test_torch_batch_norm_keeps_training_in_optax(momentum, cls, shape, torch):
    torch.manual_seed(0)
    module = getattr(torch.nn, cls)(shape[1], momentum=momentum)
    opt = torch.optim.SGD(module.parameters(), lr=LR, momentum=0.9, weight_decay=1e-2)
    xs, ts = _batches(shape, 5)

    def torch_step(x, t):
        opt.zero_grad()
        y = module(torch.from_numpy(x))
        torch.mean((y - torch.from_numpy(t)) ** 2).backward()
        opt.step()
        return y.detach().numpy()

    module.train()
    for x, t in zip(xs[:2], ts[:2], strict=True):  # trained at home first
        torch_step(x, t)
    spec, params, state = interop.from_torch(module)
    # PyTorch's SGD(momentum, weight_decay) is Optax's add_decayed_weights -> sgd(momentum); its momentum buffer
    # carries over too, so start Optax's trace from it.
    optimizer = optax.chain(optax.add_decayed_weights(1e-2), optax.sgd(LR, momentum=0.9))
    opt_state = optimizer.init({"norm": params})
    torch_params = {"scale": module.weight, "bias": module.bias}
    trace = {name: opt.state[p]["momentum_buffer"] for name, p in torch_params.items()}
    opt_state = (opt_state[0], (optax.TraceState({"norm": {k: jnp.asarray(v.numpy()) for k, v in trace.items()}}),
                                opt_state[1][1]))
    step = _jax_train_step(spec, {}, optimizer)
    for x, t in zip(xs[2:], ts[2:], strict=True):
        y_torch = torch_step(x, t)
        params, state, opt_state, y = step(params, state, opt_state, x, t)
        _close(y, y_torch)
        _close(params["scale"], module.weight.detach().numpy())
        _close(params["bias"], module.bias.detach().numpy())
        _close(state["mean"], module.running_mean.numpy())
        _close(state["var"], module.running_var.numpy())
        np.testing.assert_array_equal(state["steps"], int(module.num_batches_tracked))  # per feature or not
    module.eval()
    y_eval, _ = spec.apply(params, state, jnp.asarray(xs[0]), training=False)
    _close(y_eval, module(torch.from_numpy(xs[0])).detach().numpy())


@pytest.mark.parametrize("renorm", [False, True])
def test_keras_batch_norm_keeps_training_in_optax(renorm, keras):
    if keras.backend.backend() != "jax":
        pytest.skip("keras was imported with another backend")
    shape = (16, 3)
    layer_kwargs = dict(momentum=0.8, gamma_regularizer={"class_name": "L2", "config": {"l2": 0.05}},
                        beta_constraint="non_neg", renorm=renorm, renorm_clipping={"rmax": 2.0, "dmax": 1.0})
    model = keras.Sequential([keras.Input(shape[1:]), keras.layers.BatchNormalization(**layer_kwargs)])
    model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    layer = model.layers[0]
    xs, ts = _batches(shape, 5, seed=1)
    ts = [t - 0.5 for t in ts]  # pulls beta below 0, where non_neg must act
    with jax.numpy_rank_promotion("allow"):  # Keras's own code relies on rank promotion
        for x, t in zip(xs[:2], ts[:2], strict=True):
            model.train_on_batch(x, t)
    spec, params, state = interop.from_keras(layer)
    layers = {"norm": spec}
    optimizer = optax.chain(optax.sgd(LR), jaxnorm.constraints_transform(layers))
    opt_state = optimizer.init({"norm": params})
    step = _jax_train_step(spec, layers, optimizer)
    for x, t in zip(xs[2:], ts[2:], strict=True):
        with jax.numpy_rank_promotion("allow"):
            model.train_on_batch(x, t)
        params, state, opt_state, _ = step(params, state, opt_state, x, t)
        weights = {w.name: np.asarray(w.value) for w in layer.weights}
        _close(params["scale"], weights["gamma"])
        _close(params["bias"], weights["beta"])
        assert float(jnp.min(params["bias"])) >= 0.0
        for k, name in (("mean", "moving_mean"), ("var", "moving_variance")):
            _close(state[k], weights[name])
    assert float(jnp.min(params["bias"])) == 0.0  # the constraint did act
    with jax.numpy_rank_promotion("allow"):
        y_keras = np.asarray(model(xs[0], training=False))
    _close(spec.apply(params, state, jnp.asarray(xs[0]), training=False)[0], y_keras)
