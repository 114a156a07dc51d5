"""Attribution: the QUERY_TAG every session carries upstream, merged with the client's own.

The real Authentication addon signs callers in (loopback OIDC issuer, real key)
and the real Attribution addon runs after it, as in addons/gateway.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlglot
from mitmproxy import http
from mitmproxy.test import taddons

from hoopgw.addons.attribution import Attribution, TagError, rewrite_alter_session, session_tag
from hoopgw.addons.authentication import Authentication
from hoopgw.addons.flowstate import FlowState
from tests.addons import (
    LOGIN_PATH,
    QUERY_PATH,
    classified,
    error_of,
    session_header,
    snowflake_flow,
)
from tests.addons.test_authentication import answered, options, sealed, upstream_login
from tests.bodies import login_body, query_body
from tests.jwt_issuer import LocalIssuer


def tag_of(client: object) -> str:
    return session_tag("S-1", "ada", client)


def test_the_tag_names_session_and_caller_and_keeps_the_clients() -> None:
    assert json.loads(session_tag("S-1", "ada")) == {"hoopgw_session": "S-1", "caller": "ada"}
    assert json.loads(session_tag("S-1", "ada", '{"app": "mcp"}'))["client"] == '{"app": "mcp"}'
    with pytest.raises(TagError, match="passes Snowflake's 2000 characters"):
        session_tag("S-1", "ada", "x" * 2000)


@pytest.mark.parametrize(
    ("sql", "client"),
    [
        ("alter session set query_tag = 'mine'", "mine"),
        ("ALTER SESSION SET QUERY_TAG='it''s \"quoted\" \\\\ too';", 'it\'s "quoted" \\ too'),
        ("alter session unset query_tag", None),
    ],
)
def test_alter_session_query_tag_is_rewritten_to_the_merged_tag(sql: str, client: str) -> None:
    rewritten = rewrite_alter_session(sql, tag_of)
    assert rewritten is not None
    literal = sqlglot.parse_one(rewritten, read="snowflake").find(sqlglot.exp.Literal)
    assert literal is not None and json.loads(literal.this) == json.loads(tag_of(client))


@pytest.mark.parametrize(
    "sql",
    [
        "alter session set query_tag = 'x'; select 1",
        "alter session set query_tag = 'x' timezone = 'UTC'",
        "execute immediate 'alter session set query_tag = ''x'''",
        "alter session set query_tag = 42",
        "begin alter session set query_tag = 'x'; end",
    ],
)
def test_other_ways_to_change_the_tag_are_refused(sql: str) -> None:
    with pytest.raises(TagError, match="hoopgw sets QUERY_TAG itself"):
        rewrite_alter_session(sql, tag_of)


def test_sql_that_only_reads_tags_is_left_alone() -> None:
    assert rewrite_alter_session("select query_tag from t", tag_of) is None
    assert rewrite_alter_session("alter session set timezone = 'UTC'", tag_of) is None


def upstream_body(flow: http.HTTPFlow) -> dict[str, Any]:
    return orjson.loads(flow.request.content or b"{}")


async def signed_in(
    auth: Authentication, attribution: Attribution, issuer: LocalIssuer, **params: Any
) -> tuple[http.HTTPFlow, FlowState]:
    flow = snowflake_flow(
        "POST", LOGIN_PATH + "?request_id=1", login_body(issuer.mint("ada"), **params)
    )
    state = classified(flow)
    await auth.request(flow)
    attribution.request(flow)
    return flow, state


async def test_login_query_and_alter_session_carry_the_merged_tag(
    issuer: LocalIssuer, service_key: Path
) -> None:
    auth, attribution = Authentication(), Attribution()
    with taddons.context(auth, attribution) as tctx:
        tctx.configure(auth, **options(issuer, service_key))
        flow, state = await signed_in(
            auth, attribution, issuer, SESSION_PARAMETERS={"query_tag": "client-tag", "X": 1}
        )
        parameters = upstream_body(flow)["data"]["SESSION_PARAMETERS"]
        assert parameters["X"] == 1 and "query_tag" not in parameters
        tag = json.loads(parameters["QUERY_TAG"])
        assert tag == {"hoopgw_session": state.session_id, "caller": "ada", "client": "client-tag"}
        assert state.request_json is not None
        assert state.request_json["data"]["SESSION_PARAMETERS"] == parameters
        assert upstream_body(flow)["data"]["AUTHENTICATOR"] == "SNOWFLAKE_JWT"
        answered(flow, upstream_login())
        auth.response(flow)
        token = sealed(flow)["token"]

        async def query(body: dict[str, Any]) -> tuple[http.HTTPFlow, FlowState]:
            call = snowflake_flow("POST", QUERY_PATH, body, [session_header(token)])
            call_state = classified(call)
            await auth.request(call)
            attribution.request(call)
            return call, call_state

        plain, plain_state = await query(query_body("select 1"))
        assert "parameters" not in upstream_body(plain) and "attribution" in plain_state.passed
        tagged, _ = await query({**query_body("select 1"), "parameters": {"QUERY_TAG": "q"}})
        assert json.loads(upstream_body(tagged)["parameters"]["QUERY_TAG"])["client"] == "q"
        altered, altered_state = await query(query_body("alter session set query_tag = 'mine'"))
        sql = upstream_body(altered)["sqlText"]
        assert altered_state.request_json is not None
        assert altered_state.request_json["sqlText"] == sql
        assert "hoopgw_session" in sql and "mine" in sql
        refused, refused_state = await query(query_body("alter session unset query_tag; select 1"))
        assert refused_state.refusal is not None
        assert "hoopgw sets QUERY_TAG itself" in error_of(refused)["message"]
