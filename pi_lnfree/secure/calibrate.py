"""Calibrate the cost model: run every secure primitive at small shapes under real parties, fit.

`calibrate(profile_path)` runs, in one launch of the two CrypTen parties (plus the TTP dealer when
the profile asks for one), each metered primitive of `CryptenOps` at a designed set of shapes (`design`): many
tiny shapes that pin down the byte and round coefficients exactly, and a few larger ones for the
local-compute estimate. Each call is metered on its own (`Meter`, combined over both parties as
secure-eval does), then `fit` regresses the measurements on the shape features of
`pi_lnfree.secure.cost_features.features`: least squares for bytes and dealer bytes, integer
coefficients for rounds and dealer requests, non-negative least squares for seconds (the online
phase's local compute) and offline seconds (making the call's tuples). Every item runs in two
phases, as `secure-eval` does: its request trace, the offline phase, the metered online call. A kind whose
bytes or rounds the features do not explain exactly is an error (the engine changed in a way the
cost model does not know), never a silent approximation.

`measure` runs arbitrary items (primitive calls, whole secure forwards of a config, single blocks)
in one launch; tests and benchmarks use it to compare predictions with real runs.
"""

from __future__ import annotations

import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from pi_lnfree.errors import UserError
from pi_lnfree.secure.calls import rotary_dims
from pi_lnfree.secure.cost_features import (
    FIELD_GROUP,
    GROUPS,
    SPU_MMUL_LIMIT,
    TIME_FIELDS,
    features,
    field_vector,
    on_traffic,
    spu_share_bytes,
)
from pi_lnfree.secure.costmodel import (
    ACTIVATION_KINDS,
    INTEGER_FIELDS,
    Calibration,
    KindFit,
    calibration_path,
    profile_knobs,
)
from pi_lnfree.secure.parties import launch_local, local_jobs
from pi_lnfree.secure.profile import ProtocolProfile, load_profile
from pi_lnfree.secure.roles import CLIENT, SERVER

EXACT_FIELDS = ("bytes", "dealer_bytes", "rounds", "dealer_requests")

# Tiny shapes fix bytes and rounds exactly (cheap); larger, model-like shapes fix the seconds.
_MATMUL_SHAPES = [(1, 2, 3), (2, 3, 2), (3, 2, 5), (2, 5, 4), (4, 3, 3), (1, 4, 2)]
_HEAD_SHAPES = [(1, 2, 3), (2, 3, 2), (1, 5, 4), (3, 2, 2), (2, 4, 5)]
_SOFTMAX_T = [2, 3, 4, 5, 7, 8, 11, 13, 17, 20, 23, 30]
_TIMING: dict[str, list[dict[str, int]]] = {
    "linear": [dict(T=64, i=128, o=512, bias=1), dict(T=128, i=768, o=768, bias=1), dict(T=128, i=768, o=3072, bias=1)],
    "embedding": [dict(T=64, V=512, d=128, pos=1), dict(T=32, V=4096, d=256, pos=1), dict(T=128, V=8192, d=768, pos=1)],
    "lm_head": [dict(T=64, d=128, V=512), dict(T=32, d=256, V=4096), dict(T=128, d=768, V=8192)],
    "attention_scores": [dict(H=4, T=64, hd=32), dict(H=12, T=128, hd=64)],
    "attention_mix": [dict(H=4, T=64, hd=32), dict(H=12, T=128, hd=64)],
    "softmax": [dict(H=1, T=64), dict(H=1, T=128), dict(H=4, T=64), dict(H=12, T=128)],
    "layernorm": [dict(T=64, d=256), dict(T=128, d=768)],
    "dyt": [dict(T=64, d=256), dict(T=128, d=768)],
    "activation": [dict(T=32, n=512), dict(T=128, n=1536)],
    "other": [dict(n=4096), dict(n=65536), dict(n=262144)],
}
# SPU's `other` also holds rotary positions, which cost communication there (`features`)
_SPU_ROTARY = [(1, 2, 4, 2), (2, 3, 4, 4), (1, 5, 6, 2), (3, 2, 8, 4)]  # (H, T, hd, rd)
_SPU_ROTARY_TIMING = [(4, 64, 32, 8), (12, 128, 64, 16)]
CHEETAH_TIMING_SHAPES = 2  # CHEETAH times the first (smallest) shapes of each kind only: HE is slow


