"""The SecretFlow SPU engine (`engine = "spu"` profiles).

Without the SPU environment (`make spu`) only the profile and missing-environment checks run; the
others skip, saying so. With it:

* every operator of the SPU backend, run by two real SEMI2K parties (`tests/spu_primitives.py`),
  against the float64 backend (`Torch64Ops`) within `TOLERANCE`;
* the bytes of one matrix product equal the Beaver hand count, and of one ReLU SPU's own link
  total in its in-memory simulator;
* a briefly trained tiny SM+LN+G checkpoint end to end under SEMI2K: logits vs plaintext, every
  byte attributed to a category, the cost model's prediction of its costs (exact), and the
  server's view of the client's one-hot rows.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pi_lnfree.errors import UserError
from pi_lnfree.secure.meter import CATEGORIES
from pi_lnfree.secure.profile import load_profile, profile_from_dict

ROOT = Path(__file__).resolve().parents[1]
SEMI2K = ROOT / "protocols" / "spu-semi2k.toml"
SPU_PROFILES = {"spu-semi2k": ("SEMI2K", 2, True), "spu-cheetah": ("CHEETAH", 2, False), "spu-aby3": ("ABY3", 3, False)}
FRACTION_BITS = 18

# Max |secure - float64| per operator under SEMI2K (FM64, 18 fractional bits) on the inputs of
# `tests/spu_primitives.py` (|x| up to ~8). E = 2^-18: SPU encodes a value with an error below E,
# so local maths on k encoded inputs stays within k E (head split/merge, residual sums, ReLU,
# leaky ReLU with a public slope). One product of secrets (Beaver) adds a probabilistic
# truncation (< E) per output, plus the operands' encoding errors times a fan-in of 8-64: ~1e-4
# for the matrix products, a few E for a secret slope or the public rotary tables. softmax: exp
# by (1 + x/256)^256 and a Goldschmidt reciprocal (< 1e-2 on probabilities). layernorm: SPU's
# rsqrt (relative error ~1e-3) on outputs up to ~4. GELU via the tanh formula: SPU's Chebyshev
# tanh is within 5e-3 of tanh, so 0.5 |x| 5e-3 ~ 2e-2 at |x| = 8; Dynamic Tanh: that 5e-3 times
# gamma ~ 1.
E = 2.0 ** -FRACTION_BITS
TOLERANCE = {
    "matmul": 2e-4, "linear": 2e-4, "embedding": 1e-4, "attention_scores": 2e-4, "attention_mix": 1e-4,
    "softmax": 1e-2, "layernorm": 3e-3, "dyt": 1e-2, "relu": 2 * E, "gelu": 2.5e-2, "gelu_tanh": 2.5e-2,
    "leaky_relu": 4 * E, "learnable_leaky": 8 * E, "split_heads": 2 * E, "merge_heads": 2 * E, "add": 4 * E,
    "rotary": 8 * E,
}
LOCAL = ("split_heads", "merge_heads", "add")  # no communication at all


def _spu_python() -> Path:
    from pi_lnfree.secure.spu_engine import SpuMissing, spu_python

    try:
        return spu_python()
    except SpuMissing as e:
        pytest.skip(f"no SPU environment ({e})")


# ---------------------------------------------------------------------------------------------
# without the SPU environment


@pytest.mark.parametrize("name", sorted(SPU_PROFILES))
def test_spu_profiles_load(name):
    protocol, world, benchmark_only = SPU_PROFILES[name]
    p = load_profile(ROOT / "protocols" / f"{name}.toml")
    assert (p.engine, p.spu_protocol, p.world_size, p.benchmark_only) == ("spu", protocol, world, benchmark_only)
    assert p.spu_field == "FM64" and p.precision_bits == FRACTION_BITS
    assert ("benchmark only" in p.security) == benchmark_only


def test_profile_keys_of_the_other_engine_are_refused():
    spu = {"protocol": {"name": "x", "engine": "spu", "provider": "TFP"}}
    profile_from_dict(spu)
    with pytest.raises(UserError, match="max_method.*engine 'crypten' only"):
        profile_from_dict({**spu, "approximations": {"max_method": "pairwise"}})
    with pytest.raises(UserError, match="engine 'spu' only"):
        profile_from_dict({"protocol": {"name": "x"}, "spu": {"protocol": "SEMI2K"}})
    with pytest.raises(UserError, match="provider must be 'none'"):
        profile_from_dict({"protocol": {"name": "x", "engine": "spu", "provider": "TFP"}, "spu": {"protocol": "CHEETAH"}})
    with pytest.raises(UserError, match="protocol must be one of"):
        profile_from_dict({"protocol": {"name": "x", "engine": "spu", "provider": "none"}, "spu": {"protocol": "SPDZ"}})


def test_audit_refuses_spu_profiles():
    """The range audit models CrypTen's approximations; an SPU profile is measured instead."""
    from pi_lnfree.config import make_config
    from pi_lnfree.secure.audit import audit

    profile = load_profile(SEMI2K)
    cfg = make_config("tiny", "sm-r", vocab_size=64, block_size=16)
    with pytest.raises(UserError, match="crypten engine only"):
        audit(cfg, {}, profile, torch.zeros(1, 4, dtype=torch.long))


