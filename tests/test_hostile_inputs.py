"""Hostile inputs, the second round (issue 15): each ends in a correct result or one clear line with exit code 2,
and never in a hang, a traceback, or lost or mixed data. The run folder's own cases are in test_run_folder.py."""
from __future__ import annotations

import math
import os
import signal
import time

import numpy as np
import pytest

from rnnlm import data
from rnnlm.data import TokenizerSettings, tokenize
from rnnlm.checkpoint import load_checkpoint
from rnnlm.errors import UsageError
from rnnlm.evaluation import EvalResult
from rnnlm.training import trainer

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
    real = trainer.evaluate_tokens
    calls = {"n": 0}

    def nan_at_second(model, tokens, *args, **kw):
        calls["n"] += 1
        result = real(model, tokens, *args, **kw)
        if calls["n"] == 2:
            result = EvalResult(math.nan, math.nan, result.n_targets)
        return result

    monkeypatch.setattr(trainer, "evaluate_tokens", nan_at_second)
    line = _cli_error(["--data", str(tiny_corpus), "--out", str(tmp_path / "r"), *TINY, "--max-steps", "6",
                       "--eval-every", "2"], capsys)
    assert "non-finite value at the validation after step 4: the mean loss is nan" in line
    assert "best.pt and last.pt" in line and "left as they were" in line
    assert load_checkpoint(tmp_path / "r" / "last.pt")["step"] == 2
