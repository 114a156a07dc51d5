"""Authentication: OIDC in, the gateway's Snowflake credential out, sealed tokens between.

Every test runs the addon in-process against a real loopback OIDC issuer
(tests/jwt_issuer.py) with a real RSA key as the gateway's own credential; the
upstream's answers are Snowflake-shaped JSON given to the flow.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from mitmproxy import exceptions, http
from mitmproxy.test import taddons

from hoopgw.addons import protocol
from hoopgw.addons.authentication import Authentication
from hoopgw.addons.flowstate import FlowState, state_of
from hoopgw.addons.protocol import Endpoint
from tests import stack
from tests.addons import (
    LOGIN_PATH,
    LOGOUT_PATH,
    QUERY_PATH,
    RENEWAL_PATH,
    STATEMENTS_PATH,
    answered,
    classified,
    error_of,
    session_header,
    snowflake_flow,
)
from tests.bodies import login_body, query_body
from tests.jwt_issuer import LocalIssuer

ACCOUNT = "xy12345"
SERVICE_USER = "SVC_HOOPGW"
BAD_CREDENTIALS = str(protocol.CODE_BAD_CREDENTIALS)
SESSION_INVALID = str(protocol.CODE_SESSION_INVALID)
UPSTREAM_SESSION = "ver:1-hint:upstream-ST-secret"
UPSTREAM_MASTER = "ver:1-hint:upstream-MT-secret"
UPSTREAM_ID_TOKEN = "ver:1-hint:upstream-ID-secret"


def options(issuer: LocalIssuer, service_key: Path, **overrides: Any) -> dict[str, Any]:
    return {
        "hoopgw_oidc_issuer": issuer.issuer,
        "hoopgw_oidc_audience": "hoopgw",
        "hoopgw_allowed_groups": ["agents", "readers"],
        "hoopgw_role_map": ["agents=AGENT:AGENT_WH", "readers=READER"],
        "hoopgw_upstream_account": ACCOUNT,
        "hoopgw_upstream_user": SERVICE_USER,
        "hoopgw_upstream_private_key": f"file:{service_key}",
        **overrides,
    }


def upstream_login(*, master: bool = True, validity: int = 3600) -> dict[str, Any]:
    """Snowflake's answer to the gateway's own login."""
    data: dict[str, Any] = {
        "token": UPSTREAM_SESSION,
        "validityInSeconds": validity,
        "masterValidityInSeconds": 14400,
        "idToken": UPSTREAM_ID_TOKEN,
        "sessionId": 4711,
        "sessionInfo": {"databaseName": "SALES", "schemaName": "PUBLIC", "roleName": "AGENT"},
    }
    if master:
        data["masterToken"] = UPSTREAM_MASTER
    return {"data": data, "code": None, "message": None, "success": True}


async def log_in(
    auth: Authentication,
    token: str,
    *,
    query: str = "?request_id=1",
    upstream: dict[str, Any] | None = None,
) -> tuple[http.HTTPFlow, FlowState]:
    """A driver's login through the addon, answered by Snowflake with `upstream`."""
    flow = snowflake_flow("POST", LOGIN_PATH + query, login_body(token))
    state = classified(flow)
    await auth.request(flow)
    if not state.answered:
        answered(flow, upstream or upstream_login())
        auth.response(flow)
    return flow, state


def sealed(flow: http.HTTPFlow) -> dict[str, Any]:
    """The login or renewal answer the client got."""
    assert flow.response is not None
    return orjson.loads(flow.response.content or b"{}")["data"]


async def call(
    auth: Authentication, token: str | None, path: str = QUERY_PATH, body: Any = None
) -> tuple[http.HTTPFlow, FlowState]:
    headers = [session_header(token)] if token is not None else []
    flow = snowflake_flow("POST", path, query_body("select 1") if body is None else body, headers)
    state = classified(flow)
    await auth.request(flow)
    return flow, state


