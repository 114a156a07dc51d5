"""The one re-seal: an upstream answer that hands out Snowflake tokens hands out gateway tokens.

A login answer and a renewal answer differ only in field names and in how the
new tokens are made (`Mint`); both are read, stripped of what would give the
client a Snowflake credential, sealed and rewritten here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from mitmproxy import http

from hoopgw.addons import protocol
from hoopgw.addons.flowstate import FlowState
from hoopgw.addons.protocol import ProtocolError, Shape
from hoopgw.addons.refusals import replace_answer
from hoopgw.addons.session_tokens import SealedSession, SessionTokens

SMALL_RESPONSE = 64 * 1024
MASTER_TOKEN = "masterToken"
UPSTREAM_ONLY_FIELDS = (
    "idToken",
    "idTokenValidityInSeconds",
    "mfaToken",
    "mfaTokenValidityInSeconds",
)
"""Response fields that would hand the client a Snowflake credential."""

Mint = Callable[[dict[str, Any], int, int, int], tuple[SealedSession, SealedSession]]
"""(answer data, now, session expiry, master expiry) -> the new session and master tokens."""


@dataclass(frozen=True, slots=True)
class TokenAnswer:
    """Where an answer carries its tokens and validities, and what replaces it unread."""

    session_token: str
    session_validity: tuple[str, ...]
    master_validity: tuple[str, ...]
    """Read in this order (the first that is set); every one is written."""
    unreadable_shape: Shape
    unreadable_code: int
    unreadable_message: str
    """May name `{status}`, the upstream answer's HTTP status."""


LOGIN_ANSWER = TokenAnswer(
    session_token="token",
    session_validity=("validityInSeconds",),
    master_validity=("masterValidityInSeconds",),
    unreadable_shape=Shape.LOGIN,
    unreadable_code=protocol.CODE_GATEWAY_PROTOCOL,
    unreadable_message="hoopgw could not read Snowflake's answer to the login (HTTP {status})",
)
RENEWAL_ANSWER = TokenAnswer(
    session_token="sessionToken",
    session_validity=("validityInSecondsST",),
    master_validity=("validityInSecondsMT", "masterValidityInSeconds"),
    unreadable_shape=Shape.SESSION,
    unreadable_code=protocol.CODE_SESSION_INVALID,
    unreadable_message=(
        "hoopgw could not read Snowflake's answer to the session renewal; log in again"
    ),
)


class Resealer:
    """Replaces the tokens of a login or renewal answer with sealed gateway tokens."""

    def __init__(self, tokens: SessionTokens) -> None:
        self.tokens = tokens

    def reseal(
        self,
        flow: http.HTTPFlow,
        state: FlowState,
        answer: TokenAnswer,
        mint: Mint,
        expires_by: int | None = None,
    ) -> SealedSession | None:
        """The new session token given to the client, or None when the answer carries none.

        Lifetimes are ours, shortened to Snowflake's stated validity and to
        `expires_by` (the end of the session being renewed). An answer without
        new tokens goes on without any Snowflake credential it held; one that
        cannot be read is replaced by the gateway's error.
        """
        response = flow.response
        assert response is not None
        token = answer.session_token
        payload = parsed_response(response, state)
        if payload is None:
            message = answer.unreadable_message.format(status=response.status_code)
            replace_answer(flow, state, answer.unreadable_shape, answer.unreadable_code, message)
            return None
        data = payload.get("data")
        if not payload.get("success") or not isinstance(data, dict) or not data.get(token):
            if isinstance(data, dict) and strip(data, (token, MASTER_TOKEN, *UPSTREAM_ONLY_FIELDS)):
                rewrite_response(response, state, payload)
            return None
        now = int(time.time())
        master_validity = next(
            (data[name] for name in answer.master_validity if data.get(name)), None
        )
        master_expires = now + capped(self.tokens.master_lifetime, master_validity)
        if expires_by is not None:
            master_expires = min(expires_by, master_expires)
        session_validity = data.get(answer.session_validity[0])
        session_expires = min(
            now + capped(self.tokens.session_lifetime, session_validity), master_expires
        )
        session, master = mint(data, now, session_expires, master_expires)
        strip(data, UPSTREAM_ONLY_FIELDS)
        data[token] = self.tokens.sealer.seal(session)
        data[MASTER_TOKEN] = self.tokens.sealer.seal(master)
        for name in answer.session_validity:
            data[name] = session_expires - now
        for name in answer.master_validity:
            data[name] = master_expires - now
        data["sessionId"] = session.snowflake_session_id
        rewrite_response(response, state, payload)
        return session


def parsed_response(response: http.Response, state: FlowState) -> dict[str, Any] | None:
    if state.response_json is not None:
        return state.response_json
    try:
        return protocol.parse_json_object(protocol.decode_body(response, SMALL_RESPONSE))
    except ProtocolError:
        return None


def rewrite_response(response: http.Response, state: FlowState, payload: dict[str, Any]) -> None:
    protocol.write_json_body(response, payload)
    state.response_json = payload
    state.response_body = orjson.dumps(payload)


def strip(data: dict[str, Any], fields: Iterable[str]) -> bool:
    """Remove `fields` from `data`; True when something was removed."""
    removed = False
    for name in fields:
        if name in data:
            del data[name]
            removed = True
    return removed


def capped(limit: int, upstream_seconds: object) -> int:
    """Our lifetime, shortened to Snowflake's own validity when it states one."""
    if isinstance(upstream_seconds, bool) or not isinstance(upstream_seconds, int | float):
        return limit
    return int(min(limit, upstream_seconds)) if upstream_seconds > 0 else limit
