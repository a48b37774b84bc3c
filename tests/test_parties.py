"""Every party stops within its `--timeout` in every phase, whatever its peer does.

A party (client rank 0, server rank 1, TTP dealer rank 2) alone, next to a process that holds
the rendezvous port without ever answering, or whose peer dies or goes silent mid-run: each ends
with one line on stderr (no c10d native stack), exit code 2 through the CLI, and within its
timeout of the moment it started waiting. The waiting is measured from the party's own "about to
connect" mark, so interpreter start-up on a loaded machine does not enter the bound; the CLI test
allows for start-up separately.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pi_lnfree.errors import UserError
from pi_lnfree.secure import parties
from pi_lnfree.secure.evaluate import PROGRAM
from pi_lnfree.secure.parties import PartyFailure, PartyJob, free_port, launch_local
from pi_lnfree.secure.profile import load_profile
from pi_lnfree.secure.watchdog import Watchdog

ROOT = Path(__file__).resolve().parents[1]
TTP = str(ROOT / "protocols" / "crypten-2pc-ttp.toml")
TIMEOUT = 3.0
TAKEN_PORT_TIMEOUT = 60.0
# From the watchdog's deadline to the process's exit status: a thread wake-up and os._exit,
# plus scheduling on a busy 2-core machine.
EXIT_SLACK_S = 3.0
# Interpreter start-up (torch, CrypTen) of the CLI and of its party process on a busy machine.
STARTUP_S = 45.0
NATIVE_NOISE = ("Exception raised from", "frame #", "c10d", "TCPStore.cpp", "Traceback")

# A party in a fresh interpreter, as a party process runs it; it prints "connecting" once its
# imports are done, just before `run_party` starts waiting for peers.
_HARNESS = """
import pickle, sys
from pi_lnfree.secure import crypten_compat
from pi_lnfree.secure.parties import PartyFailure, run_party
job = pickle.loads(bytes.fromhex(sys.argv[1]))
crypten_compat.configure(job.profile)
print("connecting", flush=True)
try:
    run_party(job)
except PartyFailure as e:
    sys.stderr.write(f"error: {e}\\n")
    sys.exit(2)
