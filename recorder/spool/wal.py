"""The write-ahead log: every record line is here, fsync'd, before it is acknowledged."""

from __future__ import annotations

import os
from pathlib import Path

from hoopgw.recorder.spool.layout import wal_path, write_all
from hoopgw.recorder.store import fsync_dir


class WalTornError(RuntimeError):
    """A failed append left bytes in the WAL that could not be cut off: only a restart's
    recovery (which drops a torn tail) makes the WAL whole again."""


class WriteAheadLog:
    """The shared `wal-<n>.log` files; touched only by the writer thread once it runs.

    One write and one fsync per batch, however many sessions the batch touched
    (group commit). A file is deleted once every segment holding its records is
    sealed, and the seals themselves are noted here before their segments may be
    uploaded, so recovery knows which records are already in sealed segments.
    """

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.number = 0
        self._fd = -1
        self._size = 0
        self._files: list[int] = []

    def open_next(self, last_found: int | None = None) -> None:
        """Start writing to the file after `last_found` (recovery's last), or after ours."""
        number = (self.number if last_found is None else last_found) + 1
        fd = os.open(
            wal_path(self.directory, number),
            os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC,
            0o600,
        )
        try:
            fsync_dir(self.directory)
        except BaseException:
            os.close(fd)
            raise
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = fd
        self.number = number
        self._size = 0
        self._files.append(number)

    def append(self, data: bytes) -> None:
        """Write and fsync: when this returns, `data` survives a crash.

        When either fails (a full disk), the file is cut back to its last good
        size, so that no part of `data` is left for recovery to find; the next
        successful `append` or `sync` makes the cut durable.
        """
        try:
            write_all(self._fd, data)
            os.fsync(self._fd)
        except OSError:
            self._cut_back()
            raise
        self._size += len(data)

    def sync(self) -> None:
        """fsync the current file: a cut made after a failed append is then durable."""
        os.fsync(self._fd)

    def _cut_back(self) -> None:
        try:
            os.ftruncate(self._fd, self._size)
        except OSError as exc:
            message = f"the WAL could not be cut back after a failed write: {exc.strerror}"
            raise WalTornError(message) from exc

    def rotate_if_full(self) -> bool:
        if self._size < self.max_bytes:
            return False
        self.open_next()
        return True

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
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if remove:
            for number in self._files:
                wal_path(self.directory, number).unlink(missing_ok=True)
            self._files = []
