"""Cost model: predictions vs real secure runs, hand-derived protocol costs, the `cost` command.

The central test runs ONE launch of two real CrypTen parties (TFP: no dealer process, fast) that
measures the tiny calibration design and the secure forward of tiny configs of every variant at
two sequence lengths; predictions from the fitted unit costs, and from the committed calibration
file, must give the measured rounds exactly and the measured bytes within 1%.
"""

from __future__ import annotations

import json

import pytest

from pi_lnfree.cli import main
from pi_lnfree.config import make_config
from pi_lnfree.errors import UserError
from pi_lnfree.resources import protocol_file
from pi_lnfree.secure import costmodel
from pi_lnfree.secure.calibrate import design, fit, measure
from pi_lnfree.secure.cost_features import PairwiseStage, max_schedule
from pi_lnfree.secure.costmodel import (
    Calibration,
    Call,
    load_calibration,
    predicted_state,
    trace,
)
from pi_lnfree.secure.meter import CATEGORIES
from pi_lnfree.secure.profile import load_networks, load_profile

TFP = protocol_file("crypten-2pc-tfp")
TTP = protocol_file("crypten-2pc-ttp")
SEQ_LENS = (8, 20)  # different max schedules: 8 -> 4 -> 2 (all-pairs over 2); 20 -> 10 -> 5 (over 5)


def tiny(variant: str, **overrides):
    return make_config("tiny", variant, vocab_size=64, **{"n_layer": 1, **overrides})


def validation_configs() -> dict[str, object]:
    """Tiny configs covering every variant and switch of the secure model."""
    return {
        "sm-ln-g": tiny("sm-ln-g"),
        "sm-ln-r": tiny("sm-ln-r"),
        "sm-g": tiny("sm-g"),
        "sm-r": tiny("sm-r"),
        "sm-lrelu-layer": tiny("sm-lrelu-layer"),
        "sm-lrelu-global": tiny("sm-lrelu-global", n_layer=2),
        "hybrid, no final norm": tiny("sm-ln-hybrid:relu,gelu_tanh", n_layer=2, final_norm=False),
        "fixed leaky": tiny("sm-hybrid:leaky_relu"),
        "rotary, parallel, untied, no bias": tiny(
            "sm-ln-g", position="rotary", residual="parallel", tie_embeddings=False, bias=False
        ),
    }


@pytest.fixture(scope="module")
def measured_run():
    """One launch: the tiny calibration design + every validation forward, both lengths."""
    profile = load_profile(TFP)
    calls = design(profile, timing=False)
    cases = [(name, cfg, T) for name, cfg in validation_configs().items() for T in SEQ_LENS]
    forwards = [{"type": "forward", "config": cfg.to_dict(), "T": T} for _, cfg, T in cases]
    states = measure(profile, calls + forwards, timeout_s=120)
    cal = fit(profile, calls, states[: len(calls)])
    return profile, cal, cases, [s[0] for s in states[len(calls):]]


def assert_prediction_matches(pred: dict, meas: dict, label: str) -> None:
    for cat in CATEGORIES:
        p, m = pred["ops"][cat], meas["ops"][cat]
        assert p["calls"] == m["calls"], (label, cat, "calls", p, m)
        assert p["rounds"] == m["rounds"], (label, cat, "rounds", p, m)
        assert p["dealer_requests"] == m["dealer_requests"], (label, cat, p, m)
        for fld in ("bytes", "dealer_bytes"):
            assert abs(p[fld] - m[fld]) <= 0.01 * m[fld] + 1e-6, (label, cat, fld, p[fld], m[fld])
    assert pred["span"]["rounds"] == meas["span"]["rounds"], label
    assert abs(pred["span"]["bytes"] - meas["span"]["bytes"]) <= 0.01 * meas["span"]["bytes"], label


def test_predictions_equal_real_secure_runs(measured_run):
    _, cal, cases, states = measured_run
    for (name, cfg, T), meas in zip(cases, states, strict=True):
        assert meas["span"]["rounds"] > 0 and meas["span"]["bytes"] > 0
        assert_prediction_matches(predicted_state(trace(cfg, T), cal), meas, f"{name} T={T}")


def test_committed_calibration_is_current(measured_run):
    """The shipped unit costs still describe the engine (else: pi-lnfree cost --calibrate PROFILE)."""
    profile, _, cases, states = measured_run
    committed = load_calibration(profile)
    for (name, cfg, T), meas in zip(cases, states, strict=True):
        label = f"{name} T={T}: {costmodel.calibration_path(TFP).name} is stale, rerun pi-lnfree cost --calibrate"
        assert_prediction_matches(predicted_state(trace(cfg, T), committed), meas, label)


