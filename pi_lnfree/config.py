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

NORMS = ("layernorm", "none")
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


@dataclass
class ModelConfig:
    """Every switch of the decoder family. Defaults are GPT-2 small with LayerNorm and GELU."""

    vocab_size: int = 50257
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 128
    norm: str = "layernorm"  # the two per-block norms: "layernorm" or "none"
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
    # 48 heads (head dim 32) for the entropy-band / overload question, which 16 heads cannot answer.
    "cpu-wide": dict(n_layer=6, n_head=8, n_embd=256, block_size=128),
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
}


def parse_variant(variant: str, n_layer: int) -> dict[str, Any]:
    """Switches for a variant name.

    Besides the names in `VARIANTS`, hybrids are written as a per-layer activation list after
    `sm-` or `sm-ln-`, comma separated, e.g. `sm-hybrid:relu,relu,gelu,gelu` (LN-free) or
    `sm-ln-hybrid:relu,gelu` (with LayerNorm). A list shorter than the model is repeated
    block-wise: `sm-hybrid:relu,gelu` on 4 layers is relu,relu,gelu,gelu.
    """
    if variant in VARIANTS:
        return dict(VARIANTS[variant])
    for prefix, norm in (("sm-ln-hybrid:", "layernorm"), ("sm-hybrid:", "none")):
        if variant.startswith(prefix):
            acts = [a.strip() for a in variant[len(prefix):].split(",") if a.strip()]
            if not acts or n_layer % len(acts):
                raise UserError(
                    f"hybrid variant {variant!r}: {len(acts)} activations do not divide {n_layer} layers"
                )
            rep = n_layer // len(acts)
            return dict(norm=norm, activation=[a for a in acts for _ in range(rep)])
    names = ", ".join(VARIANTS)
    raise UserError(f"unknown variant {variant!r}; known: {names}, sm-hybrid:ACT,..., sm-ln-hybrid:ACT,...")


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


def variant_label(cfg: ModelConfig) -> str:
    """The paper's name for a configuration, e.g. SM+LN+G, SM+R, SM+LLR(global), SM+R/G (hybrid).

    Switches that differ from the paper's setup are named in parentheses: "SM+R (no final LN)",
    "SM+G (plain init)", "SM+R (no final LN, plain init)".
    """
    acts = cfg.layer_activations()
    labels = list(dict.fromkeys(_ACT_LABEL[a] for a in acts))
    act = "/".join(labels)
    if "learnable_leaky" in acts:
        act += f"({cfg.slope_mode})"
    name = "SM+" + ("LN+" if cfg.norm == "layernorm" else "") + act
    notes = []
    if not cfg.final_norm:
        notes.append("no final LN")
    if cfg.residual_init != "scaled":
        notes.append(f"{cfg.residual_init} init")
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
    prefix = "sm-ln-hybrid:" if cfg.norm == "layernorm" else "sm-hybrid:"
    return prefix + ",".join(acts)


__all__ = [
    "ModelConfig",
    "PRESETS",
    "VARIANTS",
    "make_config",
    "parse_variant",
    "variant_label",
    "variant_name",
]


# =============================================================================================
# Training recipes: TrainConfig and TOML recipe loading
#
# A recipe is a TOML file with the sections [data], [model], [train], [optim] and [schedule]
# (see training/*.toml). Every key has a default below; unknown keys are errors. `--set
# section.key=value` overrides a key; the value is parsed as a TOML value (true, 3e-4, [1, 2],
# "text"), and a value that is not valid TOML is taken as a bare string (model.variant=sm-r).
#
# data.dir: a relative path written in a recipe file is relative to that file's folder; a
# relative path given with --set is relative to the current directory. Both are stored absolute.

