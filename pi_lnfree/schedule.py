"""Learning-rate schedule: linear warmup, then linear, cosine or no decay.

Step `s` (0-based optimizer step) uses lr_at(s): during warmup (s < W) the rate rises linearly
to the peak, lr * (s + 1) / W, so the first step already learns; after warmup it decays from
the peak at s = W towards lr * min_lr_frac, reached at s = total (one past the last step, as in
Hugging Face's linear schedule, so the last step still learns).
"""

from __future__ import annotations

import math

DECAYS = ("linear", "cosine", "constant")  # after warmup


class LRSchedule:
    """lr as a pure function of the step; the state is just the next step to take."""

    def __init__(self, lr: float, total_steps: int, warmup_steps: int = 0, decay: str = "linear",
                 min_lr_frac: float = 0.0):
        if decay not in DECAYS:
            raise ValueError(f"unknown decay {decay!r}")
        self.lr, self.total, self.decay = lr, max(1, total_steps), decay
        self.warmup = min(max(0, warmup_steps), self.total - 1)
        self.min_lr = lr * min_lr_frac
        self.step = 0

    @classmethod
    def from_recipe(cls, recipe, total_steps: int) -> LRSchedule:
        """Build from a TrainConfig's optim/schedule keys (warmup_frac wins over warmup_steps)."""
        frac = recipe["schedule.warmup_frac"]
        warmup = math.ceil(frac * total_steps) if frac > 0 else recipe["schedule.warmup_steps"]
        return cls(recipe["optim.lr"], total_steps, warmup, recipe["schedule.decay"], recipe["schedule.min_lr_frac"])

    def lr_at(self, step: int) -> float:
        """Learning rate of optimizer step `step` (0-based)."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        if self.decay == "constant":
            return self.lr
        span = self.total - self.warmup
        progress = min(1.0, (step - self.warmup) / span) if span > 0 else 1.0
        if self.decay == "linear":
            factor = 1.0 - progress
        else:
            factor = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr + (self.lr - self.min_lr) * factor

    def state_dict(self) -> dict:
        return {"step": self.step, "lr": self.lr, "total": self.total, "warmup": self.warmup,
                "decay": self.decay, "min_lr": self.min_lr}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
