"""Snowflake-managed MCP servers: every JSON-RPC call verified, guarded, recorded and masked.

An agent reaches a managed MCP server with `POST /api/v2/databases/{db}/schemas/
{s}/mcp-servers/{name}`, JSON-RPC 2.0 over MCP's streamable HTTP transport.
Authentication swaps its bearer token like the SQL API's
(addons/authentication/sql_api.py). `McpCalls`, right after `Guardrails`:

- reads the body strictly (`JsonRpcReader`): one message or a batch, each a
  request or notification with `"jsonrpc": "2.0"`; a repeated key, another
  version, a response or a method the gateway does not serve is refused;
- lets a `tools/call` through only when the caller's rules allow the tool
  (`allow_mcp_tools`, addons/guardrails.py) and, for a tool that executes SQL
  (`SqlTools`, option `hoopgw_mcp_sql_tools`), only when the statement passes
  the same check as the query endpoint's (`Guardrails.check_sql`); a statement
  a rule sends to review is held by addons/approval.py, keyed on the caller,
  the SQL and the tool, and the identical call retried after the approval runs;
- answers whatever the gateway refuses or holds as JSON-RPC errors with HTTP
  200 (`JsonRpcAnswers`), as MCP servers do, so the agent's client shows them;
- reads the server's answer, `application/json` or a `text/event-stream`
  (`SseReader`, bounded), leaves out of `tools/list` the tools the caller may
  not call, masks each tool result for a caller with masking rules
  (`ToolResultMasking`), and writes one `mcp_call` record per message
  (`McpRecords`).

Requests refused before the body is read (a bad token, an unknown path) keep
the SQL API's HTTP errors: the client reports them as transport failures.
"""

from __future__ import annotations

import fnmatch
import logging
import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from mitmproxy import ctx, exceptions, http
from mitmproxy.addonmanager import Loader

from hoopgw.addons import names, protocol
from hoopgw.addons.flowstate import FlowState, state_of
from hoopgw.addons.guardrails import Guardrails
from hoopgw.addons.masking import Masking
from hoopgw.addons.protocol import Endpoint, ProtocolError
from hoopgw.addons.refusals import refuse
from hoopgw.recorder import redaction
from hoopgw.recorder.masking import MaskPlan, Outcome
from hoopgw.recorder.records import Client, new_record
from hoopgw.recorder.schema import RecordKind

logger = logging.getLogger(__name__)


def mask_rows(*args: Any) -> None:
    """`recorder.masking.rowsets.mask_rows`, imported on first use: the detectors' libraries
    (pyarrow.compute, phonenumbers) load only for a policy that masks."""
    from hoopgw.recorder.masking.rowsets import mask_rows as masked

    masked(*args)


SOURCE: Final = "mcp"
SERVED_METHODS: Final = frozenset(
    {
        "initialize",
        "notifications/initialized",
        "notifications/cancelled",
        "ping",
        "tools/list",
        "tools/call",
    }
)
"""What a managed MCP server offers agents; anything else (resources, prompts) is refused."""
MAX_BATCH: Final = 32
DEFAULT_SQL_TOOLS: Final = ("*:sql",)
"""Every tool with a `sql` argument: Snowflake's SYSTEM_EXECUTE_SQL tools, whatever their name."""
PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
HELD_ERROR: Final = -32010
"""A tools/call held for review: JSON-RPC's server-error range, like the refusals below."""
MAX_SSE_EVENT_BYTES: Final = 64 * 1024 * 1024
MAX_SSE_EVENTS: Final = 10_000


def rpc_code(gateway_code: int) -> int:
    """A hoopgw code (399xxx) in JSON-RPC's server-error range: 399003 becomes -32003."""
    return -32000 - (gateway_code - 399000) if 399000 < gateway_code < 399100 else -32000


class JsonRpcError(ValueError):
    """A body that is not JSON-RPC the gateway forwards; `code` is JSON-RPC's."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


# --- requests ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """One JSON-RPC request (`has_id`) or notification from the client."""

    method: str
    params: dict[str, Any] | None
    rpc_id: str | int | None = None
    has_id: bool = False


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A `tools/call`: which tool of which server, its arguments, and the SQL it runs if any."""

    server: str
    name: str
    arguments: dict[str, Any]
    rpc_id: str | int | None
    sql: str | None = None

    @property
    def target(self) -> dict[str, str]:
        """What an approval binds besides the SQL: the same statement through another tool is
        another call."""
        return {"mcp_server": self.server, "tool": self.name}


