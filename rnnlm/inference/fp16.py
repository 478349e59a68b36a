"""The fp16 output layer for generation on a CPU: fbgemm's packed fp16 weights, fp32 activations and sums."""
from __future__ import annotations

import logging
import warnings

import torch

log = logging.getLogger("rnnlm.generate")


def pack_fp16(weight: torch.Tensor):
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
