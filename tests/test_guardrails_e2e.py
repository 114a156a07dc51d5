"""Guardrails end to end: the real connector, a real gateway, fakesnow behind a strict upstream.

The strict upstream (tests/strict_upstream.py) records every request it
receives, so a refused statement is shown not to have reached Snowflake and an
allowed one to have reached it.
"""

from __future__ import annotations

import http.client
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from snowflake.connector import DatabaseError, ProgrammingError

from hoopgw.recorder.secrets import new_token_key
from tests import stack
from tests.bodies import GUARDRAILS_POLICY
from tests.strict_upstream import StrictUpstream

ACCOUNT = "gr12345"
SERVICE_USER = "svc_hoopgw"
TOKEN_KEY_ENV = "HOOPGW_TEST_TOKEN_KEY"
POLICY_CODE = 399003
GROUPS = ["readers", "agents", "analysts", "tolerant"]


@pytest.fixture(scope="module")
def strict(key_pair_strict: StrictUpstream) -> StrictUpstream:
    return key_pair_strict


def gateway_options(issuer: str, key: Path, policy: Path) -> dict[str, Any]:
    return {
        "hoopgw_oidc_issuer": issuer,
        "hoopgw_oidc_audience": "hoopgw",
        "hoopgw_allowed_groups": GROUPS,
        "hoopgw_role_map": [f"{group}={group.upper()}" for group in GROUPS],
        "hoopgw_upstream_account": ACCOUNT,
        "hoopgw_upstream_user": SERVICE_USER,
        "hoopgw_upstream_secondary_roles": "none",
        "hoopgw_upstream_private_key": f"file:{key}",
        "hoopgw_upstream_password": "",
        "hoopgw_upstream_oauth_token": "",
        "hoopgw_token_key": f"env:{TOKEN_KEY_ENV}",
        "hoopgw_policy": str(policy),
        "hoopgw_policy_reload_ms": 100,
    }


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    return {TOKEN_KEY_ENV: new_token_key()}


@pytest.fixture(scope="module")
def gw(gateway_factory, strict, oidc, service_key, env, workdir: Path) -> stack.Gateway:
    policy = workdir / "guardrails-policy.toml"
    policy.write_text(GUARDRAILS_POLICY)
    return gateway_factory(
        strict.url, gateway_options(oidc.issuer, service_key, policy), env=env, name="gr-gw"
    )


@pytest.fixture(scope="module")
def database(gw, oidc, fakesnow_server) -> str:
    """A database with APP and PAYROLL schemas, made directly in fakesnow."""
    import snowflake.connector

    name = f"GR_{uuid.uuid4().hex[:8]}".upper()
    host, port = fakesnow_server.url.removeprefix("http://").rsplit(":", 1)
    with snowflake.connector.connect(
        account="fake", user="admin", password="x", host=host, port=int(port), protocol="http"
    ) as admin:
        cur = admin.cursor()
        cur.execute(f"create database {name}")
        for schema in ("APP", "PAYROLL"):
            cur.execute(f"create schema {name}.{schema}")
        cur.execute(f"create table {name}.APP.T (id int, v varchar)")
        cur.execute(f"create table {name}.APP.SECRETS (id int)")
        cur.execute(f"create table {name}.PAYROLL.EMP (id int, salary int)")
        cur.execute(f"insert into {name}.APP.T values (1, 'a'), (2, 'b')")
    return name


@pytest.fixture
def session(gw, oidc, connect, database):
    """`session(group, **connect_kwargs)` opens a connector session as a member of `group`."""

    def _open(group: str, **kwargs: Any):
        token = oidc.mint(f"{group}-{uuid.uuid4().hex[:6]}", groups=[group])
        kwargs.setdefault("database", database)
        kwargs.setdefault("schema", "APP")
        return connect(gw, token, **kwargs)

    return _open


def queries_since(strict: StrictUpstream, mark: int) -> list[str]:
    return [
        r.body.decode(errors="replace")
        for r in strict.received_since(mark)
        if r.path.startswith("/queries/v1/query-request")
    ]


