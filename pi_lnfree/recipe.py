"""Training recipes: one typed dataclass per section, TOML loading, `--set` overrides.

A recipe is a TOML file with the sections [data], [model], [train], [optim] and [schedule]
(see training/*.toml). Each section is a dataclass below, and its annotations are the schema:
every key is type-checked from its declaration by pydantic in strict mode, so nothing is coerced
("2" and 2.0 are not ints, 1 is not a bool; an int is accepted for a float and stored as one),
lists element by element, enum-like strings against their allowed values, and ranges where they
are declared. A wrong value is one line that names the key, the expected and the given type
(`--set: model.n_layer must be int, got str '2'`), raised before anything is written. Unknown
sections and keys are errors. [model] holds `preset`, `variant` and any ModelConfig field; its
dataclass is derived from ModelConfig, so a new model field is typed without being listed here.

`--set section.key=value` overrides a key; the value is read as a TOML value (true, 3e-4,
[1, 2], "text"), and text that is not valid TOML is taken as a bare string (model.variant=sm-r).

Local paths (data.dir, data.tokenizer, train.distill_from, train.init_from): relative ones, in a
recipe file as in `--set`, are relative to the current directory, like `--out` (a shipped recipe
must not put its data inside the installed package); they are stored absolute.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Sequence
from dataclasses import field
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin

import pydantic
import tomli_w
from pydantic import AfterValidator, ConfigDict, Field
from pydantic.dataclasses import dataclass

from pi_lnfree.config import MODEL_CHOICES, PRESETS, ModelConfig, make_config
from pi_lnfree.errors import UserError
from pi_lnfree.schedule import DECAYS

# No coercion: a value must already have the declared type (an int passes for a float).
STRICT = ConfigDict(strict=True, extra="forbid")

PosInt = Annotated[int, Field(gt=0)]
Count = Annotated[int, Field(ge=0)]  # 0 means off, auto or derived (see the key's comment)
Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


def _device(value: str) -> str:
    if value != "auto" and value.split(":")[0] not in ("cpu", "cuda"):
        raise ValueError("auto, cpu, cuda or cuda:N")
    return value


Device = Annotated[str, AfterValidator(_device)]


@dataclass(config=STRICT)
class DataSection:
    """[data]: the prepared data folder, and how to prepare it when it holds none yet."""

    dir: str = ""  # the prepared data folder (required)
    # When data.dir holds no prepared folder yet and a source is named, the trainer prepares it
    # first with these arguments (as `pi-lnfree data prepare` would); otherwise they are unused.
    source: str = ""  # python-stdlib | dir:PATH | files:JSONL | hub:DATASET[,VALID]
    vocab_size: Count = 0  # BPE size to train (0: use data.tokenizer)
    tokenizer: str = ""  # a tokenizer.json (path or hub:REPO) instead of training one
    seq_len: PosInt = 128
    valid_fraction: float = 0.01
    limit_mb: Annotated[float, Field(ge=0)] = 0.0  # stop reading the source after this many MB of text (0: all)
    text_column: str = "content"  # the text field of hub:/files: records


@dataclass(config=STRICT)
class TrainSection:
    """[train]: length of the run, batches, intervals, device and precision."""

    max_steps: Count = 0  # optimizer steps; 0 -> from max_tokens, else from epochs
    max_tokens: Count = 0  # token budget (trained positions); used when max_steps is 0
    epochs: Annotated[float, Field(gt=0)] = 1.0  # passes over the train split; used when both are 0
    batch_size: PosInt = 32  # sequences per micro-batch (per process under DDP)
    grad_accum: PosInt = 1  # micro-batches per optimizer step
    eval_interval: Count = 100  # steps between evals (0: only at the end)
    eval_batches: Count = 8  # validation batches per eval (0: the whole validation split)
    eval_batch_size: Count = 0  # 0: train.batch_size
    ckpt_interval: Count = 100  # steps between checkpoints (0: only at the end)
    log_interval: PosInt = 10  # steps between train log lines
    entropy_interval: Count = 50  # steps between headwise-entropy + slope lines (0: off)
    entropy_batch_size: PosInt = 8  # fixed validation sequences the entropy is computed on
    seed: int = 1337
    device: Device = "auto"  # auto | cpu | cuda | cuda:N
    precision: Precision = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16
    compile: bool = False  # torch.compile the training model
    threads: Count = 0  # CPU threads for torch (0: leave torch's default)
    max_nonfinite: PosInt = 5  # this many non-finite steps in a row stop the run
    peak_flops: Annotated[float, Field(ge=0)] = 0.0  # accelerator peak FLOP/s for MFU (0: look up the GPU)
    tensorboard: bool = False  # also write TensorBoard scalars to RUN_DIR/tb (needs tensorboard)
    progress: bool = True  # rich progress bar on stderr
    debug_nonfinite_steps: list[int] = field(default_factory=list)  # test hook: these steps' loss is NaN
    # Entropy regularization (Jha & Reagen 2025; pi_lnfree/entropy_reg.py); off when 0.
    entropy_reg: Annotated[float, Field(ge=0)] = 0.0  # coefficient lambda of the penalty added to the loss
    entropy_reg_tolerance: Annotated[float, Field(ge=0)] = 0.2  # no penalty within this x log(T) of a threshold
    entropy_reg_threshold: float = 0.5  # initial learnable threshold of every head, a fraction of log(T)
    entropy_reg_per: Literal["query", "head"] = "query"  # query: each query's entropy (their code) | head: eq. 8
    # Distillation from a frozen teacher (Hinton et al. 2015; pi_lnfree/distill.py).
    distill_from: str = ""  # teacher checkpoint or run dir ("": off)
    distill_temperature: Annotated[float, Field(gt=0)] = 2.0
    distill_weight: Annotated[float, Field(ge=0, le=1)] = 0.5  # w in (1 - w) * CE + w * T^2 * KL
    init_from: str = ""  # start from this checkpoint's weights (shapes must match the model)
    # LayerNorm removal by fine-tuning (pi_lnfree/ln_removal.py): the step (from 1) from which the
    # first MLP norm / first attention norm / the final norm runs with a frozen scale; all 0: off.
    ln_remove_mlp: Count = 0
    ln_remove_attn: Count = 0
    ln_remove_final: Count = 0
    ln_remove_gap: Count = 0  # steps between successive layers within a stage
    ln_remove_ema: Annotated[float, Field(ge=0, lt=1)] = 0.99  # decay of the running average of the std


@dataclass(config=STRICT)
class OptimSection:
    """[optim]: AdamW and gradient clipping."""

    lr: Annotated[float, Field(gt=0)] = 1e-3
    weight_decay: float = 0.1  # not on biases, norm gains or slopes (model.param_groups)
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    grad_clip: Annotated[float, Field(ge=0)] = 1.0  # max global grad norm (0: no clipping)
    fused: Literal["auto"] | bool = "auto"  # fused AdamW kernel


@dataclass(config=STRICT)
class ScheduleSection:
    """[schedule]: warmup, then decay (pi_lnfree.schedule)."""

    decay: Literal[DECAYS] = "linear"  # linear | cosine | constant (after warmup)
    warmup_steps: Count = 0  # used when warmup_frac is 0
    warmup_frac: Annotated[float, Field(ge=0, lt=1)] = 0.0  # warmup as a fraction of max_steps
    min_lr_frac: Annotated[float, Field(ge=0, le=1)] = 0.0  # final lr = lr * min_lr_frac


def _narrow(tp: Any, choices: tuple[str, ...]) -> Any:
    """`tp` with every `str` inside it (a union member, a list element) narrowed to `choices`."""
    if tp is str:
        return Literal[choices]
    origin = get_origin(tp)
    if origin is list:
        return list[_narrow(get_args(tp)[0], choices)]
    if origin in (Union, types.UnionType):
        return Union[tuple(_narrow(a, choices) for a in get_args(tp))]
    return tp


def _model_section() -> type:
    """[model]: `preset`, `variant`, and every ModelConfig field with its declared type (None:
    not set, the preset and variant decide); enum-like fields narrowed to MODEL_CHOICES."""
    hints = typing.get_type_hints(ModelConfig)
    fields: list[tuple[str, Any, Any]] = [("preset", Literal[tuple(PRESETS)], "cpu-small"), ("variant", str, "sm-ln-g")]
    for f in dataclasses.fields(ModelConfig):
        tp = _narrow(hints[f.name], MODEL_CHOICES[f.name]) if f.name in MODEL_CHOICES else hints[f.name]
        fields.append((f.name, Optional[tp], None))
    cls = dataclasses.make_dataclass("ModelSection", fields)
    cls.__module__ = __name__
    cls.__doc__ = _model_section.__doc__
    return dataclass(cls, config=STRICT)


ModelSection = _model_section()
MODEL_KEYS = ("preset", "variant")  # the [model] keys that are not ModelConfig fields

SECTIONS: dict[str, type] = {
    "data": DataSection,
    "model": ModelSection,
    "train": TrainSection,
    "optim": OptimSection,
    "schedule": ScheduleSection,
}
# keys that are local paths unless they start with hub:
PATH_KEYS = ("data.dir", "data.tokenizer", "train.distill_from", "train.init_from")
# Keys that may differ between a run and its --resume without changing the result.
RESUME_SAFE_KEYS = ("train.log_interval", "train.ckpt_interval", "train.progress", "train.tensorboard",
                    "train.max_nonfinite", "train.debug_nonfinite_steps")


def key_default(key: str) -> Any:
    """The schema's default of a flat `section.key` (None for [model] keys, whose defaults come
    from the preset, and for keys without one)."""
    sec, _, name = key.partition(".")
    cls = SECTIONS.get(sec)
    if cls is None or sec == "model":
        return None
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    return None


def resume_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The flat keys whose value differs between a checkpoint's recipe (`saved`) and the recipe of
    its `--resume` (`current`), sorted. `RESUME_SAFE_KEYS` never differ. A key missing from
    `saved` was added to the tool after the run started; every such key defaults to the earlier
    behaviour, so it differs only when `current` sets it to something else than its default."""
    def differs(k: str) -> bool:
        if k in RESUME_SAFE_KEYS:
            return False
        if k not in saved:
            return current.get(k) != key_default(k)
        return saved.get(k) != current.get(k)

    return sorted(k for k in set(saved) | set(current) if differs(k))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A resolved recipe: one validated dataclass per section.

    `cfg["section.key"]` and `cfg.values` give the flat view (`section.key -> value`) that a
    checkpoint stores and `--resume` compares; [model] keys the recipe does not set are left out.
    """

    data: DataSection
    model: ModelSection
    train: TrainSection
    optim: OptimSection
    schedule: ScheduleSection

    def __getitem__(self, key: str) -> Any:
        sec, _, name = key.partition(".")
        value = getattr(getattr(self, sec, None), name, None)
        if value is None:
            raise KeyError(key)
        return value

    def section(self, name: str) -> dict[str, Any]:
        """The keys of one section, without the prefix (unset [model] keys left out)."""
        return {k: v for k, v in dataclasses.asdict(getattr(self, name)).items() if v is not None}

    @property
    def values(self) -> dict[str, Any]:
        return {f"{sec}.{k}": v for sec in SECTIONS for k, v in self.section(sec).items()}

    @classmethod
    def from_values(cls, values: dict[str, Any], where: str) -> TrainConfig:
        """A flat `section.key -> value` mapping (as `values` gives) -> a validated TrainConfig."""
        return _resolve([(where, _nested(values), None)])

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
        return make_config(self.model.preset, self.model.variant, vocab, **over)

    def to_nested(self) -> dict[str, dict[str, Any]]:
        return {sec: self.section(sec) for sec in SECTIONS}

    def to_toml(self) -> str:
        """The resolved recipe as TOML text (reads back with `load_recipe` to equal `values`)."""
        return "# resolved recipe written by pi-lnfree train\n\n" + tomli_w.dumps(self.to_nested())


# ---------------------------------------------------------------------------------------------
# type errors as one line


def _describe(tp: Any) -> str:
    """A declared type in words: int, a list of int, one of 'a', 'b', 'auto' or bool."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        return _describe(args[0])
    if origin is Literal:
        return repr(args[0]) if len(args) == 1 else "one of " + ", ".join(map(repr, args))
    if origin is list:
        return f"a list of {_describe(args[0])}"
    if origin in (Union, types.UnionType):
        parts = [a for a in args if a is not type(None)]
        if len(parts) == 2 and get_origin(parts[1]) is list and get_args(parts[1])[0] == parts[0]:
            return f"{_describe(parts[0])}, or a list of them"
        return " or ".join(_describe(a) for a in parts)
    return getattr(tp, "__name__", str(tp))


