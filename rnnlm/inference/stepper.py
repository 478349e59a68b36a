"""The trained WordRNN stepped one word at a time with torch ops (the torch backend's generation step).

A step of the default model is dominated by the output layer, a (V = 10,000 × H = 512) matrix times one vector:
20 MB of fp32 weights read for 5 M multiply-adds, so its cost is memory traffic. nn.Linear on a (1, 1, H) input
multiplies by W (V, H) stored row-major as the transposed operand, and MKL's gemm packs that operand on every
call (the 20 MB are read, written and read again); here the output layer keeps a contiguous copy of Wᵀ (H, V)
and `addmm(b, h (N, H), Wᵀ)` streams it once, in order (or reads a smaller copy: rnnlm.inference.precision).
The recurrence is stepped by hand the same way (W_ihᵀ, W_hhᵀ contiguous, the two biases pre-summed, layer 0's
input term looked up in a (V, H) table of embedding @ W_ihᵀ + b, the state in two preallocated buffers used in
turn, in-place activations), all under torch.inference_mode, so a step is about a dozen ATen calls. The prepared
copies are cached per model until its parameters change.

The mat-vecs can also run through numpy (matvec="numpy": its BLAS, OpenBLAS in numpy's wheels) on the same
buffers, which share memory with the torch tensors: torch's BLAS for a one-row product can be much slower than
OpenBLAS's (or faster: it depends on the CPU and the libraries' builds), so rnnlm.inference.precision times both.
Only the products and the activations move; the fp16 and int8 output layers stay fbgemm's, and the draw stays
torch's.

`prime` reads a prompt once before stepping (both backends).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch

try:  # numpy's BLAS for the mat-vecs where it is faster; a GPU image may lack numpy
    import numpy as np
except ImportError:
    np = None

from rnnlm.inference.fp16 import pack_fp16
from rnnlm.inference.int8_envelope import Int8Envelope, int8_envelope

if TYPE_CHECKING:
    from rnnlm.model import WordRNN

INPUT_TABLE_MAX_BYTES = 64 * 2**20  # layer 0's input table (see step_weights) up to this size
PRIME_CHUNK = 4096  # prompt tokens per forward while priming: bounds memory for a prompt of any length
MATVEC_LIBRARIES = ("torch", "numpy") if np is not None else ("torch",)


@dataclass
class StepWeights:
    """The model's weights laid out for stepping: W^T (in, out) contiguous for `addmm(b, x, W^T)`."""

    act_: object  # torch.tanh_ or torch.relu_
    embedding: torch.Tensor  # (V, E)
    layers: list  # per layer (W_ih^T (in, H), W_hh^T (H, H), b_ih + b_hh (H,))
    input_table: torch.Tensor | None  # (V, H) embedding @ W_ih^T + b of layer 0: a word's input term, looked up
    fc_w_t: torch.Tensor | None  # (H, V), the fp32 output layer (None when fp16 is used)
    fc_fp16: object  # fbgemm's packed fp16 (V, H) output weights, or None
    fc_int8: Int8Envelope | None  # the int8 envelope (output precision int8; then use hidden_step), or None
    fc_b: torch.Tensor  # (V,)


# Prepared weights per model, reused while its parameters are unchanged (a later optimizer step bumps their
# version counters): the layout copies and the fp16 packing cost about as much as a hundred steps.
_PREPARED: "weakref.WeakKeyDictionary[WordRNN, tuple]" = weakref.WeakKeyDictionary()


def step_weights(model: WordRNN, output_precision: str) -> StepWeights:
    """The model's weights laid out for stepping, with the output layer in `output_precision` (cached)."""
    key = (output_precision, tuple((p.data_ptr(), p._version, p.device) for p in model.parameters()))
    cached = _PREPARED.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    rnn = model.rnn
    layers = []
    for k in range(rnn.num_layers):
        w_ih_t = getattr(rnn, f"weight_ih_l{k}").detach().t().contiguous()  # (in, H)
        w_hh_t = getattr(rnn, f"weight_hh_l{k}").detach().t().contiguous()  # (H, H)
        if rnn.bias:
            bias = (getattr(rnn, f"bias_ih_l{k}") + getattr(rnn, f"bias_hh_l{k}")).detach()
        else:
            bias = torch.zeros(w_hh_t.shape[1], dtype=w_hh_t.dtype, device=w_hh_t.device)
        layers.append((w_ih_t, w_hh_t, bias))
    # Layer 0's input term depends on the word alone: a (V, H) table saves a step that mat-vec (W_ih is 0.5 MB
    # for the default model). It is as large as the output layer, so it is kept only where that is modest.
    table_bytes = model.config.vocab_size * rnn.hidden_size * layers[0][0].element_size()
    input_table = None
    if table_bytes <= INPUT_TABLE_MAX_BYTES:
        w_ih_t, _, bias = layers[0]
        input_table = torch.addmm(bias, model.embedding.weight.detach(), w_ih_t)
    fc_w = model.fc.weight.detach()
    fc_int8 = int8_envelope(fc_w, model.fc.bias.detach()) if output_precision == "int8" else None
    fc_fp16 = pack_fp16(fc_w) if output_precision == "fp16" or (output_precision == "int8" and fc_int8 is None) \
        else None
    weights = StepWeights(
        act_=torch.tanh_ if rnn.nonlinearity == "tanh" else torch.relu_,
        embedding=model.embedding.weight.detach(), layers=layers, input_table=input_table,
        # (H, V): h @ W^T streams W^T row by row
        fc_w_t=fc_w.t().contiguous() if fc_fp16 is None and fc_int8 is None else None,
        fc_fp16=fc_fp16, fc_int8=fc_int8, fc_b=model.fc.bias.detach())
    _PREPARED[model] = (key, weights)
    return weights


