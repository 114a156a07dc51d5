"""The hoopgw CLI end to end.

Two sessions are recorded through the real gateway (identity, credential swap,
recording into moto's S3 server) with the real connector; a second fakesnow
server is the sandbox they are replayed into. Every command runs as the user
runs it, through the `hoopgw` click group.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import orjson
import pytest
import snowflake.connector
from click.testing import CliRunner, Result
from snowflake.connector import ProgrammingError

from hoopgw.cli.main import main
from hoopgw.recorder.catalog import Archive
from hoopgw.recorder.index import ArchiveIndex, list_versions
from hoopgw.recorder.listing import SearchQuery, digest_session, search
from hoopgw.recorder.rollup import ROLLUPS, decode_rollup
from hoopgw.recorder.segment import compress_lines, decompress_segment
from hoopgw.recorder.store import open_store
from tests import stack
from tests.raw_http import stored_records

RECORDING_DEADLINE = 30.0
SANDBOX_ACCOUNT = "sandbox"
SANDBOX_PASSWORD_ENV = "HOOPGW_TEST_SANDBOX_PASSWORD"
UNKNOWN_SESSION = "0190f3c4-7b1a-7c2e-9d4f-1a2b3c4d5e6f"
POLICY = """
[[rule]]
name = "agents-no-drop"
groups = ["agents"]
deny_kinds = ["DROP"]
"""
BLOCKED_DROP = 9


@dataclass
class Rig:
    bucket: str
    endpoint: str
    gateway: stack.Gateway
    sandbox_port: int
    db: str = ""
    setup_id: str = ""
    reads_id: str = ""
    setup_statements: list[str] = field(default_factory=list)

    @property
    def store(self) -> str:
        return f"s3://{self.bucket}/hoopgw"

    def store_args(self, store: str | None = None) -> list[str]:
        return ["--store", store or self.store, "--s3-endpoint-url", self.endpoint]

    def sandbox_args(self, **changes: Any) -> list[str]:
        values = {
            "account": SANDBOX_ACCOUNT,
            "user": "replayer",
            "host": stack.LOOPBACK,
            "port": self.sandbox_port,
            "protocol": "http",
            "password-ref": f"env:{SANDBOX_PASSWORD_ENV}",
            **changes,
        }
        args: list[str] = []
        for name, value in values.items():
            args += [f"--{name}", str(value)]
        return args

    def sandbox(self) -> snowflake.connector.SnowflakeConnection:
        return snowflake.connector.connect(
            account=SANDBOX_ACCOUNT,
            user="tester",
            password="unused-by-fakesnow",
            host=stack.LOOPBACK,
            port=self.sandbox_port,
            protocol="http",
            paramstyle="qmark",
        )


@pytest.fixture(autouse=True)
def _catalog_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test its own catalog cache, never the user's."""
    cache = tmp_path / "catalog-cache"
    monkeypatch.setenv("HOOPGW_CACHE_DIR", str(cache))
    return cache


def hoopgw(*args: str, env: dict[str, str] | None = None) -> Result:
    environment = {SANDBOX_PASSWORD_ENV: "sandbox-password", **(env or {})}
    return CliRunner().invoke(main, list(args), env=environment, catch_exceptions=False)


def run_setup(connection: snowflake.connector.SnowflakeConnection, db: str) -> None:
    """The session that builds and fills a table: DDL, bound DML, reads, a blocked DROP,
    a failure, an asynchronous query."""
    cur = connection.cursor()
    cur.execute(f"create database if not exists {db}")
    cur.execute(f"create schema if not exists {db}.app")
    cur.execute(f"use schema {db}.app")
    cur.execute("create or replace table orders (id int, customer varchar, amount float)")
    cur.execute("insert into orders values (?, ?, ?)", (1, "ada", 10.5))
    cur.executemany(
        "insert into orders values (?, ?, ?)", [(2, "bob", 20.0), (3, "cy", 30.25), (4, "ada", 1.0)]
    )
    cur.execute("select id, customer, amount from orders where customer = ? order by id", ("ada",))
    cur.execute("update orders set amount = amount * 2 where id = ?", (2,))
    with pytest.raises(ProgrammingError, match="agents-no-drop"):
        cur.execute("drop table orders")  # the gateway's guardrail blocks it
    cur.execute("select * from orders order by id")
    with pytest.raises(ProgrammingError):
        cur.execute("select * from no_such_table_here")
    cur.execute_async("select count(*), sum(amount) from orders")
    cur.get_results_from_sfqid(cur.sfqid)
    cur.fetchall()


def run_reads(connection: snowflake.connector.SnowflakeConnection, db: str) -> None:
    """A session that only reads what the setup session built."""
    cur = connection.cursor()
    cur.execute(f"use schema {db}.app")
    cur.execute("select * from orders order by id")
    cur.execute("select customer, sum(amount) as total from orders group by customer")
    cur.execute("select count(*) from orders where amount > ?", (5,))


