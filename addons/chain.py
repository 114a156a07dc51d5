"""mitmproxy's own addons grouped, so that an event costs one guarded call per group.

mitmproxy calls every addon of its chain on every event, each inside its own
error guard (`safecall`, a generator-based context manager) and its own
coroutine, whether the addon has a hook for the event or not, and a statement
is eight events (four flow events, an `update` after each). With the
lockdown's addons out (addons/lockdown.py) `mitmdump` still runs nineteen, and
their guards and coroutines were the largest single cost of a statement on the
loop after the gateway's own work (docs/performance.md, "Thirteenth round").

`ChainGroups` puts the run of mitmproxy's addons before the scripts and the run
after them under one `Group` each. mitmproxy walks a group's addons in the same
order (as it walks any addon's sub-addons), so every addon still gets every
event, in the same place; what changes is that an exception in one of
mitmproxy's own hooks (a bug in mitmproxy) skips the rest of its group for that
event instead of only itself. `ScriptLoader`, and with it the gateway, stays on
its own, so nothing the gateway does can keep mitmproxy's addons from an event.
Names (`ctx.master.addons.get`) and commands are mitmproxy's registrations,
untouched.
"""

from __future__ import annotations

import logging
from typing import Any

from mitmproxy import ctx
from mitmproxy.addonmanager import _get_name

logger = logging.getLogger("hoopgw")

SCRIPTS = "scriptloader"


class Group:
    """Consecutive addons of mitmproxy's chain, which mitmproxy walks as sub-addons."""

    def __init__(self, addons: list[Any]) -> None:
        self.addons = addons

    def __repr__(self) -> str:
        return f"Group({', '.join(_get_name(addon) for addon in self.addons)})"


class ChainGroups:
    """Groups mitmproxy's chain around `ScriptLoader` at the gateway's first `configure`."""

    def __init__(self) -> None:
        self.grouped = False

    def configure(self, updated: set[str]) -> None:
        if not self.grouped:
            # not at load: mitmproxy appends an addon it has just loaded to the chain list it
            # held before the load, so a chain rebuilt then would be lost
            ctx.master.addons.chain = grouped(ctx.master.addons.chain)
            self.grouped = True
            logger.debug("hoopgw: mitmproxy's chain: %s", ctx.master.addons.chain)


def grouped(chain: list[Any]) -> list[Any]:
    """`chain` with the runs of addons before and after `ScriptLoader` each in one `Group`;
    a new list (mitmproxy may be iterating over the old one), the same order when walked."""
    names = [_get_name(addon) for addon in chain]
    if SCRIPTS not in names:
        return list(chain)
    split = names.index(SCRIPTS)
    before, scripts, after = chain[:split], chain[split], chain[split + 1 :]
    return [*_as_group(before), scripts, *_as_group(after)]


def _as_group(addons: list[Any]) -> list[Any]:
    return [Group(addons)] if len(addons) > 1 else list(addons)
