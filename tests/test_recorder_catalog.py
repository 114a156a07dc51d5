"""The archive: listing by summary, reading sessions, verifying them, querying in place."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from hoopgw.recorder.catalog import (
    Archive,
    SessionNotFound,
    StreamSummary,
    parse_segment_key,
    segment_key,
    summary_key,
)
from hoopgw.recorder.ids import InvalidSessionId, new_session_id, new_writer_id
from hoopgw.recorder.index import ArchiveIndex
from hoopgw.recorder.schema import chain_record
from hoopgw.recorder.segment import compress_lines, decompress_segment
from hoopgw.recorder.spool import Spool, SpoolConfig
from hoopgw.recorder.store import LocalStore

DEADLINE = 20.0
T0 = 1_700_000_000.0


def caller(subject: str, email: str, *groups: str) -> dict[str, Any]:
    return {"subject": subject, "email": email, "groups": list(groups), "role": "ANALYST"}


def session_records(session_id: str, who: dict[str, Any], statements: int) -> list[dict]:
    """A small session: start, login, statements with responses, one error, one block, end."""
    ts = T0
    records: list[dict] = [
        {
            "kind": "session_start",
            "session_id": session_id,
            "ts": ts,
            "caller": who,
            "client": {"application": "PythonConnector", "version": "3.12.1"},
            "database": "ANALYTICS",
        },
        {
            "kind": "request",
            "session_id": session_id,
            "ts": ts + 0.1,
            "flow_id": "login",
            "method": "POST",
            "path": "/session/v1/login-request",
        },
    ]
    for number in range(statements):
        ts += 1
        flow = f"q{number}"
        records.append(
            {
                "kind": "request",
                "session_id": session_id,
                "ts": ts,
                "flow_id": flow,
                "method": "POST",
                "path": "/queries/v1/query-request",
                "sql": f"select {number}",
            }
        )
        failed = number == 1
        records.append(
            {
                "kind": "response",
                "session_id": session_id,
                "ts": ts + 0.5,
                "flow_id": flow,
                "status": 200,
                "success": not failed,
                "query_id": f"01b-{number}",
                "total": number,
                **({"error_code": "002003", "message": "does not exist"} if failed else {}),
            }
        )
    records += [
        {
            "kind": "refusal",
            "session_id": session_id,
            "ts": ts + 1,
            "flow_id": "blocked",
            "method": "POST",
            "path": "/queries/v1/query-request",
            "sql": "drop table orders",
            "guardrail": {"decision": "block", "rule": "no-drop"},
            "refusal": {"code": 399003, "reason": "DROP is not allowed", "by": "guardrails"},
        },
        {
            "kind": "response",
            "session_id": session_id,
            "ts": ts + 1.1,
            "flow_id": "blocked",
            "status": 200,
            "success": False,
            "error_code": "399003",
            "refusal": {"code": 399003, "reason": "DROP is not allowed", "by": "guardrails"},
        },
        {
            "kind": "error",
            "session_id": session_id,
            "ts": ts + 2,
            "flow_id": "reset",
            "error": "connection reset by upstream",
        },
        {"kind": "session_end", "session_id": session_id, "ts": ts + 3, "reason": "logout"},
    ]
    return records


def record_into(store: LocalStore, spool_dir: Path, records: list[dict], **options: Any) -> str:
    config = SpoolConfig(spool_dir, writer_id=new_writer_id(), max_bytes=1 << 30, **options)
    spool = Spool(config, store)
    spool.start()
    try:
        futures = [spool.append(record) for record in records]
        for future in futures:
            future.result(DEADLINE)
        assert spool.flush(DEADLINE)
    finally:
        spool.close()
    return spool.writer_id


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


# --- keys ----------------------------------------------------------------------------


def test_key_layout_is_hive_partitioned_by_the_session_start_date() -> None:
    session_id = new_session_id(at=datetime(2024, 3, 5, 23, 59, tzinfo=UTC))
    key = segment_key(session_id, "abcdef012345", 42)
    assert key == f"sessions/dt=2024-03-05/{session_id}/abcdef012345-000042.jsonl.zst"
    parsed = parse_segment_key(key)
    assert parsed is not None
    assert (parsed.session_id, parsed.writer, parsed.first_seq) == (session_id, "abcdef012345", 42)
    assert summary_key(session_id, "abcdef012345") == (
        f"summaries/dt=2024-03-05/{session_id}/abcdef012345.json"
    )
    assert parse_segment_key(key.replace("2024-03-05", "2024-03-06")) is None
    assert parse_segment_key(f"sessions/dt=2024-03-05/{session_id}/x.json") is None
    with pytest.raises(InvalidSessionId):
        segment_key("../../x", "abcdef012345", 0)


# --- listing and reading -------------------------------------------------------------


def test_summary_counts_statements_errors_blocked_and_identity(store, tmp_path) -> None:
    session_id = new_session_id()
    who = caller("u-1", "Ana@Example.com", "analysts", "agents")
    record_into(store, tmp_path / "spool", session_records(session_id, who, 4))
    [summary] = ArchiveIndex(Archive(store), store_url="").list_sessions()
    assert summary.session_id == session_id
    assert summary.subject == "u-1"
    assert summary.email == "Ana@Example.com"
    assert summary.groups == ("analysts", "agents")
    assert summary.role == "ANALYST"
    assert summary.client_application == "PythonConnector"
    assert summary.statements == 5  # four statements and the refused one
    assert summary.errors == 2  # the failed statement and the connection reset, not the refusal
    assert summary.blocked == 1  # one flow, however many of its records say so
    assert summary.records == 2 + 4 * 2 + 4
    assert summary.ended and summary.end_reason == "logout"
    assert summary.start == datetime.fromtimestamp(T0, tz=UTC)
    assert summary.end == datetime.fromtimestamp(T0 + 4 + 3, tz=UTC)
    assert summary.bytes > summary.stored_bytes > 0
    assert orjson.loads(orjson.dumps(summary.to_dict()))["statements"] == 5


def test_list_sessions_filters_and_orders_newest_first(store, tmp_path) -> None:
    days = [datetime(2024, 1, 1, 9, tzinfo=UTC), datetime(2024, 1, 15, 9, tzinfo=UTC)]
    days.append(datetime(2024, 2, 1, 9, tzinfo=UTC))
    people = [
        caller("ana", "ana@example.com", "analysts"),
        caller("bob", "bob@example.com", "admins"),
        caller("ana", "ana@example.com", "analysts", "admins"),
    ]
    ids = [new_session_id(at=day) for day in days]
    records = []
    for session_id, who in zip(ids, people, strict=True):
        records += session_records(session_id, who, 1)
    record_into(store, tmp_path / "spool", records)
    archive = Archive(store)

    def listed(**filters: Any) -> list[str]:
        return [
            summary.session_id
            for summary in ArchiveIndex(archive, store_url="").list_sessions(**filters)
        ]

    assert listed() == ids[::-1]
    assert listed(since=datetime(2024, 1, 10, tzinfo=UTC)) == [ids[2], ids[1]]
    assert listed(since=date(2024, 1, 1), until=date(2024, 1, 15)) == [ids[0]]
    assert listed(since=datetime(2023, 1, 1)) == ids[::-1]  # more days than day-by-day LISTs
    assert listed(user="ANA@example.com") == [ids[2], ids[0]]
    assert listed(user="bob") == [ids[1]]
    assert listed(group="admins") == [ids[2], ids[1]]
    assert listed(group="admins", user="ana") == [ids[2]]
    assert listed(limit=1) == [ids[2]]
    assert listed(user="nobody") == []


def test_read_session_merges_writers_by_time(store, tmp_path) -> None:
    session_id = new_session_id()
    base = {"session_id": session_id, "method": "POST", "path": "/q"}
    first = [dict(base, kind="request", ts=T0 + n, flow_id=f"a{n}", sql="select 1") for n in (0, 2)]
    second = [dict(base, kind="request", ts=T0 + n, flow_id=f"b{n}") for n in (1, 3)]
    first.insert(0, {"kind": "session_start", "session_id": session_id, "ts": T0 - 1,
                     "caller": caller("ana", "ana@example.com", "g")})  # fmt: skip
    writer_a = record_into(store, tmp_path / "spool-a", first)
    writer_b = record_into(store, tmp_path / "spool-b", second)
    archive = Archive(store)
    records = archive.read_session(session_id)
    assert [record.get("flow_id") for record in records] == [None, "a0", "b1", "a2", "b3"]
    assert {record["writer"] for record in records} == {writer_a, writer_b}
    assert len(archive.segments(session_id)) == 2
    report = archive.verify_session(session_id)
    assert report.ok and sorted(report.writers) == sorted([writer_a, writer_b])
    summary = archive.summary(session_id)
    assert summary.writers == tuple(sorted([writer_a, writer_b]))
    assert summary.records == 5 and summary.statements == 2
    assert summary.subject == "ana"


def test_missing_and_invalid_sessions(store) -> None:
    archive = Archive(store)
    missing = new_session_id()
    with pytest.raises(SessionNotFound, match=missing):
        archive.read_session(missing)
    with pytest.raises(SessionNotFound):
        archive.verify_session(missing)
    with pytest.raises(SessionNotFound):
        archive.summary(missing)
    assert archive.segments(missing) == []
    with pytest.raises(InvalidSessionId):
        archive.read_session("../sessions")


# --- verification --------------------------------------------------------------------


@pytest.fixture
def recorded(store: LocalStore, tmp_path: Path) -> tuple[Archive, str, list[str]]:
    session_id = new_session_id()
    record_into(
        store,
        tmp_path / "spool",
        session_records(session_id, caller("ana", "a@x", "g"), 12),
        segment_max_bytes=2_500,
    )
    archive = Archive(store)
    keys = archive.segments(session_id)
    assert len(keys) >= 3
    assert archive.verify_session(session_id).ok
    return archive, session_id, keys


def _lines(store: LocalStore, key: str) -> list[bytes]:
    return decompress_segment(store.get(key)).splitlines(keepends=True)


def _messages(archive: Archive, session_id: str) -> list[str]:
    report = archive.verify_session(session_id)
    assert not report.ok
    return [str(problem) for problem in report.problems]


def test_verify_detects_a_flipped_byte(recorded, store: LocalStore) -> None:
    archive, session_id, keys = recorded
    data = bytearray(store.get(keys[1]))
    data[len(data) // 2] ^= 0x01
    store.put(keys[1], bytes(data))
    messages = _messages(archive, session_id)
    assert any(keys[1] in m and ("checksum" in m or "corrupt" in m) for m in messages), messages


def test_verify_detects_a_deleted_record(recorded, store: LocalStore) -> None:
    archive, session_id, keys = recorded
    lines = _lines(store, keys[0])
    removed_seq = orjson.loads(lines[2])["seq"]
    del lines[2]
    store.put(keys[0], compress_lines(b"".join(lines)))
    messages = _messages(archive, session_id)
    expected = f"seq {removed_seq + 1} where {removed_seq} was expected"
    assert any(f"{keys[0]}, line 3" in m and expected in m for m in messages), messages
    assert any("prev_hash does not match" in m for m in messages)


def test_verify_detects_reordered_records(recorded, store: LocalStore) -> None:
    archive, session_id, keys = recorded
    lines = _lines(store, keys[0])
    lines[1], lines[2] = lines[2], lines[1]
    store.put(keys[0], compress_lines(b"".join(lines)))
    messages = _messages(archive, session_id)
    assert any("line 2" in m and "record missing or moved" in m for m in messages), messages
    assert any("prev_hash does not match" in m for m in messages)


def test_verify_detects_an_altered_record_even_when_rehashed(recorded, store) -> None:
    archive, session_id, keys = recorded
    lines = _lines(store, keys[0])
    record = orjson.loads(lines[3])
    record["sql"] = "select 'innocent'"
    lines[3] = orjson.dumps(record) + b"\n"
    store.put(keys[0], compress_lines(b"".join(lines)))
    assert any("hash does not match the record" in m for m in _messages(archive, session_id))
    chain_record(record, record["prev_hash"])  # a forger recomputes the record's own hash
    lines[3] = orjson.dumps(record) + b"\n"
    store.put(keys[0], compress_lines(b"".join(lines)))
    messages = _messages(archive, session_id)
    assert not any("hash does not match the record" in m for m in messages)
    assert any("line 5" in m and "prev_hash does not match" in m for m in messages), messages


def test_verify_detects_a_missing_segment_and_a_cut_tail(recorded, store) -> None:
    archive, session_id, keys = recorded
    lines = _lines(store, keys[-1])
    store.put(keys[-1], compress_lines(b"".join(lines[:-1])))
    messages = _messages(archive, session_id)
    assert any("records missing at the end" in m for m in messages), messages
    store.delete(keys[1])
    messages = _messages(archive, session_id)
    assert any(keys[2] in m and "segment starts at seq" in m for m in messages), messages


def test_stream_summary_merge_is_idempotent() -> None:
    session_id = new_session_id()
    summary = StreamSummary(session_id, "abcdef012345")
    tally = StreamSummary.tally(
        session_id,
        "abcdef012345",
        [{"kind": "request", "seq": 0, "ts": T0, "sql": "x", "hash": "h0"}],
        100,
    )
    assert summary.merge_segment(0, tally, 10, T0)
    assert not summary.merge_segment(0, tally, 10, T0)
    assert (summary.records, summary.statements, summary.bytes, summary.segments) == (1, 1, 100, 1)
    again = StreamSummary.from_json(summary.to_json())
    assert again == summary


# --- querying the archive in place ---------------------------------------------------

DUCKDB_QUERY = """
SELECT dt, session_id, seq, kind, sql, caller.email AS email
FROM read_json_auto('{root}/sessions/*/*/*.jsonl.zst', hive_partitioning = true,
                    union_by_name = true, maximum_depth = 3)
