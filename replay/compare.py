"""Statement-by-statement comparison of a recorded outcome with a replayed one.

Pure functions over `Observation`s, so the rules are testable without a
Snowflake: outcome first (a statement that failed once and succeeds now is one
difference, not five), then for failures the error code, for successes the
row count, the column names and, when both sides hold them, the rows.
"""

from __future__ import annotations

import base64
import datetime
import decimal
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from hoopgw.recorder.session import outcome_label

_SAMPLE_ROWS: Final = 3


@dataclass(frozen=True, slots=True)
class Observation:
    """One side of the comparison: what a statement did.

    `success` None means unknown (nothing on record). `rows` None means the rows
    are not compared (not on record, or not fetched).
    """

    success: bool | None
    error_code: str | None = None
    sql_state: str | None = None
    message: str | None = None
    row_count: int | None = None
    columns: tuple[str, ...] | None = None
    rows: list[tuple[Any, ...]] | None = None

    @property
    def label(self) -> str:
        return outcome_label(self.success, self.error_code)

    def to_dict(self, *, with_rows: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "success": self.success,
            "error_code": self.error_code,
            "sql_state": self.sql_state,
            "message": self.message,
            "row_count": self.row_count,
            "columns": list(self.columns) if self.columns is not None else None,
            "rows_compared": self.rows is not None,
        }
        if with_rows and self.rows is not None:
            out["rows"] = [jsonable_row(row) for row in self.rows]
        return out


@dataclass(frozen=True, slots=True)
class Difference:
    """One aspect in which the replay differs from the recording."""

    aspect: str
    recorded: Any
    replayed: Any
    detail: str

    def __str__(self) -> str:
        return self.detail

    def to_dict(self) -> dict[str, Any]:
        return {
            "aspect": self.aspect,
            "recorded": self.recorded,
            "replayed": self.replayed,
            "detail": self.detail,
        }


def compare(recorded: Observation, replayed: Observation, *, ordered: bool) -> list[Difference]:
    """Differences between the two sides; empty when they match in everything compared."""
    if recorded.success is None:
        return []
    if recorded.success != replayed.success:
        return [
            Difference(
                "outcome",
                recorded.label,
                replayed.label,
                f"outcome: recorded {recorded.label}, replay {replayed.label}"
                + (f" ({replayed.message})" if replayed.message and not replayed.success else ""),
            )
        ]
    if not recorded.success:
        if recorded.error_code != replayed.error_code:
            return [
                Difference(
                    "error_code",
                    recorded.error_code,
                    replayed.error_code,
                    f"error code: recorded {recorded.error_code}, replay {replayed.error_code}",
                )
            ]
        return []
    differences: list[Difference] = []
    if (
        recorded.row_count is not None
        and replayed.row_count is not None
        and recorded.row_count != replayed.row_count
    ):
        differences.append(
            Difference(
                "row_count",
                recorded.row_count,
                replayed.row_count,
                f"row count: recorded {recorded.row_count}, replay {replayed.row_count}",
            )
        )
    if (
        recorded.columns is not None
        and replayed.columns is not None
        and recorded.columns != replayed.columns
    ):
        differences.append(
            Difference(
                "columns",
                list(recorded.columns),
                list(replayed.columns),
                f"columns: recorded {', '.join(recorded.columns)}; "
                f"replay {', '.join(replayed.columns)}",
            )
        )
    if recorded.rows is not None and replayed.rows is not None:
        rows = compare_rows(recorded.rows, replayed.rows, ordered=ordered)
        if rows is not None:
            differences.append(rows)
    return differences


def compare_rows(
    recorded: Sequence[tuple[Any, ...]], replayed: Sequence[tuple[Any, ...]], *, ordered: bool
) -> Difference | None:
    """Rows as multisets, and in order too when the statement fixed the order."""
    if list(recorded) == list(replayed):
        return None
    recorded_keys = Counter(_row_key(row) for row in recorded)
    replayed_keys = Counter(_row_key(row) for row in replayed)
    missing = recorded_keys - replayed_keys
    extra = replayed_keys - recorded_keys
    if not missing and not extra:
        if not ordered:
            return None
        return Difference("rows", None, None, "rows: the same rows in a different order")
    missing_rows = _pick(recorded, missing)
    extra_rows = _pick(replayed, extra)
    parts = []
    if missing:
        parts.append(f"{sum(missing.values())} recorded row(s) not returned")
    if extra:
        parts.append(f"{sum(extra.values())} row(s) not on record")
    detail = "rows: " + ", ".join(parts)
    if missing_rows and extra_rows:
        detail += f"; e.g. recorded {_show(missing_rows[0])}, replay {_show(extra_rows[0])}"
    elif missing_rows:
        detail += f"; e.g. {_show(missing_rows[0])}"
    elif extra_rows:
        detail += f"; e.g. {_show(extra_rows[0])}"
    return Difference(
        "rows",
        [jsonable_row(row) for row in missing_rows],
        [jsonable_row(row) for row in extra_rows],
        detail,
    )


def result_is_ordered(sql: str) -> bool:
    """Whether the (last) statement's result order is fixed by a top-level ORDER BY."""
    try:
        parsed = [node for node in sqlglot.parse(sql, read="snowflake") if node is not None]
    except SqlglotError:
        return False
    if not parsed:
        return False
    last = parsed[-1]
    return isinstance(last, exp.Query) and last.args.get("order") is not None


def jsonable(value: Any) -> Any:
    """A JSON-ready form of a value the connector returned."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    return str(value)


def jsonable_row(row: Sequence[Any]) -> list[Any]:
    return [jsonable(value) for value in row]


def _row_key(row: Sequence[Any]) -> str:
    return repr(tuple(row))


def _pick(rows: Sequence[tuple[Any, ...]], wanted: Counter[str]) -> list[tuple[Any, ...]]:
    remaining = Counter(wanted)
    picked = []
    for row in rows:
        key = _row_key(row)
        if remaining[key] > 0:
            remaining[key] -= 1
            picked.append(row)
            if len(picked) >= _SAMPLE_ROWS:
                break
    return picked


def _show(row: Sequence[Any]) -> str:
    text = "(" + ", ".join(repr(jsonable(value)) for value in row) + ")"
    return text if len(text) <= 120 else text[:117] + "..."
