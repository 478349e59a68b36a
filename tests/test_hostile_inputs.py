"""Hostile inputs, the second round (issue 15): each ends in a correct result or one clear line with exit code 2,
and never in a hang, a traceback, or lost or mixed data. The run folder's own cases are in test_run_folder.py."""
from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnlm import data, train
from rnnlm.data import TokenizerSettings, tokenize
from rnnlm.data.words import join_words
from rnnlm.checkpoint import load_checkpoint, save_checkpoint
from rnnlm.errors import UsageError, run_cli
from rnnlm.evaluate import main as evaluate_main
from rnnlm.generate import main as generate_main
from rnnlm.evaluation import EvalResult
from rnnlm.training import distributed, trainer

from conftest import write_tiny_corpus
from test_train import TINY, _cli_error, read_metrics, run_train

pytestmark = pytest.mark.usefixtures("one_thread")

KILL_MARK = "杀死这个进程"


def _dies_on_the_marked_chunk(segments, hmm):
    """A worker task that is killed (as the out-of-memory killer would) when its chunk holds KILL_MARK."""
    if any(KILL_MARK in s for s in segments):
        os.kill(os.getpid(), signal.SIGKILL)
    return tokenize._tokenize_segments_real(segments, hmm)


# -- the token cache ---------------------------------------------------------------------------------------------

def _load(path, tmp_path, **kw):
    return data.load_corpus(path, TokenizerSettings(), cache_dir=tmp_path / "cache", progress=False, **kw)


def test_killed_tokenizing_worker_ends_the_load_quickly(tmp_path, monkeypatch):
    corpus = tmp_path / "c.txt"
    write_tiny_corpus(corpus, lines=300)
    with open(corpus, "a", encoding="utf-8") as f:
        f.write(KILL_MARK + "。\n")
        f.write("我们的祖国充满希望。\n" * 200)
    monkeypatch.setattr(tokenize, "_CHUNK_CHARS", 400)                 # many chunks for two workers
    monkeypatch.setattr(tokenize, "_tokenize_segments_real", tokenize._tokenize_segments, raising=False)
    monkeypatch.setattr(tokenize, "_tokenize_segments", _dies_on_the_marked_chunk)
    started = time.monotonic()
    with pytest.raises(UsageError) as info:
        _load(corpus, tmp_path, workers=2)
    assert time.monotonic() - started < 30
    message = str(info.value)
    assert "tokenizing worker" in message and "of 2 (pid" in message and "SIGKILL" in message
    assert "RNNLM_TOKENIZE_WORKERS=1" in message and "\n" not in message
    assert not (tmp_path / "cache" / "tokens").exists() or not any((tmp_path / "cache" / "tokens").iterdir())


def test_file_changed_while_tokenizing_is_never_cached(tmp_path, monkeypatch):
    corpus = tmp_path / "c.txt"
    corpus.write_text("今天天气很好。\n" * 50, encoding="utf-8")
    real = tokenize.tokenize_file

    def edited_meanwhile(path, *args):
        path.write_text("我们去公园散步。\n" * 50, encoding="utf-8")     # after the hash, before the read
        return real(path, *args)

    monkeypatch.setattr(tokenize, "tokenize_file", edited_meanwhile)
    with pytest.raises(UsageError, match="changed while it was being read"):
        _load(corpus, tmp_path)
    monkeypatch.undo()
    fresh = _load(corpus, tmp_path)                                     # the file as it is now
    assert not fresh.cached and "散步" in fresh.lexicon and "天气" not in fresh.lexicon
    assert _load(corpus, tmp_path).lexicon == fresh.lexicon


def _entry(tmp_path):
    (folder,) = (tmp_path / "cache" / "tokens").iterdir()
    return folder


def test_cache_entry_failing_its_checksum_is_rebuilt(tiny_corpus, tmp_path, caplog):
    first = _load(tiny_corpus, tmp_path)
    ids = np.load(_entry(tmp_path) / "ids.npy")
    ids[[0, 1]] = ids[[1, 0]]                                           # a valid array, other tokens
    np.save(_entry(tmp_path) / "ids.npy", ids)
    with caplog.at_level("WARNING", logger="rnnlm.data"):
        again = _load(tiny_corpus, tmp_path)
    assert not again.cached and np.array_equal(again.ids, first.ids)
    assert "ids does not match its checksum" in caplog.text
    assert _load(tiny_corpus, tmp_path).cached


