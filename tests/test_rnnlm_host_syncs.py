"""Host reads in rnnlm's own hot loops, counted with tests/conftest.py's host_syncs (item / bool / float / int,
data-dependent shapes, .cpu() / .tolist() / .numpy(), device-to-host copies), through the real entry points:
rnnlm.training.step.TrainStep, rnnlm.evaluation.evaluate_tokens and rnnlm.inference.generate_ids. On the CPU these
are the calls that would make a GPU's host wait.

Counts: a training step 0 on either backend (with a fused optimizer; the NaN guard and the kernels' checks count on
the device), TrainStep.check() 1 (at each log); a whole run of rnnlm.fit the same whatever its number of steps
between log lines (the guard 1 and the window's mean loss 1 per log, the validation and test sums 1 each); an
evaluation 1 whatever its number of windows; a generated token 0 on either backend (the triton decoder's sampling
checks: 1 read at the end of generate_ids).
"""
from __future__ import annotations

import pytest
import torch

from conftest import DEVICE
from rnnlm.evaluation import evaluate_tokens
from rnnlm.inference.generation import generate_ids
from rnnlm.model import ModelConfig, WordRNN
from rnnlm.training.config import TrainConfig
from rnnlm.training.nan_guard import NonFiniteError
from rnnlm.training.step import TrainStep, make_optimizer

V, E, H, L, B, T = 40, 8, 12, 2, 3, 5
STEP_SYNCS = 0    # per training step, both backends
CHECK_SYNCS = 1   # per TrainStep.check(), once per log
EVAL_SYNCS = 1    # per evaluation, whatever the number of windows
TOKEN_SYNCS = 0   # per generated token, both backends
SAVE_SYNCS = 1    # per checkpoint written, stream batching: its carried hidden state to the host
OOV_READS = 1     # per OOV rate printed (validation, test): a count over the split, which lives on the CPU
LOAD_READS = 1    # per checkpoint loaded (best.pt, for the test perplexity): its weights checked finite at once

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(backend: str) -> WordRNN:
    torch.manual_seed(0)
    return WordRNN(ModelConfig(vocab_size=V, embed_size=E, hidden_size=H, num_layers=L), backend=backend).to(DEVICE)


def _batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, V, (B, T), generator=g).to(DEVICE), torch.randint(0, V, (B, T), generator=g).to(DEVICE))


def _train_step(model, optimizer=None) -> TrainStep:
    optimizer = optimizer or make_optimizer(list(model.parameters()), lr=1e-2)
    return TrainStep(model, optimizer, clip=5.0, precision="fp32", device=DEVICE)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_training_steps_read_nothing_back_until_the_log(backend, host_syncs):
    model = _model(backend)
    step = _train_step(model)
    assert step.optimizer.defaults.get("fused"), "this torch has fused Adam on this device"
    x, y = _batch()
    step(x, y, None, 1)  # the first step allocates the optimizer's state
    with host_syncs() as syncs:
        hidden = None
        for number in range(2, 5):
            loss, hidden = step(x, y, hidden, number)
            hidden = hidden.detach()
    assert syncs.count == 3 * STEP_SYNCS, syncs.calls
    with host_syncs() as syncs:
        step.check()
    assert syncs.count == CHECK_SYNCS, syncs.calls
    assert torch.isfinite(loss)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_a_training_run_reads_the_same_whatever_its_number_of_steps(backend, tiny_corpus, tmp_path, host_syncs):
    """rnnlm.fit end to end with one log line at the end: 2 steps and 6 steps make the same host reads."""
    import rnnlm

    calls = {}
    for steps in (2, 6):
        cfg = TrainConfig(data=str(tiny_corpus), out=str(tmp_path / str(steps)), max_steps=steps, log_every=100,
                          eval_every=100, sample_length=0, embed_size=8, hidden_size=12, seq_len=6, batch_size=3,
                          backend=backend, device=DEVICE.type, progress=False)
        with host_syncs() as syncs:
            assert rnnlm.fit(cfg).status == "finished"
        calls[steps] = sorted(syncs.calls)
    # one log line (the guard, the window's loss), two evaluations (validation, test), two checkpoints (last.pt,
    # best.pt), two OOV rates, best.pt loaded back
    assert calls[6] == calls[2], (calls[2], calls[6])
    assert len(calls[2]) == CHECK_SYNCS + 1 + 2 * EVAL_SYNCS + 2 * SAVE_SYNCS + 2 * OOV_READS + LOAD_READS, calls[2]


