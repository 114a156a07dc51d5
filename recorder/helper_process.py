"""The gateway's helper processes: work that would hold the GIL against the event loop, elsewhere.

A helper is `python -m MODULE FD`, FD its end of a socket pair, and speaks
length-prefixed messages (`multiprocessing.connection.Connection`) to the
one gateway process that started it. A plain child rather than a
`concurrent.futures` process pool: a pool's workers start by re-running the
parent's main script (mitmdump's, with mitmproxy) and bring a resource
tracker process, about 90 MB in all where a helper needs 30 to 60. Two use
it: the roll-up helper (`spool.entries`, `entry_helper`) and the store
helper (`store_process`, `store_helper`).

A helper inherits only what it needs of the gateway's environment, never
the variables the gateway's secrets are read from (`env:NAME`). It ignores
Ctrl-C and SIGTERM: a service manager stops the whole process group, and the
gateway's last calls at shutdown still go to its helpers. Closing the
gateway's end, at shutdown or when the gateway dies, is what stops it. It
runs at a lower CPU priority than the gateway (`BACKGROUND_NICE`).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping
from multiprocessing.connection import Connection
from typing import Final

HELPER_ENVIRONMENT: Final = frozenset({"PATH", "HOME", "LANG", "TMPDIR", "TZ", "VIRTUAL_ENV"})
"""What every helper inherits of the gateway's environment, besides PYTHON* and LC_*."""
STOP_TIMEOUT: Final = 5.0
"""Seconds a helper has to exit once its end is closed, before it is killed."""
BACKGROUND_NICE: Final = 10
"""How far below the gateway's priority a helper runs: its work (uploads, roll-ups) is
work nobody waits on, and on a busy host the scheduler should prefer the event loop
(weight 1024 at nice 0 against 110 at nice 10: a tenth of a contended CPU, all of an
idle one). Threads of the gateway are not lowered: one preempted while holding the GIL
would hold up the loop."""
_LOWEST_PRIORITY: Final = 19


def helper_environment() -> dict[str, str]:
    return {
        name: value
        for name, value in os.environ.items()
        if name in HELPER_ENVIRONMENT or name.startswith(("PYTHON", "LC_"))
    }


class HelperProcess:
    """One running helper and this side of its socket pair."""

    def __init__(self, module: str, environment: Mapping[str, str]) -> None:
        ours, theirs = socket.socketpair()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", module, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                env=dict(environment),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        lower_priority(self.process.pid)
        self.connection = Connection(ours.detach())

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        """End it now: a call under way on another thread fails as on an exited helper."""
        self.process.kill()

    def stop(self) -> None:
        self.connection.close()  # the helper reads the end of its input and exits
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def lower_priority(pid: int) -> bool:
    """Run process `pid` `BACKGROUND_NICE` below the gateway's main thread (threads it
    starts later inherit that); False where that cannot be done, which changes nothing."""
    if not hasattr(os, "setpriority"):
        return False
    try:
        gateway = os.getpriority(os.PRIO_PROCESS, os.getpid())
        os.setpriority(os.PRIO_PROCESS, pid, min(gateway + BACKGROUND_NICE, _LOWEST_PRIORITY))
    except OSError:
        return False  # the helper already exited; its caller finds out on its first call
    return True


def run_helper(serve: Callable[[Connection], None]) -> None:
    """A helper's `main`: serve the gateway on the connection its command line names."""
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, signal.SIG_IGN)
    serve(Connection(int(sys.argv[1])))
