"""The NaN guard: a step whose loss or gradient norm is NaN or infinite is not applied, nor is any step after it,
and training stops with an error naming that step, so best.pt and last.pt keep the last finite model.

The guard lives on the device, so that a training step never waits for the GPU: each step adds its finite check
to device tensors (no host read) and gets back `halted`, a 0-d float32 flag that is 1 from the first non-finite
step on; the optimizer turns that step, and every later one, into a no-op on the device (TrainStep: fused Adam's
found_inf). check(), called by the trainer when it logs (before it evaluates or saves), reads the guard with one
host read and raises NonFiniteError naming the first non-finite step, its loss and its gradient norm.
A validation whose loss is NaN or infinite stops training before anything is saved (check_finite_validation).
"""
from __future__ import annotations

import math

import torch


class NonFiniteError(Exception):
    """The loss or gradient norm of a step is NaN or infinite."""


class NanGuard:
    """The first non-finite step, kept on `device`: record() per step (no host read), check() when logging."""

    def __init__(self, device: torch.device | str):
        self.halted = torch.zeros((), dtype=torch.float32, device=device)  # 1.0 from the first non-finite step on
        self.first = torch.zeros(3, dtype=torch.float64, device=device)    # (step, loss, grad norm) of that step

    def record(self, loss: torch.Tensor, grad_norm: torch.Tensor, step: int) -> torch.Tensor:
        """Adds the step numbered `step` (0-d loss and gradient norm) without a host read; returns `halted`."""
        nonfinite = ~torch.isfinite(loss + grad_norm)
        first = nonfinite & (self.halted == 0)
        row = torch.stack((torch.full((), float(step), dtype=torch.float64, device=self.first.device),
                           loss.to(torch.float64), grad_norm.to(torch.float64)))
        self.first = torch.where(first, row, self.first)
        self.halted.masked_fill_(nonfinite, 1.0)
        return self.halted

    def check(self) -> None:
        """NonFiniteError naming the first non-finite step recorded, if there was one (one host read)."""
        halted, step, loss, norm = torch.cat((self.halted.to(torch.float64).view(1), self.first)).tolist()
        if halted:
            raise NonFiniteError(f"step {int(step)}: the loss is {loss:.4g} and the gradient norm {norm:.4g}")


def check_finite_validation(mean_loss: float, step: int) -> None:
    """NonFiniteError unless the validation loss measured after `step` is finite (an overflowing perplexity of a
    finite loss is not an error: it is reported as inf)."""
    if not math.isfinite(mean_loss):
        raise NonFiniteError(f"the validation after step {step}: the mean loss is {mean_loss:.4g}")
