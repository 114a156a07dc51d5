"""Who the caller is: OIDC token verification, allowed groups and the group-to-role map.

A caller proves identity with an ID token (a JWT) from the company's identity
provider. The gateway finds the provider's signing keys through OIDC discovery,
caches them, and accepts a token only if its signature verifies with a key the
provider publishes (algorithm pinned to that key's type: never `none`, never
HMAC), it was issued by the configured issuer for the configured audience, it
is within its validity window (with a small clock leeway), and its groups claim
names an allowed group. The Snowflake role follows from the role map.

Every refusal is an `IdentityError` whose message names the reason in words
the caller can act on and never repeats the token or its claims.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import (
    BadSignatureError,
    ExpiredTokenError,
    InvalidClaimError,
    JoseError,
    MissingClaimError,
)
from joserfc.jwk import ECKey, KeySet, OKPKey, RSAKey
from mitmproxy import ctx, exceptions
from mitmproxy.addonmanager import Loader

from hoopgw.recorder.upstream_users import UserRule, parse_user_map, snowflake_user_name

logger = logging.getLogger(__name__)

CLOCK_LEEWAY_SECONDS = 60
JWKS_TTL_SECONDS = 3600
JWKS_MAX_AGE_SECONDS = 24 * 3600
REFETCH_INTERVAL_SECONDS = 30
FETCH_TIMEOUT_SECONDS = 5
_MAX_DOCUMENT_BYTES = 1024 * 1024
_MAX_TOKEN_CHARS = 16 * 1024

_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_OKP_ALGORITHMS = {"Ed25519": frozenset({"EdDSA", "Ed25519"})}

FetchJson = Callable[[str], Awaitable[dict[str, Any]]]


class IdentityError(Exception):
    """A refused caller; the message is safe to show the caller and to record."""


class IdentityUnavailable(IdentityError):
    """The identity provider could not be reached to verify a token."""


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    claims: dict[str, Any]
    subject: str
    email: str | None


@dataclass(frozen=True, slots=True)
class RoleRule:
    group: str
    role: str
    warehouse: str | None = None

    def __str__(self) -> str:
        return f"{self.group}={self.role}" + (f":{self.warehouse}" if self.warehouse else "")


@dataclass(frozen=True, slots=True)
class Grant:
    """What a verified caller may do: the groups that admitted them and the role to use."""

    groups: tuple[str, ...]
    role: str | None
    warehouse: str | None
    upstream_user: str | None = None
    """The Snowflake user the gateway signs in as for this caller; None: the shared user."""


class UserMap:
    """Which Snowflake user the gateway signs in as for a caller: the first entry that names one.

    Without entries every caller gets the shared `hoopgw_upstream_user`; with
    entries, a caller no entry names a user for is refused (the shared user is
    a fallback only where the operator writes `*=USER`).
    """

    def __init__(self, rules: Sequence[UserRule]) -> None:
        self.rules = tuple(rules)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def fixed_users(self) -> tuple[str, ...]:
        """The users the map names outright (group and fallback entries), in order."""
        return tuple(dict.fromkeys(rule.user for rule in self.rules if rule.user))

    def user_for(self, claims: dict[str, Any], groups: Sequence[str]) -> str:
        """The caller's Snowflake user; raises IdentityError when no entry yields one."""
        unusable: list[str] = []
        for rule in self.rules:
            if rule.claim is not None:
                value = claims.get(rule.claim)
                if not isinstance(value, str) or not value.strip():
                    continue
                try:
                    return snowflake_user_name(value)
                except ValueError as exc:
                    unusable.append(f"the token's {rule.claim!r} claim {exc}")
            elif rule.group is None or rule.group in groups:
                assert rule.user is not None
                return rule.user
        reason = "no Snowflake user is mapped to you (hoopgw_upstream_user_map)"
        raise IdentityError(f"{reason}: {'; '.join(unusable)}" if unusable else reason)


