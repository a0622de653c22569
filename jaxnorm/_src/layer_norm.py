"""LayerNorm as a pure init/apply spec with Keras semantics."""

from __future__ import annotations

import dataclasses

import jax

from jaxnorm._src import keras_config, normalize, stats, validation
from jaxnorm._src.layer import Affine, Statistics
from jaxnorm._src.per_example import PerExample


@dataclasses.dataclass(frozen=True, eq=True, repr=False)
class LayerNorm(Affine, Statistics, PerExample):
    r"""Layer normalization (Ba, Kiros & Hinton 2016) as a pure spec: ``init`` and ``apply``.

    Each example is normalized by its own statistics over ``axis``; ``scale`` and ``bias`` span those axes:

    .. math::
        y = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}}\,(\text{scale} + \text{scale\_offset}) + \text{bias}, \qquad
        \mu, \sigma^2 = \text{moments}(x, \text{axis})

    LayerNorm has no moving statistics: its state is ``{}`` and training and inference compute the same thing.

    The fields after ``epsilon`` are keyword-only.

    Attributes:
      axis: int or sequence of ints, the normalized axes (default -1, the last; Keras's ``axis``).
      epsilon: float >= 0 added to the variance (Keras default 1e-3; Flax uses 1e-6, PyTorch 1e-5).
      use_scale: learn a multiplier ``scale`` (Keras ``scale``/``gamma``).
      use_bias: learn an offset ``bias`` (Keras ``center``/``beta``).
      scale_init, bias_init: initializers (default 'ones' and 'zeros'): a Keras name, a Keras initializer
        config dict, or a JAX initializer ``(key, shape, dtype) -> array``.
      param_dtype: dtype of ``scale`` and ``bias`` (default float32).
      rms_scaling: Keras's deprecated ``rms_scaling``, kept so that Keras configs and weights load:
        :math:`y = x / \sqrt{\sigma^2 + \epsilon} \cdot \text{scale}` (divides by the standard deviation, not
        the root mean square, and does not center); ``scale`` is always created, ``bias`` never. For RMS
        normalization proper use an RMSNorm layer.
      scale_regularizer, bias_regularizer: None, a Keras regularizer name ('l1', 'l2', 'l1_l2') or config
        dict, or a callable ``w -> scalar``; summed by :meth:`regularization_loss`.
      scale_constraint, bias_constraint: None, a Keras constraint name ('non_neg', 'max_norm',
        'min_max_norm', 'unit_norm') or config dict, or a callable ``w -> w``; applied by
        :meth:`apply_constraints` after an optimizer step.
      trainable: False freezes the params as Keras's ``trainable=False`` does: no gradient (``stop_gradient``),
        no regularization loss, no constraint; exclude them from the optimizer with
        :func:`jaxnorm.trainable_mask`.
      extreme_range: False (default): the statistics are exact while deviations from the mean stay below
        ``2**50`` and the variance above about ``2**-100`` (or hidden by ``epsilon``); True: exact at any finite
        float32 magnitude, for one more pass over ``x`` (:func:`jaxnorm.moments`; not written to Keras configs,
        whose layers compute the default).
      implementation: ``'auto'`` (default), ``'xla'`` or ``'pallas'``, as in :func:`jaxnorm.layer_norm`
        (a performance choice: same numbers to float32 rounding; not written to Keras configs).
      scale_offset: float added to ``scale`` before it multiplies (default 0.0): 1.0 reads a zero-centred
        ``scale`` (``gamma - 1``, TransformerEngine's ``zero_centered_gamma``), as in
        :func:`jaxnorm.layer_norm`; pair it with ``scale_init='zeros'`` to start at the identity. Keras has no
        such key: only 0.0 writes a Keras config.
      dtype_policy: the Keras dtype policy of the layer this spec was converted from: None ('float32', the
        default), 'mixed_float16' or 'mixed_bfloat16'; written back as Keras's ``dtype`` by
        :meth:`to_keras_config` and :func:`jaxnorm.interop.to_keras`. It changes no number here: the output has
        the input's dtype and the statistics are float32, which is what the policy computes on half input.

    ``init(key, x) -> (params, {})`` with ``params = {'scale', 'bias'}`` of shape
    ``[x.shape[a] for a in sorted(axis)]``, the tree of ``flax.linen.LayerNorm``'s ``variables['params']``.

    ``apply(params, state, x, *, training=None, mask=None) -> (y, state)``; ``training`` is accepted so that
    generic code can drive every layer the same way, and changes nothing.

    Source: Ba, Kiros & Hinton 2016, "Layer Normalization"; semantics and defaults of
    ``keras.layers.LayerNormalization``, tree layout of ``flax.linen.LayerNorm``.

    Example:
      >>> import jax, jax.numpy as jnp, jaxnorm
      >>> ln = jaxnorm.LayerNorm(epsilon=0.0)
      >>> x = jnp.array([[1.0, 3.0], [10.0, 30.0]])
      >>> params, state = ln.init(jax.random.key(0), x)
      >>> y, _ = ln.apply(params, state, x)
      >>> print(y)
      [[-1.  1.]
       [-1.  1.]]
    """

    axis: int | tuple[int, ...] = -1
    epsilon: float = 1e-3
    _: dataclasses.KW_ONLY
    rms_scaling: bool = False
    implementation: str = "auto"
    scale_offset: float = 0.0

    KERAS = keras_config.KerasRecord(
        "LayerNormalization",
        renamed={**keras_config.AFFINE_RENAMES, "rms_scaling": "rms_scaling"},
        equivalent={"scale_offset": keras_config.NO_SCALE_OFFSET},
        params=keras_config.AFFINE_WEIGHTS,
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "axis", validation.check_axes_static(self.axis, "axis"))
        validation.check_bool(self.rms_scaling, "rms_scaling")
        object.__setattr__(self, "scale_offset", validation.check_scale_offset(self.scale_offset, self._has_scale))
        normalize.check_implementation(self.implementation)
        self._post_init_common()

    @property
    def _has_scale(self) -> bool:
        return self.use_scale or self.rms_scaling  # Keras creates gamma for rms_scaling

    @property
    def _has_bias(self) -> bool:
        return self.use_bias and not self.rms_scaling

    def _normalize(
        self, params: dict[str, jax.Array], x: jax.Array, axes: tuple[int, ...], mask: jax.Array | None
    ) -> jax.Array:
        if self.rms_scaling:  # Keras's deprecated rms_scaling: x * rsqrt(var + eps) * scale, no centering
            # The kernel's statistics in its own units (x * q, rstd / q), so extreme_range holds here too.
            st = stats.normalizer(x, axes, mask, None, self.epsilon, extreme_range=self.extreme_range)
            keep = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
            scale = validation.expand_to_rank(params["scale"], x.ndim, axes).astype(st.rstd_q.dtype)
            inv = st.rstd_q.reshape(keep) * (scale + self.scale_offset if self.scale_offset else scale)
            return normalize.affine(x, None if st.q is None else st.q.reshape(keep), 0, inv, None, mask)
        scale, bias = self._expanded(params, x.ndim, axes)
        return normalize.normalize_layer(x, scale, bias, axes, self.epsilon, mask, None, self.implementation,
                                         extreme_range=self.extreme_range, scale_offset=self.scale_offset)
