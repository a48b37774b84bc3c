"""The plaintext decoder family: GPT-2 and Pythia shapes with every switch the paper needs.

One `GPT` class covers LayerNorm, Dynamic Tanh or no per-block norm (the final norm is its own switch),
GELU / tanh-GELU / ReLU / leaky ReLU / learnable leaky ReLU (one slope per layer or one shared
slope) or a per-layer mix, sequential (GPT-2) or parallel (Pythia) residual, learned or partial
rotary positions, tied or untied embeddings. `pi_lnfree/secure/structure.py` mirrors it block for block for private inference.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from pi_lnfree.config import ModelConfig
from pi_lnfree.losses import linear_cross_entropy


class FreezableLayerNorm(nn.LayerNorm):
    """LayerNorm over the last dim that can switch to a frozen scale.

    Buffers (saved in checkpoints): `std_ema`, the running average of the per-token std
    sqrt(var + eps) seen in training forward passes (0 before the first), and `frozen`. While not
    frozen it is exactly `nn.LayerNorm`, and each forward with grad enabled in train mode folds
    the batch's mean per-token std into `std_ema` with decay `ema_decay` (the first one sets it);
    once frozen it computes (x - mean(x)) / std_ema * weight + bias. Input and output (..., d).
    """

    def __init__(self, d: int, eps: float = 1e-5, ema_decay: float = 0.99):
        super().__init__(d, eps=eps)
        self.ema_decay = ema_decay
        self.register_buffer("std_ema", torch.zeros(()))
        self.register_buffer("frozen", torch.zeros((), dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(self.frozen):
            xc = x - x.mean(-1, keepdim=True)
            return xc / self.std_ema.to(x.dtype) * self.weight + self.bias
        if self.training and torch.is_grad_enabled():
            with torch.no_grad():
                std = (x.float().var(-1, unbiased=False) + self.eps).sqrt().mean()
                ema = self.std_ema * self.ema_decay + std * (1.0 - self.ema_decay)
                self.std_ema.copy_(torch.where(self.std_ema == 0, std, ema))
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def freeze(self) -> None:
        """Switch to the frozen scale (RuntimeError when no std was ever collected)."""
        if float(self.std_ema) <= 0.0:
            raise RuntimeError("cannot freeze a LayerNorm that has seen no training batch")
        self.frozen.fill_(True)


class DyT(nn.Module):
    """Dynamic Tanh (Zhu, Chen, He, LeCun, Liu, "Transformers without Normalization", CVPR 2025):
    gamma * tanh(alpha * x) + beta over the last dim, with one learnable scalar alpha (shape (1,),
    initial value `alpha`) and per-channel gamma (`weight`, ones) and beta (`bias`, zeros).
    Input and output (..., d)."""

    def __init__(self, d: int, alpha: float):
        super().__init__()
        self.alpha = nn.Parameter(torch.full((1,), float(alpha)))
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.alpha * x) * self.weight + self.bias


def norm_kind(cfg: ModelConfig, final: bool) -> str:
    """Which module a norm site holds: "layernorm", "dyt" or "none". The per-block sites follow
    `cfg.norm`; the final site follows `cfg.final_norm`: Dynamic Tanh in a DyT model, else
    LayerNorm (the authors keep the final LayerNorm of their LN-free models)."""
    if not final:
        return cfg.norm
    if not cfg.final_norm:
        return "none"
    return "dyt" if cfg.norm == "dyt" else "layernorm"


def make_norm(cfg: ModelConfig, kind: str) -> nn.Module:
    """The module of one norm site: LayerNorm (with a frozen-scale switch while a LayerNorm
    removal runs), Dynamic Tanh, or identity (the LN-free variants)."""
    if kind == "dyt":
        return DyT(cfg.n_embd, cfg.dyt_alpha0)
    if kind == "layernorm":
        if cfg.ln_removal:
            return FreezableLayerNorm(cfg.n_embd, eps=cfg.norm_eps)
        return nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)
    return nn.Identity()


def activate(x: torch.Tensor, name: str, slope: torch.Tensor | float | None) -> torch.Tensor:
    """Apply one FFN activation by name; `slope` is the negative slope of the leaky kinds."""
    if name == "gelu":
        return F.gelu(x)
    if name == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu(x)
    if name in ("leaky_relu", "learnable_leaky"):
        # x for x >= 0, slope * x otherwise; written out so a tensor slope gets its gradient.
        return torch.where(x >= 0, x, x * slope)
    raise ValueError(f"unknown activation {name!r}")


def rotary_cos_sin(dim: int, length: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(length, dim) float32 cos/sin tables of rotary positions 0..length-1 on `dim` dims (GPT-NeoX
    convention: frequencies base^(-2i/dim), repeated for the two halves of the rotated dims),
    computed in float64."""
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    freqs = torch.outer(torch.arange(length, dtype=torch.float64), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().float(), emb.sin().float()


class RotaryCache(nn.Module):
    """cos/sin tables for rotary positions on the first `rotary_dim` dims of each head (GPT-NeoX
    convention: the rotated dims are split in halves, not interleaved)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cos, sin = rotary_cos_sin(cfg.rotary_dim, cfg.block_size, cfg.rotary_base)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate (B, H, T, hd) queries or keys."""
        T, dim = x.size(-2), self.cos.size(-1)
        cos, sin = self.cos[:T].to(x.dtype), self.sin[:T].to(x.dtype)
        rot, keep = x[..., :dim], x[..., dim:]
        half = dim // 2
        rotated_half = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
        return torch.cat((rot * cos + rotated_half * sin, keep), dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)

    def forward(
        self, x: torch.Tensor, rotary: RotaryCache | None, return_attention: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if rotary is not None:
            q, k = rotary(q), rotary(k)
        if return_attention:
            # Explicit softmax probabilities, for entropy diagnostics; same math as the fast path.
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
            mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            att = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
            y = att @ v
        else:
            att = None
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y), att


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, activation: str):
        super().__init__()
        self.activation = activation
        self.fixed_slope = cfg.leaky_slope
        self.c_fc = nn.Linear(cfg.n_embd, cfg.ffn_dim, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.ffn_dim, cfg.n_embd, bias=cfg.bias)

    def forward(self, x: torch.Tensor, slope: torch.Tensor | None) -> torch.Tensor:
        s = slope if self.activation == "learnable_leaky" else self.fixed_slope
        return self.c_proj(activate(self.c_fc(x), self.activation, s))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.parallel = cfg.residual == "parallel"
        self.slope_index = cfg.slope_index()[layer]
        self.ln_1 = make_norm(cfg, norm_kind(cfg, final=False))
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = make_norm(cfg, norm_kind(cfg, final=False))
        self.mlp = MLP(cfg, cfg.layer_activations()[layer])

    def forward(
        self, x: torch.Tensor, rotary: RotaryCache | None, slopes: torch.Tensor | None, return_attention: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        slope = slopes[self.slope_index] if self.slope_index is not None else None
        a, att = self.attn(self.ln_1(x), rotary, return_attention)
        if self.parallel:
            return x + a + self.mlp(self.ln_2(x), slope), att
        x = x + a
        return x + self.mlp(self.ln_2(x), slope), att


class GPT(nn.Module):
    """Decoder-only transformer. `forward(idx, targets=None, return_attention=False)`."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = cfg = config
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.position == "learned" else None
        self.rotary = RotaryCache(cfg) if cfg.position == "rotary" else None
        # DyT models: a learnable scalar on the token embedding (ModelConfig.embed_scale_init).
        scale = cfg.embed_scale_init
        self.embed_scale = nn.Parameter(torch.full((1,), scale)) if scale is not None else None
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = make_norm(cfg, norm_kind(cfg, final=True))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=cfg.head_bias)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        # Learnable leaky-ReLU slopes: one entry per layer ("layer") or a single shared one
        # ("global"); each block reads its entry through cfg.slope_index().
        self.slopes = nn.Parameter(torch.full((cfg.n_slopes,), cfg.leaky_slope)) if cfg.n_slopes else None
        self.apply(self._init_weights)
        # The residual projections (attention and MLP c_proj) get their own std: GPT-2's
        # 1/sqrt(2 * n_layer) scaling by default, or init_std with model.residual_init = "plain".
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=cfg.residual_init_std)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, return_attention: bool = False,
        with_logits: bool = True,
    ):
        """Logits (B, T, V); plus the mean cross-entropy when `targets` are given; plus the list of
        per-layer attention probabilities (B, H, T, T) when `return_attention` is true.

        Returns `logits`, `(logits, loss)`, `(logits, attentions)` or `(logits, loss, attentions)`.
        With `with_logits=False` (training) the logits slot is None: on CPU the loss is then
        computed chunk by chunk without ever holding the (B, T, V) logits (`losses.py`).
        """
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds the model's context {self.config.block_size}")
        x = self.wte(idx)
        if self.embed_scale is not None:
            x = x * self.embed_scale
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(T, device=idx.device))
        attentions = []
        for block in self.blocks:
            x, att = block(x, self.rotary, self.slopes, return_attention)
            if return_attention:
                attentions.append(att)
        x = self.ln_f(x)
        if targets is not None and not with_logits and self.lm_head.bias is None and self._chunked_loss_applies(x):
            loss = linear_cross_entropy(x.reshape(-1, x.size(-1)), self.lm_head.weight, targets.reshape(-1))
            out: tuple = (None, loss)
        else:
            logits = self.lm_head(x)
            out = (logits if with_logits else None,)
            if targets is not None:
                out += (F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1)),)
        if return_attention:
            out += (attentions,)
        return out[0] if len(out) == 1 else out

    @staticmethod
    def _chunked_loss_applies(x: torch.Tensor) -> bool:
        # CPU fp32 eager only: on CUDA the fused kernels (and torch.compile) already handle the
        # logits well, and autocast or tracing would change what the hand-written pass computes.
        return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
                and not torch.compiler.is_compiling())

    def num_parameters(self) -> int:
        """Parameter count with tied weights counted once."""
        return sum(p.numel() for p in self.parameters())

    def slope_values(self) -> list[float]:
        """Current learnable slopes (empty when the model has none)."""
        return [] if self.slopes is None else self.slopes.detach().float().tolist()


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay matrices and embeddings; never biases, norm gains, learnable slopes or
    Dynamic Tanh's alpha, gamma and beta (every parameter with fewer than 2 dims)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
