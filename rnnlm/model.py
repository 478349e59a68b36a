"""The word-level RNN language model: Embedding -> RNN -> Linear, run by one of two backends.

The parameters are always those of `self.embedding`, `self.rnn` (a torch.nn.RNN) and `self.fc`; the backend
object (rnnlm.backends) decides which code runs the recurrence, the loss and generation's step and draw, so
`model.backend = "triton"` switches a loaded model without touching its weights.

Shapes: B batch, T time steps, E embed size, H hidden size, L layers, V vocabulary size.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from rnnlm.backends import Backend, get_backend
from rnnlm.checks import one_of, positive_int
from rnnlm.errors import UsageError

NONLINEARITIES = ("tanh", "relu")
REDUCTIONS = ("mean", "sum")


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
        """UsageError (one line, naming the field) for a shape the model cannot have."""
        for name in ("vocab_size", "embed_size", "hidden_size", "num_layers"):
            positive_int(name, getattr(self, name))
        one_of("nonlinearity", self.nonlinearity, NONLINEARITIES)
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"{{dropout}} must be in [0, 1), got {self.dropout!r}", params=("dropout",))
        if self.tie_weights and self.embed_size != self.hidden_size:
            raise UsageError(
                f"{{tie_weights}} needs {{embed_size}} equal to {{hidden_size}} (the output layer reuses the embedding "
                f"matrix), got {self.embed_size} and {self.hidden_size}",
                params=("tie_weights", "embed_size", "hidden_size"))

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


def resolve_device(name: str | torch.device | None) -> torch.device:
    """The torch device for `device`: None means "cuda" when available, else "cpu"; UsageError if unusable."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError) as err:
        raise UsageError(f"invalid device {name!r}: {err}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {name!r} requested but CUDA is not available here; use {{device}} cpu",
                         params=("device",))
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"{{device}} must be cpu or cuda, got {name!r}", params=("device",))
    return device


class WordRNN(nn.Module):
    """Embedding (V, E) -> nn.RNN (E -> H, L layers, batch_first) -> Linear (H -> V).

    `backend` ("torch" | "triton", or "cudnn" for "torch") only changes which code runs; see rnnlm.backends.
    """

    def __init__(self, config: ModelConfig, backend: str = "torch"):
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
        self._backend: Backend = get_backend(backend)

    @property
    def backend(self) -> Backend:
        return self._backend

    @backend.setter
    def backend(self, name: str) -> None:
        self._backend = get_backend(name)  # a failed switch (triton kernels missing) leaves the model as it was

    def extra_repr(self) -> str:
        return f"backend={self._backend.name!r}"

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
        out, h_n = self._backend.recurrence(self.rnn, self.embedding(x), hidden)
        # Under autocast the recurrence may return a bf16 state; the state carried between batches stays in the
        # parameters' dtype, so it can be fed back inside or outside autocast.
        param_dtype = self.fc.weight.dtype
        if h_n.dtype != param_dtype:
            h_n = h_n.to(param_dtype)
        return out, h_n

    def forward(self, x: torch.Tensor, hidden: torch.Tensor | None = None, targets: torch.Tensor | None = None,
                compute_dtype: torch.dtype | None = None, checks=None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T) int64, hidden (L, B, H) or None (zeros) -> logits (B, T, V), hidden (L, B, H).

        With targets (B, T): (training_loss, hidden) instead, so that a training step goes through forward
        (what wrappers such as DistributedDataParallel hook into); checks as in loss().
        """
        if targets is not None:
            return self.training_loss(x, targets, hidden, compute_dtype, checks=checks)
        out, h_n = self.recurrence(x, hidden)
        return self.fc(out), h_n

    def loss(self, x: torch.Tensor, y: torch.Tensor, hidden: torch.Tensor | None = None,
             reduction: str = "mean", checks=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy of the next-token targets y (B, T): (mean or sum over all B*T targets, hidden (L, B, H)).

        The loss is computed in fp32 even when the logits are bf16 (autocast), in fp64 for an fp64 model. checks:
        the backend's device_checks() object, where a target outside the vocabulary is counted for a later read (no
        host read here), or None (checked at once).
        """
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        if y.shape != x.shape:
            raise ValueError(f"y must have the shape of x {tuple(x.shape)}, got {tuple(y.shape)}")
        logits, h_n = self(x, hidden)
        flat = logits.reshape(-1, logits.shape[-1])  # (B*T, V), in the logits' dtype: the backend reads it
        return self._backend.cross_entropy(flat, y.reshape(-1), reduction, checks), h_n

    def next_word_distribution(self, x: torch.Tensor, hidden: torch.Tensor | None = None, temperature: float = 1.0,
                               mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """softmax(z / temperature) of the logits z after the last word of each row of x (B, T): (probabilities
        (B, V) in the parameters' dtype, hidden (L, B, H)). Differentiable; the backend's temperature softmax (on
        triton the fused kernel, kernels.softmax). mask (V,) bool: words given probability 0, the rest
        renormalised exactly (their logits set to -inf before the softmax)."""
        out, h_n = self.recurrence(x, hidden)
        logits = self.fc(out[:, -1])  # (B, V)
        if mask is not None:
            logits = logits.masked_fill(mask, float("-inf"))
        return self._backend.softmax(logits, temperature), h_n

    def training_loss(self, x: torch.Tensor, y: torch.Tensor, hidden: torch.Tensor | None = None,
                      compute_dtype: torch.dtype | None = None, checks=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean cross-entropy of y, new hidden): loss()'s value, computed the backend's fastest way for training.

        compute_dtype: the dtype of the output layer's products on the torch backend (bf16 for --precision bf16).
        checks: as in loss().
        """
        return self._backend.training_loss(self, x, y, hidden, compute_dtype, checks)
