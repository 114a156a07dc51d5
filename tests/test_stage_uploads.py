"""Stage uploads through the gateway: a PUT's pre-signed URL (GCP) sealed, checked, streamed.

The strict upstream (tests/strict_upstream.py) answers a PUT marked
`/*presigned-put*/` the way Snowflake answers it on a GCP stage: one
`stageInfo.presignedUrl` on a loopback cloud storage (tests/cloud_storage.py)
that takes a PUT only with a valid signature. Raw HTTP plays the driver's part
(the upload is one PUT of the file's bytes with its `x-goog-meta-*` headers); a
real gateway (mitmdump) sits between.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from hoopgw.addons.protocol import CHUNK_PATH_PREFIX
from hoopgw.cli.main import main
from hoopgw.recorder.schema import validate_record
from tests import stack
from tests.cloud_storage import CloudStorage
from tests.connect_proxy import ConnectProxy
from tests.raw_http import Answer, login, query, send, session_authorization, stored_records
from tests.storage_fixtures import chunking_upstream
from tests.test_result_chunks import connector, gateway_path, tampered

PUT_SQL = "put file:///tmp/data.csv @~/staged /*presigned-put*/"
GET_SQL = "get @~/exports file:///tmp/out /*presigned:1*/"
REQUEST_LIMIT = 256 * 1024
UPLOAD_LIMIT = 8 * 1024 * 1024
DIGEST = "x-goog-meta-sfc-digest"


@pytest.fixture(scope="module")
def policy(workdir: Path) -> Path:
    path = workdir / "stage-uploads.toml"
    path.write_text(
        '[[rule]]\nname = "uploads"\ngroups = ["agents"]\nallow_stage_transfer = true\n'
    )
    return path


def upload_headers(body: bytes, *extra: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    """What the connector's GCS client sends with a file (gcs_storage_client._upload_chunk)."""
    return [
        (b"Content-Encoding", b""),
        (DIGEST.encode(), hashlib.sha256(body).hexdigest().encode()),
        (b"x-goog-meta-encryptiondata", b'{"EncryptionMode": "FullBlob"}'),
        *extra,
    ]


def put_file(port: int, url: str, body: bytes, *extra: tuple[bytes, bytes]) -> Answer:
    return send(port, "PUT", gateway_path(url), body, upload_headers(body, *extra))


def upload_url(answer: Answer) -> str:
    assert answer.json.get("success") is True, answer.json
    return str(answer.json["data"]["stageInfo"]["presignedUrl"])


@dataclass(frozen=True)
class Run:
    wire: Answer
    sent: bytes
    uploaded: Answer
    stored: dict[str, Any]
    storage_headers: dict[str, str]
    refusals: dict[str, tuple[Answer, int]]
    """Each refused attempt's answer, and how many requests reached storage meanwhile."""
    records: list[dict[str, Any]]
    store: str
    storage_url: str


@pytest.fixture(scope="module")
def run(gateway_factory, chunking_strict, storage, oidc, policy) -> Run:
    gateway = gateway_factory(
        chunking_strict.url,
        {
            "hoopgw_policy": str(policy),
            "hoopgw_request_limit": REQUEST_LIMIT,
            "hoopgw_upload_limit": UPLOAD_LIMIT,
        },
        name="uploads-gw",
    )
    session = login(gateway.port, oidc.mint("uploader", ["agents"]))
    other = login(gateway.port, oidc.mint("someone-else", ["agents"]))
    wire = query(gateway.port, session.token, PUT_SQL, "put")
    url = upload_url(wire)
    download = query(gateway.port, session.token, GET_SQL, "get").json["data"]["presignedUrls"][0]
    second = upload_url(query(gateway.port, session.token, PUT_SQL, "put-2"))

    small = b"id,label\n1,refused\n"
    over = [(b"Content-Length", str(UPLOAD_LIMIT + 1).encode())]
    attempts = {
        "other session": lambda: put_file(
            gateway.port, url, small, session_authorization(other.token)
        ),
        "tampered": lambda: send(gateway.port, "PUT", tampered(gateway_path(url)), small),
        "forged": lambda: send(gateway.port, "PUT", CHUNK_PATH_PREFIX + "AQ" + "A" * 80, small),
        "GET on an upload URL": lambda: send(gateway.port, "GET", gateway_path(url)),
        "PUT on a download URL": lambda: send(gateway.port, "PUT", gateway_path(download), small),
        "over the upload limit": lambda: send(
            gateway.port, "PUT", gateway_path(second), headers=over, content_length=False
        ),
        "chunked": lambda: send(
            gateway.port,
            "PUT",
            gateway_path(second),
            b"5\r\nhello\r\n0\r\n\r\n",
            [(b"Transfer-Encoding", b"chunked")],
            content_length=False,
        ),
    }
    refusals = {}
    for case, attempt in attempts.items():
        quiet = storage.mark()
        refusals[case] = (attempt(), len(storage.requests_since(quiet)))

    # four times hoopgw_request_limit, streamed; the own session's token is not forwarded
    sent = os.urandom(4 * REQUEST_LIMIT)
    mark = storage.mark()
    uploaded = put_file(gateway.port, url, sent, session_authorization(session.token))
    (storage_request,) = storage.requests_since(mark)
    gateway.stop()
    return Run(
        wire,
        sent,
        uploaded,
        storage.uploads(),
        storage_request.headers,
        refusals,
        stored_records(gateway.workdir / "store"),
        f"file:{gateway.workdir / 'store'}",
        storage.url,
    )


