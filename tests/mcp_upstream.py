"""A Snowflake-managed MCP server, emulated behind the strict upstream (tests/strict_upstream.py).

`POST /api/v2/databases/{db}/schemas/{s}/mcp-servers/{name}` speaks JSON-RPC
2.0 over MCP's streamable HTTP transport, as Snowflake documents it:

- every call carries `Authorization: Bearer` with a key-pair JWT that the
  strict upstream verifies (`X-Snowflake-Authorization-Token-Type: KEYPAIR_JWT`);
  anything else is 401 with Snowflake's 390100;
- a POST must accept both `application/json` and `text/event-stream` and send
  `application/json`; notifications are answered 202 without a body;
- `initialize`, `tools/list` and `ping` are answered as JSON; `tools/call` as
  a `text/event-stream` of one `message` event, so the gateway reads both;
- `sql_exec_tool` is a SYSTEM_EXECUTE_SQL tool: its `sql` argument runs on
  fakesnow through the strict upstream's connection, and the rows come back
  as the SQL API shapes them (`resultSetMetaData.rowType`, `data`), as text
  content and as `structuredContent`; `product_search` stands for a Cortex
  Search tool and answers canned text.

The server keeps no session (no `Mcp-Session-Id`), like Snowflake's.
"""

from __future__ import annotations

import json
import threading
import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.strict_upstream import StrictUpstream

SQL_TOOL = "sql_exec_tool"
SEARCH_TOOL = "product_search"
PROTOCOL_VERSION = "2025-06-18"
TOOLS = [
    {
        "name": SQL_TOOL,
        "title": "SQL execution",
        "description": "Runs one SQL statement in Snowflake and returns its rows.",
        "inputSchema": {
            "type": "object",
            "properties": {"sql": {"type": "string", "description": "the SQL to run"}},
            "required": ["sql"],
        },
    },
    {
        "name": SEARCH_TOOL,
        "title": "Product search",
        "description": "Searches the product documentation (Cortex Search).",
        "inputSchema": {
            "type": "object",
            "properties": {"query": {"type": "string"}},
            "required": ["query"],
        },
    },
]
UNAUTHORIZED = {"code": "390100", "message": "Incorrect username or password was specified."}

Answer = tuple[int, bytes, str]


class _Fakesnow:
    """One fakesnow session per server, in the server's database and schema, for its SQL tool."""

    def __init__(self, upstream: StrictUpstream, database: str, schema: str) -> None:
        self.upstream = upstream
        self.context = (database, schema)
        self.token: str | None = None
        self.sequence = 0
        self.lock = threading.Lock()

    def run(self, sql: str) -> dict[str, Any]:
        with self.lock:
            if self.token is None:
                self.token = self._login()
            return self._query(sql)

    def _login(self) -> str:
        login = {"data": {"ACCOUNT_NAME": "fake", "LOGIN_NAME": "mcp", "SESSION_PARAMETERS": {}}}
        answer = self.upstream._forward(
            "POST",
            "/session/v1/login-request",
            {"Content-Type": "application/json"},
            json.dumps(login).encode(),
            None,
        )
        self.token = json.loads(answer.body)["data"]["token"]
        database, schema = self.context
        for sql in (
            f"create database if not exists {database}",
            f"create schema if not exists {database}.{schema}",
            f"use schema {database}.{schema}",
        ):
            self._query(sql)
        return self.token

    def _query(self, sql: str) -> dict[str, Any]:
        self.sequence += 1
        body = json.dumps({"sqlText": sql, "sequenceId": self.sequence}).encode()
        answer = self.upstream._forward(
            "POST",
            "/queries/v1/query-request",
            {"Content-Type": "application/json", "Accept": "application/json"},
            body,
            self.token,
        )
        return json.loads(answer.body)


_sessions: weakref.WeakKeyDictionary[StrictUpstream, dict[str, _Fakesnow]] = (
    weakref.WeakKeyDictionary()
)


