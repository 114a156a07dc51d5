"""Deletion and rewriting of recordings, end to end: real gateways, the real connector.

A gateway (`mitmdump -s addons/gateway.py`, file store) records sessions and is
stopped cleanly or killed; copies of its store are then tampered with as
someone with write access to the store could, and `hoopgw verify` must say
what happened: intact and stopped cleanly, a cut tail, a missing segment, a
rewritten session, or a crash with nothing missing up to the last checkpoint.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import boto3
import orjson
import pytest
import snowflake.connector
from click.testing import CliRunner, Result

from hoopgw.cli.main import main
from hoopgw.recorder.catalog import Archive, parse_segment_key, summary_key
from hoopgw.recorder.checkpoints import (
    SPOOL_PUBLIC_KEY_FILE,
    load_signing_key,
    new_checkpoint_key,
    parse_checkpoint_key,
    public_key_pem,
)
from hoopgw.recorder.store import LocalStore
from tests import stack
from tests.tampering import rewrite_session

DEADLINE = 30.0
KEY_ENV = "HOOPGW_E2E_CHECKPOINT_KEY"


def hoopgw(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def record_sessions(gateway, connect, oidc, count: int, tag: str) -> None:
    for number in range(count):
        connection = connect(gateway, oidc.mint(f"{tag}-{number}", ["agents"]))
        cursor = connection.cursor()
        for statement in range(3):
            cursor.execute(f"select {statement} as {tag}_{number}")
        connection.close()


def ended_sessions(store: LocalStore) -> list[str]:
    """Callers' session ids whose summary says they ended, oldest first.

    Refusal windows (`refusal_summary` records of requests nobody verified) are
    sessions of their own that end at once; they are not the callers' sessions.
    """
    ended = []
    for key in store.list("summaries/"):
        summary = orjson.loads(store.get(key))
        if summary.get("end_ts") is not None and summary.get("end_reason") != "refusal_window":
            ended.append(summary["session_id"])
    return sorted(ended)


def newest_checkpoint(store: LocalStore) -> dict | None:
    keys = [key for key in store.list("checkpoints/") if parse_checkpoint_key(key)]
    return orjson.loads(store.get(max(keys))) if keys else None


def segments_of(store: LocalStore, session_id: str) -> list[str]:
    return [key for key in store.list("sessions/") if session_id in key]


@pytest.fixture(scope="module")
def clean_run(gateway_factory, fakesnow_server, oidc, connect_module, workdir: Path):
    """Three sessions through a gateway with a configured key, then a clean stop."""
    seed = new_checkpoint_key()
    public = workdir / f"checkpoint-{uuid.uuid4().hex[:6]}.pub"
    public.write_text(public_key_pem(load_signing_key(seed.encode())))
    name = f"checkpoints-{uuid.uuid4().hex[:6]}"
    gateway = gateway_factory(
        fakesnow_server.url,
        {"hoopgw_checkpoint_key": f"env:{KEY_ENV}"},
        env={KEY_ENV: seed},
        name=name,
    )
    store = LocalStore(workdir / name / "store")
    record_sessions(gateway, connect_module, oidc, 3, "clean")
    stack.wait_until(lambda: len(ended_sessions(store)) == 3, DEADLINE, "three ended sessions")
    assert gateway.stop() == 0
    assert seed not in gateway.log()
    return store, public, ended_sessions(store)


@pytest.fixture(scope="module")
def connect_module():
    """`connect` for module fixtures (`record_sessions` closes what it opens)."""

    def _connect(gateway, token):
        host, port = gateway.url.split("://", 1)[1].rsplit(":", 1)
        connection = snowflake.connector.connect(
            account="hoopgw",
            user="agent",
            host=host,
            port=int(port),
            protocol="http",
            authenticator="oauth",
            token=token,
            login_timeout=30,
            network_timeout=60,
        )
        return connection

    return _connect


def copy_of(store: LocalStore, tmp_path: Path) -> tuple[LocalStore, str]:
    target = tmp_path / "copy"
    shutil.copytree(store.root, target)
    return LocalStore(target), f"file:{target}"


def test_a_cleanly_stopped_gateway_verifies_intact_and_stopped_cleanly(clean_run) -> None:
    store, public, sessions = clean_run
    url = f"file:{store.root}"

    whole = hoopgw("verify", "--all", "--store", url, "--public-key", str(public))
    one = hoopgw("verify", sessions[0], "--store", url, "--public-key", str(public))
    unsigned = hoopgw("verify", sessions[0], "--store", url)

    assert whole.exit_code == 0, whole.output
    assert "archive: intact (3 session(s), 0 broken, 1 writer(s))" in whole.stdout
    assert "stopped cleanly" in whole.stdout and "nothing missing up to it" in whole.stdout
    assert one.exit_code == 0 and f"session {sessions[0]}: intact" in one.stdout
    assert "stopped cleanly" in one.stdout and "not checked" not in one.stdout
    assert unsigned.exit_code == 0 and "not checked: checkpoint signatures" in unsigned.stdout


def test_a_deleted_tail_segment_and_summary_is_reported_as_a_cut_tail(clean_run, tmp_path):
    store, public, sessions = clean_run
    copy, url = copy_of(store, tmp_path)
    last = sessions[-1]
    [segment] = segments_of(copy, last)
    writer = parse_segment_key(segment).writer
    copy.delete(segment)
    copy.delete(summary_key(last, writer))

    one = hoopgw("verify", last, "--store", url, "--public-key", str(public))
    whole = hoopgw(
        "verify", "--all", "--store", url, "--public-key", str(public), "--format", "json"
    )

    assert one.exit_code == 1, one.output
    assert f"session {last}: BROKEN: tail cut" in one.stdout
    assert "segment missing: records seq 0.." in one.stdout and segment in one.stdout
    report = orjson.loads(whole.stdout)
    assert whole.exit_code == 1 and report["ok"] is False
    cut = [p for p in report["problems"] if p["kind"] == "cut_tail"]
    assert cut and last in cut[0]["message"] and "tail cut: links" in cut[0]["message"]


def test_a_deleted_middle_segment_is_reported_with_its_seq(clean_run, tmp_path) -> None:
    store, public, sessions = clean_run
    copy, url = copy_of(store, tmp_path)
    middle = sessions[1]
    [segment] = segments_of(copy, middle)
    copy.delete(segment)

    whole = hoopgw("verify", "--all", "--store", url, "--public-key", str(public))
    as_json = hoopgw(
        "verify", middle, "--store", url, "--public-key", str(public), "--format", "json"
    )

    assert whole.exit_code == 1, whole.output
    assert "BROKEN" in whole.stdout
    missing = [line for line in whole.stdout.splitlines() if "are gone" in line and middle in line]
    assert missing and "tail cut" not in missing[0], whole.stdout
    problems = orjson.loads(as_json.stdout)["problems"]
    assert any(p["segment"] == segment and p["seq"] == 0 for p in problems), problems


def test_a_consistently_rewritten_session_is_reported_as_rewritten(clean_run, tmp_path) -> None:
    store, public, sessions = clean_run
    copy, url = copy_of(store, tmp_path)
    target = sessions[0]
    writer = parse_segment_key(segments_of(copy, target)[0]).writer
    [statement] = [
        record["sql"]
        for record in Archive(copy).read_session(target)
        if record.get("kind") == "request" and "select 1 as clean" in (record.get("sql") or "")
    ]
    assert rewrite_session(copy, Archive(copy), target, writer, statement) == 1

    stream_only = Archive(copy).verify_session(target, None, {})  # the old check: fooled
    result = hoopgw("verify", target, "--store", url, "--public-key", str(public))

    assert stream_only.ok
    assert result.exit_code == 1, result.output
    assert f"session {target}: BROKEN: rewritten" in result.stdout
    assert "segment rewritten" in result.stdout


def test_a_killed_gateway_is_not_stopped_cleanly_with_nothing_missing(
    gateway_factory, fakesnow_server, oidc, connect, workdir: Path
) -> None:
    name = f"checkpoints-kill-{uuid.uuid4().hex[:6]}"
    gateway = gateway_factory(fakesnow_server.url, {"hoopgw_checkpoint_interval": 1}, name=name)
    assert "hoopgw_checkpoint_key is unset" in gateway.log()
    public = workdir / name / "spool" / SPOOL_PUBLIC_KEY_FILE
    store = LocalStore(workdir / name / "store")
    record_sessions(gateway, connect, oidc, 2, "killed")
    stack.wait_until(lambda: len(ended_sessions(store)) == 2, DEADLINE, "two ended sessions")

    def covered() -> bool:
        newest = newest_checkpoint(store)
        segments = [key for key in store.list("sessions/") if parse_segment_key(key)]
        return newest is not None and (newest["head"] or {}).get("n") == len(segments) - 1

    stack.wait_until(covered, DEADLINE, "a checkpoint covering every segment")
    gateway.kill()

    result = hoopgw("verify", "--all", "--store", f"file:{store.root}", "--public-key", str(public))

    assert result.exit_code == 0, result.output
    assert "not stopped cleanly" in result.stdout
    assert "nothing missing up to it" in result.stdout


def test_checkpoint_key_command_makes_a_key_and_its_public_key(tmp_path: Path) -> None:
    public = tmp_path / "checkpoint.pub"

    made = hoopgw("checkpoint-key", "--public-key-out", str(public))
    seed = made.stdout.strip()
    again = CliRunner().invoke(
        main, ["checkpoint-key", "--public-of", f"env:{KEY_ENV}"], env={KEY_ENV: seed}
    )
    wrong = CliRunner().invoke(
        main, ["checkpoint-key", "--public-of", f"env:{KEY_ENV}"], env={KEY_ENV: "x" + seed}
    )

    assert made.exit_code == 0 and public.read_text() == public_key_pem(
        load_signing_key(seed.encode())
    )
    assert again.exit_code == 0 and again.stdout == public.read_text()
    assert wrong.exit_code == 2 and seed not in wrong.output
    assert hoopgw("checkpoint-key").stdout.strip() != seed


def test_a_cut_tail_in_s3_is_reported(
    gateway_factory, fakesnow_server, oidc, connect, moto_s3, s3_bucket, workdir: Path
) -> None:
    name = f"checkpoints-s3-{uuid.uuid4().hex[:6]}"
    url = f"s3://{s3_bucket}/audit"
    gateway = gateway_factory(
        fakesnow_server.url, {"hoopgw_store": url, "hoopgw_s3_endpoint_url": moto_s3}, name=name
    )
    public = workdir / name / "spool" / SPOOL_PUBLIC_KEY_FILE
    s3 = boto3.client("s3", endpoint_url=moto_s3)

    def keys() -> list[str]:
        listed = s3.list_objects_v2(Bucket=s3_bucket, Prefix="audit/")
        return [item["Key"] for item in listed.get("Contents", [])]

    def ended() -> list[str]:
        summaries = [key for key in keys() if key.startswith("audit/summaries/")]
        bodies = [
            orjson.loads(s3.get_object(Bucket=s3_bucket, Key=k)["Body"].read()) for k in summaries
        ]
        return sorted(body["session_id"] for body in bodies if body.get("end_ts") is not None)

    record_sessions(gateway, connect, oidc, 2, "s3")
    stack.wait_until(lambda: len(ended()) == 2, DEADLINE, "two ended sessions in S3")
    assert gateway.stop() == 0
    last = ended()[-1]
    for key in keys():
        if last in key:
            s3.delete_object(Bucket=s3_bucket, Key=key)  # its segment and its summary

    args = ["--store", url, "--s3-endpoint-url", moto_s3, "--public-key", str(public)]
    one = hoopgw("verify", last, *args)
    whole = hoopgw("verify", "--all", *args)

    assert one.exit_code == 1 and f"session {last}: BROKEN: tail cut" in one.stdout, one.output
    assert whole.exit_code == 1 and "tail cut: links" in whole.stdout, whole.output
    assert "stopped cleanly" in whole.stdout