@pytest.fixture(scope="module")
def rig(gateway_factory, fakesnow_server, moto_s3: str, workdir: Path) -> Iterator[Rig]:
    bucket = f"hoopgw-cli-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=moto_s3).create_bucket(Bucket=bucket)
    policy = workdir / f"policy-{bucket}.toml"
    policy.write_text(POLICY)
    gateway = gateway_factory(
        fakesnow_server.url,
        {
            "hoopgw_store": f"s3://{bucket}/hoopgw",
            "hoopgw_s3_endpoint_url": moto_s3,
            "hoopgw_policy": str(policy),
        },
        name=f"cli-{bucket}",
    )
    sandbox_proc, sandbox_url = stack.start_fakesnow(workdir / f"sandbox-{bucket}")
    yield Rig(bucket, moto_s3, gateway, int(sandbox_url.rsplit(":", 1)[1]))
    sandbox_proc.stop()


@pytest.fixture
def recorded(rig: Rig, connect, agent_token) -> Rig:
    """Both sessions on record in S3 (recorded once per module)."""
    if rig.setup_id:
        return rig
    rig.db = f"CLI_{uuid.uuid4().hex[:10]}".upper()
    setup = connect(rig.gateway, agent_token)
    run_setup(setup, rig.db)
    setup.close()
    reads = connect(rig.gateway, agent_token)
    run_reads(reads, rig.db)
    reads.close()
    archive = Archive(open_store(rig.store, s3_endpoint_url=rig.endpoint))

    def both_ended() -> list[Any] | None:
        found = [s for s in ArchiveIndex(archive, store_url="").list_sessions() if s.ended]
        return found if len(found) >= 2 else None

    sessions = stack.wait_until(both_ended, RECORDING_DEADLINE, "both sessions in S3")
    assert isinstance(sessions, list)
    for summary in sessions:
        texts = [r.get("sql") for r in archive.read_session(summary.session_id) if r.get("sql")]
        if any("create or replace table orders" in text for text in texts):
            rig.setup_id = summary.session_id
            rig.setup_statements = texts
        else:
            rig.reads_id = summary.session_id
    assert rig.setup_id and rig.reads_id
    return rig


def replay_json(rig: Rig, session_id: str, *extra: str) -> tuple[Result, dict[str, Any]]:
    result = hoopgw(
        "replay", session_id, *rig.store_args(), *rig.sandbox_args(), "--format", "json", *extra
    )
    return result, orjson.loads(result.stdout) if result.stdout.strip() else {}


def verdicts(report: dict[str, Any]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for statement in report["statements"]:
        out.setdefault(statement["verdict"], []).append(statement["number"])
    return out


# --- replay --------------------------------------------------------------------------


def test_replay_into_empty_sandbox_matches_every_statement(recorded: Rig, tmp_path: Path):
    with recorded.sandbox() as sandbox:
        databases = [row[1] for row in sandbox.cursor().execute("show databases").fetchall()]
    assert recorded.db not in databases

    report_file = tmp_path / "report.json"
    result, report = replay_json(recorded, recorded.setup_id, "--report", str(report_file))

    assert result.exit_code == 0, result.output
    assert "replaying" not in result.stderr  # no progress bar when stderr is not a terminal
    everything = list(range(1, len(recorded.setup_statements) + 1))
    assert verdicts(report) == {
        "match": [n for n in everything if n != BLOCKED_DROP],
        "skipped": [BLOCKED_DROP],
    }
    drop = report["statements"][BLOCKED_DROP - 1]
    assert drop["sql"] == "drop table orders"
    assert drop["reason"].startswith("blocked by guardrail rule agents-no-drop")
    assert report["matched"] is True
    assert orjson.loads(report_file.read_bytes())["counts"]["match"] == len(everything) - 1
    by_sql = {s["sql"]: s for s in report["statements"]}
    bound = by_sql["select id, customer, amount from orders where customer = ? order by id"]
    assert bound["recorded"]["rows_compared"] and bound["replayed"]["row_count"] == 2
    assert by_sql["select * from no_such_table_here"]["replayed"]["error_code"] == "002003"
    assert (
        by_sql["update orders set amount = amount * 2 where id = ?"]["replayed"]["row_count"] == 1
    )
    assert "sandbox-password" not in result.output
    assert "sandbox-password" not in report_file.read_text()
    with recorded.sandbox() as sandbox:
        rows = sandbox.cursor().execute(f"select * from {recorded.db}.app.orders order by id")
        assert rows.fetchall() == [
            (1, "ada", 10.5),
            (2, "bob", 40.0),
            (3, "cy", 30.25),
            (4, "ada", 1.0),
        ]


def test_progress_bar_on_a_terminal(recorded: Rig):
    main_side, terminal = os.openpty()
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "hoopgw"), "replay", recorded.reads_id,
         *recorded.store_args(), *recorded.sandbox_args(), "--format", "jsonl"],
        stdout=subprocess.PIPE,
        stderr=terminal,
        env={**os.environ, SANDBOX_PASSWORD_ENV: "sandbox-password"},
    )  # fmt: skip
    os.close(terminal)
    stdout, _ = process.communicate(timeout=120)
    drawn = b""
    while True:
        try:
            chunk = os.read(main_side, 4096)
        except OSError:  # the terminal's other side is closed
            break
        if not chunk:
            break
        drawn += chunk
    os.close(main_side)
    assert process.returncode in (0, 1)
    assert f"replaying {recorded.reads_id}".encode() in drawn
    assert b"4/4" in drawn
    assert len(stdout.splitlines()) == 4  # the report itself stays on stdout


