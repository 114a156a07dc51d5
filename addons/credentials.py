"""The Snowflake credential only the gateway holds, and what it puts on the wire.

Upstream sees this credential and nothing of the caller's: a key-pair JWT
(preferred: short-lived, minted per login), a password, or an OAuth access
token. Each is read through a secret reference (recorder/secrets.py) when the
options are set and kept in memory only; reprs and error messages never show it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from joserfc import jwt
from joserfc.jwk import RSAKey
from mitmproxy import ctx, exceptions
from mitmproxy.addonmanager import Loader

from hoopgw.addons.flowstate import UpstreamLogin
from hoopgw.recorder.secrets import SecretError, parse_secret_ref, resolve_secret
from hoopgw.recorder.upstream_users import load_private_key, public_key_fingerprint

logger = logging.getLogger(__name__)

KEYPAIR_JWT_LIFETIME = 60
"""Seconds a key-pair JWT is valid: Snowflake accepts at most an hour; one login needs a minute."""

_CREDENTIAL_OPTIONS = (
    "hoopgw_upstream_private_key",
    "hoopgw_upstream_password",
    "hoopgw_upstream_oauth_token",
)


def resolve_option_secret(option: str, ref: str) -> bytes:
    """Read the secret an option references; failures name the option, never the value.

    A malformed reference is reported without its text, since a mistaken
    operator may have put the secret itself in the option.
    """
    try:
        parsed = parse_secret_ref(ref)
    except SecretError:
        raise exceptions.OptionsError(
            f"{option} is not a secret reference; use env:NAME, file:/path "
            "or aws-secretsmanager:NAME_OR_ARN"
        ) from None
    try:
        return resolve_secret(parsed)
    except SecretError as exc:
        raise exceptions.OptionsError(f"{option}: {exc}") from None


def snowflake_account_identifier(account: str) -> str:
    """The account part of key-pair JWT claims, normalised the way Snowflake expects.

    The locator is uppercased without region or cloud suffix: the text before
    the first `.`, or for `xxx-yyy.global` accounts the text before the first `-`.
    """
    separator = "-" if ".global" in account else "."
    return account.partition(separator)[0].upper()


def keypair_jwt(
    account: str,
    user: str,
    private_key: RSAPrivateKey,
    now: float | None = None,
    lifetime: int = KEYPAIR_JWT_LIFETIME,
    fingerprint: str | None = None,
) -> str:
    """A key-pair authentication JWT (RS256) as Snowflake documents it."""
    if not 0 < lifetime <= 3600:
        raise ValueError("a key-pair JWT may live at most one hour")
    issued = int(time.time() if now is None else now)
    qualified_user = f"{snowflake_account_identifier(account)}.{user.upper()}"
    claims = {
        "iss": f"{qualified_user}.{fingerprint or public_key_fingerprint(private_key)}",
        "sub": qualified_user,
        "iat": issued,
        "exp": issued + lifetime,
    }
    return jwt.encode({"alg": "RS256"}, claims, RSAKey.import_key(private_key), ["RS256"])


class UpstreamCredential(Protocol):
    """How the gateway authenticates to Snowflake."""

    kind: str
    authenticator: str
    """The login's AUTHENTICATOR, as the session_start record names it."""

    def login_fields(self, account: str, user: str) -> dict[str, Any]:
        """The login-request `data` fields that carry the credential."""
        ...

    def sql_api_authorization(self, account: str, user: str) -> tuple[str, str] | None:
        """(`Authorization` value, token type) for the SQL API; None when unsupported."""
        ...


