"""WordRNN: shapes, configuration errors, loss reductions, autocast, and the torch <-> triton switch."""
from __future__ import annotations

import logging
import sys

import pytest
import torch
import torch.nn.functional as F

from rnnlm.errors import UsageError
from rnnlm.backends import resolve_backend
from rnnlm.model import ModelConfig, WordRNN, resolve_device

V, E, H = 120, 16, 32


def make_model(seed: int = 0, **overrides) -> WordRNN:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=V, embed_size=E, hidden_size=H, num_layers=2)
    cfg.update(overrides)
    return WordRNN(ModelConfig(**cfg))


def test_forward_shapes_and_default_hidden():
    model = make_model()
    x = torch.randint(0, V, (3, 7))
    logits, hidden = model(x)
    assert logits.shape == (3, 7, V)
    assert hidden.shape == (2, 3, H)
    logits0, hidden0 = model(x, model.init_hidden(3))
    torch.testing.assert_close(logits, logits0, rtol=0, atol=0)
    torch.testing.assert_close(hidden, hidden0, rtol=0, atol=0)
    # Carrying the state: two halves give the same result as the whole sequence.
    a, h1 = model(x[:, :4])
    b, h2 = model(x[:, 4:], h1)
    torch.testing.assert_close(torch.cat([a, b], 1), logits, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(h2, hidden, rtol=1e-6, atol=1e-6)


def test_layers_are_the_documented_modules():
    model = make_model(num_layers=3, nonlinearity="relu", dropout=0.25)
    assert isinstance(model.rnn, torch.nn.RNN)
    assert model.rnn.batch_first and model.rnn.num_layers == 3
    assert model.rnn.nonlinearity == "relu" and model.rnn.dropout == 0.25
    assert model.embedding.weight.shape == (V, E) and model.fc.weight.shape == (V, H)


def test_dropout_only_between_layers_and_only_in_training():
    model = make_model(dropout=0.5)
    x = torch.randint(0, V, (2, 5))
    model.eval()
    torch.testing.assert_close(model(x)[0], model(x)[0], rtol=0, atol=0)
    model.train()
    assert not torch.equal(model(x)[0], model(x)[0])
    assert make_model(num_layers=1, dropout=0.5).rnn.dropout == 0.0  # nn.RNN would warn: nothing to drop between


def test_tied_weights_share_one_matrix():
    model = make_model(embed_size=H, tie_weights=True)
    assert model.fc.weight is model.embedding.weight
    n_untied = sum(p.numel() for p in make_model(embed_size=H).parameters())
    assert sum(p.numel() for p in model.parameters()) == n_untied - V * H


def test_tied_weights_need_equal_sizes():
    with pytest.raises(UsageError, match="tie_weights needs embed_size equal to hidden_size"):
        make_model(embed_size=16, hidden_size=32, tie_weights=True)


@pytest.mark.parametrize("field,value", [("vocab_size", 0), ("hidden_size", -3), ("num_layers", 0),
                                         ("nonlinearity", "gelu"), ("dropout", 1.0), ("embed_size", 2.5)])
def test_bad_config_is_a_usage_error(field, value):
    with pytest.raises(UsageError, match=field if field != "embed_size" else "embed_size"):
        make_model(**{field: value})


def test_config_round_trip_and_unknown_keys():
    cfg = ModelConfig(vocab_size=V, embed_size=E, hidden_size=H, nonlinearity="relu", tie_weights=False)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(UsageError, match="unknown model config keys: bogus"):
        ModelConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_loss_mean_and_sum_match_torch():
    model = make_model()
    x = torch.randint(0, V, (4, 6))
    y = torch.randint(0, V, (4, 6))
    logits, _ = model(x)
    mean, hidden = model.loss(x, y)
    total, _ = model.loss(x, y, reduction="sum")
    ref = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1), reduction="sum")
    torch.testing.assert_close(total, ref)
    torch.testing.assert_close(mean, ref / y.numel())
    assert hidden.shape == (2, 4, H)
    with pytest.raises(ValueError, match="reduction"):
        model.loss(x, y, reduction="none")


