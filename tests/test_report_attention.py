"""The report's learned-attention caveat: a run whose heads are still uniform (a freshly
initialised LN-free model) carries it next to its numbers; a run with peaked heads does not."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from pi_lnfree import tables as tb
from pi_lnfree.attention_check import LEARNED, MOSTLY_UNIFORM
from pi_lnfree.report import ReportOptions, make_report

REPO = Path(__file__).resolve().parents[1]
OPTS = dict(protocol=REPO / "protocols" / "crypten-2pc-tfp.toml", secure_seq_len=0, cost_seq_len=0,
            eval_batch_size=8, eval_batches=1, entropy_batch_size=4, entropy_batches=1)
WARNING = "**Not meaningful yet:**"


@pytest.fixture(scope="module")
def fresh_run(tmp_path_factory, data_dir) -> Path:
    """An LN-free tiny model after one step at lr 1e-9: its initialisation, as a run dir."""
    from pi_lnfree.runs import train_command

    out = tmp_path_factory.mktemp("fresh") / "sm-r"
    train_command(REPO / "training" / "tiny.toml", [
        f"data.dir={data_dir}", "model.variant=sm-r", "train.max_steps=1", "train.batch_size=2",
        "train.eval_interval=0", "train.entropy_interval=0", "optim.lr=1e-9", "train.progress=false"], out)
    return out


def test_uniform_run_carries_the_warning(fresh_run, tmp_path):
    summary = make_report([fresh_run], tmp_path / "report", ReportOptions(**OPTS), show=False)
    ent = json.loads((fresh_run / "entropy.json").read_text())["result"]
    check = ent["attention"]
    assert check["uniform_share"] == 1.0 and check["verdict"] == MOSTLY_UNIFORM
    assert ent["overload_fraction"] == 1.0 and check["min_over_max"] > 0.999  # overload from sameness
    md = (tmp_path / "report" / "report.md").read_text()
    main_at, warn_at = md.index("| SM+R |"), md.index(WARNING)
    assert main_at < warn_at < md.index("### Predicted")  # next to the numbers
    assert "SM+R: at least 50% of the heads" in md and "2,000-3,000 steps" in md
    att = pd.read_csv(tmp_path / "report" / "tables" / "attention-tiny.csv")
    assert att.loc[0, tb.UNIFORM] == 100.0 and att.loc[0, tb.VERDICT] == MOSTLY_UNIFORM
    assert att.loc[0, "uniform heads per layer (%)"] == "100 / 100"
    main = summary["tables"]["main-tiny"][0]
    assert main[tb.UNIFORM] == 100.0 and main[tb.SPREAD] == check["min_over_max"]


def test_peaked_run_has_no_warning_even_from_an_old_cache(fresh_run, tmp_path):
    """The same checkpoint with a hand-made entropy result of peaked heads, written the way an
    entropy.json from before the check existed looks (no "attention" entry)."""
    run = tmp_path / "peaked"
    shutil.copytree(fresh_run, run)
    doc = json.loads((fresh_run / "entropy.json").read_text())
    doc["request"]["checkpoint"]["file"] = "ckpt.pt"
    res = doc["result"]
    layers, heads = len(res["entropy"]), len(res["entropy"][0])
    hmax = res["max_entropy"]
    # one uniform head per layer, the rest at a quarter of the maximum: 1 of 4 uniform
    res["entropy"] = [[hmax] + [0.25 * hmax] * (heads - 1) for _ in range(layers)]
    del res["attention"]
    (run / "entropy.json").write_text(json.dumps(doc))
    summary = make_report([run], tmp_path / "report", ReportOptions(**OPTS, compute=False), show=False)
    assert "entropy" not in summary["missing"][str(run)]
    md = (tmp_path / "report" / "report.md").read_text()
    assert WARNING not in md
    att = pd.read_csv(tmp_path / "report" / "tables" / "attention-tiny.csv")
    assert att.loc[0, tb.UNIFORM] == 100.0 / heads and att.loc[0, tb.VERDICT] == LEARNED
    assert att.loc[0, tb.SPREAD] == pytest.approx(0.25)
