"""Cost model under SecretFlow SPU profiles: the shipped calibrations, predictions vs real SPU runs.

Without the SPU environment only the checks that read the shipped calibration files run (SPU's
max-tree and product-tiling rules by hand, the prediction of a real 12-layer GPT-2 SEMI2K run,
the prediction's shape, a profile/calibration mismatch, the fit notes of CHEETAH and ABY3); the
others skip. With it, ONE launch of two SEMI2K parties measures a few primitives of the
calibration design and whole secure forwards of tiny configs; the fit of those primitives must
be exact and equal a hand count of SPU's protocol, the shipped unit costs must predict each
measured call, and the shipped calibration every forward's per-category bytes, rounds (send
actions) and calls exactly.
(`tests/test_spu.py` compares the prediction with a real `secure-eval` of a trained checkpoint.)
"""

from __future__ import annotations

import json

import pytest

from pi_lnfree.cli import main
from pi_lnfree.config import make_config
from pi_lnfree.errors import UserError
from pi_lnfree.resources import protocol_file
from pi_lnfree.secure.calibrate import design, fit
from pi_lnfree.secure.cost_features import spu_max_steps, spu_mmul_blocks
from pi_lnfree.secure.costmodel import Calibration, load_calibration, predict, predicted_state, trace
from pi_lnfree.secure.meter import CATEGORIES
from pi_lnfree.secure.profile import load_profile

SEMI2K = protocol_file("spu-semi2k")
CHEETAH = protocol_file("spu-cheetah")
# the design's kinds whose fit the launch repeats: matmuls, the softmax (SPU's max tree), the
# rotary positions (the one `other` call that talks under SPU), a nonlinearity
REFIT_KINDS = ("linear", "lm_head", "softmax", "other", "activation:relu")


def tiny(variant: str, **overrides):
    return make_config("tiny", variant, vocab_size=64, **{"n_layer": 1, **overrides})


CASES = {
    "sm-r T=16": (tiny("sm-r"), 16),
    "sm-ln-g T=32": (tiny("sm-ln-g"), 32),
    "rotary, parallel, learnable leaky, untied, no bias T=13": (
        tiny("sm-lrelu-layer", position="rotary", residual="parallel", tie_embeddings=False, bias=False), 13),
}


def _spu_or_skip():
    from pi_lnfree.secure.spu_engine import SpuMissing, spu_python

    try:
        spu_python()
    except SpuMissing as e:
        pytest.skip(f"no SPU environment ({e})")


@pytest.fixture(scope="module")
def semi2k_run():
    """One launch of two SEMI2K parties: the design's calls of `REFIT_KINDS` + every forward."""
    from pi_lnfree.secure.spu_engine import measure_local

    _spu_or_skip()
    profile = load_profile(SEMI2K)
    calls = [i for i in design(profile, timing=False) if i["kind"] in REFIT_KINDS]
    forwards = [{"type": "forward", "config": cfg.to_dict(), "T": T, "seed": 1} for cfg, T in CASES.values()]
    states, _ = measure_local(profile, calls + forwards, timeout_s=300)
    return profile, fit(profile, calls, states[: len(calls)]), [s[0] for s in states[len(calls):]]


# ---------------------------------------------------------------------------------------------
# with the SPU environment


@pytest.mark.slow
def test_fit_is_exact_and_equals_the_hand_count(semi2k_run):
    """SEMI2K (FM64) matmul, both parties: each sends its shares of X - A and W - B (8 bytes per
    ring element) and 4 bytes per product element for SPU's probabilistic truncation, in 2 send
    actions; the LM head then sends the server's 8-byte shares of the T x V logits (1 action).
    `fit` raised nothing, so every measured call was reproduced exactly."""
    _, cal, _ = semi2k_run
    assert cal.exact
    c = dict(zip(cal.kinds["linear"].features["size"], cal.kinds["linear"].coef["bytes"], strict=True))
    assert c == pytest.approx({"x": 16, "w": 16, "y": 8, "one": 0, "partial": 0}, abs=1e-6)
    assert cal.kinds["linear"].features["count"] == ["one", "blocks"]
    assert cal.kinds["linear"].coef["rounds"] == pytest.approx([2, 0], abs=1e-9)  # no tiled call here
    c = dict(zip(cal.kinds["lm_head"].features["size"], cal.kinds["lm_head"].coef["bytes"], strict=True))
    assert c == pytest.approx({"x": 16, "w": 16, "y": 16, "one": 0, "partial": 0}, abs=1e-6)
    assert cal.kinds["lm_head"].coef["rounds"] == pytest.approx([3, 0], abs=1e-9)
    # residual adds are local; the rotary products with the public tables are truncated (talks)
    c = dict(zip(cal.kinds["other"].features["size"], cal.kinds["other"].coef["bytes"], strict=True))
    assert c["elements"] == pytest.approx(0, abs=1e-9) and c["rotated"] > 0


