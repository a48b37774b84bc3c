"""The decoder family: every variant builds and trains; attention path equals the fast path."""

import math

import pytest
import torch

from pi_lnfree.config import VARIANTS, ModelConfig, make_config, parse_variant, variant_label, variant_name
from pi_lnfree.errors import UserError
from pi_lnfree.model import GPT, param_groups

V = 97


def expected_params(cfg: ModelConfig) -> int:
    """Hand count of the parameters of a configuration (tied embedding counted once)."""
    d, f, L = cfg.n_embd, cfg.ffn_dim, cfg.n_layer
    b = 1 if cfg.bias else 0
    ln = 2 * d + (1 if cfg.norm == "dyt" else 0)  # gain and bias (+ DyT's scalar alpha)
    per_block = (d * 3 * d + b * 3 * d) + (d * d + b * d) + (d * f + b * f) + (f * d + b * d)
    per_block += 2 * ln if cfg.norm != "none" else 0
    total = L * per_block + cfg.vocab_size * d
    total += cfg.block_size * d if cfg.position == "learned" else 0
    total += ln if cfg.final_norm else 0
    total += 0 if cfg.tie_embeddings else cfg.vocab_size * d
    total += cfg.vocab_size if cfg.head_bias else 0
    total += 1 if cfg.norm == "dyt" and cfg.dyt_embed_scale else 0  # DyT's scalar after the embedding
    return total + cfg.n_slopes


ALL = list(VARIANTS) + ["sm-hybrid:relu,gelu", "sm-ln-hybrid:gelu_tanh,relu", "sm-dyt-hybrid:relu,gelu"]


@pytest.mark.parametrize("preset", ["tiny", "pythia-70m"])
@pytest.mark.parametrize("variant", ALL)
def test_every_variant_builds_trains_and_has_expected_size(preset, variant):
    overrides = {"n_embd": 64, "n_head": 4, "n_layer": 2} if preset == "pythia-70m" else {}
    cfg = make_config(preset, variant, vocab_size=V, **overrides)
    torch.manual_seed(0)
    model = GPT(cfg)
    assert model.num_parameters() == expected_params(cfg)
    idx, targets = torch.randint(0, V, (2, 2, 16))
    logits, loss = model(idx, targets)
    assert logits.shape == (2, 16, V)
    assert abs(loss.item() - math.log(V)) < 0.2  # near-uniform predictions at init
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    if cfg.norm == "none":
        for block in model.blocks:
            assert not any(True for _ in block.ln_1.parameters()) and not any(True for _ in block.ln_2.parameters())


def test_slopes_per_layer_and_global():
    per_layer = GPT(make_config("tiny", "sm-lrelu-layer", vocab_size=V))
    shared = GPT(make_config("tiny", "sm-lrelu-global", vocab_size=V))
    assert per_layer.slopes.shape == (2,) and shared.slopes.shape == (1,)
    assert shared.slope_values() == pytest.approx([0.01])
    # The global slope really is one parameter: its gradient gathers both layers' contributions.
    idx = torch.randint(0, V, (2, 16))
    shared(idx, idx)[1].backward()
    assert shared.slopes.grad.shape == (1,) and shared.slopes.grad.abs().item() > 0
    n_slope_params = sum(p.numel() for n, p in shared.named_parameters() if "slope" in n)
    assert n_slope_params == 1


def test_leaky_activation_matches_definition():
    cfg = make_config("tiny", "sm-lrelu-layer", vocab_size=V)
    model = GPT(cfg)
    with torch.no_grad():
        model.slopes.copy_(torch.tensor([0.3, -0.2]))
    x = torch.randn(3, 5, cfg.n_embd)
    mlp = model.blocks[1].mlp
    h = mlp.c_fc(x)
    want = mlp.c_proj(torch.where(h >= 0, h, -0.2 * h))
    got = mlp(x, model.slopes[1])
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("variant", ["sm-ln-g", "sm-r"])
@pytest.mark.parametrize("preset", ["tiny", "pythia-70m"])
def test_attention_path_matches_fast_path(preset, variant):
    overrides = {"n_embd": 64, "n_head": 4, "n_layer": 2} if preset == "pythia-70m" else {}
    model = GPT(make_config(preset, variant, vocab_size=V, **overrides)).eval()
    idx = torch.randint(0, V, (3, 32))
    fast = model(idx)
    slow, atts = model(idx, return_attention=True)
    torch.testing.assert_close(slow, fast, atol=1e-5, rtol=1e-5)
    assert len(atts) == model.config.n_layer
    for att in atts:
        assert att.shape == (3, model.config.n_head, 32, 32)
        torch.testing.assert_close(att.sum(-1), torch.ones(3, model.config.n_head, 32))
        assert torch.all(att.triu(diagonal=1) == 0)  # causal


def test_rotary_matches_float64_reference():
    """Rotating the first rotary_dim dims by position: check against a direct complex rotation."""
    cfg = make_config("pythia-70m", "sm-ln-g", vocab_size=V, n_embd=64, n_head=2)  # head_dim 32, 8 rotated
    rot = GPT(cfg).rotary
    x = torch.randn(1, 1, 5, 32, dtype=torch.float64)
    got = rot(x.float()).double()
    dim, half = cfg.rotary_dim, cfg.rotary_dim // 2
    want = x.clone()
    for t in range(5):
        for i in range(half):
            theta = t / (cfg.rotary_base ** (2 * i / dim))
            z = complex(x[0, 0, t, i], x[0, 0, t, i + half]) * complex(math.cos(theta), math.sin(theta))
            want[0, 0, t, i], want[0, 0, t, i + half] = z.real, z.imag
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_parallel_residual_formula():
    cfg = make_config("pythia-70m", "sm-ln-g", vocab_size=V, n_embd=64, n_head=4, n_layer=1)
    block = GPT(cfg).blocks[0]
    rot = GPT(cfg).rotary
    x = torch.randn(2, 8, 64)
    a, _ = block.attn(block.ln_1(x), rot, False)
    want = x + a + block.mlp(block.ln_2(x), None)
    torch.testing.assert_close(block(x, rot, None, False)[0], want)


