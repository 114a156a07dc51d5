"""The gateway's sealed tokens over their whole life: issue, use, renew, expire, revoke, rotate.

Each refusal is shown on the wire (raw HTTP, the exact code a driver acts on)
and at the strict upstream (nothing of a refused request reached it). Key
rotation is shown with the real connector keeping its session while the
gateway restarts with a new key and the old one listed as previous.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from hoopgw.addons.flowstate import Caller as TokenCaller
from hoopgw.addons.flowstate import SessionContext
from hoopgw.addons.session_tokens import (
    TOKEN_PREFIX,
    SealedSession,
    TokenError,
    TokenKind,
    TokenSealer,
    decode_token_key,
    key_id,
)
from hoopgw.recorder.secrets import new_token_key
from tests import stack
from tests.conftest import UPSTREAM_PASSWORD_ENV, UPSTREAM_TEST_PASSWORD, GatewayFactory
from tests.raw_http import Answer, Session, json_headers, login, query, send, session_authorization
from tests.strict_upstream import StrictUpstream

CURRENT_KEY_ENV = "HOOPGW_TEST_TOKEN_KEY_CURRENT"
# 390104: the token does not open; 399001: the flipped bit made the header unprintable
REFUSED = {"390104", "399001"}
PREVIOUS_KEY_ENV = "HOOPGW_TEST_TOKEN_KEY_PREVIOUS"


def renew(port: int, session: Session, old_session_token: str | None = None) -> Answer:
    body = {"oldSessionToken": old_session_token or session.token, "requestType": "RENEW"}
    return send(
        port,
        "POST",
        "/session/token-request?requestId=1",
        json.dumps(body).encode(),
        json_headers(session_authorization(session.master_token)),
    )


def logout(port: int, session: Session) -> Answer:
    return send(
        port,
        "POST",
        "/session?delete=true",
        b"{}",
        json_headers(session_authorization(session.token)),
    )


def sealed_with(token: str) -> str:
    """The key id in a sealed token's protected header."""
    header = token.removeprefix(TOKEN_PREFIX).split(".", 1)[0]
    return json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"]


def key_env(current: str, previous: str | None = None) -> dict[str, str]:
    env = {CURRENT_KEY_ENV: current}
    if previous is not None:
        env[PREVIOUS_KEY_ENV] = previous
    return env


def key_options(previous: bool = False, **extra: Any) -> dict[str, Any]:
    return {
        "hoopgw_token_key": f"env:{CURRENT_KEY_ENV}",
        "hoopgw_token_previous_keys": [f"env:{PREVIOUS_KEY_ENV}"] if previous else [],
        **extra,
    }


@pytest.fixture(scope="module")
def first_key() -> str:
    return new_token_key()


@pytest.fixture(scope="module")
def gw(gateway_factory, strict, first_key) -> stack.Gateway:
    return gateway_factory(strict.url, key_options(), env=key_env(first_key), name="tokens-gw")


def refused_without_upstream(
    strict: StrictUpstream, answer: Answer, mark: int, code: str, says: str
) -> None:
    assert answer.json.get("success") is False, answer.json
    assert answer.code == code, answer.json
    assert says in answer.message, answer.message
    assert strict.received_since(mark) == []


def test_a_logged_out_sessions_tokens_are_refused(gw, strict, oidc) -> None:
    session = login(gw.port, oidc.mint("lou", ["agents"]))
    assert query(gw.port, session.token, "select 1").json["success"]
    assert logout(gw.port, session).json["success"]
    mark = strict.mark()
    refused_without_upstream(
        strict, query(gw.port, session.token, "select 1"), mark, "390104", "logged out"
    )
    refused_without_upstream(strict, renew(gw.port, session), mark, "390104", "logged out")
    refused_without_upstream(strict, logout(gw.port, session), mark, "390104", "logged out")


