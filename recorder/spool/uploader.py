"""The uploader thread: sealed segments compressed, stored, summarised, then deleted."""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Final

from hoopgw.recorder.catalog import StreamSummary, segment_key, summary_key
from hoopgw.recorder.checkpoints import CheckpointChain
from hoopgw.recorder.segment import compress_lines, parse_lines
from hoopgw.recorder.spool.layout import Sealed, Stream
from hoopgw.recorder.spool.rollups import RollupPublisher
from hoopgw.recorder.spool.stats import SpoolBytes
from hoopgw.recorder.store import KeyNotFound, Store

logger = logging.getLogger(__name__)

_SUMMARY_CACHE: Final = 4096


class SummaryCache:
    """The stored summaries of streams still going, so that each upload need not read its
    summary back; the least recently written leave first. The uploader thread's alone."""

    def __init__(self, store: Store, capacity: int = _SUMMARY_CACHE) -> None:
        self.store = store
        self.capacity = capacity
        self._summaries: collections.OrderedDict[Stream, StreamSummary] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._summaries)

    def get(self, stream: Stream) -> StreamSummary:
        """The stream's summary as stored (an empty one if none is)."""
        summary = self._summaries.get(stream)
        if summary is not None:
            return summary
        try:
            return StreamSummary.from_json(self.store.get(summary_key(*stream)))
        except KeyNotFound:
            return StreamSummary(*stream)

    def keep(self, stream: Stream, summary: StreamSummary) -> None:
        if summary.end_ts is None:
            self._summaries[stream] = summary
            self._summaries.move_to_end(stream)
            while len(self._summaries) > self.capacity:
                self._summaries.popitem(last=False)
        else:
            # an ended session rarely gets another segment; if it does, its summary is read back
            self._summaries.pop(stream, None)