@dataclass(slots=True)
class Exchange:
    """A parsed MCP request body and what the gateway decided on it."""

    server: str
    messages: tuple[Message, ...]
    batch: bool
    calls: list[ToolCall] = field(default_factory=list)

    @property
    def ids(self) -> list[str | int | None]:
        return [message.rpc_id for message in self.messages if message.has_id]

    @property
    def sql_call(self) -> ToolCall | None:
        return next((call for call in self.calls if call.sql is not None), None)


_REQUEST_KEYS: Final = frozenset({"jsonrpc", "id", "method", "params"})


class JsonRpcReader:
    """Reads a client's body as JSON-RPC 2.0 the way a strict server must, or raises JsonRpcError.

    What the gateway checks must be what the server runs: a repeated key (also
    in another case, `protocol.parse_strict_json`) could be read two ways, so it
    is refused, and so is any member JSON-RPC does not define.
    """

    @staticmethod
    def read(body: bytes, server: str) -> Exchange:
        try:
            value = protocol.parse_strict_json(body)
        except ProtocolError as exc:
            raise JsonRpcError(PARSE_ERROR, str(exc)) from None
        if isinstance(value, list):
            if not value:
                raise JsonRpcError(INVALID_REQUEST, "an empty batch")
            if len(value) > MAX_BATCH:
                raise JsonRpcError(INVALID_REQUEST, f"a batch of more than {MAX_BATCH} messages")
            messages = tuple(JsonRpcReader._message(item) for item in value)
            ids = [message.rpc_id for message in messages if message.has_id]
            if len(ids) != len(set(map(repr, ids))):
                raise JsonRpcError(INVALID_REQUEST, "a batch repeats a request id")
            return Exchange(server, messages, batch=True)
        if value is None:
            raise JsonRpcError(INVALID_REQUEST, "an empty body")
        return Exchange(server, (JsonRpcReader._message(value),), batch=False)

    @staticmethod
    def _message(value: Any) -> Message:
        if not isinstance(value, dict):
            raise JsonRpcError(INVALID_REQUEST, "a JSON-RPC message must be an object")
        unknown = sorted(set(value) - _REQUEST_KEYS)
        if "result" in value or "error" in value:
            raise JsonRpcError(INVALID_REQUEST, "hoopgw forwards requests, not responses")
        if unknown:
            raise JsonRpcError(INVALID_REQUEST, f"unknown member {unknown[0][:40]!a}")
        if value.get("jsonrpc") != "2.0":
            raise JsonRpcError(INVALID_REQUEST, 'jsonrpc must be "2.0"')
        method = value.get("method")
        if not isinstance(method, str) or not method:
            raise JsonRpcError(INVALID_REQUEST, "method must be a non-empty string")
        rpc_id = value.get("id")
        has_id = "id" in value
        if has_id and (isinstance(rpc_id, bool) or not isinstance(rpc_id, str | int)):
            raise JsonRpcError(INVALID_REQUEST, "id must be a string or an integer")
        params = value.get("params")
        if "params" in value and not isinstance(params, dict):
            raise JsonRpcError(INVALID_PARAMS, "params must be an object (MCP uses named params)")
        if method not in SERVED_METHODS:
            raise JsonRpcError(METHOD_NOT_FOUND, f"method {method[:60]!a} is not served by hoopgw")
        if has_id == method.startswith("notifications/"):
            kind = "a notification" if has_id else "a request"
            raise JsonRpcError(INVALID_REQUEST, f"{method} must be sent as {kind}")
        return Message(method, params, rpc_id, has_id)


