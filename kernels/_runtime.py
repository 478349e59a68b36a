"""How Triton runs on this machine, decided once, before any kernel is defined.

With no CUDA device, rnnlm's kernels run in Triton's interpreter: TRITON_INTERPRET=1 must be in the
environment when a @triton.jit function is decorated (Triton reads it then), so this module sets it before
any kernel module is imported. The interpreter runs programs one after another and costs a fixed amount
per Triton operation, which is why launchers choose the largest tiles when INTERPRETED is true.
"""
from __future__ import annotations

import logging
import os
import sys

import torch

log = logging.getLogger("rnnlm.kernels")

# RNNLM_KERNELS_COMPILE_ONLY=1 keeps real JIT functions on a machine with no GPU: the compile report
# (kernels/compile_report.py) runs in such a subprocess to build GPU code it never launches.
COMPILE_ONLY: bool = os.environ.get("RNNLM_KERNELS_COMPILE_ONLY") == "1"

if not torch.cuda.is_available() and not COMPILE_ONLY:
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        # triton.language's own helpers were then built for a GPU, and interpreted kernels that call them fail.
        log.warning("triton was imported before rnnlm's kernels on a machine with no GPU: import rnnlm (or "
                    "kernels) first, or set TRITON_INTERPRET=1 in the environment")
    os.environ["TRITON_INTERPRET"] = "1"
# Triton 3.9 warns on every compile unless the FMA-fusion default is chosen explicitly; keep fusion on.
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

INTERPRETED: bool = os.environ.get("TRITON_INTERPRET") == "1"

_announced = False


def announce_interpreter_once() -> None:
    """Called by every launcher: in the interpreter, logs that once per process, warns about a Triton/NumPy pair
    that cannot work (interpreter_incompatibility) and limits OpenBLAS."""
    global _announced
    if INTERPRETED and not _announced:
        _announced = True
        log.info("triton: no CUDA device, kernels run in Triton's interpreter (TRITON_INTERPRET=1)")
        problem = interpreter_incompatibility()
        if problem:
            log.warning(problem)
        limit_interpreter_blas_threads()


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("+")[0].split(".")[:2] if part.isdigit())


def interpreter_incompatibility(triton_version: str | None = None, numpy_version: str | None = None) -> str | None:
    """Triton 3.5 and 3.6's interpreter turns a loop bound into a Python int with int() of a one-element 1-D numpy
    array, which NumPy 2.4 refuses (deprecated since 1.25): every kernel with a runtime loop bound then fails with
    "only 0-dimensional arrays can be converted to Python scalars" (Triton 3.9's interpreter squeezes the array
    first; both checked by running the kernel tests). Returns the warning to give, or None."""
    import numpy
    import triton

    tv, nv = _version(triton_version or triton.__version__), _version(numpy_version or numpy.__version__)
    if tv < (3, 9) and nv >= (2, 4):
        return (f"Triton {triton_version or triton.__version__}'s interpreter cannot run rnnlm's kernels with NumPy "
                f"{numpy_version or numpy.__version__} (int() of one-element arrays, refused since NumPy 2.4): "
                f"install triton>=3.9 or numpy<2.4")
    return None


def limit_interpreter_blas_threads() -> None:
    """In the interpreter, make numpy's BLAS single-threaded (process-wide).

    The interpreter runs tl.dot as numpy.matmul. numpy's OpenBLAS worker threads busy-wait after each call
    and torch's OpenMP threads do the same after each torch op; alternating the two on a 2-core machine
    made a (64, 512) x (512, 512) product take ~40-65 ms instead of ~1 ms. One BLAS thread (the caller)
    removes the fight; torch keeps all cores for its own GEMMs (its BLAS is not numpy's)."""
    if INTERPRETED:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1, user_api="blas")


def runtime_description() -> dict:
    """Versions and mode, recorded by the benchmarks and the report."""
    import triton

    return {
        "torch": torch.__version__,
        "triton": triton.__version__,
        "triton_interpreted": INTERPRETED,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }
