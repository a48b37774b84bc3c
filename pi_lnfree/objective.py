"""The training objective of one micro-batch: next-token cross-entropy, plus the optional entropy
regularization (`pi_lnfree.entropy_reg`) and distillation from a frozen teacher
(`pi_lnfree.distill`).

    objective = CE                                             (plain)
              = (1 - w) * CE + w * T^2 * KL(teacher || student)  (train.distill_from set)
              + lambda * L_entropy                             (train.entropy_reg = lambda > 0)

The trainer logs CE as "loss" (comparable across runs) and the parts ("entropy_penalty": L_entropy
before lambda; "distill_kl": the KL at temperature T, before T^2 and w; "objective") beside it.
"""

from __future__ import annotations

from typing import Any

import torch

from pi_lnfree.distill import distillation_loss, load_teacher
from pi_lnfree.entropy_reg import EntropyThresholds, entropy_penalty
from pi_lnfree.errors import UserError

PART_KEYS = ("objective", "entropy_penalty", "distill_kl")  # fixed order: all-reduced as one tensor


class Objective:
    """The objective of a recipe's train.* keys for one student model."""

    def __init__(self, recipe, cfg, folder, positions: int, device: torch.device):
        t = recipe.section("train")
        self.t = t
        self.thresholds: EntropyThresholds | None = None
        if t["entropy_reg"] > 0:
            self.thresholds = EntropyThresholds(cfg.n_layer, cfg.n_head, t["entropy_reg_threshold"]).to(device)
        self.teacher, self.teacher_info = None, None
        if t["distill_from"]:
            self.teacher, self.teacher_info = load_teacher(t["distill_from"], cfg, folder, positions, device)

    @property
    def extra_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters trained beside the model's (the entropy thresholds), without weight decay."""
        return [self.thresholds.theta] if self.thresholds is not None else []

    @property
    def plain(self) -> bool:
        return self.thresholds is None and self.teacher is None

    def __call__(self, model, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(objective, ce, parts) of inputs x and targets y (B, T); parts hold detached scalars.

        Distillation needs the student's logits, so it takes the model's plain LM-head path (not
        the chunked loss); entropy regularization makes the model return the softmax
        probabilities its attention used (the explicit path, not the fused kernel)."""
        t = self.t
        want_att = self.thresholds is not None
        out = model(x, y, with_logits=self.teacher is not None, return_attention=want_att)
        logits, ce = out[0], out[1]
        objective, parts = ce, {}
        if self.teacher is not None:
            with torch.no_grad():
                teacher_logits = self.teacher(x)
            objective, kl = distillation_loss(ce, logits, teacher_logits, t["distill_temperature"],
                                              t["distill_weight"])
            parts["distill_kl"] = kl.detach()
        if want_att:
            pen = entropy_penalty(out[2], self.thresholds.theta, t["entropy_reg_tolerance"], t["entropy_reg_per"])
            objective = objective + t["entropy_reg"] * pen
            parts["entropy_penalty"] = pen.detach()
        if not self.plain:
            parts["objective"] = objective.detach()
        return objective, ce, parts

    # -- checkpoint state ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.thresholds is not None:
            out["entropy_thresholds"] = self.thresholds.theta.detach().cpu().clone()
        if self.teacher_info is not None:
            out["distill_teacher"] = dict(self.teacher_info)
        return out

    def load_state_dict(self, state: dict[str, Any], where: str) -> None:
        """Restore the thresholds; UserError when the teacher file changed since the run started."""
        if self.thresholds is not None:
            with torch.no_grad():
                self.thresholds.theta.copy_(state["entropy_thresholds"])
        if self.teacher_info is not None:
            was = (state.get("distill_teacher") or {}).get("sha256")
            if was != self.teacher_info["sha256"]:
                raise UserError(f"--resume: the distillation teacher {self.teacher_info['path']} is not the file "
                                f"{where} was trained with (sha256 differs)")

    def describe(self) -> list[str]:
        """One line per term beyond CE, for the trainer's start message."""
        t, lines = self.t, []
        if self.teacher_info is not None:
            lines.append(f"  distilling from {self.teacher_info['path']} ({self.teacher_info['label']}): "
                         f"T = {t['distill_temperature']}, w = {t['distill_weight']}")
        if self.thresholds is not None:
            lines.append(f"  entropy regularization: lambda = {t['entropy_reg']}, tolerance "
                         f"{t['entropy_reg_tolerance']} x log(T), per {t['entropy_reg_per']}")
        return lines

    def record(self) -> dict[str, Any]:
        """Extra fields of the periodic entropy line: the thresholds (fractions of log(T))."""
        return {"entropy_thresholds": self.thresholds.values()} if self.thresholds is not None else {}


def method_tags(train_state: dict[str, Any]) -> list[str]:
    """How a checkpoint was trained beyond plain next-token training, from its "train" state:
    "EntReg LAMBDA" (the coefficient, so that runs at two strengths read apart), "KD from LABEL",
    "LN removed by fine-tuning"."""
    recipe = train_state.get("recipe") or {}
    tags = []
    if recipe.get("train.entropy_reg"):
        tags.append(f"EntReg {float(recipe['train.entropy_reg']):g}")
    if recipe.get("train.distill_from"):
        teacher = (train_state.get("distill_teacher") or {}).get("label") or "a teacher"
        tags.append(f"KD from {teacher}")
    if recipe.get("train.ln_remove_mlp"):
        tags.append("LN removed by fine-tuning")
    return tags


def run_label(cfg, train_state: dict[str, Any] | None) -> str:
    """The configuration label with the training method, e.g. "SM+R [EntReg 4e-05]",
    "SM+R [KD from SM+LN+G]"; just `variant_label(cfg)` for plain training."""
    from pi_lnfree.config import variant_label

    tags = method_tags(train_state or {})
    return variant_label(cfg) + (f" [{', '.join(tags)}]" if tags else "")


__all__ = ["Objective", "PART_KEYS", "method_tags", "run_label"]
