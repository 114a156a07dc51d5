"""Names read off sqlglot nodes, as Snowflake stores them; trees let go of."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlglot import exp

from hoopgw.recorder.statements.objects import parse_dotted


def keyword(value: Any) -> str:
    """An argument sqlglot keeps as a word (an object kind, a scope kind), upper-cased.

    Most are plain strings; USE keeps its kind as a `Var`, whose `str()` would render
    it through a new SQL generator (a third of classifying the whole statement).
    """
    text = value.name if isinstance(value, exp.Var) else str(value or "")
    return text.upper()


def identifier(node: Any) -> str | None:
    """A name part as Snowflake stores it: unquoted upper-cased, quoted as written."""
    if isinstance(node, exp.Identifier):
        args = node.args
        name = args.get("this")
        return name if args.get("quoted") else name.upper()
    if node == "":
        return ""  # the empty schema of `db..object`
    return None


_NAME_KEYS = ("catalog", "db", "this")


def table_parts(table: exp.Table) -> list[str] | None:
    """The name parts of a table node; IDENTIFIER('literal') counts as its literal."""
    args = table.args
    this = args.get("this")
    if isinstance(this, exp.DynamicIdentifier):
        value = this.this
        if isinstance(value, exp.Literal) and value.is_string:
            return parse_dotted(value.name)
        return None
    parts: list[str] = []
    for key in _NAME_KEYS:
        value = args.get(key)
        if value is None:
            continue
        name = identifier(value)
        if name is None:
            return None
        parts.append(name)
    return parts or None


def unlink(trees: Iterable[exp.Expression | None]) -> None:
    """Drop each node's link to its parent once a tree is read. sqlglot links both ways,
    so a tree let go of is a reference cycle only the cyclic collector frees, in passes
    on the gateway's event loop; unlinked, reference counting frees it at once."""
    for tree in trees:
        if tree is not None:
            for node in tree.dfs():
                node.parent = None
