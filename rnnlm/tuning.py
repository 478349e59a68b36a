"""Choosing between implementations by timing them on the machine at hand: once, cached, logged, overridable.

Where rnnlm can do the same work in several ways whose speed depends on the CPU (a library, a precision, a
thread count), it does not guess from rules tuned on one machine: `choose(task, shape, candidates)` runs each
candidate (a callable doing one unit of the real work, at the model's shapes), keeps the fastest, logs the
figures, and caches the result in the cache folder (rnnlm.data.corpus.cache_root(), file tuning.json), keyed
by the task, the shape, the candidates, the CPU's model name, the torch version and torch's thread count. The
next run on the same machine reads the cache and times nothing.

Timing: each candidate is called once to warm up (allocations, packing, thread start-up), then the candidates
run in turn, round after round, until ROUNDS_MIN rounds and BUDGET_S seconds are spent (or ROUNDS_MAX rounds);
a candidate's figure is its fastest call. Taking turns and the minimum keep a busy machine (other processes
stealing a core now and then) from favouring whichever candidate happened to run while it was quiet.

Overrides (environment):
    RNNLM_TUNING=off             time nothing: every task takes its `default` (the test suite runs this way)
    RNNLM_TUNING=again           time again, ignoring the cache (say, after a measurement on a busy machine)
    RNNLM_TUNE="task=name,..."   force a task's choice, e.g. RNNLM_TUNE="generation step=fp16@1"
A corrupt cache file or entry is measured again and overwritten.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping

import torch

log = logging.getLogger("rnnlm.tuning")

CACHE_FILE = "tuning.json"
BUDGET_S = 0.25     # timed rounds after the warm-up, per task, on a fresh machine
ROUNDS_MIN = 2
ROUNDS_MAX = 200
last_choices: dict[str, "Choice"] = {}  # task -> its latest choice in this process (for reports)


@dataclass
class Choice:
    """What a task picked and why: seconds per call of each candidate timed (empty when nothing was timed)."""

    task: str
    picked: str
    seconds: dict[str, float] = field(default_factory=dict)
    how: str = "measured"  # "measured", "cached", "forced" (RNNLM_TUNE), "default" (tuning off)
    load: float | None = None  # the 1-minute load average when it was timed: figures from a busy machine

    def describe(self) -> str:
        figures = ", ".join(f"{name} {s * 1e3:.3g} ms" for name, s in sorted(self.seconds.items(), key=lambda i: i[1]))
        load = f"; load average {self.load:.1f} on {os.cpu_count()} CPUs" if self.load is not None else ""
        return f"{self.task}: {self.picked} ({self.how}{'; ' + figures if figures else ''}{load})"


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what the platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mode() -> str:
    return os.environ.get("RNNLM_TUNING", "on").strip().lower()


def enabled() -> bool:
    return _mode() not in ("off", "0", "no", "false")


def forced(task: str) -> str | None:
    """The choice RNNLM_TUNE forces for `task`, if any."""
    for item in os.environ.get("RNNLM_TUNE", "").split(","):
        name, sep, value = item.partition("=")
        if sep and name.strip() == task:
            return value.strip()
    return None


def cache_key(task: str, shape: tuple, names: list[str]) -> str:
    """The cache entry of `task` at `shape` among `names` on this machine, torch and thread count."""
    return json.dumps([task, list(shape), sorted(names), cpu_name(), torch.__version__, torch.get_num_threads()],
                      ensure_ascii=False)


def _cache_path() -> Path:
    from rnnlm.data.corpus import cache_root  # imported here: rnnlm.data needs numpy, which a GPU image may lack

    return cache_root() / CACHE_FILE


def _read_cache() -> dict:
    try:
        data = json.loads(_cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError, ImportError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(key: str, entry: dict) -> None:
    """Adds one entry (read, update, atomic replace); a cache folder that cannot be written is only logged."""
    data = _read_cache()
    data[key] = entry
    try:
        path = _cache_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{hashlib.md5(key.encode()).hexdigest()[:8]}.tmp")
        tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)
    except (OSError, ImportError) as err:
        log.info("tuning: could not save the choice (%s); it will be measured again next time", err)


def _valid_entry(entry, names: list[str]) -> bool:
    if not isinstance(entry, dict) or entry.get("picked") not in names:
        return False
    seconds = entry.get("seconds")
    return (isinstance(seconds, dict) and set(seconds) == set(names)
            and all(isinstance(s, (int, float)) and math.isfinite(s) and s > 0 for s in seconds.values()))


def time_candidates(candidates: Mapping[str, Callable[[], object]], budget_s: float = BUDGET_S) -> dict[str, float]:
    """Seconds per call of each candidate: a warm-up call each, then rounds in turn; each candidate's fastest."""
    best = {}
    for name, fn in candidates.items():
        fn()
        best[name] = math.inf
    start, rounds = time.perf_counter(), 0
    while rounds < ROUNDS_MIN or (rounds < ROUNDS_MAX and time.perf_counter() - start < budget_s):
        for name, fn in candidates.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
        rounds += 1
    return best


