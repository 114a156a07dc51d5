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

Recovery (`start()`), after a crash at any instant, SIGKILL included: cut the
torn tail of the WAL, delete `.open` files, rebuild from the WAL every record
not in a sealed range as `.jsonl` segments (named by their first seq, the same
name the dead process would have used), then upload all sealed segments.
Segment keys derive from (session, writer, first seq), so an upload repeated
after a crash overwrites the same object and no record is stored twice.

Files, all in one directory: `.lock` (flock: one process per spool),
`wal-<n:012d>.log`, `<session-id>_<writer>-<first-seq:06d>.open` and `.jsonl`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from hoopgw.recorder.catalog import StreamSummary, segment_key, summary_key
from hoopgw.recorder.ids import parse_session_id, parse_writer_id
from hoopgw.recorder.rollup import RollupBuilder
from hoopgw.recorder.schema import FORMAT_VERSION, GENESIS_HASH, KINDS, SESSION_END, chain_record
from hoopgw.recorder.segment import compress_lines
from hoopgw.recorder.store import KeyNotFound, Store, fsync_dir

logger = logging.getLogger(__name__)

MiB: Final = 1024 * 1024
OPEN_SUFFIX: Final = ".open"
SEALED_SUFFIX: Final = ".jsonl"
SEAL_MARK: Final = "$sealed"
_SEGMENT_FILE: Final = re.compile(
    r"([0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12})_"
    r"([0-9a-z]{4,32})-(\d{6,})\.(open|jsonl)"
)
_WAL_FILE: Final = re.compile(r"wal-(\d{12})\.log")
_SUMMARY_CACHE: Final = 4096
_SEAL_THREADS: Final = 8
_MAX_OPEN_FILES: Final = 256
"""Open segment files kept open between batches; the rest are reopened on demand."""

Stream = tuple[str, str]
"""(session id, writer id): one hash chain, one run of seqs."""


class SpoolError(RuntimeError):
    """The spool cannot take records (not started, closed, or its disk failed)."""


@dataclass(slots=True)
class _Chain:
    """Chain state of one session's stream; touched only under the spool lock."""

    writer: str
    next_seq: int = 0
    prev_hash: str = GENESIS_HASH
    ended: bool = False
    last_append: float = 0.0


