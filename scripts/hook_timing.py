"""Wall time of each gateway hook, for `scripts/bench.py --hook-timing FILE`.

Loaded as a second mitmproxy script next to addons/gateway.py. Once the
gateway runs it wraps every request and response hook of the gateway's
addons (where `Gateway`, addons/dispatch.py, calls them), the loop callback
that builds the answers' records, and the spool's durable append, with a
clock, and every 100 answers writes p50 and mean per hook (microseconds) as
JSON to the file named by $HOOPGW_HOOK_TIMING. A sampling profiler shows
where CPU goes; this shows where a statement waits, which at one client is
what latency is made of.
Never load it in production: it holds the last 5,000 timings per hook.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import orjson
from mitmproxy import ctx, http

from hoopgw.addons.dispatch import Gateway

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

    def running(self) -> None:
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
                self.spool_wrapped = True
                return

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
        self, append: Callable[[dict[str, Any]], asyncio.Future[dict[str, Any]]]
    ) -> Callable[[dict[str, Any]], asyncio.Future[dict[str, Any]]]:
        def timed_append(record: dict[str, Any]) -> asyncio.Future[dict[str, Any]]:
            start = time.perf_counter()
            future = append(record)
            future.add_done_callback(
                lambda _: self._add("Spool.append_on_loop until settled", start)
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

    def _add(self, name: str, start: float) -> None:
        self.samples.setdefault(name, deque(maxlen=KEPT)).append(time.perf_counter() - start)

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
            }
        Path(target).write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))


def _walk(addons: list[Any]) -> Iterator[Any]:
    for addon in addons:
        yield addon
        yield from _walk(getattr(addon, "addons", None) or [])


addons = [HookTiming()]
