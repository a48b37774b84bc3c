"""Predicted secure-inference cost: calibrated per-primitive unit costs, composed over a model.

CrypTen's communication depends only on tensor shapes and protocol knobs, never on values; so
does SecretFlow SPU's. The secure forward (`pi_lnfree.secure.structure.Decoder` on `CryptenOps`
or `SpuOps`) calls nothing but the metered primitives of its backend, so its cost is the sum of
the costs of those calls:

1. `trace(cfg, T)` lists the primitive calls of one forward pass (kind + shape dims) by running
   the decoder structure (`pi_lnfree.secure.structure`) on the recording backend: the same code
   the secure engine runs, on shapes.
2. `features(kind, dims, max_method)` (`pi_lnfree.secure.cost_features`) turns one call into
   shape features in three groups: `size` (element counts: bytes and dealer bytes are linear in
   them), `count` (call constants and reduction depths: rounds and dealer requests are linear in
   them) and `time` (elements and multiply-adds: the local compute estimate). The softmax's
   row max follows CrypTen's algorithm: `int(ln T)` pairwise compare-and-select halvings
   (`log_reduction`; none for `pairwise`), then an all-pairs max over what is left, whose
   `prod` tree has ceil(log2(m-1)) levels; the
   `double_log_reduction` and `accelerated_cascade` methods run several all-pairs stages in
   sequence (`max_schedule`).
3. A `Calibration` (one JSON file per protocol profile, `protocols/<profile>.calibration.json`,
   made by `pi_lnfree.secure.calibrate`) holds, per kind, the coefficients of a least-squares
   fit of measured per-call costs on those features, and the feature rows it was fitted on, so a
   prediction outside their span is refused instead of extrapolated blindly.
4. `predict` sums the calls per operator category and returns exactly the result of
   `pi-lnfree secure-eval --json` (built by the same `result.cost_result`), without
   fidelity, with `"predicted": true`. Bytes and rounds are exact up to the fit; seconds are an
   estimate of local compute on the calibration machine; LAN/WAN latency uses the same network
   model as secure-eval (`meter.network_estimate`).
5. Both phases (`pi_lnfree.secure.phases`): the online phase is the per-category sum above; the
   offline phase is the dealer's share of every tuple (the calibrated `dealer_bytes`, exact) in
   one round trip under TTP, nothing on the wire under TFP, and `offline_seconds`, fitted like
   `seconds` on the time features from the offline phase of each calibration call.

SPU profiles (`engine = "spu"`): the same trace, kinds and categories; the calibration runs in
SPU parties (`pi_lnfree.secure.spu_measure`), bytes are what all parties sent and rounds the
busiest party's send actions, per call, as SPU's secure-eval meters them (without sharing the
inputs). Several kinds take SPU's own features (`cost_features`): products (SPU tiles a large
one), attention, the softmax (SPU's row max is a halving tree) and `other` (rotary positions talk
under SPU). SEMI2K's bytes and rounds and ABY3's bytes are exact; ABY3's rounds (random party
roles per call) and CHEETAH's bytes and rounds (HE packing into fixed-size ciphertexts, silent-OT
batches charged to whichever call drains them) are a relative least-squares fit, whose largest
relative residual on the calibration design each kind keeps (`KindFit.residual`) and each
prediction reports (`calibrate.exact_fields`). SPU has no offline phase in secure-eval, so its
predictions have none either.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pi_lnfree.config import ACTIVATIONS, ModelConfig
from pi_lnfree.errors import UserError
from pi_lnfree.files import write_json
from pi_lnfree.resources import protocol_file
from pi_lnfree.secure.backends.recorder import Call, RecorderOps, Shape
from pi_lnfree.secure.cost_features import (
    FIELD_GROUP,
    SPU_MMUL_LIMIT,
    TIME_FIELDS,
    features,
    field_vector,
    on_traffic,
    spu_share_bytes,
)
from pi_lnfree.secure.meter import empty_ops, total_of
from pi_lnfree.secure.profile import ProtocolProfile
from pi_lnfree.secure.structure import Decoder, check_supported, load_weights

FORMAT = 2
# fields of the meter's per-category records (`offline_seconds` is a phase total, not per category)
OPS_FIELDS = ("bytes", "dealer_bytes", "rounds", "dealer_requests", "seconds")
INTEGER_FIELDS = ("rounds", "dealer_requests")
ACTIVATION_KINDS = ACTIVATIONS  # one calibrated kind per FFN activation: activation:<name>
# profile fields that do not change costs; every other field is a knob a calibration is tied to
NOT_KNOBS = ("name", "description", "path")


# ---------------------------------------------------------------------------------------------
# the calls of one forward pass: the structure run on the recording backend


def trace(cfg: ModelConfig, T: int, layer: int | None = None) -> list[Call]:
    """The primitive calls of one secure forward of T tokens (batch 1), or of block `layer` alone,
    recorded by running `pi_lnfree.secure.structure.Decoder` on shapes (`RecorderOps`)."""
    ops = RecorderOps()
    decoder = Decoder(cfg, load_weights(cfg, None, ops), ops)
    if layer is None:
        decoder.forward(ops.tokens(None, T, cfg.vocab_size))
    else:
        decoder.block(layer, Shape((1, T, cfg.n_embd)))
    return ops.calls


# ---------------------------------------------------------------------------------------------
# calibration files


def calibration_path(profile_path: str | Path) -> Path:
    """Where the calibration of a profile (a path or a shipped name) lives: next to it,
    `<stem>.calibration.json`."""
    p = protocol_file(profile_path)
    return p.with_name(p.stem + ".calibration.json")


def profile_knobs(profile: ProtocolProfile) -> dict[str, Any]:
    """The profile fields a calibration depends on (all but name, description and path)."""
    return {f.name: getattr(profile, f.name) for f in dataclasses.fields(profile) if f.name not in NOT_KNOBS}


@dataclass
class KindFit:
    """Fitted unit costs of one primitive kind."""

    features: dict[str, list[str]]  # group -> feature names (order of the coefficients)
    coef: dict[str, list[float]]  # field -> coefficients
    design: dict[str, list[list[float]]]  # group -> the feature rows the fit saw (size, count)
    # field -> largest |fit - measured| / measured over the design, for a kind whose bytes or
    # rounds are fitted by least squares (`on_traffic`) instead of explained exactly (SPU
    # CHEETAH, ABY3's rounds); else empty
    residual: dict[str, float] = field(default_factory=dict)

    def check_span(self, kind: str, feats: dict[str, dict[str, float]]) -> None:
        """Refuse a call whose size/count features are not combinations of the calibrated ones."""
        for group in ("size", "count"):
            rows = np.asarray(self.design[group], dtype=np.float64)
            q = np.asarray([feats[group][n] for n in self.features[group]], dtype=np.float64)
            scale = np.maximum(np.abs(rows).max(axis=0), 1.0)
            coef, *_ = np.linalg.lstsq((rows / scale).T, q / scale, rcond=None)
            resid = np.abs((rows / scale).T @ coef - q / scale).max(initial=0.0)
            if resid > 1e-6 * max(1.0, float(np.abs(q / scale).max(initial=0.0))):
                tiled = feats["count"].get("blocks", 0) > 0
                why = (f"SPU tiles this product into {feats['count']['blocks'] + 1:.0f} blocks (its operands' "
                       f"shares exceed {SPU_MMUL_LIMIT >> 20} MiB) and the calibration measured no tiled product, "
                       "so its cost is beyond the calibrated regime") if tiled else "recalibrate (pi-lnfree cost --calibrate)"
                raise UserError(
                    f"the calibration does not cover this {kind} call, with {group} features "
                    f"{dict(zip(self.features[group], q.tolist(), strict=True))}; {why}"
                )


@dataclass
class Calibration:
    """Per-kind unit costs of one protocol profile, measured on one machine."""

    knobs: dict[str, Any]
    kinds: dict[str, KindFit]
    meta: dict[str, Any] = field(default_factory=dict)
    path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "knobs": self.knobs,
            "meta": self.meta,
            "kinds": {k: {"features": f.features, "coef": f.coef, "design": f.design,
                          **({"residual": f.residual} if f.residual else {})} for k, f in self.kinds.items()},
        }

    def save(self, path: str | Path) -> None:
        path = write_json(path, self.to_dict(), indent=1, sort_keys=True)
        self.path = str(path)

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"no calibration at {path}")
        try:
            data = json.loads(path.read_text())
            if data.get("format") != FORMAT:
                raise UserError(f"{path}: calibration format {data.get('format')!r}, expected {FORMAT}; recalibrate")
            kinds = {k: KindFit(v["features"], v["coef"], v["design"], dict(v.get("residual", {})))
                     for k, v in data["kinds"].items()}
            return cls(dict(data["knobs"]), kinds, dict(data.get("meta", {})), str(path))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise UserError(f"{path}: not a readable calibration file ({type(e).__name__}: {e})") from None

    def check_profile(self, profile: ProtocolProfile) -> None:
        """Refuse a calibration made with other cost-relevant knobs than `profile`'s."""
        want = profile_knobs(profile)
        diff = sorted(k for k in set(want) | set(self.knobs) if self.knobs.get(k) != want.get(k))
        if diff:
            pairs = ", ".join(f"{k}: calibrated {self.knobs.get(k)!r}, profile {want.get(k)!r}" for k in diff)
            raise UserError(f"calibration {self.path} does not match profile {profile.name} ({pairs}); "
                            f"run pi-lnfree cost --calibrate {profile.path or profile.name}")

    @property
    def engine(self) -> str:
        """The engine of the calibrated profile ("crypten" or "spu")."""
        return self.knobs.get("engine", "crypten")

    @property
    def share_bytes(self) -> int:
        """Bytes of one party's share of one ring element (`spu_share_bytes`; 8 under CrypTen,
        where no feature uses it)."""
        if self.engine != "spu":
            return 8
        return spu_share_bytes(self.knobs["spu_protocol"], self.knobs["spu_field"])

    @property
    def exact(self) -> bool:
        """False when some kind's bytes or rounds are a least-squares fit (`KindFit.residual`)."""
        return not any(f.residual for f in self.kinds.values())

    def max_residual(self) -> dict[str, float]:
        """Per field, the largest relative residual of a least-squares fit over all kinds."""
        out: dict[str, float] = {}
        for f in self.kinds.values():
            for fld, r in f.residual.items():
                out[fld] = max(out.get(fld, 0.0), float(r))
        return out

    def call_cost(self, call: Call) -> dict[str, float | None]:
        """Predicted bytes, rounds, seconds, dealer traffic and offline seconds of one call
        (`offline_seconds` None for a calibration made before calls ran in two phases)."""
        fit = self.kinds.get(call.kind)
        if fit is None:
            raise UserError(f"calibration {self.path} has no unit costs for {call.kind}; recalibrate")
        feats = features(call.kind, call.d, self.knobs["max_method"], self.engine, self.share_bytes)
        fit.check_span(call.kind, feats)
        out: dict[str, float] = {}
        for fld in FIELD_GROUP:
            if fld not in fit.coef:
                out[fld] = None
                continue
            x = field_vector(fld, feats, fit.features, on_traffic(fld, fit.residual))
            value = float(np.dot(np.asarray(fit.coef[fld], dtype=np.float64), np.asarray(x, dtype=np.float64)))
            # counters are whole numbers (bytes: multiples of 4 once both parties are halved)
            out[fld] = float(max(round(value), 0)) if fld not in TIME_FIELDS else max(value, 0.0)
        return out


