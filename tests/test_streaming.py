"""Large answers streamed through the gateway: what the client gets and what the record keeps.

A successful result answer whose Content-Length is over `hoopgw_body_limit` is
passed to the client as it arrives, never buffered whole; the record keeps its
size, its sha256 and an outline (everything but the rows). These tests run the
real connector and raw HTTP through real gateways in front of fakesnow (and,
for gzip-encoded SQL API answers and an upstream that dies mid-answer,
`ShapedUpstream`, a forwarder written here), then read the stored records.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import json
import socket
import struct
import urllib.parse
import uuid
import zlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import brotli
import orjson
import pytest
import snowflake.connector
import zstandard
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mitmproxy import contentviews
from mitmproxy.test import taddons

from hoopgw.addons.contentview import render, snowflake_view
from hoopgw.addons.protocol import Endpoint, StreamedAnswer
from hoopgw.cli.main import main
from hoopgw.recorder.outline import OUTLINE_STRING_LIMIT, JsonOutline
from hoopgw.recorder.schema import validate_record
from hoopgw.recorder.segment import SUFFIX, decode_segment
from hoopgw.recorder.session import load_session
from hoopgw.recorder.store import LocalStore
from hoopgw.replay.export import records_to_flows
from tests import stack
from tests.raw_http import json_headers, login, query, send

ROWS = 100_000
WIDE = (
    "select seq4() as id, 'order-' || seq4() as label, seq4() * 1.5 as amount, "
    f"'customer-' || (seq4() % 1000) as customer from table(generator(rowcount => {ROWS}))"
)
WIDE_COLUMNS = ["ID", "LABEL", "AMOUNT", "CUSTOMER"]
CUT = "/*cut*/"
API_HANDLE = "01b2c3d4-0000-0000-0000-0000000000aa"
API_TOKEN_ENV = "HOOPGW_STREAMING_OAUTH_TOKEN"
SHAPED_BODY_LIMIT = 64 * 1024


def connector(url: str, token: str | None) -> snowflake.connector.SnowflakeConnection:
    host, port = url.rsplit("//", 1)[1].rsplit(":", 1)
    params: dict[str, Any] = {
        "account": "hoopgw",
        "user": "agent",
        "host": host,
        "port": int(port),
        "protocol": "http",
        "login_timeout": 30,
        "network_timeout": 120,
    }
    if token is None:
        params["password"] = "unused-by-fakesnow"
    else:
        params.update(authenticator="oauth", token=token)
    return snowflake.connector.connect(**params)


def stored_records(store: Path) -> list[dict[str, Any]]:
    """Every record of every session segment in a gateway's local store."""
    archive = LocalStore(store)
    records: list[dict[str, Any]] = []
    for key in archive.list("sessions/"):
        if key.endswith(SUFFIX):
            records.extend(decode_segment(archive.get(key)))
    return records


def flows(records: list[dict[str, Any]]) -> dict[str, list[str]]:
    by_flow: dict[str, list[str]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r["writer"], r["session_id"], r["seq"])):
        if record.get("flow_id"):
            by_flow[record["flow_id"]].append(record["kind"])
    return by_flow


def each_flow_recorded_once(records: list[dict[str, Any]]) -> None:
    """Each flow's request, then its response or error (and a partition fetch's `chunk`)."""
    for flow_id, kinds in flows(records).items():
        kinds = [kind for kind in kinds if kind != "chunk"]
        assert kinds in (["request", "response"], ["request", "error"]), (flow_id, kinds)


def answer_to(records: list[dict[str, Any]], request_id: str) -> dict[str, Any]:
    (request,) = [
        r for r in records if r["kind"] == "request" and r.get("request_id") == request_id
    ]
    (answer,) = [
        r
        for r in records
        if r.get("flow_id") == request["flow_id"] and r["kind"] in ("response", "error")
    ]
    return answer


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- through fakesnow --------------------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    through: list[tuple[Any, ...]]
    direct: list[tuple[Any, ...]]
    wide_bytes: bytes
    small_bytes: bytes
    records: list[dict[str, Any]]
    store: str


@pytest.fixture(scope="module")
def recorded(gateway_factory, fakesnow_server, oidc) -> Recorded:
    gateway = gateway_factory(fakesnow_server.url, name="streaming-gw")
    token = oidc.mint("streamer", ["agents"], email="streamer@example.com")
    with contextlib.closing(connector(gateway.url, token)) as connection:
        through = connection.cursor().execute(WIDE).fetchall()
    with contextlib.closing(connector(fakesnow_server.url, None)) as connection:
        direct = connection.cursor().execute(WIDE).fetchall()
    session = login(gateway.port, token)
    wide = query(gateway.port, session.token, WIDE, "wide-raw", timeout=120)
    small = query(gateway.port, session.token, "select 1 as one", "small-raw")
    assert wide.status == 200 and small.status == 200
    gateway.stop()  # seals and uploads every segment
    store = gateway.workdir / "store"
    return Recorded(through, direct, wide.body, small.body, stored_records(store), f"file:{store}")


