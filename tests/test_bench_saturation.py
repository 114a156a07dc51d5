"""The saturation bench's canned upstream and load script answer as the bench needs.

Not a benchmark: nothing here is timed. nginx (and, for the load script, wrk)
answer on loopback ports the way scripts/bench_saturation.py starts them; the
real connector must accept the canned login and both query answers, and the
Lua script must count what it is meant to count. With `--gateway-workers N`
the report must say how many gateway processes ran, sum their CPU time, count
how many of wrk's connections each held (and no one else's), and wait for
every one to be idle. Skipped where nginx or wrk is not installed
(`apt-get install nginx-light wrk`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import snowflake.connector

from hoopgw.addons.lockdown import REMOVED
from hoopgw.addons.query_ids import looks_issued
from scripts import bench, bench_saturation
from scripts.bench_saturation import CannedUpstream
from tests import chain_report, stack

pytestmark = pytest.mark.skipif(
    bench_saturation.nginx_binary() is None,
    reason="nginx is not installed (apt-get install nginx-light): the bench's upstream needs it",
)
needs_wrk = pytest.mark.skipif(
    shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)"
)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CannedUpstream]:
    canned = bench_saturation.start_canned_upstream(tmp_path_factory.mktemp("nginx"))
    yield canned
    canned.stop()


def post(port: int, path: str, body: bytes = b"{}") -> tuple[int, dict]:
    request = urllib.request.Request(f"http://{stack.LOOPBACK}:{port}{path}", body, method="POST")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def connect(port: int) -> snowflake.connector.SnowflakeConnection:
    return snowflake.connector.connect(
        account="bench",
        user="bench",
        password="the-canned-upstream-ignores-it",
        host=stack.LOOPBACK,
        port=port,
        protocol="http",
        login_timeout=30,
        network_timeout=30,
    )


def test_the_connector_reads_the_canned_json_answer(upstream: CannedUpstream) -> None:
    connection = connect(upstream.port)
    try:
        assert connection.rest is not None
        assert connection.rest.token == bench_saturation.UPSTREAM_SESSION_TOKEN
        cursor = connection.cursor()
        rows = cursor.execute(bench_saturation.STATEMENTS[0] % 1).fetchall()
        assert rows == [(1, "alpha"), (2, "beta"), (3, "gamma")]
        assert [column.name for column in cursor.description] == ["ID", "NAME"]
    finally:
        connection.close()


def test_the_connector_reads_the_canned_arrow_answer(upstream: CannedUpstream) -> None:
    connection = connect(upstream.arrow_port)
    try:
        rows = connection.cursor().execute(bench_saturation.ARROW_STATEMENT % 1).fetchall()
    finally:
        connection.close()
    assert len(rows) == bench_saturation.ARROW_ROWS
    assert rows[1] == (1, "ledger-entry-00001", Decimal("1.37"))


def test_each_query_answer_has_its_own_snowflake_shaped_id(upstream: CannedUpstream) -> None:
    ids = set()
    for path in ("?requestId=1", "?requestId=2&result=arrow", "?requestId=3"):
        status, answer = post(upstream.port, f"/queries/v1/query-request{path}")
        assert status == 200 and answer["success"] is True
        ids.add(answer["data"]["queryId"])
    assert len(ids) == 3
    assert all(looks_issued(uuid.UUID(query_id).bytes) for query_id in ids)
    status, answer = post(upstream.port, "/queries/v1/query-request?result=arrow")
    assert answer["data"]["queryResultFormat"] == "arrow"
    status, answer = post(upstream.port, "/queries/v1/query-request?result=json")
    assert answer["data"]["queryResultFormat"] == "json"


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/session/token-request", "sessionToken"),
        ("/session/heartbeat", None),
        ("/session?delete=true", None),
    ],
)
def test_session_calls_are_answered(upstream: CannedUpstream, path: str, field: str | None) -> None:
    status, answer = post(upstream.port, path)
    assert status == 200 and answer["success"] is True
    if field is not None:
        assert answer["data"][field] == bench_saturation.UPSTREAM_SESSION_TOKEN


def test_a_result_is_answered_and_an_unknown_path_is_not(upstream: CannedUpstream) -> None:
    request = urllib.request.Request(
        f"{upstream.url}/queries/01b2c3d4-0000-4000-8000-000000000001/result"
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert json.loads(answer.read())["data"]["total"] == len(bench_saturation.JSON_ROWS)
    status, answer = post(upstream.port, "/not/snowflake")
    assert status == 404 and answer["success"] is False


@needs_wrk
def test_the_load_script_counts_answers_and_failures(
    upstream: CannedUpstream, tmp_path: Path
) -> None:
    good = tmp_path / "good.lua"
    good.write_text(bench_saturation.wrk_script("token", arrow_every=2))
    result = bench_saturation.run_wrk(upstream.port, good, 2, 1)
    assert result.requests > 0 and result.failures == 0
    assert result.p50_ms <= result.p99_ms <= result.p999_ms

    missing = tmp_path / "missing.lua"
    missing.write_text(bench_saturation.wrk_script("token", 0, path="/not/snowflake"))
    result = bench_saturation.run_wrk(upstream.port, missing, 1, 1)
    assert result.requests > 0 and result.non_200 == result.requests


class AcceptCounter:
    """A loopback listener that counts the connections it accepts and answers each request
    with a small 200, until it is closed."""

    def __init__(self) -> None:
        self.listener = socket.create_server((stack.LOOPBACK, 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.listener.accept()
                self.accepted += 1
                threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    @staticmethod
    def _answer(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while conn.recv(65536):
                conn.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\n{"success": true}')


@needs_wrk
def test_the_load_script_opens_only_its_connections(tmp_path: Path) -> None:
    """wrk checks an address with a connection it closes at once; the script skips that, so
    that gateway processes balancing by connections held see only wrk's load."""
    counter = AcceptCounter()
    try:
        script = tmp_path / "load.lua"
        script.write_text(bench_saturation.wrk_script("token", arrow_every=0))
        result = bench_saturation.run_wrk(counter.port, script, 3, 1)
    finally:
        counter.listener.close()
    assert result.requests > 0 and result.failures == 0
    assert counter.accepted == 3


