"""kernels._rnn_persistent, the recurrence with W_hh split over N-slices held on chip, as kernels.rnn runs it: parity
with nn.RNN with several N-slices and batch tiles, the persistent form bit for bit against the per-step form,
bf16/fp16 against the emulated reference, the launcher's choice between persistent and tiled (and its cache and log
line), the fallback to the tiled kernel when the error flag is set, and the compiled configurations.

Every test runs on the kernel tests' device (tests/conftest.py: CUDA when there is a GPU, else the CPU through
Triton's interpreter), with NaN-poisoned outputs. The interpreter runs programs one after another, so there the
multi-slice tests use the per-step form (the kernel boundary is the barrier) and the persistent form runs with one
N-slice per batch tile (the barrier never waits); on a GPU the same tests run the persistent form at the GPU's own
tiles. Tests that only make sense in one place say so in their skip reason.
"""
from __future__ import annotations

import logging
import types
import warnings
from dataclasses import replace

import pytest
import torch

import kernels  # noqa: F401  (sets up Triton's mode before triton is imported)
import kernels._rnn_persistent as P
import kernels.rnn as K
from conftest import DEVICE, rounding_tolerance
from kernels import _utils
from kernels.rnn import LaunchConfig, PersistentConfig, rnn, rnn_reference

from test_rnn_kernel import TOL, check_parity, cpu_randn, kwargs_of, make_rnn, rel_err

pytestmark = pytest.mark.usefixtures("exact_fp32")

ON_GPU = DEVICE.type == "cuda"
interpreter_only = pytest.mark.skipif(ON_GPU, reason="the interpreter's forms (one N-slice holding all of H, or a "
                                                     "barrier that cannot complete because programs run in turn)")
gpu_only = pytest.mark.skipif(not ON_GPU, reason="needs a CUDA device (programs that run at once)")

# Several N-slices and batch tiles. Interpreter: the per-step form with H = 130 in slices of 64, 64 and 2 and B = 3
# in tiles of 2 (the second one partial). GPU: the persistent form at the GPU's own tiles (16-unit slices: 9 at
# H = 130; tl.dot needs 16 rows there, so B = 3 is one partial batch tile -- the GPU tests at the end have many).
MULTI = PersistentConfig(2, 64, 256, form="per_step") if not ON_GPU else P.gpu_config(130, "ieee")
# One N-slice per batch tile: the persistent form runs in the interpreter without ever waiting.
SINGLE = PersistentConfig(block_b=2, block_n=256, block_k=256)


@pytest.fixture(autouse=True)
def _fresh_persistent_state():
    """Each test starts with no timeout recorded, no warning given and no cached choice."""
    P._reset()
    yield
    P._reset()


@pytest.fixture
def launched(monkeypatch):
    """The (direction, B, H, config) of every persistent run (a spy: the launchers run as usual)."""
    calls = []
    run_forward, run_backward = P.run_forward, P.run_backward

    def forward(xp, *args, config=None, **kw):
        calls.append(("fwd",) + tuple(xp.shape[1:]) + (config,))
        return run_forward(xp, *args, config=config, **kw)

    def backward(dy, dhT, hs, w_hh, da, *args, config=None, **kw):
        calls.append(("bwd",) + tuple(da.shape[1:]) + (config,))
        return run_backward(dy, dhT, hs, w_hh, da, *args, config=config, **kw)

    monkeypatch.setattr(P, "run_forward", forward)
    monkeypatch.setattr(P, "run_backward", backward)
    return calls


