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
import itertools
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlglot import exp
from sqlglot.dialects.snowflake import Snowflake
from sqlglot.errors import ParseError, TokenError
from sqlglot.optimizer.simplify import simplify
from sqlglot.tokens import Token, TokenType

# sqlglot logs a warning for every statement it keeps as a generic Command
# (CALL, GET, many SHOW and GRANT forms); they are classified here, so the
# warning is noise in the gateway's log.
logging.getLogger("sqlglot").setLevel(logging.ERROR)

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

UNKNOWN_PART = "?"
CACHE_SIZE = 4096
CACHE_MAX_CHARS = 64 * 1024
"""Texts longer than this are classified every time rather than kept in the cache."""

_LEAD_KINDS: dict[str, str] = {
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

_NODE_KINDS: tuple[tuple[type[exp.Expression], str], ...] = (
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
_WRITE_NODES: tuple[type[exp.Expression], ...] = (
    *(node for node, kind in _NODE_KINDS if kind not in READ_ONLY_KINDS),
    exp.Command,
)

_ACCOUNT_LEVEL = frozenset(
    {
        "ACCOUNT",
        "API",
        "APPLICATION",
        "COMPUTE",
        "CONNECTION",
        "EXTERNAL VOLUME",
        "FAILOVER",
        "INTEGRATION",
        "INTEGRATIONS",
        "MONITOR",
        "NETWORK",
        "NOTIFICATION",
        "REPLICATION",
        "RESOURCE",
        "RESOURCE MONITOR",
        "ROLE",
        "ROLES",
        "SECONDARY",
        "SECURITY",
        "SESSION",
        "SHARE",
        "SHARES",
        "STORAGE",
        "USER",
        "USERS",
        "VOLUME",
        "WAREHOUSE",
        "WAREHOUSES",
        "DATABASE ROLE",
        "APPLICATION ROLE",
        "POOL",
    }
)
# Keywords after which an unqualified name in a statement sqlglot keeps as a
# generic Command names a schema object; qualified names count everywhere.
_OBJECT_INTRODUCERS = frozenset(
    {
        "ON",
        "IN",
        "FROM",
        "INTO",
        "TABLE",
        "VIEW",
        "STAGE",
        "SEQUENCE",
        "FUNCTION",
        "PROCEDURE",
        "TASK",
        "STREAM",
        "PIPE",
        "FORMAT",
        "TAG",
        "POLICY",
        "ALERT",
        "SECRET",
        "LIKE",
        "CLONE",
        "TO",
        "EXISTS",
        "JOIN",
        "UPDATE",
        "USING",
    }
)
# Words that sqlglot may tokenize as plain names but that are grammar in
# statements kept as a generic Command (`GRANT ROLE r TO USER u`).
_GRAMMAR_WORDS = (
    _ACCOUNT_LEVEL
    | _OBJECT_INTRODUCERS
    | frozenset(
        {
            "ALL",
            "DATABASE",
            "DATABASES",
            "FUTURE",
            "GRANTS",
            "OBJECTS",
            "SCHEMA",
            "SCHEMAS",
            "TABLES",
            "VIEWS",
            "STAGES",
            "FUNCTIONS",
            "PROCEDURES",
            "TASKS",
            "STREAMS",
            "PIPES",
            "SEQUENCES",
        }
    )
)
# Keywords of a Snowflake Scripting block that start statements; any of these
# inside a block is reported as a hidden statement of that kind.
_SCRIPT_WRITE_WORDS: dict[str, str] = {
    word: kind for word, kind in _LEAD_KINDS.items() if kind not in READ_ONLY_KINDS
}
_SCRIPT_WRITE_WORDS.pop("DECLARE")

# SYSTEM$ functions known not to change anything; any other SYSTEM$ call in a
# query may (cancel queries, abort sessions, change settings, send mail).
_READ_ONLY_SYSTEM_FUNCTIONS = frozenset(
    {
        "SYSTEM$ALLOWLIST",
        "SYSTEM$ALLOWLIST_PRIVATELINK",
        "SYSTEM$BEHAVIOR_CHANGE_BUNDLE_STATUS",
        "SYSTEM$CLUSTERING_DEPTH",
        "SYSTEM$CLUSTERING_INFORMATION",
        "SYSTEM$CLUSTERING_RATIO",
        "SYSTEM$CURRENT_USER_TASK_NAME",
        "SYSTEM$ESTIMATE_QUERY_ACCELERATION",
        "SYSTEM$ESTIMATE_SEARCH_OPTIMIZATION_COSTS",
        "SYSTEM$EXPLAIN_JSON_TO_TEXT",
        "SYSTEM$EXPLAIN_PLAN_JSON",
        "SYSTEM$GET_PREDECESSOR_RETURN_VALUE",
        "SYSTEM$GET_PRIVATELINK_CONFIG",
        "SYSTEM$GET_TAG",
        "SYSTEM$GET_TAG_ALLOWED_VALUES",
        "SYSTEM$GET_TAG_ON_CURRENT_COLUMN",
        "SYSTEM$GET_TAG_ON_CURRENT_TABLE",
        "SYSTEM$LAST_CHANGE_COMMIT_TIME",
        "SYSTEM$PIPE_STATUS",
        "SYSTEM$STREAM_GET_TABLE_TIMESTAMP",
        "SYSTEM$STREAM_HAS_DATA",
        "SYSTEM$TASK_DEPENDENTS",
        "SYSTEM$TYPEOF",
        "SYSTEM$WAIT",
        "SYSTEM$WHITELIST",
        "SYSTEM$WHITELIST_PRIVATELINK",
    }
)

_DIALECT = Snowflake()
_SEPARATORS = frozenset({TokenType.SEMICOLON, TokenType.DARROW})
_COMMAND_TOKENS = frozenset(Snowflake.Tokenizer.COMMANDS)
_MAX_DEPTH = 4

Context = tuple[str | None, str | None]


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement of a SQL text, classified.

    `has_where` is only set for UPDATE and DELETE: True when a WHERE clause can
    restrict rows (one that names no column, such as `WHERE 1=1`, or is
    otherwise seen to be always true counts as none). `replaces` is set for
    CREATE OR REPLACE and INSERT OVERWRITE.
    `read_only` means the statement can change neither data nor privileges.
    `inner` holds statements run from inside this one (SQL text given to
    EXECUTE IMMEDIATE, DML in a CTE, statement keywords in a scripting block).
    `hidden` says why part of what the statement does cannot be seen (SQL
    built at run time, a scripting block); policy treats such statements like
    unparsable ones. An object named by a run-time value (`IDENTIFIER($t)`,
    `TABLE(:name)`) is listed with every part unknown (`?.?.?`). `calls` lists
    the functions a query calls that can change state (SYSTEM$CANCEL_QUERY, ...).
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
    context: Context = (None, None)
    new_context: Context | None = None

    @property
    def kinds(self) -> tuple[str, ...]:
        """This statement's kind and those of the statements it runs, in order, unique."""
        return tuple(dict.fromkeys(self._walk_kinds()))

    def _walk_kinds(self) -> Iterator[str]:
        yield self.kind
        for statement in self.inner:
            yield from statement._walk_kinds()

    @property
    def objects(self) -> tuple[str, ...]:
        """Every object read or written, including by inner statements, unique."""
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
        if self.calls:
            record["calls"] = list(self.calls)
        if self.inner:
            record["inner"] = [statement.as_record() for statement in self.inner]
        return record


def classify(sql: str, *, database: str | None, schema: str | None) -> list[Statement]:
    """Classify each statement of `sql`, resolving names against the current
    database and schema (as Snowflake reports them: unquoted, case as stored).

    Never raises: a statement that cannot be parsed is kind UNKNOWN with
    `parse_error` set. Results for identical inputs come from a bounded LRU cache.
    """
    if len(sql) <= CACHE_MAX_CHARS:
        return list(_classify_cached(sql, database, schema))
    return list(_classify(sql, (database, schema), 0))


@functools.lru_cache(maxsize=CACHE_SIZE)
def _classify_cached(sql: str, database: str | None, schema: str | None) -> tuple[Statement, ...]:
    return tuple(_classify(sql, (database, schema), 0))


def clear_cache() -> None:
    """Forget cached classifications (benchmarks measure the uncached path with it)."""
    _classify_cached.cache_clear()


def context_after(
    statements: Iterable[Statement], database: str | None, schema: str | None
) -> tuple[str | None, str | None]:
    """The session's (database, schema) once `statements` ran, starting from the given ones."""
    for statement in statements:
        if statement.new_context is not None:
            database, schema = statement.new_context
    return database, schema


def split_name(name: str) -> tuple[str | None, ...]:
    """The parts of a name as `classify` writes it; None for a part that is not known."""
    return _split_name(name)


@functools.lru_cache(maxsize=CACHE_SIZE)
def _split_name(name: str) -> tuple[str | None, ...]:
    parts: list[str | None] = []
    i = 0
    while i <= len(name):
        if i < len(name) and name[i] == '"':
            j = i + 1
            chars: list[str] = []
            while j < len(name):
                if name[j] == '"':
                    if j + 1 < len(name) and name[j + 1] == '"':
                        chars.append('"')
                        j += 2
                        continue
                    break
                chars.append(name[j])
                j += 1
            parts.append("".join(chars))
            i = j + 2
        else:
            end = name.find(".", i)
            end = len(name) if end < 0 else end
            part = name[i:end]
            parts.append(None if part == UNKNOWN_PART else part)
            i = end + 1
    return tuple(parts)


def render_name(parts: Sequence[str | None]) -> str:
    """Write name parts as one string, the inverse of `split_name`."""
    return ".".join(_render_part(part) for part in parts)


def _render_part(part: str | None) -> str:
    if part is None:
        return UNKNOWN_PART
    if part == "" or any(char in part for char in '."?'):
        return '"' + part.replace('"', '""') + '"'
    return part


# --- splitting ---------------------------------------------------------------


@dataclass(slots=True)
class _Chunk:
    """One statement's tokens; positions are offsets into `sql`, the whole text."""

    sql: str
    tokens: list[Token]
    end: int
    script: bool = False

    @property
    def text(self) -> str:
        return self.sql[self.tokens[0].start : self.end].strip()

    @property
    def rest(self) -> str:
        """The text after the leading keyword."""
        return self.sql[self.tokens[0].end + 1 : self.end]


def _classify(sql: str, context: Context, depth: int) -> Iterator[Statement]:
    try:
        chunks = _split(sql)
    except TokenError:
        yield _unknown(
            sql.strip(), context, "cannot be tokenized (unterminated string, identifier or comment)"
        )
        return
    for chunk in chunks:
        try:
            statement = _classify_chunk(chunk, context, depth)
        except RecursionError:
            statement = _unknown(chunk.text, context, "nested too deeply to analyse")
        except Exception as error:  # a statement the analysis trips on must not pass unseen
            reason = f"cannot be analysed ({type(error).__name__})"
            statement = _unknown(chunk.text, context, reason)
        if statement.new_context is not None:
            context = statement.new_context
        yield statement


def _split(sql: str) -> list[_Chunk]:
    """Statements end at `;` and at Snowflake's flow operator `->>`, which chains statements."""
    tokens = _DIALECT.tokenize(sql)
    chunks: list[_Chunk] = []
    current: list[Token] = []
    for index, token in enumerate(tokens):
        if token.token_type not in _SEPARATORS:
            if not current and _starts_script(tokens, index):
                chunks.append(_Chunk(sql, tokens[index:], len(sql), script=True))
                return chunks
            current.append(token)
            continue
        if current:
            chunks.extend(_split_command(_Chunk(sql, current, token.start)))
        current = []
    if current:
        chunks.extend(_split_command(_Chunk(sql, current, len(sql))))
    return chunks


def _split_command(chunk: _Chunk) -> list[_Chunk]:
    """sqlglot's tokenizer keeps the text after CALL, EXECUTE, ... as one string, which
    would hide a `->>` chain in it: look inside and split there too."""
    tokens = chunk.tokens
    if not (
        tokens[0].token_type in _COMMAND_TOKENS
        and len(tokens) == 2
        and tokens[1].token_type is TokenType.STRING
    ):
        return [chunk]
    rest_start = tokens[0].end + 1
    try:
        rest = _DIALECT.tokenize(chunk.sql[rest_start : chunk.end])
    except TokenError:
        return [chunk]
    arrow = next((token for token in rest if token.token_type is TokenType.DARROW), None)
    if arrow is None:
        return [chunk]
    head = _Chunk(chunk.sql, tokens, rest_start + arrow.start)
    return [head, *_split(chunk.sql[rest_start + arrow.end + 1 : chunk.end])]


def _starts_script(tokens: list[Token], index: int) -> bool:
    token = tokens[index]
    if token.token_type in (TokenType.IDENTIFIER, TokenType.STRING):
        return False
    word = token.text.upper()
    if word == "DECLARE":
        return True
    if word != "BEGIN":
        return False
    following = tokens[index + 1] if index + 1 < len(tokens) else None
    return (
        following is not None
        and following.token_type is not TokenType.SEMICOLON
        and following.text.upper() not in ("TRANSACTION", "WORK", "NAME")
    )


# --- one statement -----------------------------------------------------------


def _classify_chunk(chunk: _Chunk, context: Context, depth: int) -> Statement:
    if chunk.script:
        return _script(chunk, context)
    lead = chunk.tokens[0]
    kind = None
    if lead.token_type not in (TokenType.IDENTIFIER, TokenType.STRING):
        kind = _LEAD_KINDS.get(lead.text.upper())
    if kind in ("BEGIN", "COMMIT", "ROLLBACK", "UNSET"):
        return _simple(kind, chunk, context)
    if lead.text.upper() == "WITH" and _declares_procedure(chunk.tokens):
        return Statement(
            kind="CALL",
            text=chunk.text,
            reads=_scan_objects(chunk.tokens[1:], chunk.sql, context),
            hidden="runs an anonymous procedure (WITH ... AS PROCEDURE)",
            context=context,
        )
    try:
        parsed = _DIALECT.parser().parse(chunk.tokens, chunk.sql)
    except ParseError as error:
        if kind in ("SHOW", "DESCRIBE"):
            return _command(kind, chunk.rest, chunk.text, context, depth)
        return _unknown(chunk.text, context, _describe_parse_error(error))
    except (TokenError, RecursionError, ValueError) as error:
        return _unknown(chunk.text, context, f"cannot be parsed ({type(error).__name__})")
    root = parsed[0] if len(parsed) == 1 else None
    if root is None:
        return _unknown(chunk.text, context, "not one statement")
    if isinstance(root, exp.Command):
        if kind is None:
            return _unknown(chunk.text, context, "not a statement Snowflake runs")
        return _command(kind, chunk.rest, chunk.text, context, depth)
    node_kind = _node_kind(root)
    if node_kind is None:
        if kind is None:
            return _unknown(chunk.text, context, "not a statement Snowflake runs")
        return _command(kind, chunk.rest, chunk.text, context, depth)
    return _Analysis(root, kind or node_kind, chunk.text, context, depth).statement()


def _declares_procedure(tokens: Sequence[Token]) -> bool:
    """`WITH name AS PROCEDURE (...) ... CALL name()`: Snowflake's anonymous procedures."""
    depth = 0
    for first, second in itertools.pairwise(tokens):
        if first.token_type is TokenType.L_PAREN:
            depth += 1
        elif first.token_type is TokenType.R_PAREN:
            depth -= 1
        elif depth == 0 and first.text.upper() == "AS" and second.text.upper() == "PROCEDURE":
            return True
    return False


def _node_kind(node: exp.Expression) -> str | None:
    for node_type, kind in _NODE_KINDS:
        if isinstance(node, node_type):
            return kind
    return None


def _describe_parse_error(error: ParseError) -> str:
    """A parse error without SQL snippets: the text may hold credential literals."""
    if error.errors:
        first = error.errors[0]
        description = first.get("description") or "invalid syntax"
        return f"{description} at line {first.get('line')}, column {first.get('col')}"
    return "invalid syntax"


def _unknown(text: str, context: Context, reason: str) -> Statement:
    return Statement(kind="UNKNOWN", text=text, parse_error=reason, context=context)


def _simple(kind: str, chunk: _Chunk, context: Context) -> Statement:
    """Transaction control and UNSET: nothing to resolve, and sqlglot misreads some forms."""
    following = [token.text.upper() for token in chunk.tokens[1:2]]
    if chunk.tokens[0].text.upper() == "START" and following != ["TRANSACTION"]:
        return _unknown(chunk.text, context, "START must be followed by TRANSACTION")
    return Statement(kind=kind, text=chunk.text, read_only=True, context=context)


def _script(chunk: _Chunk, context: Context) -> Statement:
    """A Snowflake Scripting block: its statements are reported by keyword, as hidden."""
    reason = "is a Snowflake Scripting block"
    found: dict[str, None] = {}
    for token in chunk.tokens[1:]:
        if token.token_type in (TokenType.VAR, TokenType.STRING, TokenType.IDENTIFIER):
            continue
        inner_kind = _SCRIPT_WRITE_WORDS.get(token.text.upper())
        if inner_kind is not None:
            found[inner_kind] = None
    inner = tuple(
        Statement(kind=inner_kind, text=chunk.text, hidden=reason, context=context)
        for inner_kind in found
    )
    return Statement(
        kind="SCRIPT",
        text=chunk.text,
        reads=_scan_objects(chunk.tokens[1:], chunk.sql, context),
        inner=inner,
        hidden=reason,
        context=context,
    )


# --- statements sqlglot keeps as a generic Command ---------------------------


def _command(kind: str, rest: str, text: str, context: Context, depth: int) -> Statement:
    try:
        tokens = _DIALECT.tokenize(rest)
    except TokenError:
        return _unknown(text, context, "cannot be tokenized")
    if kind == "EXECUTE":
        return _execute(tokens, rest, text, context, depth)
    if kind == "EXPLAIN":
        return _explain(tokens, rest, text, context, depth)
    words = [token.text.upper() for token in tokens[:2]]
    objects = _scan_objects(tokens, rest, context, first_is_object=kind == "CALL")
    read_only = kind in READ_ONLY_KINDS and kind != "USE"
    if kind == "ALTER" and words[:1] == ["SESSION"]:
        read_only = True
    keeps_reads = read_only or kind in ("CALL", "GET")
    return Statement(
        kind=kind,
        text=text,
        reads=objects if keeps_reads else (),
        writes=() if keeps_reads else objects,
        has_where=_where_at_top_level(tokens) if kind in ("DELETE", "UPDATE") else None,
        replaces=kind == "CREATE" and words == ["OR", "REPLACE"],
        read_only=read_only,
        context=context,
    )


_RUN_TIME_SQL = "runs SQL the gateway cannot see (built at run time or read from a stage)"


def _execute(tokens: list[Token], rest: str, text: str, context: Context, depth: int) -> Statement:
    words = [token.text.upper() for token in tokens[:3]]
    if words[:1] == ["TASK"]:
        reads = _scan_objects(tokens[1:], rest, context, first_is_object=True)
        return Statement(kind="EXECUTE", text=text, reads=reads, context=context)
    literal = (
        tokens[1]
        if words[:1] == ["IMMEDIATE"]
        and len(tokens) >= 2
        and tokens[1].token_type in (TokenType.STRING, TokenType.RAW_STRING)
        and (len(tokens) == 2 or words[2] == "USING")
        else None
    )
    if literal is None:
        return Statement(kind="EXECUTE", text=text, hidden=_RUN_TIME_SQL, context=context)
    if depth >= _MAX_DEPTH:
        return Statement(
            kind="EXECUTE", text=text, hidden="nests EXECUTE IMMEDIATE too deeply", context=context
        )
    inner = tuple(_classify(literal.text, context, depth + 1))
    problem = _first_problem(inner)
    return Statement(
        kind="EXECUTE",
        text=text,
        inner=inner,
        hidden=f"runs SQL that {_as_clause(problem)}" if problem else None,
        read_only=problem is None and all(s.read_only for s in inner),
        context=context,
        new_context=(
            context_after(inner, *context)
            if any(s.new_context is not None for s in inner)
            else None
        ),
    )


def _first_problem(statements: Iterable[Statement]) -> str | None:
    return next((s.parse_error or s.hidden for s in statements if s.parse_error or s.hidden), None)


def _as_clause(problem: str) -> str:
    """Parse errors read as nouns, hidden reasons as verb phrases; make both follow 'that'."""
    if problem.startswith(("is ", "runs ", "nests ")):
        return problem
    return f"cannot be parsed ({problem})"


def _explain(tokens: list[Token], rest: str, text: str, context: Context, depth: int) -> Statement:
    words = [token.text.upper() for token in tokens[:1]]
    start = 2 if words == ["USING"] and len(tokens) > 2 else 0
    explained_text = rest[tokens[start].start :] if len(tokens) > start else ""
    explained = list(_classify(explained_text, context, depth + 1)) if depth < _MAX_DEPTH else []
    names = [name for s in explained for name in s.objects]
    if len(explained) != 1 or explained[0].parse_error is not None:
        names.append(_unknown_object(3))
    return Statement(
        kind="EXPLAIN",
        text=text,
        reads=tuple(dict.fromkeys(names)),
        read_only=True,
        context=context,
    )


def _where_at_top_level(tokens: list[Token]) -> bool:
    depth = 0
    for token in tokens:
        if token.token_type is TokenType.L_PAREN:
            depth += 1
        elif token.token_type is TokenType.R_PAREN:
            depth -= 1
        elif depth == 0 and token.token_type is TokenType.WHERE:
            return True
    return False


_NAME_TOKENS = (TokenType.VAR, TokenType.IDENTIFIER)


def _scan_objects(
    tokens: Sequence[Token], text: str, context: Context, *, first_is_object: bool = False
) -> tuple[str, ...]:
    """Object names in a statement sqlglot has no grammar for, led by keywords.

    Qualified names count wherever they appear; unqualified ones only after a
    keyword that introduces an object (ON, IN, FROM, TABLE, ...), after SCHEMA
    or DATABASE (as containers) or as the first name of CALL / EXECUTE TASK.
    Names after account-level keywords (ROLE, USER, WAREHOUSE, ...) are skipped.
    """
    found: dict[str, None] = {}
    i = 0
    previous = ""
    first_pending = first_is_object
    while i < len(tokens):
        token = tokens[i]
        if token.token_type is TokenType.PARAMETER and token.text == "@":
            stage = _stage_object(_stage_text(text, token.start), context)
            if stage:
                found[stage] = None
            i = _skip_stage(tokens, i)
            previous = ""
            continue
        if token.token_type is TokenType.STRING:
            if token.text.startswith("@"):
                stage = _stage_object(token.text, context)
                if stage:
                    found[stage] = None
            elif (
                i >= 2
                and tokens[i - 1].token_type is TokenType.EQ
                and tokens[i - 2].text.upper() == "SEARCH_PATH"
            ):
                found.update(dict.fromkeys(_search_path_schemas(token.text, context)))
            previous = ""
            i += 1
            continue
        if _is_name_start(tokens, i):
            parts, i = _read_chain(tokens, i)
            is_call = i < len(tokens) and tokens[i].token_type is TokenType.L_PAREN
            level = 3
            if previous in ("SCHEMA", "SCHEMAS"):
                level = 2
            elif previous in ("DATABASE", "DATABASES"):
                level = 1
            counts = first_pending or (
                previous not in _ACCOUNT_LEVEL
                and (
                    len(parts) > 1
                    or (not is_call and (level < 3 or previous in _OBJECT_INTRODUCERS))
                )
            )
            first_pending = False
            if counts:
                name = _resolve(parts, level, context)
                if name:
                    found[name] = None
            previous = parts[-1].upper()
            continue
        previous = token.text.upper()
        i += 1
    return tuple(found)


def _is_word(text: str) -> bool:
    return text.replace("_", "").replace("$", "").isalnum()


def _is_name_start(tokens: Sequence[Token], i: int) -> bool:
    token = tokens[i]
    following = tokens[i + 1] if i + 1 < len(tokens) else None
    if following is not None and following.token_type is TokenType.DOT:
        return token.token_type is TokenType.IDENTIFIER or _is_word(token.text)
    if token.token_type is TokenType.IDENTIFIER:
        return True
    return token.token_type is TokenType.VAR and token.text.upper() not in _GRAMMAR_WORDS


def _read_chain(tokens: Sequence[Token], i: int) -> tuple[list[str], int]:
    parts = [_token_part(tokens[i])]
    i += 1
    while i < len(tokens) and tokens[i].token_type is TokenType.DOT:
        following = tokens[i + 1] if i + 1 < len(tokens) else None
        if following is not None and following.token_type is TokenType.DOT:
            parts.append("")
            i += 1
            continue
        if following is None or not (
            following.token_type in _NAME_TOKENS or _is_word(following.text)
        ):
            break
        parts.append(_token_part(following))
        i += 2
    return parts, i


def _token_part(token: Token) -> str:
    return token.text if token.token_type is TokenType.IDENTIFIER else token.text.upper()


def _stage_text(text: str, start: int) -> str:
    end = start
    quoted = False
    while end < len(text):
        char = text[end]
        if char == '"':
            quoted = not quoted
        elif not quoted and (char.isspace() or char in ",;()"):
            break
        end += 1
    return text[start:end]


def _skip_stage(tokens: Sequence[Token], i: int) -> int:
    """Index of the first token after the stage reference that starts at tokens[i]."""
    end = tokens[i].end
    i += 1
    while i < len(tokens) and tokens[i].start == end + 1:
        end = tokens[i].end
        i += 1
    return i


def _stage_object(reference: str, context: Context) -> str | None:
    """The schema object behind a stage reference: `@st/p`, `@db.s.st`, `@%table`; `@~` is none."""
    body = reference[1:] if reference.startswith("@") else reference
    if body.startswith("%"):
        body = body[1:]
    elif body.startswith("~") or not body:
        return None
    name_chars: list[str] = []
    quoted = False
    for char in body:
        if char == '"':
            quoted = not quoted
        elif char == "/" and not quoted:
            break
        name_chars.append(char)
    parts = _parse_dotted("".join(name_chars))
    return _resolve(parts, 3, context) if parts else None


def _parse_dotted(name: str) -> list[str] | None:
    try:
        tokens = _DIALECT.tokenize(name)
    except TokenError:
        return None
    if not tokens or not _is_name_start(tokens, 0):
        return None
    parts, end = _read_chain(tokens, 0)
    return parts if end == len(tokens) else None


def _search_path_schemas(value: str, context: Context) -> list[str]:
    """Schemas a SEARCH_PATH value names: unqualified names in queries resolve through them."""
    database = context[0]
    schemas: list[str] = []
    for entry in (part.strip() for part in value.split(",")):
        if not entry or entry.lower() == "$current":
            continue
        if entry.lower() == "$public":
            schemas.append(render_name([database, "PUBLIC"]))
            continue
        parts = _parse_dotted(entry)
        name = _resolve(parts, 2, context) if parts else None
        schemas.append(name or render_name([database, None]))
    return schemas


def _unknown_object(level: int) -> str:
    return render_name([None] * level)


def _resolve(parts: Sequence[str], level: int, context: Context) -> str | None:
    """Complete a name of `level` parts (3 object, 2 schema, 1 database) from the context."""
    if not parts or len(parts) > level:
        return None
    database, schema = context
    full: list[str | None] = list(parts)
    if level == 3 and len(parts) == 1:
        full = [database, schema, parts[0]]
    elif level >= 2 and len(parts) == level - 1:
        full = [database, *parts]
    if level == 3 and full[1] == "":
        full[1] = "PUBLIC"
    return render_name(full)


# --- statements sqlglot parses ------------------------------------------------


def _identifier(node: Any) -> str | None:
    if isinstance(node, exp.Identifier):
        return node.this if node.quoted else node.this.upper()
    if node == "":
        return ""  # the empty schema of `db..object`
    return None


_SIMPLIFY_MAX_NODES = 64


def _restricts_rows(condition: exp.Expression) -> bool:
    """Whether a WHERE condition can restrict rows, as far as cheaply decidable.

    A condition without column references (`1=1`, `TRUE`, `'a'='a'`), or with
    such a disjunct at its top level (`id = 3 OR 1=1`), is taken as none; small
    conditions are also simplified by sqlglot (`NOT FALSE`, `x IS NULL OR x IS
    NOT NULL`). Large conditions are not simplified: that can take seconds.
    """
    disjuncts = list(condition.flatten()) if isinstance(condition, exp.Or) else [condition]
    for disjunct in disjuncts:
        while isinstance(disjunct, exp.Paren):
            disjunct = disjunct.this
        if isinstance(disjunct, exp.Or):
            if not _restricts_rows(disjunct):
                return False
        elif disjunct.find(exp.Column) is None:
            return False
    if sum(1 for _ in condition.walk()) > _SIMPLIFY_MAX_NODES:
        return True
    try:
        simplified = simplify(condition.copy())
    except Exception:  # simplification is best effort; a WHERE is there
        return True
    return not (isinstance(simplified, exp.Boolean) and simplified.this is True)


def _table_parts(table: exp.Table) -> list[str] | None:
    """The name parts of a table node; IDENTIFIER('literal') counts as its literal."""
    if isinstance(table.this, exp.DynamicIdentifier):
        value = table.this.this
        if isinstance(value, exp.Literal) and value.is_string:
            return _parse_dotted(value.name)
        return None
    parts: list[str] = []
    for key in ("catalog", "db", "this"):
        value = table.args.get(key)
        if value is None:
            continue
        name = _identifier(value)
        if name is None:
            return None
        parts.append(name)
    return parts or None


def _level_for(object_kind: str) -> int:
    """3 for schema objects, 2 for schemas, 1 for databases, 0 for account-level objects."""
    if object_kind == "DATABASE":
        return 1
    if object_kind == "SCHEMA":
        return 2
    if object_kind in _ACCOUNT_LEVEL:
        return 0
    return 3


class _Analysis:
    """Walks one parsed statement to find its objects, nested statements and effects."""

    def __init__(
        self, root: exp.Expression, kind: str, text: str, context: Context, depth: int
    ) -> None:
        self.root = root
        self.kind = kind
        self.text = text
        self.context = context
        self.depth = depth
        self.reads: dict[str, None] = {}
        self.writes: dict[str, None] = {}
        self.levels: dict[int, int] = {}
        self.targets: set[int] = set()
        self.skip: set[int] = set()
        self.calls: dict[str, None] = {}
        self.inner: list[Statement] = []
        self.read_only = kind in READ_ONLY_KINDS
        self.new_context: Context | None = None
        self._aliases: frozenset[str] | None = None

    def statement(self) -> Statement:
        self._mark_targets()
        self._walk()
        replaces = bool(self.root.args.get("replace")) or (
            isinstance(self.root, exp.Insert) and bool(self.root.args.get("overwrite"))
        )
        read_only = (
            self.read_only
            and not self.calls
            and all(statement.read_only for statement in self.inner)
        )
        return Statement(
            kind=self.kind,
            text=self.text,
            reads=tuple(name for name in self.reads if name not in self.writes),
            writes=tuple(self.writes),
            has_where=self._has_where() if self.kind in ("UPDATE", "DELETE") else None,
            replaces=replaces,
            read_only=read_only,
            inner=tuple(self.inner),
            calls=tuple(self.calls),
            context=self.context,
            new_context=self.new_context,
        )

    def _has_where(self) -> bool:
        where = self.root.args.get("where")
        return isinstance(where, exp.Where) and _restricts_rows(where.this)

    # Which nodes name what: targets are written, levels say schema or database.

    def _target(self, node: Any, level: int = 3) -> None:
        while isinstance(node, exp.Schema | exp.UserDefinedFunction):
            node = node.this
        if level == 0:
            if isinstance(node, exp.Expression):
                self.skip.add(id(node))
            return
        if isinstance(node, exp.Table | exp.Var | exp.Literal):
            self.targets.add(id(node))
            self.levels[id(node)] = level
            if isinstance(node, exp.Table) and isinstance(node.this, exp.Var | exp.Literal):
                self.targets.add(id(node.this))

    def _mark_targets(self) -> None:
        root = self.root
        object_kind = str(root.args.get("kind") or "").upper()
        level = _level_for(object_kind)
        if isinstance(root, exp.Create | exp.Drop | exp.Undrop | exp.Comment | exp.Alter):
            tables = list(root.args.get("tables") or [root.this])
            for table in tables:
                self._target(table, level)
            clone = root.args.get("clone")
            if isinstance(clone, exp.Clone) and isinstance(clone.this, exp.Expression):
                self.levels[id(clone.this)] = level or 3
            if isinstance(root, exp.Alter):
                if object_kind == "SESSION":
                    self.read_only = True
                for action in root.args.get("actions") or []:
                    for table in action.find_all(exp.Table):
                        self._target(table)
            self._context_effects(root, object_kind, tables)
        elif isinstance(root, exp.Insert | exp.Update | exp.Delete | exp.Merge | exp.Copy):
            self._target(root.this)
        elif isinstance(root, exp.MultitableInserts):
            for conditional in root.expressions:
                self._target(conditional.this.this if conditional.this else None)
        elif isinstance(root, exp.TruncateTable):
            for table in root.expressions:
                self._target(table, 1 if root.args.get("is_database") else 3)
        elif isinstance(root, exp.Grant | exp.Revoke):
            self._target(root.args.get("securable"), level)
            for principal in root.args.get("principals") or []:
                self.skip.add(id(principal))
        elif isinstance(root, exp.Put):
            self._target(root.args.get("target"))
            self.skip.add(id(root.this))
        elif isinstance(root, exp.Use):
            self._use(root)
        elif isinstance(root, exp.Show):
            scope = root.args.get("scope")
            scope_level = _level_for(str(root.args.get("scope_kind") or "").upper())
            if isinstance(scope, exp.Expression):
                if scope_level == 0:
                    self.skip.add(id(scope))
                else:
                    self.levels[id(scope)] = scope_level
        elif isinstance(root, exp.Describe):
            if isinstance(root.this, exp.Expression):
                if level == 0:
                    self.skip.add(id(root.this))
                else:
                    self.levels[id(root.this)] = level
        elif isinstance(root, exp.Select):
            into = root.args.get("into")
            if isinstance(into, exp.Into):
                self.read_only = False
                self._target(into.this)

    def _use(self, root: exp.Use) -> None:
        use_kind = str(root.args.get("kind") or "").upper()
        table = root.this
        if use_kind not in ("", "DATABASE", "SCHEMA"):
            if isinstance(table, exp.Expression):
                self.skip.add(id(table))
            self.read_only = use_kind == "WAREHOUSE"
            return
        if not isinstance(table, exp.Table):
            return
        parts = _table_parts(table)
        level = {"DATABASE": 1, "SCHEMA": 2}.get(use_kind, 2 if parts and len(parts) == 2 else 1)
        self.levels[id(table)] = level
        database = self.context[0]
        if parts is None or len(parts) > level:
            self.new_context = (None, None) if level == 1 else (database, None)
        elif level == 1:
            self.new_context = (parts[0], "PUBLIC")
        else:
            self.new_context = (parts[0], parts[1]) if len(parts) == 2 else (database, parts[0])

    def _context_effects(self, root: exp.Expression, object_kind: str, tables: list[Any]) -> None:
        """CREATE DATABASE/SCHEMA makes the new one current; dropping the current one unsets it."""
        if object_kind not in ("DATABASE", "SCHEMA") or len(tables) != 1:
            return
        table = tables[0]
        parts = _table_parts(table) if isinstance(table, exp.Table) else None
        database, schema = self.context
        if parts is None:
            return
        if object_kind == "DATABASE":
            named: Context = (parts[0], "PUBLIC")
        else:
            named = (parts[0], parts[1]) if len(parts) == 2 else (database, parts[0])
        if isinstance(root, exp.Create):
            self.new_context = named
        elif isinstance(root, exp.Drop):
            if object_kind == "DATABASE" and named[0] == database:
                self.new_context = (None, None)
            elif object_kind == "SCHEMA" and named == (database, schema):
                self.new_context = (database, None)

    # The walk.

    def _walk(self) -> None:
        stack: list[exp.Expression] = [self.root]
        while stack:
            node = stack.pop()
            if id(node) in self.skip:
                continue
            if node is not self.root and isinstance(node, _WRITE_NODES) and _inside_query(node):
                self._nested(node)
                continue
            if isinstance(node, exp.Table):
                self._table(node)
            elif isinstance(node, exp.Column) and node.args.get("db") is not None:
                self._qualified_column(node)
            elif isinstance(node, exp.Dot) and isinstance(node.expression, exp.Func):
                self._qualified_function(node)
            elif isinstance(node, exp.TableFromRows):
                self._table_from_value(node.this)
            elif isinstance(node, exp.Anonymous):
                name = str(node.this).upper()
                if name.startswith("SYSTEM$") and name not in _READ_ONLY_SYSTEM_FUNCTIONS:
                    self.calls[name] = None
                elif name == "GET_DDL":
                    self._get_ddl(node)
            elif isinstance(node, exp.Var | exp.Literal) and str(node.this).startswith("@"):
                stage = _stage_object(str(node.this), self.context)
                if stage:
                    (self.writes if id(node) in self.targets else self.reads)[stage] = None
            elif isinstance(node, exp.SetItem):
                self._search_path(node)
            stack.extend(node.iter_expressions())

    def _table(self, table: exp.Table) -> None:
        node = table.this
        if isinstance(node, exp.DynamicIdentifier):
            level = self.levels.get(id(table), 3)
            parts = _table_parts(table)
            if parts is None:
                self._add_unknown(level, id(table))
            else:
                self._add(parts, level, id(table))
            return
        if node is not None and not isinstance(node, exp.Identifier):
            return
        parts = _table_parts(table)
        if parts is None:
            return
        level = self.levels.get(id(table), 3)
        if level == 3 and len(parts) == 1 and _is_cte_reference(table, parts[0]):
            return
        self._add(parts, level, id(table))

    def _table_from_value(self, value: Any) -> None:
        """`TABLE('db.s.t')` names a table by string; `TABLE($var)` by a run-time value."""
        if isinstance(value, exp.Literal) and value.is_string:
            parts = _parse_dotted(value.name)
            if parts:
                self._add(parts, 3, id(value))
                return
        if isinstance(value, exp.Literal | exp.Parameter | exp.Placeholder | exp.Column):
            self._add_unknown(3, id(value))

    def _get_ddl(self, call: exp.Anonymous) -> None:
        """GET_DDL('kind', 'name') reads the definition of the object it names."""
        arguments = call.expressions
        if len(arguments) < 2:
            return
        kind, name = arguments[0], arguments[1]
        object_kind = kind.name.upper() if isinstance(kind, exp.Literal) else ""
        level = _level_for(object_kind) or 3
        parts = _parse_dotted(name.name) if isinstance(name, exp.Literal) else None
        if parts:
            self._add(parts, level, id(name))
        else:
            self._add_unknown(level, id(name))

    def _add_unknown(self, level: int, node_id: int) -> None:
        """An object named by a run-time value: every part unknown."""
        (self.writes if node_id in self.targets else self.reads)[_unknown_object(level)] = None

    def _add(self, parts: Sequence[str], level: int, node_id: int) -> None:
        name = _resolve(parts, level, self.context)
        if name is not None:
            (self.writes if node_id in self.targets else self.reads)[name] = None

    def _qualified_column(self, column: exp.Column) -> None:
        """`schema.sequence.nextval` or `db.schema.table.column`; `alias.col.field` is no object."""
        catalog = _identifier(column.args.get("catalog"))
        db = _identifier(column.args.get("db"))
        table = _identifier(column.args.get("table"))
        if db is None or table is None:
            return
        if catalog is None and db in self._table_aliases():
            return
        self._add([p for p in (catalog, db, table) if p is not None], 3, id(column))

    def _table_aliases(self) -> frozenset[str]:
        if self._aliases is None:
            names: set[str] = set()
            for alias in self.root.find_all(exp.TableAlias):
                name = _identifier(alias.this)
                if name:
                    names.add(name)
            for table in self.root.find_all(exp.Table):
                name = _identifier(table.this)
                if name:
                    names.add(name)
            self._aliases = frozenset(names)
        return self._aliases

    def _qualified_function(self, dot: exp.Dot) -> None:
        qualifiers: list[str] = []
        node: Any = dot.this
        while isinstance(node, exp.Dot):
            qualifiers.insert(0, _identifier(node.expression) or "")
            node = node.this
        qualifiers.insert(0, _identifier(node) or "")
        function = dot.expression
        name = (
            str(function.this).upper()
            if isinstance(function, exp.Anonymous)
            else function.sql_name().upper()
        )
        self._add([*qualifiers, name], 3, id(dot))

    def _search_path(self, item: exp.SetItem) -> None:
        assignment = item.this
        if (
            isinstance(assignment, exp.EQ)
            and isinstance(assignment.this, exp.Column)
            and assignment.this.name.upper() == "SEARCH_PATH"
            and isinstance(assignment.expression, exp.Literal)
        ):
            for name in _search_path_schemas(assignment.expression.name, self.context):
                self.reads[name] = None

    def _nested(self, node: exp.Expression) -> None:
        kind = _node_kind(node) or "UNKNOWN"
        if isinstance(node, exp.Command) or self.depth >= _MAX_DEPTH:
            kind = _LEAD_KINDS.get(str(node.this).upper(), kind)
            statement = Statement(
                kind=kind, text="", hidden="is a statement nested in a query", context=self.context
            )
        else:
            text = node.sql(dialect="snowflake")
            statement = _Analysis(node, kind, text, self.context, self.depth + 1).statement()
        self.inner.append(statement)


def _inside_query(node: exp.Expression) -> bool:
    """A statement in a CTE or subquery runs on its own; one in its parent's grammar does not."""
    return isinstance(node.parent, exp.CTE | exp.Subquery)


def _is_cte_reference(table: exp.Table, name: str) -> bool:
    """Whether an unqualified table name refers to a CTE visible where it is used."""
    came_from: exp.Expression = table
    node = table.parent
    while node is not None:
        with_clause = node.args.get("with_") or node.args.get("with")
        if isinstance(with_clause, exp.With):
            ctes = list(with_clause.expressions)
            visible = ctes
            if came_from is with_clause:
                position = next((i for i, cte in enumerate(ctes) if _contains(cte, table)), 0)
                recursive = bool(with_clause.args.get("recursive"))
                visible = ctes[: position + 1] if recursive else ctes[:position]
            for cte in visible:
                alias = cte.args.get("alias")
                if isinstance(alias, exp.TableAlias) and _identifier(alias.this) == name:
                    return True
        came_from = node
        node = node.parent
    return False


def _contains(ancestor: exp.Expression, node: exp.Expression) -> bool:
    current: exp.Expression | None = node
    while current is not None:
        if current is ancestor:
            return True
        current = current.parent
    return False


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
