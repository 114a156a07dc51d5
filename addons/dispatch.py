"""One dispatcher for the gateway's concerns: mitmproxy calls one hook per event, not one per addon.

For every event mitmproxy walks each addon of the chain, and for each hook
method it finds it rebuilds the event's arguments (`Hook.args`, a
`dataclasses.fields` walk), calls it inside its own bookkeeping and checks
the result with `inspect.isawaitable`; the gateway's fail-closed guard then
wrapped every hook once more. With some twenty concerns and four flow
hooks per statement that machinery cost more than most concerns' own work
(docs/performance.md, "Fifth round").

`Gateway` has mitmproxy register the concerns as its sub-addons, so their
names (`ctx.master.addons.get`), options and commands work as before, and
takes over every other hook: mitmproxy calls `Gateway`'s one method, which
calls the concerns' methods in the list's order. From its first `configure`
on, right after mitmproxy registered them, it also hides the concerns from
mitmproxy's walk and calls their `configure`, `running` and `done` itself:
mitmproxy walks every addon's sub-addons on each of the eight events of a
statement (four flow events, four `update`s), and that walk over the
concerns was about 7% of the instructions of a statement on the loop
(docs/performance.md, "Thirteenth round").
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any, Final

from mitmproxy import hooks
from mitmproxy.addonmanager import traverse
from mitmproxy.proxy import layers, server_hooks  # noqa: F401  (they define the hooks)

from hoopgw.addons.failclosed import GUARDED_HOOKS, contain

LIFECYCLE_HOOKS: Final = frozenset({"load", "configure", "running", "done"})
"""Start-up, options and shutdown: `load` mitmproxy calls on each concern as it registers
them; the other three `Gateway` forwards itself, in the concerns' order."""

Hook = Callable[[Any], Awaitable[Any] | Any]
Link = tuple[str, Hook]
Wrapper = Callable[[str, str, Hook], Hook]


def dispatched_hooks() -> frozenset[str]:
    """Every hook `Gateway` dispatches per event: all of mitmproxy's but the lifecycle ones."""
    return frozenset(hooks.all_hooks) - LIFECYCLE_HOOKS


def walk(addons: Iterable[Any]) -> Iterator[Any]:
    """Every addon of `addons` and its sub-addons in mitmproxy's order, a `Gateway`'s
    concerns included once they are hidden from mitmproxy (for instruments)."""
    for addon in addons:
        yield addon
        below = addon.concerns if isinstance(addon, Gateway) else getattr(addon, "addons", None)
        yield from walk(below or [])


class Hidden:
    """A concern's hook once `Gateway` calls it: falsy to mitmproxy, callable to the concern.

    mitmproxy's `AddonManager._iter_hooks` skips an attribute that is falsy,
    so this instance attribute, shadowing the method, keeps mitmproxy from
    calling the hook a second time as it walks the sub-addons. `None` would
    hide it too, but a concern that calls its own hook (`RequireTls.request`
    calls `self.requestheaders`) must still reach the method.
    """

    __slots__ = ("method",)

    def __init__(self, method: Hook) -> None:
        self.method = method

    def __bool__(self) -> bool:
        return False

    def __call__(self, subject: Any) -> Any:
        return self.method(subject)


