"""jieba on several processes: how many, and a pool of forked workers that fails fast.

multiprocessing.Pool waits forever for the task of a worker that died (the out-of-memory killer's SIGKILL on a
large corpus); concurrent.futures.ProcessPoolExecutor notices the dead process and fails every pending task at
once, so a killed worker ends the load within seconds, with one line naming it.
"""
from __future__ import annotations

import os
import signal
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from rnnlm.checks import positive_int
from rnnlm.errors import UsageError

WORKERS_ENV = "RNNLM_TOKENIZE_WORKERS"  # processes for jieba (default: every core for files over 1 MiB)


def resolve_workers(workers: int | None, size: int, parallel_min_bytes: int) -> int:
    """Processes for jieba: `workers`, else $RNNLM_TOKENIZE_WORKERS, else every core for files of
    parallel_min_bytes or more, else 1."""
    if workers is not None:
        return positive_int("workers", workers)
    env = os.environ.get(WORKERS_ENV, "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise UsageError(f"{WORKERS_ENV} must be a positive integer, got {env!r}")
        return int(env)
    if size < parallel_min_bytes:
        return 1
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _worker_init() -> None:
    # Ctrl-C goes to the whole process group: the parent handles it (and terminates the pool).
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def tokenize_in_pool(ctx, n_workers: int, chunks, task, hmm: bool, consume) -> None:
    """Runs task(texts, hmm) for each (texts, ends) of `chunks` on n_workers forked processes, calling
    consume(result, ends) in order. A worker that dies fails every pending task at once: UsageError naming it."""
    pool = ProcessPoolExecutor(n_workers, mp_context=ctx, initializer=_worker_init)
    workers: dict[int, Any] = {}               # pid -> Process, seen as the pool starts them
    done = False
    try:
        pending: deque = deque()               # bounded: the reader stays a few chunks ahead, no more
        for texts, ends in chunks:
            pending.append((pool.submit(task, texts, hmm), ends))
            workers.update(getattr(pool, "_processes", None) or {})
            if len(pending) >= 2 * n_workers:
                future, e = pending.popleft()
                consume(future.result(), e)
        while pending:
            future, e = pending.popleft()
            consume(future.result(), e)
        done = True
    except BrokenProcessPool:
        pool.shutdown(wait=True)               # the pool has terminated the other workers: exit codes are final
        raise UsageError(_dead_worker(workers, n_workers)) from None
    finally:
        if not done:                           # an error or Ctrl-C: stop the workers now, not after their tasks
            pool.shutdown(wait=False, cancel_futures=True)
            for proc in workers.values():
                if proc.exitcode is None:
                    proc.terminate()
        pool.shutdown(wait=True)


def _dead_worker(workers: dict[int, Any], n_workers: int) -> str:
    """One line naming the worker that died first (the others were stopped with SIGTERM after it)."""
    who, how = "a tokenizing worker", "died"
    for k, (pid, proc) in enumerate(sorted(workers.items()), 1):
        code = proc.exitcode
        if code is not None and code != -signal.SIGTERM:
            who = f"tokenizing worker {k} of {n_workers} (pid {pid})"
            how = f"exited with code {code}" if code >= 0 else f"was killed by signal {-code}"
            if code < 0 and -code in signal.valid_signals():
                how = f"was killed by {signal.Signals(-code).name}"
            break
    return (f"{who} {how}; the out-of-memory killer does this when the machine runs out of memory: tokenize with "
            f"fewer processes ({WORKERS_ENV}=1 uses one; now {n_workers}) or free memory")
