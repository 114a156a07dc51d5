"""SnowflakeTraffic: classify, bound and parse each request once, or refuse it."""

from __future__ import annotations

import gzip

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy import exceptions, http
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons

from hoopgw.addons import protocol
from hoopgw.addons.flowstate import state_of
from hoopgw.addons.protocol import Endpoint, StreamedAnswer
from hoopgw.addons.traffic import SnowflakeTraffic
from tests.addons import (
    LOGIN_PATH,
    QUERY_PATH,
    STATEMENTS_PATH,
    answer_json,
    error_of,
    snowflake_flow,
)
from tests.bodies import login_body

GATEWAY_PROTOCOL = str(protocol.CODE_GATEWAY_PROTOCOL)


def run_request(traffic: SnowflakeTraffic, flow: http.HTTPFlow) -> None:
    traffic.requestheaders(flow)
    traffic.request(flow)


def proxy_context(traffic: SnowflakeTraffic) -> taddons.context:
    """mitmproxy's proxy server declares the options the addon keeps safe."""
    return taddons.context(Proxyserver(), traffic)


def test_configure_bounds_bodies_and_keeps_mitmproxy_safe() -> None:
    traffic = SnowflakeTraffic()
    with proxy_context(traffic) as tctx:
        tctx.configure(traffic, hoopgw_request_limit=4096, hoopgw_response_limit=8192)
        assert (traffic.request_limit, traffic.response_limit) == (4096, 8192)
        assert tctx.options.body_size_limit == "8192"
        tctx.configure(traffic, connection_strategy="eager")
        assert tctx.options.connection_strategy == "lazy"


def test_configure_keeps_the_operators_body_size_limit() -> None:
    traffic = SnowflakeTraffic()
    with proxy_context(traffic) as tctx:
        tctx.configure(traffic, body_size_limit="1m")
        tctx.configure(traffic, hoopgw_request_limit=4096)
        assert tctx.options.body_size_limit == "1m"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"hoopgw_request_limit": 100}, "hoopgw_request_limit must be at least 1024"),
        ({"hoopgw_response_limit": 100}, "hoopgw_response_limit must be at least 1024"),
        ({"stream_large_bodies": "1m"}, "stream_large_bodies must stay unset"),
    ],
)
def test_configure_refuses_unsafe_options(options: dict, message: str) -> None:
    traffic = SnowflakeTraffic()
    with proxy_context(traffic) as tctx, pytest.raises(exceptions.OptionsError, match=message):
        tctx.configure(traffic, **options)


def test_login_is_parsed_once_and_names_the_client() -> None:
    flow = snowflake_flow(
        "POST",
        f"{LOGIN_PATH}?request_id=1",
        login_body("id-token"),
        [("cookie", "tracking=1"), ("proxy-authorization", "Basic eDp5")],
    )
    run_request(SnowflakeTraffic(), flow)
    state = state_of(flow)
    assert state is not None and not state.answered
    assert state.endpoint is Endpoint.LOGIN
    assert flow.request.stream is False
    assert state.request_json == login_body("id-token")
    assert (state.client_app, state.client_version) == ("PythonConnector", "4.8.1")
    assert "cookie" not in flow.request.headers
    assert "proxy-authorization" not in flow.request.headers


def test_a_call_without_login_data_is_named_by_its_user_agent() -> None:
    flow = snowflake_flow("POST", f"{QUERY_PATH}?requestId=1", {"sqlText": "select 1"})
    run_request(SnowflakeTraffic(), flow)
    state = state_of(flow)
    assert state is not None
    assert state.request_json == {"sqlText": "select 1"}
    assert state.client_app == "PythonConnector/4.8.1 (Linux) CPython/3.12"


def test_a_gzip_body_is_decoded_within_the_limit() -> None:
    flow = snowflake_flow("POST", QUERY_PATH, gzip.compress(b'{"sqlText": "select 2"}'))
    flow.request.headers["content-encoding"] = "gzip"
    run_request(SnowflakeTraffic(), flow)
    state = state_of(flow)
    assert state is not None and state.request_json == {"sqlText": "select 2"}


def test_flows_loaded_from_a_file_are_left_alone() -> None:
    flow = snowflake_flow("POST", QUERY_PATH, {"sqlText": "select 1"}, live=False)
    run_request(SnowflakeTraffic(), flow)
    assert state_of(flow) is None
    assert flow.response is None


def test_an_answered_flow_keeps_its_answer() -> None:
    traffic = SnowflakeTraffic()
    flow = snowflake_flow("GET", "/not-snowflake")
    run_request(traffic, flow)
    refusal = flow.response
    traffic.request(flow)
    assert flow.response is refusal


