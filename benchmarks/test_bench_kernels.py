"""The kernels against the torch ops they replace: recurrence (forward, forward+backward), softmax, sampling,
cross-entropy. Each test is parametrized by backend (cudnn = the torch op, triton = rnnlm's kernel) and shape;
the recurrence forward also by the one-size-at-a-time shapes (conftest's SWEEP_SHAPES). Triton recurrence rows
record the kernels rnn() chose (recurrence_path: persistent or tiled) and why (recurrence_choice).

Softmax, sampling and cross-entropy run on (B*T, V) logits of the shape (the rows of one training batch);
their tokens/s counts rows, their GB/s the logits read (and, for softmax, the probabilities written).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

TEMPERATURE = 0.8


def make_rnn(shape, device, *, requires_grad: bool):
    torch.manual_seed(0)
    rnn = torch.nn.RNN(shape.embed_size, shape.hidden_size, shape.num_layers, batch_first=True).to(device)
    rnn.requires_grad_(requires_grad)
    x = torch.randn(shape.batch_size, shape.seq_len, shape.embed_size, device=device, requires_grad=requires_grad)
    h0 = torch.randn(shape.num_layers, shape.batch_size, shape.hidden_size, device=device)
    return rnn, x, h0


def path_info(backend, shape, tools, step, *, backward: bool) -> dict:
    """For triton rows: which kernels rnn() chose (persistent or tiled) and why, read after one call of step (an
    extra warm-up: the choice is made at a shape's first launch); nothing for cudnn rows."""
    if backend != "triton":
        return {}
    step()
    return tools.recurrence_path_info(shape, backward=backward)


def recurrence(backend, tools):
    """f(rnn, x, h0) -> (output, h_n) for the backend."""
    if backend == "cudnn":
        return lambda rnn, x, h0: rnn(x, h0)
    rnn_op = tools.import_op("rnn", "rnn")
    return lambda rnn, x, h0: rnn_op(x, h0, rnn._flat_weights, num_layers=rnn.num_layers,
                                     nonlinearity=rnn.nonlinearity, bias=rnn.bias, batch_first=True,
                                     training=rnn.training)


def logits_for(shape, device, *, requires_grad: bool = False):
    torch.manual_seed(0)
    return torch.randn(shape.tokens, shape.vocab_size, device=device, requires_grad=requires_grad)


# small/default/large grow B and H together; conftest's SWEEP_SHAPES change one of them at a time around default,
# so that the report can plot throughput against B at a fixed H and against H at a fixed B
RECURRENCE_FORWARD_SHAPES = ("small", "default", "large", "b16", "b256", "h128", "h1024")


@pytest.mark.benchmark(group="recurrence forward")
@pytest.mark.parametrize("shape", RECURRENCE_FORWARD_SHAPES, indirect=True)
def test_recurrence_forward(run_bench, model_case, tools):
    backend, shape = model_case
    rnn, x, h0 = make_rnn(shape, tools.device, requires_grad=False)
    f = recurrence(backend, tools)

    def step():
        with torch.no_grad():
            return f(rnn, x, h0)

    run_bench(step, backend=backend, shape=shape, tokens=shape.tokens,
              flops=tools.rnn_flops(shape, backward=False),
              cudnn_algorithm=tools.cudnn_algorithm(shape, backward=False),
              **path_info(backend, shape, tools, step, backward=False))


@pytest.mark.benchmark(group="recurrence forward+backward")
def test_recurrence_forward_backward(run_bench, model_case, tools):
    backend, shape = model_case
    rnn, x, h0 = make_rnn(shape, tools.device, requires_grad=True)
    f = recurrence(backend, tools)
    g_out = torch.randn(shape.batch_size, shape.seq_len, shape.hidden_size, device=tools.device)
    g_h = torch.randn_like(h0)
    inputs = [x, *rnn.parameters()]

    def step():
        out, h_n = f(rnn, x, h0)
        return torch.autograd.grad((out, h_n), inputs, (g_out, g_h))

    run_bench(step, backend=backend, shape=shape, tokens=shape.tokens,
              flops=tools.rnn_flops(shape, backward=True),
              cudnn_algorithm=tools.cudnn_algorithm(shape, backward=True),
              **path_info(backend, shape, tools, step, backward=True))


@pytest.mark.benchmark(group="softmax")
def test_softmax(run_bench, model_case, tools):
    backend, shape = model_case
    logits = logits_for(shape, tools.device)
    if backend == "cudnn":
        def step():
            return torch.softmax(logits / TEMPERATURE, dim=-1)
    else:
        softmax = tools.import_op("softmax", "softmax")

        def step():
            return softmax(logits, TEMPERATURE)

    run_bench(step, backend=backend, shape=shape, tokens=shape.tokens, nbytes=2 * logits.numel() * 4,
              op="softmax(logits / temperature)", precision="fp32")


@pytest.mark.benchmark(group="sampling")
def test_sampling(run_bench, model_case, tools):
    backend, shape = model_case
    logits = logits_for(shape, tools.device)
    if backend == "cudnn":
        gen = torch.Generator(device=tools.device).manual_seed(0)

        def step():
            probs = torch.softmax(logits / TEMPERATURE, dim=-1)
            return torch.multinomial(probs, 1, generator=gen).squeeze(-1)
    else:
        sample = tools.import_op("sample", "sample")

        def step():
            return sample(logits, TEMPERATURE, 0)

    run_bench(step, backend=backend, shape=shape, tokens=shape.tokens, nbytes=logits.numel() * 4,
              op="multinomial(softmax(logits / temperature))", precision="fp32")


@pytest.mark.benchmark(group="cross-entropy forward+backward")
def test_cross_entropy(run_bench, model_case, tools):
    backend, shape = model_case
    logits = logits_for(shape, tools.device, requires_grad=True)
    targets = torch.randint(0, shape.vocab_size, (shape.tokens,), device=tools.device,
                            generator=torch.Generator(device=tools.device).manual_seed(1))
    ce = F.cross_entropy if backend == "cudnn" else tools.import_op("cross_entropy", "cross_entropy")

    def step():
        loss = ce(logits, targets)
        return torch.autograd.grad(loss, logits)

    # reads the logits twice (forward, backward) and writes the gradient once
    run_bench(step, backend=backend, shape=shape, tokens=shape.tokens, nbytes=3 * logits.numel() * 4,
              op="cross_entropy(logits, targets) + backward", precision="fp32")
