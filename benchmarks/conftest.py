"""Shared set-up for `pytest benchmarks`: shapes, the backend x shape parametrization, and one timing helper.

Every benchmark calls `run_bench(...)`, which keeps warm-up (Triton's compilation, cuDNN's algorithm selection)
outside the timing and records the same `extra_info` keys for `rnnlm.report`:

    backend, shape, batch_size, seq_len, embed_size, hidden_size, num_layers, vocab_size,
    tokens_per_round, tokens_per_s, [tflops_per_s], [gb_per_s], precision, [cudnn_algorithm],
    [recurrence_path, recurrence_choice], device, torch, triton, triton_interpreted, threads, timer,
    [ceiling_tokens_per_s]

On CUDA each round is timed with CUDA events after an untimed L2 flush (benchmarks/cuda_bench.py: the standard
method, as triton.testing.do_bench), and pytest-benchmark's statistics are over those event times; on the CPU it is
the wall clock. `precision` is the arithmetic that really ran (cuda_bench.precision_label: TF32 where torch's flags
allow it), `cudnn_algorithm` the algorithm ATen picks for nn.RNN at that shape (recurrence benchmarks), and for
triton's recurrence `recurrence_path` / `recurrence_choice` the kernels rnn() chose (persistent or tiled) and why.
Rates are computed from the median round (the machine is shared and noisy; the median ignores stragglers).
`make bench` saves every run (pytest-benchmark's --benchmark-autosave, in .benchmarks/) and `make bench-compare`
compares the last two, so that a regression shows.
The data-pipeline rows do not depend on the backend: their backend is "n/a" and they carry no precision.
`ceiling_tokens_per_s` (torch rows of the training step and of one-sample generation on a CPU): what the
machine's GEMM throughput or read bandwidth, measured in the same session at that shape, allows for the
precision that ran (rnnlm.report.ceilings; `tools.ceilings(shape)`).

On a machine without a GPU the Triton kernels run in Triton's interpreter, which costs a fixed amount per
Triton operation and says nothing about kernel speed: triton rows then run only at the small shape, and the
other shapes are skipped with a reason. RNNLM_BENCH_INTERPRETED_SHAPES=small,default overrides that list.

SHAPES grow B and H together (small, default, large). The recurrence forward benchmark also runs SWEEP_SHAPES,
which change one size of the default model at a time, so that the report can plot throughput against B at a
fixed H and against H at a fixed B.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

import kernels  # noqa: F401  (settles TRITON_INTERPRET before anything imports triton)
from kernels import runtime_description

import cuda_bench  # benchmarks/cuda_bench.py (this folder is on sys.path under pytest)

BACKENDS = ("cudnn", "triton")


@dataclass(frozen=True)
class Shape:
    """A model shape: B batch, T time steps, E embed, H hidden, L layers, V vocabulary."""

    name: str
    batch_size: int
    seq_len: int
    embed_size: int
    hidden_size: int
    num_layers: int
    vocab_size: int

    @property
    def tokens(self) -> int:
        return self.batch_size * self.seq_len

    def info(self) -> dict[str, Any]:
        return {"shape": self.name, "batch_size": self.batch_size, "seq_len": self.seq_len,
                "embed_size": self.embed_size, "hidden_size": self.hidden_size,
                "num_layers": self.num_layers, "vocab_size": self.vocab_size}


SHAPES = {
    "small": Shape("small", batch_size=16, seq_len=20, embed_size=128, hidden_size=128, num_layers=2,
                   vocab_size=2_000),
    # the tutorial's (and rnnlm.train's) defaults
    "default": Shape("default", batch_size=64, seq_len=20, embed_size=256, hidden_size=512, num_layers=2,
                     vocab_size=10_000),
    "large": Shape("large", batch_size=256, seq_len=20, embed_size=256, hidden_size=1024, num_layers=2,
                   vocab_size=10_000),
}

# One size at a time around "default" (B 64, H 512), the point both sweeps share: B 16/64/256 at H 512 and
# H 128/512/1024 at B 64. Only the recurrence forward benchmark runs them (it parametrizes `shape` by name).
SWEEP_SHAPES = {
    "b16": replace(SHAPES["default"], name="b16", batch_size=16),
    "b256": replace(SHAPES["default"], name="b256", batch_size=256),
    "h128": replace(SHAPES["default"], name="h128", hidden_size=128),
    "h1024": replace(SHAPES["default"], name="h1024", hidden_size=1024),
}

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
RUNTIME = runtime_description()
INTERPRETED = bool(RUNTIME["triton_interpreted"])
INTERPRETED_SHAPES = tuple(
    s.strip() for s in os.environ.get("RNNLM_BENCH_INTERPRETED_SHAPES", "small").split(",") if s.strip())

# Timed rounds per shape: small on a CPU so that the whole suite stays under 5 minutes on 2 cores.
ROUNDS_CPU = {"small": 5, "default": 3, "large": 2, "b16": 3, "b256": 2, "h128": 3, "h1024": 2}
ROUNDS_CUDA = {"small": 50, "default": 30, "large": 10, "b16": 30, "b256": 20, "h128": 30, "h1024": 20}
WARMUP_CUDA = 3  # untimed calls before the rounds: compilation, cuDNN's algorithm selection, the allocator


def precision_label(backend: str) -> str:
    """The arithmetic the fp32 benchmarks actually run (cuda_bench.precision_label on this device)."""
    return cuda_bench.precision_label(backend, DEVICE)


def cudnn_algorithm(shape: "Shape", *, backward: bool, dtype: torch.dtype = torch.float32) -> str:
    """The cuDNN algorithm nn.RNN gets at this shape on this GPU ("n/a (cpu)" without one)."""
    if DEVICE.type != "cuda":
        return "n/a (cpu)"
    return cuda_bench.cudnn_algorithm_label(
        backward=backward, hidden_size=shape.hidden_size, input_size=shape.embed_size, batch_size=shape.batch_size,
        seq_len=shape.seq_len, num_layers=shape.num_layers, bidirectional=False, dtype=dtype,
        **cuda_bench.device_facts(DEVICE))


def recurrence_path_info(shape: "Shape", *, backward: bool) -> dict:
    """recurrence_path and recurrence_choice (cuda_bench.choice_info) for triton's recurrence at this shape, with
    the precision rnn() resolves to here; read after a first call (the choice is made at the first launch)."""
    from kernels.rnn import resolve_precision

    precision = resolve_precision(None, torch.empty(0, device=DEVICE))
    return cuda_bench.choice_info(cuda_bench.recurrence_choices(DEVICE, batch=shape.batch_size,
                                                                hidden=shape.hidden_size, precision=precision,
                                                                backward=backward))


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def skip_unless_runnable(backend: str, shape: Shape) -> None:
    """Skips interpreted Triton at the larger shapes, with the reason."""
    if backend == "triton" and INTERPRETED and shape.name not in INTERPRETED_SHAPES:
        pytest.skip(f"triton runs in its interpreter here (no CUDA device): interpreted kernels are benchmarked "
                    f"only at shapes {','.join(INTERPRETED_SHAPES)} (set RNNLM_BENCH_INTERPRETED_SHAPES to change)")


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture(params=list(SHAPES))
def shape(request) -> Shape:
    """SHAPES by name; a test that parametrizes `shape` itself (indirect=True) may also name SWEEP_SHAPES."""
    return {**SHAPES, **SWEEP_SHAPES}[request.param]


@pytest.fixture
def model_case(backend: str, shape: Shape) -> tuple[str, Shape]:
    """(backend, shape), skipped when interpreted Triton would be too slow to be worth timing."""
    skip_unless_runnable(backend, shape)
    return backend, shape


def default_rounds(shape_name: str, backend: str) -> int:
    if DEVICE.type == "cuda":
        return ROUNDS_CUDA.get(shape_name, 10)
    rounds = ROUNDS_CPU.get(shape_name, 3)
    return min(rounds, 3) if backend == "triton" else rounds


@pytest.fixture
def run_bench(benchmark):
    """run_bench(fn, backend=, shape=, tokens=, ...) times fn() with pytest-benchmark and fills extra_info.

    - warmup: untimed calls first (compilation, caches, allocator); default 1 (WARMUP_CUDA on CUDA).
    - setup: optional untimed callable run before each round (e.g. a fresh cache folder); fn then gets
      setup's return value as its only argument.
    - tokens: tokens processed per call (rate key tokens_per_s); flops -> tflops_per_s; nbytes -> gb_per_s.
    - flush_l2: on CUDA, flush the L2 cache before each round (default True; see benchmarks/cuda_bench.py).
    """

    def run(fn: Callable, *, backend: str, shape: Shape | str | dict, tokens: int, rounds: int | None = None,
            warmup: int | None = None, setup: Callable | None = None, flops: float | None = None,
            nbytes: float | None = None, precision: str | None = None, flush_l2: bool = True, **extra: Any):
        shape_info = shape.info() if isinstance(shape, Shape) else (
            dict(shape) if isinstance(shape, dict) else {"shape": shape})
        name = shape_info["shape"]
        rounds = rounds or default_rounds(name, backend)
        if warmup is None:
            warmup = WARMUP_CUDA if DEVICE.type == "cuda" else 1

        if DEVICE.type == "cuda":
            # pytest-benchmark's statistics over CUDA-event times: its timer is a clock advanced by each round's
            # event time (pytest-benchmark keeps the timer in the fixture's _timer, read at every round)
            if not hasattr(benchmark, "_timer"):
                raise RuntimeError("this pytest-benchmark has no BenchmarkFixture._timer: cannot time with CUDA events")
            clock = cuda_bench.EventClock(DEVICE, flush_l2)
            benchmark._timer = clock.now

            def timed(*args):
                return clock.time(fn, *args)
        else:
            def timed(*args):
                return fn(*args)

        if setup is None:
            for _ in range(warmup):
                timed()
            result = benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=0)
        else:
            def make_args():
                return (setup(),), {}

            for _ in range(warmup):
                timed(setup())
            result = benchmark.pedantic(timed, setup=make_args, rounds=rounds, iterations=1, warmup_rounds=0)

        info = benchmark.extra_info
        info.update(backend=backend, **shape_info)
        if backend != "n/a":  # backend-independent rows (the data pipeline) have no arithmetic precision
            info["precision"] = precision or precision_label(backend)
        info.update(device=RUNTIME["device"],
                    torch=RUNTIME["torch"], triton=RUNTIME["triton"],
                    triton_interpreted=INTERPRETED if backend == "triton" else False,
                    threads=torch.get_num_threads(), tokens_per_round=tokens,
                    timer=("cuda events" + (", L2 flushed" if flush_l2 else "")) if DEVICE.type == "cuda"
                    else "wall clock")
        info.update(extra)
        seconds = _median_seconds(benchmark)
        if seconds:
            info["tokens_per_s"] = tokens / seconds
            if flops is not None:
                info["tflops_per_s"] = flops / seconds / 1e12
            if nbytes is not None:
                info["gb_per_s"] = nbytes / seconds / 1e9
        return result

    return run


def _median_seconds(benchmark) -> float | None:
    """The median round in seconds, or None when benchmarking is disabled (--benchmark-disable)."""
    stats = getattr(benchmark, "stats", None)
    inner = getattr(stats, "stats", None)
    median = getattr(inner, "median", None)
    return float(median) if median else None


def import_op(module: str, name: str):
    """kernels.<module>.<name>; skips (naming the module) only while that module does not exist yet."""
    import importlib

    try:
        mod = importlib.import_module(f"kernels.{module}")
    except ModuleNotFoundError as err:
        if err.name == f"kernels.{module}":
            pytest.skip(f"kernels/{module}.py is missing")
        raise
    return getattr(mod, name)


def rnn_flops(shape: Shape, *, backward: bool) -> float:
    """Multiply-adds x 2 of the recurrence (input and hidden products); backward costs about 2x forward."""
    per_token = 0
    for layer in range(shape.num_layers):
        in_size = shape.embed_size if layer == 0 else shape.hidden_size
        per_token += 2 * (in_size + shape.hidden_size) * shape.hidden_size
    return per_token * shape.tokens * (3 if backward else 1)


@functools.lru_cache(maxsize=None)
def machine_ceilings(shape: Shape) -> dict:
    """The machine's ceilings at this shape (rnnlm.report.ceilings), measured once per session and shape."""
    from rnnlm.report.ceilings import measure_ceilings

    return measure_ceilings(batch_size=shape.batch_size, seq_len=shape.seq_len, vocab_size=shape.vocab_size,
                            embed_size=shape.embed_size, hidden_size=shape.hidden_size,
                            num_layers=shape.num_layers)