def refused(strict: StrictUpstream, cursor: Any, sql: str, **kwargs: Any) -> str:
    """Run `sql`, expect the gateway's policy error, and that upstream never saw a query."""
    mark = strict.mark()
    with pytest.raises(ProgrammingError) as failure:
        cursor.execute(sql, **kwargs)
    assert failure.value.errno == POLICY_CODE, failure.value
    assert failure.value.sqlstate == "42501"
    assert queries_since(strict, mark) == []
    return failure.value.msg or ""


def forwarded(strict: StrictUpstream, cursor: Any, sql: str, **kwargs: Any) -> None:
    """Run `sql` and check it reached upstream; the upstream may still reject it."""
    mark = strict.mark()
    try:
        cursor.execute(sql, **kwargs)
    except ProgrammingError as error:
        assert error.errno != POLICY_CODE, error
    assert len(queries_since(strict, mark)) == 1


def changes(database: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"drop table {database}.APP.T", {}),
        (f"truncate table {database}.APP.T", {}),
        (f"grant select on table {database}.APP.T to role someone", {}),
        (f"delete from {database}.APP.T", {}),
        (f"create or replace table {database}.APP.T2 (x int)", {}),
        (f"select 1; drop table {database}.APP.T", {"num_statements": 2}),
    ]


def test_read_only_group_reads_and_is_refused_changes(session, strict, database) -> None:
    cursor = session("readers").cursor()
    assert cursor.execute("select id, v from t order by id").fetchall() == [(1, "a"), (2, "b")]
    for sql, kwargs in changes(database):
        message = refused(strict, cursor, sql, **kwargs)
        assert "Statement refused by hoopgw policy: rule 'readers-read-only'" in message
    last = refused(strict, cursor, f"select 1; drop table {database}.APP.T", num_statements=2)
    assert "is read-only and DROP can change data or privileges" in last
    assert "(statement 2 of 2; none of them ran)" in last
    assert cursor.execute("select count(*) from t").fetchone() == (2,)


def test_unrestricted_group_runs_the_same_statements(session, strict, database) -> None:
    cursor = session("analysts").cursor()
    cursor.execute(f"create table {database}.APP.SCRATCH (id int)")
    for sql, kwargs in changes(database):
        forwarded(strict, cursor, sql.replace(".APP.T", ".APP.SCRATCH"), **kwargs)


@pytest.mark.parametrize(
    ("statements", "denied"),
    [
        (["select * from {db}.payroll.emp"], "{db}.PAYROLL.EMP"),
        (["select * from {db}.PAYROLL.EMP"], "{db}.PAYROLL.EMP"),
        (['select * from "{db}"."PAYROLL"."EMP"'], "{db}.PAYROLL.EMP"),
        (['select * from "{db}"."payroll"."emp"'], "{db}.payroll.emp"),
        (["select * from {db_lower}.PayRoll.Emp"], "{db}.PAYROLL.EMP"),
        (["select * from payroll.emp"], "{db}.PAYROLL.EMP"),
        (["use database {db}", "select * from payroll.emp"], "{db}.PAYROLL.EMP"),
        (["use schema payroll"], "{db}.PAYROLL"),
        (["use schema {db}.app", "select * from secrets"], "{db}.APP.SECRETS"),
        (["use schema {db}.app; select * from secrets"], "{db}.APP.SECRETS"),
        (["use schema {db}.public", "use schema app", "select * from secrets"], "{db}.APP.SECRETS"),
    ],
)
def test_denied_objects_however_written(
    session, strict, database, statements: list[str], denied: str
) -> None:
    cursor = session("agents", schema="PUBLIC").cursor()
    values = {"db": database, "db_lower": database.lower()}
    *before, last = [sql.format(**values) for sql in statements]
    for sql in before:
        forwarded(strict, cursor, sql)
    count = last.count(";") + 1
    message = refused(strict, cursor, last, **({"num_statements": count} if count > 1 else {}))
    assert f"rule 'agents-guard' denies access to {denied.format(**values)}" in message


def test_object_bound_at_run_time_is_refused_where_objects_are_denied(
    session, strict, database
) -> None:
    sql = "select * from identifier(?)"
    name = f"{database}.APP.T"
    message = refused(strict, session("agents").cursor(), sql, params=(name,))
    assert "cannot tell whether ?.?.? is one of those objects" in message
    forwarded(strict, session("readers").cursor(), sql, params=(name,))