def test_cache_entry_whose_parts_disagree_is_rebuilt(tiny_corpus, tmp_path, caplog):
    import json
    from rnnlm.data.corpus import _checksum
    first = _load(tiny_corpus, tmp_path)
    folder = _entry(tmp_path)
    counts = np.load(folder / "counts.npy")
    counts[0] += 5
    np.save(folder / "counts.npy", counts)
    meta = json.loads((folder / "meta.json").read_text())
    meta["checksums"]["counts"] = _checksum(counts)                     # checksums agree, the parts do not
    (folder / "meta.json").write_text(json.dumps(meta))
    with caplog.at_level("WARNING", logger="rnnlm.data"):
        again = _load(tiny_corpus, tmp_path)
    assert not again.cached and np.array_equal(again.counts, first.counts)
    assert "counts disagree with the ids" in caplog.text


# -- a model that blows up -----------------------------------------------------------------------------------------

def test_overflowing_perplexity_is_inf_with_the_loss(tiny_corpus, tmp_path, capsys):
    """--lr 100: losses of hundreds of nats; exp overflows, which is printed as inf beside the loss, not a traceback."""
    run_train(tiny_corpus, tmp_path / "r", "--lr", 100, "--max-steps", 4, "--eval-every", 2, "--sample-length", 0)
    out = capsys.readouterr().out
    assert "valid ppl inf (mean loss" in out and "test perplexity: inf (mean loss" in out
    rows = [r for r in read_metrics(tmp_path / "r") if "valid_ppl" in r]
    assert rows and all(r["valid_ppl"] == math.inf and r["valid_loss"] > 709.8 for r in rows)


def test_non_finite_validation_stops_before_saving(tiny_corpus, tmp_path, monkeypatch, capsys):
    real = distributed.evaluate_tokens  # the trainer evaluates through rnnlm.training.distributed
    calls = {"n": 0}

    def nan_at_second(model, tokens, *args, **kw):
        calls["n"] += 1
        result = real(model, tokens, *args, **kw)
        if calls["n"] == 2:
            result = EvalResult(math.nan, math.nan, result.n_targets)
        return result

    monkeypatch.setattr(distributed, "evaluate_tokens", nan_at_second)
    line = _cli_error(["--data", str(tiny_corpus), "--out", str(tmp_path / "r"), *TINY, "--max-steps", "6",
                       "--eval-every", "2"], capsys)
    assert "non-finite value at the validation after step 4: the mean loss is nan" in line
    assert "best.pt and last.pt" in line and "left as they were" in line
    assert load_checkpoint(tmp_path / "r" / "last.pt")["step"] == 2


# -- checkpoints ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_run(tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("small") / "run"
    run_train(tiny_corpus, out, "--max-steps", 2, "--eval-every", 2, "--sample-length", 0)
    return out


def _edited(small_run, tmp_path, edit) -> Path:
    folder = tmp_path / "edited"
    folder.mkdir()
    payload = load_checkpoint(small_run / "last.pt")
    edit(payload)
    save_checkpoint(folder / "last.pt", payload)
    return folder


def test_nan_weights_refused_at_load_naming_the_tensor(small_run, tmp_path, capsys):
    def poison(payload):
        payload["model_state"]["rnn.weight_hh_l1"][0, 0] = math.nan

    folder = _edited(small_run, tmp_path, poison)
    for main, prog, argv in ((evaluate_main, "rnnlm.evaluate", [str(folder / "last.pt")]),
                             (generate_main, "rnnlm.generate", [str(folder / "last.pt")]),
                             (train.main, "rnnlm.train", ["--resume", str(folder), "--max-steps", "3"])):
        line = _cli_line(main, prog, argv, capsys)
        assert "non-finite weights: rnn.weight_hh_l1 has 1 NaN or infinite value(s)" in line


