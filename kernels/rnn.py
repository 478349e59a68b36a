r"""The Elman recurrence of torch.nn.RNN as Triton kernels: forward, backward, one time step, nn.RNN's interface.

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
One time step (rnn_step, generation): h' = phi(x W_ih^T + b_ih + b_hh + h W_hh^T) for every layer, both
products and both biases inside ONE launch per layer, no autograd, no host synchronisation.

Storage. Each (layer, direction) keeps one state buffer hs of shape (T+1, B, H) in the state dtype (fp32,
or fp64 for fp64 input): slot 0 holds h_0 and slot t holds h_t (reverse direction: slot T holds h_0 and
slot t-1 holds h_t). The output is a view (hs[1:] or hs[:T]), backward's h_{t-1} for dW_hh is the other
view (hs[:T] or hs[1:]), and the tiled GPU kernel reads h_{t-1} back from the slot it wrote one step
earlier, so no step ever needs a special case for h_0.

Kernels and launch configurations (LaunchConfig / PersistentConfig; rnn(launch_config=...) forces one)
------------------------------------------------------------------------------------------------
On a GPU, with nothing forced, each layer's recurrence (forward and backward alike) runs either the persistent
kernels of kernels/_rnn_persistent.py -- W_hh split over H/16 programs that hold their slice on chip for all
T steps, with a grid barrier between steps -- or this module's batch-tiled kernels below, as that module's
choose_path() decides from the device's SMs and the compiled persistent kernel's registers and shared memory
(its docstring has the rules, the barrier and the cost model): persistent for 128 < H <= 1024 when its grid
fits the GPU at once, batch-tiled otherwise, and always batch-tiled in the interpreter and for fp64. The
choice is made once per device and shape, logged as one line, and returned by recurrence_path(). A persistent
launch is followed by this module's batch-tiled kernel into the same outputs, guarded by the persistent
launch's error flag (guard_ptr: a runtime pointer the kernel reads first, returning at once unless it holds a
nonzero value; never specialised, so the guarded launch compiles nothing new): it recomputes the layer only if
a barrier timed out, and costs no host synchronisation either way. Unguarded launches pass a per-device 1.
Batch-tiled grid: a program owns BLOCK_B rows of the batch and ALL H hidden units, so programs never
wait for one another (rows are independent) and the kernel is correct whatever order programs run in.
  * "resident" (_rnn_fwd_resident_kernel / _rnn_bwd_resident_kernel): the whole padded H is one tile;
    W_hh is loaded once and h_t (or dA_t W_hh) is carried in registers across steps: one tl.dot per step.
    This is what the interpreter runs (its cost is per Triton op, not per FLOP: a 512-wide tile ran T=20,
    B=64, H=512 in 0.2 s where 64-wide tiles took 9 s), with BLOCK_B = the batch rounded up to a power of
    two (16..128). On a GPU it is chosen when H <= 64: BLOCK_B = 16, BLOCK_H = 64, 8 warps, 1 stage
    (nothing streams: the loop only loads xp_t).
  * "tiled" (_rnn_fwd_tiled_kernel / _rnn_bwd_tiled_kernel): on a GPU for H > 64, where W_hh no longer
    fits on chip (512x512 fp32 = 1 MiB): BLOCK_B = 16 (the smallest mma M) and the N and K dimensions
    tiled, BLOCK_N = BLOCK_K = 64 with tensor cores (tf32/bf16/fp16) and 32 for exact fp32/fp64 (whose
    FMA dot keeps more of a tile in registers), 8 warps. Per step the program walks N tiles; per N tile
    the K loop loads one (BLOCK_B, BLOCK_K) tile of h_{t-1} and one (BLOCK_K, BLOCK_N) tile of W_hh^T and
    multiplies them. That K loop is software-pipelined (num_stages = _GPU_STAGES = 3): Triton
    issues the next tiles' loads as cp.async copies from global (L2) into shared memory while the
    current tile is multiplied, with num_stages - 1 tiles in flight (shared memory: that many
    (BLOCK_B*BLOCK_K + BLOCK_K*BLOCK_N) buffers). h_{t-1} (dA_{t+1}) round-trips through the buffer the
    same program wrote one step earlier, with tl.debug_barrier() (bar.sync: CTA-wide visibility of global
    writes, which cp.async reads honour like loads) between steps. The interpreter runs it too (tests force
    it with small tiles), where the barrier is a no-op, stages mean nothing and programs are sequential.
  * "step" (_rnn_step_kernel, rnn_step): the grid splits H into BLOCK_N columns (and B into BLOCK_B rows):
    each program reads its BLOCK_N rows of W_ih and W_hh once, pipelined the same way, so a step of the
    default model (I = 256, H = 512, fp32: 1.5 MiB of weights per layer) spreads over H/16 = 32 SMs.
gpu_compile_configs() lists every configuration at representative launches (B = 64, H = 512 or 64 and 130,
T = 20; step: B = 1 and 16), each specialised as Triton specialises that launch: sizes and strides
divisible by 16 get tt.divisibility (vectorised loads), 1 becomes a constant; T and REVERSE are never
specialised (one kernel for every sequence length and both directions). `python -m kernels.compile_report`
compiles them for sm_80 and sm_90 and shows, at the launched num_stages, cp.async in every tiled and step
kernel, no spills, and shared memory within both GPUs' limits; the tf32/bf16/fp16 ones issue mma.sync
(m16n8k8 tf32, m16n8k16 bf16/f16) -- on sm_90 too: wgmma needs 64-row warpgroup tiles and BLOCK_B is 16.
Sequence length and strides are runtime arguments. Every offset that grows with T or B is int64 (the scalar
base of each tile: t * stride_t, row0 * stride_b); offsets inside a tile are int32 (64-bit pointer tiles
cost registers). Any H works by masking (padded columns stay exactly 0 through tanh/relu since phi(0) = 0).
Launches run on the input's CUDA device (so cuda:1 works whatever the current device is); outside the
interpreter the kernels refuse CPU tensors (ValueError naming the argument).

Precision: "ieee" (exact fp32; the parity tests), "tf32" (tl.dot input_precision="tf32"), "bf16" / "fp16"
(every GEMM/dot operand rounded to bf16 / fp16, fp32 accumulation, fp32 state). None = auto, as nn.RNN:
"bf16" or "fp16" under torch.autocast for the input's device (its dtype; outputs then come back in that
dtype, as nn.RNN's do), "tf32" on CUDA when cuDNN's RNN may use TF32 (cudnn_rnn_allows_tf32(): the flag
ATen's cuDNN RNN reads, torch.backends.cudnn.rnn.fp32_precision where torch has it, else
torch.backends.cudnn.allow_tf32), else "ieee". fp64 input always computes in fp64 ("ieee"); fp16/bf16
input outside autocast computes with fp32 state and returns its own dtype. The torch GEMMs (xp, dW_hh, the
autograd of the addmm) are torch matmuls and follow torch.backends.cuda.matmul's TF32 setting, as every
torch matmul does; rnn_step computes its input product in-kernel with that same rule. In "bf16"/"fp16"
they take rounded operands in fp32 (straight-through rounding: gradients are not rounded on their way
back). The interpreter has no bf16 arithmetic and its fp32->bf16 cast truncates, so there the kernels round
to nearest-even bf16 with integer bit operations (fp16: numpy's cast, which rounds to nearest-even) and run
the dot in fp32 (products of bf16 or fp16 values are exact in fp32: the same arithmetic); its tl.dot ignores
input_precision, so "tf32" is exact there.

Cost model (a GPU; numbers for the default model B=64, T=20, H=512, I=256, 2 layers, fp32 storage)
-------------------------------------------------------------------------------------------------
Launches. cuDNN's standard (non-persistent) algorithm, which nn.RNN picks for this configuration (H > 384
forward, H > 256 backward: ATen's get_algo), issues per layer one big input GEMM and then per time step a
(B,H)x(H,H) GEMM plus a pointwise kernel: about 2*T*L = 80 launches forward and as many backward, each ~4-8
us of launch latency and tail for a GEMM that fills only a few SMs (M = 64). Ours: per layer and direction
one GEMM + ONE recurrence launch forward, ONE recurrence launch + 3 GEMMs (dW_hh, dW_ih, dX) backward.
Per time step (whole batch): FLOPs 2*B*H^2 = 33.5 MFLOP; every program streams all of W_hh (H^2*4 = 1 MiB
fp32; bf16/fp16 operands are converted after the load, so still 1 MiB) from L2, plus h_{t-1} (B/16 rows).
With BLOCK_B = 16 there are B/16 = 4 programs, one SM each. What the compiled tiled kernel does per step
(tf32, 64x64 tiles): (H/64)^2 = 64 tile iterations, each a cp.async of 16 KiB of W_hh^T and 4 KiB of h into
shared memory and 16x64x64 tf32 multiply-adds (~128 cycles of mma at ~512 a cycle). An A100 SM moves ~64 B/clk
from L2, so a tile takes ~320 cycles to arrive after an L2 latency of ~600 cycles. Unpipelined (num_stages = 1, as before) every
tile waited for its own round trip: 64 x ~920 cycles = ~59k cycles = ~42 us per step. Pipelined with
num_stages = 3 (two tiles in flight) the copies overlap: ~64 x 320 cycles of transfer plus one latency
per N tile (the pipeline refills when the K loop restarts: 8 x 600) = ~25k cycles = ~18 us per step,
~0.36 ms per layer forward at T = 20. That is bandwidth-bound on the L2->SM path of only 4 SMs: cuDNN's
~10 us/step (tf32) is a GEMM spread over more SMs, so at B = 64 the fused kernel saves the launches, not
the per-step time, and it is the number of programs (B/16) that limits it. bf16/fp16 operands halve the
mma work but not the bytes (W_hh stays fp32 in memory). Backward costs the same per step; the weight GEMMs
run once over T*B = 1280 rows. For H <= 64 W_hh stays in registers and a step is a few hundred ns.
Where splitting H pays off: for large H and small B the batch-tiled grid has only B/BLOCK_B programs,
each re-reading all of W_hh every step. Splitting the hidden dimension over P programs (each keeping H/P
rows of W_hh on chip) makes every step read only h_{t-1} and compute 2*B*H^2/P FLOPs per SM, with a
grid-wide barrier per step (the "persistent RNN" idea: kernels/_rnn_persistent.py, ~3 us per step of the
default model by its cost model, against ~14.5 us for the tiled kernel at H100 clocks and ~8-9 us for cuDNN).
One step (rnn_step, B = 1): 1.5 MiB of W_ih and W_hh per layer streamed once by 32 programs: ~48 KiB per
SM, ~1-2 us per layer at a few hundred GB/s per SM of L2/DRAM bandwidth, against rnn()'s single program
(grid of one: B/16 rounds up to 1) streaming all 1 MiB of W_hh alone plus the GEMM launch for xp.

Layers: @triton.jit kernels -> launches (_forward_launch / _backward_launch / _step_launch: one description
used by the launchers and by gpu_compile_configs) -> launchers (_recurrence_forward / _recurrence_backward:
check and allocate (kernels._utils.forward_buffers / backward_buffers, shared with the persistent launchers),
choose persistent or batch-tiled, launch) -> _Recurrence (torch.autograd.Function) -> rnn() (nn.RNN's
interface) and rnn_step(); rnn_reference() is the plain PyTorch loop used by tests and benchmarks; TritonRNN
is nn.RNN whose forward calls rnn(); recurrence_path() says which kernels rnn() chose for a shape, and why.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import triton
import triton.language as tl

from kernels import _rnn_persistent as persistent
from kernels._common import (activation, activation_grad_from_output, device_function, dot_operand, mm,
                             nonlinearity_code)
from kernels._rnn_persistent import PathChoice, PersistentConfig
from kernels._utils import (LOW_PRECISION_DTYPE, RNN_PRECISIONS, CompileConfig, Launch, backward_buffers,
                            check_device, emulated, empty, forward_buffers, inner_contiguous, interpreted,
                            meta_tensor, next_pow2)

__all__ = ["rnn", "rnn_step", "rnn_reference", "TritonRNN", "LaunchConfig", "PersistentConfig", "PathChoice",
           "recurrence_path", "gpu_compile_configs", "resolve_precision", "cudnn_rnn_allows_tf32",
           "cuda_matmul_allows_tf32", "PRECISIONS"]

PRECISIONS = RNN_PRECISIONS  # ("ieee", "tf32", "bf16", "fp16")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# T (the sequence length) and REVERSE are never specialised: one compiled kernel for every length and direction;
# nor is guard_ptr (a scalar read once): a guarded launch compiles nothing new
_NO_SPEC = ["T", "REVERSE", "guard_ptr"]


# ----------------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=_NO_SPEC)
def _rnn_fwd_resident_kernel(
    xp_ptr,  # (T, B, H) input projections with both biases, state dtype, unit stride on H
    w_ptr,  # (H, H) W_hh, unit stride on the last dim
    hs_ptr,  # (T+1, B, H) state slots (see the module docstring); the h_0 slot is filled by the launcher
    hT_ptr,  # (B, H) out: h_T
    guard_ptr,  # int32 (1,): the kernel runs only if *guard_ptr != 0 (see _recurrence_forward)
    T, B, H,
    stride_xt, stride_xb, stride_wn, stride_ht, stride_hb, stride_hTb,
    REVERSE,  # 0: t = 0..T-1; 1: t = T-1..0
    NONLINEARITY: tl.constexpr, PRECISION: tl.constexpr, EMULATE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    if tl.load(guard_ptr) == 0:  # a persistent launch's fallback with nothing to redo
        return
    # int64 for every offset that grows with T or B (the scalar base of a tile), int32 inside a tile
    row0 = tl.program_id(0).to(tl.int64) * BLOCK_B
    rb = tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_H)
    col_ok = cols < H
    mask = (rb < B - row0)[:, None] & col_ok[None, :]
    # W_hh^T as a (K, N) tile: wt[k, n] = W_hh[n, k]; loaded once, held for all T steps
    wt = tl.load(w_ptr + cols[None, :] * stride_wn + cols[:, None], mask=col_ok[:, None] & col_ok[None, :],
                 other=0.0)
    wt = dot_operand(wt, PRECISION, EMULATE)
    xp_rows = xp_ptr + row0 * stride_xb
    hs_rows = hs_ptr + row0 * stride_hb
    x_off = rb[:, None] * stride_xb + cols[None, :]
    h_off = rb[:, None] * stride_hb + cols[None, :]
    h = tl.load(hs_rows + (REVERSE * T).to(tl.int64) * stride_ht + h_off, mask=mask, other=0.0)  # h_0
    for s in range(T):
        t = s + REVERSE * (T - 1 - 2 * s)
        xp = tl.load(xp_rows + t.to(tl.int64) * stride_xt + x_off, mask=mask, other=0.0)
        h = activation(mm(h, wt, xp, PRECISION, EMULATE), NONLINEARITY)
        tl.store(hs_rows + (t + 1 - REVERSE).to(tl.int64) * stride_ht + h_off, h, mask=mask)
    tl.store(hT_ptr + row0 * stride_hTb + rb[:, None] * stride_hTb + cols[None, :], h, mask=mask)


@triton.jit(do_not_specialize=_NO_SPEC)
def _rnn_bwd_resident_kernel(
    dy_ptr,  # (T, B, H) dL/dy (any strides but unit on H); unused unless HAS_DY
    dhT_ptr,  # (B, H) dL/dh_T; unused unless HAS_DHT
    hs_ptr,  # (T+1, B, H) the forward's state slots
    w_ptr,  # (H, H) W_hh
    da_ptr,  # (T, B, H) out: dA_t = dL/da_t
    dh0_ptr,  # (B, H) out: dL/dh_0
    guard_ptr,  # int32 (1,): the kernel runs only if *guard_ptr != 0 (see _recurrence_forward)
    T, B, H,
    stride_dyt, stride_dyb, stride_dhTb, stride_ht, stride_hb, stride_wn, stride_dat, stride_dab,
    stride_dh0b,
    REVERSE,
    NONLINEARITY: tl.constexpr, PRECISION: tl.constexpr, EMULATE: tl.constexpr,
    HAS_DY: tl.constexpr, HAS_DHT: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    if tl.load(guard_ptr) == 0:  # a persistent launch's fallback with nothing to redo
        return
    row0 = tl.program_id(0).to(tl.int64) * BLOCK_B
    rb = tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_H)
    col_ok = cols < H
    mask = (rb < B - row0)[:, None] & col_ok[None, :]
    # W_hh as a (K, N) tile: g = dA_t @ W_hh, g[b, n] = sum_k dA_t[b, k] W_hh[k, n]
    w = tl.load(w_ptr + cols[:, None] * stride_wn + cols[None, :], mask=col_ok[:, None] & col_ok[None, :],
                other=0.0)
    w = dot_operand(w, PRECISION, EMULATE)
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
        g = mm(da, w, zero, PRECISION, EMULATE)
    tl.store(dh0_ptr + row0 * stride_dh0b + rb[:, None] * stride_dh0b + cols[None, :], g, mask=mask)


@triton.jit(do_not_specialize=_NO_SPEC)
def _rnn_fwd_tiled_kernel(
    xp_ptr, w_ptr, hs_ptr, hT_ptr, guard_ptr,  # as in _rnn_fwd_resident_kernel
    T, B, H,
    stride_xt, stride_xb, stride_wn, stride_ht, stride_hb, stride_hTb,
    REVERSE,
    NONLINEARITY: tl.constexpr, PRECISION: tl.constexpr, EMULATE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    if tl.load(guard_ptr) == 0:  # a persistent launch's fallback with nothing to redo
        return
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
            # the pipelined loop (num_stages): its loads become cp.async into shared memory
            for k0 in range(0, H, BLOCK_K):
                k_ok = rk < H - k0
                h = tl.load(h_prev + k0 + hk_off, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
                wt = tl.load(w_ptr + (n0 * stride_wn + k0) + wt_off, mask=k_ok[:, None] & col_ok[None, :],
                             other=0.0)
                acc = mm(h, dot_operand(wt, PRECISION, EMULATE), acc, PRECISION, EMULATE)
            tl.store(h_next + n0 + hn_off, activation(acc, NONLINEARITY), mask=mask)
        # h_t was written by other threads of this program; the next step reads all of it
        tl.debug_barrier()
    h_last = hs_rows + ((1 - REVERSE) * T).to(tl.int64) * stride_ht
    hT_rows = hT_ptr + row0 * stride_hTb
    for n0 in range(0, H, BLOCK_N):
        mask = row_ok[:, None] & (rn < H - n0)[None, :]
        tl.store(hT_rows + n0 + rb[:, None] * stride_hTb + rn[None, :], tl.load(h_last + n0 + hn_off, mask=mask),
                 mask=mask)


@triton.jit(do_not_specialize=_NO_SPEC)
def _rnn_bwd_tiled_kernel(
    dy_ptr, dhT_ptr, hs_ptr, w_ptr, da_ptr, dh0_ptr, guard_ptr,  # as in _rnn_bwd_resident_kernel
    T, B, H,
    stride_dyt, stride_dyb, stride_dhTb, stride_ht, stride_hb, stride_wn, stride_dat, stride_dab,
    stride_dh0b,
    REVERSE,
    NONLINEARITY: tl.constexpr, PRECISION: tl.constexpr, EMULATE: tl.constexpr,
    HAS_DY: tl.constexpr, HAS_DHT: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    if tl.load(guard_ptr) == 0:  # a persistent launch's fallback with nothing to redo
        return
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
                for k0 in range(0, H, BLOCK_K):  # pipelined, as in the forward kernel
                    k_ok = rk < H - k0
                    da_l = tl.load(da_later + k0 + dak_off, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
                    w = tl.load(w_ptr + (k0 * stride_wn + n0) + w_off, mask=k_ok[:, None] & col_ok[None, :],
                                other=0.0)
                    acc = mm(da_l, dot_operand(w, PRECISION, EMULATE), acc, PRECISION, EMULATE)
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
            acc = mm(da_f, dot_operand(w, PRECISION, EMULATE), acc, PRECISION, EMULATE)
        tl.store(dh0_rows + n0 + rb[:, None] * stride_dh0b + rn[None, :], acc,
                 mask=row_ok[:, None] & col_ok[None, :])


@device_function
def _add_row_products(acc, a_rows, stride_a, w_rows, stride_w, K, row_ok, col_ok, rb, rn, rk,
                      PRECISION: tl.constexpr, EMULATE: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc + A[rows, :K] @ W[cols, :K]^T over K in BLOCK_K tiles (the loop Triton pipelines): a_rows points at the
    first row of A (row stride stride_a), w_rows at the first of the program's BLOCK_N rows of W (stride_w)."""
    for k0 in range(0, K, BLOCK_K):
        k_ok = rk < K - k0
        a = tl.load(a_rows + k0 + rb[:, None] * stride_a + rk[None, :], mask=row_ok[:, None] & k_ok[None, :],
                    other=0.0)
        wt = tl.load(w_rows + k0 + rn[None, :] * stride_w + rk[:, None], mask=k_ok[:, None] & col_ok[None, :],
                     other=0.0)
        acc = mm(a, dot_operand(wt, PRECISION, EMULATE), acc, PRECISION, EMULATE)
    return acc