def upload_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["kind"] == "chunk" and r.get("direction") == "upload"]


def test_the_client_is_handed_a_gateway_url_not_the_storage_url(run: Run) -> None:
    url = run.wire.json["data"]["stageInfo"]["presignedUrl"]
    assert CHUNK_PATH_PREFIX in url
    body = run.wire.body.decode()
    assert run.storage_url not in body and "X-Goog-Signature" not in body


def test_an_upload_larger_than_the_request_limit_streams_to_storage_unchanged(run: Run) -> None:
    assert run.uploaded.status == 200, run.uploaded.body[:300]
    assert len(run.sent) > REQUEST_LIMIT
    (stored,) = [u for name, u in run.stored.items() if name.endswith("/data.csv")]
    assert stored.body == run.sent


def test_only_the_headers_storage_needs_are_forwarded(run: Run) -> None:
    headers = run.storage_headers
    assert headers[DIGEST] == hashlib.sha256(run.sent).hexdigest()
    assert headers["x-goog-meta-encryptiondata"] == '{"EncryptionMode": "FullBlob"}'
    assert headers["content-length"] == str(len(run.sent))
    assert "authorization" not in headers
    assert not [v for v in headers.values() if "Snowflake Token" in v]


@pytest.mark.parametrize(
    "case",
    [
        "other session",
        "tampered",
        "forged",
        "GET on an upload URL",
        "PUT on a download URL",
        "over the upload limit",
        "chunked",
    ],
)
def test_a_bad_upload_is_refused_from_its_head_with_nothing_sent_to_storage(
    run: Run, case: str
) -> None:
    refused, reached_storage = run.refusals[case]
    assert refused.status in (400, 403, 413), (case, refused.status, refused.body[:300])
    assert refused.message.startswith("hoopgw refused the request"), refused.message
    assert reached_storage == 0


def test_refusals_say_why(run: Run) -> None:
    messages = {case: answer.message for case, (answer, _) in run.refusals.items()}
    assert "another session" in messages["other session"]
    assert "for an upload (PUT)" in messages["GET on an upload URL"]
    assert "for a download (GET)" in messages["PUT on a download URL"]
    assert "hoopgw_upload_limit" in messages["over the upload limit"]
    assert run.refusals["over the upload limit"][0].status == 413
    assert "chunked" in messages["chunked"]


def test_the_upload_is_recorded_with_its_size_and_hash(run: Run) -> None:
    (record,) = [r for r in upload_records(run.records) if r.get("complete")]
    assert record["wire_size"] == len(run.sent) == record["declared_size"]
    assert record["sha256"] == hashlib.sha256(run.sent).hexdigest()
    assert record["status"] == 200
    assert record["file_name"] == "data.csv"
    assert record["body"] == {"size": len(run.sent), "omitted": "stage upload"}
    (answer,) = [
        r
        for r in run.records
        if r["kind"] == "response" and r.get("query_id") == record["query_id"]
    ]
    assert answer["stage_upload_count"] == 1
    stage = answer["body"]["json"]["data"]["stageInfo"]
    assert stage["presignedUrl"] == f"hoopgw:upload/{record['query_id']}/0"


def test_records_are_valid_and_hold_no_storage_url_signature_or_ticket(run: Run) -> None:
    for record in run.records:
        assert validate_record(record) == [], record
    text = json.dumps(run.records)
    assert run.storage_url not in text and "X-Goog-Signature" not in text
    ticket = gateway_path(upload_url(run.wire)).removeprefix(CHUNK_PATH_PREFIX)
    assert ticket not in text


