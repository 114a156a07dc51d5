"""A recorded session as a mitmproxy flow file, for `mitmweb -r FILE`.

Each flow is rebuilt from its records: the request (or refusal) record gives the
request, the response record the response, an error record the flow's error.
Headers and bodies are exactly as recorded, so secrets stay redacted; bodies the
recorder truncated are written as recorded (a truncated JSON body keeps its
structure with its largest arrays and strings cut) and the flow's comment says
so. Flows carry the annotations of live flows (addons/inspection.py): the
SQL's first line as comment, `metadata["hoopgw"]`, and a mark on blocked and
failed statements; a statement held for review and the polls for its decision
are marked as live (addons/approval.py), a poll's comment ends `approval <id>:
waiting for a decision` (or the decision it got). Two additions suit `hoopgw inspect`,
whose flow list shows comments instead of URLs: flows without SQL are labelled
(login, logout, ...), and a marked flow's comment starts with its mark
(⛔ blocked, ❌ failed, ⏳ held).
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from mitmproxy import connection, flow, http, io

from hoopgw.recorder.annotations import (
    BLOCKED_MARK,
    FAILED_MARK,
    HELD_FOR_REVIEW,
    HELD_MARK,
    SENSITIVE_MARK,
    WAITING_FOR_DECISION,
    approval_comment,
    detections_note,
    refusal_comment,
    statement_comment,
)
from hoopgw.recorder.catalog import Archive
from hoopgw.recorder.coerce import mapping, number
from hoopgw.recorder.flows import Flow, SessionRecords
from hoopgw.recorder.records import query_id_in_path
from hoopgw.recorder.schema import STATEMENT_KINDS, RecordKind

DEFAULT_HOST = "snowflake.invalid"
PRIVATE_FILE_MODE = 0o600

# List labels for flows without SQL, so `hoopgw inspect` can show the comment instead of the URL.
_EVENTS = {
    "logout": "logout",
    "token_request": "session token renewal",
    "heartbeat": "heartbeat",
    "telemetry": "driver telemetry",
    "monitoring": "query status",
    "result": "query result",
    "authenticator": "authenticator request",
}
_MARK_SYMBOLS = {BLOCKED_MARK: "⛔", FAILED_MARK: "❌", SENSITIVE_MARK: "🔒", HELD_MARK: "⏳"}
_FLOW_ID = re.compile(r"[0-9a-f-]{1,64}")
_HOST = re.compile(r"[0-9A-Za-z._:-]{1,253}")
_DEFAULT_PORTS = {"https": 443, "http": 80}


@dataclass(frozen=True)
class ExportResult:
    session_id: str
    flows: int
    truncated_bodies: int


def export_session(
    archive: Archive, session_id: str, destination: Path, *, overwrite: bool = False
) -> ExportResult:
    """Write session `session_id` to `destination` as a mitmproxy flow file, mode 0600.

    Raises what `Archive.read_session` raises (InvalidSessionId, SessionNotFound, ...),
    and FileExistsError when `destination` exists and `overwrite` is false. The
    file is written next to `destination` first and then linked or renamed into
    place, so a reader never sees half a file.
    """
    flows = records_to_flows(archive.read_session(session_id))
    temporary = destination.with_name(f".{destination.name}.partial")
    temporary.unlink(missing_ok=True)
    try:
        # 0600 from the start: a flow file holds query results, like the archive
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
        with os.fdopen(descriptor, "wb") as file:
            write_flows(flows, file)
        if overwrite:
            temporary.replace(destination)
        else:
            # a hard link fails if the destination exists, where a rename would replace it
            os.link(temporary, destination)
    finally:
        temporary.unlink(missing_ok=True)
    return _result(session_id, flows)


def export_session_to(archive: Archive, session_id: str, file: BinaryIO) -> ExportResult:
    """Write session `session_id` as a flow file to an open binary stream (standard output)."""
    flows = records_to_flows(archive.read_session(session_id))
    write_flows(flows, file)
    return _result(session_id, flows)


def _result(session_id: str, flows: list[http.HTTPFlow]) -> ExportResult:
    truncated = sum(len(mapping(f.metadata["hoopgw"].get("truncated"))) for f in flows)
    return ExportResult(session_id, len(flows), truncated)


def write_flows(flows: Iterable[http.HTTPFlow], file: BinaryIO) -> None:
    writer = io.FlowWriter(file)
    for item in flows:
        writer.add(item)


def records_to_flows(records: Iterable[dict[str, Any]]) -> list[http.HTTPFlow]:
    """One HTTPFlow per recorded flow id, in the order their requests were recorded."""
    grouped = SessionRecords.group(records)
    session = grouped.last(RecordKind.SESSION_START) or {}
    held = _Held.read(grouped.records)
    flows = []
    for recorded in grouped.requested(_is_http_request):
        parts = _Parts.of(recorded)
        flows.append(_flow(recorded.flow_id, parts, session))
        held.annotate(flows[-1], parts.request)
    return flows


@dataclass(frozen=True, slots=True)
class _Held:
    """Statements the gateway held for review, and the polls that waited for a decision,
    annotated as the live gateway annotates them (addons/approval.py): the mark, the
    poll's comment, `metadata["hoopgw_approval"]`; a statement's comment stays its SQL."""

    by_flow: dict[str, str]
    """Approval id by the flow id of the held statement or of a poll for its decision."""
    statements: frozenset[str]
    """The flow ids of the held statements."""
    rules: dict[str, Any]
    """The rule that sent each approval to review."""
    deciding_poll: dict[str, str]
    """The outcome of an approval by the flow id of the last poll, the one it answered."""

    @classmethod
    def read(cls, records: list[dict[str, Any]]) -> _Held:
        by_flow: dict[str, str] = {}
        rules: dict[str, Any] = {}
        outcomes: dict[str, str] = {}
        for record in records:
            approval_id = record.get("approval_id")
            if not isinstance(approval_id, str):
                continue
            if record.get("kind") == RecordKind.APPROVAL_REQUEST:
                by_flow.setdefault(str(record.get("flow_id")), approval_id)
                rules.setdefault(approval_id, record.get("rule"))
            elif record.get("kind") == RecordKind.APPROVAL_DECISION and not record.get("flow_id"):
                outcomes[approval_id] = str(record.get("outcome"))
        statements = frozenset(by_flow)
        last_poll: dict[str, str] = {}
        for record in records:
            polled = query_id_in_path(str(record.get("path") or ""))
            if record.get("kind") == RecordKind.REQUEST and polled in rules:
                by_flow.setdefault(str(record.get("flow_id")), polled)
                last_poll[polled] = str(record.get("flow_id"))
        deciding = {last_poll[i]: outcome for i, outcome in outcomes.items() if i in last_poll}
        return cls(by_flow, statements, rules, deciding)

    def annotate(self, result: http.HTTPFlow, request: dict[str, Any]) -> None:
        flow_id = str(request.get("flow_id"))
        approval_id = self.by_flow.get(flow_id)
        if approval_id is None:
            return
        held = flow_id in self.statements
        what = HELD_FOR_REVIEW if held else self.deciding_poll.get(flow_id, WAITING_FOR_DECISION)
        result.metadata["hoopgw_approval"] = {
            "id": approval_id,
            "rule": self.rules.get(approval_id),
            "state": what,
        }
        comment = result.comment
        if not held:
            note = approval_comment(approval_id, what)
            comment = " · ".join(part for part in (comment, note) if part)
        if not result.marked:
            result.marked = HELD_MARK
            comment = f"{_MARK_SYMBOLS[HELD_MARK]} {comment}"
        result.comment = comment


def _is_http_request(record: dict[str, Any]) -> bool:
    """A request record an HTTP request can be rebuilt from."""
    return "method" in record


@dataclass(frozen=True, slots=True)
class _Parts:
    """The records one exported flow is rebuilt from."""

    request: dict[str, Any]
    refusal: dict[str, Any] | None
    """A refusal record besides the request (the gateway refused after recording it)."""
    response: dict[str, Any] | None
    error: dict[str, Any] | None

    @classmethod
    def of(cls, recorded: Flow) -> _Parts:
        request = recorded.first(STATEMENT_KINDS, _is_http_request)
        assert request is not None
        refusals = (r for r in recorded.records if r.get("kind") == RecordKind.REFUSAL)
        return cls(
            request=request,
            refusal=next((record for record in refusals if record is not request), None),
            response=recorded.first({RecordKind.RESPONSE}),
            error=recorded.first({RecordKind.ERROR}),
        )


def _flow(flow_id: str, parts: _Parts, session: dict[str, Any]) -> http.HTTPFlow:
    recorded = parts.request
    started = number(recorded.get("ts"), 0.0)
    client = connection.Client(
        peername=_address(mapping(recorded.get("client")).get("address")) or ("0.0.0.0", 0),
        sockname=("0.0.0.0", 0),
        timestamp_start=started,
    )
    request = _request(recorded, session)
    request.timestamp_start = request.timestamp_end = started
    server = connection.Server(address=(request.host, request.port))
    server.timestamp_start = server.timestamp_tcp_setup = started
    result = http.HTTPFlow(client, server)
    if _FLOW_ID.fullmatch(flow_id):
        result.id = flow_id
    result.request = request

    answer = parts.response
    if answer is not None:
        result.response = _response(answer, started)
    error = parts.error
    if error is not None and answer is None:
        result.error = flow.Error(_error_text(error), number(error.get("ts"), 0.0) or started)

    refusal = mapping(recorded.get("refusal")) or mapping((parts.refusal or {}).get("refusal"))
    if refusal and answer is None and error is None:
        result.error = flow.Error(refusal_comment(refusal.get("by"), refusal.get("reason")))

    notes = (("request", _truncation(recorded.get("body"))),)
    if answer is not None:
        notes += (("response", _truncation(answer.get("body"))),)
    truncated = {side: note for side, note in notes if note}
    caller = mapping(recorded.get("caller")) or mapping(session.get("caller"))
    context = mapping(recorded.get("context"))
    metadata: dict[str, Any] = {
        "session_id": recorded.get("session_id"),
        "caller": caller.get("subject"),
        "role": caller.get("role") or recorded.get("role") or context.get("role"),
        "endpoint": recorded.get("endpoint"),
        "recorded": True,
    }
    if truncated:
        metadata["truncated"] = truncated
    if refusal:
        metadata["refusal"] = refusal
    if recorded.get("guardrail") is not None:
        metadata["guardrail"] = recorded["guardrail"]
    detections = (answer or {}).get("detections")
    if isinstance(detections, list) and detections:
        metadata["detections"] = detections
    result.metadata["hoopgw"] = metadata

    if refusal:
        result.marked = BLOCKED_MARK
    elif "detections" in metadata:
        result.marked = SENSITIVE_MARK
    elif _failed(result, answer):
        result.marked = FAILED_MARK
    # `hoopgw inspect` lists comments without the path column that shows marks
    mark = _MARK_SYMBOLS.get(result.marked)
    comment = _comment(recorded, refusal, truncated)
    note = detections_note(metadata["detections"]) if "detections" in metadata else None
    result.comment = " ".join(part for part in (mark, comment, note) if part)
    return result


def _request(record: dict[str, Any], session: dict[str, Any]) -> http.Request:
    headers = _headers(record.get("headers"))
    path = str(record.get("path") or "/")
    if not path.startswith("/"):
        path = "/" + path
    url = f"{upstream_origin(session, headers)}{path}"
    request = http.Request.make(str(record.get("method") or "GET"), url)
    request.headers = headers
    _set_body(request, record.get("body"))
    return request


def _response(record: dict[str, Any], started: float) -> http.Response:
    response = http.Response.make(int(record.get("status") or 0))
    response.headers = _headers(record.get("headers"))
    _set_body(response, record.get("body"))
    duration = record.get("duration_ms")
    if duration is not None:
        ended = started + number(duration, 0.0) / 1000
    else:
        ended = number(record.get("ts"), 0.0)
    response.timestamp_start = response.timestamp_end = max(ended, started)
    return response


def _headers(recorded: Any) -> http.Headers:
    pairs = []
    for pair in recorded if isinstance(recorded, list) else []:
        if isinstance(pair, list | tuple) and len(pair) == 2:
            pairs.append((str(pair[0]).encode(), str(pair[1]).encode("utf-8", "surrogateescape")))
    return http.Headers(pairs)


def _set_body(message: http.Message, body: Any) -> None:
    """The recorded body, encoded again per the recorded Content-Encoding (mitmproxy drops
    an encoding it does not know)."""
    content = _body_bytes(mapping(body))
    if content:
        message.content = content
        return
    message.headers.pop("content-encoding", None)
    message.raw_content = b""
    if "content-length" in message.headers:
        message.headers["content-length"] = "0"


def _body_bytes(body: dict[str, Any]) -> bytes:
    if "json" in body:
        return orjson.dumps(body["json"])
    if "form" in body:
        pairs = [tuple(pair) for pair in body["form"] if isinstance(pair, list) and len(pair) == 2]
        return urllib.parse.urlencode(pairs).encode()
    if isinstance(body.get("text"), str):
        return body["text"].encode()
    return b""


def _truncation(body: Any) -> dict[str, Any] | None:
    body = mapping(body)
    if not body.get("truncated") and "omitted" not in body:
        return None
    note: dict[str, Any] = {"size": body.get("size"), "sha256": body.get("sha256")}
    if body.get("trimmed"):
        note["trimmed"] = body["trimmed"]
    for name in ("omitted", "streamed", "elided"):
        if body.get(name):
            note[name] = body[name]
    return note


def _comment(
    record: dict[str, Any], refusal: dict[str, Any], truncated: dict[str, dict[str, Any]]
) -> str:
    notes = [_description(record)]
    if refusal:
        notes.append(refusal_comment(refusal.get("by"), refusal.get("reason")))
    for side, note in truncated.items():
        what = "omitted" if note.get("omitted") else "truncated"
        notes.append(f"{side} body {what} in the recording ({note.get('size')} bytes)")
    return " · ".join(note for note in notes if note)


def _description(record: dict[str, Any]) -> str:
    """What the flow was: its SQL's first line, or the session event it belongs to."""
    sql = record.get("sql")
    if not isinstance(sql, str):
        body = mapping(mapping(record.get("body")).get("json"))
        sql = body.get("sqlText") or body.get("statement")
    if isinstance(sql, str) and sql.strip():
        return statement_comment(sql)
    endpoint = record.get("endpoint")
    if endpoint == "login":
        subject = mapping(record.get("caller")).get("subject")
        return f"login: {subject}" if subject else "login"
    return _EVENTS.get(str(endpoint), "")


