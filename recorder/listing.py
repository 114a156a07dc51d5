"""What `hoopgw sessions list`, `sessions show` and `search` print, as plain rows and dicts.

Kept out of the click layer so the shapes are tested without a terminal and
shared by table, JSON and JSONL output.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from hoopgw.recorder import coerce
from hoopgw.recorder.catalog import SessionSummary
from hoopgw.recorder.flows import statement_records
from hoopgw.recorder.index import ArchiveIndex
from hoopgw.recorder.schema import REFUSAL, REFUSAL_SUMMARY, STATEMENT_KINDS
from hoopgw.recorder.session import (
    HELD,
    RecordedOutcome,
    RecordedSession,
    RecordedStatement,
    client_app,
    load_session,
    normalize_error_code,
)

UNVERIFIED: Final = "(not verified)"
"""The user of a session whose caller the gateway never verified."""
REFUSAL_WINDOW: Final = "refusal_window"
"""The end reason of a session that holds one `refusal_summary` (docs/record-format.md)."""
_REFUSALS_SHOWN: Final = 10
_REASONS_SHOWN: Final = 3
_INTERNAL: Final = frozenset({"epoch", "window"})
"""Digest fields for sorting and for `sessions list`, not part of a search match."""
LONG_SESSION: Final = timedelta(days=1)
"""Sessions that started up to this long before `--since` are searched too."""
_APPROVAL_OUTCOMES: Final = {
    HELD: frozenset({HELD, "timeout", "withdrawn"}),
    "approved": frozenset({"approved"}),
    "denied": frozenset({"denied"}),
}
"""Search outcomes of held statements: `held` is every one no approver decided."""
SEARCH_OUTCOMES: Final = ("ok", "error", "blocked", *_APPROVAL_OUTCOMES)

SESSION_HEADERS: Final = (
    "SESSION",
    "USER",
    "START",
    "DURATION",
    "STMTS",
    "ERRORS",
    "BLOCKED",
    "CLIENT",
)
STATEMENT_HEADERS: Final = ("#", "TIME", "MS", "ROWS", "OUTCOME", "SQL")
MATCH_HEADERS: Final = ("SESSION", "#", "TIME", "USER", "ROWS", "OUTCOME", "SQL")


# --- sessions list -------------------------------------------------------------------


def summary_user(summary: SessionSummary) -> str | None:
    return summary.email or summary.subject


def summary_duration(summary: SessionSummary) -> float | None:
    last = summary.end or summary.last_activity
    return (last - summary.start).total_seconds() if last else None


def summary_is_refusal_window(summary: SessionSummary) -> bool:
    """A session that holds one window of refusals without a verified caller."""
    return summary.end_reason == REFUSAL_WINDOW and summary.caller is None


def summary_refused(summary: SessionSummary) -> bool:
    """A session the gateway never opened: no verified caller, no statement, only refusals.

    Either a window of refusals (`refusal_summary`: refused logins, requests
    without valid credentials), or, in archives written before refusals were
    counted by window, one refused request with a session of its own that never
    ends. Neither has an end to wait for.
    """
    if summary_is_refusal_window(summary):
        return True
    return (
        not summary.ended
        and summary.caller is None
        and summary.statements == 0
        and summary.blocked > 0
    )


def summary_row(summary: SessionSummary, window: dict[str, Any] | None = None) -> list[Any]:
    """`window` is the session's `window_totals` when it is a refusal window: its count
    goes under BLOCKED and its most frequent reasons under CLIENT."""
    refused = summary_refused(summary)
    if refused:
        shown_duration = "refused"
    else:
        shown_duration = format_duration(summary_duration(summary)) + (
            "" if summary.ended else " (open)"
        )
    blocked: Any = summary.blocked
    client = client_app(summary.client) or ""
    if window is not None:
        blocked = window.get("refused", blocked)
        client = "refusals: " + ", ".join(
            f"{item['endpoint']} x{item['count']}" for item in window.get("endpoints") or ()
        )
    return [
        summary.session_id,
        summary_user(summary) or (UNVERIFIED if refused else ""),
        format_time(summary.start),
        shown_duration,
        summary.statements,
        summary.errors,
        blocked,
        client,
    ]


def summary_dict(summary: SessionSummary, window: dict[str, Any] | None = None) -> dict[str, Any]:
    data = summary.to_dict()
    data["user"] = summary_user(summary)
    data["duration_s"] = summary_duration(summary)
    data["client_app"] = client_app(summary.client)
    data["refused"] = summary_refused(summary)
    if window is not None:
        data["refusals"] = window
    return data


def window_totals(index: ArchiveIndex, summaries: list[SessionSummary]) -> dict[str, Any]:
    """Each listed refusal window's totals (`RefusalWindow.totals`), by session id.

    The catalog's summaries count a window as one blocked record; its counts are
    in the `refusal_summary` itself, read through the index's digests (cached
    like search's, so a window is read once).
    """
    windows = [summary for summary in summaries if summary_is_refusal_window(summary)]
    totals: dict[str, Any] = {}
    if not windows:
        return totals
    for digest in index.digests(windows, digest_session):
        for statement in digest.statements or ():
            window = statement.get("window")
            if isinstance(window, dict):
                totals[digest.summary.session_id] = window
                break
    return totals


# --- refused requests without SQL (logins, requests without valid credentials) -------


@dataclass(frozen=True, slots=True)
class RefusedRequest:
    """A request the gateway refused that carried no SQL, read defensively from its record:
    a `refusal` record, or one of the samples a `refusal_summary` kept."""

    ts: float | None
    endpoint: str
    code: str | None
    reason: str
    by: str
    count: int
    """How many refusals the record stands for (1, or a window's count when aggregated)."""
    claimed: dict[str, Any] | None
    """Who the caller said they were, never verified, when the record keeps it."""
    client: str | None = None
    """The client's address, for a sample of a refusal window (its session has none)."""

    @property
    def what(self) -> str:
        return "login" if self.endpoint == "login" else f"{self.endpoint} request"

    def describe(self) -> str:
        times = f" ({self.count} times)" if self.count > 1 else ""
        source = f" (from {self.client})" if self.client else ""
        return f"{self.what} refused by {self.by}{times}{source}: {self.reason}"


@dataclass(frozen=True, slots=True)
class RefusalWindow:
    """One `refusal_summary`: the refusals without a verified caller a gateway process
    counted over a time window, by reason and client address."""

    start: float | None
    end: float | None
    refused: int
    reasons: tuple[tuple[str, str | None, str, int], ...]
    """(endpoint, code, reason, count), most frequent first."""
    clients: tuple[tuple[str, int], ...]
    samples: int
    samples_omitted: int
    windows_carried: int

    def endpoints(self) -> list[tuple[str, int]]:
        """Refusals by endpoint, most frequent first."""
        counts: dict[str, int] = {}
        for endpoint, _code, _reason, count in self.reasons:
            counts[endpoint] = counts.get(endpoint, 0) + count
        return sorted(counts.items(), key=lambda item: -item[1])

    def describe(self) -> str:
        span = f"{format_time(self.start)} to {format_time(self.end)}"
        carried = (
            f", {self.windows_carried} window(s) held back by the refusal budget"
            if self.windows_carried
            else ""
        )
        return f"{self.refused} without a verified caller, {span}{carried}"

    def totals(self) -> dict[str, Any]:
        """What `sessions list` shows of the window, JSON-ready."""
        return {
            "refused": self.refused,
            "window_start": format_iso(self.start),
            "window_end": format_iso(self.end),
            "endpoints": [
                {"endpoint": endpoint, "count": count} for endpoint, count in self.endpoints()
            ],
            "top_reasons": [
                {"endpoint": endpoint, "code": code, "reason": reason, "count": count}
                for endpoint, code, reason, count in self.reasons[:_REASONS_SHOWN]
            ],
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.totals(),
            "reasons": [
                {"endpoint": endpoint, "code": code, "reason": reason, "count": count}
                for endpoint, code, reason, count in self.reasons
            ],
            "clients": [{"address": address, "count": count} for address, count in self.clients],
            "samples": self.samples,
            "samples_omitted": self.samples_omitted,
            "windows_carried": self.windows_carried,
        }


def refused_requests(records: Iterable[dict[str, Any]]) -> list[RefusedRequest]:
    """The session's refusals without SQL, in order: its `refusal` records without `sql`
    and the samples its `refusal_summary` records kept."""
    found = []
    for record in records:
        kind = record.get("kind")
        if kind == REFUSAL_SUMMARY:
            found.extend(_sampled(record))
            continue
        if kind != REFUSAL or isinstance(record.get("sql"), str):
            continue
        refusal = coerce.mapping(record.get("refusal"))
        count = record.get("count")
        claimed = record.get("claimed")
        found.append(
            RefusedRequest(
                ts=coerce.number(record.get("ts")),
                endpoint=coerce.text(record.get("endpoint")) or "other",
                code=normalize_error_code(refusal.get("code")),
                reason=coerce.text(refusal.get("reason")) or "no reason on record",
                by=coerce.text(refusal.get("by")) or "hoopgw",
                count=count if isinstance(count, int) and count > 1 else 1,
                claimed=claimed if isinstance(claimed, dict) else None,
            )
        )
    return found


def _sampled(summary: dict[str, Any]) -> list[RefusedRequest]:
    samples = summary.get("samples")
    found = []
    for sample in samples if isinstance(samples, list) else ():
        if not isinstance(sample, dict):
            continue
        refusal = coerce.mapping(sample.get("refusal"))
        claimed = sample.get("claimed")
        found.append(
            RefusedRequest(
                ts=coerce.number(sample.get("ts")),
                endpoint=coerce.text(sample.get("endpoint")) or "other",
                code=normalize_error_code(refusal.get("code")),
                reason=coerce.text(refusal.get("reason")) or "no reason on record",
                by=coerce.text(refusal.get("by")) or "hoopgw",
                count=1,
                claimed=claimed if isinstance(claimed, dict) else None,
                client=coerce.text(sample.get("client")),
            )
        )
    return found


def refusal_windows(records: Iterable[dict[str, Any]]) -> list[RefusalWindow]:
    """The session's `refusal_summary` records, read defensively."""
    windows = []
    for record in records:
        if record.get("kind") != REFUSAL_SUMMARY:
            continue
        reasons = []
        for item in _dicts(record.get("reasons")):
            reasons.append(
                (
                    coerce.text(item.get("endpoint")) or "other",
                    normalize_error_code(item.get("code")),
                    coerce.text(item.get("reason")) or "no reason on record",
                    coerce.integer(item.get("count"), 0),
                )
            )
        clients = [
            (coerce.text(item.get("address")) or "unknown", coerce.integer(item.get("count"), 0))
            for item in _dicts(record.get("clients"))
        ]
        samples = record.get("samples")
        windows.append(
            RefusalWindow(
                start=coerce.number(record.get("window_start")),
                end=coerce.number(record.get("window_end")),
                refused=coerce.integer(record.get("refused"), 0),
                reasons=tuple(sorted(reasons, key=lambda item: -item[3])),
                clients=tuple(sorted(clients, key=lambda item: -item[1])),
                samples=len(samples) if isinstance(samples, list) else 0,
                samples_omitted=coerce.integer(record.get("samples_omitted"), 0),
                windows_carried=coerce.integer(record.get("windows_carried"), 0),
            )
        )
    return windows


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def claimed_name(claimed: dict[str, Any] | None) -> str | None:
    """The identity a refused caller's token claimed, marked as such."""
    if not claimed:
        return None
    name = coerce.text(claimed.get("email")) or coerce.text(claimed.get("subject"))
    return f"{name} (claimed, not verified)" if name else None


def refusal_digest(refused: RefusedRequest, session_id: str) -> dict[str, Any]:
    """A refused request as search keeps it, beside the statements: outcome blocked."""
    return {
        "session_id": session_id,
        "number": None,
        "ts": format_iso(refused.ts),
        "sql": None,
        "refused": refused.describe(),
        "endpoint": refused.endpoint,
        "user": claimed_name(refused.claimed),
        "outcome": "blocked",
        "success": None,
        "error_code": refused.code,
        "message": refused.reason,
        "blocked": {"code": refused.code, "reason": refused.reason, "by": refused.by},
        "objects": [],
        "epoch": refused.ts,
    }


def unsampled_digest(window: RefusalWindow, session_id: str) -> dict[str, Any]:
    """A window's refusals that no sample stands for, as one search match (outcome
    blocked, its most frequent reason), so search finds them too."""
    endpoint, code, reason, _count = (
        window.reasons[0] if window.reasons else ("other", None, "no reason on record", 0)
    )
    return {
        "session_id": session_id,
        "number": None,
        "ts": format_iso(window.end),
        "sql": None,
        "refused": (
            f"{window.samples_omitted} more refusals without a verified caller, not kept"
            f" as samples; most frequent: {endpoint}: {reason}"
        ),
        "endpoint": endpoint,
        "user": UNVERIFIED,
        "outcome": "blocked",
        "success": None,
        "error_code": code,
        "message": reason,
        "blocked": {"code": code, "reason": reason, "by": None},
        "objects": [],
        "epoch": window.end,
    }


# --- one session ---------------------------------------------------------------------


def statement_outcome(statement: RecordedStatement) -> str:
    approval = statement.approval
    if statement.blocked and approval is not None:
        return str(approval["state"]).replace("timeout", "timed out")
    if statement.blocked:
        return "blocked"
    if statement.outcome.transport_error:
        return "failed (no answer)"
    return statement.outcome.label


def statement_row(statement: RecordedStatement) -> list[Any]:
    started = statement.started
    return [
        statement.number,
        started.strftime("%H:%M:%S.%f")[:-3] if started else "",
        _ms(statement.outcome.duration_ms),
        _rows_cell(statement.outcome),
        statement_outcome(statement),
        statement.sql,
    ]


def statement_dict(statement: RecordedStatement, session_id: str) -> dict[str, Any]:
    outcome = statement.outcome
    return {
        "session_id": session_id,
        "number": statement.number,
        "ts": statement.started.isoformat() if statement.started else None,
        "flow_id": statement.flow_id,
        "sql": statement.sql,
        "bindings": statement.bindings,
        "context": statement.context.as_dict(),
        "async": statement.is_async,
        "user": _caller_name(statement.caller),
        "outcome": statement_outcome(statement),
        "success": outcome.success,
        "error_code": outcome.error_code,
        "sql_state": outcome.sql_state,
        "message": outcome.message,
        "query_id": outcome.query_id,
        "duration_ms": outcome.duration_ms,
        "rows": outcome.row_count,
        "columns": list(outcome.columns) if outcome.columns is not None else None,
        "blocked": statement.blocked,
        "guardrail": statement.guardrail,
        "approval": statement.approval,
        **(
            {
                outcome.chunk_unit.replace(" ", "_"): {
                    "count": outcome.chunk_count,
                    "fetched": outcome.chunks_fetched or 0,
                }
            }
            if outcome.chunk_count
            else {}
        ),
    }


def _rows_cell(outcome: RecordedOutcome) -> Any:
    """The row count; for a chunked result, how many of its chunks the client fetched."""
    if outcome.integrity is not None:
        return outcome.integrity
    return "" if outcome.row_count is None else outcome.row_count


def session_header(
    session: RecordedSession,
    refused: list[RefusedRequest] | None = None,
    chain: str | None = None,
    windows: list[RefusalWindow] | None = None,
) -> list[tuple[str, str]]:
    """The `sessions show` header; `refused` from `refused_requests`, `chain` the state of
    the session's hash chains (see `chain_state`), `windows` from `refusal_windows`."""
    refused = refused or []
    windows = windows or []
    caller = session.caller or {}
    groups = caller.get("groups")
    context = ", ".join(
        f"{name}={value}" for name, value in session.context.as_dict().items() if value
    )
    never_opened = session.caller is None and not session.statements and bool(refused or windows)
    end = format_time(session.end_ts) if session.end_ts else "(open)"
    if windows and session.end_reason == REFUSAL_WINDOW:
        end += " (refusal window closed)"
    elif session.end_reason:
        end += f" ({session.end_reason})"
    elif never_opened:
        last = max((r.ts for r in refused if r.ts is not None), default=None)
        end = f"{format_time(last)} (refused: {refused[-1].what})".lstrip()
    claimed = next((claimed_name(r.claimed) for r in refused if r.claimed), None)
    user = session.user or claimed or (UNVERIFIED if never_opened else "(unknown)")
    header = [
        ("session", session.session_id),
        ("user", user),
        ("groups", ", ".join(map(str, groups)) if isinstance(groups, list) else ""),
        ("role", str(caller.get("role") or "")),
        ("client", session.client_app or ""),
        ("start", format_time(session.start_ts)),
        ("end", end),
        ("context", context),
        ("upstream", ", ".join(filter(None, [session.upstream_host, *session.upstream_accounts]))),
        ("statements", str(len(session.statements))),
    ]
    for window in windows:
        header.append(("refusals", window.describe()))
        header += [
            ("reason", f"{count} x {endpoint}{f' {code}' if code else ''}: {reason}")
            for endpoint, code, reason, count in window.reasons[:_REFUSALS_SHOWN]
        ]
        if len(window.reasons) > _REFUSALS_SHOWN:
            header.append(("reason", f"... and {len(window.reasons) - _REFUSALS_SHOWN} more"))
        header.append(
            ("clients", ", ".join(f"{address} x{count}" for address, count in window.clients))
        )
        if window.samples_omitted:
            header.append(
                ("samples", f"{window.samples} kept, {window.samples_omitted} more not kept")
            )
    header += [
        ("refused", f"{format_time(item.ts)} {item.describe()}".lstrip())
        for item in refused[:_REFUSALS_SHOWN]
    ]
    if len(refused) > _REFUSALS_SHOWN:
        header.append(("refused", f"... and {len(refused) - _REFUSALS_SHOWN} more"))
    if chain is not None:
        header.append(("chain", chain))
    return header


def chain_state(ok: bool, problems: int, records: int) -> str:
    """One line on the session's hash chains, from `Archive.verify_session`'s report."""
    if ok:
        return f"intact ({records} records, hashes and sequence numbers checked)"
    return f"BROKEN: {problems} problem(s); the records may have been altered, run hoopgw verify"


def session_dict(
    session: RecordedSession,
    refused: list[RefusedRequest] | None = None,
    chain: dict[str, Any] | None = None,
    windows: list[RefusalWindow] | None = None,
) -> dict[str, Any]:
    return {
        "session_id": session.session_id,
        "user": session.user,
        "caller": session.caller,
        "client": session.client,
        "client_app": session.client_app,
        "start": format_iso(session.start_ts),
        "end": format_iso(session.end_ts),
        "end_reason": session.end_reason,
        "context": session.context.as_dict(),
        "upstream_host": session.upstream_host,
        "upstream_accounts": list(session.upstream_accounts),
        "records": session.records,
        "chain": chain,
        "refused": [
            {
                "ts": format_iso(item.ts),
                "endpoint": item.endpoint,
                "code": item.code,
                "reason": item.reason,
                "by": item.by,
                "count": item.count,
                "claimed": item.claimed,
                "client": item.client,
            }
            for item in refused or []
        ],
        "refusal_windows": [window.as_dict() for window in windows or []],
        "statements": [statement_dict(s, session.session_id) for s in session.statements],
    }


# --- search --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SearchQuery:
    sql: str | None = None
    object: str | None = None
    user: str | None = None
    group: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    outcome: str | None = None
    """One of SEARCH_OUTCOMES."""
    detected: str | None = None
    """A kind of sensitive data the answer held (docs/masking.md), `column`, or `any`."""
    limit: int | None = None


@dataclass(frozen=True, slots=True)
class Match:
    """One matching statement, as the digest `statement_digest` made of it."""

    statement: dict[str, Any]

    @property
    def session_id(self) -> str:
        return str(self.statement["session_id"])

    def row(self) -> list[Any]:
        statement = self.statement
        return [
            statement["session_id"],
            "" if statement.get("number") is None else statement["number"],
            format_time(statement.get("epoch")),
            statement.get("user") or "",
            "" if statement.get("rows") is None else statement["rows"],
            statement.get("outcome") or "",
            statement.get("sql")
            or (f"({statement['refused']})" if statement.get("refused") else ""),
        ]

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in self.statement.items() if key not in _INTERNAL}


