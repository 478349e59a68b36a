"""The output layer and the cross-entropy loss fused: mean_i CE(h_i Wᵀ + b, y_i), forward and backward.

Why: on the torch backend the output layer is most of a training step (three (B·T) × H × V products, 13 GFLOP
each for the default model), and the (B·T, V) logits are the step's largest buffer. Here that buffer is written
once: the forward pass turns the logits in place into log-softmax (fp32) and then into softmax − onehot, which
is N · dloss/dlogits, kept for the backward pass:

    forward   z = h Wᵀ + b                      (N, V), in compute_dtype
              z <- log_softmax(z)               in place, fp32 at least
              loss = −mean_i z[i, y_i]
              G = exp(z) − onehot(y)            in place (G[i, y_i] gathered, less 1, written back: no
                                                scatter_add_, which has no fast deterministic CUDA kernel)
              Σ_i G_i                           for the bias, from the fp32 G (a bf16 G summed in fp32 would
                                                first be copied whole to fp32: a pass over (N, V) more)
              G                                 cast to compute_dtype
    backward  with g = upstream / N: dh = g · G W,  dW = g · Gᵀ h,  db = g · Σ_i G_i

The three products run on oneDNN's linear or on torch's matmul (MKL), whichever is faster on this machine at
these shapes (timed once by rnnlm.tuning at up to TIMED_ROWS rows of h, cached; oneDNN only where it gives
correct results for these layouts, probed once per dtype); under bf16 they run in bf16 while the log-softmax
stays fp32.
`linear_cross_entropy_reference` is the same loss in plain PyTorch, for tests and benchmarks.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from rnnlm import tuning

__all__ = ["linear_cross_entropy", "linear_cross_entropy_reference"]

TASK = "output layer products"
TIMED_ROWS = 128  # rows of h the library choice is timed at: the products' cost is linear in them
_ONEDNN_OK: dict[torch.dtype, bool] = {}
_LIBRARY: dict[tuple, bool] = {}  # (dtype, rows timed, H, V, threads) -> oneDNN is the faster here


def _onednn_linear():
    return getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)


def _onednn_gives_right_answers(dtype: torch.dtype) -> bool:
    """Runs oneDNN's linear on the three layouts used here against float64 products (small shapes)."""
    op = _onednn_linear()
    if op is None or not torch.backends.mkldnn.is_available():
        return False
    try:
        gen = torch.Generator().manual_seed(0)
        a, w, g = (torch.randn(*s, generator=gen, dtype=torch.float64) for s in ((5, 7), (9, 7), (5, 9)))
        b = torch.randn(9, generator=gen, dtype=torch.float64)
        lo = [v.to(dtype) for v in (a, w, g, b)]
        got = [op(lo[0], lo[1], lo[3], "none", [], ""), op(lo[2], lo[1].t(), None, "none", [], ""),
               op(lo[0].t(), lo[2].t(), None, "none", [], "")]
        want = [a @ w.t() + b, g @ w, a.t() @ g]
        tol = 1e-4 if dtype == torch.float32 else 0.1
        return all(r.shape == e.shape and torch.allclose(r.double(), e, rtol=tol, atol=tol * 10)
                   for r, e in zip(got, want))
    except Exception:  # an op missing or refusing these layouts: use torch's matmul
        return False


def _use_onednn(h: torch.Tensor, weight: torch.Tensor) -> bool:
    """True when oneDNN's linear gives the right answer for h's dtype (probed once) and runs the three products
    of h (N, H) and weight (V, H) faster than torch's matmul on this machine (timed once per shape and threads)."""
    dtype = h.dtype
    if h.device.type != "cpu" or "onednn" not in libraries(dtype):
        return False
    shape = (str(dtype).removeprefix("torch."), min(h.shape[0], TIMED_ROWS), *weight.shape[::-1])
    key = (*shape, torch.get_num_threads())
    if key not in _LIBRARY:
        candidates = {name: timed_products(shape[1:], dtype, name) for name in ("onednn", "matmul")}
        _LIBRARY[key] = tuning.choose(TASK, shape, candidates, default="onednn").picked == "onednn"
    return _LIBRARY[key]


def libraries(dtype: torch.dtype) -> list[str]:
    """The libraries that run the three products right on this CPU for dtype: "matmul" (torch's), and "onednn"
    where its linear is available and gives the right answers for these layouts (probed once)."""
    if dtype not in (torch.float32, torch.bfloat16):
        return ["matmul"]
    if dtype not in _ONEDNN_OK:
        _ONEDNN_OK[dtype] = _onednn_gives_right_answers(dtype)
    return ["matmul", "onednn"] if _ONEDNN_OK[dtype] else ["matmul"]


