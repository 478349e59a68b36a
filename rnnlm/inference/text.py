"""Text generation: tokenize the prompt as the corpus was, generate word ids, join the words.

<pad> is never drawn and <unk> only with allow_unk=True (greedy, top-k and top-p too): the probabilities are
renormalised over the other words, exactly (rnnlm.inference.generation's `banned`).
"""
from __future__ import annotations

import logging
from typing import Callable, Iterator

from rnnlm.data import TokenizerSettings, Vocab, tokenize_text
from rnnlm.data.words import join_words
from rnnlm.errors import UsageError
from rnnlm.inference.generation import EMPTY_PROMPT, stream_ids
from rnnlm.model import WordRNN

log = logging.getLogger("rnnlm.generate")


def banned_ids(vocab: Vocab, allow_unk: bool = False) -> list[int]:
    """The ids generation never draws: <pad>, and <unk> unless allow_unk."""
    return [vocab.pad_id] if allow_unk else [vocab.pad_id, vocab.unk_id]


def prompt_ids(vocab: Vocab, settings: TokenizerSettings, prompt: str,
               warn: Callable[[str], None] | None = None) -> list[int]:
    """The prompt tokenized with `settings` and encoded with `vocab` (unknown words become <unk>; `warn(message)`
    is called when no word of it is in the vocabulary). UsageError for an empty prompt."""
    words = tokenize_text(prompt, settings)
    if not words:
        raise UsageError(EMPTY_PROMPT, params=("prompt",))
    ids = vocab.encode(words)
    if all(i == vocab.unk_id for i in ids):
        message = (f"no word of the prompt {prompt!r} is in the vocabulary: the model starts from <unk> "
                   f"(which it saw for every rare word in training)")
        (warn or log.warning)(message)
    return ids


def stream(model: WordRNN, vocab: Vocab, settings: TokenizerSettings, prompt: str, length: int, *,
           temperature: float = 1.0, greedy: bool = False, top_k: int | None = None, top_p: float | None = None,
           num_samples: int = 1, seed: int | None = None, output_precision: str = "auto", allow_unk: bool = False,
           threads: int | None = None, warn: Callable[[str], None] | None = None) -> Iterator[list[str]]:
    """The generated words as they are drawn: `length` lists of num_samples words, one list per step (settings
    as generate's). The settings are checked before the first word is drawn."""
    ids = prompt_ids(vocab, settings, prompt, warn)
    steps = stream_ids(model, ids, length, temperature=temperature, greedy=greedy, top_k=top_k, top_p=top_p,
                       num_samples=num_samples, seed=seed, output_precision=output_precision,
                       banned=banned_ids(vocab, allow_unk), threads=threads)
    itos = vocab.itos
    return ([itos[i] for i in step.tolist()] for step in steps)


def generate(model: WordRNN, vocab: Vocab, settings: TokenizerSettings, prompt: str, length: int, *,
             temperature: float = 1.0, greedy: bool = False, top_k: int | None = None, top_p: float | None = None,
             num_samples: int = 1, seed: int | None = None, output_precision: str = "auto", allow_unk: bool = False,
             threads: int | None = None, warn: Callable[[str], None] | None = None) -> list[str]:
    """num_samples texts: the prompt followed by `length` generated words, joined as the corpus writes words
    (rnnlm.data.words.join_words: a space only where two words would merge).

    UsageError for an empty prompt or meaningless sampling settings.
    """
    texts = [[prompt] for _ in range(num_samples)]
    for words in stream(model, vocab, settings, prompt, length, temperature=temperature, greedy=greedy, top_k=top_k,
                        top_p=top_p, num_samples=num_samples, seed=seed, output_precision=output_precision,
                        allow_unk=allow_unk, threads=threads, warn=warn):
        for text, word in zip(texts, words):
            text.append(word)
    return [join_words(text) for text in texts]
