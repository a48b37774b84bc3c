"""The result of a secure forward's costs: the JSON interface shared by `pi-lnfree secure-eval`
(measured) and `pi-lnfree cost` (predicted). See `pi_lnfree.secure.meter` for the fields."""

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
    latency, and how much of the raw traffic the categories account for."""
    avg = average(passes)
    tot = total_of(avg["ops"])
    span = avg["span"]
    return {
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


__all__ = ["cost_result"]
