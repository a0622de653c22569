"""The moving-statistics rule, in one place: :class:`Rule` and :func:`update`, which ``jaxnorm.BatchNorm`` and the
Flax drop-ins' ``BatchNorm`` call.

The rule is per feature. A feature whose batch statistics may enter its moving averages is one with at least one
valid element (``count > 0``) and a finite batch mean and variance (:func:`update_ok`). Such a feature updates as
Keras, Flax and PyTorch would; any other feature keeps every one of its moving statistics bit for bit
(:func:`safe_update`), so one all-masked, empty or NaN feature no longer freezes, nor poisons, the others. The
counted averages ('cumulative', 'debiased') count steps per feature: ``steps`` is feature-shaped and each feature's
counter advances with the steps it accepted, so its average is over exactly the batches it took. With exponential
averages, ``count_steps`` keeps one scalar counter (PyTorch's ``num_batches_tracked``) that advances when any
feature updated (:func:`advance_counter`). An empty batch (count 0 everywhere) leaves the whole state, counters
included, exactly as it was.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxnorm._src import validation


def update_ok(count: jax.Array, mean: jax.Array, var: jax.Array) -> jax.Array:
    """Per feature: True where this batch's statistics may update the moving ones.

    Args:
      count: the number of valid elements per feature (any numeric dtype; feature-shaped, or broadcastable).
      mean, var: the batch mean and variance per feature (in the dtype they would be written in, so that a value
        that overflows there counts as non-finite).

    Returns:
      A boolean array of the broadcast shape of the three: ``count > 0`` and ``mean``, ``var`` finite.
    """
    return (jnp.asarray(count) > 0) & jnp.isfinite(mean) & jnp.isfinite(var)


def safe_update(old: jax.Array, new: jax.Array, ok: jax.Array) -> jax.Array:
    """``new`` where ``ok``, else ``old`` bit for bit; in ``old``'s dtype and shape.

    ``ok`` (from :func:`update_ok`) must broadcast to ``old``; ``new`` may be any value where ``ok`` is False
    (NaN included: it is selected away, never blended).
    """
    old, new = jnp.asarray(old), jnp.asarray(new)
    dtype = validation.result_dtype(old, new) if jnp.iscomplexobj(new) else old.dtype  # complex: Flax's promotion
    return jnp.where(ok, new.astype(dtype), old.astype(dtype))


def advance_counter(steps: jax.Array, ok: jax.Array) -> jax.Array:
    """The step counter after a step: per feature, ``steps + ok`` where ``steps`` is feature-shaped; a scalar
    ``steps`` becomes ``steps + 1`` when any feature updated (``any(ok)``), else stays ``steps``."""
    steps = jnp.asarray(steps)
    if steps.ndim == 0:  # (a weakly typed counter, equinox's, stays weakly typed)
        return jnp.where(jnp.any(ok), steps + 1, steps)
    return steps + jnp.broadcast_to(ok, steps.shape).astype(steps.dtype)


def moving_average(old: jax.Array, batch: jax.Array, keep: float, ok: jax.Array | None = None) -> jax.Array:
    """The Keras/Flax update ``keep * old + (1 - keep) * batch`` in ``old``'s dtype, kept at ``old`` where
    ``ok`` is False (no check when ``ok`` is None)."""
    old = jnp.asarray(old)
    dtype = validation.result_dtype(old, batch)  # explicit: the rule holds under strict dtype promotion too
    new = keep * old.astype(dtype) + (1 - keep) * jnp.asarray(batch).astype(dtype)
    new = new if jnp.iscomplexobj(new) else new.astype(old.dtype)  # a complex mean stays complex, as in Flax
    return new if ok is None else safe_update(old, new, ok)


MOMENTUM_CONVENTIONS = {
    "keras": "momentum weighs the old value (Keras, Flax, equinox)",
    "torch": "momentum weighs the batch (PyTorch)",
}
MOVING_VARS = {"biased": "M2 / n (Keras, Flax)", "unbiased": "M2 / (n - 1) (PyTorch)"}
AVERAGINGS = {
    "exponential": "moving average (Keras, Flax, PyTorch)",
    "cumulative": "mean of all batches so far (PyTorch momentum=None)",
    "debiased": "zero-debiased moving average (Haiku)",
}


@dataclasses.dataclass(frozen=True)
class Rule:
    r"""How the moving statistics follow the batch ones: the one rule of ``jaxnorm.BatchNorm`` and of the Flax
    drop-ins' ``BatchNorm``.

    With :math:`d` the old value's weight (``momentum`` with the 'keras' convention, ``1 - momentum`` with
    'torch') and :math:`t` the step number:

    - 'exponential': :math:`m \leftarrow d\,m + (1 - d)\,b` (Keras, Flax, PyTorch);
    - 'cumulative': :math:`m \leftarrow m + (b - m) / t` (PyTorch's ``momentum=None``);
    - 'debiased': the zero-debiased EMA :math:`h_t / (1 - d^t)`, :math:`h_t = d\,h_{t-1} + (1 - d)\,b`,
      :math:`h_0 = 0` (Haiku);

    the variance is the biased batch variance M2/n, or M2/(n-1) with ``moving_var_estimator='unbiased'``
    (PyTorch); with ``renorm_momentum`` set (Keras's batch renormalization) the standard deviation is averaged
    instead and ``renorm_mean``/``renorm_stddev`` follow with ``renorm_momentum``. ``safe_update`` keeps a
    feature's moving statistics bit for bit where :func:`update_ok` is False.

    Attributes:
      momentum: float in [0, 1]. momentum_convention: 'keras' or 'torch'. moving_var_estimator: 'biased' or
        'unbiased' (the variance estimator the moving ``var`` averages).
      averaging: 'exponential', 'cumulative' or 'debiased'. safe_update: bool. count_steps: bool, keep a step
        counter ``steps`` with exponential averaging too (the others always keep one).
      renorm_momentum: None (no renorm), or the momentum of the renorm statistics. epsilon: renorm's epsilon.

    Raises:
      ValueError: at construction, a choice outside the ones above, a momentum outside [0, 1], 'debiased' with
        an old-value weight of 1 (the statistics would be NaN), renorm with other than exponential averages of
        the biased statistics.

    Source: ``keras.layers.BatchNormalization``, ``flax.linen.BatchNorm``, ``torch.nn.BatchNorm2d``,
    ``haiku.BatchNorm`` (``ExponentialMovingAverage``).
    """

    momentum: float = 0.99
    momentum_convention: str = "keras"
    moving_var_estimator: str = "biased"
    averaging: str = "exponential"
    safe_update: bool = True
    count_steps: bool = False
    renorm_momentum: float | None = None
    epsilon: float = 0.0

    def __post_init__(self) -> None:
        validation.check_unit_interval(self.momentum, "momentum")
        validation.check_choice(self.momentum_convention, "momentum_convention", MOMENTUM_CONVENTIONS)
        validation.check_choice(self.moving_var_estimator, "moving_var_estimator", MOVING_VARS)
        validation.check_choice(self.averaging, "averaging", AVERAGINGS)
        validation.check_bool(self.safe_update, "safe_update")
        validation.check_bool(self.count_steps, "count_steps")
        if self.renorm_momentum is not None:
            validation.check_unit_interval(self.renorm_momentum, "renorm_momentum")
            if self.averaging != "exponential" or self.moving_var_estimator != "biased":
                raise ValueError(
                    f"renorm=True follows Keras's batch renormalization, which keeps exponential averages of the "
                    f"biased statistics; got averaging={self.averaging!r}, "
                    f"moving_var_estimator={self.moving_var_estimator!r}. Use "
                    "averaging='exponential', moving_var_estimator='biased' with renorm, or renorm=False."
                )
        if self.averaging == "debiased" and float(np.float32(self.keep(self.momentum))) == 1.0:
            # hidden_t / (1 - d^t) with old-value weight d = 1 (in float32) is 0 / 0: NaN after the first step.
            raise ValueError(
                f"averaging='debiased' divides by 1 - d^t, with d the old value's weight, which is 1 for "
                f"momentum={self.momentum!r} with momentum_convention={self.momentum_convention!r}: the moving "
                "statistics would be NaN after one step. Use a momentum whose old-value weight is below 1 (e.g. "
                "0.99 with 'keras', 0.01 with 'torch'), or averaging='exponential' to freeze the statistics."
            )

    @property
    def keeps_counter(self) -> bool:
        """Whether the state holds the int32 step counter ``steps`` (of shape :meth:`steps_shape`)."""
        return self.averaging != "exponential" or self.count_steps

    @property
    def steps_per_feature(self) -> bool:
        """Whether ``steps`` is feature-shaped: the counted averages ('cumulative', 'debiased') need each feature's
        own step number, since a feature that skipped a step (:func:`update_ok`) has taken fewer batches."""
        return self.averaging != "exponential"

    def steps_shape(self, feature_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of the counter ``steps`` for features of ``feature_shape``."""
        return tuple(feature_shape) if self.steps_per_feature else ()

    @property
    def keys(self) -> tuple[str, ...]:
        """The feature-shaped state entries, in creation order."""
        renorm = ("stddev", "renorm_mean", "renorm_stddev") if self.renorm_momentum is not None else ()
        return ("mean", "var") + renorm

    def keep(self, momentum: float) -> float:
        """The old value's weight in the moving average, from a momentum in this rule's convention."""
        return momentum if self.momentum_convention == "keras" else 1 - momentum


#: The moving-statistics options that the Flax drop-ins' BatchNorm accepts after Flax's own arguments, with
#: their defaults (Flax's behaviour, plus per-feature safe updates); see :class:`Rule`.
DROP_IN_OPTIONS: dict[str, Any] = {
    "momentum_convention": "keras",
    "moving_var_estimator": "biased",
    "averaging": "exponential",
    "safe_update": True,
    "count_steps": False,
}


def migrate(state: Any, feature_shape: tuple[int, ...], rule: Rule) -> Any:
    """A state saved with the scalar step counter of earlier releases, upgraded to ``rule``'s feature-shaped one.

    Before per-feature counting, 'cumulative' and 'debiased' kept one int32 scalar ``steps`` for the layer. Such a
    checkpoint loads: its counter is broadcast to every feature (each had taken that many steps, which is what the
    old counter meant). Anything else (other rules, a feature-shaped counter, a tree that is not a dict) is
    returned as given, for the caller's own checks.
    """
    if (
        rule.steps_per_feature and isinstance(state, Mapping) and "steps" in state
        and jnp.ndim(state["steps"]) == 0 and tuple(feature_shape) != ()
    ):
        steps = jnp.asarray(state["steps"])
        return {**state, "steps": jnp.broadcast_to(steps, tuple(feature_shape))}
    return state


def update(state: dict[str, jax.Array], count: jax.Array, mean: jax.Array, var: jax.Array, rule: Rule) -> dict:
    """The new moving statistics after one batch.

    Args:
      state: ``{'mean', 'var'}`` (plus ``'stddev', 'renorm_mean', 'renorm_stddev'`` with renorm, and the int32
        counter ``'steps'`` when ``rule.keeps_counter``: feature-shaped with counted averages, else a scalar),
        feature-shaped arrays in any float dtype.
      count, mean, var: this batch's feature-shaped number of valid elements, mean and biased variance (in the
        dtype the statistics should be averaged in).

    Returns:
      The new state: the same keys, shapes and dtypes. Differentiable, as Flax linen's update is; the spec and
      the nnx drop-in wrap it in ``stop_gradient``.
    """
    if rule.moving_var_estimator == "unbiased":
        var = var * jnp.where(count > 1, count / jnp.maximum(count - 1, 1), 1)
    keep = rule.keep(rule.momentum)
    new = {}
    if rule.keeps_counter:  # t: this step's number for each feature that updates in it (its own count + 1)
        t = (state["steps"] + 1).astype(mean.dtype)
    batches = {"mean": mean, "var": var}
    if rule.renorm_momentum is not None:  # Keras: averages of the stddev; the variance comes from the moving one
        stddev = jnp.sqrt(var + rule.epsilon)
        batches = {"mean": mean, "stddev": stddev}
        renorm_keep = rule.keep(rule.renorm_momentum)
        for key, batch in (("renorm_mean", mean), ("renorm_stddev", stddev)):
            new[key] = moving_average(state[key], batch, renorm_keep)
    for key, batch in batches.items():
        old = state[key]
        if rule.averaging != "exponential":  # in the batch's dtype (at least float32), explicitly
            old = jnp.asarray(old).astype(validation.result_dtype(old, batch))
        if rule.averaging == "exponential":
            value = moving_average(old, batch, keep)
        elif rule.averaging == "cumulative":
            value = old + (batch - old) / t
        else:  # debiased: recover hidden_{t-1} = old * (1 - d^(t-1)); hidden_0 = 0
            hidden = keep * (old * (1 - keep ** (t - 1))) + (1 - keep) * batch
            value = hidden / (1 - keep**t)
        new[key] = value
    if rule.renorm_momentum is not None:
        new["var"] = jnp.maximum(new["stddev"] ** 2 - rule.epsilon, 0)
    # Per feature: a feature with no valid element or non-finite statistics keeps its own values.
    ok = update_ok(count, mean, var) if rule.safe_update else jnp.ones(jnp.shape(mean), bool)
    new = {k: safe_update(state[k], v, ok) for k, v in new.items()}
    if rule.keeps_counter:
        steps = state["steps"]
        new["steps"] = advance_counter(steps, ok if rule.safe_update else jnp.ones(jnp.shape(mean), bool))
    return new


def batch_mode_readout(
    hidden_mean: jax.Array, hidden_var: jax.Array, counter: jax.Array, momentum: float
) -> tuple[jax.Array, jax.Array]:
    """equinox's ``mode='batch'`` inference statistics: ``hidden / (1 - momentum**counter)`` (``hidden`` at
    ``counter == 0``), its expression exactly
    (``jaxnorm.equinox.BatchNorm``'s docstring: the variance's offset)."""
    scale = jnp.where(counter == 0, 1, 1 - momentum**counter)
    return hidden_mean / scale, hidden_var / scale
