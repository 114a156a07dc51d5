"""Snowflake REST protocol helpers shared by the gateway's addons.

Everything here is about the wire: which endpoint a request is for, how to read
and rewrite its JSON body whatever its Content-Encoding, and how to answer in
the exact shapes the Snowflake drivers turn into user-facing errors.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import math
import re
import urllib.parse
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final, Protocol

import brotli
import orjson
import zstandard
from mitmproxy import http

from hoopgw.recorder.outline import JsonOutline

logger = logging.getLogger(__name__)

ERROR_SQL_STATE_CONNECTION = "08001"

# Error codes the drivers act on (see design.md, "Snowflake protocol facts").
CODE_BAD_CREDENTIALS = 390100
CODE_SESSION_INVALID = 390104
CODE_SESSION_EXPIRED = 390112
CODE_MASTER_EXPIRED = 390114
# hoopgw's own codes, outside Snowflake's ranges, documented in docs/errors.md.
CODE_GATEWAY_PROTOCOL = 399001
CODE_GATEWAY_RECORDING = 399002
CODE_GATEWAY_POLICY = 399003
CODE_GATEWAY_INTERNAL = 399004
CODE_GATEWAY_SENSITIVE = 399007
CODE_APPROVAL_DENIED = 399005
CODE_APPROVAL_TIMEOUT = 399006
GATEWAY_CODES: Final[Mapping[int, str]] = MappingProxyType(
    {
        CODE_GATEWAY_PROTOCOL: "refused by hoopgw: malformed request",
        CODE_GATEWAY_RECORDING: "refused by hoopgw: could not be recorded",
        CODE_GATEWAY_POLICY: "blocked by hoopgw policy",
        CODE_GATEWAY_INTERNAL: "refused by hoopgw: internal error (fail closed)",
        CODE_GATEWAY_SENSITIVE: "result withheld by hoopgw: sensitive data (policy)",
        CODE_APPROVAL_DENIED: "held by hoopgw for review and denied by an approver",
        CODE_APPROVAL_TIMEOUT: "held by hoopgw for review and not decided in time",
    }
)
"""Each of the gateway's own codes with its meaning in one line, for views and documentation."""


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
    CHUNK = "chunk"
    APPROVALS = "approvals"
    """The gateway's own approval desk (addons/approval.py); never forwarded upstream."""
    CORTEX_ANALYST = "cortex_analyst"
    CORTEX_SEARCH = "cortex_search"
    CORTEX_AGENTS = "cortex_agents"
    MCP_SERVER = "mcp_server"
    """Snowflake's managed MCP server (JSON-RPC over POST)."""
    OTHER = "other"


