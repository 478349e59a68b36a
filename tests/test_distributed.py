"""Training on several processes (torchrun, Gloo on the CPU): 2 processes x B/2 train the same model as 1 process
x B; every rank stops together on a NaN or a signal, and rank 0 saves; a dead rank makes the other exit; a
2-process run resumes bit for bit; evaluation and batches split into disjoint shards that cover everything.

The runs are real torchrun launches (`python -m torch.distributed.run --standalone`, which picks a free port);
several runs share one launch through tests/distributed_runs.py, to pay for starting processes once."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rnnlm.checkpoint import load_checkpoint
from rnnlm.data import StreamBatches, WindowBatches
from rnnlm.errors import UsageError
from rnnlm.evaluation import evaluate_tokens
from rnnlm.model import ModelConfig, WordRNN

from test_train import TINY, _cli_error, read_metrics, run_train

pytestmark = pytest.mark.usefixtures("one_thread")

HERE = Path(__file__).parent
ROOT = HERE.parent
# 20 steps of batch 8 (windows) or 8 streams (stream), evaluation only at the end
SHORT = [*TINY, "--batch-size", "8", "--sample-length", "0", "--eval-every", "1000", "--log-every", "5"]


# -- shards: in one process ----------------------------------------------------------------------------------------
def test_stream_shards_are_the_rows_of_the_global_batch():
    tokens = torch.arange(203)
    whole = StreamBatches(tokens, 6, 5)
    parts = [StreamBatches(tokens, 6, 5, shard=(r, 3)) for r in range(3)]
    assert all(len(p) == len(whole) for p in parts)
    for (x, y), *shards in zip(whole, *parts):
        assert torch.equal(torch.cat([s[0] for s in shards]), x) and torch.equal(torch.cat([s[1] for s in shards]), y)
    assert parts[1].state_dict() == whole.state_dict()  # the position is global: the same on every rank


def test_window_shards_are_disjoint_parts_of_the_global_batch():
    tokens = torch.arange(500)
    whole = WindowBatches(tokens, 8, 4, torch.Generator().manual_seed(3))
    parts = [WindowBatches(tokens, 8, 4, torch.Generator().manual_seed(3), shard=(r, 2)) for r in range(2)]
    for _epoch in range(2):
        for (x, y), (x0, y0), (x1, y1) in zip(whole, *parts):
            assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)
            assert not set(x0[:, 0].tolist()) & set(x1[:, 0].tolist())


def test_batch_size_must_divide_among_processes():
    with pytest.raises(UsageError, match="batch_size 6 is the global batch and must be a multiple of the 4"):
        StreamBatches(torch.arange(100), 6, 5, shard=(0, 4))
    with pytest.raises(UsageError, match="multiple of the 4"):
        WindowBatches(torch.arange(100), 6, 5, shard=(1, 4))


@pytest.mark.parametrize("n,batch_size,world", [(300, 16, 2), (300, 16, 3), (40, 16, 5), (9, 16, 4)])
def test_evaluation_shards_cover_every_target_once(n, batch_size, world):
    torch.manual_seed(0)
    model = WordRNN(ModelConfig(vocab_size=30, embed_size=8, hidden_size=12, num_layers=2))
    tokens = torch.randint(0, 30, (n,))
    whole = evaluate_tokens(model, tokens, batch_size=batch_size, window=7)
    parts = [evaluate_tokens(model, tokens, batch_size=batch_size, window=7, shard=(r, world)) for r in range(world)]
    assert sum(p.n_targets for p in parts) == whole.n_targets == n - 1
    assert sum(p.nll_sum for p in parts) == pytest.approx(whole.nll_sum, rel=1e-6)


# -- runs under torchrun -------------------------------------------------------------------------------------------
def _env(**extra) -> dict[str, str]:
    # one thread per process; the test's cache folder (RNNLM_CACHE_DIR) is inherited
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra}


def torchrun(args, nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "--monitor-interval=0.1", *map(str, args)]


def run_many(tmp_path: Path, runs: list[dict], **env) -> tuple[list[int], subprocess.CompletedProcess]:
    """Several rnnlm.train runs in one 2-process launch (tests/distributed_runs.py); their exit codes."""
    spec, out = tmp_path / "runs.json", tmp_path / "codes.json"
    spec.write_text(json.dumps(runs))
    proc = subprocess.run(torchrun([HERE / "distributed_runs.py", spec, out]), capture_output=True, text=True,
                          env=_env(**env), timeout=600)
    assert out.exists(), proc.stderr[-3000:]
    return json.loads(out.read_text()), proc


def _train_argv(corpus, out, *args) -> list[str]:
    return ["--data", str(corpus), "--out", str(out), *SHORT, *map(str, args)]


def _relative_differences(a: dict, b: dict) -> dict[str, float]:
    return {k: float((a[k].double() - b[k].double()).norm() / b[k].double().norm()) for k in a}


CASES = {"windows": ["--batching", "windows"], "stream": ["--batching", "stream"],
         "triton": ["--batching", "stream", "--backend", "triton"], "bf16": ["--batching", "windows", "--precision", "bf16"]}
# fp32: the order of the gradient sums (DDP adds two half-batch sums); bf16: the output layer's operands are
# rounded to bf16 (unit roundoff 2^-8), and a different fp32 sum before a rounding can move it by one bf16 ulp
TOLERANCE = {"windows": 1e-6, "stream": 1e-6, "triton": 1e-6, "bf16": 2.0**-8}


@pytest.mark.slow
def test_two_processes_train_what_one_process_trains(tiny_corpus, tmp_path):
    """2 processes x 4 sequences == 1 process x 8 for 20 steps (windows, stream, the triton backend in the
    interpreter, bf16), within fp32 reduction order; the validation perplexity is the one-process figure. Also: only
    rank 0 tokenized, and a NaN on rank 1 stops both ranks at that step, naming rank 1."""
    runs = [{"argv": _train_argv(tiny_corpus, tmp_path / f"two-{name}", "--max-steps", 20, *args)}
            for name, args in CASES.items()]
    runs.append({"argv": _train_argv(tiny_corpus, tmp_path / "nan", "--max-steps", 20), "poison_rank": 1,
                 "poison_step": 3})
    codes, proc = run_many(tmp_path, runs, RNNLM_CACHE_DIR=str(tmp_path / "cache"))
    assert codes == [0] * len(CASES) + [2], proc.stderr[-3000:]
    # one writer: each run's lines once
    assert proc.stdout.count("training stopped at step 20") == proc.stdout.count("test perplexity") == len(CASES)
    assert (tmp_path / "tokenized.0").read_text() == "1\n" and not (tmp_path / "tokenized.1").exists()
    errors = [line for line in proc.stderr.splitlines() if "non-finite" in line]
    assert len(errors) == 1 and "step 3: the loss is NaN or infinite on rank 1" in errors[0], proc.stderr[-3000:]
    assert not (tmp_path / "nan" / "last.pt").exists()

    for name, args in CASES.items():
        run_train(tiny_corpus, tmp_path / f"one-{name}", *SHORT[len(TINY):], "--max-steps", 20, *args)
        one, two = (load_checkpoint(tmp_path / f"{k}-{name}" / "last.pt") for k in ("one", "two"))
        assert two["step"] == one["step"] == 20 and two["world_size"] == 2
        diffs = _relative_differences(two["model_state"], one["model_state"])
        assert max(diffs.values()) < TOLERANCE[name], (name, diffs)
        assert two["best_valid_ppl"] == pytest.approx(one["best_valid_ppl"], rel=TOLERANCE[name])
        if one["hidden"] is not None:  # the streams' state: rank 0's rows, then rank 1's
            torch.testing.assert_close(two["hidden"], one["hidden"], rtol=1e-5, atol=1e-6)
        losses = [[r["loss"] for r in read_metrics(tmp_path / f"{k}-{name}")] for k in ("one", "two")]
        assert len(losses[1]) == 4 and losses[1] == pytest.approx(losses[0], rel=TOLERANCE[name])


def _children(pid: int) -> dict[int, int]:
    """{rank: pid} of the workers torchrun `pid` started (from their environment)."""
    ranks = {}
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        rank = next((int(e[5:]) for e in env if e.startswith(b"RANK=")), None)
        if rank is not None:
            ranks[rank] = int(child)
    return ranks


def _start_long_run(tiny_corpus, out, *args) -> subprocess.Popen:
    cmd = torchrun(["-m", "rnnlm.train", *_train_argv(tiny_corpus, out, "--epochs", 1000, "--log-every", 1,
                                                       "--dist-timeout", 30, *args)])
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())


def _wait_for_metrics(proc, out: Path, lines: int) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "metrics.jsonl").exists() and len((out / "metrics.jsonl").read_text().splitlines()) >= lines:
            return
        time.sleep(0.1)
    raise AssertionError(f"no {lines} metrics lines: {proc.poll()} {proc.communicate(timeout=60)}")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the workers in /proc")
def test_a_killed_rank_stops_the_other(tiny_corpus, tmp_path):
    out = tmp_path / "run"
    proc = _start_long_run(tiny_corpus, out, "--eval-every", 3)
    try:
        _wait_for_metrics(proc, out, 4)
        os.kill(_children(proc.pid)[1], signal.SIGKILL)
        killed = time.monotonic()
        _, stderr = proc.communicate(timeout=60)
        assert time.monotonic() - killed < 60
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "rank 0 of 2: another process stopped answering" in stderr, stderr[-3000:]
    last = load_checkpoint(out / "last.pt")
    assert last["step"] >= 3 and last["step"] % 3 == 0 and last["world_size"] == 2


@pytest.mark.slow
def test_sigterm_stops_every_rank_and_resume_is_bit_identical(tiny_corpus, tmp_path, capsys):
    """SIGTERM to torchrun: both ranks stop at the same step and rank 0 saves last.pt; resumed for 5 more steps
    on 2 processes, the run ends where an uninterrupted 2-process run ends, bit for bit (stream batching: the
    hidden state of both ranks' streams is saved and restored)."""
    # a fixed schedule length: the interrupted run and the whole one decay their learning rate over the same steps
    stream = ["--batching", "stream", "--dropout", "0.25", "--num-layers", "2", "--schedule-steps", "40"]
    split = tmp_path / "split"
    proc = _start_long_run(tiny_corpus, split, *stream, "--eval-every", 1000)
    try:
        _wait_for_metrics(proc, split, 3)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    # one line from rank 0; the only traceback is torchrun's own (its agent re-raises the signal)
    assert stderr.count("SIGTERM received") == 1 and "Resume with: torchrun" in stderr, stderr[-3000:]
    assert not re.search(r'File ".*/rnnlm/', stderr), stderr[-3000:]
    saved = load_checkpoint(split / "last.pt")
    n = saved["step"]
    assert n >= 3 and n == read_metrics(split)[-1]["step"] and saved["hidden"].shape[1] == 8

    # a different number of processes is refused, in one line
    line = _cli_error(["--resume", str(split), "--no-progress"], capsys)
    assert "saved by 2 process(es) and this run has 1; resume it with torchrun with 2 processes" in line

    whole = tmp_path / "whole"
    codes, proc = run_many(tmp_path, [
        {"argv": ["--resume", str(split), "--max-steps", str(n + 5), "--no-progress"]},
        {"argv": _train_argv(tiny_corpus, whole, "--max-steps", n + 5, "--log-every", 1, "--eval-every", 1000,
                             *stream)}])
    assert codes == [0, 0], proc.stderr[-3000:]
    a, b = load_checkpoint(split / "last.pt"), load_checkpoint(whole / "last.pt")
    assert a["step"] == b["step"] == n + 5
    for key in a["model_state"]:
        assert torch.equal(a["model_state"][key], b["model_state"][key]), key
    assert torch.equal(a["hidden"], b["hidden"])
    for r in range(2):
        assert torch.equal(a["rank_rng_states"][r]["torch"], b["rank_rng_states"][r]["torch"])
    split_losses = {r["step"]: r["loss"] for r in read_metrics(split)}
    assert all(split_losses[r["step"]] == r["loss"] for r in read_metrics(whole))
