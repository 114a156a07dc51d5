"""The records the gateway writes, as types, and the pure parts of building them.

`addons/recording.py` holds the mitmproxy side (which flow, which hook, which
state); what a record says about a parsed request or answer is decided here,
with no mitmproxy in sight, so it is tested on plain dicts and read back by the
readers of this package (`recorder.session`) against the same definitions.
docs/record-format.md and `recorder.schema.FIELDS` are the specification; the
types below name the fields the writer actually fills.
"""

from __future__ import annotations

import re
import time
from typing import Any, Final, NotRequired, TypedDict

from hoopgw.recorder import redaction
from hoopgw.recorder.schema import RecordKind
from hoopgw.recorder.statements import credentials

_MESSAGE_KEYS: Final = frozenset({"message", "errormessage"})
_QUOTED: Final = re.compile(r"'[^']*(?:'|$)")
_QUOTED_REDACTED: Final = f"'{redaction.REDACTED}'"
BINDS_CREDENTIAL: Final = "credential"
UNREADABLE_SQL: Final = "unreadable sql"


# --- types ---------------------------------------------------------------------------


class Client(TypedDict):
    """`client`: where the flow came from and which driver sent it."""

    address: str | None
    application: str | None
    version: str | None


class Record(TypedDict):
    """Fields every record of the gateway has before the spool numbers and chains it
    (`v`, `writer`, `seq`, `prev_hash`, `hash`: see `recorder.schema.COMMON_FIELDS`)."""

    kind: RecordKind
    session_id: str
    ts: float
    client: Client
    caller: NotRequired[dict[str, Any]]


class SessionStartRecord(Record):
    account: str | None
    login_name: str | None
    authenticator: str | None
    upstream_session_id: Any
    database: str | None
    schema: str | None
    warehouse: str | None
    role: str | None


class SessionEndRecord(Record):
    reason: str


class StatementOutcome(TypedDict, total=False):
    """The Snowflake fields of an answer, flat (v1): what listing, search and replay read."""

    success: bool
    query_id: Any
    statement_type_id: Any
    total: Any
    returned: Any
    result_format: Any
    database: Any
    schema: Any
    warehouse: Any
    role: Any
    columns: list[Any]
    chunk_count: int
    chunk_rows: int
    chunk_bytes: int
    partition_count: int
    stage_file_count: int
    stage_upload_count: int
    error_code: str
    sql_state: Any
    message: str


class RequestRecord(Record):
    """A `request`, or a `refusal` when the gateway answered the request itself."""

    flow_id: str
    endpoint: str
    method: str
    path: str
    headers: list[list[str]]
    body: dict[str, Any]
    request_id: NotRequired[str]
    sql: NotRequired[str]
    sql_truncated: NotRequired[int]
    bindings: NotRequired[Any]
    sequence_id: NotRequired[int]
    query_id: NotRequired[str | None]
    statements: NotRequired[list[Any]]
    guardrail: NotRequired[dict[str, Any]]
    refusal: NotRequired[dict[str, Any]]


class ResponseRecord(Record, StatementOutcome):
    flow_id: str
    endpoint: str
    status: int
    duration_ms: float
    headers: list[list[str]]
    body: dict[str, Any]
    refusal: NotRequired[dict[str, Any]]


class ErrorRecord(Record):
    flow_id: str
    error: str
    duration_ms: NotRequired[float]
    status: NotRequired[int]
    headers: NotRequired[list[list[str]]]
    body: NotRequired[dict[str, Any]]


# --- builders ------------------------------------------------------------------------


def new_record(
    kind: RecordKind,
    session_id: str | None,
    client: Client,
    caller: dict[str, Any] | None,
    **fields: Any,
) -> dict[str, Any]:
    """A record's common fields (`Record`), stamped now, then the kind's own `fields`."""
    record: dict[str, Any] = {
        "kind": kind,
        "session_id": session_id,
        "ts": time.time(),
        "client": client,
        **fields,
    }
    if caller is not None:
        record["caller"] = caller
    return record


def add_statement(record: dict[str, Any], body: dict[str, Any], body_limit: int) -> bool:
    """Add a statement request's SQL, bindings and driver fields from its JSON `body`.

    The SQL is stored with credential literals masked and cut to `body_limit`;
    a statement that binds a credential (`SET PASSWORD = ?`, `password => :1`,
    read off the SQL's tokens by `statements.credentials`) has every bind value
    masked, and so has one whose SQL cannot be read (`bindings_masked` says
    which). True when the SQL text had something masked, so that the answer's
    echoes of it are withheld too (`withhold_statement_echoes`).
    """
    masked = False
    sql = body.get("sqlText") or body.get("statement")
    if isinstance(sql, str):
        record["sql"] = redaction.redact_sql(sql)
        masked = record["sql"] != sql
        if len(record["sql"]) > body_limit:
            record["sql"] = record["sql"][:body_limit]
            record["sql_truncated"] = len(sql)
    if body.get("bindings"):
        record["bindings"] = body["bindings"]
        binds = credentials.binds_credential(sql) if isinstance(sql, str) else None
        if binds is not False:
            mask_bindings(record)
            record["bindings_masked"] = BINDS_CREDENTIAL if binds else UNREADABLE_SQL
    if isinstance(body.get("sequenceId"), int):
        record["sequence_id"] = body["sequenceId"]
    if "asyncExec" in body:
        record["async"] = bool(body["asyncExec"])
    return masked