def test_changed_sandbox_data_reports_the_differing_statements(recorded: Rig):
    assert replay_json(recorded, recorded.setup_id)[0].exit_code == 0
    before, _ = replay_json(recorded, recorded.reads_id)
    assert before.exit_code == 0, before.output
    with recorded.sandbox() as sandbox:
        sandbox.cursor().execute(f"update {recorded.db}.app.orders set amount = 99 where id = 1")

    result = hoopgw("replay", recorded.reads_id, *recorded.store_args(), *recorded.sandbox_args())

    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    differing = [line for line in lines if "DIFFERS" in line]
    assert len(differing) == 2
    assert "select * from orders order by id" in differing[0]
    assert "group by customer" in differing[1]
    assert any("rows: 1 recorded row(s) not returned" in line for line in lines)
    assert "2 differs" in lines[-1]


def test_stop_on_diff_stops_at_the_first_difference(recorded: Rig):
    assert replay_json(recorded, recorded.setup_id)[0].exit_code == 0
    with recorded.sandbox() as sandbox:
        sandbox.cursor().execute(f"delete from {recorded.db}.app.orders where id = 3")

    result, report = replay_json(recorded, recorded.reads_id, "--stop-on-diff")

    assert result.exit_code == 1
    assert verdicts(report) == {"match": [1], "differs": [2], "not run": [3, 4]}


def test_read_only_runs_only_statements_that_cannot_change_data(recorded: Rig):
    assert replay_json(recorded, recorded.setup_id)[0].exit_code == 0
    with recorded.sandbox() as sandbox:
        sandbox.cursor().execute(f"update {recorded.db}.app.orders set amount = 99 where id = 1")

    result, report = replay_json(recorded, recorded.setup_id, "--read-only")

    skipped = [s for s in report["statements"] if s["verdict"] == "skipped"]
    assert {s["kind"] for s in skipped} == {"CREATE", "INSERT", "UPDATE", "DROP"}
    assert all(
        s["reason"].startswith("--read-only") for s in skipped if s["number"] != BLOCKED_DROP
    )
    assert all(s["kind"] in ("USE", "SELECT") for s in report["statements"] if s not in skipped)
    # the writes did not run: the table still holds the sandbox's own change
    with recorded.sandbox() as sandbox:
        amount = sandbox.cursor().execute(
            f"select amount from {recorded.db}.app.orders where id = 1"
        )
        assert amount.fetchall() == [(99.0,)]
    assert result.exit_code == 1
    assert {s["kind"] for s in report["statements"] if s["verdict"] == "differs"} == {"SELECT"}


def test_dry_run_prints_the_plan_and_connects_nowhere(recorded: Rig):
    closed_port = stack.free_port()
    result = hoopgw(
        "replay",
        recorded.setup_id,
        "--dry-run",
        *recorded.store_args(),
        *recorded.sandbox_args(port=closed_port),
    )
    assert result.exit_code == 0, result.output
    plan = [line.split()[:3] for line in result.stdout.splitlines() if line[:4].strip().isdigit()]
    assert len(plan) == len(recorded.setup_statements)
    assert [row[0] for row in plan if row[1] == "skipped"] == [str(BLOCKED_DROP)]
    assert all(row[1:3] == ["would", "run"] for row in plan if row[1] != "skipped")
    count = len(plan)
    assert f"{count} statements (dry run, nothing was run): {count - 1} would run, 1 skipped" in (
        result.stdout
    )


def test_refuses_the_recorded_account(recorded: Rig):
    result = hoopgw(
        "replay",
        recorded.setup_id,
        *recorded.store_args(),
        *recorded.sandbox_args(account="FAKESNOW"),
    )
    assert result.exit_code == 2
    assert "FAKESNOW is the account this session was recorded against" in result.stderr
    assert "--allow-recorded-account" in result.stderr

    allowed = hoopgw(
        "replay",
        recorded.setup_id,
        "--dry-run",
        "--allow-recorded-account",
        *recorded.store_args(),
        *recorded.sandbox_args(account="fakesnow.us-east-1"),
    )
    assert allowed.exit_code == 0, allowed.output


