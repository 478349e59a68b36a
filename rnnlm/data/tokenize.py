"""Reading and tokenizing a corpus: file bytes -> jieba words, streamed, on every core.

Pipeline (the corpus is never one Python string nor a list of all its token strings):

    file bytes --(1 MiB blocks, cut on UTF-8 boundaries)--> decoded text, control chars -> space
         --(lines on \\n, \\r\\n or \\r; long lines cut where jieba itself would cut)--> segments
         --(chunks of ~64k characters, jieba.cut in a forked worker pool)--> per-chunk (local lexicon, int32 ids)
         --(parent maps local -> global lexicon ids)--> (lexicon, ids int32, line_offsets int64)

Cutting a long line is exact, not approximate: jieba.cut first splits its input into blocks of
`[\\u4E00-\\u9FD5a-zA-Z0-9+#&._%-]+` and everything between them is emitted one character (or one
whitespace run) at a time, so cutting right after a character outside that class yields the very tokens
jieba would give for the whole line. Likewise tokenizing line by line equals tokenizing the whole text.
The one exception: a single block longer than _CHUNK_CHARS (65,536 characters without a space or punctuation)
is cut at that length, which may split a word; a warning says so. Giving jieba the whole block instead would
make the memory of its DAG grow with the longest such run, with no bound.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import multiprocessing
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import jieba
import numpy as np
from tqdm import tqdm

from rnnlm.checks import one_of
from rnnlm.data.pool import resolve_workers, tokenize_in_pool
from rnnlm.errors import UsageError

log = logging.getLogger(__name__)

ENCODING_ERRORS = ("strict", "replace")
_READ_BLOCK = 1 << 20             # bytes read per file read
_CHUNK_CHARS = 1 << 16            # characters per worker task; also the longest segment of a long line
_PARALLEL_MIN_BYTES = 1 << 20     # below this a worker pool costs more than it saves
_PROGRESS_MIN_BYTES = 4 << 20

# jieba 0.42's block class (jieba.re_han_default): text is cut between runs of these and everything else.
_NON_BLOCK = re.compile(r"[^\u4E00-\u9FD5a-zA-Z0-9+#&._%\-]")
# C0 controls (NUL included), DEL and BOM are not words: they become spaces (and spaces are dropped).
_CONTROL_TO_SPACE = {c: " " for c in [*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F, 0xFEFF]}


@dataclass(frozen=True)
class TokenizerSettings:
    """How text becomes words; part of the token cache key and saved with the model."""
    hmm: bool = True                  # jieba's HMM for words not in its dictionary
    encoding_errors: str = "strict"   # "strict": invalid UTF-8 is an error; "replace": U+FFFD, counted

    def __post_init__(self) -> None:
        if not isinstance(self.hmm, bool):
            raise UsageError(f"tokenizer setting hmm must be true or false, got {self.hmm!r}")
        one_of("encoding_errors", self.encoding_errors, ENCODING_ERRORS)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TokenizerSettings":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UsageError(f"unknown tokenizer setting(s) {', '.join(unknown)} (known: {', '.join(sorted(names))})")
        return cls(**dict(d))


def _load_jieba() -> None:
    """Loads jieba's dictionary (once per process), quietly. jieba caches the parsed dictionary in a file of
    rnnlm's cache folder (RNNLM_CACHE_DIR/jieba), not in the temporary folder (which another user's cache file may
    hold, or which may not exist); where it cannot write there it rebuilds the dictionary each run, and says so."""
    jieba.setLogLevel(logging.WARNING)
    if jieba.dt.initialized:
        return
    from rnnlm.data.corpus import cache_root  # corpus imports this module

    folder = cache_root() / "jieba"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass  # jieba's write fails below, quietly; the warning says what to do
    jieba.dt.tmp_dir = str(folder)
    before = set(folder.glob("jieba*.cache")) if folder.is_dir() else set()
    jieba.setLogLevel(logging.CRITICAL)  # jieba logs a failed cache write as a traceback
    try:
        jieba.initialize()
    finally:
        jieba.setLogLevel(logging.WARNING)
    after = set(folder.glob("jieba*.cache")) if folder.is_dir() else set()
    if not after:
        log.warning("jieba cannot write its dictionary cache in %s: it rebuilds the dictionary on every run "
                    "(a second or two); set RNNLM_CACHE_DIR to a writable folder", folder)
    elif after - before:
        log.info("jieba's dictionary cache: %s", sorted(after - before)[0])


def jieba_identity() -> dict[str, Any]:
    """jieba's version and dictionary: what the token cache key needs to know of the tokenizer."""
    dictionary = jieba.dt.dictionary
    ident: dict[str, Any] = {"version": jieba.__version__, "dictionary": "default"}
    if dictionary is not None and os.path.abspath(dictionary) != os.path.abspath(jieba.DEFAULT_DICT or ""):
        try:
            st = os.stat(dictionary)
            ident["dictionary"] = [os.path.abspath(dictionary), st.st_size, st.st_mtime_ns]
        except OSError:
            ident["dictionary"] = str(dictionary)
    return ident