def test_missing_spu_environment_is_one_line_and_exit_2(tmp_path, monkeypatch):
    from pi_lnfree.secure import spu_engine

    monkeypatch.delenv(spu_engine.ENV_VAR, raising=False)
    monkeypatch.setattr(spu_engine, "_candidate_roots", lambda: [tmp_path])
    with pytest.raises(spu_engine.SpuMissing, match="make spu"):
        spu_engine.spu_python()
    env = {**os.environ, spu_engine.ENV_VAR: str(tmp_path / "no-python")}
    proc = subprocess.run([sys.executable, "-m", "pi_lnfree.cli", "secure-eval", str(tmp_path / "ckpt.pt"),
                           "--protocol", str(SEMI2K)], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "make spu" in lines[0], proc.stderr


# ---------------------------------------------------------------------------------------------
# every operator under two SEMI2K parties


@pytest.fixture(scope="module")
def primitives(tmp_path_factory):
    from pi_lnfree.secure.parties import free_port
    from pi_lnfree.secure.spu_engine import _package_path

    python = _spu_python()
    tmp = tmp_path_factory.mktemp("spu-primitives")
    env = {**os.environ, "PYTHONPATH": str(_package_path(tmp)), "PYTHONNOUSERSITE": "1"}
    addresses = ",".join(f"127.0.0.1:{free_port()}" for _ in range(2))
    script = str(ROOT / "tests" / "spu_primitives.py")
    procs = [subprocess.Popen([str(python), script, str(r), addresses, str(SEMI2K), str(tmp)], env=env,
                              stdout=subprocess.DEVNULL) for r in range(2)]
    try:
        codes = [p.wait(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert codes == [0, 0], f"SPU primitive parties exited with {codes}"
    data = dict(np.load(tmp / "primitives.npz"))
    costs = [json.loads((tmp / f"costs{r}.json").read_text()) for r in range(2)]
    return data, costs


def _reference(name: str, t: dict[str, torch.Tensor]):
    """The float64 result of case `name` (`tests/spu_primitives.py`) by the exact backend."""
    from pi_lnfree.secure.backends.torch64 import Torch64Ops

    ops = Torch64Ops()
    return {
        "matmul": lambda: ops.linear(t["x"], t["w"]),
        "linear": lambda: ops.linear(t["x"], t["w"], t["b"]),
        "embedding": lambda: ops.embedding(t["onehot"], t["table"], t["positions"]),
        "attention_scores": lambda: ops.attention_scores(t["q"], t["k"]),
        "attention_mix": lambda: ops.attention_mix(t["probs"], t["v"]),
        "softmax": lambda: ops.softmax(t["scores"]),
        "layernorm": lambda: ops.layernorm(t["ln_x"], t["gamma"], t["beta"], 1e-5),
        "dyt": lambda: ops.dyt(t["ln_x"], t["alpha"], t["gamma"], t["beta"]),
        "relu": lambda: ops.activation(t["act_x"], "relu", None),
        "gelu": lambda: ops.activation(t["act_x"], "gelu", None),
        "gelu_tanh": lambda: ops.activation(t["act_x"], "gelu_tanh", None),
        "leaky_relu": lambda: ops.activation(t["act_x"], "leaky_relu", 0.1),
        "learnable_leaky": lambda: ops.activation(t["act_x"], "learnable_leaky", t["slope"][0]),
        "split_heads": lambda: ops.split_heads(t["qkv"], 4),
        "merge_heads": lambda: ops.merge_heads(t["q"]),
        "add": lambda: ops.add(t["x"], t["ln_x"], t["x"]),
        "rotary": lambda: ops.rotary(t["q"], t["k"], t["cos"], t["sin"]),
    }[name]()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TOLERANCE))
def test_each_operator_matches_float64(primitives, name):
    data, costs = primitives
    t = {k[3:]: torch.from_numpy(v).double() for k, v in data.items() if k.startswith("in.")}
    ref = _reference(name, t)
    refs = ref if isinstance(ref, tuple) else (ref,)
    for i, r in enumerate(refs):
        secure = torch.from_numpy(data[f"{name}.{i}"]).double()
        assert secure.shape == r.shape
        err = float((secure - r).abs().max())
        assert err <= TOLERANCE[name], f"{name}[{i}]: max |error| {err:.3g} > {TOLERANCE[name]}"
    # head split/merge and residual sums are local; everything else talks, rotary too (the product
    # with the public cos/sin tables is truncated, which SEMI2K does interactively)
    assert (costs[0][name]["bytes"] == 0) == (name in LOCAL)


@pytest.mark.slow
def test_matmul_bytes_equal_the_beaver_hand_count(primitives):
    """(1, T, d) @ (d, n) under SEMI2K: each party sends its shares of X - A and W - B (8 bytes per
    ring element of Z_2^64) in one message, then 4 bytes per product element for SPU 0.9.5's
    probabilistic truncation (its MPC profile's `trunc_a`) in a second: 2 actions per party."""
    _, costs = primitives
    T, d, n = 16, 32, 48
    per_party = 8 * (T * d + d * n) + 4 * T * n
    assert [c["matmul"]["bytes"] for c in costs] == [per_party, per_party]
    assert [c["matmul"]["rounds"] for c in costs] == [2, 2]
    assert costs[0]["linear"]["bytes"] == per_party  # adding the bias is local


@pytest.mark.slow
def test_relu_bytes_equal_spus_own_link_total(primitives):
    """The metered bytes of one ReLU equal what SPU's in-memory simulator reports for max(x, 0)
    on the same shape (party 0's link total; SEMI2K is symmetric)."""
    _, costs = primitives
    assert costs[0]["simulator_relu_bytes"] > 0
    assert costs[0]["relu"]["bytes"] == costs[1]["relu"]["bytes"] == costs[0]["simulator_relu_bytes"]


# ---------------------------------------------------------------------------------------------
# end to end: a trained tiny checkpoint under SEMI2K


@pytest.fixture(scope="module")
def secure_run(data_dir, tmp_path_factory):
    from test_secure_eval import _train_tiny

    from pi_lnfree.secure.evaluate import secure_eval

    _spu_python()
    ckpt = _train_tiny("sm-ln-g", data_dir, tmp_path_factory.mktemp("spu-e2e") / "ln_gelu.pt")
    return secure_eval(ckpt, SEMI2K, seq_len=16, samples=1, data=data_dir, timeout_s=300, capture_server_view=True)


@pytest.mark.slow
def test_end_to_end_logits_match_plaintext(secure_run):
    """Logits of the whole model (two layers of the operator errors above, on logits up to ~5)
    within 1e-2, the same top-1 token almost everywhere, perplexity within 1%."""
    r = secure_run
    fid = r["fidelity"]
    assert fid["max_abs_logit_error"] < 1e-2, fid
    assert fid["top1_agreement"] >= 0.9
    assert math.isclose(fid["secure_ppl"], fid["plain_ppl"], rel_tol=1e-2)
    assert r["protocol"]["engine"] == "spu" and r["benchmark_only"] is True
    assert r["parties"] == {"mode": "local SPU processes (brpc on 127.0.0.1)", "world_size": 2,
                            "dealer": False, "engine": "spu"}


@pytest.mark.slow
def test_end_to_end_costs_are_attributed(secure_run):
    r = secure_run
    assert r["attribution"]["unattributed_bytes"] == 0 and r["attribution"]["unattributed_rounds"] == 0
    for c in CATEGORIES:
        assert (r["ops"][c]["bytes"] > 0) == (c != "other"), c
    assert r["total"]["bytes"] == sum(r["ops"][c]["bytes"] for c in CATEGORIES)
    assert r["spu"]["weight_sharing_bytes"] > 0 and r["spu"]["token_sharing_bytes_per_sequence"] > 0


@pytest.mark.slow
def test_cost_model_predicts_the_secure_run_exactly(secure_run):
    """`pi-lnfree cost` from the shipped SEMI2K calibration gives this secure-eval's bytes, rounds
    (send actions) and calls per category exactly (costs depend on shapes only)."""
    from pi_lnfree.checkpoint import load_model
    from pi_lnfree.secure.costmodel import predict

    r = secure_run
    cfg = load_model(r["checkpoint"], "cpu")[0].config
    pred = predict(cfg, load_profile(SEMI2K), r["seq_len"])
    for c in CATEGORIES:
        for fld in ("bytes", "rounds", "calls"):
            assert pred["ops"][c][fld] == r["ops"][c][fld], (c, fld)
    assert pred["total"]["bytes"] == r["total"]["bytes"] and pred["total"]["rounds"] == r["total"]["rounds"]


@pytest.mark.slow
def test_server_never_holds_the_clients_tokens(secure_run):
    """The server's share of the one-hot rows is not their fixed-point encoding and looks uniform
    over the ring; the server's job never contained the tokens."""
    r = secure_run
    tokens = r["client_tokens"][0].numpy()
    share = r["server_view"]["token_share"].reshape(len(tokens), -1)  # (T, V) uint64 ring elements
    encoded = np.eye(share.shape[1], dtype=np.uint64)[tokens] << np.uint64(FRACTION_BITS)
    assert not np.array_equal(share, encoded)
    assert (share == encoded).mean() < 1e-3
    assert (share.argmax(-1) == tokens).mean() < 0.2
    top_bits = (share >> np.uint64(63)).astype(np.float64)
    assert 0.4 < top_bits.mean() < 0.6  # the top bit of a uniform ring element is a fair coin
    assert "tokens" not in r["server_view"]["job"] and "checkpoint" in r["server_view"]["job"]


# ---------------------------------------------------------------------------------------------
# one party per process, as on two hosts (here both on 127.0.0.1)


def test_rendezvous_peer_that_never_joins_fails_within_the_timeout():
    import time

    from pi_lnfree.secure import spu_rendezvous
    from pi_lnfree.secure.parties import free_port

    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(UserError, match=r"ranks \[1\] did not join"):
        spu_rendezvous.host_client("127.0.0.1", port, 2, 1.0, lambda config: None)
    with pytest.raises(UserError, match="did not answer within"):
        spu_rendezvous.join(1, "127.0.0.1", free_port(), 1.0, {"n_layer": 1})
    assert time.monotonic() - t0 < 10


@pytest.mark.slow
def test_one_party_per_process_with_rank_and_master_addr(tmp_path):
    """Client and server each run `secure_eval(..., rank=r)` as on their own hosts: the
    rendezvous at the client's address, then SPU's link; the client gets the full result, and
    its costs equal a local run's (the same programs, the same tokens)."""
    import threading

    from pi_lnfree.checkpoint import save_checkpoint
    from pi_lnfree.config import make_config
    from pi_lnfree.model import GPT
    from pi_lnfree.secure.evaluate import secure_eval
    from pi_lnfree.secure.parties import free_port

    _spu_python()
    torch.manual_seed(0)
    cfg = make_config("tiny", "sm-r", vocab_size=128, block_size=16)
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, GPT(cfg).state_dict(), cfg)
    port, out = free_port(), {}

    def party(rank):
        try:
            out[rank] = secure_eval(ckpt, SEMI2K, seq_len=8, timeout_s=300, rank=rank, master_addr="127.0.0.1",
                                    master_port=port)
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            out[rank] = e

    threads = [threading.Thread(target=party, args=(r,)) for r in (1, 0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert out[1]["status"] == "done" and out[1]["role"] == "server", out[1]
    r = out[0]
    assert isinstance(r, dict) and r["parties"]["mode"].startswith("distributed SPU"), r
    assert r["fidelity"]["max_abs_logit_error"] < 1e-2
    local = secure_eval(ckpt, SEMI2K, seq_len=8, timeout_s=300)
    assert r["total"]["bytes"] == local["total"]["bytes"] and r["total"]["rounds"] == local["total"]["rounds"]

