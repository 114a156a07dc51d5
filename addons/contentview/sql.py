"""Statements as an analyst reads them: SQL formatted by sqlglot, bindings as a table."""

from __future__ import annotations

import datetime
from typing import Any, Final

from hoopgw.addons.contentview.report import Report
from hoopgw.addons.contentview.rows import MAX_ROWS
from hoopgw.addons.contentview.rows import _time_of_day as time_of_day
from hoopgw.addons.contentview.rows import _timestamp as timestamp
from hoopgw.addons.contentview.tables import cell, table
from hoopgw.recorder.coerce import mapping
from hoopgw.recorder.redaction import redact_json

MAX_SQL_FORMAT_CHARS = 20_000
MAX_SQL_LINES = 200
_TEMPORAL: Final = frozenset({"DATE", "TIME", "TIMESTAMP_NTZ", "TIMESTAMP_LTZ", "TIMESTAMP_TZ"})
_NANOS: Final = 1_000_000_000
_FAR_DATE_MILLIS: Final = 31_536_000_000_000


def sql_sections(report: Report, sql: str) -> None:
    """The SQL formatted; also as sent when formatting changed more than layout and case."""
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


def bindings_section(bindings: dict[str, Any]) -> tuple[str, list[str]]:
    """Bind values as a table: one row per value, or one per row of an array binding."""
    names = list(bindings)
    values = [mapping(bindings[name]) for name in names]
    types = [str(value.get("type", "")) for value in values]
    columns = [
        mapping(redact_json({"name": name, "value": v.get("value")})).get("value")
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
        cells = [
            [binding_cell(value, kind) for value, kind in zip(row, types, strict=True)]
            for row in rows
        ]
        return heading, table(names, cells, types=types)
    rows = [
        [name, kind, binding_cell(value, kind)]
        for name, kind, value in zip(names, types, columns, strict=True)
    ]
    return f"Bindings ({len(names)})", table(["#", "type", "value"], rows)


def binding_cell(value: Any, kind: str) -> str:
    """A bind value as the result rows show its type: drivers bind dates as epoch
    milliseconds, times as nanoseconds since midnight, timestamps as epoch nanoseconds
    (TIMESTAMP_TZ followed by its offset in minutes plus 1440)."""
    if not isinstance(value, str) or kind not in _TEMPORAL:
        return cell(value)
    try:
        if kind == "DATE":
            number = int(value)
            # bulk inserts bind far dates in nanoseconds, where milliseconds would overflow
            millis = number // 1_000_000 if number >= _FAR_DATE_MILLIS else number
            day = datetime.date(1970, 1, 1) + datetime.timedelta(milliseconds=millis)
            return day.isoformat()
        if kind == "TIME":
            seconds, nanos = divmod(int(value), _NANOS)
            return time_of_day(seconds, nanos)
        stamp, _, offset = value.strip().partition(" ")
        seconds, nanos = divmod(int(stamp), _NANOS)
        minutes = int(offset) - 1440 if offset else None
        return timestamp(seconds, nanos, kind, minutes)
    except (ValueError, OverflowError):
        return cell(value)
