"""The result of a secure forward's costs: the JSON interface shared by `pi-lnfree secure-eval`
(measured) and `pi-lnfree cost` (predicted). See `pi_lnfree.secure.meter` for the per-operator
fields and `pi_lnfree.secure.phases` for the offline and online phases."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pi_lnfree.config import ModelConfig, variant_label, variant_name
from pi_lnfree.secure.meter import average, network_estimate, per_token, public_ops, total_of
from pi_lnfree.secure.profile import ProtocolProfile


def cost_result(
    cfg: ModelConfig, profile: ProtocolProfile, passes: Sequence[Mapping[str, Any]], seq_len: int,
    samples: int, tokens_source: str, networks: Mapping[str, Any],
) -> dict[str, Any]:
    """Costs of one secure forward of `seq_len` tokens, averaged over `passes` (combined meter
    states `{"ops", "span"}`, one per sequence): totals, per token, per operator category, LAN/WAN
    latency, how much of the raw traffic the categories account for, and `phases` when the passes
    carry their offline phase (`"offline"`: `phases.combine_offline`, or a prediction of it)."""
    avg = average(passes)
    tot = total_of(avg["ops"])
    span = avg["span"]
    out = {
        "variant": variant_name(cfg),
        "label": variant_label(cfg),
        "protocol": profile.to_dict(),
        "benchmark_only": profile.benchmark_only,
        "security": profile.security,
        "seq_len": int(seq_len),
        "samples": int(samples),
        "tokens": tokens_source,
        "total": {
            "bytes": tot["bytes"], "rounds": tot["rounds"], "seconds": tot["seconds"],
            "dealer_bytes": tot["dealer_bytes"], "dealer_requests": tot["dealer_requests"],
        },
        "per_token": per_token(tot, seq_len),
        "ops": public_ops(avg["ops"]),
        "network": network_estimate(avg["ops"], networks),
        "attribution": {
            "raw_bytes": span["bytes"], "raw_rounds": span["rounds"],
            "unattributed_bytes": span["bytes"] - tot["bytes"],
            "unattributed_rounds": span["rounds"] - tot["rounds"],
        },
    }
    if all("offline" in p for p in passes):
        out["phases"] = phase_costs([p["offline"] for p in passes], tot, networks)
    return out


def _mean(values: Sequence[float | None]) -> float | int | None:
    if any(v is None for v in values):
        return None
    mean = sum(values) / len(values)
    return int(mean) if float(mean).is_integer() else mean


def phase_costs(offline: Sequence[Mapping[str, Any]], total: Mapping[str, float],
                networks: Mapping[str, Any]) -> dict[str, Any]:
    """`phases` of a result: per phase bytes on the wire, rounds, local seconds and LAN/WAN
    latency (`Network.seconds`; the offline phase's link is party 0's to the dealer).

    offline: the dealer's stream to party 0 (TTP) or nothing on the wire (TFP), its round trips,
    the slower party's seconds (None when a prediction has no offline unit costs), tuples and each
    party's stored material (measured runs only). online: the forward between the parties, the
    same numbers as `total` (bytes, rounds, seconds)."""
    off = {k: _mean([o[k] for o in offline]) for k in ("bytes", "rounds", "seconds", "dealer_bytes", "requests")}
    for k in ("material_bytes", "spooled"):
        if k in offline[0]:
            off[k] = offline[0][k]
    on = {"bytes": total["bytes"], "rounds": total["rounds"], "seconds": total["seconds"]}
    for phase in (off, on):
        phase["network"] = {
            name: (None if phase["seconds"] is None else net.seconds(phase["seconds"], phase["rounds"], phase["bytes"]))
            for name, net in networks.items()
        }
    return {"offline": off, "online": on}


__all__ = ["cost_result", "phase_costs"]
