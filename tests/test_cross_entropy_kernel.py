"""kernels.cross_entropy: loss and gradient parity with F.cross_entropy, ignore_index, bad targets (checked at once or
counted on the device), bad input, properties; on the kernel tests' device (CUDA when there is a GPU, else the CPU
through Triton's interpreter), with NaN-poisoned outputs (tests/conftest.py)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kernels  # noqa: F401  (sets up Triton's interpreter first)
from conftest import DEVICE
from hypothesis_or_skip import given, settings, st
from kernels import DeviceChecks, _runtime
from kernels.cross_entropy import cross_entropy, cross_entropy_reference

# fp32: 1e-6 in the interpreter (numpy's exp and log); a GPU's exp is ex2.approx (see test_softmax_kernel.RTOL32)
TOL = {torch.float64: 1e-12, torch.float32: 1e-6 if _runtime.INTERPRETED else 1e-5}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-300))


def _case(n_rows, n_cols, dtype, ignore: str, seed=0, ignore_index=-100):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n_rows, n_cols, generator=g) * 3).to(dtype)
    t = torch.randint(0, n_cols, (n_rows,), generator=g)
    if ignore == "some":
        t[::5] = ignore_index
    elif ignore == "all":
        t[:] = ignore_index
    return x.to(DEVICE), t.to(DEVICE)


def _both(x, t, reduction, ignore_index=-100, torch_dtype=None):
    """(loss, grad) from the kernel and from torch (in torch_dtype, default x's), same random upstream gradient."""
    a = x.detach().clone().requires_grad_()
    b = x.detach().to(torch_dtype or x.dtype).clone().requires_grad_()
    la = cross_entropy(a, t, ignore_index=ignore_index, reduction=reduction)
    lb = F.cross_entropy(b, t, ignore_index=ignore_index, reduction=reduction)
    up = (torch.rand(lb.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64) + 0.5).to(DEVICE)
    la.backward(up.to(la.dtype))
    lb.backward(up.to(lb.dtype))
    return la.detach(), lb.detach(), a.grad, b.grad


def _check_parity(x, t, reduction, ignore_index=-100):
    """Kernel vs F.cross_entropy: fp64 against fp64; fp32 against the exact (fp64) torch result within TOL (1e-6 in
    the interpreter), and against torch's own fp32 result within TOL plus torch's fp32 error (torch fp32 is itself
    ~2e-6 off for large rows, the kernel less: see test_training_shape)."""
    la, lt, ga, gt = _both(x, t, reduction, ignore_index, torch_dtype=torch.float64)
    assert la.dtype == x.dtype and ga.dtype == x.dtype and la.shape == lt.shape
    assert not torch.isnan(la).any() and not torch.isnan(ga).any()
    assert rel_err(la, lt) <= TOL[x.dtype]
    assert rel_err(ga, gt) <= TOL[x.dtype]
    if x.dtype == torch.float32:
        _, lb, _, gb = _both(x, t, reduction, ignore_index)
        assert rel_err(la, lb) <= TOL[torch.float32] + rel_err(lb, lt)
        assert rel_err(ga, gb) <= TOL[torch.float32] + rel_err(gb, gt)
    return ga


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ignore", ["none", "some"])
@pytest.mark.parametrize("n_cols", [1, 37, 1000, 5001])  # 1000: the even-length fp32 (packed) path
def test_matches_torch(dtype, reduction, ignore, n_cols):
    x, t = _case(40 if n_cols < 5000 else 9, n_cols, dtype, ignore, seed=n_cols)
    ga = _check_parity(x, t, reduction)
    if ignore == "some":
        assert (ga[::5] == 0).all()


@pytest.mark.parametrize("n_rows,n_cols", [(1280, 10000), (100, 10001)])
def test_training_shape(n_rows, n_cols):
    """The model's per-step shape (B*T = 1280 rows of a 10,000-word vocabulary), fp32; and an odd length."""
    x, t = _case(n_rows, n_cols, torch.float32, "some", seed=1)
    _check_parity(x, t, "mean")
    ls = cross_entropy(x, t, reduction="sum")
    assert rel_err(ls, F.cross_entropy(x.double(), t, reduction="sum")) <= TOL[torch.float32]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_every_target_ignored(dtype):
    x, t = _case(6, 11, dtype, "all")
    la, lb, ga, gb = _both(x, t, "mean")
    assert torch.isnan(la) and torch.isnan(lb)  # 0 / 0, exactly as torch
    assert torch.equal(ga, gb) and (ga == 0).all()
    la, lb, ga, gb = _both(x, t, "sum")
    assert la == 0 and lb == 0 and (ga == 0).all()
    # no rows at all: the same conventions
    e = torch.empty(0, 11, dtype=dtype, device=DEVICE)
    ti = torch.empty(0, dtype=torch.int64, device=DEVICE)
    assert torch.isnan(cross_entropy(e, ti)) and cross_entropy(e, ti, reduction="sum") == 0


@pytest.mark.parametrize("dtype,unit_roundoff", [(torch.bfloat16, 2**-8), (torch.float16, 2**-11)])
def test_custom_ignore_index_and_16_bit_logits(dtype, unit_roundoff):
    x, t = _case(30, 50, torch.float32, "some", ignore_index=7)
    t[t == 7] = 8
    t[::5] = 7
    _check_parity(x, t, "mean", ignore_index=7)
    xb = x.to(dtype)  # the kernel reads 16-bit logits as they are: no fp32 copy is needed
    lbf = cross_entropy(xb, t, ignore_index=7)
    assert lbf.dtype == dtype
    # fp32 accumulation inside: only the final rounding to the 16-bit dtype differs from the fp32 result
    exact = float(F.cross_entropy(xb.double(), t, ignore_index=7))
    assert abs(float(lbf) - exact) <= unit_roundoff * exact + TOL[torch.float32] * exact


def test_reference_matches_torch():
    x, t = _case(20, 30, torch.float64, "some")
    for red in ("mean", "sum", "none"):
        assert rel_err(cross_entropy_reference(x, t, reduction=red), F.cross_entropy(x, t, reduction=red)) < 1e-13


def test_non_contiguous_logits():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(33, 20, generator=g).to(DEVICE).t()  # (20, 33), column stride 20
    t = torch.randint(0, 33, (20,), generator=g).to(DEVICE)
    assert rel_err(cross_entropy(x, t), F.cross_entropy(x, t)) <= TOL[torch.float32]


@pytest.mark.parametrize("bad_target", [5, -1, 10**6, -(2**40)])
def test_bad_targets_are_never_read_and_poison_their_row(bad_target):
    """A target outside [0, V) is not used as an address: its row's loss and gradient are NaN, the other rows are
    exact; cross_entropy without checks= reads the flags at once and raises naming the target."""
    x, t = _case(6, 5, torch.float32, "none", seed=3)
    t[2] = bad_target
    with pytest.raises(ValueError, match=rf"targets\[2\] = {bad_target} is outside \[0, 5\)"):
        cross_entropy(x, t)
    checks = DeviceChecks(DEVICE)
    a = x.clone().requires_grad_()
    losses = cross_entropy(a, t, reduction="none", checks=checks)
    losses.backward(torch.ones_like(losses))
    ok = torch.arange(6, device=DEVICE) != 2
    assert torch.isnan(losses[2]) and torch.isnan(a.grad[2]).all()
    ref = F.cross_entropy(x[ok], t[ok], reduction="none")
    assert rel_err(losses.detach()[ok], ref) <= TOL[torch.float32] and torch.isfinite(a.grad[ok]).all()
    assert torch.isnan(cross_entropy(x, t, checks=checks))  # the mean too
    assert checks.counts()["targets"] == 2
    with pytest.raises(ValueError, match="2 cross_entropy targets outside"):
        checks.check()
    checks.check()  # reset: nothing more to report


def test_device_checks_cost_no_host_sync(host_syncs):
    """With a DeviceChecks the forward and backward read nothing back to the host (training steps); without, the
    eager target check reads one flag (one sync)."""
    x, t = _case(64, 100, torch.float32, "some", seed=4)
    checks = DeviceChecks(DEVICE)
    a = x.clone().requires_grad_()
    with host_syncs() as syncs:
        cross_entropy(a, t, checks=checks).backward()
    assert syncs.count == 0, syncs.calls
    with host_syncs() as syncs:
        cross_entropy(x, t)
    assert syncs.count == 1, syncs.calls
    checks.check()


def test_cpu_tensors_are_rejected_outside_the_interpreter(monkeypatch):
    monkeypatch.setattr(_runtime, "INTERPRETED", False)
    with pytest.raises(ValueError, match="logits must be a CUDA tensor"):
        cross_entropy(torch.randn(2, 3), torch.tensor([0, 1]))


def test_checks_must_be_on_the_logits_device():
    x, t = _case(4, 5, torch.float32, "none")
    with pytest.raises(ValueError, match="checks"):
        cross_entropy(x, t, checks=DeviceChecks("meta"))
    with pytest.raises(ValueError, match="checks"):
        cross_entropy(x, t, checks="yes")


def _bad(**override):
    args = dict(logits=torch.randn(4, 5), targets=torch.tensor([0, 1, 4, -100]), ignore_index=-100,
                reduction="mean")
    args.update(override)
    return {k: v.to(DEVICE) if isinstance(v, torch.Tensor) and v.device.type == "cpu" else v
            for k, v in args.items()}


@pytest.mark.parametrize("args,name", [
    (_bad(targets=torch.tensor([0, 1, 5, 2])), "targets"), (_bad(targets=torch.tensor([0, -1, 2, 2])), "targets"),
    (_bad(targets=torch.tensor([0, 1, 2, -100]), ignore_index=-1), "targets"),
    (_bad(targets=torch.tensor([0, 1, 2, 3], dtype=torch.int32)), "targets"),
    (_bad(targets=torch.tensor([0.0, 1.0, 2.0, 3.0])), "targets"), (_bad(targets=torch.tensor([0, 1, 2])), "targets"),
    (_bad(targets=[0, 1, 2, 3]), "targets"), (_bad(targets=torch.zeros(4, 1, dtype=torch.int64)), "targets"),
    (_bad(logits=torch.ones(4, 5, dtype=torch.complex64)), "logits"), (_bad(logits=torch.randn(5)), "logits"),
    (_bad(logits=torch.randn(4, 5, 2)), "logits"), (_bad(logits=torch.randn(4, 0)), "logits"),
    (_bad(logits=torch.randn(4, 5, device="meta")), "logits"), (_bad(reduction="avg"), "reduction"),
    (_bad(ignore_index=True), "ignore_index"), (_bad(ignore_index=1.5), "ignore_index"),
])
def test_bad_input_names_the_argument(args, name):
    with pytest.raises(ValueError, match=name):
        cross_entropy(**args)


@settings(max_examples=15, deadline=None)
@given(n_rows=st.integers(0, 40), n_cols=st.integers(1, 300), frac_ignored=st.floats(0.0, 1.0),
       reduction=st.sampled_from(["mean", "sum", "none"]), dtype=st.sampled_from([torch.float32, torch.float64]),
       seed=st.integers(0, 2**16))
def test_property_random_shapes_match_torch(n_rows, n_cols, frac_ignored, reduction, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n_rows, n_cols, generator=g) * 4).to(dtype)
    t = torch.randint(0, n_cols, (n_rows,), generator=g)
    t[torch.rand(n_rows, generator=g) < frac_ignored] = -100
    x, t = x.to(DEVICE), t.to(DEVICE)
    la, lb, ga, gb = _both(x, t, reduction, torch_dtype=torch.float64)  # against the exact result
    if lb.numel() and torch.isnan(lb).all():
        assert torch.isnan(la).all()
    elif lb.numel():
        assert rel_err(la, lb) <= TOL[dtype]
        if gb.numel() and gb.abs().max() > 0:
            assert rel_err(ga, gb) <= TOL[dtype]


@settings(max_examples=10, deadline=None)
@given(logit_shape=st.lists(st.integers(0, 4), min_size=0, max_size=3), n_targets=st.integers(0, 5))
def test_property_invalid_shapes_raise(logit_shape, n_targets):
    x = torch.randn(logit_shape, device=DEVICE)  # a list: also the 0-d case
    t = torch.zeros(n_targets, dtype=torch.int64, device=DEVICE)
    valid = len(logit_shape) == 2 and logit_shape[1] >= 1 and n_targets == logit_shape[0]
    if valid:
        cross_entropy(x, t)
    else:
        with pytest.raises(ValueError, match="logits|targets"):
            cross_entropy(x, t)
