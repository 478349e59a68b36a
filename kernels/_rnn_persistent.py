r"""The persistent Elman recurrence: W_hh split over the hidden dimension, held on chip for all T steps.

One layer, one direction, forward and backward, with the same arithmetic as kernels/rnn.py (whose module
docstring has the math, the state-slot layout and the precisions); this module only changes how the
sequential product h_{t-1} W_hh^T (backward: dA_{t+1} W_hh) is spread over the GPU. kernels/rnn.py's launchers
run it where choose_path() says so (rnn() with no launch_config, on a GPU), or where launch_config is a
PersistentConfig; its autograd Function is the same either way.

Grid and step
-------------
Grid (cdiv(H, BLOCK_N), cdiv(B, BLOCK_B)): program (n, b) owns hidden units n*BLOCK_N.. of batch rows
b*BLOCK_B... It loads its slice W_hh^T[:, n-slice] (BLOCK_K x BLOCK_N, BLOCK_K = H padded to a power of two)
once -- triton keeps it in shared memory for fp32 operands, and for bf16/fp16 in registers (3.6, 3.9) or
shared memory (3.5), see the compile report -- and then, for every step, reads its batch tile's whole h_{t-1} (BLOCK_B x H, written one step
earlier by all the N-slices of that tile), does ONE tl.dot against the resident slice, adds xp_t, applies
phi and stores its BLOCK_B x BLOCK_N piece of h_t. Batch tiles are independent; the programs of one tile
then meet at a barrier before the next step. Backward is the mirror image: program (n, b) holds
W_hh[:, n-slice] and reads dA of the step before (all of H) to write its slice of dA_t; dh_0 is one more
step (s = T) of the same body. dW_hh, dW_ih, db and dX stay GEMMs, as in kernels/rnn.py.

bf16 and fp16 keep a 16-bit shadow copy of the state next to the fp32 state, in a two-slot ring (2, B, H):
every program reads its dot operand h_{t-1} (dA_{t+1}) from slot s % 2 and writes its slice of the next one
to slot (s + 1) % 2. Two slots suffice because a program only writes slot s % 2 again at step s + 1, after
the barrier of step s, i.e. after every program of its tile has finished reading it. (Reading the fp32
state and rounding it inside the kernel instead took 255 registers and spilled 168-224 bytes at H = 512;
with the shadow, 120-134 registers and no spill.)

Barrier (the programs of one batch tile, after each step)
---------------------------------------------------------
One int32 counter per (batch tile, step), zeroed by the launcher, so a counter only ever counts up to the
number of N-slices and no value is reused (no ABA problem, nothing polled for equality):
    tl.debug_barrier()                       # every thread's stores of this step are issued (bar.sync)
    n = atomic_add(counter, 1, acq_rel, gpu) # arrive: release (our stores) + acquire; one thread
    while n < n_slices and no error and spins < max_spins:
        n = atomic_add(counter, 0, acquire, gpu)   # compiled to ld.global.gpu.acquire (3.5, 3.6, 3.9)
    tl.debug_barrier()                       # no thread reads h_t before the acquire
This is PyTorch Inductor's x_grid_barrier pattern (release arrive, acquire poll, a CTA barrier on both
sides). tl.atomic_poll would express the wait directly, but it exists only from Triton 3.9 and pyproject
allows 3.5; atomic_add / atomic_xchg with sem and scope, tl.debug_barrier, tl.num_programs, tl.cast and
launch_cooperative_grid exist in 3.5, 3.6 and 3.9 alike (the compile report builds these kernels with each:
the release arrive and the acquire wait are in the PTX, and kernels/compile_report.py checks them). Scalar
atomics are executed by one thread and broadcast through shared memory, so every loop condition is uniform
across the program (the error flag is read with an atomic too: a plain load per thread could diverge and
deadlock the bar.sync inside the loop).

Timeouts and the fallback
-------------------------
The wait is bounded: after max_spins polls (~0.5-1 us each; the default 2^20 is ~1 s) the program sets the
error flag and stops, and every other program stops at its next poll or step. The launch itself uses
launch_cooperative_grid=True: the driver then refuses a grid that cannot be resident all at once (an error at
launch, handled as a timeout: the flag is set on the host side). Then the layer is rerun without the barrier:
  * in rnn() (kernels/rnn.py), through a hook: right after the persistent launch the launcher enqueues
    kernels/rnn.py's batch-tiled kernel into the same outputs with the flag as its guard argument (a runtime
    pointer it reads first, returning at once while it holds 0; never specialised, so no new compiled kernel).
    No host synchronisation: the flag is copied to pinned host memory on a side stream and read, once its event
    has completed, by a later persistent_timed_out(). The costs of a launch that did not time out: the guarded
    launch's few microseconds (its programs read one int and return);
  * standalone (persistent_forward / persistent_backward without a hook; tests): the launcher reads the flag
    after the launch (on a GPU one host synchronisation), and if it is set reruns the per-step form, whose
    results are the persistent form's bits.
Either way a timeout is never a hang and never a wrong result; the host warns once, and from then on
choose_path() returns "tiled" in this process. (A rerun path compiled into the persistent kernel itself was
tried and dropped: its W_hh loop made ptxas take 255 registers and spill.)

Two forms of the same step body (the constexpr PERSISTENT; PersistentConfig.form):
  * persistent: ONE launch loops over t with the barrier between steps (what a GPU runs);
  * per-step: the host launches the kernel once per step (T launches forward, T + 1 backward), and the
    kernel boundary is the barrier. Triton's interpreter runs programs one after another, so the
    persistent form would deadlock there with more than one N-slice (the first program would wait for
    one that has not started; the bounded wait then times out); the per-step form runs there with any number
    of N-slices and batch tiles, and the persistent form runs there with one N-slice per batch tile, going
    through the barrier code without ever waiting. With the same tiles both forms give the same bits.

Selection (choose_path; kernels/rnn.py asks choose_forward / choose_backward)
-------------------------------------------------------------------------
On a GPU with nothing forced, per (device, B, H, precision, nonlinearity, direction), once -- the choice is
cached and logged as one line ("recurrence: persistent (128 programs (32 N-slices x 4 batch tiles) on 132
SMs x 2 per SM (...))"), and kernels.rnn.recurrence_path() hands it to the benchmarks' extra_info -- the
batch-tiled kernels ("tiled": resident or tiled by kernels/rnn.py's own rule) are chosen, in this order:
  1. when a persistent launch timed out or was refused earlier in this process;
  2. for fp64 state (the parity dtype; the persistent kernels are built for fp32 state);
  3. for H <= 128 (W_hh is at most 64 KB: kernels/rnn.py's kernels stream it every step and need no barrier;
     make gpu-check times the persistent kernels at H = 128 too, which measures this rule);
  4. when H pads to more than 1024 (a slice and the h tile no longer fit on chip);
  5. when the grid, cdiv(H, 16) x cdiv(B, 16) programs, exceeds SMs x programs per SM, the latter from the
     persistent kernel compiled for this very launch (Triton's warmup: its registers and shared memory) and
     the device's own limits (torch's device properties: shared memory per SM and per block, registers,
     threads; resident blocks from the compute capability);
and the persistent kernels otherwise. In the interpreter rnn() always takes the batch-tiled kernels.
GPU tiles: BLOCK_B = BLOCK_N = 16 (the smallest mma M; the most programs, so the most SMs share a step), 8
warps, BLOCK_K = padded H in {256, 512, 1024}, with ptxas's register cap at 128 up to 512 (two programs an
SM) and 255 at 1024. Grids that fit an H100/H200 (132 SMs) at the sweep's shapes: B <= 64 at H = 512 (128
programs, 2 an SM at most needed), B <= 128 at H = 256 (2 an SM: 264), B <= 32 at H = 1024 (one an SM).

Cost model (H100 SXM, 132 SMs at ~1.75 GHz; the default model: B 64, H 512, T 20, 2 layers, tf32)
------------------------------------------------------------------------------------------
Estimates, not measurements; the first measurements (an H200) and how they differ are in
benchmarks/gpu-report/2026-11-30/README.md. Grid 32 N-slices x 4 batch tiles = 128
programs, one or two an SM. Per step and program:
  * read h_{t-1} of the tile, 16 x 512 x 4 B = 32 KiB (bf16/fp16 ring: 16 KiB) from L2. All 128 programs
    read 4 MiB a step, so the bound is the L2's aggregate bandwidth, ~5.5 TB/s: 0.76 us, plus an L2 round
    trip of ~600 clk (0.34 us)                                                     ~1.1 us (16-bit: ~0.7)
  * the dot, 16 x 16 x 512 multiply-adds against the slice in shared memory: a dependent chain of 64
    m16n8k8 tf32 mma.sync per warp (K = 512 / 8; bf16/fp16 m16n8k16: 32) at ~16-32 clk each, 0.6-1.2 us
    (16-bit: 0.3-0.6; exact fp32: 512 dependent FMAs per output at ~4 clk, ~1.2 us)       ~0.9 us (0.45)
  * phi, the 16 x 16 store, then the barrier: the release arrive waits for the stores to reach L2 (~600 clk),
    the last arrival is seen at the pollers' next acquire (~600-1200 clk)                  ~1.0 us
  => ~3.0 us per layer-step tf32, ~2.2 bf16/fp16, ~3.3 ieee, forward and backward alike (backward has T + 1
     steps), plus ~8 us per launch (the zeroed counters, the cooperative launch and the slice load, the
     guarded no-op rerun launch; the flag's copy runs on a side stream).
Tiled (kernels/rnn.py's cost model, at H100 clocks): 4 programs each stream all of W_hh (1 MiB) and h (8 x
  32 KiB) from L2 every step, ~64 B/clk per SM with cp.async pipelining: (1.25 MiB / 64 B + 8 x 600 clk)
  / 1.75 GHz ~ 14.5 us per layer-step.
cuDNN (nn.RNN's STANDARD algorithm here, ATen's get_algo): per layer and step one (64 x 512) x (512 x 512)
  GEMM and one pointwise kernel, two dependent launches of a few us each: ~8 us forward, ~9 us backward.
Forward+backward of the 2-layer recurrence at T = 20 (the input and weight GEMMs, ~70 us, are common to all):
  persistent 2 x (20 x 3.0 + 8) + 2 x (21 x 3.0 + 8) ~ 280 us; cuDNN 2 x 20 x (8 + 9) ~ 680 us; tiled
  2 x 20 x 2 x 14.5 ~ 1160 us. So nn.RNN / persistent ~ 2.4x on the recurrence, ~2.2x with the common GEMMs
  (bf16: 2 x (20 x 2.2 + 8) + 2 x (21 x 2.2 + 8) ~ 210 us, ~2.8x): the >= 2x goal by a small margin. The
  barrier and the dot's dependent mma chain are ~2/3 of a step and the most uncertain terms; only a GPU run
  can tell (gpu-check prints nn.RNN / persistent at the default shape).
Both layers in one launch, as a wavefront (layer 2 at step t beside layer 1 at step t + 1), would turn 2T
  barrier phases into T + 1: per step layer 2 also reads y1_t and multiplies it by its W_ih slice (~+1.1 us:
  ~4.1 us a step), 21 x 4.1 + 8 ~ 95 us forward against 2 x (20 x 3.0 + 8) = 136 us, and about as much saved
  backward: ~80 us of ~350 us (~25%), on an H100 only (256 programs: two an SM on 132 SMs; an A100's 216
  cannot hold them), with dropout between the layers moved into the kernel (torch's masks, precomputed) and
  twice the on-chip weights. Not built: a ~25% model gain on uncertain per-step terms does not pay for the
  complexity before a GPU has measured the one-layer kernel.

Layers: @triton.jit kernels -> launches (forward_launch / backward_launch: one description for the
launchers, the selection's probe and the compile report) -> run_forward / run_backward (into the caller's
buffers: kernels/rnn.py's launchers call these with their fallback hook) and persistent_forward /
persistent_backward (standalone: check, allocate, run); choose_path / programs_per_sm / estimate_resources /
SMLimits (selection) and choose_forward / choose_backward / cached_choice (the cached choice on a GPU);
persistent_timed_out() (the flag, read without waiting); gpu_compile_configs() for the compile report.
"""
from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, replace

