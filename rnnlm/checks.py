"""The checks of single values that every part of rnnlm shares; each raises UsageError (one line).

`name` is what the message calls the value. A Python identifier ("seq_len") is a parameter, which a CLI shows
as its flag (--seq-len; see rnnlm.errors); words ("batch size") are printed as they are.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Sequence, TypeVar

from rnnlm.errors import UsageError

T = TypeVar("T")


def _fail(name: str, message: str) -> UsageError:
    if name.isidentifier():
        return UsageError(f"{{{name}}} {message}", params=(name,))
    return UsageError(f"{name} {message}")


def positive_int(name: str, value: Any) -> int:
    """value as an int; UsageError unless it is an integer (not a bool) >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise _fail(name, f"must be a positive integer, got {value!r}")
    return int(value)


def positive_number(name: str, value: Any, *, allow_none: bool = False) -> float | None:
    """value as a float; UsageError unless it is a finite number > 0 (None allowed when allow_none)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise _fail(name, f"must be a positive number, got {value!r}")
    return float(value)


def one_of(name: str, value: T, choices: Sequence[T]) -> T:
    """value itself; UsageError unless it is one of `choices`."""
    if value not in choices:
        raise _fail(name, f"must be one of {', '.join(map(str, choices))}, got {value!r}")
    return value


SEED_RANGE = (-(1 << 63), (1 << 64) - 1)  # what torch.manual_seed accepts


def seed(name: str, value: Any) -> int:
    """value as an int; UsageError unless it is an integer torch can seed with (64 bits)."""
    low, high = SEED_RANGE
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
        raise _fail(name, f"must be an integer from {low} to {high} (64 bits), got {value!r}")
    return int(value)


def non_empty_path(name: str, value: Any) -> None:
    """UsageError when a path is given as the empty string (which would mean the current folder)."""
    if isinstance(value, str) and not value.strip():
        raise _fail(name, "is empty: give a path")
