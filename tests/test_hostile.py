"""Hostile requests to every endpoint the gateway serves, over raw HTTP.

Each request gets a clear refusal in the shape its endpoint's clients expect,
nothing of it reaches the strict upstream (tests/strict_upstream.py records
everything it receives), the gateway keeps serving the caller's valid session,
and the refusal is itself on record. The live session's tokens are presented
in every wrong way a client (or an attacker holding them) might try, so a
refusal here is never just "no credential".
"""

from __future__ import annotations

import gzip
import json
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from hoopgw.addons.protocol import CODE_GATEWAY_POLICY, CODE_GATEWAY_PROTOCOL, HEAD_LIMIT
from tests import stack
from tests.bodies import login_body
from tests.conftest import UPSTREAM_TEST_PASSWORD
from tests.raw_http import (
    Answer,
    Header,
    Session,
    gzip_bomb,
    json_headers,
    login,
    query,
    secrets_in,
    send,
    session_authorization,
    stored_records,
)

REQUEST_LIMIT = 64 * 1024
PROTOCOL = str(CODE_GATEWAY_PROTOCOL)
POLICY = str(CODE_GATEWAY_POLICY)
QUERY_ID = "01b2c3d4-0000-0000-0000-000000000001"
QUERY_BODY = {"sqlText": "select 1", "sequenceId": 1}


@dataclass(frozen=True)
class Caller:
    """A caller with a live session: its ID token and the gateway's sealed tokens."""

    id_token: str
    session: Session


Body = bytes | Callable[[Caller], bytes]


@dataclass(frozen=True)
class Hostile:
    """One hostile request and the refusal it must get."""

    id: str
    method: bytes
    target: bytes
    body: Body = b""
    headers: tuple[Header, ...] = ()
    credential: str = "none"
    status: int = 200
    code: str = "390104"
    says: str = ""
    allow: str | None = None
    renewal: bool = False

    def send(self, gateway: stack.Gateway, caller: Caller, marker: str) -> Answer:
        """Send the case; `credential` says how the live session's token is presented."""
        target, headers = self.target, list(json_headers(*self.headers))
        session, master = caller.session.token, caller.session.master_token
        presented = master if self.renewal else session
        match self.credential:
            case "session":
                headers.append(session_authorization(presented))
            case "literal-none":
                headers.append(session_authorization("None"))
            case "twice":
                headers += [session_authorization(presented)] * 2
            case "query":
                target = _with_query(target, b"token=" + presented.encode())
            case "cookie":
                headers.append((b"Cookie", f"token={presented}".encode()))
            case "bearer":
                headers.append((b"Authorization", f"Bearer {presented}".encode()))
            case "trailing":
                value = f'Snowflake Token="{presented}", Token="{presented}"'
                headers.append((b"Authorization", value.encode()))
            case "swapped":
                headers.append(session_authorization(session if self.renewal else master))
            case "forged":
                headers.append(session_authorization(_forged(presented)))
            case "upstream-shaped":
                headers.append(session_authorization("ver:1-hint:1234-ETMsDgAAAZK"))
            case "oidc-bearer":
                headers.append((b"Authorization", f"Bearer {caller.id_token}".encode()))
            case "oidc-bearer-twice":
                headers += [(b"Authorization", f"Bearer {caller.id_token}".encode())] * 2
            case "none":
                pass
            case other:
                raise AssertionError(f"unknown credential {other}")
        body = self.body(caller) if callable(self.body) else self.body
        return send(gateway.port, self.method, _with_query(target, marker.encode()), body, headers)


def _with_query(target: bytes, pair: bytes) -> bytes:
    return target + (b"&" if b"?" in target else b"?") + pair


def _forged(token: str) -> str:
    """The live token with one character of its ciphertext changed."""
    head, _, tail = token.rpartition(".")
    middle = len(head) - 10
    swapped = "A" if head[middle] != "A" else "B"
    return f"{head[:middle]}{swapped}{head[middle + 1 :]}.{tail}"


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


GZIP = (b"Content-Encoding", b"gzip")

