"""Even shares of connections across the gateway processes on one port (`hoopgw_balance_dir`).

With `hoopgw_reuse_port` alone the kernel gives each new connection to a process by a
hash of its addresses, so a few long-lived connections seldom split evenly (8 over two
processes split 4/4 about one time in four) and the process holding more answers each of
them more slowly. With a balance directory each process still accepts what the kernel
gives it, but keeps a connection only while it holds no more than any other process;
otherwise it hands the socket, before a byte of it is read, to the process holding the
fewest (SCM_RIGHTS over a Unix socket), as Envoy's exact connection balance does between
its threads. A handed-over connection is never handed on, so a socket moves at most once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import socket
import stat
import struct
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger("hoopgw")

OPTION = "hoopgw_balance_dir"
SLOTS = 64
LEDGER_NAME = "connections"
HANDOFF_MESSAGE = b"c"
ACCEPTS_PER_WAKE = 100  # as asyncio's own accept loop: others get the loop between bursts
ACCEPT_RETRY_SECONDS = 1.0  # out of file descriptors: asyncio waits as long
STREAM_LIMIT = 2**16  # asyncio.start_server's reader limit, which mitmproxy gets otherwise
_SLOT = struct.Struct("<qq")  # a process's pid (0: free) and the connections it holds
_LEDGER_SIZE = SLOTS * _SLOT.size
_SUN_PATH_MAX = 107  # sockaddr_un's 108 bytes, less the terminating NUL

StreamHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, None]]


class BalanceError(OSError):
    """The balance directory cannot be used; the message says why. An OSError, so that
    mitmproxy reports it as it does any listener that cannot open, in one line."""


def handoff_path(directory: Path, slot: int) -> Path:
    return directory / f"slot-{slot}.sock"


def directory_problem(directory: Path) -> str | None:
    """Why `directory` cannot hold the ledger and the hand-off sockets, or None when it can.

    Any process that can write there can hand the gateway connections, so it must be the
    gateway user's alone, as the spool is."""
    longest = str(handoff_path(directory.absolute(), SLOTS - 1))
    if len(os.fsencode(longest)) > _SUN_PATH_MAX:
        return (
            f"{directory} is too long a path: a Unix socket's path holds at most"
            f" {_SUN_PATH_MAX} bytes and {longest} would take {len(os.fsencode(longest))}"
        )
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        found = directory.stat()
    except OSError as exc:
        return f"cannot create {directory}: {exc.strerror}"
    if not stat.S_ISDIR(found.st_mode):
        return f"{directory} is not a directory"
    if found.st_uid != os.geteuid():
        return f"{directory} belongs to uid {found.st_uid}, not to this process's ({os.geteuid()})"
    if found.st_mode & 0o077:
        return (
            f"{directory} is open to other users (mode {stat.S_IMODE(found.st_mode):o}); "
            "it must be 700: whoever can write there can hand the gateway connections"
        )
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive, though it cannot be a peer
    return True


class ConnectionLedger:
    """How many connections each process on the port holds, in one small file under flock.

    A slot per process: its pid (0 when free) and its count. Every read and change is
    made under the lock, so two processes accepting at once still see each other's
    choices. Hand-written: no library keeps a cross-process table of a few counters.
    """

    def __init__(self, directory: Path) -> None:
        self.path = directory / LEDGER_NAME
        self.slot = -1
        self._fd: int | None = os.open(
            self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600
        )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[tuple[int, int]]]:
        if self._fd is None:
            raise BalanceError(f"{self.path} is closed")
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            raw = os.pread(self._fd, _LEDGER_SIZE, 0).ljust(_LEDGER_SIZE, b"\0")
            yield [_SLOT.unpack_from(raw, index * _SLOT.size) for index in range(SLOTS)]
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _write(self, slot: int, pid: int, connections: int) -> None:
        assert self._fd is not None
        os.pwrite(self._fd, _SLOT.pack(pid, max(connections, 0)), slot * _SLOT.size)

    def claim(self) -> int:
        """Takes a free slot (or a dead process's) for this process, holding nothing."""
        with self._locked() as slots:
            for slot, (pid, _) in enumerate(slots):
                if pid == 0 or not _alive(pid):
                    self._write(slot, os.getpid(), 0)
                    self.slot = slot
                    return slot
        raise BalanceError(f"all {SLOTS} slots of {self.path} are held by running processes")

    def assign(self) -> int:
        """Counts a new connection to the process holding the fewest; its slot.

        This process keeps it on a tie. A dead process's slot is freed on the way.
        """
        with self._locked() as slots:
            target, fewest = self.slot, slots[self.slot][1]
            for slot, (pid, held) in enumerate(slots):
                if slot == self.slot or pid == 0 or held >= fewest:
                    continue
                if not _alive(pid):
                    self._write(slot, 0, 0)
                    continue
                target, fewest = slot, held
            self._write(target, slots[target][0], fewest + 1)
            return target

    def take_back(self, slot: int, dead: bool) -> None:
        """A hand-off to `slot` failed: this process holds the connection after all."""
        with self._locked() as slots:
            pid, held = slots[slot]
            self._write(slot, 0 if dead else pid, 0 if dead else held - 1)
            own_pid, own = slots[self.slot]
            self._write(self.slot, own_pid, own + 1)

    def release(self) -> None:
        """One of this process's connections ended."""
        if self._fd is None:
            return  # left: the slot is no longer ours to count
        with self._locked() as slots:
            pid, held = slots[self.slot]
            if pid == os.getpid():
                self._write(self.slot, pid, held - 1)

    def taken(self) -> dict[int, tuple[int, int]]:
        """Each taken slot's pid and count, by slot."""
        with self._locked() as slots:
            return {slot: (pid, held) for slot, (pid, held) in enumerate(slots) if pid}

    def held(self) -> int:
        """How many connections this process holds."""
        return self.taken()[self.slot][1]

    def leave(self) -> None:
        """Frees this process's slot: peers hand it nothing more."""
        if self._fd is None:
            return
        with self._locked() as slots:
            if self.slot >= 0 and slots[self.slot][0] == os.getpid():
                self._write(self.slot, 0, 0)
        os.close(self._fd)
        self._fd = None