def load_calibration(profile: ProtocolProfile, path: str | Path | None = None) -> Calibration:
    """The calibration stored next to `profile` (or at `path`), checked against its knobs (the
    engine and every protocol knob, so a calibration of another profile is refused)."""
    if path is None:
        if profile.path is None:
            raise UserError(f"profile {profile.name} has no file; give the calibration path")
        path = calibration_path(profile.path)
        if not path.is_file():
            raise UserError(f"profile {profile.path} is not calibrated: run pi-lnfree cost --calibrate {profile.path}")
    cal = Calibration.load(path)
    cal.check_profile(profile)
    return cal


# ---------------------------------------------------------------------------------------------
# composition


def predict_ops(calls: list[Call], cal: Calibration) -> dict[str, dict[str, float]]:
    """Sum the predicted cost of `calls` per operator category (the meter's `ops` records)."""
    ops = empty_ops()
    for call, n in Counter(calls).items():
        cost = cal.call_cost(call)
        rec = ops[call.category]
        for fld in OPS_FIELDS:
            rec[fld] += n * cost[fld]
        rec["calls"] += n
    return ops


def predict_offline(calls: list[Call], cal: Calibration, provider: str) -> dict[str, Any]:
    """The offline phase of a forward of `calls` (`phases.combine_offline`'s fields): the dealer's
    bytes in one round trip under TTP (nothing on the wire under TFP), the tuples, and the
    offline seconds (None when the calibration has no offline unit costs). Under TFP the number
    of tuples is not part of the calibration (None)."""
    costs = [(cal.call_cost(call), n) for call, n in Counter(calls).items()]
    dealer = sum(n * c["dealer_bytes"] for c, n in costs)
    requests = sum(n * c["dealer_requests"] for c, n in costs)
    seconds = None if any(c["offline_seconds"] is None for c, _ in costs) else sum(n * c["offline_seconds"] for c, n in costs)
    return {"bytes": dealer, "rounds": int(provider == "TTP" and requests > 0), "seconds": seconds,
            "dealer_bytes": dealer, "requests": requests if provider == "TTP" else None}


