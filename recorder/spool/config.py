"""What a spool is told at construction: where it lives and the limits of each stage."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hoopgw.recorder.ids import parse_writer_id
from hoopgw.recorder.spool.entries import HELPER_MIN_BYTES

MiB: Final = 1024 * 1024


@dataclass(frozen=True, slots=True)
class SpoolConfig:
    """A spool's directory, writer id and limits; validated when made.

    `writer_id` must be fresh for every process (`recorder.ids.new_writer_id()`):
    its streams' seqs start at 0 and object keys derive from them.

    `max_bytes` bounds the segments waiting on disk (`Spool.over_limit()`); segments
    seal at `segment_max_bytes` (uncompressed) or `segment_max_age` seconds
    after their first record; the WAL rotates at `wal_max_bytes`, into a file
    prepared ahead with `wal_prepare` (recorder/spool/wal.py). Failed
    uploads retry after `retry_initial` seconds, doubling up to `retry_max`.
    Chain state is kept for every open session. Once `max_finished_streams`
    sessions have ended, or the table holds `max_streams` sessions, the ended
    ones and those idle for `stream_idle_seconds` are forgotten and the writer
    id rotates (`<writer_id>r<n>`), so a late record of a forgotten session
    starts a new stream, never reusing seqs. Memory then follows the sessions
    open at once, not every session the process has seen.
    Records appended with `append_eventually` reach the WAL within
    `eventual_delay` seconds.

    When the disk fills, the writer refuses records and probes the disk
    `disk_probe_interval` seconds later, the wait doubling up to
    `disk_probe_max_interval`, until a probe write and its fsync succeed.

    The uploader also keeps roll-ups (`recorder.rollup`) of what it stored and
    PUTs each at most every `rollup_interval` seconds and at `close()` (None or
    0: no roll-ups, stored as None). They only speed up listing and search: a
    roll-up PUT is never on the path that makes records durable or stored, and a
    failed one is retried after another interval. A roll-up part holds up to
    `rollup_part_max_bytes` of entries or `rollup_part_max_entries` entries; a
    day's part is let go from memory `rollup_idle_seconds` after its last entry.
    A sealed segment of at least `rollup_helper_min_bytes` is described for the
    roll-ups in a helper process (`spool.entries`), off this process's GIL.
    `clock` stamps the stream summaries the uploader writes.

    With a `checkpoint_key` the uploader links every segment it stores to the one
    before (`recorder.checkpoints`) and writes a checkpoint signed with that key
    at start, every `checkpoint_interval` seconds while segments were stored,
    and at `close()`. None: segments are neither linked nor checkpointed.
    """

    directory: Path
    writer_id: str
    max_bytes: int
    segment_max_bytes: int = 4 * MiB
    segment_max_age: float = 30.0
    wal_max_bytes: int = 16 * MiB
    wal_prepare: bool = True
    retry_initial: float = 0.5
    retry_max: float = 30.0
    max_streams: int = 100_000
    max_finished_streams: int = 1024
    stream_idle_seconds: float = 3600.0
    eventual_delay: float = 0.05
    disk_probe_interval: float = 1.0
    disk_probe_max_interval: float = 5.0
    rollup_interval: float | None = 30.0
    rollup_part_max_bytes: int = 1 * MiB
    rollup_part_max_entries: int = 10_000
    rollup_idle_seconds: float = 600.0
    rollup_helper_min_bytes: int = HELPER_MIN_BYTES
    clock: Callable[[], float] = time.time
    checkpoint_key: Ed25519PrivateKey | None = None
    checkpoint_interval: float = 60.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "directory", Path(self.directory))
        object.__setattr__(self, "writer_id", parse_writer_id(self.writer_id))
        interval = self.rollup_interval
        object.__setattr__(self, "rollup_interval", interval if interval and interval > 0 else None)
        if not self.checkpoint_interval > 0:
            raise ValueError("checkpoint_interval must be a positive number of seconds")
