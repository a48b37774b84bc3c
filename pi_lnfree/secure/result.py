"""The result of a secure forward's costs: the JSON interface shared by `pi-lnfree secure-eval`
(measured) and `pi-lnfree cost` (predicted). See `pi_lnfree.secure.meter` for the per-operator
fields and `pi_lnfree.secure.phases` for the offline and online phases."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

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


def perplexity(cross_entropy: float) -> float:
    """exp(cross-entropy), `inf` where the exponential overflows a float64 (a secure result that
    went wrong must still be reported, not crash the report)."""
    return math.exp(cross_entropy) if cross_entropy < math.log(sys.float_info.max) else math.inf


def fidelity(plain_logits: torch.Tensor, secure_logits: torch.Tensor, tokens: torch.Tensor) -> dict[str, Any]:
    """Secure vs plaintext logits on the same tokens: errors, top-1 agreement, perplexities
    (next-token cross-entropy inside each sequence, T-1 predictions per sequence) and
    `warnings` (an infinite perplexity, non-finite logits)."""
    plain, secure = plain_logits.double(), secure_logits.double()
    err = (secure - plain).abs()
    out: dict[str, Any] = {
        "max_abs_logit_error": float(err.max()),
        "mean_abs_logit_error": float(err.mean()),
        "top1_agreement": float((secure.argmax(-1) == plain.argmax(-1)).double().mean()),
        "max_abs_logit": float(plain.abs().max()),
        "max_abs_secure_logit": float(secure.abs().max()),
        "fixed_point_resolution": None,
        "plain_ppl": None,
        "secure_ppl": None,
        "warnings": [],
    }
    if not torch.isfinite(secure).all():
        out["warnings"].append("the secure logits hold non-finite values")
    if tokens.size(1) > 1:
        targets = tokens[:, 1:].reshape(-1)
        for key, logits in (("plain_ppl", plain), ("secure_ppl", secure)):
            ce = float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), targets))
            out[key] = perplexity(ce) if math.isfinite(ce) else math.nan
            if not math.isfinite(out[key]):
                out["warnings"].append(f"{key.replace('_ppl', '')} perplexity is {out[key]} (cross-entropy {ce:.4g})")
    return out


def _plain_logits(model, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens.long()).float()


def assemble_result(
    checkpoint: str, cfg: ModelConfig, profile: ProtocolProfile, client: dict[str, Any],
    plain_model, networks: dict, mode: str, wall_s: float, range_audit: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The `secure-eval` result dict: the costs (`result.cost_result`) of the client's combined
    meter readings, fidelity against `plain_model` (None when the plaintext is not at hand), the
    range audit of the same tokens, how the parties ran, the wall time, and `flags`: what makes
    the secure numbers untrustworthy (inputs outside an approximation's valid range, an
    infinite perplexity); empty when none."""
    tokens: torch.Tensor = client["tokens"]
    fid = None
    if plain_model is not None:
        fid = fidelity(_plain_logits(plain_model, tokens), client["logits"], tokens)
        fid["fixed_point_resolution"] = 2.0 ** -profile.precision_bits
    flags = list(range_audit["warnings"]) if range_audit else []
    flags += fid["warnings"] if fid else []
    return {
        "checkpoint": checkpoint,
        **cost_result(cfg, profile, client["passes"], int(tokens.size(1)), int(tokens.size(0)),
                      client["tokens_source"], networks),
        "fidelity": fid,
        "audit": range_audit,
        "flags": flags,
        "parties": {"mode": mode, "world_size": 2, "dealer": profile.provider == "TTP"},
        "weight_sharing_seconds": client["weight_sharing_seconds"],
        "trace_seconds": client.get("trace_seconds"),
        "wall_seconds": wall_s,
    }


__all__ = ["assemble_result", "cost_result", "fidelity", "perplexity", "phase_costs"]
