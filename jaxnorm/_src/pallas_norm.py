r"""Fused Pallas (GPU Triton) kernels for LayerNorm and RMSNorm over the last axis of a 2-D array.

Forward, for each row :math:`x \in \mathbb{R}^N` (all arithmetic in float32, whatever the input dtype):

.. math::
    \text{LayerNorm:}\quad \mu = \langle x\rangle,\ \sigma^2 = \langle (x-\mu)^2\rangle,\
    r = (\sigma^2 + \epsilon)^{-1/2},\ \hat x = (x - \mu)\,r \\
    \text{RMSNorm:}\quad r = (\langle x^2\rangle + \epsilon)^{-1/2},\ \hat x = x\,r \\
    y = \hat x \cdot \text{scale} + \text{bias}

with :math:`\langle\cdot\rangle` the mean over the row. The variance is two-pass (mean first, then the mean of
squared deviations) over the row held on chip, so ``x`` is read from memory once and inputs with a large offset
(``1e3 + N(0, 1)``) keep an accurate variance. Each deviation is multiplied by :math:`1/\sqrt N` before it is
squared, so the sum of squares is the variance itself: exact while deviations from the mean (RMSNorm: the values)
stay below about ``2**63`` whatever the row length (jaxnorm's default range, ``2**50``, included) and the variance
above about ``2**-100`` (or hidden by ``epsilon``); beyond it, ``inf`` or ``0``, never a plausible wrong number.
``extreme_range=True`` is refused (use the XLA implementation).

The forward kernel also writes the float32 ``mean`` (LayerNorm) and ``rstd = r`` per row: with ``x`` and
``scale`` they are the only residuals of the ``jax.custom_vjp`` (no full-size float32 intermediate is kept).

Backward, with :math:`g = dy\cdot\text{scale}` (or :math:`g = dy` without scale):

.. math::
    \text{LayerNorm:}\quad dx = r\,(g - \langle g\rangle - \hat x\,\langle g\,\hat x\rangle) \qquad
    \text{RMSNorm:}\quad dx = r\,(g - \hat x\,\langle g\,\hat x\rangle) \\
    d\text{scale} = \textstyle\sum_\text{rows} dy\,\hat x, \qquad d\text{bias} = \sum_\text{rows} dy

computed by ONE kernel on a persistent grid of ``P = num_programs`` programs: program ``p`` walks the row
blocks ``p, p + P, p + 2P, ...``, reads ``x`` and ``dy`` once, recomputes :math:`\hat x` from the saved
``mean``/``rstd``, writes ``dx`` and accumulates ``dscale``/``dbias`` in float32 registers, written once per
program to ``(P, N)`` partial sums; a small ``jnp.sum`` over ``P`` in plain JAX finishes them (the per-program
partial-sum scheme of Triton's fused layer-norm tutorial, without its locks).

Sources: Ba, Kiros & Hinton, "Layer Normalization" (2016), arXiv:1607.06450; Zhang & Sennrich, "Root Mean
Square Layer Normalization" (NeurIPS 2019), arXiv:1910.07467; Triton tutorial 05, "Layer Normalization"
(https://triton-lang.org/main/getting-started/tutorials/05-layer-norm.html).

Limits: a row must fit one block, ``N <= 65536 // x.dtype.itemsize`` (16384 for float32, 32768 for bfloat16
and float16, Triton's "64 KB per row" fused limit); longer rows raise a ValueError pointing at
``implementation="xla"``. float64 is rejected (the kernels compute in float32). On a machine without a GPU run
the kernels with ``interpret=True`` (Pallas interpret mode: same kernel code, executed by XLA on the CPU);
:func:`pallas_available` says whether the compiled Triton path can run here.
"""

from __future__ import annotations

import functools
import math
import operator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

try:  # The Triton-specific Pallas API (masked load/store, compiler params); part of jax, but keep it optional.
    from jax.experimental.pallas import triton as plgpu
except ImportError:  # pragma: no cover - only on jax builds without the Triton Pallas backend
    plgpu = None  # type: ignore[assignment]

__all__ = ["normalize_rows", "pallas_available", "max_row_length"]

