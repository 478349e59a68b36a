"""rnnlm.report: tables and plots from pytest-benchmark JSON, messages for incomplete input, training curves."""
from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from rnnlm import report as rep
from rnnlm.errors import UsageError
from rnnlm.report import parity

SHAPES = {  # tiny sizes, so that the parity check (interpreted kernels) stays fast
    "small": dict(batch_size=4, seq_len=3, embed_size=8, hidden_size=8, num_layers=1, vocab_size=50),
    "default": dict(batch_size=8, seq_len=4, embed_size=8, hidden_size=12, num_layers=2, vocab_size=100),
}


def bench_entry(group, backend, shape, median, sizes=None, **extra):
    sizes = sizes or SHAPES[shape]
    tokens = sizes["batch_size"] * sizes["seq_len"]
    info = dict(backend=backend, shape=shape, **sizes, tokens_per_round=tokens, tokens_per_s=tokens / median,
                precision="fp32", device="cpu", torch="2.13.0+cpu", triton="3.9.0",
                triton_interpreted=backend == "triton", threads=2, **extra)
    name = f"test_{group.replace(' ', '_')}[{backend}-{shape}]"
    return {
        "group": group, "name": name, "fullname": f"benchmarks/test_bench_kernels.py::{name}",
        "params": {"backend": backend, "shape": shape}, "param": f"{backend}-{shape}",
        "extra_info": info,
        "options": {"disable_gc": False, "timer": "perf_counter", "min_rounds": 5, "max_time": 1.0,
                    "min_time": 5e-06, "warmup": False},
        "stats": {"min": median * 0.9, "max": median * 1.2, "mean": median * 1.02, "stddev": median * 0.05,
                  "rounds": 5, "median": median, "iqr": median * 0.04, "q1": median * 0.98, "q3": median * 1.02,
                  "iqr_outliers": 0, "stddev_outliers": 1, "outliers": "1;0", "ld15iqr": median * 0.9,
                  "hd15iqr": median * 1.2, "ops": 1 / median, "total": median * 5, "iterations": 1},
    }


def bench_file(benchmarks):
    """pytest-benchmark JSON around the given benchmark entries."""
    return {
        "machine_info": {"node": "testbox", "processor": "x86_64", "machine": "x86_64",
                         "python_implementation": "CPython", "python_version": "3.11.9",
                         "system": "Linux", "release": "6.1", "cpu": {"brand_raw": "Test CPU", "count": 2}},
        "commit_info": {"id": "0123456789abcdef", "time": "2026-11-23T22:00:00+00:00", "dirty": True,
                        "project": "rnnlm", "branch": "main"},
        "benchmarks": benchmarks,
        "datetime": "2026-11-23T22:30:00.000000+00:00",
        "version": "5.1.0",
    }


def bench_json(groups=("recurrence forward", "recurrence forward+backward"), backends=("cudnn", "triton")):
    benchmarks = []
    for g in groups:
        for shape, base in (("small", 0.002), ("default", 0.010)):
            for b in backends:
                benchmarks.append(bench_entry(g, b, shape, base * (40 if b == "triton" else 1),
                                              gb_per_s=1.5 if "softmax" in g else None))
    for e in benchmarks:  # drop the None units
        e["extra_info"] = {k: v for k, v in e["extra_info"].items() if v is not None}
    # a benchmark without a backend (the data pipeline)
    data_row = bench_entry("data: tokenize", "cudnn", "small", 0.5)
    data_row["params"] = {}
    data_row["extra_info"] = {"tokens_per_s": 20000.0}
    benchmarks.append(data_row)
    return bench_file(benchmarks)


def write(tmp_path, data, name="bench.json"):
    p = tmp_path / name
    p.write_text(json.dumps(data))
    return p


def run_main(argv):
    """main() as run_cli would: (exit code, UsageError message or None)."""
    try:
        return rep.main([str(a) for a in argv]), None
    except UsageError as err:
        return 2, str(err)


HAVE_RNN = importlib.util.find_spec("kernels.rnn") is not None


