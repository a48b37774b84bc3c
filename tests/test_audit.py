"""Range audit: inputs outside a secure approximation's valid range are found on the plaintext
model, reported with the setting that fixes them, and a secure run on such a model is flagged
(exit 3) with its measured costs kept instead of crashing.

Each case is a small model built so that one approximation sees a known input range; the
expected verdicts follow from the ranges derived in `pi_lnfree.secure.approx` (which
tests/test_secure_layers.py checks against CrypTen itself): with 16 fractional bits and 8 exp
iterations, GELU's tanh formula holds for |x| <= 18.8, the softmax exponential for z - max >=
-507, its reciprocal for row sums up to 86, the range-finding inverse square root for variances
in [2^-16, 2^16] and CrypTen's own for about [0.085, 4e4] (wide switch) or [0.085, 65] (none).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pi_lnfree.checkpoint import save_checkpoint
from pi_lnfree.config import make_config
from pi_lnfree.model import GPT
from pi_lnfree.secure.audit import audit
from pi_lnfree.secure.profile import load_profile

ROOT = Path(__file__).resolve().parents[1]
PROTOCOLS = ROOT / "protocols"
TTP = load_profile(PROTOCOLS / "crypten-2pc-ttp.toml")
ERF = load_profile(PROTOCOLS / "crypten-2pc-ttp-gelu-erf.toml")
PAIRWISE = load_profile(PROTOCOLS / "crypten-2pc-ttp-softmax-pairwise.toml")  # CrypTen's inv_sqrt


def gelu_model(reach: float):
    """1-layer SM+G (vocab 8, d=16, T=16) whose FFN pre-activations reach exactly +-`reach`:
    one-hot embeddings, no attention output, c_fc maps token t to +-reach on unit t."""
    cfg = make_config("tiny", "sm-g", vocab_size=8, n_embd=16, n_head=2, n_layer=1, block_size=16)
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.wte.weight[:, :8] = torch.eye(8)
        fc = model.blocks[0].mlp.c_fc.weight  # (64, 16)
        fc[:8, :8] = torch.eye(8) * reach
        fc[8:16, :8] = -torch.eye(8) * reach
        model.blocks[0].mlp.c_proj.weight[:8, :16] = torch.eye(8, 16) * 0.5
        model.ln_f.weight.fill_(1.0)
    return model


def collapsed_model(score: float, block_size: int = 16):
    """1-layer LN-free ReLU model whose every query scores `score` on token 3's key, 0 elsewhere."""
    cfg = make_config("tiny", "sm-r", vocab_size=4, n_embd=16, n_head=1, n_layer=1, block_size=block_size,
                      final_norm=False)
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.wte.weight[:, :4] = torch.eye(4)
        attn = model.blocks[0].attn
        attn.c_attn.bias[8] = score * 4.0 / 20.0
        attn.c_attn.weight[16 + 8, 3] = 20.0
    return model


def run_audit(model, profile, tokens):
    return audit(model.config, model.state_dict(), profile, tokens.unsqueeze(0) if tokens.dim() == 1 else tokens)


def failing(result):
    return [c for c in result["checks"] if not c["ok"]]


def test_gelu_inputs_beyond_the_tanh_formula_are_flagged_with_the_fix():
    tokens = torch.arange(8).repeat(2)
    ok = run_audit(gelu_model(16.0), TTP, tokens)
    assert ok["ok"], ok["warnings"]
    act = [c for c in ok["checks"] if c["operator"] == "activation"]
    assert len(act) == 1 and act[0]["observed"] == pytest.approx([-16.0, 16.0])
    assert act[0]["valid"][1] == pytest.approx(18.8, abs=0.1)
    assert act[0]["headroom"] == pytest.approx((18.8 - 16.0) / 18.8, abs=0.01)
    bad = run_audit(gelu_model(22.0), TTP, tokens)
    assert not bad["ok"]
    (check,) = failing(bad)
    assert (check["site"], check["approximation"]) == ("block 0 mlp", "GELU (tanh formula)")
    assert 'gelu = "erf"' in check["fix"] and "exp_iterations = 9" in check["fix"]
    assert "block 0 mlp" in bad["warnings"][0] and "fix:" in bad["warnings"][0]
    assert run_audit(gelu_model(22.0), ERF, tokens)["ok"]  # Taylor erf + ReLU switch: no input limit


