"""Generation of word ids: prime the model on the prompt, then draw word by word on the device, for N samples at
once (rnnlm.inference.text does the same from and to text).

The prompt is read in one forward pass (in chunks for very long prompts, carrying the state); the prompt's last
word is never fed twice. The first word is drawn from the prompt's logits; after that each step feeds the words
just drawn and draws the next ones. The backend's decoder (rnnlm.backends) does the step and the draw.
This module needs torch only (no tokenizer): a GPU image without jieba can generate ids.
"""
from __future__ import annotations

from typing import Sequence

import torch

from rnnlm.checks import positive_int
from rnnlm.errors import UsageError
from rnnlm import tuning
from rnnlm.inference.precision import choose_generation_step, output_precision_candidates
from rnnlm.inference.sampling import Sampling
from rnnlm.inference.stepper import prime
from rnnlm.model import WordRNN

EMPTY_PROMPT = "the prompt is empty (no words after tokenization); give a {prompt} of at least one word"


def generate_ids(model: WordRNN, prompt_ids: Sequence[int], length: int, *, temperature: float = 1.0,
                 greedy: bool = False, top_k: int | None = None, top_p: float | None = None, num_samples: int = 1,
                 seed: int | None = None, output_precision: str = "auto", threads: int | None = None) -> torch.Tensor:
    """(num_samples, length) int64 word ids drawn after `prompt_ids` (a non-empty list of vocabulary ids).

    temperature 0 or greedy=True takes the argmax (ties to the lowest id). The same seed gives the same ids on the
    same device and backend. The model runs in eval mode under torch.inference_mode; its training flag is restored.
    output_precision (torch backend): which copy of the output layer a step reads, see rnnlm.inference.precision.
    threads: torch's CPU threads while generating (None: timed with "auto" precision, rnnlm.inference.precision).
    """
    if len(prompt_ids) == 0:
        raise UsageError(EMPTY_PROMPT, params=("prompt",))
    sampling = Sampling(temperature, greedy, top_k, top_p)
    positive_int("length", length)
    positive_int("num_samples", num_samples)
    if threads is not None:
        positive_int("threads", threads)
    device = model.fc.weight.device
    output_precision_candidates(output_precision, sampling, device=device, num_samples=num_samples)  # checked
    vocab_size = model.config.vocab_size
    bad = [i for i in prompt_ids if not 0 <= int(i) < vocab_size]
    if bad:
        raise ValueError(f"prompt_ids must lie in [0, {vocab_size}), got {bad[:5]}")
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), torch.autocast(device.type, enabled=False):
            logits, hidden = prime(model, prompt_ids, device)
            logits = logits.expand(num_samples, -1).contiguous()
            hidden = hidden.expand(-1, num_samples, -1).contiguous()
            precision, threads = choose_generation_step(model, hidden, sampling, output_precision, threads=threads)
            return _decode(model, logits, hidden, sampling, precision, threads, seed, length)
    finally:
        model.train(was_training)


def _decode(model: WordRNN, logits: torch.Tensor, hidden: torch.Tensor, sampling: Sampling, precision: str,
            threads: int | None, seed: int, length: int) -> torch.Tensor:
    """(num_samples, length) ids drawn after the prompt's logits (N, V) and state (L, N, H)."""
    num_samples, device = hidden.shape[1], hidden.device
    with tuning.torch_threads(threads):
        decoder = model.backend.decoder(model, hidden, sampling, precision, seed, length)
        out = torch.empty(length, num_samples, 1, dtype=torch.int64, device=device)  # out[t]: step t's words
        rows = out.unbind(0)  # views made once, not per step
        decoder.first(logits, rows[0])
        for t in range(1, length):
            decoder.next(rows[t - 1].view(-1), t, rows[t])
        return out.view(length, num_samples).t().contiguous()
