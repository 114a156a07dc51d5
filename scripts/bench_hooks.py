"""The gateway's hook path for one statement, in process: event-loop CPU per statement.

The real addon list of addons/gateway.py runs in `mitmproxy.test.taddons` with
the options `scripts/bench_saturation.py` gives the gateway (OIDC, sealed
tokens, guardrails with its policy, recording with fsync into a local spool
and a `file:` store). One login goes through the whole chain, so the session
token the statements carry is one the gateway minted. Then each statement is a
query-request shaped like wrk's in the saturation bench (unique requestId,
varying SQL, all on one client connection as at 1 connection), answered with
the canned upstream's 3-row JSON answer or, one in `--arrow-every`, its
1,000-row Arrow answer, and driven through `master.addons.handle_lifecycle`
for requestheaders, request, responseheaders and response, then one loop turn
(the answer's records are built there).

Printed: CPU time of the event loop's thread per statement
(`time.thread_time`: the loop commits the lone statement's record itself, so
the WAL write and fsync's CPU is in it, the wait for the disk is not) and wall
time, p50 and mean; with `--by-addon`, the same CPU split by addon and hook
(the wrappers that measure it add their own small cost).

    .venv/bin/python -m scripts.bench_hooks                 # 3 rounds of 2,000 statements
    .venv/bin/python -m scripts.bench_hooks --by-addon      # where each statement's CPU goes

Not a test and not part of CI; the figures are for before/after comparisons
on one machine, in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import inspect
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from mitmproxy import connection, hooks, http
from mitmproxy.proxy.layers import http as http_hooks
from mitmproxy.test import taddons, tflow, tutils

from hoopgw.recorder.secrets import new_token_key
from scripts import bench, bench_saturation
from tests.bodies import login_body
from tests.jwt_issuer import LocalIssuer

TOKEN_KEY_ENV = "HOOPGW_BENCH_HOOKS_TOKEN_KEY"
PASSWORD_ENV = "HOOPGW_BENCH_HOOKS_PASSWORD"
FLOW_HOOKS = ("requestheaders", "request", "responseheaders", "response")
CLIENT = ("127.0.0.1", 40000)


def gateway_options(home: Path, issuer: str) -> dict[str, Any]:
    """What scripts/bench.py gives the gateway, with a local store instead of moto S3."""
    (home / "policy.toml").write_text(bench_saturation.POLICY)
    return {
        "hoopgw_store": f"file:{home / 'store'}",
        "hoopgw_spool_dir": str(home / "spool"),
        **bench.identity_options(issuer, TOKEN_KEY_ENV, PASSWORD_ENV),
        "hoopgw_policy": str(home / "policy.toml"),
    }


def client_flow(
    path: str,
    body: bytes,
    headers: list[tuple[bytes, bytes]],
    client: connection.Client | None = None,
) -> http.HTTPFlow:
    """A request as wrk sends it to the gateway in the saturation bench, on `client`'s
    connection if given (a new connection otherwise)."""
    request = tutils.treq(
        host="127.0.0.1",
        port=8443,
        method=b"POST",
        path=path.encode(),
        headers=http.Headers(
            [
                (b"host", b"127.0.0.1:8443"),
                (b"content-type", b"application/json"),
                (b"accept", b"application/snowflake"),
                (b"user-agent", b"PythonConnector/4.8.1 (hoopgw saturation bench)"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ]
        ),
        content=body,
    )
    flow = tflow.tflow(req=request, live=True)
    if client is not None:
        flow.client_conn = client
    flow.client_conn.peername = CLIENT
    return flow


def upstream_answer(body: str) -> http.Response:
    """The canned upstream's answer, with the headers nginx sends."""
    data = body.encode()
    return http.Response.make(
        200,
        data,
        {
            "server": "nginx",
            "date": "Mon, 07 Dec 2026 00:00:00 GMT",
            "content-type": "application/json",
            "content-length": str(len(data)),
            "connection": "keep-alive",
        },
    )


