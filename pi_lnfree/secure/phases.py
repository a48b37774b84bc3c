"""Secure inference in two phases: an offline phase that makes all correlated randomness a
forward needs before the client's tokens exist, and an online phase that consumes it without
contacting the dealer.

What a forward needs is its request list (`tuples.Trace`), a function of public shapes and
profile knobs only; `tuples.record_trace` derives it without peers or data, and each party
checks that the other derived the same list (a digest) before the offline phase.

Offline (`offline_phase`), per provider:

* TTP: party 0 sends the dealer the whole request list in one message and receives, in request
  order, the one dealer-made tensor of every tuple (`dealer.fetch_stream`): the whole of the
  dealer's traffic, one round trip. Everything else of a TTP tuple is drawn from the generator
  the party shares with the dealer; drawing it in the online phase, in the same order, gives
  the same values the one-phase run draws, so it is not stored: party 0 stores the dealer's
  bytes, party 1 nothing.
* TFP: party 0 makes every tuple locally (CrypTen's TrustedFirstParty code, unchanged), both
  parties store their full shares of each tuple. No communication; local work only.

The material lives in memory when its exact size (from the trace) fits `budget_bytes`, else in a
spool file that the online phase reads in order (`Material`).

Online (`online_phase`): the provider checks that each request is the one the trace said comes
next, then answers it without the dealer: under TTP with the draws of CrypTen's TTP provider
from the generator shared with the dealer, party 0's dealer-made tensor taken from the material;
under TFP from the stored shares. A request that does not match, a request beyond the material
and any call that would reach the dealer raise `PhaseError`. Nothing falls back.

Bit-identical to one phase: the online forward draws the same values from every generator in
the same order as a one-phase forward (TTP tuples come from the generator shared with the dealer
in request order either way; TFP tuples come from generators of their own, `PhasedProvider`,
so making them early does not shift the streams the forward itself draws from), and
`replay_seeds` lets a test or benchmark start two forwards from the same seeds.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from pi_lnfree.errors import UserError
from pi_lnfree.secure import crypten_compat, dealer
from pi_lnfree.secure.material import Material, PhaseError
from pi_lnfree.secure.tuples import (
    PROVIDER_FUNCTIONS,
    ProviderFunctions,
    Request,
    Trace,
    request_key,
    swapped_generators,
)

DEFAULT_BUDGET_BYTES = 4 * 1024**3  # offline material a party keeps in memory; beyond: spool file
_BINARY_OUTPUTS = {"generate_binary_triple": (0, 1, 2), "B2A_rng": (1,)}


# ---------------------------------------------------------------------------------------------
# offline material


def material_elements(trace: Trace, provider: str, rank: int) -> int:
    """int64 elements one party stores for `trace` (see the module docstring)."""
    if provider == "TTP":
        return trace.dealer_bytes // 8 if rank == 0 else 0
    return trace.tuple_bytes // 8


# ---------------------------------------------------------------------------------------------
# the provider a party uses while phases are installed


def _plain(share) -> torch.Tensor:
    """The torch tensor inside a share (CrypTen wraps CUDA ones in CUDALongTensor)."""
    return share if torch.is_tensor(share) else share._tensor


class PhasedProvider(ProviderFunctions):
    """Stands in for CrypTen's tuple provider of this party (`install`).

    Outside an online phase it calls CrypTen's provider (TFP: with its own generators, see the
    module docstring). Inside one it answers every request without the dealer (module docstring).
    """

    def __init__(self, inner: Any, name: str, device: str):
        self.inner = inner
        self.name = name
        self.device = device
        self.expected: list[Request] | None = None
        self.material: Material | None = None
        self.next_index = 0
        self.tuple_generators: dict[str, dict[torch.device, torch.Generator]] = {}
        if name == "TFP":
            self._seed_tuple_generators(None)

    def _seed_tuple_generators(self, seed: int | None) -> None:
        """TFP's own generators: seeded from CrypTen's (one draw each, the same on both
        parties for the shared ones), or from `seed` (replay)."""
        crypten = crypten_compat.get_crypten()
        rank = crypten.communicator.get().get_rank()
        self.tuple_generators = {}
        for key, per_device in crypten.generators.items():
            self.tuple_generators[key] = {}
            for device, g in per_device.items():
                if seed is None:
                    s = int(torch.randint(-(2**63), 2**63 - 1, (), generator=g, device=device).item())
                else:
                    label = {"prev": ("pair", (rank - 1) % 2), "next": ("pair", rank), "local": ("local", rank)}
                    s = dealer.derived_seed(seed, "tfp", *label.get(key, ("global",)))
                self.tuple_generators[key][device] = torch.Generator(device=device).manual_seed(s)


    def make(self, kind: str, args: tuple, kwargs: dict, device) -> tuple:
        """One tuple from CrypTen's provider (TFP: under its own generators)."""
        fn = getattr(self.inner, kind)
        if kind == "generate_additive_triple":
            size0, size1, op, *rest = args
            call = lambda: fn(size0, size1, op, device, *rest, **kwargs)  # noqa: E731
        else:
            call = lambda: fn(*args, device=device)  # noqa: E731
        if self.name != "TFP":
            return call()
        with swapped_generators(self.tuple_generators):
            return call()

    def _provide(self, kind: str, args: tuple, kwargs: dict, device):
        if self.expected is None:
            return self.make(kind, args, kwargs, device)
        request = self._next_expected(request_key(kind, args, kwargs))
        device = device if device is not None else self.device
        if self.name == "TTP":
            return self._ttp_tuple(request, device)
        return self._stored_tuple(request, device)

    def _next_expected(self, key: tuple) -> Request:
        i = self.next_index
        if i >= len(self.expected):
            raise PhaseError(f"online request #{i} {key[:2]} is beyond the {len(self.expected)} prepared offline")
        request = self.expected[i]
        if request.key != key:
            raise PhaseError(f"online request #{i} {key[:2]} differs from the prepared {request.key[:2]}")
        self.next_index = i + 1
        return request

    def _stored_tuple(self, request: Request, device) -> tuple:
        from crypten.mpc.primitives import ArithmeticSharedTensor, BinarySharedTensor

        binary = _BINARY_OUTPUTS.get(request.kind, ())
        out = []
        for i, shape in enumerate(request.outputs):
            t = self.material.take(shape).to(device if device is not None else self.device)
            out.append(BinarySharedTensor.from_shares(t) if i in binary else ArithmeticSharedTensor.from_shares(t, precision=0))
        return tuple(out)

    def _ttp_tuple(self, request: Request, device) -> tuple:
        """A TTP tuple online, without the dealer: the draws of CrypTen's `TrustedThirdParty`
        (ttp_provider.py), in its order, from the generator this party shares with the dealer;
        party 0's dealer-made tensor comes from the material. The product's shape comes from the
        trace: party 1 does not multiply a @ b only to learn it, as the stock provider does."""
        from crypten.common.rng import generate_kbit_random_tensor, generate_random_ring_element
        from crypten.mpc.primitives import ArithmeticSharedTensor, BinarySharedTensor

        crypten = crypten_compat.get_crypten()
        gen = crypten.mpc.provider.ttp_provider.TTPClient.get().get_generator(device=device)
        rank = crypten.communicator.get().get_rank()

        def ring(shape):
            return generate_random_ring_element(shape, generator=gen, device=device)

        def correlated():  # the tensor party 0 gets from the dealer; party 1 draws it
            return self.material.take(request.dealer_shape).to(device) if rank == 0 else ring(request.dealer_shape)

        def arith(*ts):
            return tuple(ArithmeticSharedTensor.from_shares(t, precision=0) for t in ts)

        if request.kind == "B2A_rng":
            bits = generate_kbit_random_tensor(request.sizes[0], bitlength=1, generator=gen, device=device)
            return arith(correlated())[0], BinarySharedTensor.from_shares(bits)
        drawn = [ring(shape) for shape in request.sizes]  # a, b (triples) or r (the pairs)
        if request.kind == "generate_binary_triple":
            return tuple(BinarySharedTensor.from_shares(t) for t in (*drawn, correlated()))
        return arith(*drawn, correlated())