def test_full_report_tables_plots_parity(tmp_path, capsys):
    bench = write(tmp_path, bench_json())
    out = tmp_path / "out"
    code, err = run_main([bench, "--out", out, "--no-compile"])
    assert (code, err) == (0, None)
    md = (out / "report.md").read_text()
    # interpreter statement at the top (before any table)
    assert md.index("interpreter timings, not a claim about kernel speed") < md.index("## Speed")
    for group in ("recurrence forward", "recurrence forward+backward"):
        assert f"### {group}\n" in md
    assert ("| shape | sizes | cudnn (median) | triton (median) | triton speed-up | cudnn tokens/s "
            "| triton tokens/s |") in md
    assert "| small | B 4 T 3 E 8 H 8 L 1 V 50 | 2 ms (5 rounds) | 80 ms (5 rounds) | 0.025× | 6k | 150 |" in md
    assert "### Benchmarks without a backend" in md and "data: tokenize" in md
    assert "testbox" in md and "Test CPU" in md and "0123456789ab (dirty)" in md
    for png in ("throughput_recurrence_forward.png", "throughput_recurrence_forward_backward.png"):
        assert (out / png).stat().st_size > 5000 and f"]({png})" in md
    # small and default differ in more than B and H: the plot must not pass for a one-size sweep
    assert "*Against batch size: B, T, H, L and V vary together (no two shapes differ in batch size alone)." in md
    assert "## Parity: triton against nn.RNN in float64" in md
    if HAVE_RNN:
        # both shapes checked, both pass fp64 tolerance
        rows = [line for line in md.splitlines() if line.startswith("| small | B 4 T 3 I 8 H 8 L 1 |") or
                line.startswith("| default | B 8 T 4 I 8 H 12 L 2 |")]
        assert len(rows) == 2 and all(line.endswith("| yes |") for line in rows), rows
    else:
        assert "kernels.rnn cannot be imported" in md
    assert "no triton rows" not in capsys.readouterr().err


# benchmarks/conftest.py's shapes as (B, E, H, V), all at T 20 and L 2: small/default/large grow B and H together,
# the sweeps change one of them around default
BENCH_SHAPES = {
    "small": (16, 128, 128, 2_000), "default": (64, 256, 512, 10_000), "large": (256, 256, 1024, 10_000),
    "b16": (16, 256, 512, 10_000), "b256": (256, 256, 512, 10_000),
    "h128": (64, 256, 128, 10_000), "h1024": (64, 256, 1024, 10_000),
}
SWEPT = ("small", "default", "large", "b16", "b256", "h128", "h1024")  # the recurrence forward's shapes


def bench_shapes_json(shapes, triton_shapes=("small",)):
    """A recurrence forward group at the benchmark's sizes: cudnn at every shape, triton (interpreted) at
    triton_shapes; every median differs, so that each point can be told apart."""
    entries = []
    for i, name in enumerate(shapes):
        b, e, h, v = BENCH_SHAPES[name]
        sizes = dict(batch_size=b, seq_len=20, embed_size=e, hidden_size=h, num_layers=2, vocab_size=v)
        for backend in ("cudnn", "triton") if name in triton_shapes else ("cudnn",):
            median = 0.01 * (i + 1) * (50 if backend == "triton" else 1)
            entries.append(bench_entry("recurrence forward", backend, name, median, sizes=sizes))
    return bench_file(entries)


def plotted(sweep):
    """backend -> [(size, tokens/s)] of a Sweep."""
    return {backend: [(x, rate) for x, rate, _ in pts] for backend, pts in sweep.points.items()}


