"""The spool's counters: one shared byte count, and the snapshot `Spool.stats()` gives."""

from __future__ import annotations

import threading
from dataclasses import dataclass


class SpoolBytes:
    """Bytes of segments on disk: the writer adds what it files, recovery what it left,
    the uploader takes off what it stored. The one counter three threads change."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def add(self, delta: int) -> None:
        with self._lock:
            self.value += delta


@dataclass(frozen=True, slots=True)
class SpoolStats:
    """Counters for logs and health checks; `last_upload_error` clears on success.

    `state` is `ok`, `disk_full` (records refused since `disk_full_since`, epoch
    seconds, until a probe write succeeds: it recovers by itself) or `failed`
    (for good, reason in `failed`). `refused_while_full` counts the appends
    refused in every disk-full spell, `recoveries` the spells that ended.
    `rollup_entries_by_helper` counts the segments the roll-up helper process
    described (`spool.entries`), `rollup_helper_failures` the times it failed.
    `wal_prepared_files` counts the WAL files prepared ahead (zero-filled, so a
    record's sync flushes data alone), `wal_preparation_failures` the preparations
    that failed (the WAL appends to plain files meanwhile).
    """

    writer: str
    streams: int
    cached_summaries: int
    records: int
    batches: int
    written_bytes: int
    spool_bytes: int
    max_bytes: int
    over_limit: bool
    open_segments: int
    sealed_segments: int
    pending_uploads: int
    uploaded_segments: int
    uploaded_bytes: int
    upload_failures: int
    last_upload_error: str | None
    recovered_segments: int
    recovered_records: int
    dropped_tail_bytes: int
    vanished_segments: int
    failed: str | None
    state: str
    disk_full: str | None
    disk_full_since: float | None
    refused_while_full: int
    recoveries: int
    rollup_puts: int
    rollup_failures: int
    last_rollup_error: str | None
    rollups_pending: int
    rollup_entries_by_helper: int
    rollup_helper_failures: int
    wal_prepared_files: int = 0
    wal_preparation_failures: int = 0
