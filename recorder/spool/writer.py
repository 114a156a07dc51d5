"""The writer thread: records durable in the WAL, acknowledged, then filed into segments.

Per batch: one write and one fsync of the WAL, then the batch's futures resolve
(the records are durable), then the lines are copied into each session's open
segment file. A segment seals on size, age or its session's end: fsync, rename
`.open` -> `.jsonl`, note the seal in the WAL, hand it to the uploader.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from hoopgw.recorder.ids import parse_session_id
from hoopgw.recorder.schema import FORMAT_VERSION, KINDS, SESSION_END, chain_record
from hoopgw.recorder.spool.chains import ChainTable
from hoopgw.recorder.spool.config import SpoolConfig
from hoopgw.recorder.spool.errors import SpoolError
from hoopgw.recorder.spool.intake import STOP, LoopWaiter, Seal, Write
from hoopgw.recorder.spool.layout import Sealed
from hoopgw.recorder.spool.segments import OpenSegment, OpenSegments
from hoopgw.recorder.spool.stats import SpoolBytes
from hoopgw.recorder.spool.wal import WriteAheadLog

logger = logging.getLogger(__name__)


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
        self.chains = ChainTable(
            config.writer_id,
            config.max_streams,
            config.max_finished_streams,
            config.stream_idle_seconds,
        )
        self.wal = WriteAheadLog(config.directory, config.wal_max_bytes)
        self.segments = OpenSegments(
            config.directory, spool_bytes, config.segment_max_bytes, config.segment_max_age
        )
        self._hand_over = hand_over
        self._lock = threading.Lock()
        self._wake_writer = threading.Condition(self._lock)
        self._woken = False
        self._queue: list[Any] = []
        self._closing = False
        self._thread: threading.Thread | None = None
        self.running = False
        self.failure: str | None = None
        self.records = 0
        self.batches = 0
        self.sealed_segments = 0

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
        self, record: dict[str, Any], future: Future[dict[str, Any]] | LoopWaiter | None
    ) -> None:
        """Validate and chain a record, and queue it; wakes the thread if someone waits."""
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
            if not self.running or self._closing:
                raise SpoolError("spool is not running")
            if self.failure is not None:
                raise SpoolError(f"spool disk failed: {self.failure}")
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
            if future is not None:
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
            if not self.running or self._closing:
                raise SpoolError("spool is not running")
            if self.failure is not None:
                raise SpoolError(f"spool disk failed: {self.failure}")
            self._queue.append(Seal(session_id, future))
            self._wake()
        return future

    def _wake(self) -> None:
        """Called under the lock. One notify per batch: the writer takes the whole queue."""
        if not self._woken:
            self._woken = True
            self._wake_writer.notify()

    # --- the thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._woken:
                    timeout = self.segments.next_age_deadline() if self.failure is None else None
                    if timeout is not None and timeout <= 0:
                        break
                    # unwoken records may be queued at any moment: look every eventual_delay
                    if timeout is None or timeout > self.eventual_delay:
                        timeout = self.eventual_delay
                    if not self._wake_writer.wait(timeout) and self._queue:
                        break
                batch, self._queue = self._queue, []
                self._woken = False
            stop = any(item is STOP for item in batch)
            if self.failure is None:
                self._process([item for item in batch if item is not STOP])
            if self.failure is None:
                aged = self.segments.take_aged()
                if aged:
                    self._seal_or_fail(aged)
            if stop:
                if self.failure is None:
                    self._seal_or_fail(self.segments.take_all())
                # with nothing left open, the WAL has no record worth keeping
                self.segments.close()
                self.wal.close(remove=self.failure is None)
                return

    def _process(self, batch: list[Any]) -> None:
        """Make the batch's records durable and acknowledge them, then file them.

        Only the WAL write and its fsync stand between a record and its
        acknowledgement; filing lines into segments (and tallying them) comes
        after, since the WAL already holds everything recovery needs.
        """
        writes = [item for item in batch if isinstance(item, Write)]
        seals = [item for item in batch if isinstance(item, Seal)]
        if writes:
            try:
                self.wal.append(b"".join(write.line for write in writes))
            except Exception as exc:
                self._fail(_describe(exc), writes, seals)
                return
            self.batches += 1
            for write in writes:
                if write.future is not None:
                    write.future.set_result(write.record)
        try:
            self._seal(self.segments.file(batch, self.wal.number))
            if self.wal.rotate_if_full():
                self._checkpoint()
        except Exception as exc:
            self._fail(_describe(exc), [], seals)
            return
        for seal in seals:
            seal.future.set_result(None)

    def _seal(self, segments: list[OpenSegment]) -> None:
        """Seal, note the seals in the WAL, then hand the segments to the uploader."""
        if not segments:
            return
        sealed, marks = self.segments.seal(segments)
        self.wal.append(marks)
        self.sealed_segments += len(sealed)
        self._hand_over(sealed)
        self._checkpoint()

    def _seal_or_fail(self, segments: list[OpenSegment]) -> None:
        try:
            self._seal(segments)
        except Exception as exc:
            self._fail(f"sealing failed: {_describe(exc)}", [], [])

    def _checkpoint(self) -> None:
        """Delete WAL files whose every record is in a sealed, fsync'd segment."""
        self.wal.checkpoint(self.segments.oldest_wal())

    def _fail(self, reason: str, writes: list[Write], seals: list[Seal]) -> None:
        """A write, fsync or rename failed: nothing more can be promised durable.

        Everything queued fails; the WAL still holds every record whose future
        resolved, and the next `start()` rebuilds segments from it.
        """
        logger.error("spool disk failure, refusing further records: %s", reason)
        error = SpoolError(f"spool disk failed: {reason}")
        with self._lock:
            self.failure = reason
            queued, self._queue = self._queue, []
        pending = [*writes, *seals, *(item for item in queued if item is not STOP)]
        unawaited = 0
        for item in pending:
            if item.future is None:
                unawaited += 1
            elif not item.future.done():
                item.future.set_exception(error)
        if unawaited:
            logger.error("spool: %d record(s) appended without a future were lost", unawaited)
        if any(item is STOP for item in queued):
            with self._lock:
                self._queue.append(STOP)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}"[:300]
