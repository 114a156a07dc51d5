"""The Snowflake session the inspection tests read: real connector, real gateway, fakesnow.

One connection logs in, creates a table, inserts with bound values (single and
array bindings), reads it back (fakesnow answers SELECTs in Arrow, as Snowflake
does), fails one statement, and reads a 100,000-row result. The tests in
test_contentview.py, test_export.py and test_mitmweb_browser.py look at this
session live, exported, and in a browser.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from snowflake.connector import ProgrammingError

LARGE_ROWS = 100_000
SELECT_ADA = "select id, customer, amount, placed, day from orders where customer = ? order by id"
FAILING = "select * from no_such_table_anywhere"
LARGE = (
    f"select seq4() as n, 'row ' || seq4() as label from table(generator(rowcount => {LARGE_ROWS}))"
)
SECRET_LITERAL = "hunter2-never-shown"
WITH_PASSWORD = f"alter user if exists nobody_here set password = '{SECRET_LITERAL}'"


@dataclass(frozen=True)
class Workload:
    database: str
    ada_rows: list[tuple[Any, ...]]
    large_rows: int
    error_code: int


def run(connection: Any, database: str) -> Workload:
    """The session's statements, in order; returns what the client saw."""
    cur = connection.cursor()
    cur.execute(f"create database if not exists {database}")
    cur.execute(f"create schema if not exists {database}.app")
    cur.execute(f"use schema {database}.app")
    cur.execute(
        "create or replace table orders "
        "(id int, customer varchar, amount number(10,2), placed timestamp_ntz, day date)"
    )
    cur.execute(
        "insert into orders values (?, ?, ?, '2024-01-02 03:04:05.123', '2024-01-02')",
        (1, "ada", 10.5),
    )
    cur.executemany(
        "insert into orders (id, customer, amount) values (?, ?, ?)",
        [(2, "bob", 20.0), (3, "cy", 30.25), (4, "ada", 1.0)],
    )
    ada_rows = cur.execute(SELECT_ADA, ("ada",)).fetchall()
    with pytest.raises(ProgrammingError) as failure:
        cur.execute(FAILING)
    # fakesnow may or may not know ALTER USER; either way the literal must never show
    with contextlib.suppress(Exception):
        cur.execute(WITH_PASSWORD)
    large_rows = len(cur.execute(LARGE).fetchall())
    return Workload(database, ada_rows, large_rows, failure.value.errno)


_FAILURES = pytest.StashKey[dict[object, str]]()


def once[T](request: pytest.FixtureRequest, key: pytest.StashKey[T], build: Callable[[], T]) -> T:
    """Build a value once per test session, from a function-scoped fixture.

    The capture needs `connect` and `agent_token`, which are function-scoped
    (the identity layer mints a fresh token per test), but running the session
    once for all tests of a module keeps the suite fast. A failed build is
    remembered too: the other tests report the same error instead of retrying.
    """
    stash = request.session.stash
    failures = stash.setdefault(_FAILURES, {})
    if key in failures:
        raise RuntimeError(f"building the recorded session failed earlier: {failures[key]}")
    if key not in stash:
        try:
            stash[key] = build()
        except Exception as exc:
            failures[key] = f"{type(exc).__name__}: {exc}"[:2000]
            raise
    return stash[key]