def test_sessions_show_and_verify_count_the_upload(run: Run) -> None:
    (record,) = [r for r in upload_records(run.records) if r.get("complete")]
    session_id = record["session_id"]
    shown = CliRunner().invoke(main, ["sessions", "show", session_id, "--store", run.store])
    assert shown.exit_code == 0, shown.output
    assert "1 stage uploads, all uploaded" in shown.output
    assert "1 stage uploads, 0 of 1 uploaded" in shown.output  # the second PUT's, unused
    verified = CliRunner().invoke(main, ["verify", session_id, "--store", run.store])
    assert verified.exit_code == 0, verified.output
    assert f"query {record['query_id']}: 1 stage uploads, all uploaded" in verified.output


def test_the_real_connector_uploads_a_file_through_the_gateway(
    gateway_factory, chunking_strict, storage, oidc, policy, tmp_path
) -> None:
    source = tmp_path / "rows.csv"
    source.write_bytes(b"id,label\n" + b"".join(b"%d,row %d\n" % (n, n) for n in range(5000)))
    gateway = gateway_factory(
        chunking_strict.url, {"hoopgw_policy": str(policy)}, name="uploads-connector"
    )
    token = oidc.mint("loader", ["agents"])
    mark = storage.mark()
    with contextlib.closing(connector(gateway.url, authenticator="oauth", token=token)) as c:
        (row,) = c.cursor().execute(f"put file://{source} @~/staged /*presigned-put*/").fetchall()
    gateway.stop()
    assert row[0] == "rows.csv" and row[1] == "rows.csv.gz" and row[6] == "UPLOADED", row
    (request,) = storage.requests_since(mark)
    assert request.method == "PUT" and "authorization" not in request.headers
    stored = {name: u for name, u in storage.uploads().items() if name.endswith("/rows.csv.gz")}
    (upload,) = stored.values()
    assert upload.headers["x-goog-meta-sfc-digest"] and upload.headers["x-goog-meta-matdesc"]
    records = stored_records(gateway.workdir / "store")
    (record,) = upload_records(records)
    assert record["complete"] is True and record["file_name"] == "rows.csv.gz"
    assert record["sha256"] == hashlib.sha256(upload.body).hexdigest()
    assert record["wire_size"] == len(upload.body)
    assert not [r for r in records if r["kind"] in ("refusal", "error")]


def peak_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])


