"""The training loop: build a run from its config, train step by step, evaluate and save, finish.

    result = rnnlm.fit(rnnlm.TrainConfig(data="my.txt", max_steps=200, out="runs/a"))

Trainer.build() makes everything a run needs (rnnlm.training.setup), fresh or from the checkpoint it resumes.
Trainer.loop() runs one TrainStep per batch (Trainer.train_step); every --log-every steps it writes a
metrics.jsonl line, and every --eval-every steps (and at the end) it also measures the exact validation
perplexity (Trainer.validate), writes that line, then saves last.pt and, when the perplexity improved, best.pt
(Trainer.save_checkpoints): a line is on disk before any checkpoint of its step, so a crash between the two
never leaves a checkpoint whose step the history lacks. It stops at the
first of: --epochs done, --max-steps reached, the --time-budget used, --patience validations without a new best,
or Ctrl-C / SIGTERM (the step finishes and last.pt is saved). Before each step the learning rate is set from the
schedule (rnnlm.training.schedule), over the run's planned steps or the time budget's estimate.
Trainer.finish() prints the test perplexity of best.pt and a sample.

Under torchrun every process runs this same loop on its share of each batch; what involves the other processes
(the process group, DDP, who writes and prints, stopping together, evaluation sums) goes through `self.dist`
(rnnlm.training.distributed).
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
from rnnlm.data import oov_rate, tokenize_text
from rnnlm.errors import UsageError
from rnnlm.evaluation import EvalResult, describe_perplexity
from rnnlm.inference.text import generate
from rnnlm.memory import check_fits, training_bytes
from rnnlm.model import resolve_device
from rnnlm.training.config import TrainConfig
from rnnlm.training.determinism import deterministic_mode
from rnnlm.training.distributed import Distributed, check_world_size, session
from rnnlm.training.metrics import TrainingWindow, perplexity
from rnnlm.training.nan_guard import NonFiniteError, check_finite_validation
from rnnlm.training.resume import check_resumable, check_same_run, resume_config, resume_file
from rnnlm.training.rng import capture_rng_state
from rnnlm.training.run_dir import LAST, METRICS, RunFolder
from rnnlm.training.schedule import MIN_TIMED_STEPS, PLATEAU_FACTOR, estimate_total
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
    payload, source = None, None
    if cfg.resume is not None:
        source = resume_file(cfg.resume)
        if explicit is None:
            explicit = {f.name for f in fields(TrainConfig) if getattr(cfg, f.name) != f.default}
        folder = RunFolder(cfg.out if "out" in explicit else source.parent)
    else:
        cfg.validate()
        folder = RunFolder(cfg.out)
    with session(resolve_device(cfg.device), cfg.dist_timeout) as d:
        # before the checkpoint is read: a run resumed in place reads what no other process writes (rank 0 holds
        # the folder for all; a refusal there stops every rank)
        _on_writer(d, folder.lock)
        try:
            if source is not None:
                payload = load_checkpoint(source)
                check_resumable(payload, source)
                cfg = resume_config(cfg, explicit, payload)
                check_world_size(payload, d, cfg.resume)
                cfg.validate()  # the options the checkpoint brought (a fresh run's were checked above)
            if source is None or not _same_folder(source.parent, folder.path):
                _on_writer(d, lambda: folder.claim(cfg.overwrite))
            # threads as they were afterwards
            with deterministic_mode(cfg.deterministic, cfg.device), torch_threads(None):
                trainer = Trainer.build(cfg, payload, d, folder, history=None if source is None else source.parent)
                result = trainer.loop()
                return trainer.finish(result) if result.status == "finished" else result
        finally:
            if d.writer:
                folder.unlock()


def _on_writer(d: Distributed, action) -> None:
    """action() on rank 0 only; its UsageError is raised on every rank (the others' is silent: rank 0 prints)."""
    refused = None
    if d.writer:
        try:
            action()
        except UsageError as err:
            refused = err
    if d.from_writer(refused is not None):
        raise refused if refused is not None else UsageError("rank 0 refused the run folder")


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


class Trainer:
    def __init__(self, cfg: TrainConfig, folder: RunFolder, data: RunData, model, optimizer, progress: Progress,
                 device, resumed: bool, dist: Distributed = Distributed()):
        self.cfg, self.folder, self.data, self.device, self.dist = cfg, folder, data, device, dist
        self.model, self.optimizer, self.progress = model, optimizer, progress
        rows = cfg.batch_size // dist.world_size  # this process's share of the batch
        precision, threads = choose_training_speed(model, cfg.precision, batch_size=rows, seq_len=cfg.seq_len,
                                                   threads=cfg.threads, force_bf16=cfg.force_bf16, device=device)
        self.precision = dist.from_writer(precision)  # every process computes in rank 0's choice
        if threads is not None:
            torch.set_num_threads(threads)
        self.step_fn = TrainStep(dist.wrap(model, device), optimizer, clip=cfg.clip, precision=self.precision,
                                 device=device, finite_check=dist.check_finite if dist.active else None)
        self.window = TrainingWindow(device)
        self.last_eval_step = progress.step if resumed else -1
        self.t_start = time.perf_counter()
        self.schedule, self.start_step = cfg.schedule(), progress.step
        self.planned = self.horizon = cfg.epochs * len(data.batches)  # set by loop()

    @classmethod
    def build(cls, cfg: TrainConfig, payload: dict[str, Any] | None, d: Distributed = Distributed(),
              folder: RunFolder | None = None, history: Path | None = None) -> Trainer:
        """Everything a run needs; `folder` is locked and claimed by the caller (fit), `history` is the folder of
        the checkpoint resumed, whose metrics.jsonl up to its step starts this run's."""
        if folder is None:
            folder = RunFolder(cfg.out)
            if d.writer:
                folder.prepare()
        device = d.device(resolve_device(cfg.device))
        backend = resolve_backend(cfg.backend, device)
        compute_dtype(cfg.precision, device)  # refuses bf16 on a GPU without it, before any work
        data = load_data(cfg, payload, d)
        if cfg.sample_length > 0 and not tokenize_text(cfg.sample_prompt, data.settings):  # not after the training
            raise UsageError("{sample_prompt} is empty (no words after tokenization): give at least one word, or "
                             "{sample_length} 0 for no sample", params=("sample_prompt", "sample_length"))
        model_config = cfg.model_config(len(data.vocab))
        check_fits(training_bytes(model_config, cfg.batch_size, cfg.seq_len), "training this model", device,
                   params=("hidden_size", "embed_size", "vocab_size", "batch_size", "seq_len"))
        if payload is not None:
            check_same_run(payload, data.corpus, data.settings, data.vocab, model_config)
        model, optimizer = build_model(cfg, model_config, backend, device, payload)
        if payload is None:
            d.seed(cfg.seed)
        progress = restore_progress(payload, data, device, d)
        if payload is not None:
            # best.pt is written before last.pt: a kill between them leaves a better best.pt than last.pt records
            record = d.from_writer(folder.best_record() if d.writer else None)
            progress.best = min(progress.best, record) if record is not None else progress.best
        if d.writer:
            folder.start_metrics(None if history is None else history / METRICS,
                                 None if payload is None else progress.step)
        trainer = cls(cfg, folder, data, model, optimizer, progress, device, resumed=payload is not None, dist=d)
        trainer.announce()
        return trainer

    def announce(self) -> None:
        corpus, vocab, splits, batches = self.data.corpus, self.data.vocab, self.data.splits, self.data.batches
        n_params = sum(p.numel() for p in self.step_fn.params)
        say = self.dist.say
        say(f"corpus: {corpus.path} ({corpus.n_tokens:,} tokens, {len(corpus.lexicon):,} distinct words); "
            f"vocabulary {len(vocab):,}; train/valid/test {splits['train'].numel():,}/{splits['valid'].numel():,}/"
            f"{splits['test'].numel():,} tokens")
        say(f"model: {n_params:,} parameters, backend {self.model.backend.describe(self.device)}, device "
            f"{self.device}, precision {self.precision}, {torch.get_num_threads()} CPU threads, "
            f"{self.cfg.batching} batching, {len(batches)} steps per epoch"
            + (f", {self.dist.world_size} processes" if self.dist.active else ""))
        if self.last_eval_step >= 0:
            p = self.progress
            say(f"resuming {self.cfg.resume} at step {p.step} (epoch {p.epoch + 1}, batch {batches.position} of "
                f"{len(batches)})")

    # -- the loop ------------------------------------------------------------------------------------------------
    def loop(self) -> TrainResult:
        """Trains until a stop condition; see the module docstring."""
        cfg, p = self.cfg, self.progress
        total = cfg.epochs * len(self.data.batches)
        total = total if cfg.max_steps is None else min(total, cfg.max_steps)
        self.planned = self.horizon = cfg.schedule_steps or total
        # disable=None: no bar when stderr is not a terminal (the validation lines on stdout still say how it goes)
        self.bar = tqdm(total=total, initial=min(p.step, total), unit="step",
                        disable=None if cfg.progress and self.dist.writer else True, dynamic_ncols=True, desc="train")
        self.t_start = time.perf_counter()
        self.window.reset()
        self.model.train()
        stop = StopSignal(f"finishing this step and saving {LAST} (press Ctrl-C again to stop at once)",
                          quiet=not self.dist.writer)
        with stop, self.dist.open_metrics(self.folder) as self.metrics:
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
        self.dist.say(f"training stopped at step {p.step}: {reason}")
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
                signalled, past_deadline = self.dist.agree_to_stop(
                    stop.received is not None, deadline is not None and time.perf_counter() >= deadline)
                if signalled:                                 # first: the user wants out now (on any rank)
                    return INTERRUPTED
                if cfg.max_steps is not None and p.step >= cfg.max_steps:
                    return f"reached --max-steps {cfg.max_steps}"
                if past_deadline:                             # rank 0's clock decides
                    return f"used the --time-budget of {cfg.time_budget:g} minutes"
                if deadline is not None and cfg.schedule_steps is None:
                    self._follow_budget(deadline)
                if p.step % cfg.eval_every == 0 or p.step % cfg.log_every == 0:
                    self.log(evaluate=p.step % cfg.eval_every == 0)
                    if cfg.patience is not None and p.bad_evals >= cfg.patience:
                        return f"validation perplexity did not improve in {p.bad_evals} evaluations (--patience)"
        return f"finished {cfg.epochs} epochs"

    def _follow_budget(self, deadline: float) -> None:
        """Re-estimates the step the time budget ends at (the schedule's horizon) from the time per step: this
        invocation's once MIN_TIMED_STEPS are done, before that the resumed run's earlier average."""
        p, now = self.progress, time.perf_counter()
        done = p.step - self.start_step
        if done >= MIN_TIMED_STEPS:
            per_step = (now - self.t_start) / done
        else:
            per_step = p.elapsed_before / self.start_step if self.start_step else None
        self.horizon = self.dist.from_writer(estimate_total(p.step, deadline - now, per_step, self.planned))

    def learning_rate(self, step: int) -> float:
        """The schedule's rate for optimizer step `step` (1-based)."""
        return self.schedule.lr(step, self.horizon, self.progress.lr_scale)

    def train_step(self, x, y) -> None:
        p, batches = self.progress, self.data.batches
        lr = self.learning_rate(p.step + 1)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
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
        self.step_fn.check()  # the NaN guard's one host read: NonFiniteError before anything is written
        p, batches = self.progress, self.data.batches
        in_epoch = batches.position < len(batches)
        record: dict[str, Any] = {"step": p.step, "epoch": round(p.epoch + batches.position / len(batches), 4)
                                  if in_epoch else p.epoch, "time": round(self.elapsed(), 3)}
        train_note = ""
        if self.window.steps:
            mean, rate = self.window.summary(self.dist)
            record.update(loss=mean, train_ppl=perplexity(mean), tokens_per_s=round(rate, 1),
                          lr=self.optimizer.param_groups[0]["lr"])
            self.bar.set_postfix(loss=f"{mean:.3f}", ppl=f"{perplexity(mean):.4g}", tok_s=f"{rate:,.0f}",
                                 refresh=False)
            train_note = f"train loss {mean:.3f} (ppl {describe_perplexity(perplexity(mean), mean, 1)}), " \
                         f"{rate:,.0f} tokens/s; "
        if evaluate:
            valid, improved = self.validate()
            record.update(valid_ppl=valid.perplexity, valid_loss=valid.mean_nll)
        self.metrics.write(record)  # before the checkpoints of this step (the module docstring)
        self.window.reset()
        if not evaluate:
            return
        self.save_checkpoints(improved)
        note = " (best so far, saved best.pt)" if improved else f" (best {p.best:.2f})"
        where = f"step {p.step} (epoch {p.epoch + 1 if in_epoch else p.epoch})"
        oov = oov_rate(self.data.splits["valid"])
        self.dist.say(f"{where}: {train_note}valid ppl {describe_perplexity(valid.perplexity, valid.mean_nll)} "
                      f"(OOV {oov:.1%}){note}", write=self.bar.write, file=sys.stdout)

    def validate(self) -> tuple[EvalResult, bool]:
        """(the validation, whether its perplexity is the best so far), with the run's bookkeeping of both.
        NonFiniteError when the validation loss is not finite."""
        p = self.progress
        valid = self.dist.evaluate(self.model, self.data.splits["valid"])
        check_finite_validation(valid.mean_nll, p.step)
        ppl = valid.perplexity
        self.last_eval_step = p.step
        improved = ppl < p.best
        p.bad_evals = 0 if improved else p.bad_evals + 1
        if not improved and self.cfg.lr_schedule == "plateau":
            p.lr_scale /= PLATEAU_FACTOR
        if improved:
            p.best = ppl
        return valid, improved

    def save_checkpoints(self, improved: bool) -> None:
        """best.pt if the validation just taken improved, then last.pt."""
        if improved:
            self.save(self.folder.best)
        self.save(self.folder.last)

    def elapsed(self) -> float:
        """Seconds of training, across resumes."""
        return self.progress.elapsed_before + (time.perf_counter() - self.t_start)

    def save(self, path: Path) -> None:
        """Rank 0 writes the checkpoint; the others send it their rows of the hidden state and random states."""
        p = self.progress
        hidden = None if p.hidden is None else p.hidden.detach().cpu()
        parts = self.dist.gather_to_writer({"hidden": hidden, "rng_state": capture_rng_state()})
        if parts is None:
            return
        per_process: dict[str, Any] = {"world_size": self.dist.world_size}
        if self.dist.active:
            per_process["rank_rng_states"] = [part["rng_state"] for part in parts]
            hidden = None if hidden is None else torch.cat([part["hidden"] for part in parts], dim=1)
        save_checkpoint(path, {**per_process,
            "model_config": self.model.config.to_dict(), "model_state": self.model.state_dict(),
            "optimizer_state": self.optimizer.state_dict(), "train_config": self.cfg.to_dict(),
            "vocab": self.data.vocab.to_list(), "tokenizer": self.data.settings.to_dict(),
            "corpus": self.data.corpus_record(), "step": p.step, "epoch": p.epoch,
            "data_state": self.data.batches.state_dict(),
            "hidden": hidden, "rng_state": parts[0]["rng_state"],
            "best_valid_ppl": None if math.isinf(p.best) else p.best,
            "elapsed": self.elapsed(),
            "lr_scale": p.lr_scale, "bad_evals": p.bad_evals, "schedule_total": self.horizon,
        })

    # -- finish --------------------------------------------------------------------------------------------------
    def finish(self, result: TrainResult) -> TrainResult:
        """Test perplexity of the best model (best.pt, else the current one) and one sample from it, printed."""
        best = load_checkpoint(self.folder.best) if self.dist.writer and self.folder.best.exists() else None
        best_step = self.dist.from_writer(None if best is None else int(best["step"]))
        if best_step is not None:
            if best is not None:
                self.model.load_state_dict(best["model_state"])
            self.dist.broadcast_state(self.model)
            which = f"best.pt, step {best_step}"
        else:
            which = f"step {self.progress.step}"
        test = self.dist.evaluate(self.model, self.data.splits["test"])
        result.test_perplexity = test.perplexity
        self.dist.say(f"test perplexity: {describe_perplexity(test.perplexity, test.mean_nll)} ({which}; "
                      f"{test.n_targets:,} targets; OOV {oov_rate(self.data.splits['test']):.1%})")
        if self.cfg.sample_length > 0 and self.dist.writer:
            result.sample = generate(self.model, self.data.vocab, self.data.settings, self.cfg.sample_prompt,
                                     self.cfg.sample_length, temperature=0.8, seed=self.cfg.seed)[0]
            self.dist.say(f"sample: {result.sample}")
        return result
