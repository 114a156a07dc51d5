"""Query ids bound to their session: bound on the way out, mapped back or refused on the way in."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import orjson
import pytest
from mitmproxy.test import taddons

from hoopgw.addons.authentication import Authentication
from hoopgw.addons.flowstate import state_of
from hoopgw.addons.query_ids import (
    QueryIdBinder,
    QueryIdError,
    QueryIds,
    bind_answer,
    looks_issued,
    map_result_scans,
    session_scope,
    sql_api_scope,
)
from hoopgw.recorder.approvals import new_approval_id
from tests.addons import (
    LOGIN_PATH,
    QUERY_PATH,
    answered,
    classified,
    error_of,
    session_header,
    snowflake_flow,
)
from tests.addons.test_authentication import options, sealed, upstream_login
from tests.bodies import login_body, query_body
from tests.jwt_issuer import LocalIssuer

RAW = "01b2c3d4-0000-7e6e-0000-0001a2b3c4d5"


def test_a_bound_id_is_a_uuid_only_its_scope_maps_back() -> None:
    binder = QueryIdBinder([os.urandom(32)])
    bound = binder.bind(RAW, session_scope("A"))
    assert bound != RAW and str(uuid.UUID(bound)) == bound
    assert binder.unbind(bound, session_scope("A")) == RAW
    assert binder.unbind(bound.upper(), session_scope("A")) == RAW
    refused = 0
    for index in range(200):
        try:
            assert binder.unbind(bound, session_scope(f"B{index}")) != RAW
        except QueryIdError as exc:
            assert str(exc) == f"query {bound} was not issued to this session"
            refused += 1
    assert refused >= 180  # about 98% of foreign ids are refused without asking Snowflake
    with pytest.raises(QueryIdError, match="is not a query id this gateway issued"):
        binder.unbind("../etc", session_scope("A"))
    assert binder.bind("not-a-uuid", session_scope("A")) == "not-a-uuid"


def test_any_replica_with_the_token_key_maps_alike_and_previous_keys_still_map() -> None:
    old, new = os.urandom(32), os.urandom(32)
    bound = QueryIdBinder([old]).bind(RAW, session_scope("A"))
    assert QueryIdBinder([old]).unbind(bound, session_scope("A")) == RAW
    assert QueryIdBinder([new, old]).unbind(bound, session_scope("A")) == RAW


def test_an_approval_id_is_bound_and_mapped_back_like_snowflakes() -> None:
    """Held statements' ids (version-4 UUIDs) must survive the round trip through a poll."""
    binder = QueryIdBinder([os.urandom(32)])
    for scope in (session_scope("A"), sql_api_scope("https://idp.example.com", "erin")):
        approval_id = new_approval_id()
        bound = binder.bind(approval_id, scope)
        assert bound != approval_id and binder.unbind(bound, scope) == approval_id


def test_what_looks_issued() -> None:
    assert looks_issued(uuid.UUID(RAW).bytes)
    assert looks_issued(uuid.uuid4().bytes)
    assert not looks_issued(bytes(16))


def test_result_scan_arguments_are_mapped_or_refused() -> None:
    def unbind(bound: str) -> str:
        return "RAW-" + bound[:4]

    bound = str(uuid.uuid4())
    assert map_result_scans(f"select * from table(RESULT_SCAN ( '{bound}' ))", unbind) == (
        f"select * from table(RESULT_SCAN ( 'RAW-{bound[:4]}' ))"
    )
    kept = "select * from table(result_scan(last_query_id()))"
    assert map_result_scans(kept, unbind) == kept
    assert map_result_scans("select 1", unbind) == "select 1"
    for sql in [
        "select * from table(result_scan($qid))",
        f"execute immediate 'select * from table(result_scan(''{bound}''))'",
        f"select * from table(result_scan('{bound}' || ''))",
    ]:
        with pytest.raises(QueryIdError, match="RESULT_SCAN takes a query id"):
            map_result_scans(sql, unbind)