@triton.jit
def _rnn_step_kernel(
    x_ptr,  # (B, I) the layer's input, unit stride on I
    h_ptr,  # (B, H) h_{t-1}, unit stride on H
    w_ih_ptr, w_hh_ptr,  # (H, I), (H, H), unit stride on the last dim
    b_ih_ptr, b_hh_ptr,  # (H,) each; unused unless HAS_BIAS
    out_ptr,  # (B, H) out: h_t (never aliases h_ptr: other programs still read h_{t-1})
    B, I, H,
    stride_xb, stride_hb, stride_wih, stride_whh, stride_ob,
    NONLINEARITY: tl.constexpr, PRECISION: tl.constexpr, IN_PRECISION: tl.constexpr, EMULATE: tl.constexpr,
    HAS_BIAS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # program (pid_n, pid_b) computes h_t[rows, n0:n0+BLOCK_N] = phi(x W_ih^T + b_ih + b_hh + h W_hh^T)
    n0 = tl.program_id(0) * BLOCK_N
    row0 = tl.program_id(1).to(tl.int64) * BLOCK_B
    rb = tl.arange(0, BLOCK_B)
    row_ok = rb < B - row0
    rn = tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    col_ok = rn < H - n0
    dtype = out_ptr.dtype.element_ty
    acc = tl.full((BLOCK_B, BLOCK_N), 0.0, dtype)
    if HAS_BIAS:
        b = tl.load(b_ih_ptr + n0 + rn, mask=col_ok, other=0.0) + tl.load(b_hh_ptr + n0 + rn, mask=col_ok, other=0.0)
        acc += b[None, :]
    acc = _add_row_products(acc, x_ptr + row0 * stride_xb, stride_xb, w_ih_ptr + n0 * stride_wih, stride_wih, I,
                            row_ok, col_ok, rb, rn, rk, IN_PRECISION, EMULATE, BLOCK_K)  # x W_ih^T
    acc = _add_row_products(acc, h_ptr + row0 * stride_hb, stride_hb, w_hh_ptr + n0 * stride_whh, stride_whh, H,
                            row_ok, col_ok, rb, rn, rk, PRECISION, EMULATE, BLOCK_K)  # h W_hh^T
    tl.store(out_ptr + row0 * stride_ob + n0 + rb[:, None] * stride_ob + rn[None, :], activation(acc, NONLINEARITY),
             mask=row_ok[:, None] & col_ok[None, :])


# ----------------------------------------------------------------------------------------------------------
# Launch configurations and launches
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LaunchConfig:
    """One kernel variant of the recurrence: resident (whole padded H in one tile) or tiled (BLOCK_N x BLOCK_K
    tiles). rnn(launch_config=None) chooses one per device (_pick_config); passing one runs that variant (the
    tests run the GPU's tiled kernel in the interpreter this way). The step kernel has its own (_step_config)."""

    resident: bool
    block_b: int
    block_h: int = 0  # resident: padded H
    block_n: int = 0  # tiled
    block_k: int = 0  # tiled
    num_warps: int = 4
    num_stages: int = 1

    def __post_init__(self):
        sizes = [self.block_b] + ([self.block_h] if self.resident else [self.block_n, self.block_k])
        if any(not isinstance(v, int) or v < 1 or v & (v - 1) for v in sizes):
            raise ValueError(f"launch_config: tile sizes must be powers of two, got {self}")


# On a GPU: H up to this many units keeps W_hh in registers (a 64x64 tile), larger H uses the tiled kernel.
_GPU_RESIDENT_MAX_H = 64
_GPU_BLOCK_B = 16  # the smallest M of an mma tile; B/16 programs
_GPU_NUM_WARPS = 8
# BLOCK_N = BLOCK_K of the tiled kernel on a GPU: 64 with tensor cores; 32 for exact fp32/fp64, whose FMA dot
# holds more of each tile in registers (64x64 ieee needs ~255 registers a thread; 32x32 about 50-150).
_GPU_TILE = {"ieee": 32, "tf32": 64, "bf16": 64, "fp16": 64}
# Pipeline depth of the tiled and step kernels' K loops: num_stages - 1 = 2 tiles in flight (see the cost model).
_GPU_STAGES = 3
# The step kernel on a GPU: 16 hidden units per program (H/16 programs), 64-wide K tiles, 4 warps.
_GPU_STEP = dict(block_b=16, block_n=16, block_k=64, num_warps=4)


def _gpu_config(resident: bool, precision: str) -> LaunchConfig:
    if resident:
        return LaunchConfig(resident=True, block_b=_GPU_BLOCK_B, block_h=_GPU_RESIDENT_MAX_H,
                            num_warps=_GPU_NUM_WARPS)
    tile = _GPU_TILE[precision]
    return LaunchConfig(resident=False, block_b=_GPU_BLOCK_B, block_n=tile, block_k=tile, num_warps=_GPU_NUM_WARPS,
                        num_stages=_GPU_STAGES)


def _pick_config(batch: int, hidden: int, precision: str, device: torch.device) -> LaunchConfig:
    h_pad = max(16, next_pow2(hidden))
    if device.type == "cpu":  # the interpreter (see _utils.interpreted)
        # the interpreter pays per Triton op: one program over the whole batch (up to 128 rows), whole H
        return LaunchConfig(resident=True, block_b=min(128, max(16, next_pow2(batch))), block_h=h_pad)
    return _gpu_config(h_pad <= _GPU_RESIDENT_MAX_H, precision)


def _gpu_step_config() -> LaunchConfig:
    return LaunchConfig(resident=False, **_GPU_STEP, num_stages=_GPU_STAGES)


def _step_config(batch: int, in_size: int, hidden: int, precision: str, device: torch.device) -> LaunchConfig:
    """(block_b, block_n, block_k) of the step kernel, as a tiled LaunchConfig."""
    if device.type == "cpu":  # the interpreter (see _utils.interpreted)
        # one program: the whole (padded) H and the whole of the longer of I and H per tile
        return LaunchConfig(resident=False, block_b=min(128, max(16, next_pow2(batch))),
                            block_n=max(16, next_pow2(hidden)), block_k=max(16, next_pow2(max(in_size, hidden))))
    return _gpu_step_config()


def _batch_tiled_launch(resident_fn, tiled_fn, batch: int, args: dict, constexprs: dict,
                        cfg: LaunchConfig) -> Launch:
    """The recurrence's launch: cfg's kernel and tile constants, one program per BLOCK_B rows of the batch."""
    if cfg.resident:
        fn, tiles = resident_fn, dict(BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h)
    else:
        fn, tiles = tiled_fn, dict(BLOCK_B=cfg.block_b, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k)
    return Launch(fn, (triton.cdiv(batch, cfg.block_b),), args, {**constexprs, **tiles}, cfg.num_warps,
                  cfg.num_stages)


_ALWAYS: dict = {}  # device -> int32 (1,) tensor holding 1: the guard of a launch that must run


def _always(device: torch.device) -> torch.Tensor:
    """The guard of every launch that must run: an int32 1 on the device, made on first use and only read after
    (the launch that follows its creation on the same stream sees it written)."""
    device = torch.device(device)
    if device not in _ALWAYS:
        _ALWAYS[device] = torch.ones(1, dtype=torch.int32, device=device)
    return _ALWAYS[device]


def _forward_launch(xp, w_hh, hs, hT, reverse: bool, nonlinearity: str, precision: str,
                    cfg: LaunchConfig, guard: torch.Tensor | None = None) -> Launch:
    """guard: None (run), or an int32 (1,) tensor read on the device: the kernel does nothing while it holds 0."""
    T, B, H = xp.shape
    guard = _always(xp.device) if guard is None else guard
    args = dict(xp_ptr=xp, w_ptr=w_hh, hs_ptr=hs, hT_ptr=hT, guard_ptr=guard, T=T, B=B, H=H, stride_xt=xp.stride(0),
                stride_xb=xp.stride(1), stride_wn=w_hh.stride(0), stride_ht=hs.stride(0), stride_hb=hs.stride(1),
                stride_hTb=hT.stride(0), REVERSE=int(reverse))
    constexprs = dict(NONLINEARITY=nonlinearity_code(nonlinearity), PRECISION=precision,
                      EMULATE=emulated(precision, xp))
    return _batch_tiled_launch(_rnn_fwd_resident_kernel, _rnn_fwd_tiled_kernel, B, args, constexprs, cfg)


def _backward_launch(dy, dhT, hs, w_hh, da, dh0, reverse: bool, nonlinearity: str, precision: str,
                     cfg: LaunchConfig, guard: torch.Tensor | None = None) -> Launch:
    T, B, H = da.shape
    dy_arg = dy if dy is not None else da  # never read when HAS_DY is False
    dhT_arg = dhT if dhT is not None else dh0
    guard = _always(da.device) if guard is None else guard
    args = dict(dy_ptr=dy_arg, dhT_ptr=dhT_arg, hs_ptr=hs, w_ptr=w_hh, da_ptr=da, dh0_ptr=dh0, guard_ptr=guard,
                T=T, B=B, H=H,
                stride_dyt=dy_arg.stride(0), stride_dyb=dy_arg.stride(1), stride_dhTb=dhT_arg.stride(0),
                stride_ht=hs.stride(0), stride_hb=hs.stride(1), stride_wn=w_hh.stride(0), stride_dat=da.stride(0),
                stride_dab=da.stride(1), stride_dh0b=dh0.stride(0), REVERSE=int(reverse))
    constexprs = dict(NONLINEARITY=nonlinearity_code(nonlinearity), PRECISION=precision,
                      EMULATE=emulated(precision, da), HAS_DY=dy is not None, HAS_DHT=dhT is not None)
    return _batch_tiled_launch(_rnn_bwd_resident_kernel, _rnn_bwd_tiled_kernel, B, args, constexprs, cfg)


def _step_launch(x, h, w_ih, w_hh, b_ih, b_hh, out, nonlinearity: str, precision: str, in_precision: str,
                 cfg: LaunchConfig) -> Launch:
    B, I = x.shape
    H = w_hh.shape[0]
    has_bias = b_ih is not None
    args = dict(x_ptr=x, h_ptr=h, w_ih_ptr=w_ih, w_hh_ptr=w_hh, b_ih_ptr=b_ih if has_bias else out,
                b_hh_ptr=b_hh if has_bias else out, out_ptr=out, B=B, I=I, H=H, stride_xb=x.stride(0),
                stride_hb=h.stride(0), stride_wih=w_ih.stride(0), stride_whh=w_hh.stride(0), stride_ob=out.stride(0))
    constexprs = dict(NONLINEARITY=nonlinearity_code(nonlinearity), PRECISION=precision, IN_PRECISION=in_precision,
                      EMULATE=emulated(precision, x), HAS_BIAS=has_bias, BLOCK_B=cfg.block_b, BLOCK_N=cfg.block_n,
                      BLOCK_K=cfg.block_k)
    return Launch(_rnn_step_kernel, (triton.cdiv(H, cfg.block_n), triton.cdiv(B, cfg.block_b)), args, constexprs,
                  cfg.num_warps, cfg.num_stages)


# ----------------------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------------------
def _recurrence_forward(xp: torch.Tensor, h0: torch.Tensor | None, w_hh: torch.Tensor, reverse: bool,
                        nonlinearity: str, precision: str, cfg: LaunchConfig | PersistentConfig | None = None):
    """Runs h_t = phi(xp_t + h_{t-1} W_hh^T) for all t in one launch.

    xp: (T, B, H) fp32|fp64; h0: (B, H) or None (zeros); w_hh: (H, H). cfg: None picks the device's (on a GPU,
    persistent or tiled: _persistent_config), a LaunchConfig runs that batch-tiled kernel, a PersistentConfig the
    persistent kernels with those tiles.
    Returns (y (T, B, H) a view of hs, h_T (B, H), hs (T+1, B, H) the state slots kept for backward)."""
    xp, w_hh, hs, hT = forward_buffers(xp, h0, w_hh, reverse, precision)
    T, B, H = xp.shape
    tiled = cfg if isinstance(cfg, LaunchConfig) else _pick_config(B, H, precision, xp.device)
    chosen = _persistent_config(cfg, xp, lambda: persistent.choose_forward(xp, w_hh, hs, hT, reverse, nonlinearity,
                                                                           precision))
    if chosen is None:
        _forward_launch(xp, w_hh, hs, hT, reverse, nonlinearity, precision, tiled)()
    else:  # the fallback: the tiled kernel into the same outputs, guarded by the persistent launch's error flag
        persistent.run_forward(xp, w_hh, hs, hT, reverse, nonlinearity, precision, config=chosen,
                               fallback=lambda flag: _forward_launch(xp, w_hh, hs, hT, reverse, nonlinearity,
                                                                     precision, tiled, guard=flag)())
    y = hs[:T] if reverse else hs[1:]
    return y, hT, hs


def _recurrence_backward(dy: torch.Tensor | None, dhT: torch.Tensor | None, hs: torch.Tensor,
                         w_hh: torch.Tensor, reverse: bool, nonlinearity: str, precision: str,
                         cfg: LaunchConfig | PersistentConfig | None = None):
    """Walks t in reverse: dA_t = (dy_t + dA_{t+1} W_hh) * phi'(h_t). Returns (dA (T, B, H), dh_0 (B, H))."""
    dy, dhT, w_hh, da, dh0 = backward_buffers(dy, dhT, hs, w_hh, precision)
    T, B, H = da.shape
    tiled = cfg if isinstance(cfg, LaunchConfig) else _pick_config(B, H, precision, da.device)
    chosen = _persistent_config(cfg, da, lambda: persistent.choose_backward(dy, dhT, hs, w_hh, da, dh0, reverse,
                                                                            nonlinearity, precision))
    if chosen is None:
        _backward_launch(dy, dhT, hs, w_hh, da, dh0, reverse, nonlinearity, precision, tiled)()
    else:
        persistent.run_backward(dy, dhT, hs, w_hh, da, dh0, reverse, nonlinearity, precision, config=chosen,
                                fallback=lambda flag: _backward_launch(dy, dhT, hs, w_hh, da, dh0, reverse,
                                                                       nonlinearity, precision, tiled, guard=flag)())
    return da, dh0


def _persistent_config(cfg, t: torch.Tensor, choose) -> PersistentConfig | None:
    """The persistent tiles a launch runs with, or None for the batch-tiled kernels: a forced PersistentConfig;
    with nothing forced, on a GPU, choose()'s (kernels/_rnn_persistent.py: cached per device and shape, logged
    once); never in the interpreter (its programs run one after another: a barrier between N-slices could not
    complete there)."""
    if isinstance(cfg, PersistentConfig):
        return cfg
    if cfg is not None or interpreted(t):
        return None
    choice = choose()
    return choice.config if choice.path == "persistent" else None


def _round_operand(t: torch.Tensor, precision: str) -> torch.Tensor:
    """bf16/fp16: t rounded to that dtype (kept in t's dtype). Straight-through: the gradient passes unrounded."""
    low = LOW_PRECISION_DTYPE.get(precision)
    if low is None:
        return t
    return t + (t.detach().to(low).to(t.dtype) - t.detach())


# ----------------------------------------------------------------------------------------------------------
# autograd
# ----------------------------------------------------------------------------------------------------------
class _Recurrence(torch.autograd.Function):
    """(xp, h0, W_hh) -> (y, h_T) for one layer and direction; backward = one reverse launch + one GEMM."""

    @staticmethod
    def forward(ctx, xp, h0, w_hh, reverse: bool, nonlinearity: str, precision: str,
                cfg: LaunchConfig | PersistentConfig | None):
        y, hT, hs = _recurrence_forward(xp, h0, w_hh, reverse, nonlinearity, precision, cfg)
        ctx.save_for_backward(hs, w_hh)
        ctx.reverse, ctx.nonlinearity, ctx.precision, ctx.cfg = reverse, nonlinearity, precision, cfg
        ctx.set_materialize_grads(False)
        return y, hT

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, dhT):
        hs, w_hh = ctx.saved_tensors
        T = hs.shape[0] - 1
        if dy is None and dhT is None:
            return None, None, None, None, None, None, None
        da, dh0 = _recurrence_backward(dy, dhT, hs, w_hh, ctx.reverse, ctx.nonlinearity, ctx.precision, ctx.cfg)
        dw_hh = None
        if ctx.needs_input_grad[2]:
            # dW_hh = sum_t dA_t^T h_{t-1}: h_{t-1} are the slots the forward read from
            h_prev = hs[1:] if ctx.reverse else hs[:T]
            H = hs.shape[2]
            dw_hh = (_round_operand(da, ctx.precision).reshape(-1, H).t()
                     @ _round_operand(h_prev, ctx.precision).reshape(-1, H))
        return da, (dh0 if ctx.needs_input_grad[1] else None), dw_hh, None, None, None, None


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


