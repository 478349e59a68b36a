"""Text generation from a checkpoint: prime on the prompt, then sample word by word on the device.

    python -m rnnlm.generate CKPT --prompt 你好 --length 200 --temperature 0.8 [--greedy] [--top-k K]
        [--top-p P] [--num-samples N] [--seed S] [--backend cudnn|triton] [--device cpu|cuda]

The prompt is tokenized with the checkpoint's tokenizer settings (unknown words become <unk>) and the model reads
it in one forward pass (in chunks for very long prompts, carrying the state); the prompt's last word is never fed
twice. Then each step feeds the word just drawn and draws the next one, for all samples at once (a batch of N).

Why a step is fast (cudnn backend, `_TorchStepper`): a step of the default model is dominated by the output
layer, a (V=10,000 x H=512) matrix times one vector: 20 MB of fp32 weights read for 5 M multiply-adds, so its
cost is memory traffic. nn.Linear on a (1, 1, H) input multiplies by W (V, H) stored row-major as the transposed
operand, and MKL's gemm packs that operand on every call (the 20 MB are read, written and read again); here the
output layer keeps a contiguous copy of W^T (H, V) and `addmm(b, h (N, H), W^T)` streams it once, in order. The
recurrence is stepped by hand the same way (W_ih^T, W_hh^T contiguous, the two biases pre-summed, layer 0's input
term looked up in a (V, H) table of embedding @ W_ih^T + b, the state in two preallocated buffers used in turn,
in-place activations), all under torch.inference_mode, so a step is about a dozen ATen calls. The prepared copies
are cached per model (until its parameters change). Sampling stays on the device with one uniform per sample,
drawn for all steps at once: softmax(z / T), its cumulative sum and a binary search (torch.searchsorted) for u; no
copy to numpy, no per-word Python beyond the loop itself.
When sampling on a CPU (output_precision "auto", the default; "fp32" turns it off) the step reads a smaller copy
of W instead. For one sample from a large output layer (the default model's) at temperatures from 0.5 up without
top-k / top-p: an int8 copy (a quarter of the bytes), and the draw stays exact: the int8 logits plus a proven
error bound are an upper envelope of the fp32 logits, and rejection sampling against it, with the fp32 logits of
a few proposed words only, draws exactly from the fp32 softmax (_Int8Envelope; 6,400-6,600 words/s for the
default model against 4,300-4,400 with fp16). Otherwise an fbgemm-packed fp16 copy: fp32 activations and
accumulation, half the bytes per step, logits within about 1e-3 of fp32 (probabilities within 0.2% at T = 0.8).
Preparing either copy costs about 0.1 s once per model. Greedy decoding keeps fp32, so its argmax is exactly the
model's.

The triton backend runs the model's own kernels: kernels.rnn for the recurrence (one time step per call) and
kernels.sample (Gumbel-max, counter-based RNG keyed by the seed) for the draw.
"""
from __future__ import annotations

import logging
import math
import sys
import warnings
import weakref
from dataclasses import dataclass
from typing import Sequence

import torch

from rnnlm.config import build_parser, from_namespace, option, require_positive
from rnnlm.errors import UsageError, run_cli
from rnnlm.model import BACKENDS, WordRNN

log = logging.getLogger("rnnlm.generate")

MIN_TEMPERATURE = 1e-30  # below this, (logit gaps) / T underflow anyway: the draw is the argmax (ties at random)
INPUT_TABLE_MAX_BYTES = 64 * 2**20  # layer 0's input table (see _step_weights) up to this size
PRIME_CHUNK = 4096  # prompt tokens per forward while priming: bounds memory for a prompt of any length
DEFAULT_PROMPT = "我们"
_SEED_MIX = 0x9E3779B97F4A7C15  # spreads (seed, step) over the kernel's seed range: a fresh seed every step


# -- sampling (torch ops) -------------------------------------------------------------------------------------

