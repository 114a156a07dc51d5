"""The recorder end to end: the real connector, a real gateway, moto's S3 server.

Every test drives `mitmdump -s addons/gateway.py` with snowflake-connector-python
against the strict upstream (tests/strict_upstream.py, in front of fakesnow),
which logs every request it receives, so each test knows exactly which
statements reached Snowflake and can hold the recording in S3 to that list.
"""

from __future__ import annotations

import base64
import json
import secrets as secrets_module
import threading
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
import zstandard
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from snowflake.connector import DatabaseError, ProgrammingError

from hoopgw.addons.query_ids import QueryIdBinder, session_scope
from hoopgw.addons.session_tokens import decode_token_key
from hoopgw.recorder.catalog import Archive
from hoopgw.recorder.index import ArchiveIndex
from hoopgw.recorder.secrets import new_token_key
from hoopgw.recorder.segment import compress_lines, decompress_segment
from hoopgw.recorder.store import open_store
from tests import stack
from tests.bodies import write_service_key
from tests.strict_upstream import Received, StrictUpstream

ACCOUNT = "xy12345.eu-west-1"
SERVICE_USER = "svc_hoopgw"
TOKEN_KEY_ENV = "HOOPGW_E2E_TOKEN_KEY"
PASSWORD_ENV = "HOOPGW_E2E_UPSTREAM_PASSWORD"
PREFIX = "hoopgw"
DEADLINE = 30.0
QUERY_PATH = "/queries/v1/query-request"


@dataclass(frozen=True)
class ServiceKey:
    key: rsa.RSAPrivateKey
    path: Path
    pem: str = field(repr=False)


class SecretEnv(dict[str, str]):
    """Environment variables holding secrets: shown by name only in tracebacks."""

    def __repr__(self) -> str:
        return f"SecretEnv({sorted(self)})"


@dataclass(frozen=True)
class GatewaySecrets:
    """The gateway's token key and upstream password; kept out of reprs, so out of test output."""

    token_key: str = field(repr=False)
    upstream_password: str = field(repr=False)

    @property
    def env(self) -> SecretEnv:
        return SecretEnv({TOKEN_KEY_ENV: self.token_key, PASSWORD_ENV: self.upstream_password})


@pytest.fixture(scope="module")
def service_key(workdir: Path) -> ServiceKey:
    path = workdir / f"recording-key-{uuid.uuid4().hex[:6]}.p8"
    key, pem = write_service_key(path)
    return ServiceKey(key, path, pem.decode())


@pytest.fixture(scope="module")
def gateway_secrets() -> GatewaySecrets:
    return GatewaySecrets(new_token_key(), "upstream-pw-" + uuid.uuid4().hex)


@pytest.fixture(scope="module")
def strict(fakesnow_server, service_key, gateway_secrets) -> Iterator[StrictUpstream]:
    """Accepts the gateway's key-pair JWT or its password, nothing else."""
    upstream = StrictUpstream(
        fakesnow_server.url,
        ACCOUNT,
        SERVICE_USER,
        public_key=service_key.key.public_key(),
        password=gateway_secrets.upstream_password,
    ).start()
    yield upstream
    upstream.stop()


