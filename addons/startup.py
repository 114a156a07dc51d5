"""Start-up behaviour shared by the gateway's addons."""

from __future__ import annotations

import ctypes
import functools
import gc
import logging
import os
import platform
from collections.abc import Callable
from typing import Any, Final

from mitmproxy import ctx, exceptions, http

logger = logging.getLogger("hoopgw")

_M_MMAP_THRESHOLD: Final = -3  # glibc's mallopt parameter number
MMAP_THRESHOLD: Final = 128 * 1024


def pin_malloc_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Keep glibc from raising its mmap threshold, so that large freed buffers go back
    to the system.

    glibc serves allocations over 128 KiB with mmap, and each time it frees such
    a block it raises that threshold to the block's size (up to 32 MiB). From
    then on the gateway's large short-lived buffers (segments read for upload,
    zstd workspaces, roll-up parts, S3 bodies) come from per-thread heaps, whose
    holes are never returned: under steady load RSS climbed by megabytes a
    minute while live objects stayed flat (docs/performance.md, "Third
    round"). Setting the threshold turns the adjustment off, as
    MALLOC_MMAP_THRESHOLD_ does; an operator's own MALLOC_MMAP_THRESHOLD_
    wins. False when nothing was set (that variable is set, or the C library
    is not glibc).
    """
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is not None:
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        return bool(ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False


def skip_message_typecheck() -> bool:
    """Turn off mitmproxy's check of each HTTP message's field types, as `python -O` does.

    mitmproxy checks them in `MessageData.__post_init__`, defined only when
    Python runs without -O (`if __debug__`), for every request and response it
    builds. Each optional field that is None (content, trailers, timestamp_end)
    costs the check a TypeError raised and caught, left in a reference cycle
    with its frame for the collector: 30 objects of cyclic garbage and about
    28 us of CPU per message, and in a 14 s run at one connection the
    collector's young passes went from 1,414 to 502 without it
    (docs/performance.md, "Fifteenth round"). The gateway runs without -O, so
    its own assertions stay; this one check goes. False when there is none to
    turn off (under -O, or a mitmproxy without it).
    """
    if "__post_init__" not in vars(http.MessageData):
        return False
    http.MessageData.__post_init__ = _unchecked  # type: ignore[attr-defined]
    return True


def _unchecked(self: http.MessageData) -> None:
    """`MessageData.__post_init__` under -O: nothing."""


def free_finished_streams() -> bool:
    """Let a finished HTTP stream of mitmproxy's be freed as soon as mitmproxy drops it,
    not by the cyclic collector.

    A finished `HttpStream` sits in two reference cycles: its client and server
    states are bound methods of itself (`self.state_done`, or `state_errored`), and
    its context's layer list holds the stream. Each cycle holds the stream, its
    flow, request, response and headers, and the gateway's per-flow state: about
    37 objects a statement that only the collector frees, and whose count sets off
    its young passes, one every twenty or so statements (docs/performance.md,
    "Sixteenth round"). So the end states, which use nothing of `self`, become
    static functions (they compare as before, by the same function object, and
    `state_done` still fails on any event, as its `@expect()` does without -O), and
    when the HTTP layer drops a stream it also takes the stream off its own
    context's layer list, which only the stream uses. False when mitmproxy's HTTP
    layer is not as this expects.
    """
    from mitmproxy.proxy.layers.http import HttpLayer, HttpStream  # mitmproxy's internals

    if not all(callable(vars(HttpStream).get(name)) for name in _END_STATES):
        return False
    if getattr(HttpLayer.__init__, _PATCHED, False):
        return True
    for name, state in _END_STATES.items():
        state.__qualname__ = f"{HttpStream.__qualname__}.{name}"
        setattr(HttpStream, name, staticmethod(state))
    layer_init = HttpLayer.__init__

    @functools.wraps(layer_init)
    def init(self: HttpLayer, *args: Any, **kwargs: Any) -> None:
        layer_init(self, *args, **kwargs)
        self.streams = _StreamTable(self.streams)

    setattr(init, _PATCHED, True)
    HttpLayer.__init__ = init  # type: ignore[method-assign]
    return True


class _StreamTable(dict[int, Any]):
    """`HttpLayer.streams`, which takes a dropped stream off its own context's layers."""

    def pop(self, stream_id: int, *default: Any) -> Any:
        stream = super().pop(stream_id, *default)
        layers = getattr(getattr(stream, "context", None), "layers", None)
        if layers and layers[-1] is stream:
            layers.pop()
        return stream


def _state_done(event: object) -> Any:
    """`HttpStream.state_done`: a finished stream expects no more events."""
    raise AssertionError(
        f"Unexpected event type at HttpStream.state_done: Expected no events, got {event}."
    )


def _state_errored(event: object) -> Any:
    """`HttpStream.state_errored`: a failed stream consumes every event silently."""
    yield from ()


_PATCHED: Final = "_hoopgw_frees_finished_streams"
_state_done.__name__ = "state_done"
_state_errored.__name__ = "state_errored"
_END_STATES: Final[dict[str, Callable[[object], Any]]] = {
    "state_done": _state_done,
    "state_errored": _state_errored,
}


def _running() -> bool:
    server = ctx.master.addons.get("proxyserver")
    return bool(server and getattr(server, "is_running", False))


def one_line_option_errors(addon: Any) -> Any:
    """Make an addon's bad option value stop start-up with one clear line.

    mitmproxy logs a script's configure exception with a traceback and then
    exits because an error was logged during start-up. An operator needs the
    option's name and what is wrong, not a traceback: at start-up the error is
    logged as one line (mitmproxy still exits with status 1); once running,
    the OptionsError propagates so mitmproxy rejects the change.
    """
    configure: Callable[[set[str]], None] | None = getattr(addon, "configure", None)
    if configure is None:
        return addon

    @functools.wraps(configure)
    def checked(updated: set[str]) -> None:
        try:
            configure(updated)
        except exceptions.OptionsError as exc:
            if _running():
                raise
            logger.error("hoopgw: invalid option: %s", exc)

    addon.configure = checked
    return addon


class QuietCollector:
    """Keeps Python's cyclic garbage collector from stalling the event loop.

    A full collection walks every tracked object: with mitmproxy, sqlglot,
    pyarrow and the policy loaded that took 25-100 ms every few hundred
    statements, the gateway's whole latency tail. What is loaded at start lives
    as long as the process, so it is frozen out of the collector's walks once
    every addon is running; only what statements create is collected.
    """

    def running(self) -> None:
        gc.collect()
        gc.freeze()
        logger.debug("hoopgw: %d start-up objects frozen out of collection", gc.get_freeze_count())


class ReadyAnnouncer:
    """Logs one line once every addon is configured and running.

    Operators and the test rig wait for this line rather than for the port:
    mitmproxy may accept connections a moment before a script has loaded. No
    line when a listener failed to open (mitmproxy has logged why and exits);
    with `hoopgw_reuse_port` the listeners open during `running`, and another
    process's listener answers on the shared port.
    """

    def running(self) -> None:
        server = ctx.master.addons.get("proxyserver")
        if server is not None and not all(instance.is_running for instance in server.servers):
            return
        mode = ", ".join(ctx.options.mode)
        logger.info("hoopgw: gateway ready (%s)", mode)
