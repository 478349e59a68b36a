"""rnnlm.data: corpus loading and its cache, vocabulary, splits, batching, and every bad input."""
from __future__ import annotations

import logging
import os

import jieba
import numpy as np
import pytest
import torch

from rnnlm import data
from rnnlm.data import PAD, UNK, Corpus, StreamBatches, TokenizerSettings, Vocab, WindowBatches, corpus, tokenize
from rnnlm.errors import UsageError


def load(path, tmp_path, **kw):
    """load_corpus with a cache folder of the test's own."""
    return data.load_corpus(path, kw.pop("settings", TokenizerSettings()), cache_dir=tmp_path / "cache",
                            progress=False, **kw)


def words(corpus: Corpus) -> list[str]:
    return [corpus.lexicon[i] for i in corpus.ids.tolist()]


def write(tmp_path, content, name="c.txt") -> os.PathLike:
    p = tmp_path / name
    if isinstance(content, str):
        content = content.encode("utf-8")
    p.write_bytes(content)
    return p


@pytest.fixture(scope="module")
def tiny(tiny_corpus, tmp_path_factory):
    return data.load_corpus(tiny_corpus, TokenizerSettings(), cache_dir=tmp_path_factory.mktemp("c"), progress=False)


# ------------------------------------------------------------------------------------------------ corpus

def test_tiny_corpus_tokens_match_jieba_on_whole_text(tiny, tiny_corpus):
    text = tiny_corpus.read_text(encoding="utf-8")
    assert words(tiny) == [w for w in jieba.cut(text) if w.strip()]
    assert tiny.n_lines == 400 and tiny.ids.dtype == np.int32 and tiny.line_offsets.dtype == np.int64
    assert tiny.line_offsets[0] == 0 and tiny.line_offsets[-1] == tiny.n_tokens
    assert np.all(np.diff(tiny.line_offsets) > 0)
    assert tiny.counts.sum() == tiny.n_tokens and len(tiny.counts) == len(tiny.lexicon) == len(set(tiny.lexicon))
    lines = text.splitlines()
    assert "".join(tiny.line_words(7)) == lines[7]


def test_worker_pool_gives_the_same_tokens(tiny, tiny_corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(tokenize, "_CHUNK_CHARS", 500)      # many chunks for 2 workers
    par = load(tiny_corpus, tmp_path, workers=2)
    assert not par.cached
    assert words(par) == words(tiny)
    assert np.array_equal(par.line_offsets, tiny.line_offsets)


def test_long_lines_are_cut_exactly_where_jieba_would_cut(tmp_path, monkeypatch):
    monkeypatch.setattr(tokenize, "_CHUNK_CHARS", 64)
    monkeypatch.setattr(tokenize, "_READ_BLOCK", 50)        # blocks end inside UTF-8 sequences and \r\n
    line = "，".join(["国家主席发表新年讲话", "经济建设取得了巨大成就", "ABC123", "科学技术是第一生产力"] * 40)
    run = "人民群众生活水平不断提高" * 20                   # 240 characters with nowhere safe to cut
    text = line + "。\r\n" + run + "\n短句。\r第三行"
    c = load(write(tmp_path, text), tmp_path, workers=1)
    assert c.n_lines == 4
    assert [w for l in (0, 2, 3) for w in c.line_words(l)] == \
        [w for t in (line + "。", "短句。", "第三行") for w in jieba.cut(t) if w.strip()]
    assert "".join(c.line_words(1)) == run               # cut mid-run: the text is kept whole


def test_tokenize_text_drops_whitespace_and_controls():
    toks = data.tokenize_text("我爱 北京\t天安门\x00\n", TokenizerSettings())
    assert toks and all(t.strip() and "\x00" not in t for t in toks)
    assert "".join(toks) == "我爱北京天安门"


def test_settings_round_trip_and_validation():
    s = TokenizerSettings(hmm=False, encoding_errors="replace")
    assert TokenizerSettings.from_dict(s.to_dict()) == s
    with pytest.raises(UsageError, match="encoding_errors"):
        TokenizerSettings(encoding_errors="ignore")
    with pytest.raises(UsageError, match="unknown tokenizer setting"):
        TokenizerSettings.from_dict({"hmm": True, "lower": True})


# ------------------------------------------------------------------------------------------------- cache

def test_second_load_comes_from_cache_without_jieba(tiny_corpus, tmp_path, monkeypatch):
    first = load(tiny_corpus, tmp_path)
    assert not first.cached
    assert len(list((tmp_path / "cache" / "tokens").iterdir())) == 1

    def boom(*a, **k):
        raise AssertionError("jieba called on a cache hit")
    monkeypatch.setattr(tokenize, "_tokenize_segments", boom)
    monkeypatch.setattr(tokenize, "tokenize_file", boom)
    monkeypatch.setattr(jieba.Tokenizer, "cut", boom)
    second = load(tiny_corpus, tmp_path)
    assert second.cached
    assert second.lexicon == first.lexicon and np.array_equal(second.ids, first.ids)
    assert np.array_equal(second.line_offsets, first.line_offsets) and np.array_equal(second.counts, first.counts)
    assert second.content_hash == first.content_hash and second.settings == first.settings


def test_cache_invalidated_by_content_and_by_hmm(tmp_path):
    p = write(tmp_path, "今天天气很好。\n我们去公园散步。\n")
    assert not load(p, tmp_path).cached
    assert load(p, tmp_path).cached
    assert not load(p, tmp_path, settings=TokenizerSettings(hmm=False)).cached
    assert load(p, tmp_path, settings=TokenizerSettings(hmm=False)).cached
    p.write_text("今天天气很好。\n我们去公园跑步。\n", encoding="utf-8")   # same size, other content
    c = load(p, tmp_path)
    assert not c.cached and "跑步" in words(c)


def test_damaged_cache_is_rebuilt(tiny_corpus, tmp_path, caplog):
    first = load(tiny_corpus, tmp_path)
    (folder,) = (tmp_path / "cache" / "tokens").iterdir()
    (folder / "ids.npy").write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, logger="rnnlm.data"):
        again = load(tiny_corpus, tmp_path)
    assert not again.cached and np.array_equal(again.ids, first.ids) and "damaged" in caplog.text
    assert load(tiny_corpus, tmp_path).cached


