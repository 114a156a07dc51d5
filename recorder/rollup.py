"""Roll-ups: a few objects per writer and day that describe many uploaded objects at once.

Listing a thousand sessions costs a thousand summary GETs, and searching them
as many segment GETs again. The uploader therefore also keeps, per day
partition (the sessions' start day, as in their own keys), roll-up objects:

    rollups/dt=YYYY-MM-DD/<writer>-summaries-<part:06d>.rollup.zst
    rollups/dt=YYYY-MM-DD/<writer>-segments-<part:06d>.rollup.zst

(not `.jsonl.zst`: whatever globs the store for segments must not take a
roll-up for one). Each is JSON lines in one or more zstd frames, each with
content size and checksum (`zstd -dc` reads them as one stream), one entry per
line describing one stored object: its `key`, its
`version` as a LIST reports it (S3: the ETag, quotes included; a local
directory: `mtime_ns:size:inode`), and either the summary JSON (`summary`) or
the segment's records without what listing and search never read (`records`,
see `thin_record`). Summaries and segments are apart so that listing reads
only the small summary roll-ups. In memory, a part's segment entries are kept
as zstd frames of about 256 KiB of lines each, and a PUT sends those frames as
they are, followed by one frame of what has come since: nothing already
compressed is decompressed or compressed again, so a PUT's buffers stay small.

A reader uses an entry only when its key and version are exactly what its own
LIST of the object reports; anything else is read from the object itself. So
roll-ups only make reading faster: they are not evidence (outside the hash
chain), an old, missing, damaged or tampered roll-up can at worst mislead a
listing or a search, and `show`, `verify`, `replay` and `export` never read them.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
import zstandard

from hoopgw.recorder.catalog import parse_segment_key, parse_summary_key
from hoopgw.recorder.schema import STATEMENT_KINDS
from hoopgw.recorder.segment import compress_lines

ROLLUPS: Final = "rollups"
ROLLUP_SUFFIX: Final = ".rollup.zst"
ROLLUP_VERSION: Final = 1
SUMMARIES_KIND: Final = "summaries"
SEGMENTS_KIND: Final = "segments"
KINDS: Final = (SUMMARIES_KIND, SEGMENTS_KIND)
FRAME_BYTES: Final = 256 * 1024
"""Segment entries are compressed into a frame once this many bytes are waiting."""
MAX_DECODED_BYTES: Final = 512 * 1024 * 1024
"""A roll-up that would decompress to more than this is refused (a reader's memory)."""

_ROLLUP_KEY: Final = re.compile(
    r"rollups/dt=(\d{4}-\d{2}-\d{2})/([0-9a-z]{4,32})-(summaries|segments)-(\d{6,})\.rollup\.zst"
)
_DROPPED_FIELDS: Final = frozenset({"headers", "hash", "prev_hash", "statements"})
_DROPPED_BODY_FIELDS: Final = frozenset({"json", "text", "form", "sample"})
_DROPPED_DOCUMENT_FIELDS: Final = frozenset({"sqlText"})
_DROPPED_DATA_FIELDS: Final = frozenset(
    {"rowset", "rowsetBase64", "chunks", "chunkHeaders", "qrmk", "stageInfo", "parameters"}
)
_DML_STATEMENT_TYPES: Final = range(0x3000, 0x4000)
"""Snowflake's DML statement type ids; their one-row rowset is the count of rows changed."""


class RollupError(ValueError):
    """A roll-up that does not decode; readers then read the objects it describes."""


@dataclass(frozen=True, slots=True)
class RollupKey:
    key: str
    day: str
    writer: str
    kind: str
    part: int


def rollup_key(day: str, writer: str, kind: str, part: int) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown roll-up kind {kind!r}")
    return f"{ROLLUPS}/dt={day}/{writer}-{kind}-{part:06d}{ROLLUP_SUFFIX}"


def rollup_prefix(day: str) -> str:
    return f"{ROLLUPS}/dt={day}/"


def parse_rollup_key(key: str) -> RollupKey | None:
    match = _ROLLUP_KEY.fullmatch(key)
    if match is None:
        return None
    return RollupKey(key, match[1], match[2], match[3], int(match[4]))


# --- thin records --------------------------------------------------------------------


def thin_record(record: dict[str, Any]) -> dict[str, Any]:
    """The record without what listing and search never read.

    Dropped: headers, the hash chain fields, the gateway's statement
    classification (`statements`; readers classify again in context), result
    rows (`rowset` except the one-row count of a DML statement, `rowsetBase64`,
    `chunks`), column metadata but the names, the copy of the SQL in the
    request body (the record's `sql` holds it), text and form bodies, and the
    bodies of requests that carry no SQL. What is left is what
    `recorder.listing.digest_session` reads: SQL, bindings, time, caller,
    context, outcome, row counts, columns, query ids, guardrail and refusal.
    """
    thin = {name: value for name, value in record.items() if name not in _DROPPED_FIELDS}
    body = record.get("body")
    if isinstance(body, dict):
        if record.get("kind") in STATEMENT_KINDS and not isinstance(record.get("sql"), str):
            del thin["body"]
        else:
            thin["body"] = _thin_body(body)
    return thin


def _thin_body(body: dict[str, Any]) -> dict[str, Any]:
    thin = {name: value for name, value in body.items() if name not in _DROPPED_BODY_FIELDS}
    document = body.get("json")
    if isinstance(document, dict):
        thin["json"] = _thin_document(document)
    return thin


def _thin_document(document: dict[str, Any]) -> dict[str, Any]:
    thin = {name: value for name, value in document.items() if name not in _DROPPED_DOCUMENT_FIELDS}
    data = document.get("data")
    if isinstance(data, list):
        del thin["data"]  # SQL API v2 rows
    elif isinstance(data, dict):
        kept = {name: value for name, value in data.items() if name not in _DROPPED_DATA_FIELDS}
        rowtype = data.get("rowtype")
        if isinstance(rowtype, list):
            kept["rowtype"] = [_column_name(column) for column in rowtype]
        rowset = data.get("rowset")
        type_id = data.get("statementTypeId")
        if (
            isinstance(rowset, list)
            and isinstance(type_id, int)
            and type_id in _DML_STATEMENT_TYPES
        ):
            kept["rowset"] = rowset[:1]
        thin["data"] = kept
    return thin


def _column_name(column: Any) -> Any:
    """A `rowtype` entry as readers see it: its name, in its place."""
    if not isinstance(column, dict):
        return column
    return {"name": column["name"]} if "name" in column else {}


# --- entries -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RollupEntry:
    """One object a roll-up describes: a summary's JSON or a segment's thin records."""

    key: str
    version: str
    summary: dict[str, Any] | None = None
    records: list[dict[str, Any]] | None = None


def segment_entry(key: str, version: str, records: Iterable[dict[str, Any]]) -> bytes:
    """The roll-up line describing segment `key` at `version`, from its full records.

    Each thinned record is encoded as it comes, and the line is put together
    from those pieces (the same bytes as encoding the list at once): a
    segment's records, encoded in one call, kept the GIL about 2 ms, and
    `records` may be a generator that lets go of it between records
    (`spool.uploader`).
    """
    encoded = b",".join(orjson.dumps(thin_record(record)) for record in records)
    thin = orjson.Fragment(b"[" + encoded + b"]")
    entry = {"v": ROLLUP_VERSION, "key": key, "version": version, "records": thin}
    return orjson.dumps(entry) + b"\n"


def summary_entry(key: str, version: str, summary_json: bytes) -> bytes:
    """The roll-up line describing summary `key` at `version` (its JSON kept as is)."""
    entry = {"v": ROLLUP_VERSION, "key": key, "version": version}
    entry["summary"] = orjson.Fragment(summary_json)
    return orjson.dumps(entry) + b"\n"


def decode_rollup(data: bytes, max_bytes: int = MAX_DECODED_BYTES) -> list[RollupEntry]:
    """Every entry of a roll-up; RollupError when any frame or line is damaged.

    Each frame must carry its content size (so a reader's memory stays bounded
    by `max_bytes` before decompressing) and checksum; entries of a later roll-up
    version, or for keys that are neither summaries nor segments, are skipped.
    """
    entries: list[RollupEntry] = []
    for line in _decoded_lines(data, max_bytes):
        try:
            raw = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise RollupError("a line is not JSON") from None
        if not isinstance(raw, dict):
            raise RollupError("a line is not a JSON object")
        if raw.get("v") != ROLLUP_VERSION:
            continue
        key, version = raw.get("key"), raw.get("version")
        if not isinstance(key, str) or not isinstance(version, str) or not version:
            raise RollupError("an entry has no key or version")
        summary, records = raw.get("summary"), raw.get("records")
        if isinstance(summary, dict) and parse_summary_key(key) is not None:
            entries.append(RollupEntry(key, version, summary=summary))
        elif (
            isinstance(records, list)
            and all(isinstance(record, dict) for record in records)
            and parse_segment_key(key) is not None
        ):
            entries.append(RollupEntry(key, version, records=records))
    return entries


def _decoded_lines(data: bytes, max_bytes: int) -> Iterator[bytes]:
    decompressor = zstandard.ZstdDecompressor()
    budget = max_bytes
    rest = data
    carry = b""
    while rest:
        try:
            params = zstandard.get_frame_parameters(rest)
        except zstandard.ZstdError:
            raise RollupError("not a zstd frame") from None
        if not params.has_checksum or params.content_size == zstandard.CONTENTSIZE_UNKNOWN:
            raise RollupError("zstd frame without content size or checksum")
        if params.content_size > budget:
            raise RollupError(f"roll-up decodes to more than {max_bytes} bytes")
        frame = decompressor.decompressobj()
        try:
            lines = frame.decompress(rest)
        except zstandard.ZstdError as exc:
            raise RollupError(f"corrupt zstd frame: {exc}") from None
        if not frame.eof or len(lines) != params.content_size:
            raise RollupError("truncated zstd frame")
        budget -= len(lines)
        rest = frame.unused_data
        if carry:
            lines, carry = carry + lines, b""
        complete, _, tail = lines.rpartition(b"\n")
        carry = tail
        if complete:
            yield from complete.split(b"\n")
    if carry:
        raise RollupError("the last line has no newline")


# --- the writer's roll-ups -----------------------------------------------------------


@dataclass(slots=True)
class _Part:
    """One roll-up object in memory: segment entries as zstd frames, summaries by key."""

    key: str
    day: str
    kind: str
    frames: list[bytes] = field(default_factory=list)
    pending: list[bytes] = field(default_factory=list)
    pending_bytes: int = 0
    summaries: dict[str, bytes] = field(default_factory=dict)
    raw_bytes: int = 0
    entries: int = 0
    changes: int = 0
    stored_changes: int = 0
    last_put: float = 0.0
    last_change: float = 0.0
    full: bool = False

    @property
    def dirty(self) -> bool:
        return self.changes != self.stored_changes


@dataclass(frozen=True, slots=True)
class RollupPut:
    """A roll-up's bytes as of `changes`, to be stored under `key`."""

    key: str
    data: bytes
    changes: int


class RollupBuilder:
    """A writer's roll-ups in memory, per day: the part being filled, and full parts
    until their last PUT. Thread-safe: the uploader adds, another thread PUTs.

    A part is full at `part_max_bytes` (entry bytes before compression) or
    `part_max_entries`; the day's next entry starts a new part. A day's part that
    is stored and has had no entry for `idle_seconds` is let go: a late entry for
    that day starts a new part.
    """

    def __init__(
        self,
        writer: str,
        *,
        part_max_bytes: int = 1024 * 1024,
        part_max_entries: int = 10_000,
        idle_seconds: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.writer = writer
        self.part_max_bytes = part_max_bytes
        self.part_max_entries = part_max_entries
        self.idle_seconds = idle_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._parts: dict[str, _Part] = {}
        self._filling: dict[tuple[str, str], _Part] = {}
        self._next_part = 0

    def add_segment(self, key: str, version: str, records: Iterable[dict[str, Any]]) -> None:
        """Describe segment `key`, stored at `version`, by its records (thinned here)."""
        self.add_segment_entry(key, segment_entry(key, version, records))

    def add_segment_entry(self, key: str, entry: bytes) -> None:
        """Keep segment `key`'s entry, made by `segment_entry` (here or elsewhere)."""
        parsed = parse_segment_key(key)
        if parsed is None:
            raise ValueError(f"not a segment key: {key[:120]!r}")
        with self._lock:
            part = self._part(parsed.day, SEGMENTS_KIND)
            part.pending.append(entry)
            part.pending_bytes += len(entry)
            if part.pending_bytes >= FRAME_BYTES:
                self._compress_pending(part)
            part.entries += 1
            self._changed(part, len(entry))

    def add_summary(self, key: str, version: str, summary_json: bytes) -> None:
        """Describe summary `key`, stored at `version`; replaces the key's entry in the
        part being filled."""
        parsed = parse_summary_key(key)
        if parsed is None:
            raise ValueError(f"not a summary key: {key[:120]!r}")
        entry = summary_entry(key, version, summary_json)
        with self._lock:
            part = self._part(parsed.day, SUMMARIES_KIND)
            previous = part.summaries.get(key)
            part.summaries[key] = entry
            if previous is None:
                part.entries += 1
            self._changed(part, len(entry) - len(previous or b""))

    def due(self, interval: float, *, force: bool = False) -> list[RollupPut]:
        """Parts with entries not yet stored whose last PUT (or creation) is `interval`
        seconds old, or all of them with `force`; their bytes as of now: the part's
        frames and one frame of its newer lines (compressed outside the lock, so adding
        entries meanwhile never waits on it)."""
        now = self._clock()
        snapshots = []
        with self._lock:
            for part in self._parts.values():
                if part.dirty and (force or now >= part.last_put + interval):
                    lines = b"".join(part.pending) + b"".join(part.summaries.values())
                    snapshots.append((part.key, list(part.frames), lines, part.changes))
        return [
            RollupPut(key, b"".join([*frames, compress_lines(lines)] if lines else frames), n)
            for key, frames, lines, n in snapshots
        ]

    def stored(self, put: RollupPut) -> None:
        """`put` is in the store; a full part with nothing newer is let go."""
        with self._lock:
            part = self._parts.get(put.key)
            if part is None:
                return
            part.stored_changes = max(part.stored_changes, put.changes)
            part.last_put = self._clock()
            if part.full and not part.dirty:
                del self._parts[part.key]

    def failed(self, put: RollupPut) -> None:
        """The PUT failed: try again after another interval."""
        with self._lock:
            part = self._parts.get(put.key)
            if part is not None:
                part.last_put = self._clock()

    def next_due(self, interval: float) -> float | None:
        """Clock time at which the next part falls due, None when nothing waits."""
        with self._lock:
            times = [part.last_put + interval for part in self._parts.values() if part.dirty]
        return min(times, default=None)

    def forget_idle(self) -> int:
        """Let go of stored parts whose day has been idle; how many."""
        now = self._clock()
        with self._lock:
            idle = [
                part
                for part in self._parts.values()
                if not part.dirty and now - part.last_change >= self.idle_seconds
            ]
            for part in idle:
                del self._parts[part.key]
                if self._filling.get((part.day, part.kind)) is part:
                    del self._filling[(part.day, part.kind)]
        return len(idle)

    def pending(self) -> int:
        """Parts with entries not yet stored."""
        with self._lock:
            return sum(1 for part in self._parts.values() if part.dirty)

    def memory_bytes(self) -> int:
        """Bytes held for all parts (compressed frames, waiting entries, summaries)."""
        with self._lock:
            return sum(
                sum(map(len, part.frames))
                + part.pending_bytes
                + sum(map(len, part.summaries.values()))
                for part in self._parts.values()
            )

    def _part(self, day: str, kind: str) -> _Part:
        part = self._filling.get((day, kind))
        if part is None or part.full or part.key not in self._parts:
            now = self._clock()
            key = rollup_key(day, self.writer, kind, self._next_part)
            self._next_part += 1
            part = _Part(key, day, kind, last_put=now, last_change=now)
            self._parts[key] = part
            self._filling[(day, kind)] = part
        return part

    def _changed(self, part: _Part, grown: int) -> None:
        part.raw_bytes += grown
        part.changes += 1
        part.last_change = self._clock()
        if part.raw_bytes >= self.part_max_bytes or part.entries >= self.part_max_entries:
            part.full = True

    def _compress_pending(self, part: _Part) -> None:
        if part.pending:
            part.frames.append(compress_lines(b"".join(part.pending)))
            part.pending.clear()
            part.pending_bytes = 0
