"""Cortex REST end to end: a real gateway in front of the strict upstream's Cortex emulations.

Each surface (Analyst, Search, Agents) is called with a good token, a forged
one, a caller in no allowed group and a caller whose rules do not allow it;
an agents:run stream reaches the client before the upstream has finished;
every call is on record.
"""

from __future__ import annotations

import base64
import http.client
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from hoopgw.recorder.secrets import new_token_key
from tests import cortex_upstream, stack
from tests.bodies import key_pair_gateway_options
from tests.cortex_upstream import AGENT_CONTACT, GENERATED_SQL
from tests.raw_http import stored_records
from tests.strict_upstream import StrictUpstream

ACCOUNT = "cx12345"
SERVICE_USER = "svc_hoopgw"
TOKEN_KEY_ENV = "HOOPGW_TEST_TOKEN_KEY"
GROUPS = ["agents", "readers", "analysts"]
POLICY = """
[[rule]]
name = "agents-cortex"
groups = ["agents"]
deny_kinds = ["DROP"]
allow_cortex = ["analyst", "search:SUPPORT.PUBLIC.*", "agents:SALES.*.*"]
detect = ["email"]

[[rule]]
name = "readers-read"
groups = ["readers"]
read_only = true

[[rule]]
name = "analysts-everything"
groups = ["analysts"]
allow_cortex = ["*"]
"""
ANALYST = "/api/v2/cortex/analyst/message"
SEARCH = "/api/v2/databases/support/schemas/public/cortex-search-services/tickets:query"
AGENTS = "/api/v2/databases/sales/schemas/public/agents/sales_agent:run"


@pytest.fixture(scope="module")
def strict(key_pair_strict: StrictUpstream) -> StrictUpstream:
    return key_pair_strict


@pytest.fixture(scope="module")
def gw(gateway_factory, strict, service_key: Path, workdir: Path) -> stack.Gateway:
    policy = workdir / f"cortex-{uuid.uuid4().hex[:6]}.toml"
    policy.write_text(POLICY)
    options = key_pair_gateway_options(
        account=ACCOUNT,
        user=SERVICE_USER,
        service_key=service_key,
        groups=GROUPS,
        token_key_env=TOKEN_KEY_ENV,
        policy=policy,
    )
    return gateway_factory(
        strict.url, options, env={TOKEN_KEY_ENV: new_token_key()}, name="cortex-gw"
    )


def post(
    gateway: stack.Gateway, path: str, token: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    connection = http.client.HTTPConnection(stack.LOOPBACK, gateway.port, timeout=30)
    try:
        connection.request("POST", path, json.dumps(body), _headers(token))
        answer = connection.getresponse()
        return answer.status, json.loads(answer.read() or b"{}")
    finally:
        connection.close()


def _headers(token: str, **extra: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "Authorization": f"Bearer {token}",
        "X-Snowflake-Authorization-Token-Type": "OAUTH",
        **extra,
    }


def question(text: str) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}],
        "semantic_model_file": "@SALES.PUBLIC.MODELS/revenue.yaml",
    }


def search_body(marker: str) -> dict[str, Any]:
    return {
        "query": f"password reset {marker}",
        "columns": ["TICKET_ID", "TRANSCRIPT", "CONTACT"],
        "filter": {"@eq": {"REGION": "EMEA"}},
        "limit": 5,
    }


