"""The text builder every rendering fills in: a title, aligned fields and indented sections."""

from __future__ import annotations

import textwrap
from collections.abc import Iterable
from typing import Any

LABEL_WIDTH = 17
LINE_WIDTH = 110


class Report:
    """Plain-text lines: a title, aligned `label  value` fields, and indented blocks."""

    def __init__(self, after_title: list[tuple[str, Any]] | None = None) -> None:
        self.lines: list[str] = []
        self.after_title = after_title or []

    def title(self, text: str) -> None:
        self.lines.append(text)
        self.lines.append("=" * len(text))
        for label, value in self.after_title:
            self.field(label, value)

    def field(self, label: str, value: Any) -> None:
        """`label  value`; long or multi-line values wrap under the value column."""
        if value is None or value == "":
            return
        width = max(20, LINE_WIDTH - LABEL_WIDTH)
        wrapped = [
            piece
            for line in str(value).splitlines()
            for piece in (textwrap.wrap(line, width, drop_whitespace=False) or [""])
        ] or [""]
        self.lines.append(f"{label:<{LABEL_WIDTH}}{wrapped[0]}".rstrip())
        self.lines.extend(f"{'':<{LABEL_WIDTH}}{piece}".rstrip() or " " for piece in wrapped[1:])

    def blank(self) -> None:
        # one space, not an empty line: mitmweb collapses empty lines to nothing
        if self.lines and self.lines[-1].strip():
            self.lines.append(" ")

    def section(self, heading: str, body: Iterable[str]) -> None:
        self.blank()
        self.lines.append(heading)
        self.lines.append("-" * len(heading))
        self.lines.extend(f"  {line}" if line else " " for line in body)

    def text(self) -> str:
        return "\n".join(self.lines).rstrip() + "\n"
