"""Batching a token stream as tensor views: (x, y) windows of (B, T) token ids, each y shifted by one token.

StreamBatches lays the tokens out as B contiguous streams (B, S) and yields consecutive windows (the trainer
carries the hidden state from one to the next); WindowBatches draws random windows from an unfold view (B, T+1),
a fresh permutation per epoch from a torch.Generator. Both save and restore their position (state_dict), so a
resumed run continues with the very next batch.

shard=(rank, world) (training on `world` processes, rnnlm.training.distributed): batch_size stays the global
batch and this process yields rows rank*B/world .. (rank+1)*B/world of each global batch: its own contiguous
streams (StreamBatches), or its share of the windows every process draws from the same seeded permutation
(WindowBatches). The union over ranks is exactly the batch one process would yield.
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping

import torch

from rnnlm.checks import positive_int
from rnnlm.errors import UsageError


def _window_tokens(tokens: Any, seq_len: int, name: str) -> torch.Tensor:
    """tokens as a contiguous 1-D int64 tensor, with at least seq_len + 1 of them (one window and its targets)."""
    t = torch.as_tensor(tokens)
    if t.dim() != 1 or t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise ValueError(f"tokens must be a 1-D integer tensor, got {tuple(t.shape)} {t.dtype}")
    if t.numel() < seq_len + 1:
        raise UsageError(f"the {name} has {t.numel()} tokens, fewer than seq_len + 1 = {seq_len + 1}: "
                         f"use a larger corpus or a smaller {{seq_len}}", params=("seq_len",))
    return t.to(torch.int64).contiguous()


def _shard_rows(batch_size: int, shard: tuple[int, int]) -> slice:
    """The rows of a global batch that process `rank` of `world` takes; UsageError unless world divides B."""
    rank, world = shard
    if batch_size % world:
        raise UsageError(f"{{batch_size}} {batch_size} is the global batch and must be a multiple of the {world} "
                         f"processes", params=("batch_size",))
    per = batch_size // world
    return slice(rank * per, (rank + 1) * per)


def max_batch_size(n_tokens: int, seq_len: int) -> int:
    """The largest batch size StreamBatches accepts for n_tokens tokens and windows of seq_len."""
    return max(0, (n_tokens - 1) // seq_len)


class StreamBatches:
    """The tokens as B contiguous streams (B, S), S = (N-1) // B; window i is x = streams[:, iT:(i+1)T] and
    y = the same shifted by one token. Windows follow each other (carry the hidden state, detached); one
    epoch yields every token of the first B*S+1 once as a target (the last window may be shorter than T
    unless drop_last). `position` = windows handed out in this epoch: take state_dict() after training
    on the last window yielded."""
    carry_hidden = True

    def __init__(self, tokens, batch_size: int, seq_len: int, *, name: str = "corpus", drop_last: bool = False,
                 shard: tuple[int, int] = (0, 1)):
        self.batch_size = positive_int("batch size", batch_size)
        self.seq_len = positive_int("seq_len", seq_len)
        tokens = _window_tokens(tokens, self.seq_len, name)
        n, b, t = tokens.numel(), self.batch_size, self.seq_len
        if b * t + 1 > n:
            raise UsageError(f"batch size {b} is too large for the {name}: {n} tokens make at most "
                             f"{max_batch_size(n, t)} streams of seq_len {t}; use {{batch_size}} "
                             f"{max_batch_size(n, t)} or less", params=("batch_size",))
        s = (n - 1) // b
        self.stream_len = s
        rows = _shard_rows(b, shard)
        self.x = tokens[: b * s].view(b, s)[rows]          # (B, S) view (B / world rows of it on a shard)
        self.y = tokens[1: b * s + 1].view(b, s)[rows]     # the same, shifted by one token
        self.num_windows = s // t if drop_last else -(-s // t)
        self.position = 0

    def __len__(self) -> int:
        return self.num_windows

    @property
    def tokens_per_epoch(self) -> int:
        """Target tokens yielded in one epoch."""
        return self.batch_size * min(self.stream_len, self.num_windows * self.seq_len)

    def window(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) int64 (B, T) (T smaller for a short last window), contiguous."""
        if not 0 <= i < self.num_windows:
            raise IndexError(f"window {i} out of range 0..{self.num_windows - 1}")
        sl = slice(i * self.seq_len, (i + 1) * self.seq_len)
        return self.x[:, sl].contiguous(), self.y[:, sl].contiguous()

    def windows(self, start: int = 0) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """(index, x, y) from window `start` to the end of the epoch; leaves `position` alone."""
        for i in range(start, self.num_windows):
            x, y = self.window(i)
            yield i, x, y

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.position >= self.num_windows:       # the previous epoch is done
            self.position = 0
        while self.position < self.num_windows:
            i = self.position
            self.position = i + 1
            yield self.window(i)

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position, "num_windows": self.num_windows,
                "batch_size": self.batch_size, "seq_len": self.seq_len}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.position = _saved_position(state, {"num_windows": self.num_windows, "batch_size": self.batch_size,
                                                "seq_len": self.seq_len})


