"""rnnlm.ops.linear_cross_entropy: the fused output layer + loss against its plain PyTorch reference."""
from __future__ import annotations

import pytest
import torch

from rnnlm.ops.linear_cross_entropy import linear_cross_entropy, linear_cross_entropy_reference

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("n,hdim,vocab", [(37, 24, 101), (128, 64, 1000), (1, 5, 3)])
def test_linear_cross_entropy_matches_torch(dtype, tol, n, hdim, vocab):
    gen = torch.Generator().manual_seed(n)
    h = torch.randn(n, hdim, generator=gen, dtype=dtype, requires_grad=True)
    w = (torch.randn(vocab, hdim, generator=gen, dtype=dtype) * 0.3).requires_grad_()
    b = torch.randn(vocab, generator=gen, dtype=dtype, requires_grad=True)
    y = torch.randint(0, vocab, (n,), generator=gen)
    loss = linear_cross_entropy(h, w, b, y)
    (loss * 1.7).backward()                      # a non-unit upstream gradient
    got = (loss.detach(), h.grad, w.grad, b.grad)
    h.grad = w.grad = b.grad = None
    want_loss = linear_cross_entropy_reference(h, w, b, y)
    (want_loss * 1.7).backward()
    want = (want_loss.detach(), h.grad, w.grad, b.grad)
    for name, g, e in zip(("loss", "dh", "dW", "db"), got, want):
        assert g.dtype == e.dtype and g.shape == e.shape, name
        assert g.is_contiguous(), name
        torch.testing.assert_close(g, e, rtol=tol, atol=tol, msg=name)


def test_linear_cross_entropy_bf16_close_to_fp32():
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(256, 64, generator=gen, requires_grad=True)
    w = (torch.randn(500, 64, generator=gen) * 0.2).requires_grad_()
    y = torch.randint(0, 500, (256,), generator=gen)
    loss = linear_cross_entropy(h, w, None, y, compute_dtype=torch.bfloat16)
    loss.backward()
    assert loss.dtype == torch.float32 and h.grad.dtype == torch.float32 and w.grad.dtype == torch.float32
    ref = linear_cross_entropy_reference(h, w, None, y)
    dh, dw = torch.autograd.grad(ref, (h, w))
    assert abs(loss.item() - ref.item()) < 0.02 * ref.item()
    assert torch.nn.functional.cosine_similarity(h.grad.flatten(), dh.flatten(), dim=0) > 0.99
    assert torch.nn.functional.cosine_similarity(w.grad.flatten(), dw.flatten(), dim=0) > 0.99


def test_linear_cross_entropy_bf16_bias_gradient_sums_the_fp32_softmax():
    """Under bf16 the products take G rounded to bf16, but the bias gradient sums the fp32 G (softmax of the bf16
    logits, less the targets' one-hots): what autograd gives for those logits, to fp32 rounding."""
    from rnnlm.ops import linear_cross_entropy as lce

    gen = torch.Generator().manual_seed(2)
    h = torch.randn(256, 64, generator=gen)
    w = torch.randn(500, 64, generator=gen) * 0.2
    b = torch.randn(500, generator=gen, requires_grad=True)
    y = torch.randint(0, 500, (256,), generator=gen)
    linear_cross_entropy(h, w, b, y, compute_dtype=torch.bfloat16).backward()
    hq, wq, bq = h.bfloat16(), w.bfloat16(), b.detach().bfloat16()
    z = lce.mm_nt(hq, wq, bq, lce._use_onednn(hq, wq)).float().requires_grad_()   # the same bf16 logits
    torch.nn.functional.cross_entropy(z, y).backward()
    assert b.grad.dtype == torch.float32
    torch.testing.assert_close(b.grad, z.grad.sum(0), rtol=1e-5, atol=1e-8)


def test_linear_cross_entropy_tied_weights_accumulate():
    """The same matrix as input embedding and output layer: both gradients add up."""
    gen = torch.Generator().manual_seed(1)
    emb = torch.randn(50, 16, generator=gen, requires_grad=True)
    x = torch.randint(0, 50, (30,), generator=gen)
    y = torch.randint(0, 50, (30,), generator=gen)
    linear_cross_entropy(torch.tanh(emb[x]), emb, None, y).backward()
    got = emb.grad
    emb.grad = None
    linear_cross_entropy_reference(torch.tanh(emb[x]), emb, None, y).backward()
    torch.testing.assert_close(got, emb.grad, rtol=2e-5, atol=2e-6)
