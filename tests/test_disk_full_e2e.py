"""A real gateway whose spool disk fills and frees: statements and logins refused with
399002 while it is full and none reaching Snowflake, then served again without a
restart, and every statement acknowledged before the disk filled in the store, verified."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from snowflake.connector import DatabaseError

from hoopgw.recorder.catalog import Archive
from hoopgw.recorder.index import ArchiveIndex
from hoopgw.recorder.store import LocalStore
from tests import small_fs, stack

DEADLINE = 30.0
QUERY_PATH = "/queries/v1/query-request"
DISK_FULL = "the recording spool's disk is full"


def statements_received(strict, mark: int) -> list[str]:
    return [
        json.loads(r.body)["sqlText"]
        for r in strict.received_since(mark)
        if r.method == "POST" and r.path.partition("?")[0] == QUERY_PATH
    ]


def assert_refused(exc: DatabaseError) -> None:
    assert exc.errno == 399002, exc
    assert "hoopgw cannot record this request, so it was not run" in exc.msg
    assert DISK_FULL in exc.msg


def test_a_full_spool_disk_is_survived_without_a_restart(
    gateway_factory, strict, oidc, connect, tmp_path: Path
) -> None:
    with small_fs.mounted_tmpfs(tmp_path / "small") as disk:
        name = f"diskfull-{uuid.uuid4().hex[:8]}"
        gateway = gateway_factory(strict.url, {"hoopgw_spool_dir": str(disk / "spool")}, name=name)
        try:
            tag = f"full-{uuid.uuid4().hex[:8]}"
            acknowledged: list[str] = []
            mark = strict.mark()
            before = connect(gateway, oidc.mint("before-full", ["agents"]))
            cursor = before.cursor()
            for number in range(3):
                sql = f"select '{tag}-a-{number}'"
                assert cursor.execute(sql).fetchone() == (f"{tag}-a-{number}",)
                acknowledged.append(sql)

            small_fs.fill(disk)
            refused: DatabaseError | None = None
            for number in range(500):
                sql = f"select '{tag}-b-{number}'"
                try:
                    assert cursor.execute(sql).fetchone() == (f"{tag}-b-{number}",)
                except DatabaseError as exc:
                    refused = exc
                    break
                acknowledged.append(sql)
            assert refused is not None, "the full disk was never noticed"
            assert_refused(refused)
            refused_sql = [sql]
            for number in range(3):
                sql = f"select '{tag}-c-{number}'"
                with pytest.raises(DatabaseError) as during:
                    cursor.execute(sql)
                assert_refused(during.value)
                refused_sql.append(sql)
            logins_before = len(strict.logins())
            with pytest.raises(DatabaseError) as login:
                connect(gateway, oidc.mint("during-full", ["agents"]))
            assert login.value.errno == 399002 and DISK_FULL in login.value.msg
            assert len(strict.logins()) == logins_before, "a refused login reached Snowflake"
            assert statements_received(strict, mark) == acknowledged, "refused ones went upstream"
            assert "spool disk full" in gateway.log()

            small_fs.free(disk)
            recovered = "spool disk writable again"
            stack.wait_until(lambda: recovered in gateway.log(), DEADLINE, "the spool to recover")
            sql = f"select '{tag}-d-0'"
            assert cursor.execute(sql).fetchone() == (f"{tag}-d-0",), "the old session goes on"
            acknowledged.append(sql)
            after = connect(gateway, oidc.mint("after-full", ["agents"]))
            sql = f"select '{tag}-d-1'"
            assert after.cursor().execute(sql).fetchone() == (f"{tag}-d-1",)
            acknowledged.append(sql)
            before.close()
            after.close()
        finally:
            assert gateway.stop() == 0, gateway.log()[-3000:]

    archive = Archive(LocalStore(gateway.workdir / "store"))
    stored: list[str] = []
    for summary in ArchiveIndex(archive, store_url="").list_sessions():
        report = archive.verify_session(summary.session_id)
        assert report.ok, report.to_dict()
        stored += [
            r["sql"]
            for r in archive.read_session(summary.session_id)
            if r["kind"] == "request" and tag in (r.get("sql") or "")
        ]
    assert sorted(stored) == sorted(acknowledged)
    assert not set(stored) & set(refused_sql)
    assert statements_received(strict, mark) == acknowledged
