"""Cortex REST: Analyst, Search and Agents answers recorded, classified and masked on the way.

Authentication (addons/authentication/sql_api.py) and the `allow_cortex` rule
(addons/guardrails.py) have admitted the call before it goes upstream; this
addon reads what comes back, so it is not one FailClosed waits for.

- Cortex Analyst (`/api/v2/cortex/analyst/message`): the question, the SQL the
  analyst proposes and its text go on a `cortex` record; the SQL is classified
  (recorder/statements) for the record. It is not run here: the client runs it
  later through the statement endpoints, where the policy applies.
- Cortex Search (`.../cortex-search-services/{name}:query`): the query, filter
  and results go on the record; for a caller with masking rules each result
  field is masked as a column `DB.SCHEMA.SERVICE.FIELD` would be.
- Cortex Agents (`.../agents/{name}:run`): server-sent events pass to the client
  as they arrive, frame by frame (`SseTap`); for a caller with masking rules
  each frame is masked before it leaves, and every frame is recorded within
  `hoopgw_body_limit`.

It runs after `Masking` (whose plan it uses) and before `Recording`, so the
response record holds the answer as the caller received it.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from mitmproxy import http

from hoopgw.addons import protocol
from hoopgw.addons.flowstate import FlowState, state_of
from hoopgw.addons.masking import Masking
from hoopgw.addons.protocol import AgentSurface, Endpoint, Shape
from hoopgw.addons.recording import Recording
from hoopgw.addons.refusals import replace_answer
from hoopgw.recorder import redaction
from hoopgw.recorder.masking import (
    Column,
    MaskPlan,
    Outcome,
    UnmaskableAnswer,
    marker,
    mask_sql_api,
)
from hoopgw.recorder.records import Client, new_record
from hoopgw.recorder.schema import RecordKind
from hoopgw.recorder.statements import classify

logger = logging.getLogger(__name__)


def mask_rows(*args: Any) -> None:
    """`recorder.masking.rowsets.mask_rows`, imported on first use: the detectors' libraries
    (pyarrow.compute, phonenumbers) load only for a policy that masks."""
    from hoopgw.recorder.masking.rowsets import mask_rows as masked

    masked(*args)


def detect_texts(*args: Any) -> Any:
    """`recorder.masking.detectors.detect_texts`, imported on first use (see `mask_rows`)."""
    from hoopgw.recorder.masking.detectors import detect_texts as detect

    return detect(*args)


EVENT_STREAM: Final = "text/event-stream"
MAX_EVENT_BYTES: Final = 4 * 1024 * 1024
"""Largest server-sent event the gateway reads; a longer one is not parsed (or passed, masked)."""
_INLINE_CLASSIFY_CHARS: Final = 16 * 1024


# --- records -------------------------------------------------------------------------


class CortexRecords:
    """Appends `cortex` records to the gateway's spool, each within `hoopgw_body_limit`."""

    def __init__(self, recording: Recording) -> None:
        self._recording = recording

    @property
    def body_limit(self) -> int:
        return self._recording.body_limit

    def write(
        self, flow: http.HTTPFlow, state: FlowState, surface: AgentSurface, **fields: Any
    ) -> None:
        if state.session_id is None:
            logger.error("hoopgw: no session; the cortex record of %s is lost", flow.id)
            return
        client = Client(
            address=_peer(flow), application=state.client_app, version=state.client_version
        )
        caller = state.caller.as_record() if state.caller is not None else None
        bounded = _bounded(redaction.redact_json(fields), self.body_limit)
        record = new_record(
            RecordKind.CORTEX,
            state.session_id,
            client,
            caller,
            flow_id=flow.id,
            surface=surface.label,
            **bounded,
        )
        self._recording.append_quietly([record])


