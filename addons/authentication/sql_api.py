"""SQL API v2: the caller's bearer token is checked like a login and replaced by the gateway's."""

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
from hoopgw.addons.refusals import refuse
from hoopgw.recorder.ids import new_session_id


class SqlApi:
    """/api/v2/statements: each call stands alone, verified and rewritten to the gateway's login."""

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
        requested_role = body.get("role") if body else None
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
        if body is not None and flow.request.method == "POST":
            rewritten = dict(body)
            if grant.role:
                rewritten["role"] = grant.role
            else:
                rewritten.pop("role", None)
            if grant.warehouse and not rewritten.get("warehouse"):
                rewritten["warehouse"] = grant.warehouse
            protocol.write_json_body(flow.request, rewritten)
        state.context = SessionContext(
            database=_text(body, "database"),
            schema=_text(body, "schema"),
            warehouse=_text(body, "warehouse") or grant.warehouse,
            role=grant.role,
        )
        return InFlight()


def _refuse(flow: http.HTTPFlow, state: FlowState, reason: str) -> None:
    """SQL API clients read the HTTP status: 401 for a caller the gateway does not accept."""
    refuse(flow, state, protocol.CODE_BAD_CREDENTIALS, reason, AUTHENTICATION, sql_api_status=401)


def _text(body: dict[str, Any] | None, name: str) -> str | None:
    value = body.get(name) if body else None
    return value if isinstance(value, str) else None
