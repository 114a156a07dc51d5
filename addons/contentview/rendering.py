"""The view's text for each Snowflake endpoint: login, statements, answers, SQL API, others.

Every value shown passes through the recorder's redaction first, so tokens and
passwords appear as "[REDACTED]" even in live flows where the body still
holds them.
"""

from __future__ import annotations

from typing import Any

import orjson

from hoopgw.addons.contentview import cortex
from hoopgw.addons.contentview.report import Report
from hoopgw.addons.contentview.rows import (
    MAX_ROWS,
    DecodedRows,
    decode_rowset,
    json_rows,
    rows_kept,
)
from hoopgw.addons.contentview.sql import MAX_SQL_LINES, bindings_section, sql_sections
from hoopgw.addons.contentview.tables import cell, table
from hoopgw.addons.protocol import CHUNK_PATH_PREFIX, GATEWAY_CODES, Endpoint
from hoopgw.recorder.coerce import mapping, wire_integer
from hoopgw.recorder.redaction import REDACTED, redact_json, redact_sql

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
    truncated = mapping(mapping((hoopgw or {}).get("truncated")).get(side))
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
            _query_response(report, endpoint, body, truncated, hoopgw or {})
    elif endpoint is Endpoint.RESULT:
        _query_response(report, endpoint, body, truncated, hoopgw or {})
    elif endpoint is Endpoint.SQL_API:
        if is_request:
            _sql_api_request(report, body)
        else:
            _sql_api_response(report, body, truncated, hoopgw or {})
    elif endpoint is Endpoint.TOKEN_REQUEST:
        _token_request(report, body, is_request)
    elif endpoint is Endpoint.MONITORING:
        _monitoring(report, body)
    elif endpoint is Endpoint.CORTEX_ANALYST:
        (cortex.analyst_request if is_request else cortex.analyst_answer)(report, body)
    elif endpoint is Endpoint.CORTEX_SEARCH:
        (cortex.search_request if is_request else cortex.search_answer)(report, body)
    else:
        report.title("Snowflake")
        report.section("Body", _json_lines(redact_json(body)))
    _truncation_section(report, truncated)
    return report.text()


def _hoopgw_fields(hoopgw: dict[str, Any]) -> list[tuple[str, Any]]:
    """The gateway's view of the flow, shown under every title: whose it is, what it decided."""
    refusal = mapping(hoopgw.get("refusal"))
    guardrail = mapping(hoopgw.get("guardrail"))
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
    for path, length in list(mapping(truncated.get("trimmed")).items())[:10]:
        lines.append(f"cut: {path} (was {wire_integer(length) or 0:,} long)")
    for path, length in list(mapping(truncated.get("elided")).items())[:10]:
        lines.append(f"left out: {path} ({_bytes(length)})")
    report.section("Recording", lines)


# --- login ---------------------------------------------------------------------------


def _login_request(report: Report, body: dict[str, Any], query: dict[str, str]) -> None:
    data = mapping(redact_json(body).get("data"))
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
    environment = mapping(data.get("CLIENT_ENVIRONMENT"))
    shown = ("APPLICATION", "OS", "OS_VERSION", "PYTHON_VERSION", "PYTHON_RUNTIME")
    report.field(
        "Environment",
        ", ".join(f"{key}={environment[key]}" for key in shown if environment.get(key)),
    )
    report.field("Database", query.get("databaseName"))
    report.field("Schema", query.get("schemaName"))
    report.field("Warehouse", query.get("warehouse"))
    report.field("Role", query.get("roleName"))
    parameters = mapping(data.get("SESSION_PARAMETERS"))
    if parameters:
        report.section(
            f"Session parameters ({len(parameters)})",
            (f"{name} = {_scalar(value)}" for name, value in parameters.items()),
        )


def _login_response(report: Report, body: dict[str, Any]) -> None:
    redacted = redact_json(body)
    data = mapping(redacted.get("data"))
    if not redacted.get("success", False):
        report.title("Snowflake login response: FAILED")
        _error_fields(report, redacted, data)
        return
    report.title("Snowflake login response: success")
    info = mapping(data.get("sessionInfo"))
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
        sql_sections(report, sql)
    bindings = body.get("bindings")
    if isinstance(bindings, dict) and bindings:
        report.section(*bindings_section(bindings))
    parameters = mapping(redacted.get("parameters"))
    if parameters:
        report.section(
            f"Statement parameters ({len(parameters)})",
            (f"{name} = {_scalar(value)}" for name, value in parameters.items()),
        )


def _query_response(
    report: Report,
    endpoint: Endpoint,
    body: dict[str, Any],
    truncated: dict[str, Any],
    hoopgw: dict[str, Any],
) -> None:
    data_raw = mapping(body.get("data"))
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
    total = wire_integer(data.get("total"))
    result = rows_kept(decode_rowset(data_raw, rowtype), total, truncated)
    report.field("Rows", _row_counts(total, data.get("returned"), result, chunks))
    report.field("Result format", data.get("queryResultFormat"))
    if chunks:
        report.field("Chunks", _chunk_summary(chunks))
        if _through_gateway(chunks):
            report.field("Integrity", _chunks_fetched(total, chunks, hoopgw))
    if data.get("stageInfo") is not None:
        stage = mapping(data.get("stageInfo"))
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
        rows_in_chunks = sum(wire_integer(chunk.get("rowCount")) or 0 for chunk in chunks)
        where = (
            "through the gateway, each chunk a flow of its own"
            if _through_gateway(chunks)
            else "by the client from cloud storage, not through the gateway"
        )
        lines.append(f"… {rows_in_chunks:,} rows in {len(chunks)} chunks, fetched {where}")
    report.section(heading, lines)


