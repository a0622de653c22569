"""The normalization-free point-wise layers of :mod:`jaxnorm.equinox` (``DyT``, ``Derf``): no equinox peer; they
take the place of ``equinox.nn.LayerNorm`` with its conventions (``shape``, ``weight``, ``bias``, one example per
call, an optional ``state`` passed through)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from equinox import field

from jaxnorm._src import pointwise, validation
from jaxnorm.equinox.normalization import _check_shape, _fit, _input, _sentinel, _with_state


class _Dynamic(eqx.Module):
    """DyT's and Derf's fields and call (the formula is the spec's, :mod:`jaxnorm._src.pointwise`)."""

    shape: tuple[int, ...] = field(static=True)
    use_weight: bool = field(static=True)
    use_bias: bool = field(static=True)
    alpha: jax.Array
    shift: jax.Array | None
    weight: jax.Array | None
    bias: jax.Array | None

    _ERF: ClassVar[bool] = False

    def __init__(self, shape: int | Sequence[int], alpha_init_value: float = 0.5, use_weight: bool = True,
                 use_bias: bool = True, dtype: Any = None, *, shift_init_value: float | None = None):
        if not self._ERF and shift_init_value is not None:
            raise TypeError(f"{type(self).__name__} has no shift (shift_init_value={shift_init_value!r}); use Derf.")
        self.shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.use_weight, self.use_bias = use_weight, use_bias
        self.alpha = jnp.full((), alpha_init_value, dtype)
        self.shift = jnp.full((), shift_init_value or 0.0, dtype) if self._ERF else None
        self.weight = jnp.ones(self.shape, dtype=dtype) if use_weight else None
        self.bias = jnp.zeros(self.shape, dtype=dtype) if use_bias else None

    def __call__(
        self, x: jax.Array, state: Any = _sentinel, *, key: Any = None, mask: jax.Array | None = None
    ) -> Any:
        """Maps each value of ``x``; see the class docstring."""
        del key
        x = _input(x)
        owner = type(self).__name__
        _check_shape(x, self.shape, owner, owner.lower())
        fix = "Build the layer with this shape."
        weight, bias = (None if p is None else _fit(p, x.shape, f"{owner}.{n}", fix)
                        for n, p in (("weight", self.weight), ("bias", self.bias)))
        m = validation.numpy_mask(mask, x)
        m = None if m is None else jnp.broadcast_to(m, x.shape)
        y = pointwise.pointwise(x, self.alpha, self.shift, weight, bias, erf=self._ERF, mask=m)
        return _with_state(y, state)


class DyT(_Dynamic):
    r"""Dynamic Tanh (Zhu et al. 2025), an equinox layer in ``equinox.nn.LayerNorm``'s place:
    :math:`y = \text{weight} \cdot \tanh(\alpha x) + \text{bias}`, as :class:`jaxnorm.DyT`.

    Args:
      shape: int or sequence of ints, the shape of ``x`` (one example; ``jax.vmap`` over a batch).
      alpha_init_value: float, the learnable scalar :math:`\alpha` at initialization (0.5).
      use_weight, use_bias: learn ``weight`` (ones of ``shape``) and ``bias`` (zeros of ``shape``) (True).
      dtype: dtype of the parameters (None: float32, float64 in 64-bit mode).
      shift_init_value: :class:`Derf`'s (None here; giving it raises ``TypeError``).

    Call ``__call__(x, state=sentinel, *, key=None, mask=None)``: ``x`` of shape ``shape``; ``mask`` (broadcastable
    to ``x``) changes no value, but no gradient flows through its masked-out positions. Returns ``y`` of ``x``'s
    shape and dtype (computed in at least float32), or ``(y, state)`` when ``state`` is given.

    Raises:
      ValueError: ``x.shape != shape``. TypeError: complex ``x``.

    Source: Zhu, Chen, He, LeCun & Liu 2025, "Transformers without Normalization"; equinox has no DyT.

    Example:
      >>> import equinox as eqx, jax.numpy as jnp
      >>> from jaxnorm import equinox as jeqx
      >>> dyt = eqx.filter_jit(jeqx.DyT(3))
      >>> print(dyt(jnp.array([0.0, 2.0, -200.0])).round(4))
      [ 0.      0.7616 -1.    ]
    """


class Derf(_Dynamic):
    r"""Dynamic erf (Chen et al. 2025), an equinox layer in ``equinox.nn.LayerNorm``'s place:
    :math:`y = \text{weight} \cdot \operatorname{erf}(\alpha x + s) + \text{bias}`, as :class:`jaxnorm.Derf`.

    Args: :class:`DyT`'s, with ``shift_init_value`` (keyword, float or None: the learnable scalar :math:`s` at
    initialization, None meaning 0), the field ``shift``. Call, returns and raises as :class:`DyT`.

    Source: Chen, Lu, Zhu, Sun & Liu 2025, "Stronger Normalization-Free Transformers", arXiv 2512.10938.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxnorm import equinox as jeqx
      >>> print(jeqx.Derf(3, alpha_init_value=1.0)(jnp.array([0.0, 1.0, 100.0])).round(4))
      [0.     0.8427 1.    ]
    """

    _ERF: ClassVar[bool] = True
