"""The NaN guard: a step whose loss or gradient norm is NaN or infinite stops training before the optimizer
applies it, and a validation whose loss is NaN or infinite stops it before anything is saved, so best.pt and
last.pt keep the last finite model."""
from __future__ import annotations

import math

import torch


class NonFiniteError(Exception):
    """The loss or gradient norm of a step is NaN or infinite."""


def check_finite(loss: torch.Tensor, grad_norm: torch.Tensor, step: int) -> None:
    """NonFiniteError naming the step unless loss and grad_norm are finite (one host sync: free on the CPU)."""
    if not bool(torch.isfinite(loss + grad_norm)):
        raise NonFiniteError(f"step {step}: the loss is {float(loss):.4g} and the gradient norm {float(grad_norm):.4g}")


def check_finite_validation(mean_loss: float, step: int) -> None:
    """NonFiniteError unless the validation loss measured after `step` is finite (an overflowing perplexity of a
    finite loss is not an error: it is reported as inf)."""
    if not math.isfinite(mean_loss):
        raise NonFiniteError(f"the validation after step {step}: the mean loss is {mean_loss:.4g}")