def cudnn_rnn_allows_tf32() -> bool:
    """Whether nn.RNN's cuDNN kernels may use TF32 for fp32 data: ATen's cuDNN RNN asks
    allowTF32CuDNN(Float32Op::RNN), which torch >= 2.9 exposes as torch.backends.cudnn.rnn.fp32_precision
    (the legacy torch.backends.cudnn.allow_tf32 setter updates it, and reading allow_tf32 raises once the two
    APIs were mixed); older torch has only torch.backends.cudnn.allow_tf32."""
    rnn_flags = getattr(torch.backends.cudnn, "rnn", None)
    if rnn_flags is not None and hasattr(rnn_flags, "fp32_precision"):
        return rnn_flags.fp32_precision == "tf32"
    return bool(torch.backends.cudnn.allow_tf32)


def cuda_matmul_allows_tf32() -> bool:
    """Whether torch's CUDA matmuls (cuBLAS) may use TF32 for fp32 data: torch.backends.cuda.matmul.fp32_precision
    where torch has it and it is set ("tf32" / "ieee"), else the legacy torch.backends.cuda.matmul.allow_tf32."""
    matmul = torch.backends.cuda.matmul
    precision = getattr(matmul, "fp32_precision", "none")
    if precision in ("tf32", "ieee"):
        return precision == "tf32"
    return bool(matmul.allow_tf32)


