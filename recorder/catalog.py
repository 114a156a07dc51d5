"""The archive: where sessions live in a store, their summaries, reading and verifying.

Key layout (relative to the store's root or S3 prefix):

    sessions/dt=YYYY-MM-DD/<session-id>/<writer>-<first-seq:06d>.jsonl.zst
    summaries/dt=YYYY-MM-DD/<session-id>/<writer>.json

`dt` is the session's start date, read from its UUIDv7 id, so every object of a
session sits in one partition however long it lasts. Segments hold only
records (Athena, Trino and DuckDB read `sessions/` as one table); summaries
live apart so listing sessions takes one LIST per day (or one for the whole
archive) plus one small GET per session, never a segment read. Every gateway
process (writer) keeps its own summary per session; readers merge them.
`recorder.rollup` adds `rollups/`, an index of both that makes a listing read a
few objects per day instead (never evidence: see there).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from hoopgw.recorder.checkpoints import (
    CHECKPOINTS,
    ChainState,
    Checkpoint,
    check_chain,
    check_predecessors,
    describe_ranges,
    link_hash,
    parse_checkpoint_key,
)
from hoopgw.recorder.flows import merge_streams
from hoopgw.recorder.ids import (
    is_session_id,
    parse_session_id,
    parse_writer_id,
    session_date,
    session_start,
)
from hoopgw.recorder.schema import (
    CHUNK,
    GENESIS_HASH,
    RESPONSE,
    SESSION_END,
    SESSION_START,
    is_blocked,
    is_error,
    is_statement,
    record_hash,
    validate_record,
)
from hoopgw.recorder.segment import (
    SUFFIX,
    SegmentError,
    decode_segment,
    decompress_segment,
    iter_lines,
)
from hoopgw.recorder.store import Store

SESSIONS: Final = "sessions"
SUMMARIES: Final = "summaries"
SUMMARY_VERSION: Final = 1

_SEGMENT_KEY: Final = re.compile(
    r"sessions/dt=(\d{4}-\d{2}-\d{2})/([0-9a-f-]{36})/([0-9a-z]{4,32})-(\d{6,})\.jsonl\.zst"
)
_SUMMARY_KEY: Final = re.compile(
    r"summaries/dt=(\d{4}-\d{2}-\d{2})/([0-9a-f-]{36})/([0-9a-z]{4,32})\.json"
)


class SessionNotFound(LookupError):
    """No recorded segment for that session id in the archive."""

    def __init__(self, session_id: str) -> None:
        super().__init__(f"session {session_id} is not in the archive")
        self.session_id = session_id


# --- key layout ----------------------------------------------------------------------


def session_prefix(session_id: str) -> str:
    return f"{SESSIONS}/dt={session_date(session_id)}/{parse_session_id(session_id)}/"


def segment_key(session_id: str, writer: str, first_seq: int) -> str:
    """Key of the segment whose first record is `first_seq` of the (session, writer) stream.

    Derived only from the segment's content, so uploading it again after a crash
    overwrites the same object instead of recording anything twice.
    """
    if first_seq < 0:
        raise ValueError("first_seq must be >= 0")
    return f"{session_prefix(session_id)}{parse_writer_id(writer)}-{first_seq:06d}{SUFFIX}"


@dataclass(frozen=True, slots=True)
class SegmentKey:
    key: str
    session_id: str
    writer: str
    first_seq: int

    @property
    def day(self) -> str:
        """The `dt` partition: the session's start date."""
        return session_date(self.session_id)


def parse_segment_key(key: str) -> SegmentKey | None:
    """The parts of a segment key, or None for keys that are not segments."""
    match = _SEGMENT_KEY.fullmatch(key)
    if not match or not is_session_id(match[2]) or session_date(match[2]) != match[1]:
        return None
    return SegmentKey(key, match[2], match[3], int(match[4]))


def summary_key(session_id: str, writer: str) -> str:
    sid = parse_session_id(session_id)
    return f"{SUMMARIES}/dt={session_date(sid)}/{sid}/{parse_writer_id(writer)}.json"


@dataclass(frozen=True, slots=True)
class SummaryKey:
    key: str
    day: str
    session_id: str
    writer: str


def parse_summary_key(key: str) -> SummaryKey | None:
    """The parts of a summary key, or None for keys that are not summaries."""
    match = _SUMMARY_KEY.fullmatch(key)
    if not match or not is_session_id(match[2]) or session_date(match[2]) != match[1]:
        return None
    return SummaryKey(key, match[1], match[2], match[3])


# --- summaries -----------------------------------------------------------------------


