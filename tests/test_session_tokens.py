"""Sealed gateway tokens: what they bind, what opens them, and what does not."""

from __future__ import annotations

import base64
import logging
import os
from dataclasses import replace
from pathlib import Path

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons

from hoopgw.addons.flowstate import Caller, SessionContext
from hoopgw.addons.session_tokens import (
    KEY_BYTES,
    TOKEN_PREFIX,
    RevocationList,
    SealedSession,
    SessionTokens,
    TokenError,
    TokenKind,
    TokenSealer,
    decode_token_key,
)
from hoopgw.recorder.ids import new_session_id
from hoopgw.recorder.secrets import new_token_key

UPSTREAM = "ver:1-hint:1234-ETMsDgAAAZupstreamsessiontoken"


def session(**changes: object) -> SealedSession:
    base = SealedSession(
        kind=TokenKind.SESSION,
        session_id=new_session_id(),
        upstream_token=UPSTREAM,
        caller=Caller("ada", "ada@example.com", ("agents",), "AGENT", "https://idp"),
        context=SessionContext("DB", "PUBLIC", "WH", "AGENT"),
        issued_at=1_700_000_000,
        expires_at=1_700_003_600,
        session_expires_at=1_700_014_400,
        snowflake_session_id=42,
    )
    return replace(base, **changes)


def test_new_token_key_is_32_random_bytes_base64url() -> None:
    first, second = new_token_key(), new_token_key()
    assert first != second
    assert "=" not in first and "+" not in first and "/" not in first
    assert len(decode_token_key(first)) == KEY_BYTES


def test_token_key_accepts_base64_and_base64url_with_or_without_padding() -> None:
    raw = bytes(range(250, 256)) + os.urandom(26)
    for text in (
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        base64.b64encode(raw).decode() + "\n",
    ):
        assert decode_token_key(text) == raw


@pytest.mark.parametrize("text", ["c2hvcnQ=", "not base64 at all!", base64.b64encode(b"x" * 48)])
def test_bad_token_keys_are_refused_without_echo(text: str | bytes) -> None:
    with pytest.raises(ValueError) as failure:
        decode_token_key(text)
    shown = text.decode() if isinstance(text, bytes) else text
    assert shown not in str(failure.value)


def test_sealed_token_round_trips_everything_it_binds() -> None:
    sealer = TokenSealer(os.urandom(KEY_BYTES))
    original = session()
    token = sealer.seal(original)
    assert token.startswith(TOKEN_PREFIX)
    assert UPSTREAM not in token
    assert "ada" not in base64.urlsafe_b64decode(token.split(".")[1] + "==").decode(errors="ignore")
    assert sealer.open(token) == original


def test_a_master_token_without_upstream_renewal_round_trips() -> None:
    sealer = TokenSealer(os.urandom(KEY_BYTES))
    master = session(kind=TokenKind.MASTER, upstream_session_token=UPSTREAM, upstream_renews=False)
    assert sealer.open(sealer.seal(master)) == master


def test_altered_tokens_do_not_open() -> None:
    sealer = TokenSealer(os.urandom(KEY_BYTES))
    token = sealer.seal(session())
    assert sealer.open(token).upstream_token == UPSTREAM  # now remembered by the sealer
    prefix_len = len(TOKEN_PREFIX)
    header, encrypted_key, iv, ciphertext, tag = token[prefix_len:].split(".")
    flipped = ("A" if ciphertext[5] != "A" else "B").join([ciphertext[:5], ciphertext[6:]])
    for altered in (
        TOKEN_PREFIX + ".".join([header, encrypted_key, iv, flipped, tag]),
        TOKEN_PREFIX + ".".join([header, encrypted_key, iv, ciphertext, tag[::-1]]),
        token[:-2],
    ):
        with pytest.raises(TokenError):
            sealer.open(altered)


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (UPSTREAM, "not issued by hoopgw"),
        ("", "not issued by hoopgw"),
        (TOKEN_PREFIX + "garbage", "malformed"),
    ],
)
def test_foreign_tokens_are_refused(token: str, reason: str) -> None:
    with pytest.raises(TokenError, match=reason):
        TokenSealer(os.urandom(KEY_BYTES)).open(token)


