"""Hugging Face interop: GPT-2 (`GPT2LMHeadModel`) and GPT-NeoX / Pythia (`GPTNeoXForCausalLM`).

`from_hf` turns a loaded model or a saved folder into our `GPT`; `to_hf` turns a `GPT` back into a
transformers model for configurations HF can express. This is how users bring pretrained models to
`secure-eval`, and how the tests prove our model computes what the reference implementation does.
transformers is an optional dependency (extras `hf` / `dev`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from pi_lnfree.config import ModelConfig, variant_label, variant_name
from pi_lnfree.errors import UserError
from pi_lnfree.model import GPT

# HF activation names (GPT-2's activation_function, GPT-NeoX's hidden_act) -> ours.
_HF_ACT = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}


def _transformers():
    try:
        import transformers
    except ImportError:
        raise UserError("Hugging Face interop needs transformers: pip install 'pi-lnfree[hf]'") from None
    return transformers


def _ffn_mult(ffn: int | None, d: int) -> int:
    ffn = ffn or 4 * d
    if ffn % d:
        raise UserError(f"FFN width {ffn} is not a multiple of the model width {d}")
    return ffn // d


def _activation(name: str) -> str:
    if name not in _HF_ACT:
        raise UserError(f"Hugging Face activation {name!r} has no pi-lnfree counterpart")
    return _HF_ACT[name]


def _neox_rope(hf_cfg: Any) -> tuple[float, float]:
    """(partial rotary fraction, base) from either the transformers>=5 or the older config layout."""
    rope = getattr(hf_cfg, "rope_parameters", None) or {}
    pct = rope.get("partial_rotary_factor", getattr(hf_cfg, "rotary_pct", 0.25))
    base = rope.get("rope_theta", getattr(hf_cfg, "rotary_emb_base", 10000.0))
    return float(pct), float(base)


# ---------------------------------------------------------------------------------------------
# HF -> pi-lnfree


def _gpt2_config(c: Any) -> ModelConfig:
    if getattr(c, "scale_attn_by_inverse_layer_idx", False) or not getattr(c, "scale_attn_weights", True):
        raise UserError("GPT-2 attention-scaling variants are not supported")
    return ModelConfig(
        vocab_size=c.vocab_size, n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd,
        block_size=c.n_positions, norm="layernorm", final_norm=True, norm_eps=c.layer_norm_epsilon,
        activation=_activation(c.activation_function), residual="sequential",
        position="learned", tie_embeddings=bool(getattr(c, "tie_word_embeddings", True)), bias=True,
        ffn_mult=_ffn_mult(c.n_inner, c.n_embd), init_std=c.initializer_range,
    )


def _gpt2_pairs(cfg: ModelConfig) -> list[tuple[str, str, str]]:
    """(our key, HF key, layout) for GPT-2; layout "t" means HF's Conv1D stores (in, out)."""
    pairs = [("wte.weight", "transformer.wte.weight", ""), ("wpe.weight", "transformer.wpe.weight", ""),
             ("ln_f.weight", "transformer.ln_f.weight", ""), ("ln_f.bias", "transformer.ln_f.bias", ""),
             ("lm_head.weight", "lm_head.weight", "")]
    for i in range(cfg.n_layer):
        h, b = f"transformer.h.{i}.", f"blocks.{i}."
        for name in ("ln_1", "ln_2"):
            pairs += [(b + f"{name}.{k}", h + f"{name}.{k}", "") for k in ("weight", "bias")]
        for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            pairs += [(b + f"{name}.weight", h + f"{name}.weight", "t"), (b + f"{name}.bias", h + f"{name}.bias", "")]
    return pairs


def _neox_config(c: Any) -> ModelConfig:
    pct, base = _neox_rope(c)
    head_dim = c.hidden_size // c.num_attention_heads
    if int(head_dim * pct) % 2:
        raise UserError(f"rotary dims {int(head_dim * pct)} per head must be even")
    if not getattr(c, "attention_bias", True):
        # GPT-NeoX keeps MLP biases without attention biases; our `bias` switch covers all layers.
        raise UserError("GPT-NeoX with attention_bias=false (MLP biases only) is not supported")
    return ModelConfig(
        vocab_size=c.vocab_size, n_layer=c.num_hidden_layers, n_head=c.num_attention_heads,
        n_embd=c.hidden_size, block_size=c.max_position_embeddings, norm="layernorm", final_norm=True,
        norm_eps=c.layer_norm_eps, activation=_activation(c.hidden_act),
        residual="parallel" if c.use_parallel_residual else "sequential", position="rotary",
        rotary_pct=pct, rotary_base=base, tie_embeddings=bool(getattr(c, "tie_word_embeddings", False)),
        bias=True, ffn_mult=_ffn_mult(c.intermediate_size, c.hidden_size),
        init_std=c.initializer_range,
    )