@pytest.mark.parametrize("triton_shapes", [("small",), ("small", "default")])
def test_sweep_points_vary_one_size_at_a_time(triton_shapes):
    rows, problems, _ = rep.parse_benchmarks(bench_shapes_json(SWEPT, triton_shapes), "bench.json")
    assert not problems
    rate = {(r.backend, r.shape): rep.tokens_per_s(r) for r in rows}
    triton_at_default = [(64, rate["triton", "default"])] if "default" in triton_shapes else []

    by_batch = rep.sweep_points(rows, "batch_size")
    assert plotted(by_batch) == {"cudnn": [(16, rate["cudnn", "b16"]), (64, rate["cudnn", "default"]),
                                           (256, rate["cudnn", "b256"])],
                                 "triton": triton_at_default}  # not small: it is at H 128
    assert by_batch.fixed == dict(seq_len=20, embed_size=256, hidden_size=512, num_layers=2, vocab_size=10_000)
    assert not by_batch.varies_together
    assert rep.sweep_title(by_batch) == "hidden size 512 fixed (and T 20 E 256 L 2 V 10000)"

    by_hidden = rep.sweep_points(rows, "hidden_size")
    triton_at_default = [(512, rate["triton", "default"])] if "default" in triton_shapes else []
    assert plotted(by_hidden) == {"cudnn": [(128, rate["cudnn", "h128"]), (512, rate["cudnn", "default"]),
                                            (1024, rate["cudnn", "h1024"])],
                                  "triton": triton_at_default}
    assert by_hidden.fixed == dict(batch_size=64, seq_len=20, embed_size=256, num_layers=2, vocab_size=10_000)
    assert not by_hidden.varies_together
    assert rep.sweep_title(by_hidden) == "batch size 64 fixed (and T 20 E 256 L 2 V 10000)"


def test_sweep_points_without_a_sweep_say_the_sizes_vary_together():
    rows, _, _ = rep.parse_benchmarks(bench_shapes_json(("small", "default", "large")), "bench.json")
    rate = {(r.backend, r.shape): rep.tokens_per_s(r) for r in rows}
    by_batch = rep.sweep_points(rows, "batch_size")
    assert plotted(by_batch) == {"cudnn": [(16, rate["cudnn", "small"]), (64, rate["cudnn", "default"]),
                                           (256, rate["cudnn", "large"])],
                                 "triton": [(16, rate["triton", "small"])]}
    assert by_batch.varies_together and by_batch.also_varying == ["embed_size", "hidden_size", "vocab_size"]
    assert by_batch.fixed == dict(seq_len=20, num_layers=2)
    assert rep.sweep_title(by_batch) == "B, E, H and V vary together (no two shapes differ in batch size alone)"
    by_hidden = rep.sweep_points(rows, "hidden_size")
    assert by_hidden.varies_together and by_hidden.also_varying == ["batch_size", "embed_size", "vocab_size"]
    assert "vary together" in rep.sweep_title(by_hidden)


def test_report_with_sweep_shapes(tmp_path, monkeypatch):
    checked = []

    def fake_parity(*sizes):
        checked.append(sizes)
        return {"forward_max_abs": 1e-15, "forward_rel": 1e-16, "grad_max_abs": 1e-14, "grad_rel": 1e-15}

    monkeypatch.setattr(parity, "rnn_parity", fake_parity)
    data = bench_shapes_json(SWEPT)
    out = tmp_path / "o"
    code, _ = run_main([write(tmp_path, data), "--out", out, "--no-compile"])
    assert code == 0
    md = (out / "report.md").read_text()
    for name in SWEPT:  # the table lists every shape, in benchmark order
        b, e, h, v = BENCH_SHAPES[name]
        assert f"\n| {name} | B {b} T 20 E {e} H {h} L 2 V {v} |" in md
    assert ("*Against batch size: hidden size 512 fixed (and T 20 E 256 L 2 V 10000). Against hidden size: "
            "batch size 64 fixed (and T 20 E 256 L 2 V 10000).*") in md
    assert (out / "throughput_recurrence_forward.png").stat().st_size > 5000
    assert [s["shape"] for s in rep.parity_shapes(rep.parse_benchmarks(data, "b")[0])] == list(SWEPT)
    if HAVE_RNN:  # every shape gets a parity row; the same (capped) sizes are computed once
        parity_rows = [line for line in md.splitlines() if line.endswith("| yes |")]
        assert [line.split(" | ")[0] for line in parity_rows] == [f"| {name}" for name in SWEPT]
        assert len(checked) == len(set(checked))


