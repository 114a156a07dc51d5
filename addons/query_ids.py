"""Query ids bound to their session: a caller can name only the queries the gateway gave it.

Snowflake lets a user read the result and status of any query that user ran.
With one shared Snowflake user, any caller who learns another's query id
could read that caller's result. So the gateway never shows a client
Snowflake's own ids: every id in an answer (`queryId`, `getResultUrl`,
`resultIds`, monitoring `queries[].id`, SQL API `statementHandle(s)` and
`statementStatusUrl`) is replaced by a bound id, in buffered answers by
`QueryIds.response` and in answers streamed to the client (over
`hoopgw_body_limit`) by `StreamedIds` as the bytes pass. Every id a client
sends (`/queries/{id}/result`, `/monitoring/queries/{id}`,
`/queries/{id}/abort-request`, a `queryId` in an abort body,
`/api/v2/statements/{handle}`, and the query id argument of RESULT_SCAN,
SYSTEM$CANCEL_QUERY, GET_QUERY_OPERATOR_STATS and
SYSTEM$ESTIMATE_QUERY_ACCELERATION in SQL) is mapped back or refused.

A bound id is the raw id's 16 bytes encrypted as one AES block (a keyed
permutation) under a key derived from the gateway's token key and the hoopgw
session id (for the SQL API, where each call stands alone, the caller's
issuer and subject). It is still a UUID, as drivers require, and any replica
with the same token key maps it back alike: no shared table. An id mapped
back under another session's key is 16 random bytes: the gateway refuses it,
without contacting Snowflake, when it does not look like an id an upstream
issues (`looks_issued`: about 98% of foreign ids); the rest reach Snowflake as
ids no query has (16 random bytes), which it answers as an unknown query. That
remainder is what a 128-bit id without a table allows: Snowflake's ids use
all their bytes but the first, so no spare bits can carry a check.

The ids of statements the gateway holds for review (addons/approval.py) are
bound the same way: Approvals answers after this addon's request hook and
before its response hook, so its "still running" answers are bound like
Snowflake's and its polls and cancels arrive mapped back. An approval id is a
version-4 UUID, which `looks_issued` accepts; once released the statement's id
is Snowflake's, bound as ever. Approvers name the raw approval id (the desk and
`hoopgw approvals`, outside any session).

The recorder keeps Snowflake's raw ids, the ones QUERY_HISTORY shows: the
request side maps ids back before the policy and the recorder read the
request, and the answer rewritten for the client is not what the recorder
reads (`state.response_json` stays raw; a streamed answer is hashed and
outlined as Snowflake sent it). `SELECT LAST_QUERY_ID()` returns Snowflake's
id as data: sent back, it is refused (`RESULT_SCAN(LAST_QUERY_ID())` works).
`/queries/v1/abort-request` names the client's own request id, which
Snowflake looks up in the session its token opens: the gateway's token swap
keeps that the caller's own session.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import re
import threading
import uuid
import zlib
from collections.abc import Callable, Sequence
from typing import Any, Final

import brotli
import orjson
import zstandard
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from mitmproxy import ctx, http
from mitmproxy.addonmanager import Loader
from sqlglot.tokens import Token, TokenType

from hoopgw.addons import protocol
from hoopgw.addons.flowstate import FlowState, state_of
from hoopgw.addons.names import QUERY_IDS
from hoopgw.addons.protocol import Endpoint
from hoopgw.addons.refusals import refuse
from hoopgw.addons.session_tokens import SessionTokens, key_id
from hoopgw.recorder.statements import tokens as sql_tokens

logger = logging.getLogger(__name__)

SNOWFLAKE_ID_FIRST_BYTE = 0x01
_UUID = r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
_PATH_ID = re.compile(
    r"^(?P<head>/queries/|/monitoring/queries//?|/api/v2/statements/)(?P<id>[^/?]+)(?P<tail>.*)$",
    re.DOTALL,
)
_URL_ID = re.compile(rf"(?<=/queries/){_UUID}|(?<=/statements/){_UUID}")
_STREAM_VALUE_LIMIT = 16 * 1024
# A member naming ids in a streamed answer, as Snowflake writes JSON (no whitespace, no
# escapes in ids): a quote right after `{` or `,` (checked on the match, so the search
# runs at the speed of a literal) opens a key, never text inside a string, where a quote
# is always escaped. A member this misses reaches the client raw, which the gateway then
# refuses when sent back: the safe side.
_STREAM_MEMBER = re.compile(
    rb'"(?P<key>queryId|statementHandles?|resultIds|getResultUrl|statementStatusUrl)"'
    rb':(?P<value>"[^"\\]{0,%d}"|\[[^\]]{0,%d}\])' % (_STREAM_VALUE_LIMIT, _STREAM_VALUE_LIMIT)
)
_MEMBER_OPENERS = b"{,"
_STREAMED_ID_ENDPOINTS = frozenset({Endpoint.QUERY, Endpoint.RESULT, Endpoint.SQL_API})
_STREAM_CARRY = _STREAM_VALUE_LIMIT + 64  # longer than any member the pattern matches
_UUID_BYTES = re.compile(_UUID.encode())
_URL_ID_BYTES = re.compile(_URL_ID.pattern.encode())
# Scopes (sessions, SQL API callers) whose AES contexts a binder keeps ready: about 2 KB
# each (two OpenSSL contexts), so at most 2 MB; a scope set up again costs ~20 us.
_SCOPES_KEPT = 1024


def looks_issued(raw: bytes) -> bool:
    """Whether 16 bytes can be an id an upstream issued: Snowflake's, or a version-4 UUID.

    Snowflake's query ids start with the byte 0x01; Snowflake emulators
    (fakesnow) and the gateway's own approval holds issue version-4 UUIDs.
    16 random bytes pass with a probability of 1/256 + 1/64 (about 2%).
    """
    return raw[0] == SNOWFLAKE_ID_FIRST_BYTE or (raw[6] >> 4 == 4 and raw[8] >> 6 == 0b10)


class QueryIdError(ValueError):
    """An id the session was not given; the message is the refusal reason."""


class QueryIdBinder:
    """Binds Snowflake query ids to a scope (a session) and maps them back.

    Deriving a scope's key and setting up its AES context cost more than the
    permutation itself, and a session's ids are bound on every answer: each
    scope's contexts are kept (the `_SCOPES_KEPT` most recent scopes). One AES
    block in ECB carries no state from one call to the next, so a context is
    reused as it is; a lock keeps two threads off one context.
    """

    def __init__(self, key_material: Sequence[bytes]) -> None:
        self._keys = tuple(key_material)
        self._index = {key_id(key): index for index, key in reversed(list(enumerate(self._keys)))}
        self._contexts: dict[tuple[int, str], tuple[CipherContext, CipherContext]] = {}
        self._lock = threading.Lock()

    @property
    def keys(self) -> tuple[bytes, ...]:
        return self._keys

    def bind(self, raw: str, scope: str, key: str | None = None) -> str:
        """The id the client sees; an id that is not a UUID stays as it is.

        `key` is the id of the token key the scope's ids are bound under (a
        session's `id_key`); without it, or once that key is no longer held, the
        current key.
        """
        try:
            block = uuid.UUID(raw).bytes
        except ValueError:
            return raw
        return _uuid_text(self._permute(self._index.get(key, 0), scope, block, encrypt=True))

    def unbind(self, bound: str, scope: str, key: str | None = None) -> str:
        """Snowflake's id for a bound id; raises QueryIdError for ids the scope was not given.

        A bound id carries no mark of its key, and another key's decryption
        looks issued about 2% of the time: the scope's own key (`key`, as in
        `bind`) is tried alone when it is held, so a rotation cannot map a
        session's id to another. Scopes without one (SQL API callers) try the
        current key, then previous ones.
        """
        try:
            block = uuid.UUID(bound).bytes
        except ValueError:
            raise QueryIdError(f"{bound[:40]!r} is not a query id this gateway issued") from None
        pinned = self._index.get(key) if key is not None else None
        for index in (pinned,) if pinned is not None else range(len(self._keys)):
            raw = self._permute(index, scope, block, encrypt=False)
            if looks_issued(raw):
                return _uuid_text(raw)
        raise QueryIdError(f"query {bound} was not issued to this session")

    def _permute(self, index: int, scope: str, block: bytes, *, encrypt: bool) -> bytes:
        with self._lock:
            contexts = self._contexts.get((index, scope))
            if contexts is None:
                cipher = self._cipher(self._keys[index], scope)
                contexts = (cipher.encryptor(), cipher.decryptor())
                if len(self._contexts) >= _SCOPES_KEPT:
                    del self._contexts[next(iter(self._contexts))]
                self._contexts[(index, scope)] = contexts
            return contexts[0 if encrypt else 1].update(block)

    @staticmethod
    def _cipher(key: bytes, scope: str) -> Cipher[modes.ECB]:
        derived = hmac.new(key, b"hoopgw query id\0" + scope.encode(), hashlib.sha256).digest()
        return Cipher(algorithms.AES(derived), modes.ECB())  # one block: a keyed permutation


def _uuid_text(block: bytes) -> str:
    """`str(uuid.UUID(bytes=block))`, without building the UUID."""
    text = block.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


QUERY_ID_FUNCTIONS: Final = (
    "RESULT_SCAN",
    "SYSTEM$CANCEL_QUERY",
    "GET_QUERY_OPERATOR_STATS",
    "SYSTEM$ESTIMATE_QUERY_ACCELERATION",
)
"""SQL functions that take a query id: its result, its cancel, its profile, its estimate."""
_ID_FUNCTION_NAMES = "|".join(re.escape(name) for name in QUERY_ID_FUNCTIONS)
_ID_FUNCTION_WORD = re.compile(
    rf"(?<![A-Za-z0-9_$])(?:{_ID_FUNCTION_NAMES})(?![A-Za-z0-9_$])", re.IGNORECASE
)
_NAME_TOKENS = frozenset({TokenType.VAR, TokenType.IDENTIFIER})
_LITERAL_TOKENS = frozenset({TokenType.STRING, TokenType.RAW_STRING})
_ONLY_LITERALS = "{} takes a query id as a string literal, or LAST_QUERY_ID()"


def map_result_scans(sql: str, unbind: Callable[[str], str]) -> str:
    """`sql` with every query id argument (RESULT_SCAN('<bound id>'), ...) naming Snowflake's id.

    Each function of QUERY_ID_FUNCTIONS, read off sqlglot's Snowflake tokens
    (comments, case and quoted names alike), takes a string literal, mapped
    back, or LAST_QUERY_ID(), which runs inside Snowflake and stays. Anything
    else cannot be checked and is refused: a variable, a binding, an
    expression, and any mention of such a function the tokens do not show as a
    call (inside a string, as EXECUTE IMMEDIATE runs it, or a comment).
    """
    mentions = len(_ID_FUNCTION_WORD.findall(sql))
    if not mentions:
        return sql
    try:
        tokens = sql_tokens.tokenize(sql)
    except Exception:  # sqlglot raises several kinds for text it cannot read
        raise QueryIdError("the SQL names a query id function but cannot be read") from None
    parts: list[str] = []
    position = calls = 0
    for index, token in enumerate(tokens):
        name = token.text.upper()
        if token.token_type not in _NAME_TOKENS or name not in QUERY_ID_FUNCTIONS:
            continue
        calls += 1
        literal = _literal_argument(tokens, index)
        if literal is not None:
            parts.append(sql[position : literal.start])
            parts.append("'" + unbind(literal.text) + "'")
            position = literal.end + 1
        elif not _is_last_query_id(tokens, index):
            raise QueryIdError(_ONLY_LITERALS.format(name))
    if calls != mentions:
        raise QueryIdError(_ONLY_LITERALS.format(_ID_FUNCTION_WORD.findall(sql)[0].upper()))
    parts.append(sql[position:])
    return "".join(parts)


def _literal_argument(tokens: list[Token], index: int) -> Token | None:
    """The string literal of `NAME ( '<literal>' )` at `index`, or None for any other call."""
    call = tokens[index + 1 : index + 4]
    shape = [token.token_type for token in call]
    literal = len(shape) == 3 and shape[1] in _LITERAL_TOKENS
    return call[1] if literal and shape[::2] == [TokenType.L_PAREN, TokenType.R_PAREN] else None


def _is_last_query_id(tokens: list[Token], index: int) -> bool:
    """`NAME ( LAST_QUERY_ID ( [[-]n] ) )` at `index`: resolved inside Snowflake's session."""
    head = tokens[index + 1 : index + 4]
    if [token.token_type for token in head] != [
        TokenType.L_PAREN,
        TokenType.VAR,
        TokenType.L_PAREN,
    ]:
        return False
    if head[1].text.upper() != "LAST_QUERY_ID":
        return False
    rest = [token.token_type for token in tokens[index + 4 : index + 8]]
    closing = [TokenType.R_PAREN, TokenType.R_PAREN]
    return any(
        rest[: len(prefix) + 2] == [*prefix, *closing]
        for prefix in ([], [TokenType.NUMBER], [TokenType.DASH, TokenType.NUMBER])
    )


