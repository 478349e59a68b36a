"""rnnlm's Triton kernels: the fused recurrence and the fused softmax / sampling / cross-entropy.

One op per module, each with its documented public function and a plain PyTorch reference beside it:

    from kernels.rnn import rnn, rnn_step, rnn_reference
    from kernels.softmax import softmax
    from kernels.sample import sample
    from kernels.cross_entropy import cross_entropy
    from kernels import DeviceChecks   # deferred checks: cross_entropy(..., checks=), sample(..., checks=)

Importing this package only settles how Triton runs (kernels._runtime: the interpreter when there is no CUDA
device); it imports no op, so `rnnlm` imports it first, before torch.optim (which imports triton) or anything
else can. DeviceChecks (kernels._utils, which imports triton) is loaded on first use.
"""
from kernels import _runtime  # noqa: F401  (must run before any @triton.jit is decorated)
from kernels._runtime import INTERPRETED, runtime_description

__all__ = ["INTERPRETED", "runtime_description", "DeviceChecks"]


def __getattr__(name: str):
    if name == "DeviceChecks":
        from kernels._utils import DeviceChecks

        return DeviceChecks
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
