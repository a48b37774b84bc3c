"""Start the parties: separate local processes over gloo, or one party per machine.

Roles: rank 0 is the client (holds the token ids, learns the logits), rank 1 the server (holds
the weights), rank 2 the TTP dealer when the profile's provider is TTP. Every party joins a
torch.distributed env rendezvous (`MASTER_ADDR`, `MASTER_PORT`) over gloo.

Local parties are fresh interpreters (`python -m pi_lnfree.secure.parties JOB RESULT`), so they
share nothing with the caller's process and never re-import its main module.

Failure handling: every blocking call of the process group times out after `timeout_s`, and each
party's own `watchdog` ends it when connecting (TCPStore, gloo rendezvous, CrypTen's seeds, the
dealer's set-up) or a metadata exchange takes longer than `timeout_s`, whatever the peer does
(absent, dead, or holding the port without answering). The parent watches the processes, and
once one has died or failed it gives the others `timeout_s` seconds to fail on their own, then
kills them. Either way the caller gets a `PartyFailure` naming each party and what happened to
it, in one line: party processes run with torch's C++ log level at FATAL (unless the caller set
`TORCH_CPP_LOG_LEVEL`), so c10d's retry warnings and their native stacks stay out of stderr.

What ranks 0 and 1 do once connected is `PartyJob.program` ("module:function", named by the
caller: `secure-eval` and the calibration each pass their own); the dealer always serves triples.
"""

from __future__ import annotations

import os
import pickle
import re
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
from pi_lnfree.files import atomic_write
from pi_lnfree.secure.roles import DEALER, party_label
from pi_lnfree.secure.watchdog import says_timed_out

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


_SOURCE_LOCATION = re.compile(r"^\[[^\]]*:\d+\]\s*")  # "[.../pair.cc:553] " before a gloo message


def _describe_error(exc: BaseException) -> str:
    full = str(exc)
    lines = [ln.strip() for ln in full.strip().splitlines() if ln.strip()]
    text = lines[0] if lines else ""
    if len(lines) > 1 and ("Connection closed" in full or says_timed_out(full)):
        text = next((ln for ln in lines if "Connection closed" in ln or says_timed_out(ln)), text)
    text = _SOURCE_LOCATION.sub("", text)
    if isinstance(exc, UserError):
        return text
    if "Connection closed by peer" in full or "Connection reset by peer" in full:
        return "lost the connection to its peer (the peer crashed, was killed or left)"
    if "EADDRINUSE" in full:
        return "cannot listen on the rendezvous port: another process already uses it (choose another --master-port)"
    if says_timed_out(text):
        return f"its peer did not answer within the timeout ({text[:200]})"
    return f"{type(exc).__name__}: {text[:400]}"


