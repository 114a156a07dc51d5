"""Cortex REST in process: routing, `allow_cortex`, SSE framing and masking, and the records."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
from mitmproxy import http
from mitmproxy.test import taddons

from hoopgw.addons import protocol
from hoopgw.addons.contentview.rendering import render
from hoopgw.addons.cortex import Cortex, SseFrames, SseTap, mask_results, parse_frame
from hoopgw.addons.flowstate import Caller, FlowState
from hoopgw.addons.guardrails import Guardrails, PolicyError, parse_policy
from hoopgw.addons.masking import Masking
from hoopgw.addons.protocol import AgentSurface, Endpoint
from hoopgw.addons.recording import Recording
from hoopgw.recorder.masking import NO_MASKING, MaskPlan
from hoopgw.recorder.masking.plan import ColumnPattern
from hoopgw.recorder.schema import validate_record
from tests.addons import answered, classified, error_of, snowflake_flow
from tests.raw_http import stored_records

SESSION = "0190f3c4-7b1a-7c2e-9d4f-1a2b3c4d5e6f"
POLICY = """
[[rule]]
name = "agents-cortex"
groups = ["agents"]
read_only = true
allow_cortex = ["analyst", "search:SUPPORT.*.*"]
detect = ["email"]

[[rule]]
name = "readers"
groups = ["readers"]
read_only = true

