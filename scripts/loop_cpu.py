"""The loop thread's CPU per statement, split by what ran, for `bench_saturation.py --loop-cpu DIR`.

Loaded as a mitmproxy script into bare mitmdump and into the gateway alike,
so that the two can be set side by side: at one connection either proxy's
loop thread is busy nearly all the time, so a statement's latency is about
that thread's CPU per statement, and what the gateway adds to it is about
the difference. Every asyncio callback the loop runs is charged, in thread CPU,
to its kind (mitmproxy's client and upstream connection tasks, its hook
tasks, the socket transports, any other callback by name); in the gateway,
the CPU of its own work is counted as well, wherever on the loop it runs,
and taken out of the callback it ran in: its hooks (each event's dispatch
on `Gateway`, addons/dispatch.py, the concerns' hooks and the walk over
them, an awaited one step by step, its waits left out), the loop's WAL
commit and the answers' records. The cyclic
collector's passes on the loop thread are counted too (inside whatever they
interrupted). What is left of the gateway's thread CPU after its own work
is mitmproxy's, asyncio's and the loop's, comparable with bare's.

Every 0.25 s (and at shutdown) it replaces the JSON file named by
$HOOPGW_LOOP_CPU with cumulative totals; the bench reads it before and after
each wrk run and divides the difference by the statements answered in
between. Never load it in production: it wraps asyncio's `Handle._run`.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import os
import threading
import time
from collections.abc import Awaitable, Callable, Generator
from pathlib import Path
from typing import Any

import orjson
from mitmproxy import ctx, http

from hoopgw.addons.dispatch import Gateway, dispatched_hooks, walk

ENVIRONMENT = "HOOPGW_LOOP_CPU"
WRITE_EVERY = 0.25
TASK_KINDS = {
    "ConnectionHandler.handle_connection": "mitmproxy: client connection task",
    "ConnectionHandler.open_connection": "mitmproxy: upstream connection task",
    "ConnectionHandler.hook_task": "mitmproxy: hook tasks",
}
TRANSPORTS = "_SelectorSocketTransport."
GATEWAY_HOOKS = "gateway: its hooks"
GATEWAY_COMMIT = "gateway: the loop's WAL commit"
GATEWAY_ANSWERS = "gateway: the answers' records"
GATEWAY_ROWS = (GATEWAY_HOOKS, GATEWAY_COMMIT, GATEWAY_ANSWERS)
COLLECTOR = "collector: passes on the loop thread (inside the other rows)"

cpu = time.thread_time


def callback_kind(callback: Any) -> str:
    """The row a loop callback's CPU is charged to: a task by its coroutine, the rest by name."""
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        name = getattr(owner.get_coro(), "__qualname__", "?")
        return TASK_KINDS.get(name, f"task: {name}")
    name = getattr(getattr(callback, "func", callback), "__qualname__", type(callback).__name__)
    if name.startswith(TRANSPORTS):
        return "asyncio: socket transports"
    return f"callback: {name}"


class Totals:
    """Cumulative thread CPU by row; only the loop thread adds to it. Work measured inside
    the gateway's hooks under a row of its own (the answers' records a request hook
    builds) is taken out of the hooks' row, so the gateway's rows do not overlap."""

    def __init__(self) -> None:
        self.rows: dict[str, float] = {}
        self.in_hooks = 0
        self.gateways_own = 0.0  # the gateway's rows summed as they grow: read per callback

    def add(self, row: str, seconds: float) -> None:
        self.rows[row] = self.rows.get(row, 0.0) + seconds

    def add_own(self, row: str, seconds: float) -> None:
        self.add(row, seconds)
        if self.in_hooks:
            self.add(GATEWAY_HOOKS, -seconds)  # the hooks' step counts it in full
        else:
            self.gateways_own += seconds

    def hook_step(self, step: Callable[[Any], Any], argument: Any) -> Any:
        """Run one synchronous step of the gateway's hooks, its CPU charged to their row
        (once: a step run inside another, an eager task's, is in the outer one's)."""
        self.in_hooks += 1
        start = cpu()
        try:
            return step(argument)
        finally:
            self.in_hooks -= 1
            if not self.in_hooks:
                spent = cpu() - start
                self.add(GATEWAY_HOOKS, spent)
                self.gateways_own += spent


