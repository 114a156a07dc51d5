"""Wall time of each gateway hook, for `scripts/bench.py --hook-timing FILE`.

Loaded as a second mitmproxy script next to addons/gateway.py. Once the
gateway runs it wraps every request and response hook of the gateway's
addons (where `Gateway`, addons/dispatch.py, calls them), the loop callback
that builds the answers' records, and the spool's durable append, with a
clock, and every 100 answers writes p50, mean and p99 per hook (microseconds)
as JSON to the file named by $HOOPGW_HOOK_TIMING. The durable append is also
split into its phases (queued until the writer thread writes, the WAL's write
and fsync, fsync'd until the loop settles the futures), and the cyclic
collector's passes are timed by generation: neither shows in any hook's clock.
A sampling profiler shows where CPU goes; this shows where a statement waits,
which at one client is what latency is made of. A tick every millisecond on
the loop measures how late the loop runs it; a tick more than 2 ms late is
split from the kernel's scheduler statistics into the main thread's own CPU,
its wait for a CPU (another process or thread had it) and the rest (blocked:
the GIL, or a system call), with each other thread's CPU in that window.
Never load it in production: it holds the last 5,000 timings per hook.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import os
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import orjson
from mitmproxy import ctx, http

from hoopgw.addons.dispatch import Gateway
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


class HookTiming:
    def __init__(self) -> None:
        self.samples: dict[str, deque[float]] = {}
        self.answers = 0
        self.spool_wrapped = False
        self.collection_start: float | None = None

    def running(self) -> None:
        LoopLag(self._add).start()
        gc.callbacks.append(self._time_collection)
        for addon in _walk(ctx.master.addons.chain):
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
        self.answers += 1
        if self.answers % 100 == 0:
            self._write()

    def _wrap_spool(self) -> None:
        if self.spool_wrapped:
            return
        for addon in _walk(ctx.master.addons.chain):
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
            self.collection_start = None

    def _add(self, name: str, start: float, end: float | None = None) -> None:
        elapsed = (time.perf_counter() if end is None else end) - start
        self.samples.setdefault(name, deque(maxlen=KEPT)).append(elapsed)

    def _write(self) -> None:
        target = os.environ.get("HOOPGW_HOOK_TIMING")
        if not target:
            return
        summary = {}
        for name, samples in self.samples.items():
            ordered = sorted(samples)
            summary[name] = {
                "n": len(ordered),
                "p50_us": round(ordered[len(ordered) // 2] * 1e6, 1),
                "mean_us": round(sum(ordered) / len(ordered) * 1e6, 1),
                "p99_us": round(ordered[len(ordered) * 99 // 100] * 1e6, 1),
            }
        Path(target).write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))


class LoopLag:
    """Ticks on the loop; a late tick's window split by the kernel's per-thread accounting."""

    TICK = 0.001
    LATE = 0.002

    def __init__(self, add: Callable[[str, float, float], None]) -> None:
        self._add = add
        self._main = threading.get_native_id()
        self._names: dict[int, str] = {}
        self._last: tuple[float, dict[int, tuple[int, int]]] | None = None

    def start(self) -> None:
        asyncio.get_running_loop().call_soon(self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        threads = _schedstats()
        if self._last is not None:
            then, before = self._last
            window = now - then
            if window > self.TICK + self.LATE:
                self._late(window, before, threads)
        self._last = (now, threads)
        asyncio.get_running_loop().call_later(self.TICK, self._tick)

    def _late(
        self,
        window: float,
        before: dict[int, tuple[int, int]],
        after: dict[int, tuple[int, int]],
    ) -> None:
        def delta(tid: int) -> tuple[float, float]:
            run0, wait0 = before.get(tid, (0, 0))
            run1, wait1 = after.get(tid, (run0, wait0))
            return (run1 - run0) / 1e9, (wait1 - wait0) / 1e9

        running, waiting = delta(self._main)
        self._add("loop: late tick's window", 0.0, window)
        self._add("loop: late window, main thread on a CPU", 0.0, running)
        self._add("loop: late window, main thread waiting for a CPU", 0.0, waiting)
        self._add(
            "loop: late window, main thread blocked (GIL, syscall)",
            0.0,
            max(0.0, window - running - waiting),
        )
        for tid in after:
            if tid != self._main:
                name = self._name(tid)
                self._add(f"loop: late window, CPU of thread {name}", 0.0, delta(tid)[0])

    def _name(self, tid: int) -> str:
        if tid not in self._names:
            self._names.update(
                {thread.native_id or 0: thread.name for thread in threading.enumerate()}
            )
        return self._names.get(tid, str(tid))


def _schedstats() -> dict[int, tuple[int, int]]:
    """Each thread's (ns on a CPU, ns waiting for one) from /proc/self/task/*/schedstat."""
    stats = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat", "rb") as file:
                run, wait, _ = file.read().split()
        except (OSError, ValueError):
            continue
        stats[int(tid)] = (int(run), int(wait))
    return stats


def _walk(addons: list[Any]) -> Iterator[Any]:
    for addon in addons:
        yield addon
        yield from _walk(getattr(addon, "addons", None) or [])


addons = [HookTiming()]