def refusal(flow: http.HTTPFlow, state: FlowState) -> tuple[str, str]:
    """The error code and message the driver shows, after checking nothing went upstream."""
    assert state.refusal is not None and state.refusal.source == "authentication"
    answer = error_of(flow)
    assert answer.get("success") is not True
    return answer["code"], answer["message"]


# --- configuration ---------------------------------------------------------------------


def test_an_issuer_without_the_gateways_own_credential_is_refused(issuer: LocalIssuer) -> None:
    auth = Authentication()
    with (
        taddons.context(auth) as tctx,
        pytest.raises(exceptions.OptionsError, match="needs its own Snowflake login"),
    ):
        tctx.configure(auth, hoopgw_oidc_issuer=issuer.issuer, hoopgw_oidc_audience="hoopgw")


async def test_running_fetches_the_issuers_keys_ahead_of_the_first_login(
    issuer: LocalIssuer, service_key: Path
) -> None:
    auth = Authentication()
    with taddons.context(auth) as tctx:
        tctx.configure(auth, **options(issuer, service_key))
        before = issuer.jwks_requests
        auth.running()
        for _ in range(100):
            if issuer.jwks_requests > before:
                break
            await asyncio.sleep(0.02)
        assert issuer.jwks_requests > before


# --- login -----------------------------------------------------------------------------


async def test_login_swaps_the_callers_token_for_the_gateways_credential(
    issuer: LocalIssuer, service_key: Path
) -> None:
    auth = Authentication()
    with taddons.context(auth) as tctx:
        tctx.configure(auth, **options(issuer, service_key))
        id_token = issuer.mint("ada", ["agents"])
        flow = snowflake_flow(
            "POST", f"{LOGIN_PATH}?request_id=1&databaseName=SALES", login_body(id_token)
        )
        state = classified(flow)
        await auth.request(flow)

        assert flow.response is None and not state.answered
        assert "authentication" in state.passed
        assert state.caller is not None
        assert (state.caller.subject, state.caller.role) == ("ada", "AGENT")
        assert state.caller.groups == ("agents",) and state.caller.issuer == issuer.issuer
        assert state.session_id is not None
        assert flow.request.query["roleName"] == "AGENT"
        assert flow.request.query["warehouse"] == "AGENT_WH"
        assert (state.context.database, state.context.role) == ("SALES", "AGENT")
        data = orjson.loads(flow.request.content or b"")["data"]
        assert data["ACCOUNT_NAME"] == ACCOUNT and data["LOGIN_NAME"] == SERVICE_USER
        assert data["AUTHENTICATOR"] == "SNOWFLAKE_JWT"
        assert data["TOKEN"] != id_token
        assert data["CLIENT_APP_ID"] == "PythonConnector"
        assert flow.request.headers["authorization"] == 'Snowflake Token="None"'

        answered(flow, upstream_login())
        auth.response(flow)
        client = sealed(flow)
        assert client["token"] not in (UPSTREAM_SESSION, UPSTREAM_MASTER)
        assert client["masterToken"] not in (UPSTREAM_SESSION, UPSTREAM_MASTER)
        assert "idToken" not in client
        assert client["sessionId"] == 4711
        assert state.context.schema == "PUBLIC"
        assert flow.request.headers["authorization"] == 'Snowflake Token="hoopgw-redacted"'
        assert orjson.loads(flow.request.content or b"")["data"]["TOKEN"] == "hoopgw-redacted"


async def test_login_with_a_role_the_groups_do_not_grant_is_refused(
    issuer: LocalIssuer, service_key: Path
) -> None:
    auth = Authentication()
    with taddons.context(auth) as tctx:
        tctx.configure(auth, **options(issuer, service_key))
        flow, state = await log_in(
            auth, issuer.mint("ada", ["readers"]), query="?roleName=ACCOUNTADMIN"
        )
        code, message = refusal(flow, state)
        assert code == BAD_CREDENTIALS
        assert "role ACCOUNTADMIN is not granted to you; your roles: READER" in message


