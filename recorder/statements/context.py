"""The session's current database and schema, as statements change them.

Names are resolved against the (database, schema) in force when a statement
runs; USE, CREATE DATABASE/SCHEMA and dropping the current one change it for
the statements after.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hoopgw.recorder.statements.statement import Statement

Context = tuple[str | None, str | None]


def context_after(
    statements: Iterable[Statement], database: str | None, schema: str | None
) -> tuple[str | None, str | None]:
    """The session's (database, schema) once `statements` ran, starting from the given ones."""
    for statement in statements:
        if statement.new_context is not None:
            database, schema = statement.new_context
    return database, schema


def after_use(parts: Sequence[str] | None, level: int, context: Context) -> Context:
    """`USE DATABASE` (level 1) or `USE SCHEMA` (level 2) of the name `parts`.

    A name that cannot be read leaves the database (or both, for a database)
    unknown rather than keeping what was current.
    """
    database = context[0]
    if parts is None or len(parts) > level:
        return (None, None) if level == 1 else (database, None)
    if level == 1:
        return (parts[0], "PUBLIC")
    return (parts[0], parts[1]) if len(parts) == 2 else (database, parts[0])


def after_create(object_kind: str, parts: Sequence[str], context: Context) -> Context:
    """CREATE DATABASE/SCHEMA makes the new one current."""
    return _named(object_kind, parts, context)


def after_drop(object_kind: str, parts: Sequence[str], context: Context) -> Context | None:
    """Dropping the current database or schema unsets it; None when the context stays."""
    database, schema = context
    named = _named(object_kind, parts, context)
    if object_kind == "DATABASE" and named[0] == database:
        return (None, None)
    if object_kind == "SCHEMA" and named == (database, schema):
        return (database, None)
    return None


def _named(object_kind: str, parts: Sequence[str], context: Context) -> Context:
    if object_kind == "DATABASE":
        return (parts[0], "PUBLIC")
    return (parts[0], parts[1]) if len(parts) == 2 else (context[0], parts[0])
