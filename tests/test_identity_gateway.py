"""Identity end to end: the real connector, a real gateway, a strict upstream in front of fakesnow.

The strict upstream (tests/strict_upstream.py) accepts only the gateway's
key-pair JWT and records everything it receives, so these tests see exactly
what crossed each side of the gateway.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc.jwk import RSAKey
from snowflake.connector import DatabaseError

from hoopgw.addons.query_ids import QueryIdBinder, session_scope
from hoopgw.addons.session_tokens import TOKEN_PREFIX, TokenSealer, decode_token_key
from hoopgw.recorder.secrets import new_token_key
from tests import stack
from tests.bodies import login_body, write_service_key
from tests.jwt_issuer import LocalIssuer
from tests.strict_upstream import StrictUpstream, contains_any

ACCOUNT = "xy12345.eu-west-1"
SERVICE_USER = "svc_hoopgw"
ROLE_MAP = ["analysts=ANALYST:WH_ANALYTICS", "agents=AGENT"]
TOKEN_KEY_ENV = "HOOPGW_TEST_TOKEN_KEY"


@pytest.fixture(scope="module")
def service_key(workdir: Path) -> tuple[rsa.RSAPrivateKey, Path]:
    path = workdir / f"service-key-{uuid.uuid4().hex[:6]}.p8"
    key, _ = write_service_key(path)
    return key, path


@pytest.fixture(scope="module")
def strict(fakesnow_server, service_key) -> Iterator[StrictUpstream]:
    upstream = StrictUpstream(
        fakesnow_server.url, ACCOUNT, SERVICE_USER, public_key=service_key[0].public_key()
    ).start()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def token_key_env() -> dict[str, str]:
    return {TOKEN_KEY_ENV: new_token_key()}


def identity_options(issuer: str, key_path: Path, **overrides: Any) -> dict[str, Any]:
    return {
        "hoopgw_oidc_issuer": issuer,
        "hoopgw_oidc_audience": "hoopgw",
        "hoopgw_allowed_groups": ["agents", "analysts"],
        "hoopgw_role_map": ROLE_MAP,
        "hoopgw_accept_password_token": False,
        "hoopgw_upstream_account": ACCOUNT,
        "hoopgw_upstream_user": SERVICE_USER,
        "hoopgw_upstream_secondary_roles": "none",
        "hoopgw_upstream_private_key": f"file:{key_path}",
        "hoopgw_upstream_password": "",
        "hoopgw_upstream_oauth_token": "",
        "hoopgw_token_key": f"env:{TOKEN_KEY_ENV}",
        **overrides,
    }


@pytest.fixture(scope="module")
def gw(gateway_factory, strict, oidc, service_key, token_key_env) -> stack.Gateway:
    return gateway_factory(
        strict.url,
        identity_options(oidc.issuer, service_key[1]),
        env=token_key_env,
        name="identity-gw",
    )


# Raw HTTP, for what a driver hides: the exact answers and tokens on the wire.


def call(
    gateway: stack.Gateway,
    path: str,
    body: dict[str, Any] | None = None,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    method: str = "POST",
) -> tuple[int, dict[str, Any], bytes]:
    connection = http.client.HTTPConnection(gateway.host, gateway.port, timeout=30)
    try:
        sent = {"Content-Type": "application/json", "Accept": "application/json"}
        if token is not None:
            sent["Authorization"] = f'Snowflake Token="{token}"'
        sent.update(headers or {})
        connection.request(method, path, json.dumps(body).encode() if body else None, sent)
        answer = connection.getresponse()
        raw = answer.read()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = {}
        return answer.status, parsed if isinstance(parsed, dict) else {}, raw
    finally:
        connection.close()


def found_in(text: str, needles: Iterable[str]) -> list[str]:
    return [needle for needle in needles if needle and needle in text]


def query(gateway: stack.Gateway, token: str | None, sql: str) -> dict[str, Any]:
    path = f"/queries/v1/query-request?requestId={uuid.uuid4()}"
    return call(gateway, path, {"sqlText": sql, "sequenceId": 1}, token=token)[1]


def test_good_token_end_to_end(gw, strict, oidc, connect, unique_name) -> None:
    connection = connect(gw, oidc.mint("ada", groups=["agents"]))
    cursor = connection.cursor()
    db = unique_name("idn")
    cursor.execute(f"create database {db}")
    cursor.execute(f"create schema {db}.app")
    cursor.execute(f"create table {db}.app.t (n int)")
    cursor.execute(f"insert into {db}.app.t values (?), (?)", (1, 2))
    assert cursor.execute(f"select sum(n) from {db}.app.t").fetchone() == (3,)

    login = strict.logins()[-1]
    assert login == {
        "authenticator": "SNOWFLAKE_JWT",
        "login_name": SERVICE_USER,
        "role": "AGENT",
        "warehouse": None,
    }
    assert connection.role == "AGENT"
    assert connection.session_id


def test_upstream_sees_only_the_gateway_credential(gw, strict, oidc, connect) -> None:
    token = oidc.mint("bea", groups=["agents"], email="bea@example.com")
    mark = strict.mark()
    connection = connect(gw, token, user="bea@example.com", password="ignored-by-oauth")
    connection.cursor().execute("select 1").fetchone()
    received = strict.received_since(mark)
    assert received, "the strict upstream saw nothing"
    assert contains_any(received, [token, token.split(".")[2], "bea@example.com"]) == []
    login = next(r for r in received if r.path.startswith("/session/v1/login-request"))
    data = json.loads(login.body)["data"]
    assert data["AUTHENTICATOR"] == "SNOWFLAKE_JWT"
    assert data["LOGIN_NAME"] == SERVICE_USER
    assert data["ACCOUNT_NAME"] == ACCOUNT
    assert "PASSWORD" not in data
    issued = strict.issued_tokens()
    for request in received[1:]:
        authorization = request.headers.get("Authorization", "")
        assert any(f'"{t}"' in authorization for t in issued), request.path
    assert found_in(gw.log(), [token, *issued]) == []


def test_client_receives_no_upstream_token(gw, strict, oidc, connect) -> None:
    token = oidc.mint("cy", groups=["agents"])
    status, answer, raw = call(gw, "/session/v1/login-request?request_id=1", login_body(token))
    assert status == 200 and answer["success"], answer
    data = answer["data"]
    assert data["token"].startswith(TOKEN_PREFIX)
    assert data["masterToken"].startswith(TOKEN_PREFIX)
    assert isinstance(data["sessionId"], int)
    assert data["validityInSeconds"] > 0 and data["masterValidityInSeconds"] > 0
    assert "idToken" not in data
    assert found_in(raw.decode(), strict.issued_tokens()) == []
    result = query(gw, data["token"], "select 42")
    assert result["success"], result
    connection = connect(gw, oidc.mint("cy", groups=["agents"]))
    assert connection.rest.token.startswith(TOKEN_PREFIX)
    assert connection.rest.master_token.startswith(TOKEN_PREFIX)
    assert {connection.rest.token, connection.rest.master_token}.isdisjoint(strict.issued_tokens())


def test_renewal_after_upstream_390112_keeps_the_session(gw, strict, oidc, connect) -> None:
    connection = connect(gw, oidc.mint("dee", groups=["agents"]))
    cursor = connection.cursor()
    assert cursor.execute("select 1").fetchone() == (1,)
    before_token, renewals = connection.rest.token, strict.renewals
    assert strict.expire_sessions() >= 1
    mark = strict.mark()
    assert cursor.execute("select 2").fetchone() == (2,)
    assert strict.renewals == renewals + 1
    assert connection.rest.token != before_token
    assert connection.rest.token.startswith(TOKEN_PREFIX)
    renewal = next(r for r in strict.received_since(mark) if r.path.startswith("/session/token"))
    assert "strict-MT-" in renewal.headers["Authorization"]
    assert "strict-ST-" in json.loads(renewal.body)["oldSessionToken"]


def test_expired_gateway_session_token_is_renewed_by_the_driver(
    gateway_factory, strict, oidc, service_key, token_key_env, connect
) -> None:
    short = gateway_factory(
        strict.url,
        identity_options(oidc.issuer, service_key[1], hoopgw_session_token_lifetime=2),
        env=token_key_env,
        name="short-session-gw",
    )
    connection = connect(short, oidc.mint("eve", groups=["agents"]))
    first = connection.rest.token
    assert connection.cursor().execute("select 1").fetchone() == (1,)
    stack.wait_until(
        lambda: query(short, first, "select 1").get("code") == "390112",
        timeout=10,
        what="the gateway to call the session token expired",
    )
    mark = strict.mark()
    assert query(short, first, "select 1")["message"].endswith("the session token has expired")
    assert strict.received_since(mark) == []
    assert connection.cursor().execute("select 3").fetchone() == (3,)
    assert connection.rest.token != first


def test_gateway_renews_locally_when_upstream_issues_no_master_token(
    gateway_factory, fakesnow_server, oidc, token_key_env, connect
) -> None:
    """fakesnow, like the embedded demo's upstream, returns neither masterToken nor sessionId."""
    local = gateway_factory(
        fakesnow_server.url,
        {
            "hoopgw_oidc_issuer": oidc.issuer,
            "hoopgw_oidc_audience": "hoopgw",
            "hoopgw_allowed_groups": ["agents"],
            "hoopgw_role_map": [],
            "hoopgw_upstream_account": "fakesnow",
            "hoopgw_upstream_user": "svc",
            "hoopgw_upstream_secondary_roles": "none",
            "hoopgw_upstream_password": "env:HOOPGW_TEST_FAKESNOW_PASSWORD",
            "hoopgw_upstream_private_key": "",
            "hoopgw_upstream_oauth_token": "",
            "hoopgw_session_token_lifetime": 2,
        },
        env={**token_key_env, "HOOPGW_TEST_FAKESNOW_PASSWORD": "anything"},
        name="local-renewal-gw",
    )
    _, answer, _ = call(local, "/session/v1/login-request", login_body(oidc.mint("ria")))
    assert answer["data"]["masterToken"].startswith(TOKEN_PREFIX)
    assert isinstance(answer["data"]["sessionId"], int)
    connection = connect(local, oidc.mint("ria", groups=["agents"]))
    first = connection.rest.token
    assert connection.cursor().execute("select 1").fetchone() == (1,)
    stack.wait_until(
        lambda: query(local, first, "select 1").get("code") == "390112",
        timeout=10,
        what="the gateway to call the session token expired",
    )
    assert connection.cursor().execute("select 4").fetchone() == (4,)
    assert connection.rest.token != first


