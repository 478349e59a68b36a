"""Shared fixtures: a small Chinese corpus on disk, an isolated cache folder for every test session, the device the
kernel tests run on, NaN-poisoned kernel outputs, exact fp32 on CUDA, and a counter of host synchronisations."""
from __future__ import annotations

import contextlib
import random
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import kernels  # noqa: F401  (settles Triton's interpreter mode before any test imports triton)
from kernels import _utils as kernel_utils
from kernels import runtime_description

# The kernel tests run where the user is: on CUDA when there is a GPU (compiled kernels), else on the CPU through
# Triton's interpreter.
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


# Kernel tests' tolerances for reduced precisions. Unit roundoff of the operands: tf32 and fp16 keep 10 explicit
# mantissa bits, bf16 7.
UNIT_ROUNDOFF = {"tf32": 2.0**-11, "fp16": 2.0**-11, "bf16": 2.0**-8}


def rounding_tolerance(precision: str, T: int) -> float:
    """Relative error bound of outputs and gradients when every product's operands are rounded to `precision`
    (fp32 accumulation), for T steps: each step rounds both operands of its products (<= 2u relative per product
    term); with the tests' weights (nn.RNN's U(-1/sqrt(H), 1/sqrt(H)): ||W_hh||_2 ~ 1, tanh/relu 1-Lipschitz) the
    recurrence does not amplify earlier errors to first order, so the forward adds at most T of them, the
    backward T more, and the weight GEMMs round their operands once: 2u(2T + 1). Written once, never loosened."""
    return 2 * UNIT_ROUNDOFF[precision] * (2 * T + 1)



def pytest_report_header(config):
    rt = runtime_description()
    where = (f"cuda ({rt['device']}), compiled by Triton {rt['triton']}" if DEVICE.type == "cuda"
             else f"cpu, Triton {rt['triton']} interpreter (TRITON_INTERPRET=1)")
    return f"kernel tests run on: {where}; torch {rt['torch']}"

# Sentences in the register of the default corpus (news of January 1998), recombined at random so that the
# tiny corpus has a few hundred distinct words and enough repetition for a model to learn something.
SENTENCES = [
    "新华社北京一月一日电", "国家主席发表新年讲话", "我们的祖国充满希望", "人民群众生活水平不断提高",
    "经济建设取得了巨大成就", "改革开放是强国之路", "科学技术是第一生产力", "农村经济继续稳定发展",
    "香港回归祖国以后繁荣稳定", "各族人民团结一致", "全国各地举行庆祝活动", "企业改革不断深化",
    "今年的工作任务十分艰巨", "记者从有关部门获悉", "这项工程已经全面完成", "教育事业得到了很大发展",
    "城市居民的收入稳步增长", "我们要坚持实事求是", "世界和平与发展是时代的主题", "文化市场日益繁荣",
]


