"""rnnlm: word-level RNN language models on Chinese text (jieba words), with a `cudnn` backend
(torch.nn.RNN) and a `triton` backend (rnnlm's own kernels, package `kernels`)."""

# Decide how Triton runs (its interpreter when there is no CUDA device) before anything imports triton:
# creating a torch.optim optimizer does, and triton.language's own helpers are built for the mode in force
# at that first import. kernels._runtime imports torch only, not triton.
from kernels import _runtime as _triton_runtime  # noqa: F401

__version__ = "0.1.0"
