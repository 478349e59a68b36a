"""--deterministic on CUDA, checked on the CPU where it can be: the switches and CUBLAS_WORKSPACE_CONFIG that
deterministic_mode sets for a CUDA run, and no op without a fast deterministic CUDA kernel in a training step or
an evaluation of either backend (so --deterministic neither raises nor falls back to a slow sorted path there)."""
from __future__ import annotations

import logging
import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import DEVICE
from rnnlm.evaluation import evaluate_tokens
from rnnlm.model import ModelConfig, WordRNN
from rnnlm.ops.linear_cross_entropy import linear_cross_entropy
from rnnlm.training.determinism import CUBLAS_WORKSPACE, deterministic_mode
from rnnlm.training.step import TrainStep, make_optimizer

# aten ops that raise under torch.use_deterministic_algorithms(True) on CUDA, or that switch to a sort-based
# deterministic kernel there (torch.use_deterministic_algorithms' documentation, torch 2.11-2.13)
CUDA_NONDETERMINISTIC = {"scatter_add", "scatter_add_", "scatter_reduce", "scatter_reduce_", "index_add",
                         "index_add_", "put", "put_", "cumsum", "cumsum_", "histc", "bincount", "median",
                         "nll_loss2d_forward", "nll_loss2d_backward", "kthvalue", "_embedding_bag",
                         "_embedding_bag_backward", "index_copy", "index_copy_"}
V, E, H = 30, 8, 12

pytestmark = pytest.mark.usefixtures("one_thread")


class OpNames(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.fixture
def restore_cublas_env(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)


@pytest.mark.parametrize("device,warn_only", [("cuda", True), ("cuda:1", True), ("cpu", False)])
def test_switches_for_the_run_and_restored_after(restore_cublas_env, device, warn_only):
    assert not torch.are_deterministic_algorithms_enabled()
    with deterministic_mode(True, device):
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled() == warn_only
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert not torch.are_deterministic_algorithms_enabled()
    assert not torch.is_deterministic_algorithms_warn_only_enabled()
    with deterministic_mode(False, device):
        assert not torch.are_deterministic_algorithms_enabled()


def test_a_users_cublas_setting_is_kept_and_late_setting_is_warned(monkeypatch, caplog):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    with deterministic_mode(True, "cuda"):
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)  # as if a caller had used CUDA already
    with caplog.at_level(logging.WARNING, logger="rnnlm.train"), deterministic_mode(True, "cuda"):
        pass
    assert "CUBLAS_WORKSPACE_CONFIG" in caplog.text and "before" in caplog.text


def _step_ops_and_results(backend: str, deterministic: bool):
    torch.manual_seed(0)
    model = WordRNN(ModelConfig(vocab_size=V, embed_size=E, hidden_size=H), backend=backend).to(DEVICE)
    step = TrainStep(model, make_optimizer(list(model.parameters()), lr=1e-2), clip=1.0, precision="fp32",
                     device=DEVICE)
    g = torch.Generator().manual_seed(1)
    x, y = (torch.randint(0, V, (3, 6), generator=g).to(DEVICE) for _ in range(2))
    tokens = torch.randint(0, V, (40,), generator=g)
    ops = OpNames()
    with deterministic_mode(deterministic, DEVICE), ops:
        losses = [step(x, y, None, n)[0] for n in (1, 2)]
        step.check()
        nll = evaluate_tokens(model, tokens, batch_size=2).nll_sum
    return ops.names, torch.stack(losses), nll, [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_training_and_evaluation_use_no_cuda_nondeterministic_op_and_give_the_same_numbers(backend):
    names, losses, nll, params = _step_ops_and_results(backend, deterministic=True)
    assert not names & CUDA_NONDETERMINISTIC, sorted(names & CUDA_NONDETERMINISTIC)
    assert "addmm" in names or "mm" in names or "linear" in names or "_linear_pointwise" in names  # ops were seen
    _, losses_free, nll_free, params_free = _step_ops_and_results(backend, deterministic=False)
    assert torch.equal(losses, losses_free) and nll == nll_free
    assert all(torch.equal(a, b) for a, b in zip(params, params_free))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_output_layer_gradient_is_softmax_minus_onehot(dtype):
    """The gather/scatter_ one-hot gives exactly what scatter_add_ of -1 gave: the gradient of the logits,
    recovered through the op's dh with W = I (dh = G / N), equals softmax - onehot computed with scatter_add_."""
    g = torch.Generator().manual_seed(3)
    n = 7
    logits = torch.randn(n, V, generator=g, dtype=dtype).to(DEVICE).requires_grad_()
    targets = torch.randint(0, V, (n,), generator=g).to(DEVICE)
    eye = torch.eye(V, dtype=dtype, device=DEVICE)
    loss = linear_cross_entropy(logits, eye, None, targets)
    (dh,) = torch.autograd.grad(loss, logits)
    with torch.no_grad():
        want = torch.log_softmax(logits, 1).exp_()
        want.scatter_add_(1, targets.view(-1, 1), torch.full((n, 1), -1.0, dtype=dtype, device=DEVICE))
    torch.testing.assert_close(dh * n, want, rtol=0, atol=4 * torch.finfo(dtype).eps)
