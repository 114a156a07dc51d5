"""The spool directory's files: their names, and what a sealed segment is.

Files, all in one directory: `.lock` (flock: one process per spool),
`wal-<n:012d>.log`, `<session-id>_<writer>-<first-seq:06d>.open` and `.jsonl`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from hoopgw.recorder.catalog import StreamSummary

OPEN_SUFFIX: Final = ".open"
SEALED_SUFFIX: Final = ".jsonl"
SEAL_MARK: Final = "$sealed"
"""WAL line `{"$sealed": [session, writer, first seq, last seq]}`: these records are in a
sealed segment."""
SEGMENT_FILE: Final = re.compile(
    r"([0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12})_"
    r"([0-9a-z]{4,32})-(\d{6,})\.(open|jsonl)"
)
WAL_FILE: Final = re.compile(r"wal-(\d{12})\.log")

Stream = tuple[str, str]
"""(session id, writer id): one hash chain, one run of seqs."""


def wal_path(directory: Path, number: int) -> Path:
    return directory / f"wal-{number:012d}.log"


def segment_path(directory: Path, stream: Stream, first_seq: int, suffix: str) -> Path:
    session_id, writer = stream
    return directory / f"{session_id}_{writer}-{first_seq:06d}{suffix}"


@dataclass(slots=True, frozen=True)
class Sealed:
    """A `.jsonl` segment waiting for the uploader; `tally` is None for leftovers of an
    earlier process, whose summary the uploader counts from the file."""

    path: Path
    session_id: str
    writer: str
    first_seq: int
    size: int
    tally: StreamSummary | None


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
