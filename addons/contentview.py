"""The Snowflake content view: an analyst reads statements and results, not JSON and base64.

    mitmweb -r session.flows -s addons/contentview.py

For Snowflake endpoints it outranks mitmproxy's JSON view and shows, in plain
text: who logged in and with which client, role, database and warehouse; each
statement's SQL (formatted) and bindings; each answer's outcome, query id,
statement type, row counts and chunk summary, with the first rows as a table
(Arrow `rowsetBase64` and JSON `rowset` alike); and error codes and messages.
Every other body is left to the other views.

Everything shown passes through the recorder's redaction first, so tokens and
passwords appear as "[REDACTED]" even in live flows where the body still holds
them. Results are bounded: at most `MAX_ROWS` rows are decoded, whatever the
size of the body.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import decimal
import textwrap
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import orjson
from mitmproxy import contentviews, http

from hoopgw.addons.protocol import Endpoint, classify
from hoopgw.recorder.redaction import REDACTED, redact_json, redact_sql

MAX_ROWS = 100
MAX_COLUMNS = 40
MAX_CELL_CHARS = 60
MAX_SQL_FORMAT_CHARS = 20_000
MAX_SQL_LINES = 200
LABEL_WIDTH = 17
LINE_WIDTH = 110

# Endpoints whose bodies this view explains; everything else goes to other views.
_ENDPOINTS = frozenset(
    {
        Endpoint.LOGIN,
        Endpoint.QUERY,
        Endpoint.TOKEN_REQUEST,
        Endpoint.ABORT,
        Endpoint.SQL_API,
        Endpoint.RESULT,
        Endpoint.MONITORING,
    }
)
# hoopgw's own refusal codes (addons/snowflake.py, docs/errors.md).
_GATEWAY_CODES = {
    399001: "refused by hoopgw: malformed request",
    399002: "refused by hoopgw: could not be recorded",
    399003: "blocked by hoopgw policy",
}
_STATEMENT_TYPES = {
    0x0000: "UNKNOWN",
    0x1000: "SELECT",
    0x3000: "DML",
    0x3100: "INSERT",
    0x3200: "UPDATE",
    0x3300: "DELETE",
    0x3400: "MERGE",
    0x3500: "MULTI-TABLE INSERT",
    0x3600: "COPY",
    0x3700: "UNLOAD",
    0x4000: "SESSION CONTROL",
    0x4100: "ALTER SESSION",
    0x4300: "USE",
    0x4400: "SHOW",
    0x4500: "DESCRIBE",
    0x5000: "TRANSACTION",
    0x6000: "DDL",
    0x7000: "FILE OPERATION",
}
_STATEMENT_FAMILIES = {
    0x1000: "SELECT",
    0x3000: "DML",
    0x4000: "SESSION CONTROL",
    0x5000: "TRANSACTION",
    0x6000: "DDL",
    0x7000: "FILE OPERATION",
}


class SnowflakeContentview(contentviews.Contentview):
    """Renders Snowflake REST bodies for people; steps aside for anything else."""

    name = "Snowflake"
    syntax_highlight = "none"

    def render_priority(self, data: bytes, metadata: contentviews.Metadata) -> float:
        if _subject(metadata) is None or data.lstrip()[:1] != b"{":
            return -1
        return 2  # above mitmproxy's JSON view (1)

    def prettify(self, data: bytes, metadata: contentviews.Metadata) -> str:
        subject = _subject(metadata)
        body = orjson.loads(data)
        if not isinstance(body, dict):
            raise ValueError("not a JSON object")
        endpoint, is_request = subject if subject else (Endpoint.OTHER, True)
        hoopgw = _hoopgw_metadata(metadata)
        return render(endpoint, is_request, body, hoopgw=hoopgw, query=_query(metadata))


snowflake_view = SnowflakeContentview()
contentviews.add(snowflake_view)


def _subject(metadata: contentviews.Metadata) -> tuple[Endpoint, bool] | None:
    """(endpoint, is the request) for an HTTP body of a Snowflake endpoint, else None."""
    flow = metadata.flow
    message = metadata.http_message
    if not isinstance(flow, http.HTTPFlow) or message is None:
        return None
    endpoint = classify(flow.request.path)
    if endpoint not in _ENDPOINTS:
        return None
    return endpoint, message is flow.request


def _hoopgw_metadata(metadata: contentviews.Metadata) -> dict[str, Any]:
    flow = metadata.flow
    value = flow.metadata.get("hoopgw") if flow is not None else None
    return value if isinstance(value, dict) else {}


def _query(metadata: contentviews.Metadata) -> dict[str, str]:
    flow = metadata.flow
    if not isinstance(flow, http.HTTPFlow):
        return {}
    return {key: value for key, value in flow.request.query.items(multi=True)}


# --- rendering -----------------------------------------------------------------------


class Report:
    """Plain-text lines: a title, aligned `label  value` fields, and indented blocks.

    A plain class, like the rest of this module: mitmproxy's script loader runs
    the file outside sys.modules, where dataclasses cannot resolve annotations.
    """

    def __init__(self, after_title: list[tuple[str, Any]] | None = None) -> None:
        self.lines: list[str] = []
        self.after_title = after_title or []

    def title(self, text: str) -> None:
        self.lines.append(text)
        self.lines.append("=" * len(text))
        for label, value in self.after_title:
            self.field(label, value)

    def field(self, label: str, value: Any) -> None:
        """`label  value`; long or multi-line values wrap under the value column."""
        if value is None or value == "":
            return
        width = max(20, LINE_WIDTH - LABEL_WIDTH)
        wrapped = [
            piece
            for line in str(value).splitlines()
            for piece in (textwrap.wrap(line, width, drop_whitespace=False) or [""])
        ] or [""]
        self.lines.append(f"{label:<{LABEL_WIDTH}}{wrapped[0]}".rstrip())
        self.lines.extend(f"{'':<{LABEL_WIDTH}}{piece}".rstrip() or " " for piece in wrapped[1:])

    def blank(self) -> None:
        # one space, not an empty line: mitmweb collapses empty lines to nothing
        if self.lines and self.lines[-1].strip():
            self.lines.append(" ")

    def section(self, heading: str, body: Iterable[str]) -> None:
        self.blank()
        self.lines.append(heading)
        self.lines.append("-" * len(heading))
        self.lines.extend(f"  {line}" if line else " " for line in body)

    def text(self) -> str:
        return "\n".join(self.lines).rstrip() + "\n"


def render(
    endpoint: Endpoint,
    is_request: bool,
    body: dict[str, Any],
    *,
    hoopgw: dict[str, Any] | None = None,
    query: dict[str, str] | None = None,
) -> str:
    """The view's text for one decoded body; pure, so it is tested without mitmproxy."""
    side = "request" if is_request else "response"
    truncated = _dict(_dict((hoopgw or {}).get("truncated")).get(side))
    report = Report(after_title=_hoopgw_fields(hoopgw or {}))
    if endpoint is Endpoint.LOGIN:
        if is_request:
            _login_request(report, body, query or {})
        else:
            _login_response(report, body)
    elif endpoint in (Endpoint.QUERY, Endpoint.ABORT):
        if is_request:
            _query_request(report, endpoint, body)
        else:
            _query_response(report, endpoint, body, truncated)
    elif endpoint is Endpoint.RESULT:
        _query_response(report, endpoint, body, truncated)
    elif endpoint is Endpoint.SQL_API:
        if is_request:
            _sql_api_request(report, body)
        else:
            _sql_api_response(report, body, truncated)
    elif endpoint is Endpoint.TOKEN_REQUEST:
        _token_request(report, body, is_request)
    elif endpoint is Endpoint.MONITORING:
        _monitoring(report, body)
    else:
        report.title("Snowflake")
        report.section("Body", _json_lines(redact_json(body)))
    _truncation_section(report, truncated)
    return report.text()


