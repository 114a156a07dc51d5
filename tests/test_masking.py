"""The masking library: detection accuracy on a labelled sample, and rowsets masked in type.

The accuracy test is the figure docs/masking.md states: precision and recall
per kind on 12,000 generated values (tests/masking_sample.py), each kind
held to a floor.
"""

from __future__ import annotations

import base64
import datetime
from decimal import Decimal

import orjson
import pyarrow as pa
import pytest

from hoopgw.recorder.masking import (
    KINDS,
    ColumnPattern,
    MaskPlan,
    UnmaskableAnswer,
    mask_answer,
    mask_chunk,
    mask_sql_api,
)
from hoopgw.recorder.masking.detectors import detect_texts
from tests.masking_sample import labelled_sample

FLOORS = {
    "email": (0.99, 0.99),
    "phone": (0.95, 0.99),
    "credit_card": (0.97, 0.99),
    "iban": (0.99, 0.99),
    "us_ssn": (0.99, 0.99),
    "ip_address": (0.99, 0.99),
    "aws_access_key": (0.99, 0.99),
    "private_key": (0.99, 0.99),
    "jwt": (0.99, 0.99),
}
"""(precision, recall) each kind must reach on the sample."""


def accuracy() -> dict[str, tuple[float, float]]:
    sample = labelled_sample()
    values = [value for value, _ in sample]
    labels = [label for _, label in sample]
    found = detect_texts(values, KINDS)
    figures = {}
    for kind in KINDS:
        flags = found.get(kind, [False] * len(values))
        hits = [label for flag, label in zip(flags, labels, strict=True) if flag]
        true = sum(1 for label in hits if label == kind)
        figures[kind] = (true / max(len(hits), 1), true / labels.count(kind))
    return figures


def test_precision_and_recall_per_kind_on_a_labelled_sample() -> None:
    assert len(labelled_sample()) >= 10_000
    figures = accuracy()
    for kind, (precision_floor, recall_floor) in FLOORS.items():
        precision, recall = figures[kind]
        assert precision >= precision_floor, (kind, precision)
        assert recall >= recall_floor, (kind, recall)


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("4111 1111 1111 1111", "credit_card"),
        ("DE89 3704 0044 0532 0130 00", "iban"),
        ("ops key AKIAIOSFODNN7EXAMPLE in a note", "aws_access_key"),
        ("call (415) 555-2671 after 5", "phone"),
    ],
)
def test_checksums_decide_between_lookalikes(value: str, kind: str) -> None:
    assert detect_texts([value], KINDS).keys() == {kind}


@pytest.mark.parametrize(
    "value",
    [
        "4111 1111 1111 1112",  # Luhn fails
        "DE88 3704 0044 0532 0130 00",  # check digits wrong
        "666-12-3456",  # never issued
        "999.10.1.1",
        "Quarterly revenue report, order 2024-03-15, total $1,234.56",
    ],
)
def test_lookalikes_that_fail_their_check_are_not_flagged(value: str) -> None:
    assert detect_texts([value], KINDS) == {}


def rowtype(*columns: tuple[str, str]) -> list[dict[str, object]]:
    return [
        {"name": name, "type": kind, "database": "SHOP", "schema": "CRM", "table": "CUSTOMERS"}
        for name, kind in columns
    ]


ROWTYPE = rowtype(("ID", "fixed"), ("EMAIL", "text"), ("NOTE", "text"), ("BORN", "date"))


def json_answer() -> dict[str, object]:
    return {
        "success": True,
        "data": {
            "queryId": "01b-q",
            "rowtype": ROWTYPE,
            "rowset": [
                ["1", "ada@example.com", "card 4111 1111 1111 1111", "1815-12-10"],
                ["2", "grace@example.com", "plain words", None],
            ],
        },
    }


def test_a_column_rule_masks_by_origin_keeping_types() -> None:
    answer = json_answer()
    plan = MaskPlan(columns=(ColumnPattern.parse("shop.crm.*.email"),))
    outcome = mask_answer(answer, plan)
    rows = answer["data"]["rowset"]  # type: ignore[index]
    assert [row[1] for row in rows] == ["[MASKED:column]"] * 2
    assert rows[0][2] == "card 4111 1111 1111 1111"
    assert outcome.as_record() == [
        {"column": "SHOP.CRM.CUSTOMERS.EMAIL", "kind": "column", "count": 2, "action": "mask"}
    ]
    other = json_answer()
    assert not mask_answer(other, MaskPlan(columns=(ColumnPattern.parse("*.HR.*.EMAIL"),))).changed


def test_a_non_text_column_rule_masks_to_null() -> None:
    answer = json_answer()
    mask_answer(answer, MaskPlan(columns=(ColumnPattern.parse("*.*.*.BORN"),)))
    assert [row[3] for row in answer["data"]["rowset"]] == [None, None]  # type: ignore[index]


