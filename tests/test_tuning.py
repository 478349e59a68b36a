"""rnnlm.tuning and the choices it makes (training precision and threads, generation's output precision and
threads, the output layer's library): each follows the timings it is given, never a rule about the machine.

The timings are injected (rnnlm.tuning.time_candidates replaced), so no test depends on which candidate wins here.
"""
from __future__ import annotations

import json
import logging
import os

import pytest
import torch

from rnnlm import tuning
from rnnlm.inference import precision as gen_precision
from rnnlm.inference.generation import generate_ids
from rnnlm.inference.sampling import Sampling
from rnnlm.model import ModelConfig, WordRNN
from rnnlm.ops import linear_cross_entropy as lce
from rnnlm.training.speed import choose_training_speed

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def timings(monkeypatch, tmp_path):
    """Tuning on, a fresh cache folder, and candidate timings taken from the returned dict: {name: seconds}
    (a name missing from it times as 1 s). Each timing call is recorded in .calls (the names timed)."""
    monkeypatch.setenv("RNNLM_TUNING", "on")
    monkeypatch.delenv("RNNLM_TUNE", raising=False)
    monkeypatch.setenv("RNNLM_CACHE_DIR", str(tmp_path / "cache"))

    class Timings(dict):
        calls: list = []

    fake = Timings()
    fake.calls = []

    def time_candidates(candidates, budget_s=tuning.BUDGET_S):
        fake.calls.append(sorted(candidates))
        return {name: fake.get(name, 1.0) for name in candidates}

    monkeypatch.setattr(tuning, "time_candidates", time_candidates)
    return fake


def work():
    return None


# -- rnnlm.tuning -----------------------------------------------------------------------------------------------

def test_choice_follows_the_timings_and_is_logged(timings, caplog):
    timings.update(a=2e-3, b=1e-3)
    with caplog.at_level(logging.INFO, logger="rnnlm.tuning"):
        choice = tuning.choose("task", (3, 4), {"a": work, "b": work}, default="a")
    assert (choice.picked, choice.how, choice.seconds) == ("b", "measured", {"a": 2e-3, "b": 1e-3})
    assert "task: b (measured; b 1 ms, a 2 ms; load average" in caplog.text
    timings.update(a=1e-3, b=2e-3)
    assert tuning.choose("task", (3, 9), {"a": work, "b": work}, default="a").picked == "a"  # follows the figures
    assert timings.calls == [["a", "b"], ["a", "b"]]


def test_choice_is_cached_per_task_shape_and_machine(timings, tmp_path, monkeypatch):
    timings.update(a=2e-3, b=1e-3)
    assert tuning.choose("task", (3, 4), {"a": work, "b": work}, default="a").picked == "b"
    timings.update(a=1e-3, b=2e-3)  # a re-measurement would now pick a
    again = tuning.choose("task", (3, 4), {"a": work, "b": work}, default="a")
    assert (again.picked, again.how, again.seconds) == ("b", "cached", {"a": 2e-3, "b": 1e-3})
    assert len(timings.calls) == 1
    assert tuning.choose("task", (3, 5), {"a": work, "b": work}, default="a").picked == "a"  # another shape
    assert tuning.choose("other", (3, 4), {"a": work, "b": work}, default="b").picked == "a"  # another task
    assert len(timings.calls) == 3
    monkeypatch.setenv("RNNLM_TUNING", "again")
    assert tuning.choose("task", (3, 4), {"a": work, "b": work}, default="a").picked == "a"  # timed again
    assert len(timings.calls) == 4
    cache = json.loads((tmp_path / "cache" / tuning.CACHE_FILE).read_text())
    keys = [json.loads(k) for k in cache]
    assert all(k[3] == tuning.cpu_name() and k[4] == torch.__version__ and k[5] == torch.get_num_threads()
               for k in keys)


