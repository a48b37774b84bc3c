"""The trainer: recipes, schedule, loss going down, every variant, slopes, NaN guard, exact resume
(also after a SIGKILL), matrix runs and CLI errors. Uses the `tiny` recipe on the shared data_dir."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pi_lnfree.checkpoint import load_checkpoint, load_model, save_checkpoint
from pi_lnfree.cli import main
from pi_lnfree.errors import UserError
from pi_lnfree.recipe import load_recipe
from pi_lnfree.resources import recipe_file
from pi_lnfree.runs import load_matrix, train_command
from pi_lnfree.runtime import setup_runtime
from pi_lnfree.schedule import LRSchedule
from pi_lnfree.train import Trainer, TrainingStopped

ROOT = Path(__file__).resolve().parents[1]
TINY = recipe_file("tiny")
MATRIX = recipe_file("paper-variants")


def records(run_dir: Path, key: str) -> list[dict]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if key in r]


def tiny_sets(data_dir: Path, *extra: str) -> list[str]:
    return [f"data.dir={json.dumps(str(data_dir))}", "train.progress=false", *extra]


# ---------------------------------------------------------------------------------------------
# schedule (no training; recipes: test_recipe.py)


def test_schedule_matches_hand_computation():
    s = LRSchedule(1e-3, total_steps=10, warmup_steps=2, decay="linear")
    # warmup: (s+1)/W; then linear from the peak at s=W to 0 at s=total
    want = [5e-4, 1e-3] + [1e-3 * (1 - (k - 2) / 8) for k in range(2, 10)]
    assert [s.lr_at(k) for k in range(10)] == pytest.approx(want, rel=1e-12)
    c = LRSchedule(1.0, total_steps=5, warmup_steps=1, decay="cosine", min_lr_frac=0.1)
    assert c.lr_at(0) == 1.0 and c.lr_at(1) == pytest.approx(1.0)
    assert c.lr_at(3) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert LRSchedule(2.0, 4, 0, "constant").lr_at(3) == 2.0


# ---------------------------------------------------------------------------------------------
# training


def test_tiny_run_learns_and_writes_its_run_dir(data_dir, tmp_path):
    run = tmp_path / "run"
    res = train_command(TINY, tiny_sets(data_dir, "train.max_steps=40"), run)
    train_lines = records(run, "loss")
    assert [r["step"] for r in train_lines] == list(range(5, 41, 5))
    first, last = train_lines[0]["loss"], train_lines[-1]["loss"]
    assert first > 5.5 and last < first - 0.6  # from ~ln(512)=6.24 down
    assert all(r["tokens"] == r["step"] * 8 * 63 for r in train_lines)
    assert all({"lr", "grad_norm", "tokens_per_s"} <= set(r) for r in train_lines)
    evals = records(run, "eval_loss")
    assert [r["step"] for r in evals] == [10, 20, 30, 40]
    assert evals[-1]["eval_ppl"] == pytest.approx(math.exp(evals[-1]["eval_loss"]))
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] < math.log(512)
    assert res["best_eval_loss"] == min(r["eval_loss"] for r in evals)

    ckpt = load_checkpoint(run / "ckpt.pt")
    assert ckpt["train"]["step"] == 40 and ckpt["meta"]["variant"] == "sm-ln-g"
    assert ckpt["meta"]["data_dir"] == str(data_dir) and ckpt["optimizer"] is not None
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in ckpt["model"])
    assert load_recipe(str(run / "recipe.toml")).values == ckpt["train"]["recipe"]

    # The logged final entropy is eq. 8 on the first 4 validation sequences of the saved model.
    from pi_lnfree.data import load_data_folder
    from pi_lnfree.diagnostics import headwise_entropy

    model, _ = load_model(run / "ckpt.pt")
    idx = torch.as_tensor(load_data_folder(data_dir).valid[:4].astype("int64"))
    ent = records(run, "entropy")
    assert [r["step"] for r in ent] == [0, 10, 20, 30, 40] and all(r["slopes"] == [] for r in ent)
    assert torch.allclose(torch.tensor(ent[-1]["entropy"], dtype=torch.float64), headwise_entropy(model, idx),
                          rtol=0, atol=1e-9)
    # best.pt holds the weights of the best eval, and evaluates to the logged loss.
    from pi_lnfree.diagnostics import evaluate

    best, _ = load_model(run / "best.pt")
    assert evaluate(best, load_data_folder(data_dir), batch_size=8, batches=4)["loss"] == pytest.approx(
        res["best_eval_loss"], rel=1e-6)


def test_first_logged_loss_is_float64_cross_entropy_of_the_first_batch(data_dir, tmp_path):
    """Independent reference for the data wiring: the seeded sampler's first batch, the seeded
    initial weights in float64, inputs chunk[:, :-1] and targets chunk[:, 1:]."""
    import torch.nn.functional as F

    from pi_lnfree.batches import RandomChunkSampler
    from pi_lnfree.data import load_data_folder
    from pi_lnfree.model import GPT

    run = tmp_path / "one"
    train_command(TINY, tiny_sets(data_dir, "train.max_steps=4", "train.log_interval=1"), run)
    logged = records(run, "loss")[0]
    folder = load_data_folder(data_dir)
    batch = RandomChunkSampler(folder.train, 8, 1337).next_batch()
    torch.manual_seed(1337)
    cfg = load_recipe(str(TINY), tiny_sets(data_dir)).model_config(folder.vocab_size, folder.seq_len)
    model = GPT(cfg).double()
    with torch.no_grad():
        logits = model(batch[:, :-1])
    ref = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), batch[:, 1:].reshape(-1))
    assert logged["loss"] == pytest.approx(ref.item(), rel=1e-5)
    assert logged["lr"] == pytest.approx(3e-3 / 3)  # warmup step 1 of 3


def test_every_paper_variant_trains_and_slopes_are_logged(data_dir, tmp_path):
    out = tmp_path / "matrix"
    sets = tiny_sets(data_dir, "train.max_steps=8", "train.eval_interval=0", "train.entropy_interval=4",
                     "train.log_interval=4", "optim.lr=1e-2")
    res = train_command(TINY, sets, out, matrix=MATRIX)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["sm-ln-g", "sm-ln-r", "sm-g", "sm-r", "sm-lrelu-layer", "sm-lrelu-global"])
    assert [r["variant"] for r in res["runs"]] == ["sm-ln-g", "sm-ln-r", "sm-g", "sm-r", "sm-lrelu-layer",
                                                   "sm-lrelu-global"]
    for r in res["runs"]:
        assert math.isfinite(r["final_loss"]) and r["nonfinite_steps"] == 0
        assert load_checkpoint(out / r["variant"] / "ckpt.pt")["meta"]["variant"] == r["variant"]
    for name, n_slopes in (("sm-lrelu-layer", 2), ("sm-lrelu-global", 1), ("sm-r", 0)):
        slopes = [rec["slopes"] for rec in records(out / name, "slopes")]
        assert [len(s) for s in slopes] == [n_slopes] * 3  # steps 0, 4, 8
        if n_slopes:
            assert slopes[0] == pytest.approx([0.01] * n_slopes)  # the initial slope
            assert all(abs(a - b) > 1e-5 for a, b in zip(slopes[-1], slopes[0], strict=True))  # they learn
            model, _ = load_model(out / name / "ckpt.pt")
            assert model.slope_values() == pytest.approx(slopes[-1], abs=1e-7)


def test_matrix_files_parse(tmp_path):
    recipe, runs = load_matrix("hybrid-variants")  # a shipped matrix, by name
    assert recipe == recipe_file("cpu")
    assert [(name, doc) for name, (_, doc, _) in runs] == [
        ("sm-g", {"model": {"variant": "sm-g"}}), ("sm-r", {"model": {"variant": "sm-r"}}),
        ("sm-relu-then-gelu", {"model": {"variant": "sm-hybrid:relu,gelu"}}),
        ("sm-gelu-then-relu", {"model": {"variant": "sm-hybrid:gelu,relu"}})]
    cfg = load_recipe(str(recipe), ["data.dir=/x"], extra=[runs[2][1]]).model_config(4096, 128)
    assert cfg.layer_activations() == ["relu", "relu", "gelu", "gelu"] and cfg.norm == "none"
    bad = tmp_path / "bad.toml"
    bad.write_text('variants = ["sm-r"]\nrecipes = "x.toml"\n')
    with pytest.raises(UserError, match="unknown matrix keys recipes"):
        load_matrix(bad)
    bad.write_text('variants = ["sm-r", "sm-r"]\n')
    with pytest.raises(UserError, match="run names repeat"):
        load_matrix(bad)


def test_nan_guard_skips_counts_and_stops(data_dir, tmp_path):
    run = tmp_path / "skip"
    res = train_command(TINY, tiny_sets(data_dir, "train.max_steps=10", "train.debug_nonfinite_steps=[3, 4]"), run)
    assert res["nonfinite_steps"] == 2 and math.isfinite(res["final_loss"])
    assert [r["nonfinite"] for r in records(run, "nonfinite")] == [2, 2]
    # Skipped steps leave the weights alone: a run poisoned at its last two steps ends with the
    # weights a clean Trainer has after 6 steps of the same 8-step schedule.
    poisoned = tmp_path / "poisoned"
    train_command(TINY, tiny_sets(data_dir, "train.max_steps=8", "train.debug_nonfinite_steps=[7, 8]"), poisoned)
    clean = Trainer(load_recipe(str(TINY), tiny_sets(data_dir, "train.max_steps=8")), tmp_path / "clean",
                    setup_runtime("cpu", "fp32", 1), resume=False)
    for _ in range(6):
        clean.step()
        clean.c.step += 1
    w6 = clean.model.state_dict()
    got = load_checkpoint(poisoned / "ckpt.pt")["model"]
    assert all(torch.equal(got[k], w6[k]) for k in got)
    clean.step()
    assert not all(torch.equal(got[k], clean.model.state_dict()[k]) for k in got)

    stop = tmp_path / "stop"
    with pytest.raises(TrainingStopped, match=r"step 14: 3 non-finite .* \(step 10\)"):
        train_command(TINY, tiny_sets(data_dir, "train.max_steps=30", "train.max_nonfinite=3",
                                      "train.debug_nonfinite_steps=[12, 13, 14]"), stop)
    assert load_checkpoint(stop / "ckpt.pt")["train"]["step"] == 10  # the last good one is kept
    assert records(stop, "stopped")[-1]["step"] == 14


def test_resume_is_bit_exact_after_sigkill(data_dir, tmp_path):
    steps = 60
    sets = tiny_sets(data_dir, f"train.max_steps={steps}", "train.ckpt_interval=1", "train.log_interval=1",
                     "train.eval_interval=20", "train.entropy_interval=20")
    ref = tmp_path / "ref"
    train_command(TINY, sets, ref)

    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "pi_lnfree.cli", "train", "--recipe", str(TINY), "--out", str(run)]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    deadline, during_save = time.monotonic() + 60, False
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            # Kill when a checkpoint save is in flight (its temp file exists) after step 15.
            if (run / "metrics.jsonl").exists() and len(records(run, "loss")) >= 15:
                if any(p.name.endswith(".tmp") for p in run.iterdir()):
                    during_save = True
                    break
            time.sleep(0.0005)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_at = load_checkpoint(run / "ckpt.pt")["train"]["step"]
    assert 10 <= killed_at < steps, (killed_at, proc.stderr.read().decode()[-2000:])
    res = train_command(None, [], run, resume=True)  # the recipe comes from the checkpoint
    assert res["steps"] == steps
    want, got = load_checkpoint(ref / "ckpt.pt"), load_checkpoint(run / "ckpt.pt")
    assert all(torch.equal(want["model"][k], got["model"][k]) for k in want["model"])
    strip = ("tokens_per_s",)
    ref_lines = [{k: v for k, v in r.items() if k not in strip} for r in records(ref, "step")]
    run_lines = [{k: v for k, v in r.items() if k not in strip} for r in records(run, "step")]
    assert run_lines == ref_lines  # the same history, bit for bit, with no duplicated steps
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    print(f"killed after step {killed_at}, during a save: {during_save}")


def test_recipe_prepares_missing_data_from_its_source(tmp_path, monkeypatch):
    import sysconfig

    monkeypatch.chdir(tmp_path)  # the recipe's relative data.dir is under the current directory

    email = Path(sysconfig.get_paths()["stdlib"]) / "email"
    recipe = tmp_path / "r.toml"
    recipe.write_text(TINY.read_text().replace("[model]", f"""[data]
