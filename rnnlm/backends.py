"""The two backends, side by side: everything that differs between them is in this file.

Both run on one parameter set, the WordRNN's own `nn.RNN`, embedding and output layer, so a checkpoint trained on
one runs on the other. A WordRNN holds one backend object and calls it for:

    what                 torch                                        triton
    recurrence           the nn.RNN module itself: cuDNN on a GPU,    kernels.rnn.rnn on the module's weights
                         ATen on a CPU
    loss (evaluation)    F.cross_entropy on the logits                kernels.cross_entropy on the logits
    loss (training)      the output layer and the loss fused          the output layer, then
                         (rnnlm.ops.linear_cross_entropy, its         kernels.cross_entropy, all under the
                         products in bf16 under --precision bf16);    caller's autocast
                         the recurrence stays fp32
    one-token step       TorchStepper: weights laid out once, the     the model's forward on (N, 1)
                         output layer in fp32, fp16 or int8
    the draw             inverse CDF from uniforms drawn up front     kernels.sample: Gumbel-max, its random
                         (int8: rejection sampling, exact)            numbers keyed by (seed, step, row, column)

Why the torch recurrence stays fp32 under bf16: its state is carried from step to step (and with stream batching
from batch to batch), and the output layer is most of a step's arithmetic, so bf16 there buys little speed.

The triton kernels are imported when that backend is chosen; when they cannot be imported, choosing it raises
UsageError: there is never a silent fallback to torch. The name "cudnn" is accepted for the torch backend (the
name rnnlm used before; old checkpoints and commands carry it).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

import kernels
from rnnlm.checks import one_of
from rnnlm.errors import UsageError
from rnnlm.inference.sampling import Sampling, draw, filter_logits
from rnnlm.inference.stepper import TorchStepper
from rnnlm.ops.linear_cross_entropy import linear_cross_entropy

if TYPE_CHECKING:
    from rnnlm.model import WordRNN

log = logging.getLogger("rnnlm.model")

BACKENDS = ("torch", "triton")
ALIASES = {"cudnn": "torch"}
BACKEND_CHOICES = BACKENDS + tuple(ALIASES)  # what --backend accepts
_SEED_MIX = 0x9E3779B97F4A7C15  # spreads (seed, step) over the sampling kernel's seed range


def canonical_name(name: str) -> str:
    """"torch" or "triton" for any accepted backend name (UsageError otherwise)."""
    return ALIASES.get(one_of("backend", name, BACKEND_CHOICES), name)


def resolve_backend(name: str | None, device: str | torch.device | None = None) -> str:
    """The backend to use: `name` when given, else "triton" when CUDA is available and "torch" otherwise.

    Logs the choice when it was made here, so the user sees which backend runs.
    """
    if name is not None:
        return canonical_name(name)
    on_cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
    chosen = "triton" if on_cuda else "torch"
    log.info("backend: %s (%s; pass --backend to choose)", chosen, "CUDA is available" if on_cuda else "no CUDA device")
    return chosen


def get_backend(name: str) -> Backend:
    """A backend object by name (aliases accepted)."""
    return TritonBackend() if canonical_name(name) == "triton" else TorchBackend()


class Backend(Protocol):
    """What each backend provides. Shapes: B batch, T time, E embed, H hidden, L layers, V vocabulary, N samples."""

    name: str
    timed: bool  # whether rnnlm times candidate speed settings for it (rnnlm.tuning)

    def describe(self, device: torch.device) -> str:
        """Which library runs the model on `device`, for the user (e.g. "torch (nn.RNN on ATen, CPU)")."""

    def recurrence(self, rnn: nn.RNN, emb: torch.Tensor, hidden: torch.Tensor | None):
        """The recurrence on rnn's weights: emb (B, T, E), hidden (L, B, H) or None -> (out (B, T, H), h_n)."""

    def cross_entropy(self, logits: torch.Tensor, targets: torch.Tensor, reduction: str) -> torch.Tensor:
        """Cross-entropy of logits (N, V) fp32 against targets (N,): "mean" or "sum" (evaluation's exact sums)."""

    def training_loss(self, model: WordRNN, x: torch.Tensor, y: torch.Tensor, hidden: torch.Tensor | None,
                      compute_dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean cross-entropy, new hidden) for a training step, differentiable; the value of model.loss."""

    def decoder(self, model: WordRNN, hidden: torch.Tensor, sampling: Sampling, output_precision: str, seed: int,
                length: int):
        """Generation's step and draw for N samples from the primed state hidden (L, N, H): an object with
        first(logits (N, V), out (N, 1)) and next(tokens (N,), t, out (N, 1)), each writing the words drawn."""


class TorchBackend(Backend):
    name = "torch"
    timed = True  # its speed settings are timed on the machine (rnnlm.tuning: threads, precisions)

    def describe(self, device: torch.device) -> str:
        if device.type == "cuda" and torch.backends.cudnn.is_available() and torch.backends.cudnn.enabled:
            return "torch (nn.RNN on cuDNN)"
        return f"torch (nn.RNN on ATen, {device.type.upper()})"

    def recurrence(self, rnn: nn.RNN, emb: torch.Tensor, hidden: torch.Tensor | None):
        return rnn(emb, hidden)

    def cross_entropy(self, logits: torch.Tensor, targets: torch.Tensor, reduction: str) -> torch.Tensor:
        return F.cross_entropy(logits, targets, reduction=reduction)

    def training_loss(self, model: WordRNN, x, y, hidden, compute_dtype):
        with torch.autocast(x.device.type, enabled=False):
            out, h_n = model.recurrence(x, hidden)                         # (B, T, H) fp32
        loss = linear_cross_entropy(out.reshape(-1, out.shape[-1]), model.fc.weight, model.fc.bias, y.reshape(-1),
                                    compute_dtype)
        return loss, h_n

    def decoder(self, model: WordRNN, hidden: torch.Tensor, sampling: Sampling, output_precision: str, seed: int,
                length: int) -> _TorchDecoder:
        return _TorchDecoder(model, hidden, sampling, output_precision, seed, length)


class TritonBackend(Backend):
    name = "triton"
    timed = False  # nothing timed: on a CPU it runs in Triton's interpreter, too slow to time

    def __init__(self):
        try:
            from kernels.cross_entropy import cross_entropy
            from kernels.rnn import rnn
            from kernels.sample import sample
        except Exception as err:  # ImportError, or a kernel module failing at import time
            raise UsageError(f"backend 'triton' is unavailable: the kernels could not be imported "
                             f"({type(err).__name__}: {err}); use {{backend}} torch", params=("backend",)) from err
        self._rnn, self._cross_entropy, self._sample = rnn, cross_entropy, sample

    def describe(self, device: torch.device) -> str:
        where = "in Triton's interpreter on the CPU" if kernels.INTERPRETED else "on CUDA"
        return f"triton (rnnlm's kernels {where})"

    def recurrence(self, rnn: nn.RNN, emb: torch.Tensor, hidden: torch.Tensor | None):
        return self._rnn(emb, hidden, rnn._flat_weights, num_layers=rnn.num_layers, nonlinearity=rnn.nonlinearity,
                         bias=rnn.bias, batch_first=True, dropout=rnn.dropout, training=rnn.training,
                         bidirectional=False)

    def cross_entropy(self, logits: torch.Tensor, targets: torch.Tensor, reduction: str) -> torch.Tensor:
        return self._cross_entropy(logits, targets, reduction=reduction)

    def training_loss(self, model: WordRNN, x, y, hidden, compute_dtype):
        return model.loss(x, y, hidden)

    def decoder(self, model: WordRNN, hidden: torch.Tensor, sampling: Sampling, output_precision: str, seed: int,
                length: int) -> _TritonDecoder:
        return _TritonDecoder(model, hidden, sampling, seed, self._sample)


class _TorchDecoder:
    """Steps with TorchStepper and draws by inverse CDF, or by rejection against the int8 envelope."""

    def __init__(self, model: WordRNN, hidden: torch.Tensor, sampling: Sampling, output_precision: str, seed: int,
                 length: int):
        self.stepper = TorchStepper(model, hidden, output_precision)
        self.envelope = self.stepper.w.fc_int8
        self.sampling = sampling
        self.generator = torch.Generator(device=hidden.device).manual_seed(seed)
        self.uniforms = None
        if self.envelope is None and not sampling.greedy:
            # every uniform at once: one generator call instead of one per step
            n = hidden.shape[1]
            self.uniforms = torch.rand(length, n, 1, generator=self.generator, device=hidden.device).unbind(0)

    def first(self, logits: torch.Tensor, out: torch.Tensor) -> None:
        """out (N, 1) <- the first word, drawn from the prompt's fp32 logits (N, V)."""
        s = self.sampling
        if self.envelope is not None:
            draw(logits, s.inv_temperature, s.shift, torch.rand(out.shape[0], 1, generator=self.generator), out)
        else:
            self._draw(logits, 0, out)

    def next(self, tokens: torch.Tensor, t: int, out: torch.Tensor) -> None:
        """Feeds the words tokens (N,) and draws word t into out (N, 1)."""
        if self.envelope is not None:
            self.envelope.draw(self.stepper.hidden_step(tokens), self.sampling.inv_temperature, self.generator, out)
        else:
            self._draw(self.stepper.step(tokens), t, out)

    def _draw(self, logits: torch.Tensor, t: int, out: torch.Tensor) -> None:
        s = self.sampling
        if s.greedy:
            torch.argmax(logits, dim=-1, keepdim=True, out=out)
        else:
            z = filter_logits(logits, s.top_k, s.top_p) if s.filtered else logits
            draw(z, s.inv_temperature, s.shift, self.uniforms[t], out)


class _TritonDecoder:
    """Steps through the model's own forward (kernels.rnn, one time step) and draws with kernels.sample."""

    def __init__(self, model: WordRNN, hidden: torch.Tensor, sampling: Sampling, seed: int, sample):
        self.model, self.state, self.sampling, self.seed, self.sample = model, hidden, sampling, seed, sample

    def first(self, logits: torch.Tensor, out: torch.Tensor) -> None:
        self._draw(logits, 0, out)

    def next(self, tokens: torch.Tensor, t: int, out: torch.Tensor) -> None:
        logits, self.state = self.model(tokens.view(-1, 1), self.state)
        self._draw(logits[:, -1], t, out)

    def _draw(self, logits: torch.Tensor, t: int, out: torch.Tensor) -> None:
        s = self.sampling
        # A fresh seed per step: the kernel's counter-based generator is keyed by (seed, row, column).
        step_seed = (self.seed * _SEED_MIX + t) % 2**62
        out.copy_(self.sample(logits.float().contiguous(), 0.0 if s.greedy else float(s.temperature), step_seed,
                              top_k=s.top_k, top_p=s.top_p).view(-1, 1))
