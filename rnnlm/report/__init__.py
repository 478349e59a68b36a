"""The triton-vs-cuDNN report: speed tables and plots from pytest-benchmark JSON, parity beside speed, the
compile report, and a training run's curves (benchmarks.py, plots.py, parity.py, compile_table.py, metrics.py;
cli.py puts report.md together).

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
    ceiling_tokens_per_s (optional)
                         what the machine allows at that shape (rnnlm.report.ceilings: GEMM throughput for a
                         training step, read bandwidth for a generation step, measured in the same session):
                         the table adds the ceiling and the fraction of it that ran.
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

from rnnlm.report.benchmarks import parse_benchmarks, tokens_per_s
from rnnlm.report.cli import ReportConfig, build_report, main
from rnnlm.report.parity import parity_shapes, rnn_parity
from rnnlm.report.plots import sweep_points, sweep_title

__all__ = ["ReportConfig", "build_report", "main", "parse_benchmarks", "parity_shapes", "rnn_parity", "sweep_points",
           "sweep_title", "tokens_per_s"]
