"""Ctrl-C and SIGTERM during training: finish the step, save last.pt, exit 130; a second Ctrl-C stops at once."""
from __future__ import annotations

import signal
import sys
from typing import Any

from rnnlm.errors import INTERRUPTED_EXIT  # noqa: F401  (re-exported: the CLIs import it from here)


class StopSignal:
    """While active, SIGINT / SIGTERM set `received` (checked after every step); a second one raises
    KeyboardInterrupt."""

    def __init__(self, message: str, quiet: bool = False):
        self.message = message  # printed on stderr when the first signal arrives (unless quiet)
        self.quiet = quiet
        self.received: str | None = None
        self._saved: dict[int, Any] = {}

    def _handle(self, signum, frame):
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        if not self.quiet:
            print(f"\nrnnlm.train: {self.received} received: {self.message}", file=sys.stderr, flush=True)

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._saved[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handler, Ctrl-C stays a KeyboardInterrupt
                pass
        return self

    def __exit__(self, *exc):
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        return False
