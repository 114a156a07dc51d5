"""SQL API v2 and the agent-facing REST APIs: the caller's bearer token is checked like a
login and replaced by the gateway's.

One code path for every endpoint in `protocol.BEARER_ENDPOINTS`: the SQL API's
statements, Cortex Analyst, Cortex Search, Cortex Agents and the managed MCP
server. The role is the caller's, chosen as at a login; Snowflake's REST APIs
take it from the `X-Snowflake-Role` header (and the SQL API also from the
body's `role`), so both are set to the chosen role or removed, never left as
the caller sent them.
"""

from __future__ import annotations

from typing import Any

from mitmproxy import http

from hoopgw.addons import protocol
from hoopgw.addons.authentication.caller_check import NOT_CONFIGURED, CallerCheck
from hoopgw.addons.authentication.in_flight import InFlight
from hoopgw.addons.credentials import UpstreamCredentials
from hoopgw.addons.flowstate import FlowState, SessionContext
from hoopgw.addons.identity import IdentityError
from hoopgw.addons.names import AUTHENTICATION
from hoopgw.addons.protocol import Endpoint
from hoopgw.addons.refusals import refuse
from hoopgw.recorder.ids import new_session_id

ROLE_HEADER = "x-snowflake-role"
WAREHOUSE_HEADER = "x-snowflake-warehouse"


class SqlApi:
    """/api/v2/...: each call stands alone, verified and rewritten to the gateway's login."""

    def __init__(self, credentials: UpstreamCredentials, caller_check: CallerCheck) -> None:
        self.credentials = credentials
        self.caller_check = caller_check

    async def request(self, flow: http.HTTPFlow, state: FlowState) -> InFlight | None:
        if not self.caller_check.configured:
            _refuse(flow, state, NOT_CONFIGURED)
            return None
        authorization = flow.request.headers.get_all("authorization")
        token_type = flow.request.headers.get("x-snowflake-authorization-token-type", "OAUTH")
        if len(authorization) != 1 or not authorization[0].startswith("Bearer "):
            _refuse(flow, state, "send your identity provider's token as a Bearer token")
            return None
        if token_type.strip().upper() != "OAUTH":
            _refuse(flow, state, "only OAuth bearer tokens from the identity provider are accepted")
            return None
        body = state.request_json if isinstance(state.request_json, dict) else None
        requested_role = _requested_role(flow, state, body)
        try:
            grant = await self.caller_check.grant(
                state,
                authorization[0].removeprefix("Bearer "),
                requested_role if isinstance(requested_role, str) else None,
            )
        except IdentityError as exc:
            _refuse(flow, state, str(exc))
            return None
        upstream = self.credentials.sql_api_authorization(grant.upstream_user)
        if upstream is None:
            _refuse(
                flow,
                state,
                "the gateway's Snowflake credential cannot be used with the SQL API "
                "(it needs hoopgw_upstream_private_key or hoopgw_upstream_oauth_token)",
            )
            return None
        state.session_id = new_session_id()
        # the call is its own session: who it signs in as, like a login's session_start
        state.upstream_login = self.credentials.upstream_login(grant.upstream_user)
        flow.request.headers["authorization"] = upstream[0]
        flow.request.headers["x-snowflake-authorization-token-type"] = upstream[1]
        if grant.role:
            flow.request.headers[ROLE_HEADER] = grant.role
        else:
            flow.request.headers.pop(ROLE_HEADER, None)
        if grant.warehouse and not flow.request.headers.get(WAREHOUSE_HEADER):
            flow.request.headers[WAREHOUSE_HEADER] = grant.warehouse
        statements = state.endpoint is Endpoint.SQL_API
        if statements and body is not None and flow.request.method == "POST":
            rewritten = dict(body)
            if grant.role:
                rewritten["role"] = grant.role
            else:
                rewritten.pop("role", None)
            if grant.warehouse and not rewritten.get("warehouse"):
                rewritten["warehouse"] = grant.warehouse
            protocol.write_json_body(flow.request, rewritten)
        surface = protocol.agent_surface(state.endpoint, flow.request.path)
        if surface is not None:  # the path names the database and schema the surface lives in
            database, schema, warehouse = surface.database, surface.schema, None
        else:
            database, schema = _text(body, "database"), _text(body, "schema")
            warehouse = _text(body, "warehouse")
        state.context = SessionContext(
            database=database,
            schema=schema,
            warehouse=warehouse or flow.request.headers.get(WAREHOUSE_HEADER) or grant.warehouse,
            role=grant.role,
        )
        return InFlight()


def _refuse(flow: http.HTTPFlow, state: FlowState, reason: str) -> None:
    """SQL API clients read the HTTP status: 401 for a caller the gateway does not accept."""
    refuse(flow, state, protocol.CODE_BAD_CREDENTIALS, reason, AUTHENTICATION, sql_api_status=401)


def _requested_role(
    flow: http.HTTPFlow, state: FlowState, body: dict[str, Any] | None
) -> str | None:
    """The role the caller asks for: the SQL API's body `role`, else the REST header."""
    role = body.get("role") if body and state.endpoint is Endpoint.SQL_API else None
    if isinstance(role, str) and role:
        return role
    headers = flow.request.headers.get_all(ROLE_HEADER)
    return headers[0] if len(headers) == 1 and headers[0] else None


def _text(body: dict[str, Any] | None, name: str) -> str | None:
    value = body.get(name) if body else None
    return value if isinstance(value, str) else None
