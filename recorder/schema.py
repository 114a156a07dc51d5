"""The record format: kinds, fields, validation and the hash chain.

docs/record-format.md is the specification; `FIELDS` mirrors its tables, so a
field added there is added here in the same change. Readers must ignore fields
they do not know (newer minor additions); `v` changes only for incompatible
changes.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

import orjson

from hoopgw.recorder.ids import is_session_id

FORMAT_VERSION: Final = 1


class RecordKind(StrEnum):
    """A record's `kind`. A `str`, so records that carry one encode exactly as the text."""

    SESSION_START = "session_start"
    REQUEST = "request"
    RESPONSE = "response"
    ERROR = "error"
    REFUSAL = "refusal"
    SESSION_END = "session_end"
    CHUNK = "chunk"
    REFUSAL_SUMMARY = "refusal_summary"
    APPROVAL_REQUEST = "approval_request"
    APPROVAL_DECISION = "approval_decision"
    CORTEX = "cortex"
    MCP_CALL = "mcp_call"


SESSION_START: Final = RecordKind.SESSION_START
REQUEST: Final = RecordKind.REQUEST
RESPONSE: Final = RecordKind.RESPONSE
ERROR: Final = RecordKind.ERROR
REFUSAL: Final = RecordKind.REFUSAL
SESSION_END: Final = RecordKind.SESSION_END
CHUNK: Final = RecordKind.CHUNK
REFUSAL_SUMMARY: Final = RecordKind.REFUSAL_SUMMARY
APPROVAL_REQUEST: Final = RecordKind.APPROVAL_REQUEST
APPROVAL_DECISION: Final = RecordKind.APPROVAL_DECISION
CORTEX: Final = RecordKind.CORTEX
MCP_CALL: Final = RecordKind.MCP_CALL
KINDS: Final = tuple(RecordKind)
STATEMENT_KINDS: Final = frozenset({REQUEST, REFUSAL})
"""Kinds that make a statement when they carry `sql`: a forwarded or a refused request."""
ANSWER_KINDS: Final = frozenset({RESPONSE, ERROR})
"""Kinds that end a flow: Snowflake's (or the gateway's) answer, or the failure."""

GENESIS_HASH: Final = "0" * 64
"""`prev_hash` of the first record (seq 0) of every writer stream."""

_HASH = re.compile(r"[0-9a-f]{64}")
_CANONICAL: Final = orjson.OPT_SORT_KEYS

NUMBER = (int, float)
OPT_STR = (str, type(None))
OPT_INT = (int, type(None))
OPT_NUMBER = (int, float, type(None))
OPT_DICT = (dict, type(None))
OPT_LIST = (list, type(None))
OPT_BOOL = (bool, type(None))
CODE = (str, int, type(None))


@dataclass(frozen=True, slots=True)
class Field:
    types: tuple[type, ...]
    required: bool
    doc: str


def _req(types: tuple[type, ...] | type, doc: str) -> Field:
    return Field(types if isinstance(types, tuple) else (types,), True, doc)


def _opt(types: tuple[type, ...] | type, doc: str) -> Field:
    return Field(types if isinstance(types, tuple) else (types,), False, doc)


COMMON_FIELDS: Final[dict[str, Field]] = {
    "v": _req(int, "format version (FORMAT_VERSION)"),
    "kind": _req(str, "one of KINDS"),
    "session_id": _req(str, "hoopgw session id, a UUIDv7"),
    "writer": _req(str, "id of the gateway process that wrote the record"),
    "seq": _req(int, "position in the (session_id, writer) stream, from 0, no gaps"),
    "ts": _req(NUMBER, "Unix epoch seconds when the event happened"),
    "prev_hash": _req(str, "`hash` of the previous record of the stream; GENESIS_HASH for seq 0"),
    "hash": _req(str, "sha256 of the record's canonical encoding without `hash`"),
    "flow_id": _opt(OPT_STR, "mitmproxy flow id, shared by a flow's records"),
    "caller": _opt(OPT_DICT, "verified identity: subject, email, groups, role, issuer"),
    "client": _opt(OPT_DICT, "client address, application, version"),
}

