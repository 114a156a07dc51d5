"""Whether a WHERE (or MERGE ... ON) condition restricts the rows of the statement's target.

The rule, as docs/policy.md states it: a condition restricts iff, after
sqlglot's simplification, it is not a constant and every branch of its
top-level OR restricts. A branch restricts when it is an AND of which at
least one part restricts, or a predicate (possibly under NOT) that

- references a column of the target (unqualified, or qualified with the
  target's name or alias), and
- compares no expression with an expression over exactly the same columns
  (`x = x`, `x >= x`, `x + 1 > x`, `x IN (x)`, `x BETWEEN x AND x`), and
- is not `LIKE '%'`.

An OR whose branches include a predicate and its negation (`x IS NULL OR x
IS NOT NULL`, `x = 1 OR NOT x = 1`, `x > 1 OR x <= 1`) restricts nothing.
This stops a condition written to look like one; it is no proof that a
condition selects few rows (`id >= -1e308` restricts in this sense).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

from sqlglot import exp
from sqlglot.expressions.core import Expr
from sqlglot.optimizer.simplify import simplify

from hoopgw.recorder.statements.nodes import unlink

_SIMPLIFY_MAX_NODES = 64
"""Larger conditions are checked structurally only: simplification can take seconds."""

_COMPARISONS = (
    exp.EQ,
    exp.NEQ,
    exp.GT,
    exp.GTE,
    exp.LT,
    exp.LTE,
    exp.NullSafeEQ,
    exp.NullSafeNEQ,
    exp.Like,
    exp.ILike,
    exp.RegexpLike,
    exp.Is,
)
_SCANNED = (exp.Column, *_COMPARISONS, exp.Between, exp.In)
_NOT_DESCENDED = (exp.Query, exp.Identifier)
_FOLDABLE = (exp.Not, exp.Boolean, exp.Null)
_CONSTANT_WHEN_COLUMNLESS = (*_COMPARISONS, exp.In, exp.Between)
_OPPOSITES: dict[type[exp.Expression], type[exp.Expression]] = {
    exp.EQ: exp.NEQ,
    exp.NEQ: exp.EQ,
    exp.GT: exp.LTE,
    exp.LTE: exp.GT,
    exp.LT: exp.GTE,
    exp.GTE: exp.LT,
}


def restricts(condition: exp.Expression | None, targets: Iterable[str]) -> bool:
    """Whether `condition` restricts rows of the target known by `targets` (name and alias)."""
    if condition is None:
        return False
    names = frozenset(name.upper() for name in targets)
    if not _may_simplify(condition):
        return _condition_restricts(condition, names)
    copy, simplified = condition.copy(), None
    with contextlib.suppress(Exception):  # best effort; the structural check follows
        simplified = simplify(copy)
    try:
        return _condition_restricts(condition if simplified is None else simplified, names)
    finally:
        unlink([copy, simplified])


def _condition_restricts(condition: exp.Expression, names: frozenset[str]) -> bool:
    condition = _unwrap(condition)
    if isinstance(condition, exp.Boolean | exp.Null | exp.Literal):
        return False
    branches = _disjuncts(condition)
    if _complementary(branches):
        return False
    return all(_branch_restricts(branch, names) for branch in branches)


def _may_simplify(condition: exp.Expression) -> bool:
    """Whether sqlglot's simplification (costly, ~100 us) could change the verdict: only a
    small condition with a negation or a constant part in it can fold to a constant."""
    constant = False
    kinds = _FOLDING_KINDS
    for size, node in enumerate(condition.walk(), start=1):
        if size > _SIMPLIFY_MAX_NODES:
            return False
        if constant:
            continue
        node_type = type(node)
        kind = kinds.get(node_type)
        if kind is None:
            kind = _folding_kind(node_type)
        if kind is _FOLDS or (kind is _FOLDS_WITHOUT_COLUMNS and node.find(exp.Column) is None):
            constant = True
    return constant


_FOLDS, _FOLDS_WITHOUT_COLUMNS, _KEEPS = "folds", "folds without columns", "keeps"
_FOLDING_KINDS: dict[type, str] = {}
"""Per node type, what `_may_simplify` asks of it: the isinstance tests once per type."""


def _folding_kind(node_type: type) -> str:
    if issubclass(node_type, _FOLDABLE):
        kind = _FOLDS
    elif issubclass(node_type, _CONSTANT_WHEN_COLUMNLESS):
        kind = _FOLDS_WITHOUT_COLUMNS
    else:
        kind = _KEEPS
    _FOLDING_KINDS[node_type] = kind
    return kind


def _unwrap(node: exp.Expression) -> exp.Expression:
    while isinstance(node, exp.Paren):
        node = node.this
    return node


def _disjuncts(node: exp.Expression) -> list[exp.Expression]:
    return _operands(node, exp.Or)


def _conjuncts(node: exp.Expression) -> list[exp.Expression]:
    return _operands(node, exp.And)


def _operands(node: exp.Expression, kind: type[exp.Connector]) -> list[exp.Expression]:
    """The operands of a chain of `kind` (through parentheses), in order, without recursion:
    a generated condition can chain thousands."""
    found: list[exp.Expression] = []
    stack = [node]
    while stack:
        current = _unwrap(stack.pop())
        if isinstance(current, kind):
            stack.append(current.expression)
            stack.append(current.this)
        else:
            found.append(current)
    return found


def _branch_restricts(branch: exp.Expression, targets: frozenset[str]) -> bool:
    parts = _conjuncts(branch)
    if len(parts) == 1 and isinstance(parts[0], exp.Or):
        return restricts(parts[0], targets)
    for part in parts:
        if isinstance(part, exp.Or):
            if restricts(part, targets):
                return True
        elif _predicate_restricts(part, targets):
            return True
    return False


def _predicate_restricts(node: exp.Expression, targets: frozenset[str]) -> bool:
    inner = node
    while isinstance(inner, exp.Not | exp.Paren):
        inner = inner.this
    if isinstance(inner, exp.And | exp.Or):
        return restricts(inner, targets)
    found = _Found(inner)
    if not any(_is_target_column(column, targets) for column in found.columns):
        return False
    for comparison in found.comparisons:
        if _columns(comparison.this) == _columns(comparison.expression):
            return False
        if isinstance(comparison, exp.Like | exp.ILike) and _matches_anything(
            comparison.expression
        ):
            return False
    for between in found.betweens:
        low, high = between.args.get("low"), between.args.get("high")
        subject = _columns(between.this)
        if subject and (_columns(low) == subject or _columns(high) == subject):
            return False
    for membership in found.memberships:
        subject = _columns(membership.this)
        if subject and any(_columns(item) == subject for item in membership.expressions):
            return False
    return True


class _Found:
    """The nodes of a predicate its checks read, outside subqueries, found in one pass."""

    __slots__ = ("betweens", "columns", "comparisons", "memberships")

    def __init__(self, node: exp.Expression) -> None:
        self.columns: list[exp.Column] = []
        self.comparisons: list[exp.Binary] = []
        self.betweens: list[exp.Between] = []
        self.memberships: list[exp.In] = []
        for current in _nodes(node, _SCANNED):
            if isinstance(current, exp.Column):
                self.columns.append(current)
            if isinstance(current, _COMPARISONS) and isinstance(current, exp.Binary):
                self.comparisons.append(current)
            if isinstance(current, exp.Between):
                self.betweens.append(current)
            if isinstance(current, exp.In):
                self.memberships.append(current)


def _nodes(node: exp.Expression, types: type | tuple[type, ...]) -> Iterator[exp.Expression]:
    """Nodes of `types` in `node` outside subqueries (a subquery has its own scope).

    Identifiers are not descended into: none is of a type looked for, and they hold
    no nodes (a name and flags).
    """
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, types):
            yield current
        for value in current.args.values():
            if isinstance(value, list):
                stack.extend(
                    item
                    for item in value
                    if isinstance(item, Expr) and not isinstance(item, _NOT_DESCENDED)
                )
            elif isinstance(value, Expr) and not isinstance(value, _NOT_DESCENDED):
                stack.append(value)


def _own_columns(node: exp.Expression) -> list[exp.Column]:
    return [column for column in _nodes(node, exp.Column) if isinstance(column, exp.Column)]


def _columns(node: object) -> frozenset[tuple[str, ...]]:
    """The columns an expression references outside subqueries, as comparable text."""
    if not isinstance(node, exp.Expression):
        return frozenset()
    return frozenset(
        tuple(part.name.upper() for part in column.parts) for column in _own_columns(node)
    )


def _is_target_column(column: exp.Column, targets: frozenset[str]) -> bool:
    qualifier = column.table
    return not qualifier or qualifier.upper() in targets


def _matches_anything(pattern: object) -> bool:
    return (
        isinstance(pattern, exp.Literal)
        and pattern.is_string
        and pattern.name != ""
        and set(pattern.name) == {"%"}
    )


def _complementary(branches: list[exp.Expression]) -> bool:
    """Whether two branches of an OR are a predicate and its negation."""
    if len(branches) < 2:
        return False
    seen: set[str] = set()
    negated: set[str] = set()
    for branch in branches:
        positive, text = _polarity(branch)
        (seen if positive else negated).add(text)
    return not seen.isdisjoint(negated)


def _polarity(branch: exp.Expression) -> tuple[bool, str]:
    positive = True
    node = _unwrap(branch)
    while isinstance(node, exp.Not):
        positive = not positive
        node = _unwrap(node.this)
    opposite = _OPPOSITES.get(type(node))
    if (
        opposite is not None
        and isinstance(node, exp.Binary)
        and type(node) in (exp.NEQ, exp.GT, exp.GTE)
    ):
        node = opposite(this=node.this.copy(), expression=node.expression.copy())
        positive = not positive
    return positive, node.sql(dialect="snowflake").upper()
