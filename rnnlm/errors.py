"""User-facing errors: every problem with the user's input ends as one line on stderr and exit code 2.

Library code says what is wrong with a value and names the parameter as the library spells it
(`seq_len must be a positive integer, got 0`). A CLI shows the same message with the parameter written as its
flag (`--seq-len must be a positive integer, got 0`), so that an error found deep inside a run (a batch size too
large for the corpus) still tells a command-line user which flag to change. The message marks each such place
as `{name}` (in an f-string: `{{name}}`) and lists the name in `params`; other mentions stay as written.
"""
from __future__ import annotations

import os
import signal
import sys
from typing import Callable, NoReturn, Sequence

INTERRUPTED_EXIT = 130  # the shell's code for "stopped by SIGINT"


class UsageError(Exception):
    """A problem with what the user gave (a file, a value, a checkpoint): reported as one line, exit 2.

    params: parameter names (such as "batch_size") marked in the message as {batch_size}.
    """

    def __init__(self, message: str, *, params: Sequence[str] = ()):
        self.template, self.params = message, tuple(params)
        super().__init__(self._render(str))

    def cli_message(self) -> str:
        """The message with each marked parameter written as its flag: {seq_len} -> --seq-len."""
        return self._render(flag)

    def _render(self, spell: Callable[[str], str]) -> str:
        text = self.template
        for name in self.params:
            text = text.replace("{" + name + "}", spell(name))
        return text


def flag(name: str) -> str:
    """The command-line flag of a parameter: seq_len -> --seq-len."""
    return "--" + name.replace("_", "-")


def run_cli(main: Callable[[Sequence[str] | None], int | None], prog: str, argv: Sequence[str] | None = None) -> NoReturn:
    """Runs a CLI's main; a UsageError becomes one line on stderr (parameters named as flags) and exit code 2."""
    if signal.getsignal(signal.SIGINT) is _interrupted_while_starting:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # from here on: KeyboardInterrupt, handled below
    try:
        code = main(argv)
    except UsageError as err:
        print(f"{prog}: error: {err.cli_message()}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED_EXIT)
    except (MemoryError, RuntimeError) as err:
        if not is_out_of_memory(err):
            raise
        detail = " ".join(str(err).split())[:200]
        print(f"{prog}: error: out of memory ({detail or type(err).__name__}): use smaller sizes", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)


def is_out_of_memory(err: BaseException) -> bool:
    """Whether `err` is an allocation that failed: MemoryError, torch.OutOfMemoryError (CUDA), or the CPU
    allocator's RuntimeError."""
    if isinstance(err, MemoryError):
        return True
    oom = getattr(sys.modules.get("torch"), "OutOfMemoryError", None)
    if oom is not None and isinstance(err, oom):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)


def _interrupted_while_starting(signum, frame) -> None:
    os.write(2, b"rnnlm: interrupted while starting\n")
    os._exit(INTERRUPTED_EXIT)  # nothing to clean up: only imports have run


def quiet_interrupts_while_starting() -> None:
    """Until run_cli starts the command, Ctrl-C exits with code 130 and one line, not a traceback from an import."""
    try:
        signal.signal(signal.SIGINT, _interrupted_while_starting)
    except ValueError:  # not the main thread
        pass
