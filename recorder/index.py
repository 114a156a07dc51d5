"""Fast listing and search over a large archive: one LIST, roll-ups, parallel GETs, a cache.

Reading one summary object per session in turn, and every session's segments
for a search, costs thousands of GETs with a thousand sessions: seconds even
against a local S3. Here the archive is listed
once per query (keys with their ETags, a thousand keys per request). What is
not in the local cache comes from the writers' roll-ups (`recorder.rollup`:
a few objects per day that describe many summaries and segments, each entry
used only when its key and version are exactly what the LIST reports), and
whatever they do not describe is fetched in parallel, object by object. What
was read is cached under its key and version:

- merged session summaries, keyed by the set of summary objects (key, ETag)
  they were merged from;
- per-session statement digests (SQL, time, caller, outcome, objects: what a
  search filters on, never result rows), keyed by the session's segment set.

A changed or added object changes the version, so the cache is never stale;
a warm query costs the LIST requests only. The cache lives in
`$HOOPGW_CACHE_DIR` (default `$XDG_CACHE_HOME/hoopgw`, `~/.cache/hoopgw`), one
SQLite file per store, readable by its owner only, since it holds SQL text.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Final, TypeVar

import orjson

from hoopgw.recorder.catalog import (
    SESSIONS,
    SUMMARIES,
    Archive,
    SessionSummary,
    StreamSummary,
    parse_segment_key,
    parse_summary_key,
)
from hoopgw.recorder.flows import merge_streams
from hoopgw.recorder.ids import is_session_id, session_start
from hoopgw.recorder.rollup import (
    SEGMENTS_KIND,
    SUMMARIES_KIND,
    RollupEntry,
    RollupError,
    decode_rollup,
    parse_rollup_key,
    rollup_prefix,
)
from hoopgw.recorder.segment import SegmentError, decode_segment
from hoopgw.recorder.store import KeyNotFound, Store, StoreError, file_version

logger = logging.getLogger(__name__)

CACHE_FORMAT: Final = 5
"""Raised when what a digest holds changes (2: six-digit error codes; 3: `detections`;
4: refusal windows' samples and totals; 5: held statements' `approval`)."""
WORKERS: Final = 32
BATCH: Final = 256
ROLLUP_MIN_OBJECTS: Final = 16
"""Roll-ups of a day are read once at least this many of its objects are wanted;
fewer are cheaper to GET one by one than a day's roll-ups."""
_DAY_PARTITIONS_LIMIT: Final = 62

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class SessionDigest:
    """What a search needs of one session: its summary and its statements as plain dicts."""

    summary: SessionSummary
    statements: list[dict[str, Any]] | None
    problem: str | None = None


def default_cache_dir() -> Path:
    explicit = os.environ.get("HOOPGW_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hoopgw"


@dataclass(slots=True)
class IndexStats:
    """What a query read, for benchmarks and tests: objects one by one, and roll-ups."""

    object_reads: int = 0
    rollup_reads: int = 0
    rollup_hits: int = 0
    rollups_unreadable: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + amount)


