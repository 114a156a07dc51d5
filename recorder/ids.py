"""Session and writer identifiers.

Session ids are UUIDv7 (RFC 9562): time-ordered, so a session's start date is
derivable from its id (the archive's date partition) and ids sort by start time.
Ids arrive from clients, command lines and object keys; `parse_session_id` is
the one gate an id passes before it becomes part of a path or an object key.
"""

from __future__ import annotations

import os
import re
import threading
import time
from datetime import UTC, datetime

_SESSION_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
_WRITER_ID = re.compile(r"[0-9a-z]{4,32}")
_SHOWN_CHARS = 48

_lock = threading.Lock()
_last_ms = 0
_last_counter = 0


class InvalidSessionId(ValueError):
    """Text that is not a canonical, lowercase, hyphenated UUIDv7."""


class InvalidWriterId(ValueError):
    """Text that is not a writer id (4 to 32 lowercase letters and digits)."""


def new_session_id(at: datetime | None = None) -> str:
    """A fresh UUIDv7, monotonic within this process even within one millisecond.

    Layout: 48-bit Unix milliseconds, version 7, 12-bit counter (seeded randomly
    each millisecond, incremented within it), variant 0b10, 62 random bits.
    `at` backdates the id (imports, tests); such ids skip the monotonic counter.
    """
    global _last_ms, _last_counter
    if at is not None:
        return _format_uuid7(int(at.timestamp() * 1000), int.from_bytes(os.urandom(2)) & 0xFFF)
    with _lock:
        now_ms = time.time_ns() // 1_000_000
        if now_ms > _last_ms:
            _last_ms = now_ms
            _last_counter = int.from_bytes(os.urandom(2)) & 0x7FF
        else:
            _last_counter += 1
            if _last_counter > 0xFFF:
                _last_ms += 1
                _last_counter = int.from_bytes(os.urandom(2)) & 0x7FF
        ms, counter = _last_ms, _last_counter
    return _format_uuid7(ms, counter)


def _format_uuid7(ms: int, counter: int) -> str:
    if not 0 <= ms < 1 << 48:
        raise ValueError("timestamp out of UUIDv7 range")
    rand_b = int.from_bytes(os.urandom(8)) & ((1 << 62) - 1)
    value = (ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | rand_b
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


# Ids already checked: the spool checks every record's, and a session's records share one.
# Bounded (emptied when full), so ids from many sessions cannot grow it.
_checked_session_ids: set[str] = set()
_CHECKED_LIMIT = 4096


def parse_session_id(text: str) -> str:
    """Return `text` if it is exactly a canonical UUIDv7, else raise InvalidSessionId."""
    if text.__class__ is str:
        if text in _checked_session_ids:
            return text
        if _SESSION_ID.fullmatch(text):
            if len(_checked_session_ids) >= _CHECKED_LIMIT:
                _checked_session_ids.clear()
            _checked_session_ids.add(text)
            return text
    elif isinstance(text, str) and _SESSION_ID.fullmatch(text):
        return text
    raise InvalidSessionId(
        f"invalid session id {_shown(text)}: expected a lowercase UUIDv7 like "
        "0190f3c4-7b1a-7c2e-9d4f-1a2b3c4d5e6f"
    )


def is_session_id(text: object) -> bool:
    return isinstance(text, str) and _SESSION_ID.fullmatch(text) is not None


def session_start(session_id: str) -> datetime:
    """The UTC instant embedded in a session id (its first 48 bits, in milliseconds)."""
    checked = parse_session_id(session_id)
    ms = int(checked[:8] + checked[9:13], 16)
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def session_date(session_id: str) -> str:
    """The session's start date, `YYYY-MM-DD` in UTC: the archive's `dt=` partition."""
    return session_start(session_id).strftime("%Y-%m-%d")


def new_writer_id() -> str:
    """A short random id naming this process's record streams in object keys.

    12 lowercase hex digits (48 random bits): unique per process in practice, and
    safe in keys (no separator, no dash, so `<writer>-<seq>` splits unambiguously).
    Use a fresh one per process start: a writer's sequence numbers start at 0.
    """
    return os.urandom(6).hex()


def parse_writer_id(text: str) -> str:
    if isinstance(text, str) and _WRITER_ID.fullmatch(text):
        return text
    raise InvalidWriterId(
        f"invalid writer id {_shown(text)}: expected 4 to 32 lowercase letters and digits"
    )


def _shown(text: object) -> str:
    """A bounded repr for error messages: ids come from untrusted input."""
    if not isinstance(text, str):
        return f"of type {type(text).__name__}"
    if len(text) > _SHOWN_CHARS:
        return repr(text[:_SHOWN_CHARS]) + f"... ({len(text)} characters)"
    return repr(text)
