"""Approval: holding a reviewed statement, releasing it on a decision, and the approvers' desk.

Real components throughout: the Recording addon with its spool on a temporary
directory, a local store, Authentication against the loopback OIDC issuer
(tests/jwt_issuer.py) for the desk's Bearer tokens, and the policy parser.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.exceptions import InvalidTag
from mitmproxy import http
from mitmproxy.test import taddons

from hoopgw.addons import protocol
from hoopgw.addons.approval import (
    HELD_MARK,
    ApprovalDesk,
    Approvals,
    ApprovalShared,
    BodySealer,
    post_webhook,
    webhook_payload,
)
from hoopgw.addons.authentication import Authentication
from hoopgw.addons.flowstate import Caller, FlowState, state_of
from hoopgw.addons.guardrails import Guardrails, PolicyError, parse_policy
from hoopgw.addons.recording import Recording
from hoopgw.recorder.approvals import ApprovalBook, ApprovalDecision
from hoopgw.recorder.secrets import new_token_key
from hoopgw.recorder.statements import classify as classify_in
from tests import stack
from tests.addons import QUERY_PATH, classified, snowflake_flow
from tests.bodies import query_body
from tests.jwt_issuer import LocalIssuer

SESSION = "0190f3c4-7b1a-7c2e-9d4f-1a2b3c4d5e6f"
ALICE = Caller("alice", "alice@example.com", ("agents",), "AGENT", "https://idp.example.com")
REVIEW = {
    "decision": "review",
    "rule": "agents-review",
    "reason": "rule 'agents-review' sends DELETE to review",
    "statement_index": 0,
    "kinds": ["DELETE"],
    "objects": ["DB.APP.T"],
    "policy": None,
    "approvers": ["dba"],
    "review_timeout": 900.0,
}
POLICY = """
[[rule]]
name = "agents-review"
groups = ["agents"]
review_kinds = ["DELETE"]
review_objects = ["*.PAYROLL.*"]
deny_kinds = ["DROP"]
approvers = ["dba"]
review_timeout = 60
"""


@asynccontextmanager
async def gateway(
    tmp_path: Path, issuer: LocalIssuer, service_key: Path, policy: Path | None = None
) -> AsyncIterator[Any]:
    """The approval addons with the real Authentication and Recording they lean on."""
    shared = ApprovalShared()
    auth, recording, guardrails = Authentication(), Recording(), Guardrails()
    approvals, desk = Approvals(shared), ApprovalDesk(shared)
    with taddons.context(auth, guardrails, recording, approvals, desk) as tctx:
        if policy is not None:
            tctx.configure(guardrails, hoopgw_policy=str(policy))
        tctx.configure(
            auth,
            hoopgw_oidc_issuer=issuer.issuer,
            hoopgw_oidc_audience="hoopgw",
            hoopgw_allowed_groups=["agents"],
            hoopgw_role_map=["agents=AGENT"],
            hoopgw_upstream_account="acct",
            hoopgw_upstream_user="svc",
            hoopgw_upstream_secondary_roles="none",
            hoopgw_upstream_private_key=f"file:{service_key}",
        )
        tctx.configure(
            recording,
            hoopgw_store=f"file:{tmp_path / 'store'}",
            hoopgw_spool_dir=str(tmp_path / "spool"),
            hoopgw_rollup_interval=0,
        )
        tctx.configure(approvals, hoopgw_approval_poll=1, hoopgw_approval_check_ms=100)
        recording.running()
        try:
            yield approvals, desk, shared, recording
        finally:
            recording.done()


def held_flow(sql: str = "delete from db.app.t where id = 1") -> tuple[http.HTTPFlow, FlowState]:
    flow = snowflake_flow("POST", f"{QUERY_PATH}?requestId=r-1", query_body(sql))
    state = classified(flow)
    state.caller, state.session_id, state.guardrail = ALICE, SESSION, dict(REVIEW)
    return flow, state


def poll_flow(approval_id: str, caller: Caller = ALICE) -> tuple[http.HTTPFlow, FlowState]:
    flow = snowflake_flow("GET", f"/queries/{approval_id}/result")
    state = classified(flow)
    state.caller, state.session_id = caller, SESSION
    return flow, state


def answer(flow: http.HTTPFlow) -> dict[str, Any]:
    assert flow.response is not None
    return orjson.loads(flow.response.content or b"{}")


def desk_flow(method: str, path: str, token: str | None, body: dict | None = None):
    headers = [("authorization", f"Bearer {token}")] if token else []
    flow = snowflake_flow(method, f"/hoopgw/v1/approvals{path}", body, headers)
    classified(flow)
    return flow


async def test_a_reviewed_statement_is_held_sealed_and_on_record(
    tmp_path: Path, issuer: LocalIssuer, service_key: Path
) -> None:
    async with gateway(tmp_path, issuer, service_key) as (approvals, _desk, shared, recording):
        flow, state = held_flow("alter user u set password = 'hunter2'")
        await approvals.request(flow)
        held = answer(flow)
        assert held["code"] == "333333" and held["success"] is True
        approval_id = held["data"]["queryId"]
        assert held["data"]["getResultUrl"] == f"/queries/{approval_id}/result"
        assert "approval" in state.passed
        request = shared.required_book().request(approval_id)
        assert request is not None and request.rule == "agents-review"
        stored = (tmp_path / "store" / "approvals" / f"{approval_id}.json").read_bytes()
        assert b"hunter2" not in stored, "the store holds the body sealed, the SQL masked"
        assert shared.sealer.open(approval_id, request.sealed_body) == flow.request.content
        assert recording.spool is not None and recording.spool.flush(timeout=10)


async def test_a_poll_answers_in_progress_until_the_approval_then_becomes_the_held_post(
    tmp_path: Path, issuer: LocalIssuer, service_key: Path
) -> None:
    async with gateway(tmp_path, issuer, service_key) as (approvals, _desk, shared, _rec):
        flow, _state = held_flow()
        sent = flow.request.content
        await approvals.request(flow)
        approval_id = answer(flow)["data"]["queryId"]

        assert flow.marked == HELD_MARK
        poll, _ = poll_flow(approval_id)
        await approvals.request(poll)
        assert answer(poll)["code"] == "333333"
        assert poll.comment == f"approval {approval_id}: waiting for a decision"

        shared.required_book().decide(
            ApprovalDecision(approval_id, "approved", 1.0e9 * 2, {"subject": "bob"}, "ok")
        )
        poll, poll_state = poll_flow(approval_id)
        await approvals.request(poll)
        assert poll.response is None, "the poll goes upstream as the held statement"
        assert poll.request.method == "POST"
        assert poll.request.path == f"{QUERY_PATH}?requestId=r-1"
        assert poll.request.content == sent
        assert poll_state.refusal is None

        again, again_state = poll_flow(approval_id)
        await approvals.request(again)
        assert again_state.refusal is not None and "already ran" in again_state.refusal.reason


@pytest.mark.parametrize(
    ("outcome", "code", "words"),
    [
        ("denied", protocol.CODE_APPROVAL_DENIED, "Statement denied by bob@example.com: no"),
        ("timeout", protocol.CODE_APPROVAL_TIMEOUT, "not approved within its review time"),
        ("withdrawn", protocol.CODE_APPROVAL_DENIED, "withdrawn"),
    ],
)
async def test_decisions_other_than_approval_reach_the_driver_as_errors(
    tmp_path: Path, issuer: LocalIssuer, service_key: Path, outcome: str, code: int, words: str
) -> None:
    async with gateway(tmp_path, issuer, service_key) as (approvals, _desk, shared, _rec):
        flow, _ = held_flow()
        await approvals.request(flow)
        approval_id = answer(flow)["data"]["queryId"]
        approver = {"subject": "bob", "email": "bob@example.com"}
        shared.required_book().decide(ApprovalDecision(approval_id, outcome, 2e9, approver, "no"))  # type: ignore[arg-type]
        poll, state = poll_flow(approval_id)
        await approvals.request(poll)
        error = answer(poll)
        assert error["code"] == str(code) and error["success"] is False
        assert words in error["message"]
        assert state.refusal is not None and state.refusal.source == "approval"


async def test_a_poll_by_another_caller_is_refused(
    tmp_path: Path, issuer: LocalIssuer, service_key: Path
) -> None:
    async with gateway(tmp_path, issuer, service_key) as (approvals, _desk, _shared, _rec):
        flow, _ = held_flow()
        await approvals.request(flow)
        approval_id = answer(flow)["data"]["queryId"]
        mallory = Caller("mallory", None, ("agents",), "AGENT")
        poll, state = poll_flow(approval_id, mallory)
        await approvals.request(poll)
        assert state.refusal is not None and "another caller" in state.refusal.reason


async def test_a_snowflake_query_id_is_left_alone(
    tmp_path: Path, issuer: LocalIssuer, service_key: Path
) -> None:
    async with gateway(tmp_path, issuer, service_key) as (approvals, _desk, _shared, _rec):
        poll, state = poll_flow("01b2c3d4-0000-1234-0000-00012e0a5e2d")
        await approvals.request(poll)
        assert poll.response is None and state.refusal is None


async def test_the_desk_verifies_approvers_and_records_their_decision(
    tmp_path: Path, issuer: LocalIssuer, service_key: Path
) -> None:
    async with gateway(tmp_path, issuer, service_key) as (approvals, desk, shared, _rec):
        flow, _ = held_flow()
        await approvals.request(flow)
        approval_id = answer(flow)["data"]["queryId"]
        path = f"/{approval_id}/approve"

        cases = [
            (None, 401, "Bearer"),
            (issuer.with_bad_signature(subject="bob", groups=["dba"]), 401, "refused"),
            (issuer.mint("alice", ["dba"]), 403, "your own request"),
            (issuer.mint("eve", ["agents"]), 404, "no approval"),
        ]
        for token, status, words in cases:
            refused = desk_flow("POST", path, token, {"reason": "x"})
            await desk.request(refused)
            assert refused.response is not None
            assert refused.response.status_code == status, refused.response.content
            assert words in answer(refused)["error"]
            assert state_of(refused) is None, "the desk's flows leave the other hooks alone"

        bob = issuer.mint("bob", ["dba"])
        no_reason = desk_flow("POST", f"/{approval_id}/deny", bob, {})
        await desk.request(no_reason)
        assert no_reason.response is not None and no_reason.response.status_code == 400

        listing = desk_flow("GET", "?state=pending", bob)
        await desk.request(listing)
        assert [item["id"] for item in answer(listing)["approvals"]] == [approval_id]
        assert "sealed_body" not in answer(listing)["approvals"][0]

        approved = desk_flow("POST", path, bob, {"reason": "ticket 7"})
        await desk.request(approved)
        assert approved.response is not None and approved.response.status_code == 200
        assert answer(approved)["state"] == "approved"
        decision = shared.required_book().decision(approval_id)
        assert decision is not None and decision.approver is not None
        assert decision.approver["subject"] == "bob" and decision.reason == "ticket 7"

        twice = desk_flow("POST", f"/{approval_id}/deny", bob, {"reason": "late"})
        await desk.request(twice)
        assert twice.response is not None and twice.response.status_code == 409


async def test_a_retry_joins_the_pending_request(
    tmp_path: Path, issuer: LocalIssuer, service_key: Path
) -> None:
    async with gateway(tmp_path, issuer, service_key) as (approvals, _desk, _shared, _rec):
        first, _ = held_flow()
        await approvals.request(first)
        retry, _ = held_flow()
        await approvals.request(retry)
        assert answer(first)["data"]["queryId"] == answer(retry)["data"]["queryId"]
        other, _ = held_flow("delete from db.app.t where id = 2")
        await approvals.request(other)
        assert answer(other)["data"]["queryId"] != answer(first)["data"]["queryId"]


def test_sealed_bodies_open_only_with_the_same_key_and_id() -> None:
    key = new_token_key().encode()
    import base64

    material = base64.urlsafe_b64decode(key + b"=" * (-len(key) % 4))
    sealer = BodySealer(material)
    sealed = sealer.seal("id-1", b'{"sqlText": "x"}')
    assert BodySealer(material).open("id-1", sealed) == b'{"sqlText": "x"}'
    with pytest.raises(InvalidTag):
        BodySealer(material).open("id-2", sealed)
    with pytest.raises(InvalidTag):
        BodySealer(bytes(32)).open("id-1", sealed)


def classify(sql: str) -> list:
    return classify_in(sql, database=None, schema=None)


def test_review_keys_in_the_policy() -> None:
    policy = parse_policy(POLICY.encode(), "policy.toml")
    groups = ("agents",)
    review = policy.check(classify("delete from db.app.t where id = 1"), groups)
    assert review.held and review.rule == "agents-review"
    assert review.as_record()["approvers"] == ["dba"]
    assert review.as_record()["review_timeout"] == 60.0
    assert policy.check(classify("select * from db.payroll.emp"), groups).held
    assert policy.check(classify("select * from db.app.t"), groups).decision == "allow"
    both = policy.check(classify("delete from db.app.t; drop table db.app.t"), groups)
    assert both.blocked, "deny wins over review"
    waits = policy.check(classify("select 1; delete from db.app.t where id = 1"), groups)
    assert waits.held and waits.statement_index == 1
    assert not policy.check(classify("delete from db.app.t"), ("others",)).held


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        ('review_kinds = ["DELETE"]', "approvers: required"),
        ('approvers = ["dba"]', "must name review_kinds or review_objects"),
        ('review_kinds = ["DELETE"]\napprovers = []', "approvers: must name at least one"),
        ('review_kinds = ["DELETE"]\napprovers = ["dba"]\nreview_timeout = 0', "positive"),
        ('review_objects = ["x"]\napprovers = ["dba"]', "three dot-separated parts"),
        ('review_kinds = ["NOPE"]\napprovers = ["dba"]', "unknown statement kind"),
    ],
)
def test_unusable_review_keys_are_refused(rule: str, problem: str) -> None:
    text = f'[[rule]]\nname = "r"\ngroups = ["agents"]\n{rule}\n'
    with pytest.raises(PolicyError, match=problem):
        parse_policy(text.encode(), "policy.toml")


class Hook(stack.LoopbackServer):
    """A webhook receiver that fails its first call, then takes the rest."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def serve(self, handler: BaseHTTPRequestHandler) -> None:
        body = stack.read_body(handler)
        with self.lock:
            self.received.append(orjson.loads(body))
            status = 500 if len(self.received) == 1 else 200
        handler.send_response(status)
        handler.send_header("Content-Length", "0")
        handler.end_headers()


