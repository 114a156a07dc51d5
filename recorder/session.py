"""A recorded session as the replay tool and the CLI see it: statements in order, with context.

The gateway records flows (a `request` or `refusal` record, then a `response` or
`error` record with the same `flow_id`; `recorder.flows` groups them). Here the
flows that carried SQL become
`RecordedStatement`s with what is needed to run them again (text, bindings,
context, parameters) and what happened the first time (`RecordedOutcome`),
including the Snowflake `data` of the answer when the record holds the whole
result, so the rows can be compared.

Records are read defensively: fields sit at the top level (the record format's
flat form, what the gateway writes: `recorder.records`) or in an `outcome` or
`context` object, and unknown fields are ignored. tests/test_recorder_session.py
reads what the `Recording` addon writes, so reader and writer cannot drift apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from hoopgw.recorder import coerce
from hoopgw.recorder import statements as sql_statements
from hoopgw.recorder.flows import SessionRecords
from hoopgw.recorder.schema import RecordKind

REDACTION_MARKERS: Final = ("[REDACTED]", "[REDACTED PRIVATE KEY]")
_RESULT_PATH: Final = re.compile(r"^/queries/([^/?]+)/result")
_STATEMENT_ENDPOINTS: Final = frozenset({"query", "sql_api"})
HELD: Final = "held"
STAGE_UPLOADS: Final = "stage uploads"
"""The `chunk_unit` of a PUT on a GCP stage: the file uploaded through the gateway."""
"""The approval state of a held statement no decision was recorded for (yet)."""
APPROVAL_STATES: Final = (HELD, "approved", "denied", "timeout", "withdrawn")
"""A held statement's approval state: `held`, or the outcome of its `approval_decision`."""
_FILE_TRANSFERS: Final = frozenset({"PUT", "GET"})
# classifying is a search's main cost, and text without either word holds no PUT or GET
_NAMES_A_FILE_TRANSFER: Final = re.compile(r"\b(?:put|get)\b", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Context:
    """Database, schema, warehouse and role in force for a statement."""

    database: str | None = None
    schema: str | None = None
    warehouse: str | None = None
    role: str | None = None

    @classmethod
    def from_record(cls, value: Any) -> Context:
        if not isinstance(value, dict):
            return cls()
        return cls(
            database=coerce.text(value.get("database")),
            schema=coerce.text(value.get("schema")),
            warehouse=coerce.text(value.get("warehouse")),
            role=coerce.text(value.get("role")),
        )

    def merged_over(self, base: Context) -> Context:
        """This context, with `base` filling what this one does not know."""
        return Context(
            self.database or base.database,
            self.schema or base.schema,
            self.warehouse or base.warehouse,
            self.role or base.role,
        )

    def as_dict(self) -> dict[str, str | None]:
        return {
            "database": self.database,
            "schema": self.schema,
            "warehouse": self.warehouse,
            "role": self.role,
        }

    def __bool__(self) -> bool:
        return any((self.database, self.schema, self.warehouse, self.role))


def outcome_label(success: bool | None, error_code: str | None) -> str:
    """A statement's outcome in one word for tables: ok, error CODE, or unknown."""
    if success is None:
        return "unknown"
    if success:
        return "ok"
    return f"error {error_code}" if error_code else "error"


@dataclass(slots=True)
class RecordedOutcome:
    """What Snowflake answered when the statement first ran, as far as the record tells.

    `success` is None when no answer is on record (the gateway died, the upstream
    connection failed). `result` is Snowflake's `data` object when it holds the
    complete result inline (JSON `rowset` or Arrow `rowsetBase64`, not trimmed
    by the recorder's body limit, not streamed past the recorder, no remote
    chunks); otherwise `rows_note` says why the rows cannot be compared.
    """

    success: bool | None = None
    error_code: str | None = None
    sql_state: str | None = None
    message: str | None = None
    row_count: int | None = None
    columns: tuple[str, ...] | None = None
    statement_type_id: int | None = None
    query_id: str | None = None
    duration_ms: float | None = None
    result: dict[str, Any] | None = None
    rows_note: str | None = None
    transport_error: str | None = None
    chunk_count: int | None = None
    chunks_fetched: int | None = None
    chunk_unit: str = "chunks"
    """"partitions" for an SQL API result: `chunk_count` counts partitions, 0 (inline) too."""

    @property
    def integrity(self) -> str | None:
        """For a chunked result: "N rows in M chunks, all fetched" or "... K of M fetched"."""
        if not self.chunk_count:
            return None
        rows = "" if self.row_count is None else f"{self.row_count} rows in "
        fetched = self.chunks_fetched or 0
        unit = self.chunk_unit
        done = "uploaded" if unit == STAGE_UPLOADS else "fetched"
        if fetched >= self.chunk_count:
            return f"{rows}{self.chunk_count} {unit}, all {done}"
        return f"{rows}{self.chunk_count} {unit}, {fetched} of {self.chunk_count} {done}"

    @property
    def label(self) -> str:
        """A short outcome word for tables: ok, error CODE, or unknown."""
        return outcome_label(self.success, self.error_code)


@dataclass(slots=True)
class RecordedStatement:
    """One SQL request of the session, in the order the gateway received it."""

    number: int
    flow_id: str | None
    ts: float | None
    sql: str
    endpoint: str | None
    bindings: dict[str, Any] | None
    parameters: dict[str, Any]
    context: Context
    is_async: bool
    caller: dict[str, Any] | None
    outcome: RecordedOutcome
    blocked: str | None = None
    unreplayable: str | None = None
    guardrail: dict[str, Any] | None = None
    approval: dict[str, Any] | None = None
    """A held statement's approval: `id` and `state` (APPROVAL_STATES), `joined` or
    `reused` for a retry; None for a statement the gateway never held."""
    _classified: list[sql_statements.Statement] | None = field(default=None, repr=False)

    @property
    def classified(self) -> list[sql_statements.Statement]:
        """The statement(s) of the SQL text, classified against the recorded context."""
        if self._classified is None:
            self._classified = sql_statements.classify(
                self.sql, database=self.context.database, schema=self.context.schema
            )
        return self._classified

    @property
    def kind(self) -> str:
        kinds = [statement.kind for statement in self.classified]
        return "+".join(dict.fromkeys(kinds)) if kinds else "UNKNOWN"

    @property
    def read_only(self) -> bool:
        """True only when every statement of the text can change neither data nor grants."""
        found = self.classified
        return bool(found) and all(
            statement.read_only and statement.kind != "UNKNOWN" for statement in found
        )

    @property
    def objects(self) -> tuple[str, ...]:
        """Objects the statement reads or writes: the guardrail's list if recorded, else parsed."""
        guardrail = self.guardrail or {}
        recorded = guardrail.get("objects")
        if isinstance(recorded, list) and recorded:
            return tuple(str(name) for name in recorded)
        names: dict[str, None] = {}
        for statement in self.classified:
            names.update(dict.fromkeys(statement.objects))
        return tuple(names)

    @property
    def started(self) -> datetime | None:
        return datetime.fromtimestamp(self.ts, tz=UTC) if self.ts is not None else None


@dataclass(slots=True)
class RecordedSession:
    """A session rebuilt from its records."""

    session_id: str
    caller: dict[str, Any] | None
    client: dict[str, Any] | None
    context: Context
    upstream_host: str | None
    upstream_accounts: tuple[str, ...]
    start_ts: float | None
    end_ts: float | None
    end_reason: str | None
    statements: list[RecordedStatement]
    records: int

    @property
    def user(self) -> str | None:
        caller = self.caller or {}
        return coerce.text(caller.get("email")) or coerce.text(caller.get("subject"))

    @property
    def client_app(self) -> str | None:
        return client_app(self.client)


def load_session(session_id: str, records: list[dict[str, Any]]) -> RecordedSession:
    """Pair each flow's request with its answer and keep the flows that carried SQL."""
    grouped = SessionRecords.group(records)
    result_fetches: dict[str, dict[str, Any]] = {}
    for flow in grouped.requested():
        match = _RESULT_PATH.match(str((flow.request or {}).get("path") or ""))
        answer = flow.answer
        if match and answer is not None:
            result_fetches.setdefault(match[1], answer)
    chunks_fetched = fetched_chunks(records)

    start = grouped.start
    end = grouped.end
    login = next((r for r in records if _is_login_request(r)), None)
    context = Context()
    if start is not None:
        context = Context.from_record(start.get("context")).merged_over(Context.from_record(start))
    if login is not None:
        context = context.merged_over(_login_context(login))

    held = HeldStatements.read(records)
    statements: list[RecordedStatement] = []
    caller = next((r["caller"] for r in records if isinstance(r.get("caller"), dict)), None)
    client = next((r["client"] for r in records if isinstance(r.get("client"), dict)), None)
    tracked = (context.database, context.schema)
    # the last statement that ran and whose effect on `tracked` is not worked out yet:
    # classifying SQL is the cost of a search, and the gateway records each
    # statement's context, so the effect is needed only when a later record lacks it
    unfolded: RecordedStatement | None = None
    for record, flow in grouped.statements():
        answer = flow.answer if flow is not None else None
        recorded_context = Context.from_record(record.get("context")).merged_over(
            Context.from_record(record)
        )
        if unfolded is not None and not (recorded_context.database and recorded_context.schema):
            tracked = sql_statements.context_after(
                unfolded.classified, unfolded.context.database, unfolded.context.schema
            )
            unfolded = None
        statement_context = Context(
            recorded_context.database or tracked[0],
            recorded_context.schema or tracked[1],
            recorded_context.warehouse or context.warehouse,
            recorded_context.role or context.role,
        )
        statement = _statement(
            len(statements) + 1, record, answer, statement_context, result_fetches
        )
        if statement.outcome.chunk_count and statement.outcome.query_id:
            fetched = chunks_fetched.get(statement.outcome.query_id, set())
            if statement.outcome.chunk_unit == "partitions":  # partition 0 came inline
                fetched = {0} | {index for index in fetched if index > 0}
            statement.outcome.chunks_fetched = len(fetched)
        held.settle(statement)
        statements.append(statement)
        if statement.blocked is None and statement.outcome.success is not False:
            unfolded = statement
    if start is not None:
        caller = start.get("caller") if isinstance(start.get("caller"), dict) else caller
        client = start.get("client") if isinstance(start.get("client"), dict) else client
    return RecordedSession(
        session_id=session_id,
        caller=caller,
        client=client,
        context=context,
        upstream_host=_upstream(start, "host"),
        upstream_accounts=_recorded_accounts(start, login),
        start_ts=coerce.number(start.get("ts")) if start else _first_ts(records),
        end_ts=coerce.number(end.get("ts")) if end else None,
        end_reason=coerce.text(end.get("reason")) if end else None,
        statements=statements,
        records=len(records),
    )


def fetched_chunks(records: list[dict[str, Any]]) -> dict[str, set[int]]:
    """Each query's chunks that reached the client whole, from its `chunk` records."""
    fetched: dict[str, set[int]] = {}
    for record in records:
        if record.get("kind") != RecordKind.CHUNK or record.get("complete") is not True:
            continue
        query_id = coerce.text(record.get("query_id"))
        index = record.get("chunk_index")
        if query_id is not None and isinstance(index, int):
            fetched.setdefault(query_id, set()).add(index)
    return fetched


def client_app(client: dict[str, Any] | None) -> str | None:
    """The client application, `client.application` (`recorder.records.Client`)."""
    if not isinstance(client, dict):
        return None
    return coerce.text(client.get("application"))


def _statement(
    number: int,
    request: dict[str, Any],
    answer: dict[str, Any] | None,
    context: Context,
    result_fetches: dict[str, dict[str, Any]],
) -> RecordedStatement:
    body = _body_json(request)
    bindings = request.get("bindings")
    if not isinstance(bindings, dict):
        bindings = body.get("bindings") if isinstance(body.get("bindings"), dict) else None
    parameters = body.get("parameters") if isinstance(body.get("parameters"), dict) else {}
    is_async = bool(request.get("async") or body.get("asyncExec"))
    outcome = recorded_outcome(answer)
    if is_async and outcome.success and outcome.query_id and outcome.columns is None:
        fetched = result_fetches.get(outcome.query_id)
        if fetched is not None:
            later = recorded_outcome(fetched)
            later.query_id = outcome.query_id
            outcome = later
        else:
            outcome.rows_note = "asynchronous query whose result fetch is not on record"
    statement = RecordedStatement(
        number=number,
        flow_id=request.get("flow_id") if isinstance(request.get("flow_id"), str) else None,
        ts=coerce.number(request.get("ts")),
        sql=str(request["sql"]),
        endpoint=coerce.text(request.get("endpoint")),
        bindings=bindings,
        parameters=parameters,
        context=context,
        is_async=is_async,
        caller=request.get("caller") if isinstance(request.get("caller"), dict) else None,
        outcome=outcome,
        guardrail=request.get("guardrail") if isinstance(request.get("guardrail"), dict) else None,
    )
    statement.blocked = _blocked_reason(request, answer)
    statement.unreplayable = _unreplayable_reason(statement, body)
    return statement


def recorded_outcome(answer: dict[str, Any] | None) -> RecordedOutcome:
    """The outcome of a flow from its `response` (or `error`) record."""
    if answer is None:
        return RecordedOutcome(rows_note="no answer on record")
    if answer.get("kind") == RecordKind.ERROR:
        error = answer.get("error")
        message = error.get("message") if isinstance(error, dict) else error
        return RecordedOutcome(
            transport_error=coerce.text(message) or "the flow failed",
            rows_note="the flow failed before an answer",
            duration_ms=coerce.number(answer.get("duration_ms")),
        )
    flat = answer.get("outcome") if isinstance(answer.get("outcome"), dict) else answer
    body = answer.get("body") if isinstance(answer.get("body"), dict) else {}
    document = body.get("json") if isinstance(body.get("json"), dict) else {}
    data = document.get("data") if isinstance(document.get("data"), dict) else {}

    success = flat.get("success")
    if not isinstance(success, bool):
        success = document.get("success") if isinstance(document.get("success"), bool) else None
    if success is None and isinstance(answer.get("status"), int):
        success = answer["status"] < 400
    outcome = RecordedOutcome(success=success, duration_ms=coerce.number(answer.get("duration_ms")))
    if success is False:
        outcome.error_code = normalize_error_code(
            flat.get("error_code") or document.get("code") or data.get("errorCode")
        )
        outcome.sql_state = coerce.text(flat.get("sql_state") or data.get("sqlState"))
        outcome.message = coerce.text(flat.get("message") or document.get("message"))
    outcome.query_id = coerce.text(flat.get("query_id") or data.get("queryId"))
    outcome.statement_type_id = coerce.integer(
        flat.get("statement_type_id", data.get("statementTypeId")), digits=True
    )
    columns = flat.get("columns")
    if not isinstance(columns, list) and isinstance(data.get("rowtype"), list):
        columns = [col.get("name") for col in data["rowtype"] if isinstance(col, dict)]
    if isinstance(columns, list):
        outcome.columns = tuple(str(name) for name in columns)
    total = flat.get("total", data.get("total"))
    outcome.row_count = total if isinstance(total, int) else None
    chunk_count = flat.get("chunk_count")
    outcome.chunk_count = chunk_count if isinstance(chunk_count, int) and chunk_count else None
    partitions = flat.get("partition_count")
    if isinstance(partitions, int) and partitions > 1:
        outcome.chunk_count, outcome.chunk_unit = partitions, "partitions"
    files = flat.get("stage_file_count")
    if isinstance(files, int) and files and not outcome.chunk_count:
        outcome.chunk_count, outcome.chunk_unit = files, "stage files"
    uploads = flat.get("stage_upload_count")
    if isinstance(uploads, int) and uploads and not outcome.chunk_count:
        outcome.chunk_count, outcome.chunk_unit = uploads, STAGE_UPLOADS
    if success:
        outcome.result, outcome.rows_note = _complete_result(body, data)
        dml_rows = dml_row_count(data)
        if dml_rows is not None:
            outcome.row_count = dml_rows
    return outcome


def dml_row_count(data: dict[str, Any]) -> int | None:
    """Rows a DML statement changed, summed the way the connector sums them, from a JSON rowset."""
    from snowflake.connector.cursor import STATEMENT_TYPE_ID_DML_SET

    type_id = data.get("statementTypeId")
    rowtype = data.get("rowtype")
    rowset = data.get("rowset")
    if not isinstance(type_id, int) or type_id not in STATEMENT_TYPE_ID_DML_SET:
        return None
    if not isinstance(rowtype, list) or not isinstance(rowset, list) or not rowset:
        return None
    total = 0
    for index, column in enumerate(rowtype):
        name = column.get("name", "") if isinstance(column, dict) else ""
        if is_dml_count_column(name):
            try:
                total += int(rowset[0][index])
            except (IndexError, TypeError, ValueError):
                return None
    return total


def is_dml_count_column(name: str) -> bool:
    return name in (
        "number of rows updated",
        "number of multi-joined rows updated",
        "number of rows deleted",
    ) or name.startswith("number of rows inserted")


def normalize_error_code(value: Any) -> str | None:
    """Snowflake's six-digit form, everywhere: `"002003"`, the connector's `2003` and the
    gateway's `399003` become `"002003"` and `"399003"`; other codes (SQL states) as given."""
    if value is None or value == "":
        return None
    text = str(value).strip()
    return f"{int(text):06d}" if text.isascii() and text.isdigit() else text


def _complete_result(
    body: dict[str, Any], data: dict[str, Any]
) -> tuple[dict[str, Any] | None, str | None]:
    if not body:
        return None, "no response body on record"
    if body.get("streamed"):
        return None, "rows not recorded: the answer was streamed to the client"
    if body.get("omitted"):
        return None, f"response body not recorded ({body['omitted']})"
    if not isinstance(data.get("rowtype"), list):
        return None, "no result set on record"
    if "rowset" not in data and "rowsetBase64" not in data:
        return None, "no rows on record"
    trimmed = body.get("trimmed") if isinstance(body.get("trimmed"), dict) else {}
    if any(path.startswith(("data.rowset", "data.rowtype")) for path in trimmed):
        return None, "rows cut by the recorder's body limit"
    chunks = data.get("chunks")
    if isinstance(chunks, list) and chunks:
        return None, f"result continued in {len(chunks)} chunk(s) fetched from cloud storage"
    return data, None


@dataclass
class HeldStatements:
    """Statements the gateway held for review (docs/approval.md), and what became of them.

    A held statement's own answer is "still running"; it ran only if approved,
    and then its outcome is the answer to the poll that released it. Only the
    first request of an approval runs (a retry joins it); a retry that reused an
    approval ran as its own flow.
    """

    by_flow: dict[str, str] = field(default_factory=dict)
    outcomes: dict[str, str] = field(default_factory=dict)
    reused: dict[str, str] = field(default_factory=dict)
    released: dict[str, dict[str, Any]] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)

    @classmethod
    def read(cls, records: list[dict[str, Any]]) -> HeldStatements:
        held = cls()
        for record in records:
            kind, approval_id = record.get("kind"), record.get("approval_id")
            if not isinstance(approval_id, str):
                continue
            if kind == RecordKind.APPROVAL_REQUEST and isinstance(record.get("flow_id"), str):
                held.by_flow.setdefault(record["flow_id"], approval_id)
            elif kind == RecordKind.APPROVAL_DECISION:
                if isinstance(record.get("flow_id"), str):
                    held.reused[record["flow_id"]] = approval_id
                else:
                    held.outcomes[approval_id] = str(record.get("outcome"))
        if held.by_flow:
            polls = {
                r.get("flow_id"): r.get("path")
                for r in records
                if r.get("kind") == RecordKind.REQUEST and r.get("endpoint") == "result"
            }
            for record in records:
                if record.get("kind") != RecordKind.RESPONSE or record.get("refusal") is not None:
                    continue
                match = _RESULT_PATH.match(str(polls.get(record.get("flow_id")) or ""))
                # the gateway's own "still running" answers name the approval id as query id
                if match and match[1] in held.outcomes and record.get("query_id") != match[1]:
                    held.released[match[1]] = record
        return held

    def settle(self, statement: RecordedStatement) -> None:
        guardrail = statement.guardrail or {}
        if guardrail.get("decision") != "review" or statement.blocked is not None:
            return
        if statement.flow_id in self.reused:
            reused = self.reused[statement.flow_id]
            statement.approval = {"id": reused, "state": "approved", "reused": True}
            return
        approval_id = self.by_flow.get(statement.flow_id or "")
        outcome = self.outcomes.get(approval_id or "")
        statement.approval = {"id": approval_id, "state": outcome or HELD}
        if approval_id is None or outcome is None:
            statement.blocked = "held for review and never decided"
        elif approval_id in self.seen:
            statement.blocked = f"a retry that joined approval {approval_id}"
            statement.approval["joined"] = True
        elif outcome != "approved":
            statement.blocked = f"held for review: {outcome}"
        else:
            released = self.released.get(approval_id)
            statement.outcome = recorded_outcome(released)
        if approval_id is not None:
            self.seen.add(approval_id)


