"""What to mask for one caller: column globs, content kinds and the action on a detection.

A policy's rules say it per group (addons/guardrails.py parses them); the
gateway merges the rules that apply to a caller into one `MaskPlan`. A column
is named by its origin, `DATABASE.SCHEMA.TABLE.COLUMN`, as Snowflake's
`rowtype` reports it; an expression column has no origin table and is matched
by its name alone against the glob's last part when the glob's other parts are
all `*`.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from hoopgw.recorder.statements import split_name

Action = Literal["mask", "record", "withhold"]
ACTIONS: Final[tuple[Action, ...]] = ("record", "mask", "withhold")
"""From weakest to strongest: where two rules detect one kind, the stronger action wins."""


@dataclass(frozen=True, slots=True)
class ColumnPattern:
    """A `DATABASE.SCHEMA.TABLE.COLUMN` glob, matched part by part and case-insensitively."""

    text: str
    parts: tuple[re.Pattern[str], ...]
    any_origin: bool

    @classmethod
    def parse(cls, text: str) -> ColumnPattern:
        parts = split_name(text)
        if len(parts) != 4 or any(not part for part in parts):
            raise ValueError(
                f"{text!r} must have four dot-separated parts DATABASE.SCHEMA.TABLE.COLUMN, "
                "e.g. '*.*.CUSTOMERS.EMAIL'"
            )
        texts = [part or "" for part in parts]
        return cls(
            text=text,
            parts=tuple(re.compile(fnmatch.translate(part.upper())) for part in texts),
            any_origin=all(set(part) == {"*"} for part in texts[:3]),
        )

    def matches(self, column: Column) -> bool:
        origin = column.origin_parts
        if origin is None:
            return self.any_origin and self.parts[3].match(column.name.upper()) is not None
        return all(
            pattern.match(part.upper()) is not None
            for pattern, part in zip(self.parts, origin, strict=True)
        )


@dataclass(frozen=True, slots=True)
class Column:
    """A result column as `rowtype` (or the SQL API's `rowType`) describes it."""

    name: str
    type: str
    database: str | None = None
    schema: str | None = None
    table: str | None = None

    @classmethod
    def from_rowtype(cls, entry: Any) -> Column:
        if not isinstance(entry, dict):
            return cls(name="", type="")

        def text(key: str) -> str | None:
            value = entry.get(key)
            return value if isinstance(value, str) and value else None

        return cls(
            name=text("name") or "",
            type=(text("type") or "").lower(),
            database=text("database"),
            schema=text("schema"),
            table=text("table"),
        )

    @property
    def origin_parts(self) -> tuple[str, str, str, str] | None:
        if self.database and self.schema and self.table:
            return (self.database, self.schema, self.table, self.name)
        return None

    @property
    def label(self) -> str:
        """How records and errors name the column: its origin, or its name in the result."""
        origin = self.origin_parts
        return ".".join(origin) if origin is not None else self.name

    @property
    def textual(self) -> bool:
        """Whether a marker string can stand in a value (anything else becomes NULL).

        A column whose type the answer does not give is treated as text: in a
        JSON rowset every value is a string, and looking is the safe side.
        """
        return self.type in TEXT_TYPES or not self.type


TEXT_TYPES: Final = frozenset({"text", "variant", "object", "array", "string", "varchar"})


@dataclass(frozen=True, slots=True)
class MaskPlan:
    """A caller's masking: which columns are masked whole, which kinds are looked for, and how."""

    columns: tuple[ColumnPattern, ...] = ()
    detect: dict[str, Action] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return bool(self.columns or self.detect)

    def masks_column(self, column: Column) -> bool:
        return any(pattern.matches(column) for pattern in self.columns)

    @classmethod
    def merged(
        cls, parts: list[tuple[tuple[ColumnPattern, ...], frozenset[str], Action]]
    ) -> MaskPlan:
        """One plan from each applying rule's (mask_columns, detect, on_detect)."""
        columns: list[ColumnPattern] = []
        detect: dict[str, Action] = {}
        for patterns, kinds, action in parts:
            columns.extend(patterns)
            for kind in kinds:
                current = detect.get(kind)
                if current is None or ACTIONS.index(action) > ACTIONS.index(current):
                    detect[kind] = action
        if not columns and not detect:
            return NO_MASKING
        return cls(tuple(columns), detect)


NO_MASKING: Final = MaskPlan()


@dataclass(frozen=True, slots=True)
class Detection:
    """One column's finding: what kind, in how many values, and what the gateway did."""

    column: str
    kind: str
    count: int
    action: Action

    def as_record(self) -> dict[str, Any]:
        return {
            "column": self.column,
            "kind": self.kind,
            "count": self.count,
            "action": self.action,
        }


@dataclass(slots=True)
class Outcome:
    """What masking one answer found and did."""

    detections: list[Detection] = field(default_factory=list)
    changed: bool = False

    @property
    def withheld(self) -> Detection | None:
        return next((d for d in self.detections if d.action == "withhold"), None)

    def add(self, column: Column, kind: str, count: int, action: Action) -> None:
        for index, known in enumerate(self.detections):
            if known.column == column.label and known.kind == kind:
                merged = Detection(known.column, kind, known.count + count, action)
                self.detections[index] = merged
                return
        self.detections.append(Detection(column.label, kind, count, action))

    def as_record(self) -> list[dict[str, Any]]:
        return [detection.as_record() for detection in self.detections]