@dataclass(slots=True)
class StreamSummary:
    """What one writer recorded of one session, kept up to date segment by segment.

    `last_seq` makes merging a segment idempotent: the uploader sends a stream's
    segments in order, so a segment starting at or before `last_seq` has been
    counted already (an upload repeated after a crash). The same class tallies
    one segment before it is merged.
    """

    session_id: str
    writer: str
    start_ts: float | None = None
    end_ts: float | None = None
    end_reason: str | None = None
    first_ts: float | None = None
    last_ts: float | None = None
    caller: dict[str, Any] | None = None
    client: dict[str, Any] | None = None
    records: int = 0
    statements: int = 0
    errors: int = 0
    blocked_flows: list[str] = field(default_factory=list)
    bytes: int = 0
    stored_bytes: int = 0
    segments: int = 0
    last_seq: int = -1
    last_hash: str = GENESIS_HASH
    updated_at: float | None = None
    links: list[dict[str, Any]] = field(default_factory=list)
    """The writer-chain link of each stored segment (`recorder.checkpoints`), in order."""

    def add(self, record: dict[str, Any]) -> None:
        """Count one record (the writer tallies each open segment this way)."""
        self.records += 1
        seq = record.get("seq")
        if isinstance(seq, int) and seq > self.last_seq:
            self.last_seq = seq
            self.last_hash = str(record.get("hash", ""))
        ts = record.get("ts")
        if isinstance(ts, int | float):
            self.first_ts = ts if self.first_ts is None else min(self.first_ts, ts)
            self.last_ts = ts if self.last_ts is None else max(self.last_ts, ts)
        kind = record.get("kind")
        caller = record.get("caller")
        client = record.get("client")
        if kind == SESSION_START:
            self.start_ts = ts if isinstance(ts, int | float) else self.start_ts
            self.caller = caller if isinstance(caller, dict) else self.caller
            self.client = client if isinstance(client, dict) else self.client
        else:
            if self.caller is None and isinstance(caller, dict):
                self.caller = caller
            if self.client is None and isinstance(client, dict):
                self.client = client
        if kind == SESSION_END:
            self.end_ts = ts if isinstance(ts, int | float) else self.end_ts
            reason = record.get("reason")
            self.end_reason = reason if isinstance(reason, str) else None
        if is_statement(record):
            self.statements += 1
        if is_error(record):
            self.errors += 1
        if is_blocked(record):
            flow = str(record.get("flow_id") or f"{record.get('writer')}:{seq}")
            if flow not in self.blocked_flows:
                self.blocked_flows.append(flow)

    def merge_segment(
        self, first_seq: int, segment: StreamSummary, stored_bytes: int, now: float
    ) -> bool:
        """Add a segment's tally (`segment`, built with `add`); False when already counted."""
        if first_seq <= self.last_seq:
            return False
        self.records += segment.records
        self.statements += segment.statements
        self.errors += segment.errors
        for flow in segment.blocked_flows:
            if flow not in self.blocked_flows:
                self.blocked_flows.append(flow)
        if segment.last_seq > self.last_seq:
            self.last_seq = segment.last_seq
            self.last_hash = segment.last_hash
        if segment.first_ts is not None:
            self.first_ts = _min(self.first_ts, segment.first_ts)
            self.last_ts = _max(self.last_ts, segment.last_ts)
        if segment.start_ts is not None:
            self.start_ts = segment.start_ts
            self.caller = segment.caller or self.caller
            self.client = segment.client or self.client
        else:
            self.caller = self.caller or segment.caller
            self.client = self.client or segment.client
        if segment.end_ts is not None:
            self.end_ts = segment.end_ts
            self.end_reason = segment.end_reason
        self.bytes += segment.bytes
        self.stored_bytes += stored_bytes
        self.segments += 1
        self.updated_at = now
        return True

    @classmethod
    def tally(
        cls, session_id: str, writer: str, records: Iterable[dict[str, Any]], raw_bytes: int
    ) -> StreamSummary:
        """A segment's tally from its records (recovered segments, tests)."""
        segment = cls(session_id, writer)
        for record in records:
            segment.add(record)
        segment.bytes = raw_bytes
        return segment

    def to_json(self) -> bytes:
        data = {name: getattr(self, name) for name in self.__slots__}
        data["v"] = SUMMARY_VERSION
        data["blocked"] = len(self.blocked_flows)
        return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)

    @classmethod
    def from_json(cls, data: bytes) -> StreamSummary:
        return cls.from_dict(orjson.loads(data))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> StreamSummary:
        """From decoded summary JSON; TypeError when it is not a summary object."""
        if not isinstance(raw, dict):
            raise TypeError("a summary is a JSON object")
        known = {name: raw[name] for name in cls.__slots__ if name in raw}
        return cls(**known)


