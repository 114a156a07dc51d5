"""Snowflake traffic handling common to every flow: classify, bound and parse once.

The gateway forwards only what it understands. Before any other hook decides
on a request, this addon refuses (with a Snowflake-shaped answer the recorder
records as a refusal):

- paths that are not a Snowflake endpoint spelled the way the drivers spell
  it (404): an alias the upstream might normalise, such as a trailing `;x` or
  an encoded slash, must not carry a statement past the policy;
- methods the drivers do not use on that endpoint (405);
- request lines and headers that are not printable UTF-8 (a bare CR in a
  header is a line break to some servers), and absolute-form request targets;
- bodies that do not decode within `hoopgw_request_limit` (gzip bombs,
  invalid or trailing gzip data) and, on endpoints whose body the gateway
  reads, bodies that are not one JSON object.

A body declared over `hoopgw_request_limit`, or of unknown length (chunked
HTTP/1.1, an HTTP/2 or HTTP/3 POST without content-length), is refused from
the request's head (`protocol.refusal_from_head`) and never read: the refusal
is sent and the connection closed from the head (`transport.answer_from_head`).
Bodies within the limit are decoded and parsed on a worker thread when they
are larger than `_INLINE_BODY_BYTES`, so a large body costs the event loop
nothing but the wait.

It also leaves every later hook a bounded view of each body
(`state.request_body`, `state.response_body`), so no hook ever decompresses
an unbounded body through mitmproxy's `content`.

A successful answer on a result endpoint (query, result fetch, SQL API) whose
Content-Length is over `hoopgw_body_limit` is streamed to the client instead
of buffered: such a body would be cut in its record anyway, and buffering 32
of them at once is what made the gateway's memory grow. A
`protocol.StreamedAnswer` counts, hashes and outlines it on the way; its
outline then stands in for `state.response_json`. Errors, answers without a
Content-Length and small answers stay buffered, and so do logins and
renewals, whose answers the gateway rewrites.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mitmproxy import ctx, exceptions, http
from mitmproxy.addonmanager import Loader

from hoopgw.addons import protocol
from hoopgw.addons.flowstate import FlowState, attach, state_of
from hoopgw.addons.protocol import Endpoint, ProtocolError, Shape
from hoopgw.addons.refusals import refuse
from hoopgw.addons.transport import answer_from_head

logger = logging.getLogger(__name__)

# Endpoints whose request bodies the gateway must read before forwarding.
_JSON_REQUESTS = frozenset(
    {Endpoint.LOGIN, Endpoint.QUERY, Endpoint.TOKEN_REQUEST, Endpoint.ABORT}
    | (protocol.BEARER_ENDPOINTS - {Endpoint.MCP_SERVER})  # JSON-RPC batches: addons/mcp.py reads
)
# Endpoints whose responses carry tokens or statement outcomes.
_JSON_RESPONSES = frozenset(
    {
        Endpoint.LOGIN,
        Endpoint.QUERY,
        Endpoint.TOKEN_REQUEST,
        Endpoint.LOGOUT,
        Endpoint.SQL_API,
        Endpoint.MONITORING,
        Endpoint.RESULT,
        Endpoint.CORTEX_ANALYST,
        Endpoint.CORTEX_SEARCH,
    }
)
# Client credentials Snowflake never reads; they must not travel upstream.
_CLIENT_ONLY_HEADERS = ("cookie", "proxy-authorization")
_CLIENT_ONLY_FIELDS = frozenset(name.encode() for name in _CLIENT_ONLY_HEADERS)
_SOURCE = "protocol"
# Bodies up to this size are read on the event loop; decoding and parsing them takes microseconds.
_INLINE_BODY_BYTES = 64 * 1024
# Worker threads that decode and parse larger bodies: a bound on the CPU they take at once.
_BODY_READERS = 2


class SnowflakeTraffic:
    """Classifies each request, reads its JSON body once, and keeps mitmproxy in a safe mode.

    Request bodies must be whole before any hook decides on them (with
    `stream_large_bodies` a body would go upstream before `request` runs), and
    upstream connections are opened lazily so a refused client never causes one.
    mitmproxy buffers whole bodies in memory, so unless the operator sets
    `body_size_limit` the gateway sets it to the larger of its two limits.
    """

    def __init__(self) -> None:
        self.request_limit = 16 * 1024 * 1024
        self.response_limit = 512 * 1024 * 1024
        self._body_size_limit: str | None = None
        self._readers: ThreadPoolExecutor | None = None

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "hoopgw_request_limit",
            int,
            self.request_limit,
            """
            Largest decoded request body, in bytes, that the gateway accepts.
            Snowflake drivers upload large bind sets to a stage instead of
            sending them inline, so the default leaves ample room; a larger
            (or gzip-expanded) body is refused with a Snowflake-shaped error.
            """,
        )
        loader.add_option(
            "hoopgw_response_limit",
            int,
            self.response_limit,
            """
            Largest decoded response body, in bytes, that the gateway parses to
            translate tokens and record statement outcomes. Larger responses
            still reach the client (up to mitmproxy's body_size_limit, which
            the gateway sets to the larger of its two limits unless you set
            it); their record notes that they were not parsed.
            """,
        )

    def configure(self, updated: set[str]) -> None:
        if "hoopgw_request_limit" in updated:
            if ctx.options.hoopgw_request_limit < 1024:
                raise exceptions.OptionsError(
                    "hoopgw_request_limit must be at least 1024 bytes, "
                    f"got {ctx.options.hoopgw_request_limit}"
                )
            self.request_limit = ctx.options.hoopgw_request_limit
        if "hoopgw_response_limit" in updated:
            if ctx.options.hoopgw_response_limit < 1024:
                raise exceptions.OptionsError(
                    "hoopgw_response_limit must be at least 1024 bytes, "
                    f"got {ctx.options.hoopgw_response_limit}"
                )
            self.response_limit = ctx.options.hoopgw_response_limit
        if "stream_large_bodies" in updated and ctx.options.stream_large_bodies:
            raise exceptions.OptionsError(
                "stream_large_bodies must stay unset with hoopgw: a streamed request "
                "would reach Snowflake before it is authenticated and recorded"
            )
        if "connection_strategy" in updated and ctx.options.connection_strategy != "lazy":
            ctx.options.update(connection_strategy="lazy")
        if updated & {"hoopgw_request_limit", "hoopgw_response_limit", "body_size_limit"}:
            self._bound_buffered_bodies()

    def _bound_buffered_bodies(self) -> None:
        """Without body_size_limit one client could make mitmproxy buffer any amount."""
        current = ctx.options.body_size_limit
        if current is not None and current != self._body_size_limit:
            return  # the operator's choice
        wanted = str(max(self.request_limit, self.response_limit))
        if current != wanted:
            self._body_size_limit = wanted
            ctx.options.update(body_size_limit=wanted)

    def done(self) -> None:
        if self._readers is not None:
            self._readers.shutdown(wait=False, cancel_futures=True)
            self._readers = None

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if not flow.live:
            return
        flow.request.stream = False
        endpoint = protocol.classify(flow.request.path)
        state = attach(flow, FlowState(endpoint=endpoint))
        size = protocol.head_size(flow.request)
        if size > protocol.HEAD_LIMIT:
            reason = f"the request head is {size} bytes, over the {protocol.HEAD_LIMIT}-byte limit"
            _refuse_unserved(flow, state, 431, reason)
            answer_from_head(flow)
            return
        if protocol.stage_upload(endpoint, flow.request):
            return  # admitted or refused from its head by its ticket (addons/results.py)
        refusal = protocol.refusal_from_head(flow.request, self.request_limit)
        if refusal is not None:
            _refuse_malformed(flow, state, refusal)
            answer_from_head(flow)

    def request(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        """Check the request; a large body is read off the loop, by the coroutine returned."""
        state = state_of(flow)
        if state is None:
            return None
        request = flow.request
        # until the body is known to decode within bounds, later hooks see it as received
        state.request_body = request.raw_content or b""
        if state.answered or state.upload_streamed:
            return None
        if any(name.lower() in _CLIENT_ONLY_FIELDS for name, _ in request.headers.fields):
            for name in _CLIENT_ONLY_HEADERS:
                request.headers.pop(name, None)
        unreadable = protocol.unreadable_head(request.data.path, request.headers.fields)
        if unreadable:
            _escape_head(request)
        elif request.authority and not (request.is_http2 or request.is_http3):
            # absolute-form would travel upstream as sent, naming a host of the client's choice
            unreadable = "the request target must be a path, not an absolute URL"
        if state.endpoint is Endpoint.OTHER:
            _refuse_unserved(
                flow, state, 404, "the path is not a Snowflake endpoint this gateway serves"
            )
            return None
        allowed = protocol.allowed_methods(state.endpoint, request.path)
        # `request.method` is upper-cased by mitmproxy; upstream gets the bytes as sent
        method = protocol.printable(request.data.method)
        if method not in allowed:
            method = method[:24]
            reason = f"method {method} is not used on this endpoint (use {', '.join(allowed)})"
            _refuse_unserved(flow, state, 405, reason, allowed)
            return None
        if unreadable:
            _refuse_malformed(flow, state, unreadable)
            return None
        parse = state.endpoint in _JSON_REQUESTS
        if len(state.request_body) > _INLINE_BODY_BYTES:
            return self._read_off_loop(flow, state, parse)
        try:
            body, parsed = protocol.read_body(request, self.request_limit, parse)
        except ProtocolError as exc:
            _refuse_malformed(flow, state, str(exc))
            return None
        self._accept(flow, state, body, parsed)
        return None

    async def _read_off_loop(self, flow: http.HTTPFlow, state: FlowState, parse: bool) -> None:
        """Decode and parse a large body on a worker thread, at most `_BODY_READERS` at once."""
        if self._readers is None:
            self._readers = ThreadPoolExecutor(_BODY_READERS, thread_name_prefix="hoopgw-body")
        loop = asyncio.get_running_loop()
        try:
            body, parsed = await loop.run_in_executor(
                self._readers, protocol.read_body, flow.request, self.request_limit, parse
            )
        except ProtocolError as exc:
            _refuse_malformed(flow, state, str(exc))
            return
        self._accept(flow, state, body, parsed)

    def _accept(
        self, flow: http.HTTPFlow, state: FlowState, body: bytes, parsed: dict[str, Any] | None
    ) -> None:
        request = flow.request
        if parsed is not None and body.startswith(protocol.UTF8_BOM):
            # checked without the byte order mark, so it goes upstream without it
            body = body.removeprefix(protocol.UTF8_BOM)
            request.content = body
        state.request_body = body
        state.request_json = parsed
        if state.endpoint is Endpoint.LOGIN and state.request_json:
            data = state.request_json.get("data")
            if isinstance(data, dict):
                state.client_app = _text(data.get("CLIENT_APP_ID"))
                state.client_version = _text(data.get("CLIENT_APP_VERSION"))
        if state.client_app is None:
            agents = protocol.header_values(request.headers, b"user-agent")
            state.client_app = _text(", ".join(agents)) if agents else None

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        response = flow.response
        if state is None or response is None or state.answered or not flow.live:
            return
        if not 200 <= response.status_code < 300:
            return
        if not protocol.carries_results(state.endpoint, flow.request.method, flow.request.path):
            return
        length = _content_length(response)
        if length is None:
            return
        threshold = getattr(ctx.options, "hoopgw_body_limit", None)
        if threshold is None or length <= threshold:
            return
        encoding = protocol.header(response.headers, b"content-encoding").strip().lower()
        if encoding not in protocol.STREAMED_ENCODINGS:
            return
        media = protocol.header(response.headers, b"content-type").partition(";")[0].strip().lower()
        state.streamed = protocol.StreamedAnswer(
            encoding, length, self.response_limit, json="json" in media or not media
        )
        response.stream = state.streamed

    def response(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None or flow.response is None or state.answered:
            return
        if state.streamed is not None:
            outline = state.streamed.finish()
            state.response_json = outline if isinstance(outline, dict) else None
            return
        try:
            state.response_body = protocol.decode_body(flow.response, self.response_limit)
        except ProtocolError as exc:
            state.response_body = flow.response.raw_content or b""
            if state.endpoint in _JSON_RESPONSES:
                logger.warning("hoopgw: unreadable %s response: %s", state.endpoint, exc)
            return
        if state.endpoint not in _JSON_RESPONSES:
            return
        try:
            state.response_json = protocol.parse_json_object(state.response_body)
        except ProtocolError as exc:
            logger.warning("hoopgw: unreadable %s response: %s", state.endpoint, exc)


def _refuse_malformed(flow: http.HTTPFlow, state: FlowState, reason: str) -> None:
    refuse(flow, state, protocol.CODE_GATEWAY_PROTOCOL, reason, _SOURCE)


def _refuse_unserved(
    flow: http.HTTPFlow,
    state: FlowState,
    status: int,
    reason: str,
    allowed: frozenset[str] = frozenset(),
) -> None:
    """A request the gateway does not serve at all: the status is real for every client."""
    shape = Shape.SQL_API if state.endpoint in protocol.BEARER_ENDPOINTS else Shape.SESSION
    refuse(
        flow,
        state,
        protocol.CODE_GATEWAY_PROTOCOL,
        reason,
        _SOURCE,
        shape=shape,
        status=status,
        allow=allowed,
    )


def _escape_head(request: http.Request) -> None:
    """Escape a refused request's unreadable path and headers so its record can be written.

    The request goes nowhere; the record shows the offending bytes as `\\xNN`.
    """
    request.path = protocol.printable(request.data.path)
    request.headers = http.Headers(
        [
            (protocol.printable(name).encode(), protocol.printable(value).encode())
            for name, value in request.headers.fields
        ]
    )


def _content_length(response: http.Response) -> int | None:
    """The declared body size, or None when there is none (chunked) or it is not one number."""
    values = []
    for name, value in response.headers.fields:  # one pass: every answer comes by here
        name = name.lower()
        if name == b"transfer-encoding":
            return None
        if name == b"content-length":
            values.append(value.decode("utf-8", "surrogateescape"))
    if len(values) != 1:
        return None
    text = values[0].strip()
    return int(text) if text.isdigit() else None


def _text(value: object) -> str | None:
    return str(value)[:200] if value is not None else None