import torch

from kernels import _runtime

import triton
import triton.language as tl

from kernels._common import (NONLINEARITIES, activation, activation_grad_from_output, device_function, dot_operand,
                             mm, nonlinearity_code)
from kernels._utils import (LOW_PRECISION_DTYPE, MAXNREG, RNN_PRECISIONS, CompileConfig, Launch, backward_buffers,
                            emulated, empty, forward_buffers, meta_tensor, next_pow2, on_device_of)

__all__ = ["persistent_forward", "persistent_backward", "run_forward", "run_backward", "forward_launch",
           "backward_launch", "choose_path", "choose_forward", "choose_backward", "cached_choice",
           "estimate_resources", "programs_per_sm", "default_config", "PathChoice", "PersistentConfig",
           "KernelResources", "SMLimits", "gpu_config", "gpu_compile_configs", "persistent_timed_out",
           "DEFAULT_MAX_SPINS", "LAUNCH_OPTIONS", "PRECISIONS"]

log = logging.getLogger("rnnlm.kernels")

PRECISIONS = RNN_PRECISIONS  # every precision of kernels/rnn.py
DEFAULT_MAX_SPINS = 1 << 20  # polls before a barrier gives up (~0.5-1 us each)
# triton options of every persistent launch on a GPU (and of the compile report's builds of these kernels)
LAUNCH_OPTIONS = {"launch_cooperative_grid": True}
# Never specialised: the sequence length, the batch (masks only), the per-step form's step, the direction, the
# spin bound, the counters' stride (T or T + 1) and the two int32 addresses of the barrier (scalar atomics gain
# nothing from alignment, and the counters start 4 bytes past the flag): one compiled kernel for every T, B,
# direction and form argument, so the compile report's build is the one launched.
_NO_SPEC = ["T", "B", "step", "REVERSE", "max_spins", "stride_sync", "sync_ptr", "err_ptr"]


# ----------------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------------
@device_function
def _read_flag(err_ptr):
    """The error flag as a program-uniform scalar (a scalar atomic runs in one thread and is broadcast)."""
    return tl.atomic_add(err_ptr, 0, sem="relaxed", scope="gpu")


