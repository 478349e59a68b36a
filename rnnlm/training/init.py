"""Initial weights of a model about to be trained (--init).

"rnnlm": word_language_model's embedding and output layer, U(-0.1, 0.1) with a zero output bias, and every
layer's W_hh = 0.5 I; W_ih and the RNN biases keep nn.RNN's U(-1/sqrt(H), 1/sqrt(H)). Chosen by measurement
(README, "Training recipe"): the two halves go together, since the embedding half alone collapses stream
training, and W_hh = 0.5 I keeps a tanh state from saturating while the state is carried across batches.
"torch": the modules' own initialisation, as rnnlm trained before.
"""
from __future__ import annotations

import torch

UNIFORM = 0.1
W_HH_SCALE = 0.5


@torch.no_grad()
def _rnnlm_init(model) -> None:
    model.embedding.weight.uniform_(-UNIFORM, UNIFORM)
    if model.fc.weight is not model.embedding.weight:
        model.fc.weight.uniform_(-UNIFORM, UNIFORM)
    model.fc.bias.zero_()
    for k in range(model.rnn.num_layers):
        w_hh = getattr(model.rnn, f"weight_hh_l{k}")
        w_hh.copy_(W_HH_SCALE * torch.eye(w_hh.shape[0], dtype=w_hh.dtype, device=w_hh.device))


SCHEMES = {"rnnlm": _rnnlm_init, "torch": lambda model: None}  # torch: the modules' own initialisation
INITS = tuple(SCHEMES)


def init_weights(model, scheme: str) -> None:
    """Re-initialises `model` (a WordRNN) in place as `scheme` says, drawing from torch's global generator."""
    if scheme not in SCHEMES:
        raise ValueError(f"init scheme must be one of {INITS}, got {scheme!r}")
    SCHEMES[scheme](model)
