"""The correlated randomness a secure forward consumes, as a list of requests known in advance.

Every Beaver triple, square pair, binary (AND) triple, wrap pair and B2A bit pair that CrypTen's
protocols take from the tuple provider (`crypten/mpc/primitives/beaver.py`) is one `Request`: the
provider function and its public arguments (operand shapes, the product op). Which requests a
forward makes, and in which order, depends only on public shapes and the profile's knobs, never
on the secret values: no CrypTen primitive branches on a share.

`record_trace` derives that list without any peer, dealer or secret: it runs the forward once
on the `meta` device (tensors with shapes and no data) inside this process, with a stand-in
communicator that answers every exchange locally and a stand-in provider that records each
request and returns data-less tuples of the right shapes. It costs the Python work of one
forward and no arithmetic; any code path that did depend on a value would fail on `meta`
tensors (they have no data to read), so a trace that completes is the forward's real
request list. The stand-in communicator counts rounds and bytes with CrypTen's own logging, so a
trace also predicts each party's protocol traffic.

The real generators, communicator and provider of a party process are untouched: the trace
swaps in private copies for its duration (`_swapped`) and restores them.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from pi_lnfree.secure import crypten_compat
from pi_lnfree.secure.meter import Meter

# provider function -> (the TTP dealer's function, index of the output the dealer supplies)
# (crypten/mpc/provider/ttp_provider.py: party 0 gets that one tensor from the dealer, every
# other tensor of the tuple comes from a generator it shares with the dealer)
PROVIDER_FUNCTIONS = {
    "generate_additive_triple": ("additive", 2),
    "square": ("square", 1),
    "generate_binary_triple": ("binary", 2),
    "wrap_rng": ("wraps", 1),
    "B2A_rng": ("B2A", 0),
}
BYTES_PER_ELEMENT = 8  # int64 shares
META = torch.device("meta")


@dataclass(frozen=True)
class Request:
    """One request to the tuple provider.

    `kind`: provider function (a key of `PROVIDER_FUNCTIONS`); `sizes`: the operand shapes it
    was called with; `op`/`extra`: the product op of an additive triple and its extra (args,
    kwargs), else None/(); `outputs`: the shapes of the tensors of the tuple it returns (each
    party holds one int64 share of each); `category`: the meter category that was active.
    """

    kind: str
    sizes: tuple[tuple[int, ...], ...]
    op: str | None
    extra: tuple
    outputs: tuple[tuple[int, ...], ...]
    category: str | None = None

    @property
    def key(self) -> tuple:
        """What identifies the request (everything but the derived shapes and the category)."""
        return (self.kind, self.sizes, self.op, self.extra)

    @property
    def dealer_function(self) -> str:
        return PROVIDER_FUNCTIONS[self.kind][0]

    @property
    def dealer_shape(self) -> tuple[int, ...]:
        """Shape of the one tensor the TTP dealer sends party 0 for this request."""
        return self.outputs[PROVIDER_FUNCTIONS[self.kind][1]]

    @property
    def tuple_bytes(self) -> int:
        """Bytes of one party's shares of the whole tuple."""
        return BYTES_PER_ELEMENT * sum(math.prod(s) for s in self.outputs)

    @property
    def dealer_bytes(self) -> int:
        """Bytes the TTP dealer sends party 0 for this request."""
        return BYTES_PER_ELEMENT * math.prod(self.dealer_shape)


def request_key(kind: str, args: tuple, kwargs: dict) -> tuple:
    """`Request.key` of a provider call `kind(*args, **kwargs)` (the device is not part of it)."""
    kwargs = {k: v for k, v in kwargs.items() if k != "device"}
    if kind == "generate_additive_triple":
        size0, size1, op, *rest = args
        return (kind, (tuple(size0), tuple(size1)), op, (tuple(rest), tuple(sorted(kwargs.items()))))
    if kind == "generate_binary_triple":
        return (kind, (tuple(args[0]), tuple(args[1])), None, ())
    return (kind, (tuple(args[0]),), None, ())


