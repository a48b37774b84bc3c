"""Diagnostics on a checkpoint: perplexity, headwise attention entropy, entropy bands, dynamics.

Headwise entropy follows eq. 8 of the paper: for head h of layer l with causal attention matrix
A (T x T, rows sum to 1), E(l, h) = -(1/T) * sum_i sum_j A[i, j] * log(A[i, j] + eps). It is
computed from the explicit softmax probabilities (`model(idx, return_attention=True)`), never from
a fused kernel, and accumulated in float64.
"""

from __future__ import annotations

import torch

DEFAULT_EPS = 1e-12


@torch.no_grad()
def headwise_entropy(model, idx: torch.Tensor, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """Eq. 8 entropy of every head on the token batch `idx` (B, T), averaged over the batch.

    Returns a float64 tensor of shape (n_layer, n_head) on the CPU. The model's train/eval mode
    is left as it is (the model has no dropout, so both give the same probabilities).
    """
    _, attentions = model(idx, return_attention=True)
    return torch.stack([_entropy_of_probs(att, eps).mean(dim=0) for att in attentions]).cpu()


def _entropy_of_probs(att: torch.Tensor, eps: float) -> torch.Tensor:
    """(B, H, T, T) probabilities -> (B, H) eq. 8 entropies in float64."""
    p = att.double()
    per_query = -(p * torch.log(p + eps)).sum(dim=-1)  # (B, H, T); masked keys have p = 0
    return per_query.mean(dim=-1)
