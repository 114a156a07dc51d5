"""Recording on a spool whose disk fills and frees: every request refused with 399002
while it is full, none forwarded, and requests recorded again once it has room."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hoopgw.addons.recording import Recording
from tests import small_fs, stack
from tests.addons import LOGIN_PATH, error_of
from tests.addons.test_recording import RECORDING_CODE, authenticated, recording, records
from tests.bodies import login_body, query_body

DEADLINE = 20.0
DISK_FULL = "the recording spool's disk is full"


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with small_fs.mounted_tmpfs(tmp_path / "small") as mountpoint:
        yield mountpoint


def wait_for_state(addon: Recording, state: str) -> None:
    spool = addon.spool
    assert spool is not None
    stack.wait_until(lambda: spool.stats().state == state, DEADLINE, f"spool state {state}")


async def test_a_full_spool_disk_refuses_every_request_until_it_has_room(
    tmp_path: Path, disk: Path
) -> None:
    with recording(tmp_path, hoopgw_spool_dir=str(disk / "spool")) as addon:
        before, before_state = authenticated(body=query_body("select 'before'"))
        await addon.request(before)
        assert before.response is None and "recording" in before_state.passed

        small_fs.fill(disk)
        refused_sql = None
        for number in range(2000):
            flow, state = authenticated(body=query_body(f"select 'during {number}'"))
            await addon.request(flow)
            if flow.response is not None:
                refused_sql = f"select 'during {number}'"
                break
            assert "recording" in state.passed
        assert refused_sql is not None, "the full disk was never noticed"
        assert state.refusal is not None and state.refusal.source == "recording"
        assert "recording" not in state.passed, "a refused request must not be forwarded"
        assert error_of(flow)["code"] == RECORDING_CODE
        assert DISK_FULL in error_of(flow)["message"]
        login, login_state = authenticated(LOGIN_PATH, login_body("t"))
        await addon.request(login)
        assert login_state.answered and DISK_FULL in error_of(login)["message"]

        small_fs.free(disk)
        wait_for_state(addon, "ok")
        after, after_state = authenticated(body=query_body("select 'after'"))
        await addon.request(after)
        assert after.response is None and "recording" in after_state.passed
        assert addon.spool is not None and addon.spool.stats().recoveries == 1
    stored = [r.get("sql") for r in records(tmp_path) if r["kind"] == "request"]
    assert stored[0] == "select 'before'" and stored[-1] == "select 'after'"
    assert refused_sql not in stored
