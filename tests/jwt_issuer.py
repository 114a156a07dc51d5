"""A minimal OIDC issuer for tokens a real identity provider would never produce.

oidc-provider-mock issues only good tokens. The refusal tests need expired,
not-yet-valid, wrongly signed, `alg: none` and HMAC-with-the-public-key tokens,
so this issuer serves discovery and a JWKS over real HTTP and signs whatever
claims and headers a test asks for with joserfc.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler
from typing import Any

from joserfc import jwt
from joserfc.jwk import RSAKey

from tests import stack


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class LocalIssuer(stack.LoopbackServer):
    """Serves `/.well-known/openid-configuration` and `/jwks`; `mint` signs tokens."""

    def __init__(self, audience: str = "hoopgw") -> None:
        self.audience = audience
        self.key = RSAKey.generate_key(2048, parameters={"kid": "signing-1", "use": "sig"})
        self.published: list[RSAKey] = [self.key]
        self.jwks_requests = 0
        self._lock = threading.Lock()

    def serve(self, handler: BaseHTTPRequestHandler) -> None:
        if handler.command != "GET":
            handler.send_error(405)
            return
        if handler.path == "/.well-known/openid-configuration":
            body = {"issuer": self.issuer, "jwks_uri": self.issuer + "/jwks"}
        elif handler.path == "/jwks":
            with self._lock:
                self.jwks_requests += 1
                keys = [k.as_dict(private=False) for k in self.published]
            body = {"keys": keys}
        else:
            handler.send_error(404)
            return
        data = json.dumps(body).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    @property
    def issuer(self) -> str:
        return self.url

    def publish(self, *keys: RSAKey) -> None:
        with self._lock:
            self.published = list(keys)

    def claims(self, subject: str = "ada", groups: list[str] | None = None, **extra: Any) -> dict:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "email": f"{subject}@example.com",
            "iat": now,
            "exp": now + 300,
            "groups": ["agents"] if groups is None else groups,
        }
        claims.update(extra)
        return {k: v for k, v in claims.items() if v is not None}

    def mint(
        self,
        subject: str = "ada",
        groups: list[str] | None = None,
        *,
        key: RSAKey | None = None,
        header: Mapping[str, Any] | None = None,
        omit: tuple[str, ...] = (),
        **extra: Any,
    ) -> str:
        """An RS256 token; `extra` overrides claims (None removes one), `omit` drops claims."""
        signer = key or self.key
        protected = {"alg": "RS256", "kid": signer.kid, **(header or {})}
        claims = self.claims(subject, groups, **extra)
        for name in omit:
            claims.pop(name, None)
        return jwt.encode(protected, claims, signer, ["RS256"])

    def unsigned(self, **extra: Any) -> str:
        """An `alg: none` token with otherwise valid claims."""
        header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
        payload = _b64(json.dumps(self.claims(**extra)).encode())
        return f"{header}.{payload}."

    def hmac_with_public_key(self, **extra: Any) -> str:
        """HS256 keyed with the published public key's PEM: the classic confusion attack.

        Built by hand: joserfc rightly refuses to use a public key as an HMAC secret.
        """
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": self.key.kid}).encode())
        payload = _b64(json.dumps(self.claims(**extra)).encode())
        secret = self.key.as_pem(private=False)
        mac = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        return f"{header}.{payload}.{_b64(mac)}"

    def with_bad_signature(self, **extra: Any) -> str:
        token = self.mint(**extra)
        head, payload, signature = token.split(".")
        flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
        return f"{head}.{payload}.{flipped}"
