"""The write-ahead log's prepared files (recorder/spool/wal.py): zero-filled ahead, synced
with fdatasync while a record fits, plain appends whenever a file cannot be prepared."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hoopgw.recorder.spool import wal as wal_module
from hoopgw.recorder.spool.wal import WriteAheadLog
from tests import small_fs

SIZE = 64 * 1024
LINE = b'{"kind":"request","seq":1}\n'


@pytest.fixture
def make_wal(tmp_path: Path) -> Iterator[Callable[..., WriteAheadLog]]:
    logs: list[WriteAheadLog] = []

    def make(directory: Path = tmp_path, size: int = SIZE, prepare: bool = True) -> WriteAheadLog:
        log = WriteAheadLog(directory, size, prepare)
        log.open_next()
        logs.append(log)
        return log

    yield make
    for log in logs:
        log.close(remove=False)


def syncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The kind of each sync of a WAL file from now on (a directory's is not counted)."""
    calls: list[str] = []
    for name in ("fsync", "fdatasync"):
        real = getattr(os, name)

        def counted(fd: int, real: Callable[[int], None] = real, name: str = name) -> None:
            if os.readlink(f"/proc/self/fd/{fd}").endswith(".log"):
                calls.append(name)
            real(fd)

        monkeypatch.setattr(os, name, counted)
    return calls


def prepared_and_rotated(log: WriteAheadLog) -> None:
    while log.preparation_due() == 0:  # a failed step defers the next: no endless loop
        log.prepare_step()
    assert log.rotate_if_full(), "rotates early out of the plain first file"


def test_records_go_into_a_prepared_file_and_sync_their_data_alone(
    make_wal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = make_wal()
    log.append(LINE)  # the first file is a plain one
    prepared_and_rotated(log)
    assert (log.number, log.prepared_files) == (2, 1)
    path = tmp_path / "wal-000000000002.log"
    assert path.stat().st_size == SIZE and path.read_bytes() == bytes(SIZE)
    calls = syncs(monkeypatch)
    for _ in range(3):
        log.append(LINE)
    assert calls == ["fdatasync"] * 3
    assert path.stat().st_size == SIZE, "the file never grows while records fit"
    assert path.read_bytes().rstrip(b"\0") == LINE * 3


def test_a_record_past_the_prepared_zeros_is_appended_with_its_size_synced(
    make_wal, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = make_wal()
    prepared_and_rotated(log)
    calls = syncs(monkeypatch)
    log.append(b"x" * (SIZE - 10) + b"\n")
    log.append(LINE)
    assert calls == ["fdatasync", "fsync"]
    assert log.rotate_if_full()
    assert log.number == 3, "full: a plain file while no spare is ready"


def test_a_failed_write_cuts_the_file_back_and_later_records_sync_its_size(
    make_wal, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = make_wal()
    prepared_and_rotated(log)
    log.append(LINE)
    real_pwrite = os.pwrite

    def full_disk(fd: int, data: object, offset: int) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full_disk)
    with pytest.raises(OSError):
        log.append(LINE)
    monkeypatch.setattr(os, "pwrite", real_pwrite)
    path = log.directory / f"wal-{log.number:012d}.log"
    assert path.read_bytes() == LINE, "the prepared tail went with the failed write"
    calls = syncs(monkeypatch)
    log.append(LINE)
    assert calls == ["fsync"]
    assert path.read_bytes() == LINE * 2


def test_a_failed_preparation_leaves_no_file_and_the_log_appends_as_before(
    make_wal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    log = make_wal()
    real_fdatasync = os.fdatasync

    def failing(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing)
    with caplog.at_level(logging.WARNING):
        log.prepare_step()
    monkeypatch.setattr(os, "fdatasync", real_fdatasync)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["wal-000000000001.log"]
    assert log.preparation_failures == 1
    assert "could not prepare the next WAL file (Input/output error)" in caplog.text
    assert log.preparation_due() == pytest.approx(wal_module.PREPARE_RETRY, abs=1)
    log.prepare_step()  # waits for the retry
    assert log.prepared_files == 0
    calls = syncs(monkeypatch)
    log.append(LINE)
    assert calls == ["fsync"]


def test_no_file_is_prepared_on_a_disk_without_room_for_several(make_wal, tmp_path: Path) -> None:
    with small_fs.mounted_tmpfs(tmp_path / "small", size="1m") as disk:
        log = make_wal(disk, size=512 * 1024)
        log.prepare_step()
        assert sorted(path.name for path in disk.iterdir()) == ["wal-000000000001.log"]
        assert log.preparation_due() is not None and log.preparation_due() > 0
        log.append(LINE)
        assert (disk / "wal-000000000001.log").read_bytes() == LINE


def test_closing_removes_the_spare_and_preparing_can_be_turned_off(
    make_wal, tmp_path: Path
) -> None:
    log = make_wal()
    log.prepare_step()  # 64 KiB: one step prepares the whole spare
    assert (tmp_path / "wal-000000000002.log").stat().st_size == SIZE
    log.close(remove=False)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["wal-000000000001.log"]
    (tmp_path / "off").mkdir()
    plain = make_wal(tmp_path / "off", prepare=False)
    assert plain.preparation_due() is None
    plain.prepare_step()
    assert sorted(path.name for path in (tmp_path / "off").iterdir()) == ["wal-000000000001.log"]
