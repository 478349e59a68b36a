"""Checkpoints: round trip, atomic saves under SIGKILL, and every kind of bad file refused with one clear error."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnlm.checkpoint import FORMAT_VERSION, load_checkpoint, model_from_checkpoint, save_checkpoint
from rnnlm.errors import UsageError
from rnnlm.model import ModelConfig, WordRNN

V, E, H = 60, 16, 32
REPO = Path(__file__).resolve().parents[1]


def make_payload(seed: int = 0, **extra) -> dict:
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=V, embed_size=E, hidden_size=H, num_layers=2)
    model = WordRNN(config)
    payload = {
        "format_version": FORMAT_VERSION,
        "model_config": config.to_dict(),
        "model_state": model.state_dict(),
        "optimizer_state": None,
        "train_config": {"lr": 1e-3},
        "vocab": ["<pad>", "<unk>"] + [f"词{i}" for i in range(V - 2)],
        "tokenizer": {"hmm": True, "encoding_errors": "strict"},  # rnnlm.data.TokenizerSettings().to_dict()
        "corpus": {"path": "tiny.txt", "content_hash": "0" * 64},
        "step": 7,
        "epoch": 0,
        "data_state": {"position": 3},
        "hidden": torch.zeros(2, 4, H),
        "rng_state": {"torch": torch.get_rng_state(), "seed": 5},
        "best_valid_ppl": 123.5,
    }
    payload.update(extra)
    return payload


def test_round_trip_rebuilds_the_same_model(tmp_path):
    payload = make_payload()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, payload)
    loaded = load_checkpoint(path)
    assert loaded["step"] == 7 and loaded["best_valid_ppl"] == 123.5 and loaded["vocab"] == payload["vocab"]
    model, vocab, settings = model_from_checkpoint(loaded, backend="cudnn")  # the former name of "torch"
    assert not model.training and model.backend.name == "torch"
    assert len(vocab) == V and vocab.itos == payload["vocab"]
    assert settings.to_dict() == payload["tokenizer"]
    ref = WordRNN(ModelConfig(**payload["model_config"]))
    ref.load_state_dict(payload["model_state"])
    x = torch.randint(0, V, (2, 5))
    torch.testing.assert_close(model(x)[0], ref(x)[0], rtol=0, atol=0)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left behind


def test_save_adds_the_format_version_and_does_not_touch_the_callers_dict(tmp_path):
    payload = make_payload()
    del payload["format_version"]
    save_checkpoint(tmp_path / "a.pt", payload)
    assert "format_version" not in payload
    assert load_checkpoint(tmp_path / "a.pt")["format_version"] == FORMAT_VERSION


def test_save_refuses_objects_a_weights_only_load_could_not_read(tmp_path):
    path = tmp_path / "a.pt"
    save_checkpoint(path, make_payload(step=1))
    with pytest.raises(TypeError, match=r"\['rng_state'\]\['numpy'\] is a numpy.ndarray"):
        save_checkpoint(path, make_payload(step=2, rng_state={"numpy": np.zeros(3)}))
    with pytest.raises(TypeError, match="numpy.float64"):
        save_checkpoint(path, make_payload(step=2, best_valid_ppl=np.float64(1.5)))
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]


def test_unwritable_destination_is_a_usage_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UsageError, match="cannot write checkpoint"):
        save_checkpoint(blocker / "ckpt.pt", make_payload())
    with pytest.raises(UsageError, match="is a directory"):
        save_checkpoint(tmp_path, make_payload())


# -- every bad file: one UsageError, one line -------------------------------------------------------------

def _expect_usage_error(path, match):
    with pytest.raises(UsageError, match=match) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_missing_file_and_directory(tmp_path):
    _expect_usage_error(tmp_path / "nope.pt", "checkpoint not found")
    _expect_usage_error(tmp_path, "is a directory")


def test_empty_file(tmp_path):
    (tmp_path / "e.pt").write_bytes(b"")
    _expect_usage_error(tmp_path / "e.pt", "empty")


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9, 0.999])
def test_truncated_file(tmp_path, fraction):
    path = tmp_path / "t.pt"
    save_checkpoint(path, make_payload())
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    _expect_usage_error(path, "truncated")


def test_flipped_byte_in_a_tensor_is_caught(tmp_path):
    # torch.load does not check the zip CRCs: without our check this file would load with a wrong weight.
    path = tmp_path / "c.pt"
    payload = make_payload(model_state={"w": torch.ones(4096)})
    save_checkpoint(path, payload)
    data = bytearray(path.read_bytes())
    start = data.find(np.ones(8, dtype=np.float32).tobytes())
    assert start > 0
    data[start + 1000] ^= 0x40
    path.write_bytes(bytes(data))
    _expect_usage_error(path, "corrupt")


def test_flipped_byte_in_the_pickle_is_caught(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, make_payload())
    data = bytearray(path.read_bytes())
    start = data.find(b"model_config")
    data[start] ^= 0x01
    path.write_bytes(bytes(data))
    _expect_usage_error(path, "corrupt")


@pytest.mark.parametrize("kind", ["text", "random", "tensor", "list", "dict"])
def test_foreign_files(tmp_path, kind):
    path = tmp_path / "f.pt"
    if kind == "text":
        path.write_text("这不是检查点 not a checkpoint\n", encoding="utf-8")
    elif kind == "random":
        path.write_bytes(random.Random(0).randbytes(10_000))
    elif kind == "tensor":
        torch.save(torch.zeros(3, 3), path)
    elif kind == "list":
        torch.save([1, 2, 3], path)
    else:
        torch.save({"state_dict": {"w": torch.zeros(3)}}, path)
    _expect_usage_error(path, "not an rnnlm checkpoint")


def test_newer_format_version(tmp_path):
    path = tmp_path / "n.pt"
    torch.save(make_payload(format_version=FORMAT_VERSION + 1), path)
    message = _expect_usage_error(path, "newer")
    assert f"format version {FORMAT_VERSION + 1}" in message


def test_incomplete_checkpoint(tmp_path):
    path = tmp_path / "i.pt"
    payload = make_payload()
    del payload["vocab"]
    torch.save(payload, path)
    _expect_usage_error(path, "missing vocab")


class _Evil:
    """Pickles as a call to exec: unpickling it with a plain pickle.load writes the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save(make_payload(train_config={"lr": _Evil(marker)}), path)  # a real torch zip, a hostile pickle
    message = _expect_usage_error(path, "refusing to load")
    assert "exec" in message
    assert not marker.exists()
    # The file really is hostile: an unsafe load (in another process) runs the payload.
    subprocess.run([sys.executable, "-c", f"import torch; torch.load({str(path)!r}, weights_only=False)"],
                   check=True, capture_output=True, cwd=tmp_path)
    assert marker.read_text() == "pwned"