def tokenize_text(text: str, settings: TokenizerSettings | None = None) -> list[str]:
    """Words of `text` (a prompt, say) exactly as the corpus would have them: control characters become
    spaces, whitespace tokens are dropped."""
    settings = settings or TokenizerSettings()
    _load_jieba()
    text = text.translate(_CONTROL_TO_SPACE)
    return [w for w in jieba.dt.cut(text, HMM=settings.hmm) if w and not w.isspace()]


def _tokenize_segments(segments: Sequence[str], hmm: bool) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Worker task: (local lexicon in first-seen order, int32 ids into it, int64 token count per segment)."""
    cut = jieba.dt.cut
    local: dict[str, int] = {}
    ids: list[int] = []
    per_segment = np.empty(len(segments), dtype=np.int64)
    for k, seg in enumerate(segments):
        n0 = len(ids)
        for w in cut(seg, HMM=hmm):
            if not w or w.isspace():   # jieba emits whitespace as whole tokens: all-space or none
                continue
            i = local.get(w)
            if i is None:
                i = local[w] = len(local)
            ids.append(i)
        per_segment[k] = len(ids) - n0
    return list(local), np.array(ids, dtype=np.int32), per_segment


# ----------------------------------------------------------------------------------------------------------
# Streaming reader
# ----------------------------------------------------------------------------------------------------------

class _ReadStats:
    def __init__(self) -> None:
        self.replaced = 0
        self.bytes_read = 0
        self.sha256 = hashlib.sha256()  # of the bytes read: what was tokenized, even if the file changes meanwhile
        self.blind_cuts = 0             # runs of > _CHUNK_CHARS characters without a space or punctuation, cut


def _utf8_boundary(buf: bytes) -> int:
    """Largest i <= len(buf) such that buf[:i] does not end inside a UTF-8 sequence nor right after b'\\r'
    (so that \\r\\n is never split across blocks)."""
    n = len(buf)
    for k in range(1, min(4, n) + 1):
        b = buf[n - k]
        if b & 0xC0 == 0x80:          # continuation byte: keep looking for the lead byte
            continue
        need = 1 if b < 0x80 else 2 if b >> 5 == 0b110 else 3 if b >> 4 == 0b1110 else 4 if b >> 3 == 0b11110 else 1
        cut = n if need <= k else n - k
        if cut == n and k == 1 and b == 0x0D:
            cut = n - 1
        return cut
    return n                          # only continuation bytes: invalid wherever we cut


def _describe_bad_utf8(path: Path, raw: bytes, pos: int, line: int, offset: int) -> str:
    start = raw.rfind(b"\n", 0, pos) + 1
    end = raw.find(b"\n", pos)
    end = len(raw) if end < 0 else end
    snippet = raw[start:min(end, start + 4096)]
    hint, how = "", ""
    if offset - pos == 0 and raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        hint, how = " (it looks like UTF-16)", f" (e.g. iconv -f UTF-16 -t UTF-8 {path.name} > {path.stem}.utf8.txt)"
    else:
        try:
            decoded = snippet.decode("gb18030")
            if re.search(r"[\u4e00-\u9fff]", decoded):
                hint = " (it looks like GBK/GB18030-encoded Chinese)"
                how = f" (e.g. iconv -f GB18030 -t UTF-8 {path.name} > {path.stem}.utf8.txt)"
        except UnicodeDecodeError:
            pass
    return (f"corpus {path} is not valid UTF-8: byte 0x{raw[pos]:02x} at line {line}, byte offset {offset}{hint}; "
            f"convert it to UTF-8{how}, or pass {{encoding_errors}} replace to replace invalid bytes")


def _decode(raw: bytes, errors: str, path: Path, offset: int, line_no: int, stats: _ReadStats) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        if errors != "replace":
            pos = err.start
            raise UsageError(_describe_bad_utf8(path, raw, pos, line_no + raw.count(b"\n", 0, pos), offset + pos),
                             params=("encoding_errors",)) from None
    text = raw.decode("utf-8", "replace")
    # Each invalid sequence becomes one U+FFFD; genuine U+FFFD characters (EF BF BD) are not counted.
    stats.replaced += text.count("\ufffd") - raw.count(b"\xef\xbf\xbd")
    return text


def _safe_cut(s: str, limit: int, stats: _ReadStats | None = None) -> int:
    """Index i in (0, limit] where s may be cut without changing jieba's tokens: right after the last
    character outside jieba's block class; `limit` if there is none (a word may then be cut: counted in
    stats.blind_cuts)."""
    for lo in (max(0, limit - 8192), 0):
        last = None
        for last in _NON_BLOCK.finditer(s, lo, limit):
            pass
        if last is not None:
            return last.end()
        if lo == 0:
            break
    if stats is not None:
        stats.blind_cuts += 1
    return limit


def _split_long(line: str, stats: _ReadStats | None = None) -> Iterator[tuple[str, bool]]:
    """A complete line as segments of at most _CHUNK_CHARS characters, cut where jieba would cut."""
    while len(line) > _CHUNK_CHARS:
        i = _safe_cut(line, _CHUNK_CHARS, stats)
        yield line[:i], False
        line = line[i:]
    yield line, True


def _read_segments(path: Path, errors: str, stats: _ReadStats, progress=None) -> Iterator[tuple[str, bool]]:
    """(text, ends_line) pieces of the file in order; a line longer than _CHUNK_CHARS comes in several
    pieces, the last one with ends_line=True. \\n, \\r\\n and \\r all end lines."""
    carry_bytes = b""
    carry_text = ""           # the unfinished last line
    offset = 0                # file offset of carry_bytes[0]
    line_no = 1
    first = True
    try:
        f = open(path, "rb")
    except OSError as err:
        raise UsageError(f"cannot read {path}: {err.strerror or err}") from None
    with f:
        while True:
            try:
                block = f.read(_READ_BLOCK)
            except OSError as err:
                raise UsageError(f"cannot read {path}: {err.strerror or err}") from None
            if progress is not None and block:
                progress.update(len(block))
            stats.bytes_read += len(block)
            stats.sha256.update(block)
            eof = not block
            buf = carry_bytes + block
            cut = len(buf) if eof else _utf8_boundary(buf)
            raw, carry_bytes = buf[:cut], buf[cut:]
            text = _decode(raw, errors, path, offset, line_no, stats)
            line_no += raw.count(b"\n")
            offset += len(raw)
            if first and text:
                text = text.removeprefix("\ufeff")
                first = False
            text = text.translate(_CONTROL_TO_SPACE)
            if "\r" in text:
                text = text.replace("\r\n", "\n").replace("\r", "\n")
            lines = (carry_text + text).split("\n")
            carry_text = lines.pop()
            for line in lines:
                yield from _split_long(line, stats)
            while len(carry_text) > _CHUNK_CHARS:
                i = _safe_cut(carry_text, _CHUNK_CHARS, stats)
                yield carry_text[:i], False
                carry_text = carry_text[i:]
            if eof:
                break
    if carry_text:
        yield carry_text, True


def _chunks(segments: Iterator[tuple[str, bool]]) -> Iterator[tuple[list[str], np.ndarray]]:
    texts: list[str] = []
    ends: list[bool] = []
    size = 0
    for text, end in segments:
        texts.append(text)
        ends.append(end)
        size += len(text) + 1
        if size >= _CHUNK_CHARS:
            yield texts, np.array(ends, dtype=bool)
            texts, ends, size = [], [], 0
    if texts:
        yield texts, np.array(ends, dtype=bool)


def tokenize_file(path: Path, settings: TokenizerSettings, workers: int | None, progress: bool):
    """-> (lexicon list[str], ids int32, line_offsets int64, replaced count, SHA-256 of the bytes tokenized).

    workers: processes for jieba (None: rnnlm.data.pool.resolve_workers decides)."""
    _load_jieba()                              # load the dictionary once, before forking: workers share it
    size = path.stat().st_size
    n_workers = resolve_workers(workers, size, _PARALLEL_MIN_BYTES)
    stats = _ReadStats()
    bar = None
    if progress and size >= _PROGRESS_MIN_BYTES:
        bar = tqdm(total=size, unit="B", unit_scale=True, desc="tokenizing", leave=False)

    index: dict[str, int] = {}                 # global lexicon, insertion order = first appearance
    id_parts: list[np.ndarray] = []
    offset_parts: list[np.ndarray] = [np.zeros(1, dtype=np.int64)]
    base = 0

    def consume(result, ends: np.ndarray) -> None:
        nonlocal base
        local_lexicon, local_ids, per_segment = result
        mapping = np.fromiter((index.setdefault(w, len(index)) for w in local_lexicon), dtype=np.int32,
                              count=len(local_lexicon))
        id_parts.append(mapping[local_ids])
        ends_at = base + np.cumsum(per_segment)
        offset_parts.append(ends_at[ends])
        if len(ends_at):
            base = int(ends_at[-1])

    chunks = _chunks(_read_segments(path, settings.encoding_errors, stats, bar))
    ctx = None
    if n_workers > 1:
        try:
            ctx = multiprocessing.get_context("fork")
        except ValueError:                     # no fork on this platform: one process
            log.info("no fork on this platform: tokenizing in one process")
    try:
        if ctx is not None:
            tokenize_in_pool(ctx, n_workers, chunks, _tokenize_segments, settings.hmm, consume)
        else:
            for texts, ends in chunks:
                consume(_tokenize_segments(texts, settings.hmm), ends)
    finally:
        if bar is not None:
            bar.close()
    if stats.blind_cuts:
        log.warning("%s: text running more than %d characters without a space or punctuation was cut %d time(s), "
                    "every %d characters; jieba's words at those cuts may differ from what it gives for the whole "
                    "line", path, _CHUNK_CHARS, stats.blind_cuts, _CHUNK_CHARS)
    ids = np.concatenate(id_parts) if id_parts else np.zeros(0, dtype=np.int32)
    id_parts.clear()
    line_offsets = np.concatenate(offset_parts).astype(np.int64, copy=False)
    return list(index), ids, line_offsets, stats.replaced, stats.sha256.hexdigest()