# Path segments that name a query or statement: Snowflake's ids are hex and dashes.
# Anything else (dots, percent-escapes, semicolons) could be an alias that the
# upstream normalises into another endpoint, so it does not match.
CHUNK_PATH_PREFIX: Final = "/hoopgw/v1/chunks/"
"""The gateway's own path for result chunks and stage files; never forwarded to Snowflake.

GET fetches a chunk or a stage file, PUT uploads a stage file (GCS `presignedUrl`);
the sealed ticket in the path says which of the two it allows (addons/results.py).
"""
_ID = r"[0-9A-Za-z][0-9A-Za-z_-]{0,127}"
# An unquoted Snowflake identifier, the only spelling served in a REST path: no
# quotes, dots, slashes or percent-escapes that the upstream might decode into another path.
_IDENT = r"[A-Za-z_][A-Za-z0-9_$]{0,254}"
_IN_SCHEMA = rf"/api/v2/databases/(?P<database>{_IDENT})/schemas/(?P<schema>{_IDENT})"
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
        # a result chunk the gateway fetches for the client (addons/results.py)
        (rf"{CHUNK_PATH_PREFIX}[A-Za-z0-9_-]{{1,16384}}", Endpoint.CHUNK),
        (rf"/hoopgw/v1/approvals(?:/{_ID}(?:/approve|/deny)?)?/?", Endpoint.APPROVALS),
        (r"/api/v2/cortex/analyst/message", Endpoint.CORTEX_ANALYST),
        (rf"{_IN_SCHEMA}/cortex-search-services/(?P<name>{_IDENT}):query", Endpoint.CORTEX_SEARCH),
        (rf"{_IN_SCHEMA}/agents/(?P<name>{_IDENT}):run", Endpoint.CORTEX_AGENTS),
        (rf"{_IN_SCHEMA}/mcp-servers/(?P<name>{_IDENT})", Endpoint.MCP_SERVER),
    )
)
CORTEX_ENDPOINTS: Final = frozenset(
    {Endpoint.CORTEX_ANALYST, Endpoint.CORTEX_SEARCH, Endpoint.CORTEX_AGENTS}
)
"""The Cortex REST surfaces, governed by the policy's `allow_cortex` (addons/guardrails.py)."""
AGENT_ENDPOINTS: Final = frozenset({*CORTEX_ENDPOINTS, Endpoint.MCP_SERVER})
"""Agent-facing REST surfaces beyond SQL (docs/agents.md): each call stands alone."""
BEARER_ENDPOINTS: Final = frozenset({Endpoint.SQL_API, *AGENT_ENDPOINTS})
"""Endpoints whose caller sends an identity-provider bearer token on every call, which the
gateway checks and replaces with its own (addons/authentication/sql_api.py)."""
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
    Endpoint.CHUNK: frozenset({"GET", "PUT"}),
    Endpoint.APPROVALS: frozenset({"GET", "POST"}),
    **dict.fromkeys(AGENT_ENDPOINTS, _POST),
    Endpoint.OTHER: frozenset(),
}
"""The HTTP methods the Snowflake drivers use on each endpoint; anything else is refused."""


def classify(path: str) -> Endpoint:
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


@dataclass(frozen=True, slots=True)
class AgentSurface:
    """The agent-facing surface a request names, as policies and records name it.

    `label` is `analyst`, or `search:DB.SCHEMA.NAME`, `agents:DB.SCHEMA.NAME`,
    `mcp:DB.SCHEMA.NAME` with the path's identifiers upper-cased, as Snowflake
    resolves unquoted identifiers. `allow_cortex` globs match the Cortex ones
    (docs/agents.md).
    """

    kind: str
    database: str | None = None
    schema: str | None = None
    name: str | None = None

    @property
    def label(self) -> str:
        if self.name is None:
            return self.kind
        return f"{self.kind}:{self.database}.{self.schema}.{self.name}"


_SURFACE_KINDS: Final[Mapping[Endpoint, str]] = MappingProxyType(
    {
        Endpoint.CORTEX_ANALYST: "analyst",
        Endpoint.CORTEX_SEARCH: "search",
        Endpoint.CORTEX_AGENTS: "agents",
        Endpoint.MCP_SERVER: "mcp",
    }
)


def agent_surface(endpoint: Endpoint, path: str) -> AgentSurface | None:
    """The surface of a request `classify` put in AGENT_ENDPOINTS; None for any other."""
    kind = _SURFACE_KINDS.get(endpoint)
    if kind is None:
        return None
    route = path.partition("?")[0]
    for pattern, routed in _ROUTES:
        if routed is not endpoint:
            continue
        match = pattern.fullmatch(route)
        if match is None:
            return None
        parts = match.groupdict()
        if not parts:
            return AgentSurface(kind)
        return AgentSurface(
            kind, parts["database"].upper(), parts["schema"].upper(), parts["name"].upper()
        )
    return None


def allowed_methods(endpoint: Endpoint, path: str) -> frozenset[str]:
    """The methods a request to this endpoint may use (SQL API: POST to submit or cancel)."""
    if endpoint is Endpoint.SQL_API:
        route = path.partition("?")[0].rstrip("/")
        return _GET if route.count("/") == 4 and not route.endswith("/cancel") else _POST
    return ALLOWED_METHODS[endpoint]


