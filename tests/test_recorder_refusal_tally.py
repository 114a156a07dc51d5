"""RefusalTally: anonymous refusals counted per window, bounded, within a byte budget."""

from __future__ import annotations

from typing import Any

import orjson

from hoopgw.recorder.refusal_tally import MAX_CLIENTS, MAX_REASONS, OTHER, RefusalTally


def tally(**overrides: Any) -> RefusalTally:
    settings: dict[str, Any] = {
        "window_seconds": 60.0,
        "max_samples": 2,
        "budget_bytes": 1024 * 1024,
        "now": 1000.0,
    }
    settings.update(overrides)
    return RefusalTally(**settings)


def add(
    counter: RefusalTally, reason: str = "no token", address: str = "10.0.0.1", pad: int = 0
) -> None:
    counter.add(
        endpoint="query",
        code=390104,
        reason=reason,
        address=address,
        body_size=10,
        sample={"reason": reason, "pad": "p" * pad},
    )


def test_a_window_is_written_once_it_has_closed() -> None:
    counter = tally()
    for _ in range(5):
        add(counter)
    assert counter.due(1059.0) is None
    summary = counter.due(1060.0)
    assert summary is not None
    assert summary["refused"] == 5 and summary["body_bytes"] == 50
    assert summary["reasons"] == [
        {"endpoint": "query", "code": 390104, "reason": "no token", "count": 5}
    ]
    assert summary["clients"] == [{"address": "10.0.0.1", "count": 5}]
    assert len(summary["samples"]) == 2 and summary["samples_omitted"] == 3
    assert counter.pending() == 0
    assert counter.due(2000.0) is None  # nothing counted since: nothing to write


def test_every_table_is_bounded_whatever_the_traffic() -> None:
    counter = tally(max_samples=0)
    for number in range(1000):
        add(
            counter,
            reason=f"reason {number} " + "x" * 1000,
            address=f"10.0.{number // 256}.{number % 256}",
        )
    summary = counter.due(2000.0)
    assert summary is not None and summary["refused"] == 1000
    assert len(summary["reasons"]) == MAX_REASONS + 1
    assert len(summary["clients"]) == MAX_CLIENTS + 1
    assert {row["reason"] for row in summary["reasons"]} >= {OTHER}
    assert all(len(row["reason"]) <= 200 for row in summary["reasons"])
    assert sum(row["count"] for row in summary["reasons"]) == 1000
    assert len(orjson.dumps(summary)) < 32 * 1024


def test_a_spent_budget_carries_the_window_on_and_loses_no_count() -> None:
    counter = tally(budget_bytes=1000, window_seconds=1.0)
    add(counter, pad=300)
    add(counter, pad=300)
    first = counter.due(1001.0)
    assert first is not None and len(orjson.dumps(first)) > 700  # within the allowance
    for _ in range(3):
        add(counter)
    assert counter.due(1002.0) is None  # spent: carried on, still counted
    assert counter.withheld == 1 and counter.pending() == 3
    add(counter)
    # an hour later the allowance has refilled: one record covers both windows
    later = counter.due(1002.0 + 3600)
    assert later is not None
    assert later["refused"] == 4 and later["windows_carried"] == 1
    assert counter.written_bytes == len(orjson.dumps(first)) + len(orjson.dumps(later))
    assert later["window_start"] == 1001.0


def test_at_shutdown_the_count_is_written_even_with_the_budget_spent() -> None:
    counter = tally(budget_bytes=1)
    add(counter)
    add(counter)
    assert counter.due(2000.0) is None
    final = counter.due(2000.5, closing=True)
    assert final is not None
    assert final["refused"] == 2 and final["samples"] == [] and final["samples_omitted"] == 2


def test_a_credential_quoted_by_a_reason_or_a_head_value_is_never_kept() -> None:
    """A refusal reason may quote what the client sent: a JWT as its Content-Encoding."""
    jwt = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJtYWxsb3J5In0.c2lnbmF0dXJl"
    counter = tally()
    reason = f"unsupported Content-Encoding '{jwt.lower()}'"
    counter.add(
        endpoint="login",
        code=399001,
        reason=reason,
        address="10.0.0.1",
        body_size=2,
        sample={"refusal": {"reason": reason}, "content_encoding": jwt, "path": "/x"},
    )
    summary = counter.due(1060.0)
    assert summary is not None
    text = orjson.dumps(summary).decode()
    assert jwt.lower() not in text.lower() and "eyJzdWIi".lower() not in text.lower()
    assert summary["reasons"][0]["reason"] == "unsupported Content-Encoding '[REDACTED]'"
    (sample,) = summary["samples"]
    assert sample["refusal"]["reason"] == summary["reasons"][0]["reason"]
    assert sample["content_encoding"] == "[REDACTED]" and sample["path"] == "/x"
