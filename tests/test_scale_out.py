"""Scale-out: two gateway replicas behind a load balancer share one session.

The replicas share nothing but `hoopgw_token_key` and the store. A round-robin
HTTP balancer (written here, on a loopback port) sends each request to the
next replica, so one connector session's consecutive statements alternate
between them. Each replica records its part of the session as its own writer
stream; both streams must verify, and the documented DuckDB query over the
stored objects must return the session's statements.
"""

from __future__ import annotations

import http.client
import itertools
import os
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from hoopgw.recorder.catalog import Archive
from hoopgw.recorder.index import ArchiveIndex
from hoopgw.recorder.secrets import new_token_key
from hoopgw.recorder.store import LocalStore
from tests import stack
from tests.conftest import UPSTREAM_PASSWORD_ENV, UPSTREAM_TEST_PASSWORD

TOKEN_KEY_ENV = "HOOPGW_SCALE_OUT_TOKEN_KEY"
RECORD_FORMAT_DOC = stack.REPO_ROOT / "docs" / "record-format.md"
# Connection-level headers a proxy must not pass on (RFC 9110, section 7.6.1).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


@dataclass
class RoundRobin(stack.LoopbackServer):
    """A per-request round-robin HTTP/1.1 balancer: request N goes to backend N mod len."""

    backends: list[int]
    routed: list[tuple[int, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def next_backend(self, path: str) -> int:
        with self._lock:
            index = len(self.routed) % len(self.backends)
            self.routed.append((index, path))
            return index

    def serve(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else None
        index = self.next_backend(handler.path)
        upstream = http.client.HTTPConnection(stack.LOOPBACK, self.backends[index], timeout=60)
        try:
            headers = {
                name: value
                for name, value in handler.headers.items()
                if name.lower() not in HOP_BY_HOP
            }
            upstream.request(handler.command, handler.path, body, headers)
            answer = upstream.getresponse()
            payload = answer.read()
        finally:
            upstream.close()
        handler.send_response(answer.status, answer.reason)
        for name, value in answer.getheaders():
            if name.lower() not in HOP_BY_HOP | {"content-length"}:
                handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)


@pytest.fixture
def shared_store(tmp_path: Path) -> Path:
    return tmp_path / "store"


def start_replica(
    workdir: Path,
    upstream: str,
    options: dict[str, object],
    env: dict[str, str],
    port: int | None = None,
) -> stack.Gateway:
    """`stack.start_gateway`, but logging one line per flow so the log shows the traffic."""
    port = port or stack.free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    argv = stack.gateway_argv(upstream, port, options, confdir=workdir / "mitmproxy")  # type: ignore[arg-type]
    argv[argv.index("flow_detail=0")] = "flow_detail=1"
    proc = stack.Proc(
        "gateway replica", argv, workdir / "gateway.log", env={**os.environ, **env}, cwd=workdir
    ).start()
    proc.wait_ready(lambda: stack.READY_LINE in proc.log() and stack.port_open(port))
    return stack.Gateway(proc, port, "http", workdir)


def replica_env() -> dict[str, str]:
    """The environment of every replica of one test: one token key, the upstream password."""
    return {TOKEN_KEY_ENV: new_token_key(), UPSTREAM_PASSWORD_ENV: UPSTREAM_TEST_PASSWORD}


def replica_options(
    gateway_options: Mapping[str, object], shared_store: Path, home: Path
) -> dict[str, object]:
    """A replica's options: the shared token key and store, its own spool under `home`."""
    return {
        **gateway_options,
        "hoopgw_token_key": f"env:{TOKEN_KEY_ENV}",
        "hoopgw_store": f"file:{shared_store}",
        "hoopgw_spool_dir": str(home / "spool"),
    }


@pytest.fixture
def replicas(
    tmp_path: Path, fakesnow_server, gateway_options, shared_store: Path
) -> Iterator[list[stack.Gateway]]:
    """Two gateways with one token key and one store; each keeps its own spool."""
    env = replica_env()
    started: list[stack.Gateway] = []
    try:
        for name in ("a", "b"):
            home = tmp_path / f"replica-{name}"
            options = replica_options(gateway_options, shared_store, home)
            started.append(start_replica(home, fakesnow_server.url, options, env))
        yield started
    finally:
        for gateway in started:
            gateway.stop()


def documented_duckdb_query() -> str:
    """The first query of docs/record-format.md's DuckDB section, exactly as written there."""
    text = RECORD_FORMAT_DOC.read_text()
    section = text.split("### DuckDB", 1)[1]
    block = re.search(r"```sql\n(.*?)```", section, re.DOTALL)
    assert block, "docs/record-format.md has no sql block under DuckDB"
    return block.group(1).split(";", 1)[0]


def test_one_session_alternates_between_two_replicas(
    replicas: list[stack.Gateway],
    shared_store: Path,
    connect,
    oidc: stack.OidcProvider,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    duckdb = pytest.importorskip("duckdb")
    balancer = RoundRobin([gateway.port for gateway in replicas])
    balancer.start()
    try:
        connection = connect(
            balancer.url,
            oidc.mint("scaler", ["agents"], email="scaler@example.com"),
        )
        cursor = connection.cursor()
        statements = [f"select {n} as n" for n in range(6)]
        answers = [cursor.execute(sql).fetchone() for sql in statements]
        connection.close()
    finally:
        balancer.stop()
    assert answers == [(n,) for n in range(6)]

    queries = [index for index, path in balancer.routed if "/queries/v1/query-request" in path]
    assert len(queries) == len(statements)
    assert all(a != b for a, b in itertools.pairwise(queries)), balancer.routed
    assert balancer.routed[0][1].startswith("/session/v1/login-request")

    for gateway in replicas:
        assert gateway.stop() == 0  # a clean stop uploads what the spool holds
        assert re.search(r"POST \S*/queries/v1/query-request", gateway.log()), gateway.log()[-2000:]

    archive = Archive(LocalStore(shared_store))
    [summary] = ArchiveIndex(archive, store_url="").list_sessions()
    report = archive.verify_session(summary.session_id)
    assert report.ok, [str(problem) for problem in report.problems]
    assert len(report.writers) == 2
    records = archive.read_session(summary.session_id)
    assert {record["writer"] for record in records} == set(report.writers)
    assert summary.email == "scaler@example.com"
    assert summary.statements == len(statements)

    monkeypatch.chdir(shared_store)  # the documented query runs from the store's root
    rows = duckdb.sql(documented_duckdb_query()).fetchall()
    assert {str(row[1]) for row in rows} == {summary.session_id}
    assert sorted(row[4] for row in rows) == statements
    assert {row[5] for row in rows} == {"scaler@example.com"}