def test_another_key_cannot_open_and_a_previous_key_still_can() -> None:
    old_key, new_key = os.urandom(KEY_BYTES), os.urandom(KEY_BYTES)
    old_token = TokenSealer(old_key).seal(session())
    with pytest.raises(TokenError, match="does not hold"):
        TokenSealer(new_key).open(old_token)
    rotated = TokenSealer(new_key, [old_key])
    assert rotated.open(old_token).upstream_token == UPSTREAM
    assert TokenSealer(new_key).open(rotated.seal(session())).upstream_token == UPSTREAM


def test_revocation_lasts_until_the_session_expires() -> None:
    revoked = RevocationList()
    revoked.revoke("s1", until=200.0, now=100.0)
    assert revoked.is_revoked("s1", now=150.0)
    assert not revoked.is_revoked("s2", now=150.0)
    assert not revoked.is_revoked("s1", now=200.0)
    assert len(revoked) == 0


def test_revocation_list_sheds_expired_sessions_long_before_it_is_full(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A steady stream of logouts keeps the list at the sessions whose tokens still live."""
    revoked = RevocationList()
    for n in range(20_000):
        now = float(n)
        revoked.revoke(f"s{n}", until=now + 100.0, now=now)
    assert len(revoked) <= 2_048
    assert all(revoked.is_revoked(f"s{n}", now=19_999.0) for n in range(19_900, 20_000))
    assert "revocation list full" not in caplog.text


def test_revocation_list_is_bounded(caplog: pytest.LogCaptureFixture) -> None:
    revoked = RevocationList(capacity=3)
    for n in range(5):
        revoked.revoke(f"s{n}", until=1000.0 + n, now=0.0)
    assert len(revoked) == 3
    assert [revoked.is_revoked(f"s{n}", now=1.0) for n in range(5)] == [
        False,
        False,
        True,
        True,
        True,
    ]
    assert "revocation list full" in caplog.text


def test_token_key_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key_text = new_token_key()
    old_text = new_token_key()
    monkeypatch.setenv("HOOPGW_TEST_TOKEN_KEY", key_text)
    old_file = tmp_path / "old.key"
    old_file.write_text(old_text + "\n")
    tokens = SessionTokens()
    with taddons.context(tokens) as tctx:
        tctx.configure(
            tokens,
            hoopgw_token_key="env:HOOPGW_TEST_TOKEN_KEY",
            hoopgw_token_previous_keys=[f"file:{old_file}"],
            hoopgw_session_token_lifetime=900,
        )
        assert tokens.shared_key
        assert tokens.session_lifetime == 900
        sealed_by_old = TokenSealer(decode_token_key(old_text)).seal(session())
        assert tokens.sealer.open(sealed_by_old).session_id
        same_key = TokenSealer(decode_token_key(key_text))
        assert same_key.open(tokens.sealer.seal(session())).caller.subject == "ada"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"hoopgw_token_key": "env:HOOPGW_TEST_NO_SUCH_VARIABLE"}, "hoopgw_token_key: environment"),
        ({"hoopgw_token_key": "env:HOOPGW_TEST_SHORT_KEY"}, "hoopgw_token_key: env:"),
        ({"hoopgw_token_key": "rawkeymaterial"}, "hoopgw_token_key is not a secret reference"),
        (
            {"hoopgw_token_previous_keys": ["env:HOOPGW_TEST_SHORT_KEY"]},
            "hoopgw_token_previous_keys",
        ),
        ({"hoopgw_session_token_lifetime": 0}, "hoopgw_session_token_lifetime must be positive"),
    ],
)
def test_bad_token_options_name_the_option_not_the_secret(
    options: dict, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOPGW_TEST_SHORT_KEY", "c2hvcnQta2V5LXNlY3JldA")
    tokens = SessionTokens()
    with taddons.context(tokens) as tctx, pytest.raises(exceptions.OptionsError) as failure:
        tctx.configure(tokens, **options)
    text = str(failure.value)
    assert message.replace(" must be positive", " must be a positive") in text
    assert "c2hvcnQta2V5LXNlY3JldA" not in text
    assert "rawkeymaterial" not in text


def test_unset_key_warns_that_replicas_will_not_share(caplog: pytest.LogCaptureFixture) -> None:
    tokens = SessionTokens()
    with caplog.at_level(logging.WARNING), taddons.context(tokens) as tctx:
        tctx.configure(tokens, hoopgw_token_key=None)
    assert not tokens.shared_key
    assert "replicas will not share sessions" in caplog.text
