"""Our model computes what Hugging Face's reference implementations compute."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from pi_lnfree.checkpoint import load_model  # noqa: E402
from pi_lnfree.cli import main  # noqa: E402
from pi_lnfree.config import make_config  # noqa: E402
from pi_lnfree.errors import UserError  # noqa: E402
from pi_lnfree.hf import from_hf, to_hf  # noqa: E402
from pi_lnfree.model import GPT  # noqa: E402


def _randomize(model: torch.nn.Module) -> None:
    """Non-trivial weights everywhere (LayerNorm gains/biases included), so no mapping error hides."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)


GPT2_SHAPES = [
    dict(n_layer=2, n_head=4, n_embd=64, n_positions=32, vocab_size=101, activation_function="gelu_new"),
    dict(n_layer=3, n_head=2, n_embd=32, n_positions=16, vocab_size=57, activation_function="relu", n_inner=64),
    dict(n_layer=1, n_head=8, n_embd=64, n_positions=24, vocab_size=33, activation_function="gelu",
         tie_word_embeddings=False),
]


@pytest.mark.parametrize("shape", GPT2_SHAPES)
def test_gpt2_logits_match(shape):
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**shape, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0))
    _randomize(hf)
    hf.eval()
    ours = from_hf(hf)
    idx = torch.randint(0, shape["vocab_size"], (2, shape["n_positions"]))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), hf(idx).logits, atol=1e-4, rtol=1e-4)
    expected_act = {"gelu_new": "gelu_tanh", "relu": "relu", "gelu": "gelu"}[shape["activation_function"]]
    assert ours.config.activation == expected_act


NEOX_SHAPES = [
    dict(num_hidden_layers=2, num_attention_heads=4, hidden_size=64, intermediate_size=256, vocab_size=128,
         max_position_embeddings=32, rotary_pct=0.25, use_parallel_residual=True),
    dict(num_hidden_layers=2, num_attention_heads=2, hidden_size=32, intermediate_size=64, vocab_size=77,
         max_position_embeddings=16, rotary_pct=0.5, use_parallel_residual=False, rotary_emb_base=500.0),
]


@pytest.mark.parametrize("shape", NEOX_SHAPES)
def test_gpt_neox_logits_match(shape):
    hf = transformers.GPTNeoXForCausalLM(
        transformers.GPTNeoXConfig(**shape, hidden_dropout=0.0, attention_dropout=0.0)
    )
    _randomize(hf)
    hf.eval()
    ours = from_hf(hf)
    assert ours.config.position == "rotary" and not ours.config.tie_embeddings
    idx = torch.randint(0, shape["vocab_size"], (2, shape["max_position_embeddings"]))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), hf(idx).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "preset,variant,overrides",
    [("tiny", "sm-ln-g", {}), ("tiny", "sm-ln-r", {"tie_embeddings": False}),
     ("pythia-70m", "sm-ln-g", {"n_embd": 64, "n_head": 4, "n_layer": 2})],
)
def test_to_hf_round_trip(preset, variant, overrides):
    ours = GPT(make_config(preset, variant, vocab_size=90, **overrides))
    _randomize(ours)
    ours.eval()
    hf = to_hf(ours)
    idx = torch.randint(0, 90, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, ours(idx), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(from_hf(hf)(idx), ours(idx), atol=1e-5, rtol=1e-5)


def test_neox_without_attention_biases_is_refused():
    hf = transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(**NEOX_SHAPES[1], attention_bias=False))
    with pytest.raises(UserError, match="attention_bias"):
        from_hf(hf)


def test_ln_free_cannot_go_to_hf():
    with pytest.raises(UserError, match="cannot be expressed"):
        to_hf(GPT(make_config("tiny", "sm-r", vocab_size=50)))


def test_convert_command_from_saved_folder(tmp_path, capsys):
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2_SHAPES[0]))
    _randomize(hf)
    hf.save_pretrained(tmp_path / "hf")
    out = tmp_path / "ckpt.pt"
    main(["convert", "--from-hf", str(tmp_path / "hf"), "--out", str(out), "--json"])
    import json

    result = json.loads(capsys.readouterr().out)
    assert (result["variant"], result["label"]) == ("sm-ln-g", "SM+LN+G")
    assert result["parameters"] == sum(p.numel() for p in hf.parameters())
    model, _ = load_model(out)
    idx = torch.randint(0, 101, (1, 32))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), hf.eval()(idx).logits, atol=1e-4, rtol=1e-4)