def test_a_wide_100k_row_result_through_the_gateway_equals_the_direct_answer(recorded):
    assert len(recorded.through) == ROWS
    assert recorded.through == recorded.direct
    assert recorded.through[-1] == (ROWS - 1, f"order-{ROWS - 1}", ROWS * 1.5 - 1.5, "customer-999")


def test_the_record_of_a_streamed_answer_holds_its_size_hash_and_outline(recorded):
    answer = answer_to(recorded.records, "wide-raw")
    sent = orjson.loads(recorded.wide_bytes)
    body = answer["body"]
    assert answer["kind"] == "response" and answer["status"] == 200
    assert body["streamed"] is True and body["truncated"] is True
    assert body["size"] == len(recorded.wide_bytes) > 1024 * 1024
    # the client got the session-bound id, the record keeps Snowflake's (docs/identity.md)
    bound, raw = sent["data"]["queryId"].encode(), answer["query_id"].encode()
    assert bound != raw and raw not in recorded.wide_bytes
    assert body["sha256"] == sha256(recorded.wide_bytes.replace(bound, raw))
    assert "wire_size" not in body  # fakesnow does not encode its answers
    outline = body["json"]["data"]
    assert outline["rowsetBase64"] == ""
    assert body["elided"] == {"data.rowsetBase64": len(sent["data"]["rowsetBase64"])}
    assert [column["type"] for column in outline["rowtype"]] == ["fixed", "text", "fixed", "text"]
    assert answer["total"] == ROWS == sent["data"]["total"]
    assert answer["columns"] == WIDE_COLUMNS
    assert answer["success"] is True
    assert answer["result_format"] == "arrow"


def test_the_connector_flow_was_streamed_too(recorded):
    answers = [
        r
        for r in recorded.records
        if r["kind"] == "response" and r.get("body", {}).get("streamed") and r.get("total") == ROWS
    ]
    assert len(answers) == 2  # the connector's and the raw one


def test_a_small_answer_is_still_recorded_whole(recorded):
    answer = answer_to(recorded.records, "small-raw")
    body = answer["body"]
    assert "streamed" not in body and "truncated" not in body and "sha256" not in body
    assert body["size"] == len(recorded.small_bytes)
    assert (
        body["json"]["data"]["rowsetBase64"]
        == orjson.loads(recorded.small_bytes)["data"]["rowsetBase64"]
        != ""
    )


def test_every_flow_has_one_outcome_and_every_record_is_valid(recorded):
    each_flow_recorded_once(recorded.records)
    assert [problem for r in recorded.records for problem in validate_record(r)] == []


def test_verify_accepts_a_session_with_a_streamed_answer(recorded):
    session_id = answer_to(recorded.records, "wide-raw")["session_id"]
    outcome = CliRunner().invoke(main, ["verify", session_id, "--store", recorded.store])
    assert outcome.exit_code == 0, outcome.output
    assert f"session {session_id}: intact" in outcome.output


def test_replay_compares_the_row_count_of_a_streamed_answer_but_not_its_rows(recorded):
    session_id = answer_to(recorded.records, "wide-raw")["session_id"]
    session = load_session(
        session_id, [r for r in recorded.records if r["session_id"] == session_id]
    )
    (wide,) = [statement for statement in session.statements if statement.sql == WIDE]
    assert wide.outcome.success is True
    assert wide.outcome.row_count == ROWS
    assert wide.outcome.columns == tuple(WIDE_COLUMNS)
    assert wide.outcome.result is None
    assert wide.outcome.rows_note == "rows not recorded: the answer was streamed to the client"


def test_an_exported_streamed_answer_says_its_rows_are_not_on_record(recorded):
    session_id = answer_to(recorded.records, "wide-raw")["session_id"]
    exported = records_to_flows(r for r in recorded.records if r["session_id"] == session_id)
    (wide,) = [f for f in exported if f.comment.startswith("select seq4() as id")]
    assert "response body truncated in the recording" in wide.comment
    with taddons.context():
        shown = contentviews.prettify_message(wide.response, wide)
    assert shown.view_name == snowflake_view.name
    text = shown.text
    assert "Rows             100,000 total\n" in text
    assert "rows not shown: the rows are not in the recording" in text
    assert "This body was truncated in the recording (" in text


