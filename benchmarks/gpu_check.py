"""make gpu-check: the kernels on a GPU in one command -- tests, timings against cuDNN and torch, a report.

    PYTHONPATH=. python benchmarks/gpu_check.py OUT_DIR [--stages tests,recurrence,rows,model]

On a machine with CUDA it runs, from a plain checkout with only what a CUDA image ships (torch, triton, numpy,
pytest, matplotlib; no jieba, snownlp, tqdm or hypothesis needed, no package installed):
  1. the kernel tests on CUDA (tests/test_*kernel*.py, tests/test_rnn_persistent.py -- with its GPU tests: the
     persistent recurrence bit for bit against its per-step form at five shapes x three precisions, and 200
     launches beside a busy GEMM stream -- and the host-synchronisation test; property tests skip where
     hypothesis is absent);
  2. the recurrence forward and forward+backward, triton (kernels.rnn) against nn.RNN (cuDNN), at the default
     shape (B 64, T 20, I 256, H 512, 2 layers) and over B in {1, 16, 64, 256} x H in {128, 256, 512, 1024},
     in fp32 (ieee: TF32 off in cuDNN and cuBLAS), tf32 (on in both) and bf16 (torch.autocast), each row naming
     the cuDNN algorithm ATen picks (benchmarks/cuda_bench.py) and the kernels rnn() chose (persistent or
     tiled, and why); where it chose the persistent kernels the batch-tiled ones are timed too, and where only
     the H <= 128 rule kept them out the persistent ones (persistent vs tiled vs cuDNN), with one line for
     issue 11's goal (nn.RNN / persistent forward+backward time at the default shape, >= 2x);
  3. softmax, sampling and cross-entropy (forward+backward) at (1,280 x 10,000) against torch, in GB/s of the
     traffic each op must move and as a fraction of the GPU's measured copy bandwidth;
  4. a default-model training step and a one-sample generation on both backends (benchmarks/model_adapter.py,
     the one place that touches rnnlm);
then writes OUT_DIR/report.md, OUT_DIR/gpu_check.json, plots (OUT_DIR/*.png) and the tests' log, and prints one
line per headline figure (the triton / cuDNN time ratio; below 1 means triton is faster).

Without CUDA the same command runs the same pipeline in Triton's interpreter on the CPU at small shapes, with a few
kernel tests, and marks every file and figure as interpreter figures: they prove the pipeline, not GPU speed.
Timings: CUDA events after warm-up with an L2 flush before every round (cuda_bench.measure), medians.
Exit status: 0 when every stage ran and every test passed, 1 otherwise (the report says what failed).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]

import kernels  # noqa: E402  (settles Triton's mode before triton is imported)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import cuda_bench  # noqa: E402
from model_adapter import model_api  # noqa: E402

STAGES = ("tests", "recurrence", "rows", "model")
PRECISIONS = ("fp32", "tf32", "bf16")
KERNEL_TEST_FILES = ("tests/test_rnn_kernel.py", "tests/test_rnn_persistent.py", "tests/test_rnn_step_kernel.py",
                     "tests/test_softmax_kernel.py", "tests/test_sample_kernel.py",
                     "tests/test_cross_entropy_kernel.py", "tests/test_kernel_host_syncs.py")
# In the interpreter (no GPU) the kernel tests take minutes: a few that cover every op stand for them.
INTERPRETER_TESTS = ("tests/test_rnn_kernel.py::test_tiled_kernel_parity",
                     "tests/test_rnn_persistent.py::test_rnn_falls_back_to_the_tiled_kernel_when_the_flag_is_set",
                     "tests/test_rnn_step_kernel.py::test_one_launch_per_layer_and_no_host_sync",
                     "tests/test_softmax_kernel.py::test_matches_float64_reference",
                     "tests/test_cross_entropy_kernel.py::test_device_checks_cost_no_host_sync",
                     "tests/test_sample_kernel.py::test_device_checks_cost_no_host_sync")


@dataclass
class Plan:
    """Shapes and rounds: the GPU's, or the interpreter's small ones."""

    interpreted: bool
    default: dict  # B, T, I, H, L of the default model's recurrence
    batches: tuple
    hiddens: tuple
    rows: tuple  # (N, V) of the row ops
    model: dict  # V, E, H, L, B, T of the model stage
    gen_length: int
    rounds: int
    warmup: int
    copy_bytes: int
    test_timeout: int

    @classmethod
    def for_device(cls, device: torch.device) -> "Plan":
        if device.type == "cuda":
            return cls(False, dict(B=64, T=20, I=256, H=512, L=2), (1, 16, 64, 256), (128, 256, 512, 1024),
                       (1280, 10_000), dict(V=10_000, E=256, H=512, L=2, B=64, T=20), 100, rounds=20, warmup=3,
                       copy_bytes=1 << 30, test_timeout=420)
        return cls(True, dict(B=4, T=4, I=16, H=32, L=2), (1, 4), (16, 32), (64, 1000),
                   dict(V=200, E=16, H=32, L=2, B=4, T=8), 8, rounds=2, warmup=1, copy_bytes=64 << 20,
                   test_timeout=150)


@dataclass
class Report:
    """Everything gpu_check.json holds."""

    mode: str
    interpreter_figures: bool
    device: str
    torch: str
    triton: str
    date: str
    plan: dict
    command: str
    kernel_tests: dict = field(default_factory=dict)
    copy_bandwidth_gbps: float | None = None
    recurrence: list = field(default_factory=list)
    row_ops: list = field(default_factory=list)
    model: list = field(default_factory=list)
    headlines: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------- helpers
def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2]


@contextlib.contextmanager
def precision_mode(name: str, device: torch.device):
    """fp32: no TF32 anywhere; tf32: TF32 in cuDNN (nn.RNN, and the triton recurrence's precision=None) and in
    cuBLAS (the triton backend's GEMMs); bf16: torch.autocast with bfloat16. Flags are restored afterwards."""
    cudnn_old, matmul_old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = name == "tf32"
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=name == "bf16"):
            yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn_old, matmul_old


def _label(backend: str, precision: str, device: torch.device) -> str:
    if precision == "bf16":
        return "bf16 (autocast)"
    return cuda_bench.precision_label(backend, device)


def _time(fn, device, plan: Plan) -> float:
    return _median(cuda_bench.measure(fn, device, rounds=plan.rounds, warmup=plan.warmup))


# ----------------------------------------------------------------------------------------------------- stages
def _text(data) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def _pytest_spread(plan: Plan) -> list[str]:
    """On a GPU the tests stage is bound by compiling kernels (one CPU core each): one pytest-xdist worker per
    test file where the image has pytest-xdist (a CUDA image does), each test named as it passes, so that a
    stage cut short by its deadline still says what passed. In the interpreter: quiet and serial."""
    if plan.interpreted:
        return ["-q"]
    try:
        import xdist  # noqa: F401
    except ImportError:
        return ["-v"]
    return ["-v", "-n", str(min(len(KERNEL_TEST_FILES), max(1, (os.cpu_count() or 2) - 1))), "--dist", "loadfile"]


def _counts_from_log(log: str) -> dict:
    outcome = {"PASSED": None, "FAILED": "failures", "ERROR": "errors", "SKIPPED": "skipped"}
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for line in log.splitlines():
        words = line.replace("]", " ").split()
        hit = next((w for w in words if w in outcome), None)
        if hit and "::" in line:
            counts["tests"] += 1
            if outcome[hit]:
                counts[outcome[hit]] += 1
    return counts


def run_kernel_tests(out: Path, plan: Plan, timeout: float | None = None) -> dict:
    """The kernel tests in a subprocess (on CUDA: all of them; in the interpreter: INTERPRETER_TESTS), stopped
    after `timeout` seconds (default: the plan's)."""
    timeout = plan.test_timeout if timeout is None else timeout
    junit = out / "kernel_tests.xml"
    targets = list(INTERPRETER_TESTS if plan.interpreted else KERNEL_TEST_FILES)
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "addopts=", "-rs",
           f"--junitxml={junit}", *_pytest_spread(plan), *targets]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        log, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as err:
        log, code = f"{_text(err.stdout)}{_text(err.stderr)}\nTIMEOUT after {timeout} s", -1
    (out / "kernel_tests.log").write_text(_text(log))
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    if junit.is_file():
        for suite in ET.parse(junit).getroot().iter("testsuite"):
            for key in counts:
                counts[key] += int(suite.get(key, 0))
    else:  # stopped before pytest wrote its report: count what the -v log named
        counts = _counts_from_log(_text(log))
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {"command": " ".join(cmd[1:]), "exit_code": code, "passed": passed, **counts,
            "seconds": round(time.perf_counter() - t0, 1), "subset": plan.interpreted,
            "ok": code == 0 and counts["tests"] > 0}


