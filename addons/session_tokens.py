"""Gateway-minted Snowflake session and master tokens, sealed so any replica can open them.

The client never holds a Snowflake token: it gets sealed tokens instead. A sealed
token is a JWE (compact serialisation, `dir` + `A256GCM`) under the gateway's
token key, prefixed with `hoopgw1.`. It carries the upstream token it stands
for, the hoopgw session id, the caller's identity, the session context at login
and its expiry, so a replica that shares the key needs no shared token store to
swap it back. Authenticated encryption makes a forged or altered token fail to
open; the upstream token inside is unreadable to the client.

Revocation (logout) is the one thing sealing cannot give across replicas: a
replica remembers the sessions logged out through it in a bounded in-memory
list until their tokens expire. Snowflake itself invalidates the upstream
session at logout, so a token replayed through another replica is refused
upstream; keep `hoopgw_session_token_lifetime` short to bound the rest.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson
from joserfc import jwe
from joserfc.errors import JoseError
from joserfc.jwk import OctKey
from mitmproxy import ctx, exceptions
from mitmproxy.addonmanager import Loader

from hoopgw.addons.credentials import resolve_option_secret
from hoopgw.addons.flowstate import Caller, SessionContext

logger = logging.getLogger(__name__)

TOKEN_PREFIX = "hoopgw1."
KEY_BYTES = 32
_PROTECTED_HEADER = {"alg": "dir", "enc": "A256GCM"}
_ALGORITHMS = ["dir", "A256GCM"]
_PAYLOAD_VERSION = 1
_MAX_TOKEN_CHARS = 64 * 1024
_OPENED_CACHE_SIZE = 1024
_REVOCATION_SWEEP_FLOOR = 1024


def decode_token_key(text: bytes | str) -> bytes:
    """The 32 key bytes from their base64 or base64url text; never echoes the text."""
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError("the key is not base64 text") from None
    cleaned = "".join(text.split())
    normalised = cleaned.replace("-", "+").replace("_", "/")
    normalised += "=" * (-len(normalised) % 4)
    try:
        key = base64.b64decode(normalised, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the key is not base64 or base64url text") from None
    if len(key) != KEY_BYTES:
        raise ValueError(
            f"the key must be {KEY_BYTES} random bytes, base64 or base64url encoded "
            f"(it decodes to {len(key)} bytes)"
        )
    return key


def key_id(key: bytes) -> str:
    """A short public name for a key, so a replica knows which key sealed a token."""
    digest = hashlib.sha256(b"hoopgw token key\0" + key).digest()
    return base64.urlsafe_b64encode(digest[:9]).decode()


class TokenKind(StrEnum):
    SESSION = "session"
    MASTER = "master"


class TokenError(ValueError):
    """A token the gateway did not mint, or that was altered; never carries token text."""


@dataclass(frozen=True, slots=True)
class SealedSession:
    """What one gateway token stands for.

    `upstream_token` is Snowflake's session token in a session token and
    Snowflake's master token in a master token; when Snowflake issued no master
    token (`upstream_renews` false) the master token carries the upstream
    session token instead and the gateway renews locally.
    """

    kind: TokenKind
    session_id: str
    upstream_token: str
    caller: Caller
    context: SessionContext
    issued_at: int
    expires_at: int
    session_expires_at: int
    upstream_session_token: str | None = None
    upstream_renews: bool = True
    snowflake_session_id: int | str | None = None
    id_key: str | None = None
    """The id of the token key the session's query ids are bound under: the key
    current at its login, carried through renewals, so that rotating the token
    key never leaves a session's ids to be told apart by trial (addons/query_ids.py)."""

    def expired(self, now: float) -> bool:
        return now >= self.expires_at

    def as_payload(self) -> dict[str, Any]:
        return {
            "v": _PAYLOAD_VERSION,
            "kind": self.kind.value,
            "sid": self.session_id,
            "up": self.upstream_token,
            "ups": self.upstream_session_token,
            "renews": self.upstream_renews,
            "sfsid": self.snowflake_session_id,
            "qk": self.id_key,
            "iat": self.issued_at,
            "exp": self.expires_at,
            "sexp": self.session_expires_at,
            "caller": self.caller.as_record(),
            "ctx": {
                "database": self.context.database,
                "schema": self.context.schema,
                "warehouse": self.context.warehouse,
                "role": self.context.role,
            },
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> SealedSession:
        if payload.get("v") != _PAYLOAD_VERSION:
            raise TokenError("the token has an unknown format version")
        try:
            caller = payload["caller"]
            ctx_fields = payload["ctx"]
            return cls(
                kind=TokenKind(payload["kind"]),
                session_id=str(payload["sid"]),
                upstream_token=str(payload["up"]),
                upstream_session_token=payload.get("ups"),
                upstream_renews=bool(payload.get("renews", True)),
                snowflake_session_id=payload.get("sfsid"),
                id_key=payload["qk"] if isinstance(payload.get("qk"), str) else None,
                issued_at=int(payload["iat"]),
                expires_at=int(payload["exp"]),
                session_expires_at=int(payload["sexp"]),
                caller=Caller(
                    subject=str(caller["subject"]),
                    email=caller.get("email"),
                    groups=tuple(str(g) for g in caller.get("groups") or ()),
                    role=caller.get("role"),
                    issuer=caller.get("issuer"),
                ),
                context=SessionContext(
                    database=ctx_fields.get("database"),
                    schema=ctx_fields.get("schema"),
                    warehouse=ctx_fields.get("warehouse"),
                    role=ctx_fields.get("role"),
                ),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            raise TokenError("the token's content is incomplete") from None


class TokenSealer:
    """Seals with the current key; opens with the current key or any previous one (rotation)."""

    def __init__(self, key: bytes, previous_keys: Sequence[bytes] = ()) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"a token key is {KEY_BYTES} bytes")
        self._current_id = key_id(key)
        self._keys: dict[str, OctKey] = {}
        for material in (key, *previous_keys):
            self._keys.setdefault(key_id(material), OctKey.import_key(material))
        self._open_cached = functools.lru_cache(maxsize=_OPENED_CACHE_SIZE)(self._open)

    def seal(self, session: SealedSession) -> str:
        header = {**_PROTECTED_HEADER, "kid": self._current_id}
        plaintext = orjson.dumps(session.as_payload())
        sealed = jwe.encrypt_compact(header, plaintext, self._keys[self._current_id], _ALGORITHMS)
        return TOKEN_PREFIX + sealed

    def open(self, token: str) -> SealedSession:
        """Decrypt and authenticate a token; expiry, kind and revocation are the caller's checks.

        Every statement presents its session token again, and decrypting it was a
        fourteenth of the gateway's CPU per statement; a token that opened is
        remembered by its exact text (any other spelling decrypts anew, a refusal
        is never remembered), and a new sealer (new keys) starts empty.
        """
        return self._open_cached(token)

    def _open(self, token: str) -> SealedSession:
        if not token.startswith(TOKEN_PREFIX):
            raise TokenError("the token was not issued by hoopgw")
        if len(token) > _MAX_TOKEN_CHARS:
            raise TokenError("the token is too long")
        compact = token[len(TOKEN_PREFIX) :]
        if not _canonical_compact(compact):
            raise TokenError("the token is malformed")
        try:
            header = jwe.extract_compact(compact.encode(), jwe.default_registry).protected
        except (JoseError, ValueError, UnicodeError):
            raise TokenError("the token is malformed") from None
        key = self._keys.get(str(header.get("kid")))
        if key is None:
            raise TokenError("the token was sealed with a key this gateway does not hold")
        try:
            opened = jwe.decrypt_compact(compact, key, _ALGORITHMS)
            payload = orjson.loads(opened.plaintext or b"")
        except (JoseError, ValueError, orjson.JSONDecodeError):
            raise TokenError("the token does not verify") from None
        if not isinstance(payload, dict):
            raise TokenError("the token's content is incomplete")
        return SealedSession.from_payload(payload)


_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


def _canonical_compact(compact: str) -> bool:
    """Five base64url parts, each in its one canonical spelling.

    base64 ignores the spare low bits of a part's last character, so without
    this check a token with one of those bits flipped would still open: the
    same token under another spelling. Refusing every other spelling means a
    token altered by even one bit is refused.
    """
    parts = compact.split(".")
    if len(parts) != 5:
        return False
    for part in parts:
        if not _BASE64URL.fullmatch(part) or len(part) % 4 == 1:
            return False
        decoded = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        if base64.urlsafe_b64encode(decoded).rstrip(b"=").decode() != part:
            return False
    return True


class RevocationList:
    """Sessions logged out through this replica, remembered until their tokens expire.

    Expired entries are dropped whenever the list has doubled since the last
    sweep, so it holds about the sessions whose tokens still live. Bounded: past
    `capacity` entries the ones expiring soonest are forgotten first (and a
    warning is logged), so memory stays fixed under any load.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._until: dict[str, float] = {}
        self._sweep_at = _REVOCATION_SWEEP_FLOOR

    def __len__(self) -> int:
        return len(self._until)

    def revoke(self, session_id: str, until: float, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if until <= now:
            return
        self._until[session_id] = max(until, self._until.get(session_id, 0.0))
        if len(self._until) >= self._sweep_at or len(self._until) > self.capacity:
            self._purge(now)
            self._sweep_at = max(_REVOCATION_SWEEP_FLOOR, 2 * len(self._until))
        if len(self._until) > self.capacity:
            overflow = len(self._until) - self.capacity
            for stale in sorted(self._until, key=self._until.__getitem__)[:overflow]:
                del self._until[stale]
            logger.warning(
                "hoopgw: revocation list full (%d sessions); forgot the %d expiring soonest",
                self.capacity,
                overflow,
            )

    def is_revoked(self, session_id: str, now: float | None = None) -> bool:
        until = self._until.get(session_id)
        if until is None:
            return False
        if until <= (time.time() if now is None else now):
            del self._until[session_id]
            return False
        return True

    def _purge(self, now: float) -> None:
        for session_id in [sid for sid, until in self._until.items() if until <= now]:
            del self._until[session_id]


class SessionTokens:
    """Owns the token key, the token lifetimes and this replica's revocation list."""

    def __init__(self) -> None:
        self.key_material: tuple[bytes, ...] = (os.urandom(KEY_BYTES),)
        """The token keys, current first: other secrets derive from them (query ids)."""
        self.sealer = TokenSealer(self.key_material[0])
        self.revoked = RevocationList()
        self.session_lifetime = 3600
        self.master_lifetime = 4 * 3600
        self.shared_key = False

    @property
    def current_key_id(self) -> str:
        """The id of the key new tokens are sealed with, and new sessions' query ids bound under."""
        return key_id(self.key_material[0])

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "hoopgw_token_key",
            str | None,  # type: ignore[arg-type]
            None,
            """
            Secret reference (env:NAME, file:/path or aws-secretsmanager:ID) to the
            key that seals the session and master tokens the gateway gives
            clients: 32 random bytes, base64 or base64url encoded (make one with
            `hoopgw token-key`). Every replica behind one address needs the same
            key. Unset: a random per-process key, so sessions end with the
            process and replicas cannot open each other's tokens.
            """,
        )
        loader.add_option(
            "hoopgw_token_previous_keys",
            Sequence[str],
            [],
            """
            Secret references to earlier token keys that may still open tokens
            but never seal new ones. During a key rotation list the old key here
            until the longest token lifetime has passed, then drop it.
            """,
        )
        loader.add_option(
            "hoopgw_session_token_lifetime",
            int,
            self.session_lifetime,
            """
            Seconds a gateway session token is valid (capped by Snowflake's own
            validity). Drivers renew it with the master token when it expires,
            so a short lifetime costs one renewal and bounds how long a token
            logged out through another replica stays usable.
            """,
        )
        loader.add_option(
            "hoopgw_master_token_lifetime",
            int,
            self.master_lifetime,
            """
            Seconds a gateway master token is valid (capped by Snowflake's own
            validity): the longest a login session lasts before the caller must
            present a fresh OIDC token.
            """,
        )

    def configure(self, updated: set[str]) -> None:
        if "hoopgw_session_token_lifetime" in updated:
            self.session_lifetime = _positive(
                "hoopgw_session_token_lifetime", ctx.options.hoopgw_session_token_lifetime
            )
        if "hoopgw_master_token_lifetime" in updated:
            self.master_lifetime = _positive(
                "hoopgw_master_token_lifetime", ctx.options.hoopgw_master_token_lifetime
            )
        if updated & {"hoopgw_token_key", "hoopgw_token_previous_keys"}:
            self._configure_keys()

    def _configure_keys(self) -> None:
        previous = [
            _read_key("hoopgw_token_previous_keys", ref)
            for ref in ctx.options.hoopgw_token_previous_keys
            if ref.strip()  # `--set hoopgw_token_previous_keys=` ends a rotation
        ]
        ref = ctx.options.hoopgw_token_key
        if ref:
            current = _read_key("hoopgw_token_key", ref)
            self.sealer = TokenSealer(current, previous)
            self.key_material = (current, *previous)
            self.shared_key = True
            return
        if previous:
            raise exceptions.OptionsError(
                "hoopgw_token_previous_keys is set but hoopgw_token_key is not; "
                "set the current key too"
            )
        self.key_material = (os.urandom(KEY_BYTES),)
        self.sealer = TokenSealer(self.key_material[0])
        self.shared_key = False
        logger.warning(
            "hoopgw: hoopgw_token_key is unset, so session tokens are sealed with a "
            "per-process key: sessions end when this process stops and gateway replicas "
            "will not share sessions (make a key with `hoopgw token-key`)"
        )


def _read_key(option: str, ref: str) -> bytes:
    """Resolve and decode a key reference, naming the option (never the key) on failure."""
    try:
        return decode_token_key(resolve_option_secret(option, ref))
    except ValueError as exc:
        raise exceptions.OptionsError(f"{option}: {ref}: {exc}") from None


def _positive(option: str, value: int) -> int:
    if value <= 0:
        raise exceptions.OptionsError(f"{option} must be a positive number of seconds, got {value}")
    return value