_FLOW: Final = {"flow_id": _req(str, "mitmproxy flow id, shared by a flow's records")}
_CONTEXT: Final = {
    "database": _opt(OPT_STR, "current database"),
    "schema": _opt(OPT_STR, "current schema"),
    "warehouse": _opt(OPT_STR, "current warehouse"),
    "role": _opt(OPT_STR, "current Snowflake role"),
}
_MESSAGE: Final = {
    "headers": _opt(OPT_LIST, "redacted headers, [[name, value], ...] in wire order"),
    "body": _opt(OPT_DICT, "redacted body, see body_for_record"),
}

_REQUEST: Final = {
    **_FLOW,
    "method": _req(str, "HTTP method"),
    "path": _req(str, "request path with query string"),
    "endpoint": _opt(OPT_STR, "classified endpoint: login, query, token_request, ..."),
    **_MESSAGE,
    "sql": _opt(OPT_STR, "statement text, credential literals masked"),
    "bindings": _opt(OPT_DICT, 'bind values as sent: {"1": {type, value}}'),
    "bindings_masked": _opt(OPT_STR, "why every bind value is masked: credential|unreadable sql"),
    "request_id": _opt(OPT_STR, "driver's requestId query parameter"),
    "sequence_id": _opt(OPT_INT, "driver's sequenceId"),
    "async": _opt(OPT_BOOL, "asyncExec flag"),
    "query_id": _opt(OPT_STR, "query id a monitoring/result/abort request refers to"),
    "statements": _opt(OPT_LIST, "each statement classified (recorder.statements)"),
    "guardrail": _opt(OPT_DICT, "policy decision: decision (allow|block), rule, reason"),
    **_CONTEXT,
}