def _recurrence_case(B, T, I, H, L, device, precision, backward: bool, launch_config=None):
    """(cudnn fn, triton fn) for one shape: forward (no grad) or forward+backward (grads of x and every weight).
    launch_config: rnn()'s (None: the launcher's own choice; a LaunchConfig / PersistentConfig forces one)."""
    from kernels.rnn import rnn

    torch.manual_seed(0)
    m = torch.nn.RNN(I, H, L, batch_first=True).to(device)
    x = torch.randn(B, T, I, device=device, requires_grad=backward)
    h0 = torch.randn(L, B, H, device=device)
    inputs = [x, *m.parameters()]
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    g_out = torch.randn(B, T, H, device=device, dtype=dtype)
    g_h = torch.randn(L, B, H, device=device, dtype=dtype)

    def triton_fn():
        return rnn(x, h0, m._flat_weights, num_layers=L, batch_first=True, launch_config=launch_config)

    def cudnn_fn():
        return m(x, h0)

    def wrap(f):
        if backward:
            return lambda: torch.autograd.grad(f(), inputs, (g_out, g_h))
        return lambda: _no_grad(f)

    return wrap(cudnn_fn), wrap(triton_fn)


def _no_grad(f):
    with torch.no_grad():
        return f()


# the precision rnn() resolves to under each setting of precision_mode
KERNEL_PRECISION = {"fp32": "ieee", "tf32": "tf32", "bf16": "bf16"}