def output_shapes(key: tuple) -> tuple[tuple[int, ...], ...]:
    """Shapes of the tuple a request returns (the product's shape from a data-less product)."""
    kind, sizes, op, extra = key
    if kind == "generate_additive_triple":
        args, kwargs = extra
        a, b = (torch.empty(s, dtype=torch.long, device=META) for s in sizes)
        return (sizes[0], sizes[1], tuple(getattr(torch, op)(a, b, *args, **dict(kwargs)).shape))
    if kind == "generate_binary_triple":
        return (sizes[0], sizes[1], tuple(torch.broadcast_shapes(*sizes)))
    return (sizes[0], sizes[0])


@dataclass(frozen=True)
class Trace:
    """The ordered requests of one forward, and what the stand-in communicator counted."""

    requests: tuple[Request, ...]
    rounds: int  # communicator calls of the traced party
    bytes: float  # bytes the traced party logged (CrypTen's convention: sent + received)

    def __len__(self) -> int:
        return len(self.requests)

    @property
    def digest(self) -> str:
        """Hash of the request keys in order (two parties compare it before an offline phase)."""
        return hashlib.sha256(repr([r.key for r in self.requests]).encode()).hexdigest()[:16]

    @property
    def tuple_bytes(self) -> int:
        """Bytes of one party's shares of every tuple (the fully expanded offline material)."""
        return sum(r.tuple_bytes for r in self.requests)

    @property
    def dealer_bytes(self) -> int:
        """Bytes of everything the TTP dealer sends party 0 for one forward."""
        return sum(r.dealer_bytes for r in self.requests)

    def by_category(self) -> dict[str | None, dict[str, int]]:
        """Per meter category: requests, tuple bytes, dealer bytes."""
        out: dict[str | None, dict[str, int]] = {}
        for r in self.requests:
            rec = out.setdefault(r.category, {"requests": 0, "tuple_bytes": 0, "dealer_bytes": 0})
            rec["requests"] += 1
            rec["tuple_bytes"] += r.tuple_bytes
            rec["dealer_bytes"] += r.dealer_bytes
        return out


# ---------------------------------------------------------------------------------------------
# the stand-ins a trace runs with


def _null_communicator(rank: int):
    """A communicator for `rank` of 2 that answers every call locally (meta tensors pass
    through) and counts like CrypTen's `DistributedCommunicator` (`_logging`)."""
    crypten_compat.get_crypten()  # imports CrypTen with its shim
    from crypten.communicator.communicator import Communicator, _logging

    def clone(x):
        return [t.clone() for t in x] if isinstance(x, list) else x.clone()

    class NullCommunicator(Communicator):
        BYTES_PER_ELEMENT = BYTES_PER_ELEMENT

        def __init__(self):
            self.rank = rank
            self.reset_communication_stats()

        def get_world_size(self):
            return 2

        def get_rank(self):
            return self.rank

        def get_ttp_rank(self):
            return 2

        @_logging
        def send(self, tensor, dst):
            return None

        @_logging
        def recv(self, tensor, src=None):
            return tensor.clone()

        @_logging
        def isend(self, tensor, dst):
            return None

        @_logging
        def irecv(self, tensor, src=None):
            return None

        @_logging
        def scatter(self, scatter_list, src, size=None, device=None):
            if src == self.rank:
                return scatter_list[self.rank].clone()
            return torch.empty(size, dtype=torch.long, device=device)

        @_logging
        def reduce(self, input, dst, op=None, batched=False):
            return clone(input) if dst == self.rank else None

        @_logging
        def all_reduce(self, input, op=None, batched=False):
            return clone(input)

        @_logging
        def gather(self, tensor, dst):
            return [tensor.clone(), tensor.clone()] if dst == self.rank else [None]

        @_logging
        def all_gather(self, tensor):
            return [tensor.clone(), tensor.clone()]

        @_logging
        def broadcast(self, input, src, group=None, batched=False):
            return input

        @_logging
        def barrier(self):
            return None

        @_logging
        def send_obj(self, obj, dst, group=None):
            return None

        @_logging
        def broadcast_obj(self, obj, src, group=None):
            return obj

    return NullCommunicator()


