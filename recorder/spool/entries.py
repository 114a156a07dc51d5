"""Roll-up entries of sealed segments, large ones described in a helper process.

Describing a segment for the roll-ups parses each of its lines and encodes
the thinned records: C code (orjson) that keeps the GIL while it runs, three
quarters of the uploader thread's CPU. In the gateway's process every such
stretch can hold up the event loop: the uploader was the main other holder
of the GIL in the loop's late windows at one connection (docs/performance.md,
"Eighth round"). So a sealed segment of at least `min_bytes` is read and
described by a helper process (`recorder.entry_helper`), the uploader thread
waiting for the answer without the GIL. Smaller segments (what most sessions
seal by age), and every segment while the helper cannot run, are described
in this process, a slice at a time (`segment.parse_lines`). Either way the
entry is the same bytes: `segment_entry` of the segment's records.

The helper is a plain child process on a socket pair
(`recorder.helper_process`), about 30 MB.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Final

import orjson

from hoopgw.recorder.entry_helper import DESCRIBED
from hoopgw.recorder.helper_process import HelperProcess, helper_environment
from hoopgw.recorder.rollup import segment_entry
from hoopgw.recorder.segment import parse_lines

logger = logging.getLogger(__name__)

HELPER_MIN_BYTES: Final = 256 * 1024
"""Segments from this size on are described by the helper process."""
HELPER_TIMEOUT: Final = 60.0
"""Seconds to wait for the helper's entry before describing the segment here."""
HELPER_RETRY: Final = 60.0
"""Seconds the helper is left alone after it failed."""


class HelperFailed(Exception):
    """The helper could not describe a segment; the message says why, without secrets."""


class _Helper:
    """One running helper process."""

    def __init__(self) -> None:
        self.child = HelperProcess("hoopgw.recorder.entry_helper", helper_environment())

    def describe(self, key: str, version: str, path: Path, timeout: float) -> bytes:
        try:
            self.child.connection.send_bytes(orjson.dumps([key, version, str(path)]))
            if not self.child.connection.poll(timeout):
                raise HelperFailed(f"no answer in {timeout:.0f} s")
            answer = self.child.connection.recv_bytes()
        except (EOFError, OSError) as exc:
            raise HelperFailed(f"it exited ({type(exc).__name__})") from None
        if answer[:1] != DESCRIBED:
            raise HelperFailed(answer[1:80].decode("ascii", "replace"))
        return answer[1:]

    def stop(self) -> None:
        self.child.stop()


class SegmentEntries:
    """Describes sealed segments for the roll-ups; owns the helper process, started on need.

    Used from the uploader thread only. A helper that fails (cannot start,
    exits, no answer within `timeout`, an error) is stopped, the segment is
    described here, and a new helper is tried `retry` seconds later.
    """

    def __init__(
        self,
        min_bytes: int = HELPER_MIN_BYTES,
        *,
        timeout: float = HELPER_TIMEOUT,
        retry: float = HELPER_RETRY,
    ) -> None:
        self.min_bytes = min_bytes
        self.timeout = timeout
        self.retry = retry
        self._helper: _Helper | None = None
        self._retry_at = 0.0
        self._closed = False
        self.by_helper = 0
        self.here = 0
        self.helper_failures = 0

    def describe(self, key: str, version: str, path: Path, data: bytes) -> bytes:
        """The roll-up entry of the sealed segment at `path`, whose bytes are `data`."""
        if len(data) >= self.min_bytes:
            entry = self._by_helper(key, version, path)
            if entry is not None:
                self.by_helper += 1
                return entry
        self.here += 1
        return segment_entry(key, version, parse_lines(data))

    def helper_pid(self) -> int | None:
        """The helper's process id while it runs (for tests and diagnostics)."""
        return self._helper.child.pid if self._helper is not None else None

    def close(self) -> None:
        """Stop the helper; from now on every segment is described here."""
        self._closed = True
        helper, self._helper = self._helper, None
        if helper is not None:
            helper.stop()

    def _by_helper(self, key: str, version: str, path: Path) -> bytes | None:
        if self._closed or time.monotonic() < self._retry_at:
            return None
        try:
            if self._helper is None:
                self._helper = _Helper()
            return self._helper.describe(key, version, path, self.timeout)
        except (HelperFailed, OSError) as exc:
            reason = str(exc) if isinstance(exc, HelperFailed) else type(exc).__name__
        self.helper_failures += 1
        self._retry_at = time.monotonic() + self.retry
        logger.warning(
            "spool: roll-up entries are built in this process for %.0f s: the helper "
            "process failed (%s)",
            self.retry,
            reason,
        )
        helper, self._helper = self._helper, None
        if helper is not None:
            helper.child.kill()
            helper.stop()
        return None
