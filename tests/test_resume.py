"""Exact resume: N steps, stop, resume, M more steps == N + M steps in one go, bit for bit on the CPU; and a
resume that would not continue the same run is refused, with the differences listed."""
from __future__ import annotations

import pytest
import torch

from rnnlm import train
from rnnlm.checkpoint import load_checkpoint

from test_train import read_metrics, run_train, _cli_error

# Short epochs, so that runs cross epoch boundaries: the tiny corpus's training split (5,289 tokens) makes 21
# windows per epoch as 32 streams of 8 tokens, and 20 batches per epoch of 256 random windows of 8 tokens.
BATCHES = {"stream": ["--batching", "stream", "--batch-size", "32"],
           "windows": ["--batching", "windows", "--batch-size", "256"]}
EPOCH_STEPS = {"stream": 21, "windows": 20}
# The schedule spans 40 steps whatever --max-steps says, so the resumed part continues it mid-decay.
COMMON = ["--seq-len", "8", "--dropout", "0.25", "--num-layers", "2", "--sample-length", "0", "--warmup", "5",
          "--schedule-steps", "40"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _assert_same_state(a: dict, b: dict) -> None:
    assert a["step"] == b["step"] and a["epoch"] == b["epoch"]
    assert a["data_state"]["position"] == b["data_state"]["position"]
    for key, value in a["model_state"].items():
        assert torch.equal(value, b["model_state"][key]), key
    sa, sb = a["optimizer_state"]["state"], b["optimizer_state"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for key in sa[i]:
            assert torch.equal(sa[i][key], sb[i][key]), (i, key)
    if a["hidden"] is None:
        assert b["hidden"] is None
    else:
        assert torch.equal(a["hidden"], b["hidden"])
    assert torch.equal(a["rng_state"]["torch"], b["rng_state"]["torch"])


def _check_resume(corpus, tmp_path, n: int, m: int, *args) -> None:
    common = [*COMMON, "--eval-every", "10", "--log-every", "1", *args]
    run_train(corpus, tmp_path / "split", "--max-steps", n, *common)
    first = load_checkpoint(tmp_path / "split" / "last.pt")
    assert first["step"] == n
    at_epoch_end = first["data_state"]["position"] == first["data_state"].get("num_windows",
                                                                               first["data_state"].get("num_batches"))
    assert first["epoch"] == (1 if at_epoch_end else 0)
    code = train.main(["--resume", str(tmp_path / "split"), "--max-steps", str(n + m), "--no-progress"])
    assert code == 0
    run_train(corpus, tmp_path / "whole", "--max-steps", n + m, *common)
    resumed = load_checkpoint(tmp_path / "split" / "last.pt")
    whole = load_checkpoint(tmp_path / "whole" / "last.pt")
    _assert_same_state(resumed, whole)
    # the logged losses agree step by step too
    split_losses = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "split")}
    whole_losses = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "whole")}
    assert split_losses == whole_losses


@pytest.mark.slow
@pytest.mark.parametrize("batching", ["stream", "windows"])
@pytest.mark.parametrize("where", ["mid-epoch", "end-of-epoch"])
def test_resume_bit_identical_cudnn(tiny_corpus, tmp_path, batching, where):
    """Stopped in the middle of epoch 1 (the resumed part crosses into epoch 2), or exactly at its end."""
    n = 9 if where == "mid-epoch" else EPOCH_STEPS[batching]
    _check_resume(tiny_corpus, tmp_path, n, EPOCH_STEPS[batching] + 5 - n, *BATCHES[batching], "--backend", "cudnn")


def test_resume_bit_identical_bf16(tiny_corpus, tmp_path):
    _check_resume(tiny_corpus, tmp_path, 4, 3, "--precision", "bf16", "--backend", "cudnn", *BATCHES["stream"])


@pytest.mark.slow
def test_resume_bit_identical_triton(tiny_corpus, tmp_path):
    _check_resume(tiny_corpus, tmp_path, 3, 2, "--backend", "triton", "--embed-size", "8", "--hidden-size", "16",
                  *BATCHES["stream"])


# -- refusals ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished_run(tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    run_train(tiny_corpus, out, "--max-steps", 2, "--eval-every", 2, "--sample-length", 0)
    return out


@pytest.mark.parametrize("args,expected", [
    (["--hidden-size", "64"], ["--hidden-size 32 in the checkpoint, 64 given"]),
    (["--hidden-size", "64", "--num-layers", "3"], ["--hidden-size 32", "--num-layers 2 in the checkpoint, 3 given"]),
    (["--no-hmm"], ["--hmm True in the checkpoint, False given"]),
    (["--vocab-size", "50"], ["--vocab-size 10000 in the checkpoint, 50 given"]),
    (["--batch-size", "8"], ["--batch-size 4 in the checkpoint, 8 given"]),
])
def test_resume_refuses_changed_settings(finished_run, tmp_path, capsys, args, expected):
    line = _cli_error(["--resume", str(finished_run), "--no-progress", *args], capsys)
    assert "cannot resume" in line
    for text in expected:
        assert text in line


def test_resume_refuses_other_corpus(finished_run, tmp_path, capsys):
    other = tmp_path / "other.txt"
    text = ("改革开放是强国之路，" * 5 + "我们的祖国充满希望。\n") * 300
    other.write_text(text, encoding="utf-8")
    line = _cli_error(["--resume", str(finished_run), "--data", str(other), "--no-progress"], capsys)
    assert "cannot resume" in line and "corpus content differs" in line and "vocabulary differs" in line


def test_resume_refuses_edited_corpus(tiny_corpus, tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(tiny_corpus.read_bytes())
    run_train(corpus, tmp_path / "run", "--max-steps", 2, "--eval-every", 2, "--sample-length", 0)
    with open(corpus, "a", encoding="utf-8") as f:
        f.write("新华社北京一月一日电。\n")
    line = _cli_error(["--resume", str(tmp_path / "run"), "--no-progress"], capsys)
    assert "corpus content differs" in line


def test_resume_same_content_elsewhere_and_overrides(finished_run, tiny_corpus, tmp_path):
    """The same corpus at another path is the same corpus; run-steering options may change on resume."""
    moved = tmp_path / "moved.txt"
    moved.write_bytes(tiny_corpus.read_bytes())
    code = train.main(["--resume", str(finished_run / "last.pt"), "--data", str(moved), "--out",
                       str(tmp_path / "cont"), "--max-steps", "4", "--lr", "0.002", "--no-progress",
                       "--lr-schedule", "constant", "--warmup", "0"])
    assert code == 0
    last = load_checkpoint(tmp_path / "cont" / "last.pt")
    assert last["step"] == 4 and last["train_config"]["lr"] == 0.002
    assert last["optimizer_state"]["param_groups"][0]["lr"] == 0.002


def test_resume_missing(tmp_path, capsys):
    line = _cli_error(["--resume", str(tmp_path / "nothing")], capsys)
    assert "does not exist" in line
    (tmp_path / "empty").mkdir()
    line = _cli_error(["--resume", str(tmp_path / "empty")], capsys)
    assert "has no last.pt" in line