def recording_options(
    oidc: stack.OidcProvider,
    store: str,
    s3_endpoint: str | None,
    *,
    key: ServiceKey | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """A gateway in front of the strict upstream, logging in with the key (or the password)."""
    options: dict[str, Any] = {
        "hoopgw_oidc_issuer": oidc.issuer,
        "hoopgw_oidc_audience": "hoopgw",
        "hoopgw_allowed_groups": ["agents"],
        "hoopgw_role_map": ["agents=AGENT"],
        "hoopgw_upstream_account": ACCOUNT,
        "hoopgw_upstream_user": SERVICE_USER,
        "hoopgw_upstream_secondary_roles": "none",
        "hoopgw_upstream_private_key": f"file:{key.path}" if key else "",
        "hoopgw_upstream_password": "" if key else f"env:{PASSWORD_ENV}",
        "hoopgw_upstream_oauth_token": "",
        "hoopgw_token_key": f"env:{TOKEN_KEY_ENV}",
        "hoopgw_store": store,
        **overrides,
    }
    if s3_endpoint is not None:
        options["hoopgw_s3_endpoint_url"] = s3_endpoint
    return options


def archive_of(bucket: str, endpoint: str) -> Archive:
    return Archive(open_store(f"s3://{bucket}/{PREFIX}", s3_endpoint_url=endpoint))


def records_by_session(archive: Archive) -> dict[str, list[dict[str, Any]]]:
    return {
        s.session_id: archive.read_session(s.session_id)
        for s in ArchiveIndex(archive, store_url="").list_sessions()
    }


def ended_sessions(archive: Archive) -> int:
    return sum(
        1 for summary in ArchiveIndex(archive, store_url="").list_sessions() if summary.ended
    )


def spool_segments(directory: Path) -> list[Path]:
    """Segment files waiting in a spool (open or sealed, not yet uploaded)."""
    return [p for p in directory.glob("*") if p.suffix in (".open", ".jsonl")]


def received_statements(received: Iterable[Received]) -> list[dict[str, Any]]:
    """The query-request bodies the upstream received, in order."""
    return [
        json.loads(r.body)
        for r in received
        if r.method == "POST" and r.path.partition("?")[0] == QUERY_PATH
    ]


def statement_requests(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["kind"] in ("request", "refusal") and r.get("sql") is not None]


# --- 1. a mixed session, statement by statement ----------------------------------------


@dataclass
class Ran:
    """One statement as the client saw it."""

    sql: str
    query_id: str | None = None
    rows: int | None = None
    error: ProgrammingError | None = None
    is_async: bool = False


def run_mixed_session(connection: Any, db: str) -> list[Ran]:
    """DDL, DML, bound SELECT, executemany, a failing statement and an async query."""
    cursor = connection.cursor()
    ran: list[Ran] = []

    def execute(sql: str, params: Any = None, *, many: bool = False) -> None:
        step = Ran(sql)
        try:
            if many:
                cursor.executemany(sql, params)
            else:
                cursor.execute(sql, params)
        except ProgrammingError as exc:
            step.error = exc
            step.query_id = exc.sfqid
        else:
            step.query_id = cursor.sfqid
            step.rows = len(cursor.fetchall())
        ran.append(step)

    execute(f"create database {db}")
    execute(f"create schema {db}.app")
    execute(f"use schema {db}.app")
    execute("create table orders (id int, customer varchar, amount float)")
    execute("insert into orders values (?, ?, ?)", (1, "ada", 10.5))
    execute("insert into orders values (?, ?, ?)", [(2, "bob", 20.0), (3, "cy", 30.25)], many=True)
    execute("select id, customer from orders where amount > ? order by id", (15,))
    execute("update orders set amount = amount * ? where customer = ?", (2, "bob"))
    execute("select * from no_such_table_anywhere")
    cursor.execute_async("select count(*), sum(amount) from orders")
    query_id = cursor.sfqid
    ran.append(Ran("select count(*), sum(amount) from orders", query_id=query_id, is_async=True))
    cursor.get_results_from_sfqid(query_id)
    fetched = cursor.fetchall()
    assert fetched == [(3, 10.5 + 40.0 + 30.25)]
    # the connector fetches an async result with a statement of its own
    ran.append(Ran(f"select * from table(result_scan('{query_id}'))", query_id=query_id, rows=1))
    execute("delete from orders where id = ?", (3,))
    execute("drop table orders")
    return ran


def children_running(parent: int, module: str) -> list[int]:
    """Child processes of `parent` running `python -m module`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # it ended meanwhile
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and module.encode() in command:
            found.append(int(entry.name))
    return found


def test_mixed_session_is_in_s3_statement_by_statement(
    gateway_factory,
    strict,
    oidc,
    service_key,
    gateway_secrets,
    moto_s3,
    s3_bucket,
    connect,
    unique_name,
) -> None:
    gateway = gateway_factory(
        strict.url,
        recording_options(oidc, f"s3://{s3_bucket}/{PREFIX}", moto_s3, key=service_key),
        env=gateway_secrets.env,
        name=f"mixed-{s3_bucket}",
    )
    connection = connect(gateway, oidc.mint("ada", ["agents"], email="ada@example.com"))
    mark = strict.mark()
    ran = run_mixed_session(connection, unique_name("rec"))
    upstream_saw = received_statements(strict.received_since(mark))
    connection.close()

    archive = archive_of(s3_bucket, moto_s3)
    stack.wait_until(lambda: ended_sessions(archive) == 1, DEADLINE, "the session in S3")
    [summary] = ArchiveIndex(archive, store_url="").list_sessions()
    records = archive.read_session(summary.session_id)

    assert [r["seq"] for r in records] == list(range(len(records)))
    assert records[0]["kind"] == "request" and records[0]["endpoint"] == "login"
    assert records[1]["kind"] == "session_start"
    assert records[1]["caller"]["subject"] == "ada"
    assert records[1]["caller"]["role"] == "AGENT"
    assert records[1]["authenticator"] == "SNOWFLAKE_JWT"
    assert records[-1]["kind"] == "session_end" and records[-1]["reason"] == "logout"

    requests = statement_requests(records)
    responses = {r["flow_id"]: r for r in records if r["kind"] == "response"}
    # the client holds session-bound query ids; the record keeps Snowflake's (addons/query_ids.py)
    binder = QueryIdBinder([decode_token_key(gateway_secrets.token_key)])

    def raw(bound: str) -> str:
        return binder.unbind(bound, session_scope(summary.session_id))

    async_id = next(step.query_id for step in ran if step.is_async)
    assert [r["sql"] for r in requests] == [
        step.sql.replace(async_id, raw(async_id)) for step in ran
    ]
    # exactly what reached Snowflake, bindings included, in the same order
    assert [(r["sql"], r.get("bindings")) for r in requests] == [
        (body["sqlText"], body.get("bindings")) for body in upstream_saw
    ]
    sequence_ids = [r["sequence_id"] for r in requests]
    assert sequence_ids == sorted(sequence_ids)

    assert requests[4]["bindings"] == {
        "1": {"type": "FIXED", "value": "1"},
        "2": {"type": "TEXT", "value": "ada"},
        "3": {"type": "REAL", "value": "10.5"},
    }
    assert requests[5]["bindings"] == {
        "1": {"type": "FIXED", "value": ["2", "3"]},
        "2": {"type": "TEXT", "value": ["bob", "cy"]},
        "3": {"type": "REAL", "value": ["20.0", "30.25"]},
    }
    bound_select = requests[6]
    assert bound_select["sql"] == "select id, customer from orders where amount > ? order by id"
    assert bound_select["bindings"] == {"1": {"type": "FIXED", "value": "15"}}
    assert "bindings" not in requests[0]

    for step, request in zip(ran, requests, strict=True):
        response = responses[request["flow_id"]]
        assert response["seq"] > request["seq"]
        assert request["async"] is step.is_async
        if step.error is not None:
            assert response["success"] is False, step.sql
            assert response["error_code"] == f"{step.error.errno:06d}"
            assert response["sql_state"] == step.error.sqlstate
            assert response["message"] in step.error.msg
        else:
            assert response["success"] is True, step.sql
            assert response["query_id"] == raw(step.query_id), step.sql
        if step.rows is not None:
            assert response["total"] == step.rows, step.sql
    answer = responses[bound_select["flow_id"]]
    assert (answer["columns"], answer["total"]) == (["ID", "CUSTOMER"], 2)

    polls = [r for r in records if r["kind"] == "request" and r["endpoint"] == "monitoring"]
    assert polls and all(r["query_id"] == raw(async_id) for r in polls)

    assert summary.statements == len(ran)
    assert summary.errors == sum(1 for step in ran if step.error is not None) == 1
    assert summary.subject == "ada" and summary.role == "AGENT"
    report = archive.verify_session(summary.session_id)
    assert report.ok, [str(p) for p in report.problems]
    assert report.records == len(records)

    # the chain is what makes the check meaningful: change one statement and it fails
    [key] = archive.segments(summary.session_id)
    lines = decompress_segment(archive.store.get(key))
    archive.store.put(
        key, compress_lines(lines.replace(b"delete from orders", b"select 1 from orders"))
    )
    tampered = archive.verify_session(summary.session_id)
    assert not tampered.ok
    assert any("altered" in p.message for p in tampered.problems)

    # S3 was called from the gateway's store helper, which holds none of its secrets
    assert gateway.proc.process is not None
    [helper] = children_running(gateway.proc.process.pid, "hoopgw.recorder.store_helper")
    environment = Path(f"/proc/{helper}/environ").read_bytes()
    assert b"AWS_ACCESS_KEY_ID=" in environment
    leaked = [
        name
        for name, value in gateway_secrets.env.items()
        if name.encode() in environment or value.encode() in environment
    ]
    assert not leaked
    assert gateway.stop() == 0
    assert not Path(f"/proc/{helper}").exists()


# --- 2. no secret anywhere -------------------------------------------------------------


def fragments(secret: str, size: int = 16) -> list[str]:
    """Overlapping pieces of a secret: an error message may quote only part of it."""
    if len(secret) <= size:
        return [secret]
    return [secret[start : start + size] for start in range(0, len(secret) - size + 1, size // 2)]


def leaked(haystack: bytes, secrets: dict[str, list[str]]) -> list[str]:
    """Names (never values) of the secrets found in `haystack`."""
    return [
        name
        for name, needles in secrets.items()
        if any(needle.encode() in haystack for needle in needles)
    ]


def bucket_bytes(bucket: str, endpoint: str) -> bytes:
    """Every stored object, segments and roll-ups (which may hold several frames)
    decompressed."""
    client = boto3.client("s3", endpoint_url=endpoint)
    blobs = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", ()):
            data = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            if item["Key"].endswith(".rollup.zst"):
                data = (
                    zstandard.ZstdDecompressor()
                    .decompressobj(read_across_frames=True)
                    .decompress(data)
                )
            elif item["Key"].endswith(".zst"):
                data = decompress_segment(data)
            blobs.append(data)
    return b"\n".join(blobs)


def directory_bytes(directory: Path) -> bytes:
    return b"\n".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


def private_key_pieces(key: ServiceKey) -> list[str]:
    """The PEM's base64 lines and the DER key as one base64 string."""
    lines = [line for line in key.pem.splitlines() if line and not line.startswith("-----")]
    der = key.key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return [*lines, base64.b64encode(der).decode()[:64]]


def test_no_secret_is_stored_in_the_spool_in_s3_or_in_the_log(
    gateway_factory,
    strict,
    oidc,
    service_key,
    gateway_secrets,
    moto_s3,
    s3_bucket,
    connect,
    unique_name,
) -> None:
    store = f"s3://{s3_bucket}/{PREFIX}"
    gateways = {
        "key-pair": gateway_factory(
            strict.url,
            recording_options(oidc, store, moto_s3, key=service_key),
            env=gateway_secrets.env,
            name=f"secrets-keypair-{s3_bucket}",
        ),
        "password": gateway_factory(
            strict.url,
            recording_options(oidc, store, moto_s3),
            env=gateway_secrets.env,
            name=f"secrets-password-{s3_bucket}",
        ),
    }
    secrets: dict[str, list[str]] = {
        "upstream password": fragments(gateway_secrets.upstream_password),
        "upstream private key": private_key_pieces(service_key),
        "token key": [gateway_secrets.token_key],
    }
    live_spools: list[bytes] = []
    mark = strict.mark()
    for name, gateway in gateways.items():
        caller_token = oidc.mint(f"secret-keeper-{name}", ["agents"])
        secrets[f"{name}: caller's OIDC token"] = [caller_token, caller_token.rsplit(".", 1)[1]]
        connection = connect(gateway, caller_token)
        cursor = connection.cursor()
        assert cursor.execute("select 1").fetchone() == (1,)
        user = unique_name("leak_user")
        literals = {kind: f"{kind}-{secrets_module.token_hex(60)}" for kind in "abcd"}
        statements = [
            f"create user {user} password = '{literals['a']}' must_change_password = false",
            f"alter user {user} set password = '{literals['b']}'",
            # the parser's error quotes the 100 characters before the error: only the literal
            f"select 1 as n where password = '{literals['c']}' and (1 = 1",
        ]
        for sql in statements:
            with pytest.raises(ProgrammingError):
                cursor.execute(sql)
        # a credential passed as a bind value is as secret as a literal
        with pytest.raises(ProgrammingError):
            cursor.execute(f"alter user {user} set password = ?", (literals["d"],))
        for kind, literal in literals.items():
            secrets[f"{name}: PASSWORD literal {kind}"] = fragments(literal)
        sealed = [connection.rest.token, connection.rest.master_token]
        assert strict.expire_sessions() >= 1
        assert cursor.execute("select 2").fetchone() == (2,)
        sealed += [connection.rest.token, connection.rest.master_token]
        renewed = sealed[0] != sealed[2]
        assert renewed, "the driver did not renew its session"
        secrets[f"{name}: sealed tokens"] = sealed
        live_spools.append(directory_bytes(gateway.workdir / "spool"))
        connection.close()

    received = strict.received_since(mark)
    logins = [json.loads(r.body)["data"] for r in received if r.path.startswith("/session/v1/")]
    assert {login["AUTHENTICATOR"] for login in logins} == {"SNOWFLAKE_JWT", "SNOWFLAKE"}
    key_pair_jwts = [login["TOKEN"] for login in logins if "TOKEN" in login]
    secrets["key-pair JWT"] = [*key_pair_jwts, *(jwt.rsplit(".", 1)[1] for jwt in key_pair_jwts)]
    issued = sorted(strict.issued_tokens())
    secrets["upstream session and master tokens"] = issued
    issued_count = len(issued)
    assert issued_count >= 6, "two logins and two renewals should have issued tokens"

    archive = archive_of(s3_bucket, moto_s3)
    stack.wait_until(lambda: ended_sessions(archive) == 2, DEADLINE, "both sessions in S3")
    for gateway in gateways.values():
        assert gateway.stop() == 0
    stored = bucket_bytes(s3_bucket, moto_s3)
    masked_literals = stored.count(b"password = '[REDACTED]'")
    assert masked_literals >= 6, "the statements with literals were not recorded"
    places = {
        "S3 (segments and summaries)": stored,
        **{f"{n} spool while live": data for n, data in zip(gateways, live_spools, strict=True)},
        **{
            f"{n} spool after stop": directory_bytes(g.workdir / "spool")
            for n, g in gateways.items()
        },
        **{f"{n} log": g.log().encode() for n, g in gateways.items()},
    }
    assert all(live for live in live_spools), "the spool held nothing to check"
    found = {place: leaked(data, secrets) for place, data in places.items()}
    assert found == {place: [] for place in places}


# --- 3. SIGKILL in the middle of a stream of statements ----------------------------------


class StatementStream:
    """Threads that each run numbered statements on their own connection until told to stop."""

    def __init__(self, connections: list[Any], tag: str) -> None:
        self.connections = connections
        self.tag = tag
        self.lock = threading.Lock()
        self.acknowledged: list[list[str]] = [[] for _ in connections]
        self.failures: list[BaseException] = []
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(number,), daemon=True)
            for number in range(len(connections))
        ]

    def sql(self, thread: int, number: int) -> str:
        return f"select '{self.tag}-{thread}-{number}' as marker"

    def _run(self, thread: int) -> None:
        cursor = self.connections[thread].cursor()
        for number in range(10_000):
            if self.stop.is_set():
                return
            sql = self.sql(thread, number)
            try:
                cursor.execute(sql)
            except Exception as exc:
                with self.lock:
                    self.failures.append(exc)
                return
            with self.lock:
                self.acknowledged[thread].append(sql)

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def total(self) -> int:
        with self.lock:
            return sum(len(done) for done in self.acknowledged)

    def join(self, timeout: float) -> None:
        """Wait for the threads, and for the connector's query-cancel timers they armed."""
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout)
        assert not any(thread.is_alive() for thread in self.threads)
        for timer in threading.enumerate():
            if isinstance(timer, threading.Timer):
                timer.join(timeout)


