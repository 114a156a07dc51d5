"""A test-only mitmproxy script: logs the addon chain and command table mitmproxy runs with,
once every addon is running, so a test can read what a real gateway process kept."""

from __future__ import annotations

import logging

from mitmproxy import ctx
from mitmproxy.addonmanager import _get_name

PREFIX = "test chain: "
COMMANDS = "test commands: "


class ChainReport:
    def running(self) -> None:
        names = [_get_name(addon) for addon in ctx.master.addons.chain]
        logging.getLogger("hoopgw").warning("%s%s", PREFIX, " ".join(names))
        commands = sorted(ctx.master.commands.commands)
        logging.getLogger("hoopgw").warning("%s%s", COMMANDS, " ".join(commands))


addons = [ChainReport()]