def test_named_connection_from_snowflake_home(recorded: Rig, tmp_path: Path):
    home = tmp_path / "snowflake-home"
    home.mkdir()
    connections = home / "connections.toml"
    connections.write_text(
        f"""
[sandbox]
account = "{SANDBOX_ACCOUNT}"
user = "replayer"
password = "from-the-connections-file"
host = "{stack.LOOPBACK}"
port = {recorded.sandbox_port}
protocol = "http"
"""
    )
    connections.chmod(0o600)
    env = {"SNOWFLAKE_HOME": str(home)}

    result = hoopgw(
        "replay", recorded.setup_id, *recorded.store_args(), "--connection", "sandbox", env=env
    )
    unknown = hoopgw(
        "replay", recorded.setup_id, *recorded.store_args(), "--connection", "prod", env=env
    )

    assert result.exit_code == 0, result.output
    assert "from-the-connections-file" not in result.output
    assert unknown.exit_code == 2
    assert "no connection named 'prod'" in unknown.stderr and "known: sandbox" in unknown.stderr


def test_unreachable_sandbox_is_a_connection_error(recorded: Rig):
    result = hoopgw(
        "replay",
        recorded.setup_id,
        *recorded.store_args(),
        *recorded.sandbox_args(port=stack.free_port()),
        "--login-timeout",
        "3",
    )
    assert result.exit_code == 2
    assert "cannot connect to the sandbox (account sandbox at 127.0.0.1:" in result.stderr


def test_replay_without_target_is_a_usage_error(recorded: Rig):
    result = hoopgw("replay", recorded.setup_id, *recorded.store_args())
    assert result.exit_code == 2
    assert "no sandbox given" in result.stderr


# --- sessions, search --------------------------------------------------------------------


def test_sessions_list_newest_first_with_counts(recorded: Rig):
    result = hoopgw("sessions", "list", *recorded.store_args(), "--format", "jsonl")
    assert result.exit_code == 0, result.output
    listed = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert [s["session_id"] for s in listed] == [recorded.reads_id, recorded.setup_id]
    assert listed[0]["user"] == "agent-1@example.com"
    assert listed[1]["statements"] == len(recorded.setup_statements)
    assert listed[1]["blocked"] == 1
    assert listed[1]["client_app"].startswith("PythonConnector")

    table = hoopgw("sessions", "list", *recorded.store_args(), "--limit", "1")
    assert table.stdout.splitlines()[0].split() == [
        "SESSION", "USER", "START", "DURATION", "STMTS", "ERRORS", "BLOCKED", "CLIENT"
    ]  # fmt: skip
    assert recorded.reads_id in table.stdout and recorded.setup_id not in table.stdout

    nobody = hoopgw("sessions", "list", *recorded.store_args(), "--user", "someone-else")
    assert nobody.exit_code == 0 and nobody.stdout.strip() == ""


def test_catalog_cache_follows_the_store(recorded: Rig, _catalog_cache: Path):
    prefix = f"cache-{uuid.uuid4().hex[:8]}"
    store = tampered_copy(recorded, recorded.setup_id, unchanged, prefix)

    def listed() -> list[dict[str, Any]]:
        result = hoopgw("sessions", "list", *recorded.store_args(store), "--format", "jsonl")
        return [orjson.loads(line) for line in result.stdout.splitlines()]

    def searched() -> Result:
        return hoopgw("search", "--sql", "orders", *recorded.store_args(store), "--format", "jsonl")

    assert [s["session_id"] for s in listed()] == [recorded.setup_id]
    assert len(searched().stdout.splitlines()) == 8
    assert list(_catalog_cache.glob("catalog-*.sqlite3"))

    tampered_copy(recorded, recorded.reads_id, unchanged, prefix)  # a new session arrives
    assert [s["session_id"] for s in listed()] == [recorded.reads_id, recorded.setup_id]
    assert len(searched().stdout.splitlines()) == 11

    tampered_copy(recorded, recorded.setup_id, flip_byte, prefix)  # and one is altered
    altered = searched()
    assert f"session {recorded.setup_id} has a segment that does not decode" in altered.stderr
    assert len(altered.stdout.splitlines()) == 3


def test_store_defaults_come_from_the_environment(recorded: Rig):
    env = {"HOOPGW_STORE": recorded.store, "HOOPGW_S3_ENDPOINT_URL": recorded.endpoint}
    result = hoopgw("sessions", "list", "--format", "json", env=env)
    assert result.exit_code == 0, result.output
    assert {s["session_id"] for s in orjson.loads(result.stdout)} >= {recorded.setup_id}


