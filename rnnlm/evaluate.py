"""Perplexity of a checkpoint on a split of its corpus, computed exactly.

    python -m rnnlm.evaluate CKPT [--data PATH] [--split test] [--backend cudnn|triton] [--batch-size B]
        [--device cpu|cuda]

perplexity = exp(sum of the negative log-likelihoods of every target / number of targets). A split of N tokens
has N - 1 targets (each token predicted from all the tokens before it in the split) and each is counted exactly
once: the split is cut into B contiguous streams of S = (N - 1) // B targets, read window by window with the
hidden state carried from one window to the next, and the r = (N - 1) - B*S targets left at the end continue
the last stream (its state carried over) as a batch of one. Sums are accumulated in float64, so the result is a
ratio of totals, never a mean of batch means. With --batch-size 1 the whole split is one stream. The corpus is
tokenized with the checkpoint's tokenizer settings and encoded with its vocabulary, then split by the same
fractions as in training (rnnlm.data.split_corpus).
"""
from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from rnnlm.config import build_parser, from_namespace, option, require_positive
from rnnlm.errors import UsageError, run_cli
from rnnlm.model import BACKENDS, WordRNN

log = logging.getLogger("rnnlm.evaluate")

WINDOW = 128  # time steps per forward; the result does not depend on it (the state is carried exactly)
DEFAULT_FRACTIONS = (0.9, 0.05, 0.05)


@dataclass
class EvalResult:
    perplexity: float
    nll_sum: float  # total negative log-likelihood (nats), float64
    n_targets: int  # tokens predicted: N - 1 for a split of N tokens

    @property
    def mean_nll(self) -> float:
        return self.nll_sum / self.n_targets


def _stream_nll(model: WordRNN, x: torch.Tensor, y: torch.Tensor, hidden: torch.Tensor | None,
                window: int) -> tuple[float, torch.Tensor]:
    """Sum of NLL over x, y (B, S) read window by window with the state carried; (sum, final hidden)."""
    total = 0.0
    for start in range(0, x.shape[1], window):
        loss, hidden = model.loss(x[:, start:start + window], y[:, start:start + window], hidden, reduction="sum")
        total += float(loss.double())
    return total, hidden


def evaluate_tokens(model: WordRNN, tokens: torch.Tensor, batch_size: int = 16, window: int = WINDOW) -> EvalResult:
    """Exact perplexity of `model` on the 1-D int64 token ids `tokens` (every one of the N - 1 targets once).

    Runs in eval mode under torch.inference_mode on the model's device and backend, in the parameters' dtype
    (no autocast); the model's training flag is restored afterwards.
    """
    tokens = torch.as_tensor(tokens)
    if tokens.dim() != 1:
        raise ValueError(f"tokens must be 1-D, got shape {tuple(tokens.shape)}")
    n = tokens.numel()
    if n < 2:
        raise UsageError(f"cannot measure perplexity on {n} token(s): at least 2 are needed (one to predict)")
    require_positive("batch size", batch_size)
    device = model.fc.weight.device
    tokens = tokens.to(device=device, dtype=torch.int64)
    n_targets = n - 1
    b = min(int(batch_size), n_targets)
    s = n_targets // b
    rest = n_targets - b * s
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), torch.autocast(device.type, enabled=False):
            x = tokens[: b * s].view(b, s)
            y = tokens[1: b * s + 1].view(b, s)
            total, hidden = _stream_nll(model, x, y, None, window)
            if rest:
                # The leftover targets follow the last stream: continue it from its final state.
                xr = tokens[b * s: n - 1].view(1, rest)
                yr = tokens[b * s + 1:].view(1, rest)
                extra, _ = _stream_nll(model, xr, yr, hidden[:, -1:].contiguous(), window)
                total += extra
    finally:
        model.train(was_training)
    return EvalResult(perplexity=math.exp(total / n_targets), nll_sum=total, n_targets=n_targets)


def split_fractions(train_config: dict | None) -> tuple[float, float, float]:
    """The split fractions a checkpoint was trained with (train_config "split"/"fractions"), else the default."""
    if isinstance(train_config, dict):
        for key in ("split", "fractions", "split_fractions"):
            value = train_config.get(key)
            if isinstance(value, (list, tuple)) and len(value) == 3:
                return tuple(float(v) for v in value)
    return DEFAULT_FRACTIONS


@dataclass
class EvaluateConfig:
    checkpoint: str = option(help="checkpoint file written by rnnlm.train", positional=True, metavar="CKPT")
    data: str | None = option(None, help="corpus to evaluate on (default: the corpus the checkpoint was trained on)",
                              metavar="PATH")
    split: str = option("test", choices=("train", "valid", "test"), help="which block of the corpus")
    backend: str | None = option(None, choices=BACKENDS,
                                 help="cudnn (torch) or triton (rnnlm's kernels); default: triton with CUDA, "
                                      "else cudnn")
    batch_size: int = option(16, help="parallel streams the split is cut into (1: one stream, the most context)")
    device: str | None = option(None, help="cpu or cuda (default: cuda when available)")

    def validate(self) -> None:
        require_positive("--batch-size", self.batch_size)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(EvaluateConfig, "rnnlm.evaluate", "Perplexity of an rnnlm checkpoint on its corpus.")
    cfg = from_namespace(EvaluateConfig, parser.parse_args(argv))
    cfg.validate()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    from rnnlm.checkpoint import load_checkpoint, model_from_checkpoint
    from rnnlm.data import load_corpus, split_corpus

    payload = load_checkpoint(cfg.checkpoint)
    corpus_info = payload.get("corpus") if isinstance(payload.get("corpus"), dict) else {}
    if cfg.data is not None:
        path = cfg.data
    elif "path" in corpus_info:
        path = corpus_info["path"]  # None stands for the default corpus
        if path is not None and not Path(path).exists():
            raise UsageError(f"the corpus the checkpoint was trained on, {path}, is not there; "
                             f"give it with --data PATH")
    else:
        raise UsageError(f"checkpoint {cfg.checkpoint} names no corpus; give one with --data PATH")
    model, vocab, settings = model_from_checkpoint(payload, backend=cfg.backend, device=cfg.device)
    corpus = load_corpus(path, settings)
    expected_hash = corpus_info.get("content_hash")
    if cfg.data is None and expected_hash and corpus.content_hash != expected_hash:
        log.warning("warning: %s has changed since the checkpoint was trained on it; its splits may differ", path)
    tokens = split_corpus(corpus, vocab, split_fractions(payload.get("train_config")))[cfg.split]
    result = evaluate_tokens(model, tokens, batch_size=cfg.batch_size)
    print(f"{cfg.split} perplexity: {result.perplexity:.4f} ({result.n_targets + 1} tokens, "
          f"{result.n_targets} predicted; backend {model.backend})")
    return 0


if __name__ == "__main__":
    run_cli(main, "rnnlm.evaluate")
