"""Faults around the gateway: a misbehaving upstream, an unreachable identity provider, clock skew.

The upstream faults come from `FaultyUpstream`, a small forwarder in front of
fakesnow that misbehaves on command for statements carrying a marker comment
(reset mid-response, answer slowly, answer garbage or a gzip bomb). Identity
faults use tests/jwt_issuer.py, whose server can be stopped and whose tokens
can carry any `iat`/`nbf`/`exp`. After each test the gateway is stopped, so its
store holds every record, and the records are checked: each flow recorded
once, with exactly one outcome; no statement lost.

S3 errors and a full spool are the recording tests' (tests/test_recording_e2e.py).
"""

from __future__ import annotations

import collections
import json
import socket
import struct
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from joserfc.jwk import RSAKey
from snowflake.connector import DatabaseError, OperationalError

from tests import stack
from tests.bodies import login_body
from tests.jwt_issuer import LocalIssuer
from tests.raw_http import gzip_bomb, login, query, send, stored_records


@dataclass
class FaultyUpstream(stack.LoopbackServer):
    """Forwards to fakesnow, except where a statement asks for a fault.

    A query whose SQL contains `/*fault:NAME*/` gets that fault on its first
    attempt (by requestId) and is forwarded normally on retries, the way a
    transient network fault behaves: `reset` (headers and half a body, then a
    TCP reset), `close` (no answer at all), `slow` (answers after `delay`
    seconds), `garbage` (HTTP 200 with a body that is not JSON), `bomb` (a
    gzip-encoded body that expands to 256 MiB). `garble_logins` makes the next
    logins answer with an HTML error page.
    """

    fakesnow: str
    delay: float = 3.0
    garble_logins: int = 0
    seen: collections.Counter[str] = field(default_factory=collections.Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def attempts(self, request_id: str) -> int:
        with self.lock:
            return self.seen[request_id]

    def serve(self, handler: BaseHTTPRequestHandler) -> None:
        body = stack.read_body(handler)
        route, _, query_string = handler.path.partition("?")
        request_id = urllib.parse.parse_qs(query_string).get("requestId", [""])[0]
        fault = None
        if route == "/queries/v1/query-request":
            sql = str(json.loads(body).get("sqlText", ""))
            if "/*fault:" in sql:
                fault = sql.split("/*fault:", 1)[1].split("*/", 1)[0]
            with self.lock:
                self.seen[request_id] += 1
                first = self.seen[request_id] == 1
            if not first and fault != "slow":
                fault = None
        elif route == "/session/v1/login-request":
            with self.lock:
                if self.garble_logins:
                    self.garble_logins -= 1
                    fault = "html"
        match fault:
            case "reset":
                handler.wfile.write(b'HTTP/1.1 200 OK\r\nContent-Length: 4000\r\n\r\n{"data": {')
                handler.wfile.flush()
                handler.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                handler.close_connection = True
                handler.connection.close()
                return
            case "close":
                handler.close_connection = True
                handler.connection.close()
                return
            case "slow":
                time.sleep(self.delay)
            case "garbage":
                self.answer(handler, 200, b"<html>upstream proxy error</html>", "text/html")
                return
            case "html":
                self.answer(handler, 200, b"<html>maintenance</html>", "text/html")
                return
            case "bomb":
                self.answer(handler, 200, gzip_bomb(), "application/json", encoding="gzip")
                return
        status, content, content_type = stack.forward(self.fakesnow, handler, body)
        self.answer(handler, status, content, content_type)

    answer = staticmethod(stack.send_answer)


@pytest.fixture
def faulty(fakesnow_server) -> Iterator[FaultyUpstream]:
    upstream = FaultyUpstream(fakesnow_server.url).start()
    yield upstream
    upstream.stop()


def flows(records: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Record kinds per flow, in stream order."""
    by_flow: dict[str, list[str]] = collections.defaultdict(list)
    for record in sorted(records, key=lambda r: (r["writer"], r["session_id"], r["seq"])):
        if record.get("flow_id"):
            by_flow[record["flow_id"]].append(record["kind"])
    return by_flow


def each_flow_recorded_once(records: list[dict[str, Any]]) -> None:
    """Every flow: one request (or refusal) record, then exactly one outcome."""
    for flow_id, kinds in flows(records).items():
        assert kinds in (
            ["request", "response"],
            ["request", "error"],
            ["refusal", "response"],
        ), (flow_id, kinds)


def statements(records: list[dict[str, Any]], marker: str) -> list[dict[str, Any]]:
    return [r for r in records if r["kind"] == "request" and marker in (r.get("sql") or "")]


def outcome(records: list[dict[str, Any]], request: dict[str, Any]) -> dict[str, Any]:
    (found,) = [
        r
        for r in records
        if r.get("flow_id") == request["flow_id"] and r["kind"] in ("response", "error")
    ]
    return found


# Upstream faults


def test_upstream_down_the_driver_gets_a_connection_error_and_the_attempt_is_recorded(
    gateway_factory, oidc, connect
) -> None:
    gateway = gateway_factory(f"http://127.0.0.1:{stack.free_port()}", name="faults-down-gw")
    started = time.monotonic()
    with pytest.raises(OperationalError):
        connect(gateway, oidc.mint("dot", ["agents"]), login_timeout=4, network_timeout=4)
    assert time.monotonic() - started < 30
    answer = send(
        gateway.port,
        "POST",
        "/session/v1/login-request?request_id=down-1",
        json.dumps(login_body(oidc.mint("dot", ["agents"]))).encode(),
        [(b"Content-Type", b"application/json")],
    )
    assert answer.status == 502
    gateway.stop()
    records = stored_records(gateway.workdir / "store")
    each_flow_recorded_once(records)
    attempt = [r for r in records if "request_id=down-1" in r.get("path", "")]
    assert [r["kind"] for r in attempt] == ["request"]
    assert outcome(records, attempt[0])["kind"] == "error"


def test_reset_mid_response_the_driver_retries_and_both_attempts_are_on_record(
    gateway_factory, faulty, oidc, connect
) -> None:
    gateway = gateway_factory(faulty.url, name="faults-reset-gw")
    cursor = connect(gateway, oidc.mint("rex", ["agents"]), network_timeout=30).cursor()
    for fault in ("reset", "close"):
        assert cursor.execute(f"select 7 /*fault:{fault}*/").fetchone() == (7,)
    assert cursor.execute("select 8").fetchone() == (8,)
    gateway.stop()
    records = stored_records(gateway.workdir / "store")
    each_flow_recorded_once(records)
    for fault in ("reset", "close"):
        attempts = statements(records, f"/*fault:{fault}*/")
        assert len(attempts) == 2, [a.get("path") for a in attempts]
        assert len({a["request_id"] for a in attempts}) == 1  # one statement, retried
        assert faulty.attempts(attempts[0]["request_id"]) == 2
        kinds = [outcome(records, attempt)["kind"] for attempt in attempts]
        assert kinds == ["error", "response"]


def test_slow_upstream_is_waited_for_and_recorded_once(
    gateway_factory, faulty, oidc, connect
) -> None:
    faulty.delay = 2.0
    gateway = gateway_factory(faulty.url, name="faults-slow-gw")
    cursor = connect(gateway, oidc.mint("sly", ["agents"]), network_timeout=30).cursor()
    started = time.monotonic()
    assert cursor.execute("select 9 /*fault:slow*/").fetchone() == (9,)
    assert time.monotonic() - started >= 2.0
    gateway.stop()
    records = stored_records(gateway.workdir / "store")
    each_flow_recorded_once(records)
    (attempt,) = statements(records, "/*fault:slow*/")
    done = outcome(records, attempt)
    assert done["kind"] == "response" and done["success"] is True
    assert done["duration_ms"] >= 2000


def test_client_that_gives_up_on_a_slow_upstream_is_recorded_once(
    gateway_factory, faulty, oidc
) -> None:
    faulty.delay = 3.0
    gateway = gateway_factory(faulty.url, name="faults-impatient-gw")
    session = login(gateway.port, oidc.mint("imp", ["agents"]))
    request_id = str(uuid.uuid4())
    with pytest.raises(TimeoutError):
        query(gateway.port, session.token, "select 10 /*fault:slow*/", request_id, timeout=1)
    stack.wait_until(
        lambda: faulty.attempts(request_id) == 1, timeout=10, what="the upstream to get it"
    )
    assert query(gateway.port, session.token, "select 11").json["success"]
    gateway.stop()
    records = stored_records(gateway.workdir / "store")
    each_flow_recorded_once(records)
    (attempt,) = statements(records, "/*fault:slow*/")
    assert attempt["request_id"] == request_id
    abandoned = outcome(records, attempt)
    assert abandoned["kind"] == "error"
    assert "disconnect" in abandoned["error"].lower()


def test_unreadable_upstream_answers(gateway_factory, faulty, oidc, connect) -> None:
    gateway = gateway_factory(
        faulty.url, {"hoopgw_response_limit": 1024 * 1024}, name="faults-garbage-gw"
    )
    faulty.garble_logins = 1
    with pytest.raises(DatabaseError) as refused:
        connect(gateway, oidc.mint("gar", ["agents"]))
    assert "hoopgw could not read Snowflake's answer to the login" in str(refused.value)
    session = login(gateway.port, oidc.mint("gar", ["agents"]))
    garbage = query(gateway.port, session.token, "select 1 /*fault:garbage*/", "garbage-1")
    assert garbage.status == 200 and garbage.body.startswith(b"<html>")
    bombed = query(gateway.port, session.token, "select 1 /*fault:bomb*/", "bomb-1")
    assert bombed.status == 200 and bombed.headers.get("content-encoding") == "gzip"
    assert query(gateway.port, session.token, "select 12").json["success"]
    gateway.stop()
    records = stored_records(gateway.workdir / "store")
    each_flow_recorded_once(records)
    (bomb_request,) = statements(records, "/*fault:bomb*/")
    answer = outcome(records, bomb_request)
    assert answer["body"]["size"] == len(gzip_bomb())  # kept as received, never expanded
    assert "hoopgw: unreadable query response" in gateway.log()


# Identity provider faults and clock skew


@pytest.fixture
def issuer() -> Iterator[LocalIssuer]:
    local = LocalIssuer().start()
    yield local
    local.stop()


def identity_options(issuer: LocalIssuer, **extra: Any) -> dict[str, Any]:
    return {"hoopgw_oidc_issuer": issuer.issuer, "hoopgw_oidc_audience": "hoopgw", **extra}


def login_answer(gateway: stack.Gateway, token: str) -> dict[str, Any]:
    body = json.dumps(login_body(token)).encode()
    return send(
        gateway.port,
        "POST",
        "/session/v1/login-request",
        body,
        [(b"Content-Type", b"application/json")],
    ).json


UNAVAILABLE = "hoopgw refused the login: the token cannot be verified now: "


def test_identity_provider_unreachable_cached_keys_work_until_they_expire(
    gateway_factory, strict, issuer
) -> None:
    gateway = gateway_factory(
        strict.url,
        identity_options(issuer, hoopgw_oidc_jwks_ttl=1, hoopgw_oidc_jwks_max_age=6),
        name="faults-idp-gw",
    )
    assert login_answer(gateway, issuer.mint("ida"))["success"]
    issuer.stop()
    rotated = RSAKey.generate_key(2048, parameters={"kid": "signing-2"})

    def cached_key_used_past_its_ttl() -> bool:
        accepted = login_answer(gateway, issuer.mint("ida"))["success"]
        assert accepted, "the cached key was refused while it is still trusted"
        return "refreshing the identity provider's keys failed" in gateway.log()

    stack.wait_until(cached_key_used_past_its_ttl, timeout=10, what="a key refresh to fail")
    mark = strict.mark()
    new_key = login_answer(gateway, issuer.mint("ida", key=rotated))
    assert new_key["code"] == "390100"
    assert new_key["message"].startswith(UNAVAILABLE + "the identity provider is unreachable")
    assert strict.received_since(mark) == []

    def old_key_refused() -> bool:
        return login_answer(gateway, issuer.mint("ida")).get("success") is False

    stack.wait_until(old_key_refused, timeout=15, what="the cached keys to expire")
    mark = strict.mark()
    expired = login_answer(gateway, issuer.mint("ida"))
    assert expired["message"].startswith(UNAVAILABLE + "the identity provider is unreachable")
    assert strict.received_since(mark) == []


def test_identity_provider_unreachable_from_the_start(gateway_factory, strict) -> None:
    down = LocalIssuer().start()
    token = down.mint("ivo")
    down.stop()
    gateway = gateway_factory(strict.url, identity_options(down), name="faults-idp-down-gw")
    mark = strict.mark()
    answer = login_answer(gateway, token)
    assert answer["code"] == "390100"
    assert answer["message"].startswith(UNAVAILABLE + "the identity provider is unreachable")
    assert token not in answer["message"]
    assert strict.received_since(mark) == []


SKEWS = [
    ("issued 30 s in the future", {"iat": 30}, None),
    ("expired 30 s ago", {"exp": -30, "iat": -330}, None),
    ("valid from 30 s from now", {"nbf": 30}, None),
    (
        "issued 5 min in the future",
        {"iat": 300},
        "the token is not valid yet (issued in the future)",
    ),
    ("expired 5 min ago", {"exp": -300, "iat": -600}, "the token has expired"),
    ("valid from 5 min from now", {"nbf": 300}, "the token is not valid yet"),
]


@pytest.fixture(scope="module")
def skew_issuer() -> Iterator[LocalIssuer]:
    local = LocalIssuer().start()
    yield local
    local.stop()


@pytest.fixture(scope="module")
def skew_gateway(gateway_factory, strict, skew_issuer) -> stack.Gateway:
    return gateway_factory(strict.url, identity_options(skew_issuer), name="faults-skew-gw")


@pytest.mark.parametrize(("case", "shift", "refusal"), SKEWS, ids=[s[0] for s in SKEWS])
def test_clock_skew_within_leeway_is_tolerated_beyond_it_refused(
    skew_gateway, strict, skew_issuer, connect, case, shift, refusal
) -> None:
    now = int(time.time())
    claims = {name: now + offset for name, offset in shift.items()}
    if "exp" not in claims:
        claims["exp"] = max(claims.values()) + 300
    token = skew_issuer.mint("sam", **claims)
    mark = strict.mark()
    if refusal is None:
        connection = connect(skew_gateway, token)
        assert connection.cursor().execute("select 1").fetchone() == (1,)
        return
    with pytest.raises(DatabaseError) as refused:
        connect(skew_gateway, token, login_timeout=10)
    assert refused.value.errno == 390100
    assert str(refused.value).endswith("hoopgw refused the login: " + refusal)
    assert strict.received_since(mark) == []
