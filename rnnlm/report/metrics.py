"""The report's training-run section: a run's metrics.jsonl (rnnlm.train) as curves and a summary."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rnnlm.errors import UsageError
from rnnlm.report.benchmarks import _finite, parse_json, read_text, warn
from rnnlm.report.plots import plt

def read_metrics(path: str) -> list[dict]:
    lines = read_text(path, "a metrics.jsonl file").splitlines()
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = parse_json(line)
        except json.JSONDecodeError as err:
            if n == len(lines):
                warn(f"{path}: last line {n} is truncated (a run stopped mid-write?); skipped")
                continue
            raise UsageError(f"{path}: line {n} is not valid JSON ({err.msg})") from None
        except ValueError as err:
            warn(f"{path}: line {n} skipped: {err}")
            continue
        if not isinstance(rec, dict):
            raise UsageError(f"{path}: line {n} is not a JSON object")
        records.append(rec)
    if not any(_finite(r.get("loss")) is not None or _finite(r.get("valid_ppl")) is not None for r in records):
        raise UsageError(f"{path}: no line has 'loss' or 'valid_ppl' (expected rnnlm.train's metrics.jsonl)")
    return records


def _time_of(rec: dict) -> float | None:
    for k in ("time", "elapsed", "seconds", "wall_time"):
        if _finite(rec.get(k)) is not None:
            return float(rec[k])
    return None


def metrics_plot(records: list[dict], path: Path, title: str) -> None:
    t0 = None
    times = [_time_of(r) for r in records]
    if any(t is not None and t > 1e9 for t in times):  # epoch timestamps: make them relative
        t0 = min(t for t in times if t is not None)
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), constrained_layout=True)
    for col, xkey in enumerate(("step", "time")):
        def xs(rec):
            if xkey == "step":
                return _finite(rec.get("step"))
            t = _time_of(rec)
            return None if t is None else (t - (t0 or 0.0)) / 60.0

        loss = [(xs(r), r["loss"]) for r in records if _finite(r.get("loss")) is not None and xs(r) is not None]
        vppl = [(xs(r), r["valid_ppl"]) for r in records
                if _finite(r.get("valid_ppl")) is not None and xs(r) is not None]
        tppl = [(xs(r), r["train_ppl"]) for r in records
                if _finite(r.get("train_ppl")) is not None and xs(r) is not None]
        ax = axes[0][col]
        if loss:
            ax.plot(*zip(*loss), "-", color="tab:blue", lw=1.2, label="training loss")
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no loss values", ha="center", transform=ax.transAxes)
        ax.set_ylabel("loss (nats/token)")
        ax = axes[1][col]
        if tppl:
            ax.plot(*zip(*tppl), "-", color="tab:gray", lw=1, alpha=0.7, label="training perplexity")
        if vppl:
            ax.plot(*zip(*vppl), "o-", color="tab:red", ms=4, label="validation perplexity")
        if tppl or vppl:
            ax.set_yscale("log")
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no perplexity values", ha="center", transform=ax.transAxes)
        ax.set_ylabel("perplexity")
        for row in axes:
            row[col].set_xlabel("step" if xkey == "step" else "training time (min)")
            row[col].grid(True, alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def metrics_section(path: str, out: Path) -> str:
    records = read_metrics(path)
    with np.errstate(over="ignore", invalid="ignore"):  # matplotlib's ticks for values near 1e308 overflow
        metrics_plot(records, out / "training.png", f"training run: {path}")
    losses = [r for r in records if _finite(r.get("loss")) is not None]
    valids = [r for r in records if _finite(r.get("valid_ppl")) is not None]
    lines = [f"From `{path}` ({len(records)} lines)."]
    last = records[-1]
    if _finite(last.get("step")) is not None:
        lines.append(f"- last step: {int(last['step'])}" +
                     (f", after {_time_of(last) / 60:.1f} min of training" if _time_of(last) is not None else ""))
    if losses:
        lines.append(f"- last training loss: {losses[-1]['loss']:.4f} (step {losses[-1].get('step', '?')})")
    if valids:
        best = min(valids, key=lambda r: r["valid_ppl"])
        lines.append(f"- validation perplexity: last {valids[-1]['valid_ppl']:.2f} "
                     f"(step {valids[-1].get('step', '?')}), "
                     f"best {best['valid_ppl']:.2f} (step {best.get('step', '?')})")
    rates = [r["tokens_per_s"] for r in records if _finite(r.get("tokens_per_s")) is not None]
    if rates:
        lines.append(f"- training throughput: median {sorted(rates)[len(rates) // 2]:,.0f} tokens/s")
    lines.append("\n![training curves](training.png)")
    return "\n".join(lines)

