"""What the package knows of Snowflake SQL: the parser, the statement kinds, their lead words."""

from __future__ import annotations

from sqlglot import exp
from sqlglot.dialects.snowflake import Snowflake

DIALECT = Snowflake()
MAX_DEPTH = 4
"""How deep EXECUTE IMMEDIATE, EXPLAIN and statements nested in queries are followed."""
CACHE_SIZE = 4096

KINDS: frozenset[str] = frozenset(
    {
        "SELECT",
        "INSERT",
        "UPDATE",
        "DELETE",
        "MERGE",
        "CREATE",
        "ALTER",
        "DROP",
        "UNDROP",
        "TRUNCATE",
        "GRANT",
        "REVOKE",
        "USE",
        "SHOW",
        "DESCRIBE",
        "CALL",
        "EXECUTE",
        "SCRIPT",
        "COPY",
        "PUT",
        "GET",
        "LIST",
        "REMOVE",
        "SET",
        "UNSET",
        "BEGIN",
        "COMMIT",
        "ROLLBACK",
        "EXPLAIN",
        "COMMENT",
        "UNKNOWN",
    }
)
"""Every statement kind `classify` reports."""

READ_ONLY_KINDS: frozenset[str] = frozenset(
    {
        "SELECT",
        "SHOW",
        "DESCRIBE",
        "EXPLAIN",
        "LIST",
        "GET",
        "SET",
        "UNSET",
        "BEGIN",
        "COMMIT",
        "ROLLBACK",
        "USE",
    }
)
"""Kinds that cannot change data or privileges (USE ROLE and nested writes aside)."""

LEAD_KINDS: dict[str, str] = {
    "SELECT": "SELECT",
    "INSERT": "INSERT",
    "UPDATE": "UPDATE",
    "DELETE": "DELETE",
    "MERGE": "MERGE",
    "CREATE": "CREATE",
    "ALTER": "ALTER",
    "DROP": "DROP",
    "UNDROP": "UNDROP",
    "TRUNCATE": "TRUNCATE",
    "GRANT": "GRANT",
    "REVOKE": "REVOKE",
    "USE": "USE",
    "SHOW": "SHOW",
    "DESC": "DESCRIBE",
    "DESCRIBE": "DESCRIBE",
    "CALL": "CALL",
    "EXECUTE": "EXECUTE",
    "COPY": "COPY",
    "PUT": "PUT",
    "GET": "GET",
    "LIST": "LIST",
    "LS": "LIST",
    "REMOVE": "REMOVE",
    "RM": "REMOVE",
    "SET": "SET",
    "UNSET": "UNSET",
    "BEGIN": "BEGIN",
    "START": "BEGIN",
    "COMMIT": "COMMIT",
    "ROLLBACK": "ROLLBACK",
    "EXPLAIN": "EXPLAIN",
    "COMMENT": "COMMENT",
    "DECLARE": "SCRIPT",
}

NODE_KINDS: tuple[tuple[type[exp.Expression], str], ...] = (
    (exp.Select, "SELECT"),
    (exp.SetOperation, "SELECT"),
    (exp.Subquery, "SELECT"),
    (exp.Values, "SELECT"),
    (exp.MultitableInserts, "INSERT"),
    (exp.Insert, "INSERT"),
    (exp.Update, "UPDATE"),
    (exp.Delete, "DELETE"),
    (exp.Merge, "MERGE"),
    (exp.Create, "CREATE"),
    (exp.Alter, "ALTER"),
    (exp.Drop, "DROP"),
    (exp.Undrop, "UNDROP"),
    (exp.TruncateTable, "TRUNCATE"),
    (exp.Grant, "GRANT"),
    (exp.Revoke, "REVOKE"),
    (exp.Copy, "COPY"),
    (exp.Put, "PUT"),
    (exp.Comment, "COMMENT"),
    (exp.Use, "USE"),
    (exp.Show, "SHOW"),
    (exp.Describe, "DESCRIBE"),
    (exp.Set, "SET"),
    (exp.ListStage, "LIST"),
    (exp.Get, "GET"),
    (exp.Transaction, "BEGIN"),
    (exp.Commit, "COMMIT"),
    (exp.Rollback, "ROLLBACK"),
)
WRITE_NODES: tuple[type[exp.Expression], ...] = (
    *(node for node, kind in NODE_KINDS if kind not in READ_ONLY_KINDS),
    exp.Command,
)

# Keywords of a Snowflake Scripting block that start statements; any of these
# inside a block is reported as a hidden statement of that kind.
SCRIPT_WRITE_WORDS: dict[str, str] = {
    word: kind for word, kind in LEAD_KINDS.items() if kind not in READ_ONLY_KINDS
}
SCRIPT_WRITE_WORDS.pop("DECLARE")


def node_kind(node: exp.Expression) -> str | None:
    """The kind of a statement sqlglot parsed, by its node type; None for one it has no kind for."""
    for node_type, kind in NODE_KINDS:
        if isinstance(node, node_type):
            return kind
    return None