class Gateway:
    """The gateway's one addon on mitmproxy's chain; its concerns are its sub-addons.

    At construction it collects, per hook, the concerns' bound methods in
    the order given (addons/gateway.py's list: see addons/flowstate.py) and
    hides them from mitmproxy (`Hidden`). Its own hook for that event calls
    each in turn and awaits what a method returns to await (an `async def`
    hook, or work a hook hands off the loop) before the next one starts, as
    mitmproxy did. `configure`, `running` and `done` it forwards the same
    way once mitmproxy has registered the concerns: from its first
    `configure` on, `addons` is empty and mitmproxy's walk ends at it.

    Fail closed in one place, as `failclosed.guarded` did per hook: an
    exception in a flow hook (`GUARDED_HOOKS`) is handled by
    `failclosed.contain` (the flow refused if still unanswered in a request
    hook, the answer replaced in a response hook) and the next concern still
    runs. An exception in any other hook (e.g. `client_connected`) reaches
    mitmproxy as before, which logs it and calls no further concern for that
    event. mitmproxy's own semantics are unchanged around it: the script's
    place in the chain, `update` after each flow event, and intercept or kill
    taking effect once the whole event is through.
    """

    def __init__(self, concerns: Iterable[Any]) -> None:
        self.concerns: list[Any] = list(concerns)
        self.addons: Sequence[Any] = self.concerns
        """What mitmproxy walks: the concerns until the first `configure`, then nothing."""
        self._links: dict[str, tuple[Link, ...]] = {}
        walked = list(traverse(self.concerns))  # in mitmproxy's order, sub-addons included
        self._lifecycle = {
            hook: tuple(
                method for concern in walked if callable(method := getattr(concern, hook, None))
            )
            for hook in ("configure", "running", "done")
        }
        if any(inspect.iscoroutinefunction(method) for method in self._lifecycle["done"]):
            # mitmproxy calls `done` from sync code when it unloads a script
            raise TypeError("a concern's done must not be a coroutine")
        for hook in sorted(dispatched_hooks()):
            links = tuple(
                (type(concern).__name__, method)
                for concern in walked
                if callable(method := getattr(concern, hook, None))
            )
            if not links:
                continue
            for concern in walked:
                method = getattr(concern, hook, None)
                if callable(method):
                    setattr(concern, hook, Hidden(method))
            self._install(hook, links)

    def configure(self, updated: set[str]) -> None:
        """The concerns' `configure` in order; from the first call on, mitmproxy walks none of
        them (it has registered them by now, and this runs before it would walk them)."""
        self.addons = ()
        for method in self._lifecycle["configure"]:
            method(updated)

    async def running(self) -> None:
        for method in self._lifecycle["running"]:
            result = method()
            if result is not None and inspect.isawaitable(result):
                await result

    def done(self) -> None:
        for method in self._lifecycle["done"]:
            method()

    def links(self, hook: str) -> Sequence[Link]:
        """The concerns' methods the `hook` event calls, in order, by concern class name."""
        return self._links.get(hook, ())

    def wrap_hooks(self, wrapper: Wrapper) -> None:
        """Put `wrapper(concern, hook, method)` in the place of each dispatched method.

        For instruments such as scripts/hook_timing.py: mitmproxy no longer
        calls the concerns' methods, so wrapping them on the concerns would
        time nothing.
        """
        for hook, links in list(self._links.items()):
            self._install(hook, tuple((name, wrapper(name, hook, m)) for name, m in links))

    def _install(self, hook: str, links: tuple[Link, ...]) -> None:
        self._links[hook] = links
        setattr(self, hook, _dispatcher(hook, links, guarded=hook in GUARDED_HOOKS))


def _dispatcher(hook: str, links: tuple[Link, ...], *, guarded: bool) -> Hook:
    """The one method mitmproxy calls for `hook`: the concerns' methods in order.

    It runs them as plain calls until one returns something to await, and
    only then returns a coroutine that awaits it and runs the rest: most
    response hooks never wait, and a coroutine for them would be one more
    object per event for mitmproxy to check and await.
    """
    if guarded:

        def dispatch_guarded(flow: Any) -> Awaitable[None] | None:
            for index, (name, method) in enumerate(links):
                try:
                    result = method(flow)
                except Exception:
                    contain(flow, hook, name)
                    continue
                if result is not None and inspect.isawaitable(result):
                    return finish_guarded(flow, result, index)
            return None

        async def finish_guarded(flow: Any, pending: Awaitable[Any], index: int) -> None:
            try:
                await pending
            except Exception:
                contain(flow, hook, links[index][0])
            for name, method in links[index + 1 :]:
                try:
                    result = method(flow)
                    if result is not None and inspect.isawaitable(result):
                        await result
                except Exception:
                    contain(flow, hook, name)

        dispatch_guarded.__name__ = dispatch_guarded.__qualname__ = hook
        return dispatch_guarded

    def dispatch(subject: Any) -> Awaitable[None] | None:
        for index, (_, method) in enumerate(links):
            result = method(subject)
            if result is not None and inspect.isawaitable(result):
                return finish(subject, result, index)
        return None

    async def finish(subject: Any, pending: Awaitable[Any], index: int) -> None:
        await pending
        for _, method in links[index + 1 :]:
            result = method(subject)
            if result is not None and inspect.isawaitable(result):
                await result

    dispatch.__name__ = dispatch.__qualname__ = hook
    return dispatch