class ArchiveIndex:
    """Listing and statement digests for `archive`, cached in `cache_dir` (None: no cache).

    `rollups=False` reads every summary and segment itself (the roll-ups are
    only a shortcut); `rollup_min_objects` is how many objects of a day must be
    wanted before that day's roll-ups are read.
    """

    def __init__(
        self,
        archive: Archive,
        *,
        store_url: str,
        cache_dir: Path | None = None,
        workers: int = WORKERS,
        rollups: bool = True,
        rollup_min_objects: int = ROLLUP_MIN_OBJECTS,
    ) -> None:
        self.archive = archive
        self.store = archive.store
        self.workers = max(1, workers)
        self.cache = _Cache.open(cache_dir, store_url) if cache_dir is not None else None
        self.stats = IndexStats()
        self.rollups = _Rollups(self.store, self.stats, rollup_min_objects) if rollups else None

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()

    def __enter__(self) -> ArchiveIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- listing ---------------------------------------------------------------------

    def list_sessions(
        self,
        since: datetime | date | None = None,
        until: datetime | date | None = None,
        user: str | None = None,
        group: str | None = None,
        limit: int | None = None,
    ) -> list[SessionSummary]:
        """Sessions started in [since, until), newest first, optionally by user or group.

        `user` matches the caller's subject or email (case-insensitive); `group`
        one of the caller's groups. Naive datetimes are taken as UTC.
        """
        since, until = _as_utc(since), _as_utc(until)
        by_session = self._summary_objects(since, until)
        ordered = sorted(by_session, reverse=True)
        found: list[SessionSummary] = []
        step = BATCH
        if limit is not None and user is None and group is None:
            step = max(1, min(BATCH, limit))  # every summary counts: fetch no more than needed
        with ThreadPoolExecutor(self.workers) as pool:
            for start in range(0, len(ordered), step):
                batch = ordered[start : start + step]
                summaries = self._summaries(pool, [(sid, by_session[sid]) for sid in batch])
                for summary in summaries:
                    if summary is not None and summary.matches(user, group):
                        found.append(summary)
                        if limit is not None and len(found) >= limit:
                            return found
        return found

    def _summary_objects(
        self, since: datetime | None, until: datetime | None
    ) -> dict[str, list[tuple[str, str | None]]]:
        by_session: dict[str, list[tuple[str, str | None]]] = {}
        for key, version in self._list(SUMMARIES, since, until):
            parts = key.split("/")
            if len(parts) != 4 or not parts[3].endswith(".json") or not is_session_id(parts[2]):
                continue
            started = session_start(parts[2])
            if (since and started < since) or (until and started >= until):
                continue
            by_session.setdefault(parts[2], []).append((key, version))
        return by_session

    def _summaries(
        self, pool: ThreadPoolExecutor, sessions: list[tuple[str, list[tuple[str, str | None]]]]
    ) -> list[SessionSummary | None]:
        results: list[SessionSummary | None] = [None] * len(sessions)
        missing: list[int] = []
        for index, (session_id, objects) in enumerate(sessions):
            cached = self.cache.summary(session_id, _fingerprint(objects)) if self.cache else None
            if cached is not None:
                results[index] = cached
            else:
                missing.append(index)

        if missing and self.rollups is not None:
            unread = [item for index in missing for item in sessions[index][1]]
            self.rollups.prepare(pool, SUMMARIES_KIND, unread)

        def fetch(index: int) -> SessionSummary | None:
            session_id, objects = sessions[index]
            parts = []
            for key, version in objects:
                with contextlib.suppress(KeyNotFound, orjson.JSONDecodeError, TypeError):
                    parts.append(self._stream_summary(key, version))
            return SessionSummary.merge(session_id, parts) if parts else None

        for index, summary in zip(missing, pool.map(fetch, missing), strict=True):
            results[index] = summary
            if summary is not None and self.cache is not None:
                session_id, objects = sessions[index]
                self.cache.put_summary(session_id, _fingerprint(objects), summary)
        if self.cache is not None:
            self.cache.commit()
        return results

    def _stream_summary(self, key: str, version: str | None) -> StreamSummary:
        if self.rollups is not None:
            described = self.rollups.summary(key, version)
            if described is not None:
                with contextlib.suppress(TypeError):
                    return StreamSummary.from_dict(described)
        self.stats.count("object_reads")
        return StreamSummary.from_json(self.store.get(key))

    # --- statements ------------------------------------------------------------------

    def segment_objects(
        self, since: datetime | None, *, read_ahead: bool = False
    ) -> dict[str, list[tuple[str, str | None]]]:
        """Segment keys with their versions, by session, for sessions started since
        `since` (from its day on; None: all).

        With `read_ahead` and no local cache (so every digest will be made), their
        roll-ups are read now too: a search calls this in another thread while
        it lists the summaries.
        """
        segments: dict[str, list[tuple[str, str | None]]] = {}
        for key, version in self._list(SESSIONS, since, None):
            parts = key.split("/")
            if len(parts) == 4 and is_session_id(parts[2]):
                segments.setdefault(parts[2], []).append((key, version))
        if read_ahead and self.cache is None and self.rollups is not None:
            objects = [item for items in segments.values() for item in items]
            with ThreadPoolExecutor(self.workers) as pool:
                self.rollups.prepare(pool, SEGMENTS_KIND, objects)
        return segments

    def digests(
        self,
        summaries: list[SessionSummary],
        digest: Callable[[str, list[dict[str, Any]]], list[dict[str, Any]]],
        *,
        segments: dict[str, list[tuple[str, str | None]]] | None = None,
        wanted: Callable[[list[dict[str, Any]]], bool] | None = None,
    ) -> Iterator[SessionDigest]:
        """Each session's statement digests, in the order given, reading only what changed.

        `digest(session_id, records)` turns a session's records into statement
        dicts; its results are what the cache keeps. `segments` is what
        `segment_objects` returned, when the caller listed them already (while it
        listed the summaries, say); it must cover every session given.
        `wanted(records)` may rule a session out before its digest is made: such a
        session comes with `statements` None, and nothing is cached for it.
        """
        if not summaries:
            return
        if segments is None:
            segments = self.segment_objects(min(summary.start for summary in summaries))

        def build(summary: SessionSummary) -> SessionDigest:
            try:
                records = self._read_segments(segments.get(summary.session_id, []))
            except KeyNotFound:
                return SessionDigest(summary, None)
            except SegmentError as exc:
                return SessionDigest(summary, None, str(exc))
            if not records or (wanted is not None and not wanted(records)):
                return SessionDigest(summary, None)
            return SessionDigest(summary, digest(summary.session_id, records))

        with ThreadPoolExecutor(self.workers) as pool:
            for start in range(0, len(summaries), BATCH):
                batch = summaries[start : start + BATCH]
                ready: dict[int, SessionDigest] = {}
                stale: list[int] = []
                for index, summary in enumerate(batch):
                    objects = segments.get(summary.session_id, [])
                    cached = (
                        self.cache.statements(summary.session_id, _fingerprint(objects))
                        if self.cache and objects
                        else None
                    )
                    if cached is not None:
                        ready[index] = SessionDigest(summary, cached)
                    else:
                        stale.append(index)
                if stale and self.rollups is not None:
                    unread = [item for i in stale for item in segments.get(batch[i].session_id, [])]
                    self.rollups.prepare(pool, SEGMENTS_KIND, unread)
                for index, built in zip(
                    stale, pool.map(build, [batch[i] for i in stale]), strict=True
                ):
                    ready[index] = built
                    objects = segments.get(built.summary.session_id, [])
                    if self.cache is not None and built.statements is not None and objects:
                        self.cache.put_statements(
                            built.summary.session_id, _fingerprint(objects), built.statements
                        )
                if self.cache is not None:
                    self.cache.commit()
                for index in range(len(batch)):
                    yield ready[index]

    def _read_segments(self, objects: list[tuple[str, str | None]]) -> list[dict[str, Any]]:
        """Records of a session's segments merged as `Archive.read_session` merges them
        (each writer's stream in seq order, streams merged by time), without its LIST.

        A segment a roll-up describes at its listed version comes as thin records
        (`recorder.rollup.thin_record`): all that a statement digest reads.
        """
        streams: dict[str, list[dict[str, Any]]] = {}
        for key, version in sorted(objects):
            parsed = parse_segment_key(key)
            if parsed is None:
                continue
            records = self.rollups.records(key, version) if self.rollups is not None else None
            if records is None:
                self.stats.count("object_reads")
                try:
                    records = decode_segment(self.store.get(key))
                except SegmentError as exc:
                    raise SegmentError(f"{key}: {exc}") from None
            streams.setdefault(parsed.writer, []).extend(records)
        return merge_streams(streams)

    # --- listing with versions -------------------------------------------------------

    def _list(
        self, top: str, since: datetime | None, until: datetime | None
    ) -> Iterator[tuple[str, str | None]]:
        for prefix in _partition_prefixes(top, since, until):
            yield from list_versions(self.store, prefix)


