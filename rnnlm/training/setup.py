"""Building a run from its config: the data (corpus, vocabulary, splits, batches) and the model and optimizer,
fresh or restored from the checkpoint being resumed."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rnnlm.data import Corpus, TokenizerSettings, Vocab, load_corpus, make_batches, split_corpus, train_vocab
from rnnlm.errors import UsageError
from rnnlm.model import ModelConfig, WordRNN
from rnnlm.training.config import TrainConfig
from rnnlm.training.distributed import Distributed
from rnnlm.training.init import init_weights
from rnnlm.training.resume import corpus_path
from rnnlm.training.rng import restore_rng_state, seed_everything
from rnnlm.training.step import make_optimizer


@dataclass
class RunData:
    """What a run reads: the tokenized corpus, its vocabulary and splits, and the training batches."""

    corpus: Corpus
    settings: TokenizerSettings
    vocab: Vocab
    splits: dict[str, torch.Tensor]
    batches: Any  # StreamBatches | WindowBatches, over splits["train"]
    path: str | None  # the corpus as given (None: the default corpus)

    def corpus_record(self) -> dict[str, Any]:
        """What a checkpoint stores of the corpus: where it was and what it held."""
        return {"path": None if self.path is None else str(Path(self.path).resolve()),
                "content_hash": self.corpus.content_hash}


@dataclass
class Progress:
    """Where a run is, beyond its weights; saved in every checkpoint."""

    step: int = 0
    epoch: int = 0
    hidden: torch.Tensor | None = None  # carried between batches (stream batching), (L, B, H)
    best: float = math.inf  # lowest validation perplexity so far
    elapsed_before: float = 0.0  # seconds of training before this invocation (resumes add up)
    lr_scale: float = 1.0  # the plateau schedule's factor (rnnlm.training.schedule)
    bad_evals: int = 0  # validations in a row without a new best (--patience)


def load_data(cfg: TrainConfig, payload: dict[str, Any] | None, d: Distributed = Distributed()) -> RunData:
    """Tokenizes (or reads from the cache) the corpus, builds the vocabulary, the splits and the batches (this
    process's share of them on several processes: `d`)."""
    settings = TokenizerSettings(hmm=cfg.hmm, encoding_errors=cfg.encoding_errors)
    path = corpus_path(cfg, payload)
    corpus = d.first_then_rest(lambda: load_corpus(path, settings, progress=cfg.progress and d.writer))
    vocab = train_vocab(corpus, cfg.vocab_size, cfg.min_freq)
    if payload is not None and payload.get("vocab") != vocab.to_list():
        # A run from before issue 13 counted its vocabulary on the whole corpus: resumed, it keeps that one.
        legacy = Vocab.build(corpus, cfg.vocab_size)
        if payload.get("vocab") == legacy.to_list():
            vocab = legacy
    splits = split_corpus(corpus, vocab)
    for name in ("valid", "test"):
        if splits[name].numel() < 2:
            raise UsageError(f"the corpus is too small: its {name} split has {splits[name].numel()} token(s); "
                             f"give a corpus with more lines")
    batches = make_batches(cfg.batching, splits["train"], cfg.batch_size, cfg.seq_len, cfg.seed,
                           name="training split", shard=d.shard)
    return RunData(corpus, settings, vocab, splits, batches, path)


def build_model(cfg: TrainConfig, model_config: ModelConfig, backend: str, device: torch.device,
                payload: dict[str, Any] | None) -> tuple[WordRNN, torch.optim.Optimizer]:
    """The model and its optimizer: seeded fresh, or with the checkpoint's weights and optimizer state."""
    if payload is None:
        seed_everything(cfg.seed)
    model = WordRNN(model_config, backend=backend)
    if payload is None:
        init_weights(model, cfg.init)
    model = model.to(device)
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg.lr, cfg.weight_decay)
    if payload is not None:
        model.load_state_dict(payload["model_state"])
        if payload.get("optimizer_state") is not None:  # None: restarted, as resume.check_resumable warned
            try:
                optimizer.load_state_dict(payload["optimizer_state"])
            except (ValueError, KeyError, TypeError, RuntimeError) as err:
                raise UsageError(f"cannot resume {cfg.resume}: its optimizer_state does not fit the model "
                                 f"({' '.join(str(err).split())[:200]})") from None
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr
    return model, optimizer


def restore_progress(payload: dict[str, Any] | None, data: RunData, device: torch.device,
                     d: Distributed = Distributed()) -> Progress:
    """Progress from the checkpoint (and the data position and random states with it), or a fresh start; on
    several processes, this rank's rows of the hidden state and its own random states."""
    if payload is None:
        return Progress()
    data.batches.load_state_dict(payload["data_state"])
    hidden = payload.get("hidden")
    shape = payload["model_config"]["num_layers"], data.batches.batch_size, payload["model_config"]["hidden_size"]
    if hidden is not None and (not data.batches.carry_hidden or tuple(hidden.shape) != shape
                               or not hidden.is_floating_point()):
        raise UsageError(f"the checkpoint's carried hidden state is {hidden.dtype} {tuple(hidden.shape)}, which "
                         f"does not fit this run ({shape} with stream batching, none with windows)")
    if hidden is not None and d.active:
        per = hidden.shape[1] // d.world_size
        hidden = hidden[:, d.rank * per:(d.rank + 1) * per].contiguous()
    progress = Progress(step=int(payload["step"]), epoch=int(payload["epoch"]),
                        hidden=None if hidden is None else hidden.to(device),
                        best=payload.get("best_valid_ppl") or math.inf,
                        elapsed_before=float(payload.get("elapsed") or 0.0),
                        lr_scale=float(payload.get("lr_scale", 1.0)), bad_evals=int(payload.get("bad_evals", 0)))
    try:
        restore_rng_state(payload["rank_rng_states"][d.rank] if d.active else payload["rng_state"])
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as err:
        raise UsageError(f"the checkpoint's rng_state is damaged ({type(err).__name__}: "
                         f"{' '.join(str(err).split())[:150]})") from None
    return progress
