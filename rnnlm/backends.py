"""The two backends, side by side: everything that differs between them is in this file.

Both run on one parameter set, the WordRNN's own `nn.RNN`, embedding and output layer, so a checkpoint trained on
one runs on the other. A WordRNN holds one backend object and calls it for:

    what                 torch                                        triton
    recurrence           the nn.RNN module itself: cuDNN on a GPU,    kernels.rnn.rnn on the module's weights
                         ATen on a CPU
    loss (evaluation)    F.cross_entropy on the logits (in fp32)      kernels.cross_entropy on the logits (their
                                                                      own dtype: the kernel reads bf16)
    softmax(z / T)       torch.softmax                                kernels.softmax (fused temperature)
    loss (training)      the output layer and the loss fused          the output layer, then
                         (rnnlm.ops.linear_cross_entropy, its         kernels.cross_entropy, all under the
                         products in bf16 under --precision bf16);    caller's autocast
                         the recurrence stays fp32
    one-token step       TorchStepper: weights laid out once, the     kernels.rnn.rnn_step (one launch per
                         output layer in fp32, fp16 or int8           layer), then the model's output layer
    the draw             inverse CDF from uniforms drawn up front     kernels.sample: Gumbel-max, its random
                         (int8: rejection sampling, exact)            numbers keyed by (seed, step, row, column)

Why the torch recurrence stays fp32 under bf16: its state is carried from step to step (and with stream batching
from batch to batch), and the output layer is most of a step's arithmetic, so bf16 there buys little speed.

The triton kernels are imported when that backend is chosen; when they cannot be imported, choosing it raises
UsageError: there is never a silent fallback to torch. The name "cudnn" is accepted for the torch backend (the
name rnnlm used before; old checkpoints and commands carry it).

Checks without host reads: the triton kernels' checks of values on the device (a target outside the vocabulary,
a row of logits with nothing to sample) go to a kernels.DeviceChecks (`device_checks`), which the caller reads
when it reports (training: at logging time; evaluation and generation: once, at the end), so no training step,
evaluation window or generated token waits for the GPU. torch's own ops check such values themselves.
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

    def device_checks(self, device: torch.device):
        """A kernels.DeviceChecks for this backend's ops on `device` (a tensor's device, with its index), or None
        when its ops check their inputs themselves."""

    def cross_entropy(self, logits: torch.Tensor, targets: torch.Tensor, reduction: str,
                      checks=None) -> torch.Tensor:
        """Cross-entropy of logits (N, V) against targets (N,): "mean" or "sum" (evaluation's exact sums), an fp32
        scalar (fp64 for fp64 logits). checks: device_checks()'s object, or None (check at once)."""

    def training_loss(self, model: WordRNN, x: torch.Tensor, y: torch.Tensor, hidden: torch.Tensor | None,
                      compute_dtype: torch.dtype | None, checks=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean cross-entropy, new hidden) for a training step, differentiable; the value of model.loss."""

    def softmax(self, logits: torch.Tensor, temperature: float) -> torch.Tensor:
        """softmax(logits / temperature) over the last dimension, differentiable (the distribution view)."""

    def decoder(self, model: WordRNN, hidden: torch.Tensor, sampling: Sampling, output_precision: str, seed: int,
                banned: torch.Tensor | None, matvec: str = "torch"):
        """Generation's step and draw for N samples from the primed state hidden (L, N, H): an object with
        first(logits (N, V), out (N, 1)) and next(tokens (N,), t, out (N, 1)), each writing the words drawn, and
        finish(), called once after the last draw (where deferred checks are read).
        banned (K,) int64 or None: ids never drawn (their logits -inf before every draw, greedy included).
        matvec: the library of the step's fp32 mat-vecs on a CPU (rnnlm.inference.stepper; torch backend only)."""


class TorchBackend(Backend):
    name = "torch"
    timed = True  # its speed settings are timed on the machine (rnnlm.tuning: threads, precisions)

    def describe(self, device: torch.device) -> str:
        if device.type == "cuda" and torch.backends.cudnn.is_available() and torch.backends.cudnn.enabled:
            return "torch (nn.RNN on cuDNN)"
        return f"torch (nn.RNN on ATen, {device.type.upper()})"

    def recurrence(self, rnn: nn.RNN, emb: torch.Tensor, hidden: torch.Tensor | None):
        return rnn(emb, hidden)

    def device_checks(self, device: torch.device) -> None:
        return None

    def cross_entropy(self, logits: torch.Tensor, targets: torch.Tensor, reduction: str,
                      checks=None) -> torch.Tensor:
        if logits.dtype != torch.float64:
            logits = logits.float()  # torch's log-softmax in fp32 at least
        return F.cross_entropy(logits, targets, reduction=reduction)

    def softmax(self, logits: torch.Tensor, temperature: float) -> torch.Tensor:
        return torch.softmax(logits / temperature, dim=-1)

    def training_loss(self, model: WordRNN, x, y, hidden, compute_dtype, checks=None):
        with torch.autocast(x.device.type, enabled=False):
            out, h_n = model.recurrence(x, hidden)                         # (B, T, H) fp32
        loss = linear_cross_entropy(out.reshape(-1, out.shape[-1]), model.fc.weight, model.fc.bias, y.reshape(-1),
                                    compute_dtype)
        return loss, h_n

    def decoder(self, model: WordRNN, hidden: torch.Tensor, sampling: Sampling, output_precision: str, seed: int,
                banned: torch.Tensor | None, matvec: str = "torch") -> _TorchDecoder:
        return _TorchDecoder(model, hidden, sampling, output_precision, seed, banned, matvec)


class TritonBackend(Backend):
    name = "triton"
    timed = False  # nothing timed: on a CPU it runs in Triton's interpreter, too slow to time

    def __init__(self):
        try:
            from kernels._utils import DeviceChecks
            from kernels.cross_entropy import cross_entropy
            from kernels.rnn import rnn, rnn_step
            from kernels.sample import sample
            from kernels.softmax import softmax
        except Exception as err:  # ImportError, or a kernel module failing at import time
            raise UsageError(f"backend 'triton' is unavailable: the kernels could not be imported "
                             f"({type(err).__name__}: {err}); use {{backend}} torch", params=("backend",)) from err
        self._rnn, self._rnn_step, self._cross_entropy, self._sample = rnn, rnn_step, cross_entropy, sample
        self._softmax, self._device_checks = softmax, DeviceChecks

    def describe(self, device: torch.device) -> str:
        where = "in Triton's interpreter on the CPU" if kernels.INTERPRETED else "on CUDA"
        return f"triton (rnnlm's kernels {where})"

    def recurrence(self, rnn: nn.RNN, emb: torch.Tensor, hidden: torch.Tensor | None):
        return self._rnn(emb, hidden, rnn._flat_weights, num_layers=rnn.num_layers, nonlinearity=rnn.nonlinearity,
                         bias=rnn.bias, batch_first=True, dropout=rnn.dropout, training=rnn.training,
                         bidirectional=False)

    def device_checks(self, device: torch.device):
        return self._device_checks(device)

    def cross_entropy(self, logits: torch.Tensor, targets: torch.Tensor, reduction: str,
                      checks=None) -> torch.Tensor:
        # the kernel reads bf16 logits as they are (fp32 accumulation); its bf16 result is made fp32 here
        loss = self._cross_entropy(logits, targets, reduction=reduction, checks=checks)
        return loss if loss.dtype == torch.float64 else loss.float()

    def softmax(self, logits: torch.Tensor, temperature: float) -> torch.Tensor:
        return self._softmax(logits, temperature)

    def training_loss(self, model: WordRNN, x, y, hidden, compute_dtype, checks=None):
        return model.loss(x, y, hidden, checks=checks)

    def decoder(self, model: WordRNN, hidden: torch.Tensor, sampling: Sampling, output_precision: str, seed: int,
                banned: torch.Tensor | None, matvec: str = "torch") -> _TritonDecoder:
        return _TritonDecoder(model, hidden, sampling, seed, self._rnn_step, self._sample,
                              self.device_checks(hidden.device), banned)


class _TorchDecoder:
    """Steps with TorchStepper and draws by inverse CDF, or by rejection against the int8 envelope."""

    UNIFORM_CHUNK = 256  # steps whose uniforms are drawn in one generator call (memory stays bounded)

    def __init__(self, model: WordRNN, hidden: torch.Tensor, sampling: Sampling, output_precision: str, seed: int,
                 banned: torch.Tensor | None, matvec: str = "torch"):
        self.stepper = TorchStepper(model, hidden, output_precision, matvec)
        self.envelope = self.stepper.w.fc_int8
        self.sampling, self.banned = sampling, banned
        self.generator = torch.Generator(device=hidden.device).manual_seed(seed)
        self.uniforms: list[torch.Tensor] = []

    def _uniform(self, t: int) -> torch.Tensor:
        """Step t's uniforms (N, 1), drawn UNIFORM_CHUNK steps at a time."""
        if t % self.UNIFORM_CHUNK == 0 or not self.uniforms:
            n = self.stepper.state.shape[1]
            self.uniforms = torch.rand(self.UNIFORM_CHUNK, n, 1, generator=self.generator,
                                       device=self.stepper.state.device).unbind(0)
        return self.uniforms[t % self.UNIFORM_CHUNK]

    def first(self, logits: torch.Tensor, out: torch.Tensor) -> None:
        """out (N, 1) <- the first word, drawn from the prompt's fp32 logits (N, V)."""
        s = self.sampling
        if self.envelope is not None:
            draw(_ban(logits, self.banned), s.inv_temperature, s.shift,
                 torch.rand(out.shape[0], 1, generator=self.generator), out)
        else:
            self._draw(logits, 0, out)

    def next(self, tokens: torch.Tensor, t: int, out: torch.Tensor) -> None:
        """Feeds the words tokens (N,) and draws word t into out (N, 1)."""
        if self.envelope is not None:
            self.envelope.draw(self.stepper.hidden_step(tokens), self.sampling.inv_temperature, self.generator, out,
                               self.banned)
        else:
            self._draw(self.stepper.step(tokens), t, out)

    def finish(self) -> None:
        pass

    def _draw(self, logits: torch.Tensor, t: int, out: torch.Tensor) -> None:
        s = self.sampling
        logits = _ban(logits, self.banned)
        if s.greedy:
            torch.argmax(logits, dim=-1, keepdim=True, out=out)
        else:
            z = filter_logits(logits, s.top_k, s.top_p) if s.filtered else logits
            draw(z, s.inv_temperature, s.shift, self._uniform(t), out)


class _TritonDecoder:
    """Steps with kernels.rnn.rnn_step (one launch per layer) and the model's output layer, and draws with
    kernels.sample; rows with nothing to sample are counted in `checks` (read once, by finish()), so no generated
    token waits for the device."""

    def __init__(self, model: WordRNN, hidden: torch.Tensor, sampling: Sampling, seed: int, rnn_step, sample,
                 checks, banned: torch.Tensor | None):
        self.model, self.state, self.sampling, self.seed = model, hidden, sampling, seed
        self.rnn_step, self.sample, self.checks, self.banned = rnn_step, sample, checks, banned
        rnn = model.rnn
        self.step_args = dict(num_layers=rnn.num_layers, nonlinearity=rnn.nonlinearity, bias=rnn.bias)

    def first(self, logits: torch.Tensor, out: torch.Tensor) -> None:
        self._draw(logits, 0, out)

    def next(self, tokens: torch.Tensor, t: int, out: torch.Tensor) -> None:
        m = self.model
        last, self.state = self.rnn_step(m.embedding(tokens), self.state, m.rnn._flat_weights, **self.step_args)
        self._draw(m.fc(last), t, out)                                     # (N, H) -> (N, V)

    def finish(self) -> None:
        self.checks.check()  # ValueError if a row had nothing to sample (NaN or all -inf logits)

    def _draw(self, logits: torch.Tensor, t: int, out: torch.Tensor) -> None:
        s = self.sampling
        # A fresh seed per step: the kernel's counter-based generator is keyed by (seed, row, column).
        step_seed = (self.seed * _SEED_MIX + t) % 2**62
        logits = _ban(logits, self.banned)
        out.copy_(self.sample(logits, 0.0 if s.greedy else float(s.temperature), step_seed, top_k=s.top_k,
                              top_p=s.top_p, checks=self.checks).view(-1, 1))


def _ban(logits: torch.Tensor, banned: torch.Tensor | None) -> torch.Tensor:
    """logits (N, V) with the banned columns at -inf, in place (the decoders' logits are their own buffers)."""
    return logits if banned is None else logits.index_fill_(1, banned, float("-inf"))
