"""Masking: the caller's rules applied to the rows of an answer before it leaves the gateway."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from mitmproxy import http
from mitmproxy.test import taddons

from hoopgw.addons import protocol
from hoopgw.addons.flowstate import Caller, FlowState, state_of
from hoopgw.addons.guardrails import Guardrails, PolicyError, parse_policy
from hoopgw.addons.inspection import Inspection
from hoopgw.addons.masking import INLINE_MASK_BYTES, MASKING_WORKERS, Masking
from hoopgw.addons.protocol import StreamedAnswer
from hoopgw.addons.recording import Recording
from hoopgw.addons.results import (
    SSE_C_KEY,
    ChunkFetch,
    ChunkTap,
    ChunkTicket,
    ResultChunks,
    compact_columns,
)
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


def test_a_result_whose_chunks_are_not_proxied_is_withheld(masking: Masking) -> None:
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


# proxied result chunks

STORAGE = "https://sfc-results.s3.amazonaws.com/r/0_1?X-Amz-Signature=abc&X-Amz-Expires=21600"
CHUNK_ROWS = b'["4","eve@example.com","card 4111 1111 1111 1111"],["5","bob@example.com","hello"]'


@pytest.fixture
def chunk_path(tmp_path: Path):
    """Masking wired to the chunk proxy as in addons/gateway.py: (chunks, masking, fetch)."""
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    guardrails, chunks = Guardrails(), ResultChunks()
    masking, fetch = Masking(guardrails, chunks), ChunkFetch(chunks)
    with taddons.context(guardrails, chunks, masking, fetch) as tctx:
        tctx.configure(guardrails, hoopgw_policy=str(policy))
        yield chunks, masking, fetch


def chunk_flow(chunks: ResultChunks, caller: Caller, **changes: Any) -> http.HTTPFlow:
    fields: dict[str, Any] = {
        "url": STORAGE,
        "headers": {SSE_C_KEY: "a2V5"},
        "session_id": "0190f3c4-7b1a-7c2e-9d4f-1a2b3c4d5e6f",
        "query_id": "01b-q",
        "index": 0,
        "count": 1,
        "rows": 2,
        "result_format": "json",
        "expires_at": int(time.time()) + 60,
        "caller": caller.as_record(),
        "columns": compact_columns(ROWTYPE),
        **changes,
    }
    sealed = chunks.tickets.seal(ChunkTicket(**fields))
    flow = snowflake_flow("GET", f"/hoopgw/v1/chunks/{sealed}")
    classified(flow)
    chunks.request(flow)
    return flow


def storage_answers(flow: http.HTTPFlow, wire: bytes, **headers: str) -> None:
    """Cloud storage's answer, `wire` as sent (already encoded as `headers` say)."""
    flow.response = http.Response.make(200, b"", {"content-type": "application/json", **headers})
    flow.response.raw_content = wire


def fetched(flow: http.HTTPFlow, masking: Masking, fetch: ChunkFetch) -> None:
    """The gateway's hooks on a chunk answer, in the order addons/gateway.py runs them."""
    fetch.request(flow)
    masking.responseheaders(flow)
    fetch.responseheaders(flow)
    masking.response(flow)
    fetch.response(flow)


def test_a_masked_callers_chunk_is_buffered_masked_and_sent_encoded_as_it_came(
    chunk_path,
) -> None:
    chunks, masking, fetch = chunk_path
    flow = chunk_flow(chunks, AGENT)
    admitted = chunks.admitted[flow]
    storage_answers(flow, gzip.compress(CHUNK_ROWS), **{"content-encoding": "gzip"})
    fetched(flow, masking, fetch)
    assert admitted.buffered and flow.response is not None
    assert flow.response.stream is False
    assert flow.response.headers["content-encoding"] == "gzip"
    rows = orjson.loads(b"[" + gzip.decompress(flow.response.raw_content or b"") + b"]")
    assert rows == [
        ["4", "[MASKED:column]", "[MASKED:credit_card]"],
        ["5", "[MASKED:column]", "hello"],
    ]
    assert admitted.tap is not None
    facts = admitted.tap.facts("json")
    assert facts["sha256"] == hashlib.sha256(flow.response.raw_content or b"").hexdigest()
    assert facts["body"]["json"] == rows
    assert {(d["column"], d["kind"]) for d in admitted.detections or []} == {
        ("SHOP.CRM.CUSTOMERS.EMAIL", "column"),
        ("SHOP.CRM.CUSTOMERS.NOTE", "credit_card"),
    }
    state = state_of(flow)
    assert state is not None and state.detections == admitted.detections
    assert b"example.com" not in (state.response_body or b"")