def design(profile: ProtocolProfile, timing: bool = True) -> list[dict[str, Any]]:
    """The calibration points of `profile`: one item per (kind, shape). `timing=False` keeps only
    the tiny shapes (exact bytes and rounds, no useful seconds): for tests."""
    tiny: list[tuple[str, dict[str, int]]] = []
    for T, i, o in _MATMUL_SHAPES:
        tiny.append(("linear", dict(T=T, i=i, o=o, bias=(T + i) % 2)))
        tiny.append(("embedding", dict(T=T, V=i + 2, d=o, pos=(T + o) % 2)))
        tiny.append(("lm_head", dict(T=T, d=i, V=o + 1)))
    for kind in ("attention_scores", "attention_mix"):
        tiny += [(kind, dict(H=H, T=T, hd=hd)) for H, T, hd in _HEAD_SHAPES]
    tiny += [("softmax", dict(H=1 + (T % 2), T=T)) for T in _SOFTMAX_T]
    if profile.max_method == "pairwise":  # all-pairs max over >= 129 entries sums instead of multiplying
        tiny += [("softmax", dict(H=1, T=129)), ("softmax", dict(H=1, T=131))]
    tiny += [(k, dict(T=T, d=d)) for k in ("layernorm", "dyt") for T, d in [(1, 3), (2, 5), (3, 2), (4, 4), (2, 7)]]
    kinds = [f"activation:{a}" for a in ACTIVATION_KINDS]
    tiny += [(k, dict(T=T, n=n)) for k in kinds for T, n in [(1, 3), (2, 5), (3, 4)]]
    tiny += [("other", dict(n=n)) for n in (3, 50)]
    spu = profile.engine == "spu"
    if spu:
        tiny += [("other", rotary_dims(*dims)) for dims in _SPU_ROTARY]
    items = [{"type": "call", "kind": k, "dims": d, "repeat": 1} for k, d in tiny]
    if timing:  # two repeats each: the faster one counts (the first call of a shape warms caches)
        for kind in sorted({k for k, _ in tiny}):
            shapes = _TIMING[kind.split(":")[0]]
            if kind == "softmax" and profile.max_method == "pairwise" and not spu:  # T^3 comparisons
                shapes = [dict(H=1, T=32), dict(H=2, T=64), dict(H=1, T=128)]
            if spu and kind == "other":
                shapes = shapes[:2] + [rotary_dims(*dims) for dims in _SPU_ROTARY_TIMING]
            if spu and profile.spu_protocol == "CHEETAH":
                shapes = shapes[:CHEETAH_TIMING_SHAPES]
            for dims in shapes:
                items.append({"type": "call", "kind": kind, "dims": dims, "repeat": 2})
        if spu and profile.spu_protocol != "CHEETAH":
            items += [{"type": "call", "kind": k, "dims": d, "repeat": 1} for k, d in spu_tiled_calls(profile)]
    return items