def test_unwritable_cache_is_not_fatal(tiny_corpus, tmp_path, caplog):
    blocker = write(tmp_path, "a file where the cache folder should be", "cache")
    with caplog.at_level(logging.WARNING, logger="rnnlm.data"):
        c = data.load_corpus(tiny_corpus, TokenizerSettings(), cache_dir=blocker, progress=False)
    assert c.n_tokens > 0 and not c.cached and "cannot write the token cache" in caplog.text
    with pytest.raises(UsageError, match="cannot write the default corpus .*RNNLM_CACHE_DIR"):
        data.default_corpus_path(blocker)


def test_cache_dir_from_environment(tiny_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("RNNLM_CACHE_DIR", str(tmp_path / "env-cache"))
    data.load_corpus(tiny_corpus, TokenizerSettings(), progress=False)
    assert any((tmp_path / "env-cache" / "tokens").iterdir())


# ---------------------------------------------------------------------------------------- default corpus

def test_pos_tags_and_brackets_are_stripped():
    assert corpus.strip_pos_tags("[中央/n  人民/n  广播/vn  电台/n]nt  ，/w  //w  Windows/nx  95/m\n") == \
        "中央人民广播电台，/Windows 95"
    src = corpus._default_corpus_source()
    with src.open("r", encoding="utf-8") as f:
        head = [next(f) for _ in range(200)]
    plain = [corpus.strip_pos_tags(line) for line in head]
    assert plain[0] == "迈向充满希望的新世纪——一九九八年新年讲话（附图片１张）"
    assert plain[1] == "中共中央总书记、国家主席江泽民"
    assert all(line and "/" not in line for line in plain)


def test_default_corpus_file_is_written_once(tmp_path):
    path = data.default_corpus_path(tmp_path)
    with open(path, encoding="utf-8") as f:
        assert sum(1 for _ in f) == 19484
    mtime = path.stat().st_mtime_ns
    assert data.default_corpus_path(tmp_path) == path and path.stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_default_corpus_loads():
    c = data.load_corpus(None, progress=False)         # the session cache: tokenizes ~1.07 M words
    assert c.n_lines == 19484 and c.n_tokens == 1_065_288
    assert c.line_words(0)[:3] == ["迈向", "充满希望", "的"]


# ------------------------------------------------------------------------------------------------- vocab

def test_vocab_size_is_exact(tiny):
    v = Vocab.build(tiny, 10)
    assert len(v) == 10 and v.itos[:2] == [PAD, UNK] and v.pad_id == 0 and v.unk_id == 1
    order = np.argsort(-tiny.counts, kind="stable")
    assert tiny.counts[tiny.lexicon.index(v.itos[2])] == tiny.counts[order[0]]


def test_unknown_words_map_to_unk(tiny):
    v = Vocab.build(tiny, 10)
    assert v.encode(["从来没有见过的词", v.itos[5]]) == [1, 5]
    table = v.lookup_table(tiny)
    assert table.dtype == np.int64 and len(table) == len(tiny.lexicon)
    for w, i in zip(tiny.lexicon, table.tolist()):
        assert i == (v.stoi[w] if w in v else 1)
    assert v.decode([0, 5, 1, 0]) == v.itos[5] + UNK


def test_ties_are_broken_by_word_whatever_the_order():
    counts = {"乙": 3, "甲": 3, "丙": 5, "丁": 3, "戊": 1}
    a = Vocab.build(counts, 5)
    b = Vocab.build(dict(reversed(list(counts.items()))), 5)
    assert a.itos == b.itos == [PAD, UNK, "丙", "丁", "乙"]   # count desc, then code point
    assert Vocab.build({"x": 2, UNK: 9, PAD: 9}, 10).itos == [PAD, UNK, "x"]


def test_vocab_larger_than_corpus_is_fine(tiny, caplog):
    with caplog.at_level(logging.WARNING, logger="rnnlm.data"):
        v = Vocab.build(tiny, 100_000)
    assert len(v) == len(tiny.lexicon) + 2 and "distinct words" in caplog.text


def test_vocab_round_trip_and_bad_lists(tiny):
    v = Vocab.build(tiny, 50)
    assert Vocab.from_list(v.to_list()) == v
    for bad in ([], ["a", "b"], [PAD, UNK, "x", "x"], [PAD, UNK, ""]):
        with pytest.raises(UsageError, match="invalid vocabulary"):
            Vocab.from_list(bad)
    for size in (1, 0, -5, 2.5, True):
        with pytest.raises(UsageError, match="vocabulary size"):
            Vocab.build(tiny, size)


# ------------------------------------------------------------------------------------------------ splits

def test_splits_are_contiguous_blocks_of_lines(tiny):
    v = Vocab.build(tiny, 10_000)
    s = data.split_corpus(tiny, v)
    assert list(s) == ["train", "valid", "test"] and all(t.dtype == torch.int64 and t.dim() == 1 for t in s.values())
    full = torch.from_numpy(v.lookup_table(tiny)[tiny.ids])
    off = tiny.line_offsets
    assert torch.equal(s["train"], full[: off[360]])               # 400 lines: 360 / 20 / 20
    assert torch.equal(s["valid"], full[off[360]: off[380]])
    assert torch.equal(s["test"], full[off[380]:])
    s2 = data.split_corpus(tiny, v, (0.8, 0.1, 0.1))
    assert len(s2["train"]) == off[320]
    with pytest.raises(UsageError, match="fractions"):
        data.split_corpus(tiny, v, (0.9, 0.2, 0.1))


def test_one_line_corpus_is_split_by_tokens(tmp_path, caplog):
    c = load(write(tmp_path, "，".join(["今天天气很好", "我们去公园散步"] * 50) + "。"), tmp_path)
    assert c.n_lines == 1
    with caplog.at_level(logging.WARNING, logger="rnnlm.data"):
        s = data.split_corpus(c, Vocab.build(c, 100))
    assert "split by tokens" in caplog.text
    n = c.n_tokens
    assert [len(s[k]) for k in ("train", "valid", "test")] == [round(n * .9), round(n * .95) - round(n * .9),
                                                                n - round(n * .95)]


# ---------------------------------------------------------------------------------------------- batching

def test_stream_batches_shapes_contiguity_and_coverage():
    tokens = torch.arange(1003)
    b = StreamBatches(tokens, batch_size=4, seq_len=10)
    assert b.carry_hidden and b.stream_len == 250 and len(b) == 25
    got = list(b)
    assert len(got) == 25 and b.position == 25
    for x, y in got:
        assert x.shape == y.shape == (4, 10) and x.dtype == y.dtype == torch.int64 and x.is_contiguous()
        assert torch.equal(y, x + 1)                                   # y is x shifted by one token
    for (x0, y0), (x1, _) in zip(got, got[1:]):
        assert torch.equal(x1[:, 0], y0[:, -1])                       # the next window continues each stream
    ys = torch.cat([y for _, y in got], dim=1)
    assert torch.equal(ys.flatten(), tokens[1:1001])                  # every target exactly once, in order
    assert b.tokens_per_epoch == 1000


def test_stream_batches_short_last_window_and_drop_last():
    tokens = torch.arange(100)
    b = StreamBatches(tokens, 3, 7)                                    # S = 33: 4 full windows and one of 5
    shapes = [tuple(x.shape) for x, _ in b]
    assert shapes == [(3, 7)] * 4 + [(3, 5)]
    ys = torch.cat([y for _, _, y in b.windows()], dim=1)
    assert torch.equal(ys.flatten(), tokens[1:100])
    assert len(StreamBatches(tokens, 3, 7, drop_last=True)) == 4


def test_stream_batches_resume_at_the_same_position():
    tokens = torch.randint(0, 50, (500,))
    a = StreamBatches(tokens, 4, 6)
    it = iter(a)
    for _ in range(7):
        next(it)
    state = a.state_dict()
    rest = [x for x, _ in it]
    b = StreamBatches(tokens, 4, 6)
    b.load_state_dict(state)
    assert b.position == 7
    resumed = [x for x, _ in b]
    assert len(resumed) == len(rest) and all(torch.equal(p, q) for p, q in zip(resumed, rest))
    assert b.position == len(b) and len(list(b)) == len(b)            # the next epoch starts from 0
    with pytest.raises(UsageError, match="another batch layout"):
        StreamBatches(tokens, 5, 6).load_state_dict(state)
    with pytest.raises(UsageError, match="position"):
        b.load_state_dict({"position": 10_000})


def test_window_batches_seeded_reproducible():
    tokens = torch.randint(0, 1000, (600,))

    def run(seed):
        return list(WindowBatches(tokens, 8, 12, torch.Generator().manual_seed(seed)))
    a, b, c = run(3), run(3), run(4)
    assert len(a) == (600 - 12) // 8
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert not all(torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))
    wins = tokens.unfold(0, 13, 1)
    for x, y in a[:3]:
        assert x.shape == y.shape == (8, 12) and torch.equal(x[:, 1:], y[:, :-1])
        for row_x, row_y in zip(x, y):
            assert any(torch.equal(torch.cat([row_x, row_y[-1:]]), w) for w in wins)
    assert not WindowBatches.carry_hidden