class _LoopWaiter:
    """An asyncio future the writer thread settles with one `call_soon_threadsafe`.

    What `asyncio.wrap_future` does for a concurrent future, without the
    concurrent future: no condition variable to take, one call to hand back.
    """

    __slots__ = ("future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[dict[str, Any]] = loop.create_future()

    def done(self) -> bool:
        return False  # settled on the loop, which ignores a second outcome

    def set_result(self, record: dict[str, Any]) -> None:
        self._settle(_settle_result, record)

    def set_exception(self, exc: BaseException) -> None:
        self._settle(_settle_exception, exc)

    def _settle(self, settle: Callable[[asyncio.Future[Any], Any], None], value: Any) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            self.loop.call_soon_threadsafe(settle, self.future, value)


def _settle_result(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _settle_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


@dataclass(slots=True)
class _Write:
    stream: Stream
    seq: int
    line: bytes
    future: Future[dict[str, Any]] | _LoopWaiter | None
    record: dict[str, Any]
    seal_after: bool


@dataclass(slots=True)
class _Seal:
    """Seal the open segments of one session, or of every session when None."""

    session_id: str | None
    future: Future[None]


_STOP: Final = object()


@dataclass(slots=True)
class _OpenSegment:
    """An `.open` file; touched only by the writer thread."""

    stream: Stream
    path: Path
    fd: int
    first_seq: int
    last_seq: int
    first_wal: int
    opened_at: float
    tally: StreamSummary
    size: int = 0


@dataclass(slots=True, frozen=True)
class _Sealed:
    path: Path
    session_id: str
    writer: str
    first_seq: int
    size: int
    tally: StreamSummary | None


class Spool:
    """Write-ahead spool in front of a Store. Thread-safe; `append` never touches the disk."""

    def __init__(
        self,
        directory: Path,
        store: Store,
        *,
        writer_id: str,
        max_bytes: int,
        segment_max_bytes: int = 4 * MiB,
        segment_max_age: float = 30.0,
        wal_max_bytes: int = 16 * MiB,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
        max_streams: int = 100_000,
        max_finished_streams: int = 1024,
        stream_idle_seconds: float = 3600.0,
        eventual_delay: float = 0.05,
        rollup_interval: float | None = 30.0,
        rollup_part_max_bytes: int = 1 * MiB,
        rollup_part_max_entries: int = 10_000,
        rollup_idle_seconds: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`writer_id` must be fresh for every process (`recorder.ids.new_writer_id()`):
        its streams' seqs start at 0 and object keys derive from them.

        `max_bytes` bounds the segments waiting on disk (`over_limit()`); segments
        seal at `segment_max_bytes` (uncompressed) or `segment_max_age` seconds
        after their first record; the WAL rotates at `wal_max_bytes`. Failed
        uploads retry after `retry_initial` seconds, doubling up to `retry_max`.
        Chain state is kept for every open session. Once `max_finished_streams`
        sessions have ended, or the table holds `max_streams` sessions, the ended
        ones and those idle for `stream_idle_seconds` are forgotten and the writer
        id rotates (`<writer_id>r<n>`), so a late record of a forgotten session
        starts a new stream, never reusing seqs. Memory then follows the sessions
        open at once, not every session the process has seen.
        Records appended with `append_eventually` reach the WAL within
        `eventual_delay` seconds.

        The uploader also keeps roll-ups (`recorder.rollup`) of what it stored and
        PUTs each at most every `rollup_interval` seconds and at `close()` (None or
        0: no roll-ups). They only speed up listing and search: a roll-up PUT is
        never on the path that makes records durable or stored, and a failed one is
        retried after another interval. A roll-up part holds up to
        `rollup_part_max_bytes` of entries or `rollup_part_max_entries` entries; a
        day's part is let go from memory `rollup_idle_seconds` after its last entry.
        """
        self.directory = Path(directory)
        self.store = store
        self.writer_id = parse_writer_id(writer_id)
        self.max_bytes = max_bytes
        self.segment_max_bytes = segment_max_bytes
        self.segment_max_age = segment_max_age
        self.wal_max_bytes = wal_max_bytes
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.max_streams = max_streams
        self.max_finished_streams = max_finished_streams
        self.stream_idle_seconds = stream_idle_seconds
        self.eventual_delay = eventual_delay
        self._clock = clock

        self._lock = threading.Lock()
        self._wake_writer = threading.Condition(self._lock)
        self._writer_woken = False
        self._queue: list[Any] = []
        self._chains: dict[str, _Chain] = {}
        self._finished_chains = 0
        self._current_writer = self.writer_id
        self._rotations = 0
        self._chain_limit = max_streams
        self._running = False
        self._closing = False
        self._failure: str | None = None

        self._open: dict[Stream, _OpenSegment] = {}
        self._open_fds: collections.OrderedDict[Stream, _OpenSegment] = collections.OrderedDict()
        self._wal_fd = -1
        self._wal_number = 0
        self._wal_size = 0
        self._wal_files: list[int] = []
        self._sealer: ThreadPoolExecutor | None = None

        self._upload_lock = threading.Lock()
        self._upload_changed = threading.Condition(self._upload_lock)
        self._uploads: collections.deque[_Sealed] = collections.deque()
        self._uploading = False
        self._stop_uploader = threading.Event()
        self._summaries: collections.OrderedDict[Stream, StreamSummary] = collections.OrderedDict()

        self._bytes_lock = threading.Lock()
        self._spool_bytes = 0
        self._records = 0
        self._written_bytes = 0
        self._batches = 0
        self._sealed_segments = 0
        self._uploaded_segments = 0
        self._uploaded_bytes = 0
        self._upload_failures = 0
        self._last_upload_error: str | None = None
        self._recovered_segments = 0
        self._recovered_records = 0
        self._dropped_tail_bytes = 0
        self._vanished_segments = 0

        self.rollup_interval = rollup_interval if rollup_interval and rollup_interval > 0 else None
        self._rollups = (
            RollupBuilder(
                self.writer_id,
                part_max_bytes=rollup_part_max_bytes,
                part_max_entries=rollup_part_max_entries,
                idle_seconds=rollup_idle_seconds,
            )
            if self.rollup_interval
            else None
        )
        self._rollup_wake = threading.Event()
        self._stop_rollups = threading.Event()
        self._rollup_put_lock = threading.Lock()
        self._rollup_puts = 0
        self._rollup_failures = 0
        self._last_rollup_error: str | None = None

        self._lock_fd: int | None = None
        self._writer_thread: threading.Thread | None = None
        self._uploader_thread: threading.Thread | None = None
        self._rollup_thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Recover what an earlier process left, then start the writer and uploader."""
        if self._running:
            raise SpoolError("spool already started")
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise SpoolError(f"spool {self.directory} is in use by another process") from None
        try:
            self._recover()
            self._open_wal(self._wal_number + 1)
        except BaseException:
            self._release_lock()
            raise
        self._sealer = ThreadPoolExecutor(_SEAL_THREADS, thread_name_prefix="hoopgw-spool-seal")
        self._running = True
        self._writer_thread = threading.Thread(
            target=self._write_loop, name="hoopgw-spool-writer", daemon=True
        )
        self._uploader_thread = threading.Thread(
            target=self._upload_loop, name="hoopgw-spool-uploader", daemon=True
        )
        self._writer_thread.start()
        self._uploader_thread.start()
        if self._rollups is not None:
            self._rollup_thread = threading.Thread(
                target=self._rollup_loop, name="hoopgw-spool-rollups", daemon=True
            )
            self._rollup_thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, seal open segments, stop the threads, PUT the roll-ups.

        Sealed segments not yet uploaded stay on disk for the next `start()`;
        call `flush()` first to ship them.
        """
        with self._lock:
            if not self._running or self._closing:
                return
            self._closing = True
            self._queue.append(_STOP)
            self._wake()
        deadline = time.monotonic() + timeout
        if self._writer_thread is not None:
            self._writer_thread.join(max(0.0, deadline - time.monotonic()))
        self._stop_uploader.set()
        with self._upload_changed:
            self._upload_changed.notify_all()
        if self._uploader_thread is not None:
            self._uploader_thread.join(max(0.0, deadline - time.monotonic()))
        if self._rollup_thread is not None:
            self._stop_rollups.set()
            self._rollup_wake.set()
            self._rollup_thread.join(max(0.0, deadline - time.monotonic()))
            if not self._put_rollups(force=True, timeout=max(0.0, deadline - time.monotonic())):
                logger.warning("spool: some roll-ups were not stored at close")
        if self._sealer is not None:
            self._sealer.shutdown(wait=False)
        self._running = False
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
        JSON cannot hold); a failed disk fails the future and every later append.
        Costs one orjson encoding and one sha256 in the caller's thread.
        """
        future: Future[dict[str, Any]] = Future()
        self._enqueue(record, future)
        return future

    def append_on_loop(self, record: dict[str, Any]) -> asyncio.Future[dict[str, Any]]:
        """As `append`, for a caller on the running event loop: an asyncio future.

        The writer thread hands the outcome straight to the loop, sparing the
        durable wait a concurrent future's locking and its re-wrapping.
        """
        waiter = _LoopWaiter(asyncio.get_running_loop())
        self._enqueue(record, waiter)
        return waiter.future

    def append_eventually(self, record: dict[str, Any]) -> None:
        """Queue a record nobody waits on; it is durable within `eventual_delay` seconds.

        As `append`, without the future and without waking the writer: the record
        rides with the next batch. Per statement that saves the writer one wake-up
        and one fsync. A disk failure is logged with the number of such records lost.
        """
        self._enqueue(record, None)

    def _enqueue(
        self, record: dict[str, Any], future: Future[dict[str, Any]] | _LoopWaiter | None
    ) -> None:
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
            if not self._running or self._closing:
                raise SpoolError("spool is not running")
            if self._failure is not None:
                raise SpoolError(f"spool disk failed: {self._failure}")
            chain = self._chains.get(session_id)
            if chain is None:
                chain = self._new_chain(session_id)
            stored["writer"] = chain.writer
            stored["seq"] = chain.next_seq
            line = chain_record(stored, chain.prev_hash)
            chain.prev_hash = stored["hash"]
            chain.next_seq += 1
            chain.last_append = time.monotonic()
            if ends:
                self._mark_ended(chain)
            self._queue.append(
                _Write((session_id, chain.writer), stored["seq"], line, future, stored, ends)
            )
            self._records += 1
            if future is not None:
                self._wake()

    def _wake(self) -> None:
        """Called under the lock. One notify per batch: the writer takes the whole queue."""
        if not self._writer_woken:
            self._writer_woken = True
            self._wake_writer.notify()

    def _new_chain(self, session_id: str) -> _Chain:
        """Called under the lock. Forgets ended and idle sessions once enough have ended
        or the table is full."""
        if (
            self._finished_chains >= self.max_finished_streams
            or len(self._chains) >= self._chain_limit
        ):
            idle_before = time.monotonic() - self.stream_idle_seconds
            self._chains = {
                sid: chain
                for sid, chain in self._chains.items()
                if not chain.ended and chain.last_append >= idle_before
            }
            self._finished_chains = 0
            self._rotations += 1
            self._current_writer = f"{self.writer_id}r{self._rotations}"
            self._chain_limit = max(self.max_streams, 2 * len(self._chains))
            logger.info("spool writer id rotated to %s", self._current_writer)
        chain = _Chain(self._current_writer)
        self._chains[session_id] = chain
        return chain

    def _mark_ended(self, chain: _Chain) -> None:
        """Called under the lock."""
        if not chain.ended:
            chain.ended = True
            self._finished_chains += 1

    def end_session(self, session_id: str) -> Future[None]:
        """Seal the session's open segment now (after what is already queued for it)."""
        sid = parse_session_id(session_id)
        with self._lock:
            chain = self._chains.get(sid)
            if chain is not None:
                self._mark_ended(chain)
        return self._request_seal(sid)

    def _request_seal(self, session_id: str | None) -> Future[None]:
        future: Future[None] = Future()
        with self._lock:
            if not self._running or self._closing:
                raise SpoolError("spool is not running")
            if self._failure is not None:
                raise SpoolError(f"spool disk failed: {self._failure}")
            self._queue.append(_Seal(session_id, future))
            self._wake()
        return future

    def _add_spool_bytes(self, delta: int) -> None:
        with self._bytes_lock:
            self._spool_bytes += delta

    def over_limit(self) -> bool:
        """Segments waiting on disk above `max_bytes`: refuse new statements."""
        return self._spool_bytes > self.max_bytes

    def flush(self, timeout: float) -> bool:
        """Seal everything and wait until every sealed segment is uploaded.

        True when the spool emptied within `timeout` seconds (records appended
        meanwhile may still be open); False on timeout or a failed spool.
        """
        deadline = time.monotonic() + timeout
        try:
            self._request_seal(None).result(timeout)
        except (TimeoutError, SpoolError):
            return False
        with self._upload_changed:
            while self._uploads or self._uploading:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._upload_changed.wait(remaining)
        return True

    def stats(self) -> dict[str, Any]:
        """Counters for logs and health checks; `last_upload_error` clears on success."""
        with self._upload_lock:
            pending = len(self._uploads)
        return {
            "writer": self._current_writer,
            "streams": len(self._chains),
            "cached_summaries": len(self._summaries),
            "records": self._records,
            "batches": self._batches,
            "written_bytes": self._written_bytes,
            "spool_bytes": self._spool_bytes,
            "max_bytes": self.max_bytes,
            "over_limit": self.over_limit(),
            "open_segments": len(self._open),
            "sealed_segments": self._sealed_segments,
            "pending_uploads": pending,
            "uploaded_segments": self._uploaded_segments,
            "uploaded_bytes": self._uploaded_bytes,
            "upload_failures": self._upload_failures,
            "last_upload_error": self._last_upload_error,
            "recovered_segments": self._recovered_segments,
            "recovered_records": self._recovered_records,
            "dropped_tail_bytes": self._dropped_tail_bytes,
            "vanished_segments": self._vanished_segments,
            "failed": self._failure,
            "rollup_puts": self._rollup_puts,
            "rollup_failures": self._rollup_failures,
            "last_rollup_error": self._last_rollup_error,
            "rollups_pending": self._rollups.pending() if self._rollups is not None else 0,
        }

    # --- writer thread ---------------------------------------------------------------

    def _write_loop(self) -> None:
        while True:
            with self._lock:
                while not self._writer_woken:
                    timeout = self._next_age_deadline()
                    if timeout is not None and timeout <= 0:
                        break
                    # unwoken records may be queued at any moment: look every eventual_delay
                    if timeout is None or timeout > self.eventual_delay:
                        timeout = self.eventual_delay
                    if not self._wake_writer.wait(timeout) and self._queue:
                        break
                batch, self._queue = self._queue, []
                self._writer_woken = False
            stop = any(item is _STOP for item in batch)
            if self._failure is None:
                self._process([item for item in batch if item is not _STOP])
            if self._failure is None:
                self._seal_aged()
            if stop:
                if self._failure is None:
                    segments = list(self._open.values())
                    self._open.clear()
                    self._guarded(self._seal_segments, segments)
                self._close_files(remove_wal=self._failure is None)
                return

    def _next_age_deadline(self) -> float | None:
        if not self._open or self._failure is not None:
            return None
        oldest = min(segment.opened_at for segment in self._open.values())
        return oldest + self.segment_max_age - time.monotonic()

    def _process(self, batch: list[Any]) -> None:
        """Make the batch's records durable and acknowledge them, then file them.

        Only the WAL write and its fsync stand between a record and its
        acknowledgement; filing lines into segments (and tallying them) comes
        after, since the WAL already holds everything recovery needs.
        """
        writes = [item for item in batch if isinstance(item, _Write)]
        seals = [item for item in batch if isinstance(item, _Seal)]
        if writes:
            try:
                wal_data = b"".join(write.line for write in writes)
                _write_all(self._wal_fd, wal_data)
                os.fsync(self._wal_fd)
                self._wal_size += len(wal_data)
            except Exception as exc:
                self._fail(_describe(exc), writes, seals)
                return
            self._batches += 1
            for write in writes:
                if write.future is not None:
                    write.future.set_result(write.record)
        try:
            self._file(batch)
            self._maybe_rotate_wal()
        except Exception as exc:
            self._fail(_describe(exc), [], seals)
            return
        for seal in seals:
            seal.future.set_result(None)

    def _file(self, batch: list[_Write | _Seal]) -> None:
        """Copy durable lines into their sessions' open segments, sealing in batch order."""
        to_seal: list[_OpenSegment] = []
        buffers: dict[int, tuple[_OpenSegment, list[bytes]]] = {}
        for item in batch:
            if isinstance(item, _Seal):
                for stream in list(self._open):
                    if item.session_id is None or stream[0] == item.session_id:
                        to_seal.append(self._open.pop(stream))
                continue
            segment = self._open.get(item.stream)
            if segment is None:
                segment = self._open_segment(item.stream, item.seq)
            buffers.setdefault(id(segment), (segment, []))[1].append(item.line)
            segment.last_seq = item.seq
            segment.size += len(item.line)
            segment.tally.add(item.record)
            if item.seal_after or segment.size >= self.segment_max_bytes:
                to_seal.append(self._open.pop(item.stream))
        for segment, lines in buffers.values():
            data = b"".join(lines)
            _write_all(self._fd(segment), data)
            self._add_spool_bytes(len(data))
            self._written_bytes += len(data)
        self._seal_segments(to_seal)

    def _open_segment(self, stream: Stream, first_seq: int) -> _OpenSegment:
        session_id, writer = stream
        path = self.directory / f"{session_id}_{writer}-{first_seq:06d}{OPEN_SUFFIX}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)
        segment = _OpenSegment(
            stream,
            path,
            fd,
            first_seq,
            first_seq,
            self._wal_number,
            time.monotonic(),
            StreamSummary(session_id, writer),
        )
        self._open[stream] = segment
        self._keep_fd(segment)
        return segment

    def _fd(self, segment: _OpenSegment) -> int:
        """The segment's descriptor, reopened if it was closed to bound open files."""
        if segment.fd < 0:
            segment.fd = os.open(segment.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self._keep_fd(segment)
        return segment.fd

    def _keep_fd(self, segment: _OpenSegment) -> None:
        self._open_fds[segment.stream] = segment
        self._open_fds.move_to_end(segment.stream)
        while len(self._open_fds) > _MAX_OPEN_FILES:
            _, idle = self._open_fds.popitem(last=False)
            if idle.fd >= 0:
                os.close(idle.fd)
                idle.fd = -1

    def _release_fd(self, segment: _OpenSegment) -> None:
        if self._open_fds.get(segment.stream) is segment:
            del self._open_fds[segment.stream]

    def _seal_segments(self, segments: list[_OpenSegment]) -> None:
        """fsync (in parallel), rename to `.jsonl`, note the seals in the WAL, queue uploads."""
        if not segments:
            return
        for segment in segments:
            self._release_fd(segment)
        if len(segments) == 1 or self._sealer is None:
            for segment in segments:
                _sync_and_close(segment)
        else:
            list(self._sealer.map(_sync_and_close, segments))
        sealed = []
        marks = []
        for segment in segments:
            path = segment.path.with_suffix(SEALED_SUFFIX)
            os.rename(segment.path, path)
            session_id, writer = segment.stream
            segment.tally.bytes = segment.size
            sealed.append(
                _Sealed(path, session_id, writer, segment.first_seq, segment.size, segment.tally)
            )
            marks.append(
                orjson.dumps({SEAL_MARK: [session_id, writer, segment.first_seq, segment.last_seq]})
                + b"\n"
            )
        fsync_dir(self.directory)
        marks_data = b"".join(marks)
        _write_all(self._wal_fd, marks_data)
        os.fsync(self._wal_fd)
        self._wal_size += len(marks_data)
        self._sealed_segments += len(sealed)
        with self._upload_changed:
            self._uploads.extend(sealed)
            self._upload_changed.notify_all()
        self._checkpoint()

    def _seal_aged(self) -> None:
        now = time.monotonic()
        aged = [
            stream
            for stream, segment in self._open.items()
            if now - segment.opened_at >= self.segment_max_age
        ]
        if aged:
            self._guarded(self._seal_segments, [self._open.pop(stream) for stream in aged])

    def _guarded(self, action: Callable[[list[_OpenSegment]], None], arg: list[Any]) -> None:
        try:
            action(arg)
        except Exception as exc:
            self._fail(f"sealing failed: {_describe(exc)}", [], [])

    def _open_wal(self, number: int) -> None:
        fd = os.open(
            self.directory / f"wal-{number:012d}.log",
            os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC,
            0o600,
        )
        fsync_dir(self.directory)
        if self._wal_fd >= 0:
            os.close(self._wal_fd)
        self._wal_fd = fd
        self._wal_number = number
        self._wal_size = 0
        self._wal_files.append(number)

    def _maybe_rotate_wal(self) -> None:
        if self._wal_size >= self.wal_max_bytes:
            self._open_wal(self._wal_number + 1)
            self._checkpoint()

    def _checkpoint(self) -> None:
        """Delete WAL files whose every record is in a sealed, fsync'd segment."""
        needed = min((segment.first_wal for segment in self._open.values()), default=None)
        keep_from = self._wal_number if needed is None else min(needed, self._wal_number)
        obsolete = [number for number in self._wal_files if number < keep_from]
        if not obsolete:
            return
        for number in obsolete:
            (self.directory / f"wal-{number:012d}.log").unlink(missing_ok=True)
        self._wal_files = [number for number in self._wal_files if number >= keep_from]

    def _close_files(self, remove_wal: bool) -> None:
        """Close everything; with nothing left open, the WAL has no record worth keeping."""
        for segment in self._open.values():
            if segment.fd >= 0:
                os.close(segment.fd)
                segment.fd = -1
        self._open.clear()
        self._open_fds.clear()
        if self._wal_fd >= 0:
            os.close(self._wal_fd)
            self._wal_fd = -1
        if remove_wal:
            for number in self._wal_files:
                (self.directory / f"wal-{number:012d}.log").unlink(missing_ok=True)
            self._wal_files = []

    def _fail(self, reason: str, writes: list[_Write], seals: list[_Seal]) -> None:
        """A write, fsync or rename failed: nothing more can be promised durable.

        Everything queued fails; the WAL still holds every record whose future
        resolved, and the next `start()` rebuilds segments from it.
        """
        logger.error("spool disk failure, refusing further records: %s", reason)
        error = SpoolError(f"spool disk failed: {reason}")
        with self._lock:
            self._failure = reason
            queued, self._queue = self._queue, []
        pending = [*writes, *seals, *(item for item in queued if item is not _STOP)]
        unawaited = 0
        for item in pending:
            if item.future is None:
                unawaited += 1
            elif not item.future.done():
                item.future.set_exception(error)
        if unawaited:
            logger.error("spool: %d record(s) appended without a future were lost", unawaited)
        if any(item is _STOP for item in queued):
            with self._lock:
                self._queue.append(_STOP)

    # --- recovery --------------------------------------------------------------------

    def _recover(self) -> None:
        """Rebuild segments of a dead process from its WAL; queue every sealed segment."""
        sealed_ranges: dict[Stream, list[tuple[int, int]]] = {}
        wal_records: dict[Stream, dict[int, bytes]] = {}
        wal_paths = sorted(
            path for path in self.directory.glob("wal-*.log") if _WAL_FILE.fullmatch(path.name)
        )
        for path in wal_paths:
            self._read_wal(path, sealed_ranges, wal_records)
        for path in self.directory.glob(f"*{SEALED_SUFFIX}"):
            match = _SEGMENT_FILE.fullmatch(path.name)
            if match is None:
                continue
            first = int(match[3])
            lines = path.read_bytes().count(b"\n")
            if lines:
                sealed_ranges.setdefault((match[1], match[2]), []).append(
                    (first, first + lines - 1)
                )
        for path in self.directory.glob(f"*{OPEN_SUFFIX}"):
            if _SEGMENT_FILE.fullmatch(path.name):
                path.unlink()
        rebuilt = 0
        for stream, by_seq in wal_records.items():
            ranges = sealed_ranges.get(stream, [])
            missing = sorted(
                seq for seq in by_seq if not any(low <= seq <= high for low, high in ranges)
            )
            for run in _contiguous_runs(missing):
                self._write_recovered(stream, run[0], b"".join(by_seq[seq] for seq in run))
                rebuilt += len(run)
        fsync_dir(self.directory)
        for path in wal_paths:
            path.unlink()
        if wal_paths:
            fsync_dir(self.directory)
            self._wal_number = max(int(_WAL_FILE.fullmatch(p.name)[1]) for p in wal_paths)  # type: ignore[index]
        self._recovered_records = rebuilt
        self._queue_sealed_leftovers()

    def _read_wal(
        self,
        path: Path,
        sealed_ranges: dict[Stream, list[tuple[int, int]]],
        wal_records: dict[Stream, dict[int, bytes]],
    ) -> None:
        data = path.read_bytes()
        position = 0
        while True:
            newline = data.find(b"\n", position)
            if newline < 0:
                break
            line = data[position : newline + 1]
            try:
                item = orjson.loads(line)
            except orjson.JSONDecodeError:
                break
            position = newline + 1
            if not isinstance(item, dict):
                continue
            mark = item.get(SEAL_MARK)
            if isinstance(mark, list) and len(mark) == 4:
                sealed_ranges.setdefault((mark[0], mark[1]), []).append((mark[2], mark[3]))
                continue
            stream = (item.get("session_id"), item.get("writer"))
            seq = item.get("seq")
            if isinstance(stream[0], str) and isinstance(stream[1], str) and isinstance(seq, int):
                wal_records.setdefault(stream, {})[seq] = line  # type: ignore[index]
        dropped = len(data) - position
        if dropped:
            self._dropped_tail_bytes += dropped
            logger.warning("spool: dropped %d torn bytes at the end of %s", dropped, path.name)

    def _write_recovered(self, stream: Stream, first_seq: int, data: bytes) -> None:
        session_id, writer = stream
        parse_session_id(session_id)
        parse_writer_id(writer)
        path = self.directory / f"{session_id}_{writer}-{first_seq:06d}{SEALED_SUFFIX}"
        with open(path, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())

    def _queue_sealed_leftovers(self) -> None:
        sealed = []
        for path in self.directory.glob(f"*{SEALED_SUFFIX}"):
            match = _SEGMENT_FILE.fullmatch(path.name)
            if match is None:
                logger.warning("spool: ignoring unexpected file %s", path.name)
                continue
            session_id, writer, first_seq = match[1], match[2], int(match[3])
            if writer == self.writer_id or writer.startswith(f"{self.writer_id}r"):
                raise SpoolError(
                    f"spool holds segments of writer {writer}, the id this spool was given; "
                    "give every process a fresh writer id (recorder.ids.new_writer_id())"
                )
            sealed.append(_Sealed(path, session_id, writer, first_seq, path.stat().st_size, None))
        sealed.sort(key=lambda item: (item.session_id, item.writer, item.first_seq))
        for item in sealed:
            self._add_spool_bytes(item.size)
            self._uploads.append(item)
        self._recovered_segments = len(sealed)
        if sealed:
            logger.info("spool: %d leftover segments queued for upload", len(sealed))

    # --- uploader thread -------------------------------------------------------------

    def _upload_loop(self) -> None:
        delay = self.retry_initial
        while True:
            with self._upload_changed:
                while not self._uploads and not self._stop_uploader.is_set():
                    self._upload_changed.wait()
                if self._stop_uploader.is_set():
                    return
                item = self._uploads[0]
                self._uploading = True
            try:
                self._upload(item)
            except Exception as exc:
                self._upload_failures += 1
                self._last_upload_error = f"{type(exc).__name__}: {exc}"[:500]
                logger.warning(
                    "spool: upload of %s failed, retrying in %.1fs: %s",
                    item.path.name,
                    delay,
                    self._last_upload_error,
                )
                with self._upload_changed:
                    self._uploading = False
                    self._upload_changed.notify_all()
                if self._stop_uploader.wait(delay * random.uniform(0.8, 1.2)):
                    return
                delay = min(delay * 2, self.retry_max)
                continue
            delay = self.retry_initial
            self._last_upload_error = None
            with self._upload_changed:
                self._uploads.popleft()
                self._uploading = False
                self._upload_changed.notify_all()

    def _upload(self, item: _Sealed) -> None:
        """Compress, put (the store verifies), update the summary, then delete locally.

        A stream's segments go up in seq order, so the summary can tell a repeated
        upload (already counted) from a new one by the first seq alone.
        """
        try:
            data = item.path.read_bytes()
        except FileNotFoundError:
            logger.error("spool: sealed segment %s vanished before upload", item.path.name)
            self._vanished_segments += 1
            self._add_spool_bytes(-item.size)
            return
        compressed = compress_lines(data)
        key = segment_key(item.session_id, item.writer, item.first_seq)
        version = self.store.put(key, compressed)
        records = _parse_lines(data) if self._rollups is not None or item.tally is None else []
        if version is not None and self._rollups is not None:
            self._roll_up(self._rollups.add_segment, key, version, records)
        stream = (item.session_id, item.writer)
        summary = self._summaries.get(stream)
        if summary is None:
            summary = self._load_summary(item.session_id, item.writer)
        if item.first_seq > summary.last_seq:
            tally = item.tally or StreamSummary.tally(
                item.session_id, item.writer, records, len(data)
            )
            updated = StreamSummary.from_json(summary.to_json())
            updated.merge_segment(item.first_seq, tally, len(compressed), self._clock())
            summary_json = updated.to_json()
            stored_key = summary_key(item.session_id, item.writer)
            summary_version = self.store.put(stored_key, summary_json)
            if summary_version is not None and self._rollups is not None:
                self._roll_up(self._rollups.add_summary, stored_key, summary_version, summary_json)
            summary = updated
        if summary.end_ts is None:
            self._summaries[stream] = summary
            self._summaries.move_to_end(stream)
            while len(self._summaries) > _SUMMARY_CACHE:
                self._summaries.popitem(last=False)
        else:
            # an ended session rarely gets another segment; if it does, its summary is read back
            self._summaries.pop(stream, None)
        item.path.unlink(missing_ok=True)
        self._add_spool_bytes(-item.size)
        self._uploaded_segments += 1
        self._uploaded_bytes += len(compressed)

    def _load_summary(self, session_id: str, writer: str) -> StreamSummary:
        try:
            return StreamSummary.from_json(self.store.get(summary_key(session_id, writer)))
        except KeyNotFound:
            return StreamSummary(session_id, writer)

    # --- roll-ups --------------------------------------------------------------------

    def _roll_up(self, add: Callable[..., None], *entry: Any) -> None:
        """Add an entry to the roll-ups; whatever goes wrong only costs listing speed."""
        try:
            add(*entry)
        except Exception as exc:
            self._rollup_failures += 1
            self._last_rollup_error = f"{type(exc).__name__}: {exc}"[:500]
            logger.warning("spool: roll-up entry not kept: %s", self._last_rollup_error)
            return
        self._rollup_wake.set()

    def _rollup_loop(self) -> None:
        assert self._rollups is not None and self.rollup_interval is not None
        while not self._stop_rollups.is_set():
            due = self._rollups.next_due(self.rollup_interval)
            wait = self.rollup_interval if due is None else due - time.monotonic()
            if wait > 0:
                self._rollup_wake.wait(min(wait, self.rollup_interval))
            self._rollup_wake.clear()
            if self._stop_rollups.is_set():
                return
            self._put_rollups(force=False, timeout=None)
            self._rollups.forget_idle()

    def put_rollups(self, timeout: float = 30.0) -> bool:
        """PUT every roll-up holding entries not yet stored, now (`close` does it too).

        True when all of them are stored; False on a failed PUT (retried later)
        or when another PUT pass still ran after `timeout` seconds.
        """
        return self._rollups is None or self._put_rollups(force=True, timeout=timeout)

    def _put_rollups(self, *, force: bool, timeout: float | None) -> bool:
        """One PUT pass, serialised so that an older snapshot never overwrites a newer one."""
        if self._rollups is None or self.rollup_interval is None:
            return True
        if not self._rollup_put_lock.acquire(timeout=-1 if timeout is None else timeout):
            return False
        try:
            stored = True
            for put in self._rollups.due(self.rollup_interval, force=force):
                try:
                    self.store.put(put.key, put.data)
                except Exception as exc:
                    self._rollups.failed(put)
                    self._rollup_failures += 1
                    self._last_rollup_error = f"{type(exc).__name__}: {exc}"[:500]
                    logger.warning(
                        "spool: roll-up %s not stored, retrying in %.0fs: %s",
                        put.key,
                        self.rollup_interval,
                        self._last_rollup_error,
                    )
                    stored = False
                else:
                    self._rollups.stored(put)
                    self._rollup_puts += 1
                    self._last_rollup_error = None
            return stored
        finally:
            self._rollup_put_lock.release()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}"[:300]


def _sync_and_close(segment: _OpenSegment) -> None:
    """fsync a segment file (reopening it if its descriptor was let go) and close it."""
    fd = segment.fd if segment.fd >= 0 else os.open(segment.path, os.O_WRONLY | os.O_CLOEXEC)
    segment.fd = -1
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _parse_lines(data: bytes) -> list[dict[str, Any]]:
    """Records of a spool file for the summary; unreadable lines are skipped, not fatal."""
    records = []
    for line in data.split(b"\n"):
        if not line:
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _contiguous_runs(seqs: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for seq in seqs:
        if runs and seq == runs[-1][-1] + 1:
            runs[-1].append(seq)
        else:
            runs.append([seq])
    return runs
