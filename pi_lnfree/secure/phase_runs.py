"""One party session that runs the same secure forward one-phase and two-phase, for the checks
that the two agree bit for bit (tests) and for the benchmark that times both in one run.

`compare_program` is a `PartyJob.program`: the server (rank 1) loads `job.checkpoint` and shares
its weights once; the client (rank 0) shares `job.tokens[0]`; then, for each mode of
`job.payload["modes"]` ("one": CrypTen's provider on demand; "two": `phases.offline_phase`
then the forward inside `phases.online_phase`), both parties restart every generator from
`job.payload["seed"]` (`phases.replay_seeds`: public seeds, no privacy; this is a
measurement) and run one forward. The client returns, per mode: the logits, both parties' meter
states (the forward; two-phase: the online phase), offline costs, wall seconds of the mode and
peak resident memory, and party 0's dealer counters during the forward. The meter states carry
no dealer traffic in the two-phase mode (`phases.attribute_dealer` is not applied: the point
here is what each mode measures).
"""

from __future__ import annotations

import time
from typing import Any

from pi_lnfree.config import ModelConfig
from pi_lnfree.secure import crypten_compat, phases
from pi_lnfree.secure.backends.crypten_ops import CryptenOps
from pi_lnfree.secure.meter import Meter
from pi_lnfree.secure.parties import PartyJob
from pi_lnfree.secure.roles import SERVER
from pi_lnfree.secure.structure import Decoder, load_weights

MODES = ("one", "two")


def _reset_peak_rss() -> None:
    """Restart this process's peak-RSS mark (Linux `clear_refs` 5; elsewhere a no-op)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_bytes() -> int:
    """Peak resident memory of this process since the last reset (Linux VmHWM; else maxrss)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _one_forward(cfg, weights, job: PartyJob, trace, tokens, mode: str) -> dict[str, Any]:
    seed = job.payload.get("seed")
    _reset_peak_rss()
    if seed is not None:
        phases.replay_seeds(int(seed))
    meter = Meter(crypten_compat.meter_stats)
    ops = CryptenOps(meter, job.profile, job.device)
    model = Decoder(cfg, weights, ops)
    crypten_compat.reset_comm_stats()
    t0 = time.perf_counter()

    def forward():
        onehot = ops.tokens(tokens, int(job.payload["seq_len"]), cfg.vocab_size)
        with meter.span():
            return model.forward(onehot)

    if mode == "two":
        out, offline = phases.offline_then_online(trace, forward, **job.payload.get("offline", {}))
        offline = offline.to_dict()
    else:
        out, offline = forward(), None
    return {
        "mode": mode,
        "logits": None if out is None else out[0].float().cpu(),
        "meter": meter.state(),
        "offline": offline,
        "seconds": time.perf_counter() - t0,
        "dealer_during_forward": crypten_compat.dealer_stats(),
        "peak_rss_bytes": peak_rss_bytes(),
    }


def compare_program(job: PartyJob) -> dict[str, Any]:
    """Party program (module docstring)."""
    modes = job.payload.get("modes", MODES)
    if any(m not in MODES for m in modes):
        raise ValueError(f"modes must be among {MODES}, got {modes}")
    if job.rank == SERVER:
        from pi_lnfree.checkpoint import load_model

        model, _ = load_model(job.checkpoint, "cpu")
        cfg, state = model.config, model.state_dict()
        crypten_compat.exchange_json(cfg.to_dict(), src=SERVER)
        tokens = None
    else:
        cfg = ModelConfig.from_dict(crypten_compat.exchange_json(None, src=SERVER))
        state, tokens = None, job.tokens[0]
    weights = load_weights(cfg, state, CryptenOps(None, job.profile, job.device))
    t0 = time.perf_counter()
    trace = phases.model_trace(cfg, job.profile, int(job.payload["seq_len"]), job.rank)
    trace_s = time.perf_counter() - t0
    phases.install(job.device)
    phases.check_same_trace(trace)
    runs = [_one_forward(cfg, weights, job, trace, tokens, m) for m in modes]
    shared = ("meter", "offline", "seconds", "peak_rss_bytes")
    theirs = crypten_compat.exchange_json([{k: r[k] for k in shared} for r in runs], src=SERVER)
    if job.rank == SERVER:
        return {"role": "server"}
    for mine, other in zip(runs, theirs, strict=True):
        mine["server"] = other
    return {"role": "client", "runs": runs, "trace": {"requests": len(trace), "digest": trace.digest,
                                                       "rounds": trace.rounds, "bytes": trace.bytes,
                                                       "tuple_bytes": trace.tuple_bytes,
                                                       "dealer_bytes": trace.dealer_bytes, "seconds": trace_s}}


__all__ = ["MODES", "compare_program"]
