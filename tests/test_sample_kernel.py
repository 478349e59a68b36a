"""kernels.sample: distribution (chi-square), determinism, greedy ties, top-k / top-p support, bad rows (checked at once
or counted on the device), bad input; on the kernel tests' device (CUDA when there is a GPU, else the CPU through
Triton's interpreter), with poisoned outputs (tests/conftest.py: an unwritten id would be -7 and raise)."""
from __future__ import annotations

import pytest
import torch

import kernels  # noqa: F401  (sets up Triton's interpreter first)
from conftest import DEVICE
from hypothesis_or_skip import given, settings, st
from kernels import DeviceChecks, _runtime
from kernels.sample import sample, sample_distribution, sample_reference

# One fixed row of 8 logits, replicated to many rows with expand() (no copy): one program draws thousands.
ROW = torch.tensor([2.0, 1.0, 0.5, 0.0, -0.5, -1.0, 1.5, -2.0], device=DEVICE)


def randn(*shape, seed):
    """randn drawn on the CPU (the same numbers on every device), on the tests' device."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE)
N_DRAWS = 100_000


def chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's chi-square goodness of fit; the p-value is the regularised upper incomplete gamma function."""
    keep = probs > 0
    expected = probs[keep].double() * counts.sum()
    stat = ((counts[keep].double() - expected) ** 2 / expected).sum()
    df = torch.tensor((int(keep.sum()) - 1) / 2, dtype=torch.float64)
    return float(torch.special.gammaincc(df, stat / 2))


def test_chi_square_helper_rejects_a_wrong_distribution():
    probs = torch.full((8,), 1 / 8, dtype=torch.float64)
    fair = torch.full((8,), 12_500.0)
    assert chi_square_p_value(fair, probs) > 0.99
    skewed = fair.clone()
    skewed[0] += 600
    skewed[1] -= 600
    assert chi_square_p_value(skewed, probs) < 1e-6


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_frequencies_match_softmax(temperature):
    ids = sample(ROW.expand(N_DRAWS, ROW.numel()), temperature, seed=1234 + int(temperature * 10))
    counts = torch.bincount(ids, minlength=ROW.numel()).cpu()
    probs = torch.softmax(ROW.double() / temperature, -1).cpu()
    assert chi_square_p_value(counts, probs) > 0.001


@pytest.mark.parametrize("top_k,top_p", [(3, None), (None, 0.7), (5, 0.8)])
def test_filtered_frequencies_match_filtered_softmax(top_k, top_p):
    ids = sample(ROW.expand(20_000, ROW.numel()), 1.0, seed=99, top_k=top_k, top_p=top_p)
    counts = torch.bincount(ids, minlength=ROW.numel()).cpu()
    probs = sample_distribution(ROW, 1.0, top_k, top_p).cpu()
    assert (counts[probs == 0] == 0).all()
    assert chi_square_p_value(counts, probs) > 0.001


def test_same_seed_same_tokens_other_seed_other_tokens():
    x = randn(300, 50, seed=0)
    a, b, c = sample(x, 1.0, seed=7), sample(x, 1.0, seed=7), sample(x, 1.0, seed=8)
    assert torch.equal(a, b)
    assert (a != c).float().mean() > 0.5
    # the noise is keyed by (seed, row, column): a prefix of the rows draws the same tokens on its own,
    # and large seeds (above 2**31) work
    assert torch.equal(sample(x[:17], 1.0, seed=7), a[:17])
    big = 2**62 - 1
    assert torch.equal(sample(x, 1.0, seed=big), sample(x, 1.0, seed=big))


