"""Masking JSON rowsets (`data.rowset`, the SQL API's `data`): cells replaced in place.

In a JSON rowset every value is a string or null whatever the column's type;
a masked text value becomes the marker, any other masked value null, so the
driver's conversion of each column still succeeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hoopgw.recorder.masking.detectors import COLUMN_KIND, detect_texts, marker
from hoopgw.recorder.masking.plan import Column, MaskPlan, Outcome


def mask_rows(rowtype: Sequence[Any], rows: list[Any], plan: MaskPlan, outcome: Outcome) -> None:
    """Mask `rows` (a list of row lists) in place, column by column, as `plan` says."""
    if not plan.active or not rows:
        return
    rows = [row for row in rows if isinstance(row, list)]
    kinds = frozenset(plan.detect)
    for index, entry in enumerate(rowtype):
        column = Column.from_rowtype(entry)
        cells = [row if index < len(row) else None for row in rows]
        present = [row for row in cells if row is not None]
        if plan.masks_column(column):
            replacement = marker(COLUMN_KIND) if column.textual else None
            count = 0
            for row in present:
                if row[index] is not None:
                    row[index] = replacement
                    count += 1
            outcome.add(column, COLUMN_KIND, count, "mask")
            outcome.changed = outcome.changed or count > 0
            continue
        if not kinds or not column.textual:
            continue
        texts = [row[index] if isinstance(row[index], str) else None for row in present]
        masked = [False] * len(present)
        for kind, flags in sorted(detect_texts(texts, kinds).items()):
            action = plan.detect[kind]
            outcome.add(column, kind, sum(flags), action)
            if action != "mask":
                continue
            for position, flagged in enumerate(flags):
                if flagged and not masked[position]:
                    present[position][index] = marker(kind)
                    masked[position] = True
                    outcome.changed = True
