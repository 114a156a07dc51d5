"""Replay's pure parts: loading a recorded session, planning, comparing, targets, output.

`SessionBuilder` writes records in the shape the gateway records them, for the
cases a live run cannot produce on demand (a blocked statement, an answer lost
with the upstream connection, a result cut by the body limit);
tests/test_replay_engine.py replays them into a real sandbox.
"""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from hoopgw.cli.common import parse_when
from hoopgw.recorder.ids import new_session_id
from hoopgw.recorder.listing import object_matches
from hoopgw.recorder.session import load_session, normalize_error_code
from hoopgw.replay.compare import Observation, compare, compare_rows, result_is_ordered
from hoopgw.replay.engine import Verdict, bindings_to_params, dry_run, plan_replay
from hoopgw.replay.render import format_table, render_report
from hoopgw.replay.target import (
    RecordedAccountRefused,
    TargetError,
    check_not_recorded_account,
    load_named_connection,
    normalize_account,
    resolve_target,
)

_COLUMN_DEFAULTS = {
    "database": "",
    "schema": "",
    "table": "",
    "nullable": True,
    "byteLength": None,
    "length": None,
    "precision": None,
    "scale": None,
    "collation": None,
}
_TYPES = {
    "fixed": {"precision": 38, "scale": 0},
    "text": {"length": 16777216, "byteLength": 16777216},
    "real": {},
    "boolean": {},
    "date": {},
}


def column(name: str, type_name: str) -> dict[str, Any]:
    return {**_COLUMN_DEFAULTS, **_TYPES.get(type_name, {}), "name": name, "type": type_name}


def result(
    columns: list[tuple[str, str]], rows: list[list[str | None]], *, type_id: int = 4096
) -> dict[str, Any]:
    """A Snowflake `data` object with a JSON rowset (values as Snowflake's JSON strings)."""
    return {
        "rowtype": [column(name, type_name) for name, type_name in columns],
        "rowset": rows,
        "total": len(rows),
        "returned": len(rows),
        "queryResultFormat": "json",
        "statementTypeId": type_id,
        "queryId": str(uuid.uuid4()),
    }


def status(message: str = "Statement executed successfully.", *, type_id: int = 24576) -> dict:
    return result([("status", "text")], [[message]], type_id=type_id)


def inserted(count: int) -> dict[str, Any]:
    return result([("number of rows inserted", "fixed")], [[str(count)]], type_id=12544)


def failure(code: str, message: str, sql_state: str = "42S02") -> dict[str, Any]:
    return {
        "success": False,
        "code": code,
        "message": message,
        "data": {"errorCode": code, "sqlState": sql_state},
    }


