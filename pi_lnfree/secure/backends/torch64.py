"""The float64 torch backend of the decoder structure: exact maths (no fixed point, no
approximation), the reference that tests compare with the plaintext `GPT` and with the secure
backends, and the base of the range audit (`pi_lnfree.secure.audit`).

Every operator is the plaintext definition: the causal softmax masks with -inf, LayerNorm uses
the population variance with eps inside the square root (as `torch.nn.LayerNorm`), activations
are `pi_lnfree.model.activate`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pi_lnfree.secure.backends.base import TensorOps


class Torch64Ops(TensorOps):
    """Exact float64 operators on torch tensors (batch 1)."""

    cat = staticmethod(torch.cat)

    def weight(self, tensor: torch.Tensor | None, shape: tuple[int, ...], transpose: bool) -> torch.Tensor:
        if tensor is None:
            raise ValueError("the float64 backend needs the weights themselves")
        t = tensor.detach().to(torch.float64)
        return t.t() if transpose else t

    def tokens(self, ids: torch.Tensor, seq_len: int, vocab_size: int) -> torch.Tensor:
        return F.one_hot(ids.long(), vocab_size).to(torch.float64).unsqueeze(0)

    def embedding(self, onehot, table, positions=None):
        x = onehot @ table
        return x if positions is None else x + positions[: onehot.size(1)]

    def linear(self, x, weight_t, bias=None):
        y = x @ weight_t
        return y if bias is None else y + bias

    def attention_scores(self, q, k):
        return (q / math.sqrt(q.size(-1))) @ k.transpose(-2, -1)

    def softmax(self, scores):
        T = scores.size(-1)
        visible = torch.ones(T, T, dtype=torch.bool, device=scores.device).tril()
        return scores.masked_fill(~visible, float("-inf")).softmax(dim=-1)

    def attention_mix(self, probs, v):
        return probs @ v

    def layernorm(self, x, gamma, beta, eps: float):
        mu = x.mean(-1, keepdim=True)
        var = (x - mu).square().mean(-1, keepdim=True)
        y = (x - mu) / torch.sqrt(var + eps)
        if gamma is not None:
            y = y * gamma
        return y if beta is None else y + beta

    def dyt(self, x, alpha, gamma, beta):
        return torch.tanh(alpha * x) * gamma + beta

    def activation(self, x, name: str, slope=None):
        from pi_lnfree.model import activate

        return activate(x, name, slope)

    def lm_head(self, x, weight_t, bias=None, reveal_to: int | None = None):
        y = x @ weight_t
        return y if bias is None else y + bias


__all__ = ["Torch64Ops"]