def test_fitted_unit_costs_match_the_protocol(measured_run):
    """Coefficients the fit finds equal what CrypTen's protocol implies, derived by hand: a Beaver
    matmul opens both masked operands with one all-reduce (2 x 8 bytes per element at each party,
    halved for double counting -> 16 bytes per element, 1 round); the LM head also sends its T x V
    logits shares to the client (8 bytes per element, 1 more round); local ops cost nothing."""
    _, cal, _, _ = measured_run
    for kind in ("linear", "embedding"):
        c = dict(zip(cal.kinds[kind].features["size"], cal.kinds[kind].coef["bytes"], strict=True))
        assert c == pytest.approx({"x": 16, "w": 16, "y": 0, "one": 0}, abs=1e-6)
        assert cal.kinds[kind].coef["rounds"] == [1]
    c = dict(zip(cal.kinds["lm_head"].features["size"], cal.kinds["lm_head"].coef["bytes"], strict=True))
    assert c == pytest.approx({"x": 16, "w": 16, "y": 8, "one": 0}, abs=1e-6)
    assert cal.kinds["lm_head"].coef["rounds"] == [2]
    assert cal.kinds["other"].coef["bytes"] == pytest.approx([0, 0], abs=1e-9)
    assert cal.kinds["other"].coef["rounds"] == [0]


def test_max_schedule_by_hand():
    s = max_schedule(128, "log_reduction")  # int(ln 128) = 4 halvings: 128 -> 64 -> 32 -> 16 -> 8
    assert (s.steps, s.tree_pairs, s.stages) == (4, 64 + 32 + 16 + 8, (PairwiseStage(1, 8),))
    assert s.stages[0].prod_levels == 3 and not s.stages[0].sums  # prod of 7 factors: 7 -> 4 -> 2 -> 1
    s = max_schedule(20, "log_reduction")  # int(ln 20) = 2: 20 -> 10 -> 5; prod of 4 factors: 2 levels
    assert (s.steps, s.tree_pairs, s.stages[0].m, s.stages[0].prod_levels) == (2, 15, 5, 2)
    s = max_schedule(23, "log_reduction")  # 3 halvings with odd remainders: 23 -> 12 -> 6 -> 3
    assert (s.steps, s.tree_pairs, s.stages[0].m) == (3, 11 + 6 + 3, 3)
    s = max_schedule(200, "pairwise")  # all pairs at once; 199 factors are summed, not multiplied
    assert (s.steps, s.stages) == (0, (PairwiseStage(1, 200),))
    assert s.stages[0].sums and s.stages[0].prod_levels == 0
    # double log: 16 = 4 blocks of 4 -> each block 2 blocks of 2 -> pairs; maxima combined upwards
    assert max_schedule(16, "double_log_reduction").stages == (PairwiseStage(8, 2), PairwiseStage(4, 2),
                                                               PairwiseStage(1, 4))
    # 10 = 3 blocks of 3 + 1 left over: the last stage sees 3 block maxima and the remainder
    assert max_schedule(10, "double_log_reduction").stages == (PairwiseStage(3, 3), PairwiseStage(1, 4))
    # cascade: int(ln ln ln 128) + 1 = 1 halving (128 -> 64), then double log over 64
    s = max_schedule(128, "accelerated_cascade")
    assert (s.steps, s.tree_pairs) == (1, 64)
    assert s.stages == (PairwiseStage(32, 2), PairwiseStage(8, 4), PairwiseStage(1, 8))
    with pytest.raises(UserError, match="max_method"):
        max_schedule(8, "bogus")