def _given(value: Any, errors: list[dict[str, Any]]) -> str:
    """The given value with its type; for a list, the first element that failed."""
    if isinstance(value, list):
        index = next((i for e in errors for i in e["loc"][1:] if isinstance(i, int)), None)
        if index is not None and index < len(value):
            return f"list with {type(value[index]).__name__} {value[index]!r} at index {index}"
    return f"{type(value).__name__} {value!r}"


_BOUNDS = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="),
           "less_than": ("lt", "<"), "less_than_equal": ("le", "<=")}


def _problem(key: str, declared: Any, value: Any, errors: list[dict[str, Any]]) -> str:
    """One key's validation errors (pydantic's error dicts) -> `KEY must be EXPECTED, got GIVEN`."""
    first = errors[0]
    if first["type"] in _BOUNDS:  # the type was right, the value is out of its declared range
        name, op = _BOUNDS[first["type"]]
        return f"{key} must be {_describe(declared)} {op} {first['ctx'][name]}, got {_given(value, errors)}"
    if first["type"] == "value_error":
        return f"{key} must be {first['ctx']['error']}, got {_given(value, errors)}"
    return f"{key} must be {_describe(declared)}, got {_given(value, errors)}"


def _check_key(key: str, where: str) -> None:
    """An unknown section or key -> UserError listing the known ones."""
    sec, _, name = key.partition(".")
    if sec not in SECTIONS:
        raise UserError(f"{where}: unknown recipe section {sec!r} in {key!r}; sections: {', '.join(SECTIONS)}")
    names = [f.name for f in dataclasses.fields(SECTIONS[sec])]
    if name not in names:
        raise UserError(f"{where}: unknown recipe key {key!r}; {sec} keys: {', '.join(names)}")


