"""One-file checkpoints: written atomically, read without ever unpickling arbitrary objects.

A checkpoint is a dict (see REQUIRED_KEYS) saved with torch.save. Saving writes a temporary file in the same
folder, flushes and fsyncs it, renames it over the target (os.replace is atomic on POSIX) and fsyncs the
folder, so a process killed at any moment leaves either the previous checkpoint or the new one, never a
torn file. Loading uses torch.load(weights_only=True): only tensors and plain containers are rebuilt, so a
file carrying a pickled callable (a `__reduce__` payload) is refused before anything runs. Every problem
with a checkpoint file (missing, truncated, corrupt, foreign, newer format, unsafe pickle) is one UsageError.
"""
from __future__ import annotations

import os
import pickle
import secrets
import zipfile
from pathlib import Path
from typing import Any

import torch

from rnnlm.backends import resolve_backend
from rnnlm.data import TokenizerSettings, Vocab
from rnnlm.errors import UsageError
from rnnlm.model import ModelConfig, WordRNN, resolve_device

FORMAT_VERSION = 1

# What every rnnlm checkpoint holds; a training checkpoint (rnnlm.training.trainer) adds optimizer_state,
# train_config, corpus, step, epoch, data_state, hidden, rng_state, best_valid_ppl and elapsed.
REQUIRED_KEYS = ("format_version", "model_config", "model_state", "vocab", "tokenizer")

# Leaf types that torch.load(weights_only=True) rebuilds; anything else in a payload would make the file
# unloadable, so save_checkpoint refuses it up front (exact types: numpy scalars subclass float but are not safe).
_SAFE_LEAVES = (str, bytes, int, float, bool, complex, type(None), torch.device, torch.dtype, torch.Size)


def _check_safe(obj: Any, where: str) -> None:
    if isinstance(obj, torch.Tensor):
        return
    kind = type(obj)
    if kind in _SAFE_LEAVES:
        return
    if isinstance(obj, dict) and kind.__module__ in ("builtins", "collections"):
        for key, value in obj.items():
            _check_safe(key, f"{where} key")
            _check_safe(value, f"{where}[{key!r}]")
        return
    if kind in (list, tuple, set, frozenset):
        for i, value in enumerate(obj):
            _check_safe(value, f"{where}[{i}]")
        return
    raise TypeError(f"checkpoint payload{where} is a {kind.__module__}.{kind.__qualname__}, which "
                    f"torch.load(weights_only=True) cannot load; store tensors, numbers, strings and containers")


def _fsync_dir(folder: Path) -> None:
    """Makes a rename in `folder` durable (no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_stale_temps(path: Path) -> None:
    """Deletes temporary files left by savers of `path` that were killed mid-save (their pid is gone)."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            pid = int(tmp.name[len(path.name) + 2:].split(".")[0])
        except ValueError:
            continue
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Writes `payload` to `path` atomically; adds "format_version" when absent.

    Raises UsageError when the folder cannot be written, TypeError when the payload holds an object that a
    weights-only load could not rebuild (a programming error, caught here instead of at the next load).
    """
    path = Path(path)
    payload = dict(payload)
    payload.setdefault("format_version", FORMAT_VERSION)
    _check_safe(payload, "")
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UsageError(f"cannot write checkpoint {path}: it is a directory")
    # Same folder as the target, so the rename never crosses file systems; mode 0o666 minus the umask, as a
    # plain open() would give (mkstemp's 0o600 would make checkpoints private).
    tmp = folder / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as err:
        raise UsageError(f"cannot write checkpoint in {folder}: {err.strerror or err}") from err
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise UsageError(f"cannot write checkpoint {path}: {err.strerror or err}") from err
        if isinstance(err, RuntimeError) and "writ" in str(err):  # torch's zip writer wraps I/O errors (disk full)
            raise UsageError(f"cannot write checkpoint {path}: {' '.join(str(err).split())[:200]}") from err
        raise
    _fsync_dir(folder)
    _remove_stale_temps(path)


def _check_archive(path: Path) -> None:
    """UsageError unless `path` is a complete zip archive whose members all match their CRC-32.

    torch.load itself never checks the CRCs, so a flipped byte in a tensor would load silently.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except PermissionError as err:
        raise UsageError(f"cannot read checkpoint {path}: permission denied") from err
    except OSError as err:
        raise UsageError(f"cannot read checkpoint {path}: {err.strerror or err}") from err
    if not head:
        raise UsageError(f"cannot load checkpoint {path}: the file is empty")
    is_zip = head == b"PK\x03\x04"
    if not zipfile.is_zipfile(path):
        if is_zip:
            raise UsageError(f"cannot load checkpoint {path}: the file is truncated (its zip directory is missing)")
        raise UsageError(f"{path} is not an rnnlm checkpoint (not a torch.save zip file)")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as err:
        raise UsageError(f"cannot load checkpoint {path}: the file is corrupt ({err})") from err
    if bad is not None:
        raise UsageError(f"cannot load checkpoint {path}: the file is corrupt (checksum mismatch in {bad})")