def _bounded(fields: dict[str, Any], limit: int) -> dict[str, Any]:
    """Texts cut and lists shortened so the record's values stay within `limit` bytes."""
    truncated: dict[str, int] = dict(fields.pop("truncated", None) or {})
    budget = limit
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if value is None:
            continue
        if isinstance(value, str) and len(value.encode()) > budget:
            truncated[name] = len(value)
            value = value.encode()[: max(budget, 0)].decode("utf-8", "ignore")
        elif isinstance(value, list):
            kept: list[Any] = []
            for item in value:
                size = len(orjson.dumps(item))
                if size > budget:
                    break
                budget -= size
                kept.append(item)
            if len(kept) < len(value):
                truncated[name] = truncated.get(name, 0) + len(value) - len(kept)
            value = kept
        budget -= len(orjson.dumps(value)) if not isinstance(value, list) else 0
        out[name] = value
    if truncated:
        out["truncated"] = truncated
    return out


# --- Cortex Analyst ------------------------------------------------------------------


class AnalystAnswers:
    """The question, the proposed SQL (classified) and the answer text, on record."""

    def __init__(self, records: CortexRecords) -> None:
        self._records = records

    async def answered(self, flow: http.HTTPFlow, state: FlowState, surface: AgentSurface) -> None:
        content = _analyst_content(state.response_json)
        sql = ";\n".join(
            item["statement"]
            for item in content
            if item.get("type") == "sql" and isinstance(item.get("statement"), str)
        )
        statements = None
        if sql:
            if len(sql) <= _INLINE_CLASSIFY_CHARS:
                classified = classify(sql, database=None, schema=None)
            else:
                classified = await asyncio.to_thread(classify, sql, database=None, schema=None)
            statements = [statement.as_record() for statement in classified]
        suggestions = [
            text
            for item in content
            if item.get("type") == "suggestions" and isinstance(item.get("suggestions"), list)
            for text in item["suggestions"]
            if isinstance(text, str)
        ]
        self._records.write(
            flow,
            state,
            surface,
            request_id=_text(state.response_json, "request_id"),
            question=_last_user_text(state.request_json),
            generated_sql=redaction.redact_sql(sql) if sql else None,
            statements=statements,
            answer="\n".join(
                item["text"]
                for item in content
                if item.get("type") == "text" and isinstance(item.get("text"), str)
            )
            or None,
            suggestions=suggestions or None,
            error=_http_error(flow),
        )


