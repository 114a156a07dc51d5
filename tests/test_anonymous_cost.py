"""Anonymous clients cost the gateway a bounded amount, whatever they send.

A real `mitmdump` gateway in front of fakesnow, flooded with large bodies by
callers that hold no token (JSON, form-encoded, gzip, chunked, over and under
`hoopgw_request_limit`), while a caller with the real connector keeps running
`select 1`: its latency stays bounded, the gateway's peak memory stays bounded,
the refusals go to a per-window aggregate (`refusal_summary` records) within
their own budget, and no secret sent in an anonymous body is stored or logged.
"""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import statistics
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from hoopgw.cli.main import main
from tests import stack
from tests.bodies import login_body
from tests.raw_http import secrets_in, send, stored_records

MIB = 1024 * 1024
REQUEST_LIMIT = 16 * MIB
PASSWORD = "Flood-Pa55word-" + "q7Zx" * 4
QUERY = "/queries/v1/query-request?requestId=flood"
# what an authenticated statement may take while the flood runs, on a loaded 2-core machine
P99_BOUND = 1.0
RSS_GROWTH_BOUND_MIB = 160  # before the bound on anonymous cost: +227 MiB (88 -> 315)


def _json_query(size: int, id_token: str) -> bytes:
    sql = f"create user flood password='{PASSWORD}' comment='{id_token}' -- "
    return json.dumps({"sqlText": sql + "x" * max(0, size - len(sql)), "sequenceId": 1}).encode()


