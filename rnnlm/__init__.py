"""rnnlm: word-level RNN language models on Chinese text (jieba words), with a `torch` backend (torch.nn.RNN:
cuDNN on a GPU, ATen on a CPU) and a `triton` backend (rnnlm's own kernels, package `kernels`).

The Python API, in three lines:

    import rnnlm
    rnnlm.fit(rnnlm.TrainConfig(data="my.txt", out="runs/a", max_steps=200))   # train from a config
    lm = rnnlm.load("runs/a/best.pt")                                           # load a checkpoint
    print(lm.generate("我们", length=30, seed=0), lm.perplexity("我们的祖国充满希望。"))

The command lines are `python -m rnnlm.train`, `rnnlm.evaluate`, `rnnlm.generate` and `rnnlm.report`.
"""

# Decide how Triton runs (its interpreter when there is no CUDA device) before anything imports triton:
# creating a torch.optim optimizer does, and triton.language's own helpers are built for the mode in force
# at that first import. kernels._runtime imports torch only, not triton.
from kernels import _runtime as _triton_runtime  # noqa: F401, I001  (must come first)

from rnnlm.api import LanguageModel, load
from rnnlm.model import ModelConfig, WordRNN
from rnnlm.training.config import TrainConfig
from rnnlm.training.trainer import TrainResult, fit

__version__ = "0.1.0"
__all__ = ["LanguageModel", "ModelConfig", "TrainConfig", "TrainResult", "WordRNN", "fit", "load"]
