"""Training on several processes: everything about torch.distributed that the trainer uses, in one place.

`torchrun --nproc-per-node N -m rnnlm.train ...` starts N processes with RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT set; `session()` joins them into one process group (NCCL on CUDA, Gloo on the CPU)
and the model is wrapped in DistributedDataParallel, whose all-reduce averages the gradients. Without those
variables (plain `python -m rnnlm.train`) there is no process group and every helper here is a no-op.

Rules the trainer follows through this module:
- --batch-size is global: each of the N processes takes B / N of every batch (rnnlm.data.batching's `shard`),
  so the averaged gradient, and hence --lr, mean what they mean in one process.
- One writer: checkpoints, metrics.jsonl, the progress bar and printed lines come from rank 0 (`writer`,
  `say`); the others compute the same things and keep quiet.
- Tokenize once: the first process of each machine tokenizes (or reads the cache) while the others wait, then
  they read the cache (`first_then_rest`).
- Every decision that stops a run is taken together (`agree_to_stop`, `check_finite`): all ranks stop at the same
  step. A rank that dies makes the others' next collective fail (at once when its sockets close, else after
  --dist-timeout seconds): they stop with one line, `PeerLost`.
"""
from __future__ import annotations

import contextlib
import datetime
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from rnnlm.errors import UsageError
from rnnlm.evaluation import EvalResult, evaluate_tokens
from rnnlm.training.nan_guard import NonFiniteError
from rnnlm.training.rng import seed_everything

T = TypeVar("T")

# How long the other processes wait for the first one to tokenize a corpus (a large one takes minutes).
TOKENIZE_TIMEOUT = datetime.timedelta(hours=2)


class PeerLost(RuntimeError):
    """Another process of the run stopped answering (it died, or a collective timed out)."""


def env_rank() -> int:
    """This process's rank as torchrun set it (0 without torchrun), readable before any process group exists."""
    return int(os.environ.get("RANK", "0"))


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