#: Bytes of one row the kernels accept (Triton's fused layer-norm limit): N <= _MAX_ROW_BYTES // itemsize.
_MAX_ROW_BYTES = 65536
#: Smallest column block: tiny rows (N = 1) are padded to this many lanes (masked) to avoid degenerate tiles.
_MIN_BLOCK_N = 16
#: Target number of elements of one (block_rows, block_n) tile when block_rows is chosen automatically.
_TILE_ELEMENTS = 4096
#: Largest automatic block_rows.
_MAX_AUTO_BLOCK_ROWS = 16
#: Streaming multiprocessors assumed for the default persistent grid when the device does not say (H100 SXM).
_FALLBACK_SM_COUNT = 132
#: Programs per SM of the default persistent backward grid.
_PROGRAMS_PER_SM = 4
_SUPPORTED_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


def pallas_available() -> bool:
    """True when the default backend is a GPU and the Pallas Triton backend imports (compiled kernels can run).

    Otherwise callers should pass ``interpret=True`` (slow, for tests) or use the XLA implementation.
    """
    try:
        if jax.default_backend() != "gpu":
            return False
        from jax.experimental.pallas import triton  # noqa: F401
    except Exception:  # noqa: BLE001 - any failure to import or query the backend means "not available"
        return False
    return True


def max_row_length(dtype: Any) -> int:
    """The largest row length ``N`` the kernels accept for ``x`` of ``dtype`` (``65536 // itemsize``)."""
    return _MAX_ROW_BYTES // np.dtype(dtype).itemsize


def _next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def _num_warps(tile_elements: int) -> int:
    """Triton warps for a tile: 4 below 2048 elements, 8 up to 8192, 16 above."""
    if tile_elements < 2048:
        return 4
    if tile_elements <= 8192:
        return 8
    return 16


def _compiler_params(tile_elements: int):
    # Ignored in interpret mode (the interpreter accepts and discards them).
    return plgpu.CompilerParams(num_warps=_num_warps(tile_elements), num_stages=1)


def _default_num_programs(num_row_blocks: int) -> int:
    """``min(row blocks, 4 * SMs)``: SMs from the GPU when there is one, else 132 (H100), i.e. at most 528."""
    sm_count = _FALLBACK_SM_COUNT
    try:
        if jax.default_backend() == "gpu":
            sm_count = int(getattr(jax.devices()[0], "core_count", 0)) or _FALLBACK_SM_COUNT
    except Exception:  # noqa: BLE001 - the SM count is only a heuristic
        sm_count = _FALLBACK_SM_COUNT
    return max(1, min(num_row_blocks, _PROGRAMS_PER_SM * sm_count))


# ----------------------------------------------------------------------------------------------------------------
# Kernels. Refs are whole arrays in GPU global memory (no BlockSpecs): each program addresses its tile with
# pl.ds slices of power-of-2 size and masks the lanes/rows past the array's end (Triton tensors must have
# power-of-2 sizes; masked lanes are neither read nor written, and are zeroed before any reduction).
# ----------------------------------------------------------------------------------------------------------------


def _unpack(refs, *present):
    """A kernel's refs in order, None for each operand whose flag in ``present`` is False."""
    it = iter(refs)
    out = [next(it) if flag else None for flag in present]
    assert next(it, None) is None, "more refs than operands"
    return out


def _forward_kernel(*refs, n_rows, n_cols, block_rows, block_n, epsilon, subtract_mean, has_scale, has_bias):
    x_ref, scale_ref, bias_ref, y_ref, mean_ref, rstd_ref = _unpack(
        refs, True, has_scale, has_bias, True, subtract_mean, True
    )

    row0 = pl.program_id(0) * block_rows
    row_ok = row0 + jnp.arange(block_rows) < n_rows
    col_ok = jnp.arange(block_n) < n_cols
    mask = row_ok[:, None] & col_ok[None, :]
    tile = (pl.ds(row0, block_rows), pl.ds(0, block_n))

    x = plgpu.load(x_ref.at[tile], mask=mask, other=0.0).astype(jnp.float32)
    # Each deviation is scaled by 1/sqrt(N) before it is squared, so the sum of squares is the variance itself
    # and overflows only where the variance does (deviations below about 2**63, at any row length).
    root_n = 1.0 / math.sqrt(n_cols)
    if subtract_mean:
        mean = jnp.sum(x, axis=1) / n_cols
        xc = jnp.where(mask, x - mean[:, None], 0.0)  # padded lanes must not enter the variance
    else:
        xc = x  # padded lanes are already 0
    xs = xc * root_n
    var = jnp.sum(xs * xs, axis=1)
    rstd = lax.rsqrt(var + epsilon)
    y = xc * rstd[:, None]
    if has_scale:
        y = y * plgpu.load(scale_ref.at[pl.ds(0, block_n)], mask=col_ok, other=0.0).astype(jnp.float32)[None, :]
    if has_bias:
        y = y + plgpu.load(bias_ref.at[pl.ds(0, block_n)], mask=col_ok, other=0.0).astype(jnp.float32)[None, :]

    plgpu.store(y_ref.at[tile], y.astype(y_ref.dtype), mask=mask)
    if subtract_mean:
        plgpu.store(mean_ref.at[pl.ds(row0, block_rows)], mean, mask=row_ok)
    plgpu.store(rstd_ref.at[pl.ds(row0, block_rows)], rstd, mask=row_ok)