DATA_KEYS: dict[str, Any] = {
    "dir": "",  # the prepared data folder
    # When data.dir holds no prepared folder yet and a source is named, the trainer prepares it
    # first with these arguments (as `pi-lnfree data prepare` would); otherwise they are unused.
    "source": "",  # python-stdlib | dir:PATH | files:JSONL | hub:DATASET[,VALID]
    "vocab_size": 0,  # BPE size to train (0: use data.tokenizer)
    "tokenizer": "",  # a tokenizer.json (path or hub:REPO) instead of training one
    "seq_len": 128,
    "valid_fraction": 0.01,
}
TRAIN_KEYS: dict[str, Any] = {
    "max_steps": 0,  # optimizer steps; 0 -> from max_tokens, else from epochs
    "max_tokens": 0,  # token budget (trained positions); used when max_steps is 0
    "epochs": 1.0,  # passes over the train split; used when max_steps and max_tokens are 0
    "batch_size": 32,  # sequences per micro-batch (per process under DDP)
    "grad_accum": 1,  # micro-batches per optimizer step
    "eval_interval": 100,  # steps between evals (0: only at the end)
    "eval_batches": 8,  # validation batches per eval (0: the whole validation split)
    "eval_batch_size": 0,  # 0: train.batch_size
    "ckpt_interval": 100,  # steps between checkpoints (0: only at the end)
    "log_interval": 10,  # steps between train log lines
    "entropy_interval": 50,  # steps between headwise-entropy + slope lines (0: off)
    "entropy_batch_size": 8,  # fixed validation sequences the entropy is computed on
    "seed": 1337,
    "device": "auto",  # auto | cpu | cuda | cuda:N
    "precision": "auto",  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16
    "compile": False,  # torch.compile the training model
    "threads": 0,  # CPU threads for torch (0: leave torch's default)
    "max_nonfinite": 5,  # this many non-finite steps in a row stop the run
    "peak_flops": 0.0,  # accelerator peak FLOP/s for MFU (0: look up the GPU, none on CPU)
    "tensorboard": False,  # also write TensorBoard scalars to RUN_DIR/tb (needs tensorboard)
    "progress": True,  # rich progress bar on stderr
    "debug_nonfinite_steps": [],  # test hook: make the loss of these steps NaN
}
OPTIM_KEYS: dict[str, Any] = {
    "lr": 1e-3,
    "weight_decay": 0.1,  # not on biases, norm gains or slopes (model.param_groups)
    "beta1": 0.9,
    "beta2": 0.999,
    "eps": 1e-8,
    "grad_clip": 1.0,  # max global grad norm (0: no clipping)
    "fused": "auto",  # auto | true | false: fused AdamW kernel
}
SCHEDULE_KEYS: dict[str, Any] = {
    "decay": "linear",  # linear | cosine | constant (after warmup)
    "warmup_steps": 0,  # used when warmup_frac is 0
    "warmup_frac": 0.0,  # warmup as a fraction of max_steps
    "min_lr_frac": 0.0,  # final lr = lr * min_lr_frac
}
SECTIONS: dict[str, dict[str, Any]] = {
    "data": DATA_KEYS,
    "train": TRAIN_KEYS,
    "optim": OPTIM_KEYS,
    "schedule": SCHEDULE_KEYS,
}
MODEL_KEYS = ("preset", "variant")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DECAYS = ("linear", "cosine", "constant")
# Keys that may differ between a run and its --resume without changing the result.
RESUME_SAFE_KEYS = ("train.log_interval", "train.ckpt_interval", "train.progress", "train.tensorboard",
                    "train.max_nonfinite", "train.debug_nonfinite_steps")


