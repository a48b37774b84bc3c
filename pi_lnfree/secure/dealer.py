"""The TTP dealer process, and party 0's side of the dealer's offline stream.

The dealer is CrypTen's `TTPServer` (`crypten/mpc/provider/ttp_provider.py`): it shares one
generator with each party, and for every request it draws the same random shares the parties
draw, computes the correlated value (a product, a square, an AND, wraps, a bit in the ring) in
the clear and sends party 0 the one share that makes the tuple correct. It never sees a share of
a party's input, only the shapes of the tuples, which are public; so it learns nothing.

Two additions (`serve`):

* `stream`: one message carries the whole ordered request list of a forward (`tuples.Trace`);
  the dealer answers every request in that order with the very computation of the per-request
  path (so the generators advance identically) and streams the concatenated int64 answers to
  party 0 in fixed-size chunks. One request message and one stream instead of a message
  exchange per tuple: the offline phase costs one round trip to the dealer.
* `reseed`: make the dealer's generators a public function of a seed (tests and benchmarks
  only, see `phases.replay_seeds`).

The dealer counts what it served (`serve` returns it) so a run can check from the dealer's side
that the online phase asked it for nothing.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from pi_lnfree.secure import crypten_compat

DEALER_FUNCTIONS = ("additive", "square", "binary", "wraps", "B2A")
DEFAULT_CHUNK_ELEMENTS = 1 << 23  # 64 MiB of int64 per streamed chunk


def derived_seed(seed: int, *labels: Any) -> int:
    """A signed 64-bit generator seed derived from `seed` and labels (sha256; public)."""
    digest = hashlib.sha256(repr((int(seed), *labels)).encode()).digest()
    return int.from_bytes(digest[:8], "big") - 2**63


def _dealer_class():
    crypten_compat.get_crypten()  # imports CrypTen with its shim
    import crypten.communicator as comm
    from crypten.mpc.provider.ttp_provider import TTPServer

    class Dealer(TTPServer):
        """CrypTen's dealer plus `stream`, `reseed` and counters (module docstring)."""

        def __init__(self):
            self.served = {"messages": 0, "requests": 0, "bytes": 0}
            self._streaming = False
            super().__init__()  # serves until party 0 says "terminate"

        def _count(self, result: torch.Tensor) -> torch.Tensor:
            self.served["requests"] += 1
            self.served["bytes"] += int(result.nelement()) * 8
            self.served["messages"] += 0 if self._streaming else 1
            return result

        def additive(self, *args, **kwargs):
            return self._count(super().additive(*args, **kwargs))

        def square(self, *args, **kwargs):
            return self._count(super().square(*args, **kwargs))

        def binary(self, *args, **kwargs):
            return self._count(super().binary(*args, **kwargs))

        def wraps(self, *args, **kwargs):
            return self._count(super().wraps(*args, **kwargs))

        def B2A(self, *args, **kwargs):
            return self._count(super().B2A(*args, **kwargs))

        def stream(self, requests: Sequence[tuple[str, tuple, dict]], chunk_elements: int) -> torch.Tensor:
            """Answer `requests` [(function, args, kwargs)] in order; send party 0 the answers
            concatenated, in chunks of `chunk_elements` (the last one shorter). Returns the
            number of requests served (the loop sends it as the reply)."""
            self.served["messages"] += 1
            ttp_rank = comm.get().get_ttp_rank()
            buf = torch.empty(int(chunk_elements), dtype=torch.long, device=self.device)
            fill = 0
            self._streaming = True
            try:
                for function, args, kwargs in requests:
                    if function not in DEALER_FUNCTIONS:
                        raise ValueError(f"unknown dealer function {function!r}")
                    flat = getattr(self, function)(*args, **kwargs).reshape(-1)
                    pos = 0
                    while pos < flat.numel():
                        n = min(flat.numel() - pos, buf.numel() - fill)
                        buf[fill:fill + n] = flat[pos:pos + n]
                        fill, pos = fill + n, pos + n
                        if fill == buf.numel():
                            comm.get().broadcast(buf, ttp_rank, self.comm_group)
                            fill = 0
            finally:
                self._streaming = False
            if fill:
                comm.get().broadcast(buf[:fill].clone(), ttp_rank, self.comm_group)
            return torch.tensor([len(requests)], dtype=torch.long, device=self.device)

        def reseed(self, seed: int) -> torch.Tensor:
            """Tests and benchmarks only: generator i gets `derived_seed(seed, "ttp", i)`."""
            self.served["messages"] += 1
            for i, g in enumerate(self.generators):
                g.manual_seed(derived_seed(seed, "ttp", i))
            return torch.zeros(1, dtype=torch.long, device=self.device)

    return Dealer


