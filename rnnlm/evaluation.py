"""Perplexity computed exactly: every target of a token sequence predicted once, from all the tokens before it.

perplexity = exp(sum of the negative log-likelihoods of every target / number of targets). A sequence of N tokens
has N - 1 targets. It is cut into B contiguous streams of S = (N - 1) // B targets, read window by window with the
hidden state carried from one window to the next, and the r = (N - 1) - B*S targets left at the end continue the
last stream (its state carried over) as a batch of one. Sums are accumulated in float64, so the result is a ratio
of totals, never a mean of batch means. With batch_size 1 the whole sequence is one stream.

The sum stays on the device until the end (one host read for the whole evaluation, not one per window), and the
backend's deferred checks (a target outside the vocabulary) are read only when that sum is not finite.

shard=(rank, world) (evaluation split across the processes of a run): this process reads only its contiguous
share of the B streams (the last share also the leftover targets) and returns its partial sums; summed over the
ranks in float64 (rnnlm.training.distributed) they cover the same targets, each once, as one process does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rnnlm.checks import positive_int
from rnnlm.errors import UsageError
from rnnlm.model import WordRNN

WINDOW = 128  # time steps per forward; the result does not depend on it (the state is carried exactly)


def perplexity(mean_nll: float) -> float:
    """exp(mean_nll): inf where that overflows (a loss over ~709.78 nats), NaN for a NaN loss."""
    try:
        return math.exp(mean_nll)
    except OverflowError:
        return math.inf


def describe_perplexity(ppl: float, mean_nll: float, digits: int = 2) -> str:
    """The perplexity as printed: `123.45`; `inf (mean loss 812.3 nats)` when it overflows or is not finite, and
    `3.1e+229 (mean loss 528.1 nats)` when it is absurdly large."""
    if math.isfinite(ppl) and ppl < 1e7:
        return f"{ppl:.{digits}f}"
    shown = f"{ppl:.4g}" if math.isfinite(ppl) else str(ppl)
    return f"{shown} (mean loss {mean_nll:.6g} nats)"


@dataclass
class EvalResult:
    perplexity: float
    nll_sum: float  # total negative log-likelihood (nats), float64
    n_targets: int  # tokens predicted: N - 1 for a sequence of N
    oov_rate: float | None = None  # fraction of the tokens that are <unk> (set by callers that know the vocabulary)

    @property
    def mean_nll(self) -> float:
        return self.nll_sum / self.n_targets


def _stream_nll(model: WordRNN, x: torch.Tensor, y: torch.Tensor, hidden: torch.Tensor | None, window: int,
                total: torch.Tensor, checks) -> torch.Tensor:
    """total (0-d float64 on the device) += the NLL over x, y (B, S), read window by window with the state
    carried, without a host read; returns the final hidden state."""
    for start in range(0, x.shape[1], window):
        loss, hidden = model.loss(x[:, start:start + window], y[:, start:start + window], hidden, reduction="sum",
                                  checks=checks)
        total += loss  # in float64, as a host double would add it
    return hidden


def evaluate_tokens(model: WordRNN, tokens: torch.Tensor, batch_size: int = 16, window: int = WINDOW, *,
                    shard: tuple[int, int] = (0, 1)) -> EvalResult:
    """Exact perplexity of `model` on the 1-D int64 token ids `tokens` (every one of the N - 1 targets once).

    Runs in eval mode under torch.inference_mode on the model's device and backend, in the parameters' dtype
    (no autocast); the model's training flag is restored afterwards.
    """
    tokens = torch.as_tensor(tokens)
    if tokens.dim() != 1:
        raise ValueError(f"tokens must be 1-D, got shape {tuple(tokens.shape)}")
    n = tokens.numel()
    if n < 2:
        raise UsageError(f"cannot measure perplexity on {n} token(s): at least 2 are needed (one to predict)")
    positive_int("batch_size", batch_size)
    device = model.fc.weight.device
    tokens = tokens.to(device=device, dtype=torch.int64)
    n_targets = n - 1
    b = min(int(batch_size), n_targets)
    s = n_targets // b
    rest = n_targets - b * s
    rank, world = shard
    rows = slice(rank * b // world, (rank + 1) * b // world)   # this shard's streams (all of them in one process)
    mine = rows.stop - rows.start
    was_training = model.training
    model.eval()
    checks = model.backend.device_checks(device)
    try:
        with torch.inference_mode(), torch.autocast(device.type, enabled=False):
            nll = torch.zeros((), dtype=torch.float64, device=device)
            x = tokens[: b * s].view(b, s)[rows]
            y = tokens[1: b * s + 1].view(b, s)[rows]
            hidden = _stream_nll(model, x, y, None, window, nll, checks) if mine else None
            if rest and rank == world - 1:
                # The leftover targets follow the last stream: continue it from its final state.
                xr = tokens[b * s: n - 1].view(1, rest)
                yr = tokens[b * s + 1:].view(1, rest)
                _stream_nll(model, xr, yr, hidden[:, -1:].contiguous(), window, nll, checks)
            total = float(nll)  # the evaluation's one host read
            if checks is not None and not math.isfinite(total):
                checks.check()  # ValueError naming a target outside the vocabulary (their losses are NaN)
    finally:
        model.train(was_training)
    if world > 1:  # partial sums: the perplexity is the caller's, from the totals over every shard
        mine_targets = mine * s + (rest if rank == world - 1 else 0)
        return EvalResult(perplexity=math.nan, nll_sum=total, n_targets=mine_targets)
    return EvalResult(perplexity=perplexity(total / n_targets), nll_sum=total, n_targets=n_targets)

