"""Object names as `classify` writes them: parts, quoting, levels, completion from the context."""

from __future__ import annotations

import functools
from collections.abc import Sequence

from hoopgw.recorder.statements.context import Context
from hoopgw.recorder.statements.vocabulary import CACHE_SIZE

UNKNOWN_PART = "?"

# Object kinds that live in the account, not in a schema: not listed as objects.
ACCOUNT_LEVEL = frozenset(
    {
        "ACCOUNT",
        "API",
        "APPLICATION",
        "COMPUTE",
        "CONNECTION",
        "EXTERNAL VOLUME",
        "FAILOVER",
        "INTEGRATION",
        "INTEGRATIONS",
        "MONITOR",
        "NETWORK",
        "NOTIFICATION",
        "REPLICATION",
        "RESOURCE",
        "RESOURCE MONITOR",
        "ROLE",
        "ROLES",
        "SECONDARY",
        "SECURITY",
        "SESSION",
        "SHARE",
        "SHARES",
        "STORAGE",
        "USER",
        "USERS",
        "VOLUME",
        "WAREHOUSE",
        "WAREHOUSES",
        "DATABASE ROLE",
        "APPLICATION ROLE",
        "POOL",
    }
)


def split_name(name: str) -> tuple[str | None, ...]:
    """The parts of a name as `classify` writes it; None for a part that is not known."""
    return _split_name(name)


@functools.lru_cache(maxsize=CACHE_SIZE)
def _split_name(name: str) -> tuple[str | None, ...]:
    parts: list[str | None] = []
    i = 0
    while i <= len(name):
        if i < len(name) and name[i] == '"':
            j = i + 1
            chars: list[str] = []
            while j < len(name):
                if name[j] == '"':
                    if j + 1 < len(name) and name[j + 1] == '"':
                        chars.append('"')
                        j += 2
                        continue
                    break
                chars.append(name[j])
                j += 1
            parts.append("".join(chars))
            i = j + 2
        else:
            end = name.find(".", i)
            end = len(name) if end < 0 else end
            part = name[i:end]
            parts.append(None if part == UNKNOWN_PART else part)
            i = end + 1
    return tuple(parts)


def render_name(parts: Sequence[str | None]) -> str:
    """Write name parts as one string, the inverse of `split_name`."""
    return ".".join(_render_part(part) for part in parts)


def _render_part(part: str | None) -> str:
    if part is None:
        return UNKNOWN_PART
    if part == "" or "." in part or '"' in part or "?" in part:
        return '"' + part.replace('"', '""') + '"'
    return part


def unknown_object(level: int) -> str:
    return render_name([None] * level)


def resolve(parts: Sequence[str], level: int, context: Context) -> str | None:
    """Complete a name of `level` parts (3 object, 2 schema, 1 database) from the context."""
    key = tuple(parts)
    if sum(map(len, key)) + len(context[0] or "") + len(context[1] or "") > RESOLVED_MAX_CHARS:
        return _resolve(key, level, context)
    return _remembered(key, level, context)


RESOLVED_MAX_CHARS = 512
"""Longer names are resolved every time rather than remembered (the memory stays bounded)."""


def _resolve(parts: tuple[str, ...], level: int, context: Context) -> str | None:
    if not parts or len(parts) > level:
        return None
    database, schema = context
    full: list[str | None] = list(parts)
    if level == 3 and len(parts) == 1:
        full = [database, schema, parts[0]]
    elif level >= 2 and len(parts) == level - 1:
        full = [database, *parts]
    if level == 3 and full[1] == "":
        full[1] = "PUBLIC"
    return render_name(full)


_remembered = functools.lru_cache(maxsize=CACHE_SIZE)(_resolve)
"""`_resolve`, remembered: a session names the same objects in statement after statement."""


def forget() -> None:
    """Forget the remembered names (benchmarks measure the first resolution)."""
    _remembered.cache_clear()


def level_for(object_kind: str) -> int:
    """3 for schema objects, 2 for schemas, 1 for databases, 0 for account-level objects."""
    if object_kind == "DATABASE":
        return 1
    if object_kind == "SCHEMA":
        return 2
    if object_kind in ACCOUNT_LEVEL:
        return 0
    return 3
