"""The spool's S3 store in a helper process (recorder/store_process.py), against moto's server."""

from __future__ import annotations

import os
import signal
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from hoopgw.recorder.catalog import segment_key, summary_key
from hoopgw.recorder.helper_process import BACKGROUND_NICE
from hoopgw.recorder.ids import new_session_id, new_writer_id
from hoopgw.recorder.spool import Spool, SpoolConfig
from hoopgw.recorder.store import KeyNotFound, S3Store, StoreError
from hoopgw.recorder.store_process import StoreHelperFailed, StoreProcess

DEADLINE = 30.0
SECRET_VARIABLE = "HOOPGW_TEST_UPSTREAM_PASSWORD"


@pytest.fixture
def store(moto_s3: str, s3_bucket: str) -> Iterator[StoreProcess]:
    process = StoreProcess(f"s3://{s3_bucket}/audit", s3_endpoint_url=moto_s3)
    yield process
    process.close()


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def test_every_call_is_made_by_a_child_process_and_lands_in_the_bucket(
    store: StoreProcess, moto_s3: str, s3_bucket: str
) -> None:
    version = store.put("segments/a.zst", b"first")
    pid = store.helper_pid()
    direct = S3Store(s3_bucket, "audit", endpoint_url=moto_s3)

    assert pid is not None and pid != os.getpid() and parent_of(pid) == os.getpid()
    assert direct.get("segments/a.zst") == b"first" and store.get("segments/a.zst") == b"first"
    assert (
        version
        == boto3.client("s3", endpoint_url=moto_s3).head_object(
            Bucket=s3_bucket, Key="audit/segments/a.zst"
        )["ETag"]
    )
    assert store.exists("segments/a.zst") and not store.exists("segments/b.zst")
    assert store.put_new("segments/b.zst", b"second") and not store.put_new("segments/b.zst", b"x")
    assert list(store.list("segments/")) == ["segments/a.zst", "segments/b.zst"]
    store.delete("segments/a.zst")
    assert list(store.list("segments/")) == ["segments/b.zst"]
    assert store.helper_pid() == pid and store.helpers_started == 1


def test_the_stores_own_failures_keep_their_kind_and_the_helper(
    store: StoreProcess, moto_s3: str
) -> None:
    store.put("present", b"x")
    pid = store.helper_pid()
    elsewhere = StoreProcess(f"s3://no-such-{uuid.uuid4().hex[:8]}", s3_endpoint_url=moto_s3)

    with pytest.raises(KeyNotFound, match="missing/key"):
        store.get("missing/key")
    with pytest.raises(ValueError, match="invalid object key"):
        store.put("../escape", b"x")
    try:
        with pytest.raises(StoreError, match="NoSuchBucket") as raised:
            elsewhere.put("key", b"x")
    finally:
        elsewhere.close()

    assert type(raised.value) is StoreError  # the store's answer, not a failed helper
    assert store.helper_pid() == pid and store.get("present") == b"x"


def test_a_bad_key_is_refused_before_any_helper_starts(moto_s3: str, s3_bucket: str) -> None:
    store = StoreProcess(f"s3://{s3_bucket}", s3_endpoint_url=moto_s3)
    for key in ("../escape", "/absolute", "a//b", ""):
        with pytest.raises(ValueError, match="invalid object key"):
            store.put(key, b"x")
    assert store.helper_pid() is None and store.helpers_started == 0


def test_a_helper_that_dies_fails_the_call_under_way_and_is_replaced(store: StoreProcess) -> None:
    store.put("before", b"1")
    first = store.helper_pid()
    assert first is not None
    os.kill(first, signal.SIGKILL)

    with pytest.raises(StoreHelperFailed, match=r"exited \(status -9\)"):
        store.get("before")
    assert store.helper_pid() is None and not alive(first)
    assert store.get("before") == b"1"
    assert store.helper_pid() not in (None, first) and store.helpers_started == 2


def test_a_helper_that_stops_answering_is_killed_at_the_call_timeout(
    moto_s3: str, s3_bucket: str
) -> None:
    store = StoreProcess(f"s3://{s3_bucket}", s3_endpoint_url=moto_s3, call_timeout=1.0)
    try:
        store.put("k", b"v")
        stuck = store.helper_pid()
        assert stuck is not None
        os.kill(stuck, signal.SIGSTOP)

        with pytest.raises(StoreHelperFailed, match="did not put k within 1 s"):
            store.put("k", b"w")
        assert not alive(stuck)
        assert store.get("k") in (b"v", b"w")
    finally:
        store.close()


def test_the_helper_runs_below_the_gateway_s_cpu_priority(store: StoreProcess) -> None:
    """Its uploads are work nobody waits on: on a busy host the event loop goes first.
    Only the helper is lowered; the gateway's own threads keep their priority."""
    store.put("k", b"v")
    pid = store.helper_pid()
    assert pid is not None
    gateway = os.getpriority(os.PRIO_PROCESS, os.getpid())
    assert os.getpriority(os.PRIO_PROCESS, pid) == min(gateway + BACKGROUND_NICE, 19)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == gateway


def test_the_helper_gets_the_sdks_settings_and_none_of_the_gateways_secrets(
    moto_s3: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_VARIABLE, "not-for-the-helper")
    monkeypatch.setenv("HTTPS_PROXY", "")
    store = StoreProcess(f"s3://{s3_bucket}", s3_endpoint_url=moto_s3)
    try:
        store.put("k", b"v")
        pid = store.helper_pid()
        environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    finally:
        store.close()

    names = {entry.partition(b"=")[0].decode() for entry in environment if entry}
    assert SECRET_VARIABLE not in names and b"not-for-the-helper" not in b"\0".join(environment)
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "HTTPS_PROXY"} <= names


def test_the_helper_outlives_a_sigterm_to_the_group_and_ends_at_close(
    store: StoreProcess,
) -> None:
    """A service manager stops the whole group with SIGTERM: the spool's last PUTs at
    shutdown still go through the helper, which exits when the gateway closes it."""
    store.put("k", b"v")
    pid = store.helper_pid()
    assert pid is not None
    os.kill(pid, signal.SIGTERM)

    assert store.put("after-sigterm", b"w") is not None and store.helper_pid() == pid
    store.close()
    assert store.helper_pid() is None and not alive(pid)


def test_a_spool_ships_segments_summaries_and_checkpoints_through_the_helper(
    tmp_path: Path, moto_s3: str, s3_bucket: str
) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    store = StoreProcess(f"s3://{s3_bucket}/audit", s3_endpoint_url=moto_s3)
    session, writer = new_session_id(), new_writer_id()
    spool = Spool(
        SpoolConfig(
            tmp_path / "spool",
            writer_id=writer,
            max_bytes=1 << 30,
            checkpoint_key=Ed25519PrivateKey.generate(),
        ),
        store,
    )
    try:
        with spool:
            for number in range(3):
                spool.append({"kind": "request", "session_id": session, "ts": 1.0 + number}).result(
                    DEADLINE
                )
            spool.end_session(session).result(DEADLINE)
            assert spool.flush(DEADLINE)
            helper = store.helper_pid()
    finally:
        store.close()

    listed = boto3.client("s3", endpoint_url=moto_s3).list_objects_v2(
        Bucket=s3_bucket, Prefix="audit/"
    )
    keys = [item["Key"] for item in listed.get("Contents", [])]
    assert helper is not None and not alive(helper)
    assert f"audit/{segment_key(session, writer, 0)}" in keys, keys
    assert f"audit/{summary_key(session, writer)}" in keys, keys
    assert any(key.startswith("audit/checkpoints/") for key in keys), keys
