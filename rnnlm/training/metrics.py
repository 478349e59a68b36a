"""What training reports between evaluations: the mean loss and tokens/s of the steps since the last report."""
from __future__ import annotations

import time

import torch

from rnnlm.evaluation import perplexity  # noqa: F401  (exp(loss), inf where that overflows; used by the trainer)


class TrainingWindow:
    """The steps since the last report: their summed loss (float64 on the device: no sync per step) and tokens."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.steps, self.tokens, self.started = 0, 0, time.perf_counter()

    def add(self, loss: torch.Tensor, tokens: int) -> None:
        self.loss_sum += loss
        self.steps += 1
        self.tokens += tokens

    def summary(self, dist=None) -> tuple[float, float]:
        """(mean loss, tokens/s) of the window; call only when it has steps. With `dist` (a
        rnnlm.training.distributed.Distributed, every rank calling): the mean over the ranks and their tokens."""
        loss_sum, tokens = self.loss_sum, self.tokens
        if dist is not None and dist.active:
            loss_sum, tokens = dist.mean(loss_sum), tokens * dist.world_size
        return float(loss_sum) / self.steps, tokens / max(time.perf_counter() - self.started, 1e-9)
