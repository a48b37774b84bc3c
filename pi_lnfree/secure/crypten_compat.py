"""The only module that imports CrypTen; it patches around the library's age.

CrypTen 0.4.1 (archived upstream) predates torch 2.x:

* `crypten/nn/onnx_converter.py` imports `torch.onnx._internal.registration`, which no longer
  exists. The imported name is never used, so an empty module registered under that name before
  the import is enough (`_install_import_shim`).
* `torch.distributed` process groups default to a 30-minute timeout and CrypTen passes none; a
  party whose peer died or never connected would hang. `init_party` sets the default timeout of
  the c10d module before CrypTen creates its groups.
* With the TTP provider, party 0 asks the dealer for every triple through the same communicator
  that counts the parties' traffic; `init_party` wraps that request so the dealer's traffic is
  counted apart (`dealer_stats`) and never mixed into the two parties' online bytes.

Everything else in `pi_lnfree.secure` reaches CrypTen through `get_crypten()`.
"""

from __future__ import annotations

import os
import sys
import types
from datetime import timedelta
from typing import Any

_DEALER = {"bytes": 0, "rounds": 0}


def _install_import_shim() -> None:
    """Register an empty `torch.onnx._internal.registration` when torch no longer has it."""
    name = "torch.onnx._internal.registration"
    if name in sys.modules:
        return
    try:
        __import__(name)
    except ImportError:
        shim = types.ModuleType(name)
        shim.registry = None  # the one name CrypTen imports (and never uses)
        sys.modules[name] = shim


def get_crypten():
    """The `crypten` module, imported once with the torch>=2 shim installed."""
    if "crypten" not in sys.modules:
        _install_import_shim()
    import crypten

    return crypten


def configure(profile: Any) -> None:
    """Set `crypten.cfg` from a protocol profile (`pi_lnfree.secure.profile.ProtocolProfile`).

    Must run in every party process before `init_party` (the provider decides whether a dealer
    joins the process group). Communication counting is always on: the meter needs it.
    """
    crypten = get_crypten()
    cfg = crypten.cfg
    cfg.communicator.verbose = True
    cfg.mpc.provider = profile.provider
    cfg.encoder.precision_bits = int(profile.precision_bits)
    for key, value in profile.crypten_functions().items():
        setattr(cfg.functions, key, value)
    install_fast_matmul(bool(profile.fast_matmul))


# >>> fast-matmul patch point (owned by the fast-matmul helper, issue 7) >>>
def install_fast_matmul(enabled: bool) -> None:
    """Install (or remove) the exact float64-limb int64 matmul for shares on CPU.

    Placeholder until `pi_lnfree/secure/fast_matmul.py` lands: CrypTen's own int64 matmul is used
    either way, which is exact and only slower.
    """
    return None


# <<< fast-matmul patch point <<<


def init_party(rank: int, world_size: int, timeout_s: float, master_addr: str, master_port: int) -> None:
    """Join the parties' process group (torch.distributed env rendezvous over gloo).

    `rank` is 0 (client), 1 (server) or `world_size` (the TTP dealer). Every blocking call of the
    process group fails after `timeout_s` seconds instead of the 30-minute default.
    """
    import torch.distributed.distributed_c10d as c10d

    crypten = get_crypten()
    c10d.default_pg_timeout = timedelta(seconds=float(timeout_s))
    os.environ.update(
        {
            "RENDEZVOUS": "env://",
            "MASTER_ADDR": str(master_addr),
            "MASTER_PORT": str(int(master_port)),
            "WORLD_SIZE": str(int(world_size)),
            "RANK": str(int(rank)),
            "DISTRIBUTED_BACKEND": "gloo",
        }
    )
    crypten.init()
    if crypten.mpc.ttp_required() and rank == 0:
        _meter_dealer_requests()


def run_dealer() -> None:
    """Serve triples as the TTP dealer until party 0 says it is done (blocks)."""
    crypten = get_crypten()
    crypten.mpc.provider.TTPServer()


def shutdown() -> None:
    """Leave the process group (party 0 also stops the dealer)."""
    crypten = get_crypten()
    if crypten.communicator.is_initialized():
        crypten.uninit()


def comm_stats() -> dict[str, float]:
    """This party's counters since the last reset: communicator calls, bytes (sent and received,
    as CrypTen counts them), seconds spent inside communication calls."""
    stats = get_crypten().communicator.get().get_communication_stats()
    return {"rounds": int(stats["rounds"]), "bytes": float(stats["bytes"]), "time": float(stats["time"])}


def reset_comm_stats() -> None:
    """Zero this party's communication counters and the dealer counters."""
    get_crypten().communicator.get().reset_communication_stats()
    _DEALER.update(bytes=0, rounds=0)


def dealer_stats() -> dict[str, int]:
    """Traffic between party 0 and the TTP dealer since the last reset (bytes, requests)."""
    return dict(_DEALER)


def _meter_dealer_requests() -> None:
    """Count party 0's triple requests to the dealer apart from the parties' own traffic."""
    crypten = get_crypten()
    client_cls = type(crypten.mpc.provider.ttp_provider.TTPClient.get())
    if getattr(client_cls, "_pi_lnfree_metered", False):
        return
    original = client_cls.ttp_request

    def ttp_request(self, func_name, device, *args, **kwargs):
        cfg = crypten.cfg
        verbose = cfg.communicator.verbose
        cfg.communicator.verbose = False
        try:
            result = original(self, func_name, device, *args, **kwargs)
        finally:
            cfg.communicator.verbose = verbose
        _DEALER["bytes"] += int(result.nelement()) * 8
        _DEALER["rounds"] += 1
        return result

    client_cls.ttp_request = ttp_request
    client_cls._pi_lnfree_metered = True


def cryptensor(tensor, src: int, device: str | None = None):
    """Secret-share `tensor` held by party `src` (the other party passes a same-shaped dummy)."""
    crypten = get_crypten()
    return crypten.cryptensor(tensor, src=src, device=device)


def is_cryptensor(obj: Any) -> bool:
    """True for CrypTen's encrypted tensors."""
    return isinstance(obj, get_crypten().CrypTensor)


__all__ = [
    "comm_stats",
    "configure",
    "cryptensor",
    "dealer_stats",
    "get_crypten",
    "init_party",
    "install_fast_matmul",
    "is_cryptensor",
    "reset_comm_stats",
    "run_dealer",
    "shutdown",
]