def _neox_qkv_to_ours(t: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """NeoX packs [q, k, v] per head; ours packs all q heads, then all k, then all v."""
    rest = t.shape[1:]
    return t.view(cfg.n_head, 3, cfg.head_dim, *rest).transpose(0, 1).reshape(3 * cfg.n_embd, *rest)


def _neox_qkv_to_hf(t: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    rest = t.shape[1:]
    return t.view(3, cfg.n_head, cfg.head_dim, *rest).transpose(0, 1).reshape(3 * cfg.n_embd, *rest)


_NEOX_NAMES = (
    ("ln_1", "input_layernorm"), ("ln_2", "post_attention_layernorm"),
    ("attn.c_attn", "attention.query_key_value"), ("attn.c_proj", "attention.dense"),
    ("mlp.c_fc", "mlp.dense_h_to_4h"), ("mlp.c_proj", "mlp.dense_4h_to_h"),
)


def _neox_pairs(cfg: ModelConfig) -> list[tuple[str, str, str]]:
    """(our key, HF key, layout) for GPT-NeoX; layout "qkv" means per-head [q, k, v] packing."""
    pairs = [("wte.weight", "gpt_neox.embed_in.weight", ""), ("lm_head.weight", "lm_head.weight", ""),
             ("ln_f.weight", "gpt_neox.final_layer_norm.weight", ""),
             ("ln_f.bias", "gpt_neox.final_layer_norm.bias", "")]
    for i in range(cfg.n_layer):
        h, b = f"gpt_neox.layers.{i}.", f"blocks.{i}."
        for ours, theirs in _NEOX_NAMES:
            layout = "qkv" if ours == "attn.c_attn" else ""
            pairs += [(b + f"{ours}.{k}", h + f"{theirs}.{k}", layout) for k in ("weight", "bias")]
    return pairs


def _to_ours(t: torch.Tensor, layout: str, cfg: ModelConfig) -> torch.Tensor:
    if layout == "t":
        return t.t().contiguous()
    return _neox_qkv_to_ours(t, cfg) if layout == "qkv" else t


def _to_theirs(t: torch.Tensor, layout: str, cfg: ModelConfig) -> torch.Tensor:
    if layout == "t":
        return t.t().contiguous()
    return _neox_qkv_to_hf(t, cfg) if layout == "qkv" else t


_INPUT_EMBEDDING = {"gpt2": "transformer.wte.weight", "gpt_neox": "gpt_neox.embed_in.weight"}


def _canonical_head(hf_state: dict[str, torch.Tensor], model_type: str) -> dict[str, torch.Tensor]:
    """Name the output projection `lm_head.weight` (older GPT-NeoX releases call it `embed_out`;
    tied models may omit it)."""
    hf_state = dict(hf_state)
    if "embed_out.weight" in hf_state:
        hf_state["lm_head.weight"] = hf_state.pop("embed_out.weight")
    hf_state.setdefault("lm_head.weight", hf_state[_INPUT_EMBEDDING[model_type]])
    return hf_state


_FAMILIES = {"gpt2": (_gpt2_config, _gpt2_pairs), "gpt_neox": (_neox_config, _neox_pairs)}


def from_hf(model_or_path: Any) -> GPT:
    """A transformers GPT-2 / GPT-NeoX model (or a saved folder of one) -> our `GPT` (eval mode)."""
    if isinstance(model_or_path, (str, os.PathLike)):
        model_or_path = load_hf_folder(model_or_path)
    model_type = getattr(model_or_path.config, "model_type", None)
    if model_type not in _FAMILIES:
        raise UserError(f"unsupported Hugging Face model type {model_type!r} (need gpt2 or gpt_neox)")
    make_config, pairs = _FAMILIES[model_type]
    cfg = make_config(model_or_path.config)
    hf_state = _canonical_head(model_or_path.state_dict(), model_type)
    state = {ours: _to_ours(hf_state[theirs], layout, cfg) for ours, theirs, layout in pairs(cfg)}
    model = GPT(cfg)
    model.load_state_dict({k: v.detach().float() for k, v in state.items()}, strict=True)
    return model.eval()


def load_hf_folder(path: str | os.PathLike) -> Any:
    """Load a saved causal LM from a local folder (never from the hub)."""
    transformers = _transformers()
    path = Path(path)
    if not (path / "config.json").is_file():
        raise UserError(f"{path}: not a saved Hugging Face model folder (no config.json)")
    try:
        return transformers.AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{path}: cannot load Hugging Face model: {' '.join(str(e).split())[:200]}") from None


# ---------------------------------------------------------------------------------------------
# pi-lnfree -> HF


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise UserError(f"this configuration cannot be expressed as a Hugging Face model: {what}")


def to_hf(model: GPT) -> Any:
    """Our `GPT` -> a transformers model with the same weights, for configurations HF can express:
    LayerNorm in every block and before the head, GELU (erf or tanh) or ReLU, biases on;
    learned positions + sequential residual -> GPT-2; rotary positions -> GPT-NeoX."""
    transformers = _transformers()
    cfg = model.config
    acts = set(cfg.layer_activations())
    _require(cfg.norm != "dyt", "Dynamic Tanh (norm = dyt) has no GPT-2 / GPT-NeoX counterpart")
    _require(cfg.norm == "layernorm" and cfg.final_norm, "HF GPT-2 / GPT-NeoX always have LayerNorm (LN-free "
             "models, including the result of a LayerNorm removal, stay pi-lnfree checkpoints)")
    _require(not cfg.ln_removal, "a LayerNorm removal is in progress (frozen-scale norms)")
    _require(not cfg.head_bias, "the LM head has a bias")
    _require(len(acts) == 1 and next(iter(acts)) in ("gelu", "gelu_tanh", "relu"), f"activation {sorted(acts)}")
    _require(cfg.bias, "HF models need biases")
    act = next(iter(acts))
    ours = model.state_dict()  # load_state_dict below copies the values
    if cfg.position == "learned":
        _require(cfg.residual == "sequential", "GPT-2 has a sequential residual")
        hf_cfg = transformers.GPT2Config(
            vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
            n_head=cfg.n_head, n_inner=cfg.ffn_dim, layer_norm_epsilon=cfg.norm_eps,
            activation_function={"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}[act],
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=cfg.tie_embeddings,
            initializer_range=cfg.init_std,
        )
        hf = transformers.GPT2LMHeadModel(hf_cfg)
    else:
        hf_cfg = transformers.GPTNeoXConfig(
            vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, num_hidden_layers=cfg.n_layer,
            num_attention_heads=cfg.n_head, intermediate_size=cfg.ffn_dim,
            hidden_act={"gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu", "relu": "relu"}[act],
            max_position_embeddings=cfg.block_size, layer_norm_eps=cfg.norm_eps,
            use_parallel_residual=cfg.residual == "parallel", tie_word_embeddings=cfg.tie_embeddings,
            rotary_pct=cfg.rotary_pct, rotary_emb_base=cfg.rotary_base, attention_dropout=0.0,
            hidden_dropout=0.0, initializer_range=cfg.init_std,
        )
        hf = transformers.GPTNeoXForCausalLM(hf_cfg)
    pairs = _FAMILIES[hf.config.model_type][1](cfg)
    state = {theirs: _to_theirs(ours[mine], layout, cfg) for mine, theirs, layout in pairs}
    if "embed_out.weight" in hf.state_dict():
        state["embed_out.weight"] = state.pop("lm_head.weight")
    missing, unexpected = hf.load_state_dict(state, strict=False)
    if unexpected or any(not k.endswith((".attn.bias", ".attn.masked_bias")) for k in missing):
        raise RuntimeError(f"HF key mapping incomplete: missing {missing}, unexpected {unexpected}")
    return hf.eval()


def convert_folder(src: str | os.PathLike, out: str | os.PathLike) -> dict[str, Any]:
    """`pi-lnfree convert --from-hf DIR --out CKPT`: write a checkpoint from a saved HF model."""
    from pi_lnfree.checkpoint import save_checkpoint

    model = from_hf(src)
    save_checkpoint(out, model.state_dict(), model.config, meta={"source": f"hf:{Path(src).resolve()}"})
    return {"checkpoint": str(out), "variant": variant_name(model.config), "label": variant_label(model.config),
            "parameters": model.num_parameters(), "config": model.config.to_dict()}