def _backward_kernel(*refs, n_rows, n_cols, block_rows, block_n, num_programs, subtract_mean, has_scale, has_bias):
    x_ref, scale_ref, mean_ref, rstd_ref, dy_ref, dx_ref, dscale_ref, dbias_ref = _unpack(
        refs, True, has_scale, subtract_mean, True, True, True, has_scale, has_bias
    )

    pid = pl.program_id(0)
    num_row_blocks = pl.cdiv(n_rows, block_rows)
    num_iters = pl.cdiv(num_row_blocks, num_programs)  # static; the last iteration may be empty for some pids
    col_ok = jnp.arange(block_n) < n_cols
    cols = pl.ds(0, block_n)
    if has_scale:
        scale = plgpu.load(scale_ref.at[cols], mask=col_ok, other=0.0).astype(jnp.float32)[None, :]

    def body(i, acc):
        block = pid + i * num_programs
        # Clamp the start so every address stays inside the arrays; rows of an empty iteration are masked.
        row0 = jnp.minimum(block, num_row_blocks - 1) * block_rows
        row_ok = (row0 + jnp.arange(block_rows) < n_rows) & (block < num_row_blocks)
        mask = row_ok[:, None] & col_ok[None, :]
        tile = (pl.ds(row0, block_rows), cols)
        rows = pl.ds(row0, block_rows)

        x = plgpu.load(x_ref.at[tile], mask=mask, other=0.0).astype(jnp.float32)
        dy = plgpu.load(dy_ref.at[tile], mask=mask, other=0.0).astype(jnp.float32)
        rstd = plgpu.load(rstd_ref.at[rows], mask=row_ok, other=0.0)[:, None]
        if subtract_mean:
            mean = plgpu.load(mean_ref.at[rows], mask=row_ok, other=0.0)[:, None]
            xhat = jnp.where(mask, (x - mean) * rstd, 0.0)
        else:
            xhat = jnp.where(mask, x * rstd, 0.0)
        g = dy * scale if has_scale else dy  # 0 on masked lanes
        c2 = jnp.sum(g * xhat, axis=1, keepdims=True) / n_cols
        if subtract_mean:
            c1 = jnp.sum(g, axis=1, keepdims=True) / n_cols
            dx = (g - c1 - xhat * c2) * rstd
        else:
            dx = (g - xhat * c2) * rstd
        plgpu.store(dx_ref.at[tile], dx.astype(dx_ref.dtype), mask=mask)

        dscale_acc, dbias_acc = acc
        if has_scale:
            dscale_acc = dscale_acc + dy * xhat
        if has_bias:
            dbias_acc = dbias_acc + dy
        return dscale_acc, dbias_acc

    zeros = jnp.zeros((block_rows, block_n), jnp.float32)
    init = (zeros if has_scale else None, zeros if has_bias else None)
    dscale_acc, dbias_acc = lax.fori_loop(0, num_iters, body, init)
    if has_scale:
        plgpu.store(dscale_ref.at[pid, cols], jnp.sum(dscale_acc, axis=0), mask=col_ok)
    if has_bias:
        plgpu.store(dbias_ref.at[pid, cols], jnp.sum(dbias_acc, axis=0), mask=col_ok)


# ----------------------------------------------------------------------------------------------------------------
# pallas_call wrappers and the custom_vjp.
# ----------------------------------------------------------------------------------------------------------------


