"""The spool: durable before acknowledged, kill-safe, outage-proof, exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from hoopgw.recorder.catalog import Archive, SessionNotFound
from hoopgw.recorder.ids import InvalidSessionId, InvalidWriterId, new_session_id, new_writer_id
from hoopgw.recorder.index import ArchiveIndex
from hoopgw.recorder.schema import FORMAT_VERSION, GENESIS_HASH, record_hash, validate_record
from hoopgw.recorder.spool import Spool, SpoolConfig, SpoolDiskFull, SpoolError
from hoopgw.recorder.store import LocalStore
from tests import stack

DEADLINE = 20.0


def wait_for(condition: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    stack.wait_until(condition, timeout, what)


def request(session_id: str, flow: str, sql: str = "select 1") -> dict[str, Any]:
    return {
        "kind": "request",
        "session_id": session_id,
        "ts": time.time(),
        "flow_id": flow,
        "method": "POST",
        "path": "/queries/v1/query-request",
        "sql": sql,
    }


def start(session_id: str) -> dict[str, Any]:
    return {
        "kind": "session_start",
        "session_id": session_id,
        "ts": time.time(),
        "caller": {"subject": "u1", "email": "u1@example.com", "groups": ["g"], "role": "R"},
        "client": {"application": "PythonConnector", "address": "127.0.0.1"},
    }


def end(session_id: str) -> dict[str, Any]:
    return {"kind": "session_end", "session_id": session_id, "ts": time.time(), "reason": "logout"}


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


@pytest.fixture
def make_spool(tmp_path: Path, store: LocalStore) -> Iterator[Callable[..., Spool]]:
    spools: list[Spool] = []

    def make(**options: Any) -> Spool:
        options.setdefault("max_bytes", 1 << 30)
        options.setdefault("retry_initial", 0.02)
        options.setdefault("retry_max", 0.1)
        spool = Spool(SpoolConfig(tmp_path / "spool", writer_id=new_writer_id(), **options), store)
        spool.start()
        spools.append(spool)
        return spool

    yield make
    for spool in spools:
        spool.close()


class OutageSwitch:
    """Takes a LocalStore's directory away (a plain file in its place) and back."""

    def __init__(self, store: LocalStore) -> None:
        self.root = store.root
        self.away = store.root.with_name(store.root.name + "-away")

    def down(self) -> None:
        self.root.rename(self.away)
        self.root.write_bytes(b"not a directory")

    def up(self) -> None:
        self.root.unlink()
        self.away.rename(self.root)


def spool_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.suffix in (".jsonl", ".open"))


# --- append contract -----------------------------------------------------------------


def test_append_assigns_chain_fields_and_keeps_the_callers_dict(make_spool) -> None:
    spool = make_spool()
    session_a, session_b = new_session_id(), new_session_id()
    original = request(session_a, "f1")
    snapshot = dict(original)
    first = spool.append(original).result(DEADLINE)
    second = spool.append(request(session_a, "f2")).result(DEADLINE)
    other = spool.append(request(session_b, "f3")).result(DEADLINE)
    assert original == snapshot
    assert first["v"] == FORMAT_VERSION
    assert first["writer"] == spool.writer_id
    assert (first["seq"], second["seq"], other["seq"]) == (0, 1, 0)
    assert first["prev_hash"] == GENESIS_HASH == other["prev_hash"]
    assert second["prev_hash"] == first["hash"]
    assert first["hash"] == record_hash(first)
    assert validate_record(first) == []


def test_append_refuses_bad_records_without_using_a_seq(make_spool) -> None:
    spool = make_spool()
    session_id = new_session_id()
    with pytest.raises(InvalidSessionId):
        spool.append(request("../../etc", "f"))
    with pytest.raises(ValueError, match="unknown record kind"):
        spool.append(dict(request(session_id, "f"), kind="bogus"))
    with pytest.raises(ValueError, match="ts must be"):
        spool.append(dict(request(session_id, "f"), ts="now"))
    with pytest.raises(TypeError):
        spool.append(dict(request(session_id, "f"), sql=object()))
    assert spool.append(request(session_id, "ok")).result(DEADLINE)["seq"] == 0
    spool.close()
    with pytest.raises(SpoolError, match="not running"):
        spool.append(request(session_id, "late"))


def test_one_spool_per_directory(make_spool, tmp_path: Path, store: LocalStore) -> None:
    make_spool()
    with pytest.raises(SpoolError, match="in use"):
        config = SpoolConfig(tmp_path / "spool", writer_id=new_writer_id(), max_bytes=1)
        Spool(config, store).start()


def test_the_config_checks_the_writer_id_and_takes_no_interval_as_no_rollups(tmp_path) -> None:
    with pytest.raises(InvalidWriterId):
        SpoolConfig(tmp_path, writer_id="Not-An-Id", max_bytes=1)
    for interval in (None, 0, -1.0):
        config = SpoolConfig(
            str(tmp_path), writer_id=new_writer_id(), max_bytes=1, rollup_interval=interval
        )
        assert (config.rollup_interval, config.directory) == (None, tmp_path)


