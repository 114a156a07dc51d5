"""Classification is unchanged by work on its speed: every SQL string of the statement,
policy and guardrails tests, classified in two contexts, against the answers recorded
before the walk was restructured (tests/data/statements_golden.json).

The corpus is read from the test files themselves (every string constant), so a new
test statement joins it; it only counts once recorded:

    .venv/bin/python -m tests.test_statements_golden --write

Regenerate only after a deliberate change of classification, and read the diff.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlglot
import sqlglot.errors
from sqlglot import exp

from hoopgw.recorder.statements import Statement, classify

HERE = Path(__file__).parent
GOLDEN = HERE / "data" / "statements_golden.json"
SOURCES = (
    "test_statements.py",
    "test_policy.py",
    "test_fuzz.py",
    "test_gateway_rules.py",
    "addons/test_guardrails.py",
    "../scripts/bench_policy.py",
    "../scripts/bench_saturation.py",
)
CONTEXTS: tuple[tuple[str | None, str | None], ...] = ((None, None), ("DB", "SCH"))
MAX_CHARS = 4000


def corpus() -> list[str]:
    """Every string constant of the source test files that is SQL-sized, in file order."""
    found: dict[str, None] = {}
    for source in SOURCES:
        tree = ast.parse((HERE / source).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and 0 < len(node.value) <= MAX_CHARS
                and "\x00" not in node.value
            ):
                found[node.value] = None
    return list(found)


_SQLGLOT_SET_ORDER = re.compile(r"Required keyword: '\w+' missing")
"""sqlglot names the first missing argument it finds in a set: which one varies per process."""


def _plain(statement: Statement) -> dict[str, Any]:
    fields = dataclasses.asdict(statement)
    if fields["parse_error"]:
        fields["parse_error"] = _SQLGLOT_SET_ORDER.sub(
            "Required keyword missing", fields["parse_error"]
        )
    fields["inner"] = [_plain(inner) for inner in statement.inner]
    fields["kinds"] = list(statement.kinds)
    fields["objects"] = list(statement.objects)
    plain = json.loads(json.dumps(fields))
    return {key: value for key, value in plain.items() if value != _DEFAULTS.get(key)}


_DEFAULTS: dict[str, Any] = json.loads(
    json.dumps(
        {
            field.name: field.default
            for field in dataclasses.fields(Statement)
            if field.default is not dataclasses.MISSING
        }
    )
)
"""Fields at their default are left out of the recorded answers."""


def answers(sql: str) -> list[list[dict[str, Any]]]:
    return [
        [_plain(s) for s in classify(sql, database=database, schema=schema)]
        for database, schema in CONTEXTS
    ]


def _recorded() -> dict[str, Any]:
    return json.loads(GOLDEN.read_text(encoding="utf-8"))


def test_the_corpus_is_recorded() -> None:
    recorded = _recorded()
    assert len(recorded) > 500
    missing = [sql for sql in corpus() if sql not in recorded]
    assert len(missing) < len(recorded) // 4, "record the new test statements (--write)"


@pytest.mark.parametrize("chunk", range(8))
def test_classification_matches_the_recorded_answers(chunk: int) -> None:
    recorded = _recorded()
    cases = sorted(recorded)[chunk::8]
    differing = [sql for sql in cases if answers(sql) != recorded[sql]]
    assert not differing, f"{len(differing)} texts classify differently, e.g. {differing[:3]!r}"


def test_identifiers_hold_no_nodes() -> None:
    """The walk never descends into an identifier (recorder/statements/analysis.py)."""
    identifiers = 0
    for sql in corpus():
        try:
            trees = sqlglot.parse(sql, read="snowflake")
        except (sqlglot.errors.SqlglotError, RecursionError, ValueError):
            continue
        for tree in trees:
            for node in tree.walk() if tree is not None else ():
                if isinstance(node, exp.Identifier):
                    identifiers += 1
                    assert not list(node.iter_expressions()), sql
    assert identifiers > 1000


def write() -> None:
    recorded = {sql: answers(sql) for sql in corpus()}
    lines = (
        f"{json.dumps(sql)}: {json.dumps(recorded[sql], separators=(',', ':'))}"
        for sql in sorted(recorded)
    )
    GOLDEN.write_text("{\n" + ",\n".join(lines) + "\n}\n", encoding="utf-8")
    print(f"{len(recorded)} texts recorded in {GOLDEN}")


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    write()
