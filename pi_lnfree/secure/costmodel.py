"""Predicted secure-inference cost: calibrated per-primitive unit costs, composed over a model.

CrypTen's communication depends only on tensor shapes and protocol knobs, never on values; so
does SecretFlow SPU's. The secure forward (`pi_lnfree.secure.structure.Decoder` on `CryptenOps`
or `SpuOps`) calls nothing but the metered primitives of its backend, so its cost is the sum of
the costs of those calls:

1. `trace(cfg, T)` lists the primitive calls of one forward pass (kind + shape dims) by running
   the decoder structure (`pi_lnfree.secure.structure`) on the recording backend: the same code
   the secure engine runs, on shapes.
2. `features(kind, dims, max_method)` turns one call into shape features in three groups:
   `size` (element counts: bytes and dealer bytes are linear in them), `count` (call constants
   and reduction depths: rounds and dealer requests are linear in them) and `time` (elements and
   multiply-adds: the local compute estimate). The softmax's row max follows CrypTen's algorithm:
   `int(ln T)` pairwise compare-and-select halvings (`log_reduction`; none for `pairwise`), then
   an all-pairs max over what is left, whose `prod` tree has ceil(log2(m-1)) levels; the
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
inputs). Several kinds take SPU's own features (`_spu_features`): products (SPU tiles a large
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
import math
import time
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pi_lnfree.config import ACTIVATIONS, ModelConfig
from pi_lnfree.errors import UserError
from pi_lnfree.files import write_json
from pi_lnfree.resources import protocol_file
from pi_lnfree.secure.backends.recorder import Call, RecorderOps, Shape
from pi_lnfree.secure.meter import empty_ops, total_of
from pi_lnfree.secure.profile import ProtocolProfile
from pi_lnfree.secure.structure import Decoder, check_supported, load_weights

FORMAT = 2
GROUPS = ("size", "count", "time")
# which feature group each metered field is fitted on
FIELD_GROUP = {"bytes": "size", "dealer_bytes": "size", "rounds": "count", "dealer_requests": "count",
               "seconds": "time", "offline_seconds": "time"}
TIME_FIELDS = ("seconds", "offline_seconds")  # estimates (non-negative fits), not exact counts
# fields of the meter's per-category records (`offline_seconds` is a phase total, not per category)
OPS_FIELDS = ("bytes", "dealer_bytes", "rounds", "dealer_requests", "seconds")
INTEGER_FIELDS = ("rounds", "dealer_requests")
ACTIVATION_KINDS = ACTIVATIONS  # one calibrated kind per FFN activation: activation:<name>
PAIRWISE_PROD_LIMIT = 128  # CrypTen: all-pairs max multiplies (prod) below this, sums and compares above
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
# shape features


@dataclass(frozen=True)
class PairwiseStage:
    """One all-pairs max (CrypTen's `pairwise` method) over rows of length `m`; each row of the
    input is `mult` rows here (the double-log recursion folds blocks of a row into rows)."""

    mult: int
    m: int

    @property
    def row_length(self) -> int:  # CrypTen treats a single entry as a row of 2
        return self.m if self.m > 1 else 2

    @property
    def sums(self) -> bool:
        """True when the all-pairs max sums its comparisons instead of multiplying them."""
        return self.row_length - 1 >= PAIRWISE_PROD_LIMIT

    @property
    def prod_levels(self) -> int:
        """Sequential multiplications of CrypTen's `prod` tree over row_length - 1 factors."""
        if self.sums:
            return 0
        k, levels = self.row_length - 1, 0
        while k > 1:
            k, levels = k // 2 + k % 2, levels + 1
        return levels


@dataclass(frozen=True)
class MaxSchedule:
    """How CrypTen's max over rows of length T proceeds: `steps` compare-and-select halvings with
    `tree_pairs` pairs per row in total, then all-pairs maxima (`stages`, in sequence)."""

    steps: int
    tree_pairs: int
    stages: tuple[PairwiseStage, ...]


def _double_log_stages(n: int, mult: int) -> list[PairwiseStage]:
    """CrypTen's `_max_helper_double_log_recursive`: blocks of isqrt(n) recursively, then one
    all-pairs max over the block maxima and the remainder."""
    if n == 1:
        return []
    root = int(math.sqrt(n))
    count = n // root
    return [*_double_log_stages(root, mult * count), PairwiseStage(mult, count + n % root)]


def _halvings(T: int, steps: int) -> tuple[int, int]:
    """(pairs compared, entries left) after `steps` compare-and-select halvings of T entries."""
    m, pairs = T, 0
    for _ in range(max(steps, 0)):
        pairs += m // 2
        m = m // 2 + m % 2
    return pairs, m


def max_schedule(T: int, method: str) -> MaxSchedule:
    """The reduction schedule of `crypten_compat.row_max` for rows of length T (CrypTen 0.4.1's
    `maximum.py`, method by method)."""
    if method == "pairwise":
        return MaxSchedule(0, 0, (PairwiseStage(1, T),))
    if method == "log_reduction":
        steps = int(math.log(T)) if T > 1 else 0
        pairs, m = _halvings(T, steps)
        return MaxSchedule(steps, pairs, (PairwiseStage(1, m),))
    if method == "double_log_reduction":
        return MaxSchedule(0, 0, tuple(_double_log_stages(T, 1)))
    if method == "accelerated_cascade":
        if T < 3:
            return MaxSchedule(0, 0, (PairwiseStage(1, T),))
        steps = max(int(math.log(math.log(math.log(T)))) + 1, 0)
        pairs, m = _halvings(T, steps)
        return MaxSchedule(steps, pairs, tuple(_double_log_stages(m, 1)))
    raise UserError(f"unknown max_method {method!r}")


def _matmul_features(n_x: int, n_w: int, n_y: int, macs: int) -> dict[str, dict[str, float]]:
    return {
        "size": {"x": n_x, "w": n_w, "y": n_y, "one": 1},
        "count": {"one": 1},
        "time": {"macs": macs, "operands": n_x + n_w, "y": n_y, "one": 1},
    }


def spu_max_steps(T: int) -> int:
    """Sequential compare-and-select levels of SPU's row max over T entries (SPU 0.9.5,
    `libspu/kernel/hlo/reduce.cc`, `TreeReduce`): each level compares the two halves of the row,
    an odd entry is set aside, and the set-aside entries are compared one by one at the end. A
    row of T entries therefore takes floor(log2 T) halvings plus one step per set-aside entry
    (the 1 bits of T below its leading one), and T - 1 comparisons in all."""
    return max(T.bit_length() - 1, 0) + max(bin(T).count("1") - 1, 0)


SPU_MMUL_LIMIT = 256 * 1024 * 1024  # bytes of both operands' shares above which SPU tiles a product


def spu_share_bytes(protocol: str, field_name: str) -> int:
    """Bytes of one party's share of one ring element under SPU: the ring's (FM64 8, FM128 16),
    twice that under ABY3 (a replicated share holds two ring elements)."""
    ring = {"FM32": 4, "FM64": 8, "FM128": 16}[field_name]
    return 2 * ring if protocol == "ABY3" else ring


def spu_mmul_blocks(m: int, n: int, k: int, share_bytes: int) -> tuple[int, int, int]:
    """(row, column, inner) blocks of SPU's tiled (m, k) @ (k, n) product of secrets (SPU 0.9.5,
    `libspu/kernel/hal/ring.cc`, `calcMmulTilingSize` and `_mmul`): a product whose operands'
    shares exceed `SPU_MMUL_LIMIT` bytes runs block by block; each block opens its own slices of
    both operands, so X is opened once per column block and W once per row block."""
    if min(m, n, k) == 0 or (m * k + k * n) * share_bytes < SPU_MMUL_LIMIT:
        return 1, 1, 1
    limit = SPU_MMUL_LIMIT / share_bytes
    if k > (m + n) * 8:  # tall and skinny: only the large dimension is split
        mn_step = m + n
        k_step = max(1, math.ceil(limit / mn_step))
    elif m + n > k * 8:
        k_step = k
        mn_step = max(1, math.ceil(limit / k_step))
    else:
        ratio = k / (m + n)
        mn = math.sqrt(limit / ratio)
        k_step = max(1, math.ceil(limit / mn))
        mn_step = max(1, math.ceil(mn))
    m_step = max(mn_step * m // (m + n), 1)
    n_step = max(mn_step * n // (m + n), 1)
    return -(-m // m_step), -(-n // n_step), -(-k // k_step)


def _spu_matmul_features(m: int, n: int, k: int, share_bytes: int) -> dict[str, dict[str, float]]:
    """`_matmul_features` of an (m, k) @ (k, n) product under SPU's tiling (`spu_mmul_blocks`):
    the opened elements of X and W (SEMI2K's Beaver products) count once per block that opens
    them; each inner block makes its own (m, n) partial product (ABY3 reshares every one), so
    `partial` counts the partial products past the first; and every block past the first adds
    its own send actions (`blocks`). Both are zero for an untiled product: a calibration without
    a tiled product refuses a tiled one instead of guessing."""
    mb, nb, kb = spu_mmul_blocks(m, n, k, share_bytes)
    own = _matmul_features(nb * m * k, mb * k * n, m * n, m * n * k)
    return {**own, "size": {**own["size"], "partial": (kb - 1) * m * n},
            "count": {"one": 1, "blocks": mb * nb * kb - 1}}


def _spu_features(kind: str, dims: dict[str, int], share_bytes: int) -> dict[str, dict[str, float]] | None:
    """The features of SPU's kernels where they differ from CrypTen's (None elsewhere): SPU tiles
    a large product of two secrets (`_spu_matmul_features`; `share_bytes` per ring element of
    one party's share, `spu_share_bytes`); it runs a product of all heads (and may run a head's kernels) head by head, so send actions may grow
    with the heads H; the softmax's row max is SPU's halving tree (`spu_max_steps`), not one of
    CrypTen's max methods;
    `other` holds rotary positions, whose products with the public tables SPU truncates with
    communication (CrypTen's two-party truncation is local), so their rotated elements count."""
    g = dims.get
    mnk = {"embedding": ("T", "d", "V"), "linear": ("T", "o", "i"), "lm_head": ("T", "V", "d")}.get(kind)
    if mnk is not None:
        return _spu_matmul_features(*(g(a) for a in mnk), share_bytes)
    if kind in ("attention_scores", "attention_mix"):
        own = features(kind, dims, "", "crypten")
        return {**own, "count": {"one": 1, "heads": g("H")}}
    if kind == "softmax":
        T, rows = g("T"), g("H") * g("T")
        return {
            # the tree's rows x (T - 1) comparisons are elements - rows: no feature of their own
            "size": {"elements": rows * T, "rows": rows, "one": 1},
            "count": {"one": 1, "steps": spu_max_steps(T), "heads": g("H")},
            "time": {"elements": rows * T, "rows": rows, "one": 1},
        }
    if kind == "other":
        rotated = 2 * g("H", 0) * g("T", 0) * g("rd", 0)  # q and k
        return {
            "size": {"elements": g("n"), "rotated": rotated, "one": 1},
            "count": {"one": 1, "rotary": int(rotated > 0)},
            "time": {"elements": g("n"), "rotated": rotated, "one": 1},
        }
    return None


def features(kind: str, dims: dict[str, int], max_method: str, engine: str = "crypten",
             share_bytes: int = 8) -> dict[str, dict[str, float]]:
    """Shape features of one call, by group (see the module docstring); `engine` "spu" takes
    SPU's own product, attention, softmax and `other` features (`_spu_features`, with
    `share_bytes` of `spu_share_bytes`). Raises `ValueError` for an unknown kind."""
    g = dims.get
    if engine == "spu":
        own = _spu_features(kind, dims, share_bytes)
        if own is not None:
            return own
    if kind == "embedding":
        return _matmul_features(g("T") * g("V"), g("V") * g("d"), g("T") * g("d"), g("T") * g("V") * g("d"))
    if kind == "linear":
        return _matmul_features(g("T") * g("i"), g("i") * g("o"), g("T") * g("o"), g("T") * g("i") * g("o"))
    if kind == "lm_head":
        return _matmul_features(g("T") * g("d"), g("d") * g("V"), g("T") * g("V"), g("T") * g("d") * g("V"))
    if kind in ("attention_scores", "attention_mix"):
        qkv, scores = g("H") * g("T") * g("hd"), g("H") * g("T") * g("T")
        return {
            "size": {"qkv": qkv, "scores": scores, "one": 1},
            "count": {"one": 1},
            "time": {"macs": scores * g("hd"), "qkv": qkv, "scores": scores, "one": 1},
        }
    if kind == "softmax":
        T, rows = g("T"), g("H") * g("T")
        s = max_schedule(T, max_method)
        pw = [(rows * st.mult, st) for st in s.stages]  # (rows of the stage, stage)
        pairs = sum(r * st.m * (st.row_length - 1) for r, st in pw)
        return {
            "size": {
                "elements": rows * T, "rows": rows, "tree": rows * s.tree_pairs, "pairs": pairs,
                "prod": sum(r * st.m * (st.row_length - 2) for r, st in pw if not st.sums),
                "survivors": sum(r * st.m for r, st in pw),
                "sums": sum(r * st.m for r, st in pw if st.sums),
                "stage_rows": sum(r for r, _ in pw),
                "one": 1,
            },
            "count": {"one": 1, "steps": s.steps, "stages": len(s.stages),
                      "prod_levels": sum(st.prod_levels for st in s.stages),
                      "sums": sum(int(st.sums) for st in s.stages)},
            "time": {"elements": rows * T, "tree": rows * s.tree_pairs, "pairs": pairs, "rows": rows, "one": 1},
        }
    if kind == "layernorm":
        n = g("T") * g("d")
        return {
            "size": {"elements": n, "rows": g("T"), "width": g("d"), "one": 1},
            "count": {"one": 1},
            "time": {"elements": n, "rows": g("T"), "one": 1},
        }
    if kind == "dyt":
        n = g("T") * g("d")
        return {"size": {"elements": n, "width": g("d"), "one": 1}, "count": {"one": 1},
                "time": {"elements": n, "one": 1}}
    if kind.startswith("activation:"):
        n = g("T") * g("n")
        return {"size": {"elements": n, "one": 1}, "count": {"one": 1}, "time": {"elements": n, "one": 1}}
    if kind == "other":
        return {"size": {"elements": g("n"), "one": 1}, "count": {"one": 1}, "time": {"elements": g("n"), "one": 1}}
    raise ValueError(f"unknown primitive kind {kind!r}")


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


def traffic_names(names: dict[str, list[str]]) -> list[str]:
    """The features of a count field fitted by least squares where the bytes are too (`on_traffic`):
    the size and the count features together, since such counts need not split into the two
    (CHEETAH's send actions grow with the elements: OT messages, silent-OT refills)."""
    return [f"size.{n}" for n in names["size"]] + [f"count.{n}" for n in names["count"]]


def on_traffic(fld: str, fitted: Collection[str]) -> bool:
    """Whether count field `fld` is fitted on `traffic_names`, given the fields a kind fits by
    least squares (`KindFit.residual`): when the bytes are fitted too (CHEETAH). Where only the
    rounds are (ABY3: random party roles per call, not size), they keep the count features."""
    return fld in fitted and "bytes" in fitted and fld not in TIME_FIELDS


def field_vector(fld: str, feats: dict[str, dict[str, float]], names: dict[str, list[str]], traffic: bool) -> list[float]:
    """The feature values that `fld`'s coefficients multiply (`names`: a kind's feature names by
    group): its group's (`FIELD_GROUP`), or `traffic_names` (`on_traffic`)."""
    if not traffic:
        return [feats[FIELD_GROUP[fld]][n] for n in names[FIELD_GROUP[fld]]]
    both = {f"{g}.{n}": v for g in ("size", "count") for n, v in feats[g].items()}
    return [both[n] for n in traffic_names(names)]


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
                    f"the calibration does not cover a {kind} call with {group} features "
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
    "MaxSchedule",
    "PairwiseStage",
    "calibration_path",
    "features",
    "load_calibration",
    "max_schedule",
    "predict",
    "predict_ops",
    "predicted_state",
    "profile_knobs",
    "resolve_config",
    "trace",
]
