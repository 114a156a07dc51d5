"""In-process addon tests: each gateway addon created with `taddons.context`, its hooks
driven with `tflow` flows shaped like the Snowflake drivers' requests.

The mitmdump end-to-end tests (tests/test_*_e2e.py and friends) cover whole paths;
these point a failure at one hook and one branch.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from mitmproxy import http
from mitmproxy.test import tflow, tutils

from hoopgw.addons.flowstate import FlowState, state_of
from hoopgw.addons.traffic import SnowflakeTraffic

LOGIN_PATH = "/session/v1/login-request"
QUERY_PATH = "/queries/v1/query-request"
RENEWAL_PATH = "/session/token-request"
LOGOUT_PATH = "/session?delete=true"
STATEMENTS_PATH = "/api/v2/statements"


def snowflake_flow(
    method: str,
    path: str,
    body: dict[str, Any] | bytes | None = None,
    headers: Iterable[tuple[str, str]] = (),
    *,
    live: bool = True,
) -> http.HTTPFlow:
    """A flow as a Snowflake driver sends it to the gateway (origin-form, JSON body)."""
    content = orjson.dumps(body) if isinstance(body, dict) else (body or b"")
    fields = [
        (b"content-type", b"application/json"),
        (b"accept", b"application/json"),
        (b"user-agent", b"PythonConnector/4.8.1 (Linux) CPython/3.12"),
        *((name.encode(), value.encode()) for name, value in headers),
    ]
    request = tutils.treq(
        host="127.0.0.1",
        port=8443,
        method=method.encode(),
        path=path.encode(),
        headers=http.Headers(fields),
        content=content,
    )
    return tflow.tflow(req=request, live=live)


def session_header(token: str) -> tuple[str, str]:
    return ("authorization", f'Snowflake Token="{token}"')


def classified(flow: http.HTTPFlow) -> FlowState:
    """Run the gateway's first addon on the flow, as every later addon finds it."""
    traffic = SnowflakeTraffic()
    traffic.requestheaders(flow)
    traffic.request(flow)
    state = state_of(flow)
    assert state is not None
    return state


def answer_json(payload: dict[str, Any], status: int = 200) -> http.Response:
    return http.Response.make(status, orjson.dumps(payload), {"Content-Type": "application/json"})


def answered(flow: http.HTTPFlow, payload: dict[str, Any], status: int = 200) -> FlowState:
    """Give the flow Snowflake's answer and let the first addon read it."""
    flow.response = answer_json(payload, status)
    SnowflakeTraffic().response(flow)
    state = state_of(flow)
    assert state is not None
    return state


def error_of(flow: http.HTTPFlow) -> dict[str, Any]:
    """The Snowflake-shaped JSON the gateway answered with."""
    assert flow.response is not None
    return orjson.loads(flow.response.content or b"{}")
