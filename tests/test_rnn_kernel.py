"""kernels.rnn against torch.nn.RNN: parity in fp64 and fp32, gradients, reduced precisions within tolerances derived
from their unit roundoff, NaN-poisoned outputs (tests/conftest.py), odd shapes, stable tanh, the precision flags,
devices, determinism, bad input, and hypothesis properties. Every test runs on the kernel tests' device (CUDA when
there is a GPU, else the CPU through Triton's interpreter, where kernels are slow and shapes stay tiny)."""
from __future__ import annotations

import types

import pytest
import torch

import kernels  # noqa: F401  (sets up Triton's mode before triton is imported)
import kernels.rnn as K
from kernels import _runtime, _utils
from kernels.rnn import LaunchConfig, TritonRNN, rnn, rnn_reference

import triton
import triton.language as tl
from conftest import DEVICE, UNIT_ROUNDOFF, rounding_tolerance
from hypothesis_or_skip import HealthCheck, given, settings, st

from kernels._common import tanh as stable_tanh

pytestmark = pytest.mark.usefixtures("exact_fp32")

# Exact arithmetic: the same bounds on a GPU and in the interpreter.
TOL = {torch.float64: 1e-12, torch.float32: 1e-5}
# the tiled (GPU) kernel with small tiles, forced through rnn(launch_config=...): with H = 70 it has a partial N
# tile (32, 32, 6) and a partial K tile (64, 6), and with B = 3 two programs, the second one partial. On a GPU
# tl.dot needs tiles of at least 16: block_b = 16 (one partial program).
TILED = LaunchConfig(resident=False, block_b=2 if _runtime.INTERPRETED else 16, block_n=32, block_k=64,
                     num_stages=1 if _runtime.INTERPRETED else 2)


def cpu_randn(*shape, generator, dtype=torch.float32):
    """randn drawn on the CPU (the same numbers on every device), then moved to the tests' device."""
    return torch.randn(*shape, generator=generator, dtype=dtype).to(DEVICE)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300)).item()


def make_rnn(I, H, L, *, dtype, nonlinearity="tanh", bias=True, batch_first=False, bidirectional=False,
             dropout=0.0, seed=0):
    """nn.RNN with its own initialisation, U(-1/sqrt(H), 1/sqrt(H)). (Larger weights, e.g. +-0.6 at H = 130,
    saturate tanh so that 1 - h^2 cancels: nn.RNN's own fp32 gradients are then ~1.5e-5 off the fp64 truth,
    as are ours, and no fp32 implementation could agree with another to 1e-5.)"""
    torch.manual_seed(seed)
    return torch.nn.RNN(I, H, L, nonlinearity=nonlinearity, bias=bias, batch_first=batch_first,
                        bidirectional=bidirectional, dropout=dropout).to(dtype).to(DEVICE)


def kwargs_of(m: torch.nn.RNN, **overrides) -> dict:
    """rnn()'s keyword arguments for module m (nn.RNN's own settings), with overrides."""
    kw = dict(num_layers=m.num_layers, nonlinearity=m.nonlinearity, bias=m.bias, batch_first=m.batch_first,
              dropout=m.dropout, training=m.training, bidirectional=m.bidirectional)
    kw.update(overrides)
    return kw


def check_parity(m, x, h0, *, tol, which=("output", "h_n"), precision=None, seed=None, launch_config=None,
                 ref=None):
    """Runs rnn() and m (nn.RNN), or ref() when given, on the same input with random upstream gradients on the
    chosen outputs; compares outputs, h_n and the gradients of x, h0 and every weight and bias."""
    leaves = [x] + ([h0] if h0 is not None else []) + list(m._flat_weights)

    def run(fn):
        if seed is not None:
            torch.manual_seed(seed)
        out, h_n = fn()
        g = torch.Generator().manual_seed(123)
        loss = 0
        if "output" in which:
            loss = loss + (out * cpu_randn(*out.shape, generator=g, dtype=out.dtype)).sum()
        if "h_n" in which:
            loss = loss + (h_n * cpu_randn(*h_n.shape, generator=g, dtype=h_n.dtype)).sum()
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        return out, h_n, grads

    ours = run(lambda: rnn(x, h0, m._flat_weights, **kwargs_of(m, precision=precision, launch_config=launch_config)))
    ref = run(ref or (lambda: m(x, h0)))
    assert ours[0].shape == ref[0].shape and ours[1].shape == ref[1].shape
    assert ours[0].dtype == ref[0].dtype and ours[1].dtype == ref[1].dtype
    names = ["input"] + (["h0"] if h0 is not None else []) + [n for n, _ in m.named_parameters()]
    errs = {"output": rel_err(ours[0], ref[0]), "h_n": rel_err(ours[1], ref[1])}
    for name, a, b in zip(names, ours[2], ref[2]):
        if b is None:
            assert a is None or not a.any(), name
            continue
        assert a is not None, f"no gradient for {name}"
        assert torch.isfinite(a).all(), name
        errs[f"d{name}"] = rel_err(a, b)
    bad = {k: v for k, v in errs.items() if not v <= tol}
    assert not bad, f"relative errors above {tol}: {bad}"
    return errs