class KeyPairCredential:
    kind = "key-pair"
    authenticator = "SNOWFLAKE_JWT"

    def __init__(self, private_key: RSAPrivateKey) -> None:
        self._private_key = private_key
        self.fingerprint = public_key_fingerprint(private_key)

    def __repr__(self) -> str:
        return f"KeyPairCredential(fingerprint={self.fingerprint!r})"

    def jwt(self, account: str, user: str) -> str:
        return keypair_jwt(account, user, self._private_key, fingerprint=self.fingerprint)

    def login_fields(self, account: str, user: str) -> dict[str, Any]:
        return {"AUTHENTICATOR": self.authenticator, "TOKEN": self.jwt(account, user)}

    def sql_api_authorization(self, account: str, user: str) -> tuple[str, str] | None:
        return f"Bearer {self.jwt(account, user)}", "KEYPAIR_JWT"


@dataclass(frozen=True)
class PasswordCredential:
    password: str = field(repr=False)
    kind: str = "password"
    authenticator: str = "SNOWFLAKE"

    def login_fields(self, account: str, user: str) -> dict[str, Any]:
        return {"AUTHENTICATOR": self.authenticator, "PASSWORD": self.password}

    def sql_api_authorization(self, account: str, user: str) -> tuple[str, str] | None:
        return None


@dataclass(frozen=True)
class OAuthCredential:
    token: str = field(repr=False)
    kind: str = "oauth"
    authenticator: str = "OAUTH"

    def login_fields(self, account: str, user: str) -> dict[str, Any]:
        return {"AUTHENTICATOR": self.authenticator, "TOKEN": self.token}

    def sql_api_authorization(self, account: str, user: str) -> tuple[str, str] | None:
        return f"Bearer {self.token}", "OAUTH"


