"""Host synchronisations in the hot loops, counted (tests/conftest.py's host_syncs: item / bool / float / int,
data-dependent shapes, .cpu() / .tolist() / .numpy(), device-to-host copies), so that they cannot creep back.

The loops are built from the kernels' API the way rnnlm's training and generation loops use it (rnnlm is wired to
these entry points separately): a training step of each backend with its guards kept on the device --
cross_entropy(checks=), the finite check of loss and gradient norm counted in a DeviceChecks and handed to fused
Adam as found_inf (so a non-finite step is skipped on the device, as the old host check skipped it) -- read once
per logging window; and a generation step: embedding, rnn_step (one launch per layer), the output layer,
sample(checks=). On the CPU these are the same calls that would synchronise a GPU.

Counts (also in the issue note): a training step of either backend 0; a generated token 0; the logging window's
checks.check() 1. Before this change: a training step 1 on cudnn (bool(isfinite(loss + norm))) and 2 on triton
(+ cross_entropy's target check); a generated token 1 (sample's row check) plus rnn() on a one-token sequence.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kernels  # noqa: F401
from conftest import DEVICE
from kernels import DeviceChecks
from kernels.cross_entropy import cross_entropy
from kernels.rnn import rnn, rnn_step
from kernels.sample import sample

STEP_SYNCS = {"cudnn": 0, "triton": 0}  # per training step, guards on the device
TOKEN_SYNCS = 0  # per generated token
CHECK_SYNCS = 1  # per checks.check(), once per logging window
V, E, H, L, B, T = 50, 8, 16, 2, 4, 5


class TinyLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embedding = torch.nn.Embedding(V, E)
        self.rnn = torch.nn.RNN(E, H, L, batch_first=True)
        self.fc = torch.nn.Linear(H, V)

    def loss(self, x, y, backend: str, checks: DeviceChecks):
        emb = self.embedding(x)
        if backend == "triton":
            out, _ = rnn(emb, None, self.rnn._flat_weights, num_layers=L, batch_first=True, training=True)
            return cross_entropy(self.fc(out).reshape(-1, V), y.reshape(-1), checks=checks)
        out, _ = self.rnn(emb)
        return F.cross_entropy(self.fc(out).reshape(-1, V), y.reshape(-1))


def train_step(model, opt, x, y, backend, checks):
    """One step with every guard on the device: nothing is read back to the host."""
    opt.zero_grad(set_to_none=True)
    loss = model.loss(x, y, backend, checks)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0, foreach=True)
    nonfinite = ~torch.isfinite(loss.detach() + norm)
    checks.add("nonfinite", nonfinite)
    opt.found_inf = nonfinite.to(torch.float32)  # fused Adam skips the update on the device when it is 1
    opt.grad_scale = None
    opt.step()
    return loss.detach()


def _setup():
    model = TinyLM().to(DEVICE)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, fused=True)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, V, (B, T), generator=g).to(DEVICE)
    y = torch.randint(0, V, (B, T), generator=g).to(DEVICE)
    return model, opt, x, y


def test_counter_sees_every_kind_of_host_read(host_syncs):
    t = torch.ones(3, device=DEVICE)
    with host_syncs() as syncs:
        bool(t.sum() > 0), float(t[0]), int(t[1]), t[2].item(), t.tolist(), t.cpu(), t.nonzero()
    assert syncs.count == 7, syncs.calls
    with host_syncs() as syncs:
        t.add_(1), torch.isfinite(t).all(), t.sum().to(torch.float64)
    assert syncs.count == 0, syncs.calls
    with torch.inference_mode(), host_syncs() as syncs:  # inference mode hides tensors from dispatch modes
        u = torch.ones(3, device=DEVICE)
        bool(u.sum() > 0), float(u[0]), u.tolist(), torch.nonzero(u)
    assert syncs.count == 4, syncs.calls
    if DEVICE.type == "cuda":  # device-to-host copies: a blocking one waits, a non-blocking one into pinned memory not
        pinned = torch.empty(3, pin_memory=True)
        with host_syncs() as syncs:
            pinned.copy_(t, non_blocking=True)
            torch.empty(3).copy_(t)
        assert syncs.calls == ["aten.copy_ to cpu"], syncs.calls


@pytest.mark.parametrize("backend", ["cudnn", "triton"])
def test_training_step_reads_nothing_back(backend, host_syncs):
    model, opt, x, y = _setup()
    checks = DeviceChecks(DEVICE)
    train_step(model, opt, x, y, backend, checks)  # the first step allocates the optimizer's state
    losses = []
    with host_syncs() as syncs:
        for _ in range(3):
            losses.append(train_step(model, opt, x, y, backend, checks))
    assert syncs.count == 3 * STEP_SYNCS[backend], syncs.calls
    with host_syncs() as syncs:
        checks.check()  # the logging window's one read: nothing to report
        window_mean = float(torch.stack(losses).mean())  # the window's loss, read with it
    assert syncs.count == CHECK_SYNCS + 1, syncs.calls
    assert window_mean > 0


@pytest.mark.parametrize("backend", ["cudnn", "triton"])
def test_nonfinite_step_is_skipped_on_the_device_and_reported(backend):
    """The guard holds without a host read: a step whose gradient is NaN leaves every parameter as it was (fused
    Adam's found_inf), and the logging window's check reports it."""
    model, opt, x, y = _setup()
    checks = DeviceChecks(DEVICE)
    train_step(model, opt, x, y, backend, checks)
    before = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        model.fc.bias[0] = float("nan")
    train_step(model, opt, x, y, backend, checks)
    with torch.no_grad():
        model.fc.bias[0] = before[-1][0]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(ValueError, match="1 non-finite"):
        checks.check()


def test_bad_targets_are_reported_at_the_check(host_syncs):
    model, opt, x, y = _setup()
    checks = DeviceChecks(DEVICE)
    y_bad = y.clone()
    y_bad[0, 0] = V + 3
    with host_syncs() as syncs:
        train_step(model, opt, x, y_bad, "triton", checks)
    assert syncs.count == 0, syncs.calls
    with pytest.raises(ValueError, match="1 cross_entropy targets outside") as info:
        checks.check()
    assert "1 non-finite" in str(info.value)  # the NaN loss it caused was skipped too


def test_generation_step_reads_nothing_back(host_syncs):
    model, _, x, _ = _setup()
    model.eval()
    checks = DeviceChecks(DEVICE)
    with torch.inference_mode():
        token = x[:1, 0]  # (1,)
        h = torch.zeros(L, 1, H, device=DEVICE)
        out = torch.empty(8, dtype=torch.int64, device=DEVICE)
        with host_syncs() as syncs:
            for t in range(8):
                last, h = rnn_step(model.embedding(token), h, model.rnn._flat_weights, num_layers=L)
                token = sample(model.fc(last), 0.8, seed=1000 + t, checks=checks)
                out[t] = token[0]
        assert syncs.count == 8 * TOKEN_SYNCS, syncs.calls
        with host_syncs() as syncs:
            checks.check()
            ids = out.tolist()  # the caller reads the text once, at the end
        assert syncs.count == CHECK_SYNCS + 1
    assert all(0 <= i < V for i in ids)