async def test_login_without_a_requested_role_drops_the_role_parameter(
    issuer: LocalIssuer, service_key: Path
) -> None:
    auth = Authentication()
    with taddons.context(auth) as tctx:
        tctx.configure(auth, **options(issuer, service_key, hoopgw_role_map=[]))
        flow = snowflake_flow("POST", LOGIN_PATH, login_body(issuer.mint("ada", ["agents"])))
        flow.request.query["roleName"] = ""
        state = classified(flow)
        await auth.request(flow)
        assert not state.answered
        assert "roleName" not in flow.request.query
        assert state.caller is not None and state.caller.role is None


@pytest.mark.parametrize(
    ("body", "query", "reason"),
    [
        (
            lambda i: login_body(i.mint("eve", ["outsiders"])),
            "",
            "you are not in a group allowed to use this gateway",
        ),
        (lambda i: login_body(i.mint(exp=1_000_000, iat=999_000)), "", "the token has expired"),
        (lambda i: login_body(i.with_bad_signature()), "", "the token's signature is not valid"),
        (lambda i: login_body(""), "", "no token was presented"),
        (lambda i: {"no": "data"}, "", "the login request has no data"),
        (
            lambda i: login_body(i.mint()),
            "?roleName=AGENT&roleName=ACCOUNTADMIN",
            "the login names roleName more than once",
        ),
        (
            lambda i: login_body(i.mint()),
            "?rolename=ACCOUNTADMIN",
            "the login spells the roleName parameter as 'rolename'",
        ),
        (
            lambda i: login_body(None, AUTHENTICATOR="SNOWFLAKE", PASSWORD="hunter2"),
            "",
            "this gateway does not accept passwords",
        ),
    ],
    ids=[
        "group-not-allowed",
        "expired",
        "forged",
        "no-token",
        "no-data",
        "role-twice",
        "role-misspelt",
        "password",
    ],
)
async def test_login_refusals(
    issuer: LocalIssuer, service_key: Path, body: Any, query: str, reason: str
) -> None:
    auth = Authentication()
    with taddons.context(auth) as tctx:
        tctx.configure(auth, **options(issuer, service_key))
        flow = snowflake_flow("POST", LOGIN_PATH + query, body(issuer))
        state = classified(flow)
        await auth.request(flow)
        code, message = refusal(flow, state)
        assert code == BAD_CREDENTIALS
        assert message.startswith("hoopgw refused the login: ") and reason in message
        assert "authentication" in state.passed


async def test_a_password_login_carries_the_token_when_the_gateway_accepts_that(
    issuer: LocalIssuer, service_key: Path
) -> None:
    auth = Authentication()
    with taddons.context(auth) as tctx:
        tctx.configure(auth, **options(issuer, service_key, hoopgw_accept_password_token=True))
        token = issuer.mint("ada", ["agents"])
        flow = snowflake_flow(
            "POST", LOGIN_PATH, login_body(None, AUTHENTICATOR="SNOWFLAKE", PASSWORD=token)
        )
        state = classified(flow)
        await auth.request(flow)
        assert not state.answered and state.caller is not None
        flow = snowflake_flow(
            "POST", LOGIN_PATH, login_body(token, AUTHENTICATOR="EXTERNALBROWSER")
        )
        state = classified(flow)
        await auth.request(flow)
        assert "or the token as the password" in refusal(flow, state)[1]


async def test_login_without_identity_configured_is_refused() -> None:
    auth = Authentication()
    with taddons.context(auth):
        flow, state = await log_in(auth, "any")
        assert refusal(flow, state)[1].endswith("(hoopgw_oidc_issuer is unset)")


async def test_login_when_the_identity_provider_is_down_is_refused(
    issuer: LocalIssuer, service_key: Path
) -> None:
    auth = Authentication()
    with taddons.context(auth) as tctx:
        unreachable = f"http://{stack.LOOPBACK}:{stack.free_port()}"
        tctx.configure(auth, **options(issuer, service_key, hoopgw_oidc_issuer=unreachable))
        flow, state = await log_in(auth, "eyJhbGciOiJSUzI1NiJ9.e30.c2ln")
        assert "the token cannot be verified now" in refusal(flow, state)[1]


