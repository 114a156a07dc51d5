"""The Snowflake content view and the live annotations, on bodies captured through the gateway.

A gateway started for this module saves every flow as mitmproxy holds it after
the gateway's hooks (tests/flow_capture.py, loaded after addons/gateway.py: the
gateway refuses mitmproxy's own `save_stream_file`) while the real connector runs
tests/inspection_workload.py
against fakesnow; the tests render those flows exactly as mitmweb does
(`contentviews.prettify_message`). fakesnow answers SELECTs with Arrow
`rowsetBase64` and DML with a JSON `rowset`, so both decoders see real bodies.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pyarrow as pa
import pytest
from mitmproxy import contentviews, http, io
from mitmproxy.test import taddons, tflow

from hoopgw.addons import contentview
from hoopgw.addons.contentview import MAX_ROWS, format_sql, render
from hoopgw.addons.protocol import Endpoint
from hoopgw.recorder.annotations import BLOCKED_MARK, FAILED_MARK, statement_comment
from tests import flow_capture
from tests import inspection_workload as workload
from tests.conftest import UPSTREAM_TEST_PASSWORD

CAPTURE = pytest.StashKey["Capture"]()


@dataclass(frozen=True)
class Capture:
    flows: list[http.HTTPFlow]
    result: workload.Workload
    agent_token: str

    def statement(self, sql: str) -> http.HTTPFlow:
        """The query flow that ran exactly `sql`."""
        for flow in self.flows:
            if flow.request.path.startswith("/queries/v1/query-request"):
                body = orjson.loads(flow.request.get_content())
                if body.get("sqlText") == sql:
                    return flow
        raise AssertionError(f"no flow ran {sql!r}")

    def login(self) -> http.HTTPFlow:
        return next(f for f in self.flows if f.request.path.startswith("/session/v1/login"))


@pytest.fixture
def capture(
    request: pytest.FixtureRequest,
    gateway_factory,
    fakesnow_server,
    connect,
    agent_token,
    unique_name,
    tmp_path_factory: pytest.TempPathFactory,
) -> Capture:
    def build() -> Capture:
        saved = tmp_path_factory.mktemp("live") / "live.flows"
        # answers over hoopgw_body_limit are streamed, and a streamed body is not saved:
        # this limit keeps the 100,000-row answer whole for the view to render
        gateway = gateway_factory(
            fakesnow_server.url,
            {"hoopgw_body_limit": 32 * 1024 * 1024},
            env={flow_capture.PATH_ENV: str(saved)},
            name="contentview-gateway",
            extra_scripts=[Path(flow_capture.__file__)],
        )
        database = unique_name("cv")
        connection = connect(gateway, agent_token, database=database, schema="app")
        result = workload.run(connection, database)
        connection.close()
        gateway.stop()  # the capture closes its file on shutdown
        with saved.open("rb") as file:
            flows = [f for f in io.FlowReader(file).stream() if isinstance(f, http.HTTPFlow)]
        return Capture(flows, result, agent_token)

    return workload.once(request, CAPTURE, build)


@pytest.fixture
def mitmproxy_context() -> Iterator[None]:
    """contentviews read options (protobuf_definitions) through ctx, as inside mitmweb."""
    with taddons.context():
        yield


def shown(flow: http.HTTPFlow, side: str = "response") -> contentviews.ContentviewResult:
    message = flow.request if side == "request" else flow.response
    assert message is not None
    return contentviews.prettify_message(message, flow)


# --- choosing the view ----------------------------------------------------------------


def test_view_wins_for_snowflake_bodies_and_steps_aside_elsewhere(capture, mitmproxy_context):
    snowflake_flows = [
        f
        for f in capture.flows
        if f.request.path.startswith(("/session/v1/login-request", "/queries/v1/query-request"))
    ]
    assert len(snowflake_flows) >= 10
    for flow in snowflake_flows:
        assert shown(flow, "request").view_name == "Snowflake", flow.request.path
        assert shown(flow, "response").view_name == "Snowflake", flow.request.path

    other = tflow.tflow(resp=True)
    other.request.path = "/api/v1/things"
    other.response.headers["content-type"] = "application/json"
    other.response.content = b'{"data": {"sqlText": "select 1"}}'
    assert shown(other).view_name == "JSON"

    telemetry = tflow.tflow(resp=True)
    telemetry.request.path = "/telemetry/send"
    telemetry.response.headers["content-type"] = "application/json"
    telemetry.response.content = b'{"success": true}'
    assert shown(telemetry).view_name == "JSON"


def test_view_steps_aside_without_a_snowflake_json_object():
    view = contentview.snowflake_view
    assert view.render_priority(b'{"data": {}}', contentviews.Metadata()) < 0
    query = tflow.tflow(resp=True)
    query.request.path = "/queries/v1/query-request?requestId=1"
    for body in (b"", b"[1, 2]", b"not json"):
        metadata = contentviews.Metadata(flow=query, http_message=query.response)
        assert view.render_priority(body, metadata) < 0
    metadata = contentviews.Metadata(flow=query, http_message=query.response)
    assert view.render_priority(b' {"data": {}}', metadata) == 2


# --- login -----------------------------------------------------------------------------


def test_login_request_says_who_and_with_what_client_and_hides_credentials(
    capture, mitmproxy_context
):
    login = capture.login()
    data = orjson.loads(login.request.get_content())["data"]
    secrets = [str(data[key]) for key in ("PASSWORD", "TOKEN") if data.get(key)]
    assert secrets, "the login carries a credential the view must hide"

    result = shown(login, "request")
    text = result.text
    assert "Snowflake login request" in text
    assert f"Login name       {data['LOGIN_NAME']}" in text
    assert f"Client           {data['CLIENT_APP_ID']} {data['CLIENT_APP_VERSION']}" in text
    assert "PYTHON_VERSION=" in text
    assert "[REDACTED] (present)" in text
    assert "Schema           app" in text
    for secret in [*secrets, UPSTREAM_TEST_PASSWORD, capture.agent_token]:
        assert secret not in text


def test_login_response_shows_context_and_redacts_tokens(capture, mitmproxy_context):
    login = capture.login()
    answer = orjson.loads(login.response.get_content())
    token = answer["data"]["token"]
    text = shown(login).text
    assert text.startswith("Snowflake login response: success\n")
    assert "Schema           APP" in text
    assert "Session token    [REDACTED]" in text
    assert "AUTOCOMMIT = true" in text
    assert token not in text


# --- statements ------------------------------------------------------------------------


def test_query_request_shows_formatted_sql_and_bindings(capture, mitmproxy_context):
    flow = capture.statement(workload.SELECT_ADA)
    assert flow.request.headers.get("content-encoding") == "gzip"  # what the driver sends
    text = shown(flow, "request").text
    assert "SQL (formatted)" in text
    assert "WHERE\n    customer = ?" in text
    assert "Bindings (1)" in text
    assert "| 1 | TEXT | ada   |" in text


def test_array_bindings_show_one_row_per_bound_row(capture, mitmproxy_context):
    flow = capture.statement("insert into orders (id, customer, amount) values (?, ?, ?)")
    text = shown(flow, "request").text
    assert "Bindings: array of 3 rows" in text
    assert "|     2 | bob  |  20.0 |" in text
    assert "|     4 | ada  |   1.0 |" in text


def test_arrow_result_renders_as_a_table_with_snowflake_types(capture, mitmproxy_context):
    flow = capture.statement(workload.SELECT_ADA)
    data = orjson.loads(flow.response.get_content())["data"]
    assert data["queryResultFormat"] == "arrow" and data["rowsetBase64"]
    assert capture.result.ada_rows[0][:2] == (1, "ada")

    text = shown(flow).text
    assert text.startswith("Snowflake query response: success\n")
    assert f"Query id         {data['queryId']}" in text
    assert "Statement type   SELECT (4096)" in text
    assert "Rows             2 total, 2 inline" in text
    assert "Result: 2 rows" in text
    assert "| ID           | CUSTOMER          | AMOUNT       | PLACED" in text
    assert "| NUMBER(38,0) | VARCHAR(16777216) | NUMBER(10,2) | TIMESTAMP_NTZ" in text
    assert "|            1 | ada               |        10.50 | 2024-01-02 03:04:05.123" in text
    assert "| 2024-01-02 |" in text
    assert "|            4 | ada               |         1.00 |" in text


def test_json_rowset_of_a_dml_answer(capture, mitmproxy_context):
    flow = capture.statement("insert into orders (id, customer, amount) values (?, ?, ?)")
    assert orjson.loads(flow.response.get_content())["data"]["queryResultFormat"] == "json"
    text = shown(flow).text
    assert "Statement type   INSERT (12544)" in text
    assert "| number of rows inserted |" in text
    assert "|                       3 |" in text


def test_error_answer_shows_code_state_and_message(capture, mitmproxy_context):
    flow = capture.statement(workload.FAILING)
    text = shown(flow).text
    assert text.startswith("Snowflake query response: FAILED\n")
    assert f"Error code       {capture.result.error_code:06d}" in text
    assert "SQL state        42S02" in text
    assert "NO_SUCH_TABLE_ANYWHERE" in text


def test_credential_literals_never_show(capture, mitmproxy_context):
    flow = capture.statement(workload.WITH_PASSWORD)
    for side in ("request", "response"):
        assert workload.SECRET_LITERAL not in shown(flow, side).text
    assert "'[REDACTED]'" in shown(flow, "request").text


def test_a_100k_row_result_shows_the_first_rows_and_the_count_quickly(capture, mitmproxy_context):
    flow = capture.statement(workload.LARGE)
    assert capture.result.large_rows == workload.LARGE_ROWS
    started = time.perf_counter()
    text = shown(flow).text
    elapsed = time.perf_counter() - started
    assert f"Result: first {MAX_ROWS} of 100,000 rows" in text
    assert "|            0 | row 0             |" in text
    assert f"|           {MAX_ROWS - 1} | row {MAX_ROWS - 1}            |" in text
    assert "row 100 " not in text
    assert "… 99,900 more inline rows not shown" in text
    assert len(text.splitlines()) < MAX_ROWS + 30
    assert elapsed < 2.0, f"rendering took {elapsed:.2f}s"


# --- live annotations (addons/inspection.py) -------------------------------------------


def test_live_flows_carry_sql_comment_session_and_marks(capture):
    select = capture.statement(workload.SELECT_ADA)
    assert select.comment == workload.SELECT_ADA
    assert not select.marked
    meta = select.metadata["hoopgw"]
    assert set(meta) >= {"session_id", "caller", "role", "endpoint"}
    assert meta["endpoint"] == "query"
    assert (meta["caller"], meta["role"]) == ("agent-1", "AGENT")
    assert capture.login().comment == "login: agent-1"
    assert isinstance(meta["session_id"], str) and len(meta["session_id"]) == 36
    orjson.dumps(meta)  # plain JSON values only

    sessions = {f.metadata["hoopgw"]["session_id"] for f in capture.flows if "hoopgw" in f.metadata}
    assert len(sessions) == 1, "one login, one hoopgw session"

    assert capture.statement(workload.FAILING).marked == FAILED_MARK
    secret = capture.statement(workload.WITH_PASSWORD)
    assert workload.SECRET_LITERAL not in secret.comment
    assert "'[REDACTED]'" in secret.comment


def test_statement_comment_keeps_the_first_line_short():
    assert statement_comment("  select 1\n  from dual") == "select 1 …"
    long = "select " + ", ".join(f"column_{i}" for i in range(40)) + " from t"
    comment = statement_comment(long)
    assert len(comment) == 100 and comment.endswith("…")
    assert statement_comment("create user u password = 'pw1'") == (
        "create user u password = '[REDACTED]'"
    )
    assert BLOCKED_MARK != FAILED_MARK


# --- pure rendering, for bodies fakesnow does not produce ------------------------------


def test_truncated_arrow_rowset_says_why_rows_are_missing():
    table = pa.table({"N": list(range(5000))})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    encoded = base64.b64encode(sink.getvalue().to_pybytes()).decode()
    body = {
        "data": {
            "rowtype": [{"name": "N", "type": "fixed", "scale": 0, "precision": 38}],
            "rowsetBase64": encoded[: len(encoded) // 2],
            "total": 5000,
            "queryResultFormat": "arrow",
        },
        "success": True,
    }
    text = render(Endpoint.QUERY, False, body)
    assert "Rows             5,000 total" in text
    assert "rows not shown: the Arrow rowset" in text


def test_chunked_result_and_redacted_stage_credentials():
    body = {
        "data": {
            "rowtype": [{"name": "X", "type": "text", "length": 10}],
            "rowset": [["a"], ["b"]],
            "total": 300000,
            "returned": 2,
            "qrmk": "secret-qrmk",
            "chunkHeaders": {"x-amz-server-side-encryption-customer-key": "secret-key"},
            "chunks": [
                {
                    "url": "https://s3/x?X-Amz-Signature=abc",
                    "rowCount": 150000,
                    "uncompressedSize": 4_000_000,
                    "compressedSize": 1_000_000,
                },
                {
                    "url": "https://s3/y?X-Amz-Signature=def",
                    "rowCount": 149998,
                    "uncompressedSize": 4_000_000,
                    "compressedSize": 1_000_000,
                },
            ],
            "stageInfo": {
                "locationType": "S3",
                "location": "bucket/p/",
                "creds": {"AWS_SECRET_KEY": "secret-aws"},
            },
        },
        "success": True,
    }
    text = render(Endpoint.QUERY, False, body)
    assert "Chunks           2 chunks, 299,998 rows, 7.6 MiB uncompressed" in text
    assert "Result: first 2 of 300,000 rows" in text
    assert "299,998 rows in 2 chunks, fetched by the client" in text
    assert "Stage            S3 bucket/p/ (credentials redacted)" in text
    for secret in ("secret-qrmk", "secret-key", "secret-aws", "abc", "def"):
        assert secret not in text


def test_policy_refusal_and_recording_context_are_shown():
    body = {
        "data": {"errorCode": "399003", "sqlState": "42000"},
        "code": "399003",
        "message": "hoopgw policy: DELETE without WHERE is not allowed",
        "success": False,
    }
    hoopgw = {
        "session_id": "0190f3c4-7b1a-7c2e-9d4f-1a2b3c4d5e6f",
        "caller": "alice",
        "role": "ANALYST",
        "refusal": {"code": 399003, "reason": "delete without where", "by": "guardrails"},
        "guardrail": {"decision": "block", "rule": "no_unbounded_delete"},
        "truncated": {"response": {"size": 5_000_000, "sha256": "ab" * 32}},
    }
    text = render(Endpoint.QUERY, False, body, hoopgw=hoopgw)
    assert "Refusal          blocked by hoopgw policy" in text
    assert "Caller           alice" in text
    assert "Refused by       guardrails: delete without where" in text
    assert "Guardrail        block (rule no_unbounded_delete)" in text
    assert "truncated in the recording (4.8 MiB originally" in text


def test_sql_api_token_and_monitoring_bodies():
    statement = {"statement": "select 1", "warehouse": "WH", "role": "R", "timeout": 60}
    assert "Context          warehouse WH, role R" in render(Endpoint.SQL_API, True, statement)
    answer = {
        "statementHandle": "01ab",
        "code": "090001",
        "message": "Statement executed successfully.",
        "resultSetMetaData": {"numRows": 1, "rowType": [{"name": "1", "type": "fixed"}]},
        "data": [["1"]],
    }
    text = render(Endpoint.SQL_API, False, answer)
    assert "Statement handle 01ab" in text and "Result: 1 row\n" in text
    renewal = {
        "data": {"sessionToken": "tok-1", "validityInSecondsST": 3600, "masterToken": "tok-2"},
        "success": True,
    }
    text = render(Endpoint.TOKEN_REQUEST, False, renewal)
    assert "Session token    [REDACTED], valid 3600 s" in text
    assert "tok-1" not in text and "tok-2" not in text
    status = {"data": {"queries": [{"id": "01ab", "status": "SUCCESS"}]}, "success": True}
    assert "| 01ab     | SUCCESS |" in render(Endpoint.MONITORING, False, status)


def test_sql_that_sqlglot_cannot_parse_is_shown_as_sent():
    assert format_sql("select from where (") is None
    text = render(Endpoint.QUERY, True, {"sqlText": "select from where ("})
    assert "SQL\n---\n  select from where (" in text


def test_loaded_as_a_script_in_mitmdump(tmp_path: Path):
    """`-s addons/contentview/__init__.py` loads on its own (no gateway hooks, no Snowflake
    connector)."""
    import subprocess

    from tests.stack import BIN, REPO_ROOT

    flows = tmp_path / "one.flows"
    flow = tflow.tflow(resp=True)
    flow.request.path = "/queries/v1/query-request?requestId=1"
    flow.request.content = b'{"sqlText": "select 42"}'
    with flows.open("wb") as file:
        io.FlowWriter(file).add(flow)
    done = subprocess.run(
        [
            str(BIN / "mitmdump"),
            "-n",
            "-r",
            str(flows),
            "-s",
            str(REPO_ROOT / "addons" / "contentview" / "__init__.py"),
            "--set",
            f"confdir={tmp_path / 'conf'}",
            "--flow-detail",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Snowflake query request" in done.stdout
    assert "SELECT\n" in done.stdout and "  42" in done.stdout


def test_a_100k_row_json_rowset_is_bounded_too():
    body = {
        "data": {
            "rowtype": [
                {"name": "N", "type": "fixed", "scale": 0, "precision": 38},
                {"name": "DAY", "type": "date"},
                {"name": "AT", "type": "timestamp_ntz", "scale": 9},
            ],
            "rowset": [[str(i), "19724", "1704164645.123000000"] for i in range(100_000)],
            "total": 100_000,
            "queryResultFormat": "json",
        },
        "success": True,
    }
    data = orjson.dumps(body)
    started = time.perf_counter()
    text = render(Endpoint.QUERY, False, orjson.loads(data))
    elapsed = time.perf_counter() - started
    assert f"Result: first {MAX_ROWS} of 100,000 rows" in text
    assert "|            0 | 2024-01-02 | 2024-01-02 03:04:05.123 |" in text
    assert len(text.splitlines()) < MAX_ROWS + 30
    assert elapsed < 1.0, f"rendering took {elapsed:.2f}s"


def test_temporal_bindings_read_like_result_rows():
    """Bind values as the Python connector encodes them, shown as the row decoder shows dates."""
    import datetime

    from snowflake.connector.converter import SnowflakeConverter

    from hoopgw.addons.contentview.sql import bindings_section

    moment = datetime.datetime(2024, 3, 1, 12, 34, 56, 789000)
    converter = SnowflakeConverter()
    values = {
        "1": ("TIMESTAMP_NTZ", moment),
        "2": ("DATE", moment.date()),
        "3": ("TIME", moment.time()),
        "4": (
            "TIMESTAMP_TZ",
            moment.replace(tzinfo=datetime.timezone(datetime.timedelta(hours=2))),
        ),
        "5": ("TIMESTAMP_NTZ", "not a number"),
    }
    bindings = {
        name: {
            "type": kind,
            "value": value
            if isinstance(value, str)
            else converter.to_snowflake_bindings(kind, value),
        }
        for name, (kind, value) in values.items()
    }
    heading, lines = bindings_section(bindings)
    text = "\n".join(lines)
    assert heading == "Bindings (5)"
    assert "2024-03-01 12:34:56.789" in text
    assert "| 2 | DATE          | 2024-03-01" in text
    assert "| 3 | TIME          | 12:34:56.789 " in text
    assert "2024-03-01 12:34:56.789 +02:00" in text
    assert "not a number" in text
    assert bindings["1"]["value"] not in text


def test_sql_api_partitions_fetched_are_counted_in_the_view():
    answer = {
        "statementHandle": "01ab",
        "code": "090001",
        "resultSetMetaData": {
            "numRows": 20,
            "rowType": [{"name": "N"}],
            "partitionInfo": [{"rowCount": 5}] * 4,
        },
        "data": [["1"]],
    }
    live = render(Endpoint.SQL_API, False, answer, hoopgw={"partitions_fetched": 3})
    assert "20 rows in 4 partitions, 3 of 4 fetched" in live
    finished = render(Endpoint.SQL_API, False, answer, hoopgw={"partitions_fetched": 4})
    assert "20 rows in 4 partitions, all fetched" in finished
    assert "partitions, " not in render(Endpoint.SQL_API, False, answer)  # fetches not seen
