r"""Gated RMSNorm (Mamba-2, Qwen3-Next): an RMS normalization and a SiLU gate ``z``, in one of two orders: op and
spec.

.. math::
    \text{norm\_before\_gate=True:}\quad y = \text{RMSNorm}(x) \cdot \operatorname{silu}(z) \qquad
    \text{norm\_before\_gate=False:}\quad y = \text{RMSNorm}(x \cdot \operatorname{silu}(z))

Both orders are in use, so neither is a default: the caller names one. ``True`` is Qwen3-Next's
``Qwen3NextRMSNormGated`` (and mamba_ssm's ``rmsnorm_fn`` default), ``False`` is Mamba-2's ``RMSNormGated``
(``norm_before_gate=False`` in its mixer). ``group_size`` takes the statistic over groups of that many consecutive
features of the last axis (Mamba-2's ``ngroups``), ``scale`` still one per feature. ``silu(z)`` is computed in at
least float32; each step rounds once to ``result_type(x, z)``, as the unfused PyTorch forms do: the gated input
``x * silu(z)`` before the norm, or the norm's output (in ``x``'s dtype) before the gate.

Source: Dao & Gu 2024, "Transformers are SSMs" (Mamba-2; ``mamba_ssm.ops.triton.layernorm_gated``); Qwen3-Next's
``Qwen3NextRMSNormGated`` (Hugging Face transformers); Zhang & Sennrich 2019 for the normalization. Keras and
Flax have no such layer: the spec writes jaxnorm configs only.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jaxnorm._src import normalize, validation
from jaxnorm._src.layer import Tree
from jaxnorm._src.rms_norm import RMSNorm


def check_options(norm_before_gate: Any, group_size: Any) -> tuple[bool, int | None]:
    """``(norm_before_gate, group_size)`` checked: a bool (no default: the two orders differ), and None or a
    positive int."""
    if not isinstance(norm_before_gate, bool):
        raise TypeError(
            f"`norm_before_gate` must be True (RMSNorm(x) * silu(z): Qwen3-Next) or False (RMSNorm(x * silu(z)): "
            f"Mamba-2), got {norm_before_gate!r}. Both orders are in use: name the one your checkpoint was "
            "trained with."
        )
    bad_size = isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1
    if group_size is not None and bad_size:
        raise ValueError(f"`group_size` must be None (one group: the whole last axis) or a positive int, got "
                         f"{group_size!r}.")
    return norm_before_gate, group_size


def gated_normalize(
    x: jax.Array, gate: jax.Array, scale: jax.Array | None, norm_before_gate: bool, group_size: int | None,
    epsilon: float, mask: jax.Array | None, axis_name: Any = None, implementation: str = "auto", *,
    extreme_range: bool = False, scale_offset: float = 0.0, bias: jax.Array | None = None,
) -> jax.Array:
    """``y`` for checked inputs: ``x`` and ``gate`` floating arrays of one shape, ``scale`` (and equinox's
    ``bias``, added after the scale as mamba_ssm's) None or of x's rank over the last axis, ``mask`` None or of
    x's shape, the options checked. Output in ``result_type(x, gate)``."""
    c = x.shape[-1]
    g = c if group_size is None else group_size
    if c % g:
        raise ValueError(
            f"`group_size`={group_size} must divide the last axis of x ({c} features, shape {x.shape}); pick a "
            "divisor, or None for one group."
        )
    grouped = x.shape[:-1] + (c // g, g)
    out = validation.result_dtype(x, gate)
    silu = jax.nn.silu(gate.astype(validation.stats_dtype(out)))

    def norm(v: jax.Array) -> jax.Array:  # RMSNorm over each group of the last axis, in v's dtype
        # One group is the last axis itself: no (..., 1, C) view, which 16-bit input keeps at rank 3 (unmerged)
        # and XLA CPU then compiles several times slower (bfloat16 (2048, 4096) fwd+bwd: 180 ms against 45).
        shape, s, b = v.shape, scale, bias
        if g != c:
            shape = grouped
            s, b = (None if p is None else p.reshape(p.shape[:-1] + (c // g, g)) for p in (scale, bias))
        m = None if mask is None else mask.reshape(shape)
        y = normalize.normalize_layer(
            v.reshape(shape), s, b, (len(shape) - 1,), epsilon, m, axis_name, implementation, center=False,
            extreme_range=extreme_range, scale_offset=scale_offset,
        )
        return y.reshape(v.shape)

    if norm_before_gate:
        return (norm(x).astype(silu.dtype) * silu).astype(out)
    return norm((x.astype(silu.dtype) * silu).astype(out))


def gated_rms_norm(
    x: jax.Array,
    gate: jax.Array,
    scale: jax.Array | None = None,
    *,
    norm_before_gate: bool,
    group_size: int | None = None,
    epsilon: float = 1e-6,
    where: Any = None,
    axis_name: Any = None,
    implementation: str = "auto",
    extreme_range: bool = False,
    scale_offset: float = 0.0,
) -> jax.Array:
    r"""Gated RMS normalization over the last axis, in the order the caller names.

    .. math::
        \text{norm\_before\_gate=True:}\; y = \frac{x}{\text{rms}(x)} \cdot s \cdot \operatorname{silu}(z),
        \qquad \text{False:}\; y = \frac{x\,\operatorname{silu}(z)}{\text{rms}(x\,\operatorname{silu}(z))} \cdot s

    with ``rms`` over each group of ``group_size`` consecutive features (all of them by default) and
    :math:`s` = ``scale + scale_offset``.

    Args:
      x: floating array, features on the last axis.
      gate: floating array of ``x``'s shape, the gate ``z``.
      scale: None, or a floating array of shape ``(x.shape[-1],)`` (one per feature).
      norm_before_gate: keyword-only and required: True normalizes ``x`` and then gates (Qwen3-Next), False gates
        and then normalizes (Mamba-2).
      group_size: None (one group) or a positive int dividing ``x.shape[-1]``: the statistic of each group of
        that many consecutive features (Mamba-2's ``d_ssm / ngroups``).
      epsilon: non-negative float added to each mean of squares (1e-6; Mamba-2 uses 1e-5).
      where: optional mask of the statistics, broadcastable to ``x``, Keras's rules as :func:`jaxnorm.rms_norm`.
      axis_name, implementation, extreme_range, scale_offset: as :func:`jaxnorm.rms_norm`'s.

    Returns:
      ``y`` of ``x``'s shape in ``result_type(x, gate)``; the statistic in at least float32.

    Raises:
      TypeError: ``x``, ``gate`` or ``scale`` not floating; ``norm_before_gate`` not a bool (it has no default).
      ValueError: ``gate`` not of ``x``'s shape; ``scale`` not of ``(x.shape[-1],)``; ``group_size`` not dividing
        the features; the errors of :func:`jaxnorm.rms_norm`.

    Source: mamba_ssm's ``rmsnorm_fn(x, weight, bias, z, group_size, norm_before_gate)``; Qwen3-Next's
    ``Qwen3NextRMSNormGated``.

    Example:
      >>> import jax.numpy as jnp, jaxnorm
      >>> x, z = jnp.array([[3.0, 4.0]]), jnp.array([[10.0, 0.0]])
      >>> print(jaxnorm.gated_rms_norm(x, z, norm_before_gate=True, epsilon=0.0).round(2))  # silu(0) = 0
      [[8.48 0.  ]]
      >>> print(jaxnorm.gated_rms_norm(x, z, norm_before_gate=False, epsilon=0.0).round(3))
      [[1.414 0.   ]]
    """
    x = validation.check_float_array(x, "x")
    gate = check_gate(gate, x)
    norm_before_gate, group_size = check_options(norm_before_gate, group_size)
    validation.check_epsilon(epsilon)
    if scale is not None:
        scale = validation.axes_operand(scale, x.shape, (x.ndim - 1,), "scale", "last axis (the features)")
    mask = None if where is None else validation.broadcast_mask(where, x.shape, "where")
    return gated_normalize(
        x, gate, scale, norm_before_gate, group_size, epsilon, mask, axis_name,
        normalize.check_implementation(implementation),
        extreme_range=validation.check_bool(extreme_range, "extreme_range"),
        scale_offset=validation.check_scale_offset(scale_offset, scale is not None),
    )


def check_gate(gate: Any, x: jax.Array) -> jax.Array:
    """``gate`` as a floating array of ``x``'s shape (``TypeError``/``ValueError`` naming it otherwise)."""
    if gate is None:
        raise TypeError("`gate` must be an array of x's shape (the gate z of silu(z)), got None.")
    gate = validation.check_float_array(gate, "gate")
    if gate.shape != x.shape:
        raise ValueError(f"`gate` must have x's shape {x.shape}, got {gate.shape}.")
    return gate


@dataclasses.dataclass(frozen=True, eq=True, repr=False, kw_only=True)
class GatedRMSNorm(RMSNorm):
    r"""Gated RMS normalization as a pure spec: ``init`` and ``apply(params, state, x, *, gate)``.

    .. math::
        \text{norm\_before\_gate=True:}\; y = \text{RMSNorm}(x)\operatorname{silu}(z) \qquad
        \text{False:}\; y = \text{RMSNorm}(x \operatorname{silu}(z))

    Attributes:
      norm_before_gate: required bool, the order (True: Qwen3-Next; False: Mamba-2), as
        :func:`jaxnorm.gated_rms_norm`.
      group_size: None or a positive int, the statistic's groups of consecutive features (None: one group).
      axis: -1 only (the features; the default), kept from :class:`RMSNorm`.
      epsilon, use_scale, scale_init, param_dtype, scale_regularizer, scale_constraint, trainable,
        extreme_range, implementation, scale_offset: as :class:`RMSNorm`'s (the same params, ``scale`` of
        shape ``(x.shape[-1],)``).

    ``init(key, x) -> (params, {})`` as :class:`RMSNorm`'s. ``apply(params, state, x, *, gate, training=None,
    mask=None) -> (y, {})``, ``gate`` keyword-only and required, of ``x``'s shape.

    Keras has no such layer: :meth:`to_keras_config` raises; ``get_config``/``from_config`` round-trip.

    Source: Mamba-2's ``RMSNormGated``, Qwen3-Next's ``Qwen3NextRMSNormGated``.

    Example:
      >>> import jax, jax.numpy as jnp, jaxnorm
      >>> norm = jaxnorm.GatedRMSNorm(norm_before_gate=False, epsilon=0.0)
      >>> x, z = jnp.array([[3.0, 4.0]]), jnp.array([[10.0, 0.0]])
      >>> params, state = norm.init(jax.random.key(0), x)
      >>> print(norm.apply(params, state, x, gate=z)[0].round(3))
      [[1.414 0.   ]]
    """

    norm_before_gate: bool
    group_size: int | None = None

    KERAS: ClassVar[Any] = None  # Keras has no gated RMSNorm

    def __post_init__(self) -> None:
        super().__post_init__()
        check_options(self.norm_before_gate, self.group_size)
        if self.axis not in (-1,):
            raise ValueError(
                f"GatedRMSNorm normalizes the last axis (the features, with the gate's groups), got axis="
                f"{self.axis!r}. Move the features last (jnp.moveaxis) and use axis=-1."
            )

    def apply(
        self, params: Tree, state: Tree, x: jax.Array, *, gate: jax.Array | None = None,
        training: bool | None = None, mask: jax.Array | None = None,
    ) -> tuple[jax.Array, Tree]:
        """Normalizes and gates ``x`` (in ``norm_before_gate``'s order).

        Args:
          params: ``{'scale'}`` from :meth:`init` (``{}`` with ``use_scale=False``).
          state: ``{}``.
          x: floating array, features on the last axis, matching ``params``.
          gate: keyword-only, required: the gate ``z``, a floating array of ``x``'s shape.
          training: optional bool, ignored (as every per-example layer).
          mask: optional mask of the statistics, Keras's rules.

        Returns:
          ``(y, {})``, ``y`` of ``x``'s shape in ``result_type(x, gate)``.

        Raises:
          TypeError: ``x`` or ``gate`` not floating, or ``gate`` missing; ``training`` not a bool.
          ValueError: ``gate`` not of ``x``'s shape; ``group_size`` not dividing the features; ``params`` or
            ``state`` not matching.
        """
        x, axes, params = self._per_example_inputs(params, state, x, training)
        gate = check_gate(gate, x)
        mask = self._checked_mask(mask, x)
        scale, _ = self._expanded(params, x.ndim, axes)
        y = gated_normalize(x, gate, scale, self.norm_before_gate, self.group_size, self.epsilon, mask, None,
                            self.implementation, extreme_range=self.extreme_range, scale_offset=self.scale_offset)
        return y, {}

