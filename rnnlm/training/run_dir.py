"""The run folder (--out): last.pt, best.pt and metrics.jsonl, and what a run checks before writing there."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rnnlm.errors import UsageError

LAST, BEST, METRICS = "last.pt", "best.pt", "metrics.jsonl"


class RunFolder:
    """Paths of one run's files; `prepare()` creates the folder and checks that it can be written."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.last, self.best, self.metrics = self.path / LAST, self.path / BEST, self.path / METRICS

    def __str__(self) -> str:
        return str(self.path)

    def prepare(self) -> None:
        """Creates the folder; UsageError (one line) when it cannot be created or written."""
        folder = self.path
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"output folder {folder} is a file, not a folder")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UsageError(f"cannot create output folder {folder}: {err.strerror or err}") from err
        probe = folder / f".write-test.{os.getpid()}"
        try:
            with open(probe, "wb") as f:
                f.write(b"ok")
            probe.unlink()
        except OSError as err:
            raise UsageError(f"output folder {folder} is not writable: {err.strerror or err}") from err

    def checkpoints(self) -> list[str]:
        """The names of the checkpoints the folder holds now."""
        return [path.name for path in (self.best, self.last) if path.exists()]

    def open_metrics(self) -> MetricsFile:
        return MetricsFile(self.metrics)


class MetricsFile:
    """metrics.jsonl, appended to: one JSON object a line, flushed as written. A context manager."""

    def __init__(self, path: Path):
        self._file = open(path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def __enter__(self) -> MetricsFile:
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()
