"""The chunked LM-head cross-entropy equals a float64 reference, in value and in both gradients."""

import pytest
import torch
import torch.nn.functional as F

from pi_lnfree.config import make_config
from pi_lnfree.losses import linear_cross_entropy
from pi_lnfree.model import GPT


def reference(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor, upstream: float):
    h64, w64 = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    loss = F.cross_entropy(h64 @ w64.t(), t)
    (loss * upstream).backward()
    return loss.item(), h64.grad, w64.grad


@pytest.mark.parametrize("n,rows", [(50, 7), (50, 50), (50, 64), (129, 32)])
def test_loss_and_gradients_match_float64(n, rows):
    g = torch.Generator().manual_seed(n + rows)
    d, v = 16, 61
    h = torch.randn(n, d, generator=g, requires_grad=True)
    w = (torch.randn(v, d, generator=g) * 0.5).requires_grad_()
    t = torch.randint(0, v, (n,), generator=g)
    t[:3] = torch.tensor([0, v - 1, 0])  # the vocabulary's edges, and a repeated target
    upstream = 2.5  # the gradient is scaled by whatever flows in (e.g. 1/grad_accum)
    loss = linear_cross_entropy(h, w, t, rows=rows)
    (loss * upstream).backward()
    ref_loss, ref_h, ref_w = reference(h, w, t, upstream)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-6)
    torch.testing.assert_close(h.grad.double(), ref_h, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(w.grad.double(), ref_w, rtol=1e-5, atol=1e-7)


def test_without_grad_and_with_one_input_frozen():
    g = torch.Generator().manual_seed(1)
    h, w = torch.randn(40, 8, generator=g), torch.randn(30, 8, generator=g)
    t = torch.randint(0, 30, (40,), generator=g)
    expected = F.cross_entropy(h.double() @ w.double().t(), t).item()
    with torch.no_grad():
        assert linear_cross_entropy(h, w, t, rows=9).item() == pytest.approx(expected, rel=1e-6)
    w.requires_grad_()
    linear_cross_entropy(h, w, t, rows=9).backward()
    assert h.grad is None
    torch.testing.assert_close(w.grad.double(), reference(h, w, t, 1.0)[2], rtol=1e-5, atol=1e-7)


def test_rejects_mismatched_shapes_and_out_of_vocabulary_targets():
    h, w = torch.randn(10, 4), torch.randn(6, 4)
    with pytest.raises(ValueError, match="expected h"):
        linear_cross_entropy(h, w, torch.zeros(9, dtype=torch.long))
    with pytest.raises((IndexError, RuntimeError)):
        linear_cross_entropy(h, w, torch.full((10,), 6))


@pytest.mark.parametrize("variant", ["sm-ln-g", "sm-lrelu-global"])
def test_training_forward_equals_the_logits_path(variant):
    """`with_logits=False` (what the trainer calls) gives the plain path's loss and gradients."""
    cfg = make_config("tiny", variant, vocab_size=211)
    torch.manual_seed(0)
    model = GPT(cfg)
    idx = torch.randint(0, 211, (3, 33))
    logits, loss = model(idx[:, :-1], idx[:, 1:])
    loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    none, chunked = model(idx[:, :-1], idx[:, 1:], with_logits=False)
    chunked.backward()
    assert none is None and logits.shape == (3, 32, 211)
    assert chunked.item() == pytest.approx(loss.item(), rel=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, plain[name], rtol=1e-4, atol=1e-6, msg=name)
