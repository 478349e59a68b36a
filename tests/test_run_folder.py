"""The run folder keeps one run's history: a new run refuses a folder that holds another (or replaces it with
--overwrite), two processes never share a folder (a lock that dies with its process), a resume cuts metrics.jsonl
back to its checkpoint, a kill between best.pt and last.pt never lets a worse model replace best.pt, and a full
disk leaves metrics.jsonl valid."""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rnnlm import train
from rnnlm.checkpoint import load_checkpoint, save_checkpoint
from rnnlm.training import run_dir, trainer
from rnnlm.training.run_dir import RunFolder

from test_train import TINY, _cli_error, read_metrics, run_train

pytestmark = pytest.mark.usefixtures("one_thread")

SHORT = ["--max-steps", 4, "--eval-every", 2, "--log-every", 1, "--sample-length", 0]


@pytest.fixture(scope="module")
def done_run(tiny_corpus, tmp_path_factory):
    """A finished 4-step run (checkpoints at steps 2 and 4, a metrics line per step); tests copy it."""
    out = tmp_path_factory.mktemp("done") / "run"
    run_train(tiny_corpus, out, *SHORT)
    return out


@pytest.fixture
def run_copy(done_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(done_run, out)
    return out


def test_new_run_refuses_a_folder_that_holds_a_run(tiny_corpus, run_copy, capsys):
    before = {name: (run_copy / name).read_bytes() for name in ("best.pt", "last.pt", "metrics.jsonl")}
    line = _cli_error(["--data", str(tiny_corpus), "--out", str(run_copy), *TINY, "--max-steps", "2"], capsys)
    assert "is not empty" in line and f"--resume {run_copy}" in line and "--overwrite" in line
    assert all((run_copy / name).read_bytes() == data for name, data in before.items())  # untouched


def test_overwrite_replaces_the_run(tiny_corpus, run_copy):
    run_train(tiny_corpus, run_copy, "--max-steps", 1, "--eval-every", 5, "--log-every", 1, "--sample-length", 0,
              "--overwrite")
    assert [r["step"] for r in read_metrics(run_copy)] == [1]        # a fresh metrics file
    assert load_checkpoint(run_copy / "last.pt")["step"] == 1
    assert load_checkpoint(run_copy / "best.pt")["step"] == 1        # not the old run's step-4 best.pt


def test_new_run_refuses_a_folder_with_other_files(tiny_corpus, tmp_path, capsys):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "notes.txt").write_text("mine")
    line = _cli_error(["--data", str(tiny_corpus), "--out", str(tmp_path / "o"), *TINY], capsys)
    assert "is not empty (it holds notes.txt)" in line


def test_empty_paths_refused(tiny_corpus, capsys):
    assert "--out is empty" in _cli_error(["--data", str(tiny_corpus), "--out", "", *TINY], capsys)
    assert "--resume is empty" in _cli_error(["--resume", ""], capsys)
    assert "--data is empty" in _cli_error(["--data", "", *TINY], capsys)


def test_second_process_is_refused_naming_the_holder(tiny_corpus, run_copy, capsys):
    holder = RunFolder(run_copy)
    holder.lock()
    try:
        last = (run_copy / "last.pt").read_bytes()
        line = _cli_error(["--resume", str(run_copy), "--max-steps", "6", "--no-progress"], capsys)
        assert "in use by another rnnlm process" in line and "pid" in line and "--out" in line
        assert (run_copy / "last.pt").read_bytes() == last
        line = _cli_error(["--data", str(tiny_corpus), "--out", str(run_copy), *TINY, "--overwrite"], capsys)
        assert "in use by another rnnlm process" in line
        assert (run_copy / "last.pt").read_bytes() == last
    finally:
        holder.unlock()
    assert train.main(["--resume", str(run_copy), "--max-steps", "5", "--no-progress"]) == 0


def test_lock_dies_with_a_killed_process(tmp_path):
    """kill -9 of the holder frees the folder at once: no stale lock."""
    code = ("import sys, time; from rnnlm.training.run_dir import RunFolder; RunFolder(sys.argv[1]).lock(); "
            "print('locked', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "r")], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(Exception, match=f"pid {proc.pid}"):
            RunFolder(tmp_path / "r").lock()
    finally:
        proc.kill()
        proc.wait(timeout=30)
    folder = RunFolder(tmp_path / "r")
    folder.lock()
    folder.unlock()


def test_resume_cuts_metrics_back_to_the_checkpoint(run_copy):
    """After a kill -9 past the last checkpoint (step 4), metrics.jsonl has lines for steps 5 and 6 and a torn
    one; the resume drops them, so each step appears once, in order, and time never goes backwards."""
    with open(run_copy / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 5, "time": 999.0, "loss": 1.0}) + "\n")
        f.write(json.dumps({"step": 6, "time": 1000.0, "loss": 1.0}) + "\n")
        f.write('{"step": 7, "ti')
    assert train.main(["--resume", str(run_copy), "--max-steps", "6", "--no-progress"]) == 0
    rows = read_metrics(run_copy)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(r["loss"] != 1.0 for r in rows)
    times = [r["time"] for r in rows]
    assert times == sorted(times)


