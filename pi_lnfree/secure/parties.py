"""Start the parties: separate local processes over gloo, or one party per machine.

Roles: rank 0 is the client (holds the token ids, learns the logits), rank 1 the server (holds
the weights), rank 2 the TTP dealer when the profile's provider is TTP. Every party joins a
torch.distributed env rendezvous (`MASTER_ADDR`, `MASTER_PORT`) over gloo.

Local parties are fresh interpreters (`python -m pi_lnfree.secure.parties JOB RESULT`), so they
share nothing with the caller's process and never re-import its main module.

Failure handling: every blocking call of the process group times out after `timeout_s`; locally,
the parent watches the processes, and once one has died or failed it gives the others
`timeout_s` seconds to fail on their own, then kills them. Either way the caller gets a
`PartyFailure` naming each party and what happened to it.

What ranks 0 and 1 do once connected is `PartyJob.program` ("module:function", named by the
caller: `secure-eval` and the calibration each pass their own); the dealer always serves triples.
"""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pi_lnfree.errors import UserError
from pi_lnfree.secure.roles import DEALER, party_label

_CHILD_CMD = ["-m", "pi_lnfree.secure.parties"]


class PartyFailure(UserError):
    """A party died, failed, or never met its peer within the timeout."""


@dataclass
class PartyJob:
    """Everything one party process needs (picklable; sent to a spawned process)."""

    rank: int
    profile: Any  # ProtocolProfile
    timeout_s: float
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    world_size: int = 2
    device: str = "cpu"
    threads: int = 1
    checkpoint: str | None = None  # server only
    tokens: Any = None  # client only: (N, T) LongTensor, or None to derive from `token_spec`
    token_spec: dict[str, Any] = field(default_factory=dict)  # client only
    capture_server_view: bool = False  # tests: the server returns the shares it holds
    # "module:function" run by ranks 0 and 1 once the process group is up (rank 2, the TTP
    # dealer, always serves triples); `payload` is free-form input for it.
    program: str = ""
    payload: Any = None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def party_ranks(profile: Any) -> tuple[int, ...]:
    """The ranks a run of `profile` has: client and server, plus the dealer under TTP."""
    return (0, 1, DEALER) if profile.provider == "TTP" else (0, 1)