dir = "data/email"
source = {json.dumps("dir:" + str(email))}
vocab_size = 300
seq_len = 32
valid_fraction = 0.3

[model]"""))
    res = train_command(recipe, ["train.max_steps=2", "train.progress=false"], tmp_path / "run")
    manifest = json.loads((tmp_path / "data" / "email" / "manifest.json").read_text())
    assert (manifest["vocab_size"], manifest["seq_len"]) == (300, 32)
    assert res["steps"] == 2 and load_checkpoint(tmp_path / "run" / "ckpt.pt")["config"]["block_size"] == 32


def test_resume_after_a_stop_is_bit_exact_with_accumulation_and_slopes(data_dir, tmp_path):
    sets = tiny_sets(data_dir, "train.max_steps=12", "train.grad_accum=2", "train.ckpt_interval=3",
                     "train.log_interval=1", "model.variant=sm-lrelu-global")
    train_command(TINY, sets, tmp_path / "ref")
    run = tmp_path / "run"
    with pytest.raises(TrainingStopped, match=r"\(step 6\)"):  # stops at step 8, ckpt at 6 kept
        train_command(TINY, [*sets, "train.debug_nonfinite_steps=[8]", "train.max_nonfinite=1"], run)
    res = train_command(TINY, sets, run, resume=True)
    want, got = load_checkpoint(tmp_path / "ref" / "ckpt.pt"), load_checkpoint(run / "ckpt.pt")
    assert all(torch.equal(want["model"][k], got["model"][k]) for k in want["model"])
    assert got["model"]["slopes"].numel() == 1 and res["slopes"] == want["model"]["slopes"].tolist()
    assert [r["loss"] for r in records(run, "loss")] == [r["loss"] for r in records(tmp_path / "ref", "loss")]
    assert want["optimizer"]["state"].keys() == got["optimizer"]["state"].keys()


def test_resume_refuses_a_changed_recipe_and_reuse_of_a_run_dir(data_dir, tmp_path):
    run = tmp_path / "run"
    first = train_command(TINY, tiny_sets(data_dir, "train.max_steps=2", "train.log_interval=1"), run)
    with pytest.raises(UserError, match="already holds a run"):
        train_command(TINY, tiny_sets(data_dir, "train.max_steps=2"), run)
    with pytest.raises(UserError, match=r"different recipe .*optim\.lr"):
        train_command(TINY, tiny_sets(data_dir, "train.max_steps=2", "optim.lr=0.5", "train.log_interval=1"), run,
                      resume=True)
    done = train_command(TINY, tiny_sets(data_dir, "train.max_steps=2", "train.log_interval=1"), run, resume=True)
    assert done["steps"] == 2 and done["final_loss"] == first["final_loss"]  # nothing left to do


def test_resume_accepts_keys_added_after_the_run_started_at_their_defaults(data_dir, tmp_path):
    """A checkpoint from an older version lacks the recipe keys added since (their defaults keep
    the old behaviour): resuming it continues; setting such a key to another value is refused."""
    run = tmp_path / "run"
    sets = tiny_sets(data_dir, "train.max_steps=2", "train.log_interval=1")
    first = train_command(TINY, sets, run)
    ckpt = load_checkpoint(run / "ckpt.pt")
    for key in ("train.distill_from", "train.distill_temperature", "data.limit_mb"):  # as an older version wrote it
        del ckpt["train"]["recipe"][key]
    save_checkpoint(run / "ckpt.pt", ckpt["model"], ckpt["config"], ckpt["train"], ckpt["optimizer"], ckpt["meta"])
    with pytest.raises(UserError, match=r"different recipe .*train\.distill_temperature: None -> 3\.0"):
        train_command(TINY, [*sets, "train.distill_temperature=3.0"], run, resume=True)
    done = train_command(TINY, sets, run, resume=True)
    assert done["steps"] == 2 and done["final_loss"] == first["final_loss"]


def test_cli_errors_are_one_line_exit_2(data_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--recipe", str(TINY), "--set", f"data.dir={data_dir}", "--set", "train.bogus=1",
              "--out", str(tmp_path / "x")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unknown recipe key 'train.bogus'" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as e:
        main(["train", "--recipe", str(tmp_path / "missing.toml"), "--out", str(tmp_path / "x")])
    assert e.value.code == 2 and "recipe not found" in capsys.readouterr().err


def test_cli_json_output(data_dir, tmp_path, capsys):
    main(["train", "--recipe", str(TINY), "--set", f"data.dir={data_dir}", "--set", "train.max_steps=3",
          "--set", "train.progress=false", "--out", str(tmp_path / "j"), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["steps"] == 3 and out["tokens"] == 3 * 8 * 63
    assert (out["variant"], out["label"]) == ("sm-ln-g", "SM+LN+G")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs torchrun processes")
def test_ddp_two_processes_match_one_process(data_dir, tmp_path):
    """torchrun with 2 gloo ranks x batch 4 sees the same data as 1 process x batch 8."""
    sets = tiny_sets(data_dir, "train.max_steps=4", "train.log_interval=1", "train.eval_interval=0",
                     "train.entropy_interval=0")
    one = tmp_path / "one"
    train_command(TINY, sets, one)
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "pi_lnfree.cli", "train", "--recipe", str(TINY), "--out", str(two), "--json"]
    for s in [*sets, "train.batch_size=4"]:
        cmd += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout)["steps"] == 4  # exactly one JSON object: rank 0 reports
    a = [r["loss"] for r in records(one, "loss")]
    b = [r["loss"] for r in records(two, "loss")]
    assert b == pytest.approx(a, rel=1e-4)
    gn = [[r["grad_norm"] for r in records(run, "grad_norm")] for run in (one, two)]
    assert gn[1] == pytest.approx(gn[0], rel=1e-3)
    wa, wb = load_checkpoint(one / "ckpt.pt")["model"], load_checkpoint(two / "ckpt.pt")["model"]
    # Summation order differs between one and two processes; Adam turns the rounding of near-zero
    # gradients into updates of up to lr, so weights agree to ~1e-5 rather than to the bit.
    assert all(torch.allclose(wa[k], wb[k], atol=1e-4) for k in wa)


def test_resume_of_a_run_started_before_a_model_default_changed_continues_as_trained(data_dir, tmp_path):
    """DyT runs started before the embedding scale and the matched alpha0 became defaults: their
    recipe does not set those keys, so today's recipe builds another model. Resuming continues
    the model the checkpoint holds, bit for bit as an uninterrupted run of the old model."""
    old_model = ["model.variant=sm-dyt-r", "model.dyt_embed_scale=false", "model.dyt_alpha=0.5"]
    sets = tiny_sets(data_dir, "train.max_steps=8", "train.ckpt_interval=4", "train.log_interval=1")
    train_command(TINY, [*sets, *old_model], tmp_path / "ref")
    run = tmp_path / "run"
    with pytest.raises(TrainingStopped, match=r"\(step 4\)"):
        train_command(TINY, [*sets, *old_model, "train.debug_nonfinite_steps=[6]", "train.max_nonfinite=1"], run)
    ckpt = load_checkpoint(run / "ckpt.pt")  # rewritten as the older version wrote it
    for key in ("model.dyt_embed_scale", "model.dyt_alpha"):
        del ckpt["train"]["recipe"][key]
    del ckpt["config"]["dyt_embed_scale"]
    save_checkpoint(run / "ckpt.pt", ckpt["model"], ckpt["config"], ckpt["train"], ckpt["optimizer"], ckpt["meta"])
    train_command(TINY, [*sets, "model.variant=sm-dyt-r"], run, resume=True)
    want, got = load_checkpoint(tmp_path / "ref" / "ckpt.pt"), load_checkpoint(run / "ckpt.pt")
    assert "embed_scale" not in got["model"] and got["config"]["dyt_alpha"] == 0.5
    assert want["model"].keys() == got["model"].keys()
    assert all(torch.equal(want["model"][k], got["model"][k]) for k in want["model"])
    assert [r["loss"] for r in records(run, "loss")] == [r["loss"] for r in records(tmp_path / "ref", "loss")]