def choose(task: str, shape: tuple, candidates: Mapping[str, Callable[[], object]], *, default: str,
           budget_s: float = BUDGET_S) -> Choice:
    """The candidate to use for `task` at `shape` (see the module docstring); logs what it picked and why.

    candidates: name -> a callable doing one unit of the work (called only when timing). default: the choice
    when tuning is off (or the first candidate if it is not one).
    """
    names = list(candidates)
    if not names:
        raise ValueError(f"{task}: no candidates")
    name = forced(task)
    if name is not None:
        if name in candidates:
            return _logged(Choice(task, name, how="forced"))
        log.info("tuning: %s: RNNLM_TUNE names %s, not one of %s here; ignored", task, name, ", ".join(names))
    if not enabled() or len(names) == 1:
        choice = Choice(task, default if default in candidates else names[0], how="default")
        last_choices[task] = choice
        return choice
    key = cache_key(task, shape, names)
    entry = _read_cache().get(key) if _mode() != "again" else None
    if _valid_entry(entry, names):
        load = entry.get("load")
        return _logged(Choice(task, entry["picked"], dict(entry["seconds"]), how="cached",
                              load=load if isinstance(load, (int, float)) else None))
    seconds = time_candidates(candidates, budget_s)
    picked = min(seconds, key=seconds.get)
    load = load_average()
    _write_cache(key, {"picked": picked, "seconds": seconds, "load": load,
                       "when": time.strftime("%Y-%m-%d %H:%M:%S")})
    return _logged(Choice(task, picked, seconds, load=load))


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def _logged(choice: Choice) -> Choice:
    log.info("tuning: %s", choice.describe())
    last_choices[choice.task] = choice
    return choice


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to n for the block (None: unchanged), then restored."""
    before = torch.get_num_threads()
    if n is not None and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@contextlib.contextmanager
def blas_threads(n: int | None) -> Iterator[None]:
    """The thread count of the BLAS libraries loaded in this process (numpy's OpenBLAS; torch's own BLAS is
    torch_threads') set to n for the block (None: unchanged), then restored; through threadpoolctl."""
    libs = _blas_controllers() if n is not None else []
    before = [lib.get_num_threads() for lib in libs]
    for lib, count in zip(libs, before):
        if count != n:
            lib.set_num_threads(n)
    try:
        yield
    finally:
        for lib, count in zip(libs, before):
            if lib.get_num_threads() != count:
                lib.set_num_threads(count)


_BLAS: list = []


def _blas_controllers() -> list:
    """threadpoolctl's controllers of the loaded BLAS libraries, found once (finding them takes milliseconds)."""
    if not _BLAS:
        import numpy  # noqa: F401  (loads its BLAS, so that threadpoolctl sees it)
        from threadpoolctl import ThreadpoolController
        _BLAS.append(ThreadpoolController().select(user_api="blas").lib_controllers)
    return _BLAS[0]


def thread_candidates(requested: int | None = None) -> list[int]:
    """Thread counts worth timing: `requested` alone, else 1, torch's present count, the CPUs this process may use
    and the powers of two between."""
    if requested is not None:
        return [requested]
    most = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    counts = {1, most, torch.get_num_threads()}
    n = 2
    while n < most:
        counts.add(n)
        n *= 2
    return sorted(counts)
