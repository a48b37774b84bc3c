"""Which Hugging Face config fields the converter reproduces, and which it refuses.

`pi-lnfree convert --from-hf` must either compute what transformers computes or refuse. Every
field of `GPT2Config` and `GPTNeoXConfig` (and of their base `PretrainedConfig`), plus the
attributes transformers' shared code reads with `getattr` (`head_dim` in the rotary set-up,
`is_causal` in the mask, `pruned_heads` in transformers 4's weight init), is in exactly one of:

* MAPPED: read into `ModelConfig` by `pi_lnfree.hf` (shape, norm epsilon, activation, residual,
  rotary base and fraction, tied embeddings);
* NEUTRAL: cannot change the causal LM's logits at inference (dropout, caching, token ids,
  labels, the attention kernel, the dtype of the stored weights, ...);
* checked by `check`: fields that change the maths, accepted only at the value that matches our
  model and otherwise refused in one line naming the field.

A key that is in none of them is one that transformers' GPT-2 and GPT-NeoX code does not read
(for example GPT-2's historical `n_ctx`), so it cannot change the forward pass either.
`tests/test_hf.py` checks that every key of the installed transformers' configs is classified,
so that a field added by a later transformers release is looked at before it is accepted.
Sources: transformers' `modeling_gpt2.py`, `modeling_gpt_neox.py`, `modeling_rope_utils.py`,
`masking_utils.py`, `activations.py`.
"""

from __future__ import annotations

from typing import Any

from pi_lnfree.errors import UserError

# HF activation names (GPT-2's activation_function, GPT-NeoX's hidden_act) -> ours. The tanh
# forms differ only in how the constant sqrt(2/pi) is written (gelu_fast: 0.7978845608, 3e-11
# away); leaky_relu is torch's nn.LeakyReLU() with its default slope.
HF_ACTIVATIONS = {
    "gelu": "gelu", "gelu_python": "gelu",
    "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_python_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh", "gelu_accurate": "gelu_tanh",
    "relu": "relu", "leaky_relu": "leaky_relu",
}
HF_LEAKY_SLOPE = 0.01  # torch.nn.LeakyReLU's default negative slope

MAPPED = {
    "gpt2": {"vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner", "activation_function",
             "layer_norm_epsilon", "initializer_range", "tie_word_embeddings"},
    "gpt_neox": {"vocab_size", "max_position_embeddings", "hidden_size", "num_hidden_layers",
                 "num_attention_heads", "intermediate_size", "hidden_act", "layer_norm_eps",
                 "initializer_range", "tie_word_embeddings", "use_parallel_residual", "rope_parameters",
                 "rotary_pct", "rotary_emb_base", "rope_scaling"},
}

_NEUTRAL_COMMON = {
    # identity, bookkeeping
    "_name_or_path", "architectures", "model_type", "transformers_version", "id2label", "label2id",
    "problem_type", "finetuning_task", "tokenizer_class", "prefix", "task_specific_params",
    # what the forward returns, not what it computes
    "output_attentions", "output_hidden_states", "return_dict", "use_cache", "torchscript",
    # token ids: used for generation, padding and classification heads, never in the logits
    "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id",
    # the stored weights' dtype (we compute in float32; the maths is the same)
    "dtype", "torch_dtype", "use_bfloat16",
    # an optimisation that splits the same computation (not used by these two families)
    "chunk_size_feed_forward",
    # encoder-decoder plumbing that a decoder-only causal LM does not use
    "is_encoder_decoder", "is_decoder", "tie_encoder_decoder", "cross_attention_hidden_size",
    # the attention kernel (eager, sdpa, flash): the same softmax attention
    "_attn_implementation", "_attn_implementation_autoset",
    # generation defaults of transformers 4 configs
    "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups",
    "diversity_penalty", "temperature", "top_k", "top_p", "typical_p", "repetition_penalty",
    "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids",
    "num_return_sequences", "output_scores", "return_dict_in_generate", "forced_bos_token_id",
    "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty",
    "suppress_tokens", "begin_suppress_tokens", "tf_legacy_loss",
    # only read by the attention-mask and cache code paths these families do not take
    "sliding_window", "attention_chunk_size", "layer_types",
}
NEUTRAL = {
    "gpt2": _NEUTRAL_COMMON | {
        # dropout: off at inference
        "resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_first_dropout",
        # GPT2DoubleHeadsModel's sequence-summary head, not part of the causal LM
        "summary_type", "summary_use_proj", "summary_activation", "summary_proj_to_labels",
        # scores computed in float32 with the scale applied to the keys first: the same
        # formula, rounded differently (tested against transformers)
        "reorder_and_upcast_attn",
        "n_ctx",  # GPT-2's original configs: an alias of n_positions that transformers ignores
    },
    "gpt_neox": _NEUTRAL_COMMON | {"attention_dropout", "hidden_dropout", "classifier_dropout"},
}


