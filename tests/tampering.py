"""What someone with write access to the store does to a recording: shared by the tests."""

from __future__ import annotations

import orjson

from hoopgw.recorder.catalog import Archive, StreamSummary, summary_key
from hoopgw.recorder.schema import chain_record
from hoopgw.recorder.segment import compress_lines, decompress_segment
from hoopgw.recorder.store import Store


def rewrite_session(
    store: Store, archive: Archive, session_id: str, writer: str, statement: str
) -> int:
    """Replace the SQL `statement` wherever it was recorded, and make everything else agree:
    records re-hashed, the chain recomputed across segments, the summary's last hash and
    its links rebuilt, everything compressed and stored again. Returns the records altered."""
    altered = 0
    prev = "0" * 64
    summary = StreamSummary.from_json(store.get(summary_key(session_id, writer)))
    tally = StreamSummary(session_id, writer)
    last_by_first: dict[int, tuple[int, str]] = {}
    for key in archive.segments(session_id):
        lines = []
        first = None
        for line in decompress_segment(store.get(key)).splitlines():
            record = orjson.loads(line)
            if record.get("sql") == statement:
                record["sql"] = "select 'nothing to see'"
                record.pop("body", None)
                altered += 1
            lines.append(chain_record(record, prev))
            prev = record["hash"]
            first = record["seq"] if first is None else first
            tally.add(record)
            last = (record["seq"], record["hash"])
        store.put(key, compress_lines(b"".join(lines)))
        last_by_first[first] = last
    for link in summary.links:
        link["last_seq"], link["last_hash"] = last_by_first[link["first_seq"]]
    summary.last_hash = tally.last_hash
    store.put(summary_key(session_id, writer), summary.to_json())
    return altered
