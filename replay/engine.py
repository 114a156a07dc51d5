"""Replays a recorded session's statements against a sandbox with snowflake-connector-python.

One connection, opened with the session's recorded context (database, schema,
warehouse, role), runs the statements in their recorded order, `USE`
statements included, so every statement meets the context it met the first
time. Bindings go back to the connector as `(Snowflake type, recorded value)`
pairs, which the connector sends unchanged: the server binds exactly the types
and values it was given the first time.

Never run: statements the gateway blocked or refused (they never reached
Snowflake), statements whose SQL was recorded with a credential masked, and,
with `read_only`, anything that could change data or grants.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

from hoopgw.recorder.session import (
    RecordedOutcome,
    RecordedSession,
    RecordedStatement,
    is_dml_count_column,
    normalize_error_code,
)
from hoopgw.replay.compare import Difference, Observation, compare, result_is_ordered
from hoopgw.replay.target import Target, check_not_recorded_account, connect_params

DEFAULT_LOGIN_TIMEOUT: Final = 30
DEFAULT_NETWORK_TIMEOUT: Final = 300
_CONNECTION_ERRNOS: Final = range(250000, 252000)


class Verdict(StrEnum):
    MATCH = "match"
    DIFFERS = "differs"
    UNCOMPARED = "replayed"
    WOULD_RUN = "would run"
    SKIPPED = "skipped"
    NOT_RUN = "not run"


class ReplayConnectionError(RuntimeError):
    """The sandbox could not be reached, refused the login, or dropped the connection."""


@dataclass(frozen=True, slots=True)
class PlannedStatement:
    statement: RecordedStatement
    run: bool
    reason: str | None = None


@dataclass(slots=True)
class StatementResult:
    statement: RecordedStatement
    verdict: Verdict
    reason: str | None = None
    recorded: Observation | None = None
    replayed: Observation | None = None
    differences: list[Difference] = field(default_factory=list)
    duration_ms: float | None = None
    query_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        statement = self.statement
        return {
            "number": statement.number,
            "verdict": str(self.verdict),
            "reason": self.reason,
            "kind": statement.kind,
            "sql": statement.sql,
            "bindings": statement.bindings,
            "context": statement.context.as_dict(),
            "recorded_at": statement.started.isoformat() if statement.started else None,
            "recorded_query_id": statement.outcome.query_id,
            "recorded": self.recorded.to_dict() if self.recorded else None,
            "replayed": self.replayed.to_dict() if self.replayed else None,
            "replay_query_id": self.query_id,
            "replay_duration_ms": self.duration_ms,
            "differences": [difference.to_dict() for difference in self.differences],
        }


@dataclass(slots=True)
class ReplayReport:
    session_id: str
    target: dict[str, Any] | None
    context: dict[str, Any]
    dry_run: bool
    read_only: bool
    started_at: datetime
    finished_at: datetime | None = None
    results: list[StatementResult] = field(default_factory=list)
    aborted: str | None = None

    def counts(self) -> dict[str, int]:
        counts = {str(verdict): 0 for verdict in Verdict}
        for result in self.results:
            counts[str(result.verdict)] += 1
        return counts

    @property
    def matched(self) -> bool:
        """No statement differs (and the replay was not cut short by a connection error)."""
        return self.aborted is None and not any(
            result.verdict is Verdict.DIFFERS for result in self.results
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "target": self.target,
            "context": self.context,
            "dry_run": self.dry_run,
            "read_only": self.read_only,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "matched": self.matched,
            "aborted": self.aborted,
            "counts": self.counts(),
            "statements": [result.to_dict() for result in self.results],
        }


def plan_replay(session: RecordedSession, *, read_only: bool = False) -> list[PlannedStatement]:
    """Which statements run and why the others do not."""
    planned = []
    for statement in session.statements:
        if statement.blocked:
            planned.append(PlannedStatement(statement, False, statement.blocked))
        elif statement.unreplayable:
            planned.append(PlannedStatement(statement, False, statement.unreplayable))
        elif read_only and not statement.read_only:
            planned.append(
                PlannedStatement(statement, False, f"--read-only: {statement.kind} can change data")
            )
        else:
            planned.append(PlannedStatement(statement, True))
    return planned


def replay_context(
    session: RecordedSession, overrides: Mapping[str, str | None] | None = None
) -> dict[str, str | None]:
    """The context the replay connection opens with: recorded, then the caller's overrides."""
    context = session.context.as_dict()
    for name, value in (overrides or {}).items():
        if value is not None:
            context[name] = value
    return context