@dataclass(frozen=True, slots=True)
class SessionSummary:
    """A session as listed: its writers' summaries merged."""

    session_id: str
    start: datetime
    end: datetime | None
    last_activity: datetime | None
    end_reason: str | None
    caller: dict[str, Any] | None
    client: dict[str, Any] | None
    records: int
    statements: int
    errors: int
    blocked: int
    bytes: int
    stored_bytes: int
    segments: int
    writers: tuple[str, ...]

    @property
    def ended(self) -> bool:
        return self.end is not None

    @property
    def subject(self) -> str | None:
        return (self.caller or {}).get("subject")

    @property
    def email(self) -> str | None:
        return (self.caller or {}).get("email")

    @property
    def groups(self) -> tuple[str, ...]:
        groups = (self.caller or {}).get("groups") or ()
        return tuple(str(group) for group in groups)

    def matches(self, user: str | None, group: str | None) -> bool:
        """`user` is the caller's subject or email (any case); `group` one of its groups."""
        if user is not None:
            wanted = user.casefold()
            names = {(self.subject or "").casefold(), (self.email or "").casefold()}
            if wanted not in names:
                return False
        return group is None or group in self.groups

    @property
    def role(self) -> str | None:
        return (self.caller or {}).get("role")

    @property
    def client_application(self) -> str | None:
        return (self.client or {}).get("application")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, for `hoopgw sessions --json` and the like."""
        return {
            "session_id": self.session_id,
            "start": self.start.isoformat(),
            "end": self.end.isoformat() if self.end else None,
            "last_activity": self.last_activity.isoformat() if self.last_activity else None,
            "end_reason": self.end_reason,
            "ended": self.ended,
            "caller": self.caller,
            "client": self.client,
            "records": self.records,
            "statements": self.statements,
            "errors": self.errors,
            "blocked": self.blocked,
            "bytes": self.bytes,
            "stored_bytes": self.stored_bytes,
            "segments": self.segments,
            "writers": list(self.writers),
        }

    @classmethod
    def merge(cls, session_id: str, parts: list[StreamSummary]) -> SessionSummary:
        with_start = [part for part in parts if part.start_ts is not None]
        primary = with_start[0] if with_start else (parts[0] if parts else None)
        caller = primary.caller if primary else None
        client = primary.client if primary else None
        for part in parts:
            caller = caller or part.caller
            client = client or part.client
        start_ts = min((part.start_ts for part in with_start), default=None)
        ends = [part for part in parts if part.end_ts is not None]
        last = max((part.last_ts for part in parts if part.last_ts is not None), default=None)
        blocked = {flow for part in parts for flow in part.blocked_flows}
        return cls(
            session_id=session_id,
            start=_utc(start_ts) if start_ts is not None else session_start(session_id),
            end=_utc(max(part.end_ts for part in ends)) if ends else None,  # type: ignore[type-var]
            last_activity=_utc(last) if last is not None else None,
            end_reason=max(ends, key=lambda part: part.end_ts or 0).end_reason if ends else None,
            caller=caller,
            client=client,
            records=sum(part.records for part in parts),
            statements=sum(part.statements for part in parts),
            errors=sum(part.errors for part in parts),
            blocked=len(blocked),
            bytes=sum(part.bytes for part in parts),
            stored_bytes=sum(part.stored_bytes for part in parts),
            segments=sum(part.segments for part in parts),
            writers=tuple(sorted(part.writer for part in parts)),
        )


def _min(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _max(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


# --- verification --------------------------------------------------------------------

PROBLEM_KINDS: Final = (
    "record",
    "missing",
    "cut_tail",
    "rewritten",
    "signature",
    "checkpoint",
)
"""What a problem is: a record or segment that is broken in itself; a segment a signed
checkpoint names that is gone (in the middle, or at the end of its stream); records that
differ from what a checkpoint signed; a checkpoint whose signature fails; a checkpoint
missing or out of its chain."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a stored session, and where."""

    segment: str | None
    line: int | None
    seq: int | None
    message: str
    kind: str = "record"

    def __str__(self) -> str:
        where = [self.segment or "session"]
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.seq is not None:
            where.append(f"seq {self.seq}")
        return f"{', '.join(where)}: {self.message}"


