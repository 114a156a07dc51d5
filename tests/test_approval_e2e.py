"""Approval end to end: the real connector waits for a human, through two real gateway replicas.

fakesnow sits behind the strict upstream (tests/strict_upstream.py), which
records every request it receives: a held statement is shown not to have
reached Snowflake before its decision. Both replicas share the token key and
the store, as in tests/test_scale_out.py; decisions are taken with the
`hoopgw approvals` CLI on either.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from snowflake.connector import ProgrammingError

from hoopgw.cli.main import main
from hoopgw.recorder.annotations import HELD_FOR_REVIEW, HELD_MARK, approval_comment
from hoopgw.recorder.catalog import Archive
from hoopgw.recorder.secrets import new_token_key
from hoopgw.recorder.session import load_session
from hoopgw.recorder.store import LocalStore
from hoopgw.replay.export import records_to_flows
from tests import stack
from tests.strict_upstream import StrictUpstream

ACCOUNT = "ap12345"
SERVICE_USER = "svc_hoopgw"
TOKEN_KEY_ENV = "HOOPGW_APPROVAL_TEST_TOKEN_KEY"
GROUPS = ["agents", "hasty"]
POLICY = """
[[rule]]
name = "agents-review-deletes"
groups = ["agents"]
review_kinds = ["DELETE"]
deny_kinds = ["DROP"]
approvers = ["dba"]

[[rule]]
name = "hasty-review"
groups = ["hasty"]
review_kinds = ["DELETE"]
approvers = ["dba"]
review_timeout = 2
"""
WAIT = 30.0


@pytest.fixture(scope="module")
def strict(key_pair_strict: StrictUpstream) -> StrictUpstream:
    return key_pair_strict


@pytest.fixture(scope="module")
def store_dir(workdir: Path) -> Path:
    return workdir / f"approval-store-{uuid.uuid4().hex[:6]}"


def start_replicas(
    gateway_factory, strict, oidc, service_key, workdir, store: str, **extra: Any
) -> list[stack.Gateway]:
    """Two gateway replicas sharing the token key and `store` (a `hoopgw_store` URL)."""
    policy = workdir / f"approval-policy-{uuid.uuid4().hex[:6]}.toml"
    policy.write_text(POLICY)
    options = {
        "hoopgw_oidc_issuer": oidc.issuer,
        "hoopgw_oidc_audience": "hoopgw",
        "hoopgw_allowed_groups": GROUPS,
        "hoopgw_role_map": [f"{group}={group.upper()}" for group in GROUPS],
        "hoopgw_upstream_account": ACCOUNT,
        "hoopgw_upstream_user": SERVICE_USER,
        "hoopgw_upstream_secondary_roles": "none",
        "hoopgw_upstream_private_key": f"file:{service_key}",
        "hoopgw_upstream_password": "",
        "hoopgw_upstream_oauth_token": "",
        "hoopgw_token_key": f"env:{TOKEN_KEY_ENV}",
        "hoopgw_policy": str(policy),
        "hoopgw_store": store,
        "hoopgw_approval_poll": 2,
        "hoopgw_approval_check_ms": 200,
        **extra,
    }
    env = {TOKEN_KEY_ENV: new_token_key()}
    return [
        gateway_factory(
            strict.url, options, env=env, name=f"approval-{name}-{uuid.uuid4().hex[:4]}"
        )
        for name in ("a", "b")
    ]


@pytest.fixture(scope="module")
def replicas(gateway_factory, strict, oidc, service_key, workdir, store_dir) -> list[stack.Gateway]:
    return start_replicas(gateway_factory, strict, oidc, service_key, workdir, f"file:{store_dir}")


@pytest.fixture(scope="module")
def database(replicas, fakesnow_server) -> str:
    import snowflake.connector

    name = f"AP_{uuid.uuid4().hex[:8]}".upper()
    host, port = fakesnow_server.url.removeprefix("http://").rsplit(":", 1)
    with snowflake.connector.connect(
        account="fake", user="admin", password="x", host=host, port=int(port), protocol="http"
    ) as admin:
        cur = admin.cursor()
        cur.execute(f"create database {name}")
        cur.execute(f"create schema {name}.APP")
        cur.execute(f"create table {name}.APP.T (id int, v varchar)")
        cur.execute(f"insert into {name}.APP.T values (1, 'a'), (2, 'b'), (3, 'c'), (4, 'd')")
    return name


@pytest.fixture
def session(replicas, oidc, connect, database) -> Callable[..., Any]:
    """`session(group, subject=None, replica=0)`: a connector session through one replica."""

    def _open(group: str, subject: str | None = None, replica: int = 0, **kwargs: Any):
        token = oidc.mint(subject or f"{group}-{uuid.uuid4().hex[:6]}", groups=[group])
        kwargs.setdefault("database", database)
        kwargs.setdefault("schema", "APP")
        return connect(replicas[replica], token, **kwargs)

    return _open


@pytest.fixture
def approver(oidc, workdir) -> Callable[..., Path]:
    """`approver(groups=("dba",), subject=None)`: a token file for the CLI."""

    def _make(groups: tuple[str, ...] = ("dba",), subject: str | None = None) -> Path:
        subject = subject or f"approver-{uuid.uuid4().hex[:6]}"
        path = workdir / f"token-{uuid.uuid4().hex[:8]}"
        path.write_text(oidc.mint(subject, groups=list(groups)))
        return path

    return _make


def cli(gateway: stack.Gateway, token: Path, *args: str) -> Any:
    result = CliRunner().invoke(
        main,
        [
            "approvals",
            *args,
            "--gateway",
            gateway.url,
            "--token-file",
            str(token),
            "--format",
            "json",
        ],
    )
    return result


def pending_for(gateway: stack.Gateway, token: Path, sql_part: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        result = cli(gateway, token, "list", "--state", "pending")
        assert result.exit_code == 0, result.output
        for item in json.loads(result.output):
            if sql_part in (item["sql"] or ""):
                return item
        return None

    return stack.wait_until(find, WAIT, f"a pending request for {sql_part!r}")  # type: ignore[return-value]


class Waiting:
    """A statement run in a thread, as an agent's driver runs it."""

    def __init__(self, cursor: Any, sql: str, **kwargs: Any) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(cursor, sql, kwargs), daemon=True)
        self.thread.start()

    def _run(self, cursor: Any, sql: str, kwargs: dict[str, Any]) -> None:
        try:
            self.result = cursor.execute(sql, **kwargs).fetchall()
        except BaseException as exc:  # the test thread inspects it
            self.error = exc

    def join(self) -> None:
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the driver is still waiting"