class ProviderFunctions:
    """The five functions CrypTen asks its tuple provider for, each forwarded as
    `self._provide(kind, args, kwargs, device)` (kind: the function's name)."""

    def _provide(self, kind: str, args: tuple, kwargs: dict, device):  # pragma: no cover - subclasses
        raise NotImplementedError

    def generate_additive_triple(self, size0, size1, op, device=None, *args, **kwargs):
        return self._provide("generate_additive_triple", (size0, size1, op, *args), kwargs, device)

    def square(self, size, device=None):
        return self._provide("square", (size,), {}, device)

    def generate_binary_triple(self, size0, size1, device=None):
        return self._provide("generate_binary_triple", (size0, size1), {}, device)

    def wrap_rng(self, size, device=None):
        return self._provide("wrap_rng", (size,), {}, device)

    def B2A_rng(self, size, device=None):
        return self._provide("B2A_rng", (size,), {}, device)


class _TraceProvider(ProviderFunctions):
    """Records each request and returns a data-less tuple of the right shapes."""

    def __init__(self, meter_of: Callable[[], Meter | None]):
        self.requests: list[Request] = []
        self._meter_of = meter_of

    def _provide(self, kind: str, args: tuple, kwargs: dict, device):
        from crypten.mpc.primitives import ArithmeticSharedTensor, BinarySharedTensor

        key = request_key(kind, args, kwargs)
        outputs = output_shapes(key)
        meter = self._meter_of()
        self.requests.append(Request(*key, outputs=outputs, category=meter.active if meter else None))
        shares = [torch.empty(s, dtype=torch.long, device=device) for s in outputs]
        binary = {"generate_binary_triple": (0, 1, 2), "B2A_rng": (1,)}.get(kind, ())
        return tuple(BinarySharedTensor.from_shares(t) if i in binary else ArithmeticSharedTensor.from_shares(t, precision=0)
                     for i, t in enumerate(shares))



@contextmanager
def _patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


@contextmanager
def swapped_generators(replacements: dict[str, dict[torch.device, torch.Generator]]) -> Iterator[None]:
    """Swap entries of `crypten.generators` (in place: CrypTen's modules hold the dict itself)
    for the block; `replacements[key][device]` is the generator to use."""
    generators = crypten_compat.get_crypten().generators
    saved = {key: dict(generators[key]) for key in generators}
    try:
        for key, per_device in replacements.items():
            generators[key].update(per_device)
        yield
    finally:
        for key in generators:
            generators[key].clear()
            generators[key].update(saved[key])


def record_trace(run: Callable[[Meter], Any], rank: int = 0) -> Trace:
    """The requests `run(meter)` makes when it runs a forward on `meta` tensors (module docstring).

    `run` builds the secure model with `meter` and runs one forward on data-less inputs placed
    on `tuples.META`; it must not reveal anything to Python (a `.item()` or a branch on a value
    fails on `meta`). `rank` is the party the forward is traced as. Works in a party process
    (nothing of the party's state changes) and in a process without CrypTen initialised.
    """
    crypten = crypten_compat.get_crypten()
    import crypten.communicator as comm

    null = _null_communicator(rank)
    meters: list[Meter] = []
    provider = _TraceProvider(lambda: meters[0] if meters else None)
    fresh = {key: {torch.device("cpu"): torch.Generator(), META: torch.Generator()} for key in crypten.generators}
    with ExitStack() as stack:
        stack.enter_context(_patched(comm, "get", lambda: null))
        stack.enter_context(_patched(crypten.mpc, "get_default_provider", lambda: provider))
        stack.enter_context(swapped_generators(fresh))
        stack.enter_context(crypten.cfg.temp_override({"communicator.verbose": True}))
        meter = Meter(lambda: {"bytes": null.comm_bytes, "rounds": null.comm_rounds})
        meters.append(meter)
        run(meter)
    return Trace(tuple(provider.requests), rounds=int(null.comm_rounds), bytes=float(null.comm_bytes))


__all__ = [
    "BYTES_PER_ELEMENT",
    "META",
    "PROVIDER_FUNCTIONS",
    "ProviderFunctions",
    "Request",
    "Trace",
    "output_shapes",
    "record_trace",
    "request_key",
    "swapped_generators",
]
