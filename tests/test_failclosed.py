"""A crashing addon refuses the flow instead of passing it on unchecked."""

from __future__ import annotations

import asyncio

import pytest
from mitmproxy.test import tflow

from hoopgw.addons import protocol
from hoopgw.addons.failclosed import FailClosed, guarded
from hoopgw.addons.flowstate import FlowState, attach, state_of
from hoopgw.addons.protocol import Endpoint


class Crashing:
    """Stands in for any gateway addon whose hook has a bug."""

    def request(self, flow):
        raise RuntimeError("bug in a request hook")

    async def response(self, flow):
        raise RuntimeError("bug in a response hook")


def query_flow():
    flow = tflow.tflow(resp=False)
    flow.request.path = "/queries/v1/query-request?requestId=1"
    attach(flow, FlowState(endpoint=Endpoint.QUERY))
    return flow


def test_request_hook_crash_answers_with_internal_error():
    flow = query_flow()
    guarded(Crashing()).request(flow)
    assert flow.response is not None
    assert b'"code":"399004"' in flow.response.content
    assert state_of(flow).refusal.source == "failclosed"


def test_response_hook_crash_replaces_the_upstream_answer():
    flow = query_flow()
    flow.response = protocol.query_failure(1, "upstream answer with secrets")
    asyncio.run(guarded(Crashing()).response(flow))
    assert b"399004" in flow.response.content
    assert b"upstream answer" not in flow.response.content


@pytest.mark.parametrize(
    ("passed", "refused"),
    [({"authentication", "recording"}, False), ({"authentication"}, True), (set(), True)],
)
def test_fail_closed_requires_every_addon(passed, refused):
    flow = query_flow()
    state_of(flow).passed.update(passed)
    FailClosed(required=("authentication", "recording")).request(flow)
    assert (flow.response is not None) is refused


def test_fail_closed_refuses_a_flow_the_gateway_never_classified():
    flow = tflow.tflow(resp=False)
    FailClosed(required=("authentication",)).request(flow)
    assert flow.response is not None
