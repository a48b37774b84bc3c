"""The only module that imports CrypTen; it patches around the library's age.

CrypTen 0.4.1 (archived upstream) predates torch 2.x:

* `crypten/nn/onnx_converter.py` imports `torch.onnx._internal.registration`, which no longer
  exists. The imported name is never used, so an empty module registered under that name before
  the import is enough (`_install_import_shim`).
* `torch.distributed` process groups default to a 30-minute timeout and CrypTen passes none; a
  party whose peer died or never connected would hang. `init_party` sets the default timeout of
  the c10d module before CrypTen creates its groups. The phases that clock does not bound as a
  whole (connecting, metadata exchanges) run under the process's `watchdog` when one is installed.
* CrypTen's TTP dealer treats any communication error as the end of the session and returns
  normally; `pi_lnfree.secure.dealer.serve` tells a dealer that party 0 released from one whose
  party 0 vanished.
* With the TTP provider, party 0 asks the dealer for every triple through the same communicator
  that counts the parties' traffic; `init_party` wraps that request so the dealer's traffic is
  counted apart (`dealer_stats`) and never mixed into the two parties' online bytes.

* `FixedPointEncoder.decode` divides negative values by `scale - 1` before flooring, so a value
  just above a negative integer -k (within k units of 2^-16) decodes 1.0 too low: -3.99997 comes
  out as -4.99997. `get_plain_text` opens and decodes with a plain division instead.

Everything else in `pi_lnfree.secure` reaches CrypTen through `get_crypten()`. CrypTen is not a
declared dependency of the package (its published metadata pins packages that cannot install);
`require_crypten()` turns its absence into a one-line `UserError` that says how to install it.
"""

from __future__ import annotations

import os
import sys
import types
from datetime import timedelta
from typing import Any

from pi_lnfree.errors import UserError

_DEALER = {"bytes": 0, "rounds": 0}
INSTALL_HINT = (
    "CrypTen is not installed: run `pip install --no-deps crypten==0.4.1` in this environment "
    "(what `make install` does; --no-deps because its published metadata pins packages that cannot "
    "install, and its real needs omegaconf, onnx and pyyaml come with pi-lnfree)"
)


def require_crypten() -> None:
    """Raise `UserError(INSTALL_HINT)` when the `crypten` package cannot be imported here (it is
    looked up, not imported: the secure commands check this before starting any party)."""
    import importlib.util

    try:
        found = importlib.util.find_spec("crypten") is not None
    except (ImportError, ValueError):  # a broken or blocked entry in sys.modules
        found = False
    if not found:
        raise UserError(INSTALL_HINT)


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
    """The `crypten` module, imported once with the torch>=2 shim installed (`UserError` with
    install instructions when it is missing)."""
    if "crypten" not in sys.modules:
        _install_import_shim()
    try:
        import crypten
    except ModuleNotFoundError as e:
        if e.name != "crypten":
            raise
        raise UserError(INSTALL_HINT) from None
    except ImportError:  # `import crypten` blocked (None in sys.modules)
        require_crypten()
        raise
    return crypten


def configure(profile: Any, device: str = "cpu") -> None:
    """Set `crypten.cfg` from a protocol profile (`pi_lnfree.secure.profile.ProtocolProfile`).

    Must run in every party process before `init_party` (the provider decides whether a dealer
    joins the process group). Communication counting is always on: the meter needs it. The
    fast int64 matmul is for CPU shares only (CrypTen has its own on CUDA).
    """
    crypten = get_crypten()
    cfg = crypten.cfg
    cfg.communicator.verbose = True
    cfg.mpc.provider = profile.provider
    cfg.encoder.precision_bits = int(profile.precision_bits)
    for key, value in profile.crypten_functions().items():
        setattr(cfg.functions, key, value)
    install_fast_matmul(bool(profile.fast_matmul) and str(device).startswith("cpu"))


# ---------------------------------------------------------------------------------------------
# the exact fast int64 matmul (pi_lnfree.secure.fast_matmul)
#
# CrypTen performs every int64 ring product of a matmul as `getattr(torch, op)(x, y)` (or
# `torch.matmul`) through the global name `torch` of these modules: the three correction terms
# of the Beaver protocol (beaver), products with public operands (arithmetic), the 3-party
# protocol (replicated), and triple generation (TFP provider; TTP client and dealer).
_FAST_MATMUL_MODULES = (
    "crypten.mpc.primitives.beaver",
    "crypten.mpc.primitives.arithmetic",
    "crypten.mpc.primitives.replicated",
    "crypten.mpc.provider.tfp_provider",
    "crypten.mpc.provider.ttp_provider",
)
# Override of the profile's `fast_matmul = true` for every process that inherits the
# environment (parties and dealer): "auto" (default), "limbs" (always) or "stock" (never).
FAST_MATMUL_ENV = "PI_LNFREE_FAST_MATMUL"
_FAST_MATMUL_MODES = ("auto", "limbs", "stock")