class QueryIds:
    """Maps ids back on the way in and binds them on the way out; see the module docstring."""

    def __init__(self, tokens: SessionTokens) -> None:
        self.tokens = tokens
        self.enabled = True
        self._binder: QueryIdBinder | None = None

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "hoopgw_bind_query_ids",
            bool,
            True,
            """
            Bind every query id and SQL API statement handle the gateway answers
            with (answers streamed over hoopgw_body_limit too) to the session
            (SQL API: the caller) that ran it, and refuse ids a session was not
            given. Off only where every caller has their own Snowflake user
            (hoopgw_upstream_user_map, Snowflake then keeps users' queries apart)
            and clients must reuse raw ids they read elsewhere, such as
            SELECT LAST_QUERY_ID() or QUERY_HISTORY.
            """,
        )

    def configure(self, updated: set[str]) -> None:
        if "hoopgw_bind_query_ids" in updated:
            self.enabled = ctx.options.hoopgw_bind_query_ids

    def binder(self) -> QueryIdBinder:
        """One binder for the token keys in force, so its per-scope contexts are reused."""
        material = self.tokens.key_material
        if self._binder is None or self._binder.keys != material:
            self._binder = QueryIdBinder(material)
        return self._binder

    def request(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None or state.answered:
            return
        scope = _scope(state) if self.enabled else None
        if scope is not None:
            binder = self.binder()
            try:
                self._map_request(
                    flow, state, lambda bound: binder.unbind(bound, scope, state.id_key)
                )
            except QueryIdError as exc:
                refuse(flow, state, protocol.CODE_GATEWAY_POLICY, str(exc), QUERY_IDS)
                return
        state.passed.add(QUERY_IDS)

    def response(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None or flow.response is None or state.answered or state.streamed is not None:
            return
        scope = _scope(state) if self.enabled else None
        answer = state.answer_for_client()
        if scope is None or not isinstance(answer, dict):
            return
        binder = self.binder()
        bound = bind_answer(answer, lambda raw: binder.bind(raw, scope, state.id_key))
        if bound is not None:
            state.send_to_client(flow, bound)  # the record keeps Snowflake's raw ids

    @staticmethod
    def _map_request(flow: http.HTTPFlow, state: FlowState, unbind: Callable[[str], str]) -> None:
        request = flow.request
        if state.endpoint in (Endpoint.RESULT, Endpoint.MONITORING, Endpoint.ABORT) or (
            state.endpoint is Endpoint.SQL_API and request.path.startswith("/api/v2/statements/")
        ):
            match = _PATH_ID.match(request.path)
            if match is not None and match["id"] != "v1":
                request.path = match["head"] + unbind(match["id"]) + match["tail"]
        body = state.request_json
        if not isinstance(body, dict):
            return
        if state.endpoint is Endpoint.ABORT:
            # drivers name their own requestId, which Snowflake looks up in the session the
            # token opens; a query id some client puts beside it is the caller's to name
            field, mapping = "queryId", unbind
        else:
            field = {Endpoint.QUERY: "sqlText", Endpoint.SQL_API: "statement"}.get(state.endpoint)
            mapping = functools.partial(map_result_scans, unbind=unbind)
        if field is None or field not in body:
            return
        if not isinstance(body[field], str):
            if state.endpoint is Endpoint.ABORT:
                raise QueryIdError("queryId must be a query id")
            return
        mapped = mapping(body[field])
        if mapped == body[field]:
            return
        upstream = orjson.loads(request.content or b"{}")
        upstream[field] = mapped
        protocol.write_json_body(request, upstream)
        state.request_json = upstream
        state.request_body = orjson.dumps(upstream)


def bind_answer(answer: dict[str, Any], bind: Callable[[str], str]) -> dict[str, Any] | None:
    """A copy of a Snowflake answer with every query id bound; None when it names none."""
    changed = False

    def swap(value: object) -> object:
        nonlocal changed
        if not isinstance(value, str):
            return value
        changed = True
        return bind(value)

    def swap_urls(value: object) -> object:
        nonlocal changed
        if not isinstance(value, str):
            return value
        changed = True
        return _URL_ID.sub(lambda m: bind(m.group(0)), value)

    result = dict(answer)
    data = answer.get("data")
    if isinstance(data, dict):
        data = dict(data)
        if "queryId" in data:
            data["queryId"] = swap(data["queryId"])
        if "getResultUrl" in data:
            data["getResultUrl"] = swap_urls(data["getResultUrl"])
        if isinstance(data.get("resultIds"), str):
            changed = True
            data["resultIds"] = ",".join(bind(i.strip()) for i in data["resultIds"].split(","))
        if isinstance(data.get("queries"), list):
            data["queries"] = [
                {**query, "id": swap(query["id"])}
                if isinstance(query, dict) and "id" in query
                else query
                for query in data["queries"]
            ]
        result["data"] = data
    if "statementHandle" in answer:
        result["statementHandle"] = swap(answer["statementHandle"])
    if isinstance(answer.get("statementHandles"), list):
        result["statementHandles"] = [swap(h) for h in answer["statementHandles"]]
    if "statementStatusUrl" in answer:
        result["statementStatusUrl"] = swap_urls(answer["statementStatusUrl"])
    return result if changed else None


def session_scope(session_id: str) -> str:
    """The scope a session's query ids are bound to."""
    return f"session\0{session_id}"


def sql_api_scope(issuer: str | None, subject: str) -> str:
    """The scope a caller's SQL API statement handles are bound to (each call stands alone)."""
    return f"sql-api\0{issuer or ''}\0{subject}"


def _scope(state: FlowState) -> str | None:
    """What ids are bound to: the hoopgw session, or for the SQL API the caller."""
    if state.caller is None or state.session_id is None:
        return None
    if state.endpoint is Endpoint.SQL_API:
        return sql_api_scope(state.caller.issuer, state.caller.subject)
    return session_scope(state.session_id)


class StreamedIdBinding:
    """Binds the ids of answers streamed to the client (over `hoopgw_body_limit`), as they pass.

    Placed after Masking, which may still turn a stream into a buffered answer
    (bound by `QueryIds.response`); the stream it wraps is what earlier addons
    set (the record's counter and outline, the result key guard), which still
    see Snowflake's own bytes: the record keeps the raw ids, as for any answer.
    """

    def __init__(self, query_ids: QueryIds) -> None:
        self.query_ids = query_ids

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        response = flow.response
        if state is None or response is None or state.streamed is None or state.answered:
            return
        scope = _scope(state) if self.query_ids.enabled else None
        if scope is None or state.endpoint not in _STREAMED_ID_ENDPOINTS:
            return
        if not callable(response.stream):
            return
        encoding = response.headers.get("content-encoding", "").strip().lower()
        binder = self.query_ids.binder()
        response.stream = StreamedIds(
            response.stream, lambda raw: binder.bind(raw, scope, state.id_key), encoding
        )
        if encoding not in ("", "identity"):
            # re-encoded, so the length changes; an identity body keeps it (an id for an id)
            response.headers.pop("content-length", None)
            if flow.request.http_version == "HTTP/1.1":
                response.headers["transfer-encoding"] = "chunked"


class StreamedIds:
    """The callable for `flow.response.stream` that binds ids in the bytes as they pass.

    Every chunk first goes to `inner` as Snowflake sent it. Decoded, the
    members that name ids (`queryId`, `getResultUrl`, `resultIds`,
    `statementHandle(s)`, `statementStatusUrl`) have each id replaced by its
    bound form, one 36-character UUID by another, so an identity body keeps its
    length; an encoded one is encoded again alike. The last `_STREAM_CARRY`
    bytes wait for the next chunk, so a member split between chunks is still
    whole when it is read: memory stays bounded, nothing is buffered whole.
    """

    def __init__(self, inner: Callable[[bytes], Any], bind: Callable[[str], str], encoding: str):
        self._inner = inner
        self._bind = bind
        self._decoder = protocol.stream_decoder(encoding)
        self._encoder = _StreamEncoder(encoding) if self._decoder is not None else None
        self._buffer = bytearray()  # one sent byte (what the pattern looks behind at), then unsent
        self._sent = 0  # leading bytes of _buffer already sent
        self._scanned = 0  # where the next member can start
        self._finished = False

    def __call__(self, chunk: bytes) -> list[bytes]:
        # the record and the key guard read Snowflake's bytes; what they pass on is bound
        passed = self._inner(chunk)
        data = passed if isinstance(passed, bytes) else b"".join(passed)
        out: list[bytes] = []
        final = chunk == b""  # mitmproxy's call at the end of the body
        if self._finished:
            return out
        self._finished = final
        if self._decoder is None:
            self._take(data, out, final)
            return [piece for piece in out if piece]
        if data:
            self._decoder.feed(data, lambda decoded: self._take(decoded, out, False))
        if final:
            self._take(b"", out, True)
        assert self._encoder is not None
        encoded = [self._encoder.encode(piece) for piece in out]
        if final:
            encoded.append(self._encoder.finish())
        return [piece for piece in encoded if piece]

    def _take(self, data: bytes, out: list[bytes], final: bool) -> None:
        buffer = self._buffer
        buffer += data
        for match in _STREAM_MEMBER.finditer(buffer, self._scanned):
            if match.start() == 0 or buffer[match.start() - 1] not in _MEMBER_OPENERS:
                continue
            start, end = match.span("value")
            bound = self._bound_value(match["key"], bytes(buffer[start:end]))
            buffer[start:end] = bound
            self._scanned = match.end()
        release = len(buffer) if final else max(self._sent, len(buffer) - _STREAM_CARRY)
        if release > self._sent:
            out.append(bytes(buffer[self._sent : release]))
        drop = max(0, release - 1)
        del buffer[:drop]
        self._sent = release - drop
        self._scanned = max(self._scanned - drop, self._sent)

    def _bound_value(self, key: bytes, value: bytes) -> bytes:
        pattern = _URL_ID_BYTES if key.endswith(b"Url") else _UUID_BYTES
        bound = pattern.sub(lambda m: self._bind(m.group(0).decode()).encode(), value)
        if len(bound) != len(value):  # bind() gives a canonical UUID for a UUID
            raise ValueError("a bound id changed length")
        return bound


class _StreamEncoder:
    """Encodes the rewritten body as Snowflake had: gzip, deflate, br or zstd, fast settings."""

    def __init__(self, encoding: str) -> None:
        self._finish: Callable[[], bytes]
        if encoding in ("gzip", "x-gzip", "deflate"):
            wbits = zlib.MAX_WBITS if encoding == "deflate" else zlib.MAX_WBITS | 16
            compressor = zlib.compressobj(1, zlib.DEFLATED, wbits)
            self.encode: Callable[[bytes], bytes] = compressor.compress
            self._finish = compressor.flush
        elif encoding == "br":
            brotli_compressor = brotli.Compressor(quality=1)
            self.encode = brotli_compressor.process
            self._finish = brotli_compressor.finish
        elif encoding == "zstd":
            zstd_compressor = zstandard.ZstdCompressor(level=1).compressobj()
            self.encode = zstd_compressor.compress
            self._finish = zstd_compressor.flush
        else:
            raise ValueError(f"no encoder for {encoding!r}")

    def finish(self) -> bytes:
        return self._finish()
