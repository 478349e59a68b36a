"""`python -m rnnlm.report`: the report's options and how report.md is put together."""
from __future__ import annotations

import datetime as _dt
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from rnnlm.checks import positive_int
from rnnlm.config import build_parser, from_namespace, option
from rnnlm.errors import UsageError
from rnnlm.report.benchmarks import (PLOT_AXES, PROG, SIZE_NAMES, Row, _slug, group_table, interpreted,
                                     other_table, parse_benchmarks, read_json, warn)
from rnnlm.report.compile_table import compile_section
from rnnlm.report.metrics import metrics_section, read_metrics
from rnnlm.report.parity import parity_section
from rnnlm.report.plots import sweep_points, sweep_title, throughput_plot


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
            positive_int(name, getattr(self, name))



def _header(meta: dict, rows: list[Row], source: str) -> list[str]:
    out = []
    mi = meta.get("machine_info") if isinstance(meta.get("machine_info"), dict) else {}
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


def _speed_section(cfg: ReportConfig, rows: list[Row], meta: dict, problems: list[str], out: Path
                   ) -> tuple[list[str], list[str]]:
    """(markdown lines, parity problems) for BENCH.json's rows: header, tables, plots, parity."""
    interp = interpreted(rows)
    md = _header(meta, rows, cfg.bench) if rows else [f"- benchmarks: `{cfg.bench}`: nothing to report"]
    md.append("")
    if problems:
        md += ["**Missing from the input:**", ""] + [f"- {p}" for p in problems] + [""]
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
    text, parity_problems = parity_section(rows, cfg.parity, cfg.parity_max_batch, cfg.parity_max_steps)
    return md + [text, ""], parity_problems


def _interpreter_warning(rows: list[Row]) -> list[str]:
    cpu_baseline = any(r.backend == "cudnn" and str(r.info.get("device", "")).lower() == "cpu" for r in rows)
    return ["", "> **The triton figures below are interpreter timings, not a claim about kernel speed.** "
            "This machine has no GPU, so Triton ran its kernels in its Python interpreter (TRITON_INTERPRET=1), "
            "which executes one program after another at a fixed cost per Triton operation."
            + (" The cudnn figures are torch's CPU (ATen) kernels." if cpu_baseline else "")
            + " Kernel speed on a GPU is argued by the cost model in kernels/rnn.py and the compile report below."]


def build_report(cfg: ReportConfig) -> int:
    """Writes report.md (and its PNGs) into the output folder; 1 when BENCH.json had no benchmark, else 0."""
    out = Path(cfg.out) if cfg.out else Path(cfg.bench or cfg.metrics).resolve().parent
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--out {out}: cannot create the folder: {err}") from None
    try:
        return _write_report(cfg, out)
    except OSError as err:  # the inputs were read before: an OSError here is writing report.md or a plot
        raise UsageError(f"--out {out}: cannot write {err.filename or 'the report'}: {err.strerror or err}") from None


def _write_report(cfg: ReportConfig, out: Path) -> int:
    data = read_json(cfg.bench) if cfg.bench else None  # bad files fail before anything is written
    if cfg.metrics:
        read_metrics(cfg.metrics)
    md = ["# rnnlm: triton vs cuDNN report", "",
          f"Generated {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by `{PROG}`.", ""]
    problems: list[str] = []
    status = 0
    if cfg.bench:
        rows, problems, meta = parse_benchmarks(data, cfg.bench)
        status = 0 if rows else 1
        if interpreted(rows):
            md[1:1] = _interpreter_warning(rows)
        section, parity_problems = _speed_section(cfg, rows, meta, problems, out)
        md += section
        problems += parity_problems
    if (cfg.bench and cfg.compile) or cfg.compile_json:
        text, compile_problems = compile_section(cfg.compile_json)
        md += ["## Compile report (sm_80, sm_90)", "", text, ""]
        problems += compile_problems
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

