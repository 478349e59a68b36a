"""--deterministic: torch's deterministic switches for the length of a run."""
from __future__ import annotations

import contextlib
import os

import torch

DETERMINISTIC_HELP = (
    "reproducible runs: torch.use_deterministic_algorithms(True), cuDNN deterministic with benchmarking off, "
    "CUBLAS_WORKSPACE_CONFIG=:4096:8; an op with no deterministic implementation then raises instead of "
    "running. Two runs with the same seed and options give identical losses on the same machine. Not made "
    "deterministic: where --time-budget stops (it depends on the clock), and results across a different "
    "number of CPU threads, another machine, or other torch/MKL/oneDNN/CUDA versions (their summation order "
    "differs)")


@contextlib.contextmanager
def deterministic_mode(enabled: bool):
    """torch's deterministic switches on for the block, restored afterwards (a run may be one of several in a
    process, as in the tests)."""
    if not enabled:
        yield
        return
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]