@device_function
def _grid_barrier(counter_ptr, err_ptr, expected, max_spins):
    """Waits until `expected` programs have arrived at *counter_ptr (this batch tile, this step).
    Returns False, with the error flag set, when the wait gave up or another program had set the flag."""
    tl.debug_barrier()
    count = tl.atomic_add(counter_ptr, 1, sem="acq_rel", scope="gpu") + 1
    err = _read_flag(err_ptr)
    spins = 0
    while (count < expected) & (err == 0) & (spins < max_spins):
        count = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
        err = _read_flag(err_ptr)
        spins += 1
    ok = count >= expected
    if not ok:
        tl.atomic_xchg(err_ptr, 1, sem="relaxed", scope="gpu")
    tl.debug_barrier()
    return ok


@device_function
def _rows_if(rb, n_rows, cond):
    """The row mask rb < n_rows where the scalar cond holds, else no row: a scalar condition folded into the
    row bound (the interpreter types `mask & scalar_condition` as int32, which it then rejects as a mask)."""
    return rb < tl.where(cond, n_rows, 0)


@device_function
def _load_slice(w_ptr, n0, H, stride_w_row, stride_w_col, PRECISION: tl.constexpr, EMULATE: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """(BLOCK_K, BLOCK_N) tile s[k, n] = w[k * stride_w_row + (n0 + n) * stride_w_col] as a dot operand:
    W_hh^T's n-slice (forward: strides (1, stride_wn)) or W_hh's (backward: (stride_wn, 1))."""
    rn = tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    w = tl.load(w_ptr + rk[:, None] * stride_w_row + (n0 + rn[None, :]) * stride_w_col,
                mask=(rk < H)[:, None] & (rn < H - n0)[None, :], other=0.0)
    return dot_operand(w, PRECISION, EMULATE)


@device_function
def _fwd_step(s, n0, row0, wt, xp_ptr, hs_ptr, ha_ptr, hT_ptr, T, B, H,
              stride_xt, stride_xb, stride_ht, stride_hb, stride_at, stride_ab, stride_hTb, REVERSE,
              NONLINEARITY: tl.constexpr, PRECISION: tl.constexpr, EMULATE: tl.constexpr,
              BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Step s of the forward for one (N-slice, batch tile): h_t[:, n-slice] = phi(xp_t + h_{t-1} @ wt)."""
    s = tl.cast(s, tl.int32)  # a Python int in the interpreter's loops
    t = s + REVERSE * (T - 1 - 2 * s)
    rb = tl.arange(0, BLOCK_B)
    rn = tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    row_ok = rb < B - row0
    mask = row_ok[:, None] & (rn < H - n0)[None, :]
    if PRECISION == "bf16" or PRECISION == "fp16":
        a_slot = s % 2  # the shadow ring
    else:
        a_slot = t + REVERSE  # h_{t-1}'s state slot
    a = tl.load(ha_ptr + a_slot.to(tl.int64) * stride_at + row0 * stride_ab + rb[:, None] * stride_ab + rk[None, :],
                mask=row_ok[:, None] & (rk < H)[None, :], other=0.0)
    xp = tl.load(xp_ptr + t.to(tl.int64) * stride_xt + row0 * stride_xb + rb[:, None] * stride_xb + n0 + rn[None, :],
                 mask=mask, other=0.0)
    h = activation(mm(a, wt, xp, PRECISION, EMULATE), NONLINEARITY)
    tile = row0 * stride_hb + rb[:, None] * stride_hb + n0 + rn[None, :]
    tl.store(hs_ptr + (t + 1 - REVERSE).to(tl.int64) * stride_ht + tile, h, mask=mask)
    if PRECISION == "bf16" or PRECISION == "fp16":
        tl.store(ha_ptr + ((s + 1) % 2).to(tl.int64) * stride_at + row0 * stride_ab + rb[:, None] * stride_ab + n0
                 + rn[None, :], dot_operand(h, PRECISION, EMULATE), mask=mask)
    if s == T - 1:
        tl.store(hT_ptr + row0 * stride_hTb + rb[:, None] * stride_hTb + n0 + rn[None, :], h, mask=mask)


@device_function
def _bwd_step(s, n0, row0, w, dy_ptr, dhT_ptr, hs_ptr, da_ptr, ga_ptr, dh0_ptr, T, B, H,
              stride_dyt, stride_dyb, stride_dhTb, stride_ht, stride_hb, stride_dat, stride_dab,
              stride_gt, stride_gb, stride_dh0b, REVERSE,
              NONLINEARITY: tl.constexpr, PRECISION: tl.constexpr, EMULATE: tl.constexpr,
              HAS_DY: tl.constexpr, HAS_DHT: tl.constexpr,
              BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Step s < T of the backward for one (N-slice, batch tile): dA_t[:, n-slice] = (dy_t + dA_later @ w)
    * phi'(h_t), with dA_later the dA of the step before (dh_T at s = 0); step s = T: dh_0 = dA_first @ w.
    The loads around the dot are masked rather than branched on s, so the dot stays at the top level of the
    loop body: under an `if`, triton re-stored the resident slice to shared memory every step and spilled."""
    rb = tl.arange(0, BLOCK_B)
    rn = tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    dtype = hs_ptr.dtype.element_ty
    s = tl.cast(s, tl.int32)  # a Python int in the interpreter's loops
    t = (T - 1 - s) + REVERSE * (2 * s + 1 - T)
    col_ok = (rn < H - n0)[None, :]
    step_mask = _rows_if(rb, B - row0, s < T)[:, None] & col_ok
    if PRECISION == "bf16" or PRECISION == "fp16":
        g_slot = s % 2
    else:
        g_slot = t + 1 - 2 * REVERSE  # where step s - 1 wrote its dA
    g = tl.load(ga_ptr + g_slot.to(tl.int64) * stride_gt + row0 * stride_gb + rb[:, None] * stride_gb + rk[None, :],
                mask=_rows_if(rb, B - row0, s > 0)[:, None] & (rk < H)[None, :], other=0.0)
    acc = tl.full((BLOCK_B, BLOCK_N), 0.0, dtype)  # tl.full: a builtin (tl.zeros is @jit)
    if HAS_DY:
        acc += tl.load(dy_ptr + t.to(tl.int64) * stride_dyt + row0 * stride_dyb + rb[:, None] * stride_dyb + n0
                       + rn[None, :], mask=step_mask, other=0.0).to(dtype)
    if HAS_DHT:
        acc += tl.load(dhT_ptr + row0 * stride_dhTb + rb[:, None] * stride_dhTb + n0 + rn[None, :],
                       mask=_rows_if(rb, B - row0, s == 0)[:, None] & col_ok, other=0.0).to(dtype)
    acc = mm(g, w, acc, PRECISION, EMULATE)
    h = tl.load(hs_ptr + (t + 1 - REVERSE).to(tl.int64) * stride_ht + row0 * stride_hb + rb[:, None] * stride_hb
                + n0 + rn[None, :], mask=step_mask, other=0.0)
    da = acc * activation_grad_from_output(h, NONLINEARITY)
    tl.store(da_ptr + t.to(tl.int64) * stride_dat + row0 * stride_dab + rb[:, None] * stride_dab + n0 + rn[None, :],
             da, mask=step_mask)
    if PRECISION == "bf16" or PRECISION == "fp16":
        tl.store(ga_ptr + ((s + 1) % 2).to(tl.int64) * stride_gt + row0 * stride_gb + rb[:, None] * stride_gb + n0
                 + rn[None, :], dot_operand(da, PRECISION, EMULATE), mask=step_mask)
    if s == T:
        tl.store(dh0_ptr + row0 * stride_dh0b + rb[:, None] * stride_dh0b + n0 + rn[None, :], acc,
                 mask=(rb < B - row0)[:, None] & col_ok)


@triton.jit(do_not_specialize=_NO_SPEC)
def _rnn_persistent_fwd_kernel(
    xp_ptr,  # (T, B, H) input projections with both biases, state dtype, unit stride on H
    w_ptr,  # (H, H) W_hh, unit stride on the last dim
    hs_ptr,  # (T+1, B, H) state slots (kernels/rnn.py's layout); the h_0 slot is filled by the launcher
    ha_ptr,  # the dot operand's source: hs itself, or for bf16/fp16 the (2, B, H) shadow ring (slot 0 = h_0)
    hT_ptr,  # (B, H) out: h_T
    sync_ptr,  # (batch tiles, T) int32 barrier counters, zeroed (persistent form only)
    err_ptr,  # int32 error flag, zeroed
    T, B, H,
    step,  # per-step form: the step to run
    stride_xt, stride_xb, stride_wn, stride_ht, stride_hb, stride_at, stride_ab, stride_hTb, stride_sync,
    REVERSE, max_spins,
    NONLINEARITY: tl.constexpr, PRECISION: tl.constexpr, EMULATE: tl.constexpr, PERSISTENT: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_b = tl.program_id(1)
    row0 = pid_b.to(tl.int64) * BLOCK_B
    n0 = tl.program_id(0) * BLOCK_N
    wt = _load_slice(w_ptr, n0, H, 1, stride_wn, PRECISION, EMULATE, BLOCK_N, BLOCK_K)  # W_hh^T's n-slice
    if PERSISTENT:
        counters = sync_ptr + pid_b.to(tl.int64) * stride_sync
        ok = _read_flag(err_ptr) == 0
        s = 0
        while (s < T) & ok:
            _fwd_step(s, n0, row0, wt, xp_ptr, hs_ptr, ha_ptr, hT_ptr, T, B, H, stride_xt, stride_xb,
                      stride_ht, stride_hb, stride_at, stride_ab, stride_hTb, REVERSE,
                      NONLINEARITY, PRECISION, EMULATE, BLOCK_B, BLOCK_N, BLOCK_K)
            if s < T - 1:
                ok = _grid_barrier(counters + s, err_ptr, tl.num_programs(0), max_spins)
            s += 1
    else:
        _fwd_step(step, n0, row0, wt, xp_ptr, hs_ptr, ha_ptr, hT_ptr, T, B, H, stride_xt, stride_xb,
                  stride_ht, stride_hb, stride_at, stride_ab, stride_hTb, REVERSE,
                  NONLINEARITY, PRECISION, EMULATE, BLOCK_B, BLOCK_N, BLOCK_K)


@triton.jit(do_not_specialize=_NO_SPEC)
def _rnn_persistent_bwd_kernel(
    dy_ptr,  # (T, B, H) dL/dy (unit stride on H); unused unless HAS_DY
    dhT_ptr,  # (B, H) dL/dh_T; unused unless HAS_DHT
    hs_ptr,  # (T+1, B, H) the forward's state slots
    w_ptr,  # (H, H) W_hh
    da_ptr,  # (T, B, H) out: dA_t
    ga_ptr,  # the dot operand's source: da itself, or for bf16/fp16 a (2, B, H) shadow ring
    dh0_ptr,  # (B, H) out: dL/dh_0
    sync_ptr,  # (batch tiles, T) int32 barrier counters, zeroed (persistent form only)
    err_ptr,  # int32 error flag, zeroed
    T, B, H, step,
    stride_dyt, stride_dyb, stride_dhTb, stride_ht, stride_hb, stride_wn, stride_dat, stride_dab,
    stride_gt, stride_gb, stride_dh0b, stride_sync,
    REVERSE, max_spins,
    NONLINEARITY: tl.constexpr, PRECISION: tl.constexpr, EMULATE: tl.constexpr, PERSISTENT: tl.constexpr,
    HAS_DY: tl.constexpr, HAS_DHT: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_b = tl.program_id(1)
    row0 = pid_b.to(tl.int64) * BLOCK_B
    n0 = tl.program_id(0) * BLOCK_N
    w = _load_slice(w_ptr, n0, H, stride_wn, 1, PRECISION, EMULATE, BLOCK_N, BLOCK_K)  # W_hh's n-slice
    if PERSISTENT:
        counters = sync_ptr + pid_b.to(tl.int64) * stride_sync
        ok = _read_flag(err_ptr) == 0
        s = 0
        while (s <= T) & ok:
            _bwd_step(s, n0, row0, w, dy_ptr, dhT_ptr, hs_ptr, da_ptr, ga_ptr, dh0_ptr, T, B, H,
                      stride_dyt, stride_dyb, stride_dhTb, stride_ht, stride_hb, stride_dat, stride_dab,
                      stride_gt, stride_gb, stride_dh0b, REVERSE,
                      NONLINEARITY, PRECISION, EMULATE, HAS_DY, HAS_DHT, BLOCK_B, BLOCK_N, BLOCK_K)
            if s < T:
                ok = _grid_barrier(counters + s, err_ptr, tl.num_programs(0), max_spins)
            s += 1
    else:
        _bwd_step(step, n0, row0, w, dy_ptr, dhT_ptr, hs_ptr, da_ptr, ga_ptr, dh0_ptr, T, B, H,
                  stride_dyt, stride_dyb, stride_dhTb, stride_ht, stride_hb, stride_dat, stride_dab,
                  stride_gt, stride_gb, stride_dh0b, REVERSE,
                  NONLINEARITY, PRECISION, EMULATE, HAS_DY, HAS_DHT, BLOCK_B, BLOCK_N, BLOCK_K)


# ----------------------------------------------------------------------------------------------------------
# Configurations, device limits, resources and the choice between persistent and tiled
# ----------------------------------------------------------------------------------------------------------
FORMS = ("persistent", "per_step")


@dataclass(frozen=True)
class PersistentConfig:
    """Tiles and form of the persistent kernels: grid (cdiv(H, block_n), cdiv(B, block_b)); block_k >= H is the
    whole reduction (one tl.dot per step against the resident slice). form: "persistent" (one launch, a barrier
    between steps: what a GPU runs) or "per_step" (one launch per step: the interpreter's multi-slice form).
    kernels.rnn.rnn(launch_config=PersistentConfig(...)) forces this path with these tiles."""

    block_b: int
    block_n: int
    block_k: int
    num_warps: int = 4
    form: str = "persistent"
    maxnreg: int = MAXNREG  # registers a thread may take (ptxas's cap; see _GPU_MAXNREG)

    def __post_init__(self):
        if any(not isinstance(v, int) or v < 1 or v & (v - 1) for v in (self.block_b, self.block_n, self.block_k)):
            raise ValueError(f"launch_config: tile sizes must be powers of two, got {self}")
        if self.form not in FORMS:
            raise ValueError(f"form: expected one of {FORMS}, got {self.form!r}")


@dataclass(frozen=True)
class KernelResources:
    """What one program of a compiled kernel takes from an SM."""

    registers: int  # per thread
    shared_bytes: int
    num_warps: int

    @classmethod
    def from_compiled(cls, kernel) -> "KernelResources":
        """From a triton CompiledKernel (what `fn[grid](...)` or `fn.warmup(...)` returns)."""
        if getattr(kernel, "n_regs", None) is None:
            kernel._init_handles()  # loads the binary: registers are known from then on (triton 3.5-3.9)
        return cls(registers=int(kernel.n_regs), shared_bytes=int(kernel.metadata.shared),
                   num_warps=int(kernel.metadata.num_warps))


@dataclass(frozen=True)
class SMLimits:
    """What one SM holds at once (CUDA's occupancy limits): shared memory per SM and per block (opt-in), 32-bit
    registers (allocated per warp in units of 256), threads and resident blocks. The driver reserves 1 KB of
    shared memory per block."""

    shared_per_sm: int
    shared_per_block: int
    registers: int = 65536
    threads: int = 2048
    blocks: int = 32

    @classmethod
    def for_cc(cls, cc: int) -> "SMLimits":
        """The limits of compute capability cc (80, 86, 89, 90, ...); unknown ones get sm_86's, the smallest."""
        return _SM_LIMITS.get(cc, _SM_LIMITS[86])

    @classmethod
    def of_device(cls, device: torch.device) -> "SMLimits":
        """A CUDA device's own figures (torch's device properties), the table's where torch lacks one."""
        props = torch.cuda.get_device_properties(device)
        table = cls.for_cc(props.major * 10 + props.minor)
        return cls(shared_per_sm=int(getattr(props, "shared_memory_per_multiprocessor", 0) or table.shared_per_sm),
                   shared_per_block=int(getattr(props, "shared_memory_per_block_optin", 0)
                                        or table.shared_per_block),
                   registers=int(getattr(props, "regs_per_multiprocessor", 0) or table.registers),
                   threads=int(getattr(props, "max_threads_per_multi_processor", 0) or table.threads),
                   blocks=table.blocks)


_SM_LIMITS = {80: SMLimits(164 * 1024, 163 * 1024), 90: SMLimits(228 * 1024, 227 * 1024),
              86: SMLimits(100 * 1024, 99 * 1024, threads=1536, blocks=16),
              89: SMLimits(100 * 1024, 99 * 1024, threads=1536, blocks=24)}


@dataclass(frozen=True)
class PathChoice:
    """The launcher's choice for one recurrence, and why (one line in the log, a benchmark field)."""

    path: str  # "persistent" | "tiled" (kernels/rnn.py's batch-tiled kernels)
    reason: str
    config: PersistentConfig | None = None
    programs: int = 0  # persistent grid size
    capacity: int = 0  # programs the device holds at once (SMs x programs per SM)

    def __str__(self) -> str:
        return f"recurrence: {self.path} ({self.reason})"


# GPU tiles: BLOCK_B = 16 (the smallest mma M) and BLOCK_N = 16 give the most programs, so the most SMs share
# the step; 8 warps (with 4, the prototype spilled for exact fp32 on sm_80 and for bf16 at 1024). Persistent
# above H = 128 (below, kernels/rnn.py's kernels stream at most 64 KB of W_hh a step and need no barrier), up to
# padded H 1024 (fp32 operands: slice and h tile 64 KB each in shared memory; bf16/fp16: triton 3.6 / 3.9 keep
# the slice in registers, 3.5 in shared memory).
_GPU_BLOCK_B = 16
_GPU_BLOCK_N = 16
_GPU_NUM_WARPS = 8
_GPU_MIN_HIDDEN = 129
_GPU_MAX_BLOCK_K = 1024
_GPU_BLOCK_KS = (256, 512, 1024)  # every padded H a GPU launch can have (next_pow2 of 129..1024)
# ptxas's register cap by padded H: 128 up to 512 (two 8-warp programs an SM: 128 x 256 threads x 2 = 64K
# registers; an A100 holds the default model's 128 programs only that way, on 108 SMs), 255 at 1024 (one an SM:
# the fp32 slice and h tile take 130 KB of shared memory; triton 3.6 / 3.9 keep a bf16/fp16 slice in ~220
# registers). The compile report checks that none of them spills (triton 3.5, 3.6 and 3.9).
_GPU_MAXNREG = {256: 128, 512: 128, 1024: MAXNREG}


def gpu_config(hidden: int, precision: str) -> PersistentConfig | None:
    """The GPU tiles for this H, or None when a slice cannot hold it."""
    block_k = max(_GPU_BLOCK_KS[0], next_pow2(hidden))
    if block_k > _GPU_MAX_BLOCK_K:
        return None
    return PersistentConfig(block_b=_GPU_BLOCK_B, block_n=_GPU_BLOCK_N, block_k=block_k, num_warps=_GPU_NUM_WARPS,
                            maxnreg=_GPU_MAXNREG[block_k])


def estimate_resources(config: PersistentConfig, precision: str) -> KernelResources:
    """A conservative stand-in for the compiled kernel's figures: every register ptxas may give a thread (the
    config's cap), and the shared memory of the slice (fp32 operands) and of the h tile, plus 1 KB of scratch."""
    operand_bytes = 2 if precision in LOW_PRECISION_DTYPE else 4
    shared = config.block_b * config.block_k * operand_bytes + 1024
    if precision not in LOW_PRECISION_DTYPE:
        shared += config.block_k * config.block_n * 4
    return KernelResources(registers=config.maxnreg, shared_bytes=shared, num_warps=config.num_warps)


def programs_per_sm(res: KernelResources, cc: int = 90, limits: SMLimits | None = None) -> int:
    """How many programs of a kernel with these resources one SM holds at once (0: not even one)."""
    limits = limits or SMLimits.for_cc(cc)
    if res.shared_bytes > limits.shared_per_block:
        return 0
    regs_per_warp = math.ceil(res.registers * 32 / 256) * 256
    return min(limits.threads // (32 * res.num_warps),
               limits.registers // (regs_per_warp * res.num_warps),
               limits.shared_per_sm // (res.shared_bytes + 1024),
               limits.blocks)


def choose_path(*, sm_count: int, batch: int, hidden: int, precision: str, dtype: torch.dtype = torch.float32,
                resources=None, cc: int = 90, limits: SMLimits | None = None,
                timed_out: bool = False) -> PathChoice:
    """Persistent or tiled for one recurrence of (batch, hidden) on a GPU with sm_count SMs of compute
    capability cc (80, 90, ...; limits: the SM's own figures, else the table's for cc). resources: the compiled
    kernel's (KernelResources), a function config -> KernelResources called only when the rules get that far
    (the launcher compiles the kernel there), or None (estimate_resources()). The rules, in order, are the
    module docstring's ("Selection")."""
    if timed_out:
        return PathChoice("tiled", "a persistent launch timed out earlier in this process")
    if dtype == torch.float64:
        return PathChoice("tiled", "float64 state: the persistent kernels are built for float32 state")
    if hidden < _GPU_MIN_HIDDEN:
        return PathChoice("tiled", f"H = {hidden} <= {_GPU_MIN_HIDDEN - 1}: W_hh is small enough to stream "
                                   "every step, and the tiled kernels need no barrier")
    cfg = gpu_config(hidden, precision)
    if cfg is None:
        return PathChoice("tiled", f"H = {hidden} pads to {next_pow2(hidden)} > {_GPU_MAX_BLOCK_K}, the most a "
                                   f"slice holds")
    estimated = resources is None
    res = estimate_resources(cfg, precision) if estimated else (
        resources(cfg) if callable(resources) else resources)
    n_slices, n_tiles = triton.cdiv(hidden, cfg.block_n), triton.cdiv(batch, cfg.block_b)
    programs = n_slices * n_tiles
    per_sm = programs_per_sm(res, cc, limits)
    capacity = sm_count * per_sm
    grid = (f"{programs} programs ({n_slices} N-slices x {n_tiles} batch tiles) on {sm_count} SMs x {per_sm} "
            f"per SM ({res.registers} registers x {32 * res.num_warps} threads, {res.shared_bytes / 1024:.1f} KB "
            f"shared{', estimated' if estimated else ''})")
    if programs > capacity:
        return PathChoice("tiled", f"{grid}: the grid cannot be resident at once", cfg, programs, capacity)
    return PathChoice("persistent", grid, cfg, programs, capacity)


# ----------------------------------------------------------------------------------------------------------
# Launches (one description for the launchers, the selection's probe and the compile report)
# ----------------------------------------------------------------------------------------------------------
def _grid(batch: int, hidden: int, cfg: PersistentConfig) -> tuple[int, int]:
    return triton.cdiv(hidden, cfg.block_n), triton.cdiv(batch, cfg.block_b)


def _tiles(cfg: PersistentConfig) -> dict:
    return dict(BLOCK_B=cfg.block_b, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k)


def forward_launch(xp, w_hh, hs, ha, hT, sync, err, reverse: bool, nonlinearity: str, precision: str,
                   cfg: PersistentConfig, *, persistent: bool = True, max_spins: int = DEFAULT_MAX_SPINS) -> Launch:
    """The forward kernel's launch: persistent (cooperative, sync = the (batch tiles, T) counters, err the flag)
    or one step of the per-step form (args["step"] = 0; the launcher sets each step)."""
    T, B, H = xp.shape
    args = dict(xp_ptr=xp, w_ptr=w_hh, hs_ptr=hs, ha_ptr=ha, hT_ptr=hT, sync_ptr=sync, err_ptr=err, T=T, B=B, H=H,
                step=0, stride_xt=xp.stride(0), stride_xb=xp.stride(1), stride_wn=w_hh.stride(0),
                stride_ht=hs.stride(0), stride_hb=hs.stride(1), stride_at=ha.stride(0), stride_ab=ha.stride(1),
                stride_hTb=hT.stride(0), stride_sync=T, REVERSE=int(reverse), max_spins=max_spins)
    constexprs = dict(NONLINEARITY=nonlinearity_code(nonlinearity), PRECISION=precision,
                      EMULATE=emulated(precision, xp), PERSISTENT=persistent, **_tiles(cfg))
    return Launch(_rnn_persistent_fwd_kernel, _grid(B, H, cfg), args, constexprs, cfg.num_warps, 1, cfg.maxnreg,
                  options=dict(LAUNCH_OPTIONS) if persistent else {})


def backward_launch(dy, dhT, hs, w_hh, da, ga, dh0, sync, err, reverse: bool, nonlinearity: str, precision: str,
                    cfg: PersistentConfig, *, persistent: bool = True, max_spins: int = DEFAULT_MAX_SPINS) -> Launch:
    """The backward kernel's launch (T + 1 steps: the last one is dh_0); dy / dhT may be None."""
    T, B, H = da.shape
    dy_arg = dy if dy is not None else da  # never read when HAS_DY is False
    dhT_arg = dhT if dhT is not None else dh0
    args = dict(dy_ptr=dy_arg, dhT_ptr=dhT_arg, hs_ptr=hs, w_ptr=w_hh, da_ptr=da, ga_ptr=ga, dh0_ptr=dh0,
                sync_ptr=sync, err_ptr=err, T=T, B=B, H=H, step=0, stride_dyt=dy_arg.stride(0),
                stride_dyb=dy_arg.stride(1), stride_dhTb=dhT_arg.stride(0), stride_ht=hs.stride(0),
                stride_hb=hs.stride(1), stride_wn=w_hh.stride(0), stride_dat=da.stride(0), stride_dab=da.stride(1),
                stride_gt=ga.stride(0), stride_gb=ga.stride(1), stride_dh0b=dh0.stride(0), stride_sync=T + 1,
                REVERSE=int(reverse), max_spins=max_spins)
    constexprs = dict(NONLINEARITY=nonlinearity_code(nonlinearity), PRECISION=precision,
                      EMULATE=emulated(precision, da), PERSISTENT=persistent, HAS_DY=dy is not None,
                      HAS_DHT=dhT is not None, **_tiles(cfg))
    return Launch(_rnn_persistent_bwd_kernel, _grid(B, H, cfg), args, constexprs, cfg.num_warps, 1, cfg.maxnreg,
                  options=dict(LAUNCH_OPTIONS) if persistent else {})


def _ring(like: torch.Tensor, precision: str) -> torch.Tensor | None:
    """The bf16/fp16 shadow ring (2, B, H) of a (.., B, H) state, or None for fp32 operands: 16-bit on a GPU; in
    the interpreter (no bf16 arithmetic) the rounded values kept in like's dtype, as dot_operand() makes them."""
    if precision not in LOW_PRECISION_DTYPE:
        return None
    dtype = like.dtype if emulated(precision, like) else LOW_PRECISION_DTYPE[precision]
    return empty((2,) + tuple(like.shape[-2:]), dtype, like.device)


def _fill_ring_slot(ring: torch.Tensor, state: torch.Tensor, precision: str) -> None:
    ring[0].copy_(state.to(LOW_PRECISION_DTYPE[precision]))  # torch's cast rounds to nearest even, as the kernels


# ----------------------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------------------
_INTERPRETER_MAX_SPINS = 16

_timed_out = False  # a persistent launch of this process timed out or was refused: choose tiled from now on
_warned = False
_pending_flags: list = []  # (pinned host slot, its numpy view, CUDA event) of launches whose flag is not read yet
_free_slots: list = []  # (pinned host slot, numpy view) ready for reuse
_choices: dict = {}  # (device, B, H, precision, nonlinearity, direction) -> PathChoice


def _reset() -> None:
    """Forgets timeouts, warnings, pending flags and cached choices (tests)."""
    global _timed_out, _warned
    _timed_out = _warned = False
    _pending_flags.clear()
    _choices.clear()


def persistent_timed_out() -> bool:
    """True once a persistent launch of this process has timed out or been refused. Never waits for the GPU:
    the flag of a launch that has not finished yet is read by a later call (from pinned host memory, once the
    copy's event has completed)."""
    global _timed_out
    still = []
    for slot, view, event in _pending_flags:
        if not event.query():
            still.append((slot, view, event))
            continue
        _timed_out |= bool(view[0] != 0)
        _free_slots.append((slot, view))
    _pending_flags[:] = still
    if _timed_out:
        _warn_once()
    return _timed_out


def _warn_once() -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn("rnnlm: a persistent recurrence launch timed out or was refused (its programs could not "
                      "all be resident at once); the layer was recomputed without it, and the batch-tiled "
                      "kernels are chosen from now on", RuntimeWarning, stacklevel=4)


def _flag_set_now(err: torch.Tensor) -> bool:
    """Reads the flag at once (on a GPU: one host synchronisation); records and warns when it is set."""
    global _timed_out
    if int(err[0]) != 0:
        _timed_out = True
        _warn_once()
        return True
    return False


def _host_slot():
    """A pinned int32 host slot and its numpy view (views are made once per chunk of 64 and reused, so reading a
    completed flag is a read of host memory, not a tensor op)."""
    if not _free_slots:
        chunk = torch.zeros(64, dtype=torch.int32, pin_memory=True)
        view = chunk.numpy()
        _free_slots.extend((chunk[i:i + 1], view[i:i + 1]) for i in range(64))
    return _free_slots.pop()


_flag_streams: dict = {}  # device -> the side stream that copies flags to the host


def _watch(err: torch.Tensor) -> None:
    """Queues the flag for persistent_timed_out(), without a host synchronisation: a copy to pinned host memory on
    a side stream that waits for the launches enqueued so far (so the main stream never waits for the copy)."""
    if err.device.type != "cuda":
        _flag_set_now(err)  # a CPU tensor is current already
        return
    slot, view = _host_slot()
    with on_device_of(err):
        side = _flag_streams.get(err.device)
        if side is None:
            side = _flag_streams[err.device] = torch.cuda.Stream(err.device)
        side.wait_stream(torch.cuda.current_stream(err.device))
        with torch.cuda.stream(side):
            slot.copy_(err, non_blocking=True)
            event = torch.cuda.Event()
            event.record(side)
        err.record_stream(side)  # the allocator keeps err's memory until the copy is done
    _pending_flags.append((slot, view, event))
    persistent_timed_out()


def _execute(make, grid, steps: int, form: str, max_spins: int, error_flag, fallback, device) -> bool:
    """Runs `steps` steps of make(sync, err, persistent, max_spins) -> Launch: one persistent launch, or one
    launch per step (the kernel boundary is the barrier). With a fallback hook, fallback(flag) is called right
    after the persistent launch and must enqueue a rerun that does nothing unless the flag is set; the flag is
    then read asynchronously. Without one, returns True when the persistent launch gave up (the flag is read
    at once): the caller reruns the per-step form."""
    if form == "per_step":
        unused = torch.zeros(1, dtype=torch.int32, device=device)
        launch = make(unused, unused, False, 0)
        for s in range(steps):
            replace(launch, args={**launch.args, "step": s})()
        return False
    if _runtime.INTERPRETED and grid[0] > 1:
        # programs run one after another there: the first barrier of a multi-slice grid can never complete,
        # so give up after a few polls (each costs ~0.1 ms there) rather than after ~minutes
        max_spins = min(max_spins, _INTERPRETER_MAX_SPINS)
    # the flag and every (batch tile, step) counter zeroed by one allocation
    sync = torch.zeros(1 + grid[1] * steps, dtype=torch.int32, device=device)
    err = sync[:1] if error_flag is None else error_flag
    try:
        make(sync[1:], err, True, max_spins)()
    except RuntimeError as refused:  # the driver's check: the grid cannot be resident at once
        if "cooperative" not in str(refused).lower():
            raise
        err.fill_(1)
    if fallback is not None:
        fallback(err)
        _watch(err)
        return False
    return _flag_set_now(err)


def default_config(batch: int, hidden: int, precision: str, device: torch.device) -> PersistentConfig:
    """The tiles a launch gets when none is given: the GPU's, or in the interpreter one N-slice and one batch
    tile of up to 128 rows (the interpreter pays per Triton op, and the persistent form then never waits)."""
    if device.type == "cpu":
        return PersistentConfig(block_b=min(128, max(16, next_pow2(batch))), block_n=max(16, next_pow2(hidden)),
                                block_k=max(16, next_pow2(hidden)))
    cfg = gpu_config(hidden, precision)
    if cfg is None:
        raise ValueError(f"H = {hidden} is too large for a persistent slice (padded H <= {_GPU_MAX_BLOCK_K}); "
                         "use kernels.rnn's tiled kernel")
    return cfg


def _config(config: PersistentConfig | None, batch: int, hidden: int, precision: str, device) -> PersistentConfig:
    cfg = config or default_config(batch, hidden, precision, device)
    if not isinstance(cfg, PersistentConfig):
        raise ValueError(f"config must be a PersistentConfig, got {type(cfg).__name__}")
    if cfg.block_k < hidden:
        raise ValueError(f"config: block_k = {cfg.block_k} must cover H = {hidden}")
    return cfg


def run_forward(xp, w_hh, hs, hT, reverse: bool, nonlinearity: str, precision: str, *,
                config: PersistentConfig | None = None, max_spins: int = DEFAULT_MAX_SPINS,
                error_flag: torch.Tensor | None = None, fallback=None) -> None:
    """The forward recurrence into hs and hT (kernels._utils.forward_buffers' outputs: xp and w_hh with a unit
    inner stride, h_0 in its slot). config: the tiles and form (default: default_config()); max_spins: polls
    before a barrier gives up; error_flag: an int32 (1,) tensor to use as the flag (tests preset it to 1 to
    simulate a timeout); fallback: None (read the flag after the launch -- a host synchronisation on a GPU --
    and, if set, warn once and rerun the per-step form) or a hook fallback(flag) that enqueues a rerun into hs
    and hT doing nothing unless the flag is set (no synchronisation; the flag is read later)."""
    T, B, H = xp.shape
    cfg = _config(config, B, H, precision, xp.device)
    ha = _ring(hs, precision)
    h0_slot = hs[T] if reverse else hs[0]
    if ha is not None:
        _fill_ring_slot(ha, h0_slot, precision)

    def make(sync, err, persistent, spins):
        return forward_launch(xp, w_hh, hs, hs if ha is None else ha, hT, sync, err, reverse, nonlinearity,
                              precision, cfg, persistent=persistent, max_spins=spins)

    run = dict(grid=_grid(B, H, cfg), steps=T, max_spins=max_spins, error_flag=error_flag, fallback=fallback,
               device=xp.device)
    if _execute(make, form=cfg.form, **run):
        if ha is not None:
            _fill_ring_slot(ha, h0_slot, precision)  # the ring's slot 0 held h_1, h_3, ... by then
        _execute(make, form="per_step", **run)


def run_backward(dy, dhT, hs, w_hh, da, dh0, reverse: bool, nonlinearity: str, precision: str, *,
                 config: PersistentConfig | None = None, max_spins: int = DEFAULT_MAX_SPINS,
                 error_flag: torch.Tensor | None = None, fallback=None) -> None:
    """The backward recurrence into da and dh0 (kernels._utils.backward_buffers' outputs); keywords as
    run_forward's."""
    T, B, H = da.shape
    cfg = _config(config, B, H, precision, da.device)
    ga = _ring(da, precision)

    def make(sync, err, persistent, spins):
        return backward_launch(dy, dhT, hs, w_hh, da, da if ga is None else ga, dh0, sync, err, reverse,
                               nonlinearity, precision, cfg, persistent=persistent, max_spins=spins)

    run = dict(grid=_grid(B, H, cfg), steps=T + 1, max_spins=max_spins, error_flag=error_flag, fallback=fallback,
               device=da.device)
    if _execute(make, form=cfg.form, **run):
        _execute(make, form="per_step", **run)


def persistent_forward(xp: torch.Tensor, h0: torch.Tensor | None, w_hh: torch.Tensor, reverse: bool,
                       nonlinearity: str, precision: str, **kwargs):
    """h_t = phi(xp_t + h_{t-1} W_hh^T) for all t, W_hh split over N-slices, as a standalone call
    (kernels.rnn._recurrence_forward's contract; keywords as run_forward's, without fallback).
    xp: (T, B, H) fp32|fp64; h0: (B, H) or None (zeros); w_hh: (H, H).
    Returns (y (T, B, H) a view of hs, h_T (B, H), hs (T+1, B, H))."""
    xp, w_hh, hs, hT = forward_buffers(xp, h0, w_hh, reverse, precision)
    run_forward(xp, w_hh, hs, hT, reverse, nonlinearity, precision, **kwargs)
    T = xp.shape[0]
    return (hs[:T] if reverse else hs[1:]), hT, hs


def persistent_backward(dy: torch.Tensor | None, dhT: torch.Tensor | None, hs: torch.Tensor, w_hh: torch.Tensor,
                        reverse: bool, nonlinearity: str, precision: str, **kwargs):
    """dA_t = (dy_t + dA_{t+1} W_hh) * phi'(h_t) walking t in reverse, and dh_0 = dA_first W_hh, W_hh split
    over N-slices (kernels.rnn._recurrence_backward's contract; keywords as run_forward's, without fallback).
    Returns (dA (T, B, H), dh_0 (B, H))."""
    dy, dhT, w_hh, da, dh0 = backward_buffers(dy, dhT, hs, w_hh, precision)
    run_backward(dy, dhT, hs, w_hh, da, dh0, reverse, nonlinearity, precision, **kwargs)
    return da, dh0


# ----------------------------------------------------------------------------------------------------------
# The launcher's choice on a GPU (kernels/rnn.py), cached per device and shape
# ----------------------------------------------------------------------------------------------------------
def _probe(launch: Launch) -> KernelResources:
    """Compiles a launch without running it (Triton's warmup) and reads what one program takes from an SM."""
    return KernelResources.from_compiled(launch.compile())


def choose_forward(xp, w_hh, hs, hT, reverse: bool, nonlinearity: str, precision: str) -> PathChoice:
    """kernels.rnn's choice for this forward launch on its GPU (forward_buffers' tensors): choose_path with the
    device's SM count and limits and the compiled persistent kernel's resources, cached per (device, B, H,
    precision, nonlinearity); logged once per key."""
    T, B, H = xp.shape

    def resources(cfg):
        sync = torch.zeros(2, dtype=torch.int32, device=xp.device)
        ha = _ring(hs, precision)
        return _probe(forward_launch(xp, w_hh, hs, hs if ha is None else ha, hT, sync[1:], sync[:1], reverse,
                                     nonlinearity, precision, cfg))

    return _cached_choice("forward", xp, B, H, nonlinearity, precision, resources)


def choose_backward(dy, dhT, hs, w_hh, da, dh0, reverse: bool, nonlinearity: str, precision: str) -> PathChoice:
    """As choose_forward, for a backward launch (backward_buffers' tensors)."""
    T, B, H = da.shape

    def resources(cfg):
        sync = torch.zeros(2, dtype=torch.int32, device=da.device)
        ga = _ring(da, precision)
        return _probe(backward_launch(dy, dhT, hs, w_hh, da, da if ga is None else ga, dh0, sync[1:], sync[:1],
                                      reverse, nonlinearity, precision, cfg))

    return _cached_choice("backward", da, B, H, nonlinearity, precision, resources)


def _device_key(device) -> torch.device:
    """cuda means the current CUDA device (cuda:0 and cuda are one key)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _cached_choice(direction: str, t: torch.Tensor, batch: int, hidden: int, nonlinearity: str, precision: str,
                   resources) -> PathChoice:
    key = (_device_key(t.device), batch, hidden, precision, nonlinearity, direction)
    choice = _choices.get(key)
    if choice is None or (choice.path == "persistent" and persistent_timed_out()):
        props = torch.cuda.get_device_properties(t.device)
        choice = choose_path(sm_count=props.multi_processor_count, batch=batch, hidden=hidden, precision=precision,
                             dtype=t.dtype, resources=resources, cc=props.major * 10 + props.minor,
                             limits=SMLimits.of_device(t.device), timed_out=persistent_timed_out())
        _choices[key] = choice
        log.info("%s [%s, B %d, H %d, %s, %s, %s]", choice, direction, batch, hidden, precision, nonlinearity,
                 key[0])
    return choice


def cached_choice(device, batch: int, hidden: int, precision: str, nonlinearity: str = "tanh",
                  backward: bool = False) -> PathChoice | None:
    """The choice made for such launches so far in this process (None before the first one)."""
    return _choices.get((_device_key(device), batch, hidden, precision, nonlinearity,
                         "backward" if backward else "forward"))


# ----------------------------------------------------------------------------------------------------------
# GPU compile configurations (kernels/compile_report.py)
# ----------------------------------------------------------------------------------------------------------
# Representative launches: T = 20, B = 64 (B, T and the direction are never specialised), H = each padded H a
# launch can have (256, 512, 1024: divisible by 16), and, for the fp32-operand precisions (what runs without
# autocast), H = 300: not divisible by 16, a separate compile with scalar loads.
_REPRESENTATIVE_T, _REPRESENTATIVE_B, _ODD_HIDDEN = 20, 64, 300


def gpu_compile_configs() -> list[CompileConfig]:
    """Every persistent configuration the launcher can choose on a GPU, for kernels/compile_report.py:
    forward/backward x tanh/relu x ieee/tf32/bf16/fp16 x each padded H of _GPU_BLOCK_KS, fp32 state, the
    persistent form, each compiled as its launch (forward_launch / backward_launch on meta tensors) with the
    cooperative-launch option; backward with dy and dh_T both present (the HAS_* flags only remove loads).
    Tensor cores are expected for tf32/bf16/fp16, the barrier's release/acquire atomics in every one."""
    meta, T, B = meta_tensor, _REPRESENTATIVE_T, _REPRESENTATIVE_B
    out = []
    for precision in PRECISIONS:
        shapes = [(nonlin, block_k) for block_k in _GPU_BLOCK_KS for nonlin in NONLINEARITIES]
        if precision in ("ieee", "tf32"):
            shapes.append(("tanh", _ODD_HIDDEN))
        for nonlin, H in shapes:
            cfg = gpu_config(H, precision)
            f32 = lambda *shape: meta(shape, torch.float32)  # noqa: E731
            ring = meta((2, B, H), LOW_PRECISION_DTYPE.get(precision, torch.float32))
            sync, err = meta((4 * T,), torch.int32), meta((1,), torch.int32)
            hs, da, w, hb = f32(T + 1, B, H), f32(T, B, H), f32(H, H), f32(B, H)
            tag = f"fp32_{nonlin}_{precision}_{cfg.block_b}x{cfg.block_n}x{cfg.block_k}_H{H}"
            launches = (("fwd", forward_launch(da, w, hs, ring if precision in LOW_PRECISION_DTYPE else hs, hb,
                                               sync, err, False, nonlin, precision, cfg)),
                        ("bwd", backward_launch(da, hb, hs, w, da, ring if precision in LOW_PRECISION_DTYPE else da,
                                                hb, sync, err, False, nonlin, precision, cfg)))
            for direction, launch in launches:
                out.append(launch.compile_config(f"rnn_persistent_{direction}_{tag}",
                                                 expect_tensor_cores=precision != "ieee", expect_barrier=True))
    return out
