"""Next-token sampling from logits without writing probabilities and without sorting, in Triton.

Math (one row z of length V, temperature T):
  Gumbel-max: with g_j = -log(-log u_j), u_j ~ U(0, 1) independent, argmax_j (z_j / T + g_j) is distributed as
  softmax(z / T). u_j comes from Triton's counter-based Philox generator (tl.rand) keyed by the 64-bit seed with
  the counter (column j, row i), so a (seed, row, column) triple always gives the same u on any run and any GPU;
  the row length and tiling do not matter. u is clamped to >= 1e-37 so g stays finite.
  T = 0: plain argmax of z, ties to the lower index (no random numbers).
  top-k: keep z_j >= tau_k, tau_k = the k-th largest z / T. Found by bisection on the value, not by sorting:
    fp32 values map to int32 keys with the same order (key = bits if bits >= 0 else bits ^ 0x7fffffff), and 32
    halvings of [key(-inf), key(max)] find the largest key tau with #{j : z_j / T >= tau} >= k. Each step counts
    over the row (one pass).
  top-p: keep the smallest set of largest entries whose probability mass reaches p (ties at the boundary are
    kept): the largest tau with sum_{z_j / T >= tau} exp(z_j / T - m) >= p * S, S the mass kept by top-k (or all),
    by the same bisection, summing instead of counting. Applied after top-k, as Hugging Face's warpers do.
  Every row must have a finite maximum and no NaN; otherwise the kernel writes -1. sample() then reads the ids at
  once and raises ValueError naming the row (one host sync), or, given a DeviceChecks, counts the bad rows on the
  device, returns token 0 for them and reads nothing (no sync per generated token; checks.check() reports them).

Memory traffic for R rows of V elements of b bytes: one read of R·V·b and a write of R int64 without top-k/top-p
(plus one read for the max, 33 for top-k, 34 for top-p; those re-reads of a row hit L1/L2 on a GPU).
torch's softmax + multinomial reads the logits, writes and re-reads R·V fp32 probabilities and then scans them:
>= 3 R·V passes against 1 (the >= 2x target for the plain sampling path on a GPU; not measurable here).
Arithmetic is fp32 for every input dtype (fp64 logits are rounded to fp32).
"""
from __future__ import annotations

import numbers

import torch

from kernels._utils import (ARGMAX, FLOAT_DTYPES, MAX, ROW_SHAPES, SUM, TL_NAME, DeviceChecks, Launch, as_rows,
                            check_logits, check_temperature, empty, meta_tensor, row_stride, row_tiles)

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

__all__ = ["sample", "sample_reference", "sample_distribution", "gpu_compile_configs"]

# the row count only bounds a mask; the seed changes at every call and top_k is a count, not an address: a value
# of 1 or a multiple of 16 would compile another kernel in the middle of a generation
_NO_SPEC = ["n_rows", "seed_lo", "seed_hi", "top_k"]
SEED_LIMIT = 2**62


