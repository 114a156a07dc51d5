"""Inspection: live annotations for mitmweb; it never changes what is sent."""

from __future__ import annotations

import pytest
from mitmproxy import exceptions, http
from mitmproxy import flow as mitmflow
from mitmproxy.addons.clientplayback import ClientPlayback
from mitmproxy.test import taddons

from hoopgw.addons.flowstate import Caller, FlowState
from hoopgw.addons.inspection import BLOCKED_MARK, FAILED_MARK, Inspection, OfflineViewer
from hoopgw.addons.protocol import StreamedAnswer
from hoopgw.addons.refusals import refuse
from tests.addons import (
    LOGIN_PATH,
    QUERY_PATH,
    STATEMENTS_PATH,
    answered,
    classified,
    snowflake_flow,
)
from tests.bodies import login_body, query_body

CALLER = Caller("ada", "ada@example.com", ("agents",), "AGENT")
SESSION = "0190f3c4-7b1a-7c2e-9d4f-1a2b3c4d5e6f"


def seen(path: str = QUERY_PATH, body: object = None) -> tuple[http.HTTPFlow, FlowState]:
    flow = snowflake_flow("POST", path, query_body("select 1") if body is None else body)
    state = classified(flow)
    state.caller, state.session_id = CALLER, SESSION
    return flow, state


def test_a_statement_is_commented_with_its_first_line_and_masked() -> None:
    sql = "alter user bob set password = 'hunter2'\n  -- and more"
    flow, _ = seen(body=query_body(sql))
    Inspection().request(flow)
    assert flow.comment == "alter user bob set password = '[REDACTED]' …"
    assert flow.metadata["hoopgw"] == {
        "session_id": SESSION,
        "caller": "ada",
        "role": "AGENT",
        "endpoint": "query",
    }
    assert not flow.marked


def test_an_sql_api_statement_and_a_login_are_named() -> None:
    flow, _ = seen(STATEMENTS_PATH, {"statement": "select 2"})
    Inspection().request(flow)
    assert flow.comment == "select 2"
    login, _ = seen(LOGIN_PATH, login_body("t"))
    Inspection().request(login)
    assert login.comment == "login: ada"
    heartbeat, _ = seen("/session/heartbeat", {})
    Inspection().request(heartbeat)
    assert heartbeat.comment == ""


def test_a_refused_request_is_marked_blocked_with_its_reason() -> None:
    flow, state = seen(body=query_body("drop table t"))
    state.guardrail = {"decision": "block", "rule": "agents-guard"}
    refuse(flow, state, 399003, "rule 'agents-guard' denies DROP", "guardrails")
    inspection = Inspection()
    inspection.request(flow)
    assert flow.marked == BLOCKED_MARK
    assert flow.metadata["hoopgw"]["refusal"]["by"] == "guardrails"
    assert flow.metadata["hoopgw"]["guardrail"]["rule"] == "agents-guard"
    inspection.response(flow)
    assert flow.marked == BLOCKED_MARK


def test_the_comment_carries_a_refusal_reason_whole() -> None:
    flow, state = seen(body=query_body("drop table payroll.salaries"))
    reason = "rule 'agents-guard' denies DROP on PAYROLL.SALARIES: " + "ask the data owners " * 12
    refuse(flow, state, 399003, reason, "guardrails")
    Inspection().request(flow)
    assert flow.comment == (
        f"drop table payroll.salaries · refused by hoopgw (guardrails): {reason.strip()}"
    )
    flow, state = seen(body=query_body("drop table t"))
    refuse(flow, state, 399003, "x" * 5000, "guardrails")
    Inspection().request(flow)
    assert len(flow.comment) < 1100 and flow.comment.endswith("x…")


def test_a_snowflake_error_is_marked_failed_and_the_bodies_released() -> None:
    flow, state = seen()
    answered(flow, {"success": False, "code": "002003", "message": "does not exist"})
    Inspection().response(flow)
    assert flow.marked == FAILED_MARK
    assert state.request_json is None and state.response_json is None


def test_a_successful_answer_is_not_marked() -> None:
    flow, state = seen()
    answered(flow, {"success": True, "data": {}})
    Inspection().response(flow)
    assert not flow.marked
    assert state.response_body is None


def test_an_http_error_is_marked_failed() -> None:
    flow, _ = seen()
    flow.response = http.Response.make(503, b"unavailable")
    Inspection().response(flow)
    assert flow.marked == FAILED_MARK


def test_a_broken_stream_says_how_far_it_got() -> None:
    flow, state = seen()
    state.streamed = StreamedAnswer("", 1000, 10_000, json=True)
    state.streamed(b'{"success": true')
    flow.error = mitmflow.Error("Connection reset")
    Inspection().error(flow)
    assert flow.marked == FAILED_MARK
    assert flow.metadata["hoopgw"]["streamed"]["size"] == len(b'{"success": true')
    assert state.request_json is None


def test_an_error_keeps_an_earlier_mark() -> None:
    flow, _ = seen()
    flow.marked = BLOCKED_MARK
    Inspection().error(flow)
    assert flow.marked == BLOCKED_MARK


def test_flows_the_gateway_did_not_see_are_not_annotated() -> None:
    flow = snowflake_flow("POST", QUERY_PATH, query_body("select 1"), live=False)
    inspection = Inspection()
    inspection.request(flow)
    flow.response = http.Response.make(500, b"")
    inspection.response(flow)
    inspection.error(flow)
    assert "hoopgw" not in flow.metadata and not flow.marked and not flow.comment


def test_the_offline_viewer_refuses_to_replay_recorded_flows() -> None:
    flow = snowflake_flow("POST", QUERY_PATH, query_body("select 1"))
    OfflineViewer().requestheaders(flow)
    assert flow.response is None
    flow.is_replay = "request"
    OfflineViewer().requestheaders(flow)
    assert flow.response is not None and flow.response.status_code == 403


def test_the_offline_viewer_takes_over_the_replay_command_and_keeps_the_flow() -> None:
    flow = snowflake_flow("POST", QUERY_PATH, query_body("select 1"))
    flow.response = http.Response.make(200, b'{"success": true}')
    viewer = OfflineViewer()
    with taddons.context(ClientPlayback(), viewer) as context:
        context.options.server = False
        context.master.commands.call("replay.client", [flow])
        assert flow.response is not None and flow.response.status_code == 200
        assert flow.is_replay is None and not flow.modified()
        viewer.running()
        with pytest.raises(exceptions.OptionsError, match="server cannot be changed"):
            context.options.update(server=True)
        assert context.options.server is False
