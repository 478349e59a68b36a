"""What a training step runs on this machine: its precision (--precision) and torch's CPU threads (--threads).

    fp32    fp32 everywhere.
    bf16    the output layer's products in bf16 (rnnlm.training.step), unless bf16 is timed slower than fp32 on this
            machine: then one line says so and fp32 runs (--force-bf16 runs bf16 anyway).
    auto    the faster of fp32 and bf16 here. bf16's quality proviso, validation perplexity within 2% of fp32's
            after the same steps, is what benchmarks/compare_baseline.py checks for the default model (README);
            it is not re-checked per run.

Each candidate (precision, threads) runs the backend's training loss and its backward pass (rnnlm.backends;
on the torch backend the recurrence plus the fused output layer and loss, which is most of a CPU step) at the
run's model shapes on a batch of the run's own B rows (per process) and as few time steps as make about
TIMED_ROWS tokens, timed by rnnlm.tuning (once per machine, torch version and shape; cached). The rows are the
run's because the recurrence's products are (B, H) by (H, H) at every step whatever T is, and whether a second
thread pays for them depends on B (a batch of 7 rows made 1 thread look faster than 2 for a 64-row run); the
step's cost is linear in T, so a short one keeps the timing to a fraction of a step. The optimizer and clipping
are left out: they cost the same whatever is chosen.
The timing draws its batch from its own generator and restores the global random state and the gradients, so
a run's results do not depend on whether the choice was timed or read from the cache.
Nothing is timed for a backend that does not ask for it (triton: Triton's interpreter on a CPU is too slow to
time, and no GPU figure is guessed): there `auto` means fp32 and threads stay as they are.
"""
from __future__ import annotations

import logging

import torch

import rnnlm.ops.linear_cross_entropy
from rnnlm import tuning

log = logging.getLogger("rnnlm.training")

TASK = "training step"
TIMED_ROWS = rnnlm.ops.linear_cross_entropy.TIMED_ROWS  # tokens (B·T) timed: the step's cost is ~linear in them


def choose_training_speed(model, precision: str, *, batch_size: int, seq_len: int, threads: int | None,
                          force_bf16: bool, device: torch.device) -> tuple[str, int | None]:
    """(the precision that runs, "fp32" or "bf16"; torch threads or None for unchanged) for `precision` (one of
    rnnlm.training.step.PRECISIONS) and `threads` (None: timed); batch_size: the rows this process trains on."""
    precisions = {"fp32": ["fp32"], "bf16": ["bf16", "fp32"], "auto": ["fp32", "bf16"]}[precision]
    if force_bf16 and precision == "bf16":
        precisions = ["bf16"]
    counts = tuning.thread_candidates(threads) if device.type == "cpu" else [threads]
    if not model.backend.timed or (len(precisions) == 1 and len(counts) == 1):
        return ("fp32" if precision == "auto" else precisions[0]), threads
    # batch_size: this process's rows; at least TIMED_ROWS tokens (the output layer's library is timed there too)
    steps = min(seq_len, -(-TIMED_ROWS // batch_size))
    candidates = {f"{p}@{n}": _timed_step(model, p, n, batch_size, steps, device) for p in precisions for n in counts}
    cfg = model.config
    shape = (batch_size, seq_len, cfg.vocab_size, cfg.embed_size, cfg.hidden_size, cfg.num_layers,
             cfg.nonlinearity, model.backend.name)
    now = torch.get_num_threads() if threads is None else threads  # untimed: threads as they are
    default = f"{'fp32' if precision == 'auto' else precisions[0]}@{now}"
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        choice = tuning.choose(TASK, shape, candidates, default=default)
    picked, n = choice.picked.split("@")
    if precision == "bf16" and picked == "fp32":
        why = f"bf16 is slower than fp32 on this machine ({_compare(choice.seconds)})" if choice.seconds else \
            f"fp32 is {choice.how} (RNNLM_TUNE / RNNLM_TUNING)"
        log.warning("precision: %s; running fp32 (--force-bf16 runs bf16 anyway)", why)
    return picked, None if n == "None" else int(n)


def _compare(seconds: dict[str, float]) -> str:
    best = {p: min(s for name, s in seconds.items() if name.startswith(p + "@")) for p in ("bf16", "fp32")}
    return f"{best['bf16'] * 1e3:.3g} ms against {best['fp32'] * 1e3:.3g} ms per timed batch"


def _timed_step(model, precision: str, threads: int | None, rows: int, seq_len: int, device: torch.device):
    """The training loss and backward at `precision` on `threads` for a (rows, seq_len) batch, as a callable."""
    batch: list = []

    def step() -> None:
        with tuning.torch_threads(threads):
            if not batch:
                gen = torch.Generator().manual_seed(0)
                v = model.config.vocab_size
                batch.extend(torch.randint(0, v, (rows, seq_len), generator=gen).to(device) for _ in range(2))
            x, y = batch
            dtype = torch.bfloat16 if precision == "bf16" else None
            was_training, grads = model.training, [p.grad for p in model.parameters()]
            model.eval()  # no dropout: the global random state is left alone
            try:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype is not None):
                    loss, _ = model.backend.training_loss(model, x, y, None, dtype)
                loss.backward()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
            finally:
                model.train(was_training)
                for p, g in zip(model.parameters(), grads):
                    p.grad = g

    return step
