"""rnnlm.train: the training loss, the CLI end to end on a tiny corpus, bad input, guards."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rnnlm import train
from rnnlm.checkpoint import load_checkpoint
from rnnlm.errors import run_cli
from rnnlm.evaluate import main as evaluate_main
from rnnlm.model import ModelConfig, WordRNN
from rnnlm.training.signals import INTERRUPTED_EXIT

TINY = ["--embed-size", "16", "--hidden-size", "32", "--seq-len", "8", "--batch-size", "4",
        "--no-progress", "--sample-length", "5"]


pytestmark = pytest.mark.usefixtures("one_thread")


def run_train(corpus, out, *args, expect=0):
    """train.main in this process; returns its exit code (asserted to be `expect`)."""
    code = train.main(["--data", str(corpus), "--out", str(out), *TINY, *map(str, args)])
    assert code == expect
    return code


def read_metrics(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_training_loss_equals_model_loss():
    torch.manual_seed(0)
    model = WordRNN(ModelConfig(vocab_size=60, embed_size=8, hidden_size=12))
    x, y = torch.randint(0, 60, (3, 5)), torch.randint(0, 60, (3, 5))
    got, h1 = model.training_loss(x, y, None, None)
    want, h2 = model.loss(x, y, None)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert torch.equal(h1, h2)


# -- end to end -------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_train_end_to_end(tiny_corpus, tmp_path, capsys):
    out = tmp_path / "run"
    # The default recipe's small initial weights (--init rnnlm) take a higher peak rate to learn in 60 tiny steps.
    run_train(tiny_corpus, out, "--max-steps", 60, "--eval-every", 20, "--log-every", 10, "--lr", "0.05")
    stdout = capsys.readouterr().out
    assert stdout.count("valid ppl") == 3
    assert "test perplexity:" in stdout and "sample: 我们" in stdout
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [10, 20, 30, 40, 50, 60]
    for r in rows:
        assert {"step", "epoch", "time", "loss", "train_ppl", "tokens_per_s"} <= set(r)
        assert math.isclose(r["train_ppl"], math.exp(r["loss"]), rel_tol=1e-4)
    assert [r["step"] for r in rows if "valid_ppl" in r] == [20, 40, 60]
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.3          # it learns
    last, best = load_checkpoint(out / "last.pt"), load_checkpoint(out / "best.pt")
    assert last["step"] == 60 and last["train_config"]["max_steps"] == 60
    assert best["best_valid_ppl"] == min(r["valid_ppl"] for r in rows if "valid_ppl" in r)
    assert last["train_config"]["batching"] == "stream" and last["hidden"] is not None  # the default: state carried
    assert {"vocab", "tokenizer", "corpus", "rng_state", "optimizer_state", "data_state"} <= set(last)


@pytest.mark.slow
def test_triton_backend_cli_trains_and_evaluates_like_cudnn(tiny_corpus, tmp_path, device, exact_fp32, capsys):
    """`python -m rnnlm.train --backend triton --max-steps 20` as a user runs it, on the kernel tests' device
    (CUDA when there is one, else interpreted kernels on the CPU); its checkpoint then evaluates (rnnlm.evaluate's
    main, here without TF32) to the same perplexity on both backends."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    subprocess.run([sys.executable, "-m", "rnnlm.train", "--data", str(tiny_corpus), "--out", str(out), *TINY,
                    "--backend", "triton", "--max-steps", "20", "--eval-every", "10", "--device", device.type],
                   check=True, capture_output=True, text=True, env=env)
    metrics = read_metrics(out)
    assert metrics[-1]["step"] == 20 and math.isfinite(metrics[-1]["loss"])
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    ppl = {}
    for backend in ("cudnn", "triton"):
        capsys.readouterr()
        with pytest.raises(SystemExit) as done:
            run_cli(evaluate_main, "rnnlm.evaluate", [str(out / "last.pt"), "--backend", backend,
                                                      "--device", device.type])
        assert done.value.code == 0
        ppl[backend] = float(capsys.readouterr().out.split("perplexity:")[1].split()[0])
    assert ppl["triton"] == pytest.approx(ppl["cudnn"], rel=1e-4)


