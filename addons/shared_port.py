"""Several gateway processes on one host behind one listening port (SO_REUSEPORT).

mitmproxy runs its event loop on one thread, so one gateway process uses about
one core. With `hoopgw_reuse_port` the reverse-mode TCP listener is opened with
SO_REUSEPORT: N processes started with the same `--listen-port` (each with its
own spool) share it, and the Linux kernel spreads new connections across them.
Like replicas behind a balancer, they share only the token key and the store.
mitmproxy opens its listeners before it loads the gateway's script, so the
option goes with mitmproxy's `server=false` and the listener opens at `running`.
With `hoopgw_balance_dir` too, the processes even out their shares of the
connections the kernel spreads (addons/balance.py).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from mitmproxy import ctx, exceptions
from mitmproxy.addonmanager import Loader
from mitmproxy.proxy import mode_specs
from mitmproxy.proxy.mode_servers import ReverseInstance

from hoopgw.addons import balance

logger = logging.getLogger("hoopgw")

OPTION = "hoopgw_reuse_port"


Listen = Callable[[ReverseInstance, str, int], Awaitable[list[asyncio.Server]]]


def _sharing_listen(balance_dir: Path | None) -> Listen:
    """`AsyncioServerInstance.listen` for the reverse mode's TCP socket, with SO_REUSEPORT,
    and with the processes' shares evened out when `balance_dir` is set.

    No public mitmproxy 12.2 API fits: `listen` calls `asyncio.start_server(handler, host,
    port)` with no option or hook for `reuse_port`, and a subclass cannot take the mode's
    place (server classes register themselves once per mode name).

    No UDP (HTTP/3) socket is opened: mitmproxy binds it in Rust without SO_REUSEPORT,
    so a second process could not start, and Snowflake's drivers speak HTTP/1.1 over TCP.
    """

    async def listen(self: ReverseInstance, host: str, port: int) -> list[asyncio.Server]:
        if self.mode.transport_protocol == "both":
            logger.info("hoopgw: %s: no UDP (HTTP/3) listener on port %d", OPTION, port)
        if balance_dir is not None:
            listener = balance.BalancedListener(balance_dir, host, port, self.handle_stream)
            return [listener]  # type: ignore[list-item]  # mitmproxy reads sockets, calls close
        return [await asyncio.start_server(self.handle_stream, host, port, reuse_port=True)]

    return listen


def reuse_port_problem(modes: Sequence[str], listen_port: int | None) -> str | None:
    """Why the listening port cannot be shared with these options, or None when it can."""
    if not sys.platform.startswith("linux") or not hasattr(socket, "SO_REUSEPORT"):
        return (
            f"needs Linux's SO_REUSEPORT, which spreads connections across the processes;"
            f" this platform ({sys.platform}) does not offer it"
        )
    if not modes:
        return "needs a --mode reverse:... listener"
    for spec in modes:
        try:
            mode = mode_specs.ProxyMode.parse(spec)
        except ValueError:
            continue  # mitmproxy's proxyserver names the bad spec
        if not isinstance(mode, mode_specs.ReverseMode):
            return f"works only in reverse mode, not with --mode {spec}"
        if mode.transport_protocol == "udp":
            return f"needs a TCP listener; --mode {spec} listens on UDP only"
        if mode.listen_port(listen_port) == 0:
            return (
                f"needs a fixed listen port, not 0 (--mode {spec}): with port 0 each process"
                " would listen on a port of its own"
            )
    return None


class SharedPort:
    """Has mitmproxy open the reverse-mode listener with SO_REUSEPORT while the option is on.

    mitmproxy 12.2 opens its listeners before it loads the gateway's script (its
    script loader defers loading to a task, and the servers start at once), so
    they would be open, without SO_REUSEPORT, before this addon could act. The
    option therefore requires mitmproxy's own `server=false`; at `running` this
    addon turns `server` on, mitmproxy opens the listeners through the replaced
    `listen`, and `running` returns once they are open, before the gateway says
    it is ready.
    """

    def __init__(self) -> None:
        self.opened = False

    def load(self, loader: Loader) -> None:
        loader.add_option(
            OPTION,
            bool,
            False,
            """
            Several gateway processes on one host share one listening port: the
            reverse-mode port is opened with SO_REUSEPORT and the Linux kernel
            spreads new connections across the processes, so a host's cores are
            used (mitmproxy's event loop uses one). Start every process with the
            same --mode reverse:URL@PORT, with --set server=false (the gateway then
            opens the port itself, once its script is loaded), with its own
            hoopgw_spool_dir (a lock file refuses a shared one) and with the same
            hoopgw_token_key and hoopgw_store, as replicas. Linux lets only sockets
            of the same user share the port. No HTTP/3 (UDP) listener is opened.
            """,
        )
        loader.add_option(
            balance.OPTION,
            str,
            "",
            """
            With hoopgw_reuse_port: a directory the processes sharing the port
            share (created 700 if missing; it must be private to the gateway's
            user), where they keep a count of the connections each holds. A
            process keeps a new connection only while it holds no more than any
            other, and hands it over, before reading a byte of it, to the one
            holding the fewest, so a few long-lived connections split evenly.
            Empty: the kernel alone spreads connections, by a hash of their
            addresses.
            """,
        )

    def configure(self, updated: set[str]) -> None:
        if not updated & {OPTION, balance.OPTION, "mode", "listen_port", "server"}:
            return
        balance_dir = _balance_dir()
        if not getattr(ctx.options, OPTION):
            _restore_listen()
            if balance_dir is not None:
                raise exceptions.OptionsError(
                    f"{balance.OPTION} needs {OPTION}=true: it evens out the connections"
                    " of processes sharing one port"
                )
            return
        problem = reuse_port_problem(ctx.options.mode, ctx.options.listen_port)
        if problem is None and ctx.options.server and not self.opened:
            problem = (
                "needs --set server=false: mitmproxy opens its listeners before it loads the"
                " gateway's script, without SO_REUSEPORT; with server=false the gateway opens"
                " them once it is loaded"
            )
        if problem is not None:
            _restore_listen()
            raise exceptions.OptionsError(f"{OPTION} {problem}")
        if balance_dir is not None and (problem := balance.directory_problem(balance_dir)):
            _restore_listen()
            raise exceptions.OptionsError(f"{balance.OPTION}: {problem}")
        ReverseInstance.listen = _sharing_listen(balance_dir)  # type: ignore[method-assign,assignment]

    async def running(self) -> None:
        if not getattr(ctx.options, OPTION) or self.opened:
            return
        self.opened = True
        ctx.options.server = True  # mitmproxy's proxyserver starts its servers on this
        proxyserver = ctx.master.addons.get("proxyserver")
        modes = [mode_specs.ProxyMode.parse(spec) for spec in ctx.options.mode]
        await proxyserver.servers.update(modes)  # waits for the start `server` set off
        if not all(instance.is_running for instance in proxyserver.servers):
            # mitmproxy has logged why and exits after `running`: as a shutdown, so the
            # gateway does not take it for its addons being unloaded (FailClosed.done)
            ctx.master.shutdown()

    def done(self) -> None:
        _restore_listen()


def _balance_dir() -> Path | None:
    value = getattr(ctx.options, balance.OPTION)
    return Path(value).expanduser() if value else None


def _restore_listen() -> None:
    """mitmproxy's own `listen` again (it is inherited, so the replacement is removed)."""
    if "listen" in vars(ReverseInstance):
        del ReverseInstance.listen