def stage_upload(endpoint: Endpoint, request: http.Request) -> bool:
    """A PUT of a stage file to the gateway's chunk path: checked and bounded from its head.

    Its body goes to cloud storage as it arrives (addons/results.py), so it is
    exempt from `hoopgw_request_limit` and judged by its ticket before any of it is read.
    """
    return endpoint is Endpoint.CHUNK and request.data.method == b"PUT"


class ProtocolError(ValueError):
    """A request or response body the gateway cannot read as Snowflake JSON."""


_CONTROL_BYTES = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def unreadable_head(path: bytes, headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """Why a request's path or headers cannot be taken as text, or None when they can.

    The gateway matches endpoints, reads tokens and records requests as text;
    bytes that are not UTF-8, and control characters (a bare CR in a header
    value is a line break to some servers: header injection), are refused.
    The usual readable head is checked in one pass over its parts joined by a
    space (which neither completes a UTF-8 sequence nor is a control character);
    only an unreadable one is looked at part by part, to say which part it is.
    """
    fields = [part for field in headers for part in field]
    if not _unreadable(b" ".join([path, *fields])):
        return None
    if _unreadable(path):
        return "the request path is not printable UTF-8 text"
    for part in fields:
        if _unreadable(part):
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


def header_values(headers: http.Headers, name: bytes) -> list[str]:
    """`headers.get_all(name)` for a lower-case `name`, in one pass over the raw fields.

    mitmproxy compares names as `bytes.lower()` does and decodes values as
    UTF-8 with surrogate escapes, as here; its own lookup converts and wraps
    on every call, and the hooks read a few headers of every flow.
    """
    return [
        value.decode("utf-8", "surrogateescape")
        for key, value in headers.fields
        if key.lower() == name
    ]


def header(headers: http.Headers, name: bytes, default: str = "") -> str:
    """`headers.get(name, default)`: repeated headers folded with ", ", as mitmproxy does."""
    values = header_values(headers, name)
    return ", ".join(values) if values else default


def decode_body(message: http.Message, limit: int) -> bytes:
    """Return the decoded body, refusing more than `limit` decoded bytes (gzip bombs)."""
    raw = message.raw_content or b""
    encoding = header(message.headers, b"content-encoding").strip().lower()
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


_BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})
UTF8_BOM: Final = b"\xef\xbb\xbf"


HEAD_LIMIT: Final = 64 * 1024
"""The most bytes of request target and header fields the gateway reads as a request's head.

mitmproxy sets no bound on a request head. The drivers' heads are a few KiB
(a sealed token, a bearer JWT); anything larger is refused from the head
(431), as no Snowflake endpoint takes it."""


def head_size(request: http.Request) -> int:
    """The bytes of the request target and header fields, as they were read."""
    return len(request.data.path) + sum(
        len(name) + len(value) for name, value in request.headers.fields
    )


def refusal_from_head(request: http.Request, limit: int) -> str | None:
    """Why a request is refused before its body is read, judged from its head alone; None if not.

    A body declared over `limit`, or of unknown length (chunked HTTP/1.1, an
    HTTP/2 or HTTP/3 body method without content-length: the drivers always
    declare it), is refused here, and its body is never read: mitmproxy 12
    sends an addon's answer only after it has read the whole body (up to
    `body_size_limit`, which bounds answers too), so such a flow is answered
    from its head and its connection closed (`transport.answer_from_head`).
    """
    lengths = header_values(request.headers, b"content-length")
    if request.is_http2 or request.is_http3:
        if not lengths and request.method.upper() in _BODY_METHODS:
            return "a request body must declare its content-length"
    elif header_values(request.headers, b"transfer-encoding"):
        return "a request body must declare its Content-Length, not be sent chunked"
    if len(lengths) != 1 or not lengths[0].strip().isdigit():
        return None  # none (no body), or conflicting ones mitmproxy refuses itself
    size = int(lengths[0].strip())
    if size > limit:
        return f"body of {size} bytes is over the {limit}-byte limit"
    return None


