"""A session's records in reading order, grouped by the flow they belong to.

The gateway writes one record per event: a flow is a `request` (or a `refusal`,
when the gateway answered itself) and then a `response` or an `error`, all
with the flow's `flow_id`; `session_start` and `session_end` stand apart.
Every reader of a session (listing and search, `hoopgw sessions show`, replay,
export to flow files) starts from this grouping instead of pairing records
itself.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from hoopgw.recorder import coerce
from hoopgw.recorder.schema import ANSWER_KINDS, STATEMENT_KINDS, RecordKind

Record = dict[str, Any]


def merge_streams(streams: Mapping[str, Iterable[Record]]) -> list[Record]:
    """One session's records from its writers' streams (writer id -> records): each
    stream in `seq` order, the streams merged by `ts`, writers taken by id."""
    ordered = [
        sorted(records, key=lambda record: coerce.integer(record.get("seq"), -1))
        for _, records in sorted(streams.items())
    ]
    return list(heapq.merge(*ordered, key=lambda record: coerce.number(record.get("ts"), 0.0)))


def statement_records(records: Iterable[Record]) -> Iterator[Record]:
    """The records that are statements: a request or refusal that carried SQL text."""
    for record in records:
        if record.get("kind") in STATEMENT_KINDS and isinstance(record.get("sql"), str):
            yield record


@dataclass(slots=True)
class Flow:
    """The records of one flow id, in session order."""

    flow_id: str
    records: list[Record] = field(default_factory=list)

    def first(
        self, kinds: Container[str], where: Callable[[Record], bool] | None = None
    ) -> Record | None:
        """The flow's first record of one of `kinds` (for which `where` holds)."""
        for record in self.records:
            if record.get("kind") in kinds and (where is None or where(record)):
                return record
        return None

    @property
    def request(self) -> Record | None:
        """The request that opened the flow: its first `request` or `refusal` record."""
        return self.first(STATEMENT_KINDS)

    @property
    def answer(self) -> Record | None:
        """What ended the flow: its first `response` or `error` record."""
        return self.first(ANSWER_KINDS)


@dataclass(slots=True)
class SessionRecords:
    """A session's records (in `merge_streams` order) and their flows."""

    records: list[Record]
    flows: dict[str, Flow]
    """Every flow id that has a record, in the order of its first record."""

    @classmethod
    def group(cls, records: Iterable[Record]) -> SessionRecords:
        listed = list(records)
        flows: dict[str, Flow] = {}
        for record in listed:
            flow_id = record.get("flow_id")
            if isinstance(flow_id, str):
                flow = flows.get(flow_id)
                if flow is None:
                    flow = flows[flow_id] = Flow(flow_id)
                flow.records.append(record)
        return cls(listed, flows)

    def first(self, kind: RecordKind) -> Record | None:
        return next((record for record in self.records if record.get("kind") == kind), None)

    def last(self, kind: RecordKind) -> Record | None:
        return next((r for r in reversed(self.records) if r.get("kind") == kind), None)

    @property
    def start(self) -> Record | None:
        """The session's `session_start` record (the first, should there be more)."""
        return self.first(RecordKind.SESSION_START)

    @property
    def end(self) -> Record | None:
        """The session's `session_end` record (the last, should there be more)."""
        return self.last(RecordKind.SESSION_END)

    def requested(self, where: Callable[[Record], bool] | None = None) -> list[Flow]:
        """The flows that have a request (for which `where` holds), in the order of
        their first such request."""
        found: dict[str, Flow] = {}
        for record in self.records:
            flow_id = record.get("flow_id")
            if (
                isinstance(flow_id, str)
                and flow_id not in found
                and record.get("kind") in STATEMENT_KINDS
                and (where is None or where(record))
            ):
                found[flow_id] = self.flows[flow_id]
        return list(found.values())

    def statements(self) -> Iterator[tuple[Record, Flow | None]]:
        """Each statement record (`statement_records`) in order, with its flow."""
        for record in statement_records(self.records):
            flow_id = record.get("flow_id")
            yield record, self.flows.get(flow_id) if isinstance(flow_id, str) else None
