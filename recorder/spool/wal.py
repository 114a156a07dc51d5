"""The write-ahead log: every record line is here, fsync'd, before it is acknowledged.

Each record waits for its WAL write to be durable before its statement may
leave, so that sync is on every statement's path. Appending to a file makes
each sync commit the file's new size, a journal commit on ext4 and XFS that
also carries every other file's pending metadata (the segments, the store's
files). So the log writes into files prepared beforehand: filled with zeros,
synced, their directory entry synced. An overwrite inside a prepared file
changes no metadata, and `fdatasync` makes it durable with a flush of its
data blocks alone (on this project's benchmark machine the sync under load
went from 0.29-0.38 ms to 0.16-0.20 ms; docs/performance.md, "Tenth round").

The writer thread prepares the next file a slice at a time between its
batches (`prepare_step`), never holding the WAL lock, and rotates into it
when the current file is full, or early while the current file is not a
prepared one (the first file after a start). Recovery reads a file up to its
zero tail. Without a prepared file (a disk too full to spare one, or a failed
preparation) the log appends and fsyncs as before.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from hoopgw.recorder.spool.layout import wal_path
from hoopgw.recorder.store import fsync_dir

logger = logging.getLogger(__name__)

PREPARE_SLICE: Final = 1 << 20
"""Zeros written and synced per preparation step: about 1.5 ms of the writer thread's time,
and of the disk's, so no commit waits behind a whole file's worth."""
PREPARE_FREE_FACTOR: Final = 4
"""A file is prepared only while the disk has this many files' worth free: the spare must not
be what fills a nearly full disk."""
PREPARE_RETRY: Final = 60.0
"""Seconds before preparing again after a failed or skipped preparation."""
_ZEROS: Final = bytes(PREPARE_SLICE)


@dataclass(slots=True)
class _Spare:
    """The next WAL file while it is prepared; `ready` once zero-filled, synced and named."""

    number: int
    fd: int
    written: int = 0
    ready: bool = False


class WalTornError(RuntimeError):
    """A failed append left bytes in the WAL that could not be cut off: only a restart's
    recovery (which drops a torn tail) makes the WAL whole again."""


class WriteAheadLog:
    """The shared `wal-<n>.log` files; touched only by the writer thread once it runs.

    One write and one sync per batch (`fdatasync` inside a prepared file, `fsync`
    otherwise), however many sessions the batch touched (group commit). A file is
    deleted once every segment holding its records is sealed, and the seals
    themselves are noted here before their segments may be uploaded, so recovery
    knows which records are already in sealed segments.
    """

    def __init__(self, directory: Path, max_bytes: int, prepare: bool = True) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.prepare = prepare
        self.number = 0
        self._fd = -1
        self._size = 0
        self._prepared = 0
        """Bytes of the current file that are zero-filled and synced (0: not prepared)."""
        self._files: list[int] = []
        self._spare: _Spare | None = None
        self._prepare_after = 0.0
        self.prepared_files = 0
        self.preparation_failures = 0

    def open_next(self, last_found: int | None = None) -> None:
        """Start writing to the file after `last_found` (recovery's last), or after ours."""
        number = (self.number if last_found is None else last_found) + 1
        fd = os.open(
            wal_path(self.directory, number),
            os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
            0o600,
        )
        try:
            fsync_dir(self.directory)
        except BaseException:
            os.close(fd)
            raise
        self._switch_to(fd, number, prepared=0)

    def _switch_to(self, fd: int, number: int, prepared: int) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = fd
        self.number = number
        self._size = 0
        self._prepared = prepared
        self._files.append(number)

    def append(self, data: bytes) -> None:
        """Write and fsync: when this returns, `data` survives a crash.

        When either fails (a full disk), the file is cut back to its last good
        size, so that no part of `data` is left for recovery to find; the next
        successful `append` or `sync` makes the cut durable.
        """
        try:
            _pwrite_all(self._fd, data, self._size)
            if self._size + len(data) <= self._prepared:
                os.fdatasync(self._fd)
            else:
                os.fsync(self._fd)
        except OSError:
            self._cut_back()
            raise
        self._size += len(data)

    def sync(self) -> None:
        """fsync the current file: a cut made after a failed append is then durable."""
        os.fsync(self._fd)

    def _cut_back(self) -> None:
        """Drop what a failed append left: the file ends at the last good record again (its
        prepared tail goes with it, so later appends sync the file's size)."""
        try:
            os.ftruncate(self._fd, self._size)
        except OSError as exc:
            message = f"the WAL could not be cut back after a failed write: {exc.strerror}"
            raise WalTornError(message) from exc
        self._prepared = min(self._prepared, self._size)

    def rotate_if_full(self) -> bool:
        """Into the prepared spare when the current file is full, or early when the current
        file is not prepared; into a new plain file when full and no spare is ready."""
        spare = self._spare
        ready = spare is not None and spare.ready and spare.number == self.number + 1
        if self._size < self.max_bytes and not (ready and self._prepared == 0):
            return False
        if ready:
            assert spare is not None
            self._spare = None
            self._switch_to(spare.fd, spare.number, prepared=spare.written)
        else:
            self._drop_spare()
            self.open_next()
        return True

    # --- preparing the next file (the writer thread, without the WAL lock) ------------

    def preparation_due(self) -> float | None:
        """Seconds until `prepare_step` has work (0: now), None while the spare is ready."""
        spare = self._spare
        if not self.prepare or self._fd < 0 or (spare is not None and spare.ready):
            return None
        return max(0.0, self._prepare_after - time.monotonic())

    def prepare_step(self) -> None:
        """Write the next slice of the next file's zeros; name it durably once all are synced.

        A failure (a full disk, any I/O error) drops the spare and waits `PREPARE_RETRY`
        seconds: the log appends to plain files meanwhile, as it did before files were
        prepared.
        """
        if not self.prepare or self._fd < 0 or time.monotonic() < self._prepare_after:
            return
        spare = self._spare
        if spare is not None and spare.number != self.number + 1:  # the log moved past it
            self._drop_spare()
            spare = None
        if spare is not None and spare.ready:
            return
        try:
            if spare is None:
                if not self._room_for_a_spare():
                    self._prepare_after = time.monotonic() + PREPARE_RETRY
                    return
                spare = self._spare = _Spare(self.number + 1, self._create_spare(self.number + 1))
            size = min(PREPARE_SLICE, self.max_bytes - spare.written)
            _pwrite_all(spare.fd, memoryview(_ZEROS)[:size], spare.written)
            os.fdatasync(spare.fd)
            spare.written += size
            if spare.written >= self.max_bytes:
                os.fsync(spare.fd)
                fsync_dir(self.directory)
                spare.ready = True
                self.prepared_files += 1
        except OSError as exc:
            self.preparation_failures += 1
            logger.warning(
                "spool: could not prepare the next WAL file (%s); appending to plain files "
                "for %.0f s",
                exc.strerror or exc,
                PREPARE_RETRY,
            )
            self._drop_spare()
            self._prepare_after = time.monotonic() + PREPARE_RETRY

    def _create_spare(self, number: int) -> int:
        return os.open(
            wal_path(self.directory, number),
            os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
            0o600,
        )

    def _room_for_a_spare(self) -> bool:
        disk = os.statvfs(self.directory)
        return disk.f_bavail * disk.f_frsize >= PREPARE_FREE_FACTOR * self.max_bytes

    def _drop_spare(self) -> None:
        """Close and remove the spare: it holds no record, only zeros."""
        spare, self._spare = self._spare, None
        if spare is None:
            return
        try:
            os.close(spare.fd)
        finally:
            wal_path(self.directory, spare.number).unlink(missing_ok=True)

    def checkpoint(self, oldest_needed: int | None) -> None:
        """Delete the files before `oldest_needed`, the first file an open segment's records
        are in (None: no segment is open); the current file always stays."""
        keep_from = self.number if oldest_needed is None else min(oldest_needed, self.number)
        obsolete = [number for number in self._files if number < keep_from]
        if not obsolete:
            return
        for number in obsolete:
            wal_path(self.directory, number).unlink(missing_ok=True)
        self._files = [number for number in self._files if number >= keep_from]

    def close(self, remove: bool) -> None:
        """Close the file; `remove` once every record is in a sealed segment."""
        self._drop_spare()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if remove:
            for number in self._files:
                wal_path(self.directory, number).unlink(missing_ok=True)
            self._files = []


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written
