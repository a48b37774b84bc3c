"""The converter reproduces every Hugging Face config field it accepts, and refuses the others.

Accepted fields: our logits equal transformers' in float64 (tight tolerances, checked to be able
to tell the accepted alternatives apart). Refused fields: `pi-lnfree convert` exits 2 naming the
field and writes nothing; where the weights allow it, the test also shows that transformers'
logits really change with the field, so that a silent conversion would have been wrong.
"""

from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

from pi_lnfree.cli import main  # noqa: E402
from pi_lnfree.config import make_config  # noqa: E402
from pi_lnfree.errors import UserError  # noqa: E402
from pi_lnfree.hf import from_hf, to_hf  # noqa: E402
from pi_lnfree.hf_fields import classified  # noqa: E402
from pi_lnfree.model import GPT  # noqa: E402

GPT2 = dict(n_layer=2, n_head=2, n_embd=32, n_positions=16, vocab_size=61, resid_pdrop=0.0, embd_pdrop=0.0,
            attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
NEOX = dict(num_hidden_layers=2, num_attention_heads=2, hidden_size=32, intermediate_size=128, vocab_size=61,
            max_position_embeddings=16, rotary_pct=0.5, hidden_dropout=0.0, attention_dropout=0.0)
# float64 on both sides: GPT-2 agrees to rounding; GPT-NeoX's cos/sin tables are float32 in both
# implementations (computed differently), which moves logits by ~1e-7.
ATOL = {"gpt2": 1e-9, "gpt_neox": 1e-5}
IDX = torch.randint(0, 61, (2, 16), generator=torch.Generator().manual_seed(0))


def _hf(family: str, **fields):
    """A tiny random float32 transformers model; the same fields give the same weights."""
    fields = copy.deepcopy(fields)  # transformers fills in nested rope dicts in place
    torch.manual_seed(0)
    if family == "gpt2":
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**GPT2, **fields}))
    else:
        model = transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(**{**NEOX, **fields}))
    with torch.no_grad():
        for p in model.parameters():  # LayerNorm gains and biases too, so no mapping hides
            p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        out = model.double()(IDX)
    return getattr(out, "logits", out)


def _match(family: str, **fields) -> float:
    """Convert, then compare in float64; returns the max |logit difference|."""
    hf = _hf(family, **fields)
    ours = from_hf(hf)
    diff = float((_logits(ours) - _logits(hf)).abs().max())
    assert diff < ATOL[family], (fields, diff)
    return diff


def test_every_field_of_the_installed_configs_is_classified():
    for family, cls in (("gpt2", transformers.GPT2Config), ("gpt_neox", transformers.GPTNeoXConfig)):
        unknown = set(cls().to_dict()) - classified(family)
        assert not unknown, f"{family}: fields nobody decided about: {sorted(unknown)}"


ACTIVATIONS = ["gelu", "gelu_python", "gelu_new", "gelu_pytorch_tanh", "gelu_python_tanh", "gelu_fast",
               "gelu_accurate", "relu", "leaky_relu"]


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_activations_match(act):
    _match("gpt2", activation_function=act)
    _match("gpt_neox", hidden_act=act)


def test_the_comparison_tells_erf_and_tanh_gelu_apart():
    """The activation tests could fail: exact and tanh GELU differ by far more than ATOL."""
    for family, key in (("gpt2", "activation_function"), ("gpt_neox", "hidden_act")):
        gap = (_logits(_hf(family, **{key: "gelu"})) - _logits(_hf(family, **{key: "gelu_new"}))).abs().max()
        assert gap > 100 * ATOL[family], (family, float(gap))


@pytest.mark.parametrize("family,fields", [
    ("gpt2", dict(layer_norm_epsilon=0.5)),
    ("gpt2", dict(n_inner=96)),
    ("gpt2", dict(tie_word_embeddings=False)),
    ("gpt2", dict(resid_pdrop=0.3, embd_pdrop=0.3, attn_pdrop=0.3)),  # eval mode: no dropout
    ("gpt2", dict(n_ctx=16, use_cache=False, summary_type="mean")),
    ("gpt_neox", dict(layer_norm_eps=0.5)),
    ("gpt_neox", dict(intermediate_size=64, use_parallel_residual=False)),
    ("gpt_neox", dict(tie_word_embeddings=True)),
    ("gpt_neox", dict(rotary_pct=1.0, rotary_emb_base=500.0)),
    ("gpt_neox", dict(rope_parameters={"rope_type": "default", "rope_theta": 300.0, "partial_rotary_factor": 0.25})),
    ("gpt_neox", dict(rope_scaling={"type": "dynamic", "factor": 4.0})),
    ("gpt_neox", dict(head_dim=16, hidden_dropout=0.3, attention_dropout=0.3, classifier_dropout=0.3)),
])
def test_accepted_fields_match(family, fields):
    _match(family, **fields)


def test_layer_norm_eps_and_rope_base_are_not_vacuous():
    """The fields above are read, not ignored: transformers' logits move with them."""
    for family, key, a, b in (("gpt2", "layer_norm_epsilon", 1e-5, 0.5), ("gpt_neox", "layer_norm_eps", 1e-5, 0.5),
                              ("gpt_neox", "rotary_emb_base", 10000.0, 500.0)):
        gap = (_logits(_hf(family, **{key: a})) - _logits(_hf(family, **{key: b}))).abs().max()
        assert gap > 100 * ATOL[family], (key, float(gap))


