"""Exact converters between jaxnorm specs and Keras 3 / PyTorch normalization layers.

Each converter returns or takes the triple ``(spec, params, state)``. Hyperparameters are translated so that the
jaxnorm layer computes what the peer computes (Keras: the same config keys; PyTorch: ``momentum_convention
='torch'``, ``moving_var_estimator='unbiased'``, ``axis=1``, ``count_steps=True`` for ``num_batches_tracked``,
cumulative averaging for ``momentum=None``); arrays are copied bit for bit. Keras and torch are imported only when
a converter for them is called.
"""

from __future__ import annotations

import decimal
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxnorm._src import moving, validation
from jaxnorm._src.batch_norm import BatchNorm
from jaxnorm._src.group_norm import GroupNorm, InstanceNorm
from jaxnorm._src.layer_norm import LayerNorm
from jaxnorm._src.normalization import Normalization
from jaxnorm._src.gated import GatedRMSNorm
from jaxnorm._src.quantized import LayerNormFP8, RMSNormFP8
from jaxnorm._src.residual import AddLayerNorm, AddRMSNorm
from jaxnorm._src.rms_norm import RMSNorm
from jaxnorm._src.unit_norm import UnitNormalization

# The specs with a Keras layer, read from each one's Keras record (keras_config.py): those ``to_keras`` writes,
# and the Keras class name -> the spec ``from_keras`` reads it as (InstanceNorm is written as a
# GroupNormalization and read back as a GroupNorm).
_SPECS = (BatchNorm, LayerNorm, GroupNorm, InstanceNorm, RMSNorm, UnitNormalization, Normalization)
_TO_KERAS = tuple(c for c in _SPECS if c.KERAS is not None and c.KERAS.converts)
_FROM_KERAS = {c.KERAS.class_name: c for c in _TO_KERAS if c.KERAS.reads}
# jaxnorm name -> PyTorch state_dict key.
_TORCH_PARAMS = {"scale": "weight", "bias": "bias"}
_TORCH_STATE = {"mean": "running_mean", "var": "running_var", "steps": "num_batches_tracked"}


def _tensor_to_numpy(value: Any) -> np.ndarray:
    """A torch tensor (any float dtype, bfloat16 included) or array as a NumPy array of the same dtype."""
    if not hasattr(value, "detach"):
        return np.asarray(value)
    value = value.detach().cpu()
    if str(value.dtype) == "torch.bfloat16":  # NumPy has no bfloat16; ml_dtypes (JAX's) does
        return value.float().numpy().astype(jnp.bfloat16)
    return value.numpy()


def _numpy_to_tensor(torch: Any, value: Any, dtype: Any = None) -> Any:
    """A NumPy/JAX array as a torch tensor of the same dtype (bfloat16 included), or of torch ``dtype``."""
    value = np.asarray(value)
    if value.dtype == jnp.bfloat16:
        tensor = torch.from_numpy(value.astype(np.float32)).to(torch.bfloat16)
    else:
        tensor = torch.from_numpy(np.array(value))
    return tensor if dtype is None else tensor.to(dtype)


def _torch_dtype(torch: Any, dtype: Any) -> Any:
    return torch.bfloat16 if np.dtype(dtype) == jnp.bfloat16 else torch.from_numpy(np.zeros((), dtype)).dtype


def _keras_to_torch_momentum(momentum: float) -> float:
    """1 - momentum computed on the decimal values, so that Keras's 0.9 gives PyTorch's 0.1 and not 0.0999..98."""
    return float(decimal.Decimal(1) - decimal.Decimal(repr(float(momentum))))


def _import_keras() -> Any:
    try:
        import keras
    except ImportError as err:
        raise ImportError(
            "jaxnorm.interop's Keras converters need keras: `pip install keras` and set KERAS_BACKEND=jax "
            "before importing it."
        ) from err
    return keras


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as err:
        raise ImportError("jaxnorm.interop's PyTorch converters need torch: `pip install torch`.") from err
    return torch