async def test_the_authenticator_request_is_answered_with_how_to_sign_in() -> None:
    auth = Authentication()
    with taddons.context(auth):
        flow, state = await call(auth, None, "/session/authenticator-request", {"data": {}})
        assert "authenticator=oauth" in refusal(flow, state)[1]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"<html>maintenance</html>", "could not read Snowflake's answer to the login (HTTP 200)"),
    ],
)
async def test_an_unreadable_login_answer_is_replaced(
    issuer: LocalIssuer, service_key: Path, content: bytes, reason: str
) -> None:
    auth = Authentication()
    with taddons.context(auth) as tctx:
        tctx.configure(auth, **options(issuer, service_key))
        flow = snowflake_flow("POST", LOGIN_PATH, login_body(issuer.mint("ada", ["agents"])))
        classified(flow)
        await auth.request(flow)
        flow.response = http.Response.make(200, content, {"Content-Type": "text/html"})
        auth.response(flow)
        answer = error_of(flow)
        assert answer["code"] == str(protocol.CODE_GATEWAY_PROTOCOL)
        assert reason in answer["message"]


async def test_a_failed_login_answer_loses_any_upstream_token(
    issuer: LocalIssuer, service_key: Path
) -> None:
    auth = Authentication()
    with taddons.context(auth) as tctx:
        tctx.configure(auth, **options(issuer, service_key))
        failure = {
            "success": False,
            "code": "390100",
            "message": "Incorrect username or password was specified.",
            "data": {"token": UPSTREAM_SESSION, "idToken": UPSTREAM_ID_TOKEN},
        }
        flow, _ = await log_in(auth, issuer.mint("ada", ["agents"]), upstream=failure)
        answer = error_of(flow)
        assert answer["code"] == "390100" and answer["data"] == {}


# --- calls within a session ------------------------------------------------------------


async def test_a_session_call_carries_the_upstream_token_and_the_caller(
    issuer: LocalIssuer, service_key: Path
) -> None:
    auth = Authentication()
    with taddons.context(auth) as tctx:
        tctx.configure(auth, **options(issuer, service_key))
        login, login_state = await log_in(auth, issuer.mint("ada", ["agents"]))
        flow, state = await call(auth, sealed(login)["token"])
        assert not state.answered and "authentication" in state.passed
        assert flow.request.headers["authorization"] == f'Snowflake Token="{UPSTREAM_SESSION}"'
        assert state.session_id == login_state.session_id
        assert state.caller is not None and state.caller.subject == "ada"
        assert (state.context.database, state.context.schema) == ("SALES", "PUBLIC")

        answered(flow, {"success": False, "code": "390112", "message": "expired", "data": {}})
        auth.response(flow)
        assert error_of(flow)["code"] == "390112", "Snowflake renews; the driver renews"
        assert flow.request.headers["authorization"] == 'Snowflake Token="hoopgw-redacted"'


async def test_an_upstream_expiry_without_a_master_token_asks_for_a_new_login(
    issuer: LocalIssuer, service_key: Path
) -> None:
    auth = Authentication()
    with taddons.context(auth) as tctx:
        tctx.configure(auth, **options(issuer, service_key))
        login, _ = await log_in(
            auth, issuer.mint("ada", ["agents"]), upstream=upstream_login(master=False)
        )
        flow, _ = await call(auth, sealed(login)["token"])
        answered(flow, {"success": False, "code": "390112", "message": "expired", "data": {}})
        auth.response(flow)
        answer = error_of(flow)
        assert answer["code"] == SESSION_INVALID
        assert "cannot be renewed; log in again" in answer["message"]


async def test_session_call_refusals(issuer: LocalIssuer, service_key: Path) -> None:
    auth = Authentication()
    with taddons.context(auth) as tctx:
        tctx.configure(auth, **options(issuer, service_key))
        login, _ = await log_in(auth, issuer.mint("ada", ["agents"]))
        tokens = sealed(login)
        cases = [
            (None, "the request carries no session token; log in through the gateway"),
            ("ver:1-hint:forged", "the session token is not accepted"),
            (UPSTREAM_SESSION, "the session token is not accepted"),
            (tokens["masterToken"], "a master token cannot be used as a session token"),
        ]
        for token, reason in cases:
            flow, state = await call(auth, token)
            code, message = refusal(flow, state)
            assert code == SESSION_INVALID, token
            assert message.startswith(f"hoopgw refused the request: {reason}"), message


