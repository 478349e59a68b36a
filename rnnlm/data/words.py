"""Words back as text: the separators jieba dropped, restored as the corpus's script writes them."""
from __future__ import annotations

import re
from typing import Iterable

# Letters of scripts written without spaces between words: no space goes between two such words.
_UNSPACED = re.compile(r"[\u0E00-\u0EFF\u1000-\u109F\u1780-\u17FF\u2E80-\u9FFF\uF900-\uFAFF\uFF00-\uFFEF"
                       r"\U00020000-\U0003FFFF]")


_SPECIAL = re.compile(r"<\w+>")  # <unk>, <pad>: a word on both sides


def _spaced(ch: str) -> bool:
    return ch.isalnum() and not _UNSPACED.match(ch)


def _spaced_end(word: str) -> bool:
    return _spaced(word[-1]) or word[-1] in ",.;:!?)" or bool(_SPECIAL.fullmatch(word))


def _spaced_start(word: str) -> bool:
    return _spaced(word[0]) or bool(_SPECIAL.fullmatch(word))


def join_words(words: Iterable[str]) -> str:
    """Words back as text, as the corpus writes them. jieba drops the spaces, so a space goes back between two
    words that would otherwise merge (letters or digits of scripts written with spaces: `hello world`, `GDP 2`),
    and after ASCII punctuation before such a word (`hello, world`). Chinese words are joined without one
    (`我们的`), and so is a Latin word beside a Chinese one (`GDP增长`)."""
    out: list[str] = []
    for word in words:
        if not word:
            continue
        if out and _spaced_end(out[-1]) and _spaced_start(word):
            out.append(" ")
        out.append(word)
    return "".join(out)
