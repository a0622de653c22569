"""The weight reparametrizations of :mod:`jaxnorm.nnx` (``SpectralNorm``, ``WeightNorm``)."""

from __future__ import annotations

import typing as tp

import jax.numpy as jnp
from flax import nnx
from flax.nnx import rnglib
from flax.nnx.module import first_from
from flax.nnx.nn import dtypes, initializers
from flax.typing import Axes, Dtype, Initializer, PromoteDtypeFn

from jaxnorm._src import reparam, validation


_KERNEL_FILTER = nnx.PathContains("kernel")  # Flax's default of WeightNorm's variable_filter

_NO_UPDATE_STATS = """No `update_stats` argument was provided to SpectralNorm
        as either a __call__ argument or __init__ argument."""


class SpectralNorm(nnx.Module):
    r"""Spectral normalization of a wrapped layer's weights, a drop-in for ``flax.nnx.SpectralNorm``.

    On each call, every ``nnx.Param`` of rank >= 2 of ``layer_instance`` (kernels; biases are left alone) is
    divided by :math:`\sigma \approx \sigma_{\max}` from ``n_steps`` power-iteration steps started at its
    stored ``u`` (:func:`jaxnorm.spectral_normalize`; kernels of rank > 2 flattened to
    ``(prod(shape[:-1]), shape[-1])``), then ``layer_instance(x)`` is called.

    .. warning::
      As ``flax.nnx.SpectralNorm`` (Flax 0.12.8), the normalized kernel is written back into
      ``layer_instance``'s ``Param`` in place (google/flax#5576), so the next call normalizes an already
      normalized kernel (its sigma is then ~1) and an optimizer step moves ``w / sigma``, not ``w``. This
      class reproduces that, to stay a drop-in; :class:`jaxnorm.SpectralNorm` and
      :class:`jaxnorm.linen.SpectralNorm` leave the weight as it is, as in the paper.

    Args:
      layer_instance: the ``nnx.Module`` whose weights are normalized.
      n_steps: power-iteration steps per call (1); < 1 leaves the weights unchanged.
      epsilon: float added to the squared norms in the power iteration (1e-12).
      dtype: dtype of the normalized weights; None: ``result_type(w, u)``, as Flax.
      param_dtype: dtype of ``u`` and ``sigma`` (float32).
      error_on_non_matrix: raise for weights of rank > 2 instead of flattening them (False).
      update_stats: the default of ``__call__``'s ``update_stats`` (True); ``model.eval()`` sets it False and
        ``model.train()`` True, through the attribute ``use_running_average = not update_stats``.
      rngs: ``nnx.Rngs``; one ``rngs.params()`` draw per normalized weight, in state order, as Flax.

    Call ``__call__(x, update_stats=None)``: True stores the iterated ``u`` and ``sigma``; False iterates
    from the stored ``u`` without storing; None uses the constructor's setting.

    Returns:
      ``layer_instance(x)`` computed with the normalized weights.

    Variables:
      ``self.batch_stats``: a dict ``{(*param_path, 'u'): nnx.BatchStat (1, w.shape[-1]),
      (*param_path, 'sigma'): nnx.BatchStat ()}`` of ``param_dtype``, ``u`` drawn from
      ``nnx.initializers.normal()`` (stddev 0.01) and ``sigma`` ones, exactly Flax's state.

    Raises:
      ValueError: a weight of rank > 2 with ``error_on_non_matrix=True``.
      RuntimeError: the wrapped layer gained a weight after construction (Flax's check).

    Source: ``flax.nnx.SpectralNorm`` (Flax 0.12): same arguments, defaults, state, rng draws and arithmetic
    (the math is :func:`jaxnorm.spectral_normalize`); Miyato et al. 2018, "Spectral Normalization for
    Generative Adversarial Networks".

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from jaxnorm import nnx as jnnx
      >>> rngs = nnx.Rngs(0)
      >>> sn = jnnx.SpectralNorm(nnx.Linear(4, 3, rngs=rngs), rngs=rngs)
      >>> sorted(nnx.to_pure_dict(nnx.state(sn, nnx.BatchStat))['batch_stats'])
      [('kernel', 'sigma'), ('kernel', 'u')]
      >>> sn(jnp.ones((2, 4)), update_stats=True).shape
      (2, 3)
    """

    def __init__(
        self,
        layer_instance: nnx.Module,
        *,
        n_steps: int = 1,
        epsilon: float = 1e-12,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        error_on_non_matrix: bool = False,
        update_stats: bool = True,
        rngs: rnglib.Rngs,
    ):
        self.layer_instance = layer_instance
        self.n_steps = n_steps
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.error_on_non_matrix = error_on_non_matrix
        # Flax's convention, so that model.train() / model.eval() flip it: update_stats = not use_running_average.
        self.use_running_average = not update_stats

        batch_stats: dict[tuple, nnx.BatchStat] = {}
        for path, param in nnx.to_flat_state(nnx.state(self.layer_instance, nnx.Param)):
            u_shape = self._u_shape(param[...].shape)
            if u_shape is None:
                continue
            key = rngs.params()
            batch_stats[(*path, "u")] = nnx.BatchStat(initializers.normal()(key, u_shape, self.param_dtype))
            batch_stats[(*path, "sigma")] = nnx.BatchStat(initializers.ones(key, (), self.param_dtype))
        self.batch_stats = nnx.data(batch_stats)

    def _u_shape(self, shape: tuple[int, ...]) -> tuple[int, int] | None:
        """``u``'s shape for a weight, None where Flax leaves it alone (vectors, scalars, ``n_steps < 1``)."""
        if len(shape) <= 1 or self.n_steps < 1:
            return None
        lead = f"Layer instance parameter is {len(shape)}D but error_on_non_matrix is True: "
        return reparam.spectral_u_shape(shape, self.error_on_non_matrix, lead=lead)

    def __call__(self, x: tp.Any, update_stats: bool | None = None) -> tp.Any:
        """Normalizes the weights of ``layer_instance`` (in place, as Flax) and calls it on ``x``."""
        update_stats = first_from(update_stats, not self.use_running_average, error_msg=_NO_UPDATE_STATS)
        for path, param in nnx.to_flat_state(nnx.state(self.layer_instance, nnx.Param)):
            self._spectral_normalize_inplace(path, param, update_stats)
        return self.layer_instance(x)

    def _spectral_normalize_inplace(
        self, path: tuple[tp.Any, ...], param: nnx.Variable, update_stats: bool
    ) -> None:
        u_shape = self._u_shape(param[...].shape)
        if u_shape is None:
            return
        u_stat, sigma_stat = (self.batch_stats.get((*path, name)) for name in ("u", "sigma"))
        if u_stat is None or sigma_stat is None:
            raise RuntimeError(
                f"Could not find the u and sigma batch stats of the param {path} in the batch stats dict. "
                "Parameters of the layer_instance should not change!"
            )
        fix = "Merge a state saved for this wrapped layer, or re-create the SpectralNorm."
        name = f"SpectralNorm.batch_stats[{(*path, 'u')!r}]"
        validation.fit_variable(u_stat[...], u_shape, name, fix, exact=True)
        out_dtype = dtypes.canonicalize_dtype(param[...], u_stat[...], dtype=self.dtype)
        w_bar, u, sigma = reparam.spectral_normalize(
            param[...], u_stat[...], n_steps=self.n_steps, epsilon=self.epsilon,
            error_on_non_matrix=self.error_on_non_matrix, dtype=out_dtype,
        )
        if update_stats:
            u_stat[...] = u
            sigma_stat[...] = sigma
        param[...] = w_bar