def predicted_state(calls: list[Call], cal: Calibration, provider: str = "TTP") -> dict[str, Any]:
    """A combined meter state (`{"ops", "span"}`) as `meter.combine_parties` would give it, with
    the predicted `offline` phase under CrypTen (SPU's secure-eval reports no phases: SEMI2K's
    TrustedFirstParty triples cost no traffic, CHEETAH and ABY3 make their correlations online)."""
    ops = predict_ops(calls, cal)
    state = {"ops": ops, "span": total_of(ops)}
    if cal.engine == "crypten":
        state["offline"] = predict_offline(calls, cal, provider)
    return state


def _notes(profile: ProtocolProfile, cal: Calibration) -> str:
    """What the predicted numbers are (the result's `seconds_note`)."""
    secs = "seconds are an estimate of local compute on the calibration machine; "
    if cal.engine == "crypten":
        return secs + "bytes and rounds are exact predictions of CrypTen's traffic"
    worst = cal.max_residual()
    exact = [f for f in ("bytes", "rounds") if f not in worst]
    fitted = [f"{f} (largest relative residual on the calibration design {worst[f]:.1%})" for f in ("bytes", "rounds")
              if f in worst]
    parts = [f"{' and '.join(exact)} {'is' if len(exact) == 1 else 'are'} exact"] if exact else []
    if fitted:
        parts.append(f"{' and '.join(fitted)} {'is' if len(fitted) == 1 else 'are'} a least-squares fit")
    return (secs + "; ".join(parts) + f" (SPU {profile.spu_protocol}'s traffic without sharing the inputs; rounds: "
            "send actions of the busiest party)")


