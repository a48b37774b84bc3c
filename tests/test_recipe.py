"""Recipes: keys, defaults, paths, `--set`, the type check of every key (exit 2, one line, nothing
created), the shipped recipes and matrices, and the round trip of the resolved recipe."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

import pytest

from pi_lnfree.checkpoint import load_checkpoint
from pi_lnfree.cli import main
from pi_lnfree.errors import UserError
from pi_lnfree.recipe import SECTIONS, TrainConfig, load_recipe, load_toml, parse_set, resolve_recipe
from pi_lnfree.runs import load_matrix, train_command

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "training" / "tiny.toml"


def cli_error(capsys, args: list[str]) -> str:
    """Run the CLI expecting exit 2; return its one stderr line."""
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert lines[0].startswith("error: ")
    return lines[0][len("error: "):]


# ---------------------------------------------------------------------------------------------
# keys, defaults, paths


def test_recipe_keys_values_and_paths(tmp_path, monkeypatch):
    recipe = tmp_path / "r" / "x.toml"
    recipe.parent.mkdir()
    recipe.write_text('[data]\ndir = "d"\n[model]\npreset = "tiny"\nactivation = "relu"\n[train]\nmax_steps = 7\n')
    monkeypatch.chdir(tmp_path)
    cfg = load_recipe(str(recipe))
    assert cfg["data.dir"] == str(tmp_path / "d")  # relative to the current directory, not to the recipe
    assert cfg["train.max_steps"] == 7 and cfg["train.batch_size"] == 32  # defaults filled in
    assert cfg.train.max_steps == 7 and cfg.model.activation == "relu" and cfg.model.n_layer is None
    monkeypatch.chdir(tmp_path / "r")
    cfg = load_recipe(str(recipe), ["data.dir=elsewhere", "model.final_norm=false", "optim.lr=3e-4",
                                    "train.debug_nonfinite_steps=[2, 3]"])
    assert cfg["data.dir"] == str(tmp_path / "r" / "elsewhere")  # --set: relative to the cwd
    assert cfg["optim.lr"] == 3e-4 and cfg["train.debug_nonfinite_steps"] == [2, 3]
    mc = cfg.model_config(vocab_size=100, seq_len=64)
    assert (mc.activation, mc.final_norm, mc.block_size, mc.n_layer) == ("relu", False, 64, 2)
    assert "model.n_layer" not in cfg.values  # a model key the recipe does not set is left to the preset


@pytest.mark.parametrize("bad, message", [
    ("train.max_step=3", "unknown recipe key 'train.max_step'"),
    ("model.n_layers=3", "unknown recipe key 'model.n_layers'"),
    ("trian.seed=3", "unknown recipe section 'trian'"),
    ("train.batch_size=true", "--set: train.batch_size must be int, got bool True"),
    ("train.batch_size=0", "--set: train.batch_size must be int > 0, got int 0"),
    ("schedule.warmup_frac=1", "--set: schedule.warmup_frac must be float < 1"),
    ("train.precision=fp8", "--set: train.precision must be one of 'auto', 'fp32', 'bf16', 'fp16', got str 'fp8'"),
    ("train.device=tpu", "--set: train.device must be auto, cpu, cuda or cuda:N, got str 'tpu'"),
    ("model.preset=huge", "--set: model.preset must be one of 'gpt2-small', 'pythia-70m', 'cpu-small', 'cpu-heads', 'tiny'"),
    ("model.variant=sm-x", "unknown variant 'sm-x'"),
    ("model.n_head=3", "n_embd 64 not divisible by n_head 3"),
    ("noequals", "--set expects section.key=value"),
])
def test_recipe_rejects_bad_keys(bad, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        load_recipe(str(TINY), ["data.dir=/x", bad])


def test_recipe_rejects_unknown_key_and_bad_type_in_file(tmp_path):
    with pytest.raises(UserError, match="unknown recipe key 'optim.lr_max'"):
        resolve_recipe({"data": {"dir": "/x"}, "optim": {"lr_max": 1.0}})
    recipe = tmp_path / "r.toml"
    recipe.write_text('[data]\ndir = "/x"\n[model]\nn_layer = "2"\n')
    with pytest.raises(UserError) as e:
        load_recipe(str(recipe))
    assert str(e.value) == f"{recipe}: model.n_layer must be int, got str '2'"  # names the file it came from
    with pytest.raises(UserError, match="data.dir is not set"):
        resolve_recipe({"train": {"seed": 1}})


def test_parse_set_reads_toml_values():
    assert parse_set("train.compile=true") == ("train.compile", True)
    assert parse_set("model.activation=[\"relu\", \"gelu\"]") == ("model.activation", ["relu", "gelu"])
    assert parse_set("model.variant=sm-hybrid:relu,gelu") == ("model.variant", "sm-hybrid:relu,gelu")
    assert parse_set('model.n_layer="2"') == ("model.n_layer", "2")  # a TOML string stays a string


def test_int_is_accepted_for_a_float_key_and_stored_as_float():
    cfg = load_recipe(str(TINY), ["data.dir=/x", "optim.lr=1", "train.epochs=2"])
    assert (cfg["optim.lr"], cfg["train.epochs"]) == (1.0, 2.0)
    assert type(cfg["optim.lr"]) is float and type(cfg["train.epochs"]) is float


# ---------------------------------------------------------------------------------------------
# a wrong type: one line naming key, expected and given type, exit 2, no run folder


@pytest.mark.parametrize("item, message", [
    # The three reported cases.
    ('model.n_layer="2"', "model.n_layer must be int, got str '2'"),
    ("model.n_embd=64.0", "model.n_embd must be int, got float 64.0"),
    ('model.norm_eps="1e-5"', "model.norm_eps must be float, got str '1e-5'"),
])
def test_reported_model_type_errors_exit_2_before_the_run_folder(item, message, data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    line = cli_error(capsys, ["train", "--recipe", str(TINY), "--set", f"data.dir={json.dumps(str(data_dir))}",
                              "--set", "train.progress=false", "--set", item, "--out", str(out)])
    assert line == f"--set: {message}"
    assert not out.exists()


# One key of every declared type in every section, each given a value of another type. The
# expected line is written out by hand.
WRONG_TYPES = [
    ("data", int, 'data.vocab_size="4096"', "data.vocab_size must be int, got str '4096'"),
    ("data", float, 'data.valid_fraction="0.1"', "data.valid_fraction must be float, got str '0.1'"),
    ("data", str, "data.source=1", "data.source must be str, got int 1"),
    ("model", int, "model.n_head=4.0", "model.n_head must be int, got float 4.0"),
    ("model", int, "model.ffn_mult=true", "model.ffn_mult must be int, got bool True"),
    ("model", float, "model.rotary_pct=true", "model.rotary_pct must be float, got bool True"),
    ("model", bool, "model.bias=0", "model.bias must be bool, got int 0"),
    ("model", str, 'model.variant=["sm-r"]', "model.variant must be str, got list ['sm-r']"),
    ("model", str, "model.position=alibi", "model.position must be one of 'learned', 'rotary', got str 'alibi'"),
    ("model", list, 'model.activation=["relu", 1]',
     "model.activation must be one of 'gelu', 'gelu_tanh', 'relu', 'leaky_relu', 'learnable_leaky', "
     "or a list of them, got list with int 1 at index 1"),
    ("model", list, 'model.activation=["relu", "swish"]',
     "model.activation must be one of 'gelu', 'gelu_tanh', 'relu', 'leaky_relu', 'learnable_leaky', "
     "or a list of them, got list with str 'swish' at index 1"),
    ("train", int, 'train.seed="7"', "train.seed must be int, got str '7'"),
    ("train", float, 'train.epochs="2"', "train.epochs must be float, got str '2'"),
    ("train", bool, 'train.progress="no"', "train.progress must be bool, got str 'no'"),
    ("train", str, "train.device=0", "train.device must be str, got int 0"),
    ("train", list, "train.debug_nonfinite_steps=[1.5]",
     "train.debug_nonfinite_steps must be a list of int, got list with float 1.5 at index 0"),
    ("train", list, "train.debug_nonfinite_steps=3", "train.debug_nonfinite_steps must be a list of int, got int 3"),
    ("optim", float, 'optim.lr="3e-4"', "optim.lr must be float, got str '3e-4'"),
    ("optim", bool, "optim.fused=1", "optim.fused must be 'auto' or bool, got int 1"),
    ("optim", str, 'optim.fused="yes"', "optim.fused must be 'auto' or bool, got str 'yes'"),
    ("schedule", int, "schedule.warmup_steps=true", "schedule.warmup_steps must be int, got bool True"),
    ("schedule", float, 'schedule.min_lr_frac="0"', "schedule.min_lr_frac must be float, got str '0'"),
    ("schedule", str, "schedule.decay=3", "schedule.decay must be one of 'linear', 'cosine', 'constant', got int 3"),
]


@pytest.mark.parametrize("section, kind, item, message", WRONG_TYPES, ids=[w[2] for w in WRONG_TYPES])
def test_wrong_type_of_any_key_is_one_line_exit_2_and_creates_nothing(section, kind, item, message, tmp_path, capsys):
    out = tmp_path / "run"
    line = cli_error(capsys, ["train", "--recipe", str(TINY), "--set", f"data.dir={json.dumps(str(tmp_path / 'd'))}",
                              "--set", item, "--out", str(out)])
    assert line == f"--set: {message}"
    assert not out.exists() and not (tmp_path / "d").exists()


def _kinds(tp) -> set[type]:
    """The base types a declared annotation is made of (list for a list, str for a Literal)."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _kinds(typing.get_args(tp)[0])
    if origin is typing.Literal:
        return {type(a) for a in typing.get_args(tp)}
    if origin is list:
        return {list}
    if origin is not None:  # a union
        return set().union(*(_kinds(a) for a in typing.get_args(tp) if a is not type(None)))
    return {tp}


