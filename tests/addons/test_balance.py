"""BalancedListener: processes on one port keep even shares of its connections.

Two listeners in this process stand for two gateway processes (each takes its own slot
of the ledger and its own hand-off socket); real TCP connections and real hand-offs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from hoopgw.addons import balance
from tests import stack


class Process:
    """One listener standing for a gateway process: it answers each connection with its name."""

    def __init__(self, name: str, directory: Path, port: int) -> None:
        self.name = name
        self.listener = balance.BalancedListener(directory, stack.LOOPBACK, port, self.answer)

    async def answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readline():
            writer.write(f"{self.name}\n".encode())
            await writer.drain()
        writer.close()


class Port:
    """One port: listeners started on it as processes, and clients' connections to it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.number = stack.free_port()
        self.processes: list[Process] = []
        self.open: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    def start(self, name: str) -> Process:
        self.processes.append(Process(name, self.directory, self.number))
        return self.processes[-1]

    async def connect(self, count: int) -> list[str]:
        """Opens `count` connections one after another; which process answered each."""
        holders = []
        for _ in range(count):
            reader, writer = await asyncio.open_connection(stack.LOOPBACK, self.number)
            self.open.append((reader, writer))
            writer.write(b"who?\n")
            holders.append((await asyncio.wait_for(reader.readline(), 10)).decode().strip())
        return holders

    async def connect_at_once(self, count: int) -> list[str]:
        """Opens `count` connections together, so that they wait in the accept queue at once."""
        opened = await asyncio.gather(
            *(asyncio.open_connection(stack.LOOPBACK, self.number) for _ in range(count))
        )
        self.open += opened
        for _, writer in opened:
            writer.write(b"who?\n")
        replies = [asyncio.wait_for(reader.readline(), 10) for reader, _ in opened]
        return [reply.decode().strip() for reply in await asyncio.gather(*replies)]

    async def disconnect(self, count: int) -> None:
        """Ends the `count` oldest connections, each once its holder has closed it too."""
        for reader, writer in self.open[:count]:
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()
        del self.open[:count]


@contextlib.asynccontextmanager
async def one_port(directory: Path) -> AsyncIterator[Port]:
    port = Port(directory)
    try:
        yield port
    finally:
        await port.disconnect(len(port.open))
        for process in port.processes:
            process.listener.close()


async def until(condition: Callable[[], bool], what: str) -> None:
    """Polls `condition` on the loop: a connection's count drops after its handler returns."""
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0.01)
    assert condition(), what


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    path = tmp_path / "balance"
    assert balance.directory_problem(path) is None
    return path


def held(process: Process) -> int:
    return process.listener.ledger.held()


async def test_connections_go_to_whichever_process_holds_fewer(directory: Path) -> None:
    async with one_port(directory) as port:
        first = port.start("first")
        assert await port.connect(4) == ["first"] * 4  # alone on the port, it keeps them all

        second = port.start("second")
        assert await port.connect(4) == ["second"] * 4, "the kernel's hash overruled"
        assert (held(first), held(second)) == (4, 4)

        assert sorted(await port.connect(6)) == ["first"] * 3 + ["second"] * 3
        assert (held(first), held(second)) == (7, 7)


async def test_a_process_s_count_drops_as_its_connections_end(directory: Path) -> None:
    async with one_port(directory) as port:
        first = port.start("first")
        assert await port.connect(3) == ["first"] * 3
        await port.disconnect(2)
        await until(lambda: held(first) == 1, "two ended connections released")

        port.start("second")
        assert await port.connect(1) == ["second"]
        assert sorted(await port.connect(2)) == ["first", "second"]


CLAIM_AND_EXIT = """
import os
import sys
from pathlib import Path
from hoopgw.addons import balance
ledger = balance.ConnectionLedger(Path(sys.argv[1]))
ledger.claim()
print(os.getpid())
"""


