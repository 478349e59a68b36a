"""Which copy of the output layer's weights a generation step reads: the one function that decides it.

A generation step of the default model is dominated by the output layer, a (V × H) matrix times one vector:
its cost is memory traffic, so a smaller copy of W is faster wherever the draw allows it (torch backend only):

- "fp32": exact logits;
- "fp16": an fbgemm-packed copy (CPU), half the bytes, logits within about 1e-3 of fp32;
- "int8": an int8 copy (CPU), a quarter of the bytes, and still exact draws from the fp32 softmax through
  rejection sampling (rnnlm.inference.int8_envelope); plain temperature sampling only;
- "auto": int8 for one sample on a CPU without top-k / top-p, at a temperature of at least
  INT8_MIN_TEMPERATURE (below it too many proposals are rejected), from an output layer of at least
  INT8_MIN_OUTPUT_WEIGHTS entries (smaller layers are faster in fp16; measured crossover in docs/measurements.md);
  else fp16 on a CPU; fp32 on a GPU and for greedy decoding, whose argmax must be the model's own.

Greedy, top-k and top-p need every exact logit, so an explicit "int8" becomes "fp32" for them.
"""
from __future__ import annotations

import torch

from rnnlm.checks import one_of
from rnnlm.inference.sampling import Sampling

OUTPUT_PRECISIONS = ("auto", "fp32", "fp16", "int8")
INT8_MIN_TEMPERATURE = 0.5
INT8_MIN_OUTPUT_WEIGHTS = 2_000_000


def choose_output_precision(requested: str, sampling: Sampling, *, device: torch.device, num_samples: int,
                            output_weights: int) -> str:
    """"fp32", "fp16" or "int8" for `requested` (one of OUTPUT_PRECISIONS) and this generation's settings."""
    one_of("output precision", requested, OUTPUT_PRECISIONS)
    if requested == "auto":
        if device.type != "cpu" or sampling.greedy:
            return "fp32"
        int8 = (num_samples == 1 and not sampling.filtered
                and sampling.effective_temperature >= INT8_MIN_TEMPERATURE
                and output_weights >= INT8_MIN_OUTPUT_WEIGHTS)
        return "int8" if int8 else "fp16"
    if requested == "int8" and (sampling.greedy or sampling.filtered):
        return "fp32"
    return requested