def answer(
    upstream: StrictUpstream, method: str, path: str, headers: dict[str, str], body: bytes
) -> Answer:
    """The managed MCP server's answer to one HTTP request."""
    authorization = headers.get("Authorization", "")
    token_type = headers.get("X-Snowflake-Authorization-Token-Type", "")
    if (
        token_type.upper() != "KEYPAIR_JWT"
        or not authorization.startswith("Bearer ")
        or upstream._keypair_jwt_ok(authorization.removeprefix("Bearer ")) is None
    ):
        return 401, json.dumps(UNAUTHORIZED).encode(), "application/json"
    if method != "POST":
        return 405, b"", "text/plain"
    accept = headers.get("Accept", "")
    if "application/json" not in accept or "text/event-stream" not in accept:
        return (406, *_error(None, -32600, "Accept both application/json and text/event-stream"))
    if headers.get("Content-Type", "").partition(";")[0].strip() != "application/json":
        return (415, *_error(None, -32600, "Content-Type must be application/json"))
    try:
        message = json.loads(body)
    except ValueError:
        return (400, *_error(None, -32700, "Parse error"))
    if isinstance(message, list):
        answers = [_handle(upstream, path, item) for item in message]
        replies = [reply for reply in answers if reply is not None]
        if not replies:
            return 202, b"", "application/json"
        return 200, json.dumps(replies).encode(), "application/json"
    reply = _handle(upstream, path, message)
    if reply is None:
        return 202, b"", "application/json"
    if message.get("method") == "tools/call":
        event = f"event: message\ndata: {json.dumps(reply)}\n\n"
        return 200, event.encode(), "text/event-stream"
    return 200, json.dumps(reply).encode(), "application/json"


def _error(rpc_id: Any, code: int, message: str) -> tuple[bytes, str]:
    error = {"jsonrpc": "2.0", "id": rpc_id, "error": {"code": code, "message": message}}
    return json.dumps(error).encode(), "application/json"


def _handle(upstream: StrictUpstream, path: str, message: Any) -> dict[str, Any] | None:
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        return {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "Invalid"}}
    if "id" not in message:
        return None  # a notification
    rpc_id = message["id"]
    method = message.get("method")
    params = message.get("params") or {}
    if method == "initialize":
        result: dict[str, Any] = {
            "protocolVersion": params.get("protocolVersion") or PROTOCOL_VERSION,
            "capabilities": {"tools": {"listChanged": False}},
            "serverInfo": {"name": "snowflake-mcp-emulation", "version": "1.0"},
        }
    elif method == "ping":
        result = {}
    elif method == "tools/list":
        result = {"tools": TOOLS}
    elif method == "tools/call":
        result = _call(upstream, path, params.get("name"), params.get("arguments") or {})
    else:
        error = {"code": -32601, "message": f"Method not found: {method}"}
        return {"jsonrpc": "2.0", "id": rpc_id, "error": error}
    return {"jsonrpc": "2.0", "id": rpc_id, "result": result}


def _call(
    upstream: StrictUpstream, path: str, name: Any, arguments: dict[str, Any]
) -> dict[str, Any]:
    if name == SEARCH_TOOL:
        text = f"3 documents match {arguments.get('query')!r}"
        return {"content": [{"type": "text", "text": text}], "isError": False}
    if name != SQL_TOOL or not isinstance(arguments.get("sql"), str):
        return {"content": [{"type": "text", "text": f"unknown tool {name}"}], "isError": True}
    parts = path.partition("?")[0].strip("/").split("/")
    servers = _sessions.setdefault(upstream, {})
    session = servers.setdefault(parts[7], _Fakesnow(upstream, parts[3], parts[5]))
    outcome = session.run(arguments["sql"])
    if not outcome.get("success"):
        text = f"SQL compilation error: {outcome.get('message')}"
        return {"content": [{"type": "text", "text": text}], "isError": True}
    from tests.strict_upstream import _arrow_table, _json_rows

    data = outcome["data"]
    row_type = [
        {key: column.get(key) for key in ("name", "type", "database", "schema", "table")}
        for column in data["rowtype"]
    ]
    rows = _json_rows(_arrow_table(data))
    document = {
        "statementHandle": data.get("queryId"),
        "resultSetMetaData": {"numRows": len(rows), "rowType": row_type},
        "data": rows,
    }
    return {
        "content": [{"type": "text", "text": json.dumps(document)}],
        "structuredContent": document,
        "isError": False,
    }
