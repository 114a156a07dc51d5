"""Fail closed: a request no required addon could finish never goes upstream.

mitmproxy logs an exception raised in a hook and moves on; within one script
it even skips the script's remaining addons for that event. Without these
guards a crash in authentication or recording would forward the request
unauthenticated or unrecorded, and a crash while translating a response could
hand Snowflake's own tokens to the client.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final

from mitmproxy import ctx, http

from hoopgw.addons import names, protocol
from hoopgw.addons.flowstate import FlowState, state_of
from hoopgw.addons.refusals import refuse

logger = logging.getLogger(__name__)

SOURCE = "failclosed"
MESSAGE = "hoopgw refused the request: the gateway failed to process it (internal error)"
_REQUEST_HOOKS = ("requestheaders", "request")
_RESPONSE_HOOKS = ("responseheaders", "response")


def _state(flow: http.HTTPFlow) -> FlowState:
    state = state_of(flow)
    if state is None:
        state = FlowState(endpoint=protocol.classify(flow.request.path))
    return state


def _internal_error(flow: http.HTTPFlow, source: str) -> None:
    reason = f"internal error in {source}"
    code = protocol.CODE_GATEWAY_INTERNAL
    refuse(flow, _state(flow), code, reason, SOURCE, message=MESSAGE, sql_api_status=500)


GUARDED_HOOKS: Final = (*_REQUEST_HOOKS, *_RESPONSE_HOOKS, "error")
"""The flow hooks whose exceptions `contain` handles; other hooks' exceptions reach mitmproxy."""


def contain(flow: http.HTTPFlow, hook: str, name: str) -> None:
    """Handle the exception `name`'s `hook` just raised: logged, and the flow refused if it must be.

    A crash in a request hook answers the client with error 399004 before
    anything goes upstream, unless the flow is already answered; a crash in a
    response hook replaces the upstream answer, which may still hold what the
    addon had to remove. A crash in the error hook is only logged. Call it
    from an `except` block: the log line carries the traceback.
    """
    logger.exception("hoopgw: %s.%s failed on %s", name, hook, flow.id)
    if not flow.live:
        return
    if (hook in _REQUEST_HOOKS and flow.response is None) or hook in _RESPONSE_HOOKS:
        _internal_error(flow, name)


def guarded(addon: Any) -> Any:
    """Wrap an addon's flow hooks so that an exception refuses the flow instead of passing it.

    For an addon mitmproxy calls on its own; the gateway's concerns get the
    same guard from the one dispatcher that calls them (addons/dispatch.py).
    """
    name = type(addon).__name__
    for hook in GUARDED_HOOKS:
        method: Callable[..., Any] | None = getattr(addon, hook, None)
        if method is None:
            continue
        setattr(addon, hook, _guard(method, hook, name))
    return addon


def _guard(method: Callable[..., Any], hook: str, name: str) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(method):

        @functools.wraps(method)
        async def guard_async(flow: http.HTTPFlow) -> None:
            try:
                await method(flow)
            except Exception:
                contain(flow, hook, name)

        return guard_async

    async def guard_awaitable(result: Awaitable[Any], flow: http.HTTPFlow) -> None:
        try:
            await result
        except Exception:
            contain(flow, hook, name)

    @functools.wraps(method)
    def guard(flow: http.HTTPFlow) -> Awaitable[None] | None:
        """A hook that returns an awaitable (work it does off the loop) is guarded to its end."""
        try:
            result = method(flow)
        except Exception:
            contain(flow, hook, name)
            return None
        return guard_awaitable(result, flow) if inspect.isawaitable(result) else None

    return guard


EXIT_UNLOADED: Final = 70
"""Exit status when the gateway's addons are unloaded while mitmproxy runs on."""


class FailClosed:
    """The last request hook: refuses what a required addon did not mark as done.

    Each required addon adds its name to `state.passed` once it has done its
    work; a request still unanswered without every name is refused here.

    It also ends the process when the gateway's addons are unloaded while
    mitmproxy keeps running: mitmproxy reloads a script whose file changes and
    drops one that is deleted or no longer loads, and from then on it would
    forward requests with none of the gateway's hooks (no identity check, no
    recording). By the time this, the last addon, gets `done`, Recording has
    flushed and closed the spool; a supervisor restarts the gateway whole.
    """

    def __init__(self, required: Iterable[str]) -> None:
        self.required = frozenset(required)

    def request(self, flow: http.HTTPFlow) -> None:
        if not flow.live or flow.response is not None:
            return
        state = state_of(flow)
        missing = {names.TRAFFIC} if state is None else self.required - state.passed
        if not missing:
            return
        logger.error(
            "hoopgw: refused %s %s: not passed by %s",
            flow.request.method,
            flow.request.path.partition("?")[0],
            ", ".join(sorted(missing)),
        )
        _internal_error(flow, ", ".join(sorted(missing)))

    def done(self) -> None:
        if ctx.master.should_exit.is_set():
            return  # mitmproxy is shutting down
        logger.critical(
            "hoopgw: the gateway's addons were unloaded (the script changed, was removed "
            "or failed to reload); exiting so that nothing is forwarded without them"
        )
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(EXIT_UNLOADED)
