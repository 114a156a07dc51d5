"""The S3 store against a real moto server: checksums, verification, outages."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from hoopgw.recorder.catalog import Archive
from hoopgw.recorder.ids import new_session_id, new_writer_id
from hoopgw.recorder.index import ArchiveIndex
from hoopgw.recorder.spool import Spool, SpoolConfig
from hoopgw.recorder.store import KeyNotFound, S3Store, StoreError, open_store

DEADLINE = 20.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _moto_server_command() -> str:
    candidate = Path(sys.executable).parent / "moto_server"
    return str(candidate) if candidate.exists() else "moto_server"


@pytest.fixture(scope="module")
def moto_server() -> Iterator[tuple[subprocess.Popen, str]]:
    """A moto S3 server on a free loopback port, with boto3 pointed at fake credentials."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            env.delenv(name, raising=False)
        port = _free_port()
        process = subprocess.Popen(
            [_moto_server_command(), "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        endpoint = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + DEADLINE
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"moto_server exited with {process.returncode}")
                try:
                    with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                        break
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    if time.monotonic() > deadline:
                        raise RuntimeError("moto_server did not become ready") from None
                    time.sleep(0.05)
            yield process, endpoint
        finally:
            process.send_signal(signal.SIGCONT)
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def moto_endpoint(moto_server: tuple[subprocess.Popen, str]) -> str:
    return moto_server[1]


@pytest.fixture
def bucket(moto_endpoint: str) -> str:
    name = f"rec-{new_writer_id()}"
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=name)
    return name


def test_put_get_list_delete_under_a_prefix(moto_endpoint: str, bucket: str) -> None:
    store = S3Store(bucket, "archive/prod/", endpoint_url=moto_endpoint)
    store.put("sessions/a/1.bin", b"one")
    store.put("sessions/a/2.bin", b"two")
    store.put("summaries/a.json", b"{}")
    assert store.get("sessions/a/2.bin") == b"two"
    assert list(store.list("sessions/")) == ["sessions/a/1.bin", "sessions/a/2.bin"]
    assert list(store.list("")) == ["sessions/a/1.bin", "sessions/a/2.bin", "summaries/a.json"]
    raw = boto3.client("s3", endpoint_url=moto_endpoint)
    listed = raw.list_objects_v2(Bucket=bucket)["Contents"]
    assert sorted(item["Key"] for item in listed) == [
        "archive/prod/sessions/a/1.bin",
        "archive/prod/sessions/a/2.bin",
        "archive/prod/summaries/a.json",
    ]
    assert store.exists("sessions/a/1.bin") and not store.exists("sessions/a/3.bin")
    store.delete("sessions/a/1.bin")
    with pytest.raises(KeyNotFound):
        store.get("sessions/a/1.bin")


def test_put_sends_a_sha256_checksum(moto_endpoint: str, bucket: str) -> None:
    store = S3Store(bucket, "", endpoint_url=moto_endpoint)
    data = os.urandom(5000)
    store.put("k.bin", data)
    head = boto3.client("s3", endpoint_url=moto_endpoint).head_object(
        Bucket=bucket, Key="k.bin", ChecksumMode="ENABLED"
    )
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(data).digest()).decode()


def test_failures_are_store_errors_with_a_short_message(moto_endpoint: str) -> None:
    store = S3Store("no-such-bucket", "p", endpoint_url=moto_endpoint)
    with pytest.raises(StoreError, match=r"S3 write of k failed \(NoSuchBucket"):
        store.put("k", b"x")
    with pytest.raises(StoreError, match="NoSuchBucket"):
        list(store.list(""))


def test_open_store_s3_url(moto_endpoint: str, bucket: str) -> None:
    store = open_store(f"s3://{bucket}/recordings", s3_endpoint_url=moto_endpoint)
    store.put("x/y", b"z")
    raw = boto3.client("s3", endpoint_url=moto_endpoint)
    assert raw.get_object(Bucket=bucket, Key="recordings/x/y")["Body"].read() == b"z"


