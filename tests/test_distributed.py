"""Synchronized statistics across devices: exact, count-weighted, under shard_map, pmap, vmap and sharded jit.

The reference is always the single-device computation on the whole global batch (NumPy float64 or the layer
without ``axis_name`` on the concatenated input and mask). The test process has 4 CPU devices (tests/conftest.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxnorm
from tests import reference as ref
from tests.tolerances import assert_close

NDEV = jax.device_count()
MESH = Mesh(np.array(jax.devices()), ("data",))


def _data(shape, seed=0, offset=3.0):
    return (np.random.default_rng(seed).standard_normal(shape) * 2 + offset).astype(np.float32)


def _uneven_mask(ndev, per, features, seed=1):
    """Per-device masks with very different valid counts: one device keeps everything, one keeps nothing."""
    rng = np.random.default_rng(seed)
    mask = rng.random((ndev, per, features)) < 0.5
    mask[0] = True  # all valid
    mask[-1] = False  # an entirely masked shard
    mask[1, 0] = True  # a shard with at least one valid row per feature
    return mask


def _shard_map(f, in_specs, out_specs):
    return jax.jit(jax.shard_map(f, mesh=MESH, in_specs=in_specs, out_specs=out_specs))


def test_the_test_process_has_several_devices():
    assert NDEV >= 4


@pytest.mark.parametrize("transform", ["shard_map", "pmap", "vmap"])
def test_moments_with_unequal_masks_and_an_empty_shard_equal_the_global_batch(transform):
    per, c = 6, 3
    x = _data((NDEV, per, c))
    x[-1] = np.nan  # the fully masked device holds garbage: it must not leak
    mask = _uneven_mask(NDEV, per, c)

    def f(x, m):
        return jaxnorm.moments(x, 0, where=m, axis_name="data")

    if transform == "shard_map":
        got = _shard_map(lambda x, m: [v[None] for v in f(x[0], m[0])], (P("data"), P("data")), P("data"))(x, mask)
    elif transform == "pmap":
        got = jax.pmap(f, axis_name="data")(x, mask)
    else:
        got = jax.vmap(f, axis_name="data")(jnp.asarray(x), jnp.asarray(mask))
    want_mean, want_var = ref.moments(x.reshape(NDEV * per, c), (0,), mask.reshape(NDEV * per, c))
    for d in range(NDEV):  # every device holds the same global statistics
        assert_close(got[0][d], want_mean.squeeze(0))
        assert_close(got[1][d], want_var.squeeze(0))
    # The mean of per-device means (Flax's pmean) is far from it here: the exactness is what is tested.
    per_device = np.nanmean(np.where(mask[:-1], x[:-1], np.nan), 1).mean(0)
    assert np.max(np.abs(per_device - want_mean.squeeze(0))) > 1e-2


def test_batch_norm_under_shard_map_equals_the_global_batch_outputs_state_and_gradients():
    per, c = 5, 4
    x = _data((NDEV * per, 2, c), seed=3)
    mask = _uneven_mask(NDEV, per * 2, 1, seed=4).reshape(NDEV * per, 2, 1).repeat(c, -1)
    w = _data(x.shape, seed=5, offset=0.0)
    sync = jaxnorm.BatchNorm(momentum=0.8, axis_name="data")
    local = jaxnorm.BatchNorm(momentum=0.8)
    params, state = sync.init(None, x[:per])
    params = {"scale": jnp.linspace(0.5, 2.0, c), "bias": jnp.linspace(-1.0, 1.0, c)}

    def sharded_loss(params, x, m, w):
        y, new_state = sync.apply(params, state, x, training=True, mask=m)
        loss = jax.lax.psum(jnp.sum(jnp.where(m, y, 0.0) * w), "data")
        return loss, (y, jax.tree.map(lambda v: v[None], new_state))

    step = jax.value_and_grad(sharded_loss, has_aux=True)
    run = _shard_map(step, (P(), P("data"), P("data"), P("data")), ((P(), (P("data"), P("data"))), P()))
    (loss, (y, states)), grads = run(params, x, mask, w)

    def global_loss(params):
        y, new_state = local.apply(params, state, x, training=True, mask=mask)
        return jnp.sum(jnp.where(mask, y, 0.0) * w), (y, new_state)

    (want_loss, (want_y, want_state)), want_grads = jax.value_and_grad(global_loss, has_aux=True)(params)
    assert_close(loss, want_loss, scale=10)
    assert_close(y, want_y)
    for k in ("mean", "var"):
        for d in range(NDEV):  # replicated: bit-identical on every device, equal to the global update
            np.testing.assert_array_equal(states[k][d], states[k][0])
        assert_close(states[k][0], want_state[k])
    for k in ("scale", "bias"):
        assert_close(grads[k], want_grads[k], scale=10)


def test_gradient_with_respect_to_the_input_through_synchronized_statistics():
    per, c = 3, 2
    x = _data((NDEV * per, c), seed=6)
    w = _data(x.shape, seed=7, offset=0.0)
    sync, local = jaxnorm.BatchNorm(axis_name="data"), jaxnorm.BatchNorm()
    params, state = local.init(None, x)

    def sharded(x, w):
        return jax.grad(lambda x: jax.lax.psum(jnp.sum(sync.apply(params, state, x, training=True)[0] * w),
                                               "data"))(x)

    got = _shard_map(sharded, (P("data"), P("data")), P("data"))(x, w)
    want = jax.grad(lambda x: jnp.sum(local.apply(params, state, x, training=True)[0] * w))(x)
    assert_close(got, want, scale=10)


def test_axis_name_tuple_merges_over_both_named_axes():
    x = _data((2, 3, 4, 2), seed=8)  # (outer devices, inner devices, per-device batch, features)
    mask = np.random.default_rng(9).random(x.shape) < 0.7
    mask[1, 2] = False
    f = lambda x, m: jaxnorm.moments(x, 0, where=m, axis_name=("outer", "inner"))  # noqa: E731
    got = jax.vmap(jax.vmap(f, axis_name="inner"), axis_name="outer")(jnp.asarray(x), jnp.asarray(mask))
    want_mean, want_var = ref.moments(x.reshape(-1, 2), (0,), mask.reshape(-1, 2))
    assert_close(got[0][1, 2], want_mean.squeeze(0))
    assert_close(got[1][0, 1], want_var.squeeze(0))


def test_jit_with_a_batch_sharded_input_gives_global_statistics_and_replicated_state():
    x = _data((NDEV * 4, 3, 5), seed=10, offset=1e3)
    bn = jaxnorm.BatchNorm(momentum=0.5)
    params, state = bn.init(None, x)
    sharded_x = jax.device_put(x, NamedSharding(MESH, P("data")))
    step = jax.jit(lambda p, s, x: bn.apply(p, s, x, training=True))
    y, new_state = step(params, state, sharded_x)
    want_y, want_state = bn.apply(params, state, jnp.asarray(x), training=True)
    assert_close(y, want_y)
    for k in ("mean", "var"):
        assert_close(new_state[k], want_state[k])
        assert new_state[k].sharding.is_fully_replicated
    assert y.sharding.is_equivalent_to(sharded_x.sharding, y.ndim)


# --------------------------------------------------------------------- groups of devices and ghost batches


def test_axis_index_groups_merge_within_each_group_exactly():
    per, c = 3, 2
    x = _data((NDEV, per, c), seed=13)
    mask = np.ones(x.shape, bool)
    mask[1, 1:] = False  # device 1 holds one valid row: its group is count-weighted, not a mean of means
    groups = [[0, 1], [2, 3]]
    bn = jaxnorm.BatchNorm(momentum=0.0, axis_name="data", axis_index_groups=groups)
    params, state = bn.init(None, x[0])
    new_state = jax.pmap(lambda x, m: bn.apply(params, state, x, training=True, mask=m)[1],
                         axis_name="data")(x, mask)
    for group in groups:
        want_mean, want_var = ref.moments(x[group].reshape(-1, c), (0,), mask[group].reshape(-1, c))
        for d in group:
            assert_close(new_state["mean"][d], want_mean.squeeze(0))
            assert_close(new_state["var"][d], want_var.squeeze(0))


def test_axis_index_groups_must_cover_the_devices():
    bn = jaxnorm.BatchNorm(axis_name="data", axis_index_groups=[[0, 1], [2]])
    x = _data((NDEV, 2, 3))
    params, state = bn.init(None, x[0])
    with pytest.raises(ValueError, match=r"must cover each of the 4 devices of 'data' exactly once"):
        jax.pmap(lambda x: bn.apply(params, state, x, training=True), axis_name="data")(x)


def test_ghost_batches_match_the_reference_under_jit_and_shard_map_alike():
    v, c = 4, 3
    x = _data((NDEV * 2 * v, 2, c), seed=14)  # two ghost batches per device
    bn = jaxnorm.BatchNorm(momentum=0.7, virtual_batch_size=v)
    params, state = bn.init(None, x)
    params = {"scale": jnp.linspace(0.5, 1.5, c), "bias": jnp.linspace(-1.0, 1.0, c)}
    want_y, want_mean, want_var = ref.ghost_batch_norm(x, params, state, v, 0.7, bn.epsilon)

    y, new_state = jax.jit(lambda x: bn.apply(params, state, x, training=True))(x)
    assert_close(y, want_y)
    assert_close(new_state["mean"], want_mean)
    assert_close(new_state["var"], want_var)

    sync = jaxnorm.BatchNorm(momentum=0.7, virtual_batch_size=v, axis_name="data")
    run = _shard_map(lambda x: (lambda y, s: (y, jax.tree.map(lambda a: a[None], s)))(
        *sync.apply(params, state, x, training=True)), P("data"), (P("data"), P("data")))
    y_sharded, states = run(x)
    assert_close(y_sharded, want_y)
    for d in range(NDEV):  # the moving statistics stay replicated: averaged over every device's ghosts
        assert_close(states["mean"][d], want_mean)
        assert_close(states["var"][d], want_var)
    # Ghost batches differ from one batch: the test can fail.
    y_full, _ = jaxnorm.BatchNorm(momentum=0.7).apply(params, state, x, training=True)
    assert not np.allclose(y_full, want_y, atol=1e-3)


@pytest.mark.parametrize("transform", ["pmap", "shard_map"])
def test_ghost_batches_average_within_each_device_group(transform):
    """Ghost batches with axis_index_groups: each device group's moving statistics average the ghosts of its own
    devices only (the reference: the ghost batch rule on the group's concatenated batch), the output is each
    ghost batch's own, and the two groups differ (the issue's 4.95 and 25.4, not one 15.2 everywhere)."""
    v, per, c = 2, 4, 3
    x = _data((NDEV, per, c), seed=15)
    x[2:] += 20.0  # the second group's data sits far from the first's
    groups = [[0, 1], [2, 3]]
    bn = jaxnorm.BatchNorm(momentum=0.0, virtual_batch_size=v, axis_name="data", axis_index_groups=groups)
    params, state = bn.init(None, x[0])
    apply = lambda x: bn.apply(params, state, x, training=True)  # noqa: E731
    if transform == "pmap":
        y, new_state = jax.pmap(apply, axis_name="data")(x)
    else:
        y, new_state = _shard_map(lambda x: jax.tree.map(lambda a: a[None], apply(x[0])), P("data"), P("data"))(x)
    for group in groups:
        want_y, want_mean, want_var = ref.ghost_batch_norm(
            x[group].reshape(-1, c), params, state, v, 0.0, bn.epsilon
        )
        assert_close(np.asarray(y)[group].reshape(-1, c), want_y)
        for d in group:
            assert_close(new_state["mean"][d], want_mean)
            assert_close(new_state["var"][d], want_var)
    assert np.all(np.abs(new_state["mean"][0] - new_state["mean"][2]) > 10)


def test_ghost_batches_need_a_multiple_of_the_ghost_size():
    bn = jaxnorm.BatchNorm(virtual_batch_size=4)
    x = _data((6, 3))
    params, state = bn.init(None, x)
    with pytest.raises(ValueError, match=r"virtual_batch_size=4 splits axis 0.*got x of shape \(6, 3\)"):
        bn.apply(params, state, x, training=True)
    y, _ = bn.apply(params, state, x, training=False)  # inference ignores ghost batches
    assert y.shape == x.shape


def test_keras_synchronized_maps_to_axis_name_and_back():
    spec = jaxnorm.BatchNorm.from_config({"axis": -1, "center": True, "synchronized": True})
    assert spec.axis_name == jaxnorm.BatchNorm.KERAS_SYNCHRONIZED_AXIS_NAME == "batch"
    assert jaxnorm.BatchNorm(axis_name="data").to_keras_config()["synchronized"] is True
    assert jaxnorm.BatchNorm().to_keras_config()["synchronized"] is False
    with pytest.raises(ValueError, match=r"virtual_batch_size=4 \(Keras computes no ghost batches"):
        jaxnorm.BatchNorm(virtual_batch_size=4).to_keras_config()
    spec = jaxnorm.BatchNorm(axis_name="data", axis_index_groups=[[0, 1], [2, 3]], virtual_batch_size=2)
    cfg = spec.get_config()
    assert jaxnorm.BatchNorm.from_config(cfg) == jaxnorm.BatchNorm(
        axis_name="data", axis_index_groups=((0, 1), (2, 3)), virtual_batch_size=2)


def test_functional_batch_norm_with_axis_name_equals_the_global_batch():
    x = _data((NDEV, 5, 3), seed=17)
    got = jax.vmap(lambda x: jaxnorm.normalize_batch_in_training(x, None, None, 0, 1e-3, axis_name="data"),
                   axis_name="data")(jnp.asarray(x))
    want = jaxnorm.normalize_batch_in_training(jnp.asarray(x.reshape(-1, 3)), None, None, 0, 1e-3)
    assert_close(got[0].reshape(-1, 3), want[0])
    assert_close(got[1][2], want[1])
    assert_close(got[2][3], want[2])


@pytest.mark.parametrize("layer", ["layer_norm", "rms_norm", "batch_norm_local"])
def test_custom_backward_under_shard_map_sums_replicated_parameter_gradients(layer):
    """check_vma (shard_map's default): a replicated scale/bias gets the gradient summed over devices."""
    x = _data((NDEV * 2, 3, 4), seed=18)
    w = _data(x.shape, seed=19, offset=0.0)
    scale, bias = jnp.linspace(0.5, 1.5, 4), jnp.linspace(-1.0, 1.0, 4)

    def apply(x, s, b):
        if layer == "layer_norm":
            return jaxnorm.layer_norm(x, s, b)
        if layer == "rms_norm":
            return jaxnorm.rms_norm(x, s) + b[None, None]
        bn = jaxnorm.BatchNorm()  # per-device statistics, no axis_name
        return bn.apply({"scale": s, "bias": b}, bn.init(None, x)[1], x, training=True)[0]

    def per_device(s, b, x, w):
        return jax.grad(lambda s, b: jnp.sum(apply(x, s, b) * w), (0, 1))(s, b)

    got = _shard_map(per_device, (P(), P(), P("data"), P("data")), (P(), P()))(scale, bias, x, w)
    shards = [(x[i * 2:(i + 1) * 2], w[i * 2:(i + 1) * 2]) for i in range(NDEV)]
    def shard_grads(xs, ws):
        return jax.grad(lambda s, b: jnp.sum(apply(xs, s, b) * ws), (0, 1))(scale, bias)

    grads = [shard_grads(xs, ws) for xs, ws in shards]
    want = [sum(g[k] for g in grads) for k in (0, 1)]
    assert_close(got[0], want[0], scale=10)
    assert_close(got[1], want[1], scale=10)


def _collectives(kind, mod, shape):
    """Collective ops in the compiled train step (grad and batch statistics) of Dense -> norm -> Dense under
    ``jit`` with the batch sharded over the test's devices, params replicated."""
    import re

    import flax.linen as nn

    class Model(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Dense(shape[-1])(x)
            x = mod.BatchNorm(use_running_average=False)(x) if kind == "batch" else mod.LayerNorm()(x)
            return nn.Dense(4)(x)

    model, x = Model(), jnp.ones(shape)
    variables = model.init(jax.random.key(0), x)

    def loss(params, stats, x):
        if kind == "batch":
            y, upd = model.apply({"params": params, "batch_stats": stats}, x, mutable=["batch_stats"])
        else:
            y, upd = model.apply({"params": params}, x), {}
        return jnp.mean(y**2), upd

    shardings = (NamedSharding(MESH, P()), NamedSharding(MESH, P()), NamedSharding(MESH, P("data")))
    step = jax.jit(jax.value_and_grad(loss, has_aux=True), in_shardings=shardings)
    text = step.lower(variables["params"], variables.get("batch_stats", {}), x).compile().as_text()
    ops = ("all-reduce", "all-gather", "collective-permute", "all-to-all", "reduce-scatter")
    return {op: len(re.findall(rf"\b{op}(-start)?\(", text)) for op in ops}


@pytest.mark.parametrize("kind, shape", [("layer", (16, 8, 64)), ("batch", (16, 8, 8, 32))])
def test_a_sharded_train_step_adds_no_collective_beyond_the_statistics_merge(kind, shape):
    """The issue 22 measurement: Flax's own models with jaxnorm's norms swapped in must compile, on a data-parallel
    mesh, to the collectives Flax's norms compile to. LayerNorm (statistics per example): exactly Flax's.
    BatchNorm (statistics over the sharded batch): Flax's all-reduces plus one, of the C-value mean of the
    kernel's shift sample (drawn evenly along the batch, so every device holds its share); no all-gather,
    no collective-permute (the old guard's host callback gathered x onto one device)."""
    import flax.linen as nn

    import jaxnorm.linen as jnn

    flax_ops, ours = _collectives(kind, nn, shape), _collectives(kind, jnn, shape)
    assert flax_ops["all-reduce"] >= 1, flax_ops  # a real data-parallel program
    expected = dict(flax_ops, **{"all-reduce": flax_ops["all-reduce"] + (kind == "batch")})
    assert ours == expected, (ours, flax_ops)