async def test_logout_ends_the_session_for_every_later_call(
    issuer: LocalIssuer, service_key: Path
) -> None:
    auth = Authentication()
    with taddons.context(auth) as tctx:
        tctx.configure(auth, **options(issuer, service_key))
        login, _ = await log_in(auth, issuer.mint("ada", ["agents"]))
        tokens = sealed(login)
        flow, state = await call(auth, tokens["token"], LOGOUT_PATH, {})
        assert not state.answered and state.session_ended
        answered(flow, {"success": True, "code": None, "message": None, "data": None})
        auth.response(flow)

        flow, state = await call(auth, tokens["token"])
        assert "the session has ended (logged out); log in again" in refusal(flow, state)[1]
        flow, state = await call(auth, tokens["masterToken"], RENEWAL_PATH, {})
        assert "the session has ended (logged out)" in refusal(flow, state)[1]


async def test_an_expired_session_token_is_refused_as_snowflake_would(
    issuer: LocalIssuer, service_key: Path
) -> None:
    auth = Authentication()
    with taddons.context(auth) as tctx:
        tctx.configure(auth, **options(issuer, service_key))
        login, _ = await log_in(
            auth, issuer.mint("ada", ["agents"]), upstream=upstream_login(validity=1)
        )
        await asyncio.sleep(1.2)
        flow, state = await call(auth, sealed(login)["token"])
        code, message = refusal(flow, state)
        assert code == str(protocol.CODE_SESSION_EXPIRED)
        assert "the session token has expired" in message


# --- renewal ---------------------------------------------------------------------------


async def test_renewal_goes_upstream_with_the_upstream_master_token(
    issuer: LocalIssuer, service_key: Path
) -> None:
    auth = Authentication()
    with taddons.context(auth) as tctx:
        tctx.configure(auth, **options(issuer, service_key))
        login, _ = await log_in(auth, issuer.mint("ada", ["agents"]))
        tokens = sealed(login)
        body = {"oldSessionToken": tokens["token"], "requestType": "RENEW"}
        flow, state = await call(auth, tokens["masterToken"], RENEWAL_PATH, body)
        assert not state.answered
        assert flow.request.headers["authorization"] == f'Snowflake Token="{UPSTREAM_MASTER}"'
        assert orjson.loads(flow.request.content or b"") == {
            "oldSessionToken": UPSTREAM_SESSION,
            "requestType": "RENEW",
        }
        renewed = {
            "sessionToken": "ver:1-hint:upstream-ST-2",
            "validityInSecondsST": 3600,
            "masterToken": UPSTREAM_MASTER,
            "validityInSecondsMT": 14400,
            "sessionId": 4711,
        }
        answered(flow, {"data": renewed, "code": None, "message": None, "success": True})
        auth.response(flow)
        client = sealed(flow)
        assert client["sessionToken"] != "ver:1-hint:upstream-ST-2"
        assert client["masterToken"] != UPSTREAM_MASTER
        assert orjson.loads(flow.request.content or b"")["oldSessionToken"] == "hoopgw-redacted"

        after, after_state = await call(auth, client["sessionToken"])
        assert not after_state.answered
        assert (
            after.request.headers["authorization"] == 'Snowflake Token="ver:1-hint:upstream-ST-2"'
        )


