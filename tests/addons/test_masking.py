"""Masking: the caller's rules applied to the rows of an answer before it leaves the gateway."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from mitmproxy import http
from mitmproxy.test import taddons

from hoopgw.addons import protocol
from hoopgw.addons.flowstate import Caller, FlowState
from hoopgw.addons.guardrails import Guardrails, PolicyError, parse_policy
from hoopgw.addons.inspection import Inspection
from hoopgw.addons.masking import Masking
from hoopgw.addons.protocol import StreamedAnswer
from hoopgw.addons.recording import Recording
from hoopgw.recorder.annotations import SENSITIVE_MARK
from hoopgw.recorder.masking import NO_MASKING
from tests.addons import QUERY_PATH, STATEMENTS_PATH, answered, classified, snowflake_flow
from tests.bodies import query_body
from tests.raw_http import stored_records

POLICY = """
[[rule]]
name = "agents-mask"
groups = ["agents"]
mask_columns = ["SHOP.CRM.CUSTOMERS.EMAIL"]
detect = ["credit_card", "iban"]
on_detect = "mask"

[[rule]]
name = "agents-keys"
groups = ["agents"]
detect = ["aws_access_key"]
on_detect = "withhold"

[[rule]]
name = "auditors-record"
groups = ["auditors"]
detect = ["credit_card"]
on_detect = "record"
"""

AGENT = Caller("ada", "ada@example.com", ("agents",), "AGENT")
AUDITOR = Caller("alan", "alan@example.com", ("auditors",), "AUDITOR")
ANALYST = Caller("grace", "grace@example.com", ("analysts",), "ANALYST")
ROWTYPE = [
    {"name": name, "type": kind, "database": "SHOP", "schema": "CRM", "table": "CUSTOMERS"}
    for name, kind in (("ID", "fixed"), ("EMAIL", "text"), ("NOTE", "text"))
]
ROWS = [
    ["1", "ada@example.com", "card 4111 1111 1111 1111"],
    ["2", "grace@example.com", "iban DE89 3704 0044 0532 0130 00"],
    ["3", "alan@example.com", "card 4111 1111 1111 1112, not a valid one"],
]


def query_answer(rows: list[list[Any]] | None = None) -> dict[str, Any]:
    return {
        "success": True,
        "data": {"queryId": "01b-q", "rowtype": ROWTYPE, "rowset": rows or ROWS},
    }


@pytest.fixture
def masking(tmp_path: Path):
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    guardrails = Guardrails()
    addon = Masking(guardrails)
    with taddons.context(guardrails, addon) as tctx:
        tctx.configure(guardrails, hoopgw_policy=str(policy))
        yield addon


def asked(
    caller: Caller, path: str = QUERY_PATH, method: str = "POST"
) -> tuple[http.HTTPFlow, FlowState]:
    body = query_body("select * from customers") if method == "POST" else None
    flow = snowflake_flow(method, path, body)
    state = classified(flow)
    state.caller, state.session_id = caller, "0190f3c4-7b1a-7c2e-9d4f-1a2b3c4d5e6f"
    return flow, state


def test_column_and_content_rules_mask_the_answer_the_client_reads(masking: Masking) -> None:
    flow, state = asked(AGENT)
    answered(flow, query_answer())
    masking.response(flow)
    assert flow.response is not None
    rows = orjson.loads(flow.response.content or b"")["data"]["rowset"]
    assert [row[1] for row in rows] == ["[MASKED:column]"] * 3
    assert [row[2] for row in rows] == [
        "[MASKED:credit_card]",
        "[MASKED:iban]",
        "card 4111 1111 1111 1112, not a valid one",
    ]
    assert state.response_json is not None
    assert state.response_json["data"]["rowset"] == rows
    assert orjson.loads(state.response_body or b"")["data"]["rowset"] == rows
    assert {(d["column"], d["kind"], d["count"]) for d in state.detections or []} == {
        ("SHOP.CRM.CUSTOMERS.EMAIL", "column", 3),
        ("SHOP.CRM.CUSTOMERS.NOTE", "credit_card", 1),
        ("SHOP.CRM.CUSTOMERS.NOTE", "iban", 1),
    }


def test_a_caller_without_masking_rules_gets_the_answer_untouched(masking: Masking) -> None:
    flow, state = asked(ANALYST)
    answered(flow, query_answer())
    assert flow.response is not None
    before = flow.response.raw_content
    masking.response(flow)
    assert masking.plan_for(state) is NO_MASKING
    assert flow.response.raw_content is before and state.detections is None


def test_record_only_leaves_the_rows_and_lists_what_was_found(masking: Masking) -> None:
    flow, state = asked(AUDITOR)
    answered(flow, query_answer())
    assert flow.response is not None
    before = flow.response.raw_content
    masking.response(flow)
    assert flow.response.raw_content is before
    assert state.detections == [
        {
            "column": "SHOP.CRM.CUSTOMERS.NOTE",
            "kind": "credit_card",
            "count": 1,
            "action": "record",
        }
    ]


def test_withhold_answers_399007_naming_column_and_kind_never_the_value(
    masking: Masking,
) -> None:
    flow, state = asked(AGENT)
    answered(flow, query_answer([["1", "x@example.com", "key AKIAIOSFODNN7EXAMPLE"]]))
    masking.response(flow)
    assert flow.response is not None
    answer = orjson.loads(flow.response.content or b"")
    assert answer["success"] is False and answer["code"] == "399007"
    assert answer["data"]["errorCode"] == "399007"
    message = answer["message"]
    assert "SHOP.CRM.CUSTOMERS.NOTE" in message and "aws_access_key" in message
    assert "01b-q" in message and "ran in Snowflake" in message
    assert "AKIA" not in message and "AKIA" not in orjson.dumps(state.detections).decode()
    assert state.response_json == answer


def test_an_answer_that_cannot_be_read_is_withheld(masking: Masking) -> None:
    flow, _ = asked(AGENT)
    flow.response = http.Response.make(200, b"{not json", {"Content-Type": "application/json"})
    answered_state = answered(flow, {})
    flow.response = http.Response.make(200, b"{not json", {"Content-Type": "application/json"})
    answered_state.response_json, answered_state.response_body = None, b"{not json"
    masking.response(flow)
    assert orjson.loads(flow.response.content or b"")["code"] == "399007"


def test_sql_api_results_and_their_partitions_are_masked(masking: Masking) -> None:
    flow, _ = asked(AGENT, STATEMENTS_PATH)
    answered(
        flow,
        {
            "statementHandle": "01b-h",
            "resultSetMetaData": {"rowType": ROWTYPE, "partitionInfo": [{}, {}]},
            "data": ROWS[:1],
        },
    )
    masking.response(flow)
    assert flow.response is not None
    first = orjson.loads(flow.response.content or b"")["data"][0]
    assert first[1:] == ["[MASKED:column]", "[MASKED:credit_card]"]
    partition, _ = asked(AGENT, f"{STATEMENTS_PATH}/01b-h?partition=1", "GET")
    answered(partition, {"data": ROWS[1:2]})
    masking.response(partition)
    assert partition.response is not None
    assert orjson.loads(partition.response.content or b"")["data"][0][2] == "[MASKED:iban]"
    unknown, _ = asked(AGENT, f"{STATEMENTS_PATH}/01b-other?partition=1", "GET")
    answered(unknown, {"data": ROWS[1:2]})
    masking.response(unknown)
    assert unknown.response is not None and unknown.response.status_code == 400
    assert orjson.loads(unknown.response.content or b"")["code"] == "399007"


def test_a_large_answer_is_buffered_not_streamed_for_a_masked_caller(masking: Masking) -> None:
    for caller, streams in ((AGENT, False), (ANALYST, True)):
        flow, state = asked(caller)
        flow.response = http.Response.make(200, b"", {"Content-Type": "application/json"})
        state.streamed = StreamedAnswer("", 10**8, 10**9, json=True)
        flow.response.stream = state.streamed
        masking.responseheaders(flow)
        assert (state.streamed is not None) is streams
        assert bool(flow.response.stream) is streams


async def test_the_record_holds_the_masked_answer_and_the_detections(
    masking: Masking, tmp_path: Path
) -> None:
    recording = Recording()
    with taddons.context(recording) as tctx:
        tctx.configure(
            recording,
            hoopgw_store=f"file:{tmp_path / 'store'}",
            hoopgw_spool_dir=str(tmp_path / "spool"),
            hoopgw_rollup_interval=0,
        )
        recording.running()
        try:
            flow, state = asked(AGENT)
            state.session_id = None
            await recording.request(flow)
            answered(flow, query_answer())
            masking.response(flow)
            recording.response(flow)
            await asyncio.sleep(0)  # the records are built on the loop's next turn
        finally:
            recording.done()
    response = next(r for r in stored_records(tmp_path / "store") if r["kind"] == "response")
    text = orjson.dumps(response).decode()
    assert "4111 1111 1111 1111" not in text and 'ada@example.com"' not in text.split("caller")[0]
    assert "[MASKED:credit_card]" in text
    assert {d["kind"] for d in response["detections"]} == {"column", "credit_card", "iban"}
    assert protocol.CODE_GATEWAY_SENSITIVE == 399007


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ('mask_columns = ["CRM.CUSTOMERS.EMAIL"]', "four dot-separated parts"),
        ('detect = ["passport"]', "unknown kind 'passport'"),
        ('detect = ["email"]\non_detect = "drop"', 'must be "mask", "record" or "withhold"'),
        ('on_detect = "record"', "has no effect without detect"),
    ],
)
def test_masking_keys_that_cannot_work_are_refused(keys: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse_policy(f'[[rule]]\nname = "r"\ngroups = ["g"]\n{keys}\n'.encode(), "p.toml")


def test_masking_keys_are_parsed_into_the_rule() -> None:
    policy = parse_policy(
        b'[[rule]]\nname = "r"\ngroups = ["g"]\nmask_columns = ["*.hr.*.salary"]\n'
        b'detect = ["EMAIL", "iban"]\non_detect = "withhold"\n',
        "p.toml",
    )
    rule = policy.rules[0]
    assert [pattern.text for pattern in rule.mask_columns] == ["*.hr.*.salary"]
    assert (rule.detect, rule.on_detect) == (frozenset({"email", "iban"}), "withhold")


def test_mitmweb_marks_an_answer_with_detections_and_says_what_was_done(
    masking: Masking,
) -> None:
    flow, state = asked(AGENT)
    Inspection().request(flow)
    answered(flow, query_answer())
    masking.response(flow)
    Inspection().response(flow)
    assert flow.marked == SENSITIVE_MARK
    assert flow.comment.startswith("select * from customers [")
    assert "credit_card x1 masked" in flow.comment and "iban x1 masked" in flow.comment
    assert flow.metadata["hoopgw"]["detections"] == state.detections
    plain, _ = asked(ANALYST)
    answered(plain, query_answer())
    masking.response(plain)
    Inspection().response(plain)
    assert not plain.marked


def test_a_result_with_chunks_in_cloud_storage_is_withheld_until_chunks_are_masked(
    masking: Masking,
) -> None:
    chunked = query_answer()
    chunked["data"]["chunks"] = [{"url": "https://bucket.example/c0", "rowCount": 9}]
    flow, _ = asked(AGENT)
    answered(flow, chunked)
    masking.response(flow)
    assert flow.response is not None
    answer = orjson.loads(flow.response.content or b"")
    assert answer["code"] == "399007" and "result chunks" in answer["message"]
    assert "bucket.example" not in flow.response.text
    plain, _ = asked(ANALYST)
    answered(plain, chunked)
    masking.response(plain)
    assert plain.response is not None
    assert "bucket.example" in plain.response.text