# Calls within a session: every wrong way to present the live tokens is refused.
SESSION_ENDPOINTS: list[tuple[str, bytes, bytes, bytes]] = [
    ("query", b"POST", b"/queries/v1/query-request", _json(QUERY_BODY)),
    ("renew", b"POST", b"/session/token-request", _json({"requestType": "RENEW"})),
    ("logout", b"POST", b"/session?delete=true", b"{}"),
    ("heartbeat", b"POST", b"/session/heartbeat", b"{}"),
    ("abort", b"POST", b"/queries/v1/abort-request", _json({"requestId": "1"})),
    ("abort-query", b"POST", f"/queries/{QUERY_ID}/abort-request".encode(), b"{}"),
    ("telemetry", b"POST", b"/telemetry/send", _json({"logs": []})),
    ("monitoring", b"GET", f"/monitoring/queries/{QUERY_ID}".encode(), b""),
    ("result", b"GET", f"/queries/{QUERY_ID}/result".encode(), b""),
]
CREDENTIAL_REFUSALS: list[tuple[str, str, str]] = [
    ("none", "carries no {token}", "390104"),
    ("literal-none", "carries no {token}", "390104"),
    ("twice", "carries no {token}", "390104"),
    ("query", "carries no {token}", "390104"),
    ("cookie", "carries no {token}", "390104"),
    ("bearer", "carries no {token}", "390104"),
    ("trailing", "carries no {token}", "390104"),
    ("swapped", "{swapped}", "390104"),
    ("forged", "is not accepted", "390104"),
    ("upstream-shaped", "not issued by hoopgw", "390104"),
]


def _credential_cases() -> list[Hostile]:
    cases = []
    for name, method, path, body in SESSION_ENDPOINTS:
        renewal = name == "renew"
        for credential, says, code in CREDENTIAL_REFUSALS:
            message = says.format(
                token="master token" if renewal else "session token",
                swapped="a session token cannot renew"
                if renewal
                else "a master token cannot be used as a session token",
            )
            cases.append(
                Hostile(
                    f"{name}-{credential}",
                    method,
                    path,
                    body,
                    (),
                    credential,
                    200,
                    code,
                    message,
                    renewal=renewal,
                )
            )
        wrong = b"PUT" if method == b"POST" else b"POST"
        cases.append(
            Hostile(
                f"{name}-method-{wrong.decode()}",
                wrong,
                path,
                body,
                (),
                "session",
                405,
                PROTOCOL,
                "is not used on this endpoint",
                method.decode(),
                renewal,
            )
        )
    return cases


# Bodies that do not decode or parse, sent with valid credentials: refused before anything else.
BODY_ATTACKS: list[tuple[str, Callable[[bytes], bytes], tuple[Header, ...], str, bool]] = [
    ("truncated-json", lambda good: good[:-3], (), "body is not valid JSON", True),
    ("json-array", lambda good: b"[" + good + b"]", (), "body is JSON but not an object", True),
    (
        "invalid-utf8",
        lambda good: good.replace(b'"', b'"\xff\xfe', 1),
        (),
        "body is not valid JSON",
        True,
    ),
    ("lone-surrogate", lambda good: b'{"x": "\\ud800", ' + good[1:], (), "not valid JSON", True),
    ("invalid-gzip", lambda good: b"this is not gzip", (GZIP,), "invalid gzip body", False),
    (
        "truncated-gzip",
        lambda good: gzip.compress(good)[:-12],
        (GZIP,),
        "truncated gzip body",
        False,
    ),
    (
        "second-gzip-member",
        lambda good: gzip.compress(good) + gzip.compress(b'{"sqlText": "drop table t"}'),
        (GZIP,),
        "trailing data after the gzip body",
        False,
    ),
    # larger than the limit as sent, too: refused from its head, never decompressed
    ("gzip-bomb", lambda good: gzip_bomb(), (GZIP,), "is over the", False),
    (
        "brotli",
        lambda good: good,
        ((b"Content-Encoding", b"br"),),
        "unsupported Content-Encoding 'br'",
        False,
    ),
    (
        "over-limit",
        lambda good: b'{"pad": "' + b"x" * REQUEST_LIMIT + b'", ' + good[1:],
        (),
        f"over the {REQUEST_LIMIT}-byte limit",
        False,
    ),
]
# (name, method, path, good body, credential, status, parsed): the gateway parses JSON bodies
# of "parsed" endpoints and only decodes the rest.
BODY_ENDPOINTS: list[tuple[str, bytes, bytes, Body, str, int, bool]] = [
    (
        "query",
        b"POST",
        b"/queries/v1/query-request",
        _json(QUERY_BODY),
        "session",
        200,
        True,
    ),
    (
        "renew",
        b"POST",
        b"/session/token-request",
        _json({"requestType": "RENEW"}),
        "session",
        200,
        True,
    ),
    (
        "abort",
        b"POST",
        b"/queries/v1/abort-request",
        _json({"requestId": "1"}),
        "session",
        200,
        True,
    ),
    ("login", b"POST", b"/session/v1/login-request", b"", "none", 200, True),
    (
        "sql-api",
        b"POST",
        b"/api/v2/statements",
        _json({"statement": "select 1"}),
        "oidc-bearer",
        400,
        True,
    ),
    ("logout", b"POST", b"/session?delete=true", b"{}", "session", 200, False),
    ("heartbeat", b"POST", b"/session/heartbeat", b"{}", "session", 200, False),
    ("telemetry", b"POST", b"/telemetry/send", _json({"logs": []}), "session", 200, False),
]


