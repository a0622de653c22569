"""The gated RMSNorm of :mod:`jaxnorm.equinox` (``GatedRMSNorm``): no equinox peer; an :class:`RMSNorm` (equinox's
arguments and fields) gated by ``silu(gate)`` in the order the caller names, as :func:`jaxnorm.gated_rms_norm`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
from equinox import field

from jaxnorm._src import gated, validation
from jaxnorm.equinox.normalization import RMSNorm, _check_shape, _fit, _input


class GatedRMSNorm(RMSNorm):
    r"""Gated RMS normalization of one example's features: ``RMSNorm(x) * silu(z)`` (``norm_before_gate=True``,
    Qwen3-Next) or ``RMSNorm(x * silu(z))`` (False, Mamba-2); ``weight`` and ``bias`` are part of the RMSNorm.

    Args:
      shape: int or 1-tuple, the number of features (``x`` is one example's feature vector; ``jax.vmap`` over
        tokens).
      eps, use_weight, use_bias, dtype, and the other keyword arguments: those of :class:`jaxnorm.equinox.RMSNorm`.
      norm_before_gate: keyword-only bool, required: the order.
      group_size: keyword-only, None (one group) or a positive int dividing the features.

    Call ``__call__(x, gate, *, key=None, mask=None)``: ``gate`` of ``x``'s shape.

    Returns:
      ``y`` of ``x``'s shape in ``result_type(x, gate)``.

    Raises:
      ValueError: ``x.shape != shape``, ``shape`` not 1-D; ``gate`` not of ``x``'s shape; ``group_size`` not
      dividing the features. TypeError: ``norm_before_gate`` not a bool.

    Source: Mamba-2's ``RMSNormGated`` (mamba_ssm's ``rmsnorm_fn``: ``weight``, then ``bias``, then the gate),
    Qwen3-Next's ``Qwen3NextRMSNormGated``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxnorm import equinox as jeqx
      >>> norm = jeqx.GatedRMSNorm(2, eps=0.0, use_bias=False, norm_before_gate=False)
      >>> print(norm(jnp.array([3.0, 4.0]), jnp.array([10.0, 0.0])).round(3))
      [1.414 0.   ]
    """

    norm_before_gate: bool = field(static=True)
    group_size: int | None = field(static=True)

    def __init__(
        self, shape: int | Sequence[int], eps: float = 1e-5, use_weight: bool = True, use_bias: bool = True,
        dtype: Any = None, *, norm_before_gate: bool, group_size: int | None = None, **kwargs: Any,
    ):
        super().__init__(shape, eps, use_weight, use_bias, dtype, **kwargs)
        if len(self.shape) != 1:
            raise ValueError(f"GatedRMSNorm takes one example's features (a 1-D shape), got shape={self.shape}; "
                             "jax.vmap it over the other axes.")
        self.norm_before_gate, self.group_size = gated.check_options(norm_before_gate, group_size)

    def __call__(  # type: ignore[override]
        self, x: jax.Array, gate: jax.Array, *, key: Any = None, mask: jax.Array | None = None
    ) -> jax.Array:
        """Normalizes and gates ``x``; see the class docstring."""
        del key
        x = _input(x)
        _check_shape(x, self.shape, "GatedRMSNorm", "gated_rms_norm")
        fix = "Build the layer with this shape."
        weight, bias = (None if p is None else _fit(p, x.shape, f"GatedRMSNorm.{n}", fix)
                        for n, p in (("weight", self.weight), ("bias", self.bias)))
        gate = gated.check_gate(gate, x)
        compute = validation.stats_dtype(x.dtype)  # equinox: result_type(x, float32)
        y = gated.gated_normalize(
            x.astype(compute), gate, weight, self.norm_before_gate, self.group_size, self.eps,
            validation.numpy_mask(mask, x), extreme_range=self.extreme_range, scale_offset=self.scale_offset,
            bias=bias,
        )
        return y.astype(validation.result_dtype(x, gate))
