"""Start-up behaviour: the collector's walks leave out what the gateway loaded at start,
mitmproxy's per-message type check is off, a finished HTTP stream is freed without the
collector, and the gateway says it is ready only once it listens."""

from __future__ import annotations

import gc
import logging
import socket
import subprocess
import sys
from collections.abc import Iterator
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from mitmproxy import http
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.proxy import mode_specs
from mitmproxy.test import taddons

from hoopgw.addons import startup
from hoopgw.addons.startup import QuietCollector, ReadyAnnouncer
from scripts import bench
from tests import gc_probe, stack

# In a fresh interpreter: the cyclic garbage 200 requests and responses leave, and whether a
# response whose start is text is refused, before and after the check is turned off.
MESSAGES = """
import gc, time
from mitmproxy import http
from hoopgw.addons.startup import skip_message_typecheck

def build():
    for _ in range(200):
        http.Request("h", 80, b"POST", b"http", b"h", b"/q", b"HTTP/1.1", http.Headers(),
                     None, None, time.time(), None)
        http.Response(b"HTTP/1.1", 200, b"OK", http.Headers(), None, None, time.time(), None)
    return gc.collect()

def refused():
    try:
        http.Response(b"HTTP/1.1", 200, b"OK", http.Headers(), None, None, "now", None)
    except TypeError:
        return True
    return False

gc.collect()
gc.disable()
before = build(), refused()
gc.collect()  # what the refusal left
print(*before, skip_message_typecheck(), build(), refused())
"""


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


def test_mitmproxy_s_message_type_check_is_off_and_leaves_no_garbage() -> None:
    garbage, refused, turned_off, garbage_after, refused_after = subprocess.run(
        [sys.executable, "-c", MESSAGES], capture_output=True, text=True, check=True
    ).stdout.split()
    assert int(garbage) > 0 and refused == "True"  # mitmproxy as it ships, without -O
    assert turned_off == "True"
    assert int(garbage_after) == 0 and refused_after == "False"


def test_the_gateway_turns_the_check_off_when_it_loads() -> None:
    from hoopgw.addons import gateway  # noqa: F401  (the import is what turns it off)

    assert vars(http.MessageData)["__post_init__"] is startup._unchecked
    assert startup.skip_message_typecheck() is True  # idempotent


class Upstream(stack.LoopbackServer):
    """Answers every request with a small keep-alive 200."""

    def serve(self, handler: BaseHTTPRequestHandler) -> None:
        stack.read_body(handler)
        stack.send_answer(handler, 200, b"ok", "text/plain")


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = Upstream().start()
    yield server
    server.stop()


LEAN_BARE = bench.REPO_ROOT / "scripts" / "lean_bare.py"


def garbage_per_flow(home: Path, upstream: Upstream, scripts: list[Path]) -> float:
    """Objects of cyclic garbage each of 50 flows leaves in a real mitmdump with `scripts`."""
    mitmdump, port = bench.start_bare_mitmdump(
        home, upstream.url, extra_scripts=[*scripts, Path(gc_probe.__file__)]
    )
    connection = HTTPConnection(stack.LOOPBACK, port, timeout=30)  # connects at its request
    try:

        def get(path: str) -> bytes:
            connection.request("GET", path)
            answer = connection.getresponse()
            body = answer.read()
            assert answer.status == 200, body
            return body

        get("/warm-up")
        get(gc_probe.PATH)
        for number in range(50):
            assert get(f"/q/{number}") == b"ok"
        return int(get(gc_probe.PATH)) / 50
    finally:
        connection.close()
        mitmdump.stop()


def test_a_finished_stream_is_freed_without_the_collector(
    tmp_path: Path, upstream: Upstream
) -> None:
    """mitmproxy as it ships leaves each flow in a reference cycle; with the gateway's
    start-up (as scripts/lean_bare.py applies it) a flow leaves less than one object."""
    as_shipped = garbage_per_flow(tmp_path / "shipped", upstream, [])
    freed = garbage_per_flow(tmp_path / "freed", upstream, [LEAN_BARE])
    assert as_shipped >= 20, as_shipped
    assert freed < 1, freed


def test_a_finished_stream_s_end_states_keep_their_behaviour() -> None:
    from mitmproxy.proxy.layers.http import HttpLayer, HttpStream

    from hoopgw.addons import gateway  # noqa: F401  (the import is what frees streams)

    assert startup.free_finished_streams() is True  # idempotent
    assert getattr(HttpLayer.__init__, startup._PATCHED)
    with pytest.raises(AssertionError, match=r"HttpStream\.state_done: Expected no events"):
        HttpStream.state_done("an event")
    assert list(HttpStream.state_errored("an event")) == []
    assert HttpStream.state_done.__name__ == "state_done"


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
