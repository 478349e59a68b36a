"""The report's throughput plots: tokens/s against batch size and against hidden size, per backend."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from rnnlm.report.benchmarks import (COLORS, PLOT_AXES, SIZE_KEYS, SIZE_LETTERS, SIZE_NAMES, Row,  # noqa: E402
                                     _rate, _sizes, tokens_per_s)


@dataclass
class Sweep:
    """One panel of the throughput plot: tokens/s against `axis`, per backend."""

    axis: str  # "batch_size" or "hidden_size"
    points: dict[str, list[tuple[int, float, Row]]]  # backend -> (size on the axis, tokens/s, row), by size
    fixed: dict[str, int]  # the other sizes that every point shares
    also_varying: list[str]  # the other sizes that change from point to point (empty for a true sweep)

    @property
    def varies_together(self) -> bool:
        return bool(self.also_varying)


def sweep_points(rows: list[Row], axis: str) -> Sweep:
    """The points to plot against `axis`: a one-dimension sweep (every other size fixed) where the group has one.

    Rows are grouped by all their other sizes (and params); the group with the most distinct values of `axis`
    is the sweep, e.g. B 16/64/256 at H 512 with T, E, L, V alike. When no two shapes differ in `axis` alone
    (small/default/large grow B and H together), every row is a point and `also_varying` names what else
    changes along the axis.
    """
    others = [k for k in SIZE_KEYS if k != axis]
    measured = [(r, tokens_per_s(r)) for r in rows if r.backend in COLORS and r.info.get(axis) is not None]
    measured = [(r, rate) for r, rate in measured if rate]
    by_other_sizes: dict[tuple, list[tuple[Row, float]]] = {}
    for r, rate in measured:
        by_other_sizes.setdefault((r.variant, *(r.info.get(k) for k in others)), []).append((r, rate))

    def distinct_sizes(pts: list[tuple[Row, float]]) -> int:
        return len({r.info[axis] for r, _ in pts})

    best = max(by_other_sizes.values(), key=lambda pts: (distinct_sizes(pts), len(pts)), default=[])
    chosen = best if distinct_sizes(best) >= 2 else measured
    values = {k: {r.info.get(k) for r, _ in chosen} for k in others}
    return Sweep(axis=axis,
                 points={b: sorted(((r.info[axis], rate, r) for r, rate in chosen if r.backend == b),
                                   key=lambda p: p[0]) for b in COLORS},
                 fixed={k: next(iter(v)) for k, v in values.items() if len(v) == 1 and None not in v},
                 also_varying=[k for k, v in values.items() if len(v) > 1])


def sweep_title(sweep: Sweep) -> str:
    """What the panel holds fixed, e.g. "hidden size 512 fixed (and T 20, E 256, L 2, V 10000)"."""
    xs = sorted({x for pts in sweep.points.values() for x, _, _ in pts})
    letter = SIZE_LETTERS[sweep.axis]
    if len(xs) < 2:
        return f"a single {SIZE_NAMES[sweep.axis]} ({letter} {xs[0]})" if xs else f"no {SIZE_NAMES[sweep.axis]}"
    if sweep.varies_together:
        together = [SIZE_LETTERS[k] for k in SIZE_KEYS if k == sweep.axis or k in sweep.also_varying]
        return (f"{', '.join(together[:-1])} and {together[-1]} vary together (no two shapes differ in "
                f"{SIZE_NAMES[sweep.axis]} alone)")
    held = next((k for k in PLOT_AXES if k != sweep.axis), None)
    rest = _sizes({k: v for k, v in sweep.fixed.items() if k != held})
    if held in sweep.fixed:
        return f"{SIZE_NAMES[held]} {sweep.fixed[held]} fixed" + (f" (and {rest})" if rest != "–" else "")
    return f"{rest} fixed" if rest != "–" else "other sizes unknown"


def _log_tokens_axis(ax, rates: list[float]) -> None:
    """A log tokens/s axis spanning at least a factor of 10 (else a 10% difference would fill the panel), with
    ticks at 1, 2 and 5 per decade labelled like the tables (20k, 1.5M)."""
    ax.set_yscale("log")
    if rates:
        low, high = min(rates) / 1.3, max(rates) * 1.8  # more room above: the point labels
        widen = math.sqrt(max(10.0 * low / high, 1.0))
        ax.set_ylim(low / widen, high * widen)
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: _rate(value)))
    ax.yaxis.set_minor_formatter(NullFormatter())


def throughput_plot(group: str, sweeps: list[Sweep], path: Path, interp: bool) -> bool:
    """One panel per sweep (tokens/s against batch size, against hidden size), one series per backend; False if
    there is no point to plot."""
    if not any(pts for s in sweeps for pts in s.points.values()):
        return False
    fig, axes = plt.subplots(1, len(sweeps), figsize=(5.5 * len(sweeps), 4.4), constrained_layout=True,
                             squeeze=False)
    for ax, sweep in zip(axes[0], sweeps):
        missing = []
        for backend, color in COLORS.items():
            series = sweep.points[backend]
            if not series:
                missing.append(backend)
                continue
            label = backend + (" (interpreter)" if backend == "triton" and interp else "")
            ax.plot([p[0] for p in series], [p[1] for p in series], "o-", color=color, label=label, ms=6)
            for x, y, r in series:
                # a sweep's other sizes are in the title; otherwise each point names what else changed
                note = r.shape + "".join(f"\n{SIZE_LETTERS[k]}={r.info.get(k)}" for k in sweep.also_varying
                                         if k in PLOT_AXES)
                ax.annotate(note, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7, color=color)
        if missing:
            ax.text(0.02, 0.02, f"no {' or '.join(missing)} rows at these sizes", transform=ax.transAxes,
                    fontsize=7, color="dimgray")
        ax.set_xscale("log", base=2)
        xs = sorted({x for pts in sweep.points.values() for x, _, _ in pts})
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.minorticks_off()
        ax.margins(x=0.2)
        _log_tokens_axis(ax, [y for pts in sweep.points.values() for _, y, _ in pts])
        ax.set_xlabel(f"{SIZE_NAMES[sweep.axis]} {SIZE_LETTERS[sweep.axis]}")
        ax.set_ylabel("tokens/s")
        ax.set_title(f"against {SIZE_NAMES[sweep.axis]}\n{sweep_title(sweep)}", fontsize=9,
                     color="firebrick" if sweep.varies_together else "black")
        ax.grid(True, which="both", alpha=0.3)
        if len(missing) < len(COLORS):
            ax.legend(fontsize=8)
    title = f"{group}: throughput"
    if interp:
        title += "  (triton: interpreter timings, not kernel speed)"
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True

