"""Knowledge distillation from a frozen teacher (Hinton, Vinyals & Dean, "Distilling the Knowledge
in a Neural Network", 2015), the paper's suggested way to train an LN-free student from an LN
teacher.

With temperature T, weight w, next-token cross-entropy CE of the student, and the teacher's and
student's softened distributions p_t = softmax(z_t / T), p_s = softmax(z_s / T) at each position:

    loss = (1 - w) * CE + w * T^2 * KL(p_t || p_s),   KL = mean over positions of
                                                           sum_v p_t[v] (log p_t[v] - log p_s[v])

The T^2 keeps the soft term's gradient on the scale of the hard term's as T changes (Hinton et al.,
section 2: the soft-target gradients scale as 1/T^2). The KL is the mean over the batch's
positions of the per-position divergence: `torch.nn.functional.kl_div(log p_s, log p_t,
log_target=True, reduction="batchmean")` on (positions, vocab) rows.

The teacher is loaded once, in eval mode with every parameter frozen; it must read the student's
tokens: the same tokenizer (the data folder's sha256 against the one the teacher's checkpoint
records) and the same vocabulary size. Its shape may differ.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pi_lnfree.errors import UserError


def softened_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(p_t || p_s) at `temperature`, averaged over positions: logits (..., V) -> scalar (nats).
    Computed in float32 at least; differentiable in the student's logits."""
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    s = F.log_softmax(student_logits.to(dtype) / temperature, dim=-1).reshape(-1, student_logits.size(-1))
    t = F.log_softmax(teacher_logits.to(dtype) / temperature, dim=-1).reshape(-1, teacher_logits.size(-1))
    return (t.exp() * (t - s)).sum() / s.size(0)


def distillation_loss(ce: torch.Tensor, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: float, weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, kl): loss = (1 - weight) * ce + weight * temperature^2 * kl, with kl = `softened_kl`."""
    kl = softened_kl(student_logits, teacher_logits, temperature)
    return (1.0 - weight) * ce + weight * temperature ** 2 * kl, kl


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_teacher(path: str | os.PathLike, student_cfg, folder, positions: int,
                 device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The frozen teacher of a distillation run: (model in eval mode, no parameter requiring grad;
    {"path", "sha256", "label"}). UserError when it cannot read the student's data."""
    from pi_lnfree.checkpoint import load_model
    from pi_lnfree.config import variant_label
    from pi_lnfree.diagnostics import check_same_tokenizer, resolve_checkpoint

    ckpt_path = resolve_checkpoint(path)
    teacher, ckpt = load_model(ckpt_path, device)
    cfg = teacher.config
    try:
        check_same_tokenizer(cfg, folder, ckpt)
    except UserError as e:
        raise UserError(f"distillation teacher {ckpt_path}: {e}") from None
    if cfg.vocab_size != student_cfg.vocab_size:
        raise UserError(f"distillation teacher {ckpt_path} has a vocabulary of {cfg.vocab_size} tokens, the "
                        f"student {student_cfg.vocab_size}: they must match")
    if cfg.block_size < positions:
        raise UserError(f"distillation teacher {ckpt_path} has a context of {cfg.block_size}, the training "
                        f"sequences need {positions}")
    for p in teacher.parameters():
        p.requires_grad_(False)
    info = {"path": str(Path(ckpt_path).resolve()), "sha256": file_sha256(ckpt_path), "label": variant_label(cfg)}
    return teacher.eval(), info


__all__ = ["distillation_loss", "file_sha256", "load_teacher", "softened_kl"]
