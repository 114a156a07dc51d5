"""Snowflake REST protocol helpers shared by the gateway's addons.

Everything here is about the wire: which endpoint a request is for, how to read
and rewrite its JSON body whatever its Content-Encoding, and how to answer in
the exact shapes the Snowflake drivers turn into user-facing errors.
"""

from __future__ import annotations

import gzip
import re
import zlib
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


_RESULT_PATH = re.compile(r"^/queries/[^/]+/result/?$")


def classify(method: str, path: str) -> Endpoint:
    """Name the Snowflake endpoint a request targets; `path` may carry a query string."""
    route, _, query = path.partition("?")
    if route == "/session/v1/login-request":
        return Endpoint.LOGIN
    if route == "/queries/v1/query-request":
        return Endpoint.QUERY
    if route == "/session/token-request":
        return Endpoint.TOKEN_REQUEST
    if route == "/session" and "delete=true" in query:
        return Endpoint.LOGOUT
    if route == "/session/heartbeat":
        return Endpoint.HEARTBEAT
    if route == "/queries/v1/abort-request":
        return Endpoint.ABORT
    if route == "/telemetry/send":
        return Endpoint.TELEMETRY
    if route.startswith("/monitoring/queries/"):
        return Endpoint.MONITORING
    if _RESULT_PATH.match(route):
        return Endpoint.RESULT
    if route == "/api/v2/statements" or route.startswith("/api/v2/statements/"):
        return Endpoint.SQL_API
    if route == "/session/authenticator-request":
        return Endpoint.AUTHENTICATOR
    return Endpoint.OTHER


class ProtocolError(ValueError):
    """A request or response body the gateway cannot read as Snowflake JSON."""


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


def session_failure(code: int, message: str) -> http.Response:
    """A refused call on an authenticated endpoint (bad, expired or unknown session token)."""
    return _json_response(
        {
            "data": {"errorCode": str(code), "sqlState": ERROR_SQL_STATE_CONNECTION},
            "code": str(code),
            "message": message,
            "success": False,
            "headers": None,
        }
    )


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
