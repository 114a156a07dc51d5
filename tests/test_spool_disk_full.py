"""A full spool disk: records refused while it lasts, taken again by themselves after,
and nothing that was acknowledged lost. On a real (small, mounted) filesystem."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import orjson
import pytest

from hoopgw.recorder.catalog import Archive
from hoopgw.recorder.ids import new_session_id, new_writer_id
from hoopgw.recorder.spool import Spool, SpoolConfig, SpoolDiskFull
from hoopgw.recorder.store import LocalStore
from tests import small_fs, stack

DEADLINE = 20.0
MAX_APPENDS = 20_000


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with small_fs.mounted_tmpfs(tmp_path / "small") as mountpoint:
        yield mountpoint


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


@pytest.fixture
def make_spool(disk: Path, store: LocalStore) -> Iterator[Callable[..., Spool]]:
    spools: list[Spool] = []

    def make(**options: Any) -> Spool:
        options.setdefault("max_bytes", 1 << 30)
        options.setdefault("retry_initial", 0.02)
        options.setdefault("retry_max", 0.1)
        options.setdefault("segment_max_age", 3600)
        options.setdefault("disk_probe_interval", 0.05)
        options.setdefault("disk_probe_max_interval", 0.2)
        config = SpoolConfig(disk / "spool", writer_id=new_writer_id(), **options)
        spool = Spool(config, store)
        spool.start()
        spools.append(spool)
        return spool

    yield make
    for spool in spools:
        spool.close()


def request(session_id: str, number: int) -> dict[str, Any]:
    return {
        "kind": "request",
        "session_id": session_id,
        "ts": time.time(),
        "flow_id": f"f{number}",
        "method": "POST",
        "path": "/queries/v1/query-request",
        "sql": f"select {number} -- {'x' * 200}",
    }


def end(session_id: str) -> dict[str, Any]:
    return {"kind": "session_end", "session_id": session_id, "ts": time.time(), "reason": "logout"}


def append_until_full(spool: Spool, session_id: str, acknowledged: list[dict[str, Any]]) -> int:
    """Append and wait, one at a time, until the spool refuses; the number refused."""
    for number in range(len(acknowledged), len(acknowledged) + MAX_APPENDS):
        future: Future[dict[str, Any]] = spool.append(request(session_id, number))
        try:
            acknowledged.append(future.result(DEADLINE))
        except SpoolDiskFull:
            return number
    raise AssertionError("the spool never noticed the full disk")


def wait_for_state(spool: Spool, state: str) -> None:
    stack.wait_until(lambda: spool.stats().state == state, DEADLINE, f"spool state {state}")


def assert_whole_lines(directory: Path) -> None:
    """Every WAL and segment file holds whole JSON lines: no part of a refused write."""
    files = [*directory.glob("wal-*.log"), *directory.glob("*.open"), *directory.glob("*.jsonl")]
    assert files
    for path in files:
        data = path.read_bytes()
        assert not data or data.endswith(b"\n"), f"{path.name} ends in a torn line"
        for line in data.splitlines():
            assert isinstance(orjson.loads(line), dict), path.name


def stored_flows(store: LocalStore, session_id: str) -> list[str]:
    return [r["flow_id"] for r in Archive(store).read_session(session_id) if r["kind"] == "request"]


def test_a_full_disk_is_ridden_out_and_left_by_itself(
    make_spool, disk: Path, store: LocalStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hoopgw.recorder.spool")
    spool = make_spool()
    session_id = new_session_id()
    acknowledged: list[dict[str, Any]] = []
    for number in range(5):
        acknowledged.append(spool.append(request(session_id, number)).result(DEADLINE))
    assert spool.stats().state == "ok"

    small_fs.fill(disk)
    append_until_full(spool, session_id, acknowledged)
    stats = spool.stats()
    assert stats.state == "disk_full"
    assert stats.disk_full and "No space left on device" in stats.disk_full
    assert stats.disk_full_since is not None and stats.disk_full_since <= time.time()
    assert stats.failed is None
    refused_before = stats.refused_while_full
    for number in range(3):
        with pytest.raises(SpoolDiskFull, match="spool disk full"):
            spool.append(request(session_id, 10_000 + number))
    spool.append_eventually(request(session_id, 20_000))  # an outcome: kept for later
    assert spool.stats().refused_while_full == refused_before + 3
    assert spool.flush(timeout=1.0) is False, "nothing can be sealed while the disk is full"
    assert spool.stats().state == "disk_full", "probes must fail while the ballast is there"
    assert_whole_lines(disk / "spool")
    assert "spool disk full" in caplog.text

    small_fs.free(disk)
    wait_for_state(spool, "ok")
    stats = spool.stats()
    assert (stats.recoveries, stats.disk_full, stats.disk_full_since) == (1, None, None)
    assert "spool disk writable again" in caplog.text
    assert f"{refused_before + 3} append(s) refused while full" in caplog.text

    after = spool.append(request(session_id, 50_000)).result(DEADLINE)
    assert after["seq"] == acknowledged[-1]["seq"] + 2, "the chain goes on after the kept one"
    spool.append(end(session_id)).result(DEADLINE)
    assert spool.flush(DEADLINE)
    expected = [record["flow_id"] for record in acknowledged] + ["f20000", "f50000"]
    assert stored_flows(store, session_id) == expected
    assert Archive(store).verify_session(session_id).ok


def test_closed_while_full_the_next_start_keeps_every_acknowledged_record(
    make_spool, disk: Path, store: LocalStore
) -> None:
    spool = make_spool()
    session_id = new_session_id()
    acknowledged = [spool.append(request(session_id, n)).result(DEADLINE) for n in range(5)]
    small_fs.fill(disk)
    append_until_full(spool, session_id, acknowledged)
    spool.close()
    assert_whole_lines(disk / "spool")

    small_fs.free(disk)
    restarted = make_spool()
    restarted.append(end(session_id)).result(DEADLINE)
    assert restarted.flush(DEADLINE)
    assert stored_flows(store, session_id) == [record["flow_id"] for record in acknowledged]
    assert Archive(store).verify_session(session_id).ok


def test_sealing_on_a_full_disk_waits_and_nothing_filed_is_lost(
    make_spool, disk: Path, store: LocalStore
) -> None:
    """Many sessions, each sealed as it ends, while the disk fills: segments sealed (or due)
    during the spell reach the store afterwards, each session whole."""
    spool = make_spool(segment_max_bytes=2048)
    sessions = [new_session_id() for _ in range(8)]
    acknowledged: dict[str, list[str]] = {sid: [] for sid in sessions}
    for number, session_id in enumerate(sessions):
        record = spool.append(request(session_id, number)).result(DEADLINE)
        acknowledged[session_id].append(record["flow_id"])
    small_fs.fill(disk)
    refused = False
    for number in range(len(sessions), MAX_APPENDS):
        session_id = sessions[number % len(sessions)]
        try:
            record = spool.append(request(session_id, number)).result(DEADLINE)
        except SpoolDiskFull:
            refused = True
            break
        acknowledged[session_id].append(record["flow_id"])
    # no wait for the state here: the uploader deleting sealed segments may end it already
    assert refused
    small_fs.free(disk)
    wait_for_state(spool, "ok")
    for session_id in sessions:
        spool.append(end(session_id)).result(DEADLINE)
    assert spool.flush(DEADLINE)
    for session_id in sessions:
        assert stored_flows(store, session_id) == acknowledged[session_id]
        assert Archive(store).verify_session(session_id).ok


def test_a_record_acknowledged_but_not_yet_filed_reaches_the_store(
    make_spool, disk: Path, store: LocalStore
) -> None:
    """The WAL takes the record (acknowledged), then the new session's segment file finds
    no room: the spell begins after the acknowledgement, and the line is filed after it."""
    spool = make_spool()
    first = new_session_id()
    wal = disk / "spool"
    number = 0
    while True:  # until the WAL's last page (tmpfs allocates 4 KiB pages) is nearly empty
        spool.append(request(first, number)).result(DEADLINE)
        number += 1
        size = sum(path.stat().st_size for path in wal.glob("wal-*.log"))
        if size % 4096 < 1024:
            break
    # filing follows the acknowledgement: let it finish before the disk fills
    stack.wait_until(lambda: spool.stats().written_bytes == size, DEADLINE, "lines filed")
    small_fs.fill(disk)
    second = new_session_id()
    record = spool.append(request(second, 0)).result(DEADLINE)
    assert record["seq"] == 0
    wait_for_state(spool, "disk_full")
    assert spool.stats().disk_full == "No space left on device"
    [segment] = wal.glob(f"{second}_*.open")
    assert segment.stat().st_size == 0, "the refused write was cut back"

    small_fs.free(disk)
    wait_for_state(spool, "ok")
    spool.append(end(second)).result(DEADLINE)
    spool.append(end(first)).result(DEADLINE)
    assert spool.flush(DEADLINE)
    assert stored_flows(store, second) == ["f0"]
    assert stored_flows(store, first) == [f"f{n}" for n in range(number)]
    assert Archive(store).verify_session(second).ok


def test_outcomes_in_flight_when_the_disk_fills_are_kept_and_written_after(
    make_spool, disk: Path, store: LocalStore
) -> None:
    """A record nobody waits on (an answer's) rides with the next statement's batch; when
    that batch meets the full disk, the statement is refused but the answer is kept."""
    spool = make_spool()
    session_id = new_session_id()
    spool.append(request(session_id, 0)).result(DEADLINE)
    expected = ["f0"]
    small_fs.fill(disk)
    for number in range(1, MAX_APPENDS, 2):
        spool.append_eventually(request(session_id, number))
        expected.append(f"f{number}")
        try:
            spool.append(request(session_id, number + 1)).result(DEADLINE)
        except SpoolDiskFull:
            break
        expected.append(f"f{number + 1}")
    assert spool.stats().state == "disk_full"
    small_fs.free(disk)
    wait_for_state(spool, "ok")
    spool.append(end(session_id)).result(DEADLINE)
    assert spool.flush(DEADLINE)
    assert stored_flows(store, session_id) == expected
    assert Archive(store).verify_session(session_id).ok