def _inputs(T, B, I, H, L, D, dtype, with_h0=True, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = cpu_randn(T, B, I, generator=g, dtype=dtype).requires_grad_()
    h0 = cpu_randn(L * D, B, H, generator=g, dtype=dtype).requires_grad_() if with_h0 else None
    return x, h0


# ------------------------------------------------------------------------------------------------ parity
# (T, B, I, H, L, bidirectional, bias, nonlinearity, h0)
PARITY_CASES = [
    pytest.param(37, 3, 5, 130, 1, False, True, "tanh", True, id="T37-tanh"),
    pytest.param(37, 3, 4, 130, 1, False, False, "relu", False, id="T37-relu-no_bias-no_h0"),
    pytest.param(1, 3, 6, 130, 2, True, True, "tanh", True, id="T1-L2-bidir"),
    pytest.param(1, 3, 6, 130, 2, False, True, "relu", True, id="T1-L2-relu"),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("T,B,I,H,L,bidir,bias,nonlin,with_h0", PARITY_CASES)
def test_parity_with_nn_rnn(launched, dtype, T, B, I, H, L, bidir, bias, nonlin, with_h0):
    """Outputs, h_n and the gradients of input, h0 and every weight through rnn(launch_config=MULTI)."""
    m = make_rnn(I, H, L, dtype=dtype, nonlinearity=nonlin, bias=bias, bidirectional=bidir)
    D = 2 if bidir else 1
    x, h0 = _inputs(T, B, I, H, L, D, dtype, with_h0)
    check_parity(m, x, h0, tol=TOL[dtype], precision="ieee", launch_config=MULTI)
    assert launched.count(("fwd", B, H, MULTI)) == L * D and launched.count(("bwd", B, H, MULTI)) == L * D
    assert not P.persistent_timed_out()


@interpreter_only
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_single_slice_persistent_form_matches_nn_rnn(launched, dtype):
    """The persistent form, one N-slice per batch tile, through nn.RNN's interface: the barrier code on every
    step."""
    m = make_rnn(4, 130, 2, dtype=dtype, nonlinearity="tanh", bidirectional=True)
    x, h0 = _inputs(9, 3, 4, 130, 2, 2, dtype)
    check_parity(m, x, h0, tol=TOL[dtype], precision="ieee", launch_config=SINGLE)
    assert len(launched) == 8 and not P.persistent_timed_out()


@pytest.mark.parametrize("which", [("output",), ("h_n",)], ids=["only_output", "only_h_n"])
def test_parity_when_one_output_is_unused(launched, which):
    """Backward with dy or dh_n absent (HAS_DY / HAS_DHT = False)."""
    m = make_rnn(4, 130, 1, dtype=torch.float64, bidirectional=True)
    x, h0 = _inputs(4, 3, 4, 130, 1, 2, torch.float64)
    check_parity(m, x, h0, tol=TOL[torch.float64], which=which, launch_config=MULTI)
    assert {c[0] for c in launched} == {"fwd", "bwd"}


# ------------------------------------------------------------------------------------------ bit-exactness
def _layer(T, B, H, dtype, seed=0):
    """Random inputs of one layer's recurrence, on the tests' device: xp, h0, W_hh (at nn.RNN's scale), dy, dh_T."""
    g = torch.Generator().manual_seed(seed)
    k = H ** -0.5
    xp = torch.randn(T, B, H, generator=g, dtype=dtype)
    w = (torch.rand(H, H, generator=g, dtype=dtype) * 2 - 1) * k
    out = (xp, torch.randn(B, H, generator=g, dtype=dtype), w, torch.randn(T, B, H, generator=g, dtype=dtype),
           torch.randn(B, H, generator=g, dtype=dtype))
    return tuple(t.to(DEVICE) for t in out)


def _run_layer(xp, h0, w, dy, dhT, reverse, nonlin, precision, **kw):
    y, hT, hs = P.persistent_forward(xp, h0, w, reverse, nonlin, precision, **kw)
    da, dh0 = P.persistent_backward(dy, dhT, hs, w, reverse, nonlin, precision, **kw)
    return {"y": y, "h_T": hT, "hs": hs, "dA": da, "dh_0": dh0}


def _tiled_layer(xp, h0, w, dy, dhT, reverse, nonlin, precision, cfg=None):
    """The same layer through kernels.rnn's batch-tiled kernels (cfg: a LaunchConfig, None: the device's)."""
    cfg = cfg or K._pick_config(xp.shape[1], xp.shape[2], precision, xp.device)
    y, hT, hs = K._recurrence_forward(xp, h0, w, reverse, nonlin, precision, cfg)
    da, dh0 = K._recurrence_backward(dy, dhT, hs, w, reverse, nonlin, precision, cfg)
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


CASES_BITS = [(torch.float64, "ieee"), (torch.float32, "ieee"), (torch.float32, "tf32"), (torch.float32, "bf16"),
              (torch.float32, "fp16")]


@interpreter_only
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("nonlin", ["tanh", "relu"])
@pytest.mark.parametrize("dtype,precision", CASES_BITS, ids=["fp64", "fp32", "tf32", "bf16", "fp16"])
def test_persistent_single_slice_is_bit_identical_to_per_step(dtype, precision, nonlin, reverse):
    xp, h0, w, dy, dhT = _layer(6, 3, 130, dtype)
    persistent = _run_layer(xp, h0, w, dy, dhT, reverse, nonlin, precision, config=SINGLE)
    per_step = _run_layer(xp, h0, w, dy, dhT, reverse, nonlin, precision, config=replace(SINGLE, form="per_step"))
    _assert_bit_identical(persistent, per_step)
    assert not P.persistent_timed_out()


# ------------------------------------------------------------------------------------------------ bf16, fp16
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_matches_emulated_reference_and_the_tiled_kernels(launched, precision):
    """bf16/fp16 with several N-slices and batch tiles and the 16-bit shadow ring: against rnn_reference's rounding
    (outputs) and against kernels.rnn's batch-tiled kernels, which round the same operands (everything). The
    interpreter's fp32 sums make these agree to fp32 rounding; on a GPU (mma, ex2.approx) a rounding of h_t to 16
    bits may flip, so there the bound is issue 10's, derived from the unit roundoff and T."""
    m = make_rnn(6, 130, 1, dtype=torch.float32, bidirectional=True)
    x, h0 = _inputs(5, 3, 6, 130, 1, 2, torch.float32)
    leaves = [x, h0, *m._flat_weights]
    kw = kwargs_of(m, precision=precision)

    def run(cfg):
        out, h_n = rnn(x, h0, m._flat_weights, launch_config=cfg, **kw)
        g = torch.Generator().manual_seed(5)
        loss = (out * cpu_randn(*out.shape, generator=g)).sum() + (h_n * cpu_randn(*h_n.shape, generator=g)).sum()
        return [out, h_n, *torch.autograd.grad(loss, leaves)]

    tiled = run(None if not ON_GPU else K._pick_config(3, 130, precision, DEVICE))
    ours = run(MULTI)
    assert len(launched) == 4
    ref, ref_h = rnn_reference(x, h0, m._flat_weights, **kw)
    exact, _ = rnn_reference(x, h0, m._flat_weights, **kwargs_of(m, precision="ieee"))
    tol = 1e-5 if not ON_GPU else rounding_tolerance(precision, 5)
    assert rel_err(ours[0], ref) <= tol and rel_err(ours[1], ref_h) <= tol  # same roundings, fp32 sums
    assert 1e-5 < rel_err(ours[0], exact) < 3e-2  # 16-bit operands really are in use
    errs = [rel_err(a, b) for a, b in zip(ours, tiled)]
    assert max(errs) <= tol, errs


# ---------------------------------------------------------------------------------------------- selection
H100, A100 = dict(sm_count=132, cc=90), dict(sm_count=108, cc=80)
# the compile report's figures for the default model's forward, tf32, sm_90 (maxnreg 128): 2 programs an SM
COMPILED = P.KernelResources(registers=92, shared_bytes=67584, num_warps=8)


def test_programs_per_sm_arithmetic():
    # 92 registers -> 2944 a warp -> 3072 (units of 256) -> 65536 // (3072 x 8) = 2; shared 233472 // 68608 = 3
    assert P.programs_per_sm(COMPILED, 90) == 2
    # registers 64 x 32 = 2048 a warp -> 65536 // 8192 = 8; threads 2048 // 128 = 16; shared 233472 // 11024 = 21
    assert P.programs_per_sm(P.KernelResources(64, 10_000, 4), 90) == 8
    assert P.programs_per_sm(P.KernelResources(40, 1024, 1), 90) == 32  # the 32-blocks limit
    assert P.programs_per_sm(P.KernelResources(64, 200 * 1024, 4), 80) == 0  # over sm_80's 163 KB per block
    assert P.programs_per_sm(P.KernelResources(64, 200 * 1024, 4), 90) == 1
    # sm_86 (and unknown capabilities): 100 KB an SM, 1536 threads, 16 blocks
    assert P.programs_per_sm(COMPILED, 86) == 1 and P.programs_per_sm(COMPILED, 75) == 1
    assert P.programs_per_sm(P.KernelResources(32, 1024, 1), 86) == 16


def test_default_shape_is_persistent_on_h100_and_a100():
    choice = P.choose_path(batch=64, hidden=512, precision="tf32", resources=COMPILED, **H100)
    assert choice.path == "persistent" and choice.programs == 128 and choice.capacity == 264
    assert choice.config == P.PersistentConfig(16, 16, 512, 8, maxnreg=128)
    assert "128 programs (32 N-slices x 4 batch tiles) on 132 SMs x 2 per SM" in choice.reason
    assert str(choice).startswith("recurrence: persistent (")
    # an A100 (108 SMs) holds the 128 programs only two an SM: the register cap of 128 gives that (the compile
    # report: bf16 backward at H = 512 takes 128 on sm_80); without it ptxas took 134 (one an SM: tiled)
    bf16 = dict(batch=64, hidden=512, precision="bf16", **A100)
    assert P.choose_path(resources=P.KernelResources(128, 17 * 1024, 8), **bf16).path == "persistent"
    assert P.choose_path(resources=P.KernelResources(134, 17 * 1024, 8), **bf16).path == "tiled"


def test_estimate_is_conservative():
    """Without the compiled kernel's figures every register ptxas may give is assumed taken (the cap, 128 up to
    padded H 512), and the slice and h tile in shared memory."""
    cfg = P.gpu_config(512, "tf32")
    res = P.estimate_resources(cfg, "tf32")
    assert res.registers == cfg.maxnreg == 128 and res.shared_bytes == 16 * 512 * 4 + 512 * 16 * 4 + 1024
    a100 = P.choose_path(batch=64, hidden=512, precision="tf32", **A100)
    assert a100.path == "persistent" and a100.capacity == 216 and "estimated" in a100.reason
    big = P.choose_path(batch=32, hidden=1024, precision="tf32", **A100)  # 255 registers: one an SM, 108 < 128
    assert big.path == "tiled" and "cannot be resident" in big.reason and "estimated" in big.reason


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
    resources = P.KernelResources(registers=120, shared_bytes=133 * 1024, num_warps=8) \
        if kwargs["hidden"] == 1024 else COMPILED
    choice = P.choose_path(resources=resources, **H100, **kwargs)
    assert choice.path == "tiled" and needle in choice.reason, choice.reason


def test_large_hidden_is_persistent_for_small_batches():
    """A prompt of one sample at H = 1024: 64 programs of 133 KB shared memory, one an SM."""
    resources = P.KernelResources(registers=120, shared_bytes=133 * 1024, num_warps=8)
    choice = P.choose_path(batch=1, hidden=1024, precision="ieee", resources=resources, **H100)
    assert choice.path == "persistent" and choice.programs == 64 and choice.capacity == 132


def test_tiled_after_a_timeout():
    choice = P.choose_path(batch=64, hidden=512, precision="tf32", resources=COMPILED, timed_out=True, **H100)
    assert choice.path == "tiled" and "timed out" in choice.reason


def test_resources_are_compiled_only_when_the_rules_get_that_far():
    asked = []

    def resources(cfg):
        asked.append(cfg)
        return COMPILED

    assert P.choose_path(batch=64, hidden=100, precision="tf32", resources=resources, **H100).path == "tiled"
    assert P.choose_path(batch=64, hidden=512, precision="ieee", dtype=torch.float64, resources=resources,
                         **H100).path == "tiled"
    assert not asked
    assert P.choose_path(batch=64, hidden=512, precision="tf32", resources=resources, **H100).path == "persistent"
    assert asked == [P.gpu_config(512, "tf32")]


def test_resources_from_a_compiled_kernel():
    class Compiled:  # triton's CompiledKernel loads its binary (and learns n_regs) in _init_handles()
        n_regs = None
        metadata = types.SimpleNamespace(shared=67584, num_warps=8)

        def _init_handles(self):
            self.n_regs = 92

    assert P.KernelResources.from_compiled(Compiled()) == COMPILED


def _fake_gpu(monkeypatch, **props):
    """torch.cuda.get_device_properties answers for an H100 (or the given fields); the probe of the persistent
    kernel's resources returns COMPILED and records the launch it was given."""
    h100 = dict(major=9, minor=0, multi_processor_count=132, shared_memory_per_multiprocessor=233472,
                shared_memory_per_block_optin=232448, regs_per_multiprocessor=65536,
                max_threads_per_multi_processor=2048)
    h100.update(props)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: types.SimpleNamespace(**h100))
    probed = []
    monkeypatch.setattr(P, "_probe", lambda launch: probed.append(launch) or COMPILED)
    return probed


def test_sm_limits_come_from_the_device():
    props = dict(major=8, minor=6, shared_memory_per_multiprocessor=102400, shared_memory_per_block_optin=101376,
                 regs_per_multiprocessor=65536, max_threads_per_multi_processor=1536)
    mp = pytest.MonkeyPatch()
    try:
        _fake_gpu(mp, **props)
        limits = P.SMLimits.of_device(torch.device("cuda"))
        assert limits == P.SMLimits(102400, 101376, 65536, 1536, 16)
        _fake_gpu(mp, regs_per_multiprocessor=None, shared_memory_per_block_optin=None)  # an older torch
        assert P.SMLimits.of_device(torch.device("cuda")) == P.SMLimits.for_cc(90)
    finally:
        mp.undo()


def test_the_launchers_choice_is_compiled_once_cached_and_logged_once(monkeypatch, caplog):
    """On a GPU kernels.rnn asks choose_forward / choose_backward: choose_path with the device's SM count and
    limits and the resources of the persistent kernel compiled for these very tensors, once per (device, B, H,
    precision, nonlinearity, direction), with one log line; rnn.recurrence_path() returns it (the benchmarks'
    extra_info); after a timeout the cached persistent choice turns tiled. (The GPU is faked here; the GPU test
    at the end runs the real thing.)"""
    probed = _fake_gpu(monkeypatch)
    xp, h0, w, dy, dhT = _layer(3, 64, 512, torch.float32)
    fwd = _utils.forward_buffers(xp, h0, w, False, "tf32")
    caplog.set_level(logging.INFO, logger="rnnlm.kernels")
    choices = [P.choose_forward(*fwd, False, "tanh", "tf32") for _ in range(3)]
    assert len(probed) == 1 and probed[0].fn is P._rnn_persistent_fwd_kernel
    assert probed[0].options == P.LAUNCH_OPTIONS and probed[0].grid == (32, 4) and probed[0].maxnreg == 128
    assert all(c is choices[0] for c in choices) and choices[0].path == "persistent"
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("recurrence:")]
    assert logged == [f"{choices[0]} [forward, B 64, H 512, tf32, tanh, {P._device_key(DEVICE)}]"]
    assert P.cached_choice(DEVICE, 64, 512, "tf32") is choices[0]
    assert P.cached_choice(DEVICE, 64, 512, "ieee") is None  # nothing launched at that precision
    bwd = _utils.backward_buffers(dy, dhT, fwd[2], w, "tf32")
    back = P.choose_backward(bwd[0], bwd[1], fwd[2], *bwd[2:], False, "tanh", "tf32")
    assert back.path == "persistent" and probed[1].fn is P._rnn_persistent_bwd_kernel and len(probed) == 2
    assert P.cached_choice(DEVICE, 64, 512, "tf32", backward=True) is back
    monkeypatch.setattr(P, "_timed_out", True)
    with pytest.warns(RuntimeWarning, match="timed out"):
        after = P.choose_forward(*fwd, False, "tanh", "tf32")
    assert after.path == "tiled" and "timed out" in after.reason and len(probed) == 2


