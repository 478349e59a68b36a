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
one of three fixed tiles (kernels._utils.GPU_TILES); in the interpreter it picks large tiles (cost there is per op).

Specialisation: the row length and the strides are specialised by Triton as usual (divisible by 16: V = 10,000 is,
so its loads vectorise); the row count is not (it only bounds a mask, and one compiled kernel serves any batch).
"""
from __future__ import annotations

import torch

from kernels._utils import (FLOAT_DTYPES, MAX, ROW_SHAPES, SUM, TL_NAME, Launch, as_rows, check_logits,
                            check_temperature, empty, meta_tensor, row_stride, row_tiles)

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

__all__ = ["softmax", "softmax_reference", "gpu_compile_configs"]

_NO_SPEC = ["n_rows"]  # see the module docstring


# ----------------------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------------------
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
        m_new = tl.maximum(m, tl.reduce(z, 1, MAX))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - m_safe) + tl.reduce(tl.exp(z - m_safe[:, None]), 1, SUM)
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
        dot += tl.reduce(y * g, 1, SUM)
    for start in range(0, n_cols, BLOCK_N):
        c = start + cols
        mask = row_ok[:, None] & (c < n_cols)[None, :]
        y = tl.load(y_rows[:, None] + c[None, :], mask=mask, other=0.0).to(tl.float64 if FP64 else tl.float32)
        g = tl.load(g_rows[:, None] + c[None, :], mask=mask, other=0.0).to(tl.float64 if FP64 else tl.float32)
        dx = y * (g - dot[:, None]) / temperature
        tl.store(dx_rows[:, None] + c[None, :], dx.to(dx_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------------------------
def _forward_launch(x2: torch.Tensor, y: torch.Tensor, temperature: float) -> Launch:
    n_rows, n_cols = x2.shape
    bm, bn, warps = row_tiles(n_rows, n_cols, x2.device)
    return Launch(_softmax_fwd_kernel, (triton.cdiv(n_rows, bm),),
                  dict(x_ptr=x2, y_ptr=y, n_rows=n_rows, n_cols=n_cols, stride_x=row_stride(x2),
                       stride_y=row_stride(y), temperature=temperature),
                  dict(BLOCK_M=bm, BLOCK_N=bn, FP64=x2.dtype == torch.float64), num_warps=warps)


def _backward_launch(y: torch.Tensor, g: torch.Tensor, dx: torch.Tensor, temperature: float) -> Launch:
    n_rows, n_cols = y.shape
    bm, bn, warps = row_tiles(n_rows, n_cols, y.device)
    return Launch(_softmax_bwd_kernel, (triton.cdiv(n_rows, bm),),
                  dict(y_ptr=y, g_ptr=g, dx_ptr=dx, n_rows=n_rows, n_cols=n_cols, stride_y=row_stride(y),
                       stride_g=row_stride(g), stride_x=row_stride(dx), temperature=temperature),
                  dict(BLOCK_M=bm, BLOCK_N=bn, FP64=y.dtype == torch.float64), num_warps=warps)


def _softmax_forward(x2: torch.Tensor, temperature: float) -> torch.Tensor:
    """x2: (R, V) with unit column stride -> y (R, V) contiguous, same dtype."""
    n_rows, n_cols = x2.shape
    y = empty((n_rows, n_cols), x2.dtype, x2.device)
    if n_rows == 0:
        return y
    if x2.dtype == torch.float64 and temperature != 1.0:
        # the kernel's runtime temperature is an fp32 scalar: divide fp64 logits exactly here instead
        x2, temperature = x2 / temperature, 1.0
    _forward_launch(x2, y, temperature)()
    return y


def _softmax_backward(y: torch.Tensor, g: torch.Tensor, temperature: float) -> torch.Tensor:
    """y, g: (R, V) (y contiguous) -> dL/dz (R, V) in y's dtype."""
    n_rows, n_cols = y.shape
    g = g.to(y.dtype)
    if n_cols > 1 and g.stride(1) != 1:
        g = g.contiguous()
    dx = empty((n_rows, n_cols), y.dtype, y.device)
    if n_rows == 0:
        return dx
    fp64 = y.dtype == torch.float64
    _backward_launch(y, g, dx, 1.0 if fp64 else temperature)()
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

    logits: (..., V) float32, float16, bfloat16 or float64 tensor, V >= 1 (CPU under Triton's interpreter, else CUDA).
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
    """The forward and backward kernels at the (dtype, row length) pairs of kernels._utils.ROW_SHAPES (every GPU
    tile, every dtype, lengths divisible by 16 or not), specialised as those launches are
    (kernels/compile_report.py)."""
    out = []
    for dt, n_cols in ROW_SHAPES:
        x, y, g = (meta_tensor((1280, n_cols), dt) for _ in range(3))
        fwd, bwd = _forward_launch(x, y, 0.8), _backward_launch(y, g, x, 0.8)
        tile = f"{fwd.constexprs['BLOCK_M']}x{fwd.constexprs['BLOCK_N']}_V{n_cols}"
        out.append(fwd.compile_config(f"softmax_fwd_{TL_NAME[dt]}_{tile}"))
        out.append(bwd.compile_config(f"softmax_bwd_{TL_NAME[dt]}_{tile}"))
    return out