def _body_cases() -> list[Hostile]:
    cases = []
    for endpoint, method, path, good, credential, status, parsed in BODY_ENDPOINTS:
        for attack, spoil, headers, says, needs_parsing in BODY_ATTACKS:
            if needs_parsing and not parsed:
                continue

            def body(caller: Caller, spoil=spoil, good=good, endpoint=endpoint) -> bytes:
                valid = _json(login_body(caller.id_token)) if endpoint == "login" else good
                assert isinstance(valid, bytes)
                return spoil(valid)

            cases.append(
                Hostile(
                    f"{endpoint}-{attack}",
                    method,
                    path,
                    body,
                    headers,
                    credential,
                    status,
                    PROTOCOL,
                    says,
                    renewal=endpoint == "renew",
                )
            )
    return cases


def _login(caller: Caller, **fields: Any) -> bytes:
    return _json(login_body(caller.id_token, **fields))


LOGIN = b"/session/v1/login-request"
LOGIN_CASES = [
    Hostile("login-no-data", b"POST", LOGIN, b'{"nodata": 1}', code="390100", says="has no data"),
    Hostile("login-data-text", b"POST", LOGIN, b'{"data": "x"}', code="390100", says="has no data"),
    Hostile(
        "login-token-number",
        b"POST",
        LOGIN,
        _json(login_body(12345)),
        code="390100",
        says="no token was presented",
    ),
    Hostile(
        "login-token-object",
        b"POST",
        LOGIN,
        _json(login_body({"jwt": "x"})),
        code="390100",
        says="no token was presented",
    ),
    Hostile(
        "login-token-huge",
        b"POST",
        LOGIN,
        _json(login_body("eyJ" + "A" * 20_000 + ".e30.sig")),
        code="390100",
        says="the token is not a signed JWT",
    ),
    Hostile(
        "login-session-token-as-oidc",
        b"POST",
        LOGIN,
        lambda caller: _json(login_body(caller.session.token)),
        code="390100",
        says="the token is not a signed JWT",
    ),
    Hostile(
        "login-password",
        b"POST",
        LOGIN,
        lambda caller: _login(caller, AUTHENTICATOR="SNOWFLAKE", PASSWORD=caller.id_token),
        code="390100",
        says="this gateway does not accept passwords",
    ),
    Hostile(
        "login-keypair-authenticator",
        b"POST",
        LOGIN,
        lambda caller: _login(caller, AUTHENTICATOR="SNOWFLAKE_JWT"),
        code="390100",
        says="sign in with your identity provider's token",
    ),
    Hostile(
        "login-role-twice",
        b"POST",
        LOGIN + b"?roleName=AGENT&roleName=READER",
        _login,
        code="390100",
        says="the login names roleName more than once",
    ),
    Hostile(
        "login-role-other-case",
        b"POST",
        LOGIN + b"?roleName=AGENT&ROLENAME=ACCOUNTADMIN",
        _login,
        code="390100",
        says="the login spells the roleName parameter as 'ROLENAME'",
    ),
    Hostile(
        "login-database-twice",
        b"POST",
        LOGIN + b"?databaseName=A&databaseName=PAYROLL",
        _login,
        code="390100",
        says="the login names databaseName more than once",
    ),
    Hostile(
        "login-method-GET",
        b"GET",
        LOGIN,
        _login,
        status=405,
        code=PROTOCOL,
        says="method GET is not used",
        allow="POST",
    ),
    Hostile(
        "authenticator-request",
        b"POST",
        b"/session/authenticator-request",
        _login,
        code="390100",
        says="sign in with your identity provider's token",
    ),
]

