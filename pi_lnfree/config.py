"""Model configuration: one dataclass with every architectural switch, presets and variants.

A *preset* fixes the shape (layers, heads, width, context); a *variant* sets the switches the
paper compares (norm, activation). The vocabulary size comes from the data folder's tokenizer.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from pi_lnfree.errors import UserError

NORMS = ("layernorm", "none", "dyt")
ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "leaky_relu", "learnable_leaky")
SLOPE_MODES = ("layer", "global")
RESIDUALS = ("sequential", "parallel")
POSITIONS = ("learned", "rotary")
# Initial std of the residual projections (the attention and MLP `c_proj` weights):
# "scaled" = init_std / sqrt(2 * n_layer), GPT-2's rule (Radford et al. 2019, section 2.3: "scale
# the weights of residual layers at initialization by a factor of 1/sqrt(N) where N is the number
# of residual layers"; nanoGPT's form), the authors' and this project's default;
# "plain" = init_std, like every other weight.
RESIDUAL_INITS = ("scaled", "plain")

# The allowed values of ModelConfig's enum-like string fields (for `activation`: of each entry).
# Recipes type-check these fields against them (pi_lnfree.recipe); `validate` checks them too.
MODEL_CHOICES: dict[str, tuple[str, ...]] = {
    "norm": NORMS, "activation": ACTIVATIONS, "slope_mode": SLOPE_MODES, "residual": RESIDUALS, "position": POSITIONS,
    "residual_init": RESIDUAL_INITS,
}


@dataclass
class ModelConfig:
    """Every switch of the decoder family. Defaults are GPT-2 small with LayerNorm and GELU."""

    vocab_size: int = 50257
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 128
    norm: str = "layernorm"  # the two per-block norms: "layernorm", "none" or "dyt" (Dynamic Tanh)
    final_norm: bool = True  # the norm before the LM head, a separate switch
    norm_eps: float = 1e-5
    # One activation name for all layers, or a list with one name per layer (hybrids).
    activation: str | list[str] = "gelu"
    leaky_slope: float = 0.01  # fixed slope of leaky_relu; initial slope of learnable_leaky
    slope_mode: str = "layer"  # learnable_leaky: one slope per layer, or one shared ("global")
    residual: str = "sequential"  # GPT-2: sequential; Pythia: parallel
    position: str = "learned"  # GPT-2: learned absolute; Pythia: rotary
    rotary_pct: float = 0.25  # fraction of each head's dims that are rotated
    rotary_base: float = 10000.0
    tie_embeddings: bool = True
    bias: bool = True  # biases of all linear layers
    ffn_mult: int = 4
    init_std: float = 0.02
    # norm = "dyt": initial alpha of gamma * tanh(alpha * x) + beta (Zhu et al. 2025) at every site;
    # None: matched to the initialization, 1 / stream_init_std (see `dyt_alpha0`).
    dyt_alpha: float | None = None
    # norm = "dyt": a learnable scalar multiplies the token embedding, initialized to sqrt(n_embd),
    # as in Zhu et al.'s LLaMA recipe (see `embed_scale_init`).
    dyt_embed_scale: bool = True
    # LayerNorm removal in progress: each LayerNorm carries a running std and a frozen flag
    # (`pi_lnfree.ln_removal`); set by the trainer while a removal schedule runs.
    ln_removal: bool = False
    head_bias: bool = False  # a bias on the LM head (a folded final norm's bias lands here)
    residual_init: str = "scaled"  # c_proj weights: "scaled" (GPT-2) or "plain" (see RESIDUAL_INITS)

    def __post_init__(self) -> None:
        self.validate()

    # -- derived -----------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def ffn_dim(self) -> int:
        return self.ffn_mult * self.n_embd

    @property
    def rotary_dim(self) -> int:
        """Rotated dims per head (even); 0 when positions are learned."""
        if self.position != "rotary":
            return 0
        return int(self.head_dim * self.rotary_pct) // 2 * 2

    def layer_activations(self) -> list[str]:
        """The activation of each layer (expands a single name)."""
        if isinstance(self.activation, str):
            return [self.activation] * self.n_layer
        return list(self.activation)

    def slope_index(self) -> list[int | None]:
        """For each layer, which entry of the model's `slopes` tensor it uses (None: no slope)."""
        out: list[int | None] = []
        n = 0
        for act in self.layer_activations():
            if act != "learnable_leaky":
                out.append(None)
            elif self.slope_mode == "global":
                out.append(0)
                n = 1
            else:
                out.append(n)
                n += 1
        return out

    @property
    def n_slopes(self) -> int:
        idx = [i for i in self.slope_index() if i is not None]
        return max(idx) + 1 if idx else 0

    # -- checks and (de)serialization ----------------------------------------------------------
    def validate(self) -> None:
        def check(ok: bool, msg: str) -> None:
            if not ok:
                raise UserError(f"invalid model config: {msg}")

        check(self.vocab_size > 0, f"vocab_size must be positive, got {self.vocab_size}")
        check(self.n_layer > 0 and self.n_head > 0 and self.block_size > 0, "sizes must be positive")
        check(self.n_embd % self.n_head == 0, f"n_embd {self.n_embd} not divisible by n_head {self.n_head}")
        check(self.norm in NORMS, f"norm must be one of {NORMS}, got {self.norm!r}")
        check(self.dyt_alpha is None or self.dyt_alpha > 0, f"dyt_alpha must be positive, got {self.dyt_alpha}")
        check(not self.ln_removal or self.norm == "layernorm", "ln_removal needs norm = \"layernorm\"")
        check(self.residual in RESIDUALS, f"residual must be one of {RESIDUALS}, got {self.residual!r}")
        check(self.position in POSITIONS, f"position must be one of {POSITIONS}, got {self.position!r}")
        check(self.slope_mode in SLOPE_MODES, f"slope_mode must be one of {SLOPE_MODES}, got {self.slope_mode!r}")
        check(self.residual_init in RESIDUAL_INITS,
              f"residual_init must be one of {RESIDUAL_INITS}, got {self.residual_init!r}")
        check(0.0 < self.rotary_pct <= 1.0, f"rotary_pct must be in (0, 1], got {self.rotary_pct}")
        if self.position == "rotary":
            check(self.rotary_dim >= 2, "rotary_pct too small: no head dim would rotate")
        acts = self.layer_activations()
        check(len(acts) == self.n_layer, f"activation list has {len(acts)} entries for {self.n_layer} layers")
        for act in acts:
            check(act in ACTIVATIONS, f"activation must be one of {ACTIVATIONS}, got {act!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UserError(f"unknown model config keys: {', '.join(unknown)}")
        return cls(**d)

    def replace(self, **changes: Any) -> ModelConfig:
        return ModelConfig.from_dict({**self.to_dict(), **changes})

    @property
    def embed_scale_init(self) -> float | None:
        """Initial value of the learnable scalar on the token embedding: sqrt(n_embd) in a DyT
        model with `dyt_embed_scale` (Zhu et al. 2025, their LLaMA code's embedding scale), else
        None (no such parameter). Under GPT-2's init_std 0.02 the stream would otherwise start at
        std 0.028, far below the unit scale DyT's tanh is built around. Learned position embeddings
        are added after it, unscaled: scaled as well, they stalled SM+DyT+R at the unigram loss at
        cpu-small (benchmarks/results/beyond_matrix.md)."""
        return math.sqrt(self.n_embd) if self.norm == "dyt" and self.dyt_embed_scale else None

    @property
    def stream_init_std(self) -> float:
        """Std of the residual stream at initialization: the token embedding, N(0, init_std^2)
        times `embed_scale_init` when there is one, plus a learned position embedding,
        N(0, init_std^2) (none with rotary positions). This is the std the first norm site sees at
        step 0; each block's output widens the stream a little (tests/test_dyt.py)."""
        token = self.init_std * (self.embed_scale_init or 1.0)
        return math.hypot(token, self.init_std) if self.position == "learned" else token

    @property
    def dyt_alpha0(self) -> float:
        """Initial alpha of every DyT site: `dyt_alpha` when set, else 1 / `stream_init_std`, so
        that alpha * x starts with unit std, the scale a LayerNorm would give (4.4 at cpu-small's
        d=128, 1.8 at GPT-2 small's d=768, both with the embedding scale). Zhu et al. (2025) find
        the learned alpha tracks 1 / std of its input; their default 0.5 presumes inputs of unit
        scale. At GPT-2's init without the embedding scale, 0.5 makes alpha * x about 0.014: the
        stream then grows until every site saturates and the model stalls at the unigram loss
        (benchmarks/results/beyond_matrix.md)."""
        return self.dyt_alpha if self.dyt_alpha is not None else 1.0 / self.stream_init_std

    @property
    def residual_init_std(self) -> float:
        """Initial std of the residual projections (`c_proj` weights) under `residual_init`."""
        if self.residual_init == "plain":
            return self.init_std
        return self.init_std / math.sqrt(2 * self.n_layer)


# Shapes. `vocab_size` is filled in from the tokenizer of the data folder.
PRESETS: dict[str, dict[str, Any]] = {
    "gpt2-small": dict(n_layer=12, n_head=12, n_embd=768, block_size=128),
    "pythia-70m": dict(
        n_layer=6, n_head=8, n_embd=512, block_size=128, position="rotary", rotary_pct=0.25,
        residual="parallel", tie_embeddings=False,
    ),
    "cpu-small": dict(n_layer=4, n_head=4, n_embd=128, block_size=128),
    # 48 heads for the entropy-band / overload question, which 16 heads cannot answer; cpu-small's
    # width (head dim 16) keeps a 2,000-step run near cpu-small's wall time (1.3x its FLOPs/token).
    "cpu-heads": dict(n_layer=6, n_head=8, n_embd=128, block_size=128),
    "tiny": dict(n_layer=2, n_head=4, n_embd=64, block_size=128),
}

# The paper's configurations, as switches on top of a preset.
VARIANTS: dict[str, dict[str, Any]] = {
    "sm-ln-g": dict(norm="layernorm", activation="gelu"),
    "sm-ln-r": dict(norm="layernorm", activation="relu"),
    "sm-g": dict(norm="none", activation="gelu"),
    "sm-r": dict(norm="none", activation="relu"),
    "sm-lrelu-layer": dict(norm="none", activation="learnable_leaky", slope_mode="layer"),
    "sm-lrelu-global": dict(norm="none", activation="learnable_leaky", slope_mode="global"),
    "sm-dyt-g": dict(norm="dyt", activation="gelu"),
    "sm-dyt-r": dict(norm="dyt", activation="relu"),
}
# Hybrid prefixes (per-layer activation lists) and the per-block norm each one implies.
HYBRID_PREFIXES = (("sm-ln-hybrid:", "layernorm"), ("sm-dyt-hybrid:", "dyt"), ("sm-hybrid:", "none"))


def parse_variant(variant: str, n_layer: int) -> dict[str, Any]:
    """Switches for a variant name.

    Besides the names in `VARIANTS`, hybrids are written as a per-layer activation list after
    `sm-`, `sm-ln-` or `sm-dyt-`, comma separated, e.g. `sm-hybrid:relu,relu,gelu,gelu` (LN-free),
    `sm-ln-hybrid:relu,gelu` (with LayerNorm) or `sm-dyt-hybrid:relu,gelu` (Dynamic Tanh). A list shorter than the model is repeated
    block-wise: `sm-hybrid:relu,gelu` on 4 layers is relu,relu,gelu,gelu.
    """
    if variant in VARIANTS:
        return dict(VARIANTS[variant])
    for prefix, norm in HYBRID_PREFIXES:
        if variant.startswith(prefix):
            acts = [a.strip() for a in variant[len(prefix):].split(",") if a.strip()]
            if not acts or n_layer % len(acts):
                raise UserError(
                    f"hybrid variant {variant!r}: {len(acts)} activations do not divide {n_layer} layers"
                )
            rep = n_layer // len(acts)
            return dict(norm=norm, activation=[a for a in acts for _ in range(rep)])
    names = ", ".join(VARIANTS)
    raise UserError(f"unknown variant {variant!r}; known: {names}, sm-hybrid:ACT,..., sm-ln-hybrid:ACT,..., "
                    "sm-dyt-hybrid:ACT,...")


def make_config(preset: str, variant: str = "sm-ln-g", vocab_size: int = 50257, **overrides: Any) -> ModelConfig:
    """Preset shape + variant switches + explicit overrides -> a validated ModelConfig."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    base = dict(PRESETS[preset])
    n_layer = overrides.get("n_layer", base["n_layer"])
    return ModelConfig.from_dict({**base, **parse_variant(variant, n_layer), "vocab_size": vocab_size, **overrides})


_ACT_LABEL = {
    "gelu": "G",
    "gelu_tanh": "G",
    "relu": "R",
    "leaky_relu": "LR",
    "learnable_leaky": "LLR",
}


_DEFAULT_LEAKY_SLOPE = ModelConfig.leaky_slope


def variant_label(cfg: ModelConfig) -> str:
    """The paper's name for a configuration, e.g. SM+LN+G, SM+R, SM+LLR(global), SM+R/G (hybrid);
    SM+DyT+R for Dynamic Tanh in place of the norms.

    Switches that differ from the paper's setup are named in parentheses: "SM+R (no final LN)",
    "SM+G (plain init)", "SM+R (no final LN, plain init)", "SM+LLR(layer) (initial slope 0.2)",
    "SM+DyT+R (alpha0 0.5, no embedding scale)" (a DyT alpha0 set by hand rather than matched to the
    initialization; DyT without the scalar after the embedding).
    """
    acts = cfg.layer_activations()
    labels = list(dict.fromkeys(_ACT_LABEL[a] for a in acts))
    act = "/".join(labels)
    if "learnable_leaky" in acts:
        act += f"({cfg.slope_mode})"
    name = "SM+" + {"layernorm": "LN+", "dyt": "DyT+", "none": ""}[cfg.norm] + act
    notes = []
    if not cfg.final_norm:
        notes.append("no final DyT" if cfg.norm == "dyt" else "no final LN")
    if cfg.residual_init != "scaled":
        notes.append(f"{cfg.residual_init} init")
    if "learnable_leaky" in acts and cfg.leaky_slope != _DEFAULT_LEAKY_SLOPE:
        notes.append(f"initial slope {cfg.leaky_slope:g}")
    if cfg.norm == "dyt" and cfg.dyt_alpha is not None:
        notes.append(f"alpha0 {cfg.dyt_alpha:g}")
    if cfg.norm == "dyt" and not cfg.dyt_embed_scale:
        notes.append("no embedding scale")
    if cfg.ln_removal:
        notes.append("LN removal in progress")
    return name + (f" ({', '.join(notes)})" if notes else "")


def variant_name(cfg: ModelConfig) -> str:
    """The CLI/recipe name of a configuration's switches (inverse of `parse_variant`)."""
    acts = cfg.layer_activations()
    if len(set(acts)) == 1:
        act = "gelu" if acts[0] == "gelu_tanh" else acts[0]  # both GELU forms are the paper's "G"
        for name, sw in VARIANTS.items():
            same_mode = sw.get("slope_mode", cfg.slope_mode) == cfg.slope_mode
            if sw["norm"] == cfg.norm and sw["activation"] == act and same_mode:
                return name
    prefix = next(p for p, norm in HYBRID_PREFIXES if norm == cfg.norm)
    return prefix + ",".join(acts)


__all__ = [
    "MODEL_CHOICES",
    "ModelConfig",
    "PRESETS",
    "VARIANTS",
    "make_config",
    "parse_variant",
    "variant_label",
    "variant_name",
]