def read_body(
    message: http.Message, limit: int, parse_json: bool
) -> tuple[bytes, dict[str, Any] | None]:
    """The decoded body and, with `parse_json`, the JSON object it holds.

    Touches nothing but the message's bytes and headers, so it may run on a
    worker thread while mitmproxy waits for the hook.
    """
    body = decode_body(message, limit)
    return body, parse_request_json(body) if parse_json else None


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


class _RepeatedKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose keys are unique even ignoring case; the first repeat raises."""
    value = dict(pairs)
    if len(value) != len(pairs) or len({key.casefold() for key in value}) != len(value):
        seen: set[str] = set()
        for key, _ in pairs:
            if key.casefold() in seen:
                raise _RepeatedKey(key)
            seen.add(key.casefold())
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError("number is infinity when parsed as double")
    return value


def _integer(text: str) -> int | float:
    """Integers as orjson reads them: beyond 64 bits, a double."""
    value = int(text)
    return value if -(2**63) <= value < 2**64 else _finite_float(text)


_REQUEST_DECODER = json.JSONDecoder(
    object_pairs_hook=_unique_keys,
    parse_constant=_no_constant,
    parse_float=_finite_float,
    parse_int=_integer,
)


def parse_request_json(data: bytes) -> dict[str, Any] | None:
    """A client's JSON object body, parsed so that what the gateway checks is what Snowflake reads.

    See `parse_strict_json`; anything but an object is refused here.
    """
    value = parse_strict_json(data)
    if value is not None and not isinstance(value, dict):
        raise ProtocolError("body is JSON but not an object")
    return value


def parse_strict_json(data: bytes) -> Any:
    """Any JSON value a client sent (None for an empty body), read as strictly as an object body.

    An object that repeats a key (also in another case) is refused: the gateway's
    parser would keep one value and Snowflake's might keep the other, so a
    statement checked by the policy need not be the one that runs. NaN and
    Infinity, which are not JSON, are refused too. The stdlib's C scanner with a
    pairs hook costs about what orjson does on a bindings-heavy body (a hook call
    per object, none per array element); scripts/bench_policy.py measures it.
    A leading UTF-8 byte order mark is skipped, as Snowflake's parser (Jackson)
    and the recorder's redaction skip it; `SnowflakeTraffic` forwards such a
    body without it.
    """
    data = data.removeprefix(UTF8_BOM)
    if not data.strip():
        return None
    try:
        text = data.decode("utf-8")
        value = _REQUEST_DECODER.decode(text)
    except UnicodeDecodeError:
        raise ProtocolError("body is not valid JSON (not UTF-8)") from None
    except _RepeatedKey as exc:
        raise ProtocolError(
            f"body repeats the key {exc.key[:40]!a} in one object; each key may appear once"
        ) from None
    except RecursionError:
        raise ProtocolError("body is not valid JSON (nested too deeply)") from None
    except ValueError as exc:
        message = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise ProtocolError(f"body is not valid JSON ({message})") from None
    if "\\u" in text:
        try:
            orjson.loads(data)  # orjson's stricter escapes (lone surrogates) decide
        except orjson.JSONDecodeError as exc:
            raise ProtocolError(f"body is not valid JSON ({exc.msg})") from None
    return value


def write_json_body(message: http.Message, value: dict[str, Any]) -> None:
    """Replace the body, keeping the message's Content-Encoding (gzip stays gzip)."""
    data = orjson.dumps(value)
    encoding = header(message.headers, b"content-encoding").strip().lower()
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
    values = header_values(headers, b"authorization")
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


class Shape(StrEnum):
    """The error answers Snowflake's clients read, each in its own shape."""

    LOGIN = "login"
    """login-request: HTTP 200, `success: false`; drivers show `message`."""
    SESSION = "session"
    """Any authenticated call: a bad or expired session, a request not served."""
    QUERY = "query"
    """A statement's error on query-request; drivers raise ProgrammingError."""
    SQL_API = "sql_api"
    """SQL API v2 and the other bearer-token REST APIs: a real HTTP status, `code`, `message`."""