SQL_API = b"/api/v2/statements"
SQL_BODY = _json({"statement": "select 1"})
SQL_API_CASES = [
    Hostile(
        "sql-api-no-token",
        b"POST",
        SQL_API,
        SQL_BODY,
        status=401,
        code="390100",
        says="as a Bearer token",
    ),
    Hostile(
        "sql-api-bearer-twice",
        b"POST",
        SQL_API,
        SQL_BODY,
        credential="oidc-bearer-twice",
        status=401,
        code="390100",
        says="as a Bearer token",
    ),
    Hostile(
        "sql-api-session-token",
        b"POST",
        SQL_API,
        SQL_BODY,
        credential="session",
        status=401,
        code="390100",
        says="as a Bearer token",
    ),
    Hostile(
        "sql-api-session-bearer",
        b"POST",
        SQL_API,
        SQL_BODY,
        credential="bearer",
        status=401,
        code="390100",
        says="the token is not a signed JWT",
    ),
    Hostile(
        "sql-api-token-in-query",
        b"POST",
        SQL_API,
        SQL_BODY,
        credential="query",
        status=401,
        code="390100",
        says="as a Bearer token",
    ),
    Hostile(
        "sql-api-keypair-type",
        b"POST",
        SQL_API,
        SQL_BODY,
        ((b"X-Snowflake-Authorization-Token-Type", b"KEYPAIR_JWT"),),
        credential="oidc-bearer",
        status=401,
        code="390100",
        says="only OAuth bearer tokens",
    ),
    Hostile(
        "sql-api-method-DELETE",
        b"DELETE",
        SQL_API,
        credential="oidc-bearer",
        status=405,
        code=PROTOCOL,
        says="is not used on this endpoint",
        allow="POST",
    ),
    Hostile(
        "sql-api-method-GET",
        b"GET",
        SQL_API,
        credential="oidc-bearer",
        status=405,
        code=PROTOCOL,
        says="is not used on this endpoint",
        allow="POST",
    ),
]

# Paths the gateway does not serve, with a live session and a statement in the body:
# aliases a server might normalise into the query endpoint are refused like any other.
UNKNOWN_PATHS = [
    b"/",
    b"/foo",
    b"/session",
    b"/session?delete=false",
    b"/session?delete=true&delete=false",
    b"/queries/v1/query-request/",
    b"/queries/v1/query-request;jsessionid=1",
    b"/queries/v1//query-request",
    b"/queries/v1/query%2Drequest",
    b"/queries%2Fv1%2Fquery-request",
    b"/QUERIES/V1/QUERY-REQUEST",
    b"/queries/v1/query-request/../query-request",
    b"/monitoring/queries/../../queries/v1/query-request",
    b"/monitoring/queries/%2e%2e/x",
    b"/session/v1/login-request/",
    b"/api/v2/databases",
    b"/api/v2/databases/d%2Fx/schemas/s/agents/a:run",
    b"/api/v2/databases/d/schemas/s/../s/agents/a:run",
    b"/api/v2/cortex/inference:complete",
    b"/api/v2/databases/A/schemas/B/mcp-servers/C/",
    b"/api/v2/databases/%22A%22/schemas/B/mcp-servers/C",
    b"/fs_bucket/stage/file.csv",
]
UNKNOWN_PATH_CASES = [
    Hostile(
        f"unknown-path-{index}",
        b"POST",
        path,
        _json({"sqlText": "drop table t"}),
        credential="session",
        status=404,
        code=PROTOCOL,
        says="the path is not a Snowflake endpoint this gateway serves",
    )
    for index, path in enumerate(UNKNOWN_PATHS)
]

