"""Next-token cross-entropy through the LM head without materializing all the logits.

The plain path (`F.cross_entropy(lm_head(h))`) writes the (N, V) logits, reads them back for the
log-softmax, writes its output, and in backward allocates and zero-fills an (N, V) gradient,
scatters into it and runs the log-softmax backward: five to six passes over N x V floats that
do not fit in cache (4064 x 4096 fp32 = 64 MiB per step for the CPU recipe). Here the rows are
taken a chunk at a time, small enough that the chunk's logits stay in cache, and since the loss
is the end of the graph its gradient is formed in the same pass: softmax minus one-hot, then
grad_h = G @ W and grad_W += G^T @ h. Backward only scales the two by the incoming gradient.
Same math, same FLOPs, fewer passes over memory: what that gains on the CPU recipe, and against a
Hugging Face Trainer, is recorded in `benchmarks/results/bench_train.md`.
"""

from __future__ import annotations

import torch

# Rows per chunk are chosen so one chunk's fp32 logits take about this many elements (8 MiB):
# they then live in L2/L3 between the matmul, the softmax and the two gradient matmuls.
CHUNK_ELEMENTS = 2 * 1024 * 1024


def chunk_rows(vocab_size: int) -> int:
    """Rows per chunk for a vocabulary of `vocab_size`: about CHUNK_ELEMENTS logits, at least 64."""
    return max(64, CHUNK_ELEMENTS // vocab_size)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, rows: int) -> torch.Tensor:
        n = h.size(0)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        total = h.new_zeros((), dtype=torch.float64)
        minus_one = h.new_full((min(rows, n), 1), -1.0)
        for start in range(0, n, rows):
            hc, tc = h[start:start + rows], targets[start:start + rows]
            logp = torch.log_softmax(hc @ weight.t(), dim=1)
            total -= logp.gather(1, tc[:, None]).sum(dtype=torch.float64)
            if need_h or need_w:
                probs = logp.exp_()
                probs.scatter_add_(1, tc[:, None], minus_one[: tc.numel()])
                if need_h:
                    torch.mm(probs, weight, out=grad_h[start:start + rows])
                if need_w:
                    grad_w.addmm_(probs.t(), hc)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.n = n
        return (total / n).to(h.dtype)

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        scale = grad_loss / ctx.n
        return (None if grad_h is None else grad_h * scale, None if grad_w is None else grad_w * scale,
                None, None)


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         rows: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of `h @ weight.T` (N x V logits) against `targets` (N,), never holding
    more than `rows` rows of logits; differentiable in `h` and `weight`.

    The gradient is computed during the forward pass (the loss is always the graph's end), so
    calling it with grad enabled costs the backward's matmuls even if `.backward()` never runs.
    Every target must lie in [0, V).
    """
    if h.dim() != 2 or targets.shape != h.shape[:1]:
        raise ValueError(f"expected h (N, d) and targets (N,), got {tuple(h.shape)} and {tuple(targets.shape)}")
    if rows is None:
        rows = chunk_rows(weight.size(0))
    return _LinearCrossEntropy.apply(h, weight, targets, rows)