def test_param_groups_exclude_biases_gains_slopes():
    model = GPT(make_config("tiny", "sm-lrelu-layer", vocab_size=V))
    decay, no_decay = param_groups(model, 0.1)
    ids = {id(p) for p in no_decay["params"]}
    assert id(model.slopes) in ids
    assert id(model.ln_f.weight) in ids and id(model.blocks[0].attn.c_attn.bias) in ids
    assert all(p.dim() >= 2 for p in decay["params"]) and decay["weight_decay"] == 0.1
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


@pytest.mark.parametrize("residual_init, rule", [
    ("scaled", 0.02 / math.sqrt(2 * 4)),  # GPT-2: init_std / sqrt(2 x n_layer), the default
    ("plain", 0.02),
])
def test_residual_projection_init_follows_the_rule(residual_init, rule):
    cfg = make_config("cpu-small", "sm-r", vocab_size=512, residual_init=residual_init)
    torch.manual_seed(0)
    model = GPT(cfg)
    proj = torch.cat([p.detach().flatten() for n, p in model.named_parameters() if n.endswith("c_proj.weight")])
    other = torch.cat([b.attn.c_attn.weight.detach().flatten() for b in model.blocks])
    # The sample std of N normal draws has a relative standard error of 1/sqrt(2N); allow 5 of them.
    for w, want in ((proj, rule), (other, 0.02)):
        tol = 5 / math.sqrt(2 * w.numel())
        assert abs(w.std().item() / want - 1) < tol, (residual_init, w.numel())
    assert proj.numel() == 4 * (128 * 128 + 512 * 128)  # attention and MLP c_proj of every layer
    assert abs(proj.mean().item()) < 5 * rule / math.sqrt(proj.numel())


def test_residual_init_default_switch_and_old_checkpoints(tmp_path):
    from pi_lnfree.checkpoint import load_model, save_checkpoint

    assert ModelConfig().residual_init == "scaled"
    plain = make_config("tiny", "sm-g", vocab_size=V, residual_init="plain")
    assert variant_label(plain) == "SM+G (plain init)" and variant_name(plain) == "sm-g"
    both = make_config("tiny", "sm-r", vocab_size=V, residual_init="plain", final_norm=False)
    assert variant_label(both) == "SM+R (no final LN, plain init)"
    # A learnable slope started away from the default reads apart from the default one.
    steep = make_config("tiny", "sm-lrelu-layer", vocab_size=V, leaky_slope=0.2)
    assert variant_label(steep) == "SM+LLR(layer) (initial slope 0.2)" and variant_name(steep) == "sm-lrelu-layer"
    assert variant_label(make_config("tiny", "sm-lrelu-global", vocab_size=V)) == "SM+LLR(global)"
    with pytest.raises(UserError, match="residual_init must be one of"):
        make_config("tiny", "sm-g", vocab_size=V, residual_init="xavier")
    # A checkpoint written before the switch existed has no residual_init: it loads as "scaled".
    model = GPT(make_config("tiny", "sm-g", vocab_size=V))
    old = model.config.to_dict()
    del old["residual_init"]
    save_checkpoint(tmp_path / "old.pt", model.state_dict(), old)
    loaded, _ = load_model(tmp_path / "old.pt")
    assert loaded.config.residual_init == "scaled" and variant_label(loaded.config) == "SM+G"
    idx = torch.randint(0, V, (1, 8))
    assert torch.equal(loaded(idx), model(idx))


def test_names_labels_and_bad_configs():
    assert variant_label(make_config("tiny", "sm-ln-g", vocab_size=V)) == "SM+LN+G"
    assert variant_label(make_config("tiny", "sm-r", vocab_size=V, final_norm=False)) == "SM+R (no final LN)"
    assert variant_label(make_config("tiny", "sm-lrelu-global", vocab_size=V)) == "SM+LLR(global)"
    for v in ALL:
        assert variant_name(make_config("tiny", v, vocab_size=V)) in (v, "sm-hybrid:relu,gelu", "sm-ln-hybrid:gelu_tanh,relu")
    assert parse_variant("sm-hybrid:relu,gelu", 4)["activation"] == ["relu", "relu", "gelu", "gelu"]
    for bad in (dict(variant="nope"), dict(variant="sm-hybrid:relu,gelu,gelu")):
        with pytest.raises(UserError):
            make_config("tiny", vocab_size=V, **bad)
    with pytest.raises(UserError):
        make_config("tiny", "sm-g", vocab_size=V, n_embd=65)
    with pytest.raises(UserError):
        ModelConfig.from_dict({"n_layers": 3})
    with pytest.raises(UserError):
        make_config("tiny", "sm-g", vocab_size=V, activation="swish")


def test_sequence_longer_than_context_is_rejected():
    model = GPT(make_config("tiny", "sm-g", vocab_size=V, block_size=8))
    with pytest.raises(ValueError, match="exceeds"):
        model(torch.zeros(1, 9, dtype=torch.long))