# the connector's query-cancel timers send abort-request, which fails against the dead gateway
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_sigkill_mid_stream_loses_and_repeats_nothing(
    gateway_factory,
    strict,
    oidc,
    service_key,
    gateway_secrets,
    moto_s3,
    s3_bucket,
    connect,
    workdir,
) -> None:
    spool = workdir / f"crash-spool-{s3_bucket}"
    options = recording_options(
        oidc, f"s3://{s3_bucket}/{PREFIX}", moto_s3, key=service_key, hoopgw_spool_dir=str(spool)
    )
    first = gateway_factory(
        strict.url, options, env=gateway_secrets.env, name=f"crash-1-{s3_bucket}"
    )
    archive = archive_of(s3_bucket, moto_s3)

    finished = connect(first, oidc.mint("done-before", ["agents"]))
    for number in range(3):
        finished.cursor().execute(f"select {number} as finished_before_the_crash")
    finished.close()
    stack.wait_until(lambda: ended_sessions(archive) == 1, DEADLINE, "the finished session")
    [finished_session] = ArchiveIndex(archive, store_url="").list_sessions()
    finished_records = archive.read_session(finished_session.session_id)

    tag = f"crash-{uuid.uuid4().hex[:8]}"
    connections = [
        connect(first, oidc.mint(f"streamer-{n}", ["agents"]), network_timeout=2) for n in range(3)
    ]
    stream = StatementStream(connections, tag)
    mark = strict.mark()
    stream.start()
    stack.wait_until(lambda: stream.total() >= 45, DEADLINE, "45 acknowledged statements")
    first.kill()
    assert spool_segments(spool), "the killed gateway left nothing to recover"
    # the killed gateway's records were in a WAL file prepared ahead: lines, then zeros
    assert any(
        tag.encode() in (lines := wal.read_bytes().rstrip(b"\0"))
        and wal.stat().st_size > len(lines)
        for wal in spool.glob("wal-*.log")
    ), "no record in a prepared WAL file"

    second = gateway_factory(
        strict.url, options, env=gateway_secrets.env, name=f"crash-2-{s3_bucket}"
    )
    stack.wait_until(lambda: not spool_segments(spool), DEADLINE, "the recovered spool to empty")
    assert "leftover segments queued for upload" in second.log()
    stream.join(DEADLINE)
    assert len(stream.failures) == len(connections), "every thread should have lost the gateway"

    reached = [
        body["sqlText"]
        for body in received_statements(strict.received_since(mark))
        if tag in body["sqlText"]
    ]
    assert max(Counter(reached).values()) == 1
    acknowledged = [sql for done in stream.acknowledged for sql in done]
    assert set(acknowledged) <= set(reached)

    sessions = records_by_session(archive)
    assert len(sessions) == 4
    assert sessions[finished_session.session_id] == finished_records
    records = [record for stream_records in sessions.values() for record in stream_records]
    requests = [r for r in statement_requests(records) if tag in r["sql"]]
    recorded = Counter(r["sql"] for r in requests)
    assert max(recorded.values()) == 1, "a statement is recorded twice"
    assert max(Counter(r["flow_id"] for r in records if r["kind"] == "request").values()) == 1
    assert set(reached) <= set(recorded), "a statement reached Snowflake without a record"
    # a request record is durable before the request goes upstream: at most the one
    # statement each thread had in flight is recorded without having reached Snowflake
    assert len(set(recorded) - set(reached)) <= len(connections)
    answered = {r["flow_id"] for r in records if r["kind"] == "response"}
    flow_of = {r["sql"]: r["flow_id"] for r in requests}
    for done in stream.acknowledged:
        # only the newest answer of a thread may not have been fsync'd yet
        assert all(flow_of[sql] in answered for sql in done[:-1])
    for session_id in sessions:
        report = archive.verify_session(session_id)
        assert report.ok, [str(problem) for problem in report.problems]
    assert second.stop() == 0


