"""Admitting a call that presents a sealed gateway token: a renewal or a call in a session."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import NamedTuple

from mitmproxy import http

from hoopgw.addons import protocol
from hoopgw.addons.flowstate import FlowState, SessionContext
from hoopgw.addons.names import AUTHENTICATION
from hoopgw.addons.protocol import Shape
from hoopgw.addons.refusals import refuse
from hoopgw.addons.session_tokens import SealedSession, SessionTokens, TokenError, TokenKind


@dataclass(frozen=True, slots=True)
class Admission:
    """What a call must present, and the refusal messages when it does not."""

    kind: TokenKind
    missing: str
    rejected: str
    wrong_kind: str
    revoked: str
    expired: str
    expired_code: int


RENEWAL = Admission(
    kind=TokenKind.MASTER,
    missing="the renewal carries no master token",
    rejected="the master token is not accepted ({})",
    wrong_kind="a session token cannot renew a session",
    revoked="the session has ended (logged out)",
    expired="the session has expired; log in again",
    expired_code=protocol.CODE_MASTER_EXPIRED,
)
SESSION_CALL = Admission(
    kind=TokenKind.SESSION,
    missing="the request carries no session token; log in through the gateway",
    rejected="the session token is not accepted ({}); log in again",
    wrong_kind="a master token cannot be used as a session token",
    revoked="the session has ended (logged out); log in again",
    expired="the session token has expired",
    expired_code=protocol.CODE_SESSION_EXPIRED,
)


class Admitted(NamedTuple):
    token: SealedSession
    presented: str
    """The token's text as the client sent it."""
    checked_at: float


def admit(
    tokens: SessionTokens, flow: http.HTTPFlow, state: FlowState, rules: Admission
) -> Admitted | None:
    """Open the presented gateway token and check kind, revocation and expiry.

    Tells later hooks who the caller is as soon as the token opens; refuses the
    flow (nothing goes upstream) and returns None when the token does not pass.
    """
    presented = protocol.session_token_from(flow.request.headers)
    if presented is None:
        refuse_session(flow, state, rules.missing)
        return None
    try:
        token = tokens.sealer.open(presented)
    except TokenError as exc:
        refuse_session(flow, state, rules.rejected.format(exc))
        return None
    if token.kind is not rules.kind:
        refuse_session(flow, state, rules.wrong_kind)
        return None
    state.caller = token.caller
    state.session_id = token.session_id
    state.id_key = token.id_key
    state.context = copy_context(token.context)
    now = time.time()
    if tokens.revoked.is_revoked(token.session_id, now):
        refuse_session(flow, state, rules.revoked)
        return None
    if token.expired(now):
        refuse_session(flow, state, rules.expired, code=rules.expired_code)
        return None
    return Admitted(token, presented, now)


def refuse_session(
    flow: http.HTTPFlow, state: FlowState, reason: str, code: int = protocol.CODE_SESSION_INVALID
) -> None:
    """A session error, which drivers act on (renew, or log in again) whatever the endpoint."""
    refuse(flow, state, code, reason, AUTHENTICATION, shape=Shape.SESSION)


def copy_context(context: SessionContext) -> SessionContext:
    return SessionContext(context.database, context.schema, context.warehouse, context.role)
