"""The mitmproxy content view itself: which bodies it takes, and its registration."""

from __future__ import annotations

from typing import Any

import orjson
from mitmproxy import contentviews, http

from hoopgw.addons.contentview.rendering import render
from hoopgw.addons.protocol import Endpoint, classify

# Endpoints whose bodies this view explains; everything else goes to other views.
_ENDPOINTS = frozenset(
    {
        Endpoint.LOGIN,
        Endpoint.QUERY,
        Endpoint.TOKEN_REQUEST,
        Endpoint.ABORT,
        Endpoint.SQL_API,
        Endpoint.RESULT,
        Endpoint.MONITORING,
        Endpoint.CORTEX_ANALYST,
        Endpoint.CORTEX_SEARCH,
    }
)


class SnowflakeContentview(contentviews.Contentview):
    """Renders Snowflake REST bodies for people; steps aside for anything else."""

    name = "Snowflake"
    syntax_highlight = "none"

    def render_priority(self, data: bytes, metadata: contentviews.Metadata) -> float:
        if _subject(metadata) is None or data.lstrip()[:1] != b"{":
            return -1
        return 2  # above mitmproxy's JSON view (1)

    def prettify(self, data: bytes, metadata: contentviews.Metadata) -> str:
        subject = _subject(metadata)
        body = orjson.loads(data)
        if not isinstance(body, dict):
            raise ValueError("not a JSON object")
        endpoint, is_request = subject if subject else (Endpoint.OTHER, True)
        hoopgw = _hoopgw_metadata(metadata)
        return render(endpoint, is_request, body, hoopgw=hoopgw, query=_query(metadata))


snowflake_view = SnowflakeContentview()
contentviews.add(snowflake_view)


def _subject(metadata: contentviews.Metadata) -> tuple[Endpoint, bool] | None:
    """(endpoint, is the request) for an HTTP body of a Snowflake endpoint, else None."""
    flow = metadata.flow
    message = metadata.http_message
    if not isinstance(flow, http.HTTPFlow) or message is None:
        return None
    endpoint = classify(flow.request.path)
    if endpoint not in _ENDPOINTS:
        return None
    return endpoint, message is flow.request


def _hoopgw_metadata(metadata: contentviews.Metadata) -> dict[str, Any]:
    flow = metadata.flow
    value = flow.metadata.get("hoopgw") if flow is not None else None
    return value if isinstance(value, dict) else {}


def _query(metadata: contentviews.Metadata) -> dict[str, str]:
    flow = metadata.flow
    if not isinstance(flow, http.HTTPFlow):
        return {}
    return {key: value for key, value in flow.request.query.items(multi=True)}
