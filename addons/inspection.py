"""Live annotations for mitmweb: each flow's SQL as its comment, whose it is, and what failed.

Runs after `Recording` (see addons/flowstate.py), when the session id and the
caller are known. The annotations use the same names as the flows that
`hoopgw export` writes from a recording, so the live and the offline views
read alike:

- `flow.comment`: the statement's first line, shortened, credential literals masked;
- `flow.metadata["hoopgw"]`: `{"session_id", "caller", "role", "endpoint"}` and,
  when there is one, the `refusal` and `guardrail` decision, and for an answer
  streamed to the client (which mitmweb cannot show) `streamed`: its size and
  sha256; plain JSON values (mitmproxy saves metadata into flow files);
- `flow.marked`: BLOCKED_MARK when the gateway answered itself (a policy,
  identity or recording refusal), FAILED_MARK when Snowflake reported an error
  or the exchange failed.

Loaded on its own (`mitmweb -r FILE -s addons/inspection.py`, what `hoopgw
inspect` runs), it is the offline viewer: the Snowflake content view plus
`OfflineViewer`, and none of the gateway's hooks.
"""

from __future__ import annotations

import logging
from typing import Any

from mitmproxy import http

from hoopgw.addons.contentview import snowflake_view  # noqa: F401  (registers the view)
from hoopgw.addons.flowstate import FlowState, state_of
from hoopgw.addons.protocol import Endpoint
from hoopgw.recorder.annotations import (
    BLOCKED_MARK,
    FAILED_MARK,
    SENSITIVE_MARK,
    detections_note,
    statement_comment,
)

logger = logging.getLogger(__name__)

_STATEMENT_ENDPOINTS = frozenset({Endpoint.QUERY, Endpoint.SQL_API, Endpoint.ABORT})


def hoopgw_metadata(state: FlowState) -> dict[str, Any]:
    caller = state.caller
    metadata: dict[str, Any] = {
        "session_id": state.session_id,
        "caller": caller.subject if caller else None,
        "role": (caller.role if caller else None) or state.context.role,
        "endpoint": str(state.endpoint),
    }
    if state.refusal is not None:
        metadata["refusal"] = state.refusal.as_record()
    if state.guardrail is not None:
        metadata["guardrail"] = state.guardrail
    if state.streamed is not None:
        metadata["streamed"] = state.streamed.facts()
    if state.detections:
        metadata["detections"] = state.detections
    return metadata


class Inspection:
    """Annotates live flows for people reading them in mitmweb; never changes what is sent."""

    def request(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None:
            return
        flow.metadata["hoopgw"] = hoopgw_metadata(state)
        comment = _comment(state)
        if comment:
            flow.comment = comment
        if state.answered:
            flow.marked = BLOCKED_MARK

    def response(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None:
            return
        flow.metadata["hoopgw"] = hoopgw_metadata(state)
        if state.answered:
            flow.marked = BLOCKED_MARK
        elif state.detections:
            flow.marked = SENSITIVE_MARK
            note = detections_note(state.detections)
            flow.comment = f"{flow.comment} {note}" if flow.comment else note
        elif _failed(flow, state):
            flow.marked = FAILED_MARK
        state.release_bodies()

    def error(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None:
            return
        if state.streamed is not None:
            flow.metadata["hoopgw"] = {
                **hoopgw_metadata(state),
                "streamed": state.streamed.facts(cut=True),
            }
        if not flow.marked:
            flow.marked = FAILED_MARK
        state.release_bodies()


def _comment(state: FlowState) -> str:
    body = state.request_json or {}
    if state.endpoint in _STATEMENT_ENDPOINTS:
        sql = body.get("sqlText") or body.get("statement")
        return statement_comment(sql) if isinstance(sql, str) else ""
    if state.endpoint is Endpoint.LOGIN and state.caller is not None:
        return f"login: {state.caller.subject}"
    return ""


def _failed(flow: http.HTTPFlow, state: FlowState) -> bool:
    response = flow.response
    if response is None or response.status_code >= 400:
        return True
    answer = state.response_json
    return isinstance(answer, dict) and answer.get("success") is False


REPLAY_REFUSED = (
    "hoopgw inspect shows recorded flows and does not send them anywhere. "
    "To run a session's statements again, use `hoopgw replay` against a sandbox account."
)


class OfflineViewer:
    """Keeps mitmweb a reader of recorded flows: a replay from its UI never leaves the process.

    Recorded requests carry redacted credentials and were meant for the
    production account; a replay would at best fail there and at worst run a
    statement twice. The answer is made here, before any connection is opened.
    """

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.is_replay != "request":
            return
        flow.response = http.Response.make(
            403, REPLAY_REFUSED.encode(), {"Content-Type": "text/plain; charset=utf-8"}
        )
        logger.warning("hoopgw: refused to replay recorded flow %s", flow.id)


# What `mitmweb -s addons/inspection.py` loads: the offline viewer only. The
# gateway imports `Inspection` from here and builds its own list.
addons = [OfflineViewer()]