def _cli_line(main, prog, argv, capsys, code=2) -> str:
    with pytest.raises(SystemExit) as info:
        run_cli(main, prog, argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == code, err
    assert err and "Traceback" not in "\n".join(err)
    return err[-1]


def test_resume_without_optimizer_state_restarts_it_with_a_warning(small_run, tmp_path, caplog):
    folder = _edited(small_run, tmp_path, lambda p: p.pop("optimizer_state"))
    with caplog.at_level("WARNING", logger="rnnlm.train"):
        assert train.main(["--resume", str(folder), "--max-steps", "3", "--no-progress"]) == 0
    assert "holds no optimizer state: Adam restarts" in caplog.text
    assert load_checkpoint(folder / "last.pt")["step"] == 3


@pytest.mark.parametrize("edit,expected", [
    (lambda p: p.pop("rng_state"), "it holds no rng_state"),
    (lambda p: p.update(step="7"), "its step is a str, not an int"),
    (lambda p: p.update(data_state=[1]), "its data_state is a list, not a dict"),
    (lambda p: p.update(optimizer_state=3), "its optimizer_state is a int, not an optimizer state dict"),
    (lambda p: p.update(best_valid_ppl="low"), "its best_valid_ppl is a str, not a number"),
    (lambda p: p.update(rng_state={"torch": 5}), "rng_state is damaged"),
    (lambda p: p.update(hidden=torch.zeros(3)), "carried hidden state"),
])
def test_resume_from_a_stripped_or_edited_checkpoint_is_one_line(small_run, tmp_path, capsys, edit, expected):
    folder = _edited(small_run, tmp_path, edit)
    line = _cli_error(["--resume", str(folder), "--max-steps", "3"], capsys)
    assert expected in line


# -- options refused before any work ---------------------------------------------------------------------------------

@pytest.mark.parametrize("args,expected", [
    (["--seed", str(2**64)], "--seed must be an integer from"),
    (["--seed", str(-2**63 - 1)], "--seed must be an integer from"),
    (["--num-layers", "1", "--dropout", "0.9"], "--dropout 0.9 does nothing with --num-layers 1"),
    (["--hidden-size", "100000"], "training this model needs at least"),
    (["--sample-prompt", ""], "--sample-prompt is empty"),
    (["--sample-prompt", " \t"], "--sample-prompt is empty"),
])
def test_train_options_refused_in_one_line(tiny_corpus, tmp_path, capsys, args, expected):
    line = _cli_error(["--data", str(tiny_corpus), "--out", str(tmp_path / "o"), *TINY, *args], capsys)
    assert expected in line
    assert not (tmp_path / "o" / "last.pt").exists() and not (tmp_path / "o" / "metrics.jsonl").exists()


@pytest.mark.parametrize("args,expected", [
    (["--seed", str(2**64)], "--seed must be an integer from"),
    (["--length", "2000000000"], "generating --num-samples × --length = 2,000,000,000 words needs at least"),
    (["--num-samples", "100000000"], "give a smaller --num-samples, --length"),
])
def test_generate_sizes_refused_in_one_line(small_run, capsys, args, expected):
    assert expected in _cli_line(generate_main, "rnnlm.generate", [str(small_run / "last.pt"), *args], capsys)


def test_seed_at_the_64_bit_limits_works(small_run, capsys):
    for seed in (2**64 - 1, -2**63):
        assert generate_main([str(small_run / "last.pt"), "--seed", str(seed), "--length", "3"]) == 0


@pytest.mark.parametrize("error", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried "
                 "to allocate 400000000000 bytes. Error code 12 (Cannot allocate memory)"),
    MemoryError(),
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
])
def test_out_of_memory_is_one_line(capsys, error):
    def main(argv):
        raise error

    line = _cli_line(main, "rnnlm.generate", [], capsys)
    assert line.startswith("rnnlm.generate: error: out of memory") and "smaller" in line


def test_other_runtime_errors_are_not_disguised(capsys):
    def main(argv):
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        run_cli(main, "rnnlm.generate", [])


# -- what happened is said -------------------------------------------------------------------------------------------

