"""Segments: a run of records as JSON lines in exactly one zstd frame.

One frame with content size and content checksum means `zstd -t` and any zstd
library can check a segment on its own, and a torn or altered object fails
loudly instead of decoding to fewer records.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, Final

import orjson
import zstandard

COMPRESSION_LEVEL: Final = 3
SUFFIX: Final = ".jsonl.zst"
_GIL_SLICE_SECONDS: Final = 0.0005


class SegmentError(ValueError):
    """A segment that does not decode; the message says what is broken and where."""


class _Contexts(threading.local):
    """zstd contexts kept per thread: a context costs about a megabyte to set up, and one
    may not be used by two threads at once."""

    def __init__(self) -> None:
        self.compressors: dict[int, zstandard.ZstdCompressor] = {}
        self.decompressor = zstandard.ZstdDecompressor()

    def compressor(self, level: int) -> zstandard.ZstdCompressor:
        compressor = self.compressors.get(level)
        if compressor is None:
            compressor = zstandard.ZstdCompressor(
                level=level, write_checksum=True, write_content_size=True
            )
            self.compressors[level] = compressor
        return compressor


_contexts = _Contexts()


def compress_lines(data: bytes, level: int = COMPRESSION_LEVEL) -> bytes:
    """Wrap already-encoded JSON lines in one zstd frame with content size and checksum."""
    return _contexts.compressor(level).compress(data)


def encode_segment(records: Iterable[dict[str, Any]], level: int = COMPRESSION_LEVEL) -> bytes:
    """Records as orjson lines, compressed into one frame."""
    return compress_lines(b"".join(orjson.dumps(record) + b"\n" for record in records), level)


def decompress_segment(data: bytes) -> bytes:
    """The JSON lines of a segment, checking it is exactly one intact frame."""
    try:
        params = zstandard.get_frame_parameters(data)
    except zstandard.ZstdError:
        raise SegmentError("not a zstd frame (bad or missing frame header)") from None
    if not params.has_checksum:
        raise SegmentError("zstd frame has no content checksum")
    decompressor = _contexts.decompressor.decompressobj()
    try:
        lines = decompressor.decompress(data)
    except zstandard.ZstdError as exc:
        if "checksum" in str(exc).lower():
            raise SegmentError("zstd content checksum mismatch: the segment was altered") from None
        raise SegmentError(f"corrupt zstd frame: {exc}") from None
    if not decompressor.eof:
        raise SegmentError(f"truncated zstd frame ({len(data)} bytes, frame incomplete)")
    if decompressor.unused_data:
        raise SegmentError(f"{len(decompressor.unused_data)} bytes of trailing data after frame")
    if params.content_size not in (zstandard.CONTENTSIZE_UNKNOWN, len(lines)):
        raise SegmentError(
            f"decoded {len(lines)} bytes but the frame header says {params.content_size}"
        )
    return lines


def iter_lines(lines: bytes) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, line without newline) of a JSON lines blob; no empty tail."""
    for number, line in enumerate(lines.split(b"\n"), start=1):
        if line:
            yield number, line


def decode_segment(data: bytes) -> list[dict[str, Any]]:
    """All records of a segment; SegmentError on a bad frame or a line that is not an object."""
    records: list[dict[str, Any]] = []
    lines = decompress_segment(data)
    if lines and not lines.endswith(b"\n"):
        raise SegmentError("last line has no newline: the segment was cut")
    for number, line in iter_lines(lines):
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise SegmentError(f"bad JSON at line {number}: {exc.msg}") from None
        if not isinstance(record, dict):
            raise SegmentError(f"line {number} is not a JSON object")
        records.append(record)
    return records


def parse_lines(data: bytes) -> Iterator[dict[str, Any]]:
    """Records of a spool file, one at a time; unreadable lines are skipped, not fatal.

    A Python loop over a whole segment would hold the GIL for as long as the
    interpreter lets it (`sys.getswitchinterval()`) each time the event loop
    comes back from waiting on its sockets, and the loop would wait that long
    to resume a statement. This one lets go of the GIL every
    `_GIL_SLICE_SECONDS` of work, its own and its consumer's. Lines are parsed
    in place, each found as it is needed: splitting a 4 MiB segment into lines
    first was one C call that kept the GIL for 3 to 4 ms.
    """
    view = memoryview(data)
    size = len(data)
    start = 0
    deadline = time.perf_counter() + _GIL_SLICE_SECONDS
    while start < size:
        end = data.find(b"\n", start)
        if end < 0:
            end = size
        line = view[start:end]
        start = end + 1
        if not line:
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(record, dict):
            yield record
        if time.perf_counter() >= deadline:
            time.sleep(0)  # releases the GIL: a waiting event loop may take it now
            deadline = time.perf_counter() + _GIL_SLICE_SECONDS
