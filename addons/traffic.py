"""Snowflake traffic handling common to every flow: classify, bound and parse once."""

from __future__ import annotations

import logging

from mitmproxy import ctx, exceptions, http
from mitmproxy.addonmanager import Loader

from addons import snowflake
from addons.flowstate import FlowState, Refusal, attach, state_of
from addons.snowflake import Endpoint, ProtocolError

logger = logging.getLogger(__name__)

# Endpoints whose request bodies the gateway must read before forwarding.
_JSON_REQUESTS = frozenset(
    {Endpoint.LOGIN, Endpoint.QUERY, Endpoint.TOKEN_REQUEST, Endpoint.ABORT, Endpoint.SQL_API}
)
# Endpoints whose responses carry tokens or statement outcomes.
_JSON_RESPONSES = frozenset(
    {
        Endpoint.LOGIN,
        Endpoint.QUERY,
        Endpoint.TOKEN_REQUEST,
        Endpoint.LOGOUT,
        Endpoint.SQL_API,
        Endpoint.MONITORING,
        Endpoint.RESULT,
    }
)


class SnowflakeTraffic:
    """Classifies each request, reads its JSON body once, and keeps mitmproxy in a safe mode.

    Request bodies must be whole before any hook decides on them (with
    `stream_large_bodies` a body would go upstream before `request` runs), and
    upstream connections are opened lazily so a refused client never causes one.
    """

    def __init__(self) -> None:
        self.request_limit = 16 * 1024 * 1024
        self.response_limit = 512 * 1024 * 1024

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "hoopgw_request_limit",
            int,
            self.request_limit,
            """
            Largest decoded request body, in bytes, that the gateway accepts.
            Snowflake drivers upload large bind sets to a stage instead of
            sending them inline, so the default leaves ample room; a larger
            (or gzip-expanded) body is refused with a Snowflake-shaped error.
            """,
        )
        loader.add_option(
            "hoopgw_response_limit",
            int,
            self.response_limit,
            """
            Largest decoded response body, in bytes, that the gateway parses to
            translate tokens and record statement outcomes. Larger responses
            still reach the client; their record notes that they were not parsed.
            """,
        )

    def configure(self, updated: set[str]) -> None:
        if "hoopgw_request_limit" in updated:
            if ctx.options.hoopgw_request_limit < 1024:
                raise exceptions.OptionsError(
                    "hoopgw_request_limit must be at least 1024 bytes, "
                    f"got {ctx.options.hoopgw_request_limit}"
                )
            self.request_limit = ctx.options.hoopgw_request_limit
        if "hoopgw_response_limit" in updated:
            if ctx.options.hoopgw_response_limit < 1024:
                raise exceptions.OptionsError(
                    "hoopgw_response_limit must be at least 1024 bytes, "
                    f"got {ctx.options.hoopgw_response_limit}"
                )
            self.response_limit = ctx.options.hoopgw_response_limit
        if "stream_large_bodies" in updated and ctx.options.stream_large_bodies:
            raise exceptions.OptionsError(
                "stream_large_bodies must stay unset with hoopgw: a streamed request "
                "would reach Snowflake before it is authenticated and recorded"
            )
        if "connection_strategy" in updated and ctx.options.connection_strategy != "lazy":
            ctx.options.update(connection_strategy="lazy")

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if not flow.live:
            return
        flow.request.stream = False
        endpoint = snowflake.classify(flow.request.method, flow.request.path)
        attach(flow, FlowState(endpoint=endpoint))

    def request(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None or state.answered or state.endpoint not in _JSON_REQUESTS:
            return
        try:
            state.request_body = snowflake.decode_body(flow.request, self.request_limit)
            state.request_json = snowflake.parse_json_object(state.request_body)
        except ProtocolError as exc:
            self._refuse_malformed(flow, state, str(exc))
            return
        if state.endpoint is Endpoint.LOGIN and state.request_json:
            data = state.request_json.get("data")
            if isinstance(data, dict):
                state.client_app = _text(data.get("CLIENT_APP_ID"))
                state.client_version = _text(data.get("CLIENT_APP_VERSION"))
        if state.client_app is None:
            state.client_app = flow.request.headers.get("user-agent")

    def response(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None or flow.response is None or state.answered:
            return
        if state.endpoint not in _JSON_RESPONSES:
            return
        try:
            state.response_body = snowflake.decode_body(flow.response, self.response_limit)
            state.response_json = snowflake.parse_json_object(state.response_body)
        except ProtocolError as exc:
            logger.warning("hoopgw: unreadable %s response: %s", state.endpoint, exc)

    @staticmethod
    def _refuse_malformed(flow: http.HTTPFlow, state: FlowState, reason: str) -> None:
        code = snowflake.CODE_GATEWAY_PROTOCOL
        response = snowflake.refusal_for(
            state.endpoint, code, f"hoopgw refused the request: {reason}"
        )
        state.refuse(flow, response, Refusal(code, reason, "protocol"))


def _text(value: object) -> str | None:
    return str(value)[:200] if value is not None else None