KIND_FIELDS: Final[dict[str, dict[str, Field]]] = {
    SESSION_START: {
        "caller": _req(dict, "verified identity: subject, email, groups, role, issuer"),
        "account": _opt(OPT_STR, "upstream Snowflake account"),
        "login_name": _opt(OPT_STR, "upstream Snowflake user the gateway logged in as"),
        "authenticator": _opt(OPT_STR, "how the gateway authenticated upstream"),
        "upstream_session_id": _opt(CODE, "Snowflake's own session id (not a secret)"),
        "upstream": _opt(OPT_DICT, "where the gateway sent the session: scheme, host, port"),
        **_CONTEXT,
    },
    REQUEST: _REQUEST,
    REFUSAL: {
        **_REQUEST,
        "refusal": _req(dict, "code, reason, by (the addon that refused)"),
    },
    RESPONSE: {
        **_FLOW,
        "status": _req(int, "HTTP status code"),
        **_MESSAGE,
        "duration_ms": _opt(OPT_NUMBER, "request start to response end"),
        "success": _opt(OPT_BOOL, "Snowflake's `success`"),
        "query_id": _opt(OPT_STR, "data.queryId"),
        "statement_type_id": _opt(OPT_INT, "data.statementTypeId"),
        "result_format": _opt(OPT_STR, "data.queryResultFormat (json, arrow)"),
        "columns": _opt(OPT_LIST, "result column names, from data.rowtype[].name"),
        "total": _opt(OPT_INT, "data.total: rows in the full result"),
        "returned": _opt(OPT_INT, "data.returned: rows inline in this response"),
        "chunk_count": _opt(OPT_INT, "number of result chunks fetched from cloud storage"),
        "chunk_rows": _opt(OPT_INT, "sum of chunks[].rowCount"),
        "chunk_bytes": _opt(OPT_INT, "sum of chunks[].uncompressedSize"),
        "stage_file_count": _opt(
            OPT_INT, "GET on a GCP stage: files behind data.presignedUrls (proxied as chunks)"
        ),
        "stage_upload_count": _opt(
            OPT_INT, "PUT on a GCP stage: 1, the file behind data.stageInfo.presignedUrl"
        ),
        "partition_count": _opt(
            OPT_INT, "SQL API: result partitions (resultSetMetaData.partitionInfo), 0 inline"
        ),
        "error_code": _opt(OPT_STR, "Snowflake error code as a string (data.errorCode / code)"),
        "sql_state": _opt(OPT_STR, "data.sqlState"),
        "message": _opt(OPT_STR, "Snowflake's error message"),
        "guardrail": _opt(OPT_DICT, "policy decision, when taken on the response"),
        "refusal": _opt(OPT_DICT, "set when the gateway itself answered (see refusal records)"),
        "detections": _opt(
            OPT_LIST, "sensitive data in the rows: [{column, kind, count, action}], no values"
        ),
        **_CONTEXT,
    },
    ERROR: {
        **_FLOW,
        "error": _req(str, "what failed (connection reset, timeout, ...)"),
        "duration_ms": _opt(OPT_NUMBER, "request start to failure"),
        "status": _opt(OPT_INT, "HTTP status of an answer that broke off while streamed"),
        **_MESSAGE,
    },
    SESSION_END: {
        "reason": _req(str, "logout, expired, gateway_shutdown, refusal_window, ..."),
    },
    REFUSAL_SUMMARY: {
        "window_start": _req(NUMBER, "Unix epoch seconds: the window's first moment"),
        "window_end": _req(NUMBER, "Unix epoch seconds: when the window was closed"),
        "refused": _req(int, "requests without a verified caller refused in the window"),
        "body_bytes": _opt(int, "sum of their body sizes (as received or declared)"),
        "reasons": _req(list, "[{endpoint, code, reason, count}], most frequent first"),
        "clients": _req(list, "[{address, count}] by client address, most frequent first"),
        "samples": _req(list, "the window's first refusals: head facts only, never a body"),
        "samples_omitted": _opt(int, "refusals counted but not kept as samples"),
        "windows_carried": _opt(int, "windows the refusal budget held back into this one"),
    },
    CHUNK: {
        **_FLOW,
        "query_id": _req(str, "the query whose result the chunk belongs to"),
        "chunk_index": _req(int, "position in data.chunks[], from 0; a partition's number"),
        "partition": _opt(OPT_BOOL, "an SQL API result partition (`?partition=N`), not a chunk"),
        "chunk_count": _opt(OPT_INT, "chunks in the result"),
        "result_format": _opt(OPT_STR, "json or arrow; stage_file or stage_upload"),
        "direction": _opt(OPT_STR, "upload: a stage file the client PUT; absent: a download"),
        "file_name": _opt(OPT_STR, "an upload's object name (the storage URL's last segment)"),
        "rows": _opt(OPT_INT, "rows in the chunk (chunks[].rowCount)"),
        "status": _opt(OPT_INT, "HTTP status cloud storage answered"),
        "complete": _req(bool, "the whole chunk reached the client (an upload: storage took it)"),
        "size": _opt(OPT_INT, "uncompressed bytes, measured (chunks within hoopgw_body_limit)"),
        "declared_size": _opt(OPT_INT, "bytes the answer declared (an upload: its Content-Length)"),
        "wire_size": _opt(
            OPT_INT, "bytes as sent to the client, compressed (an upload: to storage)"
        ),
        "sha256": _opt(OPT_STR, "sha256 of the bytes sent to the client (an upload: to storage)"),
        "duration_ms": _opt(OPT_NUMBER, "request start to the chunk's last byte"),
        "body": _opt(OPT_DICT, "the chunk's rows within hoopgw_body_limit, see body_for_record"),
        "error": _opt(OPT_STR, "why the chunk did not reach the client whole"),
        "detections": _opt(OPT_LIST, "what masking found in the chunk, as for a response"),
    },
    APPROVAL_REQUEST: {
        **_FLOW,
        "approval_id": _req(str, "id of the held request (a UUID, also its getResultUrl id)"),
        "rule": _opt(OPT_STR, "the policy rule that sent the statement to review"),
        "reason": _opt(OPT_STR, "why the rule sends it to review"),
        "approvers": _req(list, "identity-provider groups that may decide"),
        "expires": _req(NUMBER, "Unix epoch seconds when it times out undecided"),
        "fingerprint": _req(str, "sha256 of caller, statement text, bindings and objects"),
        "joined": _opt(OPT_BOOL, "a retry that joined an open request instead of opening one"),
    },
    APPROVAL_DECISION: {
        "approval_id": _req(str, "id of the held request"),
        "outcome": _req(str, "approved, denied, withdrawn (aborted) or timeout"),
        "approver": _opt(OPT_DICT, "verified identity of who decided (subject, email, groups)"),
        "reason": _opt(OPT_STR, "the approver's reason"),
        "waited_ms": _opt(OPT_NUMBER, "from the hold to the decision"),
    },
    CORTEX: {
        **_FLOW,
        "surface": _req(str, "analyst, search:DB.SCHEMA.NAME or agents:DB.SCHEMA.NAME"),
        "request_id": _opt(OPT_STR, "Snowflake's request_id of the answer"),
        "question": _opt(OPT_STR, "analyst and agents: the last user message's text"),
        "generated_sql": _opt(OPT_STR, "analyst: the SQL it proposed (not run), secrets masked"),
        "statements": _opt(OPT_LIST, "analyst: the generated SQL classified (recorder.statements)"),
        "answer": _opt(OPT_STR, "analyst: its text; agents: the text deltas joined"),
        "suggestions": _opt(OPT_LIST, "analyst: suggested questions"),
        "query": _opt(OPT_STR, "search: the query text"),
        "filter": _opt(OPT_DICT, "search: the filter as sent"),
        "columns": _opt(OPT_LIST, "search: the columns asked for"),
        "results": _opt(OPT_LIST, "search: the results as the caller received them"),
        "result_count": _opt(OPT_INT, "search: results in the answer"),
        "events": _opt(OPT_LIST, "agents: [{event, data}] as the caller received them"),
        "event_count": _opt(OPT_INT, "agents: server-sent events passed to the caller"),
        "complete": _opt(OPT_BOOL, "agents: the stream ended normally"),
        "truncated": _opt(OPT_DICT, "what was left out to stay within hoopgw_body_limit"),
        "detections": _opt(OPT_LIST, "what masking found and did, as for a response"),
        "error": _opt(OPT_STR, "why the answer could not be read or passed on whole"),
    },
    MCP_CALL: {
        **_FLOW,
        "server": _req(str, "the managed MCP server, DATABASE.SCHEMA.NAME"),
        "rpc_method": _req(str, "JSON-RPC method: initialize, tools/list, tools/call, ..."),
        "rpc_id": _opt((str, int, type(None)), "JSON-RPC id; null for a notification"),
        "tool": _opt(OPT_STR, "tools/call: the tool's name"),
        "arguments": _opt(OPT_DICT, "tools/call: its arguments, redacted (see body_for_record)"),
        "sql": _opt(OPT_STR, "the SQL a SQL-executing tool ran, credential literals masked"),
        "result": _opt(OPT_DICT, "the result as the caller received it (see body_for_record)"),
        "error": _opt(OPT_DICT, "the JSON-RPC error the caller received, same form"),
        "guardrail": _opt(OPT_DICT, "policy decision on the tool or its SQL"),
        "refusal": _opt(OPT_DICT, "set when the gateway itself answered"),
        "approval_id": _opt(OPT_STR, "the approval that holds the call"),
        "detections": _opt(OPT_LIST, "what masking found in the result, as for a response"),
    },
}

