"""Identity: token verification against a real JWKS endpoint, groups, role map, options."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import orjson
import pytest
from joserfc.jwk import RSAKey
from mitmproxy import exceptions, http
from mitmproxy.test import taddons

from hoopgw.addons import protocol
from hoopgw.addons.authentication.scrub import REDACTED, scrub_upstream_credentials
from hoopgw.addons.flowstate import FlowState
from hoopgw.addons.identity import (
    AccessPolicy,
    Identity,
    IdentityError,
    IdentityUnavailable,
    OidcVerifier,
    RoleRule,
    VerifiedToken,
    check_provider_url,
    groups_from,
    parse_role_map,
)
from hoopgw.addons.protocol import Endpoint
from tests.jwt_issuer import LocalIssuer


@pytest.fixture(scope="module")
def issuer() -> Iterator[LocalIssuer]:
    local = LocalIssuer().start()
    yield local
    local.stop()


def verify(verifier: OidcVerifier, token: str) -> VerifiedToken:
    return asyncio.run(verifier.verify(token))


def refusal(verifier: OidcVerifier, token: str) -> str:
    with pytest.raises(IdentityError) as refused:
        verify(verifier, token)
    return str(refused.value)


def test_good_token_verifies_with_discovered_keys(issuer: LocalIssuer) -> None:
    verifier = OidcVerifier(issuer.issuer, "hoopgw")
    verified = verify(verifier, issuer.mint("ada", ["agents", "analysts"]))
    assert verified.subject == "ada"
    assert verified.email == "ada@example.com"
    assert groups_from(verified.claims, "groups") == ("agents", "analysts")


# What the caller is told for each bad token; none of them may echo the token.
REFUSALS = [
    ("expired", lambda i: i.mint(exp=1_000_000, iat=999_000), "the token has expired"),
    (
        "not yet valid",
        lambda i: i.mint(nbf=4_000_000_000, exp=4_000_000_600),
        "the token is not valid yet",
    ),
    (
        "wrong issuer",
        lambda i: i.mint(iss="https://idp.example.com"),
        "issued by a different identity provider (wrong issuer)",
    ),
    (
        "wrong audience",
        lambda i: i.mint(aud="someone-else"),
        "meant for a different audience (wrong audience)",
    ),
    ("bad signature", lambda i: i.with_bad_signature(), "the token's signature is not valid"),
    (
        "unknown key",
        lambda i: i.mint(key=RSAKey.generate_key(2048, parameters={"kid": "rogue"})),
        "signed with a key the identity provider does not publish",
    ),
    ("alg none", lambda i: i.unsigned(), "algorithm none is not accepted"),
    ("hmac with public key", lambda i: i.hmac_with_public_key(), "algorithm HS256 is not accepted"),
    ("no expiry", lambda i: i.mint(exp=None), "the token lacks required claims: exp"),
    ("garbage", lambda i: "not-a-token", "the token is not a signed JWT"),
    ("empty", lambda i: "", "no token was presented"),
]


@pytest.mark.parametrize(("case", "make", "reason"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_bad_tokens_are_refused_with_a_reason(issuer, case, make, reason) -> None:
    verifier = OidcVerifier(issuer.issuer, "hoopgw")
    token = make(issuer)
    message = refusal(verifier, token)
    assert reason in message
    if token:
        assert token not in message
        assert token.split(".")[0] not in message


def test_algorithm_is_pinned_to_the_key_type(issuer: LocalIssuer) -> None:
    """A PS256 or ES256 header over an RSA key, or RS256 where the key says PS256, fails."""
    pinned = RSAKey.generate_key(2048, parameters={"kid": "pinned", "alg": "PS256"})
    issuer.publish(issuer.key, pinned)
    try:
        verifier = OidcVerifier(issuer.issuer, "hoopgw")
        same_key_without_alg = {k: v for k, v in pinned.as_dict(private=True).items() if k != "alg"}
        token = issuer.mint(key=RSAKey.import_key(same_key_without_alg))
        assert "does not match the identity provider's key" in refusal(verifier, token)
    finally:
        issuer.publish(issuer.key)


def test_keys_are_cached_and_refetched_on_unknown_kid_at_most_once_per_interval(
    issuer: LocalIssuer,
) -> None:
    clock = [1000.0]
    verifier = OidcVerifier(issuer.issuer, "hoopgw", refetch_interval=30, clock=lambda: clock[0])
    before = issuer.jwks_requests
    verify(verifier, issuer.mint())
    verify(verifier, issuer.mint())
    assert issuer.jwks_requests == before + 1

    rotated = RSAKey.generate_key(2048, parameters={"kid": "signing-2", "use": "sig"})
    issuer.publish(issuer.key, rotated)
    try:
        # Within the interval an unknown kid does not trigger a fetch.
        clock[0] += 5
        assert "does not publish" in refusal(verifier, issuer.mint(key=rotated))
        assert issuer.jwks_requests == before + 1
        # After it, one refetch finds the rotated key.
        clock[0] += 30
        assert verify(verifier, issuer.mint(key=rotated)).subject == "ada"
        assert issuer.jwks_requests == before + 2
        # A flood of unknown kids right after costs nothing more.
        rogue = RSAKey.generate_key(2048, parameters={"kid": "rogue-2"})
        for _ in range(3):
            refusal(verifier, issuer.mint(key=rogue))
        assert issuer.jwks_requests == before + 2
    finally:
        issuer.publish(issuer.key)


def test_keys_expire_after_the_ttl(issuer: LocalIssuer) -> None:
    clock = [0.0]
    verifier = OidcVerifier(issuer.issuer, "hoopgw", jwks_ttl=600, clock=lambda: clock[0])
    before = issuer.jwks_requests
    verify(verifier, issuer.mint())
    clock[0] += 601
    verify(verifier, issuer.mint())
    assert issuer.jwks_requests == before + 2


def test_unreachable_provider_is_a_clear_refusal() -> None:
    verifier = OidcVerifier("http://127.0.0.1:9", "hoopgw")
    token = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsifQ.eyJzdWIiOiJ4In0.c2ln"
    for _ in range(2):  # the second attempt, inside the refetch interval, says the same
        with pytest.raises(IdentityUnavailable, match="identity provider is unreachable"):
            verify(verifier, token)


@pytest.mark.parametrize(
    ("claims", "claim", "expected"),
    [
        ({"groups": ["a", "b"]}, "groups", ("a", "b")),
        ({"groups": "a"}, "groups", ("a",)),
        ({"realm_access": {"roles": ["x"]}}, "realm_access.roles", ("x",)),
        ({"https://example.com/groups": ["y"]}, "https://example.com/groups", ("y",)),
    ],
)
def test_groups_claim_shapes(claims, claim, expected) -> None:
    assert groups_from(claims, claim) == expected


@pytest.mark.parametrize(
    ("claims", "reason"),
    [({}, "has no 'groups' claim"), ({"groups": [1, 2]}, "not a list of group names")],
)
def test_groups_claim_refusals(claims, reason) -> None:
    with pytest.raises(IdentityError, match=reason):
        groups_from(claims, "groups")


def test_role_map_parses_in_order() -> None:
    rules = parse_role_map(["analysts=ANALYST:WH_SMALL", "agents = AGENT ", 'ops="Ops Role"'])
    assert rules == (
        RoleRule("analysts", "ANALYST", "WH_SMALL"),
        RoleRule("agents", "AGENT", None),
        RoleRule("ops", '"Ops Role"', None),
    )


@pytest.mark.parametrize("entry", ["agents", "=ROLE", "agents=", "agents=ROLE:", "g=BAD ROLE"])
def test_role_map_rejects_bad_entries_naming_them(entry: str) -> None:
    with pytest.raises(ValueError) as failure:
        parse_role_map(["ok=ROLE", entry])
    assert repr(entry) in str(failure.value)


def test_policy_first_matching_group_wins_and_roles_only_narrow() -> None:
    policy = AccessPolicy(
        [],
        parse_role_map(["admins=ADMIN", "analysts=ANALYST:WH_A", "agents=AGENT"]),
    )
    grant = policy.decide(["agents", "analysts"])
    assert (grant.role, grant.warehouse) == ("ANALYST", "WH_A")
    assert policy.decide(["agents", "analysts"], "agent").role == "AGENT"
    with pytest.raises(IdentityError, match="role ADMIN is not granted to you; your roles: "):
        policy.decide(["agents", "analysts"], "ADMIN")
    with pytest.raises(IdentityError, match="not in a group allowed"):
        policy.decide(["visitors"])


def test_policy_allowed_groups_without_role_map_use_default_role() -> None:
    policy = AccessPolicy(["agents"], ())
    assert policy.decide(["agents"]).role is None
    with pytest.raises(IdentityError, match="connect without a role"):
        policy.decide(["agents"], "SYSADMIN")


def test_policy_allowed_group_without_mapped_role_is_refused() -> None:
    policy = AccessPolicy(["agents", "analysts"], parse_role_map(["analysts=ANALYST"]))
    with pytest.raises(IdentityError, match="no Snowflake role is mapped"):
        policy.decide(["agents"])


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://idp.example.com", True),
        ("http://127.0.0.1:8080", True),
        ("http://localhost:8080/realms/x", True),
        ("http://idp.example.com", False),
        ("ftp://idp.example.com", False),
        ("idp.example.com", False),
    ],
)
def test_provider_urls_are_https_or_loopback(url: str, ok: bool) -> None:
    if ok:
        check_provider_url(url, "issuer")
    else:
        with pytest.raises(ValueError):
            check_provider_url(url, "issuer")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"hoopgw_oidc_issuer": "http://idp.example.com"}, "hoopgw_oidc_issuer: issuer"),
        ({"hoopgw_oidc_issuer": "https://idp.example.com"}, "hoopgw_oidc_audience must be set"),
        ({"hoopgw_role_map": ["a=R", "oops"]}, "hoopgw_role_map: 'oops' is not group=ROLE"),
        ({"hoopgw_oidc_groups_claim": " "}, "hoopgw_oidc_groups_claim must name a claim"),
    ],
)
def test_identity_options_are_validated(options: dict, message: str) -> None:
    identity = Identity()
    with taddons.context(identity) as tctx:
        with pytest.raises(exceptions.OptionsError) as failure:
            tctx.configure(identity, **options)
        assert message in str(failure.value)


def test_identity_options_build_verifier_and_policy() -> None:
    identity = Identity()
    with taddons.context(identity) as tctx:
        assert not identity.configured
        tctx.configure(
            identity,
            hoopgw_oidc_issuer="https://idp.example.com",
            hoopgw_oidc_audience="hoopgw",
            hoopgw_allowed_groups=["agents"],
            hoopgw_role_map=["agents=AGENT"],
            hoopgw_accept_password_token=True,
        )
        assert identity.verifier is not None
        assert identity.verifier.issuer == "https://idp.example.com"
        assert identity.policy.decide(["agents"]).role == "AGENT"
        assert identity.accept_password_token


def test_gateway_secrets_are_scrubbed_from_a_forwarded_login() -> None:
    """After upstream answered, mitmweb and flow files must not see the gateway's credential."""
    body = {"data": {"LOGIN_NAME": "svc", "AUTHENTICATOR": "SNOWFLAKE", "PASSWORD": "s3cret"}}
    request = http.Request.make(
        "POST",
        "http://127.0.0.1/session/v1/login-request",
        orjson.dumps(body),
        {"Authorization": 'Snowflake Token="upstream-secret"', "Content-Encoding": "identity"},
    )
    scrub_upstream_credentials(request, FlowState(endpoint=Endpoint.LOGIN))
    assert b"s3cret" not in (request.content or b"")
    assert orjson.loads(request.content or b"")["data"]["PASSWORD"] == REDACTED
    assert protocol.session_token_from(request.headers) == REDACTED

    sql_api = http.Request.make(
        "GET", "http://127.0.0.1/api/v2/statements/h", b"", {"Authorization": "Bearer key-pair-jwt"}
    )
    scrub_upstream_credentials(sql_api, FlowState(endpoint=Endpoint.SQL_API))
    assert sql_api.headers["authorization"] == f"Bearer {REDACTED}"
