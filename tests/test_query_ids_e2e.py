"""Results readable only by their caller: query ids bound to the session, across replicas.

Two gateways share one token key (two replicas); the strict upstream in front
of fakesnow sees what each let through. Caller A's ids work for A through
either replica; caller B is refused on every route, and nothing reaches
Snowflake for it.
"""

from __future__ import annotations

import base64
import functools
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow
import pyarrow.ipc
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hoopgw.addons.query_ids import QueryIdBinder, QueryIdError, session_scope, sql_api_scope
from hoopgw.addons.session_tokens import TokenSealer, decode_token_key
from hoopgw.recorder.secrets import new_token_key
from tests import stack
from tests.bodies import login_body, write_service_key
from tests.strict_upstream import StrictUpstream
from tests.test_identity_gateway import ACCOUNT, SERVICE_USER, call, identity_options, query

TOKEN_KEY_ENV = "HOOPGW_TEST_TOKEN_KEY"

NOT_ISSUED = "was not issued to this session"
BODY_LIMIT = 32 * 1024  # answers over it are streamed to the client
WIDE = "select seq4() as id, 'label-' || seq4() as label from table(generator(rowcount => 20000))"


@pytest.fixture(scope="module")
def service_key(workdir: Path) -> tuple[rsa.RSAPrivateKey, Path]:
    path = workdir / f"ids-key-{uuid.uuid4().hex[:6]}.p8"
    key, _ = write_service_key(path)
    return key, path


@pytest.fixture(scope="module")
def strict(fakesnow_server, service_key) -> Iterator[StrictUpstream]:
    upstream = StrictUpstream(
        fakesnow_server.url, ACCOUNT, SERVICE_USER, public_key=service_key[0].public_key()
    ).start()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def token_key_env() -> dict[str, str]:
    return {TOKEN_KEY_ENV: new_token_key()}


@pytest.fixture(scope="module")
def replicas(gateway_factory, strict, oidc, service_key, token_key_env) -> list[stack.Gateway]:
    return [
        gateway_factory(
            strict.url,
            identity_options(oidc.issuer, service_key[1], hoopgw_body_limit=BODY_LIMIT),
            env=token_key_env,
            name=f"ids-replica-{index}",
        )
        for index in (1, 2)
    ]


def binder(token_key_env: dict[str, str]) -> QueryIdBinder:
    return QueryIdBinder([decode_token_key(token_key_env[TOKEN_KEY_ENV])])


def session_of(token: str, token_key_env: dict[str, str]) -> str:
    return TokenSealer(decode_token_key(token_key_env[TOKEN_KEY_ENV])).open(token).session_id


def log_in(gateway: stack.Gateway, token: str) -> str:
    answer = call(gateway, "/session/v1/login-request?request_id=1", login_body(token))[1]
    assert answer["success"], answer
    return answer["data"]["token"]


def rows(answer: dict[str, Any]) -> list[list[Any]]:
    """The rows of a query answer (fakesnow answers in Arrow)."""
    data = answer["data"]
    if "rowset" in data:
        return data["rowset"]
    table = pyarrow.ipc.open_stream(base64.b64decode(data["rowsetBase64"])).read_all()
    return [list(row.values()) for row in table.to_pylist()]


def refused_for(keys: QueryIdBinder, bound: str, scope: str) -> bool:
    try:
        keys.unbind(bound, scope)
    except QueryIdError:
        return True
    return False


def test_caller_b_is_refused_for_caller_as_query_ids_on_every_route(
    replicas,
    strict,
    oidc,
    token_key_env,
) -> None:
    first, second = replicas
    ada = log_in(first, oidc.mint("ada", groups=["agents"]))
    bea = log_in(second, oidc.mint("bea", groups=["agents"]))
    keys, bea_scope = binder(token_key_env), session_scope(session_of(bea, token_key_env))
    # about 2% of ids map to an issued-looking id under B's key and would reach
    # Snowflake as an unknown id: the test uses one of the other 98%
    for _ in range(20):
        bound = query(first, ada, "select 42")["data"]["queryId"]
        if refused_for(keys, bound, bea_scope):
            break
    else:
        raise AssertionError("no id of 20 was refused under B's key")
    assert str(uuid.UUID(bound)) == bound

    # A, through the other replica: the id maps back to Snowflake's
    mark = strict.mark()
    assert call(second, f"/monitoring/queries/{bound}", token=ada, method="GET")[1]["success"]
    raw = keys.unbind(bound, session_scope(session_of(ada, token_key_env)))
    assert [r.path for r in strict.received_since(mark)] == [f"/monitoring/queries/{raw}"]
    scanned = query(second, ada, f"select * from table(result_scan('{bound}'))")
    assert scanned["success"] and rows(scanned) == [[42]], scanned

    for gateway in replicas:
        mark = strict.mark()
        answers: list[dict[str, Any]] = [
            call(gateway, f"/queries/{bound}/result", token=bea, method="GET")[1],
            call(gateway, f"/monitoring/queries/{bound}", token=bea, method="GET")[1],
            call(gateway, f"/monitoring/queries//{bound}", token=bea, method="GET")[1],
            call(gateway, f"/queries/{bound}/abort-request", {"requestId": "1"}, token=bea)[1],
            query(gateway, bea, f"select * from table(result_scan('{bound}'))"),
        ]
        for answer in answers:
            assert answer["success"] is False
            assert answer["message"] == f"hoopgw refused the request: query {bound} {NOT_ISSUED}"
        assert strict.received_since(mark) == []


