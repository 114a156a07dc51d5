"""ResultChunks and ChunkFetch: chunk URLs sealed into tickets, tickets checked, chunks tapped."""

from __future__ import annotations

import base64
import gzip
import hashlib
import os
import time
import zlib

import orjson
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from mitmproxy import http
from mitmproxy.test import taddons

from hoopgw.addons import protocol
from hoopgw.addons import results as results_module
from hoopgw.addons.contentview import render
from hoopgw.addons.flowstate import Caller, state_of
from hoopgw.addons.protocol import CHUNK_PATH_PREFIX, Endpoint
from hoopgw.addons.results import (
    SSE_C_KEY,
    TICKET_TEXT_LIMIT,
    ChunkFetch,
    ChunkKeyInStreamError,
    ChunkTap,
    ChunkTicket,
    ChunkTickets,
    ChunkUnreadable,
    KeyGuard,
    ResultChunks,
    TicketError,
    carries_result_key,
    chunk_key_headers,
    compact_columns,
    read_chunk,
    write_chunk,
)
from hoopgw.addons.traffic import SnowflakeTraffic
from tests.addons import QUERY_PATH, answer_json, answered, classified, snowflake_flow

STORAGE = "https://sfc-results.s3.amazonaws.com/r/0_0?X-Amz-Signature=abc&X-Amz-Expires=21600"
QRMK = "cXJtay1zZWNyZXQta2V5LTAxMjM0NTY3ODk="


def ticket(**changes: object) -> ChunkTicket:
    fields: dict[str, object] = {
        "url": STORAGE,
        "headers": {SSE_C_KEY: QRMK},
        "session_id": "0190a0b0-0000-7000-8000-000000000001",
        "query_id": "01b2-q",
        "index": 3,
        "count": 20,
        "rows": 100,
        "result_format": "json",
        "expires_at": int(time.time()) + 60,
    }
    fields.update(changes)
    return ChunkTicket(**fields)  # type: ignore[arg-type]


def chunked_answer() -> dict[str, object]:
    return {
        "success": True,
        "data": {
            "queryId": "01b2-q",
            "queryResultFormat": "json",
            "rowset": [["1"]],
            "qrmk": QRMK,
            "chunks": [
                {"url": STORAGE, "rowCount": 100, "uncompressedSize": 10, "compressedSize": 5},
                {"url": STORAGE + "1", "rowCount": 7, "uncompressedSize": 10, "compressedSize": 5},
            ],
        },
    }


def test_a_ticket_opens_to_what_was_sealed() -> None:
    tickets = ChunkTickets(os.urandom(32))
    sealed = ticket()
    text = tickets.seal(sealed)
    assert tickets.open(text) == sealed
    assert QRMK not in text and "amazonaws" not in text


def test_a_ticket_opens_after_key_rotation_but_not_under_another_key() -> None:
    old, new = os.urandom(32), os.urandom(32)
    text = ChunkTickets(old).seal(ticket())
    assert ChunkTickets(new, [old]).open(text).index == 3
    with pytest.raises(TicketError, match="key this gateway does not hold"):
        ChunkTickets(new).open(text)


@pytest.mark.parametrize("position", [0, 1, 10, 40, -2, -1])
def test_a_ticket_altered_anywhere_does_not_open(position: int) -> None:
    tickets = ChunkTickets(os.urandom(32))
    text = tickets.seal(ticket())
    swapped = "B" if text[position] != "B" else "C"
    altered = (
        text[:position] + swapped + text[position + 1 :] if position != -1 else text[:-1] + swapped
    )
    with pytest.raises(TicketError):
        tickets.open(altered)


def test_the_key_headers_come_from_chunk_headers_first_then_qrmk() -> None:
    assert chunk_key_headers({"chunkHeaders": {"x-k": "v"}, "qrmk": QRMK}) == {"x-k": "v"}
    headers = chunk_key_headers({"qrmk": QRMK})
    assert headers[SSE_C_KEY] == QRMK
    assert chunk_key_headers({}) == {}


