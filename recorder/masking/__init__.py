"""Sensitive data in results: detected, masked or withheld before the caller reads it.

A pure library (no mitmproxy): `MaskPlan` says what to mask for one caller,
`mask_answer` and `mask_sql_api` apply it to a whole Snowflake answer, and
`mask_chunk` to one result chunk (JSON or Arrow) given its rowtype. Each
returns or fills an `Outcome`: the detections per column, for the record,
and whether the answer must be withheld. docs/masking.md describes the keys,
the kinds and the limits.

Importing the package loads only the kinds and the plan: the detectors'
libraries (pyarrow.compute, phonenumbers, python-stdnum, about 50 MB) load on
the first masking call, or on `load()`, which a gateway calls once its policy
masks something.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any

import orjson

from hoopgw.recorder.masking.kinds import COLUMN_KIND, KINDS, marker
from hoopgw.recorder.masking.plan import (
    ACTIONS,
    NO_MASKING,
    Action,
    Column,
    ColumnPattern,
    Detection,
    MaskPlan,
    Outcome,
)

if TYPE_CHECKING:
    from hoopgw.recorder.masking.detectors import Detector

__all__ = [
    "ACTIONS",
    "COLUMN_KIND",
    "DETECTORS",
    "KINDS",
    "NO_MASKING",
    "Action",
    "Column",
    "ColumnPattern",
    "Detection",
    "MaskPlan",
    "Outcome",
    "UnmaskableAnswer",
    "load",
    "marker",
    "mask_answer",
    "mask_chunk",
    "mask_sql_api",
]


def load() -> None:
    """Import the detectors and their libraries now, not in the first answer masked."""
    from hoopgw.recorder.masking import arrow, rowsets  # noqa: F401


def __getattr__(name: str) -> dict[str, Detector]:
    if name == "DETECTORS":
        from hoopgw.recorder.masking.detectors import DETECTORS

        return DETECTORS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class UnmaskableAnswer(ValueError):
    """An answer holding rows the library cannot read, so it cannot vouch for them."""


def mask_answer(answer: dict[str, Any], plan: MaskPlan) -> Outcome:
    """Mask a query or result answer (`data.rowtype` with `rowset` or `rowsetBase64`) in place."""
    from hoopgw.recorder.masking import arrow, rowsets

    outcome = Outcome()
    data = answer.get("data")
    if not plan.active or not isinstance(data, dict):
        return outcome
    rowtype = data.get("rowtype")
    if not isinstance(rowtype, list):
        return outcome
    rowset = data.get("rowset")
    if isinstance(rowset, list):
        rowsets.mask_rows(rowtype, rowset, plan, outcome)
    encoded = data.get("rowsetBase64")
    if isinstance(encoded, str) and encoded:
        try:
            stream = binascii.a2b_base64(encoded, strict_mode=True)
        except (binascii.Error, ValueError):
            raise UnmaskableAnswer("rowsetBase64 is not base64") from None
        try:
            masked = arrow.mask_stream(stream, rowtype, plan, outcome)
        except (OSError, ValueError) as exc:
            raise UnmaskableAnswer(f"rowsetBase64 is not an Arrow stream: {exc}") from None
        if masked is not stream:
            data["rowsetBase64"] = base64.b64encode(masked).decode("ascii")
    return outcome


def mask_sql_api(
    answer: dict[str, Any], plan: MaskPlan, row_type: list[Any] | None = None
) -> Outcome:
    """Mask a SQL API v2 answer's `data` in place; `row_type` for a partition that lacks one."""
    from hoopgw.recorder.masking import rowsets

    outcome = Outcome()
    rows = answer.get("data")
    if not plan.active or not isinstance(rows, list):
        return outcome
    metadata = answer.get("resultSetMetaData")
    if isinstance(metadata, dict) and isinstance(metadata.get("rowType"), list):
        row_type = metadata["rowType"]
    if row_type is None:
        raise UnmaskableAnswer("the partition's columns are not known to the gateway")
    rowsets.mask_rows(row_type, rows, plan, outcome)
    return outcome


def mask_chunk(
    body: bytes, result_format: str, rowtype: list[Any], plan: MaskPlan
) -> tuple[bytes, Outcome]:
    """Mask one decoded result chunk: `json` (rows without the outer brackets) or `arrow`.

    Returns the chunk to send (the same object when nothing changed) and what
    was found; the caller withholds the chunk when `outcome.withheld` is set.
    """
    from hoopgw.recorder.masking import arrow, rowsets

    outcome = Outcome()
    if not plan.active:
        return body, outcome
    if result_format.lower() == "arrow":
        try:
            return arrow.mask_stream(body, rowtype, plan, outcome), outcome
        except (OSError, ValueError) as exc:
            raise UnmaskableAnswer(f"the chunk is not an Arrow stream: {exc}") from None
    try:
        rows = orjson.loads(b"[" + body + b"]")
    except orjson.JSONDecodeError:
        raise UnmaskableAnswer("the chunk is not JSON rows") from None
    rowsets.mask_rows(rowtype, rows, plan, outcome)
    if not outcome.changed:
        return body, outcome
    return orjson.dumps(rows)[1:-1], outcome
