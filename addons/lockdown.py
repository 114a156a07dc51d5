"""mitmproxy's own addons that a Snowflake gateway must not run, out of the chain.

`mitmdump` loads some thirty addons of its own, and a script's sit in the
middle of them (after `ScriptLoader`). Several that come after the gateway
act on a flow once the gateway has checked, masked and recorded it:
`modify_body` could turn a checked SELECT into a DROP, `map_remote` could send
the request, with the gateway's Snowflake token in it, to another host,
`server_replay` and `map_local` could answer in Snowflake's place, and
`save_stream_file` and `hardump` write flows unredacted. Others send or copy
flows out of the process (`replay.client`, `export`, `cut`), rewrite requests
before the gateway sees them (`anticache`, `anticomp`), or serve what a
reverse proxy in front of Snowflake never does (the browser, mitm.it).

`MitmproxyLockdown` takes those addons out of mitmproxy's chain and their
commands out of its command table as soon as the gateway is configured (right
after mitmproxy loads it, before anything runs), and refuses their options: at
start-up with one line, at run time (mitmweb's Options tab) by rejecting the
change. Besides closing those holes, each addon out of the chain
is one less step on every event: mitmproxy calls every addon of its chain,
each inside its own error guard, on four flow events and four `update`
events per statement, whether the addon has a hook for them or not
(docs/performance.md, "Thirteenth round").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Final

from mitmproxy import ctx, exceptions

logger = logging.getLogger("hoopgw")


@dataclass(frozen=True)
class Removed:
    """One mitmproxy addon the gateway takes out, by its name in mitmproxy's lookup."""

    name: str
    why: str
    options: tuple[str, ...] = ()
    """Its options, refused unless at their defaults: with the addon gone they would do
    nothing, and what they would do is why it is gone."""


REMOVED: Final = (
    Removed(
        "modifybody",
        "it would rewrite statements and answers after the gateway checked, masked and "
        "recorded them",
        ("modify_body",),
    ),
    Removed(
        "modifyheaders",
        "it would rewrite headers, credentials included, after the gateway set them",
        ("modify_headers",),
    ),
    Removed(
        "mapremote",
        "it would send requests, with the gateway's Snowflake credentials, to another host",
        ("map_remote",),
    ),
    Removed(
        "maplocal",
        "it would answer requests from local files in Snowflake's place",
        ("map_local",),
    ),
    Removed(
        "serverplayback",
        "it would answer statements from a file in Snowflake's place",
        ("server_replay",),
    ),
    Removed(
        "upstreamauth",
        "it would replace the gateway's Snowflake credentials in every request",
        ("upstream_auth",),
    ),
    Removed(
        "stickyauth",
        "it would copy one request's Authorization header into others",
        ("stickyauth",),
    ),
    Removed(
        "stickycookie",
        "it would send Snowflake's cookies on requests the gateway stripped them from",
        ("stickycookie",),
    ),
    Removed(
        "save",
        "it writes flows unredacted, secrets included; the gateway records them redacted",
        ("save_stream_file",),
    ),
    Removed(
        "savehar",
        "it writes flows unredacted, secrets included; the gateway records them redacted",
        ("hardump",),
    ),
    Removed(
        "clientplayback",
        "it would send flows to Snowflake again, with the credentials they carry",
        ("client_replay",),
    ),
    Removed("export", "it copies flows, secrets included, as curl, httpie or raw requests"),
    Removed("cut", "it copies flows' fields, secrets included, to files or the clipboard"),
    Removed(
        "anticache",
        "it would rewrite requests' headers; the gateway forwards what the driver sent",
        ("anticache",),
    ),
    Removed(
        "anticomp",
        "it would rewrite requests' headers; the gateway forwards what the driver sent",
        ("anticomp",),
    ),
    Removed(
        "intercept",
        "mitmweb's user could edit statements after the gateway checked and recorded them",
        ("intercept", "intercept_active"),
    ),
    Removed("browser", "a reverse proxy in front of Snowflake starts no browser"),
    Removed("onboarding", "a reverse proxy in front of Snowflake serves no mitm.it pages"),
)
REFUSED_OPTIONS: Final = {option: removed for removed in REMOVED for option in removed.options}
KEPT_AFTER_SCRIPTS: Final = {
    "dnsresolver": "it answers DNS queries in mitmproxy's dns mode, never an HTTP flow",
    "tlsconfig": "its request hook answers only requests for mitmproxy's own CRL path",
    "updatealtsvc": "it rewrites Snowflake's Alt-Svc header so that clients stay on the gateway",
    "dumper": "it logs flows; above flow_detail 1 it would print their headers and bodies, so "
    "those levels are refused",
    "view": "it holds the flows mitmweb lists (live mitmweb is for operators: docs/inspection.md)",
}
"""mitmproxy's addons after the scripts that have a flow hook and stay, each with why: with
`REMOVED`, every such addon of mitmdump and mitmweb (tests/addons/test_lockdown.py)."""
FLOW_DETAIL_MAX: Final = 1
"""mitmproxy's Dumper prints headers from 2 and bodies from 3: tokens and credentials."""


class MitmproxyLockdown:
    """Takes `REMOVED` out of mitmproxy's chain and command table, and refuses their options."""

    def __init__(self) -> None:
        self.removed: list[str] | None = None

    def configure(self, updated: set[str]) -> None:
        if self.removed is None:
            # at the first configure, not at load: mitmproxy appends an addon it has just
            # loaded to the chain list it held before the load, so a chain rebuilt then
            # would be lost
            self.removed = take_out(ctx.master, REMOVED)
            logger.debug("hoopgw: mitmproxy addons taken out: %s", ", ".join(self.removed))
        for option in sorted(updated & REFUSED_OPTIONS.keys()):  # mitmweb's only in mitmweb
            if getattr(ctx.options, option) != ctx.options.default(option):
                raise exceptions.OptionsError(
                    f"{option} cannot be used with hoopgw: {REFUSED_OPTIONS[option].why}"
                )
        if "flow_detail" in updated and ctx.options.flow_detail > FLOW_DETAIL_MAX:
            raise exceptions.OptionsError(
                f"flow_detail above {FLOW_DETAIL_MAX} cannot be used with hoopgw: mitmproxy "
                "would print requests' and answers' headers and bodies, tokens and "
                "credentials included"
            )


def take_out(master: Any, removed: tuple[Removed, ...]) -> list[str]:
    """Drop each addon of `removed` from `master`'s chain, lookup and commands; the names
    of those that were there.

    Not `AddonManager.remove`: that runs the addon's `done`, which
    `ClientPlayback` defines as a coroutine, and it cannot await one. Taken out
    when the gateway's script is configured, before `running`, these addons have
    started nothing to stop. The chain is rebuilt, not changed in place: mitmproxy
    may be iterating over it (the script is configured from `ScriptLoader.configure`).
    """
    manager = master.addons
    gone = {item.name: addon for item in removed if (addon := manager.get(item.name)) is not None}
    if not gone:
        return []
    out = {id(addon) for addon in gone.values()}
    manager.chain = [addon for addon in manager.chain if id(addon) not in out]
    for name in gone:
        del manager.lookup[name]
    commands = master.commands.commands
    for path in [path for path, command in commands.items() if _owner(command) in out]:
        del commands[path]
    return list(gone)


def _owner(command: Any) -> int | None:
    owner = getattr(command.func, "__self__", None)
    return None if owner is None else id(owner)