def test_a_forced_configuration_or_the_interpreter_skips_the_choice(monkeypatch):
    asked = []

    def choose():
        asked.append(1)
        return P.PathChoice("persistent", "test", P.gpu_config(512, "tf32"))

    t = torch.empty(1, device=DEVICE)
    assert K._persistent_config(MULTI, t, choose) is MULTI
    assert K._persistent_config(LaunchConfig(True, 16, 64), t, choose) is None
    assert not asked
    assert K._persistent_config(None, t, choose) == (None if not ON_GPU else P.gpu_config(512, "tf32"))
    monkeypatch.setattr(K, "interpreted", lambda t: False)  # as for CUDA tensors
    assert K._persistent_config(None, t, choose) == P.gpu_config(512, "tf32") and asked


def test_compile_configs_cover_every_persistent_choice():
    """Every (tiles, register cap, precision, nonlinearity, direction) choose_path() can pick on a GPU is in
    gpu_compile_configs()."""
    listed = {(c.fn, c.num_warps, c.maxnreg, tuple(sorted((k, v) for k, v in c.constexprs.items())))
              for c in P.gpu_compile_configs()}
    picked = 0
    for precision in P.PRECISIONS:
        for hidden in (100, 129, 200, 256, 300, 512, 513, 700, 1024, 1025):
            for batch in (1, 3, 64):
                choice = P.choose_path(batch=batch, hidden=hidden, precision=precision, **H100)
                if choice.path != "persistent":
                    continue
                picked += 1
                cfg = choice.config
                for fn, extra in ((P._rnn_persistent_fwd_kernel, {}),
                                  (P._rnn_persistent_bwd_kernel, {"HAS_DY": True, "HAS_DHT": True})):
                    for nonlin in (0, 1):
                        constexprs = dict(NONLINEARITY=nonlin, PRECISION=precision, EMULATE=False, PERSISTENT=True,
                                          BLOCK_B=cfg.block_b, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, **extra)
                        key = (fn, cfg.num_warps, cfg.maxnreg, tuple(sorted(constexprs.items())))
                        assert key in listed, (precision, hidden)
    assert picked > 10