class SessionBuilder:
    """Records of one session, appended flow by flow like the gateway writes them."""

    def __init__(
        self,
        *,
        account: str = "prod_account",
        context: dict[str, str | None] | None = None,
        caller: dict[str, Any] | None = None,
    ) -> None:
        self.session_id = new_session_id()
        self.clock = itertools.count(1_800_000_000, 1)
        self.caller = caller or {
            "subject": "agent-1",
            "email": "agent-1@example.com",
            "groups": ["agents"],
            "role": "AGENT",
            "issuer": "https://idp.example.com",
        }
        self.records: list[dict[str, Any]] = [
            self._record(
                "session_start",
                upstream={"host": f"{account}.snowflakecomputing.com", "account": account},
                client={"address": "127.0.0.1:5000", "application": "PythonConnector 4.8.1"},
                context=context or {"database": None, "schema": None, "warehouse": None},
            )
        ]

    def _record(self, kind: str, **fields: Any) -> dict[str, Any]:
        return {
            "kind": kind,
            "session_id": self.session_id,
            "ts": float(next(self.clock)),
            "caller": self.caller,
            **fields,
        }

    def statement(
        self,
        sql: str,
        answer: dict[str, Any] | None,
        *,
        bindings: dict[str, Any] | None = None,
        guardrail: dict[str, Any] | None = None,
        refusal: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
        lost: bool = False,
        async_exec: bool = False,
        trimmed: dict[str, int] | None = None,
    ) -> str:
        """A query flow; `answer` is the `data` of a success or a whole failure document."""
        flow = str(uuid.uuid4())
        request_body = {"sqlText": sql, "asyncExec": async_exec, "parameters": {}, **(body or {})}
        if bindings:
            request_body["bindings"] = bindings
        request = self._record(
            "refusal" if refusal else "request",
            flow_id=flow,
            endpoint="query",
            method="POST",
            path=f"/queries/v1/query-request?requestId={uuid.uuid4()}",
            sql=sql,
            body={"size": 100, "json": request_body},
        )
        if bindings:
            request["bindings"] = bindings
        if guardrail:
            request["guardrail"] = guardrail
        if refusal:
            request["refusal"] = refusal
        self.records.append(request)
        if lost:
            self.records.append(self._record("error", flow_id=flow, error={"message": "reset"}))
            return flow
        if answer is None:
            return flow
        document = answer if answer.get("success") is False else {"success": True, "data": answer}
        response_body: dict[str, Any] = {"size": 1000, "json": document}
        if trimmed:
            response_body.update(truncated=True, trimmed=trimmed, sha256="0" * 64)
        self.records.append(
            self._record(
                "response",
                flow_id=flow,
                endpoint="query",
                status=200,
                duration_ms=5.0,
                body=response_body,
            )
        )
        return flow

    def end(self) -> list[dict[str, Any]]:
        self.records.append(self._record("session_end", reason="logout"))
        return self.records


GUARDRAIL_BLOCK = {
    "decision": "block",
    "rule": "agents-guard",
    "reason": "DROP is denied for agents",
    "kinds": ["DROP"],
    "objects": ["DB.APP.ORDERS"],
}


def mixed_session() -> SessionBuilder:
    session = SessionBuilder(context={"database": "DB", "schema": None, "warehouse": "WH"})
    session.statement("use schema app", status())
    session.statement(
        "insert into orders values (?, ?)",
        inserted(2),
        bindings={
            "1": {"type": "FIXED", "value": ["1", "2"]},
            "2": {"type": "TEXT", "value": ["a", None]},
        },
    )
    session.statement(
        "drop table orders",
        None,
        guardrail=GUARDRAIL_BLOCK,
        refusal={"by": "guardrails", "reason": "DROP is denied", "code": 399003},
    )
    session.statement("select * from missing", failure("002003", "Table MISSING does not exist"))
    session.statement("create user bob password = '[REDACTED]'", status())
    session.statement("select 1", None, lost=True)
    session.statement(
        "select id from orders", result([("ID", "fixed")], [["1"]]), trimmed={"data.rowset": 5000}
    )
    return session


# --- loading ------------------------------------------------------------------------


def test_load_session_pairs_flows_and_tracks_context():
    builder = mixed_session()
    session = load_session(builder.session_id, builder.end())

    assert [s.number for s in session.statements] == [1, 2, 3, 4, 5, 6, 7]
    assert session.upstream_accounts == ("prod_account",)
    assert session.user == "agent-1@example.com" and session.client_app == "PythonConnector 4.8.1"
    use, insert, drop, missing, secret, lost, trimmed = session.statements
    assert use.context.database == "DB" and use.context.schema is None
    assert insert.context.schema == "APP" and insert.context.warehouse == "WH"
    assert insert.objects == ("DB.APP.ORDERS",)
    assert insert.outcome.row_count == 2
    assert drop.blocked == "blocked by guardrail rule agents-guard: DROP is denied for agents"
    assert missing.outcome.success is False and missing.outcome.error_code == "002003"
    assert secret.unreplayable == "the recorded SQL has a credential literal masked"
    assert lost.outcome.success is None and lost.outcome.transport_error == "reset"
    assert trimmed.outcome.result is None
    assert trimmed.outcome.rows_note == "rows cut by the recorder's body limit"
    assert use.outcome.result is not None and use.outcome.rows_note is None