async def test_renewal_without_an_upstream_master_is_answered_by_the_gateway(
    issuer: LocalIssuer, service_key: Path
) -> None:
    auth = Authentication()
    with taddons.context(auth) as tctx:
        tctx.configure(auth, **options(issuer, service_key))
        login, _ = await log_in(
            auth, issuer.mint("ada", ["agents"]), upstream=upstream_login(master=False)
        )
        tokens = sealed(login)
        flow, state = await call(auth, tokens["masterToken"], RENEWAL_PATH, {})
        assert not state.answered and flow.response is not None
        answer = orjson.loads(flow.response.content or b"")
        assert answer["success"] is True
        assert answer["data"]["masterToken"] == tokens["masterToken"]
        auth.response(flow)
        renewed, renewed_state = await call(auth, answer["data"]["sessionToken"])
        assert not renewed_state.answered
        assert renewed.request.headers["authorization"] == f'Snowflake Token="{UPSTREAM_SESSION}"'


async def test_renewal_refusals(issuer: LocalIssuer, service_key: Path) -> None:
    auth = Authentication()
    with taddons.context(auth) as tctx:
        tctx.configure(auth, **options(issuer, service_key))
        first, _ = await log_in(auth, issuer.mint("ada", ["agents"]))
        other, _ = await log_in(auth, issuer.mint("bob", ["agents"]))
        mine, theirs = sealed(first), sealed(other)
        cases = [
            (None, {}, "the renewal carries no master token"),
            ("garbage", {}, "the master token is not accepted"),
            (mine["token"], {}, "a session token cannot renew a session"),
            (
                mine["masterToken"],
                {"oldSessionToken": theirs["token"]},
                "the old session token belongs to another session",
            ),
        ]
        for token, body, reason in cases:
            flow, state = await call(auth, token, RENEWAL_PATH, body)
            code, message = refusal(flow, state)
            assert code == SESSION_INVALID
            assert message.startswith(f"hoopgw refused the request: {reason}"), message


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        (None, SESSION_INVALID),
        (
            {
                "success": False,
                "code": "390114",
                "message": "Master token expired",
                "data": {"masterToken": UPSTREAM_MASTER},
            },
            "390114",
        ),
    ],
    ids=["unreadable", "failed"],
)
async def test_a_renewal_answer_that_is_no_renewal_keeps_upstream_tokens_away(
    issuer: LocalIssuer, service_key: Path, answer: dict[str, Any] | None, code: str
) -> None:
    auth = Authentication()
    with taddons.context(auth) as tctx:
        tctx.configure(auth, **options(issuer, service_key))
        login, _ = await log_in(auth, issuer.mint("ada", ["agents"]))
        flow, _ = await call(auth, sealed(login)["masterToken"], RENEWAL_PATH, {})
        if answer is None:
            flow.response = http.Response.make(502, b"<html>bad gateway</html>")
        else:
            answered(flow, answer)
        auth.response(flow)
        assert error_of(flow)["code"] == code
        assert UPSTREAM_MASTER.encode() not in (flow.response.content or b"")


# --- SQL API ---------------------------------------------------------------------------


def sql_api_flow(token: str | None, body: dict[str, Any], **headers: str) -> http.HTTPFlow:
    fields = [("authorization", f"Bearer {token}")] if token is not None else []
    fields += [(name.replace("_", "-"), value) for name, value in headers.items()]
    return snowflake_flow("POST", STATEMENTS_PATH, body, fields)


async def test_sql_api_bearer_token_is_verified_and_replaced(
    issuer: LocalIssuer, service_key: Path
) -> None:
    auth = Authentication()
    with taddons.context(auth) as tctx:
        tctx.configure(auth, **options(issuer, service_key))
        id_token = issuer.mint("ada", ["agents"])
        body = {"statement": "select 1", "role": "AGENT", "database": "SALES"}
        flow = sql_api_flow(id_token, body)
        state = classified(flow)
        await auth.request(flow)
        assert not state.answered and state.endpoint is Endpoint.SQL_API
        assert state.caller is not None and state.caller.role == "AGENT"
        authorization = flow.request.headers["authorization"]
        assert authorization.startswith("Bearer ") and id_token not in authorization
        assert flow.request.headers["x-snowflake-authorization-token-type"] == "KEYPAIR_JWT"
        rewritten = orjson.loads(flow.request.content or b"")
        assert rewritten["role"] == "AGENT" and rewritten["warehouse"] == "AGENT_WH"
        assert (state.context.database, state.context.warehouse) == ("SALES", "AGENT_WH")

        flow.response = http.Response.make(200, b"{}")
        auth.error(flow)
        assert flow.request.headers["authorization"] == "Bearer hoopgw-redacted"