@dataclass
class Distributed:
    """Where this process stands in the run: rank, world size, local rank; `active` when there is a process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    control: Any = None  # a Gloo group with a long timeout, for waiting on the tokenizer

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def writer(self) -> bool:
        """Whether this process writes files and prints (rank 0)."""
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        """(rank, world size): which part of every batch and evaluation this process takes."""
        return self.rank, self.world_size

    def say(self, *args, write: Callable[..., Any] = print, **kwargs) -> None:
        """print() (or `write`, such as a progress bar's), on rank 0 only."""
        if self.writer:
            write(*args, **kwargs)

    def open_metrics(self, folder):
        """The run folder's metrics.jsonl on rank 0; elsewhere a context manager whose write() does nothing."""
        return folder.open_metrics() if self.writer else _NoMetrics()

    def device(self, device: torch.device) -> torch.device:
        """On CUDA, this process's own GPU (cuda:LOCAL_RANK); else `device`."""
        if device.type == "cuda" and self.active:
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        return device

    # -- collectives (no-ops in one process) ---------------------------------------------------------------------
    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """The model for training steps: DistributedDataParallel around it (rank 0's weights broadcast to all)."""
        if not self.active:
            return model
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def first_then_rest(self, fn: Callable[[], T]) -> T:
        """fn() on the first process of each machine (LOCAL_RANK 0), then on the others, which find what it
        cached. A UsageError on a first process is raised on every process (same message) instead of a hang."""
        if not self.active:
            return fn()
        first = self.local_rank == 0
        result, failure = None, None
        if first:
            try:
                result = fn()
            except UsageError as err:
                failure = (err.template, list(err.params))
        statuses: list[Any] = [None] * self.world_size
        self._guard(lambda: dist.all_gather_object(statuses, failure, group=self.control))
        failed = next((s for s in statuses if s is not None), None)
        if failed is not None:
            raise UsageError(failed[0], params=failed[1])
        return result if first else fn()

    def agree_to_stop(self, signal_received: bool, past_deadline: bool) -> tuple[bool, bool]:
        """(any rank got a signal, rank 0 is past the time budget), the same on every rank."""
        if not self.active:
            return signal_received, past_deadline
        flags = torch.tensor([int(signal_received), int(past_deadline and self.writer)], dtype=torch.int32,
                             device=self._collective_device())
        self._all_reduce(flags, dist.ReduceOp.MAX)
        return bool(flags[0]), bool(flags[1])

    def check_finite(self, loss: torch.Tensor, grad_norm: torch.Tensor, step: int) -> None:
        """NonFiniteError on every rank at the same step, naming the ranks whose own loss is NaN or infinite (the
        gradient norm is of the averaged gradients, the same on every rank)."""
        if not self.active:  # one process: TrainStep's device-side guard alone (no host read a step)
            return
        bad = torch.zeros(self.world_size + 1, dtype=torch.int32, device=loss.device)
        bad[self.rank] = (~torch.isfinite(loss)).int()
        bad[-1] = (~torch.isfinite(grad_norm)).int() if self.writer else 0
        self._all_reduce(bad, dist.ReduceOp.SUM)
        flags = bad.tolist()
        ranks = [r for r, flag in enumerate(flags[:-1]) if flag]
        if ranks:
            where = f"rank {ranks[0]}" if len(ranks) == 1 else "ranks " + ", ".join(map(str, ranks))
            raise NonFiniteError(f"step {step}: the loss is NaN or infinite on {where} (the gradient norm, "
                                 f"averaged over the {self.world_size} processes, is {float(grad_norm):.4g})")
        if flags[-1]:
            raise NonFiniteError(f"step {step}: the gradient norm, averaged over the {self.world_size} processes, "
                                 f"is {float(grad_norm):.4g} (every rank's loss is finite)")

    def evaluate(self, model: torch.nn.Module, tokens: torch.Tensor) -> EvalResult:
        """Exact perplexity of `tokens` (rnnlm.evaluation), each rank reading its share of the streams; the NLL
        sums and target counts are summed over the ranks in float64."""
        if not self.active:
            return evaluate_tokens(model, tokens)
        part = evaluate_tokens(model, tokens, shard=self.shard)
        nll, n = self.sum_f64([part.nll_sum, float(part.n_targets)])
        return EvalResult(perplexity=math.exp(nll / n), nll_sum=nll, n_targets=int(n))

    def seed(self, seed: int) -> None:
        """Different random streams per rank for what follows (dropout): seeded from `seed` and the rank. A
        no-op in one process, whose stream simply continues."""
        if self.active:
            seed_everything(seed + 1_000_003 * (self.rank + 1))

    def sum_f64(self, values: list[float]) -> list[float]:
        """Element-wise sums over all ranks, in float64."""
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self._collective_device())
        self._all_reduce(t, dist.ReduceOp.SUM)
        return t.tolist()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean over ranks of a tensor (a copy)."""
        if not self.active:
            return value
        t = value.detach().clone()
        self._all_reduce(t, dist.ReduceOp.SUM)
        return t / self.world_size

    def gather_to_writer(self, obj: T) -> list[T] | None:
        """Every rank's `obj` in rank order, on rank 0 (None elsewhere); [obj] in one process."""
        if not self.active:
            return [obj]
        out: list[Any] | None = [None] * self.world_size if self.writer else None
        self._guard(lambda: dist.gather_object(obj, out, dst=0))
        return out

    def broadcast_state(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers copied into every rank's `module`."""
        if not self.active:
            return
        for tensor in module.state_dict().values():
            self._guard(lambda: dist.broadcast(tensor, src=0))

    def from_writer(self, obj: T) -> T:
        """Rank 0's `obj` (any picklable value), on every rank."""
        if not self.active:
            return obj
        box = [obj]
        self._guard(lambda: dist.broadcast_object_list(box, src=0))
        return box[0]

    def _collective_device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else \
            torch.device("cpu")

    def _all_reduce(self, t: torch.Tensor, op) -> None:
        self._guard(lambda: dist.all_reduce(t, op=op))

    def _guard(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except RuntimeError as err:
            raise lost(self, err) from err


class _NoMetrics:
    """metrics.jsonl as the ranks other than 0 see it: nothing is written."""

    def write(self, record: dict[str, Any]) -> None:
        pass

    def __enter__(self) -> _NoMetrics:
        return self

    def __exit__(self, *exc) -> None:
        pass


def lost(d: Distributed, err: BaseException) -> PeerLost:
    """PeerLost for rank d.rank, with the first line of what torch.distributed said."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    text = re.sub(r"^\[[^\]]*\]\s*", "", text).split(". ")[0]   # without gloo's "[file.cc:537]", one sentence
    return PeerLost(f"rank {d.rank} of {d.world_size}: another process stopped answering ({text[:160]}); "
                    f"stopping. Checkpoints already written are intact")


def is_collective_failure(err: BaseException) -> bool:
    """Whether `err` comes from a collective whose peers are gone (DDP's all-reduce raises it inside backward)."""
    if isinstance(err, PeerLost) or isinstance(err, getattr(dist, "DistError", ())):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(
        s in text for s in ("Connection closed by peer", "Connection reset by peer", "Timed out", "timed out",
                            "[gloo", "NCCL", "ProcessGroup", "Broken pipe"))


@contextlib.contextmanager
def session(device: torch.device, timeout_s: float = 300.0) -> Iterator[Distributed]:
    """The process group from torchrun's environment for the block (one process: Distributed() and nothing else),
    NCCL when the run is on CUDA `device`, else Gloo. Joins an existing group instead when the caller made one.
    A collective failure becomes PeerLost."""
    world = env_world_size()
    if world <= 1:
        yield Distributed()
        return
    owner = not dist.is_initialized()
    timeout = datetime.timedelta(seconds=timeout_s)
    if owner:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timeout)
    d = Distributed(rank=dist.get_rank(), world_size=dist.get_world_size(),
                    local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    d.control = dist.new_group(backend="gloo", timeout=max(timeout, TOKENIZE_TIMEOUT))
    failed = False
    try:
        yield d
    except PeerLost:
        failed = True
        raise
    except RuntimeError as err:
        if not is_collective_failure(err):
            raise
        failed = True
        raise lost(d, err) from err
    finally:
        if owner and not failed:
            dist.destroy_process_group()


def check_world_size(payload: dict[str, Any], d: Distributed, resume: str) -> None:
    """UsageError (one line) when the checkpoint was saved by another number of processes than this run has."""
    saved = int(payload.get("world_size", 1))
    if saved != d.world_size:
        how = "python -m rnnlm.train" if saved == 1 else f"torchrun with {saved} processes in all"
        raise UsageError(f"cannot resume {resume}: it was saved by {saved} process(es) and this run has "
                         f"{d.world_size}; resume it with {how} (the data position and random states are per "
                         f"process)")
