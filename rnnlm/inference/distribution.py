"""The distribution view: the most likely next words after a prompt, with their probabilities at one or several
temperatures, as a table and optionally a bar chart (PNG) — the tutorial's temperature example on the user's own
model.

The probabilities are WordRNN.next_word_distribution's softmax(z / T) (on the triton backend, the fused
temperature-softmax kernel) over the words generation may draw: <pad> and, unless allow_unk, <unk> get
probability 0 and the rest are renormalised exactly, so the table is the distribution the next word is drawn
from. The order of the words does not depend on T, so the rows are the top words at every temperature.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from rnnlm.data import TokenizerSettings, Vocab
from rnnlm.errors import UsageError
from rnnlm.inference.sampling import check_sampling
from rnnlm.inference.text import banned_ids, prompt_ids
from rnnlm.model import WordRNN


@dataclass
class NextWords:
    """The top words after a prompt: words[i] has probability probs[j][i] at temperatures[j]."""

    prompt: str
    temperatures: list[float]
    words: list[str]
    probs: list[list[float]]
    excluded: list[str]  # words given probability 0 (the rest renormalised)

    def format(self) -> str:
        """A plain-text table: rank, word, then the probability (%) at each temperature."""
        width = max([len(w) for w in self.words] + [4])
        head = f"{'rank':>4}  {'word':<{width}}" + "".join(f"  {'T=' + format(t, 'g'):>8}" for t in self.temperatures)
        lines = [f"next word after {self.prompt!r} (top {len(self.words)}; "
                 f"{', '.join(self.excluded)} excluded, the rest renormalised)", head]
        for i, word in enumerate(self.words):
            cells = "".join(f"  {100 * p[i]:>7.2f}%" for p in self.probs)
            lines.append(f"{i + 1:>4}  {word:<{width}}{cells}")
        return "\n".join(lines)


def parse_temperatures(text: str) -> list[float]:
    """"0.5,1,2" -> [0.5, 1.0, 2.0]; UsageError naming {temperatures} for anything else."""
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or any(not math.isfinite(t) or t <= 0 for t in values):
        raise UsageError(f"{{temperatures}} must be a comma-separated list of numbers > 0, got {text!r}",
                         params=("temperatures",))
    return values


def next_words(model: WordRNN, vocab: Vocab, settings: TokenizerSettings, prompt: str,
               temperatures: Sequence[float], top: int = 10, allow_unk: bool = False) -> NextWords:
    """The `top` most likely next words after `prompt` and their probabilities at each temperature."""
    for t in temperatures:
        check_sampling(t, False, None, None)
    ids = prompt_ids(vocab, settings, prompt)
    device = model.fc.weight.device
    x = torch.tensor([ids], dtype=torch.int64, device=device)
    mask = torch.zeros(len(vocab), dtype=torch.bool, device=device)
    banned = banned_ids(vocab, allow_unk)
    mask[banned] = True
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            dists = [model.next_word_distribution(x, None, float(t), mask)[0][0].double() for t in temperatures]
    finally:
        model.train(was_training)
    k = min(top, len(vocab) - len(banned))
    order = torch.topk(dists[0], k).indices.tolist()
    return NextWords(prompt, [float(t) for t in temperatures], [vocab.itos[i] for i in order],
                     [[float(d[i]) for i in order] for d in dists], [vocab.itos[i] for i in banned])


def _cjk_font() -> str | None:
    """A font that has CJK glyphs, if one is installed (matplotlib's default has none)."""
    from matplotlib import font_manager
    for font in font_manager.fontManager.ttflist:
        if any(key in font.name for key in ("CJK", "WenQuanYi", "SimHei", "Hei", "Ming", "Song", "Kai")):
            return font.name
    return None


def save_plot(view: NextWords, path: str | Path) -> Path:
    """A grouped bar chart of the view (one bar per temperature for each word), written as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    font = _cjk_font()
    labels = view.words if font else [f"{i + 1}" for i in range(len(view.words))]
    n, m = len(view.words), len(view.temperatures)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * n * max(1, m / 2)), 4.0))
    width = 0.8 / m
    for j, (t, probs) in enumerate(zip(view.temperatures, view.probs)):
        ax.bar([i - 0.4 + width * (j + 0.5) for i in range(n)], [100 * p for p in probs], width, label=f"T = {t:g}")
    ax.set_xticks(range(n))
    ax.set_xticklabels(labels, fontfamily=font) if font else ax.set_xticklabels(labels)
    ax.set_ylabel("probability (%)")
    ax.set_xlabel("next word" if font else "rank of the next word (no CJK font installed: words in the table)")
    ax.set_title(f"next word after the prompt ({len(view.words)} most likely)")
    ax.legend()
    fig.tight_layout()
    try:
        fig.savefig(path, format="png", dpi=120)
    except OSError as err:
        raise UsageError(f"cannot write the plot {path}: {err.strerror or err}", params=("plot",)) from None
    finally:
        plt.close(fig)
    return path