def parse_role_map(entries: Iterable[str]) -> tuple[RoleRule, ...]:
    """Parse `group=ROLE` / `group=ROLE:WAREHOUSE` entries; raises ValueError naming the entry.

    Blank entries are skipped, so `--set hoopgw_role_map=` clears the map.
    """
    rules = []
    for entry in entries:
        if not entry.strip():
            continue
        group, sep, target = entry.partition("=")
        role, _, warehouse = target.partition(":")
        group, role, warehouse = group.strip(), role.strip(), warehouse.strip()
        if not sep or not group or not role or (":" in target and not warehouse):
            raise ValueError(f"{entry!r} is not group=ROLE or group=ROLE:WAREHOUSE")
        for name in (role, warehouse):
            if name and not _is_snowflake_name(name):
                raise ValueError(f"{entry!r}: {name!r} is not a Snowflake identifier")
        rules.append(RoleRule(group, role, warehouse or None))
    return tuple(rules)


def _is_snowflake_name(name: str) -> bool:
    if len(name) >= 2 and name[0] == name[-1] == '"':
        return '"' not in name[1:-1]
    return all(ch.isalnum() or ch in "_$" for ch in name)


def same_role(a: str, b: str) -> bool:
    """Snowflake compares unquoted identifiers case-insensitively."""
    return _canonical(a) == _canonical(b)


def _canonical(name: str) -> str:
    name = name.strip()
    if len(name) >= 2 and name[0] == name[-1] == '"':
        return name[1:-1]
    return name.upper()


class AccessPolicy:
    """Allowed groups and the role map: which verified callers get in, with which role.

    Allowed groups default to the groups of the role map. With a role map, a
    caller whose groups match no rule is refused; without one, the caller gets
    the upstream user's default role. A requested role may only narrow the
    choice to another role the caller's groups map to.
    """

    def __init__(self, allowed_groups: Sequence[str], rules: Sequence[RoleRule]) -> None:
        self.rules = tuple(rules)
        self.allowed = frozenset(allowed_groups) or frozenset(r.group for r in self.rules)

    def decide(self, groups: Sequence[str], requested_role: str | None = None) -> Grant:
        admitted = tuple(g for g in groups if g in self.allowed)
        if not admitted:
            raise IdentityError("you are not in a group allowed to use this gateway")
        entitled = [rule for rule in self.rules if rule.group in admitted]
        if not self.rules:
            if requested_role:
                raise IdentityError(
                    f"role {requested_role} is not granted through this gateway; "
                    "connect without a role"
                )
            return Grant(admitted, None, None)
        if not entitled:
            raise IdentityError("no Snowflake role is mapped to your groups (hoopgw_role_map)")
        if not requested_role:
            chosen = entitled[0]
        else:
            matching = [rule for rule in entitled if same_role(rule.role, requested_role)]
            if not matching:
                roles = ", ".join(dict.fromkeys(rule.role for rule in entitled))
                raise IdentityError(
                    f"role {requested_role} is not granted to you; your roles: {roles}"
                )
            chosen = matching[0]
        return Grant(admitted, chosen.role, chosen.warehouse)


def groups_from(claims: dict[str, Any], claim: str) -> tuple[str, ...]:
    """The caller's groups from `claim` (a list or a single string; dotted paths for nesting)."""
    value: Any = claims.get(claim)
    if value is None and "." in claim:
        value = claims
        for part in claim.split("."):
            value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        raise IdentityError(f"the token has no {claim!r} claim")
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(g, str) for g in value):
        return tuple(value)
    raise IdentityError(f"the token's {claim!r} claim is not a list of group names")


