"""Generation of word ids: prime the model on the prompt, then draw word by word on the device, for N samples at
once (rnnlm.inference.text does the same from and to text).

The prompt is read in one forward pass (in chunks for very long prompts, carrying the state); the prompt's last
word is never fed twice. The first word is drawn from the prompt's logits; after that each step feeds the words
just drawn and draws the next ones. The backend's decoder (rnnlm.backends) does the step and the draw.
stream_ids yields each step's words as they are drawn, holding nothing of the output: a long generation streams in
constant memory (generate_ids collects them). `banned` ids (the text layer passes <pad>, and <unk> unless asked
for) are never drawn, by greedy, top-k and top-p too: their logits are -inf before every draw, so the others'
probabilities are renormalised exactly.
This module needs torch only (no tokenizer): a GPU image without jieba can generate ids.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch

from rnnlm.checks import positive_int
from rnnlm.errors import UsageError
from rnnlm.inference.precision import choose_generation_step, output_precision_candidates
from rnnlm.inference.sampling import Sampling
from rnnlm.inference.stepper import prime
from rnnlm.model import WordRNN

EMPTY_PROMPT = "the prompt is empty (no words after tokenization); give a {prompt} of at least one word"


def stream_ids(model: WordRNN, prompt_ids: Sequence[int], length: int, *, temperature: float = 1.0,
               greedy: bool = False, top_k: int | None = None, top_p: float | None = None, num_samples: int = 1,
               seed: int | None = None, output_precision: str = "auto", banned: Sequence[int] = (),
               threads: int | None = None) -> Iterator[torch.Tensor]:
    """Checks the settings, then returns an iterator over the `length` steps: each yields the words drawn at that
    step, a fresh (num_samples,) int64 tensor on the model's device (see generate_ids for the settings).

    The model is in eval mode until the iterator is exhausted or closed; each step runs under inference_mode.
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
    bad = [i for i in list(prompt_ids) + list(banned) if not 0 <= int(i) < vocab_size]
    if bad:
        raise ValueError(f"prompt_ids and banned must lie in [0, {vocab_size}), got {bad[:5]}")
    if len(set(int(i) for i in banned)) >= vocab_size:
        raise ValueError("banned holds every word of the vocabulary: nothing is left to draw")
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    banned_ids = torch.tensor(sorted(set(int(i) for i in banned)), dtype=torch.int64, device=device) \
        if len(banned) else None
    return _steps(model, list(prompt_ids), length, sampling, num_samples, seed, output_precision, threads,
                  banned_ids)


def _steps(model: WordRNN, prompt_ids: list[int], length: int, sampling: Sampling, num_samples: int, seed: int,
           output_precision: str, threads: int | None, banned: torch.Tensor | None) -> Iterator[torch.Tensor]:
    device = model.fc.weight.device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), torch.autocast(device.type, enabled=False):
            logits, hidden = prime(model, prompt_ids, device)
            logits = logits.expand(num_samples, -1).contiguous()
            hidden = hidden.expand(-1, num_samples, -1).contiguous()
            plan = choose_generation_step(model, hidden, sampling, output_precision, threads=threads)
        with plan.threads_set():
            with torch.inference_mode(), torch.autocast(device.type, enabled=False):
                decoder = model.backend.decoder(model, hidden, sampling, plan.precision, seed, banned,
                                                matvec=plan.matvec)
                out = torch.empty(num_samples, 1, dtype=torch.int64, device=device)
                decoder.first(logits, out)
            yield out.view(-1)
            for t in range(1, length):
                with torch.inference_mode(), torch.autocast(device.type, enabled=False):
                    words = torch.empty(num_samples, 1, dtype=torch.int64, device=device)
                    decoder.next(out.view(-1), t, words)
                out = words
                yield out.view(-1)
            with torch.inference_mode():
                decoder.finish()  # deferred checks: one read for the whole generation
    finally:
        model.train(was_training)


def generate_ids(model: WordRNN, prompt_ids: Sequence[int], length: int, *, temperature: float = 1.0,
                 greedy: bool = False, top_k: int | None = None, top_p: float | None = None, num_samples: int = 1,
                 seed: int | None = None, output_precision: str = "auto", banned: Sequence[int] = (),
                 threads: int | None = None) -> torch.Tensor:
    """(num_samples, length) int64 word ids drawn after `prompt_ids` (a non-empty list of vocabulary ids).

    temperature 0 or greedy=True takes the argmax (ties to the lowest id). The same seed gives the same ids on the
    same device and backend. The model runs in eval mode under torch.inference_mode; its training flag is restored.
    output_precision (torch backend): which copy of the output layer a step reads, see rnnlm.inference.precision.
    banned: ids never drawn (the others renormalised exactly).
    threads: torch's CPU threads while generating (None: timed with "auto" precision, rnnlm.inference.precision).
    """
    steps = stream_ids(model, prompt_ids, length, temperature=temperature, greedy=greedy, top_k=top_k, top_p=top_p,
                       num_samples=num_samples, seed=seed, output_precision=output_precision, banned=banned,
                       threads=threads)
    return torch.stack(list(steps), dim=1)
