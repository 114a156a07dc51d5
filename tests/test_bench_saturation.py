"""The saturation bench's canned upstream and load script answer as the bench needs.

Not a benchmark: nothing here is timed. nginx (and, for the load script, wrk)
answer on loopback ports the way scripts/bench_saturation.py starts them; the
real connector must accept the canned login and both query answers, and the
Lua script must count what it is meant to count. Skipped where nginx or wrk is
not installed (`apt-get install nginx-light wrk`).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import urllib.request
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import snowflake.connector

from hoopgw.addons.query_ids import looks_issued
from scripts import bench_saturation
from scripts.bench_saturation import CannedUpstream
from tests import stack

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
