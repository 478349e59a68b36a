"""One full training step of WordRNN, as `python -m rnnlm.train` runs it: zero grads, rnnlm.train.training_loss
(the fused output layer + loss on cudnn, model.loss with the kernels on triton), backward, gradient clipping
(norm 5, foreach), the finite check, fused Adam, the hidden state carried (detached) to the next batch.
"""
from __future__ import annotations

import pytest
import torch


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.benchmark(group="training step")
def test_training_step(run_bench, model_case, tools, precision, benchmark):
    from rnnlm import train
    from rnnlm.model import ModelConfig, WordRNN

    backend, shape = model_case
    if precision == "bf16":
        if tools.device.type == "cpu" and shape.name != "default":
            pytest.skip("bf16 on the CPU is benchmarked at the default shape only (the --precision bf16 target)")
        if tools.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            pytest.skip("this GPU has no bf16")
    benchmark.group = f"training step ({precision})"
    keep = getattr(train, "_keep_freed_memory", None)
    if keep is not None:
        keep()  # what train.main() does before training (glibc keeps freed step buffers mapped)

    torch.manual_seed(0)
    config = ModelConfig(vocab_size=shape.vocab_size, embed_size=shape.embed_size,
                         hidden_size=shape.hidden_size, num_layers=shape.num_layers)
    model = WordRNN(config, backend=backend).to(tools.device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        optimizer = torch.optim.Adam(params, lr=1e-3, fused=True)
    except (RuntimeError, TypeError):
        optimizer = torch.optim.Adam(params, lr=1e-3, foreach=True)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(2, shape.vocab_size, (shape.batch_size, shape.seq_len), generator=gen).to(tools.device)
    y = torch.randint(2, shape.vocab_size, (shape.batch_size, shape.seq_len), generator=gen).to(tools.device)
    compute_dtype = torch.bfloat16 if precision == "bf16" else None
    state = {"hidden": None}

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(tools.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss, hidden = train.training_loss(model, x, y, state["hidden"], compute_dtype)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, 5.0, foreach=True)
        if not bool(torch.isfinite(loss.detach() + norm)):
            raise AssertionError("non-finite loss or gradient norm")
        optimizer.step()
        state["hidden"] = hidden.detach()
        return loss

    # forward: embedding lookup + recurrence + output layer; backward twice that: 3 x forward multiply-adds
    fc_flops = 2 * shape.tokens * shape.hidden_size * shape.vocab_size * 3
    run_bench(step, backend=backend, shape=shape, tokens=shape.tokens,
              flops=tools.rnn_flops(shape, backward=True) + fc_flops,
              precision=precision if tools.device.type == "cpu" or precision == "bf16"
              else tools.precision_label(backend))