def is_loopback_url(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_provider_url(url: str, what: str) -> None:
    """Only https, or http on loopback (local identity providers in tests and demos)."""
    parsed = urllib.parse.urlsplit(url)
    if not parsed.hostname or parsed.scheme not in ("https", "http"):
        raise ValueError(f"{what} {url!r} is not an http(s) URL")
    if parsed.scheme == "http" and not is_loopback_url(url):
        raise ValueError(f"{what} {url!r} must use https (plain http only on loopback)")


def algorithms_for(key: RSAKey | ECKey | OKPKey) -> frozenset[str]:
    """The signature algorithms a public key may verify; pinned by the key's type."""
    declared = key.get("alg")
    if isinstance(key, RSAKey):
        allowed = _RSA_ALGORITHMS
    elif isinstance(key, ECKey):
        curve = _EC_ALGORITHMS.get(str(key.get("crv")))
        allowed = frozenset({curve}) if curve else frozenset()
    elif isinstance(key, OKPKey):
        allowed = _OKP_ALGORITHMS.get(str(key.get("crv")), frozenset())
    else:
        allowed = frozenset()
    if declared:
        return allowed & {str(declared)}
    return allowed


def _fetch_json_blocking(url: str) -> dict[str, Any]:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_SECONDS) as answer:
            body = answer.read(_MAX_DOCUMENT_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise IdentityUnavailable(f"the identity provider answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise IdentityUnavailable(f"the identity provider is unreachable ({reason})") from None
    if len(body) > _MAX_DOCUMENT_BYTES:
        raise IdentityUnavailable("the identity provider's document is too large")
    try:
        document = json.loads(body)
    except ValueError:
        raise IdentityUnavailable("the identity provider's document is not JSON") from None
    if not isinstance(document, dict):
        raise IdentityUnavailable("the identity provider's document is not a JSON object")
    return document


async def fetch_json(url: str) -> dict[str, Any]:
    """GET a JSON document in a worker thread: never on mitmproxy's event loop."""
    return await asyncio.to_thread(_fetch_json_blocking, url)


class OidcVerifier:
    """Verifies ID tokens of one issuer for one audience, with the issuer's cached JWKS.

    Keys are refetched after `jwks_ttl` seconds, and early (at most once per
    `refetch_interval`) for a token naming an unknown key id. When the provider
    cannot be reached, the cached keys stay trusted until `jwks_max_age`
    seconds after they were fetched; then logins are refused until it answers:
    a key the provider withdrew must not be trusted forever.
    """

    def __init__(
        self,
        issuer: str,
        audience: str,
        *,
        leeway: int = CLOCK_LEEWAY_SECONDS,
        jwks_ttl: float = JWKS_TTL_SECONDS,
        jwks_max_age: float = JWKS_MAX_AGE_SECONDS,
        refetch_interval: float = REFETCH_INTERVAL_SECONDS,
        fetch: FetchJson = fetch_json,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self.jwks_ttl = jwks_ttl
        self.jwks_max_age = max(jwks_max_age, jwks_ttl)
        self.refetch_interval = refetch_interval
        self._fetch = fetch
        self._clock = clock
        self._jwks_uri: str | None = None
        self._keys: list[RSAKey | ECKey | OKPKey] = []
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._generation = 0
        self._last_error: IdentityError | None = None
        self._lock = asyncio.Lock()

    async def warm(self) -> None:
        """Fetch discovery and keys ahead of the first login; failures only log."""
        try:
            await self._signing_keys(refresh=False)
        except IdentityError as exc:
            logger.warning("hoopgw: cannot load the identity provider's keys yet: %s", exc)

    async def verify(self, token: str) -> VerifiedToken:
        token = token.strip()
        if not token:
            raise IdentityError("no token was presented")
        if len(token) > _MAX_TOKEN_CHARS or token.count(".") != 2:
            raise IdentityError("the token is not a signed JWT")
        try:
            header = jws.extract_compact(token.encode()).protected
        except (JoseError, ValueError, UnicodeError):
            raise IdentityError("the token is not a signed JWT") from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm.lower() == "none":
            raise IdentityError("the token is not signed (algorithm none is not accepted)")
        if algorithm.upper().startswith("HS"):
            raise IdentityError(f"the token's algorithm {algorithm} is not accepted")
        kid = header.get("kid")
        keys = self._candidates(await self._signing_keys(refresh=False), kid, algorithm)
        if not keys and kid is not None:
            keys = self._candidates(await self._signing_keys(refresh=True), kid, algorithm)
            if not keys and self._last_error is not None:
                # the provider may publish the key, but it cannot be asked now
                raise self._fetch_failure()
        if not keys:
            raise IdentityError(
                "the token is signed with a key the identity provider does not publish"
            )
        pinned = [key for key in keys if algorithm in algorithms_for(key)]
        if not pinned:
            raise IdentityError(
                f"the token's algorithm {algorithm} does not match the identity provider's key"
            )
        decoded = None
        for key in pinned:
            try:
                decoded = jwt.decode(token, key, algorithms=[algorithm])
                break
            except BadSignatureError:
                continue
            except JoseError:
                raise IdentityError("the token is not a valid JWT") from None
        if decoded is None:
            raise IdentityError("the token's signature is not valid")
        claims = decoded.claims
        self._check_claims(claims)
        email = claims.get("email")
        return VerifiedToken(claims, claims["sub"], email if isinstance(email, str) else None)

    def _check_claims(self, claims: dict[str, Any]) -> None:
        registry = jwt.JWTClaimsRegistry(
            leeway=self.leeway,
            iss={"essential": True, "value": self.issuer},
            aud={"essential": True, "value": self.audience},
            exp={"essential": True},
            sub={"essential": True},
        )
        try:
            registry.validate(claims)
        except ExpiredTokenError:
            raise IdentityError("the token has expired") from None
        except MissingClaimError as exc:
            raise IdentityError(f"the token lacks required claims: {exc.claim}") from None
        except InvalidClaimError as exc:
            reasons = {
                "iss": "the token was issued by a different identity provider (wrong issuer)",
                "aud": "the token is meant for a different audience (wrong audience)",
                "nbf": "the token is not valid yet",
                "iat": "the token is not valid yet (issued in the future)",
            }
            raise IdentityError(
                reasons.get(exc.claim, f"the token's {exc.claim} claim is invalid")
            ) from None

    @staticmethod
    def _candidates(
        keys: list[RSAKey | ECKey | OKPKey], kid: object, algorithm: str
    ) -> list[RSAKey | ECKey | OKPKey]:
        if kid is not None:
            return [key for key in keys if key.kid == kid]
        return [key for key in keys if algorithm in algorithms_for(key)]

    async def _signing_keys(self, refresh: bool) -> list[RSAKey | ECKey | OKPKey]:
        """The provider's keys: cached for the TTL; refetched early at most once per interval."""
        generation = self._generation
        if not self._needs_fetch(refresh):
            if self._lock.locked():
                async with self._lock:  # a fetch is under way (e.g. the warm-up): use its keys
                    pass
            return self._cached_keys()
        async with self._lock:
            if self._generation != generation or not self._needs_fetch(refresh):
                return self._cached_keys()
            self._attempted_at = self._clock()
            try:
                await self._fetch_keys()
                self._last_error = None
            except IdentityError as exc:
                self._last_error = exc
                keys = self._trusted_keys()
                if keys:
                    logger.warning(
                        "hoopgw: refreshing the identity provider's keys failed (%s); "
                        "keeping the cached ones for at most %.0f more seconds",
                        exc,
                        self._trust_left(),
                    )
                    return keys
                raise self._fetch_failure() from None
            return self._keys

    def _cached_keys(self) -> list[RSAKey | ECKey | OKPKey]:
        """The trusted cached keys; with none, why the last fetch failed (not a bogus 'no key')."""
        keys = self._trusted_keys()
        if not keys and self._last_error is not None:
            raise self._fetch_failure()
        return keys

    def _trusted_keys(self) -> list[RSAKey | ECKey | OKPKey]:
        return self._keys if self._trust_left() > 0 else []

    def _trust_left(self) -> float:
        """Seconds the cached keys stay trusted without a successful refresh."""
        if self._fetched_at is None:
            return 0.0
        return self._fetched_at + self.jwks_max_age - self._clock()

    def _fetch_failure(self) -> IdentityError:
        """A fresh copy of the last fetch error (re-raising one instance grows its traceback)."""
        error = self._last_error
        assert error is not None
        return type(error)(str(error))

    def _needs_fetch(self, refresh: bool) -> bool:
        now = self._clock()
        if self._attempted_at is not None and now - self._attempted_at < self.refetch_interval:
            return False
        if self._fetched_at is None:
            return True
        return refresh or now - self._fetched_at >= self.jwks_ttl

    async def _fetch_keys(self) -> None:
        if self._jwks_uri is None:
            discovery_url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
            document = await self._fetch(discovery_url)
            if document.get("issuer") != self.issuer:
                raise IdentityUnavailable(
                    "the identity provider's discovery document names a different issuer"
                )
            jwks_uri = document.get("jwks_uri")
            if not isinstance(jwks_uri, str):
                raise IdentityUnavailable("the identity provider's discovery has no jwks_uri")
            try:
                check_provider_url(jwks_uri, "jwks_uri")
            except ValueError as exc:
                raise IdentityUnavailable(str(exc)) from None
            self._jwks_uri = jwks_uri
        document = await self._fetch(self._jwks_uri)
        self._keys = _signing_keys_of(document)
        self._fetched_at = self._clock()
        self._generation += 1
        logger.info("hoopgw: loaded %d signing keys from the identity provider", len(self._keys))


def _signing_keys_of(document: dict[str, Any]) -> list[RSAKey | ECKey | OKPKey]:
    """Public signature keys of a JWKS; symmetric, private and encryption keys are ignored."""
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise IdentityUnavailable("the identity provider's JWKS has no keys")
    keys: list[RSAKey | ECKey | OKPKey] = []
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("kty") not in ("RSA", "EC", "OKP"):
            continue
        if entry.get("use", "sig") != "sig" or "d" in entry:
            continue
        try:
            imported = KeySet.import_key_set({"keys": [entry]}).keys[0]
        except (JoseError, ValueError, TypeError, KeyError):
            continue
        if isinstance(imported, RSAKey | ECKey | OKPKey):
            keys.append(imported)
    return keys


class Identity:
    """Declares the identity options and holds the verifier and the access policy."""

    def __init__(self) -> None:
        self.verifier: OidcVerifier | None = None
        self.policy = AccessPolicy((), ())
        self.groups_claim = "groups"
        self.accept_password_token = False
        self.user_map = UserMap(())

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "hoopgw_oidc_issuer",
            str | None,  # type: ignore[arg-type]
            None,
            """
            Issuer URL of the OIDC identity provider whose ID tokens callers
            present (exactly as in its tokens' `iss`; its discovery document is
            read from ISSUER/.well-known/openid-configuration). Unset: identity
            is not configured and every login is refused.
            """,
        )
        loader.add_option(
            "hoopgw_oidc_audience",
            str | None,  # type: ignore[arg-type]
            None,
            """
            The audience (`aud`) a token must be issued for: usually the client
            id of the gateway's application at the identity provider. Required
            with hoopgw_oidc_issuer.
            """,
        )
        loader.add_option(
            "hoopgw_oidc_groups_claim",
            str,
            "groups",
            """
            Name of the token claim that lists the caller's groups (a list of
            strings, or one string). A dotted name such as realm_access.roles
            reaches into nested claims when no claim has that exact name.
            """,
        )
        loader.add_option(
            "hoopgw_allowed_groups",
            Sequence[str],
            [],
            """
            Groups whose members may use the gateway; a caller in none of them is
            refused. Empty: the groups named in hoopgw_role_map.
            """,
        )
        loader.add_option(
            "hoopgw_role_map",
            Sequence[str],
            [],
            """
            Snowflake role (and optionally default warehouse) per group, as
            `group=ROLE` or `group=ROLE:WAREHOUSE`, in priority order: a caller
            gets the role of the first entry whose group they are in, and may
            ask for another mapped role of theirs at login (roleName), never
            for an unmapped one. Empty: callers get the upstream user's default
            role and may not ask for another.
            """,
        )
        loader.add_option(
            "hoopgw_upstream_user_map",
            Sequence[str],
            [],
            """
            The Snowflake user the gateway signs in as for each caller, in
            priority order: `claim:preferred_username` or `claim:email` (the
            claim's value made a Snowflake user name: upper-cased, @ . - + as _,
            other characters dropped), `group=USER`, and last `*=USER` for
            everyone else. A caller no entry names a user for is refused at
            login. Every user carries the gateway's public key (`hoopgw
            upstream-keys`); key-pair credential only. Empty: every caller
            signs in as hoopgw_upstream_user.
            """,
        )
        loader.add_option(
            "hoopgw_accept_password_token",
            bool,
            False,
            """
            Also accept the OIDC token in the login's password field, for tools
            that can only send a user name and password. Off by default: such
            tools may store or log passwords less carefully than tokens.
            """,
        )
        loader.add_option(
            "hoopgw_oidc_jwks_ttl",
            int,
            JWKS_TTL_SECONDS,
            """
            Seconds the identity provider's signing keys are used before the
            gateway fetches them again. A token naming an unknown key id makes
            it fetch earlier, at most once per 30 seconds (or per TTL if that
            is shorter).
            """,
        )
        loader.add_option(
            "hoopgw_oidc_jwks_max_age",
            int,
            JWKS_MAX_AGE_SECONDS,
            """
            Seconds after a successful fetch that the cached signing keys stay
            trusted while the identity provider cannot be reached to refresh
            them. Past that, logins are refused (the token cannot be verified
            now) until the provider answers again. At least hoopgw_oidc_jwks_ttl.
            """,
        )

    def configure(self, updated: set[str]) -> None:
        if updated & {
            "hoopgw_oidc_issuer",
            "hoopgw_oidc_audience",
            "hoopgw_oidc_jwks_ttl",
            "hoopgw_oidc_jwks_max_age",
        }:
            self.verifier = self._make_verifier()
        if "hoopgw_oidc_groups_claim" in updated:
            claim = ctx.options.hoopgw_oidc_groups_claim.strip()
            if not claim:
                raise exceptions.OptionsError("hoopgw_oidc_groups_claim must name a claim")
            self.groups_claim = claim
        if updated & {"hoopgw_allowed_groups", "hoopgw_role_map"}:
            try:
                rules = parse_role_map(ctx.options.hoopgw_role_map)
            except ValueError as exc:
                raise exceptions.OptionsError(f"hoopgw_role_map: {exc}") from None
            allowed = [g.strip() for g in ctx.options.hoopgw_allowed_groups if g.strip()]
            self.policy = AccessPolicy(allowed, rules)
        if "hoopgw_upstream_user_map" in updated:
            try:
                self.user_map = UserMap(parse_user_map(ctx.options.hoopgw_upstream_user_map))
            except ValueError as exc:
                raise exceptions.OptionsError(f"hoopgw_upstream_user_map: {exc}") from None
        if "hoopgw_accept_password_token" in updated:
            self.accept_password_token = ctx.options.hoopgw_accept_password_token

    @property
    def configured(self) -> bool:
        return self.verifier is not None

    @staticmethod
    def _make_verifier() -> OidcVerifier | None:
        issuer = ctx.options.hoopgw_oidc_issuer
        audience = ctx.options.hoopgw_oidc_audience
        if not issuer:
            return None
        try:
            check_provider_url(issuer, "issuer")
        except ValueError as exc:
            raise exceptions.OptionsError(f"hoopgw_oidc_issuer: {exc}") from None
        if not audience:
            raise exceptions.OptionsError(
                "hoopgw_oidc_audience must be set with hoopgw_oidc_issuer "
                "(the client id tokens are issued for)"
            )
        ttl = ctx.options.hoopgw_oidc_jwks_ttl
        max_age = ctx.options.hoopgw_oidc_jwks_max_age
        if ttl <= 0:
            raise exceptions.OptionsError(
                f"hoopgw_oidc_jwks_ttl must be a positive number of seconds, got {ttl}"
            )
        if max_age < ttl:
            raise exceptions.OptionsError(
                f"hoopgw_oidc_jwks_max_age ({max_age}) must be at least "
                f"hoopgw_oidc_jwks_ttl ({ttl})"
            )
        return OidcVerifier(
            issuer,
            audience,
            jwks_ttl=ttl,
            jwks_max_age=max_age,
            refetch_interval=min(REFETCH_INTERVAL_SECONDS, ttl),
        )
