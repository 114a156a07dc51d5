"""Client connections against a real gateway: deadlines for late clients, TLS only.

Raw sockets play the attacker: connections that send nothing, a request line or
headers one byte at a time, half a TLS handshake, a body that never ends, or
that stay open after their answer. Each must be closed by the gateway within
its bound, measured against a deadline on the socket, while a caller whose
query Snowflake answers slowly keeps its connection. A gateway that serves TLS
refuses plain HTTP before anything goes upstream or into a record.
"""

from __future__ import annotations

import json
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from hoopgw.addons.protocol import CODE_GATEWAY_PROTOCOL
from tests import stack
from tests.raw_http import (
    json_headers,
    login_body,
    secrets_in,
    send,
    session_authorization,
    stored_records,
)

HEADER_TIMEOUT = 2
IDLE_TIMEOUT = 3
MIN_BODY_RATE = 1024
SLACK = 3.0  # how late a close may come: the event loop, a loaded machine
UPSTREAM_DELAY = HEADER_TIMEOUT + IDLE_TIMEOUT + 2
DEADLINES = {
    "hoopgw_header_timeout": HEADER_TIMEOUT,
    "hoopgw_idle_timeout": IDLE_TIMEOUT,
    "hoopgw_min_body_rate": MIN_BODY_RATE,
}
ONLY_HTTPS = "accepts only HTTPS"


def closed_by_gateway(
    sock: socket.socket, within: float, trickle: bytes = b"", every: float = 0.5
) -> float:
    """Seconds until the gateway closed `sock`; fails after `within`.

    With `trickle`, one byte of it is sent every `every` seconds meanwhile:
    activity must not keep a late client's connection open.
    """
    start = time.monotonic()
    deadline = start + within
    position = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"the gateway still holds the connection after {within:.1f} s")
        readable, _, _ = select.select([sock], [], [], min(remaining, every))
        try:
            if readable and sock.recv(65536) == b"":
                return time.monotonic() - start
            if trickle and not readable:
                sock.sendall(trickle[position % len(trickle) : position % len(trickle) + 1])
                position += 1
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - start