@dataclass(slots=True)
class VerifyReport:
    """A session's verification. `chains` says how each writer that stored the session
    stopped; `unchecked` what could not be checked (no public key, no checkpoint)."""

    session_id: str
    segments: int = 0
    records: int = 0
    writers: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    chains: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def verdict(self) -> str:
        """`intact`, or the gravest kind of problem: rewritten, signature, cut tail, ..."""
        kinds = {problem.kind for problem in self.problems}
        for kind in ("signature", "rewritten", "cut_tail", "missing", "checkpoint", "record"):
            if kind in kinds:
                return kind
        return "intact"

    def add(
        self,
        segment: str | None,
        line: int | None,
        seq: int | None,
        message: str,
        kind: str = "record",
    ) -> None:
        self.problems.append(Problem(segment, line, seq, message, kind))

    def to_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "ok": self.ok,
            "verdict": self.verdict,
            "segments": self.segments,
            "records": self.records,
            "writers": self.writers,
            "problems": [
                {
                    "segment": p.segment,
                    "line": p.line,
                    "seq": p.seq,
                    "kind": p.kind,
                    "message": p.message,
                }
                for p in self.problems
            ],
            "notes": self.notes,
            "chains": self.chains,
            "unchecked": self.unchecked,
        }


@dataclass(slots=True)
class ArchiveReport:
    """`verify --all`: every session, and each writer chain's own state."""

    sessions: list[VerifyReport] = field(default_factory=list)
    chains: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and all(report.ok for report in self.sessions)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "sessions": [report.to_dict() for report in self.sessions],
            "chains": self.chains,
            "problems": [
                {"kind": p.kind, "message": p.message, "seq": p.seq} for p in self.problems
            ],
            "notes": self.notes,
            "unchecked": self.unchecked,
        }


@dataclass(frozen=True, slots=True)
class SegmentFacts:
    """What a stored segment's records say: their seq range and the last one's hash."""

    first_seq: int
    last_seq: int
    last_hash: str


NO_KEY: Final = (
    "checkpoint signatures (no --public-key given): deletions and rewrites were checked "
    "against the checkpoints as stored, which someone able to rewrite the store could "
    "rewrite too"
)
NO_CHECKPOINT: Final = (
    "no checkpoint covers this session's segments (recorded before checkpoints, by a "
    "spool without a checkpoint key, or after its writer's last checkpoint): a deleted last "
    "segment or a consistent rewrite would not show"
)


# --- the archive ---------------------------------------------------------------------


