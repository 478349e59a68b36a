#!/usr/bin/env python3
"""Training tokens/s on 1 and 2 (or more) processes: `torchrun -m rnnlm.train`, one thread per process.

    .venv/bin/python benchmarks/distributed_scaling.py [--nproc-per-node 1,2] [--steps 30] [--json OUT] \
        [-- extra rnnlm.train options]

For each process count N: `python -m torch.distributed.run --standalone --nproc-per-node N -m rnnlm.train` with
the same global --batch-size (strong scaling: each process takes B / N of every batch), OMP_NUM_THREADS=1, for
--steps steps; the figure is metrics.jsonl's tokens_per_s (all processes' tokens) over the second half of the
steps (the first half is warm-up; validation time is not in it). Prints a markdown table with the CPU's name and
the load average, and the speed-up over the first count. On a machine with several GPUs, pass the counts that
fit (--nproc-per-node 1,2,4,8): the same command then runs on NCCL.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from compare_baseline import cpu_name  # noqa: E402  (the CPU's name, as the baseline comparison reports it)


def measure(nproc: int, steps: int, extra: list[str], folder: Path) -> float:
    """tokens/s of the second half of `steps` training steps on `nproc` processes."""
    out = folder / f"n{nproc}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "rnnlm.train", "--out", str(out), "--max-steps", str(steps), "--log-every", str(steps // 2),
           "--eval-every", str(10 * steps), "--sample-length", "0", "--no-progress", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"distributed_scaling: {nproc} processes failed:\n{done.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return float(records[-1]["tokens_per_s"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nproc-per-node", default="1,2", help="process counts, comma-separated")
    parser.add_argument("--steps", type=int, default=30, help="training steps per run (the second half is timed)")
    parser.add_argument("--json", help="also save the figures here")
    parser.add_argument("extra", nargs="*", help="rnnlm.train options after --, such as --data my.txt")
    args = parser.parse_args(argv)
    if args.steps < 4:
        parser.error("--steps must be at least 4")
    counts = [int(n) for n in args.nproc_per_node.split(",")]
    with tempfile.TemporaryDirectory(prefix="rnnlm-scaling-") as tmp:
        rates = {n: measure(n, args.steps, args.extra, Path(tmp)) for n in counts}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"training tokens/s, `torchrun --nproc-per-node N -m rnnlm.train {' '.join(args.extra)}`, one thread "
          f"per process; {cpu_name()}, {os.cpu_count()} cores, load average {load:.1f} after the runs\n")
    print("| processes | tokens/s | speed-up |\n| --- | --- | --- |")
    for n, rate in rates.items():
        print(f"| {n} | {rate:,.0f} | {rate / rates[counts[0]]:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_name(), "load": load, "extra": args.extra,
                                               "tokens_per_s": rates}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