def test_temperature_zero_is_argmax_ties_to_lower_index():
    x = randn(6, 20000, seed=1)
    x[0, 3000] = x[0, 19000] = 50.0  # tie across column blocks
    x[1, 5] = x[1, 6] = 50.0  # tie inside one block
    x[2, 19999] = 50.0  # last column
    x[3, 0] = 50.0
    x[4] = 1.0  # all equal
    ids = sample(x, 0.0, seed=0)
    assert ids.tolist()[:5] == [3000, 5, 19999, 0, 0]
    assert ids[5] == x[5].argmax()
    assert torch.equal(ids, sample(x, 0, seed=5, top_k=3, top_p=0.5))  # filters never change the argmax


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_other_dtypes(dtype):
    x = randn(4, 3, 100, seed=2).to(dtype)
    ids = sample(x, 0.0, seed=0)
    assert ids.shape == (4, 3) and ids.dtype == torch.int64
    assert torch.equal(ids, x.float().argmax(-1))
    ids = sample(x, 1.0, seed=0, top_k=2)
    top2 = x.float().topk(2, dim=-1).indices
    assert (top2 == ids[..., None]).any(-1).all()


@pytest.mark.parametrize("n_cols", [100, 20000])  # one tile per row, and a row looped over column blocks
def test_top_k_never_outside_k_largest(n_cols):
    n_rows = 64 if n_cols == 100 else 2
    x = randn(n_rows, n_cols, seed=n_cols) * 3
    for k, t, seed in ((1, 1.0, 0), (5, 0.5, 1), (17, 2.0, 2)) if n_cols == 100 else ((17, 2.0, 2),):
        ids = sample(x, t, seed=seed, top_k=k)
        kth = x.topk(k, dim=-1).values[:, -1]
        assert (x.gather(1, ids[:, None])[:, 0] >= kth).all()
    assert (sample(x, 1.0, seed=3, top_k=1) == x.argmax(-1)).all()


@pytest.mark.parametrize("n_cols", [100, 20000])
def test_top_p_never_outside_smallest_set_reaching_p(n_cols):
    n_rows = 64 if n_cols == 100 else 2
    x = randn(n_rows, n_cols, seed=n_cols + 1) * 3
    cases = ((0.5, 1.0, 0, None), (0.9, 0.5, 1, None), (0.3, 2.0, 2, None), (0.8, 1.0, 3, 10))
    for p, t, seed, k in cases if n_cols == 100 else cases[1::2]:
        ids = sample(x, t, seed=seed, top_p=p, top_k=k)
        support = sample_distribution(x, t, top_k=k, top_p=p) > 0
        assert support.gather(1, ids[:, None]).all()


def test_all_neg_inf_or_nan_row_raises():
    x = randn(4, 30, seed=5)
    x[2] = float("-inf")
    for t in (0.0, 1.0):
        with pytest.raises(ValueError, match="row 2"):
            sample(x, t, seed=0)
    y = randn(3, 30, seed=6)
    y[1, 7] = float("nan")
    with pytest.raises(ValueError, match="row 1"):
        sample(y, 1.0, seed=0, top_p=0.9)
    # -inf entries that leave something finite are fine and never drawn
    z = randn(200, 30, seed=7)
    z[:, ::2] = float("-inf")
    assert (sample(z, 1.0, seed=1) % 2 == 1).all()


def test_bad_rows_are_counted_on_the_device_with_checks():
    """With a DeviceChecks, a bad row yields token 0 (a valid id to feed back) and is counted on the device; the
    good rows draw exactly what they draw without checks; check() reports the count and resets it."""
    x = randn(5, 30, seed=8)
    x[1] = float("-inf")
    x[3, 4] = float("nan")
    checks = DeviceChecks(DEVICE)
    ids = sample(x, 1.0, seed=11, checks=checks)
    assert ids[1] == 0 and ids[3] == 0
    repaired = x.clone()
    repaired[1] = repaired[3] = 0.0
    good = torch.tensor([0, 2, 4], device=DEVICE)
    assert torch.equal(ids[good], sample(repaired, 1.0, seed=11)[good])  # noise keyed by (seed, row, column)
    assert checks.counts()["logits"] == 2
    with pytest.raises(ValueError, match="2 sample rows of logits"):
        checks.check()
    checks.check()


def test_device_checks_cost_no_host_sync(host_syncs):
    """A generation step samples with no host read when given a DeviceChecks; the eager check costs one."""
    x = randn(4, 1000, seed=9)
    checks = DeviceChecks(DEVICE)
    with host_syncs() as syncs:
        for step in range(3):
            sample(x, 0.8, seed=step, checks=checks, top_k=50)
    assert syncs.count == 0, syncs.calls
    with host_syncs() as syncs:
        sample(x, 0.8, seed=0)
    assert syncs.count == 1, syncs.calls
    checks.check()