def _hoopgw_fields(hoopgw: dict[str, Any]) -> list[tuple[str, Any]]:
    """The gateway's view of the flow, shown under every title: whose it is, what it decided."""
    refusal = _dict(hoopgw.get("refusal"))
    guardrail = _dict(hoopgw.get("guardrail"))
    rule = guardrail.get("rule")
    return [
        ("hoopgw session", hoopgw.get("session_id")),
        ("Caller", hoopgw.get("caller")),
        ("Caller role", hoopgw.get("role")),
        ("Refused by", f"{refusal.get('by')}: {refusal.get('reason')}" if refusal else None),
        (
            "Guardrail",
            f"{guardrail.get('decision')}" + (f" (rule {rule})" if rule else "")
            if guardrail
            else None,
        ),
    ]


def _truncation_section(report: Report, truncated: dict[str, Any]) -> None:
    if not truncated:
        return
    note = f"This body was truncated in the recording ({_bytes(truncated.get('size'))} originally"
    if truncated.get("sha256"):
        note += f", sha256 {str(truncated['sha256'])[:16]}…"
    lines = [note + ")."]
    if truncated.get("streamed"):
        lines.append(
            "It was streamed to the client as it arrived; the recording keeps its size, "
            "hash and outline, not its rows."
        )
    for path, length in list(_dict(truncated.get("trimmed")).items())[:10]:
        lines.append(f"cut: {path} (was {_int(length) or 0:,} long)")
    for path, length in list(_dict(truncated.get("elided")).items())[:10]:
        lines.append(f"left out: {path} ({_bytes(length)})")
    report.section("Recording", lines)