def _records(session_id: str, count: int) -> list[dict]:
    records: list[dict] = [
        {
            "kind": "session_start",
            "session_id": session_id,
            "ts": time.time(),
            "caller": {"subject": "s", "email": "s@example.com", "groups": ["g"], "role": "R"},
        }
    ]
    for number in range(count):
        records.append(
            {
                "kind": "request",
                "session_id": session_id,
                "ts": time.time(),
                "flow_id": f"f{number}",
                "method": "POST",
                "path": "/queries/v1/query-request",
                "sql": f"select {number}",
            }
        )
    records.append(
        {"kind": "session_end", "session_id": session_id, "ts": time.time(), "reason": "logout"}
    )
    return records


def test_spool_to_s3_and_back(moto_endpoint: str, bucket: str, tmp_path: Path) -> None:
    store = S3Store(bucket, "hoopgw", endpoint_url=moto_endpoint)
    config = SpoolConfig(tmp_path / "spool", writer_id=new_writer_id(), max_bytes=1 << 30)
    spool = Spool(config, store)
    spool.start()
    session_id = new_session_id()
    try:
        for record in _records(session_id, 30):
            future = spool.append(record)
        future.result(DEADLINE)
        assert spool.flush(DEADLINE)
    finally:
        spool.close()
    archive = Archive(store)
    [summary] = ArchiveIndex(archive, store_url="").list_sessions()
    assert summary.session_id == session_id and summary.statements == 30
    assert summary.ended
    records = archive.read_session(session_id)
    assert [r.get("sql") for r in records[1:-1]] == [f"select {n}" for n in range(30)]
    assert archive.verify_session(session_id).ok


def test_spool_rides_out_a_hung_s3_server(
    moto_server: tuple[subprocess.Popen, str], bucket: str, tmp_path: Path
) -> None:
    process, moto_endpoint = moto_server
    store = S3Store(
        bucket,
        "outage",
        endpoint_url=moto_endpoint,
        max_attempts=1,
        connect_timeout=0.5,
        read_timeout=0.5,
    )
    spool = Spool(
        SpoolConfig(
            tmp_path / "spool",
            writer_id=new_writer_id(),
            max_bytes=1 << 30,
            retry_initial=0.05,
            retry_max=0.2,
        ),
        store,
    )
    spool.start()
    sessions = [new_session_id() for _ in range(2)]
    process.send_signal(signal.SIGSTOP)
    try:
        for session_id in sessions:
            for record in _records(session_id, 20):
                future = spool.append(record)
            future.result(DEADLINE)
        deadline = time.monotonic() + DEADLINE
        while spool.stats().upload_failures < 1:
            assert time.monotonic() < deadline, "uploads did not fail while S3 hung"
            time.sleep(0.02)
        assert spool.stats().pending_uploads >= 1
    finally:
        process.send_signal(signal.SIGCONT)
    try:
        assert spool.flush(DEADLINE)
        assert spool.stats().spool_bytes == 0
    finally:
        spool.close()
    archive = Archive(store)
    for session_id in sessions:
        records = archive.read_session(session_id)
        assert [r["seq"] for r in records] == list(range(22))
        assert archive.verify_session(session_id).ok


def test_sdk_debug_records_are_not_made_unless_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    """mitmproxy puts the root logger at DEBUG and hands every record to its event loop;
    botocore's per-call debug records would reach it in bursts at each upload."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    botocore_logger, urllib3_logger = logging.getLogger("botocore"), logging.getLogger("urllib3")
    before = botocore_logger.level, urllib3_logger.level, logging.getLogger().level
    try:
        logging.getLogger().setLevel(logging.DEBUG)
        botocore_logger.setLevel(logging.NOTSET)
        urllib3_logger.setLevel(logging.DEBUG)  # an operator's choice
        S3Store("bucket", "p", endpoint_url="http://127.0.0.1:9")
        assert not logging.getLogger("botocore.hooks").isEnabledFor(logging.DEBUG)
        assert logging.getLogger("botocore.hooks").isEnabledFor(logging.INFO)
        assert urllib3_logger.level == logging.DEBUG
    finally:
        botocore_logger.setLevel(before[0])
        urllib3_logger.setLevel(before[1])
        logging.getLogger().setLevel(before[2])