def _forced_configs(B, H, precision, device, paths) -> dict:
    """The kernels timed beside rnn()'s own choice: "tiled" (the batch-tiled kernels) where the choice was
    persistent in either direction; "persistent" where it was tiled only by the H <= 128 rule and the grid surely
    fits (one program an SM: cdiv(H, 16) x cdiv(B, 16) <= SMs), which measures that rule. In the interpreter,
    whose choice is always tiled, the persistent kernels run in the one form it can run (one N-slice per batch
    tile), so that the pipeline and its columns are exercised."""
    import triton

    from kernels import _rnn_persistent as P
    from kernels import rnn as K

    kernel_precision = KERNEL_PRECISION[precision]
    forced = {}
    if device.type == "cpu":
        forced["persistent"] = P.default_config(B, H, kernel_precision, device)
    elif any(c is not None and c.path == "persistent" for c in paths):
        forced["tiled"] = K._pick_config(B, H, kernel_precision, device)
    elif H <= 128 and triton.cdiv(H, 16) * triton.cdiv(B, 16) <= torch.cuda.get_device_properties(
            device).multi_processor_count:
        forced["persistent"] = P.gpu_config(H, kernel_precision)
    return forced


def run_recurrence(device, plan: Plan, report: Report) -> None:
    facts = cuda_bench.device_facts(device) if device.type == "cuda" else None
    d = plan.default
    shapes = [(B, H) for B in plan.batches for H in plan.hiddens]
    if (d["B"], d["H"]) not in shapes:
        shapes.insert(0, (d["B"], d["H"]))
    layer_steps = d["T"] * d["L"]
    for precision in PRECISIONS:
        for backward in (False, True):
            for B, H in shapes:
                row = dict(B=B, T=d["T"], I=d["I"], H=H, L=d["L"], precision=precision,
                           mode="forward+backward" if backward else "forward",
                           default_shape=(B, H) == (d["B"], d["H"]))
                with precision_mode(precision, device):
                    cudnn_fn, triton_fn = _recurrence_case(B, d["T"], d["I"], H, d["L"], device, precision, backward)
                    row["cudnn_s"] = _time(cudnn_fn, device, plan)
                    row["triton_s"] = _time(triton_fn, device, plan)
                    # the launcher's choice, made during the warm-up (str(choice): the line it logged)
                    paths = cuda_bench.recurrence_choices(device, batch=B, hidden=H,
                                                          precision=KERNEL_PRECISION[precision], backward=backward)
                    row.update(cuda_bench.choice_info(paths))
                    row["tiled_s"] = row["triton_s"] if "persistent" not in row["recurrence_path"] else None
                    row["persistent_s"] = row["triton_s"] if "tiled" not in row["recurrence_path"] else None
                    for kind, cfg in _forced_configs(B, H, precision, device, paths).items():
                        _, forced_fn = _recurrence_case(B, d["T"], d["I"], H, d["L"], device, precision, backward,
                                                        launch_config=cfg)
                        row[f"{kind}_s"] = _time(forced_fn, device, plan)
                    row["cudnn_precision"] = _label("cudnn", precision, device)
                    row["triton_precision"] = _label("triton", precision, device)
                row["ratio"] = row["triton_s"] / row["cudnn_s"]
                row["us_per_layer_step"] = {who: row[f"{who}_s"] / layer_steps * 1e6
                                            for who in ("cudnn", "triton", "tiled", "persistent") if row[f"{who}_s"]}
                row["tokens_per_s"] = {"cudnn": B * d["T"] / row["cudnn_s"], "triton": B * d["T"] / row["triton_s"]}
                row["cudnn_algorithm"] = "n/a (cpu: ATen's own RNN)" if facts is None else \
                    cuda_bench.cudnn_algorithm_label(
                        backward=backward, hidden_size=H, input_size=d["I"], batch_size=B, seq_len=d["T"],
                        num_layers=d["L"], bidirectional=False,
                        dtype=torch.bfloat16 if precision == "bf16" else torch.float32, **facts)
                report.recurrence.append(row)
                if row["default_shape"]:
                    report.headlines.append(
                        f"recurrence {row['mode']}, default shape, {precision}: triton/cuDNN time ratio "
                        f"{row['ratio']:.2f} ({row['triton_s'] * 1e3:.3f} ms vs {row['cudnn_s'] * 1e3:.3f} ms, "
                        f"{row['recurrence_path']}, cuDNN {row['cudnn_algorithm']})")
    report.headlines.append(_goal_line(report))