class Uploader:
    """Owns the queue of sealed segments and the thread that stores them, one at a time.

    The upload lock covers the queue and whether an upload is under way, so that
    `wait_idle` sees the spool empty only once the last upload finished. A
    stream's segments go up in seq order. A failed upload is retried after
    `retry_initial` seconds, doubling up to `retry_max`, never skipped.

    With a `CheckpointChain`, every segment it stores is linked to the one
    before (the link goes into the stream's summary), and the same thread writes
    the chain's signed checkpoints: one at start, one every interval while new
    links wait, and a final one when it stops. A failed checkpoint PUT is logged
    and retried an interval later; it never holds up a segment.
    """

    def __init__(
        self,
        store: Store,
        spool_bytes: SpoolBytes,
        rollups: RollupPublisher | None,
        *,
        retry_initial: float,
        retry_max: float,
        clock: Callable[[], float],
        checkpoints: CheckpointChain | None = None,
    ) -> None:
        self.store = store
        self.checkpoints = checkpoints
        self.spool_bytes = spool_bytes
        self.rollups = rollups
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.summaries = SummaryCache(store)
        self._clock = clock
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._uploads: collections.deque[Sealed] = collections.deque()
        self._uploading = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.uploaded_segments = 0
        self.uploaded_bytes = 0
        self.failures = 0
        self.last_error: str | None = None
        self.vanished_segments = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="hoopgw-spool-uploader", daemon=True)
        self._thread.start()

    def stop(self, deadline: float) -> None:
        """End the thread after the upload under way; the rest stays on disk."""
        self._stop.set()
        with self._changed:
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))

    def submit(self, sealed: list[Sealed]) -> None:
        with self._changed:
            self._uploads.extend(sealed)
            self._changed.notify_all()

    def pending(self) -> int:
        with self._lock:
            return len(self._uploads)

    def wait_idle(self, deadline: float) -> bool:
        """Wait until every submitted segment is stored; False at `deadline` (monotonic)."""
        with self._changed:
            while self._uploads or self._uploading:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True

    def _run(self) -> None:
        self._checkpoint(final=False)  # the genesis: this process ran, whatever follows
        self._upload_until_stopped()
        self._checkpoint(final=True)

    def _checkpoint_due(self) -> float | None:
        return self.checkpoints.seconds_until_due() if self.checkpoints is not None else None

    def _checkpoint(self, final: bool) -> None:
        """PUT the chain's next checkpoint; on failure, log it and try again an interval later."""
        chain = self.checkpoints
        if chain is None:
            return
        key, data = chain.build(final)
        try:
            self.store.put(key, data)
        except Exception as exc:
            chain.failed(f"{type(exc).__name__}: {exc}"[:500])
            logger.warning(
                "spool: checkpoint %s not stored, retrying later: %s", key, chain.last_error
            )
            return
        chain.stored(data, final)
        if final:
            logger.info("spool: final checkpoint %s stored", key)

    def _upload_until_stopped(self) -> None:
        delay = self.retry_initial
        while True:
            with self._changed:
                while not self._uploads and not self._stop.is_set():
                    due = self._checkpoint_due()
                    if due is not None and due <= 0:
                        break
                    self._changed.wait(due)
                if self._stop.is_set():
                    return
                if not self._uploads:
                    item = None
                else:
                    item = self._uploads[0]
                    self._uploading = True
            if item is None:
                self._checkpoint(final=False)
                continue
            try:
                self._upload(item)
            except Exception as exc:
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"[:500]
                logger.warning(
                    "spool: upload of %s failed, retrying in %.1fs: %s",
                    item.path.name,
                    delay,
                    self.last_error,
                )
                with self._changed:
                    self._uploading = False
                    self._changed.notify_all()
                if self._stop.wait(delay * random.uniform(0.8, 1.2)):
                    return
                delay = min(delay * 2, self.retry_max)
                continue
            delay = self.retry_initial
            self.last_error = None
            with self._changed:
                self._uploads.popleft()
                self._uploading = False
                self._changed.notify_all()
            due = self._checkpoint_due()
            if due is not None and due <= 0:
                self._checkpoint(final=False)

    def _upload(self, item: Sealed) -> None:
        """Compress, put (the store verifies), update the summary, then delete locally.

        A stream's segments go up in seq order, so the summary can tell a repeated
        upload (already counted) from a new one by the first seq alone.
        """
        try:
            data = item.path.read_bytes()
        except FileNotFoundError:
            logger.error("spool: sealed segment %s vanished before upload", item.path.name)
            self.vanished_segments += 1
            self.spool_bytes.add(-item.size)
            return
        compressed = compress_lines(data)
        key = segment_key(item.session_id, item.writer, item.first_seq)
        version = self.store.put(key, compressed)
        # the writer tallied a segment it sealed; one an earlier process left is read here
        records = None if item.tally is not None else list(parse_lines(data))
        if version is not None and self.rollups is not None:
            if records is None:
                self.rollups.add_sealed_segment(key, version, item.path, data)
            else:
                self.rollups.add_segment(key, version, records)
        stream = (item.session_id, item.writer)
        summary = self.summaries.get(stream)
        if item.first_seq > summary.last_seq:
            tally = item.tally or StreamSummary.tally(
                item.session_id, item.writer, records or [], len(data)
            )
            updated = StreamSummary.from_json(summary.to_json())
            updated.merge_segment(item.first_seq, tally, len(compressed), self._clock())
            link = None
            if self.checkpoints is not None:
                link = self.checkpoints.link(
                    item.session_id, item.writer, item.first_seq, tally.last_seq, tally.last_hash
                )
                updated.links.append(link)
            summary_json = updated.to_json()
            stored_key = summary_key(item.session_id, item.writer)
            summary_version = self.store.put(stored_key, summary_json)
            if link is not None and self.checkpoints is not None:
                self.checkpoints.commit(link)
            if summary_version is not None and self.rollups is not None:
                self.rollups.add_summary(stored_key, summary_version, summary_json)
            summary = updated
        self.summaries.keep(stream, summary)
        item.path.unlink(missing_ok=True)
        self.spool_bytes.add(-item.size)
        self.uploaded_segments += 1
        self.uploaded_bytes += len(compressed)
