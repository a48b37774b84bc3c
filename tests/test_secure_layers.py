"""Secure layers vs float64 references, inside one real two-party run (TFP, local processes).

All checks share one pair of party processes (process start and the CrypTen import are the slow
part); `_layers_program` computes every secure output and the test compares each against an
independent float64 plaintext computation.

Documented tolerances (16-bit fixed point plus CrypTen's approximations, see layers.py):
  relu / leaky relu / rotary / residual maths: 1e-3 absolute (encoding + truncation only)
  layernorm, range-finding inv_sqrt (variances ~6e-3 as embeddings, ~2, ~2e4): 2e-2 absolute
  layernorm, CrypTen's inv_sqrt + wide-range switch (variance ~2e4): 2e-2 absolute
  GELU, tanh formula vs exact erf-GELU: 1e-2; sigmoid form: 3e-2; Taylor erf + relu switch: 3e-2
  causal softmax: 1e-2 absolute on probabilities, exactly 0 above the diagonal, also when the
  future (masked) scores are far above or below the visible ones
  whole model (parallel residual + rotary, untied head; LN-free no-final-norm; per-layer hybrid of
  learnable leaky ReLU (slope 0.3, a server secret) and tanh-GELU): 5e-2 on logits
  collapsed attention (one key scores +100 above the rest and sits at a later position, 1 and 2
  layers, learned and rotary positions): 1e-3 on logits
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

PROFILE = "protocols/crypten-2pc-tfp.toml"


# Collapsed attention: every query scores +SCORE on the key of token 3 and 0 on every other key.
COLLAPSED = {
    "collapsed_1layer": dict(score=100.0),
    "collapsed_below": dict(score=-100.0),
    "collapsed_2layer_rotary": dict(score=100.0, n_layer=2, position="rotary"),
}
COLLAPSED_TOKENS = torch.tensor([0, 1, 2, 0, 1, 3, 2, 1])  # token 3 late, not at position 0


def _collapsed_model(score: float, n_layer: int = 1, position: str = "learned") -> dict:
    """An LN-free ReLU model (vocab 4, d=16, 1 head, T=8, no final norm, zero MLP) whose attention
    puts a score of `score` on token 3's key: q is a constant bias along dim 8 (never rotated),
    k = 20 x (is token 3) along dim 8, so q.k / sqrt(16) = score for token 3 and 0 otherwise."""
    cfg = make_config("tiny", "sm-r", vocab_size=4, n_embd=16, n_head=1, block_size=8, n_layer=n_layer,
                      final_norm=False, position=position, rotary_pct=0.25)
    state = {k: torch.zeros_like(v) for k, v in GPT(cfg).state_dict().items()}
    d = 16
    for t in range(4):
        state["wte.weight"][t, t] = 1.0
    state["lm_head.weight"] = state["wte.weight"]  # tied: loading writes the shared tensor twice
    for i in range(n_layer):
        p = f"blocks.{i}.attn"
        state[f"{p}.c_attn.bias"][8] = score * 4.0 / 20.0  # q = (score / 5) e_8
        state[f"{p}.c_attn.weight"][d + 8, 3] = 20.0  # k = 20 e_8 for token 3
        state[f"{p}.c_attn.weight"][2 * d: 3 * d, :4] = torch.eye(d)[:, :4]  # v = the token's embedding
        state[f"{p}.c_proj.weight"].copy_(torch.eye(d))
    return {"config": cfg.to_dict(), "state": state, "tokens": COLLAPSED_TOKENS.clone()}


def _inputs() -> dict:
    g = torch.Generator().manual_seed(7)
    T, d, H, hd = 8, 16, 2, 8
    rope_cfg = make_config("tiny", "sm-ln-g", vocab_size=64, n_embd=32, n_head=2, position="rotary",
                           rotary_pct=0.5, residual="parallel", tie_embeddings=False, n_layer=2)
    nofinal_cfg = make_config("tiny", "sm-r", vocab_size=64, n_embd=32, n_head=2, final_norm=False, n_layer=1)
    hybrid_cfg = make_config("tiny", "sm-hybrid:learnable_leaky,gelu_tanh", vocab_size=64, n_embd=32, n_head=2)
    models = {name: _collapsed_model(**kw) for name, kw in COLLAPSED.items()}
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
        # visible scores of order 3; future ones far above (+1e4) or below (-1e4) them
        "scores_extreme": torch.randn(1, H, T, T, generator=g) * 3.0
        + torch.ones(T, T).triu(1) * 1e4 * torch.sign(torch.randn(1, H, T, T, generator=g)),
        "rope_x": torch.randn(1, H, T, hd, generator=g),
        # probes of the derived valid ranges (approx.py): inside and just outside each
        "exp_probe": torch.tensor([-0.5, -3.0, -100.0, -480.0, -600.0, -1000.0]),
        "recip_probe": torch.tensor([1.0, 7.0, 40.0, 80.0, 300.0, 400.0]),
        "gelu_probe": torch.tensor([-18.0, -5.0, 3.0, 18.0, 22.0, -22.0]).reshape(1, 1, -1),
        "models": models,
    }


def _layers_program(job):
    """Both parties: share the inputs (activations/scores from the client, weights from the
    server), run every secure layer, open the results to the client."""
    from pi_lnfree.config import ModelConfig
    from pi_lnfree.secure import crypten_compat as cc
    from pi_lnfree.secure import layers
    from pi_lnfree.secure.backends.base import rotate
    from pi_lnfree.secure.backends.crypten_ops import CryptenOps
    from pi_lnfree.secure.meter import Meter
    from pi_lnfree.secure.structure import Decoder, load_weights

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
    out["exp_probe"] = client(p["exp_probe"]).exp()
    out["recip_probe"] = cc.reciprocal_positive(client(p["recip_probe"]))
    out["gelu_probe"] = layers.activation(client(p["gelu_probe"]), "gelu", None, "tanh", 2.5)
    out["softmax"] = layers.causal_softmax(client(p["scores"]), prof.max_method)
    out["softmax_extreme"] = layers.causal_softmax(client(p["scores_extreme"]), prof.max_method)
    cache = RotaryCache(make_config("tiny", vocab_size=8, n_embd=16, n_head=2, position="rotary", rotary_pct=0.5))
    out["rotary"] = rotate(client(p["rope_x"]), cache.cos, cache.sin, CryptenOps.cat)
    opened = {k: cc.get_plain_text(v, dst=0) for k, v in out.items()}
    meters = {}
    for name, m in p["models"].items():
        cfg = ModelConfig.from_dict(m["config"])
        meter = Meter(lambda: {k: v for k, v in cc.comm_stats().items() if k != "time"})
        ops = CryptenOps(meter, prof)
        model = Decoder(cfg, load_weights(cfg, m["state"], ops), ops)
        opened[name] = model.forward(ops.tokens(m["tokens"], len(m["tokens"]), cfg.vocab_size))
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


@pytest.mark.parametrize("key", ["scores", "scores_extreme"])
def test_causal_softmax_matches_float64(secure_outputs, key):
    inp, out, _ = secure_outputs
    s = _f64(inp[key])
    T = s.size(-1)
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    ref = s.masked_fill(~mask, float("-inf")).softmax(-1)
    got = out["softmax" if key == "scores" else "softmax_extreme"].double()
    assert (got - ref).abs().max() < 1e-2
    assert got[..., ~mask].abs().max() == 0  # future positions contribute exactly nothing


@pytest.mark.parametrize("name", sorted(COLLAPSED))
def test_collapsed_attention_ignores_future_keys(secure_outputs, name):
    """A key scoring far above (or below) the visible ones at a later position must not change
    the earlier rows: secure logits equal the float64 plaintext within 1e-3."""
    inp, out, _ = secure_outputs
    from pi_lnfree.config import ModelConfig

    m = inp["models"][name]
    plain = GPT(ModelConfig.from_dict(m["config"])).double()
    plain.load_state_dict({k: v.double() for k, v in m["state"].items()})
    with torch.no_grad():
        ref = plain(m["tokens"].unsqueeze(0))
    err = (out[name].double() - ref).abs().max().item()
    assert err < 1e-3, f"{name}: max |logit error| {err:.3g}"


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


def test_derived_valid_ranges_hold_under_crypten(secure_outputs):
    """The valid ranges that the range audit derives from float64 twins of CrypTen's algorithms
    (`pi_lnfree.secure.approx`) are CrypTen's: inside them the secure result meets the
    tolerance, just outside it is far off."""
    from pi_lnfree.secure import approx

    inp, out, _ = secure_outputs
    prof = load_profile(PROFILE)
    n = prof.exp_iterations
    x, got = _f64(inp["exp_probe"]), out["exp_probe"].double()
    inside = x >= approx.exp_range(n).low
    assert inside.tolist() == [True, True, True, True, False, False]
    assert ((got - torch.exp(x))[inside].abs() <= 1e-2).all()
    assert ((got - torch.exp(x))[~inside].abs() > 0.1).all()
    x, got = _f64(inp["recip_probe"]), out["recip_probe"].double()
    inside = x <= approx.reciprocal_range(prof.reciprocal_nr_iters, n).high
    assert inside.tolist() == [True, True, True, True, False, False]
    assert ((got * x - 1)[inside].abs() <= 1e-1).all()
    assert ((got * x - 1)[~inside].abs() > 0.1).all()
    x, got = _f64(inp["gelu_probe"]).flatten(), out["gelu_probe"].double().flatten()
    rng = approx.activation_range(prof, "gelu")
    inside = (x >= rng.low) & (x <= rng.high)
    assert inside.tolist() == [True, True, True, True, False, False]
    exact = F.gelu(x, approximate="tanh")
    assert ((got - exact)[inside].abs() <= 2e-2 * x[inside].abs().clamp(min=1)).all()
    assert ((got - exact)[~inside].abs() > 1.0).all()
