"""Fast listing and search over a large archive: one LIST, parallel GETs, a local cache.

`Archive.list_sessions` reads one summary object per session in turn, and a
search must read every session's segments: with a thousand sessions that is
thousands of GETs, seconds even against a local S3. Here the archive is listed
once per query (keys with their ETags, a thousand keys per request), what is
not in the local cache is fetched in parallel, and what was fetched is cached
under its key and version:

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
import heapq
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, TypeVar

import orjson

from recorder.catalog import (
    SESSIONS,
    SUMMARIES,
    Archive,
    SessionSummary,
    StreamSummary,
    parse_segment_key,
)
from recorder.ids import is_session_id, session_start
from recorder.segment import SegmentError, decode_segment
from recorder.store import KeyNotFound, Store, StoreError

CACHE_FORMAT: Final = 1
WORKERS: Final = 32
BATCH: Final = 256
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


class ArchiveIndex:
    """Listing and statement digests for `archive`, cached in `cache_dir` (None: no cache)."""

    def __init__(
        self,
        archive: Archive,
        *,
        store_url: str,
        cache_dir: Path | None = None,
        workers: int = WORKERS,
    ) -> None:
        self.archive = archive
        self.store = archive.store
        self.workers = max(1, workers)
        self.cache = _Cache.open(cache_dir, store_url) if cache_dir is not None else None

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
        since: datetime | None = None,
        until: datetime | None = None,
        user: str | None = None,
        group: str | None = None,
        limit: int | None = None,
    ) -> list[SessionSummary]:
        """As `Archive.list_sessions`: sessions started in [since, until), newest first."""
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
                    if summary is not None and _matches(summary, user, group):
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

        def fetch(index: int) -> SessionSummary | None:
            session_id, objects = sessions[index]
            parts = []
            for key, _ in objects:
                with contextlib.suppress(KeyNotFound, orjson.JSONDecodeError, TypeError):
                    parts.append(StreamSummary.from_json(self.store.get(key)))
            return SessionSummary.merge(session_id, parts) if parts else None

        for index, summary in zip(missing, pool.map(fetch, missing), strict=True):
            results[index] = summary
            if summary is not None and self.cache is not None:
                session_id, objects = sessions[index]
                self.cache.put_summary(session_id, _fingerprint(objects), summary)
        if self.cache is not None:
            self.cache.commit()
        return results

    # --- statements ------------------------------------------------------------------

    def digests(
        self,
        summaries: list[SessionSummary],
        digest: Callable[[str, list[dict[str, Any]]], list[dict[str, Any]]],
    ) -> Iterator[SessionDigest]:
        """Each session's statement digests, in the order given, reading only what changed.

        `digest(session_id, records)` turns a session's records into statement
        dicts; its results are what the cache keeps.
        """
        if not summaries:
            return
        since = min(summary.start for summary in summaries)
        segments: dict[str, list[tuple[str, str | None]]] = {}
        for key, version in self._list(SESSIONS, since, None):
            parts = key.split("/")
            if len(parts) == 4 and is_session_id(parts[2]):
                segments.setdefault(parts[2], []).append((key, version))

        def build(summary: SessionSummary) -> SessionDigest:
            keys = [key for key, _ in segments.get(summary.session_id, [])]
            try:
                records = self._read_segments(keys)
            except KeyNotFound:
                return SessionDigest(summary, None)
            except SegmentError as exc:
                return SessionDigest(summary, None, str(exc))
            if not records:
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

    def _read_segments(self, keys: list[str]) -> list[dict[str, Any]]:
        """Records of a session's segments merged as `Archive.read_session` merges them
        (each writer's stream in seq order, streams merged by time), without its LIST."""
        streams: dict[str, list[dict[str, Any]]] = {}
        for key in keys:
            parsed = parse_segment_key(key)
            if parsed is None:
                continue
            try:
                records = decode_segment(self.store.get(key))
            except SegmentError as exc:
                raise SegmentError(f"{key}: {exc}") from None
            streams.setdefault(parsed.writer, []).extend(records)
        ordered = [
            sorted(records, key=lambda record: _int(record.get("seq")))
            for _, records in sorted(streams.items())
        ]
        return list(heapq.merge(*ordered, key=lambda record: _number(record.get("ts"))))

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
        version = None
        if isinstance(root, Path):
            with contextlib.suppress(OSError):
                stat = root.joinpath(*key.split("/")).stat()
                version = f"{stat.st_mtime_ns}:{stat.st_size}"
        yield key, version


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


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else -1


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _matches(summary: SessionSummary, user: str | None, group: str | None) -> bool:
    if user is not None:
        wanted = user.casefold()
        if wanted not in {(summary.subject or "").casefold(), (summary.email or "").casefold()}:
            return False
    return group is None or group in summary.groups


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
