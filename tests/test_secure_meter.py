"""Meter attribution, two-party combination and the network model, against hand computation;
protocol and network profile loading. Pure Python: no parties are started here."""

from __future__ import annotations

import pytest

from pi_lnfree.errors import UserError
from pi_lnfree.resources import PROTOCOLS, shipped_dir
from pi_lnfree.secure.meter import (
    CATEGORIES,
    Meter,
    average,
    combine_parties,
    network_estimate,
    per_token,
    total_of,
)
from pi_lnfree.secure.profile import Network, load_networks, load_profile


class FakeComm:
    """Cumulative counters a test advances by hand, and a clock."""

    def __init__(self):
        self.bytes = self.rounds = self.dealer = 0
        self.now = 0.0

    def stats(self):
        return {"bytes": self.bytes, "rounds": self.rounds, "dealer_bytes": self.dealer, "dealer_requests": 0}

    def send(self, nbytes, rounds=1, dt=0.5):
        self.bytes += nbytes
        self.rounds += rounds
        self.now += dt


def _metered_pass(comm: FakeComm, scale: int = 1) -> Meter:
    meter = Meter(comm.stats, clock=lambda: comm.now)
    with meter.span():
        with meter.op("linear"):
            comm.send(100 * scale)
        with meter.op("softmax"):
            comm.send(40 * scale, rounds=3)
            with meter.op("activation"):  # nested: attributed to the outer softmax
                comm.send(10 * scale)
        with meter.op("linear"):
            comm.send(50 * scale, dt=0.25)
        comm.send(7)  # outside any operator: visible as unattributed in the span
    return meter


def test_meter_attributes_each_increment_once():
    comm = FakeComm()
    state = _metered_pass(comm).state()
    ops = state["ops"]
    assert ops["linear"] == {"bytes": 150, "rounds": 2, "seconds": 0.75, "calls": 2, "dealer_bytes": 0,
                             "dealer_requests": 0}
    assert ops["softmax"]["bytes"] == 50 and ops["softmax"]["rounds"] == 4 and ops["softmax"]["calls"] == 1
    assert ops["activation"]["calls"] == 0 and ops["activation"]["bytes"] == 0
    assert state["span"]["bytes"] == 207 and state["span"]["rounds"] == 7
    assert total_of(ops)["bytes"] == 200  # the 7 bytes outside any operator are not in a category


def test_meter_rejects_unknown_category():
    meter = Meter(FakeComm().stats)
    with pytest.raises(ValueError, match="unknown operator category"):
        with meter.op("convolution"):
            pass


def test_combine_parties_counts_sent_bytes_once():
    # CrypTen logs a message at sender and receiver: client counted 100 + 50, server 100 + 50
    client = _metered_pass(FakeComm()).state()
    server = _metered_pass(FakeComm(), scale=3).state()
    both = combine_parties(client, server)
    assert both["ops"]["linear"]["bytes"] == (150 + 450) / 2
    assert both["ops"]["linear"]["rounds"] == 2  # max, not sum: the parties move in lockstep
    assert both["ops"]["softmax"]["seconds"] == 1.0
    tot = total_of(both["ops"])
    for f in ("bytes", "rounds", "seconds"):
        assert tot[f] == pytest.approx(sum(both["ops"][c][f] for c in CATEGORIES))
    assert per_token(tot, 4)["bytes"] == tot["bytes"] / 4


def test_average_of_passes():
    a = combine_parties(_metered_pass(FakeComm()).state(), _metered_pass(FakeComm()).state())
    b = combine_parties(_metered_pass(FakeComm(), 3).state(), _metered_pass(FakeComm(), 3).state())
    avg = average([a, b])
    assert avg["ops"]["linear"]["bytes"] == (150 + 450) / 2
    with pytest.raises(ValueError):
        average([])


def test_network_estimate_by_hand():
    ops = {c: {"bytes": 0, "rounds": 0, "seconds": 0.0} for c in CATEGORIES}
    ops["softmax"] = {"bytes": 3e8 / 8, "rounds": 100, "seconds": 2.0}  # 3e8 bits
    nets = {"lan": Network("lan", 3e9, 0.3), "wan": Network("wan", 1e8, 80.0)}
    est = network_estimate(ops, nets)
    assert est["lan"]["ops"]["softmax"] == pytest.approx(2.0 + 100 * 0.0003 + 0.1)
    assert est["wan"]["ops"]["softmax"] == pytest.approx(2.0 + 100 * 0.08 + 3.0)
    assert est["wan"]["seconds"] == pytest.approx(13.0) and est["lan"]["ops"]["linear"] == 0


def test_shipped_profiles_and_networks_load():
    names = {}
    for path in sorted(shipped_dir(PROTOCOLS).glob("crypten-*.toml")):
        p = load_profile(path)
        names[p.name] = p
        assert path.name == f"{p.name}.toml"
    assert names["crypten-2pc-ttp"].provider == "TTP" and not names["crypten-2pc-ttp"].benchmark_only
    assert names["crypten-2pc-tfp"].benchmark_only and "benchmark only" in names["crypten-2pc-tfp"].security
    assert {p.gelu for p in names.values()} == {"tanh", "erf", "sigmoid"}
    nets = load_networks()
    assert nets["lan"].bandwidth_bits_per_s == 3e9 and nets["lan"].rtt_ms == 0.3
    assert nets["wan"].bandwidth_bits_per_s == 1e8 and nets["wan"].rtt_ms == 80.0


@pytest.mark.parametrize(
    "text, message",
    [
        ('[protocol]\nname = "x"\nprovider = "HE"\n', "provider must be one of"),
        ('[protocol]\nname = "x"\n[approximations]\ngelu = "cubic"\n', "gelu must be one of"),
        ('[protocol]\nname = "x"\ncolour = "red"\n', "unknown keys in \\[protocol\\]"),
        ('[protocol]\nprovider = "TTP"\n', "needs a name"),
        ('[protocols]\nname = "x"\n', "unknown sections"),
        ('[protocol\nname = "x"\n', "not valid TOML"),
        ('[protocol]\nname = "x"\n[approximations]\nexp_iterations = 0\n', "exp_iterations must be"),
    ],
)
def test_bad_profiles_are_user_errors(tmp_path, text, message):
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        load_profile(path)


def test_bad_networks_and_missing_files(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        load_profile(tmp_path / "missing.toml")
    path = tmp_path / "n.toml"
    path.write_text("[lan]\nbandwidth_bits_per_s = 0\nrtt_ms = 1\n")
    with pytest.raises(UserError, match="bandwidth > 0"):
        load_networks(path)
