"""Hook dispatch microbenchmark: microseconds per statement mitmproxy spends calling the gateway.

Drives `master.addons.handle_lifecycle` (what mitmproxy's proxy server calls)
for the four flow hooks of one statement (requestheaders, request,
responseheaders, response, each followed by mitmproxy's `update`) over
addons/gateway.py's concerns, registered as mitmproxy registers the script
(a module whose `addons` list holds them), in two layouts:

- `per-addon`: each concern its own addon with `failclosed.guarded` hooks,
  as before addons/dispatch.py;
- `dispatched`: one `Gateway` calling the concerns, which mitmproxy no longer
  walks, as after the gateway's first `configure` (addons/gateway.py now).

`--hooks stub` replaces each concern's flow hooks with no-ops of the same
kind (plain or `async def`), so the figure is dispatch alone; `--hooks real`
runs the concerns themselves, unconfigured, on a query no caller verified
(Authentication refuses it, the others pass it by), which adds their
early-return work. mitmproxy's own addons before the script cost the same
in both layouts and are left out; layout `none` (no addon at all) is what
driving the events costs by itself. Figures are this process's CPU time.

    .venv/bin/python -m scripts.bench_dispatch [--statements 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import logging
import statistics
import time
import types
from collections.abc import Callable
from typing import Any

from mitmproxy import hooks, http
from mitmproxy.proxy.layers.http import (
    HttpRequestHeadersHook,
    HttpRequestHook,
    HttpResponseHeadersHook,
    HttpResponseHook,
)
from mitmproxy.test import taddons, tflow, tutils

from hoopgw.addons import gateway
from hoopgw.addons.dispatch import Gateway, Hidden, dispatched_hooks
from hoopgw.addons.failclosed import guarded

QUERY = b'{"sqlText": "select id, name from customers where id = 1", "sequenceId": 1}'
ANSWER = b'{"success": true, "data": {"queryId": "01b2", "rowset": [[1]], "total": 1}}'


def _stub(method: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(method):

        async def stub_async(subject: Any) -> None:
            return None

        return stub_async

    def stub(subject: Any) -> None:
        return None

    return stub


def _concerns(stubbed: bool) -> list[Any]:
    """A fresh set of addons/gateway.py's concerns, their hooks as mitmproxy would find them."""
    concerns = importlib.reload(gateway).concerns
    for concern in concerns:
        for hook in dispatched_hooks():
            if isinstance(vars(concern).get(hook), Hidden):
                delattr(concern, hook)  # the module's own `Gateway` hid it
            method = getattr(concern, hook, None)
            if stubbed and callable(method):
                setattr(concern, hook, _stub(method))
    return concerns


def _script(layout: str, stubbed: bool) -> types.ModuleType:
    """The gateway as mitmproxy loads it: a module whose `addons` list it walks."""
    concerns = _concerns(stubbed)
    module = types.ModuleType("gateway")
    if layout == "per-addon":
        module.addons = [guarded(concern) for concern in concerns]  # type: ignore[attr-defined]
    else:
        dispatcher = Gateway(concerns)
        dispatcher.addons = ()  # what its first configure does, the concerns left unconfigured
        module.addons = [dispatcher]  # type: ignore[attr-defined]
    return module


def _flow() -> http.HTTPFlow:
    request = tutils.treq(
        host="127.0.0.1",
        port=8443,
        method=b"POST",
        path=b"/queries/v1/query-request?requestId=0b7a",
        headers=http.Headers(
            [(b"content-type", b"application/json"), (b"authorization", b'Snowflake Token="x"')]
        ),
        content=QUERY,
    )
    return tflow.tflow(req=request)


async def _statement(master: Any, flow: http.HTTPFlow) -> None:
    await master.addons.handle_lifecycle(HttpRequestHeadersHook(flow))
    await master.addons.handle_lifecycle(HttpRequestHook(flow))
    if flow.response is None:
        flow.response = http.Response.make(200, ANSWER, {"content-type": "application/json"})
    await master.addons.handle_lifecycle(HttpResponseHeadersHook(flow))
    await master.addons.handle_lifecycle(HttpResponseHook(flow))


async def _measure(layout: str, stubbed: bool, statements: int) -> float:
    """CPU time per statement of this process (the machine may be shared), flows made beforehand."""
    with taddons.context(loadcore=False) as tctx:
        if layout != "none":
            tctx.master.addons.add(_script(layout, stubbed))
        for flow in [_flow() for _ in range(200)]:
            await _statement(tctx.master, flow)
        flows = [_flow() for _ in range(statements)]
        start = time.process_time()
        for flow in flows:
            await _statement(tctx.master, flow)
        elapsed = time.process_time() - start
        del flows
        tctx.master.should_exit.set()  # FailClosed ends a process whose addons unload
        tctx.master.addons.trigger(hooks.DoneHook())
    return elapsed / statements * 1e6


async def _rounds(kinds: tuple[str, ...], rounds: int, statements: int) -> dict[Any, list[float]]:
    results: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):
        for kind in kinds:
            for layout in ("none", "per-addon", "dispatched"):
                cost = await _measure(layout, kind == "stub", statements)
                results.setdefault((kind, layout), []).append(cost)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--statements", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--hooks", choices=("stub", "real", "both"), default="both")
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # a refused statement logs; the bench measures calls
    kinds = ("stub", "real") if args.hooks == "both" else (args.hooks,)
    results = asyncio.run(_rounds(kinds, args.rounds, args.statements))
    print("| hooks | layout | us per statement (median) | min | max |")
    print("| --- | --- | ---: | ---: | ---: |")
    for (kind, layout), costs in results.items():
        print(
            f"| {kind} | {layout} | {statistics.median(costs):.1f} "
            f"| {min(costs):.1f} | {max(costs):.1f} |"
        )


if __name__ == "__main__":
    main()
