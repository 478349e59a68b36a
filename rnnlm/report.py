"""The triton-vs-cuDNN report: speed tables and plots from pytest-benchmark JSON, parity beside speed, the
compile report, and a training run's curves.

    python -m rnnlm.report BENCH.json [--out DIR]          # DIR/report.md + DIR/throughput_*.png
    python -m rnnlm.report --metrics RUN/metrics.jsonl     # DIR/report.md + DIR/training.png
    (both at once put both in one report; DIR defaults to the folder of the first input)

What the report expects from the benchmarks (pytest-benchmark's --benchmark-json, format of
pytest-benchmark 4/5): {"machine_info", "commit_info", "benchmarks": [...], "datetime", "version"}, each
benchmark {"group", "name", "fullname", "params", "stats": {"median", "mean", "min", "max", "stddev",
"rounds", ...}, "extra_info"}. In extra_info (benchmarks/conftest.py's run_bench writes all of these):

    backend              "cudnn" (the torch op: cuDNN on a GPU, ATen on the CPU) or "triton"; "torch" and
                         "aten" are read as "cudnn". Falls back to params["backend"]. Rows with neither are
                         listed in a table of their own.
    shape                a label ("small", "default", "large"); falls back to params["shape"]. The cudnn and
                         triton rows of a group are paired by shape (and by any other params).
    batch_size, seq_len, embed_size, hidden_size, num_layers, vocab_size
                         the sizes: the plot's axes (batch_size, hidden_size) and the parity check's shape.
                         The plot shows tokens/s against B among rows that share every other size (and against
                         H likewise), e.g. the recurrence forward's B 16/64/256 at H 512; a group without such
                         rows (small/default/large grow B and H together) is plotted as is, titled as such.
    tokens_per_s         throughput (from the median round); also shown when present: gb_per_s, tflops_per_s.
                         If absent, tokens_per_round / median is used.
    precision, device, torch, triton, triton_interpreted (bool), threads
                         printed in the header; triton_interpreted (or a triton row on device "cpu") puts the
                         interpreter warning at the top of the report.
    parity (optional)    {"forward_max_abs", "forward_rel", "grad_max_abs", "grad_rel"} of triton against
                         nn.RNN in fp64; when absent the report computes it (kernels.rnn.rnn vs torch.nn.RNN,
                         fp64, for every recurrence shape in the JSON; in the interpreter with batch and
                         sequence length capped, which the table says).

Times in the tables are the median round (the rates are computed from it too). Relative errors are
‖triton − torch‖ / ‖torch‖ per tensor, the largest over the outputs (output, h_n) and over the gradients
(input, h0, every weight and bias); tolerance 1e-12 (fp64).

metrics.jsonl (rnnlm.train): one JSON object per line with "step", "time" (seconds of training, cumulative
across resumes), "loss" (mean training loss since the previous line), "train_ppl", "tokens_per_s", and on
evaluation lines "valid_ppl". A truncated last line (a run killed mid-write) is skipped with a message.

Bad input: a missing file or invalid JSON is one line and exit code 2. A JSON that isn't pytest-benchmark's,
or has no triton or no cudnn rows, gets a message on stderr naming what is missing, and the report is still
written for what is there (exit 1 when there was no benchmark at all, else 0).
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from rnnlm.config import build_parser, from_namespace, option
from rnnlm.errors import UsageError, run_cli

PROG = "python -m rnnlm.report"
BACKEND_ALIASES = {"cudnn": "cudnn", "torch": "cudnn", "aten": "cudnn", "triton": "triton"}
SIZE_KEYS = ("batch_size", "seq_len", "embed_size", "hidden_size", "num_layers", "vocab_size")
PLOT_AXES = ("batch_size", "hidden_size")
SIZE_NAMES = {"batch_size": "batch size", "seq_len": "sequence length", "embed_size": "embedding size",
              "hidden_size": "hidden size", "num_layers": "layers", "vocab_size": "vocabulary size"}
SIZE_LETTERS = {"batch_size": "B", "seq_len": "T", "embed_size": "E", "hidden_size": "H", "num_layers": "L",
                "vocab_size": "V"}
PARITY_TOL_FP64 = 1e-12
COLORS = {"cudnn": "tab:blue", "triton": "tab:orange"}


@dataclass
class ReportConfig:
    """Options of `python -m rnnlm.report` (the positional BENCH.json is `bench`)."""

    bench: str | None = None
    metrics: str | None = option(None, help="a training run's metrics.jsonl: plot loss and validation "
                                              "perplexity against steps and time", metavar="FILE")
    out: str | None = option(None, help="output folder (default: the folder of BENCH.json, else of "
                                          "--metrics)", metavar="DIR")
    parity: bool = option(True, help="compute triton-vs-nn.RNN fp64 parity for each recurrence shape "
                                     "(when the JSON doesn't carry it)")
    parity_max_batch: int = option(16, help="in Triton's interpreter, check parity at most at this batch size",
                                   metavar="B")
    parity_max_steps: int = option(10, help="in Triton's interpreter, check parity at most at this sequence "
                                            "length", metavar="T")
    compile: bool = option(True, help="include the sm_80/sm_90 compile report (kernels.compile_report; "
                                      "cached, compiles when the kernels changed)")
    compile_json: str | None = option(None, help="use this compile_report.json instead of compiling",
                                      metavar="FILE")

    def validate(self) -> None:
        if self.bench is None and self.metrics is None:
            raise UsageError("nothing to report: give BENCH.json (pytest --benchmark-json) and/or --metrics FILE")
        for name in ("parity_max_batch", "parity_max_steps"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")


def warn(msg: str) -> None:
    print(f"{PROG}: {msg}", file=sys.stderr)


# ------------------------------------------------------------------------------------------------- inputs
def _read_json(path: str) -> Any:
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{path}: no such file")
    if p.is_dir():
        raise UsageError(f"{path}: is a directory, expected pytest-benchmark JSON (--benchmark-json)")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: cannot read: {err}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"{path}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from None


@dataclass
class Row:
    """One benchmark of pytest-benchmark's JSON, normalised."""

    group: str
    name: str
    backend: str | None
    shape: str
    variant: str  # other params, e.g. "num_samples=16"
    median: float
    mean: float
    rounds: int
    info: dict


