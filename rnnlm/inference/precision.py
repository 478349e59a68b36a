"""Which copy of the output layer's weights a generation step reads, and on how many threads: decided here.

A generation step of the default model is dominated by the output layer, a (V × H) matrix times one vector:
its cost is memory traffic, so a smaller copy of W is faster wherever the machine's kernels for it are (torch
backend only):

- "fp32": exact logits;
- "fp16": an fbgemm-packed copy (CPU), half the bytes, logits within about 1e-3 of fp32;
- "int8": an int8 copy (CPU), a quarter of the bytes, and still exact draws from the fp32 softmax through
  rejection sampling (rnnlm.inference.int8_envelope); plain temperature sampling of one sample only, at a
  temperature of at least INT8_MIN_TEMPERATURE (below it too many proposals are rejected: a property of the
  envelope's bound, not of the machine; docs/measurements.md);
- "auto": whichever of those the draw allows runs a step fastest on this machine, timed once at the model's
  shapes (rnnlm.tuning: cached per CPU, torch version and shape); fp32 on a GPU and for greedy decoding, whose
  argmax must be the model's own.

Whether fewer bytes are faster depends on the CPU (an int8 or fp16 kernel can run below the bandwidth that the
fp32 one reaches), and so does whether a second thread pays for a mat-vec, and which library runs the fp32
mat-vecs fastest (torch's BLAS, or numpy's: rnnlm.inference.stepper): the three are timed together, one
candidate per (precision, library, threads), named "fp16@2" (torch) or "fp16/numpy@2", unless given. A thread
count applies to torch and to numpy's BLAS alike.
Greedy, top-k and top-p need every exact logit, so an explicit "int8" becomes "fp32" for them.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, NamedTuple

import torch

from rnnlm import tuning
from rnnlm.checks import one_of
from rnnlm.inference.sampling import Sampling
from rnnlm.inference.stepper import MATVEC_LIBRARIES

OUTPUT_PRECISIONS = ("auto", "fp32", "fp16", "int8")
INT8_MIN_TEMPERATURE = 0.5
TASK = "generation step"
_TIMED_STEPS = 64  # uniforms a timed decoder draws ahead (its steps cycle through them)
# steps per timed call: the candidates take turns (rnnlm.tuning), and each evicts the others' weights from the
# caches, so a single step would be timed cold while a generation runs warm; a burst times mostly warm steps
TIMED_BURST = 16


def output_precision_candidates(requested: str, sampling: Sampling, *, device: torch.device,
                                num_samples: int) -> list[str]:
    """The output precisions that may serve `requested` (one of OUTPUT_PRECISIONS) for these settings."""
    one_of("output precision", requested, OUTPUT_PRECISIONS)
    if requested == "auto":
        if device.type != "cpu" or sampling.greedy:
            return ["fp32"]
        int8 = (num_samples == 1 and not sampling.filtered
                and sampling.effective_temperature >= INT8_MIN_TEMPERATURE)
        return ["fp32", "fp16", "int8"] if int8 else ["fp32", "fp16"]
    if requested == "int8" and (sampling.greedy or sampling.filtered):
        return ["fp32"]
    return [requested]


def choose_output_precision(requested: str, sampling: Sampling, *, device: torch.device, num_samples: int) -> str:
    """The precision used when nothing is timed: the one requested, else fp16 where allowed (half fp32's bytes,
    with a kernel on every x86 torch), else fp32."""
    candidates = output_precision_candidates(requested, sampling, device=device, num_samples=num_samples)
    return "fp16" if "fp16" in candidates else candidates[0]


class StepPlan(NamedTuple):
    """How a generation step runs: the output layer's precision, the library of the fp32 mat-vecs ("torch" or
    "numpy"), and the thread count (torch's and numpy's BLAS; None: as they are)."""

    precision: str
    threads: int | None = None
    matvec: str = "torch"

    @property
    def name(self) -> str:
        """The candidate's name in rnnlm.tuning: "fp16@2", "fp16/numpy@2"."""
        return f"{self.precision}{'/numpy' if self.matvec == 'numpy' else ''}@{self.threads}"

    @classmethod
    def parse(cls, name: str) -> "StepPlan":
        head, _, threads = name.partition("@")
        precision, _, matvec = head.partition("/")
        return cls(precision, None if threads in ("", "None") else int(threads), matvec or "torch")

    @contextlib.contextmanager
    def threads_set(self) -> Iterator[None]:
        """The plan's thread count for torch and (numpy mat-vecs) numpy's BLAS, for the block."""
        blas = self.threads if self.matvec == "numpy" else None
        with tuning.torch_threads(self.threads), tuning.blas_threads(blas):
            yield


def choose_generation_step(model, hidden: torch.Tensor, sampling: Sampling, requested: str, *,
                           threads: int | None = None) -> StepPlan:
    """How to generate from `hidden` (L, N, H): output precision, mat-vec library, threads (None: unchanged).

    Several candidates (auto precision, or threads not given, on a CPU): each runs the backend's real decoding
    step (rnnlm.backends: step and draw) from this state, timed by rnnlm.tuning; else the one candidate (torch's
    mat-vecs).
    """
    device = hidden.device
    num_samples = hidden.shape[1]
    precisions = output_precision_candidates(requested, sampling, device=device, num_samples=num_samples)
    cpu = device.type == "cpu"
    counts = tuning.thread_candidates(threads) if cpu else [threads]
    libraries = MATVEC_LIBRARIES if cpu and hidden.dtype == torch.float32 else ("torch",)
    now = torch.get_num_threads() if threads is None else threads  # untimed: threads as they are
    default = StepPlan(choose_output_precision(requested, sampling, device=device, num_samples=num_samples), now)
    plans = [StepPlan(p, n, lib) for p in precisions for lib in libraries for n in counts]
    if len(plans) == 1 or not model.backend.timed:
        return default._replace(threads=threads)
    candidates = {plan.name: decoding_burst(model, hidden, sampling, plan) for plan in plans}
    cfg = model.config
    shape = (cfg.vocab_size, cfg.embed_size, cfg.hidden_size, cfg.num_layers, num_samples,
             f"T={sampling.effective_temperature:.2g}" if not sampling.greedy else "greedy", sampling.filtered)
    return StepPlan.parse(tuning.choose(TASK, shape, candidates, default=default.name).picked)


def decoding_burst(model, hidden: torch.Tensor, sampling: Sampling, plan: StepPlan):
    """TIMED_BURST decoding steps in a row as `plan` says, as a callable; the decoder is built on the first call.
    (What the choice times for each plan, and what benchmarks/compare_baseline.py pairs with the bandwidth ceiling.)"""
    state: dict = {}

    def step() -> None:
        with plan.threads_set():
            if not state:
                state["decoder"] = model.backend.decoder(model, hidden, sampling, plan.precision, 0, None,
                                                         matvec=plan.matvec)
                state["out"] = torch.zeros(hidden.shape[1], 1, dtype=torch.int64, device=hidden.device)
                state["t"] = 0
            for _ in range(TIMED_BURST):
                state["t"] = state["t"] % (_TIMED_STEPS - 1) + 1
                state["decoder"].next(state["out"].view(-1), state["t"], state["out"])
            if hidden.device.type == "cuda":
                torch.cuda.synchronize(hidden.device)

    return step
