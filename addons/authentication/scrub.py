"""Taking the gateway's secrets back out of a request once upstream has answered."""

from __future__ import annotations

from mitmproxy import http

from hoopgw.addons import protocol
from hoopgw.addons.flowstate import FlowState
from hoopgw.addons.protocol import Endpoint, ProtocolError

REDACTED = "hoopgw-redacted"
_SMALL_BODY = 64 * 1024


def scrub_upstream_credentials(request: http.Request, state: FlowState) -> None:
    """Once upstream has answered, take the gateway's secrets back out of the request.

    mitmweb shows, and flow files save, the request as it was sent upstream:
    without this the gateway's credential and Snowflake's tokens would be there.
    """
    authorization = protocol.header_values(request.headers, b"authorization")
    if authorization:
        scheme = ", ".join(authorization).split(" ", 1)[0]
        request.headers["authorization"] = (
            "Bearer " + REDACTED
            if scheme.lower() == "bearer"
            else protocol.snowflake_authorization(REDACTED)
        )
    if state.endpoint not in (Endpoint.LOGIN, Endpoint.TOKEN_REQUEST):
        return
    try:
        body = protocol.parse_json_object(protocol.decode_body(request, _SMALL_BODY))
    except ProtocolError:
        request.content = b""
        return
    if body is None:
        return
    data = body.get("data")
    if isinstance(data, dict):
        for name in ("TOKEN", "PASSWORD"):
            if name in data:
                data[name] = REDACTED
    if "oldSessionToken" in body:
        body["oldSessionToken"] = REDACTED
    protocol.write_json_body(request, body)
