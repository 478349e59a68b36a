"""Sizes that cannot fit, refused before anything is allocated: one line naming what needs the memory.

The estimates are lower bounds of what a run holds at once (fp32, 4 bytes a number):
- training: the parameters four times (weights, gradients, Adam's two moments) plus one batch's logits
  (B·T·V, with their gradient) and hidden states (B·T·H·L, kept for the backward pass);
- generation: per sample, the logits and probabilities of a step (V each) and, until the text is printed, every
  word drawn (8 bytes as an id, ~64 bytes as Python's int and str).
A size below the device's memory may still not fit (other processes, fragmentation); that surfaces as torch's
out-of-memory error, which the CLIs turn into one line too (rnnlm.errors.run_cli).
"""
from __future__ import annotations

import os

import torch

from rnnlm.errors import UsageError

_FLOAT = 4
WORD_BYTES = 72  # one generated word held until printed: int64 id + Python int + its str


def device_memory(device: torch.device) -> int | None:
    """Bytes of memory of `device` (the GPU's, or the machine's physical memory); None when unknown."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:,.1f} GiB"


def check_fits(nbytes: int, what: str, device: torch.device, params: tuple[str, ...]) -> None:
    """UsageError when `what` (needing about `nbytes`) cannot fit in the memory of `device`; it suggests
    smaller values of `params`."""
    total = device_memory(device)
    if total is not None and nbytes > total:
        smaller = ", ".join("{" + name + "}" for name in params)
        raise UsageError(f"{what} needs at least {gib(nbytes)}, more than the {gib(total)} of memory of "
                         f"{device}: give a smaller {smaller}", params=params)


def parameter_count(vocab_size: int, embed_size: int, hidden_size: int, num_layers: int, tie_weights: bool) -> int:
    rnn = sum((embed_size if layer == 0 else hidden_size) * hidden_size + hidden_size * hidden_size + 2 * hidden_size
              for layer in range(num_layers))
    return vocab_size * embed_size + rnn + (0 if tie_weights else hidden_size * vocab_size) + vocab_size


def training_bytes(config, batch_size: int, seq_len: int) -> int:
    """A lower bound of the memory one training step of a WordRNN of `config` (a ModelConfig) holds."""
    n = parameter_count(config.vocab_size, config.embed_size, config.hidden_size, config.num_layers,
                        config.tie_weights)
    tokens = batch_size * seq_len
    return _FLOAT * (4 * n + tokens * (2 * config.vocab_size + config.hidden_size * config.num_layers))


def generation_bytes(config, num_samples: int, length: int) -> int:
    """A lower bound of the memory generating `num_samples` × `length` words from a WordRNN of `config` holds."""
    state = 2 * _FLOAT * config.hidden_size * config.num_layers
    return num_samples * (3 * _FLOAT * config.vocab_size + state + length * WORD_BYTES)