@pytest.mark.slow
def test_shipped_calibration_predicts_each_measured_call(semi2k_run):
    """The shipped unit costs still describe the engine (else: pi-lnfree cost --calibrate): they
    predict the bytes and rounds of every freshly measured call of the design exactly."""
    profile, cal, _ = semi2k_run
    shipped = load_calibration(profile)
    for kind in REFIT_KINDS:
        fresh = cal.kinds[kind]
        assert fresh.features == shipped.kinds[kind].features, kind
        for row_size, row_count in zip(fresh.design["size"], fresh.design["count"], strict=True):
            for fld, row in (("bytes", row_size), ("rounds", row_count)):
                mine = sum(c * f for c, f in zip(fresh.coef[fld], row, strict=True))
                theirs = sum(c * f for c, f in zip(shipped.kinds[kind].coef[fld], row, strict=True))
                assert theirs == pytest.approx(mine, abs=1e-6), (kind, fld, row)


@pytest.mark.slow
def test_shipped_calibration_predicts_real_forwards_exactly(semi2k_run):
    profile, _, states = semi2k_run
    shipped = load_calibration(profile)
    for (label, (cfg, T)), meas in zip(CASES.items(), states, strict=True):
        pred = predicted_state(trace(cfg, T), shipped)
        assert meas["span"]["bytes"] > 0
        for cat in CATEGORIES:
            for fld in ("bytes", "rounds", "calls"):
                assert pred["ops"][cat][fld] == meas["ops"][cat][fld], (label, cat, fld)
        assert pred["span"]["bytes"] == meas["span"]["bytes"] and pred["span"]["rounds"] == meas["span"]["rounds"]


# ---------------------------------------------------------------------------------------------
# from the shipped files alone


def test_cost_command_under_spu_has_secure_evals_shape(capsys):
    main(["cost", "--preset", "tiny", "--variant", "sm-r", "--vocab-size", "64", "--protocol", "spu-semi2k",
          "--seq-len", "16", "--json"])
    r = json.loads(capsys.readouterr().out)
    assert r["predicted"] is True and r["protocol"]["engine"] == "spu"
    assert set(r["ops"]) == set(CATEGORIES) and "phases" not in r  # SPU's secure-eval has no phases
    assert r["parties"] == {"mode": "predicted (no parties run)", "world_size": 2, "dealer": False, "engine": "spu"}
    assert r["calibration"]["exact"] is True and r["ops"]["softmax"]["rounds"] > 0
    assert r["total"]["bytes"] == sum(r["ops"][c]["bytes"] for c in CATEGORIES)
    aby3 = predict(tiny("sm-r"), load_profile("spu-aby3"), 16)
    assert aby3["parties"]["world_size"] == 3 and aby3["calibration"]["exact"] is False
    # ABY3 draws its party roles per call: bytes stay exact, the busiest party's send actions not
    assert set(aby3["calibration"]["max_relative_residual"]) == {"rounds"}
    assert "bytes is exact; rounds (largest relative residual" in aby3["seconds_note"]


