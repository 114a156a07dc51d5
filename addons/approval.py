"""Approval in the data path: a statement a policy rule sends to review waits for a human.

The driver is unchanged: Snowflake's own drivers already wait for a statement
that is "in progress" (code 333333) by GETting the `getResultUrl` the answer
names, again and again. `Approvals` (after Recording, so the request is on
record first) answers a held statement that way with a URL of the gateway's
own, `/queries/<approval id>/result`, after storing the request in the store
(recorder/approvals.py) and recording an `approval_request` in the session's
chain. Nothing of it goes upstream. Each GET on that URL long-polls the store
for the decision for up to `hoopgw_approval_poll` seconds and answers 333333
again while there is none. On approval the GET itself becomes the held POST,
with the body exactly as the driver sent it, so what the driver reads is
Snowflake's own answer; a denial answers 399005, a timeout 399006, and an
abort-request for the held statement withdraws it.

A managed MCP server's tool call (addons/mcp.py) cannot wait: it is held the
same way, answered "held" by McpCalls as a JSON-RPC error naming the approval,
and the identical call retried after the approval runs once (the reuse below).

`ApprovalDesk` (before Authentication) serves `/hoopgw/v1/approvals` on the
gateway's own port: list, show, approve and deny, for approvers who present
their own OIDC ID token as a Bearer (docs/approval.md). Its requests never go
upstream and are not part of any session; each decision is recorded in the
requesting session's chain as `approval_decision`.

Decisions live in the store, so whichever replica holds a statement sees a
decision taken through any other within one store poll (`hoopgw_approval_check_ms`).

The client never sees an approval id as such: QueryIds binds it to the session
(SQL API: the caller) like any query id, and maps it back before a poll or
cancel reaches this addon. The raw id is the approvers' (the desk, the CLI, the
messages that name the hold); polls and cancels also check the caller's subject.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import time
import urllib.parse
import urllib.request
from collections import OrderedDict
from typing import Any

import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from mitmproxy import ctx, exceptions, http
from mitmproxy.addonmanager import Loader

from hoopgw.addons import names, protocol
from hoopgw.addons.credentials import resolve_option_secret
from hoopgw.addons.flowstate import FlowState, detach, state_of
from hoopgw.addons.identity import IdentityError, IdentityUnavailable, groups_from
from hoopgw.addons.mcp import sql_tool_call
from hoopgw.addons.protocol import Endpoint, Shape
from hoopgw.addons.refusals import refuse
from hoopgw.addons.session_tokens import decode_token_key
from hoopgw.recorder import redaction
from hoopgw.recorder.annotations import (
    HELD_FOR_REVIEW,
    HELD_MARK,
    WAITING_FOR_DECISION,
    approval_comment,
)
from hoopgw.recorder.approvals import (
    Approval,
    ApprovalBook,
    ApprovalDecision,
    ApprovalRequest,
    fingerprint,
    is_approval_id,
    new_approval_id,
)
from hoopgw.recorder.records import Client, new_record, query_id_in_path
from hoopgw.recorder.schema import RecordKind
from hoopgw.recorder.statements import classify
from hoopgw.recorder.store import Store, StoreError

logger = logging.getLogger(__name__)

SOURCE = names.APPROVAL
IN_PROGRESS = "333333"
DESK_PREFIX = "/hoopgw/v1/approvals"
_KNOWN_LIMIT = 10_000
_WEBHOOK_ATTEMPTS = 4


class BodySealer:
    """Encrypts held request bodies for the store: replicas sharing the token key open them.

    It also holds the key that signs decisions (`decision_key`), derived from the same
    token key, so a decision object someone else put in the store is not obeyed.
    """

    def __init__(self, key: bytes) -> None:
        derived = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"hoopgw approval bodies"
        ).derive(key)
        self._aead = AESGCM(derived)
        self.decision_key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"hoopgw approval decisions"
        ).derive(key)

    def seal(self, approval_id: str, body: bytes) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, body, approval_id.encode())
        return base64.b64encode(nonce + sealed).decode("ascii")

    def open(self, approval_id: str, text: str) -> bytes:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
        return self._aead.decrypt(raw[:12], raw[12:], approval_id.encode())


SQL_API_SUBMIT = "/api/v2/statements"


def is_sql_api(request: ApprovalRequest) -> bool:
    return request.path.startswith(SQL_API_SUBMIT)


def held_answer(request: ApprovalRequest, message: str) -> http.Response:
    """ "Still running" in the shape the client polls: the drivers' 333333, or the SQL API's 202."""
    if is_sql_api(request):
        body = {
            "code": "333334",
            "message": message,
            "statementHandle": request.id,
            "statementStatusUrl": f"{SQL_API_SUBMIT}/{request.id}",
        }
        return http.Response.make(202, orjson.dumps(body), {"content-type": "application/json"})
    return in_progress(request.id, message)


def _sql_api_handle(flow: http.HTTPFlow) -> tuple[str | None, bool]:
    """The statement handle an SQL API call names, and whether it cancels it."""
    route = flow.request.path.partition("?")[0].rstrip("/")
    parts = route.removeprefix(SQL_API_SUBMIT).strip("/").split("/")
    if not parts[0]:
        return None, False
    return parts[0], len(parts) == 2 and parts[1] == "cancel"


def in_progress(approval_id: str, message: str) -> http.Response:
    """What Snowflake answers for a statement still running; drivers then GET getResultUrl."""
    body = {
        "code": IN_PROGRESS,
        "data": {"getResultUrl": f"/queries/{approval_id}/result", "queryId": approval_id},
        "message": message,
        "success": True,
    }
    return http.Response.make(200, orjson.dumps(body), {"content-type": "application/json"})


class ApprovalShared:
    """The store, the body key and the recorder's spool, shared by both addons.

    The store and the spool are the Recording addon's (found by name when
    needed), so approvals live where the sessions they belong to are recorded.
    """

    def __init__(self) -> None:
        self.book: ApprovalBook | None = None
        self.sealer = BodySealer(os.urandom(32))

    def configure(self, updated: set[str]) -> None:
        if "hoopgw_token_key" in updated and ctx.options.hoopgw_token_key:
            ref = ctx.options.hoopgw_token_key
            try:
                key = decode_token_key(resolve_option_secret("hoopgw_token_key", ref))
            except ValueError as exc:
                raise exceptions.OptionsError(f"hoopgw_token_key: {ref}: {exc}") from None
            self.sealer = BodySealer(key)

    def required_book(self) -> ApprovalBook:
        """The approvals in the recorder's store (hoopgw_store), which every replica shares."""
        store: Store | None = getattr(ctx.master.addons.get("recording"), "store", None)
        if store is None:
            raise RuntimeError("no store for approvals (hoopgw_store is unset)")
        key = self.sealer.decision_key
        if self.book is None or self.book.store is not store or self.book.mac_key != key:
            self.book = ApprovalBook(store, key)
        return self.book

    @staticmethod
    def record(record: dict[str, Any]) -> asyncio.Future[dict[str, Any]] | None:
        """Append to the recorder's spool; the future settles once the record is durable."""
        recording = ctx.master.addons.get("recording")
        spool = getattr(recording, "spool", None)
        if spool is None:
            raise RuntimeError("the recording spool is not running")
        return spool.append_on_loop(record)

    @staticmethod
    def writer() -> str:
        recording = ctx.master.addons.get("recording")
        return str(getattr(recording, "writer_id", "unknown"))