# -- corpus and cache ----------------------------------------------------------------------------------------

def _load_tiny_corpus_writer() -> Callable:
    """tests/conftest.py's write_tiny_corpus (the same text the tests use), loaded by path."""
    path = Path(__file__).resolve().parent.parent / "tests" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_rnnlm_tests_conftest", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_tiny_corpus


write_tiny_corpus = _load_tiny_corpus_writer()


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Token-id caches go to a fresh folder, so no benchmark reads a cache from an earlier run."""
    mp = pytest.MonkeyPatch()
    mp.setenv("RNNLM_CACHE_DIR", str(tmp_path_factory.mktemp("bench-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bench-corpus")


def corpus_file(folder: Path, lines: int) -> Path:
    """A tiny-corpus-style file of `lines` lines (written once per session)."""
    path = folder / f"corpus-{lines}.txt"
    if not path.exists():
        write_tiny_corpus(path, lines=lines, seed=0)
    return path


@pytest.fixture(scope="session")
def tools():
    """The helpers above, for the bench files (which do not import conftest by name)."""
    from types import SimpleNamespace

    return SimpleNamespace(device=DEVICE, shapes=SHAPES, interpreted=INTERPRETED, sync=sync,
                           import_op=import_op, rnn_flops=rnn_flops, corpus_file=corpus_file,
                           skip_unless_runnable=skip_unless_runnable, precision_label=precision_label,
                           cudnn_algorithm=cudnn_algorithm, recurrence_path_info=recurrence_path_info,
                           ceilings=machine_ceilings)