[[rule]]
name = "maskers"
groups = ["maskers"]
mask_columns = ["*.*.TICKETS.CONTACT"]
"""
AGENT = Caller("ada", "ada@example.com", ("agents",), "AGENT")
READER = Caller("rex", "rex@example.com", ("readers",), "READER")
MASKER = Caller("max", "max@example.com", ("maskers",), "MASKER")
SEARCH = "/api/v2/databases/support/schemas/public/cortex-search-services/tickets:query"
AGENTS = "/api/v2/databases/sales/schemas/public/agents/helper:run"


# --- routing ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "endpoint", "label"),
    [
        ("/api/v2/cortex/analyst/message", Endpoint.CORTEX_ANALYST, "analyst"),
        (SEARCH, Endpoint.CORTEX_SEARCH, "search:SUPPORT.PUBLIC.TICKETS"),
        (AGENTS + "?x=1", Endpoint.CORTEX_AGENTS, "agents:SALES.PUBLIC.HELPER"),
        ("/api/v2/databases/d/schemas/s/mcp-servers/m_1", Endpoint.MCP_SERVER, "mcp:D.S.M_1"),
    ],
)
def test_agent_surfaces_are_routed_and_named(path: str, endpoint: Endpoint, label: str) -> None:
    assert protocol.classify(path) is endpoint
    surface = protocol.agent_surface(endpoint, path)
    assert surface is not None and surface.label == label
    assert protocol.allowed_methods(endpoint, path) == frozenset({"POST"})
    assert protocol.shape_for(endpoint) is protocol.Shape.SQL_API


@pytest.mark.parametrize(
    "path",
    [
        "/api/v2/databases/d/schemas/s/tables",
        "/api/v2/cortex/analyst/message/",
        "/api/v2/cortex/inference:complete",
        "/api/v2/databases/d%2Fx/schemas/s/agents/a:run",
        "/api/v2/databases/d/schemas/./agents/a:run",
        "/api/v2/databases/d/schemas/s/../s/agents/a:run",
        "/api/v2/databases/d/schemas/s/agents/a%3Arun",
        '/api/v2/databases/"d"/schemas/s/agents/a:run',
        "/api/v2/databases/d.x/schemas/s/agents/a:run",
        "/api/v2/databases/d/schemas/s/agents/a:run/x",
        "/api/v2//databases/d/schemas/s/agents/a:run",
    ],
)
def test_anything_else_under_api_v2_is_unknown(path: str) -> None:
    assert protocol.classify(path) is Endpoint.OTHER


# --- allow_cortex ----------------------------------------------------------------


def test_allow_cortex_globs_rules_that_restrict_and_rules_that_do_not() -> None:
    policy = parse_policy(POLICY.encode(), "p.toml")
    assert policy.surface_refusal("analyst", AGENT.groups) is None
    assert policy.surface_refusal("search:SUPPORT.PUBLIC.TICKETS", AGENT.groups) is None
    blocked = policy.surface_refusal("agents:SALES.PUBLIC.HELPER", AGENT.groups)
    assert blocked is not None and blocked.rule == "agents-cortex"
    assert "agents:SALES.PUBLIC.HELPER" in (blocked.reason or "")
    # a rule that restricts statements but lists no surface denies them all
    assert policy.surface_refusal("analyst", READER.groups) is not None
    # a rule that only masks answers, and no rule at all, leave surfaces alone
    assert policy.surface_refusal("analyst", MASKER.groups) is None
    assert policy.surface_refusal("analyst", ("nobody",)) is None


def test_allow_cortex_must_be_a_list_of_strings() -> None:
    with pytest.raises(PolicyError, match="allow_cortex: must be a list"):
        parse_policy(b'[[rule]]\nname = "r"\ngroups = ["g"]\nallow_cortex = "analyst"\n', "p")


@pytest.fixture
def guarded(tmp_path: Path):
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    guardrails = Guardrails()
    masking = Masking(guardrails)
    with taddons.context(guardrails, masking) as tctx:
        tctx.configure(guardrails, hoopgw_policy=str(policy))
        yield guardrails, masking


def asked(caller: Caller, path: str, body: dict) -> tuple[http.HTTPFlow, FlowState]:
    flow = snowflake_flow("POST", path, body)
    state = classified(flow)
    state.caller, state.session_id = caller, SESSION
    return flow, state


async def test_a_surface_the_rules_do_not_allow_is_refused_in_the_sql_api_shape(guarded) -> None:
    guardrails, _ = guarded
    flow, state = asked(AGENT, AGENTS, {"messages": []})
    await guardrails.request(flow)
    assert flow.response is not None and flow.response.status_code == 403
    assert error_of(flow)["code"] == "399003"
    assert (
        state.guardrail is not None and state.guardrail["surface"] == "agents:SALES.PUBLIC.HELPER"
    )
    allowed, allowed_state = asked(AGENT, SEARCH, {"query": "x"})
    await guardrails.request(allowed)
    assert allowed.response is None and "guardrails" in allowed_state.passed


# --- Cortex Search masking --------------------------------------------------------


def test_search_results_are_masked_as_columns_of_the_service() -> None:
    surface = AgentSurface("search", "SUPPORT", "PUBLIC", "TICKETS")
    results = [{"ID": "1", "CONTACT": "ada@example.com"}, {"ID": "2"}]
    plan = MaskPlan((ColumnPattern.parse("*.*.TICKETS.CONTACT"),))
    outcome = mask_results(results, surface, plan)
    assert results == [{"ID": "1", "CONTACT": "[MASKED:column]"}, {"ID": "2"}]
    assert [d.column for d in outcome.detections] == ["SUPPORT.PUBLIC.TICKETS.CONTACT"]
    other = [{"CONTACT": "ada@example.com"}]
    mask_results(other, AgentSurface("search", "HR", "PUBLIC", "PEOPLE"), plan)
    assert other == [{"CONTACT": "ada@example.com"}]


# --- server-sent events ---------------------------------------------------------------


def test_frames_are_cut_where_they_end_whatever_the_line_endings() -> None:
    frames = SseFrames()
    assert frames.feed(b"event: a\r\ndata: 1\r") == []
    assert frames.feed(b"\n\r\nevent: b\ndata: x\ndata: y\n") == ["event: a\ndata: 1"]
    assert frames.feed(b"\n: comment\n\n") == ["event: b\ndata: x\ndata: y", ": comment"]
    event = parse_frame("event: b\ndata: x\ndata: y")
    assert event is not None and (event.event, event.data) == ("b", "x\ny")
    assert parse_frame(": comment") is None


def test_an_unfinished_frame_is_held_only_up_to_the_limit() -> None:
    frames = SseFrames(limit=16)
    assert frames.feed(b"data: " + b"x" * 32) == []
    assert frames.overflow
    assert frames.feed(b"\n\nevent: later\ndata: 1\n\n") == []


def delta(text: str) -> bytes:
    return b"event: response.text.delta\ndata: " + orjson.dumps({"text": text}) + b"\n\n"


def test_without_masking_every_chunk_passes_at_once_unchanged() -> None:
    tap = SseTap(NO_MASKING, record_limit=1 << 20)
    first = delta("mail ada@example.com")
    assert tap(first[:10]) == [first[:10]]
    assert tap(first[10:]) == [first[10:]]
    assert tap(b"") == []
    assert tap.complete and tap.event_count == 1
    assert tap.answer == ["mail ada@example.com"]


def test_with_masking_a_frame_passes_masked_once_complete() -> None:
    tap = SseTap(MaskPlan(detect={"email": "withhold"}), record_limit=1 << 20)
    first = delta("mail ada@example.com")
    assert tap(first[:10]) == []
    [sent] = tap(first[10:])
    assert b"ada@example.com" not in sent and b"[MASKED:email]" in sent
    result = {"content": [{"json": {"rows": ["grace@example.com"]}}]}
    frame = b"event: response.tool_result\ndata: " + orjson.dumps(result) + b"\n\n"
    [sent] = tap(frame)
    assert b"grace@example.com" not in sent
    assert tap(b"") == []
    assert [(d.kind, d.action) for d in tap.outcome.detections] == [("email", "mask")] * 2
    assert "ada@example.com" not in orjson.dumps(tap.events).decode()


def test_tool_results_carrying_result_sets_are_masked_by_column() -> None:
    plan = MaskPlan((ColumnPattern.parse("SHOP.CRM.CUSTOMERS.EMAIL"),))
    tap = SseTap(plan, record_limit=1 << 20)
    rows = {
        "resultSetMetaData": {
            "rowType": [
                {"name": "EMAIL", "database": "SHOP", "schema": "CRM", "table": "CUSTOMERS"}
            ]
        },
        "data": [["ada@example.com"]],
    }
    [sent] = tap(b"event: response.tool_result\ndata: " + orjson.dumps(rows) + b"\n\n")
    assert b"ada@example.com" not in sent and b"[MASKED:column]" in sent


def test_the_record_keeps_events_within_the_limit_and_counts_the_rest() -> None:
    tap = SseTap(NO_MASKING, record_limit=200)
    for index in range(10):
        tap(delta(f"part {index} " + "x" * 40))
    tap(b"")
    assert tap.event_count == 10
    assert 1 <= len(tap.events) < 10 and tap.dropped == 10 - len(tap.events)
    assert len(orjson.dumps(tap.events)) <= 200


# --- the addon and its records -------------------------------------------------------


ANALYST_ANSWER = {
    "message": {
        "role": "analyst",
        "content": [
            {"type": "text", "text": "Revenue by region"},
            {"type": "sql", "statement": "select region, sum(x) from sales.public.rev group by 1"},
        ],
    },
    "request_id": "r-1",
}


async def test_analyst_and_search_answers_are_on_record(guarded, tmp_path: Path) -> None:
    _, masking = guarded
    recording = Recording()
    cortex = Cortex(masking, recording)
    with taddons.context(recording) as tctx:
        tctx.configure(
            recording,
            hoopgw_store=f"file:{tmp_path / 'store'}",
            hoopgw_spool_dir=str(tmp_path / "spool"),
            hoopgw_rollup_interval=0,
        )
        recording.running()
        try:
            question = {"messages": [{"role": "user", "content": [{"type": "text", "text": "q?"}]}]}
            flow, _ = asked(AGENT, "/api/v2/cortex/analyst/message", question)
            await recording.request(flow)
            answered(flow, ANALYST_ANSWER)
            await cortex.response(flow)
            search, _ = asked(AGENT, SEARCH, {"query": "reset", "columns": ["C"]})
            await recording.request(search)
            answered(search, {"results": [{"C": "mail ada@example.com"}], "request_id": "r-2"})
            await cortex.response(search)
            recording.response(search)
            await asyncio.sleep(0)  # the answer's records are built on the loop's next turn
        finally:
            recording.done()
    assert search.response is not None
    assert orjson.loads(search.response.content or b"")["results"] == [{"C": "[MASKED:email]"}]
    records = stored_records(tmp_path / "store")
    cortex_records = [r for r in records if r["kind"] == "cortex"]
    assert all(validate_record(r) == [] for r in cortex_records)
    analyst, found = cortex_records
    assert analyst["question"] == "q?" and analyst["answer"] == "Revenue by region"
    assert analyst["statements"][0]["reads"] == ["SALES.PUBLIC.REV"]
    assert found["surface"] == "search:SUPPORT.PUBLIC.TICKETS"
    assert found["results"] == [{"C": "[MASKED:email]"}] and found["result_count"] == 1
    response = next(r for r in records if r["kind"] == "response")
    assert "ada@example.com" not in orjson.dumps(response["body"]).decode()


def test_the_content_view_shows_the_proposed_sql_with_what_it_reads() -> None:
    text = render(Endpoint.CORTEX_ANALYST, False, ANALYST_ANSWER)
    assert "Proposed SQL (not run)" in text
    assert "| SELECT | SALES.PUBLIC.REV |" in text
    shown = render(Endpoint.CORTEX_SEARCH, False, {"results": [{"CONTACT": "[MASKED:email]"}]})
    assert "| [MASKED:email] |" in shown


def test_a_masked_callers_stream_goes_on_chunked_and_uncompressed(guarded) -> None:
    _, masking = guarded
    cortex = Cortex(masking, Recording())
    flow, _ = asked(AGENT, AGENTS, {"messages": []})
    cortex.request(flow)
    assert flow.request.headers["accept-encoding"] == "identity"
    headers = {"content-type": "text/event-stream", "content-length": "64"}
    flow.response = http.Response.make(200, b"", headers)
    cortex.responseheaders(flow)
    assert callable(flow.response.stream)
    assert "content-length" not in flow.response.headers
    assert flow.response.headers["transfer-encoding"] == "chunked"
    json_answer, _ = asked(MASKER, AGENTS, {"messages": []})
    json_answer.response = http.Response.make(200, b"", {"content-type": "application/json"})
    cortex.responseheaders(json_answer)
    assert json_answer.response.stream is False  # not an event stream: buffered and masked whole


async def test_an_agents_answer_that_is_not_a_stream_is_masked_whole(guarded) -> None:
    _, masking = guarded
    cortex = Cortex(masking, Recording())
    flow, state = asked(AGENT, AGENTS, {"messages": []})
    answered(flow, {"content": [{"type": "text", "text": "write to ada@example.com"}]})
    cortex.responseheaders(flow)
    await cortex.response(flow)
    assert flow.response is not None
    assert orjson.loads(flow.response.content or b"")["content"][0]["text"] == "[MASKED:email]"
    assert state.detections == [{"column": "answer", "kind": "email", "count": 1, "action": "mask"}]
