"""Per-caller Snowflake users: the user map, the user each login signs in as, and its limits.

The addon runs in-process against a real loopback OIDC issuer with a real RSA
key; the key-pair JWT the gateway puts on the wire is decoded and checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey
from mitmproxy import exceptions, http
from mitmproxy.test import taddons

from hoopgw.addons.authentication import Authentication
from hoopgw.addons.flowstate import state_of
from hoopgw.addons.identity import IdentityError, UserMap
from hoopgw.recorder.upstream_users import (
    load_private_key,
    parse_user_map,
    public_key_fingerprint,
    snowflake_user_name,
)
from tests.addons import LOGIN_PATH, STATEMENTS_PATH, classified, error_of, snowflake_flow
from tests.addons.test_authentication import options
from tests.bodies import login_body
from tests.jwt_issuer import LocalIssuer

USER_MAP = ["claim:preferred_username", "data-eng=SVC_DATA_ENG", "*=SVC_AGENT"]


@pytest.mark.parametrize(
    ("value", "user"),
    [
        ("ada", "ADA"),
        ("ada.lovelace+x@example.com", "ADA_LOVELACE_X_EXAMPLE_COM"),
        ("o'brien-smith", "OBRIEN_SMITH"),
        ("_svc$1", "_SVC$1"),
        ("zoë", "ZO"),
    ],
)
def test_a_claim_value_becomes_an_unquoted_snowflake_user_name(value: str, user: str) -> None:
    assert snowflake_user_name(value) == user


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("éé", "leaves no character"),
        ("'\"", "leaves no character"),
        ("1ada", "does not start with a letter or underscore"),
        ("a" * 256, "longer than 255 characters"),
    ],
)
def test_claim_values_that_make_no_user_name_are_refused(value: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        snowflake_user_name(value)


def test_the_user_map_parses_in_order_and_the_fallback_must_be_last() -> None:
    rules = parse_user_map(["claim:email", " ", "ops=svc_ops", "*=svc_agent"])
    assert [str(rule) for rule in rules] == ["claim:email", "ops=SVC_OPS", "*=SVC_AGENT"]
    assert UserMap(rules).fixed_users() == ("SVC_OPS", "SVC_AGENT")
    for entry, message in [
        (["*=A", "ops=B"], "after the fallback"),
        (["claim:"], "is not claim:NAME"),
        (["ops"], "is not claim:NAME, group=USER or \\*=USER"),
        (['ops="Quoted"'], "not an unquoted Snowflake user name"),
        (["ops=1X"], "not an unquoted Snowflake user name"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_user_map(entry)


def test_the_first_entry_that_names_a_user_wins_and_no_entry_means_refusal() -> None:
    users = UserMap(parse_user_map(["claim:preferred_username", "ops=SVC_OPS"]))
    assert users.user_for({"preferred_username": "ada"}, ("ops",)) == "ADA"
    assert users.user_for({}, ("ops",)) == "SVC_OPS"
    with pytest.raises(IdentityError, match="no Snowflake user is mapped to you"):
        users.user_for({}, ("agents",))
    with pytest.raises(IdentityError, match="'preferred_username' claim does not start with"):
        users.user_for({"preferred_username": "9lives"}, ("agents",))


def map_options(issuer: LocalIssuer, service_key: Path, **overrides: Any) -> dict[str, Any]:
    settings = {
        "hoopgw_allowed_groups": ["agents", "data-eng"],
        "hoopgw_role_map": ["agents=AGENT", "data-eng=AGENT"],
        "hoopgw_upstream_user_map": USER_MAP,
        **overrides,
    }
    return options(issuer, service_key, **settings)


def signed_user(token: str, service_key: Path) -> tuple[str, str]:
    """The key-pair JWT's (iss, sub), after checking its signature with the gateway's key."""
    key = load_private_key(service_key.read_bytes())
    claims = jwt.decode(token, RSAKey.import_key(key.public_key()), ["RS256"]).claims
    return claims["iss"], claims["sub"]


async def login_as(auth: Authentication, token: str) -> tuple[http.HTTPFlow, dict[str, Any]]:
    flow = snowflake_flow("POST", LOGIN_PATH + "?request_id=1", login_body(token))
    classified(flow)
    await auth.request(flow)
    data = orjson.loads(flow.request.content or b"{}").get("data", {})
    return flow, data


@pytest.mark.parametrize(
    ("claims", "groups", "user"),
    [
        ({"preferred_username": "ada.l"}, ["agents"], "ADA_L"),
        ({}, ["data-eng"], "SVC_DATA_ENG"),
        ({}, ["agents"], "SVC_AGENT"),
    ],
)
async def test_each_caller_signs_in_as_their_mapped_user(
    issuer: LocalIssuer, service_key: Path, claims: dict[str, str], groups: list[str], user: str
) -> None:
    auth = Authentication()
    with taddons.context(auth) as tctx:
        tctx.configure(auth, **map_options(issuer, service_key))
        flow, data = await login_as(auth, issuer.mint("ada", groups, **claims))
        assert flow.response is None
        assert data["LOGIN_NAME"] == user
        fingerprint = public_key_fingerprint(load_private_key(service_key.read_bytes()))
        assert signed_user(data["TOKEN"], service_key) == (
            f"XY12345.{user}.{fingerprint}",
            f"XY12345.{user}",
        )
        state = state_of(flow)
        assert (
            state is not None
            and state.upstream_login is not None
            and state.upstream_login.user == user
        )


async def test_a_caller_the_map_names_no_user_for_is_refused_at_login(
    issuer: LocalIssuer, service_key: Path
) -> None:
    auth = Authentication()
    with taddons.context(auth) as tctx:
        tctx.configure(
            auth,
            **map_options(issuer, service_key, hoopgw_upstream_user_map=["data-eng=SVC_DATA_ENG"]),
        )
        flow, _ = await login_as(auth, issuer.mint("ada", ["agents"]))
        answer = error_of(flow)
        assert answer["success"] is False and answer["code"] == "390100"
        assert answer["message"] == (
            "hoopgw refused the login: no Snowflake user is mapped to you "
            "(hoopgw_upstream_user_map)"
        )


async def test_the_sql_api_signs_as_the_mapped_user(issuer: LocalIssuer, service_key: Path) -> None:
    auth = Authentication()
    with taddons.context(auth) as tctx:
        tctx.configure(auth, **map_options(issuer, service_key))
        token = issuer.mint("ada", ["data-eng"])
        flow = snowflake_flow(
            "POST",
            STATEMENTS_PATH,
            {"statement": "select 1"},
            [("authorization", f"Bearer {token}")],
        )
        classified(flow)
        await auth.request(flow)
        bearer = flow.request.headers["authorization"].removeprefix("Bearer ")
        assert signed_user(bearer, service_key)[1] == "XY12345.SVC_DATA_ENG"
        # each call is its own session: it names who it signed in as, like a login does
        login, _ = await login_as(auth, token)
        api_state, login_state = state_of(flow), state_of(login)
        assert api_state is not None and login_state is not None
        assert api_state.upstream_login is not None
        assert api_state.upstream_login == login_state.upstream_login
        assert (api_state.upstream_login.user, api_state.upstream_login.authenticator) == (
            "SVC_DATA_ENG",
            "SNOWFLAKE_JWT",
        )
        assert api_state.caller == login_state.caller


@pytest.mark.parametrize("credential", ["hoopgw_upstream_password", "hoopgw_upstream_oauth_token"])
def test_a_user_map_with_a_one_user_credential_fails_start_up(
    issuer: LocalIssuer, service_key: Path, credential: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOPGW_TEST_ONE_USER_SECRET", "not-a-key")
    auth = Authentication()
    with (
        taddons.context(auth) as tctx,
        pytest.raises(exceptions.OptionsError, match="only the shared hoopgw_upstream_user"),
    ):
        tctx.configure(
            auth,
            **map_options(
                issuer,
                service_key,
                hoopgw_upstream_private_key=None,
                **{credential: "env:HOOPGW_TEST_ONE_USER_SECRET"},
            ),
        )
