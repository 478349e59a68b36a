"""The vocabulary (words by frequency, <pad> and <unk> first) and the train / valid / test split of a corpus.

The vocabulary is counted on the training split only (train_vocab), as language-modelling benchmarks do: a word
seen only in the validation or test split is <unk> there. Counting it over the whole corpus would give such a word
an id that the model never sees as a training target and learns to give almost no probability, so each of its
occurrences in the test split would cost far more than <unk> does (the leak measured in issue 13).
"""
from __future__ import annotations

import logging
import math
from typing import Mapping, Sequence

import numpy as np
import torch

from rnnlm.data.corpus import Corpus
from rnnlm.data.words import join_words
from rnnlm.errors import UsageError

log = logging.getLogger(__name__)

PAD = "<pad>"
UNK = "<unk>"
SPLITS = ("train", "valid", "test")
SPLIT_FRACTIONS = (0.9, 0.05, 0.05)


class Vocab:
    """itos[0] = <pad>, itos[1] = <unk>, then words by count (descending), ties by the word (ascending)."""
    pad_id = 0
    unk_id = 1

    def __init__(self, itos: Sequence[str]):
        itos = list(itos)
        if len(itos) < 2 or itos[0] != PAD or itos[1] != UNK:
            raise UsageError(f"invalid vocabulary: it must start with {PAD}, {UNK}")
        if not all(isinstance(w, str) and w for w in itos):
            raise UsageError("invalid vocabulary: every entry must be a non-empty string")
        self.itos: list[str] = itos
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(itos)}
        if len(self.stoi) != len(itos):
            raise UsageError("invalid vocabulary: it has duplicate entries")

    @classmethod
    def build(cls, corpus_or_counts: "Corpus | Mapping[str, int]", size: int, min_freq: int = 1) -> "Vocab":
        """The `size - 2` most frequent words occurring at least `min_freq` times, plus <pad>, <unk> (fewer if the
        corpus has fewer such words). A Corpus is counted whole; pass train_counts(corpus) for the training split."""
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 2:
            raise UsageError(f"vocabulary size must be an integer >= 2 (it includes {PAD} and {UNK}), got {size!r}")
        if isinstance(min_freq, bool) or not isinstance(min_freq, (int, np.integer)) or min_freq < 1:
            raise UsageError(f"{{min_freq}} must be an integer >= 1, got {min_freq!r}", params=("min_freq",))
        if isinstance(corpus_or_counts, Corpus):
            words, counts = corpus_or_counts.lexicon, np.asarray(corpus_or_counts.counts, dtype=np.int64)
        elif isinstance(corpus_or_counts, Mapping):
            words = list(corpus_or_counts)
            counts = np.fromiter((int(c) for c in corpus_or_counts.values()), dtype=np.int64, count=len(words))
        else:
            raise TypeError(f"Vocab.build needs a Corpus or a word -> count mapping, got {type(corpus_or_counts).__name__}")
        k = int(size) - 2
        cand = np.flatnonzero(counts >= min_freq)
        cand = np.array([i for i in cand.tolist() if words[i] not in (PAD, UNK)], dtype=np.int64)
        if len(cand) > k:
            # Everything at least as frequent as the k-th word; the exact order (with ties) is sorted below.
            kth = np.partition(counts[cand], len(cand) - k)[len(cand) - k] if k > 0 else np.inf
            cand = cand[counts[cand] >= kth]
        cnt = counts.tolist()
        chosen = sorted(cand.tolist(), key=lambda i: (-cnt[i], words[i]))[:k]
        if len(chosen) < k:
            log.warning("vocabulary: asked for %d entries, the corpus has only %d distinct words%s: using %d "
                        "(with %s, %s)", size, len(chosen),
                        f" occurring at least {min_freq} times" if min_freq > 1 else "", len(chosen) + 2, PAD, UNK)
        return cls([PAD, UNK] + [words[i] for i in chosen])

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: object) -> bool:
        return word in self.stoi

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.itos == other.itos

    def __repr__(self) -> str:
        return f"Vocab({len(self)} entries)"

    def encode(self, words: Sequence[str]) -> list[int]:
        get, unk = self.stoi.get, self.unk_id
        return [get(w, unk) for w in words]

    def decode(self, ids) -> str:
        """The words as text (rnnlm.data.words.join_words: spaces only where words would merge); <pad> is
        skipped."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return join_words(self.itos[i] for i in ids if i != self.pad_id)

    def to_list(self) -> list[str]:
        return list(self.itos)

    @classmethod
    def from_list(cls, itos: Sequence[str]) -> "Vocab":
        return cls(itos)

    def lookup_table(self, corpus: Corpus) -> np.ndarray:
        """int64 (len(corpus.lexicon),): vocabulary id of each lexicon word (<unk> if absent)."""
        get, unk = self.stoi.get, self.unk_id
        return np.fromiter((get(w, unk) for w in corpus.lexicon), dtype=np.int64, count=len(corpus.lexicon))


def split_bounds(corpus: Corpus, fractions: Sequence[float] = SPLIT_FRACTIONS) -> list[int]:
    """Token offsets [0, end of train, end of valid, n_tokens] of three contiguous blocks of lines: the first
    fractions[0] of the lines are "train", the next fractions[1] "valid", the rest "test". A corpus with too few
    lines for that (one long line, say) is split at token positions instead, still contiguous, with a warning."""
    fr = [float(f) for f in fractions]
    if len(fr) != 3 or any(not math.isfinite(f) or f < 0 for f in fr) or abs(sum(fr) - 1) > 1e-6 or fr[0] <= 0:
        raise UsageError(f"split fractions must be three non-negative numbers summing to 1 with train > 0, got {tuple(fractions)}")
    n_lines, n = corpus.n_lines, corpus.n_tokens
    b1 = round(n_lines * fr[0])
    b2 = min(n_lines, max(b1, round(n_lines * (fr[0] + fr[1]))))
    cuts = [0, int(corpus.line_offsets[b1]), int(corpus.line_offsets[b2]), n]
    if any(f > 0 and cuts[i + 1] == cuts[i] for i, f in enumerate(fr)):
        t1 = round(n * fr[0])
        t2 = min(n, max(t1, round(n * (fr[0] + fr[1]))))
        cuts = [0, t1, t2, n]
        log.warning("corpus %s has too few lines (%d) to split by lines: split by tokens instead (%d/%d/%d)",
                    corpus.path, n_lines, t1, t2 - t1, n - t2)
    return cuts


def split_corpus(corpus: Corpus, vocab: Vocab, fractions: Sequence[float] = SPLIT_FRACTIONS) -> dict[str, torch.Tensor]:
    """Vocabulary ids (int64, 1-D) of the "train", "valid" and "test" blocks of split_bounds; words not in
    `vocab` are <unk>."""
    cuts = split_bounds(corpus, fractions)
    ids = vocab.lookup_table(corpus)[corpus.ids]          # int64 (n_tokens,)
    return {name: torch.from_numpy(ids[cuts[i]:cuts[i + 1]]) for i, name in enumerate(SPLITS)}


def train_counts(corpus: Corpus, fractions: Sequence[float] = SPLIT_FRACTIONS) -> dict[str, int]:
    """word -> occurrences in the training split of split_bounds (words absent from it are left out)."""
    counts = np.bincount(corpus.ids[:split_bounds(corpus, fractions)[1]], minlength=len(corpus.lexicon))
    return {corpus.lexicon[i]: int(counts[i]) for i in np.flatnonzero(counts).tolist()}


def train_vocab(corpus: Corpus, size: int, min_freq: int = 1,
                fractions: Sequence[float] = SPLIT_FRACTIONS) -> Vocab:
    """The vocabulary counted on the training split only (see the module docstring)."""
    return Vocab.build(train_counts(corpus, fractions), size, min_freq)


def oov_rate(tokens: torch.Tensor) -> float:
    """The fraction of `tokens` (vocabulary ids) that are <unk>: words outside the vocabulary."""
    return float((torch.as_tensor(tokens) == Vocab.unk_id).sum()) / max(1, torch.as_tensor(tokens).numel())
