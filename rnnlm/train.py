"""`python -m rnnlm.train [--data PATH] [--out DIR] [--resume DIR] ...` (see --help): train a model
(rnnlm.training). Exit codes: 0 done, 2 a bad option or input (one line), 130 stopped by Ctrl-C or SIGTERM,
1 another process of a torchrun run stopped answering.

`torchrun --nproc-per-node N -m rnnlm.train ...` trains on N processes (rnnlm.training.distributed); rank 0
alone prints what is common to all (errors included), each rank prints its own PeerLost line."""
from __future__ import annotations

import logging
import sys
from typing import Sequence

from rnnlm.cli import log_to_stderr
from rnnlm.config import build_parser, explicit_options, from_namespace
from rnnlm.errors import UsageError, run_cli
from rnnlm.training.config import TrainConfig
from rnnlm.training.distributed import PeerLost, env_rank, env_world_size
from rnnlm.training.run_dir import LAST
from rnnlm.training.signals import INTERRUPTED_EXIT
from rnnlm.training.step import keep_freed_memory
from rnnlm.training.trainer import INTERRUPTED, fit

PROG = "rnnlm.train"
ENDINGS = {  # TrainResult.status -> what the user is told on stderr
    INTERRUPTED: "interrupted at step {step}; saved {last}. Resume with: {launcher} --resume {out}",
    "interrupted at the end": "interrupted after step {step}, the last; {last} is saved",
    "interrupted again": "interrupted again at step {step}; {last} holds the last checkpoint saved",
}


def _parser():
    return build_parser(TrainConfig, PROG, "Train a word-level RNN language model on Chinese text.")


def main(argv: Sequence[str] | None = None) -> int:
    cfg = from_namespace(TrainConfig, _parser().parse_args(argv))
    writer = env_rank() == 0
    log_to_stderr()
    if not writer:  # the same notes on every rank: rank 0 writes them
        logging.getLogger().setLevel(logging.ERROR)
    keep_freed_memory()
    try:
        if cfg.resume is None:
            cfg.validate()
        result = fit(cfg, explicit_options(_parser(), argv))
    except KeyboardInterrupt:  # outside the training loop (loading the corpus, the final test or sample)
        if writer:
            print(f"{PROG}: interrupted; checkpoints already written are intact", file=sys.stderr)
        return INTERRUPTED_EXIT
    except UsageError:
        if writer:
            raise
        return 2  # every rank finds the same problem; rank 0 says it
    except PeerLost as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    if result.status in ENDINGS:
        launcher = "python -m rnnlm.train" if env_world_size() == 1 else \
            f"torchrun (with {env_world_size()} processes) -m rnnlm.train"
        message = ENDINGS[result.status].format(step=result.step, last=result.out / LAST, out=result.out,
                                                launcher=launcher)
        if writer:
            print(f"{PROG}: {message}", file=sys.stderr)
        return INTERRUPTED_EXIT
    return 0


if __name__ == "__main__":
    run_cli(main, PROG)
