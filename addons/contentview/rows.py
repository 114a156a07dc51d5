"""Row decoding: the first rows of an answer as display text, from JSON or Arrow rowsets.

Only the rows shown are decoded (`MAX_ROWS`), whatever the size of the body;
the rest are counted. Values are written as Snowflake's clients show them
(dates, times and timestamps from their wire encodings, NUMBER with its
scale), then redacted like any body.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import decimal
from collections.abc import Sequence
from typing import Any, NamedTuple

from hoopgw.addons.contentview.tables import cell
from hoopgw.recorder.coerce import wire_integer
from hoopgw.recorder.redaction import redact_json

MAX_ROWS = 100


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
        return json_rows(rows, rowtype)
    return DecodedRows([], 0)


def json_rows(rows: list[Any], rowtype: Sequence[dict[str, Any]]) -> DecodedRows:
    """The first `MAX_ROWS` rows of a JSON rowset (query answer or SQL API `data`)."""
    shown = rows[:MAX_ROWS]
    kinds = [str(column.get("type", "")).upper() for column in rowtype]
    scales = [wire_integer(column.get("scale")) or 0 for column in rowtype]
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
        return cell(value)
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
    return cell(value)


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
    scale = wire_integer(column.get("scale"))
    if scale is None:
        scale = wire_integer(meta.get("scale")) or 0

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
        return cell(value)

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
    return cell(value)


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


def rows_kept(result: DecodedRows, total: int | None, truncated: dict[str, Any]) -> DecodedRows:
    """An empty inline result of a body cut in the recording says that the rows are missing.

    A streamed answer's record keeps `rowsetBase64: ""` or `rowset: []`: not no
    rows, but rows not on record.
    """
    if truncated and not result.rows and not result.problem and (total or 0) > 0:
        return DecodedRows([], 0, "the rows are not in the recording (the body was truncated)")
    return result
