"""The roll-up publisher: what the uploader stored, PUT as roll-ups now and then.

The roll-up format and its builder are `recorder.rollup`'s; here only the thread
that PUTs them. Roll-ups only speed up listing and search: a roll-up PUT is never
on the path that makes records durable or stored, and a failed one is retried
after another interval.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from hoopgw.recorder.rollup import RollupBuilder
from hoopgw.recorder.spool.entries import SegmentEntries
from hoopgw.recorder.store import Store

logger = logging.getLogger(__name__)


class RollupPublisher:
    """Owns the roll-up builder and the thread that PUTs its parts every `interval` seconds.

    The uploader adds entries from its thread; the put lock serialises PUT passes
    (this thread's, `put_rollups`, and the last one at close) so that an older
    snapshot never overwrites a newer one.
    """

    def __init__(
        self,
        store: Store,
        builder: RollupBuilder,
        interval: float,
        entries: SegmentEntries | None = None,
    ) -> None:
        self.store = store
        self.builder = builder
        self.interval = interval
        self.entries = entries or SegmentEntries()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._put_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.puts = 0
        self.failures = 0
        self.last_error: str | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="hoopgw-spool-rollups", daemon=True)
        self._thread.start()

    def stop(self, deadline: float) -> None:
        """End the thread, then PUT whatever is left, within `deadline` (monotonic)."""
        self.entries.close()
        if self._thread is None:
            return
        self._stop.set()
        self._wake.set()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if not self.put(force=True, timeout=max(0.0, deadline - time.monotonic())):
            logger.warning("spool: some roll-ups were not stored at close")

    def add_segment(self, key: str, version: str, records: Iterable[dict[str, Any]]) -> None:
        self._keep(self.builder.add_segment, key, version, records)

    def add_sealed_segment(self, key: str, version: str, path: Path, data: bytes) -> None:
        """Describe the sealed segment at `path` (its bytes `data`), stored as `key`."""
        self._keep(self._add_sealed_segment, key, version, path, data)

    def _add_sealed_segment(self, key: str, version: str, path: Path, data: bytes) -> None:
        self.builder.add_segment_entry(key, self.entries.describe(key, version, path, data))

    def add_summary(self, key: str, version: str, summary_json: bytes) -> None:
        self._keep(self.builder.add_summary, key, version, summary_json)

    def pending(self) -> int:
        return self.builder.pending()

    def put(self, *, force: bool, timeout: float | None) -> bool:
        """One PUT pass of the roll-ups due (all with changes when `force`).

        True when all of them are stored; False on a failed PUT (retried later)
        or when another pass still ran after `timeout` seconds.
        """
        if not self._put_lock.acquire(timeout=-1 if timeout is None else timeout):
            return False
        try:
            stored = True
            for put in self.builder.due(self.interval, force=force):
                try:
                    self.store.put(put.key, put.data)
                except Exception as exc:
                    self.builder.failed(put)
                    self.failures += 1
                    self.last_error = f"{type(exc).__name__}: {exc}"[:500]
                    logger.warning(
                        "spool: roll-up %s not stored, retrying in %.0fs: %s",
                        put.key,
                        self.interval,
                        self.last_error,
                    )
                    stored = False
                else:
                    self.builder.stored(put)
                    self.puts += 1
                    self.last_error = None
            return stored
        finally:
            self._put_lock.release()

    def _keep(self, add: Callable[..., None], *entry: Any) -> None:
        """Add an entry to the roll-ups; whatever goes wrong only costs listing speed."""
        try:
            add(*entry)
        except Exception as exc:
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"[:500]
            logger.warning("spool: roll-up entry not kept: %s", self.last_error)
            return
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            due = self.builder.next_due(self.interval)
            wait = self.interval if due is None else due - time.monotonic()
            if wait > 0:
                self._wake.wait(min(wait, self.interval))
            self._wake.clear()
            if self._stop.is_set():
                return
            self.put(force=False, timeout=None)
            self.builder.forget_idle()