def test_softmax_spread_beyond_the_exponential_is_flagged():
    tokens = torch.tensor([0, 1, 3, 2, 0, 1, 2, 3])  # token 3 visible from position 2 on
    assert run_audit(collapsed_model(400.0), TTP, tokens)["ok"]
    bad = failing(run_audit(collapsed_model(600.0), TTP, tokens))
    assert [(c["approximation"], round(c["observed"][0])) for c in bad] == [("softmax exp", -600)]
    assert bad[0]["fix"].startswith("set approximations.exp_iterations = 9")


def test_row_sums_beyond_the_reciprocal_are_flagged():
    """Uniform attention (zero scores) gives row sums 1..T: fine at T=64, not at T=128."""
    tokens = torch.zeros(128, dtype=torch.long)
    model = collapsed_model(0.0, block_size=128)
    assert run_audit(model, TTP, tokens[:64])["ok"]
    bad = failing(run_audit(model, TTP, tokens))
    assert [(c["approximation"], c["observed"][1]) for c in bad] == [("softmax reciprocal", 128.0)]
    assert bad[0]["fix"] == "set protocol.precision_bits = 18 in the profile (now 16)"


def test_layernorm_variance_outside_crypten_inv_sqrt_is_flagged():
    cfg = make_config("tiny", "sm-ln-r", vocab_size=16, n_embd=16, n_head=2, n_layer=1, block_size=8)
    torch.manual_seed(0)
    model = GPT(cfg)
    with torch.no_grad():
        model.wte.weight.normal_(0, 0.05)  # variances ~2.5e-3, as in early embeddings
        model.wpe.weight.zero_()
    tokens = torch.arange(8)
    assert run_audit(model, TTP, tokens)["ok"]  # range-finding inverse square root
    bad = failing(run_audit(model, PAIRWISE, tokens))
    assert {c["site"] for c in bad} >= {"block 0 attention"}
    assert all(c["approximation"] == "LayerNorm 1/sqrt(variance)" and "ranged" in c["fix"] for c in bad)


def test_matmul_outputs_beyond_fixed_point_are_flagged():
    model = gelu_model(4.0)
    with torch.no_grad():
        model.wte.weight.mul_(3e8)  # FFN pre-activations of 1.2e9 > 2^30
    bad = failing(run_audit(model, TTP, torch.arange(8)))
    assert any(c["approximation"] == "fixed-point product" and c["fix"] is None for c in bad)


def _cli(*args: str, cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pi_lnfree.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def test_audit_command_table_json_and_exit_codes(tmp_path):
    ok, bad = tmp_path / "ok.pt", tmp_path / "bad.pt"
    for path, reach in ((ok, 8.0), (bad, 22.0)):
        m = gelu_model(reach)
        save_checkpoint(path, m.state_dict(), m.config)
    proc = _cli("audit", str(ok), "--protocol", str(PROTOCOLS / "crypten-2pc-ttp.toml"), "--seq-len", "16", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["ok"] and out["seq_len"] == 16 and out["checks"]
    assert "range audit" in proc.stderr and "headroom" in proc.stderr
    proc = _cli("audit", str(bad), "--protocol", str(PROTOCOLS / "crypten-2pc-ttp.toml"), "--seq-len", "16", "--json")
    assert proc.returncode == 3
    out = json.loads(proc.stdout)
    assert not out["ok"] and "Traceback" not in proc.stderr and 'gelu = \\"erf\\"' not in proc.stderr
    assert "outside its valid range" in proc.stderr


@pytest.mark.slow
def test_secure_eval_of_an_out_of_range_model_is_flagged_not_crashed(tmp_path):
    """The issue's case: SM+G with pre-activations of +-22 under the tanh-formula GELU. The run
    completes, its costs are kept, the perplexity overflow is reported, and the exit code is 3."""
    path = tmp_path / "bad.pt"
    m = gelu_model(22.0)
    save_checkpoint(path, m.state_dict(), m.config)
    proc = _cli("secure-eval", str(path), "--protocol", str(PROTOCOLS / "crypten-2pc-tfp.toml"), "--seq-len", "16",
                "--json")
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    out = json.loads(proc.stdout)  # strict JSON: no Infinity or NaN literals
    assert out["total"]["bytes"] > 0 and out["total"]["rounds"] > 0
    assert not out["audit"]["ok"] and out["flags"]
    assert out["fidelity"]["max_abs_logit_error"] > 1.0  # the secure result is indeed wrong
    assert any("GELU" in f for f in out["flags"])
    assert "warning:" in proc.stderr