_STATE: dict[str, Any] = {"provider": None}


def install(device: str = "cpu") -> PhasedProvider:
    """Put a `PhasedProvider` in front of this party's CrypTen provider (after
    `crypten_compat.init_party`; idempotent). Party 0 under TTP also guards the dealer client:
    inside an online phase a call to the dealer raises `PhaseError`."""
    provider = _STATE["provider"]
    if provider is not None:
        return provider
    crypten = crypten_compat.get_crypten()
    name = crypten.cfg.mpc.provider
    if name not in ("TTP", "TFP"):
        raise UserError(f"two-phase inference supports the TTP and TFP providers, not {name!r}")
    provider = PhasedProvider(crypten.mpc.get_default_provider(), name, device)
    crypten.mpc.get_default_provider = lambda: provider
    if name == "TTP" and crypten.communicator.get().get_rank() == 0:
        client_cls = type(crypten.mpc.provider.ttp_provider.TTPClient.get())
        client_cls.ttp_request = dealer_guard(provider, client_cls.ttp_request)
    _STATE["provider"] = provider
    return provider


def dealer_guard(provider: PhasedProvider, ttp_request):
    """CrypTen's `TTPClient.ttp_request` wrapped to raise `PhaseError` while `provider` is in an
    online phase (nothing there calls it: a code path that would is an error, not a request)."""

    def guarded(self, func_name, device, *args, **kwargs):
        if provider.expected is not None:
            raise PhaseError(f"the online phase tried to reach the dealer ({func_name} {args})")
        return ttp_request(self, func_name, device, *args, **kwargs)

    return guarded