def shape_for(endpoint: Endpoint) -> Shape:
    """The shape a refusal of a request to `endpoint` takes unless the refusal says otherwise."""
    if endpoint is Endpoint.LOGIN:
        return Shape.LOGIN
    if endpoint is Endpoint.QUERY:
        return Shape.QUERY
    if endpoint in BEARER_ENDPOINTS:
        return Shape.SQL_API
    return Shape.SESSION


def error_response(
    shape: Shape,
    code: int,
    message: str,
    *,
    sql_state: str = "42000",
    sql_api_status: int = 400,
    status: int | None = None,
) -> http.Response:
    """The gateway's own error answer in `shape`.

    SQL API clients read the HTTP status (`sql_api_status`); the other clients
    read the body of an HTTP 200 and would retry a 5xx, so they get 200 unless
    `status` overrides it for every shape (a request not served at all: 404, 405).
    """
    if shape is Shape.LOGIN:
        return login_failure(code, message)
    if shape is Shape.QUERY:
        return query_failure(code, message, sql_state=sql_state)
    if shape is Shape.SQL_API:
        return sql_api_failure(status or sql_api_status, code, message)
    return session_failure(code, message, status or 200)


# --- streamed answers --------------------------------------------------------------------

STREAMED_ENCODINGS: Final = frozenset({"", "identity", "gzip", "x-gzip", "deflate", "br", "zstd"})
"""Content-Encodings a streamed answer is decoded from for its record (mitmproxy's own set)."""
_DECODED_PIECE = 256 * 1024


def carries_results(endpoint: Endpoint, method: str, path: str) -> bool:
    """Whether a request's answer may hold a result set: what the gateway may stream.

    Query requests, result fetches and SQL API statements (submit, status and
    partitions) do; logins, renewals and logouts never, as their answers are
    rewritten.
    """
    if endpoint in (Endpoint.QUERY, Endpoint.RESULT):
        return True
    if endpoint is Endpoint.SQL_API:
        return not path.partition("?")[0].rstrip("/").endswith("/cancel")
    return False


Sink = Callable[[bytes], None]


class _Decoder(Protocol):
    def feed(self, data: bytes, sink: Sink) -> None: ...

    def finish(self) -> None: ...


