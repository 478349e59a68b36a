"""One training step, as `python -m rnnlm.train` runs it and the benchmarks time it.

zero the gradients (set to None) -> the model's training loss (rnnlm.backends: the fused output layer + loss on
the torch backend) under autocast for --precision bf16 -> backward -> clip the global gradient norm (foreach)
-> the NaN guard -> fused AdamW. Nothing is read back to the host: the NaN guard (rnnlm.training.nan_guard) and the
kernels' checks (bad targets: the backend's DeviceChecks) count on the device, fused Adam skips a step the guard
halted through its found_inf flag, and the caller reads them with check() when it logs. (An optimizer without
found_inf, not fused, costs one host read per step: the guard's flag, to skip its step() on the host.)

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
from rnnlm.training.nan_guard import NanGuard, NonFiniteError

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


def make_optimizer(params: list[torch.nn.Parameter], lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """AdamW, fused where this torch and device have it, else foreach. The decoupled weight decay applies to
    matrices only (dim >= 2: embedding, W_ih, W_hh, output weights), never to biases; torch multiplies it by the
    current lr, so the decay follows the schedule. weight_decay 0: one group, the same steps as Adam."""
    groups: list = list(params)
    if weight_decay > 0:
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    try:
        return torch.optim.AdamW(groups, lr=lr, weight_decay=0.0, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=lr, weight_decay=0.0, foreach=True)


def compute_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype of the output layer's products for --precision (None: the parameters' own, fp32)."""
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UsageError("{precision} bf16 needs a GPU with bf16 support; use {precision} fp32",
                         params=("precision",))
    return torch.bfloat16 if precision == "bf16" else None


def step_unless(optimizer: torch.optim.Optimizer, halted: torch.Tensor) -> None:
    """optimizer.step(), a no-op where halted (0-d float32 on the parameters' device) is 1: on the device for a
    fused optimizer (its found_inf: parameters, moments and step counts left as they were), else by reading the
    flag (one host read)."""
    if optimizer.defaults.get("fused"):
        optimizer.grad_scale, optimizer.found_inf = None, halted
        optimizer.step()
    elif not halted.item():
        optimizer.step()


class TrainStep:
    """Callable: step(x, y, hidden, number) -> (loss, detached 0-d; new hidden state, attached). check() raises
    NonFiniteError for the first non-finite step since the start (a step never applied, nor any after it)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, clip: float, precision: str,
                 device: torch.device, finite_check=None):
        # finite_check(loss, norm, number): raises at once (rnnlm.training.distributed's on several processes: all
        # ranks agree on the step and name the rank); None: the device-side guard alone, read by check()
        self.model, self.optimizer, self.finite_check = model, optimizer, finite_check
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.max_norm = clip if clip > 0 else math.inf
        self.compute_dtype = compute_dtype(precision, device)
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.compute_dtype is not None)
        where = self.params[0].device  # with its index: the device the step's tensors are on
        self.guard = NanGuard(where)
        self.checks = getattr(model, "module", model).backend.device_checks(where)  # (a wrapper's .module)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, hidden: torch.Tensor | None, number: int):
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast:
            loss, new_hidden = self.model(x, hidden, targets=y, compute_dtype=self.compute_dtype, checks=self.checks)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_norm, foreach=True)
        loss = loss.detach()
        halted = self.guard.record(loss, norm, number)   # before the optimizer applies anything
        if self.finite_check is not None:  # several processes: every rank stops at this step (one read a step)
            self.finite_check(loss, norm, number)
        step_unless(self.optimizer, halted)
        return loss, new_hidden

    def check(self) -> None:
        """NonFiniteError naming the first non-finite step, if any (one host read); its message adds what the
        kernels' device checks counted (bad targets give NaN losses), read only on that path."""
        try:
            self.guard.check()
        except NonFiniteError as err:
            if self.checks is not None:
                try:
                    self.checks.check()
                except ValueError as cause:
                    raise NonFiniteError(f"{err} ({cause})") from None
            raise