def test_bad_shapes_name_the_argument():
    model = make_model()
    with pytest.raises(ValueError, match="x must be"):
        model(torch.randint(0, V, (6,)))
    with pytest.raises(ValueError, match="hidden must have shape"):
        model(torch.randint(0, V, (2, 3)), torch.zeros(2, 3, H))


def test_autocast_bf16_trains_and_keeps_the_state_fp32():
    model = make_model()
    x = torch.randint(0, V, (4, 6))
    y = torch.randint(0, V, (4, 6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, hidden = model.loss(x, y)
        loss2, hidden2 = model.loss(x, y, hidden.detach())
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert hidden.dtype == torch.float32 and hidden2.dtype == torch.float32
    (loss + loss2).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model(x, hidden2.detach())  # the carried state works outside autocast too
    fp32, _ = model.loss(x, y)
    assert abs(loss.item() - fp32.item()) < 0.05 * fp32.item()


def test_resolve_backend_default_and_choice_logged(caplog):
    with caplog.at_level(logging.INFO, logger="rnnlm.model"):
        chosen = resolve_backend(None, "cpu")
    assert chosen == "torch"  # never triton on a CPU device, where the kernels would be interpreted
    assert "backend: torch" in caplog.text
    assert resolve_backend("triton", "cpu") == "triton"
    assert resolve_backend("cudnn", "cpu") == "torch"  # the torch backend's former name still works
    with pytest.raises(UsageError, match="backend must be one of"):
        resolve_backend("tpu", "cpu")
    with pytest.raises(UsageError, match="backend must be one of"):
        make_model().backend = "cuda"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_resolve_device_without_cuda():
    assert resolve_device(None) == torch.device("cpu")
    with pytest.raises(UsageError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(UsageError, match="invalid device"):
        resolve_device("gpu0")


def test_triton_without_kernels_is_a_clear_error_not_a_fallback(monkeypatch):
    # None in sys.modules makes `import kernels.rnn` raise ImportError, as if the kernels were missing.
    monkeypatch.setitem(sys.modules, "kernels.rnn", None)
    with pytest.raises(UsageError, match="backend 'triton' is unavailable"):
        make_model().backend = "triton"
    with pytest.raises(UsageError, match="backend 'triton' is unavailable"):
        WordRNN(ModelConfig(vocab_size=V, embed_size=E, hidden_size=H), backend="triton")
    model = make_model()
    with pytest.raises(UsageError):
        model.backend = "triton"
    assert model.backend.name == "torch"  # a failed switch leaves the model as it was


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_triton_backend_matches_cudnn(nonlinearity):
    model = make_model(nonlinearity=nonlinearity).eval()
    x = torch.randint(0, V, (3, 5))
    y = torch.randint(0, V, (3, 5))
    h0 = torch.randn(2, 3, H) * 0.5
    ref_logits, ref_hidden = model(x, h0)
    ref_loss, _ = model.loss(x, y, h0, reduction="sum")
    model.backend = "triton"
    logits, hidden = model(x, h0)
    loss, _ = model.loss(x, y, h0, reduction="sum")
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hidden, ref_hidden, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_twenty_training_steps_agree_across_backends():
    x = torch.randint(0, V, (2, 4), generator=torch.Generator().manual_seed(1))
    y = torch.roll(x, -1, 1)
    losses = {}
    for backend in ("torch", "triton"):
        model = make_model(seed=3)
        model.backend = backend
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        hidden = None
        for _ in range(20):
            opt.zero_grad()
            loss, hidden = model.loss(x, y, hidden)
            hidden = hidden.detach()
            loss.backward()
            opt.step()
        losses[backend] = loss.item()
    assert losses["triton"] == pytest.approx(losses["torch"], rel=1e-4)