FIELDS: Final[dict[str, dict[str, Field]]] = {
    kind: {**COMMON_FIELDS, **specific} for kind, specific in KIND_FIELDS.items()
}
"""Every field of every kind: common fields merged with the kind's own."""


def validate_record(record: dict[str, Any]) -> list[str]:
    """Problems with `record` as a stored record; empty when it is valid.

    Unknown fields are allowed (forward compatibility); known fields must have
    their documented type.
    """
    if not isinstance(record, dict):
        return [f"record is a {type(record).__name__}, not an object"]
    kind = record.get("kind")
    fields = FIELDS.get(kind) if isinstance(kind, str) else None
    if fields is None:
        return [f"unknown kind {kind!r}"[:120]]
    problems = []
    for name, spec in fields.items():
        if name not in record:
            if spec.required:
                problems.append(f"missing field {name!r}")
            continue
        value = record[name]
        if not isinstance(value, spec.types) or (
            isinstance(value, bool) and bool not in spec.types
        ):
            problems.append(f"field {name!r} has type {type(value).__name__}")
    if problems:
        return problems
    if record["v"] != FORMAT_VERSION:
        problems.append(f"unsupported format version {record['v']!r}")
    if not is_session_id(record["session_id"]):
        problems.append("session_id is not a UUIDv7")
    if record["seq"] < 0:
        problems.append("seq is negative")
    for name in ("hash", "prev_hash"):
        if not _HASH.fullmatch(record[name]):
            problems.append(f"{name} is not 64 lowercase hex digits")
    if record["seq"] == 0 and record["prev_hash"] != GENESIS_HASH:
        problems.append("seq 0 must have the genesis prev_hash")
    return problems