def _goal_line(report: Report) -> str:
    """Issue 11's goal, one line: nn.RNN's forward+backward time over the persistent kernels' at the default shape,
    per precision (>= 2x wanted), or why the persistent kernels did not run there."""
    parts = []
    for r in report.recurrence:
        if r["default_shape"] and r["mode"] == "forward+backward":
            if r["persistent_s"]:
                parts.append(f"{r['precision']} {r['cudnn_s'] / r['persistent_s']:.2f}x")
            else:
                parts.append(f"{r['precision']} not persistent ({r['recurrence_path']})")
    return ("persistent recurrence forward+backward, default shape: nn.RNN time / persistent time = "
            + ", ".join(parts) + " (goal >= 2x)")


def run_rows(device, plan: Plan, report: Report) -> None:
    from kernels import DeviceChecks
    from kernels.cross_entropy import cross_entropy
    from kernels.sample import sample
    from kernels.softmax import softmax

    N, V = plan.rows
    report.copy_bandwidth_gbps = cuda_bench.copy_bandwidth(device, plan.copy_bytes)
    torch.manual_seed(0)
    x = torch.randn(N, V, device=device)
    xg = x.clone().requires_grad_()
    t = torch.randint(0, V, (N,), device=device)
    checks = DeviceChecks(device)
    gen = torch.Generator(device=device).manual_seed(0)
    seeds = iter(range(10**9))
    ops = {  # op: (bytes each must move, torch's fn, triton's fn)
        "softmax": (2 * N * V * 4, lambda: torch.softmax(x / 0.8, dim=-1), lambda: softmax(x, 0.8)),
        "sampling": (N * V * 4, lambda: torch.multinomial(torch.softmax(x / 0.8, dim=-1), 1, generator=gen),
                     lambda: sample(x, 0.8, next(seeds), checks=checks)),
        "cross-entropy fwd+bwd": (3 * N * V * 4,
                                  lambda: torch.autograd.grad(F.cross_entropy(xg, t), xg),
                                  lambda: torch.autograd.grad(cross_entropy(xg, t, checks=checks), xg)),
    }
    for op, (nbytes, torch_fn, triton_fn) in ops.items():
        row = {"op": op, "N": N, "V": V, "bytes": nbytes, "torch_s": _time(torch_fn, device, plan),
               "triton_s": _time(triton_fn, device, plan)}
        for who in ("torch", "triton"):
            row[f"{who}_gbps"] = nbytes / row[f"{who}_s"] / 1e9
            row[f"{who}_fraction_of_copy"] = row[f"{who}_gbps"] / report.copy_bandwidth_gbps
        row["ratio"] = row["triton_s"] / row["torch_s"]
        report.row_ops.append(row)
        report.headlines.append(f"{op} ({N} x {V}): triton/torch time ratio {row['ratio']:.2f} "
                                f"({row['triton_gbps']:.3g} vs {row['torch_gbps']:.3g} GB/s, "
                                f"{row['triton_fraction_of_copy']:.2%} of copy bandwidth)")
    checks.check()