def _specialised_config(c):
    return (c.fn, c.num_warps, c.maxnreg, tuple(sorted((k, repr(v)) for k, v in c.constexprs.items())),
            tuple(sorted(c.signature.items())), tuple(sorted(c.attrs)), tuple(sorted(c.options.items())))


def _specialised(launch):
    return _specialised_config(launch.compile_config("probe"))


def test_gpu_compile_configs_are_the_launches_of_the_default_model():
    """What the persistent launches compile for the default model's shapes (H = 512, fp32 state, any T, B and
    direction; the padded-H siblings 256 and 1024) is, specialisation and options included, what the compile
    report compiles: T, B, the direction, the spin bound and the barrier's addresses are never specialised."""
    listed = {_specialised_config(c) for c in P.gpu_compile_configs()}
    meta = _utils.meta_tensor
    for precision in P.PRECISIONS:
        for T, B, H in ((20, 64, 512), (35, 3, 512), (1, 1, 512), (20, 16, 1024), (7, 64, 256)):
            cfg = P.gpu_config(H, precision)
            f32 = lambda *shape: meta(shape, torch.float32)  # noqa: E731
            ring = meta((2, B, H), _utils.LOW_PRECISION_DTYPE.get(precision, torch.float32))
            hs, da, w, hb = f32(T + 1, B, H), f32(T, B, H), f32(H, H), f32(B, H)
            low = precision in _utils.LOW_PRECISION_DTYPE
            for reverse in (False, True):
                sync = meta((T * 4 + 1,), torch.int32)
                fwd = P.forward_launch(da, w, hs, ring if low else hs, hb, sync[1:], sync[:1], reverse, "tanh",
                                       precision, cfg, max_spins=12345)
                bwd = P.backward_launch(da, hb, hs, w, da, ring if low else da, hb, sync[1:], sync[:1], reverse,
                                        "relu", precision, cfg)
                assert _specialised(fwd) in listed and _specialised(bwd) in listed, (precision, T, B, H, reverse)


