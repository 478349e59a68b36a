"""benchmarks/compare_baseline.py end to end on the tiny corpus: it runs the tutorial script and ours, parses
both, and writes every row of its table. The ratios on a tiny corpus mean nothing; the script's plumbing does."""
from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from rnnlm.report.ceilings import PAIRED_ROUNDS

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "compare_baseline.py"
BASELINE = REPO.parent / "shared" / "baseline" / "tutorial_rnnlm.py"


def run_compare(*args, cwd=REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


@pytest.mark.slow
@pytest.mark.skipif(not BASELINE.is_file(), reason=f"the baseline script {BASELINE} is not there")
def test_compare_baseline_writes_every_row(tiny_corpus, tmp_path):
    out = tmp_path / "compare.json"
    done = run_compare("--data", tiny_corpus, "--steps", 6, "--log-every", 2, "--warmup-windows", 1,
                       "--baseline-batches", 2, "--baseline-runs", 1, "--gen-length", 20, "--gen-repeats", 1,
                       "--json", out)
    assert done.returncode in (0, 1), done.stderr[-3000:]   # 1: some target missed, as expected on a toy corpus
    table = json.loads(out.read_text(encoding="utf-8"))
    rows = {r["metric"]: r for r in table["rows"]}
    assert set(rows) == {"tokenize (first run) s", "tokenize (cached) s", "train fp32 tokens/s",
                         "train bf16 tokens/s", "train bf16 vs fp32 tokens/s", "valid ppl @6 bf16 vs fp32",
                         "valid ppl @6 fp32 seed 1 vs 0", "generate tokens/s"}
    for name in ("tokenize (first run) s", "train fp32 tokens/s", "train bf16 tokens/s", "generate tokens/s"):
        assert math.isfinite(rows[name]["ratio"]) and rows[name]["ratio"] > 0, rows[name]
        assert rows[name]["ratio"] == pytest.approx(
            rows[name]["baseline"] / rows[name]["ours"] if name.startswith("tokenize")
            else rows[name]["ours"] / rows[name]["baseline"])
    assert rows["tokenize (cached) s"]["pass"] is True                 # the second run read the cache
    ours = table["ours"]
    assert ours["train_fp32"]["valid_ppl"] != ours["train_fp32_reference"]["valid_ppl"]  # another seed really ran
    drift = abs(ours["train_bf16"]["valid_ppl"] / ours["train_fp32"]["valid_ppl"] - 1)
    assert rows["valid ppl @6 bf16 vs fp32"]["pass"] is (drift <= 0.02)
    assert rows["valid ppl @6 fp32 seed 1 vs 0"]["pass"] is None         # context, not a check
    for line in ("tokenize (first run) s", "train bf16 tokens/s", "generate tokens/s", "ceilings, measured"):
        assert line in done.stdout
    # the ceilings: ours against the machine's own, for the precision that ran, with the tutorial's ratio
    ceilings, speeds = table["ceilings"], {r["metric"].split(" (")[0]: r for r in table["ceiling_rows"]}
    assert set(speeds) == {"train fp32", "train bf16", "generate"}
    assert all(ceilings["gemm"][p]["flop_per_s"] > 0 for p in ("fp32", "bf16"))
    assert ceilings["bandwidth"]["bytes_per_s"] > 0
    ran = {"train fp32": ours["train_fp32"]["precision_ran"], "train bf16": ours["train_bf16"]["precision_ran"],
           "generate": ours["generate"]["output_precision"]}
    assert ran["train fp32"] == "fp32" and ran["train bf16"] in ("fp32", "bf16")
    for name, r in speeds.items():
        kind = "generate_tokens_per_s" if name == "generate" else "train_tokens_per_s"
        assert r["metric"] == f"{name} (ran {ran[name]})"
        assert r["ceiling"] == pytest.approx(ceilings[kind][ran[name]])
        assert r["fraction"] == pytest.approx(r["ours"] / r["ceiling"])
        assert r["vs_tutorial"] == pytest.approx(rows[f"{name} tokens/s"]["ratio"])
        # paired: our unit and the ceiling's work for it in turn, round after round; the target judged on it
        paired = r["paired"]
        assert len(paired["fractions"]) == PAIRED_ROUNDS and paired["fractions"] == sorted(paired["fractions"])
        assert paired["fraction"] == pytest.approx(statistics.median(paired["fractions"])) and paired["fraction"] > 0
        assert r["pass"] is (paired["fraction"] >= (0.7 if name == "generate" else 0.9))
    assert "paired fraction" in done.stdout


def test_compare_baseline_missing_baseline_is_one_line(tmp_path):
    done = run_compare("--baseline", tmp_path / "nope.py")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "nope.py" in done.stderr and "is not there" in done.stderr
