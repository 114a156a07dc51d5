"""Wall time of each gateway hook, for `scripts/bench.py --hook-timing FILE`.

Loaded as a second mitmproxy script next to addons/gateway.py. Once the
gateway runs it wraps every request and response hook of the gateway's
addons (where `Gateway`, addons/dispatch.py, calls them), the loop callback
that builds the answers' records, and the spool's durable append, with a
clock, and every 2 s (on an answer) writes p50, mean and p99 per hook
(microseconds) as JSON to the file named by $HOOPGW_HOOK_TIMING. The durable
append is also split into its phases (queued until the writer thread writes, the WAL's write
and fsync, fsync'd until the loop settles the futures), and the cyclic
collector's passes are timed by generation: neither shows in any hook's clock.
A sampling profiler shows where CPU goes; this shows where a statement waits,
which at one client is what latency is made of. A tick every millisecond on
the loop measures how late the loop runs it; a tick more than 2 ms late is
split from the kernel's scheduler statistics into the main thread's own CPU,
its wait for a CPU (another process or thread had it) and the rest (blocked:
the GIL, or a system call), with each other thread's CPU and the collector's
passes in that window.
Never load it in production: it holds the last 5,000 timings per hook.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import os
import threading
import time
from array import array
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, NamedTuple

import orjson
from mitmproxy import ctx, http

from hoopgw.addons.dispatch import Gateway, walk
from hoopgw.recorder.spool.intake import LoopInbox

GATEWAY_ADDONS = frozenset(
    {
        "SnowflakeTraffic",
        "Authentication",
        "Guardrails",
        "Masking",
        "Recording",
        "Inspection",
        "FailClosed",
    }
)
HOOKS = ("requestheaders", "request", "responseheaders", "response")
KEPT = 5000
WRITE_EVERY = 2.0


class Samples:
    """The last KEPT samples of one name, in an array of doubles. A deque of floats is a
    container the cyclic collector walks in every full pass: the probe's own samples made
    the passes it times longer."""

    __slots__ = ("count", "values")

    def __init__(self) -> None:
        self.values = array("d")
        self.count = 0

    def append(self, value: float) -> None:
        if len(self.values) < KEPT:
            self.values.append(value)
        else:
            self.values[self.count % KEPT] = value
        self.count += 1


class HookTiming:
    def __init__(self) -> None:
        self.samples: dict[str, Samples] = {}
        self.written_at = 0.0
        self.spool_wrapped = False
        self.collection_start: float | None = None
        self.collected = 0.0
        self.writes = 0

    def running(self) -> None:
        LoopLag(self._add, lambda: self.collected, lambda: self.writes).start()
        gc.callbacks.append(self._time_collection)
        for addon in walk(ctx.master.addons.chain):
            if isinstance(addon, Gateway):
                addon.wrap_hooks(self._timed_hook)
            if type(addon).__name__ == "Recording":
                # the answers' records are built in a loop callback, after the answer is sent
                build = addon._record_answers
                addon._record_answers = self._timed_call("Recording._record_answers", build)

    def _timed_hook(
        self, concern: str, hook: str, method: Callable[..., Any]
    ) -> Callable[..., Any]:
        """The gateway's dispatcher calls the concerns' hooks: they are timed in its place."""
        if concern not in GATEWAY_ADDONS or hook not in HOOKS:
            return method
        return self._timed(f"{concern}.{hook}", method)

    def response(self, flow: http.HTTPFlow) -> None:
        self._wrap_spool()
        now = time.perf_counter()
        if now - self.written_at >= WRITE_EVERY:
            self.written_at = now
            self._write()

    def _wrap_spool(self) -> None:
        if self.spool_wrapped:
            return
        for addon in walk(ctx.master.addons.chain):
            spool = getattr(addon, "spool", None)
            if type(addon).__name__ == "Recording" and spool is not None:
                spool.append = self._timed_append(spool.append)
                spool.append_on_loop = self._timed_append_on_loop(spool.append_on_loop)
                self._time_durable_phases(spool)
                self.spool_wrapped = True
                return

    def _time_durable_phases(self, spool: Any) -> None:
        """Split the durable wait: queued until the WAL write starts (by the writer thread
        or the loop's own commit), the WAL's write and fsync, and, when the writer thread
        wrote it, the fsync'd batch until the loop settles its futures (GIL hand-overs)."""
        writer, queued, posted = spool._writer, deque[float](), deque[float]()
        enqueue, wal_append = writer.enqueue, writer.wal.append

        def timed_enqueue(record: dict[str, Any], future: Any, wake: bool = True) -> None:
            if future is not None:
                queued.append(time.perf_counter())
            enqueue(record, future, wake)

        def timed_wal_append(data: bytes) -> None:
            start = time.perf_counter()
            if queued:
                first = queued.popleft()
                while queued:
                    queued.popleft()
                self._add("Spool: queued until written", first, start)
            wal_append(data)
            self._add("Spool: WAL write and fsync", start)

        post, settle = LoopInbox.post, LoopInbox._settle

        def timed_post(inbox: LoopInbox, outcomes: list[Any]) -> None:
            posted.append(time.perf_counter())
            post(inbox, outcomes)

        def timed_settle(inbox: LoopInbox) -> None:
            if posted:
                first = posted.popleft()
                while posted:
                    posted.popleft()
                self._add("Spool: fsync'd until the loop settles", first)
            settle(inbox)

        writer.enqueue, writer.wal.append = timed_enqueue, timed_wal_append
        LoopInbox.post, LoopInbox._settle = timed_post, timed_settle  # type: ignore[method-assign]

    def _timed_append(
        self, append: Callable[[dict[str, Any]], Future[dict[str, Any]]]
    ) -> Callable[[dict[str, Any]], Future[dict[str, Any]]]:
        def timed_append(record: dict[str, Any]) -> Future[dict[str, Any]]:
            start = time.perf_counter()
            future = append(record)
            future.add_done_callback(lambda _: self._add("Spool.append until durable", start))
            return future

        return timed_append

    def _timed_append_on_loop(
        self, append: Callable[..., asyncio.Future[dict[str, Any]]]
    ) -> Callable[..., asyncio.Future[dict[str, Any]]]:
        def timed_append(record: dict[str, Any], **how: Any) -> asyncio.Future[dict[str, Any]]:
            start = time.perf_counter()
            future = append(record, **how)
            by = "the loop commits" if how.get("commit_here") else "the writer commits"
            future.add_done_callback(
                lambda _: self._add(f"Spool.append_on_loop until settled, {by}", start)
            )
            return future

        return timed_append

    def _timed(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(method):

            async def timed_async(flow: http.HTTPFlow) -> None:
                start = time.perf_counter()
                await method(flow)
                self._add(name, start)

            return timed_async

        async def finish(result: Awaitable[Any], start: float) -> None:
            await result
            self._add(name, start)

        def timed(flow: http.HTTPFlow) -> Awaitable[None] | None:
            """A sync hook may return an awaitable (its work off the loop): timed to its end."""
            start = time.perf_counter()
            result = method(flow)
            if inspect.isawaitable(result):
                return finish(result, start)
            self._add(name, start)
            return None

        return timed

    def _timed_call(self, name: str, method: Callable[[], None]) -> Callable[[], None]:
        def timed() -> None:
            start = time.perf_counter()
            method()
            self._add(name, start)

        return timed

    def _time_collection(self, phase: str, info: dict[str, int]) -> None:
        """The cyclic collector's passes by generation: a pause no hook's clock shows."""
        if phase == "start":
            self.collection_start = time.perf_counter()
        elif self.collection_start is not None:
            self._add(f"gc: generation {info['generation']} pass", self.collection_start)
            self.collected += time.perf_counter() - self.collection_start
            self.collection_start = None

    def _add(self, name: str, start: float, end: float | None = None) -> None:
        elapsed = (time.perf_counter() if end is None else end) - start
        samples = self.samples.get(name)
        if samples is None:
            samples = self.samples[name] = Samples()
        samples.append(elapsed)

    def _write(self) -> None:
        target = os.environ.get("HOOPGW_HOOK_TIMING")
        if not target:
            return
        summary = {}
        for name, samples in self.samples.items():
            ordered = sorted(samples.values)
            summary[name] = {
                "n": len(ordered),
                "p50_us": round(ordered[len(ordered) // 2] * 1e6, 1),
                "mean_us": round(sum(ordered) / len(ordered) * 1e6, 1),
                "p99_us": round(ordered[len(ordered) * 99 // 100] * 1e6, 1),
            }
        Path(target).write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
        self.writes += 1


class LoopLag:
    """Ticks on the loop; a late tick's window split by the kernel's per-thread accounting.

    A tick reads the main thread's schedstat with one pread and the other threads' CPU
    clocks (about 7 us in all: a listing of /proc/self/task and a file per thread cost
    100 us, a tenth of the loop). A window in which the timing wrote its summary is
    counted apart: that sort is this script's, not the gateway's.
    """

    TICK = 0.001
    LATE = 0.002
    THREADS_EVERY = 1.0

    def __init__(
        self,
        add: Callable[[str, float, float], None],
        collected: Callable[[], float],
        writes: Callable[[], int],
    ) -> None:
        self._add = add
        self._collected = collected
        self._writes = writes
        self._schedstat = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        self._clocks: dict[str, int] = {}
        self._clocks_read = 0.0
        self._last: _Tick | None = None

    def start(self) -> None:
        asyncio.get_running_loop().call_soon(self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        if now - self._clocks_read > self.THREADS_EVERY:
            self._clocks = _cpu_clocks()
            self._clocks_read = now
        run, wait = os.pread(self._schedstat, 64, 0).split()[:2]
        tick = _Tick(
            now,
            int(run) / 1e9,
            int(wait) / 1e9,
            self._collected(),
            self._writes(),
            {name: _cpu(clock) for name, clock in self._clocks.items()},
        )
        last, self._last = self._last, tick
        if last is not None and tick.at - last.at > self.TICK + self.LATE:
            self._late(last, tick)
        asyncio.get_running_loop().call_later(self.TICK, self._tick)

    def _late(self, before: _Tick, after: _Tick) -> None:
        window = after.at - before.at
        if after.writes != before.writes:
            self._add("loop: late window in which the timing wrote (not counted)", 0.0, window)
            return
        running = after.running - before.running
        waiting = after.waiting - before.waiting
        collecting = after.collected - before.collected
        self._add("loop: late tick's window", 0.0, window)
        with_pass = "with" if collecting else "without"
        self._add(f"loop: late window {with_pass} a collector's pass", 0.0, window)
        self._add("loop: late window, the collector's passes", 0.0, collecting)
        self._add("loop: late window, main thread on a CPU", 0.0, running)
        self._add("loop: late window, main thread waiting for a CPU", 0.0, waiting)
        self._add(
            "loop: late window, main thread blocked (GIL, syscall)",
            0.0,
            max(0.0, window - running - waiting),
        )
        for name, cpu in after.threads.items():
            if name in before.threads:
                self._add(
                    f"loop: late window, CPU of thread {name}", 0.0, cpu - before.threads[name]
                )


class _Tick(NamedTuple):
    at: float
    running: float
    waiting: float
    collected: float
    writes: int
    threads: dict[str, float]


def _cpu_clocks() -> dict[str, int]:
    """The CPU clock of each thread but this one, by name."""
    clocks = {}
    for thread in threading.enumerate():
        if thread is threading.current_thread() or thread.ident is None:
            continue
        with contextlib.suppress(OSError):
            clocks[thread.name] = time.pthread_getcpuclockid(thread.ident)
    return clocks


def _cpu(clock: int) -> float:
    try:
        return time.clock_gettime(clock)
    except OSError:  # the thread ended since the last listing
        return 0.0


addons = [HookTiming()]
