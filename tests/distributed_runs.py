"""Run by the tests under torchrun: several `rnnlm.train` runs in one process group, so that a test pays for
starting N processes once. `python -m torch.distributed.run --standalone --nproc-per-node N
tests/distributed_runs.py RUNS.json OUT.json`: RUNS.json is a list of {"argv": [...], "poison_rank": r,
"poison_step": s} (poison optional: that rank's loss becomes NaN at that step); OUT.json (rank 0) gets the exit
codes, and tokenized.<rank> files beside it count the times each rank tokenized a corpus."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from rnnlm import train
from rnnlm.data import tokenize
from rnnlm.errors import run_cli
from rnnlm.model import WordRNN


def count_tokenizations(folder: Path, rank: int) -> None:
    real = tokenize.tokenize_file

    def counted(*args, **kwargs):
        with open(folder / f"tokenized.{rank}", "a") as f:
            f.write("1\n")
        return real(*args, **kwargs)

    tokenize.tokenize_file = counted


def poison(rank: int, step: int):
    """WordRNN.training_loss returning NaN at call `step` on `rank`; returns a function undoing it."""
    real, calls = WordRNN.training_loss, {"n": 0}

    def poisoned(self, *args, **kwargs):
        loss, h = real(self, *args, **kwargs)
        calls["n"] += 1
        if dist.get_rank() == rank and calls["n"] == step:
            loss = loss * float("nan")
        return loss, h

    WordRNN.training_loss = poisoned
    return lambda: setattr(WordRNN, "training_loss", real)


def main() -> int:
    runs, out = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    count_tokenizations(out.parent, rank)
    codes = []
    for run in runs:
        undo = poison(run["poison_rank"], run["poison_step"]) if "poison_rank" in run else None
        try:
            run_cli(train.main, train.PROG, run["argv"])
        except SystemExit as exit_:
            codes.append(exit_.code)
        finally:
            if undo:
                undo()
    dist.destroy_process_group()
    if rank == 0:
        out.write_text(json.dumps(codes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
