"""Login: the caller's OIDC token in, the gateway's Snowflake credential out, sealed tokens back."""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Any

from mitmproxy import http

from hoopgw.addons import protocol
from hoopgw.addons.authentication.admission import copy_context
from hoopgw.addons.authentication.caller_check import NOT_CONFIGURED, CallerCheck
from hoopgw.addons.authentication.in_flight import InFlight
from hoopgw.addons.authentication.reseal import LOGIN_ANSWER, Resealer
from hoopgw.addons.credentials import UpstreamCredentials
from hoopgw.addons.flowstate import Caller, FlowState, SessionContext
from hoopgw.addons.identity import Identity, IdentityError
from hoopgw.addons.names import AUTHENTICATION
from hoopgw.addons.protocol import Shape
from hoopgw.addons.refusals import refuse
from hoopgw.addons.session_tokens import SealedSession, TokenKind
from hoopgw.recorder.ids import new_session_id

NO_TOKEN_AUTHORIZATION = protocol.snowflake_authorization("None")

# Login `data` fields that go upstream unchanged; everything else (the caller's
# TOKEN, PASSWORD, PASSCODE, SPCS_TOKEN, PROVIDER, ...) is dropped.
_FORWARDED_LOGIN_FIELDS = frozenset(
    {
        "CLIENT_APP_ID",
        "CLIENT_APP_VERSION",
        "SVN_REVISION",
        "SVN_BUILD_NUMBER",
        "CLIENT_ENVIRONMENT",
        "SESSION_PARAMETERS",
    }
)
_PASSWORD_AUTHENTICATORS = frozenset({"SNOWFLAKE", "USERNAME_PASSWORD_MFA"})
_LOGIN_CONTEXT_PARAMETERS = {
    name.lower(): name for name in ("databaseName", "schemaName", "warehouse", "roleName")
}


@dataclass(frozen=True, slots=True)
class _Pending:
    session_id: str
    caller: Caller
    requested: SessionContext


