"""rnnlm: word-level RNN language models on Chinese text (jieba words), with a `torch` backend (torch.nn.RNN:
cuDNN on a GPU, ATen on a CPU) and a `triton` backend (rnnlm's own kernels, package `kernels`).

The Python API, in three lines:

    import rnnlm
    rnnlm.fit(rnnlm.TrainConfig(data="my.txt", out="runs/a", max_steps=200))   # train from a config
    lm = rnnlm.load("runs/a/best.pt")                                           # load a checkpoint
    print(lm.generate("我们", length=30, seed=0), lm.perplexity("我们的祖国充满希望。"))

The command lines are `python -m rnnlm.train`, `rnnlm.evaluate`, `rnnlm.generate` and `rnnlm.report`.

The names above are imported on first use: `import rnnlm.model` (the model, its backends, generating ids) must work
on a GPU image that has torch and triton but not the tokenizer and plotting packages (jieba, tqdm, matplotlib).
"""
from __future__ import annotations

import importlib
import sys as _sys
from typing import Any

if _sys.argv[:1] == ["-m"]:  # `python -m rnnlm.<command>` (argv[0] is "-m" while the package is imported): Ctrl-C
    from rnnlm.errors import quiet_interrupts_while_starting  # during the imports below ends in one line

    quiet_interrupts_while_starting()

# Decide how Triton runs (its interpreter when there is no CUDA device) before anything imports triton:
# creating a torch.optim optimizer does, and triton.language's own helpers are built for the mode in force
# at that first import. kernels._runtime imports torch only, not triton.
from kernels import _runtime as _triton_runtime  # noqa: F401  (must come first)

__version__ = "0.1.0"
_EXPORTS = {"LanguageModel": "rnnlm.api", "load": "rnnlm.api", "ModelConfig": "rnnlm.model", "WordRNN": "rnnlm.model",
            "TrainConfig": "rnnlm.training.config", "TrainResult": "rnnlm.training.trainer",
            "fit": "rnnlm.training.trainer"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rnnlm' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
