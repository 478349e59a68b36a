r"""The Elman recurrence of torch.nn.RNN as Triton kernels: forward, backward, nn.RNN's whole interface.

Math (one layer, one direction; B batch rows, T steps, I inputs, H hidden units, phi = tanh | relu)
------------------------------------------------------------------------------------------------
    a_t = x_t W_ih^T + b_ih + b_hh + h_{t-1} W_hh^T        (B, H)      h_0 given (or zeros)
    h_t = phi(a_t)                                           output y_t = h_t, h_n = h_T
Only the h_{t-1} W_hh^T term is sequential, so the work splits in two:
  * xp = X W_ih^T + (b_ih + b_hh) for all T*B rows at once: one torch GEMM (addmm), both biases folded in;
  * the recurrence h_t = phi(xp_t + h_{t-1} W_hh^T): ONE Triton launch that loops over t inside the kernel.
Backward, with dY_t = dL/dy_t and dh_n = dL/dh_T given: the total gradient reaching h_t is
dY_t + dA_{t+1} W_hh (plus dh_n at t = T), so
    dA_t = (dY_t + dA_{t+1} W_hh) (.) phi'(a_t),   dA_{T+1} W_hh := dh_n,   dh_0 = dA_1 W_hh
with phi' read off the stored output (tanh' = 1 - h_t^2, relu' = [h_t > 0]): ONE launch walking t in
reverse writes every dA_t and dh_0. The rest are GEMMs over all T*B rows, with no atomics (deterministic):
    dW_hh = sum_t dA_t^T h_{t-1}   (one (H, T*B) x (T*B, H) GEMM against the stored states)
    dW_ih = dA^T X,   db_ih = db_hh = sum dA,   dX = dA W_ih   (autograd of the addmm above)
For the reverse direction t runs from T down to 1 and h_{t+1} plays h_{t-1}'s part. Layers stack, the
directions' outputs are concatenated, and dropout (training only) is applied to every layer's output
except the last, exactly as torch.nn.RNN does (same call, same shape, so the same random masks).

Storage. Each (layer, direction) keeps one state buffer hs of shape (T+1, B, H) in the state dtype (fp32,
or fp64 for fp64 input): slot 0 holds h_0 and slot t holds h_t (reverse direction: slot T holds h_0 and
slot t-1 holds h_t). The output is a view (hs[1:] or hs[:T]), backward's h_{t-1} for dW_hh is the other
view (hs[:T] or hs[1:]), and the tiled GPU kernel reads h_{t-1} back from the slot it wrote one step
earlier, so no step ever needs a special case for h_0.

Kernels and launch configurations
---------------------------------
Grid over batch tiles: a program owns BLOCK_B rows of the batch and ALL H hidden units, so programs never
wait for one another (rows are independent) and the kernel is correct whatever order programs run in.
  * "resident" (_rnn_fwd_resident_kernel / _rnn_bwd_resident_kernel): the whole padded H is one tile;
    W_hh is loaded once and h_t (or dA_t W_hh) is carried in registers across steps: one tl.dot per step.
    This is what the interpreter runs (its cost is per Triton op, not per FLOP: a 512-wide tile ran T=20,
    B=64, H=512 in 0.2 s where 64-wide tiles took 9 s), with BLOCK_B = the batch rounded up to a power of
    two (16..128). On a GPU it is chosen when H <= 64: BLOCK_B = 16, BLOCK_H = 64, 8 warps.
  * "tiled" (_rnn_fwd_tiled_kernel / _rnn_bwd_tiled_kernel): on a GPU for H > 64, where W_hh no longer
    fits on chip (512x512 fp32 = 1 MiB): BLOCK_B = 16 (the smallest mma M) and the N and K dimensions
    tiled, BLOCK_N = BLOCK_K = 64 for tf32/bf16 and 32 for exact fp32/fp64 (whose FMA dot keeps more of a
    tile in registers), 8 warps. W_hh tiles stream from L2 every step, and h_{t-1} (dA_{t+1}) round-trips
    through the buffer the same program wrote one step earlier, with tl.debug_barrier() (bar.sync:
    CTA-wide visibility of global writes) between steps. The interpreter runs it too (tests force it with
    small tiles), where the barrier is a no-op and programs are sequential.
gpu_compile_configs() lists all of them (fwd/bwd x resident/tiled x tanh/relu x ieee/tf32/bf16 + fp64:
32 kernels); compiled for sm_80 and sm_90 none spills (44-223 registers at 8 warps, 6-41 KB shared), and
the tf32/bf16 ones issue mma.sync (m16n8k8 tf32, m16n8k16 bf16) -- on sm_90 too: wgmma needs 64-row
warpgroup tiles and BLOCK_B is 16.
Sequence length and strides are runtime arguments (no recompilation per length). Every offset that grows
with T or B is int64 (the scalar base of each tile: t * stride_t, row0 * stride_b); offsets inside a tile
are int32 (64-bit pointer tiles cost registers). Any H works by masking (padded columns stay exactly 0
through tanh/relu since phi(0) = 0).

Precision: "ieee" (exact fp32; the parity tests), "tf32" (tl.dot input_precision="tf32": what cuDNN uses
for fp32 RNNs while torch.backends.cudnn.allow_tf32 is on), "bf16" (every GEMM/dot operand rounded to
bf16, fp32 accumulation, fp32 state). The interpreter has no bf16 arithmetic and its fp32->bf16 cast
truncates, so there the kernels round to nearest-even bf16 with integer bit operations and run the dot in
fp32 (products of bf16 values are exact in fp32: the same arithmetic); its tl.dot ignores
input_precision, so "tf32" is exact there. None = auto: "bf16" under torch.autocast for the input's
device (outputs then come back in autocast's dtype, as nn.RNN's do), "tf32" on CUDA when
torch.backends.cudnn.allow_tf32, else "ieee". fp64 input always computes in fp64 ("ieee"); fp16/bf16
input computes with fp32 state and returns its own dtype. The torch GEMMs follow torch's own matmul
settings (exact on the CPU); in "bf16" they take bf16-rounded operands in fp32 (straight-through rounding:
gradients are not rounded on their way back).

Cost model (a GPU; numbers for the default model B=64, T=20, H=512, I=256, 2 layers, fp32 storage)
-------------------------------------------------------------------------------------------------
Launches. cuDNN's standard (non-persistent) algorithm, which nn.RNN picks for this configuration, issues
per layer one big input GEMM and then per time step a (B,H)x(H,H) GEMM plus a pointwise kernel: about
2*T*L = 80 launches forward and as many backward, each ~4-8 us of launch latency and tail for a GEMM
that fills only a few SMs (M = 64). Ours: per layer and direction one GEMM + ONE recurrence launch forward,
ONE recurrence launch + 3 GEMMs (dW_hh, dW_ih, dX) backward: 4 recurrence launches for fwd+bwd instead of
~160 small kernels.
Per time step (whole batch): FLOPs 2*B*H^2 = 33.5 MFLOP (the h W_hh^T product; tanh and the add are
O(B*H)); bytes: read xp_t and h_{t-1} (B*H*4 = 128 KiB each), write h_t (128 KiB), and every program
streams all of W_hh (H^2*4 = 1 MiB fp32 / 0.5 MiB with bf16 operands) from L2. With BLOCK_B = 16 there
are B/16 = 4 programs, one SM each; an A100 SM moves ~64 B/clk from L2 (~90 GB/s) and does ~1.4 TFLOP/s
of tf32 mma, so a step costs ~max(1 MiB / 90 GB/s, 8.4 MFLOP / 1.4 TFLOP/s) = ~12 us (tf32; ~6 us with
bf16 operands, ~45 us in exact fp32 FMA), i.e. on a par with cuDNN's ~10 us/step for tf32 and ahead with
bf16 -- the saving is the launches, not bandwidth. Backward costs the same per step, and the weight GEMMs
run once over T*B = 1280 rows (efficient, as in cuDNN). For H <= 64 (or bf16 H <= ~256 in shared memory)
W_hh stays on chip and a step is a few hundred ns.
Where splitting H would pay off: for large H and small B the batch-tiled grid has only B/BLOCK_B programs,
each re-reading all of W_hh every step. Splitting the hidden dimension over P programs (each keeping H/P
rows of W_hh on chip: 512/64 = 8 rows = 16 KiB fp32) makes every step read only h_{t-1} (128 KiB, shared
through L2) and compute 2*B*H^2/P FLOPs per SM: ~1-2 us per step plus a ~1-2 us grid-wide barrier, i.e.
3-5x faster than both cuDNN and our kernel at B=64, H=512 (the "persistent RNN" idea). It is not built:
its programs must wait for each other at every step, which deadlocks Triton's interpreter (it runs programs
one after another), so it could never be run or tested on the machines this project has.

Layers: @triton.jit kernels -> launchers (_recurrence_forward / _recurrence_backward: check, allocate,
launch) -> _Recurrence (torch.autograd.Function) -> rnn() (nn.RNN's interface); rnn_reference() is the
plain PyTorch loop used by tests and benchmarks; TritonRNN is nn.RNN whose forward calls rnn().
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kernels import _runtime

import triton
import triton.language as tl

from kernels._common import (NONLINEARITIES, activation, activation_grad_from_output, device_function,
                             nonlinearity_code)

__all__ = ["rnn", "rnn_reference", "TritonRNN", "gpu_compile_configs", "resolve_precision", "PRECISIONS"]

PRECISIONS = ("ieee", "tf32", "bf16")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# Tests set this to True: every buffer a kernel must fill is then allocated full of NaN, so an element the
# kernel forgot to write shows up as NaN in the outputs or gradients.
_POISON_OUTPUTS = False
# Tests set this to a _LaunchConfig to run a specific kernel variant (e.g. the tiled one in the interpreter).
_FORCE_CONFIG: "_LaunchConfig | None" = None


# ----------------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------------
@device_function
def _round_to_bf16(x):
    """fp32 -> nearest bf16 (ties to even), kept in fp32, with integer ops: the interpreter's own
    fp32 -> bf16 cast truncates instead of rounding, and it has no bf16 arithmetic."""
    bits = x.to(tl.int32, bitcast=True)
    bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & -65536  # -65536 == 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@device_function
def _operand(x, PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr):
    """A dot operand in the requested precision (bf16: rounded; emulated in fp32 in the interpreter)."""
    if PRECISION == "bf16":
        if EMULATE_BF16:
            return _round_to_bf16(x)
        else:
            return x.to(tl.bfloat16)
    else:
        return x


@device_function
def _mm(a, b, acc, PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr):
    """acc + a @ b; a is rounded here, b must already be an _operand(). Accumulates in acc's dtype."""
    a = _operand(a, PRECISION, EMULATE_BF16)
    if PRECISION == "tf32":
        return tl.dot(a, b, acc, input_precision="tf32")
    elif PRECISION == "bf16":
        if EMULATE_BF16:
            return tl.dot(a, b, acc, input_precision="ieee")  # exact products of bf16 values
        else:
            return tl.dot(a, b, acc)  # bf16 x bf16 -> fp32 accumulator (mma / wgmma)
    else:
        return tl.dot(a, b, acc, input_precision="ieee")


