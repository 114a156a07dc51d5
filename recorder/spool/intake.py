"""What producers put on the writer's queue, and the futures the writer settles."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Final

from hoopgw.recorder.spool.layout import Stream


class LoopWaiter:
    """An asyncio future the writer thread settles with one `call_soon_threadsafe`.

    What `asyncio.wrap_future` does for a concurrent future, without the
    concurrent future: no condition variable to take, one call to hand back.
    """

    __slots__ = ("future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[dict[str, Any]] = loop.create_future()

    def done(self) -> bool:
        return False  # settled on the loop, which ignores a second outcome

    def set_result(self, record: dict[str, Any]) -> None:
        self._settle(_settle_result, record)

    def set_exception(self, exc: BaseException) -> None:
        self._settle(_settle_exception, exc)

    def _settle(self, settle: Callable[[asyncio.Future[Any], Any], None], value: Any) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            self.loop.call_soon_threadsafe(settle, self.future, value)


def _settle_result(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _settle_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


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


STOP: Final = object()
"""Queued by `close()`: write what came before, seal everything, end the thread."""
