"""Two-phase secure inference: the request trace derived on `meta` tensors against a real run of
two parties, the offline/online split under TTP (dealer) and TFP (spooled material), results bit
for bit equal to the one-phase run from the same seeds, the dealer untouched online (counted on
party 0 and on the dealer itself), and the errors an online phase raises instead of falling back.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pi_lnfree.checkpoint import save_checkpoint
from pi_lnfree.config import make_config
from pi_lnfree.model import GPT
from pi_lnfree.secure import costmodel
from pi_lnfree.secure.costmodel import load_calibration, predicted_state
from pi_lnfree.secure.parties import launch_local, local_jobs
from pi_lnfree.secure.phases import Material, PhasedProvider, PhaseError, dealer_guard
from pi_lnfree.secure.profile import load_profile
from pi_lnfree.secure.tuples import Request, output_shapes, request_key

ROOT = Path(__file__).resolve().parents[1]
TTP = ROOT / "protocols" / "crypten-2pc-ttp.toml"
TFP = ROOT / "protocols" / "crypten-2pc-tfp.toml"
T = 8


def _compare(tmp_path, monkeypatch, protocol: Path, variant: str, **offline) -> tuple[dict, dict, torch.Tensor]:
    """One party session: the same forward one-phase then two-phase from the same seeds."""
    monkeypatch.setenv("PI_LNFREE_FAST_MATMUL", "stock")  # skip the per-process matmul timing
    cfg = make_config("tiny", variant, vocab_size=64, n_layer=1)
    torch.manual_seed(0)
    model = GPT(cfg)
    ckpt = tmp_path / "tiny.pt"
    save_checkpoint(ckpt, model.state_dict(), cfg)
    tokens = torch.randint(0, 64, (1, T), generator=torch.Generator().manual_seed(1))
    payload = {"seq_len": T, "seed": 7, "modes": ["one", "two"], "offline": offline}
    jobs = local_jobs(load_profile(protocol), 60, {0: dict(tokens=tokens), 1: dict(checkpoint=str(ckpt))},
                      program="pi_lnfree.secure.phase_runs:compare_program", payload=payload)
    results = launch_local(jobs, 60)
    with torch.no_grad():
        plain = model(tokens)[0]
    return results[0], results.get(2), plain


def _check_identical_and_split(client: dict, plain: torch.Tensor) -> tuple[dict, dict]:
    one, two = client["runs"]
    assert one["mode"] == "one" and two["mode"] == "two"
    assert torch.equal(one["logits"], two["logits"])  # bit for bit
    assert (two["logits"] - plain).abs().max() < 0.05  # and a correct forward at all
    trace = client["trace"]
    for run in (one, two):
        for side in (run["meter"], run["server"]["meter"]):
            # the trace, derived on meta tensors with no peer, predicts the real run exactly
            assert side["span"]["rounds"] == trace["rounds"] and side["span"]["bytes"] == trace["bytes"]
    # the online phase costs exactly what the one-phase forward costs between the parties
    assert two["meter"]["span"]["bytes"] == one["meter"]["span"]["bytes"]
    assert two["meter"]["span"]["rounds"] == one["meter"]["span"]["rounds"]
    assert two["dealer_during_forward"] == {"bytes": 0, "rounds": 0}
    assert two["meter"]["span"]["dealer_bytes"] == 0 and two["meter"]["span"]["dealer_requests"] == 0
    for off in (two["offline"], two["server"]["offline"]):
        assert off["requests"] == trace["requests"] > 0
        assert off["bytes"] == 0 and off["rounds"] == 0  # no party-to-party traffic offline
    return one, two


def test_ttp_two_phases_bit_identical_and_dealer_untouched_online(tmp_path, monkeypatch):
    client, dealer, plain = _compare(tmp_path, monkeypatch, TTP, "sm-ln-g")
    one, two = _check_identical_and_split(client, plain)
    trace = client["trace"]
    n = trace["requests"]
    # one-phase: a dealer exchange per tuple; two-phase: everything offline in one round trip
    assert one["dealer_during_forward"] == {"bytes": trace["dealer_bytes"], "rounds": n}
    off = two["offline"]
    assert off["dealer_bytes"] == trace["dealer_bytes"] == off["material_bytes"] and off["dealer_round_trips"] == 1
    assert two["server"]["offline"]["material_bytes"] == 0  # party 1 draws its shares online
    # the dealer's own count: n tuples each way, n one-phase messages + 1 stream + 2 reseeds,
    # so nothing reached it during the online forward
    assert dealer["served"] == {"messages": n + 3, "requests": 2 * n, "bytes": 2 * trace["dealer_bytes"]}
    # the cost model's prediction of both phases from the committed calibration
    profile = load_profile(TTP)
    pred = predicted_state(costmodel.trace(make_config("tiny", "sm-ln-g", vocab_size=64, n_layer=1), T),
                           load_calibration(profile), profile.provider)
    assert pred["offline"]["rounds"] == 1 and pred["offline"]["requests"] == n
    assert abs(pred["offline"]["bytes"] - off["dealer_bytes"]) <= 0.01 * off["dealer_bytes"]
    spans = (two["meter"]["span"], two["server"]["meter"]["span"])
    online_bytes = (spans[0]["bytes"] + spans[1]["bytes"]) / 2  # as `meter.combine_parties` counts
    assert pred["span"]["rounds"] == max(s["rounds"] for s in spans)
    assert abs(pred["span"]["bytes"] - online_bytes) <= 0.01 * online_bytes


def test_tfp_two_phases_bit_identical_with_spooled_material(tmp_path, monkeypatch):
    client, dealer, plain = _compare(tmp_path, monkeypatch, TFP, "sm-r", budget_bytes=1024)
    assert dealer is None
    _, two = _check_identical_and_split(client, plain)
    for off in (two["offline"], two["server"]["offline"]):
        assert off["spooled"] and off["material_bytes"] == client["trace"]["tuple_bytes"]
        assert off["dealer_bytes"] == 0


# ---------------------------------------------------------------------------------------------
# without parties


def test_request_shapes_and_bytes_by_hand():
    key = request_key("generate_additive_triple", (torch.Size([1, 8, 64]), torch.Size([64, 192]), "matmul"), {"device": "cpu"})
    r = Request(*key, outputs=output_shapes(key))
    assert r.outputs == ((1, 8, 64), (64, 192), (1, 8, 192))
    assert r.dealer_function == "additive" and r.dealer_shape == (1, 8, 192)
    assert r.tuple_bytes == 8 * (512 + 12288 + 1536) and r.dealer_bytes == 8 * 1536
    key = request_key("generate_binary_triple", (torch.Size([3, 1]), torch.Size([1, 4])), {})
    assert output_shapes(key) == ((3, 1), (1, 4), (3, 4))
    key = request_key("B2A_rng", (torch.Size([5]),), {"device": None})
    r = Request(*key, outputs=output_shapes(key))
    assert r.dealer_function == "B2A" and r.dealer_shape == (5,) and r.tuple_bytes == 80


@pytest.mark.parametrize("spool", [False, True])
def test_material_in_order_and_bounded(tmp_path, spool):
    m = Material(10, spool_dir=str(tmp_path) if spool else None)
    assert m.spooled == spool
    m.append(torch.arange(4))
    with pytest.raises(PhaseError, match="incomplete"):
        m.seal()
    m.append(torch.arange(4, 10))
    with pytest.raises(PhaseError, match="overflow"):
        m.append(torch.arange(1))
    m.seal()
    assert torch.equal(m.take((2, 2)), torch.arange(4).view(2, 2))
    assert torch.equal(m.take((3,)), torch.tensor([4, 5, 6]))
    with pytest.raises(PhaseError, match="exhausted"):
        m.take((4,))
    assert not m.exhausted
    m.take((3,))
    assert m.exhausted
    m.close()
    assert list(tmp_path.iterdir()) == []  # the spool file is gone


def test_online_requests_must_match_the_offline_trace():
    def req(kind, *sizes):
        key = request_key(kind, tuple(torch.Size(s) for s in sizes), {})
        return Request(*key, outputs=output_shapes(key))

    provider = PhasedProvider(inner=None, name="TTP", device="cpu")
    provider.expected = [req("square", (4,)), req("B2A_rng", (4,))]
    provider.material = Material(0)
    with pytest.raises(PhaseError, match="differs from the prepared"):
        provider.square(torch.Size([5]))  # another shape than the trace said
    provider.next_index = 1
    with pytest.raises(PhaseError, match="differs from the prepared"):
        provider.wrap_rng(torch.Size([4]))  # another function
    provider.next_index = 2
    with pytest.raises(PhaseError, match="beyond the 2 prepared"):
        provider.square(torch.Size([4]))
    # party 0's dealer client raises inside an online phase and works outside one
    guarded = dealer_guard(provider, lambda self, fn, device, *args: f"dealer {fn}")
    with pytest.raises(PhaseError, match="tried to reach the dealer"):
        guarded(None, "square", "cpu", (4,))
    provider.expected = None
    assert guarded(None, "square", "cpu", (4,)) == "dealer square"
