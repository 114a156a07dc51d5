"""Start-up behaviour shared by the gateway's addons."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from mitmproxy import ctx, exceptions

logger = logging.getLogger("hoopgw")


def _running() -> bool:
    server = ctx.master.addons.get("proxyserver")
    return bool(server and getattr(server, "is_running", False))


def one_line_option_errors(addon: Any) -> Any:
    """Make an addon's bad option value stop start-up with one clear line.

    mitmproxy logs a script's configure exception with a traceback and then
    exits because an error was logged during start-up. An operator needs the
    option's name and what is wrong, not a traceback: at start-up the error is
    logged as one line (mitmproxy still exits with status 1); once running,
    the OptionsError propagates so mitmproxy rejects the change.
    """
    configure: Callable[[set[str]], None] | None = getattr(addon, "configure", None)
    if configure is None:
        return addon

    @functools.wraps(configure)
    def checked(updated: set[str]) -> None:
        try:
            configure(updated)
        except exceptions.OptionsError as exc:
            if _running():
                raise
            logger.error("hoopgw: invalid option: %s", exc)

    addon.configure = checked
    return addon


class ReadyAnnouncer:
    """Logs one line once every addon is configured and running.

    Operators and the test rig wait for this line rather than for the port:
    mitmproxy may accept connections a moment before a script has loaded.
    """

    def running(self) -> None:
        mode = ", ".join(ctx.options.mode)
        logger.info("hoopgw: gateway ready (%s)", mode)
