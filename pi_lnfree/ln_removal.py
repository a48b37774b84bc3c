"""Removing LayerNorm from a trained model by fine-tuning, then folding what is left into weights.

The method of Heimersheim (2024) and Baroni et al., "Transformers Don't Need LayerNorm at Inference
Time" (2025): during fine-tuning each LayerNorm y = (x - mean(x)) / std(x) * g + b is replaced, in
stages, by one that divides by a frozen scalar s instead of the per-token std: s is the running
average (an EMA over the training steps before the freeze) of the per-token std that norm saw. The
MLP norms (ln_2) freeze first, layer by layer, then the attention norms (ln_1), then the final
norm; fine-tuning continues in between so the model adapts. (Their code freezes the attention
norm's query/key and value paths in two separate stages and treats the first and end-of-text
positions specially; here ln_1 freezes as one, and every position is treated alike.)

A frozen norm is linear: y = C x * (g / s) + b with the centring matrix C = I - 1 1^T / d. So when
every norm is frozen it folds exactly into the linear layer it feeds (W, c):

    W y + c = (A - rowmean(A) 1^T) x + (c + W b),   A = W diag(g / s)

ln_1 folds into the attention's c_attn, ln_2 into the MLP's c_fc, the final norm into the LM head
(untied from the embedding, and given a bias W b, since the head has none). The result is an
ordinary LN-free model (norm = "none", final_norm = false) computing the same function.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from pi_lnfree.config import ModelConfig
from pi_lnfree.errors import UserError


class FreezableLayerNorm(nn.LayerNorm):
    """LayerNorm over the last dim that can switch to a frozen scale.

    Buffers (saved in checkpoints): `std_ema`, the running average of the per-token std
    sqrt(var + eps) seen in training forward passes (0 before the first), and `frozen`. While not
    frozen it is exactly `nn.LayerNorm`, and each forward with grad enabled in train mode folds
    the batch's mean per-token std into `std_ema` with decay `ema_decay` (the first one sets it);
    once frozen it computes (x - mean(x)) / std_ema * weight + bias. Input and output (..., d).
    """

    def __init__(self, d: int, eps: float = 1e-5, ema_decay: float = 0.99):
        super().__init__(d, eps=eps)
        self.ema_decay = ema_decay
        self.register_buffer("std_ema", torch.zeros(()))
        self.register_buffer("frozen", torch.zeros((), dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(self.frozen):
            xc = x - x.mean(-1, keepdim=True)
            return xc / self.std_ema.to(x.dtype) * self.weight + self.bias
        if self.training and torch.is_grad_enabled():
            with torch.no_grad():
                std = (x.float().var(-1, unbiased=False) + self.eps).sqrt().mean()
                ema = self.std_ema * self.ema_decay + std * (1.0 - self.ema_decay)
                self.std_ema.copy_(torch.where(self.std_ema == 0, std, ema))
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def freeze(self) -> None:
        """Switch to the frozen scale (RuntimeError when no std was ever collected)."""
        if float(self.std_ema) <= 0.0:
            raise RuntimeError("cannot freeze a LayerNorm that has seen no training batch")
        self.frozen.fill_(True)


@dataclass(frozen=True)
class RemovalSchedule:
    """When each norm freezes: ln_2 of layer i at `mlp + i * gap`, ln_1 of layer i at
    `attn + i * gap`, the final norm at `final`. Steps are numbered from 1 as in metrics.jsonl; a
    norm runs frozen in its freeze step and every step after. `ema` is the running-average decay."""

    mlp: int
    attn: int
    final: int
    gap: int = 0
    ema: float = 0.99

    @classmethod
    def from_recipe(cls, recipe) -> RemovalSchedule | None:
        """The schedule of a recipe's train.ln_remove_* keys; None when removal is off."""
        t = recipe.section("train")
        if not t["ln_remove_mlp"]:
            return None
        return cls(t["ln_remove_mlp"], t["ln_remove_attn"], t["ln_remove_final"], t["ln_remove_gap"],
                   t["ln_remove_ema"])

    def freeze_steps(self, n_layer: int) -> dict[str, int]:
        """Module name -> the step it freezes at."""
        out = {f"blocks.{i}.ln_2": self.mlp + i * self.gap for i in range(n_layer)}
        out.update({f"blocks.{i}.ln_1": self.attn + i * self.gap for i in range(n_layer)})
        out["ln_f"] = self.final
        return out

    def last_step(self, n_layer: int) -> int:
        return max(self.freeze_steps(n_layer).values())


