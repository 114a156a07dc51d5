"""mitmproxy's addons that would act on a flow after the gateway are out of the chain, their
commands gone and their options refused; every other addon after the scripts is accounted for."""

from __future__ import annotations

from typing import Any

import pytest
from mitmproxy import exceptions, options
from mitmproxy.addonmanager import _get_name
from mitmproxy.addons import core, default_addons, dumper
from mitmproxy.test import taddons
from mitmproxy.tools.dump import DumpMaster
from mitmproxy.tools.web.master import WebMaster

from hoopgw.addons.lockdown import (
    FLOW_DETAIL_MAX,
    KEPT_AFTER_SCRIPTS,
    REFUSED_OPTIONS,
    REMOVED,
    MitmproxyLockdown,
    take_out,
)

FLOW_HOOKS = (
    "requestheaders",
    "request",
    "request_data",
    "responseheaders",
    "response",
    "response_data",
    "error",
    "http_connect",
    "websocket_message",
    "tcp_message",
    "udp_message",
    "dns_request",
    "dns_response",
)
# commands of the removed addons that would send, replay or copy flows
GONE_COMMANDS = (
    "replay.client",
    "replay.server",
    "export.clip",
    "export.file",
    "cut.clip",
    "cut.save",
    "save.file",
    "save.har",
    "browser.start",
)


def lockdown_on_mitmdumps_chain() -> tuple[Any, MitmproxyLockdown]:
    mitmdumps = [a for a in default_addons() if not isinstance(a, core.Core)] + [dumper.Dumper()]
    context = taddons.context(*mitmdumps)
    lockdown = MitmproxyLockdown()
    context.master.addons.add(lockdown)
    with context:
        context.configure(lockdown)  # as ScriptLoader configures a script it loaded
    return context, lockdown


def refusable_value(option: str, default: Any) -> Any:
    """A value other than the option's default that mitmproxy's type check accepts."""
    if isinstance(default, bool):
        return not default
    if isinstance(default, list | tuple):
        return ["|~q|SELECT|DROP TABLE t"]
    return "|~q|SELECT|DROP TABLE t" if option != "hardump" else "flows.har"


def test_the_removed_addons_leave_the_chain_and_their_commands_the_table() -> None:
    context, lockdown = lockdown_on_mitmdumps_chain()
    with context as tctx:
        addons = tctx.master.addons
        present = {_get_name(addon) for addon in addons.chain}
        assert set(lockdown.removed) == {item.name for item in REMOVED} - {"intercept"}
        for item in REMOVED:
            assert addons.get(item.name) is None
            assert item.name not in present
        for command in GONE_COMMANDS:
            assert command not in tctx.master.commands.commands
        # what the gateway needs stays
        for name in ("proxyserver", "scriptloader", "nextlayer", "tlsconfig", "block"):
            assert addons.get(name) is not None, name
        assert "flow.resume" in tctx.master.commands.commands


@pytest.mark.parametrize("option", sorted(REFUSED_OPTIONS))
def test_a_removed_addons_option_is_refused_with_why(option: str) -> None:
    context, lockdown = lockdown_on_mitmdumps_chain()
    with context as tctx:
        if option not in tctx.options:
            tctx.master.addons.add(WebMasterOptions())  # mitmweb's own (intercept)
        default = tctx.options.default(option)
        tctx.configure(lockdown, **{option: default})  # the default passes
        with pytest.raises(exceptions.OptionsError) as refused:
            tctx.configure(lockdown, **{option: refusable_value(option, default)})
        message = str(refused.value)
        assert message.startswith(f"{option} cannot be used with hoopgw: ")
        assert REFUSED_OPTIONS[option].why in message
        assert getattr(tctx.options, option) == default  # mitmproxy rolled the change back


class WebMasterOptions:
    """The options mitmweb's Intercept addon defines, for a chain without mitmweb."""

    def load(self, loader: Any) -> None:
        loader.add_option("intercept", str | None, None, "flow filter")
        loader.add_option("intercept_active", bool, False, "intercept on")


def test_flow_detail_that_prints_headers_or_bodies_is_refused() -> None:
    context, lockdown = lockdown_on_mitmdumps_chain()
    with context as tctx:
        tctx.configure(lockdown, flow_detail=FLOW_DETAIL_MAX)
        for level in range(FLOW_DETAIL_MAX + 1, 5):
            with pytest.raises(exceptions.OptionsError, match="flow_detail above 1"):
                tctx.configure(lockdown, flow_detail=level)
        assert tctx.options.flow_detail == FLOW_DETAIL_MAX


@pytest.mark.parametrize("master", [DumpMaster, WebMaster])
async def test_every_addon_after_the_scripts_with_a_flow_hook_is_removed_or_kept_with_why(
    master: type,
) -> None:
    """A mitmproxy upgrade that adds an addon acting on flows after the gateway fails here
    until the table says whether it goes and why."""
    chain = master(options.Options()).addons.chain
    names = [_get_name(addon) for addon in chain]
    after = chain[names.index("scriptloader") + 1 :]
    acting = {
        _get_name(addon)
        for addon in after
        if any(callable(getattr(addon, hook, None)) for hook in FLOW_HOOKS)
    }
    removed = {item.name for item in REMOVED}
    assert acting - removed == acting & KEPT_AFTER_SCRIPTS.keys(), acting - removed
    # every row of the table names an addon this mitmproxy has
    assert removed <= set(names) | {"intercept"}


async def test_mitmwebs_chain_loses_intercept_too() -> None:
    web = WebMaster(options.Options())
    assert web.addons.get("intercept") is not None
    removed = take_out(web, REMOVED)
    assert "intercept" in removed
    assert web.addons.get("intercept") is None
    assert not any(_get_name(addon) == "intercept" for addon in web.addons.chain)