def test_result_scan_of_last_query_id_works_for_the_callers_own_query(replicas, oidc) -> None:
    ada = log_in(replicas[0], oidc.mint("ada", groups=["agents"]))
    assert query(replicas[0], ada, "select 7")["success"]
    scanned = query(replicas[1], ada, "select * from table(result_scan(last_query_id()))")
    assert scanned["success"] and rows(scanned) == [[7]], scanned


def test_sql_api_statement_handles_belong_to_their_caller(
    replicas,
    strict,
    oidc,
    token_key_env,
) -> None:
    first, second = replicas
    keys = binder(token_key_env)

    def bearer(subject: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {oidc.mint(subject, groups=['agents'])}"}

    status, submitted, _ = call(
        first, "/api/v2/statements", {"statement": "select 1"}, headers=bearer("ada")
    )
    assert status == 200, submitted
    handle = submitted["statementHandle"]
    assert handle != "01b2c3d4-0000-0000-0000-000000000001"
    assert (
        call(second, f"/api/v2/statements/{handle}", headers=bearer("ada"), method="GET")[0] == 200
    )

    other = next(
        subject
        for subject in (f"bea{index}" for index in range(20))
        if refused_for(keys, handle, sql_api_scope(oidc.issuer, subject))
    )
    mark = strict.mark()
    status, answer, _ = call(
        second, f"/api/v2/statements/{handle}", headers=bearer(other), method="GET"
    )
    assert status != 200 and NOT_ISSUED in answer["message"], answer
    assert strict.received_since(mark) == []


def test_a_streamed_answers_id_is_bound_and_works_only_for_its_caller(
    replicas, strict, oidc, token_key_env, connect
) -> None:
    """An answer over hoopgw_body_limit is streamed, its ids bound on the way, not buffered."""
    first, second = replicas
    keys = binder(token_key_env)
    connection = connect(first, oidc.mint("ada", groups=["agents"]))
    cursor = connection.cursor().execute(WIDE)
    rows_read = cursor.fetchall()
    bound = cursor.sfqid
    assert bound is not None and len(rows_read) == 20000
    ada_scope = session_scope(session_of(connection.rest.token, token_key_env))
    raw = keys.unbind(bound, ada_scope)
    assert raw != bound
    mark = strict.mark()
    # the same answer as raw HTTP: over the limit (so streamed) and with the id bound
    status, answer, body = call(
        first,
        f"/queries/v1/query-request?requestId={uuid.uuid4()}",
        {"sqlText": WIDE, "sequenceId": 1},
        token=connection.rest.token,
    )
    assert status == 200 and len(body) > BODY_LIMIT
    assert keys.unbind(answer["data"]["queryId"], ada_scope) not in (
        None,
        answer["data"]["queryId"],
    )
    assert answer["data"]["queryId"].encode() in body
    assert keys.unbind(answer["data"]["queryId"], ada_scope).encode() not in body

    # the caller's id works on /queries/{id}/result (itself streamed) and monitoring
    assert connection.get_query_status(bound).name == "SUCCESS"
    fetched = connection.cursor().query_result(bound)
    assert fetched.sfqid == bound and len(fetched.fetchall()) == 20000
    paths = [r.path.split("?")[0] for r in strict.received_since(mark)]
    assert f"/monitoring/queries/{raw}" in paths and f"/queries/{raw}/result" in paths

    # another caller, through either replica: refused, nothing upstream
    for _ in range(20):
        bea = log_in(second, oidc.mint("bea", groups=["agents"]))
        if refused_for(keys, bound, session_scope(session_of(bea, token_key_env))):
            break
    mark = strict.mark()
    for gateway in replicas:
        for path in (f"/queries/{bound}/result", f"/monitoring/queries/{bound}"):
            refused = call(gateway, path, token=bea, method="GET")[1]
            assert refused["success"] is False
            assert refused["message"] == f"hoopgw refused the request: query {bound} {NOT_ISSUED}"
    assert strict.received_since(mark) == []


@pytest.fixture(scope="module")
def bound_of_ada(replicas, oidc) -> str:
    ada = log_in(replicas[0], oidc.mint("ada", groups=["agents"]))
    return query(replicas[0], ada, "select 5")["data"]["queryId"]


@pytest.fixture(scope="module")
def bea(replicas, oidc) -> tuple[str, str]:
    """Caller B: a session token, and a bearer token for the SQL API."""
    return log_in(replicas[1], oidc.mint("bea", groups=["agents"])), oidc.mint("bea", ["agents"])


def flip_bit(bound: str, bit: int) -> str:
    return str(uuid.UUID(int=uuid.UUID(bound).int ^ (1 << bit)))


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    choice=st.one_of(st.uuids().map(str), st.integers(min_value=0, max_value=127)),
    through=st.integers(min_value=0, max_value=1),
)
def test_no_foreign_id_reaches_snowflake_but_the_two_percent_that_decrypt_issued_looking(
    replicas, strict, oidc, token_key_env, bound_of_ada, bea, choice, through
) -> None:
    """Random UUIDs and one-bit mutations of A's bound id, sent by B on every id route.

    Each is refused without a byte upstream, except where B's key decrypts it to
    16 bytes that look issued (first byte 0x01, or a version-4 UUID: about 2%);
    those reach Snowflake as that random id, which names no query.
    """
    given_id = choice if isinstance(choice, str) else flip_bit(bound_of_ada, choice)
    gateway = replicas[through]
    keys = binder(token_key_env)
    session_token, bearer = bea
    session = session_scope(session_of(session_token, token_key_env))
    api = sql_api_scope(oidc.issuer, "bea")
    api_headers = {"Authorization": f"Bearer {bearer}"}
    query_path = "/queries/v1/query-request"
    routes: list[tuple[str, str, str, dict[str, Any] | None]] = [
        (session, "GET", f"/queries/{given_id}/result", None),
        (session, "GET", f"/monitoring/queries/{given_id}", None),
        (session, "POST", f"/queries/{given_id}/abort-request", {"requestId": "1"}),
        (session, "POST", "/queries/v1/abort-request", {"requestId": "1", "queryId": given_id}),
        (session, "POST", query_path, {"sqlText": f"select * from result_scan('{given_id}')"}),
        (session, "POST", query_path, {"sqlText": f"select system$cancel_query('{given_id}')"}),
        (api, "GET", f"/api/v2/statements/{given_id}", None),
        (api, "POST", f"/api/v2/statements/{given_id}/cancel", {}),
    ]
    for scope, method, path, body in routes:
        if scope == api:
            send = functools.partial(call, headers=api_headers)
        else:
            send = functools.partial(call, token=session_token)
        try:
            raw = keys.unbind(given_id, scope)
        except QueryIdError:
            raw = None
        mark = strict.mark()
        answer = send(gateway, path, body, method=method)[1]
        reached = strict.received_since(mark)
        if raw is None:
            assert reached == [], (given_id, reached)
            assert answer.get("message", "").startswith("hoopgw refused the request: query "), (
                answer
            )
        else:  # the documented remainder: a random id, no query's
            assert len(reached) == 1 and raw in reached[0].text()
            assert given_id not in reached[0].text()
            assert raw not in strict.answered_query_ids()


