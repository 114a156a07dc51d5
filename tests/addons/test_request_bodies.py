"""Request bodies whose reading could differ between the gateway and Snowflake are refused.

SnowflakeTraffic parses each JSON request once (`protocol.parse_request_json`): an object
that repeats a key, in any case and at any depth, is refused before any other addon reads
it, since the gateway and Snowflake might each keep a different one of the values.
"""

from __future__ import annotations

import pytest

from hoopgw.addons import protocol
from tests.addons import LOGIN_PATH, QUERY_PATH, STATEMENTS_PATH, classified, error_of
from tests.addons import snowflake_flow as flow_of

GATEWAY_PROTOCOL = str(protocol.CODE_GATEWAY_PROTOCOL)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (QUERY_PATH, b'{"sqlText": "select 1", "sqlText": "drop table t"}'),
        (QUERY_PATH, b'{"sqlText": "select 1", "SQLTEXT": "drop table t"}'),
        (QUERY_PATH, b'{"sqlText": "select 1", "sql\\u0054ext": "drop table t"}'),
        (QUERY_PATH, b'{"sqlText": "select 1", "parameters": {"A": 1, "a": 2}}'),
        (QUERY_PATH, b'{"sqlText": "select ?", "bindings": {"1": {"type": "TEXT", "type": "X"}}}'),
        (STATEMENTS_PATH, b'{"statement": "select 1", "database": "A", "database": "B"}'),
        (LOGIN_PATH, b'{"data": {"TOKEN": "a", "TOKEN": "b"}}'),
    ],
)
def test_repeated_keys_are_refused(path: str, body: bytes) -> None:
    flow = flow_of("POST", path, body)
    state = classified(flow)
    assert state.request_json is None and state.refusal is not None
    answer = error_of(flow)
    assert answer["code"] == GATEWAY_PROTOCOL
    assert "repeats the key" in answer["message"]


@pytest.mark.parametrize(
    "body", [b'{"sqlText": NaN}', b'{"sqlText": "\\ud800"}', b'{"sqlText": "x"} trailing']
)
def test_what_is_not_strict_json_is_refused(body: bytes) -> None:
    flow = flow_of("POST", QUERY_PATH, body)
    classified(flow)
    assert error_of(flow)["code"] == GATEWAY_PROTOCOL


def test_distinct_keys_and_escapes_parse() -> None:
    flow = flow_of("POST", QUERY_PATH, b'{"sqlText": "select \\u00e9", "parameters": {"A": 1}}')
    state = classified(flow)
    assert state.refusal is None
    assert state.request_json == {"sqlText": "select \u00e9", "parameters": {"A": 1}}