def _rows_kept(result: DecodedRows, total: int | None, truncated: dict[str, Any]) -> DecodedRows:
    """An empty inline result of a body cut in the recording says that the rows are missing.

    A streamed answer's record keeps `rowsetBase64: ""` or `rowset: []`: not no
    rows, but rows not on record.
    """
    if truncated and not result.rows and not result.problem and (total or 0) > 0:
        return DecodedRows([], 0, "the rows are not in the recording (the body was truncated)")
    return result


# --- login ---------------------------------------------------------------------------


def _login_request(report: Report, body: dict[str, Any], query: dict[str, str]) -> None:
    data = _dict(redact_json(body).get("data"))
    report.title("Snowflake login request")
    report.field("Account", data.get("ACCOUNT_NAME"))
    report.field("Login name", data.get("LOGIN_NAME"))
    report.field("Authenticator", data.get("AUTHENTICATOR") or "SNOWFLAKE (password)")
    for secret in ("TOKEN", "PASSWORD", "PASSCODE", "PRIVATE_KEY"):
        if secret in data:
            report.field(secret.capitalize().replace("_", " "), f"{REDACTED} (present)")
    client = " ".join(
        str(data[key]) for key in ("CLIENT_APP_ID", "CLIENT_APP_VERSION") if key in data
    )
    report.field("Client", client)
    environment = _dict(data.get("CLIENT_ENVIRONMENT"))
    shown = ("APPLICATION", "OS", "OS_VERSION", "PYTHON_VERSION", "PYTHON_RUNTIME")
    report.field(
        "Environment",
        ", ".join(f"{key}={environment[key]}" for key in shown if environment.get(key)),
    )
    report.field("Database", query.get("databaseName"))
    report.field("Schema", query.get("schemaName"))
    report.field("Warehouse", query.get("warehouse"))
    report.field("Role", query.get("roleName"))
    parameters = _dict(data.get("SESSION_PARAMETERS"))
    if parameters:
        report.section(
            f"Session parameters ({len(parameters)})",
            (f"{name} = {_scalar(value)}" for name, value in parameters.items()),
        )


def _login_response(report: Report, body: dict[str, Any]) -> None:
    redacted = redact_json(body)
    data = _dict(redacted.get("data"))
    if not redacted.get("success", False):
        report.title("Snowflake login response: FAILED")
        _error_fields(report, redacted, data)
        return
    report.title("Snowflake login response: success")
    info = _dict(data.get("sessionInfo"))
    report.field("Session id", data.get("sessionId"))
    report.field("Database", info.get("databaseName"))
    report.field("Schema", info.get("schemaName"))
    report.field("Warehouse", info.get("warehouseName"))
    report.field("Role", info.get("roleName"))
    report.field("Server version", data.get("serverVersion"))
    if "token" in data:
        report.field(
            "Session token", _token_summary(data.get("token"), data.get("validityInSeconds"))
        )
    if "masterToken" in data:
        report.field(
            "Master token",
            _token_summary(data.get("masterToken"), data.get("masterValidityInSeconds")),
        )
    parameters = data.get("parameters")
    if isinstance(parameters, list) and parameters:
        report.section(
            f"Session parameters ({len(parameters)})",
            (
                f"{item.get('name')} = {_scalar(item.get('value'))}"
                for item in parameters
                if isinstance(item, dict)
            ),
        )


def _token_summary(token: Any, validity: Any) -> str:
    shown = REDACTED if token is not None else "(none)"
    return f"{shown}, valid {validity} s" if validity is not None else shown


# --- statements ----------------------------------------------------------------------


