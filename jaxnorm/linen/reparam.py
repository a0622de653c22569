"""The weight reparametrizations of :mod:`jaxnorm.linen` (``SpectralNorm``, ``WeightNorm``)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable
from typing import Any, cast

import jax
import jax.numpy as jnp
from flax.linen import dtypes, module, transforms
from flax.typing import Axes, Dtype, Initializer
from jax.nn import initializers
from jax.typing import ArrayLike

from jaxnorm._src import reparam, validation


def _reparam_name(mdl: module.Module, path: tuple[Any, ...]) -> str:
    """Flax's variable name for a wrapped variable: ``'<layer name>/<key>/<key>'`` (collection key dropped)."""
    return mdl.layer_instance.name + "/" + "/".join(str(k.key) for k in path[1:])


class SpectralNorm(module.Module):
    r"""Spectral normalization of a wrapped layer's weights, a drop-in for ``flax.linen.SpectralNorm``.

    Every variable of rank >= 2 of ``layer_instance`` (kernels; biases are left alone) is replaced, for the
    call, by :math:`w / \sigma` with :math:`\sigma \approx \sigma_{\max}` from ``n_steps`` power-iteration
    steps (:func:`jaxnorm.spectral_normalize`; kernels of rank > 2 are flattened to
    ``(prod(shape[:-1]), shape[-1])``). ``apply`` leaves the wrapped layer's ``params`` as they are (the
    normalization is recomputed on each call, as in the paper); ``init``, as Flax's, returns the normalized
    initial kernel as the kernel's param (``nn.map_variables`` stores what it maps at init), in the dtype of
    the normalized weights.

    Attributes:
      layer_instance: the ``flax.linen.Module`` whose weights are normalized.
      n_steps: power-iteration steps per call (1); < 1 leaves the weights unchanged.
      epsilon: float added to the squared norms in the power iteration (1e-12).
      dtype: dtype of the normalized weights; None: ``result_type(w, u)``, as Flax.
      param_dtype: dtype of ``u`` and ``sigma`` (float32).
      error_on_non_matrix: raise for weights of rank > 2 instead of flattening them (False).
      collection_name: the collection of ``u`` and ``sigma`` ('batch_stats').

    Call ``__call__(*args, update_stats, **kwargs)``: the arguments of ``layer_instance``, plus
    ``update_stats`` (bool, required): True stores the iterated ``u`` and ``sigma`` (needs
    ``mutable=[collection_name]``); False iterates from the stored ``u`` without storing anything.

    Returns:
      ``layer_instance(*args, **kwargs)`` computed with the normalized weights.

    Variables:
      ``collection_name``: ``'<layer name>/<variable path>/u'`` of shape ``(1, w.shape[-1])`` (``N(0, 1)`` from
      ``make_rng('params')``) and ``'<layer name>/<variable path>/sigma'`` (ones, shape ``()``), both of
      ``param_dtype``, for each normalized weight, e.g. ``batch_stats['SpectralNorm_0']['Dense_1/kernel/u']``;
      the wrapped layer's variables unchanged, where Flax puts them.

    Raises:
      ValueError: a weight of rank > 2 with ``error_on_non_matrix=True``.

    Source: ``flax.linen.SpectralNorm`` (Flax 0.12): same fields, defaults, variable names, rng draws and
    arithmetic (the variables are intercepted with Flax's ``nn.map_variables``, the math is jaxnorm's);
    Miyato et al. 2018, "Spectral Normalization for Generative Adversarial Networks".

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import linen as nn
      >>> from jaxnorm import linen as jnn
      >>> sn = jnn.SpectralNorm(nn.Dense(3))
      >>> x = jnp.ones((2, 4))
      >>> variables = sn.init(jax.random.key(0), x, update_stats=False)
      >>> jax.tree.map(jnp.shape, variables)  # doctest: +NORMALIZE_WHITESPACE
      {'batch_stats': {'layer_instance/kernel/sigma': (), 'layer_instance/kernel/u': (1, 3)},
       'params': {'layer_instance': {'bias': (3,), 'kernel': (4, 3)}}}
      >>> y, updates = sn.apply(variables, x, update_stats=True, mutable=['batch_stats'])
      >>> y.shape
      (2, 3)
    """

    layer_instance: module.Module
    n_steps: int = 1
    epsilon: float = 1e-12
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    error_on_non_matrix: bool = False
    collection_name: str = "batch_stats"

    @module.compact
    def __call__(self, *args: Any, update_stats: bool, **kwargs: Any) -> Any:
        """Calls ``layer_instance`` with spectrally normalized weights; see the class docstring."""

        def layer_forward(layer_instance: module.Module) -> Any:
            return layer_instance(*args, **kwargs)

        normalize = functools.partial(self._spectral_normalize, update_stats=update_stats)
        return transforms.map_variables(
            layer_forward,
            trans_in_fn=lambda vs: jax.tree_util.tree_map_with_path(normalize, vs),
            init=self.is_initializing(),
            mutable=True,
        )(self.layer_instance)

    def _spectral_normalize(self, path: tuple[Any, ...], vs: ArrayLike, update_stats: bool) -> jax.Array:
        """One variable of the wrapped layer: its ``u``/``sigma`` created and updated as Flax does."""
        value = jnp.asarray(vs)
        if value.ndim <= 1 or self.n_steps < 1:  # Flax leaves vectors, scalars (and n_steps=0) alone
            return value
        u_shape = reparam.spectral_u_shape(
            value.shape, self.error_on_non_matrix, lead=f"Input is {value.ndim}D but error_on_non_matrix is True: "
        )
        name = _reparam_name(self, path)
        has_u = self.has_variable(self.collection_name, name + "/u")
        u_var = self.variable(
            self.collection_name, name + "/u", jax.random.normal,
            None if has_u else self.make_rng("params"), u_shape, self.param_dtype,
        )
        sigma_var = self.variable(self.collection_name, name + "/sigma", jnp.ones, (), self.param_dtype)
        fix = (
            f"The weight has shape {value.shape}. Load the variables saved for this wrapped layer, or re-create "
            "them with `init`."
        )
        validation.fit_variable(u_var.value, u_shape, f"{self.collection_name}['{name}/u']", fix, exact=True)
        validation.fit_variable(sigma_var.value, (), f"{self.collection_name}['{name}/sigma']", fix, exact=True)
        out_dtype = dtypes.canonicalize_dtype(value, u_var.value, dtype=self.dtype)
        w_bar, u, sigma = reparam.spectral_normalize(
            value, u_var.value, n_steps=self.n_steps, epsilon=self.epsilon,
            error_on_non_matrix=self.error_on_non_matrix, dtype=out_dtype,
        )
        if update_stats:
            u_var.value = u
            sigma_var.value = sigma
        return w_bar


