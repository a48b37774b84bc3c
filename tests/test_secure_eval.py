"""`pi-lnfree secure-eval` end to end with real parties: a briefly trained tiny SM+LN+G checkpoint
(TFP, through the CLI with --json) and an LN-free SM+R one (TTP dealer, through the library, with
the server's view captured), plus failure paths: a party killed mid-protocol, a peer that never
connects, a variant that cannot run under MPC.
"""

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

from pi_lnfree.checkpoint import save_checkpoint
from pi_lnfree.config import make_config
from pi_lnfree.data import load_data_folder
from pi_lnfree.model import GPT
from pi_lnfree.secure.evaluate import PROGRAM
from pi_lnfree.secure.meter import CATEGORIES
from pi_lnfree.secure.parties import PartyFailure, PartyJob, free_port, launch_local
from pi_lnfree.secure.profile import load_profile
from pi_lnfree.secure.structure import NotSupportedUnderMPC

ROOT = Path(__file__).resolve().parents[1]
TTP = str(ROOT / "protocols" / "crypten-2pc-ttp.toml")
TFP = str(ROOT / "protocols" / "crypten-2pc-tfp.toml")
T = 32


def _train_tiny(variant: str, data_dir: Path, out: Path, steps: int = 30, **overrides) -> Path:
    """A tiny model trained for a few AdamW steps on the shared data folder (so its activations
    and logits have realistic scales), saved as a checkpoint."""
    folder = load_data_folder(data_dir)
    cfg = make_config("tiny", variant, vocab_size=folder.vocab_size, block_size=folder.seq_len, **overrides)
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only contend
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    train = torch.from_numpy(folder.train[: steps * 8, : T + 1].astype("int64"))
    for step in range(steps):
        batch = train[step * 8:(step + 1) * 8]
        _, loss = model(batch[:, :-1], batch[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    save_checkpoint(out, model.state_dict(), cfg)
    return out


def _cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pi_lnfree.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
    from pi_lnfree.secure.evaluate import secure_eval

    tmp = tmp_path_factory.mktemp("secure")
    ln_gelu = _train_tiny("sm-ln-g", data_dir, tmp / "ln_gelu.pt")
    lnfree_relu = _train_tiny("sm-r", data_dir, tmp / "lnfree_relu.pt")
    t0 = time.perf_counter()
    proc = _cli("secure-eval", str(ln_gelu), "--protocol", TFP, "--seq-len", str(T), "--data", str(data_dir),
                "--json", "--timeout", "120")
    gelu_s = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-2000:]
    gelu = json.loads(proc.stdout)
    t0 = time.perf_counter()
    relu = secure_eval(lnfree_relu, TTP, seq_len=T, samples=1, data=data_dir, timeout_s=120, capture_server_view=True)
    relu_s = time.perf_counter() - t0
    return {"gelu": gelu, "relu": relu, "gelu_s": gelu_s, "relu_s": relu_s, "gelu_stderr": proc.stderr}


def test_result_shape_and_metering_totals(runs):
    for key in ("gelu", "relu"):
        r = runs[key]
        for field in ("checkpoint", "variant", "label", "protocol", "seq_len", "samples", "total", "per_token", "ops",
                      "network", "fidelity"):
            assert field in r
        assert r["seq_len"] == T and r["samples"] == 1
        assert set(r["ops"]) == set(CATEGORIES)
        for f in ("bytes", "rounds", "seconds"):
            assert r["total"][f] == pytest.approx(sum(r["ops"][c][f] for c in CATEGORIES))
            assert r["per_token"][f] == pytest.approx(r["total"][f] / T)
        # every counted byte and round of the whole forward landed in some category
        assert r["attribution"]["unattributed_bytes"] == 0 and r["attribution"]["unattributed_rounds"] == 0
        assert r["total"]["bytes"] == r["attribution"]["raw_bytes"] > 0
        for name, (bw, rtt) in {"lan": (3e9, 0.3e-3), "wan": (1e8, 80e-3)}.items():
            net = r["network"][name]
            for c in CATEGORIES:
                op = r["ops"][c]
                assert net["ops"][c] == pytest.approx(op["seconds"] + op["rounds"] * rtt + op["bytes"] * 8 / bw)
            assert net["seconds"] == pytest.approx(sum(net["ops"].values()))


def test_both_variants_run_fast_and_faithfully(runs):
    assert runs["gelu_s"] < 60 and runs["relu_s"] < 60  # process start and imports included
    for key in ("gelu", "relu"):
        fid = runs[key]["fidelity"]
        assert fid["top1_agreement"] >= 0.99
        assert 0 < fid["max_abs_logit_error"] < 0.5
        assert fid["mean_abs_logit_error"] < 0.05
        assert abs(math.log(fid["secure_ppl"] / fid["plain_ppl"])) < 0.02
        assert fid["plain_ppl"] < 400  # trained a little: better than uniform over 512 tokens


def test_layernorm_and_activation_costs(runs):
    gelu, relu = runs["gelu"]["ops"], runs["relu"]["ops"]
    assert (runs["gelu"]["variant"], runs["gelu"]["label"]) == ("sm-ln-g", "SM+LN+G")
    assert (runs["relu"]["variant"], runs["relu"]["label"]) == ("sm-r", "SM+R")
    assert gelu["layernorm"]["calls"] == 2 * 2 + 1  # two per block + final
    assert relu["layernorm"]["calls"] == 1 and relu["layernorm"]["bytes"] > 0  # final norm only
    assert relu["layernorm"]["bytes"] < gelu["layernorm"]["bytes"] / 4
    assert relu["activation"]["bytes"] < gelu["activation"]["bytes"]
    assert relu["activation"]["rounds"] < gelu["activation"]["rounds"]
    # the same shapes elsewhere: linear layers and attention cost the same bytes
    for c in ("embedding", "linear", "attention", "softmax", "lm_head"):
        assert relu[c]["bytes"] == gelu[c]["bytes"]


def test_providers_are_labelled(runs):
    gelu, relu = runs["gelu"], runs["relu"]
    assert gelu["benchmark_only"] is True and "benchmark only" in gelu["security"]
    assert "benchmark only" in " ".join(runs["gelu_stderr"].split())
    assert relu["benchmark_only"] is False and "TTP" in relu["security"]
    assert gelu["total"]["dealer_bytes"] == 0 and relu["total"]["dealer_bytes"] > 0


def test_server_never_holds_the_clients_tokens(runs):
    r = runs["relu"]
    tokens = r["client_tokens"][0]
    share = r["server_view"]["onehot_share"][0]  # (T, V) int64 ring elements held by the server
    encoded = torch.nn.functional.one_hot(tokens, share.size(-1)) * (1 << 16)
    assert share.shape == encoded.shape
    assert not torch.equal(share, encoded)
    assert (share == encoded).float().mean() < 1e-3  # not even element-wise
    assert (share.argmax(-1) == tokens).float().mean() < 0.2  # rows do not point at the tokens
    assert not any(torch.equal(share.reshape(-1)[: tokens.numel()], t) for t in (tokens, tokens * (1 << 16)))
    assert share.abs().float().mean() > 2.0 ** 40  # looks uniform over the ring, not like data


def _dying_server(job):
    """Server that connects, sends the config like the real one, then dies by SIGKILL."""
    from pi_lnfree.checkpoint import load_model
    from pi_lnfree.secure import crypten_compat

    model, _ = load_model(job.checkpoint)
    crypten_compat.exchange_json(model.config.to_dict(), src=1)
    crypten_compat.exchange_json(None, src=0)
    os.kill(os.getpid(), signal.SIGKILL)


def test_killed_party_makes_the_other_fail_within_timeout(tmp_path):
    cfg = make_config("tiny", "sm-r", vocab_size=64)
    ckpt = tmp_path / "c.pt"
    save_checkpoint(ckpt, GPT(cfg).state_dict(), cfg)
    timeout = 15.0
    common = dict(profile=load_profile(TFP), timeout_s=timeout, master_port=free_port())
    jobs = [
        PartyJob(rank=0, tokens=torch.zeros(1, 8, dtype=torch.long), program=PROGRAM, **common),
        PartyJob(rank=1, checkpoint=str(ckpt), program="tests.test_secure_eval:_dying_server", **common),
    ]
    t0 = time.perf_counter()
    with pytest.raises(PartyFailure) as err:
        launch_local(jobs, timeout)
    elapsed = time.perf_counter() - t0
    msg = str(err.value)
    assert "server (rank 1) was killed by signal 9" in msg
    assert "client (rank 0)" in msg  # failed on its own ("lost the connection") or killed after the timeout
    assert elapsed < 45 + timeout  # start-up of two interpreters under load, then at most the timeout


def test_peer_that_never_connects(tmp_path):
    cfg = make_config("tiny", "sm-r", vocab_size=64)
    ckpt = tmp_path / "c.pt"
    save_checkpoint(ckpt, GPT(cfg).state_dict(), cfg)
    t0 = time.perf_counter()
    proc = _cli("secure-eval", "-", "--protocol", TFP, "--rank", "0", "--world-size", "2",
                "--master-port", str(free_port()), "--timeout", "4")
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 2
    line = " ".join(proc.stderr.split())
    assert "client (rank 0) failed" in line and "Traceback" not in proc.stderr
    assert elapsed < 40


def test_unsupported_variant_is_refused(tmp_path):
    from pi_lnfree.secure.evaluate import secure_eval

    cfg = make_config("tiny", "sm-hybrid:leaky_relu,relu", vocab_size=64, leaky_slope=1e-6)
    ckpt = tmp_path / "tiny-slope.pt"
    save_checkpoint(ckpt, GPT(cfg).state_dict(), cfg)
    with pytest.raises(NotSupportedUnderMPC, match="not supported under MPC"):
        secure_eval(ckpt, TTP, seq_len=8)
    proc = _cli("secure-eval", str(ckpt), "--protocol", TTP, "--seq-len", "8")
    assert proc.returncode == 2 and "not supported under MPC" in " ".join(proc.stderr.split())


def test_check_supported_refuses_switches_the_engine_lacks():
    from pi_lnfree.errors import UserError
    from pi_lnfree.secure.structure import check_supported

    profile = load_profile(TTP)
    cfg = make_config("tiny", "sm-r", vocab_size=64)
    check_supported(cfg, profile, 16)
    cfg.norm = "rmsnorm"  # a switch value a future plaintext model might have
    with pytest.raises(NotSupportedUnderMPC, match="norm='rmsnorm': not supported under MPC"):
        check_supported(cfg, profile)
    with pytest.raises(UserError, match="--seq-len 200"):
        check_supported(make_config("tiny", "sm-r", vocab_size=64), profile, 200)