def deletes_upstream(strict: StrictUpstream, mark: int, table: str) -> list[str]:
    return [
        r.body.decode(errors="replace")
        for r in strict.received_since(mark)
        if r.path.startswith("/queries/v1/query-request")
        and "delete from" in r.body.decode().lower()
        and table in r.body.decode()
    ]


def test_a_reviewed_delete_waits_and_runs_once_approved(
    session, replicas, strict, database, approver
) -> None:
    cursor = session("agents").cursor()
    mark = strict.mark()
    sql = f"delete from {database}.APP.T where id = 1"
    waiting = Waiting(cursor, sql)
    dba = approver()
    item = pending_for(replicas[0], dba, sql)
    assert item["rule"] == "agents-review-deletes"
    assert item["objects"] == [f"{database}.APP.T"]
    table = CliRunner().invoke(
        main, ["approvals", "list", "--gateway", replicas[1].url, "--token-file", str(dba)]
    )
    assert table.exit_code == 0, table.output
    row = next(line for line in table.output.splitlines() if line.startswith(item["id"]))
    assert "pending" in row and "agents-review-deletes" in row and f"{database}.APP.T" in row
    assert waiting.thread.is_alive()
    assert deletes_upstream(strict, mark, database) == []
    result = cli(replicas[0], dba, "approve", item["id"], "--reason", "ticket 42")
    assert result.exit_code == 0, result.output
    waiting.join()
    assert waiting.error is None, waiting.error
    assert waiting.result == [(1,)]
    assert len(deletes_upstream(strict, mark, database)) == 1
    assert cursor.execute(f"select count(*) from {database}.APP.T where id = 1").fetchone() == (0,)
    shown = json.loads(cli(replicas[1], dba, "show", item["id"]).output)
    assert shown["state"] == "approved" and shown["released"] is True
    assert shown["decision"]["reason"] == "ticket 42"


