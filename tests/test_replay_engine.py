"""The replay engine against a real sandbox (a second fakesnow server), with built sessions.

tests/test_cli_commands.py replays sessions the gateway recorded; here the
sessions hold what a live run cannot produce on demand: a statement the
gateway blocked, an answer lost upstream, results in Snowflake's JSON format
(fakesnow answers in Arrow), a recorded failure the sandbox does not repeat.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import snowflake.connector

from hoopgw.recorder.session import load_session
from hoopgw.replay.engine import Verdict, replay_session
from hoopgw.replay.target import Target
from tests import stack
from tests.test_replay_unit import (
    GUARDRAIL_BLOCK,
    SessionBuilder,
    failure,
    inserted,
    result,
    status,
)


@pytest.fixture(scope="module")
def sandbox(workdir: Path) -> Iterator[Target]:
    proc, url = stack.start_fakesnow(workdir / f"engine-sandbox-{uuid.uuid4().hex[:6]}")
    params = {
        "account": "sandbox",
        "user": "replayer",
        "password": "unused-by-fakesnow",
        "host": stack.LOOPBACK,
        "port": int(url.rsplit(":", 1)[1]),
        "protocol": "http",
    }
    yield Target(params, "test sandbox", frozenset({"password"}))
    proc.stop()


def sandbox_query(target: Target, sql: str) -> list[tuple]:
    with snowflake.connector.connect(**dict(target.params)) as connection:
        return connection.cursor().execute(sql).fetchall()


@pytest.fixture
def schema(unique_name) -> str:
    return unique_name("ENGINE")


def new_schema(builder: SessionBuilder, database: str) -> str:
    """Statements creating DATABASE.APP, with the status rows fakesnow answers."""
    builder.statement(
        f"create database if not exists {database}",
        status(f"Database {database} successfully created."),
    )
    builder.statement(
        f"create schema if not exists {database}.app", status("Schema APP successfully created.")
    )
    return f"{database}.app"


def test_blocked_statement_never_reaches_the_sandbox(sandbox: Target, schema: str):
    builder = SessionBuilder()
    where = new_schema(builder, schema)
    builder.statement(
        f"create or replace table {where}.orders (id int)",
        status("Table ORDERS successfully created."),
    )
    builder.statement(f"insert into {where}.orders values (?)", inserted(1),
                      bindings={"1": {"type": "FIXED", "value": "7"}})  # fmt: skip
    builder.statement(
        f"drop table {where}.orders",
        None,
        guardrail=GUARDRAIL_BLOCK,
        refusal={"by": "guardrails", "reason": "DROP is denied", "code": 399003},
    )
    builder.statement(f"select id from {where}.orders", result([("ID", "fixed")], [["7"]]))
    session = load_session(builder.session_id, builder.end())

    report = replay_session(session, sandbox)

    assert [r.verdict for r in report.results] == [
        Verdict.MATCH, Verdict.MATCH, Verdict.MATCH, Verdict.MATCH, Verdict.SKIPPED, Verdict.MATCH
    ]  # fmt: skip
    assert report.results[4].reason.startswith("blocked by guardrail rule agents-guard")
    assert report.results[5].recorded.rows == [(7,)]
    assert sandbox_query(sandbox, f"select id from {schema}.app.orders") == [(7,)]


def test_typed_bindings_and_json_results_compare_with_arrow_answers(sandbox: Target, schema: str):
    builder = SessionBuilder()
    builder.statement(f"use schema {new_schema(builder, schema)}", status())
    builder.statement(
        "create or replace table t (id int, name varchar, amount float, ok boolean, day date)",
        status("Table T successfully created."),
    )
    builder.statement(
        "insert into t values (?, ?, ?, ?, ?)",
        inserted(2),
        bindings={
            "1": {"type": "FIXED", "value": ["1", "2"]},
            "2": {"type": "TEXT", "value": ["ada", None]},
            "3": {"type": "REAL", "value": ["10.5", "0.25"]},
            "4": {"type": "BOOLEAN", "value": ["true", "false"]},
            "5": {"type": "DATE", "value": ["1641600000000", "86400000"]},
        },
    )
    columns = [("ID", "fixed"), ("NAME", "text"), ("AMOUNT", "real"), ("OK", "boolean"),
               ("DAY", "date")]  # fmt: skip
    builder.statement(
        "select * from t order by id",
        result(columns, [["1", "ada", "10.5", "1", "19000"], ["2", None, "0.25", "0", "1"]]),
    )
    builder.statement(
        "select * from t where id = ?",
        result(columns, [["1", "ada", "10.5", "1", "19000"]]),
        bindings={"1": {"type": "FIXED", "value": "1"}},
    )
    session = load_session(builder.session_id, builder.end())

    report = replay_session(session, sandbox)

    assert report.matched, [str(d) for r in report.results for d in r.differences]
    assert report.results[4].replayed.row_count == 2
    assert report.results[5].replayed.rows == report.results[5].recorded.rows
    assert len(report.results[5].recorded.rows) == 2


def test_differences_and_unrecorded_outcomes(sandbox: Target, schema: str):
    builder = SessionBuilder()
    where = new_schema(builder, schema)
    builder.statement(
        f"create or replace table {where}.t (id int)", status("Table T successfully created.")
    )
    builder.statement(f"select * from {where}.t", failure("002003", "does not exist"))
    builder.statement(f"select id as other from {where}.t", result([("ID", "fixed")], []))
    builder.statement(f"select count(*) from {where}.t", None, lost=True)
    builder.statement(
        f"select 1 from {where}.t",
        result([("1", "fixed")], [["1"]] * 3),
        trimmed={"data.rowset": 9000},
    )
    session = load_session(builder.session_id, builder.end())

    report = replay_session(session, sandbox)
    verdicts = [r.verdict for r in report.results]

    assert verdicts == [
        Verdict.MATCH, Verdict.MATCH, Verdict.MATCH, Verdict.DIFFERS, Verdict.DIFFERS,
        Verdict.UNCOMPARED, Verdict.DIFFERS,
    ]  # fmt: skip
    assert str(report.results[3].differences[0]) == "outcome: recorded error 002003, replay ok"
    assert str(report.results[4].differences[0]) == "columns: recorded ID; replay OTHER"
    assert report.results[5].reason == "nothing to compare: reset"
    # rows cut by the body limit: only the count is compared
    assert [d.aspect for d in report.results[6].differences] == ["row_count"]
    assert report.results[6].recorded.rows is None
    assert not report.matched