class TorchStepper:
    """The trained WordRNN stepped one word at a time with torch ops, for N sequences (inference only).

    `step(tokens (N,))` returns the next-word logits (N, V) (a buffer that the next step may overwrite). The state
    lives in two preallocated (L, N, H) buffers used in turn; every op writes in place or into a buffer.
    """

    def __init__(self, model: WordRNN, hidden: torch.Tensor, output_precision: str = "fp32",
                 matvec: str = "torch"):
        if matvec not in MATVEC_LIBRARIES:
            raise ValueError(f"matvec must be one of {MATVEC_LIBRARIES}, got {matvec!r}")
        self.w = step_weights(model, output_precision)
        self.state = hidden.detach().clone().contiguous()  # (L, N, H)
        self.spare = torch.empty_like(self.state)
        n, v = hidden.shape[1], model.config.vocab_size
        self.logits = torch.empty(n, v, dtype=self.w.fc_b.dtype, device=self.w.fc_b.device)
        numpy_ok = self.state.device.type == "cpu" and self.state.dtype == torch.float32
        self.arrays = _NumpyArrays(self) if matvec == "numpy" and numpy_ok else None

    def hidden_step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feeds tokens (N,); returns the top layer's new state (N, H) (a view that the next step overwrites)."""
        if self.arrays is not None:
            return self._hidden_step_numpy(tokens)
        w = self.w
        x = w.embedding.index_select(0, tokens) if w.input_table is None else None  # (N, E)
        new, old = self.spare, self.state
        for k, (w_ih_t, w_hh_t, bias) in enumerate(w.layers):
            h = new[k]
            if k == 0 and w.input_table is not None:
                torch.index_select(w.input_table, 0, tokens, out=h)
            else:
                torch.addmm(bias, x, w_ih_t, out=h)
            h.addmm_(old[k], w_hh_t)
            w.act_(h)
            x = h
        self.state, self.spare = new, old
        return x

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        w = self.w
        x = self.hidden_step(tokens)
        if w.fc_fp16 is not None:
            return torch.fbgemm_linear_fp16_weight(x, w.fc_fp16, w.fc_b)
        if self.arrays is not None and self.arrays.fc_w_t is not None:
            a = self.arrays
            np.dot(a.state[-1], a.fc_w_t, out=a.logits)
            a.logits += a.fc_b
            return self.logits
        return torch.addmm(w.fc_b, x, w.fc_w_t, out=self.logits)

    def _hidden_step_numpy(self, tokens: torch.Tensor) -> torch.Tensor:
        """hidden_step with numpy's BLAS on numpy views of the same buffers."""
        a = self.arrays
        ids = tokens.numpy()
        new, old = a.spare, a.state
        x = a.embedding[ids] if a.input_table is None else None  # (N, E)
        for k, (w_ih_t, w_hh_t, bias) in enumerate(a.layers):
            h = new[k]
            if k == 0 and a.input_table is not None:
                np.take(a.input_table, ids, axis=0, out=h)
            else:
                np.dot(x, w_ih_t, out=h)
                h += bias
            np.dot(old[k], w_hh_t, out=a.product)
            h += a.product
            a.act(h, out=h)
            x = h
        a.state, a.spare = new, old
        self.state, self.spare = self.spare, self.state  # the torch views of the same two buffers, kept in step
        return self.state[-1]


class _NumpyArrays:
    """numpy views of a TorchStepper's weights and buffers (shared memory: no copy), for matvec="numpy"."""

    def __init__(self, stepper: TorchStepper):
        w = stepper.w
        self.layers = [(w_ih_t.numpy(), w_hh_t.numpy(), bias.numpy()) for w_ih_t, w_hh_t, bias in w.layers]
        self.embedding = w.embedding.numpy()
        self.input_table = w.input_table.numpy() if w.input_table is not None else None
        self.fc_w_t = w.fc_w_t.numpy() if w.fc_w_t is not None else None
        self.fc_b, self.logits = w.fc_b.numpy(), stepper.logits.numpy()
        self.state, self.spare = stepper.state.numpy(), stepper.spare.numpy()  # (L, N, H), swapped with the stepper's
        self.product = np.empty_like(self.state[0])  # (N, H)
        self.act = np.tanh if w.act_ is torch.tanh_ else _relu


def _relu(x, out):
    return np.maximum(x, 0, out=out)


def prime(model: WordRNN, prompt_ids: Sequence[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Reads the prompt once: (logits of the word after it (1, V), hidden state (L, 1, H)).

    The recurrence runs over the prompt in chunks of PRIME_CHUNK words; the output layer only on the last word.
    """
    ids = torch.as_tensor(list(prompt_ids), dtype=torch.int64, device=device).view(1, -1)
    hidden = None
    for start in range(0, ids.shape[1], PRIME_CHUNK):
        out, hidden = model.recurrence(ids[:, start:start + PRIME_CHUNK], hidden)
    return model.fc(out[:, -1]), hidden
