"""The write-ahead spool: records durable on local disk, then shipped to the store.

    append() ----------+
    append_eventually()-+-queue--> writer thread: one write + one fsync of the WAL per batch
                        |   -> futures resolved (the records are durable)
                        |   -> lines copied into each session's open segment file
                        |
                        +-- seal (size, age, session end): fsync the segment file,
                        |   rename .open -> .jsonl, note the seal in the WAL
                        v
                        uploader thread: compress, put (verified), summary, delete
                        |   -> roll-up entries (in memory)
                        v
                        roll-up thread: PUT roll-ups every `rollup_interval` s and at close

Durability comes from one shared write-ahead log (`wal-<n>.log`): every record
line goes there first, and a batch's futures resolve after one fsync of it,
however many sessions the batch touched (group commit). Records nobody waits
on (`append_eventually`: answers, errors) wake no one: they ride with the next
batch, at most `eventual_delay` seconds later. Session segment files
are written without fsync and fsync'd once, when sealed. A WAL file is deleted
once every segment holding its records is sealed; a seal is noted in the WAL
(`{"$sealed": ...}`) before the segment may be uploaded, so recovery knows which
WAL records are already in sealed (or uploaded) segments.

A full disk (ENOSPC, EDQUOT) refuses records (`SpoolDiskFull`) until a probe
write succeeds, then the spool takes records again by itself; nothing it
acknowledged is lost (see `writer`). `stats().state` says which it is in.

One object per stage, each owning its thread and its lock:
`writer.SpoolWriter` (queue, chains in `chains`, the WAL in `wal`, open segments
in `segments`), `recovery.Recovery` (start-up), `uploader.Uploader` (with its
summary cache), `rollups.RollupPublisher` (with `entries.SegmentEntries`, which describes large
segments in a helper process). `Spool` ties them together; the
directory's files are named in `layout`.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
from concurrent.futures import Future
from typing import Any

from hoopgw.recorder.checkpoints import LAST_CHECKPOINT_FILE, CheckpointChain
from hoopgw.recorder.ids import parse_session_id
from hoopgw.recorder.rollup import RollupBuilder
from hoopgw.recorder.spool.config import MiB, SpoolConfig
from hoopgw.recorder.spool.entries import SegmentEntries
from hoopgw.recorder.spool.errors import SpoolDiskFull, SpoolError
from hoopgw.recorder.spool.intake import LoopInbox, LoopWaiter
from hoopgw.recorder.spool.recovery import Recovery
from hoopgw.recorder.spool.rollups import RollupPublisher
from hoopgw.recorder.spool.stats import SpoolBytes, SpoolStats
from hoopgw.recorder.spool.uploader import Uploader
from hoopgw.recorder.spool.writer import SpoolWriter
from hoopgw.recorder.store import Store

__all__ = ["MiB", "Spool", "SpoolConfig", "SpoolDiskFull", "SpoolError", "SpoolStats"]


class Spool:
    """Write-ahead spool in front of a Store. Thread-safe; `append` never touches the disk."""

    def __init__(self, config: SpoolConfig, store: Store) -> None:
        self.config = config
        self.store = store
        self.writer_id = config.writer_id
        self.max_bytes = config.max_bytes
        self._bytes = SpoolBytes()
        self._rollups = (
            RollupPublisher(
                store,
                RollupBuilder(
                    config.writer_id,
                    part_max_bytes=config.rollup_part_max_bytes,
                    part_max_entries=config.rollup_part_max_entries,
                    idle_seconds=config.rollup_idle_seconds,
                ),
                config.rollup_interval,
                SegmentEntries(config.rollup_helper_min_bytes),
            )
            if config.rollup_interval
            else None
        )
        self._uploader = Uploader(
            store,
            self._bytes,
            self._rollups,
            retry_initial=config.retry_initial,
            retry_max=config.retry_max,
            clock=config.clock,
            checkpoints=(
                CheckpointChain(
                    config.writer_id,
                    config.checkpoint_key,
                    config.checkpoint_interval,
                    config.clock,
                    config.directory / LAST_CHECKPOINT_FILE,
                )
                if config.checkpoint_key is not None
                else None
            ),
        )
        self._writer = SpoolWriter(config, self._bytes, self._uploader.submit)
        self._recovery = Recovery(config.directory, config.writer_id, self._bytes)
        self._lock_fd: int | None = None
        self._inbox: LoopInbox | None = None
        self._commit_scheduled: asyncio.AbstractEventLoop | None = None
        """The loop a commit is scheduled on (one that closed before it ran does not count)."""

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Recover what an earlier process left, then start the writer and uploader."""
        if self._writer.running:
            raise SpoolError("spool already started")
        directory = self.config.directory
        directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise SpoolError(f"spool {directory} is in use by another process") from None
        try:
            leftovers, last_wal = self._recovery.run()
            self._uploader.submit(leftovers)
            self._writer.wal.open_next(last_wal)
        except BaseException:
            self._release_lock()
            raise
        self._writer.start()
        self._uploader.start()
        if self._rollups is not None:
            self._rollups.start()

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, seal open segments, stop the threads, PUT the roll-ups.

        Sealed segments not yet uploaded stay on disk for the next `start()`;
        call `flush()` first to ship them.
        """
        if not self._writer.stop():
            return
        deadline = time.monotonic() + timeout
        self._writer.join(deadline)
        self._uploader.stop(deadline)
        if self._rollups is not None:
            self._rollups.stop(deadline)
        self._writer.close()
        self._release_lock()

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Spool:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- producers -------------------------------------------------------------------

    def append(self, record: dict[str, Any]) -> Future[dict[str, Any]]:
        """Queue a record; the future resolves with the stored record once it is durable.

        `record` needs `kind`, `session_id` and `ts`; the spool adds `v` (if
        missing), `writer`, `seq`, `prev_hash` and `hash`. The caller's dict is not
        modified. Invalid records raise here (ValueError, TypeError for values
        JSON cannot hold); a failed disk fails the future and every later append
        (a full disk, `SpoolDiskFull`, only until the writer's probe write succeeds).
        Costs one orjson encoding and one sha256 in the caller's thread.
        """
        future: Future[dict[str, Any]] = Future()
        self._writer.enqueue(record, future)
        return future

    def append_on_loop(
        self, record: dict[str, Any], commit_here: bool = True
    ) -> asyncio.Future[dict[str, Any]]:
        """As `append`, for a caller on the running event loop: an asyncio future.

        With `commit_here` the loop commits itself: once the callbacks ready in this
        turn of the loop have run, one WAL write and fsync makes every record they
        appended durable and their futures resolve (`SpoolWriter.commit_queued`),
        with no wake-up of the writer thread and no hand-back; when the loop has
        nothing else to do meanwhile, each such hand-off costs a statement more than
        the fsync. Without it (the loop has other work to get on with during the
        fsync), or when the writer thread has the queue in hand, or the write fails,
        the writer thread writes and settles these futures, a whole batch per
        wake-up of the loop (`intake.LoopInbox`).
        """
        loop = asyncio.get_running_loop()
        inbox = self._inbox
        if inbox is None or inbox.loop is not loop:
            inbox = self._inbox = LoopInbox(loop)
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._writer.enqueue(record, LoopWaiter(future, inbox), wake=not commit_here)
        if commit_here and self._commit_scheduled is not loop:
            self._commit_scheduled = loop
            loop.call_soon(self._commit_on_loop)
        return future

    def _commit_on_loop(self) -> None:
        """The loop's group commit: every record appended since the last one, one fsync."""
        self._commit_scheduled = None
        self._writer.commit_queued()

    def append_eventually(self, record: dict[str, Any]) -> None:
        """Queue a record nobody waits on; it is durable within `eventual_delay` seconds.

        As `append`, without the future and without waking the writer: the record
        rides with the next batch. Per statement that saves the writer one wake-up
        and one fsync. A disk failure is logged with the number of such records lost.
        """
        self._writer.enqueue(record, None)

    def end_session(self, session_id: str) -> Future[None]:
        """Seal the session's open segment now (after what is already queued for it)."""
        return self._writer.end_session(parse_session_id(session_id))

    def over_limit(self) -> bool:
        """Segments waiting on disk above `max_bytes`: refuse new statements."""
        return self._bytes.value > self.max_bytes

    def flush(self, timeout: float) -> bool:
        """Seal everything and wait until every sealed segment is uploaded.

        True when the spool emptied within `timeout` seconds (records appended
        meanwhile may still be open); False on timeout or a failed spool.
        """
        deadline = time.monotonic() + timeout
        try:
            self._writer.request_seal(None).result(timeout)
        except (TimeoutError, SpoolError):
            return False
        return self._uploader.wait_idle(deadline)

    def put_rollups(self, timeout: float = 30.0) -> bool:
        """PUT every roll-up holding entries not yet stored, now (`close` does it too).

        True when all of them are stored; False on a failed PUT (retried later)
        or when another PUT pass still ran after `timeout` seconds.
        """
        return self._rollups is None or self._rollups.put(force=True, timeout=timeout)

    def stats(self) -> SpoolStats:
        """Counters for logs and health checks; `last_upload_error` clears on success."""
        writer, uploader, recovery, rollups = (
            self._writer,
            self._uploader,
            self._recovery,
            self._rollups,
        )
        pending = uploader.pending()
        return SpoolStats(
            writer=writer.chains.current_writer,
            streams=len(writer.chains),
            cached_summaries=len(uploader.summaries),
            records=writer.records,
            batches=writer.batches,
            written_bytes=writer.segments.written_bytes,
            spool_bytes=self._bytes.value,
            max_bytes=self.max_bytes,
            over_limit=self.over_limit(),
            open_segments=len(writer.segments),
            sealed_segments=writer.sealed_segments,
            pending_uploads=pending,
            uploaded_segments=uploader.uploaded_segments,
            uploaded_bytes=uploader.uploaded_bytes,
            upload_failures=uploader.failures,
            last_upload_error=uploader.last_error,
            recovered_segments=recovery.recovered_segments,
            recovered_records=recovery.recovered_records,
            dropped_tail_bytes=recovery.dropped_tail_bytes,
            vanished_segments=uploader.vanished_segments,
            failed=writer.failure,
            state=writer.state,
            disk_full=writer.disk_full,
            disk_full_since=writer.disk_full_since,
            refused_while_full=writer.refused_while_full,
            recoveries=writer.recoveries,
            rollup_puts=rollups.puts if rollups is not None else 0,
            rollup_failures=rollups.failures if rollups is not None else 0,
            last_rollup_error=rollups.last_error if rollups is not None else None,
            rollups_pending=rollups.pending() if rollups is not None else 0,
            rollup_entries_by_helper=rollups.entries.by_helper if rollups is not None else 0,
            rollup_helper_failures=(rollups.entries.helper_failures if rollups is not None else 0),
            wal_prepared_files=writer.wal.prepared_files,
            wal_preparation_failures=writer.wal.preparation_failures,
        )
