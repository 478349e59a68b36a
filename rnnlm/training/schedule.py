"""The learning-rate schedule: linear warmup, then linear or cosine decay to a floor over the run's steps, a
constant rate, or word_language_model's "divide by 4 when validation stops improving" (plateau).

The rate of optimizer step n (1-based; s = n - 1) in a run of `total` steps, peak rate p, floor f, and
W = min(--warmup, total // 10) warmup steps (a short run warms up for a tenth of its steps, not all of them):

    s < W:   p (s + 1) / W
    else:    q = clamp((s - W) / (total - W), 0, 1)
             linear:   p (f + (1 - f)(1 - q))          cosine:  p (f + (1 - f)(1 + cos(pi q)) / 2)
             constant, plateau: p · scale (scale starts at 1 and is divided by PLATEAU_FACTOR at every
             validation that does not improve on the best; it is saved in checkpoints)

It is a pure function of (n, total, scale), so a resumed run continues it exactly. `total` is the run's length:
--schedule-steps when given, else the steps that --epochs and --max-steps allow, and under --time-budget the
smaller of that and the step the budget will end at, estimated from the measured time per step (estimate_total)
and corrected at every step, so that a budgeted run reaches the floor as the budget runs out.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULES = ("linear", "cosine", "constant", "plateau")
PLATEAU_FACTOR = 4.0
MIN_TIMED_STEPS = 20  # steps of this invocation before its own time per step is trusted


@dataclass(frozen=True)
class LRSchedule:
    peak: float
    kind: str = "linear"
    warmup: int = 0
    floor: float = 0.0  # the decay's end, as a fraction of peak

    def warmup_steps(self, total: int) -> int:
        return min(self.warmup, total // 10)

    def lr(self, step: int, total: int, scale: float = 1.0) -> float:
        """The rate of optimizer step `step` (1-based) in a run of `total` steps (see the module docstring)."""
        s, w = step - 1, self.warmup_steps(total)
        if s < w:
            return self.peak * (s + 1) / w
        if self.kind in ("constant", "plateau"):
            return self.peak * scale
        q = min(max((s - w) / max(total - w, 1), 0.0), 1.0)
        shape = 1.0 - q if self.kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * q))
        return self.peak * (self.floor + (1.0 - self.floor) * shape)


def estimate_total(step: int, seconds_left: float, seconds_per_step: float | None, planned: int) -> int:
    """The step a time-budgeted run will end at: `step` plus the steps that fit in seconds_left at
    seconds_per_step (None: not measured yet, then `planned`), never more than `planned`."""
    if seconds_per_step is None or seconds_per_step <= 0:
        return planned
    return min(planned, step + max(1, int(seconds_left / seconds_per_step)))
