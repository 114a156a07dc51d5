"""Grouping a session's records (`recorder.flows`) and reading their fields (`recorder.coerce`)."""

from __future__ import annotations

from hoopgw.recorder import coerce
from hoopgw.recorder.flows import SessionRecords, merge_streams
from hoopgw.recorder.schema import RecordKind


def test_a_bool_is_not_a_number() -> None:
    assert coerce.integer(True) is None and coerce.integer(True, -1) == -1
    assert coerce.integer(7) == 7 and coerce.integer("7") is None
    assert coerce.integer("7", digits=True) == 7
    assert coerce.number(False) is None and coerce.number(False, 0.0) == 0.0
    assert coerce.number(2) == 2.0 and coerce.number("2") is None
    assert coerce.text("") is None and coerce.text("a") == "a" and coerce.text(1) is None
    assert coerce.mapping([1]) == {} and coerce.mapping({"a": 1}) == {"a": 1}


def test_streams_merge_in_seq_order_then_by_time() -> None:
    """A `seq` of `true` is damage, sorted first (-1), not the seq 1."""
    a = [{"seq": 1, "ts": 3.0, "n": "a1"}, {"seq": 0, "ts": 1.0, "n": "a0"}]
    b = [{"seq": 0, "ts": 2.0, "n": "b0"}, {"seq": True, "ts": 2.5, "n": "damaged"}]
    assert [r["n"] for r in merge_streams({"w2": b, "w1": a})] == ["a0", "damaged", "b0", "a1"]


def test_records_group_into_flows_with_their_request_and_answer() -> None:
    records = [
        {"kind": RecordKind.SESSION_START, "n": 0},
        {"kind": "request", "flow_id": "f1", "sql": "select 1", "n": 1},
        {"kind": "request", "flow_id": "f2", "n": 2},
        {"kind": "error", "flow_id": "f1", "n": 3},
        {"kind": "response", "flow_id": "f1", "n": 4},
        {"kind": "refusal", "flow_id": "f3", "sql": "drop table t", "n": 5},
        {"kind": "session_end", "n": 6},
    ]
    grouped = SessionRecords.group(records)
    assert list(grouped.flows) == ["f1", "f2", "f3"]
    assert grouped.start is records[0] and grouped.end is records[6]
    assert grouped.flows["f1"].request is records[1]
    assert grouped.flows["f1"].answer is records[3]  # the first answer, of either kind
    assert grouped.flows["f2"].answer is None
    statements = [(record["n"], flow.flow_id) for record, flow in grouped.statements()]
    assert statements == [(1, "f1"), (5, "f3")]
