"""Raw HTTP for the hardening tests: requests no well-behaved client would send.

`http.client` refuses to send control characters, duplicate framing headers
or bytes that are not ASCII, so hostile requests are written to a socket and
the answer is read back with `http.client.HTTPResponse`.
"""

from __future__ import annotations

import functools
import http.client
import json
import socket
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hoopgw.recorder.segment import SUFFIX, decode_segment
from hoopgw.recorder.store import LocalStore
from tests import stack
from tests.bodies import login_body, query_body

Header = tuple[bytes, bytes]


@dataclass(frozen=True)
class Answer:
    """What came back: status, headers (lower-cased names) and the body, parsed if JSON."""

    status: int
    headers: dict[str, str]
    body: bytes
    json: dict[str, Any] = field(default_factory=dict)

    @property
    def code(self) -> str | None:
        code = self.json.get("code")
        return None if code is None else str(code)

    @property
    def message(self) -> str:
        return str(self.json.get("message") or "")


def send(
    port: int,
    method: bytes | str,
    target: bytes | str,
    body: bytes = b"",
    headers: Iterable[Header] = (),
    *,
    content_length: bool = True,
    timeout: float = 30.0,
) -> Answer:
    """One HTTP/1.1 request on a fresh connection, bytes exactly as given."""
    method = method.encode() if isinstance(method, str) else method
    target = target.encode() if isinstance(target, str) else target
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    if content_length:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    lines += [name + b": " + value for name, value in headers]
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    with socket.create_connection((stack.LOOPBACK, port), timeout=timeout) as sock:
        sock.sendall(head + body)
        answer = http.client.HTTPResponse(sock, method=method.decode("latin-1"))
        answer.begin()
        raw = answer.read()
        names = {name.lower(): value for name, value in answer.getheaders()}
        return Answer(answer.status, names, raw, _json_object(raw))


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def json_headers(*extra: Header) -> list[Header]:
    return [(b"Content-Type", b"application/json"), (b"Accept", b"application/json"), *extra]


def session_authorization(token: str) -> Header:
    return (b"Authorization", f'Snowflake Token="{token}"'.encode())


@dataclass(frozen=True)
class Session:
    """The sealed tokens a gateway handed out at login."""

    token: str
    master_token: str
    session_id: int | str


def login(port: int, id_token: str, path: str = "/session/v1/login-request") -> Session:
    """Log in with raw HTTP; fails the test if the gateway does not accept the token."""
    answer = send(port, "POST", path, json.dumps(login_body(id_token)).encode(), json_headers())
    assert answer.status == 200 and answer.json.get("success"), answer.json
    data = answer.json["data"]
    return Session(data["token"], data["masterToken"], data["sessionId"])


def query(
    port: int,
    token: str | None,
    sql: str,
    request_id: str = "1",
    *,
    timeout: float = 30.0,
    **headers: str,
) -> Answer:
    """A query-request as the connector sends it; `headers` names use `_` for `-`."""
    extra = [session_authorization(token)] if token is not None else []
    extra += [(name.replace("_", "-").encode(), value.encode()) for name, value in headers.items()]
    body = json.dumps(query_body(sql)).encode()
    return send(
        port,
        "POST",
        f"/queries/v1/query-request?requestId={request_id}",
        body,
        json_headers(*extra),
        timeout=timeout,
    )


@functools.cache
def gzip_bomb() -> bytes:
    """256 MiB of spaces in a gzip body of about 256 KiB."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    chunk = b" " * (1 << 20)
    return b"".join([*(compressor.compress(chunk) for _ in range(256)), compressor.flush()])


def stored_records(store: Path) -> list[dict[str, Any]]:
    """Every record in a gateway's local store (segments uploaded so far)."""
    archive = LocalStore(store)
    records: list[dict[str, Any]] = []
    for key in archive.list(""):
        if key.endswith(SUFFIX):
            records.extend(decode_segment(archive.get(key)))
    return records


def secrets_in(records: Sequence[dict[str, Any]], secrets: Iterable[str]) -> list[str]:
    """The secrets that appear anywhere in the records' JSON."""
    text = json.dumps(records)
    return [secret for secret in secrets if secret and secret in text]