def _blocks(n_rows: int, n_cols: int, block_rows: int | None) -> tuple[int, int]:
    block_n = max(_MIN_BLOCK_N, _next_power_of_2(n_cols))
    if block_rows is None:
        block_rows = max(1, min(_MAX_AUTO_BLOCK_ROWS, _TILE_ELEMENTS // block_n, _next_power_of_2(n_rows)))
    return block_rows, block_n


def _out_shape(shape, dtype, like):
    """An output type varying over the same manual (``shard_map``) axes as ``like``, as ``check_vma`` needs."""
    try:
        manual = jax.typeof(like).manual_axis_type
    except AttributeError:
        return jax.ShapeDtypeStruct(shape, dtype)
    return jax.ShapeDtypeStruct(shape, dtype, manual_axis_type=manual)


def _launch(kernel, inputs, out_shape, grid, blocking, **static):
    """Runs a row kernel on ``inputs`` (None entries dropped) with the shape arguments every kernel takes.

    ``blocking`` is ``(block_rows, block_n, interpret, pass)``, ``pass`` "fwd" or "bwd" for the kernel's name;
    ``static`` holds the kernel's own keyword arguments (``subtract_mean`` among them).
    """
    block_rows, block_n, interpret, direction = blocking
    n_rows, n_cols = inputs[0].shape
    norm = "layer_norm" if static["subtract_mean"] else "rms_norm"
    return pl.pallas_call(
        functools.partial(kernel, n_rows=n_rows, n_cols=n_cols, block_rows=block_rows, block_n=block_n, **static),
        out_shape=out_shape,
        grid=grid,
        compiler_params=_compiler_params(block_rows * block_n),
        interpret=interpret,
        name=f"jaxnorm_{norm}_{direction}",
    )(*[a for a in inputs if a is not None])


# jit with static configuration: eager calls reuse the compiled kernel instead of re-tracing pallas_call.
@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6, 7))
def _forward(x, scale, bias, epsilon, subtract_mean, interpret, block_rows, num_programs):
    del num_programs  # backward only
    n_rows, n_cols = x.shape
    mean_shape = _out_shape((n_rows,), jnp.float32, x)
    if n_rows == 0:
        return (
            jnp.zeros(x.shape, x.dtype),
            (jnp.zeros((0,), jnp.float32) if subtract_mean else None),
            (jnp.zeros((0,), jnp.float32)),
        )
    block_rows, block_n = _blocks(n_rows, n_cols, block_rows)
    out_shape = [_out_shape(x.shape, x.dtype, x)] + [mean_shape] * (2 if subtract_mean else 1)
    outs = _launch(
        _forward_kernel,
        (x, scale, bias),
        out_shape,
        (pl.cdiv(n_rows, block_rows),),
        (block_rows, block_n, interpret, "fwd"),
        epsilon=float(epsilon),
        subtract_mean=subtract_mean,
        has_scale=scale is not None,
        has_bias=bias is not None,
    )
    if subtract_mean:
        y, mean, rstd = outs
    else:
        (y, rstd), mean = outs, None
    return y, mean, rstd


@functools.partial(jax.jit, static_argnums=(5, 6, 7, 8, 9))
def _backward(x, scale, mean, rstd, dy, has_bias, subtract_mean, interpret, block_rows, num_programs):
    """``(dx, dscale or None, dbias or None)``; dscale/dbias in float32, summed over the programs' partials."""
    n_rows, n_cols = x.shape
    has_scale = scale is not None
    if n_rows == 0:
        zeros = jnp.zeros((n_cols,), jnp.float32)
        return jnp.zeros(x.shape, x.dtype), (zeros if has_scale else None), (zeros if has_bias else None)
    block_rows, block_n = _blocks(n_rows, n_cols, block_rows)
    num_row_blocks = pl.cdiv(n_rows, block_rows)
    if num_programs is None:
        num_programs = _default_num_programs(num_row_blocks)
    num_programs = min(num_programs, num_row_blocks)  # more programs than row blocks would only idle
    partial_shape = _out_shape((num_programs, n_cols), jnp.float32, x)
    out_shape = [_out_shape(x.shape, x.dtype, x)] + [partial_shape] * (has_scale + has_bias)
    outs = _launch(
        _backward_kernel,
        (x, scale, mean, rstd, dy),
        out_shape,
        (num_programs,),
        (block_rows, block_n, interpret, "bwd"),
        num_programs=num_programs,
        subtract_mean=subtract_mean,
        has_scale=has_scale,
        has_bias=has_bias,
    )
    dx, *partials = outs
    dscale = jnp.sum(partials.pop(0), axis=0) if has_scale else None
    dbias = jnp.sum(partials.pop(0), axis=0) if has_bias else None
    return dx, dscale, dbias


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7, 8))
def _normalize(x, scale, bias, epsilon, subtract_mean, interpret, block_rows, num_programs, bias_dtype):
    del bias_dtype
    y, _, _ = _forward(x, scale, bias, epsilon, subtract_mean, interpret, block_rows, num_programs)
    return y


