"""`Statement`: one classified statement, what `classify` returns and the recorder stores."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from hoopgw.recorder.statements.context import Context


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement of a SQL text, classified.

    `has_where` is only set for UPDATE, DELETE and for MERGE with a WHEN
    MATCHED ... UPDATE or DELETE: True when its condition restricts the
    target's rows by the rule in `restriction` (`WHERE 1=1`, `WHERE x = x`,
    `MERGE ... ON TRUE` count as none). `replaces` is set for
    CREATE OR REPLACE and INSERT OVERWRITE.
    `read_only` means the statement can change neither data nor privileges.
    `inner` holds statements run from inside this one (SQL text given to
    EXECUTE IMMEDIATE, DML in a CTE, statement keywords in a scripting block).
    `hidden` says why part of what the statement does cannot be seen (SQL
    built at run time, a scripting block); policy treats such statements like
    unparsable ones. An object named by a run-time value (`IDENTIFIER($t)`,
    `TABLE(:name)`) is listed with every part unknown (`?.?.?`). `calls` lists
    the functions a query calls that can change state (SYSTEM$CANCEL_QUERY, ...).
    `changes_default_roles` is set for ALTER USER ... SET or UNSET of
    DEFAULT_ROLE or DEFAULT_SECONDARY_ROLES.
    `context` is the (database, schema) the names were resolved against and
    `new_context` the (database, schema) in force after the statement when it
    changes them (USE, CREATE DATABASE/SCHEMA, dropping the current one).
    """

    kind: str
    text: str
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    has_where: bool | None = None
    replaces: bool = False
    read_only: bool = False
    parse_error: str | None = None
    inner: tuple[Statement, ...] = ()
    hidden: str | None = None
    calls: tuple[str, ...] = ()
    changes_default_roles: bool = False
    context: Context = (None, None)
    new_context: Context | None = None

    @property
    def kinds(self) -> tuple[str, ...]:
        """This statement's kind and those of the statements it runs, in order, unique."""
        if not self.inner:
            return (self.kind,)
        return tuple(dict.fromkeys(self._walk_kinds()))

    def _walk_kinds(self) -> Iterator[str]:
        yield self.kind
        for statement in self.inner:
            yield from statement._walk_kinds()

    @property
    def objects(self) -> tuple[str, ...]:
        """Every object read or written, including by inner statements, unique."""
        if not self.inner:
            return tuple(dict.fromkeys(self.reads + self.writes))
        return tuple(dict.fromkeys(self._walk_objects()))

    def _walk_objects(self) -> Iterator[str]:
        yield from self.reads
        yield from self.writes
        for statement in self.inner:
            yield from statement._walk_objects()

    def as_record(self) -> dict[str, Any]:
        """The classification for a flow record. The text is left out: the recorder
        stores the redacted SQL, and this text would carry any credential literal."""
        record: dict[str, Any] = {
            "kind": self.kind,
            "reads": list(self.reads),
            "writes": list(self.writes),
            "read_only": self.read_only,
        }
        if self.has_where is not None:
            record["has_where"] = self.has_where
        if self.replaces:
            record["replaces"] = True
        if self.parse_error is not None:
            record["parse_error"] = self.parse_error
        if self.hidden is not None:
            record["hidden"] = self.hidden
        if self.changes_default_roles:
            record["changes_default_roles"] = True
        if self.calls:
            record["calls"] = list(self.calls)
        if self.inner:
            record["inner"] = [statement.as_record() for statement in self.inner]
        return record