async def test_a_dead_process_s_slot_is_taken_over(directory: Path) -> None:
    claimant = subprocess.run(
        [sys.executable, "-c", CLAIM_AND_EXIT, str(directory)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    dead_pid = int(claimant.stdout)
    assert balance.ConnectionLedger(directory).taken() == {0: (dead_pid, 0)}
    async with one_port(directory) as port:
        first = port.start("first")
        assert first.listener.ledger.taken() == {0: (os.getpid(), 0)}


async def test_a_peer_that_cannot_take_a_connection_leaves_it_with_the_acceptor(
    directory: Path,
) -> None:
    async with one_port(directory) as port:
        first, second = port.start("first"), port.start("second")
        assert sorted(await port.connect(2)) == ["first", "second"]
        loop = asyncio.get_running_loop()
        for listener in second.listener.sockets:
            loop.remove_reader(listener.fileno())
            listener.close()  # the kernel gives the port's connections to the first alone
        second.listener.handoff.close()  # still in the ledger, nobody at its socket

        assert await port.connect(3) == ["first"] * 3
        assert held(first) == 4
        assert list(first.listener.ledger.taken()) == [first.listener.ledger.slot], "not freed"


async def test_a_burst_hands_over_more_sockets_than_a_datagram_queue_holds(
    directory: Path,
) -> None:
    """24 connections accepted in one pass, 12 handed over before the other reads one:
    a Unix datagram socket's queue takes ten (`net.unix.max_dgram_qlen`)."""
    async with one_port(directory) as port:
        first, second = port.start("first"), port.start("second")
        loop = asyncio.get_running_loop()
        for listener in second.listener.sockets:
            loop.remove_reader(listener.fileno())
            listener.close()  # the kernel gives every connection to the first
        shares = await port.connect_at_once(24)
        assert (shares.count("first"), shares.count("second")) == (12, 12)
        assert (held(first), held(second)) == (12, 12)


async def test_a_socket_not_accepted_on_the_port_is_refused(
    directory: Path, caplog: pytest.LogCaptureFixture
) -> None:
    unix, _ = pair = socket.socketpair()
    async with one_port(directory) as port:
        with (
            contextlib.closing(pair[0]),
            contextlib.closing(pair[1]),
            socket.create_server((stack.LOOPBACK, 0)) as elsewhere,
            socket.create_connection(elsewhere.getsockname()) as other_port,
            socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sender,
            caplog.at_level(logging.WARNING, "hoopgw"),
        ):
            first = port.start("first")
            sender.connect(str(first.listener.handoff.path))
            socket.send_fds(sender, [balance.HANDOFF_MESSAGE], [unix.fileno()])
            socket.send_fds(sender, [balance.HANDOFF_MESSAGE], [other_port.fileno()])
            assert await port.connect(1) == ["first"]  # the inbox was read before this accept
    refusals = [r.getMessage() for r in caplog.records if "refused a handed-over" in r.getMessage()]
    assert len(refusals) == 2, refusals
    assert "family" in refusals[0]
    assert f"not {first.listener.port}" in refusals[1]


async def test_closing_frees_the_slot_and_the_hand_off_socket(directory: Path) -> None:
    async with one_port(directory) as port:
        first, second = port.start("first"), port.start("second")
        path = second.listener.handoff.path
        second.listener.close()
        assert not path.exists()
        assert list(first.listener.ledger.taken()) == [first.listener.ledger.slot]
        second.listener.close()  # mitmproxy may close twice; nothing happens the second time


async def test_a_ledger_with_no_free_slot_fails_the_listener_as_an_os_error(
    directory: Path,
) -> None:
    """mitmproxy turns an OSError from `listen` into its one-line "failed to listen"."""
    taken = [balance.ConnectionLedger(directory) for _ in range(balance.SLOTS)]
    try:
        for ledger in taken:
            ledger.claim()  # this process is alive, so none of its slots is free
        with pytest.raises(OSError, match="held by running processes"):
            Process("late", directory, stack.free_port())
    finally:
        for ledger in taken:
            ledger.leave()
    assert balance.ConnectionLedger(directory).taken() == {}


def test_a_directory_other_users_can_open_is_refused(tmp_path: Path) -> None:
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o755)
    os.chmod(open_dir, 0o755)
    problem = balance.directory_problem(open_dir)
    assert problem is not None and "mode 755" in problem and "must be 700" in problem


def test_a_path_too_long_for_a_unix_socket_is_refused(tmp_path: Path) -> None:
    problem = balance.directory_problem(tmp_path / ("d" * 120))
    assert problem is not None and "too long a path" in problem


def test_a_missing_directory_is_created_private(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b"
    assert balance.directory_problem(path) is None
    assert (path.stat().st_mode & 0o777) == 0o700


def test_a_file_in_place_of_the_directory_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("")
    problem = balance.directory_problem(path)
    assert problem is not None and str(path) in problem
