"""The training loop: build a run from its config, train step by step, evaluate and save, finish.

    result = rnnlm.fit(rnnlm.TrainConfig(data="my.txt", max_steps=200, out="runs/a"))

Trainer.build() makes everything a run needs (rnnlm.training.setup), fresh or from the checkpoint it resumes.
Trainer.loop() runs one TrainStep per batch (Trainer.train_step); every --log-every steps it writes a
metrics.jsonl line, and every --eval-every steps (and at the end) it also measures the exact validation
perplexity and saves last.pt and, when that improved, best.pt (Trainer.evaluate_and_save). It stops at the
first of: --epochs done, --max-steps reached, the --time-budget used, or Ctrl-C / SIGTERM (the step finishes
and last.pt is saved). Trainer.finish() prints the test perplexity of best.pt and a sample.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from tqdm import tqdm

from rnnlm.backends import resolve_backend
from rnnlm.checkpoint import load_checkpoint, save_checkpoint
from rnnlm.data import tokenize_text
from rnnlm.errors import UsageError
from rnnlm.evaluation import EvalResult, describe_perplexity, evaluate_tokens
from rnnlm.inference.text import generate
from rnnlm.memory import check_fits, training_bytes
from rnnlm.model import resolve_device
from rnnlm.training.config import TrainConfig
from rnnlm.training.determinism import deterministic_mode
from rnnlm.training.metrics import TrainingWindow, perplexity
from rnnlm.training.nan_guard import NonFiniteError, check_finite_validation
from rnnlm.training.resume import check_resumable, check_same_run, resume_config, resume_file
from rnnlm.training.rng import capture_rng_state
from rnnlm.training.run_dir import LAST, METRICS, RunFolder
from rnnlm.training.setup import Progress, RunData, build_model, load_data, restore_progress
from rnnlm.training.signals import StopSignal
from rnnlm.training.step import TrainStep, compute_dtype

INTERRUPTED = "interrupted"


@dataclass
class TrainResult:
    """How a run ended. status: "finished"; "interrupted" (a signal: last.pt saved after the step);
    "interrupted at the end" (during the final evaluation); "interrupted again" (a second Ctrl-C)."""

    status: str
    step: int
    out: Path
    stop_reason: str | None = None
    test_perplexity: float | None = None
    sample: str | None = None


def fit(cfg: TrainConfig, explicit: set[str] | None = None) -> TrainResult:
    """Trains as cfg says. On resume (cfg.resume), the options in `explicit` override the checkpoint's
    (default: those that differ from TrainConfig's defaults)."""
    payload, source = None, None
    if cfg.resume is not None:
        source = resume_file(cfg.resume)
        if explicit is None:
            explicit = {f.name for f in fields(TrainConfig) if getattr(cfg, f.name) != f.default}
        folder = RunFolder(cfg.out if "out" in explicit else source.parent)
    else:
        cfg.validate()
        folder = RunFolder(cfg.out)
    folder.lock()  # before the checkpoint is read: a run resumed in place reads what no other process writes
    try:
        if source is not None:
            payload = load_checkpoint(source)
            check_resumable(payload, source)
            cfg = resume_config(cfg, explicit, payload)
        cfg.validate()
        if source is None or not _same_folder(source.parent, folder.path):
            folder.claim(cfg.overwrite)
        with deterministic_mode(cfg.deterministic):
            trainer = Trainer.build(cfg, payload, folder, history=None if source is None else source.parent)
            result = trainer.loop()
            return trainer.finish(result) if result.status == "finished" else result
    finally:
        folder.unlock()


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


class Trainer:
    def __init__(self, cfg: TrainConfig, folder: RunFolder, data: RunData, model, optimizer, progress: Progress,
                 device, resumed: bool):
        self.cfg, self.folder, self.data, self.device = cfg, folder, data, device
        self.model, self.optimizer, self.progress = model, optimizer, progress
        self.step_fn = TrainStep(model, optimizer, clip=cfg.clip, precision=cfg.precision, device=device)
        self.window = TrainingWindow(device)
        self.last_eval_step = progress.step if resumed else -1
        self.t_start = time.perf_counter()

    @classmethod
    def build(cls, cfg: TrainConfig, payload: dict[str, Any] | None, folder: RunFolder | None = None,
              history: Path | None = None) -> Trainer:
        """Everything a run needs; `folder` is locked and claimed by the caller (fit), `history` is the folder of
        the checkpoint resumed, whose metrics.jsonl up to its step starts this run's."""
        if folder is None:
            folder = RunFolder(cfg.out)
            folder.prepare()
        device = resolve_device(cfg.device)
        backend = resolve_backend(cfg.backend, device)
        compute_dtype(cfg.precision, device)  # refuses bf16 on a GPU without it, before any work
        data = load_data(cfg, payload)
        if cfg.sample_length > 0 and not tokenize_text(cfg.sample_prompt, data.settings):  # not after the training
            raise UsageError("{sample_prompt} is empty (no words after tokenization): give at least one word, or "
                             "{sample_length} 0 for no sample", params=("sample_prompt", "sample_length"))
        model_config = cfg.model_config(len(data.vocab))
        check_fits(training_bytes(model_config, cfg.batch_size, cfg.seq_len), "training this model", device,
                   params=("hidden_size", "embed_size", "vocab_size", "batch_size", "seq_len"))
        if payload is not None:
            check_same_run(payload, data.corpus, data.settings, data.vocab, model_config)
        model, optimizer = build_model(cfg, model_config, backend, device, payload)
        progress = restore_progress(payload, data, device)
        if payload is not None:
            # best.pt is written before last.pt: a kill between them leaves a better best.pt than last.pt records
            record = folder.best_record()
            progress.best = min(progress.best, record) if record is not None else progress.best
        if payload is None:
            folder.start_metrics()
        else:
            folder.start_metrics(None if history is None else history / METRICS, progress.step)
        trainer = cls(cfg, folder, data, model, optimizer, progress, device, resumed=payload is not None)
        trainer.announce()
        return trainer

    def announce(self) -> None:
        corpus, vocab, splits, batches = self.data.corpus, self.data.vocab, self.data.splits, self.data.batches
        n_params = sum(p.numel() for p in self.step_fn.params)
        print(f"corpus: {corpus.path} ({corpus.n_tokens:,} tokens, {len(corpus.lexicon):,} distinct words); "
              f"vocabulary {len(vocab):,}; train/valid/test {splits['train'].numel():,}/{splits['valid'].numel():,}/"
              f"{splits['test'].numel():,} tokens")
        print(f"model: {n_params:,} parameters, backend {self.model.backend.describe(self.device)}, device "
              f"{self.device}, precision {self.cfg.precision}, {self.cfg.batching} batching, {len(batches)} steps "
              f"per epoch")
        if self.last_eval_step >= 0:
            p = self.progress
            print(f"resuming {self.cfg.resume} at step {p.step} (epoch {p.epoch + 1}, batch {batches.position} of "
                  f"{len(batches)})")

    # -- the loop ------------------------------------------------------------------------------------------------
    def loop(self) -> TrainResult:
        """Trains until a stop condition; see the module docstring."""
        cfg, p = self.cfg, self.progress
        total = cfg.epochs * len(self.data.batches)
        total = total if cfg.max_steps is None else min(total, cfg.max_steps)
        # disable=None: no bar when stderr is not a terminal (the validation lines on stdout still say how it goes)
        self.bar = tqdm(total=total, initial=min(p.step, total), unit="step", disable=None if cfg.progress else True,
                        dynamic_ncols=True, desc="train")
        self.t_start = time.perf_counter()
        self.window.reset()
        self.model.train()
        stop = StopSignal(f"finishing this step and saving {LAST} (press Ctrl-C again to stop at once)")
        with stop, self.folder.open_metrics() as self.metrics:
            try:
                reason = self._steps(stop)
                if reason == INTERRUPTED:
                    if self.window.steps:
                        self.log(evaluate=False)
                    self.save(self.folder.last)
                    return self._ended(INTERRUPTED)
                if self.last_eval_step != p.step or self.window.steps:
                    self.log(evaluate=self.last_eval_step != p.step)
                if stop.received is not None:
                    return self._ended("interrupted at the end")
            except NonFiniteError as err:
                kept = self.folder.checkpoints()
                left = f"{' and '.join(kept)} in {self.folder} left as they were" if kept else "none saved yet"
                raise UsageError(f"training stopped: non-finite value at {err}; no checkpoint written ({left}); "
                                 f"try a lower {{lr}} or {{clip}}", params=("lr", "clip")) from None
            except KeyboardInterrupt:
                return self._ended("interrupted again")
            finally:
                self.bar.close()
        print(f"training stopped at step {p.step}: {reason}")
        return TrainResult("finished", p.step, self.folder.path, stop_reason=reason)

    def _steps(self, stop: StopSignal) -> str:
        """Runs steps until one of the stop conditions; returns it."""
        cfg, p = self.cfg, self.progress
        deadline = None if cfg.time_budget is None else self.t_start + cfg.time_budget * 60
        if cfg.max_steps is not None and p.step >= cfg.max_steps:
            return f"nothing to train: the run is already at step {p.step}, at or past --max-steps {cfg.max_steps}"
        if p.epoch >= cfg.epochs:
            return f"nothing to train: the run has already finished {p.epoch} epochs (--epochs {cfg.epochs})"
        while p.epoch < cfg.epochs and (cfg.max_steps is None or p.step < cfg.max_steps):
            for x, y in self.data.batches:
                self.train_step(x, y)
                if stop.received is not None:                 # first: the user wants out now
                    return INTERRUPTED
                if cfg.max_steps is not None and p.step >= cfg.max_steps:
                    return f"reached --max-steps {cfg.max_steps}"
                if deadline is not None and time.perf_counter() >= deadline:
                    return f"used the --time-budget of {cfg.time_budget:g} minutes"
                if p.step % cfg.eval_every == 0 or p.step % cfg.log_every == 0:
                    self.log(evaluate=p.step % cfg.eval_every == 0)
        return f"finished {cfg.epochs} epochs"

    def train_step(self, x, y) -> None:
        p, batches = self.progress, self.data.batches
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        loss, new_hidden = self.step_fn(x, y, p.hidden, p.step + 1)
        p.step += 1
        p.hidden = new_hidden.detach() if batches.carry_hidden else None
        if batches.position >= len(batches):                  # the epoch is complete
            p.epoch += 1
            p.hidden = None
        self.window.add(loss, x.numel())
        self.bar.update(1)

    def _ended(self, status: str) -> TrainResult:
        return TrainResult(status, self.progress.step, self.folder.path)

    # -- evaluate and save ---------------------------------------------------------------------------------------
    def log(self, evaluate: bool) -> None:
        """A metrics.jsonl line for the steps since the last one; with evaluate, validation and checkpoints."""
        p, batches = self.progress, self.data.batches
        in_epoch = batches.position < len(batches)
        record: dict[str, Any] = {"step": p.step, "epoch": round(p.epoch + batches.position / len(batches), 4)
                                  if in_epoch else p.epoch, "time": round(self.elapsed(), 3)}
        train_note = ""
        if self.window.steps:
            mean, rate = self.window.summary()
            record.update(loss=mean, train_ppl=perplexity(mean), tokens_per_s=round(rate, 1))
            self.bar.set_postfix(loss=f"{mean:.3f}", ppl=f"{perplexity(mean):.4g}", tok_s=f"{rate:,.0f}",
                                 refresh=False)
            train_note = f"train loss {mean:.3f} (ppl {describe_perplexity(perplexity(mean), mean, 1)}), " \
                         f"{rate:,.0f} tokens/s; "
        if evaluate:
            valid, improved = self.evaluate_and_save()
            record.update(valid_ppl=valid.perplexity, valid_loss=valid.mean_nll)
            note = " (best so far, saved best.pt)" if improved else f" (best {p.best:.2f})"
            where = f"step {p.step} (epoch {p.epoch + 1 if in_epoch else p.epoch})"
            self.bar.write(f"{where}: {train_note}valid ppl {describe_perplexity(valid.perplexity, valid.mean_nll)}"
                           f"{note}", file=sys.stdout)
        self.metrics.write(record)
        self.window.reset()

    def evaluate_and_save(self) -> tuple[EvalResult, bool]:
        """(the validation, whether its perplexity is the best so far); saves best.pt if so, then last.pt.
        NonFiniteError, before anything is saved, when the validation loss is not finite."""
        p = self.progress
        valid = evaluate_tokens(self.model, self.data.splits["valid"])
        check_finite_validation(valid.mean_nll, p.step)
        ppl = valid.perplexity
        self.last_eval_step = p.step
        improved = ppl < p.best
        if improved:
            p.best = ppl
            self.save(self.folder.best)
        self.save(self.folder.last)
        return valid, improved

    def elapsed(self) -> float:
        """Seconds of training, across resumes."""
        return self.progress.elapsed_before + (time.perf_counter() - self.t_start)

    def save(self, path: Path) -> None:
        p = self.progress
        save_checkpoint(path, {
            "model_config": self.model.config.to_dict(), "model_state": self.model.state_dict(),
            "optimizer_state": self.optimizer.state_dict(), "train_config": self.cfg.to_dict(),
            "vocab": self.data.vocab.to_list(), "tokenizer": self.data.settings.to_dict(),
            "corpus": self.data.corpus_record(), "step": p.step, "epoch": p.epoch,
            "data_state": self.data.batches.state_dict(),
            "hidden": None if p.hidden is None else p.hidden.detach().cpu(),
            "rng_state": capture_rng_state(), "best_valid_ppl": None if math.isinf(p.best) else p.best,
            "elapsed": self.elapsed(),
        })

    # -- finish --------------------------------------------------------------------------------------------------
    def finish(self, result: TrainResult) -> TrainResult:
        """Test perplexity of the best model (best.pt, else the current one) and one sample from it, printed."""
        if self.folder.best.exists():
            best = load_checkpoint(self.folder.best)
            self.model.load_state_dict(best["model_state"])
            which = f"best.pt, step {best['step']}"
        else:
            which = f"step {self.progress.step}"
        test = evaluate_tokens(self.model, self.data.splits["test"])
        result.test_perplexity = test.perplexity
        print(f"test perplexity: {describe_perplexity(test.perplexity, test.mean_nll)} ({which}; "
              f"{test.n_targets:,} targets)")
        if self.cfg.sample_length > 0:
            result.sample = generate(self.model, self.data.vocab, self.data.settings, self.cfg.sample_prompt,
                                     self.cfg.sample_length, temperature=0.8, seed=self.cfg.seed)[0]
            print(f"sample: {result.sample}")
        return result