def _client(flow: http.HTTPFlow, state: FlowState | None) -> Client:
    peer = flow.client_conn.peername
    return Client(
        address=f"{peer[0]}:{peer[1]}" if peer else None,
        application=state.client_app if state else None,
        version=state.client_version if state else None,
    )


def _decision_record(
    flow: http.HTTPFlow,
    state: FlowState | None,
    request: ApprovalRequest,
    decision: ApprovalDecision,
    caller: dict[str, Any] | None,
    **fields: Any,
) -> dict[str, Any]:
    return new_record(
        RecordKind.APPROVAL_DECISION,
        request.session_id,
        _client(flow, state),
        caller,
        **fields,
        approval_id=request.id,
        outcome=decision.outcome,
        approver=decision.approver,
        reason=decision.reason,
        waited_ms=round((decision.ts - request.created) * 1000, 1),
    )


class Approvals:
    """Holds statements a rule sends to review, and releases them on a decision."""

    def __init__(self, shared: ApprovalShared) -> None:
        self.shared = shared
        self.poll_seconds = 30.0
        self.check_seconds = 1.0
        self.reuse_seconds = 600.0
        self.webhook: str | None = None
        self._known: OrderedDict[str, ApprovalRequest] = OrderedDict()
        self._by_request_id: OrderedDict[str, str] = OrderedDict()
        self._not_held: OrderedDict[str, None] = OrderedDict()
        self._background: set[asyncio.Task[Any]] = set()

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "hoopgw_approval_poll",
            int,
            30,
            """
            Seconds each poll of a held statement (the driver's GET of its
            getResultUrl) waits for a decision before answering "still in
            progress" (333333); the driver then polls again at once. Keep it
            well under the drivers' 45-60 s socket timeouts.
            """,
        )
        loader.add_option(
            "hoopgw_approval_check_ms",
            int,
            1000,
            """
            How often, in milliseconds, a waiting poll reads the store for a
            decision: a decision taken on any replica is seen within this time.
            """,
        )
        loader.add_option(
            "hoopgw_approval_reuse",
            int,
            600,
            """
            Seconds after an approval during which the identical statement
            (same caller, text and bindings) runs once without a new request:
            agents that gave up waiting retry the statement.
            """,
        )
        loader.add_option(
            "hoopgw_approval_webhook",
            str | None,  # type: ignore[arg-type]
            None,
            """
            Secret reference (env:NAME, file:/path or aws-secretsmanager:ID) to a
            URL that gets a JSON POST, in the Slack incoming-webhook shape, for
            each new held statement. Failures are logged and retried; they
            never hold anything up.
            """,
        )

    def configure(self, updated: set[str]) -> None:
        self.shared.configure(updated)
        if "hoopgw_approval_poll" in updated:
            value = ctx.options.hoopgw_approval_poll
            if not 1 <= value <= 44:
                raise exceptions.OptionsError(
                    f"hoopgw_approval_poll must be 1 to 44 seconds, got {value}"
                )
            self.poll_seconds = float(value)
        if "hoopgw_approval_check_ms" in updated:
            value = ctx.options.hoopgw_approval_check_ms
            if value < 100:
                raise exceptions.OptionsError(
                    f"hoopgw_approval_check_ms must be at least 100, got {value}"
                )
            self.check_seconds = value / 1000
        if "hoopgw_approval_reuse" in updated:
            if ctx.options.hoopgw_approval_reuse < 0:
                raise exceptions.OptionsError("hoopgw_approval_reuse must not be negative")
            self.reuse_seconds = float(ctx.options.hoopgw_approval_reuse)
        if "hoopgw_approval_webhook" in updated:
            ref = ctx.options.hoopgw_approval_webhook
            self.webhook = (
                resolve_option_secret("hoopgw_approval_webhook", ref).decode().strip()
                if ref
                else None
            )

    def done(self) -> None:
        for task in self._background:
            task.cancel()

    async def request(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None or state.answered:
            return
        guardrail = state.guardrail or {}
        if guardrail.get("decision") == "review":
            await self._hold(flow, state, guardrail)
        elif state.endpoint is Endpoint.RESULT and flow.request.method == "GET":
            approval_id = query_id_in_path(flow.request.path)
            if approval_id is not None and is_approval_id(approval_id):
                await self._poll(flow, state, approval_id)
        elif state.endpoint is Endpoint.ABORT:
            await self._abort(flow, state)
        elif state.endpoint is Endpoint.SQL_API:
            handle, cancel = _sql_api_handle(flow)
            if handle is not None and is_approval_id(handle):
                if flow.request.method == "GET":
                    await self._poll(flow, state, handle)
                elif cancel:
                    await self._cancel(flow, state, handle)
        state.passed.add(SOURCE)

    # --- holding ---------------------------------------------------------------------------

    async def _hold(self, flow: http.HTTPFlow, state: FlowState, guardrail: dict[str, Any]) -> None:
        sql_api = state.endpoint is Endpoint.SQL_API and flow.request.method == "POST"
        # an MCP tool call cannot wait: it is answered "held" and retried (addons/mcp.py)
        tool_call = sql_tool_call(flow) if state.endpoint is Endpoint.MCP_SERVER else None
        if not (state.endpoint is Endpoint.QUERY or sql_api or tool_call) or state.caller is None:
            reason = f"{guardrail.get('reason')}, and this request cannot wait for a decision"
            refuse(flow, state, protocol.CODE_GATEWAY_POLICY, reason, SOURCE, sql_state="42501")
            return
        book = self.shared.required_book()
        body = state.request_json or {}
        sql_field = "statement" if sql_api else "sqlText"
        sql = body.get(sql_field) if isinstance(body.get(sql_field), str) else ""
        bindings = body.get("bindings")
        if tool_call is not None:  # the same SQL through another server or tool is another call
            sql, bindings = tool_call.sql, tool_call.target
        objects = guardrail.get("objects") or ()
        print_ = fingerprint(state.caller.subject, sql, bindings, objects)
        latest = await asyncio.to_thread(self._latest, book, print_)
        if latest is not None:
            outcome = latest.state()
            if outcome == "pending":
                await self._answer_held(flow, state, latest.request, joined=True)
                return
            reusable = outcome == "approved" and not latest.released and self._reusable(latest)
            writer = self.shared.writer()
            if reusable and await asyncio.to_thread(book.release, latest.request.id, writer):
                self._record_reuse(flow, state, latest)
                return  # the approved statement goes upstream as this request
        now = time.time()
        approval_id = new_approval_id()
        timeout = float(guardrail.get("review_timeout") or 900)
        # the SQL API body as Authentication rewrote it (role, warehouse); a query's as sent
        raw = (flow.request.content if sql_api else state.request_body) or b""
        request = ApprovalRequest(
            id=approval_id,
            session_id=state.session_id or "",
            caller=state.caller.as_record(),
            rule=guardrail.get("rule"),
            reason=guardrail.get("reason"),
            approvers=tuple(guardrail.get("approvers") or ()),
            created=now,
            expires=now + timeout,
            sql=redaction.redact_sql(sql)[:4096],
            objects=tuple(guardrail.get("objects") or ()),
            kinds=tuple(guardrail.get("kinds") or ()),
            fingerprint=print_,
            path=flow.request.path,
            request_id=flow.request.query.get("requestId"),
            sealed_body=self.shared.sealer.seal(approval_id, raw),
            writer=self.shared.writer(),
        )
        await asyncio.to_thread(book.add, request)
        await self._answer_held(flow, state, request, joined=False)
        self._notify(request)

    @staticmethod
    def _latest(book: ApprovalBook, print_: str) -> Approval | None:
        approval_id = book.latest_for(print_)
        return book.approval(approval_id) if approval_id else None

    def _reusable(self, approval: Approval) -> bool:
        decision = approval.decision
        return decision is not None and time.time() - decision.ts <= self.reuse_seconds

    async def _answer_held(
        self, flow: http.HTTPFlow, state: FlowState, request: ApprovalRequest, *, joined: bool
    ) -> None:
        record = new_record(
            RecordKind.APPROVAL_REQUEST,
            state.session_id,
            _client(flow, state),
            state.caller.as_record() if state.caller else None,
            flow_id=flow.id,
            approval_id=request.id,
            rule=request.rule,
            reason=request.reason,
            approvers=list(request.approvers),
            expires=request.expires,
            fingerprint=request.fingerprint,
            joined=joined,
        )
        written = self.shared.record(record)
        if written is not None:
            await written
        self._remember(request)
        request_id = flow.request.query.get("requestId")
        if request_id:
            self._by_request_id[request_id] = request.id
            while len(self._by_request_id) > _KNOWN_LIMIT:
                self._by_request_id.popitem(last=False)
        flow.response = held_answer(request, self._waiting_message(request))
        _annotate(flow, request, HELD_FOR_REVIEW)
        logger.info(
            "hoopgw: held statement %s of %s for review (rule %s)",
            request.id,
            request.subject,
            request.rule,
        )

    @staticmethod
    def _waiting_message(request: ApprovalRequest) -> str:
        return (
            f"hoopgw holds this statement for review by {', '.join(request.approvers)} "
            f"(approval {request.id}): {request.reason}"
        )

    def _remember(self, request: ApprovalRequest) -> None:
        self._known[request.id] = request
        self._known.move_to_end(request.id)
        while len(self._known) > _KNOWN_LIMIT:
            self._known.popitem(last=False)

    def _record_reuse(self, flow: http.HTTPFlow, state: FlowState, approval: Approval) -> None:
        decision = approval.decision
        assert decision is not None
        record = _decision_record(
            flow,
            state,
            approval.request,
            ApprovalDecision(
                approval.request.id,
                "approved",
                time.time(),
                decision.approver,
                f"reused: {decision.reason or 'approved'}",
            ),
            state.caller.as_record() if state.caller else None,
            flow_id=flow.id,  # the flow that ran it: replay runs this one
        )
        record["session_id"] = state.session_id
        self.shared.record(record)

    # --- polling ---------------------------------------------------------------------------

    async def _poll(self, flow: http.HTTPFlow, state: FlowState, approval_id: str) -> None:
        book = self.shared.required_book()
        request = self._known.get(approval_id)
        if request is None:
            if approval_id in self._not_held:
                return
            request = await asyncio.to_thread(book.request, approval_id)
            if request is None:
                # a query id of Snowflake's own; an approval is stored before its id is handed out
                self._not_held[approval_id] = None
                while len(self._not_held) > _KNOWN_LIMIT:
                    self._not_held.popitem(last=False)
                return
            self._remember(request)
        if state.caller is None or state.caller.subject != request.subject:
            refuse(
                flow,
                state,
                protocol.CODE_GATEWAY_PROTOCOL,
                "the held statement belongs to another caller",
                SOURCE,
                shape=Shape.QUERY,
            )
            return
        deadline = time.monotonic() + self.poll_seconds
        while True:
            decision = await asyncio.to_thread(book.decision, approval_id)
            if decision is None and time.time() >= request.expires:
                timeout = ApprovalDecision(approval_id, "timeout", time.time())
                decision, written = await asyncio.to_thread(book.decide, timeout)
                if written:
                    self.shared.record(_decision_record(flow, state, request, decision, None))
            if decision is not None:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                flow.response = held_answer(request, self._waiting_message(request))
                _annotate(flow, request, WAITING_FOR_DECISION)
                return
            await asyncio.sleep(min(self.check_seconds, remaining))
        await self._settle(flow, state, request, decision)
        _annotate(flow, request, decision.outcome)

    async def _settle(
        self,
        flow: http.HTTPFlow,
        state: FlowState,
        request: ApprovalRequest,
        decision: ApprovalDecision,
    ) -> None:
        shape = Shape.SQL_API if is_sql_api(request) else Shape.QUERY
        if decision.outcome == "approved":
            body = self.shared.sealer.open(request.id, request.sealed_body)
            refused = await self._now_refused(state, request, body)
            if refused is not None:
                refuse(
                    flow,
                    state,
                    protocol.CODE_GATEWAY_POLICY,
                    refused,
                    SOURCE,
                    message=f"Statement refused by hoopgw policy: {refused}.",
                    shape=shape,
                    sql_state="42501",
                    sql_api_status=422,
                )
                return
            released = await asyncio.to_thread(
                self.shared.required_book().release, request.id, self.shared.writer()
            )
            if released:
                self._release(flow, state, request, body)
                return
            reason = f"approval {request.id} was approved and its statement already ran"
            code = protocol.CODE_GATEWAY_PROTOCOL
            message = None
        elif decision.outcome == "denied":
            who = (decision.approver or {}).get("email") or (decision.approver or {}).get("subject")
            reason = f"approval {request.id} denied by {who}: {decision.reason}"
            code = protocol.CODE_APPROVAL_DENIED
            message = (
                f"Statement denied by {who}: {decision.reason} (hoopgw approval {request.id})."
            )
        elif decision.outcome == "withdrawn":
            reason = f"approval {request.id} was withdrawn (the statement was aborted)"
            code = protocol.CODE_APPROVAL_DENIED
            message = f"Statement withdrawn before a decision (hoopgw approval {request.id})."
        else:
            reason = f"approval {request.id} was not decided in time"
            code = protocol.CODE_APPROVAL_TIMEOUT
            message = (
                f"Statement not approved within its review time by {', '.join(request.approvers)}"
                f"; it did not run (hoopgw approval {request.id})."
            )
        refuse(flow, state, code, reason, SOURCE, message=message, shape=shape, sql_api_status=422)

    @staticmethod
    async def _now_refused(state: FlowState, request: ApprovalRequest, body: bytes) -> str | None:
        """Deny wins over an approval too: the policy in force now may refuse what was held."""
        guardrails = ctx.master.addons.get("guardrails")
        policy = getattr(guardrails, "policy", None)
        if policy is None:
            return None
        parsed = orjson.loads(body) if body else {}
        sql = parsed.get("statement" if is_sql_api(request) else "sqlText")
        if not isinstance(sql, str):
            return None
        groups = tuple(request.caller.get("groups") or ())
        if is_sql_api(request):  # each SQL API call names its own context
            database, schema = parsed.get("database"), parsed.get("schema")
        else:
            database, schema = state.context.database, state.context.schema
        statements = await asyncio.to_thread(
            classify,
            sql,
            database=database if isinstance(database, str) else None,
            schema=schema if isinstance(schema, str) else None,
        )
        decision = policy.check(statements, groups)
        return decision.reason if decision.blocked else None

    def _release(
        self, flow: http.HTTPFlow, state: FlowState, request: ApprovalRequest, body: bytes
    ) -> None:
        """This GET becomes the held POST, body as sent; Snowflake's answer is its answer."""
        outgoing = flow.request
        outgoing.method = "POST"
        outgoing.path = request.path
        outgoing.headers.pop("content-encoding", None)
        outgoing.headers["content-type"] = "application/json"
        outgoing.raw_content = body
        outgoing.headers["content-length"] = str(len(body))
        state.request_body = body
        logger.info("hoopgw: released approved statement %s upstream", request.id)

    # --- abort -----------------------------------------------------------------------------

    async def _abort(self, flow: http.HTTPFlow, state: FlowState) -> None:
        body = state.request_json or {}
        request_id = body.get("requestId")
        approval_id = self._by_request_id.get(request_id) if isinstance(request_id, str) else None
        request = self._known.get(approval_id) if approval_id else None
        if request is None or state.caller is None or state.caller.subject != request.subject:
            return  # not a held statement: Snowflake's own abort
        await self._withdraw(flow, state, request)
        answer = {"code": None, "data": None, "message": None, "success": True}
        flow.response = http.Response.make(
            200, orjson.dumps(answer), {"content-type": "application/json"}
        )

    async def _cancel(self, flow: http.HTTPFlow, state: FlowState, handle: str) -> None:
        request = self._known.get(handle) or await asyncio.to_thread(
            self.shared.required_book().request, handle
        )
        if request is None or state.caller is None or state.caller.subject != request.subject:
            return
        await self._withdraw(flow, state, request)
        answer = {
            "code": "000604",
            "sqlState": "57014",
            "message": "Statement withdrawn before a decision.",
            "statementHandle": handle,
        }
        flow.response = http.Response.make(
            200, orjson.dumps(answer), {"content-type": "application/json"}
        )

    async def _withdraw(
        self, flow: http.HTTPFlow, state: FlowState, request: ApprovalRequest
    ) -> None:
        withdrawn = ApprovalDecision(request.id, "withdrawn", time.time(), None, "aborted")
        decision, written = await asyncio.to_thread(self.shared.required_book().decide, withdrawn)
        if written:
            self.shared.record(_decision_record(flow, state, request, decision, None))

    # --- notification ----------------------------------------------------------------------

    def _notify(self, request: ApprovalRequest) -> None:
        if not self.webhook:
            return
        task = asyncio.create_task(asyncio.to_thread(post_webhook, self.webhook, request))
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _annotate(flow: http.HTTPFlow, request: ApprovalRequest, what: str) -> None:
    """What mitmweb shows: Inspection comments a statement with its SQL; a poll gets this."""
    flow.marked = HELD_MARK
    flow.comment = approval_comment(request.id, what)
    flow.metadata["hoopgw_approval"] = {"id": request.id, "rule": request.rule, "state": what}


def webhook_payload(request: ApprovalRequest) -> dict[str, Any]:
    """A Slack incoming-webhook message: `text`, plus the same facts as structured fields."""
    who = request.caller.get("email") or request.subject
    command = f"hoopgw approvals approve {request.id} --reason '...'"
    return {
        "text": (
            f"hoopgw holds a statement of {who} for review (rule {request.rule}):\n"
            f"```{request.sql}```\nApprove: `{command}`"
        ),
        "fields": [
            {"title": "caller", "value": who, "short": True},
            {"title": "rule", "value": request.rule, "short": True},
            {"title": "statement", "value": request.sql, "short": False},
            {"title": "objects", "value": ", ".join(request.objects), "short": False},
            {"title": "approve", "value": command, "short": False},
            {"title": "deny", "value": f"hoopgw approvals deny {request.id} --reason '...'"},
        ],
        "approval_id": request.id,
    }


def post_webhook(url: str, request: ApprovalRequest, attempts: int = _WEBHOOK_ATTEMPTS) -> bool:
    """POST the notification, retrying with backoff; blocking, so it runs in a worker thread."""
    payload = orjson.dumps(webhook_payload(request))
    host = urllib.parse.urlsplit(url).hostname
    for attempt in range(attempts):
        try:
            message = urllib.request.Request(
                url, payload, {"content-type": "application/json"}, method="POST"
            )
            with urllib.request.urlopen(message, timeout=10) as answer:
                if answer.status < 300:
                    return True
                problem = f"HTTP {answer.status}"
        except OSError as exc:
            problem = type(exc).__name__
        logger.warning(
            "hoopgw: approval webhook to %s failed (%s), attempt %d of %d",
            host,
            problem,
            attempt + 1,
            attempts,
        )
        time.sleep(min(2**attempt, 30))
    return False


class ApprovalDesk:
    """Serves `/hoopgw/v1/approvals`: approvers list, show, approve and deny held statements."""

    def __init__(self, shared: ApprovalShared) -> None:
        self.shared = shared

    async def request(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None or state.endpoint is not Endpoint.APPROVALS:
            return
        if state.answered:
            return  # refused by traffic checks (method, malformed head): recorded as refusals are
        detach(flow)  # the gateway's own endpoint: no session, no upstream, no other hook
        try:
            status, answer = await self._serve(flow, state)
        except (StoreError, RuntimeError) as exc:
            logger.error("hoopgw: approvals desk failed: %s", exc)
            status, answer = 503, {"error": "the approvals store cannot be read now"}
        flow.response = http.Response.make(
            status, orjson.dumps(answer), {"content-type": "application/json"}
        )

    async def _serve(self, flow: http.HTTPFlow, state: FlowState) -> tuple[int, dict[str, Any]]:
        approver = await self._approver(flow)
        if isinstance(approver, str):
            return 401, {"error": approver}
        book = self.shared.required_book()
        route = flow.request.path.partition("?")[0].removeprefix(DESK_PREFIX).strip("/")
        parts = route.split("/") if route else []
        method = flow.request.method
        if not parts:
            if method != "GET":
                return 405, {"error": "list with GET"}
            wanted = flow.request.query.get("state")
            approvals = await asyncio.to_thread(book.all)
            now = time.time()
            shown = [
                approval.as_dict(now)
                for approval in approvals
                if _may_see(approver, approval.request)
                and (not wanted or approval.state(now) == wanted)
            ]
            return 200, {"approvals": shown}
        approval = await asyncio.to_thread(book.approval, parts[0])
        if approval is None or not _may_see(approver, approval.request):
            return 404, {"error": f"no approval {parts[0][:40]!r} that you may see"}
        if len(parts) == 1:
            return (200, approval.as_dict()) if method == "GET" else (405, {"error": "use GET"})
        if method != "POST":
            return 405, {"error": f"{parts[1]} with POST"}
        return await self._decide(flow, state, approver, approval, parts[1])

    async def _decide(
        self,
        flow: http.HTTPFlow,
        state: FlowState,
        approver: dict[str, Any],
        approval: Approval,
        action: str,
    ) -> tuple[int, dict[str, Any]]:
        request = approval.request
        try:
            body = orjson.loads(state.request_body or b"{}") if state.request_body else {}
        except orjson.JSONDecodeError:
            return 400, {"error": 'the body must be JSON: {"reason": "..."}'}
        reason = body.get("reason") if isinstance(body, dict) else None
        if reason is not None and not isinstance(reason, str):
            return 400, {"error": "reason must be a string"}
        reason = (reason or "").strip()[:1000] or None
        if action == "deny" and not reason:
            return 400, {"error": "a denial needs a reason"}
        if approver["subject"] == request.subject:
            return 403, {"error": "you may not decide your own request"}
        if not set(approver["groups"]) & set(request.approvers):
            return 403, {
                "error": f"only members of {', '.join(request.approvers)} may decide this request"
            }
        if approval.state() != "pending":
            return _already_decided(approval, approval.decision)
        outcome = "approved" if action == "approve" else "denied"
        decision = ApprovalDecision(request.id, outcome, time.time(), approver, reason)  # type: ignore[arg-type]
        book = self.shared.required_book()
        stored, written = await asyncio.to_thread(book.decide, decision)
        if not written:
            return _already_decided(approval, stored)
        durable = self.shared.record(_decision_record(flow, None, request, decision, approver))
        if durable is not None:
            await durable
        logger.info("hoopgw: approval %s %s by %s", request.id, outcome, approver.get("subject"))
        approval.decision = decision
        return 200, approval.as_dict()

    @staticmethod
    async def _approver(flow: http.HTTPFlow) -> dict[str, Any] | str:
        """The verified identity behind the Bearer token, or why there is none."""
        scheme, _, token = flow.request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return "present your identity provider's ID token as Authorization: Bearer"
        authentication = ctx.master.addons.get("authentication")
        identity = getattr(authentication, "identity", None)
        verifier = getattr(identity, "verifier", None)
        if identity is None or verifier is None:
            return "identity is not configured on this gateway (hoopgw_oidc_issuer is unset)"
        try:
            verified = await verifier.verify(token.strip())
            groups = groups_from(verified.claims, identity.groups_claim)
        except IdentityUnavailable as exc:
            return f"the token cannot be verified now: {exc}"
        except IdentityError as exc:
            return f"the token was refused: {exc}"
        return {
            "subject": verified.subject,
            "email": verified.email,
            "groups": list(groups),
            "issuer": verifier.issuer,
        }


def _already_decided(
    approval: Approval, standing: ApprovalDecision | None
) -> tuple[int, dict[str, Any]]:
    """409 for a decision that came second: it names the decision that stands."""
    request = approval.request
    if standing is None:  # timed out, nobody decided
        message = f"approval {request.id} is already {approval.state()}: nothing was decided"
        return 409, {"error": message, "decision": None}
    who = standing.approver or {}
    by = f" by {who.get('email') or who.get('subject')}" if who else ""
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(standing.ts))
    because = f": {standing.reason}" if standing.reason else ""
    message = f"approval {request.id} was already {standing.outcome}{by} at {when}{because}"
    shown = {"id": standing.id, "outcome": standing.outcome, "ts": standing.ts}
    shown |= {"approver": standing.approver, "reason": standing.reason}
    return 409, {"error": message, "decision": shown}


def _may_see(approver: dict[str, Any], request: ApprovalRequest) -> bool:
    return approver["subject"] == request.subject or bool(
        set(approver["groups"]) & set(request.approvers)
    )
