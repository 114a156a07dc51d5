"""Roll-ups: written by the real spool, read by the index, never trusted beyond their versions.

Listing and search must find exactly what reading every summary and segment
finds, whether the roll-ups describe everything, nothing, or something stale
or damaged; only the number of objects read differs, and that is counted here
on the S3 client itself (a boto3 event hook) or by the index's own counters.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import orjson
import pytest
import zstandard

from hoopgw.recorder.catalog import Archive, SessionSummary, StreamSummary
from hoopgw.recorder.ids import new_session_id, new_writer_id
from hoopgw.recorder.index import ArchiveIndex, list_versions
from hoopgw.recorder.listing import SearchQuery, SearchResult, digest_session, search
from hoopgw.recorder.rollup import (
    ROLLUPS,
    RollupBuilder,
    RollupError,
    decode_rollup,
    parse_rollup_key,
    thin_record,
)
from hoopgw.recorder.segment import compress_lines, decompress_segment
from hoopgw.recorder.spool import Spool, SpoolConfig
from hoopgw.recorder.store import LocalStore, S3Store, Store
from tests.stack import wait_until

DEADLINE = 20.0
PREFIX = "hoopgw"
QUERIES = (
    SearchQuery(sql="orders"),
    SearchQuery(object="SALES.APP.ORDERS"),
    SearchQuery(object="*.PAYROLL.*"),
    SearchQuery(outcome="error"),
    SearchQuery(outcome="blocked"),
    SearchQuery(sql="select", user="agent-2@example.com"),
)


# --- sessions with every record shape the digest reads ----------------------------------


def varied_session(session_id: str, user: int = 1, ts: float = 1_790_000_000.0) -> list[dict]:
    """What the gateway records of a busy session: login, reads, DML, an error, a blocked
    statement, an asynchronous query and its result fetch, the SQL API, a failed flow,
    a truncated result, a USE that changes the context, telemetry, logout."""
    caller = {
        "subject": f"agent-{user}",
        "email": f"agent-{user}@example.com",
        "groups": ["agents"] if user % 2 else ["agents", "readers"],
        "role": "AGENT",
        "issuer": "https://idp.example.com",
    }
    client = {"address": "10.0.0.7", "application": "PythonConnector", "version": "4.8.1"}
    headers = [["Host", "acme.snowflakecomputing.com"], ["Authorization", "[REDACTED]"]]
    clock = itertools.count()
    records: list[dict] = []

    def add(kind: str, **fields: Any) -> dict:
        record = {"kind": kind, "session_id": session_id, "ts": ts + next(clock) * 0.25}
        record.update(fields)
        records.append(record)
        return record

    def statement(
        flow: str,
        sql: str,
        data: dict[str, Any],
        *,
        success: bool = True,
        body: dict[str, Any] | None = None,
        **request: Any,
    ) -> None:
        request_body = {"sqlText": sql, "sequenceId": len(records), **(body or {})}
        add(
            "request",
            flow_id=flow,
            endpoint="query",
            method="POST",
            path=f"/queries/v1/query-request?requestId={flow}",
            headers=headers,
            body={"size": 180, "json": request_body},
            sql=sql,
            caller=caller,
            **request,
        )
        document: dict[str, Any] = {"success": success, "data": data}
        if not success:
            document.update(code="002003", message="Object 'NOPE' does not exist")
        add(
            "response",
            flow_id=flow,
            status=200,
            duration_ms=7.5,
            headers=[["Content-Type", "application/json"]],
            body={"size": 900, "json": document},
        )

    add(
        "session_start",
        caller=caller,
        client=client,
        account="xy12345",
        database="SALES",
        schema="APP",
        upstream={"host": "xy12345.snowflakecomputing.com", "account": "xy12345"},
    )
    add(
        "request",
        flow_id="login",
        endpoint="login",
        method="POST",
        path="/session/v1/login-request?databaseName=SALES&schemaName=APP&warehouse=WH",
        headers=headers,
        body={"size": 300, "json": {"data": {"ACCOUNT_NAME": "XY12345", "TOKEN": "[REDACTED]"}}},
    )
    add(
        "response",
        flow_id="login",
        status=200,
        body={"size": 500, "json": {"success": True, "data": {"parameters": [{"name": "X"}]}}},
    )
    rowtype = [
        {"name": "ID", "type": "fixed", "precision": 38, "scale": 0, "nullable": False},
        {"name": "CUSTOMER", "type": "text", "length": 16777216, "database": "SALES"},
        {"type": "text"},
    ]
    rows = [[str(n), f"customer-{n}"] for n in range(40)]
    statement(
        "select",
        "select id, customer from orders where id > ?",
        {
            "queryId": "01b-select",
            "rowtype": rowtype,
            "rowset": rows,
            "total": 40,
            "returned": 40,
            "statementTypeId": 0x1000,
            "queryResultFormat": "json",
            "qrmk": "[REDACTED]",
        },
        body={"bindings": {"1": {"type": "FIXED", "value": "0"}}},
        statements=[{"kind": "SELECT", "reads": ["SALES.APP.ORDERS"], "read_only": True}],
        database="SALES",
        schema="APP",
    )
    statement(
        "insert",
        "insert into orders values (?, ?)",
        {
            "queryId": "01b-insert",
            "rowtype": [{"name": "number of rows inserted"}],
            "rowset": [["2"]],
            "total": 1,
            "statementTypeId": 0x3100,
        },
        bindings={
            "1": {"type": "FIXED", "value": ["1", "2"]},
            "2": {"type": "TEXT", "value": ["a", "b"]},
        },
    )
    statement(
        "update",
        "update orders set customer = 'x' where id = 1",
        {
            "queryId": "01b-update",
            "rowtype": [
                {"name": "number of rows updated"},
                {"name": "number of multi-joined rows updated"},
            ],
            "rowset": [["3", "0"]],
            "total": 1,
            "statementTypeId": 0x3200,
        },
    )
    statement(
        "missing",
        "select * from nope",
        {"errorCode": "002003", "sqlState": "42S02", "queryId": "01b-missing"},
        success=False,
    )
    add(
        "refusal",
        flow_id="drop",
        endpoint="query",
        method="POST",
        path="/queries/v1/query-request?requestId=drop",
        headers=headers,
        body={"size": 60, "json": {"sqlText": "drop table orders"}},
        sql="drop table orders",
        caller=caller,
        guardrail={"decision": "block", "rule": "no-drop", "reason": "DROP is denied"},
        refusal={"code": 399003, "reason": "DROP is denied", "by": "guardrails"},
    )
    add(
        "response",
        flow_id="drop",
        status=200,
        body={"size": 90, "json": {"success": False, "code": "399003", "message": "denied"}},
        refusal={"code": 399003, "reason": "DROP is denied", "by": "guardrails"},
    )
    statement(
        "async",
        "select count(*) from payroll.salaries",
        {"queryId": "01b-async"},
        body={"asyncExec": True},
        **{"async": True},
    )
    add("request", flow_id="fetch", method="GET", path="/queries/01b-async/result", headers=headers)
    add(
        "response",
        flow_id="fetch",
        status=200,
        body={
            "size": 400,
            "json": {
                "success": True,
                "data": {"rowtype": [{"name": "COUNT(*)"}], "rowset": [["12"]], "total": 1},
            },
        },
    )
    add(
        "request",
        flow_id="api",
        endpoint="sql_api",
        method="POST",
        path="/api/v2/statements",
        headers=headers,
        body={"size": 80, "json": {"statement": "select * from sales.app.orders"}},
        sql="select * from sales.app.orders",
        caller=caller,
    )
    add(
        "response",
        flow_id="api",
        status=200,
        body={
            "size": 700,
            "json": {
                "resultSetMetaData": {"numRows": 2, "rowType": [{"name": "ID"}]},
                "data": [["1"], ["2"]],
                "statementHandle": "01b-api",
            },
        },
    )
    statement("use", "use schema HR.PAYROLL", {"queryId": "01b-use", "total": 1})
    statement(
        "big",
        "select * from salaries",
        {
            "queryId": "01b-big",
            "rowtype": [{"name": "NAME"}],
            "rowset": [["x"]] * 5,
            "total": 120_000,
            "returned": 5,
            "chunks": [{"url": "https://stage.example.com/c0", "rowCount": 60_000}],
        },
    )
    records[-1]["body"].update(truncated=True, sha256="ab" * 32, trimmed={"data.rowset": 60_000})
    add(
        "request",
        flow_id="lost",
        endpoint="query",
        method="POST",
        path="/queries/v1/query-request?requestId=lost",
        body={"size": 40, "json": {"sqlText": "select 1"}},
        sql="select 1",
        caller=caller,
    )
    add("error", flow_id="lost", error="connection reset by upstream", duration_ms=3.0)
    add(
        "request",
        flow_id="telemetry",
        endpoint="telemetry",
        method="POST",
        path="/telemetry/send",
        body={"size": 2000, "json": {"logs": [{"message": "x" * 200}] * 8}},
    )
    add("response", flow_id="telemetry", status=200, body={"size": 4, "text": "done"})
    add("session_end", reason="logout")
    for seq, record in enumerate(records):
        record.update(v=1, writer="a1b2c3d4e5f6", seq=seq, prev_hash="0" * 64, hash="f" * 64)
    return records


def test_a_digest_of_thin_records_is_the_digest_of_the_full_ones() -> None:
    session_id = new_session_id()
    full = varied_session(session_id)
    thin = [thin_record(record) for record in full]
    mixed = [thin_record(r) if n % 2 else r for n, r in enumerate(full)]

    expected = digest_session(session_id, full)
    assert len(expected) == 10
    assert digest_session(session_id, thin) == expected
    assert digest_session(session_id, mixed) == expected
    by_sql = {digest["sql"]: digest for digest in expected}
    assert by_sql["insert into orders values (?, ?)"]["rows"] == 2
    assert by_sql["update orders set customer = 'x' where id = 1"]["rows"] == 3
    assert by_sql["select count(*) from payroll.salaries"]["columns"] == ["COUNT(*)"]
    assert by_sql["select * from salaries"]["objects"] == ["HR.PAYROLL.SALARIES"]

    encoded = orjson.dumps(thin)
    assert b"customer-39" not in encoded and b"Authorization" not in encoded
    assert b'"hash"' not in encoded and b"x" * 200 not in encoded
    assert len(encoded) < 0.6 * len(orjson.dumps(full))
    assert full == varied_session(session_id), "thin_record must not change its argument"


# --- the roll-up format ----------------------------------------------------------------


def built_rollups(builder: RollupBuilder) -> dict[str, bytes]:
    return {put.key: put.data for put in builder.due(0, force=True)}


def test_rollups_round_trip_and_refuse_damage() -> None:
    session_id = new_session_id()
    records = varied_session(session_id)
    builder = RollupBuilder("a1b2c3d4e5f6")
    segment = f"sessions/dt={session_id_day(session_id)}/{session_id}/a1b2c3d4e5f6-000000.jsonl.zst"
    summary = f"summaries/dt={session_id_day(session_id)}/{session_id}/a1b2c3d4e5f6.json"
    builder.add_segment(segment, '"etag-1"', records)
    builder.add_summary(summary, '"etag-2"', StreamSummary(session_id, "a1b2c3d4e5f6").to_json())
    builder.add_summary(summary, '"etag-3"', StreamSummary(session_id, "a1b2c3d4e5f6").to_json())
    rollups = built_rollups(builder)
    assert sorted(parse_rollup_key(key).kind for key in rollups) == ["segments", "summaries"]
    assert all(decompress_segment(data) for data in rollups.values())  # one frame each
    entries = [entry for data in rollups.values() for entry in decode_rollup(data)]
    assert [(e.key, e.version) for e in entries if e.summary] == [(summary, '"etag-3"')]
    [described] = [e for e in entries if e.records is not None]
    assert described.records == [thin_record(record) for record in records]

    data = next(data for key, data in rollups.items() if "segments" in key)
    middle = len(data) // 2
    for damaged in (
        data[:middle] + bytes([data[middle] ^ 1]) + data[middle + 1 :],
        data[:-3],
        data + b"trailing",
        b"not zstd at all",
        compress_lines(b'{"v": 1, "key": 3}\n'),
        compress_lines(b"not json\n"),
        compress_lines(b'{"v": 1}'),
    ):
        with pytest.raises(RollupError):
            decode_rollup(damaged)
    with pytest.raises(RollupError, match="more than"):
        decode_rollup(data, max_bytes=1000)
    assert decode_rollup(compress_lines(b'{"v": 2, "key": "x", "version": "y"}\n')) == []


def session_id_day(session_id: str) -> str:
    from hoopgw.recorder.ids import session_date

    return session_date(session_id)


def test_a_large_part_is_kept_as_frames_and_put_as_those_frames() -> None:
    builder = RollupBuilder("a1b2c3d4e5f6")
    keys = []
    for _ in range(60):
        session_id = new_session_id()
        key = f"sessions/dt={session_id_day(session_id)}/{session_id}/a1b2c3d4e5f6-000000.jsonl.zst"
        builder.add_segment(key, '"e"', varied_session(session_id))
        keys.append(key)
    assert builder.memory_bytes() < 300 * 1024  # compressed frames, not the entries' bytes
    [data] = built_rollups(builder).values()
    frames = zstd_frames(data)
    assert len(frames) > 1  # the part's frames as they were, then one for the newest lines
    assert sum(map(len, map(decompress_segment, frames))) > 500 * 1024
    assert [entry.key for entry in decode_rollup(data)] == keys


def zstd_frames(data: bytes) -> list[bytes]:
    frames = []
    while data:
        reader = zstandard.ZstdDecompressor().decompressobj()
        reader.decompress(data)
        frames.append(data[: len(data) - len(reader.unused_data)])
        data = reader.unused_data
    return frames


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_builder_puts_at_most_every_interval_caps_parts_and_forgets_idle_days() -> None:
    clock = FakeClock()
    builder = RollupBuilder("a1b2c3d4e5f6", part_max_entries=3, idle_seconds=60, clock=clock)
    sessions = [new_session_id() for _ in range(4)]
    for session_id in sessions:
        day = session_id_day(session_id)
        builder.add_summary(
            f"summaries/dt={day}/{session_id}/a1b2c3d4e5f6.json",
            '"v1"',
            StreamSummary(session_id, "a1b2c3d4e5f6").to_json(),
        )
    assert builder.next_due(30) == 1030.0
    assert builder.due(30) == []
    clock.now += 30
    puts = builder.due(30)
    assert [parse_rollup_key(put.key).part for put in puts] == [0, 1]  # 3 entries fill part 0
    for put in puts:
        builder.stored(put)
    assert builder.pending() == 0 and builder.next_due(30) is None
    assert builder.memory_bytes() > 0  # part 1 is still being filled
    clock.now += 29  # 59 s after the day's last entry
    assert builder.forget_idle() == 0
    clock.now += 1
    assert builder.forget_idle() == 1 and builder.memory_bytes() == 0

    late = sessions[0]
    builder.add_summary(
        f"summaries/dt={session_id_day(late)}/{late}/a1b2c3d4e5f6.json",
        '"v2"',
        StreamSummary(late, "a1b2c3d4e5f6").to_json(),
    )
    [put] = builder.due(0, force=True)
    assert parse_rollup_key(put.key).part == 2
    builder.failed(put)
    assert builder.pending() == 1 and builder.next_due(30) == clock.now + 30


# --- the real spool writing, the index reading: S3 ---------------------------------------


@dataclass
class Rig:
    store: S3Store
    bucket: str
    endpoint: str
    gets: list[str]

    def reader(self, **options: Any) -> ArchiveIndex:
        """An index without cache over a fresh client whose GETs are counted."""
        store = S3Store(self.bucket, PREFIX, endpoint_url=self.endpoint)

        def count(params: dict[str, Any], **_: Any) -> None:
            self.gets.append(params["Key"][len(PREFIX) + 1 :])

        store.client.meta.events.register("provide-client-params.s3.GetObject", count)
        return ArchiveIndex(Archive(store), store_url=f"s3://{self.bucket}/{PREFIX}", **options)

    def objects_read(self) -> set[str]:
        return {key for key in self.gets if not key.startswith(f"{ROLLUPS}/")}

    def rollups_read(self) -> list[str]:
        return [key for key in self.gets if key.startswith(f"{ROLLUPS}/")]


@pytest.fixture
def rig(moto_s3: str, s3_bucket: str) -> Rig:
    return Rig(S3Store(s3_bucket, PREFIX, endpoint_url=moto_s3), s3_bucket, moto_s3, [])


@pytest.fixture
def spool_factory(tmp_path: Path) -> Iterator[Any]:
    spools: list[Spool] = []

    def make(store: Store, **options: Any) -> Spool:
        spool = Spool(
            SpoolConfig(
                tmp_path / f"spool-{len(spools)}",
                writer_id=new_writer_id(),
                max_bytes=1 << 30,
                **options,
            ),
            store,
        )
        spool.start()
        spools.append(spool)
        return spool

    yield make
    for spool in spools:
        spool.close()


def record(spool: Spool, records: list[dict]) -> None:
    futures = [spool.append({k: v for k, v in r.items() if k not in STORED}) for r in records]
    for future in futures:
        future.result(DEADLINE)


STORED = frozenset({"v", "writer", "seq", "prev_hash", "hash"})


def record_sessions(spool: Spool, count: int) -> list[str]:
    ids = []
    for number in range(count):
        session_id = new_session_id()
        record(spool, varied_session(session_id, user=number % 4))
        ids.append(session_id)
    assert spool.flush(DEADLINE)
    return ids


def described(store: Store) -> set[tuple[str, str]]:
    """(key, version) of every object the store's roll-ups describe."""
    out = set()
    for key, _ in list_versions(store, f"{ROLLUPS}/"):
        out |= {(entry.key, entry.version) for entry in decode_rollup(store.get(key))}
    return out