async def through_the_chain(master: Any, flow: http.HTTPFlow, answer: str | None) -> None:
    """The hooks mitmproxy runs for one flow, and the loop turn that records its answer."""
    addons = master.addons
    await addons.handle_lifecycle(http_hooks.HttpRequestHeadersHook(flow))
    await addons.handle_lifecycle(http_hooks.HttpRequestHook(flow))
    if flow.response is None and answer is not None:
        flow.response = upstream_answer(answer)
        await addons.handle_lifecycle(http_hooks.HttpResponseHeadersHook(flow))
    await addons.handle_lifecycle(http_hooks.HttpResponseHook(flow))
    await asyncio.sleep(0)


async def log_in(master: Any, issuer: LocalIssuer) -> str:
    """One login through the whole chain; the sealed session token the gateway minted."""
    answers = bench_saturation.canned_answers()
    body = orjson.dumps(login_body(issuer.mint("bench")))
    flow = client_flow("/session/v1/login-request?request_id=1", body, [])
    await through_the_chain(master, flow, answers.login)
    assert flow.response is not None
    answer = orjson.loads(flow.response.content or b"{}")
    if not answer.get("success"):
        raise SystemExit(f"the bench's login was refused: {answer.get('message')}")
    return str(answer["data"]["token"])


class Statements:
    """Query-requests as the saturation bench's wrk script makes them, with their answers.

    All on one client connection, as wrk's at 1 connection: the gateway sees one
    statement in flight on one keep-alive connection (and so commits its record on
    the loop, `LoneStatement`), not a new connection per statement.
    """

    def __init__(self, token: str, arrow_every: int) -> None:
        answers = bench_saturation.canned_answers()
        self.json_answer = answers.json_query
        self.arrow_answer = answers.arrow_query.replace(
            bench_saturation.ROWSET_SLOT, answers.rowset_base64
        )
        self.header = (b"authorization", f'Snowflake Token="{token}"'.encode())
        self.arrow_every = arrow_every
        self.counter = 0
        self.client = tflow.tclient_conn()

    def next(self) -> tuple[http.HTTPFlow, str]:
        self.counter += 1
        counter = self.counter
        request_id = f"bench000-{counter >> 16:04x}-4000-8000-{counter:012x}"
        path = f"/queries/v1/query-request?requestId={request_id}"
        arrow = self.arrow_every > 0 and counter % self.arrow_every == 0
        if arrow:
            sql = bench_saturation.ARROW_STATEMENT % counter
            path += "&result=arrow"
        else:
            statements = bench_saturation.STATEMENTS
            sql = statements[counter % len(statements)] % counter
        body = orjson.dumps(
            {
                "sqlText": sql,
                "asyncExec": False,
                "sequenceId": counter,
                "querySubmissionTime": int(time.time() * 1000),
                "isInternal": False,
            }
        )
        query_id = f"01{os.urandom(3).hex()}-0000-{counter >> 16:04x}-0000-{counter:012x}"
        template = self.arrow_answer if arrow else self.json_answer
        answer = template.replace(bench_saturation.QUERY_ID_SLOT, query_id)
        return client_flow(path, body, [self.header], self.client), answer