def test_an_answer_loses_its_key_and_storage_urls_and_its_record_the_tickets() -> None:
    chunks = ResultChunks()
    with taddons.context(chunks) as tctx:
        tctx.configure(chunks, hoopgw_public_url="https://gw.example.com")
        flow = snowflake_flow("POST", QUERY_PATH, {"sqlText": "select 1"})
        state = classified(flow)
        state.session_id = "0190a0b0-0000-7000-8000-000000000001"
        state.caller = Caller("alice", None, ("agents",), "AGENT")
        answered(flow, chunked_answer())
        chunks.response(flow)
    assert flow.response is not None
    sent = orjson.loads(flow.response.content or b"")
    data = sent["data"]
    assert "qrmk" not in data
    urls = [chunk["url"] for chunk in data["chunks"]]
    assert all(url.startswith("https://gw.example.com" + CHUNK_PATH_PREFIX) for url in urls)
    opened = chunks.tickets.open(urls[1].rsplit("/", 1)[1])
    assert (opened.url, opened.index, opened.rows) == (STORAGE + "1", 1, 7)
    assert opened.headers[SSE_C_KEY] == QRMK
    assert opened.session_id == state.session_id
    recorded = state.response_json
    assert recorded is not None
    assert [c["url"] for c in recorded["data"]["chunks"]] == [
        "hoopgw:chunk/01b2-q/0",
        "hoopgw:chunk/01b2-q/1",
    ]
    assert QRMK.encode() not in (state.response_body or b"")


def test_direct_mode_leaves_the_answer_as_snowflake_gave_it() -> None:
    chunks = ResultChunks()
    with taddons.context(chunks) as tctx:
        tctx.configure(chunks, hoopgw_result_chunks="direct")
        flow = snowflake_flow("POST", QUERY_PATH, {"sqlText": "select 1"})
        classified(flow)
        answered(flow, chunked_answer())
        before = flow.response.content if flow.response else None
        chunks.response(flow)
    assert flow.response is not None and flow.response.content == before


def chunk_request(chunks: ResultChunks, sealed: ChunkTicket, *headers: tuple[str, str]):
    flow = snowflake_flow("GET", CHUNK_PATH_PREFIX + chunks.tickets.seal(sealed), None, headers)
    classified(flow)
    chunks.request(flow)
    return flow


def test_a_chunk_request_is_admitted_and_its_path_names_the_chunk_not_the_ticket() -> None:
    chunks = ResultChunks()
    with taddons.context(chunks):
        flow = chunk_request(chunks, ticket())
    state = state_of(flow)
    assert state is not None and not state.answered
    assert state.endpoint is Endpoint.CHUNK
    assert flow.request.path == f"{CHUNK_PATH_PREFIX}01b2-q/3"
    assert state.session_id == ticket().session_id
    assert flow in chunks.admitted


@pytest.mark.parametrize(
    ("changes", "says"),
    [({"expires_at": int(time.time()) - 1}, "expired")],
)
def test_an_expired_ticket_is_refused(changes: dict[str, object], says: str) -> None:
    chunks = ResultChunks()
    with taddons.context(chunks):
        flow = chunk_request(chunks, ticket(**changes))
    state = state_of(flow)
    assert state is not None and state.refusal is not None
    assert says in state.refusal.reason
    assert flow.response is not None and flow.response.status_code == 403
    assert flow not in chunks.admitted


def test_a_ticket_of_another_gateway_is_refused() -> None:
    chunks, other = ResultChunks(), ResultChunks()
    with taddons.context(chunks):
        flow = snowflake_flow("GET", CHUNK_PATH_PREFIX + other.tickets.seal(ticket()))
        classified(flow)
        chunks.request(flow)
    state = state_of(flow)
    assert state is not None and state.refusal is not None
    assert state.refusal.code == protocol.CODE_GATEWAY_POLICY
    assert flow.request.path == CHUNK_PATH_PREFIX + "sealed"  # the record never holds a ticket