def _blocked_reason(request: dict[str, Any], answer: dict[str, Any] | None) -> str | None:
    guardrail = request.get("guardrail")
    if isinstance(guardrail, dict) and guardrail.get("decision") == "block":
        rule = guardrail.get("rule")
        reason = guardrail.get("reason")
        text = "blocked by guardrail"
        if rule:
            text += f" rule {rule}"
        return f"{text}: {reason}" if reason else text
    refusal = request.get("refusal")
    if not isinstance(refusal, dict) and answer is not None:
        refusal = answer.get("refusal")
    if request.get("kind") == RecordKind.REFUSAL or isinstance(refusal, dict):
        refusal = refusal if isinstance(refusal, dict) else {}
        by = refusal.get("by") or "the gateway"
        reason = refusal.get("reason")
        return f"refused by {by}: {reason}" if reason else f"refused by {by}"
    return None


def _unreplayable_reason(statement: RecordedStatement, body: dict[str, Any]) -> str | None:
    if any(marker in statement.sql for marker in REDACTION_MARKERS):
        return "the recorded SQL has a credential literal masked"
    if body.get("bindStage"):
        return "its bind values were uploaded to a stage and are not on record"
    bindings = statement.bindings
    if bindings and not all(str(key).isdigit() for key in bindings):
        return "named bindings cannot be replayed through the connector"
    if statement.endpoint not in (None, *_STATEMENT_ENDPOINTS):
        return f"a {statement.endpoint} request, not a statement"
    if not _NAMES_A_FILE_TRANSFER.search(statement.sql):
        return None
    transfers = {s.kind for s in statement.classified} & _FILE_TRANSFERS
    if transfers:
        kind = "/".join(sorted(transfers))
        return f"{kind} moves files between the client and a stage; the files are not on record"
    return None


