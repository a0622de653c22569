"""Property tests (hypothesis): a layer applied with a mask equals the layer applied to the masked-in values only.

The masked-out positions hold NaN and inf, so any leak of them into the statistics or the output shows.
"""

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxnorm
from tests.tolerances import assert_close

pytestmark = pytest.mark.slow  # hypothesis sweeps: the heavy tier (`pytest -m slow`), run by .ci/run

_VALUES = st.floats(-50, 50, width=32)


def _poison(x, mask):
    """x with NaN / inf written where the (broadcast) mask is False."""
    bad = np.where(np.arange(x.size).reshape(x.shape) % 2 == 0, np.nan, np.inf).astype(x.dtype)
    return np.where(mask, x, bad)


@settings(max_examples=25, deadline=None)
@given(
    x=hnp.arrays(np.float32, st.tuples(st.integers(2, 4), st.integers(1, 4), st.integers(1, 3)), elements=_VALUES),
    data=st.data(),
    renorm=st.booleans(),
    momentum=st.floats(0.0, 1.0),
)
def test_batch_norm_with_keras_shaped_mask_equals_filtered_batch(x, data, renorm, momentum):
    n, t, c = x.shape
    mask = data.draw(hnp.arrays(np.bool_, (n, t)))  # Keras's mask shape: x.shape[:-1]
    mask.flat[data.draw(st.integers(0, n * t - 1))] = True
    mask.flat[data.draw(st.integers(0, n * t - 1))] = True
    if mask.sum() < 2:
        mask.flat[:2] = True
    spec = jaxnorm.BatchNorm(momentum=momentum, renorm=renorm, allow_single_value=True)
    params, state = spec.init(None, x)
    params = {"scale": jnp.linspace(0.5, 2.0, c), "bias": jnp.linspace(-1.0, 1.0, c)}
    if renorm:  # away from the initial (0, 1) so that r and d matter
        state = {**state, "renorm_mean": jnp.full(c, 0.5), "renorm_stddev": jnp.full(c, 2.0)}

    full_mask = np.broadcast_to(mask[..., None], x.shape)
    y, new_state = jax.jit(lambda p, s, x, m: spec.apply(p, s, x, training=True, mask=m))(
        params, state, jnp.asarray(_poison(x, full_mask)), jnp.asarray(mask)
    )
    kept = x[mask]  # (k, c): the physically filtered batch
    y_ref, state_ref = spec.apply(params, state, jnp.asarray(kept), training=True)

    scale = max(1.0, float(np.max(np.abs(kept))) / 10)
    assert np.all(np.isfinite(np.asarray(y)[mask]))
    assert_close(np.asarray(y)[mask], y_ref, scale=10 * scale)
    for k in state:
        assert_close(new_state[k], state_ref[k], scale=10 * scale)


@settings(max_examples=25, deadline=None)
@given(
    x=hnp.arrays(np.float32, st.tuples(st.integers(1, 3), st.integers(2, 6)), elements=_VALUES),
    data=st.data(),
)
def test_layer_norm_mask_equals_per_example_filtered_input(x, data):
    b, d = x.shape
    mask = data.draw(hnp.arrays(np.bool_, x.shape))
    mask[:, 0] = True  # every example keeps at least one value
    spec = jaxnorm.LayerNorm()
    params = {"scale": jnp.linspace(0.5, 2.0, d), "bias": jnp.linspace(-1.0, 1.0, d)}
    y, _ = spec.apply(params, {}, jnp.asarray(_poison(x, mask)), mask=jnp.asarray(mask))
    y = np.asarray(y)
    for i in range(b):
        keep = mask[i]
        want = jaxnorm.layer_norm(jnp.asarray(x[i, keep]), params["scale"][keep], params["bias"][keep])
        assert np.all(np.isfinite(y[i, keep]))
        assert_close(y[i, keep], want, scale=10 * max(1.0, float(np.max(np.abs(x))) / 10))