def test_dynamic_rope_is_unscaled_inside_the_context():
    """Dynamic NTK scaling starts beyond max_position_embeddings, which is our context length."""
    plain, dynamic = _hf("gpt_neox"), _hf("gpt_neox", rope_scaling={"type": "dynamic", "factor": 4.0})
    assert torch.equal(_logits(plain), _logits(dynamic))
    assert from_hf(dynamic).config.block_size == NEOX["max_position_embeddings"]


def test_reorder_and_upcast_attn_is_the_same_formula():
    """It only changes the rounding (float32 scores, scale applied to the keys); transformers'
    eager path that honours it refuses float64, so this compares in float32."""
    hf = _hf("gpt2", reorder_and_upcast_attn=True, attn_implementation="eager")
    ours = from_hf(hf)
    with torch.no_grad():
        torch.testing.assert_close(ours(IDX), hf(IDX).logits, atol=1e-4, rtol=1e-4)


# (family, fields, the field named in the error, whether the same weights load without the field)
REFUSED = [
    ("gpt_neox", dict(rope_scaling={"type": "linear", "factor": 2.0}), "rope_parameters.rope_type", True),
    ("gpt_neox", dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}),
     "rope_parameters.rope_type", True),
    ("gpt_neox", dict(rope_scaling={"rope_type": "yarn", "factor": 2.0}), "rope_parameters.rope_type", True),
    ("gpt_neox", dict(attention_bias=False), "attention_bias", False),
    ("gpt_neox", dict(head_dim=8), "head_dim", True),
    ("gpt_neox", dict(is_causal=False), "is_causal", True),
    ("gpt_neox", dict(hidden_act="silu"), "hidden_act", True),
    ("gpt_neox", dict(hidden_act="quick_gelu"), "hidden_act", True),
    ("gpt_neox", dict(intermediate_size=48), "intermediate_size", False),
    ("gpt_neox", dict(rotary_pct=0.1875), "partial_rotary_factor", True),
    ("gpt2", dict(scale_attn_weights=False), "scale_attn_weights", True),
    ("gpt2", dict(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx", True),
    ("gpt2", dict(add_cross_attention=True), "add_cross_attention", False),
    ("gpt2", dict(activation_function="gelu_10"), "activation_function", True),
    ("gpt2", dict(activation_function="relu2"), "activation_function", True),
    ("gpt2", dict(n_inner=40), "n_inner", False),
    ("gpt2", dict(is_causal=False), "is_causal", True),
]


@pytest.mark.parametrize("family,fields,named,same_weights", REFUSED,
                         ids=[f"{f}-{'-'.join(k)}" for f, k, _, _ in REFUSED])
def test_fields_that_change_the_maths_are_refused(tmp_path, capsys, family, fields, named, same_weights):
    hf = _hf(family, **fields)
    if same_weights:  # converting it silently would have been wrong
        gap = (_logits(_hf(family)) - _logits(_hf(family, **fields))).abs().max()
        assert gap > 1e-4, float(gap)
        hf = hf.float()
    hf.save_pretrained(tmp_path / "hf")
    out = tmp_path / "ckpt.pt"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", "--from-hf", str(tmp_path / "hf"), "--out", str(out)])
    raw = capsys.readouterr().err
    err = " ".join(raw.split())
    assert exit_info.value.code == 2 and len(raw.strip().splitlines()) == 1, raw
    assert err.startswith("error: cannot convert this") and named in err, err  # one line, nothing before
    assert not out.exists() and not list(tmp_path.glob("ckpt*"))


def test_issue_example_rope_linear_is_refused_in_memory_too():
    with pytest.raises(UserError, match=r"rope_parameters\.rope_type \(rope_scaling\)='linear'"):
        from_hf(_hf("gpt_neox", rope_scaling={"type": "linear", "factor": 2.0}))


# ---------------------------------------------------------------------------------------------
# the reverse direction


@pytest.mark.parametrize("overrides", [
    dict(activation="leaky_relu", leaky_slope=0.01),
    dict(activation="gelu_tanh", norm_eps=1e-3),
    dict(position="rotary", residual="parallel", rotary_pct=0.2, n_embd=64, n_head=4),  # 3.2 -> 2 of 16 dims
    dict(position="rotary", residual="sequential", rotary_pct=1.0, rotary_base=777.0, tie_embeddings=False),
])
def test_to_hf_matches_and_comes_back(overrides):
    ours = GPT(make_config("tiny", "sm-ln-g", vocab_size=61, **overrides))
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    ours.eval()
    hf = to_hf(ours)
    family = hf.config.model_type
    back = from_hf(hf)
    assert back.config.rotary_dim == ours.config.rotary_dim and back.config.activation == ours.config.activation
    ours64, hf64, back64 = _logits(ours), _logits(hf), _logits(back)
    assert float((ours64 - hf64).abs().max()) < ATOL[family]
    assert float((back64 - ours64).abs().max()) < ATOL[family]


def test_to_hf_refuses_a_leaky_slope_hf_cannot_express():
    with pytest.raises(UserError, match="leaky_relu with slope 0.2"):
        to_hf(GPT(make_config("tiny", "sm-ln-g", vocab_size=61, activation="leaky_relu", leaky_slope=0.2)))
