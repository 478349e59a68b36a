"""Text generation: tokenize the prompt as the corpus was, generate word ids, join the words."""
from __future__ import annotations

import logging
from typing import Callable

from rnnlm.data import TokenizerSettings, Vocab, tokenize_text
from rnnlm.errors import UsageError
from rnnlm.inference.generation import EMPTY_PROMPT, generate_ids
from rnnlm.model import WordRNN

log = logging.getLogger("rnnlm.generate")


def generate(model: WordRNN, vocab: Vocab, settings: TokenizerSettings, prompt: str, length: int, *,
             temperature: float = 1.0, greedy: bool = False, top_k: int | None = None, top_p: float | None = None,
             num_samples: int = 1, seed: int | None = None, output_precision: str = "auto", threads: int | None = None,
             warn: Callable[[str], None] | None = None) -> list[str]:
    """num_samples texts: the prompt followed by `length` generated words, joined without spaces.

    prompt is tokenized with `settings` and encoded with `vocab` (unknown words become <unk>; `warn(message)` is
    called when no word of the prompt is in the vocabulary). UsageError for an empty prompt or meaningless
    sampling settings.
    """
    words = tokenize_text(prompt, settings)
    if not words:
        raise UsageError(EMPTY_PROMPT, params=("prompt",))
    ids = vocab.encode(words)
    if all(i == vocab.unk_id for i in ids):
        message = (f"no word of the prompt {prompt!r} is in the vocabulary: the model starts from <unk> "
                   f"(which it saw for every rare word in training)")
        (warn or log.warning)(message)
    generated = generate_ids(model, ids, length, temperature=temperature, greedy=greedy, top_k=top_k, top_p=top_p,
                             num_samples=num_samples, seed=seed, output_precision=output_precision,
                             threads=threads)
    return [prompt + vocab.decode(row) for row in generated.tolist()]