def _provider() -> PhasedProvider:
    if _STATE["provider"] is None:
        raise PhaseError("phases.install() was not called in this party")
    return _STATE["provider"]


# ---------------------------------------------------------------------------------------------
# the two phases


@dataclass
class PhaseCost:
    """What one party spent in one phase: its own protocol counters (CrypTen's convention),
    dealer traffic (party 0 under TTP), local seconds, and the material it holds."""

    bytes: float = 0.0
    rounds: int = 0
    seconds: float = 0.0
    dealer_bytes: int = 0
    dealer_round_trips: int = 0
    requests: int = 0
    material_bytes: int = 0
    spooled: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "extra"} | self.extra


def combine_offline(client: dict[str, Any], server: dict[str, Any]) -> dict[str, Any]:
    """Both parties' offline `PhaseCost.to_dict()` -> the system's offline phase: bytes on the
    wire (the parties' own traffic counted once, as `meter.combine_parties` does, plus the
    dealer's stream), rounds (the parties' in lockstep plus round trips to the dealer), seconds
    (the slower party), and each party's material."""
    return {
        "bytes": (client["bytes"] + server["bytes"]) / 2 + client["dealer_bytes"] + server["dealer_bytes"],
        "rounds": max(client["rounds"], server["rounds"]) + client["dealer_round_trips"] + server["dealer_round_trips"],
        "seconds": max(client["seconds"], server["seconds"]),
        "dealer_bytes": client["dealer_bytes"] + server["dealer_bytes"],
        "requests": client["requests"],
        "material_bytes": {"client": client["material_bytes"], "server": server["material_bytes"]},
        "spooled": {"client": client["spooled"], "server": server["spooled"]},
    }


@contextmanager
def _measured(cost: PhaseCost) -> Iterator[None]:
    before, t0 = crypten_compat.comm_stats(), time.perf_counter()
    try:
        yield
    finally:
        after = crypten_compat.comm_stats()
        cost.seconds += time.perf_counter() - t0
        cost.bytes += after["bytes"] - before["bytes"]
        cost.rounds += int(after["rounds"] - before["rounds"])


def check_same_trace(trace: Trace) -> None:
    """Both parties derived the same request list (each raises `PhaseError` otherwise).
    Metadata exchange outside the counted traffic."""
    digests = [crypten_compat.exchange_json(trace.digest, src=src) for src in (0, 1)]
    if digests[0] != digests[1]:
        raise PhaseError(f"the parties derived different request lists ({digests[0]} vs {digests[1]})")


def offline_phase(trace: Trace, budget_bytes: int = DEFAULT_BUDGET_BYTES, spool_dir: str | None = None,
                  chunk_elements: int = dealer.DEFAULT_CHUNK_ELEMENTS) -> tuple[Material, PhaseCost]:
    """Make this party's material for one forward of `trace` (module docstring); both parties
    call it at the same point, before the client's input is shared. Returns the sealed material
    and what it cost this party. Material above `budget_bytes` goes to a spool file in
    `spool_dir` (default: the system temp folder)."""
    provider = _provider()
    if provider.expected is not None:
        raise PhaseError("an offline phase cannot run inside an online phase")
    crypten = crypten_compat.get_crypten()
    rank = crypten.communicator.get().get_rank()
    elements = material_elements(trace, provider.name, rank)
    spool = (spool_dir or tempfile.gettempdir()) if 8 * elements > budget_bytes else None
    material = Material(elements, provider.device, spool)
    cost = PhaseCost(requests=len(trace), material_bytes=8 * elements, spooled=material.spooled)
    try:
        with _measured(cost):
            if provider.name == "TTP" and rank == 0 and len(trace):
                stream = [dealer.stream_request(r.dealer_function, r.sizes, r.op, r.extra) for r in trace.requests]
                cost.dealer_bytes = dealer.fetch_stream(stream, elements, str(provider.device), material.append,
                                                        chunk_elements)
                cost.dealer_round_trips = 1
            elif provider.name == "TFP":
                for r in trace.requests:
                    args = r.sizes if r.op is None else (*r.sizes, r.op, *r.extra[0])
                    for share in provider.make(r.kind, args, dict(r.extra[1]) if r.extra else {}, provider.device):
                        material.append(_plain(share.share).reshape(-1))
        material.seal()
    except BaseException:
        material.close()
        raise
    return material, cost