def canonical_bytes(record: dict[str, Any]) -> bytes:
    """The bytes the hash covers: orjson, sorted keys, without the record's own `hash`."""
    if "hash" in record:
        record = {key: value for key, value in record.items() if key != "hash"}
    return orjson.dumps(record, option=_CANONICAL)


def record_hash(record: dict[str, Any]) -> str:
    """sha256 (hex) of `canonical_bytes(record)`."""
    return hashlib.sha256(canonical_bytes(record)).hexdigest()


def chain_record(record: dict[str, Any], prev_hash: str) -> bytes:
    """Set `prev_hash` and `hash` on `record` and return its JSON line, encoding it once.

    The line is the canonical encoding with `"hash"` appended as the last key, so
    a verifier may either re-encode the parsed record or strip the last key.
    """
    record.pop("hash", None)
    record["prev_hash"] = prev_hash
    body = orjson.dumps(record, option=_CANONICAL)
    digest = hashlib.sha256(body).hexdigest()
    record["hash"] = digest
    return b'%b,"hash":"%b"}\n' % (body[:-1], digest.encode())


def is_statement(record: dict[str, Any]) -> bool:
    """A request (forwarded or refused) that carried SQL: the summary's statements."""
    return record.get("kind") in STATEMENT_KINDS and record.get("sql") is not None


def is_error(record: dict[str, Any]) -> bool:
    """A failed flow: an `error` record, or a response Snowflake or HTTP marked failed.

    The gateway's own answers (responses with `refusal`) count as blocked instead.
    """
    kind = record.get("kind")
    if kind == ERROR:
        return True
    if kind != RESPONSE or record.get("refusal") is not None:
        return False
    status = record.get("status")
    return (
        record.get("success") is False
        or record.get("error_code") is not None
        or (isinstance(status, int) and status >= 400)
    )


def is_blocked(record: dict[str, Any]) -> bool:
    """A refusal, or a record whose guardrail decision was to block."""
    if record.get("kind") in (REFUSAL, REFUSAL_SUMMARY):
        return True
    guardrail = record.get("guardrail")
    return isinstance(guardrail, dict) and guardrail.get("decision") == "block"
