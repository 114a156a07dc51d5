"""The plain-text table the view draws results, bindings and query lists in."""

from __future__ import annotations

import decimal
from collections.abc import Sequence
from typing import Any

import orjson

MAX_COLUMNS = 40
MAX_CELL_CHARS = 60


def table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, types: Sequence[str] | None = None
) -> list[str]:
    """A plain-text table with a `|` grid; numbers right-aligned, at most MAX_COLUMNS wide."""
    extra = max(0, len(headers) - MAX_COLUMNS)
    headers = [cell(name) for name in headers[:MAX_COLUMNS]]
    rows = [list(row[:MAX_COLUMNS]) for row in rows]
    type_row = [cell(kind) for kind in types[:MAX_COLUMNS]] if types else None
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


def cell(value: Any) -> str:
    """One value on one line: NULL, JSON for objects and arrays, escaped, at most MAX_CELL_CHARS."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = orjson.dumps(value).decode() if isinstance(value, dict | list) else str(value)
    text = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    if len(text) > MAX_CELL_CHARS:
        text = text[: MAX_CELL_CHARS - 1] + "…"
    return text
