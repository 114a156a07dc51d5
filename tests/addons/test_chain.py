"""mitmproxy's own addons grouped around the scripts: every addon still gets every event, in
the same order, and the scripts stay on their own."""

from __future__ import annotations

from typing import Any

from mitmproxy import options
from mitmproxy.addonmanager import _get_name, traverse
from mitmproxy.proxy.layers.http import HttpRequestHook
from mitmproxy.test import taddons, tflow
from mitmproxy.tools.dump import DumpMaster

from hoopgw.addons.chain import ChainGroups, Group, grouped


class Noting:
    """Any addon: notes each request event it gets; `fails` makes its hook raise."""

    def __init__(self, name: str, calls: list[str], fails: bool = False) -> None:
        self.name = name
        self.calls = calls
        self.fails = fails

    def request(self, flow: Any) -> None:
        self.calls.append(self.name)
        if self.fails:
            raise RuntimeError(f"{self.name} failed")


async def test_mitmdumps_chain_walks_in_the_same_order_with_the_scripts_on_their_own() -> None:
    chain = DumpMaster(options.Options()).addons.chain
    regrouped = grouped(chain)
    assert [_get_name(addon) for addon in traverse(regrouped) if not isinstance(addon, Group)] == [
        _get_name(addon) for addon in traverse(chain)
    ]
    assert [type(addon).__name__ for addon in regrouped] == ["Group", "ScriptLoader", "Group"]
    assert regrouped is not chain  # a new list: mitmproxy may be iterating over the old one
    assert grouped([chain[0]]) == [chain[0]]  # no scripts, nothing to group around


async def test_every_addon_gets_the_event_in_order_and_the_scripts_keep_theirs() -> None:
    calls: list[str] = []
    groups = ChainGroups()
    addons = [
        Noting("a", calls),
        Noting("b", calls, fails=True),  # a bug in one of mitmproxy's own hooks
        Noting("c", calls),
        Noting("scriptloader", calls),
        Noting("d", calls),
        Noting("e", calls),
        groups,
    ]
    with taddons.context(*addons, loadcore=False) as tctx:
        tctx.configure(groups)
        assert [type(addon).__name__ for addon in tctx.master.addons.chain] == [
            "Group",
            "Noting",
            "Group",
        ]
        assert tctx.master.addons.get("d") is addons[4]
        await tctx.master.addons.trigger_event(HttpRequestHook(tflow.tflow()))
    # b's failure skips the rest of its group (c) for this event, and nothing else
    assert calls == ["a", "b", "scriptloader", "d", "e"]
