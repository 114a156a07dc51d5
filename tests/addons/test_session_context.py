"""SessionContextTracker: the one owner of each session's current database and schema.

Driven together with Guardrails, which resolves relative names against the
context the tracker put on the flow.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from mitmproxy import http
from mitmproxy.test import taddons

from hoopgw.addons.guardrails import Guardrails
from hoopgw.addons.session_context import SessionContextTracker
from tests.addons import LOGOUT_PATH, STATEMENTS_PATH, answered, classified, snowflake_flow
from tests.addons.test_guardrails import SESSION, refused_message, statement
from tests.bodies import GUARDRAILS_POLICY


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(GUARDRAILS_POLICY)
    return path


class Pipeline:
    """The tracker and Guardrails in the gateway's hook order."""

    def __init__(self) -> None:
        self.tracker = SessionContextTracker()
        self.guardrails = Guardrails()

    async def request(self, flow: http.HTTPFlow) -> None:
        self.tracker.request(flow)
        await self.guardrails.request(flow)

    def response(self, flow: http.HTTPFlow) -> None:
        self.tracker.response(flow)


@asynccontextmanager
async def pipeline(policy_file: Path) -> AsyncIterator[Pipeline]:
    both = Pipeline()
    with taddons.context(both.tracker, both.guardrails) as tctx:
        tctx.configure(both.guardrails, hoopgw_policy=str(policy_file))
        yield both


async def test_snowflakes_final_schema_resolves_the_next_statement(policy_file: Path) -> None:
    async with pipeline(policy_file) as gateway:
        flow, _ = statement("use schema sales.app")
        await gateway.request(flow)
        answered(
            flow,
            {"success": True, "data": {"finalDatabaseName": "SALES", "finalSchemaName": "APP"}},
        )
        gateway.response(flow)
        flow, state = statement("select * from secrets")
        await gateway.request(flow)
        assert "denies access to SALES.APP.SECRETS (*.APP.SECRETS)" in refused_message(flow, state)
        assert (state.context.database, state.context.schema) == ("SALES", "APP")


async def test_use_statements_move_the_schema_when_snowflake_does_not_say(
    policy_file: Path,
) -> None:
    async with pipeline(policy_file) as gateway:
        flow, _ = statement("use schema sales.app")
        await gateway.request(flow)
        answered(flow, {"success": True, "data": {}})
        gateway.response(flow)
        flow, state = statement("select * from secrets")
        await gateway.request(flow)
        assert "denies access to SALES.APP.SECRETS (*.APP.SECRETS)" in refused_message(flow, state)


@pytest.mark.parametrize("outcome", ["failed", "logged-out"])
async def test_the_schema_stays_when_the_statement_failed_or_the_session_ended(
    policy_file: Path, outcome: str
) -> None:
    async with pipeline(policy_file) as gateway:
        flow, _ = statement("use schema sales.app")
        await gateway.request(flow)
        answered(
            flow,
            {"success": True, "data": {"finalDatabaseName": "SALES", "finalSchemaName": "APP"}},
        )
        gateway.response(flow)
        if outcome == "failed":
            flow, _ = statement("use schema other.public")
            await gateway.request(flow)
            answered(flow, {"success": False, "code": "002043", "data": {}})
            gateway.response(flow)
            expected = ("SALES", "APP")
        else:
            flow = snowflake_flow("POST", LOGOUT_PATH, {})
            state = classified(flow)
            state.session_id, state.session_ended = SESSION, True
            await gateway.request(flow)
            answered(flow, {"success": True})
            gateway.response(flow)
            expected = ("SALES", None)
        flow, state = statement("select 1")
        state.context.database = "SALES"
        await gateway.request(flow)
        assert (state.context.database, state.context.schema) == expected


@pytest.mark.parametrize(
    ("database", "schema", "expected"),
    [
        ("sales", "app", ("SALES", "APP")),
        ('"SALES"', '"APP"', ("SALES", "APP")),
        ('"sales"', "App", ("sales", "APP")),
        ("sales", '"A""P"', ("SALES", 'A"P')),
        ("sales", "x.app", ("SALES", None)),
        ("sales", "app secrets", ("SALES", None)),
        ("sales", '"app', ("SALES", None)),
    ],
)
async def test_sql_api_database_and_schema_follow_snowflakes_quoting(
    policy_file: Path, database: str, schema: str, expected: tuple[str | None, str | None]
) -> None:
    async with pipeline(policy_file) as gateway:
        flow, state = statement("select 1", path=STATEMENTS_PATH)
        state.context.database, state.context.schema = database, schema
        await gateway.request(flow)
        assert (state.context.database, state.context.schema) == expected


@pytest.mark.parametrize("schema", ['"APP"', "app", '"app"', "APP -- comment", "x.app"])
async def test_sql_api_schema_spellings_cannot_hide_a_denied_object(
    policy_file: Path, schema: str
) -> None:
    async with pipeline(policy_file) as gateway:
        flow, state = statement("select * from secrets", path=STATEMENTS_PATH)
        state.context.database, state.context.schema = "SALES", schema
        await gateway.request(flow)
        assert "denies access to" in refused_message(flow, state)