class WeightNorm(nnx.Module):
    r"""Weight normalization of a wrapped layer's weights, a drop-in for ``flax.nnx.WeightNorm``.

    On each call, every variable of ``layer_instance`` selected by ``variable_filter`` is replaced by

    .. math::
        \bar w = \frac{w}{\sqrt{\sum_{\text{non-feature axes}} w^2 + \epsilon}} \cdot \text{scale}

    (:func:`jaxnorm.weight_normalize`), then ``layer_instance(x, *args, **kwargs)`` is called.

    .. warning::
      As ``flax.nnx.WeightNorm`` (Flax 0.12.8), :math:`\bar w` is written back into ``layer_instance``'s
      variable in place (google/flax#5576): the optimizer then steps :math:`\bar w`, not the paper's ``v``.
      Reproduced here to stay a drop-in; :class:`jaxnorm.WeightNorm` and :class:`jaxnorm.linen.WeightNorm`
      keep ``v`` as the parameter.

    Args:
      layer_instance: the ``nnx.Module`` whose weights are normalized.
      feature_axes: int or sequence of ints (-1), or None: one norm over the whole variable, scalar scale.
      use_scale: keep a ``scale`` per feature (True).
      scale_init: initializer of the scales (ones), called as Flax calls it:
        ``scale_init(rngs['params'], shape)`` (its default dtype; ``param_dtype`` is not passed).
      epsilon: float added to the squared norm (1e-12).
      dtype: dtype of the normalized weights; None: ``result_type(w, scale)``, as Flax.
      param_dtype: stored, as in Flax (Flax does not pass it to ``scale_init``).
      variable_filter: an ``nnx`` filter of the variables to normalize (``nnx.PathContains('kernel')``).
      promote_dtype: stored, as in Flax (which does not call it).
      rngs: ``nnx.Rngs``.

    Call ``__call__(x, *args, **kwargs)``: the arguments of ``layer_instance``.

    Returns:
      ``layer_instance(x, *args, **kwargs)`` computed with the normalized weights.

    Variables:
      ``self.scales``: a dict ``{param_path: array}`` of plain arrays of shape
      ``[w.shape[a] for a in feature_axes]`` (None when ``use_scale=False``), exactly Flax's state.

    Raises:
      ValueError: a feature axis out of range for a selected variable.
      RuntimeError: a selected variable has no scale (the wrapped layer changed after construction).

    Source: ``flax.nnx.WeightNorm`` (Flax 0.12): same arguments, defaults and state; the arithmetic is
    :func:`jaxnorm.weight_normalize` (Flax's for float32 weights); Salimans & Kingma 2016, "Weight
    Normalization".

    Example:
      >>> import jax.numpy as jnp, numpy as np
      >>> from flax import nnx
      >>> from jaxnorm import nnx as jnnx
      >>> rngs = nnx.Rngs(0)
      >>> wn = jnnx.WeightNorm(nnx.Linear(4, 3, rngs=rngs), rngs=rngs)
      >>> wn.scales
      {('kernel',): Array([1., 1., 1.], dtype=float32)}
      >>> y = wn(jnp.ones((2, 4)))
      >>> print(np.linalg.norm(wn.layer_instance.kernel[...], axis=0).round(5))  # written back, as Flax
      [1. 1. 1.]
    """

    def __init__(
        self,
        layer_instance: nnx.Module,
        *,
        feature_axes: Axes | None = -1,
        use_scale: bool = True,
        scale_init: Initializer = initializers.ones,
        epsilon: float = 1e-12,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        variable_filter: nnx.filterlib.Filter = _KERNEL_FILTER,
        promote_dtype: PromoteDtypeFn = dtypes.promote_dtype,
        rngs: rnglib.Rngs,
    ):
        self.layer_instance = layer_instance
        self.feature_axes = () if feature_axes is None else feature_axes
        self.use_scale = use_scale
        self.scale_init = scale_init
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.variable_filter = nnx.filterlib.to_predicate(variable_filter)
        self.promote_dtype = promote_dtype
        self.scales: dict | None = None
        if use_scale:
            state = nnx.state(self.layer_instance, nnx.Param)
            self.scales = nnx.data({
                path: scale_init(rngs["params"], self._scale_shape(param[...].shape))
                for path, param in nnx.to_flat_state(state)
                if self.variable_filter(path, param)
            })

    def _scale_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        feature, _ = reparam.weight_norm_axes(len(shape), self.feature_axes)
        return tuple(shape[a] for a in feature)

    def __call__(self, x: tp.Any, *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        """Normalizes the selected weights of ``layer_instance`` (in place, as Flax) and calls it."""
        for path, param in nnx.to_flat_state(nnx.state(self.layer_instance)):
            self._weightnorm_inplace(path, param)
        return self.layer_instance(x, *args, **kwargs)

    def _weightnorm_inplace(self, path: tuple[tp.Any, ...], param: nnx.Variable) -> None:
        if not self.variable_filter(path, param):
            return
        scale = None
        if self.use_scale:
            scales = self.scales if self.scales is not None else {}  # set in __init__ when use_scale
            if path not in scales:
                raise RuntimeError(
                    f"Could not find the scale corresponding to the param {path} in scales dict. Parameters of "
                    "the layer_instance should not change!"
                )
            scale = scales[path]
        value = param[...]
        out_dtype = dtypes.canonicalize_dtype(value, scale, dtype=self.dtype)
        feature, _ = reparam.weight_norm_axes(value.ndim, self.feature_axes)
        if scale is not None:
            scale = validation.fit_variable(
                scale, tuple(value.shape[a] for a in feature), f"WeightNorm.scales[{path!r}]",
                "Merge a state saved for this wrapped layer, or re-create the WeightNorm.", exact=True,
            )
        param.set_value(
            reparam.weight_normalize(value, scale, feature_axes=feature, epsilon=self.epsilon, dtype=out_dtype)
        )
