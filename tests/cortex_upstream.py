"""Cortex REST as the strict upstream answers it: Analyst, Search and Agents, in Snowflake's shapes.

fakesnow has none of these. The shapes follow Snowflake's REST API reference:

- Cortex Analyst `POST /api/v2/cortex/analyst/message`: `messages[]` with
  `content[]` items in, `message.content[]` items of type `text`, `sql`
  (`statement`) and `suggestions` out, with `request_id`;
- Cortex Search `POST /api/v2/databases/{db}/schemas/{s}/cortex-search-services/{name}:query`:
  `query`, `columns`, `filter`, `limit` in, `results[]` (the requested columns)
  and `request_id` out;
- Cortex Agents `POST .../agents/{name}:run`: server-sent events, `event:` and
  `data:` lines, `response.status`, `response.text.delta`, `response.tool_result`
  and the final `response`.

Like the SQL API emulation, every call must carry the gateway's key-pair JWT
(`X-Snowflake-Authorization-Token-Type: KEYPAIR_JWT`), verified with the key
registered for the user it names. An agents:run stream can be held after its
first event (`hold_agents`) until the test releases it: a test proves the first
event reached the client while the upstream had not finished.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
import weakref
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any

from tests import stack

if TYPE_CHECKING:
    from tests.strict_upstream import StrictUpstream

_IDENT = r"[A-Za-z_][A-Za-z0-9_$]*"
_IN_SCHEMA = rf"/api/v2/databases/({_IDENT})/schemas/({_IDENT})"
ANALYST = re.compile(r"/api/v2/cortex/analyst/message")
SEARCH = re.compile(rf"{_IN_SCHEMA}/cortex-search-services/({_IDENT}):query")
AGENTS = re.compile(rf"{_IN_SCHEMA}/agents/({_IDENT}):run")

GENERATED_SQL = (
    "SELECT region, SUM(revenue) AS revenue FROM SALES.PUBLIC.DAILY_REVENUE "
    "WHERE day >= DATEADD(day, -30, CURRENT_DATE) GROUP BY region"
)
SUPPORT_TICKETS: tuple[dict[str, Any], ...] = (
    {
        "TICKET_ID": "T-1001",
        "TRANSCRIPT": "Customer could not log in after the password reset",
        "REGION": "EMEA",
        "CONTACT": "ada@example.com",
    },
    {
        "TICKET_ID": "T-1002",
        "TRANSCRIPT": "Refund requested for a duplicate charge",
        "REGION": "AMER",
        "CONTACT": "grace@example.com",
    },
)
AGENT_CONTACT = "ada@example.com"


@dataclass
class CortexCall:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class CortexUpstream:
    """One strict upstream's Cortex side: what it received, and the agents:run gate."""

    calls: list[CortexCall] = field(default_factory=list)
    agents_gate: threading.Event = field(default_factory=threading.Event)
    agents_finished: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.agents_gate.set()

    def hold_agents(self) -> None:
        """The next agents:run streams stop after their first event until `release_agents`."""
        self.agents_finished.clear()
        self.agents_gate.clear()

    def release_agents(self) -> None:
        self.agents_gate.set()


_emulations: weakref.WeakKeyDictionary[StrictUpstream, CortexUpstream] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def emulation(upstream: StrictUpstream) -> CortexUpstream:
    with _lock:
        return _emulations.setdefault(upstream, CortexUpstream())


def serves(path: str) -> bool:
    route = path.partition("?")[0]
    return any(pattern.fullmatch(route) for pattern in (ANALYST, SEARCH, AGENTS))


def serve(upstream: StrictUpstream, handler: BaseHTTPRequestHandler) -> None:
    """Answer one Cortex call the strict upstream received, as Snowflake would."""
    body = stack.read_body(handler)
    _note_received(upstream, handler, body)
    headers = {name.lower(): value for name, value in handler.headers.items()}
    route = handler.path.partition("?")[0]
    cortex = emulation(upstream)
    if handler.command != "POST":
        _json(handler, 405, {"code": "405", "message": "Method not allowed"})
        return
    authorization = headers.get("authorization", "")
    if (
        headers.get("x-snowflake-authorization-token-type", "").upper() != "KEYPAIR_JWT"
        or not authorization.startswith("Bearer ")
        or upstream._keypair_jwt_ok(authorization.removeprefix("Bearer ")) is None
    ):
        _json(handler, 401, {"code": "390100", "message": "Incorrect username or password."})
        return
    try:
        request = json.loads(body)
    except ValueError:
        _json(handler, 400, {"code": "390400", "message": "Invalid JSON body"})
        return
    with _lock:
        cortex.calls.append(CortexCall(handler.path, headers, request))
    if ANALYST.fullmatch(route):
        _analyst(handler, request)
    elif SEARCH.fullmatch(route):
        _search(handler, request)
    elif AGENTS.fullmatch(route):
        _agents(handler, cortex)


