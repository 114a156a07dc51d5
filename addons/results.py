"""The result path: every result chunk through the gateway, counted and hashed, no key handed out.

Snowflake answers a large result with its first chunk inline and the rest as
`data.chunks[].url`, pre-signed cloud-storage URLs the driver fetches itself
with the result key (`qrmk`, or `chunkHeaders`) as SSE-C headers. Passed on
as they are, the client holds the key and the gateway never sees those rows.

With `hoopgw_result_chunks=proxy` (the default) `ResultChunks` rewrites every
query and result answer: each chunk URL becomes a path of the gateway's own,
`/hoopgw/v1/chunks/<ticket>`, and `qrmk` and `chunkHeaders` are removed. The
ticket is sealed (AES-256-GCM under a key derived from the gateway's token
key, so any replica with that key opens it and no table is kept) and binds
the storage URL, the key headers, the hoopgw session, the query id, the
chunk's index and an expiry. The drivers fetch chunks with the chunk headers
only, never with their session token, so the ticket itself is the credential:
it is as secret as a session token, never written to a record (the answer's
record shows `hoopgw:chunk/<query>/<index>` instead), and a request that also
presents a gateway session token must present the ticket's session.

A chunk request whose ticket does not open, has expired, or comes with another
session's token is refused before anything reaches cloud storage. Otherwise
`ChunkFetch` (after `Recording`, so the request record never holds the storage
URL or key) points the request at the storage URL with the key headers,
streams the answer back without holding it whole, and writes a `chunk` record:
size as sent and decoded, SHA-256 of what the client got, rows, timing, and
the rows themselves within `hoopgw_body_limit`. The storage host is only ever
one an upstream answer named, sealed into a ticket: the gateway is no open
proxy. Every ticket also carries the result's columns, so that for a caller
with masking rules addons/masking.py buffers and masks the chunk instead of
letting it stream (`Admitted.buffered`). A first chunk large enough to be
streamed (addons/traffic.py) cannot be rewritten; if it carries a result key
the stream is cut before the key goes out.

Stage files on GCP come as pre-signed URLs too, and where the policy allows
stage transfers they are sealed the same way: a GET's `presignedUrls` into
download tickets, a PUT's `stageInfo.presignedUrl` into an upload ticket. An
upload is decided at `requestheaders`, before any of its body is read: its
ticket must open for this session and allow PUT, and its declared length be
within `hoopgw_upload_limit` (it is exempt from `hoopgw_request_limit`);
otherwise it is refused from the head with nothing sent to storage. Admitted,
`ChunkFetch` points it at the storage URL with only the headers storage needs
and streams the body through an `UploadTap` (counted, hashed, never kept);
the record is a `chunk` record with `direction: "upload"`.
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import hashlib
import logging
import os
import re
import time
import urllib.parse
import weakref
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from mitmproxy import ctx, exceptions, http
from mitmproxy.addonmanager import Loader

from hoopgw.addons import protocol
from hoopgw.addons.credentials import resolve_option_secret
from hoopgw.addons.egress import StorageEgress
from hoopgw.addons.flowstate import Caller, FlowState, state_of
from hoopgw.addons.names import AUTHENTICATION
from hoopgw.addons.protocol import CHUNK_PATH_PREFIX, Endpoint, Shape
from hoopgw.addons.refusals import refuse, replace_answer
from hoopgw.addons.session_tokens import SessionTokens, TokenError, decode_token_key
from hoopgw.addons.transport import answer_from_head
from hoopgw.recorder import coerce, redaction
from hoopgw.recorder.records import Client, milliseconds, new_record
from hoopgw.recorder.schema import RecordKind

logger = logging.getLogger(__name__)

SOURCE: Final = "results"
PROXY: Final = "proxy"
DIRECT: Final = "direct"
SSE_C_ALGORITHM: Final = "x-amz-server-side-encryption-customer-algorithm"
SSE_C_KEY: Final = "x-amz-server-side-encryption-customer-key"
_TICKET_VERSION: Final = b"\x01"
_TICKET_VERSION_COMPRESSED: Final = b"\x02"
"""v2: the payload is zlib-compressed before sealing (it carries the result's columns)."""
_KEY_ID_BYTES: Final = 6
_NONCE_BYTES: Final = 12
_AAD: Final = b"hoopgw chunk ticket v1"
_AAD_COMPRESSED: Final = b"hoopgw chunk ticket v2 zlib"
_PAYLOAD_LIMIT: Final = 1 << 20
TICKET_TEXT_LIMIT: Final = 12 * 1024
"""Longest ticket sealed with the result's columns; over it the columns are left out.

The router admits tickets of up to 16 KiB; a result wide enough to pass this
(several hundred columns) gets tickets without its columns, and a caller with
masking rules is then refused its chunks (addons/masking.py), never sent them unmasked.
"""
PROXIED_URL_PREFIX: Final = "hoopgw:chunk/"
_RESULT_ENDPOINTS: Final = frozenset({Endpoint.QUERY, Endpoint.RESULT})
STAGE_FILE: Final = "stage_file"
"""The `result_format` of a ticket for a stage file behind a pre-signed URL (GET on GCP)."""
STAGE_UPLOAD: Final = "stage_upload"
"""The `result_format` of a ticket for a stage file the client uploads (PUT on GCP)."""
UPLOAD: Final = "upload"
"""The `direction` of a chunk record for a stage upload."""
UPLOADED_URL_PREFIX: Final = "hoopgw:upload/"
DEFAULT_UPLOAD_LIMIT: Final = 5 * 1024**3
"""5 GiB, the largest object GCS takes in one PUT."""
STAGE_NOTE: Final = "hoopgw_stage_transfer"
"""The field the record of a PUT/GET answer gains when the client was handed stage keys."""
# What a PUT/GET answer carries that lets its holder reach the stage directly.
_STAGE_KEYS: Final = frozenset({"stageInfo", "encryptionMaterial", "presignedUrls"})
# What a chunk request may carry on to cloud storage besides the key headers.
_FORWARDED_HEADERS: Final = ("accept", "accept-encoding", "user-agent")
# What an upload carries on to cloud storage: how to read the object, and its metadata
# (the driver's digest and encryption data). Never a gateway token or an Authorization.
_UPLOAD_HEADERS: Final = frozenset(
    {"accept", "accept-encoding", "user-agent", "content-length", "content-type"}
    | {"content-encoding", "content-md5", "content-language", "content-disposition"}
    | {"cache-control"}
)
_UPLOAD_METADATA_PREFIX: Final = "x-goog-meta-"
# a key with a value that matters (a key string, a header, a chunk); in a rowset a
# string is followed by `,` or `]`, never by `:`, and a quote inside one is escaped
_KEY_MARKER: Final = re.compile(
    rb'"qrmk"\s*:\s*"|"chunkHeaders"\s*:\s*\{\s*"|"chunks"\s*:\s*\[\s*\{'
)
_MARKER_TAIL: Final = 64
_SCAN_PIECE: Final = 1 << 20


class TicketError(ValueError):
    """A chunk ticket the gateway did not seal, or that was altered; never carries its text."""


class UploadOverLimit(RuntimeError):
    """An upload sent more than its bound: the stream to storage is cut."""


@dataclass(frozen=True, slots=True)
class ChunkTicket:
    """What one rewritten chunk URL stands for."""

    url: str
    headers: dict[str, str]
    session_id: str
    query_id: str
    index: int
    count: int
    rows: int | None
    result_format: str | None
    expires_at: int
    caller: dict[str, Any] | None = None
    size: int | None = None
    columns: tuple[tuple[str | None, ...], ...] | None = None
    """The result's columns as masking reads them (name, type, database, schema, table)."""
    upload: bool = False
    """A stage file the client PUTs (GCS `stageInfo.presignedUrl`), not one it GETs."""

    def rowtype(self) -> list[dict[str, str | None]] | None:
        """`columns` in `data.rowtype`'s shape, for recorder.masking.mask_chunk."""
        if self.columns is None:
            return None
        return [dict(zip(_COLUMN_KEYS, column, strict=False)) for column in self.columns]

    def as_payload(self) -> dict[str, Any]:
        return {
            "u": self.url,
            "h": self.headers,
            "sid": self.session_id,
            "q": self.query_id,
            "i": self.index,
            "n": self.count,
            "r": self.rows,
            "f": self.result_format,
            "exp": self.expires_at,
            "c": self.caller,
            "z": self.size,
            "t": self.columns,
            "up": self.upload,
        }

    @classmethod
    def from_payload(cls, payload: Any) -> ChunkTicket:
        try:
            return cls(
                url=str(payload["u"]),
                headers={str(k): str(v) for k, v in payload["h"].items()},
                session_id=str(payload["sid"]),
                query_id=str(payload["q"]),
                index=int(payload["i"]),
                count=int(payload["n"]),
                rows=payload.get("r") if isinstance(payload.get("r"), int) else None,
                result_format=payload.get("f") if isinstance(payload.get("f"), str) else None,
                expires_at=int(payload["exp"]),
                caller=payload.get("c") if isinstance(payload.get("c"), dict) else None,
                size=payload.get("z") if isinstance(payload.get("z"), int) else None,
                columns=_columns_from_payload(payload.get("t")),
                upload=payload.get("up") is True,
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            raise TicketError("the chunk ticket's content is incomplete") from None


_COLUMN_KEYS: Final = ("name", "type", "database", "schema", "table")


def compact_columns(rowtype: object) -> tuple[tuple[str | None, ...], ...] | None:
    """What masking needs of `data.rowtype`, small enough to seal into each chunk's ticket."""
    if not isinstance(rowtype, list):
        return None
    columns = []
    for entry in rowtype:
        entry = entry if isinstance(entry, dict) else {}
        columns.append(
            tuple(
                value if isinstance(value, str) and value else None
                for value in (entry.get(key) for key in _COLUMN_KEYS)
            )
        )
    return tuple(columns)


def _columns_from_payload(value: object) -> tuple[tuple[str | None, ...], ...] | None:
    if not isinstance(value, list):
        return None
    return tuple(
        tuple(item if isinstance(item, str) else None for item in column)
        for column in value
        if isinstance(column, list)
    )


def _ticket_key(token_key: bytes) -> bytes:
    """A key of its own for tickets: a ticket never opens as a session token, nor the reverse."""
    return HKDF(hashes.SHA256(), 32, salt=None, info=b"hoopgw chunk tickets v1").derive(token_key)


class ChunkTickets:
    """Seals tickets with the current key; opens them with it or a previous one (rotation)."""

    def __init__(self, key: bytes, previous_keys: Sequence[bytes] = ()) -> None:
        self._keys: dict[bytes, AESGCM] = {}
        for material in (key, *previous_keys):
            derived = _ticket_key(material)
            kid = hashlib.sha256(derived).digest()[:_KEY_ID_BYTES]
            self._keys.setdefault(kid, AESGCM(derived))
        self._current = next(iter(self._keys))

    def seal(self, ticket: ChunkTicket) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        plaintext = zlib.compress(orjson.dumps(ticket.as_payload()), 9)
        sealed = self._keys[self._current].encrypt(nonce, plaintext, _AAD_COMPRESSED)
        raw = _TICKET_VERSION_COMPRESSED + self._current + nonce + sealed
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    def open(self, text: str) -> ChunkTicket:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except ValueError:
            raise TicketError("the chunk URL is malformed") from None
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != text:
            raise TicketError("the chunk URL is malformed")  # one spelling per ticket
        head = 1 + _KEY_ID_BYTES + _NONCE_BYTES
        version = raw[:1]
        if len(raw) <= head or version not in (_TICKET_VERSION, _TICKET_VERSION_COMPRESSED):
            raise TicketError("the chunk URL was not issued by hoopgw")
        aead = self._keys.get(raw[1 : 1 + _KEY_ID_BYTES])
        if aead is None:
            raise TicketError("the chunk URL was sealed with a key this gateway does not hold")
        try:
            compressed = version == _TICKET_VERSION_COMPRESSED
            aad = _AAD_COMPRESSED if compressed else _AAD
            plaintext = aead.decrypt(raw[1 + _KEY_ID_BYTES : head], raw[head:], aad)
            if compressed:
                # sealed by a gateway holding the key: authentic, yet bounded all the same
                inflate = zlib.decompressobj()
                plaintext = inflate.decompress(plaintext, _PAYLOAD_LIMIT)
                if inflate.unconsumed_tail or not inflate.eof:
                    raise TicketError("the chunk URL does not verify")
            payload = orjson.loads(plaintext)
        except (InvalidTag, orjson.JSONDecodeError, zlib.error):
            raise TicketError("the chunk URL does not verify") from None
        return ChunkTicket.from_payload(payload)


def chunk_key_headers(data: dict[str, Any]) -> dict[str, str]:
    """The headers a driver would send with each chunk: `chunkHeaders`, else SSE-C from `qrmk`."""
    headers = data.get("chunkHeaders")
    if isinstance(headers, dict) and headers:
        return {str(k): str(v) for k, v in headers.items()}
    qrmk = data.get("qrmk")
    if isinstance(qrmk, str) and qrmk:
        return {SSE_C_ALGORITHM: "AES256", SSE_C_KEY: qrmk}
    return {}


def withheld_url(query_id: str, index: int) -> str:
    """What a record shows for a rewritten chunk URL: which chunk, never the ticket."""
    return f"{PROXIED_URL_PREFIX}{query_id}/{index}"


def file_name_of(url: str) -> str | None:
    """The object's name in a storage URL (its last path segment), never its query (signature)."""
    name = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rpartition("/")[2])
    return protocol.printable(name.encode())[:200] or None


class ResultChunks:
    """Rewrites chunk URLs in answers and admits chunk requests by their sealed ticket."""

    def __init__(self) -> None:
        self.mode = PROXY
        self.lifetime = 6 * 3600
        self.public_url: str | None = None
        self.per_session = 8
        self.in_total = 64
        self.active: dict[str, int] = {}
        self.tickets = ChunkTickets(os.urandom(32))
        self.admitted: weakref.WeakKeyDictionary[http.HTTPFlow, Admitted] = (
            weakref.WeakKeyDictionary()
        )
        self.upload_limit = DEFAULT_UPLOAD_LIMIT
        # admitted stage uploads (PUT), apart from chunk downloads: masking never sees them
        self.uploads: weakref.WeakKeyDictionary[http.HTTPFlow, Admitted] = (
            weakref.WeakKeyDictionary()
        )
        # each rewritten answer's flow, so mitmweb can show how many of its chunks were fetched
        self.answers: weakref.WeakValueDictionary[tuple[str, str], http.HTTPFlow] = (
            weakref.WeakValueDictionary()
        )
        self._fetched: weakref.WeakKeyDictionary[http.HTTPFlow, set[int]] = (
            weakref.WeakKeyDictionary()
        )

    def chunk_fetched(self, ticket: ChunkTicket) -> None:
        """Note on the answer's flow (`metadata["hoopgw"]["chunks_fetched"]`) one more chunk."""
        answer = self.answers.get((ticket.session_id, ticket.query_id))
        if answer is None:
            return
        fetched = self._fetched.setdefault(answer, set())
        fetched.add(ticket.index)
        hoopgw = answer.metadata.get("hoopgw")
        if not isinstance(hoopgw, dict):
            hoopgw = answer.metadata["hoopgw"] = {}
        hoopgw["chunks_fetched"] = len(fetched)

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "hoopgw_result_chunks",
            str,
            PROXY,
            """
            How clients get the chunks of a large result. `proxy` (the default):
            the gateway rewrites each chunk URL to a sealed path of its own,
            removes the result key (qrmk, chunkHeaders) from the answer, fetches
            each chunk from cloud storage itself and records it. `direct`: the
            client gets Snowflake's pre-signed URLs and the result key and
            fetches chunks itself; the gateway sees only the first chunk.
            """,
            choices=(PROXY, DIRECT),
        )
        loader.add_option(
            "hoopgw_chunk_url_lifetime",
            int,
            self.lifetime,
            """
            Seconds a chunk URL the gateway hands out stays valid. The sealed URL
            is the credential for one chunk of one session (drivers fetch chunks
            without their session token); Snowflake's own URLs live about 6 h.
            """,
        )
        loader.add_option(
            "hoopgw_chunk_fetches_per_session",
            int,
            self.per_session,
            """
            Most result chunks the gateway fetches at once for one session; a
            request beyond it is answered 429 and the driver retries it. Chunks
            are streamed, so each fetch costs buffers, not the chunk's size;
            a caller with masking rules has each chunk buffered whole and masked.
            """,
        )
        loader.add_option(
            "hoopgw_chunk_fetches",
            int,
            self.in_total,
            """
            Most result chunks the gateway fetches at once over all sessions;
            a request beyond it is answered 429 and the driver retries it.
            """,
        )
        loader.add_option(
            "hoopgw_upload_limit",
            int,
            self.upload_limit,
            """
            Largest stage file, in bytes, a client may upload through the gateway
            (PUT on a GCP stage, `proxy` mode). The upload is checked from its
            declared Content-Length before any of it is read and counted while it
            streams to cloud storage; it is exempt from hoopgw_request_limit and
            never held in memory. The default, 5 GiB, is the most GCS takes in one
            PUT. mitmproxy's body_size_limit bounds every request too (the gateway
            sets it to the larger of its request and response limits unless you
            set it), so larger uploads also need a larger body_size_limit.
            """,
        )
        loader.add_option(
            "hoopgw_public_url",
            str | None,  # type: ignore[arg-type]
            None,
            """
            Base URL clients reach the gateway at (https://gateway.example.com),
            used to build the chunk URLs it hands out. Unset: the scheme, TLS
            server name (or listening address) and port the client connected to.
            """,
        )

    def configure(self, updated: set[str]) -> None:
        if "hoopgw_result_chunks" in updated:
            self.mode = ctx.options.hoopgw_result_chunks
        if "hoopgw_chunk_url_lifetime" in updated:
            if ctx.options.hoopgw_chunk_url_lifetime <= 0:
                raise exceptions.OptionsError(
                    "hoopgw_chunk_url_lifetime must be a positive number of seconds"
                )
            self.lifetime = ctx.options.hoopgw_chunk_url_lifetime
        for name in ("hoopgw_chunk_fetches_per_session", "hoopgw_chunk_fetches"):
            if name in updated and getattr(ctx.options, name) < 1:
                raise exceptions.OptionsError(f"{name} must be at least 1")
        if "hoopgw_upload_limit" in updated:
            if ctx.options.hoopgw_upload_limit < 0:
                raise exceptions.OptionsError("hoopgw_upload_limit must be 0 or more bytes")
            self.upload_limit = ctx.options.hoopgw_upload_limit
        if "hoopgw_chunk_fetches_per_session" in updated:
            self.per_session = ctx.options.hoopgw_chunk_fetches_per_session
        if "hoopgw_chunk_fetches" in updated:
            self.in_total = ctx.options.hoopgw_chunk_fetches
        if "hoopgw_public_url" in updated:
            url = ctx.options.hoopgw_public_url
            if url and urllib.parse.urlsplit(url).scheme not in ("http", "https"):
                raise exceptions.OptionsError("hoopgw_public_url must be an http(s) URL")
            self.public_url = url.rstrip("/") if url else None
        if updated & {"hoopgw_token_key", "hoopgw_token_previous_keys"}:
            self._configure_keys()

    def _configure_keys(self) -> None:
        """The token key (addons/session_tokens.py) also keys tickets, so replicas share them."""
        ref = getattr(ctx.options, "hoopgw_token_key", None)
        if not ref:
            self.tickets = ChunkTickets(os.urandom(32))
            return
        previous = [
            _read_key("hoopgw_token_previous_keys", item)
            for item in ctx.options.hoopgw_token_previous_keys
            if item.strip()
        ]
        key = _read_key("hoopgw_token_key", ref)
        self.tickets = ChunkTickets(key, previous)

    # chunk requests

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """A stage upload is admitted or refused from its head: its body goes on as it arrives."""
        state = state_of(flow)
        if state is None or state.answered or not flow.live:
            return
        if not protocol.stage_upload(state.endpoint, flow.request):
            return
        self._admit_upload(flow, state)
        if state.answered:
            answer_from_head(flow)  # nothing of the body is read, nothing reaches storage

    def _admit_upload(self, flow: http.HTTPFlow, state: FlowState) -> None:
        request = flow.request
        ticket = self._open_ticket(flow, state)
        if ticket is None:
            return
        if not ticket.upload:
            _refuse(flow, state, "the URL is for a download (GET), not an upload")
            return
        unreadable = protocol.unreadable_head(request.data.path, request.headers.fields)
        if unreadable is None and request.authority and not (request.is_http2 or request.is_http3):
            unreadable = "the request target must be a path, not an absolute URL"
        declared = request.headers.get_all("content-length")
        size = int(declared[0]) if len(declared) == 1 and declared[0].isdigit() else None
        if unreadable is None and size is not None and size > self.upload_limit:
            reason = f"the upload of {size} bytes is over hoopgw_upload_limit ({self.upload_limit})"
            _refuse(flow, state, reason, status=413)
            return
        unreadable = unreadable or protocol.refusal_from_head(request, self.upload_limit)
        if unreadable is not None:
            _refuse(flow, state, unreadable, status=400)
            return
        if not self._take_slot(flow, state, ticket):
            return
        self.uploads[flow] = Admitted(ticket, time.time())
        state.upload_streamed = True
        state.passed.add(AUTHENTICATION)

    def request(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None or state.answered or state.endpoint is not Endpoint.CHUNK:
            return
        if state.upload_streamed:
            return  # admitted at its head, already on its way to storage
        ticket = self._open_ticket(flow, state)
        if ticket is None:
            return
        if ticket.upload:
            _refuse(flow, state, "the URL is for an upload (PUT), not a download")
            return
        if not self._take_slot(flow, state, ticket):
            return
        self.admitted[flow] = Admitted(ticket, time.time())
        state.passed.add(AUTHENTICATION)

    def _open_ticket(self, flow: http.HTTPFlow, state: FlowState) -> ChunkTicket | None:
        """The request's ticket when it opens, is current and fits the session; else refused."""
        route, mark, query = flow.request.path.partition("?")
        ticket_text = route.removeprefix(CHUNK_PATH_PREFIX)
        # the record shows which chunk, never the ticket (it is the chunk's credential)
        flow.request.path = f"{CHUNK_PATH_PREFIX}sealed{mark}{query}"
        if self.mode != PROXY:
            _refuse(flow, state, "the gateway does not proxy result chunks (direct mode)")
            return None
        try:
            ticket = self.tickets.open(ticket_text)
        except TicketError as exc:
            _refuse(flow, state, str(exc))
            return None
        flow.request.path = f"{CHUNK_PATH_PREFIX}{ticket.query_id}/{ticket.index}{mark}{query}"
        state.session_id = ticket.session_id
        if ticket.caller is not None:
            state.caller = _caller(ticket.caller)
        if time.time() >= ticket.expires_at:
            what = "upload" if ticket.upload else "chunk"
            _refuse(flow, state, f"the {what} URL has expired; run the query again")
            return None
        tokens = _session_tokens()
        if tokens is not None and tokens.revoked.is_revoked(ticket.session_id):
            _refuse(flow, state, "the chunk URL belongs to a session that has logged out")
            return None
        presented = protocol.session_token_from(flow.request.headers)
        if presented is not None:
            try:
                if tokens is None:
                    raise TokenError("no session tokens to open it with")
                session = tokens.sealer.open(presented)
            except TokenError:
                _refuse(flow, state, "the chunk request carries a token hoopgw did not issue")
                return None
            if session.session_id != ticket.session_id:
                _refuse(flow, state, "the chunk URL belongs to another session")
                return None
        return ticket

    def _take_slot(self, flow: http.HTTPFlow, state: FlowState, ticket: ChunkTicket) -> bool:
        """One more transfer of the session, within `hoopgw_chunk_fetches(_per_session)`."""
        if (
            sum(self.active.values()) >= self.in_total
            or self.active.get(ticket.session_id, 0) >= self.per_session
        ):
            _refuse(flow, state, "too many chunk downloads at once; retry", status=429)
            return False
        self.active[ticket.session_id] = self.active.get(ticket.session_id, 0) + 1
        return True

    def release(self, admitted: Admitted) -> None:
        """One chunk download of the session is over, whichever way it ended."""
        left = self.active.get(admitted.ticket.session_id, 0) - 1
        if left > 0:
            self.active[admitted.ticket.session_id] = left
        else:
            self.active.pop(admitted.ticket.session_id, None)

    # answers that carry chunk URLs

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if (
            state is None
            or state.streamed is None
            or self.mode != PROXY
            or state.endpoint not in _RESULT_ENDPOINTS
            or flow.response is None
        ):
            return
        encoding = flow.response.headers.get("content-encoding", "").strip().lower()
        flow.response.stream = KeyGuard(state.streamed, encoding)

    def response(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if (
            state is None
            or state.endpoint not in _RESULT_ENDPOINTS
            or state.answered
            or state.streamed is not None
            or flow.response is None
        ):
            return
        payload = state.answer_for_client()
        data = payload.get("data") if isinstance(payload, dict) else None
        if payload is None and self.mode == PROXY:
            self._unread_answer(flow, state)
            return
        if not isinstance(data, dict):
            return
        if _STAGE_KEYS.intersection(data):
            self._stage_answer(flow, state)
            return
        if self.mode != PROXY or not ("chunks" in data or "qrmk" in data or "chunkHeaders" in data):
            return
        assert payload is not None
        headers = chunk_key_headers(data)
        chunks = data.get("chunks")
        chunks = chunks if isinstance(chunks, list) else []
        query_id = str(data.get("queryId") or "")
        result_format = data.get("queryResultFormat")
        base = self._base_url(flow)
        expires_at = int(time.time()) + self.lifetime
        caller = state.caller.as_record() if state.caller is not None else None
        columns = compact_columns(data.get("rowtype"))
        withheld = orjson.loads(orjson.dumps(state.response_json))  # the record's copy
        for index, chunk in enumerate(chunks):
            if not isinstance(chunk, dict) or not _storage_url(chunk.get("url")):
                continue
            ticket = ChunkTicket(
                url=chunk["url"],
                headers=headers,
                session_id=state.session_id or "",
                query_id=query_id,
                index=index,
                count=len(chunks),
                rows=coerce.integer(chunk.get("rowCount")),
                size=coerce.integer(chunk.get("uncompressedSize")),
                result_format=result_format if isinstance(result_format, str) else None,
                expires_at=expires_at,
                caller=caller,
                columns=columns,
            )
            sealed = self.tickets.seal(ticket)
            if len(sealed) > TICKET_TEXT_LIMIT:
                sealed = self.tickets.seal(dataclasses.replace(ticket, columns=None))
            chunk["url"] = f"{base}{CHUNK_PATH_PREFIX}{sealed}"
            withheld["data"]["chunks"][index]["url"] = withheld_url(query_id, index)
        for name in ("qrmk", "chunkHeaders"):
            data.pop(name, None)
            withheld["data"].pop(name, None)
        state.send_to_client(flow, payload)
        if chunks:
            self.answers[(state.session_id or "", query_id)] = flow
        state.response_json = withheld
        state.response_body = orjson.dumps(withheld)

    @staticmethod
    def _unread_answer(flow: http.HTTPFlow, state: FlowState) -> None:
        """An answer too large (or too odd) to parse cannot be rewritten: never pass a key on."""
        response = flow.response
        assert response is not None
        encoding = response.headers.get("content-encoding", "").strip().lower()
        if not 200 <= response.status_code < 300 or not response.raw_content:
            return
        if carries_result_key(response.raw_content, encoding):
            replace_answer(
                flow,
                state,
                Shape.QUERY,
                protocol.CODE_GATEWAY_INTERNAL,
                "hoopgw could not read this result answer to take its result key out "
                "(over hoopgw_response_limit?); it was withheld",
            )

    def _stage_answer(self, flow: http.HTTPFlow, state: FlowState) -> None:
        """A PUT/GET answer carries temporary cloud keys: handed out only where policy allows.

        Guardrails refuses PUT and GET it recognises before they run; this is the
        check on what actually comes back, whatever statement asked for it. Where
        it is allowed and Snowflake answers a GET with `presignedUrls` (stages on
        GCP), each URL is sealed like a chunk URL in `proxy` mode: the client
        downloads each file through the gateway, which records its size and hash.
        """
        guardrails = ctx.master.addons.get("guardrails")
        policy = getattr(guardrails, "policy", None)
        groups = state.caller.groups if state.caller is not None else ()
        if policy is not None and policy.allows_stage_transfer(groups):
            # the record's copy says so; its `creds` are redacted like every secret
            noted = orjson.loads(orjson.dumps(state.response_json))
            noted["data"][STAGE_NOTE] = "temporary stage credentials handed out"
            if self.mode == PROXY:
                self._seal_presigned_urls(flow, state, noted)
            state.response_json = noted
            state.response_body = orjson.dumps(noted)
            return
        reason = (
            "the answer hands out stage credentials (PUT/GET) and no policy rule for your "
            "groups sets allow_stage_transfer"
        )
        replace_answer(
            flow,
            state,
            Shape.QUERY,
            protocol.CODE_GATEWAY_POLICY,
            f"Statement refused by hoopgw policy: {reason}.",
        )

    def _seal_presigned_urls(
        self, flow: http.HTTPFlow, state: FlowState, noted: dict[str, Any]
    ) -> None:
        """Pre-signed URLs (stages on GCP) become sealed gateway URLs, as chunk URLs do.

        A GET's `presignedUrls` are files to download; a PUT's
        `stageInfo.presignedUrl` is the one URL its file is uploaded to (the
        driver runs the PUT again for each file). Each is sealed into a ticket
        that allows GET, or PUT for an upload; the record's copy names the file
        by query and index, never the storage URL or its signature.
        """
        payload = state.answer_for_client()
        data = payload.get("data") if isinstance(payload, dict) else None
        if payload is None or not isinstance(data, dict):
            return
        urls = data.get("presignedUrls")
        urls = urls if isinstance(urls, list) else []
        stage = data.get("stageInfo")
        single = stage.get("presignedUrl") if isinstance(stage, dict) else None
        if not urls and not _storage_url(single):
            return
        query_id = str(data.get("queryId") or "")
        upload = str(data.get("command") or "").upper() == "UPLOAD"
        base = self._base_url(flow)
        caller = state.caller.as_record() if state.caller is not None else None
        template = ChunkTicket(
            url="",
            headers={},
            session_id=state.session_id or "",
            query_id=query_id,
            index=0,
            count=len(urls),
            rows=None,
            result_format=STAGE_FILE,
            expires_at=int(time.time()) + self.lifetime,
            caller=caller,
        )
        recorded = list(urls)
        for index, url in enumerate(urls):
            if not _storage_url(url):
                continue
            ticket = dataclasses.replace(template, url=url, index=index)
            urls[index] = f"{base}{CHUNK_PATH_PREFIX}{self.tickets.seal(ticket)}"
            recorded[index] = withheld_url(query_id, index)
        if urls:
            noted["data"]["presignedUrls"] = recorded
        if isinstance(stage, dict) and _storage_url(single):
            ticket = dataclasses.replace(
                template,
                url=str(single),
                count=1,
                upload=upload,
                result_format=STAGE_UPLOAD if upload else STAGE_FILE,
            )
            stage["presignedUrl"] = f"{base}{CHUNK_PATH_PREFIX}{self.tickets.seal(ticket)}"
            prefix = UPLOADED_URL_PREFIX if upload else PROXIED_URL_PREFIX
            noted["data"]["stageInfo"]["presignedUrl"] = f"{prefix}{query_id}/0"
        noted["data"][STAGE_NOTE] = (
            "temporary stage credentials handed out; stage files through the gateway"
        )
        state.send_to_client(flow, payload)

    def error(self, flow: http.HTTPFlow) -> None:
        """An upload that broke off: its flow shows the gateway's path before anyone records it."""
        admitted = self.uploads.get(flow)
        if admitted is not None:
            _restore(flow, admitted)

    def _base_url(self, flow: http.HTTPFlow) -> str:
        if self.public_url:
            return self.public_url
        client = flow.client_conn
        scheme = "https" if client.tls_established else "http"
        host, port = client.sockname[0], client.sockname[1]
        if client.sni:
            host = client.sni
        elif ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{port}"


@dataclass(slots=True)
class Admitted:
    """A chunk request whose ticket opened: what to fetch, and since when."""

    ticket: ChunkTicket
    started: float
    original: tuple[str, str, int, str, http.Headers] | None = None
    tap: ChunkTap | None = None
    buffered: bool = False
    """The caller has masking rules: the chunk is buffered and masked (addons/masking.py)."""
    detections: list[dict[str, Any]] | None = None
    withheld: str | None = None
    """Why the chunk was withheld from the caller (masking), when it was."""
    sent: UploadTap | None = None
    """An upload's body on its way to storage: counted and hashed."""

    def remember(self, request: http.Request) -> None:
        """Where the request was addressed before it is pointed at storage (`_restore`)."""
        self.original = (
            request.scheme,
            request.host,
            request.port,
            request.path,
            request.headers.copy(),
        )


class ChunkFetch:
    """Fetches an admitted chunk from cloud storage, streams it back and records it.

    It runs after `Recording`, so the request record shows the gateway's path
    and no key; the flow is pointed back at that path once the answer is in.
    """

    def __init__(self, chunks: ResultChunks, egress: StorageEgress | None = None) -> None:
        self.chunks = chunks
        self.egress = egress or StorageEgress()

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """An admitted upload goes to its storage URL now, its body streamed as it arrives."""
        state = state_of(flow)
        admitted = self.chunks.uploads.get(flow)
        if state is None or admitted is None or state.answered or not flow.live:
            return
        request = flow.request
        admitted.remember(request)
        kept = [
            (name, value)
            for name, value in request.headers.items(multi=True)
            if name.lower() in _UPLOAD_HEADERS or name.lower().startswith(_UPLOAD_METADATA_PREFIX)
        ]
        request.url = admitted.ticket.url
        authority = urllib.parse.urlsplit(admitted.ticket.url).netloc.rpartition("@")[2]
        request.headers = http.Headers(host=authority)
        for name, value in kept:
            request.headers.add(name, value)
        self.egress.route(flow)
        declared = request.headers.get("content-length", "0").strip()
        admitted.sent = UploadTap(
            self.chunks.upload_limit,
            int(declared) if declared.isdigit() else 0,
            lambda: _restore(flow, admitted),
        )
        request.stream = admitted.sent

    def request(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        admitted = self.chunks.admitted.get(flow)
        if state is None or admitted is None or state.answered:
            return
        request = flow.request
        admitted.remember(request)
        kept = [(name, request.headers.get(name)) for name in _FORWARDED_HEADERS]
        request.url = admitted.ticket.url
        # exactly the URL's authority: a pre-signed URL's signature covers the Host header
        authority = urllib.parse.urlsplit(admitted.ticket.url).netloc.rpartition("@")[2]
        request.headers = http.Headers(host=authority)
        for name, value in kept:
            if value is not None:
                request.headers[name] = value
        for name, value in admitted.ticket.headers.items():
            request.headers[name] = value
        self.egress.route(flow)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        admitted = self.chunks.admitted.get(flow)
        response = flow.response
        if admitted is None or response is None or response.status_code != 200:
            return
        if admitted.buffered:
            return  # masked whole by addons/masking.py, which taps what the client gets
        encoding = response.headers.get("content-encoding", "").strip().lower()
        admitted.tap = ChunkTap(encoding, _body_limit(), admitted.ticket.size)
        response.stream = admitted.tap

    def response(self, flow: http.HTTPFlow) -> None:
        upload = self.chunks.uploads.pop(flow, None)
        if upload is not None:
            self.chunks.release(upload)
            _restore(flow, upload)
            status = flow.response.status_code if flow.response is not None else None
            ok = status is not None and 200 <= status < 300
            self._record_upload(
                flow, upload, status, None if ok else f"cloud storage answered HTTP {status}"
            )
            return
        admitted = self.chunks.admitted.pop(flow, None)
        if admitted is None:
            return
        self.chunks.release(admitted)
        if admitted.original is None:
            return  # refused by a later addon: nothing was fetched
        _restore(flow, admitted)
        if admitted.withheld is not None:
            self._record(flow, admitted, 200, f"withheld by hoopgw: {admitted.withheld}")
            return
        status = flow.response.status_code if flow.response is not None else None
        error = None if status == 200 else f"cloud storage answered HTTP {status}"
        self._record(flow, admitted, status, error)

    def error(self, flow: http.HTTPFlow) -> None:
        upload = self.chunks.uploads.pop(flow, None)
        if upload is not None:
            self.chunks.release(upload)
            _restore(flow, upload)
            status = flow.response.status_code if flow.response is not None else None
            reason = str(flow.error.msg) if flow.error else "unknown"
            self._record_upload(flow, upload, status, f"the upload did not complete: {reason}")
            return
        admitted = self.chunks.admitted.pop(flow, None)
        if admitted is None:
            return
        self.chunks.release(admitted)
        _restore(flow, admitted)
        status = flow.response.status_code if flow.response is not None else None
        reason = str(flow.error.msg) if flow.error else "unknown"
        self._record(flow, admitted, status, f"the chunk did not reach the client: {reason}")

    def _record(
        self, flow: http.HTTPFlow, admitted: Admitted, status: int | None, error: str | None
    ) -> None:
        ticket = admitted.ticket
        tap = admitted.tap
        fields = _transfer_fields(flow, admitted, status)
        fields["rows"] = ticket.rows
        fields["complete"] = error is None and tap is not None and tap.undecodable is None
        if tap is not None:
            fields.update(tap.facts(ticket.result_format))
        if admitted.detections is not None:
            fields["detections"] = admitted.detections
        if fields["complete"]:
            self.chunks.chunk_fetched(ticket)
        if error is not None:
            fields["error"] = error
        elif tap is not None and tap.undecodable is not None:
            fields["error"] = tap.undecodable
        _append(
            flow,
            new_record(RecordKind.CHUNK, ticket.session_id, _client(flow), ticket.caller, **fields),
        )

    def _record_upload(
        self, flow: http.HTTPFlow, admitted: Admitted, status: int | None, error: str | None
    ) -> None:
        """The `chunk` record of an upload: what went to storage, and what storage said."""
        ticket = admitted.ticket
        sent = admitted.sent
        fields = _transfer_fields(flow, admitted, status)
        fields["direction"] = UPLOAD
        fields["file_name"] = file_name_of(ticket.url)
        complete = error is None and sent is not None and sent.ended
        if sent is not None:
            fields["wire_size"] = sent.size
            fields["declared_size"] = sent.declared
            fields["sha256"] = sent.hexdigest()
            fields["body"] = {"size": sent.size, "omitted": "stage upload"}
            if sent.ended and sent.size != sent.declared:
                complete = False
                error = error or f"sent {sent.size} of {sent.declared} declared bytes"
        fields["complete"] = complete
        if error is not None:
            fields["error"] = error
        elif not complete:
            fields["error"] = "the upload did not complete"
        if complete:
            self.chunks.chunk_fetched(ticket)
        _append(
            flow,
            new_record(RecordKind.CHUNK, ticket.session_id, _client(flow), ticket.caller, **fields),
        )


def _transfer_fields(flow: http.HTTPFlow, admitted: Admitted, status: int | None) -> dict[str, Any]:
    """What every `chunk` record says of a transfer: which one, how it ended, how long it took."""
    ticket = admitted.ticket
    return {
        "flow_id": flow.id,
        "query_id": ticket.query_id,
        "chunk_index": ticket.index,
        "chunk_count": ticket.count,
        "result_format": ticket.result_format,
        "status": status,
        "duration_ms": milliseconds(admitted.started, time.time()),
    }


def _client(flow: http.HTTPFlow) -> Client:
    state = state_of(flow)
    return Client(
        address=_peer(flow),
        application=state.client_app if state else None,
        version=state.client_version if state else None,
    )


def _append(flow: http.HTTPFlow, record: dict[str, Any]) -> None:
    """Hand a chunk record to the spool, which makes it durable soon after."""
    recording = ctx.master.addons.get("recording")
    spool = getattr(recording, "spool", None)
    if spool is None:
        logger.error("hoopgw: no spool; the chunk record of %s is lost", flow.id)
        return
    try:
        spool.append_eventually(record)
    except Exception as exc:
        logger.error("hoopgw: a chunk record could not be written: %s", exc)


class UploadTap:
    """The pass-through an upload streams through to storage: counted, hashed, bounded.

    Each piece goes on unchanged; nothing is kept. More than `limit` bytes
    (which the declared length already keeps within) cuts the stream. At its
    end `finished` runs, before the request hooks: it points the flow back at
    the gateway's path, so no record of it shows the storage URL.
    """

    def __init__(self, limit: int, declared: int, finished: Callable[[], None]) -> None:
        self.limit = limit
        self.declared = declared
        self.size = 0
        self.ended = False
        self._hash = hashlib.sha256()
        self._finished = finished

    def __call__(self, piece: bytes) -> bytes:
        if not piece:
            if not self.ended:
                self.ended = True
                self._finished()
            return piece
        self.size += len(piece)
        if self.size > self.limit:
            raise UploadOverLimit(f"the upload is over hoopgw_upload_limit ({self.limit} bytes)")
        self._hash.update(piece)
        return piece

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class ChunkTap:
    """The pass-through a chunk streams through: hashed as sent, its rows kept within the limit.

    Each piece goes on unchanged and is hashed. It is decoded only while its
    rows may still be kept (`hoopgw_body_limit`): a chunk the answer declared
    larger is never decoded, so a 160 MB chunk costs a hash, not an inflate,
    and its record gives the declared size.
    """

    def __init__(self, encoding: str, limit: int, declared_size: int | None = None) -> None:
        self.limit = limit
        self.declared_size = declared_size
        self.wire_size = 0
        self.size = 0
        self.undecodable: str | None = None
        self._hash = hashlib.sha256()
        over = declared_size is not None and declared_size > limit
        self._kept: list[bytes] | None = None if over else []
        self._inflate: Any = None
        self._encoding = encoding
        self._sniffed = False

    def __call__(self, piece: bytes) -> bytes:
        if not piece:
            return piece
        self.wire_size += len(piece)
        self._hash.update(piece)
        if self._kept is not None and self.undecodable is None:
            try:
                self._decode(piece)
            except zlib.error as exc:
                self.undecodable = f"undecodable chunk: {exc}"[:200]
        return piece

    def _decode(self, piece: bytes) -> None:
        if not self._sniffed:
            self._sniffed = True
            gzipped = self._encoding in ("gzip", "x-gzip") or (
                self._encoding in ("", "identity") and piece[:2] == b"\x1f\x8b"
            )
            if gzipped:
                self._inflate = zlib.decompressobj(zlib.MAX_WBITS | 16)
            elif self._encoding == "deflate":
                self._inflate = zlib.decompressobj()
            elif self._encoding not in ("", "identity"):
                self.undecodable = f"chunk in {self._encoding!r} encoding not decoded"
                return
        room = self.limit - self.size + 1
        if self._inflate is not None:
            decoded = self._inflate.decompress(piece, room)
        else:
            decoded = piece[:room]
        self.size += len(decoded)
        if self.size > self.limit or (self._inflate is not None and self._inflate.unconsumed_tail):
            self._kept = None  # over the limit: no more decoding
        else:
            self._kept.append(decoded)  # type: ignore[union-attr]

    def facts(self, result_format: str | None) -> dict[str, Any]:
        facts: dict[str, Any] = {"wire_size": self.wire_size, "sha256": self._hash.hexdigest()}
        if self.declared_size is not None:
            facts["declared_size"] = self.declared_size
        if self._kept is None:
            size = self.declared_size
            facts["body"] = {"omitted": "over hoopgw_body_limit"}
            if size is not None:
                facts["body"]["size"] = size
            return facts
        if self.undecodable is not None:
            return facts
        facts["size"] = self.size
        kept = b"".join(self._kept)
        if result_format == STAGE_FILE:
            facts["body"] = {"size": self.size, "omitted": "stage file"}
        elif result_format == "arrow":
            facts["body"] = redaction.body_for_record(kept, self.limit)
        else:
            facts["body"] = redaction.body_for_record(b"[" + kept + b"]", self.limit)
        return facts


class ChunkKeyInStreamError(RuntimeError):
    """A streamed answer carried a result key: the stream is cut before the key goes out."""


class KeyGuard:
    """Wraps a streamed query answer: passes it on until a result key would go out, then cuts.

    A streamed answer cannot be rewritten; rather than hand the client the key,
    the connection is broken and the client sees an incomplete answer.
    """

    def __init__(self, inner: Any, encoding: str) -> None:
        self.inner = inner
        self._tail = b""
        if encoding in ("gzip", "x-gzip"):
            self._inflate: Any = zlib.decompressobj(zlib.MAX_WBITS | 16)
        elif encoding == "deflate":
            self._inflate = zlib.decompressobj()
        elif encoding in ("", "identity"):
            self._inflate = None
        else:
            self._inflate = False  # cannot be read here: not passed on

    def __call__(self, piece: bytes) -> bytes:
        if self._inflate is False:
            raise ChunkKeyInStreamError("a streamed result answer in an unreadable encoding")
        if self._inflate is None:
            self._scan(piece)
        else:
            data = piece
            while data:  # bounded pieces: a bomb never inflates at once
                try:
                    self._scan(self._inflate.decompress(data, _SCAN_PIECE))
                except zlib.error:
                    break  # the answer's own record says it was undecodable
                data = self._inflate.unconsumed_tail
        return self.inner(piece)

    def _scan(self, decoded: bytes) -> None:
        window = self._tail + decoded
        if _KEY_MARKER.search(window):
            logger.error("hoopgw: a streamed result answer carried chunk URLs or a key; cut")
            raise ChunkKeyInStreamError("a streamed result answer carried chunk URLs or a key")
        self._tail = window[-_MARKER_TAIL:]


def carries_result_key(raw: bytes, encoding: str) -> bool:
    """Whether an answer the gateway could not parse holds chunk URLs or a result key."""
    guard = KeyGuard(lambda piece: piece, encoding)
    try:
        for start in range(0, len(raw), _SCAN_PIECE):
            guard(raw[start : start + _SCAN_PIECE])
    except ChunkKeyInStreamError:
        return True
    return False


class ChunkUnreadable(ValueError):
    """A chunk the gateway cannot decode within its limit, so it cannot mask it."""


def read_chunk(response: http.Response, limit: int) -> tuple[bytes, str]:
    """The whole decoded chunk and how it came (`gzip` without a header, as S3 serves Arrow).

    JSON chunks come with `Content-Encoding: gzip`; Arrow chunks as a raw gzip
    blob the drivers recognise by its magic number. Either way the decoded
    size is bounded by `limit` (hoopgw_response_limit): a gzip bomb is refused.
    """
    raw = response.raw_content or b""
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if encoding in ("", "identity") and raw[:2] == b"\x1f\x8b":
        encoding = "gzip-blob"
    if encoding in ("", "identity"):
        if len(raw) > limit:
            raise ChunkUnreadable(f"the chunk is over hoopgw_response_limit ({limit} bytes)")
        return raw, encoding
    if encoding not in ("gzip", "x-gzip", "gzip-blob", "deflate"):
        raise ChunkUnreadable(f"the chunk came in {encoding[:40]!r} encoding")
    wbits = zlib.MAX_WBITS if encoding == "deflate" else zlib.MAX_WBITS | 16
    inflate = zlib.decompressobj(wbits)
    try:
        data = inflate.decompress(raw, limit + 1)
    except zlib.error:
        raise ChunkUnreadable("the chunk's compression is broken") from None
    if len(data) > limit or inflate.unconsumed_tail:
        raise ChunkUnreadable(f"the decoded chunk is over hoopgw_response_limit ({limit} bytes)")
    if not inflate.eof:
        raise ChunkUnreadable("the chunk is truncated")
    return data, encoding


def write_chunk(response: http.Response, data: bytes, how: str) -> None:
    """Replace the chunk's body with `data`, encoded the way cloud storage sent it."""
    if how in ("gzip", "x-gzip", "gzip-blob"):
        raw = gzip.compress(data, compresslevel=1, mtime=0)
    elif how == "deflate":
        raw = zlib.compress(data, 1)
    else:
        raw = data
    response.raw_content = raw
    if "transfer-encoding" not in response.headers:
        response.headers["content-length"] = str(len(raw))


def _storage_url(value: object) -> bool:
    if not isinstance(value, str):
        return False
    parsed = urllib.parse.urlsplit(value)
    return parsed.scheme in ("http", "https") and bool(parsed.hostname)


def _restore(flow: http.HTTPFlow, admitted: Admitted) -> None:
    """Point the flow back at the gateway's path: views and exports never show the storage URL."""
    if admitted.original is None:
        return
    scheme, host, port, path, headers = admitted.original
    flow.request.scheme, flow.request.host, flow.request.port = scheme, host, port
    flow.request.path = path
    flow.request.headers = headers


def _refuse(flow: http.HTTPFlow, state: FlowState, reason: str, status: int = 403) -> None:
    refuse(
        flow,
        state,
        protocol.CODE_GATEWAY_POLICY,
        reason,
        SOURCE,
        shape=Shape.SESSION,
        status=status,
    )


def _caller(record: dict[str, Any]) -> Caller:
    return Caller(
        subject=str(record.get("subject")),
        email=record.get("email"),
        groups=tuple(str(g) for g in record.get("groups") or ()),
        role=record.get("role"),
        issuer=record.get("issuer"),
    )


def _read_key(option: str, ref: str) -> bytes:
    try:
        return decode_token_key(resolve_option_secret(option, ref))
    except ValueError as exc:
        raise exceptions.OptionsError(f"{option}: {ref}: {exc}") from None


def _session_tokens() -> SessionTokens | None:
    """The session tokens `Authentication` keeps (key and logouts), when it is loaded."""
    authentication = ctx.master.addons.get("authentication")
    tokens = getattr(authentication, "tokens", None)
    return tokens if isinstance(tokens, SessionTokens) else None


def _body_limit() -> int:
    return int(getattr(ctx.options, "hoopgw_body_limit", 1024 * 1024))


def _peer(flow: http.HTTPFlow) -> str | None:
    address = flow.client_conn.peername
    return f"{address[0]}:{address[1]}" if address else None


__all__ = [
    "Admitted",
    "ChunkFetch",
    "ChunkTap",
    "ChunkTicket",
    "ChunkTickets",
    "ChunkUnreadable",
    "ResultChunks",
    "TicketError",
    "UploadTap",
    "chunk_key_headers",
    "read_chunk",
    "write_chunk",
]
