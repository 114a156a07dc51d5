"""Snowflake REST protocol helpers shared by the gateway's addons.

Everything here is about the wire: which endpoint a request is for, how to read
and rewrite its JSON body whatever its Content-Encoding, and how to answer in
the exact shapes the Snowflake drivers turn into user-facing errors.
"""

from __future__ import annotations

import gzip
import re
import urllib.parse
import zlib
from collections.abc import Iterable
from enum import StrEnum
from typing import Any

import orjson
from mitmproxy import http

ERROR_SQL_STATE_CONNECTION = "08001"
ERROR_SQL_STATE_AUTHORIZATION = "28000"

# Error codes the drivers act on (see design.md, "Snowflake protocol facts").
CODE_BAD_CREDENTIALS = 390100
CODE_SESSION_INVALID = 390104
CODE_SESSION_GONE = 390111
CODE_SESSION_EXPIRED = 390112
CODE_MASTER_EXPIRED = 390114
CODE_ID_TOKEN_INVALID = 390195
# hoopgw's own codes, outside Snowflake's ranges, documented in docs/errors.md.
CODE_GATEWAY_PROTOCOL = 399001
CODE_GATEWAY_RECORDING = 399002
CODE_GATEWAY_POLICY = 399003
CODE_GATEWAY_INTERNAL = 399004


class Endpoint(StrEnum):
    LOGIN = "login"
    QUERY = "query"
    TOKEN_REQUEST = "token_request"
    LOGOUT = "logout"
    HEARTBEAT = "heartbeat"
    ABORT = "abort"
    TELEMETRY = "telemetry"
    MONITORING = "monitoring"
    RESULT = "result"
    SQL_API = "sql_api"
    AUTHENTICATOR = "authenticator"
    OTHER = "other"


# Path segments that name a query or statement: Snowflake's ids are hex and dashes.
# Anything else (dots, percent-escapes, semicolons) could be an alias that the
# upstream normalises into another endpoint, so it does not match.
_ID = r"[0-9A-Za-z][0-9A-Za-z_-]{0,127}"
_ROUTES: tuple[tuple[re.Pattern[str], Endpoint], ...] = tuple(
    (re.compile(pattern), endpoint)
    for pattern, endpoint in (
        (r"/session/v1/login-request", Endpoint.LOGIN),
        (r"/queries/v1/query-request", Endpoint.QUERY),
        (r"/session/token-request", Endpoint.TOKEN_REQUEST),
        (r"/session/heartbeat", Endpoint.HEARTBEAT),
        (rf"/queries/{_ID}/abort-request", Endpoint.ABORT),
        (r"/telemetry/send", Endpoint.TELEMETRY),
        # connector 5.x sends /monitoring/queries//{id}: keep accepting the double slash
        (rf"/monitoring/queries//?{_ID}", Endpoint.MONITORING),
        (rf"/queries/{_ID}/result/?", Endpoint.RESULT),
        (rf"/api/v2/statements(?:/{_ID}(?:/cancel)?)?/?", Endpoint.SQL_API),
        (r"/session/authenticator-request", Endpoint.AUTHENTICATOR),
    )
)
_POST = frozenset({"POST"})
_GET = frozenset({"GET"})
ALLOWED_METHODS: dict[Endpoint, frozenset[str]] = {
    Endpoint.LOGIN: _POST,
    Endpoint.QUERY: _POST,
    Endpoint.TOKEN_REQUEST: _POST,
    Endpoint.LOGOUT: _POST,
    Endpoint.HEARTBEAT: _POST,
    Endpoint.ABORT: _POST,
    Endpoint.TELEMETRY: _POST,
    Endpoint.MONITORING: _GET,
    Endpoint.RESULT: _GET,
    Endpoint.SQL_API: frozenset({"GET", "POST"}),
    Endpoint.AUTHENTICATOR: _POST,
    Endpoint.OTHER: frozenset(),
}
"""The HTTP methods the Snowflake drivers use on each endpoint; anything else is refused."""


def classify(method: str, path: str) -> Endpoint:
    """Name the Snowflake endpoint a request targets; `path` may carry a query string.

    Matching is exact: a path that is not spelled the way the drivers spell it
    is OTHER, and the gateway refuses OTHER, so an alias the upstream might
    normalise into a statement endpoint cannot slip past the policy.
    """
    route, _, query = path.partition("?")
    if route == "/session":
        flags = urllib.parse.parse_qs(query, keep_blank_values=True).get("delete")
        return Endpoint.LOGOUT if flags == ["true"] else Endpoint.OTHER
    for pattern, endpoint in _ROUTES:
        if pattern.fullmatch(route):
            return endpoint
    return Endpoint.OTHER


def allowed_methods(endpoint: Endpoint, path: str) -> frozenset[str]:
    """The methods a request to this endpoint may use (SQL API: POST to submit or cancel)."""
    if endpoint is Endpoint.SQL_API:
        route = path.partition("?")[0].rstrip("/")
        return _GET if route.count("/") == 4 and not route.endswith("/cancel") else _POST
    return ALLOWED_METHODS[endpoint]


class ProtocolError(ValueError):
    """A request or response body the gateway cannot read as Snowflake JSON."""