@contextmanager
def online_phase(trace: Trace, material: Material) -> Iterator[None]:
    """Inside the block every tuple comes from `material` in `trace` order and the dealer is
    never contacted (`PhaseError` otherwise); leaving it checks that the forward used exactly
    the prepared requests and frees the material."""
    provider = _provider()
    provider.expected, provider.material, provider.next_index = list(trace.requests), material, 0
    ok = False
    try:
        yield
        ok = True
    finally:
        used, provider.expected, provider.material = provider.next_index, None, None
        material.close()
    if ok and used != len(trace):
        raise PhaseError(f"the online forward used {used} of the {len(trace)} prepared requests")


def offline_then_online(trace: Trace, run, **offline: Any) -> tuple[Any, PhaseCost]:
    """`offline_phase(trace, **offline)`, then `run()` inside `online_phase`; (its result, the
    offline cost of this party)."""
    material, cost = offline_phase(trace, **offline)
    with online_phase(trace, material):
        out = run()
    return out, cost


def attribute_dealer(state: dict[str, Any], trace: Trace) -> dict[str, Any]:
    """Party 0 under TTP: add each request's dealer bytes (and one request) to the category of the
    meter state that made it, as a one-phase run meters them when it asks the dealer, and to the
    span; the two-phase online forward itself meters no dealer traffic. Returns `state`."""
    for category, rec in trace.by_category().items():
        if category is None:
            raise PhaseError(f"{rec['requests']} tuple requests were made outside every metered operator")
        for target in (state["ops"][category], state["span"]):
            target["dealer_bytes"] += rec["dealer_bytes"]
            target["dealer_requests"] += rec["requests"]
    return state


def replay_seeds(seed: int) -> None:
    """Tests and benchmarks only: make every generator of this party (CrypTen's four, the TTP
    generator and TFP's own) and, from party 0, the dealer's a public function of `seed`, so
    two forwards started after the same call draw the same values. This removes all privacy."""
    crypten = crypten_compat.get_crypten()
    rank = crypten.communicator.get().get_rank()
    labels = {"prev": ("pair", (rank - 1) % 2), "next": ("pair", rank), "local": ("local", rank), "global": ("global",)}
    for key, per_device in crypten.generators.items():
        for g in per_device.values():
            g.manual_seed(dealer.derived_seed(seed, "crypten", *labels[key]))
    provider = _provider()
    if provider.name == "TFP":
        provider._seed_tuple_generators(seed)
    if provider.name == "TTP":
        client = crypten.mpc.provider.ttp_provider.TTPClient.get()
        for g in (client.generator, client.generator_cuda):
            if g is not None:
                g.manual_seed(dealer.derived_seed(seed, "ttp", rank))
        if rank == 0:
            dealer.reseed_dealer(seed)


__all__ = [
    "DEFAULT_BUDGET_BYTES",
    "Material",
    "PROVIDER_FUNCTIONS",
    "PhaseCost",
    "PhaseError",
    "PhasedProvider",
    "attribute_dealer",
    "check_same_trace",
    "combine_offline",
    "dealer_guard",
    "install",
    "material_elements",
    "model_trace",
    "offline_phase",
    "offline_then_online",
    "online_phase",
    "replay_seeds",
]


_TRACES: dict[tuple, Trace] = {}


def model_trace(cfg, profile, seq_len: int, rank: int = 0) -> Trace:
    """The request list of one secure forward of `cfg` at `seq_len` under `profile` (memoised
    per process): `tuples.record_trace` of the decoder structure on the CrypTen backend, with
    data-less weights and tokens."""
    import json

    key = (json.dumps(cfg.to_dict(), sort_keys=True), int(seq_len), repr(profile), int(rank))
    if key not in _TRACES:
        from pi_lnfree.secure.backends.crypten_ops import CryptenOps
        from pi_lnfree.secure.structure import Decoder, load_weights
        from pi_lnfree.secure.tuples import META, record_trace

        def run(meter):
            ops = CryptenOps(meter, profile, META)
            weights = load_weights(cfg, None, ops)
            Decoder(cfg, weights, ops).forward(ops.tokens(None, seq_len, cfg.vocab_size))

        _TRACES[key] = record_trace(run, rank)
    return _TRACES[key]
