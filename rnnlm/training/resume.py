"""Resuming a run from its last.pt: which checkpoint, which options, and whether it is still the same run.

A resumed run continues exactly: model, optimizer, step, epoch, position in the data, the carried hidden state
and every random state (rnnlm.training.rng), so N steps + resume + M steps gives the same weights, bit for bit
on the CPU, as N + M steps in one go. Options that define what is trained (FIXED_ON_RESUME, the corpus's
content, the vocabulary and the model's shape) must match the checkpoint, and every difference is listed;
options that only steer the run (--epochs, --max-steps, --time-budget, --eval-every, --lr, ...) may change.
"""
from __future__ import annotations

import dataclasses
import logging
import numbers
from pathlib import Path
from typing import Any

import torch

from rnnlm.errors import UsageError
from rnnlm.training.config import TrainConfig
from rnnlm.training.run_dir import LAST

log = logging.getLogger("rnnlm.train")

# The corpus itself is compared by content hash, not by path.
FIXED_ON_RESUME = ("hmm", "encoding_errors", "vocab_size", "min_freq", "init", "weight_decay", "batching", "seq_len", "batch_size", "embed_size",
                   "hidden_size", "num_layers", "nonlinearity", "dropout", "tie_weights", "seed")

# What a checkpoint written before these options existed was trained with (rnnlm before issue 13): constant-rate
# Adam from torch's initial weights. A resumed old run continues that way unless the options are given.
LEGACY = {"lr_schedule": "constant", "warmup": 0, "weight_decay": 0.0, "init": "torch", "min_freq": 1,
          "lr_floor": 0.0, "schedule_steps": None, "patience": None}


def resume_file(resume: str) -> Path:
    """The checkpoint to resume: `resume` itself when it is a file, else its last.pt."""
    if not str(resume).strip():
        raise UsageError("{resume} is empty: give the folder of the run to continue", params=("resume",))
    p = Path(resume)
    if p.is_file():
        return p
    if not p.exists():
        raise UsageError(f"cannot resume: {p} does not exist")
    if not (p / LAST).exists():
        raise UsageError(f"cannot resume: {p} has no {LAST} (give the {{out}} folder of an earlier run)",
                         params=("out",))
    return p / LAST


def resume_config(cfg: TrainConfig, explicit: set[str], payload: dict[str, Any]) -> TrainConfig:
    """The checkpoint's training config with the options in `explicit` taken from cfg; UsageError listing every
    option that defines the run and differs from the checkpoint's."""
    saved = payload.get("train_config")
    if not isinstance(saved, dict):
        raise UsageError(f"{cfg.resume} holds no training config: it was not written by rnnlm.train")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    base = TrainConfig(**{**LEGACY, **{k: v for k, v in saved.items() if k in names}})
    differ = [name for name in FIXED_ON_RESUME if name in explicit and getattr(cfg, name) != getattr(base, name)]
    if differ:
        diffs = [f"{{{name}}} {getattr(base, name)!r} in the checkpoint, {getattr(cfg, name)!r} given"
                 for name in differ]
        raise UsageError(f"cannot resume {cfg.resume}: " + "; ".join(diffs), params=differ)
    merged = dataclasses.replace(base, **{k: getattr(cfg, k) for k in explicit if k in names})
    merged.resume, merged.overwrite = cfg.resume, cfg.overwrite  # what this invocation asks, never the saved run's
    if "out" not in explicit:
        path = Path(cfg.resume)
        merged.out = str(path.parent if path.is_file() else path)
    return merged


def corpus_path(cfg: TrainConfig, payload: dict[str, Any] | None) -> str | None:
    """The corpus to read: cfg.data, else on resume the checkpoint's (None: the default corpus)."""
    if payload is None or cfg.data is not None:
        return cfg.data
    path = (payload.get("corpus") or {}).get("path")
    if path is not None and not Path(path).exists():
        raise UsageError(f"cannot resume: the corpus {path} is not there; give it as {{data}}", params=("data",))
    return path


def check_same_run(payload: dict[str, Any], corpus, settings, vocab, model_config) -> None:
    """UsageError listing what differs between the checkpoint and the data / model built now."""
    diffs = []
    saved_corpus = payload.get("corpus") or {}
    if saved_corpus.get("content_hash") != corpus.content_hash:
        diffs.append(f"corpus content differs ({saved_corpus.get('path') or 'default corpus'} hashed "
                     f"{str(saved_corpus.get('content_hash'))[:12]}, now {corpus.path} hashes "
                     f"{corpus.content_hash[:12]})")
    if payload.get("tokenizer") != settings.to_dict():
        diffs.append(f"tokenizer settings {payload.get('tokenizer')} in the checkpoint, {settings.to_dict()} now")
    saved_vocab = payload.get("vocab")
    if saved_vocab != vocab.to_list():
        n_saved = len(saved_vocab) if isinstance(saved_vocab, list) else "?"
        diffs.append(f"vocabulary differs ({n_saved} entries in the checkpoint, {len(vocab)} built now)")
    now = model_config.to_dict()
    if payload.get("model_config") != now:
        saved = payload.get("model_config") or {}
        parts = [f"{k} {saved.get(k)!r} vs {now.get(k)!r}" for k in sorted(set(saved) | set(now))
                 if saved.get(k) != now.get(k)]
        diffs.append("model shape differs (checkpoint vs now: " + ", ".join(parts) + ")")
    if diffs:
        raise UsageError("cannot resume: " + "; ".join(diffs))


def check_resumable(payload: dict[str, Any], path) -> None:
    """UsageError listing every field a resume needs that the checkpoint lacks or holds with the wrong type (a
    checkpoint stripped for evaluation and generation, or edited); a missing optimizer state only warns: Adam
    restarts from zero moments, and the run no longer matches an uninterrupted one."""
    problems = []
    for name, kind in (("step", int), ("epoch", int), ("data_state", dict), ("rng_state", dict)):
        value = payload.get(name)
        if value is None:
            problems.append(f"it holds no {name}")
        elif isinstance(value, bool) or not isinstance(value, kind):
            problems.append(f"its {name} is a {type(value).__name__}, not {'an' if kind is int else 'a'} "
                            f"{kind.__name__}")
        elif kind is int and value < 0:
            problems.append(f"its {name} is negative ({value})")
    optimizer = payload.get("optimizer_state")
    if optimizer is not None and not (isinstance(optimizer, dict) and isinstance(optimizer.get("state"), dict)
                                      and isinstance(optimizer.get("param_groups"), list)):
        problems.append(f"its optimizer_state is a {type(optimizer).__name__}, not an optimizer state dict")
    if payload.get("hidden") is not None and not isinstance(payload["hidden"], torch.Tensor):
        problems.append(f"its hidden is a {type(payload['hidden']).__name__}, not a tensor")
    for name in ("best_valid_ppl", "elapsed"):
        value = payload.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
            problems.append(f"its {name} is a {type(value).__name__}, not a number")
    if problems:
        raise UsageError(f"cannot resume from {path}: " + "; ".join(problems) + " (rnnlm.evaluate and rnnlm.generate "
                         "can still read it; train a new run to continue from scratch)")
    if optimizer is None:
        log.warning("%s holds no optimizer state: Adam restarts from zero moments, so the resumed run will not match "
                    "an uninterrupted one", path)
