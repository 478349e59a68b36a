"""Hostile inputs, the second round (issue 15): each ends in a correct result or one clear line with exit code 2,
and never in a hang, a traceback, or lost or mixed data. The run folder's own cases are in test_run_folder.py."""
from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from rnnlm import data
from rnnlm.data import TokenizerSettings, tokenize
from rnnlm.errors import UsageError

from conftest import write_tiny_corpus

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