def test_fetch_points_the_request_at_storage_with_the_key_and_back_afterwards() -> None:
    chunks = ResultChunks()
    fetch = ChunkFetch(chunks)
    with taddons.context(chunks, fetch):
        flow = chunk_request(
            chunks, ticket(), ("authorization", 'Snowflake Token="hoopgw1.x"'), ("cookie", "c")
        )
        # the session token check needs Authentication; without it a token is refused
        assert state_of(flow).refusal is not None  # type: ignore[union-attr]
        flow = chunk_request(chunks, ticket())
        fetch.request(flow)
        assert flow.request.url == STORAGE
        assert flow.request.headers[SSE_C_KEY] == QRMK
        assert "authorization" not in flow.request.headers
        flow.response = answer_json({"ok": True})
        fetch.response(flow)
    assert flow.request.path == f"{CHUNK_PATH_PREFIX}01b2-q/3"
    assert SSE_C_KEY not in flow.request.headers


def test_the_tap_hashes_what_was_sent_and_keeps_rows_within_the_limit() -> None:
    rows = b'["1","a"],["2","b"]'
    wire = gzip.compress(rows)
    tap = ChunkTap("", 1024)
    assert b"".join(tap(wire[i : i + 7]) for i in range(0, len(wire), 7)) == wire
    facts = tap.facts("json")
    assert facts["sha256"] == hashlib.sha256(wire).hexdigest()
    assert (facts["size"], facts["wire_size"]) == (len(rows), len(wire))
    assert facts["body"]["json"] == [["1", "a"], ["2", "b"]]
    small = ChunkTap("gzip", 4)
    small(wire)
    assert small.facts("json")["body"]["omitted"] == "over hoopgw_body_limit"
    assert "size" not in small.facts("json")


def test_a_chunk_declared_over_the_limit_is_hashed_but_never_decoded() -> None:
    tap = ChunkTap("gzip", 1024, declared_size=10 * 1024)
    assert tap(b"not gzip at all") == b"not gzip at all"
    facts = tap.facts("json")
    assert facts["sha256"] == hashlib.sha256(b"not gzip at all").hexdigest()
    assert facts["declared_size"] == 10 * 1024 and "size" not in facts
    assert tap.undecodable is None


class _PassThrough:
    def __call__(self, piece: bytes) -> bytes:
        return piece


def test_a_streamed_answer_is_cut_before_a_result_key_goes_out() -> None:
    body = orjson.dumps(chunked_answer())
    compressor = zlib.compressobj(wbits=zlib.MAX_WBITS | 16)
    wire = compressor.compress(body) + compressor.flush()
    guard = KeyGuard(_PassThrough(), "gzip")
    with pytest.raises(ChunkKeyInStreamError):
        for i in range(0, len(wire), 16):
            guard(wire[i : i + 16])
    rows_only = KeyGuard(_PassThrough(), "")
    assert rows_only(b'{"data":{"rowset":[["chunks"],["qrmk"],["\\"qrmk\\":\\"x"]],') != b""
    assert rows_only(b'"chunks": [], "qrmk": null, "chunkHeaders": {}}}') != b""
    with pytest.raises(ChunkKeyInStreamError):
        KeyGuard(_PassThrough(), "")(b'{"data":{"qrmk" : "a2V5"}}')


def test_an_answer_too_large_to_parse_is_withheld_when_it_carries_a_key() -> None:
    assert carries_result_key(gzip.compress(orjson.dumps(chunked_answer())), "gzip")
    assert not carries_result_key(gzip.compress(b'{"data":{"rowset":[["1"]]}}'), "gzip")
    chunks = ResultChunks()
    with taddons.context(chunks):
        flow = snowflake_flow("POST", QUERY_PATH, {"sqlText": "select 1"})
        state = classified(flow)
        flow.response = answer_json(chunked_answer())
        state.response_json = None  # as when the answer is over hoopgw_response_limit
        chunks.response(flow)
    assert QRMK.encode() not in (flow.response.content or b"")
    assert orjson.loads(flow.response.content or b"")["code"] == str(protocol.CODE_GATEWAY_INTERNAL)