def _keras_class(keras: Any, spec: Any) -> Any:
    if isinstance(spec, _TO_KERAS):
        return getattr(keras.layers, spec.KERAS.class_name)
    names = ", ".join(f"jaxnorm.{c.__name__}" for c in _TO_KERAS)
    raise TypeError(f"`spec` must be one of {names} to convert to Keras, got {type(spec).__name__}.")


def _check_input_shape(input_shape: Any, name: str = "input_shape") -> tuple[Any, ...]:
    if not isinstance(input_shape, Sequence) or isinstance(input_shape, str):
        raise TypeError(
            f"`{name}` must be the layer's input shape as a tuple (None allowed for the batch size), got "
            f"{input_shape!r}."
        )
    return tuple(input_shape)


def _spec_arrays(
    spec: Any, params: Any, state: Any, shape: tuple[Any, ...]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Checks ``params``/``state`` against ``spec`` for inputs of ``shape`` and returns them as NumPy arrays."""
    feature_axes = validation.canonicalize_axes(spec.axis, len(shape), "axis")
    fshape = tuple(shape[a] for a in feature_axes)
    if any(d is None for d in fshape):
        raise ValueError(
            f"`input_shape`={shape} leaves a size along axis={spec.axis!r} unknown; give the feature sizes."
        )
    fix = f"They must match the features of inputs of shape {shape} along axis={spec.axis!r} (shape {fshape})."
    example = jax.ShapeDtypeStruct(tuple(1 if d is None else d for d in shape), jnp.float32)
    params = validation.check_tree(
        params, {k: (e.shape, None) for k, e in spec.param_schema(example).items()}, "params", fix
    )
    schema = spec.state_schema(example)
    expected = {k: (e.shape, "int" if jnp.issubdtype(e.dtype, jnp.integer) else None) for k, e in schema.items()}
    if isinstance(spec, BatchNorm):
        state = moving.migrate(state, fshape, spec._rule)
    state = validation.check_tree(state, expected, "state", fix)
    as_np = lambda tree: {k: np.asarray(v) for k, v in tree.items()}  # noqa: E731
    return as_np(params), as_np(state)


def from_keras(layer: Any) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Converts a built Keras normalization layer to jaxnorm: ``BatchNormalization``, ``LayerNormalization``,
    ``GroupNormalization``, ``RMSNormalization`` or ``UnitNormalization``.

    The spec comes from the layer's ``get_config()`` (every key, nested initializer, regularizer and constraint
    configs included); ``gamma``/``beta`` (RMSNormalization's ``scale``) become ``params['scale']``/
    ``params['bias']`` and ``moving_mean``,
    ``moving_variance`` (and with renorm ``moving_stddev``, ``renorm_mean``, ``renorm_stddev``) become
    ``state['mean']``, ``state['var']`` (``state['stddev']``, ...). Values are copied exactly. The spec keeps
    the layer's dtype policy in ``dtype_policy`` ('mixed_float16', 'mixed_bfloat16'; None for float32), which
    :func:`to_keras` writes back; a BatchNormalization becomes a ``BatchNorm`` with ``allow_single_value=True``,
    as Keras trains on a batch of one value per feature (its output is beta there).

    Args:
      layer: a built Keras 3 layer of those classes (call it once, or ``build``). A built
        ``GroupNormalization(groups=-1)`` reports ``groups`` = its channel count (Keras rewrites it at build),
        so it becomes ``jaxnorm.GroupNorm`` with that many groups, which computes the same thing.

    Returns:
      ``(spec, params, state)``: ``spec.apply(params, state, x, training=...)`` gives the layer's outputs and
      moving-statistic updates.

    Raises:
      ImportError: keras is not installed.
      TypeError: ``layer`` is another kind of layer.
      ValueError: ``layer`` is not built yet, or its config has keys jaxnorm does not support.

    Source: Keras 3 ``BatchNormalization``, ``LayerNormalization``, ``GroupNormalization``,
    ``RMSNormalization``, ``UnitNormalization`` (weights and config keys).
    """
    keras = _import_keras()
    cls = next((c for name, c in _FROM_KERAS.items() if isinstance(layer, getattr(keras.layers, name))), None)
    if cls is None:
        raise TypeError(
            f"`layer` must be a keras.layers.{', '.join(_FROM_KERAS)} layer, got {type(layer).__name__}."
        )
    if not layer.built:
        raise ValueError(
            f"the Keras layer {layer.name!r} is not built, so it has no weights yet. Call it on an input once or "
            "call layer.build(input_shape) first."
        )
    spec = cls.from_config(layer.get_config())
    weights = {w.name: np.asarray(w.value) for w in layer.weights}
    input_shape = (layer.get_build_config() or {}).get("input_shape")
    if isinstance(spec, LayerNorm) and input_shape is not None:
        # Keras orders a LayerNormalization's weight axes by its raw `axis` list ([1, -1] -> (C, H)) and then
        # reshapes (not transposes) them onto the input; jaxnorm orders them by input axis ((H, C)). The reshape
        # is what keeps Keras's numbers.
        axes = validation.canonicalize_axes(spec.axis, len(input_shape), "axis")
        pshape = tuple(input_shape[a] for a in axes)
        weights = {k: v.reshape(pshape) for k, v in weights.items()}
    record = cls.KERAS
    params = {k: jnp.asarray(weights[name]) for name, k in record.params.items() if name in weights}
    state = {k: jnp.asarray(weights[name]) for name, k in record.state.items() if name in weights}
    return spec, params, state


def to_keras(
    spec: Any,
    params: Mapping[str, Any],
    state: Mapping[str, Any],
    input_shape: Sequence[Any],
    *,
    name: str | None = None,
) -> Any:
    """Builds the Keras 3 layer equivalent to ``(spec, params, state)``.

    Args:
      spec: a ``jaxnorm.BatchNorm``, ``LayerNorm``, ``GroupNorm``, ``InstanceNorm`` (as
        ``GroupNormalization(groups=-1)``), ``RMSNorm`` or ``UnitNormalization`` that Keras can express (see
        ``spec.to_keras_config()``).
      params: the spec's ``{'scale', 'bias'}`` (those it has).
      state: the spec's state (``{'mean', 'var'}``, plus the renorm statistics with ``renorm``; ``{}`` for
        the others).
      input_shape: the input shape to build the layer for, a tuple (None allowed for the batch size); its
        rank fixes Keras's reduction axes.
      name: the Keras layer's name (None: Keras picks one).

    Returns:
      A built Keras layer of the spec's class holding copies of the arrays, with the dtype policy
      ``spec.dtype_policy`` ('float32' when None; a spec from :func:`from_keras` keeps its source's policy).

    Raises:
      ImportError: keras is not installed.
      TypeError: ``spec`` is not one of those; an initializer or regularizer has no Keras form.
      ValueError: a setting Keras cannot express (several BatchNorm axes, ``momentum_convention='torch'``, ...)
        or ``params``/``state`` not matching ``spec`` and ``input_shape``.

    Source: Keras 3's normalization layers (weights and config keys).
    """
    keras = _import_keras()
    cls = _keras_class(keras, spec)
    shape = _check_input_shape(input_shape)
    np_params, np_state = _spec_arrays(spec, params, state, shape)
    config = spec.to_keras_config()
    if name is not None:
        config["name"] = name
    layer = cls.from_config(config)
    layer.build(shape)
    names = spec.KERAS.weights  # state keys with no Keras weight (the step counter) are left out
    arrays = {**np_params, **np_state}
    for w in layer.weights:  # reshape: Keras's LayerNormalization weight layout for mixed-sign axes (from_keras)
        w.assign(arrays[names[w.name]].astype(w.dtype).reshape(w.shape))
    return layer


def _torch_batch_norm_spec(module: Any) -> BatchNorm:
    if not module.track_running_stats:
        raise ValueError(
            f"{type(module).__name__}(track_running_stats=False) normalizes with batch statistics in eval mode "
            "too; jaxnorm.BatchNorm keeps moving statistics. Use BatchNorm with training=True at inference, or "
            "convert a module that tracks running statistics."
        )
    cumulative = module.momentum is None
    return BatchNorm(
        axis=1,
        momentum=0.1 if cumulative else float(module.momentum),
        epsilon=float(module.eps),
        use_scale=bool(module.affine),
        use_bias=bool(module.affine),
        momentum_convention="torch",
        moving_var_estimator="unbiased",
        averaging="cumulative" if cumulative else "exponential",
        count_steps=not cumulative,  # cumulative averaging counts steps by itself
    )


def _torch_layer_norm_spec(module: Any) -> LayerNorm:
    k = len(module.normalized_shape)
    return LayerNorm(
        axis=-1 if k == 1 else tuple(range(-k, 0)),
        epsilon=float(module.eps),
        use_scale=bool(module.elementwise_affine),
        use_bias=module.elementwise_affine and module.bias is not None,
    )


def _torch_group_norm_spec(module: Any) -> GroupNorm:
    return GroupNorm(
        num_groups=int(module.num_groups), axis=1, epsilon=float(module.eps), use_scale=bool(module.affine),
        use_bias=bool(module.affine),
    )


def _torch_instance_norm_spec(module: Any) -> InstanceNorm:
    if module.track_running_stats:
        raise ValueError(
            f"{type(module).__name__}(track_running_stats=True) normalizes with running statistics in eval mode; "
            "jaxnorm.InstanceNorm (as Flax's and Keras's) always uses each example's own statistics. Convert a "
            "module with track_running_stats=False (PyTorch's default)."
        )
    return InstanceNorm(
        axis=1, epsilon=float(module.eps), use_scale=bool(module.affine), use_bias=bool(module.affine)
    )


def _torch_rms_norm_spec(module: Any) -> RMSNorm:
    k = len(module.normalized_shape)
    # PyTorch's eps=None means finfo(input dtype).eps at each call; jaxnorm pins one value: float32's.
    eps = float(np.finfo(np.float32).eps) if module.eps is None else float(module.eps)
    return RMSNorm(
        axis=-1 if k == 1 else tuple(range(-k, 0)), epsilon=eps, use_scale=bool(module.elementwise_affine)
    )


def from_torch(module: Any) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Converts a ``torch.nn.BatchNorm1d/2d/3d``, ``LayerNorm``, ``GroupNorm``, ``InstanceNorm1d/2d/3d`` or
    ``RMSNorm`` to jaxnorm.

    BatchNorm becomes ``jaxnorm.BatchNorm(axis=1, epsilon=eps, momentum=m, momentum_convention='torch',
    moving_var_estimator='unbiased', count_steps=True)`` (``averaging='cumulative'`` for ``momentum=None``),
    ``affine`` maps to ``use_scale``/``use_bias``; ``weight``, ``bias``, ``running_mean``, ``running_var`` and
    ``num_batches_tracked`` become ``params['scale']``, ``params['bias']``, ``state['mean']``, ``state['var']``
    and ``state['steps']``. LayerNorm becomes ``jaxnorm.LayerNorm`` over the trailing
    ``len(normalized_shape)`` axes, and RMSNorm likewise (``eps=None`` pinned to float32's ``finfo.eps``).
    GroupNorm and InstanceNorm become ``jaxnorm.GroupNorm(num_groups, axis=1)`` and ``jaxnorm.InstanceNorm(
    axis=1)`` with ``affine`` as ``use_scale``/``use_bias``. Values are copied exactly (float dtypes kept,
    bfloat16 included; float64 needs ``jax.config.update('jax_enable_x64', True)``, else JAX stores float32;
    the counter as int32).

    Args:
      module: the PyTorch module (its hyperparameters and current tensors are read; use
        :func:`from_torch_state_dict` to load other tensors, e.g. a checkpoint's).

    Returns:
      ``(spec, params, state)``; on channels-first input ``spec.apply`` gives the module's outputs, and in
      training its running-statistic updates.

    Raises:
      ImportError: torch is not installed.
      TypeError: ``module`` is another kind of module.
      ValueError: a BatchNorm with ``track_running_stats=False`` (batch statistics at inference too) or an
        InstanceNorm with ``track_running_stats=True`` (running statistics at inference): no jaxnorm equivalent.

    Source: ``torch.nn.BatchNorm1d/2d/3d``, ``LayerNorm``, ``GroupNorm``, ``InstanceNorm1d/2d/3d``, ``RMSNorm``
    (PyTorch 2).
    """
    torch = _import_torch()
    spec: Any
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(
        module, torch.nn.SyncBatchNorm
    ):
        spec = _torch_batch_norm_spec(module)
    elif isinstance(module, torch.nn.LayerNorm):
        spec = _torch_layer_norm_spec(module)
    elif isinstance(module, torch.nn.GroupNorm):
        spec = _torch_group_norm_spec(module)
    elif isinstance(module, torch.nn.modules.instancenorm._InstanceNorm):
        spec = _torch_instance_norm_spec(module)
    elif isinstance(module, torch.nn.RMSNorm):
        spec = _torch_rms_norm_spec(module)
    else:
        raise TypeError(
            "`module` must be a torch.nn.BatchNorm1d/2d/3d, LayerNorm, GroupNorm, InstanceNorm1d/2d/3d or "
            f"RMSNorm, got {type(module).__name__}."
        )
    params, state = from_torch_state_dict(spec, module.state_dict())
    return spec, params, state


def from_torch_state_dict(
    spec: Any, state_dict: Mapping[str, Any], prefix: str = ""
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Reads a PyTorch BatchNorm/LayerNorm ``state_dict`` (or a model's, with ``prefix``) into jaxnorm trees.

    Args:
      spec: the jaxnorm spec the arrays are for (e.g. from :func:`from_torch`).
      state_dict: mapping of names to tensors (or arrays): ``weight``, ``bias``, ``running_mean``,
        ``running_var``, ``num_batches_tracked`` (those the spec has).
      prefix: the module's prefix in a model's ``state_dict``, e.g. ``'layer1.0.bn1.'``.

    Returns:
      ``(params, state)`` for ``spec``: float arrays keep their dtype, the counter becomes int32.

    Raises:
      ValueError: a tensor the spec needs is missing (the message lists the keys found under ``prefix``).

    Source: PyTorch's ``state_dict`` names for ``_BatchNorm`` and ``LayerNorm``.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"`state_dict` must be a mapping of names to tensors, got {type(state_dict).__name__}.")
    wanted_params = [k for k in ("scale", "bias") if spec._has_param(k)]
    wanted_state = []
    if isinstance(spec, BatchNorm):
        wanted_state = ["mean", "var"] + (["steps"] if spec._rule.keeps_counter else [])
    names = {**_TORCH_PARAMS, **_TORCH_STATE}

    def read(key: str) -> Any:
        full = prefix + names[key]
        if full not in state_dict:
            found = sorted(k for k in state_dict if k.startswith(prefix))
            raise ValueError(
                f"`state_dict` has no {full!r}, which {type(spec).__name__} needs for {key!r}. Keys under "
                f"prefix {prefix!r}: {found}. Check `prefix` (e.g. 'layer1.bn1.') and the spec's "
                "use_scale/use_bias."
            )
        value = _tensor_to_numpy(state_dict[full])
        return jnp.asarray(value.astype(np.int32) if key == "steps" else value)

    params = {k: read(k) for k in wanted_params}
    state = {k: read(k) for k in wanted_state}
    if isinstance(spec, BatchNorm):  # num_batches_tracked is every feature's count under counted averages
        state = moving.migrate(state, jnp.shape(state["mean"]), spec._rule)
    return params, state


def _torch_incompatible(spec: Any, checks: dict[str, tuple[bool, str]]) -> None:
    bad = [f"{field}: {why}" for field, (ok, why) in checks.items() if not ok]
    if bad:
        raise ValueError(
            f"jaxnorm.{type(spec).__name__} settings with no PyTorch equivalent: {'; '.join(bad)}. Change them to "
            "convert (PyTorch would compute something else)."
        )


def to_torch(
    spec: Any, params: Mapping[str, Any], state: Mapping[str, Any], input_shape: Sequence[Any] | None = None
) -> Any:
    """Builds the PyTorch module equivalent to ``(spec, params, state)``: BatchNorm1d/2d/3d, LayerNorm,
    GroupNorm, InstanceNorm1d/2d/3d or RMSNorm.

    For BatchNorm, ``input_shape`` picks the class (rank 2 or 3: ``BatchNorm1d``, 4: ``BatchNorm2d``, 5:
    ``BatchNorm3d``); the feature axis must be 1 (channels-first, PyTorch's layout). PyTorch's momentum is
    ``spec.momentum`` with ``momentum_convention='torch'`` and ``1 - spec.momentum`` with 'keras' (computed on
    the decimal values: 0.9 gives 0.1);
    cumulative averaging becomes ``momentum=None``; ``state['steps']`` (0 if absent) becomes
    ``num_batches_tracked``. A frozen spec (``trainable=False``) gives a module in eval mode with
    ``requires_grad=False``.

    Args:
      spec: a ``jaxnorm.BatchNorm``, ``LayerNorm``, ``GroupNorm``, ``InstanceNorm`` or ``RMSNorm``.
      params: the spec's ``{'scale', 'bias'}``.
      state: the spec's state.
      input_shape: the input shape (None allowed for the batch size). Required for BatchNorm, GroupNorm and
        InstanceNorm (the channel count and the rank, which picks the 1d/2d/3d class); for LayerNorm and
        RMSNorm needed only when they have no params (to read ``normalized_shape``).

    Returns:
      A ``torch.nn`` module holding float copies of the arrays (the state's dtype), in training mode unless
      the spec is frozen.

    Raises:
      ImportError: torch is not installed.
      TypeError: ``spec`` is not one of those.
      ValueError: a setting PyTorch cannot express (``moving_var_estimator='biased'``, 'debiased' averaging,
        renorm,
        regularizers or constraints, a feature axis other than 1, scale without bias or bias without scale,
        LayerNorm over non-trailing axes, ``rms_scaling``, GroupNorm's ``group_size`` or a channel axis other
        than 1), or arrays not matching the spec.

    Source: ``torch.nn.BatchNorm1d/2d/3d``, ``LayerNorm``, ``GroupNorm``, ``InstanceNorm1d/2d/3d``,
    ``RMSNorm`` (PyTorch 2).
    """
    torch = _import_torch()
    if not isinstance(spec, BatchNorm | LayerNorm | GroupNorm | InstanceNorm | RMSNorm) or isinstance(
        spec, AddLayerNorm | AddRMSNorm | GatedRMSNorm | LayerNormFP8 | RMSNormFP8
    ):
        raise TypeError(
            "`spec` must be a jaxnorm.BatchNorm, LayerNorm, GroupNorm, InstanceNorm or RMSNorm to convert to "
            f"PyTorch, got {type(spec).__name__}."
            + (" PyTorch has no add & norm, gated or fp8-output layer: convert the LayerNorm or RMSNorm of the same "
               "options and params, and add the residual (apply the gate, quantize) in the model."
               if isinstance(spec, AddLayerNorm | AddRMSNorm | GatedRMSNorm | LayerNormFP8 | RMSNormFP8) else "")
        )
    extras = {
        f: (getattr(spec, f) is None, "PyTorch layers have no regularizers or constraints")
        for f in (*spec._REGULARIZER_FIELDS, *spec._CONSTRAINT_FIELDS)
    }
    if isinstance(spec, BatchNorm):
        convert, why = _to_torch_batch_norm, (
            ": its rank picks BatchNorm1d (rank 2-3), BatchNorm2d (4) or BatchNorm3d (5)"
        )
    elif isinstance(spec, GroupNorm | InstanceNorm):
        convert, why = _to_torch_channels_first, (
            ": its channel count (axis 1) and, for InstanceNorm, its rank (which picks InstanceNorm1d/2d/3d)"
        )
    else:
        convert, why = _to_torch_layer_norm, " without params, to read `normalized_shape`"
    if input_shape is not None:
        shape = _check_input_shape(input_shape)
    elif isinstance(spec, LayerNorm | RMSNorm) and params:
        shape = (None, *np.shape(next(iter(params.values()))))
    else:
        raise ValueError(
            f"to_torch needs `input_shape` for a {type(spec).__name__}{why}. "
            "Pass e.g. input_shape=(None, C, H, W)."
        )
    module = convert(torch, spec, params, state, shape, extras)
    if not spec.trainable:
        module.eval()
        module.requires_grad_(False)
    return module


def _to_torch_batch_norm(
    torch: Any, spec: Any, params: Any, state: Any, shape: tuple[Any, ...], extras: dict[str, Any]
) -> Any:
    classes = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d, 5: torch.nn.BatchNorm3d}
    axes = validation.canonicalize_axes(spec.axis, len(shape), "axis") if len(shape) in classes else None
    _torch_incompatible(
        spec,
        {
            "input_shape": (len(shape) in classes, f"rank {len(shape)}; PyTorch's BatchNorm takes rank 2 to 5"),
            "axis": (axes in (None, (1,)), f"{spec.axis!r}; PyTorch normalizes axis 1 (channels-first)"),
            "moving_var_estimator": (
                spec.moving_var_estimator == "unbiased", "'biased'; PyTorch's running_var is unbiased"
            ),
            "averaging": (spec.averaging != "debiased", "'debiased' (Haiku); PyTorch has no zero-debiasing"),
            "renorm": (not spec.renorm, "True; PyTorch has no batch renormalization"),
            "axis_name": (spec.axis_name is None, f"{spec.axis_name!r}; use torch.nn.SyncBatchNorm"),
            "use_scale/use_bias": (
                spec.use_scale == spec.use_bias,
                "PyTorch's `affine` creates both weight and bias or neither",
            ),
            **extras,
        },
    )
    np_params, np_state = _spec_arrays(spec, params, state, shape)
    cumulative = spec.averaging == "cumulative"
    if cumulative:
        momentum = None
    elif spec.momentum_convention == "torch":
        momentum = spec.momentum
    else:
        momentum = _keras_to_torch_momentum(spec.momentum)
    dtype = _torch_dtype(torch, np_state["mean"].dtype)  # PyTorch keeps params and buffers in one dtype
    module = classes[len(shape)](
        shape[1], eps=spec.epsilon, momentum=momentum, affine=spec.use_scale, dtype=dtype
    )
    tensors = {_TORCH_STATE[k]: _numpy_to_tensor(torch, v) for k, v in np_state.items() if k != "steps"}
    for k, v in np_params.items():
        tensors[_TORCH_PARAMS[k]] = _numpy_to_tensor(torch, v, dtype)
    steps = np.unique(np_state.get("steps", np.zeros((), np.int64)))
    if steps.size > 1:
        raise ValueError(
            f"`state['steps']` counts {steps.tolist()} batches for different features (a feature skips a batch "
            "whose statistics are not finite for it), but PyTorch keeps one `num_batches_tracked` for the layer, "
            "and with momentum=None each feature's average needs its own count. Convert a state whose features "
            "took the same batches, or set state['steps'] to one count yourself if that approximation will do."
        )
    tensors["num_batches_tracked"] = torch.tensor(int(steps[0]), dtype=torch.long)
    module.load_state_dict(tensors)
    return module


def _to_torch_layer_norm(
    torch: Any, spec: Any, params: Any, state: Any, shape: tuple[Any, ...], extras: dict[str, Any]
) -> Any:
    axes = validation.canonicalize_axes(spec.axis, len(shape), "axis")
    trailing = axes == tuple(range(len(shape) - len(axes), len(shape)))
    rms = isinstance(spec, RMSNorm)
    name = type(spec).__name__
    _torch_incompatible(
        spec,
        {
            "axis": (trailing, f"{spec.axis!r}; PyTorch's {name} normalizes the trailing axes"),
            "rms_scaling": (rms or not spec.rms_scaling, "True (Keras's deprecated mode)"),
            "scale_offset": (spec.scale_offset == 0, f"{spec.scale_offset!r}; PyTorch multiplies by its weight as "
                             "stored: convert a spec with scale_offset=0.0 and params['scale'] + offset"),
            "use_scale/use_bias": (
                rms or spec.use_scale or not spec.use_bias,
                "bias without scale; PyTorch's LayerNorm(bias=True) needs elementwise_affine=True",
            ),
            **extras,
        },
    )
    np_params, _ = _spec_arrays(spec, params, state, shape)
    normalized_shape = tuple(shape[a] for a in axes)
    dtype = _torch_dtype(torch, next(iter(np_params.values())).dtype) if np_params else None
    if rms:
        module = torch.nn.RMSNorm(
            normalized_shape, eps=spec.epsilon, elementwise_affine=spec.use_scale, dtype=dtype
        )
    else:
        module = torch.nn.LayerNorm(
            normalized_shape, eps=spec.epsilon, elementwise_affine=spec.use_scale, bias=spec.use_bias,
            dtype=dtype,
        )
    module.load_state_dict({_TORCH_PARAMS[k]: _numpy_to_tensor(torch, v) for k, v in np_params.items()})
    return module


def _to_torch_channels_first(
    torch: Any, spec: Any, params: Any, state: Any, shape: tuple[Any, ...], extras: dict[str, Any]
) -> Any:
    """GroupNorm (``torch.nn.GroupNorm``) or InstanceNorm (``torch.nn.InstanceNorm{1,2,3}d``) on axis 1."""
    axes = validation.canonicalize_axes(spec.axis, len(shape), "axis")
    checks = {
        "axis": (axes == (1,), f"{spec.axis!r}; PyTorch normalizes channels on axis 1 (channels-first)"),
        "use_scale/use_bias": (
            spec.use_scale == spec.use_bias, "PyTorch's `affine` creates both weight and bias or neither"
        ),
        **extras,
    }
    instance = isinstance(spec, InstanceNorm)
    classes = {3: torch.nn.InstanceNorm1d, 4: torch.nn.InstanceNorm2d, 5: torch.nn.InstanceNorm3d}
    if instance:
        checks["input_shape"] = (len(shape) in classes, f"rank {len(shape)}; PyTorch's InstanceNorm takes 3 to 5")
    else:
        checks["group_size"] = (spec.group_size is None, "PyTorch's GroupNorm takes the number of groups")
    _torch_incompatible(spec, checks)
    np_params, _ = _spec_arrays(spec, params, state, shape)
    channels = shape[1]
    dtype = _torch_dtype(torch, next(iter(np_params.values())).dtype) if np_params else None
    if instance:
        module = classes[len(shape)](channels, eps=spec.epsilon, affine=spec.use_scale, dtype=dtype)
    else:
        groups = validation.resolve_groups(spec.num_groups, None, channels, 1)
        module = torch.nn.GroupNorm(groups, channels, eps=spec.epsilon, affine=spec.use_scale, dtype=dtype)
    module.load_state_dict({_TORCH_PARAMS[k]: _numpy_to_tensor(torch, v) for k, v in np_params.items()})
    return module