def _poison_bias(model, value=float("nan")):
    with torch.no_grad():
        model.fc.bias[0] = value


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("fused", [True, False])
def test_a_non_finite_step_and_every_later_one_are_skipped_and_reported_at_the_check(backend, fused):
    """The guard holds without a host read: from the first step whose loss is NaN on, fused Adam's found_inf leaves
    parameters and optimizer state as they were (a foreach Adam reads the flag and skips step() on the host);
    check() names that step."""
    model = _model(backend)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, fused=fused, foreach=None if fused else True)
    step = _train_step(model, opt)
    x, y = _batch()
    step(x, y, None, 1)
    step.check()
    params = [p.detach().clone() for p in model.parameters()]
    state = {k: v.clone() for p in model.parameters() for k, v in opt.state[p].items()}
    bias0 = model.fc.bias[0].item()
    _poison_bias(model)
    step(x, y, None, 2)          # NaN loss: skipped
    _poison_bias(model, bias0)
    step(x, y, None, 3)          # finite again, but after the guard tripped: skipped too
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))
    after = {k: v for p in model.parameters() for k, v in opt.state[p].items()}
    assert all(torch.equal(state[k], after[k]) for k in state)  # moments and step counts untouched
    with pytest.raises(NonFiniteError, match=r"^step 2: the loss is nan and the gradient norm nan$"):
        step.check()


def test_bad_targets_on_triton_are_named_with_the_non_finite_step(host_syncs):
    model = _model("triton")
    step = _train_step(model)
    x, y = _batch()
    y[0, 0] = V + 2
    with host_syncs() as syncs:
        step(x, y, None, 1)
    assert syncs.count == 0, syncs.calls
    with pytest.raises(NonFiniteError, match="step 1: .*1 cross_entropy targets outside"):
        step.check()


def test_triton_loss_reads_16_bit_logits_as_they_are(monkeypatch):
    """Under autocast the output layer's bf16 logits reach the cross-entropy kernel without an fp32 copy; the loss
    comes back fp32, equal to the exact loss of those logits up to bf16's rounding of the result."""
    model = _model("triton")
    seen = []
    real = model.backend._cross_entropy

    def spy(logits, targets, **kwargs):
        seen.append(logits)
        return real(logits, targets, **kwargs)

    monkeypatch.setattr(model.backend, "_cross_entropy", spy)
    x, y = _batch()
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        loss, _ = model.loss(x, y, checks=model.backend.device_checks(DEVICE))
    assert seen[0].dtype == torch.bfloat16 and loss.dtype == torch.float32
    exact = torch.nn.functional.cross_entropy(seen[0].double(), y.reshape(-1))
    assert abs(loss.double() - exact) <= 2**-8 * exact + 1e-5 * exact


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_evaluation_reads_its_sum_once(backend, host_syncs):
    model = _model(backend)
    tokens = torch.randint(0, V, (60,), generator=torch.Generator().manual_seed(2))
    results = []
    for window in (4, 128):  # 5 windows per stream and a leftover stream, or one window
        with host_syncs() as syncs:
            results.append(evaluate_tokens(model, tokens, batch_size=4, window=window))
        assert syncs.count == EVAL_SYNCS, syncs.calls
    assert results[0].n_targets == 59 and results[0].nll_sum == pytest.approx(results[1].nll_sum, rel=1e-6)


def test_evaluation_names_a_target_outside_the_vocabulary_on_triton():
    model = _model("triton")
    tokens = torch.randint(0, V, (30,), generator=torch.Generator().manual_seed(2))
    tokens[-1] = V + 5  # only a target, never an input
    with pytest.raises(ValueError, match="1 cross_entropy targets outside"):
        evaluate_tokens(model, tokens, batch_size=2)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_generated_tokens_read_nothing_back(backend, host_syncs):
    model = _model(backend)
    counts, ids = {}, {}
    for length in (3, 9):
        with host_syncs() as syncs:
            ids[length] = generate_ids(model, [1, 2, 3], length, temperature=0.8, seed=7, num_samples=2,
                                       output_precision="fp32")
        counts[length] = syncs.calls
    per_token = (len(counts[9]) - len(counts[3])) / 6
    assert per_token == TOKEN_SYNCS, (counts[3], counts[9])
    assert torch.equal(ids[9][:, :3], ids[3])  # the same draws: the count is of the same loop, longer