@dataclass
class TrainConfig:
    """A resolved recipe: one flat mapping `section.key -> value` plus typed accessors.

    `model` holds `preset`, `variant` and any ModelConfig field; the other sections hold exactly
    the keys of `SECTIONS` (defaults filled in).
    """

    values: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def section(self, name: str) -> dict[str, Any]:
        """The keys of one section, without the prefix."""
        prefix = name + "."
        return {k[len(prefix):]: v for k, v in self.values.items() if k.startswith(prefix)}

    @property
    def model_overrides(self) -> dict[str, Any]:
        """ModelConfig fields set explicitly by the recipe (not preset/variant)."""
        return {k: v for k, v in self.section("model").items() if k not in MODEL_KEYS}

    def model_config(self, vocab_size: int, seq_len: int | None = None) -> ModelConfig:
        """Preset + variant + explicit model keys, with the data folder's vocabulary size.

        Unless the recipe sets model.block_size, the context is the data's sequence length
        (training reads seq_len - 1 positions; entropy logging reads whole sequences).
        """
        over = self.model_overrides
        if seq_len is not None:
            over.setdefault("block_size", seq_len)
            if over["block_size"] < seq_len - 1:
                raise UserError(
                    f"model.block_size {over['block_size']} is shorter than the data's sequences "
                    f"({seq_len} tokens need a context of at least {seq_len - 1})"
                )
        vocab = over.pop("vocab_size", vocab_size)
        if vocab < vocab_size:
            raise UserError(f"model.vocab_size {vocab} is smaller than the data's vocabulary ({vocab_size})")
        return make_config(self["model.preset"], self["model.variant"], vocab, **over)

    def to_nested(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for key, value in self.values.items():
            sec, name = key.split(".", 1)
            out.setdefault(sec, {})[name] = value
        return out

    def to_toml(self) -> str:
        """The resolved recipe as TOML text (reads back with `load_recipe`)."""
        lines = ["# resolved recipe written by pi-lnfree train"]
        for sec, keys in self.to_nested().items():
            lines.append(f"\n[{sec}]")
            lines.extend(f"{name} = {_toml_value(value)}" for name, value in keys.items())
        return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # also nan, inf and -inf, which TOML spells the same way
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise UserError(f"cannot write {type(value).__name__} value {value!r} to TOML")


def parse_set(item: str) -> tuple[str, Any]:
    """`section.key=value` -> (key, value); the value is read as TOML, else as a bare string."""
    import tomllib

    if "=" not in item:
        raise UserError(f"--set expects section.key=value, got {item!r}")
    key, raw = (s.strip() for s in item.split("=", 1))
    if "." not in key:
        raise UserError(f"--set key must be section.key (e.g. train.max_steps), got {key!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def _flatten(doc: dict[str, Any], where: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for sec, body in doc.items():
        if not isinstance(body, dict):
            raise UserError(f"{where}: top-level key {sec!r} must be a [section]")
        for name, value in body.items():
            if isinstance(value, dict):
                raise UserError(f"{where}: {sec}.{name} must be a value, not a table")
            flat[f"{sec}.{name}"] = value
    return flat


def _check_key(key: str, value: Any, where: str) -> None:
    sec, _, name = key.partition(".")
    if sec == "model":
        fields = {f.name for f in dataclasses.fields(ModelConfig)}
        if name not in fields and name not in MODEL_KEYS:
            raise UserError(f"{where}: unknown recipe key {key!r} (model keys: preset, variant or a ModelConfig field)")
        return
    if sec not in SECTIONS:
        raise UserError(f"{where}: unknown recipe section {sec!r} in {key!r}; sections: model, {', '.join(SECTIONS)}")
    known = SECTIONS[sec]
    if name not in known:
        raise UserError(f"{where}: unknown recipe key {key!r}; {sec} keys: {', '.join(known)}")
    default = known[name]
    ok = (
        isinstance(value, type(default))
        or (isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool))
        or (key == "optim.fused" and isinstance(value, bool))
    )
    if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, bool):
        ok = False
    if not ok:
        raise UserError(f"{where}: {key} must be {type(default).__name__}, got {value!r}")


