"""How a flow is annotated for people reading it in mitmweb, live or from a recording.

The gateway annotates live flows (addons/inspection.py) and `hoopgw export`
rebuilds flows from records (replay/export.py); both use these marks and this
comment, so the live and the offline views read alike.
"""

from __future__ import annotations

from typing import Any, Final

from hoopgw.recorder.redaction import redact_sql

BLOCKED_MARK: Final = ":no_entry:"
"""`flow.marked` of a flow the gateway answered itself (policy, identity, recording)."""
FAILED_MARK: Final = ":x:"
"""`flow.marked` of a flow Snowflake reported an error for, or that failed outright."""
HELD_MARK: Final = ":hourglass:"
"""`flow.marked` of a statement held for review and of the polls that wait for its decision."""
HELD_FOR_REVIEW: Final = "held for review"
WAITING_FOR_DECISION: Final = "waiting for a decision"
SENSITIVE_MARK: Final = ":lock:"
"""`flow.marked` of an answer whose rows held sensitive data (masked, recorded or withheld)."""
COMMENT_CHARS: Final = 100
REFUSAL_CHARS: Final = 1000
"""A refusal's reason is kept whole in the comment up to this length (a bound, not a cut)."""


_ACTION_WORDS: Final = {"mask": "masked", "record": "recorded", "withhold": "withheld"}


def detections_note(detections: list[Any]) -> str:
    """What masking found, for a comment: `[credit_card x2 masked, iban x1 withheld]`."""
    found = ", ".join(
        " ".join(
            (
                f"{item.get('kind')}",
                f"x{item.get('count')}",
                _ACTION_WORDS.get(item.get("action"), ""),
            )
        ).strip()
        for item in detections
        if isinstance(item, dict)
    )
    return f"[{found}]"


def statement_comment(sql: str, limit: int = COMMENT_CHARS) -> str:
    """The first non-blank line of `sql`, credential literals masked, cut to `limit` characters."""
    lines = [line.strip() for line in redact_sql(sql).splitlines() if line.strip()]
    if not lines:
        return ""
    first = lines[0]
    if len(first) > limit:
        return first[: limit - 1] + "…"
    return first + (" …" if len(lines) > 1 else "")


def refusal_comment(by: object, reason: object, limit: int = REFUSAL_CHARS) -> str:
    """Who refused and the whole reason, on one line; only a reason over `limit` is cut."""
    text = " ".join(str(reason or "").split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return f"refused by hoopgw ({by}): {text}"


def approval_comment(approval_id: object, what: object) -> str:
    """A held flow's comment: `approval <id>: held for review` (or the poll's state)."""
    return f"approval {approval_id}: {what}"
