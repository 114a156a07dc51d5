"""Large results through the gateway: every chunk fetched by the gateway, counted, hashed, recorded.

The strict upstream (tests/strict_upstream.py) answers a query marked
`/*chunks:N:FORMAT*/` the way Snowflake answers a large result: the first rows
inline, the rest as N pre-signed URLs on a loopback cloud storage
(tests/cloud_storage.py) that refuses a GET without the result key. The real
connector fetches through a real gateway (mitmdump); raw HTTP reads what the
client is handed on the wire.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import time
import urllib.parse
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
import snowflake.connector
from click.testing import CliRunner

from hoopgw.addons.protocol import CHUNK_PATH_PREFIX
from hoopgw.addons.results import STAGE_NOTE
from hoopgw.cli.main import main
from hoopgw.recorder.catalog import VerifyReport, verify_chunks
from hoopgw.recorder.schema import validate_record
from hoopgw.recorder.secrets import new_token_key
from tests import stack, strict_upstream
from tests.bodies import key_pair_upstream, write_service_key
from tests.cloud_storage import CloudStorage
from tests.conftest import UPSTREAM_TEST_PASSWORD
from tests.connect_proxy import ConnectProxy
from tests.raw_http import Answer, login, query, send, session_authorization, stored_records
from tests.storage_fixtures import chunking_upstream
from tests.strict_upstream import INLINE_ROWS, StrictUpstream

CHUNKS = 20
PER_CHUNK = 100
ROWS = INLINE_ROWS + CHUNKS * PER_CHUNK
SELECT = f"select seq4() as id, 'row-' || seq4() as label from table(generator(rowcount => {ROWS}))"
JSON_SQL = f"{SELECT} /*chunks:{CHUNKS}:json*/"
ARROW_SQL = f"{SELECT} /*chunks:4:arrow*/"


def connector(url: str, **params: Any) -> snowflake.connector.SnowflakeConnection:
    host, port = url.rsplit("//", 1)[1].rsplit(":", 1)
    settings: dict[str, Any] = {
        "account": "fakesnow",
        "host": host,
        "port": int(port),
        "protocol": "http",
        "login_timeout": 30,
        "network_timeout": 60,
        **params,
    }
    return snowflake.connector.connect(**settings)


def direct_connection(chunking_strict: StrictUpstream) -> snowflake.connector.SnowflakeConnection:
    return connector(chunking_strict.url, user="HOOPGW_SVC", password=UPSTREAM_TEST_PASSWORD)


def chunk_urls(answer: Answer) -> list[str]:
    return [chunk["url"] for chunk in answer.json["data"]["chunks"]]


def gateway_path(url: str) -> str:
    parsed = urllib.parse.urlsplit(url)
    return parsed.path + (f"?{parsed.query}" if parsed.query else "")


def tampered(path: str) -> str:
    """The same ticket with one character changed in its middle."""
    cut = len(CHUNK_PATH_PREFIX) + (len(path) - len(CHUNK_PATH_PREFIX)) // 2
    return path[:cut] + ("A" if path[cut] != "A" else "B") + path[cut + 1 :]


@dataclass(frozen=True)
class Run:
    through_json: list[tuple[Any, ...]]
    direct_json: list[tuple[Any, ...]]
    through_arrow: Any
    direct_arrow: Any
    json_query_id: str
    storage_gets: int
    wire: Answer
    qrmk: str
    storage_url: str
    refusals: dict[str, Answer]
    refused_reached_storage: int
    records: list[dict[str, Any]]
    stored_hashes: dict[str, str]
    store: str


def recorded_query_id(records: list[dict[str, Any]], sql: str) -> str:
    """Snowflake's own id of `sql`'s query, as the record keeps it.

    The client sees a session-bound form of it (addons/query_ids.py); the
    records, the storage and the chunk tickets use Snowflake's.
    """
    flow_id = next(r["flow_id"] for r in records if r["kind"] == "request" and r.get("sql") == sql)
    return next(
        r["query_id"] for r in records if r["kind"] == "response" and r["flow_id"] == flow_id
    )


@pytest.fixture(scope="module")
def run(gateway_factory, chunking_strict, storage, oidc) -> Run:
    gateway = gateway_factory(chunking_strict.url, name="chunks-gw")
    token = oidc.mint("chunky", ["agents"], email="chunky@example.com")
    before = storage.mark()
    with contextlib.closing(connector(gateway.url, authenticator="oauth", token=token)) as c:
        cursor = c.cursor().execute(JSON_SQL)
        assert cursor.sfqid  # bound to this session; see recorded_query_id
        through_json = cursor.fetchall()
        # fetch_pandas_all needs pandas, which the environment lacks; fetchall takes
        # the same Arrow download and decoding path
        through_arrow = c.cursor().execute(ARROW_SQL).fetchall()
    storage_gets = len(storage.requests_since(before))
    with contextlib.closing(direct_connection(chunking_strict)) as c:
        direct_json = c.cursor().execute(JSON_SQL).fetchall()
        direct_arrow = c.cursor().execute(ARROW_SQL).fetchall()

    # what a client is handed, read on the wire
    session = login(gateway.port, token)
    wire = query(gateway.port, session.token, JSON_SQL, "wire")
    assert wire.status == 200
    qrmk = storage.last_key()
    paths = [gateway_path(url) for url in chunk_urls(wire)]
    other = login(gateway.port, oidc.mint("someone-else", ["agents"]))

    quiet = storage.mark()
    refusals = {
        "other session": send(
            gateway.port, "GET", paths[0], headers=[session_authorization(other.token)]
        ),
        "tampered": send(gateway.port, "GET", tampered(paths[1])),
        "forged": send(gateway.port, "GET", CHUNK_PATH_PREFIX + "AQ" + "A" * 80),
    }
    refused_reached_storage = len(storage.requests_since(quiet))
    refusals["own session"] = send(
        gateway.port, "GET", paths[2], headers=[session_authorization(session.token)]
    )
    refusals["no token"] = send(gateway.port, "GET", paths[3])
    gateway.stop()
    records = stored_records(gateway.workdir / "store")
    return Run(
        through_json,
        direct_json,
        through_arrow,
        direct_arrow,
        recorded_query_id(records, JSON_SQL),
        storage_gets,
        wire,
        qrmk,
        storage.url,
        refusals,
        refused_reached_storage,
        records,
        storage.hashes(),
        f"file:{gateway.workdir / 'store'}",
    )


def test_a_20_chunk_json_result_equals_the_direct_fetch(run: Run) -> None:
    assert len(run.through_json) == ROWS
    assert run.through_json == run.direct_json


def test_an_arrow_result_equals_the_direct_fetch(run: Run) -> None:
    assert len(run.through_arrow) == ROWS
    assert run.through_arrow == run.direct_arrow


def test_the_gateway_fetched_every_chunk_with_the_key(run: Run) -> None:
    assert run.storage_gets == CHUNKS + 4


def test_the_client_is_handed_no_key_no_storage_host_and_no_signature(run: Run) -> None:
    text = run.wire.body.decode()
    data = run.wire.json["data"]
    assert "qrmk" not in data and "chunkHeaders" not in data
    assert run.qrmk not in text
    assert urllib.parse.urlsplit(run.storage_url).netloc not in text
    assert "X-Amz-Signature" not in text and "X-Amz-Expires" not in text
    assert len(chunk_urls(run.wire)) == CHUNKS
    assert all(CHUNK_PATH_PREFIX in url for url in chunk_urls(run.wire))


def test_a_chunk_url_of_another_session_tampered_or_forged_is_refused_unsent(run: Run) -> None:
    for name in ("other session", "tampered", "forged"):
        answer = run.refusals[name]
        assert answer.status == 403, name
        assert answer.code == "399003", name
    assert "another session" in run.refusals["other session"].message
    assert run.refused_reached_storage == 0


def test_the_own_session_fetches_with_or_without_its_token(run: Run) -> None:
    assert run.refusals["own session"].status == 200
    assert run.refusals["no token"].status == 200


def test_every_chunk_is_recorded_once_with_the_hash_of_what_the_client_got(run: Run) -> None:
    chunks = [r for r in run.records if r["kind"] == "chunk" and r["query_id"] == run.json_query_id]
    assert Counter(r["chunk_index"] for r in chunks) == Counter(range(CHUNKS))
    for record in chunks:
        assert record["complete"] is True
        name = f"{run.json_query_id}/json_{record['chunk_index']}"
        assert record["sha256"] == run.stored_hashes[name]
        assert record["rows"] == PER_CHUNK
        assert record["chunk_count"] == CHUNKS
        rows = record["body"]["json"]
        assert len(rows) == PER_CHUNK
        assert rows[0][1] == f"row-{INLINE_ROWS + PER_CHUNK * record['chunk_index']}"
    assert sum(r["rows"] for r in chunks) == ROWS - INLINE_ROWS


def test_records_are_valid_and_hold_no_key_or_ticket(run: Run) -> None:
    assert all(validate_record(r) == [] for r in run.records)
    text = json.dumps(run.records)
    assert run.qrmk not in text
    tickets = [gateway_path(url).removeprefix(CHUNK_PATH_PREFIX) for url in chunk_urls(run.wire)]
    assert not [t for t in tickets if t in text]
    assert "X-Amz-Signature" not in text


def test_refused_chunk_requests_are_on_record(run: Run) -> None:
    """The URL of one session presented with another session's valid token is refused to a
    verified caller: a `refusal` record, in the session the URL names. The tampered and
    forged URLs name no session and come with no token: counted in a `refusal_summary`,
    a sample each."""
    refused = [
        r
        for r in run.records
        if r["kind"] == "refusal" and r.get("path", "").startswith(CHUNK_PATH_PREFIX)
    ]
    assert len(refused) == 1
    (other,) = refused
    assert other["refusal"]["by"] == "results" and "another session" in other["refusal"]["reason"]
    # on record in the session the sealed URL names, whose chunks the other session asked for
    # (the wire's query id is bound to that session; the records keep Snowflake's)
    fetched_by_driver = session_of_chunks(run, run.json_query_id)
    (wire_session,) = {r["session_id"] for r in run.records if r["kind"] == "chunk"} - {
        fetched_by_driver
    }
    assert other["session_id"] == wire_session
    samples = [
        sample
        for r in run.records
        if r["kind"] == "refusal_summary"
        for sample in r["samples"]
        if sample["path"].startswith(CHUNK_PATH_PREFIX)
    ]
    assert len(samples) == 2
    assert {s["endpoint"] for s in samples} == {"chunk"}
    assert {s["refusal"]["by"] for s in samples} == {"results"}
    assert {s["status"] for s in samples} == {403}


def session_of_chunks(run: Run, query_id: str) -> str:
    (session_id,) = {
        r["session_id"] for r in run.records if r["kind"] == "chunk" and r["query_id"] == query_id
    }
    return session_id


def test_sessions_show_says_how_many_chunks_of_each_result_were_fetched(run: Run) -> None:
    fetched = session_of_chunks(run, run.json_query_id)
    shown = CliRunner().invoke(main, ["sessions", "show", fetched, "--store", run.store])
    assert shown.exit_code == 0, shown.output
    assert f"{ROWS} rows in {CHUNKS} chunks, all fetched" in shown.output
    # the raw-HTTP session fetched two of its chunks (its query id on the wire is bound)
    (partly,) = {r["session_id"] for r in run.records if r["kind"] == "chunk"} - {fetched}
    shown = CliRunner().invoke(main, ["sessions", "show", partly, "--store", run.store])
    assert f"{ROWS} rows in {CHUNKS} chunks, 2 of {CHUNKS} fetched" in shown.output


def test_verify_checks_the_chunk_records(run: Run) -> None:
    session_id = session_of_chunks(run, run.json_query_id)
    outcome = CliRunner().invoke(main, ["verify", session_id, "--store", run.store])
    assert outcome.exit_code == 0, outcome.output
    assert f"query {run.json_query_id}: {CHUNKS} chunks, all fetched" in outcome.output


def test_verify_finds_a_chunk_no_answer_handed_out_or_hashed_two_ways(run: Run) -> None:
    session_id = session_of_chunks(run, run.json_query_id)
    records = [r for r in run.records if r["session_id"] == session_id]
    chunk = next(r for r in records if r["kind"] == "chunk")
    twice = {**chunk, "sha256": "0" * 64}
    stray = {**chunk, "chunk_index": CHUNKS}
    report = VerifyReport(session_id)
    verify_chunks([*records, twice, stray], report)
    messages = [problem.message for problem in report.problems]
    assert any("different SHA-256" in m for m in messages)
    assert any(f"chunk {CHUNKS} of query" in m and "handed it out" in m for m in messages)
    clean = VerifyReport(session_id)
    verify_chunks(records, clean)
    assert clean.ok


# --- one gateway each -----------------------------------------------------------------------


def test_an_expired_chunk_url_is_refused_unsent(
    gateway_factory, chunking_strict, storage, oidc
) -> None:
    gateway = gateway_factory(
        chunking_strict.url, {"hoopgw_chunk_url_lifetime": 1}, name="chunks-expiry"
    )
    session = login(gateway.port, oidc.mint("late", ["agents"]))
    answer = query(gateway.port, session.token, JSON_SQL, "expiring")
    issued = time.time()
    stack.wait_until(lambda: time.time() > issued + 1.5, 5, "the chunk URL to expire")
    mark = storage.mark()
    refused = send(gateway.port, "GET", gateway_path(chunk_urls(answer)[0]))
    assert refused.status == 403 and "expired" in refused.message
    assert storage.requests_since(mark) == []


def test_storage_down_mid_result_is_a_clear_error_and_on_record(
    gateway_factory, fakesnow_server, oidc
) -> None:
    failing = CloudStorage().start()
    upstream = chunking_upstream(fakesnow_server.url, failing)
    try:
        gateway = gateway_factory(upstream.url, name="chunks-storage-down")
        session = login(gateway.port, oidc.mint("unlucky", ["agents"]))
        paths = [
            gateway_path(url)
            for url in chunk_urls(query(gateway.port, session.token, JSON_SQL, "down"))
        ]
        assert send(gateway.port, "GET", paths[0]).status == 200
        failing.stop()
        broken = send(gateway.port, "GET", paths[1])
        assert broken.status == 502
        gateway.stop()
    finally:
        upstream.stop()
    records = stored_records(gateway.workdir / "store")
    chunks = {r["chunk_index"]: r for r in records if r["kind"] == "chunk"}
    assert chunks[0]["complete"] is True
    assert chunks[1]["complete"] is False and "did not reach the client" in chunks[1]["error"]
    errors = [r for r in records if r["kind"] == "error"]
    assert len(errors) == 1


def test_direct_mode_hands_out_snowflakes_urls_as_before(
    gateway_factory, chunking_strict, storage, oidc
) -> None:
    gateway = gateway_factory(
        chunking_strict.url, {"hoopgw_result_chunks": "direct"}, name="chunks-direct"
    )
    token = oidc.mint("direct", ["agents"])
    session = login(gateway.port, token)
    answer = query(gateway.port, session.token, JSON_SQL, "direct")
    assert answer.json["data"]["qrmk"]
    assert all(url.startswith(storage.url) for url in chunk_urls(answer))
    with contextlib.closing(connector(gateway.url, authenticator="oauth", token=token)) as c:
        rows = c.cursor().execute(JSON_SQL).fetchall()
    assert len(rows) == ROWS
    forged = send(gateway.port, "GET", CHUNK_PATH_PREFIX + "AQ" + "A" * 80)
    assert forged.status == 403


# --- stage transfers --------------------------------------------------------------------------

PUT_SQL = "put file:///tmp/data.csv @~/staged"


def test_put_is_refused_without_a_policy_that_allows_stage_transfers(
    gateway_factory, chunking_strict, oidc
) -> None:
    gateway = gateway_factory(chunking_strict.url, name="stage-refused")
    session = login(gateway.port, oidc.mint("uploader", ["agents"]))
    mark = chunking_strict.mark()
    refused = query(gateway.port, session.token, PUT_SQL, "put-refused")
    assert refused.code == "399003"
    assert "allow_stage_transfer" in refused.message
    assert strict_upstream.STAGE_CREDENTIALS["AWS_SECRET_KEY"] not in refused.body.decode()
    assert not [r for r in chunking_strict.received_since(mark) if b"put file" in r.body]


def test_put_allowed_by_policy_is_recorded_without_the_credentials(
    gateway_factory, chunking_strict, oidc, tmp_path
) -> None:
    policy = tmp_path / "stage.toml"
    policy.write_text(
        '[[rule]]\nname = "uploads"\ngroups = ["agents"]\nallow_stage_transfer = true\n'
    )
    gateway = gateway_factory(
        chunking_strict.url, {"hoopgw_policy": str(policy)}, name="stage-allowed"
    )
    session = login(gateway.port, oidc.mint("uploader", ["agents"]))
    allowed = query(gateway.port, session.token, PUT_SQL, "put-allowed")
    assert allowed.json["success"] is True
    assert allowed.json["data"]["stageInfo"]["creds"] == strict_upstream.STAGE_CREDENTIALS
    gateway.stop()
    records = stored_records(gateway.workdir / "store")
    (answer,) = [
        r
        for r in records
        if r["kind"] == "response" and "stageInfo" in r["body"].get("json", {}).get("data", {})
    ]
    assert answer["body"]["json"]["data"][STAGE_NOTE] == "temporary stage credentials handed out"
    text = json.dumps(records)
    assert not [v for v in strict_upstream.STAGE_CREDENTIALS.values() if v in text]
    assert strict_upstream.STAGE_MASTER_KEY not in text


# --- SQL API result partitions --------------------------------------------------------------

PARTITIONS, PER_PARTITION = 4, 5
PARTITIONED_SQL = f"select n, label from t /*partitions:{PARTITIONS}:{PER_PARTITION}*/"
SQL_API_ACCOUNT, SQL_API_USER = "pt12345", "svc_hoopgw"
SQL_API_KEY_ENV = "HOOPGW_PARTITIONS_TEST_TOKEN_KEY"


def sql_api(gateway: stack.Gateway, token: str, method: str, path: str, body: Any = None):
    """One SQL API call: (status, raw body as the client received it)."""
    connection = http.client.HTTPConnection(stack.LOOPBACK, gateway.port, timeout=30)
    try:
        connection.request(
            method,
            path,
            json.dumps(body) if body is not None else None,
            {
                "Content-Type": "application/json",
                "Authorization": f"Bearer {token}",
                "X-Snowflake-Authorization-Token-Type": "OAUTH",
            },
        )
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def partition_run(gateway_factory, fakesnow_server, oidc, workdir) -> dict[str, Any]:
    """Two replicas sharing a store: partition 1 fetched on A, 2 on B, 3 never."""
    key = workdir / f"partitions-key-{uuid.uuid4().hex[:6]}.p8"
    write_service_key(key)
    upstream = key_pair_upstream(fakesnow_server.url, key, SQL_API_ACCOUNT, SQL_API_USER)
    store = workdir / f"partitions-store-{uuid.uuid4().hex[:6]}"
    options = {
        "hoopgw_upstream_account": SQL_API_ACCOUNT,
        "hoopgw_upstream_user": SQL_API_USER,
        "hoopgw_upstream_secondary_roles": "none",
        "hoopgw_upstream_private_key": f"file:{key}",
        "hoopgw_upstream_password": "",
        "hoopgw_token_key": f"env:{SQL_API_KEY_ENV}",
        "hoopgw_store": f"file:{store}",
    }
    env = {SQL_API_KEY_ENV: new_token_key()}
    replicas = [
        gateway_factory(upstream.url, options, env=env, name=f"partitions-{side}-gw")
        for side in "ab"
    ]
    token = oidc.mint("partitioner", ["agents"])
    status, raw = sql_api(
        replicas[0], token, "POST", "/api/v2/statements", {"statement": PARTITIONED_SQL}
    )
    assert status == 200, raw
    first = json.loads(raw)
    handle = first["statementHandle"]
    fetched: dict[int, bytes] = {}
    for number, replica in ((1, replicas[0]), (2, replicas[1])):
        path = f"/api/v2/statements/{handle}?partition={number}"
        status, fetched[number] = sql_api(replica, token, "GET", path)
        assert status == 200, fetched[number]
    intruder = oidc.mint("someone-else", ["agents"])
    stranger = sql_api(replicas[1], intruder, "GET", f"/api/v2/statements/{handle}?partition=3")
    for replica in replicas:
        assert replica.stop() == 0
    upstream.stop()
    records = stored_records(store)
    return {
        "first": first,
        "fetched": fetched,
        "stranger": stranger,
        "records": records,
        "store": f"file:{store}",
    }


def test_sql_api_partitions_are_recorded_in_the_statements_session(partition_run) -> None:
    records = partition_run["records"]
    first, fetched = partition_run["first"], partition_run["fetched"]
    assert [row[1] for row in json.loads(fetched[2])["data"]][:1] == ["p2r0"]
    (statement,) = [
        r for r in records if r["kind"] == "request" and r.get("sql") == PARTITIONED_SQL
    ]
    (answer,) = [
        r for r in records if r["kind"] == "response" and r["flow_id"] == statement["flow_id"]
    ]
    assert answer["partition_count"] == PARTITIONS and answer["total"] == 20
    partitions = [r for r in records if r["kind"] == "chunk" and r.get("partition")]
    assert sorted(r["chunk_index"] for r in partitions) == [1, 2]
    assert {r["session_id"] for r in partitions} == {statement["session_id"]}
    assert {r["query_id"] for r in partitions} == {answer["query_id"]}
    for record in partitions:
        assert record["complete"] is True and record["rows"] == PER_PARTITION
        got = fetched[record["chunk_index"]]
        assert record["sha256"] == hashlib.sha256(got).hexdigest(), "the hash of what it got"
        assert validate_record(record) == []
    assert first["statementHandle"] != answer["query_id"], "the client holds a bound handle"
    # another caller cannot name the handle, so nothing of it reaches that caller's record
    assert partition_run["stranger"][0] != 200


def test_sessions_show_and_verify_count_the_partitions_fetched(partition_run) -> None:
    records, store = partition_run["records"], partition_run["store"]
    (session_id,) = {r["session_id"] for r in records if r["kind"] == "chunk"}
    shown = CliRunner().invoke(main, ["sessions", "show", session_id, "--store", store])
    assert shown.exit_code == 0, shown.output
    assert f"20 rows in {PARTITIONS} partitions, 3 of {PARTITIONS} fetched" in shown.output
    verified = CliRunner().invoke(main, ["verify", session_id, "--store", store])
    assert verified.exit_code == 0, verified.output
    assert f"{PARTITIONS} partitions, 3 of {PARTITIONS} fetched" in verified.output


# --- stage files behind pre-signed URLs (GET on a GCP stage) ----------------------------------

GET_SQL = "get @~/exports file:///tmp/out /*presigned:2*/"


def test_presigned_stage_files_are_fetched_through_the_gateway_and_recorded(
    gateway_factory, chunking_strict, storage, oidc, tmp_path
) -> None:
    policy = tmp_path / "stage.toml"
    policy.write_text(
        '[[rule]]\nname = "downloads"\ngroups = ["agents"]\nallow_stage_transfer = true\n'
    )
    gateway = gateway_factory(
        chunking_strict.url, {"hoopgw_policy": str(policy)}, name="presigned-gw"
    )
    session = login(gateway.port, oidc.mint("downloader", ["agents"]))
    other = login(gateway.port, oidc.mint("someone-else", ["agents"]))
    answer = query(gateway.port, session.token, GET_SQL, "presigned")
    assert answer.json["success"] is True, answer.json
    urls = answer.json["data"]["presignedUrls"]
    assert len(urls) == 2 and all(CHUNK_PATH_PREFIX in url for url in urls)
    assert storage.url not in answer.body.decode(), "no storage host or signature on the wire"
    files = {name: digest for name, digest in storage.hashes().items() if name.startswith("stage/")}

    quiet = storage.mark()
    refused = send(
        gateway.port, "GET", gateway_path(urls[0]), headers=[session_authorization(other.token)]
    )
    assert refused.status != 200 and storage.requests_since(quiet) == []
    got = [send(gateway.port, "GET", gateway_path(url)) for url in urls]
    assert [r.status for r in got] == [200, 200]
    assert got[1].body == strict_upstream.STAGE_FILE % 1
    gateway.stop()

    records = stored_records(gateway.workdir / "store")
    text = json.dumps(records)
    assert storage.url not in text and "X-Amz-Signature" not in text
    (response,) = [r for r in records if r["kind"] == "response" and r.get("stage_file_count")]
    assert response["stage_file_count"] == 2
    fetched = sorted(
        (r for r in records if r["kind"] == "chunk" and r.get("complete")),
        key=lambda r: r["chunk_index"],
    )
    assert [r["chunk_index"] for r in fetched] == [0, 1]
    assert {r["query_id"] for r in fetched} == {response["query_id"]}
    assert [r["sha256"] for r in fetched] == [hashlib.sha256(r.body).hexdigest() for r in got]
    assert sorted(r["sha256"] for r in fetched) == sorted(files.values())
    assert all(r["body"]["omitted"] == "stage file" for r in fetched)
    store = f"file:{gateway.workdir / 'store'}"
    verified = CliRunner().invoke(main, ["verify", response["session_id"], "--store", store])
    assert verified.exit_code == 0, verified.output
    assert "2 stage files, all fetched" in verified.output


# --- egress through the operator's proxy -----------------------------------------------------


def test_chunks_are_fetched_through_the_operators_storage_proxy(
    gateway_factory, chunking_strict, storage, oidc
) -> None:
    with ConnectProxy() as proxy:
        gateway = gateway_factory(
            chunking_strict.url, {"hoopgw_storage_proxy": proxy.url}, name="chunks-via-proxy"
        )
        token = oidc.mint("proxied", ["agents"])
        mark = storage.mark()
        with contextlib.closing(connector(gateway.url, authenticator="oauth", token=token)) as c:
            rows = c.cursor().execute(JSON_SQL).fetchall()
        targets = list(proxy.targets)
    assert len(rows) == ROWS
    assert len(storage.requests_since(mark)) == CHUNKS
    # storage went through the proxy, Snowflake did not
    assert targets and set(targets) == {urllib.parse.urlsplit(storage.url).netloc}
