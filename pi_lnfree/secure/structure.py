"""The decoder's structure for private inference, written once over an operations interface.

`forward` is block for block the structure of the plaintext `pi_lnfree.model.GPT`: embedding (+
learned positions), per block pre-norm attention and MLP with a sequential or parallel residual,
final norm, LM head. It never touches a tensor itself: every step is a call on `ops`, a backend
that decides what a tensor is and what each operator costs:

* `pi_lnfree.secure.backends.crypten_ops.CryptenOps`: CrypTensors under two real parties, each
  call metered into an operator category (the `secure-eval` engine);
* `pi_lnfree.secure.backends.recorder.RecorderOps`: shapes only; each call is recorded with its
  dimensions (the cost model's trace, the way CrypTen's tuple provider traces requests);
* `pi_lnfree.secure.backends.torch64.Torch64Ops`: float64 torch tensors with exact maths, which
  tests compare with `GPT` (this is what keeps the two one structure) and the range audit reads.

The interface (one method per operator category of `pi_lnfree.secure.meter.CATEGORIES`, plus
the plumbing that CrypTen would count as `other`):

    weight(tensor | None, shape, transpose) -> backend tensor   (server's weights; (in, out) if transpose)
    tokens(ids | None, T, V) -> one-hot rows (1, T, V)          (client's input)
    transpose(w), embedding(onehot, table, positions | None), linear(x, w_t, bias | None),
    attention_scores(q, k), softmax(scores), attention_mix(probs, v),
    layernorm(x, gamma | None, beta | None, eps), dyt(x, alpha, gamma, beta) (category layernorm:
    Dynamic Tanh replaces the norm), activation(x, name, slope), lm_head(x, w_t, bias | None),
    split_heads(qkv, n_head), merge_heads(y), add(*xs), rotary(q, k, cos, sin), site(label)

`site(label)` is a context manager naming where the structure is ("block 3 attention"); a
backend may ignore it. Shapes: batch 1; activations (1, T, d); heads (1, H, T, hd).
"""

from __future__ import annotations

from typing import Any

import torch

from pi_lnfree.config import ModelConfig
from pi_lnfree.errors import UserError
from pi_lnfree.secure.profile import ProtocolProfile


class NotSupportedUnderMPC(UserError):
    """A checkpoint whose variant the secure engine cannot run."""


# The switch values `Decoder` implements; it dispatches on exactly these, so a value the plaintext
# model gains later is refused here instead of silently taking another branch.
STRUCTURE_SWITCHES = {
    "norm": ("layernorm", "dyt", "none"),
    "residual": ("sequential", "parallel"),
    "position": ("learned", "rotary"),
}
SECURE_ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "leaky_relu", "learnable_leaky")  # layers.activation


def check_structure(cfg: ModelConfig) -> None:
    """Raise `NotSupportedUnderMPC` for a switch value the secure structure does not implement."""
    if cfg.ln_removal:
        raise NotSupportedUnderMPC("a LayerNorm removal in progress (frozen-scale norms): not supported under "
                                   "MPC; evaluate the run's final checkpoint, whose norms are folded away")
    for key, values in STRUCTURE_SWITCHES.items():
        if getattr(cfg, key) not in values:
            raise NotSupportedUnderMPC(f"{key}={getattr(cfg, key)!r}: not supported under MPC")
    for act in cfg.layer_activations():
        if act not in SECURE_ACTIVATIONS:
            raise NotSupportedUnderMPC(f"activation {act!r}: not supported under MPC")


def check_supported(cfg: ModelConfig, profile: ProtocolProfile, seq_len: int | None = None) -> None:
    """Raise `NotSupportedUnderMPC` when the secure forward cannot run `cfg` under `profile` (a
    switch value the structure lacks, or a fixed leaky-ReLU slope below the fixed-point
    resolution 2^-precision_bits, which the encoding would turn into 0), and `UserError` when
    `seq_len` is outside [1, block_size].
    """
    check_structure(cfg)
    resolution = 2.0 ** -profile.precision_bits
    if "leaky_relu" in cfg.layer_activations() and cfg.leaky_slope != 0 and abs(cfg.leaky_slope) < resolution:
        raise NotSupportedUnderMPC(
            f"fixed leaky ReLU slope {cfg.leaky_slope:g} is below the fixed-point resolution "
            f"2^-{profile.precision_bits} = {resolution:.3g} (it would become 0): not supported under MPC"
        )
    if seq_len is not None and not 1 <= seq_len <= cfg.block_size:
        raise UserError(f"--seq-len {seq_len} must be in [1, {cfg.block_size}] (the model's context)")


def _head_shared_apart(cfg: ModelConfig) -> bool:
    """True when the server shares the LM head as its own tensor: an untied head, or a tied one
    whose embedding-side copy carries the folded embedding scale."""
    return not cfg.tie_embeddings or cfg.embed_scale_init is not None


def weight_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor the server shares (state_dict order; a tied LM head once
    unless the embedding scale is folded into the embedding, see `server_state`)."""
    from pi_lnfree.model import GPT

    with torch.device("meta"):
        state = GPT(cfg).state_dict()
    shapes = {name: tuple(t.shape) for name, t in state.items() if name != "embed_scale"}
    if not _head_shared_apart(cfg):
        shapes.pop("lm_head.weight", None)
    return shapes


def server_state(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors the server shares, from a `GPT` state dict: the learnable embedding scale of a
    DyT model is folded into the token embedding table (the server's own precomputation, so
    it costs no secure multiplication); a tied LM head then keeps the unscaled table apart."""
    out = {name: t.detach() for name, t in state.items()}
    scale = out.pop("embed_scale", None)
    if scale is not None:
        if cfg.tie_embeddings:
            out["lm_head.weight"] = out["wte.weight"]
        out["wte.weight"] = out["wte.weight"] * scale
    return out