def test_denial_reaches_the_driver_with_approver_and_reason(
    session, replicas, strict, database, approver
) -> None:
    cursor = session("agents").cursor()
    mark = strict.mark()
    sql = f"delete from {database}.APP.T where id = 2"
    waiting = Waiting(cursor, sql)
    dba = approver()
    item = pending_for(replicas[1], dba, sql)
    result = cli(replicas[1], dba, "deny", item["id"], "--reason", "not during the freeze")
    assert result.exit_code == 0, result.output
    waiting.join()
    assert isinstance(waiting.error, ProgrammingError), waiting.error
    assert waiting.error.errno == 399005
    assert "not during the freeze" in waiting.error.msg
    assert "@example.com" in waiting.error.msg
    assert deletes_upstream(strict, mark, database) == []


def test_undecided_statement_times_out(session, strict, database) -> None:
    cursor = session("hasty").cursor()
    mark = strict.mark()
    waiting = Waiting(cursor, f"delete from {database}.APP.T where id = 3")
    waiting.join()
    assert isinstance(waiting.error, ProgrammingError), waiting.error
    assert waiting.error.errno == 399006
    assert deletes_upstream(strict, mark, database) == []


def test_who_may_decide(session, replicas, strict, database, approver, oidc, workdir) -> None:
    subject = f"carol-{uuid.uuid4().hex[:6]}"
    cursor = session("agents", subject=subject).cursor()
    sql = f"delete from {database}.APP.T where id = 4"
    waiting = Waiting(cursor, sql)
    dba = approver()
    item = pending_for(replicas[0], dba, sql)

    own = approver(("dba",), subject=subject)
    result = cli(replicas[0], own, "approve", item["id"])
    assert result.exit_code != 0 and "your own request" in result.output

    outsider = approver(("agents",))
    result = cli(replicas[0], outsider, "approve", item["id"])
    assert result.exit_code != 0 and "no approval" in result.output

    forged = workdir / "forged-token"
    header, payload, signature = dba.read_text().split(".")
    claims = json.loads(_b64decode(payload))
    claims["groups"] = ["dba"]
    claims["sub"] = "mallory"
    forged.write_text(".".join((header, _b64encode(json.dumps(claims).encode()), signature)))
    result = cli(replicas[0], forged, "approve", item["id"])
    assert result.exit_code != 0 and "HTTP 401" in result.output

    assert json.loads(cli(replicas[0], dba, "show", item["id"]).output)["state"] == "pending"
    cli(replicas[0], dba, "deny", item["id"], "--reason", "cleanup")
    waiting.join()
    assert waiting.error is not None and waiting.error.errno == 399005


def test_decision_on_one_replica_releases_a_hold_on_the_other(
    session, replicas, strict, database, approver
) -> None:
    cursor = session("agents", replica=1).cursor()
    mark = strict.mark()
    sql = f"delete from {database}.APP.T where id = 2"
    waiting = Waiting(cursor, sql)
    dba = approver()
    item = pending_for(replicas[0], dba, sql)
    assert cli(replicas[0], dba, "approve", item["id"]).exit_code == 0
    waiting.join()
    assert waiting.error is None, waiting.error
    assert waiting.result == [(1,)]
    assert len(deletes_upstream(strict, mark, database)) == 1


def test_abort_withdraws_the_held_statement(session, replicas, strict, database, approver) -> None:
    cursor = session("agents").cursor()
    mark = strict.mark()
    sql = f"delete from {database}.APP.T where id = 33"
    waiting = Waiting(cursor, sql, timeout=3)
    waiting.join()
    assert waiting.error is not None
    dba = approver()
    found = [
        item for item in json.loads(cli(replicas[0], dba, "list").output) if item["sql"] == sql
    ]
    assert [item["state"] for item in found] == ["withdrawn"]
    assert deletes_upstream(strict, mark, database) == []


def approval_id_in(answer: dict[str, Any]) -> str:
    """The approval id a held answer's message names; its queryId/handle is that id bound."""
    found = re.search(r"\(approval ([0-9a-f-]{36})\)", answer["message"])
    assert found is not None, answer["message"]
    return found.group(1)


