"""A loopback "cloud storage" for result chunks, as strict as S3 with SSE-C.

Snowflake hands drivers pre-signed URLs for the chunks of a large result; the
objects are encrypted with a customer key (SSE-C), so a GET must carry
`x-amz-server-side-encryption-customer-algorithm: AES256` and
`x-amz-server-side-encryption-customer-key: <qrmk>` or S3 refuses it. This
server does the same: each object has its key, each URL an expiry and an
HMAC signature over path and expiry, and it counts every request it gets,
so tests can assert that nothing reached it.

It also takes uploads as GCS takes them behind a stage's `presignedUrl`: a PUT
to a URL signed for PUT (`upload_url`) stores the body as received, with its
`x-goog-meta-*` headers; a PUT whose signature does not verify is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from tests import stack

SSE_C_ALGORITHM = "x-amz-server-side-encryption-customer-algorithm"
SSE_C_KEY = "x-amz-server-side-encryption-customer-key"


@dataclass(frozen=True)
class StoredObject:
    body: bytes
    key: str
    content_type: str
    content_encoding: str | None


@dataclass(frozen=True)
class StorageRequest:
    method: str
    path: str
    headers: dict[str, str]
    status: int


@dataclass(frozen=True)
class Upload:
    body: bytes
    headers: dict[str, str]


@dataclass
class _State:
    objects: dict[str, StoredObject] = field(default_factory=dict)
    requests: list[StorageRequest] = field(default_factory=list)
    uploads: dict[str, Upload] = field(default_factory=dict)
    started: int = 0


def _error(code: str, message: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
        f"<Message>{message}</Message></Error>"
    ).encode()


class CloudStorage(stack.LoopbackServer):
    """`put` an object, get its signed URL; a GET without the object's key is refused."""

    def __init__(self) -> None:
        self._secret = secrets.token_bytes(32)
        self._state = _State()
        self._lock = threading.Lock()

    def put(
        self,
        name: str,
        body: bytes,
        key: str,
        *,
        content_type: str = "application/octet-stream",
        content_encoding: str | None = None,
        lifetime: int = 6 * 3600,
    ) -> str:
        path = f"/results/{urllib.parse.quote(name)}"
        with self._lock:
            self._state.objects[path] = StoredObject(body, key, content_type, content_encoding)
        expires = int(time.time()) + lifetime
        query = urllib.parse.urlencode(
            {"X-Amz-Expires": expires, "X-Amz-Signature": self._sign(path, expires)}
        )
        return f"{self.url}{path}?{query}"

    def upload_url(self, name: str, lifetime: int = 3600) -> str:
        """A URL signed for one PUT of `name`, as GCS signs a stage's `presignedUrl`."""
        path = f"/uploads/{urllib.parse.quote(name)}"
        expires = int(time.time()) + lifetime
        query = urllib.parse.urlencode(
            {"X-Goog-Expires": expires, "X-Goog-Signature": self._sign(path, expires, "PUT")}
        )
        return f"{self.url}{path}?{query}"

    def revoke_signatures(self) -> None:
        """A new signing secret: every URL signed so far stops verifying (403)."""
        self._secret = secrets.token_bytes(32)

    def uploads(self) -> dict[str, Upload]:
        """What was uploaded, by the name its URL was signed for."""
        with self._lock:
            return {
                urllib.parse.unquote(path.removeprefix("/uploads/")): upload
                for path, upload in self._state.uploads.items()
            }

    def _sign(self, path: str, expires: int, method: str = "GET") -> str:
        message = f"{path}\n{expires}" if method == "GET" else f"{method}\n{path}\n{expires}"
        return hmac.new(self._secret, message.encode(), hashlib.sha256).hexdigest()

    def hashes(self) -> dict[str, str]:
        """The SHA-256 of each stored object's bytes, by the name it was put under."""
        with self._lock:
            return {
                urllib.parse.unquote(path.removeprefix("/results/")): hashlib.sha256(
                    stored.body
                ).hexdigest()
                for path, stored in self._state.objects.items()
            }

    def last_key(self) -> str:
        """The SSE-C key of the object put last (the last result's `qrmk`)."""
        with self._lock:
            return list(self._state.objects.values())[-1].key

    def last_body(self) -> bytes:
        """The bytes of the object put last."""
        with self._lock:
            return list(self._state.objects.values())[-1].body

    def requests(self) -> list[StorageRequest]:
        with self._lock:
            return list(self._state.requests)

    def mark(self) -> int:
        with self._lock:
            return len(self._state.requests)

    def requests_since(self, mark: int) -> list[StorageRequest]:
        with self._lock:
            return list(self._state.requests[mark:])

    def started(self) -> int:
        """Requests whose head has arrived, answered or not (an upload still streaming counts)."""
        with self._lock:
            return self._state.started

    def serve(self, handler: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self._state.started += 1
        length = int(handler.headers.get("Content-Length") or 0)
        received = handler.rfile.read(length) if length else b""  # as sent: no decoding
        if handler.command == "PUT":
            status, body, stored = self._upload(handler, received)
        else:
            status, body, stored = self._answer(handler)
        with self._lock:
            self._state.requests.append(
                StorageRequest(
                    handler.command,
                    handler.path,
                    {k.lower(): v for k, v in handler.headers.items()},
                    status,
                )
            )
        if stored is None:
            stack.send_answer(handler, status, body, "application/xml")
        else:
            stack.send_answer(handler, status, body, stored.content_type, stored.content_encoding)

    def _upload(
        self, handler: BaseHTTPRequestHandler, body: bytes
    ) -> tuple[int, bytes, StoredObject | None]:
        parsed = urllib.parse.urlsplit(handler.path)
        query = urllib.parse.parse_qs(parsed.query)
        expires = (query.get("X-Goog-Expires") or [""])[0]
        signature = (query.get("X-Goog-Signature") or [""])[0]
        if not parsed.path.startswith("/uploads/") or not expires.isdigit():
            return 403, _error("AccessDenied", "Access Denied"), None
        if not hmac.compare_digest(signature, self._sign(parsed.path, int(expires), "PUT")):
            return 403, _error("SignatureDoesNotMatch", "signature mismatch"), None
        if int(expires) <= time.time():
            return 400, _error("ExpiredToken", "Request has expired"), None
        headers = {k.lower(): v for k, v in handler.headers.items()}
        with self._lock:
            self._state.uploads[parsed.path] = Upload(body, headers)
        return 200, b"", None

    def _answer(self, handler: BaseHTTPRequestHandler) -> tuple[int, bytes, StoredObject | None]:
        parsed = urllib.parse.urlsplit(handler.path)
        query = urllib.parse.parse_qs(parsed.query)
        if handler.command != "GET":
            return 405, _error("MethodNotAllowed", "only GET"), None
        with self._lock:
            stored = self._state.objects.get(parsed.path)
        expires = (query.get("X-Amz-Expires") or [""])[0]
        signature = (query.get("X-Amz-Signature") or [""])[0]
        if stored is None or not expires.isdigit():
            return 403, _error("AccessDenied", "Access Denied"), None
        if not hmac.compare_digest(signature, self._sign(parsed.path, int(expires))):
            return 403, _error("SignatureDoesNotMatch", "signature mismatch"), None
        if int(expires) <= time.time():
            return 403, _error("AccessDenied", "Request has expired"), None
        if not stored.key:  # stored without SSE-C (a stage file behind a pre-signed URL)
            return 200, stored.body, stored
        algorithm = handler.headers.get(SSE_C_ALGORITHM)
        key = handler.headers.get(SSE_C_KEY)
        if algorithm is None or key is None:
            return 400, _error("InvalidRequest", "The object was stored using SSE-C"), None
        if algorithm != "AES256" or not hmac.compare_digest(key, stored.key):
            return 403, _error("AccessDenied", "The SSE-C key does not match"), None
        return 200, stored.body, stored