@dataclass(slots=True)
class SearchResult:
    matches: list[Match]
    sessions_searched: int
    unreadable: list[str]
    """Sessions with a segment that does not decode (`hoopgw verify` tells more)."""


def statement_digest(statement: RecordedStatement, session_id: str) -> dict[str, Any]:
    """A statement as search keeps it: everything but result rows, plus its objects."""
    digest = statement_dict(statement, session_id)
    digest["objects"] = list(statement.objects)
    digest["epoch"] = statement.ts
    return digest


def digest_session(session_id: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    session = load_session(session_id, records)
    digests = [statement_digest(statement, session_id) for statement in session.statements]
    detections = _detections(records)
    for digest in digests:
        digest["user"] = digest["user"] or session.user
        found = detections.get(digest.get("flow_id")) or detections.get(digest.get("query_id"))
        if found:
            digest["detections"] = found
    refusals = [refusal_digest(item, session_id) for item in refused_requests(records)]
    windows = refusal_windows(records)
    refusals += [
        unsampled_digest(window, session_id) for window in windows if window.samples_omitted
    ]
    for digest in refusals:
        digest["user"] = digest["user"] or session.user or UNVERIFIED
        if windows:
            # what `sessions list` shows of the window, kept with the digests it caches
            digest["window"] = windows[0].totals()
    return sorted(
        digests + refusals, key=lambda d: d["epoch"] if d.get("epoch") is not None else 0.0
    )


def _detections(records: list[dict[str, Any]]) -> dict[Any, list[dict[str, Any]]]:
    """What masking found in each answer, by its flow and by its query id (a result
    fetched later by query id is the same statement's rows)."""
    found: dict[Any, list[dict[str, Any]]] = {}
    for record in records:
        detections = record.get("detections")
        if record.get("kind") != "response" or not isinstance(detections, list):
            continue
        for key in (record.get("flow_id"), record.get("query_id")):
            if isinstance(key, str):
                found.setdefault(key, []).extend(d for d in detections if isinstance(d, dict))
    return found


def search(index: ArchiveIndex, query: SearchQuery) -> SearchResult:
    """Statements matching every given criterion, newest session first, in session order.

    Sessions are picked by start time (from `LONG_SESSION` before `since`), user
    and group from their summaries; their statements come from the index, which
    reads only sessions it has not digested before. The segments are listed (and
    their roll-ups read, without a cache) while the summaries are, and a session
    none of whose statements can match the SQL text or time criteria is passed
    over without being digested.
    """
    earliest = query.since - LONG_SESSION if query.since else None
    with ThreadPoolExecutor(1) as background:
        segments = background.submit(index.segment_objects, earliest, read_ahead=True)
        summaries = index.list_sessions(
            since=earliest, until=query.until, user=query.user, group=query.group
        )
        listed = segments.result()
    matcher = _statement_matcher(query)
    result = SearchResult([], 0, [])
    digests = index.digests(
        summaries, digest_session, segments=listed, wanted=_session_could_match(query)
    )
    for digest in digests:
        result.sessions_searched += 1
        if digest.problem is not None:
            result.unreadable.append(digest.summary.session_id)
            continue
        for statement in digest.statements or ():
            if matcher(statement):
                statement.setdefault("user", summary_user(digest.summary))
                result.matches.append(Match(statement))
                if query.limit is not None and len(result.matches) >= query.limit:
                    return result
    return result


def object_matches(pattern: str, names: Iterable[str]) -> bool:
    """`ORDERS` matches `DB.APP.ORDERS`; globs (`*.PAYROLL.*`) match whole names; any case."""
    wanted = pattern.strip().upper()
    if not wanted:
        return False
    globbing = any(char in wanted for char in "*?[")
    for name in names:
        upper = name.upper()
        if globbing:
            if fnmatch.fnmatchcase(upper, wanted):
                return True
        elif upper == wanted or upper.endswith("." + wanted):
            return True
    return False


def format_time(value: datetime | float | None) -> str:
    if value is None:
        return ""
    if not isinstance(value, datetime):
        value = datetime.fromtimestamp(value, tz=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def format_iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat() if ts is not None else None


def _statement_matcher(query: SearchQuery) -> Callable[[dict[str, Any]], bool]:
    sql = query.sql.casefold() if query.sql else None
    since = query.since.timestamp() if query.since else None
    until = query.until.timestamp() if query.until else None

    def matches(statement: dict[str, Any]) -> bool:
        if sql is not None and sql not in str(statement.get("sql") or "").casefold():
            return False
        ts = statement.get("epoch")
        if since is not None and (not isinstance(ts, int | float) or ts < since):
            return False
        if until is not None and (not isinstance(ts, int | float) or ts >= until):
            return False
        if query.outcome is not None and not _outcome_is(statement, query.outcome):
            return False
        if query.detected is not None and not _detected(statement, query.detected):
            return False
        return query.object is None or object_matches(query.object, statement.get("objects") or ())

    return matches


def _session_could_match(query: SearchQuery) -> Callable[[list[dict[str, Any]]], bool] | None:
    """A test on a session's records that is False only when none of its statements
    can match the SQL text and time criteria (each statement is a `request` or
    `refusal` record with `sql`, its time that record's `ts`; without SQL text, a
    refusal window may match anywhere from its start to its end), or None when the
    query has none of those criteria."""
    sql = query.sql.casefold() if query.sql else None
    since = query.since.timestamp() if query.since else None
    until = query.until.timestamp() if query.until else None
    if sql is None and since is None and until is None:
        return None

    def could_match(records: list[dict[str, Any]]) -> bool:
        if sql is None:
            spans = [(window.start, window.end) for window in refusal_windows(records)]
            spans += [(item.ts, item.ts) for item in refused_requests(records)]
            for start, end in spans:
                if start is None or end is None:
                    continue
                if (since is None or end >= since) and (until is None or start < until):
                    return True
        for record in _searched_records(records, with_refusals=sql is None):
            if sql is not None and sql not in record["sql"].casefold():
                continue
            ts = coerce.number(record.get("ts"))
            if since is not None or until is not None:
                if ts is None:
                    continue
                if (since is not None and ts < since) or (until is not None and ts >= until):
                    continue
            return True
        return False

    return could_match


def _searched_records(
    records: list[dict[str, Any]], *, with_refusals: bool
) -> Iterable[dict[str, Any]]:
    """Statement records and, unless SQL text is searched, refusal records without SQL."""
    if not with_refusals:
        return statement_records(records)
    return (
        record
        for record in records
        if record.get("kind") in STATEMENT_KINDS
        and (isinstance(record.get("sql"), str) or record.get("kind") == REFUSAL)
    )


def _detected(statement: dict[str, Any], kind: str) -> bool:
    return any(
        isinstance(item, dict) and (kind == "any" or item.get("kind") == kind)
        for item in statement.get("detections") or ()
    )


def _outcome_is(statement: dict[str, Any], wanted: str) -> bool:
    """`ok`, `error`, `blocked` or an approval outcome (SEARCH_OUTCOMES): a statement held
    for review is `blocked` by no rule; once approved it is also `ok` or `error`."""
    approval = statement.get("approval")
    state = approval.get("state") if isinstance(approval, dict) else None
    if wanted in _APPROVAL_OUTCOMES:
        return state in _APPROVAL_OUTCOMES[wanted]
    if wanted == "blocked":
        return statement.get("blocked") is not None and state is None
    if statement.get("blocked") is not None:
        return False
    if wanted == "error":
        return statement.get("success") is not True
    return statement.get("success") is True


def _caller_name(caller: dict[str, Any] | None) -> str | None:
    if not isinstance(caller, dict):
        return None
    value = caller.get("email") or caller.get("subject")
    return str(value) if value else None


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.0f}"