def test_sql_api_statement_is_refused(gw, oidc, strict, database) -> None:
    token = oidc.mint("api-reader", groups=["readers"])
    mark = strict.mark()
    connection = http.client.HTTPConnection(gw.host, gw.port, timeout=30)
    try:
        body = {"statement": f"drop table {database}.APP.T", "database": database}
        connection.request(
            "POST",
            "/api/v2/statements",
            json.dumps(body),
            {
                "Content-Type": "application/json",
                "Authorization": f"Bearer {token}",
                "X-Snowflake-Authorization-Token-Type": "OAUTH",
            },
        )
        answer = connection.getresponse()
        payload = json.loads(answer.read())
    finally:
        connection.close()
    assert answer.status == 422
    assert payload["code"] == str(POLICY_CODE)
    assert "rule 'readers-read-only' is read-only and DROP" in payload["message"]
    assert not [r for r in strict.received_since(mark) if r.path.startswith("/api/v2")]


def test_login_into_a_denied_schema_is_refused(session, database) -> None:
    with pytest.raises(DatabaseError) as failure:
        session("agents", schema="PAYROLL")
    assert failure.value.errno == POLICY_CODE
    assert f"rule 'agents-guard' denies access to {database}.PAYROLL" in (failure.value.msg or "")


def test_agents_guard_kinds_and_where(session, strict, database) -> None:
    cursor = session("agents").cursor()
    assert "rule 'agents-guard' denies DROP" in refused(strict, cursor, "drop table t")
    assert (
        f"rule 'agents-guard' requires a WHERE clause on DELETE FROM {database}.APP.T"
        in refused(strict, cursor, "delete from t where 1 = 1")
    )
    forwarded(strict, cursor, "delete from t where id = 99")
    forwarded(strict, cursor, "create or replace table app_copy (x int)")


def test_unparsable_statement_follows_the_configured_default(session, strict) -> None:
    unparsable = "select ) from t"
    message = refused(strict, session("agents").cursor(), unparsable)
    assert "rule 'agents-guard' refuses statements it cannot parse" in message
    forwarded(strict, session("tolerant").cursor(), unparsable)


def _wait(condition: Any, what: str) -> None:
    stack.wait_until(condition, 20, what)


def test_policy_reload(gateway_factory, strict, oidc, service_key, env, workdir, connect) -> None:
    policy = workdir / f"reload-{uuid.uuid4().hex[:6]}.toml"
    policy.write_text(GUARDRAILS_POLICY)
    gateway = gateway_factory(
        strict.url, gateway_options(oidc.issuer, service_key, policy), env=env
    )
    cursor = connect(gateway, oidc.mint("analyst-r", groups=["analysts"])).cursor()

    def select_refused() -> bool:
        try:
            cursor.execute("select 1")
        except ProgrammingError as error:
            assert error.errno == POLICY_CODE
            return True
        return False

    assert not select_refused()
    policy.write_text(
        GUARDRAILS_POLICY
        + '[[rule]]\nname = "no-select"\ngroups = ["analysts"]\ndeny_kinds = ["SELECT"]\n'
    )
    _wait(select_refused, "the new rule to take effect")
    assert "hoopgw: policy reloaded from" in gateway.log()

    policy.write_text(
        GUARDRAILS_POLICY + '[[rule]]\nname = "broken"\ngroups = ["analysts"]\nnope = 1\n'
    )
    _wait(lambda: "policy change refused" in gateway.log(), "the broken policy to be refused")
    assert "rule 'broken': nope: unknown key" in gateway.log()
    assert select_refused()

    policy.write_text(GUARDRAILS_POLICY)
    _wait(lambda: not select_refused(), "the restored policy to take effect")


def test_missing_policy_file_stops_startup(fakesnow_server, workdir: Path) -> None:
    home = workdir / "gr-missing"
    argv = stack.gateway_argv(
        fakesnow_server.url,
        stack.free_port(),
        {"hoopgw_policy": str(home / "absent.toml")},
        confdir=home / "conf",
    )
    proc = stack.Proc("gateway", argv, home / "gateway.log", cwd=workdir).start()
    assert proc.process is not None
    assert proc.process.wait(timeout=30) == 1
    assert f"hoopgw_policy: {home / 'absent.toml'} does not exist" in proc.log()