def test_stream_batching_and_small_vocab(tiny_corpus, tmp_path, capsys):
    """--batching stream carries the hidden state (saved in the checkpoint); a vocabulary larger than the corpus
    has distinct words just takes them all."""
    out = tmp_path / "run"
    run_train(tiny_corpus, out, "--batching", "stream", "--max-steps", 8, "--eval-every", 4,
              "--vocab-size", 100000, "--sample-length", 0)
    last = load_checkpoint(out / "last.pt")
    assert last["hidden"].shape == (2, 4, 32)               # the carried state, (L, B, H)
    assert 3 < len(last["vocab"]) < 1000
    assert last["model_config"]["vocab_size"] == len(last["vocab"])
    assert "sample:" not in capsys.readouterr().out


def test_cudnn_is_the_torch_backend_and_the_library_that_ran_is_printed(tiny_corpus, tmp_path, capsys):
    """--backend cudnn (the torch backend's former name) trains, and a checkpoint that stores it resumes."""
    out = tmp_path / "run"
    run_train(tiny_corpus, out, "--backend", "cudnn", "--max-steps", 2, "--eval-every", 2, "--sample-length", 0)
    assert "backend torch (nn.RNN on ATen, CPU)" in capsys.readouterr().out
    assert load_checkpoint(out / "last.pt")["train_config"]["backend"] == "cudnn"
    assert train.main(["--resume", str(out), "--max-steps", "3", "--no-progress"]) == 0
    assert "backend torch (nn.RNN on ATen, CPU)" in capsys.readouterr().out
    assert load_checkpoint(out / "last.pt")["step"] == 3


# -- bad input: one line, exit code 2 ---------------------------------------------------------------------------