@triton.jit
def _rnn_fwd_resident_kernel(
    xp_ptr,  # (T, B, H) input projections with both biases, state dtype, unit stride on H
    w_ptr,  # (H, H) W_hh, unit stride on the last dim
    hs_ptr,  # (T+1, B, H) state slots (see the module docstring); the h_0 slot is filled by the launcher
    hT_ptr,  # (B, H) out: h_T
    T, B, H,
    stride_xt, stride_xb, stride_wn, stride_ht, stride_hb, stride_hTb,
    REVERSE,  # 0: t = 0..T-1; 1: t = T-1..0
    NONLINEARITY: tl.constexpr, PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    # int64 for every offset that grows with T or B (the scalar base of a tile), int32 inside a tile
    row0 = tl.program_id(0).to(tl.int64) * BLOCK_B
    rb = tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_H)
    col_ok = cols < H
    mask = (rb < B - row0)[:, None] & col_ok[None, :]
    # W_hh^T as a (K, N) tile: wt[k, n] = W_hh[n, k]; loaded once, held for all T steps
    wt = tl.load(w_ptr + cols[None, :] * stride_wn + cols[:, None], mask=col_ok[:, None] & col_ok[None, :],
                 other=0.0)
    wt = _operand(wt, PRECISION, EMULATE_BF16)
    xp_rows = xp_ptr + row0 * stride_xb
    hs_rows = hs_ptr + row0 * stride_hb
    x_off = rb[:, None] * stride_xb + cols[None, :]
    h_off = rb[:, None] * stride_hb + cols[None, :]
    h = tl.load(hs_rows + (REVERSE * T).to(tl.int64) * stride_ht + h_off, mask=mask, other=0.0)  # h_0
    for s in range(T):
        t = s + REVERSE * (T - 1 - 2 * s)
        xp = tl.load(xp_rows + t.to(tl.int64) * stride_xt + x_off, mask=mask, other=0.0)
        h = activation(_mm(h, wt, xp, PRECISION, EMULATE_BF16), NONLINEARITY)
        tl.store(hs_rows + (t + 1 - REVERSE).to(tl.int64) * stride_ht + h_off, h, mask=mask)
    tl.store(hT_ptr + row0 * stride_hTb + rb[:, None] * stride_hTb + cols[None, :], h, mask=mask)