def test_expired_session_and_master_tokens_are_refused(
    gateway_factory, strict, oidc, first_key
) -> None:
    short = gateway_factory(
        strict.url,
        key_options(hoopgw_session_token_lifetime=1, hoopgw_master_token_lifetime=4),
        env=key_env(first_key),
        name="tokens-short-gw",
    )
    session = login(short.port, oidc.mint("exa", ["agents"]))
    stack.wait_until(
        lambda: query(short.port, session.token, "select 1").code == "390112",
        timeout=10,
        what="the session token to expire",
    )
    mark = strict.mark()
    refused_without_upstream(
        strict, query(short.port, session.token, "select 1"), mark, "390112", "expired"
    )
    renewed = renew(short.port, session)
    assert renewed.json["success"], renewed.json
    fresh = renewed.json["data"]["sessionToken"]
    assert query(short.port, fresh, "select 2").json["success"]
    stack.wait_until(
        lambda: renew(short.port, session).code == "390114",
        timeout=15,
        what="the master token to expire",
    )
    mark = strict.mark()
    refused_without_upstream(
        strict, renew(short.port, session), mark, "390114", "the session has expired"
    )
    refused_without_upstream(
        strict, query(short.port, fresh, "select 3"), mark, "390112", "expired"
    )


def test_tokens_of_another_gateway_key_are_refused(gw, gateway_factory, strict, oidc) -> None:
    stranger = gateway_factory(
        strict.url, key_options(), env=key_env(new_token_key()), name="tokens-stranger-gw"
    )
    session = login(gw.port, oidc.mint("kay", ["agents"]))
    mark = strict.mark()
    refused_without_upstream(
        strict, query(stranger.port, session.token, "select 1"), mark, "390104", "does not hold"
    )
    refused_without_upstream(strict, renew(stranger.port, session), mark, "390104", "does not hold")
    assert query(gw.port, session.token, "select 1").json["success"]


def _bit_flips(token: str) -> dict[str, str]:
    """The token with one bit changed in the prefix, at each part's edges and in the middle."""
    sealed = token.removeprefix(TOKEN_PREFIX)
    parts = sealed.split(".")
    positions = {"prefix": 0}
    offset = len(TOKEN_PREFIX)
    for index, part in enumerate(parts):
        if part:
            positions[f"part{index}-first"] = offset
            positions[f"part{index}-middle"] = offset + len(part) // 2
            positions[f"part{index}-last"] = offset + len(part) - 1
        offset += len(part) + 1
    flips = {}
    for where, position in positions.items():
        for bit in (0, 5):
            altered = chr(ord(token[position]) ^ (1 << bit))
            flips[f"{where}-bit{bit}"] = token[:position] + altered + token[position + 1 :]
    return flips


def test_a_token_altered_by_one_bit_is_refused(gw, strict, oidc) -> None:
    session = login(gw.port, oidc.mint("bit", ["agents"]))
    mark = strict.mark()
    for where, altered in _bit_flips(session.token).items():
        answer = query(gw.port, altered, "select 1")
        assert answer.code in REFUSED, (where, answer.json)
        assert answer.json["success"] is False
    for where, altered in _bit_flips(session.master_token).items():
        answer = renew(gw.port, Session(session.token, altered, session.session_id))
        assert answer.code in REFUSED, (where, answer.json)
    assert strict.received_since(mark) == []
    assert query(gw.port, session.token, "select 1").json["success"]


def test_every_single_bit_change_of_a_sealed_token_is_refused() -> None:
    """Exhaustively, offline: no bit of a token, in any position, can be changed unnoticed."""
    sealer = TokenSealer(os.urandom(32))
    token = sealer.seal(
        SealedSession(
            kind=TokenKind.SESSION,
            session_id="0190f3c4-7b1a-7c2e-9d4f-1a2b3c4d5e6f",
            upstream_token="ver:1-hint:upstream",
            caller=TokenCaller("ada", "ada@example.com", ("agents",), "AGENT"),
            context=SessionContext(),
            issued_at=0,
            expires_at=4_000_000_000,
            session_expires_at=4_000_000_000,
        )
    )
    assert sealer.open(token).upstream_token == "ver:1-hint:upstream"
    accepted = []
    for position in range(len(token)):
        for bit in range(8):
            altered = (
                token[:position] + chr(ord(token[position]) ^ (1 << bit)) + token[position + 1 :]
            )
            try:
                sealer.open(altered)
            except TokenError:
                continue
            accepted.append((position, bit))
    assert accepted == []