def _form(size: int, id_token: str) -> bytes:
    pairs = [("password", PASSWORD), ("token", id_token)]
    pairs += [(f"k{n}", "v" * 64) for n in range(size // 70)]
    return urllib.parse.urlencode(pairs).encode()


def _chunked(port: int, body: bytes) -> bool:
    """A chunked HTTP/1.1 body (no Content-Length): was it refused (or hung up on)?"""
    head = (
        b"POST " + QUERY.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    try:
        with socket.create_connection((stack.LOOPBACK, port), timeout=120) as sock:
            sock.sendall(head)
            for start in range(0, len(body), MIB):
                piece = body[start : start + MIB]
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            sock.sendall(b"0\r\n\r\n")
            answer = http.client.HTTPResponse(sock, method="POST")
            answer.begin()
            body = answer.read()
    except (OSError, http.client.HTTPException):
        return True
    return b'"success": true' not in body.replace(b'"success":true', b'"success": true')


def _anonymous(port: int, body: bytes, content_type: bytes, **extra: bytes) -> bool:
    """One anonymous request: was it refused (or hung up on)?"""
    headers = [(b"Content-Type", content_type), (b"Accept", b"application/json")]
    headers += [(name.replace("_", "-").encode(), value) for name, value in extra.items()]
    try:
        answer = send(port, "POST", QUERY, body, headers, timeout=120)
    except OSError:  # the gateway hangs up on a body it will not read
        return True
    return answer.json.get("success") is not True


def flood_requests(port: int, id_token: str) -> list[Callable[[], bool]]:
    """One anonymous request of each kind the issue names, large and over the limit.

    The bodies are built here, before any timing starts: building them in the
    test process while it times the connector would measure the test, not the gateway.
    """
    big_json = _json_query(15 * MIB, id_token)
    form = _form(12 * MIB, id_token)
    gzipped = gzip.compress(big_json, 1)
    over_limit = _json_query(64 * MIB, id_token)
    login_as_text = json.dumps(login_body(id_token)).encode() * 2
    return [
        lambda: _anonymous(port, big_json, b"application/json"),
        lambda: _anonymous(port, form, b"application/x-www-form-urlencoded"),
        lambda: _anonymous(port, gzipped, b"application/json", Content_Encoding=b"gzip"),
        lambda: _chunked(port, big_json),
        lambda: _anonymous(port, over_limit, b"application/json"),
        lambda: _anonymous(port, login_as_text, b"text/plain"),
    ]


def peak_rss_mib(gateway: stack.Gateway) -> float:
    assert gateway.proc.process is not None
    status = Path(f"/proc/{gateway.proc.process.pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def timed_selects(cursor: Any, count: int) -> list[float]:
    latencies = []
    for _ in range(count):
        start = time.perf_counter()
        cursor.execute("select 1")
        assert cursor.fetchone() == (1,)
        latencies.append(time.perf_counter() - start)
    return latencies


def p99(values: list[float]) -> float:
    return sorted(values)[max(0, round(len(values) * 0.99) - 1)]


@pytest.fixture(scope="module")
def flooded(gateway_factory, fakesnow_server, oidc) -> Iterator[dict[str, Any]]:
    gateway = gateway_factory(
        fakesnow_server.url,
        {"hoopgw_request_limit": REQUEST_LIMIT},
        name="anonymous-flood-gw",
    )
    id_token = oidc.mint("flood-victim", ["agents"])
    yield {"gateway": gateway, "id_token": id_token}


def test_an_anonymous_flood_leaves_an_authenticated_caller_its_latency(flooded, connect) -> None:
    gateway, id_token = flooded["gateway"], flooded["id_token"]
    requests = flood_requests(gateway.port, id_token)
    connection = connect(gateway, token=id_token)
    cursor = connection.cursor()
    timed_selects(cursor, 5)
    before = timed_selects(cursor, 40)
    rss_before = peak_rss_mib(gateway)

    refused: list[bool] = []
    done = threading.Event()

    def flood() -> None:
        for send_one in requests * 2:
            refused.append(send_one())
        done.set()

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    during: list[float] = []
    while not done.is_set():
        during += timed_selects(cursor, 1)
    flooder.join(300)
    rss_peak = peak_rss_mib(gateway)
    figures = {
        "p50_before": statistics.median(before),
        "p99_before": p99(before),
        "p50_during": statistics.median(during),
        "p99_during": p99(during),
        "max_during": max(during),
        "statements_during": len(during),
        "rss_before_mib": rss_before,
        "rss_peak_mib": rss_peak,
        "refused": refused,
    }
    print("FLOOD FIGURES", json.dumps(figures))
    assert len(during) >= 10, figures
    assert p99(during) < max(P99_BOUND, 10 * p99(before)), figures
    assert rss_peak - rss_before < RSS_GROWTH_BOUND_MIB, figures
    assert all(refused), figures


def spool_bytes(spool: Path) -> int:
    """What the spool holds: a WAL file's zeros, prepared ahead, hold nothing."""
    return sum(
        len(path.read_bytes().rstrip(b"\0"))
        if path.name.startswith("wal-")
        else path.stat().st_size
        for path in spool.rglob("*")
        if path.is_file()
    )


def test_anonymous_refusals_cannot_fill_the_spool(gateway_factory, fakesnow_server, oidc, connect):
    """The store is unreachable, so everything stays in the spool: refusals stay in their budget."""
    dead_store = f"http://{stack.LOOPBACK}:{stack.free_port()}"
    budget = 16 * 1024
    gateway = gateway_factory(
        fakesnow_server.url,
        {
            "hoopgw_store": "s3://unreachable/hoopgw",
            "hoopgw_s3_endpoint_url": dead_store,
            "hoopgw_spool_max_bytes": 1 * MIB,
            "hoopgw_refusal_budget_bytes": budget,
            "hoopgw_refusal_window": 1,
        },
        name="anonymous-spool-gw",
    )
    spool = gateway.workdir / "spool"
    start = spool_bytes(spool)
    body = _json_query(512 * 1024, "not-a-token")
    for _ in range(60):
        assert _anonymous(gateway.port, body, b"application/json")
    # every window the flood spans has closed (or been carried on) before the login
    stack.wait_until(
        lambda: "hoopgw: recording" in gateway.log() and spool_bytes(spool) > start,
        30,
        "the refusal summaries to reach the spool",
    )
    used = spool_bytes(spool) - start
    print("SPOOL FIGURES", json.dumps({"refusal_spool_bytes": used, "budget": budget}))
    assert used < 4 * budget

    cursor = connect(gateway, token=oidc.mint("after-flood", ["agents"])).cursor()
    for number in range(3):
        assert cursor.execute(f"select {number}").fetchone() == (number,)


def test_refusal_summaries_count_sample_and_hold_no_secret(
    gateway_factory, fakesnow_server, oidc, tmp_path, monkeypatch
) -> None:
    gateway = gateway_factory(
        fakesnow_server.url,
        {"hoopgw_request_limit": 256 * 1024, "hoopgw_refusal_samples": 3},
        name="anonymous-summary-gw",
    )
    id_token = oidc.mint("summary-victim", ["agents"])
    secrets = [id_token, PASSWORD]
    port = gateway.port
    bearer = (b"Authorization", f"Bearer {id_token}".encode())
    over_limit = _json_query(300 * 1024, id_token)
    sent = [
        _anonymous(port, _json_query(100 * 1024, id_token), b"application/json"),
        _anonymous(port, _form(64 * 1024, id_token), b"application/x-www-form-urlencoded"),
        _anonymous(port, json.dumps(login_body(id_token)).encode() + b"x", b"text/plain"),
        _anonymous(port, over_limit, b"application/json"),
        _chunked(port, _json_query(4 * MIB, id_token)),
        send(port, "POST", QUERY, _json_query(1024, id_token), [bearer]).json.get("success")
        is not True,
        send(port, "GET", f"/nowhere?password={PASSWORD}").status == 404,
    ]
    assert all(sent), sent
    assert gateway.stop() == 0

    records = stored_records(gateway.workdir / "store")
    summaries = [record for record in records if record["kind"] == "refusal_summary"]
    assert summaries and all(record["kind"] != "refusal" for record in records)
    assert sum(summary["refused"] for summary in summaries) == len(sent)
    samples = [sample for summary in summaries for sample in summary["samples"]]
    assert all(len(summary["samples"]) <= 3 for summary in summaries)
    omitted = sum(summary["samples_omitted"] for summary in summaries)
    assert len(samples) >= 3 and len(samples) + omitted == len(sent)
    reasons = {row["reason"]: row["count"] for s in summaries for row in s["reasons"]}
    assert reasons[f"body of {len(over_limit)} bytes is over the 262144-byte limit"] == 1
    assert any("chunked" in reason for reason in reasons), reasons
    assert {row["address"] for s in summaries for row in s["clients"]} == {stack.LOOPBACK}
    assert all(set(sample) >= {"endpoint", "path", "refusal", "body_size"} for sample in samples)
    assert secrets_in(records, secrets) == []
    assert not [secret for secret in secrets if secret in gateway.log()]

    # the archive's readers take the summaries in their stride
    monkeypatch.setenv("HOOPGW_CACHE_DIR", str(tmp_path / "cache"))
    store = f"file:{gateway.workdir / 'store'}"
    listed = CliRunner().invoke(
        main, ["sessions", "list", "--store", store, "--format", "jsonl"], catch_exceptions=False
    )
    assert listed.exit_code == 0, listed.output
    rows = [json.loads(line) for line in listed.output.splitlines() if line.strip()]
    assert {summary["session_id"] for summary in summaries} <= {row["session_id"] for row in rows}
    shown = CliRunner().invoke(
        main,
        ["sessions", "show", summaries[0]["session_id"], "--store", store],
        catch_exceptions=False,
    )
    assert shown.exit_code == 0, shown.output
    searched = CliRunner().invoke(
        main, ["search", "--store", store, "--outcome", "blocked"], catch_exceptions=False
    )
    assert searched.exit_code == 0, searched.output
    assert PASSWORD not in listed.output + shown.output + searched.output


def _upload_until_closed(port: int, head: bytes, pieces: Iterator[bytes]) -> tuple[int, bytes]:
    """Send a body piece by piece until the gateway closes: (body bytes sent, answer read).

    A connection the gateway leaves open (stalled, not closed) fails the test.
    """
    sent = 0
    answer = b""
    with socket.create_connection((stack.LOOPBACK, port), timeout=15) as sock:
        try:
            sock.sendall(head)
            for piece in pieces:
                sock.sendall(piece)
                sent += len(piece)
        except TimeoutError:
            pytest.fail(f"the gateway stopped reading after {sent} bytes but left the socket open")
        except OSError:
            pass  # closed under the client's feet: what it managed to send is the figure
        try:
            while data := sock.recv(65536):
                answer += data
        except TimeoutError:
            pytest.fail("the gateway neither answered nor closed the connection")
        except OSError:
            pass
    return sent, answer


def test_an_anonymous_upload_refused_from_its_head_is_never_read(flooded, connect, oidc) -> None:
    """100 MiB chunked or declared over the limit: closed from the head, not read to the limit.

    Eight such uploads at once (four chunked, four declared) while an
    authenticated caller keeps running `select 1`. Each client counts what it
    could send before the gateway closed the connection: what the kernel's
    socket buffers hold, not the request limit (before: all 100 MiB of a
    chunked body, read up to the 512 MiB `body_size_limit`).
    """
    gateway = flooded["gateway"]
    head = (
        b"POST " + QUERY.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\n"
    )
    piece = b"x" * MIB
    kinds = {
        "chunked": (
            b"Transfer-Encoding: chunked\r\n\r\n",
            lambda: (b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(100)),
        ),
        "declared": (
            b"Content-Length: %d\r\n\r\n" % (100 * MIB),
            lambda: (piece for _ in range(100)),
        ),
    }
    cursor = connect(gateway, token=oidc.mint("upload-bystander", ["agents"])).cursor()
    timed_selects(cursor, 3)
    before = timed_selects(cursor, 20)
    rss_before = peak_rss_mib(gateway)
    uploads: list[tuple[str, int, bytes]] = []
    failures: list[BaseException] = []

    enough = threading.Event()

    def upload(name: str) -> None:
        """Upload after upload until the caller has run its statements meanwhile."""
        extra, pieces = kinds[name]
        try:
            while not enough.is_set():
                sent, answer = _upload_until_closed(gateway.port, head + extra, pieces())
                uploads.append((name, sent, answer))
        except BaseException as exc:  # pytest.fail in the thread: reported below
            failures.append(exc)

    threads = [threading.Thread(target=upload, args=(name,)) for name in list(kinds) * 4]
    for thread in threads:
        thread.start()
    during: list[float] = []
    while len(during) < 40 and any(thread.is_alive() for thread in threads):
        during += timed_selects(cursor, 1)
    enough.set()
    for thread in threads:
        thread.join(60)
    figures = {
        "sent_mib_max": {
            name: max((sent for kind, sent, _ in uploads if kind == name), default=0) / MIB
            for name in kinds
        },
        "p99_before": p99(before),
        "p99_during": p99(during),
        "statements_during": len(during),
        "uploads": len(uploads),
        "rss_growth_mib": peak_rss_mib(gateway) - rss_before,
    }
    print("HEAD REFUSAL FIGURES", json.dumps(figures))
    assert not failures, failures
    assert len(during) == 40 and len(uploads) >= len(threads), figures
    for _, sent, answer in uploads:
        assert sent < REQUEST_LIMIT, figures
        if answer:  # the refusal reaches a client that reads; one still sending sees a reset
            assert b'"399001"' in answer and b"connection: close" in answer.lower(), answer
    assert p99(during) < max(P99_BOUND, 10 * p99(before)), figures
    # what the uploads in flight at once may hold, at most: far below one request limit each
    assert figures["rss_growth_mib"] < len(threads) * REQUEST_LIMIT / MIB / 2, figures