class Archive:
    """Read access to recorded sessions in a store: read and verify (`recorder.index` lists)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def summary(self, session_id: str) -> SessionSummary:
        """One session's merged summary; SessionNotFound when it has none."""
        sid = parse_session_id(session_id)
        prefix = f"{SUMMARIES}/dt={session_date(sid)}/{sid}/"
        parts = [StreamSummary.from_json(self.store.get(key)) for key in self.store.list(prefix)]
        if not parts:
            raise SessionNotFound(sid)
        return SessionSummary.merge(sid, parts)

    def stream_summaries(self, session_id: str) -> dict[str, StreamSummary]:
        sid = parse_session_id(session_id)
        prefix = f"{SUMMARIES}/dt={session_date(sid)}/{sid}/"
        out = {}
        for key in self.store.list(prefix):
            match = _SUMMARY_KEY.fullmatch(key)
            if match:
                out[match[3]] = StreamSummary.from_json(self.store.get(key))
        return out

    def segments(self, session_id: str) -> list[str]:
        """The session's segment keys, by writer, then in stream order."""
        prefix = session_prefix(session_id)
        parsed = [p for p in map(parse_segment_key, self.store.list(prefix)) if p is not None]
        parsed.sort(key=lambda p: (p.writer, p.first_seq))
        return [p.key for p in parsed]

    def read_session(self, session_id: str) -> list[dict[str, Any]]:
        """Every record of the session: each writer's stream in seq order, merged by `ts`.

        Raises SegmentError when a segment does not decode (run verify_session for
        the full picture) and SessionNotFound when nothing is recorded.
        """
        keys = self._segment_keys(session_id)
        streams: dict[str, list[dict[str, Any]]] = {}
        for parsed in keys:
            records = _decode(self.store.get(parsed.key), parsed.key)
            streams.setdefault(parsed.writer, []).extend(records)
        return merge_streams(streams)

    def _segment_keys(self, session_id: str) -> list[SegmentKey]:
        parsed = [p for p in map(parse_segment_key, self.segments(session_id)) if p is not None]
        if not parsed:
            raise SessionNotFound(parse_session_id(session_id))
        return parsed

    def checkpoint_chains(
        self, public_keys: Mapping[str, Ed25519PublicKey] | None
    ) -> dict[str, ChainState]:
        """Every writer chain's checkpoints, read and checked (signatures when keys are given)."""
        by_chain: dict[str, list[str]] = {}
        for key in self.store.list(f"{CHECKPOINTS}/"):
            parsed = parse_checkpoint_key(key)
            if parsed is not None:
                by_chain.setdefault(parsed[0], []).append(key)
        states = {
            chain: check_chain(chain, ((key, self.store.get(key)) for key in keys), public_keys)
            for chain, keys in sorted(by_chain.items())
        }
        check_predecessors(states)
        return states

    def verify_session(
        self,
        session_id: str,
        public_keys: Mapping[str, Ed25519PublicKey] | None = None,
        chains: Mapping[str, ChainState] | None = None,
    ) -> VerifyReport:
        """Check a session's segments, records, hash chains, and what the checkpoints signed.

        A problem means the stored session is not what the gateway wrote (or a
        writer died before it could upload, which `notes` and the summaries tell
        apart): a deleted record shows as a seq gap and a prev_hash mismatch, an
        altered record as a hash mismatch, reordering as both. With checkpoints
        (`recorder.checkpoints`), a segment a checkpoint names that is gone is
        `missing` or `cut_tail`, and records that differ from what it signed are
        `rewritten`; `public_keys` (by key id) makes those checkpoints evidence
        rather than hints. A session every segment of which is gone is still
        reported when a checkpoint names it; SessionNotFound otherwise.
        """
        sid = parse_session_id(session_id)
        if chains is None:
            chains = self.checkpoint_chains(public_keys)
        signed = [
            (link, checkpoint, state)
            for state in chains.values()
            for link, checkpoint in state.links.values()
            if link.get("session_id") == sid
        ]
        keys = [p for p in map(parse_segment_key, self.segments(sid)) if p is not None]
        if not keys and not signed:
            raise SessionNotFound(sid)
        report = VerifyReport(sid)
        by_writer: dict[str, list[SegmentKey]] = {}
        for parsed in keys:
            by_writer.setdefault(parsed.writer, []).append(parsed)
        summaries = self.stream_summaries(sid)
        facts: dict[str, SegmentFacts] = {}
        for writer, segments in sorted(by_writer.items()):
            report.writers.append(writer)
            last_seq, last_hash = self._verify_stream(report, sid, writer, segments, facts)
            summary = summaries.get(writer)
            if summary is None:
                report.notes.append(f"writer {writer}: no summary object")
            elif summary.last_seq > last_seq:
                report.add(
                    None,
                    None,
                    summary.last_seq,
                    f"writer {writer}: summary counts records up to seq {summary.last_seq} "
                    f"but the segments end at seq {last_seq} (records missing at the end)",
                    "cut_tail",
                )
            elif summary.last_seq == last_seq and summary.last_hash != last_hash:
                report.add(
                    None,
                    None,
                    last_seq,
                    f"writer {writer}: last record's hash differs from the summary's",
                )
            elif summary.last_seq < last_seq:
                report.notes.append(
                    f"writer {writer}: summary is behind (seq {summary.last_seq} of {last_seq}); "
                    "the writer stopped before updating it"
                )
        self._check_links(report, sid, keys, facts, summaries, chains, signed)
        if public_keys is None:
            report.unchecked.append(NO_KEY)
        return report

    def _check_links(
        self,
        report: VerifyReport,
        sid: str,
        keys: list[SegmentKey],
        facts: dict[str, SegmentFacts],
        summaries: dict[str, StreamSummary],
        chains: Mapping[str, ChainState],
        signed: list[tuple[dict[str, Any], Checkpoint, ChainState]],
    ) -> None:
        """Hold the session's segments to the links its writers' checkpoints signed."""
        present = {parsed.key for parsed in keys}
        stream_end: dict[str, int] = {}
        for parsed in keys:
            known = facts.get(parsed.key)
            if known is not None:
                stream_end[parsed.writer] = max(stream_end.get(parsed.writer, -1), known.last_seq)
        involved: set[str] = set()
        covered: set[str] = set()
        for link, checkpoint, state in sorted(signed, key=lambda item: _link_order(item[0])):
            involved.add(state.chain)
            try:
                key = segment_key(sid, str(link.get("writer")), int(link.get("first_seq", -1)))
            except ValueError:
                report.add(None, None, None, f"checkpoint {checkpoint.key}: malformed link")
                continue
            covered.add(key)
            first, last = link.get("first_seq"), link.get("last_seq")
            signed_by = (
                f"writer {state.chain} stored it as link {link.get('n')}, signed in checkpoint "
                f"{checkpoint.n} at {checkpoint.when}"
                if state.signed
                else f"writer {state.chain} stored it as link {link.get('n')}, named in "
                f"checkpoint {checkpoint.n} at {checkpoint.when} (signature not checked)"
            )
            if key not in present:
                cut = isinstance(first, int) and first > stream_end.get(str(link["writer"]), -1)
                where = "the end of the stream was cut" if cut else "deleted from the middle"
                report.add(
                    key,
                    None,
                    first if isinstance(first, int) else None,
                    f"segment missing: records seq {first}..{last} of writer "
                    f"{link.get('writer')} are gone ({where}); "
                    f"{signed_by}",
                    "cut_tail" if cut else "missing",
                )
                continue
            stored = facts.get(key)
            if stored is None:
                continue  # undecodable: reported by the stream check
            if (stored.first_seq, stored.last_seq, stored.last_hash) != (
                first,
                last,
                link.get("last_hash"),
            ):
                report.add(
                    key,
                    None,
                    first if isinstance(first, int) else None,
                    f"segment rewritten: its records (seq {stored.first_seq}..{stored.last_seq}) "
                    f"are not those of seq {first}..{last} that {signed_by}",
                    "rewritten",
                )
        unsigned: dict[str, int] = {}
        for writer, summary in summaries.items():
            for link in _links_of(summary):
                chain = str(link.get("chain"))
                involved.add(chain)
                state = chains.get(chain)
                number = link.get("n")
                signed_link = state.links.get(number) if state and isinstance(number, int) else None
                if signed_link is not None:
                    if link_hash(signed_link[0]) != link_hash(link):
                        report.add(
                            None,
                            None,
                            None,
                            f"writer {writer}: summary's link {number} of writer {chain} differs "
                            f"from the one checkpoint {signed_link[1].n} holds (rewritten)",
                            "rewritten",
                        )
                elif state is None or not isinstance(number, int) or number > state.head:
                    unsigned[chain] = unsigned.get(chain, 0) + 1
                else:
                    report.add(
                        None,
                        None,
                        None,
                        f"writer {writer}: summary names link {number} of writer {chain}, "
                        "which no stored checkpoint holds (a checkpoint is missing)",
                        "checkpoint",
                    )
        for chain, count in sorted(unsigned.items()):
            report.notes.append(
                f"{count} segment(s) of this session stored by writer {chain} after its last "
                "checkpoint: chained to the others, not yet signed"
            )
        for chain in sorted(involved):
            state = chains.get(chain)
            if state is None:
                report.chains.append(f"writer {chain}: no checkpoint")
                continue
            report.chains.append(state.status())
            for kind, problem in state.problems:
                report.add(None, None, None, problem, kind)
        if not covered:
            report.unchecked.append(NO_CHECKPOINT)

    def verify_archive(
        self, public_keys: Mapping[str, Ed25519PublicKey] | None = None
    ) -> ArchiveReport:
        """Every session, and every writer chain: each segment a checkpoint names must be there.

        Besides each session's own report, says of each writer whether it stopped
        cleanly, which of its links are gone at the end (a cut tail) or in the
        middle, and how many segments it stored after its last checkpoint.
        """
        chains = self.checkpoint_chains(public_keys)
        report = ArchiveReport()
        sessions: set[str] = set()
        for key in self.store.list(f"{SESSIONS}/"):
            parsed = parse_segment_key(key)
            if parsed is not None:
                sessions.add(parsed.session_id)
        summary_links: dict[str, dict[int, dict[str, Any]]] = {}
        for key in self.store.list(f"{SUMMARIES}/"):
            parsed_summary = parse_summary_key(key)
            if parsed_summary is None:
                continue
            sessions.add(parsed_summary.session_id)
            try:
                summary = StreamSummary.from_json(self.store.get(key))
            except (orjson.JSONDecodeError, TypeError):
                report.problems.append(Problem(key, None, None, "summary does not decode"))
                continue
            for link in _links_of(summary):
                if isinstance(link.get("n"), int):
                    summary_links.setdefault(str(link.get("chain")), {})[link["n"]] = link
        for state in chains.values():
            sessions.update(str(link.get("session_id")) for link, _ in state.links.values())
        present: set[str] = set()
        for sid in sorted(s for s in sessions if is_session_id(s)):
            session_report = self.verify_session(sid, public_keys, chains)
            report.sessions.append(session_report)
            present.update(self.segments(sid))
        for chain in sorted(set(chains) | set(summary_links)):
            state = chains.get(chain)
            links = summary_links.get(chain, {})
            if state is None:
                report.chains.append(f"writer {chain}: no checkpoint ({len(links)} segment(s))")
                continue
            for kind, problem in state.problems:
                report.problems.append(Problem(None, None, None, problem, kind))
            gone = sorted(
                number
                for number, (link, _) in state.links.items()
                if _link_key(link) not in present
            )
            kept = [number for number in state.links if number not in gone]
            last_kept = max(kept, default=-1)
            tail = [number for number in gone if number > last_kept]
            middle = [number for number in gone if number <= last_kept]
            status = state.status()
            if tail:
                report.problems.append(
                    Problem(
                        None,
                        None,
                        None,
                        f"writer {chain}: tail cut: links {describe_ranges(tail)} are gone "
                        f"({_segments_of(state, tail)}); its last checkpoint "
                        f"{state.last.n if state.last else '-'} signed up to link {state.head}",
                        "cut_tail",
                    )
                )
            if middle:
                report.problems.append(
                    Problem(
                        None,
                        None,
                        None,
                        f"writer {chain}: links {describe_ranges(middle)} are gone "
                        f"({_segments_of(state, middle)})",
                        "missing",
                    )
                )
            if not gone and not state.problems:
                status += "; nothing missing up to it"
            after = sorted(number for number in links if number > state.head)
            if after:
                expected = list(range(state.head + 1, after[-1] + 1))
                if after != expected:
                    missing = sorted(set(expected) - set(after))
                    report.problems.append(
                        Problem(
                            None,
                            None,
                            None,
                            f"writer {chain}: links {describe_ranges(missing)} after its last "
                            "checkpoint are missing (segments and summaries deleted)",
                            "missing",
                        )
                    )
                status += f"; {len(after)} segment(s) after it, chained but not yet signed"
            report.chains.append(status)
        if public_keys is None:
            report.unchecked.append(NO_KEY)
        if not chains:
            report.unchecked.append(
                "no checkpoint in the archive: deleted last segments and consistent rewrites "
                "cannot be detected"
            )
        return report

    def _verify_stream(
        self,
        report: VerifyReport,
        sid: str,
        writer: str,
        segments: list[SegmentKey],
        facts: dict[str, SegmentFacts] | None = None,
    ) -> tuple[int, str]:
        expected_seq: int | None = 0
        prev_hash: str | None = GENESIS_HASH
        last_seen = (-1, "")
        for parsed in segments:
            report.segments += 1
            key = parsed.key
            try:
                lines = decompress_segment(self.store.get(key))
            except SegmentError as exc:
                report.add(key, None, None, str(exc))
                expected_seq, prev_hash = None, None
                continue
            if expected_seq is not None and parsed.first_seq != expected_seq:
                report.add(
                    key,
                    None,
                    parsed.first_seq,
                    f"segment starts at seq {parsed.first_seq}, expected {expected_seq}",
                    "missing",
                )
            if lines and not lines.endswith(b"\n"):
                report.add(key, None, None, "last line has no newline: the segment was cut")
            first = True
            segment_first: int | None = None
            segment_last: tuple[int, str] | None = None
            for number, line in iter_lines(lines):
                report.records += 1
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    report.add(key, number, None, f"bad JSON ({exc.msg})")
                    expected_seq, prev_hash = None, None
                    continue
                if not isinstance(record, dict):
                    report.add(key, number, None, "line is not a JSON object")
                    expected_seq, prev_hash = None, None
                    continue
                seq = record.get("seq") if isinstance(record.get("seq"), int) else None
                for problem in validate_record(record):
                    report.add(key, number, seq, problem)
                if record.get("session_id") != sid:
                    report.add(key, number, seq, "record belongs to another session")
                if record.get("writer") != writer:
                    report.add(key, number, seq, "record's writer differs from the key's")
                if first and seq != parsed.first_seq:
                    report.add(key, number, seq, f"key says the first seq is {parsed.first_seq}")
                if first:
                    segment_first = seq
                first = False
                if seq is not None and expected_seq is not None and seq != expected_seq:
                    report.add(
                        key,
                        number,
                        seq,
                        f"seq {seq} where {expected_seq} was expected (record missing or moved)",
                    )
                stored_hash = record.get("hash")
                if record_hash(record) != stored_hash:
                    report.add(key, number, seq, "hash does not match the record (altered)")
                if prev_hash is not None and record.get("prev_hash") != prev_hash:
                    report.add(
                        key,
                        number,
                        seq,
                        "prev_hash does not match the previous record's hash "
                        "(record missing, moved or altered before it)",
                    )
                prev_hash = stored_hash if isinstance(stored_hash, str) else None
                expected_seq = seq + 1 if seq is not None else None
                if seq is not None:
                    segment_last = (seq, prev_hash or "")
                if seq is not None and seq > last_seen[0]:
                    last_seen = (seq, prev_hash or "")
            if facts is not None and segment_first is not None and segment_last is not None:
                facts[key] = SegmentFacts(segment_first, segment_last[0], segment_last[1])
        return last_seen