class HandOff:
    """Moves accepted sockets between the processes over Unix seqpacket sockets.

    Each process listens on its slot's path; a sender keeps one connection to each
    peer it has handed a socket to. Seqpacket, not datagrams: a datagram socket's
    queue holds ten messages (`net.unix.max_dgram_qlen`), fewer than a burst of new
    connections, where a connected pair's holds what its buffer holds.
    """

    def __init__(
        self,
        directory: Path,
        slot: int,
        loop: asyncio.AbstractEventLoop,
        on_socket: Callable[[socket.socket], None],
    ) -> None:
        self.directory = directory
        self.path = handoff_path(directory, slot)
        self._loop = loop
        self._on_socket = on_socket
        self._peers: dict[int, socket.socket] = {}  # slot -> our connection to it
        self._senders: set[socket.socket] = set()  # peers' connections to us
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a dead process's, whose slot this process took
        self.inbox = _unix_socket()
        try:
            self.inbox.bind(str(self.path))
            os.chmod(self.path, 0o600)
            self.inbox.listen(SLOTS)
        except OSError:
            self.inbox.close()
            raise
        loop.add_reader(self.inbox.fileno(), self._accept_sender)

    def send(self, conn: socket.socket, slot: int) -> OSError | None:
        """Gives `conn` to the process in `slot`; the error when it could not."""
        kept = slot in self._peers
        failed = self._send_once(conn, slot)
        if kept and isinstance(failed, (BrokenPipeError, ConnectionResetError)):
            failed = self._send_once(conn, slot)  # that process has gone: whoever holds it now
        return failed

    def _send_once(self, conn: socket.socket, slot: int) -> OSError | None:
        try:
            socket.send_fds(self._peer(slot), [HANDOFF_MESSAGE], [conn.fileno()])
        except OSError as exc:
            self._drop_peer(slot)
            return exc
        return None

    def _peer(self, slot: int) -> socket.socket:
        peer = self._peers.get(slot)
        if peer is None:
            peer = _unix_socket()
            try:
                peer.connect(str(handoff_path(self.directory, slot)))
            except OSError:
                peer.close()
                raise
            self._peers[slot] = peer
        return peer

    def _drop_peer(self, slot: int) -> None:
        peer = self._peers.pop(slot, None)
        if peer is not None:
            peer.close()

    def _accept_sender(self) -> None:
        while True:
            try:
                sender, _ = self.inbox.accept()
            except (BlockingIOError, InterruptedError):
                return
            sender.setblocking(False)
            self._senders.add(sender)
            self._loop.add_reader(sender.fileno(), self._receive, sender)

    def _receive(self, sender: socket.socket) -> None:
        for conn in self._received(sender):
            self._on_socket(conn)

    def _received(self, sender: socket.socket) -> Iterator[socket.socket]:
        """The sockets waiting on one sender's connection; it is closed at its end."""
        while True:
            try:
                message, fds, _, _ = socket.recv_fds(sender, len(HANDOFF_MESSAGE), 4)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                message, fds = b"", []
            for fd in fds:
                yield socket.socket(fileno=fd)
            if not message and not fds:
                self._loop.remove_reader(sender.fileno())
                self._senders.discard(sender)
                sender.close()
                return

    def close(self) -> None:
        """Stops taking sockets; those already sent to this process are closed unread."""
        if self.inbox.fileno() == -1:
            return
        self._loop.remove_reader(self.inbox.fileno())
        self.inbox.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        for sender in list(self._senders):
            for conn in self._received(sender):
                conn.close()  # handed over as this process stopped: the client sees a reset
            if sender.fileno() != -1:
                self._loop.remove_reader(sender.fileno())
                sender.close()
        self._senders.clear()
        for slot in list(self._peers):
            self._drop_peer(slot)


