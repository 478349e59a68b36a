"""kernels.rnn against torch.nn.RNN: parity in fp64 and fp32, gradients, NaN-poisoned outputs, odd shapes,
stable tanh, bad input, and hypothesis properties. Interpreted kernels are slow: shapes stay tiny."""
from __future__ import annotations

import pytest
import torch

import kernels  # noqa: F401  (sets up Triton's mode before triton is imported)
import kernels.rnn as K
from kernels.rnn import TritonRNN, rnn, rnn_reference

import triton
import triton.language as tl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernels._common import tanh as stable_tanh

TOL = {torch.float64: 1e-12, torch.float32: 1e-5}
# the tiled (GPU) kernel, run in the interpreter with small tiles: with H = 70 it has a partial N tile
# (32, 32, 6) and a partial K tile (64, 6), and with B = 3 two programs, the second one partial
TILED = K._LaunchConfig(resident=False, block_b=2, block_n=32, block_k=64)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300)).item()


def make_rnn(I, H, L, *, dtype, nonlinearity="tanh", bias=True, batch_first=False, bidirectional=False,
             dropout=0.0, seed=0):
    """nn.RNN with its own initialisation, U(-1/sqrt(H), 1/sqrt(H)). (Larger weights, e.g. +-0.6 at H = 130,
    saturate tanh so that 1 - h^2 cancels: nn.RNN's own fp32 gradients are then ~1.5e-5 off the fp64 truth,
    as are ours, and no fp32 implementation could agree with another to 1e-5.)"""
    torch.manual_seed(seed)
    return torch.nn.RNN(I, H, L, nonlinearity=nonlinearity, bias=bias, batch_first=batch_first,
                        bidirectional=bidirectional, dropout=dropout).to(dtype)


def kwargs_of(m: torch.nn.RNN, **overrides) -> dict:
    """rnn()'s keyword arguments for module m (nn.RNN's own settings), with overrides."""
    kw = dict(num_layers=m.num_layers, nonlinearity=m.nonlinearity, bias=m.bias, batch_first=m.batch_first,
              dropout=m.dropout, training=m.training, bidirectional=m.bidirectional)
    kw.update(overrides)
    return kw