def test_chunk_downloads_at_once_are_bounded_per_session_and_released() -> None:
    chunks = ResultChunks()
    fetch = ChunkFetch(chunks)
    with taddons.context(chunks, fetch) as tctx:
        tctx.configure(chunks, hoopgw_chunk_fetches_per_session=2)
        first, second = chunk_request(chunks, ticket()), chunk_request(chunks, ticket())
        third = chunk_request(chunks, ticket())
        assert third.response is not None and third.response.status_code == 429
        other = chunk_request(chunks, ticket(session_id="0190a0b0-0000-7000-8000-000000000002"))
        assert other.response is None
        for flow in (first, second):
            fetch.request(flow)
            flow.response = answer_json({})
            fetch.response(flow)
        assert chunk_request(chunks, ticket()).response is None


def test_the_answers_view_counts_the_chunks_fetched_through_the_gateway() -> None:
    chunks = ResultChunks()
    fetch = ChunkFetch(chunks)
    with taddons.context(chunks, fetch):
        answer = snowflake_flow("POST", QUERY_PATH, {"sqlText": "select 1"})
        state = classified(answer)
        state.session_id = ticket().session_id
        answered(answer, {**chunked_answer(), "data": {**chunked_answer()["data"], "total": 108}})  # type: ignore[dict-item]
        chunks.response(answer)
        sent = orjson.loads(answer.response.content or b"")  # type: ignore[union-attr]
        first = sent["data"]["chunks"][0]["url"].split("://", 1)[1].split("/", 1)[1]
        flow = snowflake_flow("GET", "/" + first)
        classified(flow)
        chunks.request(flow)
        fetch.request(flow)
        flow.response = answer_json({})
        fetch.responseheaders(flow)
        fetch.response(flow)
    hoopgw = answer.metadata["hoopgw"]
    assert hoopgw["chunks_fetched"] == 1
    text = render(Endpoint.QUERY, False, sent, hoopgw=hoopgw)
    assert "108 rows in 2 chunks, 1 of 2 fetched" in text
    assert "fetched through the gateway" in text


def test_an_answer_with_stage_credentials_is_withheld_without_the_policy() -> None:
    chunks = ResultChunks()
    with taddons.context(chunks):
        flow = snowflake_flow("POST", QUERY_PATH, {"sqlText": "call hides_a_put()"})
        classified(flow)
        secret = "stage-secret-key-0123456789"
        answered(
            flow,
            {
                "success": True,
                "data": {"stageInfo": {"location": "b/p/", "creds": {"AWS_SECRET_KEY": secret}}},
            },
        )
        chunks.response(flow)
    sent = orjson.loads(flow.response.content or b"")  # type: ignore[union-attr]
    assert sent["code"] == str(protocol.CODE_GATEWAY_POLICY)
    assert "allow_stage_transfer" in sent["message"]
    assert secret.encode() not in (flow.response.content or b"")  # type: ignore[union-attr]


def rowtype(columns: int) -> list[dict[str, str]]:
    return [
        {
            "name": f"COLUMN_NAME_{i:02d}",
            "type": ("text", "fixed", "date", "timestamp_ntz")[i % 4],
            "database": "ANALYTICS",
            "schema": "SALES",
            "table": "ORDERS",
        }
        for i in range(columns)
    ]


def test_a_ticket_carries_the_results_columns_for_masking() -> None:
    tickets = ChunkTickets(os.urandom(32))
    columns = compact_columns(rowtype(50))
    sealed = tickets.seal(ticket(columns=columns))
    opened = tickets.open(sealed)
    assert opened.rowtype() == rowtype(50)
    # 50 columns cost little: the payload is compressed before sealing
    assert len(sealed) < 2 * len(tickets.seal(ticket()))
    assert len(sealed) < 1200