def recorded(store: Path) -> list[dict[str, Any]]:
    """Every record in the gateway's local store so far."""
    from hoopgw.recorder.segment import decode_segment
    from hoopgw.recorder.store import LocalStore

    archive = LocalStore(store)
    records: list[dict[str, Any]] = []
    for key in archive.list(""):
        if key.endswith(".jsonl.zst"):
            records.extend(decode_segment(archive.get(key)))
    return records


def test_decisions_are_recorded(gw, session, strict, database) -> None:
    connection = session("readers")
    cursor = connection.cursor()
    cursor.execute("select id from t where id = 1")
    refused(strict, cursor, f"drop table {database}.APP.T")
    connection.close()

    def decisions() -> list[dict[str, Any]]:
        records = recorded(gw.workdir / "store")
        return [r["guardrail"] for r in records if isinstance(r.get("guardrail"), dict)]

    _wait(
        lambda: any(d["decision"] == "block" for d in decisions()),
        "the refused statement to be recorded",
    )
    found = decisions()
    blocked = next(d for d in found if d["decision"] == "block")
    assert blocked["rule"] == "readers-read-only"
    assert blocked["reason"].startswith("rule 'readers-read-only' is read-only and DROP")
    assert blocked["kinds"] == ["DROP"]
    assert blocked["objects"] == [f"{database}.APP.T"]
    assert any(d["decision"] == "allow" and d["objects"] == [f"{database}.APP.T"] for d in found)


# --- issue 17: guardrails without known bypasses ----------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "execute immediate 'use role accountadmin'",
        "execute immediate $$use secondary roles all$$",
        "begin use role accountadmin; end",
        "begin execute immediate 'use secondary roles all'; end",
        "alter user svc_hoopgw set default_secondary_roles = ('ALL')",
        "create procedure p() returns int language sql as $$ begin use role r; return 1; end $$",
    ],
)
def test_role_lock_reaches_nested_statements(session, strict, sql: str) -> None:
    """A caller with no policy rule at all: the built-in lock alone refuses these."""
    message = refused(strict, session("analysts").cursor(), sql)
    assert "hoopgw-built-in does not let a session change" in message


@pytest.mark.parametrize(
    "condition",
    ["id = 1 or 1 = 1", "1 = 1 or id = 1", "id = id", "id >= id", "v is null or v is not null"],
)
def test_require_where_refuses_tautologies(session, strict, condition: str) -> None:
    cursor = session("agents").cursor()
    message = refused(strict, cursor, f"delete from t where {condition}")
    assert "rule 'agents-guard' requires a WHERE clause on DELETE FROM" in message
    message = refused(strict, cursor, "merge into t using t s on 1 = 1 when matched then delete")
    assert "rule 'agents-guard' requires MERGE INTO" in message


def test_search_path_spellings_are_refused(session, strict) -> None:
    cursor = session("agents").cursor()
    for value in ("$$payroll$$", "'pay' || 'roll'", "payroll"):
        message = refused(strict, cursor, f"alter session set search_path = {value}")
        assert "*.PAYROLL.*" in message


def test_sql_api_body_with_a_repeated_statement_is_refused(gw, oidc, strict, database) -> None:
    token = oidc.mint("api-agent", groups=["agents"])
    mark = strict.mark()
    statements = f'"statement": "select 1", "statement": "drop table {database}.APP.T"'
    body = "{" + statements + f', "database": "{database}"' + "}"
    connection = http.client.HTTPConnection(gw.host, gw.port, timeout=30)
    try:
        connection.request(
            "POST",
            "/api/v2/statements",
            body,
            {
                "Content-Type": "application/json",
                "Authorization": f"Bearer {token}",
                "X-Snowflake-Authorization-Token-Type": "OAUTH",
            },
        )
        answer = connection.getresponse()
        payload = json.loads(answer.read())
    finally:
        connection.close()
    assert answer.status >= 400
    assert "repeats the key 'statement'" in payload["message"]
    assert not [r for r in strict.received_since(mark) if r.path.startswith("/api/v2")]