def test_spu_max_tree_and_tiling_rules_by_hand():
    """SPU 0.9.5's row max (TreeReduce): a row of 23 halves 23 -> 11 -> 5 -> 2 -> 1 (4 levels)
    and sets aside the odd entry of 23, 11 and 5, compared one by one after (3 more steps). Its
    product tiling (calcMmulTilingSize, 256 MiB of shares): GPT-2-small's LM head at V=52,000
    under SEMI2K, (128 x 768) @ (768 x 52000), has (128*768 + 768*52000) * 8 B = 320 MB of shares;
    m + n > 8k, so k stays whole, m + n gets ceil(2^25 / 768) = 43691 per block, i.e. rows
    43691*128 // 52128 = 107 and columns 43691*52000 // 52128 = 43583: 2 x 2 blocks. The
    embedding's (128 x 52000) @ (52000 x 768) is tall and skinny in k: 2 inner blocks."""
    assert [spu_max_steps(T) for T in (1, 2, 3, 4, 8, 23, 128)] == [0, 1, 2, 2, 3, 7, 7]
    assert spu_mmul_blocks(128, 52000, 768, 8) == (2, 2, 1)
    assert spu_mmul_blocks(128, 768, 52000, 8) == (1, 1, 2)
    assert spu_mmul_blocks(128, 8192, 768, 8) == (1, 1, 1)
    assert spu_mmul_blocks(128, 52000, 768, 16) == (3, 3, 1)  # ABY3: two ring elements per share


# A real secure-eval of GPT-2-small (12 layers, V=52,000, T=128, random weights, SM+R) under two
# SPU 0.9.5 SEMI2K parties (`benchmarks/spu_gpt2.py measure --full`): per category, bytes of both
# parties and send actions of the busiest. Its logits reveal still carried a 43-byte framing that
# SPU's reveal no longer sends (lm_head below is the measured 1,387,593,771 minus those 43 bytes).
GPT2_SM_R_SEMI2K = {
    "embedding": (746_258_432, 3), "linear": (1_576_009_728, 96), "attention": (132_120_576, 588),
    "softmax": (940_806_144, 1344), "layernorm": (11_908_352, 34), "activation": (679_477_248, 96),
    "lm_head": (1_387_593_728, 6), "other": (0, 0),
}


def test_shipped_semi2k_calibration_predicts_a_real_gpt2_run():
    """Exact per category, including the LM head and embedding that SPU tiles at V=52,000."""
    cfg = make_config("gpt2-small", "sm-r", vocab_size=52000, n_layer=12)
    ops = predict(cfg, load_profile(SEMI2K), 128)["ops"]
    assert {c: (ops[c]["bytes"], ops[c]["rounds"]) for c in CATEGORIES} == GPT2_SM_R_SEMI2K


def test_a_tiled_product_beyond_cheetahs_calibration_is_refused():
    with pytest.raises(UserError, match=r"embedding call.*SPU tiles this product into 2 blocks .*beyond the calibrated regime"):
        predict(make_config("gpt2-small", "sm-r", vocab_size=52000, n_layer=1), load_profile(CHEETAH), 128)


def test_cheetah_prediction_says_it_is_a_fit():
    cal = load_calibration(load_profile(CHEETAH))
    assert not cal.exact and 0 < cal.max_residual()["bytes"] == cal.meta["max_relative_residual"]["bytes"]
    r = predict(tiny("sm-ln-g"), load_profile(CHEETAH), 16, cal=cal)
    assert r["calibration"]["exact"] is False and "least-squares fit" in r["seconds_note"]


def test_a_calibration_of_another_profile_is_refused(tmp_path):
    cheetah = load_profile(CHEETAH)
    with pytest.raises(UserError, match=r"does not match profile spu-cheetah \(.*spu_protocol: calibrated 'SEMI2K'"):
        load_calibration(cheetah, protocol_file("spu-semi2k").with_name("spu-semi2k.calibration.json"))
    crypten = load_profile("crypten-2pc-ttp")
    with pytest.raises(UserError, match="does not match profile crypten-2pc-ttp .*engine: calibrated 'spu'"):
        load_calibration(crypten, protocol_file("spu-semi2k").with_name("spu-semi2k.calibration.json"))
    # one line, exit code 2, from the command
    mine = tmp_path / "mine.toml"
    mine.write_text(CHEETAH.read_text())
    Calibration.load(protocol_file("spu-semi2k").with_name("spu-semi2k.calibration.json")).save(
        tmp_path / "mine.calibration.json")
    with pytest.raises(SystemExit) as e:
        main(["cost", "--preset", "tiny", "--variant", "sm-r", "--protocol", str(mine), "--seq-len", "16"])
    assert e.value.code == 2