def _query_request(report: Report, endpoint: Endpoint, body: dict[str, Any]) -> None:
    redacted = redact_json(_without(body, "bindings"))
    if endpoint is Endpoint.ABORT:
        report.title("Snowflake abort request")
        report.field("Request id", redacted.get("requestId"))
    else:
        report.title("Snowflake query request")
        report.field("Sequence id", redacted.get("sequenceId"))
        if redacted.get("asyncExec"):
            report.field("Execution", "asynchronous")
        if redacted.get("describeOnly"):
            report.field("Describe only", "yes (no rows are produced)")
        if redacted.get("bindStage"):
            report.field("Bind stage", f"{redacted['bindStage']} (values uploaded to a stage)")
    sql = redacted.get("sqlText")
    if isinstance(sql, str):
        _sql_sections(report, sql)
    bindings = body.get("bindings")
    if isinstance(bindings, dict) and bindings:
        report.section(*_bindings(bindings))
    parameters = _dict(redacted.get("parameters"))
    if parameters:
        report.section(
            f"Statement parameters ({len(parameters)})",
            (f"{name} = {_scalar(value)}" for name, value in parameters.items()),
        )


def _sql_sections(report: Report, sql: str) -> None:
    formatted = format_sql(sql)
    if formatted is None:
        report.section("SQL", _bounded_lines(sql))
        return
    report.section("SQL (formatted)", _bounded_lines(formatted))
    if _normalised(formatted) != _normalised(sql):
        report.section("SQL as sent", _bounded_lines(sql))


def format_sql(sql: str) -> str | None:
    """sqlglot's pretty form in the Snowflake dialect, or None when it cannot parse `sql`."""
    if len(sql) > MAX_SQL_FORMAT_CHARS or not sql.strip():
        return None
    import sqlglot
    from sqlglot.errors import SqlglotError

    try:
        statements = sqlglot.transpile(
            sql,
            read="snowflake",
            write="snowflake",
            pretty=True,
            error_level=sqlglot.ErrorLevel.RAISE,
        )
    except (SqlglotError, RecursionError, ValueError):
        return None
    return ";\n".join(statements) if statements else None


def _normalised(sql: str) -> str:
    return " ".join(sql.replace("(", " ( ").replace(")", " ) ").split()).lower().rstrip(";")


def _bounded_lines(text: str) -> list[str]:
    lines = text.splitlines() or [""]
    if len(lines) > MAX_SQL_LINES:
        rest = len(lines) - MAX_SQL_LINES
        lines = [*lines[:MAX_SQL_LINES], f"… {rest} more lines"]
    return lines


def _bindings(bindings: dict[str, Any]) -> tuple[str, list[str]]:
    """Bind values as a table: one row per value, or one per row of an array binding."""
    names = list(bindings)
    values = [_dict(bindings[name]) for name in names]
    types = [str(value.get("type", "")) for value in values]
    columns = [
        _dict(redact_json({"name": name, "value": v.get("value")})).get("value")
        for name, v in zip(names, values, strict=True)
    ]
    if any(isinstance(column, list) for column in columns):
        count = max(len(column) if isinstance(column, list) else 1 for column in columns)
        rows = [
            [
                column[i] if isinstance(column, list) and i < len(column) else None
                for column in columns
            ]
            for i in range(min(count, MAX_ROWS))
        ]
        heading = f"Bindings: array of {count} rows" + (
            f", first {MAX_ROWS} shown" if count > MAX_ROWS else ""
        )
        cells = [[_cell(value) for value in row] for row in rows]
        return heading, table(names, cells, types=types)
    rows = [
        [name, kind, _cell(value)] for name, kind, value in zip(names, types, columns, strict=True)
    ]
    return f"Bindings ({len(names)})", table(["#", "type", "value"], rows)


