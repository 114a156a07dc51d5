"""Client connections: how long an anonymous client may hold one, and over what.

mitmproxy closes a client connection only after `tcp_timeout` (600 s) without
any byte in either direction, and not at all while a hook runs. A client that
sends one byte every few seconds, or that never finishes its request line, its
headers or its TLS handshake, therefore holds a connection (and its memory)
for as long as it likes; 1,500 of them were held for good. `ClientDeadlines`
gives every connection a deadline whenever the client owes the gateway
something, and none while the gateway waits for Snowflake.

mitmproxy reads a request's whole body before it sends an answer an addon
gives, up to one `body_size_limit` that bounds answers too. A request refused
from its head (its body over the request limit, or of unknown length) is
therefore answered and closed from its head instead (`answer_from_head`), so a
client with no token makes the gateway read no more than what is already in
flight. mitmproxy 12.2 can leave the socket of such a connection open when it
closes it while body data is arriving (the handler task is cancelled while it
waits to deliver that data, and skips its close); `ClientDeadlines` closes
every socket mitmproxy has let go.

mitmproxy also detects TLS per connection, so a gateway that serves HTTPS
still answers plain HTTP on the same port; a misconfigured driver would send
its ID token in clear and work. `RequireTls` refuses such requests.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Final

from mitmproxy import connection, ctx, exceptions, http
from mitmproxy.addonmanager import Loader
from mitmproxy.net.http import http1
from mitmproxy.utils import human

from hoopgw.addons import protocol
from hoopgw.addons.flowstate import state_of
from hoopgw.addons.names import TRANSPORT
from hoopgw.addons.refusals import refuse

logger = logging.getLogger(__name__)

_PROXY_SERVER_LOGGER: Final = "mitmproxy.proxy.server"
"""The mark `RequireTls` leaves in `state.passed`; FailClosed requires it."""


@dataclass(slots=True)
class _ClientConnection:
    """What the client of one connection still owes the gateway, and by when."""

    client: connection.Client
    opened: float
    in_flight: set[str] = field(default_factory=set)
    receiving: dict[str, float] = field(default_factory=dict)  # flow id -> body deadline
    served: int = 0
    idle_since: float = 0.0  # when its last answer was given
    timer: asyncio.TimerHandle | None = None
    timer_due: float = 0.0  # when `timer` fires, on the `time.monotonic` clock

    @property
    def address(self) -> str:
        peer = self.client.peername
        return str(peer[0]) if peer else "unknown"


@dataclass(frozen=True, slots=True)
class Deadline:
    """When a connection is closed unless its client does its part; `kind` is what it owes."""

    when: float
    kind: str  # "headers", "body" or "idle"; "limit" for the connection cap
    reason: str


class PartialHeadWithheld(logging.Filter):
    """Keeps a client's unfinished request head out of mitmproxy's log.

    When a connection closes before its request headers are complete,
    mitmproxy logs the bytes received so far, and those may be an
    `Authorization` header. Every connection the gateway cuts for being late
    with its headers would write one.
    """

    PREFIX: Final = "Client closed connection before completing request headers:"

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith(self.PREFIX):
            record.msg = f"{self.PREFIX} (the bytes received are not logged)"
            record.args = None
        return True


class ClientDeadlines:
    """Closes client connections on which the client is late; never while Snowflake answers.

    A connection is always in one of three phases:

    - waiting for a request (just opened, or idle after an answer): the client
      has `hoopgw_header_timeout` seconds from connecting (TLS handshake
      included) to deliver its first request's complete headers, and
      `hoopgw_idle_timeout` seconds after each answer to deliver the next one's;
    - receiving a request body: the client must keep up
      `hoopgw_min_body_rate` on average, after a grace of the header timeout;
    - a request in flight (being checked, upstream, or its answer on the way):
      no deadline from the gateway, so a long-running query is never cut.

    It also caps the connections one client address may hold at once
    (`hoopgw_max_client_connections`). A connection past its deadline is
    closed the way mitmproxy closes an inactive one (its handler task is
    cancelled), logged once and counted in `closed`.

    A connection has at most one timer, and it is moved only when a deadline
    comes due before it: a timer that fires early looks at the connection
    again and sets itself for its real deadline (or for none). So a busy
    keep-alive connection, whose body deadline moves later with each request,
    keeps the same timer for a header timeout's worth of requests instead of
    cancelling and creating one per hook.
    """

    def __init__(self) -> None:
        self.header_timeout = 30
        self.idle_timeout = 120
        self.min_body_rate = 16 * 1024
        self.max_client_connections = 512
        self.connections: dict[str, _ClientConnection] = {}
        self.per_address: collections.Counter[str] = collections.Counter()
        self.closed: collections.Counter[str] = collections.Counter()
        self._withheld = PartialHeadWithheld()

    def load(self, loader: Loader) -> None:
        logging.getLogger(_PROXY_SERVER_LOGGER).addFilter(self._withheld)
        loader.add_option(
            "hoopgw_header_timeout",
            int,
            self.header_timeout,
            """
            Seconds a client has, from opening a connection (TLS handshake
            included), to send a request's complete headers; also the grace
            period before `hoopgw_min_body_rate` applies to its body. A client
            still sending its request line or headers after that is
            disconnected. Drivers send a request's headers at once.
            """,
        )
        loader.add_option(
            "hoopgw_idle_timeout",
            int,
            self.idle_timeout,
            """
            Seconds a keep-alive connection may stay open after an answer until
            the client's next request headers are complete. Drivers open a new
            connection when an idle one was closed. The gateway never applies
            it while a request is in flight: a client waiting for Snowflake's
            answer is not idle.
            """,
        )
        loader.add_option(
            "hoopgw_min_body_rate",
            int,
            self.min_body_rate,
            """
            Lowest average rate, in bytes per second, at which a client must
            send a request body (after the `hoopgw_header_timeout` grace); the
            body's deadline is its Content-Length at this rate, or
            `hoopgw_request_limit` at this rate when its length is not declared.
            """,
        )
        loader.add_option(
            "hoopgw_max_client_connections",
            int,
            self.max_client_connections,
            """
            Most connections one client address may hold open at once; a further
            connection is closed as soon as it opens. A driver holds a handful.
            Behind a load balancer or NAT that hides client addresses, raise it
            (or set 0 to turn the cap off).
            """,
        )

    def configure(self, updated: set[str]) -> None:
        for name in ("hoopgw_header_timeout", "hoopgw_idle_timeout", "hoopgw_min_body_rate"):
            if name in updated and getattr(ctx.options, name) < 1:
                raise exceptions.OptionsError(
                    f"{name} must be at least 1, got {getattr(ctx.options, name)}"
                )
        if "hoopgw_max_client_connections" in updated and (
            ctx.options.hoopgw_max_client_connections < 0
        ):
            raise exceptions.OptionsError(
                "hoopgw_max_client_connections must be 0 (no cap) or more, "
                f"got {ctx.options.hoopgw_max_client_connections}"
            )
        self.header_timeout = ctx.options.hoopgw_header_timeout
        self.idle_timeout = ctx.options.hoopgw_idle_timeout
        self.min_body_rate = ctx.options.hoopgw_min_body_rate
        self.max_client_connections = ctx.options.hoopgw_max_client_connections

    def done(self) -> None:
        logging.getLogger(_PROXY_SERVER_LOGGER).removeFilter(self._withheld)

    def client_connected(self, client: connection.Client) -> None:
        tracked = _ClientConnection(client, time.monotonic())
        cap = self.max_client_connections
        if cap and self.per_address[tracked.address] >= cap:
            client.error = f"more than {cap} connections from {tracked.address}"
            self._count_closed(tracked, "limit", f"over {cap} connections from one address")
            return
        self.connections[client.id] = tracked
        self.per_address[tracked.address] += 1
        self._arm(tracked, tracked.opened + self.header_timeout)

    def client_disconnected(self, client: connection.Client) -> None:
        _close_left_open(client)
        tracked = self.connections.pop(client.id, None)
        if tracked is None:
            return
        if tracked.timer is not None:
            tracked.timer.cancel()
        self.per_address[tracked.address] -= 1
        if self.per_address[tracked.address] <= 0:
            del self.per_address[tracked.address]

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        tracked = self.connections.get(flow.client_conn.id)
        if tracked is None:
            return
        tracked.in_flight.add(flow.id)
        due = time.monotonic() + self._body_allowance(flow.request)
        tracked.receiving[flow.id] = due
        if tracked.timer is None or tracked.timer_due > due:
            self._arm(tracked, due)

    def request(self, flow: http.HTTPFlow) -> None:
        tracked = self.connections.get(flow.client_conn.id)
        if tracked is not None:
            # its deadline moves later (or goes): the timer, if any, looks again when it fires
            tracked.receiving.pop(flow.id, None)

    def response(self, flow: http.HTTPFlow) -> None:
        self._finished(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._finished(flow)

    def _finished(self, flow: http.HTTPFlow) -> None:
        tracked = self.connections.get(flow.client_conn.id)
        if tracked is None or flow.id not in tracked.in_flight:
            return
        tracked.in_flight.discard(flow.id)
        tracked.receiving.pop(flow.id, None)
        tracked.served += 1
        tracked.idle_since = now = time.monotonic()
        if not tracked.in_flight and (
            tracked.timer is None or tracked.timer_due > now + self.idle_timeout
        ):
            self._arm(tracked, now + self.idle_timeout)

    def _body_allowance(self, request: http.Request) -> float:
        declared, chunked = _framing(request.headers)
        if declared.isdigit():
            length = int(declared)
        elif chunked:
            length = getattr(ctx.options, "hoopgw_request_limit", 16 * 1024 * 1024)
        else:
            length = 0
        return self.header_timeout + length / self.min_body_rate

    def deadline(self, tracked: _ClientConnection, now: float) -> Deadline | None:
        """When the connection must be closed unless the client does its part, and why.

        `now` is when an idle connection went idle (its last answer).
        """
        if tracked.receiving:
            return Deadline(
                min(tracked.receiving.values()),
                "body",
                f"request body slower than {self.min_body_rate} bytes/s",
            )
        if tracked.in_flight:
            return None
        if tracked.served == 0:
            return Deadline(
                tracked.opened + self.header_timeout,
                "headers",
                f"no complete request headers within {self.header_timeout} s of connecting",
            )
        return Deadline(now + self.idle_timeout, "idle", f"idle for {self.idle_timeout} s")

    def _arm(self, tracked: _ClientConnection, due: float) -> None:
        """Fire the connection's timer at `due` (a `time.monotonic` instant) instead."""
        if tracked.timer is not None:
            tracked.timer.cancel()
            tracked.timer = None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no event loop (a flow replayed offline): nothing to close
        tracked.timer_due = due
        tracked.timer = loop.call_later(max(0.0, due - time.monotonic()), self._due, tracked)

    def _due(self, tracked: _ClientConnection) -> None:
        """The timer fired: close the connection if it is late, else wait for its deadline."""
        tracked.timer = None
        if self.connections.get(tracked.client.id) is not tracked:
            return
        deadline = self.deadline(tracked, tracked.idle_since)
        if deadline is None:
            return  # a request in flight: the answer sets the next deadline
        if deadline.when > time.monotonic():
            self._arm(tracked, deadline.when)
            return
        self._close(tracked, deadline)

    def _close(self, tracked: _ClientConnection, deadline: Deadline) -> None:
        io = _client_io(tracked.client)
        if io is None:
            return
        if io.handler is not None:
            io.handler.cancel(f"hoopgw: {deadline.reason}")
        elif io.writer is not None:
            io.writer.close()
        self._count_closed(tracked, deadline.kind, deadline.reason)

    def _count_closed(self, tracked: _ClientConnection, kind: str, reason: str) -> None:
        self.closed[kind] += 1
        logger.warning(
            "hoopgw: closed a client connection from %s: %s (%d closed so far)",
            tracked.address,
            reason,
            self.closed.total(),
        )