def test_window_batches_resume_across_epochs():
    tokens = torch.randint(0, 1000, (300,))
    ref = WindowBatches(tokens, 8, 10, torch.Generator().manual_seed(1))
    full = [x for _ in range(3) for x, _ in ref]                      # three epochs in one go
    a = WindowBatches(tokens, 8, 10, torch.Generator().manual_seed(1))
    part = [x for x, _ in a]
    it = iter(a)
    part += [next(it)[0] for _ in range(5)]                           # five batches into epoch 2
    state = a.state_dict()
    b = WindowBatches(tokens, 8, 10, torch.Generator().manual_seed(999))
    b.load_state_dict(state)
    part += [x for x, _ in b] + [x for x, _ in b]
    assert len(part) == len(full) and all(torch.equal(p, q) for p, q in zip(part, full))


def test_batchers_name_the_numbers_when_the_corpus_is_too_small():
    with pytest.raises(UsageError, match=r"valid split has 15 tokens, fewer than seq_len \+ 1 = 21"):
        StreamBatches(torch.arange(15), 2, 20, name="valid split")
    with pytest.raises(UsageError, match=r"batch size 64 is too large .*1000 tokens .*49 streams of seq_len 20"):
        StreamBatches(torch.arange(1000), 64, 20)
    with pytest.raises(UsageError, match="fewer than seq_len"):
        WindowBatches(torch.arange(20), 2, 20, torch.Generator())
    with pytest.raises(UsageError, match=r"batch size 64 is too large .*30 tokens make 10 windows"):
        WindowBatches(torch.arange(30), 64, 20, torch.Generator())
    with pytest.raises(UsageError, match="batch size must be a positive integer"):
        StreamBatches(torch.arange(100), 0, 5)
    assert data.max_batch_size(1000, 20) == 49
    StreamBatches(torch.arange(1000), 49, 20)


