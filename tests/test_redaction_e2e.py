"""No secret in any stored byte, whatever a request says about itself (real gateway, raw HTTP).

Logins carrying the caller's ID token, `create user ... password='...'`
statements, renewals, logouts, SQL API calls and telemetry are sent with the
wrong label (`text/plain`, none, `application/octet-stream`, a form, multipart,
an odd charset), with a BOM, compressed, broken, as NDJSON, and with tokens in
headers a client made up. Afterwards every byte the gateway left on disk (the
store's segments decompressed, summaries, roll-ups, whatever stays in the
spool) and its log are searched for each secret.
"""

from __future__ import annotations

import gzip
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard

from tests.bodies import login_body, query_body
from tests.conftest import UPSTREAM_TEST_PASSWORD
from tests.raw_http import Answer, Session, login, send, session_authorization, stored_records

LOGIN_PATH = "/session/v1/login-request"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
LABELS: dict[str, bytes | None] = {
    "text-plain": b"text/plain",
    "no-content-type": None,
    "octet-stream": b"application/octet-stream",
    "form": b"application/x-www-form-urlencoded",
    "json-latin1": b"application/json; charset=latin-1",
    "multipart": b"multipart/form-data; boundary=b0undary",
}


def _headers(label: bytes | None, *extra: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    headers = [(b"Accept", b"application/json"), *extra]
    if label is not None:
        headers.append((b"Content-Type", label))
    return headers


def _new_password() -> str:
    return f"Pw-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def exchange(gateway_factory, strict, oidc) -> Iterator[dict[str, Any]]:
    """Every case against a fresh gateway; then all it stored and logged, once it stopped."""
    gateway = gateway_factory(strict.url, name="redaction-gw")
    secrets: list[str] = [UPSTREAM_TEST_PASSWORD]
    outcomes: dict[str, Answer] = {}
    targets: dict[str, str] = {}

    def id_token(subject: str = "mallory") -> str:
        token = oidc.mint(subject, ["agents"])
        secrets.append(token)
        return token

    def post(case: str, path: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> Answer:
        joiner = "&" if "?" in path else "?"
        target = f"{path}{joiner}requestId={uuid.uuid4()}"
        answer = send(gateway.port, "POST", target, body, headers)
        outcomes[case] = answer
        targets[case] = target
        return answer

    # logins: the caller's ID token in the body, under every label and shape
    for label_name, label in LABELS.items():
        body = json.dumps(login_body(id_token())).encode()
        post(f"login-{label_name}", LOGIN_PATH, body, _headers(label))
    raw_login = json.dumps(login_body(id_token())).encode()
    post("login-bom", LOGIN_PATH, b"\xef\xbb\xbf" + raw_login, _headers(b"text/plain"))
    post(
        "login-gzip",
        LOGIN_PATH,
        gzip.compress(json.dumps(login_body(id_token())).encode()),
        _headers(b"text/plain", (b"Content-Encoding", b"gzip")),
    )
    for encoding in (b"br", b"zstd", b"x-made-up"):
        post(
            f"login-plain-declared-{encoding.decode()}",
            LOGIN_PATH,
            json.dumps(login_body(id_token())).encode(),
            _headers(b"text/plain", (b"Content-Encoding", encoding)),
        )
    post(
        "login-token-as-encoding",
        LOGIN_PATH,
        b"{}",
        _headers(b"application/json", (b"Content-Encoding", id_token().encode())),
    )
    broken = json.dumps(login_body(id_token())).encode()
    post("login-truncated", LOGIN_PATH, broken[:-12], _headers(b"text/plain"))
    ndjson = json.dumps(login_body(id_token())).encode()
    post("login-ndjson", LOGIN_PATH, ndjson + b"\n" + ndjson + b"\n", _headers(None))
    multipart = (
        b'--b0undary\r\nContent-Disposition: form-data; name="body"\r\n\r\n'
        + json.dumps(login_body(id_token())).encode()
        + b"\r\n--b0undary--\r\n"
    )
    post("login-multipart-wrapped", LOGIN_PATH, multipart, _headers(LABELS["multipart"]))
    post(
        "login-form-token",
        LOGIN_PATH,
        f"AUTHENTICATOR=OAUTH&TOKEN={id_token()}".encode(),
        _headers(LABELS["form"]),
    )

    # a session, then statements that set passwords, under every label
    caller_token = id_token("victor")
    session: Session = login(gateway.port, caller_token)
    secrets += [session.token, session.master_token]
    auth = session_authorization(session.token)
    for label_name, label in LABELS.items():
        password = _new_password()
        secrets.append(password)
        sql = f"create user mallory_{uuid.uuid4().hex[:6]} password='{password}'"
        body = json.dumps(query_body(sql)).encode()
        post(f"create-user-{label_name}", "/queries/v1/query-request", body, _headers(label, auth))
    password = _new_password()
    secrets.append(password)
    sql = f"alter user mallory set password = '{password}'"
    broken_query = json.dumps(query_body(sql)).encode()[:-3]
    post("create-user-truncated", "/queries/v1/query-request", broken_query, _headers(None, auth))
    for case, sql in {
        "bind-comment": "alter user mallory set PASSWORD /* new one */ = ?",
        "bind-line-comment": "alter user mallory set password -- rotated\n = :1",
        "bind-quoted": 'alter user mallory set "PASSWORD"=?',
        "bind-call": "call sys.rotate(user => 'mallory', password => ?)",
        "bind-credentials": "create stage s credentials=(aws_key_id=? aws_secret_key=?)",
    }.items():
        password = _new_password()
        secrets.append(password)
        bindings = {
            "1": {"type": "TEXT", "value": password},
            "2": {"type": "TEXT", "value": password},
        }
        body = json.dumps(query_body(sql, bindings=bindings)).encode()
        post(case, "/queries/v1/query-request", body, _headers(b"text/plain", auth))
    post(
        "query-token-in-custom-headers",
        "/queries/v1/query-request",
        json.dumps(query_body("select 1")).encode(),
        _headers(
            b"application/json",
            auth,
            (b"X-Trace", id_token().encode()),
            (b"x-snowflake-authorization-token-type", id_token().encode()),
            (b"COOKIE", f"session={id_token()}".encode()),
        ),
    )

    # renewal, telemetry, logout and the SQL API, mislabelled
    renewal = {"oldSessionToken": session.token, "requestType": "RENEW"}
    post(
        "renewal-text",
        "/session/token-request",
        json.dumps(renewal).encode(),
        _headers(b"text/plain", session_authorization(session.master_token)),
    )
    telemetry = f'logs=[{{"note": "{id_token()}", "pw": "password={_new_password()}"}}]'
    post("telemetry-text", "/telemetry/send", telemetry.encode(), _headers(b"text/plain", auth))
    password = _new_password()
    secrets.append(password)
    post(
        "sql-api-text",
        "/api/v2/statements",
        json.dumps({"statement": f"alter user mallory set password='{password}'"}).encode(),
        _headers(
            b"text/plain",
            (b"Authorization", f"Bearer {id_token()}".encode()),
            (b"X-Snowflake-Authorization-Token-Type", b"OAUTH"),
        ),
    )
    post(
        "logout-text",
        "/session?delete=true",
        f"token={id_token()}&reason=done".encode(),
        _headers(b"text/plain", auth),
    )
    gateway.stop()
    home = gateway.workdir
    yield {
        "home": home,
        "secrets": secrets,
        "outcomes": outcomes,
        "targets": targets,
        "records": stored_records(home / "store"),
        "log": gateway.log(),
    }


def _every_stored_byte(home: Path) -> Iterator[tuple[Path, bytes]]:
    """Each file under the gateway's directory, zstd frames decompressed."""
    for path in sorted(home.rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        if data.startswith(ZSTD_MAGIC):
            reader = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True)
            data = reader.read()
        yield path, data


def test_the_gateway_parsed_what_it_was_sent_whatever_the_label(exchange) -> None:
    """The control: mislabelled but well-formed logins and statements were served."""
    outcomes = exchange["outcomes"]
    for label_name in LABELS:
        assert outcomes[f"login-{label_name}"].json.get("success") is True, label_name
        assert outcomes[f"create-user-{label_name}"].status == 200, label_name
    assert outcomes["login-gzip"].json.get("success") is True


def test_no_secret_in_any_stored_byte(exchange) -> None:
    assert exchange["records"], "nothing was stored"
    found = []
    payloads = _jwt_payloads(exchange)
    for path, data in _every_stored_byte(exchange["home"]):
        for secret in exchange["secrets"]:
            if secret.encode() in data:
                found.append((path.name, secret[:12]))
        lowered = data.lower()
        found += [(path.name, payload) for payload in payloads if payload.encode() in lowered]
    assert found == []


def test_no_secret_in_the_gateway_log(exchange) -> None:
    log = exchange["log"]
    assert "hoopgw" in log
    assert [secret[:12] for secret in exchange["secrets"] if secret in log] == []
    assert [payload for payload in _jwt_payloads(exchange) if payload in log.lower()] == []


def _request(records: list[dict[str, Any]], path_start: str, predicate) -> list[dict[str, Any]]:
    return [
        record
        for record in records
        if record["kind"] in ("request", "refusal")
        and str(record.get("path", "")).startswith(path_start)
        and predicate(record)
    ]


def test_mislabelled_bodies_are_recorded_redacted_as_what_they_are(exchange) -> None:
    records = exchange["records"]
    logins = _request(records, LOGIN_PATH, lambda r: "data" in (r["body"].get("json") or {}))
    assert len(logins) >= len(LABELS) + 2  # every label, the BOM and the gzip
    assert {login["body"]["json"]["data"]["TOKEN"] for login in logins} == {"[REDACTED]"}
    unparsed = _request(records, LOGIN_PATH, lambda r: "omitted" in r["body"])
    assert all("json" not in r["body"] for r in unparsed)
    # logins whose body does not parse are refused without a verified caller: counted in a
    # refusal_summary, whose samples keep the body's size and nothing of its bytes
    refused = _refused_login_cases(exchange)
    assert len(refused) >= 8
    samples = {sample["path"]: sample for sample in _samples(records)}
    targets = exchange["targets"]
    for case in refused:
        sample = samples[targets[case]]
        assert sample["endpoint"] == "login" and sample["refusal"]["by"] == "protocol", case
        assert sample["body_size"] > 0 and "body" not in sample, case
    assert not {targets[case] for case in refused} & {r.get("path") for r in records}
    bound = _request(records, "/queries/v1/query-request", lambda r: "bindings" in r)
    assert len(bound) == 5
    assert {r["bindings_masked"] for r in bound} == {"credential"}
    statements = _request(records, "/queries/v1/query-request", lambda r: "sql" in r)
    assert all("'[REDACTED]'" in r["sql"] for r in statements if "password=" in r["sql"])


def test_refusal_and_error_texts_hold_no_token(exchange) -> None:
    """A refusal reason quotes what was refused (here a Content-Encoding that is a JWT, which
    the gateway lower-cases): the refusal of that anonymous login is counted in a
    refusal_summary whose reasons and samples hold the reason with the token masked."""
    records = exchange["records"]
    summaries = [r for r in records if r["kind"] == "refusal_summary"]
    masked = "unsupported Content-Encoding '[REDACTED]'"
    assert masked in [item["reason"] for r in summaries for item in r["reasons"]]
    sample = {s["path"]: s for s in _samples(records)}[
        exchange["targets"]["login-token-as-encoding"]
    ]
    assert sample["refusal"]["reason"] == masked
    refusals = [r.get("refusal") for r in records if r["kind"] == "refusal"]
    text = json.dumps([refusals, summaries])
    assert [secret[:12] for secret in exchange["secrets"] if secret in text] == []
    assert [payload for payload in _jwt_payloads(exchange) if payload in text.lower()] == []


def _refused_login_cases(exchange: dict[str, Any]) -> list[str]:
    return [
        case
        for case, answer in exchange["outcomes"].items()
        if case.startswith("login-") and answer.json.get("success") is False
    ]


def _samples(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        sample
        for record in records
        if record["kind"] == "refusal_summary"
        for sample in record["samples"]
    ]


def _jwt_payloads(exchange: dict[str, Any]) -> list[str]:
    """The start of each ID token's claims, lower-cased: a reason may quote a token in any
    case, cut anywhere, so its whole text is no test."""
    return [
        secret.split(".")[1][:24].lower()
        for secret in exchange["secrets"]
        if secret.count(".") == 2 and secret.startswith("eyJ")
    ]
