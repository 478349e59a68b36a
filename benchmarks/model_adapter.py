"""The one place benchmarks/gpu_check.py touches rnnlm: a training step and a generation through its public model API.

rnnlm's application layer is being reorganised; when its names move, re-point `model_api()` and nothing else.
It must import only what a CUDA machine image has (torch, numpy): no jieba, snownlp or tqdm, so it uses
rnnlm.model (the model and its loss) and rnnlm.generate.generate_ids (token ids in, token ids out), never the
data pipeline or the training CLI.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch


def model_api() -> SimpleNamespace:
    """build(vocab, embed, hidden, layers, backend, device) -> model; train_step(model, optimizer, x, y) -> loss
    (zero grads, the model's mean cross-entropy, backward, clip at 5, Adam); generate(model, prompt_ids, length,
    seed) -> (1, length) ids at temperature 0.8."""
    from rnnlm.generate import generate_ids
    from rnnlm.model import ModelConfig, WordRNN

    def build(vocab_size: int, embed_size: int, hidden_size: int, num_layers: int, backend: str,
              device: torch.device) -> torch.nn.Module:
        config = ModelConfig(vocab_size=vocab_size, embed_size=embed_size, hidden_size=hidden_size,
                             num_layers=num_layers)
        return WordRNN(config, backend=backend).to(device)

    def optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
        params = [p for p in model.parameters() if p.requires_grad]
        try:
            return torch.optim.Adam(params, lr=1e-3, fused=True)
        except (RuntimeError, TypeError):
            return torch.optim.Adam(params, lr=1e-3, foreach=True)

    def train_step(model, opt, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss, _ = model.loss(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0, foreach=True)
        opt.step()
        return loss.detach()

    def generate(model, prompt_ids: list[int], length: int, seed: int) -> torch.Tensor:
        return generate_ids(model, prompt_ids, length, temperature=0.8, num_samples=1, seed=seed)

    return SimpleNamespace(build=build, optimizer=optimizer, train_step=train_step, generate=generate)