def _unix_socket() -> socket.socket:
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    unix.setblocking(False)
    return unix


def listening_sockets(host: str, port: int) -> list[socket.socket]:
    """Bound, listening, non-blocking TCP sockets with SO_REUSEPORT, as asyncio would open
    them for `asyncio.start_server(handler, host, port, reuse_port=True)`."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            listener = socket.socket(family, kind, proto)
            sockets.append(listener)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            listener.bind(address)
            listener.listen(ACCEPTS_PER_WAKE)
            listener.setblocking(False)
    except OSError:
        for listener in sockets:
            listener.close()
        raise
    return sockets


class BalancedListener:
    """The reverse-mode listener when the processes balance their connections.

    It stands where mitmproxy keeps the asyncio.Server of a listener: mitmproxy reads
    `sockets` and calls `close()`. Accepted and handed-over sockets reach mitmproxy's
    handler as asyncio.start_server would bring them.
    """

    def __init__(self, directory: Path, host: str, port: int, handler: StreamHandler) -> None:
        self.port = port
        self._handler = handler
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.ledger = ConnectionLedger(directory)
        try:
            slot = self.ledger.claim()
            self.handoff = HandOff(directory, slot, self._loop, self._handed_over)
        except BaseException:
            self.ledger.leave()
            raise
        try:
            self.sockets = listening_sockets(host, port)
        except BaseException:
            self.handoff.close()
            self.ledger.leave()
            raise
        for listener in self.sockets:
            self._loop.add_reader(listener.fileno(), self._accept, listener)
        logger.debug("hoopgw: %s: slot %d of %s", OPTION, slot, directory)

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(ACCEPTS_PER_WAKE):
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    raise
                logger.error(
                    "hoopgw: cannot accept a connection on port %d (%s); again in %.0f s",
                    self.port,
                    exc.strerror,
                    ACCEPT_RETRY_SECONDS,
                )
                self._loop.remove_reader(listener.fileno())
                self._loop.call_later(ACCEPT_RETRY_SECONDS, self._resume, listener)
                return
            self._place(conn)

    def _resume(self, listener: socket.socket) -> None:
        if listener.fileno() != -1:
            self._loop.add_reader(listener.fileno(), self._accept, listener)

    def _place(self, conn: socket.socket) -> None:
        """Keeps `conn` or hands it to the process holding the fewest; serves it here when
        the ledger cannot be read (even shares are worth less than the connection)."""
        try:
            target = self.ledger.assign()
        except OSError as exc:
            logger.warning(
                "hoopgw: %s: cannot count the connection in %s (%s); serving it here",
                OPTION,
                self.ledger.path,
                exc.strerror,
            )
            target = self.ledger.slot
        if target != self.ledger.slot:
            failed = self.handoff.send(conn, target)
            if failed is None:
                conn.close()  # the other process holds its own descriptor now
                return
            dead = isinstance(failed, (ConnectionRefusedError, FileNotFoundError))  # no listener
            logger.debug("hoopgw: kept a connection slot %d could not take: %s", target, failed)
            self.ledger.take_back(target, dead)
        self._serve(conn)

    def _handed_over(self, conn: socket.socket) -> None:
        problem = self._foreign(conn)
        if problem is not None:
            logger.warning("hoopgw: %s: refused a handed-over socket: %s", OPTION, problem)
            conn.close()
            return
        self._serve(conn)

    def _foreign(self, conn: socket.socket) -> str | None:
        """Why a handed-over socket is not a connection accepted on this port, or None."""
        if conn.family not in (socket.AF_INET, socket.AF_INET6):
            return f"family {conn.family!r}"
        if conn.type != socket.SOCK_STREAM:
            return f"type {conn.type!r}"
        try:
            local = conn.getsockname()
            conn.getpeername()
        except OSError as exc:
            return f"not connected ({exc.strerror})"
        if local[1] != self.port:
            return f"accepted on port {local[1]}, not {self.port}"
        return None

    def _serve(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        task = self._loop.create_task(self._connect(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, conn: socket.socket) -> None:
        ended = _Once(self.ledger.release)

        async def held(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await self._handler(reader, writer)
            finally:
                ended()

        def protocol() -> asyncio.StreamReaderProtocol:
            return asyncio.StreamReaderProtocol(asyncio.StreamReader(STREAM_LIMIT), held)

        try:
            await self._loop.connect_accepted_socket(protocol, conn)
        except OSError as exc:  # the client left before the transport was made
            logger.debug("hoopgw: a connection ended before it was served: %s", exc)
            conn.close()
            ended()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for listener in self.sockets:
            if listener.fileno() != -1:
                self._loop.remove_reader(listener.fileno())
            listener.close()
        self.ledger.leave()  # before the inbox goes, so that no peer picks this process
        self.handoff.close()


class _Once:
    """Calls a function the first time it is called, never again."""

    def __init__(self, function: Callable[[], None]) -> None:
        self._function: Callable[[], None] | None = function

    def __call__(self) -> None:
        function, self._function = self._function, None
        if function is not None:
            function()