def _validate(values: dict[str, Any]) -> None:
    def check(ok: bool, msg: str) -> None:
        if not ok:
            raise UserError(f"invalid recipe: {msg}")

    for key in ("train.batch_size", "train.grad_accum", "train.log_interval", "train.entropy_batch_size"):
        check(values[key] > 0, f"{key} must be positive, got {values[key]}")
    for key in ("train.max_steps", "train.max_tokens", "train.eval_interval", "train.ckpt_interval",
                "train.entropy_interval", "train.eval_batches", "train.eval_batch_size", "train.threads",
                "schedule.warmup_steps"):
        check(values[key] >= 0, f"{key} must be >= 0, got {values[key]}")
    check(values["train.epochs"] > 0, f"train.epochs must be positive, got {values['train.epochs']}")
    check(values["train.max_nonfinite"] >= 1, "train.max_nonfinite must be at least 1")
    check(values["train.precision"] in PRECISIONS, f"train.precision must be one of {PRECISIONS}")
    check(values["schedule.decay"] in DECAYS, f"schedule.decay must be one of {DECAYS}")
    check(0.0 <= values["schedule.warmup_frac"] < 1.0, "schedule.warmup_frac must be in [0, 1)")
    check(0.0 <= values["schedule.min_lr_frac"] <= 1.0, "schedule.min_lr_frac must be in [0, 1]")
    check(values["optim.lr"] > 0, "optim.lr must be positive")
    check(values["optim.grad_clip"] >= 0, "optim.grad_clip must be >= 0")
    check(values["optim.fused"] in ("auto", True, False), "optim.fused must be auto, true or false")
    check(values["train.device"] == "auto" or values["train.device"].split(":")[0] in ("cpu", "cuda"),
          "train.device must be auto, cpu, cuda or cuda:N")
    check(bool(values["data.dir"]), "data.dir is not set (a prepared data folder; --set data.dir=PATH)")
    check(all(isinstance(s, int) for s in values["train.debug_nonfinite_steps"]),
          "train.debug_nonfinite_steps must be a list of step numbers")
    check(values["model.preset"] in PRESETS, f"unknown preset {values['model.preset']!r}; known: {', '.join(PRESETS)}")


def resolve_recipe(doc: dict[str, Any], sets: list[str] | tuple[str, ...] = (), base_dir: str | None = None,
                   where: str = "recipe") -> TrainConfig:
    """Recipe document (parsed TOML) + `--set` items -> a validated TrainConfig.

    `base_dir` is the folder a relative data.dir in `doc` is resolved against (the recipe's
    folder); a relative data.dir from `sets` is resolved against the current directory.
    """
    import os

    flat = _flatten(doc, where)
    for key, value in flat.items():
        _check_key(key, value, where)
    paths = ("data.dir", "data.tokenizer")  # local paths: file-relative in a recipe, cwd-relative in --set

    def is_local(key: str, value: Any) -> bool:
        return key in paths and bool(value) and not str(value).startswith("hub:")

    for key in paths:
        if is_local(key, flat.get(key)) and base_dir is not None:
            flat[key] = os.path.join(base_dir, os.path.expanduser(flat[key]))
    for item in sets:
        key, value = parse_set(item)
        _check_key(key, value, "--set")
        flat[key] = os.path.expanduser(value) if is_local(key, value) else value
    values: dict[str, Any] = {"model.preset": "cpu-small", "model.variant": "sm-ln-g"}
    for sec, keys in SECTIONS.items():
        values.update({f"{sec}.{name}": (list(v) if isinstance(v, list) else v) for name, v in keys.items()})
    values.update(flat)
    for sec, keys in SECTIONS.items():  # a float key given as an integer (lr = 1) is stored as a float
        for name, default in keys.items():
            if isinstance(default, float):
                values[f"{sec}.{name}"] = float(values[f"{sec}.{name}"])
    for key in paths:
        if is_local(key, values[key]):
            values[key] = os.path.abspath(values[key])
    _validate(values)
    cfg = TrainConfig(values)
    cfg.model_config(vocab_size=1)  # check preset, variant and model keys now, before any data is read
    return cfg


def load_toml(path: str, what: str = "recipe") -> dict[str, Any]:
    """Read a TOML file; missing or malformed files are a UserError."""
    import tomllib

    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{what} is a folder, not a TOML file: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML: {e}") from None


def load_recipe(path: str, sets: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a recipe TOML file and apply `--set` overrides."""
    import os

    doc = load_toml(path)
    return resolve_recipe(doc, sets, base_dir=os.path.dirname(os.path.abspath(path)), where=str(path))


__all__ += ["TrainConfig", "load_recipe", "resolve_recipe", "parse_set", "load_toml", "SECTIONS"]