class SqlTools:
    """Which tools execute SQL, and in which argument: `hoopgw_mcp_sql_tools`.

    Each entry is `TOOL_GLOB:ARGUMENT`. A tool matching a glob whose arguments
    hold that argument executes SQL: the argument must be a string, spelled in
    exactly that case. A tool named without a wildcard must carry it.
    """

    def __init__(self, entries: Sequence[str] = DEFAULT_SQL_TOOLS) -> None:
        self.entries: list[tuple[str, re.Pattern[str], str]] = []
        for entry in entries:
            glob, colon, argument = entry.rpartition(":")
            if not colon or not glob or not argument:
                raise ValueError(f"{entry!r} must be TOOL_GLOB:ARGUMENT, e.g. 'SYSTEM_*:sql'")
            self.entries.append((glob, re.compile(fnmatch.translate(glob)), argument))

    def sql_of(self, tool: str, arguments: dict[str, Any]) -> str | None:
        """The SQL the call runs, None when it runs none; raises JsonRpcError when unreadable."""
        for glob, pattern, argument in self.entries:
            if pattern.match(tool) is None:
                continue
            for key in arguments:
                if key != argument and key.casefold() == argument.casefold():
                    raise JsonRpcError(
                        INVALID_PARAMS,
                        f"the arguments spell {argument} as {key[:40]!a}; only {argument} is read",
                    )
            if argument not in arguments:
                if glob == tool:
                    raise JsonRpcError(INVALID_PARAMS, f"{tool} takes its SQL in {argument}")
                continue
            sql = arguments[argument]
            if not isinstance(sql, str):
                raise JsonRpcError(INVALID_PARAMS, f"{argument} must be a string of SQL")
            return sql
        return None


def tool_call(message: Message, server: str, sql_tools: SqlTools) -> ToolCall:
    params = message.params or {}
    name = params.get("name")
    if not isinstance(name, str) or not name:
        raise JsonRpcError(INVALID_PARAMS, "tools/call needs the tool's name")
    arguments = params.get("arguments", {})
    if not isinstance(arguments, dict):
        raise JsonRpcError(INVALID_PARAMS, "tools/call arguments must be an object")
    return ToolCall(server, name, arguments, message.rpc_id, sql_tools.sql_of(name, arguments))


def server_name(path: str) -> str:
    """`DB.SCHEMA.NAME` from `/api/v2/databases/DB/schemas/SCHEMA/mcp-servers/NAME`."""
    parts = path.partition("?")[0].strip("/").split("/")
    return f"{parts[3]}.{parts[5]}.{parts[7]}".upper()


_exchanges: weakref.WeakKeyDictionary[http.HTTPFlow, Exchange] = weakref.WeakKeyDictionary()


def sql_tool_call(flow: http.HTTPFlow) -> ToolCall | None:
    """The SQL-executing tool call a flow carries, for addons/approval.py to hold."""
    exchange = _exchanges.get(flow)
    return exchange.sql_call if exchange is not None else None


# --- answers -------------------------------------------------------------------------------


def error_object(rpc_id: Any, code: int, message: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": rpc_id,
        "error": {"code": code, "message": message, "data": data},
    }


class JsonRpcAnswers:
    """The gateway's own answers to an MCP client: JSON-RPC errors it shows the agent."""

    @staticmethod
    def errors(
        exchange: Exchange | None, code: int, message: str, data: dict[str, Any]
    ) -> http.Response:
        """One error per request of the body (a batch gets an array), HTTP 200 with JSON."""
        if exchange is None or not exchange.ids:
            payload: Any = error_object(None, code, message, data)
        else:
            errors = [error_object(rpc_id, code, message, data) for rpc_id in exchange.ids]
            payload = errors if exchange.batch else errors[0]
        return http.Response.make(200, orjson.dumps(payload), {"content-type": "application/json"})

    @staticmethod
    def unreadable(error: JsonRpcError) -> http.Response:
        """A body that is not JSON-RPC: 400, as a streamable-HTTP server answers it."""
        payload = error_object(None, error.code, f"hoopgw refused the request: {error}", {})
        return http.Response.make(400, orjson.dumps(payload), {"content-type": "application/json"})


# --- server answers ------------------------------------------------------------------------


class SseError(ValueError):
    """An event stream the gateway cannot read within its bounds."""


@dataclass(slots=True)
class SseEvent:
    data: str
    event: str | None = None
    event_id: str | None = None


