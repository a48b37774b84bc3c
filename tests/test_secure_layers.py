"""Secure layers vs float64 references, inside one real two-party run (TFP, local processes).

All checks share one pair of party processes (process start and the CrypTen import are the slow
part); `_layers_program` computes every secure output and the test compares each against an
independent float64 plaintext computation.

Documented tolerances (16-bit fixed point plus CrypTen's approximations, see layers.py):
  relu / leaky relu / rotary / residual maths: 1e-3 absolute (encoding + truncation only)
  layernorm, range-finding inv_sqrt (variances ~6e-3 as embeddings, ~2, ~2e4): 2e-2 absolute
  layernorm, CrypTen's inv_sqrt + wide-range switch (variance ~2e4): 2e-2 absolute
  GELU, tanh formula vs exact erf-GELU: 1e-2; sigmoid form: 3e-2; Taylor erf + relu switch: 3e-2
  causal softmax: 1e-2 absolute on probabilities, exactly 0 above the diagonal
  whole model (parallel residual + rotary, untied head; LN-free no-final-norm; per-layer hybrid of
  learnable leaky ReLU (slope 0.3, a server secret) and tanh-GELU): 5e-2 on logits
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pi_lnfree.config import make_config
from pi_lnfree.model import GPT, RotaryCache
from pi_lnfree.secure.parties import PartyJob, free_port, launch_local
from pi_lnfree.secure.profile import load_profile

PROFILE = "crypten-2pc-tfp"  # a shipped profile's name


def _inputs() -> dict:
    g = torch.Generator().manual_seed(7)
    T, d, H, hd = 8, 16, 2, 8
    rope_cfg = make_config("tiny", "sm-ln-g", vocab_size=64, n_embd=32, n_head=2, position="rotary",
                           rotary_pct=0.5, residual="parallel", tie_embeddings=False, n_layer=2)
    nofinal_cfg = make_config("tiny", "sm-r", vocab_size=64, n_embd=32, n_head=2, final_norm=False, n_layer=1)
    hybrid_cfg = make_config("tiny", "sm-hybrid:learnable_leaky,gelu_tanh", vocab_size=64, n_embd=32, n_head=2)
    models = {}
    for name, cfg in (("parallel_rotary", rope_cfg), ("lnfree_nofinal", nofinal_cfg), ("hybrid_slope", hybrid_cfg)):
        torch.manual_seed(3)
        m = GPT(cfg)
        with torch.no_grad():
            m.wte.weight.mul_(20)  # residual stream of order 1, as in a trained model
            if m.slopes is not None:
                m.slopes.fill_(0.3)  # a learned slope far from the initial 0.01 ...
                for block in m.blocks:  # ... and an MLP strong enough for the slope to show
                    block.mlp.c_fc.weight.mul_(4)
                    block.mlp.c_proj.weight.mul_(4)
        models[name] = {"config": cfg.to_dict(), "state": m.state_dict(),
                        "tokens": torch.randint(0, 64, (10,), generator=g)}
    return {
        "ln_x": torch.randn(1, T, d, generator=g) * 1.5 + 0.3,
        "ln_gamma": torch.rand(d, generator=g) + 0.5,
        "ln_beta": torch.randn(d, generator=g) * 0.1,
        "ln_wide_x": torch.randn(1, T, d, generator=g) * 120.0,
        "ln_small_x": torch.randn(1, T, d, generator=g) * 0.08,
        "act_x": torch.linspace(-6, 6, 241).reshape(1, 1, -1),
        "slope": torch.tensor([0.05]),
        "scores": torch.randn(1, H, T, T, generator=g) * 3.0,
        "rope_x": torch.randn(1, H, T, hd, generator=g),
        "models": models,
    }


def _layers_program(job):
    """Both parties: share the inputs (activations/scores from the client, weights from the
    server), run every secure layer, open the results to the client."""
    from pi_lnfree.config import ModelConfig
    from pi_lnfree.secure import crypten_compat as cc
    from pi_lnfree.secure import layers
    from pi_lnfree.secure.meter import Meter
    from pi_lnfree.secure.model import SecureGPT, share_tokens, share_weights

    p, prof = job.payload, job.profile
    client = lambda t: cc.cryptensor(t, src=0)  # noqa: E731
    server = lambda t: cc.cryptensor(t, src=1)  # noqa: E731
    out = {}
    ln_x = client(p["ln_x"])
    out["layernorm"] = layers.layernorm(ln_x, server(p["ln_gamma"]), server(p["ln_beta"]), 1e-5)
    out["layernorm_wide"] = layers.layernorm(client(p["ln_wide_x"]), None, None, 1e-5)
    out["layernorm_small"] = layers.layernorm(client(p["ln_small_x"]), None, None, 1e-5)
    out["layernorm_crypten_wide"] = layers.layernorm(client(p["ln_wide_x"]), None, None, 1e-5, wide=True,
                                                     method="crypten")
    x = client(p["act_x"])
    slope = server(p["slope"])
    for name, s in (("relu", None), ("leaky_relu", 0.1), ("learnable_leaky", slope), ("gelu_tanh", None)):
        out[name] = layers.activation(x, name, s, "tanh", 2.5)
    for method in ("tanh", "erf", "sigmoid"):
        out[f"gelu_{method}"] = layers.activation(x, "gelu", None, method, 2.5)
    out["softmax"] = layers.causal_softmax(client(p["scores"]), prof.max_method)
    cache = RotaryCache(make_config("tiny", vocab_size=8, n_embd=16, n_head=2, position="rotary", rotary_pct=0.5))
    out["rotary"] = layers.rotary(client(p["rope_x"]), cache.cos, cache.sin)
    opened = {k: cc.get_plain_text(v, dst=0) for k, v in out.items()}
    meters = {}
    for name, m in p["models"].items():
        cfg = ModelConfig.from_dict(m["config"])
        meter = Meter(lambda: {k: v for k, v in cc.comm_stats().items() if k != "time"})
        model = SecureGPT(cfg, share_weights(cfg, m["state"]), layers.SecureOps(meter, prof))
        opened[name] = model.forward(share_tokens(m["tokens"], len(m["tokens"]), cfg.vocab_size))
        meters[name] = meter.state()
    return {"opened": opened, "meters": meters} if job.rank == 0 else None


@pytest.fixture(scope="module")
def secure_outputs():
    inputs = _inputs()
    common = dict(profile=load_profile(PROFILE), timeout_s=120, master_port=free_port(),
                  program="tests.test_secure_layers:_layers_program", payload=inputs)
    res = launch_local([PartyJob(rank=0, **common), PartyJob(rank=1, **common)], timeout_s=120)
    return inputs, res[0]["opened"], res[0]["meters"]


def _f64(t):
    return t.double()


def test_layernorm_matches_float64(secure_outputs):
    inp, out, _ = secure_outputs
    ref = F.layer_norm(_f64(inp["ln_x"]), (16,), _f64(inp["ln_gamma"]), _f64(inp["ln_beta"]), 1e-5)
    assert (out["layernorm"].double() - ref).abs().max() < 2e-2
    for name, key in (("layernorm_wide", "ln_wide_x"), ("layernorm_small", "ln_small_x"),
                      ("layernorm_crypten_wide", "ln_wide_x")):
        ref = F.layer_norm(_f64(inp[key]), (16,), eps=1e-5)
        err = (out[name].double() - ref).abs().max().item()
        assert err < 2e-2, f"{name}: max error {err:.3g}"


def test_activations_match_float64(secure_outputs):
    inp, out, _ = secure_outputs
    x = _f64(inp["act_x"])
    exact_gelu = 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
    refs = {
        "relu": (x.clamp(min=0), 1e-3),
        "leaky_relu": (torch.where(x >= 0, x, 0.1 * x), 1e-3),
        "learnable_leaky": (torch.where(x >= 0, x, 0.05 * x), 1e-3),
        "gelu_tanh": (F.gelu(x, approximate="tanh"), 1e-2),
        "gelu_tanh_as_erf_gelu": (exact_gelu, 1e-2),
        "gelu_erf": (exact_gelu, 3e-2),
        "gelu_sigmoid": (exact_gelu, 3e-2),
    }
    for name, (ref, tol) in refs.items():
        got = out["gelu_tanh" if name == "gelu_tanh_as_erf_gelu" else name].double()
        err = (got - ref).abs().max().item()
        assert err < tol, f"{name}: max error {err:.3g} >= {tol}"


def test_causal_softmax_matches_float64(secure_outputs):
    inp, out, _ = secure_outputs
    s = _f64(inp["scores"])
    T = s.size(-1)
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    ref = s.masked_fill(~mask, float("-inf")).softmax(-1)
    got = out["softmax"].double()
    assert (got - ref).abs().max() < 1e-2
    assert got[..., ~mask].abs().max() == 0  # future positions contribute exactly nothing


def test_rotary_matches_plaintext(secure_outputs):
    inp, out, _ = secure_outputs
    cache = RotaryCache(make_config("tiny", vocab_size=8, n_embd=16, n_head=2, position="rotary", rotary_pct=0.5))
    cache = cache.double()
    ref = cache(_f64(inp["rope_x"]))
    assert (out["rotary"].double() - ref).abs().max() < 1e-3


@pytest.mark.parametrize("name", ["parallel_rotary", "lnfree_nofinal", "hybrid_slope"])
def test_secure_model_matches_plaintext(secure_outputs, name):
    inp, out, meters = secure_outputs
    from pi_lnfree.config import ModelConfig

    m = inp["models"][name]
    cfg = ModelConfig.from_dict(m["config"])
    plain = GPT(cfg).double()
    plain.load_state_dict({k: v.double() for k, v in m["state"].items()})
    with torch.no_grad():
        ref = plain(m["tokens"].unsqueeze(0))
    got = out[name].double()
    assert got.shape == ref.shape
    assert (got - ref).abs().max() < 5e-2
    assert (got.argmax(-1) == ref.argmax(-1)).all()
    ln_calls = meters[name]["ops"]["layernorm"]["calls"]
    # parallel residual with LayerNorm: ln_1 and ln_2 per block + final; LN-free: final only or none
    assert ln_calls == {"parallel_rotary": 2 * cfg.n_layer + 1, "lnfree_nofinal": 0, "hybrid_slope": 1}[name]
    if name == "lnfree_nofinal":
        assert meters[name]["ops"]["layernorm"]["bytes"] == 0
