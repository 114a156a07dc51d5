"""Gateway: mitmproxy calls one addon, which calls the concerns' flow hooks in order.

Driven through mitmproxy's own `handle_lifecycle`, as its proxy server calls
it, so that a concern mitmproxy still reached by itself would be seen twice.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from mitmproxy import connection, http
from mitmproxy.addonmanager import traverse
from mitmproxy.addons.clientplayback import ClientPlayback
from mitmproxy.hooks import DoneHook, RunningHook
from mitmproxy.proxy.layers.http import (
    HttpRequestHeadersHook,
    HttpRequestHook,
    HttpResponseHook,
)
from mitmproxy.proxy.server_hooks import ClientConnectedHook
from mitmproxy.test import taddons, tflow

from hoopgw.addons import gateway, names, protocol
from hoopgw.addons.dispatch import Gateway, walk
from hoopgw.addons.failclosed import FailClosed
from hoopgw.addons.flowstate import state_of
from hoopgw.addons.inspection import Inspection, OfflineViewer
from hoopgw.addons.traffic import SnowflakeTraffic
from hoopgw.addons.transport import RequireTls
from tests.addons import QUERY_PATH, answer_json, classified, error_of, snowflake_flow
from tests.bodies import query_body

INTERNAL = str(protocol.CODE_GATEWAY_INTERNAL)
FLOW_HOOKS = ("requestheaders", "request", "responseheaders", "response", "error")


class Tally:
    """Stands in for any concern: notes each call of its hooks, and what it found."""

    def __init__(self, name: str, calls: list[tuple[str, str, Any]]) -> None:
        self.name = name
        self.calls = calls

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self.calls.append((self.name, "requestheaders", None))

    def request(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        self.calls.append((self.name, "request", state and state.request_json))

    def response(self, flow: http.HTTPFlow) -> None:
        self.calls.append((self.name, "response", None))

    def client_connected(self, client: connection.Client) -> None:
        self.calls.append((self.name, "client_connected", None))


class SlowTally(Tally):
    """A concern whose request hook is `async def` and waits on the loop before it notes."""

    async def request(self, flow: http.HTTPFlow) -> None:
        await asyncio.sleep(0)
        super().request(flow)


class Crashing:
    """Stands in for any concern whose hooks have a bug, raised where `how` says."""

    def __init__(self, how: str) -> None:
        self.how = how

    def request(self, flow: http.HTTPFlow) -> Any:
        return self._crash("request")

    def response(self, flow: http.HTTPFlow) -> Any:
        return self._crash("response")

    def client_connected(self, client: connection.Client) -> None:
        raise RuntimeError("bug in a connection hook")

    def _crash(self, hook: str) -> Any:
        if self.how == "at once":
            raise RuntimeError(f"bug in a {hook} hook")

        async def later() -> None:
            await asyncio.sleep(0)
            raise RuntimeError(f"bug in a {hook} hook, off the loop")

        return later()


def tls_query(sql: str = "select 1") -> http.HTTPFlow:
    """A query over TLS (`tflow`'s client connection has TLS set up)."""
    flow = snowflake_flow("POST", QUERY_PATH, query_body(sql))
    assert flow.client_conn.tls_established
    return flow


async def request_hooks(master: Any, flow: http.HTTPFlow) -> None:
    await master.addons.handle_lifecycle(HttpRequestHeadersHook(flow))
    await master.addons.handle_lifecycle(HttpRequestHook(flow))


def test_each_hook_calls_the_concerns_in_the_gateways_order() -> None:
    (dispatcher,) = gateway.addons
    concerns = gateway.concerns
    assert dispatcher.addons == concerns
    for hook in (*FLOW_HOOKS, "client_connected", "client_disconnected"):
        defined = [type(c).__name__ for c in concerns if callable(getattr(type(c), hook, None))]
        assert [name for name, _ in dispatcher.links(hook)] == defined, hook
        assert all(not getattr(c, hook, None) for c in concerns), f"{hook} still visible"
    assert [name for name, _ in dispatcher.links("request")][:3] == [
        "ClientDeadlines",
        "SnowflakeTraffic",
        "RequireTls",
    ]
    assert dispatcher.links("request")[-1][0] == "FailClosed"
    for hook in ("configure", "running", "done"):
        assert any(getattr(c, hook, None) for c in concerns), hook


async def test_mitmproxy_reaches_each_concern_once_in_order_and_still_configures_it() -> None:
    calls: list[tuple[str, str, Any]] = []
    require_tls = RequireTls()
    dispatcher = Gateway(
        [
            SnowflakeTraffic(),
            Tally("first", calls),
            require_tls,
            SlowTally("second", calls),
            FailClosed(required=(names.TRANSPORT,)),
        ]
    )
    with taddons.context(dispatcher) as tctx:
        tctx.configure(require_tls, hoopgw_require_tls="on")
        assert require_tls.required, "configure reaches a concern"
        assert tctx.master.addons.get("requiretls") is require_tls
        flow = tls_query()
        await request_hooks(tctx.master, flow)
    assert [(name, hook) for name, hook, _ in calls] == [
        ("first", "requestheaders"),
        ("second", "requestheaders"),
        ("first", "request"),
        ("second", "request"),
    ]
    assert flow.response is None, "FailClosed ran last and found every mark"


async def test_work_a_hook_hands_off_the_loop_is_awaited_before_the_next_concern() -> None:
    """SnowflakeTraffic parses a body over 64 KiB on a worker thread, in the coroutine it gives."""
    calls: list[tuple[str, str, Any]] = []
    dispatcher = Gateway([SnowflakeTraffic(), Tally("next", calls)])
    with taddons.context(dispatcher) as tctx:
        flow = tls_query("select '" + "x" * 70_000 + "'")
        await request_hooks(tctx.master, flow)
    parsed = [found for _, hook, found in calls if hook == "request"]
    assert len(parsed) == 1 and parsed[0] is not None
    assert parsed[0]["sqlText"].startswith("select 'xxx")


@pytest.mark.parametrize("how", ["at once", "off the loop"])
async def test_a_crash_in_a_request_hook_refuses_the_flow_and_the_rest_still_run(how: str) -> None:
    calls: list[tuple[str, str, Any]] = []
    inspection = Inspection()
    dispatcher = Gateway([SnowflakeTraffic(), Crashing(how), Tally("after", calls), inspection])
    with taddons.context(dispatcher) as tctx:
        flow = tls_query()
        await request_hooks(tctx.master, flow)
    assert error_of(flow)["code"] == INTERNAL
    state = state_of(flow)
    assert state is not None and state.refusal is not None
    assert state.refusal.reason == "internal error in Crashing"
    assert ("after", "request") in [(name, hook) for name, hook, _ in calls]
    assert flow.comment, "Inspection, after the crash, still annotated the refusal"


@pytest.mark.parametrize("how", ["at once", "off the loop"])
async def test_a_crash_in_a_response_hook_replaces_the_answer(how: str) -> None:
    calls: list[tuple[str, str, Any]] = []
    dispatcher = Gateway([SnowflakeTraffic(), Crashing(how), Tally("after", calls)])
    with taddons.context(dispatcher) as tctx:
        flow = tls_query()
        await request_hooks(tctx.master, flow)
        flow.response = answer_json({"success": True, "data": {"secret": "upstream-only"}})
        await tctx.master.addons.handle_lifecycle(HttpResponseHook(flow))
    assert error_of(flow)["code"] == INTERNAL
    assert b"upstream-only" not in (flow.response.content or b"")
    assert ("after", "response") in [(name, hook) for name, hook, _ in calls]


async def test_a_crash_in_a_connection_hook_reaches_mitmproxy_as_before() -> None:
    """Only flow hooks are guarded; mitmproxy logs the rest and calls no further concern."""
    calls: list[tuple[str, str, Any]] = []
    dispatcher = Gateway([Crashing("at once"), Tally("after", calls)])
    client = tflow.tclient_conn()
    with pytest.raises(RuntimeError, match="connection hook"):
        dispatcher.client_connected(client)
    with taddons.context(dispatcher) as tctx:
        await tctx.master.addons.handle_lifecycle(ClientConnectedHook(client))
    assert calls == []


async def test_a_concern_calling_its_own_hidden_hook_still_reaches_it() -> None:
    """RequireTls.request calls self.requestheaders, which mitmproxy must not see."""
    require_tls = RequireTls()
    dispatcher = Gateway([require_tls])
    assert not require_tls.requestheaders and callable(require_tls.requestheaders)
    with taddons.context(dispatcher) as tctx:
        tctx.configure(require_tls, hoopgw_require_tls="on")
        flow = snowflake_flow("POST", QUERY_PATH, query_body("select 1"))
        flow.client_conn.timestamp_tls_setup = None
        state = classified(flow)
        await tctx.master.addons.handle_lifecycle(HttpRequestHook(flow))
    assert state.refusal is not None
    assert state.refusal.code == protocol.CODE_GATEWAY_PROTOCOL, "not a crash on a hidden hook"


async def test_wrapped_hooks_are_called_in_place_of_the_concerns() -> None:
    calls: list[tuple[str, str, Any]] = []
    wrapped: list[tuple[str, str]] = []
    dispatcher = Gateway([Tally("only", calls)])

    def wrapper(concern: str, hook: str, method: Any) -> Any:
        def noted(subject: Any) -> Any:
            wrapped.append((concern, hook))
            return method(subject)

        return noted

    dispatcher.wrap_hooks(wrapper)
    with taddons.context(dispatcher) as tctx:
        await request_hooks(tctx.master, tls_query())
    assert wrapped == [("Tally", "requestheaders"), ("Tally", "request")]
    assert len(calls) == 2


def test_a_concerns_commands_and_name_reach_mitmproxy_through_the_gateway() -> None:
    """The viewer's `replay.client` (addons/inspection.py) wins over mitmproxy's as before."""
    flow = snowflake_flow("POST", QUERY_PATH, query_body("select 1"))
    flow.response = http.Response.make(200, b'{"success": true}')
    viewer = OfflineViewer()
    with taddons.context(ClientPlayback(), Gateway([viewer])) as tctx:
        assert tctx.master.addons.get("offlineviewer") is viewer
        tctx.options.server = False
        tctx.master.commands.call("replay.client", [flow])
    assert flow.is_replay is None and not flow.modified()


class Holder:
    """A concern with sub-addons of its own, which mitmproxy walks right after it."""

    def __init__(self, *addons: Any) -> None:
        self.addons = list(addons)


async def test_a_concerns_own_sub_addons_keep_their_place_in_the_order() -> None:
    calls: list[tuple[str, str, Any]] = []
    dispatcher = Gateway([Tally("a", calls), Holder(Tally("b", calls)), Tally("c", calls)])
    with taddons.context(dispatcher) as tctx:
        await tctx.master.addons.handle_lifecycle(HttpRequestHook(tls_query()))
    assert [name for name, _, _ in calls] == ["a", "b", "c"]


class Lifecycle:
    """A concern that notes its start-up, option and shutdown hooks."""

    def __init__(self, name: str, calls: list[tuple[str, str, Any]]) -> None:
        self.name = name
        self.calls = calls

    def load(self, loader: Any) -> None:
        loader.add_option(f"lifecycle_{self.name}", bool, False, "a test option")

    def configure(self, updated: set[str]) -> None:
        self.calls.append((self.name, "configure", frozenset(updated)))

    def running(self) -> None:
        self.calls.append((self.name, "running", None))

    def done(self) -> None:
        self.calls.append((self.name, "done", None))


class AsyncStart(Lifecycle):
    async def running(self) -> None:
        await asyncio.sleep(0)
        self.calls.append((self.name, "running", None))


async def test_after_its_first_configure_mitmproxy_walks_the_gateway_alone_and_it_forwards() -> (
    None
):
    """mitmproxy registers the concerns (options, names), then walks only `Gateway`, which
    calls each concern's configure, running and done once, in order, async ones awaited."""
    calls: list[tuple[str, str, Any]] = []
    first, second = Lifecycle("a", calls), AsyncStart("b", calls)
    dispatcher = Gateway([first, Holder(second)])
    assert list(traverse([dispatcher]))[1:] == [*dispatcher.concerns, second]
    with taddons.context(dispatcher) as tctx:
        assert tctx.master.addons.get("a") is first
        tctx.configure(dispatcher, lifecycle_a=True)
        assert list(traverse([dispatcher])) == [dispatcher]
        assert list(walk([dispatcher]))[1:] == [*dispatcher.concerns, second]
        tctx.options.update(lifecycle_b=True)
        await tctx.master.addons.trigger_event(RunningHook())
        tctx.master.addons.trigger(DoneHook())
    assert calls == [
        ("a", "configure", frozenset({"lifecycle_a"})),
        ("b", "configure", frozenset({"lifecycle_a"})),
        ("a", "configure", frozenset({"lifecycle_b"})),
        ("b", "configure", frozenset({"lifecycle_b"})),
        ("a", "running", None),
        ("b", "running", None),
        ("a", "done", None),
        ("b", "done", None),
    ]


def test_a_concern_with_an_async_done_is_refused() -> None:
    """mitmproxy calls `done` from sync code when it unloads a script: it could not await."""

    class AsyncDone:
        async def done(self) -> None: ...

    with pytest.raises(TypeError, match="done must not be a coroutine"):
        Gateway([AsyncDone()])