# --- durability ----------------------------------------------------------------------


@pytest.mark.parametrize("prepared", [False, True], ids=["plain-wal", "prepared-wal"])
def test_futures_resolve_only_after_the_record_is_fsynced(
    make_spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prepared: bool
) -> None:
    """Whether the WAL appends to a plain file (fsync) or overwrites a prepared one's
    zeros (fdatasync), no future resolves before a sync that covers its record."""
    real_pwrite, real_syncs = os.pwrite, {"fsync": os.fsync, "fdatasync": os.fdatasync}
    written: dict[str, int] = {}  # per file: the end of the lines written to it
    synced: list[tuple[str, int, str]] = []
    record_syncs: set[str] = set()  # how the acknowledged records were synced
    calls = 0

    def recording_pwrite(fd: int, data: Any, offset: int) -> int:
        count = real_pwrite(fd, data, offset)
        path = os.readlink(f"/proc/self/fd/{fd}")
        if bytes(data).strip(b"\0"):  # a record's line, not a prepared file's zeros
            written[path] = max(written.get(path, 0), offset + count)
        return count

    def slow_recording(name: str) -> Callable[[int], None]:
        def sync(fd: int) -> None:
            nonlocal calls
            path = os.readlink(f"/proc/self/fd/{fd}")
            end = written.get(path, 0)
            if path.endswith(".log"):
                calls += 1
                time.sleep(0.003)  # a slow disk, so that producers pile up into batches
            real_syncs[name](fd)
            synced.append((path, end, name))

        return sync

    spool = make_spool(wal_max_bytes=1 << 20, wal_prepare=prepared)
    if prepared:
        wait_for(lambda: spool.stats().wal_prepared_files >= 1, "a prepared file")
        spool.append(request(new_session_id(), "rotate")).result(DEADLINE)
        wait_for(lambda: spool.stats().wal_prepared_files >= 2, "writing in a prepared file")
    monkeypatch.setattr(os, "pwrite", recording_pwrite)
    monkeypatch.setattr(os, "fsync", slow_recording("fsync"))
    monkeypatch.setattr(os, "fdatasync", slow_recording("fdatasync"))
    wal_dir = tmp_path / "spool"
    problems: list[str] = []

    def check_durable(future: Future) -> None:
        record = future.result()
        marker = f'"hash":"{record["hash"]}"}}\n'.encode()
        for wal in wal_dir.glob("wal-*.log"):
            data = wal.read_bytes()
            position = data.find(marker)
            if position >= 0:
                end_offset = position + len(marker)
                covering = [
                    n for p, size, n in list(synced) if p == str(wal) and size >= end_offset
                ]
                if not covering:
                    problems.append(f"seq {record['seq']} acknowledged before its fsync")
                record_syncs.update(covering[:1])
                return
        problems.append(f"seq {record['seq']} acknowledged but not in the WAL")

    sessions = [new_session_id() for _ in range(8)]
    futures: list[Future] = []

    def produce(session_id: str) -> None:
        for number in range(60):
            future = spool.append(request(session_id, f"{session_id}-{number}"))
            future.add_done_callback(check_durable)
            futures.append(future)

    threads = [threading.Thread(target=produce, args=(sid,)) for sid in sessions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for future in list(futures):
        future.result(DEADLINE)
    assert problems == []
    records = len(futures)
    batches = spool.stats().batches
    assert records == 480
    # a prepared file's records need only their data synced; a plain file's, its size too
    assert record_syncs == ({"fdatasync"} if prepared else {"fsync"})
    assert batches < records / 4, f"{batches} batches for {records} records: no group commit"
    assert calls < records / 4, f"{calls} fsyncs for {records} records"


def wal_text(directory: Path) -> bytes:
    return b"".join(path.read_bytes() for path in sorted(directory.glob("wal-*.log")))


def test_append_on_loop_settles_on_the_loop_after_the_fsync(
    make_spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync
    fsyncs: list[int] = []
    failing = threading.Event()

    def counting_fsync(fd: int) -> None:
        if failing.is_set():
            raise OSError(5, "Input/output error")
        real_fsync(fd)
        fsyncs.append(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    spool = make_spool()
    session_id = new_session_id()

    async def append_and_wait(flow: str) -> tuple[dict[str, Any], int, int, int]:
        settled: list[tuple[int, int]] = []
        before = len(fsyncs)  # start-up fsyncs the directory and the WAL's creation
        future = spool.append_on_loop(request(session_id, flow))
        future.add_done_callback(
            lambda _: settled.append((threading.get_ident(), len(fsyncs) - before))
        )
        record = await asyncio.wait_for(future, DEADLINE)
        return record, threading.get_ident(), *settled[0]

    record, loop_thread, settled_thread, fsyncs_since_append = asyncio.run(append_and_wait("f1"))
    assert (record["seq"], record["hash"]) == (0, record_hash(record))
    assert settled_thread == loop_thread
    assert fsyncs_since_append >= 1, "settled before the WAL was fsynced"

    failing.set()
    with pytest.raises(SpoolError, match=r"spool disk failed: .*Input/output error"):
        asyncio.run(append_and_wait("f2"))
    assert spool.stats().state == "failed", "an I/O error is not a full disk: failed for good"


class HeldFsync:
    """os.fsync that, once armed, blocks in its next call until released: the writer is held
    in a batch's fsync while more records queue up behind it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.armed = threading.Event()
        self.entered = threading.Event()
        self.release = threading.Event()
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            if self.armed.is_set() and not self.entered.is_set():
                self.entered.set()
                self.release.wait(DEADLINE)
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)


def count_hand_overs(loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch) -> list:
    """The callbacks other threads hand to `loop` from now on (`call_soon_threadsafe`)."""
    hand_overs: list[object] = []
    real_call_soon_threadsafe = loop.call_soon_threadsafe

    def counting(callback: Any, *args: Any) -> Any:
        hand_overs.append(callback)
        return real_call_soon_threadsafe(callback, *args)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
    return hand_overs


def fsync_recording_threads(threads: list[int]) -> Callable[[int], None]:
    """os.fsync that notes the thread calling it in `threads`."""
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        threads.append(threading.get_ident())
        real_fsync(fd)

    return recording_fsync


def hold_the_writer(spool: Spool, held: HeldFsync, session_id: str) -> Future:
    """The writer thread in its own batch's fsync (a record appended off the loop), so that
    records appended on a loop meanwhile are left to it: the writer's own path."""
    held.armed.set()
    first = spool.append(request(session_id, "held"))
    assert held.entered.wait(DEADLINE), "the writer never reached its fsync"
    return first


def test_waiters_on_a_loop_commit_themselves_with_one_fsync_and_no_hand_over(
    make_spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop's group commit: what its callbacks appended in one turn is written and
    fsynced once, on the loop, and settled there; durable when the futures resolve."""
    spool = make_spool()
    sessions = [new_session_id() for _ in range(8)]
    spool.append_eventually(request(sessions[0], "outcome-before"))
    fsync_threads: list[int] = []
    recording_fsync = fsync_recording_threads(fsync_threads)

    async def scenario() -> tuple[list[dict[str, Any]], int, list[bytes], int]:
        loop = asyncio.get_running_loop()
        hand_overs = count_hand_overs(loop, monkeypatch)
        monkeypatch.setattr(os, "fsync", recording_fsync)
        batches = spool.stats().batches
        futures = [
            spool.append_on_loop(request(session_id, f"statement-{number}"))
            for number, session_id in enumerate(sessions)
        ]
        durable_when_settled: list[bytes] = []
        futures[-1].add_done_callback(
            lambda _: durable_when_settled.append(wal_text(tmp_path / "spool"))
        )
        records = await asyncio.wait_for(asyncio.gather(*futures), DEADLINE)
        return (
            records,
            len(hand_overs),
            durable_when_settled,
            spool.stats().batches - batches,
        )

    loop_thread = threading.get_ident()
    records, hand_overs, durable, batches = asyncio.run(scenario())
    assert [record["flow_id"] for record in records] == [f"statement-{n}" for n in range(8)]
    assert [record["seq"] for record in records] == [1, 0, 0, 0, 0, 0, 0, 0]
    assert all(record["hash"] == record_hash(record) for record in records)
    assert hand_overs == 0, "the writer thread handed the records back"
    assert batches == 1, f"{batches} WAL writes for one turn of the loop"
    assert fsync_threads.count(loop_thread) == 1
    # every record is in the WAL when its future resolves, and so is the one queued before
    assert all(f'"hash":"{record["hash"]}"'.encode() in durable[0] for record in records)
    assert b'"flow_id":"outcome-before"' in durable[0]


def test_waiters_on_a_busy_loop_leave_the_fsync_to_the_writer_thread(
    make_spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`commit_here=False` (the loop has other statements to get on with): the writer
    thread writes and fsyncs, and the loop is woken once for the batch."""
    spool = make_spool()
    sessions = [new_session_id() for _ in range(4)]
    fsync_threads: list[int] = []
    recording_fsync = fsync_recording_threads(fsync_threads)

    async def scenario() -> tuple[list[dict[str, Any]], int]:
        loop = asyncio.get_running_loop()
        hand_overs = count_hand_overs(loop, monkeypatch)
        monkeypatch.setattr(os, "fsync", recording_fsync)
        futures = [
            spool.append_on_loop(request(session_id, f"busy-{number}"), commit_here=False)
            for number, session_id in enumerate(sessions)
        ]
        records = await asyncio.wait_for(asyncio.gather(*futures), DEADLINE)
        return records, len(hand_overs)

    loop_thread = threading.get_ident()
    records, hand_overs = asyncio.run(scenario())
    assert [record["flow_id"] for record in records] == [f"busy-{n}" for n in range(4)]
    assert fsync_threads and loop_thread not in fsync_threads
    assert 1 <= hand_overs <= len(sessions)


def test_loop_commits_and_the_writer_thread_together_keep_every_stream_whole(
    make_spool, tmp_path: Path, store: LocalStore
) -> None:
    """Appends on a loop (committed by the loop) race appends from threads (written by the
    writer thread): each record is in the WAL when acknowledged, every stream's seqs run
    without a gap or a repeat, and each stored session verifies (lines filed in order)."""
    spool = make_spool(segment_max_bytes=16 * 1024)
    sessions = [new_session_id() for _ in range(6)]
    problems: list[str] = []

    def check_durable(record: dict[str, Any]) -> None:
        if f'"hash":"{record["hash"]}"'.encode() not in wal_text(tmp_path / "spool"):
            problems.append(f"{record['flow_id']} acknowledged but not in the WAL")

    def produce(session_id: str) -> list[dict[str, Any]]:
        records = []
        for number in range(40):
            record = spool.append(request(session_id, f"thread-{number}")).result(DEADLINE)
            check_durable(record)
            records.append(record)
        return records

    async def on_the_loop() -> list[dict[str, Any]]:
        threads = [asyncio.to_thread(produce, session_id) for session_id in sessions[:3]]
        records: list[dict[str, Any]] = []
        for turn in range(40):
            futures = [
                spool.append_on_loop(request(session_id, f"loop-{turn}")) for session_id in sessions
            ]
            for future in futures:
                future.add_done_callback(lambda done: check_durable(done.result()))
            records += await asyncio.wait_for(asyncio.gather(*futures), DEADLINE)
        for produced in await asyncio.gather(*threads):
            records += produced
        return records

    records = asyncio.run(on_the_loop())
    assert problems == []
    for session_id in sessions:
        seqs = sorted(record["seq"] for record in records if record["session_id"] == session_id)
        assert seqs == list(range(len(seqs))), f"stream {session_id} has a gap or a repeat"
    assert len(records) == 40 * len(sessions) + 40 * 3
    assert spool.flush(DEADLINE)
    archive = Archive(store)
    for session_id in sessions:
        assert len(archive.read_session(session_id)) == sum(
            record["session_id"] == session_id for record in records
        )
        assert archive.verify_session(session_id).ok, session_id


def test_a_commit_between_the_writers_write_and_its_filing_is_filed_after_its_batch(
    make_spool, store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The interleaving a loop's commit can hit: the writer thread has written and is
    settling its batch when a producer commits the next record of the same stream. The
    writer's batch is filed first, so the stored session keeps its seq order."""
    from hoopgw.recorder.spool import writer as writer_module

    spool = make_spool()
    session_id = new_session_id()
    real_settle = writer_module._settle
    committed_between: list[bool] = []

    def settle_then_commit(items: Any, error: Any, here: bool = False) -> int:
        settled = real_settle(items, error, here)
        if not committed_between and threading.current_thread().name == "hoopgw-spool-writer":
            committed_between.append(True)
            spool._writer.enqueue(request(session_id, "committed-between"), None, wake=False)
            spool._writer.commit_queued()
        return settled

    monkeypatch.setattr(writer_module, "_settle", settle_then_commit)
    first = spool.append(request(session_id, "the-writers-batch")).result(DEADLINE)
    wait_for(lambda: bool(committed_between), "the commit between write and filing")
    assert spool.flush(DEADLINE)
    records = Archive(store).read_session(session_id)
    assert [(record["flow_id"], record["seq"]) for record in records] == [
        ("the-writers-batch", first["seq"]),
        ("committed-between", first["seq"] + 1),
    ]
    assert Archive(store).verify_session(session_id).ok


def test_a_batch_of_waiters_on_a_loop_the_writer_has_in_hand_is_woken_with_one_hand_over(
    make_spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = HeldFsync(monkeypatch)
    spool = make_spool()
    sessions = [new_session_id() for _ in range(8)]

    async def scenario() -> tuple[dict[str, Any], list[dict[str, Any]], int]:
        loop = asyncio.get_running_loop()
        first = await asyncio.to_thread(hold_the_writer, spool, held, sessions[0])
        hand_overs = count_hand_overs(loop, monkeypatch)
        queued = [
            spool.append_on_loop(request(session_id, f"queued-{number}"))
            for number, session_id in enumerate(sessions)
        ]
        await asyncio.sleep(0)  # the loop's commit runs, finds the writer busy, leaves it
        held.release.set()
        records = await asyncio.wait_for(asyncio.gather(*queued), DEADLINE)
        return await asyncio.wrap_future(first), records, len(hand_overs)

    first, records, hand_overs = asyncio.run(scenario())
    assert (first["flow_id"], first["seq"]) == ("held", 0)
    assert [record["flow_id"] for record in records] == [f"queued-{n}" for n in range(8)]
    assert [record["seq"] for record in records] == [1, 0, 0, 0, 0, 0, 0, 0]
    assert all(record["hash"] == record_hash(record) for record in records)
    assert spool.stats().batches >= 2, "the queued records were not a batch of their own"
    # the held batch and the queued one: at most one wake-up each, not one per record
    assert 1 <= hand_overs <= 2, f"{hand_overs} hand-overs to the loop for 8 records"


def test_a_waiter_that_gave_up_leaves_the_others_of_its_batch_settled(
    make_spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = HeldFsync(monkeypatch)
    spool = make_spool()
    session_id = new_session_id()

    async def scenario() -> tuple[bool, list[dict[str, Any]]]:
        first = await asyncio.to_thread(hold_the_writer, spool, held, session_id)
        given_up = spool.append_on_loop(request(session_id, "given-up"))
        last = spool.append_on_loop(request(session_id, "last"))
        given_up.cancel()
        held.release.set()
        records = await asyncio.wait_for(asyncio.gather(asyncio.wrap_future(first), last), DEADLINE)
        return given_up.cancelled(), records

    cancelled, records = asyncio.run(scenario())
    assert cancelled
    assert [(record["flow_id"], record["seq"]) for record in records] == [("held", 0), ("last", 2)]


def test_a_waiter_that_gave_up_before_the_loop_committed_leaves_the_others_settled(
    make_spool,
) -> None:
    spool = make_spool()
    session_id = new_session_id()

    async def scenario() -> tuple[bool, list[dict[str, Any]]]:
        given_up = spool.append_on_loop(request(session_id, "given-up"))
        last = spool.append_on_loop(request(session_id, "last"))
        given_up.cancel()
        records = await asyncio.wait_for(asyncio.gather(last), DEADLINE)
        return given_up.cancelled(), records

    cancelled, records = asyncio.run(scenario())
    assert cancelled
    assert [(record["flow_id"], record["seq"]) for record in records] == [("last", 1)]
    assert spool.stats().state == "ok"


def test_a_full_disk_on_the_loops_commit_fails_its_waiters_and_steps_the_chain_back(
    make_spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop's own WAL write hits ENOSPC: the writer handles it as its own failed write
    (the waiters fail with SpoolDiskFull, the chain steps back) and leaves the spell."""
    real_fsync = os.fsync
    full = threading.Event()

    def fsync(fd: int) -> None:
        if full.is_set():
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    spool = make_spool(disk_probe_interval=0.05, disk_probe_max_interval=0.1)
    session_id = new_session_id()

    async def append(flow: str) -> dict[str, Any]:
        return await asyncio.wait_for(spool.append_on_loop(request(session_id, flow)), DEADLINE)

    before = asyncio.run(append("before"))
    assert before["seq"] == 0
    full.set()
    with pytest.raises(SpoolDiskFull, match="No space left on device"):
        asyncio.run(append("refused"))
    assert spool.stats().state == "disk_full"
    full.clear()
    wait_for(lambda: spool.stats().state == "ok", "the spool to leave the full-disk state")
    after = asyncio.run(append("after"))
    assert (after["seq"], after["prev_hash"]) == (1, before["hash"])


def test_a_record_outlives_the_loop_that_waited_on_it(
    make_spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = HeldFsync(monkeypatch)
    spool = make_spool()
    session_id = new_session_id()

    async def leave_waiting() -> None:
        await asyncio.to_thread(hold_the_writer, spool, held, session_id)
        spool.append_on_loop(request(session_id, "orphaned"))
        await asyncio.sleep(0)  # the loop's commit leaves the record to the busy writer

    asyncio.run(leave_waiting())  # the loop closes while the writer is in the fsync
    held.release.set()

    async def append(flow: str) -> dict[str, Any]:
        return await asyncio.wait_for(spool.append_on_loop(request(session_id, flow)), DEADLINE)

    record = asyncio.run(append("next"))
    assert (record["flow_id"], record["seq"]) == ("next", 2)
    assert spool.stats().state == "ok"


def test_an_unawaited_record_reaches_the_wal_on_its_own(make_spool, tmp_path: Path) -> None:
    spool = make_spool(segment_max_age=3600, eventual_delay=0.05)
    session_id = new_session_id()
    spool.append_eventually(request(session_id, "answer-only"))
    wait_for(lambda: spool.stats().batches == 1, "the unawaited record's batch")
    assert b"answer-only" in wal_text(tmp_path / "spool")


def test_unawaited_records_ride_with_the_next_durable_one_in_order(
    make_spool, store: LocalStore
) -> None:
    spool = make_spool(segment_max_age=3600, eventual_delay=30.0)
    session_id = new_session_id()
    for number in range(5):
        spool.append_eventually(request(session_id, f"eventual-{number}"))
    assert spool.stats().batches == 0, "an unawaited record woke the writer"
    durable = spool.append(request(session_id, "durable")).result(DEADLINE)
    assert durable["seq"] == 5
    assert spool.stats().batches == 1, "the durable append's batch took the queued ones"
    assert spool.flush(DEADLINE)
    records = Archive(store).read_session(session_id)
    assert [r["flow_id"] for r in records] == [*(f"eventual-{n}" for n in range(5)), "durable"]
    assert Archive(store).verify_session(session_id).ok


def test_segments_seal_on_session_end_age_and_size(make_spool, store: LocalStore) -> None:
    spool = make_spool(segment_max_age=0.3, segment_max_bytes=2_000)
    archive = Archive(store)
    ended, idle, big = new_session_id(), new_session_id(), new_session_id()

    spool.append(start(ended))
    spool.append(request(ended, "e1"))
    spool.append(end(ended)).result(DEADLINE)
    wait_for(lambda: len(archive.segments(ended)) == 1, "the ended session's segment")

    spool.append(request(idle, "i1")).result(DEADLINE)
    wait_for(lambda: len(archive.segments(idle)) == 1, "the idle session's segment by age")

    futures = [spool.append(request(big, f"b{n}", "select 'x'" * 20)) for n in range(40)]
    for future in futures:
        future.result(DEADLINE)
    assert spool.flush(DEADLINE)
    keys = archive.segments(big)
    assert len(keys) >= 3, keys
    assert [r["seq"] for r in archive.read_session(big)] == list(range(40))
    assert archive.verify_session(big).ok


def test_many_open_sessions_keep_file_descriptors_bounded(make_spool, store) -> None:
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = open_fds()
    spool = make_spool(segment_max_age=3600)
    sessions = [new_session_id() for _ in range(400)]
    for round_number in range(2):
        futures = [spool.append(request(sid, f"{sid}-{round_number}")) for sid in sessions]
        for future in futures:
            future.result(DEADLINE)
    assert spool.stats().open_segments == 400
    assert open_fds() - before < 300, "one descriptor per open session"
    assert spool.flush(DEADLINE)
    archive = Archive(store)
    for sid in sessions[::50]:
        assert [r["flow_id"] for r in archive.read_session(sid)] == [f"{sid}-0", f"{sid}-1"]


def test_end_session_seals_now(make_spool, store: LocalStore) -> None:
    spool = make_spool(segment_max_age=3600)
    session_id = new_session_id()
    spool.append(request(session_id, "f1")).result(DEADLINE)
    spool.end_session(session_id).result(DEADLINE)
    wait_for(lambda: len(Archive(store).segments(session_id)) == 1, "the sealed segment")


def test_ended_sessions_are_forgotten_and_late_records_start_a_new_stream(
    make_spool, store: LocalStore
) -> None:
    """Chain state follows the open sessions; a forgotten session never reuses a seq."""
    spool = make_spool(segment_max_age=3600, max_finished_streams=4)
    first_writer = spool.stats().writer
    still_open = new_session_id()
    spool.append(request(still_open, "o1")).result(DEADLINE)
    ended = [new_session_id() for _ in range(4)]
    for sid in ended:
        spool.append(start(sid))
        spool.append(end(sid)).result(DEADLINE)
    assert spool.stats().streams == 5

    newcomer = new_session_id()
    assert spool.append(request(newcomer, "n1")).result(DEADLINE)["writer"] != first_writer
    assert spool.stats().streams == 2, "the four ended sessions are forgotten"
    open_again = spool.append(request(still_open, "o2")).result(DEADLINE)
    assert (open_again["writer"], open_again["seq"]) == (first_writer, 1)
    late = spool.append(request(ended[0], "late")).result(DEADLINE)
    assert (late["writer"], late["seq"]) == (spool.stats().writer, 0)

    assert spool.flush(DEADLINE)
    archive = Archive(store)
    assert set(archive.stream_summaries(ended[0])) == {first_writer, late["writer"]}
    assert [r["flow_id"] for r in archive.read_session(ended[0]) if r["kind"] == "request"] == [
        "late"
    ]
    for sid in (ended[0], still_open, newcomer):
        assert archive.verify_session(sid).ok, sid


def test_summaries_of_ended_sessions_leave_the_uploaders_cache(
    make_spool, store: LocalStore
) -> None:
    spool = make_spool(segment_max_age=3600)
    open_session, ended = new_session_id(), new_session_id()
    spool.append(start(open_session))
    spool.end_session(open_session).result(DEADLINE)  # sealed, not ended by a record
    spool.append(start(ended))
    spool.append(end(ended)).result(DEADLINE)
    assert spool.flush(DEADLINE)
    assert spool.stats().cached_summaries == 1
    spool.append(request(ended, "late")).result(DEADLINE)
    assert spool.flush(DEADLINE)
    summary = Archive(store).stream_summaries(ended)[spool.writer_id]
    assert (summary.records, summary.segments, summary.end_reason) == (3, 2, "logout")


# --- outage and limits ---------------------------------------------------------------


def test_store_outage_is_ridden_out_without_loss(make_spool, store: LocalStore, tmp_path) -> None:
    outage = OutageSwitch(store)
    spool = make_spool(segment_max_age=0.05)
    archive = Archive(store)
    outage.down()
    sessions = [new_session_id() for _ in range(3)]
    for session_id in sessions:
        spool.append(start(session_id))
        for number in range(30):
            spool.append(request(session_id, f"{session_id}-{number}"))
        spool.append(end(session_id)).result(DEADLINE)
    wait_for(lambda: spool.stats().upload_failures >= 3, "failing uploads")
    assert spool.stats().last_upload_error
    assert spool.stats().pending_uploads >= 1
    assert spool_files(tmp_path / "spool")
    outage.up()
    assert spool.flush(DEADLINE)
    assert spool_files(tmp_path / "spool") == []
    assert spool.stats().last_upload_error is None
    for session_id in sessions:
        records = archive.read_session(session_id)
        assert [r["seq"] for r in records] == list(range(32))
        assert archive.verify_session(session_id).ok
    listed = {
        summary.session_id: summary
        for summary in ArchiveIndex(archive, store_url="").list_sessions()
    }
    assert {sid: listed[sid].statements for sid in sessions} == dict.fromkeys(sessions, 30)


def test_over_limit_while_the_store_is_down(make_spool, store: LocalStore) -> None:
    outage = OutageSwitch(store)
    spool = make_spool(max_bytes=6_000, segment_max_bytes=1_000)
    outage.down()
    session_id = new_session_id()
    appended = 0
    while not spool.over_limit():
        spool.append(request(session_id, f"f{appended}")).result(DEADLINE)
        appended += 1
        assert appended < 500, "the spool never reported being over its limit"
    assert spool.stats().over_limit is True
    outage.up()
    assert spool.flush(DEADLINE)
    assert not spool.over_limit()
    assert spool.stats().spool_bytes == 0
    assert len(Archive(store).read_session(session_id)) == appended


# --- restart and crash ---------------------------------------------------------------


def test_restart_uploads_what_an_earlier_process_left(make_spool, store, tmp_path) -> None:
    outage = OutageSwitch(store)
    first = make_spool()
    outage.down()
    session_id = new_session_id()
    for number in range(25):
        first.append(request(session_id, f"f{number}"))
    first.append(end(session_id)).result(DEADLINE)
    first.close()
    assert spool_files(tmp_path / "spool")
    outage.up()
    with pytest.raises(SessionNotFound):
        Archive(store).read_session(session_id)
    second = make_spool()
    assert second.stats().recovered_segments >= 1
    assert second.flush(DEADLINE)
    records = Archive(store).read_session(session_id)
    assert [r["flow_id"] for r in records[:25]] == [f"f{n}" for n in range(25)]
    assert {r["writer"] for r in records} == {first.writer_id}
    assert Archive(store).verify_session(session_id).ok


def test_a_spool_refuses_its_own_writer_id_on_leftovers(tmp_path, store) -> None:
    outage = OutageSwitch(store)
    writer = new_writer_id()
    spool = Spool(SpoolConfig(tmp_path / "spool", writer_id=writer, max_bytes=1 << 20), store)
    spool.start()
    outage.down()
    spool.append(request(new_session_id(), "f")).result(DEADLINE)
    spool.close()
    outage.up()
    again = Spool(SpoolConfig(tmp_path / "spool", writer_id=writer, max_bytes=1 << 20), store)
    with pytest.raises(SpoolError, match="fresh writer id"):
        again.start()


CHILD = r"""
import os, sys, threading, time
from pathlib import Path
from hoopgw.recorder.ids import new_writer_id
from hoopgw.recorder.spool import Spool, SpoolConfig
from hoopgw.recorder.store import LocalStore
from tests import stack

spool_dir, store_dir, mode = sys.argv[1], sys.argv[2], sys.argv[3]
sessions = sys.argv[4:]
# "forever": small, short-lived segments so that the kill lands among seals and uploads;
# a count: nothing seals, every record is only in the WAL and open segment files.
forever = mode == "forever"
# WAL files of 64 KiB: the records land in files prepared ahead (zeros after the last line)
config = SpoolConfig(Path(spool_dir), writer_id=new_writer_id(), max_bytes=1 << 30,
                     segment_max_bytes=3000 if forever else 1 << 30,
                     segment_max_age=0.05 if forever else 3600, wal_max_bytes=64 * 1024)
spool = Spool(config, LocalStore(Path(store_dir)))
spool.start()
stack.wait_until(lambda: spool.stats().wal_prepared_files >= 1, 20, "a prepared WAL file")
out = threading.Lock()
acks = 0
all_acked = threading.Event()

def acked(future):
    global acks
    record = future.result()
    with out:
        sys.stdout.write(f"ACK {record['session_id']} {record['flow_id']}\n")
        sys.stdout.flush()
        acks += 1
        if not forever and acks == int(mode):
            all_acked.set()

def produce(session_id, limit):
    number = 0
    while limit is None or number < limit:
        record = {"kind": "request", "session_id": session_id, "ts": time.time(),
                  "flow_id": f"{session_id[-6:]}-{number}", "method": "POST",
                  "path": "/queries/v1/query-request", "sql": f"select {number}"}
        spool.append(record).add_done_callback(acked)
        number += 1
        if number % 7 == 0:
            time.sleep(0.001)

if forever:
    for session_id in sessions:
        threading.Thread(target=produce, args=(session_id, None), daemon=True).start()
    threading.Event().wait()
else:
    produce(sessions[0], int(mode))
    all_acked.wait(20)
    with out:
        sys.stdout.write("DONE\n")
        sys.stdout.flush()
    os._exit(0)  # no close(): to the spool, a crash
"""


def _run_child(tmp_path: Path, mode: str, sessions: list[str]) -> subprocess.Popen:
    spool_dir, store_dir = str(tmp_path / "spool"), str(tmp_path / "store")
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, spool_dir, store_dir, mode, *sessions],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )


@pytest.mark.parametrize("acks_before_kill", [40, 400])
def test_sigkill_mid_stream_loses_no_acknowledged_record_and_duplicates_none(
    tmp_path: Path, store: LocalStore, acks_before_kill: int
) -> None:
    sessions = [new_session_id() for _ in range(3)]
    child = _run_child(tmp_path, "forever", sessions)
    acked: list[tuple[str, str]] = []
    deadline = time.monotonic() + DEADLINE
    try:
        assert child.stdout is not None
        while len(acked) < acks_before_kill:
            assert time.monotonic() < deadline, "the child did not acknowledge records"
            line = child.stdout.readline()
            assert line, "the child exited early"
            _, session_id, flow = line.split()
            acked.append((session_id, flow))
        os.kill(child.pid, signal.SIGKILL)
        for line in child.stdout:
            if line.startswith("ACK "):
                _, session_id, flow = line.split()
                acked.append((session_id, flow))
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL

    config = SpoolConfig(tmp_path / "spool", writer_id=new_writer_id(), max_bytes=1 << 30)
    recovering = Spool(config, store)
    recovering.start()
    try:
        assert recovering.flush(DEADLINE)
        assert spool_files(tmp_path / "spool") == []
    finally:
        recovering.close()

    archive = Archive(store)
    for session_id in sessions:
        if not any(sid == session_id for sid, _ in acked):
            continue
        records = archive.read_session(session_id)
        flows = [record["flow_id"] for record in records]
        assert len(flows) == len(set(flows)), "a record was stored twice"
        stored = set(flows)
        missing = [flow for sid, flow in acked if sid == session_id and flow not in stored]
        assert missing == [], f"acknowledged records lost: {missing[:5]}"
        seqs = [record["seq"] for record in records]
        assert seqs == list(range(len(seqs)))
        report = archive.verify_session(session_id)
        assert report.ok, [str(problem) for problem in report.problems]


def test_recovery_cuts_a_torn_wal_tail(tmp_path: Path, store: LocalStore) -> None:
    session_id = new_session_id()
    child = _run_child(tmp_path, "50", [session_id])
    out, _ = child.communicate(timeout=DEADLINE)
    assert "DONE" in out
    acked = [line.split()[2] for line in out.splitlines() if line.startswith("ACK ")]
    assert len(acked) == 50
    wals = sorted((tmp_path / "spool").glob("wal-*.log"))
    assert wals, "a crashed spool leaves its WAL"
    # the last record's file, where a torn write lands: after its last record, into the
    # prepared file's zeros or at the end of a plain one (a spare holds only zeros)
    [last] = [wal for wal in wals if wal.read_bytes().rstrip(b"\0")][-1:]
    lines = len(last.read_bytes().rstrip(b"\0"))
    assert last.stat().st_size > lines, "the last records were in a prepared file"
    torn = b'{"kind":"request","session_id":"' + session_id.encode() + b'","seq":50,"ts":1'
    with open(last, "r+b") as wal:
        wal.seek(lines)
        wal.write(torn)

    assert list((tmp_path / "spool").glob("*.open")), "the crashed spool left its open segment"
    config = SpoolConfig(tmp_path / "spool", writer_id=new_writer_id(), max_bytes=1 << 30)
    recovering = Spool(config, store)
    recovering.start()
    try:
        assert recovering.stats().dropped_tail_bytes == len(torn)
        assert recovering.stats().recovered_records == 50
        assert recovering.flush(DEADLINE)
    finally:
        recovering.close()
    records = Archive(store).read_session(session_id)
    assert [record["flow_id"] for record in records] == acked
    assert Archive(store).verify_session(session_id).ok