def test_resume_past_max_steps_says_nothing_was_trained(small_run, tmp_path, capsys):
    folder = tmp_path / "r"
    shutil.copytree(small_run, folder)
    assert train.main(["--resume", str(folder), "--max-steps", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "nothing to train: the run is already at step 2, at or past --max-steps 1" in out
    assert "epochs" not in out.split("training stopped")[1].splitlines()[0]
    assert load_checkpoint(folder / "last.pt")["step"] == 2


# -- the machine around the run -------------------------------------------------------------------------------------

NO_TEMP = ("import sys, tempfile\n"
           "def none(*a, **k): raise FileNotFoundError('No usable temporary directory found')\n"
           "tempfile.gettempdir = tempfile._get_default_tempdir = none\n"
           "tempfile.tempdir = None\n"
           "from rnnlm.errors import run_cli\nfrom rnnlm.generate import main\n"
           "run_cli(main, 'rnnlm.generate', sys.argv[1:])\n")


def _generate_in_a_new_process(checkpoint, cache, code=NO_TEMP):
    env = {**os.environ, "RNNLM_CACHE_DIR": str(cache), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-c", code, str(checkpoint), "--length", "3", "--seed", "0"],
                          capture_output=True, text=True, env=env, timeout=300)


def test_generate_without_a_temporary_folder_and_jieba_cache_in_rnnlm_cache(small_run, tmp_path):
    """No usable temporary folder: jieba's dictionary cache goes to rnnlm's cache folder, said once."""
    done = _generate_in_a_new_process(small_run / "last.pt", tmp_path / "cache")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and done.stdout.startswith("我们")
    assert list((tmp_path / "cache" / "jieba").glob("jieba*.cache"))
    assert done.stderr.count("jieba's dictionary cache:") == 1          # said when written, not on every load


def test_jieba_cache_that_cannot_be_written_is_one_warning(small_run, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    done = _generate_in_a_new_process(small_run / "last.pt", blocker)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "Dump cache file failed" not in done.stderr
    assert done.stderr.count("jieba cannot write its dictionary cache") == 1


# -- Ctrl-C ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("main,prog", [(evaluate_main, "rnnlm.evaluate"), (generate_main, "rnnlm.generate")])
def test_ctrl_c_in_a_command_is_one_line_and_130(monkeypatch, capsys, main, prog, small_run):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("rnnlm.cli.LanguageModel.from_checkpoint", interrupted)
    assert _cli_line(main, prog, [str(small_run / "last.pt")], capsys, code=130) == f"{prog}: interrupted"


def test_ctrl_c_while_starting_is_one_line_and_130():
    """`python -m rnnlm.<command>` interrupted while it imports torch: no traceback."""
    code = ("import sys; sys.argv[0] = '-m'; import rnnlm, os, signal, time; os.kill(os.getpid(), signal.SIGINT); "
            "time.sleep(30)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 130 and done.stderr == "rnnlm: interrupted while starting\n"


def test_a_run_too_long_to_cut_safely_is_cut_with_a_warning(tmp_path, monkeypatch, caplog):
    """The README's claim: long lines give jieba's tokens, except a run without spaces or punctuation longer than
    the chunk size, which is cut (maybe mid-word) and reported."""
    monkeypatch.setattr(tokenize, "_CHUNK_CHARS", 300)
    corpus = tmp_path / "c.txt"
    text = "我们的祖国充满希望" * 100 + "\n" + "，".join(["改革开放是强国之路"] * 100) + "\n"
    corpus.write_text(text, encoding="utf-8")
    with caplog.at_level("WARNING", logger="rnnlm.data"):
        c = _load(corpus, tmp_path)
    assert "running more than 300 characters without a space or punctuation was cut 2 time(s)" in caplog.text
    import jieba
    second = "，".join(["改革开放是强国之路"] * 100)
    assert c.line_words(1) == [w for w in jieba.cut(second) if w.strip()]    # safe cuts: jieba's own tokens


def test_latin_words_are_joined_with_spaces_chinese_without():
    assert join_words(["hello", "world", ",", "we", "2", "GDP", "增长", "我们", "的", "3.5", "%"]) == \
        "hello world, we 2 GDP增长我们的3.5%"
    vocab = data.Vocab.from_list(["<pad>", "<unk>", "the", "cat", "sat", "。", "我们"])
    assert vocab.decode([2, 3, 0, 4, 5, 6]) == "the cat sat。我们"
    assert vocab.decode([2, 1, 3, 6, 1, 6]) == "the <unk> cat我们<unk>我们"


def test_generated_latin_text_is_not_glued(tmp_path):
    from rnnlm.data import Vocab
    from rnnlm.inference.text import generate
    from rnnlm.model import ModelConfig, WordRNN
    torch.manual_seed(0)
    vocab = Vocab.from_list(["<pad>", "<unk>", "the", "cat", "sat", "on", "mat"])
    model = WordRNN(ModelConfig(vocab_size=len(vocab), embed_size=4, hidden_size=4, num_layers=1)).eval()
    (text,) = generate(model, vocab, TokenizerSettings(), "the cat", 20, seed=0)
    words = text.split(" ")
    assert text.startswith("the cat ") and len(words) >= 10
    assert all(w in {"the", "cat", "sat", "on", "mat", "<unk>"} for w in words), text


# -- rnnlm.report ----------------------------------------------------------------------------------------------------

def _report(argv, capsys):
    from rnnlm.report import main as report_main
    return _cli_line(report_main, "python -m rnnlm.report", [str(a) for a in argv], capsys)


def _metrics_file(tmp_path, *lines) -> Path:
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_report_to_an_unwritable_out_is_one_line(tmp_path, capsys):
    metrics = _metrics_file(tmp_path, '{"step": 1, "loss": 2.0, "time": 1}', '{"step": 2, "loss": 1.5, "time": 2}')
    (tmp_path / "o" / "report.md").mkdir(parents=True)           # report.md cannot be written (even by root)
    line = _report(["--metrics", metrics, "--out", tmp_path / "o"], capsys)
    assert line.startswith("python -m rnnlm.report: error: --out") and "cannot write" in line


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_report_skips_absurd_numbers_and_nesting(tmp_path, capsys):
    from rnnlm.report import main as report_main
    metrics = _metrics_file(tmp_path,
                            '{"step": 1' + "0" * 400 + ', "loss": 2.0, "time": 1}',          # int beyond a float
                            '{"step": 1' + "0" * 5000 + ', "loss": 2.0, "time": 1}',         # beyond int parsing
                            '{"step": 2, "loss": 1e308, "time": 1e308, "valid_ppl": 1e308}',
                            '{"step": 3, "x": ' + "[" * 100000 + "]" * 100000 + ', "loss": 1.0}',  # nesting
                            '{"step": 4, "loss": 1.5, "time": 4, "valid_ppl": 80.0}')
    assert report_main(["--metrics", str(metrics), "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "nested too deeply" in err and "line 2 skipped" in err
    assert (tmp_path / "o" / "report.md").exists()


def test_benchmark_json_nested_too_deeply_is_one_line(tmp_path, capsys):
    bench = tmp_path / "b.json"
    bench.write_text("[" * 100000 + "]" * 100000)
    assert "nested too deeply" in _report([bench, "--no-compile", "--out", tmp_path / "o"], capsys)


@pytest.mark.parametrize("value", ["x", 3, [1], True])
def test_benchmark_json_with_a_malformed_machine_info_gives_a_partial_report(tmp_path, capsys, value):
    import json
    from rnnlm.report import main as report_main
    from test_report import bench_json
    data = bench_json(groups=("recurrence forward",))
    data["machine_info"] = value
    bench = tmp_path / "b.json"
    bench.write_text(json.dumps(data))
    assert report_main([str(bench), "--no-parity", "--no-compile", "--out", str(tmp_path / "o")]) == 0
    assert "### recurrence forward" in (tmp_path / "o" / "report.md").read_text()


@pytest.mark.parametrize("where,key,value", [
    ("extra_info", "batch_size", "x"), ("extra_info", "seq_len", []), ("extra_info", "hidden_size", 1e308),
    ("stats", "rounds", "x"),
])
def test_benchmark_json_with_malformed_fields_gives_a_partial_report(tmp_path, capsys, where, key, value):
    import json
    from rnnlm.report import main as report_main
    from test_report import bench_json
    data = bench_json(groups=("recurrence forward",))
    data["benchmarks"][0][where][key] = value
    bench = tmp_path / "b.json"
    bench.write_text(json.dumps(data))
    assert report_main([str(bench), "--no-parity", "--no-compile", "--out", str(tmp_path / "o")]) == 0
    assert "### recurrence forward" in (tmp_path / "o" / "report.md").read_text()
    assert where == "stats" or f"extra_info['{key}']" in capsys.readouterr().err