def local_jobs(profile: Any, timeout_s: float, per_rank: dict[int, dict[str, Any]] | None = None,
               **common: Any) -> list[PartyJob]:
    """One job per rank of `profile` for `launch_local`, all on one free loopback port: `common`
    fields go to every job, `per_rank[rank]` to that rank's only. The parties get half the CPUs'
    threads each, the dealer one."""
    common = dict(profile=profile, timeout_s=timeout_s, master_port=free_port(),
                  threads=max(1, (os.cpu_count() or 2) // 2), **common)
    per_rank = {DEALER: {"threads": 1}, **(per_rank or {})}
    return [PartyJob(rank=r, **{**common, **per_rank.get(r, {})}) for r in party_ranks(profile)]


def _describe_error(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    text = lines[0] if lines else ""
    if len(lines) > 1 and ("Connection closed" in str(exc) or "timed out" in str(exc).lower()):
        text = next((ln for ln in lines if "Connection closed" in ln or "timed out" in ln.lower()), text)
    if isinstance(exc, UserError):
        return text
    if "Connection closed by peer" in str(exc) or "Connection reset by peer" in str(exc):
        return "lost the connection to its peer (the peer crashed, was killed or left)"
    return f"{type(exc).__name__}: {text[:400]}"


def run_party(job: PartyJob) -> Any:
    """Run one party in this process (blocking); its result, or `PartyFailure`."""
    import importlib

    import torch

    from pi_lnfree.secure import crypten_compat

    torch.set_num_threads(max(1, int(job.threads)))
    try:
        crypten_compat.configure(job.profile, device=job.device)
        crypten_compat.init_party(job.rank, job.world_size, job.timeout_s, job.master_addr, job.master_port)
        if job.rank == DEALER:
            crypten_compat.run_dealer()
            return {"role": "dealer"}
        module, _, name = job.program.partition(":")
        return getattr(importlib.import_module(module), name)(job)
    except PartyFailure:
        raise
    except Exception as e:  # noqa: BLE001 - every failure of a party becomes one clear message
        raise PartyFailure(f"{party_label(job.rank)} failed: {_describe_error(e)}") from e
    finally:
        try:
            crypten_compat.shutdown()
        except Exception:  # noqa: BLE001 - the peer may already be gone
            pass


def _child_main(job_file: str, result_file: str) -> int:
    """Body of a party process (`python -m pi_lnfree.secure.parties JOB RESULT`): run the job the
    parent wrote, write ("ok"|"error", payload) to the result file, return the exit code."""
    with open(job_file, "rb") as f:
        job = pickle.load(f)  # written by our own parent process into a private folder
    try:
        message, code = {"kind": "ok", "value": run_party(job)}, 0
    except PartyFailure as e:
        message, code = {"kind": "error", "value": str(e)}, 1
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises
        message, code = {"kind": "error", "value": f"{party_label(job.rank)} crashed: {e!r}"}, 1
        traceback.print_exc()
    tmp = result_file + ".tmp"
    with open(tmp, "wb") as f:
        pickle.dump(message, f)
    os.replace(tmp, result_file)
    return code


def _exit_text(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _read_result(path: Path) -> dict | None:
    if not path.is_file():
        return None
    with path.open("rb") as f:
        return pickle.load(f)


def launch_local(
    jobs: list[PartyJob],
    timeout_s: float,
    on_start: Callable[[dict[int, int]], None] | None = None,
    poll_s: float = 0.1,
) -> dict[int, Any]:
    """Run each job in its own Python process; rank -> result. Raises `PartyFailure` when any
    party fails or dies; survivors get `timeout_s` seconds to fail on their own, then are killed.
    `on_start` receives {rank: pid} once all processes started (tests use it to kill one).
    Party processes write nothing to stdout (theirs goes to stderr)."""
    with tempfile.TemporaryDirectory(prefix="pi-lnfree-parties-") as tmp:
        procs: dict[int, subprocess.Popen] = {}
        outs: dict[int, Path] = {}
        try:
            for job in jobs:
                job_file, outs[job.rank] = Path(tmp) / f"job{job.rank}.pkl", Path(tmp) / f"result{job.rank}.pkl"
                with job_file.open("wb") as f:
                    pickle.dump(job, f)
                procs[job.rank] = subprocess.Popen(
                    [sys.executable, *_CHILD_CMD, str(job_file), str(outs[job.rank])],
                    stdout=sys.stderr.fileno(), stdin=subprocess.DEVNULL,
                )
            if on_start is not None:
                on_start({rank: p.pid for rank, p in procs.items()})
            errors = _watch(procs, outs, timeout_s, poll_s)
        finally:
            for p in procs.values():
                if p.poll() is None:
                    p.kill()
                p.wait()
        if errors:
            raise PartyFailure("secure evaluation failed: " + "; ".join(errors[r] for r in sorted(errors)))
        return {rank: _read_result(outs[rank])["value"] for rank in procs}


def _watch(procs: dict, outs: dict, timeout_s: float, poll_s: float, read: Callable = _read_result,
           label: Callable[[int], str] = party_label) -> dict[int, str]:
    """Wait for all processes; rank -> error line for every party that failed or was killed.
    `read(path)` gives a finished party's {"kind": "ok"|"error", "value"} (None if absent);
    `label(rank)` names a party in the messages."""
    errors: dict[int, str] = {}
    failed_at: float | None = None
    while True:
        for r, p in procs.items():
            code = p.poll()
            if code is None or r in errors:
                continue
            res = read(outs[r])
            if res is not None and res["kind"] == "error":
                errors[r] = res["value"].splitlines()[0]
            elif code != 0 or res is None:
                errors[r] = f"{label(r)} {_exit_text(code)}"
        if errors and failed_at is None:
            failed_at = time.monotonic()
        alive = [r for r, p in procs.items() if p.poll() is None]
        if not alive:
            return errors
        if failed_at is not None and time.monotonic() - failed_at > timeout_s:
            for r in alive:
                procs[r].kill()
                errors[r] = f"{label(r)} did not stop within {timeout_s:g} s after its peer failed; killed"
            return errors
        time.sleep(poll_s)


__all__ = [
    "PartyFailure",
    "PartyJob",
    "free_port",
    "launch_local",
    "local_jobs",
    "party_ranks",
    "run_party",
]


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1], sys.argv[2]))