class SseReader:
    """Server-sent events read incrementally, each event bounded (`feed` as bytes arrive)."""

    _LINE = re.compile(rb"\r\n|\r|\n")

    def __init__(self, max_event_bytes: int = MAX_SSE_EVENT_BYTES) -> None:
        self.max_event_bytes = max_event_bytes
        self._pending = b""
        self._data: list[str] = []
        self._size = 0
        self._event: str | None = None
        self._id: str | None = None
        self.events: list[SseEvent] = []

    def feed(self, chunk: bytes) -> None:
        buffer = self._pending + chunk
        start = 0
        for match in self._LINE.finditer(buffer):
            if match.group() == b"\r" and match.end() == len(buffer):
                break  # a CR at the end may be the first half of CRLF
            self._line(buffer[start : match.start()])
            start = match.end()
        self._pending = buffer[start:]
        if len(self._pending) + self._size > self.max_event_bytes:
            raise SseError(f"an event over {self.max_event_bytes} bytes")

    def finish(self) -> list[SseEvent]:
        if self._pending:
            self._line(self._pending)
            self._pending = b""
        self._line(b"")
        return self.events

    def _line(self, raw: bytes) -> None:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SseError("an event that is not UTF-8") from None
        if not line:
            if self._data:
                if len(self.events) >= MAX_SSE_EVENTS:
                    raise SseError(f"more than {MAX_SSE_EVENTS} events")
                self.events.append(SseEvent("\n".join(self._data), self._event, self._id))
            self._data, self._size, self._event = [], 0, None
            return
        if line.startswith(":"):
            return
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
            self._size += len(raw)
            if self._size > self.max_event_bytes:
                raise SseError(f"an event over {self.max_event_bytes} bytes")
        elif name == "event":
            self._event = value
        elif name == "id":
            self._id = value


@dataclass(slots=True)
class ServerAnswer:
    """The JSON-RPC messages of a server's answer, and how to write them back."""

    messages: list[Any]
    events: list[SseEvent] | None = None  # None: a JSON body
    batch: bool = False

    def encode(self) -> bytes:
        if self.events is None:
            return orjson.dumps(self.messages if self.batch else self.messages[0])
        lines: list[str] = []
        for event, message in zip(self.events, self.messages, strict=True):
            if event.event_id is not None:
                lines.append(f"id: {event.event_id}")
            if event.event is not None:
                lines.append(f"event: {event.event}")
            data = event.data if message is None else orjson.dumps(message).decode()
            lines.extend(f"data: {line}" for line in data.split("\n"))
            lines.append("")
        return ("\n".join(lines) + "\n").encode()


def read_server_answer(content_type: str, body: bytes) -> ServerAnswer | None:
    """The messages of an answer, or None when it has none (202, an empty body)."""
    media = content_type.partition(";")[0].strip().lower()
    if media == "text/event-stream":
        reader = SseReader()
        reader.feed(body)
        events = reader.finish()
        messages: list[Any] = []
        for event in events:
            try:
                messages.append(orjson.loads(event.data))
            except orjson.JSONDecodeError:
                messages.append(None)  # not a JSON-RPC message: passed on as it came
        return ServerAnswer(messages, events)
    if not body.strip():
        return None
    value = orjson.loads(body)
    if isinstance(value, list):
        return ServerAnswer(value, batch=True)
    return ServerAnswer([value])


# --- masking -------------------------------------------------------------------------------

_TEXT_COLUMN: Final = [{"name": "text", "type": "text"}]


