r"""The persistent Elman recurrence: W_hh split over the hidden dimension, held on chip for all T steps.

One layer, one direction, forward and backward, with the same arithmetic as kernels/rnn.py (whose module
docstring has the math, the state-slot layout and the precisions); this module only changes how the
sequential product h_{t-1} W_hh^T (backward: dA_{t+1} W_hh) is spread over the GPU.

Grid and step
-------------
Grid (cdiv(H, BLOCK_N), cdiv(B, BLOCK_B)): program (n, b) owns hidden units n*BLOCK_N.. of batch rows
b*BLOCK_B... It loads its slice W_hh^T[:, n-slice] (BLOCK_K x BLOCK_N, BLOCK_K = H padded to a power of two)
once -- triton keeps it in shared memory for fp32 operands and in registers for bf16, see the compile
report -- and then, for every step, reads its batch tile's whole h_{t-1} (BLOCK_B x H, written one step
earlier by all the N-slices of that tile), does ONE tl.dot against the resident slice, adds xp_t, applies
phi and stores its BLOCK_B x BLOCK_N piece of h_t. Batch tiles are independent; the programs of one tile
then meet at a barrier before the next step. Backward is the mirror image: program (n, b) holds
W_hh[:, n-slice] and reads dA of the step before (all of H) to write its slice of dA_t; dh_0 is one more
step (s = T) of the same body. dW_hh, dW_ih, db and dX stay GEMMs, as in kernels/rnn.py.

bf16 keeps a bf16 shadow copy of the state next to the fp32 state, in a two-slot ring (2, B, H): every
program reads its dot operand h_{t-1} (dA_{t+1}) from slot s % 2 and writes its slice of the next one to
slot (s + 1) % 2. Two slots suffice because a program only writes slot s % 2 again at step s + 1, after
the barrier of step s, i.e. after every program of its tile has finished reading it. (Reading the fp32
state and rounding it inside the kernel instead takes 255 registers and spills 168-224 bytes at H = 512;
with the shadow, 128-170 registers and no spill: compiled for sm_80 and sm_90, triton 3.9.)

Barrier (the programs of one batch tile, after each step)
---------------------------------------------------------
One int32 counter per (batch tile, step), zeroed by the launcher, so a counter only ever counts up to the
number of N-slices and no value is reused (no ABA problem, nothing polled for equality):
    tl.debug_barrier()                       # every thread's stores of this step are issued (bar.sync)
    n = atomic_add(counter, 1, acq_rel, gpu) # arrive: release (our stores) + acquire; one thread
    while n < n_slices and no error and spins < max_spins:
        n = atomic_add(counter, 0, acquire, gpu)   # compiled to ld.global.gpu.acquire
    tl.debug_barrier()                       # no thread reads h_t before the acquire
This is PyTorch Inductor's x_grid_barrier pattern (release arrive, acquire poll, a CTA barrier on both
sides). tl.atomic_poll would express the wait directly, but it exists only from Triton 3.9 and pyproject
allows 3.5; atomic_add / atomic_xchg with sem and scope, tl.debug_barrier, tl.num_programs, tl.cast and
launch_cooperative_grid exist in 3.5, 3.6 and 3.9 alike (checked against each one's sources, and compiled
with each: all three emit atom.global.gpu.acq_rel.add for the arrive, ld.global.gpu.acquire for the poll,
bar.sync around them, and the same code with and without the cooperative flag). Scalar atomics are
executed by one thread and broadcast through shared memory, so every loop condition is uniform across the
program (the error flag is read with an atomic too: a plain load per thread could diverge and deadlock
the bar.sync inside the loop).
The wait is bounded: after max_spins polls (~0.5-1 us each; the default 2^20 is ~1 s) the program sets the
error flag and stops, and every other program stops at its next poll or step. Then the layer is rerun
without the barrier, in one of two ways:
  * fallback=None (standalone use, tests): the launcher reads the flag after the launch (on a GPU one host
    synchronisation), and if it is set warns once and reruns the per-step form, whose results are the
    persistent form's bits;
  * fallback=hook: the launcher calls hook(flag, *outputs) right after the launch, and the hook enqueues a
    rerun into the outputs that does nothing unless the flag is set (phase 2: kernels/rnn.py's tiled kernel
    with the flag as a guard argument: one launch, no synchronisation, no new compiled kernel). The host
    then learns of the timeout from an asynchronous copy of the flag, at a later launch.
(A rerun path compiled into the persistent kernel itself was tried and dropped: its W_hh loop made ptxas take
255 registers and spill where the persistent path alone takes 48-170 up to padded H 512.) Either way a timeout
is never a hang and never a wrong result, and from then on choose_path() returns "tiled". The launch itself
uses launch_cooperative_grid=True: the driver then refuses a grid that cannot be resident all at once (an
error at launch, handled as a timeout).

Two forms of the same step body (the constexpr PERSISTENT):
  * persistent: ONE launch loops over t with the barrier between steps (what a GPU runs);
  * per-step: the host launches the kernel once per step (T launches forward, T + 1 backward), and the
    kernel boundary is the barrier. Triton's interpreter runs programs one after another, so the
    persistent form would deadlock there with more than one N-slice (the first program would wait for
    one that has not started); the per-step form runs there with any number of N-slices and batch tiles,
    and the persistent form runs there with one N-slice per batch tile, going through the barrier code
    without ever waiting. With the same tiles both forms give the same bits.

Selection
---------
choose_path() (pure Python, unit-tested) picks "persistent" or "tiled" (kernels/rnn.py's batch-tiled
kernels, resident or tiled by that module's own rule) and says why:
  tiled when a persistent launch timed out earlier in this process, for fp64 (the parity dtype; not built
  persistent), for H <= 128 (rnn.py's kernels stream at most 64 KB of W_hh a step and need no barrier),
  when padded H exceeds what a slice can hold (1024: for fp32 operands 2 x 64 KB of shared memory for the
  slice and the h tile, for bf16, whose slice triton keeps in registers, 237-255 registers), or
  when the grid cannot be resident at once (SM count x programs per SM, from the compiled kernel's
  registers and shared memory, or a conservative estimate); persistent otherwise.

Cost model (H100 SXM, 132 SMs at ~1.75 GHz; the default model: B 64, H 512, T 20, 2 layers)
----------------------------------------------------------------------------------------
Expectations to be checked by `make gpu-check`, not measurements. Grid 32 N-slices x 4 batch tiles = 128
programs, one per SM. Per step and program:
  * read h_{t-1} of the tile, 16 x 512 x 4 B = 32 KB (bf16 shadow: 16 KB) from L2, at ~64 B/clk per SM:
    ~512 clk = 0.3 us plus ~0.5 us of latency                                      ~0.8 us (bf16 ~0.65)
  * the dot, 2 x 16 x 512 x 16 = 262 kFLOP with W from shared memory: mma.sync m16n8 gives N = 16 to two
    warps, ~512 tf32 FLOP/clk -> ~0.3 us (bf16 ~0.15 us; exact fp32 FMA ~0.6 us)
  * phi, store 16 x 16, then the barrier: the release waits for the stores (~0.5 us), the last arrival
    reaches L2 and the pollers' next acquire sees it (~0.5-1 us)                    ~1.2 us
  => persistent ~2.3 us/step tf32, ~2.0 bf16, ~2.6 ieee, for fwd and bwd alike, plus ~5 us per launch
     (slice load, zeroed counters, the guarded no-op rerun launch, the flag copy).
Tiled (kernels/rnn.py): 4 programs each stream all of W_hh (1 MiB fp32, 0.5 MiB bf16) from L2 every step:
  1 MiB / (64 B/clk x 1.75 GHz = 112 GB/s) ~ 9.4 us/step tf32, ~4.7 us bf16 (less once issue 10's cp.async
  pipelining overlaps it; exact fp32 FMA is compute-bound, ~40 us).
cuDNN (nn.RNN's standard algorithm for this model): per layer and step one (64 x 512) x (512 x 512) GEMM
  and one pointwise kernel, ~8 us/step forward and ~9 us backward (two dependent kernels, each a few us
  of GPU time at this size).
Forward+backward of the 2-layer recurrence, T = 20 (the input and weight GEMMs are common to all three):
  cuDNN 2 x 20 x (8 + 9) ~ 680 us; tiled 2 x 20 x 2 x 9.4 ~ 750 us; persistent 2 x (20 + 21) x 2.3 + 4 x 5
  ~ 210 us, i.e. ~3x faster than cuDNN (the goal is >= 2x). The barrier is ~half of a persistent step, so
  the figure depends most on the real barrier latency, which only a GPU run can tell.

Layers: @triton.jit kernels -> persistent_forward / persistent_backward (check, allocate, launch, error
flag, rerun or hook); choose_path / programs_per_sm / estimate_resources (selection);
persistent_timed_out() (the flag, read without waiting); gpu_compile_configs() for the compile report. The
launchers take and return what kernels/rnn.py's _recurrence_forward / _recurrence_backward do, so that
module's autograd Function can call either.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from kernels import _runtime

import triton
import triton.language as tl

from kernels._common import NONLINEARITIES, activation, activation_grad_from_output, device_function, \
    nonlinearity_code
from kernels.rnn import PRECISIONS, _alloc, _check_launch, _emulate_bf16, _inner_contiguous, _mm, _next_pow2, \
    _operand

__all__ = ["persistent_forward", "persistent_backward", "choose_path", "estimate_resources", "programs_per_sm",
           "PathChoice", "PersistentConfig", "KernelResources", "gpu_config", "gpu_compile_configs",
           "persistent_timed_out", "DEFAULT_MAX_SPINS", "LAUNCH_OPTIONS"]

DEFAULT_MAX_SPINS = 1 << 20  # polls before a barrier gives up (~0.5-1 us each)
# triton options of every persistent launch on a GPU (and of the compile report's builds of these kernels)
LAUNCH_OPTIONS = {"launch_cooperative_grid": True}


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
def _load_slice(w_ptr, n0, H, stride_w_row, stride_w_col, PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """(BLOCK_K, BLOCK_N) tile s[k, n] = w[k * stride_w_row + (n0 + n) * stride_w_col] as a dot operand:
    W_hh^T's n-slice (forward: strides (1, stride_wn)) or W_hh's (backward: (stride_wn, 1))."""
    rn = tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    w = tl.load(w_ptr + rk[:, None] * stride_w_row + (n0 + rn[None, :]) * stride_w_col,
                mask=(rk < H)[:, None] & (rn < H - n0)[None, :], other=0.0)
    return _operand(w, PRECISION, EMULATE_BF16)


@device_function
def _fwd_step(s, n0, row0, wt, xp_ptr, hs_ptr, ha_ptr, hT_ptr, T, B, H,
              stride_xt, stride_xb, stride_ht, stride_hb, stride_at, stride_ab, stride_hTb, REVERSE,
              NONLINEARITY: tl.constexpr, PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr,
              BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Step s of the forward for one (N-slice, batch tile): h_t[:, n-slice] = phi(xp_t + h_{t-1} @ wt)."""
    s = tl.cast(s, tl.int32)  # a Python int in the interpreter's loops
    t = s + REVERSE * (T - 1 - 2 * s)
    rb = tl.arange(0, BLOCK_B)
    rn = tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    row_ok = rb < B - row0
    mask = row_ok[:, None] & (rn < H - n0)[None, :]
    if PRECISION == "bf16":
        a_slot = s % 2  # the shadow ring
    else:
        a_slot = t + REVERSE  # h_{t-1}'s state slot
    a = tl.load(ha_ptr + a_slot.to(tl.int64) * stride_at + row0 * stride_ab + rb[:, None] * stride_ab + rk[None, :],
                mask=row_ok[:, None] & (rk < H)[None, :], other=0.0)
    xp = tl.load(xp_ptr + t.to(tl.int64) * stride_xt + row0 * stride_xb + rb[:, None] * stride_xb + n0 + rn[None, :],
                 mask=mask, other=0.0)
    h = activation(_mm(a, wt, xp, PRECISION, EMULATE_BF16), NONLINEARITY)
    tile = row0 * stride_hb + rb[:, None] * stride_hb + n0 + rn[None, :]
    tl.store(hs_ptr + (t + 1 - REVERSE).to(tl.int64) * stride_ht + tile, h, mask=mask)
    if PRECISION == "bf16":
        tl.store(ha_ptr + ((s + 1) % 2).to(tl.int64) * stride_at + row0 * stride_ab + rb[:, None] * stride_ab + n0
                 + rn[None, :], _operand(h, PRECISION, EMULATE_BF16), mask=mask)
    if s == T - 1:
        tl.store(hT_ptr + row0 * stride_hTb + rb[:, None] * stride_hTb + n0 + rn[None, :], h, mask=mask)


