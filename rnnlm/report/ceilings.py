"""The machine's own ceilings for a training step and a generation step, measured in the run that reports speed.

A speed means little without what the machine allows: the same code runs at 2x the tutorial on one CPU and
1.25x on another. So the benchmarks measure, beside our tokens/s:

training (torch backend, CPU): a step is GEMMs. At (B, T, V, E, H, L), with N = B·T tokens,
    output layer   6·N·H·V      three products of 2·N·H·V: the logits, dL/dh, dL/dW (rnnlm.ops.linear_cross_entropy)
    recurrence     Σ_l 6·N·(I_l + H)·H   forward 2·N·(I_l + H)·H (I_0 = E, I_l = H above), backward twice that,
                   of which Σ_l 4·N·H² are sequential: h_{t-1} W_hhᵀ forward and dA_t W_hh backward, T products
                   of (B × H) by (H × H) each, which no implementation can batch over time; the rest (the
                   input products, dX, dW_ih, dW_hh) can be whole-sequence GEMMs
  and the ceiling is N / (output FLOPs / GEMM throughput at that precision + the recurrence's whole-sequence FLOPs
  / fp32 GEMM throughput + its sequential FLOPs / fp32 throughput of a (B, H) by (H, H) product), where the GEMM
  throughput is the output layer's three products timed at the step's H and V (and up to GEMM_ROWS of its N
  rows), in fp32 and bf16, and each throughput is the faster of oneDNN and torch's matmul at the best thread
  count. Everything else a step does (the log-softmax, Adam, the activations) is left out, so 100% is out of
  reach by construction.

generation (one sample, torch backend, CPU): a step reads its weights once,
    output layer   V·H elements of the precision that ran (4, 2 or 1 bytes) + the fp32 bias (4·V)
                   (int8 also reads its bound rows, 16·V bytes: rnnlm.inference.int8_envelope)
    recurrence     layer 0's input row (4·H, a table lookup) and W_hh (4·H²); above it W_ih and W_hh (8·H²)
  and the ceiling is the read bandwidth / those bytes, the bandwidth being torch.sum over a buffer of the fp32
  step's size (the best thread count, the fastest of a few reads).

Each figure is the fastest of a few timed calls after a warm-up (rnnlm.tuning.time_candidates), so on a busy
machine they are what the machine gave when it was least disturbed; say the load when quoting them.

A fraction of a ceiling divides two timings, and on a shared host the machine's speed drifts between them (the
same GEMM ran at 138 to 186 GFLOP/s within an hour here). paired_fraction takes the drift out the way interleaved
benchmarks do (Google Benchmark's random interleaving; paired A/B comparisons): round after round it times one
unit of our work (a training step, a burst of generation steps) and at once measures the ceiling again for that
unit (remeasurer: the winners of a full measurement, timed anew), and reports the median of the per-round ratios.
"""
from __future__ import annotations

import os
import statistics
import time
from typing import Callable

import torch

from rnnlm import tuning
from rnnlm.ops import linear_cross_entropy as lce

OUTPUT_BYTES = {"fp32": 4, "fp16": 2, "int8": 1}
GEMM_ROWS = 256  # rows the GEMMs are timed at (at most): FLOP/s hardly change past a few hundred, time does
PAIRED_ROUNDS = 9


def training_step_flops(batch_size: int, seq_len: int, vocab_size: int, embed_size: int, hidden_size: int,
                        num_layers: int) -> tuple[float, float, float]:
    """(output layer FLOPs, recurrence FLOPs, the sequential part of those) of one training step (see the module
    docstring)."""
    n, h = batch_size * seq_len, hidden_size
    output = 6.0 * n * h * vocab_size
    recurrence = sum(6.0 * n * ((embed_size if layer == 0 else h) + h) * h for layer in range(num_layers))
    sequential = num_layers * 4.0 * n * h * h
    return output, recurrence, sequential


def generation_step_bytes(vocab_size: int, hidden_size: int, num_layers: int, precision: str) -> float:
    """Bytes of weights one generation step reads for one sample at output `precision` (module docstring)."""
    v, h = vocab_size, hidden_size
    output = v * h * OUTPUT_BYTES[precision] + 4 * v + (16 * v if precision == "int8" else 0)
    recurrence = 4 * h + 4 * h * h + (num_layers - 1) * 8 * h * h
    return float(output + recurrence)