def dry_run(
    session: RecordedSession,
    target: Target | None,
    *,
    read_only: bool = False,
    allow_recorded_account: bool = False,
    context_overrides: Mapping[str, str | None] | None = None,
) -> ReplayReport:
    """What a replay would run, without connecting anywhere."""
    if target is not None and not allow_recorded_account:
        check_not_recorded_account(target, session.upstream_accounts)
    report = ReplayReport(
        session.session_id,
        target.describe() if target else None,
        replay_context(session, context_overrides),
        dry_run=True,
        read_only=read_only,
        started_at=_now(),
    )
    for planned in plan_replay(session, read_only=read_only):
        verdict = Verdict.WOULD_RUN if planned.run else Verdict.SKIPPED
        report.results.append(
            StatementResult(
                planned.statement,
                verdict,
                planned.reason,
                recorded=_recorded_without_rows(planned.statement.outcome),
            )
        )
    report.finished_at = _now()
    return report


def replay_session(
    session: RecordedSession,
    target: Target,
    *,
    read_only: bool = False,
    stop_on_diff: bool = False,
    allow_recorded_account: bool = False,
    context_overrides: Mapping[str, str | None] | None = None,
    login_timeout: int = DEFAULT_LOGIN_TIMEOUT,
    network_timeout: int = DEFAULT_NETWORK_TIMEOUT,
    on_result: Callable[[StatementResult], None] | None = None,
) -> ReplayReport:
    """Run the session against `target` and compare statement by statement.

    Raises RecordedAccountRefused before connecting when `target` is the recorded
    account, and ReplayConnectionError when the sandbox cannot be reached. A
    connection lost midway ends the replay: the report keeps what ran and says
    why it stopped (`aborted`).
    """
    import snowflake.connector
    from snowflake.connector.errors import Error as ConnectorError

    if not allow_recorded_account:
        check_not_recorded_account(target, session.upstream_accounts)
    context = replay_context(session, context_overrides)
    report = ReplayReport(
        session.session_id,
        target.describe(),
        context,
        dry_run=False,
        read_only=read_only,
        started_at=_now(),
    )
    planned = plan_replay(session, read_only=read_only)
    params = connect_params(
        target, {**context, "login_timeout": login_timeout, "network_timeout": network_timeout}
    )
    try:
        with warnings.catch_warnings():
            # connect() reads connections.toml again; resolve_target already said in one
            # line what the connector's multi-line permissions warning says
            warnings.filterwarnings(
                "ignore", message="Bad owner or permissions", category=UserWarning
            )
            connection = snowflake.connector.connect(**params)
    except ConnectorError as exc:
        raise ReplayConnectionError(
            f"cannot connect to the sandbox ({_where(target)}): {_error_text(exc)}"
        ) from None

    def emit(result: StatementResult) -> None:
        report.results.append(result)
        if on_result is not None:
            on_result(result)

    stop_reason: str | None = None
    query_ids: dict[str, str] = {}
    try:
        cursor = connection.cursor()
        decoder = connection.cursor()
        for item in planned:
            if stop_reason is not None:
                emit(StatementResult(item.statement, Verdict.NOT_RUN, stop_reason))
                continue
            if not item.run:
                emit(
                    StatementResult(
                        item.statement,
                        Verdict.SKIPPED,
                        item.reason,
                        recorded=_recorded_without_rows(item.statement.outcome),
                    )
                )
                continue
            try:
                result = _replay_one(cursor, decoder, item.statement, query_ids)
            except ReplayConnectionError as exc:
                report.aborted = str(exc)
                stop_reason = "the connection to the sandbox was lost"
                emit(StatementResult(item.statement, Verdict.NOT_RUN, str(exc)))
                continue
            emit(result)
            if stop_on_diff and result.verdict is Verdict.DIFFERS:
                stop_reason = "--stop-on-diff: stopped at the first difference"
    finally:
        with contextlib.suppress(ConnectorError):
            connection.close()
    report.finished_at = _now()
    return report


