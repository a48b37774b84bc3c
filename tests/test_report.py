"""`pi-lnfree report`: tables and figures from real run dirs (tiny preset, real trainer, real
eval/entropy, the real cost model and one real two-party secure-eval)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from pi_lnfree import tables as tb
from pi_lnfree.report import ReportOptions, gather_piece, make_report, open_run
from pi_lnfree.resources import protocol_file, recipe_file

TFP = protocol_file("crypten-2pc-tfp")
VARIANTS = ("sm-ln-g", "sm-lrelu-layer")  # the baseline, and a run with learnable slopes (slope figure)


def _options(**changes) -> ReportOptions:
    base = dict(protocol=TFP, secure_seq_len=0, cost_seq_len=16, eval_batch_size=8, eval_batches=2,
                entropy_batch_size=4, entropy_batches=1)
    return ReportOptions(**{**base, **changes})


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory, data_dir) -> list[Path]:
    """Two tiny runs trained for a few steps by the real trainer."""
    from pi_lnfree.runs import train_command

    root = tmp_path_factory.mktemp("runs")
    sets = [f"data.dir={data_dir}", "train.max_steps=6", "train.batch_size=4", "train.eval_interval=3",
            "train.eval_batches=2", "train.entropy_interval=2", "train.ckpt_interval=3", "train.log_interval=2",
            "train.progress=false"]
    out = []
    for v in VARIANTS:
        train_command(recipe_file("tiny"), [*sets, f"model.variant={v}"], root / v)
        out.append(root / v)
    return out


@pytest.fixture(scope="module")
def computed(run_dirs, tmp_path_factory):
    """A report that computes eval, entropy and cost (secure-eval skipped: see the secure test)."""
    out = tmp_path_factory.mktemp("report")
    return make_report(run_dirs, out, _options(), show=False), out


def _cache(run_dir: Path, name: str) -> dict:
    return json.loads((run_dir / name).read_text())["result"]


def test_every_table_and_figure_file(computed):
    summary, out = computed
    for name in ("report.md", "report.csv", "report.json"):
        assert (out / name).is_file()
    for kind in ("main", "predicted", "operators", "operators-predicted", "phases", "fidelity"):
        assert (out / "tables" / f"{kind}-tiny.csv").is_file()
    figs = summary["figures"]["tiny"]
    for kind in ("entropy heatmaps", "loss curves", "entropy dynamics", "slope dynamics", "operator costs (predicted)"):
        assert Path(figs[kind]).is_file() and Path(figs[kind]).stat().st_size > 10_000, kind
        assert f"]({Path(figs[kind]).relative_to(out).as_posix()})" in (out / "report.md").read_text()
    assert figs["operator costs"] == "n/a: no secure results"  # secure-eval was skipped
    for piece in ("eval", "entropy", "cost"):
        for d in summary["missing"]:
            assert piece not in summary["missing"][d]
    assert all(m["secure"] == "skipped (--secure-seq-len 0)" for m in summary["missing"].values())


def test_numbers_equal_their_json(computed, run_dirs):
    summary, out = computed
    main = pd.read_csv(out / "tables" / "main-tiny.csv")
    pred = pd.read_csv(out / "tables" / "predicted-tiny.csv")
    assert list(main[tb.CONFIG]) == ["SM+LN+G", "SM+LLR(layer)"]
    for i, d in enumerate(run_dirs):
        ev, ent, cost = _cache(d, "eval.json"), _cache(d, "entropy.json"), _cache(d, "cost-crypten-2pc-tfp-T16.json")
        assert main.loc[i, tb.PPL] == ev["ppl"] and math.isclose(ev["ppl"], math.exp(ev["loss"]))
        assert main.loc[i, tb.OVERLOAD] == 100.0 * ent["overload_fraction"]
        rel = [e / ent["max_entropy"] for row in ent["entropy"] for e in row]
        assert math.isclose(main.loc[i, tb.ENTROPY], 100.0 * sum(rel) / len(rel), rel_tol=1e-12)
        assert pred.loc[i, tb.GB] == cost["total"]["bytes"] / 1e9
        assert pred.loc[i, tb.ROUNDS] == cost["total"]["rounds"]
        assert pred.loc[i, tb.LAN] == cost["network"]["lan"]["seconds"]
        assert pred.loc[i, tb.WAN] == cost["network"]["wan"]["seconds"]
        assert cost["predicted"] is True and cost["seq_len"] == 16
    assert main[tb.GB].isna().all()  # no secure-eval: measured columns are n/a
    # the JSON summary holds the same records
    assert summary["tables"]["predicted-tiny"][1][tb.ROUNDS] == pred.loc[1, tb.ROUNDS]


def test_savings_and_percentages_by_hand(computed, run_dirs):
    _, out = computed
    main = pd.read_csv(out / "tables" / "main-tiny.csv")
    pred = pd.read_csv(out / "tables" / "predicted-tiny.csv")
    base_ev, ev = _cache(run_dirs[0], "eval.json"), _cache(run_dirs[1], "eval.json")
    base_c, c = (_cache(d, "cost-crypten-2pc-tfp-T16.json") for d in run_dirs)
    assert main.loc[0, tb.PPL_VS] == 0.0
    assert math.isclose(main.loc[1, tb.PPL_VS], (ev["ppl"] - base_ev["ppl"]) / base_ev["ppl"] * 100, rel_tol=1e-12)
    assert pred.loc[0, tb.SAVE_GB] == 1.0
    assert math.isclose(pred.loc[1, tb.SAVE_GB], base_c["total"]["bytes"] / c["total"]["bytes"], rel_tol=1e-12)
    assert math.isclose(pred.loc[1, tb.SAVE_WAN], base_c["network"]["wan"]["seconds"] / c["network"]["wan"]["seconds"],
                        rel_tol=1e-12)
    # LN-free: no per-block LayerNorm, so the predicted bytes go down
    assert pred.loc[1, tb.SAVE_GB] > 1.0
    ops = pd.read_csv(out / "tables" / "operators-predicted-tiny.csv")
    shares = ops.groupby(tb.CONFIG)[["bytes (%)", "WAN (%)"]].sum()
    assert ((shares - 100.0).abs() < 1e-9).all().all()
    ln = ops[(ops[tb.CONFIG] == "SM+LN+G") & (ops["category"] == "layernorm")].iloc[0]
    assert math.isclose(ln["bytes (%)"], 100 * base_c["ops"]["layernorm"]["bytes"] / base_c["total"]["bytes"])
    # the phase column: predicted offline (TFP: nothing on the wire) and online (= the totals)
    phases = pd.read_csv(out / "tables" / "phases-tiny.csv")
    base = phases[phases[tb.CONFIG] == "SM+LN+G"].set_index("phase")
    assert list(phases["source"].unique()) == ["predicted"]  # secure-eval was skipped
    assert base.loc["offline", tb.GB] == 0 and base.loc["offline", tb.ROUNDS] == 0
    assert math.isclose(base.loc["online", tb.GB], base_c["total"]["bytes"] / 1e9, rel_tol=1e-12)
    assert base.loc["online", tb.ROUNDS] == base_c["total"]["rounds"]


def test_helpers_by_hand():
    assert tb.savings(25.32, 9.44) == 25.32 / 9.44
    assert tb.savings(None, 1.0) is None and tb.savings(1.0, 0.0) is None
    assert math.isclose(tb.percent_vs(2.688, 2.936), 9.226, abs_tol=1e-3)  # the paper's SM+R row: +9.2%


def test_no_compute_marks_missing_with_reasons(run_dirs, tmp_path):
    fresh = tmp_path / "copy"
    shutil.copytree(run_dirs[0], fresh)
    for f in fresh.glob("*.json"):
        f.unlink()
    shutil.copy(run_dirs[1] / "eval.json", fresh / "eval.json")  # another run's cache: wrong checkpoint
    summary = make_report([fresh], tmp_path / "out", _options(compute=False, secure_seq_len=8), show=False)
    missing = summary["missing"][str(fresh)]
    assert "computed with other settings" in missing["eval"] and "checkpoint" in missing["eval"]
    assert missing["entropy"] == "--no-compute and no entropy.json"
    assert missing["secure"] == "--no-compute and no secure-crypten-2pc-tfp-T8.json"
    assert missing["cost"] == "--no-compute and no cost-crypten-2pc-tfp-T16.json"
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| SM+LN+G | n/a | n/a | n/a | n/a |" in md and "--no-compute and no entropy.json" in md
    assert sorted(f.name for f in fresh.glob("*.json")) == ["eval.json"]  # nothing computed or written


@pytest.mark.slow
def test_secure_eval_piece_in_the_tables(run_dirs, computed, tmp_path):
    """One real two-party run (T=8) for the baseline; the other run's measured cost stays n/a."""
    opts = _options(secure_seq_len=8)
    run = open_run(run_dirs[0])
    gather_piece("secure", run, opts)
    assert run.pieces["secure"] is not None, run.missing
    summary = make_report(run_dirs, tmp_path, _options(secure_seq_len=8, compute=False), show=False)
    main = pd.read_csv(tmp_path / "tables" / "main-tiny.csv")
    sec = _cache(run_dirs[0], "secure-crypten-2pc-tfp-T8.json")
    assert sec["seq_len"] == 8 and sec["samples"] == 1
    assert main.loc[0, tb.GB] == sec["total"]["bytes"] / 1e9 and main.loc[0, tb.ROUNDS] == sec["total"]["rounds"]
    assert main.loc[0, tb.WAN] == sec["network"]["wan"]["seconds"] and main.loc[0, tb.SAVE_WAN] == 1.0
    assert pd.isna(main.loc[1, tb.GB]) and pd.isna(main.loc[1, tb.SAVE_GB])
    assert "### Quality, entropy and measured private-inference cost" in (tmp_path / "report.md").read_text()
    assert "no secure-crypten-2pc-tfp-T8.json" in summary["missing"][str(run_dirs[1])]["secure"]
    fid = pd.read_csv(tmp_path / "tables" / "fidelity-tiny.csv")
    assert fid.loc[0, "top-1 agreement"] == sec["fidelity"]["top1_agreement"]
    assert sec["audit"]["ok"] and fid.loc[0, "range audit"].startswith("ok (min headroom")
    assert Path(summary["figures"]["tiny"]["operator costs"]).is_file()