# --- through a shaped upstream: gzip SQL API answers, an answer cut short ----------------


def api_answer(partition: int) -> bytes:
    rows = [[str(i), f"order-{i}", f"customer-{i % 1000}"] for i in range(ROWS)]
    meta = {
        "numRows": ROWS * 2,
        "format": "jsonv2",
        "rowType": [{"name": name, "type": "text"} for name in ("ID", "LABEL", "CUSTOMER")],
        "partitionInfo": [{"rowCount": ROWS}, {"rowCount": ROWS}],
    }
    answer: dict[str, Any] = {"data": rows}
    if partition == 0:
        answer.update(
            code="090001",
            message="Statement executed successfully.",
            statementHandle=API_HANDLE,
            resultSetMetaData=meta,
        )
    return orjson.dumps(answer)


@dataclass
class ShapedUpstream(stack.LoopbackServer):
    """Forwards to fakesnow, except: SQL API statements get a gzip-encoded 100k-row answer,
    and a query whose SQL holds `/*cut*/` gets its real answer cut in half by a TCP reset."""

    fakesnow: str

    def serve(self, handler: BaseHTTPRequestHandler) -> None:
        body = stack.read_body(handler)
        route, _, query_string = handler.path.partition("?")
        if route.startswith("/api/v2/statements"):
            partition = int(urllib.parse.parse_qs(query_string).get("partition", ["0"])[0])
            content = gzip.compress(api_answer(partition), compresslevel=1)
            self.answer(handler, 200, content, "application/json", encoding="gzip")
            return
        status, content, content_type = stack.forward(self.fakesnow, handler, body)
        cut = route == "/queries/v1/query-request" and CUT in json.loads(body).get("sqlText", "")
        if not cut:
            self.answer(handler, status, content, content_type)
            return
        head = f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n"
        head += f"Content-Length: {len(content)}\r\n\r\n"
        handler.wfile.write(head.encode() + content[: len(content) // 2])
        handler.wfile.flush()
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        handler.close_connection = True
        handler.connection.close()

    answer = staticmethod(stack.send_answer)


@dataclass(frozen=True)
class Shaped:
    api_bytes: bytes
    partition_bytes: bytes
    cut_received: int
    cut_length: int
    records: list[dict[str, Any]]


@pytest.fixture(scope="module")
def shaped(gateway_factory, fakesnow_server, oidc) -> Iterator[Shaped]:
    upstream = ShapedUpstream(fakesnow_server.url).start()
    try:
        gateway = gateway_factory(
            upstream.url,
            {
                "hoopgw_upstream_password": "",
                "hoopgw_upstream_oauth_token": f"env:{API_TOKEN_ENV}",
                # the gzip answers are about 400 KiB as sent: over this limit, so streamed
                "hoopgw_body_limit": SHAPED_BODY_LIMIT,
                # the client's bytes are compared with the upstream's: no ids bound
                # (tests/test_query_ids_e2e.py binds them in streamed answers)
                "hoopgw_bind_query_ids": False,
            },
            env={API_TOKEN_ENV: "upstream-oauth-" + uuid.uuid4().hex},
            name="streaming-shaped-gw",
        )
        token = oidc.mint("shaper", ["agents"])
        bearer = [(b"Authorization", f"Bearer {token}".encode())]
        statement = json.dumps({"statement": "select * from orders"}).encode()
        api = send(gateway.port, "POST", "/api/v2/statements", statement, json_headers(*bearer))
        partition = send(
            gateway.port, "GET", f"/api/v2/statements/{API_HANDLE}?partition=1", b"", bearer
        )
        assert api.status == 200 and partition.status == 200
        session = login(gateway.port, token)
        with pytest.raises(http.client.IncompleteRead) as cut:
            query(gateway.port, session.token, f"{WIDE} {CUT}", "cut-raw", timeout=60)
        gateway.stop()
        yield Shaped(
            api.body,
            partition.body,
            len(cut.value.partial),
            len(cut.value.partial) + (cut.value.expected or 0),
            stored_records(gateway.workdir / "store"),
        )
    finally:
        upstream.stop()


def answer_for_path(records: list[dict[str, Any]], path: str) -> dict[str, Any]:
    (request,) = [r for r in records if r["kind"] == "request" and r["path"] == path]
    (answer,) = [
        r for r in records if r["kind"] == "response" and r["flow_id"] == request["flow_id"]
    ]
    return answer


def test_a_gzip_sql_api_answer_is_streamed_as_sent_and_recorded_decoded(shaped):
    first = answer_for_path(shaped.records, "/api/v2/statements")
    second = answer_for_path(shaped.records, f"/api/v2/statements/{API_HANDLE}?partition=1")
    decoded = gzip.decompress(shaped.api_bytes)
    assert orjson.loads(decoded)["statementHandle"] == API_HANDLE
    body = first["body"]
    assert body["streamed"] is True
    assert body["wire_size"] == len(shaped.api_bytes)
    assert body["wire_sha256"] == sha256(shaped.api_bytes)
    assert body["size"] == len(decoded)
    assert body["sha256"] == sha256(decoded)
    assert body["json"]["data"] == []
    assert body["elided"] == {"data": len(orjson.dumps(orjson.loads(decoded)["data"])) - 2}
    assert [c["name"] for c in body["json"]["resultSetMetaData"]["rowType"]] == [
        "ID",
        "LABEL",
        "CUSTOMER",
    ]
    assert first["query_id"] == API_HANDLE and first["total"] == 2 * ROWS
    assert second["body"]["wire_sha256"] == sha256(shaped.partition_bytes)
    assert second["body"]["json"] == {"data": []}


def test_an_answer_cut_mid_stream_is_recorded_as_cut(shaped):
    answer = answer_to(shaped.records, "cut-raw")
    assert answer["kind"] == "error"
    body = answer["body"]
    assert answer["status"] == 200
    assert body["cut"] is True and body["streamed"] is True and body["omitted"] == "streamed"
    assert body["content_length"] == shaped.cut_length
    assert shaped.cut_received <= body["size"] < body["content_length"]
    each_flow_recorded_once(shaped.records)
    assert [problem for r in shaped.records for problem in validate_record(r)] == []


# --- the outline and the pass-through, as functions -----------------------------------------


def outline_of(data: bytes, piece: int) -> tuple[Any, dict[str, int], str | None]:
    outline = JsonOutline()
    for start in range(0, len(data), piece):
        outline.feed(data[start : start + piece])
    return outline.close(), outline.elided, outline.problem


def long_text(length: int) -> str:
    """Text whose JSON escapes (quotes, backslashes, newlines) fall at many offsets."""
    pattern = 'a"b\\c\nd/é'
    return "".join(pattern[i % len(pattern)] for i in range(length))


@pytest.mark.parametrize("piece", [1, 2, 3, 7, 64, 4097, 1 << 20])
def test_outline_keeps_everything_but_rows_and_long_strings_whatever_the_pieces(piece):
    long = long_text(OUTLINE_STRING_LIMIT * 3)
    short = long_text(OUTLINE_STRING_LIMIT // 8)
    document = {
        "data": {
            "rowtype": [{"name": 'A"', "type": "text"}, {"name": "B", "type": "fixed"}],
            "rowset": [["1", "x]["], ["2", None], [short, "[]"]],
            "rowsetBase64": long,
            "chunks": [{"url": "https://s3/x", "rowCount": 7}],
            "nested": {"list": [1, [2, 3], {"k": long}], "short": short},
        },
        "message": None,
        "success": True,
    }
    data = orjson.dumps(document)
    value, elided, problem = outline_of(data, piece)
    assert problem is None
    escaped = len(orjson.dumps(long)) - 2
    expected = orjson.loads(data)
    expected["data"].update(rowset=[], rowsetBase64="")
    expected["data"]["nested"]["list"][2]["k"] = ""
    assert value == expected
    rows_text = orjson.dumps(document["data"]["rowset"])
    assert elided == {
        "data.rowset": len(rows_text) - 2,
        "data.rowsetBase64": escaped,
        "data.nested.list.k": escaped,
    }


def outline_reference(value: Any) -> Any:
    """What the outline should be, from the parsed document: rows and long strings left out."""
    if isinstance(value, str):
        return "" if len(orjson.dumps(value)) - 2 > OUTLINE_STRING_LIMIT else value
    if isinstance(value, list):
        if value and isinstance(value[0], list):
            return []
        return [outline_reference(item) for item in value]
    if isinstance(value, dict):
        return {key: outline_reference(item) for key, item in value.items()}
    return value


_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
_LONG_TEXT = st.builds(
    lambda unit, count: unit * count,
    st.sampled_from(["a", '"', "\\", "é", "\n", "\u0001", "]", "{"]),
    st.integers(OUTLINE_STRING_LIMIT // 2 - 8, OUTLINE_STRING_LIMIT + 8),
)
_SCALAR = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _TEXT
)
_JSON = st.recursive(
    _SCALAR | _LONG_TEXT,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=24,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=_JSON, cuts=st.lists(st.integers(0, 1 << 16), max_size=12))
def test_outline_equals_the_parsed_document_without_rows_and_long_strings(document, cuts):
    data = orjson.dumps(document)
    outline = JsonOutline()
    start = 0
    for cut in sorted({cut % (len(data) + 1) for cut in cuts}):
        outline.feed(data[start:cut])
        start = cut
    outline.feed(data[start:])
    assert outline.close() == outline_reference(document), outline.problem


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b'{"data": {"rowset": [["1"]', "the document ended early"),
        (b'{"a": "unfinished', "the document ended early"),
        (b'{"a": 1]', "unbalanced brackets"),
        (b"<html>not json</html>", "not valid JSON"),
    ],
)
def test_outline_of_what_is_not_one_json_document_is_none(data, problem):
    value, _, found = outline_of(data, 3)
    assert value is None and found == problem


