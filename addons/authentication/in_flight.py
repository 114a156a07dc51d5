"""What every authentication handler offers the dispatcher, and what it leaves in flight."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from mitmproxy import http

from hoopgw.addons.flowstate import FlowState


@dataclass(frozen=True, slots=True)
class InFlight:
    """A request the handler rewrote and let go on (or answered itself, successfully).

    Once answered, its request loses the gateway's secrets (scrub.py), and
    `on_answer`, when set, translates the upstream answer for the client.
    """

    on_answer: Callable[[http.HTTPFlow, FlowState], None] | None = None


class Handler(Protocol):
    """One protocol's side of authentication: login, renewal, session call or SQL API."""

    async def request(self, flow: http.HTTPFlow, state: FlowState) -> InFlight | None:
        """Admit and rewrite the request; None when it was refused (nothing goes upstream)."""
        ...