@pytest.mark.parametrize("corrupt", ["entry", "file", "seconds"])
def test_a_corrupt_cache_is_measured_again(timings, tmp_path, corrupt):
    timings.update(a=2e-3, b=1e-3)
    tuning.choose("task", (1,), {"a": work, "b": work}, default="a")
    path = tmp_path / "cache" / tuning.CACHE_FILE
    if corrupt == "file":
        path.write_text("{not json")
    else:
        data = json.loads(path.read_text())
        key = next(iter(data))
        data[key] = {"picked": "zzz"} if corrupt == "entry" else {"picked": "b", "seconds": {"a": "x", "b": 1}}
        path.write_text(json.dumps(data))
    timings.update(a=1e-3, b=2e-3)
    choice = tuning.choose("task", (1,), {"a": work, "b": work}, default="a")
    assert (choice.picked, choice.how) == ("a", "measured") and len(timings.calls) == 2
    assert tuning.choose("task", (1,), {"a": work, "b": work}, default="a").how == "cached"  # rewritten


def test_forced_and_off(timings, monkeypatch):
    timings.update(a=2e-3, b=1e-3)
    monkeypatch.setenv("RNNLM_TUNE", "other=x, task=a")
    assert tuning.choose("task", (1,), {"a": work, "b": work}, default="b").picked == "a"
    monkeypatch.setenv("RNNLM_TUNE", "task=nonesuch")  # not a candidate here: ignored
    assert tuning.choose("task", (1,), {"a": work, "b": work}, default="a").picked == "b"
    monkeypatch.delenv("RNNLM_TUNE")
    monkeypatch.setenv("RNNLM_TUNING", "off")
    choice = tuning.choose("task2", (1,), {"a": work, "b": work}, default="a")
    assert (choice.picked, choice.how) == ("a", "default")
    assert len(timings.calls) == 1


def test_real_timer_times_every_candidate():
    calls = {"a": 0, "b": 0}

    def count(name):
        def fn():
            calls[name] += 1
        return fn

    seconds = tuning.time_candidates({"a": count("a"), "b": count("b")}, budget_s=0.0)
    assert set(seconds) == {"a", "b"} and all(s >= 0 for s in seconds.values())
    assert calls == {"a": 1 + tuning.ROUNDS_MIN, "b": 1 + tuning.ROUNDS_MIN}  # warm-up, then the rounds


def test_torch_threads_restores():
    before = torch.get_num_threads()
    with tuning.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    assert tuning.thread_candidates(3) == [3]
    assert tuning.thread_candidates()[0] == 1 and tuning.thread_candidates()[-1] == len(os.sched_getaffinity(0))


# -- training: precision and threads ------------------------------------------------------------------------------

def tiny_model():
    torch.manual_seed(0)
    return WordRNN(ModelConfig(vocab_size=50, embed_size=8, hidden_size=12))


def training_choice(model, precision, threads=1, force_bf16=False):
    return choose_training_speed(model, precision, batch_size=4, seq_len=8, threads=threads, force_bf16=force_bf16,
                                 device=torch.device("cpu"))


