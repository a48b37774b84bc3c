"""The learned-attention check on hand-made attention: uniform, peaked, partly learned and mixed
layer by layer, with shares counted by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from pi_lnfree.attention_check import (
    LEARNED,
    MOSTLY_UNIFORM,
    UNIFORM_FRACTION,
    attention_check,
    check_of,
    entropy_spread,
)
from pi_lnfree.diagnostics import entropy_bands, headwise_entropy, max_causal_entropy
from pi_lnfree.errors import UserError

T = 32


def uniform_head(t: int = T) -> torch.Tensor:
    """Row i attends equally to keys 0..i (the causal maximum)."""
    return torch.ones(t, t).tril() / torch.arange(1, t + 1, dtype=torch.float32)[:, None]


def peaked_head(t: int = T) -> torch.Tensor:
    """Row i attends only to key i (entropy 0)."""
    return torch.eye(t)


def half_window_head(t: int = T) -> torch.Tensor:
    """Row i attends equally to its last ceil((i+1)/2) keys: entropy log(ceil((i+1)/2)) per row,
    about 80% of the causal maximum at T=32 (something learned, not uniform)."""
    a = torch.zeros(t, t)
    for i in range(t):
        w = math.ceil((i + 1) / 2)
        a[i, i + 1 - w: i + 1] = 1.0 / w
    return a


class HandMadeAttention(nn.Module):
    """Stands in for a GPT: returns the given per-layer attention (H, T, T) for any batch."""

    def __init__(self, layers: list[list[torch.Tensor]]):
        super().__init__()
        self.layers = [torch.stack(heads) for heads in layers]

    def forward(self, idx, return_attention=False):
        b = idx.size(0)
        return None, [a.unsqueeze(0).expand(b, -1, -1, -1) for a in self.layers]


def entropy_of(layers: list[list[torch.Tensor]]) -> np.ndarray:
    return headwise_entropy(HandMadeAttention(layers), torch.zeros(2, T, dtype=torch.long)).numpy()


def test_hand_made_heads_have_the_entropy_computed_by_hand():
    e = entropy_of([[uniform_head(), peaked_head(), half_window_head()]])
    hmax = math.lgamma(T + 1) / T
    half = sum(math.log(math.ceil(i / 2)) for i in range(1, T + 1)) / T
    np.testing.assert_allclose(e[0], [hmax, 0.0, half], atol=1e-9)
    assert 0.7 < half / hmax < UNIFORM_FRACTION  # the partly learned head is clearly below the margin


def test_all_uniform_is_flagged_and_overload_is_explained_by_the_spread():
    e = entropy_of([[uniform_head()] * 4] * 3)
    check = attention_check(e, T)
    assert check["uniform_heads"] == 12 and check["heads"] == 12
    assert check["uniform_share"] == 1.0 and check["uniform_share_per_layer"] == [1.0, 1.0, 1.0]
    assert check["learned"] is False and check["verdict"] == MOSTLY_UNIFORM
    assert "2,000" in check["advice"] and "train.max_steps" in check["advice"]
    # the Emax-relative "overload" is 100% here only because every head is at the same entropy
    assert entropy_bands(e)["overload_fraction"] == 1.0
    assert check["min_over_max"] == pytest.approx(1.0, abs=1e-12) and check["entropy_std"] < 1e-12
    assert check["max_entropy"] == max_causal_entropy(T)


def test_all_peaked_is_learned():
    check = attention_check(entropy_of([[peaked_head()] * 4] * 2), T)
    assert check["uniform_heads"] == 0 and check["uniform_share_per_layer"] == [0.0, 0.0]
    assert check["learned"] is True and check["verdict"] == LEARNED and check["advice"] is None


def test_mixed_layer_by_layer_exact_shares():
    u, p, h = uniform_head(), peaked_head(), half_window_head()
    layers = [[u, u, u, u], [u, u, p, h], [p, h, p, h]]
    check = attention_check(entropy_of(layers), T)
    assert check["uniform_share_per_layer"] == [1.0, 0.5, 0.0]
    assert check["uniform_heads"] == 6 and check["uniform_share"] == 0.5
    assert check["verdict"] == MOSTLY_UNIFORM  # half the heads uniform is already "mostly uniform"
    layers[1][1] = h  # one uniform head fewer: 5 of 12
    check = attention_check(entropy_of(layers), T)
    assert check["uniform_share_per_layer"] == [1.0, 0.25, 0.0]
    assert check["uniform_share"] == 5 / 12 and check["verdict"] == LEARNED
    hmax = max_causal_entropy(T)
    assert check["entropy_min"] == pytest.approx(0.0, abs=1e-9) and check["entropy_max"] == pytest.approx(hmax)
    assert check["min_over_max"] == pytest.approx(0.0, abs=1e-9)


def test_margin_boundary_and_spread_by_hand():
    hmax = max_causal_entropy(128)
    at, below = UNIFORM_FRACTION * hmax, np.nextafter(UNIFORM_FRACTION * hmax, 0.0)
    e = np.array([[hmax, at], [below, 0.5 * hmax]])
    check = attention_check(e, 128)
    assert check["uniform_share_per_layer"] == [1.0, 0.0] and check["uniform_heads"] == 2
    assert check["threshold"] == at
    spread = entropy_spread(e)
    assert spread == {"entropy_min": 0.5 * hmax, "entropy_max": hmax, "entropy_std": float(np.std(e)),
                      "min_over_max": 0.5}
    assert entropy_spread([[0.0, 0.0]])["min_over_max"] == 1.0  # all collapsed: all equal
    assert attention_check(e, 128, uniform_fraction=0.5)["uniform_heads"] == 4


def test_check_of_old_results_and_bad_input():
    e = [[3.8, 1.0]]
    assert check_of({"entropy": e, "seq_len": 128}) == attention_check(e, 128)
    stored = {"verdict": "x"}
    assert check_of({"entropy": e, "seq_len": 128, "attention": stored}) is stored
    for bad in ([], [1.0, 2.0], [[]]):
        with pytest.raises(UserError):
            attention_check(bad, 128)
    with pytest.raises(UserError):
        attention_check(e, 0)
    with pytest.raises(UserError):
        attention_check(e, 128, uniform_fraction=1.5)