@pytest.fixture
def hook() -> Iterator[Hook]:
    server = Hook().start()
    yield server
    server.stop()


async def test_the_webhook_names_the_command_and_is_retried(
    tmp_path: Path, issuer: LocalIssuer, service_key: Path, hook: Hook
) -> None:
    async with gateway(tmp_path, issuer, service_key) as (approvals, _desk, shared, _rec):
        flow, _ = held_flow()
        await approvals.request(flow)
        approval_id = answer(flow)["data"]["queryId"]
        request = shared.required_book().request(approval_id)
        assert request is not None
        payload = webhook_payload(request)
        assert f"hoopgw approvals approve {approval_id}" in payload["text"]
        titles = {field["title"]: field["value"] for field in payload["fields"]}
        assert titles["caller"] == "alice@example.com" and titles["rule"] == "agents-review"
        assert "delete from db.app.t" in titles["statement"]
        assert post_webhook(hook.url, request, attempts=2)
        assert len(hook.received) == 2 and hook.received[1]["approval_id"] == approval_id


async def test_a_waiting_poll_reads_the_store_at_the_configured_rate(
    tmp_path: Path, issuer: LocalIssuer, service_key: Path
) -> None:
    """One decision read per hoopgw_approval_check_ms, the request read once: the cost of a hold."""
    async with gateway(tmp_path, issuer, service_key) as (approvals, _desk, shared, _rec):
        flow, _ = held_flow()
        await approvals.request(flow)
        approval_id = answer(flow)["data"]["queryId"]
        book = shared.required_book()
        reads = book.reads
        poll, _ = poll_flow(approval_id)
        await approvals.request(poll)  # 1 s, checking every 100 ms
        assert answer(poll)["code"] == "333333"
        assert 8 <= book.reads - reads <= 12


