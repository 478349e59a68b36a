"""What the benchmarks need to time a GPU honestly, shared by benchmarks/conftest.py and benchmarks/gpu_check.py.

Timing. A GPU runs asynchronously: a wall clock around one call with a synchronisation measures launch latency and
the synchronisation as much as the kernels. So on CUDA every round is timed with CUDA events (the standard method,
as triton.testing.do_bench): warm-up calls first, outside the timed rounds (Triton's compilation, cuDNN's
algorithm selection, the caching allocator); then per round an untimed flush of the L2 cache (writing a buffer of
twice its size, as do_bench does), so that a kernel whose working set would otherwise stay in L2 between rounds
(a recurrence's weights: 2 MiB at H = 512) reads it from memory as the first call of a training step does; then
an event recorded before and one after the call on the current stream, and the time between them. On the CPU
(Triton's interpreter) rounds are timed with time.perf_counter.

`EventClock` lets pytest-benchmark keep its statistics over those event times: its `now` is a clock that advances
by exactly each round's event time, and run_bench installs it as the benchmark's timer.

The cuDNN algorithm: `cudnn_rnn_algorithm` is ATen's get_algo (aten/src/ATen/native/cudnn/RNN.cpp, torch 2.x with
cuDNN >= 8.2.1) for nn.RNN's tanh/relu modes, so every recurrence figure says which cuDNN algorithm it was
measured against: PERSIST_STATIC_SMALL_H when H <= 384 (forward) or H <= 256 (backward), PERSIST_STATIC for fp16
input with one layer and the device/batch heuristics, else STANDARD (a GEMM and a pointwise kernel per step).
"""
from __future__ import annotations

import time
from typing import Any, Callable

import torch

from kernels.rnn import cuda_matmul_allows_tf32, cudnn_rnn_allows_tf32

L2_FLUSH_FACTOR = 2  # write twice the L2 cache between rounds


class L2Flush:
    """Writes a buffer of L2_FLUSH_FACTOR x the device's L2 cache (at least 8 MiB); allocated once."""

    def __init__(self, device: torch.device):
        props = torch.cuda.get_device_properties(device)
        size = max(int(getattr(props, "L2_cache_size", 0) or 0) * L2_FLUSH_FACTOR, 8 << 20)
        self.buffer = torch.empty(size, dtype=torch.uint8, device=device)

    def __call__(self) -> None:
        self.buffer.zero_()


class EventClock:
    """A clock that advances by the GPU time of each timed call (CUDA events), for pytest-benchmark's timer."""

    def __init__(self, device: torch.device, flush_l2: bool = True):
        self.elapsed = 0.0
        self.flush = L2Flush(device) if flush_l2 else None
        self.start = torch.cuda.Event(enable_timing=True)
        self.end = torch.cuda.Event(enable_timing=True)

    def now(self) -> float:
        return self.elapsed

    def time(self, fn: Callable, *args) -> Any:
        """Runs fn(*args) between two events (after an untimed L2 flush); advances the clock by the time between."""
        if self.flush is not None:
            self.flush()
        self.start.record()
        out = fn(*args)
        self.end.record()
        self.end.synchronize()
        self.elapsed += self.start.elapsed_time(self.end) / 1e3
        return out