# (T, B, I, H, L, bidirectional, batch_first, bias, nonlinearity, h0)
PARITY_CASES = [
    pytest.param(1, 3, 5, 130, 1, False, False, True, "tanh", True, id="T1-H130"),
    pytest.param(4, 5, 6, 13, 3, True, True, True, "tanh", False, id="L3-bidir-batch_first-no_h0"),
    pytest.param(3, 1, 4, 130, 2, False, False, False, "relu", True, id="relu-no_bias-B1-H130"),
    pytest.param(5, 3, 7, 130, 2, True, False, True, "tanh", True, id="L2-bidir-H130"),
    pytest.param(3, 7, 4, 20, 1, False, True, False, "relu", False, id="relu-batch_first-no_bias-B7"),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("T,B,I,H,L,bidir,batch_first,bias,nonlin,with_h0", PARITY_CASES)
def test_parity_with_nn_rnn(dtype, T, B, I, H, L, bidir, batch_first, bias, nonlin, with_h0):
    m = make_rnn(I, H, L, dtype=dtype, nonlinearity=nonlin, bias=bias, batch_first=batch_first,
                 bidirectional=bidir)
    g = torch.Generator().manual_seed(1)
    shape = (B, T, I) if batch_first else (T, B, I)
    x = cpu_randn(*shape, generator=g, dtype=dtype).requires_grad_()
    D = 2 if bidir else 1
    h0 = cpu_randn(L * D, B, H, generator=g, dtype=dtype).requires_grad_() if with_h0 else None
    check_parity(m, x, h0, tol=TOL[dtype], precision="ieee")


@pytest.mark.parametrize("nonlin", ["tanh", "relu"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_tiled_kernel_parity(dtype, nonlin):
    """The GPU's tiled kernels (h_{t-1} and dA_{t+1} read back from memory, N and K tiled), forced with small tiles
    (in the interpreter too)."""
    m = make_rnn(3, 70, 2, dtype=dtype, nonlinearity=nonlin, bidirectional=True)
    g = torch.Generator().manual_seed(2)
    x = cpu_randn(3, 3, 3, generator=g, dtype=dtype).requires_grad_()
    h0 = cpu_randn(4, 3, 70, generator=g, dtype=dtype).requires_grad_()
    check_parity(m, x, h0, tol=TOL[dtype], precision="ieee", launch_config=TILED)


@pytest.mark.parametrize("which", [("output",), ("h_n",)], ids=["only_output", "only_h_n"])
@pytest.mark.parametrize("config", [None, TILED], ids=["resident", "tiled"])
def test_parity_when_one_output_is_unused(which, config):
    """Backward with dy or dh_n absent (the kernels' HAS_DY / HAS_DHT = False paths)."""
    m = make_rnn(4, 70, 1, dtype=torch.float64, bidirectional=True)
    g = torch.Generator().manual_seed(3)
    x = cpu_randn(3, 3, 4, generator=g, dtype=torch.float64).requires_grad_()
    h0 = cpu_randn(2, 3, 70, generator=g, dtype=torch.float64).requires_grad_()
    check_parity(m, x, h0, tol=TOL[torch.float64], which=which, launch_config=config)


def test_unbatched_input():
    m = make_rnn(5, 9, 2, dtype=torch.float64, bidirectional=True, batch_first=True)
    g = torch.Generator().manual_seed(4)
    x = cpu_randn(4, 5, generator=g, dtype=torch.float64).requires_grad_()  # (T, I): batch_first does not apply
    h0 = cpu_randn(4, 9, generator=g, dtype=torch.float64).requires_grad_()
    check_parity(m, x, h0, tol=TOL[torch.float64])
    check_parity(m, x, None, tol=TOL[torch.float64])


def test_non_contiguous_input_and_state():
    m = make_rnn(4, 11, 2, dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    base = cpu_randn(3, 5, 8, generator=g, dtype=torch.float64)
    x = base.transpose(0, 1)[..., ::2].detach().requires_grad_()  # (5, 3, 4), strided everywhere
    assert not x.is_contiguous()
    h0 = cpu_randn(3, 2, 11, generator=g, dtype=torch.float64).transpose(0, 1).detach().requires_grad_()
    assert not h0.is_contiguous()
    # cuDNN refuses a non-contiguous hx; rnn() takes it as it is
    check_parity(m, x, h0, tol=TOL[torch.float64], ref=lambda: m(x, h0.contiguous()))


def native_rnn(m, *args):
    """nn.RNN through ATen's own RNN, not cuDNN: on a GPU cuDNN draws dropout masks from its own generator state
    (no torch seed reproduces them) and refuses backward in eval mode; ATen's draws with F.dropout, as rnn()."""
    with torch.backends.cudnn.flags(enabled=False):
        return m(*args)


@pytest.mark.parametrize("batch_first", [False, True])
def test_dropout_in_training_uses_nn_rnn_masks(batch_first):
    m = make_rnn(5, 12, 3, dtype=torch.float64, bidirectional=True, dropout=0.5, batch_first=batch_first).train()
    g = torch.Generator().manual_seed(6)
    x = cpu_randn(4, 3, 5, generator=g, dtype=torch.float64).requires_grad_()
    h0 = cpu_randn(6, 4 if batch_first else 3, 12, generator=g, dtype=torch.float64).requires_grad_()
    check_parity(m, x, h0, tol=TOL[torch.float64], seed=7, ref=lambda: native_rnn(m, x, h0))
    # and the masks really are random: another seed gives another output
    torch.manual_seed(7)
    a, _ = rnn(x, h0, m._flat_weights, **kwargs_of(m))
    torch.manual_seed(8)
    b, _ = rnn(x, h0, m._flat_weights, **kwargs_of(m))
    assert rel_err(a, b) > 0.1


def test_dropout_is_off_in_eval():
    m = make_rnn(5, 12, 2, dtype=torch.float64, dropout=0.5).eval()
    x = cpu_randn(4, 3, 5, generator=torch.Generator().manual_seed(7), dtype=torch.float64).requires_grad_()
    check_parity(m, x, None, tol=TOL[torch.float64], ref=lambda: native_rnn(m, x))
    y, _ = rnn(x, None, m._flat_weights, **kwargs_of(m, training=False))
    y_nodrop, _ = rnn(x, None, m._flat_weights, **kwargs_of(m, training=False, dropout=0.0))
    assert torch.equal(y, y_nodrop)


@pytest.mark.parametrize("L,bidirectional", [(2, False), (1, True)], ids=["L2", "bidir"])
def test_gradcheck_fp64(L, bidirectional):
    torch.manual_seed(3)
    D, T, B, I, H = 2 if bidirectional else 1, 3, 2, 2, 3
    m = torch.nn.RNN(I, H, L, bidirectional=bidirectional).double().to(DEVICE)
    x = torch.randn(T, B, I, dtype=torch.float64).to(DEVICE).requires_grad_()
    h0 = torch.randn(L * D, B, H, dtype=torch.float64).to(DEVICE).requires_grad_()
    weights = [w.detach().clone().requires_grad_() for w in m._flat_weights]

    def f(x, h0, *ws):
        return rnn(x, h0, list(ws), num_layers=L, bidirectional=bidirectional)

    assert torch.autograd.gradcheck(f, (x, h0, *weights), eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("config", [None, TILED], ids=["resident", "tiled"])
def test_every_output_element_is_written(config):
    """Buffers come out of the launcher full of NaN (the conftest's autouse poisoning): any element a kernel
    skips would surface as NaN."""
    probe = K.empty((3, 4), torch.float32, DEVICE)
    assert torch.isnan(probe).all()  # the poison is real, and reaches this module
    m = make_rnn(3, 70, 2, dtype=torch.float32, bidirectional=True)
    g = torch.Generator().manual_seed(8)
    x = cpu_randn(3, 3, 3, generator=g).requires_grad_()
    h0 = cpu_randn(4, 3, 70, generator=g).requires_grad_()
    check_parity(m, x, h0, tol=TOL[torch.float32], launch_config=config)  # asserts finite gradients too
    out, h_n = rnn(x, None, m._flat_weights, **kwargs_of(m, launch_config=config))
    assert torch.isfinite(out).all() and torch.isfinite(h_n).all()


@triton.jit
def _tanh_probe_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(y_ptr + offs, stable_tanh(tl.load(x_ptr + offs, mask=mask, other=0.0)), mask=mask)


# ulp bound of the stable tanh: <= 4 in the interpreter (numpy's exp/log, IEEE division); a GPU build divides
# with div.full.f32 (<= 2 ulp more than IEEE division, PTX ISA) and takes log from libdevice's __nv_logf (<= 1 ulp
# more than numpy's); ex2.approx's error in u = exp(-2a) cancels in Kahan's expm1 (see kernels/_common.py).
TANH_ULP = 4 if _runtime.INTERPRETED else 4 + 2 + 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_tanh_helper_is_stable_and_accurate(dtype):
    big = [-1e30, -1e4, -100.0, -50.0, -44.5, -44.0, -20.0, 20.0, 44.0, 44.5, 50.0, 100.0, 1e4, 1e30]
    small = [0.0, -0.0, 1e-30, -1e-12, 1e-7, -1e-4, 3e-3, 0.05, -0.3, 0.55, -1.0, 2.5, -7.0]
    x = torch.tensor(big + small + torch.linspace(-12, 12, 200).tolist(), dtype=dtype, device=DEVICE)
    y = torch.empty_like(x)
    _tanh_probe_kernel[(1,)](x, y, x.numel(), BLOCK=triton.next_power_of_2(x.numel()))
    ref = torch.tanh(x.double())
    assert torch.isfinite(y).all()
    assert torch.equal(y[:len(big)], torch.sign(x[:len(big)]))  # saturates to exactly +-1, never NaN
    ulps = ((y.double() - ref).abs() / (ref.abs() * torch.finfo(dtype).eps).clamp_min(torch.finfo(dtype).tiny))
    assert ulps.max().item() <= TANH_ULP, f"max error {ulps.max().item():.1f} ulp"
    nan = torch.tensor([float("nan")], dtype=dtype, device=DEVICE)
    out = torch.empty_like(nan)
    _tanh_probe_kernel[(1,)](nan, out, 1, BLOCK=16)
    assert torch.isnan(out).all()


def errors_against_fp64(m, x) -> dict:
    """{gradient name: (rnn()'s relative error, nn.RNN's)} of fp32 module m's gradients against an fp64 copy."""
    m64 = torch.nn.RNN(m.input_size, m.hidden_size, m.num_layers).double().to(DEVICE)
    m64.load_state_dict({k: v.double() for k, v in m.state_dict().items()})
    x64 = x.detach().double().requires_grad_()

    def grads(fn, leaves):
        out, h_n = fn()
        return torch.autograd.grad(out.sum() + h_n.sum(), leaves)

    truth = grads(lambda: m64(x64), [x64, *m64._flat_weights])
    ours = grads(lambda: rnn(x, None, m._flat_weights, **kwargs_of(m)), [x, *m._flat_weights])
    theirs = grads(lambda: m(x), [x, *m._flat_weights])
    names = ["input"] + [n for n, _ in m.named_parameters()]
    return {n: (f"{rel_err(a, t):.2e}", f"{rel_err(b, t):.2e}") for n, a, b, t in zip(names, ours, theirs, truth)}


def test_huge_preactivations_saturate_without_nan():
    """Inputs driving the pre-activations far below -44 and above 44 (the textbook tanh's NaN zone)."""
    m = make_rnn(2, 5, 2, dtype=torch.float32)
    x = torch.tensor([[[300.0, -300.0]], [[-300.0, 300.0]], [[1e5, 1e5]]], device=DEVICE, requires_grad=True)
    # The reference is ATen's RNN: on an H200 (benchmarks/gpu-report/2026-11-30) cuDNN's fp32 gradients of layer
    # 1 here were 1.0e-5 to 1.6e-5 off the fp64 truth, rnn()'s 0.9e-7 to 2.6e-7 (errors_against_fp64 says so
    # whenever this fails).
    try:
        check_parity(m, x, None, tol=TOL[torch.float32], ref=lambda: native_rnn(m, x))
    except AssertionError as err:  # say which fp32 implementation is off: both against the fp64 truth
        raise AssertionError(f"{err}\nagainst fp64 (ours, nn.RNN): {errors_against_fp64(m, x)}") from None
    out, h_n = rnn(x, None, m._flat_weights, num_layers=2)
    assert torch.isfinite(out).all() and torch.isfinite(h_n).all()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_matches_reference(precision):
    """bf16 / fp16 operands: the same roundings as rnn_reference's (fp32 sums in another order). Exact in the
    interpreter's emulation up to the sums; on a GPU an fp32 difference can flip a rounding, so there the
    derived tolerance applies."""
    T = 4
    m = make_rnn(6, 24, 2, dtype=torch.float32, bidirectional=True)
    x = cpu_randn(T, 3, 6, generator=torch.Generator().manual_seed(9)).requires_grad_()
    kw = kwargs_of(m)
    out, h_n = rnn(x, None, m._flat_weights, **kw, precision=precision)
    ref, ref_h = rnn_reference(x, None, m._flat_weights, **kw, precision=precision)
    tol = 1e-5 if _runtime.INTERPRETED else rounding_tolerance(precision, T)
    assert rel_err(out, ref) <= tol and rel_err(h_n, ref_h) <= tol
    g_ours = torch.autograd.grad(out.sum(), [x, *m._flat_weights])
    g_ref = torch.autograd.grad(ref.sum(), [x, *m._flat_weights])
    assert max(rel_err(a, b) for a, b in zip(g_ours, g_ref)) <= rounding_tolerance(precision, T)


@pytest.mark.parametrize("precision", ["tf32", "bf16", "fp16"])
@pytest.mark.parametrize("config", [None, TILED], ids=["auto", "tiled"])
def test_reduced_precision_within_derived_tolerance(precision, config):
    """Outputs and every gradient against nn.RNN in exact fp32 (the exact_fp32 fixture), within
    rounding_tolerance(precision, T). The interpreter computes "tf32" exactly and emulates bf16/fp16 roundings
    exactly; a GPU rounds in hardware."""
    T = 5
    m = make_rnn(4, 70, 2, dtype=torch.float32)
    g = torch.Generator().manual_seed(10)
    x = cpu_randn(T, 3, 4, generator=g).requires_grad_()
    h0 = cpu_randn(2, 3, 70, generator=g).requires_grad_()
    errs = check_parity(m, x, h0, tol=rounding_tolerance(precision, T), precision=precision, launch_config=config)
    if not (precision == "tf32" and _runtime.INTERPRETED):
        assert errs["output"] > 1e-6  # the reduced precision really is in use


@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_autocast_returns_what_nn_rnn_returns(autocast_dtype):
    """Under torch.autocast(device) with bf16 or fp16, rnn() returns that dtype for output and h_n, computes with
    operands of that dtype, and agrees with nn.RNN's own autocast result within the derived tolerances. (On a GPU
    nn.RNN runs in fp16 under either dtype: ATen's cuDNN autocast wrapper, AutocastRNN.cpp, casts to half, as the
    first H200 run showed; rnn() keeps the dtype the user asked for, and the comparison then allows both
    roundings.)"""
    T = 4
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}[autocast_dtype]
    m = make_rnn(6, 24, 2, dtype=torch.float32)
    x = cpu_randn(T, 3, 6, generator=torch.Generator().manual_seed(11))
    with torch.autocast(DEVICE.type, dtype=autocast_dtype):
        assert K.resolve_precision(None, x) == precision
        out, h_n = rnn(x, None, m._flat_weights, **kwargs_of(m))
        m_out, m_h = m(x)
    assert out.dtype == h_n.dtype == autocast_dtype
    cudnn_half = DEVICE.type == "cuda" and torch.backends.cudnn.is_available()
    assert m_out.dtype == m_h.dtype == (torch.float16 if cudnn_half else autocast_dtype)
    m_precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}[m_out.dtype]
    ref, _ = rnn_reference(x, None, m._flat_weights, **kwargs_of(m), precision=precision)
    # ours against the same roundings, then against nn.RNN's (which may keep its state in the 16-bit dtype)
    same_roundings = 0 if _runtime.INTERPRETED else rounding_tolerance(precision, T)  # exact in the emulation
    assert rel_err(out, ref) <= UNIT_ROUNDOFF[precision] + same_roundings
    m_bound = rounding_tolerance(m_precision, T) if m_precision != precision else 0
    assert rel_err(out, m_out) <= rounding_tolerance(precision, T) + m_bound
    assert K.resolve_precision(None, x) == ("tf32" if DEVICE.type == "cuda" and K.cudnn_rnn_allows_tf32() else "ieee")
    assert K.resolve_precision(None, x.double()) == "ieee"


def test_tf32_follows_torch_flags(monkeypatch):
    """precision=None on CUDA follows the flag nn.RNN's cuDNN kernels read (torch.backends.cudnn.rnn.fp32_precision,
    set by the legacy torch.backends.cudnn.allow_tf32 too); the GEMMs' label follows torch.backends.cuda.matmul."""
    cuda_input = types.SimpleNamespace(dtype=torch.float32, device=torch.device("cuda"))
    cpu_input = torch.zeros(1)
    old_cudnn, old_matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        for allowed in (True, False):
            torch.backends.cudnn.allow_tf32 = allowed
            assert K.cudnn_rnn_allows_tf32() is allowed
            assert K.resolve_precision(None, cuda_input) == ("tf32" if allowed else "ieee")
            assert K.resolve_precision(None, cpu_input) == "ieee"  # no TF32 on the CPU
            torch.backends.cuda.matmul.allow_tf32 = allowed
            assert K.cuda_matmul_allows_tf32() is allowed
        rnn_flags = getattr(torch.backends.cudnn, "rnn", None)
        if rnn_flags is not None and hasattr(rnn_flags, "fp32_precision"):  # the new API (torch >= 2.9)
            torch.backends.cudnn.allow_tf32 = True
            rnn_flags.fp32_precision = "ieee"
            assert not K.cudnn_rnn_allows_tf32() and K.resolve_precision(None, cuda_input) == "ieee"
            rnn_flags.fp32_precision = "tf32"
            assert K.cudnn_rnn_allows_tf32()
    finally:
        torch.backends.cudnn.allow_tf32 = old_cudnn  # the legacy setter resets every cuDNN flag consistently
        torch.backends.cuda.matmul.allow_tf32 = old_matmul
    assert K.resolve_precision("bf16", cuda_input) == "bf16"


def test_cpu_tensors_are_rejected_outside_the_interpreter(monkeypatch):
    """Compiled for a GPU, the launchers refuse CPU tensors with a ValueError naming the argument (instead of
    failing inside Triton's launcher)."""
    monkeypatch.setattr(_runtime, "INTERPRETED", False)
    m = make_rnn(3, 5, 1, dtype=torch.float32).cpu()
    with pytest.raises(ValueError, match="input must be a CUDA tensor"):
        rnn(torch.randn(2, 1, 3), None, m._flat_weights, num_layers=1)
    with pytest.raises(ValueError, match="xp must be a CUDA tensor"):
        K._recurrence_forward(torch.randn(2, 1, 5), None, torch.randn(5, 5), False, "tanh", "ieee")


def test_launches_run_on_the_tensors_device(monkeypatch):
    """A launch enters torch.cuda.device(<its tensors' device>) (Triton launches on the current device), so
    tensors on cuda:1 work whatever the current device; CPU tensors need no guard."""
    entered = []

    class FakeDevice:
        def __init__(self, device):
            entered.append(torch.device(device))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(torch.cuda, "device", FakeDevice)
    on_gpu1 = types.SimpleNamespace(device=torch.device("cuda", 1))
    with _utils.on_device_of(on_gpu1):
        pass
    assert entered == [torch.device("cuda", 1)]
    with _utils.on_device_of(torch.zeros(1)):
        pass
    assert entered == [torch.device("cuda", 1)]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_second_gpu_while_the_first_is_current():
    m = make_rnn(3, 70, 1, dtype=torch.float32).to("cuda:1")
    x = torch.randn(4, 2, 3, device="cuda:1")
    with torch.cuda.device(0):
        out, _ = rnn(x, None, m._flat_weights, num_layers=1, precision="ieee")
        ref, _ = m(x)
    assert out.device == torch.device("cuda", 1) and rel_err(out, ref) <= TOL[torch.float32]


@pytest.mark.parametrize("config", [None, TILED], ids=["auto", "tiled"])
def test_deterministic_bitwise(config):
    """No atomics: two runs (forward, backward) under torch.use_deterministic_algorithms give identical bits, and
    nothing in rnn() raises for lack of a deterministic implementation."""
    m = make_rnn(3, 70, 2, dtype=torch.float32)
    x = cpu_randn(4, 3, 3, generator=torch.Generator().manual_seed(12)).requires_grad_()
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = []
        for _ in range(2):
            out, h_n = rnn(x, None, m._flat_weights, **kwargs_of(m, launch_config=config))
            runs.append((out, h_n, *torch.autograd.grad((out.square().sum() + h_n.sum()), [x, *m._flat_weights])))
    finally:
        torch.use_deterministic_algorithms(was)
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_launch_config_is_checked():
    with pytest.raises(ValueError, match="powers of two"):
        LaunchConfig(resident=False, block_b=16, block_n=48, block_k=64)
    m = make_rnn(3, 5, 1, dtype=torch.float32)
    with pytest.raises(ValueError, match="launch_config"):
        rnn(cpu_randn(2, 1, 3, generator=torch.Generator()), None, m._flat_weights, num_layers=1,
            launch_config=(16, 64))


def test_triton_rnn_module_matches_nn_rnn():
    torch.manual_seed(4)
    ref = torch.nn.RNN(5, 10, 2, batch_first=True, nonlinearity="relu").to(DEVICE)
    mod = TritonRNN(5, 10, 2, batch_first=True, nonlinearity="relu").to(DEVICE)
    mod.load_state_dict(ref.state_dict())
    x = torch.randn(3, 4, 5).to(DEVICE)
    a, ha = mod(x)
    b, hb = ref(x)
    assert rel_err(a, b) <= 1e-5 and rel_err(ha, hb) <= 1e-5


# ------------------------------------------------------------------------------------------------ bad input
def _valid_call(**overrides):
    m = make_rnn(4, 6, 2, dtype=torch.float32)
    args = dict(input=torch.randn(3, 2, 4, device=DEVICE), hx=torch.zeros(2, 2, 6, device=DEVICE),
                flat_weights=list(m._flat_weights), num_layers=2)
    args.update({k: v.to(DEVICE) if isinstance(v, torch.Tensor) and v.device.type == "cpu" else v
                 for k, v in overrides.items()})
    if isinstance(args["flat_weights"], list):
        args["flat_weights"] = [w.to(DEVICE) if w.device.type == "cpu" else w for w in args["flat_weights"]]
    return args


def _weights(**kw):
    return list(make_rnn(4, 6, 2, dtype=torch.float32, **kw)._flat_weights)


BAD_INPUTS = [
    ("rank 4", dict(input=torch.randn(3, 2, 4, 1)), "input"),
    ("rank 1", dict(input=torch.randn(4)), "input"),
    ("integer input", dict(input=torch.ones(3, 2, 4, dtype=torch.int64)), "input"),
    ("input dtype vs weights", dict(input=torch.randn(3, 2, 4, dtype=torch.float64),
                                    hx=torch.zeros(2, 2, 6, dtype=torch.float64)), "input dtype"),
    ("input size", dict(input=torch.randn(3, 2, 5)), "input"),
    ("empty batch", dict(input=torch.randn(3, 0, 4), hx=None), "input: batch size"),
    ("T = 0", dict(input=torch.randn(0, 2, 4)), "input: expected sequence length"),
    ("hx shape", dict(hx=torch.zeros(2, 3, 6)), "hx"),
    ("hx layers", dict(hx=torch.zeros(1, 2, 6)), "hx"),
    ("hx rank", dict(hx=torch.zeros(2, 6)), "hx"),
    ("hx dtype", dict(hx=torch.zeros(2, 2, 6, dtype=torch.float64)), "hx"),
    ("unbatched hx rank", dict(input=torch.randn(3, 4)), "hx"),
    ("weight count", dict(flat_weights=_weights()[:-1]), "flat_weights"),
    ("weight_hh shape", dict(flat_weights=_weights()[:5] + [torch.zeros(6, 5)] + _weights()[6:]),
     "flat_weights[5] (weight_hh_l1)"),
    ("weight device", dict(flat_weights=_weights()[:2] + [torch.zeros(6, device="meta")] + _weights()[3:]),
     "flat_weights[2] (bias_ih_l0)"),
    ("num_layers", dict(num_layers=0), "num_layers"),
    ("nonlinearity", dict(nonlinearity="sigmoid"), "nonlinearity"),
    ("dropout", dict(dropout=1.5), "dropout"),
    ("precision", dict(precision="fp8"), "precision"),
    ("fp64 tf32", dict(input=torch.randn(3, 2, 4, dtype=torch.float64), hx=None,
                       flat_weights=[w.double() for w in _weights()], precision="tf32"), "precision"),
]


@pytest.mark.parametrize("fn", [rnn, rnn_reference], ids=["rnn", "rnn_reference"])
@pytest.mark.parametrize("overrides,needle", [pytest.param(o, n, id=i) for i, o, n in BAD_INPUTS])
def test_bad_input_raises_value_error_naming_the_argument(fn, overrides, needle):
    args = _valid_call(**overrides)
    with pytest.raises(ValueError) as info:
        fn(args.pop("input"), args.pop("hx"), args.pop("flat_weights"), **args)
    assert needle in str(info.value)


# ------------------------------------------------------------------------------------------- properties
@st.composite
def rnn_setups(draw):
    return dict(T=draw(st.integers(1, 4)), B=draw(st.integers(1, 4)), I=draw(st.integers(1, 5)),
                H=draw(st.integers(1, 20)), L=draw(st.integers(1, 2)), bidirectional=draw(st.booleans()),
                batch_first=draw(st.booleans()), bias=draw(st.booleans()),
                nonlinearity=draw(st.sampled_from(["tanh", "relu"])), with_h0=draw(st.booleans()),
                unbatched=draw(st.booleans()), seed=draw(st.integers(0, 2**16)))


def _build(s, dtype=torch.float64):
    m = make_rnn(s["I"], s["H"], s["L"], dtype=dtype, nonlinearity=s["nonlinearity"], bias=s["bias"],
                 batch_first=s["batch_first"], bidirectional=s["bidirectional"], seed=s["seed"])
    D = 2 if s["bidirectional"] else 1
    g = torch.Generator().manual_seed(s["seed"])
    if s["unbatched"]:
        x = cpu_randn(s["T"], s["I"], generator=g, dtype=dtype)
        h0 = cpu_randn(s["L"] * D, s["H"], generator=g, dtype=dtype) if s["with_h0"] else None
    else:
        shape = (s["B"], s["T"], s["I"]) if s["batch_first"] else (s["T"], s["B"], s["I"])
        x = cpu_randn(*shape, generator=g, dtype=dtype)
        h0 = cpu_randn(s["L"] * D, s["B"], s["H"], generator=g, dtype=dtype) if s["with_h0"] else None
    return m, x, h0


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rnn_setups())
def test_property_random_shapes_match_reference(s):
    m, x, h0 = _build(s)
    x.requires_grad_()
    leaves = [x] + ([h0.requires_grad_()] if h0 is not None else []) + list(m._flat_weights)
    results = []
    for fn in (rnn, rnn_reference):
        out, h_n = fn(x, h0, m._flat_weights, **kwargs_of(m))
        grads = torch.autograd.grad(out.square().sum() + h_n.sum(), leaves)
        results.append((out, h_n, grads))
    (o1, h1, g1), (o2, h2, g2) = results
    assert o1.shape == o2.shape and h1.shape == h2.shape
    assert rel_err(o1, o2) <= 1e-12 and rel_err(h1, h2) <= 1e-12
    for a, b in zip(g1, g2):
        assert (a - b).norm() <= 1e-12 * max(b.norm().item(), 1.0)


@settings(max_examples=12, deadline=None)
@given(rnn_setups(), st.sampled_from(["input_size", "hx_batch", "hx_layers", "hx_hidden", "weight_hh", "rank"]),
       st.integers(1, 3))
def test_property_invalid_shapes_raise_value_error(s, corruption, delta):
    s = dict(s, with_h0=True)
    m, x, h0 = _build(s, dtype=torch.float32)
    weights = list(m._flat_weights)
    if corruption == "input_size":
        x = torch.randn(*x.shape[:-1], x.shape[-1] + delta, device=DEVICE)
    elif corruption == "hx_batch":
        if s["unbatched"]:
            h0 = h0.unsqueeze(1).expand(-1, delta + 1, -1)  # 3-D hx for 2-D input
        else:
            h0 = torch.randn(h0.shape[0], h0.shape[1] + delta, h0.shape[2], device=DEVICE)
    elif corruption == "hx_layers":
        h0 = torch.randn(h0.shape[0] + delta, *h0.shape[1:], device=DEVICE)
    elif corruption == "hx_hidden":
        h0 = torch.randn(*h0.shape[:-1], h0.shape[-1] + delta, device=DEVICE)
    elif corruption == "weight_hh":
        weights[1] = torch.randn(s["H"], s["H"] + delta, device=DEVICE)
    elif corruption == "rank":
        x = x.reshape(1, 1, *x.shape) if delta > 1 else x.reshape(-1)
    with pytest.raises(ValueError):
        rnn(x, h0, weights, **kwargs_of(m))


def _specialised(launch):
    """What Triton compiles for this launch: kernel, warps, stages, constexprs, signature, divisibility."""
    cfg = launch.compile_config("probe")
    return (cfg.fn, cfg.num_warps, cfg.num_stages, tuple(sorted((k, repr(v)) for k, v in cfg.constexprs.items())),
            tuple(sorted(cfg.signature.items())), tuple(sorted(cfg.attrs)))


def test_gpu_compile_configs_cover_the_model_launches(monkeypatch):
    """What the launchers compile on a GPU for the default model's shapes (B 64, T 20, H 512, fp32 state; a prompt
    of one sample; one generation step of B = 1 and 16) is, specialisation included, in gpu_compile_configs()."""
    listed = {(c.fn, c.num_warps, c.num_stages, tuple(sorted((k, repr(v)) for k, v in c.constexprs.items())),
               tuple(sorted(c.signature.items())), tuple(sorted(c.attrs))) for c in K.gpu_compile_configs()}
    monkeypatch.setattr(_runtime, "INTERPRETED", False)
    meta = _utils.meta_tensor
    for precision in K.PRECISIONS:
        for T, B, H in ((20, 64, 512), (35, 64, 512), (1, 64, 512), (20, 64, 64), (20, 1, 512)):
            cfg = K._pick_config(B, H, precision, torch.device('meta'))
            hs, da, w, hb = meta((T + 1, B, H), torch.float32), meta((T, B, H), torch.float32), \
                meta((H, H), torch.float32), meta((B, H), torch.float32)
            for reverse in (False, True):
                fwd = K._forward_launch(da, w, hs, hb, reverse, "tanh", precision, cfg)
                assert _specialised(fwd) in listed, (precision, T, B, H, reverse)
                if B > 1:
                    bwd = K._backward_launch(da, hb, hs, w, da, hb, reverse, "tanh", precision, cfg)
                    assert _specialised(bwd) in listed, (precision, T, B, H, reverse)
        for B in (1, 16):
            x, h, w_ih, w_hh, b = meta((B, 256), torch.float32), meta((B, 512), torch.float32), \
                meta((512, 256), torch.float32), meta((512, 512), torch.float32), meta(512, torch.float32)
            in_precision = "ieee" if precision == "tf32" else precision
            step = K._step_launch(x, h, w_ih, w_hh, b, b, meta((B, 512), torch.float32), "tanh", precision,
                                  in_precision, K._step_config(B, 256, 512, precision, torch.device('meta')))
            assert _specialised(step) in listed, (precision, B)


def test_sequence_length_and_direction_are_not_specialised():
    """T and REVERSE never change what is compiled (one kernel for every length and both directions)."""
    meta = _utils.meta_tensor
    cfg = K._gpu_config(False, "tf32")
    keys = set()
    for T in (1, 16, 20, 33):
        for reverse in (False, True):
            launch = K._forward_launch(meta((T, 64, 512), torch.float32), meta((512, 512), torch.float32),
                                       meta((T + 1, 64, 512), torch.float32), meta((64, 512), torch.float32),
                                       reverse, "tanh", "tf32", cfg)
            keys.add(_specialised(launch))
    assert len(keys) == 1




def test_interpreter_incompatibility_is_named():
    """Triton < 3.9 with NumPy >= 2.4 cannot run interpreted kernels: the first launch says so, naming both."""
    problem = _runtime.interpreter_incompatibility("3.6.0", "2.4.6")
    assert problem and "3.6.0" in problem and "2.4.6" in problem and "triton>=3.9" in problem
    assert _runtime.interpreter_incompatibility("3.5.0", "2.2.6") is None
    assert _runtime.interpreter_incompatibility("3.9.0", "2.4.6") is None
