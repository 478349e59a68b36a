"""Quality benchmark (not part of `make test`: it runs for minutes): train the default model on the default corpus for
a fixed number of training tokens with one recipe, then print the exact test perplexity of the best-validation
checkpoint (every target of the test split, 16 streams), the training tokens/s, and the recipe.

    .venv/bin/python benchmarks/quality.py                         # the default recipe, 2,000,000 tokens
    .venv/bin/python benchmarks/quality.py --recipe tutorial       # the tutorial's recipe on the same tokens
    .venv/bin/python benchmarks/quality.py --recipe before -- --seed 1 --batch-size 32   # any rnnlm.train option

Recipes (each on a vocabulary counted on the training split only):
  default   rnnlm.train's defaults (README, "Training recipe")
  before    rnnlm's default before issue 13: random windows, constant Adam lr 1e-3, torch's initial weights
  tutorial  the tutorial script's: random windows with the hidden state carried across unrelated windows,
            constant Adam lr 1e-3, torch's initial weights
Validation every --eval-every steps (default 250, i.e. 320,000 tokens at 64 x 20); the table of recipes measured
with it (and the commands) is in benchmarks/quality.md. Options after `--` are rnnlm.train's and override the
recipe's.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rnnlm.config import build_parser, explicit_options, from_namespace  # noqa: E402
from rnnlm.training.config import TrainConfig  # noqa: E402
from rnnlm.training.determinism import deterministic_mode  # noqa: E402
from rnnlm.training.trainer import Trainer  # noqa: E402

RECIPES = {
    "default": {},
    "before": {"batching": "windows", "lr": 1e-3, "lr_schedule": "constant", "warmup": 0, "weight_decay": 0.0,
               "init": "torch"},
    "tutorial": {"batching": "windows", "lr": 1e-3, "lr_schedule": "constant", "warmup": 0, "weight_decay": 0.0,
                 "init": "torch"},
}
RECIPE_KEYS = ("batching", "batch_size", "seq_len", "init", "lr", "lr_schedule", "warmup", "lr_floor", "weight_decay",
               "clip", "dropout", "seed")


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    n = torch.get_num_threads()
    return f"{name}, {n} thread{'' if n == 1 else 's'}"


def run(recipe: str, tokens: float, eval_every: int, train_args: list[str], out: str | None) -> dict:
    parser = build_parser(TrainConfig, "quality.py --", "rnnlm.train options")
    cfg = from_namespace(TrainConfig, parser.parse_args(train_args))
    given = explicit_options(build_parser(TrainConfig, "quality.py --", ""), train_args)
    overrides = {k: v for k, v in RECIPES[recipe].items() if k not in given}
    cfg = dataclasses.replace(cfg, **overrides)
    steps = math.ceil(tokens / (cfg.batch_size * cfg.seq_len))
    folder = out or tempfile.mkdtemp(prefix="rnnlm-quality-")
    cfg = dataclasses.replace(cfg, max_steps=steps, eval_every=eval_every, out=folder, sample_length=0,
                              progress=False, **({} if "epochs" in given else {"epochs": 10**6}))
    cfg.validate()
    with deterministic_mode(cfg.deterministic):
        trainer = Trainer.build(cfg, None)
        if recipe == "tutorial":
            trainer.data.batches.carry_hidden = True  # the tutorial carries the state across unrelated windows
        started = time.perf_counter()
        result = trainer.finish(trainer.loop())
        seconds = time.perf_counter() - started
    rows = [json.loads(line) for line in (Path(folder) / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r]
    return {"recipe": recipe, **{k: getattr(cfg, k) for k in RECIPE_KEYS}, "steps": result.step,
            "tokens": result.step * cfg.batch_size * cfg.seq_len,
            "best_valid_ppl": min(r["valid_ppl"] for r in rows if "valid_ppl" in r),
            "test_ppl": result.test_perplexity, "tokens_per_s": sum(rates) / len(rates) if rates else None,
            "seconds": round(seconds, 1), "machine": machine(), "torch": torch.__version__, "out": folder}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--recipe", choices=tuple(RECIPES), default="default")
    p.add_argument("--tokens", type=float, default=2e6, help="training tokens (steps = tokens / (B * T), rounded up)")
    p.add_argument("--eval-every", type=int, default=250, help="validation every N steps")
    p.add_argument("--out", default=None, help="run folder (default: a temporary folder)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    args = p.parse_args(argv[:split])
    result = run(args.recipe, args.tokens, args.eval_every, argv[split + 1:], args.out)
    if args.json:
        print(json.dumps(result))
    else:
        recipe = ", ".join(f"{k} {result[k]}" for k in RECIPE_KEYS)
        print(f"recipe {result['recipe']}: {recipe}")
        print(f"{result['tokens']:,} training tokens ({result['steps']} steps): test perplexity "
              f"{result['test_ppl']:.2f} (best validation {result['best_valid_ppl']:.2f}); "
              f"{result['tokens_per_s']:,.0f} tokens/s on {result['machine']}, torch {result['torch']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