def list_versions(store: Store, prefix: str) -> Iterator[tuple[str, str | None]]:
    """Keys under `prefix` with a version that changes whenever the object does.

    S3 gives ETags in the same LIST response; a local directory gives mtime and
    size. Other stores give None, which the cache never trusts.
    """
    client = getattr(store, "client", None)
    bucket = getattr(store, "bucket", None)
    if client is not None and isinstance(bucket, str):
        base = f"{store.prefix}/" if getattr(store, "prefix", "") else ""  # type: ignore[attr-defined]
        paginator = client.get_paginator("list_objects_v2")
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            for page in paginator.paginate(Bucket=bucket, Prefix=base + prefix):
                for item in page.get("Contents", ()):
                    yield item["Key"][len(base) :], str(item.get("ETag", "")) or None
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "error")
            raise StoreError(f"S3 list of {prefix} in bucket {bucket} failed ({code})") from None
        except BotoCoreError as exc:
            raise StoreError(f"S3 list of {prefix} failed ({type(exc).__name__})") from None
        return
    root = getattr(store, "root", None)
    for key in store.list(prefix):
        version = file_version(root.joinpath(*key.split("/"))) if isinstance(root, Path) else None
        yield key, version


class _Rollups:
    """What the store's roll-ups say about summaries and segments, by (key, version).

    Read per day on demand, at most once per roll-up version; an entry is handed
    out only for exactly the version the caller's LIST reported, so a stale,
    damaged or forged roll-up can cost speed (the object is read instead) but
    never change what a listing or search finds compared with reading the objects.
    """

    def __init__(self, store: Store, stats: IndexStats, min_objects: int) -> None:
        self.store = store
        self.stats = stats
        self.min_objects = max(1, min_objects)
        self._lock = threading.Lock()
        self._read: dict[str, str | None] = {}
        self._summaries: dict[tuple[str, str], dict[str, Any]] = {}
        self._segments: dict[tuple[str, str], list[dict[str, Any]]] = {}

    def prepare(
        self, pool: ThreadPoolExecutor, kind: str, wanted: Iterable[tuple[str, str | None]]
    ) -> None:
        """Read the `kind` roll-ups of the days where enough `wanted` objects are not
        described yet (objects without a version can never be matched). Two threads
        may prepare at once (summaries in one, segments in the other)."""
        known = self._summaries if kind == SUMMARIES_KIND else self._segments
        days: Counter[str] = Counter()
        for key, version in wanted:
            if version is None or (key, version) in known:
                continue
            parsed = parse_summary_key(key) if kind == SUMMARIES_KIND else parse_segment_key(key)
            if parsed is not None:
                days[parsed.day] += 1
        todo: list[tuple[str, str | None]] = []
        for day, count in sorted(days.items()):
            if count < self.min_objects:
                continue
            for key, version in list_versions(self.store, rollup_prefix(day)):
                parsed = parse_rollup_key(key)
                if parsed is None or parsed.kind != kind:
                    continue
                if version is None or self._read.get(key) != version:
                    todo.append((key, version))
        for (key, version), entries in zip(todo, pool.map(self._get, todo), strict=True):
            if entries is None:
                continue  # not read: tried again next time
            with self._lock:
                self._read[key] = version
                for entry in entries:
                    if entry.summary is not None:
                        self._summaries[(entry.key, entry.version)] = entry.summary
                    elif entry.records is not None:
                        self._segments[(entry.key, entry.version)] = entry.records

    def _get(self, item: tuple[str, str | None]) -> list[RollupEntry] | None:
        """The roll-up's entries; none when it does not decode (it is not read again
        until it changes), None when it could not be read."""
        key, _ = item
        try:
            data = self.store.get(key)
        except (KeyNotFound, StoreError) as exc:
            logger.info("roll-up %s not read (%s); reading the objects instead", key, exc)
            return None
        self.stats.count("rollup_reads")
        try:
            return decode_rollup(data)
        except RollupError as exc:
            self.stats.count("rollups_unreadable")
            logger.info("roll-up %s does not decode (%s); reading the objects instead", key, exc)
            return []

    def summary(self, key: str, version: str | None) -> dict[str, Any] | None:
        found = self._summaries.get((key, version)) if version is not None else None
        if found is not None:
            self.stats.count("rollup_hits")
        return found

    def records(self, key: str, version: str | None) -> list[dict[str, Any]] | None:
        found = self._segments.get((key, version)) if version is not None else None
        if found is not None:
            self.stats.count("rollup_hits")
        return found


