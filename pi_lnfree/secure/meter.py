"""Per-operator metering of a secure forward pass, and the network latency model.

Inside each party, every secure primitive of `pi_lnfree.secure.layers` runs under
`Meter.op(category)`; the meter takes the party's communication counters before and after and
attributes the difference (and the wall time) to the category. A nested `op` is attributed to the
outermost one, so each counter increment lands in exactly one category. `Meter.span()` measures
the whole forward pass with the raw counters, so a test can check that nothing escaped the
categories.

Combining the two parties (`combine_parties`), per category:

* `bytes`: bytes sent by both parties together. CrypTen logs every message at the sender and at
  the receiver (an all-reduce of n elements is logged as 2n at each party), so the sum of both
  parties' counters counts each sent byte twice: `bytes = (bytes_0 + bytes_1) / 2`.
* `rounds`: communicator calls of one party (the max of the two; the parties move in lockstep).
* `seconds`: local wall time of the primitive (the max of the two parties), measured on this
  machine with both parties on loopback; it is the "local compute" of the latency model.
* `calls`: how many metered primitive calls landed in the category.
* `dealer_bytes`, `dealer_requests`: TTP only, party 0's triple traffic with the dealer
  (preprocessing; not part of `bytes`).

The JSON shape this produces (`ops`, `total`, `per_token`, `network`) is the interface of
`pi-lnfree secure-eval --json` and of the cost model built on top of it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from pi_lnfree.secure.profile import Network

CATEGORIES = ("embedding", "linear", "attention", "softmax", "layernorm", "activation", "lm_head", "other")
COUNTERS = ("bytes", "rounds", "dealer_bytes", "dealer_requests")
FIELDS = ("bytes", "rounds", "seconds", "calls", "dealer_bytes", "dealer_requests")

StatsFn = Callable[[], Mapping[str, float]]


def empty_ops() -> dict[str, dict[str, float]]:
    """One zeroed record per category."""
    return {c: {f: 0 for f in FIELDS} for c in CATEGORIES}


class Meter:
    """Attributes one party's communication and time to operator categories.

    `stats_fn()` returns this party's cumulative counters: a mapping with `bytes` and `rounds`
    (and, for party 0 under TTP, `dealer_bytes` and `dealer_requests`).
    """

    def __init__(self, stats_fn: StatsFn, clock: Callable[[], float] = time.perf_counter):
        self._stats = stats_fn
        self._clock = clock
        self._active: str | None = None
        self.ops = empty_ops()
        self.span_total: dict[str, float] = {f: 0 for f in FIELDS}

    def _snapshot(self) -> dict[str, float]:
        s = self._stats()
        return {k: float(s.get(k, 0)) for k in COUNTERS}

    @contextmanager
    def _record(self, rec: dict[str, float]):
        """Add the block's counter increments, wall time and one call to `rec`."""
        before, t0 = self._snapshot(), self._clock()
        try:
            yield
        finally:
            after, t1 = self._snapshot(), self._clock()
            for k in COUNTERS:
                rec[k] += after[k] - before[k]
            rec["seconds"] += t1 - t0
            rec["calls"] += 1

    @contextmanager
    def op(self, category: str):
        """Attribute everything inside the block to `category` (outermost block wins)."""
        if category not in CATEGORIES:
            raise ValueError(f"unknown operator category {category!r}; known: {CATEGORIES}")
        if self._active is not None:
            yield
            return
        self._active = category
        try:
            with self._record(self.ops[category]):
                yield
        finally:
            self._active = None

    @property
    def active(self) -> str | None:
        """The category being metered right now (None outside every `op`)."""
        return self._active

    def span(self):
        """Measure a whole forward pass with the raw counters (for the attribution check)."""
        return self._record(self.span_total)

    def state(self) -> dict[str, Any]:
        """Plain-dict snapshot, to send to the other party or the parent process."""
        return {"ops": {c: dict(r) for c, r in self.ops.items()}, "span": dict(self.span_total)}


