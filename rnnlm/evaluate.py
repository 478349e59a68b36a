"""`python -m rnnlm.evaluate CKPT [--data PATH] [--split test] [--batch-size B] [--uniform] [--backend B] [--device D]`:
the exact perplexity of a checkpoint on one split of its corpus (rnnlm.evaluation), with the split's
out-of-vocabulary rate; --uniform adds the uniform model's perplexity on the same split (= the vocabulary size)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from rnnlm.checks import positive_int
from rnnlm.cli import CheckpointOptions, log_to_stderr, open_checkpoint, parse
from rnnlm.config import option
from rnnlm.data import SPLITS
from rnnlm.errors import run_cli
from rnnlm.evaluation import describe_perplexity

PROG = "rnnlm.evaluate"


@dataclass
class EvaluateConfig(CheckpointOptions):
    data: str | None = option(None, help="corpus to evaluate on (default: the corpus the checkpoint was trained on)",
                              metavar="PATH")
    split: str = option("test", choices=SPLITS, help="which block of the corpus")
    batch_size: int = option(16, help="parallel streams the split is cut into (1: one stream, the most context)")
    uniform: bool = option(False, help="also evaluate the uniform model (every word 1/V) on the same split: its "
                                       "perplexity is the vocabulary size V")

    def validate(self) -> None:
        positive_int("batch_size", self.batch_size)


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse(EvaluateConfig, PROG, "Perplexity of an rnnlm checkpoint on its corpus.", argv)
    cfg.validate()
    log_to_stderr()
    lm = open_checkpoint(cfg)
    result = lm.evaluate(cfg.split, data=cfg.data, batch_size=cfg.batch_size)
    print(f"{cfg.split} perplexity: {describe_perplexity(result.perplexity, result.mean_nll, 4)} "
          f"({result.n_targets + 1} tokens, {result.n_targets} predicted; OOV rate {result.oov_rate:.2%} (<unk>); "
          f"backend {lm.model.backend.describe(lm.device)})")
    if cfg.uniform:
        uniform = lm.evaluate(cfg.split, data=cfg.data, batch_size=cfg.batch_size, uniform=True)
        print(f"uniform model: {cfg.split} perplexity {uniform.perplexity:.9f} (vocabulary size "
              f"{len(lm.vocab)}; fp64)")
    return 0


if __name__ == "__main__":
    run_cli(main, PROG)
