"""The secure forward pass, block for block the structure of `pi_lnfree.model.GPT`.

Roles: the server (rank 1) secret-shares every weight of the checkpoint once per session
(`share_weights`, src=1); the client (rank 0) secret-shares the one-hot rows of its tokens for each
sequence (`share_tokens`, src=0). The forward uses only the metered primitives of
`pi_lnfree.secure.layers.SecureOps`, and the logits are opened to the client alone.

Everything in the plaintext family runs: LayerNorm or none (+ the final-norm switch), GELU (erf
or tanh form), ReLU, fixed and learnable leaky ReLU (per layer or global slope), per-layer
hybrids, sequential or parallel residual, learned or partial rotary positions, tied or untied LM
head. `check_supported` refuses, with a "not supported under MPC" message, what the fixed-point
engine cannot represent.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from pi_lnfree.config import ModelConfig
from pi_lnfree.errors import UserError
from pi_lnfree.secure import crypten_compat
from pi_lnfree.secure.layers import SecureOps, rotary
from pi_lnfree.secure.profile import ProtocolProfile

CLIENT, SERVER = 0, 1

# The switches the secure engine implements; a value outside these is refused up front.
SECURE_SUPPORT = {
    "norm": ("layernorm", "none"),
    "residual": ("sequential", "parallel"),
    "position": ("learned", "rotary"),
    "activation": ("gelu", "gelu_tanh", "relu", "leaky_relu", "learnable_leaky"),
}


class NotSupportedUnderMPC(UserError):
    """A checkpoint whose variant the secure engine cannot run."""


def check_supported(cfg: ModelConfig, profile: ProtocolProfile, seq_len: int | None = None) -> None:
    """Raise `NotSupportedUnderMPC` when the secure forward cannot run `cfg` under `profile`."""

    def refuse(what: str) -> None:
        raise NotSupportedUnderMPC(f"{what}: not supported under MPC")

    for key in ("norm", "residual", "position"):
        if getattr(cfg, key) not in SECURE_SUPPORT[key]:
            refuse(f"{key}={getattr(cfg, key)!r}")
    acts = cfg.layer_activations()
    for act in acts:
        if act not in SECURE_SUPPORT["activation"]:
            refuse(f"activation {act!r}")
    resolution = 2.0 ** -profile.precision_bits
    if "leaky_relu" in acts and cfg.leaky_slope != 0 and abs(cfg.leaky_slope) < resolution:
        refuse(
            f"fixed leaky ReLU slope {cfg.leaky_slope:g} is below the fixed-point resolution "
            f"2^-{profile.precision_bits} = {resolution:.3g} (it would become 0)"
        )
    if seq_len is not None and not 1 <= seq_len <= cfg.block_size:
        raise UserError(f"--seq-len {seq_len} must be in [1, {cfg.block_size}] (the model's context)")


def weight_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor the server shares (state_dict order; tied LM head once)."""
    from pi_lnfree.model import GPT

    with torch.device("meta"):
        state = GPT(cfg).state_dict()
    shapes = {name: tuple(t.shape) for name, t in state.items()}
    if cfg.tie_embeddings:
        shapes.pop("lm_head.weight", None)
    return shapes


def _is_linear_weight(name: str) -> bool:
    return name.endswith(".weight") and any(k in name for k in ("c_attn", "c_proj", "c_fc", "lm_head"))


def share_weights(cfg: ModelConfig, state: dict[str, torch.Tensor] | None, device: str = "cpu") -> dict[str, Any]:
    """Secret-share the server's weights (src=1). The client passes `state=None` and shares
    zero placeholders of the public shapes. Linear weights are stored transposed (in, out)."""
    shared: dict[str, Any] = {}
    for name, shape in weight_shapes(cfg).items():
        if state is not None:
            tensor = state[name].detach().float().to(device)
        else:
            tensor = torch.zeros(shape, device=device)
        enc = crypten_compat.cryptensor(tensor, src=SERVER, device=device)
        shared[name] = enc.t() if _is_linear_weight(name) else enc
    return shared


