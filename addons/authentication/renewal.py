"""Renewal: a sealed master token renews the session, upstream or, without one, here."""

from __future__ import annotations

import functools
import time
from dataclasses import replace
from typing import Any

import orjson
from mitmproxy import http

from hoopgw.addons import protocol
from hoopgw.addons.authentication.admission import RENEWAL, admit, refuse_session
from hoopgw.addons.authentication.in_flight import InFlight
from hoopgw.addons.authentication.reseal import RENEWAL_ANSWER, Resealer
from hoopgw.addons.flowstate import FlowState
from hoopgw.addons.session_tokens import SealedSession, SessionTokens, TokenError, TokenKind


class Renewal:
    """token-request: translated both ways, or answered here when Snowflake issued no master."""

    def __init__(self, tokens: SessionTokens, resealer: Resealer) -> None:
        self.tokens = tokens
        self.resealer = resealer

    async def request(self, flow: http.HTTPFlow, state: FlowState) -> InFlight | None:
        admitted = admit(self.tokens, flow, state, RENEWAL)
        if admitted is None:
            return None
        master, presented, _ = admitted
        body = state.request_json or {}
        try:
            upstream_old = self._old_upstream_session(master, body.get("oldSessionToken"))
        except TokenError as exc:
            refuse_session(flow, state, str(exc))
            return None
        if not master.upstream_renews:
            self._renew_locally(flow, master, presented)
            return InFlight()
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
        return InFlight(functools.partial(self._answered, master=master))

    def _old_upstream_session(self, master: SealedSession, old: object) -> str | None:
        """The upstream token the renewal replaces: from the client's old session token."""
        if isinstance(old, str) and old:
            session = self.tokens.sealer.open(old)
            if session.kind is not TokenKind.SESSION or session.session_id != master.session_id:
                raise TokenError("the old session token belongs to another session")
            return session.upstream_token
        return master.upstream_session_token

    def _renew_locally(self, flow: http.HTTPFlow, master: SealedSession, presented: str) -> None:
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

    def _answered(self, flow: http.HTTPFlow, state: FlowState, master: SealedSession) -> None:
        def mint(
            data: dict[str, Any], now: int, session_expires: int, master_expires: int
        ) -> tuple[SealedSession, SealedSession]:
            upstream_session = str(data["sessionToken"])
            session = replace(
                master,
                kind=TokenKind.SESSION,
                upstream_token=upstream_session,
                upstream_session_token=None,
                issued_at=now,
                expires_at=session_expires,
            )
            renewed_master = replace(
                master,
                upstream_token=str(data.get("masterToken") or master.upstream_token),
                upstream_session_token=upstream_session,
                issued_at=now,
                expires_at=master_expires,
            )
            return session, renewed_master

        self.resealer.reseal(
            flow, state, RENEWAL_ANSWER, mint, expires_by=master.session_expires_at
        )