@triton.jit
def _rnn_bwd_resident_kernel(
    dy_ptr,  # (T, B, H) dL/dy (any strides but unit on H); unused unless HAS_DY
    dhT_ptr,  # (B, H) dL/dh_T; unused unless HAS_DHT
    hs_ptr,  # (T+1, B, H) the forward's state slots
    w_ptr,  # (H, H) W_hh
    da_ptr,  # (T, B, H) out: dA_t = dL/da_t
    dh0_ptr,  # (B, H) out: dL/dh_0
    T, B, H,
    stride_dyt, stride_dyb, stride_dhTb, stride_ht, stride_hb, stride_wn, stride_dat, stride_dab,
    stride_dh0b,
    REVERSE,
    NONLINEARITY: tl.constexpr, PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr,
    HAS_DY: tl.constexpr, HAS_DHT: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    row0 = tl.program_id(0).to(tl.int64) * BLOCK_B
    rb = tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_H)
    col_ok = cols < H
    mask = (rb < B - row0)[:, None] & col_ok[None, :]
    # W_hh as a (K, N) tile: g = dA_t @ W_hh, g[b, n] = sum_k dA_t[b, k] W_hh[k, n]
    w = tl.load(w_ptr + cols[:, None] * stride_wn + cols[None, :], mask=col_ok[:, None] & col_ok[None, :],
                other=0.0)
    w = _operand(w, PRECISION, EMULATE_BF16)
    zero = tl.full((BLOCK_B, BLOCK_H), 0.0, hs_ptr.dtype.element_ty)  # tl.full: a builtin (tl.zeros is @jit)
    dy_rows = dy_ptr + row0 * stride_dyb
    hs_rows = hs_ptr + row0 * stride_hb
    da_rows = da_ptr + row0 * stride_dab
    dy_off = rb[:, None] * stride_dyb + cols[None, :]
    h_off = rb[:, None] * stride_hb + cols[None, :]
    da_off = rb[:, None] * stride_dab + cols[None, :]
    # g: the gradient reaching h_t from later steps (dA_{t+1} W_hh), dh_n at the last step
    if HAS_DHT:
        g = tl.load(dhT_ptr + row0 * stride_dhTb + rb[:, None] * stride_dhTb + cols[None, :], mask=mask,
                    other=0.0).to(zero.dtype)
    else:
        g = zero
    for s in range(T):
        t = (T - 1 - s) + REVERSE * (2 * s + 1 - T)  # the forward's order, reversed
        if HAS_DY:
            g += tl.load(dy_rows + t.to(tl.int64) * stride_dyt + dy_off, mask=mask, other=0.0).to(zero.dtype)
        h = tl.load(hs_rows + (t + 1 - REVERSE).to(tl.int64) * stride_ht + h_off, mask=mask, other=0.0)
        da = g * activation_grad_from_output(h, NONLINEARITY)
        tl.store(da_rows + t.to(tl.int64) * stride_dat + da_off, da, mask=mask)
        g = _mm(da, w, zero, PRECISION, EMULATE_BF16)
    tl.store(dh0_ptr + row0 * stride_dh0b + rb[:, None] * stride_dh0b + cols[None, :], g, mask=mask)


