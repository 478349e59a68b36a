"""Reading pytest-benchmark JSON into rows, and the markdown tables of the report's speed section."""
from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rnnlm.errors import UsageError

PROG = "python -m rnnlm.report"
BACKEND_ALIASES = {"cudnn": "cudnn", "torch": "cudnn", "aten": "cudnn", "triton": "triton"}
SIZE_KEYS = ("batch_size", "seq_len", "embed_size", "hidden_size", "num_layers", "vocab_size")
PLOT_AXES = ("batch_size", "hidden_size")
SIZE_NAMES = {"batch_size": "batch size", "seq_len": "sequence length", "embed_size": "embedding size",
              "hidden_size": "hidden size", "num_layers": "layers", "vocab_size": "vocabulary size"}
SIZE_LETTERS = {"batch_size": "B", "seq_len": "T", "embed_size": "E", "hidden_size": "H", "num_layers": "L",
                "vocab_size": "V"}
COLORS = {"cudnn": "tab:blue", "triton": "tab:orange"}


def warn(msg: str) -> None:
    print(f"{PROG}: {msg}", file=sys.stderr)


def read_text(path: str, expected: str) -> str:
    """The file's text; UsageError (one line) when it is missing, a folder (not the `expected` file) or unreadable."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{path}: no such file")
    if p.is_dir():
        raise UsageError(f"{path}: is a directory, expected {expected}")
    try:
        return p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: cannot read: {err}") from None


def read_json(path: str) -> Any:
    text = read_text(path, "pytest-benchmark JSON (--benchmark-json)")
    try:
        return parse_json(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"{path}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    except ValueError as err:
        raise UsageError(f"{path}: not usable JSON ({err})") from None


def parse_json(text: str) -> Any:
    """json.loads; ValueError (not RecursionError) for nesting too deep to parse, and for integers with more digits
    than Python converts (json.JSONDecodeError, a ValueError, for syntax)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except ValueError as err:
        if isinstance(err, json.JSONDecodeError):
            raise
        raise ValueError(" ".join(str(err).split(";")[0].split())) from None


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
    """x as a finite float; None for anything else (a string, NaN, infinity, an integer too large for a float)."""
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return None
    try:
        value = float(x)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def _sizes_checked(info: dict, problems: list[str], where: str) -> dict:
    """info without the sizes (SIZE_NAMES) that are not positive integers a table or plot can use; each one
    dropped is named in `problems` (the rest of the report goes on)."""
    kept = dict(info)
    for key in SIZE_NAMES:
        if key in kept and not (type(kept[key]) is int and 0 < kept[key] < 2**40):
            problems.append(f"{where}: extra_info[{key!r}] = {str(kept.pop(key))[:40]} is not a size; ignored")
    return kept


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
        info = _sizes_checked(b.get("extra_info") if isinstance(b.get("extra_info"), dict) else {}, problems,
                              f"{source}: {b.get('name', '?')}")
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
                        rounds=int(_finite(stats.get("rounds")) or 0), info=info))
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


def _info_text(rows: list[Row | None], key: str) -> str:
    """The distinct values of extra_info[key] in rows (None skipped), joined; "–" when none has it."""
    values = [str(r.info[key]) for r in rows if r is not None and r.info.get(key) not in (None, "")]
    return " / ".join(dict.fromkeys(values)) or "–"


def group_table(rows: list[Row]) -> tuple[str, list[str]]:
    """Markdown table of one group: per shape (and variant) cudnn vs triton; plus notes on missing sides.

    Where the benchmarks recorded them (benchmarks/cuda_bench.py), two more columns: the cuDNN algorithm ATen
    picks for nn.RNN at that shape (the cudnn row's, else the triton row's), and how each side was timed."""
    keys: list[tuple[str, str]] = []
    by: dict[tuple[str, str], dict[str, Row]] = {}
    for r in rows:
        k = (r.shape, r.variant)
        if k not in by:
            keys.append(k)
            by[k] = {}
        by[k][r.backend] = r
    extra_units = [u for u in ("gb_per_s", "tflops_per_s") if any(_finite(r.info.get(u)) for r in rows)]
    ceilings = [b for b in ("cudnn", "triton") if any(_finite(r.info.get("ceiling_tokens_per_s")) is not None
                                                       for r in rows if r.backend == b)]
    head = ["shape", "sizes", "cudnn (median)", "triton (median)", "triton speed-up", "cudnn tokens/s",
            "triton tokens/s"]
    unit_names = {"gb_per_s": "GB/s", "tflops_per_s": "TFLOP/s"}
    for u in extra_units:
        head += [f"cudnn {unit_names[u]}", f"triton {unit_names[u]}"]
    info_columns = [(k, title) for k, title in (("cudnn_algorithm", "cuDNN algorithm"), ("timer", "timer"))
                    if any(r.info.get(k) not in (None, "") for r in rows)]
    head += [title for _, title in info_columns]
    for b in ceilings:
        head += [f"{b} ceiling tokens/s", f"{b} fraction of ceiling"]
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
        for key, _ in info_columns:
            cells.append(_info_text([c] if key == "cudnn_algorithm" and c and c.info.get(key) else [c, t], key))
        for b in ceilings:
            r = by[k].get(b)
            ceiling = _finite(r.info.get("ceiling_tokens_per_s")) if r else None
            rate = tokens_per_s(r) if r else None
            cells += [_rate(ceiling) if ceiling else "–", f"{rate / ceiling:.0%}" if ceiling and rate else "–"]
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

