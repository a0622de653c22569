"""BatchNorm's explicit conventions (momentum, running variance, averaging) and safe state updates."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnorm
from tests import reference as ref
from tests.tolerances import assert_close


def _batches(k=4, shape=(6, 2, 3), seed=0):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.standard_normal(shape) * (i + 1) + i, jnp.float32) for i in range(k)]


def _run(spec, xs, **kw):
    params, state = spec.init(None, xs[0])
    ys = []
    for x in xs:
        y, state = spec.apply(params, state, x, training=True, **kw)
        ys.append(y)
    return ys, state


def _batch_stats(x, ddof=0):
    x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
    return x.mean(0), x.var(0, ddof=ddof)


def test_torch_momentum_convention_is_one_minus_keras():
    xs = _batches()
    _, keras_state = _run(jaxnorm.BatchNorm(momentum=0.9), xs)
    _, torch_state = _run(jaxnorm.BatchNorm(momentum=0.1, momentum_convention="torch"), xs)
    assert_close(torch_state["mean"], keras_state["mean"])
    assert_close(torch_state["var"], keras_state["var"])
    # and not the same as reading 0.1 with the Keras convention
    _, wrong = _run(jaxnorm.BatchNorm(momentum=0.1), xs)
    assert not np.allclose(wrong["mean"], keras_state["mean"], atol=1e-3)


def test_unbiased_moving_variance_normalizes_with_biased():
    xs = _batches(k=1)
    ys_u, state_u = _run(jaxnorm.BatchNorm(momentum=0.0, moving_var_estimator="unbiased"), xs)
    ys_b, state_b = _run(jaxnorm.BatchNorm(momentum=0.0), xs)
    mean, var_unbiased = _batch_stats(xs[0], ddof=1)
    assert_close(state_u["var"], var_unbiased)
    assert_close(state_b["var"], _batch_stats(xs[0])[1])
    assert_close(ys_u[0], ys_b[0])  # the output uses the biased variance either way


def test_cumulative_average_is_mean_of_batches_pytorch_momentum_none():
    xs = _batches()
    spec = jaxnorm.BatchNorm(averaging="cumulative", moving_var_estimator="unbiased",
                             mean_init={"class_name": "Constant", "config": {"value": 123.0}})
    _, state = _run(spec, xs)
    stats = [_batch_stats(x, ddof=1) for x in xs]
    np.testing.assert_array_equal(state["steps"], [len(xs)] * 3)  # one counter per feature
    assert_close(state["mean"], np.mean([m for m, _ in stats], 0))  # the initial 123 dropped out
    assert_close(state["var"], np.mean([v for _, v in stats], 0))


def test_debiased_average_matches_haiku_formula():
    xs = _batches()
    d = 0.9
    _, state = _run(jaxnorm.BatchNorm(momentum=d, averaging="debiased"), xs)
    hidden = np.zeros(3)
    for t, x in enumerate(xs, start=1):
        hidden = d * hidden + (1 - d) * _batch_stats(x)[0]
        want = hidden / (1 - d**t)
    assert_close(state["mean"], want, scale=10)
    # after a single step the debiased average is the batch statistic itself
    _, one = _run(jaxnorm.BatchNorm(momentum=d, averaging="debiased"), xs[:1])
    assert_close(one["var"], _batch_stats(xs[0])[1])


@pytest.mark.parametrize("averaging", ["exponential", "cumulative", "debiased"])
def test_non_finite_feature_keeps_its_state_exactly(averaging):
    spec = jaxnorm.BatchNorm(momentum=0.5, averaging=averaging)
    xs = _batches(k=2)
    params, state = spec.init(None, xs[0])
    _, state = spec.apply(params, state, xs[0], training=True)
    bad = xs[1].at[0, 0, 1].set(jnp.nan)
    step = jax.jit(spec.apply, static_argnames="training")
    _, after = step(params, state, bad, training=True)
    _, clean = step(params, state, xs[1], training=True)
    for k in ("mean", "var"):  # per feature: feature 1 keeps its statistics, the others update as without it
        np.testing.assert_array_equal(np.asarray(after[k])[1], np.asarray(state[k])[1])
        np.testing.assert_array_equal(np.asarray(after[k])[[0, 2]], np.asarray(clean[k])[[0, 2]])
    if "steps" in state:  # each feature counts the steps it took: feature 1 skipped this one
        np.testing.assert_array_equal(after["steps"], np.asarray(state["steps"]) + [1, 0, 1])
    everywhere = xs[1].at[0, 0].set(jnp.nan)  # every feature non-finite: the whole state, counter included
    _, kept = spec.apply(params, state, everywhere, training=True)
    for k in state:
        np.testing.assert_array_equal(kept[k], state[k])
    unsafe = jaxnorm.BatchNorm(momentum=0.5, averaging=averaging, safe_update=False)
    _, poisoned = unsafe.apply(params, state, bad, training=True)
    assert np.isnan(np.asarray(poisoned["mean"])[1])


@pytest.mark.parametrize("averaging", ["cumulative", "debiased"])
def test_counted_averages_count_the_batches_each_feature_took(averaging):
    """Batches x, x with inf in feature 1, 2x: feature 1 takes two batches (x, 2x) and its moving mean is their
    average by the rule with t = 1, 2; features 0 and 2 take all three. Against float64, per feature."""
    d = 0.8
    x = np.asarray(_batches(k=1)[0], np.float64)
    xs = [x, x.copy(), 2 * x]
    xs[1][0, 0, 1] = np.inf
    _, state = _run(jaxnorm.BatchNorm(momentum=d, averaging=averaging), [jnp.asarray(v, jnp.float32) for v in xs])
    np.testing.assert_array_equal(state["steps"], [3, 2, 3])

    def average(batches):
        if averaging == "cumulative":
            return np.mean(batches, 0)
        hidden = 0.0
        for b in batches:
            hidden = d * hidden + (1 - d) * b
        return hidden / (1 - d ** len(batches))

    means = [v.mean((0, 1)) for v in xs]
    want = average(means)  # features 0 and 2: every batch
    want[1] = average([means[0][1], means[2][1]])[()]  # feature 1: the two batches it took
    assert_close(state["mean"], want)
    if averaging == "cumulative":  # the figure: the mean over the batches feature 1 accepted
        assert_close(state["mean"][1], 1.5 * means[0][1])


@pytest.mark.parametrize("averaging", ["cumulative", "debiased"])
def test_a_scalar_step_counter_from_an_older_checkpoint_loads(averaging):
    """Before per-feature counting the counted averages kept one scalar ``steps``: such a state still trains,
    as the same state with that count for every feature, and comes back with the per-feature counter."""
    spec = jaxnorm.BatchNorm(momentum=0.8, averaging=averaging)
    x = _batches(k=1)[0]
    params, state = spec.init(None, x)
    state = {"mean": state["mean"] + 1, "var": state["var"] * 2}
    old = {**state, "steps": jnp.asarray(5, jnp.int32)}
    new = {**state, "steps": jnp.full((3,), 5, jnp.int32)}
    step = jax.jit(spec.apply, static_argnames="training")
    y_old, after_old = step(params, old, x, training=True)
    y_new, after_new = step(params, new, x, training=True)
    np.testing.assert_array_equal(y_old, y_new)
    for k in after_new:  # (the two programs may round keep**t differently in the last bit)
        np.testing.assert_allclose(after_old[k], after_new[k], rtol=1e-6, err_msg=k)
    np.testing.assert_array_equal(after_old["steps"], [6, 6, 6])
    _, same = spec.apply(params, old, x, training=False)  # inference returns the state as given
    assert same is old


def test_empty_mask_leaves_state_and_gives_finite_output():
    spec = jaxnorm.BatchNorm(momentum=0.5)
    x = _batches(k=1)[0]
    params, state = spec.init(None, x)
    params = {"scale": params["scale"] * 2, "bias": params["bias"] + 1}
    y, after = spec.apply(params, state, x, training=True, mask=jnp.zeros(x.shape[:-1], bool))
    assert np.all(np.isfinite(y))
    for k in state:
        np.testing.assert_array_equal(after[k], state[k])


def test_partly_masked_batch_still_updates():
    spec = jaxnorm.BatchNorm(momentum=0.0)
    x = np.asarray(_batches(k=1)[0])
    keep = np.zeros(x.shape[:-1], bool)
    keep[0, 0] = keep[3, 1] = True
    _, after = spec.apply(*spec.init(None, x), jnp.asarray(x), training=True, mask=jnp.asarray(keep))
    rm, rv = ref.moments(x, (0, 1), np.broadcast_to(keep[..., None], x.shape))
    assert_close(after["mean"], rm.ravel())
    assert_close(after["var"], rv.ravel())


def test_single_value_per_feature_raises_unless_allowed():
    spec = jaxnorm.BatchNorm()
    x = jnp.ones((1, 3))
    params, state = spec.init(None, x)
    with pytest.raises(ValueError, match=r"more than one value per feature.*shape \(1, 3\).*allow_single_value"):
        spec.apply(params, state, x, training=True)
    y, _ = jaxnorm.BatchNorm(allow_single_value=True).apply(params, state, x, training=True)
    np.testing.assert_array_equal(y, 0.0)
    spec.apply(params, state, x, training=False)  # inference is fine
    spec.apply(params, state, jnp.ones((1, 2, 3)), training=True)  # two values per feature is fine


def test_counter_in_state_tree_and_config_round_trip():
    spec = jaxnorm.BatchNorm(momentum=0.1, momentum_convention="torch", moving_var_estimator="unbiased",
                             averaging="cumulative", safe_update=False, allow_single_value=True)
    params, state = spec.init(None, jnp.ones((2, 3)))
    assert state["steps"].dtype == jnp.int32 and state["steps"].shape == (3,)  # per feature
    exp_params, exp_state = jaxnorm.BatchNorm(count_steps=True).init(None, jnp.ones((2, 3)))
    assert exp_state["steps"].shape == ()  # PyTorch's num_batches_tracked: one per layer
    assert type(spec).from_config(json.loads(json.dumps(spec.get_config()))) == spec
    with pytest.raises(TypeError, match=r"`state\['steps'\]` must be an integer step counter"):
        spec.apply(params, {**state, "steps": jnp.zeros((3,))}, jnp.ones((2, 3)), training=True)
    with pytest.raises(ValueError, match=r"missing \['steps'\]"):
        spec.apply(params, {"mean": state["mean"], "var": state["var"]}, jnp.ones((2, 3)), training=True)


def test_earlier_names_read_or_named_in_the_error():
    """``moving_var`` (now ``moving_var_estimator``) is read from a config; a state with the step counter under
    its earlier key ``count`` (now ``steps``) raises an error that says how to rename it, and is not altered."""
    old_config = {**jaxnorm.BatchNorm().get_config(), "moving_var": "unbiased"}
    del old_config["moving_var_estimator"]
    assert jaxnorm.BatchNorm.from_config(old_config) == jaxnorm.BatchNorm(moving_var_estimator="unbiased")
    with pytest.raises(ValueError, match=r"both 'moving_var' and 'moving_var_estimator'"):
        jaxnorm.BatchNorm.from_config({"moving_var": "unbiased", "moving_var_estimator": "biased"})
    spec = jaxnorm.BatchNorm(count_steps=True)
    params, state = spec.init(None, jnp.ones((2, 3)))
    old_state = {"mean": state["mean"], "var": state["var"], "count": state["steps"]}
    with pytest.raises(ValueError, match=r"earlier name 'count'; it is 'steps' now"):
        spec.apply(params, old_state, jnp.ones((2, 3)), training=True)
    assert sorted(old_state) == ["count", "mean", "var"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"momentum_convention": "pytorch"}, r"`momentum_convention`='pytorch' is not one of .*'torch'"),
        ({"moving_var_estimator": "sample"}, r"`moving_var_estimator`='sample' is not one of .*'unbiased'"),
        ({"averaging": "ema"}, r"`averaging`='ema' is not one of .*'debiased'"),
    ],
)
def test_bad_convention_names(kwargs, match):
    with pytest.raises(ValueError, match=match):
        jaxnorm.BatchNorm(**kwargs)
