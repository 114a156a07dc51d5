"""`hoopgw export`: a session recorded through the real gateway, written as a mitmproxy flow file.

Two gateways record tests/inspection_workload.py: one keeps bodies up to 32 MiB
in its records (the 100,000-row Arrow result is recorded whole), the other
only 64 KiB (that result is truncated in the record). Each session is exported
with the real CLI and read back with mitmproxy's FlowReader, as `mitmweb -r` does.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pytest
from click.testing import CliRunner
from mitmproxy import contentviews, http, io
from mitmproxy.test import taddons

from hoopgw.addons.contentview import MAX_ROWS
from hoopgw.cli.main import main
from hoopgw.recorder.annotations import BLOCKED_MARK, FAILED_MARK, statement_comment
from hoopgw.recorder.catalog import Archive
from hoopgw.recorder.index import ArchiveIndex
from hoopgw.recorder.store import open_store
from hoopgw.replay.export import records_to_flows
from tests import inspection_workload as workload
from tests.conftest import UPSTREAM_TEST_PASSWORD
from tests.stack import wait_until

FULL = pytest.StashKey["Recorded"]()
SMALL = pytest.StashKey["Recorded"]()
SMALL_BODY_LIMIT = 64 * 1024


@dataclass(frozen=True)
class Recorded:
    store: str
    session_id: str
    records: list[dict]
    result: workload.Workload
    agent_token: str


def record_session(gateway_factory, fakesnow_server, connect, agent_token, name, options, database):
    gateway = gateway_factory(fakesnow_server.url, options, name=name)
    store = f"file:{gateway.workdir / 'store'}"
    connection = connect(gateway, agent_token, database=database, schema="app")
    result = workload.run(connection, database)
    connection.close()
    gateway.stop()  # seals and uploads the spool's segments
    archive = Archive(open_store(store))
    summaries = wait_until(
        lambda: ArchiveIndex(archive, store_url="").list_sessions(), 30, "the session in the store"
    )
    assert len(summaries) == 1
    session_id = summaries[0].session_id
    return Recorded(store, session_id, archive.read_session(session_id), result, agent_token)


@pytest.fixture
def full(request, gateway_factory, fakesnow_server, connect, agent_token, unique_name) -> Recorded:
    return workload.once(
        request,
        FULL,
        lambda: record_session(
            gateway_factory,
            fakesnow_server,
            connect,
            agent_token,
            "export-full",
            {"hoopgw_body_limit": 32 * 1024 * 1024},
            unique_name("exp"),
        ),
    )


@pytest.fixture
def small(request, gateway_factory, fakesnow_server, connect, agent_token, unique_name) -> Recorded:
    return workload.once(
        request,
        SMALL,
        lambda: record_session(
            gateway_factory,
            fakesnow_server,
            connect,
            agent_token,
            "export-small",
            {"hoopgw_body_limit": SMALL_BODY_LIMIT},
            unique_name("exs"),
        ),
    )


@pytest.fixture
def mitmproxy_context() -> Iterator[None]:
    with taddons.context():
        yield


def export(recorded: Recorded, destination: Path) -> list[http.HTTPFlow]:
    outcome = CliRunner().invoke(
        main,
        ["export", recorded.session_id, "-o", str(destination), "--store", recorded.store],
        catch_exceptions=False,
    )
    assert outcome.exit_code == 0, outcome.output
    assert f"of session {recorded.session_id} to {destination}" in outcome.output
    with destination.open("rb") as file:
        return list(io.FlowReader(file).stream())


def by_sql(flows: list[http.HTTPFlow], sql: str) -> http.HTTPFlow:
    wanted = statement_comment(sql)
    matches = [f for f in flows if f.comment.removeprefix("❌ ").startswith(wanted)]
    assert len(matches) == 1, [f.comment for f in flows]
    return matches[0]


def test_export_writes_every_recorded_flow_with_timing_and_annotations(
    full, tmp_path, fakesnow_server
):
    flows = export(full, tmp_path / "session.flows")
    requests = [r for r in full.records if r["kind"] in ("request", "refusal") and "method" in r]
    assert [f.id for f in flows] == [r["flow_id"] for r in requests]
    assert flows[0].request.path.startswith("/session/v1/login-request")
    assert sum(f.request.path.startswith("/queries/v1/query-request") for f in flows) >= 10

    for flow, record in zip(flows, requests, strict=True):
        assert flow.request.method == record["method"]
        assert flow.request.timestamp_start == pytest.approx(record["ts"])
        assert flow.response is not None
        assert flow.response.timestamp_start >= flow.request.timestamp_start
        assert flow.client_conn.peername[0] == "127.0.0.1"
        assert flow.metadata["hoopgw"]["session_id"] == full.session_id
        assert not flow.live

    select = by_sql(flows, workload.SELECT_ADA)
    assert select.comment == workload.SELECT_ADA
    assert not select.marked
    assert select.request.headers["content-encoding"] == "gzip"  # as the driver sent it
    assert (select.request.host, select.request.port) == ("127.0.0.1", fakesnow_server.port)
    failing = by_sql(flows, workload.FAILING)
    assert failing.marked == FAILED_MARK
    assert failing.comment == f"❌ {workload.FAILING}"
    assert flows[0].comment == "login: agent-1"
    assert (select.metadata["hoopgw"]["caller"], select.metadata["hoopgw"]["role"]) == (
        "agent-1",
        "AGENT",
    )
    assert BLOCKED_MARK not in {f.marked for f in flows}


def test_exported_bodies_are_the_recorded_ones_and_secrets_stay_redacted(full, tmp_path):
    target = tmp_path / "session.flows"
    flows = export(full, target)
    login = flows[0]
    login_body = login.request.json()["data"]
    assert {login_body.get("PASSWORD"), login_body.get("TOKEN")} & {"[REDACTED]"}
    for name, value in login.request.headers.items():
        if name.lower() == "authorization":
            assert value == "[REDACTED]"
    login_answer = login.response.json()["data"]
    assert login_answer["token"] == "[REDACTED]"

    query = by_sql(flows, workload.WITH_PASSWORD)
    assert workload.SECRET_LITERAL not in query.comment
    assert workload.SECRET_LITERAL not in query.request.get_text()
    assert "'[REDACTED]'" in query.request.json()["sqlText"]

    everything = target.read_bytes()
    assert UPSTREAM_TEST_PASSWORD.encode() not in everything  # the gateway's own credential
    assert full.agent_token.encode() not in everything  # the caller's OIDC token
    assert full.agent_token.split(".")[2].encode() not in everything  # not even its signature


def test_exported_flows_render_in_the_snowflake_view(full, tmp_path, mitmproxy_context):
    flows = export(full, tmp_path / "session.flows")
    select = by_sql(flows, workload.SELECT_ADA)
    request_text = contentviews.prettify_message(select.request, select).text
    assert "customer = ?" in request_text and "| 1 | TEXT | ada   |" in request_text
    answer = contentviews.prettify_message(select.response, select)
    assert answer.view_name == "Snowflake"
    assert f"hoopgw session   {full.session_id}" in answer.text
    assert "|            1 | ada               |        10.50 |" in answer.text


def test_a_100k_row_session_opens_and_the_view_stays_bounded(full, tmp_path, mitmproxy_context):
    started = time.perf_counter()
    flows = export(full, tmp_path / "large.flows")
    large = by_sql(flows, workload.LARGE)
    assert len(large.response.raw_content) > 1_000_000  # the whole Arrow result is in the file
    text = contentviews.prettify_message(large.response, large).text
    elapsed = time.perf_counter() - started
    assert f"Result: first {MAX_ROWS} of 100,000 rows" in text
    assert "|            0 | row 0             |" in text
    assert len(text.splitlines()) < MAX_ROWS + 40
    assert elapsed < 10, f"export and render took {elapsed:.1f}s"


def test_truncated_bodies_are_noted_and_the_view_says_what_is_missing(
    small, tmp_path, mitmproxy_context
):
    flows = export(small, tmp_path / "small.flows")
    large = by_sql(flows, workload.LARGE)
    assert "response body truncated in the recording" in large.comment
    truncated = large.metadata["hoopgw"]["truncated"]["response"]
    assert truncated["size"] > SMALL_BODY_LIMIT and len(truncated["sha256"]) == 64
    text = contentviews.prettify_message(large.response, large).text
    assert "Rows             100,000 total" in text
    assert "rows not shown" in text
    assert "This body was truncated in the recording" in text
    assert not by_sql(flows, workload.SELECT_ADA).metadata["hoopgw"].get("truncated")


def test_export_refuses_unknown_and_malformed_sessions(full, tmp_path):
    runner = CliRunner()
    missing = "0190f3c4-7b1a-7c2e-9d4f-1a2b3c4d5e6f"
    target = tmp_path / "missing.flows"
    outcome = runner.invoke(main, ["export", missing, "-o", str(target), "--store", full.store])
    assert outcome.exit_code == 2
    assert missing in outcome.output and full.store in outcome.output
    assert list(tmp_path.iterdir()) == []  # no file, not even a partial one
    outcome = runner.invoke(main, ["export", "../../etc/passwd", "--store", full.store])
    assert outcome.exit_code == 2
    assert "invalid session id" in outcome.output
    outcome = runner.invoke(
        main,
        ["export", full.session_id, "-o", str(tmp_path / "x.flows")],
        env={"HOOPGW_STORE": full.store},
    )
    assert outcome.exit_code == 0, outcome.output


def test_records_without_an_answer_become_refused_or_failed_flows():
    base = {"session_id": "0190f3c4-7b1a-7c2e-9d4f-1a2b3c4d5e6f", "ts": 1_700_000_000.0}
    records = [
        {
            **base,
            "kind": "refusal",
            "flow_id": "aaaaaaaa-0000-4000-8000-000000000001",
            "endpoint": "query",
            "method": "POST",
            "path": "/queries/v1/query-request?requestId=1",
            "headers": [["Host", "acme.snowflakecomputing.com"], ["Content-Encoding", "br2"]],
            "body": {"size": 30, "json": {"sqlText": "delete from orders"}},
            "refusal": {"code": 399002, "reason": "the recording spool is full", "by": "recording"},
        },
        {
            **base,
            "kind": "request",
            "flow_id": "aaaaaaaa-0000-4000-8000-000000000002",
            "endpoint": "monitoring",
            "method": "GET",
            "path": "/monitoring/queries/01ab",
            "headers": [],
        },
        {
            **base,
            "kind": "error",
            "flow_id": "aaaaaaaa-0000-4000-8000-000000000002",
            "error": "connection reset",
        },
    ]
    refused, broken = records_to_flows(records)
    assert refused.marked == BLOCKED_MARK
    assert refused.comment == (
        "⛔ delete from orders · refused by hoopgw (recording): the recording spool is full"
    )
    assert refused.request.host == "acme.snowflakecomputing.com"
    assert refused.request.json() == {"sqlText": "delete from orders"}
    assert refused.error is not None and "spool is full" in refused.error.msg
    assert broken.marked == FAILED_MARK
    assert broken.comment == "❌ query status"
    assert broken.error is not None and broken.error.msg == "connection reset"
    assert broken.response is None


def test_export_files_are_private_kept_unless_forced_and_dash_is_standard_output(full, tmp_path):
    runner = CliRunner()
    target = tmp_path / "incident.flows"
    args = ["export", full.session_id[:13].upper(), "--store", full.store]
    first = runner.invoke(main, [*args, "-o", str(target)])
    assert first.exit_code == 0, first.output
    assert target.stat().st_mode & 0o777 == 0o600
    written = flow_ids(target.read_bytes())
    assert len(written) == len(export(full, tmp_path / "reference.flows"))
    (tmp_path / "reference.flows").unlink()

    target.write_bytes(b"kept")
    again = runner.invoke(main, [*args, "-o", str(target)])
    assert again.exit_code == 2
    assert f"{target} exists; give --force to replace it" in again.stderr
    assert target.read_bytes() == b"kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["incident.flows"]

    forced = runner.invoke(main, [*args, "-o", str(target), "--force"])
    assert forced.exit_code == 0, forced.output
    assert flow_ids(target.read_bytes()) == written
    assert target.stat().st_mode & 0o777 == 0o600

    piped = runner.invoke(main, [*args, "-o", "-"])
    assert piped.exit_code == 0, piped.stderr
    assert flow_ids(piped.stdout_bytes) == written
    assert "to standard output" in piped.stderr
    assert not (Path.cwd() / "-").exists()


def flow_ids(data: bytes) -> list[str]:
    return [flow.id for flow in io.FlowReader(BytesIO(data)).stream()]


def test_exported_urls_are_the_upstream_the_gateway_recorded(full, tmp_path, fakesnow_server):
    """The gateway records its upstream in session_start; export rebuilds URLs from it."""
    upstream = urllib.parse.urlsplit(fakesnow_server.url)
    start = next(r for r in full.records if r["kind"] == "session_start")
    assert start["upstream"] == {
        "scheme": upstream.scheme,
        "host": upstream.hostname,
        "port": upstream.port,
    }
    assert upstream.scheme == "http"  # the test upstream: no longer shown as https
    flows = export(full, tmp_path / "session.flows")
    assert {(f.request.scheme, f.request.host, f.request.port) for f in flows} == {
        (upstream.scheme, upstream.hostname, upstream.port)
    }
    assert flows[0].request.url.startswith(f"{fakesnow_server.url.rstrip('/')}/session/")