def _query_response(
    report: Report, endpoint: Endpoint, body: dict[str, Any], truncated: dict[str, Any]
) -> None:
    data_raw = _dict(body.get("data"))
    redacted = redact_json(_without(body, "data"))
    data = redact_json(_without(data_raw, "rowset", "rowsetBase64"))
    what = "result" if endpoint is Endpoint.RESULT else "response"
    kind = "abort" if endpoint is Endpoint.ABORT else "query"
    if not redacted.get("success", True):
        report.title(f"Snowflake {kind} {what}: FAILED")
        _error_fields(report, redacted, data)
        return
    report.title(f"Snowflake {kind} {what}: success")
    report.field("Query id", data.get("queryId"))
    report.field("Statement type", _statement_type(data.get("statementTypeId")))
    if redacted.get("code") or redacted.get("message"):
        report.field(
            "Status", " ".join(str(redacted.get(k) or "") for k in ("code", "message")).strip()
        )
    report.field(
        "Context",
        _context(
            data.get("finalDatabaseName"),
            data.get("finalSchemaName"),
            data.get("finalWarehouseName"),
            data.get("finalRoleName"),
        ),
    )
    rowtype = [column for column in data.get("rowtype") or [] if isinstance(column, dict)]
    chunks = [chunk for chunk in data.get("chunks") or [] if isinstance(chunk, dict)]
    total = _int(data.get("total"))
    result = _rows_kept(decode_rowset(data_raw, rowtype), total, truncated)
    report.field("Rows", _row_counts(total, data.get("returned"), result, chunks))
    report.field("Result format", data.get("queryResultFormat"))
    if chunks:
        report.field("Chunks", _chunk_summary(chunks))
    if data.get("stageInfo") is not None:
        stage = _dict(data.get("stageInfo"))
        report.field(
            "Stage", f"{stage.get('locationType')} {stage.get('location')} (credentials redacted)"
        )
    if rowtype:
        _result_table(report, rowtype, result, total, chunks)


def _result_table(
    report: Report,
    rowtype: list[dict[str, Any]],
    result: DecodedRows,
    total: int | None,
    chunks: list[dict[str, Any]],
) -> None:
    names = [str(column.get("name")) for column in rowtype]
    types = [_column_type(column) for column in rowtype]
    if result.problem:
        report.section("Result", [f"rows not shown: {result.problem}"])
        return
    overall = total if total is not None else result.count
    shown = len(result.rows)
    if shown == 0:
        heading = "Result: no rows" if not overall else f"Result: {_rows(overall)}, none inline"
    elif shown < overall:
        heading = f"Result: first {shown:,} of {_rows(overall)}"
    else:
        heading = f"Result: {_rows(overall)}"
    lines = table(names, result.rows, types=types)
    if shown < result.count:
        lines.append(f"… {result.count - shown:,} more inline rows not shown")
    if chunks:
        rows_in_chunks = sum(_int(chunk.get("rowCount")) or 0 for chunk in chunks)
        lines.append(
            f"… {rows_in_chunks:,} rows in {len(chunks)} chunks, fetched by the client "
            "from cloud storage, not through the gateway"
        )
    report.section(heading, lines)


def _row_counts(
    total: int | None, returned: Any, result: DecodedRows, chunks: list[dict[str, Any]]
) -> str | None:
    parts = []
    if total is not None:
        parts.append(f"{total:,} total")
    if (result.count or total) and not result.problem:
        parts.append(f"{result.count:,} inline")
    if returned is not None and _int(returned) != total:
        parts.append(f"{returned} returned")
    if chunks:
        parts.append(f"{sum(_int(c.get('rowCount')) or 0 for c in chunks):,} in chunks")
    return ", ".join(parts) or None


def _rows(count: int) -> str:
    return f"{count:,} row" if count == 1 else f"{count:,} rows"


def _chunk_summary(chunks: list[dict[str, Any]]) -> str:
    rows = sum(_int(chunk.get("rowCount")) or 0 for chunk in chunks)
    uncompressed = sum(_int(chunk.get("uncompressedSize")) or 0 for chunk in chunks)
    compressed = sum(_int(chunk.get("compressedSize")) or 0 for chunk in chunks)
    return (
        f"{len(chunks)} chunks, {rows:,} rows, {_bytes(uncompressed)} uncompressed, "
        f"{_bytes(compressed)} compressed (downloaded directly from cloud storage)"
    )


def _error_fields(report: Report, answer: dict[str, Any], data: dict[str, Any]) -> None:
    code = answer.get("code") or data.get("errorCode")
    report.field("Error code", code)
    gateway = _GATEWAY_CODES.get(_int(code) or 0)
    report.field("Refusal", gateway)
    report.field("SQL state", data.get("sqlState"))
    message = answer.get("message")
    # error messages may quote the statement, credential literals included
    report.field("Message", redact_sql(message) if isinstance(message, str) else message)
    report.field("Query id", data.get("queryId"))


# --- SQL API v2 ----------------------------------------------------------------------


