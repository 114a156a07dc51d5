"""Masking Arrow IPC streams (`rowsetBase64`, Arrow result chunks): batches rebuilt, schema kept.

The stream is rebuilt with the same schema, field metadata included
(Snowflake's drivers read a column's logical type and scale from it): a
masked string becomes the marker, a masked value of any other type null.
Detection runs on string columns only, vectorised (detectors.detect_array).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from hoopgw.recorder.masking.detectors import COLUMN_KIND, detect_array, marker
from hoopgw.recorder.masking.plan import Column, MaskPlan, Outcome


def _is_text(data_type: pa.DataType) -> bool:
    return pa.types.is_string(data_type) or pa.types.is_large_string(data_type)


def mask_stream(data: bytes, rowtype: Sequence[Any], plan: MaskPlan, outcome: Outcome) -> bytes:
    """The stream with `plan` applied; the same bytes when nothing in it was masked."""
    if not plan.active or not data:
        return data
    table = pa.ipc.open_stream(data).read_all()
    schema = table.schema
    columns = [Column.from_rowtype(entry) for entry in rowtype]
    arrays: list[pa.Array | pa.ChunkedArray] = list(table.columns)
    changed = False
    for index, chunked in enumerate(table.columns):
        column = columns[index] if index < len(columns) else Column(schema.names[index], "")
        # one array per column: the per-call cost of the kernels is paid once, not per batch
        replaced = _mask_array(chunked.combine_chunks(), column, plan, outcome)
        if replaced is not None:
            arrays[index] = replaced
            changed = True
    if not changed:
        return data
    outcome.changed = True
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
    return sink.getvalue().to_pybytes()


def _mask_array(
    array: pa.Array, column: Column, plan: MaskPlan, outcome: Outcome
) -> pa.Array | None:
    if plan.masks_column(column):
        count = len(array) - array.null_count
        outcome.add(column, COLUMN_KIND, count, "mask")
        if count == 0:
            return None
        if _is_text(array.type):
            filler = pa.array([marker(COLUMN_KIND)] * len(array), array.type)
            return pc.if_else(pc.is_valid(array), filler, array)
        return pa.nulls(len(array), array.type)
    if not plan.detect or not _is_text(array.type):
        return None
    result = None
    taken = None
    for kind, flags in sorted(detect_array(array, frozenset(plan.detect)).items()):
        action = plan.detect[kind]
        outcome.add(column, kind, pc.sum(flags).as_py() or 0, action)
        if action != "mask":
            continue
        fresh = flags if taken is None else pc.and_(flags, pc.invert(taken))
        taken = flags if taken is None else pc.or_(taken, flags)
        base = array if result is None else result
        result = pc.if_else(fresh, pa.scalar(marker(kind), array.type), base)
    return result
