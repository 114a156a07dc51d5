"""A crashing addon refuses the flow instead of passing it on unchecked."""

from __future__ import annotations

import ast
import asyncio
import importlib
from pathlib import Path

import pytest
from mitmproxy.addonmanager import traverse
from mitmproxy.test import tflow

import hoopgw.addons
from hoopgw.addons import names, protocol
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


def _marks_in_source() -> dict[str, set[str]]:
    """Each name an addon adds to `state.passed`, with the modules that add it."""
    marks: dict[str, set[str]] = {}
    root = Path(hoopgw.addons.__path__[0])
    for path in sorted(root.rglob("*.py")):
        module_name = ".".join(("hoopgw.addons", *path.relative_to(root).with_suffix("").parts))
        module_name = module_name.removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "add"
                and isinstance(node.func.value, ast.Attribute)
                and node.func.value.attr == "passed"
            ):
                module = importlib.import_module(module_name)
                name = eval(ast.unparse(node.args[0]), vars(module))
                marks.setdefault(name, set()).add(module_name)
    return marks


def test_fail_closed_requires_exactly_the_addons_that_mark_themselves():
    from hoopgw.addons import gateway

    fail_closed = [addon for addon in traverse(gateway.addons) if isinstance(addon, FailClosed)]
    assert len(fail_closed) == 1
    marks = _marks_in_source()
    assert fail_closed[0].required == set(marks)
    assert set(marks) == {
        names.TRANSPORT,
        names.AUTHENTICATION,
        names.ATTRIBUTION,
        names.QUERY_IDS,
        names.GUARDRAILS,
        names.RECORDING,
        names.APPROVAL,
    }