def test_unserved_path_is_refused_with_404() -> None:
    flow = snowflake_flow("POST", "/queries/v1/query-request;x", {"sqlText": "drop table t"})
    run_request(SnowflakeTraffic(), flow)
    state = state_of(flow)
    assert state is not None and state.endpoint is Endpoint.OTHER
    assert flow.response is not None and flow.response.status_code == 404
    assert error_of(flow)["code"] == GATEWAY_PROTOCOL
    assert "not a Snowflake endpoint" in error_of(flow)["message"]
    assert state.refusal is not None and state.refusal.source == "protocol"


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [("GET", QUERY_PATH, "POST"), ("DELETE", f"{STATEMENTS_PATH}/01b2c3d4", "GET")],
)
def test_wrong_method_is_refused_with_405(method: str, path: str, allowed: str) -> None:
    flow = snowflake_flow(method, path)
    run_request(SnowflakeTraffic(), flow)
    assert flow.response is not None and flow.response.status_code == 405
    assert flow.response.headers["Allow"] == allowed
    assert f"method {method} is not used on this endpoint" in error_of(flow)["message"]


def test_a_header_with_a_bare_cr_is_refused_and_escaped_for_the_record() -> None:
    flow = snowflake_flow("POST", QUERY_PATH, {"sqlText": "select 1"})
    flow.request.headers.fields = (*flow.request.headers.fields, (b"x-evil", b"a\rb"))
    run_request(SnowflakeTraffic(), flow)
    assert error_of(flow)["code"] == GATEWAY_PROTOCOL
    assert flow.request.headers["x-evil"] == "a\\x0db"


def test_an_absolute_form_target_is_refused() -> None:
    flow = snowflake_flow("POST", QUERY_PATH, {"sqlText": "select 1"})
    flow.request.authority = "evil.example.com:443"
    run_request(SnowflakeTraffic(), flow)
    assert "must be a path, not an absolute URL" in error_of(flow)["message"]


@pytest.mark.parametrize(
    ("body", "encoding", "reason"),
    [
        (b"[1, 2]", None, "not an object"),
        (b"{not json", None, "JSON"),
        (b"\x1f\x8b garbage", "gzip", "gzip"),
        (gzip.compress(b" " * 4096), "gzip", "limit"),
    ],
)
def test_malformed_bodies_are_refused(body: bytes, encoding: str | None, reason: str) -> None:
    traffic = SnowflakeTraffic()
    traffic.request_limit = 1024
    flow = snowflake_flow("POST", QUERY_PATH, body)
    if encoding:
        flow.request.headers["content-encoding"] = encoding
    run_request(traffic, flow)
    answer = error_of(flow)
    assert answer["code"] == GATEWAY_PROTOCOL
    assert answer["success"] is False
    assert reason.lower() in answer["message"].lower()


def test_response_is_parsed_for_endpoints_that_carry_outcomes() -> None:
    traffic = SnowflakeTraffic()
    flow = snowflake_flow("POST", QUERY_PATH, {"sqlText": "select 1"})
    run_request(traffic, flow)
    flow.response = answer_json({"success": True, "data": {"queryId": "01b2"}})
    traffic.response(flow)
    state = state_of(flow)
    assert state is not None
    assert state.response_json == {"success": True, "data": {"queryId": "01b2"}}


def test_response_of_other_endpoints_is_kept_as_bytes() -> None:
    traffic = SnowflakeTraffic()
    flow = snowflake_flow("POST", "/session/heartbeat")
    run_request(traffic, flow)
    flow.response = answer_json({"success": True})
    traffic.response(flow)
    state = state_of(flow)
    assert state is not None
    assert state.response_body == b'{"success":true}' and state.response_json is None


@pytest.mark.parametrize(
    ("content", "encoding"), [(b"<html>maintenance</html>", None), (b"not gzip", "gzip")]
)
def test_an_unreadable_response_is_passed_on_unparsed(content: bytes, encoding: str | None) -> None:
    traffic = SnowflakeTraffic()
    flow = snowflake_flow("POST", QUERY_PATH, {"sqlText": "select 1"})
    run_request(traffic, flow)
    flow.response = http.Response.make(200, content, {"Content-Type": "text/html"})
    if encoding:
        flow.response.headers["content-encoding"] = encoding
    traffic.response(flow)
    state = state_of(flow)
    assert state is not None
    assert state.response_json is None
    assert state.response_body == content
    assert flow.response.raw_content == content


def test_response_hooks_skip_flows_the_gateway_answered_or_never_saw() -> None:
    traffic = SnowflakeTraffic()
    refused = snowflake_flow("GET", "/nowhere")
    run_request(traffic, refused)
    refusal = refused.response
    traffic.responseheaders(refused)
    traffic.response(refused)
    assert refused.response is refusal and refusal is not None and refusal.stream is False
    unseen = snowflake_flow("POST", QUERY_PATH, live=False)
    unseen.response = answer_json({"success": True})
    traffic.responseheaders(unseen)
    traffic.response(unseen)
    assert state_of(unseen) is None