def one_hot_rows(tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """(T,) token ids -> (1, T, V) float one-hot rows (the client's private input)."""
    return F.one_hot(tokens.long(), vocab_size).float().unsqueeze(0)


def share_tokens(tokens: torch.Tensor | None, seq_len: int, vocab_size: int, device: str = "cpu"):
    """Secret-share the client's one-hot rows (src=0); the server passes `tokens=None`."""
    if tokens is not None:
        rows = one_hot_rows(tokens, vocab_size).to(device)
    else:
        rows = torch.zeros(1, seq_len, vocab_size, device=device)
    return crypten_compat.cryptensor(rows, src=CLIENT, device=device)


def _split_heads(qkv, n_head: int):
    B, T, C3 = qkv.size()
    C = C3 // 3
    return tuple(qkv[:, :, i * C:(i + 1) * C].reshape(B, T, n_head, C // n_head).transpose(1, 2) for i in range(3))


def _merge_heads(y):
    B, H, T, hd = y.size()
    return y.transpose(1, 2).reshape(B, T, H * hd)


def _add(*xs):
    out = xs[0]
    for x in xs[1:]:
        out = out + x
    return out


class SecureGPT:
    """Secure counterpart of `GPT` for one sequence (batch 1) of shared one-hot rows."""

    def __init__(self, cfg: ModelConfig, weights: dict[str, Any], ops: SecureOps):
        self.cfg = cfg
        self.w = weights
        self.ops = ops
        self.acts = cfg.layer_activations()
        self.slope_index = cfg.slope_index()
        if cfg.position == "rotary":
            from pi_lnfree.model import RotaryCache

            cache = RotaryCache(cfg)  # public: a function of the config only
            self.cos, self.sin = cache.cos, cache.sin
        lm = self.w["wte.weight"].t() if cfg.tie_embeddings else self.w["lm_head.weight"]
        self.lm_head_t = lm

    def _get(self, name: str):
        return self.w.get(name)

    def _norm(self, x, prefix: str):
        return self.ops.layernorm(x, self._get(f"{prefix}.weight"), self._get(f"{prefix}.bias"), self.cfg.norm_eps)

    def forward(self, onehot) -> torch.Tensor | None:
        """Shared one-hot rows (1, T, V) -> logits (1, T, V) on the client, None on the server."""
        cfg, ops = self.cfg, self.ops
        T = onehot.size(1)
        pos = self.w["wpe.weight"][:T] if cfg.position == "learned" else None
        x = ops.embedding(onehot, self.w["wte.weight"], pos)
        for i in range(cfg.n_layer):
            x = self.block(i, x)
        if cfg.final_norm:
            x = self._norm(x, "ln_f")
        return ops.lm_head(x, self.lm_head_t, reveal_to=CLIENT)

    def block(self, i: int, x):
        """One transformer block: (pre-norm) attention and MLP, sequential or parallel residual."""
        p = f"blocks.{i}"
        norm = self.cfg.norm == "layernorm"
        h = self._norm(x, f"{p}.ln_1") if norm else x
        a = self.attention(i, h)
        if self.cfg.residual == "parallel":
            m = self.mlp(i, self._norm(x, f"{p}.ln_2") if norm else x)
            return self.ops.other(_add, x, a, m)
        x = self.ops.other(_add, x, a)
        m = self.mlp(i, self._norm(x, f"{p}.ln_2") if norm else x)
        return self.ops.other(_add, x, m)

    def attention(self, i: int, h):
        """Causal self-attention: QKV projection, (rotary), QK^T, softmax of all heads, AV, proj."""
        p, ops = f"blocks.{i}.attn", self.ops
        qkv = ops.linear(h, self.w[f"{p}.c_attn.weight"], self._get(f"{p}.c_attn.bias"))
        q, k, v = ops.other(_split_heads, qkv, self.cfg.n_head)
        if self.cfg.position == "rotary":
            q, k = ops.other(lambda a, b: (rotary(a, self.cos, self.sin), rotary(b, self.cos, self.sin)), q, k)
        probs = ops.softmax(ops.attention_scores(q, k))
        y = ops.other(_merge_heads, ops.attention_mix(probs, v))
        return ops.linear(y, self.w[f"{p}.c_proj.weight"], self._get(f"{p}.c_proj.bias"))

    def mlp(self, i: int, h):
        """FFN: c_fc, the layer's activation, c_proj."""
        p, ops = f"blocks.{i}.mlp", self.ops
        act = self.acts[i]
        if act == "learnable_leaky":
            slope = self.w["slopes"][self.slope_index[i]]
        else:
            slope = self.cfg.leaky_slope
        u = ops.linear(h, self.w[f"{p}.c_fc.weight"], self._get(f"{p}.c_fc.bias"))
        u = ops.activation(u, act, slope)
        return ops.linear(u, self.w[f"{p}.c_proj.weight"], self._get(f"{p}.c_proj.bias"))


__all__ = [
    "CLIENT",
    "SECURE_SUPPORT",
    "SERVER",
    "NotSupportedUnderMPC",
    "SecureGPT",
    "check_supported",
    "one_hot_rows",
    "share_tokens",
    "share_weights",
    "weight_shapes",
]
