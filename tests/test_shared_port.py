"""Several gateway processes behind one listening port (`hoopgw_reuse_port`).

Two real gateways, started as test_scale_out.py starts replicas (one token key,
one store, a spool each), listen on the SAME port; the Linux kernel spreads
new connections across them. Every statement goes on a fresh TCP connection
until both processes have served some; each must be recorded exactly once.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hoopgw.recorder.schema import REQUEST
from tests import raw_http, stack
from tests.bodies import query_body
from tests.test_scale_out import replica_env, replica_options, shared_store, start_replica

__all__ = ["shared_store"]  # the fixture, shared with test_scale_out.py

SHARED: dict[str, object] = {"hoopgw_reuse_port": True, "server": False}
QUERY_LINE = re.compile(r"POST \S*/queries/v1/query-request")


@contextlib.contextmanager
def two_workers(
    tmp_path: Path, upstream: str, gateway_options, store: Path, **extra: object
) -> Iterator[list[stack.Gateway]]:
    """Two gateway processes on one port, one token key and one store, a spool each."""
    port = stack.free_port()
    env = replica_env()
    started: list[stack.Gateway] = []
    try:
        for name in ("a", "b"):
            home = tmp_path / f"worker-{name}"
            options = {**replica_options(gateway_options, store, home), **SHARED, **extra}
            started.append(start_replica(home, upstream, options, env, port))
        yield started
    finally:
        for gateway in started:
            gateway.stop()


@pytest.fixture
def workers(
    tmp_path: Path, fakesnow_server, gateway_options, shared_store: Path
) -> Iterator[list[stack.Gateway]]:
    with two_workers(tmp_path, fakesnow_server.url, gateway_options, shared_store) as started:
        yield started


@pytest.fixture
def balanced_workers(
    tmp_path: Path, fakesnow_server, gateway_options, shared_store: Path
) -> Iterator[list[stack.Gateway]]:
    """The two processes keeping even shares of the port's connections."""
    with two_workers(
        tmp_path,
        fakesnow_server.url,
        gateway_options,
        shared_store,
        hoopgw_balance_dir=str(tmp_path / "balance"),
    ) as started:
        yield started


class KeptConnection:
    """One keep-alive connection to the port, statements sent one after another on it."""

    def __init__(self, port: int, token: str) -> None:
        self.http = http.client.HTTPConnection(stack.LOOPBACK, port, timeout=60)
        self.token = token

    def query(self, sql: str) -> dict:
        body = json.dumps(query_body(sql)).encode()
        headers = dict(raw_http.json_headers(raw_http.session_authorization(self.token)))
        self.http.request(
            "POST",
            f"/queries/v1/query-request?requestId={uuid.uuid4()}",
            body,
            {name.decode(): value.decode() for name, value in headers.items()},
        )
        answer = self.http.getresponse()
        parsed = json.loads(answer.read())
        assert answer.status == 200 and parsed.get("success"), parsed
        assert not answer.will_close, "the gateway closed a keep-alive connection"
        return parsed


def statements_served(workers: list[stack.Gateway], total: int) -> list[int]:
    """How many statements each process logged, once `total` are logged between them
    (mitmproxy logs a flow a moment after its answer leaves)."""

    def counts() -> list[int]:
        return [len(QUERY_LINE.findall(worker.log())) for worker in workers]

    stack.wait_until(lambda: sum(counts()) >= total, 60, f"{total} statements logged")
    return counts()


def test_two_processes_on_one_port_share_the_connections_and_record_each_statement_once(
    workers: list[stack.Gateway], shared_store: Path, oidc: stack.OidcProvider
) -> None:
    port = workers[0].port
    assert all(worker.port == port for worker in workers)
    session = raw_http.login(port, oidc.mint("worker-test", ["agents"]))
    sent: list[str] = []

    def both_served() -> bool:
        """One more statement on a fresh connection; True once each process logged one."""
        sql = f"select {len(sent)} as n"
        answer = raw_http.query(port, session.token, sql, str(uuid.uuid4()))
        assert answer.status == 200 and answer.json.get("success"), answer.json
        sent.append(sql)
        return all(QUERY_LINE.search(worker.log()) for worker in workers)

    stack.wait_until(both_served, 120, "both gateway processes to serve a statement")

    for worker in workers:
        assert worker.stop() == 0  # a clean stop uploads what the spool holds
    requests = [
        record
        for record in raw_http.stored_records(shared_store)
        if record["kind"] == REQUEST and "sql" in record
    ]
    assert collections.Counter(record["sql"] for record in requests) == collections.Counter(sent)
    assert len({record["writer"] for record in requests}) == 2


def test_a_gateway_without_the_option_cannot_take_the_shared_port(
    workers: list[stack.Gateway], fakesnow_server, gateway_options, tmp_path: Path
) -> None:
    home = tmp_path / "unshared"
    argv = stack.gateway_argv(
        fakesnow_server.url,
        workers[0].port,
        {**gateway_options, "hoopgw_spool_dir": str(home / "spool")},
        confdir=home / "mitmproxy",
    )
    proc = stack.Proc("unshared gateway", argv, home / "gateway.log", cwd=home).start()
    try:
        assert proc.process is not None
        assert proc.process.wait(60) != 0
    finally:
        proc.stop()
    assert "address already in use" in proc.log().lower(), proc.log()[-2000:]


def test_balanced_processes_hold_even_shares_of_the_connections_and_lose_none(
    balanced_workers: list[stack.Gateway], shared_store: Path, oidc: stack.OidcProvider
) -> None:
    """Eight keep-alive connections split 4/4 whatever the kernel's hash (it gives 4/4 about
    one time in four); once a process is killed, the other takes every new connection."""
    port = balanced_workers[0].port
    session = raw_http.login(port, oidc.mint("balance-test", ["agents"]))
    kept = [KeptConnection(port, session.token) for _ in range(8)]
    for number, connection in enumerate(kept):
        connection.query(f"select {number} as n")
    assert statements_served(balanced_workers, 8) == [4, 4]
    for number, connection in enumerate(kept):
        connection.query(f"select {number} as again")  # each connection stayed where it was
    assert statements_served(balanced_workers, 16) == [8, 8]

    killed, survivor = balanced_workers
    killed.kill()  # its slot in the ledger still says it holds four
    for number in range(4):
        KeptConnection(port, session.token).query(f"select {number} as after")
    assert statements_served([survivor], 12) == [12]
    assert survivor.stop() == 0
    stored = [
        record["sql"]
        for record in raw_http.stored_records(shared_store)
        if record["kind"] == REQUEST and "sql" in record
    ]
    assert sum("as after" in sql for sql in stored) == 4