def _post_statement(gateway: stack.Gateway, token: str, sql: str) -> dict[str, Any]:
    """What the connector POSTs, without its polling: an agent that gave up waiting."""
    host, port = urllib.parse.urlsplit(gateway.url).netloc.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(
            "POST",
            f"/queries/v1/query-request?requestId={uuid.uuid4()}",
            json.dumps({"sqlText": sql, "sequenceId": 1, "asyncExec": False}),
            {
                "Authorization": f'Snowflake Token="{token}"',
                "Content-Type": "application/json",
                "Accept": "application/snowflake",
            },
        )
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def test_retries_join_a_pending_request_and_reuse_an_approval_once(
    session, replicas, strict, database, approver, store_dir
) -> None:
    subject = f"dave-{uuid.uuid4().hex[:6]}"
    connection = session("agents", subject=subject)
    token = connection.rest.token
    sql = f"delete from {database}.APP.T where id = 4"
    first = _post_statement(replicas[0], token, sql)
    second = _post_statement(replicas[1], token, sql)
    assert first["code"] == second["code"] == "333333"
    assert first["data"]["queryId"] == second["data"]["queryId"]
    dba = approver()
    item = pending_for(replicas[0], dba, sql)
    assert approval_id_in(first) == approval_id_in(second) == item["id"]
    assert first["data"]["queryId"] != item["id"], "the driver sees the id bound to its session"
    assert cli(replicas[0], dba, "approve", item["id"]).exit_code == 0

    mark = strict.mark()
    cursor = connection.cursor()
    assert cursor.execute(sql).fetchall() == [(1,)]
    assert len(deletes_upstream(strict, mark, database)) == 1
    again = _post_statement(replicas[0], token, sql)
    assert again["code"] == "333333" and approval_id_in(again) != item["id"]
    assert again["data"]["queryId"] != first["data"]["queryId"]
    assert len(deletes_upstream(strict, mark, database)) == 1
    cli(replicas[0], dba, "deny", approval_id_in(again), "--reason", "cleanup")


def test_holds_and_decisions_are_in_the_session_chain(
    session, replicas, database, approver, store_dir
) -> None:
    connection = session("agents")
    sql = f"delete from {database}.APP.T where id = 99"
    waiting = Waiting(connection.cursor(), sql)
    dba = approver()
    item = pending_for(replicas[0], dba, sql)
    cli(replicas[0], dba, "deny", item["id"], "--reason", "chain check")
    waiting.join()
    connection.close()
    archive = Archive(LocalStore(store_dir))

    def kinds() -> list[str] | None:
        try:
            records = archive.read_session(item["session_id"])
        except Exception:
            return None
        found = [r["kind"] for r in records if r.get("approval_id") == item["id"]]
        return found if "approval_decision" in found else None

    found = stack.wait_until(kinds, WAIT, "the approval records in the store")
    assert found == ["approval_request", "approval_decision"]
    held = [
        s
        for s in load_session(
            item["session_id"], archive.read_session(item["session_id"])
        ).statements
        if s.sql == sql
    ]
    assert [s.blocked for s in held] == ["held for review: denied"], "replay skips it"


def test_an_approved_statement_replays_once_with_its_released_outcome(
    session, replicas, database, approver, store_dir
) -> None:
    connection = session("agents")
    connection.cursor().execute(f"insert into {database}.APP.T values (66, 'replay')")
    sql = f"delete from {database}.APP.T where id = 66"
    waiting = Waiting(connection.cursor(), sql)
    dba = approver()
    item = pending_for(replicas[0], dba, sql)
    assert cli(replicas[0], dba, "approve", item["id"]).exit_code == 0
    waiting.join()
    assert waiting.result == [(1,)]
    connection.close()
    archive = Archive(LocalStore(store_dir))

    def statements() -> list[Any] | None:
        try:
            records = archive.read_session(item["session_id"])
        except Exception:
            return None
        if not any(r.get("kind") == "approval_decision" for r in records):
            return None
        return [s for s in load_session(item["session_id"], records).statements if s.sql == sql]

    held = stack.wait_until(statements, WAIT, "the approved session in the store")
    assert len(held) == 1 and held[0].blocked is None
    assert held[0].outcome.query_id != item["id"] and held[0].outcome.success is True


