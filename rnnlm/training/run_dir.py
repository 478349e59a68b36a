"""The run folder (--out): last.pt, best.pt and metrics.jsonl, and what a run checks before writing there.

One run owns its folder, and the folder always describes one history:
- `lock()` takes an exclusive advisory lock (fcntl.flock on .rnnlm.lock) for the run's lifetime. The kernel drops
  it when the process ends, however it ends (kill -9 included), so a lock is never stale; a second process
  is refused, naming the holder written in the lock file.
- `claim()` refuses a new run in a folder that holds anything (or, with overwrite, removes the old run's files).
- `start_metrics()` makes metrics.jsonl the history up to the checkpoint being resumed (lines past its step,
  written before a crash, are cut), atomically, or an empty file for a fresh run.
- `best_record()` reads the validation perplexity best.pt was saved with: checkpoints are written best.pt first,
  then last.pt, so a kill between the two leaves a best.pt better than last.pt knows of, and resume takes the
  lower of the two so that it never replaces a better best.pt with a worse one.
A multi-process run calls these on the process that writes (rank 0) only.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from rnnlm.errors import UsageError

LAST, BEST, METRICS = "last.pt", "best.pt", "metrics.jsonl"
LOCK = ".rnnlm.lock"
RUN_FILES = (LAST, BEST, METRICS)

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are not protected from each other there
    fcntl = None


class RunFolder:
    """Paths of one run's files; `prepare()` creates the folder and checks that it can be written."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.last, self.best, self.metrics = self.path / LAST, self.path / BEST, self.path / METRICS
        self._lock_fd: int | None = None

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

    # -- one process per folder ----------------------------------------------------------------------------------
    def lock(self) -> None:
        """Creates the folder and takes its lock; UsageError naming the holder when another process has it."""
        self.prepare()
        if fcntl is None or self._lock_fd is not None:
            return
        path = self.path / LOCK
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise UsageError(f"cannot create the lock file {path}: {err.strerror or err}") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_holder(fd)
            os.close(fd)
            raise UsageError(f"run folder {self.path} is in use by another rnnlm process ({holder}); wait for it to "
                             f"end, or give another {{out}}", params=("out",)) from None
        holder = (f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                  f"{' '.join(sys.argv)[:300]}")
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder.encode("utf-8", "replace"), 0)
        except OSError:
            pass  # the lock holds without the note
        self._lock_fd = fd

    def unlock(self) -> None:
        """Releases the lock (the file stays: removing it would let two processes lock two different files)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    # -- whose run it is -----------------------------------------------------------------------------------------
    def claim(self, overwrite: bool) -> None:
        """For a new run: UsageError when the folder holds anything; with overwrite, the old run's files go."""
        held = sorted(p.name for p in self.path.iterdir() if p.name != LOCK and not p.name.startswith(".write-test."))
        if not held:
            return
        if not overwrite:
            shown = ", ".join(held[:4]) + (f" and {len(held) - 4} more" if len(held) > 4 else "")
            raise UsageError(f"output folder {self.path} is not empty (it holds {shown}): resume that run with "
                             f"{{resume}} {self.path}, or pass {{overwrite}} to replace it, or give another {{out}}",
                             params=("resume", "overwrite", "out"))
        for name in RUN_FILES:
            try:
                (self.path / name).unlink(missing_ok=True)
            except OSError as err:
                raise UsageError(f"cannot remove {self.path / name}: {err.strerror or err}") from err

    def checkpoints(self) -> list[str]:
        """The names of the checkpoints the folder holds now."""
        return [path.name for path in (self.best, self.last) if path.exists()]

    def best_record(self) -> float | None:
        """The validation perplexity best.pt was saved with (None: no readable best.pt)."""
        from rnnlm.checkpoint import load_checkpoint  # torch; this module stays light

        if not self.best.exists():
            return None
        try:
            value = load_checkpoint(self.best).get("best_valid_ppl")
        except UsageError:
            return None
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    # -- metrics.jsonl -------------------------------------------------------------------------------------------
    def start_metrics(self, history: Path | None = None, upto_step: int | None = None) -> None:
        """metrics.jsonl as the lines of `history` (a metrics.jsonl; this folder's own on a resume in place) up to
        and including step `upto_step`, replaced atomically; an empty file when there is no history."""
        lines: list[str] = []
        if history is not None and upto_step is not None and history.exists():
            try:
                text = history.read_text(encoding="utf-8", errors="replace")
            except OSError as err:
                raise UsageError(f"cannot read {history}: {err.strerror or err}") from err
            for line in text.splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a line torn by a crash
                step = record.get("step") if isinstance(record, dict) else None
                if isinstance(step, int) and not isinstance(step, bool) and 0 <= step <= upto_step:
                    lines.append(line + "\n")
        tmp = self.path / f".{METRICS}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.writelines(lines)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.metrics)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise UsageError(f"cannot write {self.metrics}: {err.strerror or err}") from err

    def open_metrics(self) -> MetricsFile:
        return MetricsFile(self.metrics)


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 1000, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "holder unknown"


def _write_all(fd: int, data: bytes) -> None:
    """os.write until all of `data` is written (the seam where tests inject a full disk)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class MetricsFile:
    """metrics.jsonl, appended to: one JSON object a line, written whole or not at all. A context manager.

    A line that cannot be written completely (disk full) is cut off again, so the file stays valid JSON lines,
    and the run stops with one line saying so."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        except OSError as err:
            raise UsageError(f"cannot open {path}: {err.strerror or err}") from err

    def write(self, record: dict[str, Any]) -> None:
        data = (json.dumps(record) + "\n").encode("utf-8")
        size = os.fstat(self._fd).st_size
        try:
            _write_all(self._fd, data)
        except OSError as err:
            try:
                os.ftruncate(self._fd, size)
            except OSError:
                pass
            raise UsageError(f"cannot append to {self.path}: {err.strerror or err}; training stopped at step "
                             f"{record.get('step')} (checkpoints already written are kept: free space, then "
                             f"resume with {{resume}} {self.path.parent})", params=("resume",)) from None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> MetricsFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
