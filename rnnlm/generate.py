"""`python -m rnnlm.generate CKPT --prompt 你好 --length 200 --temperature 0.8 [--greedy] [--top-k K] [--top-p P]
[--num-samples N] [--seed S] [--output-precision auto|fp32|fp16|int8] [--threads N] [--backend B] [--device D]`:
text from a checkpoint (rnnlm.inference.generation)."""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Sequence

from rnnlm.checkpoint import load_checkpoint, tokenizer_settings
from rnnlm.checks import positive_int
from rnnlm.cli import CheckpointOptions, log_to_stderr, open_checkpoint, parse
from rnnlm.config import option
from rnnlm.data import tokenize_text
from rnnlm.errors import UsageError, run_cli
from rnnlm.inference.generation import EMPTY_PROMPT
from rnnlm.inference.precision import OUTPUT_PRECISIONS
from rnnlm.inference.sampling import check_sampling
from rnnlm.inference.text import generate

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


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse(GenerateConfig, PROG, "Generate text from a trained rnnlm checkpoint.", argv)
    cfg.validate()
    log_to_stderr()
    payload = load_checkpoint(cfg.checkpoint)
    # An empty prompt is refused before the model is built (and before anything is logged).
    if not tokenize_text(cfg.prompt, tokenizer_settings(payload)):
        raise UsageError(EMPTY_PROMPT, params=("prompt",))
    lm = open_checkpoint(cfg, payload)
    logging.getLogger("rnnlm").info("backend %s", lm.model.backend.describe(lm.device))
    texts = generate(lm.model, lm.vocab, lm.settings, cfg.prompt, cfg.length, temperature=cfg.temperature,
                     greedy=cfg.greedy, top_k=cfg.top_k, top_p=cfg.top_p, num_samples=cfg.num_samples,
                     seed=cfg.seed, output_precision=cfg.output_precision, threads=cfg.threads,
                     warn=lambda m: print(f"{PROG}: warning: {m}", file=sys.stderr))
    for i, text in enumerate(texts):
        if len(texts) > 1:
            print(f"--- sample {i + 1}")
        print(text)
    return 0


if __name__ == "__main__":
    run_cli(main, PROG)