def test_an_old_session_token_of_another_session_cannot_be_renewed(gw, strict, oidc) -> None:
    mine = login(gw.port, oidc.mint("own", ["agents"]))
    theirs = login(gw.port, oidc.mint("oth", ["agents"]))
    mark = strict.mark()
    refused_without_upstream(
        strict, renew(gw.port, mine, theirs.token), mark, "390104", "belongs to another session"
    )


def _restart(
    factory: GatewayFactory,
    upstream: str,
    port: int,
    name: str,
    options: Mapping[str, Any],
    env: Mapping[str, str],
) -> stack.Gateway:
    """A gateway on a given port (a replica restarted in place), torn down with the others."""
    home: Path = factory.workdir / name
    merged = {
        "hoopgw_store": f"file:{home / 'store'}",
        "hoopgw_spool_dir": str(home / "spool"),
        **factory.defaults,
        **options,
    }
    gateway = stack.start_gateway(
        home,
        upstream,
        merged,
        env={UPSTREAM_PASSWORD_ENV: UPSTREAM_TEST_PASSWORD, **env},
        port=port,
    )
    factory.started.append(gateway)
    return gateway


def test_key_rotation_keeps_sessions_through_the_grace_period(
    gateway_factory, strict, oidc, connect
) -> None:
    old_key, new_key = new_token_key(), new_token_key()
    old_id, new_id = key_id(decode_token_key(old_key)), key_id(decode_token_key(new_key))
    before = gateway_factory(
        strict.url,
        key_options(hoopgw_session_token_lifetime=5),
        env=key_env(old_key),
        name="rotation-before-gw",
    )
    connection = connect(before, oidc.mint("rot", ["agents"]))
    cursor = connection.cursor()
    assert cursor.execute("select 1").fetchone() == (1,)
    first_query = cursor.sfqid  # bound to the session under the key of its login
    old_session = Session(connection.rest.token, connection.rest.master_token, 0)
    assert sealed_with(old_session.token) == sealed_with(old_session.master_token) == old_id
    before.stop()

    # Rotation: the new key seals, the old one still opens, on the same address.
    during = _restart(
        gateway_factory,
        strict.url,
        before.port,
        "rotation-during-gw",
        key_options(previous=True, hoopgw_session_token_lifetime=3),
        key_env(new_key, previous=old_key),
    )
    assert query(during.port, old_session.token, "select 2").json["success"]
    stack.wait_until(
        lambda: query(during.port, old_session.token, "select 1").code == "390112",
        timeout=10,
        what="the old session token to expire",
    )
    renewals = strict.renewals
    assert cursor.execute("select 3").fetchone() == (3,)  # the driver renews with its old master
    assert strict.renewals == renewals + 1
    assert sealed_with(connection.rest.token) == sealed_with(connection.rest.master_token) == new_id
    # the session's first id, bound before the rotation, still names its own query
    again = send(
        during.port,
        "GET",
        f"/queries/{first_query}/result?requestId=2",
        b"",
        json_headers(session_authorization(connection.rest.token)),
    )
    assert again.json["success"] and again.json["data"]["queryId"] == first_query
    during.stop()

    # After the grace period: only the new key; the driver's renewed tokens still work.
    after = _restart(
        gateway_factory,
        strict.url,
        before.port,
        "rotation-after-gw",
        key_options(),
        key_env(new_key),
    )
    assert cursor.execute("select 4").fetchone() == (4,)
    mark = strict.mark()
    refused_without_upstream(
        strict, renew(after.port, old_session), mark, "390104", "does not hold"
    )
    connection.close()