def test_refusal_without_guardrail_is_blocked_too():
    builder = SessionBuilder()
    builder.statement("select 1", None, refusal={"by": "recording", "reason": "the spool is full"})
    session = load_session(builder.session_id, builder.end())
    assert session.statements[0].blocked == "refused by recording: the spool is full"


def test_bind_stage_named_bindings_and_file_transfers_are_not_replayable():
    builder = SessionBuilder()
    builder.statement("insert into t values (?)", inserted(1000), body={"bindStage": "@stage/x"})
    builder.statement(
        "select :a",
        result([("A", "fixed")], [["1"]]),
        bindings={"a": {"type": "FIXED", "value": "1"}},
    )
    builder.statement("put file:///tmp/data.csv @my_stage", status())
    first, second, put = load_session(builder.session_id, builder.end()).statements
    assert first.unreplayable == "its bind values were uploaded to a stage and are not on record"
    assert second.unreplayable == "named bindings cannot be replayed through the connector"
    assert put.unreplayable is not None and put.unreplayable.startswith("PUT moves files")


def test_async_statement_takes_its_result_from_the_later_fetch():
    builder = SessionBuilder()
    builder.statement("select count(*) from t", {"queryId": "q-1"}, async_exec=True)
    fetch_flow = str(uuid.uuid4())
    builder.records.append(
        builder._record(
            "request",
            flow_id=fetch_flow,
            endpoint="result",
            method="GET",
            path="/queries/q-1/result",
        )
    )
    builder.records.append(
        builder._record(
            "response",
            flow_id=fetch_flow,
            status=200,
            body={"size": 10, "json": {"success": True, "data": result([("C", "fixed")], [["7"]])}},
        )
    )
    statement = load_session(builder.session_id, builder.end()).statements[0]
    assert statement.is_async
    assert statement.outcome.columns == ("C",) and statement.outcome.row_count == 1
    assert statement.outcome.query_id == "q-1"


def test_recorded_account_falls_back_to_the_login_account():
    builder = SessionBuilder()
    builder.records[0]["upstream"] = {"host": "gw"}
    builder.records.insert(
        1,
        builder._record(
            "request",
            flow_id="login",
            endpoint="login",
            method="POST",
            path="/session/v1/login-request?databaseName=SALES&roleName=ANALYST",
            body={"size": 10, "json": {"data": {"ACCOUNT_NAME": "xy12345", "TOKEN": "[REDACTED]"}}},
        ),
    )
    builder.records[0]["context"] = {}
    session = load_session(builder.session_id, builder.end())
    assert session.upstream_accounts == ("xy12345",)
    assert session.context.database == "SALES" and session.context.role == "ANALYST"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("002003", "002003"),
        (2003, "002003"),
        ("2003", "002003"),
        ("390100", "390100"),
        ("XX000", "XX000"),
        (None, None),
        ("", None),
    ],
)
def test_error_codes_normalize(raw, expected):
    assert normalize_error_code(raw) == expected


# --- planning -----------------------------------------------------------------------


def test_plan_never_runs_blocked_or_masked_and_honours_read_only():
    builder = mixed_session()
    session = load_session(builder.session_id, builder.end())

    plan = {p.statement.number: p for p in plan_replay(session)}
    read_only = {p.statement.number: p for p in plan_replay(session, read_only=True)}

    assert [n for n, p in plan.items() if p.run] == [1, 2, 4, 6, 7]
    assert plan[3].reason.startswith("blocked by guardrail")
    assert [n for n, p in read_only.items() if p.run] == [1, 4, 6, 7]
    assert read_only[2].reason == "--read-only: INSERT can change data"


