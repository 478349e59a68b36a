"""kernels.softmax: parity with a float64 reference, invariants, gradients, bad input, property tests, on the kernel
tests' device (CUDA when there is a GPU, else the CPU through Triton's interpreter). Outputs are NaN-poisoned by
tests/conftest.py."""
from __future__ import annotations

import math

import pytest
import torch

import kernels  # noqa: F401  (sets up Triton's interpreter first)
from conftest import DEVICE
from hypothesis_or_skip import given, settings, st
from kernels import _runtime, _utils
from kernels.softmax import softmax, softmax_reference

TEMPERATURES = (0.5, 1.0, 2.0)
# fp32 relative tolerance: the interpreter's numpy exp is within an ulp or two; a GPU computes exp(d) as
# ex2.approx(d * log2 e), whose error grows with |d| (the product's rounding): 1e-5, the fp32 bound, covers
# |d| up to ~60, below which every entry that is not ~0 (atol) lies.
RTOL32 = 2e-6 if _runtime.INTERPRETED else 1e-5


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
    return x.to(DEVICE)


@pytest.mark.parametrize("n_cols", [1, 7, 1023, 10001, 70000])
@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_matches_float64_reference(n_cols, temperature):
    n_rows = 6 if n_cols <= 1023 else 3
    x = _rows(n_rows, n_cols, seed=n_cols)
    y = softmax(x, temperature)
    ref = softmax_reference(x.double(), temperature)
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert not torch.isnan(y).any()
    torch.testing.assert_close(y.double(), ref, rtol=RTOL32, atol=1e-12)
    ones = torch.ones(n_rows, dtype=torch.float64, device=DEVICE)
    torch.testing.assert_close(y.double().sum(-1), ones, rtol=0, atol=RTOL32)


@pytest.mark.parametrize("dtype,rtol,atol", [(torch.float64, 1e-13, 1e-300), (torch.bfloat16, 8e-3, 1e-3),
                                             (torch.float16, 1e-3, 1e-4)])
def test_other_dtypes(dtype, rtol, atol):
    """fp64 computes in fp64; bf16 / fp16 accumulate in fp32 and round the output once (2^-8 / 2^-11)."""
    x = _rows(5, 300, seed=1).to(dtype)
    for t in (0.7, 2.0):  # 0.7 is not exact in fp32: the fp64 path keeps it exact
        y = softmax(x, t)
        assert y.dtype == dtype
        torch.testing.assert_close(y.double(), softmax_reference(x.double(), t), rtol=rtol, atol=atol)


def test_shift_invariance_and_shapes():
    g = torch.Generator().manual_seed(3)
    # values on a 1/8 grid plus a power of two: the shifted logits are exact in fp32
    x = (torch.randint(-50, 50, (2, 3, 333), generator=g).float() / 8).to(DEVICE)
    y = softmax(x, 1.0)
    torch.testing.assert_close(softmax(x + 1024.0, 1.0), y, rtol=1e-6, atol=0)
    torch.testing.assert_close(softmax(x - 4096.0, 0.5), softmax(x, 0.5), rtol=1e-6, atol=0)
    assert y.shape == x.shape
    # non-contiguous input (a transposed view) and a 1-D input
    xt = torch.randn(40, 9, generator=g).to(DEVICE).t()
    torch.testing.assert_close(softmax(xt, 2.0), torch.softmax(xt / 2.0, -1), rtol=RTOL32, atol=1e-7)
    torch.testing.assert_close(softmax(x[0, 0], 1.0), torch.softmax(x[0, 0], -1), rtol=RTOL32, atol=1e-7)
    assert softmax(torch.empty(0, 5, device=DEVICE), 1.0).shape == (0, 5)


