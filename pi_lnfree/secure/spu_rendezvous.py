"""Where the SPU parties of a multi-host run listen, agreed before SPU's link starts.

SPU's brpc link needs every party's "host:port" up front; CrypTen's `--master-addr/--master-port`
rendezvous has no SPU counterpart, so the main processes agree on them first over one TCP
connection per party to the client's `--master-addr:--master-port`:

* every other party connects (retrying until the timeout), sends one JSON line `{"rank": r,
  "address": "host:port"}` (the host is the address its connection to the client comes from,
  the port a free one there) and, from the server, `"config"`: the model config, public anyway;
* the client, once all ranks have joined, calls `decide(config)` (it makes and checks its tokens
  against the config) and answers every party with `{"addresses": [...]}`, or `{"error": line}`
  when `decide` failed, so no party waits for a link that will never come.

Nothing private crosses this connection: addresses and the public model shapes.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any

from pi_lnfree.errors import UserError
from pi_lnfree.secure.roles import CLIENT


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _send(conn: socket.socket, obj: Any) -> None:
    conn.sendall(json.dumps(obj).encode() + b"\n")


def _recv(conn: socket.socket, deadline: float) -> Any:
    data = b""
    while not data.endswith(b"\n"):
        conn.settimeout(max(0.1, deadline - time.monotonic()))
        chunk = conn.recv(1 << 20)
        if not chunk:
            raise UserError("SPU rendezvous: the other side closed the connection")
        data += chunk
    return json.loads(data)


def host_client(master_addr: str, master_port: int, world: int, timeout_s: float,
                decide: Callable[[dict | None], None]) -> tuple[list[str], dict | None]:
    """The client's side: wait for ranks 1..world-1, run `decide(config)`, answer them all.
    Returns (addresses by rank, the server's config). Raises `UserError` on a timeout or when
    `decide` raises (after telling the others)."""
    deadline = time.monotonic() + timeout_s
    addresses: list[str | None] = [f"{master_addr}:{_free_port('')}"] + [None] * (world - 1)
    conns: dict[int, socket.socket] = {}
    config = None
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("", master_port))
        srv.listen(world)
        try:
            while len(conns) < world - 1:
                srv.settimeout(max(0.1, deadline - time.monotonic()))
                try:
                    conn, _ = srv.accept()
                except TimeoutError:
                    missing = [r for r in range(1, world) if r not in conns]
                    raise UserError(f"SPU rendezvous: ranks {missing} did not join {master_addr}:{master_port} "
                                    f"within {timeout_s:g} s") from None
                hello = _recv(conn, deadline)
                rank = int(hello["rank"])
                if not 0 < rank < world or rank in conns:
                    _send(conn, {"error": f"rank {rank} is not expected (world of {world})"})
                    conn.close()
                    continue
                conns[rank], addresses[rank] = conn, hello["address"]
                config = hello.get("config", config)
            try:
                decide(config)
            except UserError as e:
                for conn in conns.values():
                    _send(conn, {"error": f"the client stopped: {e}"})
                raise
            for conn in conns.values():
                _send(conn, {"addresses": addresses})
        finally:
            for conn in conns.values():
                conn.close()
    return [str(a) for a in addresses], config


def join(rank: int, master_addr: str, master_port: int, timeout_s: float, config: dict | None = None) -> list[str]:
    """A non-client party's side: announce this rank (and the server's config); the addresses
    by rank. Raises `UserError` when the client is unreachable for `timeout_s` or refuses."""
    if rank == CLIENT:
        raise ValueError("the client hosts the rendezvous")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            conn = socket.create_connection((master_addr, master_port), timeout=max(0.1, deadline - time.monotonic()))
            break
        except OSError:
            if time.monotonic() > deadline:
                raise UserError(f"SPU rendezvous: the client at {master_addr}:{master_port} did not answer "
                                f"within {timeout_s:g} s") from None
            time.sleep(0.2)
    with conn:
        host = conn.getsockname()[0]
        hello: dict[str, Any] = {"rank": rank, "address": f"{host}:{_free_port(host)}"}
        if config is not None:
            hello["config"] = config
        _send(conn, hello)
        reply = _recv(conn, deadline)
    if "error" in reply:
        raise UserError(f"SPU rendezvous: {reply['error']}")
    return list(reply["addresses"])


__all__ = ["host_client", "join"]