def timed_products(shape: tuple[int, int, int], dtype: torch.dtype, library: str):
    """The op's three products at (rows, H, V) on `library` (see libraries), as a callable for timing (operands
    made on the first call)."""
    onednn = library == "onednn"
    operands: list = []

    def products() -> None:
        if not operands:
            n, hdim, v = shape
            gen = torch.Generator().manual_seed(0)  # not the global generator: a run's draws stay its own
            operands.extend(torch.randn(*s, generator=gen).to(dtype) for s in ((n, hdim), (v, hdim), (n, v), (v,)))
        h, w, g, b = operands
        mm_nt(h, w, b, onednn), mm_nt(g, w.t(), None, onednn), mm_nt(h.t(), g.t(), None, onednn)

    return products


def mm_nt(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None, onednn: bool) -> torch.Tensor:
    """a (M, K) @ b (N, K)ᵀ (+ bias (N,)) -> (M, N), on oneDNN's linear or torch's."""
    if onednn:
        return _onednn_linear()(a, b, bias, "none", [], "")
    return F.linear(a, b, bias)


class _LinearCrossEntropy(torch.autograd.Function):
    """The fused op (see the module docstring); keeps h, W in compute_dtype and G for the backward pass."""

    @staticmethod
    def forward(ctx, h, weight, bias, targets, compute_dtype):
        with torch.autocast(h.device.type, enabled=False):
            hc, wc = h.to(compute_dtype), weight.to(compute_dtype)
            bc = bias.to(compute_dtype) if bias is not None else None
            onednn = _use_onednn(hc, wc)
            logits = mm_nt(hc, wc, bc, onednn)                            # (N, V)
            if logits.dtype in (torch.bfloat16, torch.float16):
                logits = logits.float()                                    # the softmax in fp32 at least
            torch._log_softmax(logits, 1, False, out=logits)               # in place
            idx = targets.view(-1, 1)
            picked = logits.gather(1, idx)                                 # (N, 1) log p(y_i)
            loss = picked.sum().neg_().div_(h.shape[0])
            grad = logits.exp_()                                           # softmax, in place
            grad.scatter_(1, idx, grad.gather(1, idx).sub_(1.0))           # - onehot (one target per row)
            grad_sum = grad.sum(0) if bias is not None and ctx.needs_input_grad[2] else None  # (V,) Σ_i G_i
            if grad.dtype != compute_dtype:
                grad = grad.to(compute_dtype)
        ctx.save_for_backward(hc, wc, grad, grad_sum)
        ctx.onednn = onednn
        ctx.h_dtype, ctx.w_dtype = h.dtype, weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        hc, wc, grad, grad_sum = ctx.saved_tensors
        scale = grad_loss / hc.shape[0]
        dh = dw = db = None
        with torch.autocast(hc.device.type, enabled=False):
            if ctx.needs_input_grad[0]:
                dh = mm_nt(grad, wc.t(), None, ctx.onednn).to(ctx.h_dtype).mul_(scale)  # (N, V) @ (V, H)
            if ctx.needs_input_grad[1]:
                dwt = mm_nt(hc.t(), grad.t(), None, ctx.onednn)           # (H, N) @ (N, V) = dWᵀ
                dw = torch.empty(dwt.shape[::-1], dtype=ctx.w_dtype, device=dwt.device)
                torch.mul(dwt.t(), scale, out=dw)                          # transpose + scale, one pass
            if grad_sum is not None:
                db = grad_sum.mul(scale).to(ctx.w_dtype)
        return dh, dw, db, None, None


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                         compute_dtype: torch.dtype | None = None) -> torch.Tensor:
    """F.cross_entropy(F.linear(h, weight, bias), targets) (mean) without keeping the (N, V) logits twice.

    h (N, H), weight (V, H), bias (V,) or None, targets (N,) int64 -> scalar fp32 loss. compute_dtype: the
    dtype of the three products (default: weight's); the log-softmax is always fp32.
    """
    if h.dim() != 2 or targets.shape != h.shape[:1]:
        raise ValueError(f"h must be (N, H) and targets (N,), got {tuple(h.shape)} and {tuple(targets.shape)}")
    return _LinearCrossEntropy.apply(h, weight, bias, targets, compute_dtype or weight.dtype)


def linear_cross_entropy_reference(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                                   targets: torch.Tensor) -> torch.Tensor:
    """Plain PyTorch: the logits, then torch's cross-entropy (mean over the N targets)."""
    return F.cross_entropy(F.linear(h, weight, bias), targets)