def test_dry_run_refuses_the_recorded_account_and_lists_the_plan():
    builder = mixed_session()
    session = load_session(builder.session_id, builder.end())
    production = resolve_target(account="PROD_ACCOUNT.us-east-1", user="x")
    with pytest.raises(RecordedAccountRefused):
        dry_run(session, production)
    report = dry_run(session, resolve_target(account="sandbox", user="x"), read_only=True)
    assert report.counts()["would run"] == 4 and report.counts()["skipped"] == 3
    text = render_report(report, width=100)
    assert "blocked by guardrail rule agents-guard" in text
    assert "4 would run, 3 skipped" in text.splitlines()[-1]


# --- bindings -----------------------------------------------------------------------


def test_bindings_keep_type_and_wire_value():
    params = bindings_to_params(
        {
            "2": {"type": "TEXT", "value": None},
            "1": {"type": "FIXED", "value": "12"},
            "3": {"type": "DATE", "value": ["86400000", "0"]},
        }
    )
    assert params == [("FIXED", "12"), ("TEXT", None), [("DATE", "86400000"), ("DATE", "0")]]
    assert bindings_to_params(None) is None
    with pytest.raises(ValueError, match="binding 2 is missing"):
        bindings_to_params(
            {"1": {"type": "TEXT", "value": "a"}, "3": {"type": "TEXT", "value": "b"}}
        )


def test_connector_sends_the_recorded_bindings_unchanged():
    from snowflake.connector.connection import SnowflakeConnection

    connection = SnowflakeConnection.__new__(SnowflakeConnection)
    from snowflake.connector.converter import SnowflakeConverter

    connection.converter = SnowflakeConverter()
    recorded = {
        "1": {"type": "FIXED", "value": "1"},
        "2": {"type": "TIMESTAMP_NTZ", "value": "1700000000000000000"},
        "3": {"type": "TEXT", "value": ["a", None]},
    }
    assert connection._process_params_qmarks(bindings_to_params(recorded)) == recorded


# --- comparison ---------------------------------------------------------------------


def test_outcome_difference_hides_the_rest():
    recorded = Observation(True, row_count=3, columns=("A",))
    replayed = Observation(False, error_code="002003", message="Table missing")
    (difference,) = compare(recorded, replayed, ordered=False)
    assert difference.aspect == "outcome"
    assert str(difference) == "outcome: recorded ok, replay error 002003 (Table missing)"


def test_failures_compare_on_error_code():
    assert compare(Observation(False, "2003"), Observation(False, "2003"), ordered=False) == []
    (difference,) = compare(Observation(False, "2003"), Observation(False, "1003"), ordered=False)
    assert str(difference) == "error code: recorded 2003, replay 1003"


def test_successes_compare_count_columns_and_rows():
    recorded = Observation(True, row_count=2, columns=("A", "B"), rows=[(1, "x"), (2, "y")])
    replayed = Observation(
        True, row_count=3, columns=("A", "C"), rows=[(1, "x"), (2, "z"), (3, "w")]
    )
    aspects = [d.aspect for d in compare(recorded, replayed, ordered=False)]
    assert aspects == ["row_count", "columns", "rows"]


def test_rows_order_matters_only_when_ordered():
    rows = [(1,), (2,)]
    assert compare_rows(rows, list(reversed(rows)), ordered=False) is None
    difference = compare_rows(rows, list(reversed(rows)), ordered=True)
    assert difference is not None and "different order" in difference.detail
    missing = compare_rows([(1,), (1,), (2,)], [(1,), (2,)], ordered=False)
    assert missing is not None and missing.detail.startswith("rows: 1 recorded row(s) not returned")


def test_unknown_recorded_outcome_is_never_a_difference():
    assert compare(Observation(None), Observation(False, "1"), ordered=False) == []


@pytest.mark.parametrize(
    ("sql", "ordered"),
    [
        ("select * from t order by id", True),
        ("select * from t", False),
        ("select * from (select * from t order by id)", False),
        ("use db; select a from t order by a desc", True),
        ("select a from t union all select b from u order by 1", True),
        ("not sql at all ((", False),
    ],
)
def test_result_is_ordered(sql, ordered):
    assert result_is_ordered(sql) is ordered