@needs_wrk
def test_the_load_script_counts_refusals_answered_with_200(tmp_path: Path) -> None:
    refusal = json.dumps(
        {"data": None, "code": "399003", "message": "refused", "success": False},
        separators=(",", ":"),
    )
    answers = dataclasses.replace(bench_saturation.canned_answers(), json_query=refusal)
    refusing = bench_saturation.start_canned_upstream(tmp_path / "nginx", answers)
    try:
        script = tmp_path / "load.lua"
        script.write_text(bench_saturation.wrk_script("token", arrow_every=0))
        result = bench_saturation.run_wrk(refusing.port, script, 1, 1)
    finally:
        refusing.stop()
    assert result.requests > 0
    assert result.non_200 == 0 and result.not_success == result.requests


def level_of(bare_qps: float, gateway_cpu: tuple[float, ...]) -> bench_saturation.Level:
    def run(qps: float, cpu: tuple[float, ...]) -> bench_saturation.WrkResult:
        return bench_saturation.WrkResult(
            int(qps * 3), 3.0, 0, 0, 0, 0, 1.0, 2.0, 3.0, 4.0, 5.0, sum(cpu), cpu
        )

    level = bench_saturation.Level(8)
    level.runs[bench_saturation.BARE].append(run(bare_qps, (1.0,)))
    level.runs[bench_saturation.GATEWAY].append(run(bare_qps * 0.75, gateway_cpu))
    return level


def report_for(
    workers: int, stored_statements: int, sent_statements: int = 100, kernel_spread: bool = False
) -> str:
    archive = bench.Archive(1, 1, 2 * stored_statements, 10_000, 1_000, stored_statements)
    archived = bench_saturation.Archived(sent_statements, archive, spool_bytes=0)
    args = argparse.Namespace(
        rounds=1,
        duration=3.0,
        arrow_every=10,
        gateway_workers=workers,
        kernel_spread=kernel_spread,
    )
    level = level_of(600, (3.0, 1.0) if workers == 2 else (4.0,))
    return bench_saturation.report([level], archived, args, "test machine", 0.0)