def _combine_record(a: Mapping[str, float], b: Mapping[str, float]) -> dict[str, float]:
    return {
        "bytes": (a["bytes"] + b["bytes"]) / 2,
        "rounds": max(a["rounds"], b["rounds"]),
        "seconds": max(a["seconds"], b["seconds"]),
        "calls": max(a["calls"], b["calls"]),
        "dealer_bytes": a["dealer_bytes"] + b["dealer_bytes"],
        "dealer_requests": a["dealer_requests"] + b["dealer_requests"],
    }


def combine_parties(client: Mapping[str, Any], server: Mapping[str, Any]) -> dict[str, Any]:
    """Both parties' `Meter.state()` -> `{"ops": {cat: record}, "span": record}` for the system."""
    ops = {c: _combine_record(client["ops"][c], server["ops"][c]) for c in CATEGORIES}
    return {"ops": ops, "span": _combine_record(client["span"], server["span"])}


def combine_senders(states: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Several parties' `Meter.state()` whose `bytes` count only what each party sent (SPU's link
    statistics, not CrypTen's send + receive) -> the system's record: bytes add up (every byte
    once), rounds, seconds and calls are the max over the parties (they move in lockstep)."""
    def rec(records: Sequence[Mapping[str, float]]) -> dict[str, float]:
        return {
            "bytes": sum(r["bytes"] for r in records),
            "rounds": max(r["rounds"] for r in records),
            "seconds": max(r["seconds"] for r in records),
            "calls": max(r["calls"] for r in records),
            "dealer_bytes": sum(r["dealer_bytes"] for r in records),
            "dealer_requests": sum(r["dealer_requests"] for r in records),
        }

    ops = {c: rec([s["ops"][c] for s in states]) for c in CATEGORIES}
    return {"ops": ops, "span": rec([s["span"] for s in states])}


def total_of(ops: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Sum of the category records (the `total` of a result)."""
    return {f: sum(ops[c][f] for c in CATEGORIES) for f in FIELDS}


def average(states: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean of several combined forward passes (one per sequence)."""
    states = list(states)
    if not states:
        raise ValueError("no forward passes to average")
    n = len(states)
    ops = {c: {f: sum(s["ops"][c][f] for s in states) / n for f in FIELDS} for c in CATEGORIES}
    span = {f: sum(s["span"][f] for s in states) / n for f in FIELDS}
    return {"ops": ops, "span": span}


def per_token(total: Mapping[str, float], seq_len: int) -> dict[str, float]:
    """Bytes, rounds and seconds of one forward pass divided by its sequence length."""
    return {f: total[f] / seq_len for f in ("bytes", "rounds", "seconds")}


def network_estimate(ops: Mapping[str, Mapping[str, float]], networks: Mapping[str, Network]) -> dict[str, Any]:
    """Per network: estimated seconds per category and in total
    (local compute + rounds x RTT + bytes / bandwidth)."""
    out: dict[str, Any] = {}
    for name, net in networks.items():
        per_op = {c: net.seconds(ops[c]["seconds"], ops[c]["rounds"], ops[c]["bytes"]) for c in CATEGORIES}
        out[name] = {
            "bandwidth_bits_per_s": net.bandwidth_bits_per_s,
            "rtt_ms": net.rtt_ms,
            "seconds": sum(per_op.values()),
            "ops": per_op,
        }
    return out


def public_ops(ops: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """The result's `ops`: bytes/rounds/seconds (+ calls and dealer traffic) per category."""
    return {c: {f: (float(ops[c][f]) if f == "seconds" else _num(ops[c][f])) for f in FIELDS} for c in CATEGORIES}


def _num(x: float) -> int | float:
    return int(x) if float(x).is_integer() else float(x)


__all__ = [
    "CATEGORIES",
    "FIELDS",
    "Meter",
    "average",
    "combine_parties",
    "combine_senders",
    "empty_ops",
    "network_estimate",
    "per_token",
    "public_ops",
    "total_of",
]