def write_tiny_corpus(path, lines: int = 400, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(lines):
            f.write("，".join(rng.choice(SENTENCES) for _ in range(rng.randint(1, 4))) + "。\n")


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """Path of a ~400-line UTF-8 Chinese corpus (about 10k jieba tokens)."""
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    write_tiny_corpus(path)
    return path


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Token-id caches go to a fresh folder, so tests never see a cache from an earlier run; nothing is timed to
    choose a speed setting (rnnlm.tuning: each takes its default), so that no test depends on which one wins."""
    mp = pytest.MonkeyPatch()
    mp.setenv("RNNLM_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    mp.setenv("RNNLM_TUNING", "off")
    yield
    mp.undo()


@pytest.fixture
def one_thread():
    """torch on one thread for the test: tiny models gain nothing from a second thread, and on a busy machine
    every OpenMP region waits for a descheduled thread (10x slower steps); results are bit-exact at any fixed
    thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def device() -> torch.device:
    """The device of the kernel tests (see DEVICE)."""
    return DEVICE


def _poisoned_empty(shape, dtype, device):
    t = torch.empty(shape, dtype=dtype, device=device)
    return t.fill_(float("nan")) if t.is_floating_point() else t.fill_(-7)


@pytest.fixture(autouse=True)
def _poison_kernel_outputs(monkeypatch):
    """Every buffer a kernel must fill (kernels._utils.empty) comes out full of NaN (-7 for integers), in every
    test: an element a kernel forgets to write surfaces as NaN in an output or a gradient, or as a bad id or flag
    (as flash-linear-attention's test suite poisons its outputs). Patched in every kernels module that imported it."""
    original = kernel_utils.empty
    for name, module in list(sys.modules.items()):
        if (name == "kernels" or name.startswith("kernels.")) and getattr(module, "empty", None) is original:
            monkeypatch.setattr(module, "empty", _poisoned_empty)


@pytest.fixture
def exact_fp32():
    """On CUDA: no TF32 in cuDNN (nn.RNN, and precision=None of kernels.rnn) nor in cuBLAS for the test, so that
    fp32 parity is exact-fp32 against exact-fp32. Nothing changes on the CPU."""
    if DEVICE.type != "cuda":
        yield
        return
    cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul


class HostSyncs(TorchDispatchMode):
    """Counts the places where the host waits for a device value, two ways. Python-level: Tensor.item / __bool__ /
    __float__ / __int__ / __index__ / tolist / numpy / cpu / nonzero and torch.nonzero, torch.cuda.synchronize
    (also under torch.inference_mode, which hides tensors from dispatch modes). Dispatch-level: aten ops that read
    a value (_local_scalar_dense) or size their output by the data (nonzero, masked_select, unique, ...) and copies
    from a device to the CPU, called from C++ (outside inference mode), except a non-blocking copy_ into pinned
    memory (it returns at once; its reader waits on an event, as the persistent recurrence's flag copy does). A
    read counted at the Python level is not counted again below it. On the CPU these are the calls that synchronise on a GPU, so a CPU test can hold the
    count. `calls` lists them."""

    SYNC_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique", "_unique2", "unique_dim",
                "unique_consecutive", "repeat_interleave", "bincount", "histc"}
    METHODS = ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy", "cpu", "nonzero")

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []
        self._python_level = 0  # > 0 while a counted Python-level read runs

    @property
    def count(self) -> int:
        return len(self.calls)

    def counted(self, name: str, fn):
        def wrapped(*args, **kwargs):
            if not self._python_level:
                self.calls.append(name)
            self._python_level += 1
            try:
                return fn(*args, **kwargs)
            finally:
                self._python_level -= 1

        return wrapped

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if not self._python_level:
            if name in self.SYNC_OPS:
                self.calls.append(f"aten.{name}")
            elif name in ("_to_copy", "copy_"):
                src = args[1] if name == "copy_" else args[0]
                dst = args[0].device if name == "copy_" else kwargs.get("device") or args[0].device
                # a non-blocking copy into pinned memory returns at once (the caller reads it after an event)
                async_copy = name == "copy_" and (args[2] if len(args) > 2 else kwargs.get("non_blocking", False)) \
                    and args[0].is_pinned()
                if isinstance(src, torch.Tensor) and src.device.type != "cpu" and torch.device(dst).type == "cpu" \
                        and not async_copy:
                    self.calls.append(f"aten.{name} to cpu")
        return func(*args, **kwargs)


@pytest.fixture
def host_syncs(monkeypatch):
    """host_syncs() -> a context manager yielding a HostSyncs that counts the host synchronisations inside it."""

    @contextlib.contextmanager
    def counting():
        counter = HostSyncs()
        with monkeypatch.context() as mp:
            for method in HostSyncs.METHODS:
                mp.setattr(torch.Tensor, method, counter.counted(f"Tensor.{method}", getattr(torch.Tensor, method)))
            mp.setattr(torch, "nonzero", counter.counted("torch.nonzero", torch.nonzero))
            mp.setattr(torch.cuda, "synchronize", counter.counted("cuda.synchronize", torch.cuda.synchronize))
            with counter:
                yield counter

    return counting