def test_an_answer_too_wide_for_its_tickets_gets_them_without_columns() -> None:
    chunks = ResultChunks()
    wide = [
        {"name": os.urandom(12).hex(), "type": "text", "database": os.urandom(8).hex()}
        for _ in range(400)
    ]
    with taddons.context(chunks):
        flow = snowflake_flow("POST", QUERY_PATH, {"sqlText": "select 1"})
        classified(flow)
        answered(flow, {**chunked_answer(), "data": {**chunked_answer()["data"], "rowtype": wide}})  # type: ignore[dict-item]
        chunks.response(flow)
        narrow = snowflake_flow("POST", QUERY_PATH, {"sqlText": "select 1"})
        classified(narrow)
        answered(
            narrow, {**chunked_answer(), "data": {**chunked_answer()["data"], "rowtype": wide[:20]}}
        )  # type: ignore[dict-item]
        chunks.response(narrow)
    for answer, has_columns in ((flow, False), (narrow, True)):
        url = orjson.loads(answer.response.content or b"")["data"]["chunks"][0]["url"]  # type: ignore[union-attr]
        sealed = url.split(CHUNK_PATH_PREFIX, 1)[1]
        assert len(sealed) <= TICKET_TEXT_LIMIT
        assert (chunks.tickets.open(sealed).columns is not None) is has_columns


def test_a_chunk_is_read_whole_within_the_limit_and_written_back_as_it_came() -> None:
    rows = b'["1","a"],["2","b"]'
    blob = http.Response.make(200, gzip.compress(rows))
    data, how = read_chunk(blob, 1024)
    assert (data, how) == (rows, "gzip-blob")
    write_chunk(blob, b'["1","x"]', how)
    assert gzip.decompress(blob.raw_content or b"") == b'["1","x"]'
    assert blob.headers["content-length"] == str(len(blob.raw_content or b""))
    bomb = http.Response.make(200, b"", {"content-encoding": "gzip"})
    bomb.raw_content = gzip.compress(b"0" * 4096)
    with pytest.raises(ChunkUnreadable, match="over hoopgw_response_limit"):
        read_chunk(bomb, 1024)
    cut = http.Response.make(200, b"", {"content-encoding": "gzip"})
    cut.raw_content = gzip.compress(rows)[:-6]
    with pytest.raises(ChunkUnreadable):
        read_chunk(cut, 1024)


def test_a_ticket_of_the_first_format_still_opens() -> None:
    key = os.urandom(32)
    tickets = ChunkTickets(key)
    derived = results_module._ticket_key(key)
    kid = hashlib.sha256(derived).digest()[:6]
    nonce = os.urandom(12)
    sealed = AESGCM(derived).encrypt(
        nonce, orjson.dumps(ticket().as_payload()), b"hoopgw chunk ticket v1"
    )
    text = base64.urlsafe_b64encode(b"\x01" + kid + nonce + sealed).rstrip(b"=").decode()
    assert tickets.open(text) == ticket()


# --- stage uploads (PUT on a GCP stage) --------------------------------------------------------

UPLOAD_URL = "https://storage.googleapis.com/b/stage/data.csv.gz?X-Goog-Signature=abc"


def upload_request(
    chunks: ResultChunks, sealed: ChunkTicket, body: bytes, *headers: tuple[str, str]
) -> http.HTTPFlow:
    """An upload as mitmproxy hands its head to the hooks: the body not yet read.

    `hoopgw_request_limit` is 1 KiB here: an upload is bound by its own limit instead.
    """
    extra = [("content-length", str(len(body))), *headers]
    flow = snowflake_flow("PUT", CHUNK_PATH_PREFIX + chunks.tickets.seal(sealed), None, extra)
    flow.request.data.content = None
    traffic = SnowflakeTraffic()
    traffic.request_limit = 1024
    traffic.requestheaders(flow)
    chunks.requestheaders(flow)
    return flow