def test_sessions_show_lists_statements_in_order(recorded: Rig):
    result = hoopgw("sessions", "show", recorded.setup_id, *recorded.store_args())
    assert result.exit_code == 0, result.output
    assert "agent-1@example.com" in result.stdout
    positions = [result.stdout.index(sql) for sql in recorded.setup_statements]
    assert positions == sorted(positions)
    failing = next(line for line in result.stdout.splitlines() if "no_such_table_here" in line)
    assert "error 002003" in failing

    document = orjson.loads(
        hoopgw(
            "sessions", "show", recorded.setup_id, *recorded.store_args(), "--format", "json"
        ).stdout
    )
    bound = document["statements"][4]
    assert bound["bindings"] == {
        "1": {"type": "FIXED", "value": "1"},
        "2": {"type": "TEXT", "value": "ada"},
        "3": {"type": "REAL", "value": "10.5"},
    }
    assert bound["rows"] == 1 and bound["outcome"] == "ok"


def test_search_by_sql_object_and_outcome(recorded: Rig):
    def found(*criteria: str) -> list[tuple[str, int]]:
        result = hoopgw("search", *criteria, *recorded.store_args(), "--format", "jsonl")
        assert result.exit_code == 0, result.output
        return [
            (match["session_id"], match["number"])
            for match in map(orjson.loads, result.stdout.splitlines())
        ]

    assert found("--sql", "WHERE CUSTOMER = ?") == [(recorded.setup_id, 7)]
    by_object = found("--object", f"{recorded.db}.APP.ORDERS")
    assert {sid for sid, _ in by_object} == {recorded.setup_id, recorded.reads_id}
    assert found("--object", "orders") == [(recorded.reads_id, n) for n in (2, 3, 4)] + [
        (recorded.setup_id, n) for n in (4, 5, 6, 7, 8, 9, 10, 12)
    ]
    assert found("--object", "*.NO_SUCH_TABLE_HERE") == [(recorded.setup_id, 11)]
    assert found("--outcome", "error") == [(recorded.setup_id, 11)]
    assert found("--outcome", "blocked") == [(recorded.setup_id, BLOCKED_DROP)]
    assert found("--sql", "orders", "--user", "nobody@example.com") == []

    empty = hoopgw("search", *recorded.store_args())
    assert empty.exit_code == 2 and "give at least one of" in empty.stderr


def test_rollups_written_by_the_gateway_serve_listing_and_search(
    recorded: Rig, gateway_factory, fakesnow_server, connect, agent_token, tmp_path: Path
):
    """A gateway that stops cleanly PUTs its roll-ups; reading through them finds
    exactly what reading every summary and segment finds, from the real records."""
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    store_url = f"s3://{recorded.bucket}/rollups-{uuid.uuid4().hex[:8]}"
    gateway = gateway_factory(
        fakesnow_server.url,
        {
            "hoopgw_store": store_url,
            "hoopgw_s3_endpoint_url": recorded.endpoint,
            "hoopgw_policy": str(policy),
        },
        name=f"rollups-{uuid.uuid4().hex[:8]}",
    )
    db = f"ROLLUP_{uuid.uuid4().hex[:10]}".upper()
    setup = connect(gateway, agent_token)
    run_setup(setup, db)
    setup.close()
    reads = connect(gateway, agent_token)
    run_reads(reads, db)
    reads.close()
    gateway.stop()

    store = open_store(store_url, s3_endpoint_url=recorded.endpoint)
    objects = set(list_versions(store, "summaries/")) | set(list_versions(store, "sessions/"))
    described = {
        (entry.key, entry.version)
        for key, _ in list_versions(store, f"{ROLLUPS}/")
        for entry in decode_rollup(store.get(key))
    }
    assert objects and described == objects

    def reader(**options: Any) -> ArchiveIndex:
        return ArchiveIndex(Archive(store), store_url=store_url, **options)

    direct, rolled = reader(rollups=False), reader(rollup_min_objects=1)
    summaries = direct.list_sessions()
    assert len(summaries) == 2 and rolled.list_sessions() == summaries
    assert list(rolled.digests(summaries, digest_session)) == list(
        direct.digests(summaries, digest_session)
    )
    for query in (
        SearchQuery(sql="orders"),
        SearchQuery(object=f"{db}.APP.ORDERS"),
        SearchQuery(outcome="blocked"),
        SearchQuery(outcome="error"),
    ):
        expected, found = search(direct, query), search(rolled, query)
        assert expected.matches and found.matches == expected.matches
    assert rolled.stats.object_reads == 0 and rolled.stats.rollup_hits > 0
    assert direct.stats.object_reads > 0

    listed = hoopgw("sessions", "list", *recorded.store_args(store_url), "--no-cache")
    assert listed.exit_code == 0 and len(listed.stdout.splitlines()) == 3


