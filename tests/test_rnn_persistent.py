"""kernels._rnn_persistent: parity with nn.RNN through the per-step form (several N-slices and batch tiles),
the persistent form bit for bit against the per-step form, bf16 against the emulated reference, the choice
between persistent and tiled, the timeout fallback, and the GPU code the compiler makes of it.

Without a GPU the kernels run in Triton's interpreter, which runs programs one after another: there the
persistent form is run with one N-slice per batch tile (the barrier never waits), and the per-step form with
many. The parity tests route kernels.rnn's autograd Function through the persistent launchers (whose contract
is that of kernels.rnn's own launchers), so that every gradient of nn.RNN's interface is checked.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch

import kernels  # noqa: F401  (sets up Triton's mode before triton is imported)
import kernels._rnn_persistent as P
import kernels.rnn as K
from kernels.rnn import rnn, rnn_reference

from test_rnn_kernel import TOL, check_parity, kwargs_of, make_rnn, rel_err

REPO = Path(__file__).resolve().parent.parent
ON_GPU = torch.cuda.is_available()
# These tests run CPU tensors through Triton's interpreter, with tiles smaller than a GPU's tl.dot allows; on a
# GPU the tests at the end cover the same ground at the GPU's tiles. (Phase 2: issue 10's device fixture.)
interpreted = pytest.mark.skipif(not kernels.INTERPRETED, reason="interpreter tiles on CPU tensors")
# Several N-slices and batch tiles in the interpreter: H = 130 gives slices of 64, 64 and 2 units, and B = 3
# two batch tiles, the second one partial.
MULTI = P.PersistentConfig(block_b=2, block_n=64, block_k=256)
# One N-slice per batch tile: the persistent form runs in the interpreter without ever waiting.
SINGLE = P.PersistentConfig(block_b=2, block_n=256, block_k=256)


@pytest.fixture(autouse=True)
def _poison_and_fresh_flags(monkeypatch):
    """Every buffer a launcher allocates comes out full of NaN (kernels.rnn's _alloc), and each test starts
    with no timeout recorded."""
    monkeypatch.setattr(K, "_POISON_OUTPUTS", True)
    monkeypatch.setattr(P, "_timed_out", False)
    monkeypatch.setattr(P, "_warned", False)
    monkeypatch.setattr(P, "_pending_flags", [])


@pytest.fixture
def route(monkeypatch):
    """route(config, form, **kw) sends kernels.rnn's recurrence launches to the persistent launchers; returns
    the list of (direction, B, H) launched, so a test can check that they really ran."""
    calls = []

    def install(config=None, form="persistent", **kw):
        def fwd(xp, h0, w_hh, reverse, nonlinearity, precision):
            calls.append(("fwd",) + tuple(xp.shape[1:]))
            return P.persistent_forward(xp, h0, w_hh, reverse, nonlinearity, precision, config=config, form=form,
                                        **kw)

        def bwd(dy, dhT, hs, w_hh, reverse, nonlinearity, precision):
            calls.append(("bwd",) + tuple(hs.shape[1:]))
            return P.persistent_backward(dy, dhT, hs, w_hh, reverse, nonlinearity, precision, config=config,
                                         form=form, **kw)

        monkeypatch.setattr(K, "_recurrence_forward", fwd)
        monkeypatch.setattr(K, "_recurrence_backward", bwd)
        return calls

    return install


def _inputs(T, B, I, H, L, D, dtype, with_h0=True, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, I, generator=g, dtype=dtype).requires_grad_()
    h0 = torch.randn(L * D, B, H, generator=g, dtype=dtype).requires_grad_() if with_h0 else None
    return x, h0


# ------------------------------------------------------------------------------------------------ parity
# (T, B, I, H, L, bidirectional, bias, nonlinearity, h0)
PARITY_CASES = [
    pytest.param(37, 3, 5, 130, 1, False, True, "tanh", True, id="T37-tanh"),
    pytest.param(37, 3, 4, 130, 1, False, False, "relu", False, id="T37-relu-no_bias-no_h0"),
    pytest.param(1, 3, 6, 130, 2, True, True, "tanh", True, id="T1-L2-bidir"),
    pytest.param(1, 3, 6, 130, 2, False, True, "relu", True, id="T1-L2-relu"),
]


@interpreted
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("T,B,I,H,L,bidir,bias,nonlin,with_h0", PARITY_CASES)
def test_per_step_form_matches_nn_rnn(route, dtype, T, B, I, H, L, bidir, bias, nonlin, with_h0):
    """Outputs, h_n and the gradients of input, h0 and every weight, through 3 N-slices x 2 batch tiles."""
    calls = route(MULTI, "per_step")
    m = make_rnn(I, H, L, dtype=dtype, nonlinearity=nonlin, bias=bias, bidirectional=bidir)
    x, h0 = _inputs(T, B, I, H, L, 2 if bidir else 1, dtype, with_h0)
    check_parity(m, x, h0, tol=TOL[dtype], precision="ieee")
    D = 2 if bidir else 1
    assert calls.count(("fwd", B, H)) == L * D and calls.count(("bwd", B, H)) == L * D


@interpreted
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_persistent_form_matches_nn_rnn(route, dtype):
    """The persistent form (the interpreter's default tiles: one slice, one batch tile) through nn.RNN's
    interface, with the barrier code on every step."""
    calls = route(None, "persistent")
    m = make_rnn(4, 130, 2, dtype=dtype, nonlinearity="tanh", bidirectional=True)
    x, h0 = _inputs(9, 3, 4, 130, 2, 2, dtype)
    check_parity(m, x, h0, tol=TOL[dtype], precision="ieee")
    assert calls and not P.persistent_timed_out()


@interpreted
@pytest.mark.parametrize("which", [("output",), ("h_n",)], ids=["only_output", "only_h_n"])
def test_parity_when_one_output_is_unused(route, which):
    """Backward with dy or dh_n absent (HAS_DY / HAS_DHT = False)."""
    route(MULTI, "per_step")
    m = make_rnn(4, 130, 1, dtype=torch.float64, bidirectional=True)
    x, h0 = _inputs(4, 3, 4, 130, 1, 2, torch.float64)
    check_parity(m, x, h0, tol=TOL[torch.float64], which=which)


# ------------------------------------------------------------------------------------------ bit-exactness
def _layer(T, B, H, dtype, seed=0):
    """Random inputs of one layer's recurrence: xp, h0, W_hh (at nn.RNN's scale), dy, dh_T."""
    g = torch.Generator().manual_seed(seed)
    k = H ** -0.5
    xp = torch.randn(T, B, H, generator=g, dtype=dtype)
    w = (torch.rand(H, H, generator=g, dtype=dtype) * 2 - 1) * k
    return (xp, torch.randn(B, H, generator=g, dtype=dtype), w, torch.randn(T, B, H, generator=g, dtype=dtype),
            torch.randn(B, H, generator=g, dtype=dtype))


def _run_layer(xp, h0, w, dy, dhT, reverse, nonlin, precision, **kw):
    y, hT, hs = P.persistent_forward(xp, h0, w, reverse, nonlin, precision, **kw)
    da, dh0 = P.persistent_backward(dy, dhT, hs, w, reverse, nonlin, precision, **kw)
    return {"y": y, "h_T": hT, "hs": hs, "dA": da, "dh_0": dh0}


def _torch_layer(xp, h0, w, dy, dhT, nonlin):
    """The same layer as a plain torch loop, differentiated by autograd: y, h_T, dA and dh_0."""
    phi = torch.tanh if nonlin == "tanh" else torch.relu
    xp, h = xp.clone().requires_grad_(), h0.clone().requires_grad_()
    hs = [h]
    for t in range(xp.shape[0]):
        hs.append(phi(xp[t] + hs[-1] @ w.t()))
    y = torch.stack(hs[1:])
    da, dh0 = torch.autograd.grad((y * dy).sum() + (hs[-1] * dhT).sum(), [xp, h])
    return {"y": y.detach(), "h_T": hs[-1].detach(), "dA": da, "dh_0": dh0}


def _assert_bit_identical(a: dict, b: dict):
    for name in a:
        assert torch.isfinite(a[name]).all(), name
        assert torch.equal(a[name], b[name]), f"{name}: max difference {(a[name] - b[name]).abs().max().item()}"


CASES_BITS = [(torch.float64, "ieee"), (torch.float32, "ieee"), (torch.float32, "tf32"), (torch.float32, "bf16")]


@interpreted
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("nonlin", ["tanh", "relu"])
@pytest.mark.parametrize("dtype,precision", CASES_BITS, ids=["fp64", "fp32", "tf32", "bf16"])
def test_persistent_single_slice_is_bit_identical_to_per_step(dtype, precision, nonlin, reverse):
    xp, h0, w, dy, dhT = _layer(6, 3, 130, dtype)
    persistent = _run_layer(xp, h0, w, dy, dhT, reverse, nonlin, precision, config=SINGLE, form="persistent")
    per_step = _run_layer(xp, h0, w, dy, dhT, reverse, nonlin, precision, config=SINGLE, form="per_step")
    _assert_bit_identical(persistent, per_step)
    assert not P.persistent_timed_out()


# -------------------------------------------------------------------------------------------------- bf16
@interpreted
def test_bf16_matches_emulated_reference_and_the_tiled_kernels(route):
    """bf16 through 3 N-slices x 2 batch tiles with the bf16 shadow ring: against rnn_reference's rounding
    (outputs) and against kernels.rnn's own kernels, which round the same operands (everything)."""
    m = make_rnn(6, 130, 1, dtype=torch.float32, bidirectional=True)
    x, h0 = _inputs(5, 3, 6, 130, 1, 2, torch.float32)
    leaves = [x, h0, *m._flat_weights]
    kw = kwargs_of(m, precision="bf16")

    def run():
        out, h_n = rnn(x, h0, m._flat_weights, **kw)
        g = torch.Generator().manual_seed(5)
        loss = (out * torch.randn(out.shape, generator=g)).sum() + (h_n * torch.randn(h_n.shape, generator=g)).sum()
        return [out, h_n, *torch.autograd.grad(loss, leaves)]

    tiled = run()  # kernels.rnn's resident kernel
    calls = route(MULTI, "per_step")
    ours = run()
    assert calls
    ref, ref_h = rnn_reference(x, h0, m._flat_weights, **kw)
    exact, _ = rnn_reference(x, h0, m._flat_weights, **kwargs_of(m, precision="ieee"))
    assert rel_err(ours[0], ref) <= 1e-5 and rel_err(ours[1], ref_h) <= 1e-5  # same roundings, fp32 sums
    assert 1e-5 < rel_err(ours[0], exact) < 3e-2  # bf16 operands really are in use
    errs = [rel_err(a, b) for a, b in zip(ours, tiled)]
    assert max(errs) <= 1e-5, errs


# ---------------------------------------------------------------------------------------------- selection
H100, A100 = dict(sm_count=132, cc=90), dict(sm_count=108, cc=80)
# the compile report's figures for the default model's forward, tf32, sm_90: 2 programs an SM
COMPILED = P.KernelResources(registers=100, shared_bytes=67584, num_warps=8)


def test_programs_per_sm_arithmetic():
    # 100 registers -> 3328 a warp (units of 256) -> 65536 // (3328 x 8) = 2; shared 228 KB // 67 KB = 3
    assert P.programs_per_sm(COMPILED, 90) == 2
    # registers 64 x 32 = 2048 a warp -> 65536 // 8192 = 8; threads 2048 // 128 = 16; shared 233472 // 11024 = 21
    assert P.programs_per_sm(P.KernelResources(64, 10_000, 4), 90) == 8
    assert P.programs_per_sm(P.KernelResources(40, 1024, 1), 90) == 32  # the 32-blocks limit
    assert P.programs_per_sm(P.KernelResources(64, 200 * 1024, 4), 80) == 0  # over sm_80's 163 KB per block
    assert P.programs_per_sm(P.KernelResources(64, 200 * 1024, 4), 90) == 1


def test_default_shape_is_persistent_on_h100_and_a100():
    choice = P.choose_path(batch=64, hidden=512, precision="tf32", resources=COMPILED, **H100)
    assert choice.path == "persistent" and choice.programs == 128 and choice.capacity == 264
    assert choice.config == P.PersistentConfig(16, 16, 512, 8)
    assert "128 programs (32 N-slices x 4 batch tiles) on 132 SMs x 2 per SM" in choice.reason
    assert str(choice).startswith("recurrence: persistent (")
    # bf16 forward on sm_80 at H = 512: triton 3.9 gives 128 registers (2 programs an SM: 216 >= 128), triton
    # 3.6 169 (1 an SM: 108 < 128), so on an A100 the choice follows the compiled kernel
    bf16 = dict(batch=64, hidden=512, precision="bf16", **A100)
    assert P.choose_path(resources=P.KernelResources(128, 17 * 1024, 8), **bf16).path == "persistent"
    assert P.choose_path(resources=P.KernelResources(169, 17 * 1024, 8), **bf16).path == "tiled"


def test_estimate_is_conservative():
    """Without the compiled kernel's figures every register is assumed taken: one 8-warp program an SM, so
    an A100 (108 SMs) cannot hold the default model's 128 programs, an H100 (132) can."""
    res = P.estimate_resources(P.gpu_config(512, "tf32"), "tf32")
    assert res.registers == 255 and res.shared_bytes == 16 * 512 * 4 + 512 * 16 * 4 + 1024
    a100 = P.choose_path(batch=64, hidden=512, precision="tf32", **A100)
    assert a100.path == "tiled" and "cannot be resident" in a100.reason and "estimated" in a100.reason
    assert P.choose_path(batch=64, hidden=512, precision="tf32", **H100).path == "persistent"


@pytest.mark.parametrize("kwargs,needle", [
    (dict(batch=64, hidden=128, precision="tf32"), "H = 128 <= 128"),
    (dict(batch=64, hidden=64, precision="ieee"), "H = 64 <= 128"),
    (dict(batch=64, hidden=2000, precision="tf32"), "pads to 2048 > 1024"),
    (dict(batch=1, hidden=1500, precision="bf16"), "pads to 2048 > 1024"),
    (dict(batch=64, hidden=512, precision="ieee", dtype=torch.float64), "float64"),
    (dict(batch=256, hidden=512, precision="tf32"), "512 programs (32 N-slices x 16 batch tiles)"),
    (dict(batch=64, hidden=1024, precision="tf32"), "256 programs"),
], ids=["H128", "H64", "H2000", "bf16-H1500", "fp64", "B256", "H1024-B64"])
def test_tiled_when_persistent_does_not_apply(kwargs, needle):
    resources = P.KernelResources(registers=200, shared_bytes=133 * 1024, num_warps=8) \
        if kwargs["hidden"] == 1024 else COMPILED
    choice = P.choose_path(resources=resources, **H100, **kwargs)
    assert choice.path == "tiled" and needle in choice.reason, choice.reason


def test_large_hidden_is_persistent_for_small_batches():
    """Generation (B = 1) at H = 1024: 64 programs of 133 KB shared memory, one an SM."""
    resources = P.KernelResources(registers=200, shared_bytes=133 * 1024, num_warps=8)
    choice = P.choose_path(batch=1, hidden=1024, precision="ieee", resources=resources, **H100)
    assert choice.path == "persistent" and choice.programs == 64 and choice.capacity == 132


def test_tiled_after_a_timeout():
    choice = P.choose_path(batch=64, hidden=512, precision="tf32", resources=COMPILED, timed_out=True, **H100)
    assert choice.path == "tiled" and "timed out" in choice.reason


def test_resources_from_a_compiled_kernel():
    class Compiled:  # triton's CompiledKernel loads its binary (and learns n_regs) in _init_handles()
        n_regs = None
        metadata = types.SimpleNamespace(shared=67584, num_warps=8)

        def _init_handles(self):
            self.n_regs = 100

    assert P.KernelResources.from_compiled(Compiled()) == COMPILED


def test_compile_configs_cover_every_persistent_choice():
    """Every configuration choose_path() can pick on a GPU is in gpu_compile_configs(), for both directions
    and nonlinearities."""
    pytest.importorskip("kernels.compile_report")
    listed = {(getattr(c.fn, "__name__", None) or c.fn.fn.__name__, c.num_warps,
               tuple(sorted((k, v) for k, v in c.constexprs.items() if k != "EMULATE_BF16"))): c
              for c in P.gpu_compile_configs()}
    assert len(listed) == len(P.gpu_compile_configs())
    picked = 0
    for precision in K.PRECISIONS:
        for hidden in (100, 129, 200, 256, 300, 512, 513, 700, 1024, 1025):
            for batch in (1, 3, 64):
                choice = P.choose_path(batch=batch, hidden=hidden, precision=precision, resources=COMPILED, **H100)
                if choice.path != "persistent":
                    continue
                picked += 1
                cfg = choice.config
                for name, extra in (("_rnn_persistent_fwd_kernel", {}),
                                    ("_rnn_persistent_bwd_kernel", {"HAS_DY": True, "HAS_DHT": True})):
                    for nonlin in (0, 1):
                        constexprs = dict(NONLINEARITY=nonlin, PRECISION=precision, PERSISTENT=True,
                                          BLOCK_B=cfg.block_b, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, **extra)
                        assert (name, cfg.num_warps, tuple(sorted(constexprs.items()))) in listed, (precision, hidden)
    assert picked > 10


# ------------------------------------------------------------------------------------------------ fallback
@interpreted
def test_error_flag_set_reruns_bit_identically_and_warns_once():
    """A flag already set (a simulated timeout): the persistent launch does nothing, the launcher reruns the
    per-step form, and the host warns once and chooses tiled from then on."""
    xp, h0, w, dy, dhT = _layer(5, 3, 130, torch.float32)
    clean = _run_layer(xp, h0, w, dy, dhT, False, "tanh", "tf32", config=SINGLE)
    assert not P.persistent_timed_out()
    with pytest.warns(RuntimeWarning, match="timed out or was refused"):
        flagged = _run_layer(xp, h0, w, dy, dhT, False, "tanh", "tf32", config=SINGLE,
                             error_flag=torch.ones(1, dtype=torch.int32))
    _assert_bit_identical(flagged, clean)
    assert P.persistent_timed_out()
    choice = P.choose_path(batch=3, hidden=130, precision="tf32", timed_out=P.persistent_timed_out(), **H100)
    assert choice.path == "tiled"
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: no second warning
        _run_layer(xp, h0, w, dy, dhT, False, "tanh", "tf32", config=SINGLE,
                   error_flag=torch.ones(1, dtype=torch.int32))


@interpreted
@pytest.mark.parametrize("nonlin,precision", [("tanh", "ieee"), ("relu", "bf16")])
def test_a_barrier_that_cannot_complete_times_out_and_reruns(nonlin, precision):
    """A real bounded wait: in the interpreter the persistent form with 3 N-slices cannot complete its first
    barrier (the other programs only run after the first one returns). The first program gives up after its
    polls (cut to 16 there) and sets the flag, the others see it and stop, and the per-step rerun writes every
    output."""
    xp, h0, w, dy, dhT = _layer(3, 3, 130, torch.float32, seed=3)
    expected = _run_layer(xp, h0, w, dy, dhT, True, nonlin, precision, config=MULTI, form="per_step")
    with pytest.warns(RuntimeWarning, match="timed out"):
        got = _run_layer(xp, h0, w, dy, dhT, True, nonlin, precision, config=MULTI, form="persistent")
    _assert_bit_identical(got, expected)
    assert P.persistent_timed_out()


class _FakeKernel:
    """Stands for a @triton.jit kernel: records each launch's grid and flag value, and raises `refusal` from
    a persistent launch."""

    def __init__(self, refusal=None):
        self.refusal, self.launches = refusal, []

    def __getitem__(self, grid):
        def launch(**kw):
            self.launches.append((grid, kw["PERSISTENT"], int(kw["err_ptr"][0])))
            if kw["PERSISTENT"] and self.refusal:
                raise RuntimeError(self.refusal)
        return launch


def test_a_refused_cooperative_launch_falls_back():
    """The driver refuses a cooperative grid that cannot be resident (an error at launch): the flag is set on
    the host and the caller is told to rerun; any other launch error propagates."""
    kernel = _FakeKernel("Triton Error [CUDA]: too many blocks in cooperative launch")
    run = dict(grid=(32, 4), steps=5, form="persistent", max_spins=10, error_flag=None, outputs=(),
               device=torch.device("cpu"))
    with pytest.warns(RuntimeWarning, match="refused"):
        assert P._launch(kernel, {}, fallback=None, **run) is True
    assert kernel.launches == [((32, 4), True, 0)] and P.persistent_timed_out()
    with pytest.raises(RuntimeError, match="illegal address"):
        P._launch(_FakeKernel("an illegal address was encountered"), {}, fallback=None, **run)


@interpreted
def test_a_fallback_hook_gets_the_flag_right_after_the_launch():
    """With a fallback hook (kernels.rnn's device-guarded tiled rerun, in phase 2) the launcher hands it the
    flag and reads nothing itself; a preset flag means the persistent kernel wrote nothing (the outputs stay
    poisoned) and the host still warns once."""
    xp, h0, w, dy, dhT = _layer(3, 3, 40, torch.float32)
    handed = []

    def hook(flag, *outputs):
        handed.append((int(flag[0]), outputs))

    y, hT, hs = P.persistent_forward(xp, h0, w, False, "tanh", "ieee", fallback=hook)
    assert handed == [(0, (hs, hT))] and torch.isfinite(y).all() and not P.persistent_timed_out()
    da, dh0 = P.persistent_backward(dy, dhT, hs, w, False, "tanh", "ieee", fallback=hook)
    assert handed[1][0] == 0 and handed[1][1][0] is da and handed[1][1][1] is dh0
    with pytest.warns(RuntimeWarning, match="timed out"):
        y, hT, hs = P.persistent_forward(xp, h0, w, False, "tanh", "ieee", fallback=hook,
                                         error_flag=torch.ones(1, dtype=torch.int32))
    assert handed[2][0] == 1 and handed[2][1][0] is hs
    assert torch.isnan(y).all() and torch.isnan(hT).all()  # left to the hook's rerun
    kernel = _FakeKernel("too many blocks in cooperative launch")
    P._launch(kernel, {}, grid=(32, 4), steps=5, form="persistent", max_spins=10, error_flag=None, fallback=hook,
              outputs=("out",), device=torch.device("cpu"))
    assert handed[3] == (1, ("out",))  # a refused launch is handed over flagged


# ---------------------------------------------------------------------------------------------- bad input
@interpreted
def test_bad_arguments_raise_value_error_naming_them():
    xp, h0, w, dy, dhT = _layer(2, 3, 20, torch.float32)
    with pytest.raises(ValueError, match="form"):
        P.persistent_forward(xp, h0, w, False, "tanh", "ieee", form="fused")
    with pytest.raises(ValueError, match="precision"):
        P.persistent_forward(xp, h0, w, False, "tanh", "fp8")
    with pytest.raises(ValueError, match="block_k = 16 must cover H = 20"):
        P.persistent_forward(xp, h0, w, False, "tanh", "ieee", config=P.PersistentConfig(2, 16, 16))
    with pytest.raises(ValueError, match="xp"):
        P.persistent_forward(xp[0], h0, w, False, "tanh", "ieee")
    with pytest.raises(ValueError, match="w_hh"):
        P.persistent_forward(xp, h0, w[:, :10], False, "tanh", "ieee")
    with pytest.raises(ValueError, match="h0"):
        P.persistent_forward(xp, h0.double(), w, False, "tanh", "ieee")
    _, _, hs = P.persistent_forward(xp, h0, w, False, "tanh", "ieee")
    with pytest.raises(ValueError, match="dy"):
        P.persistent_backward(dy[:1], dhT, hs, w, False, "tanh", "ieee")
    with pytest.raises(ValueError, match="dhT"):
        P.persistent_backward(dy, dhT[:1], hs, w, False, "tanh", "ieee")


# --------------------------------------------------------------------------------------- compiled GPU code
_COMPILE_SCRIPT = textwrap.dedent('''
    import json, re, sys
    import triton
    from triton.backends.compiler import GPUTarget
    from kernels import compile_report as cr
    import kernels._rnn_persistent as P
    wanted = set(sys.argv[1].split(","))
    out = []
    for cfg in P.gpu_compile_configs():
        if cfg.name not in wanted:
            continue
        for arch in (80, 90):
            sig = cr._full_signature(cfg)
            attrs = {(cfg.fn.arg_names.index(k),): [["tt.divisibility", 16]]
                     for k, v in sig.items() if v.startswith("*")}
            results = {}
            for coop in (True, False):
                src = triton.compiler.ASTSource(cfg.fn, sig, dict(cfg.constexprs), attrs)
                options = dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
                if coop:
                    options.update(P.LAUNCH_OPTIONS)
                results[coop] = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
            ck = results[True]
            ptx = ck.asm["ptx"]
            strip = lambda p: re.sub(r"^\\s*//.*$", "", p, flags=re.M)
            out.append({"config": cfg.name, "arch": arch, "cooperative": bool(ck.metadata.launch_cooperative_grid),
                        "same_code": strip(ptx) == strip(results[False].asm["ptx"]),
                        "instructions": sorted(set(re.findall(
                            r"\\b(?:atom|ld|red)\\.[\\w.]*(?:acquire|release|acq_rel)[\\w.]*", ptx))),
                        "bar_sync": len(re.findall(r"\\bbar\\.sync\\b", ptx))})
    print(json.dumps(out))
''')


def _compile_only(names: list[str]) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(RNNLM_KERNELS_COMPILE_ONLY="1", PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT, ",".join(names)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_barrier_instructions_and_cooperative_launch_in_the_ptx():
    """Built for sm_80 and sm_90 with launch_cooperative_grid: the arrive is an acq_rel atomic at GPU scope,
    the wait an acquire at GPU scope (ld.acquire.gpu from triton 3.9, atom.acquire.gpu before), the program is
    ordered around them with bar.sync, and the cooperative flag changes the launch, not the code (so the
    compile report's figures, built without it, are the launched kernel's)."""
    names = ["rnn_persistent_fwd_fp32_tanh_tf32_16x16x512", "rnn_persistent_bwd_fp32_relu_bf16_16x16x512"]
    rows = _compile_only(names)
    assert sorted((r["config"], r["arch"]) for r in rows) == sorted((n, a) for n in names for a in (80, 90))
    for r in rows:
        assert r["cooperative"] and r["same_code"], r
        instrs = r["instructions"]
        assert any(i.startswith("atom.global.gpu.acq_rel.add") for i in instrs), instrs
        assert any(i.startswith(("ld.global.gpu.acquire", "atom.global.gpu.acquire")) for i in instrs), instrs
        assert r["bar_sync"] >= 4, r


@pytest.fixture(scope="module")
def persistent_report():
    from kernels import compile_report as cr
    return cr.compile_report(cr.ARCHS, ("kernels._rnn_persistent",))


@pytest.mark.slow
def test_every_persistent_configuration_compiles_cleanly(persistent_report):
    """Every configuration the launcher can choose: sm_80 and sm_90, no spills, no local memory, shared memory
    within the limit, mma for tf32/bf16."""
    status = persistent_report["modules"]["kernels._rnn_persistent"]
    assert status.startswith("ok") and "duplicate" not in status, status
    rows = persistent_report["rows"]
    assert len(rows) == 2 * len(P.gpu_compile_configs())
    bad = [f"{r['config']} {r['arch']}: {'; '.join(r['problems'])}" for r in rows if not r["ok"]]
    assert not bad, "\n".join(bad)
    for r in rows:
        assert r["compiled"] and r["local_bytes"] == 0 and r["stack_bytes"] == 0
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0
        assert r["shared_bytes"] <= r["shared_limit"]
        if r["expect_tensor_cores"]:
            assert any(i.startswith("mma.sync") for i in r["tensor_core_instructions"]), r["config"]
        # the figures choose_path() is given on a GPU: the compiled kernel is resident at least once an SM
        res = P.KernelResources(r["registers"], r["shared_bytes"], r["num_warps"])
        assert P.programs_per_sm(res, r["cc"]) >= 1, r["config"]


# ----------------------------------------------------------------------------------------------------- GPU
# Five shapes x three precisions, bit for bit between the persistent and per-step forms at the GPU's tiles;
# every grid has at most 132 programs, resident on an H100/H200 even at one program an SM (bf16 at H >= 512).
GPU_SHAPES = [(20, 64, 512), (37, 3, 130), (1, 1, 256), (24, 32, 1024), (16, 96, 300)]


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA device (the interpreter cannot run a multi-slice barrier)")
@pytest.mark.parametrize("precision", K.PRECISIONS)
@pytest.mark.parametrize("T,B,H", GPU_SHAPES, ids=[f"T{t}-B{b}-H{h}" for t, b, h in GPU_SHAPES])
def test_gpu_persistent_is_bit_identical_to_per_step(T, B, H, precision):
    cfg = P.gpu_config(H, precision)
    xp, h0, w, dy, dhT = (t.cuda() for t in _layer(T, B, H, torch.float32))
    persistent = _run_layer(xp, h0, w, dy, dhT, False, "tanh", precision, config=cfg, form="persistent")
    per_step = _run_layer(xp, h0, w, dy, dhT, False, "tanh", precision, config=cfg, form="per_step")
    torch.cuda.synchronize()
    _assert_bit_identical(persistent, per_step)
    assert not P.persistent_timed_out()
    if precision == "ieee":  # tf32/bf16 tolerances on a GPU are issue 10's (derived from unit roundoff and T)
        ref = _torch_layer(*(t.double() for t in (xp, h0, w, dy, dhT)), "tanh")
        for name in ref:
            assert rel_err(persistent[name], ref[name]) <= 1e-5, name


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA device")
def test_gpu_stress_beside_a_busy_gemm_stream():
    """200 persistent launches (forward and backward) while another stream keeps the SMs busy with GEMMs:
    no timeout, and every launch gives the first one's bits."""
    xp, h0, w, dy, dhT = (t.cuda() for t in _layer(20, 64, 512, torch.float32))
    cfg = P.gpu_config(512, "tf32")
    first = _run_layer(xp, h0, w, dy, dhT, False, "tanh", "tf32", config=cfg)
    side = torch.cuda.Stream()
    a = torch.randn(4096, 4096, device="cuda")
    side.wait_stream(torch.cuda.current_stream())
    mismatches = 0
    with torch.cuda.stream(side):
        for _ in range(40):
            a = torch.tanh(a @ a * 1e-3)
    for _ in range(100):
        again = _run_layer(xp, h0, w, dy, dhT, False, "tanh", "tf32", config=cfg)
        mismatches += sum(not torch.equal(again[k], first[k]) for k in first)
    torch.cuda.synchronize()
    assert mismatches == 0 and not P.persistent_timed_out()