def test_every_row_is_written():
    """Outputs are poisoned with -7 (tests/conftest.py): an unwritten row would raise as a bad row."""
    ids = sample(randn(1000, 13, seed=10), 1.0, seed=0)
    assert ids.min() >= 0 and ids.max() < 13


def test_cpu_tensors_are_rejected_outside_the_interpreter(monkeypatch):
    monkeypatch.setattr(_runtime, "INTERPRETED", False)
    with pytest.raises(ValueError, match="logits must be a CUDA tensor"):
        sample(torch.randn(2, 3), 1.0, seed=0)


BAD = [
    (dict(temperature=-1.0), "temperature"), (dict(temperature=float("nan")), "temperature"),
    (dict(temperature=float("inf")), "temperature"), (dict(temperature="1"), "temperature"),
    (dict(top_k=0), "top_k"), (dict(top_k=-3), "top_k"), (dict(top_k=2.5), "top_k"), (dict(top_k=True), "top_k"),
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(top_p=-0.1), "top_p"),
    (dict(top_p=float("nan")), "top_p"), (dict(seed=-1), "seed"), (dict(seed=2**62), "seed"),
    (dict(seed=1.0), "seed"), (dict(logits=torch.ones(2, 3, dtype=torch.int32)), "logits"),
    (dict(logits=torch.ones(2, 3, device="meta")), "logits"), (dict(logits=torch.ones(3, 0)), "logits"),
    (dict(logits=torch.tensor(2.0)), "logits"), (dict(checks="yes"), "checks"),
    (dict(checks=DeviceChecks("meta")), "checks"),
]


@pytest.mark.parametrize("override,name", BAD)
def test_bad_input_names_the_argument(override, name):
    args = dict(logits=torch.randn(2, 3, device=DEVICE), temperature=1.0, seed=0, top_k=None, top_p=None)
    args.update({k: v.to(DEVICE) if isinstance(v, torch.Tensor) and v.device.type == "cpu" else v
                 for k, v in override.items()})
    with pytest.raises(ValueError, match=name):
        sample(**args)


def test_reference_draws_from_the_same_support():
    x = randn(50, 40, seed=12)
    ids = sample_reference(x, 1.0, seed=0, top_k=4)
    assert (x.gather(1, ids[:, None])[:, 0] >= x.topk(4, dim=-1).values[:, -1]).all()
    assert torch.equal(sample_reference(x, 0.0, seed=0), x.argmax(-1))


@settings(max_examples=15, deadline=None)
@given(shape=st.lists(st.integers(1, 4), min_size=0, max_size=2), n_cols=st.integers(1, 300),
       temperature=st.sampled_from([0.0, 0.3, 1.0, 3.0]), top_k=st.one_of(st.none(), st.integers(1, 400)),
       top_p=st.one_of(st.none(), st.floats(0.05, 1.0)), seed=st.integers(0, 2**40))
def test_property_random_shapes(shape, n_cols, temperature, top_k, top_p, seed):
    x = randn(*shape, n_cols, seed=seed % 2**31) * 2
    ids = sample(x, temperature, seed, top_k=top_k, top_p=top_p)
    assert ids.shape == x.shape[:-1] and ids.dtype == torch.int64
    support = sample_distribution(x, temperature, top_k, top_p) > 0
    assert support.reshape(-1, n_cols).gather(1, ids.reshape(-1, 1)).all()
    if temperature == 0.0:
        assert torch.equal(ids, x.argmax(-1))


@settings(max_examples=10, deadline=None)
@given(shape=st.lists(st.integers(0, 4), min_size=0, max_size=3))
def test_property_invalid_shapes_raise(shape):
    x = torch.randn(*shape, 0, device=DEVICE) if shape else torch.tensor(1.0, device=DEVICE)
    with pytest.raises(ValueError, match="logits"):
        sample(x, 1.0, seed=0)
