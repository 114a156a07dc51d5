"""Authentication: OIDC in, the gateway's own Snowflake credential out, sealed tokens between.

The hook that runs second for every flow (see addons/flowstate.py):

- login: verify the caller's OIDC token and groups, choose the role, rewrite the
  login so Snowflake sees only the gateway's credential; on the way back replace
  Snowflake's session and master tokens with sealed gateway tokens;
- every other Snowflake call: open the sealed session token, swap in the
  upstream one, and tell later hooks who the caller is;
- renewal and logout are translated both ways; the SQL API's bearer token is
  verified like a login and replaced by the gateway's credential.

A refusal never reaches Snowflake: the gateway answers in the shape the driver
shows its user. The request itself is forwarded by mitmproxy only after the
recorder, the hook after this one, has made it durable.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import orjson
from mitmproxy import exceptions, http
from mitmproxy.addonmanager import Loader

from hoopgw.addons import protocol
from hoopgw.addons.credentials import UpstreamCredentials
from hoopgw.addons.flowstate import Caller, FlowState, Refusal, SessionContext, state_of
from hoopgw.addons.identity import Identity, IdentityError, IdentityUnavailable, groups_from
from hoopgw.addons.protocol import Endpoint, ProtocolError
from hoopgw.addons.session_tokens import SealedSession, SessionTokens, TokenError, TokenKind
from hoopgw.recorder.ids import new_session_id

logger = logging.getLogger(__name__)

SOURCE = "authentication"
NO_TOKEN_AUTHORIZATION = protocol.snowflake_authorization("None")
REDACTED = "hoopgw-redacted"

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
# Response fields that would hand the client a Snowflake credential.
_UPSTREAM_ONLY_FIELDS = (
    "idToken",
    "idTokenValidityInSeconds",
    "mfaToken",
    "mfaTokenValidityInSeconds",
)
_PASSWORD_AUTHENTICATORS = frozenset({"SNOWFLAKE", "USERNAME_PASSWORD_MFA"})
_LOGIN_CONTEXT_PARAMETERS = {
    name.lower(): name for name in ("databaseName", "schemaName", "warehouse", "roleName")
}
_SMALL_RESPONSE = 64 * 1024
_SESSION_EXPIRED = str(protocol.CODE_SESSION_EXPIRED)


@dataclass(frozen=True, slots=True)
class _Admission:
    """What a call must present, and the refusal messages when it does not."""

    kind: TokenKind
    missing: str
    rejected: str
    wrong_kind: str
    revoked: str
    expired: str
    expired_code: int


_RENEWAL = _Admission(
    kind=TokenKind.MASTER,
    missing="the renewal carries no master token",
    rejected="the master token is not accepted ({})",
    wrong_kind="a session token cannot renew a session",
    revoked="the session has ended (logged out)",
    expired="the session has expired; log in again",
    expired_code=protocol.CODE_MASTER_EXPIRED,
)
_SESSION_CALL = _Admission(
    kind=TokenKind.SESSION,
    missing="the request carries no session token; log in through the gateway",
    rejected="the session token is not accepted ({}); log in again",
    wrong_kind="a master token cannot be used as a session token",
    revoked="the session has ended (logged out); log in again",
    expired="the session token has expired",
    expired_code=protocol.CODE_SESSION_EXPIRED,
)


@dataclass(frozen=True, slots=True)
class _LoginInFlight:
    session_id: str
    caller: Caller
    requested: SessionContext


@dataclass(frozen=True, slots=True)
class _RenewalInFlight:
    master: SealedSession


@dataclass(frozen=True, slots=True)
class _CallInFlight:
    session: SealedSession


@dataclass(frozen=True, slots=True)
class _SqlApiInFlight:
    pass


@dataclass(frozen=True, slots=True)
class _AnsweredHere:
    """A flow the gateway answered successfully itself (a local renewal)."""


_InFlight = _LoginInFlight | _RenewalInFlight | _CallInFlight | _SqlApiInFlight | _AnsweredHere


class Authentication:
    """Verifies callers, swaps credentials and translates tokens; see the module docstring."""

    def __init__(self) -> None:
        self.identity = Identity()
        self.credentials = UpstreamCredentials()
        self.tokens = SessionTokens()
        self._in_flight: weakref.WeakKeyDictionary[http.HTTPFlow, _InFlight] = (
            weakref.WeakKeyDictionary()
        )
        self._background: set[asyncio.Task[None]] = set()

    @property
    def _parts(self) -> tuple[Identity, UpstreamCredentials, SessionTokens]:
        return (self.identity, self.credentials, self.tokens)

    def load(self, loader: Loader) -> None:
        for part in self._parts:
            part.load(loader)

    def configure(self, updated: set[str]) -> None:
        for part in self._parts:
            part.configure(updated)
        if any(name.startswith(("hoopgw_oidc_", "hoopgw_upstream_")) for name in updated):
            missing = self.credentials.missing()
            if self.identity.configured and missing:
                raise exceptions.OptionsError(
                    "hoopgw_oidc_issuer is set, so the gateway needs its own Snowflake "
                    f"login: set {', '.join(missing)}"
                )

    def running(self) -> None:
        verifier = self.identity.verifier
        if verifier is not None:
            task = asyncio.create_task(verifier.warm())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def request(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None or state.answered:
            return
        match state.endpoint:
            case Endpoint.LOGIN:
                await self._login(flow, state)
            case Endpoint.SQL_API:
                await self._sql_api(flow, state)
            case Endpoint.TOKEN_REQUEST:
                self._renewal(flow, state)
            case Endpoint.AUTHENTICATOR:
                self._refuse_login(
                    flow, state, "sign in with your identity provider's token (authenticator=oauth)"
                )
            case _:
                self._session_call(flow, state)
        state.passed.add("authentication")

    def response(self, flow: http.HTTPFlow) -> None:
        in_flight = self._in_flight.pop(flow, None)
        state = state_of(flow)
        if in_flight is None or state is None:
            return
        _scrub_upstream_credentials(flow.request, state)
        if flow.response is None or state.answered:
            return
        match in_flight:
            case _LoginInFlight():
                self._login_answered(flow, state, in_flight)
            case _RenewalInFlight():
                self._renewal_answered(flow, state, in_flight.master)
            case _CallInFlight():
                self._call_answered(flow, state, in_flight.session)

    def error(self, flow: http.HTTPFlow) -> None:
        in_flight = self._in_flight.pop(flow, None)
        state = state_of(flow)
        if in_flight is not None and state is not None:
            _scrub_upstream_credentials(flow.request, state)

    # Login

    async def _login(self, flow: http.HTTPFlow, state: FlowState) -> None:
        verifier = self.identity.verifier
        if verifier is None:
            self._refuse_login(
                flow,
                state,
                "identity is not configured on this gateway (hoopgw_oidc_issuer is unset)",
            )
            return
        body = state.request_json or {}
        data = body.get("data")
        if not isinstance(data, dict):
            self._refuse_login(flow, state, "the login request has no data")
            return
        ambiguous = _ambiguous_context_parameter(flow.request)
        if ambiguous:
            self._refuse_login(flow, state, ambiguous)
            return
        requested = _requested_context(flow.request)
        try:
            token = self._presented_token(data)
            verified = await verifier.verify(token)
            groups = groups_from(verified.claims, self.identity.groups_claim)
            state.caller = Caller(verified.subject, verified.email, groups, None, verifier.issuer)
            grant = self.identity.policy.decide(groups, requested.role)
        except IdentityUnavailable as exc:
            self._refuse_login(flow, state, f"the token cannot be verified now: {exc}")
            return
        except IdentityError as exc:
            self._refuse_login(flow, state, str(exc))
            return
        caller = replace(state.caller, role=grant.role)
        state.caller = caller
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
        upstream_data.update(self.credentials.login_fields())
        protocol.write_json_body(flow.request, {"data": upstream_data})
        flow.request.headers["authorization"] = NO_TOKEN_AUTHORIZATION
        state.context = _requested_context(flow.request)
        self._in_flight[flow] = _LoginInFlight(state.session_id, caller, state.context)

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

    def _login_answered(self, flow: http.HTTPFlow, state: FlowState, login: _LoginInFlight) -> None:
        assert flow.response is not None
        payload = _parsed_response(flow.response, state)
        if payload is None:
            self._replace_response(
                flow,
                state,
                protocol.login_failure(
                    protocol.CODE_GATEWAY_PROTOCOL,
                    "hoopgw could not read Snowflake's answer to the login "
                    f"(HTTP {flow.response.status_code})",
                ),
            )
            return
        data = payload.get("data")
        if not payload.get("success") or not isinstance(data, dict) or not data.get("token"):
            if isinstance(data, dict) and _strip(
                data, ("token", "masterToken", *_UPSTREAM_ONLY_FIELDS)
            ):
                _rewrite_response(flow.response, state, payload)
            return
        now = int(time.time())
        upstream_session = str(data["token"])
        upstream_master = data.get("masterToken")
        master_seconds = _capped(self.tokens.master_lifetime, data.get("masterValidityInSeconds"))
        session_seconds = min(
            _capped(self.tokens.session_lifetime, data.get("validityInSeconds")), master_seconds
        )
        info = data.get("sessionInfo") if isinstance(data.get("sessionInfo"), dict) else {}
        context = SessionContext(
            database=info.get("databaseName") or login.requested.database,
            schema=info.get("schemaName") or login.requested.schema,
            warehouse=info.get("warehouseName") or login.requested.warehouse,
            role=info.get("roleName") or login.requested.role,
        )
        snowflake_session_id = data.get("sessionId") or _numeric_session_id(login.session_id)
        session = SealedSession(
            kind=TokenKind.SESSION,
            session_id=login.session_id,
            upstream_token=upstream_session,
            caller=login.caller,
            context=context,
            issued_at=now,
            expires_at=now + session_seconds,
            session_expires_at=now + master_seconds,
            upstream_renews=bool(upstream_master),
            snowflake_session_id=snowflake_session_id,
        )
        master = replace(
            session,
            kind=TokenKind.MASTER,
            upstream_token=str(upstream_master or upstream_session),
            upstream_session_token=upstream_session,
            expires_at=now + master_seconds,
        )
        _strip(data, _UPSTREAM_ONLY_FIELDS)
        data["token"] = self.tokens.sealer.seal(session)
        data["masterToken"] = self.tokens.sealer.seal(master)
        data["validityInSeconds"] = session_seconds
        data["masterValidityInSeconds"] = master_seconds
        data["sessionId"] = snowflake_session_id
        _rewrite_response(flow.response, state, payload)
        state.context = _copy(context)

    def _admit(
        self, flow: http.HTTPFlow, state: FlowState, rules: _Admission
    ) -> tuple[SealedSession, str, float] | None:
        """Open the presented gateway token and check kind, revocation and expiry.

        Returns the token, its text and the time checked; or refuses the flow
        (nothing goes upstream) and returns None.
        """
        presented = protocol.session_token_from(flow.request.headers)
        if presented is None:
            self._refuse_session(flow, state, rules.missing)
            return None
        try:
            token = self.tokens.sealer.open(presented)
        except TokenError as exc:
            self._refuse_session(flow, state, rules.rejected.format(exc))
            return None
        if token.kind is not rules.kind:
            self._refuse_session(flow, state, rules.wrong_kind)
            return None
        self._identify(state, token)
        now = time.time()
        if self.tokens.revoked.is_revoked(token.session_id, now):
            self._refuse_session(flow, state, rules.revoked)
            return None
        if token.expired(now):
            self._refuse_session(flow, state, rules.expired, code=rules.expired_code)
            return None
        return token, presented, now

    # Renewal

    def _renewal(self, flow: http.HTTPFlow, state: FlowState) -> None:
        admitted = self._admit(flow, state, _RENEWAL)
        if admitted is None:
            return
        master, presented, _ = admitted
        body = state.request_json or {}
        try:
            upstream_old = self._old_upstream_session(master, body.get("oldSessionToken"))
        except TokenError as exc:
            self._refuse_session(flow, state, str(exc))
            return
        if not master.upstream_renews:
            self._renew_locally(flow, state, master, presented)
            return
        flow.request.headers["authorization"] = protocol.snowflake_authorization(
            master.upstream_token
        )
        protocol.write_json_body(
            flow.request,
            {
                "oldSessionToken": upstream_old,
                "requestType": str(body.get("requestType") or "RENEW"),
            },
        )
        self._in_flight[flow] = _RenewalInFlight(master)

    def _old_upstream_session(self, master: SealedSession, old: object) -> str | None:
        """The upstream token the renewal replaces: from the client's old session token."""
        if isinstance(old, str) and old:
            session = self.tokens.sealer.open(old)
            if session.kind is not TokenKind.SESSION or session.session_id != master.session_id:
                raise TokenError("the old session token belongs to another session")
            return session.upstream_token
        return master.upstream_session_token

    def _renew_locally(
        self, flow: http.HTTPFlow, state: FlowState, master: SealedSession, presented: str
    ) -> None:
        """Snowflake issued no master token: the gateway renews its own session token."""
        now = int(time.time())
        expires = min(now + self.tokens.session_lifetime, master.expires_at)
        session = replace(
            master,
            kind=TokenKind.SESSION,
            upstream_token=master.upstream_session_token or master.upstream_token,
            upstream_session_token=None,
            issued_at=now,
            expires_at=expires,
        )
        payload = {
            "data": {
                "sessionToken": self.tokens.sealer.seal(session),
                "validityInSecondsST": expires - now,
                "masterToken": presented,
                "validityInSecondsMT": master.expires_at - now,
                "masterValidityInSeconds": master.expires_at - now,
                "sessionId": master.snowflake_session_id,
            },
            "code": None,
            "message": None,
            "success": True,
        }
        flow.response = http.Response.make(
            200, orjson.dumps(payload), {"Content-Type": "application/json"}
        )
        self._in_flight[flow] = _AnsweredHere()

    def _renewal_answered(
        self, flow: http.HTTPFlow, state: FlowState, master: SealedSession
    ) -> None:
        assert flow.response is not None
        payload = _parsed_response(flow.response, state)
        if payload is None:
            self._replace_response(
                flow,
                state,
                protocol.session_failure(
                    protocol.CODE_SESSION_INVALID,
                    "hoopgw could not read Snowflake's answer to the session renewal; log in again",
                ),
            )
            return
        data = payload.get("data")
        if not payload.get("success") or not isinstance(data, dict) or not data.get("sessionToken"):
            if isinstance(data, dict) and _strip(
                data, ("sessionToken", "masterToken", *_UPSTREAM_ONLY_FIELDS)
            ):
                _rewrite_response(flow.response, state, payload)
            return
        now = int(time.time())
        upstream_session = str(data["sessionToken"])
        upstream_master = str(data.get("masterToken") or master.upstream_token)
        master_validity = data.get("validityInSecondsMT") or data.get("masterValidityInSeconds")
        master_expires = min(
            master.session_expires_at, now + _capped(self.tokens.master_lifetime, master_validity)
        )
        session_expires = min(
            now + _capped(self.tokens.session_lifetime, data.get("validityInSecondsST")),
            master_expires,
        )
        session = replace(
            master,
            kind=TokenKind.SESSION,
            upstream_token=upstream_session,
            upstream_session_token=None,
            issued_at=now,
            expires_at=session_expires,
        )
        new_master = replace(
            master,
            upstream_token=upstream_master,
            upstream_session_token=upstream_session,
            issued_at=now,
            expires_at=master_expires,
        )
        _strip(data, _UPSTREAM_ONLY_FIELDS)
        data["sessionToken"] = self.tokens.sealer.seal(session)
        data["masterToken"] = self.tokens.sealer.seal(new_master)
        data["validityInSecondsST"] = session_expires - now
        data["validityInSecondsMT"] = master_expires - now
        data["masterValidityInSeconds"] = master_expires - now
        data["sessionId"] = master.snowflake_session_id
        _rewrite_response(flow.response, state, payload)

    # Calls within a session

    def _session_call(self, flow: http.HTTPFlow, state: FlowState) -> None:
        admitted = self._admit(flow, state, _SESSION_CALL)
        if admitted is None:
            return
        session, _, now = admitted
        flow.request.headers["authorization"] = protocol.snowflake_authorization(
            session.upstream_token
        )
        if state.endpoint is Endpoint.LOGOUT:
            state.session_ended = True
            self.tokens.revoked.revoke(session.session_id, session.session_expires_at, now)
        self._in_flight[flow] = _CallInFlight(session)

    def _call_answered(self, flow: http.HTTPFlow, state: FlowState, session: SealedSession) -> None:
        """Snowflake's 390112 makes drivers renew; without an upstream master they must log in.

        A streamed answer has already gone to the client: replacing it would only
        make the record disagree with what the client got (and 390112 is never a
        large 2xx answer, the only kind streamed).
        """
        if session.upstream_renews or state.streamed is not None:
            return
        assert flow.response is not None
        payload = state.response_json
        if payload is None and len(flow.response.raw_content or b"") <= _SMALL_RESPONSE:
            payload = _parsed_response(flow.response, state)
        if payload is not None and str(payload.get("code")) == _SESSION_EXPIRED:
            self._replace_response(
                flow,
                state,
                protocol.session_failure(
                    protocol.CODE_SESSION_INVALID,
                    "Snowflake ended the session and it cannot be renewed; log in again",
                ),
            )

    # SQL API v2

    async def _sql_api(self, flow: http.HTTPFlow, state: FlowState) -> None:
        verifier = self.identity.verifier
        if verifier is None:
            self._refuse_sql_api(
                flow,
                state,
                "identity is not configured on this gateway (hoopgw_oidc_issuer is unset)",
            )
            return
        authorization = flow.request.headers.get_all("authorization")
        token_type = flow.request.headers.get("x-snowflake-authorization-token-type", "OAUTH")
        if len(authorization) != 1 or not authorization[0].startswith("Bearer "):
            self._refuse_sql_api(
                flow, state, "send your identity provider's token as a Bearer token"
            )
            return
        if token_type.strip().upper() != "OAUTH":
            self._refuse_sql_api(
                flow, state, "only OAuth bearer tokens from the identity provider are accepted"
            )
            return
        body = state.request_json if isinstance(state.request_json, dict) else None
        requested_role = body.get("role") if body else None
        try:
            verified = await verifier.verify(authorization[0].removeprefix("Bearer "))
            groups = groups_from(verified.claims, self.identity.groups_claim)
            state.caller = Caller(verified.subject, verified.email, groups, None, verifier.issuer)
            grant = self.identity.policy.decide(
                groups, requested_role if isinstance(requested_role, str) else None
            )
        except IdentityUnavailable as exc:
            self._refuse_sql_api(flow, state, f"the token cannot be verified now: {exc}")
            return
        except IdentityError as exc:
            self._refuse_sql_api(flow, state, str(exc))
            return
        state.caller = replace(state.caller, role=grant.role)
        upstream = self.credentials.sql_api_authorization()
        if upstream is None:
            self._refuse_sql_api(
                flow,
                state,
                "the gateway's Snowflake credential cannot be used with the SQL API "
                "(it needs hoopgw_upstream_private_key or hoopgw_upstream_oauth_token)",
            )
            return
        state.session_id = new_session_id()
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
        self._in_flight[flow] = _SqlApiInFlight()
        state.context = SessionContext(
            database=_text(body, "database"),
            schema=_text(body, "schema"),
            warehouse=_text(body, "warehouse") or grant.warehouse,
            role=grant.role,
        )

    # Refusals

    @staticmethod
    def _identify(state: FlowState, session: SealedSession) -> None:
        state.caller = session.caller
        state.session_id = session.session_id
        state.context = _copy(session.context)

    @staticmethod
    def _refuse_login(flow: http.HTTPFlow, state: FlowState, reason: str) -> None:
        code = protocol.CODE_BAD_CREDENTIALS
        response = protocol.login_failure(code, f"hoopgw refused the login: {reason}")
        state.refuse(flow, response, Refusal(code, reason, SOURCE))

    @staticmethod
    def _refuse_session(
        flow: http.HTTPFlow,
        state: FlowState,
        reason: str,
        code: int = protocol.CODE_SESSION_INVALID,
    ) -> None:
        response = protocol.session_failure(code, f"hoopgw refused the request: {reason}")
        state.refuse(flow, response, Refusal(code, reason, SOURCE))

    @staticmethod
    def _refuse_sql_api(flow: http.HTTPFlow, state: FlowState, reason: str) -> None:
        code = protocol.CODE_BAD_CREDENTIALS
        response = protocol.sql_api_failure(401, code, f"hoopgw refused the request: {reason}")
        state.refuse(flow, response, Refusal(code, reason, SOURCE))

    @staticmethod
    def _replace_response(flow: http.HTTPFlow, state: FlowState, response: http.Response) -> None:
        """Answer the client from the gateway instead of with Snowflake's unusable answer."""
        flow.response = response
        state.response_body = response.raw_content
        state.response_json = orjson.loads(response.raw_content or b"{}")


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


