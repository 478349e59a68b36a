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

import torch
from tqdm import tqdm

from rnnlm.backends import resolve_backend
from rnnlm.checkpoint import load_checkpoint, save_checkpoint
from rnnlm.errors import UsageError
from rnnlm.evaluation import evaluate_tokens
from rnnlm.inference.text import generate
from rnnlm.model import resolve_device
from rnnlm.training.config import TrainConfig
from rnnlm.training.determinism import deterministic_mode
from rnnlm.training.metrics import TrainingWindow, perplexity
from rnnlm.training.nan_guard import NonFiniteError
from rnnlm.training.resume import check_same_run, resume_config, resume_file
from rnnlm.training.rng import capture_rng_state
from rnnlm.training.run_dir import LAST, RunFolder
from rnnlm.training.setup import Progress, RunData, build_model, load_data, restore_progress
from rnnlm.training.signals import StopSignal
from rnnlm.training.speed import choose_training_speed
from rnnlm.training.step import TrainStep, compute_dtype
from rnnlm.tuning import torch_threads

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
    payload = None
    if cfg.resume is not None:
        payload = load_checkpoint(resume_file(cfg.resume))
        if explicit is None:
            explicit = {f.name for f in fields(TrainConfig) if getattr(cfg, f.name) != f.default}
        cfg = resume_config(cfg, explicit, payload)
    cfg.validate()
    with deterministic_mode(cfg.deterministic), torch_threads(None):  # threads as they were afterwards
        trainer = Trainer.build(cfg, payload)
        result = trainer.loop()
        return trainer.finish(result) if result.status == "finished" else result


class Trainer:
    def __init__(self, cfg: TrainConfig, folder: RunFolder, data: RunData, model, optimizer, progress: Progress,
                 device, resumed: bool):
        self.cfg, self.folder, self.data, self.device = cfg, folder, data, device
        self.model, self.optimizer, self.progress = model, optimizer, progress
        self.precision, threads = choose_training_speed(model, cfg.precision, batch_size=cfg.batch_size,
                                                        seq_len=cfg.seq_len, threads=cfg.threads,
                                                        force_bf16=cfg.force_bf16, device=device)
        if threads is not None:
            torch.set_num_threads(threads)
        self.step_fn = TrainStep(model, optimizer, clip=cfg.clip, precision=self.precision, device=device)
        self.window = TrainingWindow(device)
        self.last_eval_step = progress.step if resumed else -1
        self.t_start = time.perf_counter()

    @classmethod
    def build(cls, cfg: TrainConfig, payload: dict[str, Any] | None) -> Trainer:
        folder = RunFolder(cfg.out)
        folder.prepare()
        device = resolve_device(cfg.device)
        backend = resolve_backend(cfg.backend, device)
        compute_dtype(cfg.precision, device)  # refuses bf16 on a GPU without it, before any work
        data = load_data(cfg, payload)
        model_config = cfg.model_config(len(data.vocab))
        if payload is not None:
            check_same_run(payload, data.corpus, data.settings, data.vocab, model_config)
        model, optimizer = build_model(cfg, model_config, backend, device, payload)
        trainer = cls(cfg, folder, data, model, optimizer, restore_progress(payload, data, device), device,
                      resumed=payload is not None)
        trainer.announce()
        return trainer

    def announce(self) -> None:
        corpus, vocab, splits, batches = self.data.corpus, self.data.vocab, self.data.splits, self.data.batches
        n_params = sum(p.numel() for p in self.step_fn.params)
        print(f"corpus: {corpus.path} ({corpus.n_tokens:,} tokens, {len(corpus.lexicon):,} distinct words); "
              f"vocabulary {len(vocab):,}; train/valid/test {splits['train'].numel():,}/{splits['valid'].numel():,}/"
              f"{splits['test'].numel():,} tokens")
        print(f"model: {n_params:,} parameters, backend {self.model.backend.describe(self.device)}, device "
              f"{self.device}, precision {self.precision}, {torch.get_num_threads()} CPU threads, "
              f"{self.cfg.batching} batching, {len(batches)} steps per epoch")
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
            self.bar.set_postfix(loss=f"{mean:.3f}", ppl=f"{perplexity(mean):.1f}", tok_s=f"{rate:,.0f}",
                                 refresh=False)
            train_note = f"train loss {mean:.3f} (ppl {perplexity(mean):.1f}), {rate:,.0f} tokens/s; "
        if evaluate:
            ppl, improved = self.evaluate_and_save()
            record["valid_ppl"] = ppl
            note = " (best so far, saved best.pt)" if improved else f" (best {p.best:.2f})"
            where = f"step {p.step} (epoch {p.epoch + 1 if in_epoch else p.epoch})"
            self.bar.write(f"{where}: {train_note}valid ppl {ppl:.2f}{note}", file=sys.stdout)
        self.metrics.write(record)
        self.window.reset()

    def evaluate_and_save(self) -> tuple[float, bool]:
        """(validation perplexity, whether it is the best so far); saves best.pt if so, and last.pt."""
        p = self.progress
        ppl = evaluate_tokens(self.model, self.data.splits["valid"]).perplexity
        self.last_eval_step = p.step
        improved = ppl < p.best
        if improved:
            p.best = ppl
            self.save(self.folder.best)
        self.save(self.folder.last)
        return ppl, improved

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
        print(f"test perplexity: {test.perplexity:.2f} ({which}; {test.n_targets:,} targets)")
        if self.cfg.sample_length > 0:
            result.sample = generate(self.model, self.data.vocab, self.data.settings, self.cfg.sample_prompt,
                                     self.cfg.sample_length, temperature=0.8, seed=self.cfg.seed)[0]
            print(f"sample: {result.sample}")
        return result