def _framing(headers: http.Headers) -> tuple[str, bool]:
    """`headers.get("content-length", "").strip()` and `"transfer-encoding" in headers`, from
    one pass over the raw fields (each of those lookups walks and decodes them all)."""
    declared: list[bytes] = []
    chunked = False
    for name, value in headers.fields:
        lowered = name.lower()
        if lowered == b"content-length":
            declared.append(value)
        elif lowered == b"transfer-encoding":
            chunked = True
    return b", ".join(declared).decode("utf-8", "surrogateescape").strip(), chunked


def _client_io(client: connection.Client) -> Any:
    """mitmproxy's reader, writer and handler task of a client connection, while it has them."""
    master = getattr(ctx, "master", None)
    proxyserver = master.addons.get("proxyserver") if master is not None else None
    handler = proxyserver.connections.get(client.id) if proxyserver else None
    return handler.transports.get(handler.client) if handler is not None else None


def _close_left_open(client: connection.Client) -> None:
    """Close the socket of a connection mitmproxy is done with but did not close."""
    io = _client_io(client)
    writer = io.writer if io is not None else None
    if writer is not None and not writer.is_closing():
        writer.close()
        logger.debug("hoopgw: closed a client socket mitmproxy left open")


def answer_from_head(flow: http.HTTPFlow) -> None:
    """Send the flow's answer before its body is read, and close the connection.

    The body is never read: the flow is killed, so mitmproxy stops reading
    and closes the connection. Over HTTP/1 the answer (with `Connection:
    close`) is written to the socket first, so a client that reads while it
    sends, or whose small body was already sent, reads the refusal; one
    still sending sees the connection close. Over HTTP/2 and HTTP/3 only the
    stream is reset: mitmproxy cannot answer a stream whose body is arriving.
    A request mitmproxy refuses itself after this hook (invalid framing, a
    body declared over `body_size_limit`) gets mitmproxy's answer alone.
    """
    if _refused_by_mitmproxy(flow):
        return
    response = flow.response
    if response is not None and not (flow.request.is_http2 or flow.request.is_http3):
        io = _client_io(flow.client_conn)
        writer = io.writer if io is not None else None
        if writer is not None and not writer.is_closing():
            response.headers["connection"] = "close"
            writer.write(http1.assemble_response(response))
    if flow.killable:
        flow.kill()


