"""Live annotations for mitmweb: each flow's SQL as its comment, whose it is, and what failed.

Runs after `Recording` (see addons/flowstate.py), when the session id and the
caller are known. The annotations use the same names as the flows that
`hoopgw export` writes from a recording, so the live and the offline views
read alike:

- `flow.comment`: the statement's first line, shortened, credential literals masked,
  and for a refused request who refused it and the whole reason;
- `flow.metadata["hoopgw"]`: `{"session_id", "caller", "role", "endpoint"}` and,
  when there is one, the `refusal` and `guardrail` decision, and for an answer
  streamed to the client (which mitmweb cannot show) `streamed`: its size and
  sha256; plain JSON values (mitmproxy saves metadata into flow files);
- `flow.marked`: BLOCKED_MARK when the gateway answered itself (a policy,
  identity or recording refusal), FAILED_MARK when Snowflake reported an error
  or the exchange failed.

Loaded on its own (what `hoopgw inspect` runs: mitmweb with `server=false` on
loopback), it is the offline viewer: the Snowflake content view plus
`OfflineViewer`, and none of the gateway's hooks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import mitmproxy.types
from mitmproxy import command, ctx, exceptions, http
from mitmproxy.flow import Flow

from hoopgw.addons.contentview import snowflake_view  # noqa: F401  (registers the view)
from hoopgw.addons.flowstate import FlowState, state_of
from hoopgw.addons.protocol import Endpoint
from hoopgw.recorder.annotations import (
    BLOCKED_MARK,
    FAILED_MARK,
    SENSITIVE_MARK,
    detections_note,
    refusal_comment,
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
    """What the request was and, when the gateway refused it, the whole reason (as export)."""
    refusal = state.refusal
    refused = refusal_comment(refusal.source, refusal.reason) if refusal is not None else ""
    return " · ".join(part for part in (_description(state), refused) if part)


def _description(state: FlowState) -> str:
    if state.answered and state.caller is None:
        # refused with no verified caller: its SQL is not scanned (see addons/recording.py)
        return ""
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
# Options that would make the viewer send, hold or write traffic; mitmweb's Options tab
# can set them while it runs.
_VIEWER_LOCKED = {
    "server": False,
    "intercept": None,
    "intercept_active": False,
    "client_replay": [],
    "server_replay": [],
    "save_stream_file": None,
    "mode": [],
}


class OfflineViewer:
    """Keeps mitmweb a reader of recorded flows: nothing leaves the process, the evidence stays.

    Recorded requests carry redacted credentials and were meant for the
    production account; a replay would at best fail there and at worst run a
    statement twice. mitmweb's Replay button calls the `replay.client` command;
    this addon, loaded after mitmproxy's own, takes that name, so a click only
    logs why and leaves the flow (and its recorded response) as it was. Options
    that would open a proxy listener, intercept, replay or save flows are
    refused while the viewer runs (`hoopgw inspect` starts mitmweb with
    `server=false`), and the viewer has no proxy mode at all: mitmproxy acts on a
    `server` change before a later addon can refuse it, and its start and the
    refusal's stop race, so with a mode a refused change could leave a listener.
    """

    def __init__(self) -> None:
        self._started = False

    def configure(self, updated: set[str]) -> None:
        if not self._started:
            return
        for name in updated & _VIEWER_LOCKED.keys():
            value = getattr(ctx.options, name)
            if value != _VIEWER_LOCKED[name] and value not in (None, [], (), False, ""):
                raise exceptions.OptionsError(
                    f"hoopgw inspect is a viewer of recorded flows: {name} cannot be changed"
                )

    def running(self) -> None:
        if not ctx.options.server:
            ctx.options.update(mode=[])  # nothing to listen on, whatever `server` becomes
        self._started = True
        if ctx.options.server:
            logger.warning(
                "hoopgw: this mitmweb has a proxy listener; open recordings with "
                "`hoopgw inspect SESSION_ID` or `hoopgw inspect FILE.flows` instead"
            )

    @command.command("replay.client")
    def replay_client(self, flows: Sequence[Flow]) -> None:
        """Replay is disabled in `hoopgw inspect`: the recorded flows stay as recorded."""
        for item in flows:
            logger.warning(
                "hoopgw: refused to replay recorded flow %s: %s", item.id, REPLAY_REFUSED
            )

    @command.command("replay.client.file")
    def replay_client_file(self, path: mitmproxy.types.Path) -> None:
        """Replay is disabled in `hoopgw inspect`."""
        logger.warning("hoopgw: refused to replay the flows in %s: %s", path, REPLAY_REFUSED)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """The last guard, for a replay started some other way: answered here, never sent."""
        if flow.is_replay != "request":
            return
        flow.response = http.Response.make(
            403, REPLAY_REFUSED.encode(), {"Content-Type": "text/plain; charset=utf-8"}
        )
        logger.warning("hoopgw: refused to replay recorded flow %s", flow.id)


# What `hoopgw inspect` loads into mitmweb: the offline viewer only. The gateway
# imports `Inspection` from here and builds its own list.
addons = [OfflineViewer()]