def test_search_finds_held_statements_by_approval_and_export_marks_them(
    session, replicas, database, approver, store_dir
) -> None:
    connection = session("agents")
    connection.cursor().execute(f"insert into {database}.APP.T values (77, 'search')")
    dba = approver()
    denied_sql = f"delete from {database}.APP.T where id = 76"
    waiting = Waiting(connection.cursor(), denied_sql)
    denied = pending_for(replicas[0], dba, denied_sql)
    assert cli(replicas[0], dba, "deny", denied["id"], "--reason", "no").exit_code == 0
    waiting.join()
    approved_sql = f"delete from {database}.APP.T where id = 77"
    waiting = Waiting(connection.cursor(), approved_sql)
    approved = pending_for(replicas[0], dba, approved_sql)
    assert cli(replicas[0], dba, "approve", approved["id"]).exit_code == 0
    waiting.join()
    undecided_sql = f"delete from {database}.APP.T where id = 78"
    _post_statement(replicas[0], connection.rest.token, undecided_sql)
    undecided = pending_for(replicas[0], dba, undecided_sql)
    connection.close()
    archive = Archive(LocalStore(store_dir))

    def recorded() -> list[dict[str, Any]] | None:
        try:
            records = archive.read_session(denied["session_id"])
        except Exception:
            return None
        held = [r for r in records if r.get("kind") == "approval_request"]
        decided = [r for r in records if r.get("kind") == "approval_decision"]
        ended = any(r.get("kind") == "session_end" for r in records)
        return records if ended and len(held) == 3 and len(decided) == 2 else None

    records = stack.wait_until(recorded, WAIT, "the ended session in the store")

    store = ["--store", f"file:{store_dir}", "--no-cache", "--format", "jsonl"]

    def found(outcome: str) -> set[str]:
        sql = f"{database}.APP.T where id = 7"
        result = CliRunner().invoke(main, ["search", "--sql", sql, "--outcome", outcome, *store])
        assert result.exit_code == 0, result.output
        return {json.loads(line)["sql"] for line in result.output.splitlines()}

    assert found("denied") == {denied_sql}
    assert found("approved") == {approved_sql}
    assert found("held") == {undecided_sql}
    assert found("ok") == {approved_sql}, "an approved statement has its final outcome too"
    assert found("blocked") == found("error") == set(), "a hold is not a refusal nor a failure"

    flows = {f.request.path: f for f in records_to_flows(records)}
    statement = next(f for f in flows.values() if undecided_sql in f.request.get_text())
    assert statement.marked == HELD_MARK
    assert statement.comment == f"⏳ delete from {database}.APP.T where id = 78"
    assert statement.metadata["hoopgw_approval"] == {
        "id": undecided["id"],
        "rule": "agents-review-deletes",
        "state": HELD_FOR_REVIEW,
    }
    poll = flows[f"/queries/{approved['id']}/result"]
    assert poll.marked == HELD_MARK, "the poll the approval released, as live"
    assert poll.comment == f"⏳ query result · {approval_comment(approved['id'], 'approved')}"