# "dynamic" (NTK) scaling changes the rotary base only for sequences longer than
# max_position_embeddings, which is our context length (`block_size`): inside it, transformers
# uses the unscaled frequencies (`modeling_rope_utils._compute_dynamic_ntk_parameters` with
# seq_len = max_position_embeddings gives the base unchanged).
ROPE_TYPES = ("default", "dynamic")


def _rope_type_ok(c: Any) -> tuple[bool, str]:
    kind = neox_rope(c)["type"]
    return kind in ROPE_TYPES, repr(kind)


def neox_rope(c: Any) -> dict[str, Any]:
    """GPT-NeoX rotary settings from either config layout: transformers 5's `rope_parameters`
    (rope_type, rope_theta, partial_rotary_factor) or transformers 4's attributes (`rotary_pct`,
    `rotary_emb_base`, `rope_scaling` with "type" or "rope_type"). Returns type, base, fraction."""
    params = dict(getattr(c, "rope_parameters", None) or {})
    scaling = dict(getattr(c, "rope_scaling", None) or {})
    kind = params.get("rope_type", params.get("type")) or scaling.get("rope_type", scaling.get("type")) or "default"
    return {
        "type": kind,
        "base": float(params.get("rope_theta", getattr(c, "rotary_emb_base", 10000.0))),
        "pct": float(params.get("partial_rotary_factor", getattr(c, "rotary_pct", 0.25))),
    }


# (field, test on the config -> (ok, value shown), what a non-neutral value would change)
_CHECKS = {
    "gpt2": [
        ("scale_attn_weights", lambda c: (getattr(c, "scale_attn_weights", True) is True,
                                          repr(getattr(c, "scale_attn_weights", True))),
         "attention scores without the 1/sqrt(head_dim) scale"),
        ("scale_attn_by_inverse_layer_idx", lambda c: (not getattr(c, "scale_attn_by_inverse_layer_idx", False),
                                                       repr(getattr(c, "scale_attn_by_inverse_layer_idx", False))),
         "attention scores further divided by the layer index + 1"),
        ("add_cross_attention", lambda c: (not getattr(c, "add_cross_attention", False),
                                           repr(getattr(c, "add_cross_attention", False))),
         "cross-attention layers to an encoder (an encoder-decoder's decoder)"),
    ],
    "gpt_neox": [
        ("rope_parameters.rope_type (rope_scaling)", _rope_type_ok,
         "rescaled rotary frequencies (only unscaled rotary positions are implemented)"),
        ("attention_bias", lambda c: (getattr(c, "attention_bias", True) is True, repr(getattr(c, "attention_bias", True))),
         "attention without biases while the MLP keeps them (our bias switch covers every layer)"),
        ("head_dim", lambda c: (getattr(c, "head_dim", None) in (None, c.hidden_size // c.num_attention_heads),
                                repr(getattr(c, "head_dim", None))),
         "a rotary dimension computed from a head size other than hidden_size / num_attention_heads"),
    ],
}
_CHECKS_COMMON = [
    ("is_causal", lambda c: (getattr(c, "is_causal", True) is not False, repr(getattr(c, "is_causal", True))),
     "bidirectional attention"),
    ("pruned_heads", lambda c: (not getattr(c, "pruned_heads", None), repr(getattr(c, "pruned_heads", None))),
     "attention heads removed from some layers"),
]
CHECKED = {family: {name for name, _, _ in checks} | {name for name, _, _ in _CHECKS_COMMON}
           for family, checks in _CHECKS.items()}


def refuse(family: str, field: str, value: str, why: str) -> UserError:
    """The one-line error for a config field the converter does not reproduce."""
    return UserError(f"cannot convert this {family} model: config field {field}={value} means {why}, "
                     "which pi-lnfree does not implement")


def check(family: str, c: Any) -> None:
    """Refuse (UserError naming the field) a config whose forward pass differs from every model
    `pi_lnfree.hf` can build; fields it maps are validated where they are read."""
    for field, test, why in _CHECKS[family] + _CHECKS_COMMON:
        ok, shown = test(c)
        if not ok:
            raise refuse(family, field, shown, why)


def classified(family: str) -> set[str]:
    """Every config key this module accounts for (mapped, neutral or checked)."""
    return MAPPED[family] | NEUTRAL[family] | CHECKED[family]


__all__ = ["CHECKED", "HF_ACTIVATIONS", "HF_LEAKY_SLOPE", "MAPPED", "NEUTRAL", "ROPE_TYPES", "check", "classified",
           "neox_rope", "refuse"]
