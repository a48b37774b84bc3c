"""The decoder structure for private inference is the plaintext `GPT`: run on the exact float64
backend it reproduces `GPT`'s float64 logits for every variant and switch, and run on the
recording backend it yields the call trace the cost model prices."""

from __future__ import annotations

import pytest
import torch

from pi_lnfree.config import make_config
from pi_lnfree.model import GPT
from pi_lnfree.secure.backends.recorder import RecorderOps
from pi_lnfree.secure.backends.torch64 import Torch64Ops
from pi_lnfree.secure.costmodel import trace
from pi_lnfree.secure.meter import CATEGORIES
from pi_lnfree.secure.profile import load_profile
from pi_lnfree.secure.structure import Decoder, check_supported, load_weights

CONFIGS = {
    "sm-ln-g": dict(variant="sm-ln-g"),
    "sm-r": dict(variant="sm-r"),
    "sm-g no final norm": dict(variant="sm-g", final_norm=False),
    "sm-lrelu-layer": dict(variant="sm-lrelu-layer"),
    "sm-lrelu-global": dict(variant="sm-lrelu-global"),
    "hybrid leaky/gelu_tanh": dict(variant="sm-ln-hybrid:leaky_relu,gelu_tanh"),
    "pythia-like": dict(variant="sm-ln-g", position="rotary", residual="parallel", tie_embeddings=False,
                        rotary_pct=0.5),
    "no bias": dict(variant="sm-r", bias=False),
    "dyt relu": dict(variant="sm-dyt-r"),
    "dyt gelu, parallel, rotary": dict(variant="sm-dyt-g", position="rotary", residual="parallel"),
    "dyt untied head": dict(variant="sm-dyt-r", tie_embeddings=False),
    "dyt without the embedding scale": dict(variant="sm-dyt-r", dyt_embed_scale=False),
    "lm-head bias (folded LN removal)": dict(variant="sm-g", final_norm=False, head_bias=True, tie_embeddings=False),
}


def _config(spec: dict):
    spec = dict(spec)
    return make_config("tiny", spec.pop("variant"), vocab_size=48, n_embd=32, n_head=4, block_size=16, **spec)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_structure_on_float64_backend_equals_plaintext_gpt(name):
    cfg = _config(CONFIGS[name])
    torch.manual_seed(0)
    model = GPT(cfg).double().eval()
    with torch.no_grad():
        if model.slopes is not None:
            model.slopes.uniform_(0.05, 0.4)  # slopes far from their initial value, per layer
        for p in model.parameters():
            p.mul_(3.0)  # a residual stream of order 1, as in a trained model
    tokens = torch.randint(0, cfg.vocab_size, (13,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(tokens.unsqueeze(0))
    ops = Torch64Ops()
    got = Decoder(cfg, load_weights(cfg, model.state_dict(), ops), ops).forward(ops.tokens(tokens, 13, cfg.vocab_size))
    assert got.dtype == torch.float64 and got.shape == ref.shape
    assert (got - ref).abs().max().item() < 1e-10 * max(1.0, ref.abs().max().item())


def test_recorded_trace_counts_every_operator_by_hand():
    cfg = make_config("tiny", "sm-ln-g", vocab_size=64)  # 2 layers, sequential residual, learned positions
    counts = {c: 0 for c in CATEGORIES}
    for call in trace(cfg, 16):
        counts[call.category] += 1
    # per block: 2 LN, 4 linear, QK^T and AV, 1 softmax, 1 activation, split + merge + 2 residual adds
    assert counts == {"embedding": 1, "linear": 8, "attention": 4, "softmax": 2, "layernorm": 5,
                      "activation": 2, "lm_head": 1, "other": 8}
    free = make_config("tiny", "sm-r", vocab_size=64, final_norm=False, position="rotary", residual="parallel")
    kinds = [c.kind for c in trace(free, 16)]
    assert "layernorm" not in kinds and kinds.count("activation:relu") == 2
    assert kinds.count("other") == 8  # split, rotary, merge, one three-way residual add per block


def test_recorded_dims_follow_the_shapes():
    cfg = make_config("gpt2-small", "sm-ln-r", vocab_size=50257)
    calls = trace(cfg, 128)
    by_kind = {c.kind: c.d for c in calls}
    assert by_kind["embedding"] == {"T": 128, "V": 50257, "d": 768, "pos": 1}
    assert by_kind["lm_head"] == {"T": 128, "d": 768, "V": 50257}
    assert by_kind["softmax"] == {"H": 12, "T": 128}
    assert by_kind["attention_scores"] == {"H": 12, "T": 128, "hd": 64}
    linears = sorted((c.d["i"], c.d["o"]) for c in trace(cfg, 128, layer=0) if c.kind == "linear")
    assert linears == [(768, 768), (768, 2304), (768, 3072), (3072, 768)]
    # n of the residual adds: (terms - 1) x elements
    assert [c.d["n"] for c in trace(cfg, 128, layer=0) if c.kind == "other"] == [3 * 128 * 768, 128 * 768,
                                                                                128 * 768, 128 * 768]


def test_recorder_sites_name_where_the_structure_is():
    cfg = make_config("tiny", "sm-r", vocab_size=64)
    ops = RecorderOps()
    seen = []
    original = ops._call

    def spy(category, kind, **dims):
        seen.append((ops.where, kind))
        original(category, kind, **dims)

    ops._call = spy
    Decoder(cfg, load_weights(cfg, None, ops), ops).forward(ops.tokens(None, 8, 64))
    assert ("embedding", "embedding") in seen and ("final", "lm_head") in seen
    assert ("block 1 mlp", "activation:relu") in seen and ("block 0 attention", "softmax") in seen


def test_dyt_is_recorded_as_its_own_layernorm_kind():
    kinds = [(c.category, c.kind) for c in trace(make_config("tiny", "sm-dyt-r", vocab_size=64), 8)]
    assert kinds.count(("layernorm", "dyt")) == 5 and ("layernorm", "layernorm") not in kinds


def test_a_layernorm_removal_in_progress_is_refused():
    from pi_lnfree.secure.structure import NotSupportedUnderMPC

    cfg = make_config("tiny", "sm-ln-g", vocab_size=64, ln_removal=True)
    with pytest.raises(NotSupportedUnderMPC, match="LayerNorm removal in progress"):
        check_supported(cfg, load_profile("protocols/crypten-2pc-ttp.toml"))


def test_check_supported_refuses_a_slope_below_the_fixed_point_resolution():
    profile = load_profile("protocols/crypten-2pc-ttp.toml")
    cfg = make_config("tiny", "sm-hybrid:leaky_relu", vocab_size=64, leaky_slope=1e-6)
    with pytest.raises(Exception, match="fixed-point resolution"):
        check_supported(cfg, profile)
    check_supported(make_config("tiny", "sm-hybrid:leaky_relu", vocab_size=64, leaky_slope=0.01), profile)
    with pytest.raises(Exception, match="seq-len"):
        check_supported(cfg.replace(leaky_slope=0.01), profile, seq_len=cfg.block_size + 1)
