"""What rnnlm's ops share: tiles, argument checks, allocation, launches, compile configurations, device checks.

Every op module (rnn, softmax, sample, cross_entropy) imports only this module and kernels._common; none
imports another op, and none imports kernels.compile_report (the report imports the ops). (The package's
__init__ runs kernels._runtime before any of them, so TRITON_INTERPRET is settled before triton is imported.)

Launches. An op describes each kernel launch as a `Launch` (kernel, grid, arguments in the kernel's order,
constexprs, warps, stages), built by one function from the tensors it will run on. Calling the Launch runs it on
the tensors' device; `Launch.compile_config(...)` turns the same description into the `CompileConfig` that
`python -m kernels.compile_report` compiles, specialised exactly as Triton specialises that launch:

    an int argument equal to 1 becomes the constant 1; one divisible by 16 gets tt.divisibility = 16;
    a pointer whose address is divisible by 16 gets tt.divisibility = 16; floats and bools are never
    specialised; arguments listed in the kernel's do_not_specialize get neither.

(the rule of `specialize_impl` in triton/runtime/jit.py, the same in Triton 3.5, 3.6 and 3.9;
tests/test_compile_report.py checks it against the installed Triton's own function). So an op's
gpu_compile_configs() builds its configurations from representative launches on meta tensors (address 0,
real strides), and the report's registers and spills are those of the kernels those launches compile.

Device checks. A check that needs a value computed on the device (a target outside the vocabulary, a row of
logits with nothing to sample) costs a host synchronisation when it is read at once. Ops that have such checks
take `checks: DeviceChecks | None`: with None they read the result at once (one sync) and raise ValueError
naming the bad row; with a DeviceChecks they only add the count of bad rows to a device counter, with no sync,
and `checks.check()` (called at logging time) reads every counter at once and raises the same kind of error.
"""
from __future__ import annotations

import contextlib
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from kernels import _runtime
from kernels._runtime import announce_interpreter_once

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

# ----------------------------------------------------------------------------------------------------------------
# Sizes, dtypes, tiles
# ----------------------------------------------------------------------------------------------------------------
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# Triton's names of torch dtypes (signature types of pointer arguments)
TL_NAME = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
           torch.int64: "i64", torch.int32: "i32", torch.int8: "i8", torch.uint8: "u8", torch.bool: "i1"}

# GPU tiles (BLOCK_M, BLOCK_N, num_warps) of the row kernels by row length: blocks of short rows, two rows for long
# ones; 8 to 16 elements per thread (the compile report showed spills in sample at 32 per thread, and in sample's
# fp64 top-k path at 16 per thread for the 512-column tile; 32 x 64 tiles took 170-255 registers).
GPU_TILES = ((16, 64, 4), (4, 512, 8), (2, 2048, 8))
# Interpreter: cost is a fixed overhead per op plus numpy work per element, so tiles are as large as this
# (elements) and the column block is chosen to waste little padding.
_INTERP_TILE_ELEMS = 1 << 18
_INTERP_MAX_BLOCK_N = 1 << 14
# (dtype, row length) at which the compile report builds the row kernels: every dtype at the default vocabulary
# (10,000: the largest tile, divisible by 16), and fp32 at the two smaller tiles and at 10,001 (not divisible by 16:
# Triton compiles that separately, with scalar loads).
ROW_SHAPES = tuple((dt, 10_000) for dt in FLOAT_DTYPES) + tuple((torch.float32, n) for n in (64, 512, 10_001))


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def gpu_row_tiles(n_cols: int) -> tuple[int, int, int]:
    """The GPU tile (BLOCK_M, BLOCK_N, num_warps) for rows of n_cols elements."""
    for bm, bn, warps in GPU_TILES:
        if n_cols <= bn:
            return bm, bn, warps
    return GPU_TILES[-1]


def interpreted(t: torch.Tensor) -> bool:
    """Whether a launch on t runs in Triton's interpreter: CPU tensors (the only ones the launchers accept there).
    CUDA tensors, and the meta tensors of the compile report's representative launches, get the GPU's choices."""
    return t.device.type == "cpu"