def test_all_neg_inf_row_is_nan_like_torch():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 50, generator=g)
    x[1] = float("-inf")
    x = x.to(DEVICE)
    y = softmax(x, 1.0)
    ref = torch.softmax(x, -1)
    assert torch.isnan(y[1]).all() and torch.isnan(ref[1]).all()
    assert not torch.isnan(y[[0, 2]]).any()
    torch.testing.assert_close(y[[0, 2]], ref[[0, 2]], rtol=RTOL32, atol=1e-7)
    # -inf in the first column block only must not poison the running sum
    z = torch.randn(1, 5000, generator=g)
    z[0, :3000] = float("-inf")
    z = z.to(DEVICE)
    torch.testing.assert_close(softmax(z, 1.0), torch.softmax(z, -1), rtol=RTOL32, atol=1e-8)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, RTOL32)])
@pytest.mark.parametrize("n_cols", [1, 37, 3000])
def test_gradients_match_torch(dtype, tol, n_cols):
    g = torch.Generator().manual_seed(n_cols)
    x = (torch.randn(4, n_cols, generator=g) * 2).to(dtype).to(DEVICE)
    up = torch.randn(4, n_cols, generator=g).to(dtype).to(DEVICE)
    for t in (0.5, 1.3):
        a = x.clone().requires_grad_()
        b = x.clone().requires_grad_()
        (softmax(a, t) * up).sum().backward()
        (torch.softmax(b / t, -1) * up).sum().backward()
        assert not torch.isnan(a.grad).any()
        scale = b.grad.abs().max().clamp_min(1e-30)
        assert ((a.grad - b.grad).abs().max() / scale).item() <= tol


def test_gradcheck_fp64():
    x = torch.randn(3, 11, dtype=torch.float64).to(DEVICE).requires_grad_()
    assert torch.autograd.gradcheck(lambda a: softmax(a, 0.8), (x,))


@pytest.mark.parametrize("temperature", [0, 0.0, -1.0, float("nan"), float("inf"), -float("inf"), "1", True, None])
def test_bad_temperature(temperature):
    with pytest.raises(ValueError, match="temperature"):
        softmax(torch.randn(2, 3, device=DEVICE), temperature)


@pytest.mark.parametrize("logits", [torch.ones(2, 3, dtype=torch.int64), torch.ones(2, 3, dtype=torch.complex64),
                                    torch.ones(2, 3, device="meta"), torch.tensor(1.0), torch.ones(2, 0),
                                    [[1.0, 2.0]]])
def test_bad_logits(logits):
    logits = logits.to(DEVICE) if isinstance(logits, torch.Tensor) and logits.device.type == "cpu" else logits
    with pytest.raises(ValueError, match="logits"):
        softmax(logits, 1.0)


def test_cpu_tensors_are_rejected_outside_the_interpreter(monkeypatch):
    """Compiled for a GPU, softmax refuses CPU logits with a ValueError naming them (instead of failing inside
    Triton's launcher)."""
    monkeypatch.setattr(_runtime, "INTERPRETED", False)
    with pytest.raises(ValueError, match="logits must be a CUDA tensor"):
        softmax(torch.randn(2, 3), 1.0)


@settings(max_examples=15, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=0, max_size=2), n_cols=st.integers(1, 300),
       temperature=st.floats(0.05, 20.0), seed=st.integers(0, 2**16))
def test_property_random_shapes_match_reference(shape, n_cols, temperature, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(*shape, n_cols, generator=g) * 4).to(DEVICE)
    y = softmax(x, temperature)
    assert y.shape == x.shape
    # z = x / T is rounded to fp32 (as in torch's own softmax(x / T)): an error of |z| * 2^-24 in the exponent,
    # i.e. that much relative error in y, which at T = 0.05 (|z| up to ~300) exceeds 1e-5 (hypothesis found
    # T = 0.0547: 1.3e-5); hence the bound 1e-5 + 2 max|z| 2^-24
    rtol = 1e-5 + 2 * float(x.abs().max()) / temperature * 2.0**-24 if x.numel() else 1e-5
    torch.testing.assert_close(y.double(), softmax_reference(x.double(), temperature), rtol=rtol, atol=1e-12)


