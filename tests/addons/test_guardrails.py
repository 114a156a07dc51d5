"""Guardrails: every statement checked against the group policy before it goes upstream."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from mitmproxy import exceptions, http
from mitmproxy.test import taddons

from hoopgw.addons import protocol
from hoopgw.addons.credentials import UpstreamCredentials
from hoopgw.addons.flowstate import Caller, FlowState
from hoopgw.addons.guardrails import Guardrails
from tests.addons import (
    LOGIN_PATH,
    QUERY_PATH,
    STATEMENTS_PATH,
    classified,
    error_of,
    snowflake_flow,
)
from tests.bodies import GUARDRAILS_POLICY, login_body, query_body

POLICY_CODE = str(protocol.CODE_GATEWAY_POLICY)
SESSION = "0190f3c4-7b1a-7c2e-9d4f-1a2b3c4d5e6f"


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(GUARDRAILS_POLICY)
    return path


def caller(*groups: str) -> Caller:
    return Caller("ada", "ada@example.com", groups, "AGENT")


def statement(
    sql: str,
    groups: tuple[str, ...] | None = ("agents",),
    *,
    path: str = QUERY_PATH,
    session_id: str | None = SESSION,
    **fields: object,
) -> tuple[http.HTTPFlow, FlowState]:
    """A query as Authentication leaves it: classified, with its verified caller."""
    body = {"statement": sql} if path.startswith(STATEMENTS_PATH) else query_body(sql, **fields)
    flow = snowflake_flow("POST", path, body)
    state = classified(flow)
    state.caller = caller(*groups) if groups is not None else None
    state.session_id = session_id
    return flow, state


def refused_message(flow: http.HTTPFlow, state: FlowState) -> str:
    assert state.refusal is not None and state.refusal.source == "guardrails"
    assert state.guardrail is not None and state.guardrail["decision"] == "block"
    answer = error_of(flow)
    assert answer["code"] == POLICY_CODE
    return answer["message"]


# --- configuration ---------------------------------------------------------------------


def test_configure_loads_and_unloads_the_policy(policy_file: Path) -> None:
    guardrails = Guardrails()
    with taddons.context(guardrails) as tctx:
        tctx.configure(guardrails, hoopgw_policy=str(policy_file), hoopgw_policy_reload_ms=100)
        assert [rule.name for rule in guardrails.policy.rules] == [
            "readers-read-only",
            "agents-guard",
            "tolerant-parse",
        ]
        assert guardrails.reload_seconds == 0.1
        tctx.configure(guardrails, hoopgw_policy=None)
        assert guardrails.policy.rules == ()


@pytest.mark.parametrize(
    ("text", "option", "message"),
    [
        (None, {"hoopgw_policy": "{dir}/missing.toml"}, "does not exist"),
        ("[[rule]]\nname = 'r'\n", {"hoopgw_policy": "{file}"}, "groups: required"),
        (None, {"hoopgw_policy_reload_ms": 10}, "hoopgw_policy_reload_ms must be at least 50"),
    ],
    ids=["missing", "invalid", "reload-interval"],
)
def test_configure_refuses_a_policy_it_cannot_use(
    tmp_path: Path, text: str | None, option: dict, message: str
) -> None:
    path = tmp_path / "policy.toml"
    if text is not None:
        path.write_text(text)
    values = {
        name: value.format(dir=tmp_path, file=path) if isinstance(value, str) else value
        for name, value in option.items()
    }
    guardrails = Guardrails()
    with (
        taddons.context(guardrails) as tctx,
        pytest.raises(exceptions.OptionsError, match=message),
    ):
        tctx.configure(guardrails, **values)


async def test_a_changed_policy_file_is_reloaded_and_a_broken_one_ignored(
    policy_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    guardrails = Guardrails()
    with taddons.context(guardrails) as tctx:
        tctx.configure(guardrails, hoopgw_policy=str(policy_file), hoopgw_policy_reload_ms=50)
        guardrails.running()
        try:
            policy_file.write_text(
                GUARDRAILS_POLICY + '[[rule]]\nname = "no-select"\ngroups = ["a"]\n'
                'deny_kinds = ["SELECT"]\n'
            )
            for _ in range(100):
                if len(guardrails.policy.rules) == 4:
                    break
                await asyncio.sleep(0.02)
            assert guardrails.policy.rules[-1].name == "no-select"
            policy_file.write_text("[[rule]]\nbroken = true\n")
            for _ in range(250):
                if "policy change refused" in caplog.text:
                    break
                await asyncio.sleep(0.02)
            assert "policy change refused, the previous policy stays" in caplog.text
            assert len(guardrails.policy.rules) == 4
            guardrails.running()  # once running, the watcher is not started twice
        finally:
            guardrails.done()
            guardrails.done()


async def test_the_watcher_waits_while_no_policy_is_set() -> None:
    guardrails = Guardrails()
    with taddons.context(guardrails) as tctx:
        tctx.configure(guardrails, hoopgw_policy_reload_ms=50)
        guardrails.running()
        await asyncio.sleep(0.15)
        guardrails.done()
        assert guardrails.policy.rules == ()


# --- statements ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "groups", "reason"),
    [
        ("drop table sales.public.orders", ("agents",), "rule 'agents-guard' denies DROP"),
        (
            "delete from sales.public.orders",
            ("agents",),
            "rule 'agents-guard' requires a WHERE clause on DELETE FROM SALES.PUBLIC.ORDERS",
        ),
        (
            "select * from hr.payroll.salaries",
            ("agents",),
            "rule 'agents-guard' denies access to HR.PAYROLL.SALARIES (*.PAYROLL.*)",
        ),
        (
            "insert into sales.public.orders values (1)",
            ("readers",),
            "rule 'readers-read-only' is read-only and INSERT can change data or privileges",
        ),
        (
            "selec nonsense ((",
            ("agents",),
            "rule 'agents-guard' refuses statements it cannot parse",
        ),
    ],
    ids=["deny-kinds", "require-where", "deny-objects", "read-only", "unparsable"],
)
async def test_policy_refusals(policy_file: Path, sql: str, groups: tuple, reason: str) -> None:
    guardrails = Guardrails()
    with taddons.context(guardrails) as tctx:
        tctx.configure(guardrails, hoopgw_policy=str(policy_file))
        flow, state = statement(sql, groups)
        await guardrails.request(flow)
        message = refused_message(flow, state)
        assert message.startswith(f"Statement refused by hoopgw policy: {reason}")
        assert error_of(flow)["data"]["sqlState"] == "42501"
        assert "guardrails" in state.passed
        assert state.statements is not None and len(state.statements) == 1


async def test_an_allowed_statement_goes_on_with_its_decision(policy_file: Path) -> None:
    guardrails = Guardrails()
    with taddons.context(guardrails) as tctx:
        tctx.configure(guardrails, hoopgw_policy=str(policy_file))
        flow, state = statement("delete from sales.public.orders where id = 1")
        await guardrails.request(flow)
        assert flow.response is None and state.refusal is None
        assert state.guardrail is not None
        assert state.guardrail["decision"] == "allow"
        assert state.guardrail["kinds"] == ["DELETE"]
        assert state.guardrail["objects"] == ["SALES.PUBLIC.ORDERS"]
        assert state.guardrail["policy"] is not None
        assert "guardrails" in state.passed


async def test_tolerant_rules_let_unparsable_statements_through(policy_file: Path) -> None:
    guardrails = Guardrails()
    with taddons.context(guardrails) as tctx:
        tctx.configure(guardrails, hoopgw_policy=str(policy_file))
        flow, _ = statement("selec nonsense ((", ("tolerant",))
        await guardrails.request(flow)
        assert flow.response is None


async def test_one_refused_statement_refuses_the_whole_request(policy_file: Path) -> None:
    guardrails = Guardrails()
    with taddons.context(guardrails) as tctx:
        tctx.configure(guardrails, hoopgw_policy=str(policy_file))
        flow, state = statement("select 1; drop table t; select 2")
        await guardrails.request(flow)
        message = refused_message(flow, state)
        assert message.endswith("(statement 2 of 3; none of them ran)")
        assert state.guardrail is not None and state.guardrail["statement_index"] == 1


async def test_a_long_statement_is_classified_off_the_event_loop(policy_file: Path) -> None:
    guardrails = Guardrails()
    with taddons.context(guardrails) as tctx:
        tctx.configure(guardrails, hoopgw_policy=str(policy_file))
        values = ", ".join(f"({n})" for n in range(4000))
        flow, state = statement(f"select * from (values {values}); drop table t")
        await guardrails.request(flow)
        assert "denies DROP" in refused_message(flow, state)


async def test_without_a_verified_caller_a_policy_refuses_every_statement(
    policy_file: Path,
) -> None:
    guardrails = Guardrails()
    with taddons.context(guardrails) as tctx:
        tctx.configure(guardrails, hoopgw_policy=str(policy_file))
        flow, state = statement("select 1", groups=None)
        await guardrails.request(flow)
        assert "knows no verified caller" in refused_message(flow, state)


@pytest.mark.parametrize(
    ("sql", "fields", "reason"),
    [
        ("use role accountadmin", {}, "does not let a session change its role"),
        ("use secondary roles all", {}, "does not let a session change its role"),
        ("select 1", {"parameters": {"search_path": "hr.payroll"}}, "set SEARCH_PATH"),
    ],
    ids=["use-role", "secondary-roles", "search-path"],
)
async def test_gateway_rules_hold_without_a_policy(sql: str, fields: dict, reason: str) -> None:
    guardrails = Guardrails()
    with taddons.context(guardrails):
        flow, state = statement(sql, **fields)
        await guardrails.request(flow)
        assert reason in refused_message(flow, state)
        assert state.guardrail is not None and state.guardrail["rule"] == "hoopgw-built-in"


async def test_sql_api_statements_are_refused_with_422(policy_file: Path) -> None:
    guardrails = Guardrails()
    with taddons.context(guardrails) as tctx:
        tctx.configure(guardrails, hoopgw_policy=str(policy_file))
        flow, state = statement("truncate table t", path=STATEMENTS_PATH)
        await guardrails.request(flow)
        assert flow.response is not None and flow.response.status_code == 422
        assert "denies TRUNCATE" in refused_message(flow, state)


async def test_requests_that_run_no_statement_pass_unchecked(policy_file: Path) -> None:
    guardrails = Guardrails()
    with taddons.context(guardrails) as tctx:
        tctx.configure(guardrails, hoopgw_policy=str(policy_file))
        heartbeat = snowflake_flow("POST", "/session/heartbeat")
        state = classified(heartbeat)
        await guardrails.request(heartbeat)
        assert heartbeat.response is None and state.guardrail is None
        assert "guardrails" in state.passed
        status = snowflake_flow("GET", f"{STATEMENTS_PATH}/01b2c3d4")
        state = classified(status)
        await guardrails.request(status)
        assert status.response is None and state.guardrail is None


async def test_flows_answered_or_never_classified_are_left_alone(policy_file: Path) -> None:
    guardrails = Guardrails()
    with taddons.context(guardrails) as tctx:
        tctx.configure(guardrails, hoopgw_policy=str(policy_file))
        loaded = snowflake_flow("POST", QUERY_PATH, query_body("drop table t"), live=False)
        await guardrails.request(loaded)
        assert loaded.response is None
        refused = snowflake_flow("GET", "/elsewhere")
        state = classified(refused)
        await guardrails.request(refused)
        assert state.refusal is not None and state.refusal.source == "protocol"
        assert "guardrails" not in state.passed


# --- logins ----------------------------------------------------------------------------


def login(groups: tuple[str, ...], query: str = "", **fields: object) -> tuple:
    flow = snowflake_flow("POST", LOGIN_PATH + query, login_body("t", **fields))
    state = classified(flow)
    state.caller = caller(*groups)
    state.context.database = flow.request.query.get("databaseName")
    state.context.schema = flow.request.query.get("schemaName")
    return flow, state


async def test_a_login_into_a_denied_schema_is_refused(policy_file: Path) -> None:
    guardrails = Guardrails()
    with taddons.context(guardrails) as tctx:
        tctx.configure(guardrails, hoopgw_policy=str(policy_file))
        flow, state = login(("agents",), "?databaseName=HR&schemaName=PAYROLL")
        await guardrails.request(flow)
        assert state.refusal is not None and state.refusal.source == "guardrails"
        answer = error_of(flow)
        assert answer["code"] == POLICY_CODE
        assert answer["message"].startswith("Login refused by hoopgw policy: rule 'agents-guard'")
        for query in ("?databaseName=SALES&schemaName=PUBLIC", "?databaseName=SALES", ""):
            flow, state = login(("agents",), query)
            await guardrails.request(flow)
            assert flow.response is None, query
            assert "guardrails" in state.passed


async def test_a_login_that_sets_the_search_path_is_refused() -> None:
    guardrails = Guardrails()
    with taddons.context(guardrails):
        flow, state = login(("agents",), SESSION_PARAMETERS={"SEARCH_PATH": "HR.PAYROLL"})
        await guardrails.request(flow)
        assert "does not let a login set SEARCH_PATH" in error_of(flow)["message"]
        assert state.guardrail is not None and state.guardrail["rule"] == "hoopgw-built-in"


# --- issue 17: guardrails without known bypasses ----------------------------------------


@pytest.mark.parametrize("value", [["drop table t"], {"sql": "drop table t"}, None, 3, True])
@pytest.mark.parametrize("path", [QUERY_PATH, STATEMENTS_PATH])
async def test_statement_fields_that_are_not_text_are_refused(value: object, path: str) -> None:
    guardrails = Guardrails()
    with taddons.context(guardrails):
        flow, state = statement("select 1", path=path)
        state.request_json = {"sqlText" if path == QUERY_PATH else "statement": value}
        await guardrails.request(flow)
        assert state.refusal is not None and state.refusal.source == "guardrails"
        answer = error_of(flow)
        assert answer["code"] == str(protocol.CODE_GATEWAY_PROTOCOL)
        assert "must be a string of SQL" in answer["message"]


@pytest.mark.parametrize(
    "sql",
    [
        "execute immediate 'use role accountadmin'",
        "execute immediate $$use secondary roles all$$",
        "use secondary role all",
        "execute immediate 'use role r extra words'",
        "EXECUTE IMMEDIATE 'EXECUTE IMMEDIATE ''USE ROLE R'''",
        "begin use role accountadmin; end",
        "begin execute immediate 'use secondary roles all'; end",
        "select 1; execute immediate 'use role r'",
        "create procedure p() returns int as $$ begin use role r; return 1; end $$",
        "alter user hoopgw_svc set default_secondary_roles = ('ALL')",
        "alter user x unset default_secondary_roles",
        "begin alter user hoopgw_svc set default_role = accountadmin; end",
        "execute immediate 'alter user hoopgw_svc set default_secondary_roles = (''ALL'')'",
    ],
)
async def test_role_lock_sees_nested_statements_without_a_policy(sql: str) -> None:
    guardrails = Guardrails()
    with taddons.context(guardrails):
        flow, state = statement(sql)
        await guardrails.request(flow)
        assert state.guardrail is not None and state.guardrail["rule"] == "hoopgw-built-in"
        assert "hoopgw-built-in does not let a session change" in refused_message(flow, state)


async def test_role_lock_leaves_other_nested_statements_alone() -> None:
    guardrails = Guardrails()
    with taddons.context(guardrails):
        for sql in (
            "execute immediate 'use warehouse w'",
            "begin use schema s; end",
            "alter user x set comment = 'default_secondary_roles'",
        ):
            flow, state = statement(sql)
            await guardrails.request(flow)
            assert flow.response is None and state.guardrail["decision"] == "allow", sql


@pytest.mark.parametrize(
    "name", ["SEARCH_PATH", "search_path", " Search_Path ", '"SEARCH_PATH"', "SEARCH _PATH"]
)
async def test_search_path_parameters_are_refused_however_named(name: str) -> None:
    guardrails = Guardrails()
    with taddons.context(guardrails):
        flow, state = statement("select 1", parameters={name: "PAYROLL"})
        await guardrails.request(flow)
        assert "does not let a request set SEARCH_PATH" in refused_message(flow, state)


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("delete from t where id = id", "requires a WHERE clause on DELETE FROM"),
        ("update t set a = 1 where a = 2 or 1 = 1", "requires a WHERE clause on UPDATE"),
        ("merge into t using s on 1 = 1 when matched then delete", "requires MERGE INTO"),
        ("alter session set search_path = $$payroll$$", "denies access to"),
        ("alter session set search_path = 'pay' || 'roll'", "denies access to *.PAYROLL.*"),
        ("execute immediate $$alter session set search_path = payroll$$", "denies access to"),
    ],
)
async def test_agents_guard_closes_spellings(policy_file: Path, sql: str, reason: str) -> None:
    guardrails = Guardrails()
    with taddons.context(guardrails) as tctx:
        tctx.configure(guardrails, hoopgw_policy=str(policy_file))
        flow, state = statement(sql)
        await guardrails.request(flow)
        assert reason in refused_message(flow, state)


def test_start_is_refused_until_the_service_users_secondary_roles_are_stated() -> None:
    guardrails, credentials = Guardrails(), UpstreamCredentials()
    with taddons.context(credentials, guardrails) as tctx:
        with pytest.raises(exceptions.OptionsError) as refused:
            tctx.options.update(hoopgw_upstream_user="HOOPGW_SVC")
        message = str(refused.value)
        assert "ALTER USER HOOPGW_SVC SET DEFAULT_SECONDARY_ROLES = ()" in message
        assert "hoopgw_upstream_secondary_roles=none" in message
        tctx.options.update(
            hoopgw_upstream_user="HOOPGW_SVC", hoopgw_upstream_secondary_roles="none"
        )
        with pytest.raises(exceptions.OptionsError, match='the only value is "none"'):
            tctx.options.update(hoopgw_upstream_secondary_roles="all")


@pytest.mark.parametrize(
    ("path", "field"),
    [
        (QUERY_PATH, "SQLTEXT"),
        (QUERY_PATH, "Parameters"),
        (QUERY_PATH, "BINDINGS"),
        (STATEMENTS_PATH, "Statement"),
        (STATEMENTS_PATH, "ROLE"),
        (STATEMENTS_PATH, "Database"),
        (STATEMENTS_PATH, "SCHEMA"),
    ],
)
async def test_fields_that_decide_what_runs_must_be_spelled_as_snowflake_spells_them(
    path: str, field: str
) -> None:
    guardrails = Guardrails()
    with taddons.context(guardrails):
        flow, state = statement("select 1", path=path)
        assert isinstance(state.request_json, dict)
        state.request_json[field] = "x"
        await guardrails.request(flow)
        assert state.refusal is not None and state.refusal.source == "guardrails"
        assert f"spells {field.casefold()}"[:12] in error_of(flow)["message"].casefold()