def test_a_large_upload_streams_without_the_gateway_holding_it(
    gateway_factory, chunking_strict, storage, oidc, policy
) -> None:
    size, piece = 128 * 1024 * 1024, b"z" * (1 << 20)
    gateway = gateway_factory(
        chunking_strict.url, {"hoopgw_policy": str(policy)}, name="uploads-large"
    )
    session = login(gateway.port, oidc.mint("big", ["agents"]))
    url = upload_url(query(gateway.port, session.token, PUT_SQL, "large"))
    assert gateway.proc.process is not None
    before = peak_rss_kib(gateway.proc.process.pid)
    head = f"PUT {gateway_path(url)} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {size}\r\n"
    with socket.create_connection((stack.LOOPBACK, gateway.port), timeout=120) as sock:
        sock.sendall(head.encode() + b"Connection: close\r\n\r\n")
        for _ in range(size // len(piece)):
            sock.sendall(piece)
        status_line = sock.makefile("rb").readline()
    grown = peak_rss_kib(gateway.proc.process.pid) - before
    gateway.stop()
    assert status_line.startswith(b"HTTP/1.1 200"), status_line
    assert grown < 32 * 1024, f"the gateway's peak RSS grew {grown} KiB for a 128 MiB upload"
    (record,) = [r for r in upload_records(stored_records(gateway.workdir / "store"))]
    assert record["complete"] is True and record["wire_size"] == size


def test_storage_refuses_an_upload_with_a_bad_signature(storage: CloudStorage) -> None:
    url = storage.upload_url("stage/direct/forged.csv")
    port = int(storage.url.rsplit(":", 1)[1])
    refused = send(
        port, "PUT", gateway_path(url).replace("X-Goog-Signature=", "X-Goog-Signature=0")
    )
    assert refused.status == 403
    assert "stage/direct/forged.csv" not in storage.uploads()


def test_an_expired_upload_url_is_refused_unsent(
    gateway_factory, chunking_strict, storage, oidc, policy
) -> None:
    gateway = gateway_factory(
        chunking_strict.url,
        {"hoopgw_policy": str(policy), "hoopgw_chunk_url_lifetime": 1},
        name="uploads-expiry",
    )
    session = login(gateway.port, oidc.mint("late", ["agents"]))
    url = upload_url(query(gateway.port, session.token, PUT_SQL, "expiring"))
    issued = time.time()
    stack.wait_until(lambda: time.time() > issued + 1.5, 5, "the upload URL to expire")
    mark = storage.mark()
    refused = put_file(gateway.port, url, b"late\n")
    assert refused.status == 403 and "expired" in refused.message
    assert storage.requests_since(mark) == []


def test_a_put_without_allow_stage_transfer_is_refused(
    gateway_factory, chunking_strict, oidc
) -> None:
    gateway = gateway_factory(chunking_strict.url, name="uploads-no-policy")
    session = login(gateway.port, oidc.mint("uploader", ["agents"]))
    refused = query(gateway.port, session.token, PUT_SQL, "put-refused")
    assert refused.code == "399003" and "allow_stage_transfer" in refused.message
    assert "presignedUrl" not in refused.body.decode()


def test_uploads_go_through_the_operators_storage_proxy(
    gateway_factory, chunking_strict, storage, oidc, policy
) -> None:
    with ConnectProxy() as proxy:
        gateway = gateway_factory(
            chunking_strict.url,
            {"hoopgw_policy": str(policy), "hoopgw_storage_proxy": proxy.url},
            name="uploads-via-proxy",
        )
        session = login(gateway.port, oidc.mint("proxied", ["agents"]))
        url = upload_url(query(gateway.port, session.token, PUT_SQL, "proxied"))
        body = b"id,label\n1,through the proxy\n"
        uploaded = put_file(gateway.port, url, body)
        targets = list(proxy.targets)
    assert uploaded.status == 200
    assert targets == [urllib.parse.urlsplit(storage.url).netloc]
    assert [u.body for u in storage.uploads().values() if u.body == body] == [body]


def test_storage_down_is_a_clear_error_and_on_record(
    gateway_factory, fakesnow_server, oidc, policy
) -> None:
    failing = CloudStorage().start()
    upstream = chunking_upstream(fakesnow_server.url, failing)
    try:
        gateway = gateway_factory(
            upstream.url, {"hoopgw_policy": str(policy)}, name="uploads-storage-down"
        )
        session = login(gateway.port, oidc.mint("unlucky", ["agents"]))
        url = upload_url(query(gateway.port, session.token, PUT_SQL, "down"))
        failing.revoke_signatures()
        denied = put_file(gateway.port, url, b"id\n1\n")
        failing.stop()
        broken = put_file(gateway.port, url, b"id\n1\n")
        gateway.stop()
    finally:
        upstream.stop()
    # storage's own refusal reaches the client as storage gave it
    assert denied.status == 403 and b"SignatureDoesNotMatch" in denied.body
    assert broken.status == 502
    records = stored_records(gateway.workdir / "store")
    refused, down = sorted(upload_records(records), key=lambda r: r["ts"])
    assert refused["complete"] is False and refused["status"] == 403
    assert refused["error"] == "cloud storage answered HTTP 403"
    assert down["complete"] is False
    assert "the upload did not complete" in down["error"]
    assert len([r for r in records if r["kind"] == "error"]) == 1


def test_a_client_that_aborts_an_upload_leaves_an_error_record(
    gateway_factory, chunking_strict, storage, oidc, policy
) -> None:
    gateway = gateway_factory(
        chunking_strict.url, {"hoopgw_policy": str(policy)}, name="uploads-abort"
    )
    session = login(gateway.port, oidc.mint("quitter", ["agents"]))
    url = upload_url(query(gateway.port, session.token, PUT_SQL, "abort"))
    declared, sent = 1024 * 1024, 64 * 1024
    head = (
        f"PUT {gateway_path(url)} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {declared}\r\n\r\n"
    ).encode()
    mark, started = storage.mark(), storage.started()
    with socket.create_connection((stack.LOOPBACK, gateway.port), timeout=30) as sock:
        sock.sendall(head + b"x" * sent)
        stack.wait_until(lambda: storage.started() > started, 20, "the upload to reach storage")
    # the gateway closes its storage connection once the client has gone
    stack.wait_until(lambda: storage.requests_since(mark), 20, "the broken upload to end")
    gateway.stop()
    records = stored_records(gateway.workdir / "store")
    (record,) = upload_records(records)
    assert record["complete"] is False
    assert record["error"].startswith("the upload did not complete")
    assert record["declared_size"] == declared and record["wire_size"] <= sent


def test_direct_mode_hands_out_the_storage_url_as_before(
    gateway_factory, chunking_strict, storage, oidc, policy
) -> None:
    gateway = gateway_factory(
        chunking_strict.url,
        {"hoopgw_policy": str(policy), "hoopgw_result_chunks": "direct"},
        name="uploads-direct",
    )
    session = login(gateway.port, oidc.mint("direct", ["agents"]))
    url = upload_url(query(gateway.port, session.token, PUT_SQL, "direct"))
    assert url.startswith(storage.url) and "X-Goog-Signature" in url
