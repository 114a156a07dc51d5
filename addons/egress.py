"""How the gateway reaches cloud storage: directly, or through the HTTP proxy an operator names.

Result chunks and stage files are fetched by the gateway itself (addons/results.py).
Where egress must pass an HTTP proxy, mitmproxy's own upstream mode cannot help (it
cannot be combined with the reverse mode the gateway runs in), so each storage fetch
gets its own server connection `via` the proxy, tunnelled with CONNECT.
"""

from __future__ import annotations

import logging
import urllib.parse
import urllib.request
from typing import Final

from mitmproxy import connection, ctx, exceptions, http
from mitmproxy.addonmanager import Loader

logger = logging.getLogger(__name__)

FROM_ENVIRONMENT: Final = "env"
"""`hoopgw_storage_proxy` value: HTTPS_PROXY / HTTP_PROXY and NO_PROXY, as most tools read them."""

Via = tuple[str, tuple[str, int]]


def parse_proxy(url: str) -> Via:
    """`http://host:port` as mitmproxy's `via`; anything else is an operator error."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        # the value is not echoed: a malformed URL may still carry a password
        raise ValueError("not an http(s)://host:port proxy URL")
    if parsed.username or parsed.password or parsed.path not in ("", "/"):
        raise ValueError("the proxy URL takes no credentials or path (CONNECT without auth)")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return parsed.scheme, (parsed.hostname, port)


class StorageEgress:
    """Chooses, per storage host, a direct connection or one through the operator's proxy."""

    def __init__(self) -> None:
        self.proxy: Via | None = None
        self.from_environment = False

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "hoopgw_storage_proxy",
            str,
            "",
            """
            HTTP proxy the gateway fetches result chunks and stage files through
            (http://host:port; each fetch is tunnelled with CONNECT, so the proxy
            never sees the storage key headers in clear). `env`: the proxy in
            HTTPS_PROXY (or HTTP_PROXY for http storage), skipping the hosts in
            NO_PROXY. Empty (the default): storage is reached directly. Snowflake
            itself is always reached directly (the reverse-proxy target).
            """,
        )

    def configure(self, updated: set[str]) -> None:
        if "hoopgw_storage_proxy" not in updated:
            return
        value = ctx.options.hoopgw_storage_proxy.strip()
        self.from_environment = value == FROM_ENVIRONMENT
        self.proxy = None
        if value and not self.from_environment:
            try:
                self.proxy = parse_proxy(value)
            except ValueError as exc:
                raise exceptions.OptionsError(f"hoopgw_storage_proxy: {exc}") from None
        if self.from_environment:
            for scheme in ("https", "http"):
                proxy = urllib.request.getproxies_environment().get(scheme)
                try:
                    if proxy:
                        parse_proxy(proxy)  # a malformed variable stops start-up, not a fetch
                except ValueError as exc:
                    raise exceptions.OptionsError(
                        f"hoopgw_storage_proxy=env: {scheme.upper()}_PROXY: {exc}"
                    ) from None

    def via(self, scheme: str, host: str) -> Via | None:
        """The proxy to reach storage at `host` through, or None for a direct connection."""
        if not self.from_environment:
            return self.proxy
        if urllib.request.proxy_bypass_environment(host):
            return None
        proxy = urllib.request.getproxies_environment().get(scheme)
        return parse_proxy(proxy) if proxy else None

    def route(self, flow: http.HTTPFlow) -> None:
        """Give a flow already pointed at storage its own connection through the proxy."""
        request = flow.request
        via = self.via(request.scheme, request.host)
        if via is None:
            return
        flow.server_conn = connection.Server(address=(request.host, request.port), via=via)
        logger.debug("hoopgw: storage fetch via %s:%d", *via[1])