class ToolResultMasking:
    """A tool result masked per the caller's plan, in place: rows, structured content, text.

    A result that carries rows as the SQL API does (`resultSetMetaData.rowType`
    and `data`) is masked column by column like an SQL API answer; any other
    string, in `structuredContent` or a text block, is one text value the
    detectors look through. Content the gateway cannot read (images, audio,
    binary resources) is withheld from a caller with masking rules.
    """

    def mask(self, result: Any, plan: MaskPlan, outcome: Outcome) -> None:
        if not isinstance(result, dict):
            return
        structured = result.get("structuredContent")
        if isinstance(structured, dict | list):
            self._document(structured, plan, outcome)
        content = result.get("content")
        if not isinstance(content, list):
            return
        for block in content:
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            if kind == "text" and isinstance(block.get("text"), str):
                block["text"] = self._text(block["text"], plan, outcome)
            elif kind == "resource" and isinstance(block.get("resource"), dict):
                resource = block["resource"]
                if isinstance(resource.get("text"), str):
                    resource["text"] = self._text(resource["text"], plan, outcome)
                elif "blob" in resource:
                    raise _Unmaskable("a binary resource")
            elif kind in ("image", "audio"):
                raise _Unmaskable(f"{kind} content")

    def _text(self, text: str, plan: MaskPlan, outcome: Outcome) -> str:
        try:
            document = orjson.loads(text)
        except orjson.JSONDecodeError:
            document = None
        if isinstance(document, dict | list):
            before = outcome.changed
            outcome.changed = False
            self._document(document, plan, outcome)
            changed, outcome.changed = outcome.changed, before or outcome.changed
            return orjson.dumps(document).decode() if changed else text
        rows = [[text]]
        mask_rows(_TEXT_COLUMN, rows, plan, outcome)
        return rows[0][0] if isinstance(rows[0][0], str) else ""

    def _document(self, document: Any, plan: MaskPlan, outcome: Outcome) -> None:
        if isinstance(document, dict):
            metadata = document.get("resultSetMetaData")
            rows = document.get("data")
            if isinstance(metadata, dict) and isinstance(rows, list):
                row_type = metadata.get("rowType")
                if isinstance(row_type, list):
                    mask_rows(row_type, rows, plan, outcome)
                    return
            for key, value in document.items():
                if isinstance(value, str):
                    rows = [[value]]
                    mask_rows([{"name": str(key), "type": "text"}], rows, plan, outcome)
                    document[key] = rows[0][0]
                else:
                    self._document(value, plan, outcome)
        elif isinstance(document, list):
            for index, value in enumerate(document):
                if isinstance(value, str):
                    document[index] = self._text(value, plan, outcome)
                else:
                    self._document(value, plan, outcome)


class _Unmaskable(ValueError):
    """A result part masking cannot read, so it cannot vouch for it."""


# --- records -------------------------------------------------------------------------------


class McpRecords:
    """One `mcp_call` record per client message: method, tool, arguments, result or error."""

    def __init__(self, body_limit: int = 64 * 1024) -> None:
        self.body_limit = body_limit

    def build(
        self,
        flow: http.HTTPFlow,
        state: FlowState,
        exchange: Exchange,
        answers: dict[str, Any],
        *,
        detections: list[dict[str, Any]] | None = None,
    ) -> list[dict[str, Any]]:
        peer = flow.client_conn.peername
        client = Client(
            address=f"{peer[0]}:{peer[1]}" if peer else None,
            application=state.client_app,
            version=state.client_version,
        )
        calls = {repr(call.rpc_id): call for call in exchange.calls}
        records = []
        for message in exchange.messages:
            record = new_record(
                RecordKind.MCP_CALL,
                state.session_id,
                client,
                state.caller.as_record() if state.caller else None,
                flow_id=flow.id,
                server=exchange.server,
                rpc_method=message.method,
                rpc_id=message.rpc_id if message.has_id else None,
            )
            call = calls.get(repr(message.rpc_id)) if message.method == "tools/call" else None
            if call is not None:
                record["tool"] = call.name
                record["arguments"] = self._bounded(call.arguments)
                if call.sql is not None:
                    record["sql"] = redaction.redact_sql(call.sql)[: self.body_limit]
                    if state.guardrail is not None:
                        record["guardrail"] = state.guardrail
                    if detections:
                        record["detections"] = detections
            answer = answers.get(repr(message.rpc_id)) if message.has_id else None
            if isinstance(answer, dict):
                if "error" in answer:
                    record["error"] = self._bounded(answer["error"])
                else:
                    record["result"] = self._bounded(answer.get("result"))
            if state.refusal is not None:
                refusal = state.refusal.as_record()
                refusal["reason"] = redaction.mask_credential_values(refusal["reason"])
                record["refusal"] = refusal
            approval = flow.metadata.get("hoopgw_approval")
            if isinstance(approval, dict):
                record["approval_id"] = approval.get("id")
            records.append(record)
        return records

    def _bounded(self, value: Any) -> dict[str, Any]:
        return redaction.body_for_record(orjson.dumps(value), self.body_limit)


