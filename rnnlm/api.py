"""The Python API: a trained model with its vocabulary and tokenizer, ready to generate text and measure perplexity.

    import rnnlm
    lm = rnnlm.load("runs/a/best.pt")
    print(lm.generate("我们", length=30, seed=0), lm.perplexity("我们的祖国充满希望。"))

`rnnlm.train(rnnlm.TrainConfig(...))` trains one (rnnlm.training.trainer.train).
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import torch

from rnnlm.checkpoint import load_checkpoint, model_from_checkpoint
from rnnlm.data import SPLITS, load_corpus, oov_rate, split_corpus, tokenize_text
from rnnlm.errors import UsageError
from rnnlm.evaluation import EvalResult, evaluate_tokens
from rnnlm.inference.text import generate

log = logging.getLogger("rnnlm")


def load(path: str | os.PathLike, backend: str | None = None, device: str | torch.device | None = None
         ) -> LanguageModel:
    """The model in the checkpoint at `path` (backend and device: None picks the defaults for this machine)."""
    return LanguageModel.from_checkpoint(load_checkpoint(path), backend=backend, device=device)


class LanguageModel:
    """A WordRNN (`.model`, in eval mode) with the vocabulary and tokenizer settings it was trained with."""

    def __init__(self, model, vocab, settings, checkpoint: dict[str, Any]):
        self.model, self.vocab, self.settings, self.checkpoint = model, vocab, settings, checkpoint

    @classmethod
    def from_checkpoint(cls, payload: dict[str, Any], backend: str | None = None,
                        device: str | torch.device | None = None) -> LanguageModel:
        """From a checkpoint dict as rnnlm.checkpoint.load_checkpoint returns it."""
        model, vocab, settings = model_from_checkpoint(payload, backend=backend, device=device)
        return cls(model, vocab, settings, payload)

    @property
    def device(self) -> torch.device:
        return self.model.fc.weight.device

    def generate(self, prompt: str = "我们", length: int = 50, *, num_samples: int = 1, temperature: float = 0.8,
                 greedy: bool = False, top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 output_precision: str = "auto", allow_unk: bool = False,
                 threads: int | None = None) -> str | list[str]:
        """The prompt followed by `length` generated words: a str, or a list of num_samples of them when > 1.

        The sampling settings are rnnlm.inference.generation.generate's; the same seed gives the same text.
        <pad> is never drawn, <unk> only with allow_unk.
        """
        texts = generate(self.model, self.vocab, self.settings, prompt, length, temperature=temperature,
                         greedy=greedy, top_k=top_k, top_p=top_p, num_samples=num_samples, seed=seed,
                         output_precision=output_precision, allow_unk=allow_unk, threads=threads)
        return texts[0] if num_samples == 1 else texts

    def perplexity(self, text: str, batch_size: int = 1) -> float:
        """Perplexity of the model on `text`, tokenized as its corpus was (unknown words count as <unk>).

        batch_size 1 reads the text as one stream (every word with all the context before it).
        """
        ids = torch.tensor(self.vocab.encode(tokenize_text(text, self.settings)), dtype=torch.int64)
        return evaluate_tokens(self.model, ids, batch_size=batch_size).perplexity

    def evaluate(self, split: str = "test", data: str | os.PathLike | None = None, batch_size: int = 16,
                 uniform: bool = False) -> EvalResult:
        """Exact perplexity on one split of a corpus: `data`, else the corpus the checkpoint was trained on, with
        the split's out-of-vocabulary rate (result.oov_rate: its share of <unk> tokens).

        uniform=True: the perplexity of the uniform model instead (every word 1/V), through the same code on an
        fp64 copy of the model whose output layer is zero: V, to about 1e-9 (README, "Perplexity")."""
        if split not in SPLITS:
            raise UsageError(f"{{split}} must be one of {', '.join(SPLITS)}, got {split!r}", params=("split",))
        corpus = load_corpus(data if data is not None else self._trained_corpus(), self.settings)
        expected = (self.checkpoint.get("corpus") or {}).get("content_hash")
        if data is None and expected and corpus.content_hash != expected:
            log.warning("warning: %s has changed since the checkpoint was trained on it; its splits may differ",
                        corpus.path)
        tokens = split_corpus(corpus, self.vocab)[split]
        model = uniform_model(self.model) if uniform else self.model
        result = evaluate_tokens(model, tokens, batch_size=batch_size)
        return dataclasses.replace(result, oov_rate=oov_rate(tokens))

    def _trained_corpus(self) -> str | None:
        """The path of the corpus the checkpoint was trained on (None: the default corpus)."""
        corpus = self.checkpoint.get("corpus")
        if not isinstance(corpus, dict) or "path" not in corpus:
            raise UsageError("the checkpoint names no corpus; give one as {data}", params=("data",))
        path = corpus["path"]
        if path is not None and not Path(path).exists():
            raise UsageError(f"the corpus the checkpoint was trained on, {path}, is not there; give it as {{data}}",
                             params=("data",))
        return path


def uniform_model(model):
    """An fp64 copy of `model` whose logits are all 0: every word has probability exactly 1/V."""
    uniform = copy.deepcopy(model).double()
    with torch.no_grad():
        uniform.fc.weight.zero_()
        uniform.fc.bias.zero_()
    return uniform