def answer_read(sock: socket.socket, timeout: float = 30.0) -> bytes:
    """Read one complete answer with a Content-Length from a keep-alive connection."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head


@pytest.fixture(scope="module")
def deadline_gateway(gateway_factory, strict) -> stack.Gateway:
    return gateway_factory(strict.url, DEADLINES, name="deadline-gw")


@pytest.fixture(scope="module")
def tls_gateway(gateway_factory, strict, tls) -> stack.Gateway:
    return gateway_factory(strict.url, DEADLINES, certs=tls.server_pem, name="tls-only-gw")


def test_a_silent_connection_is_closed_after_the_header_timeout(deadline_gateway) -> None:
    with socket.create_connection((deadline_gateway.host, deadline_gateway.port)) as sock:
        elapsed = closed_by_gateway(sock, HEADER_TIMEOUT + SLACK)
    assert elapsed >= HEADER_TIMEOUT - 0.5


@pytest.mark.parametrize(
    ("prefix", "trickle"),
    [
        (b"", b"POST /queries/v1/query-request?requestId=1 HTTP/1.1\r\n"),
        (b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n", b"X-Slow: " + b"a" * 64),
    ],
    ids=["request-line", "headers"],
)
def test_a_request_head_sent_byte_by_byte_is_cut_at_the_header_timeout(
    deadline_gateway, prefix: bytes, trickle: bytes
) -> None:
    with socket.create_connection((deadline_gateway.host, deadline_gateway.port)) as sock:
        sock.sendall(prefix)
        closed_by_gateway(sock, HEADER_TIMEOUT + SLACK, trickle=trickle, every=0.3)


def test_connections_past_the_per_address_cap_are_closed_at_once(gateway_factory, strict) -> None:
    gateway = gateway_factory(
        strict.url, {**DEADLINES, "hoopgw_max_client_connections": 3}, name="capped-gw"
    )
    address = (gateway.host, gateway.port)
    held = [socket.create_connection(address) for _ in range(3)]
    try:
        with socket.create_connection(address) as extra:
            closed_by_gateway(extra, SLACK)
        assert "over 3 connections from one address" in gateway.log()
    finally:
        for sock in held:
            sock.close()


def test_a_half_done_tls_handshake_is_closed(tls_gateway) -> None:
    with socket.create_connection((tls_gateway.host, tls_gateway.port)) as sock:
        sock.sendall(bytes.fromhex("1603010200010001fc0303"))  # a ClientHello's first bytes
        closed_by_gateway(sock, HEADER_TIMEOUT + SLACK)


def test_a_body_slower_than_the_minimum_rate_is_cut(deadline_gateway, strict) -> None:
    declared = 4 * MIN_BODY_RATE
    mark = strict.mark()
    with socket.create_connection((deadline_gateway.host, deadline_gateway.port)) as sock:
        sock.sendall(
            b"POST /queries/v1/query-request?requestId=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: " + str(declared).encode() + b"\r\n\r\n{"
        )
        bound = HEADER_TIMEOUT + declared / MIN_BODY_RATE
        elapsed = closed_by_gateway(sock, bound + SLACK, trickle=b" ", every=0.5)
    assert elapsed >= bound - 0.5
    assert strict.received_since(mark) == []


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(
    deadline_gateway,
) -> None:
    with socket.create_connection((deadline_gateway.host, deadline_gateway.port)) as sock:
        sock.sendall(
            b"POST /telemetry/send HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}"
        )
        assert answer_read(sock).startswith(b"HTTP/1.1 200")
        elapsed = closed_by_gateway(sock, IDLE_TIMEOUT + SLACK)
    assert elapsed >= IDLE_TIMEOUT - 0.5
    assert "idle for 3 s" in deadline_gateway.log()


def test_closed_connections_are_logged_once_each_without_secrets(deadline_gateway) -> None:
    before = deadline_gateway.log().count("hoopgw: closed a client connection")
    with socket.create_connection((deadline_gateway.host, deadline_gateway.port)) as sock:
        sock.sendall(b"POST /session/v1/login-request HTTP/1.1\r\nAuthorization: secret-x")
        closed_by_gateway(sock, HEADER_TIMEOUT + SLACK)
    log = stack.wait_until(
        lambda: (
            text
            if (text := deadline_gateway.log()).count("hoopgw: closed a client connection") > before
            else None
        ),
        10,
        "the close to be logged",
    )
    assert isinstance(log, str)
    assert log.count("hoopgw: closed a client connection") == before + 1
    assert "secret-x" not in log


class SlowUpstream(stack.LoopbackServer):
    """The strict upstream, with every statement's answer held back longer than any deadline."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream

    def serve(self, handler: BaseHTTPRequestHandler) -> None:
        body = stack.read_body(handler)  # `forward` sends the body on without its encoding
        if handler.path.startswith("/queries/v1/query-request"):
            threading.Event().wait(UPSTREAM_DELAY)  # Snowflake still running the query
        stack.send_answer(handler, *stack.forward(self.upstream, handler, body))


@pytest.fixture(scope="module")
def slow_upstream(strict) -> Iterator[str]:
    server = SlowUpstream(strict.url).start()
    yield server.url
    server.stop()


def test_a_slow_upstream_answer_still_reaches_the_driver(
    gateway_factory, slow_upstream, connect, agent_token
) -> None:
    gateway = gateway_factory(slow_upstream, DEADLINES, name="slow-upstream-gw")
    cursor = connect(gateway, agent_token).cursor()
    started = time.monotonic()
    assert cursor.execute("select 42").fetchone() == (42,)
    assert time.monotonic() - started >= UPSTREAM_DELAY
    assert "hoopgw: closed a client connection" not in gateway.log()