def _normalize_fwd(x, scale, bias, epsilon, subtract_mean, interpret, block_rows, num_programs, bias_dtype):
    del bias_dtype
    y, mean, rstd = _forward(x, scale, bias, epsilon, subtract_mean, interpret, block_rows, num_programs)
    # Only x (the caller holds it anyway), scale ((N,)) and float32 per-row statistics: bias is not needed.
    return y, (x, scale, mean, rstd)


def _normalize_bwd(epsilon, subtract_mean, interpret, block_rows, num_programs, bias_dtype, residuals, dy):
    del epsilon  # rstd already includes it
    x, scale, mean, rstd = residuals
    has_bias = bias_dtype is not None
    dx, dscale, dbias = _backward(
        x, scale, mean, rstd, dy, has_bias, subtract_mean, interpret, block_rows, num_programs
    )
    dscale = None if scale is None else dscale.astype(scale.dtype)
    dbias = None if not has_bias else dbias.astype(bias_dtype)
    return dx, dscale, dbias


_normalize.defvjp(_normalize_fwd, _normalize_bwd)


# ----------------------------------------------------------------------------------------------------------------
# Validation and the public function.
# ----------------------------------------------------------------------------------------------------------------


def _check_static_int(value, name: str, *, power_of_2: bool) -> int | None:
    if value is None:
        return None
    try:
        ivalue = operator.index(value)
    except TypeError:
        raise TypeError(
            f"{name} must be a Python int or None; got {value!r} of type {type(value).__name__}."
        ) from None
    if ivalue < 1 or (power_of_2 and ivalue & (ivalue - 1)):
        need = "a positive power of 2 (Triton tile sizes must be powers of 2)" if power_of_2 else "a positive int"
        raise ValueError(f"{name} must be {need}; got {ivalue}. Pass e.g. {name}=1, or None for the default.")
    return ivalue


def _check_param(p, name: str, n_cols: int):
    if p is None:
        return None
    if not hasattr(p, "shape") or not hasattr(p, "dtype"):
        p = jnp.asarray(p)
    if tuple(p.shape) != (n_cols,):
        raise ValueError(
            f"{name} must have shape (N,) = ({n_cols},) to match the last axis of x; got shape {tuple(p.shape)}. "
            f"Reshape it to ({n_cols},) or pass None."
        )
    if not jnp.issubdtype(p.dtype, jnp.floating):
        raise TypeError(f"{name} must have a floating dtype; got {p.dtype}. Cast it, e.g. {name}.astype(x.dtype).")
    return p