def _build(sec: str, values: dict[str, Any], origin: dict[str, str]) -> Any:
    """Section `sec` from `values` (known keys; defaults fill the rest); `origin[key]` names where
    each key was given (a file, `--set`) for the error message."""
    cls = SECTIONS[sec]
    try:
        return cls(**values)
    except pydantic.ValidationError as e:
        errors = e.errors()
        name = errors[0]["loc"][0]
        key = f"{sec}.{name}"
        declared = typing.get_type_hints(cls, include_extras=True)[name]
        mine = [err for err in errors if err["loc"][0] == name]
        raise UserError(f"{origin[key]}: {_problem(key, declared, values[name], mine)}") from None


# ---------------------------------------------------------------------------------------------
# resolving: file, --set items and extra layers -> TrainConfig

# One source of keys: (where, recipe document `{section: {key: value}}`, the folder a relative
# path in it is relative to; None: the current directory). Later layers win.
Layer = tuple[str, dict[str, Any], Optional[str]]


def parse_set(item: str) -> tuple[str, Any]:
    """`section.key=value` -> (key, value); the value is read as TOML, else as a bare string."""
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


def _nested(flat: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`{"section.key": value}` -> `{"section": {"key": value}}` (the inverse of `_flatten`)."""
    doc: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        sec, _, name = key.partition(".")
        doc.setdefault(sec, {})[name] = value
    return doc


def _resolve(layers: Sequence[Layer]) -> TrainConfig:
    """Layers, later ones winning -> a validated TrainConfig (every key type-checked first)."""
    given: dict[str, dict[str, Any]] = {sec: {} for sec in SECTIONS}
    origin: dict[str, str] = {}
    base: dict[str, str | None] = {}
    for where, doc, folder in layers:
        for key, value in _flatten(doc, where).items():
            _check_key(key, where)
            sec, _, name = key.partition(".")
            given[sec][name] = value
            origin[key], base[key] = where, folder
    sections = {sec: _build(sec, values, origin) for sec, values in given.items()}
    for key in PATH_KEYS:
        sec, _, name = key.partition(".")
        value = getattr(sections[sec], name)
        if value and not value.startswith("hub:"):
            path = os.path.expanduser(value)
            folder = base.get(key)
            path = os.path.join(folder, path) if folder is not None else path
            sections[sec] = dataclasses.replace(sections[sec], **{name: os.path.abspath(path)})
    if not sections["data"].dir:
        raise UserError("invalid recipe: data.dir is not set (a prepared data folder; --set data.dir=PATH)")
    train = sections["train"]
    stages = [train.ln_remove_mlp, train.ln_remove_attn, train.ln_remove_final]
    if any(stages) and not (min(stages) >= 2 and stages == sorted(stages)):
        raise UserError("invalid recipe: train.ln_remove_mlp <= ln_remove_attn <= ln_remove_final must all be set "
                        "(>= 2: a norm needs a step to measure its std first), or all be 0")
    cfg = TrainConfig(**sections)
    cfg.model_config(vocab_size=1)  # check preset, variant and model keys now, before any data is read
    return cfg


def resolve_recipe(doc: dict[str, Any], sets: Sequence[str] = (), base_dir: str | None = None,
                   where: str = "recipe", extra: Sequence[Layer] = ()) -> TrainConfig:
    """Recipe document (parsed TOML) + `--set` items + `extra` documents -> a validated TrainConfig.

    `base_dir` is the folder a relative path in `doc` is resolved against (None, as `load_recipe`
    passes: the current directory, as for every path from `sets`). `extra` holds
    (where, document, base folder) layers applied last (a matrix run's own keys). Errors: UserError
    for an unknown section or key, a value of the wrong type or range, or an invalid model.
    """
    layers: list[Layer] = [(where, doc, base_dir)]
    layers += [("--set", _nested(dict([parse_set(item)])), None) for item in sets]
    return _resolve([*layers, *extra])


def model_overrides(sets: Sequence[str]) -> dict[str, Any]:
    """`--set model.KEY=VALUE` items (the `cost` command) -> ModelConfig overrides, each
    type-checked as a recipe's [model] key. Errors: UserError for another section, preset or
    variant, an unknown field, or a value of the wrong type."""
    given: dict[str, Any] = {}
    for item in sets:
        key, value = parse_set(item)
        sec, _, name = key.partition(".")
        if sec != "model" or name in MODEL_KEYS:
            raise UserError(f"--set takes model.KEY=VALUE (a ModelConfig field), got {key!r}")
        _check_key(key, "--set")
        given[name] = value
    section = _build("model", given, {f"model.{k}": "--set" for k in given})
    return {k: v for k, v in dataclasses.asdict(section).items() if k in given}


def load_toml(path: str, what: str = "recipe") -> dict[str, Any]:
    """Read a TOML file; missing or malformed files are a UserError."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{what} is a folder, not a TOML file: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML: {e}") from None


def load_recipe(path: str, sets: Sequence[str] = (), extra: Sequence[Layer] = ()) -> TrainConfig:
    """Read a recipe TOML file and apply `--set` overrides, then `extra` (see `resolve_recipe`)."""
    doc = load_toml(path)
    return resolve_recipe(doc, sets, where=str(path), extra=extra)


__all__ = [
    "DataSection",
    "ModelSection",
    "OptimSection",
    "PRECISIONS",
    "RESUME_SAFE_KEYS",
    "SECTIONS",
    "ScheduleSection",
    "TrainConfig",
    "TrainSection",
    "load_recipe",
    "load_toml",
    "model_overrides",
    "parse_set",
    "resolve_recipe",
]