def _is_login_request(record: dict[str, Any]) -> bool:
    if record.get("kind") != RecordKind.REQUEST:
        return False
    return record.get("endpoint") == "login" or str(record.get("path", "")).startswith(
        "/session/v1/login-request"
    )


def _login_context(login: dict[str, Any]) -> Context:
    query = parse_qs(urlsplit(str(login.get("path") or "")).query)

    def first(name: str) -> str | None:
        values = query.get(name)
        return values[0] if values else None

    return Context(
        first("databaseName"), first("schemaName"), first("warehouse"), first("roleName")
    )


def _recorded_accounts(
    start: dict[str, Any] | None, login: dict[str, Any] | None
) -> tuple[str, ...]:
    """The upstream account on record; failing that, the account the client logged in to."""
    accounts = [
        value
        for value in (_upstream(start, "account"), (start or {}).get("account"))
        if isinstance(value, str) and value
    ]
    if not accounts and login is not None:
        data = _body_json(login).get("data")
        name = data.get("ACCOUNT_NAME") if isinstance(data, dict) else None
        if isinstance(name, str) and name and name not in REDACTION_MARKERS:
            accounts.append(name)
    return tuple(dict.fromkeys(accounts))


def _upstream(start: dict[str, Any] | None, name: str) -> str | None:
    upstream = (start or {}).get("upstream")
    return coerce.text(upstream.get(name)) if isinstance(upstream, dict) else None


def _body_json(record: dict[str, Any]) -> dict[str, Any]:
    body = record.get("body")
    if isinstance(body, dict) and isinstance(body.get("json"), dict):
        return body["json"]
    return {}


def _first_ts(records: list[dict[str, Any]]) -> float | None:
    for record in records:
        ts = coerce.number(record.get("ts"))
        if ts is not None:
            return ts
    return None
