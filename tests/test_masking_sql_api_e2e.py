"""Masking SQL API v2 answers end to end: a real gateway in front of the strict upstream.

The strict upstream answers every SQL API statement with one row that echoes
the statement text, so what the caller sends comes back as result data.
"""

from __future__ import annotations

import http.client
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from hoopgw.recorder.secrets import new_token_key
from tests import stack
from tests.bodies import key_pair_gateway_options
from tests.strict_upstream import StrictUpstream

ACCOUNT = "mk12345"
SERVICE_USER = "svc_hoopgw"
TOKEN_KEY_ENV = "HOOPGW_TEST_TOKEN_KEY"
GROUPS = ["agents", "readers"]
POLICY = """
[[rule]]
name = "agents-see-no-pii"
groups = ["agents"]
detect = ["email", "credit_card"]
"""


@pytest.fixture(scope="module")
def strict(key_pair_strict: StrictUpstream) -> StrictUpstream:
    return key_pair_strict


@pytest.fixture(scope="module")
def gw(gateway_factory, strict, oidc, service_key: Path, workdir: Path) -> stack.Gateway:
    policy = workdir / f"masking-sql-api-{uuid.uuid4().hex[:6]}.toml"
    policy.write_text(POLICY)
    options = key_pair_gateway_options(
        account=ACCOUNT,
        user=SERVICE_USER,
        service_key=service_key,
        groups=GROUPS,
        token_key_env=TOKEN_KEY_ENV,
        policy=policy,
    )
    return gateway_factory(
        strict.url, options, env={TOKEN_KEY_ENV: new_token_key()}, name="masking-sql-api-gw"
    )


def statement(gateway: stack.Gateway, token: str, sql: str) -> tuple[int, dict[str, Any]]:
    connection = http.client.HTTPConnection(stack.LOOPBACK, gateway.port, timeout=30)
    try:
        connection.request(
            "POST",
            "/api/v2/statements",
            json.dumps({"statement": sql}),
            {
                "Content-Type": "application/json",
                "Authorization": f"Bearer {token}",
                "X-Snowflake-Authorization-Token-Type": "OAUTH",
            },
        )
        answer = connection.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        connection.close()


SQL = "select 'ada@example.com', '4111 1111 1111 1111'"


def test_sql_api_rows_are_masked_for_a_caller_whose_rules_say_so(gw, oidc) -> None:
    status, answer = statement(gw, oidc.mint("ada", groups=["agents"]), SQL)
    assert status == 200, answer
    assert answer["data"][0][0] == "[MASKED:credit_card]"  # the first kind found in the cell
    assert "ada@example.com" not in json.dumps(answer["data"])


def test_sql_api_rows_are_untouched_for_a_caller_without_rules(gw, oidc) -> None:
    status, answer = statement(gw, oidc.mint("rex", groups=["readers"]), SQL)
    assert status == 200, answer
    assert answer["data"][0][0] == SQL