def stored_objects(store: Store) -> set[tuple[str, str | None]]:
    return set(list_versions(store, "summaries/")) | set(list_versions(store, "sessions/"))


@dataclass
class Answers:
    listed: list[SessionSummary]
    found: list[SearchResult]


def answers(index: ArchiveIndex) -> Answers:
    listed = index.list_sessions()
    found = [search(index, query) for query in QUERIES]
    return Answers(listed, found)


def same(a: Answers, b: Answers) -> bool:
    def searched(found: list[SearchResult]) -> list[Any]:
        return [([m.statement for m in r.matches], r.unreadable) for r in found]

    return a.listed == b.listed and searched(a.found) == searched(b.found)


def test_a_cold_query_reads_the_rollups_instead_of_every_object(rig: Rig, spool_factory) -> None:
    spool = spool_factory(rig.store, rollup_interval=0.2)
    record_sessions(spool, 20)
    everything = stored_objects(rig.store)
    wait_until(lambda: described(rig.store) >= everything, DEADLINE, "roll-ups of every object")

    expected = answers(rig.reader(rollups=False))
    assert rig.objects_read() == {key for key, _ in everything}
    assert len(expected.listed) == 20 and all(r.matches for r in expected.found)
    archive = Archive(rig.store)
    assert expected.listed == [archive.summary(s.session_id) for s in expected.listed]

    rig.gets.clear()
    index = rig.reader(rollup_min_objects=1)
    assert same(answers(index), expected)
    assert rig.objects_read() == set()
    assert 2 <= len(rig.rollups_read()) == index.stats.rollup_reads
    assert index.stats.object_reads == 0

    rig.gets.clear()
    few = rig.reader()  # fewer objects of a day wanted than the threshold: object by object
    assert few.list_sessions(limit=3) == expected.listed[:3]
    assert len(rig.objects_read()) == 3 and rig.rollups_read() == []


