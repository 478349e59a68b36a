"""The word-level RNN language model: Embedding -> RNN -> Linear, with two interchangeable backends.

Both backends run on one parameter set, the `torch.nn.RNN` module's own weights (`self.rnn`):

- ``cudnn``: calls `self.rnn` itself (cuDNN on a GPU, ATen on the CPU) and `F.cross_entropy`.
- ``triton``: calls `kernels.rnn.rnn` with `self.rnn._flat_weights` and `kernels.cross_entropy`.

So a checkpoint trained on one backend runs on the other, and `model.backend = "triton"` switches a loaded
model. The triton kernels are imported lazily, only when that backend is chosen; when they cannot be
imported, choosing it raises UsageError: there is never a silent fallback to torch.

Shapes: B batch, T time steps, E embed size, H hidden size, L layers, V vocabulary size.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from rnnlm.errors import UsageError

log = logging.getLogger("rnnlm.model")

BACKENDS = ("cudnn", "triton")
NONLINEARITIES = ("tanh", "relu")


@dataclass
class ModelConfig:
    """The model's shape; stored in every checkpoint as a dict (to_dict / from_dict)."""

    vocab_size: int
    embed_size: int = 256
    hidden_size: int = 512
    num_layers: int = 2
    nonlinearity: str = "tanh"
    dropout: float = 0.0  # between RNN layers, training only (nn.RNN's own dropout)
    tie_weights: bool = False  # fc.weight is embedding.weight; needs embed_size == hidden_size

    def validate(self) -> None:
        """UsageError (one line) for a shape the model cannot have."""
        for name in ("vocab_size", "embed_size", "hidden_size", "num_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise UsageError(f"{name} must be a positive integer, got {value!r}")
        if self.nonlinearity not in NONLINEARITIES:
            raise UsageError(f"nonlinearity must be one of {', '.join(NONLINEARITIES)}, got {self.nonlinearity!r}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.tie_weights and self.embed_size != self.hidden_size:
            raise UsageError(
                f"tie_weights needs embed_size == hidden_size (the output layer reuses the embedding matrix), "
                f"got embed_size {self.embed_size} and hidden_size {self.hidden_size}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """The config from a dict; unknown keys are an error (a checkpoint from another program)."""
        if not isinstance(data, dict):
            raise UsageError(f"model config must be a dict, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise UsageError(f"unknown model config keys: {', '.join(map(str, unknown))}")
        if "vocab_size" not in data:
            raise UsageError("model config has no vocab_size")
        return cls(**data)


def resolve_backend(name: str | None, device: str | torch.device | None = None) -> str:
    """The backend to use: `name` when given, else "triton" when CUDA is available and "cudnn" otherwise.

    Logs the choice when it was made here, so the user sees which backend runs.
    """
    if name is not None:
        if name not in BACKENDS:
            raise UsageError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")
        return name
    on_cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
    chosen = "triton" if on_cuda else "cudnn"
    reason = "CUDA is available" if on_cuda else "no CUDA device"
    log.info("backend: %s (%s; pass --backend to choose)", chosen, reason)
    return chosen


def resolve_device(name: str | torch.device | None) -> torch.device:
    """The torch device for `--device`: None means "cuda" when available, else "cpu"; UsageError if unusable."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError) as err:
        raise UsageError(f"invalid device {name!r}: {err}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {name!r} requested but CUDA is not available here; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"device must be cpu or cuda, got {name!r}")
    return device


def _triton_ops():
    """(kernels.rnn.rnn, kernels.cross_entropy.cross_entropy), imported on first use of the triton backend."""
    try:
        from kernels.cross_entropy import cross_entropy
        from kernels.rnn import rnn
    except Exception as err:  # ImportError, or a kernel module failing at import time
        raise UsageError(
            f"backend 'triton' is unavailable: the kernels could not be imported "
            f"({type(err).__name__}: {err}); use --backend cudnn") from err
    return rnn, cross_entropy


class WordRNN(nn.Module):
    """Embedding (V, E) -> nn.RNN (E -> H, L layers, batch_first) -> Linear (H -> V).

    `backend` ("cudnn" | "triton") only changes which code runs the recurrence and the loss; the parameters
    are always those of `self.rnn`, `self.embedding` and `self.fc`.
    """

    def __init__(self, config: ModelConfig, backend: str = "cudnn"):
        super().__init__()
        config.validate()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embed_size)
        self.rnn = nn.RNN(config.embed_size, config.hidden_size, config.num_layers,
                          nonlinearity=config.nonlinearity, batch_first=True,
                          dropout=config.dropout if config.num_layers > 1 else 0.0)
        self.fc = nn.Linear(config.hidden_size, config.vocab_size)
        if config.tie_weights:
            self.fc.weight = self.embedding.weight
        self._backend = "cudnn"
        self.backend = backend

    # -- backend -------------------------------------------------------------------------------------------
    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, name: str) -> None:
        if name not in BACKENDS:
            raise UsageError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")
        if name == "triton":
            _triton_ops()  # fail now, clearly, rather than at the first forward
        self._backend = name

    def extra_repr(self) -> str:
        return f"backend={self._backend!r}"

    # -- forward -------------------------------------------------------------------------------------------
    def init_hidden(self, batch_size: int) -> torch.Tensor:
        """Zeros (L, B, H) on the parameters' device and dtype."""
        w = self.fc.weight
        return torch.zeros(self.config.num_layers, batch_size, self.config.hidden_size,
                           device=w.device, dtype=w.dtype)

    def _check_input(self, x: torch.Tensor, hidden: torch.Tensor | None) -> None:
        if x.dim() != 2 or x.dtype != torch.int64:
            raise ValueError(f"x must be a (B, T) int64 tensor of token ids, got {x.dtype} of shape {tuple(x.shape)}")
        if hidden is not None:
            expected = (self.config.num_layers, x.shape[0], self.config.hidden_size)
            if tuple(hidden.shape) != expected:
                raise ValueError(f"hidden must have shape (L, B, H) = {expected}, got {tuple(hidden.shape)}")

    def recurrence(self, x: torch.Tensor, hidden: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The last layer's outputs (B, T, H) and the new hidden state (L, B, H), before the output layer."""
        self._check_input(x, hidden)
        emb = self.embedding(x)  # (B, T, E)
        if self._backend == "triton":
            rnn, _ = _triton_ops()
            out, h_n = rnn(emb, hidden, self.rnn._flat_weights, num_layers=self.rnn.num_layers,
                           nonlinearity=self.rnn.nonlinearity, bias=self.rnn.bias, batch_first=True,
                           dropout=self.rnn.dropout, training=self.training, bidirectional=False)
        else:
            out, h_n = self.rnn(emb, hidden)
        # Under autocast the recurrence may return a bf16 state; the state carried between batches stays in the
        # parameters' dtype, so it can be fed back inside or outside autocast.
        param_dtype = self.fc.weight.dtype
        if h_n.dtype != param_dtype:
            h_n = h_n.to(param_dtype)
        return out, h_n

    def forward(self, x: torch.Tensor, hidden: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T) int64, hidden (L, B, H) or None (zeros) -> logits (B, T, V), hidden (L, B, H)."""
        out, h_n = self.recurrence(x, hidden)
        return self.fc(out), h_n

    def loss(self, x: torch.Tensor, y: torch.Tensor, hidden: torch.Tensor | None = None,
             reduction: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy of the next-token targets y (B, T): (mean or sum over all B*T targets, hidden (L, B, H)).

        The loss is computed in fp32 even when the logits are bf16 (autocast).
        """
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        if y.shape != x.shape:
            raise ValueError(f"y must have the shape of x {tuple(x.shape)}, got {tuple(y.shape)}")
        logits, h_n = self(x, hidden)
        flat = logits.reshape(-1, logits.shape[-1]).float()  # (B*T, V)
        targets = y.reshape(-1)
        if self._backend == "triton":
            _, cross_entropy = _triton_ops()
            loss = cross_entropy(flat, targets, reduction=reduction)
        else:
            loss = F.cross_entropy(flat, targets, reduction=reduction)
        return loss, h_n