_CONTROL_BYTES = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def unreadable_head(path: bytes, headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """Why a request's path or headers cannot be taken as text, or None when they can.

    The gateway matches endpoints, reads tokens and records requests as text;
    bytes that are not UTF-8, and control characters (a bare CR in a header
    value is a line break to some servers: header injection), are refused.
    """
    if _unreadable(path):
        return "the request path is not printable UTF-8 text"
    for name, value in headers:
        if _unreadable(name) or _unreadable(value):
            return "a request header is not printable UTF-8 text"
    return None


def _unreadable(data: bytes) -> bool:
    if _CONTROL_BYTES.search(data):
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def printable(data: bytes) -> str:
    """`data` as text with undecodable bytes and control characters escaped (`\\xff`)."""
    text = data.decode("utf-8", "backslashreplace")
    return re.sub(r"[\x00-\x08\x0a-\x1f\x7f]", lambda m: f"\\x{ord(m.group()):02x}", text)


def decode_body(message: http.Message, limit: int) -> bytes:
    """Return the decoded body, refusing more than `limit` decoded bytes (gzip bombs)."""
    raw = message.raw_content or b""
    encoding = message.headers.get("content-encoding", "").strip().lower()
    if encoding in ("", "identity"):
        if len(raw) > limit:
            raise ProtocolError(f"body of {len(raw)} bytes is over the {limit}-byte limit")
        return raw
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise ProtocolError(f"unsupported Content-Encoding {encoding!r}")
    wbits = zlib.MAX_WBITS | 16 if encoding != "deflate" else zlib.MAX_WBITS
    decompressor = zlib.decompressobj(wbits)
    try:
        data = decompressor.decompress(raw, limit + 1)
    except zlib.error as exc:
        raise ProtocolError(f"invalid {encoding} body: {exc}") from None
    if len(data) > limit or decompressor.unconsumed_tail:
        raise ProtocolError(f"decoded body is over the {limit}-byte limit")
    if not decompressor.eof:
        raise ProtocolError(f"truncated {encoding} body")
    if decompressor.unused_data:
        # a second gzip member would be read by the upstream but not by the gateway
        raise ProtocolError(f"trailing data after the {encoding} body")
    return data


def parse_json_object(data: bytes) -> dict[str, Any] | None:
    """Parse a JSON object body; empty bodies are None, anything else malformed raises."""
    if not data.strip():
        return None
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"body is not valid JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise ProtocolError("body is JSON but not an object")
    return value


def write_json_body(message: http.Message, value: dict[str, Any]) -> None:
    """Replace the body, keeping the message's Content-Encoding (gzip stays gzip)."""
    data = orjson.dumps(value)
    encoding = message.headers.get("content-encoding", "").strip().lower()
    if encoding in ("gzip", "x-gzip"):
        message.raw_content = gzip.compress(data, compresslevel=1)
    elif encoding == "deflate":
        message.raw_content = zlib.compress(data, 1)
    else:
        if encoding:
            del message.headers["content-encoding"]
        message.raw_content = data
    message.headers["content-length"] = str(len(message.raw_content))


_TOKEN_HEADER = re.compile(r'^\s*Snowflake\s+Token\s*=\s*"([^"]*)"\s*$', re.IGNORECASE)


def session_token_from(headers: http.Headers) -> str | None:
    """The token in `Authorization: Snowflake Token="..."`, None when absent or "None"."""
    values = headers.get_all("authorization")
    if len(values) != 1:
        return None
    match = _TOKEN_HEADER.match(values[0])
    if not match or match.group(1) in ("", "None"):
        return None
    return match.group(1)


def snowflake_authorization(token: str) -> str:
    return f'Snowflake Token="{token}"'


def _json_response(payload: dict[str, Any], status: int = 200) -> http.Response:
    return http.Response.make(status, orjson.dumps(payload), {"Content-Type": "application/json"})


def login_failure(code: int, message: str) -> http.Response:
    """A refused login as Snowflake sends it: HTTP 200, `success: false`; drivers show `message`."""
    return _json_response(
        {
            "data": {"nextAction": None, "authnMethod": None, "errorCode": str(code)},
            "code": str(code),
            "message": message,
            "success": False,
            "headers": None,
        }
    )


def session_failure(code: int, message: str, status: int = 200) -> http.Response:
    """A refused call on an authenticated endpoint (bad, expired or unknown session token)."""
    return _json_response(
        {
            "data": {"errorCode": str(code), "sqlState": ERROR_SQL_STATE_CONNECTION},
            "code": str(code),
            "message": message,
            "success": False,
            "headers": None,
        },
        status,
    )


def not_served(
    endpoint: Endpoint, status: int, message: str, allow: Iterable[str] = ()
) -> http.Response:
    """A request the gateway does not serve at all (unknown path 404, wrong method 405)."""
    code = CODE_GATEWAY_PROTOCOL
    if endpoint is Endpoint.SQL_API:
        response = sql_api_failure(status, code, message)
    else:
        response = session_failure(code, message, status)
    if allow:
        response.headers["Allow"] = ", ".join(sorted(allow))
    return response


def query_failure(
    code: int, message: str, sql_state: str = "42000", query_id: str | None = None
) -> http.Response:
    """A statement error as query-request answers it; drivers raise ProgrammingError."""
    data: dict[str, Any] = {
        "errorCode": str(code),
        "sqlState": sql_state,
        "internalError": False,
        "age": 0,
    }
    if query_id:
        data["queryId"] = query_id
    return _json_response(
        {"data": data, "code": str(code), "message": message, "success": False, "headers": None}
    )


def sql_api_failure(status: int, code: int, message: str) -> http.Response:
    """An SQL API v2 error: real HTTP status with `code` and `message`."""
    return _json_response({"code": str(code), "message": message}, status=status)


def refusal_for(
    endpoint: Endpoint, code: int, message: str, *, sql_state: str = "42000", http_status: int = 400
) -> http.Response:
    """The gateway's own answer to a request, in the shape that endpoint's clients expect."""
    if endpoint is Endpoint.LOGIN:
        return login_failure(code, message)
    if endpoint is Endpoint.QUERY:
        return query_failure(code, message, sql_state=sql_state)
    if endpoint is Endpoint.SQL_API:
        return sql_api_failure(http_status, code, message)
    return session_failure(code, message)