def _links_of(summary: StreamSummary) -> list[dict[str, Any]]:
    """A summary's links, whatever a damaged or foreign summary holds there."""
    links = summary.links
    if not isinstance(links, list):
        return []
    return [link for link in links if isinstance(link, dict)]


def _link_order(link: dict[str, Any]) -> tuple[str, int]:
    first = link.get("first_seq")
    return str(link.get("writer")), first if isinstance(first, int) else -1


def _link_key(link: dict[str, Any]) -> str | None:
    try:
        return segment_key(
            str(link.get("session_id")), str(link.get("writer")), int(link.get("first_seq", -1))
        )
    except (ValueError, TypeError):
        return None


def _segments_of(state: ChainState, numbers: list[int], shown: int = 5) -> str:
    """`session S records 4..9, ...` for the links `numbers` of a chain."""
    parts = []
    for number in numbers[:shown]:
        link = state.links[number][0]
        parts.append(
            f"session {link.get('session_id')} writer {link.get('writer')} records "
            f"{link.get('first_seq')}..{link.get('last_seq')}"
        )
    if len(numbers) > shown:
        parts.append(f"and {len(numbers) - shown} more")
    return ", ".join(parts)


def _decode(data: bytes, key: str) -> list[dict[str, Any]]:
    try:
        return decode_segment(data)
    except SegmentError as exc:
        raise SegmentError(f"{key}: {exc}") from None


