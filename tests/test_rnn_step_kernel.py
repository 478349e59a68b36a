"""kernels.rnn.rnn_step, the single-time-step recurrence of generation: parity with rnn() and nn.RNN step by step,
one launch per layer, no host synchronisation, precisions and autocast, the GPU's tiling (run in the interpreter
too), bad input. On the kernel tests' device, with NaN-poisoned outputs (tests/conftest.py)."""
from __future__ import annotations

import pytest
import torch

import kernels  # noqa: F401  (sets up Triton's mode before triton is imported)
import kernels.rnn as K
from conftest import DEVICE, rounding_tolerance
from kernels import _runtime, _utils
from kernels.rnn import rnn, rnn_step

pytestmark = pytest.mark.usefixtures("exact_fp32")

TOL = {torch.float64: 1e-12, torch.float32: 1e-5}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300)).item()


def make(I, H, L, *, dtype=torch.float32, nonlinearity="tanh", bias=True, seed=0):
    torch.manual_seed(seed)
    return torch.nn.RNN(I, H, L, nonlinearity=nonlinearity, bias=bias).to(dtype).to(DEVICE)


def inputs(T, B, I, L, H, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, I, generator=g, dtype=dtype).to(DEVICE)
    h0 = torch.randn(L, B, H, generator=g, dtype=dtype).to(DEVICE)
    return x, h0


def stepped(m, x, h0, **kw):
    """rnn_step over every time step of x: (outputs (T, B, H), h_n)."""
    outs, h = [], h0
    with torch.no_grad():
        for t in range(x.shape[0]):
            out, h = rnn_step(x[t], h, m._flat_weights, num_layers=m.num_layers, nonlinearity=m.nonlinearity,
                              bias=m.bias, **kw)
            assert torch.equal(out, h[-1])
            outs.append(out)
    return torch.stack(outs), h


@pytest.fixture(params=["device", "gpu_tiles"])
def tiling(request, monkeypatch):
    """The device's own tiling, and the GPU's (16 hidden units per program, 64-wide K tiles), which the interpreter
    then runs too: with H = 70 five programs, the last partial, and two K tiles over H."""
    if request.param == "gpu_tiles":
        monkeypatch.setattr(K, "_step_config", lambda *args: K._gpu_step_config())
    return request.param


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("B,I,H,L,nonlinearity,bias", [
    pytest.param(1, 5, 70, 2, "tanh", True, id="B1-L2-H70"),
    pytest.param(3, 40, 33, 1, "relu", False, id="B3-relu-no_bias"),
    pytest.param(17, 8, 16, 3, "tanh", True, id="B17-L3"),
])
def test_steps_match_nn_rnn_and_rnn(tiling, dtype, B, I, H, L, nonlinearity, bias):
    T = 4
    m = make(I, H, L, dtype=dtype, nonlinearity=nonlinearity, bias=bias)
    x, h0 = inputs(T, B, I, L, H, dtype)
    out, h_n = stepped(m, x, h0, precision="ieee")
    with torch.no_grad():
        ref, ref_h = m(x, h0)
        seq, seq_h = rnn(x, h0, m._flat_weights, num_layers=L, nonlinearity=nonlinearity, bias=bias,
                         precision="ieee")
    assert out.dtype == ref.dtype and h_n.shape == ref_h.shape
    for a, b in ((out, ref), (h_n, ref_h), (out, seq), (h_n, seq_h)):
        assert rel_err(a, b) <= TOL[dtype]


def test_zero_initial_state_and_poisoned_outputs():
    """hx=None means zeros; every element of every layer's new state is written (outputs start as NaN)."""
    m = make(6, 20, 2)
    x, _ = inputs(1, 3, 6, 2, 20, torch.float32)
    with torch.no_grad():
        out, h_n = rnn_step(x[0], None, m._flat_weights, num_layers=2)
        ref, ref_h = m(x)
    assert torch.isfinite(h_n).all()
    assert rel_err(out, ref[0]) <= TOL[torch.float32] and rel_err(h_n, ref_h) <= TOL[torch.float32]