def test_an_arrow_chunk_served_as_a_bare_gzip_blob_goes_back_the_same_way(chunk_path) -> None:
    import pyarrow as pa

    chunks, masking, fetch = chunk_path
    table = pa.table({"ID": [4], "EMAIL": ["eve@example.com"], "NOTE": ["x"]})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    flow = chunk_flow(chunks, AGENT, result_format="arrow")
    storage_answers(flow, gzip.compress(sink.getvalue().to_pybytes()))
    fetched(flow, masking, fetch)
    assert flow.response is not None and "content-encoding" not in flow.response.headers
    masked = pa.ipc.open_stream(gzip.decompress(flow.response.raw_content or b"")).read_all()
    assert masked.schema == table.schema
    assert masked.column("EMAIL").to_pylist() == ["[MASKED:column]"]


def test_a_caller_without_rules_keeps_the_streamed_path(chunk_path) -> None:
    chunks, masking, fetch = chunk_path
    flow = chunk_flow(chunks, ANALYST)
    admitted = chunks.admitted[flow]
    wire = gzip.compress(CHUNK_ROWS)
    storage_answers(flow, wire, **{"content-encoding": "gzip"})
    fetch.request(flow)
    masking.responseheaders(flow)
    fetch.responseheaders(flow)
    assert flow.response is not None and isinstance(flow.response.stream, ChunkTap)
    tap = flow.response.stream
    assert tap(wire) == wire  # what mitmproxy streams through it
    masking.response(flow)
    assert not admitted.buffered and admitted.detections is None
    assert admitted.tap is tap and flow.response.raw_content == wire


def test_a_chunk_holding_a_withheld_kind_is_answered_451_and_never_sent(chunk_path) -> None:
    chunks, masking, fetch = chunk_path
    flow = chunk_flow(chunks, AGENT)
    admitted = chunks.admitted[flow]
    rows = b'["6","x@example.com","key AKIAIOSFODNN7EXAMPLE"]'
    storage_answers(flow, gzip.compress(rows), **{"content-encoding": "gzip"})
    fetched(flow, masking, fetch)
    assert flow.response is not None and flow.response.status_code == 451
    assert flow.response.reason.startswith("Withheld by hoopgw: column SHOP.CRM.CUSTOMERS.NOTE")
    assert b"AKIA" not in (flow.response.raw_content or b"")
    answer = orjson.loads(flow.response.content or b"")
    assert answer["code"] == str(protocol.CODE_GATEWAY_SENSITIVE)
    assert admitted.withheld is not None and "aws_access_key" in admitted.withheld
    assert admitted.tap is None


def test_a_chunk_whose_ticket_lacks_the_columns_is_withheld(chunk_path) -> None:
    chunks, masking, fetch = chunk_path
    flow = chunk_flow(chunks, AGENT, columns=None)
    storage_answers(flow, gzip.compress(CHUNK_ROWS), **{"content-encoding": "gzip"})
    fetched(flow, masking, fetch)
    assert flow.response is not None and flow.response.status_code == 451
    assert "too many columns" in flow.response.reason
    assert b"example.com" not in (flow.response.raw_content or b"")


