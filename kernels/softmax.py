"""Temperature softmax over the last dimension: softmax(z / T), forward and backward, in Triton.

Math (one row z of length V, temperature T > 0, y = softmax(z / T)):
  forward   m = max_j z_j / T,  s = sum_j exp(z_j / T - m),  y_j = exp(z_j / T - m) / s.
            m and s come from ONE pass over the row (online softmax): per column block b with block
            maximum m_b, m' = max(m, m_b), s' = s * exp(m - m') + sum_{j in b} exp(z_j / T - m').
            A second pass writes y. When every entry seen so far is -inf, m' = -inf and exp(m - m') would be
            exp(-inf + inf) = NaN, so the rescaling uses 0 in place of an infinite m' (s stays 0 then).
            A row that is entirely -inf ends with s = 0 and m = -inf, so y = exp(NaN) = NaN: as torch.
  backward  dL/dz_j = y_j (g_j - sum_k g_k y_k) / T, with g = dL/dy: one pass for the dot product, one to write.
Accumulation is fp32 (fp64 for fp64 input); the output has the input's dtype.

Memory traffic per row of V elements of b bytes: forward reads 2·V·b (the second read usually hits L2 on a GPU;
DRAM traffic is one read) and writes V·b; backward reads y and g twice and writes V·b. Torch's eager
`softmax(x / T)` adds a full read + write for the division, so the fused op moves 2 V·b of DRAM traffic against
4 V·b (the >= 1.5x target at V = 10,000 on a GPU; not measurable on this CPU-only machine).

Tiling: every program takes BLOCK_M rows x BLOCK_N columns and loops over column blocks, so any V >= 1 works
(tested up to 70,000; 256k is 16 iterations of the interpreter's 16,384-column tile). On a GPU the launcher picks
one of three fixed tiles (see `_gpu_tiles`); in the interpreter it picks large tiles (cost there is per op).

This module also holds the helpers the sibling ops (kernels.sample, kernels.cross_entropy) share: tile choice and
argument checks.
"""
from __future__ import annotations

import contextlib
import math
import numbers

import numpy as np
import torch

from kernels import _runtime  # noqa: F401  (sets TRITON_INTERPRET before triton is imported)
from kernels._runtime import INTERPRETED, announce_interpreter_once

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

__all__ = ["softmax", "softmax_reference", "gpu_compile_configs"]

# Integer arguments are never specialised on their value (1 or multiples of 16), so the configurations listed by
# gpu_compile_configs() are exactly the ones a GPU launch compiles.
_NO_SPEC = ["n_rows", "n_cols", "stride_x", "stride_y", "stride_g"]


