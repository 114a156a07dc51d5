"""Authentication: OIDC in, the gateway's own Snowflake credential out, sealed tokens between.

The hook that runs second for every flow (see addons/flowstate.py). It hands
each request to the handler of its protocol, chosen by endpoint:

- login (login.py): verify the caller's OIDC token and groups, choose the role,
  rewrite the login so Snowflake sees only the gateway's credential; on the way
  back replace Snowflake's session and master tokens with sealed gateway tokens;
- renewal (renewal.py): translate a token renewal both ways;
- session call (session_call.py), every other Snowflake call: open the sealed
  session token, swap in the upstream one, and tell later hooks who the caller
  is; a logout also ends the session;
- SQL API (sql_api.py): verify the bearer token like a login and replace it by
  the gateway's credential; a managed MCP server's calls are authenticated the same way.

The handlers share one caller check (caller_check.py), one admission of a
sealed token (admission.py) and one re-seal of an answer that hands out new
tokens (reseal.py). A refusal never reaches Snowflake: the gateway answers in
the shape the driver shows its user. The request itself is forwarded by
mitmproxy only after the recorder, a later hook, has made it durable.
"""

from __future__ import annotations

import asyncio
import weakref

from mitmproxy import exceptions, http
from mitmproxy.addonmanager import Loader

from hoopgw.addons.authentication.caller_check import CallerCheck
from hoopgw.addons.authentication.in_flight import Handler, InFlight
from hoopgw.addons.authentication.login import AuthenticatorRequest, Login
from hoopgw.addons.authentication.renewal import Renewal
from hoopgw.addons.authentication.reseal import Resealer
from hoopgw.addons.authentication.scrub import scrub_upstream_credentials
from hoopgw.addons.authentication.session_call import SessionCall
from hoopgw.addons.authentication.sql_api import SqlApi
from hoopgw.addons.credentials import UpstreamCredentials
from hoopgw.addons.flowstate import state_of
from hoopgw.addons.identity import Identity
from hoopgw.addons.names import AUTHENTICATION
from hoopgw.addons.protocol import Endpoint
from hoopgw.addons.session_tokens import SessionTokens

__all__ = ["Authentication"]


class Authentication:
    """Verifies callers, swaps credentials and translates tokens; see the module docstring."""

    def __init__(self) -> None:
        self.identity = Identity()
        self.credentials = UpstreamCredentials()
        self.tokens = SessionTokens()
        caller_check = CallerCheck(self.identity)
        resealer = Resealer(self.tokens)
        # every endpoint not in the table is a call within a session
        self._session_call = SessionCall(self.tokens)
        sql_api = SqlApi(self.credentials, caller_check)
        self._handlers: dict[Endpoint, Handler] = {
            Endpoint.LOGIN: Login(self.identity, self.credentials, caller_check, resealer),
            Endpoint.AUTHENTICATOR: AuthenticatorRequest(),
            Endpoint.TOKEN_REQUEST: Renewal(self.tokens, resealer),
            Endpoint.SQL_API: sql_api,
            Endpoint.MCP_SERVER: sql_api,  # the same bearer swap (addons/mcp.py)
        }
        self._in_flight: weakref.WeakKeyDictionary[http.HTTPFlow, InFlight] = (
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
        credential = self.credentials.credential
        if self.identity.user_map and credential and not self.credentials.signs_for_any_user:
            raise exceptions.OptionsError(
                "hoopgw_upstream_user_map needs hoopgw_upstream_private_key: a password "
                "or OAuth token belongs to one Snowflake user, so only the shared "
                "hoopgw_upstream_user works with it"
            )

    def running(self) -> None:
        verifier = self.identity.verifier
        if verifier is not None:
            task = asyncio.create_task(verifier.warm())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def request(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None or state.answered or state.endpoint is Endpoint.CHUNK:
            return  # a chunk's sealed URL is its credential, checked by addons/results.py
        handler = self._handlers.get(state.endpoint, self._session_call)
        in_flight = await handler.request(flow, state)
        if in_flight is not None:
            self._in_flight[flow] = in_flight
        state.passed.add(AUTHENTICATION)

    def response(self, flow: http.HTTPFlow) -> None:
        in_flight = self._in_flight.pop(flow, None)
        state = state_of(flow)
        if in_flight is None or state is None:
            return
        scrub_upstream_credentials(flow.request, state)
        if flow.response is None or state.answered or in_flight.on_answer is None:
            return
        in_flight.on_answer(flow, state)

    def error(self, flow: http.HTTPFlow) -> None:
        in_flight = self._in_flight.pop(flow, None)
        state = state_of(flow)
        if in_flight is not None and state is not None:
            scrub_upstream_credentials(flow.request, state)
