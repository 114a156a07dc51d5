"""Per-caller Snowflake users end to end: each caller signs in to Snowflake as their own user.

The strict upstream (tests/strict_upstream.py) knows each user's public key and
verifies every key-pair JWT as Snowflake does, so a login it accepts was signed
for exactly the user it names.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from hoopgw.recorder.secrets import new_token_key
from tests import stack
from tests.bodies import login_body, write_service_key
from tests.strict_upstream import StrictUpstream
from tests.test_identity_gateway import ACCOUNT, SERVICE_USER, call, identity_options, query

USER_MAP = ["claim:preferred_username", "contractors=SVC_CONTRACTORS", "*=SVC_AGENT"]
LOGIN_PATH = "/session/v1/login-request?request_id=1"


@pytest.fixture(scope="module")
def service_key(workdir: Path) -> tuple[rsa.RSAPrivateKey, Path]:
    path = workdir / f"users-key-{uuid.uuid4().hex[:6]}.p8"
    key, _ = write_service_key(path)
    return key, path


@pytest.fixture(scope="module")
def strict(fakesnow_server, service_key) -> Iterator[StrictUpstream]:
    """Snowflake with four users that carry the gateway's public key, and one that does not."""
    public = service_key[0].public_key()
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    upstream = StrictUpstream(
        fakesnow_server.url,
        ACCOUNT,
        SERVICE_USER,
        public_key=public,
        users={
            "ADA_L": public,
            "BEA": public,
            "SVC_CONTRACTORS": public,
            "SVC_AGENT": public,
            "CY": stranger,
        },
    ).start()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def token_key_env() -> dict[str, str]:
    return {"HOOPGW_TEST_TOKEN_KEY": new_token_key()}


def options(issuer: str, key_path: Path, user_map: list[str]) -> dict[str, object]:
    return identity_options(
        issuer,
        key_path,
        hoopgw_allowed_groups=["agents", "contractors"],
        hoopgw_role_map=["agents=AGENT", "contractors=AGENT"],
        hoopgw_upstream_user_map=user_map,
    )


@pytest.fixture(scope="module")
def gw(gateway_factory, strict, oidc, service_key, token_key_env) -> stack.Gateway:
    return gateway_factory(
        strict.url,
        options(oidc.issuer, service_key[1], USER_MAP),
        env=token_key_env,
        name="users-gw",
    )


def log_in(gateway: stack.Gateway, token: str) -> dict:
    return call(gateway, LOGIN_PATH, login_body(token))[1]


def test_two_callers_sign_in_as_their_own_users(gw, strict, oidc) -> None:
    for subject, claim, user in [("ada", "ada.l", "ADA_L"), ("bea", "bea", "BEA")]:
        answer = log_in(gw, oidc.mint(subject, groups=["agents"], preferred_username=claim))
        assert answer["success"], answer
        assert strict.logins()[-1]["login_name"] == user
        assert strict.logins()[-1]["authenticator"] == "SNOWFLAKE_JWT"
        assert query(gw, answer["data"]["token"], "select 1")["success"]


def test_group_and_shared_fallback_users(gw, strict, oidc) -> None:
    assert log_in(gw, oidc.mint("dan", groups=["contractors"]))["success"]
    assert strict.logins()[-1]["login_name"] == "SVC_CONTRACTORS"
    assert log_in(gw, oidc.mint("eve", groups=["agents"]))["success"]
    assert strict.logins()[-1]["login_name"] == "SVC_AGENT"


def test_a_user_without_the_gateways_key_is_refused_by_snowflake(gw, strict, oidc) -> None:
    answer = log_in(gw, oidc.mint("cy", groups=["agents"], preferred_username="cy"))
    assert answer["success"] is False and answer["code"] == "390100"
    assert all(login["login_name"] != "CY" for login in strict.logins())


def test_a_caller_with_no_mapped_user_is_refused_without_contacting_snowflake(
    gateway_factory, strict, oidc, service_key, token_key_env
) -> None:
    strict_only = gateway_factory(
        strict.url,
        options(oidc.issuer, service_key[1], ["claim:preferred_username"]),
        env=token_key_env,
        name="users-no-fallback-gw",
    )
    mark = strict.mark()
    answer = log_in(strict_only, oidc.mint("fay", groups=["agents"]))
    assert answer["success"] is False and answer["code"] == "390100"
    assert answer["message"] == (
        "hoopgw refused the login: no Snowflake user is mapped to you (hoopgw_upstream_user_map)"
    )
    assert strict.received_since(mark) == []


def bodies_since(strict: StrictUpstream, mark: int, route: str) -> list[dict]:
    return [json.loads(r.body) for r in strict.received_since(mark) if r.path.startswith(route)]


def test_query_tag_upstream_names_session_and_caller_and_keeps_the_clients(
    gw, strict, oidc, connect
) -> None:
    mark = strict.mark()
    token = oidc.mint("gus", groups=["agents"], preferred_username="bea")
    answer = call(
        gw, LOGIN_PATH, login_body(token, SESSION_PARAMETERS={"QUERY_TAG": "agent-login"})
    )
    assert answer[1]["success"], answer
    session = answer[1]["data"]["token"]
    login = bodies_since(strict, mark, "/session/v1/login-request")[-1]
    tag = json.loads(login["data"]["SESSION_PARAMETERS"]["QUERY_TAG"])
    assert tag["caller"] == "gus" and tag["client"] == "agent-login"
    session_id = tag["hoopgw_session"]

    mark = strict.mark()
    path = f"/queries/v1/query-request?requestId={uuid.uuid4()}"
    body = {"sqlText": "select 1", "sequenceId": 1, "parameters": {"query_tag": "per-query"}}
    assert call(gw, path, body, token=session)[1]["success"]
    altered = query(gw, session, "alter session set query_tag = 'agent-alter'")
    assert altered["success"], altered
    sent = bodies_since(strict, mark, "/queries/v1/query-request")
    per_query = json.loads(sent[0]["parameters"]["QUERY_TAG"])
    assert per_query == {"hoopgw_session": session_id, "caller": "gus", "client": "per-query"}
    assert "agent-alter" in sent[1]["sqlText"] and session_id in sent[1]["sqlText"]
    assert query(gw, session, "select 2")["success"]
    in_force = json.loads(strict.query_tags()[-1] or "{}")
    assert in_force == {"hoopgw_session": session_id, "caller": "gus", "client": "agent-alter"}

    refused = query(gw, session, "alter session set query_tag = 'x'; select 1")
    assert refused["success"] is False
    assert "hoopgw sets QUERY_TAG itself" in refused["message"]