async def test_sql_api_status_calls_and_role_less_grants_keep_the_body_the_callers(
    issuer: LocalIssuer, service_key: Path
) -> None:
    auth = Authentication()
    with taddons.context(auth) as tctx:
        tctx.configure(auth, **options(issuer, service_key, hoopgw_role_map=[]))
        token = issuer.mint("ada", ["agents"])
        status = snowflake_flow(
            "GET", f"{STATEMENTS_PATH}/01b2c3d4", headers=[("authorization", f"Bearer {token}")]
        )
        state = classified(status)
        await auth.request(status)
        assert not state.answered and status.request.content == b""
        assert status.request.headers["authorization"] != f"Bearer {token}"
        submit = sql_api_flow(token, {"statement": "select 1", "role": "SYSADMIN"})
        state = classified(submit)
        await auth.request(submit)
        assert "role SYSADMIN is not granted through this gateway" in refusal(submit, state)[1]
        submit = sql_api_flow(token, {"statement": "select 1"})
        state = classified(submit)
        await auth.request(submit)
        assert not state.answered
        assert orjson.loads(submit.request.content or b"") == {"statement": "select 1"}


@pytest.mark.parametrize(
    ("token", "headers", "option", "reason"),
    [
        (None, {}, {}, "send your identity provider's token as a Bearer token"),
        (
            "mint",
            {"x_snowflake_authorization_token_type": "KEYPAIR_JWT"},
            {},
            "only OAuth bearer tokens from the identity provider are accepted",
        ),
        ("not-a-jwt", {}, {}, "not"),
        ("outsider", {}, {}, "you are not in a group allowed to use this gateway"),
        (
            "mint",
            {},
            {"hoopgw_upstream_private_key": None, "hoopgw_upstream_password": "file:{key}"},
            "cannot be used with the SQL API",
        ),
        ("mint", {}, {"hoopgw_oidc_issuer": None, "hoopgw_upstream_private_key": None}, "unset"),
    ],
    ids=["no-bearer", "token-type", "bad-token", "group", "password-credential", "no-identity"],
)
async def test_sql_api_refusals(
    issuer: LocalIssuer,
    service_key: Path,
    token: str | None,
    headers: dict[str, str],
    option: dict[str, Any],
    reason: str,
) -> None:
    auth = Authentication()
    with taddons.context(auth) as tctx:
        overrides = {
            name: value.format(key=service_key) if isinstance(value, str) else value
            for name, value in option.items()
        }
        tctx.configure(auth, **options(issuer, service_key, **overrides))
        if token == "mint":
            token = issuer.mint("ada", ["agents"])
        elif token == "outsider":
            token = issuer.mint("eve", ["outsiders"])
        flow = sql_api_flow(token, {"statement": "select 1"}, **headers)
        state = classified(flow)
        await auth.request(flow)
        code, message = refusal(flow, state)
        assert flow.response is not None and flow.response.status_code == 401
        assert code == BAD_CREDENTIALS
        assert reason in message


async def test_flows_the_gateway_did_not_classify_or_already_answered_are_left_alone(
    issuer: LocalIssuer, service_key: Path
) -> None:
    auth = Authentication()
    with taddons.context(auth) as tctx:
        tctx.configure(auth, **options(issuer, service_key))
        loaded = snowflake_flow("POST", QUERY_PATH, query_body("select 1"), live=False)
        classified_loaded = snowflake_flow("POST", QUERY_PATH, query_body("select 1"))
        await auth.request(loaded)
        assert loaded.response is None and state_of(loaded) is None
        refused = snowflake_flow("GET", "/elsewhere")
        state = classified(refused)
        await auth.request(refused)
        assert state.refusal is not None and state.refusal.source == "protocol"
        auth.response(refused)
        auth.response(classified_loaded)
        auth.error(classified_loaded)
        assert "authentication" not in state.passed
