"""Dynamic Tanh as a norm replacement: the module against its formula in float64, where it sits,
what weight decay skips, names and labels, the Hugging Face refusal, a tiny run, and the secure
form under CrypTen (one process) against the plaintext within the documented range."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from pi_lnfree.checkpoint import load_model, save_checkpoint
from pi_lnfree.config import make_config, parse_variant, variant_label, variant_name
from pi_lnfree.errors import UserError
from pi_lnfree.model import GPT, DyT, param_groups

ROOT = Path(__file__).resolve().parents[1]


def test_dyt_module_is_gamma_tanh_alpha_x_plus_beta():
    torch.manual_seed(0)
    m = DyT(8, alpha=0.5).double()
    assert m.alpha.shape == (1,) and m.alpha.item() == 0.5
    with torch.no_grad():
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_()
        m.alpha.fill_(0.7)
    x = torch.randn(3, 5, 8, dtype=torch.float64) * 3
    w, b = m.weight.tolist(), m.bias.tolist()
    want = torch.tensor([[[w[k] * math.tanh(0.7 * float(x[i, j, k])) + b[k]
                           for k in range(8)] for j in range(5)] for i in range(3)], dtype=torch.float64)
    assert torch.allclose(m(x), want, atol=1e-14)


def test_dyt_sits_at_every_norm_site_and_is_not_decayed():
    cfg = make_config("tiny", "sm-dyt-r", vocab_size=64, dyt_alpha=0.8)
    model = GPT(cfg)
    sites = [model.blocks[0].ln_1, model.blocks[0].ln_2, model.blocks[1].ln_1, model.blocks[1].ln_2, model.ln_f]
    assert all(isinstance(s, DyT) and s.alpha.item() == pytest.approx(0.8) for s in sites)
    assert isinstance(GPT(cfg.replace(final_norm=False)).ln_f, torch.nn.Identity)
    decay, no_decay = param_groups(model, 0.1)
    no_decay_ids = {id(p) for p in no_decay["params"]}
    for s in sites:
        assert {id(s.alpha), id(s.weight), id(s.bias)} <= no_decay_ids
    assert id(model.blocks[0].mlp.c_fc.weight) in {id(p) for p in decay["params"]}
    idx = torch.randint(0, 64, (2, 12))
    (model(idx, idx)[1]).backward()
    assert model.blocks[0].ln_1.alpha.grad is not None and model.blocks[0].ln_1.alpha.grad.abs() > 0


@pytest.mark.parametrize("position", ["learned", "rotary"])
@pytest.mark.parametrize("embed_scale", [True, False])
def test_default_alpha0_gives_alpha_x_unit_std_at_initialization(position, embed_scale):
    # Measured on the real stream at step 0, not derived from the formula under test: the first
    # DyT site's alpha times its input has std 1, as a LayerNorm's output would; the blocks' outputs
    # widen the stream by about 1.6x (2.1x with rotary positions) by the final site, still inside tanh's working range.
    torch.manual_seed(0)
    model = GPT(make_config("cpu-small", "sm-dyt-r", vocab_size=4096, position=position, dyt_embed_scale=embed_scale))
    seen = []
    for site in [m for m in model.modules() if isinstance(m, DyT)]:
        site.register_forward_hook(lambda mod, inp, out: seen.append(float((mod.alpha * inp[0]).std())))
    with torch.no_grad():
        model(torch.randint(0, 4096, (8, 128)))
    assert len(seen) == 9 and 0.95 < seen[0] < 1.05 and all(0.95 < s < 2.5 for s in seen), seen
    token_std = 0.02 * (math.sqrt(128) if embed_scale else 1)
    stream_std = math.sqrt(token_std**2 + 0.02**2) if position == "learned" else token_std
    assert model.ln_f.alpha.item() == pytest.approx(1 / stream_std)
    assert (model.embed_scale is not None) == embed_scale
    if embed_scale:  # Zhu et al.'s LLaMA embedding scale, learnable and not weight decayed
        assert model.embed_scale.item() == pytest.approx(math.sqrt(128))
        assert id(model.embed_scale) in {id(p) for p in param_groups(model, 0.1)[1]["params"]}


def test_dyt_names_and_labels():
    assert parse_variant("sm-dyt-r", 2) == {"norm": "dyt", "activation": "relu"}
    for name, label in (("sm-dyt-r", "SM+DyT+R"), ("sm-dyt-g", "SM+DyT+G"),
                        ("sm-dyt-hybrid:relu,gelu", "SM+DyT+R/G")):
        cfg = make_config("tiny", name, vocab_size=64)
        assert (variant_name(cfg), variant_label(cfg)) == (name, label)
    assert variant_label(make_config("tiny", "sm-dyt-r", vocab_size=64, final_norm=False)) == "SM+DyT+R (no final DyT)"
    assert variant_label(make_config("tiny", "sm-dyt-r", vocab_size=64, dyt_alpha=0.5)) == "SM+DyT+R (alpha0 0.5)"
    assert (variant_label(make_config("tiny", "sm-dyt-r", vocab_size=64, dyt_alpha=0.5, dyt_embed_scale=False))
            == "SM+DyT+R (alpha0 0.5, no embedding scale)")
    assert GPT(make_config("tiny", "sm-r", vocab_size=64)).embed_scale is None  # DyT models only
    with pytest.raises(UserError, match="dyt_alpha must be positive"):
        make_config("tiny", "sm-dyt-r", vocab_size=64, dyt_alpha=0.0)


def test_to_hf_refuses_dyt_in_one_line():
    pytest.importorskip("transformers")
    from pi_lnfree.hf import to_hf

    with pytest.raises(UserError) as e:
        to_hf(GPT(make_config("tiny", "sm-dyt-g", vocab_size=64)))
    assert "Dynamic Tanh" in str(e.value) and "\n" not in str(e.value)


def test_tiny_dyt_run_learns_and_its_alphas_move(data_dir, tmp_path):
    from pi_lnfree.checkpoint import load_model
    from pi_lnfree.runs import train_command

    sets = [f"data.dir={json.dumps(str(data_dir))}", "train.progress=false", "model.variant=sm-dyt-r",
            "train.max_steps=30", "train.entropy_interval=0"]
    res = train_command(ROOT / "training" / "tiny.toml", sets, tmp_path / "run")
    assert res["label"] == "SM+DyT+R" and res["eval_loss"] < 5.8  # ln(512) = 6.24 at chance
    model, _ = load_model(tmp_path / "run" / "ckpt.pt")
    alphas = [m.alpha.item() for m in model.modules() if isinstance(m, DyT)]
    assert len(alphas) == 5 and any(a != 0.5 for a in alphas)


# ---------------------------------------------------------------------------------------------
# secure form: CrypTen in this process (one party: the fixed-point encoding and the tanh
# approximation are exercised; the two-party protocol is the same arithmetic on shares)


@pytest.fixture(scope="module")
def crypten_single():
    from pi_lnfree.secure import crypten_compat

    crypten = crypten_compat.get_crypten()
    crypten.init()
    yield crypten
    crypten.uninit()


def test_secure_dyt_matches_plaintext_within_its_range(crypten_single):
    from pi_lnfree.secure.layers import DYT_MAX_INPUT, dyt

    crypten = crypten_single
    g = torch.Generator().manual_seed(1)
    d = 16
    gamma, beta = torch.rand(d, generator=g) + 0.5, torch.randn(d, generator=g) * 0.1
    alpha = torch.tensor([0.7])
    # a residual stream of order 1 plus outliers up to |alpha x| = 250 (inside the valid range)
    x = torch.randn(4, 8, d, generator=g) * 2.0
    x[0, 0, :4] = torch.tensor([300.0, -300.0, 357.0, -357.0])
    assert (alpha * x).abs().max() < DYT_MAX_INPUT
    model = DyT(d, 0.7).double()
    with torch.no_grad():
        model.weight.copy_(gamma)
        model.bias.copy_(beta)
    ref = model(x.double()).detach()
    enc = crypten.cryptensor
    got = dyt(enc(x), enc(alpha), enc(gamma), enc(beta)).get_plain_text().double()
    err = (got - ref).abs().max().item()
    assert err < 1e-2, err  # tanh within ~4e-3 (worst at 0), times gamma <= 1.5, plus fixed point
    public = dyt(enc(x), 0.7, None, None).get_plain_text().double()
    assert (public - torch.tanh(0.7 * x.double())).abs().max() < 6e-3
    # outside the range the approximation breaks down: the documented limit is a real one
    bad = dyt(enc(torch.tensor([400.0])), 1.0, None, None).get_plain_text()
    assert (bad - 1.0).abs().max() > 1.0


def test_a_dyt_checkpoint_from_before_the_embedding_scale_loads_as_it_was_trained(tmp_path):
    # Written before `dyt_embed_scale` existed: its config lacks the key and its state the scalar.
    old = GPT(make_config("tiny", "sm-dyt-r", vocab_size=64, dyt_alpha=0.5, dyt_embed_scale=False))
    stored = {k: v for k, v in old.config.to_dict().items() if k != "dyt_embed_scale"}
    save_checkpoint(tmp_path / "old.pt", old.state_dict(), stored)
    model, _ = load_model(tmp_path / "old.pt")
    assert model.embed_scale is None and variant_label(model.config) == "SM+DyT+R (alpha0 0.5, no embedding scale)"
    idx = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        assert torch.equal(model(idx), old.eval()(idx))