def _refused_by_mitmproxy(flow: http.HTTPFlow) -> bool:
    if flow.error is not None:
        return True  # it found the request invalid before the hook
    limit = human.parse_size(getattr(ctx.options, "body_size_limit", None))
    declared = flow.request.headers.get_all("content-length")
    return (
        limit is not None
        and len(declared) == 1
        and declared[0].strip().isdigit()
        and int(declared[0].strip()) > limit
    )


class ClientHttp1:
    """Offers clients HTTP/1.1 only, unless the operator asks for HTTP/2.

    Snowflake's drivers speak HTTP/1.1, where a body always announces itself in
    the head (Content-Length or chunked) and an unverified one is refused
    before it is read. An HTTP/2 head does not say whether DATA frames follow,
    so a GET with a body from a caller nobody verified would be read (up to
    `body_size_limit`) before its refusal.
    """

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "hoopgw_http2",
            bool,
            False,
            """
            Offer HTTP/2 to clients over TLS (ALPN). Off by default: Snowflake's
            drivers speak HTTP/1.1, and an HTTP/2 request's head does not say
            whether a body follows, so an unauthenticated GET could make the
            gateway read a body before refusing it. When off, the gateway turns
            mitmproxy's `http2` option off.
            """,
        )

    def configure(self, updated: set[str]) -> None:
        wanted = ctx.options.hoopgw_http2
        if updated & {"hoopgw_http2", "http2"} and not wanted and ctx.options.http2:
            ctx.options.http2 = False


