"""Fused log-softmax + negative log-likelihood (F.cross_entropy on (N, V) logits), forward and backward, in Triton.

Math (row i with logits x_i of length V and target t_i; rows with t_i == ignore_index are "ignored"):
  forward   lse_i = m_i + log s_i  with  m_i = max_j x_ij,  s_i = sum_j exp(x_ij - m_i)   (online, one pass)
            loss_i = log s_i - (x_i,t_i - m_i)  (0 for an ignored row; the same rounding order as torch's
            log_softmax, so fp32 results agree to ~1 ulp per row)
            reduction: "mean" = sum_i loss_i / #kept rows (NaN when every row is ignored, as torch),
                       "sum" = sum_i loss_i, "none" = the vector loss_i.
            The kernel stores only lse_i and loss_i per row; the final sum over N row losses is one torch
            reduction (N values, negligible beside the N x V pass).
  backward  dL/dx_ij = (exp(x_ij - lse_i) - [j == t_i]) * w_i, with w_i = grad_out / #kept ("mean"),
            grad_out ("sum") or grad_out_i ("none"), and 0 for ignored rows. Recomputed from the logits and
            lse: no probability matrix is ever stored.
  bad targets  a target outside [0, V) that is not ignore_index is never used as an address: the kernel flags
            the row (bad_i = 1) and gives it a NaN loss and NaN gradients, so a training loop that checks its loss
            for NaN catches it even when nobody reads the flags. The wrapper reads the flags at once (one host
            sync; ValueError naming the first bad target) unless it is given a DeviceChecks, which counts them on
            the device for a later check() (no sync in the training step).

Memory traffic for N x V logits of b bytes: forward reads N·V·b once (+ N targets, writes 2 N floats); backward
reads N·V·b once and writes N·V·b. Torch's log_softmax + nll_loss forward writes the N x V log-probabilities and
its backward reads them back, so the fused op moves 3 N·V·b against torch's >= 5 N·V·b (the >= 1.5x GPU target
at V = 10,000; not measurable on this CPU-only machine).

Interpreter (no GPU): the cost is Triton's per-element load/store emulation (~6 ns per element) plus numpy work per
op, so fp32 rows of even length are read and written as int64 pairs (PACKED, never chosen on a GPU), tiles are
256 rows x 1024 pairs, and the one-hot term of the backward is stored after the row pass. (1280, 10000) fp32 took
0.21 s forward + 0.34 s backward on this 2-core machine, half of it in that load/store emulation (torch's own
cross-entropy: 0.02 s + 0.07 s).
"""
from __future__ import annotations

import numbers

import torch

from kernels._utils import (FLOAT_DTYPES, MAX, ROW_SHAPES, SUM, TL_NAME, DeviceChecks, Launch, check_device,
                            check_logits, empty, interpreted, meta_tensor, row_stride, row_tiles)

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

__all__ = ["cross_entropy", "cross_entropy_reference", "gpu_compile_configs"]

# the row count only bounds a mask; ignore_index is a value, never an address (no divisibility to exploit)
_NO_SPEC = ["n_rows", "ignore_index"]
REDUCTIONS = ("mean", "sum", "none")


# ----------------------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------------------
# Bits of the fp32 pair (-inf, -inf) read as one int64: the padding of the packed (interpreter) loads.
_NEG_INF_PAIR = -36028792732385280


