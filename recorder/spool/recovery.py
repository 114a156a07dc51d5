"""Start-up recovery: what a dead process left in the spool directory, made whole.

After a crash at any instant, SIGKILL included: cut the torn tail of the WAL,
delete `.open` files, rebuild from the WAL every record not in a sealed range as
`.jsonl` segments (named by their first seq, the same name the dead process would
have used), then queue all sealed segments for upload. Segment keys derive from
(session, writer, first seq), so an upload repeated after a crash overwrites the
same object and no record is stored twice.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import orjson

from hoopgw.recorder.ids import parse_session_id, parse_writer_id
from hoopgw.recorder.spool.errors import SpoolError
from hoopgw.recorder.spool.layout import (
    OPEN_SUFFIX,
    SEAL_MARK,
    SEALED_SUFFIX,
    SEGMENT_FILE,
    WAL_FILE,
    Sealed,
    Stream,
    segment_path,
)
from hoopgw.recorder.spool.stats import SpoolBytes
from hoopgw.recorder.store import fsync_dir

logger = logging.getLogger(__name__)


class Recovery:
    """Runs once, before the writer and the uploader start; keeps what it found for stats."""

    def __init__(self, directory: Path, writer_id: str, spool_bytes: SpoolBytes) -> None:
        self.directory = directory
        self.writer_id = writer_id
        self.spool_bytes = spool_bytes
        self.recovered_segments = 0
        self.recovered_records = 0
        self.dropped_tail_bytes = 0

    def run(self) -> tuple[list[Sealed], int | None]:
        """Rebuild segments of a dead process from its WAL; every sealed segment to upload,
        in stream and seq order, and the number of the last WAL file found (None: none)."""
        sealed_ranges: dict[Stream, list[tuple[int, int]]] = {}
        wal_records: dict[Stream, dict[int, bytes]] = {}
        wal_paths = sorted(
            path for path in self.directory.glob("wal-*.log") if WAL_FILE.fullmatch(path.name)
        )
        for path in wal_paths:
            self._read_wal(path, sealed_ranges, wal_records)
        for path in self.directory.glob(f"*{SEALED_SUFFIX}"):
            match = SEGMENT_FILE.fullmatch(path.name)
            if match is None:
                continue
            first = int(match[3])
            lines = path.read_bytes().count(b"\n")
            if lines:
                sealed_ranges.setdefault((match[1], match[2]), []).append(
                    (first, first + lines - 1)
                )
        for path in self.directory.glob(f"*{OPEN_SUFFIX}"):
            if SEGMENT_FILE.fullmatch(path.name):
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
        last_wal = None
        if wal_paths:
            fsync_dir(self.directory)
            last_wal = max(int(WAL_FILE.fullmatch(p.name)[1]) for p in wal_paths)  # type: ignore[index]
        self.recovered_records = rebuilt
        return self._sealed_leftovers(), last_wal

    def _read_wal(
        self,
        path: Path,
        sealed_ranges: dict[Stream, list[tuple[int, int]]],
        wal_records: dict[Stream, dict[int, bytes]],
    ) -> None:
        data = path.read_bytes().rstrip(b"\0")  # a prepared file's unused zeros
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
            self.dropped_tail_bytes += dropped
            logger.warning("spool: dropped %d torn bytes at the end of %s", dropped, path.name)

    def _write_recovered(self, stream: Stream, first_seq: int, data: bytes) -> None:
        session_id, writer = stream
        parse_session_id(session_id)
        parse_writer_id(writer)
        with open(segment_path(self.directory, stream, first_seq, SEALED_SUFFIX), "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())

    def _sealed_leftovers(self) -> list[Sealed]:
        sealed = []
        for path in self.directory.glob(f"*{SEALED_SUFFIX}"):
            match = SEGMENT_FILE.fullmatch(path.name)
            if match is None:
                logger.warning("spool: ignoring unexpected file %s", path.name)
                continue
            session_id, writer, first_seq = match[1], match[2], int(match[3])
            if writer == self.writer_id or writer.startswith(f"{self.writer_id}r"):
                raise SpoolError(
                    f"spool holds segments of writer {writer}, the id this spool was given; "
                    "give every process a fresh writer id (recorder.ids.new_writer_id())"
                )
            sealed.append(Sealed(path, session_id, writer, first_seq, path.stat().st_size, None))
        sealed.sort(key=lambda item: (item.session_id, item.writer, item.first_seq))
        for item in sealed:
            self.spool_bytes.add(item.size)
        self.recovered_segments = len(sealed)
        if sealed:
            logger.info("spool: %d leftover segments queued for upload", len(sealed))
        return sealed


def _contiguous_runs(seqs: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for seq in seqs:
        if runs and seq == runs[-1][-1] + 1:
            runs[-1].append(seq)
        else:
            runs.append([seq])
    return runs