class _ZlibDecoder:
    """gzip and deflate, giving at most _DECODED_PIECE bytes at a time (a bomb stays bounded)."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        wbits = zlib.MAX_WBITS if encoding == "deflate" else zlib.MAX_WBITS | 16
        self._decompressor = zlib.decompressobj(wbits)

    def feed(self, data: bytes, sink: Sink) -> None:
        decompressor = self._decompressor
        pending = data
        while pending:
            piece = decompressor.decompress(pending, _DECODED_PIECE)
            if piece:
                sink(piece)
            pending = decompressor.unconsumed_tail
        if decompressor.unused_data:
            # a second gzip member would be read by the client but not by decode_body
            raise ProtocolError(f"trailing data after the {self.encoding} body")

    def finish(self) -> None:
        if not self._decompressor.eof:
            raise ProtocolError(f"truncated {self.encoding} body")


class _BrotliDecoder:
    def __init__(self) -> None:
        self._decompressor = brotli.Decompressor()

    def feed(self, data: bytes, sink: Sink) -> None:
        decompressor = self._decompressor
        piece = decompressor.process(data, output_buffer_limit=_DECODED_PIECE)
        while piece:
            sink(piece)
            if decompressor.is_finished():
                break
            piece = decompressor.process(b"", output_buffer_limit=_DECODED_PIECE)

    def finish(self) -> None:
        if not self._decompressor.is_finished():
            raise ProtocolError("truncated br body")


class _ZstdDecoder:
    """zstd through a stream writer, which hands its output on in bounded pieces."""

    def __init__(self) -> None:
        self._sink: Sink | None = None
        self._writer = zstandard.ZstdDecompressor().stream_writer(
            self, write_size=_DECODED_PIECE, closefd=False
        )

    def write(self, piece: bytes) -> int:
        """Where the stream writer puts decoded bytes."""
        assert self._sink is not None
        self._sink(bytes(piece))
        return len(piece)

    def feed(self, data: bytes, sink: Sink) -> None:
        self._sink = sink
        self._writer.write(data)

    def finish(self) -> None:
        """A cut frame shows as an outline that ended early."""


def stream_decoder(encoding: str) -> _Decoder | None:
    """A decoder for a body arriving in pieces under `encoding`; None for identity."""
    return _decoder(encoding)


def _decoder(encoding: str) -> _Decoder | None:
    if encoding in ("", "identity"):
        return None
    if encoding == "br":
        return _BrotliDecoder()
    if encoding == "zstd":
        return _ZstdDecoder()
    return _ZlibDecoder(encoding)


class _OverLimit(Exception):
    """The decoded body grew past the limit; decoding stops, the bytes still flow."""


class StreamedAnswer:
    """The pass-through mitmproxy calls with each chunk of an answer it streams to the client.

    Every chunk goes on unchanged. On the way it is counted and hashed (as sent
    and, for an encoded body, decoded, up to `decoded_limit` bytes), and a JSON
    body is outlined (recorder.outline.JsonOutline): what the record of the
    answer keeps instead of the body. It never raises: what it cannot decode
    or outline still reaches the client, and the record says what was not read.
    """

    def __init__(self, encoding: str, content_length: int, decoded_limit: int, json: bool) -> None:
        self.content_length = content_length
        self.decoded_limit = decoded_limit
        self.wire_size = 0
        self.size = 0
        self.undecodable: str | None = None
        self.outline = JsonOutline() if json else None
        self._decoder = _decoder(encoding)
        self._hash = hashlib.sha256()
        self._wire_hash = hashlib.sha256() if self._decoder is not None else None

    def __call__(self, chunk: bytes) -> bytes:
        if chunk:
            self.wire_size += len(chunk)
            if self._wire_hash is not None:
                self._wire_hash.update(chunk)
            if self.undecodable is None:
                self._read(chunk)
        return chunk

    def _read(self, chunk: bytes) -> None:
        try:
            if self._decoder is None:
                self._decoded(chunk)
            else:
                self._decoder.feed(chunk, self._decoded)
        except _OverLimit:
            self.undecodable = f"decoded body over the {self.decoded_limit}-byte limit"
        except Exception as exc:  # a body we cannot read still goes to the client
            self.undecodable = f"undecodable body: {exc}"[:200]

    def _decoded(self, piece: bytes) -> None:
        self.size += len(piece)
        if self.size > self.decoded_limit:
            raise _OverLimit
        self._hash.update(piece)
        if self.outline is not None:
            try:
                self.outline.feed(piece)
            except Exception:  # the outline serves the record; the answer must go on
                logger.exception("hoopgw: outlining a streamed answer failed")
                self.outline = None

    def finish(self) -> Any:
        """After the last chunk: the outline's value (a dict for Snowflake answers) or None."""
        if self._decoder is not None and self.undecodable is None:
            try:
                self._decoder.finish()
            except ProtocolError as exc:
                self.undecodable = f"undecodable body: {exc}"
        if self.outline is None or self.undecodable is not None:
            return None
        value = self.outline.close()
        if self.outline.problem is not None:
            logger.info("hoopgw: no outline of a streamed answer: %s", self.outline.problem)
        return value

    def facts(self, *, cut: bool = False) -> dict[str, Any]:
        """What the record says of the bytes: `size`, `sha256` (decoded), `wire_*` (as sent)."""
        facts: dict[str, Any] = {}
        if self.undecodable is None:
            facts["size"] = self.size
            facts["sha256"] = self._hash.hexdigest()
        else:
            facts["undecodable"] = self.undecodable
        if self._wire_hash is not None:
            facts["wire_size"] = self.wire_size
            facts["wire_sha256"] = self._wire_hash.hexdigest()
        if cut:
            facts["cut"] = True
            facts["content_length"] = self.content_length
        return facts

    @property
    def elided(self) -> dict[str, int]:
        return self.outline.elided if self.outline is not None else {}