def test_every_id_in_an_answer_is_bound() -> None:
    answer = {
        "data": {
            "queryId": RAW,
            "getResultUrl": f"/queries/{RAW}/result",
            "resultIds": f"{RAW},{RAW}",
            "queries": [{"id": RAW, "status": "RUNNING"}],
        },
        "statementHandle": RAW,
        "statementHandles": [RAW],
        "statementStatusUrl": f"/api/v2/statements/{RAW}?requestId=1",
    }
    bound = bind_answer(answer, lambda raw: "B")
    assert bound is not None
    assert orjson.dumps(bound).count(RAW.encode()) == 0
    assert bound["data"]["getResultUrl"] == "/queries/B/result"
    assert bound["statementStatusUrl"] == "/api/v2/statements/B?requestId=1"
    assert bound["data"]["resultIds"] == "B,B"
    assert answer["data"]["queryId"] == RAW  # the recorder's copy stays raw
    assert bind_answer({"data": {"rowset": []}}, lambda raw: "B") is None


def foreign_to(auth: Authentication, tokens: list[str]) -> str:
    """A raw id whose binding for the first session the second session's key refuses.

    About 2% of ids map to an issued-looking id under another session's key
    (and would then reach Snowflake as an unknown id); the test names one of the 98%.
    """
    binder = QueryIdBinder(auth.tokens.key_material)
    first, second = (session_scope(auth.tokens.sealer.open(t).session_id) for t in tokens)
    for _ in range(100):
        raw = "01" + str(uuid.uuid4())[2:]
        try:
            binder.unbind(binder.bind(raw, first), second)
        except QueryIdError:
            return raw
    raise AssertionError("no id of 100 was refused under another session's key")


async def test_the_addon_binds_answers_and_refuses_foreign_ids(
    issuer: LocalIssuer, service_key: Path
) -> None:
    auth = Authentication()
    ids = QueryIds(auth.tokens)
    with taddons.context(auth, ids) as tctx:
        tctx.configure(auth, **options(issuer, service_key))
        tokens = []
        for subject in ("ada", "bea"):
            login = snowflake_flow("POST", LOGIN_PATH, login_body(issuer.mint(subject)))
            classified(login)
            await auth.request(login)
            answered(login, upstream_login())
            auth.response(login)
            tokens.append(sealed(login)["token"])

        flow = snowflake_flow(
            "POST", QUERY_PATH, query_body("select 1"), [session_header(tokens[0])]
        )
        state = classified(flow)
        await auth.request(flow)
        ids.request(flow)
        assert "query_ids" in state.passed
        answered(flow, {"data": {"queryId": RAW, "rowset": [["1"]]}, "success": True})
        ids.response(flow)
        bound = orjson.loads(flow.response.content or b"")["data"]["queryId"]
        assert bound != RAW and state.response_json["data"]["queryId"] == RAW

        mine = snowflake_flow(
            "GET", f"/monitoring/queries//{bound}", None, [session_header(tokens[0])]
        )
        classified(mine)
        await auth.request(mine)
        ids.request(mine)
        assert mine.response is None and mine.request.path == f"/monitoring/queries//{RAW}"

        binder = QueryIdBinder(auth.tokens.key_material)
        session_b = auth.tokens.sealer.open(tokens[1]).session_id
        try:
            binder.unbind(bound, session_scope(session_b))
            pytest.skip("this key maps the id to an issued-looking one for B (about 2%)")
        except QueryIdError:
            pass
        theirs = snowflake_flow(
            "GET", f"/queries/{bound}/result", None, [session_header(tokens[1])]
        )
        state_b = classified(theirs)
        await auth.request(theirs)
        ids.request(theirs)
        assert state_b.refusal is not None and state_b.refusal.source == "query_ids"
        assert error_of(theirs)["message"] == (
            f"hoopgw refused the request: query {bound} was not issued to this session"
        )
        assert state_of(theirs) is state_b