def check_sampling(temperature: float, greedy: bool, top_k: int | None, top_p: float | None) -> None:
    """UsageError for sampling settings that mean nothing (temperature <= 0, NaN or inf points to --greedy)."""
    if not greedy:
        if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature <= 0:
            raise UsageError(f"temperature must be a finite number > 0, got {temperature}; "
                             f"for argmax decoding use --greedy")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise UsageError(f"top-k must be an integer >= 1, got {top_k}")
    if top_p is not None and (not isinstance(top_p, (int, float)) or not math.isfinite(top_p)
                              or not 0.0 < top_p <= 1.0):
        raise UsageError(f"top-p must be in (0, 1], got {top_p}")


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """logits (N, V) with every word outside the top-k / top-p (nucleus) set at -inf (a new tensor if filtered).

    top-p keeps the smallest set of the most likely words whose probability reaches p (at least one word).
    """
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (N, 1) the k-th largest logit
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = probs.cumsum(-1) - probs  # probability of the words ranked strictly above each word
        drop_sorted = mass_before >= top_p  # the first word always has mass_before == 0, so it stays
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


OUTPUT_PRECISIONS = ("auto", "fp32", "fp16", "int8")
# "auto" uses the int8 envelope for one sample at temperatures from INT8_MIN_TEMPERATURE up (below, too many
# proposals are rejected) and output layers of at least INT8_MIN_OUTPUT_WEIGHTS entries (V x H): measured on this
# 2-core CPU, int8 against fp16 words/s: V x H 0.26 M: 13k vs 30k, 1.3 M: 10k vs 14k, 2.6 M: 7.2-8.8k vs 6.5-8.0k,
# 5.1 M: 6.0k vs 4.0k, 15 M: 3.6k vs 1.0k. Batches stay on fp16, which reads the weights once for every row.
INT8_MIN_TEMPERATURE = 0.5
INT8_MIN_OUTPUT_WEIGHTS = 2_000_000
SHIFT_BELOW = 1e-3  # temperatures below this subtract the row maximum first, so logits / T cannot overflow


def _draw(logits: torch.Tensor, inv_temperature: float, shift: bool, u: torch.Tensor, out: torch.Tensor) -> None:
    """out (N, 1) <- one draw per row of softmax(logits * inv_temperature) by inverse CDF, u (N, 1) uniform [0, 1).

    torch.softmax, not exp: ATen's vectorised exp splits even a 10,000-element row across threads, and waking
    a second thread every step costs more than the exp. The cumulative sum is searched for u * (its total, 1 up
    to rounding); the first index whose cumulative mass exceeds it never has probability 0 (a -inf logit).
    """
    z = logits - logits.amax(dim=-1, keepdim=True) if shift else logits
    cdf = torch.softmax(z * inv_temperature, dim=-1).cumsum_(dim=-1)  # (N, V)
    torch.searchsorted(cdf, u * cdf[:, -1:], right=True, out=out)
    out.clamp_(max=logits.shape[-1] - 1)