class WeightNorm(module.Module):
    r"""Weight normalization of a wrapped layer's weights, a drop-in for ``flax.linen.WeightNorm``.

    Every variable of ``layer_instance`` whose path matches ``variable_filter`` is replaced, for the call, by

    .. math::
        \bar w = \frac{w}{\sqrt{\sum_{\text{non-feature axes}} w^2 + \epsilon}} \cdot \text{scale}

    (:func:`jaxnorm.weight_normalize`). ``apply`` leaves the wrapped layer's ``params`` (the paper's ``v``) as
    they are; ``init``, as Flax's, returns the normalized initial weights as those params (``nn.map_variables``
    stores what it maps at init).

    Attributes:
      layer_instance: the ``flax.linen.Module`` whose weights are normalized.
      epsilon: float added to the squared norm (1e-12).
      dtype: dtype of the normalized weights; None: ``result_type(w, scale)``, as Flax.
      param_dtype: dtype of the scales (float32).
      use_scale: learn a ``scale`` per feature (True).
      scale_init: initializer of the scales (ones).
      feature_axes: int or tuple of ints (-1), or None: one norm over the whole variable and a scalar scale.
      variable_filter: iterable of strings (``{'kernel'}``): a variable is normalized when one of them is a
        substring of ``'<layer name>/<variable path>'``; None or empty: every variable (biases too).

    Call ``__call__(*args, **kwargs)``: the arguments of ``layer_instance``.

    Returns:
      ``layer_instance(*args, **kwargs)`` computed with the normalized weights.

    Variables:
      ``params``: ``'<layer name>/<variable path>/scale'`` of shape ``[w.shape[a] for a in feature_axes]``
      and ``param_dtype`` for each normalized variable, e.g. ``params['WeightNorm_0']['Dense_1/kernel/scale']``;
      the wrapped layer's variables unchanged, where Flax puts them.

    Raises:
      ValueError: a feature axis out of range for a normalized variable.

    Source: ``flax.linen.WeightNorm`` (Flax 0.12): same fields, defaults, variable names and arithmetic for
    float32 weights (the variables are intercepted with Flax's ``nn.map_variables``, the math is jaxnorm's,
    which takes the norm of a half-precision weight in float32); Salimans & Kingma 2016, "Weight
    Normalization".

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import linen as nn
      >>> from jaxnorm import linen as jnn
      >>> wn = jnn.WeightNorm(nn.Dense(3, use_bias=False))
      >>> params = wn.init(jax.random.key(0), jnp.ones((2, 4)))['params']
      >>> sorted(params)  # 'scale' joins Dense's own params
      ['layer_instance', 'layer_instance/kernel/scale']
      >>> w = wn.apply({'params': params}, jnp.eye(4))  # the rows of eye(4) read out the normalized kernel
      >>> print(jnp.linalg.norm(w, axis=0).round(4))  # each column's norm is its scale (ones at init)
      [1. 1. 1.]
    """

    layer_instance: module.Module
    epsilon: float = 1e-12
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    use_scale: bool = True
    scale_init: Initializer = initializers.ones
    feature_axes: Axes | None = -1
    variable_filter: Iterable | None = dataclasses.field(default_factory=lambda: {"kernel"})

    @module.compact
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Calls ``layer_instance`` with weight-normalized weights; see the class docstring."""

        def layer_forward(layer_instance: module.Module) -> Any:
            return layer_instance(*args, **kwargs)

        return transforms.map_variables(
            layer_forward,
            trans_in_fn=lambda vs: jax.tree_util.tree_map_with_path(self._weight_normalize, vs),
            init=self.is_initializing(),
        )(self.layer_instance)

    def _weight_normalize(self, path: tuple[Any, ...], vs: ArrayLike) -> jax.Array:
        """One variable of the wrapped layer: its ``scale`` created as Flax does, when the filter selects it."""
        value = jnp.asarray(vs)
        layer_name = cast(str, self.layer_instance.name)  # set: the wrapped layer is bound
        str_path = layer_name + "/" + jax.tree_util.keystr(path[1:], simple=True, separator="/")
        if self.variable_filter and not any(name in str_path for name in self.variable_filter):
            return value
        feature, _ = reparam.weight_norm_axes(value.ndim, self.feature_axes)
        scale = None
        if self.use_scale:
            shape = [value.shape[a] for a in feature]
            scale = self.param(str_path + "/scale", self.scale_init, shape, self.param_dtype)
        out_dtype = dtypes.canonicalize_dtype(value, scale, dtype=self.dtype)
        return reparam.weight_normalize(
            value, scale, feature_axes=feature, epsilon=self.epsilon, dtype=out_dtype
        )
