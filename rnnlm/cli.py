"""What the command lines share: parsing a config dataclass, logging to stderr, and opening a checkpoint."""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Sequence, TypeVar

from rnnlm.api import LanguageModel
from rnnlm.backends import BACKEND_CHOICES
from rnnlm.checkpoint import load_checkpoint
from rnnlm.config import build_parser, from_namespace, option

T = TypeVar("T")


def parse(cls: type[T], prog: str, description: str, argv: Sequence[str] | None) -> T:
    """The dataclass `cls` filled from argv (argparse exits with code 2 and its usage line on a bad flag)."""
    return from_namespace(cls, build_parser(cls, prog, description).parse_args(argv))


def log_to_stderr() -> None:
    """rnnlm's notes (the backend chosen, warnings) as plain lines on stderr."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)


@dataclass
class CheckpointOptions:
    """The options of every command that reads a checkpoint."""

    checkpoint: str = option(help="checkpoint file written by rnnlm.train", positional=True, metavar="CKPT")
    backend: str | None = option(None, choices=BACKEND_CHOICES,
                                 help="torch (torch.nn.RNN; 'cudnn' is accepted for it) or triton (rnnlm's "
                                      "kernels); default: triton with CUDA, else torch")
    device: str | None = option(None, help="cpu or cuda (default: cuda when available)")


def open_checkpoint(opts: CheckpointOptions, payload: dict | None = None) -> LanguageModel:
    """The checkpoint (read from opts.checkpoint unless given) as a model on the chosen backend and device."""
    return LanguageModel.from_checkpoint(payload or load_checkpoint(opts.checkpoint), backend=opts.backend,
                                         device=opts.device)