# ------------------------------------------------------------------------------------------------ fallback
def test_error_flag_set_reruns_bit_identically_and_warns_once():
    """Standalone use (no hook): a flag already set (a simulated timeout) makes the persistent launch do nothing;
    the launcher reads the flag, reruns the per-step form, warns once and chooses tiled from then on."""
    cfg = SINGLE if not ON_GPU else P.gpu_config(130, "tf32")
    xp, h0, w, dy, dhT = _layer(5, 3, 130, torch.float32)
    clean = _run_layer(xp, h0, w, dy, dhT, False, "tanh", "tf32", config=cfg)
    assert not P.persistent_timed_out()
    flag = torch.ones(1, dtype=torch.int32, device=DEVICE)
    with pytest.warns(RuntimeWarning, match="timed out or was refused"):
        flagged = _run_layer(xp, h0, w, dy, dhT, False, "tanh", "tf32", config=cfg, error_flag=flag)
    _assert_bit_identical(flagged, clean)
    assert P.persistent_timed_out()
    assert P.choose_path(batch=3, hidden=130, precision="tf32", timed_out=P.persistent_timed_out(),
                         **H100).path == "tiled"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: no second warning
        _run_layer(xp, h0, w, dy, dhT, False, "tanh", "tf32", config=cfg, error_flag=flag)


