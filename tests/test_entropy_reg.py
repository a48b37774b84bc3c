"""Entropy regularization: the penalty and its gradients against a float64 hand computation (loops
over heads and query positions, the derivative written out), the model's probabilities feeding it,
and a tiny run where the regularized heads' entropies move to their thresholds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from pi_lnfree.config import make_config
from pi_lnfree.entropy_reg import ENTROPY_EPS, entropy_penalty
from pi_lnfree.model import GPT
from pi_lnfree.runs import train_command

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "training" / "tiny.toml"


def _attentions(L=2, B=2, H=3, T=6, seed=0, dtype=torch.float64) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    out = []
    for layer in range(L):
        scores = torch.randn(B, H, T, T, generator=g, dtype=dtype) * (0.5 + 2.0 * layer)
        out.append(scores.masked_fill(~mask, float("-inf")).softmax(-1))
    return out


def _hand(atts, theta, tol, per):
    """Penalty and its gradients (w.r.t. every probability and every threshold), by hand in float64:
    E_i = -sum_j a_ij log(a_ij + eps), dE_i/da_ij = -(log(a_ij + eps) + a_ij / (a_ij + eps))."""
    L, (B, H, T, _) = len(atts), atts[0].shape
    emax = math.log(T)
    total, inside, outside = 0.0, 0, 0
    g_att = [torch.zeros_like(a) for a in atts]
    g_theta = torch.zeros(L, H, dtype=torch.float64)
    for layer, att in enumerate(atts):
        a = att.tolist()
        for h in range(H):
            def row_entropy(b, i, a=a, h=h):
                return -sum(p * math.log(p + ENTROPY_EPS) for p in a[b][h][i])

            def d_row(b, i, j, a=a, h=h):
                p = a[b][h][i][j]
                return -(math.log(p + ENTROPY_EPS) + p / (p + ENTROPY_EPS))

            target = float(theta[layer, h]) * emax
            if per == "head":
                e = sum(row_entropy(b, i) for b in range(B) for i in range(T)) / (B * T)
                dev = e - target
                inside, outside = inside + (abs(dev) <= tol * emax), outside + (abs(dev) > tol * emax)
                if abs(dev) > tol * emax:
                    total += dev * dev / (H * L)
                    g_theta[layer, h] = -2 * dev * emax / (H * L)
                    for b in range(B):
                        for i in range(T):
                            for j in range(T):
                                g_att[layer][b, h, i, j] = 2 * dev / (B * T) * d_row(b, i, j) / (H * L)
            else:
                for b in range(B):
                    for i in range(T):
                        dev = row_entropy(b, i) - target
                        inside, outside = inside + (abs(dev) <= tol * emax), outside + (abs(dev) > tol * emax)
                        if abs(dev) > tol * emax:
                            total += dev * dev / (H * L)
                            g_theta[layer, h] += -2 * dev * emax / (H * L)
                            for j in range(T):
                                g_att[layer][b, h, i, j] = 2 * dev * d_row(b, i, j) / (H * L)
    return total, g_att, g_theta, (inside, outside)


@pytest.mark.parametrize("per", ["query", "head"])
def test_penalty_and_gradients_match_a_float64_hand_computation(per):
    atts = [a.requires_grad_() for a in _attentions()]
    theta = torch.tensor([[0.2, 0.5, 0.9], [0.3, 0.6, 0.1]], dtype=torch.float64, requires_grad=True)
    tol = 0.1
    want, want_g_att, want_g_theta, (inside, outside) = _hand([a.detach() for a in atts], theta.detach(), tol, per)
    assert inside > 0 and outside > 0  # both sides of the tolerance band are exercised
    got = entropy_penalty(atts, theta, tol, per)
    got.backward()
    assert want > 0
    assert abs(got.item() - want) <= 1e-12 * max(1.0, want)
    assert torch.allclose(theta.grad, want_g_theta, atol=1e-12, rtol=1e-10)
    for a, g in zip(atts, want_g_att, strict=True):
        assert torch.allclose(a.grad, g, atol=1e-12, rtol=1e-10)
    # float32, as training computes it: the same within float32 rounding
    atts32 = [a.detach().float() for a in atts]
    got32 = entropy_penalty(atts32, theta.detach().float(), tol, per)
    assert abs(got32.item() - want) <= 1e-4 * max(1.0, want)


def test_band_is_exclusive_and_the_penalty_is_zero_inside():
    atts = _attentions(L=1, B=1, H=1, T=4)
    e = -(atts[0] * torch.log(atts[0] + ENTROPY_EPS)).sum(-1).mean().item()
    theta = torch.tensor([[e / math.log(4)]], dtype=torch.float64)
    assert entropy_penalty(atts, theta, 0.05, "head").item() == 0.0
    far = torch.tensor([[e / math.log(4) + 0.5]], dtype=torch.float64)
    assert entropy_penalty(atts, far, 0.05, "head").item() == pytest.approx((0.5 * math.log(4)) ** 2, rel=1e-12)


def test_the_penalty_reads_the_probabilities_the_forward_used():
    cfg = make_config("tiny", "sm-r", vocab_size=64)
    torch.manual_seed(0)
    model = GPT(cfg).double()
    idx = torch.randint(0, 64, (2, 16))
    logits_fast = model(idx)
    logits, atts = model(idx, return_attention=True)
    assert torch.allclose(logits, logits_fast, atol=1e-10)  # the explicit path computes the same output
    theta = torch.full((cfg.n_layer, cfg.n_head), 0.2, dtype=torch.float64)
    pen = entropy_penalty(atts, theta, 0.0, "head")
    pen.backward()
    assert model.blocks[0].attn.c_attn.weight.grad.abs().sum() > 0  # gradients reach the attention weights


def _last_entropy(run: Path) -> dict:
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if "entropy" in r][-1]


def test_tiny_run_moves_headwise_entropies_to_the_thresholds(data_dir, tiny_ln_run, tmp_path):
    """From a trained tiny model (attention no longer uniform: at uniform attention the entropy's
    gradient is zero), 30 steps with and without a strong regularizer towards 0.3 log(T)."""
    sets = [f"data.dir={json.dumps(str(data_dir))}", "train.progress=false", "train.max_steps=30",
            "train.eval_interval=0", "train.entropy_interval=30", f"train.init_from={json.dumps(str(tiny_ln_run))}"]
    reg = ["train.entropy_reg=1.0", "train.entropy_reg_per=head", "train.entropy_reg_threshold=0.3",
           "train.entropy_reg_tolerance=0.05", "train.log_interval=1"]
    train_command(TINY, sets, tmp_path / "plain")
    res = train_command(TINY, [*sets, *reg], tmp_path / "reg")
    assert res["label"] == "SM+LN+G [EntReg 1]"
    plain, regd = _last_entropy(tmp_path / "plain"), _last_entropy(tmp_path / "reg")
    logt = math.log(63)  # training sequences: 64 tokens -> 63 positions
    e_plain, e_reg = torch.tensor(plain["entropy"]), torch.tensor(regd["entropy"])
    theta = torch.tensor(regd["entropy_thresholds"])
    assert theta.shape == e_reg.shape and not torch.equal(theta, torch.full_like(theta, 0.3))  # thresholds learn
    gap_reg = (e_reg - theta * logt).abs().mean().item()
    gap_plain = (e_plain - 0.3 * logt).abs().mean().item()
    print(f"mean |E - threshold|: regularized {gap_reg:.3f}, plain {gap_plain:.3f} nats")
    assert gap_reg < 0.5 * gap_plain
    assert (e_reg < e_plain).all()  # every head moved down towards its threshold
    lines = [json.loads(x) for x in (tmp_path / "reg" / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in lines if "entropy_penalty" in r]
    assert len(logged) == 30 and all(r["objective"] >= r["loss"] for r in logged)  # one line per step