def check_parity(m, x, h0, *, tol, which=("output", "h_n"), precision=None, seed=None):
    """Runs rnn() and m (nn.RNN) on the same input with random upstream gradients on the chosen outputs;
    compares outputs, h_n and the gradients of x, h0 and every weight and bias."""
    leaves = [x] + ([h0] if h0 is not None else []) + list(m._flat_weights)

    def run(fn):
        if seed is not None:
            torch.manual_seed(seed)
        out, h_n = fn()
        g = torch.Generator().manual_seed(123)
        loss = 0
        if "output" in which:
            loss = loss + (out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum()
        if "h_n" in which:
            loss = loss + (h_n * torch.randn(h_n.shape, generator=g, dtype=h_n.dtype)).sum()
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        return out, h_n, grads

    ours = run(lambda: rnn(x, h0, m._flat_weights, **kwargs_of(m, precision=precision)))
    ref = run(lambda: m(x, h0))
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
    x = torch.randn(shape, generator=g, dtype=dtype).requires_grad_()
    D = 2 if bidir else 1
    h0 = torch.randn(L * D, B, H, generator=g, dtype=dtype).requires_grad_() if with_h0 else None
    check_parity(m, x, h0, tol=TOL[dtype], precision="ieee")


@pytest.mark.parametrize("nonlin", ["tanh", "relu"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_tiled_kernel_parity(monkeypatch, dtype, nonlin):
    """The GPU's tiled kernels (h_{t-1} and dA_{t+1} read back from memory, N and K tiled) in the interpreter."""
    monkeypatch.setattr(K, "_FORCE_CONFIG", TILED)
    m = make_rnn(3, 70, 2, dtype=dtype, nonlinearity=nonlin, bidirectional=True)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 3, 3, generator=g, dtype=dtype).requires_grad_()
    h0 = torch.randn(4, 3, 70, generator=g, dtype=dtype).requires_grad_()
    check_parity(m, x, h0, tol=TOL[dtype], precision="ieee")


@pytest.mark.parametrize("which", [("output",), ("h_n",)], ids=["only_output", "only_h_n"])
@pytest.mark.parametrize("config", [None, TILED], ids=["resident", "tiled"])
def test_parity_when_one_output_is_unused(monkeypatch, which, config):
    """Backward with dy or dh_n absent (the kernels' HAS_DY / HAS_DHT = False paths)."""
    monkeypatch.setattr(K, "_FORCE_CONFIG", config)
    m = make_rnn(4, 70, 1, dtype=torch.float64, bidirectional=True)
    x = torch.randn(3, 3, 4, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, 70, dtype=torch.float64, requires_grad=True)
    check_parity(m, x, h0, tol=TOL[torch.float64], which=which)


def test_unbatched_input():
    m = make_rnn(5, 9, 2, dtype=torch.float64, bidirectional=True, batch_first=True)
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)  # (T, I): batch_first does not apply
    h0 = torch.randn(4, 9, dtype=torch.float64, requires_grad=True)
    check_parity(m, x, h0, tol=TOL[torch.float64])
    check_parity(m, x, None, tol=TOL[torch.float64])


def test_non_contiguous_input_and_state():
    m = make_rnn(4, 11, 2, dtype=torch.float64)
    base = torch.randn(3, 5, 8, dtype=torch.float64)
    x = base.transpose(0, 1)[..., ::2].detach().requires_grad_()  # (5, 3, 4), strided everywhere
    assert not x.is_contiguous()
    h0 = torch.randn(3, 2, 11, dtype=torch.float64).transpose(0, 1).detach().requires_grad_()
    assert not h0.is_contiguous()
    check_parity(m, x, h0, tol=TOL[torch.float64])


@pytest.mark.parametrize("batch_first", [False, True])
def test_dropout_in_training_uses_nn_rnn_masks(batch_first):
    m = make_rnn(5, 12, 3, dtype=torch.float64, bidirectional=True, dropout=0.5, batch_first=batch_first).train()
    x = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(6, 4 if batch_first else 3, 12, dtype=torch.float64, requires_grad=True)
    check_parity(m, x, h0, tol=TOL[torch.float64], seed=7)
    # and the masks really are random: another seed gives another output
    torch.manual_seed(7)
    a, _ = rnn(x, h0, m._flat_weights, **kwargs_of(m))
    torch.manual_seed(8)
    b, _ = rnn(x, h0, m._flat_weights, **kwargs_of(m))
    assert rel_err(a, b) > 0.1


def test_dropout_is_off_in_eval():
    m = make_rnn(5, 12, 2, dtype=torch.float64, dropout=0.5).eval()
    x = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
    check_parity(m, x, None, tol=TOL[torch.float64])
    y, _ = rnn(x, None, m._flat_weights, **kwargs_of(m, training=False))
    y_nodrop, _ = rnn(x, None, m._flat_weights, **kwargs_of(m, training=False, dropout=0.0))
    assert torch.equal(y, y_nodrop)


@pytest.mark.parametrize("L,bidirectional", [(2, False), (1, True)], ids=["L2", "bidir"])
def test_gradcheck_fp64(L, bidirectional):
    torch.manual_seed(3)
    D, T, B, I, H = 2 if bidirectional else 1, 3, 2, 2, 3
    m = torch.nn.RNN(I, H, L, bidirectional=bidirectional).double()
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(L * D, B, H, dtype=torch.float64, requires_grad=True)
    weights = [w.detach().clone().requires_grad_() for w in m._flat_weights]

    def f(x, h0, *ws):
        return rnn(x, h0, list(ws), num_layers=L, bidirectional=bidirectional)

    assert torch.autograd.gradcheck(f, (x, h0, *weights), eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("config", [None, TILED], ids=["resident", "tiled"])
def test_every_output_element_is_written(monkeypatch, config):
    """Buffers come out of the launcher full of NaN: any element a kernel skips would surface as NaN."""
    monkeypatch.setattr(K, "_POISON_OUTPUTS", True)
    monkeypatch.setattr(K, "_FORCE_CONFIG", config)
    probe = K._alloc((3, 4), torch.float32, torch.device("cpu"))
    assert torch.isnan(probe).all()  # the poison is real
    m = make_rnn(3, 70, 2, dtype=torch.float32, bidirectional=True)
    x = torch.randn(3, 3, 3, requires_grad=True)
    h0 = torch.randn(4, 3, 70, requires_grad=True)
    check_parity(m, x, h0, tol=TOL[torch.float32])  # asserts finite gradients too
    out, h_n = rnn(x, None, m._flat_weights, **kwargs_of(m))
    assert torch.isfinite(out).all() and torch.isfinite(h_n).all()


@triton.jit
def _tanh_probe_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(y_ptr + offs, stable_tanh(tl.load(x_ptr + offs, mask=mask, other=0.0)), mask=mask)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_tanh_helper_is_stable_and_accurate(dtype):
    big = [-1e30, -1e4, -100.0, -50.0, -44.5, -44.0, -20.0, 20.0, 44.0, 44.5, 50.0, 100.0, 1e4, 1e30]
    small = [0.0, -0.0, 1e-30, -1e-12, 1e-7, -1e-4, 3e-3, 0.05, -0.3, 0.55, -1.0, 2.5, -7.0]
    x = torch.tensor(big + small + torch.linspace(-12, 12, 200).tolist(), dtype=dtype)
    y = torch.empty_like(x)
    _tanh_probe_kernel[(1,)](x, y, x.numel(), BLOCK=triton.next_power_of_2(x.numel()))
    ref = torch.tanh(x.double())
    assert torch.isfinite(y).all()
    assert torch.equal(y[:len(big)], torch.sign(x[:len(big)]))  # saturates to exactly +-1, never NaN
    ulps = ((y.double() - ref).abs() / (ref.abs() * torch.finfo(dtype).eps).clamp_min(torch.finfo(dtype).tiny))
    assert ulps.max().item() <= 4, f"max error {ulps.max().item():.1f} ulp"
    nan = torch.tensor([float("nan")], dtype=dtype)
    out = torch.empty_like(nan)
    _tanh_probe_kernel[(1,)](nan, out, 1, BLOCK=16)
    assert torch.isnan(out).all()


def test_huge_preactivations_saturate_without_nan():
    """Inputs driving the pre-activations far below -44 and above 44 (the textbook tanh's NaN zone)."""
    m = make_rnn(2, 5, 2, dtype=torch.float32)
    x = torch.tensor([[[300.0, -300.0]], [[-300.0, 300.0]], [[1e5, 1e5]]], requires_grad=True)
    check_parity(m, x, None, tol=TOL[torch.float32])
    out, h_n = rnn(x, None, m._flat_weights, num_layers=2)
    assert torch.isfinite(out).all() and torch.isfinite(h_n).all()


def test_bf16_precision_matches_reference_and_autocast():
    m = make_rnn(6, 24, 2, dtype=torch.float32, bidirectional=True)
    x = torch.randn(4, 3, 6, requires_grad=True)
    kw = kwargs_of(m)
    out, h_n = rnn(x, None, m._flat_weights, **kw, precision="bf16")
    ref, ref_h = rnn_reference(x, None, m._flat_weights, **kw, precision="bf16")
    exact, _ = rnn(x, None, m._flat_weights, **kw, precision="ieee")
    assert rel_err(out, ref) <= 1e-5 and rel_err(h_n, ref_h) <= 1e-5  # same roundings, fp32 sums
    assert 1e-5 < rel_err(out, exact) < 3e-2  # bf16 operands really are in use
    g_ours = torch.autograd.grad(out.sum(), [x, *m._flat_weights])
    g_ref = torch.autograd.grad(ref.sum(), [x, *m._flat_weights])
    assert max(rel_err(a, b) for a, b in zip(g_ours, g_ref)) <= 1e-2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto, auto_h = rnn(x, None, m._flat_weights, **kw)
        m_out, m_h = m(x)
    assert auto.dtype == m_out.dtype == torch.bfloat16 and auto_h.dtype == m_h.dtype
    assert rel_err(auto, ref) <= 1e-2  # the output rounded to bf16 (2^-9)
    assert K.resolve_precision(None, x) == "ieee"  # CPU, no autocast
    assert K.resolve_precision(None, x.double()) == "ieee"


def test_triton_rnn_module_matches_nn_rnn():
    torch.manual_seed(4)
    ref = torch.nn.RNN(5, 10, 2, batch_first=True, nonlinearity="relu")
    mod = TritonRNN(5, 10, 2, batch_first=True, nonlinearity="relu")
    mod.load_state_dict(ref.state_dict())
    x = torch.randn(3, 4, 5)
    a, ha = mod(x)
    b, hb = ref(x)
    assert rel_err(a, b) <= 1e-5 and rel_err(ha, hb) <= 1e-5


# ------------------------------------------------------------------------------------------------ bad input
def _valid_call(**overrides):
    m = make_rnn(4, 6, 2, dtype=torch.float32)
    args = dict(input=torch.randn(3, 2, 4), hx=torch.zeros(2, 2, 6), flat_weights=list(m._flat_weights),
                num_layers=2)
    args.update(overrides)
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
    if s["unbatched"]:
        x = torch.randn(s["T"], s["I"], dtype=dtype)
        h0 = torch.randn(s["L"] * D, s["H"], dtype=dtype) if s["with_h0"] else None
    else:
        x = torch.randn((s["B"], s["T"], s["I"]) if s["batch_first"] else (s["T"], s["B"], s["I"]), dtype=dtype)
        h0 = torch.randn(s["L"] * D, s["B"], s["H"], dtype=dtype) if s["with_h0"] else None
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
        x = torch.randn(*x.shape[:-1], x.shape[-1] + delta)
    elif corruption == "hx_batch":
        if s["unbatched"]:
            h0 = h0.unsqueeze(1).expand(-1, delta + 1, -1)  # 3-D hx for 2-D input
        else:
            h0 = torch.randn(h0.shape[0], h0.shape[1] + delta, h0.shape[2])
    elif corruption == "hx_layers":
        h0 = torch.randn(h0.shape[0] + delta, *h0.shape[1:])
    elif corruption == "hx_hidden":
        h0 = torch.randn(*h0.shape[:-1], h0.shape[-1] + delta)
    elif corruption == "weight_hh":
        weights[1] = torch.randn(s["H"], s["H"] + delta)
    elif corruption == "rank":
        x = x.reshape(1, 1, *x.shape) if delta > 1 else x.reshape(-1)
    with pytest.raises(ValueError):
        rnn(x, h0, weights, **kwargs_of(m))


def _kernel_name(fn) -> str:
    return getattr(fn, "__name__", None) or fn.fn.__name__  # JITFunction or the interpreter's wrapper


def test_gpu_compile_configs_cover_the_launcher_choices(monkeypatch):
    """Every configuration _pick_config can return on a GPU appears in gpu_compile_configs()."""
    pytest.importorskip("kernels.compile_report")
    listed = {(_kernel_name(c.fn), c.num_warps,
               tuple(sorted((k, v) for k, v in c.constexprs.items() if k.startswith("BLOCK") or k == "PRECISION")))
              for c in K.gpu_compile_configs()}
    monkeypatch.setattr(K._runtime, "INTERPRETED", False)
    for precision in K.PRECISIONS:
        for hidden in (1, 16, 64, 65, 130, 512, 1000):
            cfg = K._pick_config(64, hidden, precision)
            blocks = ({"BLOCK_B": cfg.block_b, "BLOCK_H": cfg.block_h} if cfg.resident
                      else {"BLOCK_B": cfg.block_b, "BLOCK_N": cfg.block_n, "BLOCK_K": cfg.block_k})
            key = tuple(sorted({**blocks, "PRECISION": precision}.items()))
            for kernel in ((K._rnn_fwd_resident_kernel, K._rnn_bwd_resident_kernel) if cfg.resident
                           else (K._rnn_fwd_tiled_kernel, K._rnn_bwd_tiled_kernel)):
                assert (_kernel_name(kernel), cfg.num_warps, key) in listed, (precision, hidden)
