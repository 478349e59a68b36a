"""--deterministic: torch's deterministic switches for the length of a run.

On CUDA: cuBLAS needs CUBLAS_WORKSPACE_CONFIG set before it makes its first handle (the run's first matmul), so
it is set on entry, before the run builds its model on the device; if CUDA was already in use in this process
(a Python caller), the setting may come too late for cuBLAS and a warning says so. rnnlm's own ops avoid the ops
that have no deterministic CUDA kernel (the fused output layer's one-hot is a gather and a scatter_, not a
scatter_add_), and torch.use_deterministic_algorithms runs with warn_only on CUDA: an op of torch's without a
deterministic CUDA implementation (a torch version or a code path not seen here) warns, naming itself, instead of
stopping the run. On the CPU such an op raises (none runs in rnnlm's steps there).
"""
from __future__ import annotations

import contextlib
import logging
import os

import torch

log = logging.getLogger("rnnlm.train")

CUBLAS_WORKSPACE = ":4096:8"  # one of the two settings cuBLAS documents as deterministic
DETERMINISTIC_HELP = (
    "reproducible runs: torch.use_deterministic_algorithms(True), cuDNN deterministic with benchmarking off, "
    f"CUBLAS_WORKSPACE_CONFIG={CUBLAS_WORKSPACE}; an op with no deterministic implementation then raises on the "
    "CPU, and on CUDA warns, naming itself, instead of stopping the run. Two runs with the same seed and options "
    "give identical losses on the same machine. Not made "
    "deterministic: where --time-budget stops (it depends on the clock), and results across a different "
    "number of CPU threads, another machine, or other torch/MKL/oneDNN/CUDA versions (their summation order "
    "differs)")


def _on_cuda(device) -> bool:
    """Whether a run on `device` (None: CUDA when there is one) uses CUDA."""
    if device is None:
        return torch.cuda.is_available()
    return str(device).split(":")[0] == "cuda"  # not torch.device(): a bad name is resolve_device's to report


@contextlib.contextmanager
def deterministic_mode(enabled: bool, device: str | torch.device | None = None):
    """torch's deterministic switches on for the block, restored afterwards (a run may be one of several in a
    process, as in the tests). device: the run's (None: CUDA when available), which decides warn_only."""
    if not enabled:
        yield
        return
    on_cuda = _on_cuda(device)
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    if "CUBLAS_WORKSPACE_CONFIG" not in os.environ:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
        if on_cuda and torch.cuda.is_initialized():
            log.warning("--deterministic: CUDA was in use before CUBLAS_WORKSPACE_CONFIG was set; cuBLAS may not "
                        "be deterministic in this process (set CUBLAS_WORKSPACE_CONFIG=%s before starting it)",
                        CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True, warn_only=on_cuda)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]
