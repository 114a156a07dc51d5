"""ClientDeadlines and RequireTls in process: option parsing and the decision per flow."""

from __future__ import annotations

import logging

import orjson
import pytest
from mitmproxy import exceptions, http
from mitmproxy.test import taddons, tflow

from hoopgw.addons import protocol
from hoopgw.addons.flowstate import FlowState, attach, state_of
from hoopgw.addons.names import TRANSPORT
from hoopgw.addons.transport import (
    PLAIN_HTTP_MESSAGE,
    ClientDeadlines,
    PartialHeadWithheld,
    RequireTls,
    _ClientConnection,
    _framing,
)

LOGIN = b"/session/v1/login-request"


def snowflake_flow(path: bytes = LOGIN, *, tls: bool, body: bytes = b'{"data": {}}'):
    flow = tflow.tflow(req=tflow.treq(method=b"POST", path=path, content=body))
    if not tls:
        flow.client_conn.timestamp_tls_setup = None
    attach(flow, FlowState(endpoint=protocol.classify(flow.request.path)))
    return flow


@pytest.mark.parametrize(
    ("value", "certs", "required"),
    [
        ("auto", [], False),
        ("auto", ["*=/etc/hoopgw/server.pem"], True),
        ("on", [], True),
        ("off", ["*=/etc/hoopgw/server.pem"], False),
    ],
)
def test_require_tls_follows_the_option_and_certs(value, certs, required) -> None:
    addon = RequireTls()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, hoopgw_require_tls=value, certs=certs)
        assert addon.required is required


def test_require_tls_rejects_other_values_in_one_line() -> None:
    addon = RequireTls()
    with taddons.context(addon) as tctx, pytest.raises(exceptions.OptionsError) as failure:
        tctx.configure(addon, hoopgw_require_tls="yes")
    assert str(failure.value) == "hoopgw_require_tls must be one of auto, on, off, got 'yes'"


@pytest.mark.parametrize(
    ("path", "shape"),
    [
        (LOGIN, "login"),
        (b"/queries/v1/query-request?requestId=1", "query"),
        (b"/api/v2/statements", "sql_api"),
        (b"/not/a/snowflake/path", "session"),
    ],
)
def test_plain_http_is_refused_in_the_endpoint_shape_and_its_body_dropped(path, shape) -> None:
    addon = RequireTls()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, hoopgw_require_tls="on")
        flow = snowflake_flow(path, tls=False, body=b'{"data": {"TOKEN": "clear-id-token"}}')
        state = state_of(flow)
        assert state is not None
        addon.requestheaders(flow)
        state.request_body = flow.request.raw_content  # what SnowflakeTraffic keeps
        addon.request(flow)
    assert flow.response is not None and state.refusal is not None
    assert state.refusal.code == protocol.CODE_GATEWAY_PROTOCOL
    assert state.refusal.source == TRANSPORT
    answer = orjson.loads(flow.response.content or b"")
    assert answer["code"] == str(protocol.CODE_GATEWAY_PROTOCOL)
    assert answer["message"] == PLAIN_HTTP_MESSAGE
    assert flow.response.status_code == (403 if shape == "sql_api" else 200)
    if shape != "sql_api":
        assert answer["success"] is False
    assert state.request_body == b"" and flow.request.raw_content == b""
    assert TRANSPORT in state.passed


def test_tls_requests_pass_untouched_with_the_mark() -> None:
    addon = RequireTls()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, hoopgw_require_tls="on")
        flow = snowflake_flow(tls=True)
        addon.requestheaders(flow)
        addon.request(flow)
    state = state_of(flow)
    assert flow.response is None and state is not None and not state.answered
    assert flow.request.raw_content == b'{"data": {}}'
    assert TRANSPORT in state.passed


def test_plain_http_passes_when_tls_is_not_required() -> None:
    addon = RequireTls()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, hoopgw_require_tls="auto")
        flow = snowflake_flow(tls=False)
        addon.requestheaders(flow)
        addon.request(flow)
    assert flow.response is None


@pytest.mark.parametrize(
    "option",
    ["hoopgw_header_timeout", "hoopgw_idle_timeout", "hoopgw_min_body_rate"],
)
def test_deadline_options_must_be_positive(option) -> None:
    addon = ClientDeadlines()
    message = f"^{option} must be at least 1, got 0$"
    with taddons.context(addon) as tctx, pytest.raises(exceptions.OptionsError, match=message):
        tctx.configure(addon, **{option: 0})


def test_the_connection_cap_cannot_be_negative() -> None:
    addon = ClientDeadlines()
    with (
        taddons.context(addon) as tctx,
        pytest.raises(exceptions.OptionsError, match="hoopgw_max_client_connections"),
    ):
        tctx.configure(addon, hoopgw_max_client_connections=-1)


def test_each_phase_has_its_deadline_and_a_request_in_flight_has_none() -> None:
    addon = ClientDeadlines()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, hoopgw_header_timeout=10, hoopgw_idle_timeout=60)
        tctx.configure(addon, hoopgw_min_body_rate=1000)
        flow = snowflake_flow(tls=True, body=b"x" * 5000)
        flow.request.headers["content-length"] = "5000"
        addon.client_connected(flow.client_conn)
        tracked = addon.connections[flow.client_conn.id]
        first = addon.deadline(tracked, tracked.opened)
        assert first is not None and first.kind == "headers"
        assert first.when == tracked.opened + 10

        addon.requestheaders(flow)
        receiving = addon.deadline(tracked, 0)
        assert receiving is not None and receiving.kind == "body"
        assert receiving.when - tracked.opened == pytest.approx(10 + 5, abs=1)

        addon.request(flow)
        assert addon.deadline(tracked, 0) is None  # waiting for Snowflake: never cut

        addon.response(flow)
        idle = addon.deadline(tracked, 1000.0)
        assert idle is not None and idle.kind == "idle" and idle.when == 1060.0

        addon.client_disconnected(flow.client_conn)
    assert addon.connections == {} and not addon.per_address


