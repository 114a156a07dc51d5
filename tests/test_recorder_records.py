"""The pure record builders (`recorder.records`), on plain dicts."""

from __future__ import annotations

from typing import Any

from hoopgw.recorder.records import (
    add_statement,
    query_id_in_path,
    statement_outcome,
    withhold_statement_echoes,
)
from hoopgw.recorder.redaction import REDACTED


def test_statement_outcome_flattens_a_query_answer() -> None:
    answer = {
        "success": True,
        "data": {
            "queryId": "q1",
            "rowtype": [{"name": "A"}, {"name": "B"}],
            "total": 7,
            "chunks": [{"rowCount": 3, "uncompressedSize": 10}, {"rowCount": 4}],
            "finalDatabaseName": "DB",
        },
    }
    assert statement_outcome(answer) == {
        "success": True,
        "query_id": "q1",
        "total": 7,
        "database": "DB",
        "columns": ["A", "B"],
        "chunk_count": 2,
        "chunk_rows": 7,
        "chunk_bytes": 10,
    }
    failed = {"success": False, "code": "002003", "message": "no such table", "data": {}}
    assert statement_outcome(failed)["error_code"] == "002003"
    sql_api = {"statementHandle": "h1", "resultSetMetaData": {"numRows": 3}}
    assert statement_outcome(sql_api) == {"query_id": "h1", "total": 3}


def test_a_statement_binding_a_credential_has_every_bind_value_masked() -> None:
    bindings = {"1": {"type": "TEXT", "value": "hunter2"}, "2": {"type": "TEXT", "value": "u"}}
    body = {"sqlText": "alter user identified by password = ? for ?", "bindings": bindings}
    record: dict[str, Any] = {"body": {"json": dict(body)}}
    add_statement(record, body, 1000)
    assert {item["value"] for item in record["bindings"].values()} == {REDACTED}
    assert {item["value"] for item in record["body"]["json"]["bindings"].values()} == {REDACTED}
    plain: dict[str, Any] = {}
    assert add_statement(plain, {"sqlText": "select ?", "bindings": bindings}, 1000) is False
    assert plain["bindings"] == bindings


def test_a_masked_statement_keeps_only_the_first_line_of_its_error_messages() -> None:
    masked: dict[str, Any] = {}
    assert add_statement(masked, {"sqlText": "create user u password = 'pw1'"}, 1000) is True
    record: dict[str, Any] = {
        "message": "syntax error at 'pw1'\n  create user u password = 'pw1'",
        "body": {"json": {"message": "line one\nline two", "data": {"other": "kept\n"}}},
    }
    withhold_statement_echoes(record)
    assert record["message"] == f"syntax error at '{REDACTED}' {REDACTED}"
    assert record["body"]["json"] == {
        "message": f"line one {REDACTED}",
        "data": {"other": "kept\n"},
    }


def test_query_ids_in_monitoring_and_result_paths() -> None:
    assert query_id_in_path("/monitoring/queries/q1?x=1") == "q1"
    assert query_id_in_path("/queries/q2/result") == "q2"
    assert query_id_in_path("/session") is None
