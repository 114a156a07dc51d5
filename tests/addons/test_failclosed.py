"""FailClosed: what a required addon did not finish never goes upstream.

tests/test_failclosed.py covers `guarded` with a stand-in crashing addon; these
run the gateway's own addons in the order addons/gateway.py lists them.
"""

from __future__ import annotations

import asyncio

import pytest
from mitmproxy.test import taddons

from hoopgw.addons import protocol
from hoopgw.addons.failclosed import FailClosed, guarded
from hoopgw.addons.flowstate import state_of
from hoopgw.addons.guardrails import Guardrails
from hoopgw.addons.inspection import Inspection
from hoopgw.addons.recording import Recording
from hoopgw.addons.traffic import SnowflakeTraffic
from tests.addons import QUERY_PATH, classified, error_of, snowflake_flow
from tests.bodies import query_body

REQUIRED = ("authentication", "guardrails", "recording")
INTERNAL = str(protocol.CODE_GATEWAY_INTERNAL)


async def test_a_request_no_addon_passed_is_refused_with_an_internal_error() -> None:
    flow = snowflake_flow("POST", QUERY_PATH, query_body("select 1"))
    state = classified(flow)
    await Guardrails().request(flow)
    FailClosed(required=REQUIRED).request(flow)
    answer = error_of(flow)
    assert answer["code"] == INTERNAL
    assert state.refusal is not None and state.refusal.source == "failclosed"
    assert state.refusal.reason == "internal error in authentication, recording"


def test_a_request_every_addon_passed_goes_on() -> None:
    flow = snowflake_flow("POST", QUERY_PATH, query_body("select 1"))
    classified(flow).passed.update(REQUIRED)
    FailClosed(required=REQUIRED).request(flow)
    assert flow.response is None


@pytest.mark.parametrize("live", [True, False])
def test_answered_and_loaded_flows_are_left_as_they_are(live: bool) -> None:
    flow = snowflake_flow("GET", "/not-snowflake", live=live)
    SnowflakeTraffic().requestheaders(flow)
    SnowflakeTraffic().request(flow)
    before = flow.response
    FailClosed(required=REQUIRED).request(flow)
    assert flow.response is before


def test_a_request_the_traffic_addon_never_saw_is_refused() -> None:
    flow = snowflake_flow("POST", QUERY_PATH, query_body("select 1"))
    FailClosed(required=REQUIRED).request(flow)
    assert error_of(flow)["code"] == INTERNAL
    state = state_of(flow)
    assert state is None, "a flow without state is refused without inventing one"


async def test_a_crash_in_a_gateway_hook_refuses_the_flow() -> None:
    """Guardrails reading a body that is not what Traffic promised: the hook raises."""
    flow = snowflake_flow("POST", QUERY_PATH, query_body("select 1"))
    state = classified(flow)
    state.context = None  # type: ignore[assignment]
    await guarded(Guardrails()).request(flow)
    assert error_of(flow)["code"] == INTERNAL
    assert state.refusal is not None and state.refusal.reason == "internal error in Guardrails"


def test_a_crash_in_a_plain_hook_refuses_the_flow_unless_it_is_answered() -> None:
    """Inspection cannot annotate a state whose context went missing: the hook raises."""
    flow = snowflake_flow("POST", QUERY_PATH, query_body("select 1"))
    state = classified(flow)
    state.context = None  # type: ignore[assignment]
    guarded(Inspection()).request(flow)
    assert error_of(flow)["code"] == INTERNAL
    refusal = flow.response
    guarded(Inspection()).request(flow)
    assert flow.response is refusal


async def test_a_crash_on_a_flow_that_is_no_longer_live_answers_nothing() -> None:
    flow = snowflake_flow("POST", QUERY_PATH, query_body("select 1"))
    state = classified(flow)
    state.context = None  # type: ignore[assignment]
    flow.live = False
    await guarded(Guardrails()).request(flow)
    assert flow.response is None and state.refusal is None


def test_done_while_mitmproxy_shuts_down_does_not_exit() -> None:
    addon = FailClosed(required=REQUIRED)
    with taddons.context(addon) as tctx:
        tctx.master.should_exit.set()
        addon.done()


def test_guarded_keeps_async_hooks_async() -> None:
    addon = guarded(Recording())
    assert asyncio.iscoroutinefunction(addon.request)
    assert not asyncio.iscoroutinefunction(addon.response)