def _timer_in_time(addon: ClientDeadlines, tracked: _ClientConnection) -> bool:
    """The guarantee: whenever the client owes something, a timer fires by its deadline."""
    deadline = addon.deadline(tracked, tracked.idle_since)
    if deadline is None:
        return True
    return tracked.timer is not None and tracked.timer_due <= deadline.when


async def test_a_timer_fires_by_every_deadline_and_survives_a_run_of_requests() -> None:
    addon = ClientDeadlines()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, hoopgw_header_timeout=10, hoopgw_idle_timeout=60)
        tctx.configure(addon, hoopgw_min_body_rate=1000)
        client = tflow.tclient_conn()
        addon.client_connected(client)
        tracked = addon.connections[client.id]
        timer = tracked.timer
        assert timer is not None and _timer_in_time(addon, tracked)
        for _ in range(3):
            flow = snowflake_flow(tls=True)
            flow.client_conn = client
            flow.request.headers["content-length"] = "12"
            for hook in (addon.requestheaders, addon.request, addon.response):
                hook(flow)
                assert _timer_in_time(addon, tracked), hook
        assert tracked.timer is timer, "the deadlines only moved later: one timer throughout"

        # a 10 MB body at 1000 bytes/s gets hours; the idle deadline after it comes sooner
        large = snowflake_flow(tls=True)
        large.client_conn = client
        large.request.headers["content-length"] = str(10_000_000)
        addon.requestheaders(large)
        timer.cancel()
        addon._due(tracked)  # the earlier timer fires while the body arrives
        assert tracked.timer_due == tracked.receiving[large.id] and _timer_in_time(addon, tracked)
        addon.request(large)
        addon.response(large)
        assert tracked.timer_due == tracked.idle_since + 60 and _timer_in_time(addon, tracked)

        # the next request's body is due sooner than the idle deadline was
        small = snowflake_flow(tls=True)
        small.client_conn = client
        small.request.headers["content-length"] = "12"
        addon.requestheaders(small)
        assert tracked.timer_due == tracked.receiving[small.id] and _timer_in_time(addon, tracked)
        addon.client_disconnected(client)
    assert tracked.timer is not None and tracked.timer.cancelled()


async def test_a_timer_that_fires_early_waits_for_the_deadline_and_none_in_flight() -> None:
    addon = ClientDeadlines()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, hoopgw_header_timeout=10, hoopgw_idle_timeout=60)
        flow = snowflake_flow(tls=True)
        addon.client_connected(flow.client_conn)
        tracked = addon.connections[flow.client_conn.id]
        addon.requestheaders(flow)
        addon.request(flow)
        addon._due(tracked)  # the header timer, while Snowflake answers: no deadline
        assert tracked.timer is None and not addon.closed

        addon.response(flow)
        assert tracked.timer is not None
        tracked.timer.cancel()
        addon._due(tracked)  # early: 60 s of idleness are not over
        assert tracked.timer is not None and not addon.closed
        assert tracked.timer_due == tracked.idle_since + 60

        tracked.timer.cancel()
        tracked.idle_since -= 61
        addon._due(tracked)  # late: closed (this test's flow has no socket to close)
        assert tracked.timer is None
        addon.client_disconnected(flow.client_conn)


def test_connections_over_the_cap_are_refused_and_counted() -> None:
    addon = ClientDeadlines()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, hoopgw_max_client_connections=2)
        clients = [tflow.tclient_conn() for _ in range(3)]
        for client in clients:
            client.peername = ("192.0.2.7", 40000)
            addon.client_connected(client)
    assert [client.error for client in clients[:2]] == [None, None]
    assert clients[2].error == "more than 2 connections from 192.0.2.7"
    assert addon.closed["limit"] == 1
    assert isinstance(addon.connections[clients[0].id], _ClientConnection)


def test_an_unfinished_request_head_stays_out_of_the_log() -> None:
    record = logging.LogRecord(
        "mitmproxy.proxy.server",
        logging.INFO,
        __file__,
        1,
        "Client closed connection before completing request headers: "
        "b'POST / HTTP/1.1\\r\\nAuthorization: Snowflake Token=\"secret\"'",
        None,
        None,
    )
    assert PartialHeadWithheld().filter(record)
    assert "secret" not in record.getMessage()
    assert "not logged" in record.getMessage()


def test_flows_without_state_are_left_to_failclosed() -> None:
    """No state means SnowflakeTraffic never saw the flow; FailClosed refuses it for that."""
    addon = RequireTls()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, hoopgw_require_tls="on")
        flow = tflow.tflow()
        flow.client_conn.timestamp_tls_setup = None
        addon.requestheaders(flow)
        addon.request(flow)
    assert flow.response is None


@pytest.mark.parametrize(
    "fields",
    [
        [],
        [(b"Content-Length", b"5000")],
        [(b"content-length", b" 12 ")],
        [(b"CONTENT-LENGTH", b"5"), (b"content-length", b"5")],
        [(b"Transfer-Encoding", b"chunked")],
        [(b"content-length", b"x1"), (b"transfer-encoding", b"chunked")],
        [(b"content-length", "\u0663".encode())],  # a digit in another script
        [(b"content-length", b"\xff")],
        [(b"host", b"example"), (b"x-content-length", b"9")],
    ],
)
def test_framing_reads_the_headers_as_mitmproxy_s_lookups_do(fields) -> None:
    headers = http.Headers(fields)
    assert _framing(headers) == (
        headers.get("content-length", "").strip(),
        "transfer-encoding" in headers,
    )