def test_parity_read_from_extra_info(tmp_path):
    data = bench_json(groups=("recurrence forward",))
    for b in data["benchmarks"]:
        if b["extra_info"].get("backend") == "triton":
            b["extra_info"]["parity"] = {"forward_max_abs": 1e-15, "forward_rel": 2e-16, "grad_max_abs": 3e-15,
                                         "grad_rel": 4e-14}
    code, _ = run_main([write(tmp_path, data), "--out", tmp_path / "o", "--no-compile", "--no-parity"])
    md = (tmp_path / "o" / "report.md").read_text()
    assert code == 0
    assert ("| small | B 4 T 3 I 8 H 8 L 1 (from the benchmark) | 1.00e-15 | 2.00e-16 | 3.00e-15 | 4.00e-14 "
            "| yes |") in md


def test_cudnn_algorithm_and_timer_columns(tmp_path):
    """benchmarks/cuda_bench.py's extra_info: the cuDNN algorithm ATen picks at each shape (the cudnn row's) and
    how each side was timed appear in the group's table; a group without them has no such columns."""
    data = bench_json(groups=("recurrence forward", "softmax"))
    algorithm = {"small": "fwd PERSIST_STATIC", "default": "fwd STANDARD"}
    for b in data["benchmarks"]:
        info = b["extra_info"]
        if b["group"] == "recurrence forward":
            info["timer"] = "cuda events, L2 flushed" if info["backend"] == "cudnn" else "cuda events"
            if info["backend"] == "cudnn":
                info["cudnn_algorithm"] = algorithm[info["shape"]]
    code, _ = run_main([write(tmp_path, data), "--out", tmp_path / "o", "--no-compile", "--no-parity"])
    md = (tmp_path / "o" / "report.md").read_text()
    assert code == 0
    forward, softmax = md.split("### recurrence forward\n")[1].split("### softmax\n")
    assert "| triton tokens/s | cuDNN algorithm | timer |" in forward
    assert "| fwd PERSIST_STATIC | cuda events, L2 flushed / cuda events |" in forward
    assert "| fwd STANDARD | cuda events, L2 flushed / cuda events |" in forward
    assert "cuDNN algorithm" not in softmax.split("###")[0] and "| timer |" not in softmax.split("###")[0]


def test_missing_cudnn_rows_message_and_partial_report(tmp_path, capsys):
    bench = write(tmp_path, bench_json(groups=("softmax",), backends=("triton",)))
    code, err = run_main([bench, "--out", tmp_path / "o", "--no-compile", "--no-parity"])
    assert (code, err) == (0, None)
    stderr = capsys.readouterr().err
    assert "no cudnn rows" in stderr and "extra_info['backend']" in stderr
    md = (tmp_path / "o" / "report.md").read_text()
    assert "### softmax" in md and "no cudnn rows in this group" in md
    assert "| small | B 4 T 3 E 8 H 8 L 1 V 50 | – | 80 ms (5 rounds) | – | – | 150 | – | 1.5 |" in md
    assert (tmp_path / "o" / "throughput_softmax.png").stat().st_size > 5000


def test_missing_triton_rows(tmp_path, capsys):
    bench = write(tmp_path, bench_json(groups=("training step (fp32)",), backends=("cudnn",)))
    code, _ = run_main([bench, "--out", tmp_path / "o", "--no-compile", "--no-parity"])
    assert code == 0
    assert "no triton rows" in capsys.readouterr().err
    md = (tmp_path / "o" / "report.md").read_text()
    assert "interpreter timings" not in md  # no triton figures, nothing to warn about
    assert "### training step (fp32)" in md


def test_not_pytest_benchmark_json(tmp_path, capsys):
    bench = write(tmp_path, {"results": [1, 2, 3]})
    code, err = run_main([bench, "--out", tmp_path / "o", "--no-compile"])
    assert err is None and code == 1
    stderr = capsys.readouterr().err
    assert "is not pytest-benchmark JSON" in stderr and "no 'benchmarks' list" in stderr and "results" in stderr
    md = (tmp_path / "o" / "report.md").read_text()
    assert "is not pytest-benchmark JSON" in md