def test_one_launch_per_layer_and_no_host_sync(monkeypatch, host_syncs):
    launches = []
    real_call = _utils.Launch.__call__
    monkeypatch.setattr(_utils.Launch, "__call__", lambda self: (launches.append(self.fn), real_call(self))[1])
    m = make(8, 24, 3)
    x, h0 = inputs(1, 2, 8, 3, 24, torch.float32)
    with torch.inference_mode(), host_syncs() as syncs:
        rnn_step(x[0], h0, m._flat_weights, num_layers=3)
    assert syncs.count == 0, syncs.calls
    assert len(launches) == 3 and {getattr(fn, "__name__", "") for fn in launches} == {"_rnn_step_kernel"}


@pytest.mark.parametrize("precision", ["tf32", "bf16", "fp16"])
def test_reduced_precisions(precision):
    """Within the recurrence tests' derived tolerance (2u(2T + 1) for T steps) of the exact steps."""
    T = 4
    m = make(6, 40, 2)
    x, h0 = inputs(T, 3, 6, 2, 40, torch.float32)
    out, h_n = stepped(m, x, h0, precision=precision)
    exact, exact_h = stepped(m, x, h0, precision="ieee")
    assert rel_err(out, exact) <= rounding_tolerance(precision, T)
    if precision != "tf32" or not _runtime.INTERPRETED:
        assert rel_err(out, exact) > 1e-7  # really rounded (the interpreter computes tf32 exactly)


@pytest.mark.parametrize("autocast_dtype,precision", [(torch.bfloat16, "bf16"), (torch.float16, "fp16")])
def test_autocast_returns_the_autocast_dtype(autocast_dtype, precision):
    m = make(6, 20, 2)
    x, h0 = inputs(1, 3, 6, 2, 20, torch.float32)
    with torch.no_grad(), torch.autocast(DEVICE.type, dtype=autocast_dtype):
        out, h_n = rnn_step(x[0], h0, m._flat_weights, num_layers=2)
        ref, ref_h = m(x, h0)
    # on a GPU nn.RNN runs in fp16 under either dtype (ATen's cuDNN autocast wrapper casts to half); rnn_step keeps
    # the dtype asked for, and the comparison then allows both roundings
    cudnn_half = DEVICE.type == "cuda" and torch.backends.cudnn.is_available()
    assert out.dtype == h_n.dtype == autocast_dtype
    assert ref.dtype == ref_h.dtype == (torch.float16 if cudnn_half else autocast_dtype)
    ref_bound = rounding_tolerance("fp16", 1) if ref.dtype != autocast_dtype else 0
    assert rel_err(out, ref[0]) <= rounding_tolerance(precision, 1) + ref_bound


def _call(**overrides):
    m = make(4, 6, 2)
    args = dict(input=torch.randn(2, 4, device=DEVICE), hx=torch.zeros(2, 2, 6, device=DEVICE),
                flat_weights=list(m._flat_weights), num_layers=2)
    args.update(overrides)
    with torch.no_grad():
        return rnn_step(args.pop("input"), args.pop("hx"), args.pop("flat_weights"), **args)


@pytest.mark.parametrize("overrides,needle", [
    (dict(input=torch.randn(3, 2, 4)), "input: expected a 2-D"),
    (dict(input=torch.randn(2, 5)), "input.size(-1) must be equal to input_size"),
    (dict(hx=torch.zeros(2, 3, 6)), "hx"),
    (dict(hx=[0.0]), "hx must be a torch.Tensor"),
    (dict(num_layers=3), "flat_weights"),
    (dict(precision="fp8"), "precision"),
    (dict(nonlinearity="gelu"), "nonlinearity"),
], ids=["rank", "input_size", "hx_shape", "hx_type", "layers", "precision", "nonlinearity"])
def test_bad_input_raises_value_error(overrides, needle):
    overrides = {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in overrides.items()}
    with pytest.raises(ValueError) as info:
        _call(**overrides)
    assert needle in str(info.value)


def test_refuses_to_run_where_gradients_are_wanted():
    m = make(4, 6, 1)
    with pytest.raises(ValueError, match="not differentiable"):
        rnn_step(torch.randn(2, 4, device=DEVICE), None, m._flat_weights, num_layers=1)  # weights require grad


def test_cpu_tensors_are_rejected_outside_the_interpreter(monkeypatch):
    monkeypatch.setattr(_runtime, "INTERPRETED", False)
    m = make(4, 6, 1).cpu()
    with torch.no_grad(), pytest.raises(ValueError, match="input must be a CUDA tensor"):
        rnn_step(torch.randn(2, 4), None, m._flat_weights, num_layers=1)