async def test_a_snowflake_query_id_costs_one_store_read(
    tmp_path: Path, issuer: LocalIssuer, service_key: Path
) -> None:
    async with gateway(tmp_path, issuer, service_key) as (approvals, _desk, shared, _rec):
        book = shared.required_book()
        reads = book.reads
        for _ in range(3):
            poll, _state = poll_flow("01b2c3d4-0000-1234-0000-00012e0a5e2d")
            await approvals.request(poll)
            assert poll.response is None
        assert book.reads - reads == 1


def sql_api_flow(
    method: str, path: str, body: dict | None = None
) -> tuple[http.HTTPFlow, FlowState]:
    flow = snowflake_flow(method, path, body)
    state = classified(flow)
    state.caller, state.session_id = ALICE, SESSION
    return flow, state


async def test_an_sql_api_statement_is_held_with_a_statement_handle(
    tmp_path: Path, issuer: LocalIssuer, service_key: Path
) -> None:
    async with gateway(tmp_path, issuer, service_key) as (approvals, _desk, shared, _rec):
        flow, state = sql_api_flow(
            "POST", "/api/v2/statements?async=false", {"statement": "delete from t where id = 1"}
        )
        state.guardrail = dict(REVIEW)
        sent = flow.request.content
        await approvals.request(flow)
        assert flow.response is not None and flow.response.status_code == 202
        handle = answer(flow)["statementHandle"]
        assert answer(flow)["statementStatusUrl"] == f"/api/v2/statements/{handle}"

        poll, _ = sql_api_flow("GET", f"/api/v2/statements/{handle}")
        await approvals.request(poll)
        assert poll.response is not None and poll.response.status_code == 202

        shared.required_book().decide(ApprovalDecision(handle, "approved", 2e9, None, "ok"))
        poll, _ = sql_api_flow("GET", f"/api/v2/statements/{handle}")
        await approvals.request(poll)
        assert poll.response is None
        assert (poll.request.method, poll.request.path) == (
            "POST",
            "/api/v2/statements?async=false",
        )
        assert poll.request.content == sent


