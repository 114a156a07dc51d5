"""Which nodes of a parsed statement name what, marked before the walk reads the names.

A statement's root says which of its names are written (the table of an
INSERT, the object of a CREATE), which name a schema or a database rather
than a schema object (`DROP SCHEMA s`, `SHOW TABLES IN DATABASE d`), and which
are no schema object at all (roles, users, warehouses). One handler per root
node type, looked up in `_MARKERS` as sqlglot's optimizer looks up its rules,
instead of a chain of isinstance tests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlglot import exp

from hoopgw.recorder.statements.context import (
    Context,
    after_create,
    after_drop,
    after_use,
)
from hoopgw.recorder.statements.names import level_for
from hoopgw.recorder.statements.nodes import keyword, table_parts


class Targets:
    """The marks on one statement's nodes (by `id`), and what its root changes besides.

    `written` holds the nodes whose names are written; `levels` the nodes that
    name a schema (2) or a database (1); `skip` the subtrees that name no
    schema object. `read_only` overrides the kind's default when the root
    decides it (ALTER SESSION, USE WAREHOUSE, SELECT ... INTO); `new_context`
    is the (database, schema) in force after the statement when it changes.
    """

    def __init__(self, context: Context) -> None:
        self.context = context
        self.written: set[int] = set()
        self.levels: dict[int, int] = {}
        self.skip: set[int] = set()
        self.read_only: bool | None = None
        self.new_context: Context | None = None

    def mark(self, root: exp.Expression) -> Targets:
        for node_type in type(root).__mro__:
            marker = _MARKERS.get(node_type)
            if marker is not None:
                marker(self, root)
                break
        return self

    def _target(self, node: Any, level: int = 3) -> None:
        while isinstance(node, exp.Schema | exp.UserDefinedFunction):
            node = node.this
        if level == 0:
            if isinstance(node, exp.Expression):
                self.skip.add(id(node))
            return
        if isinstance(node, exp.Table | exp.Var | exp.Literal):
            self.written.add(id(node))
            self.levels[id(node)] = level
            if isinstance(node, exp.Table) and isinstance(node.this, exp.Var | exp.Literal):
                self.written.add(id(node.this))

    def _definition(self, root: exp.Expression) -> None:
        """CREATE, DROP, UNDROP, COMMENT and ALTER: the object defined, at its kind's level."""
        object_kind = _object_kind(root)
        level = level_for(object_kind)
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

    def _context_effects(self, root: exp.Expression, object_kind: str, tables: list[Any]) -> None:
        if object_kind not in ("DATABASE", "SCHEMA") or len(tables) != 1:
            return
        table = tables[0]
        parts = table_parts(table) if isinstance(table, exp.Table) else None
        if parts is None:
            return
        if isinstance(root, exp.Create):
            self.new_context = after_create(object_kind, parts, self.context)
        elif isinstance(root, exp.Drop):
            self.new_context = after_drop(object_kind, parts, self.context)

    def _data_change(self, root: exp.Expression) -> None:
        """INSERT, UPDATE, DELETE, MERGE and COPY INTO write their target."""
        self._target(root.this)

    def _multitable_insert(self, root: exp.MultitableInserts) -> None:
        for conditional in root.expressions:
            self._target(conditional.this.this if conditional.this else None)

    def _truncate(self, root: exp.TruncateTable) -> None:
        for table in root.expressions:
            self._target(table, 1 if root.args.get("is_database") else 3)

    def _privilege(self, root: exp.Grant | exp.Revoke) -> None:
        """GRANT and REVOKE change the securable; the roles and users they name are no object."""
        self._target(root.args.get("securable"), level_for(_object_kind(root)))
        for principal in root.args.get("principals") or []:
            self.skip.add(id(principal))

    def _put(self, root: exp.Put) -> None:
        """PUT writes the stage; the local file it reads is no object."""
        self._target(root.args.get("target"))
        self.skip.add(id(root.this))

    def _use(self, root: exp.Use) -> None:
        use_kind = keyword(root.args.get("kind"))
        table = root.this
        if use_kind not in ("", "DATABASE", "SCHEMA"):
            if isinstance(table, exp.Expression):
                self.skip.add(id(table))
            self.read_only = use_kind == "WAREHOUSE"
            return
        if not isinstance(table, exp.Table):
            return
        parts = table_parts(table)
        level = {"DATABASE": 1, "SCHEMA": 2}.get(use_kind, 2 if parts and len(parts) == 2 else 1)
        self.levels[id(table)] = level
        self.new_context = after_use(parts, level, self.context)

    def _show(self, root: exp.Show) -> None:
        """`SHOW ... IN DATABASE d` reads the scope it names, at the scope's level."""
        scope = root.args.get("scope")
        scope_level = level_for(keyword(root.args.get("scope_kind")))
        if isinstance(scope, exp.Expression):
            if scope_level == 0:
                self.skip.add(id(scope))
            else:
                self.levels[id(scope)] = scope_level

    def _describe(self, root: exp.Describe) -> None:
        level = level_for(_object_kind(root))
        if isinstance(root.this, exp.Expression):
            if level == 0:
                self.skip.add(id(root.this))
            else:
                self.levels[id(root.this)] = level

    def _select(self, root: exp.Select) -> None:
        """SELECT ... INTO writes the table it fills."""
        into = root.args.get("into")
        if isinstance(into, exp.Into):
            self.read_only = False
            self._target(into.this)


def _object_kind(root: exp.Expression) -> str:
    return keyword(root.args.get("kind"))


_MARKERS: dict[type[exp.Expression], Callable[[Targets, Any], None]] = {
    exp.Create: Targets._definition,
    exp.Drop: Targets._definition,
    exp.Undrop: Targets._definition,
    exp.Comment: Targets._definition,
    exp.Alter: Targets._definition,
    exp.Insert: Targets._data_change,
    exp.Update: Targets._data_change,
    exp.Delete: Targets._data_change,
    exp.Merge: Targets._data_change,
    exp.Copy: Targets._data_change,
    exp.MultitableInserts: Targets._multitable_insert,
    exp.TruncateTable: Targets._truncate,
    exp.Grant: Targets._privilege,
    exp.Revoke: Targets._privilege,
    exp.Put: Targets._put,
    exp.Use: Targets._use,
    exp.Show: Targets._show,
    exp.Describe: Targets._describe,
    exp.Select: Targets._select,
}
