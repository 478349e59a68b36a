"""One training step, as `python -m rnnlm.train` runs it and the benchmarks time it.

zero the gradients (set to None) -> the model's training loss (rnnlm.backends: the fused output layer + loss on
the torch backend) under autocast for --precision bf16 -> backward -> clip the global gradient norm (foreach)
-> the NaN guard -> fused Adam. No .item() per step except the guard's finite check (free on the CPU).

keep_freed_memory() is for the process that runs these steps: each step allocates several tensors of 25-50 MB
(the default model's logits and gradients), and glibc would hand them back to the kernel after every step and
page-fault them in again on the next; with it, freed buffers stay mapped and are reused.
"""
from __future__ import annotations

import ctypes
import math
import sys

import torch

from rnnlm.errors import UsageError
from rnnlm.training.nan_guard import check_finite

PRECISIONS = ("fp32", "bf16", "auto")  # what runs is chosen by rnnlm.training.speed


def keep_freed_memory() -> None:
    """glibc: serve large allocations from the heap and never trim it (a no-op elsewhere)."""
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 1 << 30)
        libc.mallopt(m_trim_threshold, 1 << 31)
    except (OSError, AttributeError):  # not glibc: keep the allocator's defaults
        pass


def make_optimizer(params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """Adam, fused where this torch and device have it, else foreach."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=lr, foreach=True)


def compute_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype of the output layer's products for --precision (None: the parameters' own, fp32)."""
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UsageError("{precision} bf16 needs a GPU with bf16 support; use {precision} fp32",
                         params=("precision",))
    return torch.bfloat16 if precision == "bf16" else None


class TrainStep:
    """Callable: step(x, y, hidden, number) -> (loss, detached 0-d; new hidden state, attached)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, clip: float, precision: str,
                 device: torch.device):
        self.model, self.optimizer = model, optimizer
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.max_norm = clip if clip > 0 else math.inf
        self.compute_dtype = compute_dtype(precision, device)
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.compute_dtype is not None)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, hidden: torch.Tensor | None, number: int):
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast:
            loss, new_hidden = self.model(x, hidden, targets=y, compute_dtype=self.compute_dtype)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_norm, foreach=True)
        loss = loss.detach()
        check_finite(loss, norm, number)   # before the optimizer applies anything
        self.optimizer.step()
        return loss, new_hidden