PLACEHOLDER_ID = "01b2c3d4-0000-0000-0000-000000000001"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/session/heartbeat?requestId=1"),
        ("POST", "/queries/v1/abort-request?requestId=1"),
        ("POST", "/telemetry/send"),
        ("GET", "/monitoring/queries/01b2c3d4-0000-0000-0000-000000000001"),
        ("GET", "/monitoring/queries//01b2c3d4-0000-0000-0000-000000000001"),
        ("GET", "/queries/01b2c3d4-0000-0000-0000-000000000001/result"),
    ],
)
def test_session_endpoints_pass_with_the_swap(
    gw, strict, oidc, connect, token_key_env, method, path
) -> None:
    connection = connect(gw, oidc.mint("pia", groups=["agents"]))
    upstream_path = path
    if PLACEHOLDER_ID in path:  # an id this session was given, mapped back on the way
        bound = query(gw, connection.rest.token, "select 1")["data"]["queryId"]
        key = decode_token_key(token_key_env[TOKEN_KEY_ENV])
        session_id = TokenSealer(key).open(connection.rest.token).session_id
        raw = QueryIdBinder([key]).unbind(bound, session_scope(session_id))
        path, upstream_path = path.replace(PLACEHOLDER_ID, bound), path.replace(PLACEHOLDER_ID, raw)
    mark = strict.mark()
    body = {"sqlText": "select 1", "requestId": "1"} if method == "POST" else None
    call(gw, path, body, token=connection.rest.token, method=method)
    received = strict.received_since(mark)
    assert [(r.method, r.path) for r in received] == [(method, upstream_path)]
    authorization = received[0].headers["Authorization"]
    assert "strict-ST-" in authorization
    assert connection.rest.token not in authorization


