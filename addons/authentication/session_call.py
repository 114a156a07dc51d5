"""A call within a session: the sealed session token goes, Snowflake's own takes its place."""

from __future__ import annotations

import functools

from mitmproxy import http

from hoopgw.addons import protocol
from hoopgw.addons.authentication.admission import SESSION_CALL, admit
from hoopgw.addons.authentication.in_flight import InFlight
from hoopgw.addons.authentication.reseal import SMALL_RESPONSE, parsed_response
from hoopgw.addons.flowstate import FlowState
from hoopgw.addons.protocol import Endpoint, Shape
from hoopgw.addons.refusals import replace_answer
from hoopgw.addons.session_tokens import SealedSession, SessionTokens

_SESSION_EXPIRED = str(protocol.CODE_SESSION_EXPIRED)


class SessionCall:
    """Every endpoint but login, renewal and the SQL API; a logout also ends the session."""

    def __init__(self, tokens: SessionTokens) -> None:
        self.tokens = tokens

    async def request(self, flow: http.HTTPFlow, state: FlowState) -> InFlight | None:
        admitted = admit(self.tokens, flow, state, SESSION_CALL)
        if admitted is None:
            return None
        session, _, now = admitted
        flow.request.headers["authorization"] = protocol.snowflake_authorization(
            session.upstream_token
        )
        if state.endpoint is Endpoint.LOGOUT:
            state.session_ended = True
            self.tokens.revoked.revoke(session.session_id, session.session_expires_at, now)
        return InFlight(functools.partial(self._answered, session=session))

    @staticmethod
    def _answered(flow: http.HTTPFlow, state: FlowState, session: SealedSession) -> None:
        """Snowflake's 390112 makes drivers renew; without an upstream master they must log in.

        A streamed answer has already gone to the client: replacing it would only
        make the record disagree with what the client got (and 390112 is never a
        large 2xx answer, the only kind streamed).
        """
        if session.upstream_renews or state.streamed is not None:
            return
        assert flow.response is not None
        payload = state.response_json
        if payload is None and len(flow.response.raw_content or b"") <= SMALL_RESPONSE:
            payload = parsed_response(flow.response, state)
        if payload is not None and str(payload.get("code")) == _SESSION_EXPIRED:
            replace_answer(
                flow,
                state,
                Shape.SESSION,
                protocol.CODE_SESSION_INVALID,
                "Snowflake ended the session and it cannot be renewed; log in again",
            )