def _finite(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def parse_benchmarks(data: Any, source: str) -> tuple[list[Row], list[str], dict]:
    """(rows, problems, meta) from pytest-benchmark JSON; problems name what is missing."""
    problems: list[str] = []
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        keys = ", ".join(sorted(data)[:8]) if isinstance(data, dict) else type(data).__name__
        problems.append(f"{source} is not pytest-benchmark JSON (pytest --benchmark-json=FILE): no 'benchmarks' "
                        f"list (found: {keys or 'an empty object'})")
        return [], problems, {}
    missing_top = [k for k in ("machine_info", "datetime", "version") if k not in data]
    if missing_top:
        problems.append(f"{source}: pytest-benchmark keys missing: {', '.join(missing_top)} (reporting anyway)")
    rows: list[Row] = []
    bad = 0
    for b in data["benchmarks"]:
        stats = b.get("stats") if isinstance(b, dict) else None
        if not isinstance(stats, dict) or _finite(stats.get("median", stats.get("mean"))) is None:
            bad += 1
            continue
        info = b.get("extra_info") if isinstance(b.get("extra_info"), dict) else {}
        params = b.get("params") if isinstance(b.get("params"), dict) else {}
        backend = info.get("backend", params.get("backend"))
        backend = BACKEND_ALIASES.get(str(backend).lower()) if backend is not None else None
        shape = info.get("shape", params.get("shape"))
        name = str(b.get("name", "?"))
        variant = ", ".join(f"{k}={v}" for k, v in sorted(params.items())
                            if k not in ("backend", "shape", "model_case") and not isinstance(v, (dict, list)))
        group = b.get("group") or re.sub(r"\[.*\]$", "", name)
        median = _finite(stats.get("median")) or _finite(stats.get("mean"))
        rows.append(Row(group=str(group), name=name, backend=backend, shape=str(shape) if shape is not None else "-",
                        variant=variant, median=median, mean=_finite(stats.get("mean")) or median,
                        rounds=int(stats.get("rounds") or 0), info=info))
    if bad:
        problems.append(f"{source}: {bad} benchmark(s) without stats (median/mean) skipped")
    if not rows:
        problems.append(f"{source}: no benchmarks with timings")
    else:
        for backend in ("triton", "cudnn"):
            if not any(r.backend == backend for r in rows):
                problems.append(f"{source}: no {backend} rows (no benchmark has extra_info['backend'] or "
                                f"params['backend'] == '{backend}'): the {backend} columns are empty")
    meta = {k: data.get(k) for k in ("machine_info", "commit_info", "datetime", "version")}
    return rows, problems, meta


def tokens_per_s(r: Row) -> float | None:
    rate = _finite(r.info.get("tokens_per_s"))
    if rate is None and _finite(r.info.get("tokens_per_round")) and r.median:
        rate = r.info["tokens_per_round"] / r.median
    return rate


def interpreted(rows: list[Row]) -> bool:
    triton_rows = [r for r in rows if r.backend == "triton"]
    return any(r.info.get("triton_interpreted") for r in rows) or \
        (bool(triton_rows) and all(str(r.info.get("device", "cpu")).lower() == "cpu" for r in triton_rows))


# ------------------------------------------------------------------------------------------------ tables
def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds >= 1:
        return f"{seconds:.3g} s"
    return f"{seconds * 1e3:.3g} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.3g} µs"


def _rate(x: float | None) -> str:
    if x is None:
        return "–"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def _sizes(info: dict) -> str:
    b, t, h = info.get("batch_size"), info.get("seq_len"), info.get("hidden_size")
    parts = []
    if b is not None:
        parts.append(f"B {b}")
    if t is not None:
        parts.append(f"T {t}")
    if info.get("embed_size") is not None:
        parts.append(f"E {info['embed_size']}")
    if h is not None:
        parts.append(f"H {h}")
    if info.get("num_layers") is not None:
        parts.append(f"L {info['num_layers']}")
    if info.get("vocab_size") is not None:
        parts.append(f"V {info['vocab_size']}")
    return " ".join(parts) or "–"


def group_table(rows: list[Row]) -> tuple[str, list[str]]:
    """Markdown table of one group: per shape (and variant) cudnn vs triton; plus notes on missing sides."""
    keys: list[tuple[str, str]] = []
    by: dict[tuple[str, str], dict[str, Row]] = {}
    for r in rows:
        k = (r.shape, r.variant)
        if k not in by:
            keys.append(k)
            by[k] = {}
        by[k][r.backend] = r
    extra_units = [u for u in ("gb_per_s", "tflops_per_s") if any(_finite(r.info.get(u)) for r in rows)]
    head = ["shape", "sizes", "cudnn (median)", "triton (median)", "triton speed-up", "cudnn tokens/s",
            "triton tokens/s"]
    unit_names = {"gb_per_s": "GB/s", "tflops_per_s": "TFLOP/s"}
    for u in extra_units:
        head += [f"cudnn {unit_names[u]}", f"triton {unit_names[u]}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k in keys:
        c, t = by[k].get("cudnn"), by[k].get("triton")
        any_row = c or t
        label = k[0] + (f" ({k[1]})" if k[1] else "")
        speedup = f"{c.median / t.median:.3g}×" if c and t and t.median else "–"
        cells = [label, _sizes(any_row.info), _ms(c.median if c else None) + (f" ({c.rounds} rounds)" if c else ""),
                 _ms(t.median if t else None) + (f" ({t.rounds} rounds)" if t else ""), speedup,
                 _rate(tokens_per_s(c)) if c else "–", _rate(tokens_per_s(t)) if t else "–"]
        for u in extra_units:
            cells += [f"{c.info[u]:.3g}" if c and _finite(c.info.get(u)) is not None else "–",
                      f"{t.info[u]:.3g}" if t and _finite(t.info.get(u)) is not None else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    notes = []
    for backend in ("cudnn", "triton"):
        if not any(r.backend == backend for r in rows):
            notes.append(f"no {backend} rows in this group")
    return "\n".join(lines), notes


def other_table(rows: list[Row]) -> str:
    lines = ["| group | benchmark | median | rounds | tokens/s |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.group} | {r.name} | {_ms(r.median)} | {r.rounds} | {_rate(tokens_per_s(r))} |")
    return "\n".join(lines)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "group"


# ------------------------------------------------------------------------------------------------- plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

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
    plt = _pyplot()
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


# ------------------------------------------------------------------------------------------------ parity
def parity_shapes(rows: list[Row]) -> list[dict]:
    """Distinct recurrence shapes in the JSON (label and sizes), in order of appearance."""
    seen: dict[tuple, dict] = {}
    for r in rows:
        i = r.info
        if not all(isinstance(i.get(k), int) for k in ("batch_size", "seq_len", "hidden_size")):
            continue
        sizes = {"shape": r.shape, "batch_size": i["batch_size"], "seq_len": i["seq_len"],
                 "input_size": i.get("embed_size") or i["hidden_size"], "hidden_size": i["hidden_size"],
                 "num_layers": i.get("num_layers") or 1}
        key = tuple(sizes.values())
        if key not in seen:
            seen[key] = sizes
        if r.backend == "triton" and isinstance(i.get("parity"), dict):
            seen[key].setdefault("recorded", i["parity"])
    return list(seen.values())


def rnn_parity(batch_size: int, seq_len: int, input_size: int, hidden_size: int, num_layers: int,
               seed: int = 0) -> dict:
    """kernels.rnn.rnn against torch.nn.RNN in fp64: forward (output, h_n) and gradients (input, h0, weights)."""
    import torch

    from kernels.rnn import rnn  # lazy: only this path of the report imports triton

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    ref = torch.nn.RNN(input_size, hidden_size, num_layers, batch_first=True).double()
    x = torch.randn(batch_size, seq_len, input_size, dtype=torch.float64, generator=g, requires_grad=True)
    h0 = torch.randn(num_layers, batch_size, hidden_size, dtype=torch.float64, generator=g, requires_grad=True)
    g_out = torch.randn(batch_size, seq_len, hidden_size, dtype=torch.float64, generator=g)
    g_h = torch.randn(num_layers, batch_size, hidden_size, dtype=torch.float64, generator=g)
    weights = list(ref._flat_weights)
    out_r, hn_r = ref(x, h0)
    grads_r = torch.autograd.grad((out_r, hn_r), [x, h0, *weights], (g_out, g_h))
    out_t, hn_t = rnn(x, h0, weights, num_layers=num_layers, nonlinearity="tanh", bias=True, batch_first=True,
                      precision="ieee")
    grads_t = torch.autograd.grad((out_t, hn_t), [x, h0, *weights], (g_out, g_h))

    @torch.no_grad()
    def errs(pairs):
        max_abs = max(float((a - b).abs().max()) for a, b in pairs)
        rel = max(float((a - b).norm() / b.norm().clamp_min(1e-300)) for a, b in pairs)
        return max_abs, rel

    fa, fr = errs([(out_t, out_r), (hn_t, hn_r)])
    ga, gr = errs(list(zip(grads_t, grads_r)))
    return {"forward_max_abs": fa, "forward_rel": fr, "grad_max_abs": ga, "grad_rel": gr}


def parity_section(rows: list[Row], cfg: ReportConfig) -> tuple[str, list[str]]:
    shapes = parity_shapes(rows)
    problems: list[str] = []
    if not shapes:
        return ("No benchmark records the recurrence sizes (extra_info batch_size, seq_len, hidden_size), so "
                "there is no shape to check.", problems)
    lines = ["| shape | checked at | forward max abs | forward rel | gradients max abs | gradients rel | "
             "fp64 ≤ 1e-12 |", "|---|---|---|---|---|---|---|"]
    kernels_ok = None
    interp = False
    results: dict[tuple, dict] = {}  # (B, T, I, H, L) -> rnn_parity's errors
    for s in shapes:
        checked = f"B {s['batch_size']} T {s['seq_len']} I {s['input_size']} H {s['hidden_size']} L {s['num_layers']}"
        res = s.get("recorded")
        source = " (from the benchmark)"
        if res is None:
            if not cfg.parity:
                continue
            if kernels_ok is None:
                try:
                    import kernels
                    import kernels.rnn  # noqa: F401

                    kernels_ok, interp = True, bool(kernels.INTERPRETED)
                except Exception as err:  # noqa: BLE001 (the report still goes out)
                    kernels_ok = False
                    problems.append(f"parity not computed: kernels.rnn cannot be imported ({type(err).__name__}: "
                                    f"{err})")
            if not kernels_ok:
                break
            b, t = s["batch_size"], s["seq_len"]
            source = ""
            if interp and (b > cfg.parity_max_batch or t > cfg.parity_max_steps):
                b, t = min(b, cfg.parity_max_batch), min(t, cfg.parity_max_steps)
                source = " (capped: interpreter)"
            checked = f"B {b} T {t} I {s['input_size']} H {s['hidden_size']} L {s['num_layers']}"
            sizes = (b, t, s["input_size"], s["hidden_size"], s["num_layers"])
            try:
                # capped, several shapes check the same sizes (default, b16 and b256 all at B 16 T 10 H 512)
                if sizes not in results:
                    results[sizes] = rnn_parity(*sizes)
                res = results[sizes]
            except Exception as err:  # noqa: BLE001
                problems.append(f"parity at shape {s['shape']} failed to run: {type(err).__name__}: {err}")
                lines.append(f"| {s['shape']} | {checked} | error: {type(err).__name__} | | | | **no** |")
                continue
        vals = [_finite(res.get(k)) for k in ("forward_max_abs", "forward_rel", "grad_max_abs", "grad_rel")]
        ok = all(v is not None for v in vals) and vals[1] <= PARITY_TOL_FP64 and vals[3] <= PARITY_TOL_FP64
        if not ok:
            problems.append(f"parity at shape {s['shape']}: relative error above {PARITY_TOL_FP64:g} "
                            f"(forward {vals[1]}, gradients {vals[3]})")
        fmt = [f"{v:.2e}" if v is not None else "?" for v in vals]
        lines.append(f"| {s['shape']} | {checked}{source} | {fmt[0]} | {fmt[1]} | {fmt[2]} | {fmt[3]} | "
                     f"{'yes' if ok else '**no**'} |")
    if len(lines) == 2:
        text = "Parity not computed (" + ("--no-parity" if not cfg.parity else "; ".join(problems)) + ")."
        return text, problems
    intro = ("kernels.rnn.rnn (precision \"ieee\") against torch.nn.RNN, both in float64, tanh, with random "
             "upstream gradients on the output and h_n. Relative error = ‖triton − torch‖/‖torch‖, the "
             "largest over the outputs (output, h_n) and over the gradients (input, h0, every weight and bias).")
    if interp:
        intro += (f" Triton runs in its interpreter here: batch and sequence length are capped at "
                  f"{cfg.parity_max_batch} and {cfg.parity_max_steps} (sizes H, I and L as benchmarked).")
    return intro + "\n\n" + "\n".join(lines), problems


# ----------------------------------------------------------------------------------------------- compile
def compile_section(cfg: ReportConfig) -> tuple[str, list[str]]:
    from kernels import compile_report as cr  # lazy: imports no triton itself

    try:
        if cfg.compile_json:
            report = _read_json(cfg.compile_json)
            if not isinstance(report, dict) or not isinstance(report.get("rows"), list):
                raise UsageError(f"{cfg.compile_json}: not a compile_report.json (no 'rows' list)")
        else:
            report = cr.compile_report(cr.ARCHS, cr.KERNEL_MODULES)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"The compile report could not be produced: {first}", [f"compile report failed: {first}"]
    rows = report["rows"]
    bad = [r for r in rows if not r.get("ok")]
    archs = ", ".join(f"sm_{a}" for a in report.get("archs", []))
    text = (f"Every configuration the launchers can choose on a GPU, compiled for {archs} by triton "
            f"{report.get('triton', '?')} (`python -m kernels.compile_report`; generated {report.get('generated')}). "
            f"Registers, stack and local memory from `cuobjdump --dump-resource-usage`, spill stores from "
            f"`ptxas -v`; shared = triton's dynamic + static shared memory (limit: the most one block can use). "
            f"{len(rows)} builds, {len(bad)} failing a check.\n\n" + cr.markdown_table(report))
    problems = [f"compile report: {len(bad)} configuration(s) fail a check"] if bad else []
    return text, problems


# ----------------------------------------------------------------------------------------------- metrics
def read_metrics(path: str) -> list[dict]:
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{path}: no such file")
    if p.is_dir():
        raise UsageError(f"{path}: is a directory, expected a metrics.jsonl file")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: cannot read: {err}") from None
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            if n == len(lines):
                warn(f"{path}: last line {n} is truncated (a run stopped mid-write?); skipped")
                continue
            raise UsageError(f"{path}: line {n} is not valid JSON ({err.msg})") from None
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
    plt = _pyplot()
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


# -------------------------------------------------------------------------------------------------- main
def _header(meta: dict, rows: list[Row], source: str) -> list[str]:
    out = []
    mi = meta.get("machine_info") or {}
    cpu = mi.get("cpu", {}) if isinstance(mi.get("cpu"), dict) else {}
    devices = sorted({str(r.info.get("device")) for r in rows if r.info.get("device")})
    versions = {k: sorted({str(r.info[k]) for r in rows if r.info.get(k)}) for k in ("torch", "triton")}
    precisions = sorted({str(r.info["precision"]) for r in rows if r.info.get("precision")})
    threads = sorted({str(r.info["threads"]) for r in rows if r.info.get("threads")})
    out.append(f"- benchmarks: `{source}` ({len(rows)} timed), run {meta.get('datetime', '?')}, "
               f"pytest-benchmark {meta.get('version', '?')}")
    machine = ", ".join(x for x in (mi.get("node"), cpu.get("brand_raw"), mi.get("machine"),
                                    f"python {mi.get('python_version')}" if mi.get("python_version") else None) if x)
    if machine:
        out.append(f"- machine: {machine}")
    out.append(f"- device: {', '.join(devices) or '?'}; torch {', '.join(versions['torch']) or '?'}; "
               f"triton {', '.join(versions['triton']) or '?'}; precision {', '.join(precisions) or '?'}"
               + (f"; CPU threads {', '.join(threads)}" if threads else ""))
    commit = meta.get("commit_info") or {}
    if isinstance(commit, dict) and commit.get("id"):
        out.append(f"- commit: {str(commit['id'])[:12]}{' (dirty)' if commit.get('dirty') else ''}")
    return out


def build_report(cfg: ReportConfig) -> int:
    out = Path(cfg.out) if cfg.out else Path(cfg.bench or cfg.metrics).resolve().parent
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--out {out}: cannot create the folder: {err}") from None
    data = _read_json(cfg.bench) if cfg.bench else None  # bad files fail before anything is written
    if cfg.metrics:
        read_metrics(cfg.metrics)
    problems: list[str] = []
    md = ["# rnnlm: triton vs cuDNN report", "",
          f"Generated {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by `{PROG}`.", ""]
    status = 0
    if cfg.bench:
        rows, probs, meta = parse_benchmarks(data, cfg.bench)
        problems += probs
        if not rows:
            status = 1
        interp = interpreted(rows)
        cpu_baseline = any(r.backend == "cudnn" and str(r.info.get("device", "")).lower() == "cpu" for r in rows)
        if interp:
            md[1:1] = ["", "> **The triton figures below are interpreter timings, not a claim about kernel speed.** "
                       "This machine has no GPU, so Triton ran its kernels in its Python interpreter "
                       "(TRITON_INTERPRET=1), which executes one program after another at a fixed cost per Triton "
                       "operation." + (" The cudnn figures are torch's CPU (ATen) kernels." if cpu_baseline else "") +
                       " Kernel speed on a GPU is argued by the cost model in kernels/rnn.py and the compile "
                       "report below."]
        md += _header(meta, rows, cfg.bench) if rows else [f"- benchmarks: `{cfg.bench}`: nothing to report"]
        md.append("")
        if probs:
            md += ["**Missing from the input:**", ""] + [f"- {p}" for p in probs] + [""]
        md += ["## Speed", "",
               "Median round per call; *triton speed-up* = cudnn time / triton time (> 1: triton faster). "
               "tokens/s from the median round.", ""]
        groups: dict[str, list[Row]] = {}
        for r in rows:
            groups.setdefault(r.group, []).append(r)
        others: list[Row] = []
        for group, grows in groups.items():
            paired = [r for r in grows if r.backend is not None]
            others += [r for r in grows if r.backend is None]
            if not paired:
                continue
            table, notes = group_table(paired)
            md += [f"### {group}", "", table, ""]
            if notes:
                md += [f"*{'; '.join(notes)}.*", ""]
            png = f"throughput_{_slug(group)}.png"
            sweeps = [sweep_points(paired, axis) for axis in PLOT_AXES]
            if throughput_plot(group, sweeps, out / png, interp):
                md += [f"![{group}: throughput against batch and hidden size]({png})", "",
                       "*" + " ".join(f"Against {SIZE_NAMES[s.axis]}: {sweep_title(s)}." for s in sweeps) + "*", ""]
        if others:
            md += ["### Benchmarks without a backend", "", other_table(others), ""]
        md += ["## Parity: triton against nn.RNN in float64", ""]
        text, probs = parity_section(rows, cfg)
        problems += probs
        md += [text, ""]
    if cfg.bench or cfg.compile_json:
        if cfg.compile or cfg.compile_json:
            md += ["## Compile report (sm_80, sm_90)", ""]
            text, probs = compile_section(cfg)
            problems += probs
            md += [text, ""]
    if cfg.metrics:
        md += ["## Training run", "", metrics_section(cfg.metrics, out), ""]
    (out / "report.md").write_text("\n".join(md))
    for p in problems:
        warn(p)
    print(f"wrote {out / 'report.md'}", file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(ReportConfig, PROG, "Write report.md and PNG plots from pytest-benchmark JSON "
                                              "(triton vs cudnn, parity, compile report) and/or a training "
                                              "run's metrics.jsonl.")
    parser.add_argument("bench", nargs="?", default=None, metavar="BENCH.json",
                        help="pytest-benchmark JSON (pytest benchmarks --benchmark-json=BENCH.json)")
    cfg = from_namespace(ReportConfig, parser.parse_args(argv))
    cfg.validate()
    return build_report(cfg)


if __name__ == "__main__":
    run_cli(main, PROG)
