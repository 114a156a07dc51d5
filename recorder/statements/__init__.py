"""What a Snowflake SQL text does: statement kinds and the objects each statement touches.

The gateway's guardrails decide on these classifications before a statement
reaches Snowflake, the recorder stores them so sessions can be searched by
object, and the replay tool uses `read_only` to honour `--read-only`. Parsing is
sqlglot's Snowflake dialect, never regular expressions.

Names. Objects are reported fully qualified as Snowflake resolves them for DDL
and DML: unqualified and partly qualified names are completed with the current
database and schema (a `db..obj` name means the PUBLIC schema). Each part is
the identifier as Snowflake stores it: unquoted identifiers upper-cased, quoted
identifiers exactly as written (so `"Payroll"` stays `Payroll` and is a
different object from `payroll`, which is `PAYROLL`). A part that cannot be
known (no current database or schema) is `?`; a part that itself contains `.`,
`"` or `?` is written in double quotes. A name has three parts for schema
objects (`DB.SCHEMA.TABLE`), two for a schema (`DB.SCHEMA`) and one for a
database (`DB`), so a `USE SCHEMA` or `DROP DATABASE` is an object access too.
Account-level objects (roles, users, warehouses, integrations) are not listed.

Splitting. A multi-statement text is split on sqlglot tokens, so semicolons in
strings, `$$` blocks, quoted identifiers and comments (`--`, `//`, `/* */`)
never split. A Snowflake Scripting block (`BEGIN ... END`, `DECLARE ...`)
cannot be split reliably and is one `SCRIPT` statement up to the end of the text.
"""

from __future__ import annotations

import functools
import logging

from hoopgw.recorder.statements import names, tokens
from hoopgw.recorder.statements.classification import classify_text
from hoopgw.recorder.statements.context import Context, context_after
from hoopgw.recorder.statements.names import UNKNOWN_PART, render_name, split_name
from hoopgw.recorder.statements.seen import SeenOnce
from hoopgw.recorder.statements.shapes import ShapeCache, shape_of
from hoopgw.recorder.statements.statement import Statement
from hoopgw.recorder.statements.vocabulary import CACHE_SIZE, KINDS, READ_ONLY_KINDS

# sqlglot logs a warning for every statement it keeps as a generic Command
# (CALL, GET, many SHOW and GRANT forms); they are classified here, so the
# warning is noise in the gateway's log.
logging.getLogger("sqlglot").setLevel(logging.ERROR)

CACHE_MAX_CHARS = 64 * 1024
"""Texts longer than this are classified every time rather than kept in the cache."""
SEEN_MAX = 4 * CACHE_SIZE
"""Texts remembered as seen once (by hash) before the memory starts afresh."""

_seen_once = SeenOnce(SEEN_MAX)
"""Texts classified once. Only a text seen again enters the cache: an agent's statements
are mostly new, and each cached one is objects the cyclic collector walks in every full
pass (a full cache of new texts added about 2 ms to each such pass on the loop)."""

shapes = ShapeCache()
"""SELECTs that differ only in the values they compare columns to (`shapes`)."""


def classify(sql: str, *, database: str | None, schema: str | None) -> list[Statement]:
    """Classify each statement of `sql`, resolving names against the current
    database and schema (as Snowflake reports them: unquoted, case as stored).

    Never raises: a statement that cannot be parsed is kind UNKNOWN with
    `parse_error` set. A text seen before comes from a bounded LRU cache, a
    SELECT that differs from one seen before only in the values it compares
    columns to from another (`shapes`).
    """
    context = (database, schema)
    if len(sql) > CACHE_MAX_CHARS:
        return list(classify_text(sql, context, 0))
    if _seen_once.seen_before(hash((sql, database, schema))):
        return list(_classify_cached(sql, database, schema))
    return _classify_new(sql, context)


@functools.lru_cache(maxsize=CACHE_SIZE)
def _classify_cached(sql: str, database: str | None, schema: str | None) -> tuple[Statement, ...]:
    return tuple(_classify_new(sql, (database, schema)))


def _classify_new(sql: str, context: Context) -> list[Statement]:
    """A text the text cache does not hold: from its shape if one of its shape was
    classified, else parsed."""
    shape = shape_of(sql, context)
    if shape is None:
        return list(classify_text(sql, context, 0))
    statement = shapes.get(shape)
    if statement is not None:
        return [statement]
    statements = list(classify_text(sql, context, 0))
    shapes.put(shape, statements)
    return statements


def clear_cache() -> None:
    """Forget cached classifications, resolved names and kept tokens (benchmarks measure the
    uncached path)."""
    _classify_cached.cache_clear()
    _seen_once.clear()
    shapes.clear()
    names.forget()
    tokens.forget()


__all__ = [
    "CACHE_SIZE",
    "KINDS",
    "READ_ONLY_KINDS",
    "UNKNOWN_PART",
    "Statement",
    "classify",
    "clear_cache",
    "context_after",
    "render_name",
    "split_name",
]