def gemm_throughput(rows: int, hidden_size: int, vocab_size: int, dtype: torch.dtype) -> dict:
    """FLOP/s of the output layer's three products at (rows, H, V) in `dtype`: the best over libraries and thread
    counts, with what reached it."""
    return _best_rate(6.0 * rows * hidden_size * vocab_size, dtype, 0.5,
                      _gemm_work(rows, hidden_size, vocab_size, dtype))


def step_gemm_throughput(batch_size: int, hidden_size: int) -> dict:
    """FLOP/s of one sequential recurrence product, (B, H) by (H, H) in fp32: the best over libraries and thread
    counts, with what reached it."""
    return _best_rate(2.0 * batch_size * hidden_size * hidden_size, torch.float32, 0.2,
                      _step_gemm_work(batch_size, hidden_size))


def _gemm_work(rows: int, hidden_size: int, vocab_size: int, dtype: torch.dtype):
    return lambda library: lce.timed_products((rows, hidden_size, vocab_size), dtype, library)


def _step_gemm_work(batch_size: int, hidden_size: int):
    operands: list = []

    def product(library: str):
        def run() -> None:
            if not operands:
                gen = torch.Generator().manual_seed(0)
                operands.extend(torch.randn(*s, generator=gen) for s in ((batch_size, hidden_size),
                                                                        (hidden_size, hidden_size)))
            lce.mm_nt(operands[0], operands[1], None, library == "onednn")
        return run

    return product


def _best_rate(flops: float, dtype: torch.dtype, budget_s: float, work) -> dict:
    """flops / the fastest of work(library) (a callable) on each library of lce.libraries(dtype) and each thread
    count: {"flop_per_s", "by" (library@threads), "seconds" (of each), "flops"}."""
    candidates = {f"{name}@{threads}": _on_threads(work(name), threads)
                  for threads in tuning.thread_candidates() for name in lce.libraries(dtype)}
    seconds = tuning.time_candidates(candidates, budget_s=budget_s)
    best = min(seconds, key=seconds.get)
    return {"flop_per_s": flops / seconds[best], "by": best, "seconds": seconds, "flops": flops}