def _sql_api_request(report: Report, body: dict[str, Any]) -> None:
    redacted = redact_json(_without(body, "bindings"))
    report.title("Snowflake SQL API statement")
    report.field(
        "Context",
        _context(
            redacted.get("database"),
            redacted.get("schema"),
            redacted.get("warehouse"),
            redacted.get("role"),
        ),
    )
    report.field("Timeout", redacted.get("timeout"))
    sql = redacted.get("statement")
    if isinstance(sql, str):
        _sql_sections(report, sql)
    bindings = body.get("bindings")
    if isinstance(bindings, dict) and bindings:
        report.section(*_bindings(bindings))


def _sql_api_response(report: Report, body: dict[str, Any], truncated: dict[str, Any]) -> None:
    redacted = redact_json(_without(body, "data"))
    meta = _dict(redacted.get("resultSetMetaData"))
    failed = "sqlState" in redacted and redacted.get("code") not in (None, "090001", "333334")
    report.title("Snowflake SQL API answer" + (": FAILED" if failed else ""))
    report.field("Statement handle", redacted.get("statementHandle"))
    report.field("Code", redacted.get("code"))
    report.field("SQL state", redacted.get("sqlState"))
    report.field("Message", redacted.get("message"))
    total = _int(meta.get("numRows"))
    report.field("Rows", f"{total:,} total" if total is not None else None)
    partitions = meta.get("partitionInfo")
    if isinstance(partitions, list) and len(partitions) > 1:
        report.field("Partitions", f"{len(partitions)} (fetched with ?partition=N)")
    rowtype = [column for column in meta.get("rowType") or [] if isinstance(column, dict)]
    rows = body.get("data")
    if rowtype and isinstance(rows, list):
        result = _rows_kept(_json_rows(rows, rowtype), total, truncated)
        _result_table(report, rowtype, result, total, [])


# --- other endpoints -----------------------------------------------------------------


def _token_request(report: Report, body: dict[str, Any], is_request: bool) -> None:
    redacted = redact_json(body)
    if is_request:
        report.title("Snowflake session token request")
        report.field("Request type", redacted.get("requestType"))
        if "oldSessionToken" in redacted:
            report.field("Old token", REDACTED)
        return
    data = _dict(redacted.get("data"))
    if not redacted.get("success", False):
        report.title("Snowflake session token response: FAILED")
        _error_fields(report, redacted, data)
        return
    report.title("Snowflake session token response: renewed")
    report.field("Session id", data.get("sessionId"))
    report.field(
        "Session token", _token_summary(data.get("sessionToken"), data.get("validityInSecondsST"))
    )
    report.field(
        "Master token", _token_summary(data.get("masterToken"), data.get("validityInSecondsMT"))
    )


def _monitoring(report: Report, body: dict[str, Any]) -> None:
    redacted = redact_json(body)
    data = _dict(redacted.get("data"))
    report.title("Snowflake query status")
    if not redacted.get("success", True):
        _error_fields(report, redacted, data)
        return
    queries = [query for query in data.get("queries") or [] if isinstance(query, dict)]
    rows = [
        [
            _cell(query.get("id")),
            _cell(query.get("status")),
            _cell(query.get("errorCode")),
            _cell(query.get("errorMessage") or query.get("sqlText")),
        ]
        for query in queries[:MAX_ROWS]
    ]
    report.section(
        f"Queries ({len(queries)})", table(["query id", "status", "error", "detail"], rows)
    )


# --- rows ----------------------------------------------------------------------------


class DecodedRows(NamedTuple):
    """The first rows of an inline result as display strings, and how many there are."""

    rows: list[list[str]]
    count: int
    problem: str | None = None


def decode_rowset(data: dict[str, Any], rowtype: Sequence[dict[str, Any]]) -> DecodedRows:
    """The first `MAX_ROWS` inline rows of a query answer, from `rowsetBase64` or `rowset`."""
    encoded = data.get("rowsetBase64")
    if isinstance(encoded, str) and encoded:
        return decode_arrow(encoded, rowtype)
    rows = data.get("rowset")
    if isinstance(rows, list):
        return _json_rows(rows, rowtype)
    return DecodedRows([], 0)


def _json_rows(rows: list[Any], rowtype: Sequence[dict[str, Any]]) -> DecodedRows:
    shown = rows[:MAX_ROWS]
    kinds = [str(column.get("type", "")).upper() for column in rowtype]
    scales = [_int(column.get("scale")) or 0 for column in rowtype]
    cells = []
    for row in redact_json(shown):
        values = row if isinstance(row, list) else [row]
        cells.append(
            [
                _json_cell(
                    value, kinds[i] if i < len(kinds) else "", scales[i] if i < len(scales) else 0
                )
                for i, value in enumerate(values)
            ]
        )
    return DecodedRows(cells, len(rows))


