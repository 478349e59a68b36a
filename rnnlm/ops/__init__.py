"""rnnlm's torch-level ops: each one op in its own module, with a plain PyTorch reference beside it."""