def test_the_table_and_the_report_say_how_many_gateway_processes_ran() -> None:
    one = report_for(1, 100)
    assert "| gateway q/s |" in one and "processes" not in one
    two = report_for(2, 100)
    assert "| gateway (2 processes) q/s |" in two
    assert "gateway (2 processes) CPU ms/statement (bare)" in two
    assert "**The gateway ran as 2 processes**" in two
    assert "Targets (issue 22), gateway (2 processes):" in two
    assert "share of the gateway's CPU time: 8 conn 75%/25%." in two
    assert "hands it over (`hoopgw_balance_dir`)" in two
    assert "(`--kernel-spread`)" in report_for(2, 100, kernel_spread=True)


def test_the_report_flags_fewer_statements_stored_than_sent() -> None:
    assert "recording was skipped" in report_for(2, 99)
    assert "recording was skipped" not in report_for(2, 100)


def test_the_gateway_s_cpu_time_sums_its_processes() -> None:
    probe = bench.ProcessProbe(os.getpid())
    both = bench_saturation.Processes((probe, probe))
    before = probe.cpu_seconds()
    summed = both.cpu_seconds()
    after = probe.cpu_seconds()
    assert 2 * before <= summed <= 2 * after


def test_waiting_for_idle_waits_for_every_process(tmp_path: Path) -> None:
    busy = stack.Proc(
        "busy", [sys.executable, "-c", "while True: pass"], tmp_path / "busy.log"
    ).start()
    idle = stack.Proc(
        "idle", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "idle.log"
    ).start()
    try:
        assert bench_saturation.wait_idle(bench_saturation.Processes.of(idle), timeout=2)
        both = bench_saturation.Processes.of(idle, busy)
        assert not bench_saturation.wait_idle(both, timeout=2)
    finally:
        busy.stop()
        idle.stop()