def _json_cell(value: Any, kind: str, scale: int) -> str:
    """Snowflake's JSON rowset sends dates as days and times as epoch seconds, as strings."""
    if not isinstance(value, str):
        return _cell(value)
    try:
        if kind == "DATE":
            return (datetime.date(1970, 1, 1) + datetime.timedelta(days=int(value))).isoformat()
        if kind == "TIME":
            seconds, _, fraction = value.partition(".")
            return _time_of_day(int(seconds), _nanos(fraction))
        if kind in ("TIMESTAMP_NTZ", "TIMESTAMP_LTZ", "TIMESTAMP_TZ"):
            stamp, _, offset = value.partition(" ")
            seconds, _, fraction = stamp.partition(".")
            minutes = int(offset) - 1440 if offset else None
            return _timestamp(int(seconds), _nanos(fraction), kind, minutes)
    except (ValueError, OverflowError):
        pass
    return _cell(value)


def decode_arrow(encoded: str, rowtype: Sequence[dict[str, Any]]) -> DecodedRows:
    """Decode only as many Arrow record batches as the first rows need; count the rest."""
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return DecodedRows(
            [], 0, "the Arrow rowset is not valid base64 (truncated in the recording?)"
        )
    import pyarrow as pa

    try:
        reader = pa.ipc.open_stream(pa.py_buffer(raw))
        schema = reader.schema
        batches = []
        count = 0
        wanted = MAX_ROWS
        for batch in reader:
            if wanted > 0:
                batches.append(batch.slice(0, wanted))
                wanted -= min(wanted, batch.num_rows)
            count += batch.num_rows
    except (pa.ArrowInvalid, OSError, ValueError) as exc:
        return DecodedRows([], 0, f"the Arrow rowset cannot be read ({str(exc)[:120]})")
    columns: list[list[Any]] = [[] for _ in schema]
    for batch in batches:
        for index in range(batch.num_columns):
            columns[index].extend(batch.column(index).to_pylist())
    converters = [
        _arrow_converter(schema.field(i), rowtype[i] if i < len(rowtype) else {})
        for i in range(len(schema))
    ]
    shown = len(columns[0]) if columns else 0
    rows = [[converters[c](columns[c][r]) for c in range(len(columns))] for r in range(shown)]
    redacted = redact_json(rows)
    return DecodedRows(redacted, count)


def _arrow_converter(arrow_field: Any, column: dict[str, Any]) -> Any:
    """A function from one Arrow Python value to its display text, per Snowflake's encoding."""
    meta = {key.decode(): value.decode() for key, value in (arrow_field.metadata or {}).items()}
    kind = str(column.get("type") or meta.get("logicalType") or "").upper()
    scale = _int(column.get("scale"))
    if scale is None:
        scale = _int(meta.get("scale")) or 0

    def convert(value: Any) -> str:
        if value is None:
            return "NULL"
        try:
            if kind == "FIXED" and isinstance(value, int) and scale:
                return str(decimal.Decimal(value).scaleb(-scale))
            if kind == "TIME" and isinstance(value, int):
                seconds, fraction = divmod(value, 10**scale)
                return _time_of_day(seconds, fraction * 10 ** (9 - scale) if scale <= 9 else 0)
            if kind.startswith("TIMESTAMP"):
                return _arrow_timestamp(value, kind, scale)
            if isinstance(value, bytes):
                return value.hex()
        except (ValueError, OverflowError, TypeError):
            pass
        return _cell(value)

    return convert


def _arrow_timestamp(value: Any, kind: str, scale: int) -> str:
    if isinstance(value, int):
        seconds, fraction = divmod(value, 10**scale)
        return _timestamp(seconds, fraction * 10 ** (9 - scale), kind, None)
    if isinstance(value, dict):
        offset = value.get("timezone")
        minutes = int(offset) - 1440 if offset is not None else None
        if value.get("epoch") is None:
            return "NULL"
        if "fraction" in value:
            return _timestamp(int(value["epoch"]), int(value["fraction"]), kind, minutes)
        seconds, fraction = divmod(int(value["epoch"]), 10**scale)
        return _timestamp(seconds, fraction * 10 ** (9 - scale), kind, minutes)
    if isinstance(value, datetime.datetime):
        return value.isoformat(sep=" ")
    return _cell(value)


