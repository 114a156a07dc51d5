"""The writer thread: records durable in the WAL, acknowledged, then filed into segments.

Per batch: one write and one fsync of the WAL, then the batch's futures resolve
(the records are durable), then the lines are copied into each session's open
segment file. A producer on an event loop may write the batch itself
(`commit_queued`, the loop's group commit): it saves the thread hand-offs that
cost a statement more than the fsync, and leaves the filing to this thread. A
segment seals on size, age or its session's end: fsync, rename `.open` ->
`.jsonl`, note the seal in the WAL, hand it to the uploader.

A full disk (ENOSPC, EDQUOT) is a state the writer leaves by itself. The
failed WAL append is cut back, so the batch's records are neither on disk nor
acknowledged: their futures fail, as do those of the queued records, and each
stream's chain steps back to its first failed record. Records nobody waits on
(outcomes of statements already forwarded) are kept in memory instead, up to
`HELD_MAX_BYTES`, and written after the spell. Until a probe (a small write and
its fsync, every `disk_probe_interval` s, backing off) succeeds, records someone
waits on are refused at once; then lines filed but not yet written, seals not
yet noted and a due WAL rotation are retried, and records are taken again.
Any other failure (EIO, a failed fsync of a segment, a WAL that could not be
cut back) is for good: after a failed fsync the kernel may have dropped the
unsynced pages, so only a restart's recovery from the WAL is trusted.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from typing import Any, Final

from hoopgw.recorder.ids import parse_session_id
from hoopgw.recorder.schema import FORMAT_VERSION, KINDS, SESSION_END, chain_record
from hoopgw.recorder.spool.chains import ChainTable
from hoopgw.recorder.spool.config import SpoolConfig
from hoopgw.recorder.spool.errors import SpoolDiskFull, SpoolError
from hoopgw.recorder.spool.intake import (
    STOP,
    Failed,
    LoopInbox,
    LoopWaiter,
    Outcome,
    Seal,
    Write,
)
from hoopgw.recorder.spool.layout import Sealed, write_all
from hoopgw.recorder.spool.segments import OpenSegment, OpenSegments
from hoopgw.recorder.spool.stats import SpoolBytes
from hoopgw.recorder.spool.wal import WriteAheadLog

logger = logging.getLogger(__name__)

DISK_FULL_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT})
PROBE_FILE: Final = ".disk-probe"
PROBE_BYTES: Final = 64 * 1024
HELD_MAX_BYTES: Final = 16 * 1024 * 1024
"""Records nobody waits on, kept in memory while the disk is full; beyond it they are lost."""


class SpoolWriter:
    """Owns the queue, the chain table, the WAL, the open segments and the thread.

    One lock (the queue lock) covers the queue, the chain table and whether records
    are taken: a record gets its seq and its place in the queue together, so the
    queue holds each stream in seq order. Everything else here belongs to the
    writer thread alone. Records nobody waits on (`append_eventually`) wake no one:
    they ride with the next batch, at most `eventual_delay` seconds later.
    """

    def __init__(
        self,
        config: SpoolConfig,
        spool_bytes: SpoolBytes,
        hand_over: Callable[[list[Sealed]], None],
    ) -> None:
        """`hand_over` takes segments once sealed and their seal noted in the WAL."""
        self.eventual_delay = config.eventual_delay
        self.directory = config.directory
        self.probe_interval = config.disk_probe_interval
        self.probe_max_interval = max(config.disk_probe_interval, config.disk_probe_max_interval)
        self.chains = ChainTable(
            config.writer_id,
            config.max_streams,
            config.max_finished_streams,
            config.stream_idle_seconds,
        )
        self.wal = WriteAheadLog(config.directory, config.wal_max_bytes, config.wal_prepare)
        self.segments = OpenSegments(
            config.directory, spool_bytes, config.segment_max_bytes, config.segment_max_age
        )
        self._hand_over = hand_over
        self._lock = threading.Lock()
        self._wakeups: queue.SimpleQueue[None] = queue.SimpleQueue()
        """One token per batch someone waits on: the producer's whole hand-off is one
        put (in C, no Python condition variable, no lock for the writer to take back)."""
        self._woken = False
        self._queue: list[Any] = []
        self._closing = False
        self._thread: threading.Thread | None = None
        self.running = False
        self.failure: str | None = None
        self.disk_full: str | None = None
        self.disk_full_since: float | None = None
        self.refused_while_full = 0
        self.recoveries = 0
        self.records = 0
        self.batches = 0
        self.sealed_segments = 0
        self._to_seal: list[OpenSegment] = []
        self._wal_lock = threading.Lock()
        """Held for every WAL write, fsync and rotation, by this thread or a committing
        producer; taken before the queue lock, never after it."""
        self._committed: list[tuple[list[Write], int]] = []
        """Batches a producer made durable (`commit_queued`), with the WAL file they are
        in, waiting to be filed by this thread; under the queue lock."""
        self._taking = False
        """This thread took a batch it has not written yet: a producer must not commit
        records queued after it first (their acknowledgement would come before it)."""
        self._held_bytes = 0
        self._refused_before = 0
        self._full_since_monotonic = 0.0
        self._next_probe = 0.0
        self._probe_wait = 0.0

    # --- lifecycle (the spool's start and close) -------------------------------------

    def start(self) -> None:
        """Take records; the WAL must be open (`wal.open_next`)."""
        self.segments.start_sealer()
        self.running = True
        self._thread = threading.Thread(target=self._run, name="hoopgw-spool-writer", daemon=True)
        self._thread.start()

    def stop(self) -> bool:
        """Refuse further records; the thread writes what is queued, seals, and ends.

        False when not running or already stopping.
        """
        with self._lock:
            if not self.running or self._closing:
                return False
            self._closing = True
            self._queue.append(STOP)
            self._wake()
        return True

    def join(self, deadline: float) -> None:
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        self.segments.stop_sealer()
        self.running = False

    # --- producers (any thread) ------------------------------------------------------

    def enqueue(
        self,
        record: dict[str, Any],
        future: Future[dict[str, Any]] | LoopWaiter | None,
        wake: bool = True,
    ) -> None:
        """Validate and chain a record, and queue it; wakes the thread if someone waits,
        unless the caller commits the queue itself (`wake=False`, `commit_queued`)."""
        session_id = parse_session_id(record.get("session_id"))  # type: ignore[arg-type]
        kind = record.get("kind")
        if kind not in KINDS:
            raise ValueError(f"unknown record kind {str(kind)[:40]!r}")
        ts = record.get("ts")
        if not isinstance(ts, int | float) or isinstance(ts, bool):
            raise ValueError("record ts must be epoch seconds (a number)")
        stored = dict(record)
        stored.setdefault("v", FORMAT_VERSION)
        ends = kind == SESSION_END
        with self._lock:
            self._check_taking(awaited=future is not None)
            chains = self.chains
            chain = chains.chains.get(session_id)
            if chain is None:
                chain = chains.new(session_id)
            stored["writer"] = chain.writer
            stored["seq"] = chain.next_seq
            line = chain_record(stored, chain.prev_hash)
            chain.prev_hash = stored["hash"]
            chain.next_seq += 1
            chain.last_append = time.monotonic()
            if ends:
                chains.mark_ended(chain)
            self._queue.append(
                Write((session_id, chain.writer), stored["seq"], line, future, stored, ends)
            )
            self.records += 1
            if self.disk_full is not None:
                self._held_bytes += len(line)
            if future is not None and wake:
                self._wake()

    def end_session(self, session_id: str) -> Future[None]:
        """Mark the session's chain ended and seal its open segment after what is queued."""
        with self._lock:
            chain = self.chains.chains.get(session_id)
            if chain is not None:
                self.chains.mark_ended(chain)
        return self.request_seal(session_id)

    def request_seal(self, session_id: str | None) -> Future[None]:
        """Seal one session's open segments, or every one (None), after what is queued."""
        future: Future[None] = Future()
        with self._lock:
            self._check_taking(record=False)
            self._queue.append(Seal(session_id, future))
            self._wake()
        return future

    def commit_queued(self) -> None:
        """Make every queued record durable on the calling thread, then settle its waiters.

        For a producer on an event loop: one WAL write and fsync for all records its
        loop queued since the last call (and any queued before them), with no wake-up
        of this thread and no hand-back to the loop. The lines are filed into
        segments later, by this thread. Whenever the fast path does not apply (a seal
        or stop queued, this thread in the middle of a batch, a full or failed disk)
        or the write fails, the queue is left to this thread, which writes it or
        fails it as it would have.
        """
        with self._wal_lock:
            with self._lock:
                batch = self._queue
                if not batch:
                    return
                if (
                    self._taking
                    or self.disk_full is not None
                    or self.failure is not None
                    or not all(type(item) is Write for item in batch)
                ):
                    self._wake()
                    return
                self._queue = []
            try:
                self.wal.append(b"".join(write.line for write in batch))
            except Exception as exc:
                with self._lock:
                    self._queue[:0] = [Failed(exc, batch)]
                    self._wake()
                return
            with self._lock:
                self._committed.append((batch, self.wal.number))
                self.batches += 1
        _settle(batch, None, here=True)

    def _check_taking(self, awaited: bool = True, record: bool = True) -> None:
        """Called under the lock: raise unless records (or seal requests) are taken.

        While the disk is full, records nobody waits on (the outcomes of statements
        already forwarded) are kept in memory, up to `HELD_MAX_BYTES`, and written
        once the disk has room; a record someone waits on is refused.
        """
        if not self.running or self._closing:
            raise SpoolError("spool is not running")
        if self.failure is not None:
            raise SpoolError(f"spool disk failed: {self.failure}")
        if self.disk_full is not None and (awaited or self._held_bytes >= HELD_MAX_BYTES):
            self.refused_while_full += record
            raise SpoolDiskFull(f"spool disk full: {self.disk_full}")

    @property
    def state(self) -> str:
        """`ok`, `disk_full` (recovers by itself) or `failed` (until a restart)."""
        if self.failure is not None:
            return "failed"
        if self.disk_full is not None:
            return "disk_full"
        return "ok"

    def _wake(self) -> None:
        """Called under the lock. One wake-up per batch: the writer takes the whole queue."""
        if not self._woken:
            self._woken = True
            self._wakeups.put(None)

    def _await_work(self) -> None:
        """Until woken, a deadline of the writer's own, or queued records nobody waits on
        are due (they are looked for every `eventual_delay`)."""
        while True:
            with self._lock:
                if self._woken:
                    return
                timeout = self._next_deadline()
            if timeout is not None and timeout <= 0:
                return
            if timeout is None or timeout > self.eventual_delay:
                timeout = self.eventual_delay
            try:
                self._wakeups.get(timeout=timeout)
            except queue.Empty:
                with self._lock:
                    if (self._queue or self._committed) and self.disk_full is None:
                        return

    # --- the thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._await_work()
            with self._lock:
                self._woken = False
                while not self._wakeups.empty():  # this batch answers every token so far
                    self._wakeups.get_nowait()
                full = self.disk_full is not None
                failed = None
                committed: list[tuple[list[Write], int]] = []
                if not full and self._queue and type(self._queue[0]) is Failed:
                    failed, self._queue = self._queue[0], self._queue[1:]
                    batch, stop = [], False
                elif not full:
                    batch, self._queue = self._queue, []
                    stop = any(item is STOP for item in batch)
                    self._taking = any(type(item) is Write for item in batch)
                    # committed before this batch was taken, so filed before it; later
                    # commits wait for the next turn (none while `_taking`)
                    committed, self._committed = self._committed, []
                else:  # the queue holds records kept for after the spell
                    stop = any(item is STOP for item in self._queue)
            if failed is not None:  # a producer's commit failed: handled as this thread's own
                self._failed(failed.error, failed.writes, [])
                continue
            if full:
                if stop or time.monotonic() >= self._next_probe:
                    self._probe()
                if stop and self.disk_full is not None:
                    self._give_up_held()
                    self.segments.close()
                    self.wal.close(remove=False)
                    return
                continue
            if self.state == "ok":
                self._process([item for item in batch if item is not STOP], committed)
            elif committed:
                with self._lock:
                    self._committed[:0] = committed
            if self.state == "ok":
                aged = self.segments.take_aged()
                if aged:
                    self._seal_or_fail(aged)
            if stop:
                if self.state == "ok":
                    self._seal_or_fail(self.segments.take_all())
                if self.state == "disk_full":
                    self._give_up_held()
                # with nothing left open, the WAL has no record worth keeping
                self.segments.close()
                self.wal.close(remove=self.state == "ok")
                return

    def _give_up_held(self) -> None:
        """Closing while the disk is still full: the records kept for later are lost."""
        with self._lock:
            held, self._queue = self._queue, []
        pending = [item for item in held if item is not STOP]
        self._settle_failed(pending, SpoolDiskFull(f"spool disk full: {self.disk_full}"))

    def _next_deadline(self) -> float | None:
        """Seconds until the writer has work of its own: a probe, or a segment due by age."""
        if self.failure is not None:
            return None
        if self.disk_full is not None:
            return self._next_probe - time.monotonic()
        deadlines = [self.segments.next_age_deadline(), self.wal.preparation_due()]
        return min((d for d in deadlines if d is not None), default=None)

    def _process(self, batch: list[Any], committed: Sequence[tuple[list[Write], int]] = ()) -> None:
        """Make the batch's records durable and acknowledge them, then file them.

        Only the WAL write and its fsync stand between a record and its
        acknowledgement; filing lines into segments (and tallying them) comes
        after, since the WAL already holds everything recovery needs. `committed`
        are the batches producers committed before this one was taken: filed
        first, as their seqs come first.
        """
        writes = [item for item in batch if isinstance(item, Write)]
        seals = [item for item in batch if isinstance(item, Seal)]
        if writes:
            try:
                with self._wal_lock:
                    self.wal.append(b"".join(write.line for write in writes))
            except Exception as exc:
                with self._lock:  # still to be filed, and their WAL files kept until then
                    self._committed[:0] = committed
                    self._taking = False
                self._failed(exc, writes, seals)
                return
            with self._lock:
                self._taking = False
                self.batches += 1
            _settle(writes, None)
        try:
            for earlier, wal_number in committed:
                self._to_seal.extend(self.segments.file(list(earlier), wal_number))
            self._to_seal.extend(self.segments.file(batch, self.wal.number))
            self._write_behind()
        except Exception as exc:
            self._failed(exc, [], seals)
            return
        for seal in seals:
            seal.future.set_result(None)

    def _write_behind(self) -> None:
        """What follows the acknowledgement: write filed lines, seal, rotate the WAL.

        Each step leaves what it did not finish for the next call (after a full disk).
        """
        self.segments.write_unwritten()
        self._seal()
        with self._wal_lock:
            if self.wal.rotate_if_full():
                self._checkpoint()
        self.wal.prepare_step()

    def _seal(self) -> None:
        """Seal what is due, note the seals in the WAL, then hand the segments to the uploader."""
        if not self._to_seal:
            return
        sealed, marks = self.segments.seal(self._to_seal)
        with self._wal_lock:
            self.wal.append(marks)
            self._to_seal = []
            self.sealed_segments += len(sealed)
            self._hand_over(sealed)
            self._checkpoint()

    def _seal_or_fail(self, segments: list[OpenSegment]) -> None:
        self._to_seal.extend(segments)
        try:
            self._seal()
        except Exception as exc:
            self._failed(exc, [], [], "sealing failed: ")

    def _failed(
        self, exc: Exception, writes: list[Write], seals: list[Seal], context: str = ""
    ) -> None:
        if _is_disk_full(exc):
            self._enter_disk_full(f"{context}{_describe(exc)}", writes, seals)
        else:
            self._fail(f"{context}{_describe(exc)}", writes, seals)

    def _checkpoint(self) -> None:
        """Delete WAL files whose every record is in a sealed, fsync'd segment.

        Called with the WAL lock held. Records a producer committed but this thread
        has not filed yet count as in an open segment."""
        with self._lock:
            needed = [number for _, number in self._committed]
        oldest = self.segments.oldest_wal()
        if oldest is not None:
            needed.append(oldest)
        self.wal.checkpoint(min(needed, default=None))

    def _enter_disk_full(self, reason: str, writes: list[Write], seals: list[Seal]) -> None:
        """Refuse records until a probe succeeds; nothing written is given up.

        Of `writes` (the batch whose WAL append was cut back) and the queued
        records, those someone waits on fail, and so do the records after them
        in their streams, whose chains step back (`_rewind_chains`); the rest
        stay queued for after the spell. Queued seal requests fail.
        """
        now = time.monotonic()
        with self._lock:
            self.disk_full = reason
            self.disk_full_since = time.time()
            queued, self._queue = self._queue, []
            self._refused_before = self.refused_while_full
            unwritten = [*writes, *(item for item in queued if isinstance(item, Write))]
            kept, failed = self._rewind_chains(unwritten)
            self._queue = [*kept, *(item for item in queued if item is STOP)]
            self._held_bytes = sum(len(write.line) for write in kept)
        self._full_since_monotonic = now
        self._probe_wait = self.probe_interval
        self._next_probe = now + self._probe_wait
        logger.error(
            "spool disk full (%s): refusing records until a write succeeds again, "
            "probing every %.1f s; %d record(s) in flight refused, %d kept for later",
            reason,
            self.probe_interval,
            len(failed),
            len(kept),
        )
        self._settle_failed(
            [*failed, *seals, *(item for item in queued if isinstance(item, Seal))],
            SpoolDiskFull(f"spool disk full: {reason}"),
        )

    def _rewind_chains(self, unwritten: list[Write]) -> tuple[list[Write], list[Write]]:
        """Called under the lock: which unwritten records to keep and which fail.

        In each stream (`unwritten` is in seq order within each), the records
        before the first one someone waits on are kept, to be written after the
        spell; that one and all after it fail, and the chain steps back to it.
        """
        kept: list[Write] = []
        failed: list[Write] = []
        first_failed: dict[tuple[str, str], Write] = {}
        for write in unwritten:
            if write.stream in first_failed or write.future is not None:
                first_failed.setdefault(write.stream, write)
                failed.append(write)
            else:
                kept.append(write)
        for (session_id, writer), write in first_failed.items():
            chain = self.chains.chains.get(session_id)
            if chain is None or chain.writer != writer:
                continue
            chain.next_seq = write.seq
            chain.prev_hash = write.record["prev_hash"]
            if any(item.seal_after for item in failed if item.stream == write.stream):
                chain.ended = False
        return kept, failed

    def _probe(self) -> None:
        """Try a small write and its fsync, then the work left behind; leave the state if
        all of it succeeded, or probe again later (backing off)."""
        try:
            self._probe_write()
            with self._wal_lock:
                self.wal.sync()
            self._write_behind()
        except Exception as exc:
            if not _is_disk_full(exc):
                self._fail(_describe(exc), [], [])
                return
            self._probe_wait = min(self._probe_wait * 2, self.probe_max_interval)
            self._next_probe = time.monotonic() + self._probe_wait
            return
        with self._lock:
            self.disk_full = None
            self.disk_full_since = None
            refused = self.refused_while_full - self._refused_before
            held = sum(isinstance(item, Write) for item in self._queue)
            self._held_bytes = 0
            self.recoveries += 1
            self._woken = True
        logger.warning(
            "spool disk writable again after %.1f s: taking records; %d append(s) refused "
            "while full, %d kept record(s) to write",
            time.monotonic() - self._full_since_monotonic,
            refused,
            held,
        )

    def _probe_write(self) -> None:
        path = self.directory / PROBE_FILE
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                write_all(fd, bytes(PROBE_BYTES))
                os.fsync(fd)
            finally:
                os.close(fd)
        finally:
            path.unlink(missing_ok=True)

    def _fail(self, reason: str, writes: list[Write], seals: list[Seal]) -> None:
        """A write, fsync or rename failed: nothing more can be promised durable.

        Everything queued fails; the WAL still holds every record whose future
        resolved, and the next `start()` rebuilds segments from it.
        """
        logger.error("spool disk failure, refusing further records: %s", reason)
        error = SpoolError(f"spool disk failed: {reason}")
        with self._lock:
            self.failure = reason
            self.disk_full = None
            queued, self._queue = self._queue, []
        pending = [*writes, *seals, *(item for item in queued if item is not STOP)]
        self._settle_failed(pending, error)
        if any(item is STOP for item in queued):
            with self._lock:
                self._queue.append(STOP)

    def _settle_failed(self, pending: list[Write | Seal], error: SpoolError) -> None:
        unawaited = _settle(pending, error)
        if unawaited:
            logger.error("spool: %d record(s) appended without a future were lost", unawaited)


def _settle(items: Sequence[Write | Seal], error: SpoolError | None, here: bool = False) -> int:
    """Resolve the futures of `items`: with their records, or with `error`.

    The waiters of each event loop are handed over together (`LoopInbox.post`):
    one wake-up of the loop for the whole batch, not one per record; `here` (the
    caller runs on the waiters' loop) settles the running loop's waiters directly.
    Returns how many items had no future (records nobody waits on).
    """
    unawaited = 0
    by_loop: dict[LoopInbox, list[Outcome]] = {}
    for item in items:
        future = item.future
        record = item.record if error is None and isinstance(item, Write) else None
        if future is None:
            unawaited += 1
        elif isinstance(future, LoopWaiter):
            if here and future.inbox.loop is _running_loop():
                if not future.future.done():  # cancelled: its waiter gave up
                    future.future.set_result(record)
                continue
            by_loop.setdefault(future.inbox, []).append((future.future, record, error))
        else:
            with contextlib.suppress(InvalidStateError):  # cancelled by its caller
                if error is None:
                    future.set_result(record)
                else:
                    future.set_exception(error)
    for inbox, outcomes in by_loop.items():
        inbox.post(outcomes)
    return unawaited


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}"[:300]