def big_result(rows: int) -> bytes:
    return orjson.dumps(
        {"success": True, "data": {"queryId": "01b2", "rowset": [["x" * 20]] * rows}}
    )


def streaming_context(traffic: SnowflakeTraffic) -> taddons.context:
    """Recording declares hoopgw_body_limit; the threshold over which answers stream."""
    tctx = taddons.context(traffic)
    tctx.options.add_option("hoopgw_body_limit", int, 1024, "")
    return tctx


def test_a_large_result_is_streamed_and_outlined() -> None:
    traffic = SnowflakeTraffic()
    with streaming_context(traffic):
        flow = snowflake_flow("POST", QUERY_PATH, {"sqlText": "select big"})
        run_request(traffic, flow)
        content = big_result(200)
        flow.response = http.Response.make(200, b"", {"Content-Type": "application/json"})
        flow.response.headers["content-length"] = str(len(content))
        traffic.responseheaders(flow)
        state = state_of(flow)
        assert state is not None and isinstance(state.streamed, StreamedAnswer)
        assert flow.response.stream is state.streamed
        state.streamed(content)
        traffic.response(flow)
        assert state.response_json is not None
        assert state.response_json["data"]["queryId"] == "01b2"
        assert state.streamed.facts()["size"] == len(content)


@pytest.mark.parametrize(
    ("status", "path", "headers"),
    [
        (500, QUERY_PATH, {}),
        (200, LOGIN_PATH, {}),
        (200, QUERY_PATH, {"transfer-encoding": "chunked"}),
        (200, QUERY_PATH, {"content-length": "100"}),
        (200, QUERY_PATH, {"content-encoding": "compress"}),
    ],
    ids=["error", "login", "no-length", "small", "unknown-encoding"],
)
def test_other_answers_stay_buffered(status: int, path: str, headers: dict[str, str]) -> None:
    traffic = SnowflakeTraffic()
    with streaming_context(traffic):
        flow = snowflake_flow("POST", path, login_body("t") if path == LOGIN_PATH else {})
        run_request(traffic, flow)
        flow.response = http.Response.make(status, b"", {"Content-Type": "application/json"})
        flow.response.headers["content-length"] = "100000"
        for name, value in headers.items():
            flow.response.headers[name] = value
        traffic.responseheaders(flow)
        state = state_of(flow)
        assert state is not None and state.streamed is None
        assert not flow.response.stream


def test_without_a_body_limit_nothing_is_streamed() -> None:
    traffic = SnowflakeTraffic()
    with taddons.context(traffic):
        flow = snowflake_flow("POST", QUERY_PATH, {"sqlText": "select big"})
        run_request(traffic, flow)
        flow.response = http.Response.make(200, b"", {"Content-Type": "application/json"})
        flow.response.headers["content-length"] = "10000000"
        traffic.responseheaders(flow)
        state = state_of(flow)
        assert state is not None and state.streamed is None


# --- bodies refused from the head, and large bodies read off the event loop -------------


def headers_only(path: str, *fields: tuple[str, str], http_version: str = "HTTP/1.1"):
    """A flow as `requestheaders` sees it: the head is there, the body not yet."""
    flow = snowflake_flow("POST", path, None, fields)
    flow.request.http_version = http_version
    flow.request.data.content = None
    return flow


@pytest.mark.parametrize(
    ("fields", "http_version", "says"),
    [
        ((("content-length", "1025"),), "HTTP/1.1", "body of 1025 bytes is over"),
        ((("content-length", "33554433"),), "HTTP/1.1", "33554433 bytes is over"),
        ((("transfer-encoding", "chunked"),), "HTTP/1.1", "not be sent chunked"),
        ((), "HTTP/2.0", "must declare its content-length"),
    ],
)
def test_a_body_over_the_limit_or_of_unknown_length_is_refused_from_the_head(
    fields: tuple[tuple[str, str], ...], http_version: str, says: str
) -> None:
    traffic = SnowflakeTraffic()
    traffic.request_limit = 1024
    flow = headers_only(QUERY_PATH, *fields, http_version=http_version)
    flow.request.headers.pop("content-length", None)
    for name, value in fields:
        flow.request.headers[name] = value
    traffic.requestheaders(flow)
    state = state_of(flow)
    assert state is not None and state.refusal is not None
    assert says in state.refusal.reason
    assert error_of(flow)["code"] == GATEWAY_PROTOCOL
    # killed: mitmproxy closes the connection instead of reading the body to answer
    assert flow.error is not None and not flow.live