# --- verify --------------------------------------------------------------------------


def tampered_copy(rig: Rig, session_id: str, change, prefix: str | None = None) -> str:
    """The session copied under `prefix` (fresh by default), its first segment passed
    through `change`; returns the copy's store URL."""
    s3 = boto3.client("s3", endpoint_url=rig.endpoint)
    prefix = prefix or f"tampered-{uuid.uuid4().hex[:8]}"
    keys = [
        item["Key"]
        for item in s3.list_objects_v2(Bucket=rig.bucket, Prefix="hoopgw/")["Contents"]
        if session_id in item["Key"]
    ]
    segments = sorted(key for key in keys if key.endswith(".jsonl.zst"))
    for key in keys:
        data = s3.get_object(Bucket=rig.bucket, Key=key)["Body"].read()
        if key == segments[0]:
            data = change(data)
        s3.put_object(Bucket=rig.bucket, Key=prefix + key[len("hoopgw") :], Body=data)
    return f"s3://{rig.bucket}/{prefix}"


def unchanged(data: bytes) -> bytes:
    return data


def flip_byte(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :]


def drop_line(number: int):
    def change(data: bytes) -> bytes:
        lines = decompress_segment(data).splitlines(keepends=True)
        del lines[number - 1]
        return compress_lines(b"".join(lines))

    return change


def swap_lines(number: int):
    def change(data: bytes) -> bytes:
        lines = decompress_segment(data).splitlines(keepends=True)
        lines[number - 1], lines[number] = lines[number], lines[number - 1]
        return compress_lines(b"".join(lines))

    return change


def test_verify_intact_session(recorded: Rig):
    result = hoopgw("verify", recorded.setup_id, *recorded.store_args())
    assert result.exit_code == 0, result.output
    assert f"session {recorded.setup_id}: intact" in result.stdout


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (flip_byte, "zstd"),
        (drop_line(4), "seq 4 where 3 was expected (record missing or moved)"),
        (swap_lines(4), "seq 4 where 3 was expected (record missing or moved)"),
    ],
    ids=["flipped-byte", "deleted-record", "reordered-record"],
)
def test_verify_reports_what_is_broken_and_where(recorded: Rig, change, expected: str):
    store = tampered_copy(recorded, recorded.setup_id, change)

    result = hoopgw("verify", recorded.setup_id, *recorded.store_args(store))
    as_json = hoopgw("verify", recorded.setup_id, *recorded.store_args(store), "--format", "json")

    assert result.exit_code == 1
    assert f"session {recorded.setup_id}: BROKEN" in result.stdout
    problems = [line for line in result.stdout.splitlines() if line.startswith("  problem:")]
    assert any(expected in line and ".jsonl.zst" in line for line in problems), result.stdout
    assert as_json.exit_code == 1 and orjson.loads(as_json.stdout)["ok"] is False


# --- session ids, help -------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad_id",
    ["../../etc/passwd", "0190f3c4-7b1a-7c2e-9d4f-1a2b3c4d5e6f/..", "019", "x" * 300],
)
@pytest.mark.parametrize(
    "command", [["sessions", "show"], ["verify"], ["replay", "--dry-run"]], ids=" ".join
)
def test_malformed_session_id_is_refused_before_any_store_access(command, bad_id):
    # an endpoint nothing listens on: touching the store would fail differently
    result = hoopgw(
        *command, bad_id, "--store", "s3://bucket/x", "--s3-endpoint-url", "http://127.0.0.1:9"
    )
    assert result.exit_code == 2
    assert "invalid session id" in result.stderr
    assert "UUIDv7 like 0190f3c4-7b1a-7c2e-9d4f-1a2b3c4d5e6f" in result.stderr


@pytest.mark.parametrize("command", [["sessions", "show"], ["verify"], ["replay", "--dry-run"]])
def test_unknown_session_is_a_clear_error(recorded: Rig, command):
    result = hoopgw(*command, UNKNOWN_SESSION, *recorded.store_args())
    assert result.exit_code == 2
    assert f"session {UNKNOWN_SESSION} is not in the archive" in result.stderr


def test_every_command_has_help_with_an_example():
    commands = [
        [],
        ["sessions"],
        ["sessions", "list"],
        ["sessions", "show"],
        ["search"],
        ["verify"],
        ["replay"],
        ["export"],
        ["inspect"],
        ["token-key"],
        ["checkpoint-key"],
        ["upstream-keys"],
        ["approvals"],
        ["approvals", "list"],
        ["approvals", "show"],
        ["approvals", "approve"],
        ["approvals", "deny"],
    ]
    hoopgw_bin = str(Path(sys.executable).parent / "hoopgw")
    for command in commands:
        done = subprocess.run(
            [hoopgw_bin, *command, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "COLUMNS": "100"},
        )
        assert done.returncode == 0, done.stderr
        assert "Example" in done.stdout, command
        if command[:1] not in (
            [],
            ["sessions"],
            ["token-key"],
            ["checkpoint-key"],
            ["upstream-keys"],
            ["approvals"],
        ):
            assert "--store" in done.stdout, command
    listed = (Path(__file__).parents[1] / "docs" / "cli.md").read_text()
    for name in main.commands:
        assert f"`hoopgw {name}" in listed, name


