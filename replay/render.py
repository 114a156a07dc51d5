"""Plain-text rendering: aligned tables for terminals, and the replay report.

Tables fit the terminal: the last column (usually SQL) is cut to the width
left, with newlines folded, so one statement stays one line.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

from hoopgw.recorder.listing import format_time
from hoopgw.replay.compare import Observation
from hoopgw.replay.engine import ReplayReport, StatementResult, Verdict

_GAP: Final = "  "
_MIN_LAST: Final = 20


def terminal_width(default: int = 120) -> int:
    return shutil.get_terminal_size((default, 24)).columns


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def cut(text: str, width: int) -> str:
    if width <= 0:
        return ""
    return text if len(text) <= width else text[: max(width - 3, 0)] + "..."


def format_table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], *, width: int | None = None
) -> str:
    """Columns aligned to their widest cell; the last one cut to fit `width`."""
    width = width or terminal_width()
    cells = [[one_line(_cell(value)) for value in row] for row in rows]
    widths = [len(header) for header in headers]
    for row in cells:
        for index, value in enumerate(row[:-1]):
            widths[index] = max(widths[index], len(value))
    fixed = sum(widths[:-1]) + len(_GAP) * (len(headers) - 1)
    last = max(width - fixed, _MIN_LAST)
    lines = [_line(headers, widths, last)]
    lines.extend(_line(row, widths, last) for row in cells)
    return "\n".join(lines)


def describe_observation(observation: Observation | None) -> str:
    """`ok, 4 rows`, `error 2003`, `unknown`."""
    if observation is None:
        return ""
    if observation.success and observation.row_count is not None:
        noun = "row" if observation.row_count == 1 else "rows"
        return f"ok, {observation.row_count} {noun}"
    return observation.label


def render_report(report: ReplayReport, *, width: int | None = None) -> str:
    """The per-statement replay report, then a summary line."""
    width = width or terminal_width()
    rows = []
    details: dict[int, list[str]] = {}
    heading = [f"session {report.session_id}"]
    if report.target:
        heading.append(f"target {describe_target(report.target)}")
    context = ", ".join(f"{name}={value}" for name, value in report.context.items() if value)
    if context:
        heading.append(f"context {context}")
    for index, result in enumerate(report.results):
        rows.append(
            [
                result.statement.number,
                _verdict_cell(result),
                result.statement.kind,
                describe_observation(result.recorded),
                "" if report.dry_run else describe_observation(result.replayed),
                result.statement.sql,
            ]
        )
        notes = [str(difference) for difference in result.differences]
        if result.reason and result.verdict is not Verdict.MATCH:
            notes.append(result.reason)
        if notes:
            details[index] = notes
    headers = ["#", "RESULT", "KIND", "RECORDED", "" if report.dry_run else "REPLAY", "SQL"]
    table = format_table(headers, rows, width=width).split("\n")
    lines = [cut(line, width) for line in heading] + ["", table[0]]
    indent = " " * (len(str(max((r[0] for r in rows), default=0))) + len(_GAP))
    for index, line in enumerate(table[1:]):
        lines.append(line)
        for note in details.get(index, ()):
            lines.append(cut(indent + "-> " + one_line(note), width))
    lines.append("")
    lines.append(summary_line(report))
    return "\n".join(lines)


def describe_target(target: dict[str, Any]) -> str:
    """`account SANDBOX, user REPLAYER, at host:port (connection 'sandbox' from ...)`."""
    parts = [f"account {target.get('account')}"]
    if target.get("user"):
        parts.append(f"user {target['user']}")
    if target.get("host"):
        port = f":{target['port']}" if target.get("port") else ""
        parts.append(f"at {target['host']}{port}")
    text = ", ".join(parts)
    return f"{text} ({target['source']})" if target.get("source") else text


def summary_line(report: ReplayReport) -> str:
    counts = report.counts()
    total = len(report.results)
    noun = "statement" if total == 1 else "statements"
    parts = [
        f"{counts[str(verdict)]} {verdict}"
        for verdict in Verdict
        if counts[str(verdict)] or verdict in (Verdict.MATCH, Verdict.DIFFERS)
        if not (report.dry_run and verdict in (Verdict.MATCH, Verdict.DIFFERS))
    ]
    head = f"session {report.session_id}: {total} {noun}"
    if report.dry_run:
        head += " (dry run, nothing was run)"
    line = f"{head}: {', '.join(parts)}"
    if report.aborted:
        line += f"\nreplay stopped: {report.aborted}"
    return line


def _verdict_cell(result: StatementResult) -> str:
    return "DIFFERS" if result.verdict is Verdict.DIFFERS else str(result.verdict)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return format_time(value)
    return str(value)


def _line(values: Sequence[str], widths: Sequence[int], last: int) -> str:
    parts = [
        value.rjust(widths[index]) if _numeric(value) else value.ljust(widths[index])
        for index, value in enumerate(values[:-1])
    ]
    parts.append(cut(values[-1], last))
    return _GAP.join(parts).rstrip()


def _numeric(value: str) -> bool:
    return value.isdigit()