def test_what_changed_after_the_last_rollup_put_is_read_from_the_store(
    rig: Rig, spool_factory
) -> None:
    spool = spool_factory(rig.store, rollup_interval=3600)
    record_sessions(spool, 8)
    growing = new_session_id()
    records = varied_session(growing, user=2)
    record(spool, records[:10])
    assert spool.flush(DEADLINE)
    assert spool.put_rollups(DEADLINE)
    assert described(rig.store) == stored_objects(rig.store)
    before = dict(stored_objects(rig.store))

    record(spool, records[10:])  # the session goes on: a second segment, its summary rewritten
    late = new_session_id()
    record(spool, varied_session(late, user=3))  # and a session starts
    assert spool.flush(DEADLINE)
    changed = {key for key, version in stored_objects(rig.store) if before.get(key) != version}
    assert len(changed) == 4  # growing's summary and new segment, late's summary and segment

    expected = answers(rig.reader(rollups=False))
    rig.gets.clear()
    index = rig.reader(rollup_min_objects=1)
    assert same(answers(index), expected)
    assert rig.objects_read() == changed
    assert expected.listed[1].session_id == growing and expected.listed[1].ended


def test_a_damaged_rollup_is_passed_over(rig: Rig, spool_factory) -> None:
    spool = spool_factory(rig.store, rollup_interval=3600)
    record_sessions(spool, 6)
    assert spool.put_rollups(DEADLINE)
    rollups = sorted(key for key, _ in list_versions(rig.store, f"{ROLLUPS}/"))
    assert len(rollups) == 2
    segments_rollup = next(key for key in rollups if "-segments-" in key)
    data = rig.store.get(segments_rollup)
    rig.store.put(segments_rollup, data[: len(data) // 2] + b"\x00" + data[len(data) // 2 + 1 :])
    summaries_rollup = next(key for key in rollups if "-summaries-" in key)
    rig.store.put(summaries_rollup, b"this is not a roll-up")

    expected = answers(rig.reader(rollups=False))
    rig.gets.clear()
    index = rig.reader(rollup_min_objects=1)
    assert same(answers(index), expected)
    assert index.stats.rollups_unreadable == 2 and index.stats.rollup_hits == 0
    assert rig.objects_read() == {key for key, _ in stored_objects(rig.store)}


def test_a_segment_altered_after_its_rollup_is_reported_as_unreadable(
    rig: Rig, spool_factory
) -> None:
    spool = spool_factory(rig.store, rollup_interval=3600)
    sessions = record_sessions(spool, 4)
    assert spool.put_rollups(DEADLINE)
    [segment] = [key for key, _ in list_versions(rig.store, "sessions/") if sessions[0] in key]
    s3 = boto3.client("s3", endpoint_url=rig.endpoint)
    full_key = f"{PREFIX}/{segment}"
    data = s3.get_object(Bucket=rig.bucket, Key=full_key)["Body"].read()
    s3.put_object(Bucket=rig.bucket, Key=full_key, Body=data[:-40] + bytes(40))

    index = rig.reader(rollup_min_objects=1)
    result = search(index, SearchQuery(sql="orders"))
    assert result.unreadable == [sessions[0]]
    assert {m.session_id for m in result.matches} == set(sessions[1:])
    assert segment in rig.objects_read()


# --- a local directory store -------------------------------------------------------------


def test_local_store_rollups_written_at_close_and_matched_by_file_version(
    tmp_path: Path, spool_factory
) -> None:
    store = LocalStore(tmp_path / "store")
    spool = spool_factory(store, rollup_interval=3600)
    sessions = record_sessions(spool, 5)
    assert list(store.list(f"{ROLLUPS}/")) == []
    spool.close()
    assert described(store) == stored_objects(store)

    summary = next(key for key, _ in list_versions(store, "summaries/") if sessions[2] in key)
    rewritten = StreamSummary.from_json(store.get(summary))
    rewritten.statements = 99
    store.put(summary, rewritten.to_json())

    def index(**options: Any) -> ArchiveIndex:
        return ArchiveIndex(Archive(store), store_url=f"file:{store.root}", **options)

    expected = answers(index(rollups=False))
    assert next(s for s in expected.listed if s.session_id == sessions[2]).statements == 99
    reader = index(rollup_min_objects=1)
    assert same(answers(reader), expected)
    assert reader.stats.object_reads == 1 + len(QUERIES)  # the rewritten summary, per query


def test_failing_rollup_puts_never_hold_up_uploads(tmp_path: Path, spool_factory) -> None:
    store = LocalStore(tmp_path / "store")
    blocker = store.root / ROLLUPS
    blocker.write_text("a file where the roll-up directory would go")
    spool = spool_factory(store, rollup_interval=0.1)
    record_sessions(spool, 3)  # flush() inside: every segment and summary is stored
    assert len(list(store.list("sessions/"))) == 3
    wait_until(lambda: spool.stats().rollup_failures >= 2, DEADLINE, "roll-up PUTs retried")
    assert spool.stats().rollups_pending == 2
    assert "roll-up" not in str(spool.stats().last_upload_error)

    blocker.unlink()
    wait_until(
        lambda: described(store) == stored_objects(store), DEADLINE, "roll-ups once possible"
    )
    assert spool.stats().last_rollup_error is None


def test_spool_without_rollups_writes_none(tmp_path: Path, spool_factory) -> None:
    store = LocalStore(tmp_path / "store")
    spool = spool_factory(store, rollup_interval=None)
    record_sessions(spool, 2)
    spool.close()
    assert list(store.list(f"{ROLLUPS}/")) == []
    index = ArchiveIndex(Archive(store), store_url=f"file:{store.root}", rollup_min_objects=1)
    assert len(index.list_sessions()) == 2 and index.stats.object_reads == 2


def test_rollup_key_layout() -> None:
    day = "2026-11-24"
    writer = uuid.uuid4().hex[:12]
    key = f"{ROLLUPS}/dt={day}/{writer}-segments-000007.rollup.zst"
    parsed = parse_rollup_key(key)
    assert parsed is not None and (parsed.day, parsed.writer, parsed.part) == (day, writer, 7)
    assert parse_rollup_key(f"{ROLLUPS}/dt={day}/{writer}-other-000007.rollup.zst") is None
    assert parse_rollup_key(f"{ROLLUPS}/dt={day}/{writer}-segments-000007.jsonl.zst") is None
