"""kernels.softmax: parity with a float64 reference, invariants, gradients, bad input, property tests."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

import kernels  # noqa: F401  (sets up Triton's interpreter first)
from kernels.softmax import softmax, softmax_reference

TEMPERATURES = (0.5, 1.0, 2.0)


def _rows(n_rows: int, n_cols: int, seed: int = 0) -> torch.Tensor:
    """Random logits with awkward rows: -inf entries, +-1e4 entries, one huge-spread row."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_rows, n_cols, generator=g) * 3
    if n_cols > 1:
        x[0, ::3] = float("-inf")  # some -inf entries (never the whole row)
        x[0, 1] = 0.5
    if n_rows > 1:
        x[1] = torch.where(torch.rand(n_cols, generator=g) < 0.5, 1e4, -1e4)
    if n_rows > 2:
        x[2, n_cols // 2] = 1e4  # one dominant entry in the middle column block
    return x


@pytest.fixture
def poisoned_empty(monkeypatch):
    """torch.empty / empty_like return NaN-filled (or -7-filled) tensors: an unwritten output shows."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def fill(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t.fill_(-7)

    monkeypatch.setattr(torch, "empty", lambda *a, **k: fill(real_empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: fill(real_empty_like(*a, **k)))


@pytest.mark.parametrize("n_cols", [1, 7, 1023, 10001, 70000])
@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_matches_float64_reference(n_cols, temperature, poisoned_empty):
    n_rows = 6 if n_cols <= 1023 else 3
    x = _rows(n_rows, n_cols, seed=n_cols)
    y = softmax(x, temperature)
    ref = softmax_reference(x.double(), temperature)
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert not torch.isnan(y).any()
    torch.testing.assert_close(y.double(), ref, rtol=2e-6, atol=1e-12)
    torch.testing.assert_close(y.double().sum(-1), torch.ones(n_rows, dtype=torch.float64), rtol=0, atol=2e-6)


@pytest.mark.parametrize("dtype,rtol,atol", [(torch.float64, 1e-13, 1e-300), (torch.bfloat16, 8e-3, 1e-3)])
def test_other_dtypes(dtype, rtol, atol, poisoned_empty):
    x = _rows(5, 300, seed=1).to(dtype)
    for t in (0.7, 2.0):  # 0.7 is not exact in fp32: the fp64 path keeps it exact
        y = softmax(x, t)
        assert y.dtype == dtype
        torch.testing.assert_close(y.double(), softmax_reference(x.double(), t), rtol=rtol, atol=atol)


def test_shift_invariance_and_shapes():
    g = torch.Generator().manual_seed(3)
    # values on a 1/8 grid plus a power of two: the shifted logits are exact in fp32
    x = torch.randint(-50, 50, (2, 3, 333), generator=g).float() / 8
    y = softmax(x, 1.0)
    torch.testing.assert_close(softmax(x + 1024.0, 1.0), y, rtol=1e-6, atol=0)
    torch.testing.assert_close(softmax(x - 4096.0, 0.5), softmax(x, 0.5), rtol=1e-6, atol=0)
    assert y.shape == x.shape
    # non-contiguous input (a transposed view) and a 1-D input
    xt = torch.randn(40, 9).t()
    torch.testing.assert_close(softmax(xt, 2.0), torch.softmax(xt / 2.0, -1), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(softmax(x[0, 0], 1.0), torch.softmax(x[0, 0], -1), rtol=1e-6, atol=1e-7)
    assert softmax(torch.empty(0, 5), 1.0).shape == (0, 5)


def test_all_neg_inf_row_is_nan_like_torch():
    x = torch.randn(3, 50)
    x[1] = float("-inf")
    y = softmax(x, 1.0)
    ref = torch.softmax(x, -1)
    assert torch.isnan(y[1]).all() and torch.isnan(ref[1]).all()
    assert not torch.isnan(y[[0, 2]]).any()
    torch.testing.assert_close(y[[0, 2]], ref[[0, 2]], rtol=1e-6, atol=1e-7)
    # -inf in the first column block only must not poison the running sum
    z = torch.randn(1, 5000)
    z[0, :3000] = float("-inf")
    torch.testing.assert_close(softmax(z, 1.0), torch.softmax(z, -1), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
@pytest.mark.parametrize("n_cols", [1, 37, 3000])
def test_gradients_match_torch(dtype, tol, n_cols, poisoned_empty):
    g = torch.Generator().manual_seed(n_cols)
    x = (torch.randn(4, n_cols, generator=g) * 2).to(dtype)
    up = torch.randn(4, n_cols, generator=g).to(dtype)
    for t in (0.5, 1.3):
        a = x.clone().requires_grad_()
        b = x.clone().requires_grad_()
        (softmax(a, t) * up).sum().backward()
        (torch.softmax(b / t, -1) * up).sum().backward()
        assert not torch.isnan(a.grad).any()
        scale = b.grad.abs().max().clamp_min(1e-30)
        assert ((a.grad - b.grad).abs().max() / scale).item() <= tol


def test_gradcheck_fp64():
    x = torch.randn(3, 11, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: softmax(a, 0.8), (x,))


@pytest.mark.parametrize("temperature", [0, 0.0, -1.0, float("nan"), float("inf"), -float("inf"), "1", True, None])
def test_bad_temperature(temperature):
    with pytest.raises(ValueError, match="temperature"):
        softmax(torch.randn(2, 3), temperature)


@pytest.mark.parametrize("logits", [torch.ones(2, 3, dtype=torch.int64), torch.ones(2, 3, dtype=torch.float16),
                                    torch.ones(2, 3, device="meta"), torch.tensor(1.0), torch.ones(2, 0),
                                    [[1.0, 2.0]]])
def test_bad_logits(logits):
    with pytest.raises(ValueError, match="logits"):
        softmax(logits, 1.0)


@settings(max_examples=15, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=0, max_size=2), n_cols=st.integers(1, 300),
       temperature=st.floats(0.05, 20.0), seed=st.integers(0, 2**16))
def test_property_random_shapes_match_reference(shape, n_cols, temperature, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, n_cols, generator=g) * 4
    y = softmax(x, temperature)
    assert y.shape == x.shape
    torch.testing.assert_close(y.double(), softmax_reference(x.double(), temperature), rtol=1e-5, atol=1e-12)


@settings(max_examples=10, deadline=None)
@given(shape=st.lists(st.integers(0, 4), min_size=0, max_size=3))
def test_property_invalid_shapes_raise(shape):
    x = torch.randn(*shape, 0) if shape else torch.tensor(math.pi)  # empty last dim, or 0-d
    with pytest.raises(ValueError, match="logits"):
        softmax(x, 1.0)


def test_gpu_compile_configs_cover_every_launch(monkeypatch):
    """What the launchers would pick on a GPU (INTERPRETED patched off) is listed for the compile report."""
    import kernels.cross_entropy as ce
    import kernels.sample as smp
    import kernels.softmax as sm

    monkeypatch.setattr(sm, "INTERPRETED", False)
    lengths = [1, 2, 63, 64, 65, 500, 512, 513, 2047, 2048, 2049, 10000, 70000]
    for mod, kernels_ in ((sm, ("_softmax_fwd_kernel", "_softmax_bwd_kernel")),
                          (ce, ("_ce_fwd_kernel", "_ce_bwd_kernel"))):
        listed = {(c.fn, c.signature["x_ptr" if "x_ptr" in c.signature else "y_ptr"], c.num_warps,
                   tuple(sorted(c.constexprs.items()))) for c in mod.gpu_compile_configs()}
        for name in kernels_:
            fn = getattr(mod, name)
            for n_cols in lengths:
                bm, bn, warps = sm.row_tiles(1000, n_cols)
                for dt, tl_name in sm._TL_NAME.items():
                    meta = dict(BLOCK_M=bm, BLOCK_N=bn, FP64=dt == torch.float64)
                    if mod is ce:
                        meta["PACKED"] = False
                    assert (fn, f"*{tl_name}", warps, tuple(sorted(meta.items()))) in listed, (name, n_cols)
    listed = {(c.signature["x_ptr"], c.num_warps, tuple(sorted(c.constexprs.items())))
              for c in smp.gpu_compile_configs()}
    for n_cols in lengths:
        for greedy, use_k, use_p in ((True, False, False), (False, False, False), (False, True, False),
                                     (False, False, True), (False, True, True)):
            meta, warps = smp._launch_meta(1000, n_cols, greedy, use_k, use_p)
            for tl_name in sm._TL_NAME.values():
                assert (f"*{tl_name}", warps, tuple(sorted(meta.items()))) in listed, (n_cols, meta)
