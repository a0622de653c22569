"""The layer registry: every jaxnorm layer spec once, with an example input; tests/test_registry.py drives each
entry through the same checks (jit, vmap, grad, dtypes, masks, configs, golden trees, bad input).

Adding a layer to those checks is one line here (and ``JAXNORM_UPDATE_GOLDEN=1 pytest tests/test_registry.py``
once to record its parameter/state tree in tests/golden_trees.json).
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp

import jaxnorm


@dataclasses.dataclass(frozen=True)
class Entry:
    """One layer: ``make()`` builds the spec; ``shape`` is an example input's shape (batch first).

    ``training``: the value passed to ``apply`` (True exercises BatchNorm's batch statistics); ``mask``: whether
    ``apply`` takes a mask; ``per_example``: whether each example's output depends on that example alone;
    ``prepare(spec, x, params, state) -> state``: fills a state that ``init`` leaves empty (e.g. ``adapt``);
    ``input_name``: the name ``apply`` gives its input in errors (``w`` for the weight reparametrizations);
    ``finite_differences``: False where the gradient deliberately stops (SpectralNorm's power iteration is under
    ``stop_gradient``, as in the paper and Flax; its gradient is checked against the closed form instead);
    ``keras``: False where the spec holds a setting Keras has no key for (``to_keras_config`` must refuse it);
    ``inputs(x) -> dict``: the keyword inputs ``apply`` takes besides ``x``, made from ``x`` (add & norm's
    ``residual``, the gated norm's ``gate``; per example, NaN where ``x`` is); ``output(out) -> y``: the array
    the checks read from ``apply``'s first output (add & norm's ``y`` of ``(y, h)``; tests/test_residual.py checks
    ``h``); ``half``: False where the output's dtype is not the input's (the fp8 layers: tests/test_quantized.py
    checks their half inputs).
    """

    name: str
    make: Callable[[], Any]
    shape: tuple[int, ...]
    training: bool | None = None
    mask: bool = True
    per_example: bool = True
    prepare: Callable[..., Any] | None = None
    input_name: str = "x"
    finite_differences: bool = True
    keras: bool = True
    half: bool = True
    inputs: Callable[[Any], dict] | None = None
    output: Callable[[Any], Any] | None = None

    def apply(self, spec: Any, params: Any, state: Any, x: Any, **kwargs: Any) -> tuple[Any, Any]:
        """``spec.apply(params, state, x, training=self.training, **inputs(x), **kwargs)`` as ``(y, state)``."""
        out, new_state = spec.apply(params, state, x, training=self.training,
                                    **({} if self.inputs is None else self.inputs(x)), **kwargs)
        return (out if self.output is None else self.output(out)), new_state


def _residual(x: Any) -> dict:
    return {"residual": jnp.cos(x)}


def _gate(x: Any) -> dict:
    return {"gate": 1.0 - x}


def _modulation(x: Any) -> dict:
    return {"shift": jnp.sin(x), "scale": 0.5 * jnp.cos(x)}


def _out_scale(x: Any) -> dict:
    return {"out_scale": 16.0}


def _q_of_pair(out: Any) -> Any:  # (q, amax): the fp8 values, as float32
    return out[0].astype(jnp.float32)


def _y_of_pair(out: Any) -> Any:
    return out[0]


REGISTRY = [
    Entry("BatchNorm", lambda: jaxnorm.BatchNorm(), (6, 3, 4), training=True, per_example=False),
    Entry("BatchNorm_eval", lambda: jaxnorm.BatchNorm(axis=1), (6, 3, 4), training=False),
    Entry("LayerNorm", lambda: jaxnorm.LayerNorm(), (4, 3, 5)),
    Entry("LayerNorm_axes", lambda: jaxnorm.LayerNorm(axis=(1, 2)), (4, 3, 5)),
    Entry("RMSNorm", lambda: jaxnorm.RMSNorm(), (4, 3, 5)),
    Entry("LayerNorm_zero_centred", lambda: jaxnorm.LayerNorm(scale_offset=1.0, scale_init="zeros"), (4, 3, 5),
          keras=False),
    Entry("RMSNorm_zero_centred", lambda: jaxnorm.RMSNorm(axis=(1, 2), scale_offset=1.0, scale_init="zeros"),
          (4, 3, 5), keras=False),
    Entry("GroupNorm", lambda: jaxnorm.GroupNorm(num_groups=2), (4, 3, 6)),
    Entry("GroupNorm_channels_first", lambda: jaxnorm.GroupNorm(num_groups=3, axis=1), (4, 6, 3)),
    Entry("InstanceNorm", lambda: jaxnorm.InstanceNorm(), (4, 5, 3)),
    Entry("UnitNormalization", lambda: jaxnorm.UnitNormalization(), (4, 3, 5)),
    Entry("Normalization", lambda: jaxnorm.Normalization(axis=-1), (4, 3, 5),
          prepare=lambda spec, x, params, state: spec.adapt(x)),
    Entry("SpectralNorm", lambda: jaxnorm.SpectralNorm(n_steps=2), (6, 3, 4), training=True, mask=False,
          per_example=False, input_name="w", finite_differences=False),
    Entry("SpectralNorm_eval", lambda: jaxnorm.SpectralNorm(), (5, 4), training=False, mask=False,
          per_example=False, input_name="w", finite_differences=False),
    Entry("WeightNorm", lambda: jaxnorm.WeightNorm(), (6, 3, 4), mask=False, per_example=False, input_name="w"),
    Entry("DyT", lambda: jaxnorm.DyT(), (4, 3, 5)),
    Entry("Derf", lambda: jaxnorm.Derf(axis=(1, 2), shift_init_value=0.25), (4, 3, 5)),
    Entry("AddLayerNorm", lambda: jaxnorm.AddLayerNorm(), (4, 3, 5), inputs=_residual, output=_y_of_pair),
    Entry("AddRMSNorm", lambda: jaxnorm.AddRMSNorm(axis=(1, 2), residual_in_float32=True), (4, 3, 5),
          inputs=_residual, output=_y_of_pair),
    Entry("LayerNormFP8", lambda: jaxnorm.LayerNormFP8(), (4, 3, 5), inputs=_out_scale, output=_q_of_pair,
          half=False, finite_differences=False),
    Entry("RMSNormFP8", lambda: jaxnorm.RMSNormFP8(out_dtype="float8_e5m2"), (4, 3, 5), inputs=_out_scale,
          output=_q_of_pair, half=False, finite_differences=False),
    Entry("AdaptiveNorm", lambda: jaxnorm.AdaptiveNorm(), (4, 3, 5), inputs=_modulation),
    Entry("AdaptiveNorm_rms", lambda: jaxnorm.AdaptiveNorm(axis=(1, 2), rms=True), (4, 3, 5), inputs=_modulation),
    Entry("GatedRMSNorm", lambda: jaxnorm.GatedRMSNorm(norm_before_gate=True), (4, 3, 6), inputs=_gate),
    Entry("GatedRMSNorm_groups", lambda: jaxnorm.GatedRMSNorm(norm_before_gate=False, group_size=3), (4, 3, 6),
          inputs=_gate),
    Entry("Normalization_given", lambda: jaxnorm.Normalization(axis=(1, 2), mean=0.5, variance=2.0), (4, 3, 5)),
]