def test_unreadable_store_is_a_clear_error(recorded: Rig, tmp_path: Path):
    missing_bucket = hoopgw(
        "sessions", "list", "--store", "s3://no-such-bucket-here/x", "--s3-endpoint-url",
        recorded.endpoint,
    )  # fmt: skip
    missing_dir = hoopgw("search", "--sql", "x", "--store", f"file:{tmp_path / 'nothing'}")
    bad_url = hoopgw("verify", UNKNOWN_SESSION, "--store", "ftp://host/x")

    assert missing_bucket.exit_code == 2
    assert "cannot read the recordings" in missing_bucket.stderr
    assert "NoSuchBucket" in missing_bucket.stderr
    assert missing_dir.exit_code == 2
    assert f"no recordings at {tmp_path / 'nothing'}" in missing_dir.stderr
    assert not (tmp_path / "nothing").exists()
    assert bad_url.exit_code == 2 and "unsupported store URL" in bad_url.stderr


# --- what a newcomer trips on ----------------------------------------------------------


def test_session_ids_in_upper_case_and_unique_prefixes(recorded: Rig):
    upper = hoopgw("sessions", "show", recorded.setup_id.upper(), *recorded.store_args())
    assert upper.exit_code == 0, upper.output
    assert f"session:    {recorded.setup_id}" in upper.stdout

    # the two sessions were recorded seconds apart: their ids share the first 8 digits
    shared = ""
    for mine, theirs in zip(recorded.setup_id, recorded.reads_id, strict=True):
        if mine != theirs:
            break
        shared += mine
    assert len(shared.replace("-", "")) >= 4
    unique = recorded.setup_id[: len(shared) + 1]
    by_prefix = hoopgw("sessions", "show", unique, *recorded.store_args())
    assert by_prefix.exit_code == 0, by_prefix.output
    assert f"session:    {recorded.setup_id}" in by_prefix.stdout
    replayed = hoopgw("replay", unique.upper(), "--dry-run", *recorded.store_args())
    assert replayed.exit_code == 0, replayed.output
    assert f"session {recorded.setup_id}" in replayed.stdout
    verified = hoopgw("verify", unique.upper(), *recorded.store_args())
    assert verified.exit_code == 0, verified.output
    assert f"session {recorded.setup_id}" in verified.stdout

    ambiguous = hoopgw("sessions", "show", shared, *recorded.store_args())
    assert ambiguous.exit_code == 2
    assert f"session id prefix {shared} is ambiguous" in ambiguous.stderr
    assert recorded.setup_id in ambiguous.stderr and recorded.reads_id in ambiguous.stderr

    unknown = hoopgw("sessions", "show", "0190f3c4", *recorded.store_args())
    assert unknown.exit_code == 2
    assert "no recorded session id starts with 0190f3c4" in unknown.stderr


def test_sessions_show_says_whether_the_chain_is_intact(recorded: Rig):
    intact = hoopgw("sessions", "show", recorded.setup_id, *recorded.store_args())
    chain = next(line for line in intact.stdout.splitlines() if line.startswith("chain:"))
    assert "intact" in chain

    store = tampered_copy(recorded, recorded.setup_id, drop_line(4))
    tampered = hoopgw("sessions", "show", recorded.setup_id, *recorded.store_args(store))
    assert tampered.exit_code == 0, tampered.output
    chain = next(line for line in tampered.stdout.splitlines() if line.startswith("chain:"))
    assert "BROKEN" in chain and "run hoopgw verify" in chain
    assert f"warning: session {recorded.setup_id}: BROKEN" in tampered.stderr

    unverified = hoopgw(
        "sessions", "show", recorded.setup_id, *recorded.store_args(store), "--no-verify"
    )
    assert "chain:      not verified (--no-verify); run hoopgw verify" in unverified.stdout


def test_error_codes_are_shown_one_way(recorded: Rig):
    shown = hoopgw("sessions", "show", recorded.setup_id, *recorded.store_args())
    searched = hoopgw("search", "--outcome", "error", *recorded.store_args(), "--format", "json")
    assert "error 002003" in shown.stdout and "error 2003" not in shown.stdout
    (match,) = orjson.loads(searched.stdout)
    assert match["error_code"] == "002003" and match["outcome"] == "error 002003"