AGENT_SURFACES = (
    b"/api/v2/cortex/analyst/message",
    b"/api/v2/databases/d/schemas/s/cortex-search-services/svc:query",
    b"/api/v2/databases/d/schemas/s/agents/a:run",
    b"/api/v2/databases/d/schemas/s/mcp-servers/m",
)
AGENT_SURFACE_CASES = [
    case
    for index, path in enumerate(AGENT_SURFACES)
    for case in (
        Hostile(
            f"agent-surface-{index}-no-token",
            b"POST",
            path,
            b"{}",
            status=401,
            code="390100",
            says="as a Bearer token",
        ),
        Hostile(
            f"agent-surface-{index}-session-bearer",
            b"POST",
            path,
            b"{}",
            credential="bearer",
            status=401,
            code="390100",
            says="not a signed JWT",
        ),
        Hostile(
            f"agent-surface-{index}-get",
            b"GET",
            path,
            credential="oidc-bearer",
            status=405,
            code=PROTOCOL,
            says="is not used on this endpoint",
            allow="POST",
        ),
    )
]

QUERY = b"/queries/v1/query-request"
METHOD_CASES = [
    Hostile(
        f"method-{method.decode()}",
        method,
        QUERY,
        _json(QUERY_BODY),
        credential="session",
        status=405,
        code=PROTOCOL,
        says="is not used on this endpoint",
        allow="POST",
    )
    for method in (b"GET", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"TRACE", b"HEAD", b"post")
]

HEAD_CASES = [
    Hostile(
        "header-bare-cr",
        b"POST",
        QUERY,
        _json(QUERY_BODY),
        ((b"X-Note", b"a\rAuthorization: Snowflake Token=x"),),
        "session",
        code=PROTOCOL,
        says="a request header is not printable UTF-8 text",
    ),
    Hostile(
        "header-nul",
        b"POST",
        QUERY,
        _json(QUERY_BODY),
        ((b"X-Note", b"a\x00b"),),
        "session",
        code=PROTOCOL,
        says="a request header is not printable UTF-8 text",
    ),
    Hostile(
        "header-invalid-utf8",
        b"POST",
        QUERY,
        _json(QUERY_BODY),
        ((b"User-Agent", b"agent\xff\xfe"),),
        "session",
        code=PROTOCOL,
        says="a request header is not printable UTF-8 text",
    ),
    Hostile(
        "header-folded",
        b"POST",
        QUERY,
        _json(QUERY_BODY),
        ((b"X-Note", b"a\r\n b"),),
        "session",
        code=PROTOCOL,
        says="a request header is not printable UTF-8 text",
    ),
    Hostile(
        "path-invalid-utf8",
        b"POST",
        QUERY + b"?note=\xff\xfe",
        _json(QUERY_BODY),
        credential="session",
        code=PROTOCOL,
        says="the request path is not printable UTF-8 text",
    ),
    Hostile(
        "absolute-form",
        b"POST",
        b"http://127.0.0.1:9" + QUERY,
        _json(QUERY_BODY),
        credential="session",
        code=PROTOCOL,
        says="the request target must be a path",
    ),
    Hostile(
        "sql-over-limit",
        b"POST",
        QUERY,
        _json({"sqlText": "select '" + "x" * REQUEST_LIMIT + "'"}),
        credential="session",
        code=PROTOCOL,
        says=f"over the {REQUEST_LIMIT}-byte limit",
    ),
]

# Result chunk URLs (addons/results.py): the sealed URL is the credential.
CHUNK_CASES: list[Hostile] = [
    Hostile(
        "chunk-forged",
        b"GET",
        b"/hoopgw/v1/chunks/AQ" + b"A" * 80,
        status=403,
        code=POLICY,
        says="the chunk URL",
    ),
    Hostile(
        "chunk-method-POST",
        b"POST",
        b"/hoopgw/v1/chunks/AQ" + b"A" * 80,
        status=405,
        code=PROTOCOL,
        says="is not used on this endpoint",
        allow="GET, PUT",
    ),
    Hostile(
        "chunk-forged-PUT",
        b"PUT",
        b"/hoopgw/v1/chunks/AQ" + b"A" * 80,
        b"stage file bytes",
        status=403,
        code=POLICY,
        says="the chunk URL",
    ),
]