@triton.jit
def _rnn_fwd_tiled_kernel(
    xp_ptr, w_ptr, hs_ptr, hT_ptr,  # as in _rnn_fwd_resident_kernel
    T, B, H,
    stride_xt, stride_xb, stride_wn, stride_ht, stride_hb, stride_hTb,
    REVERSE,
    NONLINEARITY: tl.constexpr, PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    row0 = tl.program_id(0).to(tl.int64) * BLOCK_B
    rb = tl.arange(0, BLOCK_B)
    row_ok = rb < B - row0
    rn = tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    xp_rows = xp_ptr + row0 * stride_xb
    hs_rows = hs_ptr + row0 * stride_hb
    x_off = rb[:, None] * stride_xb + rn[None, :]  # (BLOCK_B, BLOCK_N) at column 0
    hk_off = rb[:, None] * stride_hb + rk[None, :]  # (BLOCK_B, BLOCK_K) at column 0
    hn_off = rb[:, None] * stride_hb + rn[None, :]
    wt_off = rn[None, :] * stride_wn + rk[:, None]  # (BLOCK_K, BLOCK_N): W_hh^T at (0, 0)
    for s in range(T):
        t = s + REVERSE * (T - 1 - 2 * s)
        h_prev = hs_rows + (t + REVERSE).to(tl.int64) * stride_ht
        h_next = hs_rows + (t + 1 - REVERSE).to(tl.int64) * stride_ht
        xp_t = xp_rows + t.to(tl.int64) * stride_xt
        for n0 in range(0, H, BLOCK_N):
            col_ok = rn < H - n0
            mask = row_ok[:, None] & col_ok[None, :]
            acc = tl.load(xp_t + n0 + x_off, mask=mask, other=0.0)
            for k0 in range(0, H, BLOCK_K):
                k_ok = rk < H - k0
                h = tl.load(h_prev + k0 + hk_off, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
                wt = tl.load(w_ptr + (n0 * stride_wn + k0) + wt_off, mask=k_ok[:, None] & col_ok[None, :],
                             other=0.0)
                acc = _mm(h, _operand(wt, PRECISION, EMULATE_BF16), acc, PRECISION, EMULATE_BF16)
            tl.store(h_next + n0 + hn_off, activation(acc, NONLINEARITY), mask=mask)
        # h_t was written by other threads of this program; the next step reads all of it
        tl.debug_barrier()
    h_last = hs_rows + ((1 - REVERSE) * T).to(tl.int64) * stride_ht
    hT_rows = hT_ptr + row0 * stride_hTb
    for n0 in range(0, H, BLOCK_N):
        mask = row_ok[:, None] & (rn < H - n0)[None, :]
        tl.store(hT_rows + n0 + rb[:, None] * stride_hTb + rn[None, :], tl.load(h_last + n0 + hn_off, mask=mask),
                 mask=mask)


@triton.jit
def _rnn_bwd_tiled_kernel(
    dy_ptr, dhT_ptr, hs_ptr, w_ptr, da_ptr, dh0_ptr,  # as in _rnn_bwd_resident_kernel
    T, B, H,
    stride_dyt, stride_dyb, stride_dhTb, stride_ht, stride_hb, stride_wn, stride_dat, stride_dab,
    stride_dh0b,
    REVERSE,
    NONLINEARITY: tl.constexpr, PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr,
    HAS_DY: tl.constexpr, HAS_DHT: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    row0 = tl.program_id(0).to(tl.int64) * BLOCK_B
    rb = tl.arange(0, BLOCK_B)
    row_ok = rb < B - row0
    rn = tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    dtype = hs_ptr.dtype.element_ty
    dy_rows = dy_ptr + row0 * stride_dyb
    hs_rows = hs_ptr + row0 * stride_hb
    da_rows = da_ptr + row0 * stride_dab
    dy_off = rb[:, None] * stride_dyb + rn[None, :]
    h_off = rb[:, None] * stride_hb + rn[None, :]
    dan_off = rb[:, None] * stride_dab + rn[None, :]  # (BLOCK_B, BLOCK_N)
    dak_off = rb[:, None] * stride_dab + rk[None, :]  # (BLOCK_B, BLOCK_K)
    w_off = rk[:, None] * stride_wn + rn[None, :]  # (BLOCK_K, BLOCK_N): W_hh at (0, 0)
    for s in range(T):
        t = (T - 1 - s) + REVERSE * (2 * s + 1 - T)
        # the step processed just before this one (t+1 forward, t-1 reverse): its dA is in da_ptr
        da_later = da_rows + (t + 1 - 2 * REVERSE).to(tl.int64) * stride_dat
        da_t = da_rows + t.to(tl.int64) * stride_dat
        dy_t = dy_rows + t.to(tl.int64) * stride_dyt
        h_t = hs_rows + (t + 1 - REVERSE).to(tl.int64) * stride_ht
        for n0 in range(0, H, BLOCK_N):
            col_ok = rn < H - n0
            mask = row_ok[:, None] & col_ok[None, :]
            acc = tl.full((BLOCK_B, BLOCK_N), 0.0, dtype)
            if HAS_DY:
                acc += tl.load(dy_t + n0 + dy_off, mask=mask, other=0.0).to(dtype)
            if s == 0:
                if HAS_DHT:
                    acc += tl.load(dhT_ptr + row0 * stride_dhTb + n0 + rb[:, None] * stride_dhTb + rn[None, :],
                                   mask=mask, other=0.0).to(dtype)
            else:
                for k0 in range(0, H, BLOCK_K):
                    k_ok = rk < H - k0
                    da_l = tl.load(da_later + k0 + dak_off, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
                    w = tl.load(w_ptr + (k0 * stride_wn + n0) + w_off, mask=k_ok[:, None] & col_ok[None, :],
                                other=0.0)
                    acc = _mm(da_l, _operand(w, PRECISION, EMULATE_BF16), acc, PRECISION, EMULATE_BF16)
            h = tl.load(h_t + n0 + h_off, mask=mask, other=0.0)
            tl.store(da_t + n0 + dan_off, acc * activation_grad_from_output(h, NONLINEARITY), mask=mask)
        tl.debug_barrier()
    # dh_0 = dA_first @ W_hh, dA_first = dA at t = 0 (forward direction) or t = T-1 (reverse)
    da_first = da_rows + (REVERSE * (T - 1)).to(tl.int64) * stride_dat
    dh0_rows = dh0_ptr + row0 * stride_dh0b
    for n0 in range(0, H, BLOCK_N):
        col_ok = rn < H - n0
        acc = tl.full((BLOCK_B, BLOCK_N), 0.0, dtype)
        for k0 in range(0, H, BLOCK_K):
            k_ok = rk < H - k0
            da_f = tl.load(da_first + k0 + dak_off, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            w = tl.load(w_ptr + (k0 * stride_wn + n0) + w_off, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
            acc = _mm(da_f, _operand(w, PRECISION, EMULATE_BF16), acc, PRECISION, EMULATE_BF16)
        tl.store(dh0_rows + n0 + rb[:, None] * stride_dh0b + rn[None, :], acc,
                 mask=row_ok[:, None] & col_ok[None, :])


# ----------------------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _LaunchConfig:
    """One kernel variant: resident (whole padded H in one tile) or tiled (BLOCK_N x BLOCK_K tiles)."""

    resident: bool
    block_b: int
    block_h: int = 0  # resident: padded H
    block_n: int = 0  # tiled
    block_k: int = 0  # tiled
    num_warps: int = 4
    num_stages: int = 1


# On a GPU: H up to this many units keeps W_hh in registers (a 64x64 tile), larger H uses the tiled kernel.
_GPU_RESIDENT_MAX_H = 64
_GPU_BLOCK_B = 16  # the smallest M of an mma tile; B/16 programs
_GPU_NUM_WARPS = 8
# BLOCK_N = BLOCK_K of the tiled kernel on a GPU: 64 with tensor cores; 32 for exact fp32/fp64, whose FMA dot
# holds more of each tile in registers (64x64 ieee needs ~255 registers a thread; 32x32 about 50-110).
_GPU_TILE = {"ieee": 32, "tf32": 64, "bf16": 64}


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _gpu_config(resident: bool, precision: str) -> _LaunchConfig:
    if resident:
        return _LaunchConfig(resident=True, block_b=_GPU_BLOCK_B, block_h=_GPU_RESIDENT_MAX_H,
                             num_warps=_GPU_NUM_WARPS)
    tile = _GPU_TILE[precision]
    return _LaunchConfig(resident=False, block_b=_GPU_BLOCK_B, block_n=tile, block_k=tile, num_warps=_GPU_NUM_WARPS)


def _pick_config(batch: int, hidden: int, precision: str) -> _LaunchConfig:
    if _FORCE_CONFIG is not None:
        return _FORCE_CONFIG
    h_pad = max(16, _next_pow2(hidden))
    if _runtime.INTERPRETED:
        # the interpreter pays per Triton op: one program over the whole batch (up to 128 rows), whole H
        return _LaunchConfig(resident=True, block_b=min(128, max(16, _next_pow2(batch))), block_h=h_pad)
    return _gpu_config(h_pad <= _GPU_RESIDENT_MAX_H, precision)


def _before_launch() -> None:
    _runtime.announce_interpreter_once()


def _alloc(shape, dtype, device) -> torch.Tensor:
    if _POISON_OUTPUTS:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def _inner_contiguous(t: torch.Tensor) -> torch.Tensor:
    """The kernels need unit stride on the last dim only; other strides are passed as arguments."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _emulate_bf16(precision: str) -> bool:
    return precision == "bf16" and _runtime.INTERPRETED


def _check_launch(name: str, t: torch.Tensor, shape, dtype, device) -> None:
    if tuple(t.shape) != tuple(shape) or t.dtype != dtype or t.device != device:
        raise ValueError(f"{name}: expected {tuple(shape)} {dtype} on {device}, "
                         f"got {tuple(t.shape)} {t.dtype} on {t.device}")


def _recurrence_forward(xp: torch.Tensor, h0: torch.Tensor | None, w_hh: torch.Tensor, reverse: bool,
                        nonlinearity: str, precision: str):
    """Runs h_t = phi(xp_t + h_{t-1} W_hh^T) for all t in one launch.

    xp: (T, B, H) fp32|fp64; h0: (B, H) or None (zeros); w_hh: (H, H). Returns (y (T, B, H) a view of hs,
    h_T (B, H), hs (T+1, B, H) the state slots kept for backward)."""
    if xp.dim() != 3 or xp.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"xp: expected a 3-D float32/float64 tensor, got {xp.dim()}-D {xp.dtype}")
    T, B, H = xp.shape
    if T == 0 or B == 0 or H == 0:
        raise ValueError(f"xp: every size must be > 0, got {tuple(xp.shape)}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    _check_launch("w_hh", w_hh, (H, H), xp.dtype, xp.device)
    if h0 is not None:
        _check_launch("h0", h0, (B, H), xp.dtype, xp.device)
    xp = _inner_contiguous(xp)
    w_hh = _inner_contiguous(w_hh)
    hs = _alloc((T + 1, B, H), xp.dtype, xp.device)
    h0_slot = hs[T] if reverse else hs[0]
    if h0 is None:
        h0_slot.zero_()
    else:
        h0_slot.copy_(h0)
    hT = _alloc((B, H), xp.dtype, xp.device)
    cfg = _pick_config(B, H, precision)
    common = dict(NONLINEARITY=nonlinearity_code(nonlinearity), PRECISION=precision,
                  EMULATE_BF16=_emulate_bf16(precision), BLOCK_B=cfg.block_b,
                  num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    args = (xp, w_hh, hs, hT, T, B, H, xp.stride(0), xp.stride(1), w_hh.stride(0), hs.stride(0), hs.stride(1),
            hT.stride(0), int(reverse))
    grid = (triton.cdiv(B, cfg.block_b),)
    _before_launch()
    if cfg.resident:
        _rnn_fwd_resident_kernel[grid](*args, BLOCK_H=cfg.block_h, **common)
    else:
        _rnn_fwd_tiled_kernel[grid](*args, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, **common)
    y = hs[:T] if reverse else hs[1:]
    return y, hT, hs


def _recurrence_backward(dy: torch.Tensor | None, dhT: torch.Tensor | None, hs: torch.Tensor,
                         w_hh: torch.Tensor, reverse: bool, nonlinearity: str, precision: str):
    """Walks t in reverse: dA_t = (dy_t + dA_{t+1} W_hh) * phi'(h_t). Returns (dA (T, B, H), dh_0 (B, H))."""
    T1, B, H = hs.shape
    T = T1 - 1
    dtype, device = hs.dtype, hs.device
    _check_launch("w_hh", w_hh, (H, H), dtype, device)
    if dy is not None:
        _check_launch("dy", dy, (T, B, H), dy.dtype, device)
        dy = _inner_contiguous(dy)
    if dhT is not None:
        _check_launch("dhT", dhT, (B, H), dhT.dtype, device)
        dhT = _inner_contiguous(dhT)
    w_hh = _inner_contiguous(w_hh)
    da = _alloc((T, B, H), dtype, device)
    dh0 = _alloc((B, H), dtype, device)
    cfg = _pick_config(B, H, precision)
    dy_arg = dy if dy is not None else da  # never read when HAS_DY is False
    dhT_arg = dhT if dhT is not None else dh0
    args = (dy_arg, dhT_arg, hs, w_hh, da, dh0, T, B, H,
            dy_arg.stride(0), dy_arg.stride(1), dhT_arg.stride(0), hs.stride(0), hs.stride(1), w_hh.stride(0),
            da.stride(0), da.stride(1), dh0.stride(0), int(reverse))
    common = dict(NONLINEARITY=nonlinearity_code(nonlinearity), PRECISION=precision,
                  EMULATE_BF16=_emulate_bf16(precision), HAS_DY=dy is not None, HAS_DHT=dhT is not None,
                  BLOCK_B=cfg.block_b, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    grid = (triton.cdiv(B, cfg.block_b),)
    _before_launch()
    if cfg.resident:
        _rnn_bwd_resident_kernel[grid](*args, BLOCK_H=cfg.block_h, **common)
    else:
        _rnn_bwd_tiled_kernel[grid](*args, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, **common)
    return da, dh0


def _round_operand(t: torch.Tensor, precision: str) -> torch.Tensor:
    """bf16: t rounded to bf16 (kept in t's dtype). Straight-through: the gradient passes unrounded."""
    if precision != "bf16":
        return t
    return t + (t.detach().to(torch.bfloat16).to(t.dtype) - t.detach())


# ----------------------------------------------------------------------------------------------------------
# autograd
# ----------------------------------------------------------------------------------------------------------
class _Recurrence(torch.autograd.Function):
    """(xp, h0, W_hh) -> (y, h_T) for one layer and direction; backward = one reverse launch + one GEMM."""

    @staticmethod
    def forward(ctx, xp, h0, w_hh, reverse: bool, nonlinearity: str, precision: str):
        y, hT, hs = _recurrence_forward(xp, h0, w_hh, reverse, nonlinearity, precision)
        ctx.save_for_backward(hs, w_hh)
        ctx.reverse, ctx.nonlinearity, ctx.precision = reverse, nonlinearity, precision
        ctx.set_materialize_grads(False)
        return y, hT

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, dhT):
        hs, w_hh = ctx.saved_tensors
        T = hs.shape[0] - 1
        if dy is None and dhT is None:
            return None, None, None, None, None, None
        da, dh0 = _recurrence_backward(dy, dhT, hs, w_hh, ctx.reverse, ctx.nonlinearity, ctx.precision)
        dw_hh = None
        if ctx.needs_input_grad[2]:
            # dW_hh = sum_t dA_t^T h_{t-1}: h_{t-1} are the slots the forward read from
            h_prev = hs[1:] if ctx.reverse else hs[:T]
            H = hs.shape[2]
            dw_hh = (_round_operand(da, ctx.precision).reshape(-1, H).t()
                     @ _round_operand(h_prev, ctx.precision).reshape(-1, H))
        return da, (dh0 if ctx.needs_input_grad[1] else None), dw_hh, None, None, None


# ----------------------------------------------------------------------------------------------------------
# Argument checks shared by rnn() and rnn_reference()
# ----------------------------------------------------------------------------------------------------------
@dataclass
class _Args:
    x: torch.Tensor  # (T, B, I) time-major, contiguous
    h0: torch.Tensor | None  # (L*D, B, H)
    weights: list  # per (layer, direction): (w_ih, w_hh, b_ih|None, b_hh|None)
    hidden: int
    num_layers: int
    num_directions: int
    nonlinearity: str
    dropout: float
    training: bool
    batch_first: bool
    unbatched: bool
    precision: str
    state_dtype: torch.dtype
    out_dtype: torch.dtype
    autocast: bool


def resolve_precision(precision: str | None, input: torch.Tensor) -> str:
    """None -> "bf16" under autocast for input's device, "tf32" on CUDA with cudnn.allow_tf32, else "ieee"."""
    if precision is None:
        if input.dtype == torch.float64:
            return "ieee"
        if torch.is_autocast_enabled(input.device.type):
            return "bf16"
        if input.device.type == "cuda" and torch.backends.cudnn.allow_tf32:
            return "tf32"
        return "ieee"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be None or one of {', '.join(PRECISIONS)}, got {precision!r}")
    if input.dtype == torch.float64 and precision != "ieee":
        raise ValueError(f"precision {precision!r} needs float32 (or lower) input; float64 always computes "
                         "in float64 (use precision='ieee' or None)")
    return precision


def _check_args(input, hx, flat_weights, num_layers, nonlinearity, bias, batch_first, dropout, training,
                bidirectional, precision) -> _Args:
    if not isinstance(input, torch.Tensor):
        raise ValueError(f"input must be a torch.Tensor, got {type(input).__name__}")
    if input.dim() not in (2, 3):
        raise ValueError(f"input: expected a 2-D (unbatched) or 3-D tensor, got {input.dim()}-D tensor instead")
    if input.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"input: dtype must be one of float16, bfloat16, float32, float64, got {input.dtype}")
    if isinstance(num_layers, bool) or not isinstance(num_layers, numbers.Integral) or num_layers < 1:
        raise ValueError(f"num_layers must be an integer >= 1, got {num_layers!r}")
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity: unknown nonlinearity {nonlinearity!r}; select from 'tanh' or 'relu'")
    if (isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or math.isnan(dropout)
            or not 0 <= dropout <= 1):
        raise ValueError("dropout should be a number in range [0, 1] representing the probability of an "
                         f"element being zeroed, got {dropout!r}")
    num_layers = int(num_layers)
    D = 2 if bidirectional else 1
    unbatched = input.dim() == 2
    # time-major (T, B, I); unbatched input is (T, I) whatever batch_first says, as in nn.RNN
    x = input.unsqueeze(1) if unbatched else (input.transpose(0, 1) if batch_first else input)
    T, B, I = x.shape
    if T == 0:
        raise ValueError(f"input: expected sequence length to be larger than 0, got input of shape "
                         f"{tuple(input.shape)}")
    if B == 0:
        raise ValueError(f"input: batch size must be larger than 0, got input of shape {tuple(input.shape)}")
    if not isinstance(flat_weights, (list, tuple)) or not all(isinstance(w, torch.Tensor) for w in flat_weights):
        raise ValueError("flat_weights must be a list of tensors (nn.RNN's _flat_weights order)")
    per = 4 if bias else 2
    if len(flat_weights) != num_layers * D * per:
        raise ValueError(f"flat_weights: expected {num_layers * D * per} tensors for num_layers={num_layers}, "
                         f"bidirectional={bidirectional}, bias={bias}, got {len(flat_weights)}")
    if flat_weights[1].dim() != 2 or flat_weights[1].shape[0] == 0:
        raise ValueError(f"flat_weights[1] (weight_hh_l0): expected a non-empty (hidden_size, hidden_size) "
                         f"matrix, got shape {tuple(flat_weights[1].shape)}")
    H = flat_weights[1].shape[0]
    weights = []
    for layer in range(num_layers):
        in_size = I if layer == 0 else D * H
        for d in range(D):
            base = (layer * D + d) * per
            suffix = f"l{layer}" + ("_reverse" if d else "")
            names = [f"weight_ih_{suffix}", f"weight_hh_{suffix}", f"bias_ih_{suffix}", f"bias_hh_{suffix}"][:per]
            shapes = [(H, in_size), (H, H), (H,), (H,)][:per]
            group = flat_weights[base:base + per]
            for j, (w, name, shape) in enumerate(zip(group, names, shapes)):
                where = f"flat_weights[{base + j}] ({name})"
                if w.dtype != input.dtype:
                    raise ValueError(f"input dtype ({input.dtype}) does not match {where} dtype ({w.dtype}); "
                                     f"convert the input with input.to({w.dtype}) or the weights")
                if w.device != input.device:
                    raise ValueError(f"{where} is on {w.device} but input is on {input.device}")
                if tuple(w.shape) != shape:
                    if j == 0 and w.dim() == 2 and w.shape[0] == H and layer == 0:
                        raise ValueError(f"input.size(-1) must be equal to input_size. Expected {w.shape[1]}, "
                                         f"got {I}")
                    raise ValueError(f"{where}: expected shape {shape}, got {tuple(w.shape)}")
            weights.append((group[0], group[1], group[2] if bias else None, group[3] if bias else None))
    h0 = None
    if hx is not None:
        if not isinstance(hx, torch.Tensor):
            raise ValueError(f"hx must be a torch.Tensor or None, got {type(hx).__name__}")
        if unbatched:
            if hx.dim() != 2:
                raise ValueError(f"hx: for unbatched 2-D input, hx should also be 2-D but got {hx.dim()}-D tensor")
            hx = hx.unsqueeze(1)
        elif hx.dim() != 3:
            raise ValueError(f"hx: for batched 3-D input, hx should also be 3-D but got {hx.dim()}-D tensor")
        if tuple(hx.shape) != (num_layers * D, B, H):
            expected = (num_layers * D, H) if unbatched else (num_layers * D, B, H)
            got = tuple(hx.shape[::2]) if unbatched else tuple(hx.shape)
            raise ValueError(f"hx: expected hidden size {expected}, got {got}")
        if hx.dtype != input.dtype:
            raise ValueError(f"hx dtype ({hx.dtype}) does not match input dtype ({input.dtype})")
        if hx.device != input.device:
            raise ValueError(f"hx is on {hx.device} but input is on {input.device}")
        h0 = hx
    precision = resolve_precision(precision, input)
    autocast = input.dtype != torch.float64 and torch.is_autocast_enabled(input.device.type)
    state_dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    out_dtype = torch.get_autocast_dtype(input.device.type) if autocast else input.dtype
    return _Args(x=x.contiguous(), h0=h0, weights=weights, hidden=H, num_layers=num_layers, num_directions=D,
                 nonlinearity=nonlinearity, dropout=float(dropout), training=bool(training),
                 batch_first=bool(batch_first), unbatched=unbatched, precision=precision,
                 state_dtype=state_dtype, out_dtype=out_dtype, autocast=autocast)


def _finish(a: _Args, output: torch.Tensor, h_n: torch.Tensor):
    """Back to the caller's layout and dtype: (T, B, D*H) -> batch_first / unbatched; autocast dtype."""
    output, h_n = output.to(a.out_dtype), h_n.to(a.out_dtype)
    if a.unbatched:
        return output.squeeze(1), h_n.squeeze(1)
    if a.batch_first:
        output = output.transpose(0, 1)
    return output, h_n


def _run_layers(a: _Args, one_direction):
    """The layer/direction structure of nn.RNN; one_direction(x, h0, w_ih, w_hh, b_ih, b_hh, reverse)."""
    x = a.x.to(a.state_dtype)
    D = a.num_directions
    h_n = []
    for layer in range(a.num_layers):
        outs = []
        for d in range(D):
            w_ih, w_hh, b_ih, b_hh = (None if w is None else w.to(a.state_dtype) for w in a.weights[layer * D + d])
            h0 = None if a.h0 is None else a.h0[layer * D + d].to(a.state_dtype)
            y, hT = one_direction(x, h0, w_ih, w_hh, b_ih, b_hh, bool(d))
            outs.append(y)
            h_n.append(hT)
        x = outs[0] if D == 1 else torch.cat(outs, dim=2)
        if a.dropout > 0 and a.training and layer < a.num_layers - 1:
            x = F.dropout(x, a.dropout, training=True)  # same call and shape as nn.RNN: same masks
    return x, torch.stack(h_n, 0)


# ----------------------------------------------------------------------------------------------------------
# Public functions
# ----------------------------------------------------------------------------------------------------------
def rnn(input, hx, flat_weights, *, num_layers, nonlinearity="tanh", bias=True, batch_first=False, dropout=0.0,
        training=False, bidirectional=False, precision=None):
    """torch.nn.RNN's forward, computed by rnnlm's Triton recurrence kernels.

    Args:
        input: (T, B, I), (B, T, I) with batch_first, or unbatched (T, I); float16/bfloat16/float32/float64.
            Non-contiguous input is fine (it is copied to time-major contiguous layout).
        hx: initial state (num_layers * num_directions, B, H) ((L*D, H) for unbatched input) or None (zeros).
        flat_weights: nn.RNN's ``_flat_weights`` list: for each layer, for each direction:
            weight_ih (H, I_l), weight_hh (H, H), then bias_ih (H,), bias_hh (H,) when bias is True.
        num_layers, nonlinearity ("tanh" | "relu"), bias, batch_first, dropout, training, bidirectional:
            as in torch.nn.RNN (dropout acts between layers, only when training is True).
        precision: None (auto: "bf16" under torch.autocast, "tf32" on CUDA when
            torch.backends.cudnn.allow_tf32, else "ieee") | "ieee" | "tf32" | "bf16". See the module docstring.

    Returns:
        (output, h_n) as nn.RNN: output (T, B, D*H) (batch_first: (B, T, D*H); unbatched: (T, D*H)) and
        h_n (L*D, B, H) ((L*D, H) unbatched), in the input's dtype (autocast's dtype under autocast).
        Differentiable with respect to input, hx and every weight.

    Raises:
        ValueError naming the argument for a wrong rank, dtype, device or size, an hx of the wrong shape, an
        empty batch or an empty sequence.
    """
    a = _check_args(input, hx, flat_weights, num_layers, nonlinearity, bias, batch_first, dropout, training,
                    bidirectional, precision)

    def one_direction(x, h0, w_ih, w_hh, b_ih, b_hh, reverse):
        T, B, I = x.shape
        x2 = _round_operand(x.reshape(T * B, I), a.precision)
        w2 = _round_operand(w_ih, a.precision).t()
        # xp = X W_ih^T + (b_ih + b_hh): both biases folded into one GEMM
        xp = torch.mm(x2, w2) if b_ih is None else torch.addmm(b_ih + b_hh, x2, w2)
        return _Recurrence.apply(xp.view(T, B, a.hidden), h0, w_hh, reverse, a.nonlinearity, a.precision)

    with torch.autocast(a.x.device.type, enabled=False):
        output, h_n = _run_layers(a, one_direction)
    return _finish(a, output, h_n)


def rnn_reference(input, hx, flat_weights, *, num_layers, nonlinearity="tanh", bias=True, batch_first=False,
                  dropout=0.0, training=False, bidirectional=False, precision=None):
    """The same function as rnn(), written as a plain PyTorch loop over time (tests and benchmarks).

    Precision: "bf16" rounds every product's operands to bf16 as rnn() does; "tf32" computes exactly
    (the reference has no tf32 arithmetic of its own)."""
    a = _check_args(input, hx, flat_weights, num_layers, nonlinearity, bias, batch_first, dropout, training,
                    bidirectional, precision)
    phi = torch.tanh if a.nonlinearity == "tanh" else torch.relu
    r = (lambda t: _round_operand(t, a.precision))

    def one_direction(x, h0, w_ih, w_hh, b_ih, b_hh, reverse):
        T, B, _ = x.shape
        h = h0 if h0 is not None else x.new_zeros(B, a.hidden)
        ys = [None] * T
        for t in (reversed(range(T)) if reverse else range(T)):
            pre = r(x[t]) @ r(w_ih).t() + r(h) @ r(w_hh).t()
            if b_ih is not None:
                pre = pre + b_ih + b_hh
            h = phi(pre)
            ys[t] = h
        return torch.stack(ys, 0), h

    with torch.autocast(a.x.device.type, enabled=False):
        output, h_n = _run_layers(a, one_direction)
    return _finish(a, output, h_n)


class TritonRNN(nn.RNN):
    """torch.nn.RNN whose forward runs rnn() (same parameters, same state dict, same results)."""

    def __init__(self, *args, precision: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.precision = precision

    def forward(self, input, hx=None):  # noqa: D102 (nn.RNN.forward's contract)
        if isinstance(input, nn.utils.rnn.PackedSequence):
            raise ValueError("input: TritonRNN does not support PackedSequence; pad the batch instead")
        output, h_n = rnn(input, hx, self._flat_weights, num_layers=self.num_layers,
                          nonlinearity=self.nonlinearity, bias=self.bias, batch_first=self.batch_first,
                          dropout=self.dropout, training=self.training, bidirectional=self.bidirectional,
                          precision=self.precision)
        return output, h_n


# ----------------------------------------------------------------------------------------------------------
# GPU compile configurations (kernels/compile_report.py)
# ----------------------------------------------------------------------------------------------------------
def gpu_compile_configs():
    """Every (kernel, constexprs, warps) the launchers can choose on a GPU, for kernels/compile_report.py.

    Axes: forward/backward x resident (H <= 64) / tiled x tanh/relu x precision (fp32 state: ieee, tf32,
    bf16; fp64 state: ieee), each with the tile _gpu_config() gives it. The backward kernels are listed with
    dy and dh_T both present (the HAS_* flags only remove loads). Tensor cores are expected for tf32/bf16."""
    from kernels.compile_report import CompileConfig  # lazily: the report helper's module

    kernels = {("fwd", True): _rnn_fwd_resident_kernel, ("fwd", False): _rnn_fwd_tiled_kernel,
               ("bwd", True): _rnn_bwd_resident_kernel, ("bwd", False): _rnn_bwd_tiled_kernel}
    out = []
    for ty, precisions in (("fp32", PRECISIONS), ("fp64", ("ieee",))):
        for resident in (True, False):
            for prec in precisions:
                cfg = _gpu_config(resident, prec)
                blocks = ({"BLOCK_B": cfg.block_b, "BLOCK_H": cfg.block_h} if resident
                          else {"BLOCK_B": cfg.block_b, "BLOCK_N": cfg.block_n, "BLOCK_K": cfg.block_k})
                for nonlin in NONLINEARITIES:
                    for direction in ("fwd", "bwd"):
                        fn = kernels[direction, resident]
                        constexprs = {"NONLINEARITY": nonlinearity_code(nonlin), "PRECISION": prec,
                                      "EMULATE_BF16": False, **blocks}
                        if direction == "bwd":
                            constexprs.update(HAS_DY=True, HAS_DHT=True)
                        # pointers carry the state dtype; every other runtime argument is an int
                        signature = {a: (f"*{ty}" if a.endswith("_ptr") else "i32")
                                     for a in fn.arg_names if a not in constexprs}
                        signature.update({c: "constexpr" for c in constexprs})
                        name = "x".join(str(v) for v in blocks.values())
                        out.append(CompileConfig(
                            name=f"rnn_{direction}_{'resident' if resident else 'tiled'}_{ty}_{nonlin}_{prec}_{name}",
                            fn=fn, signature=signature, constexprs=constexprs,
                            expect_tensor_cores=prec in ("tf32", "bf16"),
                            num_warps=cfg.num_warps, num_stages=cfg.num_stages))
    return out