def run_model(device, plan: Plan, report: Report) -> None:
    api = model_api()
    m = plan.model
    g = torch.Generator().manual_seed(0)
    x = torch.randint(2, m["V"], (m["B"], m["T"]), generator=g).to(device)
    y = torch.randint(2, m["V"], (m["B"], m["T"]), generator=g).to(device)
    times = {}
    for backend in ("cudnn", "triton"):
        torch.manual_seed(0)
        model = api.build(m["V"], m["E"], m["H"], m["L"], backend, device)
        opt = api.optimizer(model)
        model.train()
        times[("train", backend)] = _time(lambda: api.train_step(model, opt, x, y), device, plan)
        seeds = iter(range(10**9))
        times[("generate", backend)] = _time(lambda: api.generate(model, [2, 3], plan.gen_length, next(seeds)),
                                             device, plan)
    for what, tokens in (("train", m["B"] * m["T"]), ("generate", plan.gen_length)):
        row = {"what": "training step" if what == "train" else "generation (1 sample)", **m,
               "tokens": tokens, "cudnn_s": times[(what, "cudnn")], "triton_s": times[(what, "triton")]}
        row["ratio"] = row["triton_s"] / row["cudnn_s"]
        row["tokens_per_s"] = {b: tokens / row[f"{b}_s"] for b in ("cudnn", "triton")}
        report.model.append(row)
        report.headlines.append(f"{row['what']}, model V {m['V']} E {m['E']} H {m['H']} L {m['L']}: triton/cuDNN "
                                f"time ratio {row['ratio']:.2f} ({row['tokens_per_s']['triton']:,.0f} vs "
                                f"{row['tokens_per_s']['cudnn']:,.0f} tokens/s)")


# ------------------------------------------------------------------------------------------------ report files
def write_plots(out: Path, report: Report) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tag = " — INTERPRETER FIGURES (Triton's interpreter on a CPU, not GPU speed)" if report.interpreter_figures else ""
    files = []
    for mode in ("forward", "forward+backward"):
        fig, axes = plt.subplots(1, len(PRECISIONS), figsize=(5 * len(PRECISIONS), 4), sharey=True)
        for ax, precision in zip(axes, PRECISIONS):
            rows = [r for r in report.recurrence if r["mode"] == mode and r["precision"] == precision]
            for B in sorted({r["B"] for r in rows}):
                pts = sorted((r["H"], r["ratio"]) for r in rows if r["B"] == B)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"B = {B}")
            ax.axhline(1.0, color="gray", lw=0.8, ls="--")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("hidden size H")
            ax.set_title(precision)
            ax.legend(fontsize=8)
        axes[0].set_ylabel("time ratio triton / cuDNN (< 1: triton faster)")
        fig.suptitle(f"Recurrence {mode}, T = {report.plan['default']['T']}, {report.plan['default']['L']} layers "
                     f"on {report.device}{tag}", fontsize=9)
        fig.tight_layout()
        name = f"recurrence_{mode.replace('+', '_')}.png"
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        files.append(name)
    if report.row_ops:
        fig, ax = plt.subplots(figsize=(7, 4))
        ops = [r["op"] for r in report.row_ops]
        xs = range(len(ops))
        ax.bar([i - 0.2 for i in xs], [r["torch_gbps"] for r in report.row_ops], 0.4, label="torch")
        ax.bar([i + 0.2 for i in xs], [r["triton_gbps"] for r in report.row_ops], 0.4, label="triton")
        ax.axhline(report.copy_bandwidth_gbps, color="gray", ls="--", lw=0.8, label="measured copy bandwidth")
        ax.set_xticks(list(xs), ops)
        ax.set_ylabel("GB/s (bytes each op must move / time)")
        N, V = report.plan["rows"]
        ax.set_title(f"Row ops at ({N} x {V}) on {report.device}{tag}", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "row_ops.png", dpi=110)
        plt.close(fig)
        files.append("row_ops.png")
    return files