def test_a_backwards_time_range_is_an_error_not_an_empty_list(recorded: Rig):
    for command in (["search"], ["sessions", "list"]):
        result = hoopgw(*command, "--since", "1h", "--until", "2h", *recorded.store_args())
        assert result.exit_code == 2, command
        assert "is not before --until" in result.stderr and "nothing can match" in result.stderr


def test_a_directory_without_an_archive_and_a_bare_store_path(recorded: Rig, tmp_path: Path):
    empty = tmp_path / "not-an-archive"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    result = hoopgw("sessions", "list", "--store", f"file:{empty}")
    assert result.exit_code == 2
    assert f"no recordings at {empty}: the directory exists but holds no hoopgw archive" in (
        result.stderr
    )
    assert "no sessions match" not in result.stderr

    by_env = hoopgw("sessions", "list", env={"HOOPGW_STORE": str(empty)})
    assert by_env.exit_code == 2 and "check $HOOPGW_STORE" in by_env.stderr
    bad_env = hoopgw("sessions", "list", env={"HOOPGW_STORE": "ftp://host/x"})
    assert bad_env.exit_code == 2
    assert "$HOOPGW_STORE" in bad_env.stderr and "'--store'" not in bad_env.stderr


def test_a_bare_absolute_store_path_is_a_file_store(
    tmp_path: Path, gateway_factory, connect, fakesnow_server, agent_token
):
    gateway = gateway_factory(fakesnow_server.url, {}, name="cli-bare-path")
    connection = connect(gateway, agent_token)
    connection.cursor().execute("select 1")
    connection.close()
    gateway.stop()
    store = gateway.workdir / "store"
    listed = hoopgw("sessions", "list", "--format", "jsonl", env={"HOOPGW_STORE": str(store)})
    assert listed.exit_code == 0, listed.output
    assert len(listed.stdout.splitlines()) == 1


def test_a_refused_login_is_listed_with_its_reason_and_found_as_blocked(
    gateway_factory, connect, fakesnow_server
):
    """A refused login has no verified caller: it is counted in its gateway's refusal window
    (a `refusal_summary` in a session of its own), which the CLI lists, shows and searches."""
    refused_token = f"not-a-token-{uuid.uuid4().hex}"
    gateway = gateway_factory(fakesnow_server.url, {}, name="cli-refused-login")
    with pytest.raises(snowflake.connector.errors.DatabaseError):
        connect(gateway, refused_token)
    gateway.stop()
    store = ["--store", f"file:{gateway.workdir / 'store'}"]
    listed = stack.wait_until(
        lambda: hoopgw("sessions", "list", *store, "--format", "jsonl").stdout.splitlines(),
        RECORDING_DEADLINE,
        "the refused login in the store",
    )
    (summary,) = map(orjson.loads, listed)
    assert summary["refused"] is True and summary["end_reason"] == "refusal_window"
    refused = summary["refusals"]["refused"]
    assert refused >= 1 and summary["refusals"]["endpoints"] == [
        {"endpoint": "login", "count": refused}
    ]
    (top,) = summary["refusals"]["top_reasons"]
    assert top["endpoint"] == "login" and top["reason"] and top["count"] == refused
    row = hoopgw("sessions", "list", *store).stdout.splitlines()[1]
    assert "(not verified)" in row and "refused" in row and "(open)" not in row
    assert f"refusals: login x{refused}" in row

    shown = hoopgw("sessions", "show", summary["session_id"], *store)
    header = dict(
        line.split(":", 1) for line in shown.stdout.splitlines() if line and ":" in line[:12]
    )
    assert header["user"].strip() == "(not verified)"
    assert "(refusal window closed)" in header["end"]
    assert header["refusals"].strip().startswith(f"{refused} without a verified caller")
    assert f"{refused} x login" in header["reason"] and top["reason"] in header["reason"]
    assert "login refused by authentication" in header["refused"]
    assert "(from 127.0.0.1)" in header["refused"]
    assert "intact" in header["chain"]

    blocked = hoopgw("search", "--outcome", "blocked", *store, "--format", "jsonl")
    matches = list(map(orjson.loads, blocked.stdout.splitlines()))
    assert len(matches) == refused
    for match in matches:
        assert match["session_id"] == summary["session_id"] and match["outcome"] == "blocked"
        assert match["endpoint"] == "login" and match["message"] == top["reason"]
        assert match["user"] == "(not verified)" and match["ts"]
    table = hoopgw("search", "--outcome", "blocked", "--since", "1d", *store)
    assert "(login refused by " in table.stdout
    assert "(not verified)" in table.stdout
    outside = hoopgw("search", "--outcome", "blocked", "--until", "1d", *store)
    assert "login refused" not in outside.stdout

    assert refused_token not in orjson.dumps(stored_records(gateway.workdir / "store")).decode()
    assert refused_token not in shown.stdout + blocked.stdout + gateway.log()