WHERE kind IN ('request', 'refusal') AND sql IS NOT NULL
ORDER BY session_id, writer, seq
"""


def test_duckdb_reads_the_archive_in_place(store: LocalStore, tmp_path: Path) -> None:
    duckdb = pytest.importorskip("duckdb")
    session_id = new_session_id(at=datetime(2024, 5, 17, 12, tzinfo=UTC))
    records = session_records(session_id, caller("ana", "ana@example.com", "g"), 3)
    for record in records:
        record.setdefault("caller", caller("ana", "ana@example.com", "g"))
    record_into(store, tmp_path / "spool", records)
    rows = duckdb.sql(DUCKDB_QUERY.format(root=store.root)).fetchall()
    assert [(str(row[0]), str(row[1]), row[4], row[5]) for row in rows] == [
        ("2024-05-17", session_id, sql, "ana@example.com")
        for sql in ["select 0", "select 1", "select 2", "drop table orders"]
    ]
    summaries = duckdb.sql(
        f"SELECT session_id, statements, blocked, caller.subject FROM read_json_auto("
        f"'{store.root}/summaries/*/*/*.json', hive_partitioning = true)"
    ).fetchall()
    assert [(str(row[0]), row[1], row[2], row[3]) for row in summaries] == [
        (session_id, 4, 1, "ana")
    ]


def test_listing_reads_no_segment(store: LocalStore, tmp_path: Path) -> None:
    """Listing must work from summaries alone: remove every segment and list again."""
    session_id = new_session_id()
    record_into(store, tmp_path / "spool", session_records(session_id, caller("a", "a@x"), 2))
    archive = Archive(store)
    for key in archive.segments(session_id):
        store.delete(key)
    [summary] = ArchiveIndex(archive, store_url="").list_sessions()
    assert summary.statements == 3 and summary.session_id == session_id