@interpreter_only
@pytest.mark.parametrize("nonlin,precision", [("tanh", "ieee"), ("relu", "bf16")])
def test_a_barrier_that_cannot_complete_times_out_and_reruns(nonlin, precision):
    """A real bounded wait: in the interpreter the persistent form with 3 N-slices cannot complete its first
    barrier (the other programs only run after the first one returns). The first program gives up after its
    polls (cut to 16 there) and sets the flag, the others see it and stop, and the per-step rerun writes every
    output."""
    xp, h0, w, dy, dhT = _layer(3, 3, 130, torch.float32, seed=3)
    expected = _run_layer(xp, h0, w, dy, dhT, True, nonlin, precision, config=MULTI)
    with pytest.warns(RuntimeWarning, match="timed out"):
        got = _run_layer(xp, h0, w, dy, dhT, True, nonlin, precision, config=replace(MULTI, form="persistent"))
    _assert_bit_identical(got, expected)
    assert P.persistent_timed_out()


@pytest.mark.parametrize("precision", ["ieee", "bf16"])
def test_rnn_falls_back_to_the_tiled_kernel_when_the_flag_is_set(monkeypatch, precision):
    """Through rnn() (the hook path: no host synchronisation): barriers that give up at once (max_spins = 0, with
    several N-slices in the persistent form) set the flag; the tiled kernel, enqueued right after each persistent
    launch and guarded by the flag, then recomputes the layer into the same outputs: the results are the tiled
    kernel's bit for bit, the host warns once, and the choice is tiled from then on."""
    multi = replace(MULTI, form="persistent")
    monkeypatch.setitem(P.run_forward.__kwdefaults__, "max_spins", 0)
    monkeypatch.setitem(P.run_backward.__kwdefaults__, "max_spins", 0)
    m = make_rnn(4, 130, 2, dtype=torch.float32, bidirectional=True)
    x, h0 = _inputs(3, 3, 4, 130, 2, 2, torch.float32)
    leaves = [x, h0, *m._flat_weights]

    def run(cfg):
        out, h_n = rnn(x, h0, m._flat_weights, launch_config=cfg, **kwargs_of(m, precision=precision))
        return [out, h_n, *torch.autograd.grad(out.square().sum() + h_n.sum(), leaves)]

    tiled = run(K._pick_config(3, 130, precision, DEVICE))
    with pytest.warns(RuntimeWarning, match="timed out or was refused"):
        got = run(multi)
    assert all(torch.equal(a, b) for a, b in zip(got, tiled))
    assert P.persistent_timed_out()