def predict(
    cfg: ModelConfig,
    profile: ProtocolProfile,
    seq_len: int,
    cal: Calibration | None = None,
    networks: dict | None = None,
    checkpoint: str | None = None,
) -> dict[str, Any]:
    """Predicted cost of one secure forward of `seq_len` tokens: the `secure-eval` result shape
    (no fidelity), with `"predicted": true`."""
    from pi_lnfree.secure.profile import load_networks
    from pi_lnfree.secure.result import cost_result

    t0 = time.perf_counter()
    check_supported(cfg, profile, seq_len)
    cal = cal if cal is not None else load_calibration(profile)
    networks = networks if networks is not None else load_networks()
    state = predicted_state(trace(cfg, seq_len), cal, profile.provider)
    result = {
        "checkpoint": str(checkpoint) if checkpoint else None,
        **cost_result(cfg, profile, [state], seq_len, 1, "none needed: costs depend on shapes only", networks),
        "predicted": True,
        "calibration": {"path": cal.path, "exact": cal.exact, "max_relative_residual": cal.max_residual(),
                        **{k: cal.meta.get(k) for k in ("created", "machine", "load_average", cal.engine)}},
        "seconds_note": _notes(profile, cal),
        "parties": {"mode": "predicted (no parties run)", "world_size": profile.world_size,
                    "dealer": cal.engine == "crypten" and profile.provider == "TTP",
                    **({"engine": "spu"} if cal.engine == "spu" else {})},
        "weight_sharing_seconds": None,
    }
    result["wall_seconds"] = time.perf_counter() - t0
    return result


# ---------------------------------------------------------------------------------------------
# the `pi-lnfree cost` command


def resolve_config(
    checkpoint: str | Path | None,
    preset: str | None,
    variant: str | None,
    vocab_size: int | None = None,
    sets: list[str] | tuple[str, ...] = (),
) -> ModelConfig:
    """The model config to cost: a checkpoint's (file or run dir), or preset + variant, with
    `model.KEY=VALUE` overrides from `sets`, type-checked as a recipe's [model] keys."""
    from pi_lnfree.config import make_config
    from pi_lnfree.recipe import model_overrides

    overrides = model_overrides(sets)
    if checkpoint is not None:
        if preset is not None or variant is not None or vocab_size is not None:
            raise UserError("give either a checkpoint or --preset/--variant/--vocab-size, not both")
        from pi_lnfree.checkpoint import config_from_checkpoint, load_checkpoint, resolve_checkpoint

        path = resolve_checkpoint(checkpoint)  # a ckpt.pt, or a run dir holding one
        cfg = config_from_checkpoint(load_checkpoint(path), path)
        return cfg.replace(**overrides) if overrides else cfg
    if preset is None or variant is None:
        raise UserError("give a checkpoint, or both --preset and --variant")
    return make_config(preset, variant, 50257 if vocab_size is None else int(vocab_size), **overrides)


__all__ = [
    "Calibration",
    "Call",
    "KindFit",
    "calibration_path",
    "load_calibration",
    "predict",
    "predict_ops",
    "predicted_state",
    "profile_knobs",
    "resolve_config",
    "trace",
]