def test_an_upload_goes_to_storage_with_only_what_storage_needs_streamed_and_hashed() -> None:
    chunks = ResultChunks()
    fetch = ChunkFetch(chunks)
    sealed = ticket(url=UPLOAD_URL, headers={}, upload=True, index=0, count=1)
    body = os.urandom(4096)
    with taddons.context(chunks, fetch):
        flow = upload_request(
            chunks, sealed, body, ("x-goog-meta-sfc-digest", "d1"), ("cookie", "c")
        )
        state = state_of(flow)
        assert state is not None and not state.answered and state.upload_streamed
        fetch.requestheaders(flow)
        assert flow.request.url == UPLOAD_URL
        assert flow.request.headers["x-goog-meta-sfc-digest"] == "d1"
        assert flow.request.headers["content-length"] == str(len(body))
        assert "authorization" not in flow.request.headers
        assert "cookie" not in flow.request.headers
        tap = flow.request.stream
        assert callable(tap)
        sent = b"".join(tap(body[i : i + 1000]) for i in range(0, len(body), 1000))
        assert sent == body
        tap(b"")  # the end: the flow shows the gateway's path again, before the request hooks
        assert flow.request.path == f"{CHUNK_PATH_PREFIX}01b2-q/0"
        assert "x-goog-signature" not in flow.request.url.lower()
        flow.response = http.Response.make(200, b"")
        fetch.response(flow)
    assert isinstance(tap, results_module.UploadTap)
    assert tap.size == len(body) and tap.hexdigest() == hashlib.sha256(body).hexdigest()
    assert chunks.active == {}


@pytest.mark.parametrize(
    ("changes", "headers", "says"),
    [
        ({"upload": False}, (), "for a download (GET)"),
        ({"expires_at": 0}, (), "expired"),
        ({}, (("transfer-encoding", "chunked"),), "chunked"),
    ],
)
def test_a_bad_upload_is_refused_from_its_head(
    changes: dict[str, object], headers: tuple[tuple[str, str], ...], says: str
) -> None:
    chunks = ResultChunks()
    sealed = ticket(**{"url": UPLOAD_URL, "upload": True, **changes})
    with taddons.context(chunks):
        flow = upload_request(chunks, sealed, b"x" * 10, *headers)
    state = state_of(flow)
    assert state is not None and state.refusal is not None and says in state.refusal.reason
    assert not state.upload_streamed and flow not in chunks.uploads
    assert flow.request.stream is False


def test_an_upload_declared_over_its_limit_is_refused_413() -> None:
    chunks = ResultChunks()
    with taddons.context(chunks) as tctx:
        tctx.options.hoopgw_upload_limit = 100
        flow = upload_request(chunks, ticket(url=UPLOAD_URL, upload=True), b"x" * 101)
    state = state_of(flow)
    assert state is not None and state.refusal is not None
    assert "hoopgw_upload_limit" in state.refusal.reason
    assert flow.response is not None and flow.response.status_code == 413


def test_a_get_of_an_upload_url_is_refused() -> None:
    chunks = ResultChunks()
    with taddons.context(chunks):
        flow = chunk_request(chunks, ticket(url=UPLOAD_URL, upload=True))
    state = state_of(flow)
    assert state is not None and state.refusal is not None
    assert "for an upload (PUT)" in state.refusal.reason
    assert flow not in chunks.admitted


def test_the_upload_tap_cuts_a_body_over_its_limit() -> None:
    ended: list[bool] = []
    tap = results_module.UploadTap(10, 10, lambda: ended.append(True))
    assert tap(b"x" * 10) == b"x" * 10
    with pytest.raises(results_module.UploadOverLimit):
        tap(b"y")
    tap(b"")
    assert ended == [True] and tap.ended