def test_plain_http_to_a_tls_gateway_is_refused_and_never_forwarded(
    gateway_factory, strict, tls, oidc
) -> None:
    gateway = gateway_factory(strict.url, certs=tls.server_pem, name="tls-refusal-gw")
    id_token = oidc.mint("careless", ["agents"])
    mark = strict.mark()
    login = send(
        gateway.port,
        "POST",
        "/session/v1/login-request?requestId=plain-login",
        json.dumps(login_body(id_token)).encode(),
        json_headers(),
    )
    query = send(
        gateway.port,
        "POST",
        "/queries/v1/query-request?requestId=plain-query",
        json.dumps({"sqlText": "select 1", "sequenceId": 1}).encode(),
        json_headers(session_authorization("clear-session-token")),
    )
    sql_api = send(
        gateway.port,
        "POST",
        "/api/v2/statements?requestId=plain-sql-api",
        json.dumps({"statement": "select 1"}).encode(),
        json_headers((b"Authorization", f"Bearer {id_token}".encode())),
    )
    assert strict.received_since(mark) == []
    for answer in (login, query, sql_api):
        assert answer.code == str(CODE_GATEWAY_PROTOCOL), answer.json
        assert ONLY_HTTPS in answer.message and "exposed" in answer.message
    assert login.json["success"] is False and query.json["success"] is False
    assert sql_api.status == 403
    gateway.stop()
    records = stored_records(gateway.workdir / "store")
    # refused before any credential was read, so without a verified caller: each is counted
    # in the window's refusal_summary, with a sample, and has no record of its own
    assert not [r for r in records if "plain-" in r.get("path", "")]
    (summary,) = [r for r in records if r["kind"] == "refusal_summary"]
    samples = [s for s in summary["samples"] if "plain-" in s["path"]]
    assert sorted(s["endpoint"] for s in samples) == ["login", "query", "sql_api"]
    assert {s["refusal"]["by"] for s in samples} == {"transport"}
    assert {s["refusal"]["code"] for s in samples} == {CODE_GATEWAY_PROTOCOL}
    by_transport = [r for r in summary["reasons"] if r["code"] == CODE_GATEWAY_PROTOCOL]
    assert sum(r["count"] for r in by_transport) == summary["refused"] == 3
    assert secrets_in(records, [id_token, "clear-session-token"]) == []


def test_the_driver_works_over_https_on_a_tls_only_gateway(
    tls_gateway, connect, agent_token, tls, monkeypatch
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca_bundle))
    connection = connect(tls_gateway, agent_token, disable_ocsp_checks=True)
    assert connection.cursor().execute("select 1").fetchone() == (1,)


def test_the_driver_shows_the_refusal_when_configured_for_http(
    tls_gateway, connect, agent_token
) -> None:
    import snowflake.connector

    with pytest.raises(snowflake.connector.errors.Error, match=ONLY_HTTPS):
        connect(f"http://{tls_gateway.host}:{tls_gateway.port}", agent_token)


def test_require_tls_off_keeps_plain_http_working(
    gateway_factory, strict, tls, connect, agent_token
) -> None:
    gateway = gateway_factory(
        strict.url, {"hoopgw_require_tls": "off"}, certs=tls.server_pem, name="tls-optional-gw"
    )
    connection = connect(f"http://{gateway.host}:{gateway.port}", agent_token)
    assert connection.cursor().execute("select 1").fetchone() == (1,)


def test_an_invalid_require_tls_value_stops_the_gateway_with_one_line(
    gateway_factory, strict
) -> None:
    with pytest.raises(stack.StartupError) as failure:
        gateway_factory(strict.url, {"hoopgw_require_tls": "maybe"}, name="tls-bad-option-gw")
    assert "hoopgw_require_tls must be one of auto, on, off, got 'maybe'" in str(failure.value)


def _negotiated(gateway: stack.Gateway, ca_bundle: Path) -> str | None:
    """The application protocol the gateway picks for a client offering h2 and HTTP/1.1."""
    context = ssl.create_default_context(cafile=str(ca_bundle))
    context.set_alpn_protocols(["h2", "http/1.1"])
    raw = socket.create_connection((gateway.host, gateway.port), timeout=30)
    with context.wrap_socket(raw, server_hostname=gateway.host) as sock:
        return sock.selected_alpn_protocol()


def test_clients_are_offered_http1_only_by_default(tls_gateway, tls) -> None:
    assert _negotiated(tls_gateway, tls.ca_bundle) == "http/1.1"


def test_http2_for_clients_is_the_operators_choice(gateway_factory, strict, tls) -> None:
    gateway = gateway_factory(
        strict.url, {"hoopgw_http2": True}, certs=tls.server_pem, name="tls-h2-gw"
    )
    assert _negotiated(gateway, tls.ca_bundle) == "h2"