class StepClock:
    """Awaits a hook's awaitable, charging the thread CPU of each of its steps, and only
    those, to the hooks' row: the wait for the disk, the GIL or another task is not its."""

    __slots__ = ("inner", "totals")

    def __init__(self, inner: Awaitable[Any], totals: Totals) -> None:
        self.inner, self.totals = inner, totals

    def __await__(self) -> Generator[Any, Any, Any]:
        steps = self.inner.__await__()
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            try:
                if thrown is not None:
                    error, thrown = thrown, None
                    yielded = self.totals.hook_step(steps.throw, error)
                else:
                    yielded = self.totals.hook_step(steps.send, sent)
            except StopIteration as done:
                return done.value
            try:
                sent = yield yielded
            except BaseException as exc:  # handed on to the hook, as an await would
                sent, thrown = None, exc


class LoopCpu:
    """The probe: wraps the loop's callbacks and the gateway's work at `running`, counts
    answered requests, and writes the totals on the loop every WRITE_EVERY seconds."""

    def __init__(self) -> None:
        self.totals = Totals()
        self.statements = 0
        self.loop_thread: int | None = None
        self.collection_start: float | None = None
        self.recording: Any = None
        self.spool_wrapped = False
        self._original_run: Callable[[asyncio.Handle], None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def running(self) -> None:
        self.loop_thread = threading.get_ident()
        self._wrap_callbacks()
        gc.callbacks.append(self._time_collection)
        for addon in walk(ctx.master.addons.chain):
            if isinstance(addon, Gateway):
                self._wrap_gateway(addon)
            if type(addon).__name__ == "Recording":
                self.recording = addon
                addon._record_answers = self._cpu_call(GATEWAY_ANSWERS, addon._record_answers)
        self._schedule()

    def response(self, flow: http.HTTPFlow) -> None:
        self.statements += 1
        self._wrap_spool()

    def done(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._original_run is not None:
            asyncio.Handle._run = self._original_run  # type: ignore[method-assign]
        if self._time_collection in gc.callbacks:
            gc.callbacks.remove(self._time_collection)
        self._write()

    def _wrap_callbacks(self) -> None:
        """Each callback's CPU to its kind, less the gateway's own work inside it (its hooks
        run inside mitmproxy's tasks), which has rows of its own."""
        original = self._original_run = asyncio.Handle._run
        totals = self.totals

        def charged(handle: asyncio.Handle) -> None:
            own, start = totals.gateways_own, cpu()
            try:
                original(handle)
            finally:
                spent = cpu() - start - (totals.gateways_own - own)
                totals.add(callback_kind(handle._callback), spent)  # type: ignore[attr-defined]

        asyncio.Handle._run = charged  # type: ignore[method-assign]

    def _wrap_spool(self) -> None:
        """The spool starts with the gateway's `running`; its commit is wrapped once it exists."""
        spool = getattr(self.recording, "spool", None)
        if self.spool_wrapped or spool is None:
            return
        spool._commit_on_loop = self._cpu_call(GATEWAY_COMMIT, spool._commit_on_loop)
        self.spool_wrapped = True

    def _wrap_gateway(self, gateway: Any) -> None:
        """Each event's dispatch, the concerns' hooks and the dispatcher's own walk, in the
        place mitmproxy looks it up (`Gateway` installs one per event on itself)."""
        for hook in sorted(dispatched_hooks()):
            if gateway.links(hook):
                setattr(gateway, hook, self._charged_dispatch(getattr(gateway, hook)))

    def _charged_dispatch(self, dispatch: Callable[[Any], Any]) -> Callable[[Any], Any]:
        totals = self.totals

        def charged(subject: Any) -> Any:
            result = totals.hook_step(dispatch, subject)
            if result is not None and inspect.isawaitable(result):
                return StepClock(result, totals)
            return result

        return charged

    def _cpu_call(self, row: str, method: Callable[[], None]) -> Callable[[], None]:
        add_own = self.totals.add_own

        def charged() -> None:
            start = cpu()
            try:
                method()
            finally:
                add_own(row, cpu() - start)

        charged.__qualname__ = method.__qualname__  # the callback's row names the method
        return charged

    def _time_collection(self, phase: str, info: dict[str, int]) -> None:
        if threading.get_ident() != self.loop_thread:
            return
        if phase == "start":
            self.collection_start = cpu()
        elif self.collection_start is not None:
            self.totals.add(COLLECTOR, cpu() - self.collection_start)
            self.collection_start = None

    def _schedule(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(WRITE_EVERY, self._tick)

    def _tick(self) -> None:
        self._write()
        self._schedule()

    def _write(self) -> None:
        target = os.environ.get(ENVIRONMENT)
        if not target or threading.get_ident() != self.loop_thread:
            return
        snapshot = {
            "statements": self.statements,
            "thread_cpu": cpu(),
            "rows": self.totals.rows,
        }
        path = Path(target)
        partial = path.with_name(path.name + ".partial")
        partial.write_bytes(orjson.dumps(snapshot))
        partial.replace(path)


addons = [LoopCpu()]