def _note_received(upstream: StrictUpstream, handler: BaseHTTPRequestHandler, body: bytes) -> None:
    """In the strict upstream's own log too, which tests read to prove nothing got through."""
    from tests.strict_upstream import Received, _canonical_header  # this module is its import

    headers = {_canonical_header(name): value for name, value in handler.headers.items()}
    with upstream._lock:
        upstream._state.received.append(Received(handler.command, handler.path, headers, body))


def _analyst(handler: BaseHTTPRequestHandler, request: dict[str, Any]) -> None:
    if not (request.get("semantic_model_file") or request.get("semantic_view")):
        _json(handler, 400, {"message": "semantic_model_file or semantic_view is required"})
        return
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        _json(handler, 400, {"message": "messages must be a non-empty array"})
        return
    question = " ".join(
        item.get("text", "")
        for item in messages[-1].get("content", [])
        if isinstance(item, dict) and item.get("type") == "text"
    )
    if "weather" in question.lower():
        content: list[dict[str, Any]] = [
            {"type": "text", "text": "Your question is unclear. Did you mean:"},
            {
                "type": "suggestions",
                "suggestions": ["What was the revenue by region last month?"],
            },
        ]
    else:
        content = [
            {"type": "text", "text": f"This is our interpretation of your question: {question}"},
            {
                "type": "sql",
                "statement": GENERATED_SQL,
                "confidence": {"verified_query_used": None},
            },
        ]
    _json(
        handler,
        200,
        {
            "message": {"role": "analyst", "content": content},
            "request_id": str(uuid.uuid4()),
            "warnings": [],
            "response_metadata": {"model_names": ["claude-3-5-sonnet"]},
        },
    )


def _search(handler: BaseHTTPRequestHandler, request: dict[str, Any]) -> None:
    query = request.get("query")
    columns = request.get("columns") or ["TRANSCRIPT"]
    if not isinstance(query, str) or not isinstance(columns, list):
        _json(handler, 400, {"message": "query must be a string and columns an array"})
        return
    region = (request.get("filter") or {}).get("@eq", {}).get("REGION")
    words = {word.lower() for word in query.split()}
    hits = [
        ticket
        for ticket in SUPPORT_TICKETS
        if (region is None or ticket["REGION"] == region)
        and words & {word.lower() for word in ticket["TRANSCRIPT"].split()}
    ][: int(request.get("limit") or 10)]
    results = [{name: ticket[name] for name in columns if name in ticket} for ticket in hits]
    _json(handler, 200, {"results": results, "request_id": str(uuid.uuid4())})


def _agents(handler: BaseHTTPRequestHandler, cortex: CortexUpstream) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.send_header("Cache-Control", "no-cache")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    text = f"The ticket was raised by {AGENT_CONTACT}."
    tool_result = {
        "content_index": 1,
        "tool_use_id": "toolu_01",
        "type": "cortex_search",
        "name": "support_search",
        "content": [{"type": "json", "json": {"searchResults": [dict(SUPPORT_TICKETS[0])]}}],
        "status": "success",
    }
    _event(handler, "response.status", {"status": "planning", "message": "Planning the next steps"})
    if not cortex.agents_gate.wait(timeout=60):
        return
    _event(handler, "response.tool_result", tool_result)
    _event(handler, "response.text.delta", {"content_index": 2, "text": text[:20]})
    _event(handler, "response.text.delta", {"content_index": 2, "text": text[20:]})
    _event(
        handler,
        "response",
        {
            "role": "assistant",
            "content": [
                {"type": "tool_result", "tool_result": tool_result},
                {"type": "text", "text": text},
            ],
        },
    )
    _chunk(handler, b"")
    cortex.agents_finished.set()


def _event(handler: BaseHTTPRequestHandler, name: str, data: dict[str, Any]) -> None:
    _chunk(handler, f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())


def _chunk(handler: BaseHTTPRequestHandler, data: bytes) -> None:
    handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
    handler.wfile.flush()


def _json(handler: BaseHTTPRequestHandler, status: int, payload: dict[str, Any]) -> None:
    stack.send_answer(handler, status, json.dumps(payload).encode(), "application/json")
