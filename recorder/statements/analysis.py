"""A statement sqlglot parses, walked: the objects it reads and writes, nested statements, calls."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlglot import exp
from sqlglot.expressions.core import Expr

from hoopgw.recorder.statements.context import Context
from hoopgw.recorder.statements.names import level_for, resolve, unknown_object
from hoopgw.recorder.statements.nodes import identifier, table_parts
from hoopgw.recorder.statements.objects import parse_dotted, search_path_schemas, stage_object
from hoopgw.recorder.statements.restriction import restricts
from hoopgw.recorder.statements.statement import Statement
from hoopgw.recorder.statements.targets import Targets
from hoopgw.recorder.statements.vocabulary import (
    LEAD_KINDS,
    MAX_DEPTH,
    READ_ONLY_KINDS,
    WRITE_NODES,
    node_kind,
)

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


class Analysis:
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
        self.calls: dict[str, None] = {}
        self.inner: list[Statement] = []
        self.read_only = kind in READ_ONLY_KINDS
        self.marks = Targets(context)
        self._aliases: frozenset[str] | None = None

    def statement(self) -> Statement:
        self.marks.mark(self.root)
        if self.marks.read_only is not None:
            self.read_only = self.marks.read_only
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
            has_where=self._has_where(),
            replaces=replaces,
            read_only=read_only,
            inner=tuple(self.inner),
            calls=tuple(self.calls),
            context=self.context,
            new_context=self.marks.new_context,
        )

    def _has_where(self) -> bool | None:
        """UPDATE and DELETE: whether the WHERE restricts the target's rows. MERGE with a
        WHEN MATCHED ... UPDATE or DELETE: whether ON, or each such clause's own condition, does.
        """
        root = self.root
        targets = _target_names(root.this)
        if isinstance(root, exp.Update | exp.Delete):
            where = root.args.get("where")
            return isinstance(where, exp.Where) and restricts(where.this, targets)
        if not isinstance(root, exp.Merge):
            return None
        whens = root.args.get("whens")
        changing = [
            when
            for when in (whens.expressions if isinstance(whens, exp.Whens) else [])
            if isinstance(when, exp.When)
            and when.args.get("matched")
            and _changes_rows(when.args.get("then"))
        ]
        if not changing:
            return None
        if restricts(root.args.get("on"), targets):
            return True
        return all(restricts(when.args.get("condition"), targets) for when in changing)

    # The walk.

    def _walk(self) -> None:
        """Every node once, last child first (the order names are listed in), without
        descending into skipped subtrees or statements nested in a query.

        Children are read from `args` here rather than through `iter_expressions` (a
        generator per node), and identifiers, half of a typical tree, are never pushed:
        they have no role and no child nodes (their arguments are a name and flags).
        """
        skip = self.marks.skip
        root = self.root
        roles = _ROLES
        stack: list[exp.Expression] = [root]
        pop, push = stack.pop, stack.append
        while stack:
            node = pop()
            if skip and id(node) in skip:
                continue
            node_type = type(node)
            visit, writes = roles.get(node_type) or _role_of(node_type)
            if writes and node is not root and _inside_query(node):
                self._nested(node)
                continue
            if visit is not None:
                visit(self, node)
            for value in node.args.values():
                if value is None:
                    continue
                if isinstance(value, list):
                    for item in value:
                        if isinstance(item, _NODE) and type(item) is not _LEAF:
                            push(item)
                elif type(value) is not _LEAF and isinstance(value, _NODE):
                    push(value)

    # What the walk does with a node of each type (`_VISITS`).

    def _call(self, call: exp.Anonymous) -> None:
        name = function_name(call)
        if name.startswith("SYSTEM$") and name not in _READ_ONLY_SYSTEM_FUNCTIONS:
            self.calls[name] = None
        elif name == "GET_DDL":
            self._get_ddl(call)

    def _value(self, value: exp.Var | exp.Literal) -> None:
        """`@stage/path` read or written."""
        text = str(value.this)
        if text.startswith("@"):
            stage = stage_object(text, self.context)
            if stage:
                (self.writes if id(value) in self.marks.written else self.reads)[stage] = None

    def _table_from_rows(self, node: exp.TableFromRows) -> None:
        self._table_from_value(node.this)

    def _table(self, table: exp.Table) -> None:
        node = table.this
        if isinstance(node, exp.DynamicIdentifier):
            level = self.marks.levels.get(id(table), 3)
            parts = table_parts(table)
            if parts is None:
                self._add_unknown(level, id(table))
            else:
                self._add(parts, level, id(table))
            return
        if node is not None and not isinstance(node, exp.Identifier):
            return
        parts = table_parts(table)
        if parts is None:
            return
        level = self.marks.levels.get(id(table), 3)
        if level == 3 and len(parts) == 1 and _is_cte_reference(table, parts[0]):
            return
        self._add(parts, level, id(table))

    def _table_from_value(self, value: Any) -> None:
        """`TABLE('db.s.t')` names a table by string; `TABLE($var)` by a run-time value."""
        if isinstance(value, exp.Literal) and value.is_string:
            parts = parse_dotted(value.name)
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
        level = level_for(object_kind) or 3
        parts = parse_dotted(name.name) if isinstance(name, exp.Literal) else None
        if parts:
            self._add(parts, level, id(name))
        else:
            self._add_unknown(level, id(name))

    def _add_unknown(self, level: int, node_id: int) -> None:
        """An object named by a run-time value: every part unknown."""
        (self.writes if node_id in self.marks.written else self.reads)[unknown_object(level)] = None

    def _add(self, parts: Sequence[str], level: int, node_id: int) -> None:
        name = resolve(parts, level, self.context)
        if name is not None:
            (self.writes if node_id in self.marks.written else self.reads)[name] = None

    def _qualified_column(self, column: exp.Column) -> None:
        """`schema.sequence.nextval` or `db.schema.table.column`; `alias.col.field` is no object."""
        if column.args.get("db") is None:
            return
        catalog = identifier(column.args.get("catalog"))
        db = identifier(column.args.get("db"))
        table = identifier(column.args.get("table"))
        if db is None or table is None:
            return
        if catalog is None and db in self._table_aliases():
            return
        self._add([p for p in (catalog, db, table) if p is not None], 3, id(column))

    def _table_aliases(self) -> frozenset[str]:
        if self._aliases is None:
            names: set[str] = set()
            for alias in self.root.find_all(exp.TableAlias):
                name = identifier(alias.this)
                if name:
                    names.add(name)
            for table in self.root.find_all(exp.Table):
                name = identifier(table.this)
                if name:
                    names.add(name)
            self._aliases = frozenset(names)
        return self._aliases

    def _qualified_function(self, dot: exp.Dot) -> None:
        """`db.schema.function(...)`."""
        if not isinstance(dot.expression, exp.Func):
            return
        qualifiers: list[str] = []
        node: Any = dot.this
        while isinstance(node, exp.Dot):
            qualifiers.insert(0, identifier(node.expression) or "")
            node = node.this
        qualifiers.insert(0, identifier(node) or "")
        function = dot.expression
        name = (
            function_name(function)
            if isinstance(function, exp.Anonymous)
            else function.sql_name().upper()
        )
        self._add([*qualifiers, name], 3, id(dot))

    def _search_path(self, item: exp.SetItem) -> None:
        """`SET SEARCH_PATH = '...'` reads the schemas it lists; any other spelling of the
        value (an identifier, a concatenation, a variable) names schemas the gateway cannot
        know, so it reads an unknown schema."""
        assignment = item.this
        if not (
            isinstance(assignment, exp.EQ)
            and isinstance(assignment.this, exp.Column | exp.Identifier | exp.Var)
            and assignment.this.name.upper() == "SEARCH_PATH"
        ):
            return
        value = assignment.expression
        if (isinstance(value, exp.Literal) and value.is_string) or isinstance(value, exp.RawString):
            for name in search_path_schemas(value.name, self.context):
                self.reads[name] = None
        else:
            self.reads[unknown_object(2)] = None

    def _nested(self, node: exp.Expression) -> None:
        kind = node_kind(node) or "UNKNOWN"
        if isinstance(node, exp.Command) or self.depth >= MAX_DEPTH:
            kind = LEAD_KINDS.get(str(node.this).upper(), kind)
            statement = Statement(
                kind=kind, text="", hidden="is a statement nested in a query", context=self.context
            )
        else:
            text = node.sql(dialect="snowflake")
            statement = Analysis(node, kind, text, self.context, self.depth + 1).statement()
        self.inner.append(statement)


# What the walk does with a node depends on its type: a visit per type (or none) and
# whether it is a statement of its own, found with issubclass the first time the type
# is seen, spares every node of the common types the chain of isinstance checks.
# No node type has two of these visits.
_Visit = Callable[[Analysis, Any], None]
_VISITS: tuple[tuple[type[exp.Expression] | tuple[type[exp.Expression], ...], _Visit], ...] = (
    (exp.Table, Analysis._table),
    (exp.Column, Analysis._qualified_column),
    (exp.Dot, Analysis._qualified_function),
    (exp.TableFromRows, Analysis._table_from_rows),
    (exp.Anonymous, Analysis._call),
    ((exp.Var, exp.Literal), Analysis._value),
    (exp.SetItem, Analysis._search_path),
)
_ROLES: dict[type, tuple[_Visit | None, bool]] = {}
_NODE = Expr
_LEAF = exp.Identifier


def _role_of(node_type: type) -> tuple[_Visit | None, bool]:
    visit = next((visit for types, visit in _VISITS if issubclass(node_type, types)), None)
    role = (visit, issubclass(node_type, WRITE_NODES))
    _ROLES[node_type] = role
    return role


def function_name(call: exp.Anonymous) -> str:
    """A called function's name, upper-cased whether quoted or not: the denied list is
    compared without case, so `"SYSTEM$cancel_query"` cannot pass for a different function."""
    name = call.this
    text = name.this if isinstance(name, exp.Identifier) else str(name)
    return text.strip().upper()


def _target_names(table: object) -> list[str]:
    """The names a condition may qualify the target's columns with: its name and alias."""
    if not isinstance(table, exp.Table):
        return []
    return [name for name in (table.name, table.alias) if name]


def _changes_rows(then: object) -> bool:
    if isinstance(then, exp.Update):
        return True
    return isinstance(then, exp.Var) and then.name.upper() == "DELETE"


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
                if isinstance(alias, exp.TableAlias) and identifier(alias.this) == name:
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