class UpstreamCredentials:
    """Declares and reads the gateway's Snowflake account, user and credential."""

    def __init__(self) -> None:
        self.account: str | None = None
        self.user: str | None = None
        self.credential: UpstreamCredential | None = None

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "hoopgw_upstream_account",
            str | None,  # type: ignore[arg-type]
            None,
            """
            The Snowflake account the gateway logs in to, as a driver's `account`
            parameter takes it (e.g. `xy12345`, `xy12345.eu-west-1` or
            `myorg-myaccount`). It replaces the ACCOUNT_NAME clients send.
            """,
        )
        loader.add_option(
            "hoopgw_upstream_user",
            str | None,  # type: ignore[arg-type]
            None,
            """
            The Snowflake user the gateway logs in as (a service user that holds
            the roles of hoopgw_role_map). It replaces the LOGIN_NAME clients send.
            With hoopgw_upstream_user_map, the user for callers the map does not
            name is only what its `*=USER` entry says.
            """,
        )
        loader.add_option(
            "hoopgw_upstream_private_key",
            str | None,  # type: ignore[arg-type]
            None,
            """
            Secret reference (env:NAME, file:/path or aws-secretsmanager:ID) to
            the RSA private key (PEM or base64 DER) registered on the upstream
            user with ALTER USER ... SET RSA_PUBLIC_KEY. The gateway logs in
            with short-lived key-pair JWTs; the preferred credential.
            """,
        )
        loader.add_option(
            "hoopgw_upstream_private_key_passphrase",
            str | None,  # type: ignore[arg-type]
            None,
            """
            Secret reference to the passphrase of an encrypted
            hoopgw_upstream_private_key; unset for an unencrypted key.
            """,
        )
        loader.add_option(
            "hoopgw_upstream_password",
            str | None,  # type: ignore[arg-type]
            None,
            """
            Secret reference (env:NAME, file:/path or aws-secretsmanager:ID) to
            the upstream user's password, for accounts where key-pair login is
            not possible. The SQL API cannot be used with a password.
            """,
        )
        loader.add_option(
            "hoopgw_upstream_oauth_token",
            str | None,  # type: ignore[arg-type]
            None,
            """
            Secret reference to an OAuth access token the gateway presents to
            Snowflake (AUTHENTICATOR=OAUTH). The reference is read when the
            option is set; rotate the token by setting the option again.
            """,
        )

    def configure(self, updated: set[str]) -> None:
        if "hoopgw_upstream_account" in updated:
            self.account = _identifier(
                "hoopgw_upstream_account", ctx.options.hoopgw_upstream_account
            )
        if "hoopgw_upstream_user" in updated:
            self.user = _identifier("hoopgw_upstream_user", ctx.options.hoopgw_upstream_user)
        if updated & {*_CREDENTIAL_OPTIONS, "hoopgw_upstream_private_key_passphrase"}:
            self.credential = self._read_credential()

    @property
    def configured(self) -> bool:
        return self.credential is not None

    def missing(self) -> list[str]:
        """Options that must still be set before the gateway can log in upstream."""
        needed = []
        if self.credential is None:
            needed.append(" or ".join(_CREDENTIAL_OPTIONS))
        if not self.account:
            needed.append("hoopgw_upstream_account")
        if not self.user:
            needed.append("hoopgw_upstream_user")
        return needed

    def upstream_login(self, user: str | None = None) -> UpstreamLogin:
        """Who the gateway logs in as: what the login's session_start record names.

        `user` is the caller's mapped Snowflake user (hoopgw_upstream_user_map);
        None is the shared hoopgw_upstream_user.
        """
        account, user, credential = self._login_as(user)
        return UpstreamLogin(account, user, credential.authenticator)

    def login_fields(self, user: str | None = None) -> dict[str, Any]:
        """ACCOUNT_NAME, LOGIN_NAME and the credential fields of an upstream login."""
        account, user, credential = self._login_as(user)
        return {
            "ACCOUNT_NAME": account,
            "LOGIN_NAME": user,
            **credential.login_fields(account, user),
        }

    def sql_api_authorization(self, user: str | None = None) -> tuple[str, str] | None:
        if self.credential is None or not self.account or not (user or self.user):
            return None
        account, user, credential = self._login_as(user)
        return credential.sql_api_authorization(account, user)

    @property
    def signs_for_any_user(self) -> bool:
        """A key-pair credential signs in as any user that carries its public key; others cannot."""
        return isinstance(self.credential, KeyPairCredential)

    def _login_as(self, user: str | None) -> tuple[str, str, UpstreamCredential]:
        if self.credential is None or not self.account or not (user or self.user):
            raise RuntimeError("the upstream credential is not configured")
        if user is not None and not self.signs_for_any_user:
            raise RuntimeError(f"a {self.credential.kind} credential signs in only as one user")
        return self.account, user or self.user or "", self.credential

    @staticmethod
    def _read_credential() -> UpstreamCredential | None:
        chosen = [name for name in _CREDENTIAL_OPTIONS if getattr(ctx.options, name)]
        if len(chosen) > 1:
            raise exceptions.OptionsError(
                f"set only one upstream credential, not {' and '.join(chosen)}"
            )
        passphrase_ref = ctx.options.hoopgw_upstream_private_key_passphrase
        if passphrase_ref and chosen != ["hoopgw_upstream_private_key"]:
            raise exceptions.OptionsError(
                "hoopgw_upstream_private_key_passphrase is set without hoopgw_upstream_private_key"
            )
        if not chosen:
            return None
        option = chosen[0]
        secret = resolve_option_secret(option, getattr(ctx.options, option))
        if option == "hoopgw_upstream_private_key":
            passphrase = (
                resolve_option_secret("hoopgw_upstream_private_key_passphrase", passphrase_ref)
                if passphrase_ref
                else None
            )
            try:
                return KeyPairCredential(load_private_key(secret, passphrase))
            except ValueError as exc:
                raise exceptions.OptionsError(f"{option}: {exc}") from None
        text = _text_secret(option, secret)
        if option == "hoopgw_upstream_password":
            return PasswordCredential(text)
        return OAuthCredential(text)


def _text_secret(option: str, secret: bytes) -> str:
    try:
        return secret.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise exceptions.OptionsError(f"{option}: the secret is not UTF-8 text") from None


def _identifier(option: str, value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    value = value.strip()
    if any(ch.isspace() or ch in "\"'" for ch in value):
        raise exceptions.OptionsError(f"{option}: {value!r} is not a Snowflake identifier")
    return value
