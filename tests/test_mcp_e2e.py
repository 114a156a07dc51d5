"""Managed MCP servers end to end: the `mcp` package's own client, a real gateway, fakesnow.

The strict upstream mounts an emulation of a Snowflake-managed MCP server
(tests/mcp_upstream.py) whose SQL tool runs its statements on fakesnow; it
records every request it receives, so each test shows what reached Snowflake.
The client is the `mcp` Python package's streamable-HTTP client, as agents use it.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client
from mcp.shared.exceptions import McpError

from hoopgw.recorder.secrets import new_token_key
from tests import stack
from tests.bodies import key_pair_gateway_options
from tests.mcp_upstream import SEARCH_TOOL, SQL_TOOL
from tests.raw_http import stored_records
from tests.strict_upstream import StrictUpstream

ACCOUNT = "mc12345"
SERVICE_USER = "svc_hoopgw"
TOKEN_KEY_ENV = "HOOPGW_MCP_TEST_TOKEN_KEY"
GROUPS = ["agents", "analysts", "maskers"]
SERVER_PATH = "/api/v2/databases/ANALYTICS/schemas/AGENTS/mcp-servers/SNOWMCP"
POLICY = """
[[rule]]
name = "agents-mcp"
groups = ["agents"]
deny_kinds = ["DROP"]
review_kinds = ["CREATE"]
approvers = ["dba"]
allow_mcp_tools = ["ANALYTICS.AGENTS.SNOWMCP/sql_exec_tool", "product_search"]

[[rule]]
name = "analysts-read-only"
groups = ["analysts"]
read_only = true