def install_fast_matmul(enabled: bool, *, force: bool = False) -> bool:
    """Route CrypTen's int64 share products through the exact float64-limb matmul, or back.

    The patch rebinds the global name `torch` in the modules listed in `_FAST_MATMUL_MODULES`
    to `fast_matmul.torch_with_fast_matmul()`: a stand-in whose `matmul` takes the limb path
    for large CPU int64 products and defers everything else (any other op, float or CUDA
    tensors, CrypTen's CUDALongTensor) to the real torch. Results are bit-identical, so bytes,
    rounds and revealed values do not change; only local compute time does.

    `enabled=False` restores stock CrypTen. With `enabled`, the mode comes from `force=True`
    ("limbs") or the environment variable `PI_LNFREE_FAST_MATMUL` (see `FAST_MATMUL_ENV`);
    in the default "auto" mode the limb path is installed only where it pays off:
    `fast_matmul.limbs_pay_off()` times both once per process, because some CPU builds of
    torch already multiply int64 matrices at float64 BLAS speed. Returns whether the limb path
    is now installed. Call it in every party process (and the TTP dealer's), or before forking.
    """
    import importlib

    import torch

    from pi_lnfree.secure import fast_matmul

    mode = "stock"
    if enabled:
        mode = "limbs" if force else os.environ.get(FAST_MATMUL_ENV, "auto").strip().lower() or "auto"
        if mode not in _FAST_MATMUL_MODES:
            raise UserError(f"{FAST_MATMUL_ENV} must be one of {_FAST_MATMUL_MODES}, got {mode!r}")
    get_crypten()
    use_limbs = mode == "limbs" or (mode == "auto" and fast_matmul.limbs_pay_off())
    replacement = fast_matmul.torch_with_fast_matmul() if use_limbs else torch
    for name in _FAST_MATMUL_MODULES:
        importlib.import_module(name).torch = replacement
    return use_limbs


def init_party(rank: int, world_size: int, timeout_s: float, master_addr: str, master_port: int) -> None:
    """Join the parties' process group (torch.distributed env rendezvous over gloo).

    `rank` is 0 (client), 1 (server) or `world_size` (the TTP dealer). Every blocking call of the
    process group fails after `timeout_s` seconds instead of the 30-minute default; the TCPStore
    client's connect retries can take longer, which the caller's watchdog bounds.
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
    # The dealer joins here too (CrypTen's TTPServer would otherwise connect inside its
    # serving loop), so that connecting is one phase on every rank.
    crypten.init()
    if crypten.mpc.ttp_required() and rank == 0:
        _meter_dealer_requests()


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


def meter_stats() -> dict[str, float]:
    """This party's cumulative counters in the shape `meter.Meter` reads: bytes and rounds of the
    two parties' protocol, and party 0's dealer traffic apart."""
    s, d = comm_stats(), dealer_stats()
    return {"bytes": s["bytes"], "rounds": s["rounds"], "dealer_bytes": d["bytes"], "dealer_requests": d["rounds"]}


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


__all__ = [
    "comm_stats",
    "configure",
    "cryptensor",
    "dealer_stats",
    "get_crypten",
    "init_party",
    "install_fast_matmul",
    "reset_comm_stats",
    "shutdown",
]


_TREE_MAX_METHODS = ("log_reduction", "double_log_reduction", "accelerated_cascade")


def row_max(x, method: str):
    """Max over the last dim (keepdim) of a CrypTensor.

    For the tree methods this calls CrypTen's reduction directly: `CrypTensor.max(dim)` would
    also compute the one-hot argmax (an equality test and a random tie-break) that a softmax
    does not need. "pairwise" goes through `max` with that method.
    """
    crypten = get_crypten()
    dim = x.dim() - 1
    if method in _TREE_MAX_METHODS:
        from crypten.common.functions import maximum

        return maximum._max_helper_all_tree_reductions(x, dim=dim, method=method).unsqueeze(dim)
    with crypten.cfg.temp_override({"functions.max_method": method}):
        return x.max(dim=dim, keepdim=True)[0]


def reciprocal_positive(x):
    """1/x for a CrypTensor known to be positive (skips CrypTen's sign computation)."""
    crypten = get_crypten()
    with crypten.cfg.temp_override({"functions.reciprocal_all_pos": True}):
        return x.reciprocal()


def exchange_json(obj: Any, src: int) -> Any:
    """Send a JSON-serialisable object from party `src` to the other party (returns it on both).

    Used for public metadata only (model config, sequence length, meter readings). JSON, not
    pickle: a party never unpickles what its peer sent. Not counted in the protocol's traffic.
    """
    import json

    import torch
    import torch.distributed as dist

    from pi_lnfree.secure.watchdog import guarded

    comm = get_crypten().communicator.get()
    group = comm.main_group
    if comm.get_rank() == src:
        data = torch.frombuffer(bytearray(json.dumps(obj).encode()), dtype=torch.uint8)
        size = torch.tensor([data.numel()], dtype=torch.long)
    else:
        size = torch.zeros(1, dtype=torch.long)
    with guarded(f"a metadata exchange with its peer (sent by rank {src})"):
        dist.broadcast(size, src, group=group)
        if comm.get_rank() != src:
            data = torch.empty(int(size.item()), dtype=torch.uint8)
        dist.broadcast(data, src, group=group)
    return json.loads(data.numpy().tobytes().decode())


def as_fixed_point(bits, like):
    """A comparison result (0/1 with integer encoding) re-encoded with `like`'s fixed-point scale,
    so that public floats can multiply it (local: the shares are multiplied by the scale)."""
    out = bits.clone()
    out._tensor.encode_as_(like._tensor)
    return out


def get_plain_text(x, dst: int | None = None):
    """Open a CrypTensor (to party `dst` only, or to both) and decode it exactly: the ring value
    divided by the fixed-point scale in float64 (CrypTen 0.4.1's decode is wrong for some
    negative values). Returns a float32 tensor, or None on a party that is not `dst`."""
    ring = x._tensor.reveal(dst=dst) if dst is not None else x._tensor.reveal()
    if ring is None:
        return None
    return (ring.double() / x.encoder.scale).float()
