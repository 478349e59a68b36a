"""The one place benchmarks/gpu_check.py touches rnnlm: a training step and a generation through its public model API.

It must import only what a CUDA machine image has (torch, numpy): no jieba, snownlp or tqdm, so it uses
rnnlm.model (the model), rnnlm.training.step (the very TrainStep that python -m rnnlm.train runs) and
rnnlm.inference.generation.generate_ids (token ids in, token ids out), never the data pipeline or the CLIs.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch


def model_api() -> SimpleNamespace:
    """build(vocab, embed, hidden, layers, backend, device) -> model; train_step(model, optimizer, x, y) -> loss
    (zero grads, the model's mean cross-entropy, backward, clip at 5, Adam); generate(model, prompt_ids, length,
    seed) -> (1, length) ids at temperature 0.8."""
    from rnnlm.inference.generation import generate_ids
    from rnnlm.model import ModelConfig, WordRNN
    from rnnlm.training.step import TrainStep, make_optimizer

    def build(vocab_size: int, embed_size: int, hidden_size: int, num_layers: int, backend: str,
              device: torch.device) -> torch.nn.Module:
        config = ModelConfig(vocab_size=vocab_size, embed_size=embed_size, hidden_size=hidden_size,
                             num_layers=num_layers)
        return WordRNN(config, backend=backend).to(device)

    def optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
        return make_optimizer([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    steps: dict[int, TrainStep] = {}

    def train_step(model, opt, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        step = steps.get(id(opt))
        if step is None:
            step = steps[id(opt)] = TrainStep(model, opt, clip=5.0, precision="fp32", device=x.device)
        loss, _ = step(x, y, None, 1)
        return loss

    def generate(model, prompt_ids: list[int], length: int, seed: int) -> torch.Tensor:
        return generate_ids(model, prompt_ids, length, temperature=0.8, num_samples=1, seed=seed)

    return SimpleNamespace(build=build, optimizer=optimizer, train_step=train_step, generate=generate)