def test_logout_invalidates_the_gateway_tokens(gw, strict, oidc, connect) -> None:
    connection = connect(gw, oidc.mint("fay", groups=["agents"]))
    connection.cursor().execute("select 1")
    session_token, master_token = connection.rest.token, connection.rest.master_token
    assert query(gw, session_token, "select 1")["success"]
    connection.close()
    mark = strict.mark()
    refused = query(gw, session_token, "select 1")
    assert refused["code"] == "390104"
    assert "logged out" in refused["message"]
    status, renewal, _ = call(
        gw,
        "/session/token-request",
        {"oldSessionToken": session_token, "requestType": "RENEW"},
        token=master_token,
    )
    assert (status, renewal["code"]) == (200, "390104")
    assert strict.received_since(mark) == []


@pytest.mark.parametrize(
    ("presented", "reason"),
    [
        (None, "carries no session token"),
        ("garbage", "not issued by hoopgw"),
        (TOKEN_PREFIX + "eyJhbGciOiJkaXIifQ..a.b.c", "not accepted"),
        ("raw-upstream", "not issued by hoopgw"),
    ],
)
def test_unusable_session_tokens_are_refused_without_upstream(
    gw, strict, oidc, connect, presented, reason
) -> None:
    if presented == "raw-upstream":
        connection = connect(gw, oidc.mint("gus", groups=["agents"]))
        connection.cursor().execute("select 1")
        live = strict.received()[-1].headers["Authorization"]
        presented = live.removeprefix('Snowflake Token="').removesuffix('"')
        assert presented in strict.issued_tokens()
    mark = strict.mark()
    answer = query(gw, presented, "select 1")
    assert answer["success"] is False
    assert answer["code"] == "390104"
    assert reason in answer["message"]
    assert strict.received_since(mark) == []