@triton.jit(do_not_specialize=_NO_SPEC)
def _ce_fwd_kernel(x_ptr, t_ptr, lse_ptr, loss_ptr, bad_ptr, n_rows, n_cols, stride_x, ignore_index,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, FP64: tl.constexpr, PACKED: tl.constexpr):
    # x: (n_rows, n_cols) logits, last dim contiguous; t: (n_rows,) int64; lse, loss: (n_rows,) acc dtype;
    # bad: (n_rows,) int32, 1 where the target is outside [0, n_cols) and not ignore_index.
    # PACKED (interpreter only, fp32, even n_cols and stride): read column pairs as one int64, which halves the
    # interpreter's per-element load cost; BLOCK_N then counts pairs. Helpers are inlined on purpose: every
    # nested @triton.jit call re-patches triton.language in the interpreter (~1 ms).
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_rows
    cols = tl.arange(0, BLOCK_N)
    tgt = tl.load(t_ptr + rows, mask=row_ok, other=ignore_index)
    keep = row_ok & (tgt != ignore_index)
    bad = keep & ((tgt < 0) | (tgt >= n_cols))
    keep = keep & ~bad
    m = tl.full((BLOCK_M,), float("-inf"), tl.float64 if FP64 else tl.float32)
    s = tl.zeros((BLOCK_M,), tl.float64 if FP64 else tl.float32)
    if PACKED:
        n_pairs = n_cols // 2
        xp_rows = x_ptr.to(tl.pointer_type(tl.int64)) + rows * (stride_x // 2)
        for start in range(0, n_pairs, BLOCK_N):
            c = start + cols
            mask = row_ok[:, None] & (c < n_pairs)[None, :]
            v = tl.load(xp_rows[:, None] + c[None, :], mask=mask, other=_NEG_INF_PAIR)
            lo = v.to(tl.int32).to(tl.float32, bitcast=True)  # the int64 -> int32 cast keeps the low half
            hi = (v >> 32).to(tl.int32).to(tl.float32, bitcast=True)
            m_new = tl.maximum(m, tl.maximum(tl.reduce(lo, 1, MAX), tl.reduce(hi, 1, MAX)))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            s = s * tl.exp(m - m_safe) + tl.reduce(tl.exp(lo - m_safe[:, None]), 1, SUM) \
                + tl.reduce(tl.exp(hi - m_safe[:, None]), 1, SUM)
            m = m_new
    else:
        x_rows = x_ptr + rows * stride_x
        for start in range(0, n_cols, BLOCK_N):
            c = start + cols
            mask = row_ok[:, None] & (c < n_cols)[None, :]
            x = tl.load(x_rows[:, None] + c[None, :], mask=mask, other=float("-inf"))
            x = x.to(tl.float64 if FP64 else tl.float32)
            # online softmax; an all -inf prefix keeps s = 0 (exp(-inf + inf) would be NaN)
            m_new = tl.maximum(m, tl.reduce(x, 1, MAX))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            s = s * tl.exp(m - m_safe) + tl.reduce(tl.exp(x - m_safe[:, None]), 1, SUM)
            m = m_new
    x_t = tl.load(x_ptr + rows * stride_x + tl.where(keep, tgt, 0), mask=keep, other=0.0)
    x_t = x_t.to(tl.float64 if FP64 else tl.float32)
    log_s = tl.log(s)
    tl.store(lse_ptr + rows, m + log_s, mask=row_ok)
    tl.store(loss_ptr + rows, tl.where(keep, log_s - (x_t - m), tl.where(bad, float("nan"), 0.0)), mask=row_ok)
    tl.store(bad_ptr + rows, bad.to(tl.int32), mask=row_ok)


@triton.jit(do_not_specialize=_NO_SPEC)
def _ce_bwd_kernel(x_ptr, t_ptr, lse_ptr, w_ptr, dx_ptr, n_rows, n_cols, stride_x, stride_dx, stride_w,
                   ignore_index, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, FP64: tl.constexpr,
                   PACKED: tl.constexpr):
    # w: per-row upstream weight (stride_w = 0 broadcasts one scalar); dx: (n_rows, n_cols) like x.
    # PACKED: as in _ce_fwd_kernel, for the loads and the stores. Ignored rows have w = 0, so their gradient is 0
    # for every finite logit (a +inf logit in an ignored row would give NaN where torch gives 0).
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_rows
    cols = tl.arange(0, BLOCK_N)
    tgt = tl.load(t_ptr + rows, mask=row_ok, other=ignore_index)
    keep = row_ok & (tgt != ignore_index)
    bad = keep & ((tgt < 0) | (tgt >= n_cols))
    keep = keep & ~bad
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    w = tl.load(w_ptr + rows * stride_w, mask=row_ok, other=0.0).to(tl.float64 if FP64 else tl.float32)
    # an ignored row gets weight 0, also when w is inf or NaN (a mean over 0 rows); a bad target's row gets NaN
    w = tl.where(keep, w, tl.where(bad, float("nan"), 0.0))
    if PACKED:
        n_pairs = n_cols // 2
        xp_rows = x_ptr.to(tl.pointer_type(tl.int64)) + rows * (stride_x // 2)
        dxp_rows = dx_ptr.to(tl.pointer_type(tl.int64)) + rows * (stride_dx // 2)
        for start in range(0, n_pairs, BLOCK_N):
            c = start + cols
            mask = row_ok[:, None] & (c < n_pairs)[None, :]
            v = tl.load(xp_rows[:, None] + c[None, :], mask=mask, other=0)
            lo = v.to(tl.int32).to(tl.float32, bitcast=True)
            hi = (v >> 32).to(tl.int32).to(tl.float32, bitcast=True)
            g_lo = tl.exp(lo - lse[:, None]) * w[:, None]
            g_hi = tl.exp(hi - lse[:, None]) * w[:, None]
            packed = g_lo.to(tl.uint32, bitcast=True).to(tl.int64) \
                | (g_hi.to(tl.uint32, bitcast=True).to(tl.int64) << 32)
            tl.store(dxp_rows[:, None] + c[None, :], packed, mask=mask)
        # the one-hot term, written over the target entries afterwards: fine in the interpreter, which runs a
        # program's stores in order (a GPU launch never takes this path)
        x_t = tl.load(x_ptr + rows * stride_x + tl.where(keep, tgt, 0), mask=keep, other=0.0)
        tl.store(dx_ptr + rows * stride_dx + tl.where(keep, tgt, 0), (tl.exp(x_t - lse) - 1.0) * w, mask=keep)
    else:
        x_rows = x_ptr + rows * stride_x
        dx_rows = dx_ptr + rows * stride_dx
        for start in range(0, n_cols, BLOCK_N):
            c = start + cols
            mask = row_ok[:, None] & (c < n_cols)[None, :]
            x = tl.load(x_rows[:, None] + c[None, :], mask=mask, other=0.0).to(tl.float64 if FP64 else tl.float32)
            p = tl.exp(x - lse[:, None]) - tl.where(c[None, :] == tgt[:, None], 1.0, 0.0)
            dx = p * w[:, None]
            tl.store(dx_rows[:, None] + c[None, :], dx.to(dx_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------------------------
def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_args(logits, targets, ignore_index, reduction, checks) -> None:
    check_logits(logits)
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (N, V), got {tuple(logits.shape)}")
    if not isinstance(targets, torch.Tensor):
        raise ValueError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    if targets.dtype != torch.int64:
        raise ValueError(f"targets must be int64, got {targets.dtype}")
    check_device(targets, "targets")
    if targets.device != logits.device:
        raise ValueError(f"targets must be on logits' device {logits.device}, got {targets.device}")
    if targets.shape != logits.shape[:1]:
        raise ValueError(f"targets must have shape ({logits.shape[0]},), got {tuple(targets.shape)}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral) \
            or not -2**31 <= int(ignore_index) < 2**31:
        raise ValueError(f"ignore_index must be an int in [-2**31, 2**31), got {ignore_index!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if checks is not None and (not isinstance(checks, DeviceChecks) or checks.device != logits.device):
        raise ValueError(f"checks must be None or a DeviceChecks on logits' device {logits.device}, got {checks!r}")


def _packable(x: torch.Tensor) -> bool:
    """Interpreter only: fp32 rows that can be read as int64 pairs (even length and stride, 8-byte aligned)."""
    return (interpreted(x) and x.dtype == torch.float32 and x.shape[1] % 2 == 0 and row_stride(x) % 2 == 0
            and x.data_ptr() % 8 == 0)


def _forward_launch(logits, targets, lse, loss, bad, ignore_index: int) -> Launch:
    n_rows, n_cols = logits.shape
    packed = _packable(logits)
    bm, bn, warps = row_tiles(n_rows, n_cols // 2 if packed else n_cols, logits.device)
    return Launch(_ce_fwd_kernel, (triton.cdiv(n_rows, bm),),
                  dict(x_ptr=logits, t_ptr=targets, lse_ptr=lse, loss_ptr=loss, bad_ptr=bad, n_rows=n_rows,
                       n_cols=n_cols, stride_x=row_stride(logits), ignore_index=int(ignore_index)),
                  dict(BLOCK_M=bm, BLOCK_N=bn, FP64=lse.dtype == torch.float64, PACKED=packed), num_warps=warps)


def _backward_launch(logits, targets, lse, w, dx, ignore_index: int) -> Launch:
    n_rows, n_cols = logits.shape
    packed = _packable(logits) and _packable(dx)
    bm, bn, warps = row_tiles(n_rows, n_cols // 2 if packed else n_cols, logits.device)
    return Launch(_ce_bwd_kernel, (triton.cdiv(n_rows, bm),),
                  dict(x_ptr=logits, t_ptr=targets, lse_ptr=lse, w_ptr=w, dx_ptr=dx, n_rows=n_rows, n_cols=n_cols,
                       stride_x=row_stride(logits), stride_dx=row_stride(dx),
                       stride_w=0 if w.dim() == 0 else w.stride(0), ignore_index=int(ignore_index)),
                  dict(BLOCK_M=bm, BLOCK_N=bn, FP64=lse.dtype == torch.float64, PACKED=packed), num_warps=warps)


def _ce_forward(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int):
    """-> (lse (N,), loss (N,)) in the accumulation dtype (fp32, or fp64 for fp64 logits), bad (N,) int32."""
    n_rows = logits.shape[0]
    acc = _acc_dtype(logits.dtype)
    lse = empty(n_rows, acc, logits.device)
    loss = empty(n_rows, acc, logits.device)
    bad = empty(n_rows, torch.int32, logits.device)
    if n_rows:
        _forward_launch(logits, targets, lse, loss, bad, ignore_index)()
    return lse, loss, bad


def _ce_backward(logits, targets, lse, w: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """w: 0-d or (N,) upstream weight per row (acc dtype) -> dL/dlogits, logits' dtype and shape."""
    n_rows, n_cols = logits.shape
    dx = empty((n_rows, n_cols), logits.dtype, logits.device)
    if n_rows:
        _backward_launch(logits, targets, lse, w.to(lse.dtype), dx, ignore_index)()
    return dx


class _CrossEntropyFunction(torch.autograd.Function):
    """(logits, targets) -> (loss, bad (N,) int32 flags of targets outside [0, V)); flags are not differentiable."""

    @staticmethod
    def forward(ctx, logits, targets, ignore_index: int, reduction: str):
        if logits.shape[1] > 1 and logits.stride(1) != 1:
            logits = logits.contiguous()
        targets = targets.contiguous()
        lse, loss, bad = _ce_forward(logits, targets, ignore_index)
        ctx.mark_non_differentiable(bad)
        ctx.ignore_index, ctx.reduction = ignore_index, reduction
        if reduction == "none":
            ctx.save_for_backward(logits, targets, lse)
            return loss.to(logits.dtype), bad
        total = loss.sum()
        if reduction == "mean":
            count = (targets != ignore_index).sum().to(lse.dtype)
            ctx.save_for_backward(logits, targets, lse, count)
            return (total / count).to(logits.dtype), bad  # 0 / 0 = NaN when every row is ignored, as torch
        ctx.save_for_backward(logits, targets, lse)
        return total.to(logits.dtype), bad

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, _grad_bad):
        logits, targets, lse, *rest = ctx.saved_tensors
        w = grad_out.to(lse.dtype)
        if ctx.reduction == "mean":
            w = w / rest[0]
        return _ce_backward(logits, targets, lse, w, ctx.ignore_index), None, None, None


# ----------------------------------------------------------------------------------------------------------------
# Public function and reference
# ----------------------------------------------------------------------------------------------------------------
def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
                  reduction: str = "mean", checks: DeviceChecks | None = None) -> torch.Tensor:
    """F.cross_entropy(logits, targets, ignore_index=..., reduction=...) fused in Triton.

    logits: (N, V) float32, float16, bfloat16 or float64 (CPU under Triton's interpreter, else CUDA); targets:
    (N,) int64 in [0, V) or equal to ignore_index. reduction: "mean" (over rows not ignored; NaN if all are ignored,
    exactly as torch), "sum" (use it for exact evaluation totals) or "none" (per-row losses, 0 for ignored rows).
    Accumulation is fp32 (fp64 for fp64 logits); the result has logits' dtype. Differentiable in logits.
    The forward reads the logits once and keeps only a per-row logsumexp; the backward reads them once more and
    writes the gradient.

    checks: None (default) reads the kernel's flags of targets outside [0, V) at once (one host sync) and raises
    ValueError naming the first; a kernels.DeviceChecks on logits' device instead counts them there (no host sync;
    their losses and gradients are NaN) until its check(). Other bad arguments raise ValueError naming them.
    """
    _check_args(logits, targets, ignore_index, reduction, checks)
    loss, bad = _CrossEntropyFunction.apply(logits, targets, int(ignore_index), reduction)
    if checks is not None:
        checks.add("targets", bad.sum())
    elif bad.numel() and bool(bad.any()):  # the eager check: one host sync
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"targets[{i}] = {int(targets[i])} is outside [0, {logits.shape[1]}) "
                         f"and is not ignore_index ({ignore_index})")
    return loss


def cross_entropy_reference(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
                            reduction: str = "mean") -> torch.Tensor:
    """Plain PyTorch, written out: log-softmax by max-subtraction, pick the target, average over kept rows."""
    keep = targets != ignore_index
    m = logits.max(dim=1, keepdim=True).values
    log_probs = (logits - m) - torch.log(torch.exp(logits - m).sum(dim=1, keepdim=True))
    picked = log_probs.gather(1, torch.where(keep, targets, 0)[:, None])[:, 0]
    losses = torch.where(keep, -picked, torch.zeros_like(picked))
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    return losses.sum() / keep.sum()


def gpu_compile_configs() -> list:
    """The forward and backward kernels at the (dtype, row length) pairs of kernels._utils.ROW_SHAPES (every GPU
    tile, every dtype, lengths divisible by 16 or not), specialised as those launches are (kernels/compile_report.py),
    with reduction "mean" (the backward's weight is one broadcast scalar). PACKED is chosen only under the
    interpreter, never on a GPU."""
    out = []
    for dt, n_cols in ROW_SHAPES:
        acc = _acc_dtype(dt)
        x = meta_tensor((1280, n_cols), dt)
        t = meta_tensor(1280, torch.int64)
        lse, loss, w = (meta_tensor(1280, acc) for _ in range(3))
        fwd = _forward_launch(x, t, lse, loss, meta_tensor(1280, torch.int32), -100)
        bwd = _backward_launch(x, t, lse, meta_tensor((), acc), x, -100)
        tile = f"{fwd.constexprs['BLOCK_M']}x{fwd.constexprs['BLOCK_N']}_V{n_cols}"
        out.append(fwd.compile_config(f"cross_entropy_fwd_{TL_NAME[dt]}_{tile}"))
        out.append(bwd.compile_config(f"cross_entropy_bwd_{TL_NAME[dt]}_{tile}"))
    return out
