"""User-facing errors: every problem with the user's input ends as one line on stderr and exit code 2."""
from __future__ import annotations

import sys
from typing import Callable, NoReturn, Sequence


class UsageError(Exception):
    """A problem with what the user gave (a file, a flag, a checkpoint): reported as one line, exit 2."""


def run_cli(main: Callable[[Sequence[str] | None], int | None], prog: str, argv: Sequence[str] | None = None) -> NoReturn:
    """Runs a CLI's main; a UsageError becomes one line on stderr and exit code 2."""
    try:
        code = main(argv)
    except UsageError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)