def _describe_load_error(path: Path, err: BaseException) -> str:
    text = str(err)
    if isinstance(err, pickle.UnpicklingError) and "Weights only load failed" in text:
        culprit = ""
        for line in text.splitlines():
            if "Unsupported" in line:
                culprit = " (" + line.strip().removeprefix("WeightsUnpickler error: ").split(" was not")[0] + ")"
                break
        return (f"refusing to load {path}: it holds pickled Python objects other than tensors and plain data{culprit};"
                f" loading it could run arbitrary code, and rnnlm checkpoints never contain such objects")
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return f"cannot load checkpoint {path}: the file is corrupt or not a torch checkpoint ({first[:200]})"


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint dict at `path`, loaded on the CPU with torch.load(weights_only=True).

    UsageError (one line) for a missing file, a folder, a truncated / corrupt / foreign file, a checkpoint
    from a newer format version, or a file whose pickle holds anything but tensors and plain data.
    """
    path = Path(path)
    if not path.exists():
        raise UsageError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise UsageError(f"checkpoint {path} is a directory; give the checkpoint file inside it")
    _check_archive(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError as err:
        raise UsageError(f"cannot read checkpoint {path}: permission denied") from err
    except MemoryError:
        raise
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for a bad file
        raise UsageError(_describe_load_error(path, err)) from err
    if not isinstance(payload, dict) or "format_version" not in payload:
        kind = type(payload).__name__
        raise UsageError(f"{path} is not an rnnlm checkpoint (it holds a {kind} without a format_version)")
    version = payload["format_version"]
    if type(version) is not int or version < 1:
        raise UsageError(f"{path} is not an rnnlm checkpoint (format_version {version!r})")
    if version > FORMAT_VERSION:
        raise UsageError(f"checkpoint {path} has format version {version}, newer than this rnnlm reads "
                         f"({FORMAT_VERSION}); upgrade rnnlm to load it")
    missing = [key for key in REQUIRED_KEYS if key not in payload]
    if missing:
        raise UsageError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")
    check_finite_weights(payload["model_state"], path)
    return payload


def check_finite_weights(state: Any, path) -> None:
    """UsageError naming the first weight tensor of `state` (a state dict) that holds NaN or infinity: such a
    model evaluates to NaN and generates noise, so it is never used."""
    if not isinstance(state, dict):
        return  # model_from_checkpoint says what is wrong with it
    floats = [(name, t) for name, t in state.items() if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not floats:
        return
    counts = torch.stack([(~torch.isfinite(t)).sum() for _, t in floats]).tolist()  # one read for all tensors
    for (name, tensor), bad in zip(floats, counts):
        if bad:
            raise UsageError(f"checkpoint {path} holds non-finite weights: {name} has {bad:,} NaN or infinite "
                                 f"value(s) of {tensor.numel():,}; it cannot be used (an earlier checkpoint of the "
                                 f"run, such as best.pt, may be finite)")


def model_from_checkpoint(payload: dict[str, Any], backend: str | None = None,
                          device: str | torch.device | None = "cpu") -> tuple[WordRNN, Vocab, TokenizerSettings]:
    """(WordRNN in eval mode on `device` with the chosen backend, Vocab, TokenizerSettings) from a loaded payload.

    backend None picks the default for the device (rnnlm.backends.resolve_backend). UsageError when the payload's
    parts disagree (state vs config, vocabulary size vs config).
    """
    device = resolve_device(device)
    if not isinstance(payload.get("model_config"), dict):
        raise UsageError("checkpoint's model_config is not a dict")
    try:
        config = ModelConfig.from_dict(dict(payload["model_config"]))
    except (TypeError, ValueError) as err:
        raise UsageError(f"checkpoint has an invalid model_config: {err}") from err
    try:
        config.validate()
    except UsageError as err:  # about the checkpoint's values, not about the command's options
        raise UsageError(f"checkpoint has an invalid model_config: {err}") from None
    backend = resolve_backend(backend, device)
    model = WordRNN(config)
    state = payload["model_state"]
    if not isinstance(state, dict):
        raise UsageError("checkpoint's model_state is not a state dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        detail = " ".join(str(err).split())
        raise UsageError(f"checkpoint's model_state does not match its model_config: {detail[:300]}") from err
    vocab_list = payload["vocab"]
    if not isinstance(vocab_list, list) or not all(isinstance(w, str) for w in vocab_list):
        raise UsageError("checkpoint's vocab is not a list of words")
    vocab = Vocab.from_list(vocab_list)
    if len(vocab) != config.vocab_size:
        raise UsageError(f"checkpoint's vocabulary has {len(vocab)} words but its model expects {config.vocab_size}")
    settings = tokenizer_settings(payload)
    model.to(device)
    model.backend = backend
    model.eval()
    return model, vocab, settings


def tokenizer_settings(payload: dict[str, Any]) -> TokenizerSettings:
    """How the checkpoint's corpus was tokenized (prompts and evaluation text are tokenized the same way)."""
    tokenizer = payload["tokenizer"]
    if not isinstance(tokenizer, dict):
        raise UsageError("checkpoint's tokenizer settings are not a dict")
    try:
        return TokenizerSettings.from_dict(tokenizer)
    except (TypeError, ValueError, UsageError) as err:
        raise UsageError(f"checkpoint has invalid tokenizer settings: {err}") from None
