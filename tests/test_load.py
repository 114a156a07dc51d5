"""Load: many concurrent driver sessions through one gateway, every statement on record once.

Each session runs the same mix of statements through the gateway with the real
connector, in its own thread: results must be what the statement computes, and
the one failing statement per batch must fail exactly as it does when the
connector talks to fakesnow directly. Afterwards the gateway is stopped (its
spool flushed) and every session's records are read back and verified: hash
chain intact, each statement recorded once, each flow with one outcome.
"""

from __future__ import annotations

import collections
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
from snowflake.connector import ProgrammingError

from hoopgw.recorder.catalog import Archive
from hoopgw.recorder.index import ArchiveIndex
from hoopgw.recorder.store import LocalStore

FAILING_SQL = "select * from hoopgw_load_no_such_table"


@dataclass
class Outcome:
    """What one session saw: wrong results and errors direct access would not give."""

    subject: str
    ran: int = 0
    wrong: list[str] = field(default_factory=list)
    failures: list[tuple[Any, ...]] = field(default_factory=list)


def statement(session: int, index: int) -> tuple[str, tuple[Any, ...] | None]:
    """The session's index-th statement and its expected row (None: expected to fail)."""
    if index % 50 == 49:
        return FAILING_SQL, None
    return f"select {index} + {session} as n, 'load-{session}' as who", (
        index + session,
        f"load-{session}",
    )


def run_session(connection: Any, session: int, count: int, start: threading.Barrier) -> Outcome:
    outcome = Outcome(f"load-{session}")
    cursor = connection.cursor()
    start.wait(timeout=60)
    for index in range(count):
        sql, expected = statement(session, index)
        try:
            row = cursor.execute(sql).fetchone()
        except ProgrammingError as exc:
            outcome.failures.append((exc.errno, exc.sqlstate, exc.msg))
        else:
            if row != expected:
                outcome.wrong.append(f"{sql!r} gave {row!r}")
        outcome.ran += 1
    return outcome


def direct_failure(connect, fakesnow_server) -> tuple[Any, ...]:
    with pytest.raises(ProgrammingError) as failed:
        connect(fakesnow_server).cursor().execute(FAILING_SQL)
    return failed.value.errno, failed.value.sqlstate, failed.value.msg


def run_load(
    gateway_factory, fakesnow_server, oidc, connect, sessions: int, statements: int, name: str
) -> None:
    expected_failure = direct_failure(connect, fakesnow_server)
    gateway = gateway_factory(fakesnow_server.url, name=name)
    connections = [
        connect(gateway, oidc.mint(f"load-{i}", ["agents"]), network_timeout=120)
        for i in range(sessions)
    ]
    start = threading.Barrier(sessions)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=sessions) as pool:
        futures = [
            pool.submit(run_session, connection, i, statements, start)
            for i, connection in enumerate(connections)
        ]
        outcomes = [future.result(timeout=600) for future in futures]
    elapsed = time.monotonic() - started
    for connection in connections:
        connection.close()

    failing_per_session = sum(1 for i in range(statements) if statement(0, i)[1] is None)
    for outcome in outcomes:
        assert outcome.ran == statements, outcome.subject
        assert outcome.wrong == [], (outcome.subject, outcome.wrong[:3])
        assert outcome.failures == [expected_failure] * failing_per_session, outcome.subject

    gateway.stop()
    archive = Archive(LocalStore(gateway.workdir / "store"))
    by_subject = {
        summary.subject: summary for summary in ArchiveIndex(archive, store_url="").list_sessions()
    }
    assert {f"load-{i}" for i in range(sessions)} <= set(by_subject)
    for i in range(sessions):
        session_id = by_subject[f"load-{i}"].session_id
        report = archive.verify_session(session_id)
        assert report.ok, (session_id, [str(p) for p in report.problems][:5])
        records = archive.read_session(session_id)
        sql = [r["sql"] for r in records if r["kind"] == "request" and r.get("sql")]
        assert sorted(sql) == sorted(statement(i, index)[0] for index in range(statements))
        kinds = collections.defaultdict(list)
        for record in records:
            if record.get("flow_id"):
                kinds[record["flow_id"]].append(record["kind"])
        assert all(k == ["request", "response"] for k in kinds.values()), session_id
    print(f"\n{sessions} sessions x {statements} statements in {elapsed:.1f}s")


@pytest.mark.slow
def test_32_sessions_of_200_statements(gateway_factory, fakesnow_server, oidc, connect) -> None:
    run_load(gateway_factory, fakesnow_server, oidc, connect, 32, 200, "load-full-gw")


def test_8_sessions_of_50_statements(gateway_factory, fakesnow_server, oidc, connect) -> None:
    run_load(gateway_factory, fakesnow_server, oidc, connect, 8, 50, "load-small-gw")