def test_role_may_only_narrow_to_a_mapped_role(gw, strict, oidc, connect) -> None:
    connection = connect(gw, oidc.mint("hal", groups=["agents", "analysts"]), role="agent")
    assert strict.logins()[-1]["role"] == "AGENT"
    connection.close()
    connect(gw, oidc.mint("hal", groups=["agents", "analysts"]))
    assert strict.logins()[-1] == {
        "authenticator": "SNOWFLAKE_JWT",
        "login_name": SERVICE_USER,
        "role": "ANALYST",
        "warehouse": "WH_ANALYTICS",
    }
    mark = strict.mark()
    with pytest.raises(DatabaseError) as refused:
        connect(gw, oidc.mint("ivy", groups=["agents"]), role="ANALYST")
    assert "role ANALYST is not granted to you; your roles: AGENT" in str(refused.value)
    assert strict.received_since(mark) == []


@pytest.fixture(scope="module")
def local_issuer() -> Iterator[LocalIssuer]:
    issuer = LocalIssuer().start()
    yield issuer
    issuer.stop()


@pytest.fixture(scope="module")
def strict_idp_gw(gateway_factory, strict, local_issuer, service_key, token_key_env):
    return gateway_factory(
        strict.url,
        identity_options(local_issuer.issuer, service_key[1]),
        env=token_key_env,
        name="local-issuer-gw",
    )


def _rogue_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "rogue"})


REFUSED_TOKENS = [
    ("expired", lambda i: i.mint(iat=1_000_000, exp=1_000_300), "the token has expired"),
    (
        "not yet valid",
        lambda i: i.mint(nbf=4_000_000_000, exp=4_000_000_300),
        "the token is not valid yet",
    ),
    (
        "wrong issuer",
        lambda i: i.mint(iss="https://idp.example.com"),
        "the token was issued by a different identity provider (wrong issuer)",
    ),
    (
        "wrong audience",
        lambda i: i.mint(aud="another-app"),
        "the token is meant for a different audience (wrong audience)",
    ),
    ("bad signature", lambda i: i.with_bad_signature(), "the token's signature is not valid"),
    (
        "unknown key",
        lambda i: i.mint(key=_rogue_key()),
        "the token is signed with a key the identity provider does not publish",
    ),
    (
        "alg none",
        lambda i: i.unsigned(),
        "the token is not signed (algorithm none is not accepted)",
    ),
    (
        "hmac with public key",
        lambda i: i.hmac_with_public_key(),
        "the token's algorithm HS256 is not accepted",
    ),
    ("missing groups claim", lambda i: i.mint(omit=("groups",)), "the token has no 'groups' claim"),
    (
        "no allowed group",
        lambda i: i.mint(groups=["visitors"]),
        "you are not in a group allowed to use this gateway",
    ),
    ("garbage", lambda i: "definitely-not-a-jwt", "the token is not a signed JWT"),
    ("empty", lambda i: "", "no token was presented"),
]