def _through_gateway(chunks: list[dict[str, Any]]) -> bool:
    """Chunk URLs the gateway rewrote: its own path live, `hoopgw:chunk/` on record."""
    urls = [str(chunk.get("url") or "") for chunk in chunks]
    return all(CHUNK_PATH_PREFIX in url or url.startswith("hoopgw:chunk/") for url in urls)


def _chunks_fetched(total: int | None, chunks: list[dict[str, Any]], hoopgw: dict[str, Any]) -> str:
    """ "N rows in M chunks, all fetched" or "K of M fetched", as far as the gateway has seen."""
    rows = f"{total:,} rows in " if total is not None else ""
    fetched = hoopgw.get("chunks_fetched")
    if not isinstance(fetched, int) or isinstance(fetched, bool):
        return f"{rows}{len(chunks)} chunks, fetches not seen here"
    if fetched >= len(chunks):
        return f"{rows}{len(chunks)} chunks, all fetched"
    return f"{rows}{len(chunks)} chunks, {fetched} of {len(chunks)} fetched"


def _row_counts(
    total: int | None, returned: Any, result: DecodedRows, chunks: list[dict[str, Any]]
) -> str | None:
    parts = []
    if total is not None:
        parts.append(f"{total:,} total")
    if (result.count or total) and not result.problem:
        parts.append(f"{result.count:,} inline")
    if returned is not None and wire_integer(returned) != total:
        parts.append(f"{returned} returned")
    if chunks:
        parts.append(f"{sum(wire_integer(c.get('rowCount')) or 0 for c in chunks):,} in chunks")
    return ", ".join(parts) or None


def _rows(count: int) -> str:
    return f"{count:,} row" if count == 1 else f"{count:,} rows"


def _chunk_summary(chunks: list[dict[str, Any]]) -> str:
    rows = sum(wire_integer(chunk.get("rowCount")) or 0 for chunk in chunks)
    uncompressed = sum(wire_integer(chunk.get("uncompressedSize")) or 0 for chunk in chunks)
    compressed = sum(wire_integer(chunk.get("compressedSize")) or 0 for chunk in chunks)
    return (
        f"{len(chunks)} chunks, {rows:,} rows, {_bytes(uncompressed)} uncompressed, "
        f"{_bytes(compressed)} compressed "
        + (
            "(fetched through the gateway)"
            if _through_gateway(chunks)
            else "(downloaded directly from cloud storage)"
        )
    )


def _error_fields(report: Report, answer: dict[str, Any], data: dict[str, Any]) -> None:
    code = answer.get("code") or data.get("errorCode")
    report.field("Error code", code)
    gateway = GATEWAY_CODES.get(wire_integer(code) or 0)
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
        sql_sections(report, sql)
    bindings = body.get("bindings")
    if isinstance(bindings, dict) and bindings:
        report.section(*bindings_section(bindings))


def _sql_api_response(
    report: Report, body: dict[str, Any], truncated: dict[str, Any], hoopgw: dict[str, Any]
) -> None:
    redacted = redact_json(_without(body, "data"))
    meta = mapping(redacted.get("resultSetMetaData"))
    failed = "sqlState" in redacted and redacted.get("code") not in (None, "090001", "333334")
    report.title("Snowflake SQL API answer" + (": FAILED" if failed else ""))
    report.field("Statement handle", redacted.get("statementHandle"))
    report.field("Code", redacted.get("code"))
    report.field("SQL state", redacted.get("sqlState"))
    report.field("Message", redacted.get("message"))
    total = wire_integer(meta.get("numRows"))
    report.field("Rows", f"{total:,} total" if total is not None else None)
    partitions = meta.get("partitionInfo")
    if isinstance(partitions, list) and len(partitions) > 1:
        report.field("Partitions", f"{len(partitions)} (fetched with ?partition=N)")
        fetched = hoopgw.get("partitions_fetched")
        if isinstance(fetched, int) and not isinstance(fetched, bool):
            count = len(partitions)
            state = "all fetched" if fetched >= count else f"{fetched} of {count} fetched"
            rows = f"{total:,} rows in " if total is not None else ""
            report.field("Integrity", f"{rows}{count} partitions, {state}")
    rowtype = [column for column in meta.get("rowType") or [] if isinstance(column, dict)]
    rows = body.get("data")
    if rowtype and isinstance(rows, list):
        result = rows_kept(json_rows(rows, rowtype), total, truncated)
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
    data = mapping(redacted.get("data"))
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
    data = mapping(redacted.get("data"))
    report.title("Snowflake query status")
    if not redacted.get("success", True):
        _error_fields(report, redacted, data)
        return
    queries = [query for query in data.get("queries") or [] if isinstance(query, dict)]
    rows = [
        [
            cell(query.get("id")),
            cell(query.get("status")),
            cell(query.get("errorCode")),
            cell(query.get("errorMessage") or query.get("sqlText")),
        ]
        for query in queries[:MAX_ROWS]
    ]
    report.section(
        f"Queries ({len(queries)})", table(["query id", "status", "error", "detail"], rows)
    )


# --- values ----------------------------------------------------------------------------


def _scalar(value: Any) -> str:
    return cell(value) if not isinstance(value, str) else value[:200]


def _column_type(column: dict[str, Any]) -> str:
    kind = str(column.get("type", "")).upper()
    if kind == "FIXED":
        return f"NUMBER({column.get('precision')},{column.get('scale')})"
    if kind == "TEXT" and column.get("length"):
        return f"VARCHAR({column.get('length')})"
    return kind


def _statement_type(value: Any) -> str | None:
    number = wire_integer(value)
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


def _without(mapping: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {key: value for key, value in mapping.items() if key not in keys}


def _bytes(size: Any) -> str:
    number = wire_integer(size)
    if number is None:
        return "?"
    amount = float(number)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024 or unit == "GiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{number} B"