def test_benchmarks_without_stats_are_named(tmp_path, capsys):
    data = bench_json(groups=("recurrence forward",))
    broken = copy.deepcopy(data["benchmarks"][0])
    del broken["stats"]
    data["benchmarks"].append(broken)
    code, _ = run_main([write(tmp_path, data), "--out", tmp_path / "o", "--no-compile", "--no-parity"])
    assert code == 0 and "1 benchmark(s) without stats" in capsys.readouterr().err


@pytest.mark.parametrize("content, message", [(None, "no such file"), ("{not json", "not valid JSON")])
def test_bad_files_are_one_line_exit_2(tmp_path, content, message):
    path = tmp_path / "b.json"
    if content is not None:
        path.write_text(content)
    code, err = run_main([path, "--out", tmp_path / "o"])
    assert code == 2 and message in err and "\n" not in err
    assert not (tmp_path / "o" / "report.md").exists()


def test_cli_exit_code_and_single_line(tmp_path):
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "rnnlm.report", str(tmp_path / "nope.json")],
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "no such file" in res.stderr


def test_nothing_to_report_is_usage_error(tmp_path):
    code, err = run_main([])
    assert code == 2 and "nothing to report" in err


def write_metrics(path, steps=200, eval_every=50, truncated=False):
    import math

    lines = []
    for s in range(10, steps + 1, 10):
        rec = {"step": s, "epoch": s / 100, "time": round(s * 0.37, 3), "loss": 7.0 * math.exp(-s / 150) + 3.0,
               "train_ppl": math.exp(7.0 * math.exp(-s / 150) + 3.0), "tokens_per_s": 12000.0 + s}
        if s % eval_every == 0:
            rec["valid_ppl"] = math.exp(7.0 * math.exp(-s / 170) + 3.2)
        lines.append(json.dumps(rec))
    text = "\n".join(lines) + "\n"
    if truncated:
        text += '{"step": 210, "ti'
    path.write_text(text)