def test_outline_gives_up_past_its_limit():
    outline = JsonOutline(limit=1000)
    outline.feed(orjson.dumps({"objects": [{"k": i} for i in range(1000)]}))
    assert outline.close() is None and outline.problem == "outline over 1000 bytes"


def encoded(data: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.compress(data)
    if encoding == "deflate":
        return zlib.compress(data)
    if encoding == "br":
        return brotli.compress(data, quality=1)
    if encoding == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data


@pytest.mark.parametrize("encoding", ["", "gzip", "deflate", "br", "zstd"])
def test_pass_through_returns_each_chunk_and_hashes_both_forms(encoding):
    decoded = api_answer(0)
    wire = encoded(decoded, encoding)
    answer = StreamedAnswer(encoding, len(wire), 1 << 30, json=True)
    chunks = [wire[i : i + 65536] for i in range(0, len(wire), 65536)]
    assert [answer(chunk) for chunk in chunks] == chunks
    outline = answer.finish()
    assert outline["statementHandle"] == API_HANDLE and outline["data"] == []
    facts = answer.facts()
    assert (facts["size"], facts["sha256"]) == (len(decoded), sha256(decoded))
    if encoding:
        assert (facts["wire_size"], facts["wire_sha256"]) == (len(wire), sha256(wire))
    else:
        assert "wire_size" not in facts


@pytest.mark.parametrize("encoding", ["gzip", "br", "zstd"])
def test_a_compression_bomb_is_decoded_only_up_to_the_limit(encoding):
    wire = encoded(b" " * (64 << 20), encoding)
    answer = StreamedAnswer(encoding, len(wire), 1 << 20, json=True)
    assert answer(wire) is wire
    assert answer.finish() is None
    facts = answer.facts()
    assert facts["undecodable"] == f"decoded body over the {1 << 20}-byte limit"
    assert "size" not in facts and facts["wire_size"] == len(wire)
    assert answer.size <= (1 << 20) + 2 * 256 * 1024  # never held more than a piece past it


def test_a_corrupt_body_still_passes_and_is_noted():
    wire = b"\x1f\x8b not gzip at all" * 100
    answer = StreamedAnswer("gzip", len(wire), 1 << 30, json=True)
    assert answer(wire) is wire
    assert answer.finish() is None
    assert answer.facts()["undecodable"].startswith("undecodable body:")


def test_the_view_of_a_streamed_answer_names_what_was_left_out():
    body = {
        "data": {
            "rowtype": [{"name": "N", "type": "fixed", "scale": 0, "precision": 38}],
            "rowsetBase64": "",
            "total": ROWS,
            "queryId": "01ab",
            "queryResultFormat": "arrow",
        },
        "success": True,
    }
    note = {
        "size": 7_307_012,
        "sha256": "ab" * 32,
        "streamed": True,
        "elided": {"data.rowsetBase64": 7_306_080},
    }
    text = render(Endpoint.QUERY, False, body, hoopgw={"truncated": {"response": note}})
    assert "Rows             100,000 total\n" in text
    assert "rows not shown: the rows are not in the recording" in text
    assert "It was streamed to the client as it arrived" in text
    assert "left out: data.rowsetBase64 (7.0 MiB)" in text
    api = {
        "statementHandle": API_HANDLE,
        "resultSetMetaData": {"numRows": ROWS, "rowType": [{"name": "ID", "type": "text"}]},
        "data": [],
    }
    text = render(Endpoint.SQL_API, False, api, hoopgw={"truncated": {"response": note}})
    assert "Rows             100,000 total" in text
    assert "rows not shown: the rows are not in the recording" in text