def test_training_is_timed_on_the_runs_own_rows(timings, monkeypatch):
    """The recurrence's products are (B, H) by (H, H) whatever T is, and thread scaling depends on B: the timed
    batch has the run's B rows (this process's share) and only as many time steps as make ~TIMED_ROWS tokens."""
    from rnnlm.training import speed

    shapes = []
    monkeypatch.setattr(speed, "_timed_step", lambda model, p, n, rows, steps, device: shapes.append((rows, steps)))
    model = tiny_model()
    choose_training_speed(model, "auto", batch_size=64, seq_len=20, threads=1, force_bf16=False,
                          device=torch.device("cpu"))
    assert set(shapes) == {(64, -(-speed.TIMED_ROWS // 64))}
    shapes.clear()
    choose_training_speed(model, "auto", batch_size=4, seq_len=8, threads=1, force_bf16=False,
                          device=torch.device("cpu"))
    assert set(shapes) == {(4, 8)}                  # never more steps than the run's own


def test_bf16_slower_runs_fp32_and_says_so(timings, caplog):
    model = tiny_model()
    timings.update({"bf16@1": 3e-3, "fp32@1": 2e-3})
    with caplog.at_level(logging.WARNING, logger="rnnlm.training"):
        assert training_choice(model, "bf16") == ("fp32", 1)
    lines = [r.getMessage() for r in caplog.records if r.name == "rnnlm.training"]
    assert len(lines) == 1 and "bf16 is slower than fp32 on this machine" in lines[0] and "--force-bf16" in lines[0]
    assert "3 ms against 2 ms" in lines[0]
    assert training_choice(model, "bf16", force_bf16=True) == ("bf16", 1)      # forced: nothing timed
    assert training_choice(model, "auto") == ("fp32", 1)
    assert len(timings.calls) == 1                                             # auto read bf16's cached figures


def test_bf16_faster_runs_bf16_and_auto_picks_it(timings, caplog):
    model = tiny_model()
    timings.update({"bf16@1": 1e-3, "fp32@1": 2e-3})
    with caplog.at_level(logging.WARNING, logger="rnnlm.training"):
        assert training_choice(model, "bf16") == ("bf16", 1)
        assert training_choice(model, "auto") == ("bf16", 1)
    assert not [r for r in caplog.records if r.name == "rnnlm.training"]
    assert training_choice(model, "fp32") == ("fp32", 1)                        # one candidate: nothing timed
    assert len(timings.calls) == 1


def test_training_threads_follow_the_timings(timings):
    model = tiny_model()
    counts = tuning.thread_candidates()
    if len(counts) < 2:
        pytest.skip("one CPU thread: nothing to choose")
    timings.update({f"fp32@{counts[0]}": 1e-3, f"fp32@{counts[-1]}": 2e-3})
    assert training_choice(model, "fp32", threads=None) == ("fp32", counts[0])
    assert timings.calls == [sorted(f"fp32@{n}" for n in counts)]


def test_timed_training_step_leaves_the_run_alone(monkeypatch, tmp_path):
    """The real timing (tiny shapes) draws nothing from the global generator and leaves no gradients."""
    monkeypatch.setenv("RNNLM_TUNING", "on")
    monkeypatch.setenv("RNNLM_CACHE_DIR", str(tmp_path))
    model = tiny_model()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    precision, threads = training_choice(model, "auto")
    assert precision in ("fp32", "bf16") and threads == 1
    assert torch.equal(torch.get_rng_state(), state)
    assert all(p.grad is None for p in model.parameters())
    assert model.training


# -- generation: output precision and threads ----------------------------------------------------------------------

def gen_choice(model, requested="auto", threads=1, **sampling):
    hidden = torch.zeros(model.config.num_layers, sampling.pop("n", 1), model.config.hidden_size)
    with torch.inference_mode():
        return gen_precision.choose_generation_step(model, hidden, Sampling(**{"temperature": 0.8, **sampling}),
                                                    requested, threads=threads)


def test_int8_slower_picks_fp16_or_fp32(timings):
    model = tiny_model()
    timings.update({"int8@1": 3e-3, "fp16@1": 2e-3, "fp32@1": 2.5e-3})
    assert gen_choice(model) == ("fp16", 1, "torch")
    timings.clear()
    timings.update({"int8@1": 3e-3, "fp16@1": 4e-3, "fp32@1": 2.5e-3})
    assert gen_choice(model, temperature=0.7) == ("fp32", 1, "torch")   # another temperature: timed again
    timings.update({"int8@1": 1e-3})
    assert gen_choice(model, temperature=0.6) == ("int8", 1, "torch")


def test_generation_matvec_library_follows_the_timings(timings):
    """numpy's BLAS and torch's are timed side by side for every precision; the plan names what won."""
    model = tiny_model()
    timings.update({"fp16@1": 2e-3, "fp16/numpy@1": 1e-3, "int8@1": 3e-3, "int8/numpy@1": 3e-3})
    assert gen_choice(model) == ("fp16", 1, "numpy")
    assert sorted(timings.calls[-1]) == sorted(f"{p}{lib}@1" for p in ("fp32", "fp16", "int8")
                                               for lib in ("", "/numpy"))
    timings.update({"fp32@1": 0.5e-3})
    assert gen_choice(model, temperature=0.7) == ("fp32", 1, "torch")
    timings.update({"fp16/numpy@1": 0.1e-3})
    assert gen_choice(model, "fp16", temperature=0.6) == ("fp16", 1, "numpy")  # explicit precision: library timed
    assert gen_precision.StepPlan.parse("int8/numpy@2") == ("int8", 2, "numpy")
    assert gen_precision.StepPlan("fp32", 2).name == "fp32@2"
    assert gen_precision.StepPlan.parse(gen_precision.StepPlan("fp32").name) == ("fp32", None, "torch")


def test_generation_candidates_respect_the_draw(timings):
    model = tiny_model()
    timings.update({"int8@1": 1e-4, "int8/numpy@1": 1e-4})  # would win wherever it is a candidate
    assert gen_choice(model, temperature=0.3)[0] in ("fp16", "fp32")  # below INT8_MIN_TEMPERATURE
    assert gen_choice(model, top_k=5)[0] in ("fp16", "fp32")
    assert gen_choice(model, n=3)[0] in ("fp16", "fp32")
    assert all("int8" not in name for c in timings.calls for name in c)
    n = len(timings.calls)
    assert gen_choice(model, greedy=True) == ("fp32", 1, "torch")      # greedy: fp32 ...
    assert gen_choice(model, "int8", top_p=0.9) == ("fp32", 1, "torch")
    assert all(c == ["fp32/numpy@1", "fp32@1"] for c in timings.calls[n:])  # ... its library alone timed


def test_generation_threads_follow_the_timings(timings):
    model = tiny_model()
    counts = tuning.thread_candidates()
    if len(counts) < 2:
        pytest.skip("one CPU thread: nothing to choose")
    timings.update({f"fp16@{counts[-1]}": 1e-3, f"fp16@{counts[0]}": 2e-3})
    assert gen_choice(model, "fp16", threads=None) == ("fp16", counts[-1], "torch")
    timings.update({f"fp16@{counts[-1]}": 3e-3})
    assert gen_choice(model, "fp16", threads=None, temperature=0.9) == ("fp16", counts[0], "torch")


def test_blas_threads_are_set_for_the_block_and_restored():
    libs = tuning._blas_controllers()
    if not libs:
        pytest.skip("numpy has no BLAS that threadpoolctl can control here")
    before = [lib.get_num_threads() for lib in libs]
    with tuning.blas_threads(1):
        assert all(lib.get_num_threads() == 1 for lib in libs)
    assert [lib.get_num_threads() for lib in libs] == before
    with tuning.blas_threads(None):
        assert [lib.get_num_threads() for lib in libs] == before


def test_generation_runs_what_was_chosen(timings, monkeypatch):
    """auto generates exactly what the chosen precision generates (the old rule's test, with the choice forced)."""
    model = tiny_model()

    def auto_is(precision, **kwargs):
        return (generate_ids(model, [4, 5], 20, seed=1, threads=1, **kwargs).tolist()
                == generate_ids(model, [4, 5], 20, seed=1, output_precision=precision, threads=1, **kwargs).tolist())

    for winner in ("fp16", "int8", "fp32", "fp16/numpy", "int8/numpy", "fp32/numpy"):
        timings.clear()
        timings.update({f"{winner}@1": 1e-4})
        winner = winner.split("/")[0]  # an explicit precision has its library timed too: both runs take the winner
        tuning._cache_path().unlink(missing_ok=True)
        assert auto_is(winner, temperature=0.8)
    assert not auto_is("int8", temperature=0.3)  # int8 is no candidate there; the two paths do differ
    monkeypatch.setenv("RNNLM_TUNE", f"{gen_precision.TASK}=fp16@1")
    assert auto_is("fp16", temperature=0.8)
    assert (generate_ids(model, [4, 5], 20, greedy=True).tolist()
            == generate_ids(model, [4, 5], 20, greedy=True, output_precision="fp32").tolist())


def test_generation_threads_are_restored(timings):
    model = tiny_model()
    before = torch.get_num_threads()
    generate_ids(model, [4, 5], 5, seed=1, threads=2)
    assert torch.get_num_threads() == before
    with pytest.raises(Exception, match="threads"):
        generate_ids(model, [4, 5], 5, seed=1, threads=0)


# -- the output layer's library --------------------------------------------------------------------------------------

@pytest.mark.parametrize("winner", ["onednn", "matmul"])
def test_output_layer_library_follows_the_timings(timings, monkeypatch, winner):
    monkeypatch.setattr(lce, "_LIBRARY", {})
    monkeypatch.setattr(lce, "_ONEDNN_OK", {torch.float32: True})
    timings.update({winner: 1e-4})
    h, w = torch.randn(6, 5), torch.randn(7, 5)
    assert lce._use_onednn(h, w) == (winner == "onednn")
    assert timings.calls == [["matmul", "onednn"]]
    y = torch.randint(0, 7, (6,))
    if winner == "onednn" and lce._onednn_linear() is None:
        return
    loss = lce.linear_cross_entropy(h, w, None, y)
    torch.testing.assert_close(loss, lce.linear_cross_entropy_reference(h, w, None, y), rtol=1e-5, atol=1e-5)


# -- the command lines -------------------------------------------------------------------------------------------

def test_train_cli_runs_fp32_where_bf16_is_slower(timings, tiny_corpus, tmp_path, capsys, caplog):
    from rnnlm import train
    from rnnlm.checkpoint import load_checkpoint

    timings.update({"bf16@1": 3e-3, "fp32@1": 2e-3})
    args = ["--data", str(tiny_corpus), "--out", str(tmp_path / "run"), "--embed-size", "8", "--hidden-size", "8",
            "--seq-len", "4", "--batch-size", "2", "--no-progress", "--sample-length", "0", "--max-steps", "2",
            "--eval-every", "2", "--threads", "1"]
    with caplog.at_level(logging.WARNING, logger="rnnlm.training"):
        assert train.main([*args, "--precision", "bf16"]) == 0
    assert "precision fp32, 1 CPU threads" in capsys.readouterr().out
    assert [r.getMessage() for r in caplog.records if "slower than fp32" in r.getMessage()]
    saved = load_checkpoint(tmp_path / "run" / "last.pt")["train_config"]
    assert saved["precision"] == "bf16" and saved["threads"] == 1   # what was asked: a resume asks again
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rnnlm.training"):
        assert train.main([*args, "--precision", "bf16", "--force-bf16", "--out", str(tmp_path / "forced")]) == 0
    assert "precision bf16, 1 CPU threads" in capsys.readouterr().out
    assert not [r for r in caplog.records if "slower" in r.getMessage()]


@pytest.mark.parametrize("cli", ["train", "generate"])
def test_threads_must_be_positive(cli, tmp_path, capsys):
    from rnnlm import generate, train
    from rnnlm.errors import run_cli

    main = {"train": train.main, "generate": generate.main}[cli]
    argv = ["--threads", "0"] + ([str(tmp_path / "none.pt")] if cli == "generate" else [])
    with pytest.raises(SystemExit) as stop:
        run_cli(main, f"rnnlm.{cli}", argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--threads" in err


def test_untimed_choices_keep_the_threads_and_the_request(monkeypatch):
    """RNNLM_TUNING=off (as in the rest of the test suite): the request as given, threads as they are."""
    monkeypatch.setenv("RNNLM_TUNING", "off")
    model = tiny_model()
    now = torch.get_num_threads()
    assert gen_choice(model, threads=None) == ("fp16", now, "torch")
    assert gen_choice(model, "int8", threads=None) == ("int8", now, "torch")
    assert training_choice(model, "bf16", threads=None) == ("bf16", now)
    assert training_choice(model, "auto", threads=None) == ("fp32", now)