@pytest.mark.parametrize(
    ("fields", "http_version"),
    [((("content-length", "1024"),), "HTTP/1.1"), ((), "HTTP/1.1"), ((), "HTTP/2.0")],
)
def test_a_body_within_the_limit_is_not_refused_from_the_head(
    fields: tuple[tuple[str, str], ...], http_version: str
) -> None:
    traffic = SnowflakeTraffic()
    traffic.request_limit = 1024
    flow = headers_only(QUERY_PATH, http_version=http_version)
    flow.request.headers.pop("content-length", None)
    for name, value in fields:
        flow.request.headers[name] = value
    if http_version == "HTTP/2.0":
        flow.request.method = "GET"  # no body method: nothing to declare
    traffic.requestheaders(flow)
    state = state_of(flow)
    assert state is not None and state.refusal is None and flow.live


async def test_a_large_body_is_parsed_on_a_worker_thread() -> None:
    traffic = SnowflakeTraffic()
    sql = "select '" + "x" * (256 * 1024) + "'"
    flow = snowflake_flow("POST", QUERY_PATH, {"sqlText": sql})
    traffic.requestheaders(flow)
    pending = traffic.request(flow)
    assert pending is not None, "a body this large is not parsed on the event loop"
    await pending
    state = state_of(flow)
    assert state is not None and state.refusal is None
    assert state.request_json == {"sqlText": sql}
    traffic.done()


async def test_a_large_malformed_body_is_refused_from_the_worker_thread() -> None:
    traffic = SnowflakeTraffic()
    flow = snowflake_flow("POST", QUERY_PATH, b"{" + b" " * (256 * 1024))
    traffic.requestheaders(flow)
    pending = traffic.request(flow)
    assert pending is not None
    await pending
    assert "not valid JSON" in error_of(flow)["message"]
    traffic.done()


@pytest.mark.parametrize("encoding", ["", "gzip"])
def test_a_json_body_with_a_byte_order_mark_is_read_and_forwarded_without_it(
    encoding: str,
) -> None:
    """Redaction skips a UTF-8 BOM and so does Snowflake's parser: the gateway agrees."""
    traffic = SnowflakeTraffic()
    text = orjson.dumps(login_body("not-a-real-token"))
    raw = protocol.UTF8_BOM + text
    headers = [("content-encoding", "gzip")] if encoding else []
    flow = snowflake_flow("POST", LOGIN_PATH, gzip.compress(raw) if encoding else raw, headers)
    run_request(traffic, flow)
    state = state_of(flow)
    assert state is not None and state.refusal is None
    assert state.request_json == orjson.loads(text)
    assert state.request_body == text
    assert flow.request.content == text  # what goes upstream is what was checked
    assert flow.request.headers.get("content-encoding", "") == encoding


def test_a_byte_order_mark_does_not_hide_a_repeated_key() -> None:
    traffic = SnowflakeTraffic()
    body = protocol.UTF8_BOM + b'{"sqlText": "select 1", "sqlText": "drop table t"}'
    flow = snowflake_flow("POST", QUERY_PATH, body)
    run_request(traffic, flow)
    assert "repeats the key" in error_of(flow)["message"]


_FIELD_BYTES = st.binary(max_size=6) | st.sampled_from(
    [b"content-length", b"Content-Length", b"TRANSFER-ENCODING", b"\xff", b"\r", b"\xc3", b"ok"]
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(_FIELD_BYTES, _FIELD_BYTES), max_size=5),
    st.sampled_from([b"content-length", b"transfer-encoding", b"authorization"]),
)
def test_headers_read_off_the_fields_as_mitmproxy_reads_them(
    fields: list[tuple[bytes, bytes]], name: bytes
) -> None:
    headers = http.Headers(fields)
    assert protocol.header_values(headers, name) == headers.get_all(name)
    assert protocol.header(headers, name, "none") == headers.get(name.decode(), "none")


def _unreadable_part_by_part(path: bytes, fields: list[tuple[bytes, bytes]]) -> str | None:
    if protocol._unreadable(path):
        return "the request path is not printable UTF-8 text"
    if any(protocol._unreadable(name) or protocol._unreadable(value) for name, value in fields):
        return "a request header is not printable UTF-8 text"
    return None


@settings(max_examples=300, deadline=None)
@given(_FIELD_BYTES, st.lists(st.tuples(_FIELD_BYTES, _FIELD_BYTES), max_size=4))
def test_a_head_checked_in_one_pass_is_judged_as_part_by_part(
    path: bytes, fields: list[tuple[bytes, bytes]]
) -> None:
    assert protocol.unreadable_head(path, fields) == _unreadable_part_by_part(path, fields)
