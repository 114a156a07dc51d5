"""SharedPort: the reverse-mode listener opened with SO_REUSEPORT, or a one-line refusal."""

from __future__ import annotations

import asyncio
import errno
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mitmproxy import exceptions
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.proxy.mode_servers import ReverseInstance, ServerInstance
from mitmproxy.test import taddons

from hoopgw.addons.balance import BalancedListener, ConnectionLedger
from hoopgw.addons.shared_port import SharedPort
from tests import stack

UPSTREAM = "http://127.0.0.1:9"


@pytest.fixture
def shared_port() -> Iterator[SharedPort]:
    addon = SharedPort()
    yield addon
    addon.done()
    assert "listen" not in vars(ReverseInstance)


def refusal(addon: SharedPort, **options: object) -> str:
    with taddons.context(addon) as tctx, pytest.raises(exceptions.OptionsError) as failure:
        tctx.configure(addon, hoopgw_reuse_port=True, server=False, **options)
    assert "listen" not in vars(ReverseInstance)
    return str(failure.value)


def test_port_zero_is_refused(shared_port: SharedPort) -> None:
    message = refusal(shared_port, mode=[f"reverse:{UPSTREAM}@0"])
    assert message == (
        f"hoopgw_reuse_port needs a fixed listen port, not 0 (--mode reverse:{UPSTREAM}@0):"
        " with port 0 each process would listen on a port of its own"
    )
    message = refusal(shared_port, mode=[f"reverse:{UPSTREAM}"], listen_port=0)
    assert "needs a fixed listen port, not 0" in message


@pytest.mark.parametrize("mode", ["regular@8080", "socks5@1080", "upstream:http://proxy:3128"])
def test_a_mode_other_than_reverse_is_refused(shared_port: SharedPort, mode: str) -> None:
    message = refusal(shared_port, mode=[f"reverse:{UPSTREAM}@8443", mode])
    assert message == f"hoopgw_reuse_port works only in reverse mode, not with --mode {mode}"


def test_a_reverse_mode_over_udp_only_is_refused(shared_port: SharedPort) -> None:
    message = refusal(shared_port, mode=["reverse:quic://127.0.0.1:9@8443"])
    assert "needs a TCP listener" in message