def check_removable(cfg: ModelConfig, schedule: RemovalSchedule, total_steps: int) -> None:
    """UserError unless `cfg` can go through `schedule` in `total_steps` and fold afterwards."""
    if cfg.norm != "layernorm":
        raise UserError(f"LayerNorm removal needs a model with LayerNorm (model.norm = \"layernorm\"), "
                        f"not {cfg.norm!r}")
    if not cfg.bias:
        raise UserError("LayerNorm removal needs model.bias = true: each norm's bias folds into the next "
                        "layer's bias")
    last = schedule.last_step(cfg.n_layer)
    if last > total_steps:
        raise UserError(f"the LayerNorm removal schedule freezes its last norm at step {last}, after the "
                        f"run's {total_steps} steps: lower train.ln_remove_* or raise train.max_steps")


def removable_norms(model: nn.Module) -> dict[str, FreezableLayerNorm]:
    """Name -> every FreezableLayerNorm of the model."""
    return {name: m for name, m in model.named_modules() if isinstance(m, FreezableLayerNorm)}


def apply_schedule(model: nn.Module, schedule: RemovalSchedule, step: int) -> list[str]:
    """Freeze every norm whose freeze step is <= `step` (the number, from 1, of the step about to
    run) and set the EMA decay; returns the names frozen by this call."""
    steps = schedule.freeze_steps(model.config.n_layer)
    newly = []
    for name, norm in removable_norms(model).items():
        norm.ema_decay = schedule.ema
        if not bool(norm.frozen) and step >= steps[name]:
            norm.freeze()
            newly.append(name)
    return newly


def _fold_into(linear_w: torch.Tensor, linear_b: torch.Tensor | None, norm: FreezableLayerNorm):
    """(W', c') of `W y + c` with y the frozen norm's output, in float64 (see the module docstring)."""
    w = linear_w.double()
    g = norm.weight.detach().double() / norm.std_ema.double()
    a = w * g[None, :]
    w_new = a - a.mean(dim=1, keepdim=True)
    shift = w @ norm.bias.detach().double()
    b_new = shift if linear_b is None else linear_b.double() + shift
    return w_new, b_new


def fold_frozen_norms(model: nn.Module) -> nn.Module:
    """A trained model whose every LayerNorm is frozen -> the equivalent LN-free `GPT` (eval mode).

    The new config has norm = "none", final_norm = false, ln_removal = false; when the final norm
    was folded the LM head is untied (tie_embeddings = false) and has a bias (head_bias = true).
    Weights are folded in float64 and stored in the model's dtype. Raises UserError when a norm is
    not frozen yet.
    """
    from pi_lnfree.model import GPT

    cfg = model.config
    norms = removable_norms(model)
    loose = [name for name, n in norms.items() if not bool(n.frozen)]
    if not norms or loose:
        raise UserError(f"cannot fold: norms not frozen: {', '.join(loose) or 'the model has no removable norms'}")
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    dtype = state["wte.weight"].dtype
    new_cfg = cfg.replace(norm="none", final_norm=False, ln_removal=False)
    for i in range(cfg.n_layer):
        for ln, lin in (("ln_1", "attn.c_attn"), ("ln_2", "mlp.c_fc")):
            p = f"blocks.{i}."
            w, b = _fold_into(state[p + lin + ".weight"], state.get(p + lin + ".bias"), norms[p + ln])
            state[p + lin + ".weight"], state[p + lin + ".bias"] = w.to(dtype), b.to(dtype)
    if cfg.final_norm:
        head = state["lm_head.weight"]
        w, b = _fold_into(head, state.get("lm_head.bias"), norms["ln_f"])
        state["lm_head.weight"], state["lm_head.bias"] = w.to(dtype), b.to(dtype)
        new_cfg = new_cfg.replace(tie_embeddings=False, head_bias=True)
    state = {k: v for k, v in state.items() if ".ln_" not in k and not k.startswith("ln_f.")}
    folded = GPT(new_cfg).to(dtype)
    folded.load_state_dict(state, strict=True)
    return folded.to(next(model.parameters()).device).eval()


__all__ = ["FreezableLayerNorm", "RemovalSchedule", "apply_schedule", "check_removable", "fold_frozen_norms",
           "removable_norms"]