def _checked_rows(
    x: Any, scale: Any, bias: Any, epsilon: Any, subtract_mean: Any, interpret: Any, block_rows: Any,
    num_programs: Any,
) -> tuple[Any, Any, Any, float, Any, Any]:
    """:func:`normalize_rows`'s arguments checked (its ``Raises``): ``(x, scale, bias, epsilon, block_rows,
    num_programs)``."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        x = jnp.asarray(x)
    if x.ndim != 2:
        raise ValueError(
            f"x must be a 2-D (M, N) array normalized over its last axis; got shape {tuple(x.shape)} "
            f"(rank {x.ndim}). Reshape it, e.g. x.reshape(-1, x.shape[-1]), or use jax.vmap."
        )
    if not any(x.dtype == d for d in _SUPPORTED_DTYPES):
        raise TypeError(
            f"x must have dtype float32, bfloat16 or float16 (the kernels compute in float32); got {x.dtype}. "
            + ("Use implementation='xla' for float64." if x.dtype == jnp.float64 else "Cast x to a float dtype.")
        )
    n_rows, n_cols = x.shape
    if n_cols == 0:
        raise ValueError(f"x must have at least one column to normalize over; got shape {tuple(x.shape)}.")
    limit = max_row_length(x.dtype)
    if n_cols > limit:
        raise ValueError(
            f"x has rows of N={n_cols} elements, more than the Pallas kernels hold on chip for {x.dtype} "
            f"(N <= {limit}, i.e. 64 KiB per row). Use implementation='xla' for such long rows."
        )
    scale = _check_param(scale, "scale", n_cols)
    bias = _check_param(bias, "bias", n_cols)
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float, np.integer, np.floating)):
        raise TypeError(
            f"epsilon must be a Python float (static, not differentiated); got {epsilon!r} of type "
            f"{type(epsilon).__name__}. Pass e.g. epsilon=1e-6."
        )
    epsilon = float(epsilon)
    if not (epsilon >= 0.0 and math.isfinite(epsilon)):
        raise ValueError(f"epsilon must be finite and >= 0; got {epsilon}.")
    for name, flag in (("subtract_mean", subtract_mean), ("interpret", interpret)):
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"{name} must be a bool; got {flag!r} of type {type(flag).__name__}.")
    block_rows = _check_static_int(block_rows, "block_rows", power_of_2=True)
    num_programs = _check_static_int(num_programs, "num_programs", power_of_2=False)
    if plgpu is None:  # pragma: no cover
        raise RuntimeError(
            "jax.experimental.pallas.triton is unavailable in this jax build; use implementation='xla'."
        )
    return x, scale, bias, epsilon, block_rows, num_programs


def normalize_rows(
    x: jax.Array,
    scale: jax.Array | None,
    bias: jax.Array | None,
    epsilon: float,
    *,
    subtract_mean: bool,
    interpret: bool = False,
    block_rows: int | None = None,
    num_programs: int | None = None,
) -> jax.Array:
    r"""LayerNorm (``subtract_mean=True``) or RMSNorm (``False``) of each row of ``x`` with fused Pallas kernels.

    Forward (float32 arithmetic; :math:`\langle\cdot\rangle` is the mean over the row, variance biased and
    two-pass)::

        LayerNorm: y = (x - mean) * rsqrt(var + epsilon) * scale + bias
        RMSNorm:   y = x * rsqrt(mean(x**2) + epsilon) * scale (+ bias when given)

    Backward (one persistent kernel, see the module docstring), with ``r = rsqrt(...)`` and ``g = dy * scale``::

        LayerNorm: xhat = (x - mean) * r;  dx = r * (g - <g> - xhat * <g * xhat>)
        RMSNorm:   xhat = x * r;           dx = r * (g - xhat * <g * xhat>)
        dscale = sum over rows of dy * xhat;  dbias = sum over rows of dy

    The derivative is a ``jax.custom_vjp`` (w.r.t. ``x``, ``scale``, ``bias``); its residuals are ``x``,
    ``scale`` and the float32 ``mean`` (LayerNorm) and ``rstd`` per row, nothing of size ``M * N`` in float32.
    Works under ``jit``, ``vmap`` (extra grid axis) and ``grad``; forward-mode autodiff is not defined.

    Args:
      x: ``(M, N)`` array of dtype float32, bfloat16 or float16.
      scale: None or an ``(N,)`` floating array (any float dtype; its cotangent has its dtype).
      bias: None or an ``(N,)`` floating array (any float dtype).
      epsilon: Python float ``>= 0`` added to the variance (static).
      subtract_mean: True for LayerNorm (Ba et al., 2016), False for RMSNorm (Zhang & Sennrich, 2019).
      interpret: run the kernels in Pallas interpret mode (any backend, e.g. CPU tests); default False needs a GPU
        (see :func:`pallas_available`).
      block_rows: rows per program tile (a power of 2), used by both kernels; default
        ``min(16, 4096 // block_n, next_power_of_2(M))`` (at least 1), where ``block_n = max(16,
        next_power_of_2(N))`` is the padded row.
      num_programs: programs of the backward's persistent grid; default ``min(ceil(M / block_rows), 4 * SMs)``
        with the GPU's SM count (132, i.e. 528 programs, when unknown). Forward: one program per row tile.

    Returns:
      ``y`` with the shape and dtype of ``x``.

    Raises:
      ValueError: ``x`` not 2-D or with ``N == 0``; ``N > max_row_length(x.dtype)`` (``65536 // itemsize``:
        16384 for float32, 32768 for 16-bit types; use ``implementation="xla"`` for longer rows); ``scale`` or
        ``bias`` not of shape ``(N,)``; ``epsilon < 0`` or not finite; ``block_rows`` not a positive power of 2;
        ``num_programs < 1``.
      TypeError: ``x`` not float32/bfloat16/float16 (float64 and integers are rejected); ``scale``/``bias`` not
        floating; ``epsilon`` not a Python number (e.g. a traced array); flags of the wrong type.

    Triton compiler parameters: ``num_warps`` 4 for tiles below 2048 elements, 8 up to 8192, 16 above
    (ignored in interpret mode).
    """
    x, scale, bias, epsilon, block_rows, num_programs = _checked_rows(
        x, scale, bias, epsilon, subtract_mean, interpret, block_rows, num_programs
    )
    bias_dtype = None if bias is None else np.dtype(bias.dtype)
    return _normalize(
        x, scale, bias, epsilon, bool(subtract_mean), bool(interpret), block_rows, num_programs, bias_dtype
    )