def test_an_abort_by_request_id_reaches_only_the_callers_own_snowflake_session(
    replicas, strict, oidc, connect, token_key_env
) -> None:
    """`/queries/v1/abort-request` names the client's requestId, not a query id: Snowflake
    looks it up in the session the token opens, and each hoopgw session has its own."""
    first, second = replicas
    ada = connect(first, oidc.mint("ada", groups=["agents"]))
    mark = strict.mark()
    ada.cursor().execute("select 1")
    (ada_query,) = [r for r in strict.received_since(mark) if "query-request" in r.path]
    request_id = uuid.uuid4()

    mark = strict.mark()
    assert ada._cancel_query("select 1", request_id)["success"] is True
    (own,) = strict.received_since(mark)
    assert own.path.startswith("/queries/v1/abort-request")
    assert json.loads(own.body)["requestId"] == str(request_id)
    assert own.headers["Authorization"] == ada_query.headers["Authorization"]

    bea = log_in(second, oidc.mint("bea", groups=["agents"]))
    mark = strict.mark()
    body = {"sqlText": "select 1", "requestId": str(request_id)}
    assert call(second, "/queries/v1/abort-request", body, token=bea)[1]["success"] is True
    (theirs,) = strict.received_since(mark)
    assert json.loads(theirs.body)["requestId"] == str(request_id)
    assert theirs.headers["Authorization"] != own.headers["Authorization"]

    # a query id beside the requestId is the caller's own to name: mapped back, or refused
    ada_token = log_in(first, oidc.mint("ada", groups=["agents"]))
    bound = query(first, ada_token, "select 3")["data"]["queryId"]
    mark = strict.mark()
    body = {"requestId": str(request_id), "queryId": bound}
    assert call(first, "/queries/v1/abort-request", body, token=ada_token)[1]["success"] is True
    raw = binder(token_key_env).unbind(bound, session_scope(session_of(ada_token, token_key_env)))
    assert [json.loads(r.body)["queryId"] for r in strict.received_since(mark)] == [raw]
    for _ in range(20):  # one of the 98% of sessions whose key refuses A's id
        if refused_for(binder(token_key_env), bound, session_scope(session_of(bea, token_key_env))):
            break
        bea = log_in(second, oidc.mint("bea", groups=["agents"]))
    mark = strict.mark()
    refused = call(second, "/queries/v1/abort-request", body, token=bea)[1]
    assert refused["success"] is False and NOT_ISSUED in refused["message"]
    assert strict.received_since(mark) == []