def spu_tiled_calls(profile: ProtocolProfile) -> list[tuple[str, dict[str, int]]]:
    """The cheapest embedding and LM head calls that SPU tiles (`cost_features.spu_mmul_blocks`):
    operands just over its 256 MiB limit, split into two inner blocks (embedding) or 2 x 2 row and
    column blocks (LM head). They fix the send actions of each block past the first; bytes follow
    from the untiled unit costs, so the exact fit checks the tiling rule too. Not under CHEETAH
    (its HE products at this size take hours on two cores): there a tiled call is refused."""
    elements = SPU_MMUL_LIMIT // spu_share_bytes(profile.spu_protocol, profile.spu_field)
    return [("embedding", dict(T=2, V=elements // 4 + 1024, d=2, pos=0)),
            ("lm_head", dict(T=2, d=16, V=elements // 16 + 1024))]


# ---------------------------------------------------------------------------------------------
# inside the party processes


def _share(shape, src: int, rank: int, scale: float = 0.5, positive: bool = False, device=None):
    """Secret-share a tensor of `shape` held by party `src` (random values; costs ignore them;
    data-less on the `meta` device, where a request trace runs)."""
    import torch

    from pi_lnfree.secure import crypten_compat

    if rank != src or str(device) == "meta":
        t = torch.zeros(shape, device=device)
    else:
        t = torch.rand(shape) + 0.5 if positive else torch.randn(shape) * scale
    return crypten_compat.cryptensor(t, src=src, device=device)


def _call_builder(ops, kind: str, dims: dict[str, int], rank: int):
    """`pi_lnfree.secure.calls.call_thunk` with CrypTen's sharing on `ops.device`."""
    from pi_lnfree.secure.calls import call_thunk

    def share(shape, owner, scale=0.5, positive=False):
        return _share(shape, owner, rank, scale, positive, device=ops.device)

    return call_thunk(ops, kind, dims, share)


def _model_builder(item: dict[str, Any], profile, rank: int):
    """`build(meter, device)` for a whole secure forward (`forward`) or one block (`block`) of a
    config with random weights: shares the inputs, returns the thunk that runs it."""
    import torch

    from pi_lnfree.config import ModelConfig
    from pi_lnfree.model import GPT
    from pi_lnfree.secure.backends.crypten_ops import CryptenOps
    from pi_lnfree.secure.structure import Decoder, load_weights

    cfg = ModelConfig.from_dict(item["config"])
    T = int(item["T"])
    state = None
    if rank == SERVER:
        torch.manual_seed(int(item.get("seed", 0)))
        state = GPT(cfg).state_dict()

    def build(meter, device):
        ops = CryptenOps(meter, profile, device)
        real = str(device) != "meta"
        weights = load_weights(cfg, state if real else None, ops)
        model = Decoder(cfg, weights, ops)
        if item["type"] == "forward":
            tokens = torch.randint(0, cfg.vocab_size, (T,)) if rank == CLIENT and real else None
            x = ops.tokens(tokens, T, cfg.vocab_size)
            return lambda: model.forward(x)
        x = _share((1, T, cfg.n_embd), CLIENT, rank, device=device)
        return lambda: model.block(int(item.get("layer", 0)), x)

    return build


def _measure_two_phase(build, profile, rank: int) -> dict[str, Any]:
    """One item in two phases: its request trace (`build(meter, META)` on data-less tensors), the
    offline phase, then `build(meter, cpu)`'s thunk metered in the online phase. This party's
    meter state (dealer traffic attributed as a one-phase run meters it) with its `offline` cost."""
    from pi_lnfree.secure import crypten_compat, phases
    from pi_lnfree.secure.meter import Meter
    from pi_lnfree.secure.tuples import META, record_trace

    trace = record_trace(lambda m: build(m, META)(), rank)
    phases.check_same_trace(trace)
    meter = Meter(crypten_compat.meter_stats)
    thunk = build(meter, "cpu")

    def online():
        with meter.span():
            thunk()

    _, offline = phases.offline_then_online(trace, online)
    state = meter.state()
    if profile.provider == "TTP" and rank == CLIENT:
        phases.attribute_dealer(state, trace)
    return {**state, "offline": offline.to_dict()}


def _party_items(rank: int, profile, items: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Run every item (each `repeat` times) in two phases; this party's states per item."""
    from pi_lnfree.secure import phases
    from pi_lnfree.secure.backends.crypten_ops import CryptenOps

    phases.install()
    out = []
    for item in items:
        if item["type"] == "call":
            def build(meter, device, item=item):
                return _call_builder(CryptenOps(meter, profile, device), item["kind"], item["dims"], rank)

            repeats = int(item.get("repeat", 1))
        else:
            build, repeats = _model_builder(item, profile, rank), 1
        out.append([_measure_two_phase(build, profile, rank) for _ in range(repeats)])
    return out


def party_program(job) -> list[list[dict[str, Any]]] | None:
    """`PartyJob.program` of a measuring run: run `job.payload` (the items); the client returns
    the combined meter states per item and repeat, the server None."""
    from pi_lnfree.secure import crypten_compat
    from pi_lnfree.secure.meter import combine_parties
    from pi_lnfree.secure.phases import combine_offline

    mine = _party_items(job.rank, job.profile, job.payload)
    theirs = crypten_compat.exchange_json(mine if job.rank == SERVER else None, src=SERVER)
    if job.rank != CLIENT:
        return None
    return [[{**combine_parties(c, s), "offline": combine_offline(c["offline"], s["offline"])}
             for c, s in zip(cs, ss, strict=True)] for cs, ss in zip(mine, theirs, strict=True)]


def measure(profile: ProtocolProfile, items: list[dict[str, Any]], timeout_s: float = 120.0) -> list[list[dict]]:
    """Run `items` in one launch of local parties; per item, the combined meter state of each
    repeat (`{"ops", "span"}` as `meter.combine_parties` gives it).

    Items: `{"type": "call", "kind", "dims", "repeat"}` (one primitive, see `design`),
    `{"type": "forward", "config": dict, "T"}` (a secure forward with random weights and tokens)
    or `{"type": "block", "config": dict, "T", "layer"}` (one block on a random shared input).
    An SPU profile runs them in SPU parties (`spu_engine.measure_local`), combined as SPU's
    secure-eval combines its parties (`meter.combine_senders`, no offline phase)."""
    return _measure_with_engine(profile, items, timeout_s)[0]


def _measure_with_engine(profile: ProtocolProfile, items: list[dict[str, Any]],
                         timeout_s: float) -> tuple[list[list[dict]], dict[str, str]]:
    """`measure`, and the engine that ran it with its version ({"crypten": "0.4.1"} or {"spu": ...})."""
    if profile.engine == "spu":
        from pi_lnfree.secure.spu_engine import measure_local

        measured, spu_version = measure_local(profile, items, timeout_s)
        return measured, {"spu": spu_version}
    from importlib.metadata import version

    jobs = local_jobs(profile, timeout_s, program=f"{__name__}:party_program", payload=items)
    return launch_local(jobs, timeout_s)[CLIENT], {"crypten": version("crypten")}


# ---------------------------------------------------------------------------------------------
# fitting


def _nnls(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative least squares by dropping the most negative coefficient until none is."""
    active = list(range(a.shape[1]))
    coef = np.zeros(a.shape[1])
    while active:
        sol, *_ = np.linalg.lstsq(a[:, active], y, rcond=None)
        if (sol >= 0).all():
            coef[active] = sol
            break
        active.pop(int(np.argmin(sol)))
    return coef


def _relative_lstsq(a: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Least squares of the relative residuals (rows weighted by 1 / max(y, 1)): coefficients and
    the largest |fit - y| / max(y, 1)."""
    w = 1.0 / np.maximum(np.abs(y), 1.0)
    scale = np.maximum(np.abs(a).max(axis=0), 1.0)
    c, *_ = np.linalg.lstsq(a / scale * w[:, None], y * w, rcond=None)
    c = c / scale
    return c, float((np.abs(a @ c - y) * w).max(initial=0.0))


def fit_kind(kind: str, points: list[tuple[dict[str, int], dict[str, float]]], max_method: str,
             engine: str = "crypten", exact: tuple[str, ...] = EXACT_FIELDS, share_bytes: int = 8) -> KindFit:
    """Fit one kind's unit costs on `(dims, measured record)` points (`features` of `engine`);
    raises `UserError` when the features do not reproduce a measured count of an `exact` field
    (`exact_fields`) exactly. The other count fields (SPU CHEETAH's bytes and rounds, ABY3's
    rounds) are fitted by relative least squares instead (CHEETAH's on the size and count
    features together, `cost_features.on_traffic`), each keeping its largest relative residual in
    `KindFit.residual`; fields absent from the records (an SPU run has no offline
    phase) get no coefficients."""
    feats = [features(kind, dims, max_method, engine, share_bytes) for dims, _ in points]
    names = {g: list(feats[0][g]) for g in GROUPS}
    rows = {g: np.asarray([[f[g][n] for n in names[g]] for f in feats], dtype=np.float64) for g in GROUPS}
    coef: dict[str, list[float]] = {}
    residual: dict[str, float] = {}
    for fld, group in FIELD_GROUP.items():
        if fld not in points[0][1]:
            continue
        a = rows[group]
        y = np.asarray([rec[fld] for _, rec in points], dtype=np.float64)
        scale = np.maximum(np.abs(a).max(axis=0), 1.0)
        if fld in TIME_FIELDS:
            c = _nnls(a / scale, y) / scale
        elif fld not in exact:
            fitted = [f for f in FIELD_GROUP if f not in exact and f not in TIME_FIELDS]
            a = np.asarray([field_vector(fld, f, names, on_traffic(fld, fitted)) for f in feats], dtype=np.float64)
            c, residual[fld] = _relative_lstsq(a, y)
        else:
            c, *_ = np.linalg.lstsq(a / scale, y, rcond=None)
            c = c / scale
            if fld in INTEGER_FIELDS:
                c = np.round(c)
            resid = np.abs(a @ c - y)
            tol = 1e-6 * np.maximum(np.abs(y), 1.0) + (0.0 if fld in INTEGER_FIELDS else 1e-3)
            if (resid > tol).any():
                bad = int(np.argmax(resid - tol))
                raise UserError(
                    f"calibration: the {fld} of {kind} at {points[bad][0]} ({y[bad]:g}) is not explained by the "
                    f"shape features {names[group]} (fit gives {float(a[bad] @ c):g}); the secure engine changed "
                    f"in a way the cost model does not know"
                )
        coef[fld] = [float(v) for v in c]
    design = {g: rows[g].tolist() for g in ("size", "count")}
    return KindFit(names, coef, design, residual)


def exact_fields(profile: ProtocolProfile) -> tuple[str, ...]:
    """The count fields of `EXACT_FIELDS` that are exact functions of the shape features under
    `profile`: all of them under CrypTen and SPU SEMI2K. Under SPU ABY3 the bytes are, the rounds
    (send actions of the busiest party) are not: its probabilistic truncation and its OT-based
    share conversions draw each call's party roles from a shared PRG (SPU 0.9.5,
    `libspu/mpc/aby3/arithmetic.cc`, `pivot % 3`), so which party sends most varies from call to
    call. Under SPU CHEETAH neither is (its HE products pack elements into ciphertexts of a fixed
    number of slots, and its silent-OT correlations are made in batches whose refill is charged
    to whichever operator drains the pool)."""
    if profile.engine != "spu" or profile.spu_protocol == "SEMI2K":
        return EXACT_FIELDS
    if profile.spu_protocol == "ABY3":
        return tuple(f for f in EXACT_FIELDS if f != "rounds")
    return tuple(f for f in EXACT_FIELDS if f not in ("bytes", "rounds"))


def fit(profile: ProtocolProfile, items: list[dict[str, Any]], measured: list[list[dict]]) -> Calibration:
    """Per-kind fits of the measured calls. Counts of every repeat must agree where they are
    exact (`exact_fields`); otherwise their mean counts. Seconds: the fastest repeat."""
    exact = exact_fields(profile)
    by_kind: dict[str, list[tuple[dict[str, int], dict[str, float]]]] = {}
    for item, states in zip(items, measured, strict=True):
        if item["type"] != "call":
            continue
        recs = [dict(s["ops"][_category(item["kind"])]) for s in states]
        if all("offline" in s for s in states):
            for rec, s in zip(recs, states, strict=True):
                rec["offline_seconds"] = s["offline"]["seconds"]
        for rec in recs[1:]:
            if any(rec[f] != recs[0][f] for f in exact):
                raise UserError(f"calibration: {item['kind']} at {item['dims']} cost differently on repeat")
        best = dict(recs[0], **{f: sum(r[f] for r in recs) / len(recs) for f in EXACT_FIELDS})
        best.update({f: min(r[f] for r in recs) for f in TIME_FIELDS if f in best})
        by_kind.setdefault(item["kind"], []).append((item["dims"], best))
    cal = Calibration(profile_knobs(profile), {})
    cal.kinds = {k: fit_kind(k, pts, profile.max_method, cal.engine, exact, cal.share_bytes) for k, pts in by_kind.items()}
    return cal


def _category(kind: str) -> str:
    if kind.startswith("activation:"):
        return "activation"
    if kind == "dyt":
        return "layernorm"
    return "attention" if kind.startswith("attention_") else kind


def calibrate(profile_path: str | Path, out: str | Path | None = None, timeout_s: float = 600.0) -> dict[str, Any]:
    """Measure and fit the unit costs of a profile; writes `<profile>.calibration.json` next to it
    (or `out`). Returns a summary (the `pi-lnfree cost --calibrate --json` result)."""
    from importlib.metadata import version

    profile = load_profile(profile_path)
    items = design(profile)
    t0 = time.perf_counter()
    measured, engine = _measure_with_engine(profile, items, timeout_s)
    cal = fit(profile, items, measured)
    cal.meta = {
        "profile": profile.name,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count() or 1} CPUs",
        # seconds are local compute on this machine, measured while it had this load
        "load_average": [round(x, 2) for x in os.getloadavg()],
        **engine,
        "torch": version("torch"),
        "points": len(items),
        "exact": cal.exact,
        "max_relative_residual": cal.max_residual(),
        "calibration_seconds": round(time.perf_counter() - t0, 1),
        "command": f"pi-lnfree cost --calibrate {profile_path}",
    }
    path = Path(out) if out is not None else calibration_path(profile_path)
    cal.save(path)
    return {"profile": profile.name, "calibration": str(path), "kinds": sorted(cal.kinds), **cal.meta}


__all__ = ["calibrate", "design", "exact_fields", "fit", "fit_kind", "measure", "party_program"]