def is_linear_weight(name: str) -> bool:
    """True for the weights the structure multiplies from the right (stored (in, out))."""
    return name.endswith(".weight") and any(k in name for k in ("c_attn", "c_proj", "c_fc", "lm_head"))


def load_weights(cfg: ModelConfig, state: dict[str, torch.Tensor] | None, ops) -> dict[str, Any]:
    """The server's weights as backend tensors (`ops.weight`), linear weights as (in, out), plus
    `lm_head_t` (the tied embedding transposed, or the untied head). `state=None` on a party that
    does not hold the weights (it shares placeholders of the public shapes)."""
    w: dict[str, Any] = {}
    shared = None if state is None else server_state(cfg, state)
    for name, shape in weight_shapes(cfg).items():
        w[name] = ops.weight(None if shared is None else shared[name], shape, is_linear_weight(name))
    w["lm_head_t"] = w["lm_head.weight"] if _head_shared_apart(cfg) else ops.transpose(w["wte.weight"])
    return w


def rotary_tables(cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor] | tuple[None, None]:
    """Public (block_size, rotary_dim) cos/sin tables of the model's rotary positions, or Nones."""
    if cfg.position != "rotary":
        return None, None
    from pi_lnfree.model import RotaryCache

    cache = RotaryCache(cfg)  # public: a function of the config only
    return cache.cos, cache.sin


class Decoder:
    """The structure of `GPT` over `ops`, for one sequence (batch 1) of T tokens."""

    def __init__(self, cfg: ModelConfig, weights: dict[str, Any], ops):
        check_structure(cfg)
        self.cfg, self.w, self.ops = cfg, weights, ops
        self.acts = cfg.layer_activations()
        self.slope_index = cfg.slope_index()
        self.cos, self.sin = rotary_tables(cfg)

    def _norm(self, x, prefix: str, final: bool = False):
        """The norm site `prefix`: LayerNorm, Dynamic Tanh or nothing (`pi_lnfree.model.norm_kind`)."""
        from pi_lnfree.model import norm_kind

        kind, w = norm_kind(self.cfg, final), self.w
        if kind == "layernorm":
            return self.ops.layernorm(x, w.get(f"{prefix}.weight"), w.get(f"{prefix}.bias"), self.cfg.norm_eps)
        if kind == "dyt":
            return self.ops.dyt(x, w[f"{prefix}.alpha"], w[f"{prefix}.weight"], w[f"{prefix}.bias"])
        return x

    def forward(self, onehot):
        """One-hot rows (1, T, V) -> the backend's `lm_head` output (logits (1, T, V) for the
        party that learns them)."""
        cfg, ops = self.cfg, self.ops
        with ops.site("embedding"):
            x = ops.embedding(onehot, self.w["wte.weight"], self.w["wpe.weight"] if cfg.position == "learned" else None)
        for i in range(cfg.n_layer):
            x = self.block(i, x)
        with ops.site("final"):
            return ops.lm_head(self._norm(x, "ln_f", final=True), self.w["lm_head_t"], self.w.get("lm_head.bias"))

    def block(self, i: int, x):
        """One transformer block: (pre-norm) attention and MLP, sequential or parallel residual."""
        p, ops = f"blocks.{i}", self.ops
        with ops.site(f"block {i} attention"):
            a = self.attention(i, self._norm(x, f"{p}.ln_1"))
        if self.cfg.residual == "parallel":
            with ops.site(f"block {i} mlp"):
                m = self.mlp(i, self._norm(x, f"{p}.ln_2"))
                return ops.add(x, a, m)
        x = ops.add(x, a)
        with ops.site(f"block {i} mlp"):
            m = self.mlp(i, self._norm(x, f"{p}.ln_2"))
            return ops.add(x, m)

    def attention(self, i: int, h):
        """Causal self-attention: QKV projection, (rotary), QK^T, softmax of all heads, AV, proj."""
        p, ops = f"blocks.{i}.attn", self.ops
        qkv = ops.linear(h, self.w[f"{p}.c_attn.weight"], self.w.get(f"{p}.c_attn.bias"))
        q, k, v = ops.split_heads(qkv, self.cfg.n_head)
        if self.cos is not None:
            q, k = ops.rotary(q, k, self.cos, self.sin)
        probs = ops.softmax(ops.attention_scores(q, k))
        y = ops.merge_heads(ops.attention_mix(probs, v))
        return ops.linear(y, self.w[f"{p}.c_proj.weight"], self.w.get(f"{p}.c_proj.bias"))

    def mlp(self, i: int, h):
        """FFN: c_fc, the layer's activation, c_proj."""
        p, ops = f"blocks.{i}.mlp", self.ops
        act = self.acts[i]
        slope = self.w["slopes"][self.slope_index[i]] if act == "learnable_leaky" else self.cfg.leaky_slope
        u = ops.linear(h, self.w[f"{p}.c_fc.weight"], self.w.get(f"{p}.c_fc.bias"))
        u = ops.activation(u, act, slope)
        return ops.linear(u, self.w[f"{p}.c_proj.weight"], self.w.get(f"{p}.c_proj.bias"))


__all__ = [
    "Decoder",
    "NotSupportedUnderMPC",
    "STRUCTURE_SWITCHES",
    "SECURE_ACTIVATIONS",
    "check_structure",
    "check_supported",
    "is_linear_weight",
    "load_weights",
    "server_state",
    "rotary_tables",
    "weight_shapes",
]