# ----------------------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------------------
# Row reductions are written tl.reduce(x, 1, _SUM) rather than tl.sum(x, 1): tl.sum / tl.max / tl.argmax are
# @jit functions themselves, and the interpreter re-patches triton.language on every nested @jit call (~2-3 ms
# each, most of the run time of these kernels there). With triton's own combine functions, tl.reduce compiles to
# the same code on a GPU and runs as one numpy reduction in the interpreter.
_SUM = tl.standard._sum_combine
_MAX = tl.standard._elementwise_max
_ARGMAX = tl.standard._argmax_combine_tie_break_left  # on (value, index) pairs; ties go to the lower index
@triton.jit(do_not_specialize=_NO_SPEC)
def _softmax_fwd_kernel(x_ptr, y_ptr, n_rows, n_cols, stride_x, stride_y, temperature,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, FP64: tl.constexpr):
    # x, y: (n_rows, n_cols), last dim contiguous; this program owns rows [pid*BLOCK_M, (pid+1)*BLOCK_M).
    # Helpers are written inline: every nested @triton.jit call costs ~1 ms in the interpreter.
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_rows
    cols = tl.arange(0, BLOCK_N)
    x_rows = x_ptr + rows * stride_x
    y_rows = y_ptr + rows * stride_y
    m = tl.full((BLOCK_M,), float("-inf"), tl.float64 if FP64 else tl.float32)
    s = tl.zeros((BLOCK_M,), tl.float64 if FP64 else tl.float32)
    for start in range(0, n_cols, BLOCK_N):
        c = start + cols
        mask = row_ok[:, None] & (c < n_cols)[None, :]
        z = tl.load(x_rows[:, None] + c[None, :], mask=mask, other=float("-inf"))
        z = z.to(tl.float64 if FP64 else tl.float32) / temperature
        # online softmax; an all -inf prefix keeps s = 0 (exp(-inf + inf) would be NaN)
        m_new = tl.maximum(m, tl.reduce(z, 1, _MAX))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - m_safe) + tl.reduce(tl.exp(z - m_safe[:, None]), 1, _SUM)
        m = m_new
    inv_s = 1.0 / s
    for start in range(0, n_cols, BLOCK_N):
        c = start + cols
        mask = row_ok[:, None] & (c < n_cols)[None, :]
        z = tl.load(x_rows[:, None] + c[None, :], mask=mask, other=float("-inf"))
        z = z.to(tl.float64 if FP64 else tl.float32) / temperature
        y = tl.exp(z - m[:, None]) * inv_s[:, None]
        tl.store(y_rows[:, None] + c[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=_NO_SPEC)
def _softmax_bwd_kernel(y_ptr, g_ptr, dx_ptr, n_rows, n_cols, stride_y, stride_g, stride_x, temperature,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, FP64: tl.constexpr):
    # y = softmax output, g = dL/dy, dx = dL/dz: all (n_rows, n_cols), last dim contiguous
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_rows
    cols = tl.arange(0, BLOCK_N)
    y_rows = y_ptr + rows * stride_y
    g_rows = g_ptr + rows * stride_g
    dx_rows = dx_ptr + rows * stride_x
    dot = tl.zeros((BLOCK_M,), tl.float64 if FP64 else tl.float32)
    for start in range(0, n_cols, BLOCK_N):
        c = start + cols
        mask = row_ok[:, None] & (c < n_cols)[None, :]
        y = tl.load(y_rows[:, None] + c[None, :], mask=mask, other=0.0).to(tl.float64 if FP64 else tl.float32)
        g = tl.load(g_rows[:, None] + c[None, :], mask=mask, other=0.0).to(tl.float64 if FP64 else tl.float32)
        dot += tl.reduce(y * g, 1, _SUM)
    for start in range(0, n_cols, BLOCK_N):
        c = start + cols
        mask = row_ok[:, None] & (c < n_cols)[None, :]
        y = tl.load(y_rows[:, None] + c[None, :], mask=mask, other=0.0).to(tl.float64 if FP64 else tl.float32)
        g = tl.load(g_rows[:, None] + c[None, :], mask=mask, other=0.0).to(tl.float64 if FP64 else tl.float32)
        dx = y * (g - dot[:, None]) / temperature
        tl.store(dx_rows[:, None] + c[None, :], dx.to(dx_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------------------------
# Shared launcher helpers (also used by kernels.sample and kernels.cross_entropy)
# ----------------------------------------------------------------------------------------------------------------
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float64)
_TL_NAME = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float64: "fp64"}

# GPU tiles (BLOCK_M, BLOCK_N, num_warps) by row length: blocks of short rows, two rows for long ones; 8 to 16
# elements per thread (the compile report showed spills in sample at 32 per thread, and in sample's fp64 top-k
# path at 16 per thread for the 512-column tile; 32 x 64 tiles took 170-255 registers).
GPU_TILES = ((16, 64, 4), (4, 512, 8), (2, 2048, 8))
# Interpreter: cost is a fixed overhead per op plus numpy work per element, so tiles are as large as this
# (elements) and the column block is chosen to waste little padding.
_INTERP_TILE_ELEMS = 1 << 18
_INTERP_MAX_BLOCK_N = 1 << 14


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _gpu_tiles(n_cols: int) -> tuple[int, int, int]:
    for bm, bn, warps in GPU_TILES:
        if n_cols <= bn:
            return bm, bn, warps
    return GPU_TILES[-1]


def row_tiles(n_rows: int, n_cols: int, whole_rows: bool = False) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps) for a row-wise kernel over an (n_rows, n_cols) matrix.

    whole_rows: in the interpreter, prefer one column block per row (kernels that pass over a row many times,
    like sample's bisection)."""
    if not INTERPRETED:
        return _gpu_tiles(n_cols)
    if whole_rows or n_cols <= 1024:
        bn = min(_next_pow2(n_cols), _INTERP_MAX_BLOCK_N)
    else:
        # padded columns per row + a per-iteration overhead worth ~512 columns, smallest wins
        bn = min((1 << k for k in range(10, 15)), key=lambda b: (-(-n_cols // b)) * (b + 512))
    bm_cap = max(1, min(_INTERP_TILE_ELEMS // bn, _next_pow2(n_rows)))
    # padded rows + a per-program overhead worth ~16 rows of work, smallest wins; ties go to bigger tiles
    cands = [1 << k for k in range(bm_cap.bit_length())]
    bm = min(cands, key=lambda b: ((-(-n_rows // b)) * (b + 16), -b))
    return bm, bn, 4


def quiet_numpy():
    """The interpreter evaluates exp(-inf), log(0), -inf - -inf in numpy, as a GPU would, without warnings."""
    if INTERPRETED:
        return np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore")
    return contextlib.nullcontext()


def check_device(t: torch.Tensor, name: str) -> None:
    if INTERPRETED:
        if t.device.type != "cpu":
            raise ValueError(f"{name} must be a CPU tensor when Triton runs in its interpreter, got {t.device}")
    elif t.device.type != "cuda":
        raise ValueError(f"{name} must be a CUDA tensor, got {t.device}")


def check_logits(logits, name: str = "logits", min_dim: int = 1) -> None:
    if not isinstance(logits, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be float32, bfloat16 or float64, got {logits.dtype}")
    check_device(logits, name)
    if logits.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimension(s), got shape {tuple(logits.shape)}")
    if logits.shape[-1] < 1:
        raise ValueError(f"{name} must have a non-empty last dimension, got shape {tuple(logits.shape)}")
    if logits.shape[-1] >= 2**31:
        raise ValueError(f"{name} last dimension must be < 2**31, got {logits.shape[-1]}")


def check_temperature(temperature, allow_zero: bool = False) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise ValueError(f"temperature must be a real number, got {type(temperature).__name__}")
    t = float(temperature)
    if not math.isfinite(t):
        raise ValueError(f"temperature must be finite, got {t}")
    if t < 0 or (t == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"temperature must be {bound}, got {t}")
    return t


def as_rows(x: torch.Tensor) -> torch.Tensor:
    """(..., V) -> (R, V) view (copy only when needed) with a unit column stride."""
    x2 = x.reshape(-1, x.shape[-1])
    if x2.shape[1] > 1 and x2.stride(1) != 1:
        x2 = x2.contiguous()
    return x2


def row_stride(x2: torch.Tensor) -> int:
    return x2.stride(0) if x2.shape[0] > 1 else x2.shape[1]


# ----------------------------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------------------------
def _softmax_forward(x2: torch.Tensor, temperature: float) -> torch.Tensor:
    """x2: (R, V) with unit column stride -> y (R, V) contiguous, same dtype."""
    n_rows, n_cols = x2.shape
    y = torch.empty((n_rows, n_cols), dtype=x2.dtype, device=x2.device)
    if n_rows == 0:
        return y
    if x2.dtype == torch.float64 and temperature != 1.0:
        # the kernel's runtime temperature is an fp32 scalar: divide fp64 logits exactly here instead
        x2, temperature = x2 / temperature, 1.0
    bm, bn, warps = row_tiles(n_rows, n_cols)
    announce_interpreter_once()
    with quiet_numpy():
        _softmax_fwd_kernel[(triton.cdiv(n_rows, bm),)](
            x2, y, n_rows, n_cols, row_stride(x2), y.stride(0), temperature,
            BLOCK_M=bm, BLOCK_N=bn, FP64=x2.dtype == torch.float64, num_warps=warps)
    return y


def _softmax_backward(y: torch.Tensor, g: torch.Tensor, temperature: float) -> torch.Tensor:
    """y, g: (R, V) (y contiguous) -> dL/dz (R, V) in y's dtype."""
    n_rows, n_cols = y.shape
    g = g.to(y.dtype)
    if n_cols > 1 and g.stride(1) != 1:
        g = g.contiguous()
    dx = torch.empty_like(y)
    if n_rows == 0:
        return dx
    fp64 = y.dtype == torch.float64
    bm, bn, warps = row_tiles(n_rows, n_cols)
    with quiet_numpy():
        _softmax_bwd_kernel[(triton.cdiv(n_rows, bm),)](
            y, g, dx, n_rows, n_cols, row_stride(y), row_stride(g), dx.stride(0),
            1.0 if fp64 else temperature, BLOCK_M=bm, BLOCK_N=bn, FP64=fp64, num_warps=warps)
    if fp64 and temperature != 1.0:
        dx = dx / temperature  # see _softmax_forward: fp64 keeps the temperature exact
    return dx


class _SoftmaxFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, temperature: float) -> torch.Tensor:
        y2 = _softmax_forward(as_rows(logits), temperature)
        ctx.temperature = temperature
        ctx.save_for_backward(y2)
        return y2.view(logits.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y: torch.Tensor):
        (y2,) = ctx.saved_tensors
        dx = _softmax_backward(y2, as_rows(grad_y), ctx.temperature)
        return dx.view(grad_y.shape), None


# ----------------------------------------------------------------------------------------------------------------
# Public function and reference
# ----------------------------------------------------------------------------------------------------------------
def softmax(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """softmax(logits / temperature) over the last dimension, fused (one read of the logits, one write).

    logits: (..., V) float32, bfloat16 or float64 tensor, V >= 1 (CPU under Triton's interpreter, else CUDA).
    temperature: finite real number > 0, a runtime value (no recompilation per temperature).
    Returns a tensor of logits' shape and dtype; differentiable (backward is a Triton kernel too). A row that is
    entirely -inf gives NaN, as torch.softmax does. Raises ValueError naming the bad argument.
    """
    check_logits(logits)
    t = check_temperature(temperature)
    return _SoftmaxFunction.apply(logits, t)


def softmax_reference(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Plain PyTorch: subtract the row maximum, exponentiate, normalise (computed in float64, cast back)."""
    z = logits.double() / temperature
    e = torch.exp(z - z.max(dim=-1, keepdim=True).values)
    return (e / e.sum(dim=-1, keepdim=True)).to(logits.dtype)


def gpu_compile_configs() -> list:
    """Every (kernel, dtype, tile) a GPU launch of softmax can compile (see kernels/compile_report.py)."""
    from kernels.compile_report import CompileConfig

    out = []
    for dt, name in _TL_NAME.items():
        fp64 = dt == torch.float64
        for bm, bn, warps in GPU_TILES:
            tile = dict(BLOCK_M=bm, BLOCK_N=bn, FP64=fp64)
            out.append(CompileConfig(
                name=f"softmax_fwd_{name}_{bm}x{bn}", fn=_softmax_fwd_kernel,
                signature={"x_ptr": f"*{name}", "y_ptr": f"*{name}", "n_rows": "i32", "n_cols": "i32",
                           "stride_x": "i32", "stride_y": "i32", "temperature": "fp32",
                           "BLOCK_M": "constexpr", "BLOCK_N": "constexpr", "FP64": "constexpr"},
                constexprs=tile, expect_tensor_cores=False, num_warps=warps))
            out.append(CompileConfig(
                name=f"softmax_bwd_{name}_{bm}x{bn}", fn=_softmax_bwd_kernel,
                signature={"y_ptr": f"*{name}", "g_ptr": f"*{name}", "dx_ptr": f"*{name}", "n_rows": "i32",
                           "n_cols": "i32", "stride_y": "i32", "stride_g": "i32", "stride_x": "i32",
                           "temperature": "fp32", "BLOCK_M": "constexpr", "BLOCK_N": "constexpr",
                           "FP64": "constexpr"},
                constexprs=tile, expect_tensor_cores=False, num_warps=warps))
    return out