def _fmt_ms(s: float) -> str:
    return f"{s * 1e3:.3f}"


def _fmt_opt_ms(s: float | None) -> str:
    return "—" if s is None else _fmt_ms(s)


def write_markdown(out: Path, report: Report, plots: list[str]) -> None:
    lines = [f"# make gpu-check: {report.device}", ""]
    if report.interpreter_figures:
        lines += ["**INTERPRETER FIGURES.** No CUDA device: every kernel ran in Triton's interpreter on the CPU, at "
                  "small shapes, against torch on the CPU. These figures prove the pipeline runs; they say nothing "
                  "about GPU speed.", ""]
    lines += [f"- date: {report.date}; torch {report.torch}; triton {report.triton}; command: `{report.command}`",
              "- timing: " + ("CUDA events after warm-up, L2 flushed before every round (benchmarks/cuda_bench.py), "
                              "median of " if not report.interpreter_figures else "time.perf_counter, median of ")
              + f"{report.plan['rounds']} rounds after {report.plan['warmup']} warm-up calls",
              f"- stage seconds: {json.dumps(report.seconds)}", ""]
    kt = report.kernel_tests
    if kt:
        lines += ["## 1. Kernel tests", "",
                  f"{kt.get('passed', 0)} passed, {kt.get('failures', 0)} failed, {kt.get('errors', 0)} errors, "
                  f"{kt.get('skipped', 0)} skipped in {kt.get('seconds')} s "
                  + ("(a subset: the interpreter is slow) " if kt.get("subset") else "")
                  + f"— `{kt.get('command')}`, log in kernel_tests.log", ""]
    if report.recurrence:
        lines += ["## 2. Recurrence: triton vs nn.RNN", "",
                  "triton = rnn() with the launcher's own choice (path: persistent or tiled, forward / backward); "
                  "tiled and persistent = those kernels forced, where they were timed too (see _forced_configs); "
                  "µs per layer-step = time / (T x layers).", "",
                  "| mode | setting | arithmetic (cuDNN / triton) | B | H | path | cuDNN ms | triton ms | tiled ms "
                  "| persistent ms | µs/layer-step cuDNN / triton | triton/cuDNN | cuDNN algorithm |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in report.recurrence:
            steps = r.get("us_per_layer_step", {})
            lines.append(f"| {r['mode']} | {r['precision']} | {r['cudnn_precision']} / {r['triton_precision']} "
                         f"| {r['B']} | {r['H']} | {r.get('recurrence_path', '?')} "
                         f"| {_fmt_ms(r['cudnn_s'])} | {_fmt_ms(r['triton_s'])} | {_fmt_opt_ms(r.get('tiled_s'))} "
                         f"| {_fmt_opt_ms(r.get('persistent_s'))} "
                         f"| {steps.get('cudnn', 0):.1f} / {steps.get('triton', 0):.1f} | {r['ratio']:.2f} "
                         f"| {r['cudnn_algorithm']} |")
        lines.append("")
    if report.row_ops:
        lines += ["## 3. Softmax, sampling, cross-entropy", "",
                  f"Measured copy bandwidth: {report.copy_bandwidth_gbps:.3g} GB/s (read + write).", "",
                  "| op | N x V | torch ms | triton ms | torch GB/s | triton GB/s | triton / copy bw | triton/torch |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in report.row_ops:
            lines.append(f"| {r['op']} | {r['N']} x {r['V']} | {_fmt_ms(r['torch_s'])} | {_fmt_ms(r['triton_s'])} "
                         f"| {r['torch_gbps']:.3g} | {r['triton_gbps']:.3g} | {r['triton_fraction_of_copy']:.2%} "
                         f"| {r['ratio']:.2f} |")
        lines.append("")
    if report.model:
        lines += ["## 4. Model: training step and generation", "",
                  "| what | tokens | cuDNN ms | triton ms | cuDNN tokens/s | triton tokens/s | triton/cuDNN |",
                  "|---|---|---|---|---|---|---|"]
        for r in report.model:
            lines.append(f"| {r['what']} | {r['tokens']} | {_fmt_ms(r['cudnn_s'])} | {_fmt_ms(r['triton_s'])} "
                         f"| {r['tokens_per_s']['cudnn']:,.0f} | {r['tokens_per_s']['triton']:,.0f} "
                         f"| {r['ratio']:.2f} |")
        lines.append("")
    lines += ["## Headlines", ""] + [f"- {h}" for h in report.headlines] + [""]
    lines += [f"![{p}]({p})" for p in plots] + [""]
    if report.errors:
        lines += ["## Errors", ""] + [f"- {e}" for e in report.errors] + [""]
    (out / "report.md").write_text("\n".join(lines))


# -------------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/gpu_check.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="folder for report.md, gpu_check.json, the plots and the tests' log")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--deadline", type=float, default=None, metavar="SECONDS",
                        help="finish within this many seconds: the tests stage gets what the stages before it "
                             "left (give it last), and the report is rewritten after every stage")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    stages = [s for s in args.stages.split(",") if s]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        parser.error(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    plan = Plan.for_device(device)
    if plan.interpreted:
        # one torch thread: on a small shared CPU, torch's OpenMP threads spin against the interpreter's numpy
        # (tiny nn.RNN calls then took 0.1 to 180 ms at random); these figures only prove the pipeline anyway
        torch.set_num_threads(1)
    rt = kernels.runtime_description()
    report = Report(mode="interpreter" if plan.interpreted else "gpu", interpreter_figures=plan.interpreted,
                    device=rt["device"] if device.type == "cuda" else "cpu (Triton interpreter)", torch=rt["torch"],
                    triton=rt["triton"], date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                    plan=asdict(plan), command=" ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]))

    def tests_timeout() -> float:
        if args.deadline is None:
            return plan.test_timeout
        return max(10.0, min(plan.test_timeout, args.deadline - (time.perf_counter() - started) - 30))

    runners = {"tests": lambda: report.kernel_tests.update(run_kernel_tests(out, plan, tests_timeout())),
               "recurrence": lambda: run_recurrence(device, plan, report),
               "rows": lambda: run_rows(device, plan, report),
               "model": lambda: run_model(device, plan, report)}
    for stage in stages:
        t0 = time.perf_counter()
        try:
            runners[stage]()
        except Exception as err:  # noqa: BLE001  (one failed stage must not hide the others' figures)
            report.errors.append(f"{stage}: {type(err).__name__}: {err}")
            (out / f"error_{stage}.txt").write_text(traceback.format_exc())
        report.seconds[stage] = round(time.perf_counter() - t0, 1)
        write_files(out, report, plots=[])  # a run stopped from outside keeps the stages it finished
    return finish(out, report, plan)


def write_files(out: Path, report: Report, plots: list[str]) -> None:
    (out / "gpu_check.json").write_text(json.dumps(asdict(report), indent=1, default=str))
    write_markdown(out, report, plots)


def finish(out: Path, report: Report, plan: Plan) -> int:
    """Plots, the final report files and the printed headlines; the exit status."""
    if report.kernel_tests and not report.kernel_tests["ok"]:
        report.errors.append(f"tests: {report.kernel_tests['failures']} failed, {report.kernel_tests['errors']} "
                             f"errors (exit code {report.kernel_tests['exit_code']}); see kernel_tests.log")
    plots = []
    try:
        plots = write_plots(out, report)
    except Exception as err:  # noqa: BLE001
        report.errors.append(f"plots: {type(err).__name__}: {err}")
    write_files(out, report, plots)
    prefix = "[interpreter figures, not GPU speed] " if plan.interpreted else ""
    for line in report.headlines:
        print(prefix + line)
    if report.kernel_tests:
        kt = report.kernel_tests
        print(f"{prefix}kernel tests: {kt['passed']} passed, {kt['failures']} failed, {kt['errors']} errors, "
              f"{kt['skipped']} skipped")
    for err in report.errors:
        print(f"gpu_check: error: {err}", file=sys.stderr)
    print(f"wrote {out / 'report.md'}", file=sys.stderr)
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