# --- result chunks -------------------------------------------------------------------


_SHA256 = re.compile(r"[0-9a-f]{64}")


def verify_chunks(records: list[dict[str, Any]], report: VerifyReport) -> None:
    """Check a session's `chunk` records against the answers that handed the chunks out.

    The chain proves no record was altered; this proves the chunk records tell
    one story: each chunk belongs to a chunked answer of the session, carries
    the SHA-256 of what the client received when it arrived whole, and every
    whole fetch of one chunk hashed the same. A note says how many of each
    result's chunks were fetched.
    """
    counts: dict[str, int] = {}
    partitioned: set[str] = set()  # SQL API results: partition 0 came inline
    stage_files: set[str] = set()  # GET on a GCP stage: files behind pre-signed URLs
    uploads: set[str] = set()  # PUT on a GCP stage: the file uploaded through the gateway
    for record in records:
        count = record.get("chunk_count")
        partitions = record.get("partition_count")
        query_id = record.get("query_id")
        if record.get("kind") != RESPONSE or not isinstance(query_id, str):
            continue
        files = record.get("stage_file_count")
        uploaded = record.get("stage_upload_count")
        if isinstance(partitions, int) and partitions > 1:
            counts[query_id] = partitions
            partitioned.add(query_id)
        elif isinstance(count, int):
            counts[query_id] = count
        elif isinstance(files, int):
            counts[query_id] = files
            stage_files.add(query_id)
        elif isinstance(uploaded, int):
            counts[query_id] = uploaded
            uploads.add(query_id)
    hashes: dict[tuple[str, int], str] = {}
    for record in records:
        if record.get("kind") != CHUNK:
            continue
        seq = record.get("seq") if isinstance(record.get("seq"), int) else None
        query_id, index = record.get("query_id"), record.get("chunk_index")
        if not isinstance(query_id, str) or not isinstance(index, int):
            continue  # validate_record reports the missing fields
        if not 0 <= index < counts.get(query_id, 0):
            report.add(
                None,
                None,
                seq,
                f"chunk {index} of query {query_id}: no answer of the session handed it out",
            )
        if record.get("complete") is not True:
            continue
        digest = record.get("sha256")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            report.add(None, None, seq, f"chunk {index} of query {query_id}: no SHA-256")
            continue
        if hashes.setdefault((query_id, index), digest) != digest:
            report.add(
                None,
                None,
                seq,
                f"chunk {index} of query {query_id}: fetched twice "
                "with different SHA-256 (not the same bytes)",
            )
    for query_id, count in counts.items():
        indexes = {index for q, index in hashes if q == query_id}
        unit = "partitions" if query_id in partitioned else "chunks"
        unit = "stage files" if query_id in stage_files else unit
        unit = "stage uploads" if query_id in uploads else unit
        done = "uploaded" if query_id in uploads else "fetched"
        if query_id in partitioned:
            indexes = {0} | {index for index in indexes if index > 0}
        fetched = len(indexes)
        if fetched:
            state = f"all {done}" if fetched >= count else f"{fetched} of {count} {done}"
            report.notes.append(f"query {query_id}: {count} {unit}, {state}")