"""


def _env() -> dict[str, str]:
    # The party processes' real environment; the stock matmul skips the start-up timing of the
    # fast one (start-up only: it changes nothing in the waiting being measured).
    return {**parties._child_env(), "PI_LNFREE_FAST_MATMUL": "stock",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


class _SilentListener:
    """Holds `port`: accepts every connection and never sends or reads a byte."""

    def __init__(self, port: int):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(64)
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                self.conns.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self):
        for c in self.conns:
            c.close()
        self.sock.close()


class _SilentConnector:
    """Connects to `port` as soon as something listens there, then never says anything."""

    def __init__(self, port: int):
        self.port, self.conn, self.stop = port, None, False
        threading.Thread(target=self._connect, daemon=True).start()

    def _connect(self):
        while not self.stop and self.conn is None:
            try:
                self.conn = socket.create_connection(("127.0.0.1", self.port), timeout=1)
            except OSError:
                time.sleep(0.05)

    def close(self):
        self.stop = True
        if self.conn is not None:
            self.conn.close()


ALONE_PORTS: dict[str, int] = {}
ALONE = {  # case -> (rank, what the peer's side of the port does)
    "client-alone": (0, None),
    "server-alone": (1, None),
    "dealer-alone": (2, None),
    "client-silent-peer-connects": (0, _SilentConnector),
    "server-port-held-silently": (1, _SilentListener),
    "dealer-port-held-silently": (2, _SilentListener),
    "client-port-already-taken": (0, _SilentListener),
}


@pytest.fixture(scope="module")
def alone_results():
    """Every ALONE case at once (each on its own port): case -> (exit code, stderr, seconds from
    the party's "connecting" mark to its exit)."""
    profile = load_profile(TTP)
    procs, holders, results = {}, [], {}
    for case, (rank, holder) in ALONE.items():
        port = ALONE_PORTS[case] = free_port()
        if holder is not None:
            holders.append(holder(port))
        # the taken port must fail at once, not at a timeout: give it a long one, so that a
        # loaded machine's slow exit cannot be mistaken for waiting
        timeout = TAKEN_PORT_TIMEOUT if case == "client-port-already-taken" else TIMEOUT
        job = PartyJob(rank=rank, profile=profile, timeout_s=timeout, master_port=port, token_spec={"samples": 1})
        procs[case] = subprocess.Popen([sys.executable, "-c", _HARNESS, pickle.dumps(job).hex()], cwd=ROOT,
                                       env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def watch(case, proc):
        ready = proc.stdout.readline()
        t0 = time.monotonic()
        try:
            proc.wait(timeout=TIMEOUT * 10 + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
        results[case] = (proc.wait(), proc.stderr.read(), time.monotonic() - t0, ready)

    threads = [threading.Thread(target=watch, args=item) for item in procs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for h in holders:
        h.close()
    return results


@pytest.mark.parametrize("case", [c for c in ALONE if c != "client-port-already-taken"])
def test_party_without_an_answering_peer_stops_within_its_timeout(alone_results, case):
    code, stderr, elapsed, ready = alone_results[case]
    rank = ALONE[case][0]
    assert ready == "connecting\n", stderr
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1, stderr
    watchdog = f"connecting to the parties at 127.0.0.1:{ALONE_PORTS[case]} did not finish within {TIMEOUT:g} s"
    # The client also hosts the TCPStore, whose own wait for the others has the same timeout
    # (started a moment after the watchdog's): either may speak first, in the same words.
    assert lines[0].startswith(f"error: {parties.party_label(rank)} failed: {watchdog}"), lines[0]
    assert not any(noise in stderr for noise in NATIVE_NOISE)
    assert TIMEOUT - 0.2 <= elapsed <= TIMEOUT + EXIT_SLACK_S


def test_client_on_a_taken_port_fails_at_once(alone_results):
    code, stderr, elapsed, _ = alone_results["client-port-already-taken"]
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1, stderr
    assert "client (rank 0) failed: cannot listen on the rendezvous port: another process already uses it" in lines[0]
    assert elapsed < TAKEN_PORT_TIMEOUT / 4


def test_cli_server_alone_exits_2_with_one_line(tmp_path):
    """The reported case: `secure-eval --rank 1` with no peer took twice its timeout plus a retry
    delay and printed c10d's native stack before its one-line error."""
    from pi_lnfree.checkpoint import save_checkpoint
    from pi_lnfree.config import make_config
    from pi_lnfree.model import GPT

    cfg = make_config("tiny", "sm-r", vocab_size=64)
    save_checkpoint(tmp_path / "c.pt", GPT(cfg).state_dict(), cfg)
    timeout = 6
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pi_lnfree.cli", "secure-eval", str(tmp_path / "c.pt"), "--protocol", TTP,
         "--rank", "1", "--master-port", str(free_port()), "--timeout", str(timeout)],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PI_LNFREE_FAST_MATMUL": "stock"},
        timeout=STARTUP_S + 4 * timeout,
    )
    elapsed = time.monotonic() - t0
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "server (rank 1) failed: connecting to the parties" in lines[0]
    assert not any(noise in proc.stderr for noise in NATIVE_NOISE)
    # A loose bound (start-up dominates on a busy machine); the waiting itself is measured
    # precisely from the party's own mark in the tests above.
    assert elapsed < STARTUP_S + timeout


# ---------------------------------------------------------------------------------------------
# a peer that dies or goes silent mid-run


def _mark(job) -> None:
    Path(job.payload).write_text(str(time.time()))


def _vanishing_client(job):
    """Client that receives the config like the real one, then dies by SIGKILL while the server
    waits for its reply and the dealer for its first request."""
    from pi_lnfree.secure import crypten_compat

    crypten_compat.exchange_json(None, src=1)
    _mark(job)
    os.kill(os.getpid(), signal.SIGKILL)


def _silent_client(job):
    """Client that receives the config, then holds its connections without another word."""
    from pi_lnfree.secure import crypten_compat

    crypten_compat.exchange_json(None, src=1)
    _mark(job)
    time.sleep(600)


def _run_midway(tmp_path, client_program: str) -> tuple[str, float]:
    from pi_lnfree.checkpoint import save_checkpoint
    from pi_lnfree.config import make_config
    from pi_lnfree.model import GPT

    cfg = make_config("tiny", "sm-r", vocab_size=64)
    save_checkpoint(tmp_path / "c.pt", GPT(cfg).state_dict(), cfg)
    mark = tmp_path / "went-away"
    jobs = parties.local_jobs(load_profile(TTP), TIMEOUT, {
        0: dict(program=client_program, payload=str(mark)),
        1: dict(checkpoint=str(tmp_path / "c.pt"), program=PROGRAM),
    })
    os.environ["PI_LNFREE_FAST_MATMUL"] = "stock"
    try:
        with pytest.raises(PartyFailure) as err:
            launch_local(jobs, TIMEOUT)
    finally:
        del os.environ["PI_LNFREE_FAST_MATMUL"]
    return str(err.value), time.time() - float(mark.read_text())


def test_dealer_and_server_fail_when_the_client_dies_midway(tmp_path):
    msg, after = _run_midway(tmp_path, "tests.test_parties:_vanishing_client")
    assert "client (rank 0) was killed by signal 9" in msg
    assert "server (rank 1) failed: lost the connection to its peer" in msg
    # CrypTen's dealer used to end "normally" on a lost connection; it reports it now.
    assert "dealer (rank 2) failed: lost the connection to its peer" in msg
    assert "after its peer failed; killed" not in msg  # each one stopped on its own
    assert after < EXIT_SLACK_S  # a dead peer is noticed at once, not at the timeout


def test_dealer_and_server_fail_when_the_client_goes_silent_midway(tmp_path):
    msg, after = _run_midway(tmp_path, "tests.test_parties:_silent_client")
    assert f"server (rank 1) failed: a metadata exchange with its peer (sent by rank 0) did not finish within {TIMEOUT:g} s" in msg
    # The dealer waits for requests inside CrypTen's loop, bounded by the process group's timeout.
    assert f"dealer (rank 2) failed: its peer did not answer within the timeout (Timed out waiting {TIMEOUT * 1000:.0f}ms" in msg
    assert f"client (rank 0) did not stop within {TIMEOUT:g} s after its peer failed; killed" in msg
    # The server and the dealer stop within TIMEOUT of the silence, the silent client TIMEOUT later.
    assert after < 2 * TIMEOUT + EXIT_SLACK_S


# ---------------------------------------------------------------------------------------------
# the watchdog itself


def test_watchdog_fires_only_for_a_phase_that_overruns():
    fired: list[tuple[str, float]] = []
    event = threading.Event()

    def on_expire(message):
        fired.append((message, time.monotonic()))
        event.set()

    dog = Watchdog("server (rank 1)", 0.3, on_expire)
    with dog.phase("a quick phase"):
        time.sleep(0.05)
    time.sleep(0.4)
    assert not fired  # a phase that ended in time disarms the deadline
    t0 = time.monotonic()
    with dog.phase("an outer phase"):
        with dog.phase("a slow phase"):
            assert event.wait(5)
    message, at = fired[0]
    assert message.startswith("server (rank 1) failed: a slow phase did not finish within 0.3 s")
    assert 0.3 <= at - t0 < 1.5
    assert len(fired) == 1


def test_a_timeout_inside_a_phase_reads_like_the_watchdogs_own():
    """torch.distributed's clock and the watchdog's have the same budget; when gloo's fires
    first (a loaded machine), the party still names the phase, not gloo's wording."""
    dog = Watchdog("server (rank 1)", 30.0, lambda message: None)
    gloo = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] "
                        "Timed out waiting 3000ms for recv operation to complete")
    with pytest.raises(UserError) as err:
        with dog.phase("an outer phase"):
            with dog.phase("a metadata exchange"):
                raise gloo
    assert str(err.value) == ("a metadata exchange did not finish within 30 s (--timeout); "
                              "a peer is absent, dead, or connected without answering")
    assert err.value.__cause__ is gloo
    other = RuntimeError("Connection closed by peer [127.0.0.1]:1234")
    with pytest.raises(RuntimeError) as err2:
        with dog.phase("a metadata exchange"):
            raise other
    assert err2.value is other  # only timeouts are reworded
