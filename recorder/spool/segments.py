"""Open segment files: filing durable lines by session, and sealing them for upload."""

from __future__ import annotations

import collections
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import orjson

from hoopgw.recorder.catalog import StreamSummary
from hoopgw.recorder.spool.intake import Seal, Write
from hoopgw.recorder.spool.layout import (
    OPEN_SUFFIX,
    SEAL_MARK,
    SEALED_SUFFIX,
    Sealed,
    Stream,
    segment_path,
    write_all,
)
from hoopgw.recorder.spool.stats import SpoolBytes
from hoopgw.recorder.store import fsync_dir

_SEAL_THREADS: Final = 8
_MAX_OPEN_FILES: Final = 256
"""Open segment files kept open between batches; the rest are reopened on demand."""


@dataclass(slots=True)
class OpenSegment:
    """An `.open` file, created with its first write.

    `size` counts every line filed into it, `on_disk` those written: lines a
    full disk refused wait in `unwritten`, and the file never keeps a part of one.
    """

    stream: Stream
    path: Path
    fd: int
    first_seq: int
    last_seq: int
    first_wal: int
    opened_at: float
    tally: StreamSummary
    size: int = 0
    on_disk: int = 0
    created: bool = False
    renamed: bool = False
    unwritten: list[bytes] = field(default_factory=list)