def resolve_precision(precision: str | None, input: torch.Tensor) -> str:
    """None -> "bf16"/"fp16" under autocast for input's device (autocast's dtype), "tf32" on CUDA when cuDNN's
    RNN may use TF32 (cudnn_rnn_allows_tf32), else "ieee". An explicit precision is checked and returned."""
    if precision is None:
        if input.dtype == torch.float64:
            return "ieee"
        if torch.is_autocast_enabled(input.device.type):
            autocast_dtype = torch.get_autocast_dtype(input.device.type)
            return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(autocast_dtype, "ieee")
        if input.device.type == "cuda" and cudnn_rnn_allows_tf32():
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
        training=False, bidirectional=False, precision=None,
        launch_config: LaunchConfig | PersistentConfig | None = None):
    """torch.nn.RNN's forward, computed by rnnlm's Triton recurrence kernels.

    Args:
        input: (T, B, I), (B, T, I) with batch_first, or unbatched (T, I); float16/bfloat16/float32/float64.
            Non-contiguous input is fine (it is copied to time-major contiguous layout). A CUDA tensor (the
            kernels run on its device), or a CPU tensor when Triton runs in its interpreter.
        hx: initial state (num_layers * num_directions, B, H) ((L*D, H) for unbatched input) or None (zeros).
        flat_weights: nn.RNN's ``_flat_weights`` list: for each layer, for each direction:
            weight_ih (H, I_l), weight_hh (H, H), then bias_ih (H,), bias_hh (H,) when bias is True.
        num_layers, nonlinearity ("tanh" | "relu"), bias, batch_first, dropout, training, bidirectional:
            as in torch.nn.RNN (dropout acts between layers, only when training is True).
        precision: None (auto: "bf16"/"fp16" under torch.autocast, "tf32" on CUDA when cuDNN's RNN may use
            TF32, else "ieee") | "ieee" | "tf32" | "bf16" | "fp16". See the module docstring.
        launch_config: None (the device's choice: on a GPU the persistent kernels where recurrence_path() says
            so, else the batch-tiled ones), a LaunchConfig to run that batch-tiled kernel variant, or a
            PersistentConfig to run the persistent kernels with those tiles (and form).

    Returns:
        (output, h_n) as nn.RNN: output (T, B, D*H) (batch_first: (B, T, D*H); unbatched: (T, D*H)) and
        h_n (L*D, B, H) ((L*D, H) unbatched), in the input's dtype (autocast's dtype under autocast).
        Differentiable with respect to input, hx and every weight. No host synchronisation.

    Raises:
        ValueError naming the argument for a wrong rank, dtype, device or size, an hx of the wrong shape, an
        empty batch or an empty sequence.
    """
    a = _check_args(input, hx, flat_weights, num_layers, nonlinearity, bias, batch_first, dropout, training,
                    bidirectional, precision)
    check_device(input, "input")
    if launch_config is not None and not isinstance(launch_config, (LaunchConfig, PersistentConfig)):
        raise ValueError(f"launch_config must be None, a LaunchConfig or a PersistentConfig, got "
                         f"{type(launch_config).__name__}")

    def one_direction(x, h0, w_ih, w_hh, b_ih, b_hh, reverse):
        T, B, I = x.shape
        x2 = _round_operand(x.reshape(T * B, I), a.precision)
        w2 = _round_operand(w_ih, a.precision).t()
        # xp = X W_ih^T + (b_ih + b_hh): both biases folded into one GEMM
        xp = torch.mm(x2, w2) if b_ih is None else torch.addmm(b_ih + b_hh, x2, w2)
        return _Recurrence.apply(xp.view(T, B, a.hidden), h0, w_hh, reverse, a.nonlinearity, a.precision,
                                 launch_config)

    with torch.autocast(a.x.device.type, enabled=False):
        output, h_n = _run_layers(a, one_direction)
    return _finish(a, output, h_n)