class _FakeKernel:
    """Stands for a persistent Launch: records the flag it saw, and raises `refusal` when launched."""

    def __init__(self, refusal=None):
        self.refusal, self.launches = refusal, []

    def make(self, sync, err, persistent, max_spins):
        def launch():
            self.launches.append((persistent, int(err[0])))
            if persistent and self.refusal:
                raise RuntimeError(self.refusal)
        return launch


def test_a_refused_cooperative_launch_falls_back():
    """The driver refuses a cooperative grid that cannot be resident (an error at launch): the flag is set on
    the host and the rerun happens (the hook's, or the caller's); any other launch error propagates."""
    run = dict(grid=(32, 4), steps=5, form="persistent", max_spins=10, error_flag=None, device=DEVICE)
    kernel = _FakeKernel("Triton Error [CUDA]: too many blocks in cooperative launch")
    with pytest.warns(RuntimeWarning, match="refused"):
        assert P._execute(kernel.make, fallback=None, **run) is True
    assert kernel.launches == [(True, 0)] and P.persistent_timed_out()
    handed = []
    assert P._execute(_FakeKernel("too many blocks in cooperative launch").make,
                      fallback=lambda flag: handed.append(int(flag[0])), **run) is False
    assert handed == [1]  # a refused launch is handed to the hook flagged
    with pytest.raises(RuntimeError, match="illegal address"):
        P._execute(_FakeKernel("an illegal address was encountered").make, fallback=None, **run)


def test_the_hook_gets_the_flag_right_after_the_launch():
    """With a fallback hook the launcher hands it the flag and reads nothing itself before; a preset flag means
    the persistent kernel wrote nothing (the outputs stay poisoned, for the hook's rerun) and the host still
    warns once."""
    cfg = SINGLE if not ON_GPU else P.gpu_config(130, "ieee")
    xp, h0, w, dy, dhT = _layer(3, 3, 130, torch.float32)
    xp, w, hs, hT = _utils.forward_buffers(xp, h0, w, False, "ieee")
    handed = []
    P.run_forward(xp, w, hs, hT, False, "tanh", "ieee", config=cfg, fallback=lambda f: handed.append(int(f[0])))
    assert handed == [0] and torch.isfinite(hs).all() and not P.persistent_timed_out()
    xp, w, hs, hT = _utils.forward_buffers(xp, h0, w, False, "ieee")
    with pytest.warns(RuntimeWarning, match="timed out"):
        P.run_forward(xp, w, hs, hT, False, "tanh", "ieee", config=cfg, fallback=lambda f: handed.append(int(f[0])),
                      error_flag=torch.ones(1, dtype=torch.int32, device=DEVICE))
    assert handed == [0, 1] and torch.isnan(hs[1:]).all() and torch.isnan(hT).all()


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_arguments_raise_value_error_naming_them():
    xp, h0, w, dy, dhT = _layer(2, 3, 20, torch.float32)
    with pytest.raises(ValueError, match="form"):
        PersistentConfig(2, 16, 32, form="fused")
    with pytest.raises(ValueError, match="powers of two"):
        PersistentConfig(2, 16, 48)
    with pytest.raises(ValueError, match="precision"):
        P.persistent_forward(xp, h0, w, False, "tanh", "fp8")
    with pytest.raises(ValueError, match="block_k = 16 must cover H = 20"):
        P.persistent_forward(xp, h0, w, False, "tanh", "ieee", config=PersistentConfig(2, 16, 16))
    with pytest.raises(ValueError, match="xp"):
        P.persistent_forward(xp[0], h0, w, False, "tanh", "ieee")
    with pytest.raises(ValueError, match="w_hh"):
        P.persistent_forward(xp, h0, w[:, :10], False, "tanh", "ieee")
    with pytest.raises(ValueError, match="h0"):
        P.persistent_forward(xp, h0.double(), w, False, "tanh", "ieee")
    _, _, hs = P.persistent_forward(xp, h0, w, False, "tanh", "ieee", config=SINGLE if not ON_GPU else None)
    with pytest.raises(ValueError, match="dy"):
        P.persistent_backward(dy[:1], dhT, hs, w, False, "tanh", "ieee")
    with pytest.raises(ValueError, match="dhT"):
        P.persistent_backward(dy, dhT[:1], hs, w, False, "tanh", "ieee")
    with pytest.raises(ValueError, match="PersistentConfig"):
        P.persistent_forward(xp, h0, w, False, "tanh", "ieee", config=LaunchConfig(True, 16, 32))
    with pytest.raises(ValueError, match="launch_config"):
        m = make_rnn(3, 5, 1, dtype=torch.float32)
        rnn(cpu_randn(2, 1, 3, generator=torch.Generator()), None, m._flat_weights, num_layers=1,
            launch_config="persistent")