[[rule]]
name = "maskers-no-email"
groups = ["maskers"]
detect = ["email"]
allow_mcp_tools = ["sql_exec_tool"]
"""
WAIT = 30.0
RECORD_WAIT = 120.0
"""Records reach the store when their segment is sealed and uploaded: seconds, more under load."""


@pytest.fixture(scope="module")
def strict(key_pair_strict: StrictUpstream) -> StrictUpstream:
    return key_pair_strict


@pytest.fixture(scope="module")
def gw(gateway_factory, strict, service_key: Path, workdir: Path) -> stack.Gateway:
    policy = workdir / f"mcp-policy-{uuid.uuid4().hex[:6]}.toml"
    policy.write_text(POLICY)
    options = key_pair_gateway_options(
        account=ACCOUNT,
        user=SERVICE_USER,
        service_key=service_key,
        groups=GROUPS,
        token_key_env=TOKEN_KEY_ENV,
        policy=policy,
    )
    options["hoopgw_approval_check_ms"] = 200
    return gateway_factory(strict.url, options, env={TOKEN_KEY_ENV: new_token_key()}, name="mcp-gw")


def with_session[T](
    gw: stack.Gateway, token: str, work: Callable[[ClientSession], Awaitable[T]]
) -> T:
    """Run `work` in an initialized MCP client session through the gateway."""

    async def run() -> T:
        headers = {
            "Authorization": f"Bearer {token}",
            "X-Snowflake-Authorization-Token-Type": "OAUTH",
        }
        async with streamablehttp_client(gw.url + SERVER_PATH, headers=headers) as streams:
            read, write, _ = streams
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await work(session)

    return asyncio.run(asyncio.wait_for(run(), WAIT))


def call(gw: stack.Gateway, token: str, sql: str) -> Any:
    async def work(session: ClientSession) -> Any:
        return await session.call_tool(SQL_TOOL, {"sql": sql})

    return with_session(gw, token, work)


def refused(gw: stack.Gateway, token: str, sql: str, tool: str = SQL_TOOL) -> Any:
    """The JSON-RPC error the client raises for a call the gateway does not let through."""
    arguments = {"sql": sql} if tool == SQL_TOOL else {"query": sql}

    async def work(session: ClientSession) -> Any:
        with pytest.raises(McpError) as caught:
            await session.call_tool(tool, arguments)
        return caught.value.error

    return with_session(gw, token, work)


def tool_calls(strict: StrictUpstream, mark: int) -> list[dict[str, Any]]:
    """The tools/call messages that reached the MCP server since `mark`."""
    found = []
    for received in strict.received_since(mark):
        if "/mcp-servers/" in received.path and received.body:
            message = json.loads(received.body)
            for item in message if isinstance(message, list) else [message]:
                if item.get("method") == "tools/call":
                    found.append(item["params"])
    return found


def mcp_records(gw: stack.Gateway, predicate: Callable[[dict[str, Any]], bool]) -> list[Any]:
    def found() -> list[dict[str, Any]]:
        return [
            record
            for record in stored_records(gw.workdir / "store")
            if record["kind"] == "mcp_call" and predicate(record)
        ]

    return stack.wait_until(found, RECORD_WAIT, "mcp_call records in the store")  # type: ignore[return-value]


def test_tools_are_listed_and_a_sql_call_runs_and_is_recorded(gw, strict, oidc) -> None:
    marker = f"mcp_{uuid.uuid4().hex[:8]}"

    async def work(session: ClientSession) -> tuple[list[str], Any]:
        tools = await session.list_tools()
        result = await session.call_tool(SQL_TOOL, {"sql": f"select 42 as {marker}"})
        return [tool.name for tool in tools.tools], result

    mark = strict.mark()
    names, result = with_session(gw, oidc.mint("ada", groups=["agents"]), work)
    assert names == [SQL_TOOL, SEARCH_TOOL]
    assert not result.isError
    assert result.structuredContent["data"] == [["42"]]
    assert tool_calls(strict, mark) == [
        {"name": SQL_TOOL, "arguments": {"sql": f"select 42 as {marker}"}}
    ]
    sql = f"select 42 as {marker}"
    call_record = mcp_records(gw, lambda r: r.get("sql") == sql)[0]
    assert call_record["tool"] == SQL_TOOL and call_record["server"] == "ANALYTICS.AGENTS.SNOWMCP"
    assert call_record["guardrail"]["decision"] == "allow"
    assert "42" in json.dumps(call_record["result"])
    assert call_record["caller"]["subject"] == "ada"
    flow = mcp_records(gw, lambda r: r["rpc_method"] == "tools/list")
    assert flow[0]["result"]["json"]["tools"][0]["name"] == SQL_TOOL
    assert mcp_records(gw, lambda r: r["rpc_method"] == "initialize")


def raw_post(gw: stack.Gateway, token: str) -> tuple[int, bytes]:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    connection = http.client.HTTPConnection(stack.LOOPBACK, gw.port, timeout=WAIT)
    try:
        connection.request(
            "POST",
            SERVER_PATH,
            body,
            {
                "Content-Type": "application/json",
                "Accept": "application/json, text/event-stream",
                "Authorization": f"Bearer {token}",
            },
        )
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def test_a_forged_token_and_a_caller_outside_the_groups_never_reach_the_server(
    gw, strict, oidc
) -> None:
    good = oidc.mint("ada", groups=["agents"])
    header, payload, signature = good.split(".")
    forged = f"{header}.{payload}.{signature[::-1]}"
    outsider = oidc.mint("eve", groups=["outsiders"])
    mark = strict.mark()
    for token in (forged, outsider):
        status, body = raw_post(gw, token)
        assert status == 401, body
        with pytest.raises(Exception):  # noqa: B017  the client reports the transport's 401
            with_session(gw, token, lambda session: session.list_tools())
    assert [r for r in strict.received_since(mark) if "/mcp-servers/" in r.path] == []
    assert raw_post(gw, good)[0] == 200


def test_a_caller_whose_rule_allows_no_tools_cannot_call_one(gw, strict, oidc) -> None:
    token = oidc.mint("ann", groups=["analysts"])
    tools = with_session(gw, token, lambda session: session.list_tools())
    assert tools.tools == []  # the list leaves out what the caller may not call
    masker = with_session(gw, oidc.mint("mia", groups=["maskers"]), lambda s: s.list_tools())
    assert [tool.name for tool in masker.tools] == [SQL_TOOL]
    mark = strict.mark()
    error = refused(gw, token, "select 1")
    assert error.code == -32003
    assert "analysts-read-only" in error.message and "allows no MCP tools" in error.message
    assert tool_calls(strict, mark) == []


def test_a_tool_outside_allow_mcp_tools_is_refused(gw, strict, oidc) -> None:
    async def work(session: ClientSession) -> Any:
        return await session.call_tool(SEARCH_TOOL, {"query": "returns"})

    mark = strict.mark()
    error = refused(gw, oidc.mint("mia", groups=["maskers"]), "returns", SEARCH_TOOL)
    assert "allows only the MCP tools sql_exec_tool" in error.message
    assert tool_calls(strict, mark) == []
    result = with_session(gw, oidc.mint("ada", groups=["agents"]), work)
    assert not result.isError and "documents match" in result.content[0].text


def test_drop_table_through_the_sql_tool_is_refused_by_policy(gw, strict, oidc) -> None:
    mark = strict.mark()
    error = refused(gw, oidc.mint("ada", groups=["agents"]), "drop table analytics.agents.t")
    assert error.code == -32003
    assert "hoopgw 399003" in error.message and "denies DROP" in error.message
    assert error.data == {"hoopgw_code": 399003}
    assert tool_calls(strict, mark) == []
    records = mcp_records(gw, lambda r: r.get("sql") == "drop table analytics.agents.t")
    assert records[0]["guardrail"]["decision"] == "block"
    assert records[0]["error"]["json"]["code"] == -32003


def approve(gw: stack.Gateway, token: str, approval_id: str) -> int:
    connection = http.client.HTTPConnection(stack.LOOPBACK, gw.port, timeout=WAIT)
    try:
        connection.request(
            "POST",
            f"/hoopgw/v1/approvals/{approval_id}/approve",
            json.dumps({"reason": "fine for the demo"}),
            {"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )
        answer = connection.getresponse()
        answer.read()
        return answer.status
    finally:
        connection.close()


def test_a_held_call_runs_once_approved_when_the_agent_retries_it(gw, strict, oidc) -> None:
    table = f"held_{uuid.uuid4().hex[:8]}"
    sql = f"create table {table} (id int)"
    token = oidc.mint("ada", groups=["agents"])
    mark = strict.mark()
    error = refused(gw, token, sql)
    assert error.code == -32010 and "holds this call for review" in error.message
    approval_id = error.data["hoopgw_approval"]
    assert approval_id in error.message
    again = refused(gw, token, sql)  # retried before a decision: the same approval, still held
    assert again.data["hoopgw_approval"] == approval_id
    assert tool_calls(strict, mark) == []
    assert approve(gw, oidc.mint("dan", groups=["dba"]), approval_id) == 200
    result = call(gw, token, sql)
    assert not result.isError
    assert tool_calls(strict, mark) == [{"name": SQL_TOOL, "arguments": {"sql": sql}}]
    error = refused(gw, token, sql)  # the approval is spent: the next identical call waits again
    assert error.data["hoopgw_approval"] != approval_id
    assert len(tool_calls(strict, mark)) == 1


def test_a_result_is_masked_for_a_caller_whose_rules_say_so(gw, strict, oidc) -> None:
    sql = "select 'ada@example.com' as contact, 'plain' as note"
    result = call(gw, oidc.mint("mia", groups=["maskers"]), sql)
    assert not result.isError
    assert result.structuredContent["data"] == [["[MASKED:email]", "plain"]]
    assert "ada@example.com" not in result.content[0].text
    records = mcp_records(gw, lambda r: r.get("sql") == sql and "detections" in r)
    assert records[0]["detections"][0]["kind"] == "email"
    assert "[MASKED:email]" in json.dumps(records[0]["result"])
    assert "ada@example.com" not in json.dumps(records[0]["result"])
    unmasked = call(gw, oidc.mint("ada", groups=["agents"]), sql)
    assert unmasked.structuredContent["data"] == [["ada@example.com", "plain"]]
