"""Reading one field of a stored record, whatever is actually there.

Records come from segments written by any version of the gateway, from
roll-ups and from tests: a reader takes what it knows and ignores the rest
(docs/record-format.md). These helpers are the one place that decides what a
field's value counts as. A bool is never a number here, although Python makes
`True` an `int`: a `seq` or a `ts` of `true` is damage, not the value 1.
"""

from __future__ import annotations

from typing import Any, overload


@overload
def integer(value: Any, default: None = None, *, digits: bool = False) -> int | None: ...
@overload
def integer(value: Any, default: int, *, digits: bool = False) -> int: ...
def integer(value: Any, default: int | None = None, *, digits: bool = False) -> int | None:
    """`value` if an int (not a bool), with `digits` also a string of digits; else `default`."""
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if digits and isinstance(value, str) and value.isdigit():
        return int(value)
    return default


@overload
def number(value: Any, default: None = None) -> float | None: ...
@overload
def number(value: Any, default: float) -> float: ...
def number(value: Any, default: float | None = None) -> float | None:
    """`value` as a float if it is an int or a float (not a bool), else `default`."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return float(value)


def text(value: Any) -> str | None:
    """`value` if it is a non-empty string, else None."""
    return value if isinstance(value, str) and value else None


def mapping(value: Any) -> dict[str, Any]:
    """`value` if it is a JSON object (dict), else an empty one."""
    return value if isinstance(value, dict) else {}


def wire_integer(value: Any) -> int | None:
    """An int, or a string of digits: Snowflake sends some counts and codes as strings."""
    return integer(value, digits=True)