def test_cost_json_matches_secure_eval_shape_and_network_model(capsys):
    main(["cost", "--preset", "gpt2-small", "--variant", "sm-ln-g", "--protocol", str(TTP), "--seq-len", "128",
          "--json"])
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert "predicted" in captured.err and "linear" in captured.err  # the rich table goes to stderr
    assert out["predicted"] is True and "fidelity" not in out
    for key in ("checkpoint", "variant", "label", "protocol", "seq_len", "samples", "total", "per_token", "ops",
                "network"):
        assert key in out
    assert (out["variant"], out["label"]) == ("sm-ln-g", "SM+LN+G") and out["seq_len"] == 128 and out["checkpoint"] is None
    assert out["wall_seconds"] < 1.0  # the prediction itself (imports aside)
    total = out["total"]
    for fld in ("bytes", "rounds", "seconds"):
        assert total[fld] == pytest.approx(sum(out["ops"][c][fld] for c in CATEGORIES))
        assert out["per_token"][fld] == pytest.approx(total[fld] / 128)
    for name, net in load_networks().items():
        want = total["seconds"] + total["rounds"] * net.rtt_ms / 1000 + total["bytes"] * 8 / net.bandwidth_bits_per_s
        assert out["network"][name]["seconds"] == pytest.approx(want)
    # 12 layers x (QKV, proj, fc, proj) Beaver matmuls: 16 bytes per opened operand element
    d, T = 768, 128
    per_layer = sum(T * i + i * o for i, o in ((d, 3 * d), (d, d), (d, 4 * d), (4 * d, d)))
    assert out["ops"]["linear"]["bytes"] == pytest.approx(16 * 12 * per_layer)
    assert out["ops"]["linear"]["rounds"] == 48 and out["ops"]["layernorm"]["calls"] == 25


def test_ln_free_relu_predicts_less_than_the_baseline():
    profile = load_profile(TTP)
    pred = {v: costmodel.predict(make_config("gpt2-small", v), profile, 128) for v in ("sm-ln-g", "sm-r")}
    base, free = pred["sm-ln-g"], pred["sm-r"]
    assert free["ops"]["layernorm"]["calls"] == 1  # only the final norm remains
    assert free["ops"]["activation"]["bytes"] < base["ops"]["activation"]["bytes"]
    assert free["total"]["rounds"] < base["total"]["rounds"]
    for cat in ("embedding", "linear", "attention", "softmax", "lm_head"):
        assert free["ops"][cat]["bytes"] == base["ops"][cat]["bytes"]


def test_refusals(tmp_path):
    profile = load_profile(TTP)
    other = tmp_path / "custom.toml"
    text = TTP.read_text()
    assert 'gelu = "tanh"' in text
    other.write_text(text.replace('gelu = "tanh"', 'gelu = "erf"'))
    with pytest.raises(UserError, match="not calibrated"):
        load_calibration(load_profile(other))
    (tmp_path / "custom.calibration.json").write_text(costmodel.calibration_path(TTP).read_text())
    with pytest.raises(UserError, match="does not match"):
        load_calibration(load_profile(other))
    cal = load_calibration(profile)
    fit_ = cal.kinds["softmax"]
    narrow = Calibration(cal.knobs, {"softmax": costmodel.KindFit(fit_.features, fit_.coef, {
        "size": fit_.design["size"][:3], "count": fit_.design["count"][:3]})}, path="narrow")
    with pytest.raises(UserError, match="does not cover"):
        narrow.call_cost(Call.make("softmax", "softmax", H=12, T=128))
    for args in (["cost", "--preset", "gpt2-small", "--protocol", str(TTP), "--seq-len", "8"],
                 ["cost", "--preset", "gpt2-small", "--variant", "sm-r", "--protocol", str(TTP), "--seq-len", "999"],
                 ["cost", "--calibrate", str(TTP), "--seq-len", "8"],
                 ["cost", "--preset", "gpt2-small", "--variant", "sm-r", "--protocol", str(other), "--seq-len", "8"]):
        with pytest.raises(SystemExit) as exc:
            main(args)
        assert exc.value.code == 2, args


def test_cost_from_checkpoint_and_overrides(tmp_path, capsys):
    from pi_lnfree.checkpoint import save_checkpoint
    from pi_lnfree.model import GPT

    cfg = make_config("tiny", "sm-lrelu-global", vocab_size=64)
    ckpt = tmp_path / "ckpt.pt"
    save_checkpoint(ckpt, GPT(cfg).state_dict(), cfg)
    main(["cost", str(ckpt), "--protocol", str(TFP), "--seq-len", "16", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["checkpoint"] == str(ckpt) and out["seq_len"] == 16
    assert (out["variant"], out["label"]) == ("sm-lrelu-global", "SM+LLR(global)")
    assert out["ops"]["layernorm"]["calls"] == 1 and out["ops"]["activation"]["calls"] == 2
    main(["cost", str(tmp_path), "--set", "model.final_norm=false", "--protocol", str(TFP), "--seq-len", "16", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["ops"]["layernorm"]["calls"] == 0 and out["label"] == "SM+LLR(global) (no final LN)"
    with pytest.raises(SystemExit) as exc:
        main(["cost", str(ckpt), "--preset", "tiny", "--protocol", str(TFP), "--seq-len", "16"])
    assert exc.value.code == 2