@device_function
def _bwd_step(s, n0, row0, w, dy_ptr, dhT_ptr, hs_ptr, da_ptr, ga_ptr, dh0_ptr, T, B, H,
              stride_dyt, stride_dyb, stride_dhTb, stride_ht, stride_hb, stride_dat, stride_dab,
              stride_gt, stride_gb, stride_dh0b, REVERSE,
              NONLINEARITY: tl.constexpr, PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr,
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
    if PRECISION == "bf16":
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
    acc = _mm(g, w, acc, PRECISION, EMULATE_BF16)
    h = tl.load(hs_ptr + (t + 1 - REVERSE).to(tl.int64) * stride_ht + row0 * stride_hb + rb[:, None] * stride_hb
                + n0 + rn[None, :], mask=step_mask, other=0.0)
    da = acc * activation_grad_from_output(h, NONLINEARITY)
    tl.store(da_ptr + t.to(tl.int64) * stride_dat + row0 * stride_dab + rb[:, None] * stride_dab + n0 + rn[None, :],
             da, mask=step_mask)
    if PRECISION == "bf16":
        tl.store(ga_ptr + ((s + 1) % 2).to(tl.int64) * stride_gt + row0 * stride_gb + rb[:, None] * stride_gb + n0
                 + rn[None, :], _operand(da, PRECISION, EMULATE_BF16), mask=step_mask)
    if s == T:
        tl.store(dh0_ptr + row0 * stride_dh0b + rb[:, None] * stride_dh0b + n0 + rn[None, :], acc,
                 mask=(rb < B - row0)[:, None] & col_ok)


@triton.jit(do_not_specialize=["T", "step"])
def _rnn_persistent_fwd_kernel(
    xp_ptr,  # (T, B, H) input projections with both biases, state dtype, unit stride on H
    w_ptr,  # (H, H) W_hh, unit stride on the last dim
    hs_ptr,  # (T+1, B, H) state slots (kernels/rnn.py's layout); the h_0 slot is filled by the launcher
    ha_ptr,  # the dot operand's source: hs itself, or for bf16 the (2, B, H) shadow ring (slot 0 = h_0)
    hT_ptr,  # (B, H) out: h_T
    sync_ptr,  # (batch tiles, T) int32 barrier counters, zeroed (persistent form only)
    err_ptr,  # int32 error flag, zeroed
    T, B, H,
    step,  # per-step form: the step to run
    stride_xt, stride_xb, stride_wn, stride_ht, stride_hb, stride_at, stride_ab, stride_hTb, stride_sync,
    REVERSE, max_spins,
    NONLINEARITY: tl.constexpr, PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr, PERSISTENT: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_b = tl.program_id(1)
    row0 = pid_b.to(tl.int64) * BLOCK_B
    n0 = tl.program_id(0) * BLOCK_N
    wt = _load_slice(w_ptr, n0, H, 1, stride_wn, PRECISION, EMULATE_BF16, BLOCK_N, BLOCK_K)  # W_hh^T's n-slice
    if PERSISTENT:
        counters = sync_ptr + pid_b.to(tl.int64) * stride_sync
        ok = _read_flag(err_ptr) == 0
        s = 0
        while (s < T) & ok:
            _fwd_step(s, n0, row0, wt, xp_ptr, hs_ptr, ha_ptr, hT_ptr, T, B, H, stride_xt, stride_xb,
                      stride_ht, stride_hb, stride_at, stride_ab, stride_hTb, REVERSE,
                      NONLINEARITY, PRECISION, EMULATE_BF16, BLOCK_B, BLOCK_N, BLOCK_K)
            if s < T - 1:
                ok = _grid_barrier(counters + s, err_ptr, tl.num_programs(0), max_spins)
            s += 1
    else:
        _fwd_step(step, n0, row0, wt, xp_ptr, hs_ptr, ha_ptr, hT_ptr, T, B, H, stride_xt, stride_xb,
                  stride_ht, stride_hb, stride_at, stride_ab, stride_hTb, REVERSE,
                  NONLINEARITY, PRECISION, EMULATE_BF16, BLOCK_B, BLOCK_N, BLOCK_K)


@triton.jit(do_not_specialize=["T", "step"])
def _rnn_persistent_bwd_kernel(
    dy_ptr,  # (T, B, H) dL/dy (unit stride on H); unused unless HAS_DY
    dhT_ptr,  # (B, H) dL/dh_T; unused unless HAS_DHT
    hs_ptr,  # (T+1, B, H) the forward's state slots
    w_ptr,  # (H, H) W_hh
    da_ptr,  # (T, B, H) out: dA_t
    ga_ptr,  # the dot operand's source: da itself, or for bf16 a (2, B, H) shadow ring
    dh0_ptr,  # (B, H) out: dL/dh_0
    sync_ptr,  # (batch tiles, T) int32 barrier counters, zeroed (persistent form only)
    err_ptr,  # int32 error flag, zeroed
    T, B, H, step,
    stride_dyt, stride_dyb, stride_dhTb, stride_ht, stride_hb, stride_wn, stride_dat, stride_dab,
    stride_gt, stride_gb, stride_dh0b, stride_sync,
    REVERSE, max_spins,
    NONLINEARITY: tl.constexpr, PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr, PERSISTENT: tl.constexpr,
    HAS_DY: tl.constexpr, HAS_DHT: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_b = tl.program_id(1)
    row0 = pid_b.to(tl.int64) * BLOCK_B
    n0 = tl.program_id(0) * BLOCK_N
    w = _load_slice(w_ptr, n0, H, stride_wn, 1, PRECISION, EMULATE_BF16, BLOCK_N, BLOCK_K)  # W_hh's n-slice
    if PERSISTENT:
        counters = sync_ptr + pid_b.to(tl.int64) * stride_sync
        ok = _read_flag(err_ptr) == 0
        s = 0
        while (s <= T) & ok:
            _bwd_step(s, n0, row0, w, dy_ptr, dhT_ptr, hs_ptr, da_ptr, ga_ptr, dh0_ptr, T, B, H,
                      stride_dyt, stride_dyb, stride_dhTb, stride_ht, stride_hb, stride_dat, stride_dab,
                      stride_gt, stride_gb, stride_dh0b, REVERSE,
                      NONLINEARITY, PRECISION, EMULATE_BF16, HAS_DY, HAS_DHT, BLOCK_B, BLOCK_N, BLOCK_K)
            if s < T:
                ok = _grid_barrier(counters + s, err_ptr, tl.num_programs(0), max_spins)
            s += 1
    else:
        _bwd_step(step, n0, row0, w, dy_ptr, dhT_ptr, hs_ptr, da_ptr, ga_ptr, dh0_ptr, T, B, H,
                  stride_dyt, stride_dyb, stride_dhTb, stride_ht, stride_hb, stride_dat, stride_dab,
                  stride_gt, stride_gb, stride_dh0b, REVERSE,
                  NONLINEARITY, PRECISION, EMULATE_BF16, HAS_DY, HAS_DHT, BLOCK_B, BLOCK_N, BLOCK_K)


# ----------------------------------------------------------------------------------------------------------
# Configurations, resources and the choice between persistent and tiled
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PersistentConfig:
    """Tiles of the persistent kernels: grid (cdiv(H, block_n), cdiv(B, block_b)); block_k >= H is the
    whole reduction (one tl.dot per step against the resident slice)."""

    block_b: int
    block_n: int
    block_k: int
    num_warps: int = 4


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
class PathChoice:
    """The launcher's choice for one recurrence, and why (one line in the log, a benchmark field)."""

    path: str  # "persistent" | "tiled" (kernels/rnn.py's batch-tiled kernels)
    reason: str
    config: PersistentConfig | None = None
    programs: int = 0  # persistent grid size
    capacity: int = 0  # programs the device holds at once (SMs x programs per SM)

    def __str__(self) -> str:
        return f"recurrence: {self.path} ({self.reason})"


# GPU tiles: BLOCK_B = 16 (the smallest mma M) and BLOCK_N = 16 give the most programs, so the most SMs
# share the step; 8 warps (with 4, the prototype spilled for exact fp32 on sm_80 and for bf16 at 1024).
# Persistent above H = 128, up to padded H 1024 (fp32 operands: slice and h tile 64 KB each in shared
# memory; bf16: triton keeps the slice in registers, 237-255 of them at 1024, no spill).
_GPU_BLOCK_B = 16
_GPU_BLOCK_N = 16
_GPU_NUM_WARPS = 8
_GPU_MIN_HIDDEN = 129
_GPU_MAX_BLOCK_K = {"ieee": 1024, "tf32": 1024, "bf16": 1024}
_GPU_MIN_BLOCK_K = _next_pow2(_GPU_MIN_HIDDEN)  # 256

# Per-SM limits (CUDA occupancy tables): shared memory per SM and per block (opt-in), 1 KB of it reserved
# per block by the driver, 64K registers allocated per warp in units of 256, 2048 threads, 32 blocks.
_SM_LIMITS = {80: {"shared_per_sm": 164 * 1024, "shared_per_block": 163 * 1024},
              90: {"shared_per_sm": 228 * 1024, "shared_per_block": 227 * 1024}}
_REGISTERS_PER_SM = 65536
_THREADS_PER_SM = 2048
_BLOCKS_PER_SM = 32


def gpu_config(hidden: int, precision: str) -> PersistentConfig | None:
    """The GPU tiles for this H, or None when a slice cannot hold it."""
    block_k = max(_GPU_MIN_BLOCK_K, _next_pow2(hidden))
    if block_k > _GPU_MAX_BLOCK_K[precision]:
        return None
    return PersistentConfig(block_b=_GPU_BLOCK_B, block_n=_GPU_BLOCK_N, block_k=block_k, num_warps=_GPU_NUM_WARPS)


def estimate_resources(config: PersistentConfig, precision: str) -> KernelResources:
    """A conservative stand-in for the compiled kernel's figures: every register a thread may have, and the
    shared memory of the slice (fp32 operands) and of the h tile, plus 1 KB of scratch."""
    operand_bytes = 2 if precision == "bf16" else 4
    shared = config.block_b * config.block_k * operand_bytes + 1024
    if precision != "bf16":
        shared += config.block_k * config.block_n * 4
    return KernelResources(registers=255, shared_bytes=shared, num_warps=config.num_warps)


def programs_per_sm(res: KernelResources, cc: int = 90) -> int:
    """How many programs of a kernel with these resources one SM holds at once (0: not even one)."""
    limits = _SM_LIMITS.get(cc, _SM_LIMITS[80])
    if res.shared_bytes > limits["shared_per_block"]:
        return 0
    regs_per_warp = math.ceil(res.registers * 32 / 256) * 256
    return min(_THREADS_PER_SM // (32 * res.num_warps),
               _REGISTERS_PER_SM // (regs_per_warp * res.num_warps),
               limits["shared_per_sm"] // (res.shared_bytes + 1024),
               _BLOCKS_PER_SM)


def choose_path(*, sm_count: int, batch: int, hidden: int, precision: str, dtype: torch.dtype = torch.float32,
                resources: KernelResources | None = None, cc: int = 90, timed_out: bool = False) -> PathChoice:
    """Persistent or tiled for one recurrence of (batch, hidden) on a GPU with sm_count SMs of compute
    capability cc (80, 90, ...), from the compiled kernel's resources (None: estimate_resources()).
    The rules, in order, are the module docstring's ("Selection")."""
    if timed_out:
        return PathChoice("tiled", "a persistent launch timed out earlier in this process")
    if dtype == torch.float64:
        return PathChoice("tiled", "float64 state: the persistent kernels are built for float32 state")
    if hidden < _GPU_MIN_HIDDEN:
        return PathChoice("tiled", f"H = {hidden} <= {_GPU_MIN_HIDDEN - 1}: W_hh is small enough to stream "
                                   "every step, and the tiled kernels need no barrier")
    cfg = gpu_config(hidden, precision)
    if cfg is None:
        return PathChoice("tiled", f"H = {hidden} pads to {_next_pow2(hidden)} > {_GPU_MAX_BLOCK_K[precision]}, "
                                   f"the most a {precision} slice holds")
    res = resources if resources is not None else estimate_resources(cfg, precision)
    n_slices, n_tiles = triton.cdiv(hidden, cfg.block_n), triton.cdiv(batch, cfg.block_b)
    programs = n_slices * n_tiles
    per_sm = programs_per_sm(res, cc)
    capacity = sm_count * per_sm
    grid = (f"{programs} programs ({n_slices} N-slices x {n_tiles} batch tiles) on {sm_count} SMs x {per_sm} "
            f"per SM ({res.registers} registers x {32 * res.num_warps} threads, {res.shared_bytes / 1024:.1f} KB "
            f"shared{'' if resources is not None else ', estimated'})")
    if programs > capacity:
        return PathChoice("tiled", f"{grid}: the grid cannot be resident at once", cfg, programs, capacity)
    return PathChoice("persistent", grid, cfg, programs, capacity)


# ----------------------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------------------
FORMS = ("persistent", "per_step")
_INTERPRETER_MAX_SPINS = 16

_timed_out = False  # a persistent launch of this process timed out or was refused: choose tiled from now on
_warned = False
_pending_flags: list = []  # (host int32 tensor, CUDA event) of launches whose flag is not read yet


def persistent_timed_out() -> bool:
    """True once a persistent launch of this process has timed out or been refused. Never waits for the GPU:
    the flag of a launch that has not finished yet is read by a later call."""
    global _timed_out
    still = []
    for host, event in _pending_flags:
        if not event.query():
            still.append((host, event))
        elif int(host[0]) != 0:
            _timed_out = True
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


def _watch(err: torch.Tensor) -> None:
    """Queues the flag for persistent_timed_out(), without a host synchronisation."""
    if err.device.type == "cuda":
        host = torch.empty(1, dtype=torch.int32, pin_memory=True)
        host.copy_(err, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        _pending_flags.append((host, event))
        persistent_timed_out()
    else:
        _flag_set_now(err)  # a CPU tensor is current already


def _default_config(batch: int, hidden: int, precision: str) -> PersistentConfig:
    if _runtime.INTERPRETED:
        # one N-slice and one batch tile of up to 128 rows: the interpreter pays per Triton op, and the
        # persistent form then never waits (programs run one after another there)
        return PersistentConfig(block_b=min(128, max(16, _next_pow2(batch))), block_n=max(16, _next_pow2(hidden)),
                                block_k=max(16, _next_pow2(hidden)))
    cfg = gpu_config(hidden, precision)
    if cfg is None:
        raise ValueError(f"H = {hidden} is too large for a persistent {precision} slice "
                         f"(padded H <= {_GPU_MAX_BLOCK_K[precision]}); use kernels.rnn's tiled kernel")
    return cfg


def _check_common(H: int, precision: str, config: PersistentConfig | None, form: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    if form not in FORMS:
        raise ValueError(f"form: expected one of {FORMS}, got {form!r}")
    if config is not None and config.block_k < H:
        raise ValueError(f"config: block_k = {config.block_k} must cover H = {H}")


def _shadow(t: torch.Tensor, precision: str) -> torch.Tensor:
    """The bf16 ring's copy of t: bf16 on a GPU; in the interpreter (no bf16 arithmetic) bf16-rounded
    values kept in t's dtype, as the kernels' _operand() makes them."""
    rounded = t.to(torch.bfloat16)
    return rounded.to(t.dtype) if _emulate_bf16(precision) else rounded


def _launch(kernel, args: dict, *, grid, steps: int, form: str, max_spins: int, error_flag: torch.Tensor | None,
            fallback, outputs: tuple, device) -> bool:
    """Runs `steps` steps: one persistent launch, or one launch per step (the kernel boundary is the
    barrier). Returns True when the persistent launch gave up and nobody has rerun it yet: the caller reruns
    the per-step form. With a `fallback` hook, fallback(flag, *outputs) is called right after the persistent
    launch and must enqueue a rerun into `outputs` that does nothing unless the flag is set; the flag is then
    read asynchronously."""
    if form == "per_step":
        unused = torch.zeros(1, dtype=torch.int32, device=device)
        for s in range(steps):
            kernel[grid](**args, sync_ptr=unused, err_ptr=unused, step=s, stride_sync=0, max_spins=0,
                         PERSISTENT=False)
        return False
    if _runtime.INTERPRETED and grid[0] > 1:
        # programs run one after another there: the first barrier of a multi-slice grid can never complete,
        # so give up after a few polls (each costs ~0.1 ms there) rather than after ~minutes
        max_spins = min(max_spins, _INTERPRETER_MAX_SPINS)
    # the flag and every (batch tile, step) counter zeroed by one allocation
    sync = torch.zeros(1 + grid[1] * steps, dtype=torch.int32, device=device)
    err = sync[:1] if error_flag is None else error_flag
    launch = dict(args, sync_ptr=sync[1:], err_ptr=err, step=0, stride_sync=steps, max_spins=max_spins,
                  PERSISTENT=True)
    if not _runtime.INTERPRETED:
        launch.update(LAUNCH_OPTIONS)
    try:
        kernel[grid](**launch)
    except RuntimeError as refused:  # the driver's check: the grid cannot be resident at once
        if "cooperative" not in str(refused).lower():
            raise
        err.fill_(1)
    if fallback is not None:
        fallback(err, *outputs)
        _watch(err)
        return False
    return _flag_set_now(err)


def persistent_forward(xp: torch.Tensor, h0: torch.Tensor | None, w_hh: torch.Tensor, reverse: bool,
                       nonlinearity: str, precision: str, *, config: PersistentConfig | None = None,
                       form: str = "persistent", max_spins: int = DEFAULT_MAX_SPINS,
                       error_flag: torch.Tensor | None = None, fallback=None):
    """h_t = phi(xp_t + h_{t-1} W_hh^T) for all t, W_hh split over N-slices (kernels.rnn._recurrence_forward's
    contract).

    xp: (T, B, H) fp32|fp64; h0: (B, H) or None (zeros); w_hh: (H, H). config: the tiles (default: the GPU's,
    or one slice in the interpreter); form: "persistent" or "per_step" (one launch per step); max_spins: polls
    before a barrier gives up; error_flag: an int32 (1,) tensor to use as the flag (tests preset it to 1 to
    simulate a timeout); fallback: None (read the flag after the launch -- a host synchronisation on a GPU --
    and, if set, warn once and rerun the per-step form) or a hook fallback(flag, hs, h_T) that enqueues a
    rerun of this layer into hs and h_T doing nothing unless the flag is set (no synchronisation; the flag
    is read later).
    Returns (y (T, B, H) a view of hs, h_T (B, H), hs (T+1, B, H))."""
    if xp.dim() != 3 or xp.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"xp: expected a 3-D float32/float64 tensor, got {xp.dim()}-D {xp.dtype}")
    T, B, H = xp.shape
    if T == 0 or B == 0 or H == 0:
        raise ValueError(f"xp: every size must be > 0, got {tuple(xp.shape)}")
    _check_common(H, precision, config, form)
    _check_launch("w_hh", w_hh, (H, H), xp.dtype, xp.device)
    if h0 is not None:
        _check_launch("h0", h0, (B, H), xp.dtype, xp.device)
    cfg = config or _default_config(B, H, precision)
    xp, w_hh = _inner_contiguous(xp), _inner_contiguous(w_hh)
    hs = _alloc((T + 1, B, H), xp.dtype, xp.device)
    h0_slot = hs[T] if reverse else hs[0]
    if h0 is None:
        h0_slot.zero_()
    else:
        h0_slot.copy_(h0)
    hT = _alloc((B, H), xp.dtype, xp.device)
    ha = hs
    if precision == "bf16":
        ha = _alloc((2, B, H), _shadow(h0_slot, precision).dtype, xp.device)
        ha[0].copy_(_shadow(h0_slot, precision))
    args = dict(xp_ptr=xp, w_ptr=w_hh, hs_ptr=hs, ha_ptr=ha, hT_ptr=hT, T=T, B=B, H=H,
                stride_xt=xp.stride(0), stride_xb=xp.stride(1), stride_wn=w_hh.stride(0), stride_ht=hs.stride(0),
                stride_hb=hs.stride(1), stride_at=ha.stride(0), stride_ab=ha.stride(1), stride_hTb=hT.stride(0),
                REVERSE=int(reverse), NONLINEARITY=nonlinearity_code(nonlinearity), PRECISION=precision,
                EMULATE_BF16=_emulate_bf16(precision), BLOCK_B=cfg.block_b, BLOCK_N=cfg.block_n,
                BLOCK_K=cfg.block_k, num_warps=cfg.num_warps, num_stages=1)
    grid = (triton.cdiv(H, cfg.block_n), triton.cdiv(B, cfg.block_b))
    _runtime.announce_interpreter_once()
    run = dict(grid=grid, steps=T, max_spins=max_spins, error_flag=error_flag, fallback=fallback, outputs=(hs, hT),
               device=xp.device)
    if _launch(_rnn_persistent_fwd_kernel, args, form=form, **run):
        if precision == "bf16":
            ha[0].copy_(_shadow(h0_slot, precision))  # the ring's slot 0 held h_1, h_3, ... by then
        _launch(_rnn_persistent_fwd_kernel, args, form="per_step", **run)
    y = hs[:T] if reverse else hs[1:]
    return y, hT, hs


def persistent_backward(dy: torch.Tensor | None, dhT: torch.Tensor | None, hs: torch.Tensor, w_hh: torch.Tensor,
                        reverse: bool, nonlinearity: str, precision: str, *, config: PersistentConfig | None = None,
                        form: str = "persistent", max_spins: int = DEFAULT_MAX_SPINS,
                        error_flag: torch.Tensor | None = None, fallback=None):
    """dA_t = (dy_t + dA_{t+1} W_hh) * phi'(h_t) walking t in reverse, and dh_0 = dA_first W_hh, W_hh split
    over N-slices (kernels.rnn._recurrence_backward's contract; keywords as persistent_forward's, the hook
    being fallback(flag, dA, dh_0)). Returns (dA (T, B, H), dh_0 (B, H))."""
    T1, B, H = hs.shape
    T = T1 - 1
    dtype, device = hs.dtype, hs.device
    _check_common(H, precision, config, form)
    _check_launch("w_hh", w_hh, (H, H), dtype, device)
    if dy is not None:
        _check_launch("dy", dy, (T, B, H), dy.dtype, device)
        dy = _inner_contiguous(dy)
    if dhT is not None:
        _check_launch("dhT", dhT, (B, H), dhT.dtype, device)
        dhT = _inner_contiguous(dhT)
    cfg = config or _default_config(B, H, precision)
    w_hh = _inner_contiguous(w_hh)
    da = _alloc((T, B, H), dtype, device)
    dh0 = _alloc((B, H), dtype, device)
    ga = _alloc((2, B, H), _shadow(dh0, precision).dtype, device) if precision == "bf16" else da
    dy_arg = dy if dy is not None else da  # never read when HAS_DY is False
    dhT_arg = dhT if dhT is not None else dh0
    args = dict(dy_ptr=dy_arg, dhT_ptr=dhT_arg, hs_ptr=hs, w_ptr=w_hh, da_ptr=da, ga_ptr=ga, dh0_ptr=dh0,
                T=T, B=B, H=H, stride_dyt=dy_arg.stride(0), stride_dyb=dy_arg.stride(1),
                stride_dhTb=dhT_arg.stride(0), stride_ht=hs.stride(0), stride_hb=hs.stride(1),
                stride_wn=w_hh.stride(0), stride_dat=da.stride(0), stride_dab=da.stride(1),
                stride_gt=ga.stride(0), stride_gb=ga.stride(1), stride_dh0b=dh0.stride(0),
                REVERSE=int(reverse), NONLINEARITY=nonlinearity_code(nonlinearity), PRECISION=precision,
                EMULATE_BF16=_emulate_bf16(precision), HAS_DY=dy is not None, HAS_DHT=dhT is not None,
                BLOCK_B=cfg.block_b, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, num_warps=cfg.num_warps,
                num_stages=1)
    grid = (triton.cdiv(H, cfg.block_n), triton.cdiv(B, cfg.block_b))
    _runtime.announce_interpreter_once()
    run = dict(grid=grid, steps=T + 1, max_spins=max_spins, error_flag=error_flag, fallback=fallback,
               outputs=(da, dh0), device=device)
    if _launch(_rnn_persistent_bwd_kernel, args, form=form, **run):
        _launch(_rnn_persistent_bwd_kernel, args, form="per_step", **run)
    return da, dh0


# ----------------------------------------------------------------------------------------------------------
# GPU compile configurations (kernels/compile_report.py)
# ----------------------------------------------------------------------------------------------------------
def gpu_block_ks(precision: str) -> tuple[int, ...]:
    """Every padded H the launcher can choose for a persistent launch in this precision."""
    out, k = [], _GPU_MIN_BLOCK_K
    while k <= _GPU_MAX_BLOCK_K[precision]:
        out.append(k)
        k *= 2
    return tuple(out)


def gpu_compile_configs():
    """Every persistent configuration the launcher can choose on a GPU, for kernels/compile_report.py:
    forward/backward x tanh/relu x ieee/tf32/bf16 x each padded H of gpu_block_ks(), fp32 state, the
    persistent form, launched with LAUNCH_OPTIONS (compile them with it too). The backward kernels
    are listed with dy and dh_T both present (the HAS_* flags only remove loads). Tensor cores are expected
    for tf32/bf16; the barrier's release/acquire atomics are checked by tests/test_rnn_persistent.py."""
    from kernels.compile_report import CompileConfig  # lazily: the report helper's module

    out = []
    for precision in PRECISIONS:
        for block_k in gpu_block_ks(precision):
            cfg = PersistentConfig(_GPU_BLOCK_B, _GPU_BLOCK_N, block_k, _GPU_NUM_WARPS)
            for nonlin in NONLINEARITIES:
                for direction, fn in (("fwd", _rnn_persistent_fwd_kernel), ("bwd", _rnn_persistent_bwd_kernel)):
                    constexprs = {"NONLINEARITY": nonlinearity_code(nonlin), "PRECISION": precision,
                                  "EMULATE_BF16": False, "PERSISTENT": True, "BLOCK_B": cfg.block_b,
                                  "BLOCK_N": cfg.block_n, "BLOCK_K": cfg.block_k}
                    if direction == "bwd":
                        constexprs.update(HAS_DY=True, HAS_DHT=True)
                    signature = {a: ("*fp32" if a.endswith("_ptr") else "i32")
                                 for a in fn.arg_names if a not in constexprs}
                    signature.update(sync_ptr="*i32", err_ptr="*i32")
                    if precision == "bf16":
                        signature["ha_ptr" if direction == "fwd" else "ga_ptr"] = "*bf16"
                    signature.update({c: "constexpr" for c in constexprs})
                    out.append(CompileConfig(
                        name=f"rnn_persistent_{direction}_fp32_{nonlin}_{precision}_"
                             f"{cfg.block_b}x{cfg.block_n}x{cfg.block_k}",
                        fn=fn, signature=signature, constexprs=constexprs,
                        expect_tensor_cores=precision in ("tf32", "bf16"), num_warps=cfg.num_warps, num_stages=1))
    return out