def _timestamp(seconds: int, nanos: int, kind: str, offset_minutes: int | None) -> str:
    instant = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(
        seconds=seconds
    )
    suffix = ""
    if kind == "TIMESTAMP_TZ" and offset_minutes is not None:
        zone = datetime.timezone(datetime.timedelta(minutes=offset_minutes))
        instant = instant.astimezone(zone)
        sign = "+" if offset_minutes >= 0 else "-"
        suffix = f" {sign}{abs(offset_minutes) // 60:02d}:{abs(offset_minutes) % 60:02d}"
    elif kind == "TIMESTAMP_LTZ":
        suffix = " UTC"
    text = instant.strftime("%Y-%m-%d %H:%M:%S")
    if nanos:
        text += f".{nanos:09d}".rstrip("0")
    return text + suffix


def _time_of_day(seconds: int, nanos: int) -> str:
    hours, rest = divmod(seconds, 3600)
    text = f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"
    return text + (f".{nanos:09d}".rstrip("0") if nanos else "")


def _nanos(fraction: str) -> int:
    return int((fraction + "000000000")[:9]) if fraction else 0


# --- tables and values ---------------------------------------------------------------


def table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, types: Sequence[str] | None = None
) -> list[str]:
    """A plain-text table with a `|` grid; numbers right-aligned, at most MAX_COLUMNS wide."""
    extra = max(0, len(headers) - MAX_COLUMNS)
    headers = [_cell(name) for name in headers[:MAX_COLUMNS]]
    rows = [list(row[:MAX_COLUMNS]) for row in rows]
    type_row = [_cell(kind) for kind in types[:MAX_COLUMNS]] if types else None
    widths = [len(name) for name in headers]
    for line in ([type_row] if type_row else []) + rows:
        for index, value in enumerate(line[: len(widths)]):
            widths[index] = max(widths[index], len(value))
    numeric = [
        bool(rows) and all(_looks_numeric(row[index]) for row in rows if index < len(row))
        for index in range(len(headers))
    ]

    def line(values: Sequence[str], align: bool) -> str:
        cells = []
        for index, width in enumerate(widths):
            value = values[index] if index < len(values) else ""
            right = align and numeric[index] and value != "NULL"
            cells.append(value.rjust(width) if right else value.ljust(width))
        return "| " + " | ".join(cells) + " |"

    rule = "+-" + "-+-".join("-" * width for width in widths) + "-+"
    out = [rule, line(headers, False)]
    if type_row:
        out.append(line(type_row, False))
    out.append(rule.replace("-", "="))
    out.extend(line(row, True) for row in rows)
    out.append(rule)
    if extra:
        out.append(f"… {extra} more columns not shown")
    return out


def _looks_numeric(text: str) -> bool:
    if text == "NULL":
        return True
    try:
        decimal.Decimal(text)
    except decimal.InvalidOperation:
        return False
    return True


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = orjson.dumps(value).decode() if isinstance(value, dict | list) else str(value)
    text = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    if len(text) > MAX_CELL_CHARS:
        text = text[: MAX_CELL_CHARS - 1] + "…"
    return text


def _scalar(value: Any) -> str:
    return _cell(value) if not isinstance(value, str) else value[:200]


def _column_type(column: dict[str, Any]) -> str:
    kind = str(column.get("type", "")).upper()
    if kind == "FIXED":
        return f"NUMBER({column.get('precision')},{column.get('scale')})"
    if kind == "TEXT" and column.get("length"):
        return f"VARCHAR({column.get('length')})"
    return kind


def _statement_type(value: Any) -> str | None:
    number = _int(value)
    if number is None:
        return None
    name = _STATEMENT_TYPES.get(number) or _STATEMENT_FAMILIES.get(number & 0xF000)
    return f"{name} ({number})" if name else str(number)


def _context(database: Any, schema: Any, warehouse: Any, role: Any) -> str | None:
    parts = []
    if database or schema:
        parts.append(".".join(str(part) for part in (database, schema) if part))
    if warehouse:
        parts.append(f"warehouse {warehouse}")
    if role:
        parts.append(f"role {role}")
    return ", ".join(parts) or None


def _json_lines(value: Any) -> list[str]:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode().splitlines()[:MAX_SQL_LINES]


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _without(mapping: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {key: value for key, value in mapping.items() if key not in keys}


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _bytes(size: Any) -> str:
    number = _int(size)
    if number is None:
        return "?"
    amount = float(number)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024 or unit == "GiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{number} B"