def _saved_position(state: Mapping[str, Any], mine: Mapping[str, int]) -> int:
    """The position saved in `state`, checked against this batcher's layout `mine` (its first entry is the number
    of batches in an epoch)."""
    diffs = [f"{k} {state[k]} vs {v}" for k, v in mine.items() if k in state and state[k] != v]
    if diffs:
        raise UsageError("the saved data position belongs to another batch layout (checkpoint vs now: "
                         + ", ".join(diffs) + ")")
    pos, limit = state.get("position"), next(iter(mine.values()))
    if isinstance(pos, bool) or not isinstance(pos, int) or not 0 <= pos <= limit:
        raise UsageError(f"the saved data position {pos!r} is outside 0..{limit}")
    return pos


class WindowBatches:
    """Random windows, as in the tutorial: each epoch a permutation of all N - T window starts (from
    `generator`), B windows per batch, each batch from a zero hidden state. len = (N - T) // B."""
    carry_hidden = False

    def __init__(self, tokens, batch_size: int, seq_len: int, generator: torch.Generator | None = None, *,
                 name: str = "corpus", shard: tuple[int, int] = (0, 1)):
        self.batch_size = positive_int("batch size", batch_size)
        self.seq_len = positive_int("seq_len", seq_len)
        tokens = _window_tokens(tokens, self.seq_len, name)
        n, b, t = tokens.numel(), self.batch_size, self.seq_len
        self.num_starts = n - t
        if self.num_starts < b:
            raise UsageError(f"batch size {b} is too large for the {name}: {n} tokens make {self.num_starts} "
                             f"windows of seq_len {t}; use {{batch_size}} {self.num_starts} or less",
                             params=("batch_size",))
        self.generator = generator if generator is not None else torch.Generator()
        self._rows = _shard_rows(b, shard)
        self._windows = tokens.unfold(0, t + 1, 1)   # (N - T, T + 1) view
        self.num_batches = self.num_starts // b
        self.position = 0
        self._perm: torch.Tensor | None = None
        self._epoch_state: torch.Tensor | None = None  # generator state before this epoch's permutation

    def __len__(self) -> int:
        return self.num_batches

    def _start_epoch(self) -> None:
        self._epoch_state = self.generator.get_state()
        self._perm = torch.randperm(self.num_starts, generator=self.generator)
        self.position = 0

    def batch(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._perm is None:
            self._start_epoch()
        if not 0 <= i < self.num_batches:
            raise IndexError(f"batch {i} out of range 0..{self.num_batches - 1}")
        starts = self._perm[i * self.batch_size:(i + 1) * self.batch_size][self._rows]
        w = self._windows[starts]   # (B, T + 1) copy (B / world rows on a shard)
        return w[:, :-1].contiguous(), w[:, 1:].contiguous()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._perm is None or self.position >= self.num_batches:
            self._start_epoch()
        while self.position < self.num_batches:
            i = self.position
            self.position = i + 1
            yield self.batch(i)

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position, "num_batches": self.num_batches, "batch_size": self.batch_size,
                "seq_len": self.seq_len, "epoch_generator_state": self._epoch_state,
                "generator_state": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pos = _saved_position(state, {"num_batches": self.num_batches, "batch_size": self.batch_size,
                                      "seq_len": self.seq_len})
        epoch_state = state.get("epoch_generator_state")
        if epoch_state is not None:
            self.generator.set_state(epoch_state)
            self._start_epoch()                      # the same permutation as before
        else:
            self._perm = self._epoch_state = None
        if state.get("generator_state") is not None:
            self.generator.set_state(state["generator_state"])
        self.position = pos


BATCHINGS = ("windows", "stream")


def make_batches(batching: str, tokens, batch_size: int, seq_len: int, seed: int, *, name: str = "corpus",
                 shard: tuple[int, int] = (0, 1)):
    """WindowBatches (random windows, their order seeded) or StreamBatches, by name (one of BATCHINGS); shard:
    (rank, world size) of a run on several processes (see the module docstring)."""
    if batching == "stream":
        return StreamBatches(tokens, batch_size, seq_len, name=name, shard=shard)
    return WindowBatches(tokens, batch_size, seq_len, torch.Generator().manual_seed(seed), name=name, shard=shard)
