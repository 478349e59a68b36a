"""Generation: tokens/s of rnnlm.inference.generation.generate_ids (prime on a 2-word prompt, then sample word by word),
one sample and a batch of 16, for each backend and shape (an untrained WordRNN: speed does not depend on
the weights). tokens_per_s counts generated words of all samples.
"""
from __future__ import annotations

import pytest
import torch

LENGTH = 100
LENGTH_INTERPRETED = 16  # interpreted triton pays per kernel launch: fewer words, same per-word figure
TEMPERATURE = 0.8


def build(backend, shape, device):
    from rnnlm.model import ModelConfig, WordRNN

    torch.manual_seed(0)
    config = ModelConfig(vocab_size=shape.vocab_size, embed_size=shape.embed_size,
                         hidden_size=shape.hidden_size, num_layers=shape.num_layers)
    return WordRNN(config, backend=backend).to(device)


@pytest.mark.parametrize("num_samples", [1, 16], ids=["1 sample", "batch 16"])
@pytest.mark.benchmark(group="generation")
def test_generate(run_bench, model_case, tools, num_samples, benchmark):
    from rnnlm.inference.generation import generate_ids

    backend, shape = model_case
    benchmark.group = f"generation ({'1 sample' if num_samples == 1 else f'batch of {num_samples}'})"
    model = build(backend, shape, tools.device)
    length = LENGTH_INTERPRETED if backend == "triton" and tools.interpreted else LENGTH
    prompt = [2, 3]

    def step():
        return generate_ids(model, prompt, length, temperature=TEMPERATURE, num_samples=num_samples, seed=0)

    extra = {"output_precision": "auto (rnnlm.generate's default)"}
    if tools.device.type == "cpu" and backend == "cudnn" and num_samples == 1:  # bandwidth-bound: one ceiling
        from rnnlm import tuning
        from rnnlm.inference.precision import TASK, StepPlan

        step()  # settles the choice of output precision, mat-vec library and threads (timed once, then cached)
        choice = tuning.last_choices.get(TASK)
        plan = StepPlan.parse(choice.picked) if choice else StepPlan("fp32")
        extra.update(output_precision=f"auto: {plan.precision}", matvec=plan.matvec,
                     ceiling_tokens_per_s=tools.ceilings(shape)["generate_tokens_per_s"][plan.precision])
    run_bench(step, backend=backend, shape=shape, tokens=length * num_samples, num_samples=num_samples,
              length=length, **extra)