# ----------------------------------------------------------------------------------------------------------------
# Triton kernel (helpers are written inline: every nested @triton.jit call costs ~1 ms in the interpreter)
# ----------------------------------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=_NO_SPEC)
def _sample_kernel(x_ptr, out_ptr, n_rows, n_cols, stride_x, temperature, seed_lo, seed_hi, top_k, top_p,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GREEDY: tl.constexpr, TOP_K: tl.constexpr,
                   TOP_P: tl.constexpr, ONE_BLOCK: tl.constexpr):
    # x: (n_rows, n_cols) logits, last dim contiguous; out: (n_rows,) int64 token ids (-1 = invalid row).
    # ONE_BLOCK (BLOCK_N >= n_cols, with top-k or top-p): the bisection passes reuse the row held in registers.
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_rows
    cols = tl.arange(0, BLOCK_N)
    x_rows = x_ptr + rows * stride_x
    best = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    best_idx = tl.full((BLOCK_M,), -1, tl.int64)
    n_bad = tl.zeros((BLOCK_M,), tl.int32)  # NaN or +inf entries
    if GREEDY:
        for start in range(0, n_cols, BLOCK_N):
            c = start + cols
            mask = row_ok[:, None] & (c < n_cols)[None, :]
            z = tl.load(x_rows[:, None] + c[None, :], mask=mask, other=float("-inf")).to(tl.float32)
            n_bad += tl.reduce(((z != z) | (z == float("inf"))).to(tl.int32), 1, SUM)
            b_max, b_arg = tl.reduce((z, tl.broadcast_to(cols[None, :], (BLOCK_M, BLOCK_N))), 1, ARGMAX)
            better = b_max > best  # strictly: an equal value in a later block keeps the lower index
            best = tl.where(better, b_max, best)
            best_idx = tl.where(better, start + b_arg.to(tl.int64), best_idx)
    else:
        thr = tl.full((BLOCK_M,), float("-inf"), tl.float32)  # keep z / T >= thr
        if TOP_K or TOP_P:
            m = tl.full((BLOCK_M,), float("-inf"), tl.float32)
            if ONE_BLOCK:
                # the whole row fits one tile: keep z / T (and exp(z / T - m)) in registers for every pass
                mask1 = row_ok[:, None] & (cols < n_cols)[None, :]
                z1 = tl.load(x_rows[:, None] + cols[None, :], mask=mask1, other=float("-inf")).to(tl.float32)
                z1 = z1 / temperature
                m = tl.reduce(z1, 1, MAX)
                e1 = tl.exp(z1 - m[:, None])
            else:
                for start in range(0, n_cols, BLOCK_N):
                    c = start + cols
                    mask = row_ok[:, None] & (c < n_cols)[None, :]
                    z = tl.load(x_rows[:, None] + c[None, :], mask=mask, other=float("-inf")).to(tl.float32)
                    m = tl.maximum(m, tl.reduce(z / temperature, 1, MAX))
            m_bits = m.to(tl.int32, bitcast=True)
            key_hi = tl.where(m_bits >= 0, m_bits, m_bits ^ 0x7FFFFFFF).to(tl.int64)
            if TOP_K:
                lo_bits = thr.to(tl.int32, bitcast=True)
                lo = tl.where(lo_bits >= 0, lo_bits, lo_bits ^ 0x7FFFFFFF).to(tl.int64)
                hi = key_hi
                for _ in range(32):
                    mid = lo + (hi - lo + 1) // 2
                    mid32 = mid.to(tl.int32)
                    mid_f = tl.where(mid32 >= 0, mid32, mid32 ^ 0x7FFFFFFF).to(tl.float32, bitcast=True)
                    if ONE_BLOCK:
                        count = tl.reduce((z1 >= mid_f[:, None]).to(tl.int32), 1, SUM)
                    else:
                        count = tl.zeros((BLOCK_M,), tl.int32)
                        for start in range(0, n_cols, BLOCK_N):
                            c = start + cols
                            mask = row_ok[:, None] & (c < n_cols)[None, :]
                            z = tl.load(x_rows[:, None] + c[None, :], mask=mask, other=float("-inf"))
                            count += tl.reduce((z.to(tl.float32) / temperature >= mid_f[:, None]).to(tl.int32), 1, SUM)
                    enough = count >= top_k
                    lo = tl.where(enough, mid, lo)
                    hi = tl.where(enough, hi, mid - 1)
                lo32 = lo.to(tl.int32)
                thr = tl.where(lo32 >= 0, lo32, lo32 ^ 0x7FFFFFFF).to(tl.float32, bitcast=True)
            if TOP_P:
                if ONE_BLOCK:
                    total = tl.reduce(tl.where(z1 >= thr[:, None], e1, 0.0), 1, SUM)
                else:
                    total = tl.zeros((BLOCK_M,), tl.float32)
                    for start in range(0, n_cols, BLOCK_N):
                        c = start + cols
                        mask = row_ok[:, None] & (c < n_cols)[None, :]
                        z = tl.load(x_rows[:, None] + c[None, :], mask=mask, other=float("-inf")).to(tl.float32)
                        z = z / temperature
                        total += tl.reduce(tl.where(z >= thr[:, None], tl.exp(z - m[:, None]), 0.0), 1, SUM)
                target = top_p * total
                lo_bits = thr.to(tl.int32, bitcast=True)
                lo = tl.where(lo_bits >= 0, lo_bits, lo_bits ^ 0x7FFFFFFF).to(tl.int64)
                hi = key_hi
                for _ in range(32):
                    mid = lo + (hi - lo + 1) // 2
                    mid32 = mid.to(tl.int32)
                    mid_f = tl.where(mid32 >= 0, mid32, mid32 ^ 0x7FFFFFFF).to(tl.float32, bitcast=True)
                    if ONE_BLOCK:
                        mass = tl.reduce(tl.where(z1 >= mid_f[:, None], e1, 0.0), 1, SUM)
                    else:
                        mass = tl.zeros((BLOCK_M,), tl.float32)
                        for start in range(0, n_cols, BLOCK_N):
                            c = start + cols
                            mask = row_ok[:, None] & (c < n_cols)[None, :]
                            z = tl.load(x_rows[:, None] + c[None, :], mask=mask, other=float("-inf"))
                            z = z.to(tl.float32) / temperature
                            mass += tl.reduce(tl.where(z >= mid_f[:, None], tl.exp(z - m[:, None]), 0.0), 1, SUM)
                    enough = mass >= target
                    lo = tl.where(enough, mid, lo)
                    hi = tl.where(enough, hi, mid - 1)
                lo32 = lo.to(tl.int32)
                thr = tl.where(lo32 >= 0, lo32, lo32 ^ 0x7FFFFFFF).to(tl.float32, bitcast=True)
        seed = (seed_hi.to(tl.int64) << 31) | seed_lo.to(tl.int64)
        for start in range(0, n_cols, BLOCK_N):
            c = start + cols
            mask = row_ok[:, None] & (c < n_cols)[None, :]
            z = tl.load(x_rows[:, None] + c[None, :], mask=mask, other=float("-inf")).to(tl.float32)
            n_bad += tl.reduce(((z != z) | (z == float("inf"))).to(tl.int32), 1, SUM)
            z = z / temperature
            # Philox counter (column, row): the same (seed, row, column) always draws the same u
            u = tl.rand(seed, (rows[:, None] << 32) | c[None, :].to(tl.int64))
            g = -tl.log(-tl.log(tl.maximum(u, 1e-37)))
            score = tl.where(z >= thr[:, None], z + g, float("-inf"))
            b_max, b_arg = tl.reduce((score, tl.broadcast_to(cols[None, :], (BLOCK_M, BLOCK_N))), 1, ARGMAX)
            better = b_max > best
            best = tl.where(better, b_max, best)
            best_idx = tl.where(better, start + b_arg.to(tl.int64), best_idx)
    tl.store(out_ptr + rows, tl.where(n_bad == 0, best_idx, -1), mask=row_ok)