async def test_an_sql_api_cancel_withdraws_the_held_statement(
    tmp_path: Path, issuer: LocalIssuer, service_key: Path
) -> None:
    async with gateway(tmp_path, issuer, service_key) as (approvals, _desk, shared, _rec):
        flow, state = sql_api_flow("POST", "/api/v2/statements", {"statement": "delete from t"})
        state.guardrail = dict(REVIEW)
        await approvals.request(flow)
        handle = answer(flow)["statementHandle"]
        cancel, _ = sql_api_flow("POST", f"/api/v2/statements/{handle}/cancel")
        await approvals.request(cancel)
        assert answer(cancel)["statementHandle"] == handle
        decision = shared.required_book().decision(handle)
        assert decision is not None and decision.outcome == "withdrawn"
        poll, _ = sql_api_flow("GET", f"/api/v2/statements/{handle}")
        await approvals.request(poll)
        assert poll.response is not None and poll.response.status_code == 422
        assert answer(poll)["code"] == str(protocol.CODE_APPROVAL_DENIED)


async def test_a_policy_that_now_denies_the_statement_wins_over_its_approval(
    tmp_path: Path, issuer: LocalIssuer, service_key: Path
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    async with gateway(tmp_path, issuer, service_key, policy) as (approvals, _d, shared, _r):
        flow, _ = held_flow()
        await approvals.request(flow)
        approval_id = answer(flow)["data"]["queryId"]
        shared.required_book().decide(ApprovalDecision(approval_id, "approved", 2e9, None, None))
        policy.write_text(POLICY.replace('deny_kinds = ["DROP"]', 'deny_kinds = ["DELETE"]'))
        guardrails = ctx_addon("guardrails")
        assert guardrails.file.refresh()
        poll, state = poll_flow(approval_id)
        await approvals.request(poll)
        assert state.refusal is not None and state.refusal.code == protocol.CODE_GATEWAY_POLICY
        assert "denies DELETE" in answer(poll)["message"]
        assert not shared.required_book().released(approval_id)


def ctx_addon(name: str) -> Any:
    from mitmproxy import ctx

    return ctx.master.addons.get(name)


async def test_a_new_hold_notifies_the_webhook_without_waiting_for_it(
    tmp_path: Path,
    issuer: LocalIssuer,
    service_key: Path,
    hook: Hook,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio
    import time

    monkeypatch.setenv("HOOPGW_TEST_WEBHOOK", hook.url)
    async with gateway(tmp_path, issuer, service_key) as (approvals, _desk, _shared, _rec):
        from mitmproxy import ctx

        ctx.options.update(hoopgw_approval_webhook="env:HOOPGW_TEST_WEBHOOK")
        assert approvals.webhook == hook.url
        flow, _ = held_flow()
        await approvals.request(flow)
        assert answer(flow)["code"] == "333333"
        approval_id = answer(flow)["data"]["queryId"]
        deadline = time.monotonic() + 30
        while not any(item.get("approval_id") == approval_id for item in hook.received[1:]):
            assert time.monotonic() < deadline, "the webhook was not retried to success"
            await asyncio.sleep(0.05)
        assert hook.received[0]["approval_id"] == approval_id, "the failed first call was retried"


async def test_a_decision_put_into_the_store_by_anyone_but_a_gateway_is_ignored(
    tmp_path: Path, issuer: LocalIssuer, service_key: Path
) -> None:
    async with gateway(tmp_path, issuer, service_key) as (approvals, _desk, shared, _rec):
        flow, _ = held_flow()
        await approvals.request(flow)
        approval_id = answer(flow)["data"]["queryId"]
        book = shared.required_book()
        forged = ApprovalDecision(approval_id, "approved", 2e9, {"subject": "mallory"}, "me")
        ApprovalBook(book.store).decide(forged)  # no key: what a store writer can do
        assert book.decision(approval_id) is None
        poll, _ = poll_flow(approval_id)
        await approvals.request(poll)
        assert answer(poll)["code"] == "333333", "the forged approval released nothing"
