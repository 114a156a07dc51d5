"""The one path by which the gateway answers a request itself, in Snowflake's shapes.

Every addon that refuses a request calls `refuse`: it builds the answer in the
shape the client reads (protocol.Shape, by default the endpoint's), puts it on
the flow and sets `state.refusal`, so that later hooks skip their work and the
recorder records the refusal. `replace_answer` is its counterpart for an
upstream answer the gateway cannot pass on (the request did go upstream).
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson
from mitmproxy import http

from hoopgw.addons import protocol
from hoopgw.addons.flowstate import FlowState, Refusal
from hoopgw.addons.protocol import Shape


def refuse(
    flow: http.HTTPFlow,
    state: FlowState,
    code: int,
    reason: str,
    source: str,
    *,
    message: str | None = None,
    shape: Shape | None = None,
    sql_state: str = "42000",
    sql_api_status: int = 400,
    status: int | None = None,
    allow: Iterable[str] = (),
) -> None:
    """Answer the flow from the gateway; nothing of it goes upstream (or no more of it).

    `reason` is what the record keeps; the client reads `message`, by default
    "hoopgw refused the request: <reason>". `allow` fills the `Allow` header of
    a 405. See `protocol.error_response` for the statuses.
    """
    response = protocol.error_response(
        shape or protocol.shape_for(state.endpoint),
        code,
        f"hoopgw refused the request: {reason}" if message is None else message,
        sql_state=sql_state,
        sql_api_status=sql_api_status,
        status=status,
    )
    if allow:
        response.headers["Allow"] = ", ".join(sorted(allow))
    flow.response = response
    state.refusal = Refusal(code, reason, source)


def replace_answer(
    flow: http.HTTPFlow, state: FlowState, shape: Shape, code: int, message: str
) -> None:
    """Answer the client from the gateway instead of with upstream's unusable answer."""
    response = protocol.error_response(shape, code, message)
    flow.response = response
    state.response_body = response.raw_content
    state.response_json = orjson.loads(response.raw_content or b"{}")