def bindings_to_params(bindings: Mapping[str, Any] | None) -> list[Any] | None:
    """Recorded qmark bindings as connector parameters that keep their Snowflake types.

    `{"1": {"type": "FIXED", "value": "1"}}` becomes `[("FIXED", "1")]`; an array
    binding (executemany) becomes a list of such pairs. The connector passes a
    string value through unchanged, so the wire form is the recorded one.
    """
    if not bindings:
        return None
    params: list[Any] = []
    for position in range(1, len(bindings) + 1):
        binding = bindings.get(str(position))
        if not isinstance(binding, Mapping):
            raise ValueError(f"binding {position} is missing from the record")
        type_name = str(binding.get("type") or "TEXT")
        value = binding.get("value")
        if isinstance(value, list):
            params.append([(type_name, _wire_value(item)) for item in value])
        else:
            params.append((type_name, _wire_value(value)))
    return params


def decode_result(cursor: Any, data: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    """Rows of a recorded Snowflake `data` object, decoded by the connector's own result code.

    The replayed rows come out of the same code (`create_batches_from_response`
    with the same connection's converters and session parameters), so both
    sides hold the same Python types and compare exactly.
    """
    from snowflake.connector.cursor import ResultMetadataV2
    from snowflake.connector.result_batch import create_batches_from_response

    inline = {key: value for key, value in data.items() if key not in ("chunks", "qrmk")}
    description = [ResultMetadataV2.from_column(column) for column in inline["rowtype"]]
    result_format = str(inline.get("queryResultFormat") or "json").lower()
    if result_format == "arrow" and not inline.get("rowsetBase64"):
        return []
    batches = create_batches_from_response(cursor, result_format, inline, description)
    return [tuple(row) for row in batches[0]]


def _replay_one(
    cursor: Any, decoder: Any, statement: RecordedStatement, query_ids: dict[str, str]
) -> StatementResult:
    """Run one statement and compare it; `query_ids` maps recorded query ids to replayed ones.

    A statement that names an earlier statement's query id (the connector's own
    `RESULT_SCAN('<id>')` after an asynchronous query, for one) gets the id the
    sandbox gave that statement instead.
    """
    from snowflake.connector.errors import Error as ConnectorError

    recorded = _observe_recorded(decoder, statement.outcome)
    want_rows = recorded.rows is not None
    kwargs: dict[str, Any] = {}
    multi = statement.parameters.get("MULTI_STATEMENT_COUNT")
    if isinstance(multi, int | str) and str(multi).isdigit():
        kwargs["num_statements"] = int(multi)
    try:
        params = bindings_to_params(statement.bindings)
    except ValueError as exc:
        return StatementResult(statement, Verdict.SKIPPED, str(exc), recorded=recorded)
    sql = statement.sql
    for recorded_id, replayed_id in query_ids.items():
        sql = sql.replace(recorded_id, replayed_id)
    started = time.perf_counter()
    try:
        cursor.execute(sql, params, **kwargs)
        replayed = _observe_cursor(cursor, want_rows)
    except ConnectorError as exc:
        if _is_connection_error(exc):
            raise ReplayConnectionError(
                f"the sandbox connection failed at statement {statement.number}: {_error_text(exc)}"
            ) from None
        replayed = Observation(
            False,
            error_code=normalize_error_code(getattr(exc, "errno", None)),
            sql_state=getattr(exc, "sqlstate", None),
            message=getattr(exc, "raw_msg", None) or _error_text(exc),
        )
    duration = round((time.perf_counter() - started) * 1000, 3)
    query_id = getattr(cursor, "sfqid", None) if replayed.success else None
    if statement.outcome.query_id and query_id:
        query_ids[statement.outcome.query_id] = query_id
    if recorded.success is None:
        reason = statement.outcome.transport_error or statement.outcome.rows_note
        return StatementResult(
            statement,
            Verdict.UNCOMPARED,
            f"nothing to compare: {reason}" if reason else "nothing to compare",
            recorded,
            replayed,
            duration_ms=duration,
            query_id=query_id,
        )
    differences = compare(recorded, replayed, ordered=result_is_ordered(statement.sql))
    return StatementResult(
        statement,
        Verdict.DIFFERS if differences else Verdict.MATCH,
        None if recorded.rows is not None else statement.outcome.rows_note,
        recorded,
        replayed,
        differences,
        duration,
        query_id,
    )


def _observe_recorded(decoder: Any, outcome: RecordedOutcome) -> Observation:
    rows: list[tuple[Any, ...]] | None = None
    row_count = outcome.row_count
    if outcome.success and outcome.result is not None:
        try:
            rows = decode_result(decoder, outcome.result)
        except Exception as exc:  # a recorded result the connector cannot read: compare no rows
            outcome.rows_note = f"recorded rows could not be decoded ({type(exc).__name__})"
            rows = None
        if rows is not None:
            counted = _dml_count(outcome, rows)
            if counted is not None:
                row_count = counted
    return Observation(
        outcome.success,
        error_code=outcome.error_code,
        sql_state=outcome.sql_state,
        message=outcome.message,
        row_count=row_count,
        columns=outcome.columns,
        rows=rows,
    )


def _recorded_without_rows(outcome: RecordedOutcome) -> Observation:
    return Observation(
        outcome.success,
        error_code=outcome.error_code,
        sql_state=outcome.sql_state,
        message=outcome.message,
        row_count=outcome.row_count,
        columns=outcome.columns,
    )


def _observe_cursor(cursor: Any, want_rows: bool) -> Observation:
    description = cursor.description
    columns = tuple(column.name for column in description) if description else ()
    rows = [tuple(row) for row in cursor.fetchall()] if want_rows and description else None
    if want_rows and rows is None:
        rows = []
    row_count = cursor.rowcount if isinstance(cursor.rowcount, int) else None
    if row_count is not None and row_count < 0:
        row_count = None
    return Observation(True, row_count=row_count, columns=columns, rows=rows)


def _dml_count(outcome: RecordedOutcome, rows: Sequence[tuple[Any, ...]]) -> int | None:
    from snowflake.connector.cursor import STATEMENT_TYPE_ID_DML_SET

    if outcome.statement_type_id not in STATEMENT_TYPE_ID_DML_SET or not rows:
        return None
    total = 0
    for index, name in enumerate(outcome.columns or ()):
        if is_dml_count_column(name) and index < len(rows[0]):
            total += int(rows[0][index] or 0)
    return total


def _wire_value(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _is_connection_error(exc: BaseException) -> bool:
    errno = getattr(exc, "errno", None)
    return isinstance(errno, int) and errno in _CONNECTION_ERRNOS


def _error_text(exc: BaseException) -> str:
    text = str(getattr(exc, "msg", None) or exc).strip().splitlines()
    return text[0][:400] if text else type(exc).__name__


def _where(target: Target) -> str:
    described = target.describe()
    host = described.get("host") or f"{described.get('account')}.snowflakecomputing.com"
    port = described.get("port")
    return f"account {described.get('account')} at {host}" + (f":{port}" if port else "")


def _now() -> datetime:
    return datetime.now(UTC)