# The approvals desk (addons/approval.py) answers its own JSON to approvers; a
# method it does not take is refused before it, in Snowflake's shape. Its token
# checks are in tests/test_approval_e2e.py (forged, outsider, self-approval).
APPROVAL_CASES: list[Hostile] = [
    Hostile(
        "approvals-method-PUT",
        b"PUT",
        b"/hoopgw/v1/approvals",
        _json({"decision": "approve"}),
        status=405,
        code=PROTOCOL,
        says="is not used on this endpoint",
        allow="GET, POST",
    ),
]

CASES: list[Hostile] = [
    *_credential_cases(),
    *CHUNK_CASES,
    *APPROVAL_CASES,
    *_body_cases(),
    *LOGIN_CASES,
    *SQL_API_CASES,
    *AGENT_SURFACE_CASES,
    *UNKNOWN_PATH_CASES,
    *METHOD_CASES,
    *HEAD_CASES,
]


def check_refusal(case: Hostile, answer: Answer) -> None:
    assert answer.status == case.status, (answer.status, answer.body[:300])
    if case.allow is not None:
        assert answer.headers.get("allow") == case.allow
    if case.method == b"HEAD":
        return
    assert answer.code == case.code, answer.json
    assert case.says in answer.message, answer.message
    assert answer.message.startswith("hoopgw refused"), answer.message
    assert answer.json.get("success", False) is False


@pytest.fixture(scope="module")
def gw(gateway_factory, strict) -> stack.Gateway:
    return gateway_factory(strict.url, {"hoopgw_request_limit": REQUEST_LIMIT}, name="hostile-gw")


@pytest.fixture(scope="module")
def caller(gw, oidc) -> Caller:
    id_token = oidc.mint("mallory", ["agents"])
    return Caller(id_token, login(gw.port, id_token))


def test_the_live_session_works(gw, caller) -> None:
    """The control: the tokens every hostile case misuses are good when presented properly."""
    answer = query(gw.port, caller.session.token, "select 42")
    assert answer.json["success"] is True, answer.json
    assert answer.json["data"]["total"] == 1


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_hostile_request_is_refused_and_never_reaches_upstream(gw, strict, caller, case) -> None:
    mark = strict.mark()
    answer = case.send(gw, caller, f"requestId={uuid.uuid4()}")
    check_refusal(case, answer)
    assert strict.received_since(mark) == []
    alive = query(gw.port, caller.session.token, "select 1")
    assert alive.json.get("success") is True, alive.json