def _failed(result: http.HTTPFlow, answer: dict[str, Any] | None) -> bool:
    if result.error is not None:
        return True
    if answer is None or result.response is None:
        return False
    if result.response.status_code >= 400:
        return True
    if answer.get("success") is False or mapping(answer.get("outcome")).get("success") is False:
        return True
    return mapping(mapping(answer.get("body")).get("json")).get("success") is False


def _error_text(record: dict[str, Any]) -> str:
    error = record.get("error")
    if isinstance(error, dict):
        return str(error.get("message") or "error")
    return str(error or "error")


def upstream_origin(session: dict[str, Any], headers: http.Headers) -> str:
    """Where the request went, `scheme://host[:port]`: the upstream the session_start record
    names; for records without it, https and the recorded Host header (the upstream's, in
    reverse mode)."""
    upstream = mapping(session.get("upstream"))
    scheme = str(upstream.get("scheme") or "").lower()
    host = upstream.get("host")
    if scheme in _DEFAULT_PORTS and isinstance(host, str) and _HOST.fullmatch(host):
        port = upstream.get("port")
        shown = f"[{host}]" if ":" in host else host
        if isinstance(port, int) and not isinstance(port, bool) and port != _DEFAULT_PORTS[scheme]:
            shown += f":{port}"
        return f"{scheme}://{shown}"
    header = str(headers.get("host") or "").strip()
    return f"https://{header or DEFAULT_HOST}"


def _address(text: Any) -> tuple[str, int] | None:
    if not isinstance(text, str) or ":" not in text:
        return None
    host, _, port = text.rpartition(":")
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        return None
