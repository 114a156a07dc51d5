"""What the gateway's addons know about one flow, shared between them.

The addons run in this order for every request (addons/gateway.py builds the
list; docs/design-notes.md tables every addon, including the approval desk,
result chunks, attribution, query ids, masking and approvals placed between
these), and each reads and extends the flow's `FlowState`:

0. `ClientDeadlines` (addons/transport.py) bounds how long a client may owe
   the gateway request headers or a body, and how many connections one
   address holds; it sees connections, not flows.
1. `SnowflakeTraffic` (addons/traffic.py) classifies the endpoint and parses the
   request body once into `state.request_json`; a malformed request is answered
   by the gateway (`state.refusal` set). `RequireTls` (addons/transport.py),
   right after it, refuses plain HTTP on a gateway that serves TLS.
2. `Authentication` (addons/authentication/, with identity.py, credentials.py
   and session_tokens.py) verifies the caller and swaps credentials; sets
   `state.caller`, `state.session_id`, the context the session logged in with
   and, on a login or an SQL API call (its own session), `state.upstream_login`;
   or refuses.
3. `SessionContextTracker` (addons/session_context.py) puts the session's
   current database and schema on a query's `state.context`, and follows them
   in the answers.
4. `Guardrails` (addons/guardrails.py) checks statements against the policy;
   sets `state.classified`, `state.statements` and `state.guardrail`, or refuses.
   `Masking` (addons/masking.py), right after it, masks or withholds
   sensitive values in an answer's rows per the caller's rules and sets
   `state.detections`; in the response hooks it runs before `Recording`, so
   the record holds the answer as the caller received it.
5. `Recording` (addons/recording.py) makes the request record durable before
   the request may go upstream, and records the response or error.
6. `Inspection` (addons/inspection.py) annotates the flow for mitmweb; as the
   last hook that reads the state's bodies, it releases them.

A large successful answer on a result endpoint is streamed to the client
(`SnowflakeTraffic.responseheaders`): its body is never in memory whole, and
`state.streamed` holds what was counted, hashed and outlined on the way; the
outline stands in for `state.response_json`.

Any addon that answers a request itself calls `refuse(...)` (addons/refusals.py),
which sets `flow.response` and `state.refusal`; later addons skip their work
when `state.answered` is set but the recorder still records the refusal.

`Gateway` (addons/dispatch.py) is what mitmproxy calls: it runs the addons'
hooks in this order. An exception in a request hook refuses the flow there
(`failclosed.contain`) and the next addon still runs; a check that failed
quietly would still let the request through, so each required addon adds its
name to `state.passed` once it has done its work, and `FailClosed`
(addons/failclosed.py), last in the list, refuses any request that is still
unanswered without every name.

The state is kept outside `flow.metadata` (which mitmproxy serialises into flow
files), in an attribute of the flow object that no flow file and no `flow.copy()`
carries, so it disappears with the flow; every hook reads it, so reading it is
one attribute lookup.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from mitmproxy import http

from hoopgw.addons.protocol import Endpoint, StreamedAnswer, write_json_body

if TYPE_CHECKING:
    from hoopgw.recorder.statements import Statement


@dataclass(slots=True, frozen=True)
class Caller:
    """The verified identity behind a request, as the recorder and the policy need it."""

    subject: str
    email: str | None
    groups: tuple[str, ...]
    role: str | None
    issuer: str | None = None

    def as_record(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "email": self.email,
            "groups": list(self.groups),
            "role": self.role,
            "issuer": self.issuer,
        }


@dataclass(slots=True, frozen=True)
class UpstreamLogin:
    """Who the gateway logged in to Snowflake as, chosen by addons/credentials.py."""

    account: str
    user: str
    authenticator: str


@dataclass(slots=True)
class Refusal:
    """Why the gateway answered a request itself instead of forwarding it."""

    code: int
    reason: str
    source: str

    def as_record(self) -> dict[str, Any]:
        return {"code": self.code, "reason": self.reason, "by": self.source}


@dataclass(slots=True)
class SessionContext:
    """The session's current database, schema, warehouse and role, as far as known."""

    database: str | None = None
    schema: str | None = None
    warehouse: str | None = None
    role: str | None = None


@dataclass(slots=True)
class FlowState:
    endpoint: Endpoint
    request_body: bytes | None = None
    request_json: dict[str, Any] | None = None
    session_id: str | None = None
    id_key: str | None = None
    """The token key the session's query ids are bound under (`SealedSession.id_key`)."""
    caller: Caller | None = None
    upstream_login: UpstreamLogin | None = None  # a forwarded login's, or an SQL API call's
    context: SessionContext = field(default_factory=SessionContext)
    client_app: str | None = None
    client_version: str | None = None
    refusal: Refusal | None = None
    guardrail: dict[str, Any] | None = None
    classified: list[Statement] | None = None  # what Guardrails classified, for the context
    statements: list[dict[str, Any]] | None = None
    sql_masked: bool = False  # the request's SQL carried a credential literal
    session_ended: bool = False
    response_body: bytes | None = None
    response_json: dict[str, Any] | None = None
    # the answer as the client gets it, once an addon made it differ from the record's
    # copy above (sealed chunk URLs, session-bound query ids): see `answer_for_client`
    client_json: dict[str, Any] | None = None
    streamed: StreamedAnswer | None = None  # the answer went to the client as it arrived
    # the request body went to cloud storage as it arrived: an admitted stage upload
    # (addons/results.py), checked from its head; the request hooks see no body
    upload_streamed: bool = False
    detections: list[dict[str, Any]] | None = None  # what addons/masking.py found in the rows
    passed: set[str] = field(default_factory=set)

    @property
    def answered(self) -> bool:
        return self.refusal is not None

    def answer_for_client(self) -> dict[str, Any] | None:
        """The answer document the client will receive, for an addon that changes it.

        The record keeps `response_json` (raw query ids, chunk URLs withheld);
        the client may get a different document. Addons that rewrite the answer
        change this one and send it with `send_to_client`, so no rewrite undoes
        another's.
        """
        return self.client_json if self.client_json is not None else self.response_json

    def send_to_client(self, flow: http.HTTPFlow, answer: dict[str, Any]) -> None:
        """Make `answer` the body the client receives (and what later rewrites start from)."""
        assert flow.response is not None
        self.client_json = answer
        write_json_body(flow.response, answer)

    def snapshot(self) -> FlowState:
        """A shallow copy, as `dataclasses.replace(self)` makes it at a fifth of the cost."""
        return FlowState(*_field_values(self))

    def release_bodies(self) -> None:
        """Let go of the bodies once the last hook has read them.

        The flow lives on while mitmproxy writes the answer to the client; a
        parsed copy of a large answer held here until then is dead weight.
        """
        self.request_body = None
        self.request_json = None
        self.response_body = None
        self.response_json = None
        self.client_json = None


_field_values = attrgetter(*(item.name for item in fields(FlowState)))
_STATE = "_hoopgw_state"


def attach(flow: http.HTTPFlow, state: FlowState) -> FlowState:
    setattr(flow, _STATE, state)
    return state


def detach(flow: http.HTTPFlow) -> None:
    """Take the flow out of the gateway's hooks: it is answered by the gateway itself
    (its approval desk) and belongs to no Snowflake session."""
    flow.__dict__.pop(_STATE, None)


def state_of(flow: http.HTTPFlow) -> FlowState | None:
    """The flow's state, or None for flows the gateway did not see (e.g. loaded with -r)."""
    return getattr(flow, _STATE, None)