def _cli_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        run_cli(train.main, "rnnlm.train", argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("rnnlm.train: error:"), err
    assert "Traceback" not in "\n".join(err)
    return err[-1]


@pytest.mark.parametrize("args,expected", [
    (["--seq-len", "0"], "--seq-len must be a positive integer"),
    (["--batch-size", "-3"], "--batch-size must be a positive integer"),
    (["--hidden-size", "0"], "--hidden-size must be a positive integer"),
    (["--embed-size", "0"], "--embed-size must be a positive integer"),
    (["--num-layers", "0"], "--num-layers must be a positive integer"),
    (["--vocab-size", "0"], "--vocab-size must be a positive integer"),
    (["--vocab-size", "2"], "--vocab-size must be at least 3"),
    (["--epochs", "0"], "--epochs must be a positive integer"),
    (["--max-steps", "0"], "--max-steps must be a positive integer"),
    (["--eval-every", "0"], "--eval-every must be a positive integer"),
    (["--lr", "0"], "--lr must be a positive number"),
    (["--lr=-1e-3"], "--lr must be a positive number"),
    (["--lr", "nan"], "--lr must be a positive number"),
    (["--time-budget", "0"], "--time-budget must be a positive number"),
    (["--clip", "-1"], "--clip must be a finite number >= 0"),
    (["--dropout", "1"], "--dropout must be in [0, 1)"),
    (["--tie-weights"], "--tie-weights needs --embed-size equal to --hidden-size"),
])
def test_bad_options(tiny_corpus, tmp_path, capsys, args, expected):
    line = _cli_error(["--data", str(tiny_corpus), "--out", str(tmp_path / "o"), *TINY, *args], capsys)
    assert expected in line
    assert not (tmp_path / "o").exists()                     # rejected before anything is written


def test_batch_larger_than_corpus(tiny_corpus, tmp_path, capsys):
    line = _cli_error(["--data", str(tiny_corpus), "--out", str(tmp_path / "o"), *TINY, "--batch-size", "9000"],
                      capsys)
    assert "batch size 9000 is too large" in line and "--batch-size" in line


def test_seq_len_longer_than_corpus(tmp_path, capsys):
    corpus = tmp_path / "short.txt"
    corpus.write_text("我们的祖国充满希望。\n" * 20, encoding="utf-8")
    line = _cli_error(["--data", str(corpus), "--out", str(tmp_path / "o"), *TINY, "--seq-len", "5000"], capsys)
    assert "seq_len" in line


def test_output_folder_not_writable(tiny_corpus, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    line = _cli_error(["--data", str(tiny_corpus), "--out", str(blocker), *TINY], capsys)
    assert "is a file" in line
    line = _cli_error(["--data", str(tiny_corpus), "--out", str(blocker / "sub"), *TINY], capsys)
    assert "cannot create output folder" in line
    if os.geteuid() != 0:                                    # root writes through permission bits
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        line = _cli_error(["--data", str(tiny_corpus), "--out", str(locked), *TINY], capsys)
        assert "not writable" in line


def test_missing_corpus(tmp_path, capsys):
    line = _cli_error(["--data", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "o"), *TINY], capsys)
    assert "nope.txt" in line


# -- guards -----------------------------------------------------------------------------------------------------

def _poison_at(monkeypatch, bad_step: int, where: str):
    """WordRNN.training_loss returning a NaN loss, or a NaN gradient, at call number bad_step."""
    real = WordRNN.training_loss
    calls = {"n": 0}

    def poisoned(model, x, y, hidden, dtype, *args, **kwargs):
        calls["n"] += 1
        loss, h = real(model, x, y, hidden, dtype, *args, **kwargs)
        if calls["n"] == bad_step:
            if where == "loss":
                loss = loss * float("nan")
            else:
                loss.register_hook(lambda g: g * float("inf"))
        return loss, h

    monkeypatch.setattr(WordRNN, "training_loss", poisoned)


@pytest.mark.parametrize("where", ["loss", "grad"])
def test_non_finite_stops_and_keeps_best(tiny_corpus, tmp_path, monkeypatch, capsys, where):
    out = tmp_path / "run"
    run_train(tiny_corpus, out, "--max-steps", 4, "--eval-every", 4, "--sample-length", 0)
    best_before = (out / "best.pt").read_bytes()
    last_before = (out / "last.pt").read_bytes()
    _poison_at(monkeypatch, 3, where)
    # resumes at step 4, so call 3 is step 7; eval every 2 steps writes best.pt at step 6 first
    line = _cli_error(["--resume", str(out), "--max-steps", "20", "--eval-every", "2"], capsys)
    assert "non-finite" in line and "step 7" in line
    assert "best.pt and last.pt" in line and "left as they were" in line
    best_now, last_now = load_checkpoint(out / "best.pt"), load_checkpoint(out / "last.pt")
    assert best_now["step"] == 6 and last_now["step"] == 6  # the step-6 saves, not step 7's
    assert all(torch.isfinite(v).all() for v in last_now["model_state"].values())
    assert best_before != (out / "best.pt").read_bytes() and last_before != (out / "last.pt").read_bytes()


def test_non_finite_at_first_step(tiny_corpus, tmp_path, monkeypatch, capsys):
    _poison_at(monkeypatch, 1, "loss")
    line = _cli_error(["--data", str(tiny_corpus), "--out", str(tmp_path / "o"), *TINY], capsys)
    assert "step 1" in line and "none saved yet" in line
    assert not (tmp_path / "o" / "best.pt").exists() and not (tmp_path / "o" / "last.pt").exists()


def test_deterministic_runs_identical(tiny_corpus, tmp_path):
    runs = []
    for name in ("a", "b"):
        run_train(tiny_corpus, tmp_path / name, "--deterministic", "--dropout", "0.3", "--batching", "windows",
                  "--max-steps", 12, "--log-every", 1, "--eval-every", 12, "--seed", 5, "--sample-length", 0)
        runs.append([r["loss"] for r in read_metrics(tmp_path / name)])
    assert len(runs[0]) == 12 and runs[0] == runs[1]
    assert not torch.are_deterministic_algorithms_enabled()  # restored after main()
    a = load_checkpoint(tmp_path / "a" / "last.pt")["model_state"]
    b = load_checkpoint(tmp_path / "b" / "last.pt")["model_state"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_deterministic_help_names_the_limits(capsys):
    with pytest.raises(SystemExit):
        train.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--deterministic" in text and "--time-budget" in text and "CPU threads" in text


@pytest.mark.slow
def test_sigint_saves_and_exits_cleanly(tiny_corpus, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "rnnlm.train", "--data", str(tiny_corpus), "--out", str(out), *TINY,
           "--log-every", "1", "--eval-every", "100000", "--epochs", "1000"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        metrics = out / "metrics.jsonl"
        while time.monotonic() < deadline and proc.poll() is None:
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == INTERRUPTED_EXIT, stderr
    assert "Traceback" not in stderr
    assert f"python -m rnnlm.train --resume {out}" in stderr
    last = load_checkpoint(out / "last.pt")
    assert last["step"] >= 3
    assert last["step"] == read_metrics(out)[-1]["step"]
