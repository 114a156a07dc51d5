"""scripts/loop_cpu.py charges the loop thread's CPU to what ran on it, in bare mitmdump and in
the gateway alike (`bench_saturation.py --loop-cpu`).

Not a benchmark: nothing here is timed. Real mitmdump processes load the probe;
the checks are on what it counts: every answered request, CPU charged to
mitmproxy's tasks, the gateway's own work in rows of its own only in the
gateway, and rows that never add up to more than the thread's CPU (no work
counted twice).
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from scripts import bench, loop_cpu
from scripts.bench_saturation import LoopWindow
from tests import stack
from tests.conftest import Connect, GatewayFactory, Upstream

PROBE = bench.REPO_ROOT / "scripts" / "loop_cpu.py"
MITMPROXY_TASKS = frozenset(loop_cpu.TASK_KINDS.values())


def charged(window: LoopWindow) -> float:
    return sum(spent for row, spent in window.rows.items() if row != loop_cpu.COLLECTOR)


class ManualClock:
    """The probe's CPU clock, moved by hand: what is charged where is then exact."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> ManualClock:
    manual = ManualClock()
    monkeypatch.setattr(loop_cpu, "cpu", manual)
    return manual


def test_work_with_a_row_of_its_own_inside_a_hook_is_taken_out_of_the_hooks_row(
    clock: ManualClock,
) -> None:
    totals = loop_cpu.Totals()

    def answers() -> None:
        clock.now += 2.0

    def hook(_: object) -> None:
        clock.now += 1.0
        answers_start = loop_cpu.cpu()
        answers()
        totals.add_own(loop_cpu.GATEWAY_ANSWERS, loop_cpu.cpu() - answers_start)
        totals.hook_step(lambda _: setattr(clock, "now", clock.now + 4.0), None)  # nested
        clock.now += 0.5

    totals.hook_step(hook, None)
    assert totals.rows == {loop_cpu.GATEWAY_HOOKS: 5.5, loop_cpu.GATEWAY_ANSWERS: 2.0}
    assert totals.gateways_own == 7.5


def test_an_awaited_hook_is_charged_its_steps_not_its_wait(clock: ManualClock) -> None:
    totals = loop_cpu.Totals()

    async def hook(durable: asyncio.Future[None]) -> str:
        clock.now += 1.0
        await durable  # the WAL's fsync, another task's work: not this hook's CPU
        clock.now += 2.0
        return "answered"

    async def run() -> str:
        durable = asyncio.get_running_loop().create_future()

        def meanwhile() -> None:
            clock.now += 100.0
            durable.set_result(None)

        asyncio.get_running_loop().call_soon(meanwhile)
        return await loop_cpu.StepClock(hook(durable), totals)

    assert asyncio.run(run()) == "answered"
    assert totals.rows == {loop_cpu.GATEWAY_HOOKS: 3.0}


def test_bare_mitmdump_s_loop_thread_is_charged_to_mitmproxy_s_tasks(
    tmp_path: Path, fakesnow_server: Upstream
) -> None:
    totals = tmp_path / "bare.json"
    bare, port = bench.start_bare_mitmdump(
        tmp_path,
        fakesnow_server.url,
        extra_scripts=[PROBE],
        extra_env={loop_cpu.ENVIRONMENT: str(totals)},
    )
    try:
        start = LoopWindow.read(totals)
        for _ in range(5):
            try:
                urllib.request.urlopen(f"http://{stack.LOOPBACK}:{port}/no-such-page", timeout=30)
            except urllib.error.HTTPError as answer:  # fakesnow's 404, through mitmdump
                assert answer.code == 404
        window = LoopWindow.read(totals, written_after=time.time()).since(start)
    finally:
        bare.stop()
    assert window.statements == 5
    assert MITMPROXY_TASKS & {row for row, spent in window.rows.items() if spent > 0}
    assert not set(loop_cpu.GATEWAY_ROWS) & set(window.rows)
    assert 0 < charged(window) <= window.thread_cpu


def test_the_gateway_s_own_work_has_rows_of_its_own_that_overlap_nothing(
    gateway_factory: GatewayFactory,
    fakesnow_server: Upstream,
    connect: Connect,
    agent_token: str,
    tmp_path: Path,
) -> None:
    totals = tmp_path / "gateway.json"
    gateway = gateway_factory(
        fakesnow_server.url,
        env={loop_cpu.ENVIRONMENT: str(totals)},
        extra_scripts=[PROBE],
        name="loop-cpu-gateway",
    )
    try:
        connection = connect(gateway, agent_token)
        cursor = connection.cursor()
        for number in range(3):
            assert cursor.execute(f"SELECT {number}").fetchone() == (number,)
        window = LoopWindow.read(totals, written_after=time.time())
    finally:
        gateway.stop()
    assert window.statements >= 4  # the login and three statements, at least
    for row in loop_cpu.GATEWAY_ROWS:
        assert window.rows.get(row, 0.0) > 0, row
    assert MITMPROXY_TASKS & {row for row, spent in window.rows.items() if spent > 0}
    assert 0 < charged(window) <= window.thread_cpu
