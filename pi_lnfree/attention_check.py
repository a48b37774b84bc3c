"""Has a model learned attention yet? Uniform causal attention as the reference point.

Headwise entropy (the paper's eq. 8) of head (l, h) on a sequence of T tokens is the mean over
query rows i = 1..T of the entropy of that row's attention, -sum_j A[i, j] log A[i, j]. Row i of a
causal head sees i keys, so its entropy is at most log(i), reached only by uniform attention over
those keys. The largest possible eq. 8 value, "the causal maximum", is therefore the entropy of
uniform causal attention averaged over rows:

    Hmax(T) = (1/T) * sum_{i=1..T} log(i) = lgamma(T + 1) / T        (`max_causal_entropy`)

A head is counted as **uniform** when its entropy is at least `UNIFORM_FRACTION` (98%) of Hmax(T).
Why 98%: a freshly initialised model (weights N(0, 0.02)) has near-zero attention scores and sits
at 100.0% of Hmax (cpu-small: within 1e-9); LN-free cpu-small models stay at 99.8-99.9% for their first few hundred
training steps; heads that have learned something (the LayerNorm models after 200 steps, which
attend to recent tokens) are at about 90-93% on average. 98% separates these with room for the
sampling noise of an entropy averaged over a few hundred sequences. At T=128, Hmax = 3.878 nats
and the margin is 0.078 nats.

When at least `MOSTLY_UNIFORM_SHARE` (half) of a model's heads are uniform, its perplexity is
mostly that of a bag-of-words model (each position averages the values of all earlier ones), and
its overload fraction (share of heads in the top quarter of [0, Emax], Emax being the model's own
largest head entropy) is near 100% by construction: every head sits at the same value. Neither
says anything about the paper's comparison yet; the verdict says so and names a budget.

The spread of the heads' entropies (min, max, Emin/Emax, std) goes with every overload number:
an overload fraction of 100% with Emin/Emax = 0.999 means "every head is at the same entropy",
not "entropic overload".
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pi_lnfree.errors import UserError

UNIFORM_FRACTION = 0.98  # a head is uniform when E >= UNIFORM_FRACTION * Hmax(T)
MOSTLY_UNIFORM_SHARE = 0.5  # at least this share of uniform heads: the comparison is not meaningful yet
LEARNED = "attention learned"
MOSTLY_UNIFORM = "mostly uniform: configuration comparison and overload fraction not meaningful yet"
# What is known about the budget attention needs (this project's CPU runs and an independent
# reference trainer; see the README's science section).
BUDGET_ADVICE = (
    "at the cpu-small shape (4 layers x 4 heads, d=128, T=128, batch 32, lr 1e-3), LN-free models keep "
    "uniform attention for the first few hundred steps; the paper's SM+R-below-SM+G direction appears from "
    "about 1,000 steps (4M tokens) and is clearer at 2,000-3,000 steps (8-12M tokens): "
    "`pi-lnfree train --recipe training/cpu.toml --set train.max_steps=2000` "
    "(`benchmarks/cpu_matrix.sh` runs the whole matrix at that budget)"
)


def max_causal_entropy(seq_len: int) -> float:
    """Largest possible eq. 8 entropy of a causal head over `seq_len` positions (nats): query i
    sees i + 1 keys, so uniform attention gives log(i + 1); averaged over positions, lgamma(T+1)/T.

    Raises UserError when `seq_len` < 1.
    """
    if seq_len < 1:
        raise UserError(f"sequence length must be at least 1, got {seq_len}")
    return math.lgamma(seq_len + 1) / seq_len


def entropy_spread(entropy: np.ndarray | list) -> dict[str, float]:
    """Spread of a (layers, heads) entropy matrix in nats: `entropy_min`, `entropy_max`,
    `entropy_std` (population std over all heads) and `min_over_max` (Emin / Emax; 1.0 when every
    head has the same entropy, and when Emax is 0).

    Raises UserError on an empty or non-2-D matrix.
    """
    e = _matrix(entropy)
    emin, emax = float(e.min()), float(e.max())
    return {"entropy_min": emin, "entropy_max": emax, "entropy_std": float(e.std()),
            "min_over_max": emin / emax if emax > 0 else 1.0}


def attention_check(entropy: np.ndarray | list, seq_len: int,
                    uniform_fraction: float = UNIFORM_FRACTION) -> dict[str, Any]:
    """The learned-attention check of one model from its headwise entropy.

    `entropy`: (n_layer, n_head) eq. 8 entropies in nats, measured on sequences of `seq_len`
    tokens (the T of Hmax(T)). Returns a dict:

    - `uniform_fraction` (the margin), `max_entropy` (Hmax(T), nats), `threshold` (nats), `seq_len`;
    - `uniform_heads`, `heads`, `uniform_share` (uniform_heads / heads) and
      `uniform_share_per_layer` (one share per layer);
    - the spread of `entropy_spread`;
    - `learned` (False when uniform_share >= MOSTLY_UNIFORM_SHARE), `verdict` (LEARNED or
      MOSTLY_UNIFORM) and `advice` (the budget needed; None when attention is learned).

    Raises UserError on an empty or non-2-D matrix, `seq_len` < 1, or a margin outside (0, 1].
    """
    e = _matrix(entropy)
    if not 0.0 < uniform_fraction <= 1.0:
        raise UserError(f"uniform fraction must be in (0, 1], got {uniform_fraction}")
    hmax = max_causal_entropy(int(seq_len))
    threshold = uniform_fraction * hmax
    uniform = e >= threshold
    share = float(uniform.mean())
    learned = share < MOSTLY_UNIFORM_SHARE
    return {
        "uniform_fraction": uniform_fraction,
        "max_entropy": hmax,
        "threshold": threshold,
        "seq_len": int(seq_len),
        "uniform_heads": int(uniform.sum()),
        "heads": int(uniform.size),
        "uniform_share": share,
        "uniform_share_per_layer": [float(row.mean()) for row in uniform],
        **entropy_spread(e),
        "learned": learned,
        "verdict": LEARNED if learned else MOSTLY_UNIFORM,
        "advice": None if learned else BUDGET_ADVICE,
    }


def check_of(entropy_result: dict[str, Any]) -> dict[str, Any]:
    """The `attention` check of an entropy result (`diagnostics.entropy_report`): the stored one,
    or computed from its `entropy` matrix and `seq_len` (results written before the check existed)."""
    stored = entropy_result.get("attention")
    if isinstance(stored, dict):
        return stored
    return attention_check(entropy_result["entropy"], int(entropy_result["seq_len"]))


def summary_line(check: dict[str, Any]) -> str:
    """One line for people: uniform heads, spread and verdict."""
    return (f"{check['uniform_heads']}/{check['heads']} heads uniform (entropy >= "
            f"{check['uniform_fraction']:.0%} of the causal maximum {check['max_entropy']:.3f} nats); "
            f"spread Emin/Emax {check['min_over_max']:.3f}, std {check['entropy_std']:.3f} nats: {check['verdict']}")


def _matrix(entropy: np.ndarray | list) -> np.ndarray:
    e = np.asarray(entropy, dtype=np.float64)
    if e.ndim != 2 or e.size == 0:
        raise UserError(f"entropy must be a non-empty (layers, heads) matrix, got shape {e.shape}")
    return e
