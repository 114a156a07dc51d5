"""Masking end to end: the real connector, a real gateway, fakesnow tables of real-looking data.

fakesnow answers queries in Arrow (`rowsetBase64`) and reports no origin
database, schema or table for a column, so column rules here are written
`*.*.*.NAME`; origin globs and JSON rowsets are covered in
tests/addons/test_masking.py and tests/test_masking.py, SQL API answers in
tests/test_masking_sql_api_e2e.py.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import snowflake.connector
from click.testing import CliRunner
from snowflake.connector import ProgrammingError

from hoopgw.addons.protocol import CODE_GATEWAY_SENSITIVE
from hoopgw.cli.main import main
from hoopgw.recorder.annotations import SENSITIVE_MARK
from hoopgw.replay.export import records_to_flows
from tests import stack
from tests.raw_http import stored_records

GROUPS = ["agents", "readers", "auditors", "guarded"]
POLICY = """
[[rule]]
name = "agents-see-no-pii"
groups = ["agents"]
mask_columns = ["*.*.*.EMAIL"]
detect = ["credit_card", "iban", "phone", "aws_access_key"]
on_detect = "mask"

[[rule]]
name = "auditors-record"
groups = ["auditors"]
detect = ["credit_card", "iban"]
on_detect = "record"

[[rule]]
name = "guarded-keys"
groups = ["guarded"]
detect = ["aws_access_key"]
on_detect = "withhold"
"""
ROWS = [
    (1, "ada@example.com", "4111 1111 1111 1111", "DE89 3704 0044 0532 0130 00", "(415) 555-2671",
     "quarterly revenue report", 12.5, "2024-01-15"),
    (2, "grace@example.org", "4111 1111 1111 1112", "DE88 3704 0044 0532 0130 00", "n/a",
     "key AKIAIOSFODNN7EXAMPLE rotated", 7.25, "2024-02-29"),
    (3, "alan@example.net", "5555 5555 5555 4444", "GB82 WEST 1234 5698 7654 32",
     "+44 20 7946 0958", "order 2024-03-15, total $1,234.56", None, None),
]  # fmt: skip
COLUMNS = "ID, EMAIL, CARD, IBAN, PHONE, NOTE, AMOUNT, JOINED"


def options(issuer: str, policy: Path) -> dict[str, Any]:
    return {
        "hoopgw_allowed_groups": GROUPS,
        "hoopgw_role_map": [f"{group}={group.upper()}" for group in GROUPS],
        "hoopgw_policy": str(policy),
        # answers over 1 KiB are streamed: a masked caller's must be buffered and masked
        "hoopgw_body_limit": 1024,
    }


@pytest.fixture(scope="module")
def policy(workdir: Path) -> Path:
    path = workdir / f"masking-policy-{uuid.uuid4().hex[:6]}.toml"
    path.write_text(POLICY)
    return path


@pytest.fixture(scope="module")
def table(fakesnow_server) -> str:
    name = f"MK_{uuid.uuid4().hex[:8]}".upper()
    host, port = fakesnow_server.url.removeprefix("http://").rsplit(":", 1)
    with snowflake.connector.connect(
        account="fake", user="admin", password="x", host=host, port=int(port), protocol="http"
    ) as admin:
        cursor = admin.cursor()
        cursor.execute(f"create database {name}")
        cursor.execute(f"create schema {name}.CRM")
        cursor.execute(
            f"create table {name}.CRM.CUSTOMERS (id int, email varchar, card varchar, "
            "iban varchar, phone varchar, note varchar, amount number(10,2), joined date)"
        )
        cursor.executemany(
            f"insert into {name}.CRM.CUSTOMERS values (%s, %s, %s, %s, %s, %s, %s, %s)",
            ROWS,
        )
    return f"{name}.CRM.CUSTOMERS"


@pytest.fixture(scope="module")
def gw(gateway_factory, fakesnow_server, oidc, policy: Path) -> stack.Gateway:
    return gateway_factory(fakesnow_server.url, options(oidc.issuer, policy), name="masking-gw")


def cursor_for(gateway: stack.Gateway, connect, oidc, group: str):
    token = oidc.mint(f"{group}-{uuid.uuid4().hex[:6]}", groups=[group])
    return connect(gateway, token).cursor()


def select_all(table: str) -> str:
    return f"select {COLUMNS} from {table} order by id"


def test_a_caller_without_rules_sees_the_data_unmasked(gw, connect, oidc, table: str) -> None:
    rows = cursor_for(gw, connect, oidc, "readers").execute(select_all(table)).fetchall()
    assert [row[1:6] for row in rows] == [row[1:6] for row in ROWS]


def test_masks_by_column_and_by_content_keep_the_other_values(
    gw, connect, oidc, table: str
) -> None:
    rows = cursor_for(gw, connect, oidc, "agents").execute(select_all(table)).fetchall()
    assert [row[1] for row in rows] == ["[MASKED:column]"] * 3
    assert [row[2] for row in rows] == [
        "[MASKED:credit_card]",
        "4111 1111 1111 1112",  # fails Luhn: not a card
        "[MASKED:credit_card]",
    ]
    assert [row[3] for row in rows] == [
        "[MASKED:iban]",
        "DE88 3704 0044 0532 0130 00",  # wrong check digits
        "[MASKED:iban]",
    ]
    assert [row[4] for row in rows] == ["[MASKED:phone]", "n/a", "[MASKED:phone]"]
    assert [row[5] for row in rows] == [
        "quarterly revenue report",
        "[MASKED:aws_access_key]",
        "order 2024-03-15, total $1,234.56",
    ]
    assert [row[0] for row in rows] == [1, 2, 3]


def test_pandas_reads_a_masked_arrow_result_with_its_types(gw, connect, oidc, table: str) -> None:
    plain = cursor_for(gw, connect, oidc, "readers").execute(select_all(table)).fetch_pandas_all()
    masked = cursor_for(gw, connect, oidc, "agents").execute(select_all(table)).fetch_pandas_all()
    assert list(masked.dtypes) == list(plain.dtypes)
    assert masked["AMOUNT"].tolist()[:2] == plain["AMOUNT"].tolist()[:2]
    assert masked["EMAIL"].tolist() == ["[MASKED:column]"] * 3


def test_record_only_returns_the_rows_as_they_are(gw, connect, oidc, table: str) -> None:
    rows = cursor_for(gw, connect, oidc, "auditors").execute(select_all(table)).fetchall()
    assert [row[2] for row in rows] == [row[2] for row in ROWS]


def test_withhold_raises_399007_naming_column_and_kind(gw, connect, oidc, table: str) -> None:
    cursor = cursor_for(gw, connect, oidc, "guarded")
    with pytest.raises(ProgrammingError) as failure:
        cursor.execute(select_all(table))
    assert failure.value.errno == CODE_GATEWAY_SENSITIVE
    message = failure.value.msg or ""
    assert "NOTE" in message and "aws_access_key" in message and "ran in Snowflake" in message
    assert "AKIA" not in message
    assert cursor.execute(f"select id, email from {table} order by id").fetchall() == [
        (row[0], row[1]) for row in ROWS
    ]


def test_records_hold_what_the_caller_received_and_the_detections(
    gateway_factory, fakesnow_server, connect, oidc, policy: Path, table: str
) -> None:
    gateway = gateway_factory(
        fakesnow_server.url,
        options(oidc.issuer, policy),
        name=f"masking-rec-{uuid.uuid4().hex[:4]}",
    )
    cursor_for(gateway, connect, oidc, "agents").execute(select_all(table)).fetchall()
    cursor_for(gateway, connect, oidc, "readers").execute(select_all(table)).fetchall()
    cursor_for(gateway, connect, oidc, "auditors").execute(select_all(table)).fetchall()
    with pytest.raises(ProgrammingError):
        cursor_for(gateway, connect, oidc, "guarded").execute(select_all(table))
    gateway.stop()
    records = stored_records(gateway.workdir / "store")
    answers = [r for r in records if r["kind"] == "response" and r.get("detections")]
    unmasked = [
        r
        for r in records
        if r["kind"] == "response"
        and r.get("columns") == COLUMNS.split(", ")
        and r["caller"]["groups"] == ["readers"]
    ]
    assert [r["body"].get("streamed") for r in unmasked] == [True]  # the size that streams
    by_action = {
        detection["action"]: record for record in answers for detection in record["detections"]
    }
    assert set(by_action) == {"mask", "record", "withhold"}
    assert not by_action["mask"]["body"].get("streamed")
    masked = str(by_action["mask"]["body"])
    assert "AKIAIOSFODNN7EXAMPLE" not in masked and "ada@example.com" not in masked
    assert {(d["column"], d["kind"], d["count"]) for d in by_action["mask"]["detections"]} >= {
        ("EMAIL", "column", 3),
        ("CARD", "credit_card", 2),
        ("NOTE", "aws_access_key", 1),
    }
    withheld = by_action["withhold"]
    assert withheld["error_code"] == str(CODE_GATEWAY_SENSITIVE)
    assert "AKIA" not in str(withheld)
    recorded = by_action["record"]["detections"]
    assert {(d["kind"], d["count"]) for d in recorded} == {("credit_card", 2), ("iban", 2)}
    for record in answers:
        for detection in record["detections"]:
            assert set(detection) == {"column", "kind", "count", "action"}
    store = ["--store", f"file:{gateway.workdir / 'store'}", "--no-cache", "--format", "jsonl"]
    found = CliRunner().invoke(main, ["search", "--detected", "aws_access_key", *store])
    assert found.exit_code == 0, found.output
    matches = [json.loads(line) for line in found.output.splitlines() if line.startswith("{")]
    assert sorted(m["outcome"] for m in matches) == ["error 399007", "ok"]  # withheld, masked
    assert all("select" in m["sql"] for m in matches)
    found = CliRunner().invoke(main, ["search", "--detected", "iban", *store])
    assert len([line for line in found.output.splitlines() if line.startswith("{")]) == 2
    flows = records_to_flows(records)
    marked = [flow for flow in flows if flow.marked == SENSITIVE_MARK]
    assert len(marked) == 3  # masked, recorded and withheld, as in the live view
    assert all(flow.comment.startswith("🔒 select") for flow in marked)
    assert any("aws_access_key x1 withheld" in flow.comment for flow in marked)
