"""A party process's own deadline for each phase in which it waits for a peer.

Why a watchdog and not only torch.distributed's timeouts: the process group's timeout bounds
every gloo collective and point-to-point call, but connecting is several phases with their own
clocks. torch's TCPStore client retries connect-and-validate with a backoff delay between tries,
and each try gets the full timeout, so a party whose rendezvous host never answers gave up only
after about twice its timeout plus the delay; the gloo rendezvous, CrypTen's seed exchange and
the TTP dealer's set-up come on top. A timer thread measures each phase against the party's
`--timeout` from the outside. The blocking calls of torch.distributed release the GIL, so the
thread runs while the main thread waits inside C++.

On expiry the watchdog calls `on_expire(message)`, which must end the process (report the
message, then `os._exit`): a thread cannot interrupt a call blocked inside C++.

Both clocks run with the same budget, so which one speaks first is a race that the machine's
load decides. A timeout raised by torch.distributed inside a phase is therefore reported with the
phase's own message, the same words the watchdog would have used: a silent peer reads the same
on a quiet and on a loaded machine.

One watchdog per process is installed with `install`; `guarded(what)` bounds a block by it, and
is a no-op where none is installed (a library call outside a party process).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from pi_lnfree.errors import UserError

_ACTIVE: list[Watchdog] = []


class Watchdog:
    """Ends the process when a phase outlives `budget_s` seconds.

    `label` names the party in the message ("server (rank 1)"); `on_expire(message)` is called
    from the timer thread with one line ("<label> failed: <what> did not finish within ...") and
    must not return.
    """

    def __init__(self, label: str, budget_s: float, on_expire: Callable[[str], None]):
        self.label = label
        self.budget_s = float(budget_s)
        self._on_expire = on_expire
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._what = ""
        threading.Thread(target=self._run, name="pi-lnfree-party-watchdog", daemon=True).start()

    def reason(self, what: str) -> str:
        """Why a phase `what` that ran out of time failed (without the party's label)."""
        return (f"{what} did not finish within {self.budget_s:g} s (--timeout); "
                "a peer is absent, dead, or connected without answering")

    def message(self, what: str) -> str:
        """The one-line failure for a phase `what` that ran out of time."""
        return f"{self.label} failed: {self.reason(what)}"

    @contextmanager
    def phase(self, what: str) -> Iterator[None]:
        """Bound the block by `budget_s` seconds from now (nested phases restore the outer one).

        Raises `UserError` with `reason(what)` when the block itself raises a timeout (an
        exception whose text says "timed out", as gloo's and the TCPStore's do)."""
        with self._cond:
            saved = (self._deadline, self._what)
            self._deadline, self._what = time.monotonic() + self.budget_s, what
            self._cond.notify()
        try:
            yield
        except UserError:
            raise
        except Exception as e:
            if says_timed_out(str(e)):
                raise UserError(self.reason(what)) from e
            raise
        finally:
            with self._cond:
                self._deadline, self._what = saved
                self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while True:
                if self._deadline is None:
                    self._cond.wait()
                    continue
                left = self._deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            what = self._what
        self._on_expire(self.message(what))


def says_timed_out(text: str) -> bool:
    """Whether an error text is a timeout in the words of gloo and the TCPStore ("Timed out ...")."""
    return "timed out" in text.lower()


def install(dog: Watchdog | None) -> None:
    """Make `dog` this process's watchdog for `guarded` (None removes it)."""
    _ACTIVE.clear()
    if dog is not None:
        _ACTIVE.append(dog)


@contextmanager
def guarded(what: str) -> Iterator[None]:
    """Bound the block by the installed watchdog's budget; without one, run it unbounded."""
    if not _ACTIVE:
        yield
        return
    with _ACTIVE[0].phase(what):
        yield


__all__ = ["Watchdog", "guarded", "install", "says_timed_out"]
