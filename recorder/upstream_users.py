"""The Snowflake users the gateway signs in as, and the one key it signs with.

Plain functions shared by the gateway (addons/identity.py, addons/credentials.py)
and `hoopgw upstream-keys`, so the command names the same users and the same key
fingerprint the gateway uses at login, without importing the mitmproxy side.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

MAX_SNOWFLAKE_USER_CHARS = 255
_USER_NAME_SEPARATORS = str.maketrans({"@": "_", ".": "_", "-": "_", "+": "_"})
_USER_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_$")


def snowflake_user_name(value: str) -> str:
    """A claim's value as an unquoted Snowflake user name; raises ValueError saying why not.

    Upper-cased; `@`, `.`, `-` and `+` become `_`; every other character outside
    `A-Z`, `0-9`, `_` and `$` is dropped (so `ada.lovelace@example.com` is
    `ADA_LOVELACE_EXAMPLE_COM`). The result must start with a letter or `_` and
    be at most 255 characters: an unquoted identifier Snowflake accepts as is.
    """
    name = "".join(
        ch
        for ch in value.strip().upper().translate(_USER_NAME_SEPARATORS)
        if ch in _USER_NAME_CHARS
    )
    if not name:
        raise ValueError("leaves no character of a Snowflake user name")
    if not (name[0].isalpha() or name[0] == "_"):
        raise ValueError("does not start with a letter or underscore")
    if len(name) > MAX_SNOWFLAKE_USER_CHARS:
        raise ValueError(f"is longer than {MAX_SNOWFLAKE_USER_CHARS} characters")
    return name


def _is_plain_user_name(name: str) -> bool:
    return (
        bool(name)
        and (name[0].isalpha() or name[0] == "_")
        and all(ch.isascii() and (ch.isalnum() or ch in "_$") for ch in name)
    )


@dataclass(frozen=True, slots=True)
class UserRule:
    """One entry of the user map: a claim to read the user from, or a group's (or anyone's) user."""

    claim: str | None = None
    group: str | None = None
    user: str | None = None

    def __str__(self) -> str:
        if self.claim is not None:
            return f"claim:{self.claim}"
        return f"{self.group or '*'}={self.user}"


def parse_user_map(entries: Iterable[str]) -> tuple[UserRule, ...]:
    """Parse `claim:NAME`, `group=USER` and `*=USER` entries; raises ValueError naming the entry.

    Blank entries are skipped. `*=USER` (anyone else) must come last: entries
    after it could never apply.
    """
    rules: list[UserRule] = []
    for entry in entries:
        if not entry.strip():
            continue
        if rules and rules[-1].claim is None and rules[-1].group is None:
            raise ValueError(f"{entry!r} comes after the fallback '*=USER', which must be last")
        if entry.strip().startswith("claim:"):
            claim = entry.strip().removeprefix("claim:").strip()
            if not claim or "=" in claim:
                raise ValueError(f"{entry!r} is not claim:NAME")
            rules.append(UserRule(claim=claim))
            continue
        group, sep, user = (part.strip() for part in entry.partition("="))
        if not sep or not group or not user:
            raise ValueError(f"{entry!r} is not claim:NAME, group=USER or *=USER")
        if not _is_plain_user_name(user):
            raise ValueError(f"{entry!r}: {user!r} is not an unquoted Snowflake user name")
        rules.append(UserRule(group=None if group == "*" else group, user=user.upper()))
    return tuple(rules)


def public_key_fingerprint(private_key: RSAPrivateKey) -> str:
    """`SHA256:<base64 of the SHA-256 of the DER SubjectPublicKeyInfo>`, as Snowflake shows it."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(_public_der(private_key)).digest()).decode()


def public_key_body(private_key: RSAPrivateKey) -> str:
    """The public key as Snowflake's RSA_PUBLIC_KEY takes it: base64 DER, no PEM lines."""
    return base64.b64encode(_public_der(private_key)).decode()


def _public_der(private_key: RSAPrivateKey) -> bytes:
    return private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_private_key(data: bytes, passphrase: bytes | None = None) -> RSAPrivateKey:
    """An RSA private key from PEM (PKCS#8 or PKCS#1, optionally encrypted) or base64 DER."""
    stripped = data.strip()
    try:
        if stripped.startswith(b"-----BEGIN"):
            key = serialization.load_pem_private_key(stripped, passphrase)
        else:
            try:
                der = base64.b64decode(b"".join(stripped.split()), validate=True)
            except (binascii.Error, ValueError):
                der = stripped
            key = serialization.load_der_private_key(der, passphrase)
    except TypeError as exc:
        raise ValueError(
            "the private key is encrypted and needs hoopgw_upstream_private_key_passphrase"
            if "encrypted" in str(exc).lower() and passphrase is None
            else "the passphrase does not fit the private key"
        ) from None
    except ValueError:
        raise ValueError(
            "not a readable private key (PEM, or base64 DER; a wrong passphrase fails too)"
        ) from None
    if not isinstance(key, RSAPrivateKey):
        raise ValueError(f"a key-pair login needs an RSA key, not {type(key).__name__}")
    if key.key_size < 2048:
        raise ValueError(f"the RSA key has {key.key_size} bits; Snowflake requires 2048 or more")
    return key
