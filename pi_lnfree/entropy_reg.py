"""Entropy regularization of attention heads (Jha & Reagen, "Entropy-Guided Attention for Private
LLMs", 2025): a training-time penalty against both entropic overload and entropy collapse.

Each head (l, h) has a learnable threshold theta[l, h], a fraction of the maximum entropy
Emax = log(T) (T: the attention width, the sequence length of the batch). With E the entropy of
the head's attention and the deviation delta = E - theta[l, h] * Emax, the penalty is

    penalty(l, h) = delta^2  if |delta| > gamma * Emax,  else 0

(gamma: the tolerance; 0.20 in the authors' code), averaged over heads and over layers; the loss
becomes CE + lambda * L_entropy (lambda = 1e-5 in their code). Two granularities:

* `per = "query"` (the authors' public code, `EntropyRegularization.compute_loss`): E is each
  query position's entropy -sum_j A[i, j] log(A[i, j] + eps); the penalties of every sequence of
  the (micro-)batch and every query position are summed, then divided by heads and layers. Its
  size grows with batch size x T, which is what their lambda = 1e-5 was tuned with (128 sequences
  of 128 tokens per forward).
* `per = "head"` (their paper's Algorithm 1): E is the head's eq. 8 entropy, averaged over the
  query positions and the batch; one penalty per head.

The entropy is computed from the attention probabilities the model's forward used (the model
then runs its explicit-softmax path instead of the fused kernel). The thresholds are trained by
the same optimizer, without weight decay (as in their code); they are stored in the trainer's
state, not in the model, since inference never uses them.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

ENTROPY_EPS = 1e-12  # inside the log; a masked (zero) probability then contributes exactly 0


def query_entropy(att: torch.Tensor, eps: float = ENTROPY_EPS) -> torch.Tensor:
    """(B, H, T, T) attention probabilities -> (B, H, T) entropy of each query's row (nats)."""
    return -(att * torch.log(att + eps)).sum(dim=-1)


def entropy_penalty(attentions: list[torch.Tensor], thresholds: torch.Tensor, tolerance: float,
                    per: str = "query") -> torch.Tensor:
    """L_entropy (before the coefficient) of per-layer attentions, each (B, H, T, T), against
    `thresholds` (n_layer, n_head), fractions of log(T); `tolerance` is gamma (a fraction of
    log(T) too). Differentiable in both. See the module docstring for the formula and `per`.
    """
    if per not in ("query", "head"):
        raise ValueError(f"per must be 'query' or 'head', got {per!r}")
    if len(attentions) != thresholds.size(0):
        raise ValueError(f"{len(attentions)} attention layers for {thresholds.size(0)} threshold rows")
    total = thresholds.new_zeros(())
    for layer, att in enumerate(attentions):
        emax = math.log(att.size(-1))
        ent = query_entropy(att)  # (B, H, T)
        theta = thresholds[layer].to(ent.dtype)
        if per == "head":
            dev = ent.mean(dim=(0, 2)) - theta * emax  # (H,)
        else:
            dev = ent - theta[None, :, None] * emax
        pen = torch.where(dev.abs() > tolerance * emax, dev.square(), torch.zeros_like(dev))
        total = total + pen.sum() / att.size(1)
    return total / len(attentions)


class EntropyThresholds(nn.Module):
    """The learnable thresholds theta (n_layer, n_head), fractions of log(T), all starting at `init`."""

    def __init__(self, n_layer: int, n_head: int, init: float):
        super().__init__()
        self.theta = nn.Parameter(torch.full((n_layer, n_head), float(init)))

    def values(self) -> list[list[float]]:
        return self.theta.detach().float().tolist()


__all__ = ["ENTROPY_EPS", "EntropyThresholds", "entropy_penalty", "query_entropy"]