def test_a_platform_without_linux_reuseport_is_refused(
    shared_port: SharedPort, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    message = refusal(shared_port, mode=[f"reverse:{UPSTREAM}@8443"])
    assert message.startswith("hoopgw_reuse_port needs Linux's SO_REUSEPORT")
    assert "(darwin)" in message


def test_mitmproxy_opening_its_own_listeners_is_refused(shared_port: SharedPort) -> None:
    with taddons.context(shared_port) as tctx, pytest.raises(exceptions.OptionsError) as failure:
        tctx.configure(shared_port, hoopgw_reuse_port=True, mode=[f"reverse:{UPSTREAM}@8443"])
    assert str(failure.value).startswith("hoopgw_reuse_port needs --set server=false")


def test_off_checks_nothing_and_leaves_mitmproxy_s_listen(shared_port: SharedPort) -> None:
    with taddons.context(shared_port) as tctx:
        tctx.configure(shared_port, mode=[f"reverse:{UPSTREAM}"], listen_port=0)
        tctx.configure(shared_port, hoopgw_reuse_port=True, server=False, listen_port=8443)
        assert "listen" in vars(ReverseInstance)
        tctx.configure(shared_port, hoopgw_reuse_port=False)
        assert "listen" not in vars(ReverseInstance)


async def test_two_reverse_listeners_share_a_port_only_while_the_option_is_on(
    shared_port: SharedPort,
) -> None:
    port = stack.free_port()
    spec = f"reverse:{UPSTREAM}@{port}"
    with taddons.context(shared_port) as tctx:
        tctx.configure(shared_port, hoopgw_reuse_port=True, server=False, mode=[spec])
        first, second = (ServerInstance.make(spec, Proxyserver()) for _ in range(2))
        servers = [*await first.listen(stack.LOOPBACK, port)]
        servers += await second.listen(stack.LOOPBACK, port)
        try:
            assert [server.sockets[0].getsockname()[1] for server in servers] == [port, port]
            tctx.configure(shared_port, hoopgw_reuse_port=False)
            with pytest.raises(OSError) as failure:
                await ServerInstance.make(spec, Proxyserver()).listen(stack.LOOPBACK, port)
            assert failure.value.errno == errno.EADDRINUSE
        finally:
            for server in servers:
                server.close()


async def test_running_has_mitmproxy_open_the_listener_with_so_reuseport(
    shared_port: SharedPort,
) -> None:
    proxyserver = Proxyserver()
    port = stack.free_port()
    spec = f"reverse:{UPSTREAM}@{port}"
    with taddons.context(proxyserver, shared_port) as tctx:
        tctx.configure(proxyserver, mode=[spec], listen_host=stack.LOOPBACK, server=False)
        tctx.configure(shared_port, hoopgw_reuse_port=True)
        proxyserver.running()
        await shared_port.running()
        try:
            [instance] = proxyserver.servers
            assert instance.is_running and tctx.options.server
            [listener] = instance._servers[0].sockets  # type: ignore[attr-defined]
            assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        finally:
            await proxyserver.servers.update([])


async def test_a_listener_that_cannot_open_shuts_mitmproxy_down(shared_port: SharedPort) -> None:
    proxyserver = Proxyserver()
    with (
        taddons.context(proxyserver, shared_port) as tctx,
        socket.create_server((stack.LOOPBACK, 0)) as taken,
    ):
        spec = f"reverse:{UPSTREAM}@{taken.getsockname()[1]}"
        tctx.configure(proxyserver, mode=[spec], listen_host=stack.LOOPBACK, server=False)
        tctx.configure(shared_port, hoopgw_reuse_port=True)
        proxyserver.running()
        await shared_port.running()
        [instance] = proxyserver.servers
        assert not instance.is_running
        await asyncio.wait_for(tctx.master.should_exit.wait(), timeout=10)


def test_balancing_without_a_shared_port_is_refused(
    shared_port: SharedPort, tmp_path: Path
) -> None:
    with taddons.context(shared_port) as tctx, pytest.raises(exceptions.OptionsError) as failure:
        tctx.configure(shared_port, hoopgw_balance_dir=str(tmp_path / "balance"))
    assert str(failure.value) == (
        "hoopgw_balance_dir needs hoopgw_reuse_port=true: it evens out the connections of"
        " processes sharing one port"
    )


def test_a_balance_directory_open_to_other_users_is_refused(
    shared_port: SharedPort, tmp_path: Path
) -> None:
    shared = tmp_path / "balance"
    shared.mkdir()
    shared.chmod(0o775)
    message = refusal(
        shared_port, mode=[f"reverse:{UPSTREAM}@8443"], hoopgw_balance_dir=str(shared)
    )
    assert message.startswith(f"hoopgw_balance_dir: {shared} is open to other users (mode 775)")


async def test_with_a_balance_directory_the_listener_balances_and_frees_its_slot_on_stop(
    shared_port: SharedPort, tmp_path: Path
) -> None:
    proxyserver = Proxyserver()
    port = stack.free_port()
    directory = tmp_path / "balance"
    with taddons.context(proxyserver, shared_port) as tctx:
        tctx.configure(proxyserver, mode=[f"reverse:{UPSTREAM}@{port}"], server=False)
        tctx.configure(proxyserver, listen_host=stack.LOOPBACK)
        tctx.configure(shared_port, hoopgw_reuse_port=True, hoopgw_balance_dir=str(directory))
        proxyserver.running()
        await shared_port.running()
        [instance] = proxyserver.servers
        [listener] = instance._servers  # type: ignore[attr-defined]
        assert isinstance(listener, BalancedListener)
        assert instance.listen_addrs == ((stack.LOOPBACK, port),)
        assert listener.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        assert list(listener.ledger.taken()) == [listener.ledger.slot]
        await proxyserver.servers.update([])
        assert ConnectionLedger(directory).taken() == {}
        assert not listener.handoff.path.exists()
