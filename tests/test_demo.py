"""The demo's scope section: what a 5-minute budget can and cannot show, from the runs' own
learned-attention checks (hand-made entropy results)."""

from __future__ import annotations

from pathlib import Path

from pi_lnfree.attention_check import attention_check, max_causal_entropy
from pi_lnfree.config import make_config, variant_label
from pi_lnfree.demo import _prepend_section, scope_lines
from pi_lnfree.report import RunResult

T = 128


def run_with(variant: str, entropy: list[list[float]]) -> RunResult:
    cfg = make_config("tiny", variant, vocab_size=64)
    return RunResult(run_dir=Path(variant), name=variant, family="tiny", family_title="tiny", variant=variant,
                     label=variant_label(cfg), config=cfg, data_dir=None,
                     pieces={"entropy": {"entropy": entropy, "attention": attention_check(entropy, T)}})


def test_uniform_lnfree_runs_are_named_with_their_shares():
    h = max_causal_entropy(T)
    runs = [run_with("sm-ln-g", [[0.5 * h] * 4] * 2), run_with("sm-g", [[h] * 4] * 2),
            run_with("sm-r", [[h, h, h, 0.5 * h]] * 2)]
    text = "\n".join(scope_lines(runs, steps=300, batch_size=16, secure_seq_len=32))
    assert "measured and predicted at the same T=32" in text
    assert "0.6M tokens" in text  # 300 x 16 x 127
    assert "SM+G, SM+R still attend uniformly" in text
    assert "SM+LN+G 0%, SM+G 100%, SM+R 75%" in text
    assert "perplexity ordering" in text and "overload" in text
    assert "`benchmarks/cpu_matrix.sh all`" in text and "train.max_steps=2000" in text


def test_learned_runs_get_the_budget_caveat_only():
    h = max_causal_entropy(T)
    runs = [run_with("sm-g", [[0.5 * h] * 4] * 2), run_with("sm-r", [[0.6 * h] * 4] * 2)]
    text = "\n".join(scope_lines(runs, steps=300, batch_size=16, secure_seq_len=32))
    assert "still attend uniformly" not in text and "have learned attention" in text


def test_section_goes_before_the_settings(tmp_path):
    md = tmp_path / "report.md"
    md.write_text("# pi-lnfree report\n\nGenerated x.\n\n## Settings\n\n- a\n")
    _prepend_section(md, ["## What this demo can show, and what it cannot", ""])
    text = md.read_text()
    assert text.index("## What this demo") < text.index("## Settings") and text.endswith("- a\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]