def test_resume_into_another_folder_copies_the_history(run_copy, tmp_path):
    assert train.main(["--resume", str(run_copy / "last.pt"), "--out", str(tmp_path / "cont"), "--max-steps", "5",
                       "--no-progress"]) == 0
    assert [r["step"] for r in read_metrics(tmp_path / "cont")] == [1, 2, 3, 4, 5]


def test_checkpoints_written_best_first(tiny_corpus, tmp_path, monkeypatch):
    order = []

    def recording(path, payload):
        order.append(path.name)
        save_checkpoint(path, payload)

    monkeypatch.setattr(trainer, "save_checkpoint", recording)
    run_train(tiny_corpus, tmp_path / "r", "--max-steps", 2, "--eval-every", 2, "--sample-length", 0)
    assert order == ["best.pt", "last.pt"]


def test_kill_between_best_and_last_keeps_the_better_best(run_copy):
    """A kill after best.pt was written and before last.pt: best.pt records a better perplexity than last.pt.
    The resume must not replace that best.pt with a model that is only better than last.pt's record."""
    best = load_checkpoint(run_copy / "best.pt")
    best["best_valid_ppl"] = 1.5  # better than anything the next steps reach
    save_checkpoint(run_copy / "best.pt", best)
    kept = (run_copy / "best.pt").read_bytes()
    assert train.main(["--resume", str(run_copy), "--max-steps", "8", "--eval-every", "2", "--no-progress"]) == 0
    assert (run_copy / "best.pt").read_bytes() == kept
    assert load_checkpoint(run_copy / "last.pt")["best_valid_ppl"] == 1.5


def test_disk_full_while_appending_metrics(tiny_corpus, tmp_path, monkeypatch, capsys):
    """A write that fails half-way (ENOSPC) is cut off: one line, exit 2, and every line of the file parses."""
    real = run_dir._write_all
    calls = {"n": 0}

    def full_disk(fd, data):
        calls["n"] += 1
        if calls["n"] == 3:
            real(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data)

    monkeypatch.setattr(run_dir, "_write_all", full_disk)
    line = _cli_error(["--data", str(tiny_corpus), "--out", str(tmp_path / "r"), *TINY, "--max-steps", "6",
                       "--log-every", "1", "--eval-every", "2"], capsys)
    assert "No space left on device" in line and "metrics.jsonl" in line and "--resume" in line
    text = (tmp_path / "r" / "metrics.jsonl").read_text()
    assert text.endswith("\n")
    assert [json.loads(row)["step"] for row in text.splitlines()] == [1, 2]
    assert load_checkpoint(tmp_path / "r" / "last.pt")["step"] == 2
    assert train.main(["--resume", str(tmp_path / "r"), "--max-steps", "3", "--no-progress"]) == 0  # disk freed
    assert [r["step"] for r in read_metrics(tmp_path / "r")] == [1, 2, 3]


def test_an_evaluation_line_is_on_disk_before_its_checkpoints(tiny_corpus, tmp_path, monkeypatch):
    """A kill between an evaluation's checkpoint and its metrics line would leave last.pt at a step the history
    lacks (the resume cannot write it again): so the line goes first, whatever the checkpoint (best.pt, last.pt)."""
    out = tmp_path / "run"
    seen = []
    save = trainer.Trainer.save

    def checked_save(self, path):
        rows = read_metrics(out)
        seen.append((path.name, self.progress.step, bool(rows) and rows[-1]["step"] == self.progress.step
                     and "valid_ppl" in rows[-1]))
        return save(self, path)

    monkeypatch.setattr(trainer.Trainer, "save", checked_save)
    run_train(tiny_corpus, out, *SHORT)
    assert [(name, step) for name, step, _ in seen if name == "last.pt"] == [("last.pt", 2), ("last.pt", 4)]
    assert all(line_first for _, _, line_first in seen), seen


def test_kill_9_mid_run_then_resume_keeps_one_history(tiny_corpus, tmp_path):
    """A real kill -9 after steps past the last checkpoint were logged: the resume rewrites those steps once."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "rnnlm.train", "--data", str(tiny_corpus), "--out", str(out), *TINY,
           "--log-every", "1", "--eval-every", "3", "--max-steps", "100000"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "last.pt").exists() and len((out / "metrics.jsonl").read_text().splitlines()) >= 5:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1]
    finally:
        proc.kill()
        proc.wait(timeout=30)
    step = load_checkpoint(out / "last.pt")["step"]
    assert train.main(["--resume", str(out), "--max-steps", str(step + 2), "--no-progress"]) == 0
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == list(range(1, step + 3))
    assert [r["time"] for r in rows] == sorted(r["time"] for r in rows)