def _scrub_upstream_credentials(request: http.Request, state: FlowState) -> None:
    """Once upstream has answered, take the gateway's secrets back out of the request.

    mitmweb shows, and flow files save, the request as it was sent upstream:
    without this the gateway's credential and Snowflake's tokens would be there.
    """
    if "authorization" in request.headers:
        scheme = request.headers["authorization"].split(" ", 1)[0]
        request.headers["authorization"] = (
            "Bearer " + REDACTED
            if scheme.lower() == "bearer"
            else protocol.snowflake_authorization(REDACTED)
        )
    if state.endpoint not in (Endpoint.LOGIN, Endpoint.TOKEN_REQUEST):
        return
    try:
        body = protocol.parse_json_object(protocol.decode_body(request, _SMALL_RESPONSE))
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


def _parsed_response(response: http.Response, state: FlowState) -> dict[str, Any] | None:
    if state.response_json is not None:
        return state.response_json
    try:
        return protocol.parse_json_object(protocol.decode_body(response, _SMALL_RESPONSE))
    except ProtocolError:
        return None


def _rewrite_response(response: http.Response, state: FlowState, payload: dict[str, Any]) -> None:
    protocol.write_json_body(response, payload)
    state.response_json = payload
    state.response_body = orjson.dumps(payload)


def _strip(data: dict[str, Any], fields: Iterable[str]) -> bool:
    """Remove `fields` from `data`; True when something was removed."""
    removed = False
    for name in fields:
        if name in data:
            del data[name]
            removed = True
    return removed


def _capped(limit: int, upstream_seconds: object) -> int:
    """Our lifetime, shortened to Snowflake's own validity when it states one."""
    if isinstance(upstream_seconds, bool) or not isinstance(upstream_seconds, int | float):
        return limit
    return int(min(limit, upstream_seconds)) if upstream_seconds > 0 else limit


def _numeric_session_id(session_id: str) -> int:
    """A positive 60-bit integer from the hoopgw session id, for drivers that expect a number."""
    return int(session_id.replace("-", "")[:15], 16)


def _copy(context: SessionContext) -> SessionContext:
    return SessionContext(context.database, context.schema, context.warehouse, context.role)


def _text(body: dict[str, Any] | None, name: str) -> str | None:
    value = body.get(name) if body else None
    return value if isinstance(value, str) else None
