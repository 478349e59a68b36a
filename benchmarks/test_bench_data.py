"""The data pipeline: tokenizing a small corpus (first run, empty cache), loading it again from the cache,
and batching a token stream into (x, y) windows. None of it depends on the backend: backend is "n/a".

Corpora are the tests' tiny-corpus text (tests/conftest.py write_tiny_corpus) at two sizes; batching walks
one epoch of a 1,000,000-token stream (about the default corpus) with each model shape's B and T.
"""
from __future__ import annotations

import tempfile

import pytest
import torch

CORPUS_LINES = {"small": 400, "default": 4_000}
STREAM_TOKENS = 1_000_000
BACKEND = "n/a"


def data_module():
    try:
        import rnnlm.data as data
    except ModuleNotFoundError as err:
        if err.name == "rnnlm.data":
            pytest.skip("rnnlm/data.py is missing")
        raise
    return data


@pytest.fixture(params=list(CORPUS_LINES))
def corpus_case(request, corpus_dir, tools):
    name = request.param
    return name, tools.corpus_file(corpus_dir, CORPUS_LINES[name])


@pytest.mark.benchmark(group="data: tokenize (first run)")
def test_tokenize(run_bench, corpus_case, tmp_path):
    data = data_module()
    name, path = corpus_case
    settings = data.TokenizerSettings()
    n_tokens = len(data.load_corpus(str(path), settings, cache_dir=tmp_path / "probe", progress=False).ids)

    def fresh_cache():
        return tempfile.mkdtemp(dir=tmp_path)  # every round tokenizes: an empty cache folder

    def step(cache_dir):
        return data.load_corpus(str(path), settings, cache_dir=cache_dir, progress=False)

    # the warm-up round loads jieba's dictionary, which the first run in a fresh process also pays once
    run_bench(step, backend=BACKEND, shape={"shape": name, "corpus_lines": CORPUS_LINES[name]},
              tokens=n_tokens, setup=fresh_cache, rounds=3)


@pytest.mark.benchmark(group="data: load cached corpus")
def test_load_cached(run_bench, corpus_case, tmp_path):
    data = data_module()
    name, path = corpus_case
    settings = data.TokenizerSettings()
    cache = tmp_path / "cache"
    n_tokens = len(data.load_corpus(str(path), settings, cache_dir=cache, progress=False).ids)

    def step():
        return data.load_corpus(str(path), settings, cache_dir=cache, progress=False)

    run_bench(step, backend=BACKEND, shape={"shape": name, "corpus_lines": CORPUS_LINES[name]},
              tokens=n_tokens, rounds=5)


@pytest.mark.benchmark(group="data: batching (one epoch, stream)")
def test_stream_batching(run_bench, shape):
    data = data_module()
    tokens = torch.randint(0, 10_000, (STREAM_TOKENS,), generator=torch.Generator().manual_seed(0))
    batches = data.StreamBatches(tokens, shape.batch_size, shape.seq_len)
    n_tokens = len(batches) * shape.batch_size * shape.seq_len

    def step():
        last = None
        for _, x, y in batches.windows(0):  # from the start every round (iterating resumes a position)
            last = x, y
        return last

    run_bench(step, backend=BACKEND, shape={"shape": shape.name, "batch_size": shape.batch_size,
                                            "seq_len": shape.seq_len},
              tokens=n_tokens, rounds=3)