# mitmproxy itself refuses requests it cannot parse as HTTP: no hook sees a request.
TRANSPORT_CASES: list[tuple[str, bytes]] = [
    (
        "conflicting-content-length",
        b"POST /queries/v1/query-request HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        b"Content-Length: 40\r\n\r\n{}",
    ),
    (
        "content-length-and-chunked",
        b"POST /queries/v1/query-request HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "invalid-header-name",
        b"POST /queries/v1/query-request HTTP/1.1\r\nHost: x\r\nX Bad: 1\r\n"
        b"Content-Length: 2\r\n\r\n{}",
    ),
    ("connect", b"CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n"),
    ("asterisk-form", b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("garbage-request-line", b"\x16\x03\x01 hello\r\n\r\n"),
    (
        "oversized-header",
        b"GET /queries/"
        + QUERY_ID.encode()
        + b"/result HTTP/1.1\r\nHost: x\r\nX-Big: "
        + b"a" * 300_000
        + b"\r\n\r\n",
    ),
]


@pytest.mark.parametrize(
    "raw", [case[1] for case in TRANSPORT_CASES], ids=[case[0] for case in TRANSPORT_CASES]
)
def test_unparsable_http_is_refused_by_the_proxy(gw, strict, caller, raw: bytes) -> None:
    mark = strict.mark()
    with socket.create_connection((gw.host, gw.port), timeout=10) as sock:
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer == b"" or answer.split(b" ", 2)[1].startswith(b"4"), answer[:200]
    assert strict.received_since(mark) == []
    assert query(gw.port, caller.session.token, "select 1").json.get("success") is True


def test_a_head_over_the_limit_is_refused_from_the_head(gw, strict) -> None:
    """mitmproxy bounds no request head; the gateway answers 431 and reads no further."""
    mark = strict.mark()
    with socket.create_connection((gw.host, gw.port), timeout=10) as sock:
        sock.sendall(
            b"POST /queries/v1/query-request HTTP/1.1\r\nHost: x\r\nX-Big: "
            + b"a" * (HEAD_LIMIT + 1)
            + b"\r\nContent-Length: 1048576\r\n\r\n"
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"over the 65536-byte limit" in answer
    assert strict.received_since(mark) == []


def test_a_body_over_the_buffer_limit_is_refused_unread(gateway_factory, strict) -> None:
    """mitmproxy buffers bodies whole; the gateway caps that at the larger of its two limits."""
    small = gateway_factory(
        strict.url,
        {"hoopgw_request_limit": REQUEST_LIMIT, "hoopgw_response_limit": 1024 * 1024},
        name="hostile-buffer-gw",
    )
    mark = strict.mark()
    with socket.create_connection((small.host, small.port), timeout=10) as sock:
        sock.sendall(
            b"POST /queries/v1/query-request HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n"
            b'{"sqlText": "'
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b"body_size_limit" in answer
    assert strict.received_since(mark) == []


def test_json_with_a_byte_order_mark_logs_in_and_runs(gw, strict, oidc) -> None:
    """A UTF-8 BOM before JSON: read as redaction and Snowflake read it, forwarded without it."""
    bom = b"\xef\xbb\xbf"
    id_token = oidc.mint("bom-caller", ["agents"])
    body = bom + json.dumps(login_body(id_token)).encode()
    logged_in = send(gw.port, "POST", "/session/v1/login-request", body, json_headers())
    assert logged_in.json.get("success") is True, logged_in.json
    token = logged_in.json["data"]["token"]
    mark = strict.mark()
    statement = bom + json.dumps({"sqlText": "select 43", "sequenceId": 1}).encode()
    answer = send(
        gw.port,
        "POST",
        f"/queries/v1/query-request?requestId={uuid.uuid4()}",
        statement,
        json_headers(session_authorization(token)),
    )
    assert answer.json.get("success") is True, answer.json
    (forwarded,) = [r for r in strict.received_since(mark) if r.path.startswith("/queries/")]
    assert not forwarded.body.startswith(bom) and b"select 43" in forwarded.body


def test_long_sql_under_the_limit_runs(gw, strict, caller) -> None:
    """Long but within the limit: authenticated, forwarded once, answered."""
    literal = "x" * (REQUEST_LIMIT - 1024)
    mark = strict.mark()
    answer = query(gw.port, caller.session.token, f"select '{literal}' as s")
    assert answer.json["success"] is True, answer.json
    assert answer.json["data"]["total"] == 1
    received = strict.received_since(mark)
    assert [r.path.partition("?")[0] for r in received] == ["/queries/v1/query-request"]


def test_client_credentials_in_other_headers_stay_at_the_gateway(gw, strict, caller) -> None:
    """Cookies and proxy credentials are for no one upstream: the gateway drops them."""
    mark = strict.mark()
    answer = query(
        gw.port,
        caller.session.token,
        "select 1",
        Cookie=f"id_token={caller.id_token}",
        Proxy_Authorization=f"Bearer {caller.id_token}",
    )
    assert answer.json["success"] is True, answer.json
    received = strict.received_since(mark)
    assert len(received) == 1
    assert "Cookie" not in received[0].headers
    assert "Proxy-Authorization" not in received[0].headers
    assert caller.id_token not in received[0].text()


@pytest.fixture(scope="module")
def recorded(gateway_factory, strict, oidc) -> dict[str, Any]:
    """Every hostile case against a fresh gateway, then its store once it has flushed."""
    gateway = gateway_factory(
        strict.url,
        {"hoopgw_request_limit": REQUEST_LIMIT, "hoopgw_refusal_samples": 10_000},
        name="hostile-recorded-gw",
    )
    id_token = oidc.mint("mallory", ["agents"])
    caller = Caller(id_token, login(gateway.port, id_token))
    markers: dict[str, Hostile] = {}
    mark = strict.mark()
    for case in CASES:
        marker = f"requestId={uuid.uuid4()}"
        check_refusal(case, case.send(gateway, caller, marker))
        markers[marker] = case
    assert strict.received_since(mark) == []
    transport_markers = {}
    for name, raw in TRANSPORT_CASES[:3]:
        marker = f"requestId={uuid.uuid4()}"
        raw = raw.replace(b" HTTP/1.1", f"?{marker} HTTP/1.1".encode(), 1)
        with socket.create_connection((gateway.host, gateway.port), timeout=10) as sock:
            sock.sendall(raw)
            while sock.recv(65536):
                pass
        transport_markers[marker] = name
    gateway.stop()
    return {
        "records": stored_records(gateway.workdir / "store"),
        "markers": markers,
        "transport": transport_markers,
        "secrets": [
            caller.id_token,
            caller.session.token,
            caller.session.master_token,
            UPSTREAM_TEST_PASSWORD,
            *strict.issued_tokens(),
        ],
    }


def _by_marker(records: list[dict[str, Any]], marker: str) -> list[dict[str, Any]]:
    return [r for r in records if marker in str(r.get("path", ""))]


def _samples(records: list[dict[str, Any]], marker: str) -> list[dict[str, Any]]:
    """Refusals of no verified caller: sampled in the refusal summaries, never recorded alone."""
    return [
        sample
        for record in records
        if record["kind"] == "refusal_summary"
        for sample in record["samples"]
        if marker in sample["path"]
    ]


def test_every_refusal_is_recorded_once(recorded) -> None:
    records = recorded["records"]
    missing = []
    for marker, case in recorded["markers"].items():
        found, sampled = _by_marker(records, marker), _samples(records, marker)
        if sampled:
            # no verified caller: counted and sampled, with no record of its own
            assert len(sampled) == 1 and found == [], case.id
            assert str(sampled[0]["refusal"]["code"]) == case.code, (case.id, sampled)
            continue
        if [r["kind"] for r in found] != ["refusal"]:
            missing.append((case.id, [r["kind"] for r in found]))
            continue
        refusal = found[0]["refusal"]
        assert str(refusal["code"]) == case.code, (case.id, refusal)
        response = [r for r in records if r.get("flow_id") == found[0]["flow_id"]]
        assert [r["kind"] for r in response] == ["refusal", "response"], case.id
    assert missing == []
    counted = sum(r["refused"] for r in records if r["kind"] == "refusal_summary")
    assert counted >= sum(1 for marker in recorded["markers"] if _samples(records, marker))


def test_a_gzip_bomb_is_recorded_as_received_not_expanded(recorded) -> None:
    bombs = [m for m, case in recorded["markers"].items() if case.id.endswith("gzip-bomb")]
    assert bombs
    for marker in bombs:
        (sample,) = _samples(recorded["records"], marker)
        # the compressed size as received: the body is never expanded, nor kept
        assert sample["body_size"] == len(gzip_bomb())
        assert sample["content_encoding"] == "gzip"


def test_refusal_records_hold_no_secret(recorded) -> None:
    assert secrets_in(recorded["records"], recorded["secrets"]) == []


def test_requests_the_proxy_refuses_are_recorded(recorded) -> None:
    records = recorded["records"]
    assert all(_samples(records, marker) for marker in recorded["transport"])


def test_refused_cases_cover_every_endpoint() -> None:
    """Keeps the catalogue honest: each endpoint the gateway serves is attacked."""
    from hoopgw.addons.protocol import ALLOWED_METHODS, Endpoint, classify

    attacked = {classify(case.target.decode("latin-1")) for case in CASES}
    served = {endpoint for endpoint in ALLOWED_METHODS if endpoint is not Endpoint.OTHER}
    assert served <= attacked