# ----------------------------------------------------------------------------------------------------------------
# Launcher
# ----------------------------------------------------------------------------------------------------------------
def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be an int, got {type(seed).__name__}")
    if not 0 <= int(seed) < SEED_LIMIT:
        raise ValueError(f"seed must be in [0, 2**62), got {seed}")
    return int(seed)


def _check_top_k(top_k):
    if top_k is None:
        return None
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral):
        raise ValueError(f"top_k must be an int or None, got {type(top_k).__name__}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    return int(top_k)


def _check_top_p(top_p):
    if top_p is None:
        return None
    if isinstance(top_p, bool) or not isinstance(top_p, numbers.Real):
        raise ValueError(f"top_p must be a real number or None, got {type(top_p).__name__}")
    p = float(top_p)
    if not 0.0 < p <= 1.0:  # also rejects NaN
        raise ValueError(f"top_p must be in (0, 1], got {p}")
    return p


def _launch(x2: torch.Tensor, out: torch.Tensor, temperature: float, seed: int, top_k, top_p) -> Launch:
    """The launch for (R, V) logits x2 (unit column stride) into out (R,) int64."""
    n_rows, n_cols = x2.shape
    greedy = temperature == 0.0
    use_k = top_k is not None and top_k < n_cols and not greedy
    use_p = top_p is not None and top_p < 1.0 and not greedy
    meta, warps = _launch_meta(n_rows, n_cols, x2.device, greedy, use_k, use_p)
    return Launch(_sample_kernel, (triton.cdiv(n_rows, meta["BLOCK_M"]),),
                  dict(x_ptr=x2, out_ptr=out, n_rows=n_rows, n_cols=n_cols, stride_x=row_stride(x2),
                       temperature=1.0 if greedy else temperature, seed_lo=seed & (2**31 - 1), seed_hi=seed >> 31,
                       top_k=top_k if use_k else 0, top_p=top_p if use_p else 1.0),
                  meta, num_warps=warps)


def _sample_rows(x2: torch.Tensor, temperature: float, seed: int, top_k, top_p) -> torch.Tensor:
    """x2: (R, V) with unit column stride -> (R,) int64, -1 for a row with no finite maximum or with NaN."""
    out = empty(x2.shape[0], torch.int64, x2.device)
    if x2.shape[0]:
        _launch(x2, out, temperature, seed, top_k, top_p)()
    return out


def _launch_meta(n_rows: int, n_cols: int, device: torch.device, greedy: bool, use_k: bool,
                 use_p: bool) -> tuple[dict, int]:
    """The kernel's constexprs and num_warps for one launch."""
    bm, bn, warps = row_tiles(n_rows, n_cols, device, whole_rows=use_k or use_p)
    return dict(BLOCK_M=bm, BLOCK_N=bn, GREEDY=greedy, TOP_K=use_k, TOP_P=use_p,
                ONE_BLOCK=(use_k or use_p) and n_cols <= bn), warps


# ----------------------------------------------------------------------------------------------------------------
# Public function and references
# ----------------------------------------------------------------------------------------------------------------
def sample(logits: torch.Tensor, temperature: float, seed: int, top_k: int | None = None,
           top_p: float | None = None, checks: DeviceChecks | None = None) -> torch.Tensor:
    """Draws one token id per row from softmax(logits / temperature), optionally restricted to top-k / top-p.

    logits: (..., V) float32, float16, bfloat16 or float64 (CPU under Triton's interpreter, else CUDA), V >= 1.
    temperature: finite >= 0; 0 means argmax (ties to the lower index). seed: int in [0, 2**62): the same seed
    gives the same tokens on every run (the noise is keyed by (seed, row, column)); use a fresh seed per step.
    top_k: None or int >= 1 (values >= V keep everything). top_p: None or a float in (0, 1] (1 keeps everything).
    checks: None (default) reads the ids back to check every row (one host sync): ValueError for a row whose entries
    are all -inf or contain NaN / +inf. A kernels.DeviceChecks on logits' device instead counts such rows there and
    returns token 0 for them, with no host sync (generation loops; checks.check() reports them later).
    Returns int64 ids of shape logits.shape[:-1]. Raises ValueError naming any other bad argument.
    """
    check_logits(logits)
    t = check_temperature(temperature, allow_zero=True)
    s = _check_seed(seed)
    k = _check_top_k(top_k)
    p = _check_top_p(top_p)
    if checks is not None and (not isinstance(checks, DeviceChecks) or checks.device != logits.device):
        raise ValueError(f"checks must be None or a DeviceChecks on logits' device {logits.device}, got {checks!r}")
    ids = _sample_rows(as_rows(logits), t, s, k, p)
    bad = ids < 0
    if checks is not None:
        checks.add("logits", bad.sum())
        ids.clamp_(min=0)  # a valid id, so that a generation loop can feed it back without an out-of-range lookup
    elif bool(bad.any()):
        r = int(bad.nonzero()[0, 0])
        raise ValueError(f"logits row {r} (of the rows flattened to (-1, V)) is all -inf or contains NaN or +inf: "
                         f"nothing to sample")
    return ids.view(logits.shape[:-1])


def sample_distribution(logits: torch.Tensor, temperature: float, top_k: int | None = None,
                        top_p: float | None = None) -> torch.Tensor:
    """Plain PyTorch (float64, sorting): the distribution `sample` draws from, shape and layout of logits."""
    z = logits.double()
    if temperature == 0:
        return torch.nn.functional.one_hot(z.argmax(dim=-1), z.shape[-1]).double()  # argmax: first maximum
    z = z / temperature
    keep = torch.ones_like(z, dtype=torch.bool)
    if top_k is not None and top_k < z.shape[-1]:
        kth = z.topk(top_k, dim=-1).values[..., -1:]
        keep &= z >= kth
    if top_p is not None and top_p < 1.0:
        probs = torch.softmax(z.masked_fill(~keep, float("-inf")), dim=-1)
        sorted_p, order = probs.sort(dim=-1, descending=True)
        mass_before = sorted_p.cumsum(dim=-1) - sorted_p  # mass of strictly larger entries
        in_set = mass_before < top_p  # up to and including the entry that reaches p
        cut = torch.where(in_set, sorted_p, torch.full_like(sorted_p, float("inf"))).min(dim=-1, keepdim=True).values
        keep &= probs >= cut  # ties with the last entry kept are kept too
    return torch.softmax(z.masked_fill(~keep, float("-inf")), dim=-1)


def sample_reference(logits: torch.Tensor, temperature: float, seed: int, top_k: int | None = None,
                     top_p: float | None = None) -> torch.Tensor:
    """Plain PyTorch: the same distribution, drawn with torch.multinomial (a different random stream)."""
    probs = sample_distribution(logits, temperature, top_k, top_p)
    gen = torch.Generator(device=logits.device).manual_seed(seed)
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=gen)[:, 0].view(logits.shape[:-1])


def gpu_compile_configs() -> list:
    """Every mode (greedy, Gumbel-max, with top-k, top-p or both) at the (dtype, row length) pairs of
    kernels._utils.ROW_SHAPES (every GPU tile, every dtype, lengths divisible by 16 or not), specialised as those
    launches are (see kernels/compile_report.py)."""
    modes = {"greedy": (0.0, None, None), "gumbel": (0.8, None, None), "gumbel_topk": (0.8, 40, None),
             "gumbel_topp": (0.8, None, 0.9), "gumbel_topk_topp": (0.8, 40, 0.9)}
    out = []
    for dt, n_cols in ROW_SHAPES:
        for mode, (temperature, top_k, top_p) in modes.items():
            # 16 rows: a batch of samples (a single row only changes the grid)
            launch = _launch(meta_tensor((16, n_cols), dt), meta_tensor(16, torch.int64), temperature, 12345,
                             top_k, top_p)
            meta = launch.constexprs
            name = mode + ("_oneblock" if meta["ONE_BLOCK"] else "")
            out.append(launch.compile_config(
                f"sample_{name}_{TL_NAME[dt]}_{meta['BLOCK_M']}x{meta['BLOCK_N']}_V{n_cols}"))
    return out