def read_bandwidth(nbytes: float) -> dict:
    """Bytes/s of torch.sum over an fp32 buffer of `nbytes`: the best thread count, the fastest read."""
    buf = torch.ones(max(1, int(nbytes) // 4))
    candidates = {f"sum@{n}": _on_threads(buf.sum, n) for n in tuning.thread_candidates()}
    seconds = tuning.time_candidates(candidates, budget_s=0.3)
    best = min(seconds, key=seconds.get)
    return {"bytes_per_s": buf.numel() * 4 / seconds[best], "by": best, "bytes": buf.numel() * 4}


def measure_ceilings(*, batch_size: int, seq_len: int, vocab_size: int, embed_size: int, hidden_size: int,
                     num_layers: int, with_bf16: bool = True) -> dict:
    """The machine's GEMM throughputs and read bandwidth at this model's shapes, and the ceilings they allow:
    train_tokens_per_s[precision], generate_tokens_per_s[output precision]."""
    flops = training_step_flops(batch_size, seq_len, vocab_size, embed_size, hidden_size, num_layers)
    rows = min(batch_size * seq_len, GEMM_ROWS)
    gemm = {"fp32": gemm_throughput(rows, hidden_size, vocab_size, torch.float32)}
    if with_bf16:
        gemm["bf16"] = gemm_throughput(rows, hidden_size, vocab_size, torch.bfloat16)
    step_bytes = {p: generation_step_bytes(vocab_size, hidden_size, num_layers, p) for p in OUTPUT_BYTES}
    shape = {"batch_size": batch_size, "seq_len": seq_len, "vocab_size": vocab_size, "embed_size": embed_size,
             "hidden_size": hidden_size, "num_layers": num_layers}
    measured = {"shape": shape, "gemm": gemm, "step_gemm": step_gemm_throughput(batch_size, hidden_size),
                "bandwidth": read_bandwidth(step_bytes["fp32"]), "tokens": batch_size * seq_len,
                "step_flops": dict(zip(("output", "recurrence", "recurrence_sequential"), flops)),
                "generation_step_bytes": step_bytes, "cpu": tuning.cpu_name(), "cpus": os.cpu_count(),
                "torch": torch.__version__, "load_average": tuning.load_average()}
    return _with_ceilings(measured)


def best_of(measurements: list[dict]) -> dict:
    """Several measure_ceilings() results of one shape (taken at different moments of a run) as one: each
    throughput the best measured, and the ceilings those allow. A machine whose speed drifts during a run (a
    shared host) is then held to the best it showed, not to whichever moment one measurement happened to catch."""
    best = max(measurements, key=lambda m: m["bandwidth"]["bytes_per_s"])
    out = {**measurements[0], "bandwidth": best["bandwidth"], "measurements": len(measurements),
           "load_average": max((m["load_average"] for m in measurements if m.get("load_average") is not None),
                               default=None)}
    out["gemm"] = {p: max((m["gemm"][p] for m in measurements), key=lambda g: g["flop_per_s"])
                   for p in measurements[0]["gemm"]}
    out["step_gemm"] = max((m["step_gemm"] for m in measurements), key=lambda g: g["flop_per_s"])
    return _with_ceilings(out)


def remeasurer(ceilings: dict, what: str) -> Callable[[], dict]:
    """A callable that measures again, now, the part of `ceilings` (a measure_ceilings or best_of result) that
    bounds `what` ("train": the GEMM throughputs; "generate": the read bandwidth) on the library and thread count
    that won there, each the fastest of a few calls (rnnlm.tuning.time_candidates), and returns `ceilings` with
    those figures and the ceilings they allow: what one round of paired_fraction compares with."""
    shape = ceilings["shape"]
    if what == "train":
        rows = min(shape["batch_size"] * shape["seq_len"], GEMM_ROWS)
        dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
        works = {("gemm", p): (_by(g["by"], _gemm_work(rows, shape["hidden_size"], shape["vocab_size"], dtypes[p])),
                               g["flops"]) for p, g in ceilings["gemm"].items()}
        step = ceilings["step_gemm"]
        works[("step_gemm", None)] = (_by(step["by"], _step_gemm_work(shape["batch_size"], shape["hidden_size"])),
                                      step["flops"])
    elif what == "generate":
        bw = ceilings["bandwidth"]
        buf = torch.ones(bw["bytes"] // 4)
        works = {("bandwidth", None): (_by(bw["by"], lambda _: buf.sum), bw["bytes"])}
    else:
        raise ValueError(f"what must be 'train' or 'generate', got {what!r}")

    def measure() -> dict:
        out = {**ceilings, "gemm": dict(ceilings["gemm"])}
        for (part, precision), (fn, amount) in works.items():
            rate = amount / tuning.time_candidates({part: fn}, budget_s=0.0)[part]
            if part == "gemm":
                out["gemm"][precision] = {**out["gemm"][precision], "flop_per_s": rate}
            else:
                out[part] = {**out[part], "bytes_per_s" if part == "bandwidth" else "flop_per_s": rate}
        return _with_ceilings(out)

    return measure


def paired_fraction(ours: Callable[[], object], allowed_s: Callable[[], float],
                    rounds: int = PAIRED_ROUNDS) -> dict:
    """Our fraction of a ceiling with the host's drift taken out (module docstring): `rounds` times, one timed call
    of ours() (a unit of our work; one untimed call first) and at once allowed_s(), the seconds the ceiling allows
    that unit, measured anew. {"fraction": the median of allowed / ours over the rounds, "fractions" (sorted),
    "ours_s", "allowed_s" (medians), "rounds"}."""
    ours()
    took, allowed = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        ours()
        took.append(time.perf_counter() - t0)
        allowed.append(allowed_s())
    fractions = sorted(a / t for a, t in zip(allowed, took))
    return {"fraction": statistics.median(fractions), "fractions": fractions, "ours_s": statistics.median(took),
            "allowed_s": statistics.median(allowed), "rounds": rounds}


def _by(by: str, work):
    """work(library) on the thread count of a "library@threads" name."""
    library, threads = by.rsplit("@", 1)
    return _on_threads(work(library), int(threads))


def _with_ceilings(measured: dict) -> dict:
    """measured plus train_tokens_per_s and generate_tokens_per_s (the module docstring's formulas)."""
    flops, gemm = measured["step_flops"], measured["gemm"]
    sequential = flops["recurrence_sequential"]
    recurrence_s = ((flops["recurrence"] - sequential) / gemm["fp32"]["flop_per_s"]
                    + sequential / measured["step_gemm"]["flop_per_s"])
    train = {p: measured["tokens"] / (flops["output"] / g["flop_per_s"] + recurrence_s) for p, g in gemm.items()}
    generate = {p: measured["bandwidth"]["bytes_per_s"] / b for p, b in measured["generation_step_bytes"].items()}
    return {**measured, "train_tokens_per_s": train, "generate_tokens_per_s": generate}


def _on_threads(fn, threads: int):
    def call():
        with tuning.torch_threads(threads):
            fn()
    return call