# --- the addon -----------------------------------------------------------------------------


class McpCalls:
    """Checks, answers and records the calls of an agent to a Snowflake-managed MCP server."""

    def __init__(self, guardrails: Guardrails, masking: Masking) -> None:
        self.guardrails = guardrails
        self.masking = masking
        self.sql_tools = SqlTools()
        self.results = ToolResultMasking()

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "hoopgw_mcp_sql_tools",
            Sequence[str],
            list(DEFAULT_SQL_TOOLS),
            """
            Which tools of a Snowflake-managed MCP server execute SQL, as
            TOOL_GLOB:ARGUMENT entries (the argument holds the SQL). Their
            statements pass the guardrails policy, approval and masking as on
            the query endpoint. The default, "*:sql", covers Snowflake's
            SYSTEM_EXECUTE_SQL tools, whatever name the server gives them.
            """,
        )

    def configure(self, updated: set[str]) -> None:
        if "hoopgw_mcp_sql_tools" in updated:
            try:
                self.sql_tools = SqlTools(ctx.options.hoopgw_mcp_sql_tools)
            except ValueError as exc:
                raise exceptions.OptionsError(f"hoopgw_mcp_sql_tools: {exc}") from None

    async def request(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None or state.endpoint is not Endpoint.MCP_SERVER or state.answered:
            return
        server = server_name(flow.request.path)
        try:
            exchange = JsonRpcReader.read(state.request_body or b"", server)
            exchange.calls = [
                tool_call(message, server, self.sql_tools)
                for message in exchange.messages
                if message.method == "tools/call"
            ]
        except JsonRpcError as exc:
            refuse(flow, state, protocol.CODE_GATEWAY_PROTOCOL, str(exc), SOURCE)
            flow.response = JsonRpcAnswers.unreadable(exc)
            return
        _exchanges[flow] = exchange
        if sum(call.sql is not None for call in exchange.calls) > 1:
            reason = "send each SQL tool call in a request of its own, not several in one batch"
            refuse(flow, state, protocol.CODE_GATEWAY_PROTOCOL, reason, SOURCE)
            return
        groups = state.caller.groups if state.caller else ()
        policy = self.guardrails.policy
        for call in exchange.calls:
            decision = policy.check_mcp_tool(server, call.name, groups)
            if decision.blocked:
                state.guardrail = decision.as_record()
                refuse(flow, state, protocol.CODE_GATEWAY_POLICY, decision.reason or "", SOURCE)
                return
        call = exchange.sql_call
        if call is not None and call.sql is not None:
            decision = await self.guardrails.check_sql(state, call.sql)
            if decision.blocked:
                refuse(
                    flow,
                    state,
                    protocol.CODE_GATEWAY_POLICY,
                    decision.reason or "refused by policy",
                    names.GUARDRAILS,
                )

    def response(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        exchange = _exchanges.get(flow)
        if state is None or exchange is None or flow.response is None:
            return
        held = flow.metadata.get("hoopgw_approval")
        if state.refusal is not None or held:
            self._answer_refused(flow, state, exchange, held)
        else:
            self._read_answer(flow, state, exchange)

    def _answer_refused(
        self, flow: http.HTTPFlow, state: FlowState, exchange: Exchange, held: Any
    ) -> None:
        if state.refusal is not None:
            code = state.refusal.code
            text = f"hoopgw {code}: {state.refusal.reason}"
            data: dict[str, Any] = {"hoopgw_code": code}
            rpc = rpc_code(code)
        else:
            approval_id = held.get("id") if isinstance(held, dict) else None
            text = (
                f"hoopgw holds this call for review (approval {approval_id}): "
                f"{(state.guardrail or {}).get('reason')}. Retry the identical call once an "
                "approver has approved it."
            )
            data = {"hoopgw_approval": approval_id, "state": "pending"}
            rpc = HELD_ERROR
        flow.response = JsonRpcAnswers.errors(exchange, rpc, text, data)
        state.response_body = flow.response.content
        answers = {repr(rpc_id): error_object(rpc_id, rpc, text, data) for rpc_id in exchange.ids}
        self._record(flow, state, exchange, answers)

    def _read_answer(self, flow: http.HTTPFlow, state: FlowState, exchange: Exchange) -> None:
        response = flow.response
        assert response is not None
        plan = self.masking.plan_for(state)
        body = state.response_body if state.response_body is not None else b""
        try:
            answer = read_server_answer(response.headers.get("content-type", ""), body)
        except (SseError, orjson.JSONDecodeError) as exc:
            if plan.active and 200 <= response.status_code < 300:
                self._withhold(flow, state, exchange, f"the answer could not be read ({exc})")
                return
            logger.warning("hoopgw: unreadable MCP answer on %s: %s", flow.id, exc)
            self._record(flow, state, exchange, {})
            return
        if answer is None:
            self._record(flow, state, exchange, {})
            return
        outcome = Outcome()
        methods = {repr(m.rpc_id): m.method for m in exchange.messages if m.has_id}
        by_id: dict[str, Any] = {}
        for message in answer.messages:
            if not isinstance(message, dict):
                continue
            method = methods.get(repr(message.get("id")))
            by_id[repr(message.get("id"))] = message
            if method == "tools/list":
                outcome.changed |= self._callable_tools_only(state, exchange, message)
            elif plan.active and method not in ("initialize", "ping"):
                # any other answer may hold a tool's result, whatever id the server gave it
                try:
                    self.results.mask(message.get("result"), plan, outcome)
                except _Unmaskable as exc:
                    self._withhold(flow, state, exchange, f"it holds {exc}")
                    return
        if plan.active and answer.events is not None:
            # an event that is not JSON-RPC cannot be vouched for either
            answer.events = [e for e, m in zip(answer.events, answer.messages, strict=True) if m]
            answer.messages = [message for message in answer.messages if message]
            outcome.changed = True
        if outcome.detections:
            state.detections = outcome.as_record()
        withheld = outcome.withheld
        if withheld is not None:
            reason = (
                f"the result holds {withheld.kind} data in {withheld.column} and your rules "
                "withhold it; the tool has run"
            )
            self._withhold(flow, state, exchange, reason)
            return
        if outcome.changed:
            encoded = answer.encode()
            response.content = encoded
            state.response_body = encoded
        self._record(flow, state, exchange, by_id, detections=state.detections)

    def _callable_tools_only(self, state: FlowState, exchange: Exchange, message: Any) -> bool:
        """Leave out of a tools/list answer the tools the caller's rules do not allow."""
        result = message.get("result")
        tools = result.get("tools") if isinstance(result, dict) else None
        if not isinstance(tools, list):
            return False
        groups = state.caller.groups if state.caller else ()
        policy = self.guardrails.policy
        kept = [
            tool
            for tool in tools
            if isinstance(tool, dict)
            and isinstance(tool.get("name"), str)
            and not policy.check_mcp_tool(exchange.server, tool["name"], groups).blocked
        ]
        if len(kept) == len(tools):
            return False
        result["tools"] = kept
        return True

    def _withhold(
        self, flow: http.HTTPFlow, state: FlowState, exchange: Exchange, reason: str
    ) -> None:
        code = protocol.CODE_GATEWAY_SENSITIVE
        text = f"hoopgw {code}: result withheld: {reason}"
        data = {"hoopgw_code": code}
        flow.response = JsonRpcAnswers.errors(exchange, rpc_code(code), text, data)
        state.response_body = flow.response.content
        answers = {
            repr(rpc_id): error_object(rpc_id, rpc_code(code), text, data)
            for rpc_id in exchange.ids
        }
        self._record(flow, state, exchange, answers, detections=state.detections)

    def _record(
        self,
        flow: http.HTTPFlow,
        state: FlowState,
        exchange: Exchange,
        answers: dict[str, Any],
        *,
        detections: list[dict[str, Any]] | None = None,
    ) -> None:
        recording = ctx.master.addons.get("recording")
        if state.session_id is None:
            return  # refused before a caller was verified: counted by the recorder's tally
        if recording is None:
            logger.error("hoopgw: no recording; the mcp_call records of %s are lost", flow.id)
            return
        records = McpRecords(recording.body_limit).build(
            flow, state, exchange, answers, detections=detections
        )
        recording.append_quietly(records)
