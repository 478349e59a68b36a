"""make gpu-check's pipeline (benchmarks/gpu_check.py) and its GPU helpers (benchmarks/cuda_bench.py).

On this machine (no GPU) the pipeline runs in Triton's interpreter at small shapes, as `make gpu-check` does here:
the test runs it the way a CUDA image would, with PYTHONPATH=. and with jieba, snownlp, tqdm and hypothesis made
unimportable, and checks every file it must write, the interpreter marks, one printed line per headline figure,
and the time (under 3 minutes). The cuDNN algorithm rule is checked against ATen's get_algo case by case.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import cuda_bench  # noqa: E402

# Imported by every Python process that has this folder on PYTHONPATH: the named top-level modules then fail to
# import, as on a CUDA image that lacks them.
BLOCKER = '''
import os, sys

# None in sys.modules: `import name` raises ModuleNotFoundError and importlib.util.find_spec(name) returns None,
# exactly as for a module that is not installed (torch probes some optional modules with find_spec).
for _name in filter(None, os.environ.get("RNNLM_TEST_BLOCKED_MODULES", "").split(",")):
    sys.modules[_name] = None
'''


@pytest.mark.slow
def test_gpu_check_runs_in_the_interpreter_without_optional_packages(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: make gpu-check runs the real thing there")
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(BLOCKER)
    out = tmp_path / "report"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # pytest's plugins (hypothesis's among them) are not autoloaded: an image without them has none to load
    env.update(PYTHONPATH=os.pathsep.join([str(shim), str(REPO)]), PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
               RNNLM_TEST_BLOCKED_MODULES="jieba,snownlp,tqdm,hypothesis,_hypothesis_pytestplugin")
    probe = subprocess.run([sys.executable, "-c", "import jieba"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "ModuleNotFoundError" in probe.stderr  # the blocker works
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert seconds < 180, f"gpu_check took {seconds:.0f} s in the interpreter"
    for name in ("report.md", "gpu_check.json", "kernel_tests.log", "recurrence_forward.png",
                 "recurrence_forward_backward.png", "row_ops.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    data = json.loads((out / "gpu_check.json").read_text())
    assert data["mode"] == "interpreter" and data["interpreter_figures"] is True and not data["errors"]
    assert data["kernel_tests"]["ok"] and data["kernel_tests"]["passed"] > 0 and data["kernel_tests"]["subset"]
    precisions = {r["precision"] for r in data["recurrence"]}
    assert precisions == {"fp32", "tf32", "bf16"}
    assert {r["mode"] for r in data["recurrence"]} == {"forward", "forward+backward"}
    assert {(r["B"], r["H"]) for r in data["recurrence"]} >= {(b, h) for b in (1, 4) for h in (16, 32)}
    # the launcher's choice in every row, and the persistent kernels timed beside it (in the interpreter in the one
    # form it can run, one N-slice per batch tile; on a GPU where chosen, or where only the H <= 128 rule kept them)
    for r in data["recurrence"]:
        assert r["recurrence_path"] == ("fwd tiled, bwd tiled" if r["mode"] == "forward+backward" else "fwd tiled")
        assert "Triton's interpreter" in r["recurrence_choice"]
        assert r["tiled_s"] == r["triton_s"] and r["persistent_s"] > 0
        assert set(r["us_per_layer_step"]) == {"cudnn", "triton", "tiled", "persistent"}
    assert {r["op"] for r in data["row_ops"]} == {"softmax", "sampling", "cross-entropy fwd+bwd"}
    assert all(r["triton_gbps"] > 0 and r["torch_fraction_of_copy"] > 0 for r in data["row_ops"])
    assert {r["what"] for r in data["model"]} == {"training step", "generation (1 sample)"}
    report = (out / "report.md").read_text()
    assert "INTERPRETER FIGURES" in report and "cuDNN algorithm" in report
    printed = [line for line in proc.stdout.splitlines() if "time ratio" in line]
    assert len(printed) == 6 + 3 + 2 and len(data["headlines"]) == 6 + 3 + 2 + 1
    goal = [line for line in proc.stdout.splitlines() if "nn.RNN time / persistent time" in line]
    assert len(goal) == 1 and "goal >= 2x" in goal[0] and all(p in goal[0] for p in ("fp32 ", "tf32 ", "bf16 "))
    assert all(line.startswith("[interpreter figures, not GPU speed]") for line in printed + goal)


def test_stage_selection_and_bad_stage(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", str(tmp_path), "--stages", "tests,bogus"],
                          cwd=REPO, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 2 and "unknown stage(s) bogus" in proc.stderr


H100 = dict(capability=(9, 0), sm_count=132)
A100 = dict(capability=(8, 0), sm_count=108)
A40 = dict(capability=(8, 6), sm_count=84)
V100 = dict(capability=(7, 0), sm_count=80)
T4 = dict(capability=(7, 5), sm_count=40)


def algo(H, *, forward=True, dtype=torch.float32, L=2, B=64, T=20, I=256, bidir=False, device=H100):
    return cuda_bench.cudnn_rnn_algorithm(hidden_size=H, input_size=I, batch_size=B, seq_len=T, num_layers=L,
                                          bidirectional=bidir, dtype=dtype, forward=forward, **device)


def test_cudnn_algorithm_follows_atens_get_algo():
    """aten/src/ATen/native/cudnn/RNN.cpp: persistent small-H for tanh/relu at H <= 384 forward and H <= 256
    backward on sm >= 6 (not fp64); persistent static only for fp16, one layer, unidirectional, H and I
    multiples of 128, H <= 1024, and the batch/device rules; else standard."""
    assert algo(512) == algo(512, forward=False) == "STANDARD"  # the default model
    assert algo(384) == "PERSIST_STATIC_SMALL_H" and algo(385) == "STANDARD"
    assert algo(256, forward=False) == "PERSIST_STATIC_SMALL_H" and algo(257, forward=False) == "STANDARD"
    assert algo(128, dtype=torch.float64) == "STANDARD"
    assert algo(128, dtype=torch.bfloat16) == "PERSIST_STATIC_SMALL_H"
    assert algo(128, device=dict(capability=(5, 2), sm_count=24)) == "STANDARD"
    half = dict(dtype=torch.float16, L=1)
    assert algo(512, **half) == "PERSIST_STATIC"
    assert algo(512, **half, B=100) == "STANDARD"  # not a multiple of 8
    assert algo(1024, **half, B=96) == "STANDARD" and algo(768, **half, B=96) == "PERSIST_STATIC"
    assert algo(512, **half, B=256) == "STANDARD"  # > 128
    assert algo(512, **half, I=200) == "STANDARD" and algo(512, **half, bidir=True) == "STANDARD"
    assert algo(512, dtype=torch.float16, L=2) == "STANDARD"
    assert algo(512, **half, device=A100) == "PERSIST_STATIC" and algo(512, **half, device=A40) == "STANDARD"
    assert algo(512, **half, device=T4) == "STANDARD"
    assert algo(512, **half, device=V100, B=64, T=20) == "PERSIST_STATIC"
    assert algo(512, **half, device=V100, B=64, T=5) == "STANDARD"  # Volta: short sequences stay standard
    assert algo(512, **half, device=V100, B=80, T=40) == "STANDARD" and algo(512, **half, device=V100, B=96, T=20) \
        == "PERSIST_STATIC"
    assert cuda_bench.cudnn_algorithm_label(backward=True, hidden_size=300, input_size=256, batch_size=64, seq_len=20,
                                            num_layers=2, bidirectional=False, dtype=torch.float32, **H100) \
        == "fwd PERSIST_STATIC_SMALL_H, bwd STANDARD"
    with pytest.raises(ValueError, match="nonlinearity"):
        cuda_bench.cudnn_rnn_algorithm(hidden_size=1, input_size=1, batch_size=1, seq_len=1, num_layers=1,
                                       bidirectional=False, dtype=torch.float32, forward=True, nonlinearity="lstm",
                                       **H100)


def test_precision_labels_on_the_cpu():
    assert cuda_bench.precision_label("cudnn", torch.device("cpu")) == "fp32"
    assert cuda_bench.precision_label("triton", torch.device("cpu")) == "fp32"


def test_measure_on_the_cpu():
    calls = []
    times = cuda_bench.measure(lambda: calls.append(1), torch.device("cpu"), rounds=3, warmup=2)
    assert len(times) == 3 and len(calls) == 5 and all(t >= 0 for t in times)
    assert cuda_bench.copy_bandwidth(torch.device("cpu"), 1 << 20) > 0