def rnn_step(input, hx, flat_weights, *, num_layers, nonlinearity="tanh", bias=True, precision=None):
    """One time step of a unidirectional torch.nn.RNN, for generation: ONE kernel launch per layer, no autograd.

    input: (B, I) the step's input (float16/bfloat16/float32/float64; CUDA, or CPU in the interpreter);
    hx: (num_layers, B, H) the state before the step, or None (zeros); flat_weights, num_layers, nonlinearity,
    bias, precision: as rnn(). Computes, layer by layer, h' = phi(x W_ih^T + b_ih + b_hh + h W_hh^T) with x the
    layer below's new state, exactly rnn() on a sequence of length 1 (up to the order of the fp32 sums).
    Returns (output (B, H): the last layer's new state, h_n (num_layers, B, H)): output is h_n[-1], in the input's
    dtype (autocast's dtype under autocast). Reads nothing back to the host, so a generation loop that feeds it
    sampled tokens never waits for the GPU. Not differentiable: call it under torch.no_grad() or
    torch.inference_mode() (ValueError when an argument requires grad while grad mode is on), and for
    training use rnn().
    """
    if not isinstance(input, torch.Tensor) or input.dim() != 2:
        got = f"{input.dim()}-D tensor" if isinstance(input, torch.Tensor) else type(input).__name__
        raise ValueError(f"input: expected a 2-D (B, I) tensor for one time step, got {got}")
    if hx is not None and not isinstance(hx, torch.Tensor):
        raise ValueError(f"hx must be a torch.Tensor or None, got {type(hx).__name__}")
    a = _check_args(input.unsqueeze(0), hx, flat_weights, num_layers, nonlinearity, bias, False, 0.0, False, False,
                    precision)
    check_device(input, "input")
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (input, hx, *flat_weights)):
        raise ValueError("rnn_step is not differentiable: call it under torch.no_grad() or torch.inference_mode(), "
                         "or use rnn() to train")
    x = a.x[0].to(a.state_dtype)  # (B, I)
    B, H = x.shape[0], a.hidden
    in_precision = a.precision
    if in_precision in ("ieee", "tf32"):  # the input product follows torch's matmul setting, as rnn()'s GEMM
        in_precision = "tf32" if x.device.type == "cuda" and cuda_matmul_allows_tf32() else "ieee"
    h_n = empty((a.num_layers, B, H), a.state_dtype, x.device)
    for layer in range(a.num_layers):
        w_ih, w_hh, b_ih, b_hh = (None if w is None else inner_contiguous(w.to(a.state_dtype))
                                  for w in a.weights[layer])
        if a.h0 is None:
            h = torch.zeros((B, H), dtype=a.state_dtype, device=x.device)
        else:
            h = inner_contiguous(a.h0[layer].to(a.state_dtype))
        cfg = _step_config(B, x.shape[1], H, a.precision, x.device)
        _step_launch(inner_contiguous(x), h, w_ih, w_hh, b_ih, b_hh, h_n[layer], a.nonlinearity, a.precision,
                     in_precision, cfg)()
        x = h_n[layer]
    h_n = h_n.to(a.out_dtype)
    return h_n[-1], h_n