def test_detection_masks_record_only_or_withholds() -> None:
    masked = json_answer()
    outcome = mask_answer(masked, MaskPlan(detect={"email": "mask", "credit_card": "record"}))
    rows = masked["data"]["rowset"]  # type: ignore[index]
    assert [row[1] for row in rows] == ["[MASKED:email]"] * 2
    assert rows[0][2] == "card 4111 1111 1111 1111"
    assert {(d.column, d.kind, d.count, d.action) for d in outcome.detections} == {
        ("SHOP.CRM.CUSTOMERS.EMAIL", "email", 2, "mask"),
        ("SHOP.CRM.CUSTOMERS.NOTE", "credit_card", 1, "record"),
    }
    assert outcome.withheld is None
    withheld = mask_answer(json_answer(), MaskPlan(detect={"credit_card": "withhold"}))
    assert withheld.withheld is not None and withheld.withheld.column.endswith("NOTE")
    assert "4111" not in orjson.dumps(withheld.as_record()).decode()


def arrow_stream() -> bytes:
    schema = pa.schema(
        [
            pa.field("ID", pa.int64(), metadata={"logicalType": "FIXED", "scale": "0"}),
            pa.field("EMAIL", pa.string(), metadata={"logicalType": "TEXT"}),
            pa.field("AMOUNT", pa.decimal128(10, 2), metadata={"logicalType": "FIXED"}),
            pa.field("BORN", pa.date32(), metadata={"logicalType": "DATE"}),
        ]
    )
    batch = pa.record_batch(
        [
            pa.array([1, 2, 3]),
            pa.array(["ada@example.com", "no address here", None]),
            pa.array([Decimal("1.50"), Decimal("2.00"), None], pa.decimal128(10, 2)),
            pa.array([datetime.date(1815, 12, 10), None, datetime.date(1906, 12, 9)]),
        ],
        schema=schema,
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        writer.write_batch(batch)
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


ARROW_ROWTYPE = rowtype(("ID", "fixed"), ("EMAIL", "text"), ("AMOUNT", "fixed"), ("BORN", "date"))


def test_arrow_rowsets_keep_their_schema_and_metadata() -> None:
    answer = {"data": {"rowtype": ARROW_ROWTYPE, "rowsetBase64": base64.b64encode(arrow_stream())}}
    answer["data"]["rowsetBase64"] = answer["data"]["rowsetBase64"].decode()  # type: ignore[index,union-attr]
    plan = MaskPlan(columns=(ColumnPattern.parse("*.*.*.BORN"),), detect={"email": "mask"})
    outcome = mask_answer(answer, plan)
    table = pa.ipc.open_stream(base64.b64decode(answer["data"]["rowsetBase64"])).read_all()  # type: ignore[index]
    original = pa.ipc.open_stream(arrow_stream()).read_all()
    assert table.schema.equals(original.schema, check_metadata=True)
    assert table.column("EMAIL").to_pylist() == ["[MASKED:email]", "no address here", None] * 2
    assert table.column("BORN").null_count == 6
    assert table.column("AMOUNT").equals(original.column("AMOUNT"))
    assert {(d.kind, d.count) for d in outcome.detections} == {("column", 4), ("email", 2)}


def test_an_unchanged_arrow_stream_is_passed_on_as_it_came() -> None:
    stream = arrow_stream()
    masked, outcome = mask_chunk(stream, "arrow", ARROW_ROWTYPE, MaskPlan(detect={"iban": "mask"}))
    assert masked is stream and outcome.detections == []


def test_json_chunks_are_rows_without_brackets() -> None:
    chunk = b'["1","ada@example.com","x","2020-01-01"],["2","b","y",null]'
    masked, outcome = mask_chunk(chunk, "json", ROWTYPE, MaskPlan(detect={"email": "mask"}))
    assert orjson.loads(b"[" + masked + b"]")[0][1] == "[MASKED:email]"
    assert outcome.detections[0].count == 1
    with pytest.raises(UnmaskableAnswer):
        mask_chunk(b"not rows", "json", ROWTYPE, MaskPlan(detect={"email": "mask"}))


def test_sql_api_partitions_need_their_columns() -> None:
    answer = {
        "resultSetMetaData": {"rowType": ROWTYPE},
        "data": [["1", "ada@example.com", "x", None]],
        "statementHandle": "h",
    }
    plan = MaskPlan(detect={"email": "mask"})
    mask_sql_api(answer, plan)
    assert answer["data"][0][1] == "[MASKED:email]"  # type: ignore[index]
    partition = {"data": [["2", "grace@example.com", "y", None]]}
    with pytest.raises(UnmaskableAnswer):
        mask_sql_api(partition, plan)
    mask_sql_api(partition, plan, ROWTYPE)
    assert partition["data"][0][1] == "[MASKED:email]"
