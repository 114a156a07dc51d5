"""What producers put on the writer's queue, and the futures the writer settles."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Final

from hoopgw.recorder.spool.layout import Stream

Outcome = tuple["asyncio.Future[dict[str, Any]]", dict[str, Any] | None, BaseException | None]
"""A waiter's future, and the stored record (durable) or the error (refused)."""


class LoopInbox:
    """Outcomes for the waiters of one event loop, handed over with one wake-up at a time.

    The writer thread posts a batch's outcomes at once; unless a hand-over is
    already scheduled, that costs one `call_soon_threadsafe` (one self-pipe write,
    one callback on the loop), however many records the batch held. Outcomes
    posted before the loop ran that callback ride with it: a busy loop is woken
    once for several batches, not once per record.
    """

    __slots__ = ("_lock", "_outcomes", "_scheduled", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._outcomes: list[Outcome] = []
        self._scheduled = False

    def post(self, outcomes: list[Outcome]) -> None:
        """From the writer thread: settle these futures on the loop, in this order."""
        with self._lock:
            self._outcomes.extend(outcomes)
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._settle)
        except RuntimeError:  # a closed loop: nobody waits any more
            with self._lock:
                self._outcomes.clear()
                self._scheduled = False

    def _settle(self) -> None:
        with self._lock:
            outcomes, self._outcomes = self._outcomes, []
            self._scheduled = False
        for future, record, error in outcomes:
            if future.done():  # cancelled: its waiter gave up
                continue
            if error is None:
                future.set_result(record)
            else:
                future.set_exception(error)


class LoopWaiter:
    """What `Spool.append_on_loop` hands the writer: an asyncio future and its loop's inbox."""

    __slots__ = ("future", "inbox")

    def __init__(self, future: asyncio.Future[dict[str, Any]], inbox: LoopInbox) -> None:
        self.future = future
        self.inbox = inbox


@dataclass(slots=True)
class Write:
    """A chained record line, in seq order within its stream."""

    stream: Stream
    seq: int
    line: bytes
    future: Future[dict[str, Any]] | LoopWaiter | None
    record: dict[str, Any]
    seal_after: bool


@dataclass(slots=True)
class Seal:
    """Seal the open segments of one session, or of every session when None."""

    session_id: str | None
    future: Future[None]


@dataclass(slots=True)
class Failed:
    """A producer's commit of `writes` failed with `error`: the writer thread handles it as
    its own failed write (a full disk, or a failure for good), ahead of the queue."""

    error: Exception
    writes: list[Write]


STOP: Final = object()
"""Queued by `close()`: write what came before, seal everything, end the thread."""