# --- targets ------------------------------------------------------------------------


def write_private(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o600)


def test_named_connection_is_found_like_snowflake_tools_find_it(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("SNOWFLAKE_HOME", str(home))
    monkeypatch.delenv("SNOWFLAKE_CONNECTIONS", raising=False)
    write_private(home / "config.toml", '[connections.sandbox]\naccount = "from_config"\n')
    params, source = load_named_connection("sandbox")
    assert params == {"account": "from_config"} and "config.toml" in source

    # connections.toml replaces config.toml's [connections], as in the connector
    write_private(home / "connections.toml", '[sandbox]\naccount = "sbx"\nport = 8443\n')
    params, _ = load_named_connection("sandbox")
    assert params == {"account": "sbx", "port": 8443}

    with pytest.raises(TargetError, match=r"no connection named 'prod' .*known: sandbox"):
        load_named_connection("prod")


def test_connection_file_writable_by_others_is_refused(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("SNOWFLAKE_HOME", str(home))
    (home / "connections.toml").write_text('[sandbox]\naccount = "sbx"\n')
    (home / "connections.toml").chmod(0o666)
    with pytest.raises(TargetError, match="writable by group or others"):
        load_named_connection("sandbox")


def test_a_connection_file_others_may_read_is_one_line_naming_the_file(
    tmp_path, monkeypatch, recwarn
):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("SNOWFLAKE_HOME", str(home))
    monkeypatch.delenv("SNOWFLAKE_CONNECTIONS", raising=False)
    for skip in (
        "SF_SKIP_TOKEN_FILE_PERMISSIONS_VERIFICATION",
        "SKIP_TOKEN_FILE_PERMISSIONS_VERIFICATION",
    ):
        monkeypatch.delenv(skip, raising=False)
    monkeypatch.delenv("SF_SKIP_WARNING_FOR_READ_PERMISSIONS_ON_CONFIG_FILE", raising=False)
    connections = home / "connections.toml"
    connections.write_text('[sandbox]\naccount = "sbx"\n')
    connections.chmod(0o644)
    target = resolve_target(connection="sandbox")
    assert target.source == f"connection 'sandbox' from {connections}"
    assert target.notes == (
        f"{connections} may be read by others (mode 0644): run chmod 0600 {connections}",
    )
    assert not [w for w in recwarn if "permissions" in str(w.message)]

    connections.chmod(0o600)
    assert resolve_target(connection="sandbox").notes == ()


def test_a_snowflake_home_that_does_not_exist_is_said_with_the_file_read_instead(
    tmp_path, monkeypatch
):
    missing = tmp_path / "no-such-home"
    fallback = tmp_path / "xdg" / "snowflake"
    fallback.mkdir(parents=True)
    write_private(fallback / "config.toml", '[connections.sandbox]\naccount = "fallback"\n')
    monkeypatch.setenv("SNOWFLAKE_HOME", str(missing))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("SNOWFLAKE_CONNECTIONS", raising=False)
    target = resolve_target(connection="sandbox")
    assert target.params["account"] == "fallback"
    assert target.source == f"connection 'sandbox' from {fallback / 'config.toml'}"
    assert target.notes == (
        f"$SNOWFLAKE_HOME is {missing}, which does not exist; the connector reads {fallback} "
        "instead",
    )
    with pytest.raises(TargetError, match=r"known: sandbox\); \$SNOWFLAKE_HOME is .* not exist"):
        resolve_target(connection="prod")


def test_explicit_options_override_the_connection_and_secrets_stay_hidden(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("SNOWFLAKE_HOME", str(home))
    write_private(
        home / "connections.toml", '[sandbox]\naccount = "sbx"\nuser = "u"\npassword = "p1"\n'
    )
    monkeypatch.setenv("SANDBOX_PW", "s3cret-from-env")

    target = resolve_target(
        connection="sandbox", user="replayer", password_ref="env:SANDBOX_PW", port=443
    )

    assert target.params["password"] == "s3cret-from-env"
    assert target.params["user"] == "replayer" and target.params["port"] == 443
    assert "s3cret" not in repr(target.describe()) and "p1" not in repr(target.describe())
    assert target.describe()["source"].startswith("connection 'sandbox' from ")


def test_private_key_reference_loads_a_key_for_key_pair_login(tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "key.p8"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"phrase"),
        )
    )
    (tmp_path / "phrase").write_text("phrase\n")
    target = resolve_target(
        account="sbx",
        user="replayer",
        private_key_ref=f"file:{pem}",
        private_key_passphrase_ref=f"file:{tmp_path / 'phrase'}",
    )
    assert target.params["authenticator"] == "SNOWFLAKE_JWT"
    assert target.params["private_key"].key_size == 2048
    with pytest.raises(TargetError, match="wrong or missing passphrase"):
        resolve_target(account="sbx", user="r", private_key_ref=f"file:{pem}")


def test_target_needs_an_account_and_readable_secrets():
    with pytest.raises(TargetError, match="no sandbox given"):
        resolve_target(user="replayer")
    with pytest.raises(TargetError, match="--password-ref: environment variable NOPE_NOT_SET"):
        resolve_target(account="sbx", password_ref="env:NOPE_NOT_SET")


@pytest.mark.parametrize(
    ("target", "host", "refused"),
    [
        ("PROD_ACCOUNT", None, True),
        ("prod_account.eu-west-1.aws", None, True),
        ("sandbox", "prod_account.snowflakecomputing.com", True),
        ("sandbox", "sandbox.snowflakecomputing.com", False),
        ("prod_account_sandbox", None, False),
    ],
)
def test_recorded_account_check(target, host, refused):
    resolved = resolve_target(account=target, host=host)
    if refused:
        with pytest.raises(RecordedAccountRefused, match="--allow-recorded-account"):
            check_not_recorded_account(resolved, ["prod_account"])
    else:
        check_not_recorded_account(resolved, ["prod_account"])
    assert normalize_account("xy12345.us-east-1.snowflakecomputing.com") == "XY12345"


# --- parsing and output -------------------------------------------------------------


def test_parse_when():
    now = datetime(2026, 11, 24, 12, 30, tzinfo=UTC)
    assert parse_when("2026-11-01", now=now) == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_when("2026-11-01T14:30+02:00", now=now) == datetime(
        2026, 11, 1, 12, 30, tzinfo=UTC
    )
    assert parse_when("90m", now=now) == now - timedelta(minutes=90)
    assert parse_when("7d ago", now=now) == now - timedelta(days=7)
    assert parse_when("yesterday", now=now) == datetime(2026, 11, 23, tzinfo=UTC)
    with pytest.raises(ValueError, match="is not a time"):
        parse_when("last tuesday", now=now)


@pytest.mark.parametrize(
    ("pattern", "matched"),
    [
        ("orders", True),
        ("APP.ORDERS", True),
        ("db.app.orders", True),
        ("*.APP.*", True),
        ("DERS", False),
        ("*.PAYROLL.*", False),
        ("", False),
    ],
)
def test_object_matches(pattern, matched):
    assert object_matches(pattern, ["DB.APP.ORDERS"]) is matched


def test_format_table_aligns_and_cuts_the_last_column():
    text = format_table(["#", "SQL"], [[1, "select\n  1"], [10, "x" * 200]], width=40)
    lines = text.splitlines()
    assert lines[0] == "#   SQL"
    assert lines[1] == " 1  select 1"
    assert len(lines[2]) == 40 and lines[2].endswith("...")


def test_report_verdicts_cover_every_statement():
    builder = mixed_session()
    report = dry_run(load_session(builder.session_id, builder.end()), None)
    assert {r.verdict for r in report.results} == {Verdict.WOULD_RUN, Verdict.SKIPPED}
    assert report.matched
