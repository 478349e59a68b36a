"""One full training step of WordRNN, as `python -m rnnlm.train` runs it: rnnlm.training.step.TrainStep (zero
grads, the model's training loss (the fused output layer + loss on the torch backend, the kernels on triton),
backward, gradient clipping (norm 5, foreach), the NaN guard, fused Adam), the hidden state carried (detached) to
the next batch.
"""
from __future__ import annotations

import pytest
import torch

from rnnlm.model import ModelConfig, WordRNN
from rnnlm.training.step import TrainStep, keep_freed_memory, make_optimizer


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.benchmark(group="training step")
def test_training_step(run_bench, model_case, tools, precision, benchmark):
    backend, shape = model_case
    if precision == "bf16":
        if tools.device.type == "cpu" and shape.name != "default":
            pytest.skip("bf16 on the CPU is benchmarked at the default shape only (the --precision bf16 target)")
        if tools.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            pytest.skip("this GPU has no bf16")
    benchmark.group = f"training step ({precision})"
    keep_freed_memory()  # what rnnlm.train does before training (glibc keeps freed step buffers mapped)

    torch.manual_seed(0)
    config = ModelConfig(vocab_size=shape.vocab_size, embed_size=shape.embed_size,
                         hidden_size=shape.hidden_size, num_layers=shape.num_layers)
    model = WordRNN(config, backend=backend).to(tools.device)
    model.train()
    train_step = TrainStep(model, make_optimizer(list(model.parameters()), lr=1e-3), clip=5.0, precision=precision,
                           device=tools.device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(2, shape.vocab_size, (shape.batch_size, shape.seq_len), generator=gen).to(tools.device)
    y = torch.randint(2, shape.vocab_size, (shape.batch_size, shape.seq_len), generator=gen).to(tools.device)
    state = {"hidden": None, "step": 0}

    def step():
        state["step"] += 1
        loss, hidden = train_step(x, y, state["hidden"], state["step"])
        state["hidden"] = hidden.detach()
        return loss

    # forward: embedding lookup + recurrence + output layer; backward twice that: 3 x forward multiply-adds
    fc_flops = 2 * shape.tokens * shape.hidden_size * shape.vocab_size * 3
    extra = {}
    if tools.device.type == "cpu" and backend == "cudnn":  # the torch backend on a CPU: GEMM-bound
        extra["ceiling_tokens_per_s"] = tools.ceilings(shape)["train_tokens_per_s"][precision]
    run_bench(step, backend=backend, shape=shape, tokens=shape.tokens,
              flops=tools.rnn_flops(shape, backward=True) + fc_flops,
              precision=precision if tools.device.type == "cpu" or precision == "bf16"
              else tools.precision_label(backend), **extra)
