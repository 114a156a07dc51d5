"""Refusals of requests no verified caller made: counted per time window, not recorded one by one.

Anyone who can reach the gateway can send requests it refuses, as fast and as
large as they like. Recording each one (its own session, segment, upload and
spool bytes) let anonymous traffic fill the spool and delay everyone's
uploads. Instead each refusal is counted here, by reason and by client
address, with the first few requests of the window kept as samples that hold
only what the gateway read from the request's head (no body: only its size);
when a window closes its tally becomes one `refusal_summary` record. A reason
or a head value may quote what the client sent (a JWT as a Content-Encoding),
so every text is scrubbed of credential values before it is kept.

The summaries have their own byte budget per hour, separate from the spool's
limit: while it is spent a closing window is not written but carried on (its
counts keep growing, samples beyond the first few are counted, not kept), so
refusals never block, never take spool bytes from authenticated statements,
and no count is lost, only written later. Every table is bounded, so one
summary record is bounded whatever the traffic.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from hoopgw.recorder import redaction

BUDGET_PERIOD: Final = 3600.0
"""Seconds over which `budget_bytes` of summaries may be written (a refilling allowance)."""
MAX_REASONS: Final = 64
"""Distinct (endpoint, code, reason) rows in one summary; the rest are counted as `other`."""
MAX_CLIENTS: Final = 64
"""Distinct client addresses in one summary; the rest are counted as `other`."""
MAX_TEXT: Final = 200
MAX_SCRUBBED: Final = 4096
"""Characters of a text scrubbed for credentials; longer texts are cut first (a JWT cut
before its first dot is only its public header)."""
OTHER: Final = "other"


@dataclass(slots=True)
class _Window:
    start: float
    refused: int = 0
    body_bytes: int = 0
    reasons: dict[tuple[str, int, str], int] = field(default_factory=dict)
    clients: dict[str, int] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    samples_omitted: int = 0
    carried: int = 0  # windows whose summary the budget held back into this one


class RefusalTally:
    """Thread-safe counts of anonymous refusals, turned into summary records by window.

    `add` is cheap and never blocks on I/O; `due(now)` returns the fields of a
    summary to write when the current window has closed and the budget allows.
    """

    def __init__(
        self, *, window_seconds: float, max_samples: int, budget_bytes: int, now: float
    ) -> None:
        self.window_seconds = window_seconds
        self.max_samples = max_samples
        self.budget_bytes = budget_bytes
        self._allowance = float(budget_bytes)
        self._refilled_at = now
        self._window = _Window(start=now)
        self._lock = threading.Lock()
        self.written_bytes = 0
        self.withheld = 0

    def add(
        self,
        *,
        endpoint: str,
        code: int,
        reason: str,
        address: str | None,
        body_size: int,
        sample: dict[str, Any],
    ) -> None:
        """Count one refusal; `sample` (bounded fields only) is kept, scrubbed, if the window
        has room."""
        key = (endpoint[:MAX_TEXT], code, _scrubbed(reason)[:MAX_TEXT])
        client = address or "unknown"
        with self._lock:
            window = self._window
            window.refused += 1
            window.body_bytes += body_size
            _bump(window.reasons, key, (key[0], key[1], OTHER), MAX_REASONS)
            _bump(window.clients, client, OTHER, MAX_CLIENTS)
            if len(window.samples) < self.max_samples:
                window.samples.append(_scrubbed(sample))  # bounded fields: cheap
            else:
                window.samples_omitted += 1

    def due(self, now: float, *, closing: bool = False) -> dict[str, Any] | None:
        """The summary of the closed window, if there is one to write now.

        `closing` (at shutdown) writes what is counted even with the budget
        spent, without samples: one bounded record, so no count is lost.
        """
        with self._lock:
            window = self._window
            if window.refused == 0:
                window.start = now
                return None
            if not closing and now - window.start < self.window_seconds:
                return None
            self._refill(now)
            summary = _summary(window, now)
            cost = len(orjson.dumps(summary))
            if cost > self._allowance:
                if window.samples:
                    window.samples_omitted += len(window.samples)
                    window.samples.clear()
                    summary = _summary(window, now)
                    cost = len(orjson.dumps(summary))
                if cost > self._allowance and not closing:
                    # carried on: counted on, written once the allowance has refilled
                    window.carried += 1
                    self.withheld += 1
                    return None
            self._allowance = max(0.0, self._allowance - cost)
            self.written_bytes += cost
            self._window = _Window(start=now)
            return summary

    def pending(self) -> int:
        """Refusals counted but not yet in a written summary."""
        with self._lock:
            return self._window.refused

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._refilled_at)
        self._refilled_at = now
        rate = self.budget_bytes / BUDGET_PERIOD
        self._allowance = min(float(self.budget_bytes), self._allowance + elapsed * rate)


def _scrubbed(value: Any) -> Any:
    """`value` with every JWT and Authorization-style value in its texts masked."""
    if isinstance(value, str):
        return redaction.mask_credential_values(value[:MAX_SCRUBBED])
    if isinstance(value, dict):
        return {name: _scrubbed(item) for name, item in value.items()}
    if isinstance(value, list):
        return [_scrubbed(item) for item in value]
    return value


def _bump(table: dict[Any, int], key: Any, overflow: Any, limit: int) -> None:
    if key in table or len(table) < limit:
        table[key] = table.get(key, 0) + 1
    else:
        table[overflow] = table.get(overflow, 0) + 1


def _summary(window: _Window, now: float) -> dict[str, Any]:
    reasons = sorted(window.reasons.items(), key=lambda item: -item[1])
    clients = sorted(window.clients.items(), key=lambda item: -item[1])
    return {
        "window_start": window.start,
        "window_end": now,
        "refused": window.refused,
        "body_bytes": window.body_bytes,
        "reasons": [
            {"endpoint": endpoint, "code": code, "reason": reason, "count": count}
            for (endpoint, code, reason), count in reasons
        ],
        "clients": [{"address": address, "count": count} for address, count in clients],
        "samples": list(window.samples),
        "samples_omitted": window.samples_omitted,
        "windows_carried": window.carried,
    }
