"""McpCalls and its parts: JSON-RPC read strictly, SQL tools found, events read, results masked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy import http
from mitmproxy.test import taddons

from hoopgw.addons.flowstate import Caller, FlowState
from hoopgw.addons.guardrails import Guardrails
from hoopgw.addons.masking import Masking
from hoopgw.addons.mcp import (
    HELD_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    MAX_BATCH,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    SERVED_METHODS,
    JsonRpcError,
    JsonRpcReader,
    McpCalls,
    SqlTools,
    SseError,
    SseReader,
    ToolResultMasking,
    read_server_answer,
    rpc_code,
    sql_tool_call,
)
from hoopgw.addons.protocol import Endpoint
from hoopgw.recorder.masking import MaskPlan, Outcome
from tests.addons import classified, snowflake_flow

SERVER = "/api/v2/databases/ANALYTICS/schemas/AGENTS/mcp-servers/SNOWMCP"
POLICY = """
[[rule]]
name = "agents"
groups = ["agents"]
deny_kinds = ["DROP"]
review_kinds = ["CREATE"]
approvers = ["dba"]
allow_mcp_tools = ["sql_exec_tool"]

[[rule]]
name = "maskers"
groups = ["maskers"]
detect = ["email"]
"""


def rpc(method: str, params: dict[str, Any] | None = None, rpc_id: Any = 1) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if rpc_id is not None:
        message["id"] = rpc_id
    if params is not None:
        message["params"] = params
    return message


def read(body: bytes | Any) -> Any:
    return JsonRpcReader.read(body if isinstance(body, bytes) else orjson.dumps(body), "A.B.C")


@pytest.mark.parametrize(
    ("body", "code", "says"),
    [
        (
            b'{"jsonrpc": "2.0", "id": 1, "method": "ping", "method": "tools/call"}',
            PARSE_ERROR,
            "repeats the key",
        ),
        (
            b'{"jsonrpc": "2.0", "id": 1, "method": "ping", "METHOD": "x"}',
            PARSE_ERROR,
            "repeats the key",
        ),
        (b'{"jsonrpc": "2.0", "id": NaN, "method": "ping"}', PARSE_ERROR, "not valid JSON"),
        (b"[]", INVALID_REQUEST, "an empty batch"),
        (b"", INVALID_REQUEST, "an empty body"),
        (b'"ping"', INVALID_REQUEST, "must be an object"),
        (b"[1]", INVALID_REQUEST, "must be an object"),
        ({"jsonrpc": "1.0", "id": 1, "method": "ping"}, INVALID_REQUEST, '"2.0"'),
        ({"id": 1, "method": "ping"}, INVALID_REQUEST, '"2.0"'),
        ({"jsonrpc": "2.0", "id": 1, "result": {}}, INVALID_REQUEST, "not responses"),
        ({**rpc("ping"), "extra": 1}, INVALID_REQUEST, "unknown member"),
        (rpc("ping", rpc_id=True), INVALID_REQUEST, "id must be"),
        (rpc("ping", rpc_id=1.5), INVALID_REQUEST, "id must be"),
        ({**rpc("tools/list"), "params": [1]}, INVALID_PARAMS, "must be an object"),
        (rpc("resources/read", {"uri": "snowflake://x"}), METHOD_NOT_FOUND, "not served"),
        (rpc("notifications/initialized"), INVALID_REQUEST, "as a notification"),
        (rpc("tools/list", rpc_id=None), INVALID_REQUEST, "as a request"),
        (
            [rpc("ping", rpc_id=7), rpc("tools/list", rpc_id=7)],
            INVALID_REQUEST,
            "repeats a request id",
        ),
        ([rpc("ping", rpc_id=n) for n in range(MAX_BATCH + 1)], INVALID_REQUEST, "a batch of more"),
    ],
)
def test_bodies_a_strict_server_would_not_read_alike_are_refused(
    body: Any, code: int, says: str
) -> None:
    with pytest.raises(JsonRpcError) as caught:
        read(body)
    assert caught.value.code == code
    assert says in str(caught.value)


def test_a_batch_and_a_single_message_are_read() -> None:
    single = read(rpc("tools/list", rpc_id="a"))
    assert not single.batch and single.ids == ["a"]
    batch = read([rpc("notifications/initialized", rpc_id=None), rpc("tools/list", rpc_id=2)])
    assert batch.batch and batch.ids == [2]
    assert [message.method for message in batch.messages] == [
        "notifications/initialized",
        "tools/list",
    ]


def test_sql_tools_name_the_argument_that_carries_sql() -> None:
    tools = SqlTools(["*:sql", "run_query:query"])
    assert tools.sql_of("anything", {"sql": "select 1"}) == "select 1"
    assert tools.sql_of("search", {"query": "shoes"}) is None
    assert tools.sql_of("run_query", {"query": "select 2"}) == "select 2"
    for arguments, says in (
        ({"SQL": "drop table t"}, "spell sql as"),
        ({"sql": ["drop table t"]}, "must be a string"),
    ):
        with pytest.raises(JsonRpcError, match=says):
            tools.sql_of("anything", arguments)
    with pytest.raises(JsonRpcError, match="takes its SQL in query"):
        tools.sql_of("run_query", {"statement": "select 3"})
    with pytest.raises(ValueError, match="TOOL_GLOB:ARGUMENT"):
        SqlTools(["no-argument"])


def test_events_are_read_across_pieces_and_line_ends() -> None:
    reader = SseReader()
    for piece in (
        b": comment\r\nevent: mess",
        b"age\r\nid: 7\r",
        b'\ndata: {"a":\r\ndata:  1}\r\n\r\n',
        b"data: x\n",
    ):
        reader.feed(piece)
    events = reader.finish()
    assert [(e.event, e.event_id, e.data) for e in events] == [
        ("message", "7", '{"a":\n 1}'),
        (None, "7", "x"),
    ]


def test_an_event_over_its_bound_is_refused() -> None:
    reader = SseReader(max_event_bytes=64)
    with pytest.raises(SseError, match="over 64 bytes"):
        reader.feed(b"data: " + b"x" * 100)
    reader = SseReader(max_event_bytes=64)
    with pytest.raises(SseError, match="over 64 bytes"):
        for _ in range(10):
            reader.feed(b"data: " + b"x" * 10 + b"\n")


def test_an_event_stream_answer_is_written_back_as_it_was_read() -> None:
    message = {"jsonrpc": "2.0", "id": 1, "result": {"content": []}}
    body = b"event: message\nid: 9\ndata: " + orjson.dumps(message) + b"\n\n"
    answer = read_server_answer("text/event-stream; charset=utf-8", body)
    assert answer is not None and answer.messages == [message]
    assert read_server_answer("text/event-stream", answer.encode()).messages == [message]  # type: ignore[union-attr]
    assert read_server_answer("application/json", b"") is None


def test_tool_results_are_masked_in_rows_structured_content_and_text() -> None:
    plan = MaskPlan(detect={"email": "mask"})
    rows = {
        "resultSetMetaData": {"rowType": [{"name": "CONTACT", "type": "text"}]},
        "data": [["ada@example.com"]],
    }
    result = {
        "structuredContent": rows,
        "content": [
            {"type": "text", "text": orjson.dumps(rows).decode()},
            {"type": "text", "text": "write to bob@example.com"},
        ],
    }
    outcome = Outcome()
    ToolResultMasking().mask(result, plan, outcome)
    assert result["structuredContent"]["data"] == [["[MASKED:email]"]]
    assert "example.com" not in orjson.dumps(result).decode()
    assert outcome.changed and {d.kind for d in outcome.detections} == {"email"}
    with pytest.raises(ValueError, match="image"):
        ToolResultMasking().mask({"content": [{"type": "image", "data": "..."}]}, plan, Outcome())


def test_gateway_codes_map_into_json_rpc_server_errors() -> None:
    assert rpc_code(399003) == -32003
    assert rpc_code(399007) == -32007
    assert rpc_code(390100) == -32000


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    return path


def mcp_flow(body: Any, groups: tuple[str, ...] = ("agents",)) -> tuple[http.HTTPFlow, FlowState]:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    flow = snowflake_flow("POST", SERVER, content)
    state = classified(flow)
    assert state.endpoint is Endpoint.MCP_SERVER
    state.caller = Caller("ada", "ada@example.com", groups, "AGENTS")
    state.session_id = "0190b5a5-0000-7000-8000-000000000001"
    return flow, state


def answer_of(flow: http.HTTPFlow) -> Any:
    assert flow.response is not None
    return orjson.loads(flow.response.content or b"null")


async def test_calls_are_checked_against_the_tools_and_the_statement_policy(
    policy_file: Path,
) -> None:
    guardrails = Guardrails()
    calls = McpCalls(guardrails, Masking(guardrails))
    with taddons.context(guardrails, calls) as tctx:
        tctx.configure(guardrails, hoopgw_policy=str(policy_file))
        call = rpc("tools/call", {"name": "sql_exec_tool", "arguments": {"sql": "select 1"}})
        flow, state = mcp_flow(call)
        await calls.request(flow)
        assert not state.answered and state.guardrail["decision"] == "allow"  # type: ignore[index]
        assert sql_tool_call(flow).sql == "select 1"  # type: ignore[union-attr]

        drop = rpc("tools/call", {"name": "sql_exec_tool", "arguments": {"sql": "drop table t"}}, 5)
        flow, state = mcp_flow(drop)
        await calls.request(flow)
        calls.response(flow)
        error = answer_of(flow)
        assert flow.response.status_code == 200  # type: ignore[union-attr]
        assert error["id"] == 5 and error["error"]["code"] == -32003
        assert "denies DROP" in error["error"]["message"]

        other = rpc("tools/call", {"name": "product_search", "arguments": {"query": "x"}})
        flow, state = mcp_flow([other, rpc("ping", rpc_id=2)])
        await calls.request(flow)
        calls.response(flow)
        errors = answer_of(flow)
        assert [e["id"] for e in errors] == [1, 2]
        assert "allows only the MCP tools sql_exec_tool" in errors[0]["error"]["message"]

        flow, state = mcp_flow(b'{"jsonrpc": "2.0", "id": 1, "method": "ping", "id": 2}')
        await calls.request(flow)
        assert flow.response.status_code == 400  # type: ignore[union-attr]
        assert answer_of(flow)["error"]["code"] == PARSE_ERROR

        two = [
            rpc("tools/call", {"name": "sql_exec_tool", "arguments": {"sql": "select 1"}}, n)
            for n in (1, 2)
        ]
        flow, state = mcp_flow(two)
        await calls.request(flow)
        assert state.answered and "each SQL tool call" in state.refusal.reason  # type: ignore[union-attr]


async def test_a_held_call_answers_a_json_rpc_error_naming_the_approval(policy_file: Path) -> None:
    guardrails = Guardrails()
    calls = McpCalls(guardrails, Masking(guardrails))
    with taddons.context(guardrails, calls) as tctx:
        tctx.configure(guardrails, hoopgw_policy=str(policy_file))
        create = rpc(
            "tools/call", {"name": "sql_exec_tool", "arguments": {"sql": "create table t (i int)"}}
        )
        flow, state = mcp_flow(create)
        await calls.request(flow)
        assert state.guardrail["decision"] == "review"  # type: ignore[index]
        # what addons/approval.py leaves on a held flow
        flow.response = http.Response.make(200, b'{"code": "333333"}')
        flow.metadata["hoopgw_approval"] = {"id": "0190b5a5-1111-7000-8000-000000000001"}
        calls.response(flow)
        error = answer_of(flow)["error"]
        assert error["code"] == HELD_ERROR
        assert error["data"]["hoopgw_approval"] in error["message"]


async def test_a_streamed_tool_result_is_masked_for_a_caller_with_rules(policy_file: Path) -> None:
    guardrails = Guardrails()
    calls = McpCalls(guardrails, Masking(guardrails))
    with taddons.context(guardrails, calls) as tctx:
        tctx.configure(guardrails, hoopgw_policy=str(policy_file))
        flow, state = mcp_flow(
            rpc("tools/call", {"name": "lookup", "arguments": {}}), groups=("maskers",)
        )
        await calls.request(flow)
        result = {"content": [{"type": "text", "text": "ada@example.com"}], "isError": False}
        message = {"jsonrpc": "2.0", "id": 1, "result": result}
        body = b"event: message\ndata: " + orjson.dumps(message) + b"\n\n"
        flow.response = http.Response.make(200, body, {"content-type": "text/event-stream"})
        state.response_body = body
        calls.response(flow)
        text = flow.response.content.decode()  # type: ignore[union-attr]
        assert "ada@example.com" not in text and "[MASKED:email]" in text
        assert text.startswith("event: message\ndata: ")
        assert state.detections == [
            {"column": "text", "kind": "email", "count": 1, "action": "mask"}
        ]


async def test_tools_list_leaves_out_what_the_caller_may_not_call(policy_file: Path) -> None:
    guardrails = Guardrails()
    calls = McpCalls(guardrails, Masking(guardrails))
    with taddons.context(guardrails, calls) as tctx:
        tctx.configure(guardrails, hoopgw_policy=str(policy_file))
        flow, state = mcp_flow(rpc("tools/list", rpc_id=3))
        await calls.request(flow)
        tools = [{"name": "sql_exec_tool"}, {"name": "product_search"}]
        body = orjson.dumps({"jsonrpc": "2.0", "id": 3, "result": {"tools": tools}})
        flow.response = http.Response.make(200, body, {"content-type": "application/json"})
        state.response_body = body
        calls.response(flow)
        assert answer_of(flow)["result"]["tools"] == [{"name": "sql_exec_tool"}]


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=256)
    | st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=12,
    ).map(lambda value: json.dumps(value).encode())
)
def test_any_body_is_read_or_refused_with_a_json_rpc_error(body: bytes) -> None:
    try:
        exchange = read(body)
    except JsonRpcError as exc:
        assert exc.code in (PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS)
    else:
        assert all(message.method in SERVED_METHODS for message in exchange.messages)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_any_event_stream_is_read_or_refused_within_bounds(pieces: list[bytes]) -> None:
    reader = SseReader(max_event_bytes=128)
    try:
        for piece in pieces:
            reader.feed(piece)
        events = reader.finish()
    except SseError:
        return
    assert all(len(event.data.encode()) <= 128 for event in events)
