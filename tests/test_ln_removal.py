"""LayerNorm removal by fine-tuning: the frozen-scale norm, the schedule, the exact fold (float64
logits before and after), --init-from, and a tiny pretrained-like model taken all the way to an
ordinary LN-free checkpoint that the other commands read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pi_lnfree.checkpoint import load_checkpoint, load_model
from pi_lnfree.cli import main
from pi_lnfree.config import make_config, variant_label
from pi_lnfree.errors import UserError
from pi_lnfree.ln_removal import (
    FreezableLayerNorm,
    RemovalSchedule,
    apply_schedule,
    fold_frozen_norms,
    removable_norms,
)
from pi_lnfree.model import GPT
from pi_lnfree.recipe import resolve_recipe
from pi_lnfree.runs import train_command

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "training" / "tiny.toml"
REMOVAL = ROOT / "training" / "remove-ln-tiny.toml"


def test_freezable_norm_is_layernorm_then_a_running_std_then_a_frozen_scale():
    torch.manual_seed(0)
    norm = FreezableLayerNorm(8, eps=1e-5, ema_decay=0.9).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    xs = [torch.randn(2, 5, 8, dtype=torch.float64) * s for s in (1.0, 3.0, 0.5)]
    ema = None
    for x in xs:
        y = norm(x)
        assert torch.allclose(y, F.layer_norm(x, (8,), norm.weight, norm.bias, 1e-5), atol=1e-12)
        std = (x.var(-1, unbiased=False) + 1e-5).sqrt().mean().item()
        ema = std if ema is None else 0.9 * ema + 0.1 * std
    assert norm.std_ema.item() == pytest.approx(ema, rel=1e-6)
    with torch.no_grad():
        norm(xs[0] * 100)  # no-grad forwards (eval, entropy logging) leave the average alone
    norm.eval()
    norm(xs[0] * 100)
    assert norm.std_ema.item() == pytest.approx(ema, rel=1e-6)
    norm.freeze()
    x = xs[1]
    want = (x - x.mean(-1, keepdim=True)) / norm.std_ema.double() * norm.weight + norm.bias
    assert torch.allclose(norm(x), want, atol=1e-12)
    with pytest.raises(RuntimeError, match="no training batch"):
        FreezableLayerNorm(8).freeze()


def test_schedule_freezes_mlp_then_attention_then_final_layer_by_layer():
    model = GPT(make_config("tiny", "sm-ln-g", vocab_size=64, n_layer=3, ln_removal=True))
    for norm in removable_norms(model).values():
        norm.std_ema.fill_(1.0)
    sched = RemovalSchedule(mlp=2, attn=10, final=20, gap=3)
    assert sched.freeze_steps(3) == {"blocks.0.ln_2": 2, "blocks.1.ln_2": 5, "blocks.2.ln_2": 8, "blocks.0.ln_1": 10,
                                     "blocks.1.ln_1": 13, "blocks.2.ln_1": 16, "ln_f": 20}
    frozen = {step: apply_schedule(model, sched, step) for step in range(1, 22)}
    assert frozen[2] == ["blocks.0.ln_2"] and frozen[5] == ["blocks.1.ln_2"] and frozen[20] == ["ln_f"]
    assert sum(len(v) for v in frozen.values()) == 7 and not frozen[1] and not frozen[21]


@pytest.mark.parametrize("shape", ["gpt2-like", "pythia-like"])
def test_fold_is_exact_in_float64(shape):
    over = dict(position="rotary", residual="parallel", tie_embeddings=False) if shape == "pythia-like" else {}
    cfg = make_config("tiny", "sm-ln-g", vocab_size=64, ln_removal=True, **over)
    torch.manual_seed(0)
    model = GPT(cfg).double()
    with torch.no_grad():
        for norm in removable_norms(model).values():
            norm.weight.uniform_(0.3, 2.0)
            norm.bias.normal_(0.0, 0.5)
            norm.std_ema.fill_(float(torch.empty(()).uniform_(0.2, 3.0)))
            norm.freeze()
        for name, p in model.named_parameters():
            if name.endswith(".bias") and ".ln_" not in name:
                p.normal_(0.0, 0.1)
            elif p.dim() == 2:
                p.mul_(10.0)  # weights of a trained model's size, far from the 0.02 initialization
    model.eval()
    idx = torch.randint(0, 64, (3, 20))
    with torch.no_grad():
        before = model(idx)
        folded = fold_frozen_norms(model)
        after = folded(idx)
    c = folded.config
    assert (c.norm, c.final_norm, c.ln_removal, c.tie_embeddings, c.head_bias) == ("none", False, False, False, True)
    assert not [k for k in folded.state_dict() if ".ln_" in k or k.startswith("ln_f")]
    assert (after - before).abs().max().item() < 1e-10  # within 1e-5 is the requirement; it is exact
    assert before.abs().max() > 1.0  # a non-trivial function
    f32 = fold_frozen_norms(model.float())
    assert f32.wte.weight.dtype == torch.float32
    assert (f32(idx).double() - before).abs().max().item() < 1e-4


def test_removal_recipe_is_checked(data_dir, tmp_path):
    base = {"data": {"dir": str(data_dir)}}
    with pytest.raises(UserError, match="ln_remove_mlp <= ln_remove_attn <= ln_remove_final"):
        resolve_recipe(base, ["train.ln_remove_mlp=5", "train.ln_remove_attn=3", "train.ln_remove_final=9"])
    with pytest.raises(UserError, match="must all be set"):
        resolve_recipe(base, ["train.ln_remove_mlp=5"])
    sets = [f"data.dir={json.dumps(str(data_dir))}", "train.progress=false"]
    with pytest.raises(UserError, match="at step 19, after the run's 18 steps"):
        train_command(REMOVAL, [*sets, "train.max_steps=18"], tmp_path / "a")
    with pytest.raises(UserError, match="needs a model with LayerNorm"):
        train_command(REMOVAL, [*sets, "model.variant=sm-r"], tmp_path / "b")


def test_the_gpt2_removal_recipe_fits_gpt2_small():
    from pi_lnfree.ln_removal import check_removable
    from pi_lnfree.recipe import load_recipe

    recipe = load_recipe(str(ROOT / "training" / "remove-ln-gpt2.toml"))
    cfg = recipe.model_config(50257, 1024)
    assert (cfg.n_layer, cfg.n_embd, cfg.block_size, cfg.activation) == (12, 768, 1024, "gelu_tanh")
    schedule = RemovalSchedule.from_recipe(recipe)
    check_removable(cfg, schedule, recipe["train.max_steps"])
    assert schedule.last_step(12) == 104 and recipe["train.batch_size"] * recipe["train.grad_accum"] * 1023 > 2 ** 19 - 2 ** 10


def test_init_from_refuses_other_shapes_in_one_line(data_dir, tiny_ln_run, tmp_path, capsys):
    sets = [f"data.dir={data_dir}", "train.progress=false", f"train.init_from={tiny_ln_run}", "model.n_embd=32"]
    with pytest.raises(SystemExit) as e:
        main(["train", "--recipe", str(TINY), "--out", str(tmp_path / "run"), *[a for s in sets for a in ("--set", s)]])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "shapes do not match the recipe's model (wte.weight is (512, 64) there, (512, 32) here)" in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "run" / "ckpt.pt").exists()


def test_tiny_pretrained_model_loses_its_layernorms(data_dir, tiny_ln_run, tmp_path, capsys):
    """The tiny LN model (150 steps) fine-tuned 40 more steps under training/remove-ln-tiny.toml.
    Margin: the LN-free model's eval loss within 0.10 nats of the original's (it is in fact lower
    here, since the tiny model is still learning; the published GPT-2 figure is +0.07 vs 3.10)."""
    run = tmp_path / "rm"
    res = train_command(REMOVAL, [f"data.dir={json.dumps(str(data_dir))}", "train.progress=false",
                                  f"train.init_from={json.dumps(str(tiny_ln_run))}"], run)
    assert res["label"] == "SM+G (no final LN) [LN removed by fine-tuning]" and res["variant"] == "sm-g"
    from pi_lnfree.report import open_run

    assert open_run(run).label == res["label"]
    ckpt = load_checkpoint(run / "ckpt.pt")
    assert not [k for k in ckpt["model"] if ".ln_" in k or k.startswith("ln_f")]
    assert ckpt["optimizer"] is None and ckpt["train"]["ln_folded"] is True
    model, _ = load_model(run / "ckpt.pt")
    assert variant_label(model.config) == "SM+G (no final LN)"
    assert not any(isinstance(m, (torch.nn.LayerNorm, FreezableLayerNorm)) for m in model.modules())
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    frozen = [name for r in recs if "ln_frozen" in r for name in r["ln_frozen"]]
    assert frozen == ["blocks.0.ln_2", "blocks.1.ln_2", "blocks.0.ln_1", "blocks.1.ln_1", "ln_f"]
    capsys.readouterr()
    main(["eval", str(tiny_ln_run), "--data", str(data_dir), "--batches", "8", "--json"])
    original = json.loads(capsys.readouterr().out)
    main(["eval", str(run), "--data", str(data_dir), "--batches", "8", "--json"])
    lnfree = json.loads(capsys.readouterr().out)
    print(f"eval loss: original {original['loss']:.4f}, LN-free {lnfree['loss']:.4f}")
    assert lnfree["label"] == "SM+G (no final LN)" and lnfree["loss"] < original["loss"] + 0.10
    main(["entropy", str(run), "--data", str(data_dir), "--batches", "1", "--json"])
    assert len(json.loads(capsys.readouterr().out.splitlines()[-1])["entropy"]) == 2
    again = train_command(None, [], run, resume=True)  # a finished removal resumes to "nothing to do"
    assert again["steps"] == res["steps"] and again["label"] == res["label"]
    pytest.importorskip("transformers")
    from pi_lnfree.hf import to_hf

    with pytest.raises(UserError, match="always have LayerNorm") as e:
        to_hf(model)
    assert "\n" not in str(e.value)