def test_wrong_types_cover_every_declared_type_of_every_section():
    covered = {(sec, kind) for sec, kind, _, _ in WRONG_TYPES}
    for sec, cls in SECTIONS.items():
        for name, tp in typing.get_type_hints(cls, include_extras=True).items():
            for kind in _kinds(tp):
                assert (sec, kind) in covered, f"no wrong-type case for a {kind.__name__} key of [{sec}] ({name})"


def test_matrix_run_keys_are_type_checked_before_any_run(tmp_path, capsys):
    matrix = tmp_path / "m.toml"
    matrix.write_text(f'recipe = {json.dumps(str(TINY))}\nvariants = ["sm-r"]\n'
                      '[runs.bad]\nmodel = { variant = "sm-g", n_layer = "2" }\n')
    line = cli_error(capsys, ["train", "--matrix", str(matrix), "--set", "data.dir=/nonexistent",
                              "--out", str(tmp_path / "out")])
    assert line == f"{matrix}: runs.bad: model.n_layer must be int, got str '2'"
    assert not (tmp_path / "out").exists()  # not even the valid first run (sm-r) was started


def test_cost_model_overrides_are_type_checked(capsys):
    line = cli_error(capsys, ["cost", "--preset", "tiny", "--variant", "sm-r", "--set", 'model.n_layer="2"',
                              "--protocol", str(ROOT / "protocols" / "crypten-2pc-ttp.toml"), "--seq-len", "16"])
    assert line == "--set: model.n_layer must be int, got str '2'"
    line = cli_error(capsys, ["cost", "--preset", "tiny", "--variant", "sm-r", "--set", "train.seed=1",
                              "--protocol", str(ROOT / "protocols" / "crypten-2pc-ttp.toml"), "--seq-len", "16"])
    assert "--set takes model.KEY=VALUE" in line