def statement_outcome(answer: dict[str, Any]) -> StatementOutcome:
    """The Snowflake fields of an answer that listing, search and replay need (flat, v1)."""
    data = answer.get("data") if isinstance(answer.get("data"), dict) else {}
    assert isinstance(data, dict)
    success = answer.get("success")
    outcome: dict[str, Any] = {}
    if isinstance(success, bool):
        outcome["success"] = success
    for source, target in (
        ("queryId", "query_id"),
        ("statementTypeId", "statement_type_id"),
        ("total", "total"),
        ("returned", "returned"),
        ("queryResultFormat", "result_format"),
        ("finalDatabaseName", "database"),
        ("finalSchemaName", "schema"),
        ("finalWarehouseName", "warehouse"),
        ("finalRoleName", "role"),
    ):
        if data.get(source) is not None:
            outcome[target] = data[source]
    rowtype = data.get("rowtype")
    if isinstance(rowtype, list):
        outcome["columns"] = [col.get("name") for col in rowtype if isinstance(col, dict)]
    chunks = data.get("chunks")
    if isinstance(chunks, list):
        outcome["chunk_count"] = len(chunks)
        outcome["chunk_rows"] = sum(int(c.get("rowCount", 0)) for c in chunks)
        outcome["chunk_bytes"] = sum(int(c.get("uncompressedSize", 0)) for c in chunks)
    presigned = data.get("presignedUrls")
    if isinstance(presigned, list) and presigned:
        outcome["stage_file_count"] = len(presigned)
    stage = data.get("stageInfo")
    if isinstance(stage, dict) and isinstance(stage.get("presignedUrl"), str):
        if str(data.get("command") or "").upper() == "UPLOAD":
            outcome["stage_upload_count"] = 1
        elif "stage_file_count" not in outcome:
            outcome["stage_file_count"] = 1
    if success is False:
        code = answer.get("code") or data.get("errorCode")
        if code is not None:
            outcome["error_code"] = str(code)
        if data.get("sqlState") is not None:
            outcome["sql_state"] = data["sqlState"]
        if isinstance(answer.get("message"), str):
            outcome["message"] = redaction.redact_message(answer["message"])
    # SQL API v2 answers carry the handle and counts at the top level
    if "statementHandle" in answer:
        outcome["query_id"] = answer["statementHandle"]
        meta = answer.get("resultSetMetaData")
        if isinstance(meta, dict) and meta.get("numRows") is not None:
            outcome["total"] = meta["numRows"]
        partitions = meta.get("partitionInfo") if isinstance(meta, dict) else None
        if isinstance(partitions, list):
            outcome["partition_count"] = len(partitions)
    return outcome  # type: ignore[return-value]


def mask_bindings(record: dict[str, Any]) -> None:
    """Mask every bind value of a statement that binds a credential (`SET PASSWORD = ?`).

    Which placeholder carries the secret is not worth guessing: all values go.
    """

    def masked(bindings: Any) -> Any:
        if not isinstance(bindings, dict):
            return redaction.REDACTED
        return {
            name: {**item, "value": redaction.REDACTED} if isinstance(item, dict) else item
            for name, item in bindings.items()
        }

    record["bindings"] = masked(record["bindings"])
    body = record.get("body")
    if isinstance(body, dict) and isinstance(body.get("json"), dict):
        json_body = body["json"]
        if "bindings" in json_body:
            body["json"] = {**json_body, "bindings": masked(json_body["bindings"])}


def withhold_statement_echoes(record: dict[str, Any]) -> None:
    """Keep only the first line, quotes masked, of the error messages of such a statement.

    Parsers quote the statement around the error position, and that window can
    hold the credential literal (or the part of it that fits) without the word
    PASSWORD before it, which is all a message redactor can go by. Snowflake and
    fakesnow alike put the quoted statement after the first line.
    """
    if isinstance(record.get("message"), str):
        record["message"] = _first_line_masked(record["message"])
    body = record.get("body")
    if not isinstance(body, dict):
        return
    if "json" in body:
        body["json"] = _mask_messages(body["json"])
    for key in ("text", "sample"):
        if isinstance(body.get(key), str):
            body[key] = _first_line_masked(body[key])


def query_id_in_path(path: str) -> str | None:
    """The query id a monitoring or result request names in its path."""
    parts = [part for part in path.partition("?")[0].split("/") if part]
    if len(parts) >= 3 and parts[0] == "monitoring":
        return parts[2]
    if len(parts) >= 2 and parts[0] == "queries":
        return parts[1]
    return None


def milliseconds(start: float, end: float) -> float:
    """A duration as records keep it: milliseconds, three decimals."""
    return round((end - start) * 1000, 3)


def _mask_messages(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            key: _first_line_masked(item)
            if isinstance(item, str) and str(key).lower() in _MESSAGE_KEYS
            else _mask_messages(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_mask_messages(item) for item in value]
    return value


def _first_line_masked(text: str) -> str:
    first, newline, _ = text.partition("\n")
    masked = _QUOTED.sub(_QUOTED_REDACTED, first)
    return f"{masked} {redaction.REDACTED}" if newline or masked != first else masked