@pytest.mark.parametrize(
    ("case", "make", "reason"), REFUSED_TOKENS, ids=[case[0] for case in REFUSED_TOKENS]
)
def test_refused_tokens_show_the_reason_and_never_reach_upstream(
    strict_idp_gw, strict, local_issuer, connect, case, make, reason
) -> None:
    token = make(local_issuer)
    mark = strict.mark()
    if token:
        with pytest.raises(DatabaseError) as refused:
            connect(strict_idp_gw, token, login_timeout=10)
        shown, code = str(refused.value), refused.value.errno
    else:
        # The connector will not send an empty token; a raw client can.
        _, answer, _ = call(strict_idp_gw, "/session/v1/login-request", login_body(""))
        shown, code = answer["message"], int(answer["code"])
    assert code == 390100
    assert shown.endswith("hoopgw refused the login: " + reason), shown
    if token:
        assert token not in shown and token.split(".")[0] not in shown
    assert strict.received_since(mark) == []


def test_logins_are_refused_when_identity_is_not_configured(
    gateway_factory, strict, connect, oidc
) -> None:
    unconfigured = gateway_factory(strict.url, {"hoopgw_oidc_issuer": ""}, name="no-identity-gw")
    mark = strict.mark()
    with pytest.raises(DatabaseError) as refused:
        connect(unconfigured, oidc.mint("jo", groups=["agents"]))
    assert "identity is not configured on this gateway" in str(refused.value)
    assert strict.received_since(mark) == []


def test_password_logins_need_the_opt_in(
    gw, gateway_factory, strict, oidc, service_key, token_key_env, connect
) -> None:
    token = oidc.mint("kim", groups=["agents"])
    with pytest.raises(DatabaseError) as refused:
        connect(gw, None, password=token)
    assert "this gateway does not accept passwords" in str(refused.value)
    opted_in = gateway_factory(
        strict.url,
        identity_options(oidc.issuer, service_key[1], hoopgw_accept_password_token=True),
        env=token_key_env,
        name="password-token-gw",
    )
    connection = connect(opted_in, None, password=token)
    assert connection.cursor().execute("select 5").fetchone() == (5,)


def test_two_gateways_sharing_the_token_key(
    gw, gateway_factory, strict, oidc, service_key, token_key_env, connect
) -> None:
    second = gateway_factory(
        strict.url,
        identity_options(oidc.issuer, service_key[1]),
        env=token_key_env,
        name="second-replica-gw",
    )
    other_key = gateway_factory(
        strict.url,
        identity_options(oidc.issuer, service_key[1]),
        env={TOKEN_KEY_ENV: new_token_key()},
        name="other-key-gw",
    )
    connection = connect(gw, oidc.mint("lee", groups=["agents"]))
    session_token, master_token = connection.rest.token, connection.rest.master_token
    answer = query(second, session_token, "select 7")
    assert answer["success"], answer
    assert answer["data"]["rowtype"][0]["type"] == "fixed"
    status, renewed, _ = call(
        second,
        "/session/token-request",
        {"oldSessionToken": session_token, "requestType": "RENEW"},
        token=master_token,
    )
    assert status == 200 and renewed["success"], renewed
    assert query(gw, renewed["data"]["sessionToken"], "select 8")["success"]
    refused = query(other_key, session_token, "select 9")
    assert refused["code"] == "390104"
    assert "does not hold" in refused["message"]


def test_sql_api_bearer_token_is_swapped_for_the_gateway_credential(gw, strict, oidc) -> None:
    token = oidc.mint("max", groups=["agents"])
    headers = {
        "Authorization": f"Bearer {token}",
        "X-Snowflake-Authorization-Token-Type": "OAUTH",
    }
    mark = strict.mark()
    status, answer, _ = call(
        gw, "/api/v2/statements", {"statement": "select 1", "role": "AGENT"}, headers=headers
    )
    assert status == 200, answer
    assert answer["data"] == [["select 1", "AGENT"]]
    received = strict.received_since(mark)
    assert len(received) == 1
    assert received[0].headers["X-Snowflake-Authorization-Token-Type"] == "KEYPAIR_JWT"
    assert contains_any(received, [token]) == []

    status, refused, _ = call(
        gw,
        "/api/v2/statements",
        {"statement": "select 1"},
        headers={**headers, "Authorization": "Bearer not-a-jwt"},
    )
    assert status == 401
    assert "the token is not a signed JWT" in refused["message"]
    assert len(strict.received_since(mark)) == 1