# ---------------------------------------------------------------------------------------------
# shipped recipes, round trip, hybrids


@pytest.mark.parametrize("path", sorted((ROOT / "training").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_recipe_and_matrix_resolves(path):
    doc = load_toml(str(path))
    if "variants" in doc or "runs" in doc:
        recipe, runs = load_matrix(path)
        for _, keys in runs:
            cfg = load_recipe(str(recipe or TINY), ["data.dir=/x"], extra=[keys])
            assert cfg.model_config(4096, 128).n_layer > 0
    else:
        cfg = load_recipe(str(path), ["data.dir=/x"])
        assert cfg.model_config(50304, 128).vocab_size == 50304


def test_resolved_recipe_reads_back_identically(tmp_path):
    cfg = load_recipe(str(TINY), [
        "data.dir=/x", 'data.tokenizer="hub:gpt2"', "model.activation=[\"relu\", \"gelu\"]", "model.final_norm=false",
        "model.norm_eps=1e-6", "model.rotary_base=10000", "optim.lr=1", "optim.fused=false", "train.epochs=2",
        "train.debug_nonfinite_steps=[3, 5]", "train.device=cuda:1", "schedule.decay=cosine", "schedule.min_lr_frac=0.1",
    ])
    out = tmp_path / "recipe.toml"
    out.write_text(cfg.to_toml())
    back = load_recipe(str(out))
    typed = {k: (type(v), v) for k, v in cfg.values.items()}
    assert {k: (type(v), v) for k, v in back.values.items()} == typed  # same values and types (1.0 is not 1)
    assert back == cfg and TrainConfig.from_values(cfg.values, "stored") == cfg
    assert cfg["model.rotary_base"] == 10000.0 and type(cfg["model.rotary_base"]) is float
    assert cfg["data.tokenizer"] == "hub:gpt2"  # not a local path


def test_hybrid_activation_list_trains(data_dir, tmp_path):
    run = tmp_path / "hybrid"
    res = train_command(TINY, [f"data.dir={json.dumps(str(data_dir))}", "train.progress=false", "train.max_steps=2",
                               "train.eval_interval=0", "train.entropy_interval=0",
                               'model.activation=["relu", "gelu"]', "model.norm=\"none\""], run)
    assert res["variant"] == "sm-hybrid:relu,gelu" and res["steps"] == 2
    ckpt = load_checkpoint(run / "ckpt.pt")
    assert ckpt["config"]["activation"] == ["relu", "gelu"] and ckpt["config"]["norm"] == "none"
    assert load_recipe(str(run / "recipe.toml")).values == ckpt["train"]["recipe"]


def test_sections_are_dataclasses_with_every_model_field():
    from pi_lnfree.config import ModelConfig

    assert all(dataclasses.is_dataclass(cls) for cls in SECTIONS.values())
    model_keys = [f.name for f in dataclasses.fields(SECTIONS["model"])]
    assert model_keys == ["preset", "variant", *(f.name for f in dataclasses.fields(ModelConfig))]
