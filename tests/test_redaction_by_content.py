"""Redaction follows what a body is, not what it says it is; bindings are masked by structure.

In-process: `body_for_record` on bodies of every shape a client can send
(JSON with a BOM, a top-level array or scalar, NDJSON, form-shaped text,
multipart, compressed or UTF-16 bytes, cut at any limit), and the binding and
literal masks on the spellings Snowflake accepts for a credential property
(comments between the name and `=`, `=>`, quoted names, `IDENTIFIED BY`,
expressions). tests/test_redaction_e2e.py sends the same through a gateway.
"""

from __future__ import annotations

import gzip
import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from hoopgw.recorder.records import BINDS_CREDENTIAL, UNREADABLE_SQL, add_statement
from hoopgw.recorder.redaction import (
    REDACTED,
    body_for_record,
    redact_headers,
    redact_path,
    redact_sql,
)
from hoopgw.recorder.statements.credentials import binds_credential
from tests.bodies import login_body, query_body

JWT = (
    "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0."
    "eyJzdWIiOiJtYWxsb3J5IiwiZ3JvdXBzIjpbImFnZW50cyJdfQ."
    "c2lnbmF0dXJlLW5vdC1yZWFsbHktYS1zaWduYXR1cmU"
)
PASSWORD = "Hunter2-never-stored"
LOGIN = orjson.dumps(login_body(JWT))
CREATE_USER = orjson.dumps(query_body(f"create user mallory password='{PASSWORD}'"))


def stored(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body)


def leaks(body: dict[str, Any], *secrets: str) -> list[str]:
    text = stored(body)
    return [secret for secret in secrets if secret.encode() in text]


def multipart(payload: bytes) -> bytes:
    return (
        b'--b0undary\r\nContent-Disposition: form-data; name="body"\r\n'
        b"Content-Type: application/json\r\n\r\n" + payload + b"\r\n--b0undary--\r\n"
    )


BODIES: dict[str, bytes] = {
    "login-json": LOGIN,
    "login-bom": b"\xef\xbb\xbf" + LOGIN,
    "login-padded": b"\r\n\t " + LOGIN + b"\n\n",
    "login-truncated": LOGIN[:-10],
    "login-trailing-garbage": LOGIN + b"}x",
    "login-ndjson": LOGIN + b"\n" + LOGIN + b"\n",
    "login-multipart": multipart(LOGIN),
    "login-utf16": json.dumps(login_body(JWT)).encode("utf-16"),
    "login-gzip": gzip.compress(LOGIN),
    "login-form": f"ACCOUNT_NAME=x&TOKEN={JWT}&LOGIN_NAME=agent".encode(),
    "login-form-json-value": b"data=" + LOGIN,
    "jwt-alone": JWT.encode(),
    "jwt-json-string": orjson.dumps(JWT),
    "jwt-json-array": orjson.dumps([JWT, 1, None]),
    "jwt-under-an-innocent-key": orjson.dumps({"note": f"mine is {JWT}, keep it"}),
    "bearer-text": f"Authorization: Bearer {JWT}\r\n".encode(),
    "renewal-text": f'{{"oldSessionToken": "{JWT}", "requestType": "RENEW"'.encode(),
    "create-user-json": CREATE_USER,
    "create-user-bom": b"\xef\xbb\xbf" + CREATE_USER,
    "create-user-broken": CREATE_USER[:-1],
    "create-user-text": f"create user mallory password='{PASSWORD}'".encode(),
    "create-user-form": f"sqlText=create+user+mallory+password%3D%27{PASSWORD}%27".encode(),
    "create-user-json-string": orjson.dumps(f"create user mallory password='{PASSWORD}'"),
    "create-user-sql-api": orjson.dumps(
        {"statement": f"alter user mallory set password = '{PASSWORD}'", "timeout": 60}
    ),
    "password-form": f"user=mallory&password={PASSWORD}".encode(),
}


@pytest.mark.parametrize("limit", [0, 64, 1 << 20], ids=["limit-0", "limit-64", "limit-1MiB"])
@pytest.mark.parametrize("name", list(BODIES))
def test_no_body_shape_keeps_its_secret(name: str, limit: int) -> None:
    body = body_for_record(BODIES[name], limit)
    assert body["size"] == len(BODIES[name])
    assert leaks(body, JWT, PASSWORD) == [], body


def test_what_parses_is_kept_redacted_whatever_it_was_labelled() -> None:
    body = body_for_record(b"\xef\xbb\xbf" + LOGIN, 1 << 20)
    assert body["json"]["data"]["TOKEN"] == REDACTED
    assert body["json"]["data"]["LOGIN_NAME"] == "agent"
    form = body_for_record(b"grant_type=x&refresh_token=abc&client_id=app", 1 << 20)
    assert form["form"] == [["grant_type", "x"], ["refresh_token", REDACTED], ["client_id", "app"]]
    sql = body_for_record(CREATE_USER, 1 << 20)
    assert sql["json"]["sqlText"] == "create user mallory password='[REDACTED]'"
    scalar = body_for_record(orjson.dumps(f"token {JWT} and more"), 1 << 20)
    assert scalar["json"] == f"token {REDACTED}"