def forged(token: str) -> str:
    """The token with its groups claim changed and the signature left as it was."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["groups"] = ["analysts"]
    encoded = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return ".".join((header, encoded, signature))


def read_event(answer: http.client.HTTPResponse) -> tuple[str, Any]:
    """The next server-sent event of a streamed answer: (event name, parsed data)."""
    name, data = "message", []
    while True:
        line = answer.readline().decode()
        if not line:
            raise EOFError("the stream ended")
        line = line.rstrip("\r\n")
        if not line:
            if data:
                return name, json.loads("\n".join(data))
            continue
        field, _, value = line.partition(":")
        if field == "event":
            name = value.strip()
        elif field == "data":
            data.append(value.removeprefix(" "))


def run_agent(gateway: stack.Gateway, cortex: cortex_upstream.CortexUpstream, token: str) -> dict:
    """agents:run held after its first event: what the client had then, and in the end."""
    cortex.hold_agents()
    connection = http.client.HTTPConnection(stack.LOOPBACK, gateway.port, timeout=15)
    try:
        connection.request(
            "POST", AGENTS, json.dumps(question("Who raised T-1001?")), _headers(token)
        )
        answer = connection.getresponse()
        assert answer.status == 200, answer.read()
        assert answer.getheader("Content-Type", "").startswith("text/event-stream")
        first = read_event(answer)
        finished_before_first = cortex.agents_finished.is_set()
        cortex.release_agents()
        rest = []
        while True:
            try:
                rest.append(read_event(answer))
            except EOFError:
                break
        return {"first": first, "finished_before_first": finished_before_first, "rest": rest}
    finally:
        cortex.release_agents()
        connection.close()


# --- each surface with a good token -----------------------------------------------


def test_analyst_answer_passes_with_the_gateway_credential_and_role(gw, strict, oidc) -> None:
    cortex = cortex_upstream.emulation(strict)
    token = oidc.mint("ada", groups=["agents"])
    status, answer = post(gw, ANALYST, token, question("Revenue by region last month?"))
    assert status == 200, answer
    sql = [item for item in answer["message"]["content"] if item["type"] == "sql"]
    assert sql[0]["statement"] == GENERATED_SQL
    seen = cortex.calls[-1]
    assert seen.headers["x-snowflake-authorization-token-type"] == "KEYPAIR_JWT"
    assert token not in seen.headers["authorization"]
    assert seen.headers["x-snowflake-role"] == "AGENTS"  # chosen from the caller's groups


def test_a_role_the_caller_is_not_granted_is_refused(gw, strict, oidc) -> None:
    mark = len(cortex_upstream.emulation(strict).calls)
    connection = http.client.HTTPConnection(stack.LOOPBACK, gw.port, timeout=30)
    try:
        headers = _headers(oidc.mint("ada", groups=["agents"]), **{"X-Snowflake-Role": "ADMIN"})
        connection.request("POST", ANALYST, json.dumps(question("hi")), headers)
        answer = connection.getresponse()
        assert answer.status == 401
        assert "role ADMIN is not granted" in json.loads(answer.read())["message"]
    finally:
        connection.close()
    assert len(cortex_upstream.emulation(strict).calls) == mark


def test_search_results_are_masked_for_a_caller_with_mask_rules(gw, oidc) -> None:
    status, answer = post(gw, SEARCH, oidc.mint("ada", groups=["agents"]), search_body("m1"))
    assert status == 200, answer
    assert answer["results"] == [
        {
            "TICKET_ID": "T-1001",
            "TRANSCRIPT": "Customer could not log in after the password reset",
            "CONTACT": "[MASKED:email]",
        }
    ]


def test_search_results_are_whole_for_a_caller_without_mask_rules(gw, oidc) -> None:
    status, answer = post(gw, SEARCH, oidc.mint("grace", groups=["analysts"]), search_body("m2"))
    assert status == 200, answer
    assert answer["results"][0]["CONTACT"] == "ada@example.com"


@pytest.mark.parametrize(("group", "masked"), [("analysts", False), ("agents", True)])
def test_agents_stream_reaches_the_client_before_the_upstream_finishes(
    gw, strict, oidc, group: str, masked: bool
) -> None:
    cortex = cortex_upstream.emulation(strict)
    result = run_agent(gw, cortex, oidc.mint(f"agent-{group}", groups=[group]))
    assert result["first"][0] == "response.status"
    assert result["finished_before_first"] is False
    assert cortex.agents_finished.is_set()
    names = [name for name, _ in result["rest"]]
    assert names == [
        "response.tool_result",
        "response.text.delta",
        "response.text.delta",
        "response",
    ]
    streamed = json.dumps(result["rest"])
    assert (AGENT_CONTACT in streamed) is not masked
    assert ("[MASKED:email]" in streamed) is masked


# --- refused callers -------------------------------------------------------------


@pytest.mark.parametrize("path", [ANALYST, SEARCH, AGENTS])
def test_a_forged_token_is_refused_before_upstream(gw, strict, oidc, path: str) -> None:
    mark = len(cortex_upstream.emulation(strict).calls)
    status, answer = post(gw, path, forged(oidc.mint("mallory", groups=["agents"])), {})
    assert status == 401 and answer["code"] == "390100", answer
    assert len(cortex_upstream.emulation(strict).calls) == mark


@pytest.mark.parametrize("path", [ANALYST, SEARCH, AGENTS])
def test_a_caller_in_no_allowed_group_is_refused(gw, strict, oidc, path: str) -> None:
    mark = len(cortex_upstream.emulation(strict).calls)
    status, answer = post(gw, path, oidc.mint("eve", groups=["outsiders"]), {})
    assert status == 401 and answer["code"] == "390100", answer
    assert len(cortex_upstream.emulation(strict).calls) == mark


@pytest.mark.parametrize("path", [ANALYST, SEARCH, AGENTS])
def test_a_caller_whose_rules_do_not_allow_cortex_is_refused(gw, strict, oidc, path) -> None:
    mark = len(cortex_upstream.emulation(strict).calls)
    status, answer = post(gw, path, oidc.mint("rex", groups=["readers"]), question("hi"))
    assert status == 403 and answer["code"] == "399003", answer
    assert "allow_cortex" in answer["message"]
    assert len(cortex_upstream.emulation(strict).calls) == mark


def test_a_surface_outside_the_callers_globs_is_refused(gw, oidc) -> None:
    path = "/api/v2/databases/hr/schemas/public/cortex-search-services/people:query"
    status, answer = post(gw, path, oidc.mint("ada", groups=["agents"]), search_body("m3"))
    assert status == 403, answer
    assert "search:HR.PUBLIC.PEOPLE" in answer["message"]


@pytest.mark.parametrize(
    "path",
    [
        "/api/v2/databases/sales/schemas/public/tables",
        "/api/v2/cortex/inference:complete",
        "/api/v2/databases/sales%2Fx/schemas/public/agents/a:run",
        "/api/v2/databases/sales/schemas/../schemas/public/agents/a:run",
        "/api/v2/databases/sales/schemas/public/agents/a%3Arun",
        "/api/v2/databases/sales/schemas/public/agents/a:run/",
        '/api/v2/databases/"sales"/schemas/public/agents/a:run',
    ],
)
def test_unknown_api_v2_paths_stay_refused(gw, strict, oidc, path: str) -> None:
    mark = len(cortex_upstream.emulation(strict).calls)
    status, answer = post(gw, path, oidc.mint("ada", groups=["analysts"]), question("hi"))
    assert status == 404 and answer["code"] == "399001", answer
    assert len(cortex_upstream.emulation(strict).calls) == mark


# --- on record (stops the gateway: keep last) --------------------------------------


def test_every_call_is_on_record(gw, strict, oidc) -> None:
    marker = uuid.uuid4().hex[:8]
    agents = oidc.mint("quinn", groups=["agents"])
    post(gw, ANALYST, agents, question(f"Revenue by region? {marker}"))
    post(gw, SEARCH, agents, search_body(marker))
    run_agent(gw, cortex_upstream.emulation(strict), agents)
    post(gw, SEARCH, oidc.mint("rex", groups=["readers"]), search_body(marker))
    gw.stop()
    records = stored_records(gw.workdir / "store")
    cortex = [r for r in records if r["kind"] == "cortex"]

    analyst = [r for r in cortex if marker in (r.get("question") or "")]
    assert len(analyst) == 1
    assert analyst[0]["surface"] == "analyst"
    assert analyst[0]["generated_sql"] == GENERATED_SQL
    assert analyst[0]["statements"][0]["kind"] == "SELECT"
    assert analyst[0]["statements"][0]["reads"] == ["SALES.PUBLIC.DAILY_REVENUE"]
    assert analyst[0]["caller"]["subject"] == "quinn"

    search = [r for r in cortex if marker in (r.get("query") or "")]
    assert [r["surface"] for r in search] == ["search:SUPPORT.PUBLIC.TICKETS"]
    assert search[0]["results"][0]["CONTACT"] == "[MASKED:email]"
    assert search[0]["detections"][0]["kind"] == "email"

    agents_records = [r for r in cortex if r["surface"] == "agents:SALES.PUBLIC.SALES_AGENT"]
    assert agents_records and all(r["complete"] for r in agents_records)
    last = agents_records[-1]
    assert [event["event"] for event in last["events"]][:2] == [
        "response.status",
        "response.tool_result",
    ]
    assert last["event_count"] == 5
    assert AGENT_CONTACT not in json.dumps(last)  # the caller of this stream has mask rules
    assert "[MASKED:email]" in last["answer"]

    refused = [
        r
        for r in records
        if r["kind"] == "refusal" and marker in json.dumps(r.get("body")) and r["endpoint"]
    ]
    assert [r["endpoint"] for r in refused] == ["cortex_search"]
    assert refused[0]["guardrail"]["surface"] == "search:SUPPORT.PUBLIC.TICKETS"
    responses = {r["flow_id"] for r in records if r["kind"] == "response"}
    assert {r["flow_id"] for r in cortex} <= responses