def _analyst_content(answer: Any) -> list[dict[str, Any]]:
    message = answer.get("message") if isinstance(answer, dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    return [item for item in content if isinstance(item, dict)] if isinstance(content, list) else []


# --- Cortex Search -------------------------------------------------------------------


class SearchAnswers:
    """The query and its results on record; result fields masked per the caller's rules."""

    def __init__(self, records: CortexRecords) -> None:
        self._records = records

    def answered(
        self, flow: http.HTTPFlow, state: FlowState, surface: AgentSurface, plan: MaskPlan
    ) -> None:
        request = state.request_json or {}
        answer = state.response_json
        results = answer.get("results") if isinstance(answer, dict) else None
        error = _http_error(flow)
        if plan.active and error is None:
            if not isinstance(results, list):
                self._withhold(
                    flow, state, "the answer could not be read, so it could not be masked"
                )
                error = "withheld: unreadable answer"
                results = None
            else:
                assert isinstance(answer, dict)
                outcome = mask_results(results, surface, plan)
                if outcome.detections:
                    state.detections = outcome.as_record()
                withheld = outcome.withheld
                if withheld is not None:
                    reason = f"field {withheld.column} holds {withheld.kind}"
                    self._withhold(flow, state, reason)
                    error, results = f"withheld: {reason}", None
                elif outcome.changed and flow.response is not None:
                    state.response_body = orjson.dumps(answer)
                    protocol.write_json_body(flow.response, answer)
        self._records.write(
            flow,
            state,
            surface,
            request_id=_text(answer, "request_id"),
            query=_text(request, "query"),
            filter=request.get("filter") if isinstance(request.get("filter"), dict) else None,
            columns=request.get("columns") if isinstance(request.get("columns"), list) else None,
            results=results if isinstance(results, list) else None,
            result_count=len(results) if isinstance(results, list) else None,
            detections=state.detections,
            error=error,
        )

    @staticmethod
    def _withhold(flow: http.HTTPFlow, state: FlowState, reason: str) -> None:
        message = f"hoopgw withheld the search results: {reason}; your policy does not allow it."
        replace_answer(flow, state, Shape.SQL_API, protocol.CODE_GATEWAY_SENSITIVE, message)


def mask_results(results: list[Any], surface: AgentSurface, plan: MaskPlan) -> Outcome:
    """Mask search results in place: each field a text column of the service's "table"."""
    names = list(
        dict.fromkeys(key for result in results if isinstance(result, dict) for key in result)
    )
    rowtype = [
        {
            "name": name,
            "type": "text",
            "database": surface.database,
            "schema": surface.schema,
            "table": surface.name,
        }
        for name in names
    ]
    missing = object()
    rows = [
        [result.get(name, missing) for name in names]
        for result in results
        if isinstance(result, dict)
    ]
    cells = [[None if value is missing else value for value in row] for row in rows]
    outcome = Outcome()
    mask_rows(rowtype, cells, plan, outcome)
    if outcome.changed:
        for result, row, masked in zip(
            (r for r in results if isinstance(r, dict)), rows, cells, strict=True
        ):
            for name, before, after in zip(names, row, masked, strict=True):
                if before is not missing:
                    result[name] = after
    return outcome


# --- Cortex Agents: server-sent events ------------------------------------------------


@dataclass(slots=True)
class SseEvent:
    """One server-sent event: its `event` name, `data` text and any other field lines."""

    event: str
    data: str
    other: list[str] = field(default_factory=list)

    def encode(self) -> bytes:
        lines = [*self.other, f"event: {self.event}"]
        lines.extend(f"data: {line}" for line in self.data.split("\n"))
        return ("\n".join(lines) + "\n\n").encode()


def parse_frame(frame: str) -> SseEvent | None:
    """A frame (lines, without the blank line that ends it) as an event; None for comments only."""
    event, data, other = "message", [], []
    for line in frame.split("\n"):
        if not line or line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        else:
            other.append(line)
    if not data and event == "message":
        return None
    return SseEvent(event, "\n".join(data), other)


class SseFrames:
    """Cuts a byte stream into SSE frames as they complete, with line endings normalised.

    Holds at most `limit` bytes of an unfinished frame: past that, `overflow`
    is set and nothing more is parsed.
    """

    def __init__(self, limit: int = MAX_EVENT_BYTES) -> None:
        self.limit = limit
        self.overflow = False
        self._buffer = ""
        self._carriage_return = False
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace").decode

    def feed(self, chunk: bytes) -> list[str]:
        if self.overflow:
            return []
        text = self._decoder(chunk, final=False)
        if self._carriage_return and text.startswith("\n"):
            text = text[1:]
        self._carriage_return = text.endswith("\r")
        self._buffer += text.replace("\r\n", "\n").replace("\r", "\n")
        *frames, self._buffer = self._buffer.split("\n\n")
        if len(self._buffer) > self.limit:
            self.overflow = True
            self._buffer = ""
        return frames

    def close(self) -> list[str]:
        """What is left at the end: an unfinished last frame, taken as one."""
        rest, self._buffer = self._buffer, ""
        return [rest] if rest.strip() and not self.overflow else []


class SseTap:
    """What mitmproxy calls with each chunk of an agents:run answer as it streams.

    Without masking every chunk goes on at once, unchanged, and is parsed on
    the side. With masking a frame goes on once it is complete, masked (an
    unfinished frame is all that is held back, at most MAX_EVENT_BYTES). Every
    event is recorded within `record_limit` bytes.
    """

    def __init__(self, plan: MaskPlan, record_limit: int) -> None:
        self.plan = stream_plan(plan)
        self.record_limit = record_limit
        self.frames = SseFrames()
        self.events: list[dict[str, Any]] = []
        self.event_count = 0
        self.dropped = 0
        self.answer: list[str] = []
        self.outcome = Outcome()
        self.complete = False
        self.error: str | None = None
        self._recorded_bytes = 0
        self._answer_chars = 0
        self._notified = False

    def __call__(self, chunk: bytes) -> list[bytes]:
        """The bytes to send on; never an empty chunk, which would end a chunked answer."""
        try:
            data = self._pass(chunk)
        except Exception as exc:  # the tap serves the record; an unmasked stream must go on
            logger.exception("hoopgw: reading an agents:run stream failed")
            self.error = f"unreadable stream: {type(exc).__name__}"
            if self.plan.active:
                self.frames.overflow = True
                data = b""
            else:
                data = chunk
        return [data] if data else []

    def _pass(self, chunk: bytes) -> bytes:
        final = chunk == b""
        frames = self.frames.feed(chunk) if chunk else self.frames.close()
        if final:
            self.complete = not self.frames.overflow
        out = [self._event(frame) for frame in frames]
        if self.frames.overflow and self.error is None:
            self.error = f"an event over {self.frames.limit} bytes was not read"
        if self.frames.overflow and self.plan.active and not self._notified:
            self._notified = True
            notice = SseEvent("error", orjson.dumps(_withheld_event(self.error or "")).decode())
            return b"".join(out) + notice.encode()
        if not self.plan.active:
            return chunk
        return b"".join(out)

    def _event(self, frame: str) -> bytes:
        event = parse_frame(frame)
        if event is None:
            return (frame + "\n\n").encode() if not self.plan.active else b""
        self.event_count += 1
        try:
            data: Any = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            data = event.data
        if self.plan.active:
            box = [data]
            if mask_value(box, 0, self.plan, self.outcome, f"event:{event.event}"):
                data = box[0]
                event.data = data if isinstance(data, str) else orjson.dumps(data).decode()
        if event.event == "response.text.delta" and isinstance(data, dict):
            self._add_text(data.get("text"))
        self._record({"event": event.event, "data": data})
        return event.encode()

    def _add_text(self, text: Any) -> None:
        if isinstance(text, str) and self._answer_chars < self.record_limit:
            self.answer.append(text)
            self._answer_chars += len(text)

    def _record(self, entry: dict[str, Any]) -> None:
        size = len(orjson.dumps(entry))
        if self._recorded_bytes + size > self.record_limit:
            self.dropped += 1
            return
        self._recorded_bytes += size
        self.events.append(entry)


def stream_plan(plan: MaskPlan) -> MaskPlan:
    """The plan for a stream: `withhold` masks, since earlier events are already delivered."""
    if "withhold" not in plan.detect.values():
        return plan
    detect = {
        kind: "mask" if action == "withhold" else action for kind, action in plan.detect.items()
    }
    return MaskPlan(plan.columns, detect)  # type: ignore[arg-type]


def _withheld_event(reason: str) -> dict[str, Any]:
    return {
        "code": str(protocol.CODE_GATEWAY_SENSITIVE),
        "message": f"hoopgw withheld the rest of the answer: {reason}, so it could not be masked",
    }


def mask_value(box: list[Any], index: int, plan: MaskPlan, outcome: Outcome, label: str) -> bool:
    """Mask `box[index]`, a JSON value, in place: result sets by column, text by content kind.

    A dict carrying `resultSetMetaData` and `data` (a SQL API result, as tool
    results carry) is masked as the SQL API's answer is; every other string is
    looked at for the plan's content kinds. True when something changed.
    """
    strings: list[tuple[list[Any] | dict[str, Any], Any]] = []
    changed = _walk(box, index, plan, outcome, strings)
    kinds = frozenset(plan.detect)
    if not kinds or not strings:
        return changed
    texts = [holder[key] for holder, key in strings]
    masked = [False] * len(texts)
    column = Column(name=label, type="text")
    for kind, flags in sorted(detect_texts(texts, kinds).items()):
        action = plan.detect[kind]
        outcome.add(column, kind, sum(flags), action)
        if action != "mask":
            continue
        for position, flagged in enumerate(flags):
            if flagged and not masked[position]:
                holder, key = strings[position]
                holder[key] = marker(kind)
                masked[position] = True
                changed = outcome.changed = True
    return changed


def _walk(
    holder: Any,
    key: Any,
    plan: MaskPlan,
    outcome: Outcome,
    strings: list[tuple[Any, Any]],
) -> bool:
    value = holder[key]
    if isinstance(value, str):
        strings.append((holder, key))
        return False
    changed = False
    if isinstance(value, dict):
        if isinstance(value.get("resultSetMetaData"), dict) and isinstance(value.get("data"), list):
            try:
                found = mask_sql_api(value, plan)
            except UnmaskableAnswer:
                value["data"] = []
                found = Outcome(changed=True)
            outcome.detections.extend(found.detections)
            changed = found.changed
            outcome.changed = outcome.changed or changed
            keys = [name for name in value if name != "data"]
        else:
            keys = list(value)
        for name in keys:
            changed = _walk(value, name, plan, outcome, strings) or changed
    elif isinstance(value, list):
        for position in range(len(value)):
            changed = _walk(value, position, plan, outcome, strings) or changed
    return changed


class AgentStreams:
    """agents:run answers: streamed through an `SseTap`, recorded when they end."""

    def __init__(self, records: CortexRecords) -> None:
        self._records = records
        self.taps: dict[str, SseTap] = {}

    def headers(self, flow: http.HTTPFlow, plan: MaskPlan) -> None:
        response = flow.response
        assert response is not None
        media = response.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media != EVENT_STREAM or not 200 <= response.status_code < 300:
            return
        encoding = response.headers.get("content-encoding", "").strip().lower()
        tap = SseTap(plan, self._records.body_limit)
        if encoding not in ("", "identity"):
            tap.error = f"not read: Content-Encoding {encoding[:40]}"
            if plan.active:
                response.headers.pop("content-encoding", None)
                tap.frames.overflow = True
                tap.frames.limit = 0
        if tap.plan.active and "content-length" in response.headers:
            # masked frames change the length: the answer goes on chunked instead
            response.headers.pop("content-length")
            if not (flow.request.is_http2 or flow.request.is_http3):
                response.headers["transfer-encoding"] = "chunked"
        self.taps[flow.id] = tap
        response.stream = tap

    def ended(
        self, flow: http.HTTPFlow, state: FlowState, surface: AgentSurface, plan: MaskPlan
    ) -> None:
        tap = self.taps.pop(flow.id, None)
        if tap is None:
            self._unstreamed(flow, state, surface, plan)
            return
        if tap.outcome.detections:
            state.detections = tap.outcome.as_record()
        self._write(flow, state, surface, tap)

    def broke_off(self, flow: http.HTTPFlow, state: FlowState, surface: AgentSurface) -> None:
        tap = self.taps.pop(flow.id, None)
        if tap is not None:
            tap.complete = False
            tap.error = tap.error or (str(flow.error.msg) if flow.error else "the stream broke off")
            self._write(flow, state, surface, tap)

    def _write(
        self, flow: http.HTTPFlow, state: FlowState, surface: AgentSurface, tap: SseTap
    ) -> None:
        truncated = {"events": tap.dropped} if tap.dropped else None
        self._records.write(
            flow,
            state,
            surface,
            question=_last_user_text(state.request_json),
            answer="".join(tap.answer) or None,
            events=tap.events,
            event_count=tap.event_count,
            complete=tap.complete,
            detections=tap.outcome.as_record() or None,
            error=tap.error,
            truncated=truncated,
        )

    def _unstreamed(
        self, flow: http.HTTPFlow, state: FlowState, surface: AgentSurface, plan: MaskPlan
    ) -> None:
        """An answer that was not an event stream (an error, or JSON): masked whole if need be."""
        response = flow.response
        error = _http_error(flow) or "the answer was not a server-sent event stream"
        if response is not None and plan.active and 200 <= response.status_code < 300:
            try:
                body = protocol.decode_body(response, MAX_EVENT_BYTES)
                box = [orjson.loads(body)]
            except (protocol.ProtocolError, orjson.JSONDecodeError):
                reason = "the answer could not be read, so it could not be masked"
                message = f"hoopgw withheld the answer: {reason}."
                replace_answer(flow, state, Shape.SQL_API, protocol.CODE_GATEWAY_SENSITIVE, message)
                error = f"withheld: {reason}"
            else:
                outcome = Outcome()
                if mask_value(box, 0, stream_plan(plan), outcome, "answer"):
                    response.headers.pop("content-encoding", None)
                    response.content = orjson.dumps(box[0])
                state.detections = outcome.as_record() or None
        self._records.write(
            flow, state, surface, question=_last_user_text(state.request_json), error=error
        )


# --- the addon -----------------------------------------------------------------------


class Cortex:
    """Reads, masks and records Cortex Analyst, Search and Agents answers; see the module."""

    def __init__(self, masking: Masking, recording: Recording) -> None:
        self._masking = masking
        records = CortexRecords(recording)
        self._analyst = AnalystAnswers(records)
        self._search = SearchAnswers(records)
        self._agents = AgentStreams(records)

    def request(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None or state.answered or state.endpoint is not Endpoint.CORTEX_AGENTS:
            return
        # the stream is read (and masked) as it passes: ask for it uncompressed
        flow.request.headers["accept-encoding"] = "identity"

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None or state.answered or flow.response is None or not flow.live:
            return
        if state.endpoint is Endpoint.CORTEX_AGENTS:
            self._agents.headers(flow, self._masking.plan_for(state))

    async def response(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None or state.answered or flow.response is None:
            self._agents.taps.pop(flow.id, None)
            return
        surface = protocol.agent_surface(state.endpoint, flow.request.path)
        if surface is None or state.endpoint not in protocol.CORTEX_ENDPOINTS:
            return
        if state.endpoint is Endpoint.CORTEX_ANALYST:
            await self._analyst.answered(flow, state, surface)
        elif state.endpoint is Endpoint.CORTEX_SEARCH:
            self._search.answered(flow, state, surface, self._masking.plan_for(state))
        else:
            self._agents.ended(flow, state, surface, self._masking.plan_for(state))

    def error(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None or state.endpoint is not Endpoint.CORTEX_AGENTS:
            return
        surface = protocol.agent_surface(state.endpoint, flow.request.path)
        if surface is not None:
            self._agents.broke_off(flow, state, surface)


# --- helpers -------------------------------------------------------------------------


def _last_user_text(body: Any) -> str | None:
    """The text of the last `user` message of an Analyst or Agents request."""
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list):
        return None
    for message in reversed(messages):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            texts = [
                item["text"]
                for item in content
                if isinstance(item, dict) and isinstance(item.get("text"), str)
            ]
            return "\n".join(texts) or None
    return None


def _text(body: Any, name: str) -> str | None:
    value = body.get(name) if isinstance(body, dict) else None
    return value if isinstance(value, str) else None


def _http_error(flow: http.HTTPFlow) -> str | None:
    response = flow.response
    if response is None or 200 <= response.status_code < 300:
        return None
    return f"HTTP {response.status_code}"


def _peer(flow: http.HTTPFlow) -> str | None:
    address = flow.client_conn.peername
    return f"{address[0]}:{address[1]}" if address else None