def test_metrics_plot(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    write_metrics(run / "metrics.jsonl", truncated=True)
    code, err = run_main(["--metrics", run / "metrics.jsonl"])
    assert (code, err) == (0, None)
    assert "truncated" in capsys.readouterr().err
    md = (run / "report.md").read_text()
    assert "## Training run" in md and "![training curves](training.png)" in md
    assert "- last step: 200" in md and "best" in md
    assert (run / "training.png").stat().st_size > 10000


def test_metrics_bad_lines(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 1, "loss": 5}\nnot json\n{"step": 2, "loss": 4}\n')
    code, err = run_main(["--metrics", p])
    assert code == 2 and "line 2 is not valid JSON" in err
    p.write_text('{"step": 1}\n')
    code, err = run_main(["--metrics", p])
    assert code == 2 and "no line has 'loss' or 'valid_ppl'" in err


def test_compile_table_from_json(tmp_path):
    compile_json = tmp_path / "compile_report.json"
    row = {"module": "kernels.rnn", "kernel": "_rnn_fwd_kernel", "config": "fwd_tf32", "arch": "sm_90", "cc": 90,
           "num_warps": 4, "num_stages": 1, "registers": 96, "stack_bytes": 0, "local_bytes": 0,
           "spill_stores": 0, "spill_loads": 0, "shared_static": 0, "shared_dynamic": 65536,
           "shared_bytes": 65536, "shared_limit": 232448,
           "tensor_core_instructions": {"wgmma.mma_async.sync.aligned.m64n64k8.f32.tf32.tf32": 8},
           "expect_tensor_cores": True, "compiled": True, "ok": True, "problems": []}
    compile_json.write_text(json.dumps({"triton": "3.9.0", "archs": [80, 90], "generated": "now",
                                        "modules": {"kernels.rnn": "ok (1 configurations)",
                                                    "kernels.sample": "missing (module does not exist yet)"},
                                        "rows": [row]}))
    bench = write(tmp_path, bench_json(groups=("recurrence forward",)))
    code, _ = run_main([bench, "--out", tmp_path / "o", "--compile-json", compile_json, "--no-parity"])
    assert code == 0
    md = (tmp_path / "o" / "report.md").read_text()
    assert "## Compile report (sm_80, sm_90)" in md and "`kernels.sample`: missing" in md
    assert ("| _rnn_fwd_kernel | fwd_tf32 | sm_90 | 4/1 | 96 | 0 B | 0 B / 0 B | 64.0 KB (227.0 KB) "
            "| wgmma m64n64k8 f32.tf32.tf32 ×8 | mma/wgmma | yes |") in md


def test_ceiling_columns_show_our_fraction_of_the_machine():
    """Rows that carry ceiling_tokens_per_s (the torch backend's training step and generation on a CPU) get the
    ceiling and the fraction of it that ran; a group without them gets no such columns."""
    rows = [bench_entry("training step (fp32)", "cudnn", "default", 0.010, ceiling_tokens_per_s=6400.0),
            bench_entry("training step (fp32)", "triton", "default", 0.400)]
    parsed, problems, _ = rep.parse_benchmarks(bench_file(rows), "bench.json")
    table, _ = rep.benchmarks.group_table(parsed)
    head, _, line = table.splitlines()
    assert head.endswith("| cudnn ceiling tokens/s | cudnn fraction of ceiling |")
    assert line.endswith("| 6.4k | 50% |")  # 32 tokens in 10 ms = 3,200 tokens/s of 6,400
    plain, _ = rep.benchmarks.group_table(rep.parse_benchmarks(bench_json(), "bench.json")[0][:4])
    assert "ceiling" not in plain


def test_training_ceiling_charges_the_sequential_products_at_their_own_throughput(monkeypatch):
    """The recurrence's T products of (B, H) by (H, H) each way (no implementation can batch them over time) are
    charged at the throughput measured for that shape; its other products and the output layer's at theirs."""
    from rnnlm.report import ceilings

    output, recurrence, sequential = ceilings.training_step_flops(64, 20, 10_000, 256, 512, 2)
    n = 64 * 20
    assert output == 6 * n * 512 * 10_000
    assert recurrence == 6 * n * (256 + 512) * 512 + 6 * n * (512 + 512) * 512
    assert sequential == 2 * 4 * n * 512 * 512       # forward h W_hhᵀ and backward dA W_hh, per layer
    big = {"fp32": 2e11, "bf16": 4e11}
    monkeypatch.setattr(ceilings, "gemm_throughput",
                        lambda rows, h, v, dtype: {"flop_per_s": big["bf16" if dtype == torch.bfloat16 else "fp32"]})
    monkeypatch.setattr(ceilings, "step_gemm_throughput", lambda b, h: {"flop_per_s": 5e10})
    monkeypatch.setattr(ceilings, "read_bandwidth", lambda nbytes: {"bytes_per_s": 1e11})
    got = ceilings.measure_ceilings(batch_size=64, seq_len=20, vocab_size=10_000, embed_size=256, hidden_size=512,
                                    num_layers=2)
    for precision, flop_per_s in big.items():
        seconds = output / flop_per_s + (recurrence - sequential) / big["fp32"] + sequential / 5e10
        assert got["train_tokens_per_s"][precision] == pytest.approx(n / seconds)
    assert got["generate_tokens_per_s"]["fp16"] == pytest.approx(1e11 / got["generation_step_bytes"]["fp16"])
    # two measurements of a drifting machine: each throughput the best of the two, the ceilings recomputed
    slower = copy.deepcopy(got)
    slower["gemm"]["fp32"]["flop_per_s"] = 1e11
    slower["bandwidth"]["bytes_per_s"] = 2e11
    both = ceilings.best_of([slower, got])
    assert both["gemm"]["fp32"]["flop_per_s"] == 2e11 and both["bandwidth"]["bytes_per_s"] == 2e11
    assert both["train_tokens_per_s"] == pytest.approx(got["train_tokens_per_s"])
    assert both["generate_tokens_per_s"]["fp32"] == pytest.approx(2 * got["generate_tokens_per_s"]["fp32"])


def test_paired_fraction_takes_the_hosts_drift_out(monkeypatch):
    """Each round times one unit of ours and then asks the ceiling for that unit, in turn (one untimed call of ours
    first); the fraction is the median of the rounds' ratios, so a machine that slows down 3x between rounds (both
    sides alike) leaves it where it is, while a run-long average against the best moment's ceiling would not."""
    from rnnlm.report import ceilings

    clock, calls = [0.0], []
    speed = iter([1.0, 1.0, 3.0, 1.5, 2.0, 1.0])  # the host's slowdown in each call of ours (warm-up first)
    slowdown = [1.0]
    monkeypatch.setattr(ceilings.time, "perf_counter", lambda: clock[0])

    def ours():
        slowdown[0] = next(speed)
        calls.append("ours")
        clock[0] += 0.010 * slowdown[0]          # 10 ms a unit on a quiet host

    def allowed_s():
        calls.append("ceiling")
        return 0.008 * slowdown[0]                # the ceiling allows 8 ms, and slows down with the host

    got = ceilings.paired_fraction(ours, allowed_s, rounds=5)
    assert calls == ["ours"] + ["ours", "ceiling"] * 5
    assert got["fraction"] == pytest.approx(0.8) and got["fractions"] == pytest.approx([0.8] * 5)
    assert got["ours_s"] == pytest.approx(0.015) and got["allowed_s"] == pytest.approx(0.012)
    # unpaired, the same rounds read 47%: the quiet moment's ceiling (8 ms) over the rounds' mean (17 ms)
    assert 0.008 / (sum([0.010, 0.030, 0.015, 0.020, 0.010]) / 5) == pytest.approx(0.47, abs=0.005)


def test_remeasurer_times_the_winners_again_and_recomputes_the_ceilings(monkeypatch):
    """A round's ceilings: the winning library at its thread count, timed anew; only the part that bounds the unit
    (GEMMs for a training step, bandwidth for generation) changes, and the ceilings follow the same formulas."""
    from rnnlm import tuning
    from rnnlm.report import ceilings

    shape = dict(batch_size=4, seq_len=5, vocab_size=300, embed_size=16, hidden_size=32, num_layers=2)
    full = ceilings.measure_ceilings(**shape)
    assert full["shape"] == shape and full["gemm"]["fp32"]["flops"] == 6.0 * 20 * 32 * 300
    threads = []
    real = tuning.torch_threads
    monkeypatch.setattr(tuning, "torch_threads", lambda n: (threads.append(n), real(n))[1])
    monkeypatch.setattr(tuning, "time_candidates",                                 # every timed work: 1 ms
                        lambda candidates, budget_s: {k: (fn(), 1e-3)[1] for k, fn in candidates.items()})
    train = ceilings.remeasurer(full, "train")()
    winners = [*full["gemm"].values(), full["step_gemm"]]
    assert threads and set(threads) == {int(g["by"].split("@")[1]) for g in winners}   # the winners' threads
    for precision, g in train["gemm"].items():
        assert g["flop_per_s"] == pytest.approx(full["gemm"][precision]["flops"] / 1e-3)
    assert train["step_gemm"]["flop_per_s"] == pytest.approx(full["step_gemm"]["flops"] / 1e-3)
    assert train["bandwidth"] == full["bandwidth"] and train["generate_tokens_per_s"] == full["generate_tokens_per_s"]
    assert train["train_tokens_per_s"] == pytest.approx(ceilings._with_ceilings(train)["train_tokens_per_s"])
    assert train["train_tokens_per_s"] != pytest.approx(full["train_tokens_per_s"])
    gen = ceilings.remeasurer(full, "generate")()
    assert gen["gemm"] == full["gemm"] and gen["train_tokens_per_s"] == full["train_tokens_per_s"]
    assert gen["bandwidth"]["bytes_per_s"] == pytest.approx(full["bandwidth"]["bytes"] / 1e-3)
    assert gen["generate_tokens_per_s"]["int8"] == pytest.approx(
        full["bandwidth"]["bytes"] / 1e-3 / full["generation_step_bytes"]["int8"])
    with pytest.raises(ValueError, match="'train' or 'generate'"):
        ceilings.remeasurer(full, "evaluate")