def _exit_with_message(message: str) -> None:
    """Default watchdog action: the one-line error on stderr, exit code 2."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    os._exit(2)


def run_party(job: PartyJob, on_expire: Callable[[str], None] = _exit_with_message) -> Any:
    """Run one party in this process (blocking); its result, or `PartyFailure`.

    Connecting, each metadata exchange and leaving run under a `watchdog.Watchdog` with
    `job.timeout_s`: when one of them overruns, `on_expire(message)` ends the process (by
    default: `error: <message>` on stderr and `os._exit(2)`)."""
    import importlib

    import torch

    from pi_lnfree.secure import crypten_compat, watchdog

    torch.set_num_threads(max(1, int(job.threads)))
    dog = watchdog.Watchdog(party_label(job.rank), job.timeout_s, on_expire)
    watchdog.install(dog)
    try:
        crypten_compat.configure(job.profile, device=job.device)
        with dog.phase(f"connecting to the parties at {job.master_addr}:{job.master_port}"):
            crypten_compat.init_party(job.rank, job.world_size, job.timeout_s, job.master_addr, job.master_port)
        if job.rank == DEALER:
            from pi_lnfree.secure import dealer

            return {"role": "dealer", "served": dealer.serve()}
        if not job.program:
            raise ValueError("PartyJob.program names no party program (module:function)")
        module, _, name = job.program.partition(":")
        return getattr(importlib.import_module(module), name)(job)
    except PartyFailure:
        raise
    except Exception as e:  # noqa: BLE001 - every failure of a party becomes one clear message
        raise PartyFailure(f"{party_label(job.rank)} failed: {_describe_error(e)}") from e
    finally:
        try:
            with dog.phase("leaving the process group"):
                crypten_compat.shutdown()
        except Exception:  # noqa: BLE001 - the peer may already be gone
            pass
        watchdog.install(None)


def _child_main(job_file: str, result_file: str) -> int:
    """Body of a party process (`python -m pi_lnfree.secure.parties JOB RESULT`): run the job the
    parent wrote, write ("ok"|"error", payload) to the result file, return the exit code."""
    with open(job_file, "rb") as f:
        job = pickle.load(f)  # written by our own parent process into a private folder

    def on_expire(text: str) -> None:  # the watchdog's thread: report like a failure, then stop
        _write_result(result_file, {"kind": "error", "value": text})
        os._exit(1)

    try:
        message, code = {"kind": "ok", "value": run_party(job, on_expire)}, 0
    except PartyFailure as e:
        message, code = {"kind": "error", "value": str(e)}, 1
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises
        message, code = {"kind": "error", "value": f"{party_label(job.rank)} crashed: {e!r}"}, 1
        traceback.print_exc()
    _write_result(result_file, message)
    return code


def _write_result(result_file: str, message: dict) -> None:
    """Write `message` to `result_file` atomically (a fresh temporary file each time, so the
    watchdog's thread and the main thread cannot collide)."""
    with atomic_write(result_file, "wb") as f:
        pickle.dump(message, f)


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


def _child_env() -> dict[str, str]:
    """The party processes' environment: ours, with torch's C++ logging limited to FATAL unless
    the caller chose a level (`TORCH_CPP_LOG_LEVEL=INFO` shows c10d's connection log again).
    torch reads the variable once, when `torch._C` is imported, hence a fresh process."""
    env = dict(os.environ)
    env.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")
    return env


def supervise(
    start: Callable[[int], tuple[list[str], Path, dict[str, Any]]],
    ranks: list[int],
    timeout_s: float,
    on_start: Callable[[dict[int, int]], None] | None = None,
    poll_s: float = 0.1,
    read: Callable = _read_result,
    label: Callable[[int], str] = party_label,
) -> dict[int, Path]:
    """Start one process per rank (`start(rank)` -> (argv, its result file, Popen keywords)),
    wait for all of them, and always leave none running. Returns rank -> result file. Raises
    `PartyFailure` naming every party that failed or died; once one has, the others get
    `timeout_s` seconds to fail on their own, then are killed. `on_start` receives {rank: pid}
    once all processes started (tests use it to kill one)."""
    procs: dict[int, subprocess.Popen] = {}
    outs: dict[int, Path] = {}
    try:
        for rank in ranks:
            argv, outs[rank], kwargs = start(rank)
            procs[rank] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, **kwargs)
        if on_start is not None:
            on_start({rank: p.pid for rank, p in procs.items()})
        errors = _watch(procs, outs, timeout_s, poll_s, read=read, label=label)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
            p.wait()
    if errors:
        raise PartyFailure("secure evaluation failed: " + "; ".join(errors[r] for r in sorted(errors)))
    return outs


def launch_local(
    jobs: list[PartyJob],
    timeout_s: float,
    on_start: Callable[[dict[int, int]], None] | None = None,
    poll_s: float = 0.1,
) -> dict[int, Any]:
    """Run each job in its own Python process; rank -> result (see `supervise` for failures and
    `on_start`). Party processes write nothing to stdout (theirs goes to stderr)."""
    by_rank = {job.rank: job for job in jobs}
    with tempfile.TemporaryDirectory(prefix="pi-lnfree-parties-") as tmp:
        def start(rank: int):
            job_file, out = Path(tmp) / f"job{rank}.pkl", Path(tmp) / f"result{rank}.pkl"
            with job_file.open("wb") as f:
                pickle.dump(by_rank[rank], f)
            argv = [sys.executable, *_CHILD_CMD, str(job_file), str(out)]
            return argv, out, {"stdout": sys.stderr.fileno(), "env": _child_env()}

        outs = supervise(start, list(by_rank), timeout_s, on_start, poll_s)
        return {rank: _read_result(path)["value"] for rank, path in outs.items()}


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
    "supervise",
    "local_jobs",
    "party_ranks",
    "run_party",
]


if __name__ == "__main__":
    exit_code = _child_main(sys.argv[1], sys.argv[2])
    # The result is written: leave without the interpreter's teardown, whose C++ destructors
    # (gloo pairs to a peer that is gone) can take seconds or block.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
