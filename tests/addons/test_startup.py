"""Start-up behaviour: the collector's walks leave out what the gateway loaded at start,
and the gateway says it is ready only once it listens."""

from __future__ import annotations

import gc
import logging
import socket

import pytest
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.proxy import mode_specs
from mitmproxy.test import taddons

from hoopgw.addons.startup import QuietCollector, ReadyAnnouncer
from tests import stack


def test_running_freezes_the_start_up_heap_out_of_full_collections() -> None:
    loaded_at_start = [[index] for index in range(10_000)]  # tracked containers
    gc.collect()
    before, frozen_before = len(gc.get_objects(generation=2)), gc.get_freeze_count()
    try:
        QuietCollector().running()
        assert gc.get_freeze_count() >= frozen_before + len(loaded_at_start)
        gc.collect()
        # a full collection now walks only what was made after start
        assert len(gc.get_objects(generation=2)) < before - len(loaded_at_start)
    finally:
        gc.unfreeze()


async def announced(spec: str, caplog: pytest.LogCaptureFixture) -> bool:
    """Whether ReadyAnnouncer logs its line once mitmproxy has tried to open `spec`."""
    caplog.clear()
    proxyserver, announcer = Proxyserver(), ReadyAnnouncer()
    with taddons.context(proxyserver, announcer) as tctx:
        tctx.configure(proxyserver, listen_host=stack.LOOPBACK)
        opened = await proxyserver.servers.update([mode_specs.ProxyMode.parse(spec)])
        try:
            announcer.running()
        finally:
            if opened:
                await proxyserver.servers.update([])
    return "hoopgw: gateway ready" in caplog.text


async def test_ready_is_announced_only_once_every_listener_is_open(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="hoopgw")
    with socket.create_server((stack.LOOPBACK, 0)) as taken:
        port = taken.getsockname()[1]
        assert not await announced(f"reverse:http://127.0.0.1:9@{port}", caplog)
    assert await announced(f"reverse:http://127.0.0.1:9@{stack.free_port()}", caplog)