@pytest.mark.parametrize(
    "argv",
    [
        ["--gateway-workers", "0"],
        ["--gateway-workers", "2", "--profile", "profile.pyspy"],
        ["--gateway-workers", "2", "--hook-timing", "hooks.json"],
        ["--kernel-spread"],
    ],
)
def test_gateway_workers_refuses_what_follows_one_process(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        bench_saturation.main(argv)
    assert exit_.value.code == 2


def test_lean_bare_runs_bare_mitmdump_with_the_gateways_chain(
    upstream: CannedUpstream, tmp_path: Path
) -> None:
    """`--lean-bare`: a real bare mitmdump loads the lockdown alone, before any probe, has the
    same addons out of its chain as the gateway, still answers, and the report says so."""
    scripts = bench_saturation.bare_scripts(True, {"extra_scripts": [Path(chain_report.__file__)]})
    assert scripts["extra_scripts"][0] == bench_saturation.LEAN_BARE_SCRIPT
    assert bench_saturation.bare_scripts(False, {}) == {"extra_scripts": []}
    bare, port = bench.start_bare_mitmdump(tmp_path, upstream.url, **scripts)
    try:
        stack.wait_until(lambda: chain_report.PREFIX in bare.log(), 30, "the chain report")
        line = next(row for row in bare.log().splitlines() if chain_report.PREFIX in row)
        chain = set(line.split(chain_report.PREFIX, 1)[1].split())
        assert "proxyserver" in chain and not chain & {item.name for item in REMOVED}
        status, answer = post(port, "/session/v1/login-request")
        assert status == 200 and answer["success"] is True
    finally:
        bare.stop()
    args = argparse.Namespace(
        rounds=1, duration=3.0, arrow_every=10, gateway_workers=1, lean_bare=True
    )
    archive = bench.Archive(1, 1, 200, 10_000, 1_000, 100)
    text = bench_saturation.report(
        [level_of(600, (4.0,))], bench_saturation.Archived(100, archive, 0), args, "m", 0.0
    )
    assert "**Bare mitmdump ran with the gateway's mitmproxy chain**" in text


LISTENER = """
import socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
server.bind(("127.0.0.1", int(sys.argv[1])))
server.listen(64)
print(server.getsockname()[1], flush=True)
held = []
while True:
    held.append(server.accept()[0])
"""
CLIENT = """
import socket, sys
held = [socket.create_connection(("127.0.0.1", int(sys.argv[1]))) for _ in range(int(sys.argv[2]))]
print("connected", flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def child(source: str, *argv: object) -> Iterator[subprocess.Popen[str]]:
    """A Python child that prints one line once ready; killed on exit."""
    with subprocess.Popen(
        [sys.executable, "-c", source, *map(str, argv)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            yield process
        finally:
            process.kill()


def test_the_spread_of_wrk_s_connections_counts_each_process_s_share() -> None:
    with child(LISTENER, 0) as first:
        port = int(first.stdout.readline())  # type: ignore[union-attr]
        with child(LISTENER, port) as second, child(CLIENT, port, 12) as client:
            assert second.stdout.readline().strip() == str(port)  # type: ignore[union-attr]
            assert client.stdout.readline().strip() == "connected"  # type: ignore[union-attr]
            pids = (first.pid, second.pid, os.getpid())
            spread = bench_saturation.wrk_spread(client.pid, port, pids, 12)
    assert sum(spread) == 12  # every connection, each counted once
    assert spread[2] == 0  # a process that holds none of them
    assert bench_saturation.spread_text(spread[:2]) == f"{spread[0]}/{spread[1]}"


def test_only_the_load_generator_s_connections_are_counted() -> None:
    with child(LISTENER, 0) as server:
        port = int(server.stdout.readline())  # type: ignore[union-attr]
        with child(CLIENT, port, 3) as wrk, child(CLIENT, port, 2) as other:
            assert wrk.stdout.readline().strip() == "connected"  # type: ignore[union-attr]
            assert other.stdout.readline().strip() == "connected"  # type: ignore[union-attr]
            # the other client's 2 connections (the connector's session, in the bench) are
            # the same server's, and are not wrk's
            assert bench_saturation.wrk_spread(wrk.pid, port, (server.pid,), 3) == (3,)


def test_the_report_gives_each_round_s_connections_per_process() -> None:
    level = level_of(600, (3.0, 1.0))
    for run, spread in zip(level.runs[bench_saturation.GATEWAY], [(5, 3)], strict=True):
        run.connections_per_process = spread
    for balanced in (True, False):
        assert "by round" in bench_saturation.level_spreads([level], balanced)
        assert "8 conn 5/3." in bench_saturation.level_spreads([level], balanced)
        assert bench_saturation.level_spreads([level_of(600, (4.0,))], balanced) == ""
    assert "no more than the other" in bench_saturation.level_spreads([level], True)
    assert "by a hash" in bench_saturation.level_spreads([level], False)


def test_a_stalled_disk_is_flagged_and_each_level_s_longest_flush_given() -> None:
    quiet, stalled = level_of(600, (4.0,)), level_of(600, (4.0,))
    for level, flushes in ((quiet, (0.4, 3.0)), (stalled, (0.4, 313.0))):
        level.runs[bench_saturation.GATEWAY][0].disk_flushes_ms = flushes
        level.runs[bench_saturation.BARE][0].disk_flushes_ms = (0.5, 120.0)
    assert bench_saturation.disk_stall([quiet]) is None  # bare's stall does not count
    assert bench_saturation.disk_stall([quiet, stalled]) == (313.0, 8)
    text = bench_saturation.disk_text([quiet])
    assert "the longest flush during the gateway's runs 3.0 ms at 8 conn" in text
    assert "during bare mitmdump's 120.0 ms at 8 conn" in text
    assert bench_saturation.disk_text([level_of(600, (4.0,))]) == ""  # no probe, no sentence


def test_the_report_flags_a_run_that_met_a_stalled_disk() -> None:
    archive = bench.Archive(1, 1, 200, 10_000, 1_000, 100)
    args = argparse.Namespace(rounds=1, duration=3.0, arrow_every=10, gateway_workers=1)
    level = level_of(600, (4.0,))
    level.runs[bench_saturation.GATEWAY][0].disk_flushes_ms = (0.4, 313.0)
    text = bench_saturation.report(
        [level], bench_saturation.Archived(100, archive, 0), args, "test machine", 0.0
    )
    assert "**The spool's disk stalled during the gateway's runs: a flush took 313 ms" in text
    assert "The spool's disk, probed beside the proxies" in text