def row_tiles(n_rows: int, n_cols: int, device: torch.device, whole_rows: bool = False) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps) for a row-wise kernel over an (n_rows, n_cols) matrix on device.

    whole_rows: in the interpreter, prefer one column block per row (kernels that pass over a row many times,
    like sample's bisection)."""
    if device.type != "cpu":
        return gpu_row_tiles(n_cols)
    if whole_rows or n_cols <= 1024:
        bn = min(next_pow2(n_cols), _INTERP_MAX_BLOCK_N)
    else:
        # padded columns per row + a per-iteration overhead worth ~512 columns, smallest wins
        bn = min((1 << k for k in range(10, 15)), key=lambda b: (-(-n_cols // b)) * (b + 512))
    bm_cap = max(1, min(_INTERP_TILE_ELEMS // bn, next_pow2(n_rows)))
    # padded rows + a per-program overhead worth ~16 rows of work, smallest wins; ties go to bigger tiles
    cands = [1 << k for k in range(bm_cap.bit_length())]
    bm = min(cands, key=lambda b: ((-(-n_rows // b)) * (b + 16), -b))
    return bm, bn, 4


# Row reductions are written tl.reduce(x, 1, SUM) rather than tl.sum(x, 1): tl.sum / tl.max / tl.argmax are @jit
# functions themselves, and the interpreter re-patches triton.language on every nested @jit call (~2-3 ms each,
# most of the run time of the row kernels there). With triton's own combine functions, tl.reduce compiles to the
# same code on a GPU and runs as one numpy reduction in the interpreter. (tl.standard's combine functions carry
# these names in Triton 3.5 through 3.9.)
SUM = tl.standard._sum_combine
MAX = tl.standard._elementwise_max
ARGMAX = tl.standard._argmax_combine_tie_break_left  # on (value, index) pairs; ties go to the lower index


# ----------------------------------------------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------------------------------------------
def check_device(t: torch.Tensor, name: str) -> None:
    """ValueError naming `name` unless t is where the kernels run: the CPU in the interpreter, else CUDA."""
    if _runtime.INTERPRETED:
        if t.device.type != "cpu":
            raise ValueError(f"{name} must be a CPU tensor when Triton runs in its interpreter, got {t.device}")
    elif t.device.type != "cuda":
        raise ValueError(f"{name} must be a CUDA tensor (Triton compiles for the GPU here), got {t.device}")


def check_logits(logits, name: str = "logits", min_dim: int = 1) -> None:
    if not isinstance(logits, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be float32, float16, bfloat16 or float64, got {logits.dtype}")
    check_device(logits, name)
    if logits.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimension(s), got shape {tuple(logits.shape)}")
    if logits.shape[-1] < 1:
        raise ValueError(f"{name} must have a non-empty last dimension, got shape {tuple(logits.shape)}")
    if logits.shape[-1] >= 2**31:
        raise ValueError(f"{name} last dimension must be < 2**31, got {logits.shape[-1]}")


def check_temperature(temperature, allow_zero: bool = False) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise ValueError(f"temperature must be a real number, got {type(temperature).__name__}")
    t = float(temperature)
    if not math.isfinite(t):
        raise ValueError(f"temperature must be finite, got {t}")
    if t < 0 or (t == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"temperature must be {bound}, got {t}")
    return t


def as_rows(x: torch.Tensor) -> torch.Tensor:
    """(..., V) -> (R, V) view (copy only when needed) with a unit column stride."""
    x2 = x.reshape(-1, x.shape[-1])
    if x2.shape[1] > 1 and x2.stride(1) != 1:
        x2 = x2.contiguous()
    return x2


def row_stride(x2: torch.Tensor) -> int:
    """The row stride the kernels get: a one-row matrix reports its length (any value would do; this one is
    the same as for a contiguous matrix, so one row specialises like many)."""
    return x2.stride(0) if x2.shape[0] > 1 else x2.shape[1]


# ----------------------------------------------------------------------------------------------------------------
# Allocation and launches
# ----------------------------------------------------------------------------------------------------------------
def empty(shape, dtype: torch.dtype, device) -> torch.Tensor:
    """Every buffer a kernel must fill is allocated here (tests/conftest.py poisons it with NaN, or -7 for
    integers, so that an element a kernel forgets to write shows)."""
    return torch.empty(shape, dtype=dtype, device=device)


def quiet_numpy():
    """The interpreter evaluates exp(-inf), log(0), -inf - -inf in numpy, as a GPU would, without warnings."""
    if _runtime.INTERPRETED:
        return np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore")
    return contextlib.nullcontext()


def on_device_of(t: torch.Tensor):
    """Launches inside this context run on t's GPU (Triton launches on the current CUDA device and stream):
    with tensors on cuda:1 and cuda:0 current, a launch would otherwise read cuda:1 addresses on cuda:0."""
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


@dataclass
class CompileConfig:
    """One kernel configuration a launcher can choose on a GPU, as kernels.compile_report compiles it.

    signature maps every non-constexpr argument name to its triton type ("*fp32", "i32", "fp32", ...);
    constexpr arguments may be listed as "constexpr" or left out (they are added). constexprs maps each
    constexpr argument name to its value (including the int arguments a launch specialises to 1). attrs maps an
    argument name to its Triton attributes ([["tt.divisibility", 16]] where the launch specialises on it).
    expect_cp_async: the kernel streams tiles through shared memory (num_stages > 1) and must show cp.async.
    options: further Triton compile/launch options of the launch (the persistent recurrence's
    launch_cooperative_grid). expect_barrier: the kernel has a grid barrier and must show its release and
    acquire instructions in the PTX.
    """

    name: str
    fn: Any  # triton.runtime.jit.JITFunction (a real one only in compile-only mode)
    signature: dict[str, str]
    constexprs: dict[str, object]
    expect_tensor_cores: bool
    num_warps: int = 4
    num_stages: int = 1
    attrs: dict[str, list] = field(default_factory=dict)
    expect_cp_async: bool = False
    maxnreg: int | None = None  # see Launch
    options: dict[str, Any] = field(default_factory=dict)
    expect_barrier: bool = False


def _unspecialised(fn) -> tuple[set, set]:
    """(names in do_not_specialize, names in do_not_specialize_on_alignment) of a @triton.jit kernel: from the
    JITFunction's parameters, or from the interpreter's wrapper, which keeps the decorator's arguments."""
    names = list(fn.arg_names)
    params = getattr(fn, "params", None)
    if params is not None:
        return ({p.name for p in params if p.do_not_specialize},
                {p.name for p in params if p.do_not_specialize_on_alignment})
    kwargs = getattr(fn, "kwargs", {})

    def as_names(items):
        return {names[i] if isinstance(i, int) else i for i in (items or ())}

    return as_names(kwargs.get("do_not_specialize")), as_names(kwargs.get("do_not_specialize_on_alignment"))


def specialization(value, specialize: bool = True, align: bool = True) -> tuple[str, object]:
    """(signature type, key) Triton gives a launch argument: key is 1 for an int specialised to the constant 1
    (type "constexpr"), "D" for divisibility by 16, "" or None otherwise (see the module docstring)."""
    if isinstance(value, bool):
        return "u1", None
    if isinstance(value, numbers.Integral):
        value = int(value)
        if specialize and value == 1:
            return "constexpr", 1
        ty = "i32" if -2**31 <= value < 2**31 else ("u64" if value >= 2**63 else "i64")
        return ty, (("D" if align and value % 16 == 0 else "") if specialize else None)
    if isinstance(value, float):
        return "fp32", None
    if isinstance(value, torch.Tensor):
        ty = "*" + TL_NAME[value.dtype]
        return ty, (("D" if align and value.data_ptr() % 16 == 0 else "") if specialize else None)
    raise TypeError(f"no Triton specialization for {type(value).__name__}")


# Every launch passes maxnreg = 255 (Triton's CUDA option, in 3.5 to 3.9; the interpreter drops it), so the PTX
# carries `.maxnreg 255`: the most a thread may have, so no real cap (255 x 256 threads of 8 warps fit the
# 64K-register file). Without the directive the ptxas bundled with Triton 3.9 gave several kernels whose sizes are
# divisible by 16 only 40-80 registers and spilled 4-28 bytes a thread (the tiled recurrence kernels at H = 512,
# softmax's backward at 64 columns); with it none spills (kernels/compile_report.py checks every configuration).
MAXNREG = 255


@dataclass
class Launch:
    """One kernel launch: fn[grid](*args.values(), **constexprs, num_warps=..., num_stages=..., maxnreg=...,
    **options).

    args holds every runtime argument by name, in the kernel's order; options any further Triton launch option
    (launch_cooperative_grid: Triton 3.5 to 3.9 take it as a compile option that changes how the kernel is
    launched; the interpreter drops options it does not know, as it drops maxnreg)."""

    fn: Any
    grid: tuple
    args: dict[str, Any]
    constexprs: dict[str, Any]
    num_warps: int = 4
    num_stages: int = 1
    maxnreg: int | None = MAXNREG
    options: dict[str, Any] = field(default_factory=dict)

    def _options(self) -> dict:
        options = dict(num_warps=self.num_warps, num_stages=self.num_stages)
        if self.maxnreg is not None:
            options["maxnreg"] = self.maxnreg
        return {**options, **self.options}

    def _device_tensor(self) -> torch.Tensor:
        return next(v for v in self.args.values() if isinstance(v, torch.Tensor))

    def __call__(self) -> None:
        announce_interpreter_once()
        with on_device_of(self._device_tensor()), quiet_numpy():
            self.fn[self.grid](*self.args.values(), **self.constexprs, **self._options())

    def compile(self):
        """Compiles this launch for its GPU without running it (Triton's JITFunction.warmup, in 3.5 to 3.9) and
        returns the CompiledKernel; the launch then reuses it."""
        with on_device_of(self._device_tensor()):
            return self.fn.warmup(*self.args.values(), grid=self.grid, **self.constexprs, **self._options())

    def compile_config(self, name: str, *, expect_tensor_cores: bool = False, expect_cp_async: bool = False,
                       expect_barrier: bool = False) -> CompileConfig:
        """This launch as the compile report compiles it: Triton's specialization of these very arguments."""
        order = [n for n in self.fn.arg_names if n not in self.constexprs]
        if order != list(self.args):
            raise ValueError(f"{name}: arguments {list(self.args)} are not the kernel's {order}")
        no_spec, no_align = _unspecialised(self.fn)
        signature: dict[str, str] = {}
        constexprs = dict(self.constexprs)
        attrs: dict[str, list] = {}
        for arg, value in self.args.items():
            ty, key = specialization(value, arg not in no_spec, arg not in no_align)
            signature[arg] = ty
            if ty == "constexpr":
                constexprs[arg] = key
            elif key == "D":
                attrs[arg] = [["tt.divisibility", 16]]
        return CompileConfig(name=name, fn=self.fn, signature=signature, constexprs=constexprs,
                             expect_tensor_cores=expect_tensor_cores, num_warps=self.num_warps,
                             num_stages=self.num_stages, attrs=attrs, expect_cp_async=expect_cp_async,
                             maxnreg=self.maxnreg, options=dict(self.options), expect_barrier=expect_barrier)


def meta_tensor(shape, dtype: torch.dtype) -> torch.Tensor:
    """A tensor with shape, dtype and strides but no storage: the representative launches of the compile report
    (its address is 0, so aligned, as torch's CUDA allocations are)."""
    return torch.empty(shape, dtype=dtype, device="meta")


# ----------------------------------------------------------------------------------------------------------------
# The recurrence's launchers (kernels/rnn.py's batch-tiled kernels and kernels/_rnn_persistent.py's): one contract
# ----------------------------------------------------------------------------------------------------------------
RNN_PRECISIONS = ("ieee", "tf32", "bf16", "fp16")
LOW_PRECISION_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16}


def emulated(precision: str, t: torch.Tensor) -> bool:
    """Whether bf16/fp16 operands are emulated in fp32 (the interpreter, i.e. CPU tensors; kernels/_common.py's
    dot_operand); a GPU, and the compile report's meta tensors, get the real 16-bit types."""
    return precision in LOW_PRECISION_DTYPE and interpreted(t)


def inner_contiguous(t: torch.Tensor) -> torch.Tensor:
    """The kernels need unit stride on the last dim only; other strides are passed as arguments."""
    return t if t.stride(-1) == 1 else t.contiguous()


def check_launch(name: str, t: torch.Tensor, shape, dtype, device) -> None:
    if tuple(t.shape) != tuple(shape) or t.dtype != dtype or t.device != device:
        raise ValueError(f"{name}: expected {tuple(shape)} {dtype} on {device}, "
                         f"got {tuple(t.shape)} {t.dtype} on {t.device}")


def forward_buffers(xp: torch.Tensor, h0: torch.Tensor | None, w_hh: torch.Tensor, reverse: bool, precision: str):
    """Checks a forward recurrence's arguments and allocates its outputs: (xp, w_hh, hs, hT), xp and w_hh with a
    unit inner stride, hs (T+1, B, H) the state slots with h_0 (or zeros) in its slot (hs[T] when reverse, else
    hs[0]), hT (B, H). xp: (T, B, H) fp32|fp64; h0: (B, H) or None; w_hh: (H, H)."""
    if xp.dim() != 3 or xp.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"xp: expected a 3-D float32/float64 tensor, got {xp.dim()}-D {xp.dtype}")
    T, B, H = xp.shape
    if T == 0 or B == 0 or H == 0:
        raise ValueError(f"xp: every size must be > 0, got {tuple(xp.shape)}")
    if precision not in RNN_PRECISIONS:
        raise ValueError(f"precision: expected one of {RNN_PRECISIONS}, got {precision!r}")
    check_device(xp, "xp")
    check_launch("w_hh", w_hh, (H, H), xp.dtype, xp.device)
    if h0 is not None:
        check_launch("h0", h0, (B, H), xp.dtype, xp.device)
    hs = empty((T + 1, B, H), xp.dtype, xp.device)
    h0_slot = hs[T] if reverse else hs[0]
    if h0 is None:
        h0_slot.zero_()
    else:
        h0_slot.copy_(h0)
    return inner_contiguous(xp), inner_contiguous(w_hh), hs, empty((B, H), xp.dtype, xp.device)


def backward_buffers(dy: torch.Tensor | None, dhT: torch.Tensor | None, hs: torch.Tensor, w_hh: torch.Tensor,
                     precision: str):
    """Checks a backward recurrence's arguments and allocates its outputs: (dy, dhT, w_hh, da, dh0), the inputs
    with a unit inner stride (None stays None), da (T, B, H), dh0 (B, H). hs: the forward's (T+1, B, H) slots."""
    T1, B, H = hs.shape
    dtype, device = hs.dtype, hs.device
    if precision not in RNN_PRECISIONS:
        raise ValueError(f"precision: expected one of {RNN_PRECISIONS}, got {precision!r}")
    check_launch("w_hh", w_hh, (H, H), dtype, device)
    if dy is not None:
        check_launch("dy", dy, (T1 - 1, B, H), dy.dtype, device)
    if dhT is not None:
        check_launch("dhT", dhT, (B, H), dhT.dtype, device)
    return (None if dy is None else inner_contiguous(dy), None if dhT is None else inner_contiguous(dhT),
            inner_contiguous(w_hh), empty((T1 - 1, B, H), dtype, device), empty((B, H), dtype, device))


# ----------------------------------------------------------------------------------------------------------------
# Device checks
# ----------------------------------------------------------------------------------------------------------------
class DeviceChecks:
    """Counters of problems found on the device, read by check() at a moment the caller chooses.

    Ops that take `checks=` add the number of bad rows of each call with `add` (device ops only, no host sync).
    check() reads all counters with one host synchronisation, resets them, and raises ValueError describing
    every kind of problem seen since the last check, or returns None. Use one per device.
    """

    # kind -> what the message says about each counted item
    KINDS = {
        "targets": "cross_entropy targets outside [0, V) that are not ignore_index (their losses are NaN)",
        "logits": "sample rows of logits that are all -inf or contain NaN / +inf (token 0 was returned)",
        "nonfinite": "non-finite values reported by the caller",
    }

    def __init__(self, device: torch.device | str):
        self._counts = torch.zeros(len(self.KINDS), dtype=torch.int64, device=device)
        self.device = self._counts.device  # "cuda" made concrete ("cuda:0"), as the tensors it is compared with
        self._index = {kind: i for i, kind in enumerate(self.KINDS)}

    def add(self, kind: str, count: torch.Tensor) -> None:
        """counts[kind] += count (a 0-d integer or bool tensor on this device), without a host sync."""
        i = self._index[kind]
        self._counts[i:i + 1].add_(count.to(torch.int64).reshape(1))

    def counts(self) -> dict[str, int]:
        """Every counter (one host sync)."""
        return dict(zip(self.KINDS, self._counts.tolist()))

    def check(self) -> None:
        """Raises ValueError for what was counted since the last check (one host sync); resets the counters."""
        counts = self.counts()
        self._counts.zero_()
        bad = [f"{n} {self.KINDS[kind]}" for kind, n in counts.items() if n]
        if bad:
            raise ValueError("device checks failed: " + "; ".join(bad))