# ----------------------------------------------------------------------------------------------------- GPU
# Five shapes x three precisions, bit for bit between the persistent and per-step forms at the GPU's tiles; every
# grid has at most 132 programs, resident on an H100/H200 even at one program an SM (H = 1024).
GPU_SHAPES = [(20, 64, 512), (37, 3, 130), (1, 1, 256), (24, 32, 1024), (16, 96, 300)]


@gpu_only
@pytest.mark.parametrize("precision", ["ieee", "tf32", "bf16"])
@pytest.mark.parametrize("T,B,H", GPU_SHAPES, ids=[f"T{t}-B{b}-H{h}" for t, b, h in GPU_SHAPES])
def test_gpu_persistent_is_bit_identical_to_per_step(T, B, H, precision):
    cfg = P.gpu_config(H, precision)
    xp, h0, w, dy, dhT = _layer(T, B, H, torch.float32)
    persistent = _run_layer(xp, h0, w, dy, dhT, False, "tanh", precision, config=cfg)
    per_step = _run_layer(xp, h0, w, dy, dhT, False, "tanh", precision, config=replace(cfg, form="per_step"))
    torch.cuda.synchronize()
    _assert_bit_identical(persistent, per_step)
    assert not P.persistent_timed_out()
    ref = _torch_layer(*(t.double() for t in (xp, h0, w, dy, dhT)), "tanh")
    tol = 1e-5 if precision == "ieee" else rounding_tolerance(precision, T)
    for name in ref:
        assert rel_err(persistent[name], ref[name]) <= tol, name


@gpu_only
def test_gpu_stress_beside_a_busy_gemm_stream():
    """200 persistent launches (100 forward, 100 backward) while another stream keeps the SMs busy with GEMMs:
    no timeout, and every launch gives the first one's bits."""
    xp, h0, w, dy, dhT = _layer(20, 64, 512, torch.float32)
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


@gpu_only
def test_gpu_rnn_runs_the_persistent_kernels_where_chosen_with_no_host_sync(launched, host_syncs):
    """rnn() with nothing forced, at the default model's recurrence (B 64, H 512, 2 layers, tf32): the launcher's
    choice (from this GPU's SMs and the compiled kernel) is logged and available to the benchmarks, the persistent
    kernels run forward and backward where it is persistent, the results agree with the tiled kernels within the
    tf32 bound, and a training step's recurrence reads nothing back to the host."""
    m = make_rnn(256, 512, 2, dtype=torch.float32)
    x, h0 = _inputs(20, 64, 256, 512, 2, 1, torch.float32)
    leaves = [x, h0, *m._flat_weights]

    def run(cfg):
        out, h_n = rnn(x, h0, m._flat_weights, launch_config=cfg, **kwargs_of(m, precision="tf32"))
        return [out, h_n, *torch.autograd.grad(out.sum() + h_n.sum(), leaves)]

    run(None)  # compiles, chooses, fills the host-flag pool
    choice = K.recurrence_path(DEVICE, 64, 512, "tf32")
    assert choice is not None and str(choice).startswith("recurrence: ")
    launched.clear()
    with host_syncs() as syncs:
        ours = run(None)
    assert syncs.count == 0, syncs.calls
    assert (len(launched) == 4) == (choice.path == "persistent")
    tiled = run(K._pick_config(64, 512, "tf32", DEVICE))
    tol = rounding_tolerance("tf32", 20)
    assert max(rel_err(a, b) for a, b in zip(ours, tiled)) <= tol
    torch.cuda.synchronize()
    assert not P.persistent_timed_out()
