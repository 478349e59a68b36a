"""`python -m rnnlm.generate CKPT --prompt 你好 --length 200 --temperature 0.8 [--greedy] [--top-k K] [--top-p P]
[--num-samples N] [--seed S] [--allow-unk] [--output-precision auto|fp32|fp16|int8] [--threads N] [--backend B] [--device D]`:
text from a checkpoint (rnnlm.inference.generation), written word by word as it is drawn (flushed per word on a
terminal; a pipe gets whole lines). `--top-words N [--temperatures 0.5,1,2] [--plot next.png]` prints the N most
likely next words after the prompt with their probabilities instead (rnnlm.inference.distribution)."""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Sequence

from rnnlm.checkpoint import load_checkpoint, tokenizer_settings
from rnnlm.checks import positive_int, seed
from rnnlm.cli import CheckpointOptions, log_to_stderr, open_checkpoint, parse
from rnnlm.config import option
from rnnlm.data import tokenize_text
from rnnlm.errors import UsageError, run_cli
from rnnlm.inference.distribution import next_words, parse_temperatures, save_plot
from rnnlm.inference.generation import EMPTY_PROMPT
from rnnlm.inference.precision import OUTPUT_PRECISIONS
from rnnlm.inference.sampling import check_sampling
from rnnlm.inference.text import stream
from rnnlm.memory import check_fits, generation_bytes

PROG = "rnnlm.generate"


@dataclass
class GenerateConfig(CheckpointOptions):
    prompt: str = option("我们", help="text the samples continue (tokenized like the training corpus)")
    length: int = option(200, help="words to generate after the prompt")
    temperature: float = option(0.8, help="sampling temperature (> 0; lower is more conservative)")
    greedy: bool = option(False, help="always take the most likely word (argmax) instead of sampling")
    top_k: int | None = option(None, help="sample only among the K most likely words", metavar="K")
    top_p: float | None = option(None, help="sample only among the most likely words whose mass reaches P",
                                 metavar="P")
    num_samples: int = option(1, help="independent samples, drawn as one batch", metavar="N")
    seed: int | None = option(None, help="random seed (the same seed gives the same samples)")
    allow_unk: bool = option(False, help="let <unk> be drawn (by default it never is, nor <pad>: the other words' "
                                         "probabilities are renormalised exactly)")
    top_words: int = option(0, help="instead of generating, print the N most likely next words after the prompt "
                                    "with their probabilities at each of --temperatures", metavar="N")
    temperatures: str | None = option(None, help="comma-separated temperatures for --top-words, e.g. 0.5,1,2 "
                                                 "(default: --temperature)", metavar="LIST")
    plot: str | None = option(None, help="with --top-words: also save the table as a bar chart (PNG)",
                              metavar="PNG")
    output_precision: str = option("auto", choices=OUTPUT_PRECISIONS,
                                   help="output layer weights per step on the torch backend: fp32 (exact), fp16 "
                                        "(fbgemm, CPU: half the memory traffic per word, logits within ~1e-3), "
                                        "int8 (CPU: a quarter of the traffic, draws still exact by rejection "
                                        "sampling; one sample at temperature >= 0.5 without --top-k/--top-p), "
                                        "auto (whichever of those the settings allow runs fastest on this CPU, "
                                        "timed once and cached; fp32 for --greedy and on a GPU)")
    threads: int | None = option(None, help="torch CPU threads while generating (default: timed with the "
                                            "output precision, once per machine; on a few cores one thread can "
                                            "beat several for a mat-vec)", metavar="N")

    def validate(self) -> None:
        positive_int("length", self.length)
        positive_int("num_samples", self.num_samples)
        if self.threads is not None:
            positive_int("threads", self.threads)
        check_sampling(self.temperature, self.greedy, self.top_k, self.top_p)
        if self.top_words < 0:
            raise UsageError(f"{{top_words}} must be >= 0, got {self.top_words}", params=("top_words",))
        if self.temperatures is not None:
            parse_temperatures(self.temperatures)
        if self.plot is not None and not self.top_words:
            raise UsageError("{plot} draws the --top-words table: give {top_words} N too",
                             params=("plot", "top_words"))
        if self.seed is not None:
            seed("seed", self.seed)


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse(GenerateConfig, PROG, "Generate text from a trained rnnlm checkpoint.", argv)
    cfg.validate()
    log_to_stderr()
    payload = load_checkpoint(cfg.checkpoint)
    # An empty prompt is refused before the model is built (and before anything is logged).
    if not tokenize_text(cfg.prompt, tokenizer_settings(payload)):
        raise UsageError(EMPTY_PROMPT, params=("prompt",))
    lm = open_checkpoint(cfg, payload)
    check_fits(generation_bytes(lm.model.config, cfg.num_samples, cfg.length), "generating --num-samples × --length "
               f"= {cfg.num_samples * cfg.length:,} words", lm.device, params=("num_samples", "length"))
    logging.getLogger("rnnlm").info("backend %s", lm.model.backend.describe(lm.device))
    if cfg.top_words:
        temperatures = parse_temperatures(cfg.temperatures) if cfg.temperatures else [cfg.temperature]
        view = next_words(lm.model, lm.vocab, lm.settings, cfg.prompt, temperatures, cfg.top_words, cfg.allow_unk)
        print(view.format())
        if cfg.plot:
            print(f"plot: {save_plot(view, cfg.plot)}")
        return 0
    words = stream(lm.model, lm.vocab, lm.settings, cfg.prompt, cfg.length, temperature=cfg.temperature,
                   greedy=cfg.greedy, top_k=cfg.top_k, top_p=cfg.top_p, num_samples=cfg.num_samples, seed=cfg.seed,
                   output_precision=cfg.output_precision, allow_unk=cfg.allow_unk, threads=cfg.threads,
                   warn=lambda m: print(f"{PROG}: warning: {m}", file=sys.stderr))
    write_samples(words, cfg.prompt, cfg.num_samples, sys.stdout)
    return 0


def write_samples(words, prompt: str, num_samples: int, out) -> None:
    """Writes the words as they are drawn: one sample word by word (flushed per word on a terminal); several
    samples, drawn as one batch, each on its lines once complete (held as lists of words, never preallocated)."""
    if num_samples == 1:
        flush = out.isatty()
        out.write(prompt)
        for (word,) in words:
            out.write(word)
            if flush:
                out.flush()
        out.write("\n")
        out.flush()
        return
    texts: list[list[str]] = [[prompt] for _ in range(num_samples)]
    for step in words:
        for text, word in zip(texts, step):
            text.append(word)
    for i, text in enumerate(texts):
        out.write(f"--- sample {i + 1}\n{''.join(text)}\n")
    out.flush()


if __name__ == "__main__":
    run_cli(main, PROG)