class AddonClock:
    """CPU per addon and hook, by wrapping each gateway addon's flow hooks."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = defaultdict(float)
        self.per_statement: dict[str, list[float]] = defaultdict(list)

    def statement_done(self) -> None:
        """File this statement's CPU per hook; the table gives each hook's median."""
        for name, spent in self.cpu.items():
            self.per_statement[name].append(spent)
        self.cpu.clear()

    def wrap(self, addons: list[Any]) -> None:
        for addon in addons:
            wrap_hooks = getattr(addon, "wrap_hooks", None)
            if callable(wrap_hooks):
                # the one dispatcher (addons/dispatch.py) calls its concerns' hooks
                wrap_hooks(self._concern_hook)
                self._wrap_record_building(getattr(addon, "concerns", []))
                continue
            name = type(addon).__name__
            for hook in FLOW_HOOKS:
                method = getattr(addon, hook, None)
                if method is not None:
                    setattr(addon, hook, self._timed(f"{name}.{hook}", method))
            self._wrap_record_building([addon])

    def _concern_hook(
        self, concern: str, hook: str, method: Callable[..., Any]
    ) -> Callable[..., Any]:
        return self._timed(f"{concern}.{hook}", method) if hook in FLOW_HOOKS else method

    def _wrap_record_building(self, addons: list[Any]) -> None:
        """The answers' records are built in a loop callback, after the hooks."""
        for addon in addons:
            build = getattr(addon, "_record_answers", None)
            if build is not None:
                addon._record_answers = self._timed(
                    f"{type(addon).__name__}._record_answers", build
                )

    def _timed(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        cpu = self.cpu
        clock = time.thread_time

        if inspect.iscoroutinefunction(method):

            async def timed_async(*args: Any) -> None:
                start = clock()
                coroutine = method(*args)
                try:
                    # the awaited parts (the fsync wait) run while this thread idles
                    await coroutine
                finally:
                    cpu[name] += clock() - start

            return timed_async

        def timed(*args: Any) -> Any:
            start = clock()
            try:
                return method(*args)
            finally:
                cpu[name] += clock() - start

        return timed


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


async def run(args: argparse.Namespace) -> None:
    from hoopgw.addons import gateway  # builds the addon list, as mitmdump -s does

    issuer = LocalIssuer().start()
    os.environ[TOKEN_KEY_ENV] = new_token_key()
    os.environ[PASSWORD_ENV] = "canned-upstream-ignores-it"
    clock = AddonClock() if args.by_addon else None
    try:
        with (
            tempfile.TemporaryDirectory(prefix="hoopgw-bench-hooks-") as tmp,
            taddons.context(*gateway.addons) as tctx,
        ):
            home = Path(tmp)
            tctx.options.update(**gateway_options(home, issuer.issuer))
            await tctx.master.addons.trigger_event(hooks.RunningHook())
            if clock is not None:
                clock.wrap(gateway.addons)
            statements = Statements(await log_in(tctx.master, issuer), args.arrow_every)
            for _ in range(args.warmup):
                flow, answer = statements.next()
                await through_the_chain(tctx.master, flow, answer)
            print(
                f"{args.statements} statements per round, {args.rounds} rounds, "
                f"one in {args.arrow_every} answered with 1,000 Arrow rows"
            )
            print(f"{'round':>5} {'cpu p50 us':>11} {'cpu mean us':>12} {'wall p50 us':>12}")
            means, medians = [], []
            if clock is not None:
                clock.cpu.clear()  # the warm-up's
            for number in range(1, args.rounds + 1):
                cpu, wall = [], []
                for _ in range(args.statements):
                    flow, answer = statements.next()
                    start_cpu, start_wall = time.thread_time(), time.perf_counter()
                    await through_the_chain(tctx.master, flow, answer)
                    cpu.append(time.thread_time() - start_cpu)
                    wall.append(time.perf_counter() - start_wall)
                    if clock is not None:
                        clock.statement_done()
                    state = flow.response
                    if (
                        state is None
                        or state.status_code != 200
                        or b'"success":true' not in (state.content or b"")
                    ):
                        raise SystemExit(f"statement {statements.counter} was not answered")
                means.append(statistics.fmean(cpu))
                medians.append(_percentile(cpu, 0.5))
                print(
                    f"{number:>5} {_percentile(cpu, 0.5) * 1e6:>11.0f} "
                    f"{statistics.fmean(cpu) * 1e6:>12.0f} {_percentile(wall, 0.5) * 1e6:>12.0f}"
                )
            print(f"best round's mean CPU per statement: {min(means) * 1e6:.0f} us")
            print(f"best round's median CPU per statement: {min(medians) * 1e6:.0f} us")
            if clock is not None:
                print(f"\n{'addon.hook (every round)':<44} {'median us':>10} {'mean us':>8}")
                table = sorted(clock.per_statement.items(), key=lambda item: -sum(item[1]))
                for name, spent in table:
                    median = _percentile(spent, 0.5) * 1e6
                    print(f"{name:<44} {median:>10.1f} {statistics.fmean(spent) * 1e6:>8.1f}")
            tctx.master.should_exit.set()  # a shutdown, not an unload (FailClosed.done)
            await tctx.master.addons.trigger_event(hooks.DoneHook())
    finally:
        issuer.stop()
        gc.unfreeze()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--statements", type=int, default=2000, help="per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument(
        "--arrow-every", type=int, default=10, help="one statement in N gets the Arrow answer"
    )
    parser.add_argument("--by-addon", action="store_true", help="CPU split by addon and hook")
    args = parser.parse_args(argv)
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
