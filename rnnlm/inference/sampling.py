"""Sampling settings and the torch draw: one check of the settings, one top-k / top-p filter, one draw.

The draw is an inverse CDF: softmax(z / T), its cumulative sum, and a binary search (torch.searchsorted) for a
uniform u per row, on the logits' device. torch.softmax, not exp: ATen's vectorised exp splits even a
10,000-element row across threads, and waking a second thread for every word costs more than the exp. The
cumulative sum is searched for u · (its total, 1 up to rounding); the first index whose cumulative mass exceeds
it never has probability 0 (a −inf logit). Below SHIFT_BELOW the row maximum is subtracted before dividing by T,
so that z / T cannot overflow; temperatures are floored at MIN_TEMPERATURE, where the logit gaps divided by T
underflow anyway and the draw is the argmax (ties at random).

top-k keeps the k largest logits (and any tied with the k-th); top-p keeps the smallest set of the most likely
words whose probability reaches p (at least one word), computed on the logits it is given.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from rnnlm.errors import UsageError

MIN_TEMPERATURE = 1e-30
SHIFT_BELOW = 1e-3


@dataclass(frozen=True)
class Sampling:
    """How each word is drawn: temperature sampling, optionally among the top-k / top-p words, or greedy."""

    temperature: float = 1.0
    greedy: bool = False
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        if self.temperature == 0:  # temperature 0 is greedy decoding
            object.__setattr__(self, "greedy", True)
        check_sampling(self.temperature, self.greedy, self.top_k, self.top_p)

    @property
    def filtered(self) -> bool:
        return self.top_k is not None or self.top_p is not None

    @property
    def effective_temperature(self) -> float:
        return max(float(self.temperature), MIN_TEMPERATURE)

    @property
    def inv_temperature(self) -> float:
        return 1.0 / self.effective_temperature

    @property
    def shift(self) -> bool:
        """Subtract the row maximum before scaling (a temperature so low that z / T could overflow)."""
        return self.effective_temperature < SHIFT_BELOW


def check_sampling(temperature: float, greedy: bool, top_k: int | None, top_p: float | None) -> None:
    """UsageError for settings that mean nothing (a temperature is checked unless greedy)."""
    if not greedy:
        if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) \
                or not math.isfinite(temperature) or temperature <= 0:
            raise UsageError(f"{{temperature}} must be a finite number > 0, got {temperature}; for argmax decoding "
                             f"use {{greedy}}", params=("temperature", "greedy"))
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1):
        raise UsageError(f"{{top_k}} must be an integer >= 1, got {top_k}", params=("top_k",))
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, numbers.Real)
                              or not math.isfinite(top_p) or not 0.0 < top_p <= 1.0):
        raise UsageError(f"{{top_p}} must be in (0, 1], got {top_p}", params=("top_p",))


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """logits (N, V) with every word outside the top-k / top-p set at -inf (a new tensor if filtered)."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (N, 1) the k-th largest logit
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = probs.cumsum(-1) - probs  # probability of the words ranked strictly above each word
        drop_sorted = mass_before >= top_p  # the first word always has mass_before == 0, so it stays
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def draw(logits: torch.Tensor, inv_temperature: float, shift: bool, u: torch.Tensor, out: torch.Tensor) -> None:
    """out (N, 1) <- one draw per row of softmax(logits · inv_temperature), u (N, 1) uniform in [0, 1)."""
    z = logits - logits.amax(dim=-1, keepdim=True) if shift else logits
    cdf = torch.softmax(z * inv_temperature, dim=-1).cumsum_(dim=-1)  # (N, V)
    torch.searchsorted(cdf, u * cdf[:, -1:], right=True, out=out)
    out.clamp_(max=logits.shape[-1] - 1)


def sample_torch(logits: torch.Tensor, temperature: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row of softmax(logits / temperature): (N, V) -> (N,) int64, with torch ops on logits' device."""
    sampling = Sampling(temperature=temperature)
    n = logits.shape[0]
    u = torch.rand((n, 1), generator=generator, device=logits.device, dtype=torch.float32)
    out = torch.empty((n, 1), dtype=torch.int64, device=logits.device)
    draw(logits.float(), sampling.inv_temperature, sampling.shift, u, out)
    return out.view(-1)