def _partition_prefixes(top: str, since: datetime | None, until: datetime | None) -> list[str]:
    if since is not None:
        last = (until or datetime.now(UTC)).astimezone(UTC).date()
        first = since.astimezone(UTC).date()
        days = (last - first).days + 1
        if 0 < days <= _DAY_PARTITIONS_LIMIT:
            return [f"{top}/dt={(first + timedelta(days=n)).isoformat()}/" for n in range(days)]
    return [f"{top}/"]


def _fingerprint(objects: Iterable[tuple[str, str | None]]) -> str | None:
    items = sorted(objects)
    if not items or any(version is None for _, version in items):
        return None
    digest = hashlib.sha256()
    for key, version in items:
        digest.update(f"{key}\0{version}\n".encode())
    return digest.hexdigest()


def _as_utc(value: datetime | date | None) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


class _Cache:
    """SQLite in the owner's cache directory; used from one thread."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.db = connection

    @classmethod
    def open(cls, directory: Path, store_url: str) -> _Cache | None:
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            name = hashlib.sha256(store_url.encode()).hexdigest()[:20]
            path = directory / f"catalog-{name}.sqlite3"
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
            connection = sqlite3.connect(path, timeout=5)
            connection.execute("pragma journal_mode=wal")
            connection.executescript(
                f"""
                create table if not exists summary_v{CACHE_FORMAT}
                    (session_id text primary key, fingerprint text, data blob);
                create table if not exists statements_v{CACHE_FORMAT}
                    (session_id text primary key, fingerprint text, data blob);
                """
            )
        except (OSError, sqlite3.Error):
            return None  # an unusable cache only costs speed
        return cls(connection)

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.db.commit()
            self.db.close()

    def commit(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.db.commit()

    def _get(self, table: str, session_id: str, fingerprint: str | None) -> bytes | None:
        if fingerprint is None:
            return None
        try:
            row = self.db.execute(
                f"select data from {table}_v{CACHE_FORMAT} "
                "where session_id = ? and fingerprint = ?",
                (session_id, fingerprint),
            ).fetchone()
        except sqlite3.Error:
            return None
        return row[0] if row else None

    def _put(self, table: str, session_id: str, fingerprint: str | None, data: bytes) -> None:
        if fingerprint is None:
            return
        with contextlib.suppress(sqlite3.Error):
            self.db.execute(
                f"insert or replace into {table}_v{CACHE_FORMAT} values (?, ?, ?)",
                (session_id, fingerprint, data),
            )

    def summary(self, session_id: str, fingerprint: str | None) -> SessionSummary | None:
        data = self._get("summary", session_id, fingerprint)
        if data is None:
            return None
        try:
            raw = orjson.loads(data)
            return SessionSummary(
                session_id=raw["session_id"],
                start=datetime.fromisoformat(raw["start"]),
                end=datetime.fromisoformat(raw["end"]) if raw["end"] else None,
                last_activity=(
                    datetime.fromisoformat(raw["last_activity"]) if raw["last_activity"] else None
                ),
                end_reason=raw["end_reason"],
                caller=raw["caller"],
                client=raw["client"],
                records=raw["records"],
                statements=raw["statements"],
                errors=raw["errors"],
                blocked=raw["blocked"],
                bytes=raw["bytes"],
                stored_bytes=raw["stored_bytes"],
                segments=raw["segments"],
                writers=tuple(raw["writers"]),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None

    def put_summary(
        self, session_id: str, fingerprint: str | None, summary: SessionSummary
    ) -> None:
        self._put("summary", session_id, fingerprint, orjson.dumps(summary.to_dict()))

    def statements(self, session_id: str, fingerprint: str | None) -> list[dict[str, Any]] | None:
        data = self._get("statements", session_id, fingerprint)
        if data is None:
            return None
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        return value if isinstance(value, list) else None

    def put_statements(
        self, session_id: str, fingerprint: str | None, statements: list[dict[str, Any]]
    ) -> None:
        self._put("statements", session_id, fingerprint, orjson.dumps(statements, default=str))