def recurrence_path(device, batch: int, hidden: int, precision: str, *, nonlinearity: str = "tanh",
                    backward: bool = False) -> PathChoice | None:
    """Which kernels rnn() runs (with no launch_config) for one layer's recurrence of (batch, hidden) on device,
    and why: str() of it is the one line the log gets ("recurrence: persistent (128 programs ...)"), which the
    benchmarks put in their extra_info. On a GPU the choice is made, and cached, at the first such launch
    (forward or backward), so this returns None until then; in the interpreter it is always the batch-tiled
    kernels."""
    device = torch.device(device)
    if device.type == "cpu":
        return PathChoice("tiled", "Triton's interpreter runs programs one after another: no grid barrier")
    return persistent.cached_choice(device, batch, hidden, precision, nonlinearity, backward)


def rnn_reference(input, hx, flat_weights, *, num_layers, nonlinearity="tanh", bias=True, batch_first=False,
                  dropout=0.0, training=False, bidirectional=False, precision=None):
    """The same function as rnn(), written as a plain PyTorch loop over time (tests and benchmarks).

    Precision: "bf16"/"fp16" round every product's operands as rnn() does; "tf32" computes exactly
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
def gpu_compile_configs() -> list[CompileConfig]:
    """Every kernel variant the launchers choose on a GPU, each at a representative launch (meta tensors),
    specialised as Triton specialises that launch (kernels/_utils.py), for kernels/compile_report.py.

    Recurrence (T = 20, B = 64), forward and backward, resident (H = 64) and tiled (H = 512), for every precision
    (fp32 state: ieee, tf32, bf16, fp16; fp64 state: ieee) with tanh; also with relu; at B = 1 (a prompt of one
    sample: B becomes a constant; forward only, as generation never goes backward); and, for the fp32-operand
    precisions (ieee, tf32: what runs without autocast), at H = 50 / 130, sizes not divisible by 16 (scalar loads,
    a separate compile). Backward kernels have dy and dh_T both present (the HAS_* flags only remove loads).
    Step (I = 256, H = 512): B = 1 with tanh and relu and B = 16 with tanh, every precision. Tensor cores are
    expected for tf32/bf16/fp16; cp.async for every tiled and step kernel (their K loops are pipelined)."""
    T, B = 20, 64
    meta = meta_tensor
    out = []

    def add(name, launch, precision):
        out.append(launch.compile_config(name, expect_tensor_cores=precision != "ieee",
                                         expect_cp_async=launch.num_stages > 1))

    for state, precisions in ((torch.float32, PRECISIONS), (torch.float64, ("ieee",))):
        ty = "fp32" if state == torch.float32 else "fp64"
        for precision in precisions:
            for resident, hidden, odd_hidden in ((True, 64, 50), (False, 512, 130)):
                cfg = _gpu_config(resident, precision)
                shapes = [("tanh", B, hidden), ("relu", B, hidden), ("tanh", 1, hidden)]
                if state == torch.float32 and precision in ("ieee", "tf32"):
                    shapes.append(("tanh", B, odd_hidden))
                for nonlin, batch, H in shapes:
                    tag = f"{'resident' if resident else 'tiled'}_{ty}_{nonlin}_{precision}_B{batch}_H{H}"
                    hs, da, w, hb = meta((T + 1, batch, H), state), meta((T, batch, H), state), meta((H, H), state), \
                        meta((batch, H), state)
                    add(f"rnn_fwd_{tag}", _forward_launch(da, w, hs, hb, False, nonlin, precision, cfg), precision)
                    if batch > 1:
                        add(f"rnn_bwd_{tag}", _backward_launch(da, hb, hs, w, da, hb, False, nonlin, precision, cfg),
                            precision)
            I, H = 256, 512
            for nonlin, batch in (("tanh", 1), ("relu", 1), ("tanh", 16)):
                x, h, o = meta((batch, I), state), meta((batch, H), state), meta((batch, H), state)
                w_ih, w_hh, b = meta((H, I), state), meta((H, H), state), meta(H, state)
                in_precision = "ieee" if precision == "tf32" else precision  # torch's matmul default: no TF32
                add(f"rnn_step_{ty}_{nonlin}_{precision}_B{batch}_I{I}_H{H}",
                    _step_launch(x, h, w_ih, w_hh, b, b, o, nonlin, precision, in_precision,
                                 _gpu_step_config()), precision)
    return out
