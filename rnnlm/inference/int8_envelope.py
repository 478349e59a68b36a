"""Exact temperature sampling that reads an int8 copy of the output layer (CPU, fbgemm): the int8 envelope.

The int8 logits plus a proven error bound are an upper envelope of the fp32 logits; rejection sampling against
that envelope, with the exact fp32 logits of a few proposed words only, draws exactly from the fp32 softmax
while the step reads a quarter of the fp32 weights' bytes. The bound and the sampling argument are in the
docstring of Int8Envelope.
"""
from __future__ import annotations

import logging
import math
import warnings

import torch

try:
    import numpy as np
except ImportError:  # a GPU image may lack numpy; int8 is a CPU path (int8_envelope() then gives None)
    np = None

from rnnlm.inference.sampling import SHIFT_BELOW, draw

log = logging.getLogger("rnnlm.generate")

_BOUND_EXCEEDED = object()


class Int8Envelope:
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
    proposal is distributed exactly as softmax(z / T). PROPOSALS are drawn at once, so that one round usually
    suffices (acceptance rates measured on the default model: docs/measurements.md).
    A proposal whose exact logit exceeds its bound (it cannot, but the bound rests on fbgemm's quantization
    scheme) or MAX_ROUNDS rounds without an acceptance (a very low T) make that word an exact fp32 draw instead.
    The cost per word: the int8 mat-vec (V·H bytes, half the fp16 copy's), one softmax and cumulative sum, and
    PROPOSALS dot products of length H.
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
        # numpy views of the same memory: a step's few small reductions and gathers cost a microsecond there
        # against several for a torch op, and a step makes about fifteen
        self.weight_np, self.bias_np = weight.numpy(), bias.numpy()
        self.coefficients = torch.empty(1, 4, dtype=torch.float32)  # refilled for each row
        self.fallbacks = 0  # words drawn exactly in fp32 instead (see the class docstring)
        self.bound_exceeded = False

    def upper_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(1, V) float32 upper bounds of the logits of x (1, H)."""
        zq = torch.ops.quantized.linear_dynamic(x, self.packed, True)  # reduce_range: 7-bit activations
        xn = x.detach().numpy()
        low, high = float(xn.min()), float(xn.max())
        step = max((max(high, 0.0) - min(low, 0.0)) / 127, self.MIN_ACTIVATION_STEP)
        l1 = float(np.abs(xn).sum(dtype=np.float64))
        self.coefficients.numpy()[0] = (l1, step, max(high, -low), 1.0)
        return torch.addmm(zq, self.coefficients, self.bound_rows)

    def exact_logits(self, row: torch.Tensor, idx: np.ndarray) -> np.ndarray:
        """The float32 logits of row (1, H) at the words idx (K,): the K rows of W alone."""
        return self.weight_np[idx] @ row.detach().numpy()[0] + self.bias_np[idx]

    def draw(self, x: torch.Tensor, inv_temperature: float, generator: torch.Generator, out: torch.Tensor,
             banned: torch.Tensor | None = None) -> None:
        """out (N, 1) <- one exact draw per row of softmax((x W^T + b) * inv_temperature), x (N, H), over the words
        not in `banned` (K,): their envelope and logits are -inf, so a proposal is never banned and the accepted
        word is distributed exactly as the softmax renormalised over the rest."""
        for n in range(x.shape[0]):
            row = x[n:n + 1]
            token = self._rejection_draw(row, inv_temperature, generator, banned)
            if token is _BOUND_EXCEEDED and not self.bound_exceeded:
                self.bound_exceeded = True
                log.warning("generate: an int8 logit bound was exceeded (fbgemm's quantization is not what "
                            "rnnlm.inference.int8_envelope assumes); such words are drawn in fp32")
            if token is None or token is _BOUND_EXCEEDED:
                self.fallbacks += 1
                logits = torch.addmm(self.bias, row, self.weight.t())
                if banned is not None:
                    logits.index_fill_(1, banned, float("-inf"))
                draw(logits, inv_temperature, inv_temperature > 1 / SHIFT_BELOW,
                      torch.rand((1, 1), generator=generator), out[n:n + 1])
            else:
                out[n, 0] = token

    def _rejection_draw(self, row: torch.Tensor, inv_temperature: float, generator: torch.Generator,
                        banned: torch.Tensor | None = None):
        """The accepted word for row (1, H); None after MAX_ROUNDS without an acceptance; _BOUND_EXCEEDED."""
        up = self.upper_logits(row)[0]                                        # (V,)
        if banned is not None:
            up.index_fill_(0, banned, float("-inf"))
        shifted = up - up.max() if inv_temperature > 1 / SHIFT_BELOW else up  # as draw() does: no overflow at tiny T
        cdf = torch.softmax(shifted * inv_temperature, dim=-1).cumsum_(dim=-1).numpy()
        up_np = up.numpy()
        for _ in range(self.MAX_ROUNDS):
            u = torch.rand(2, self.PROPOSALS, generator=generator).numpy()
            idx = np.searchsorted(cdf, u[0] * cdf[-1], side="right")                # as draw() does
            np.minimum(idx, cdf.size - 1, out=idx)
            exact = self.exact_logits(row, idx)                                # (PROPOSALS,) float32 logits
            # the proposals in order, as if drawn one by one: the first accepted one is the draw
            for token, z, bound, accept_u in zip(idx.tolist(), exact.tolist(), up_np[idx].tolist(), u[1].tolist()):
                log_accept = (z - bound) * inv_temperature                     # <= 0 while the bound holds
                if log_accept > 0:
                    return _BOUND_EXCEEDED
                if accept_u < math.exp(log_accept):
                    return token
        return None


def int8_envelope(weight: torch.Tensor, bias: torch.Tensor) -> Int8Envelope | None:
    """The int8 envelope of a CPU float32 output layer, or None where fbgemm's int8 kernels cannot run."""
    if weight.device.type != "cpu" or weight.dtype != torch.float32 or not bool(torch.isfinite(weight).all()):
        return None
    if np is None:
        log.info("generate: int8 output weights need numpy; using fp16")
        return None
    if not {"fbgemm", "x86"} & set(torch.backends.quantized.supported_engines):
        log.info("generate: int8 output weights need fbgemm (x86); using fp16")
        return None
    try:
        return Int8Envelope(weight.contiguous(), bias.contiguous())
    except (RuntimeError, AttributeError) as err:
        log.info("generate: fbgemm int8 unavailable (%s); using fp16", err)
        return None