def test_what_does_not_parse_is_size_and_a_scrubbed_sample() -> None:
    body = body_for_record(BODIES["login-truncated"], 1 << 20)
    assert body["omitted"] == "unparsable" and "json" not in body
    assert body["sample"].startswith('{"data":{"ACCOUNT_NAME":"hoopgw","LOGIN_NAME":"agent"')
    assert body["sample"].endswith(f'"AUTH {REDACTED}')  # cut at the first credential word
    assert "sha256" not in body  # a short body's hash would let a reader test guesses
    html = body_for_record(b"<html><title>502 Bad Gateway</title></html>", 1 << 20)
    assert html["sample"] == "<html><title>502 Bad Gateway</title></html>"
    assert body_for_record(BODIES["login-gzip"], 1 << 20)["omitted"] == "binary"
    assert "sample" not in body_for_record(BODIES["login-utf16"], 1 << 20)
    big = body_for_record(b"x " * 10_000, 100)
    assert big["truncated"] is True and len(big["sha256"]) == 64
    assert len(big["sample"]) <= 256


SAFE_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=300).filter(
    lambda text: JWT not in text and PASSWORD not in text
)
FRAGMENTS = st.sampled_from(
    [
        JWT,
        f'"TOKEN": "{JWT}"',
        f"token={JWT}",
        f"Authorization: Bearer {JWT}",
        f"password='{PASSWORD}'",
        f'PASSWORD = "{PASSWORD}"',
        f"password={PASSWORD}",
        f"identified by '{PASSWORD}'",
        f"secret: {PASSWORD}",
    ]
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(prefix=SAFE_TEXT, fragment=FRAGMENTS, suffix=SAFE_TEXT, limit=st.integers(0, 2048))
@example(prefix="", fragment=f"password={PASSWORD}", suffix="", limit=1024)
@example(prefix='{"a": 1, "b": "', fragment=JWT, suffix='"', limit=1024)
@example(prefix="0=A", fragment=f"identified by '{PASSWORD}'", suffix="", limit=39)
@example(prefix="a=", fragment=f"password='{PASSWORD}'", suffix="&b=2", limit=1024)
def test_a_secret_anywhere_in_a_body_that_is_not_json_is_never_kept(
    prefix: str, fragment: str, suffix: str, limit: int
) -> None:
    """Forms and bodies that do not parse. (JSON strings under keys that name no
    credential are data, kept like result rows, apart from JWTs and SQL keys.)"""
    raw = (prefix + fragment + suffix).encode()
    assume(not _is_json(raw))
    assert leaks(body_for_record(raw, limit), JWT, PASSWORD) == []


def _is_json(raw: bytes) -> bool:
    try:
        orjson.loads(raw.removeprefix(b"\xef\xbb\xbf"))
    except orjson.JSONDecodeError:
        return False
    return True


# --- bindings ------------------------------------------------------------------------

CREDENTIAL_NAMES = [
    "PASSWORD",
    "password",
    '"PASSWORD"',
    '"password"',
    "PassCode",
    "TOKEN",
    "oauth_refresh_token",
    "RSA_PUBLIC_KEY_2",
    "AWS_SECRET_KEY",
    "MASTER_KEY",
    "AZURE_SAS_TOKEN",
    "new_password",
]
GAPS = st.lists(
    st.sampled_from([" ", "", "\n", "\t", "/* note */", "-- note\n", "  /* a */ -- b\n "]),
    max_size=3,
).map("".join)
PLACEHOLDERS = st.sampled_from(["?", ":1", ":2", ":new_pw", "(?)", "concat(?, '')", "'x' || ?"])


def _statement(template: str, name: str, gap1: str, gap2: str, op: str, value: str) -> str:
    return template.format(assign=f"{name}{gap1}{op}{gap2}{value}")


TEMPLATES = st.sampled_from(
    [
        "alter user mallory set {assign}",
        "ALTER USER mallory SET must_change_password = false, {assign} comment = 'x'",
        "create user mallory {assign} default_role = agent",
        "create stage s url = 's3://b/' credentials = (aws_key_id = 'k' {assign})",
        "call sys.set_pw(user => 'mallory', {assign})",
        "execute immediate $$alter user mallory set {assign}$$",
        "begin alter user mallory set {assign}; end",
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    template=TEMPLATES,
    name=st.sampled_from(CREDENTIAL_NAMES),
    gap1=GAPS,
    gap2=GAPS,
    op=st.sampled_from(["=", "=>", ":="]),
    value=PLACEHOLDERS,
)
@example(
    template="alter user mallory set {assign}",
    name="PASSWORD",
    gap1=" /* why */ ",
    gap2=" ",
    op="=",
    value="?",
)
@example(
    template="call sys.set_pw(user => 'mallory', {assign})",
    name="password",
    gap1=" ",
    gap2=" ",
    op="=>",
    value="?",
)
def test_a_bound_credential_masks_every_binding(
    template: str, name: str, gap1: str, gap2: str, op: str, value: str
) -> None:
    sql = _statement(template, name, gap1, gap2, op, value)
    bindings = {
        "1": {"type": "TEXT", "value": PASSWORD},
        "2": {"type": "TEXT", "value": PASSWORD},
    }
    record: dict[str, Any] = {"body": {"json": {"sqlText": sql, "bindings": bindings}}}
    add_statement(record, {"sqlText": sql, "bindings": bindings}, 1 << 20)
    assert record["bindings_masked"] == BINDS_CREDENTIAL, sql
    assert leaks(record, PASSWORD) == [], sql


@settings(max_examples=300, deadline=None)
@given(
    template=TEMPLATES,
    name=st.sampled_from(CREDENTIAL_NAMES),
    gap1=GAPS,
    gap2=GAPS,
    op=st.sampled_from(["=", "=>"]),
    value=st.sampled_from(
        [
            f"'{PASSWORD}'",
            f"concat('{PASSWORD[:6]}', '{PASSWORD[6:]}')",
            f"'{PASSWORD[:6]}' || '{PASSWORD[6:]}'",
            f"('{PASSWORD}')",
            f"N'{PASSWORD}'",
            f"{PASSWORD.replace('-', '_')}",
        ]
    ),
)
def test_a_credential_literal_is_masked_in_the_sql_text(
    template: str, name: str, gap1: str, gap2: str, op: str, value: str
) -> None:
    sql = _statement(template, name, gap1, gap2, op, value)
    masked = redact_sql(sql)
    for piece in (PASSWORD, PASSWORD[:6], PASSWORD[6:], PASSWORD.replace("-", "_")):
        assert piece not in masked, (sql, masked)


def test_identified_by_and_bare_spellings() -> None:
    assert binds_credential("create user u identified by ?") is True
    assert binds_credential("alter user u set password ?") is True
    assert redact_sql(f"create user u identified by '{PASSWORD}'") == (
        "create user u identified by '[REDACTED]'"
    )
    assert redact_sql("alter user u set password = ?, must_change_password = true") == (
        "alter user u set password = ?, must_change_password = true"
    )


@pytest.mark.parametrize(
    "sql",
    [
        "select ?",
        "insert into t (name, note) values (?, ?)",
        "select * from t where name = :1 and id = :2",
        "alter user u set must_change_password = true, comment = ?",
        "select password_policy_name from t where id = ?",
    ],
)
def test_statements_that_bind_no_credential_keep_their_bindings(sql: str) -> None:
    bindings = {"1": {"type": "TEXT", "value": "v"}, "2": {"type": "FIXED", "value": "2"}}
    record: dict[str, Any] = {}
    add_statement(record, {"sqlText": sql, "bindings": bindings}, 1 << 20)
    assert record["bindings"] == bindings
    assert "bindings_masked" not in record


@pytest.mark.parametrize(
    "body",
    [
        {"sqlText": "alter user u set password = 'unterminated ?", "bindings": {}},
        {"sqlText": ["alter user u set password = ?"], "bindings": {}},
        {"bindings": {}},
    ],
    ids=["unterminated-string", "sql-not-a-string", "no-sql"],
)
def test_bindings_of_sql_that_cannot_be_read_are_all_masked(body: dict[str, Any]) -> None:
    body = {**body, "bindings": {"1": {"type": "TEXT", "value": PASSWORD}}}
    record: dict[str, Any] = {}
    add_statement(record, body, 1 << 20)
    assert record["bindings"] == {"1": {"type": "TEXT", "value": REDACTED}}
    assert record["bindings_masked"] == UNREADABLE_SQL


# --- headers and paths ---------------------------------------------------------------


def test_headers_that_carry_a_token_are_masked_by_name_in_any_case_or_by_value() -> None:
    headers = [
        ("AUTHORIZATION", f"Bearer {JWT}"),
        ("cookie", "session=abc"),
        ("X-Snowflake-Authorization-Token-Type", "KEYPAIR_JWT"),
        ("x-snowflake-authorization-token-type", JWT),
        ("X-Trace", JWT),
        ("X-Forwarded-User", f"mallory; jwt={JWT}"),
        ("Via", f"Bearer {PASSWORD}"),
        ("User-Agent", "PythonConnector/3.12"),
    ]
    redacted = dict(redact_headers(headers))
    assert redacted["X-Snowflake-Authorization-Token-Type"] == "KEYPAIR_JWT"
    assert redacted["User-Agent"] == "PythonConnector/3.12"
    assert leaks({"h": redact_headers(headers)}, JWT, PASSWORD, "session=abc") == []


def test_a_jwt_in_a_query_string_is_masked_under_any_name() -> None:
    path = redact_path(f"/session/v1/login-request?requestId=1&x={JWT}")
    assert path == f"/session/v1/login-request?requestId=1&x={REDACTED}"