@settings(max_examples=10, deadline=None)
@given(shape=st.lists(st.integers(0, 4), min_size=0, max_size=3))
def test_property_invalid_shapes_raise(shape):
    x = torch.randn(*shape, 0, device=DEVICE) if shape else torch.tensor(math.pi, device=DEVICE)  # empty or 0-d
    with pytest.raises(ValueError, match="logits"):
        softmax(x, 1.0)


def _compiled(launch):
    """What Triton compiles for a launch (kernel, warps, stages, constants, signature, divisibility)."""
    cfg = launch.compile_config("probe")
    return (cfg.fn, cfg.num_warps, cfg.num_stages, tuple(sorted((k, repr(v)) for k, v in cfg.constexprs.items())),
            tuple(sorted(cfg.signature.items())), tuple(sorted(cfg.attrs)))


def test_gpu_compile_configs_cover_the_model_launches(monkeypatch):
    """What the row kernels compile on a GPU (INTERPRETED patched off) at the model's shapes -- training's
    (1280, 10,000) logits in every dtype, one generation row, a batch of 16 -- is, specialisation included, in
    their gpu_compile_configs(): the compile report measures the kernels those launches run."""
    import kernels.cross_entropy as ce
    import kernels.sample as smp
    import kernels.softmax as sm

    listed = {mod: {(c.fn, c.num_warps, c.num_stages, tuple(sorted((k, repr(v)) for k, v in c.constexprs.items())),
                     tuple(sorted(c.signature.items())), tuple(sorted(c.attrs))) for c in mod.gpu_compile_configs()}
              for mod in (sm, ce, smp)}
    monkeypatch.setattr(_runtime, "INTERPRETED", False)
    meta = _utils.meta_tensor
    for dt in _utils.FLOAT_DTYPES:
        for n_rows in (1280, 1, 16):
            x = meta((n_rows, 10_000), dt)
            assert _compiled(sm._forward_launch(x, meta((n_rows, 10_000), dt), 0.8)) in listed[sm], (dt, n_rows)
            assert _compiled(sm._backward_launch(x, x, x, 0.8)) in listed[sm], (dt, n_rows)
            acc = torch.float64 if dt == torch.float64 else torch.float32
            t, v = meta(n_rows, torch.int64), meta(n_rows, acc)
            assert _compiled(ce._forward_launch(x, t, v, v, meta(n_rows, torch.int32), -100)) in listed[ce]
            assert _compiled(ce._backward_launch(x, t, v, meta((), acc), x, -100)) in listed[ce]
            for temperature, top_k, top_p in ((0.0, None, None), (0.8, None, None), (0.8, 40, None),
                                              (0.8, None, 0.9), (0.8, 40, 0.9)):
                launch = smp._launch(x, meta(n_rows, torch.int64), temperature, 987654321, top_k, top_p)
                assert _compiled(launch) in listed[smp], (dt, n_rows, temperature, top_k, top_p)


def test_row_lengths_and_seeds_specialise_as_documented():
    """Row length and strides specialise (divisible by 16 or not); the row count, the seed and top_k do not."""
    import kernels.sample as smp
    import kernels.softmax as sm

    meta = _utils.meta_tensor
    keys = {_compiled(sm._forward_launch(meta((r, 10_000), torch.float32), meta((r, 10_000), torch.float32), 1.0))
            for r in (2, 16, 17, 1280)}
    assert len(keys) == 1
    odd = _compiled(sm._forward_launch(meta((16, 10_001), torch.float32), meta((16, 10_001), torch.float32), 1.0))
    assert odd not in keys
    seeds = {_compiled(smp._launch(meta((4, 10_000), torch.float32), meta(4, torch.int64), 0.8, seed, k, None))
             for seed in (0, 1, 16, 2**31 + 17) for k in (1, 16, 40)}
    assert len(seeds) == 1