# --------------------------------------------------------------------------------------------- bad input

def test_missing_empty_whitespace_directory(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load(tmp_path / "nope.txt", tmp_path)
    with pytest.raises(UsageError, match="is empty"):
        load(write(tmp_path, b""), tmp_path)
    with pytest.raises(UsageError, match="no words"):
        load(write(tmp_path, " \n\t\r\n\u3000  \n"), tmp_path)
    with pytest.raises(UsageError, match="no words"):
        load(write(tmp_path, b"\x00\x00 \n\x00"), tmp_path)
    with pytest.raises(UsageError, match="is a directory"):
        load(tmp_path, tmp_path)


def test_unreadable_file(tmp_path, monkeypatch):
    p = write(tmp_path, "你好。\n")
    p.chmod(0)
    try:
        if os.access(p, os.R_OK):                    # root reads anything: pretend the permission is missing
            monkeypatch.setattr(corpus.os, "access", lambda *a, **k: False)
        with pytest.raises(UsageError, match="cannot read .*permission denied"):
            load(p, tmp_path)
    finally:
        p.chmod(0o644)


@pytest.mark.parametrize("block", [1 << 20, 7])           # 7: the bad byte arrives in a later read
def test_invalid_utf8_says_where(tmp_path, monkeypatch, block):
    monkeypatch.setattr(tokenize, "_READ_BLOCK", block)
    p = write(tmp_path, "第一行。\n第二行。\n坏".encode("utf-8") + b"\xff" + "字节\n".encode("utf-8"))
    offset = len("第一行。\n第二行。\n坏".encode("utf-8"))
    with pytest.raises(UsageError) as err:
        load(p, tmp_path)
    msg = err.value.cli_message()                         # as a CLI shows it: the parameter as its flag
    assert f"line 3, byte offset {offset}" in msg and "--encoding-errors replace" in msg and "\n" not in msg
    assert "encoding_errors replace" in str(err.value)      # the library names the parameter


@pytest.mark.parametrize("block", [1 << 20, 5])
def test_invalid_utf8_replaced_and_counted(tmp_path, caplog, monkeypatch, block):
    monkeypatch.setattr(tokenize, "_READ_BLOCK", block)
    raw = "好\ufffd的".encode("utf-8") + b"\xff\xfe" + "开始。\n".encode("utf-8") + b"\xe4\xb8" + "结束\n".encode()
    with caplog.at_level(logging.WARNING, logger="rnnlm.data"):
        c = load(write(tmp_path, raw), tmp_path, settings=TokenizerSettings(encoding_errors="replace"))
    assert c.replaced == 4 - 1 and "replaced 3 invalid" in caplog.text   # \xff, \xfe, \xe4\xb8 (not the real U+FFFD)
    assert c.n_lines == 2 and "结束" in words(c)


def test_gbk_chinese_is_named(tmp_path):
    p = write(tmp_path, "我们的祖国充满希望。\n".encode("gbk"))
    with pytest.raises(UsageError, match="GBK") as err:
        load(p, tmp_path)
    assert "line 1, byte offset 0" in str(err.value)


def test_nul_bytes_are_whitespace(tmp_path):
    a = load(write(tmp_path, "人民\x00群众\x00\x00生活\n", "a.txt"), tmp_path)
    b = load(write(tmp_path, "人民 群众  生活\n", "b.txt"), tmp_path)
    assert words(a) == words(b) and "\x00" not in "".join(words(a))


def test_mixed_line_endings(tmp_path):
    a = load(write(tmp_path, "改革开放。\r\n科学技术。\r经济建设。\n世界和平", "a.txt"), tmp_path)
    b = load(write(tmp_path, "改革开放。\n科学技术。\n经济建设。\n世界和平\n", "b.txt"), tmp_path)
    assert a.n_lines == b.n_lines == 4
    assert words(a) == words(b) and np.array_equal(a.line_offsets, b.line_offsets)


def test_bom_and_only_punctuation(tmp_path):
    c = load(write(tmp_path, "\ufeff，。！？  、、……\n"), tmp_path)
    assert words(c) == ["，", "。", "！", "？", "、", "、", "…", "…"]


@pytest.mark.slow
def test_ten_megabyte_single_line(tmp_path):
    from conftest import SENTENCES
    unit = "，".join(SENTENCES) + "。"
    n = 10_000_000 // len(unit.encode("utf-8")) + 1
    p = tmp_path / "one-line.txt"
    with open(p, "w", encoding="utf-8") as f:
        for _ in range(n):
            f.write(unit)
    c = data.load_corpus(p, TokenizerSettings(), cache_dir=tmp_path / "cache", progress=False)
    per_unit = [w for w in jieba.cut(unit) if w.strip()]
    assert c.n_lines == 1 and c.n_tokens == n * len(per_unit)
    assert words(c)[: 3 * len(per_unit)] == per_unit * 3
