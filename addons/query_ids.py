"""Query ids bound to their session: a caller can name only the queries the gateway gave it.

Snowflake lets a user read the result and status of any query that user ran.
With one shared Snowflake user, any caller who learns another's query id
could read that caller's result. So the gateway never shows a client
Snowflake's own ids: every id in an answer (`queryId`, `getResultUrl`,
`resultIds`, monitoring `queries[].id`, SQL API `statementHandle(s)` and
`statementStatusUrl`) is replaced by a bound id, and every id a client sends
(`/queries/{id}/result`, `/monitoring/queries/{id}`, `/queries/{id}/abort-request`,
`/api/v2/statements/{handle}`, `RESULT_SCAN('<id>')`) is mapped back.

A bound id is the raw id's 16 bytes encrypted as one AES block (a keyed
permutation) under a key derived from the gateway's token key and the hoopgw
session id (for the SQL API, where each call stands alone, the caller's
issuer and subject). It is still a UUID, as drivers require, and any replica
with the same token key maps it back alike: no shared table. An id mapped
back under another session's key is 16 random bytes: the gateway refuses it,
without contacting Snowflake, when it does not look like an id an upstream
issues (`looks_issued`: about 98% of foreign ids); the rest reach Snowflake as
ids no query has (16 random bytes), which it answers as an unknown query.

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
reads (`state.response_json` stays raw). Answers streamed to the client (over
`hoopgw_body_limit`) pass unrewritten, and `SELECT LAST_QUERY_ID()` returns
Snowflake's id as data: such raw ids are refused when sent back
(`hoopgw_bind_query_ids` turns the binding off).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from mitmproxy import ctx, http
from mitmproxy.addonmanager import Loader

from hoopgw.addons import protocol
from hoopgw.addons.flowstate import FlowState, state_of
from hoopgw.addons.names import QUERY_IDS
from hoopgw.addons.protocol import Endpoint
from hoopgw.addons.refusals import refuse
from hoopgw.addons.session_tokens import SessionTokens

SNOWFLAKE_ID_FIRST_BYTE = 0x01
_UUID = r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
_PATH_ID = re.compile(
    r"^(?P<head>/queries/|/monitoring/queries//?|/api/v2/statements/)(?P<id>[^/?]+)(?P<tail>.*)$",
    re.DOTALL,
)
_RESULT_SCAN = re.compile(r"result_scan\s*\(", re.IGNORECASE)
_RESULT_SCAN_ID = re.compile(rf"\s*'(?P<id>{_UUID})'\s*\)")
_RESULT_SCAN_LAST = re.compile(r"\s*last_query_id\s*\(\s*-?\d*\s*\)\s*\)", re.IGNORECASE)
_URL_ID = re.compile(rf"(?<=/queries/){_UUID}|(?<=/statements/){_UUID}")


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
    """Binds Snowflake query ids to a scope (a session) and maps them back."""

    def __init__(self, key_material: Sequence[bytes]) -> None:
        self._keys = tuple(key_material)

    def bind(self, raw: str, scope: str) -> str:
        """The id the client sees; an id that is not a UUID stays as it is."""
        try:
            block = uuid.UUID(raw).bytes
        except ValueError:
            return raw
        encryptor = self._cipher(self._keys[0], scope).encryptor()
        return str(uuid.UUID(bytes=encryptor.update(block) + encryptor.finalize()))

    def unbind(self, bound: str, scope: str) -> str:
        """Snowflake's id for a bound id; raises QueryIdError for ids the scope was not given."""
        try:
            block = uuid.UUID(bound).bytes
        except ValueError:
            raise QueryIdError(f"{bound[:40]!r} is not a query id this gateway issued") from None
        for key in self._keys:  # the current token key first, then previous ones
            decryptor = self._cipher(key, scope).decryptor()
            raw = decryptor.update(block) + decryptor.finalize()
            if looks_issued(raw):
                return str(uuid.UUID(bytes=raw))
        raise QueryIdError(f"query {bound} was not issued to this session")

    @staticmethod
    def _cipher(key: bytes, scope: str) -> Cipher[modes.ECB]:
        derived = hmac.new(key, b"hoopgw query id\0" + scope.encode(), hashlib.sha256).digest()
        return Cipher(algorithms.AES(derived), modes.ECB())  # one block: a keyed permutation


def map_result_scans(sql: str, unbind: Callable[[str], str]) -> str:
    """`sql` with every RESULT_SCAN('<bound id>') naming Snowflake's id.

    RESULT_SCAN of LAST_QUERY_ID() runs inside Snowflake and stays. Any other
    argument (a variable, an expression, a doubled quote inside EXECUTE
    IMMEDIATE) cannot be checked and is refused.
    """
    if not _RESULT_SCAN.search(sql):
        return sql
    parts: list[str] = []
    position = 0
    for match in _RESULT_SCAN.finditer(sql):
        rest = match.end()
        literal = _RESULT_SCAN_ID.match(sql, rest)
        if literal is not None:
            parts.append(sql[position : literal.start("id")])
            parts.append(unbind(literal["id"]))
            position = literal.end("id")
        elif _RESULT_SCAN_LAST.match(sql, rest) is None:
            raise QueryIdError(
                "RESULT_SCAN takes a query id as a string literal, or LAST_QUERY_ID()"
            )
    parts.append(sql[position:])
    return "".join(parts)


class QueryIds:
    """Maps ids back on the way in and binds them on the way out; see the module docstring."""

    def __init__(self, tokens: SessionTokens) -> None:
        self.tokens = tokens
        self.enabled = True

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "hoopgw_bind_query_ids",
            bool,
            True,
            """
            Bind every query id and SQL API statement handle the gateway answers
            with to the session (SQL API: the caller) that ran it, and refuse ids
            a session was not given. Off only where every caller has their own
            Snowflake user (hoopgw_upstream_user_map, Snowflake then keeps users'
            queries apart) and clients must reuse raw ids they read elsewhere:
            from answers over hoopgw_body_limit (streamed unchanged) or
            SELECT LAST_QUERY_ID().
            """,
        )

    def configure(self, updated: set[str]) -> None:
        if "hoopgw_bind_query_ids" in updated:
            self.enabled = ctx.options.hoopgw_bind_query_ids

    def _binder(self) -> QueryIdBinder:
        return QueryIdBinder(self.tokens.key_material)

    def request(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None or state.answered:
            return
        scope = _scope(state) if self.enabled else None
        if scope is not None:
            binder = self._binder()
            try:
                self._map_request(flow, state, lambda bound: binder.unbind(bound, scope))
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
        binder = self._binder()
        bound = bind_answer(answer, lambda raw: binder.bind(raw, scope))
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
        field = {Endpoint.QUERY: "sqlText", Endpoint.SQL_API: "statement"}.get(state.endpoint)
        body = state.request_json
        if field is None or not isinstance(body, dict) or not isinstance(body.get(field), str):
            return
        sql = map_result_scans(body[field], unbind)
        if sql == body[field]:
            return
        upstream = orjson.loads(request.content or b"{}")
        upstream[field] = sql
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