def test_cli_json_and_bad_input(run_dirs, computed, tmp_path, capsys):
    from pi_lnfree.cli import main

    main(["report", *map(str, run_dirs), "--out", str(tmp_path / "r"), "--no-compute", "--protocol", str(TFP),
          "--secure-seq-len", "0", "--cost-seq-len", "16", "--eval-batch-size", "8", "--eval-batches", "2",
          "--entropy-batch-size", "4", "--entropy-batches", "1", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert [r[tb.CONFIG] for r in out["tables"]["main-tiny"]] == ["SM+LN+G", "SM+LLR(layer)"]
    assert out["tables"]["main-tiny"][0][tb.PPL] == _cache(run_dirs[0], "eval.json")["ppl"]
    # Without measured costs the markdown's main table leaves out cost columns that would be n/a
    # in every row (the JSON and CSV keep them).
    md = (tmp_path / "r" / "report.md").read_text()
    main_md = md.split("### Quality and entropy (no measured cost: the predicted cost is below)")[1].split("###")[0]
    assert "| SM+LN+G |" in main_md and tb.PPL in main_md and tb.GB not in main_md
    assert "measured private-inference cost" not in md and tb.GB in out["tables"]["main-tiny"][0]
    with pytest.raises(SystemExit) as e:
        main(["report", str(tmp_path), "--out", str(tmp_path / "r2")])
    assert e.value.code == 2
    assert "has no ckpt.pt" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# several profiles: the cross-engine table


def _fake_run(label: str, **results):
    """A stand-in for a RunResult: a label and secure-eval results by pieces key."""
    from types import SimpleNamespace

    pieces = {key: {"total": {"bytes": b, "rounds": r}, "network": {"wan": {"seconds": w}}}
              for key, (b, r, w) in results.items()}
    return SimpleNamespace(label=label, name=label.lower(), pieces=pieces)


def test_cross_engine_table_by_hand():
    runs = [_fake_run("SM+LN+G", secure=(30e6, 300, 40.0), **{"secure@spu-semi2k": (20e6, 500, 50.0)}),
            _fake_run("SM+R", secure=(12e6, 200, 20.0), **{"secure@spu-semi2k": (8e6, 250, 25.0)}),
            _fake_run("SM+G", secure=(24e6, 280, 30.0))]  # no SEMI2K result
    df = tb.cross_engine_table(runs, [("crypten-2pc-ttp", "secure"), ("spu-semi2k", "secure@spu-semi2k")])
    assert list(df[tb.CONFIG]) == ["SM+LN+G", "SM+R", "SM+G"]
    assert list(df["crypten-2pc-ttp MB"]) == [30.0, 12.0, 24.0]
    assert list(df["crypten-2pc-ttp comm savings (x)"]) == [1.0, 2.5, 1.25]  # 30/12, 30/24
    assert list(df["spu-semi2k comm savings (x)"][:2]) == [1.0, 2.5] and pd.isna(df.loc[2, "spu-semi2k MB"])
    assert list(df["spu-semi2k rounds"][:2]) == [500.0, 250.0] and list(df["crypten-2pc-ttp WAN (s)"]) == [40, 20, 30]
    md = tb.to_markdown(df)
    assert "| SM+R | 12.00 | 200 | 20 | 2.50x | 8.00 | 250 | 25 | 2.50x |" in md
    assert "| SM+G | 24.00 | 280 | 30 | 1.25x | n/a | n/a | n/a | n/a |" in md
    # no baseline under a profile: every saving of that profile is n/a
    no_base = tb.cross_engine_table(runs[1:], [("crypten-2pc-ttp", "secure")])
    assert no_base["crypten-2pc-ttp comm savings (x)"].isna().all()
    assert tb.cross_engine_headers(df.columns)[:3] == ["config", "crypten-2pc-ttp\nMB", "\nrounds"]


def test_several_profiles_bad_input_and_spu_cost(run_dirs, computed):
    from pi_lnfree.errors import UserError
    from pi_lnfree.report import compute_piece, skipped_reason

    with pytest.raises(UserError, match="given twice"):
        _options(secure_seq_len=8, compare=["crypten-2pc-tfp"]).validate()
    with pytest.raises(UserError, match="needs secure-eval"):
        _options(compare=["spu-semi2k"]).validate()
    opts = _options(protocol="spu-semi2k")
    opts.validate()
    run = open_run(run_dirs[0])
    assert skipped_reason("cost", run, opts) is None  # the cost model prices SPU profiles too
    pred = compute_piece("cost", run, opts)
    assert pred["predicted"] is True and pred["protocol"]["engine"] == "spu" and pred["calibration"]["exact"]


@pytest.mark.slow
def test_cross_engine_report_equals_the_cached_results(run_dirs, computed, tmp_path, capfd):
    """Real secure-eval of both runs under CrypTen (TFP) and SPU SEMI2K, T=8, through the CLI."""
    from pi_lnfree.cli import main
    from pi_lnfree.secure.spu_engine import SpuMissing, spu_python

    try:
        spu_python()
    except SpuMissing as e:
        pytest.skip(f"no SPU environment ({e}); `make spu` builds it")
    main(["report", *map(str, run_dirs), "--out", str(tmp_path), "--protocol", str(TFP), "--protocol", "spu-semi2k",
          "--secure-seq-len", "8", "--cost-seq-len", "16", "--eval-batch-size", "8", "--eval-batches", "2",
          "--entropy-batch-size", "4", "--entropy-batches", "1", "--json"])
    out = json.loads(capfd.readouterr().out)  # capfd: the parties write to the real stderr
    assert out["missing"] == {str(d): {} for d in run_dirs}  # every piece computed, the cost model for TFP
    cross = pd.read_csv(tmp_path / "tables" / "cross-engine-tiny.csv")
    assert list(cross[tb.CONFIG]) == ["SM+LN+G", "SM+LLR(layer)"]
    for stem in ("crypten-2pc-tfp", "spu-semi2k"):
        res = [_cache(d, f"secure-{stem}-T8.json") for d in run_dirs]
        assert [r["seq_len"] for r in res] == [8, 8]
        assert list(cross[f"{stem} MB"]) == [r["total"]["bytes"] / 1e6 for r in res]
        assert list(cross[f"{stem} rounds"]) == [r["total"]["rounds"] for r in res]
        assert list(cross[f"{stem} WAN (s)"]) == [r["network"]["wan"]["seconds"] for r in res]
        assert list(cross[f"{stem} comm savings (x)"]) == [1.0, res[0]["total"]["bytes"] / res[1]["total"]["bytes"]]
    main_tiny = pd.read_csv(tmp_path / "tables" / "main-tiny.csv")  # the first profile fills the main table
    assert main_tiny.loc[1, tb.GB] == _cache(run_dirs[1], "secure-crypten-2pc-tfp-T8.json")["total"]["bytes"] / 1e9
    md = (tmp_path / "report.md").read_text()
    assert "### Cross-engine comparison" in md and "| configuration | crypten-2pc-tfp MB |" in md
    assert Path(out["figures"]["tiny"]["cross-engine savings"]).is_file()
    assert out["tables"]["cross-engine-tiny"][0]["spu-semi2k comm savings (x)"] == 1.0


def test_same_cost_groups_merge_only_identical_runs_of_one_configuration():
    from pi_lnfree.report_output import same_cost_groups

    def cost(scale: float) -> dict:
        return {"ops": {c: {"bytes": scale * (i + 1)} for i, c in enumerate(tb.CATEGORIES)},
                "network": {"wan": {"ops": {c: scale * 0.5 for c in tb.CATEGORIES}}}}

    items = [("SM+G", "SM+G [sm-g]", cost(1.0)), ("SM+R", "SM+R [sm-r]", cost(2.0)),
             ("SM+G", "SM+G [sm-g-seed2]", cost(1.0)), ("SM+G (plain init)", "SM+G (plain init)", cost(1.0)),
             ("SM+R", "SM+R [sm-r-wider]", cost(3.0)), ("SM+G", "SM+G [sm-g-seed3]", cost(1.0))]
    bars = same_cost_groups(items)
    # Three seeds of SM+G share one bar; the same cost under another label, or another cost under
    # the same label, keeps its own.
    assert [name for name, _ in bars] == ["SM+G (3 runs)", "SM+R [sm-r]", "SM+G (plain init)", "SM+R [sm-r-wider]"]
    assert [res["ops"][tb.CATEGORIES[0]]["bytes"] for _, res in bars] == [1.0, 2.0, 1.0, 3.0]


def test_long_panel_titles_wrap_to_their_panel_and_short_ones_stay():
    from pi_lnfree import plots

    fig, axes = plots.new_figure(6.4, 2.8, ncols=2)
    label = "SM+DyT+R (alpha0 0.5, no embedding scale): overload 100%\nEmin/Emax 1.00, uniform heads 100%"
    plots.set_panel_title(axes[0, 0], label, 3.2, 9)
    plots.set_panel_title(axes[0, 1], "SM+R: overload 75%", 3.2, 9)
    wrapped = axes[0, 0].get_title().split("\n")
    assert len(wrapped) == 3 and " ".join(wrapped) == label.replace("\n", " ")
    assert axes[0, 1].get_title() == "SM+R: overload 75%"
    # Drawn, no line of the wrapped title is wider than its panel.
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    title_width = axes[0, 0].title.get_window_extent(renderer).width
    assert title_width <= axes[0, 0].get_window_extent(renderer).width * 1.15


@pytest.mark.parametrize("piece", ["eval", "entropy"])
def test_a_validation_split_too_short_names_the_reports_own_options(run_dirs, piece):
    # The same shortfall under `pi-lnfree eval/entropy` says --batches/--batch-size
    # (test_diagnostics); here the advice must name options `report` has.
    run = open_run(run_dirs[0])
    opts = _options(**{f"{piece}_batches": 10**6})
    gather_piece(piece, run, opts, key="probe")
    reason = run.missing["probe"]
    need = 10**6 * getattr(opts, f"{piece}_batch_size")
    assert f"lower --{piece}-batches or --{piece}-batch-size" in reason and f"need {need} " in reason
    assert run.pieces["probe"] is None
