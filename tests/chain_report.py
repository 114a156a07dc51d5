"""A test-only mitmproxy script: logs the addons mitmproxy walks on an event (its chain,
sub-addons included, the gateway's concerns not, as they are hidden from its walk) and its
command table, once every addon is running, so a test can read what a real process kept."""

from __future__ import annotations

import logging

from mitmproxy import ctx
from mitmproxy.addonmanager import _get_name, traverse

PREFIX = "test chain: "
TOP_LEVEL = "test top level: "
COMMANDS = "test commands: "


class ChainReport:
    def running(self) -> None:
        names = [_get_name(addon) for addon in traverse(ctx.master.addons.chain)]
        logging.getLogger("hoopgw").warning("%s%s", PREFIX, " ".join(names))
        top = [_get_name(addon) for addon in ctx.master.addons.chain]
        logging.getLogger("hoopgw").warning("%s%s", TOP_LEVEL, " ".join(top))
        commands = sorted(ctx.master.commands.commands)
        logging.getLogger("hoopgw").warning("%s%s", COMMANDS, " ".join(commands))


addons = [ChainReport()]