def sample_torch(logits: torch.Tensor, temperature: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row of softmax(logits / temperature): (N, V) -> (N,) int64, with torch ops on logits' device.

    Temperatures down to MIN_TEMPERATURE stay finite (the row maximum is subtracted first below SHIFT_BELOW).
    """
    n = logits.shape[0]
    u = torch.rand((n, 1), generator=generator, device=logits.device, dtype=torch.float32)
    out = torch.empty((n, 1), dtype=torch.int64, device=logits.device)
    temperature = max(float(temperature), MIN_TEMPERATURE)
    _draw(logits.float(), 1.0 / temperature, temperature < SHIFT_BELOW, u, out)
    return out.view(-1)


# -- stepping the model one word at a time ---------------------------------------------------------------------

@dataclass
class _StepWeights:
    """The model's weights laid out for stepping: W^T (in, out) contiguous for `addmm(b, x, W^T)`."""

    act_: object  # torch.tanh_ or torch.relu_
    embedding: torch.Tensor  # (V, E)
    layers: list  # per layer (W_ih^T (in, H), W_hh^T (H, H), b_ih + b_hh (H,))
    input_table: torch.Tensor | None  # (V, H) embedding @ W_ih^T + b of layer 0: a word's input term, looked up
    fc_w_t: torch.Tensor | None  # (H, V), the fp32 output layer (None when fp16 is used)
    fc_fp16: object  # fbgemm's packed fp16 (V, H) output weights, or None
    fc_int8: "_Int8Envelope | None"  # the int8 envelope (output precision int8; then use hidden_step), or None
    fc_b: torch.Tensor  # (V,)


# Prepared weights per model, reused while its parameters are unchanged (a later optimizer step bumps their
# version counters): the layout copies and the fp16 packing cost about as much as a hundred steps.
_PREPARED: "weakref.WeakKeyDictionary[WordRNN, tuple]" = weakref.WeakKeyDictionary()


def _step_weights(model: WordRNN, output_precision: str) -> _StepWeights:
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
    fc_int8 = _int8_envelope(fc_w, model.fc.bias.detach()) if output_precision == "int8" else None
    fc_fp16 = _pack_fp16(fc_w) if output_precision == "fp16" or (output_precision == "int8" and fc_int8 is None) \
        else None
    weights = _StepWeights(
        act_=torch.tanh_ if rnn.nonlinearity == "tanh" else torch.relu_,
        embedding=model.embedding.weight.detach(), layers=layers, input_table=input_table,
        # (H, V): h @ W^T streams W^T row by row
        fc_w_t=fc_w.t().contiguous() if fc_fp16 is None and fc_int8 is None else None,
        fc_fp16=fc_fp16, fc_int8=fc_int8, fc_b=model.fc.bias.detach())
    _PREPARED[model] = (key, weights)
    return weights


class _TorchStepper:
    """The trained WordRNN stepped one word at a time with torch ops, for N sequences (inference only).

    `step(tokens (N,))` returns the next-word logits (N, V) (a buffer that the next step may overwrite). The state
    lives in two preallocated (L, N, H) buffers used in turn; every op writes in place or into a buffer.
    """

    def __init__(self, model: WordRNN, hidden: torch.Tensor, output_precision: str = "fp32"):
        self.w = _step_weights(model, output_precision)
        self.state = hidden.detach().clone().contiguous()  # (L, N, H)
        self.spare = torch.empty_like(self.state)
        n, v = hidden.shape[1], model.config.vocab_size
        self.logits = torch.empty(n, v, dtype=self.w.fc_b.dtype, device=self.w.fc_b.device)

    def hidden_step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feeds tokens (N,); returns the top layer's new state (N, H) (a view that the next step overwrites)."""
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
        return torch.addmm(w.fc_b, x, w.fc_w_t, out=self.logits)


def _pack_fp16(weight: torch.Tensor):
    """fbgemm's packed fp16 copy of an fp32 (V, H) weight, or None where fbgemm cannot run (then fp32 is used).

    fbgemm multiplies fp32 activations by fp16 weights with fp32 accumulation: half the bytes of the fp32
    mat-vec that bounds a generation step on a CPU, for logits that differ by about 1e-3 (weights rounded to 11
    significant bits).
    """
    usable = weight.device.type == "cpu" and weight.dtype == torch.float32
    if not usable or not hasattr(torch, "fbgemm_pack_gemm_matrix_fp16"):
        log.info("generate: fp16 output weights need fbgemm on a CPU; using fp32")
        return None
    low, high = torch.aminmax(weight)
    if not (-65504 < float(low) and float(high) < 65504):  # beyond fp16's range (or NaN)
        log.info("generate: output weights exceed the fp16 range; using fp32")
        return None
    try:
        with warnings.catch_warnings():  # torch marks these fbgemm entry points deprecated (in favour of torchao)
            warnings.simplefilter("ignore", UserWarning)
            packed = torch.fbgemm_pack_gemm_matrix_fp16(weight.contiguous())
            # torch warns once per process, on the first call: let that be this one, silenced
            v, h = weight.shape
            torch.fbgemm_linear_fp16_weight(weight.new_zeros(1, h), packed, weight.new_zeros(v))
    except (RuntimeError, AttributeError) as err:
        log.info("generate: fbgemm fp16 unavailable (%s); using fp32", err)
        return None
    return packed


_BOUND_EXCEEDED = object()


class _Int8Envelope:
    """Exact draws from softmax((h W^T + b) / T) that read an int8 copy of W instead of W (CPU, fbgemm).

    W is quantized per row (symmetric, scale_i = max_j |W_ij| / 127, stored as float32 so that fbgemm and this
    bound use the same scale); fbgemm quantizes h per call to 7 bits (reduce_range) with the step
    s_h = max((max(h, 0) - min(h, 0)) / 127, MIN_ACTIVATION_STEP) and multiplies in int32 exactly. For W' the
    dequantized W and h' the quantized h:
        |h W_i - h' W'_i| <= sum_j |W_ij - W'_ij| |h_j| + sum_j |W'_ij| |h_j - h'_j|
                          <= ||h||_1 max_j |W_ij - W'_ij| + ||W'_i||_1 s_h
    (|h_j - h'_j| <= s_h, a full step, covers the clamping after the zero point is rounded), plus float32
    rounding of both sides, bounded by 2 (H + 4) 2^-23 (||W_i||_1 ||h||_inf + |b_i|). So with zq the int8 logits
    and eps the bound, up = zq + eps >= z, the float32 logits, row by row. Rejection sampling then gives exact
    draws: propose i with probability proportional to exp(up_i / T) (inverse CDF, as the fp32 path draws), accept
    with probability exp((z_i - up_i) / T) <= 1, computing z_i from the float32 row W_i alone; the first accepted
    proposal is distributed exactly as softmax(z / T). PROPOSALS are drawn at once; a proposal is accepted with
    probability 0.52 on average at T = 0.8 (0.36 at T = 0.5) for the default model after 1,500 steps (the bound is
    about ten times the true error), so one round nearly always does.
    A proposal whose exact logit exceeds its bound (it cannot, but the bound rests on fbgemm's quantization
    scheme) or MAX_ROUNDS rounds without an acceptance (a very low T) make that word an exact fp32 draw instead.
    The cost per word: the int8 mat-vec (5 MB instead of the fp16 copy's 10 MB), one softmax and cumulative sum,
    and PROPOSALS dot products of length H.
    """

    PROPOSALS = 4
    MAX_ROUNDS = 64
    # torch raises a smaller activation step to this (SMALL_SCALE_THRESHOLD in ATen's quantized QuantUtils.h)
    MIN_ACTIVATION_STEP = 6.1e-5

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        v, h = weight.shape
        scales = (weight.abs().amax(dim=1) / 127).clamp_min(torch.finfo(torch.float32).tiny).double()
        with warnings.catch_warnings():  # torch marks quantized tensors deprecated (in favour of torchao)
            warnings.simplefilter("ignore", UserWarning)
            qweight = torch.quantize_per_channel(weight, scales, torch.zeros(v, dtype=torch.int64), 0, torch.qint8)
            self.packed = torch.ops.quantized.linear_prepack(qweight, bias)
        dequantized = qweight.dequantize()
        unit = 2 * (h + 4) * 2.0 ** -23
        # eps = coefficients (||h||_1, s_h, ||h||_inf, 1) @ these four rows, one addmm per word
        self.bound_rows = torch.stack([(weight - dequantized).abs().amax(dim=1), dequantized.abs().sum(dim=1),
                                       unit * weight.abs().sum(dim=1), unit * bias.abs()])  # (4, V)
        self.weight, self.bias = weight, bias
        self.fallbacks = 0  # words drawn exactly in fp32 instead (see the class docstring)
        self.bound_exceeded = False

    def upper_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(1, V) float32 upper bounds of the logits of x (1, H)."""
        zq = torch.ops.quantized.linear_dynamic(x, self.packed, True)  # reduce_range: 7-bit activations
        low, high = (float(v) for v in torch.aminmax(x))
        step = max((max(high, 0.0) - min(low, 0.0)) / 127, self.MIN_ACTIVATION_STEP)
        coefficients = torch.tensor([[float(x.abs().sum()), step, max(high, -low), 1.0]], dtype=torch.float32)
        return torch.addmm(zq, coefficients, self.bound_rows)

    def draw(self, x: torch.Tensor, inv_temperature: float, generator: torch.Generator, out: torch.Tensor) -> None:
        """out (N, 1) <- one exact draw per row of softmax((x W^T + b) * inv_temperature), x (N, H)."""
        for n in range(x.shape[0]):
            row = x[n:n + 1]
            token = self._rejection_draw(row, inv_temperature, generator)
            if token is _BOUND_EXCEEDED and not self.bound_exceeded:
                self.bound_exceeded = True
                log.warning("generate: an int8 logit bound was exceeded (fbgemm's quantization is not what "
                            "rnnlm.generate._Int8Envelope assumes); such words are drawn in fp32")
            if token is None or token is _BOUND_EXCEEDED:
                self.fallbacks += 1
                logits = torch.addmm(self.bias, row, self.weight.t())
                _draw(logits, inv_temperature, inv_temperature > 1 / SHIFT_BELOW,
                      torch.rand((1, 1), generator=generator), out[n:n + 1])
            else:
                out[n, 0] = token

    def _rejection_draw(self, row: torch.Tensor, inv_temperature: float, generator: torch.Generator):
        """The accepted word for row (1, H); None after MAX_ROUNDS without an acceptance; _BOUND_EXCEEDED."""
        up = self.upper_logits(row)[0]                                        # (V,)
        shifted = up - up.max() if inv_temperature > 1 / SHIFT_BELOW else up  # as in _draw: no overflow at tiny T
        cdf = torch.softmax(shifted * inv_temperature, dim=-1).cumsum_(dim=-1)
        for _ in range(self.MAX_ROUNDS):
            u = torch.rand(2, self.PROPOSALS, generator=generator)
            idx = torch.searchsorted(cdf, u[0] * cdf[-1], right=True).clamp_(max=cdf.numel() - 1)
            exact = torch.addmv(self.bias[idx], self.weight[idx], row[0])      # (PROPOSALS,) float32 logits
            # the proposals in order, as if drawn one by one: the first accepted one is the draw
            for token, z, bound, accept_u in zip(idx.tolist(), exact.tolist(), up[idx].tolist(), u[1].tolist()):
                log_accept = (z - bound) * inv_temperature                     # <= 0 while the bound holds
                if log_accept > 0:
                    return _BOUND_EXCEEDED
                if accept_u < math.exp(log_accept):
                    return token
        return None


def _int8_envelope(weight: torch.Tensor, bias: torch.Tensor) -> _Int8Envelope | None:
    """The int8 envelope of a CPU float32 output layer, or None where fbgemm's int8 kernels cannot run."""
    if weight.device.type != "cpu" or weight.dtype != torch.float32 or not bool(torch.isfinite(weight).all()):
        return None
    if not {"fbgemm", "x86"} & set(torch.backends.quantized.supported_engines):
        log.info("generate: int8 output weights need fbgemm (x86); using fp16")
        return None
    try:
        return _Int8Envelope(weight.contiguous(), bias.contiguous())
    except (RuntimeError, AttributeError) as err:
        log.info("generate: fbgemm int8 unavailable (%s); using fp16", err)
        return None


class _ModelStepper:
    """Steps through the model's own forward (the triton backend: kernels.rnn for one time step)."""

    def __init__(self, model: WordRNN, hidden: torch.Tensor):
        self.model = model
        self.state = hidden

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        logits, self.state = self.model(tokens.view(-1, 1), self.state)
        return logits[:, -1]


def prime(model: WordRNN, prompt_ids: Sequence[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Reads the prompt once: (logits of the word after it (1, V), hidden state (L, 1, H)).

    The recurrence runs over the prompt in chunks of PRIME_CHUNK words; the output layer only on the last word.
    """
    ids = torch.as_tensor(list(prompt_ids), dtype=torch.int64, device=device).view(1, -1)
    hidden = None
    for start in range(0, ids.shape[1], PRIME_CHUNK):
        out, hidden = model.recurrence(ids[:, start:start + PRIME_CHUNK], hidden)
    return model.fc(out[:, -1]), hidden


def _triton_sample():
    try:
        from kernels.sample import sample
    except Exception as err:
        raise UsageError(f"backend 'triton' is unavailable: kernels.sample could not be imported "
                         f"({type(err).__name__}: {err}); use --backend cudnn") from err
    return sample


def generate_ids(model: WordRNN, prompt_ids: Sequence[int], length: int, *, temperature: float = 1.0,
                 greedy: bool = False, top_k: int | None = None, top_p: float | None = None, num_samples: int = 1,
                 seed: int | None = None, output_precision: str = "auto") -> torch.Tensor:
    """(num_samples, length) int64 word ids drawn after `prompt_ids` (a non-empty list of vocabulary ids).

    temperature 0 or greedy=True takes the argmax (ties to the lowest id). The same seed gives the same ids on the
    same device and backend. The model runs in eval mode under torch.inference_mode; its training flag is restored.
    output_precision (cudnn backend, steps after the first word): "fp32" exact; "fp16" the output layer's weights in
    fp16 (fbgemm, CPU; logits within ~1e-3, half the memory traffic of the step's dominant mat-vec); "int8" exact
    draws that read an int8 copy of the weights (_Int8Envelope: rejection sampling against a proven bound; plain
    temperature sampling only, CPU; greedy, top-k and top-p get the exact fp32 logits); "auto" = int8 when drawing
    one sample on a CPU without top-k / top-p at a temperature of at least INT8_MIN_TEMPERATURE from an output layer
    of at least INT8_MIN_OUTPUT_WEIGHTS entries, else fp16 on a CPU; fp32 for greedy decoding (whose argmax must be
    the model's own) and on a GPU.
    """
    if len(prompt_ids) == 0:
        raise UsageError("the prompt is empty (no words after tokenization); give at least one word")
    if temperature == 0:
        greedy = True
    check_sampling(temperature, greedy, top_k, top_p)
    if output_precision not in OUTPUT_PRECISIONS:
        raise UsageError(f"output precision must be one of {', '.join(OUTPUT_PRECISIONS)}, got {output_precision!r}")
    for name, value in (("length", length), ("num_samples", num_samples)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"{name} must be a positive integer, got {value}")
    device = model.fc.weight.device
    filtered = top_k is not None or top_p is not None
    t_eff = max(float(temperature), MIN_TEMPERATURE)
    if output_precision == "auto":
        if device.type != "cpu" or greedy:
            output_precision = "fp32"
        else:
            int8 = (num_samples == 1 and not filtered and t_eff >= INT8_MIN_TEMPERATURE
                    and model.fc.weight.numel() >= INT8_MIN_OUTPUT_WEIGHTS)
            output_precision = "int8" if int8 else "fp16"
    elif output_precision == "int8" and (greedy or filtered):
        output_precision = "fp32"  # the envelope draws plain temperature samples; these need every exact logit
    vocab_size = model.config.vocab_size
    bad = [i for i in prompt_ids if not 0 <= int(i) < vocab_size]
    if bad:
        raise ValueError(f"prompt_ids must lie in [0, {vocab_size}), got {bad[:5]}")
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    triton = model.backend == "triton"
    sample = _triton_sample() if triton else None
    generator = torch.Generator(device=device).manual_seed(seed)

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), torch.autocast(device.type, enabled=False):
            logits, hidden = prime(model, prompt_ids, device)
            logits = logits.expand(num_samples, -1).contiguous()
            hidden = hidden.expand(-1, num_samples, -1).contiguous()
            stepper = _ModelStepper(model, hidden) if triton else _TorchStepper(model, hidden, output_precision)
            out = torch.empty(length, num_samples, 1, dtype=torch.int64, device=device)  # out[t]: step t's words
            rows = out.unbind(0)  # views made once, not per step
            envelope = None if triton else stepper.w.fc_int8
            if envelope is not None:
                _draw(logits, 1.0 / t_eff, t_eff < SHIFT_BELOW, torch.rand(num_samples, 1, generator=generator),
                      rows[0])                                           # the first word: from prime's fp32 logits
                for t in range(1, length):
                    envelope.draw(stepper.hidden_step(rows[t - 1].view(-1)), 1.0 / t_eff, generator, rows[t])
                return out.view(length, num_samples).t().contiguous()
            if not (triton or greedy):
                # every uniform at once: one generator call instead of one per step
                uniforms = torch.rand(length, num_samples, 1, generator=generator, device=device).unbind(0)
            for t in range(length):
                row = rows[t]
                if triton:
                    # A fresh seed per step: the kernel's counter-based generator is keyed by (seed, row, column).
                    step_seed = (seed * _SEED_MIX + t) % 2**62
                    row.copy_(sample(logits.float().contiguous(), 0.0 if greedy else float(temperature), step_seed,
                                     top_k=top_k, top_p=top_p).view(-1, 1))
                elif greedy:
                    torch.argmax(logits, dim=-1, keepdim=True, out=row)
                else:
                    z = filter_logits(logits, top_k, top_p) if filtered else logits
                    _draw(z, 1.0 / t_eff, t_eff < SHIFT_BELOW, uniforms[t], row)
                if t + 1 < length:
                    logits = stepper.step(row.view(-1))
            out = out.view(length, num_samples)
            return out.t().contiguous()
    finally:
        model.train(was_training)


def generate(model: WordRNN, vocab, settings, prompt: str, length: int, *, temperature: float = 1.0,
             greedy: bool = False, top_k: int | None = None, top_p: float | None = None, num_samples: int = 1,
             seed: int | None = None, output_precision: str = "auto", warn=None) -> list[str]:
    """num_samples texts: the prompt followed by `length` generated words, joined without spaces.

    prompt is tokenized with `settings` (rnnlm.data.TokenizerSettings) and encoded with `vocab` (unknown words
    become <unk>; `warn(message)` is called when no word of the prompt is in the vocabulary). UsageError for an
    empty prompt or meaningless sampling settings.
    """
    from rnnlm.data import tokenize_text

    words = tokenize_text(prompt, settings)
    if not words:
        raise UsageError("the prompt is empty (no words after tokenization); give --prompt with at least one word")
    ids = vocab.encode(words)
    if all(i == vocab.unk_id for i in ids):
        message = (f"no word of the prompt {prompt!r} is in the vocabulary: the model starts from <unk> "
                   f"(which it saw for every rare word in training)")
        (warn or log.warning)(message)
    generated = generate_ids(model, ids, length, temperature=temperature, greedy=greedy, top_k=top_k, top_p=top_p,
                             num_samples=num_samples, seed=seed, output_precision=output_precision)
    return [prompt + vocab.decode(row) for row in generated.tolist()]


# -- command line -----------------------------------------------------------------------------------------------

@dataclass
class GenerateConfig:
    checkpoint: str = option(help="checkpoint file written by rnnlm.train", positional=True, metavar="CKPT")
    prompt: str = option(DEFAULT_PROMPT, help="text the samples continue (tokenized like the training corpus)")
    length: int = option(200, help="words to generate after the prompt")
    temperature: float = option(0.8, help="sampling temperature (> 0; lower is more conservative)")
    greedy: bool = option(False, help="always take the most likely word (argmax) instead of sampling")
    top_k: int | None = option(None, help="sample only among the K most likely words", metavar="K")
    top_p: float | None = option(None, help="sample only among the most likely words whose mass reaches P",
                                 metavar="P")
    num_samples: int = option(1, help="independent samples, drawn as one batch", metavar="N")
    seed: int | None = option(None, help="random seed (the same seed gives the same samples)")
    backend: str | None = option(None, choices=BACKENDS,
                                 help="cudnn (torch) or triton (rnnlm's kernels); default: triton with CUDA, "
                                      "else cudnn")
    device: str | None = option(None, help="cpu or cuda (default: cuda when available)")
    output_precision: str = option("auto", choices=OUTPUT_PRECISIONS,
                                   help="output layer weights per step on the cudnn backend: fp32 (exact), fp16 "
                                        "(fbgemm, CPU: half the memory traffic per word, logits within ~1e-3), "
                                        "int8 (CPU: a quarter of the traffic, draws still exact by rejection "
                                        "sampling; plain temperature sampling only), auto (int8 for one sample on "
                                        "a CPU at temperature >= 0.5 without --top-k/--top-p from a large output "
                                        "layer, else fp16; fp32 for --greedy)")

    def validate(self) -> None:
        require_positive("--length", self.length)
        require_positive("--num-samples", self.num_samples)
        try:
            check_sampling(self.temperature, self.greedy, self.top_k, self.top_p)
        except UsageError as err:
            raise UsageError(str(err).replace("top-k", "--top-k").replace("top-p", "--top-p")
                             .replace("temperature must", "--temperature must")) from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(GenerateConfig, "rnnlm.generate", "Generate text from a trained rnnlm checkpoint.")
    cfg = from_namespace(GenerateConfig, parser.parse_args(argv))
    cfg.validate()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    from rnnlm.checkpoint import load_checkpoint, model_from_checkpoint
    from rnnlm.data import TokenizerSettings, tokenize_text

    payload = load_checkpoint(cfg.checkpoint)
    # An empty prompt is refused before the model is built (and before anything is logged).
    tokenizer = payload["tokenizer"]
    if isinstance(tokenizer, dict) and not tokenize_text(cfg.prompt, TokenizerSettings.from_dict(tokenizer)):
        raise UsageError("the prompt is empty (no words after tokenization); give --prompt with at least one word")
    model, vocab, settings = model_from_checkpoint(payload, backend=cfg.backend, device=cfg.device)
    texts = generate(model, vocab, settings, cfg.prompt, cfg.length, temperature=cfg.temperature,
                     greedy=cfg.greedy, top_k=cfg.top_k, top_p=cfg.top_p, num_samples=cfg.num_samples,
                     seed=cfg.seed, output_precision=cfg.output_precision,
                     warn=lambda m: print(f"rnnlm.generate: warning: {m}", file=sys.stderr))
    for i, text in enumerate(texts):
        if len(texts) > 1:
            print(f"--- sample {i + 1}")
        print(text)
    return 0


if __name__ == "__main__":
    run_cli(main, "rnnlm.generate")