# --- 4. an S3 outage, and a spool that fills up -----------------------------------------


def create_bucket(endpoint: str, bucket: str) -> None:
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)


def test_s3_outage_loses_nothing_and_a_full_spool_refuses_statements(
    gateway_factory, strict, oidc, service_key, gateway_secrets, connect, workdir
) -> None:
    port = stack.free_port()
    moto, endpoint = stack.start_moto(workdir, port)
    bucket = f"outage-{uuid.uuid4().hex[:12]}"
    create_bucket(endpoint, bucket)
    spool = workdir / f"outage-spool-{bucket}"
    try:
        gateway = gateway_factory(
            strict.url,
            recording_options(
                oidc,
                f"s3://{bucket}/{PREFIX}",
                endpoint,
                key=service_key,
                hoopgw_spool_dir=str(spool),
                hoopgw_spool_max_bytes=48 * 1024,
            ),
            env=gateway_secrets.env,
            name=f"outage-{bucket}",
        )
        tag = f"outage-{uuid.uuid4().hex[:8]}"
        mark = strict.mark()
        before = connect(gateway, oidc.mint("before-outage", ["agents"]))
        cursor = before.cursor()
        for number in range(3):
            assert cursor.execute(f"select '{tag}-a-{number}'").fetchone() == (f"{tag}-a-{number}",)
        moto.stop()
        for number in range(3, 6):
            assert cursor.execute(f"select '{tag}-a-{number}'").fetchone() == (f"{tag}-a-{number}",)
        before.close()
        stack.wait_until(lambda: "failed, retrying" in gateway.log(), DEADLINE, "an upload to fail")
        assert spool_segments(spool), "the segment should wait in the spool"

        during = connect(gateway, oidc.mint("during-outage", ["agents"]))
        cursor = during.cursor()
        refused: DatabaseError | None = None
        for number in range(100):
            sql = f"select '{tag}-b-{number}'"
            try:
                cursor.execute(sql)
            except DatabaseError as exc:
                refused = exc
                break
        assert refused is not None, "the spool limit was never reached"
        assert refused.errno == 399002
        assert refused.sqlstate == "57014"
        assert "hoopgw cannot record this request, so it was not run" in refused.msg
        assert "the recording spool is full" in refused.msg
        refused_sql = sql
        during.close()

        moto, _ = stack.start_moto(workdir, port)
        create_bucket(endpoint, bucket)
        stack.wait_until(lambda: not spool_segments(spool), DEADLINE, "the spool to empty")

        after = connect(gateway, oidc.mint("after-outage", ["agents"]))
        assert after.cursor().execute(f"select '{tag}-c-0'").fetchone() == (f"{tag}-c-0",)
        after.close()

        archive = archive_of(bucket, endpoint)
        stack.wait_until(lambda: ended_sessions(archive) == 3, DEADLINE, "three sessions in S3")
        reached = [
            body["sqlText"]
            for body in received_statements(strict.received_since(mark))
            if tag in body["sqlText"]
        ]
        assert refused_sql not in reached
        sessions = records_by_session(archive)
        requests = [
            r
            for records in sessions.values()
            for r in statement_requests(records)
            if tag in r["sql"]
        ]
        assert sorted(r["sql"] for r in requests if r["kind"] == "request") == sorted(reached)
        [refusal] = [r for r in requests if r["kind"] == "refusal"]
        assert refusal["sql"] == refused_sql
        assert refusal["refusal"]["code"] == 399002
        assert len(reached) == 6 + number + 1
        for session_id in sessions:
            report = archive.verify_session(session_id)
            assert report.ok, [str(problem) for problem in report.problems]
        assert gateway.stop() == 0
    finally:
        moto.stop()