class Login:
    """login-request: verified, rewritten to the gateway's credential, its tokens re-sealed."""

    def __init__(
        self,
        identity: Identity,
        credentials: UpstreamCredentials,
        caller_check: CallerCheck,
        resealer: Resealer,
    ) -> None:
        self.identity = identity
        self.credentials = credentials
        self.caller_check = caller_check
        self.resealer = resealer

    async def request(self, flow: http.HTTPFlow, state: FlowState) -> InFlight | None:
        if not self.caller_check.configured:
            refuse_login(flow, state, NOT_CONFIGURED)
            return None
        body = state.request_json or {}
        data = body.get("data")
        if not isinstance(data, dict):
            refuse_login(flow, state, "the login request has no data")
            return None
        ambiguous = _ambiguous_context_parameter(flow.request)
        if ambiguous:
            refuse_login(flow, state, ambiguous)
            return None
        requested = _requested_context(flow.request)
        try:
            token = self._presented_token(data)
            grant = await self.caller_check.grant(state, token, requested.role)
        except IdentityError as exc:
            refuse_login(flow, state, str(exc))
            return None
        caller = state.caller
        assert caller is not None
        state.session_id = new_session_id()

        query = flow.request.query
        if grant.role:
            query["roleName"] = grant.role
        elif "roleName" in query:
            del query["roleName"]
        if grant.warehouse and not query.get("warehouse"):
            query["warehouse"] = grant.warehouse
        upstream_data = {k: v for k, v in data.items() if k in _FORWARDED_LOGIN_FIELDS}
        upstream_data.setdefault("SESSION_PARAMETERS", {})
        upstream_data.update(self.credentials.login_fields(grant.upstream_user))
        state.upstream_login = self.credentials.upstream_login(grant.upstream_user)
        protocol.write_json_body(flow.request, {"data": upstream_data})
        flow.request.headers["authorization"] = NO_TOKEN_AUTHORIZATION
        state.context = _requested_context(flow.request)
        pending = _Pending(state.session_id, caller, state.context)
        return InFlight(functools.partial(self._answered, login=pending))

    def _presented_token(self, data: dict[str, Any]) -> str:
        authenticator = str(data.get("AUTHENTICATOR") or "SNOWFLAKE").upper()
        if authenticator == "OAUTH":
            token = data.get("TOKEN")
        elif authenticator in _PASSWORD_AUTHENTICATORS and self.identity.accept_password_token:
            token = data.get("PASSWORD")
        elif self.identity.accept_password_token:
            raise IdentityError(
                "sign in with your identity provider's token (authenticator=oauth, "
                "or the token as the password)"
            )
        else:
            raise IdentityError(
                "sign in with your identity provider's token (authenticator=oauth); "
                "this gateway does not accept passwords"
            )
        if not isinstance(token, str) or not token.strip():
            raise IdentityError("no token was presented")
        return token

    def _answered(self, flow: http.HTTPFlow, state: FlowState, login: _Pending) -> None:
        def mint(
            data: dict[str, Any], now: int, session_expires: int, master_expires: int
        ) -> tuple[SealedSession, SealedSession]:
            upstream_session = str(data["token"])
            upstream_master = data.get("masterToken")
            info = data.get("sessionInfo") if isinstance(data.get("sessionInfo"), dict) else {}
            session = SealedSession(
                kind=TokenKind.SESSION,
                session_id=login.session_id,
                upstream_token=upstream_session,
                caller=login.caller,
                context=SessionContext(
                    database=info.get("databaseName") or login.requested.database,
                    schema=info.get("schemaName") or login.requested.schema,
                    warehouse=info.get("warehouseName") or login.requested.warehouse,
                    role=info.get("roleName") or login.requested.role,
                ),
                issued_at=now,
                expires_at=session_expires,
                session_expires_at=master_expires,
                upstream_renews=bool(upstream_master),
                snowflake_session_id=(
                    data.get("sessionId") or _numeric_session_id(login.session_id)
                ),
                id_key=self.resealer.tokens.current_key_id,
            )
            master = replace(
                session,
                kind=TokenKind.MASTER,
                upstream_token=str(upstream_master or upstream_session),
                upstream_session_token=upstream_session,
                expires_at=master_expires,
            )
            return session, master

        session = self.resealer.reseal(flow, state, LOGIN_ANSWER, mint)
        if session is not None:
            state.context = copy_context(session.context)


class AuthenticatorRequest:
    """authenticator-request starts an SSO or Okta login, which the gateway does not offer."""

    async def request(self, flow: http.HTTPFlow, state: FlowState) -> InFlight | None:
        refuse_login(
            flow, state, "sign in with your identity provider's token (authenticator=oauth)"
        )
        return None


def refuse_login(flow: http.HTTPFlow, state: FlowState, reason: str) -> None:
    """A refused login, in the login's shape whichever login endpoint was called."""
    refuse(
        flow,
        state,
        protocol.CODE_BAD_CREDENTIALS,
        reason,
        AUTHENTICATION,
        message=f"hoopgw refused the login: {reason}",
        shape=Shape.LOGIN,
    )


def _ambiguous_context_parameter(request: http.Request) -> str | None:
    """Why the login's database, schema, warehouse or role request is ambiguous, if it is.

    The gateway checks the first `roleName` (or `databaseName`, ...) it reads;
    a repeated or differently cased parameter might be the one the upstream
    reads, and would choose a role or database the gateway never checked.
    """
    seen: dict[str, str] = {}
    for name, _ in request.query.fields:
        canonical = _LOGIN_CONTEXT_PARAMETERS.get(name.lower())
        if canonical is None:
            continue
        if name != canonical:
            return f"the login spells the {canonical} parameter as {name[:40]!r}"
        if canonical in seen:
            return f"the login names {canonical} more than once"
        seen[canonical] = name
    return None


def _requested_context(request: http.Request) -> SessionContext:
    query = request.query
    return SessionContext(
        database=query.get("databaseName") or None,
        schema=query.get("schemaName") or None,
        warehouse=query.get("warehouse") or None,
        role=query.get("roleName") or None,
    )


def _numeric_session_id(session_id: str) -> int:
    """A positive 60-bit integer from the hoopgw session id, for drivers that expect a number."""
    return int(session_id.replace("-", "")[:15], 16)