def measure(fn: Callable, device: torch.device, *, rounds: int, warmup: int, flush_l2: bool = True) -> list[float]:
    """Seconds per call of fn() over `rounds` timed rounds after `warmup` untimed calls: CUDA events (with an
    L2 flush before each round) on a GPU, time.perf_counter on the CPU."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        clock = EventClock(device, flush_l2)
        times = []
        for _ in range(rounds):
            before = clock.now()
            clock.time(fn)
            times.append(clock.now() - before)
        return times
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def copy_bandwidth(device: torch.device, nbytes: int) -> float:
    """The device's measured copy bandwidth in GB/s: bytes read plus bytes written by dst.copy_(src), median of
    5 rounds (no flush: the buffers are far larger than any cache)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    times = sorted(measure(lambda: dst.copy_(src), device, rounds=5, warmup=2, flush_l2=False))
    return 2 * nbytes / times[len(times) // 2] / 1e9


def cudnn_rnn_algorithm(*, hidden_size: int, input_size: int, batch_size: int, seq_len: int, num_layers: int,
                        bidirectional: bool, dtype: torch.dtype, forward: bool, capability: tuple[int, int],
                        sm_count: int, nonlinearity: str = "tanh") -> str:
    """The cudnnRNNAlgo_t ATen's get_algo picks for nn.RNN (tanh/relu, unpacked input) with these sizes on a GPU of
    this compute capability and SM count; dtype is the data type cuDNN sees (autocast's, under autocast)."""
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be tanh or relu, got {nonlinearity!r}")
    major, minor = capability
    if dtype != torch.float64 and major >= 6 and hidden_size <= (384 if forward else 256):
        return "PERSIST_STATIC_SMALL_H"
    if dtype == torch.float16:
        common = (num_layers == 1 and hidden_size <= 1024 and not bidirectional and hidden_size % 128 == 0
                  and input_size % 128 == 0)
        if major == 7:
            device_ok = minor != 5 and ((batch_size % 16 == 0 and batch_size not in (80, 112)) or batch_size == 8) \
                and ((seq_len >= 40 and batch_size <= 128) or (seq_len >= 20 and batch_size <= 96)
                     or (seq_len >= 10 and batch_size <= 32))
        elif major >= 8 and sm_count >= 98:
            device_ok = minor != 6 and batch_size % 8 == 0 and batch_size <= 128 \
                and (batch_size < 96 or hidden_size < 896)
        else:
            device_ok = False
        if common and device_ok:
            return "PERSIST_STATIC"
    return "STANDARD"


def cudnn_algorithm_label(*, backward: bool, **sizes) -> str:
    """'fwd X' or 'fwd X, bwd Y' for cudnn_rnn_algorithm's arguments (less `forward`)."""
    fwd = cudnn_rnn_algorithm(forward=True, **sizes)
    return f"fwd {fwd}" + (f", bwd {cudnn_rnn_algorithm(forward=False, **sizes)}" if backward else "")


def device_facts(device: torch.device) -> dict:
    """(capability, SM count) of a CUDA device, for cudnn_rnn_algorithm."""
    props = torch.cuda.get_device_properties(device)
    return {"capability": (props.major, props.minor), "sm_count": props.multi_processor_count}


def path_label(choices) -> str:
    """'fwd persistent, bwd tiled' for kernels.rnn.recurrence_path()'s choices (forward, then backward; None: no
    such launch has run yet)."""
    return ", ".join(f"{name} {c.path if c is not None else 'not launched'}"
                     for name, c in zip(("fwd", "bwd"), choices))


def recurrence_choices(device: torch.device, *, batch: int, hidden: int, precision: str, backward: bool) -> list:
    """The kernels rnn() chose for one layer's recurrence of (batch, hidden), forward (and backward), as
    kernels.rnn.recurrence_path() gives them: read after a benchmark's warm-up. precision: the recurrence's
    ("ieee", "tf32", "bf16", ...)."""
    from kernels.rnn import recurrence_path

    return [recurrence_path(device, batch, hidden, precision, backward=bwd)
            for bwd in ((False, True) if backward else (False,))]


def choice_info(choices: list) -> dict:
    """extra_info fields for recurrence_choices(): recurrence_path ("fwd persistent, bwd persistent") and
    recurrence_choice (each choice's str(): the line the launcher logged, with its reason)."""
    return {"recurrence_path": path_label(choices),
            "recurrence_choice": "; ".join(str(c) for c in choices if c is not None)}


def precision_label(backend: str, device: torch.device) -> str:
    """The fp32 arithmetic that really runs: on CUDA, cuDNN's RNN uses TF32 when torch allows it for cuDNN RNNs;
    the triton backend's recurrence follows the same flag and its GEMMs (torch matmuls) cuBLAS's TF32 flag."""
    if device.type != "cuda":
        return "fp32"
    recurrence = "tf32" if cudnn_rnn_allows_tf32() else "fp32"
    if backend != "triton":
        return recurrence
    gemms = "tf32" if cuda_matmul_allows_tf32() else "fp32"
    return recurrence if gemms == recurrence else f"{recurrence} recurrence, {gemms} GEMMs"