def _b64decode(text: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64encode(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _rss_kib(gateway: stack.Gateway) -> int:
    assert gateway.proc.process is not None
    status = Path(f"/proc/{gateway.proc.process.pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1])


def _latencies(cursor: Any, count: int) -> list[float]:
    timings = []
    for _ in range(count):
        start = time.perf_counter()
        cursor.execute("select 1").fetchall()
        timings.append(time.perf_counter() - start)
    return sorted(timings)


def _desk_call(gateway: stack.Gateway, token: str, path: str, body: Any) -> tuple[int, Any]:
    host, port = urllib.parse.urlsplit(gateway.url).netloc.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(
            "POST",
            f"/hoopgw/v1/approvals{path}",
            json.dumps(body),
            {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        answer = conn.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        conn.close()


def test_a_hundred_held_statements_do_not_slow_other_clients(
    session, replicas, database, approver
) -> None:
    """The cost of holding: memory per hold, and other clients' latency while 100 drivers poll."""
    gateway = replicas[0]
    other = session("agents").cursor()
    before = _latencies(other, 40)
    rss_before = _rss_kib(gateway)
    holder = session("agents")
    token = holder.rest.token
    ids, approval_ids = [], []
    for number in range(100):
        held = _post_statement(
            gateway, token, f"delete from {database}.APP.T where id = {1000 + number}"
        )
        assert held["code"] == "333333"
        ids.append(held["data"]["queryId"])
        approval_ids.append(approval_id_in(held))
    stop = threading.Event()
    polls = [0]

    def poll(query_id: str) -> None:
        host, port = urllib.parse.urlsplit(gateway.url).netloc.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        while not stop.is_set():
            conn.request(
                "GET",
                f"/queries/{query_id}/result",
                headers={"Authorization": f'Snowflake Token="{token}"'},
            )
            answer = json.loads(conn.getresponse().read())
            polls[0] += 1
            if answer.get("code") != "333333":
                return
        conn.close()

    threads = [threading.Thread(target=poll, args=(i,), daemon=True) for i in ids]
    for thread in threads:
        thread.start()
    stack.wait_until(lambda: polls[0] >= 100, WAIT, "every held statement polled once")
    during = _latencies(other, 40)
    rss_during = _rss_kib(gateway)
    dba = approver().read_text()
    for approval_id in approval_ids:
        status, _ = _desk_call(gateway, dba, f"/{approval_id}/deny", {"reason": "load test"})
        assert status == 200
    stop.set()
    for thread in threads:
        thread.join(WAIT)
    median_before, median_during = before[len(before) // 2], during[len(during) // 2]
    print(
        f"\nselect 1 median {median_before * 1000:.1f} ms alone, {median_during * 1000:.1f} ms "
        f"with 100 held statements polling; p90 {before[35] * 1000:.1f} / "
        f"{during[35] * 1000:.1f} ms; gateway RSS {rss_before} KiB -> {rss_during} KiB "
        f"({(rss_during - rss_before) / 100:.1f} KiB per held, polling statement)"
    )
    assert median_during < 2 * median_before + 0.02


def _sql_api(gateway: stack.Gateway, token: str, method: str, path: str, body: Any = None):
    host, port = urllib.parse.urlsplit(gateway.url).netloc.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(
            method,
            path,
            json.dumps(body) if body is not None else None,
            {
                "Content-Type": "application/json",
                "Authorization": f"Bearer {token}",
                "X-Snowflake-Authorization-Token-Type": "OAUTH",
            },
        )
        answer = conn.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        conn.close()


def test_an_sql_api_statement_is_held_and_polled_by_its_handle(
    replicas, strict, database, approver, oidc
) -> None:
    token = oidc.mint(f"erin-{uuid.uuid4().hex[:6]}", groups=["agents"])
    sql = f"delete from {database}.APP.T where id = 77"
    mark = strict.mark()
    status, held = _sql_api(replicas[0], token, "POST", "/api/v2/statements", {"statement": sql})
    assert status == 202 and held["code"] == "333334"
    handle = held["statementHandle"]
    status, again = _sql_api(replicas[1], token, "GET", held["statementStatusUrl"])
    assert status == 202 and again["statementHandle"] == handle
    assert not [r for r in strict.received_since(mark) if r.path.startswith("/api/v2")]
    dba = approver()
    approval_id = pending_for(replicas[0], dba, sql)["id"]
    assert approval_id == approval_id_in(held) and handle != approval_id
    intruder = oidc.mint(f"eve-{uuid.uuid4().hex[:6]}", groups=["agents"])
    for path in (held["statementStatusUrl"], f"/api/v2/statements/{approval_id}"):
        status, refused = _sql_api(replicas[0], intruder, "GET", path)
        assert status not in (200, 202), refused
    cancel = f"{held['statementStatusUrl']}/cancel"
    status, refused = _sql_api(replicas[0], intruder, "POST", cancel)
    assert status != 200 and refused.get("code") != "000604", refused
    mark = strict.mark()  # a foreign id may reach Snowflake as an unknown one (about 2%)
    assert cli(replicas[0], dba, "approve", approval_id).exit_code == 0
    status, result = _sql_api(replicas[1], token, "GET", held["statementStatusUrl"])
    assert status == 200, result
    assert result["data"] == [[sql, "AGENTS"]]
    assert result["statementHandle"] not in (handle, approval_id)
    sent = [r for r in strict.received_since(mark) if r.path.startswith("/api/v2")]
    assert [(r.method, r.path) for r in sent] == [("POST", "/api/v2/statements")]


def test_execute_async_waits_for_the_decision_then_returns_snowflakes_query_id(
    session, replicas, strict, database, approver
) -> None:
    """Held async statements make `execute_async` itself wait (docs/approval.md, "Not yet")."""
    connection = session("agents")
    connection.cursor().execute(f"insert into {database}.APP.T values (88, 'async')")
    cursor = connection.cursor()
    sql = f"delete from {database}.APP.T where id = 88"
    started = threading.Thread(target=cursor.execute_async, args=(sql,), daemon=True)
    started.start()
    dba = approver()
    item = pending_for(replicas[0], dba, sql)
    assert started.is_alive()
    assert cli(replicas[0], dba, "approve", item["id"]).exit_code == 0
    started.join(WAIT)
    assert not started.is_alive()
    assert cursor.sfqid and cursor.sfqid != item["id"]
    results = connection.cursor()
    results.get_results_from_sfqid(cursor.sfqid)
    assert results.fetchall() == [(1,)]


def _race_decisions(
    replicas: list[stack.Gateway], approval_id: str, tokens: list[str]
) -> list[tuple[int, Any]]:
    """Replica A approves and replica B denies the same request at the same instant."""
    barrier = threading.Barrier(2)
    answers: list[tuple[int, Any]] = [(0, None), (0, None)]
    calls = [("approve", {"reason": "go"}), ("deny", {"reason": "stop"})]

    def decide(index: int) -> None:
        action, body = calls[index]
        host, port = urllib.parse.urlsplit(replicas[index].url).netloc.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.connect()
        barrier.wait(WAIT)
        try:
            conn.request(
                "POST",
                f"/hoopgw/v1/approvals/{approval_id}/{action}",
                json.dumps(body),
                {"Authorization": f"Bearer {tokens[index]}", "Content-Type": "application/json"},
            )
            answer = conn.getresponse()
            answers[index] = (answer.status, json.loads(answer.read()))
        finally:
            conn.close()

    threads = [threading.Thread(target=decide, args=(index,)) for index in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    return answers


def _first_decision_wins(
    replicas: list[stack.Gateway], connection: Any, sql: str, oidc, approver, rounds: int
) -> dict[str, int]:
    """`rounds` held statements, each decided twice at once: one decision stands, on record."""
    tokens = [oidc.mint(f"dba-{side}-{uuid.uuid4().hex[:4]}", groups=["dba"]) for side in "ab"]
    won: dict[str, int] = {"approved": 0, "denied": 0}
    for number in range(rounds):
        held = _post_statement(replicas[0], connection.rest.token, f"{sql} + {number}")
        assert held["code"] == "333333", held
        approval_id = approval_id_in(held)
        answers = _race_decisions(replicas, approval_id, tokens)
        statuses = sorted(status for status, _ in answers)
        assert statuses == [200, 409], answers
        winner = next(body for status, body in answers if status == 200)
        loser = next(body for status, body in answers if status == 409)
        outcome = winner["state"]
        assert loser["decision"]["outcome"] == outcome, answers
        assert loser["decision"]["approver"] == winner["decision"]["approver"], answers
        assert f"was already {outcome} by " in loser["error"], loser
        # every replica, and the CLI, read the same decision from the store
        for replica in replicas:
            shown = cli(replica, approver(), "show", approval_id)
            assert json.loads(shown.output)["decision"]["outcome"] == outcome, shown.output
        won[outcome] += 1
    # the CLI prints the decision that stands to whoever comes second
    late = cli(replicas[1], approver(), "deny", approval_id, "--reason", "too late")
    assert late.exit_code != 0
    assert f"was already {outcome} by " in late.output and "HTTP 409" in late.output, late.output
    return won


def test_two_approvers_deciding_at_once_on_two_replicas_first_decision_wins(
    session, replicas, database, approver, oidc
) -> None:
    connection = session("agents")
    sql = f"delete from {database}.APP.T where id = 900"
    won = _first_decision_wins(replicas, connection, sql, oidc, approver, rounds=6)
    print("RACE LOCAL", json.dumps(won))


def test_first_decision_wins_on_an_s3_store(
    gateway_factory, strict, oidc, service_key, workdir, s3_bucket, moto_s3, connect, approver
) -> None:
    """moto answers `If-None-Match: *` as S3 does (412 when the key exists)."""
    pair = start_replicas(
        gateway_factory,
        strict,
        oidc,
        service_key,
        workdir,
        f"s3://{s3_bucket}/approvals-race",
        hoopgw_s3_endpoint_url=moto_s3,
    )
    token = oidc.mint(f"agents-{uuid.uuid4().hex[:6]}", groups=["agents"])
    connection = connect(pair[1], token)
    sql = "delete from AP_NONE.APP.T where id = 901"
    won = _first_decision_wins(pair, connection, sql, oidc, approver, rounds=6)
    print("RACE S3", json.dumps(won))