def serve() -> dict[str, Any]:
    """Run this process as the TTP dealer until party 0 says it is done (call after
    `crypten_compat.init_party` with the dealer's rank). Returns what it served: request
    messages, tuples and bytes sent to party 0.

    CrypTen's `TTPServer` returns normally on any RuntimeError of its requests loop (a peer that
    died, a receive that timed out); that error is re-raised here, and a loop that ended without
    party 0's "terminate" raises ConnectionError, so a dealer never reports success for a session
    that broke off.
    """
    crypten = crypten_compat.get_crypten()
    communicator = crypten.communicator.get()
    original = communicator.recv_obj
    ended: dict[str, Any] = {"terminated": False, "error": None}

    def recv_obj(*args, **kwargs):
        try:
            obj = original(*args, **kwargs)
        except RuntimeError as e:
            ended["error"] = e
            raise
        ended["terminated"] = isinstance(obj, str) and obj == "terminate"
        return obj

    communicator.recv_obj = recv_obj
    try:
        with warnings.catch_warnings():
            # TTPServer calls crypten.init() again; `init_party` already did.
            warnings.filterwarnings("ignore", message="CrypTen is already initialized")
            dealer = _dealer_class()()
    finally:
        communicator.recv_obj = original
    if ended["terminated"]:
        return dict(dealer.served)
    if ended["error"] is not None:
        raise ended["error"]
    raise ConnectionError("party 0 stopped requesting triples without ending the session")


# ---------------------------------------------------------------------------------------------
# party 0's side


def _client():
    crypten = crypten_compat.get_crypten()
    return crypten.mpc.provider.ttp_provider.TTPClient.get()


def _quiet():
    """Keep the parties' communication counters out of dealer traffic (counted apart)."""
    return crypten_compat.get_crypten().cfg.temp_override({"communicator.verbose": False})


def _request(function: str, device: str | None, *args, **kwargs) -> None:
    crypten = crypten_compat.get_crypten()
    comm = crypten.communicator.get()
    message = {"function": function, "device": device, "args": args, "kwargs": kwargs}
    comm.send_obj(message, comm.get_ttp_rank(), _client().ttp_group)


def _reply(device: str | None) -> torch.Tensor:
    comm = crypten_compat.get_crypten().communicator.get()
    size = comm.recv_obj(comm.get_ttp_rank(), _client().ttp_group)
    result = torch.empty(size, dtype=torch.long, device=device)
    comm.broadcast(result, comm.get_ttp_rank(), _client().comm_group)
    return result


def fetch_stream(requests: Sequence[tuple[str, tuple, dict]], total_elements: int, device: str,
                 sink: Callable[[torch.Tensor], None], chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> int:
    """Party 0: ask the dealer for `requests` in one message and pass every received chunk
    (1-D int64, in stream order) to `sink`; `total_elements` is what the answers add up to
    (known from the trace). Returns the bytes received. Not counted in the parties' counters."""
    comm = crypten_compat.get_crypten().communicator.get()
    with _quiet():
        _request("stream", device, list(requests), int(chunk_elements))
        buf = torch.empty(min(int(chunk_elements), max(int(total_elements), 1)), dtype=torch.long, device=device)
        for start in range(0, int(total_elements), int(chunk_elements)):
            n = min(int(chunk_elements), int(total_elements) - start)
            part = buf[:n]
            comm.broadcast(part, comm.get_ttp_rank(), _client().comm_group)
            sink(part)
        served = int(_reply(device).item())
    if served != len(requests):
        raise RuntimeError(f"the dealer served {served} of {len(requests)} requests")
    return int(total_elements) * 8


def reseed_dealer(seed: int, device: str | None = None) -> None:
    """Party 0: reseed the dealer's generators (tests and benchmarks only)."""
    with _quiet():
        _request("reseed", device, int(seed))
        _reply(device)


def stream_request(function: str, sizes: tuple, op: str | None, extra: tuple) -> tuple[str, tuple, dict]:
    """The (function, args, kwargs) the dealer's `stream` takes for one provider request (the
    arguments CrypTen's TTP client would send for it)."""
    if function == "additive":
        args, kwargs = extra
        return function, (tuple(sizes[0]), tuple(sizes[1]), op, *args), dict(kwargs)
    if function == "binary":
        return function, (tuple(sizes[0]), tuple(sizes[1])), {}
    return function, (tuple(sizes[0]),), {}


__all__ = ["DEALER_FUNCTIONS", "derived_seed", "fetch_stream", "reseed_dealer", "serve", "stream_request"]