def test_state_that_does_not_match_the_config(tmp_path):
    payload = make_payload()
    payload["model_config"] = {**payload["model_config"], "hidden_size": H + 1}
    with pytest.raises(UsageError, match="model_state does not match its model_config"):
        model_from_checkpoint(payload)
    payload = make_payload(vocab=["<pad>", "<unk>", "a"])
    with pytest.raises(UsageError, match="vocabulary has 3 words but its model expects"):
        model_from_checkpoint(payload)
    payload = make_payload(model_config={**make_payload()["model_config"], "colour": "blue"})
    with pytest.raises(UsageError, match="unknown model config keys: colour"):
        model_from_checkpoint(payload)


def test_loaded_model_can_switch_backend_or_fail_clearly(monkeypatch):
    model, _, _ = model_from_checkpoint(make_payload(), backend="cudnn")
    monkeypatch.setitem(sys.modules, "kernels.rnn", None)
    with pytest.raises(UsageError, match="backend 'triton' is unavailable"):
        model_from_checkpoint(make_payload(), backend="triton")
    with pytest.raises(UsageError, match="backend 'triton' is unavailable"):
        model.backend = "triton"


# -- atomicity: SIGKILL during a save ----------------------------------------------------------------------

_SAVER = textwrap.dedent("""
    import os, sys, time
    import torch
    from rnnlm.checkpoint import save_checkpoint

    path, first, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if mode == "hang-in-fsync":
        # The temporary file is complete but not yet renamed: stop there until killed.
        real_fsync = os.fsync
        def fsync(fd):
            real_fsync(fd)
            if os.fstat(fd).st_size > 1_000_000 and step > first:
                print("in-fsync", flush=True)
                time.sleep(60)
        os.fsync = fsync
    step = first
    while True:
        payload = {"model_config": {}, "model_state": {"w": torch.full((6_000_000,), float(step))},
                   "vocab": [], "tokenizer": {}, "step": step}
        print(f"start {step}", flush=True)
        save_checkpoint(path, payload)
        print(f"done {step}", flush=True)
        step += 1
""")


def _check_intact(path: Path, allowed_steps: set[int]) -> int:
    payload = load_checkpoint(path)
    step = payload["step"]
    assert step in allowed_steps
    w = payload["model_state"]["w"]
    assert w.numel() == 6_000_000 and bool((w == float(step)).all())
    return step


def test_sigkill_mid_save_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    rng = random.Random(0)
    killed_mid_save = 0
    last_done = -1
    for round_ in range(3):
        mode = "hang-in-fsync" if round_ == 0 else "normal"
        proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(path), str(100 * round_), mode],
                                stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
        try:
            started = {}
            while True:
                line = proc.stdout.readline()
                assert line, "saver exited early"
                kind, _, value = line.strip().partition(" ")
                if kind == "start":
                    started[int(value)] = time.perf_counter()
                elif kind == "done":
                    last_done = int(value)
                    duration = time.perf_counter() - started[last_done]
                    if mode == "normal" and last_done >= 100 * round_ + 1:
                        # Kill somewhere inside the next save.
                        assert proc.stdout.readline().startswith("start")
                        time.sleep(rng.uniform(0.05, 0.9) * duration)
                        break
                elif kind == "in-fsync":
                    break
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            # The saver may have finished more saves between our last read and the kill: what it printed
            # before dying says which save completed last.
            for line in proc.stdout:
                kind, _, value = line.strip().partition(" ")
                if kind == "done":
                    last_done = int(value)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        if any(p.name.endswith(".tmp") for p in tmp_path.iterdir()):
            killed_mid_save += 1
        _check_intact(path, {last_done, last_done + 1})
    assert killed_mid_save >= 1  # at least the fsync round died with a half-finished save on disk
    # The next successful save removes the temporary files that killed savers left behind.
    save_checkpoint(path, {"model_config": {}, "model_state": {"w": torch.full((6_000_000,), 999.0)},
                           "vocab": [], "tokenizer": {}, "step": 999})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    _check_intact(path, {999})


def test_disk_full_during_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import io

    path = tmp_path / "last.pt"
    save_checkpoint(path, make_payload(step=1))
    real_fdopen = os.fdopen

    class Full(io.RawIOBase):
        def __init__(self, f):
            self.f = f

        def writable(self):
            return True

        def write(self, data):
            raise OSError(28, "No space left on device")

        def fileno(self):
            return self.f.fileno()

        def close(self):
            self.f.close()
            super().close()

    monkeypatch.setattr(os, "fdopen", lambda fd, mode: Full(real_fdopen(fd, mode)))
    with pytest.raises(UsageError, match="No space left on device"):
        save_checkpoint(path, make_payload(step=2))
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