REQUIRE_TLS_CHOICES: Final = ("auto", "on", "off")
PLAIN_HTTP_MESSAGE: Final = (
    "hoopgw refused the request: this gateway accepts only HTTPS; connect with "
    "protocol https. Anything this request carried in clear (an ID token, a session "
    "token, a password) must be treated as exposed: revoke or rotate it."
)


class RequireTls:
    """Refuses requests that reached a TLS-serving gateway over plain HTTP.

    The refusal is the gateway's own Snowflake-shaped answer (error 399001), so
    the driver shows why; the request never goes upstream and its body, which
    may hold an ID token in clear, is dropped before anything records it.
    """

    def __init__(self) -> None:
        self.required = False

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "hoopgw_require_tls",
            str,
            "auto",
            """
            Whether requests must arrive over TLS: `on`, `off`, or `auto` (the
            default), which means on whenever the gateway serves TLS, that is
            when mitmproxy's `certs` option is set. mitmproxy detects TLS per
            connection, so without this a client configured for plain HTTP
            would send its token in clear and still be served.
            """,
        )

    def configure(self, updated: set[str]) -> None:
        if not updated & {"hoopgw_require_tls", "certs"}:
            return
        value = ctx.options.hoopgw_require_tls
        if value not in REQUIRE_TLS_CHOICES:
            raise exceptions.OptionsError(
                f"hoopgw_require_tls must be one of {', '.join(REQUIRE_TLS_CHOICES)}, got {value!r}"
            )
        self.required = value == "on" or (value == "auto" and bool(ctx.options.certs))

    def refuses(self, flow: http.HTTPFlow) -> bool:
        return self.required and not flow.client_conn.tls_established

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Refuse before the body is parsed; mitmproxy still reads it, and `request` drops it."""
        state = state_of(flow)
        if state is None or not flow.live or not self.refuses(flow) or state.answered:
            return
        refuse(
            flow,
            state,
            protocol.CODE_GATEWAY_PROTOCOL,
            "plain HTTP on a gateway that requires TLS",
            TRANSPORT,
            message=PLAIN_HTTP_MESSAGE,
            sql_state="08001",
            sql_api_status=403,
        )

    def request(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None:
            return
        if self.refuses(flow):
            self.requestheaders(flow)
            state.request_body = b""
            state.request_json = None
            flow.request.raw_content = b""
        state.passed.add(TRANSPORT)