def test_password_from_aws_secrets_manager(
    gateway_factory, fakesnow_server, moto_s3, oidc, token_key_env, connect
) -> None:
    import boto3

    password = "pw-" + uuid.uuid4().hex
    name = f"hoopgw/e2e/{uuid.uuid4().hex}"
    boto3.client("secretsmanager", endpoint_url=moto_s3).create_secret(
        Name=name, SecretString=password
    )
    upstream = StrictUpstream(fakesnow_server.url, ACCOUNT, SERVICE_USER, password=password)
    upstream.start()
    try:
        gateway = gateway_factory(
            upstream.url,
            {
                "hoopgw_oidc_issuer": oidc.issuer,
                "hoopgw_oidc_audience": "hoopgw",
                "hoopgw_allowed_groups": ["agents"],
                "hoopgw_role_map": [],
                "hoopgw_upstream_account": ACCOUNT,
                "hoopgw_upstream_user": SERVICE_USER,
                "hoopgw_upstream_secondary_roles": "none",
                "hoopgw_upstream_password": f"aws-secretsmanager:{name}",
                "hoopgw_upstream_private_key": "",
                "hoopgw_upstream_oauth_token": "",
            },
            env={**token_key_env, "AWS_ENDPOINT_URL_SECRETS_MANAGER": moto_s3},
            name="secrets-manager-gw",
        )
        connection = connect(gateway, oidc.mint("ned", groups=["agents"]))
        assert connection.cursor().execute("select 11").fetchone() == (11,)
        assert upstream.logins()[-1]["authenticator"] == "SNOWFLAKE"
        assert password not in gateway.log()
    finally:
        upstream.stop()


def test_missing_upstream_credential_stops_startup(fakesnow_server, workdir, oidc) -> None:
    home = workdir / "no-credential"
    argv = stack.gateway_argv(
        fakesnow_server.url,
        stack.free_port(),
        {"hoopgw_oidc_issuer": oidc.issuer, "hoopgw_oidc_audience": "hoopgw"},
        confdir=home / "conf",
    )
    proc = stack.Proc("gateway", argv, home / "gateway.log", cwd=workdir).start()
    assert proc.process is not None
    assert proc.process.wait(timeout=30) == 1
    output = proc.log()
    lines = [line for line in output.splitlines() if "invalid option" in line]
    assert len(lines) == 1, output
    assert "gateway needs its own Snowflake login: set hoopgw_upstream_private_key" in lines[0]


CONNECTOR5_SCRIPT = """
import json, sys
import snowflake.connector
from snowflake.connector.version import VERSION
host, port, token = sys.argv[1], int(sys.argv[2]), sys.argv[3]
connection = snowflake.connector.connect(
    account="hoopgw", user="agent", host=host, port=port, protocol="http",
    authenticator="oauth", token=token, login_timeout=30, network_timeout=60,
)
row = connection.cursor().execute("select 40 + 2").fetchone()
print(json.dumps({
    "version": list(VERSION[:3]),
    "row": list(row),
    "session_id": connection.session_id,
    "token": connection.rest.token[:8],
}))
connection.close()
"""


def connector5_python() -> Path:
    """A cached virtualenv with snowflake-connector-python 5.x; skips if PyPI is out of reach."""
    cache = Path(os.environ.get("HOOPGW_TEST_CACHE", Path.home() / ".cache" / "hoopgw-tests"))
    venv = cache / "connector5-venv"
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import snowflake.connector.version as v; assert v.VERSION[0] == 5"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    index = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", "snowflake-connector-python"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if index.returncode != 0 or "5." not in index.stdout:
        pytest.skip("the package index cannot be reached to install snowflake-connector-python 5.x")
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=120)
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "snowflake-connector-python>=5,<6"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    return python


@pytest.mark.slow
def test_snowflake_connector_5_logs_in_and_queries(gw, strict, oidc) -> None:
    python = connector5_python()
    token = oidc.mint("oli", groups=["agents"])
    mark = strict.mark()
    run = subprocess.run(
        [str(python), "-c", CONNECTOR5_SCRIPT, gw.host, str(gw.port), token],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    outcome = json.loads(run.stdout.strip().splitlines()[-1])
    assert outcome["version"][0] == 5
    assert outcome["row"] == [42]
    assert outcome["session_id"]
    assert outcome["token"] == TOKEN_PREFIX
    assert strict.logins()[-1]["authenticator"] == "SNOWFLAKE_JWT"
    assert contains_any(strict.received_since(mark), [token]) == []