class OpenSegments:
    """Each session's `.open` segment; touched only by the writer thread.

    Lines land here after the WAL made them durable, so segment files are written
    without fsync and fsync'd once, when sealed. A segment seals at
    `max_bytes`, `max_age` seconds after it opened, or when its session ends.

    Filing (`file`) only decides where lines go; `write_unwritten` writes them,
    and a write a full disk refuses is cut back and kept for the next call, so
    that `write_unwritten` and `seal` can be retried until they succeed.
    """

    def __init__(
        self, directory: Path, spool_bytes: SpoolBytes, max_bytes: int, max_age: float
    ) -> None:
        self.directory = directory
        self.spool_bytes = spool_bytes
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.written_bytes = 0
        self._open: dict[Stream, OpenSegment] = {}
        self._fds: collections.OrderedDict[Stream, OpenSegment] = collections.OrderedDict()
        self._unwritten: dict[int, OpenSegment] = {}
        self._sealer: ThreadPoolExecutor | None = None

    def __len__(self) -> int:
        return len(self._open)

    def start_sealer(self) -> None:
        self._sealer = ThreadPoolExecutor(_SEAL_THREADS, thread_name_prefix="hoopgw-spool-seal")

    def stop_sealer(self) -> None:
        if self._sealer is not None:
            self._sealer.shutdown(wait=False)

    def file(self, batch: list[Write | Seal], wal_number: int) -> list[OpenSegment]:
        """File durable lines into their sessions' segments; what to seal, in batch order.

        Touches no file: `write_unwritten` writes the lines.
        """
        to_seal: list[OpenSegment] = []
        buffers: dict[int, tuple[OpenSegment, list[bytes]]] = {}
        for item in batch:
            if isinstance(item, Seal):
                for stream in list(self._open):
                    if item.session_id is None or stream[0] == item.session_id:
                        to_seal.append(self._open.pop(stream))
                continue
            segment = self._open.get(item.stream)
            if segment is None:
                segment = self._open_segment(item.stream, item.seq, wal_number)
            buffers.setdefault(id(segment), (segment, []))[1].append(item.line)
            segment.last_seq = item.seq
            segment.size += len(item.line)
            segment.tally.add(item.record)
            if item.seal_after or segment.size >= self.max_bytes:
                to_seal.append(self._open.pop(item.stream))
        for segment, lines in buffers.values():
            segment.unwritten.append(b"".join(lines))
            self._unwritten[id(segment)] = segment
        return to_seal

    def write_unwritten(self) -> None:
        """Write the lines filed but not yet written, segment by segment.

        A failed write (a full disk) is cut back to the segment's last whole
        line and raised; what was not written stays for the next call.
        """
        while self._unwritten:
            segment = next(iter(self._unwritten.values()))
            data = b"".join(segment.unwritten)
            fd = self._fd(segment)
            try:
                write_all(fd, data)
            except OSError:
                os.ftruncate(fd, segment.on_disk)
                raise
            segment.unwritten.clear()
            segment.on_disk += len(data)
            del self._unwritten[id(segment)]
            self.spool_bytes.add(len(data))
            self.written_bytes += len(data)

    def next_age_deadline(self) -> float | None:
        """Seconds until the oldest segment is due by age; None when none is open."""
        if not self._open:
            return None
        oldest = min(segment.opened_at for segment in self._open.values())
        return oldest + self.max_age - time.monotonic()

    def take_aged(self) -> list[OpenSegment]:
        now = time.monotonic()
        aged = [
            stream
            for stream, segment in self._open.items()
            if now - segment.opened_at >= self.max_age
        ]
        return [self._open.pop(stream) for stream in aged]

    def take_all(self) -> list[OpenSegment]:
        segments = list(self._open.values())
        self._open.clear()
        return segments

    def oldest_wal(self) -> int | None:
        """The first WAL file an open segment's records are in."""
        return min((segment.first_wal for segment in self._open.values()), default=None)

    def seal(self, segments: list[OpenSegment]) -> tuple[list[Sealed], bytes]:
        """fsync (in parallel) and rename to `.jsonl`; the sealed segments and their WAL marks.

        The caller notes the marks in the WAL before anyone may upload them. May
        be called again with the same segments after it raised (a full disk).
        """
        self.write_unwritten()
        to_sync = [segment for segment in segments if not segment.renamed]
        for segment in to_sync:
            self._release_fd(segment)
        if len(to_sync) == 1 or self._sealer is None:
            for segment in to_sync:
                _sync_and_close(segment)
        else:
            list(self._sealer.map(_sync_and_close, to_sync))
        for segment in to_sync:
            path = segment.path.with_suffix(SEALED_SUFFIX)
            os.rename(segment.path, path)
            segment.path = path
            segment.renamed = True
        sealed = []
        marks = []
        for segment in segments:
            path = segment.path
            session_id, writer = segment.stream
            segment.tally.bytes = segment.size
            sealed.append(
                Sealed(path, session_id, writer, segment.first_seq, segment.size, segment.tally)
            )
            marks.append(
                orjson.dumps({SEAL_MARK: [session_id, writer, segment.first_seq, segment.last_seq]})
                + b"\n"
            )
        fsync_dir(self.directory)
        return sealed, b"".join(marks)

    def close(self) -> None:
        """Close every descriptor; what is still open stays on disk for recovery."""
        for segment in [*self._open.values(), *self._fds.values()]:
            if segment.fd >= 0:
                os.close(segment.fd)
                segment.fd = -1
        self._open.clear()
        self._unwritten.clear()
        self._fds.clear()

    def _open_segment(self, stream: Stream, first_seq: int, wal_number: int) -> OpenSegment:
        path = segment_path(self.directory, stream, first_seq, OPEN_SUFFIX)
        segment = OpenSegment(
            stream,
            path,
            -1,
            first_seq,
            first_seq,
            wal_number,
            time.monotonic(),
            StreamSummary(*stream),
        )
        self._open[stream] = segment
        return segment

    def _fd(self, segment: OpenSegment) -> int:
        """The segment's descriptor: the file created on first use, reopened if it was
        closed to bound open files."""
        if segment.fd < 0:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
            if not segment.created:
                flags |= os.O_CREAT | os.O_TRUNC
            segment.fd = os.open(segment.path, flags, 0o600)
            segment.created = True
        self._keep_fd(segment)
        return segment.fd

    def _keep_fd(self, segment: OpenSegment) -> None:
        self._fds[segment.stream] = segment
        self._fds.move_to_end(segment.stream)
        while len(self._fds) > _MAX_OPEN_FILES:
            _, idle = self._fds.popitem(last=False)
            if idle.fd >= 0:
                os.close(idle.fd)
                idle.fd = -1

    def _release_fd(self, segment: OpenSegment) -> None:
        if self._fds.get(segment.stream) is segment:
            del self._fds[segment.stream]


class SegmentSyncError(RuntimeError):
    """A segment's fsync failed: after that, a later fsync may succeed without its lines on
    disk, so only a restart (recovery rebuilds segments from the WAL) makes it whole."""


def _sync_and_close(segment: OpenSegment) -> None:
    """fsync a segment file (reopening it if its descriptor was let go) and close it."""
    fd = segment.fd if segment.fd >= 0 else os.open(segment.path, os.O_WRONLY | os.O_CLOEXEC)
    segment.fd = -1
    try:
        os.fsync(fd)
    except OSError as exc:
        raise SegmentSyncError(f"fsync of {segment.path.name} failed: {exc.strerror}") from exc
    finally:
        os.close(fd)