def test_a_masked_answer_with_proxied_chunks_keeps_the_sealed_urls(chunk_path) -> None:
    chunks, masking, _ = chunk_path
    flow, state = asked(AGENT)
    answer = query_answer()
    answer["data"].update(
        qrmk="a2V5", chunks=[{"url": STORAGE, "rowCount": 2, "uncompressedSize": 90}]
    )
    answered(flow, answer)
    chunks.response(flow)
    masking.response(flow)
    assert flow.response is not None
    sent = orjson.loads(flow.response.content or b"")
    assert sent["data"]["chunks"][0]["url"].split("/hoopgw/v1/chunks/")[1]
    assert sent["data"]["rowset"][0][1] == "[MASKED:column]"
    recorded = orjson.loads(state.response_body or b"")
    assert recorded["data"]["chunks"][0]["url"] == "hoopgw:chunk/01b-q/0"
    assert recorded["data"]["rowset"][0][1] == "[MASKED:column]"


async def test_a_large_answer_is_masked_on_a_worker_while_other_flows_go_on(
    masking: Masking,
) -> None:
    """Masking a large answer never holds the event loop: another flow's hook completes."""
    rows = [
        [str(n), f"user{n}@example.com", "card 4111 1111 1111 1111" if n % 2 else "hello"]
        for n in range(2000)
    ]
    large, large_state = asked(AGENT)
    answered(large, query_answer(rows))
    assert len(large_state.response_body or b"") > INLINE_MASK_BYTES
    small, small_state = asked(AGENT)
    answered(small, query_answer())
    release = threading.Event()
    # every worker busy until released: the large answer's job waits in the pool's queue
    busy = [masking.workers.submit(release.wait) for _ in range(MASKING_WORKERS)]
    try:
        pending = masking.response(large)
        assert pending is not None
        job = asyncio.ensure_future(pending)
        await asyncio.sleep(0)  # the task's first step runs: it hands the answer to the pool
        assert not job.done()
        assert masking.response(small) is None
        assert small_state.detections is not None  # the other flow was masked meanwhile
        assert not job.done() and large_state.detections is None
    finally:
        release.set()
    await job
    assert all(future.done() for future in busy)
    assert large.response is not None
    sent = orjson.loads(large.response.content or b"")["data"]["rowset"]
    assert {row[1] for row in sent} == {"[MASKED:column]"}
    assert [row[2] for row in sent[:2]] == ["hello", "[MASKED:credit_card]"]
    assert orjson.loads(large_state.response_body or b"")["data"]["rowset"] == sent
    assert {(d["column"], d["kind"], d["count"]) for d in large_state.detections or []} == {
        ("SHOP.CRM.CUSTOMERS.EMAIL", "column", 2000),
        ("SHOP.CRM.CUSTOMERS.NOTE", "credit_card", 1000),
    }


MASKING_LIBRARIES = ("pyarrow.compute", "phonenumbers", "stdnum")
LOADED_PROBE = """
import sys
from pathlib import Path

from mitmproxy.test import taddons

import hoopgw.addons.gateway as gateway

with taddons.context(gateway.guardrails, gateway.masking) as tctx:
    tctx.configure(gateway.guardrails, hoopgw_policy=sys.argv[1])
    print(",".join(name for name in sys.argv[2:] if name in sys.modules))
"""


@pytest.mark.parametrize(
    ("policy", "loaded"),
    [
        ('[[rule]]\nname = "guard"\ngroups = ["agents"]\ndeny_kinds = ["DROP"]\n', ""),
        (POLICY, ",".join(MASKING_LIBRARIES)),
    ],
    ids=["no-mask-rules", "mask-rules"],
)
def test_the_detectors_libraries_load_only_for_a_policy_that_masks(
    tmp_path: Path, policy: str, loaded: str
) -> None:
    """About 50 MB of RSS a gateway whose policy masks nothing never carries."""
    path = tmp_path / "policy.toml"
    path.write_text(policy)
    probe = subprocess.run(
        [sys.executable, "-c", LOADED_PROBE, str(path), *MASKING_LIBRARIES],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert probe.stdout.strip() == loaded
